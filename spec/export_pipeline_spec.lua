-- Exports through the one record pipeline, proved with real processes: the
-- entsync-run binary, the fixture remote (its request log is what was
-- sent) and the sqlite3 shell as another program writing the store.
-- Mappings carry map.refs and an after_map hook, so the export, the echo
-- check and the conflict check all run the same callbacks an import runs.

local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local TAGS = {
  { id = 101, name = "customer", updated_at = "2026-01-01T00:00:01Z" },
  { id = 102, name = "partner", updated_at = "2026-01-01T00:00:02Z" },
  { id = 103, name = "vip", updated_at = "2026-01-01T00:00:03Z" },
}

local function contacts()
  return {
    { id = 11, email = "ann@example.com", name = "Ann", age = 31, tags = { 101, 102 },
      updated_at = "2026-01-02T00:00:01Z" },
    { id = 12, email = "bob@example.com", name = "Bob", age = 42, tags = { 103 }, updated_at = "2026-01-02T00:00:02Z" },
  }
end

-- The job: tags, and contacts referring to them (map.refs), with an
-- after_map that derives a field from the record. opts.conflict: the
-- export's conflict policy (Lua source; none given: the default);
-- opts.deletes; opts.name_field, age_field, tags_field: those fields'
-- mapping lines (Lua source, each ending with a comma).
local function write_job(dir, url, opts)
  opts = opts or {}
  local source = table.concat({
    'local map = require "entsync.map"',
    'entity "tag" { name = "text" }',
    'entity "contact" { email = "text", name = "text", age = "integer", tags = "json", label = "text" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = "PUT", attempts = 2 }', url),
    'sync "tags" { remote = api "api/tags", entity = "tag", mapping = { name = "name" },',
    '  import = { mode = "full", changed = "updated_at" } }',
    'sync "contacts" { remote = api "api/contacts", entity = "contact", depends_on = { "tags" },',
    "  mapping = {",
    '    email = "email",',
    opts.name_field or '    name = "name",',
    opts.age_field or '    age = "age",',
    opts.tags_field or '    tags = { "tags", import = map.refs "tags" },',
    "  },",
    "  after_map = function(entities, record, ctx)",
    '    entities.contact.label = string.upper(tostring(record.name)) .. "/" .. ctx.sync',
    "    return entities",
    "  end,",
    '  import = { mode = "full", changed = "updated_at" },',
    string.format("  export = { on_change = true,%s deletes = %q } }",
      opts.conflict and (" conflict = " .. opts.conflict .. ",") or "", opts.deletes or "ignore"),
  }, "\n") .. "\n"
  helpers.write(dir .. "/job.lua", source)
  return source
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

local function row(dir, local_id)
  return T.query(dir, "SELECT * FROM contact WHERE id = ?1", local_id)[1]
end

