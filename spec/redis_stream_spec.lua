-- The redis_stream provider against a real redis-server (started on a
-- private port by the spec): consuming a stream through a consumer group
-- with acknowledgement after commit, redelivered and older versions,
-- poison messages, two consumers of one group with one SIGKILLed
-- mid-batch, and changes published by one store and consumed by another.
--
-- Every store carries a trigger of the spec's own that logs each write
-- of an item row (applied), so "applied once" is counted by SQLite.

local core = require "entsync.core"
local helpers = require "helpers"
local json = require "entsync.json"
local redis = require "entsync.redis"
local R = require "redis_support"

local server
local dirs = {}

local function newdir()
  local d = helpers.tmpdir()
  dirs[#dirs + 1] = d
  return d
end

-- A job consuming (or, with export, publishing) stream "items".
local function job(dir, opts)
  opts = opts or {}
  local settings = string.format('url = %q, group = %q, claim_idle = %d, max_attempts = %d, block = %d, count = %d',
    server.url, opts.group or "g", opts.claim_idle or 200, opts.max_attempts or 3, opts.block or 200,
    opts.count or 100)
  if opts.consumer then settings = settings .. string.format(", consumer = %q", opts.consumer) end
  local lines = {
    'local core = require "entsync.core"',
    string.format('store %q', opts.store or "items.db"),
    'entity "item" { name = "text", n = "integer" }',
    string.format('local q = provider "redis_stream" { %s }', settings),
    -- the import callback: a poison name fails; each call is logged (and
    -- paced) when the job is told to
    string.format([[
local trace, pace = env("TRACE", ""), tonumber(env("PACE", "0"))
local function seen(v, record)
  if record.data.name == "poison" then error("poison pill") end
  if trace ~= "" then
    local f = io.open(trace, "a") f:write(string.format("%%d\n", v)) f:close()
    if pace > 0 then core.sys.sleep(pace) end
  end
  return v
end]]),
  }
  if opts.export then
    lines[#lines + 1] = [[sync "items" { remote = q "items", entity = "item", id = "id",
  mapping = { name = "data.name", n = "data.n" },
  import = false, export = { on_change = true, deletes = "delete" } }]]
  else
    lines[#lines + 1] = [[sync "items" { remote = q "items", entity = "item", id = "id",
  mapping = { name = "data.name", n = { "data.n", import = seen } },
  import = { mode = "incremental", changed = "version", changed_kind = "number", deletes = "delete", batch = 500 } }]]
  end
  helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
end

local function run(dir, ...)
  return helpers.run(dir, { "job.lua", ... })
end

local function db(dir, name) return dir .. "/" .. (name or "items.db") end

-- The store exists with its trigger: a run over an empty stream makes it.
local function prepare(dir, name, env)
  local r = helpers.run(dir, { "job.lua", "run", "items" }, env)
  assert.equals(0, r.code, r.stdout .. r.stderr)
  helpers.sqlite3(db(dir, name), [[
    CREATE TABLE applied (n INTEGER, name TEXT);
    CREATE TRIGGER applied_insert AFTER INSERT ON item BEGIN INSERT INTO applied VALUES (new.n, new.name); END;
    CREATE TRIGGER applied_update AFTER UPDATE ON item BEGIN INSERT INTO applied VALUES (new.n, new.name); END;]])
end

local function rows(dir, name)
  local out = {}
  for _, row in ipairs(helpers.query(db(dir, name), [[SELECT m.remote_id, i.name, i.n FROM item i
      JOIN entsync_idmap m ON m.local_id = i.id ORDER BY m.remote_id]])) do
    out[tostring(row.remote_id)] = { name = row.name, n = row.n }
  end
  return out
end

local function applied(dir, name)
  local out = {}
  for i, row in ipairs(helpers.query(db(dir, name), "SELECT n, name FROM applied ORDER BY rowid")) do
    out[i] = { row.n, row.name }
  end
  return out
end

