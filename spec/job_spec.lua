-- The job DSL and its validation, through the real entsync-run binary:
-- every configuration error is one line naming the file and line, exit 2,
-- and nothing runs (no store is created) when the job is broken.

local core = require "entsync.core"
local helpers = require "helpers"

local UNSET = "ENTSYNC_SPEC_SURELY_UNSET_VARIABLE"

local function line_count(s)
  return select(2, s:gsub("\n", "\n"))
end

local function exists(path)
  return core.fs.exists(path) ~= false
end

describe("a job", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/contacts.ndjson",
      '{"id":1,"mail":"ann@example.org","name":"Ann"}\n{"id":2,"mail":"bob@example.org","name":"Bob"}\n')
  end)

  after_each(function()
    helpers.rmdir(dir)
  end)

  local function job(source)
    helpers.write(dir .. "/job.lua", source)
  end

  local function run(...)
    return helpers.run(dir, { "job.lua", ... })
  end

  -- A configuration error: exit 2, exactly one line on stderr, nothing on
  -- stdout, no traceback, no store created.
  local function assert_config_error(r, pattern)
    assert.equal(2, r.code, r.stderr)
    assert.equal(1, line_count(r.stderr), r.stderr)
    assert.matches("^entsync%-run: ", r.stderr)
    assert.matches(pattern, r.stderr)
    assert.is_nil(r.stderr:find("stack traceback", 1, true))
    assert.equal("", r.stdout)
    assert.is_false(exists(dir .. "/entsync.db"))
  end

  describe("declarations", function()
    it("declare a store, entities, providers, syncs and read the environment", function()
      job([[
store "crm.db"
entity "tag" { name = "text" }
entity "contact" { mail = "text", name = "text", score = "real", vip = "boolean" }
local src = provider "ndjson" { path = env "SPEC_CONTACTS" }
local tags = provider "ndjson" { path = env("SPEC_TAGS", "tags.ndjson") }
sync "tags" { remote = tags, entity = "tag", mapping = { name = "name" } }
sync "contacts" { remote = src, entity = "contact", mapping = { mail = "mail", name = "name" },
                  depends_on = { "tags" }, import = { mode = "incremental", changed = "updated_at", limit = 50 } }
]])
      helpers.write(dir .. "/tags.ndjson", '{"id":"t1","name":"vip"}\n')
      local r = helpers.run(dir, { "job.lua", "check" }, { SPEC_CONTACTS = "contacts.ndjson" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      assert.matches("job job.lua: ok", r.stdout, 1, true)
      assert.matches("store     " .. dir .. "/crm.db", r.stdout, 1, true)
      assert.matches("entities  2", r.stdout, 1, true)
      assert.matches("contact +mail text, name text, score real, vip boolean", r.stdout)
      assert.matches("providers 2", r.stdout, 1, true)
      assert.matches("syncs     2, in run order", r.stdout, 1, true)
      assert.matches("contacts +ndjson %-> contact; incremental on updated_at, limit 50, deletes keep; after tags",
        r.stdout)
      -- And the declarations drive a real run.
      r = helpers.run(dir, { "job.lua", "run" }, { SPEC_CONTACTS = "contacts.ndjson" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("tags: 1 created", r.stdout, 1, true)
      assert.matches("contacts: 2 created", r.stdout, 1, true)
      assert.is_true(exists(dir .. "/crm.db"))
      local rows = helpers.query(dir .. "/crm.db", "SELECT name FROM contact ORDER BY id")
      assert.same({ { name = "Ann" }, { name = "Bob" } }, rows)
      -- syncs ran in dependency order: tags first.
      local runs = helpers.query(dir .. "/crm.db", "SELECT sync FROM entsync_history ORDER BY id")
      assert.same({ { sync = "tags" }, { sync = "contacts" } }, runs)
    end)

    it("take a value from the environment over env's default", function()
      job([[
local src = provider "ndjson" { path = env("SPEC_CONTACTS", "missing.ndjson") }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" } }
]])
      local r = helpers.run(dir, { "job.lua", "run" }, { SPEC_CONTACTS = "contacts.ndjson" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("contacts: 2 created", r.stdout, 1, true)
    end)

    it("make a missing environment variable a config error naming the variable, file and line", function()
      job([[
entity "contact" { name = "text" }

local url = env "]] .. UNSET .. [["
]])
      local r = run("check")
      assert_config_error(r, "^entsync%-run: job%.lua:3: environment variable " .. UNSET .. " is not set")
    end)

    it("accept a missing environment variable when env has a default", function()
      job([[
entity "contact" { name = "text" }
local url = env("]] .. UNSET .. [[", "http://localhost")
assert(url == "http://localhost")
]])
      local r = run("check")
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
    end)

    it("are validated as a whole: a sync may name an entity declared further down", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" } }
entity "contact" { name = "text" }
]])
      local r = run("run")
      assert.equal(0, r.code, r.stderr)
      assert.matches("contacts: 2 created", r.stdout, 1, true)
    end)

    it("are validated before any command runs: a broken later sync stops the good earlier one", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "good" { remote = src, entity = "contact", mapping = { name = "name" } }
sync "bad" { remote = src, entity = "nobody", mapping = { name = "name" } }
]])
      for _, command in ipairs({ "run", "check" }) do
        local r = run(command)
        assert_config_error(r, '^entsync%-run: job%.lua:4: sync "bad": entity "nobody" is not declared\n$')
      end
      -- status reads the store alone: it says the job does not load, exit 2
      local r = run("status")
      assert.equal(2, r.code, r.stderr)
      assert.matches('job job%.lua does not load: job%.lua:4: sync "bad": entity "nobody" is not declared', r.stdout)
      assert.is_false(exists(dir .. "/entsync.db"))
      local r = run("run", "good")
      assert_config_error(r, 'sync "bad"')
    end)

    it("reject a second store, a duplicate entity and a duplicate sync, naming both lines", function()
      job('store "a.db"\nentity "x" { a = "text" }\nstore "b.db"\n')
      assert_config_error(run("check"), "^entsync%-run: job%.lua:3: store is already declared at line 1\n$")
      job('entity "x" { a = "text" }\n\nentity "x" { b = "text" }\n')
      assert_config_error(run("check"), '^entsync%-run: job%.lua:3: entity "x" is already declared at line 1\n$')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "s" { remote = src, entity = "contact", mapping = { name = "name" } }
sync "s" { remote = src, entity = "contact", mapping = { name = "name" } }
]])
      assert_config_error(run("check"), '^entsync%-run: job%.lua:4: sync "s" is already declared at line 3\n$')
    end)

    it("must declare something", function()
      job("-- nothing here\n")
      local r = run("check")
      assert.equal(2, r.code)
      assert.matches("job.lua: declares no entity and no sync", r.stderr, 1, true)
    end)
  end)

  describe("configuration errors", function()
    it("a Lua syntax error names the file and line", function()
      job('entity "contact" {\n  name = "text"\n\nsync "x" {}\n')
      assert_config_error(run("check"), "^entsync%-run: job%.lua:4: '}' expected %(to close '{' at line 1%)")
    end)

    it("a runtime error inside the job names the file and line", function()
      job('entity "contact" { name = "text" }\nlocal settings = nil\nlocal url = settings.url\n')
      assert_config_error(run("check"), "^entsync%-run: job%.lua:3: attempt to index a nil value %(local 'settings'%)\n$")
      job('entity "contact" { name = "text" }\nerror("no CRM configured")\n')
      assert_config_error(run("run"), "^entsync%-run: job%.lua:2: no CRM configured\n$")
    end)

    it("an unknown entity named by a sync: file, line of the sync, sync and entity", function()
      job([[
-- contacts from the CRM export
store "crm.db"

entity "user" {
  mail = "text",
  name = "text",
}

local src = provider "ndjson" { path = "contacts.ndjson" }

-- the typo is on line 14, the sync starts on line 12
sync "contacts" {
  remote = src,
  entity = "usr",
  mapping = { mail = "mail", name = "name" },
}
]])
      local r = run("check")
      assert.equal(2, r.code)
      assert.equal('entsync-run: job.lua:12: sync "contacts": entity "usr" is not declared\n', r.stderr)
      assert.equal("", r.stdout)
      assert.is_false(exists(dir .. "/crm.db"))
      -- The same through an absolute path names the file as given.
      r = helpers.run("/", { dir .. "/job.lua", "run" })
      assert.equal(2, r.code)
      assert.equal('entsync-run: ' .. dir .. '/job.lua:12: sync "contacts": entity "usr" is not declared\n', r.stderr)
      assert.is_false(exists(dir .. "/crm.db"))
    end)

    it("an unknown entity in a list of entities", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "user" { name = "text" }
sync "contacts" { remote = src, entity = { "user", "profile" }, mapping = { user = { name = "name" } } }
]])
      assert_config_error(run("check"), '^entsync%-run: job%.lua:3: sync "contacts": entity "profile" is not declared\n$')
    end)

    it("an unknown provider module names the provider and the line", function()
      job('entity "contact" { name = "text" }\n\nlocal crm = provider "no_such_crm" { url = "x" }\n')
      assert_config_error(run("check"),
        '^entsync%-run: job%.lua:3: provider "no_such_crm": no such provider %(looked for providers/no_such_crm%.lua%)\n$')
    end)

    it("a provider module that fails to load is reported with its own error", function()
      helpers.write(dir .. "/providers/broken.lua", "return {\n  new = function( end\n}\n")
      job('entity "contact" { name = "text" }\nlocal p = provider "broken" {}\n')
      assert_config_error(run("check"), '^entsync%-run: job%.lua:2: provider "broken": .*providers/broken%.lua:2:')
    end)

    it("a mapping module beside the job naming an undeclared local field names the mapping file and the field's line",
      function()
        helpers.write(dir .. "/mappings/contact.lua", [[
return {
  name = "name",
  email = "mail",
}
]])
        job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", mail = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = "mappings.contact" }
]])
        local r = run("check")
        assert_config_error(r,
          '^entsync%-run: [^\n]*mappings/contact%.lua:3: sync "contacts": field "email" is not declared in entity "contact"\n$')
        -- The job named by an absolute path from elsewhere: the mapping's own path.
        r = helpers.run("/", { dir .. "/job.lua", "check" })
        assert.equal(2, r.code)
        assert.equal('entsync-run: ' .. dir .. '/mappings/contact.lua:3: sync "contacts": field "email" is not declared '
          .. 'in entity "contact"\n', r.stderr)
      end)

    it("a split mapping naming an undeclared field points at that field's line in the mapping", function()
      helpers.write(dir .. "/mappings/split.lua", [[
return {
  user = {
    name = "name",
  },
  profile = {
    phone = "phone",
    fax = "fax",
  },
}
]])
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "user" { name = "text" }
entity "profile" { phone = "text" }
sync "contacts" { remote = src, entity = { "user", "profile" }, mapping = "mappings.split" }
]])
      assert_config_error(run("check"),
        'mappings/split%.lua:7: sync "contacts": field "fax" is not declared in entity "profile"\n$')
    end)

    it("an inline mapping naming an undeclared field points at the job file's line", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" {
  remote = src, entity = "contact",
  mapping = {
    name = "name",
    phone = "phone",
  },
}
]])
      assert_config_error(run("check"),
        '^entsync%-run: job%.lua:7: sync "contacts": field "phone" is not declared in entity "contact"\n$')
    end)

    it("a mapping module that does not exist is named with the sync's line", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = "mappings.nowhere" }
]])
      assert_config_error(run("check"), '^entsync%-run: job%.lua:3: sync "contacts": mapping "mappings.nowhere" not found')
    end)

    it("a mapping module with a syntax error names the mapping file and line", function()
      helpers.write(dir .. "/mappings/contact.lua", 'return {\n  name = "name"\n  mail = "mail",\n}\n')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", mail = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = "mappings.contact" }
]])
      assert_config_error(run("check"), "mappings/contact%.lua:3: '}' expected")
    end)

    it("a field name that is not an identifier", function()
      job('entity "contact" {\n  name = "text",\n  ["e-mail"] = "text",\n}\n')
      assert_config_error(run("check"), '^entsync%-run: job%.lua:1: entity "contact": field name "e%-mail" is not an identifier\n$')
      job('entity "contact" { ["1st"] = "text" }\n')
      assert_config_error(run("check"), 'field name "1st" is not an identifier')
      job('entity "contact" { [1] = "text" }\n')
      assert_config_error(run("check"), "field name 1 is not an identifier")
    end)

    it("an entity name that is not an identifier or is reserved", function()
      job('entity "contact list" { name = "text" }\n')
      assert_config_error(run("check"), '^entsync%-run: job%.lua:1: entity name "contact list" is not an identifier')
      job('entity "entsync_runs" { name = "text" }\n')
      assert_config_error(run("check"), 'entity "entsync_runs": names starting with entsync_ or sqlite_ are reserved')
      job('entity "SQLite_x" { name = "text" }\n')
      assert_config_error(run("check"), "are reserved")
    end)

    it("a field named id", function()
      job('entity "contact" { id = "integer", name = "text" }\n')
      assert_config_error(run("check"), 'entity "contact": field "id" is the primary key and cannot be declared')
    end)

    it("an unknown type, in an entity and in a mapping", function()
      job('entity "contact" {\n  name = "varchar",\n}\n')
      assert_config_error(run("check"),
        '^entsync%-run: job%.lua:1: entity "contact": field "name" has unknown type "varchar" %(text, integer')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = {
  name = { "name", type = "string" },
} }
]])
      assert_config_error(run("check"), '^entsync%-run: job%.lua:4: sync "contacts": field "name": unknown type "string"')
    end)

    it("an unknown sync option and an unknown import option", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" }, shedule = "*/5 * * * *" }
]])
      assert_config_error(run("check"), '^entsync%-run: job%.lua:3: sync "contacts": unknown sync option "shedule" %(known: ')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }

sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" }, import = { mod = "full" } }
]])
      assert_config_error(run("run"), '^entsync%-run: job%.lua:4: sync "contacts": unknown import option "mod" %(known: ')
    end)

    it("bad option values", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" }, import = { mode = "incremental" } }
]])
      assert_config_error(run("check"), 'sync "contacts": incremental imports need the changed field')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" }, import = { limit = 0 } }
]])
      assert_config_error(run("check"), 'sync "contacts": import limit must be a positive integer, got 0')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = "src", entity = "contact", mapping = { name = "name" } }
]])
      assert_config_error(run("check"), 'sync "contacts": remote must be a provider')
    end)

    it("a depends_on cycle names the cycle", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "a" { remote = src, entity = "contact", mapping = { name = "name" }, depends_on = { "b" } }
sync "b" { remote = src, entity = "contact", mapping = { name = "name" }, depends_on = "a" }
]])
      assert_config_error(run("check"), "depends_on forms a cycle: a %-> b %-> a")
    end)

    it("shows the traceback only under --verbose", function()
      job('entity "contact" { name = "text" }\nlocal function helper() error("broken helper") end\nhelper()\n')
      local r = run("check")
      assert_config_error(r, "^entsync%-run: job%.lua:2: broken helper\n$")
      for _, flag in ipairs({ "--verbose", "-v" }) do
        r = run("check", flag)
        assert.equal(2, r.code)
        assert.matches("^entsync%-run: job%.lua:2: broken helper\n", r.stderr)
        assert.matches("stack traceback:", r.stderr, 1, true)
        assert.matches("job.lua:3:", r.stderr, 1, true)
      end
    end)

    -- SQLite's table and column names are case-insensitive: "User" and
    -- "user" are one table, "name" and "Name" one column, "ID" the primary
    -- key. The DSL compares them case-sensitively, so check says ok; a run
    -- then merges the two entities silently, or dies with an internal
    -- error (exit 4) on a duplicate column.
    it("rejects entity names that differ only in case, as SQLite would make them one table", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "user" { name = "text" }
entity "User" { mail = "text" }
sync "contacts" { remote = src, entity = "user", mapping = { name = "name" } }
]])
      assert_config_error(run("check"), 'job%.lua:3: entity "User"')
    end)

    it("rejects field names that differ only in case, and ID, at check time", function()
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", Name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" } }
]])
      assert_config_error(run("check"), 'job%.lua:2: entity "contact"')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", ID = "integer" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" } }
]])
      assert_config_error(run("check"), 'job%.lua:2: entity "contact": field "ID" is the primary key')
    end)
  end)

  describe("modules beside the job", function()
    it("are found first: a provider in the job's providers/ folder shadows the shipped one", function()
      helpers.write(dir .. "/providers/ndjson.lua", [[
-- A stand-in for the shipped ndjson provider: two fixed records.
return {
  new = function(config)
    return {
      list = function()
        local records, i = { { id = "x1", name = "From beside the job" }, { id = "x2", name = config.label } }, 0
        return { next = function() i = i + 1; return records[i] end }
      end,
    }
  end,
}
]])
      job([[
local src = provider "ndjson" { label = "shadowed" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name" } }
]])
      local r = run("run")
      assert.equal(0, r.code, r.stderr)
      assert.same({ { name = "From beside the job" }, { name = "shadowed" } },
        helpers.query(dir .. "/entsync.db", "SELECT name FROM contact ORDER BY id"))
    end)

    it("are found first for mappings, and the job can require its own helper modules", function()
      helpers.write(dir .. "/mappings/contact.lua", 'local util = require "util"\nreturn { name = util.field }\n')
      helpers.write(dir .. "/util.lua", 'return { field = "mail" }\n')
      job([[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = "mappings.contact" }
]])
      local r = run("run")
      assert.equal(0, r.code, r.stderr)
      assert.same({ { name = "ann@example.org" }, { name = "bob@example.org" } },
        helpers.query(dir .. "/entsync.db", "SELECT name FROM contact ORDER BY id"))
    end)
  end)
end)
