-- Kill safety: a real entsync-run child is SIGKILLed in the middle of an
-- import, at several points; runs after it must end in exactly the store an
-- uninterrupted run into a fresh store gives, with nothing lost or doubled.
-- Drop-folder files must leave the folder only after their records commit.

local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"

local summary = S.summary

local N, BATCH = 20000, 500

local dirs = {}

local function newdir()
  local d = helpers.tmpdir()
  dirs[#dirs + 1] = d
  return d
end

after_each(function()
  S.cleanup()
  for _, d in ipairs(dirs) do helpers.rmdir(d) end
  dirs = {}
end)

-- 20000 small records; the incremental ones share each changed mark by
-- fours and come in no particular order of it.
local data_cache = {}
local function data(kind)
  if not data_cache[kind] then
    local lines = {}
    for i = 1, N do
      local mark = kind == "unordered" and (1000 + (i * 7919) % 5000) or (1000 + i)
      lines[i] = string.format('{"id":%d,"email":"u%d@example.com","name":"User %d","age":%d,"updated_at":%d}',
        i, i, i, i % 90, mark)
    end
    data_cache[kind] = table.concat(lines, "\n") .. "\n"
  end
  return data_cache[kind]
end

-- A mapping callback that pauses now and then, so a run lasts long enough
-- to be killed at chosen points.
local PRELUDE = [[
local core = require "entsync.core"
local seen = 0
local function pace(v)
  seen = seen + 1
  if seen % 50 == 0 then core.sys.sleep(0.001) end
  return v
end
]]
local MAPPING = '{ email = "email", name = { "name", import = pace }, age = "age" }'

local function setup(opts, kind)
  local d = newdir()
  S.job(d, { mode = opts.mode, changed = opts.changed, limit = opts.limit, batch = BATCH, deletes = opts.deletes,
    prelude = PRELUDE, mapping = MAPPING })
  helpers.write(d .. "/data/contacts.ndjson", data(kind))
  return d
end

-- Runs until a run has nothing left to do; returns the runs' results.
local function run_to_completion(d, limited)
  local results = {}
  for _ = 1, 20 do
    local r = S.run(d, "run", "--no-progress")
    assert.is_true(r.code == 0, r.stdout .. r.stderr)
    results[#results + 1] = r
    local c = summary(r.stdout)
    if not limited then
      if not r.stdout:match("limit reached") then return results end
    elseif c.created + c.updated == 0 then
      return results
    end
  end
  error("no end in sight")
end

local function committed(d)
  if not S.exists(S.db(d)) then return 0 end
  local row = S.peek(d, "SELECT count(*) FROM entsync_idmap")[1]
  return row and tonumber(row[1]) or 0
end

-- The committed resume position of the open full pass.
local function pass_resume(d)
  if not S.exists(S.db(d)) then return 0 end
  local row = S.peek(d, [[SELECT t.pass_resume FROM entsync_state t JOIN entsync_syncs s ON s.id = t.sync
    WHERE s.name = 'contacts' AND t.pass_open = 1]])[1]
  local records = row and S.resumes_after(row[1])
  return math.type(records) == "integer" and records or 0
end

-- Spawns a run and SIGKILLs it once the store shows at least `rows`
-- committed records (by the progress function, committed ones by
-- default) and some committed by this run: a run killed before its first
-- commit may not have started its history row, and a fast run before it
-- can have committed past `rows` between two looks at the store. Returns
-- whether it was still running when killed.
local function kill_after(d, rows, progress)
  progress = progress or committed
  local before = progress(d)
  local child = S.spawn(d, { "job.lua", "run", "--no-progress" })
  S.own(child.pid)
  local reached = helpers.wait_for(function()
    local now = progress(d)
    return (now >= rows and now > before) or not helpers.alive(child.pid)
  end, 20)
  assert.is_truthy(reached, "the run made no progress")
  local killed = helpers.alive(child.pid)
  helpers.kill(child.pid, "KILL")
  assert.is_true(helpers.wait_gone(child.pid, 5))
  assert.is_true(S.wait_reaped(child.pid, 5))
  local out = helpers.read(child.stdout) or ""
  if killed then assert.equal("", out, "a killed run printed its summary") end
  return killed
end

local function total(d, column)
  return S.value(d, "SELECT coalesce(sum(" .. column .. "), 0) FROM entsync_history WHERE sync = 'contacts'")
end

local function check_killed_matches_reference(opts, kind)
  local limited = opts.limit ~= nil
  local reference = setup(opts, kind)
  run_to_completion(reference, limited)
  assert.equal(N, S.count(reference, "contact"))

  local d = setup(opts, kind)
  local kills = 0
  for _, batches in ipairs({ 1, 3, 6 }) do
    if kill_after(d, batches * BATCH) then kills = kills + 1 end
  end
  assert.is_true(kills >= 2, "only " .. kills .. " runs were killed mid-run")
  local before = committed(d)
  assert.is_true(before > 0 and before < N, "committed before the final runs: " .. before)
  local results = run_to_completion(d, limited)
  assert.matches("took over", results[1].stderr)

  assert.equal(S.dump(reference), S.dump(d))
  -- every record was created exactly once over all the runs, killed or not
  assert.equal(N, total(d, "created"))
  assert.equal(0, total(d, "updated"))
  assert.equal(0, total(d, "failed"))
  assert.equal(kills, S.count(d, "entsync_history", "sync = 'contacts' AND status = 'killed'"))
  assert.equal(0, S.count(d, "entsync_history", "sync = 'contacts' AND status = 'running'"))
  assert.same({}, S.query(d, "SELECT * FROM entsync_locks"))
  local state_sql = "SELECT t.* FROM entsync_state t JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts'"
  local state = S.query(d, state_sql)[1]
  local ref_state = S.query(reference, state_sql)[1]
  assert.is_not_nil(state)
  assert.is_not_nil(ref_state)
  assert.same({ ref_state.cursor_mark, ref_state.cursor_id, ref_state.pass_open },
    { state.cursor_mark, state.cursor_id, state.pass_open })
  return d
end

describe("SIGKILL in the middle of an import", function()
  it("full mode: the store after kills and a rerun is the store of one uninterrupted run", function()
    check_killed_matches_reference({ mode = "full", deletes = "delete" }, "ordered")
  end)

  -- The run after a kill goes on from the killed run's last checkpoint:
  -- it reads exactly the records after it.
  local function check_resume(d, progress)
    assert.is_true(kill_after(d, 3 * BATCH, progress), "the run ended before it was killed")
    local resume = progress(d)
    assert.is_true(resume >= 3 * BATCH and resume < N, "resume position " .. resume)
    local r = S.run(d, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.equal(N - resume, c.created + c.updated + c.unchanged)
    assert.equal(N, S.count(d, "contact"))
  end

  it("full mode: a run killed in a later pass is resumed where it committed, reading nothing twice", function()
    local d = setup({ mode = "full", deletes = "delete" }, "ordered")
    run_to_completion(d, false)
    check_resume(d, pass_resume)
    assert.equal(0, S.value(d, "SELECT pass_open FROM entsync_state"))
  end)

  it("full mode: a first import killed in a fresh store is resumed where it committed, reading nothing twice", function()
    local d = setup({ mode = "full", deletes = "delete" }, "ordered")
    -- the records committed so far are the ones created
    check_resume(d, committed)
  end)

  it("incremental mode over an unordered source: kills and reruns end in the uninterrupted store", function()
    check_killed_matches_reference({ mode = "incremental", changed = "updated_at" }, "unordered")
  end)

  it("incremental mode with a limit over an unordered source: kills and reruns end in the uninterrupted store", function()
    local d = check_killed_matches_reference({ mode = "incremental", changed = "updated_at", limit = 2500 },
      "unordered")
    -- limited runs read each record once: nothing was imported twice
    assert.equal(0, total(d, "unchanged"))
  end)
end)

describe("drop folders under SIGKILL", function()
  -- Records take `delay` seconds each to map and leave a mark file when
  -- they start, so a test knows which record a run is working on.
  local function marked_job(d, opts, delay)
    helpers.write(d .. "/marks/.keep", "")
    S.job(d, {
      mode = opts.mode, changed = opts.changed, limit = opts.limit, batch = opts.batch,
      provider = 'provider "ndjson" { dir = "inbox" }', remote = "files",
      prelude = string.format([[
local core = require "entsync.core"
local function mark(v, record)
  local f = io.open("marks/" .. tostring(record.id), "w")
  f:close()
  core.sys.sleep(%s)
  return v
end
]], delay),
      mapping = '{ email = "email", name = { "name", import = mark }, age = "age" }',
    })
  end

  local function started(d, id)
    return S.exists(d .. "/marks/" .. id)
  end

  local function dated(id, n)
    return S.contact(id, { updated_at = 100 + n })
  end

  it("full mode: a file read to its end moves to processed/ only after its records commit", function()
    local d = newdir()
    marked_job(d, { batch = 3 }, 0.3)
    helpers.write(d .. "/inbox/a.ndjson", S.ndjson({ S.contact(1), S.contact(2) }))
    helpers.write(d .. "/inbox/b.ndjson", S.ndjson({ S.contact(3), S.contact(4), S.contact(5) }))
    -- the first batch is 1, 2 (all of a.ndjson) and 3: kill while 3 maps
    local child = S.spawn(d, { "job.lua", "run", "--no-progress" })
    S.own(child.pid)
    assert.is_truthy(helpers.wait_for(function() return started(d, 3) end, 10))
    helpers.kill(child.pid, "KILL")
    assert.is_true(helpers.wait_gone(child.pid, 5))
    assert.is_true(S.wait_reaped(child.pid, 5))
    assert.same({ "a.ndjson", "b.ndjson" }, S.ls(d .. "/inbox"))
    assert.equal("0", S.peek(d, "SELECT count(*) FROM contact")[1][1])

    -- again: once the first batch committed (4 starts), a.ndjson has moved
    os.remove(d .. "/marks/3")
    local again = S.spawn(d, { "job.lua", "run", "--no-progress" })
    S.own(again.pid)
    assert.is_truthy(helpers.wait_for(function() return started(d, 4) end, 10))
    local inbox = S.ls(d .. "/inbox")
    local processed = S.ls(d .. "/inbox/processed")
    local rows = S.peek(d, "SELECT count(*) FROM contact")[1][1]
    assert.is_true(helpers.wait_gone(again.pid, 10))
    assert.same({ "b.ndjson", "processed" }, inbox)
    assert.same({ "a.ndjson" }, processed)
    assert.equal("3", rows)
    assert.equal(5, summary(helpers.read(again.stdout)).created)
    assert.same({ "a.ndjson", "b.ndjson" }, S.ls(d .. "/inbox/processed"))
    assert.same(S.expected({ S.contact(1), S.contact(2), S.contact(3), S.contact(4), S.contact(5) }), S.contacts(d))
  end)

  it("incremental mode with a limit: a file leaves the folder only after all its records commit", function()
    local d = newdir()
    marked_job(d, { mode = "incremental", changed = "updated_at", limit = 10, batch = 2 }, 0.3)
    local records = { dated(1, 1), dated(2, 2), dated(3, 3), dated(4, 4) }
    helpers.write(d .. "/inbox/a.ndjson", S.ndjson(records))
    -- batches are 1, 2 and 3, 4: kill while 3 maps, after the first commit
    local child = S.spawn(d, { "job.lua", "run", "--no-progress" })
    S.own(child.pid)
    assert.is_truthy(helpers.wait_for(function() return started(d, 3) end, 10))
    helpers.kill(child.pid, "KILL")
    assert.is_true(helpers.wait_gone(child.pid, 5))
    assert.is_true(S.wait_reaped(child.pid, 5))
    local inbox_at_kill = S.ls(d .. "/inbox")

    S.job(d, { mode = "incremental", changed = "updated_at", limit = 10, batch = 2,
      provider = 'provider "ndjson" { dir = "inbox" }', remote = "files" })
    run_to_completion(d, true)
    -- no record of the file may be lost
    assert.same(S.expected(records), S.contacts(d))
    assert.same({ "a.ndjson" }, S.ls(d .. "/inbox/processed"))
    assert.is_truthy(inbox_at_kill[1] == "a.ndjson", "a.ndjson had moved before its records 3 and 4 committed")
  end)
end)
