-- Running entsync day to day, through the real entsync-run: per-command
-- help and suggestions, arguments that do not apply, a folder given as the
-- job, check reporting every error, SIGINT and SIGTERM on run, one daemon
-- per store, JSON logs read by jq, and progress on a terminal (a pty) and
-- in logs.

local cjson = require "cjson"
local helpers = require "helpers"
local S = require "import_support"
local D = require "daemon_support"

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  D.cleanup()
  helpers.rmdir(dir)
end)

local function run(...)
  return helpers.run(dir, { ... })
end

local function one_line_usage_error(r, pattern)
  assert.equal(2, r.code, r.stdout .. r.stderr)
  assert.equal(1, select(2, r.stderr:gsub("\n", "")), r.stderr)
  assert.matches(pattern, r.stderr)
end

-- n contacts in data/contacts.ndjson, written fast (one line each).
local function many(n)
  local lines = {}
  for i = 1, n do
    lines[i] = string.format('{"id":%d,"email":"c%d@example.com","name":"Contact %d","age":%d}', i, i, i, i % 90)
  end
  helpers.write(dir .. "/data/contacts.ndjson", table.concat(lines, "\n") .. "\n")
end

describe("the command line", function()
  it("gives each command its own --help, and help COMMAND the same", function()
    S.job(dir, {})
    for _, name in ipairs({ "run", "import", "refresh", "retry", "reset", "failures", "export", "status", "log",
        "check", "daemon", "repl" }) do
      local r = run("job.lua", name, "--help")
      assert.equal(0, r.code, r.stderr)
      assert.matches("^usage: entsync%-run JOB%.lua " .. name, r.stdout)
      assert.same(r.stdout, run("help", name).stdout)
      assert.same(r.stdout, run(name, "--help").stdout)
    end
    local r = run("job.lua", "run", "--help")
    for _, option in ipairs({ "--full", "--dry-run", "--diff", "--wait", "--allow-deletes", "--log-format" }) do
      assert.matches("\n  " .. option:gsub("%-", "%%-"), r.stdout)
    end
    assert.is_nil(r.stdout:find("--listen", 1, true))
    -- the usage lists every command and every option
    r = run("--help")
    for _, name in ipairs({ "reset", "log", "failures", "help" }) do assert.matches("\n  " .. name .. " ", r.stdout) end
    for option in pairs(require("entsync.usage").options) do
      assert.is_truthy(r.stdout:find(option, 1, true), option .. " missing from --help")
    end
    assert.matches("^entsync ", run("-V").stdout)
  end)

  it("suggests the command, option or sync that was meant", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1) })
    one_line_usage_error(run("job.lua", "stauts"), 'unknown command "stauts" %(did you mean status%?%)')
    one_line_usage_error(run("job.lua", "run", "--dryrun"), "unknown option %-%-dryrun %(did you mean %-%-dry%-run%?%)")
    one_line_usage_error(run("job.lua", "run", "contcts"),
      'no sync named "contcts" %(declared: contacts%) %(did you mean contacts%?%)')
    one_line_usage_error(run("job.lua", "contacts"),
      'unknown command "contacts" %(to run sync contacts: entsync%-run job%.lua run contacts%)')
    one_line_usage_error(run("job.lua", "failures", "contacts", "dimsiss"), "%(did you mean dismiss%?%)")
  end)

  it("refuses what does not apply: options, arguments, refresh without ids, a folder as the job", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1) })
    one_line_usage_error(run("job.lua", "status", "--dry-run"), "^entsync%-run: status does not take %-%-dry%-run")
    one_line_usage_error(run("job.lua", "check", "--all"), "check does not take %-%-all")
    one_line_usage_error(run("job.lua", "daemon", "--full"), "daemon does not take %-%-full")
    one_line_usage_error(run("job.lua", "check", "extra"), 'check takes no arguments, got "extra"')
    one_line_usage_error(run("job.lua", "import", "contacts"), "import needs more arguments")
    one_line_usage_error(run("job.lua", "refresh", "contacts"), "refresh takes a sync and local ids, or %-%-all")
    one_line_usage_error(run("job.lua", "run", "--diff"), "%-%-diff goes with %-%-dry%-run")
    one_line_usage_error(run(dir), "is a folder; give the job file %(did you mean " .. dir:gsub("%p", "%%%0")
      .. "/job%.lua%?%)")
    assert.is_false(S.exists(S.db(dir)))
  end)

  it("check reports every error of the job in one pass, then the files and folders it reads", function()
    helpers.write(dir .. "/job.lua", [[
local files = provider "ndjson" { dir = "data" }
local nope = provider "nosuch" { }
entity "contact" { name = "text", age = "integr" }
entity "tag" { label = "text" }
sync "tags" { remote = files "tags.ndjson", entity = "tag", mapping = { label = "label", colour = "x", size = "y" } }
sync "other" { remote = nope "x", entity = "tag", mapping = { label = "label" } }
require "nosuch.module"
]])
    local r = run("job.lua", "check")
    assert.equal(2, r.code)
    assert.equal(table.concat({
      'entsync-run: job.lua:2: provider "nosuch": no such provider (looked for providers/nosuch.lua)',
      'entsync-run: job.lua:3: entity "contact": field "age" has unknown type "integr" (text, integer, real, '
        .. "boolean, json, timestamp)",
      'entsync-run: job.lua:5: sync "tags": field "colour" is not declared in entity "tag"',
      'entsync-run: job.lua:5: sync "tags": field "size" is not declared in entity "tag"',
      "entsync-run: job.lua:7: module 'nosuch.module' not found (looked for nosuch/module.lua beside the job, "
        .. "then in entsync's lua/, providers/ and mappings/)",
      "entsync-run: job.lua: 5 errors",
    }, "\n") .. "\n", r.stderr)
    -- the job right, what it reads is looked at
    helpers.write(dir .. "/job.lua", [[
local files = provider "ndjson" { dir = "data" }
local out = provider "ndjson" { dir = "nowhere" }
entity "tag" { label = "text" }
sync "tags" { remote = files "tags.ndjson", entity = "tag", mapping = { label = "label" } }
sync "labels" { remote = files "labels.ndjson", entity = "tag", mapping = { label = "label" },
  import = { mode = "incremental", changed = "updated_at" } }
sync "sink" { remote = out, entity = "tag", mapping = { label = "label" }, import = false,
  export = { resource = "tags.ndjson" } }
]])
    helpers.write(dir .. "/data/labels.ndjson", '{"key":1,"label":"a"}\n')
    r = run("job.lua", "check")
    assert.equal(2, r.code)
    assert.matches('job.lua:4: sync "tags": ' .. dir .. "/data/tags.ndjson: no such file or folder", r.stderr, 1, true)
    assert.matches('job.lua:7: sync "sink": ' .. dir .. "/nowhere: the folder exports are written into does not exist",
      r.stderr, 1, true)
    helpers.write(dir .. "/data/tags.ndjson", "")
    os.execute("mkdir -p " .. helpers.quote(dir .. "/nowhere"))
    r = run("job.lua", "check")
    assert.equal(0, r.code, r.stderr)
    assert.matches('note: sync "labels": ' .. dir .. '/data/labels.ndjson: its first record has no id field "id"',
      r.stdout, 1, true)
    assert.matches('no changed field "updated_at"', r.stdout, 1, true)
  end)
