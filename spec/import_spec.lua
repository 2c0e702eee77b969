-- The import engine through the real entsync-run binary: job files and
-- NDJSON data in a temp dir, outcomes read from the summary line on stdout
-- and from the store.

local cjson = require "cjson"
local helpers = require "helpers"
local S = require "import_support"

local contact, summary = S.contact, S.summary

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  helpers.rmdir(dir)
end)

local function five()
  local records = {}
  for i = 1, 5 do records[i] = contact(i) end
  return records
end

local function dated(id, day, fields)
  local f = { updated_at = string.format("2024-01-%02d", day) }
  for k, v in pairs(fields or {}) do f[k] = v end
  return contact(id, f)
end

local function last_run(d)
  return S.query(d, "SELECT * FROM entsync_history ORDER BY id DESC LIMIT 1")[1]
end

describe("run: outcomes", function()
  it("creates every record and prints the summary line on stdout", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 5 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted in %d+%.%d%ds\n$",
      r.stdout)
    assert.same(S.expected(five()), S.contacts(dir))
    assert.equal(5, S.count(dir, "entsync_map", "sync = 'contacts'"))
    local run = last_run(dir)
    assert.same({ "run", "full", "ok", 5, 0, 0, 0, 0, 0 }, { run.operation, run.mode, run.status, run.created,
      run.updated, run.unchanged, run.stale, run.failed, run.deleted })
  end)

  it("run without a command is run; run with no sync name runs every sync", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = helpers.run(dir, { "job.lua", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(5, summary(r.stdout).created)
  end)

  it("updates a changed record in place and leaves the others unchanged", function()
    S.job(dir, {})
    local records = five()
    S.data(dir, records)
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local before = S.query(dir, "SELECT local_id, remote_id, synced_at FROM entsync_map ORDER BY remote_id")
    records[3] = contact(3, { name = "Renamed", age = 99 })
    S.data(dir, records)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.same({ 0, 1, 4, 0, 0, 0 }, { c.created, c.updated, c.unchanged, c.stale, c.failed, c.deleted })
    assert.same(S.expected(records), S.contacts(dir))
    local after = S.query(dir, "SELECT local_id, remote_id, synced_at FROM entsync_map ORDER BY remote_id")
    for i, row in ipairs(after) do
      assert.equal(before[i].local_id, row.local_id)
      assert.equal(before[i].remote_id, row.remote_id)
      if row.remote_id == 3 then
        assert.is_true(row.synced_at > before[i].synced_at)
      else
        assert.equal(before[i].synced_at, row.synced_at)
      end
    end
    local run = last_run(dir)
    assert.same({ 0, 1, 4 }, { run.created, run.updated, run.unchanged })
  end)

  it("an unchanged record writes nothing: no row, no id map write", function()
    S.job(dir, {})
    S.data(dir, five())
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local rows_before = S.contacts(dir)
    local map_before = S.query(dir, "SELECT * FROM entsync_idmap ORDER BY remote_id")
    S.audit(dir)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 0 created, 0 updated, 5 unchanged, 0 stale, 0 failed, 0 deleted in ", r.stdout)
    assert.same({}, S.audited(dir))
    assert.same(rows_before, S.contacts(dir))
    assert.same(map_before, S.query(dir, "SELECT * FROM entsync_idmap ORDER BY remote_id"))
    assert.equal(5, last_run(dir).unchanged)
  end)

  it("a record whose changed mark is older than the stored one is stale and writes nothing", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 5), dated(2, 5) })
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local map_before = S.query(dir, "SELECT * FROM entsync_idmap ORDER BY remote_id")
    S.audit(dir)
    -- record 1 comes again, older and different: a late, out-of-date copy.
    S.data(dir, { dated(1, 3, { name = "Old name" }), dated(2, 5) })
    local r = S.run(dir, "import", "contacts", "1")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 0 created, 0 updated, 0 unchanged, 1 stale, 0 failed, 0 deleted in ", r.stdout)
    assert.same({}, S.audited(dir))
    assert.equal("c1@example.com|Contact 1|21", S.contacts(dir)[1])
    assert.same(map_before, S.query(dir, "SELECT * FROM entsync_idmap ORDER BY remote_id"))
    assert.equal(1, last_run(dir).stale)
  end)

  it("a stale record in a full run is counted stale and writes nothing", function()
    S.job(dir, { changed = "updated_at" })
    S.data(dir, { dated(1, 5), dated(2, 5) })
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.audit(dir)
    S.data(dir, { dated(1, 4, { email = "old@example.com" }), dated(2, 5) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.same({ 0, 0, 1, 1, 0 }, { c.created, c.updated, c.unchanged, c.stale, c.failed })
    assert.same({}, S.audited(dir))
    assert.equal("c1@example.com|Contact 1|21", S.contacts(dir)[1])
  end)
end)

describe("run: a remote id met twice in a first import", function()
  for _, batch in ipairs({ 10, 2 }) do
    it(string.format("keeps one entity, the later version (batch of %d)", batch), function()
      S.job(dir, { mode = "full", batch = batch })
      local records = { contact(1), contact(2), contact(1, { name = "Later" }), contact(3), contact(2) }
      S.data(dir, records)
      local r = S.run(dir, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      local c = summary(r.stdout)
      assert.same({ 3, 1, 1, 0 }, { c.created, c.updated, c.unchanged, c.failed })
      assert.same(S.expected({ contact(1, { name = "Later" }), contact(2), contact(3) }), S.contacts(dir))
      assert.equal(3, S.count(dir, "entsync_map", "sync = 'contacts'"))
      assert.equal(3, S.count(dir, "contact", "1"))
    end)
  end

  it("an input that repeats ids (a change log) is written again at most once", function()
    local calls = dir .. "/calls.log"
    S.job(dir, { mode = "full", batch = 2, mapping = string.format([[{ email = "email", age = "age",
      name = { "name", import = function(value)
        local f = assert(io.open(%q, "a")); f:write(".\n"); f:close(); return value
      end } }]], calls) })
    local records = { contact(1), contact(2), contact(1, { name = "B" }), contact(3), contact(2, { name = "C" }),
      contact(4), contact(3, { name = "D" }) }
    S.data(dir, records)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.same({ 4, 3, 0 }, { c.created, c.updated, c.failed })
    local n = 0
    for _ in io.lines(calls) do n = n + 1 end
    -- the batch that meets the first repeat is mapped again; later batches look ids up
    assert.is_true(n <= #records + 2, n .. " calls")
  end)
end)

describe("run: failures", function()
  it("stores a failed record with its error, remote id and payload; the run goes on and exits 1", function()
    S.job(dir, {})
    S.data(dir, {
      contact(1),
      contact(2, { age = "not a number" }),
      '{"id": 3, "email": "broken',
      contact(4),
      { email = "noid@example.com", name = "No Id", age = 40 },
      contact(5),
    })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(1, r.code, r.stderr)
    assert.matches("^contacts: 3 created, 0 updated, 0 unchanged, 0 stale, 3 failed, 0 deleted in ", r.stdout)
    assert.same({ [1] = "c1@example.com|Contact 1|21", [4] = "c4@example.com|Contact 4|24",
      [5] = "c5@example.com|Contact 5|25" }, S.contacts(dir))

    local failures = {}
    for _, row in ipairs(S.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'contacts' AND direction = 'import'")) do
      failures[row.key] = row
    end
    local bad_type = failures["2"]
    assert.is_not_nil(bad_type)
    assert.equal(2, bad_type.remote_id)
    assert.matches("age", bad_type.error)
    assert.matches("expected integer", bad_type.error)
    assert.equal(1, bad_type.attempts)
    local payload = cjson.decode(bad_type.payload)
    assert.equal("not a number", payload.age)
    assert.equal("c2@example.com", payload.email)

    local malformed = failures["@contacts.ndjson:3"]
    assert.is_not_nil(malformed, "the malformed line is kept under its place in the file")
    assert.matches("malformed JSON", malformed.error)

    local no_id
    for key, row in pairs(failures) do
      if row.error:match("no usable id") then no_id = row; assert.matches("^@", key) end
    end
    assert.is_not_nil(no_id, "the record without an id is a failure")
    assert.equal("noid@example.com", cjson.decode(no_id.payload).email)

    -- each failure is reported on stderr with its sync and entity
    assert.matches("contacts[^\n]*2[^\n]*field age", r.stderr)
    assert.matches("contacts[^\n]*@contacts.ndjson:3[^\n]*malformed JSON", r.stderr)
    local run = last_run(dir)
    assert.same({ "failed", 3, 3 }, { run.status, run.created, run.failed })
  end)

  it("keeps a separate failure for each record without an id, across runs", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), { email = "first@example.com", name = "First", age = 1, updated_at = "2024-01-02" } })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    S.data(dir, { dated(1, 1), { email = "first@example.com", name = "First", age = 1, updated_at = "2024-01-02" },
      { email = "second@example.com", name = "Second", age = 2, updated_at = "2024-01-03" } })
    assert.equal(1, S.run(dir, "run", "--no-progress").code)
    local emails = {}
    for _, row in ipairs(S.query(dir, "SELECT payload FROM entsync_failed WHERE sync = 'contacts' ORDER BY payload")) do
      emails[#emails + 1] = cjson.decode(row.payload).email
    end
    table.sort(emails)
    -- two different records failed: neither payload may be lost
    assert.same({ "first@example.com", "second@example.com" }, emails)
  end)
end)

describe("run SYNC", function()
  local function two_syncs()
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text", name = "text", age = "integer" }
entity "tag" { label = "text" }
local files = provider "ndjson" { dir = "data" }
sync "tags" { remote = files "tags.ndjson", entity = "tag", mapping = { label = "label" } }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", depends_on = { "tags" },
  mapping = { email = "email", name = "name", age = "age" } }
sync "others" { remote = files "others.ndjson", entity = "contact",
  mapping = { email = "email", name = "name", age = "age" } }
]])
    S.data(dir, five())
    S.data(dir, { contact(101), contact(102) }, "others.ndjson")
    S.data(dir, { { id = "a", label = "A" }, { id = "b", label = "B" } }, "tags.ndjson")
  end

  it("runs the named sync and what it depends on, in dependency order, and nothing else", function()
    two_syncs()
    local r = S.run(dir, "run", "contacts", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line:match("^(%w+):") end
    assert.same({ "tags", "contacts" }, lines)
    assert.equal(2, summary(r.stdout, "tags").created)
    assert.equal(5, summary(r.stdout, "contacts").created)
    assert.equal(0, S.count(dir, "entsync_map", "sync = 'others'"))
    local r2 = S.run(dir, "run", "--no-progress")
    assert.equal(0, r2.code, r2.stderr)
    assert.equal(2, summary(r2.stdout, "others").created)
    assert.equal(5, summary(r2.stdout, "contacts").unchanged)
  end)

  it("an unknown sync name is a usage error (exit 2) and runs nothing", function()
    two_syncs()
    local r = S.run(dir, "run", "nosuch", "--no-progress")
    assert.equal(2, r.code)
    assert.matches("nosuch", r.stderr)
    assert.equal("", r.stdout)
  end)
end)

