-- The writer thread: a first import's batch, taken by the C record path,
-- is committed on the store's writer thread while the next batch is read
-- (src/store.h, Run:write_batch). What it stores is what the Lua thread
-- would store (ENTSYNC_WRITER=off writes every batch there): the rows, the
-- id map, the cursor, the change rows and their origin. A handed-off batch
-- that fails is written again, record by record, with the next one; a run
-- asked to stop commits the batch in flight first.

local helpers = require "helpers"
local json = require "entsync.json"

local JOB = [==[
store "entsync.db"
local SPIN = tonumber(env("SPIN", "0"))
entity "user" { email = "text", name = "text" }
entity "profile" { city = "text" }
local files = provider "ndjson" { path = "contacts.ndjson" }
sync "contacts" { remote = files, entity = { "user", "profile" },
  mapping = { user = { email = "email", name = { import = function(_, r) for _ = 1, SPIN do end return r.first .. "!" end } },
    profile = { city = "city" } },
  import = { mode = "incremental", changed = "at", batch = tonumber(env("BATCH", "10")) } }
]==]

-- another remote exporting the users: the import's change rows are its to send
local EXPORTER = [==[
local sink = provider "slow" { count = 0, delay = 0 }
sync "sink" { remote = sink, entity = "user", mapping = { email = "email" }, import = false,
  export = { on_change = true } }
]==]

local function line(i, id, at)
  return json.encode(json.object({ id = id or i, at = at or i, email = "u" .. i .. "@example.com", first = "F" .. i,
    city = "C" .. (i % 7) }))
end

