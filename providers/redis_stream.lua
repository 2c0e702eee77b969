-- redis_stream: entity changes over a Redis stream, both ways.
--
--   local q = provider "redis_stream" { url = "redis://127.0.0.1:6379", group = "crm" }
--   sync "orders" { remote = q "orders", entity = "order", id = "id",
--     mapping = { total = "data.total" },
--     import = { mode = "incremental", changed = "version", changed_kind = "number", deletes = "delete" } }
--
-- A message is one entity change, its fields:
--   id       the entity's remote id (text; digits alone are taken as an integer)
--   op       "upsert" (the default) or "delete"
--   version  an integer that grows with each change of the entity
--   data     the record, a JSON object (upserts)
--   event    the publisher's id of the change, for consumers to deduplicate on
-- The record a sync maps is { id, op, version, data = <decoded>, event }.
--
-- Import: a sync consumes the stream through a consumer group (created
-- when missing, from the stream's start). Messages are acknowledged (XACK)
-- only once the batch that holds them is committed: delivery is at least
-- once, and a message delivered again, or one older than what the store
-- holds (version at or below the stored one, with changed = "version"),
-- changes nothing. A dead consumer's pending messages are claimed after
-- claim_idle ms (XAUTOCLAIM). A message whose apply fails stays pending and
-- is delivered again; on its max_attempts-th delivery its failure (in
-- entsync_failures, with its payload) is final and it is acknowledged. One
-- delivered more often than that without ever being applied (its consumers
-- died on it) is stored as failed at once, with its fields, and acknowledged.
--
-- Export: each create, update and delete of the sync's entities is
-- published with XADD: id (the local id), op, version, data and event
-- (store id:sync:local id:version).

local core = require "entsync.core"
local errors = require "entsync.errors"
local ids = require "entsync.ids"
local json = require "entsync.json"
local loop = require "entsync.loop"
local provider = require "entsync.provider"
local redis = require "entsync.redis"

local M = {}

M.settings = {
  url = "string", host = "string", port = "positive",
  stream = "string", group = "string", consumer = "string",
  start = "string",
  claim_idle = "positive", max_attempts = "positive", block = "positive", count = "positive",
  maxlen = "positive", timeout = "number", name = "string",
}

function M.validate(config)
  if config.url and (config.host or config.port) then return nil, "give url or host and port, not both" end
  if config.url and not redis.parse_url(config.url) then
    return nil, string.format("setting url must look like redis://host:port, got %q", config.url)
  end
  return true
end

local Provider = {}
Provider.__index = Provider

function M.new(config, ctx)
  local host, port = config.host or "127.0.0.1", config.port or 6379
  if config.url then host, port = redis.parse_url(config.url) end
  return setmetatable({
    config = config, name = config.name or ctx.name or "redis_stream",
    host = host, port = port, timeout = config.timeout or 10,
    group = config.group or "entsync",
    consumer = config.consumer or string.format("%s-%d", core.sys.hostname(), core.sys.getpid()),
    claim_idle = config.claim_idle or 30000, max_attempts = config.max_attempts or 5,
    block = config.block or 1000, count = config.count or 500,
    -- exports are never read back: there is no copy to fetch before a write
    log_sink = true,
    -- the daemon consumes its syncs continuously (a reader that follows)
    follows = true,
    readers = {},
    -- streams whose pending history of this consumer was read (once a
    -- process: later runs leave a failed message to claim_idle)
    history_read = {},
  }, Provider)
end

function Provider:client()
  return redis.connect { host = self.host, port = self.port, timeout = self.timeout }
end

function Provider:stream_of(resource)
  return self.config.stream or resource or errors.raise("config",
    string.format("provider \"%s\": a sync names no stream (stream = ... or %s \"NAME\")", self.name, self.name))
end

-- messages -> records ---------------------------------------------------------------------

local function typed_id(text)
  if type(text) == "string" and text:match("^%-?%d+$") and #text < 16 then return math.tointeger(tonumber(text)) end
  return text
end

-- record_of(fields, version) -> record | nil, why; version: the one
-- push() read from the fields already (nil to read it here)
local function record_of(fields, version)
  if not fields then return nil, "the message was deleted from the stream while pending" end
  local op = fields.op or "upsert"
  if op ~= "upsert" and op ~= "delete" then return nil, string.format("op must be upsert or delete, got %q", op) end
  if fields.id == nil or fields.id == "" then return nil, "the message has no id field" end
  if version == nil and fields.version ~= nil then
    version = math.tointeger(tonumber(fields.version))
    if version == nil then return nil, string.format("version must be an integer, got %q", fields.version) end
  end
  local id = typed_id(fields.id)
  if op == "delete" then
    return provider.tombstone(id, { op = op, version = version, event = fields.event })
  end
  local data = json.null
  if fields.data ~= nil then
    local decoded, err = json.try_decode(fields.data)
    if type(decoded) ~= "table" then
      return nil, string.format("data is not a JSON object (%s)", err or ("a " .. type(decoded)))
    end
    data = decoded
  end
  return { id = id, op = op, version = version, data = data, event = fields.event }
end

local function payload_of(fields)
  local ok, text = pcall(json.encode, json.object(fields or {}))
  return ok and text or nil
end

-- the reader ----------------------------------------------------------------------------------

local Reader = {}
Reader.__index = Reader

-- The consumer group, created from the stream's start (or `start`) when missing.
function Provider:ensure_group(client, stream)
  local ok, err = pcall(client.call, client, "XGROUP", "CREATE", stream, self.group, self.config.start or "0",
    "MKSTREAM")
  if not ok and not tostring(errors.message(err)):find("BUSYGROUP", 1, true) then error(err, 0) end
end

-- list(resource, query) -> reader. query.follow: wait for messages until
-- query.should_stop() says stop (with query.until_quiet, also once the
-- stream has been quiet for a block after the run took some); otherwise
-- the reader ends once nothing is left to deliver or claim.
function Provider:list(resource, query)
  local stream = self:stream_of(resource)
  -- one connection a stream, kept from run to run
  local client = self.readers[stream] or self:client()
  self.readers[stream] = client
  self:ensure_group(client, stream)
  local reader = setmetatable({
    provider = self, client = client, stream = stream, follow = query and query.follow,
    until_quiet = query and query.until_quiet,
    should_stop = query and query.should_stop, buffer = {}, head = 1, taken = {}, returned = 0,
    own_pending = not self.history_read[stream], claim_cursor = "0-0", last_claim = -math.huge, last_id = nil,
  }, Reader)
  self.history_read[stream] = true
  return reader
end

-- Delivery counts of the pending entries of this consumer between two ids.
function Reader:deliveries(first, last, n)
  local p = self.provider
  local counts = {}
  for _, row in ipairs(self.client:call("XPENDING", self.stream, p.group, first, last, n, p.consumer) or {}) do
    counts[row[1]] = row[4]
  end
  return counts
end

-- The version of a message, when it carries a usable one.
local function version_of(fields)
  return fields and math.tointeger(tonumber(fields.version)) or nil
end

-- Of the messages read together, one superseded by a newer version of the
-- same id later in the same read is not applied (the batch is written in
-- order: it would win): it is acknowledged with the batch.
-- Each entry's version is read here once (entry.version) and reused by next().
function Reader:push(entries, counted)
  local n = #entries
  local counts = nil
  if counted and n > 0 then counts = self:deliveries(entries[1].id, entries[n].id, n) end
  local newest, superseded = {}, false
  for i = 1, n do
    local entry = entries[i]
    local fields = entry.fields
    local version = version_of(fields)
    entry.version = version
    local id = fields and fields.id
    if version and id then
      local best = newest[id]
      if not best then
        newest[id] = i
      elseif version >= entries[best].version then
        newest[id], superseded = i, true
      else
        superseded = true
      end
    end
  end
  local buffer, taken = self.buffer, self.taken
  for i = 1, n do
    local entry = entries[i]
    entry.deliveries = counts and counts[entry.id] or 1
    local id = superseded and entry.version and entry.fields.id
    if id and newest[id] ~= i then
      taken[#taken + 1] = entry -- superseded: acknowledged with the batch
    else
      buffer[#buffer + 1] = entry
    end
  end
end

-- This consumer's own pending entries (a consumer that kept its name
-- across a restart: once a process), then those of any consumer idle for
-- claim_idle (this one's failed messages too), then new ones. Returns true
-- when something came.
function Reader:fill(wait)
  local p, client, stream = self.provider, self.client, self.stream
  if self.own_pending then
    self.own_pending = false
    -- page by page, each after the last id of the one before (a message
    -- that failed stays in the history: it is not read twice here)
    local got = client:call("XREADGROUP", "GROUP", p.group, p.consumer, "COUNT", p.count, "STREAMS", stream,
      self.history_after or "0")
    local entries = got and redis.entries(got[1][2]) or {}
    if #entries > 0 then
      self.own_pending = true -- there may be more of them
      self.history_after = entries[#entries].id
      self:push(entries, true)
      return true
    end
  end
  local now = loop.now()
  if now - self.last_claim >= math.min(p.claim_idle, p.block) / 1000 or self.claim_cursor ~= "0-0" then
    self.last_claim = now
    local claimed = client:call("XAUTOCLAIM", stream, p.group, p.consumer, p.claim_idle, self.claim_cursor,
      "COUNT", p.count)
    self.claim_cursor = claimed[1]
    local entries = redis.entries(claimed[2])
    if #entries > 0 then
      self:push(entries, true)
      return true
    end
  end
  local got
  if wait then
    got = client:call_blocking(p.block / 1000, "XREADGROUP", "GROUP", p.group, p.consumer, "COUNT", p.count,
      "BLOCK", p.block, "STREAMS", stream, ">")
  else
    got = client:call("XREADGROUP", "GROUP", p.group, p.consumer, "COUNT", p.count, "STREAMS", stream, ">")
  end
  local entries = got and redis.entries(got[1][2]) or {}
  self:push(entries, false)
  return #entries > 0
end

function Reader:stopping()
  return self.should_stop ~= nil and self.should_stop()
end

-- next() -> record | tombstone | nil | false, message, payload
function Reader:next()
  while self.head > #self.buffer do
    self.buffer, self.head = {}, 1
    if self:stopping() then return nil end
    local came = self:fill(self.follow)
    -- a quiet stream ends a run that does not follow, and one that
    -- follows until quiet once it took something (the daemon starts the next)
    if not came and (not self.follow or (self.until_quiet and self.returned > 0)) then return nil end
  end
  local entry = self.buffer[self.head]
  self.head = self.head + 1
  self.returned = self.returned + 1
  self.last_id = entry.id
  local taken = self.taken
  taken[#taken + 1] = entry -- acknowledged (or not) once its batch commits
  local max_attempts = self.provider.max_attempts
  if entry.deliveries > max_attempts then
    -- its consumers died on it (or never acknowledged it): not tried again
    return false, string.format("%s:%s: delivered %d times and never applied (max_attempts %d)", self.stream,
      entry.id, entry.deliveries, max_attempts), payload_of(entry.fields)
  end
  local record, why = record_of(entry.fields, entry.version)
  if not record then
    -- it will never read better: failed at once
    return false, string.format("%s:%s: %s", self.stream, entry.id, why), payload_of(entry.fields)
  end
  entry.key = ids.text(record.id)
  return record
end

-- ready(): a record is in hand (the batch ends when none is: a message
-- is committed as soon as it is read, when no other waits behind it).
function Reader:ready()
  return self.head <= #self.buffer
end

function Reader:checkpoint()
  return self.last_id
end

-- committed(failed): the batch holding every message taken so far is
-- committed; failed holds the keys whose records failed in it. Those are
-- left pending (delivered again after claim_idle) until their
-- max_attempts-th delivery; the rest are acknowledged.
function Reader:committed(failed)
  local p = self.provider
  local ack = { "XACK", self.stream, p.group }
  for _, entry in ipairs(self.taken) do
    local retry = entry.key and failed and failed[entry.key] and entry.deliveries < p.max_attempts
    if not retry then ack[#ack + 1] = entry.id end
  end
  self.taken = {}
  if #ack > 3 then self.client:call(table.unpack(ack)) end
  return true
end

function Reader:close() end

-- export ---------------------------------------------------------------------------------------

function Provider:publisher()
  self.out = self.out or self:client()
  return self.out
end

-- A version that grows with each message this process publishes, across
-- restarts too (microseconds of the clock).
function Provider:next_version()
  local version = math.floor(core.sys.now() * 1e6)
  if self.last_version and version <= self.last_version then version = self.last_version + 1 end
  self.last_version = version
  return version
end

function Provider:message(resource, op, id, record, ctx)
  local stream = self:stream_of(resource)
  local version = self:next_version()
  local store_id = ctx and ctx.session and ctx.session.ledger:store_id() or "entsync"
  local event = string.format("%s:%s:%s:%d", store_id, ctx and ctx.sync or "", ids.text(id), version)
  local command = { "XADD", stream }
  if self.config.maxlen then
    for _, part in ipairs({ "MAXLEN", "~", self.config.maxlen }) do command[#command + 1] = part end
  end
  for _, part in ipairs({ "*", "id", ids.text(id), "op", op, "version", version, "event", event }) do
    command[#command + 1] = part
  end
  if op == "upsert" then
    command[#command + 1] = "data"
    command[#command + 1] = json.encode(type(record) == "table" and type(record.data) == "table"
      and record.data or json.object({}))
  end
  return command
end

-- create: the entity's remote id is its local id.
function Provider:create(resource, record, ctx)
  local id = ctx.local_id
  self:publisher():call(table.unpack(self:message(resource, "upsert", id, record, ctx)))
  return id, record
end

function Provider:update(resource, id, record, ctx)
  self:publisher():call(table.unpack(self:message(resource, "upsert", id, record, ctx)))
  return record
end

function Provider:delete(resource, id, ctx)
  self:publisher():call(table.unpack(self:message(resource, "delete", id, nil, ctx)))
  return true
end

-- write_batch: the drain's writes published in one pipeline.
function Provider:write_batch(resource, items, ctx)
  local commands = {}
  for i, item in ipairs(items) do
    local id = item.op == "create" and item.local_id or item.id
    commands[i] = self:message(resource, item.op == "delete" and "delete" or "upsert", id, item.record, ctx)
  end
  local replies = self:publisher():pipeline(table.unpack(commands))
  local results = {}
  for i, item in ipairs(items) do
    local reply = replies[i]
    if type(reply) == "table" and reply.error then
      results[i] = { ok = false, error = reply.error }
    else
      results[i] = { ok = true, id = item.op == "create" and item.local_id or item.id, answer = item.record }
    end
  end
  return results
end

return M
