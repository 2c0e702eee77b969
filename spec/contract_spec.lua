-- The provider contract (providers/README.md, version 2) as declared and
-- checked: a provider that lacks a verb a sync needs is a configuration
-- error; an error raised in provider code is a provider error naming the
-- sync and the provider's file:line, never an internal error; every
-- shipped provider checks its settings by their schema, nested ones too;
-- failures are listed with their payloads, retried and dismissed; versions
-- are sent back as If-Match. Real entsync-run processes (and the real
-- fixture remote where a remote is needed) only.

local cjson = require "cjson"
local helpers = require "helpers"
local I = require "import_support"
local S = require "http_support"
local X = require "export_support"

local TIMEOUT = 60

local function lines_of(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

local function run_in(dir, ...)
  local r = S.run_limited(dir, TIMEOUT, ...)
  assert.is_false(r.killed, "entsync-run was killed after " .. TIMEOUT .. "s: " .. r.stderr)
  return r
end

-- A provider module's source: verbs is a list of the verbs its object has
-- (each a stub), readers list a few records.
local function stub_provider(verbs)
  local parts = { "local M = {}", "function M.new(config)", "  local P = {}" }
  for _, verb in ipairs(verbs) do
    if verb == "list" then
      parts[#parts + 1] = [[  function P:list() local n = 0
    return { next = function() n = n + 1; if n <= 2 then return { id = n, name = "N" .. n } end end } end]]
    elseif verb == "get" then
      parts[#parts + 1] = "  function P:get(_, id) return { id = id, name = 'N' .. tostring(id) } end"
    elseif verb == "create" then
      parts[#parts + 1] = "  function P:create(_, record) return 1, record end"
    elseif verb == "update" then
      parts[#parts + 1] = "  function P:update(_, _, record) return record end"
    elseif verb == "delete" then
      parts[#parts + 1] = "  function P:delete() return true end"
    elseif verb == "get_batch" then
      parts[#parts + 1] = [[  function P:get_batch(_, ids)
    local out = {}
    for i, id in ipairs(ids) do out[i] = { id = id, name = 'N' .. tostring(id) } end
    return out
  end]]
    elseif verb == "get_batch_table" then
      parts[#parts + 1] = "  P.get_batch = {}"
    elseif verb == "write_batch" then
      parts[#parts + 1] = [[  function P:write_batch(_, items)
    local out = {}
    for i, item in ipairs(items) do out[i] = { ok = true, id = item.id or i, answer = item.record } end
    return out
  end]]
    end
  end
  parts[#parts + 1] = "  return P"
  parts[#parts + 1] = "end"
  parts[#parts + 1] = "return M"
  return table.concat(parts, "\n") .. "\n"
end

describe("the provider contract", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  -- job.lua with provider "x" (providers/x.lua beside it) and one sync
  -- declared over three lines, starting at line 3.
  local function job_with(provider_source, sync_settings)
    helpers.write(dir .. "/providers/x.lua", provider_source)
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { name = "text" }',
      'local x = provider "x" {}',
      'sync "contacts" { remote = x "items", entity = "contact",',
      '  mapping = { name = "name" },',
      "  " .. (sync_settings or "") .. " }",
    }, "\n") .. "\n")
  end

  describe("a provider that lacks a verb a sync needs", function()
    local cases = {
      { what = "no list for an importing sync", verbs = { "get", "create", "update", "delete" }, verb = "list",
        sync = "" },
      { what = "no update for an exporting sync", verbs = { "list", "get", "create", "delete" }, verb = "update",
        sync = "export = { on_change = true }" },
      { what = "no create for an exporting sync", verbs = { "list", "get", "update", "delete" }, verb = "create",
        sync = "export = { on_change = true }" },
      { what = 'no delete when export.deletes = "delete"', verbs = { "list", "get", "create", "update" },
        verb = "delete", sync = 'export = { on_change = true, deletes = "delete" }' },
    }
    for _, case in ipairs(cases) do
      for _, command in ipairs({ "check", "run" }) do
        it("is refused by " .. command .. ": " .. case.what, function()
          job_with(stub_provider(case.verbs), case.sync)
          local r = run_in(dir, command)
          assert.equal(2, r.code, r.stdout .. r.stderr)
          local lines = lines_of(r.stderr)
          assert.equal(1, #lines, r.stderr)
          local line = lines[1]
          assert.matches("job.lua:3:", line, 1, true)
          assert.matches('sync "contacts"', line, 1, true)
          assert.matches('provider "x"', line, 1, true)
          assert.matches("providers/x.lua", line, 1, true)
          assert.matches("has no " .. case.verb, line, 1, true)
          assert.is_nil(line:match("internal error"), line)
          if command == "check" then assert.is_nil(helpers.read(dir .. "/entsync.db")) end -- check runs nothing
        end)
      end
    end

    it("is accepted when it has every verb its syncs need", function()
      job_with(stub_provider({ "list", "get", "create", "update", "delete" }),
        'export = { on_change = true, deletes = "delete" }')
      local r = run_in(dir, "check")
      assert.equal(0, r.code, r.stderr)
      assert.matches("job job.lua: ok", r.stdout, 1, true)
    end)

    it("an export-only sync needs no list", function()
      job_with(stub_provider({ "create", "update" }), "import = false, export = { on_change = true }")
      local r = run_in(dir, "check")
      assert.equal(0, r.code, r.stderr)
    end)

    -- write_batch is optional: the contract's exports still go through
    -- create and update (export SYNC ID, a write sent again after a
    -- conflict), so a provider with write_batch and no update either is
    -- refused at load, or its export works.
    it("with write_batch but no create or update either is refused or exports", function()
      job_with(stub_provider({ "list", "get", "write_batch" }), "export = { on_change = true }")
      local r = run_in(dir, "check")
      if r.code == 2 then
        assert.matches("has no", r.stderr, 1, true)
        return
      end
      r = run_in(dir, "run")
      assert.equal(0, r.code, r.stderr)
      helpers.sqlite3(dir .. "/entsync.db", "UPDATE contact SET name = 'Changed' WHERE id = 1")
      r = run_in(dir, "export", "contacts", "1")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(1, X.summary(r.stdout, true).updated, r.stdout)
    end)
  end)

  -- get_batch is optional too: a drain through write_batch reads its
  -- updates' copies with it, and a copy read again after a version
  -- conflict goes through get, which it cannot do without.
  describe("an optional verb", function()
    for _, command in ipairs({ "check", "run" }) do
      it("is refused by " .. command .. " when get_batch comes without get", function()
        job_with(stub_provider({ "list", "create", "update", "get_batch", "write_batch" }),
          "export = { on_change = true }")
        local r = run_in(dir, command)
        assert.equal(2, r.code, r.stdout .. r.stderr)
        local lines = lines_of(r.stderr)
        assert.equal(1, #lines, r.stderr)
        assert.matches("job.lua:3:", lines[1], 1, true)
        assert.matches('sync "contacts"', lines[1], 1, true)
        assert.matches("providers/x.lua", lines[1], 1, true)
        assert.matches("has get_batch but no get", lines[1], 1, true)
      end)
    end

    it("is refused when it is no function", function()
      job_with(stub_provider({ "list", "get", "create", "update", "get_batch_table" }), "export = { on_change = true }")
      local r = run_in(dir, "check")
      assert.equal(2, r.code, r.stdout .. r.stderr)
      assert.matches("job.lua:3:", r.stderr, 1, true)
      assert.matches("its get_batch is table, not a function", r.stderr, 1, true)
    end)

    it("get_batch beside get and write_batch is accepted, and a drain exports through them", function()
      job_with(stub_provider({ "list", "get", "create", "update", "get_batch", "write_batch" }),
        "export = { on_change = true }")
      local r = run_in(dir, "check")
      assert.equal(0, r.code, r.stderr)
      r = run_in(dir, "run")
      assert.equal(0, r.code, r.stderr)
      helpers.sqlite3(dir .. "/entsync.db", "UPDATE contact SET name = 'Changed'")
      r = run_in(dir, "run")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(2, X.summary(r.stdout, true).updated, r.stdout)
    end)
  end)

  describe("an error raised in provider code", function()
    local RAISING = [[
local M = {}
function M.new(config)
  local P = {}
  function P:list()
    local n = 0
    return { next = function()
      n = n + 1
      if n == 3 then error("the feed broke") end
      if n > 5 then return nil end
      return { id = n, name = "N" .. n }
    end }
  end
  function P:get(_, id)
    error("get broke on " .. tostring(id))
  end
  return P
end
return M
]]

    it("in get during import SYNC ID is a provider error naming the sync and the file:line", function()
      job_with(RAISING, "")
      local r = run_in(dir, "import", "contacts", "7")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.is_nil(r.stderr:match("internal error"), r.stderr)
      assert.matches("contacts", r.stderr, 1, true)
      assert.matches('provider "x"', r.stderr, 1, true)
      assert.matches("providers/x.lua:14: get broke on 7", r.stderr, 1, true)
      assert.equal(1, I.summary(r.stdout).failed, r.stdout)
      local failed = I.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'contacts'")
      assert.equal(1, #failed)
      assert.equal("7", failed[1].key)
      assert.matches("providers/x.lua:14: get broke on 7", failed[1].error, 1, true)
    end)

    it("in a reader's next mid-run is a provider error naming the sync and the file:line", function()
      job_with(RAISING, "")
      local r = run_in(dir, "run")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.is_nil(r.stderr:match("internal error"), r.stderr)
      local lines = lines_of(r.stderr)
      assert.equal(1, #lines, r.stderr)
      assert.matches('sync "contacts"', lines[1], 1, true)
      assert.matches('provider "x"', lines[1], 1, true)
      assert.matches("providers/x.lua:8: the feed broke", lines[1], 1, true)
      -- the run is recorded as failed, with the error
      local run = I.query(dir, "SELECT * FROM entsync_history WHERE sync = 'contacts' ORDER BY id DESC LIMIT 1")[1]
      assert.are_not.equal("ok", run.status)
      assert.matches("the feed broke", run.error, 1, true)
    end)

    it("in version() during a run is a provider error naming the sync, the verb and the file:line", function()
      job_with([[
local M = {}
function M.new(config)
  local P = {}
  function P:list()
    local n = 0
    return { next = function()
      n = n + 1
      if n <= 3 then return { id = n, name = "N" .. n, rev = "r" .. n } end
    end }
  end
  function P:version(record)
    if record.id == 2 then error("no revision in this record") end
    return record.rev
  end
  return P
end
return M
]], "")
      local r = run_in(dir, "run")
      assert.is_nil(r.stderr:match("internal error"), r.stderr)
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("contacts", r.stderr, 1, true)
      assert.matches('provider "x"', r.stderr, 1, true)
      assert.matches("version", r.stderr, 1, true)
      assert.matches("providers/x.lua:12: no revision in this record", r.stderr, 1, true)
    end)

    it("in the module's validate is a configuration error naming the job's line and the provider", function()
      helpers.write(dir .. "/providers/x.lua", [[
local M = {}
function M.validate(config)
  return config.nested.value
end
function M.new(config) return { list = function() return { next = function() end } end } end
return M
]])
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { name = "text" }',
        'local x = provider "x" {}',
        'sync "contacts" { remote = x "items", entity = "contact", mapping = { name = "name" } }',
      }, "\n") .. "\n")
      local r = run_in(dir, "check")
      assert.equal(2, r.code, r.stdout .. r.stderr)
      assert.is_nil(r.stderr:match("internal error"), r.stderr)
      local lines = lines_of(r.stderr)
      assert.equal(1, #lines, r.stderr)
      assert.matches("job.lua:2:", lines[1], 1, true)
      assert.matches('provider "x"', lines[1], 1, true)
      assert.matches("providers/x.lua:3:", lines[1], 1, true)
    end)

    it("is never reported as internal under --verbose either, and the traceback names the file", function()
      job_with(RAISING, "")
      local r = run_in(dir, "run", "--verbose")
      assert.equal(1, r.code, r.stderr)
      assert.is_nil(r.stderr:match("internal error"), r.stderr)
      assert.matches("providers/x.lua:8", r.stderr, 1, true)
    end)
  end)

  describe("every shipped provider checks its settings", function()
    local cases = {
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", page = { size = "x" } }',
        message = 'setting page.size must be a positive integer, got "x"' },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", page = { sise = 5 } }',
        message = "unknown setting page.sise (did you mean page.size?)" },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", pag = { size = 5 } }',
        message = "unknown setting pag (did you mean page?)" },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", auth = { api_key = {} } }',
        message = "setting auth.api_key.value is required" },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", auth = { api_key = { header = 5, value = "k" } } }',
        message = "setting auth.api_key.header must be a string, got 5" },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", secret_headers = { 5 } }',
        message = "setting secret_headers[1] must be a string, got 5" },
      { name = "http_json", settings = '{ base_url = "http://127.0.0.1:1", update_method = "POST" }',
        message = 'setting update_method must be one of "PUT", "PATCH", got "POST"' },
      { name = "http_json", settings = '{ page = { size = 5 } }', message = "setting base_url is required" },
      { name = "ndjson", settings = '{ dri = "x" }', message = "unknown setting dri (did you mean dir?)" },
      { name = "ndjson", settings = '{ dir = 5 }', message = "setting dir must be a string, got 5" },
      { name = "csv", settings = '{ dir = "x", delimiter = 5 }', message = "setting delimiter must be a string, got 5" },
      { name = "csv", settings = '{ dir = "x", delimitr = ";" }',
        message = "unknown setting delimitr (did you mean delimiter?)" },
      { name = "json", settings = '{ dir = "x", records = { "a" } }',
        message = "setting records must be a string, got a table" },
      { name = "json", settings = '{ dir = "x", recods = "a" }', message = "unknown setting recods (did you mean records?)" },
      { name = "docstore", settings = '{ base_url = "http://127.0.0.1:1", db = "d", page_size = "x" }',
        message = 'setting page_size must be a positive integer, got "x"', example = true },
      { name = "docstore", settings = '{ base_url = "http://127.0.0.1:1", db = "d", tpye = "contact" }',
        message = "unknown setting tpye (did you mean type?)", example = true },
    }
    for _, case in ipairs(cases) do
      it(case.name .. " " .. case.settings, function()
        if case.example then
          helpers.write(dir .. "/providers/docstore.lua",
            helpers.read(helpers.root .. "/examples/feed/providers/docstore.lua"))
        end
        helpers.write(dir .. "/job.lua", table.concat({
          'entity "contact" { name = "text" }',
          string.format("local p = provider %q %s", case.name, case.settings),
          'sync "contacts" { remote = p "contacts.ndjson", entity = "contact", mapping = { name = "name" } }',
        }, "\n") .. "\n")
        local r = run_in(dir, "check")
        assert.equal(2, r.code, r.stdout .. r.stderr)
        local lines = lines_of(r.stderr)
        assert.equal(1, #lines, r.stderr)
        assert.matches("job.lua:2:", lines[1], 1, true)
        assert.matches(string.format('provider "%s"', case.name), lines[1], 1, true)
        assert.matches(case.message, lines[1], 1, true)
      end)
    end
  end)

  describe("a job's own provider declares its settings", function()
    local SOURCE = [[
local M = {}
M.settings = { url = { type = "string", required = true }, retries = "positive",
  paging = { fields = { size = "positive", style = { one_of = { "page", "key" } } } } }
function M.validate(config)
  if config.url:sub(1, 4) ~= "http" then return nil, "setting url must be an http URL" end
  return true
end
function M.new(config, ctx)
  return { name = ctx.name, list = function() return { next = function() end } end }
end
return M
]]
    local cases = {
      { settings = "{}", message = "setting url is required" },
      { settings = '{ url = "http://x", retries = 0 }', message = "setting retries must be a positive integer, got 0" },
      { settings = '{ url = "http://x", paging = { style = "cursor" } }',
        message = 'setting paging.style must be one of "page", "key", got "cursor"' },
      { settings = '{ url = "http://x", paging = { sizes = 3 } }',
        message = "unknown setting paging.sizes (did you mean paging.size?)" },
      { settings = '{ url = "ftp://x" }', message = "setting url must be an http URL" },
    }
    for _, case in ipairs(cases) do
      it("checked before new: " .. case.settings, function()
        helpers.write(dir .. "/providers/x.lua", SOURCE)
        helpers.write(dir .. "/job.lua", table.concat({
          'entity "contact" { name = "text" }',
          "local x = provider \"x\" " .. case.settings,
          'sync "contacts" { remote = x "items", entity = "contact", mapping = { name = "name" } }',
        }, "\n") .. "\n")
        local r = run_in(dir, "check")
        assert.equal(2, r.code, r.stdout .. r.stderr)
        local lines = lines_of(r.stderr)
        assert.equal(1, #lines, r.stderr)
        assert.matches("job.lua:2:", lines[1], 1, true)
        assert.matches('provider "x"', lines[1], 1, true)
        assert.matches(case.message, lines[1], 1, true)
      end)
    end

    it("accepted when they match", function()
      helpers.write(dir .. "/providers/x.lua", SOURCE)
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { name = "text" }',
        'local x = provider "x" { url = "http://x", retries = 2, paging = { size = 5, style = "key" } }',
        'sync "contacts" { remote = x "items", entity = "contact", mapping = { name = "name" } }',
      }, "\n") .. "\n")
      local r = run_in(dir, "check")
      assert.equal(0, r.code, r.stderr)
    end)
  end)

  describe("failures SYNC", function()
    -- 5 contacts from an NDJSON file; 2 and 4 have an age that is no integer
    local function failed_run()
      I.job(dir, {})
      I.data(dir, { I.contact(1), I.contact(2, { age = "yes" }), I.contact(3), I.contact(4, { age = "old" }),
        I.contact(5) })
      local r = run_in(dir)
      assert.equal(1, r.code, r.stderr)
      assert.equal(2, I.summary(r.stdout).failed, r.stdout)
    end

    it("lists each failure with its payload", function()
      failed_run()
      local r = run_in(dir, "failures", "contacts")
      assert.equal(0, r.code, r.stderr)
      local out = r.stdout
      assert.matches("import 2", out, 1, true)
      assert.matches("import 4", out, 1, true)
      assert.matches('"yes"', out, 1, true)
      assert.matches('"old"', out, 1, true)
      local payloads = 0
      for line in out:gmatch("[^\n]+") do
        if line:match("^%s+payload ") then
          payloads = payloads + 1
          local decoded = cjson.decode(line:match("^%s+payload (.*)$"))
          assert.is_true(decoded.id == 2 or decoded.id == 4, line)
        end
      end
      assert.equal(2, payloads, out)
      assert.matches("contacts: 2 failures", out, 1, true)
    end)

    it("--json gives one JSON object a line", function()
      failed_run()
      local r = run_in(dir, "failures", "contacts", "--json")
      assert.equal(0, r.code, r.stderr)
      local by_key = {}
      for _, line in ipairs(lines_of(r.stdout)) do
        local f = cjson.decode(line)
        by_key[f.key] = f
      end
      assert.same({ "2", "4" }, (function()
        local keys = {}
        for k in pairs(by_key) do keys[#keys + 1] = k end
        table.sort(keys)
        return keys
      end)())
      local two = by_key["2"]
      assert.equal("contacts", two.sync)
      assert.equal("import", two.direction)
      assert.equal(1, two.attempts)
      assert.matches("age", two.error, 1, true)
      assert.equal("table", type(two.payload))
      assert.equal(2, two.payload.id)
      assert.equal("yes", two.payload.age)
      assert.equal("old", by_key["4"].payload.age)
    end)

    it("dismiss KEY forgets one, dismiss --all the rest", function()
      failed_run()
      local r = run_in(dir, "failures", "contacts", "dismiss", "2")
      assert.equal(0, r.code, r.stderr)
      assert.matches("1 failures dismissed", r.stdout, 1, true)
      local keys = {}
      for _, row in ipairs(I.query(dir, "SELECT key FROM entsync_failed WHERE sync = 'contacts'")) do
        keys[#keys + 1] = row.key
      end
      assert.same({ "4" }, keys)
      r = run_in(dir, "failures", "contacts", "dismiss", "--all")
      assert.equal(0, r.code, r.stderr)
      assert.equal(0, I.count(dir, "entsync_failed"))
      r = run_in(dir, "failures", "contacts")
      assert.matches("contacts: 0 failures", r.stdout, 1, true)
    end)

    it("retry, once the input is fixed, imports them and clears them", function()
      failed_run()
      I.data(dir, { I.contact(1), I.contact(2), I.contact(3), I.contact(4), I.contact(5) })
      local r = run_in(dir, "failures", "contacts", "retry")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, I.count(dir, "entsync_failed"))
      assert.equal(5, I.count(dir, "contact"))
    end)
  end)
end)

