-- Managed runs: the run log (entsync_runs, read by sync name through the
-- entsync_history view), `status`, and stored failures with their retry
-- schedule (entsync_failures, read through entsync_failed), through the
-- real entsync-run binary.

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"

local contact, summary = S.contact, S.summary

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  helpers.rmdir(dir)
end)

local function dated(id, day, fields)
  local f = { updated_at = string.format("2024-01-%02d", day) }
  for k, v in pairs(fields or {}) do f[k] = v end
  return contact(id, f)
end

local function runs(d)
  return S.query(d, "SELECT * FROM entsync_history ORDER BY id")
end

local function failure(d, remote_id)
  return S.query(d, "SELECT * FROM entsync_failed WHERE sync = 'contacts' AND direction = 'import' AND key = ?1",
    remote_id)[1]
end

local function lines_of(text)
  local out = {}
  for line in text:gmatch("[^\n]*") do out[#out + 1] = line end
  return out
end

local function has_line(text, pattern)
  for _, line in ipairs(lines_of(text)) do
    if line:match(pattern) then return line end
  end
  return nil
end

describe("the run log", function()
  it("records start, end, mode, counts and the cursor before and after each run", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 3) })
    local t0 = core.sys.now()
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.data(dir, { dated(1, 1), dated(2, 5, { name = "edited" }), dated(3, 3), dated(4, 4) })
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local t1 = core.sys.now()
    local log = runs(dir)
    assert.equal(2, #log)
    local first, second = log[1], log[2]
    for _, run in ipairs(log) do
      assert.equal("contacts", run.sync)
      assert.equal("run", run.operation)
      assert.equal("incremental", run.mode)
      assert.equal("ok", run.status)
      assert.is_true(run.started_at >= t0 - 1 and run.started_at <= run.ended_at and run.ended_at <= t1 + 1)
      assert.equal(core.sys.hostname(), run.host)
      assert.is_number(run.pid)
      assert.is_nil(run.error)
    end
    assert.same({ 3, 0, 0, 0, 0, 0 }, { first.created, first.updated, first.unchanged, first.stale, first.failed,
      first.deleted })
    assert.is_nil(first.cursor_before)
    assert.equal("2024-01-03/3", first.cursor_after)
    assert.same({ 1, 1 }, { second.created, second.updated })
    assert.equal("2024-01-03/3", second.cursor_before)
    assert.equal("2024-01-05/2", second.cursor_after)
    assert.is_true(second.started_at >= first.ended_at)
  end)

  it("logs a run with failures as failed and a run stopped by its limit as partial", function()
    S.job(dir, { limit = 2, batch = 1 })
    S.data(dir, { contact(1), contact(2, { age = "x" }) })
    local r1 = S.run(dir, "run", "--no-progress")
    assert.equal(1, r1.code)
    local log = runs(dir)
    assert.equal("failed", log[1].status)
    assert.equal(1, log[1].failed)
    assert.equal("full", log[1].mode)
    assert.is_number(log[1].ended_at)
    assert.is_not_nil(r1.stdout:match("limit reached"))
    S.data(dir, { contact(1), contact(2), contact(3), contact(4), contact(5) })
    local statuses = {}
    for _ = 1, 4 do
      local r = S.run(dir, "run", "--no-progress")
      statuses[#statuses + 1] = r.stdout:match("limit reached") and "partial" or "ok"
      if statuses[#statuses] == "ok" then break end
    end
    local logged = {}
    local all = runs(dir)
    for i = #all - #statuses + 1, #all do logged[#logged + 1] = all[i].status end
    assert.same(statuses, logged)
    assert.equal("partial", logged[1])
  end)

  it("import, refresh and retry are logged under their operation", function()
    S.job(dir, {})
    S.data(dir, { contact(1), contact(2) })
    assert.equal(0, S.run(dir, "import", "contacts", "1").code)
    assert.equal(0, S.run(dir, "refresh", "contacts", "1").code)
    assert.equal(0, S.run(dir, "retry", "contacts").code)
    local ops = {}
    for _, run in ipairs(runs(dir)) do ops[#ops + 1] = run.operation .. ":" .. run.status end
    assert.same({ "import:ok", "refresh:ok", "retry:ok" }, ops)
  end)
end)

describe("status", function()
  it("before any run: says nothing has run and creates no store", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1) })
    local r = S.run(dir, "status")
    assert.equal(0, r.code, r.stderr)
    assert.matches("not created yet", r.stdout)
    assert.is_not_nil(has_line(r.stdout, "^%s+last run%s+never$"))
    assert.is_false(S.exists(S.db(dir)))
  end)

  it("shows the last run, its counts, the cursor, a free lock and no failures", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 3) })
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local r = S.run(dir, "status")
    assert.equal(0, r.code, r.stderr)
    assert.is_not_nil(has_line(r.stdout, '^sync contacts: ndjson "contacts.ndjson" %-> contact, incremental'))
    assert.is_not_nil(has_line(r.stdout,
      "^%s+last run%s+run .*ago, ok %(incremental%): 3 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted$"))
    assert.is_not_nil(has_line(r.stdout, "^%s+cursor%s+2024%-01%-03 / 3$"))
    assert.is_not_nil(has_line(r.stdout, "^%s+mapped%s+3 remote entities$"))
    assert.is_not_nil(has_line(r.stdout, "^%s+lock%s+free$"))
    assert.is_not_nil(has_line(r.stdout, "^%s+failures%s+0 pending$"))
  end)

  it("shows pending failures with their attempts and error, and a held lock with its holder", function()
    S.job(dir, {})
    S.data(dir, { contact(1), contact(2, { age = "x" }) })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    local sleeper = S.sleeper(30)
    S.lease(dir, "contacts", { pid = sleeper })
    local r = S.run(dir, "status")
    helpers.kill(sleeper, "KILL")
    -- a failure pending: exit 1
    assert.equal(1, r.code, r.stderr)
    assert.is_not_nil(has_line(r.stdout, "^%s+last run%s+run .*, failed %(full%): 1 created, .*1 failed"))
    assert.is_not_nil(has_line(r.stdout, "^%s+failures%s+1 pending$"))
    assert.is_not_nil(has_line(r.stdout, "^%s+2 %(attempt 1, retry in %d+s%): .*expected integer"))
    assert.is_not_nil(has_line(r.stdout, "^%s+lock%s+held by pid " .. sleeper .. " on " .. core.sys.hostname():gsub("%p", "%%%0")),
      r.stdout)
  end)

  it("shows a full pass in progress and where it resumes", function()
    S.job(dir, { limit = 2, batch = 2 })
    S.data(dir, { contact(1), contact(2), contact(3), contact(4), contact(5) })
    repeat
      local r = S.run(dir, "run", "--no-progress")
    until not r.stdout:match("limit reached")
    assert.matches("limit reached", S.run(dir, "run", "--no-progress").stdout)
    local r = S.run(dir, "status")
    assert.is_not_nil(has_line(r.stdout, "^%s+full pass%s+%d+ in progress, resumes in contacts%.ndjson after 2 records$"),
      r.stdout)
  end)
