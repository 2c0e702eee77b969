-- The SQLite store: through the C API (require "entsync.core") and through
-- the real entsync-run binary on a job with an ndjson provider. entsync's
-- own tables are made and migrated by entsync.ledger (core.store.open only
-- opens the file).

-- entsync's own tables and views at the current schema (4).
local TABLES = { "entsync_changes", "entsync_conflicts", "entsync_entities", "entsync_failures", "entsync_idmap",
  "entsync_locks", "entsync_meta", "entsync_runs", "entsync_state", "entsync_syncs", "entsync_webhook_events",
  "entsync_writes" }
local VIEWS = { "entsync_failed", "entsync_history", "entsync_map" }

local core = require "entsync.core"
local cjson = require "cjson"
local ledger = require "entsync.ledger"
local helpers = require "helpers"

local function sqlite3(db, sql)
  local pipe = assert(io.popen("sqlite3 " .. helpers.quote(db) .. " " .. helpers.quote(sql) .. " 2>&1"))
  local out = pipe:read("a")
  pipe:close()
  return (out:gsub("\n$", ""))
end

local function table_info(db, name)
  local columns = {}
  for _, row in ipairs(helpers.query(db, "SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid", name)) do
    columns[row.name] = { type = row.type, pk = row.pk }
  end
  return columns
end

