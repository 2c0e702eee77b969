-- The C record path writes a batch's creates many rows a statement. The
-- rows, their local ids (in input order), their id-map rows and the change
-- log must be what one statement a row gives: the Lua pipeline's, with
-- ENTSYNC_RECORD_PATH=lua. A second sync exporting the entity sends every
-- imported record on, and the importing sync sends none back.
--
-- Those statements are INSERT OR FAIL: a row that breaks a constraint
-- stops one with the rows before it written, and the batch is then rolled
-- back whole and written again record by record. A constraint of the
-- user's own table (a unique email) and a remote id met twice, both inside
-- one run of rows, must end as one statement a row ends them: the same
-- rows, the same id map, the same failures.

local cjson = require "cjson"
local helpers = require "helpers"

-- Runs a job both ways, the C record path and the Lua pipeline
-- (ENTSYNC_RECORD_PATH=lua), each in a folder of tmpdir's holding
-- t.job: t.prepare(dir) first, when given, then one run of t.args a text
-- of t.passes (written to t.file before it); asserts that t.dump(db) of
-- the two stores is the same and returns the C path's.
local function both_ways(tmpdir, t)
  local out = {}
  for _, path in ipairs({ "c", "lua" }) do
    local dir = tmpdir()
    helpers.write(dir .. "/job.lua", t.job)
    if t.prepare then t.prepare(dir) end
    for _, text in ipairs(t.passes) do
      helpers.write(dir .. "/" .. t.file, text)
      local r = helpers.run(dir, t.args, { ENTSYNC_RECORD_PATH = path })
      assert.equal(0, r.code, r.stderr)
      if t.check then t.check(r, path) end
    end
    out[path] = t.dump(dir .. "/entsync.db")
  end
  assert.same(out.lua, out.c)
  return out.c
end