-- repeat_at: { [line] = id | { id, mark } }
local function lines(n, repeat_at)
  local out = {}
  for i = 1, n do out[#out + 1] = line(i) end
  -- a remote id met again (a change log): its first create fails then
  for at, id in pairs(repeat_at or {}) do
    if type(id) == "table" then out[at] = line(at, id[1], id[2]) else out[at] = line(at, id) end
  end
  return table.concat(out, "\n") .. "\n"
end

describe("the writer thread", function()
  local dirs = {}

  local function job_dir(name, input, extra)
    local dir = helpers.tmpdir()
    dirs[#dirs + 1] = dir
    helpers.install_slow_provider(dir)
    helpers.write(dir .. "/job.lua", JOB .. (extra or ""))
    helpers.write(dir .. "/contacts.ndjson", input)
    return dir, name
  end

  after_each(function()
    for _, dir in ipairs(dirs) do helpers.rmdir(dir) end
    dirs = {}
  end)

  local function run(dir, env, ...)
    local r = helpers.run(dir, { "job.lua", "run", "contacts", "--no-progress", "--verbose", ... }, env)
    assert.equal(0, r.code, r.stderr)
    return r
  end

  local function handed_off(r)
    local n = r.stderr:match("(%d+) batches committed on the writer thread")
    assert.is_not_nil(n, r.stderr)
    return tonumber(n)
  end

  -- what the store holds, times left out
  local function dump(dir)
    local db = dir .. "/entsync.db"
    return {
      users = helpers.query(db, "SELECT id, email, name FROM user ORDER BY id"),
      profiles = helpers.query(db, "SELECT * FROM profile ORDER BY id"),
      idmap = helpers.query(db, "SELECT local_id, remote_id, changed, hash, raw_hash FROM entsync_idmap "
        .. "ORDER BY local_id"),
      state = helpers.query(db, "SELECT cursor_mark, cursor_id, checkpoint FROM entsync_state"),
      failures = helpers.query(db, "SELECT key FROM entsync_failures ORDER BY key"),
    }
  end

  local function summary(r)
    return r.stdout:match("contacts: ([^\n]*) in ") or r.stdout
  end

  it("commits a first import's batches there, storing what the Lua thread stores", function()
    local input = lines(95)
    local on = job_dir("on", input)
    local off = job_dir("off", input)
    local r_on = run(on, {})
    local r_off = run(off, { ENTSYNC_WRITER = "off" })
    assert.matches("95 created, 0 updated", r_on.stdout, 1, true)
    assert.equal(summary(r_off), summary(r_on))
    -- 95 records in batches of 10: every batch but the first (its first
    -- line is read by the Lua pipeline, which writes on the Lua thread) and
    -- the last (the end of the input) is committed there
    assert.equal(8, handed_off(r_on))
    assert.equal(0, handed_off(r_off))
    local stored = dump(on)
    assert.equal(95, #stored.users)
    assert.equal(95, #stored.profiles)
    assert.equal(95, #stored.idmap)
    assert.same(dump(off), stored)
    -- the run record counts what was committed
    local runs = helpers.query(on .. "/entsync.db", "SELECT status, created FROM entsync_runs")
    assert.same({ { status = "ok", created = 95 } }, runs)
    -- and the other direction: records added later, the run after them
    -- looks every id up and writes on the Lua thread
    helpers.write(on .. "/contacts.ndjson", input .. line(96) .. "\n")
    local again = run(on, {})
    assert.matches("1 created, 0 updated", again.stdout, 1, true)
    assert.equal(0, handed_off(again))
  end)

  it("stamps the change rows of a handed-off batch with the importing sync", function()
    local input = lines(40)
    local on = job_dir("on", input, EXPORTER)
    local off = job_dir("off", input, EXPORTER)
    local r_on = run(on, {})
    run(off, { ENTSYNC_WRITER = "off" })
    assert.is_true(handed_off(r_on) > 0)
    local sql = "SELECT c.local_id, s.name AS origin FROM entsync_changes c LEFT JOIN entsync_syncs s "
      .. "ON s.id = c.origin ORDER BY c.seq"
    local changes = helpers.query(on .. "/entsync.db", sql)
    assert.equal(40, #changes)
    for _, change in ipairs(changes) do assert.equal("contacts", change.origin) end
    assert.same(helpers.query(off .. "/entsync.db", sql), changes)
    -- the other remote takes them: the drain creates each user there
    local exported = "SELECT count(*) AS n FROM entsync_idmap m JOIN entsync_syncs s ON s.id = m.sync "
      .. "WHERE s.name = 'sink'"
    for _, dir in ipairs({ on, off }) do
      local r = helpers.run(dir, { "job.lua", "run", "sink", "--no-progress" }, {})
      assert.equal(0, r.code, r.stderr)
      assert.same({ { n = 40 } }, helpers.query(dir .. "/entsync.db", exported))
    end
  end)

  for _, case in ipairs({
    -- found failed when the next batch is written
    { name = "in the middle", n = 60, repeat_at = { [25] = 15 }, expect = "59 created, 1 updated, 0 unchanged, 0 stale" },
    -- found failed by the last, written on the Lua thread
    { name = "before the last", n = 40, repeat_at = { [38] = 3 }, expect = "39 created, 1 updated, 0 unchanged, 0 stale" },
    -- older than the record stored: stale, the stored one kept (the
    -- batch written again looks every id up)
    { name = "older", n = 60, repeat_at = { [25] = { 15, 5 } }, expect = "59 created, 0 updated, 0 unchanged, 1 stale" },
  }) do
    it("writes a handed-off batch that failed again with the next (a repeated id " .. case.name .. ")", function()
      local input = lines(case.n, case.repeat_at)
      local on = job_dir("on", input)
      local off = job_dir("off", input)
      local lua = job_dir("lua", input)
      local r_on = run(on, {})
      local r_off = run(off, { ENTSYNC_WRITER = "off" })
      local r_lua = run(lua, { ENTSYNC_RECORD_PATH = "lua" })
      assert.equal(summary(r_lua), summary(r_on))
      assert.equal(summary(r_off), summary(r_on))
      assert.matches(case.expect, r_on.stdout, 1, true)
      local stored = dump(on)
      assert.equal(case.n - 1, #stored.idmap)
      assert.same(dump(off), stored)
      -- the Lua path stores the same records (its local ids may differ)
      local by_remote = {}
      for _, row in ipairs(stored.idmap) do by_remote[row.remote_id] = row.hash end
      for _, row in ipairs(dump(lua).idmap) do assert.equal(by_remote[row.remote_id], row.hash) end
      assert.same(helpers.query(off .. "/entsync.db", "SELECT status, created, updated, stale FROM entsync_runs"),
        helpers.query(on .. "/entsync.db", "SELECT status, created, updated, stale FROM entsync_runs"))
    end)
  end

  it("commits the batch in flight when asked to stop, and the next run goes on from there", function()
    local n = 20000
    local dir = job_dir("stop", lines(n))
    -- a callback that takes a while: the run is still reading when stopped
    local pid = helpers.spawn(dir, { "job.lua", "run", "contacts", "--no-progress" }, { BATCH = "500",
      SPIN = "100000" }).pid
    local db = dir .. "/entsync.db"
    local function count(sql) return tonumber(helpers.sqlite3_peek(db, sql)[1]) end
    -- stopped once some batches are in
    helpers.wait_for(function()
      local rows = count("SELECT count(*) FROM entsync_idmap")
      return rows and rows >= 1000
    end, 20)
    helpers.kill(pid, "INT")
    assert.is_true(helpers.wait_gone(pid, 20))
    local users = count("SELECT count(*) FROM user")
    local idmap = count("SELECT count(*) FROM entsync_idmap")
    local profiles = count("SELECT count(*) FROM profile")
    assert.equal(users, idmap)
    assert.equal(users, profiles)
    assert.is_true(users > 0 and users < n)
    assert.same({ "partial" }, helpers.sqlite3_peek(db, "SELECT status FROM entsync_runs"))
    local r = helpers.run(dir, { "job.lua", "run", "contacts", "--no-progress" }, { BATCH = "500" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(n, count("SELECT count(*) FROM entsync_idmap"))
    assert.equal(n, count("SELECT count(DISTINCT remote_id) FROM entsync_idmap"))
    assert.equal(n, count("SELECT count(*) FROM user"))
  end)
end)
