-- Orders over a Redis stream, both ways (providers/redis_stream.lua).
--
-- Start a Redis, publish a change, consume it:
--
--   redis-server --port 6390 --save '' --appendonly no &
--   redis-cli -p 6390 XADD orders '*' id 1001 op upsert version 1 \
--     data '{"customer":"Ada","total":42.5,"status":"open"}'
--   QUEUE_URL=redis://127.0.0.1:6390 bin/entsync-run examples/queue/job.lua run orders
--
-- `run orders` takes what is pending and stops; `run orders --follow` keeps
-- consuming until Ctrl-C; `daemon` consumes continuously and publishes every
-- local change of a shipment to stream "shipments" as it is committed:
--
--   QUEUE_URL=redis://127.0.0.1:6390 bin/entsync-run examples/queue/job.lua daemon
--   sqlite3 examples/queue/queue.db "INSERT INTO shipment (order_ref, carrier) VALUES (1001, 'post')"
--   redis-cli -p 6390 XRANGE shipments - +
--
-- A message is acknowledged once its batch is committed; one that fails
-- is delivered again (after claim_idle) until max_attempts, then kept in
-- `entsync-run examples/queue/job.lua failures orders` with its payload.

store "queue.db"

entity "order" { customer = "text", total = "real", status = "text" }
entity "shipment" { order_ref = "integer", carrier = "text" }

local queue = provider "redis_stream" {
  url = env("QUEUE_URL", "redis://127.0.0.1:6390"),
  group = "entsync-orders",  -- every consumer of the group shares the stream's messages
  claim_idle = 30000,        -- a dead consumer's messages are taken over after 30 s
  max_attempts = 5,
}

-- Consumed: each message is { id, op, version, data = { ... } }.
sync "orders" {
  remote = queue "orders", entity = "order", id = "id",
  mapping = { customer = "data.customer", total = "data.total", status = "data.status" },
  -- versions: an older or repeated message changes nothing
  import = { mode = "incremental", changed = "version", changed_kind = "number", deletes = "delete" },
}

-- Published: each create, update and delete becomes one message.
sync "shipments" {
  remote = queue "shipments", entity = "shipment",
  mapping = { order_ref = "data.order_ref", carrier = "data.carrier" },
  import = false,
  export = { on_change = true, deletes = "delete" },
}
