-- A kill between send and record: the remote has our write, the store does
-- not know it yet. The job's provider is http_json wrapped by a small
-- provider in the job's folder that SIGKILLs its own process right after
-- the remote answered an update (or a create), before entsync records the
-- answer. Then a newer local change is made with the sqlite3 shell, and
-- the next run must end with the newest change on both sides: the remote's
-- copy of our own write is no conflict and is never written back over the
-- newer local value; a create is never made twice, on either side.

local cjson = require "cjson"
local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local CRASHY = [[
-- http_json, killed (SIGKILL, by its own hand) right after the remote
-- answered the write named by ENTSYNC_SPEC_CRASH ("update" or "create").
local base = require "providers.http_json"
local core = require "entsync.core"

local M = { validate = base.validate }

local function die()
  io.stderr:write("crashy: the remote answered; killing myself now\n")
  io.stderr:flush()
  os.execute("kill -9 " .. core.sys.getpid())
  -- not reached
  os.exit(137)
end

function M.new(config, ctx)
  local p = base.new(config, ctx)
  local mode = os.getenv("ENTSYNC_SPEC_CRASH")
  local update, create = p.update, p.create
  function p.update(self, ...)
    local answer = update(self, ...)
    if mode == "update" then die() end
    return answer
  end
  function p.create(self, ...)
    local id, answer = create(self, ...)
    if mode == "create" then die() end
    return id, answer
  end
  return p
end

return M
]]

local function write_job(dir, url, opts)
  opts = opts or {}
  helpers.write(dir .. "/providers/crashy.lua", CRASHY)
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    string.format('local api = provider "crashy" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = "PUT", attempts = 2%s }', url, opts.provider and (", " .. opts.provider) or ""),
    'sync "contacts" { remote = api "api/contacts", entity = "contact",',
    '  mapping = { email = "email", name = "name", age = "age" },',
    "  import = " .. (opts.import or '{ mode = "full", changed = "updated_at" }') .. ",",
    "  export = { on_change = true, conflict = " .. (opts.conflict or '"remote_wins"')
      .. (opts.export and (", " .. opts.export) or "") .. " } }",
  }, "\n") .. "\n")
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

local function crash_run(dir, what)
  local r = T.run(dir, {}, { ENTSYNC_SPEC_CRASH = what })
  assert.equal(137, r.code, "the run was not killed: " .. r.stdout .. r.stderr)
  assert.truthy(r.stderr:find("crashy: the remote answered", 1, true), r.stderr)
  return r
end

-- Every value the contact table held for name, as written (an audit of
-- the table installed by the spec).
local function audit(dir)
  X.sql(dir, [[CREATE TABLE crash_audit (what TEXT, id INTEGER, name TEXT);
    CREATE TRIGGER crash_audit_i AFTER INSERT ON contact BEGIN INSERT INTO crash_audit VALUES ('insert', new.id, new.name); END;
    CREATE TRIGGER crash_audit_u AFTER UPDATE ON contact BEGIN INSERT INTO crash_audit VALUES ('update', new.id, new.name); END;]])
end

