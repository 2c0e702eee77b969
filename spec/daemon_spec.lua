-- The daemon, as a real child process with real signals: syncs run when
-- their schedule says (with what they depend on first), the outbox is
-- exported as other programs change the store, SIGTERM/SIGINT stop at a
-- checkpoint with nothing lost, SIGHUP reloads the job (keeping the old one
-- when the new one is broken), `status` shows it, and --log-format json
-- makes stderr JSON lines.

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"
local D = require "daemon_support"
local X = require "export_support"

local dirs = {}

local function newdir()
  local d = helpers.tmpdir()
  dirs[#dirs + 1] = d
  return d
end

after_each(function()
  D.cleanup()
  for _, d in ipairs(dirs) do helpers.rmdir(d) end
  dirs = {}
end)

local function db(dir)
  return dir .. "/entsync.db"
end

local function count(dir, sql)
  return tonumber(D.peek_value(db(dir), sql)) or 0
end

local function contact_line(id, fields)
  return S.encode(S.contact(id, fields))
end

-- A drop folder of contacts (incremental on id), run every second, after
-- a tags sync that has no schedule of its own.
local function drop_folder_job(dir, extra)
  helpers.write(dir .. "/tags.ndjson", '{"id":"t1","name":"red"}\n{"id":"t2","name":"blue"}\n')
  helpers.write(dir .. "/inbox/.keep", "")
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "tag" { name = "text" }',
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    'local tagfile = provider "ndjson" { path = "tags.ndjson" }',
    'local inbox = provider "ndjson" { dir = "inbox" }',
    'sync "tags" { remote = tagfile, entity = "tag", mapping = { name = "name" } }',
    'sync "contacts" { remote = inbox, entity = "contact",',
    '  mapping = { email = "email", name = "name", age = "age" },',
    '  import = { mode = "incremental", changed = "id" }, depends_on = { "tags" },',
    '  schedule = "every 1s" }',
    extra or "",
  }, "\n") .. "\n")
end

-- An export-only sync to an ndjson file sink, exporting on change.
local function sink_job(dir)
  helpers.write(dir .. "/out/.keep", "")
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    'local out = provider "ndjson" { dir = "out" }',
    'sync "contacts" { remote = out, entity = "contact",',
    '  mapping = { email = "email", name = "name", age = "age" },',
    '  import = false, export = { on_change = true, resource = "sink.ndjson" } }',
  }, "\n") .. "\n")
end

local function sink(dir)
  return D.ndjson_lines(dir .. "/out/sink.ndjson")
end

