-- The C record path writes a batch's creates many rows a statement. The
-- rows, their local ids (in input order), their id-map rows and the change
-- log must be what one statement a row gives: the Lua pipeline's, with
-- ENTSYNC_RECORD_PATH=lua. A second sync exporting the entity sends every
-- imported record on, and the importing sync sends none back.

local cjson = require "cjson"
local helpers = require "helpers"

describe("creates written many rows a statement", function()
  local dirs = {}

  after_each(function()
    for _, dir in ipairs(dirs) do helpers.rmdir(dir) end
    dirs = {}
  end)

  local N = 150 -- more than two statements' worth of rows, and a remainder

  local function setup()
    local dir = helpers.tmpdir()
    dirs[#dirs + 1] = dir
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

  local function dump(dir)
    local db = dir .. "/entsync.db"
    return {
      contact = helpers.query(db, "SELECT * FROM contact ORDER BY id"),
      note = helpers.query(db, "SELECT * FROM note ORDER BY id"),
      idmap = helpers.query(db, "SELECT key, sync, local_id, remote_id, changed, hash, raw_hash, version, seen_pass, "
        .. "gone_at FROM entsync_idmap ORDER BY key"),
      changes = helpers.query(db, "SELECT entity, local_id, operation FROM entsync_changes ORDER BY seq"),
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
end)