end)

describe("SIGINT and SIGTERM on run", function()
  for _, signal in ipairs({ "INT", "TERM" }) do
    it("SIG" .. signal .. " stops at the next checkpoint with the summary, the lease released, exit 5", function()
      S.job(dir, { batch = 500 })
      many(60000)
      local child = D.start(dir, { "job.lua", "run", "--no-progress" })
      assert.is_truthy(helpers.wait_for(function()
        local n = S.peek(dir, "SELECT count(*) FROM contact")[1]
        return n and tonumber(n[1]) and tonumber(n[1]) > 0
      end, 10), "the run never committed a batch")
      D.signal(child, signal)
      assert.equal(5, D.exit_code(child, 10), D.stderr(child))
      assert.matches("SIG" .. signal .. ": stopping at the next checkpoint", D.stderr(child), 1, true)
      local out = D.stdout(child)
      assert.matches("^contacts: %d+ created, .* %(stopped: the next run continues here%)", out)
      local created = tonumber(out:match("^contacts: (%d+) created"))
      assert.is_true(created < 60000 and created % 500 == 0, out)
      assert.equal(created, S.count(dir, "contact"))
      assert.equal(0, S.count(dir, "entsync_locks"))
      assert.equal("partial", S.value(dir, "SELECT status FROM entsync_runs"))
      -- the next run goes on from there
      local r = S.run(dir, "run")
      assert.equal(0, r.code, r.stderr)
      assert.equal(60000, S.count(dir, "contact"))
    end)
  end
end)

