-- status and log from the command line, through the real entsync-run:
-- the store alone when the job file is broken, --json, the exit status,
-- dead lease holders, runs in progress, next scheduled runs from a live
-- daemon, hints, and the run history with its retention.

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"
local D = require "daemon_support"

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  D.cleanup()
  S.cleanup()
  helpers.rmdir(dir)
end)

local function has_line(text, pattern)
  for line in text:gmatch("[^\n]+") do
    if line:match(pattern) then return line end
  end
  return nil
end

local function status_json(...)
  local r = S.run(dir, "status", "--json", ...)
  local ok, doc = pcall(cjson.decode, r.stdout)
  assert.is_true(ok, "status --json is not JSON: " .. r.stdout .. r.stderr)
  return doc, r
end

describe("status", function()
  it("exits 0 when all is well, 1 with failures pending, and says so in --json", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1), S.contact(2) })
    assert.equal(0, S.run(dir, "run").code)
    local doc, r = status_json()
    assert.equal(0, r.code, r.stdout)
    assert.is_true(doc.ok)
    assert.equal(0, #doc.problems)
    local s = doc.syncs[1]
    assert.equal("contacts", s.name)
    assert.equal("ok", s.last_run.status)
    assert.equal(2, s.last_run.counts.created)
    assert.equal(2, s.mapped)
    assert.equal(0, s.failures.count)
    assert.is_number(s.lag)

    S.data(dir, { S.contact(1), S.contact(2), S.contact(3, { age = "old" }) })
    assert.equal(1, S.run(dir, "run").code)
    doc, r = status_json()
    assert.equal(1, r.code)
    assert.is_false(doc.ok)
    s = doc.syncs[1]
    assert.equal(1, s.failures.count)
    assert.equal("3", s.failures.recent[1].key)
    -- the payload travels with it, as JSON
    assert.equal("old", s.failures.recent[1].payload.age)
    local kinds = {}
    for _, p in ipairs(doc.problems) do kinds[p.kind] = true end
    assert.is_true(kinds.failures and kinds.failed)
    -- the text says what to do next
    r = S.run(dir, "status")
    assert.equal(1, r.code)
    assert.is_not_nil(has_line(r.stdout, "^%s+hint%s+entsync%-run job%.lua failures contacts$"), r.stdout)
    assert.is_not_nil(has_line(r.stdout, "^%s+last good%s+run .* ok "), r.stdout)
  end)

  it("works from the store alone when the job file does not load, and exits 2", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1) })
    assert.equal(0, S.run(dir, "run").code)
    helpers.write(dir .. "/job.lua", helpers.read(dir .. "/job.lua") .. "\nsync \"broken\" {\n")
    local r = S.run(dir, "status")
    assert.equal(2, r.code, r.stderr)
    assert.matches("job job%.lua does not load: job%.lua:%d+:", r.stdout)
    assert.is_not_nil(has_line(r.stdout, "^sync contacts: %(settings unknown%)$"), r.stdout)
    assert.is_not_nil(has_line(r.stdout, "^%s+last run%s+run .*ok %(full%): 1 created"), r.stdout)
    local doc = status_json()
    assert.is_false(doc.job.loads)
    assert.equal("contacts", doc.syncs[1].name)
    -- a store named by the job's store line is found too
    helpers.write(dir .. "/other.lua", 'store "elsewhere.db"\n' .. helpers.read(dir .. "/job.lua"))
    r = helpers.run(dir, { "other.lua", "status" })
    assert.matches("store " .. dir:gsub("%p", "%%%0") .. "/elsewhere%.db %(not created yet", r.stdout)
  end)

  it("shows a lease whose holder died as dead, and a run in progress with its counts so far", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1) })
    assert.equal(0, S.run(dir, "run").code)
    local dead = S.dead_pid()
    S.lease(dir, "contacts", { pid = dead })
    local r = S.run(dir, "status")
    assert.is_not_nil(has_line(r.stdout, "^%s+lock%s+held by pid " .. dead .. " .* which is dead: the next run takes it over$"),
      r.stdout)
    assert.is_not_nil(has_line(r.stdout, "^%s+hint%s+the lease holder pid " .. dead .. " is dead"), r.stdout)
    local doc = status_json()
    assert.is_true(doc.syncs[1].lease.dead)
    assert.is_false(doc.syncs[1].lease.alive)

    -- a run that goes on: a slow provider, one record a batch
    helpers.install_slow_provider(dir)
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text", name = "text", age = "integer" }
local slow = provider "slow" { count = 400, delay = 0.02 }
sync "contacts" { remote = slow, entity = "contact", mapping = { email = "email", name = "name", age = "age" },
  import = { batch = 5 } }
]])
    local child = D.start(dir, { "job.lua", "run", "--no-progress" })
    local running = helpers.wait_for(function()
      local out = S.run(dir, "status").stdout
      return has_line(out, "^%s+running%s+run .* by pid " .. child.pid .. ": %d+ created") and out
    end, 10)
    assert.is_truthy(running, "status never showed the run in progress")
    assert.is_not_nil(has_line(running, "^%s+lock%s+held by pid " .. child.pid .. " .*expires in"), running)
    D.signal(child, "TERM")
    assert.equal(5, D.exit_code(child, 10), D.stderr(child))
  end)

  it("shows the next scheduled run a live daemon plans, and calls a sync stale when its runs stop going well", function()
    S.job(dir, { extra = "" })
    S.data(dir, { S.contact(1) })
    helpers.write(dir .. "/job.lua", helpers.read(dir .. "/job.lua"):gsub("import = {", 'schedule = "every 1h", import = {'))
    local child = D.daemon(dir)
    assert.is_truthy(D.wait_log(child, "contacts: 1 created", 5), D.stderr(child))
    local r = helpers.wait_for(function()
      local s = S.run(dir, "status")
      return has_line(s.stdout, "^%s+next run%s+in 6%dm %(every 1h%)$") and s
    end, 5)
    assert.is_truthy(r, "no next run from the daemon")
    assert.equal(0, r.code, r.stdout)
    local doc = status_json()
    assert.is_true(doc.syncs[1].next_run_by_daemon)
    assert.is_true(math.abs(doc.syncs[1].next_run - (core.sys.now() + 3600)) < 60)
    assert.equal(0, (D.stop(child)))
    -- without a daemon the schedule still says when
    r = S.run(dir, "status")
    assert.is_not_nil(has_line(r.stdout, "^%s+next run%s+in .* %(every 1h%): when a daemon runs$"), r.stdout)
    -- --max-age: the last good run is older than asked
    r = S.run(dir, "status", "--max-age", "0")
    assert.equal(1, r.code)
    assert.is_not_nil(has_line(r.stdout, "^%s+stale%s+last good run %d+s ago, more than 0s$"), r.stdout)
    assert.is_true(status_json("--max-age", "0").syncs[1].stale)
  end)

  it("status SYNC shows one sync; an unknown one is a usage error with a suggestion", function()
    S.job(dir, { extra = 'sync "others" { remote = files "contacts.ndjson", entity = "contact", mapping = { name = "name" } }' })
    S.data(dir, { S.contact(1) })
    assert.equal(0, S.run(dir, "run").code)
    local r = S.run(dir, "status", "others")
    assert.equal(0, r.code, r.stderr)
    assert.matches("\nsync others:", r.stdout)
    assert.is_nil(r.stdout:find("sync contacts:", 1, true))
    r = S.run(dir, "status", "contatcs")
    assert.equal(2, r.code)
    assert.matches('no sync named "contatcs" %(declared: contacts, others%) %(did you mean contacts%?%)', r.stderr)
  end)