describe("import SYNC REMOTE_ID", function()
  it("imports one remote entity, logged as an import", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "import", "contacts", "3")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 1 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted in ", r.stdout)
    assert.same({ [3] = "c3@example.com|Contact 3|23" }, S.contacts(dir))
    local run = last_run(dir)
    assert.same({ "import", "ok", 1 }, { run.operation, run.status, run.created })
    local again = S.run(dir, "import", "contacts", "3")
    assert.equal(1, summary(again.stdout).unchanged)
  end)

  it("an id the remote does not have is a failure stored with the id; exit 1", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "import", "contacts", "77")
    assert.equal(1, r.code)
    assert.equal(1, summary(r.stdout).failed)
    local failure = S.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'contacts' AND direction = 'import' AND key = '77'")[1]
    assert.is_not_nil(failure)
    assert.matches("no such entity", failure.error)
    assert.equal(0, S.count(dir, "contact"))
  end)
end)

describe("refresh", function()
  it("refresh SYNC LOCAL_ID re-reads that entity from its remote", function()
    S.job(dir, {})
    local records = five()
    S.data(dir, records)
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    records[2] = contact(2, { name = "Two, refreshed" })
    records[4] = contact(4, { name = "Four, changed too" })
    S.data(dir, records)
    local local_id = S.value(dir, "SELECT local_id FROM entsync_map WHERE remote_id = 2")
    assert.is_not_nil(local_id)
    local r = S.run(dir, "refresh", "contacts", tostring(local_id))
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 0 created, 1 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted in ", r.stdout)
    local now = S.contacts(dir)
    assert.equal("c2@example.com|Two, refreshed|22", now[2])
    assert.equal("c4@example.com|Contact 4|24", now[4], "only the named entity is refreshed")
    assert.equal("refresh", last_run(dir).operation)
  end)

  it("refresh of a local id with no remote in the id map is a usage error", function()
    S.job(dir, {})
    S.data(dir, five())
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local r = S.run(dir, "refresh", "contacts", "999")
    assert.equal(2, r.code)
    assert.matches("999", r.stderr)
  end)

  it("refresh SYNC --all re-reads every entity the sync imported", function()
    S.job(dir, {})
    local records = five()
    S.data(dir, records)
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    records[1] = contact(1, { age = 70 })
    records[5] = contact(5, { age = 75 })
    S.data(dir, records)
    local r = S.run(dir, "refresh", "contacts", "--all")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 0 created, 2 updated, 3 unchanged, 0 stale, 0 failed, 0 deleted in ", r.stdout)
    assert.same(S.expected(records), S.contacts(dir))
  end)
end)