describe("daemon", function()
  it("runs an interval sync when due, after what it depends on, picking up dropped files", function()
    local d = newdir()
    drop_folder_job(d)
    D.drop(d .. "/inbox", "a.ndjson", contact_line(1) .. "\n")
    local child = D.daemon(d)
    assert.is_truthy(helpers.wait_for(function() return count(d, "SELECT count(*) FROM contact") == 1 end, 3),
      D.stderr(child))
    -- tags has no schedule: it ran because contacts depends on it, first
    assert.equal(2, count(d, "SELECT count(*) FROM tag"))
    -- the run's summary is logged just after its commit
    helpers.wait_for(function() return D.stderr(child):find("contacts: 1 created", 1, true) end, 3)
    local err = D.stderr(child)
    local tags_at = err:find("tags: 2 created", 1, true)
    local contacts_at = err:find("contacts: 1 created", 1, true)
    assert.is_truthy(tags_at and contacts_at and tags_at < contacts_at, err)
    assert.is_truthy(err:find('sync "contacts" is due (every 1s)', 1, true), err)

    -- a new file is imported at the next turn, within a second or so
    local t0 = core.sys.monotonic()
    D.drop(d .. "/inbox", "b.ndjson", contact_line(2) .. "\n" .. contact_line(3) .. "\n")
    local done = helpers.wait_for(function() return count(d, "SELECT count(*) FROM contact") == 3 end, 2.5)
    assert.is_truthy(done, "not imported within 2.5s: " .. D.stderr(child))
    assert.is_true(core.sys.monotonic() - t0 < 2.5)
    assert.same(S.expected({ S.contact(1), S.contact(2), S.contact(3) }), S.contacts(d))
    -- the files left the drop folder once committed
    assert.is_truthy(helpers.wait_for(function()
      return helpers.read(d .. "/inbox/processed/b.ndjson") ~= nil and helpers.read(d .. "/inbox/b.ndjson") == nil
    end, 2))
    assert.is_true(helpers.alive(child.pid))
    assert.equal(0, (D.stop(child)))
    assert.is_truthy(D.stderr(child):find("daemon stopped", 1, true))
  end)

  describe("outbox", function()
    it("exports a row another program inserts within a second", function()
      local d = newdir()
      sink_job(d)
      local child = D.daemon(d)
      D.sql(db(d), "INSERT INTO contact (email, name, age) VALUES ('ann@example.org', 'Ann', 41)")
      local t0 = core.sys.monotonic()
      local lines = helpers.wait_for(function()
        local l = sink(d)
        return #l > 0 and l or nil
      end, 1)
      assert.is_truthy(lines, string.format("nothing in the sink after %.2fs: %s", core.sys.monotonic() - t0,
        D.stderr(child)))
      assert.equal(1, #lines)
      assert.equal("create", lines[1].op)
      assert.same({ email = "ann@example.org", name = "Ann", age = 41 }, lines[1].record)
      assert.is_truthy(helpers.wait_for(function() return #X.outbox(d) == 0 end, 2))
      assert.equal(0, (D.stop(child)))
    end)

    it("exports an UPDATE of an exported row within a second and leaves the local row as it is", function()
      local d = newdir()
      sink_job(d)
      -- the store exists and two contacts are exported before the daemon starts
      local r = S.run(d, "run")
      assert.equal(0, r.code, r.stderr)
      D.sql(db(d), "INSERT INTO contact (email, name, age) VALUES ('ann@example.org', 'Ann', 41), "
        .. "('bob@example.org', 'Bob', 52)")
      r = S.run(d, "export", "contacts", "--all")
      assert.equal(0, r.code, r.stderr)
      assert.equal(2, #sink(d))
      local child = D.daemon(d)
      D.sql(db(d), "UPDATE contact SET age = 53 WHERE email = 'bob@example.org'")
      local update = helpers.wait_for(function()
        for _, line in ipairs(sink(d)) do
          if line.op == "update" then return line end
        end
      end, 1)
      local err = D.stderr(child)
      assert.equal(0, (D.stop(child)))
      -- the local row keeps what the other program wrote
      local rows = S.query(d, "SELECT email, name, age FROM contact ORDER BY id")
      assert.same({ { email = "ann@example.org", name = "Ann", age = 41 },
        { email = "bob@example.org", name = "Bob", age = 53 } }, rows, "stderr:\n" .. err)
      assert.is_truthy(update, "no update line in the sink within 1s; stderr:\n" .. err)
      assert.same({ email = "bob@example.org", name = "Bob", age = 53 }, update.record)
      assert.equal(0, S.count(d, "entsync_conflicts"))
    end)

    it("retries a failed export when it comes due, with no other write to the store", function()
      local d = newdir()
      sink_job(d)
      helpers.rmdir(d .. "/out") -- the sink's folder is missing: the first export fails
      local child = D.daemon(d)
      D.sql(db(d), "INSERT INTO contact (email, name, age) VALUES ('ann@example.org', 'Ann', 41)")
      assert.is_truthy(helpers.wait_for(function()
        return count(d, "SELECT count(*) FROM entsync_failed WHERE direction = 'export' AND attempts > 0") == 1
      end, 2), D.stderr(child))
      helpers.write(d .. "/out/.keep", "")
      -- the retry comes due in a second (rather than the 30s backoff); this
      -- write is the last any other program makes
      D.sql(db(d), string.format("UPDATE entsync_failures SET next_at = %.3f WHERE direction = 'export'",
        core.sys.now() + 1))
      local lines = helpers.wait_for(function()
        local l = sink(d)
        return #l > 0 and l or nil
      end, 3)
      local err = D.stderr(child)
      assert.equal(0, (D.stop(child)))
      assert.is_truthy(lines, "the due retry was not exported 2s after it came due; stderr:\n" .. err)
      assert.equal("create", lines[1].op)
      assert.equal(0, S.count(d, "entsync_failures"))
    end)
  end)

  it("stops at a batch checkpoint on SIGTERM mid-run; an overrun is not started twice; a later run completes",
    function()
      local N, BATCH = 80, 10
      -- delay: seconds per record (the store does not depend on it)
      local function slow_job(dir, delay)
        helpers.install_slow_provider(dir)
        S.job(dir, { mode = "full", batch = BATCH, remote = 'files "contacts"',
          provider = string.format('provider "slow" { count = %d, delay = %s }', N, delay) })
        -- give the sync a schedule that comes round while it still runs
        local source = helpers.read(dir .. "/job.lua")
        helpers.write(dir .. "/job.lua", (source:gsub("import = {", 'schedule = "every 1s", import = {')))
      end
      local d = newdir()
      slow_job(d, 0.03) -- a run takes 2.4s
      local child = D.daemon(d)
      -- the turn after one second finds the first run still going
      assert.is_truthy(D.wait_log(child, "is still running: this turn is skipped", 3), D.stderr(child))
      local before = count(d, "SELECT count(*) FROM contact")
      assert.is_true(before >= BATCH and before < N, "committed before TERM: " .. before)
      local code, took = D.stop(child, 5)
      assert.equal(0, code, D.stderr(child))
      assert.is_true(took < 3, string.format("took %.2fs to stop", took))
      local err = D.stderr(child)
      assert.equal(1, D.count_log(child, 'sync "contacts" is due'), err)

      -- nothing held, and the run row is committed up to a checkpoint
      assert.equal(0, S.count(d, "entsync_locks"))
      local run = S.query(d, "SELECT * FROM entsync_history WHERE sync = 'contacts' ORDER BY id DESC LIMIT 1")[1]
      assert.is_truthy(run)
      assert.equal("partial", run.status)
      assert.is_truthy(run.ended_at)
      local stored = S.count(d, "contact")
      assert.equal(stored, run.created)
      assert.equal(0, stored % BATCH, "stopped off a batch boundary: " .. stored)
      assert.is_true(stored >= before and stored < N)
      -- the slow provider hands over no checkpoint: the pass resumes after a count of records
      local resume = cjson.decode(S.value(d, "SELECT t.pass_resume FROM entsync_state t JOIN entsync_syncs s "
        .. "ON s.id = t.sync WHERE s.name = 'contacts'"))
      assert.equal(stored, resume.offset)

      -- a later run takes the rest (faster: the data are the same)
      slow_job(d, 0.001)
      local r = S.run(d, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      assert.equal(N - stored, S.summary(r.stdout).created, r.stdout)
      -- and the store is exactly what an uninterrupted run makes
      local ref = newdir()
      slow_job(ref, 0.001)
      local rr = S.run(ref, "run", "--no-progress")
      assert.equal(0, rr.code, rr.stderr)
      assert.equal(N, S.count(ref, "contact"))
      assert.equal(S.dump(ref), S.dump(d))
    end)

  describe("never runs a sync twice at once", function()
    local function slow_setup(dir, lines)
      helpers.install_slow_provider(dir)
      helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
    end

    -- Runs of a sync must not overlap in time, and none may end in error.
    local function assert_serial(dir, sync, err)
      local runs = S.query(dir, "SELECT id, operation, status, started_at, ended_at, error FROM entsync_history "
        .. "WHERE sync = ?1 ORDER BY started_at", sync)
      assert.is_true(#runs >= 1)
      for i, run in ipairs(runs) do
        assert.is_true(run.status ~= "error", string.format("run %d of %s (%s): %s\n%s", run.id, sync, run.operation,
          tostring(run.error), err))
        if i > 1 then
          assert.is_true(run.started_at >= runs[i - 1].ended_at, string.format(
            "runs %d and %d of %s overlap\n%s", runs[i - 1].id, run.id, sync, err))
        end
      end
      assert.is_nil(err:find("lease was lost", 1, true), err)
    end

    it("a sync with its own schedule that another scheduled sync depends on", function()
      local d = newdir()
      slow_setup(d, {
        'entity "tag" { email = "text", name = "text", age = "integer" }',
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        'local slow = provider "slow" { count = 15, delay = 0.02 }',
        'sync "tags" { remote = slow "tags", entity = "tag", mapping = { email = "email", name = "name", age = "age" },',
        '  schedule = "every 1s" }',
        'sync "contacts" { remote = slow "contacts", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" }, depends_on = { "tags" }, schedule = "every 1s" }',
      })
      local child = D.daemon(d)
      assert.is_truthy(D.wait_log(child, "contacts: ", 4, 2), D.stderr(child))
      assert.equal(0, (D.stop(child)))
      local err = D.stderr(child)
      assert_serial(d, "tags", err)
      assert_serial(d, "contacts", err)
      assert.equal(15, S.count(d, "tag"))
      assert.equal(15, S.count(d, "contact"))
    end)

    it("an outbox drain while the same sync's scheduled import runs", function()
      local d = newdir()
      slow_setup(d, {
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        'local slow = provider "slow" { count = 40, delay = 0.03 }',
        'sync "contacts" { remote = slow "contacts", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" }, import = { batch = 10 },',
        '  export = { on_change = true }, schedule = "every 1h" }',
      })
      local child = D.daemon(d)
      -- the import (1.2s) is under way when another program adds a contact
      assert.is_truthy(helpers.wait_for(function() return count(d, "SELECT count(*) FROM contact") >= 10 end, 3))
      D.sql(db(d), "INSERT INTO contact (email, name, age) VALUES ('ann@example.org', 'Ann', 41)")
      assert.is_truthy(helpers.wait_for(function()
        return count(d, "SELECT count(*) FROM entsync_history WHERE operation = 'run' AND ended_at IS NOT NULL") > 0
      end, 4), D.stderr(child))
      assert.is_truthy(helpers.wait_for(function() return #X.outbox(d) == 0 end, 3),
        D.stderr(child))
      assert.equal(0, (D.stop(child)))
      local err = D.stderr(child)
      assert_serial(d, "contacts", err)
      assert.equal(41, S.count(d, "contact"))
      -- the slow provider names a created record 100000 + its local id
      local ann = S.value(d, "SELECT id FROM contact WHERE email = 'ann@example.org'")
      assert.equal(tostring(100000 + ann), S.value(d, "SELECT CAST(remote_id AS TEXT) FROM entsync_map m JOIN contact c "
        .. "ON c.id = m.local_id WHERE c.email = 'ann@example.org'"))
    end)
  end)

  it("reloads an edited mapping on SIGHUP and keeps the old job when the edit is broken", function()
    local d = newdir()
    helpers.write(d .. "/data/contacts.ndjson", contact_line(1) .. "\n")
    helpers.write(d .. "/contact_map.lua", 'return { email = "email", name = "name", age = "age" }\n')
    helpers.write(d .. "/job.lua", table.concat({
      'entity "contact" { email = "text", name = "text", age = "integer" }',
      'local files = provider "ndjson" { dir = "data" }',
      'sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "contact_map",',
      '  import = { mode = "full" }, schedule = "every 1s" }',
    }, "\n") .. "\n")
    local function name_of(remote_id)
      return D.peek_value(db(d), "SELECT c.name FROM contact c JOIN entsync_map m ON m.local_id = c.id "
        .. "WHERE CAST(m.remote_id AS TEXT) = '" .. remote_id .. "'")
    end
    local child = D.daemon(d)
    assert.is_truthy(helpers.wait_for(function() return name_of(1) == "Contact 1" end, 3), D.stderr(child))

    helpers.write(d .. "/contact_map.lua",
      'return { email = "email", name = { "name", import = function(v) return "v2 " .. v end }, age = "age" }\n')
    D.signal(child, "HUP")
    assert.is_truthy(helpers.wait_for(function() return name_of(1) == "v2 Contact 1" end, 3),
      "the new mapping was not used: " .. D.stderr(child))
    assert.is_truthy(D.stderr(child):find("reloaded job.lua", 1, true), D.stderr(child))

    -- a broken edit: an error line, and the running job goes on
    helpers.write(d .. "/contact_map.lua", 'return { email = "email", name = \n')
    D.signal(child, "HUP")
    local err = D.wait_log(child, "reload failed", 3)
    assert.is_truthy(err, D.stderr(child))
    local line = err:match("[^\n]*reload failed[^\n]*")
    assert.matches("error", line)
    assert.is_truthy(line:find("contact_map.lua", 1, true), line)
    assert.is_true(helpers.alive(child.pid))
    local due = D.count_log(child, 'sync "contacts" is due')
    assert.is_truthy(D.wait_log(child, 'sync "contacts" is due', 3, due + 1), D.stderr(child))
    helpers.write(d .. "/data/contacts.ndjson", contact_line(1) .. "\n" .. contact_line(2) .. "\n")
    assert.is_truthy(helpers.wait_for(function() return name_of(2) == "v2 Contact 2" end, 3),
      "the old (v2) job did not go on: " .. D.stderr(child))
    assert.equal(0, (D.stop(child)))
  end)

  it("shows in `status` from another process while it runs, and not after it stops", function()
    local d = newdir()
    drop_folder_job(d)
    local child = D.daemon(d)
    local r = helpers.wait_for(function()
      local s = S.run(d, "status")
      return s.stdout:find("daemon running", 1, true) and s or nil
    end, 3)
    assert.is_truthy(r, "status never showed the daemon")
    assert.equal(0, r.code)
    assert.is_truthy(r.stdout:find("daemon running: pid " .. child.pid .. " ", 1, true), r.stdout)
    assert.equal(0, (D.stop(child)))
    r = S.run(d, "status")
    assert.equal(0, r.code, r.stderr)
    assert.is_nil(r.stdout:find("daemon running", 1, true), r.stdout)
    assert.is_truthy(r.stdout:find("daemon not running: pid " .. child.pid, 1, true), r.stdout)

    -- a daemon killed outright is not shown as running either
    local killed = D.daemon(d)
    assert.is_truthy(helpers.wait_for(function()
      return S.run(d, "status").stdout:find("daemon running: pid " .. killed.pid, 1, true)
    end, 3))
    D.signal(killed, "KILL")
    assert.is_truthy(D.exit_code(killed, 5))
    r = S.run(d, "status")
    assert.is_truthy(r.stdout:find("daemon not running: pid " .. killed.pid, 1, true), r.stdout)
  end)

  it("writes JSON lines to stderr with --log-format json, and stops on SIGINT with exit 0", function()
    local d = newdir()
    drop_folder_job(d)
    D.drop(d .. "/inbox", "a.ndjson", contact_line(1) .. "\n")
    local child = D.daemon(d, { "--log-format", "json" })
    assert.is_truthy(D.wait_log(child, "contacts: 1 created", 3), D.stderr(child))
    local code = D.stop(child, 5, "INT")
    assert.equal(0, code, D.stderr(child))
    local err = D.stderr(child)
    local n, messages = 0, {}
    for line in err:gmatch("[^\n]+") do
      n = n + 1
      local ok, entry = pcall(cjson.decode, line)
      assert.is_true(ok, "not JSON: " .. line)
      assert.is_table(entry, line)
      assert.is_string(entry.level, line)
      assert.is_string(entry.message, line)
      messages[#messages + 1] = entry.message
    end
    assert.is_true(n >= 4, err)
    local all = table.concat(messages, "\n")
    assert.is_truthy(all:find("daemon started", 1, true), all)
    assert.is_truthy(all:find("daemon stopped", 1, true), all)
    assert.equal("", D.stdout(child))
  end)

  it("with --log-format json, a job that fails to load is a JSON line on stderr too", function()
    local d = newdir()
    drop_folder_job(d)
    local source = helpers.read(d .. "/job.lua"):gsub('schedule = "every 1s"', 'schedule = "every 0s"')
    helpers.write(d .. "/job.lua", source)
    local r = S.run(d, "daemon", "--log-format", "json")
    assert.equal(2, r.code, r.stderr)
    assert.is_truthy(r.stderr:find("at least 1s", 1, true), r.stderr)
    for line in r.stderr:gmatch("[^\n]+") do
      local ok, entry = pcall(cjson.decode, line)
      assert.is_true(ok and type(entry) == "table", "not a JSON line: " .. line)
      assert.is_string(entry.level, line)
      assert.is_string(entry.message, line)
    end
  end)
end)