end)

describe("log", function()
  it("lists the runs newest first, as text and as JSON lines; log SYNC only that sync's", function()
    S.job(dir, { extra = 'sync "others" { remote = files "contacts.ndjson", entity = "contact", mapping = { name = "name" } }' })
    S.data(dir, { S.contact(1), S.contact(2) })
    assert.equal(0, S.run(dir, "run").code)
    assert.equal(0, S.run(dir, "import", "contacts", "1").code)
    local r = S.run(dir, "log")
    assert.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(3, #lines, r.stdout)
    assert.matches("^#3%s+%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ%s+contacts%s+import%s+import%s+ok", lines[1])
    assert.matches("contacts%s+run%s+full%s+ok%s+[%d.]+s%s+2 created, 0 updated", r.stdout)
    r = S.run(dir, "log", "others", "--json")
    local rows = {}
    for line in r.stdout:gmatch("[^\n]+") do rows[#rows + 1] = cjson.decode(line) end
    assert.equal(1, #rows)
    assert.equal("others", rows[1].sync)
    assert.equal("run", rows[1].operation)
    assert.equal(2, rows[1].counts.created)
    r = S.run(dir, "log", "--limit", "1")
    assert.equal(1, select(2, r.stdout:gsub("\n", "")))
  end)

  it("keeps the runs the job's history setting says, and the last of each kind whatever their age", function()
    S.job(dir, { prelude = "history { runs = 3 }" })
    S.data(dir, { S.contact(1) })
    for _ = 1, 6 do assert.equal(0, S.run(dir, "run").code) end
    S.data(dir, { S.contact(1, { age = "x" }) })
    assert.equal(1, S.run(dir, "run").code)
    local rows = S.query(dir, "SELECT id, status FROM entsync_runs ORDER BY id")
    local ids = {}
    for _, row in ipairs(rows) do ids[#ids + 1] = row.id .. ":" .. row.status end
    -- the newest three, and the last ok run stays beside them
    assert.same({ "5:ok", "6:ok", "7:failed" }, ids)
    -- days: runs older are pruned at the next run's end (the last ok kept)
    S.job(dir, { prelude = "history { days = 1 }" })
    S.data(dir, { S.contact(1) })
    helpers.sqlite3(S.db(dir), "UPDATE entsync_runs SET started_at = started_at - 3 * 86400")
    assert.equal(0, S.run(dir, "run").code)
    ids = {}
    for _, row in ipairs(S.query(dir, "SELECT id, status FROM entsync_runs ORDER BY id")) do
      ids[#ids + 1] = row.id .. ":" .. row.status
    end
    assert.same({ "7:failed", "8:ok" }, ids)
    -- the counters behind /metrics do not go back with the pruning
    local totals = cjson.decode(S.value(dir, "SELECT value FROM entsync_meta WHERE key LIKE 'totals:%'"))
    assert.equal(7, totals.runs_ok)
    assert.equal(1, totals.runs_failed)
  end)

  it("refuses a history setting it does not know", function()
    S.job(dir, { prelude = "history { keep = 3 }" })
    local r = S.run(dir, "check")
    assert.equal(2, r.code)
    assert.matches('^entsync%-run: job%.lua:1: history: unknown setting "keep" %(known: days, runs%)\n$', r.stderr)
  end)
end)