describe("full mode deletes", function()
  local function prepare(deletes)
    S.job(dir, { deletes = deletes })
    S.data(dir, five())
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.data(dir, { contact(1), contact(2), contact(4), contact(5) })
    local local_id = S.value(dir, "SELECT local_id FROM entsync_map WHERE remote_id = 3")
    assert.is_not_nil(local_id)
    return local_id
  end

  it("keep: a record gone from the remote stays, nothing is deleted", function()
    prepare("keep")
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, summary(r.stdout).deleted)
    assert.same(S.expected(five()), S.contacts(dir))
    assert.equal(0, S.count(dir, "entsync_map", "gone_at IS NOT NULL"))
  end)

  it("delete: the local row and its id map rows are removed after the pass", function()
    local local_id = prepare("delete")
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 0 created, 0 updated, 4 unchanged, 0 stale, 0 failed, 1 deleted in ", r.stdout)
    assert.equal(0, S.count(dir, "contact", "id = " .. local_id))
    assert.equal(0, S.count(dir, "entsync_map", "CAST(remote_id AS TEXT) = '3'"))
    assert.equal(4, S.count(dir, "contact"))
    assert.equal(1, last_run(dir).deleted)
  end)

  it("flag: the id map row gets gone_at, the local row stays; coming back clears it", function()
    local local_id = prepare("flag")
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, summary(r.stdout).deleted)
    assert.equal(5, S.count(dir, "contact"))
    local gone = S.query(dir, "SELECT remote_id, gone_at FROM entsync_map WHERE gone_at IS NOT NULL")
    assert.equal(1, #gone)
    assert.equal(3, gone[1].remote_id)
    assert.is_number(gone[1].gone_at)
    -- a second pass does not count it again
    local again = S.run(dir, "run", "--no-progress")
    assert.equal(0, summary(again.stdout).deleted)
    S.data(dir, five())
    local back = S.run(dir, "run", "--no-progress")
    assert.equal(0, back.code, back.stderr)
    assert.equal(0, S.count(dir, "entsync_map", "gone_at IS NOT NULL"))
    assert.equal(local_id, S.value(dir, "SELECT local_id FROM entsync_map WHERE remote_id = 3"))
  end)

  it("deletes only after a complete pass, even when the pass spans limited runs", function()
    S.job(dir, { deletes = "delete", limit = 2, batch = 1 })
    S.data(dir, five())
    for _ = 1, 6 do
      local r = S.run(dir, "run", "--no-progress")
      if not r.stdout:match("limit reached") then break end
    end
    assert.equal(5, S.count(dir, "contact"))
    S.data(dir, { contact(1), contact(2), contact(4), contact(5) })
    local deleted_per_run, runs = {}, 0
    repeat
      local r = S.run(dir, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      runs = runs + 1
      deleted_per_run[runs] = summary(r.stdout).deleted
      if r.stdout:match("limit reached") then assert.equal(5, S.count(dir, "contact")) end
    until not r.stdout:match("limit reached") or runs > 6
    assert.equal(0, deleted_per_run[1])
    assert.equal(1, deleted_per_run[runs])
    assert.equal(4, S.count(dir, "contact"))
  end)

  it("a stale record is still on the remote: it is not deleted", function()
    S.job(dir, { deletes = "delete", changed = "updated_at" })
    S.data(dir, { dated(1, 5), dated(2, 5), dated(3, 5) })
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.data(dir, { dated(1, 5), dated(2, 1, { name = "older copy" }), dated(3, 5) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.equal(1, c.stale)
    assert.equal(0, c.deleted)
    assert.equal("c2@example.com|Contact 2|22", S.contacts(dir)[2])
  end)

  it("a record that fails to map is still on the remote: its stored entity is not deleted", function()
    S.job(dir, { deletes = "delete" })
    S.data(dir, five())
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local records = five()
    records[2] = contact(2, { age = "twenty-two" })
    S.data(dir, records)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(1, r.code)
    local c = summary(r.stdout)
    assert.equal(1, c.failed)
    assert.equal(0, c.deleted)
    assert.equal("c2@example.com|Contact 2|22", S.contacts(dir)[2])
  end)

  it("a single import during an open pass does not make its entity look gone", function()
    S.job(dir, { deletes = "delete", limit = 2, batch = 2 })
    S.data(dir, { contact(1), contact(2), contact(3), contact(4) })
    for _ = 1, 6 do
      local r = S.run(dir, "run", "--no-progress")
      if not r.stdout:match("limit reached") then break end
    end
    assert.equal(4, S.count(dir, "contact"))
    -- open a new pass: it sees 1 and 2
    assert.matches("limit reached", S.run(dir, "run", "--no-progress").stdout)
    assert.equal(0, S.run(dir, "import", "contacts", "1").code)
    for _ = 1, 6 do
      local r = S.run(dir, "run", "--no-progress")
      if not r.stdout:match("limit reached") then break end
    end
    assert.same(S.expected({ contact(1), contact(2), contact(3), contact(4) }), S.contacts(dir))
  end)
end)

describe("incremental mode", function()
  it("imports only records after the stored cursor (changed mark, remote id)", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    local records = { dated(1, 1), dated(2, 2), dated(3, 3) }
    S.data(dir, records)
    local r1 = S.run(dir, "run", "--no-progress")
    assert.equal(0, r1.code, r1.stderr)
    assert.equal(3, summary(r1.stdout).created)
    local state = S.query(dir, [[SELECT t.cursor_mark, t.cursor_id FROM entsync_state t
      JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts']])[1]
    assert.same({ "2024-01-03", "3" }, { state.cursor_mark, tostring(state.cursor_id) })
    -- an edit that did not move updated_at is behind the cursor: not read
    records[1] = dated(1, 1, { name = "not seen" })
    records[4] = dated(4, 4)
    records[5] = dated(5, 3) -- same mark as the cursor, higher id: after it
    records[6] = dated(0, 3) -- same mark, lower id: before it
    S.data(dir, records)
    S.audit(dir)
    local r2 = S.run(dir, "run", "--no-progress")
    assert.equal(0, r2.code, r2.stderr)
    local c = summary(r2.stdout)
    assert.same({ 2, 0 }, { c.created, c.updated })
    -- the four records at or before the cursor are not imported (reported
    -- as before the cursor, or unchanged when their bytes are known)
    assert.equal(4, (c.unchanged or 0) + (c.before_cursor or 0))
    local writes = {}
    for _, what in ipairs(S.audited(dir)) do writes[what] = (writes[what] or 0) + 1 end
    assert.same({ ["contact insert"] = 2, ["idmap insert"] = 2 }, writes)
    local now = S.contacts(dir)
    assert.equal("c1@example.com|Contact 1|21", now[1])
    assert.is_not_nil(now[4])
    assert.is_not_nil(now[5])
    assert.is_nil(now[0])
    local run = last_run(dir)
    assert.same({ "incremental", "2024-01-03/3", "2024-01-04/4", 2 }, { run.mode, run.cursor_before, run.cursor_after,
      run.created })
  end)

  it("records sharing a timestamp across batch and run boundaries are neither lost nor repeated", function()
    S.job(dir, { mode = "incremental", changed = "updated_at", batch = 2, limit = 3 })
    local records = { dated(1, 1) }
    for id = 2, 8 do records[#records + 1] = dated(id, 2) end -- seven records share one mark
    records[#records + 1] = dated(9, 3)
    -- not in id order in the file
    local shuffled = { records[5], records[2], records[9], records[8], records[1], records[4], records[7],
      records[3], records[6] }
    S.data(dir, shuffled)
    local created, runs = {}, 0
    local total = 0
    repeat
      runs = runs + 1
      local r = S.run(dir, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      local c = summary(r.stdout)
      assert.is_true(c.created <= 3, r.stdout)
      created[runs] = c.created
      total = total + c.created
      assert.equal(0, c.updated)
      assert.equal(0, c.unchanged, "no record is read twice")
    until c.created == 0 or runs > 10
    assert.same({ 3, 3, 3, 0 }, created)
    assert.equal(9, total)
    local sum = S.value(dir, "SELECT sum(created) FROM entsync_history WHERE sync = 'contacts'")
    assert.equal(9, sum)
    assert.same(S.expected(records), S.contacts(dir))
    local cursors = {}
    for _, row in ipairs(S.query(dir, "SELECT cursor_after FROM entsync_history ORDER BY id")) do
      cursors[#cursors + 1] = row.cursor_after
    end
    -- the first run stopped inside the group of 2024-01-02
    assert.same({ "2024-01-02/3", "2024-01-02/6", "2024-01-03/9", "2024-01-03/9" }, cursors)
  end)

  it("a run stopped by its limit says so, like a full run, and is logged partial", function()
    S.job(dir, { mode = "incremental", changed = "updated_at", batch = 2, limit = 3 })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 3), dated(4, 4), dated(5, 5) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(3, summary(r.stdout).created)
    assert.matches("limit reached", r.stdout)
    assert.equal("partial", last_run(dir).status)
  end)
end)

describe("limit", function()
  local function seven()
    local records = {}
    for i = 1, 7 do records[i] = contact(i) end
    return records
  end

  it("full mode: each run stops after N records and the next starts exactly where it stopped", function()
    S.job(dir, { limit = 3, batch = 2 })
    S.data(dir, seven())
    local created, unchanged = {}, {}
    for i = 1, 3 do
      local r = S.run(dir, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      local c = summary(r.stdout)
      created[i], unchanged[i] = c.created, c.unchanged
    end
    assert.same({ 3, 3, 1 }, created)
    assert.same({ 0, 0, 0 }, unchanged)
    assert.same(S.expected(seven()), S.contacts(dir))
  end)

  it("full mode: a later pass resumes from entsync_state.pass_resume", function()
    S.job(dir, { limit = 3, batch = 2 })
    S.data(dir, seven())
    for _ = 1, 5 do
      local r = S.run(dir, "run", "--no-progress")
      if not r.stdout:match("limit reached") then break end
    end
    assert.same(S.expected(seven()), S.contacts(dir))
    local records = seven()
    for i = 1, 7 do records[i] = contact(i, { name = "v2 " .. i }) end
    S.data(dir, records)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(3, summary(r.stdout).updated)
    assert.matches("limit reached", r.stdout)
    local state = S.query(dir, [[SELECT t.pass, t.pass_resume, t.pass_open FROM entsync_state t
      JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts']])[1]
    assert.equal(3, S.resumes_after(state.pass_resume))
    assert.equal(1, state.pass_open)
    local r2 = S.run(dir, "run", "--no-progress")
    local c2 = summary(r2.stdout)
    assert.same({ 3, 0 }, { c2.updated, c2.unchanged })
    local r3 = S.run(dir, "run", "--no-progress")
    local c3 = summary(r3.stdout)
    assert.same({ 1, 0 }, { c3.updated, c3.unchanged })
    assert.is_nil(r3.stdout:match("limit reached"))
    assert.same(S.expected(records), S.contacts(dir))
    local after = S.query(dir, [[SELECT t.pass, t.pass_resume, t.pass_open FROM entsync_state t
      JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts']])[1]
    assert.equal(0, after.pass_open)
    assert.equal(state.pass, after.pass)
  end)

  it("a drop folder: files move to processed/ once their records are committed", function()
    S.job(dir, { limit = 4, batch = 2, provider = 'provider "ndjson" { dir = "inbox" }', remote = "files" })
    -- the folder is empty at first
    helpers.write(dir .. "/inbox/.keep", "")
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local all = {}
    for f, name in ipairs({ "a.ndjson", "b.ndjson", "c.ndjson" }) do
      local records = {}
      for i = 1, 3 do
        records[i] = contact(f * 10 + i)
        all[#all + 1] = records[i]
      end
      helpers.write(dir .. "/inbox/" .. name, S.ndjson(records))
    end
    local r1 = S.run(dir, "run", "--no-progress")
    assert.equal(0, r1.code, r1.stderr)
    assert.equal(4, summary(r1.stdout).created)
    assert.same({ "a.ndjson" }, S.ls(dir .. "/inbox/processed"))
    assert.same({ "b.ndjson", "c.ndjson", "processed" }, S.ls(dir .. "/inbox"))
    local r2 = S.run(dir, "run", "--no-progress")
    assert.equal(4, summary(r2.stdout).created)
    assert.equal(0, summary(r2.stdout).unchanged)
    assert.same({ "a.ndjson", "b.ndjson" }, S.ls(dir .. "/inbox/processed"))
    local r3 = S.run(dir, "run", "--no-progress")
    assert.equal(1, summary(r3.stdout).created)
    assert.same({ "a.ndjson", "b.ndjson", "c.ndjson" }, S.ls(dir .. "/inbox/processed"))
    assert.same({ "processed" }, S.ls(dir .. "/inbox"))
    assert.same(S.expected(all), S.contacts(dir))
    assert.equal(9, S.value(dir, "SELECT sum(created) FROM entsync_history"))
  end)
end)

describe("--dry-run", function()
  it("with no store yet: reports what would be created and creates no store", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "run", "--dry-run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.equal(5, c.would_create)
    assert.matches("dry run", r.stdout)
    assert.is_false(S.exists(dir .. "/entsync.db"))
    assert.is_false(S.exists(dir .. "/entsync.db-wal"))
    assert.is_false(S.exists(dir .. "/entsync.db-shm"))
  end)

  it("leaves an existing store file byte-identical", function()
    S.job(dir, { deletes = "delete" })
    local records = five()
    S.data(dir, records)
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.query(dir, "SELECT 1") -- a last connection closes: the WAL is checkpointed
    assert.is_false(S.exists(dir .. "/entsync.db-wal"))
    local before = helpers.read(dir .. "/entsync.db")
    -- 2 changes, 3 is gone, 6 is new
    S.data(dir, { contact(1), contact(2, { name = "changed" }), contact(4), contact(5), contact(6) })
    local r = S.run(dir, "run", "--dry-run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = summary(r.stdout)
    assert.same({ 1, 1, 3, 1 }, { c.would_create, c.would_update, c.unchanged, c.would_delete })
    assert.is_true(before == helpers.read(dir .. "/entsync.db"), "the store file changed")
    assert.is_false(S.exists(dir .. "/entsync.db-wal"))
    assert.equal(1, S.count(dir, "entsync_runs"))
    assert.same(S.expected(five()), S.contacts(dir))
  end)

  it("does not move drop-folder files", function()
    S.job(dir, { provider = 'provider "ndjson" { dir = "inbox" }', remote = "files" })
    helpers.write(dir .. "/inbox/a.ndjson", S.ndjson({ contact(1), contact(2) }))
    local r = S.run(dir, "run", "--dry-run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(2, summary(r.stdout).would_create)
    assert.same({ "a.ndjson" }, S.ls(dir .. "/inbox"))
  end)
end)

describe("progress", function()
  it("with --no-progress, or when stderr is not a terminal, stderr has no progress line", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code)
    assert.is_nil(r.stderr:find("\r", 1, true))
    assert.equal(5, summary(r.stdout).created)
    local r2 = S.run(dir, "run") -- stderr is a file here: no progress by default
    assert.equal(0, r2.code)
    assert.is_nil(r2.stderr:find("\r", 1, true))
    assert.equal(5, summary(r2.stdout).unchanged)
  end)

  it("--progress forces the live line on stderr; the summary line is still on stdout", function()
    S.job(dir, {})
    S.data(dir, five())
    local r = S.run(dir, "run", "--progress")
    assert.equal(0, r.code)
    assert.is_not_nil(r.stderr:find("\r", 1, true))
    assert.matches("contacts: %d+ records", r.stderr)
    assert.is_nil(r.stdout:find("\r", 1, true))
    assert.matches("^contacts: 5 created, ", r.stdout)
  end)
end)

describe("file providers through the engine", function()
  it("csv: a drop file with a header row imports like ndjson", function()
    S.job(dir, { provider = 'provider "csv" { dir = "data" }', remote = 'files "contacts.csv"' })
    helpers.write(dir .. "/data/contacts.csv",
      "id,email,name,age\r\n1,c1@example.com,Contact 1,21\r\n2,c2@example.com,\"Contact 2, Jr\",22\r\n")
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 2 created, 0 updated, 0 unchanged", r.stdout)
    assert.same({ [1] = "c1@example.com|Contact 1|21", [2] = "c2@example.com|Contact 2, Jr|22" }, S.contacts(dir))
    local again = S.run(dir, "run", "--no-progress")
    assert.equal(2, summary(again.stdout).unchanged)
  end)

  it("json: an array under a dotted path imports like ndjson", function()
    S.job(dir, { provider = 'provider "json" { dir = "data", records = "data.items" }', remote = 'files "contacts.json"' })
    helpers.write(dir .. "/data/contacts.json", '{"meta": {"n": 2}, "data": {"items": ['
      .. S.encode(contact(1)) .. ",\n" .. S.encode(contact(2)) .. "]}}")
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^contacts: 2 created, 0 updated, 0 unchanged", r.stdout)
    assert.same(S.expected({ contact(1), contact(2) }), S.contacts(dir))
  end)
end)