end)

describe("retries", function()
  local function failing_job(extra)
    S.job(dir, extra or { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2, { age = "twenty-two" }), dated(3, 3) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(1, r.code)
    return r
  end

  it("a failed entity is kept with attempts, last error and a backoff that grows", function()
    failing_job()
    local f1 = failure(dir, "2")
    assert.equal(1, f1.attempts)
    assert.matches("expected integer", f1.error)
    assert.near(30, f1.next_at - f1.last_at, 1)
    local r = S.run(dir, "retry", "contacts")
    assert.equal(1, r.code)
    assert.equal(1, summary(r.stdout).failed)
    local f2 = failure(dir, "2")
    assert.equal(2, f2.attempts)
    assert.equal(f1.first_at, f2.first_at)
    assert.is_true(f2.last_at > f1.last_at)
    assert.is_true(f2.next_at > f1.next_at)
    assert.near(60, f2.next_at - f2.last_at, 1)
    assert.equal(1, S.run(dir, "retry", "contacts").code)
    local f3 = failure(dir, "2")
    assert.equal(3, f3.attempts)
    assert.near(120, f3.next_at - f3.last_at, 1)
    assert.equal("twenty-two", cjson.decode(f3.payload).age)
    assert.equal(1, S.count(dir, "entsync_failures"))
  end)

  it("the stored error is the last one", function()
    failing_job({})
    S.data(dir, { dated(1, 1), dated(2, 2, { age = { years = 22 } }), dated(3, 3) })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    local f = failure(dir, "2")
    assert.equal(2, f.attempts)
    assert.matches("got a table", f.error)
  end)

  it("retry SYNC after the mapping is fixed: the entity is imported and its failure row is gone", function()
    failing_job()
    S.job(dir, { mode = "incremental", changed = "updated_at",
      mapping = '{ email = "email", name = "name", age = { "age", import = function(v) return tonumber(v) or 0 end } }' })
    local r = S.run(dir, "retry", "contacts")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.same({ 1, 0, 1 }, { c.created, c.failed, c.retried })
    assert.is_nil(failure(dir, "2"))
    assert.equal("c2@example.com|Contact 2|0", S.contacts(dir)[2])
    local last = runs(dir)[#runs(dir)]
    assert.same({ "retry", "ok", 1 }, { last.operation, last.status, last.created })
  end)

  it("retry SYNC after the remote data is fixed: the entity is imported and its failure row is gone", function()
    failing_job()
    S.data(dir, { dated(1, 1), dated(2, 2, { age = 22 }), dated(3, 3) })
    local r = S.run(dir, "retry", "contacts")
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal(1, summary(r.stdout).created)
    assert.is_nil(failure(dir, "2"))
    assert.equal("c2@example.com|Contact 2|22", S.contacts(dir)[2])
  end)

  it("a full run that reads the fixed record clears its failure", function()
    failing_job({ changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2, { age = 22 }), dated(3, 3) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, summary(r.stdout).created)
    assert.equal(0, S.count(dir, "entsync_failures"))
  end)

  it("failures that are due are retried at the end of a complete run", function()
    failing_job()
    S.job(dir, { mode = "incremental", changed = "updated_at",
      mapping = '{ email = "email", name = "name", age = { "age", import = function(v) return tonumber(v) or 0 end } }' })
    local r0 = S.run(dir, "run", "--no-progress")
    assert.equal(0, r0.code, r0.stderr)
    assert.is_nil(summary(r0.stdout).retried, "not due yet")
    assert.is_not_nil(failure(dir, "2"))
    local store = helpers.open_store(S.db(dir))
    store:run("UPDATE entsync_failures SET next_at = ?1", core.sys.now() - 1)
    store:close()
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, summary(r.stdout).retried)
    assert.equal(1, summary(r.stdout).created)
    assert.is_nil(failure(dir, "2"))
  end)

  it("a malformed line keeps its raw text as the failure's payload", function()
    S.job(dir, {})
    S.data(dir, { contact(1), '{"id": 2, "email": "c2@example.com", "name": "Two" "age": 22}' })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    local row = S.query(dir, "SELECT * FROM entsync_failed")[1]
    assert.equal("import", row.direction)
    assert.equal("@contacts.ndjson:2", row.key)
    assert.is_not_nil(row.payload, "the malformed line is not kept anywhere")
    assert.matches('"name": "Two" "age"', row.payload, 1, true)
  end)

  it("a malformed line that is fixed and imported leaves no pending failure", function()
    S.job(dir, {})
    S.data(dir, { contact(1), '{"id": 2, "email": "c2@example.com", "name": "Two" "age": 22}' })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    assert.equal(1, S.count(dir, "entsync_failures"))
    S.data(dir, { contact(1), contact(2) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, summary(r.stdout).created)
    assert.equal(2, S.count(dir, "contact"))
    local status = S.run(dir, "status")
    assert.matches("failures%s+0 pending", status.stdout)
    assert.equal(0, S.count(dir, "entsync_failures"))
  end)

  it("retrying a record without an id does not add a second failure row", function()
    S.job(dir, {})
    S.data(dir, { contact(1), contact(2, { age = "x" }), { email = "noid@example.com", name = "No Id", age = 3 } })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    assert.equal(2, S.count(dir, "entsync_failures"))
    -- the mapping is fixed for 2; the record without an id still fails
    S.job(dir, { mapping = '{ email = "email", name = "name", age = { "age", import = function(v) return tonumber(v) or 0 end } }' })
    local r = S.run(dir, "retry", "contacts")
    assert.equal(1, r.code)
    assert.equal(1, summary(r.stdout).created)
    local rows = S.query(dir, "SELECT key, attempts, payload FROM entsync_failed")
    assert.equal(1, #rows, cjson.encode(rows))
    assert.equal("noid@example.com", cjson.decode(rows[1].payload).email)
    assert.equal(2, rows[1].attempts)
  end)
end)
