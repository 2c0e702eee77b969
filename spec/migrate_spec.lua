-- A store written by the previous entsync (schema 1:
-- spec/support/fixtures/store_v1.sql, for store_v1_job.lua and its data)
-- loaded with the sqlite3 shell and opened by this entsync: migrated to
-- schema 2 with nothing re-imported (every hash kept), the split's link
-- column filled, one id-map row per remote record, and the old outbox's
-- pending changes handed to the sync that exports them. Run again, it
-- changes nothing.
--
-- A store of schema 2 (spec/support/fixtures/store_v2.sql: the same store
-- after a run of the entsync of schema 2, with a contact of another
-- program's whose local id is above 2^40) is migrated to schema 3, the id
-- map keyed by one integer: every id-map row kept as it was (ids, hashes,
-- versions), a re-import finds everything unchanged, and the id map still
-- finds each local id, the wide one too.

local cjson = require "cjson"
local helpers = require "helpers"
local T = require "trust_support"

local FIXTURES = helpers.root .. "/spec/support/fixtures/"

-- The job of the old store, its data beside it, and the store loaded by
-- the sqlite3 shell. The job's contact_sink exports on change here, so
-- `run` drains what the old store had pending for it.
local function prepare(dir, fixture)
  local job = helpers.read(FIXTURES .. "store_v1_job.lua")
  local drained = job:gsub('export = { resource = "sink.ndjson" }', 'export = { resource = "sink.ndjson", on_change = true }')
  assert(drained ~= job, "store_v1_job.lua has no contact_sink export to adjust")
  helpers.write(dir .. "/job.lua", drained)
  helpers.write(dir .. "/data/contacts.ndjson", helpers.read(FIXTURES .. "store_v1_contacts.ndjson"))
  helpers.write(dir .. "/data/tags.csv", helpers.read(FIXTURES .. "store_v1_tags.csv"))
  helpers.write(dir .. "/out/.keep", "")
  helpers.sqlite3(T.db(dir), helpers.read(FIXTURES .. (fixture or "store_v1.sql")))
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

-- Runs the job over the old store: migrated to schema 4, every tag and
-- contact found unchanged, line 21 of the contacts failing as it did
-- before. Returns the run and its summary lines.
local function run_migrated(dir)
  local r = T.run(dir, { "run" })
  assert.equal(1, r.code, r.stdout .. r.stderr)
  assert.equal(4, T.value(dir, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
  local lines = T.lines(r.stdout)
  local tags, contacts = T.counts(lines.tags.import), T.counts(lines.contacts.import)
  assert.same({ 0, 0, 10, 0 }, { tags.created, tags.updated, tags.unchanged, tags.failed }, lines.tags.import)
  assert.same({ 0, 0, 20, 1 }, { contacts.created, contacts.updated, contacts.unchanged, contacts.failed },
    lines.contacts.import)
  return r, lines
end

describe("a schema 1 store", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    prepare(dir)
    assert.equal(1, T.value(dir, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
  end)

  after_each(function() helpers.rmdir(dir) end)

  it("is migrated on open: schema 4 through 2 and 3, every contact and tag unchanged, the broken line still the one failure",
    function()
      run_migrated(dir)
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

-- Every id-map row with every column but schema 3's key and the pass that
-- saw it last (a full pass marks what it reads), in order.
local function id_map(dir)
  return T.query(dir, [[SELECT sync, local_id, remote_id, typeof(remote_id) AS type, changed, hash, raw_hash,
    version, synced_at, gone_at FROM entsync_idmap ORDER BY sync, local_id]])
end

local WIDE = 2199023255552 -- 2^41: a local id outside the key's 40 bits

describe("a schema 2 store", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    prepare(dir, "store_v2.sql")
    assert.equal(2, T.value(dir, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
  end)

  after_each(function() helpers.rmdir(dir) end)

  it("is migrated to schema 3 with every id-map row kept, and a re-import finds everything unchanged", function()
    local before, rows = id_map(dir), dump(dir)
    assert.equal(32, #before)
    local r, lines = run_migrated(dir)
    local sunk = T.counts(lines.contact_sink.export)
    assert.same({ 0, 0, 0 }, { sunk.created, sunk.updated, sunk.deleted }, r.stdout)
    assert.same(before, id_map(dir))
    assert.equal(rows, dump(dir))
    -- the versions came along
    assert.equal('"v3"', T.value(dir, "SELECT version FROM entsync_map WHERE sync = 'contact_sink' AND local_id = 3"))
    -- keys: the sync id above bit 40 and the local id below; the wide id a negative key of its own
    assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_idmap WHERE key >= 0 AND key <> (sync << 40) | local_id"))
    assert.equal(1, T.value(dir, "SELECT count(*) FROM entsync_idmap WHERE key < 0 AND local_id = ?1", WIDE))
    assert.is_not_nil(T.value(dir, "SELECT 1 FROM sqlite_master WHERE name = 'entsync_idmap_wide'"))
  end)

  it("finds the exported rows by their local ids after the migration: a change of each goes out as an update",
    function()
      T.run(dir, { "run" })
      helpers.sqlite3(T.db(dir), string.format(
        "UPDATE contact SET name = 'Wide Renamed' WHERE id = %d; UPDATE contact SET name = 'Three Renamed' WHERE id = 3",
        WIDE))
      local r = T.run(dir, { "run" })
      local sunk = T.counts(T.lines(r.stdout).contact_sink.export)
      assert.same({ 0, 2, 0 }, { sunk.created, sunk.updated, sunk.deleted }, r.stdout .. r.stderr)
      local out = {}
      for _, line in ipairs(sink(dir)) do out[line.id] = { line.op, line.record.name } end
      assert.same({ ["3"] = { "update", "Three Renamed" }, [tostring(WIDE)] = { "update", "Wide Renamed" } }, out)
      assert.equal(32, T.value(dir, "SELECT count(*) FROM entsync_idmap"))
      -- a new local id outside the key's bits (a negative one) gets a negative key of its own
      helpers.sqlite3(T.db(dir), "INSERT INTO contact (id, email, name) VALUES (-7, 'neg@example.org', 'Negative')")
      r = T.run(dir, { "run" })
      assert.equal(1, T.counts(T.lines(r.stdout).contact_sink.export).created, r.stdout .. r.stderr)
      assert.same({ { local_id = -7 }, { local_id = WIDE } },
        T.query(dir, "SELECT local_id FROM entsync_idmap WHERE key < 0 AND sync = 3 ORDER BY local_id"))
      assert.equal("-7", T.value(dir, "SELECT remote_id FROM entsync_map WHERE sync = 'contact_sink' AND local_id = -7"))
    end)
end)