describe("the provider contract against a remote", function()
  local server, dir

  helpers.remote_for_each_test({
    contacts = {
      { id = 1, email = "a@example.com", name = "A", age = 30, rev = "r1" },
      { id = 2, email = "b@example.com", name = "B", age = 31, rev = "r1" },
      { id = 3, email = "c@example.com", name = "C", age = 32, rev = "r1" },
    },
  }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  local function run(...)
    return run_in(dir, ...)
  end

  describe("a failure that says the remote has no such entity", function()
    local function job()
      S.job(dir, server.url, { page = { style = "page", size = 50 } },
        { { resource = "api/contacts", import = { mode = "full", deletes = "delete" } } })
    end

    it("is stored by import SYNC ID of something missing, and cleared when its retry finds it still gone", function()
      job()
      local r = run("import", "contacts", "999")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      local failed = I.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'contacts'")
      assert.equal(1, #failed)
      assert.equal("999", failed[1].key)
      assert.matches("no such entity", failed[1].error, 1, true)
      r = run("failures", "contacts", "retry")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, I.count(dir, "entsync_failed"))
    end)

    it("is imported by its retry once the remote has it", function()
      job()
      local r = run("import", "contacts", "999")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      local res = server.request("POST", "/api/contacts", { body = { id = 999, email = "z@example.com", name = "Z",
        age = 40 } })
      assert.equal(201, res.status)
      r = run("failures", "contacts", "retry")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, I.count(dir, "entsync_failed"))
      assert.equal("z@example.com|Z|40", S.stored(dir)[999])
    end)

    it("of a record that failed and was then deleted at the remote: the retry settles it by the deletes policy", function()
      job()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      X.remote_put(server, "contacts", 2, { email = "b@example.com", name = "B", age = "not a number" })
      r = run()
      assert.equal(1, r.code, r.stderr)
      assert.equal(1, I.count(dir, "entsync_failed"))
      assert.equal(204, server.request("DELETE", "/api/contacts/2").status)
      r = run("failures", "contacts", "retry")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, I.count(dir, "entsync_failed"))
      local stored = S.stored(dir)
      assert.is_nil(stored[2]) -- deletes = "delete"
      assert.is_not_nil(stored[1])
    end)
  end)

  describe("versions", function()
    local function job(export)
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 50 }, '
          .. 'version = { field = "rev" } }', server.url),
        'sync "contacts" { remote = api "api/contacts", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" },',
        '  import = { mode = "full", changed = "updated_at" },',
        "  export = " .. (export or '{ on_change = true, deletes = "delete" }') .. " }",
      }, "\n") .. "\n")
    end

    local function local_of(remote_id)
      return I.value(dir, "SELECT local_id FROM entsync_map WHERE sync = 'contacts' AND remote_id = ?1", remote_id)
    end

    it("are kept with the id map and sent back as If-Match on updates and deletes", function()
      job()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal("r1", I.value(dir, "SELECT version FROM entsync_map WHERE remote_id = 2"))
      -- the remote's revision moves on (same content): the next import keeps it
      X.remote_put(server, "contacts", 2, { email = "b@example.com", name = "B", age = 31, rev = "r2" })
      r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal("r2", I.value(dir, "SELECT version FROM entsync_map WHERE remote_id = 2"))

      X.sql(dir, string.format("UPDATE contact SET name = 'B local' WHERE id = %d", local_of(2)))
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local puts = X.writes(server.log(), { method = "PUT" })
      assert.equal(1, #puts)
      assert.equal("/api/contacts/2", puts[1].path)
      assert.equal('"r2"', puts[1].headers["If-Match"])
      assert.equal("B local", X.remote(server, "contacts")[2].name)
      assert.equal("r2", X.remote(server, "contacts")[2].rev) -- fields the mapping does not carry are kept

      X.remote_put(server, "contacts", 3, { email = "c@example.com", name = "C", age = 32, rev = "r9" })
      r = run() -- the import takes r9
      assert.equal(0, r.code, r.stderr)
      X.sql(dir, string.format("DELETE FROM contact WHERE id = %d", local_of(3)))
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local deletes = X.writes(server.log(), { method = "DELETE" })
      assert.equal(1, #deletes)
      assert.equal("/api/contacts/3", deletes[1].path)
      assert.equal('"r9"', deletes[1].headers["If-Match"])
      assert.is_nil(X.remote(server, "contacts")[3])
    end)

    local function patch_job()
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 50 }, '
          .. 'version = { field = "rev" }, update_method = "PATCH" }', server.url),
        'sync "contacts" { remote = api "api/contacts", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" },',
        '  import = { mode = "full", changed = "updated_at" },',
        "  export = { on_change = true } }",
      }, "\n") .. "\n")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      X.sql(dir, string.format("UPDATE contact SET name = 'B local' WHERE id = %d", local_of(2)))
      server.reset_log()
    end

    -- the requests for /api/contacts/2: { "PATCH 200", ... }
    local function requests_for_2()
      local out = {}
      for _, e in ipairs(server.log()) do
        if e.path == "/api/contacts/2" then out[#out + 1] = string.format("%s %d", e.method, e.status) end
      end
      return out
    end

    it("with PATCH (partial updates) skip the read before an update and name the version last seen", function()
      patch_job()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.same({ "PATCH 200" }, requests_for_2())
      local patch = X.writes(server.log(), { method = "PATCH" })[1]
      assert.equal('"r1"', patch.headers["If-Match"])
      assert.equal("B local", X.remote(server, "contacts")[2].name)
      assert.equal(0, I.count(dir, "entsync_failed"))
    end)

    it("with PATCH (partial updates) and no read, send the fields the mapping carries and keep the rest", function()
      patch_job()
      local before = X.remote(server, "contacts")[2]
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local patch = X.writes(server.log(), { method = "PATCH" })[1]
      -- no copy was read to compare with: every mapped field goes (the
      -- documented case), and only those
      local keys = {}
      for k in pairs(patch.record) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "age", "email", "name" }, keys)
      assert.equal("B local", patch.record.name)
      local after = X.remote(server, "contacts")[2]
      for k, v in pairs(before) do
        if k ~= "name" and k ~= "updated_at" then assert.same(v, after[k], k) end
      end
    end)

    it("with PATCH (partial updates), a 409 is read again, settled and sent again in the same run", function()
      patch_job()
      server.faults({ { path = "/api/contacts/2", method = "PATCH", kind = "status", status = 409, count = 1 } })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.same({ "PATCH 409", "GET 200", "PATCH 200" }, requests_for_2())
      assert.equal("B local", X.remote(server, "contacts")[2].name)
      assert.equal(0, I.count(dir, "entsync_failed"))
      assert.equal(0, X.summary(r.stdout, true).failed, r.stdout)
    end)

    it("after a conflict the local side won at import, the write names the version the import saw", function()
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 50 }, '
          .. 'version = { field = "rev" }, update_method = "PATCH" }', server.url),
        'sync "contacts" { remote = api "api/contacts", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" },',
        '  import = { mode = "full", changed = "updated_at" },',
        '  export = { on_change = true, conflict = "local_wins" } }',
      }, "\n") .. "\n")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      X.remote_put(server, "contacts", 2, { email = "b@example.com", name = "Remote B", age = 31, rev = "r2" })
      X.sql(dir, string.format("UPDATE contact SET age = 77 WHERE id = %d", local_of(2)))
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, I.summary(r.stdout).conflicts, r.stdout)
      local patches = X.writes(server.log(), { method = "PATCH" })
      assert.equal(1, #patches)
      assert.equal('"r2"', patches[1].headers["If-Match"])
      local remote = X.remote(server, "contacts")[2]
      assert.equal(77, remote.age)
      assert.equal("B", remote.name)
    end)

    it("a 412 to a versioned write is a version conflict, settled in the same run", function()
      job()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      X.sql(dir, string.format("UPDATE contact SET name = 'A local' WHERE id = %d", local_of(1)))
      server.faults({ { path = "/api/contacts/1", method = "PUT", kind = "status", status = 412, count = 1 } })
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local summary = X.summary(r.stdout, true)
      assert.equal(1, summary.updated, r.stdout)
      assert.equal(0, summary.failed, r.stdout)
      assert.equal(0, I.count(dir, "entsync_failed"))
      local puts = X.writes(server.log(), { method = "PUT" })
      assert.equal(2, #puts)
      assert.equal(412, puts[1].status)
      assert.equal(200, puts[2].status)
      assert.equal("A local", X.remote(server, "contacts")[1].name)
    end)
  end)
end)