describe("one daemon per store", function()
  it("a second daemon exits 3 naming the first; once the first is gone one starts", function()
    S.job(dir, {})
    S.data(dir, { S.contact(1) })
    local first = D.daemon(dir)
    local r = S.run(dir, "daemon")
    assert.equal(3, r.code, r.stderr)
    assert.matches("^entsync%-run: another daemon runs on .*entsync%.db: pid " .. first.pid, r.stderr)
    assert.equal(0, (D.stop(first)))
    local second = D.daemon(dir)
    assert.equal(0, (D.stop(second)))
    -- a daemon killed outright leaves its lease to be taken over
    local killed = D.daemon(dir)
    D.signal(killed, "KILL")
    assert.is_truthy(D.exit_code(killed, 5))
    local third = D.daemon(dir)
    assert.is_truthy(D.wait_log(third, "took over the daemon lease of a daemon that is dead", 5), D.stderr(third))
    assert.equal(0, (D.stop(third)))
  end)
end)

describe("logs", function()
  local function jq_lines(text)
    -- every line is JSON that jq reads; jq -c gives them back one a line
    local file = os.tmpname()
    helpers.write(file, text)
    local pipe = io.popen("jq -c . " .. helpers.quote(file) .. " 2>&1; echo \"rc=$?\"")
    local out = pipe:read("a")
    pipe:close()
    os.remove(file)
    assert.is_truthy(out:match("rc=0\n$"), "jq did not read it all: " .. out)
    local entries = {}
    for line in out:gmatch("[^\n]+") do
      if line ~= "rc=0" then entries[#entries + 1] = cjson.decode(line) end
    end
    return entries
  end

  it("--log-format json: ISO 8601 times, fields, summaries as events, nothing else on stderr", function()
    helpers.write(dir .. "/mappings/contact.lua", 'return {\n  email = "email",\n  name = "name",\n  age = "age",\n}\n')
    S.job(dir, { mapping = '"mappings.contact"' })
    S.data(dir, { S.contact(1), S.contact(2, { age = "old" }), '{"id": 3, broken' })
    local r = S.run(dir, "run", "--log-format", "json", "--progress")
    assert.equal(1, r.code)
    assert.is_nil(r.stderr:find("\27", 1, true), "escape codes in the JSON stream")
    local entries = jq_lines(r.stderr)
    local by_event = {}
    for _, e in ipairs(entries) do
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", e.time)
      assert.is_string(e.level)
      assert.is_string(e.message)
      by_event[e.event or "none"] = by_event[e.event or "none"] or {}
      table.insert(by_event[e.event or "none"], e)
    end
    local failure
    for _, e in ipairs(by_event.failure or {}) do if e.remote_id == "2" then failure = e end end
    assert.is_table(failure, r.stderr)
    assert.same({ "contacts", "run", "contact", "age", "./mappings/contact.lua", 4 },
      { failure.sync, failure.operation, failure.entity, failure.field, failure.file, failure.line })
    local unreadable
    for _, e in ipairs(by_event.failure or {}) do if e.input then unreadable = e end end
    assert.equal("contacts.ndjson:3", unreadable.input)
    local summary = by_event.summary[1]
    assert.equal("contacts", summary.sync)
    assert.equal("import", summary.kind)
    assert.equal("failed", summary.status)
    assert.same({ 1, 2 }, { summary.counts.created, summary.counts.failed })
    -- stdout keeps the summary line
    assert.matches("^contacts: 1 created", r.stdout)
  end)

  it("a callback's ctx:log line names the sync and the entity at hand", function()
    S.job(dir, { mapping = '{ email = "email", name = { "name", import = function(v, _, ctx) ctx:log("saw %s", v) '
      .. 'return v end }, age = "age" }' })
    S.data(dir, { S.contact(7) })
    local r = S.run(dir, "run", "--log-format", "json")
    assert.equal(0, r.code, r.stderr)
    local line = jq_lines(r.stderr)[1]
    assert.same({ "info", "contacts 7: saw Contact 7", "contacts", 7, "import", "callback" },
      { line.level, line.message, line.sync, line.remote_id, line.direction, line.event })
  end)

  it("a fatal error is a JSON line too; text logs stay one line each", function()
    S.job(dir, {})
    local r = S.run(dir, "run", "--log-format", "json")
    assert.equal(2, r.code)
    local entries = jq_lines(r.stderr)
    assert.equal(1, #entries)
    assert.equal("fatal", entries[1].level)
    assert.equal("config", entries[1].kind)
  end)
end)

describe("progress", function()
  it("on a terminal: records, the current rate, the percentage and the ETA, redrawn on one line", function()
    S.job(dir, { batch = 1000 })
    many(150000)
    local script = cjson.encode({ { expect = "contacts: 150000 created" } })
    local pipe = io.popen(string.format("python3 %s %s --cwd %s --timeout 60 -- %s job.lua run",
      helpers.quote(helpers.root .. "/spec/support/pty_run.py"), helpers.quote(script), helpers.quote(dir),
      helpers.quote(helpers.bin)))
    local result = cjson.decode(pipe:read("a"))
    pipe:close()
    assert.is_true(result.ok, result.output)
    assert.equal(0, result.status)
    local percents, etas = {}, 0
    for count, rate, percent, eta in result.output:gmatch("contacts: (%d+) records, (%d+)/s, (%d+)%%, ETA (%d+:%d%d:%d%d)") do
      percents[#percents + 1] = tonumber(percent)
      assert.is_true(tonumber(rate) > 0)
      etas = etas + 1
      assert.is_true(tonumber(count) <= 150000)
    end
    assert.is_true(#percents >= 2, "no progress line with a percentage: " .. result.output:sub(1, 400))
    assert.is_true(percents[#percents] > percents[1], "the percentage does not grow")
    assert.is_true(etas >= 2)
    -- redrawn in place: a carriage return and an erase before each
    assert.matches("\r\27%[Kcontacts: %d+ records", result.output)
    -- the summary is on a clean line
    assert.matches("\r\27%[Kcontacts: 150000 created", result.output)
  end)

  -- A job over the slow provider: 60 records, 20 ms each, 5 a batch.
  local function slow_job(extra)
    helpers.install_slow_provider(dir)
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text", name = "text", age = "integer" }
local slow = provider "slow" { count = 60, delay = 0.02 }
sync "contacts" { remote = slow, entity = "contact", mapping = { email = "email", name = "name", age = "age" },
  import = { batch = 5 }]] .. (extra or "") .. " }\n")
  end

  it("elsewhere: a log line every --progress-every seconds, and none with --no-progress", function()
    slow_job()
    local r = S.run(dir, "run", "--progress-every", "0.3")
    assert.equal(0, r.code, r.stderr)
    local lines = 0
    for _ in r.stderr:gmatch("entsync: info: contacts: %d+ records, %d+/s\n") do lines = lines + 1 end
    assert.is_true(lines >= 2, r.stderr)
    assert.is_nil(r.stderr:find("\27", 1, true))
    r = S.run(dir, "run", "--progress-every", "0.3", "--no-progress")
    assert.equal("", r.stderr)
  end)

  it("the daemon logs progress lines during a run", function()
    slow_job(', schedule = "every 1h"')
    local child = D.daemon(dir, { "--progress-every", "0.3", "--log-format", "json" })
    assert.is_truthy(D.wait_log(child, '"event":"progress"', 10), D.stderr(child))
    assert.is_truthy(D.wait_log(child, '"event":"summary"', 10), D.stderr(child))
    assert.equal(0, (D.stop(child)))
  end)
end)