local function audited(dir)
  local out = {}
  for _, row in ipairs(T.query(dir, "SELECT what, id, name FROM crash_audit ORDER BY rowid")) do
    out[#out + 1] = string.format("%s %d %s", row.what, row.id, row.name)
  end
  return out
end

-- A first run, then a new local row whose create is killed once the
-- remote made it; returns the rows before it and its local id.
local function create_crashed(dir)
  ok_run(dir)
  local before = T.value(dir, "SELECT count(*) FROM contact") or 0
  X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@example.com', 'v1', 7)")
  local id = T.value(dir, "SELECT id FROM contact WHERE email = 'new@example.com'")
  crash_run(dir, "create")
  return before, id
end

describe("a kill between send and record", function()
  local server, dir

  T.fresh_remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  for _, policy in ipairs({ '"remote_wins"', '"local_wins"' }) do
    it("an update (conflict = " .. policy .. "): the newer local change wins on both sides, no conflict, v1 never "
      .. "written back", function()
        write_job(dir, server.url, { conflict = policy })
        ok_run(dir)
        local id = T.local_of(dir, "contacts", 101)
        X.sql(dir, string.format("UPDATE contact SET name = 'v1' WHERE id = %d", id))
        crash_run(dir, "update")
        -- the remote has v1; the store has not recorded it
        assert.equal("v1", X.remote(server, "contacts")[101].name)
        audit(dir)
        X.sql(dir, string.format("UPDATE contact SET name = 'v2' WHERE id = %d", id))
        server.reset_log()
        local r = ok_run(dir)
        -- v2 on both sides
        assert.equal("v2", T.value(dir, "SELECT name FROM contact WHERE id = ?1", id))
        assert.equal("v2", X.remote(server, "contacts")[101].name)
        local puts = T.requests(server.log(), { method = "PUT" })
        assert.equal(1, #puts, r.stdout .. r.stderr)
        assert.equal("v2", cjson.decode(puts[1].body).name)
        -- our own write was no conflict, and v1 never came back locally
        assert.same({}, T.conflicts(dir, "contacts"), r.stdout .. r.stderr)
        assert.is_nil(r.stdout:find("conflict", 1, true), r.stdout)
        assert.is_nil(r.stderr:find("changed on both sides", 1, true), r.stderr)
        assert.same({ string.format("update %d v2", id) }, audited(dir))
        -- and it stays so
        server.reset_log()
        r = ok_run(dir)
        assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
        assert.equal("v2", T.value(dir, "SELECT name FROM contact WHERE id = ?1", id))
        assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_writes"))
      end)
  end

  it("an update, run again with nothing newer: no conflict, nothing sent twice", function()
    write_job(dir, server.url)
    ok_run(dir)
    local id = T.local_of(dir, "contacts", 102)
    X.sql(dir, string.format("UPDATE contact SET name = 'v1' WHERE id = %d", id))
    crash_run(dir, "update")
    audit(dir)
    server.reset_log()
    local r = ok_run(dir)
    assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
    assert.same({}, T.conflicts(dir, "contacts"))
    assert.same({}, audited(dir))
    assert.equal("v1", X.remote(server, "contacts")[102].name)
    assert.equal("v1", T.value(dir, "SELECT name FROM contact WHERE id = ?1", id))
  end)

  for _, case in ipairs({
    { what = "an importing sync", import = nil },
    { what = "an export-only sync", import = "false" },
  }) do
    it("a create (" .. case.what .. "): the next run creates no duplicate on either side", function()
      write_job(dir, server.url, { import = case.import })
      local before, id = create_crashed(dir)
      assert.equal(4, #server.data().contacts)
      local first_post = T.requests(server.log(), { method = "POST" })[1]
      server.reset_log()
      local r = ok_run(dir)
      -- one record on each side, and they are linked
      assert.equal(4, #server.data().contacts, r.stdout .. r.stderr)
      assert.equal(before + 1, T.value(dir, "SELECT count(*) FROM contact"))
      assert.equal(104, T.remote_of(dir, "contacts", id))
      -- a create sent again carries the first one's Idempotency-Key
      for _, post in ipairs(T.requests(server.log(), { method = "POST" })) do
        assert.equal(T.header(first_post, "Idempotency-Key"), T.header(post, "Idempotency-Key"))
      end
      server.reset_log()
      r = ok_run(dir)
      assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
      assert.equal(4, #server.data().contacts)
      assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_writes"))
    end)

    it("a create (" .. case.what .. ") without an idempotency key: natural_key finds it at the remote, no "
      .. "duplicate", function()
      write_job(dir, server.url, { import = case.import, provider = "idempotency_header = false",
        export = 'natural_key = "email"' })
      local before, id = create_crashed(dir)
      assert.equal(4, #server.data().contacts)
      assert.is_nil(T.header(T.requests(server.log(), { method = "POST" })[1], "Idempotency-Key"))
      X.sql(dir, string.format("UPDATE contact SET name = 'v2' WHERE id = %d", id))
      server.reset_log()
      local r = ok_run(dir)
      assert.same({}, T.requests(server.log(), { method = "POST" }), r.stdout .. r.stderr)
      assert.equal(4, #server.data().contacts, r.stdout .. r.stderr)
      assert.equal(before + 1, T.value(dir, "SELECT count(*) FROM contact"))
      assert.equal(104, T.remote_of(dir, "contacts", id))
      assert.equal("v2", X.remote(server, "contacts")[104].name, r.stdout .. r.stderr)
      assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_writes"))
    end)

    it("a create (" .. case.what .. ") then a newer local change: v2 on both sides, once", function()
      write_job(dir, server.url, { import = case.import })
      local before, id = create_crashed(dir)
      audit(dir)
      X.sql(dir, string.format("UPDATE contact SET name = 'v2' WHERE id = %d", id))
      server.reset_log()
      local r = ok_run(dir)
      local remote = server.data().contacts
      assert.equal(4, #remote, r.stdout .. r.stderr)
      assert.equal(before + 1, T.value(dir, "SELECT count(*) FROM contact"))
      assert.equal("v2", T.value(dir, "SELECT name FROM contact WHERE id = ?1", id), r.stdout .. r.stderr)
      assert.equal("v2", X.remote(server, "contacts")[104].name, r.stdout .. r.stderr)
      assert.same({ string.format("update %d v2", id) }, audited(dir))
      assert.same({}, T.conflicts(dir, "contacts"))
      server.reset_log()
      r = ok_run(dir)
      assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
      assert.equal("v2", X.remote(server, "contacts")[104].name)
    end)
  end
end)