describe("export pipeline", function()
  local server, dir

  helpers.remote_for_each_test({ tags = TAGS, contacts = contacts() }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  describe("a local edit and a remote edit of the same record", function()
    it("remote_wins (the default): the conflict is recorded, the remote's edit is kept locally, nothing is PUT",
      function()
        write_job(dir, server.url)
        ok_run(dir)
        local ann = T.local_of(dir, "contacts", 11)
        -- the references were stored as local ids
        local stored = {}
        for i, id in ipairs(require("cjson").decode(row(dir, ann).tags)) do stored[i] = T.remote_of(dir, "tags", id) end
        assert.same({ 101, 102 }, stored)
        X.sql(dir, string.format("UPDATE contact SET name = 'Local Ann' WHERE id = %d", ann))
        X.remote_put(server, "contacts", 11, { email = "ann@example.com", name = "Remote Ann", age = 31,
          tags = { 101, 102 } })
        server.reset_log()
        local r = ok_run(dir)
        -- settled and recorded
        local recorded = T.conflicts(dir, "contacts")
        assert.equal(1, #recorded, r.stdout .. r.stderr)
        assert.same({ ann, "remote_wins", "remote" }, { recorded[1].local_id, recorded[1].policy, recorded[1].winner })
        assert.is_not_nil(recorded[1].remote_hash)
        assert.matches("conflict", r.stdout .. r.stderr)
        -- the remote's edit is the local row now, after_map included
        local now = row(dir, ann)
        assert.equal("Remote Ann", now.name)
        assert.equal("REMOTE ANN/contacts", now.label)
        -- nothing was written to the remote
        assert.same({}, T.writes(server.log()))
        assert.equal("Remote Ann", X.remote(server, "contacts")[11].name)
        -- and the next run has nothing to do
        server.reset_log()
        r = ok_run(dir)
        assert.same({}, T.writes(server.log()))
        assert.equal(1, #T.conflicts(dir, "contacts"), r.stdout .. r.stderr)
      end)

    it("local_wins: the local edit is PUT, the remote's edit is gone because the policy said so, and recorded",
      function()
        write_job(dir, server.url, { conflict = '"local_wins"' })
        ok_run(dir)
        local ann = T.local_of(dir, "contacts", 11)
        X.sql(dir, string.format("UPDATE contact SET name = 'Local Ann' WHERE id = %d", ann))
        X.remote_put(server, "contacts", 11, { email = "ann@example.com", name = "Remote Ann", age = 77,
          tags = { 101, 102 } })
        server.reset_log()
        local r = ok_run(dir)
        local recorded = T.conflicts(dir, "contacts")
        assert.equal(1, #recorded, r.stdout .. r.stderr)
        assert.same({ ann, "local_wins", "local" }, { recorded[1].local_id, recorded[1].policy, recorded[1].winner })
        -- exactly one write: the PUT of the local version
        local writes = T.writes(server.log())
        assert.equal(1, #writes, r.stdout .. r.stderr)
        assert.equal("PUT", writes[1].method)
        assert.equal("/api/contacts/11", writes[1].path)
        local sent = require("cjson").decode(writes[1].body)
        assert.equal("Local Ann", sent.name)
        assert.equal(31, sent.age) -- the local value of a mapped field replaces the remote's
        assert.same({ 101, 102 }, sent.tags)
        assert.equal("Local Ann", X.remote(server, "contacts")[11].name)
        assert.equal(31, X.remote(server, "contacts")[11].age)
        -- the local row kept its edit
        assert.equal("Local Ann", row(dir, ann).name)
        assert.equal(31, row(dir, ann).age)
        -- the id map holds the hash of what the remote now has
        assert.is_not_nil(T.value(dir, "SELECT hash FROM entsync_map WHERE sync = 'contacts' AND local_id = ?1", ann))
        -- and the next run neither writes nor meets the conflict again
        server.reset_log()
        r = ok_run(dir)
        assert.same({}, T.writes(server.log()))
        assert.equal(1, #T.conflicts(dir, "contacts"))
        assert.equal(2, T.counts(T.lines(r.stdout).contacts.import).unchanged, r.stdout)
      end)

    it("an export that finds the remote changed since the last sync settles it by the policy (export contacts ID)",
      function()
        write_job(dir, server.url, { conflict = '"local_wins"' })
        ok_run(dir)
        local ann = T.local_of(dir, "contacts", 11)
        X.sql(dir, string.format("UPDATE contact SET name = 'Local Ann' WHERE id = %d", ann))
        X.remote_put(server, "contacts", 11, { email = "ann@example.com", name = "Remote Ann", age = 31,
          tags = { 101, 102 } })
        server.reset_log()
        local r = ok_run(dir, "export", "contacts", tostring(ann))
        local recorded = T.conflicts(dir, "contacts")
        assert.equal(1, #recorded, r.stdout .. r.stderr)
        assert.same({ "export", ann, "local" }, { recorded[1].direction, recorded[1].local_id, recorded[1].winner })
        assert.matches("1 conflicts", r.stdout)
        -- the GET came first, then the PUT of the local version
        local log = T.requests(server.log(), { under = "/api/contacts/11" })
        assert.same({ "GET", "PUT" }, { log[1].method, log[2].method })
        assert.equal("Local Ann", X.remote(server, "contacts")[11].name)
      end)

    it("every export leaves the hash of what was sent in the id map, creates and updates", function()
      write_job(dir, server.url)
      ok_run(dir)
      local ann = T.local_of(dir, "contacts", 11)
      X.sql(dir, string.format("UPDATE contact SET age = 32 WHERE id = %d", ann))
      local tag = T.local_of(dir, "tags", 103)
      X.sql(dir, string.format("INSERT INTO contact (email, name, age, tags) VALUES ('cy@example.com', 'Cy', 5, "
        .. "'[%d]')", tag))
      local cy = T.value(dir, "SELECT id FROM contact WHERE email = 'cy@example.com'")
      server.reset_log()
      local r = ok_run(dir)
      local s = T.counts(T.lines(r.stdout).contacts.export)
      assert.same({ 1, 1, 0 }, { s.created, s.updated, s.failed }, r.stdout .. r.stderr)
      assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_map WHERE hash IS NULL"))
      assert.is_not_nil(T.remote_of(dir, "contacts", cy))
      -- the created record carried its reference as the remote id
      local post = T.requests(server.log(), { method = "POST" })[1]
      assert.same({ 103 }, require("cjson").decode(post.body).tags)
    end)
  end)

  describe("the echo of our own write", function()
    it("comes back unchanged on the next import, refs and after_map included, and nothing goes out again", function()
      write_job(dir, server.url)
      ok_run(dir)
      local ann = T.local_of(dir, "contacts", 11)
      local partner = T.local_of(dir, "tags", 102)
      X.sql(dir, string.format("UPDATE contact SET name = 'Ann B', tags = '[%d]' WHERE id = %d", partner, ann))
      server.reset_log()
      local r = ok_run(dir)
      assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
      local puts = T.requests(server.log(), { method = "PUT" })
      assert.equal(1, #puts)
      local sent = require("cjson").decode(puts[1].body)
      assert.same({ "Ann B", { 102 } }, { sent.name, sent.tags })
      -- the fixture stamped the record (updated_at): the echo is ours
      server.reset_log()
      r = ok_run(dir)
      local lines = T.lines(r.stdout)
      local s = T.counts(lines.contacts.import)
      assert.same({ 0, 0, 2 }, { s.created, s.updated, s.unchanged }, lines.contacts.import)
      assert.same({ 0, 0 }, { T.counts(lines.contacts.export).updated, T.counts(lines.contacts.export).created })
      assert.same({}, T.writes(server.log()))
      assert.equal(0, #T.conflicts(dir, "contacts"))
      assert.same({}, X.outbox(dir))
      assert.equal("Ann B", row(dir, ann).name)
    end)

    it("leaves the local row as an import of the remote's answer gives it, after_map's fields included", function()
      write_job(dir, server.url)
      ok_run(dir)
      local ann = T.local_of(dir, "contacts", 11)
      X.sql(dir, string.format("UPDATE contact SET name = 'Ann B' WHERE id = %d", ann))
      local r = ok_run(dir)
      assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
      -- the id map says the local rows are what the remote's copy maps to;
      -- after_map derives label from the record: the answer gives ANN B
      local now = row(dir, ann)
      assert.equal("Ann B", now.name)
      assert.equal("ANN B/contacts", now.label)
      -- a refresh (an import of that very record) changes nothing
      r = ok_run(dir, "refresh", "contacts", tostring(ann))
      assert.equal(1, T.counts(T.lines(r.stdout).contacts.import).unchanged, r.stdout)
      assert.equal("ANN B/contacts", row(dir, ann).label)
    end)
  end)

  describe("a new local row deleted before it was ever exported", function()
    it("reports no conflict and sends nothing", function()
      write_job(dir, server.url, { deletes = "delete" })
      ok_run(dir)
      X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('ghost@example.com', 'Ghost', 1)")
      X.sql(dir, "DELETE FROM contact WHERE email = 'ghost@example.com'")
      server.reset_log()
      local r = ok_run(dir)
      assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
      assert.equal(0, #T.conflicts(dir, "contacts"))
      local s = T.counts(T.lines(r.stdout).contacts.export)
      assert.same({ 0, 0, 0, 0 }, { s.created, s.updated, s.deleted, s.failed }, r.stdout)
      assert.is_nil(r.stdout:find("conflict", 1, true))
      assert.is_nil(r.stderr:find("conflict", 1, true))
      assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_failed"))
      assert.same({}, X.outbox(dir))
    end)
  end)

  describe("the callback context in exports", function()
    it("ctx:log names the sync and the entity; ctx:ref turns a local id into the remote id", function()
      write_job(dir, server.url, {
        name_field = '    name = { "name", export = function(v, out, ctx) ctx:log("x %s", 1); '
          .. 'ctx:log({ direction = ctx.direction }); return v end },',
        tags_field = '    tags = { "tags", import = map.refs "tags", export = function(v, out, ctx) '
          .. 'local ids = {} for i, id in ipairs(v) do ids[i] = ctx:ref("tags", id) end '
          .. 'ctx:log("refs %s", table.concat(ids, ",")) return ids end },',
      })
      ok_run(dir)
      local ann = T.local_of(dir, "contacts", 11)
      local vip = T.local_of(dir, "tags", 103)
      X.sql(dir, string.format("UPDATE contact SET name = 'Ann C', tags = '[%d]' WHERE id = %d", vip, ann))
      server.reset_log()
      local r = ok_run(dir)
      assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
      -- a line naming the sync and the entity (its remote id), formatted
      local line
      for l in r.stderr:gmatch("[^\n]+") do
        if l:find(": x 1", 1, true) then line = l end
      end
      assert.is_not_nil(line, r.stderr)
      assert.matches("contacts", line)
      assert.truthy(line:find("contacts 11: x 1", 1, true) or line:find(string.format("contacts local %d: x 1", ann),
        1, true), line)
      assert.is_nil(r.stderr:find("table: 0x", 1, true), r.stderr)
      assert.truthy(r.stderr:find('{"direction":"export"}', 1, true), r.stderr)
      assert.truthy(r.stderr:find("refs 103", 1, true), r.stderr)
      -- ctx:ref gave the remote id, with its type
      local put = T.requests(server.log(), { method = "PUT" })[1]
      assert.equal('"tags":[103]', T.member(put.body, "tags"))
    end)
  end)

  describe("a callback that raises during an export's check", function()
    local AGE = '    age = { "age", import = function(v) if v == -1 then error("age -1 is not an age") end return v end },'

    local function prepare(opts)
      local source = write_job(dir, server.url, opts or { age_field = AGE })
      ok_run(dir)
      local ann = T.local_of(dir, "contacts", 11)
      X.sql(dir, string.format("UPDATE contact SET name = 'Local Ann' WHERE id = %d", ann))
      -- the remote's copy is one the import callback refuses
      X.remote_put(server, "contacts", 11, { email = "ann@example.com", name = "Ann", age = -1, tags = { 101 } })
      server.reset_log()
      return ann, T.line_of(source, 'age = { "age"')
    end

    it("export SYNC ID: fails the entity visibly (exit 1, the sync, the local id, the mapping line) and sends nothing",
      function()
        local ann, line = prepare()
        local r = T.run(dir, { "export", "contacts", tostring(ann) })
        assert.equal(1, r.code, r.stdout .. r.stderr)
        assert.truthy(r.stderr:find("contacts", 1, true), r.stderr)
        assert.truthy(r.stderr:find("local contact " .. ann, 1, true) or r.stderr:find("local " .. ann, 1, true),
          r.stderr)
        assert.truthy(r.stderr:find("job.lua:" .. line, 1, true), "no job.lua:" .. line .. " in: " .. r.stderr)
        assert.truthy(r.stderr:find("age -1 is not an age", 1, true), r.stderr)
        assert.is_nil(r.stderr:find("traceback", 1, true))
        assert.same({}, T.writes(server.log()))
        local failure = T.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'contacts' AND direction = 'export'")
        assert.equal(1, #failure)
        assert.equal(ann, failure[1].local_id)
        assert.truthy(failure[1].error:find("job.lua:" .. line, 1, true), failure[1].error)
        -- the local edit is kept
        assert.equal("Local Ann", row(dir, ann).name)
      end)

    it("in a drain (run): the entity fails on both sides, named, and nothing is sent", function()
      local ann, line = prepare()
      local r = T.run(dir, {})
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.same({}, T.writes(server.log()), r.stderr)
      local failed = T.query(dir, "SELECT direction, key, local_id, error FROM entsync_failed WHERE sync = 'contacts' "
        .. "ORDER BY direction")
      local export_failure
      for _, f in ipairs(failed) do
        if f.direction == "export" then export_failure = f end
      end
      assert.is_not_nil(export_failure, r.stderr)
      assert.same({ tostring(ann), ann }, { export_failure.key, export_failure.local_id })
      assert.truthy(export_failure.error:find("job.lua:" .. line, 1, true), export_failure.error)
      assert.truthy(r.stderr:find("local contact " .. ann, 1, true), r.stderr)
      assert.equal("Local Ann", row(dir, ann).name)
    end)
  end)
end)
