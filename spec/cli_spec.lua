-- The command line of entsync-run: help, version, options, check, status,
-- the documented exit statuses, and running from any directory.

local core = require "entsync.core"
local helpers = require "helpers"

local function line_count(s)
  return select(2, s:gsub("\n", "\n"))
end

local function exists(path)
  return core.fs.exists(path) ~= false
end

local JOB = [[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", age = "integer" }
sync "contacts" { remote = src, entity = "contact", mapping = "mappings.contact" }
]]

local MAPPING = 'return {\n  name = "name",\n  age = "age",\n}\n'

describe("entsync-run", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/job.lua", JOB)
    helpers.write(dir .. "/mappings/contact.lua", MAPPING)
    helpers.write(dir .. "/contacts.ndjson", '{"id":1,"name":"Ann","age":30}\n{"id":2,"name":"Bob","age":40}\n')
  end)

  after_each(function()
    helpers.rmdir(dir)
  end)

  describe("--help and --version", function()
    it("--help prints the usage with the commands and the exit statuses, exit 0", function()
      for _, flag in ipairs({ "--help", "-h" }) do
        local r = helpers.run(dir, { flag })
        assert.equal(0, r.code)
        assert.equal("", r.stderr)
        assert.matches("^usage: entsync%-run JOB%.lua %[COMMAND%]", r.stdout)
        for _, command in ipairs({ "run", "import", "refresh", "retry", "check", "status" }) do
          assert.matches("\n  " .. command .. " ", r.stdout, 1, true)
        end
        for _, option in ipairs({ "--dry-run", "--wait", "--verbose", "--log-format", "--version" }) do
          assert.matches(option, r.stdout, 1, true)
        end
        assert.matches("exit status: 0 success, 1 the run finished but some entities failed,", r.stdout, 1, true)
        assert.matches("2 usage or configuration error, 3 a lock is held by another run,", r.stdout, 1, true)
        assert.matches("4 an internal error", r.stdout, 1, true)
      end
    end)

    it("--help wins over a job and a command, and runs nothing", function()
      local r = helpers.run(dir, { "job.lua", "run", "--help" })
      assert.equal(0, r.code)
      assert.matches("^usage:", r.stdout)
      assert.is_false(exists(dir .. "/entsync.db"))
    end)

    it("--version prints entsync's version, exit 0", function()
      local r = helpers.run(dir, { "--version" })
      assert.equal(0, r.code)
      assert.equal("", r.stderr)
      assert.matches("^entsync " .. core.version:gsub("%p", "%%%0") .. " %(Lua 5%.4, SQLite [%d.]+%)\n$", r.stdout)
    end)
  end)

  describe("usage errors, exit 2 with one line", function()
    local function assert_usage_error(r, pattern)
      assert.equal(2, r.code, r.stderr)
      assert.equal(1, line_count(r.stderr), r.stderr)
      assert.matches(pattern, r.stderr)
      assert.is_nil(r.stderr:find("stack traceback", 1, true))
      assert.is_false(exists(dir .. "/entsync.db"))
    end

    it("an unknown option", function()
      assert_usage_error(helpers.run(dir, { "job.lua", "run", "--frobnicate" }),
        "^entsync%-run: unknown option %-%-frobnicate %(see entsync%-run %-%-help%)\n$")
      assert_usage_error(helpers.run(dir, { "--frobnicate", "job.lua" }), "unknown option %-%-frobnicate")
      assert_usage_error(helpers.run(dir, { "job.lua", "-x" }), "unknown option %-x")
      assert_usage_error(helpers.run(dir, { "job.lua", "--dry-run=yes" }), "unknown option %-%-dry%-run=yes")
    end)

    it("an option without its value, or with a bad one", function()
      assert_usage_error(helpers.run(dir, { "job.lua", "run", "--wait" }), "option %-%-wait needs a value")
      assert_usage_error(helpers.run(dir, { "job.lua", "run", "--wait", "soon" }), "%-%-wait needs a number of seconds, got soon")
      assert_usage_error(helpers.run(dir, { "job.lua", "--log-format=xml" }), "%-%-log%-format is text or json, got xml")
    end)

    it("no job, a job file that does not exist, an unknown command, an unknown sync", function()
      assert_usage_error(helpers.run(dir, {}), "^entsync%-run: no job file given")
      assert_usage_error(helpers.run(dir, { "nothere.lua" }), "^entsync%-run: nothere%.lua: cannot open the job file\n$")
      assert_usage_error(helpers.run(dir, { "job.lua", "frobnicate" }), 'unknown command "frobnicate"')
      assert_usage_error(helpers.run(dir, { "job.lua", "run", "nosuch" }),
        '^entsync%-run: job%.lua: no sync named "nosuch" %(declared: contacts%)\n$')
    end)

    it("an unknown option under --verbose still gives no traceback", function()
      local r = helpers.run(dir, { "job.lua", "--verbose", "--frobnicate" })
      assert.equal(2, r.code)
      assert.is_nil(r.stderr:find("stack traceback", 1, true))
    end)
  end)

  describe("check", function()
    it("prints a one-screen summary of the store, entities, providers and syncs, and runs nothing", function()
      local r = helpers.run(dir, { "job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      for _, line in ipairs({
        "job job.lua: ok",
        "store     " .. dir .. "/entsync.db",
        "entities  1",
        "  contact          age integer, name text",
        "providers 1",
        "  ndjson           ndjson (line 1)",
        "syncs     1, in run order",
        "  contacts         ndjson -> contact; full, deletes keep",
      }) do
        assert.matches("\n" .. line .. "\n", "\n" .. r.stdout, 1, true)
      end
      assert.is_true(line_count(r.stdout) <= 24)
      assert.is_false(exists(dir .. "/entsync.db"))
      assert.is_false(exists(dir .. "/entsync.db-wal"))
    end)

    it("does not read the remote: a provider whose list raises still checks ok", function()
      helpers.write(dir .. "/providers/exploding.lua",
        'return { new = function() return { list = function() error("list must not be called") end } end }\n')
      helpers.write(dir .. "/job.lua", JOB:gsub('provider "ndjson" { path = "contacts.ndjson" }', 'provider "exploding" {}'))
      local r = helpers.run(dir, { "job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("exploding", r.stdout, 1, true)
      assert.is_false(exists(dir .. "/entsync.db"))
    end)

    it("leaves an existing store untouched", function()
      assert.equal(0, helpers.run(dir, { "job.lua", "run" }).code)
      helpers.write(dir .. "/contacts.ndjson", '{"id":3,"name":"Cid","age":1}\n')
      local r = helpers.run(dir, { "job.lua", "check" })
      assert.equal(0, r.code)
      assert.equal(2, helpers.query(dir .. "/entsync.db", "SELECT count(*) AS n FROM contact")[1].n)
      assert.equal(1, helpers.query(dir .. "/entsync.db", "SELECT count(*) AS n FROM entsync_runs")[1].n)
    end)
  end)

  describe("status", function()
    it("shows each sync's declared settings and \"never\" before anything ran, creating nothing", function()
      helpers.write(dir .. "/job.lua", JOB .. [[
sync "recent" { remote = src, entity = "contact", mapping = { name = "name" },
                import = { mode = "incremental", changed = "updated_at", limit = 10, deletes = "flag" } }
]])
      local r = helpers.run(dir, { "job.lua", "status" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      assert.matches("store " .. dir .. "/entsync.db (not created yet: nothing has run)", r.stdout, 1, true)
      assert.matches("sync contacts: ndjson -> contact, full, deletes keep\n  last run   never\n", r.stdout, 1, true)
      assert.matches("sync recent: ndjson -> contact, incremental, limit 10, deletes flag\n  last run   never\n",
        r.stdout, 1, true)
      assert.is_false(exists(dir .. "/entsync.db"))
    end)

    it("shows the last run once a run happened", function()
      assert.equal(0, helpers.run(dir, { "job.lua", "run" }).code)
      local r = helpers.run(dir, { "job.lua", "status" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("  last run   run %d+s ago, ok %(full%): 2 created, 0 updated", r.stdout)
      assert.matches("  mapped     2 remote entities", r.stdout, 1, true)
      assert.matches("  lock       free", r.stdout, 1, true)
      assert.matches("  failures   0 pending", r.stdout, 1, true)
      assert.is_nil(r.stdout:find("never", 1, true))
    end)
  end)

  describe("exit statuses", function()
    it("0 when every entity was imported", function()
      local r = helpers.run(dir, { "job.lua", "run" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("^contacts: 2 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted", r.stdout)
      -- run is the default command; a second run finds nothing changed.
      r = helpers.run(dir, { "job.lua" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("^contacts: 0 created, 0 updated, 2 unchanged", r.stdout)
    end)

    it("1 when the run finished but some entities failed", function()
      helpers.write(dir .. "/contacts.ndjson",
        '{"id":1,"name":"Ann","age":30}\n{"id":2,"name":"Bob","age":"forty"}\n{"id":3,"name":"Cid","age":5}\n')
      local r = helpers.run(dir, { "job.lua", "run" })
      assert.equal(1, r.code, r.stderr)
      assert.matches("contacts: 2 created, 0 updated, 0 unchanged, 0 stale, 1 failed", r.stdout, 1, true)
      assert.matches("contacts", r.stderr, 1, true)
      assert.matches('field age: expected integer, got "forty"', r.stderr, 1, true)
      assert.same({ { name = "Ann" }, { name = "Cid" } },
        helpers.query(dir .. "/entsync.db", "SELECT name FROM contact ORDER BY id"))
    end)

    it("3 when another live run holds the sync's lock", function()
      assert.equal(0, helpers.run(dir, { "job.lua", "run" }).code)
      local store = core.store.open(dir .. "/entsync.db")
      assert.is_true((core.lock.acquire(store, "sync:contacts", "spec-holder", 60)))
      local r = helpers.run(dir, { "job.lua", "run" })
      core.lock.release(store, "sync:contacts", "spec-holder")
      store:close()
      assert.equal(3, r.code, r.stderr)
      assert.equal(1, line_count(r.stderr), r.stderr)
      assert.matches('^entsync%-run: sync "contacts" is locked by another run: pid ' .. core.sys.getpid(), r.stderr)
      -- Released: the next run goes through.
      assert.equal(0, helpers.run(dir, { "job.lua", "run" }).code)
    end)

    it("1 on an error raised in provider code: one line naming the sync, the provider and its file:line, "
      .. "the traceback with --verbose", function()
      helpers.write(dir .. "/providers/exploding.lua", [[
return {
  new = function()
    return { list = function() error("the remote went away") end }
  end,
}
]])
      helpers.write(dir .. "/job.lua", JOB:gsub('provider "ndjson" { path = "contacts.ndjson" }', 'provider "exploding" {}'))
      local r = helpers.run(dir, { "job.lua", "run" })
      assert.equal(1, r.code, r.stderr)
      assert.equal(1, line_count(r.stderr), r.stderr)
      assert.matches('^entsync%-run: sync "contacts": provider "exploding" list: [^\n]*providers/exploding%.lua:3: '
        .. 'the remote went away\n$', r.stderr)
      assert.is_nil(r.stderr:find("internal error", 1, true))
      assert.is_nil(r.stderr:find("stack traceback", 1, true))
      assert.equal("", r.stdout)

      r = helpers.run(dir, { "job.lua", "run", "--verbose" })
      assert.equal(1, r.code)
      assert.matches('^entsync%-run: sync "contacts": provider "exploding" list: [^\n]*the remote went away\n', r.stderr)
      assert.matches("stack traceback:", r.stderr, 1, true)
      assert.matches("exploding.lua:3: in", r.stderr, 1, true)

      -- Both failed runs are logged as such; nothing was imported.
      local runs = helpers.query(dir .. "/entsync.db", "SELECT status, error FROM entsync_runs")
      assert.equal(2, #runs)
      for _, logged in ipairs(runs) do
        assert.equal("error", logged.status)
        assert.matches("the remote went away", logged.error, 1, true)
      end
      assert.equal(0, helpers.query(dir .. "/entsync.db", "SELECT count(*) AS n FROM contact")[1].n)
    end)
  end)

  describe("from any directory", function()
    local elsewhere

    before_each(function()
      elsewhere = helpers.tmpdir()
    end)

    after_each(function()
      helpers.rmdir(elsewhere)
    end)

    local function assert_imported_beside_the_job(r)
      assert.equal(0, r.code, r.stderr)
      assert.matches("contacts: 2 created", r.stdout, 1, true)
      assert.same({ { name = "Ann", age = 30 }, { name = "Bob", age = 40 } },
        helpers.query(dir .. "/entsync.db", "SELECT name, age FROM contact ORDER BY id"))
      assert.is_false(exists(elsewhere .. "/entsync.db"))
    end

    it("runs a job given by an absolute path, finding its mapping module beside it", function()
      assert_imported_beside_the_job(helpers.run(elsewhere, { dir .. "/job.lua", "run" }))
    end)

    it("runs a job given by a relative path, finding its mapping module beside it", function()
      local relative = "../" .. dir:match("([^/]+)$") .. "/job.lua"
      assert_imported_beside_the_job(helpers.run(elsewhere, { relative, "run" }))
    end)

    it("runs a job given by a path into a subfolder", function()
      local parent, name = dir:match("^(.*)/([^/]+)$")
      local r = helpers.run(parent, { name .. "/job.lua", "run" })
      assert.equal(0, r.code, r.stderr)
      assert.equal(2, helpers.query(dir .. "/entsync.db", "SELECT count(*) AS n FROM contact")[1].n)
    end)

    it("checks and shows status from elsewhere", function()
      local r = helpers.run(elsewhere, { dir .. "/job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("job " .. dir .. "/job.lua: ok", r.stdout, 1, true)
      r = helpers.run(elsewhere, { dir .. "/job.lua", "status" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("last run   never", r.stdout, 1, true)
    end)

    -- main.c takes the first argument not starting with "-" as the job to
    -- put its folder on package.path; for "--wait 0 job.lua" that is "0",
    -- so the modules beside the job are not found.
    it("finds the modules beside the job when an option with a value comes before the job", function()
      local r = helpers.run(elsewhere, { "--wait", "0", dir .. "/job.lua", "run" })
      assert_imported_beside_the_job(r)
      r = helpers.run(elsewhere, { "--log-format", "json", dir .. "/job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
    end)
  end)
end)