-- A describe block's temporary folders: each test's are removed after it.
local function tmpdirs()
  local dirs = {}
  after_each(function()
    for _, dir in ipairs(dirs) do helpers.rmdir(dir) end
    dirs = {}
  end)
  return function()
    local dir = helpers.tmpdir()
    dirs[#dirs + 1] = dir
    return dir
  end
end

describe("creates written many rows a statement", function()
  local tmpdir = tmpdirs()

  local N = 150 -- more than two statements' worth of rows, and a remainder

  local function setup()
    local dir = tmpdir()
    helpers.write(dir .. "/out/.keep", "")
    helpers.write(dir .. "/job.lua", table.concat({
      'store "entsync.db"',
      'entity "contact" { email = "text", name = "text", tags = "json" }',
      'entity "note" { text = "text" }',
      'local files = provider "ndjson" { path = "contacts.ndjson" }',
      'local out = provider "ndjson" { dir = "out" }',
      'sync "contacts" { remote = files, entity = { "contact", "note" },',
      '  mapping = { contact = { email = "email", name = { import = function(_, r) return r.first .. " " .. r.last end },',
      '    tags = "tags" }, note = { text = "note" } },',
      '  import = { mode = "incremental", changed = "at", batch = 100 } }',
      'sync "copy" { remote = out, entity = "contact", mapping = { email = "email", name = "name" },',
      '  import = false, export = { resource = "copy.ndjson", on_change = true } }',
    }, "\n") .. "\n")
    local lines = {}
    for i = 1, N do
      -- ids out of order, so local ids follow the input, not the ids
      local id = (i * 37) % 1000 + 1
      lines[i] = cjson.encode({ id = id, at = string.format("2026-01-01T00:%02d:%02dZ", i // 60, i % 60),
        email = "c" .. id .. "@example.com", first = "First" .. i, last = "Last", tags = { i, "t" .. i },
        note = i % 3 == 0 and cjson.null or ("note " .. i) })
    end
    helpers.write(dir .. "/contacts.ndjson", table.concat(lines, "\n") .. "\n")
    return dir
  end

  -- a failure names its store, a different folder for each run
  local function failures(db)
    local rows = helpers.query(db, "SELECT direction, key, remote_id, error FROM entsync_failures ORDER BY key")
    for _, row in ipairs(rows) do row.error = row.error:gsub("^store [^:]+: ", "") end
    return rows
  end

  local function dump(dir)
    local db = dir .. "/entsync.db"
    return {
      contact = helpers.query(db, "SELECT * FROM contact ORDER BY id"),
      note = helpers.query(db, "SELECT * FROM note ORDER BY id"),
      idmap = helpers.query(db, "SELECT key, sync, local_id, remote_id, changed, hash, raw_hash, version, seen_pass, "
        .. "gone_at FROM entsync_idmap ORDER BY key"),
      changes = helpers.query(db, "SELECT entity, local_id, operation FROM entsync_changes ORDER BY seq"),
      failures = failures(db),
    }
  end

  it("stores what one statement a row stores, and the exporting sync sends every record on", function()
    local c, lua = setup(), setup()
    local r = helpers.run(c, { "job.lua", "run", "--no-progress", "-v" })
    assert.equal(0, r.code, r.stderr)
    assert.matches(N .. " created", r.stdout, 1, true)
    assert.matches(string.format('sync "contacts": %d of %d records mapped in C', N - 1, N), r.stderr, 1, true)
    local l = helpers.run(lua, { "job.lua", "run", "--no-progress" }, { ENTSYNC_RECORD_PATH = "lua" })
    assert.equal(0, l.code, l.stderr)
    local a, b = dump(c), dump(lua)
    assert.equal(N, #a.contact)
    assert.same(b, a)
    -- local ids follow the input
    local first = cjson.decode((helpers.read(c .. "/contacts.ndjson"):match("[^\n]+")))
    assert.equal("c" .. math.tointeger(first.id) .. "@example.com", a.contact[1].email)
    assert.equal("First1 Last", a.contact[1].name)
    assert.equal(cjson.encode({ 1, "t1" }), a.contact[1].tags)
    -- the other sync sent each contact once; nothing went back to the file
    local sent = {}
    for line in (helpers.read(c .. "/out/copy.ndjson") or ""):gmatch("[^\n]+") do
      local record = cjson.decode(line).record -- a sink line: { op, id, record, at }
      sent[record.email] = (sent[record.email] or 0) + 1
    end
    local count = 0
    for email, times in pairs(sent) do
      count = count + 1
      assert.equal(1, times, email)
    end
    assert.equal(N, count)
    -- a second run finds every line known by its bytes
    r = helpers.run(c, { "job.lua", "run", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("0 created, 0 updated", r.stdout, 1, true)
  end)
  -- The job of the test above without the exporting sync, its tables made
  -- by a run over an empty file, then the user's own unique index on email.
  local function setup_failing(n)
    local dir = tmpdir()
    helpers.write(dir .. "/job.lua", table.concat({
      'store "entsync.db"',
      'entity "contact" { email = "text", name = "text" }',
      'entity "note" { text = "text" }',
      'local files = provider "ndjson" { path = "contacts.ndjson" }',
      'sync "contacts" { remote = files, entity = { "contact", "note" },',
      '  mapping = { contact = { email = "email", name = "name" }, note = { text = "note" } },',
      '  import = { mode = "incremental", changed = "at", batch = 100 } }',
    }, "\n") .. "\n")
    helpers.write(dir .. "/contacts.ndjson", "")
    local r = helpers.run(dir, { "job.lua", "run", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    helpers.sqlite3(dir .. "/entsync.db", "CREATE UNIQUE INDEX contact_email ON contact (email)")
    local lines = {}
    for i = 1, n do
      local id, email = i, "c" .. i .. "@example.com"
      -- both inside the second batch's run of rows 101-164: an email the
      -- user's index refuses, and a remote id met twice
      if i == 130 then email = "c10@example.com" end
      if i == 150 then id = 135 end
      lines[i] = cjson.encode({ id = id, email = email, name = "Name " .. i, note = "note " .. i,
        at = string.format("2026-01-01T%02d:%02d:%02dZ", i // 3600, i // 60 % 60, i % 60) })
    end
    helpers.write(dir .. "/contacts.ndjson", table.concat(lines, "\n") .. "\n")
    return dir
  end

  it("ends a run whose statement fails as one statement a row ends it: the same rows, id map and failures", function()
    local n = 250 -- the first batch of 100 written by the C record path, the failures in the second
    local c, lua = setup_failing(n), setup_failing(n)
    local r = helpers.run(c, { "job.lua", "run", "--no-progress", "-v" })
    local l = helpers.run(lua, { "job.lua", "run", "--no-progress" }, { ENTSYNC_RECORD_PATH = "lua" })
    assert.equal(l.code, r.code, r.stderr)
    local in_c = tonumber(r.stderr:match('sync "contacts": (%d+) of ' .. n .. ' records mapped in C'))
    assert.is_true(in_c ~= nil and in_c >= 64, r.stderr)
    local a, b = dump(c), dump(lua)
    assert.same(b, a)
    -- the refused email is its own record's failure; no email is held twice
    assert.equal(1, #a.failures)
    assert.matches("UNIQUE constraint failed: contact.email", a.failures[1].error, 1, true)
    assert.equal(130, math.tointeger(a.failures[1].remote_id))
    assert.equal(n - 2, #a.contact)
    local emails = {}
    for _, row in ipairs(a.contact) do
      assert.is_nil(emails[row.email], row.email)
      emails[row.email] = true
    end
    assert.equal(#a.contact, #a.note)
    assert.equal(#a.contact, #a.idmap)
  end)
end)

-- Ids are compared as the cursor orders them: as numbers when both are an
-- integer's text. A string id's bytes are followed by other values in the
-- C path's memory (here its changed mark, which starts with digits): the
-- comparison must read the id to its length only.
describe("the cursor's id compared in C", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  it("finds the record at the cursor before it, with string ids that are integers' text", function()
    helpers.write(dir .. "/job.lua", table.concat({
      'store "entsync.db"',
      'entity "contact" { email = "text" }',
      'local files = provider "ndjson" { path = "contacts.ndjson" }',
      'sync "contacts" { remote = files, entity = "contact", mapping = { email = "email" },',
      '  import = { mode = "incremental", changed = "at" } }',
    }, "\n") .. "\n")
    local lines = {}
    for i = 1, 5 do
      lines[i] = string.format('{"id":"%d","at":"2026-01-0%dT00:00:00Z","email":"c%d@example.com"}', i, i, i)
    end
    helpers.write(dir .. "/contacts.ndjson", table.concat(lines, "\n") .. "\n")
    local r = helpers.run(dir, { "job.lua", "run", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("5 created", r.stdout, 1, true)
    -- the same lines in another form (so their bytes are not known), and a new one
    for i = 1, 5 do lines[i] = lines[i]:gsub("}$", ' }') end
    lines[6] = '{"id":"6","at":"2026-01-07T00:00:00Z","email":"c6@example.com"}'
    helpers.write(dir .. "/contacts.ndjson", table.concat(lines, "\n") .. "\n")
    r = helpers.run(dir, { "job.lua", "run", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("1 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted, 5 before the cursor", r.stdout, 1,
      true)
  end)
end)

-- Two differences from the Lua pipeline found in review, each run both
-- ways (ENTSYNC_RECORD_PATH=lua and not) into two stores that must end the
-- same.
describe("the C record path beside the Lua pipeline", function()
  local tmpdir = tmpdirs()

  local function both(job, passes)
    local texts = {}
    for i, lines in ipairs(passes) do texts[i] = table.concat(lines, "\n") .. "\n" end
    return both_ways(tmpdir, { job = job, file = "in.ndjson", passes = texts,
      args = { "job.lua", "run", "--no-progress" },
      dump = function(db)
        return { rows = helpers.query(db, "SELECT * FROM thing ORDER BY id"),
          state = helpers.query(db, "SELECT cursor_mark, cursor_id FROM entsync_state") }
      end })
  end

  local function job(mapping)
    return table.concat({
      'store "entsync.db"',
      'entity "thing" { a = "text", b = "text" }',
      'local files = provider "ndjson" { path = "in.ndjson" }',
      'sync "things" { remote = files, entity = "thing", mapping = ' .. mapping .. ',',
      '  import = { mode = "incremental", changed = "v" } }',
    }, "\n") .. "\n"
  end

  it("reads a field a callback removed from the record as removed", function()
    local lines = {}
    for i = 1, 4 do lines[i] = string.format('{"id":%d,"v":%d,"b":"orig%d"}', i, i, i) end
    local got = both(job('{ a = { import = function(_, r) r.b = nil; return "A" end }, b = "b" }'), { lines })
    assert.equal(4, #got.rows)
    for _, row in ipairs(got.rows) do assert.is_nil(row.b) end
  end)

  it("moves the cursor over records found unchanged by their content", function()
    local first, second = {}, {}
    for i = 1, 4 do
      first[i] = string.format('{"id":%d,"v":%d,"b":"x"}', i, i)
      -- the same content under a newer mark, with a field the mapping does not read
      second[i] = string.format('{"id":%d,"v":%d,"b":"x","other":1}', i, 1000 + i)
    end
    local got = both(job('{ b = "b" }'), { first, second })
    assert.same({ { cursor_mark = 1004, cursor_id = "4" } }, got.state)
  end)
end)

-- A run of creates leaves the ids to SQLite: the entity's rows take the
-- ones after its table's largest, and the id-map rows the keys after the
-- id map's largest when those are theirs. Each case runs both ways
-- (ENTSYNC_RECORD_PATH=lua and not) into two stores that must end the
-- same: rows, id map, change log, failures.
describe("creates appended under the ids the tables give", function()
  local tmpdir = tmpdirs()

  local N = 150 -- two runs of 64 rows, and a remainder

  local function lines(from, to)
    local out = {}
    for i = from, to do
      out[#out + 1] = cjson.encode({ id = i, at = string.format("2026-01-01T00:%02d:%02dZ", i // 60, i % 60),
        email = "c" .. i .. "@example.com", name = "Name " .. i })
    end
    return table.concat(out, "\n") .. "\n"
  end

  local JOB = table.concat({
    'store "entsync.db"',
    'entity "contact" { email = "text", name = "text" }',
    'entity "other" { email = "text" }',
    'local files = provider "ndjson" { path = "contacts.ndjson" }',
    'local others = provider "ndjson" { path = "others.ndjson" }',
    'sync "contacts" { remote = files, entity = "contact", mapping = { email = "email", name = "name" },',
    '  import = { mode = "incremental", changed = "at", batch = 100 } }',
    'sync "others" { remote = others, entity = "other", mapping = { email = "email" },',
    '  import = { mode = "incremental", changed = "at", batch = 100 } }',
  }, "\n") .. "\n"

  -- prepare(dir) runs before the import; each of passes is the contacts
  -- file of one run
  local function both(prepare, passes)
    return both_ways(tmpdir, { job = JOB, file = "contacts.ndjson", passes = passes,
      args = { "job.lua", "run", "contacts", "--no-progress", "-v" },
      prepare = function(dir)
        helpers.write(dir .. "/others.ndjson", "")
        if prepare then prepare(dir) end
      end,
      check = function(r, path)
        if path == "c" then assert.matches("records mapped in C", r.stderr, 1, true) end
      end,
      dump = function(db)
        return {
          contact = helpers.query(db, "SELECT * FROM contact ORDER BY id"),
          idmap = helpers.query(db, "SELECT key, sync, local_id, remote_id, changed, hash FROM entsync_idmap ORDER BY key"),
          changes = helpers.query(db, "SELECT entity, local_id, operation FROM entsync_changes ORDER BY seq"),
          failures = helpers.query(db, "SELECT key, error FROM entsync_failures ORDER BY key"),
        }
      end })
  end

  it("gives a fresh store's rows the ids in input order, and the id map their keys", function()
    local got = both(nil, { lines(1, N), lines(N + 1, N + 70) })
    assert.equal(N + 70, #got.contact)
    assert.equal(N + 70, #got.idmap)
    for i, row in ipairs(got.contact) do
      assert.equal(i, math.tointeger(row.id))
      assert.equal("c" .. i .. "@example.com", row.email)
      assert.equal(i, math.tointeger(got.idmap[i].local_id))
      assert.equal(i, math.tointeger(got.idmap[i].remote_id))
    end
  end)

  it("keys the id-map rows itself when a later sync holds the largest key", function()
    local got = both(function(dir)
      -- the second sync (a larger sync id) imports first: its keys are above
      -- every key the first sync's rows take
      helpers.write(dir .. "/others.ndjson", lines(1, 10))
      local r = helpers.run(dir, { "job.lua", "run", "others", "--no-progress" })
      assert.equal(0, r.code, r.stderr)
    end, { lines(1, N) })
    assert.equal(N, #got.contact)
    assert.equal(N + 10, #got.idmap)
  end)

  it("gives an AUTOINCREMENT table's rows ids past every id it gave before", function()
    local got = both(function(dir)
      helpers.sqlite3(dir .. "/entsync.db", table.concat({
        "CREATE TABLE contact (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT, name TEXT);",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)",
        "  INSERT INTO contact (email) SELECT 'gone' FROM n;",
        "DELETE FROM contact;",
      }, "\n"))
    end, { lines(1, N) })
    assert.equal(N, #got.contact)
    assert.equal(301, math.tointeger(got.contact[1].id))
    assert.equal(300 + N, math.tointeger(got.contact[N].id))
  end)

  it("writes the batch record by record when a trigger of the user's adds rows to the table mid-run", function()
    local got = both(function(dir)
      -- the tables made by a run over an empty file, then the user's trigger
      helpers.write(dir .. "/contacts.ndjson", "")
      local r = helpers.run(dir, { "job.lua", "run", "contacts", "--no-progress" })
      assert.equal(0, r.code, r.stderr)
      helpers.sqlite3(dir .. "/entsync.db", table.concat({
        "CREATE TRIGGER audit AFTER INSERT ON contact WHEN NEW.email = 'c20@example.com'",
        "BEGIN INSERT INTO contact (email, name) VALUES ('audit', 'added by the trigger'); END;",
      }, "\n"))
    end, { lines(1, N) })
    assert.equal(N + 1, #got.contact)
    assert.equal(N, #got.idmap)
    -- each id-map row names its own record's row
    local by_id = {}
    for _, row in ipairs(got.contact) do by_id[math.tointeger(row.id)] = row end
    for _, m in ipairs(got.idmap) do
      assert.equal("c" .. math.tointeger(m.remote_id) .. "@example.com", by_id[math.tointeger(m.local_id)].email)
    end
    assert.equal("audit", got.contact[21].email)
  end)
end)
