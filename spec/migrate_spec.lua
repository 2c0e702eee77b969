-- A store written by the previous entsync (schema 1:
-- spec/support/fixtures/store_v1.sql, for store_v1_job.lua and its data)
-- loaded with the sqlite3 shell and opened by this entsync: migrated to
-- schema 4 with nothing re-imported (every hash kept), the split's link
-- column filled, one id-map row per remote record, and the old outbox's
-- pending changes handed to the sync that exports them. Run again, it
-- changes nothing.

local cjson = require "cjson"
local helpers = require "helpers"
local T = require "trust_support"

local FIXTURES = helpers.root .. "/spec/support/fixtures/"

-- The job of the old store, its data beside it, and the store loaded by
-- the sqlite3 shell. The job's contact_sink exports on change here, so
-- `run` drains what the old store had pending for it.
local function prepare(dir)
  local job = helpers.read(FIXTURES .. "store_v1_job.lua")
  local drained = job:gsub('export = { resource = "sink.ndjson" }', 'export = { resource = "sink.ndjson", on_change = true }')
  assert(drained ~= job, "store_v1_job.lua has no contact_sink export to adjust")
  helpers.write(dir .. "/job.lua", drained)
  helpers.write(dir .. "/data/contacts.ndjson", helpers.read(FIXTURES .. "store_v1_contacts.ndjson"))
  helpers.write(dir .. "/data/tags.csv", helpers.read(FIXTURES .. "store_v1_tags.csv"))
  helpers.write(dir .. "/out/.keep", "")
  helpers.sqlite3(T.db(dir), helpers.read(FIXTURES .. "store_v1.sql"))
  assert.equal(1, T.value(dir, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
end

local function sink(dir)
  local out = {}
  for line in (helpers.read(dir .. "/out/sink.ndjson") or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

-- The user-visible state: entity rows and the id map, in a canonical text.
local function dump(dir)
  local lines = {}
  for _, sql in ipairs({
    "SELECT 'tag', id, name, updated FROM tag ORDER BY id",
    "SELECT 'contact', id, email, name, active, updated, tags FROM contact ORDER BY id",
    "SELECT 'profile', id, contact_id, company, city, phone FROM contact_profile ORDER BY id",
    "SELECT 'map', sync, local_id, remote_id, typeof(remote_id), changed, hash, gone_at FROM entsync_map "
      .. "ORDER BY sync, local_id",
    "SELECT 'failed', sync, direction, key, error FROM entsync_failed ORDER BY sync, direction, key",
  }) do
    for _, row in ipairs(helpers.sqlite3_peek(T.db(dir), sql)) do lines[#lines + 1] = row end
  end
  return table.concat(lines, "\n")
end

describe("a schema 1 store", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    prepare(dir)
  end)

  after_each(function() helpers.rmdir(dir) end)

  it("is migrated on open: schema 4, every contact and tag unchanged, the broken line still the one failure",
    function()
      local r = T.run(dir, { "run" })
      assert.equal(1, r.code, r.stdout .. r.stderr) -- line 21 of the contacts fails, as it did before
      assert.equal(4, T.value(dir, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
      local lines = T.lines(r.stdout)
      local tags, contacts = T.counts(lines.tags.import), T.counts(lines.contacts.import)
      assert.same({ 0, 0, 10, 0 }, { tags.created, tags.updated, tags.unchanged, tags.failed }, lines.tags.import)
      assert.same({ 0, 0, 20, 1 }, { contacts.created, contacts.updated, contacts.unchanged, contacts.failed },
        lines.contacts.import)
      local failed = T.query(dir, "SELECT sync, direction, key FROM entsync_failed")
      assert.same({ { sync = "contacts", direction = "import", key = "@contacts.ndjson:21" } }, failed)
      -- nothing was re-imported: the local edit of contact 3 is still there
      assert.equal("Changed Locally", T.value(dir, "SELECT name FROM contact WHERE id = 3"))
      -- the old tables are gone
      for _, name in ipairs({ "entsync_outbox", "entsync_mark", "entsync_idmap_v1" }) do
        assert.is_nil(T.value(dir, "SELECT name FROM sqlite_master WHERE name = ?1", name), name)
      end
    end)

  it("fills contact_profile.contact_id for all 20 and keeps one id-map row per remote record (20 + 10)", function()
    T.run(dir, { "run" })
    assert.equal(20, T.value(dir, "SELECT count(*) FROM contact_profile WHERE contact_id IS NOT NULL"))
    assert.equal(20, T.value(dir, "SELECT count(*) FROM contact_profile p JOIN entsync_map m "
      .. "ON m.sync = 'contacts' AND m.local_id = p.contact_id"))
    -- each profile is linked to the contact of its own remote record
    assert.equal(0, T.value(dir, "SELECT count(*) FROM contact_profile WHERE contact_id <> id"))
    -- (and contact_sink's one: contact 3, the old outbox's pending change, went out)
    assert.equal(30, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync IN ('contacts', 'tags')"))
    assert.equal(1, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'contact_sink'"))
    assert.equal(20, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'contacts'"))
    assert.equal(10, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'tags'"))
    -- the ids came back with the type of the remote's ids: the contacts' are
    -- JSON integers, the CSV's tags are text
    assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'contacts' "
      .. "AND typeof(remote_id) <> 'integer'"))
    assert.equal(19, T.value(dir, "SELECT count(*) FROM contact c JOIN contact_profile p ON p.contact_id = c.id"))
  end)

  it("hands the old outbox's pending changes to contact_sink: contact 3 goes out, contact 5's delete has no remote",
    function()
      local r = T.run(dir, { "run" })
      local lines = sink(dir)
      assert.equal(1, #lines, (helpers.read(dir .. "/out/sink.ndjson") or "(no sink file)") .. "\n" .. r.stdout
        .. r.stderr)
      assert.same({ "create", "Changed Locally", "alan.bernerslee3@example.org" },
        { lines[1].op, lines[1].record.name, lines[1].record.email })
      assert.equal(1, T.counts(T.lines(r.stdout).contact_sink.export).created, r.stdout)
      assert.is_not_nil(T.remote_of(dir, "contact_sink", 3))
    end)

  it("run again, changes nothing", function()
    local first = T.run(dir, { "run" })
    local before, sunk = dump(dir), helpers.read(dir .. "/out/sink.ndjson")
    local r = T.run(dir, { "run" })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    local lines = T.lines(r.stdout)
    assert.equal(10, T.counts(lines.tags.import).unchanged, r.stdout)
    assert.equal(20, T.counts(lines.contacts.import).unchanged, r.stdout)
    local s = T.counts(lines.contact_sink.export)
    assert.same({ 0, 0, 0 }, { s.created, s.updated, s.deleted }, r.stdout)
    assert.equal(before, dump(dir), first.stdout .. r.stdout)
    assert.equal(sunk, helpers.read(dir .. "/out/sink.ndjson"))
  end)
end)
