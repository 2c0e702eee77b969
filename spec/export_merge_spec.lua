-- Updates keep what the mapping does not carry: a PUT sends the mapped
-- fields merged over the remote's current record, so fields entsync never
-- mapped (top-level and nested) survive; a PATCH sends only what changed.
-- Fields the remote computes on every write (the fixture's updated_at) come
-- back into the local row, and the next import finds the record unchanged.

local cjson = require "cjson"
local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local RECORDS = '[{"id": 1, "email": "ann@example.com", "name": "Ann", "age": 31, "notes": "keep me", '
  .. '"meta": {"internal": {"score": 9, "flags": []}, "label": "L1", "extra": {}}, '
  .. '"updated_at": "2026-01-02T00:00:01Z"}, '
  .. '{"id": 2, "email": "bob@example.com", "name": "Bob", "age": 42, "notes": "me too", '
  .. '"meta": {"internal": {"score": 1, "flags": ["x"]}, "label": "B1"}, "updated_at": "2026-01-02T00:00:02Z"}]'

-- The job: contacts over the fixture; label is a nested path (meta.label),
-- remote_updated a field the remote computes (import only).
local function write_job(dir, url, method)
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text", age = "integer", label = "text", remote_updated = "text" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = %q, attempts = 2 }', url, method or "PUT"),
    'sync "contacts" { remote = api "api/contacts", entity = "contact",',
    '  mapping = { email = "email", name = "name", age = "age", label = "meta.label",',
    '    remote_updated = { "updated_at", export = false } },',
    '  import = { mode = "full", changed = "updated_at" }, export = { on_change = true } }',
  }, "\n") .. "\n")
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

describe("updates merged over the remote's record", function()
  local server, dir

  helpers.remote_for_each_test({}, function(remote, tmp)
    server, dir = remote, tmp
    T.load_remote(server, '{"contacts": ' .. RECORDS .. "}")
  end)

  local function ann()
    return T.local_of(dir, "contacts", 1)
  end

  it("PUT: fields the mapping does not carry survive, top-level and nested, with their types", function()
    write_job(dir, server.url, "PUT")
    ok_run(dir)
    X.sql(dir, string.format("UPDATE contact SET name = 'Ann B', label = 'L2' WHERE id = %d", ann()))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
    local puts = T.requests(server.log(), { method = "PUT" })
    assert.equal(1, #puts)
    -- the body is the remote's record with the mapped fields set
    assert.equal('"notes":"keep me"', T.member(puts[1].body, "notes"))
    assert.equal('"meta":{"extra":{},"internal":{"flags":[],"score":9},"label":"L2"}', T.member(puts[1].body, "meta"))
    assert.equal('"name":"Ann B"', T.member(puts[1].body, "name"))
    -- and the remote keeps them
    local now = T.remote_text(server, "contacts", 1)
    assert.equal('"notes":"keep me"', T.member(now, "notes"))
    assert.equal('"meta":{"extra":{},"internal":{"flags":[],"score":9},"label":"L2"}', T.member(now, "meta"))
    assert.equal('"name":"Ann B"', T.member(now, "name"))
    assert.equal('"age":31', T.member(now, "age"))
    -- the other record was not touched
    assert.equal(0, #T.requests(server.log(), { path = "/api/contacts/2", method = "PUT" }))
  end)

  it("PATCH: only the changed fields are in the body", function()
    write_job(dir, server.url, "PATCH")
    ok_run(dir)
    X.sql(dir, string.format("UPDATE contact SET name = 'Ann P' WHERE id = %d", ann()))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
    local patches = T.requests(server.log(), { method = "PATCH" })
    assert.equal(1, #patches, r.stdout .. r.stderr)
    assert.equal("/api/contacts/1", patches[1].path)
    assert.equal('{"name":"Ann P"}', T.canonical(patches[1].body))
    assert.equal(0, #T.requests(server.log(), { method = "PUT" }))
    local now = T.remote_text(server, "contacts", 1)
    assert.equal('"notes":"keep me"', T.member(now, "notes"))
    assert.equal('"meta":{"extra":{},"internal":{"flags":[],"score":9},"label":"L1"}', T.member(now, "meta"))
    assert.equal('"name":"Ann P"', T.member(now, "name"))
  end)

  it("PATCH: two changed fields, a nested one among them, and nothing else", function()
    write_job(dir, server.url, "PATCH")
    ok_run(dir)
    X.sql(dir, string.format("UPDATE contact SET age = 32, label = 'L3' WHERE id = %d", ann()))
    server.reset_log()
    ok_run(dir)
    local patches = T.requests(server.log(), { method = "PATCH" })
    assert.equal(1, #patches)
    assert.same({ "age", "meta" }, T.keys(patches[1].body))
    assert.equal('"age":32', T.member(patches[1].body, "age"))
    local meta = cjson.decode(patches[1].body).meta
    assert.equal("L3", meta.label)
    assert.is_nil(meta.extra)
  end)

  for _, method in ipairs({ "PUT", "PATCH" }) do
    it(method .. ": the field the remote computes comes back into the local row, and the next import finds the "
      .. "record unchanged", function()
        write_job(dir, server.url, method)
        ok_run(dir)
        local id = ann()
        assert.equal("2026-01-02T00:00:01Z", T.query(dir, "SELECT remote_updated FROM contact WHERE id = ?1", id)[1]
          .remote_updated)
        X.sql(dir, string.format("UPDATE contact SET name = 'Ann S' WHERE id = %d", id))
        server.reset_log()
        local r = ok_run(dir)
        assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
        local stamped = X.remote(server, "contacts")[1].updated_at
        assert.are_not.equal("2026-01-02T00:00:01Z", stamped)
        local row = T.query(dir, "SELECT * FROM contact WHERE id = ?1", id)[1]
        assert.equal(stamped, row.remote_updated)
        assert.equal("Ann S", row.name)
        -- writing it back is no change for any sync to send
        assert.same({}, X.outbox(dir))
        server.reset_log()
        r = ok_run(dir)
        local s = T.counts(T.lines(r.stdout).contacts.import)
        assert.same({ 0, 0, 2 }, { s.created, s.updated, s.unchanged }, r.stdout)
        assert.same({}, T.writes(server.log()))
        assert.equal(stamped, T.query(dir, "SELECT remote_updated FROM contact WHERE id = ?1", id)[1].remote_updated)
      end)
  end
end)