local function column_names(columns)
  local names = {}
  for name in pairs(columns) do names[#names + 1] = name end
  table.sort(names)
  return names
end

describe("the store through the C API", function()
  local dir, store, db

  before_each(function()
    dir = helpers.tmpdir()
    db = dir .. "/store.db"
    store = core.store.open(db)
  end)

  after_each(function()
    if store then store:close() end
    helpers.rmdir(dir)
  end)

  describe("store.open", function()
    it("creates the file, in WAL mode; the ledger makes entsync's own tables at the current schema version", function()
      assert.is_true(core.fs.exists(db) ~= false)
      assert.equal("wal", store:value("PRAGMA journal_mode"))
      assert.equal("wal", sqlite3(db, "PRAGMA journal_mode"))
      assert.equal(ledger.VERSION, ledger.migrate(store))
      local names = {}
      for _, row in ipairs(store:rows("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
        names[#names + 1] = row.name
      end
      assert.same(TABLES, names)
      local views = {}
      for _, row in ipairs(store:rows("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")) do
        views[#views + 1] = row.name
      end
      assert.same(VIEWS, views)
      assert.equal(ledger.VERSION, store:value("SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
      assert.equal(4, ledger.VERSION)
    end)

    it("opens an existing store again without touching its data or version", function()
      ledger.migrate(store)
      store:run("INSERT INTO entsync_syncs (name) VALUES ('s')")
      store:run("INSERT INTO entsync_state (sync, cursor_mark) VALUES ((SELECT id FROM entsync_syncs WHERE name = 's'), 'mark')")
      store:close()
      store = core.store.open(db)
      assert.equal(ledger.VERSION, ledger.migrate(store))
      assert.equal("mark", store:value([[SELECT t.cursor_mark FROM entsync_state t
        JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 's']]))
      assert.equal(1, store:value("SELECT count(*) FROM entsync_meta"))
      assert.equal(ledger.VERSION, store:value("SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
    end)

    it("refuses a store whose schema version is newer than it knows, with a clear message, leaving it as it was", function()
      ledger.migrate(store)
      store:run("UPDATE entsync_meta SET value = 99 WHERE key = 'schema_version'")
      store:close()
      store = core.store.open(db)
      local ok, err = pcall(ledger.migrate, store)
      assert.is_false(ok)
      err = tostring(err)
      assert.matches("store " .. db:gsub("%p", "%%%0") .. " has schema version 99", err)
      assert.matches("knows up to " .. ledger.VERSION, err)
      assert.matches("upgrade entsync", err)
      store:close()
      store = nil
      assert.equal("99", sqlite3(db, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
    end)

    it("opens stores from a second load of entsync.core, made after SQLite has started in the process", function()
      -- SQLite's settings can be given only before it starts (the first
      -- open): a later load of the module leaves them as they are
      ledger.migrate(store)
      local path = assert(package.searchpath("entsync.core", package.cpath))
      local again = assert(package.loadlib(path, "luaopen_entsync_core"))()
      local other = again.store.open(dir .. "/other.db")
      ledger.migrate(other)
      other:run("INSERT INTO entsync_syncs (name) VALUES ('s')")
      other:close()
      assert.equal("s", sqlite3(dir .. "/other.db", "SELECT name FROM entsync_syncs"))
      assert.equal(ledger.VERSION, store:value("SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
    end)

    it("raises a clear error for a path it cannot open", function()
      local ok, err = pcall(core.store.open, dir .. "/no/such/dir/x.db")
      assert.is_false(ok)
      assert.equal("permissions", err.kind)
      assert.matches("x%.db cannot be opened or written %(unable to open database file: No such file or directory%)",
        tostring(err))
    end)
  end)

  describe("define_entity", function()
    it("creates a real table with an integer primary key id and the declared columns", function()
      local created, added = store:define_entity("contact", {
        name = "text", age = "integer", score = "real", active = "boolean", tags = "json", seen = "timestamp",
      })
      assert.is_true(created)
      assert.same({ "active", "age", "name", "score", "seen", "tags" }, added)
      local info = table_info(db, "contact")
      assert.same({ type = "INTEGER", pk = 1 }, info.id)
      assert.same({ type = "TEXT", pk = 0 }, info.name)
      assert.same({ type = "INTEGER", pk = 0 }, info.age)
      assert.same({ type = "REAL", pk = 0 }, info.score)
      assert.same({ type = "INTEGER", pk = 0 }, info.active)
      assert.same({ type = "TEXT", pk = 0 }, info.tags)
      assert.same({ type = "TEXT", pk = 0 }, info.seen)
      assert.same({ "active", "age", "id", "name", "score", "seen", "tags" }, column_names(info))
      -- Another program can use the table at once.
      assert.equal("", sqlite3(db, "INSERT INTO contact (name, age) VALUES ('Ann', 3)"))
      assert.equal("1|Ann|3", sqlite3(db, "SELECT id, name, age FROM contact"))
    end)

    it("adds a new field to the existing table, keeping the rows, and reports only what it added", function()
      store:define_entity("contact", { name = "text" })
      store:run("INSERT INTO contact (name) VALUES (?1)", "Ann")
      local created, added = store:define_entity("contact", { name = "text", mail = "text" })
      assert.is_false(created)
      assert.same({ "mail" }, added)
      assert.same({ { id = 1, name = "Ann" } }, store:rows("SELECT id, name FROM contact"))
      assert.is_nil(store:value("SELECT mail FROM contact WHERE id = 1"))
      created, added = store:define_entity("contact", { name = "text", mail = "text" })
      assert.is_false(created)
      assert.same({}, added)
    end)

    it("never drops a column whose field went away, nor its data", function()
      store:define_entity("contact", { name = "text", mail = "text" })
      store:run("INSERT INTO contact (name, mail) VALUES ('Ann', 'ann@example.org')")
      local created, added = store:define_entity("contact", { name = "text" })
      assert.is_false(created)
      assert.same({}, added)
      assert.same({ "id", "mail", "name" }, column_names(store:columns("contact")))
      assert.equal("ann@example.org", store:value("SELECT mail FROM contact"))
    end)

    it("rejects names that are not identifiers", function()
      local long = string.rep("a", 64)
      for _, bad in ipairs({ "1abc", "a-b", "", "drop table", "x;y", "a\"b", long }) do
        local ok, err = pcall(store.define_entity, store, bad, { name = "text" })
        assert.is_false(ok, bad)
        assert.matches("is not an identifier", tostring(err))
      end
      assert.equal(0, store:value("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'entsync%'"))
      for _, bad in ipairs({ "1abc", "a-b", "", "drop table", "x;y", "a\"b", long }) do
        local ok, err = pcall(store.define_entity, store, "t", { [bad] = "text" })
        assert.is_false(ok, bad)
        assert.matches("is not an identifier", tostring(err))
      end
      local created = store:define_entity(string.rep("b", 63), { [string.rep("c", 63)] = "text" })
      assert.is_true(created)
    end)

    it("rejects the reserved entsync_ and sqlite_ prefixes, in any case", function()
      for _, name in ipairs({ "entsync_x", "ENTSYNC_runs", "sqlite_x", "Sqlite_stat" }) do
        local ok, err = pcall(store.define_entity, store, name, { name = "text" })
        assert.is_false(ok, name)
        assert.matches("reserved", tostring(err))
      end
      assert.equal(0, store:value("SELECT count(*) FROM sqlite_master WHERE name = 'entsync_x'"))
    end)

    it("rejects a field named id, and unknown types", function()
      local ok, err = pcall(store.define_entity, store, "contact", { id = "integer", name = "text" })
      assert.is_false(ok)
      assert.matches('field "id" is the primary key', tostring(err))
      ok, err = pcall(store.define_entity, store, "contact2", { name = "varchar" })
      assert.is_false(ok)
      assert.matches('unknown type "varchar"', tostring(err))
      ok, err = pcall(store.define_entity, store, "contact3", { name = 5 })
      assert.is_false(ok)
      assert.matches("unknown type", tostring(err))
    end)

    -- SQLite's names are case-insensitive: "ID" is the primary key column.
    it("rejects a field named ID (any case) as the primary key, with a clear message", function()
      local ok, err = pcall(store.define_entity, store, "contact", { ID = "integer", name = "text" })
      assert.is_false(ok)
      assert.matches('field "ID" is the primary key', tostring(err))
    end)

    -- The table is created before the fields are checked, so a rejected
    -- declaration leaves a half-made table behind.
    it("leaves the store as it was when it rejects a declaration", function()
      local ok = pcall(store.define_entity, store, "fresh", { ["a-b"] = "text" })
      assert.is_false(ok)
      ok = pcall(store.define_entity, store, "fresh2", { good = "text", zzz = "nope" })
      assert.is_false(ok)
      assert.same({}, store:columns("fresh"))
      assert.same({}, store:columns("fresh2"))
    end)
  end)

  describe("run, row, rows and value", function()
    before_each(function()
      store:define_entity("t", { name = "text", n = "integer", r = "real" })
    end)

    it("bind parameters by position and give typed values back", function()
      local changes, id = store:run("INSERT INTO t (name, n, r) VALUES (?1, ?2, ?3)", "Ann", 7, 1.5)
      assert.equal(1, changes)
      assert.equal(1, id)
      local _, id2 = store:run("INSERT INTO t (name, n, r) VALUES (?1, ?2, ?3)", "Bob", nil, true)
      assert.equal(2, id2)
      assert.same({ id = 1, name = "Ann", n = 7, r = 1.5 }, store:row("SELECT * FROM t WHERE id = ?1", 1))
      assert.same({ id = 2, name = "Bob", r = 1.0 }, store:row("SELECT * FROM t WHERE id = ?1", 2))
      assert.equal("integer", math.type(store:value("SELECT n FROM t WHERE name = ?1", "Ann")))
      assert.equal("float", math.type(store:value("SELECT r FROM t WHERE name = ?1", "Ann")))
      assert.same({ { name = "Ann" }, { name = "Bob" } }, store:rows("SELECT name FROM t ORDER BY id"))
      assert.is_nil(store:row("SELECT * FROM t WHERE id = ?1", 99))
      assert.is_nil(store:value("SELECT n FROM t WHERE id = ?1", 99))
      assert.same({}, store:rows("SELECT * FROM t WHERE id > ?1", 99))
      assert.equal(2, store:run("UPDATE t SET n = ?1", 0))
    end)

    it("keep quotes and SQL injection text as data", function()
      local nasty = {
        "O'Neil", 'say "hi"', "'); DROP TABLE t; --", "Robert'); DROP TABLE students;--",
        "1 OR 1=1", "x\\y", "line\nbreak", "ünïcødé ✓",
      }
      for _, s in ipairs(nasty) do store:run("INSERT INTO t (name) VALUES (?1)", s) end
      for _, s in ipairs(nasty) do
        assert.equal(1, store:value("SELECT count(*) FROM t WHERE name = ?1", s))
        assert.same({ name = s }, store:row("SELECT name FROM t WHERE name = ?1", s))
      end
      assert.equal(#nasty, store:value("SELECT count(*) FROM t"))
      assert.equal(0, store:value("SELECT count(*) FROM t WHERE name = ?1", "1' OR '1'='1"))
      assert.equal("1", sqlite3(db, "SELECT count(*) FROM sqlite_master WHERE name = 't'"))
    end)

    it("bind nil, cjson.null as NULL and booleans as 1 and 0", function()
      store:run("INSERT INTO t (name, n, r) VALUES (?1, ?2, ?3)", cjson.null, true, nil)
      store:run("INSERT INTO t (name, n) VALUES (?1, ?2)", "f", false)
      assert.same({ id = 1, n = 1 }, store:row("SELECT * FROM t WHERE id = 1"))
      assert.equal(0, store:value("SELECT n FROM t WHERE id = 2"))
      assert.equal(1, store:value("SELECT count(*) FROM t WHERE name IS NULL"))
    end)

    it("raise a clear error when a value is a table (or a function)", function()
      local ok, err = pcall(store.run, store, "INSERT INTO t (name) VALUES (?1)", { "x" })
      assert.is_false(ok)
      assert.matches("cannot store a table in a statement parameter", tostring(err))
      ok, err = pcall(store.value, store, "SELECT ?1", print)
      assert.is_false(ok)
      assert.matches("cannot store a function", tostring(err))
      -- The cached statement is still usable afterwards.
      store:run("INSERT INTO t (name) VALUES (?1)", "after")
      assert.equal(1, store:value("SELECT count(*) FROM t"))
    end)

    -- Every message built with "%.80s" goes through lua_pushfstring, which
    -- has no precision: the message becomes "invalid option '%.' to
    -- 'lua_pushfstring'" and SQLite's reason is lost.
    it("raise SQL errors naming the store file, SQLite's reason and the statement", function()
      local ok, err = pcall(store.run, store, "SELEC 1")
      assert.is_false(ok)
      assert.matches(db, tostring(err), 1, true)
      assert.matches("syntax error", tostring(err))
      assert.matches("SELEC 1", tostring(err), 1, true)
      store:exec("CREATE TABLE u (a UNIQUE)")
      store:run("INSERT INTO u VALUES (?1)", 1)
      ok, err = pcall(store.run, store, "INSERT INTO u VALUES (?1)", 1)
      assert.is_false(ok)
      assert.matches("UNIQUE constraint failed", tostring(err))
      ok, err = pcall(store.exec, store, "CREATE TABLE u (a)")
      assert.is_false(ok)
      assert.matches("already exists", tostring(err))
    end)

    it("raise an error when given more values than the statement has parameters", function()
      local ok, err = pcall(store.run, store, "SELECT ?1", 1, 2)
      assert.is_false(ok)
      assert.matches("2 values given for 1 parameters", tostring(err))
    end)

    it("run inside transactions the caller opens", function()
      assert.is_false(store:in_transaction())
      store:run("BEGIN")
      assert.is_true(store:in_transaction())
      store:run("INSERT INTO t (name) VALUES ('gone')")
      store:run("ROLLBACK")
      assert.equal(0, store:value("SELECT count(*) FROM t"))
    end)
  end)

  describe("writers", function()
    before_each(function()
      store:define_entity("contact", { name = "text", age = "integer", mail = "text" })
    end)

    it("insert through the named columns only and return the new id", function()
      local w = store:writer("contact", { "name", "age" })
      assert.equal(1, w:insert({ name = "Ann", age = 3, mail = "ignored@example.org" }))
      assert.equal(2, w:insert({ name = "Bob" }))
      assert.equal(10, w:insert({ name = "Cid", age = 5 }, 10))
      assert.same({
        { id = 1, name = "Ann", age = 3 }, { id = 2, name = "Bob" }, { id = 10, name = "Cid", age = 5 },
      }, store:rows("SELECT * FROM contact ORDER BY id"))
      assert.equal("1|Ann|3|", sqlite3(db, "SELECT id, name, age, mail FROM contact WHERE id = 1"))
    end)

    it("update the named columns of one row, leaving the others, and say when the row is gone", function()
      store:run("INSERT INTO contact (name, age, mail) VALUES ('Ann', 3, 'ann@example.org')")
      local w = store:writer("contact", { "name", "age" })
      assert.equal(1, w:update(1, { name = "Anne", age = 4 }))
      assert.same({ id = 1, name = "Anne", age = 4, mail = "ann@example.org" }, store:row("SELECT * FROM contact"))
      assert.equal(0, w:update(99, { name = "nobody" }))
      assert.equal(1, store:value("SELECT count(*) FROM contact"))
    end)

    it("store quotes and injection text as data", function()
      local w = store:writer("contact", { "name" })
      local id = w:insert({ name = "x'); DROP TABLE contact; --" })
      assert.equal("x'); DROP TABLE contact; --", store:value("SELECT name FROM contact WHERE id = ?1", id))
      w:update(id, { name = 'O"Neil\'s' })
      assert.equal('O"Neil\'s', store:value("SELECT name FROM contact WHERE id = ?1", id))
    end)

    it("refuse a table value with a clear error", function()
      local w = store:writer("contact", { "name" })
      local ok, err = pcall(w.insert, w, { name = { "a" } })
      assert.is_false(ok)
      assert.matches("field name: cannot store a table %(declare it json%)", tostring(err))
      assert.equal(0, store:value("SELECT count(*) FROM contact"))
    end)

    it("refuse column and table names that are not identifiers", function()
      local ok, err = pcall(store.writer, store, "contact", { "name; DROP TABLE contact" })
      assert.is_false(ok)
      assert.matches("is not an identifier", tostring(err))
      ok, err = pcall(store.writer, store, "contact\"", { "name" })
      assert.is_false(ok)
      assert.matches("is not an identifier", tostring(err))
    end)
  end)

  describe("valid_identifier", function()
    it("accepts letters, digits and _, not starting with a digit, up to 63 characters", function()
      for _, good in ipairs({ "a", "_", "_x", "A1_b", "contact", string.rep("x", 63) }) do
        assert.is_true(core.store.valid_identifier(good), good)
      end
    end)

    it("rejects everything else", function()
      for _, bad in ipairs({ "1abc", "a-b", "", "drop table", "a.b", "é", "a\0b", string.rep("x", 64) }) do
        assert.is_false(core.store.valid_identifier(bad), bad)
      end
      assert.is_false(core.store.valid_identifier(12))
      assert.is_false(core.store.valid_identifier(nil))
      assert.is_false(core.store.valid_identifier({}))
    end)
  end)

  describe("closing", function()
    it("closes once; a closed store says so", function()
      assert.is_true(store:is_open())
      store:close()
      assert.is_false(store:is_open())
      store:close()
      local ok, err = pcall(store.value, store, "SELECT 1")
      assert.is_false(ok)
      assert.matches("is closed", tostring(err))
      store = nil
    end)
  end)
end)

-- A job reading contacts from an ndjson file.
local function job_source(fields, mapping, store_line)
  return string.format([[
%s
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { %s }
sync "contacts" { remote = src, entity = "contact", mapping = { %s } }
]], store_line or "", fields, mapping)
end

describe("the store of a job", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/contacts.ndjson",
      '{"id":1,"name":"Ann","mail":"ann@example.org"}\n{"id":2,"name":"Bob","mail":"bob@example.org"}\n')
  end)

  after_each(function()
    helpers.rmdir(dir)
  end)

  local function run(args)
    return helpers.run(dir, args)
  end

  it("is one SQLite file, entsync.db beside the job, in WAL mode, readable by the sqlite3 shell", function()
    helpers.write(dir .. "/job.lua", job_source('name = "text", mail = "text"', 'name = "name", mail = "mail"'))
    local r = run({ "job.lua", "run" })
    assert.equal(0, r.code, r.stderr)
    local db = dir .. "/entsync.db"
    assert.is_true(core.fs.exists(db) ~= false)
    assert.equal("wal", sqlite3(db, "PRAGMA journal_mode"))
    assert.equal("wal", helpers.query(db, "PRAGMA journal_mode")[1].journal_mode)
    assert.equal("1|Ann|ann@example.org\n2|Bob|bob@example.org", sqlite3(db, "SELECT id, name, mail FROM contact ORDER BY id"))
  end)

  it("is the file named by store, relative to the job's folder whatever the working directory", function()
    helpers.write(dir .. "/jobs/job.lua", job_source('name = "text"', 'name = "name"', 'store "data/other.db"'))
    helpers.write(dir .. "/jobs/contacts.ndjson", '{"id":1,"name":"Ann"}\n')
    core.fs.mkdir(dir .. "/jobs/data")
    local elsewhere = dir .. "/elsewhere"
    core.fs.mkdir(elsewhere)
    local r = helpers.run(elsewhere, { "../jobs/job.lua", "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("Ann", sqlite3(dir .. "/jobs/data/other.db", "SELECT name FROM contact"))
    assert.is_false(core.fs.exists(dir .. "/jobs/entsync.db") ~= false)
    assert.is_false(core.fs.exists(elsewhere .. "/entsync.db") ~= false)
    assert.is_false(core.fs.exists(elsewhere .. "/data/other.db") ~= false)
  end)

  it("makes each entity a real table with an integer primary key id and the declared columns", function()
    helpers.write(dir .. "/job.lua", [[
local src = provider "ndjson" { path = "contacts.ndjson" }
entity "contact" { name = "text", mail = "text", age = "integer", score = "real", vip = "boolean",
  tags = "json", seen = "timestamp" }
entity "tag" { label = "text" }
sync "contacts" { remote = src, entity = "contact", mapping = { name = "name", mail = "mail" } }
]])
    local r = run({ "job.lua", "run" })
    assert.equal(0, r.code, r.stderr)
    local db = dir .. "/entsync.db"
    local info = table_info(db, "contact")
    assert.same({ "age", "id", "mail", "name", "score", "seen", "tags", "vip" }, column_names(info))
    assert.same({ type = "INTEGER", pk = 1 }, info.id)
    assert.equal("TEXT", info.name.type)
    assert.equal("INTEGER", info.age.type)
    assert.equal("REAL", info.score.type)
    assert.same({ "id", "label" }, column_names(table_info(db, "tag")))
    assert.equal("id|INTEGER|1", sqlite3(db, "SELECT name, type, pk FROM pragma_table_info('tag') WHERE pk = 1"))
  end)

  it("gets a field added to a declaration as a new column on the next run, existing rows kept", function()
    helpers.write(dir .. "/job.lua", job_source('name = "text"', 'name = "name"'))
    assert.equal(0, run({ "job.lua", "run" }).code)
    local db = dir .. "/entsync.db"
    -- A row written by another program, not known to entsync.
    assert.equal("", sqlite3(db, "INSERT INTO contact (id, name) VALUES (50, 'Local only')"))
    assert.same({ "id", "name" }, column_names(table_info(db, "contact")))

    helpers.write(dir .. "/job.lua", job_source('name = "text", mail = "text"', 'name = "name", mail = "mail"'))
    -- check and status do not touch the tables.
    assert.equal(0, run({ "job.lua", "check" }).code)
    assert.equal(0, run({ "job.lua", "status" }).code)
    assert.same({ "id", "name" }, column_names(table_info(db, "contact")))

    local r = run({ "job.lua", "run" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "id", "mail", "name" }, column_names(table_info(db, "contact")))
    assert.equal("1|Ann|ann@example.org\n2|Bob|bob@example.org\n50|Local only|",
      sqlite3(db, "SELECT id, name, mail FROM contact ORDER BY id"))
  end)

  it("keeps a column and its data when the field is removed from the declaration", function()
    helpers.write(dir .. "/job.lua", job_source('name = "text", mail = "text"', 'name = "name", mail = "mail"'))
    assert.equal(0, run({ "job.lua", "run" }).code)
    helpers.write(dir .. "/job.lua", job_source('name = "text"', 'name = "name"'))
    helpers.write(dir .. "/contacts.ndjson", '{"id":1,"name":"Ann B"}\n{"id":2,"name":"Bob"}\n')
    local r = run({ "job.lua", "run" })
    assert.equal(0, r.code, r.stderr)
    local db = dir .. "/entsync.db"
    assert.same({ "id", "mail", "name" }, column_names(table_info(db, "contact")))
    assert.equal("1|Ann B|ann@example.org\n2|Bob|bob@example.org",
      sqlite3(db, "SELECT id, name, mail FROM contact ORDER BY id"))
  end)

  it("holds entsync's own tables, all prefixed entsync_, with the schema version", function()
    helpers.write(dir .. "/job.lua", job_source('name = "text"', 'name = "name"'))
    assert.equal(0, run({ "job.lua", "run" }).code)
    local db = dir .. "/entsync.db"
    assert.equal(table.concat(TABLES, "\n"),
      sqlite3(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'entsync%' ORDER BY name"))
    assert.equal(table.concat(VIEWS, "\n"),
      sqlite3(db, "SELECT name FROM sqlite_master WHERE type = 'view' AND name LIKE 'entsync%' ORDER BY name"))
    assert.equal("contact", sqlite3(db,
      "SELECT group_concat(name) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'entsync%'"))
    assert.equal("4", sqlite3(db, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
    assert.equal("contacts|run|ok|2", sqlite3(db, "SELECT sync, operation, status, created FROM entsync_history"))
    assert.equal("2", sqlite3(db, "SELECT count(*) FROM entsync_map WHERE sync = 'contacts'"))
  end)

  describe("with a schema version newer than this entsync knows", function()
    local db

    before_each(function()
      helpers.write(dir .. "/job.lua", job_source('name = "text"', 'name = "name"'))
      assert.equal(0, run({ "job.lua", "run" }).code)
      db = dir .. "/entsync.db"
      sqlite3(db, "UPDATE entsync_meta SET value = 99 WHERE key = 'schema_version'")
    end)

    it("fails with a clear message and leaves the store as it was", function()
      for _, command in ipairs({ "run", "status" }) do
        local r = run({ "job.lua", command })
        assert.are_not.equal(0, r.code)
        assert.matches("schema version 99", r.stderr)
        assert.matches("knows up to 4", r.stderr)
        assert.matches("upgrade entsync", r.stderr)
        assert.matches(db, r.stderr, 1, true)
        assert.is_nil(r.stderr:find("stack traceback", 1, true))
      end
      assert.equal("99", sqlite3(db, "SELECT value FROM entsync_meta WHERE key = 'schema_version'"))
      assert.equal("Ann\nBob", sqlite3(db, "SELECT name FROM contact ORDER BY id"))
    end)

    -- A store from a newer entsync is a problem of the job's setup, not a
    -- bug in entsync: a configuration error naming the job and the store.
    it("is reported as a problem with the store, not as an internal error at an entsync source line", function()
      local r = run({ "job.lua", "run" })
      assert.are_not.equal(4, r.code)
      assert.is_nil(r.stderr:find("internal error", 1, true))
      assert.is_nil(r.stderr:find("entsync/[%w_]+%.lua:%d+"))
      assert.matches("^entsync%-run: job%.lua: store ", r.stderr)
    end)
  end)
end)