local function xadd(id, version, data, op)
  local args = { "XADD", "items", "*", "id", tostring(id), "op", op or "upsert", "version", tostring(version) }
  if data then args[#args + 1] = "data" args[#args + 1] = json.encode(data) end
  return server.cli(table.unpack(args))
end

local function pending()
  return tonumber(server.cli("XPENDING", "items", "g"):match("^(%d+)"))
end

local client
local function redis_client()
  client = client or redis.connect { host = "127.0.0.1", port = server.port }
  return client
end

setup(function() server = R.start() end)
teardown(function()
  if client then client:close() end
  if server then server.stop() end
end)
before_each(function() server.cli("FLUSHALL") end)
after_each(function()
  for _, d in ipairs(dirs) do helpers.rmdir(d) end
  dirs = {}
end)

describe("redis_stream import", function()
  it("applies upserts and deletes and acknowledges them once their batch commits", function()
    local d = newdir()
    job(d)
    prepare(d)
    xadd(1, 1, { name = "a", n = 1 })
    xadd(2, 1, { name = "b", n = 2 })
    xadd(1, 2, { name = "a2", n = 3 })
    xadd(3, 1, { name = "c", n = 4 })
    xadd(3, 2, nil, "delete")
    local r = run(d, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.same({ ["1"] = { name = "a2", n = 3 }, ["2"] = { name = "b", n = 2 } }, rows(d))
    assert.equals(0, pending())
    -- the group has read the whole stream: a run now finds nothing
    r = run(d, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.matches("0 created, 0 updated", r.stdout)
  end)

  it("changes nothing for a message delivered again or an older version", function()
    local d = newdir()
    job(d)
    prepare(d)
    xadd(1, 5, { name = "five", n = 5 })
    assert.equals(0, run(d, "run", "items").code)
    assert.equals(1, #applied(d))
    xadd(1, 5, { name = "five", n = 5 }) -- the same change again
    local r = run(d, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.matches("0 created, 0 updated, 1 unchanged, 0 stale", r.stdout)
    xadd(1, 3, { name = "three", n = 3 }) -- an older one, after it
    r = run(d, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.matches("0 created, 0 updated, 0 unchanged, 1 stale", r.stdout)
    -- older than the newest in the same read: superseded, not applied
    xadd(1, 7, { name = "seven", n = 7 })
    xadd(1, 6, { name = "six", n = 6 })
    xadd(1, 4, nil, "delete")
    assert.equals(0, run(d, "run", "items").code)
    assert.same({ ["1"] = { name = "seven", n = 7 } }, rows(d))
    assert.same({ { 5, "five" }, { 7, "seven" } }, applied(d))
    assert.equals(0, pending())
  end)

  it("delivers a failing message again until max_attempts, then keeps it as failed with its payload, acknowledged", function()
    local d = newdir()
    job(d, { max_attempts = 3, claim_idle = 100 })
    prepare(d)
    xadd(1, 1, { name = "fine", n = 1 })
    xadd(2, 1, { name = "poison", n = 2 })
    for attempt = 1, 3 do
      local r = run(d, "run", "items")
      assert.equals(1, r.code, r.stdout .. r.stderr)
      assert.matches("poison pill", r.stderr)
      local failure = helpers.query(db(d), "SELECT key, payload FROM entsync_failures")
      assert.equals(1, #failure)
      assert.equals("2", failure[1].key)
      assert.equals("poison", json.decode(failure[1].payload).data.name)
      -- pending (to be delivered again) until the last attempt
      assert.equals(attempt < 3 and 1 or 0, pending())
      core.sys.sleep(0.15) -- claim_idle passes
    end
    assert.same({ ["1"] = { name = "fine", n = 1 } }, rows(d))
    -- nothing is delivered any more
    local r = run(d, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.matches("0 failed", r.stdout)
  end)

  it("fails at once, with its fields, a message delivered more than max_attempts times and never applied", function()
    local d = newdir()
    job(d, { max_attempts = 3, claim_idle = 100 })
    prepare(d)
    local id = xadd(9, 1, { name = "crasher", n = 9 })
    -- a consumer that died on it, again and again
    server.cli("XREADGROUP", "GROUP", "g", "dead", "COUNT", 1, "STREAMS", "items", ">")
    server.cli("XCLAIM", "items", "g", "dead", 0, id, "RETRYCOUNT", 5)
    core.sys.sleep(0.15)
    local r = run(d, "run", "items")
    assert.equals(1, r.code, r.stdout .. r.stderr)
    local failure = helpers.query(db(d), "SELECT key, error, payload FROM entsync_failures")
    assert.equals("@items:" .. id, failure[1].key)
    assert.matches("delivered 6 times and never applied %(max_attempts 3%)", failure[1].error)
    assert.equals("crasher", json.decode(json.decode(failure[1].payload).data).name)
    assert.equals(0, pending())
    assert.same({}, rows(d))
  end)

  it("takes up its own pending messages when it keeps its consumer name, a failing one once a run", function()
    local d = newdir()
    job(d, { consumer = "steady", max_attempts = 5, claim_idle = 60000, count = 2 })
    prepare(d)
    xadd(1, 1, { name = "poison", n = 1 })
    for i = 2, 5 do xadd(i, 1, { name = "m" .. i, n = i }) end
    -- a run of this consumer that died before committing anything
    server.cli("XREADGROUP", "GROUP", "g", "steady", "COUNT", 10, "STREAMS", "items", ">")
    local r = run(d, "run", "items")
    assert.equals(1, r.code, r.stdout .. r.stderr)
    assert.matches("4 created, 0 updated, 0 unchanged, 0 stale, 1 failed", r.stdout)
    local _, pills = r.stderr:gsub("poison pill", "")
    assert.equals(1, pills)
    assert.equals(1, pending()) -- the failed one, left for its next delivery
  end)

  it("keeps an unreadable message as failed under its stream id, acknowledged", function()
    local d = newdir()
    job(d)
    prepare(d)
    local id = server.cli("XADD", "items", "*", "id", "4", "data", "{not json")
    server.cli("XADD", "items", "*", "id", "5", "op", "merge")
    local r = run(d, "run", "items")
    assert.equals(1, r.code, r.stdout .. r.stderr)
    local failures = helpers.query(db(d), "SELECT key, error FROM entsync_failures ORDER BY key")
    assert.equals(2, #failures)
    assert.equals("@items:" .. id, failures[1].key)
    assert.matches("data is not a JSON object", failures[1].error)
    assert.matches("op must be upsert or delete", failures[2].error)
    assert.equals(0, pending())
  end)

  it("shares a group between two consumers; one SIGKILLed mid-batch loses nothing and doubles nothing", function()
    local N, COUNT = 200, 10
    local d = newdir()
    job(d, { claim_idle = 1500, block = 100, count = COUNT })
    -- two stores, one job file: STORE names the store
    helpers.write(d .. "/job.lua", helpers.read(d .. "/job.lua"):gsub('store "items.db"', 'store(env("STORE", "a.db"))'))
    prepare(d, "a.db", { STORE = "a.db" })
    prepare(d, "b.db", { STORE = "b.db" })
    for i = 1, N do xadd(i, 1, { name = "m" .. i, n = i }) end
    local a = helpers.spawn(d, { "job.lua", "run", "items", "--follow" },
      { STORE = "a.db", TRACE = d .. "/a.trace", PACE = "0.005" })
    local b = helpers.spawn(d, { "job.lua", "run", "items", "--follow" },
      { STORE = "b.db", TRACE = d .. "/b.trace", PACE = "0.005" })
    local function traced(name)
      local text = helpers.read(d .. "/" .. name) or ""
      local list = {}
      for n in text:gmatch("%d+") do list[#list + 1] = tonumber(n) end
      return list
    end
    -- A is killed while it maps a batch: past its first batch, mid-way
    -- through one
    assert.truthy(helpers.wait_for(function()
      local n = #traced("a.trace")
      if n > COUNT and n % COUNT >= 3 and n % COUNT <= 7 then
        helpers.kill(a.pid, "KILL")
        return true
      end
    end, 30), "consumer A never reached the middle of a batch")
    assert.is_true(helpers.wait_gone(a.pid, 10))
    local function stored(name)
      local set = {}
      for _, row in ipairs(applied(d, name)) do set[#set + 1] = row[1] end
      return set
    end
    -- B claims what A held once it has been idle for claim_idle
    assert.truthy(helpers.wait_for(function() return #stored("a.db") + #stored("b.db") >= N end, 30),
      "the group never delivered every message")
    helpers.kill(b.pid, "TERM")
    assert.is_true(helpers.wait_gone(b.pid, 10))
    local count = {}
    for _, name in ipairs({ "a.db", "b.db" }) do
      for _, n in ipairs(stored(name)) do count[n] = (count[n] or 0) + 1 end
    end
    for i = 1, N do assert.equals(1, count[i], "message " .. i .. " applied " .. tostring(count[i]) .. " times") end
    -- A mapped messages it never committed; B applied them
    local in_a = {}
    for _, n in ipairs(stored("a.db")) do in_a[n] = true end
    local lost_by_a = 0
    for _, n in ipairs(traced("a.trace")) do
      if not in_a[n] then lost_by_a = lost_by_a + 1 end
    end
    assert.is_true(lost_by_a > 0)
    assert.is_true(#stored("a.db") > 0)
    assert.equals(0, pending())
  end)
end)

describe("redis_stream export", function()
  it("publishes a store's changes that another store consumes", function()
    local a, b = newdir(), newdir()
    job(a, { export = true })
    job(b)
    local r = run(a, "run")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    prepare(b)
    helpers.sqlite3(db(a), "INSERT INTO item (name, n) VALUES ('one', 1), ('two', 2)")
    r = run(a, "run")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    assert.matches("2 created", r.stdout)
    helpers.sqlite3(db(a), "UPDATE item SET name = 'uno' WHERE n = 1; DELETE FROM item WHERE n = 2")
    r = run(a, "run")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    -- what the stream holds: one message a change, each with an event id
    local entries = redis.entries(redis_client():call("XRANGE", "items", "-", "+"))
    assert.equals(4, #entries)
    local events, last_version = {}, {}
    for _, entry in ipairs(entries) do
      local f = entry.fields
      assert.is_nil(events[f.event])
      events[f.event] = true
      local store_id = helpers.query(db(a), "SELECT value FROM entsync_meta WHERE key = 'store_id'")[1].value
      assert.equals(store_id .. ":items:" .. f.id .. ":" .. f.version, f.event)
      assert.is_true(tonumber(f.version) > (last_version[f.id] or 0))
      last_version[f.id] = tonumber(f.version)
    end
    assert.same({ "upsert", "upsert", "upsert", "delete" },
      { entries[1].fields.op, entries[2].fields.op, entries[3].fields.op, entries[4].fields.op })
    assert.same({ name = "uno", n = 1 }, json.decode(entries[3].fields.data))
    r = run(b, "run", "items")
    assert.equals(0, r.code, r.stdout .. r.stderr)
    local local_one = helpers.query(db(a), "SELECT id FROM item WHERE n = 1")[1].id
    assert.same({ [tostring(local_one)] = { name = "uno", n = 1 } }, rows(b))
    assert.equals(0, pending())
  end)
end)

describe("redis_stream in the daemon", function()
  local D = require "daemon_support"
  after_each(function() D.cleanup() end)

  -- CPU seconds (user + system) the process has used.
  local function cpu_seconds(pid)
    local stat = helpers.read("/proc/" .. pid .. "/stat") or ""
    local fields = {}
    for f in stat:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
    return ((tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)) / 100
  end

  -- Each burst is a run of its own with a new reader, under the same
  -- consumer name: a failed message must wait for claim_idle and count its
  -- deliveries, not be read again at once from the consumer's own history.
  it("gives up on a poison message after max_attempts deliveries across its runs", function()
    local d = newdir()
    job(d, { max_attempts = 3, claim_idle = 300, block = 100 })
    prepare(d)
    local consumer = D.daemon(d)
    local sent = core.sys.monotonic()
    xadd(2, 1, { name = "poison", n = 2 })
    xadd(3, 1, { name = "fine", n = 3 })
    assert.truthy(helpers.wait_for(function() return rows(d)["3"] end, 15))
    assert.truthy(helpers.wait_for(function() return pending() == 0 end, 15), "the poison message is never given up")
    -- delivered again only once claim_idle passed, twice
    assert.is_true(core.sys.monotonic() - sent >= 0.6, "redelivered before claim_idle")
    local failure = helpers.query(db(d), "SELECT key, payload, attempts FROM entsync_failures")
    assert.equals("2", failure[1].key)
    assert.equals("poison", json.decode(failure[1].payload).data.name)
    -- three deliveries, each applied once: no more tries after the last
    assert.equals(3, D.count_log(consumer, "poison pill"))
    core.sys.sleep(0.8)
    assert.equals(3, D.count_log(consumer, "poison pill"))
    assert.equals(0, D.stop(consumer, 10))
  end)

  it("consumes a stream as messages come, waiting on the socket between them, and publishes changes as they are made", function()
    local a, b = newdir(), newdir()
    job(a, { export = true })
    job(b, { block = 300 })
    assert.equals(0, run(a, "run").code)
    prepare(b)
    local publisher = D.daemon(a)
    local consumer = D.daemon(b)
    helpers.sqlite3(db(a), "INSERT INTO item (name, n) VALUES ('one', 1)")
    assert.truthy(helpers.wait_for(function() return rows(b)["1"] end, 15), "the change never reached store B")
    assert.same({ name = "one", n = 1 }, rows(b)["1"])
    -- a message from elsewhere, straight into the stream
    xadd(77, 1, { name = "direct", n = 77 })
    assert.truthy(helpers.wait_for(function() return rows(b)["77"] end, 15))
    helpers.sqlite3(db(a), "UPDATE item SET name = 'uno' WHERE n = 1")
    assert.truthy(helpers.wait_for(function() return rows(b)["1"].name == "uno" end, 15))
    helpers.sqlite3(db(a), "DELETE FROM item WHERE n = 1")
    assert.truthy(helpers.wait_for(function() return rows(b)["1"] == nil end, 15))
    assert.equals(0, pending())
    -- idle, the consumer sleeps in its blocking read: little CPU over a second
    local before = cpu_seconds(consumer.pid)
    core.sys.sleep(1)
    assert.is_true(cpu_seconds(consumer.pid) - before < 0.3)
    -- SIGTERM ends it at its next checkpoint (a blocking read lasts `block`)
    local code, seconds = D.stop(consumer, 10)
    assert.equals(0, code, D.stderr(consumer))
    assert.is_true(seconds < 5)
    assert.equals(0, D.stop(publisher, 10))
    -- each change was applied once
    assert.same({ { 1, "one" }, { 77, "direct" }, { 1, "uno" } }, applied(b))
  end)
end)
