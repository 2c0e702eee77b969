-- A split sync: one remote record is a contact and its contact_profile,
-- linked by contact_profile.contact_id (the primary's id). Rows written by
-- another program (the sqlite3 shell) go out as ONE remote record; imports
-- update the same rows and never duplicate them; users join on the link.

local cjson = require "cjson"
local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local function records()
  return {
    { id = 1, email = "ann@example.com", name = "Ann", company = { name = "Acme", city = "Austin" },
      updated_at = "2026-01-02T00:00:01Z" },
    { id = 2, email = "bob@example.com", name = "Bob", company = { name = "Globex", city = "Boston" },
      updated_at = "2026-01-02T00:00:02Z" },
    { id = 3, email = "cy@example.com", name = "Cy", company = { name = "Initech", city = "Chicago" },
      updated_at = "2026-01-02T00:00:03Z" },
  }
end

local function write_job(dir, url)
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text" }',
    'entity "contact_profile" { company = "text", city = "text" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = "PUT", attempts = 2 }', url),
    'sync "contacts" { remote = api "api/contacts", entity = { "contact", "contact_profile" },',
    '  mapping = { contact = { email = "email", name = "name" },',
    '    contact_profile = { company = "company.name", city = "company.city" } },',
    '  import = { mode = "full", changed = "updated_at" }, export = { on_change = true } }',
  }, "\n") .. "\n")
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

-- contact joined with its profile on the link column, by contact id.
local function joined(dir)
  local out = {}
  for _, row in ipairs(T.query(dir, [[SELECT c.id, c.email, c.name, p.company, p.city, p.contact_id
      FROM contact c JOIN contact_profile p ON p.contact_id = c.id ORDER BY c.id]])) do
    out[row.id] = row
  end
  return out
end

describe("split sync", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = records() }, function(remote, tmp)
    server, dir = remote, tmp
    write_job(dir, server.url)
  end)

  it("an import fills the link column: contact_profile.contact_id is the contact's id, and joins", function()
    local r = ok_run(dir)
    assert.equal(3, T.counts(T.lines(r.stdout).contacts.import).created, r.stdout)
    assert.equal(3, T.value(dir, "SELECT count(*) FROM contact"))
    assert.equal(3, T.value(dir, "SELECT count(*) FROM contact_profile"))
    assert.equal(0, T.value(dir, "SELECT count(*) FROM contact_profile WHERE contact_id IS NULL"))
    local rows = joined(dir)
    for _, record in ipairs(records()) do
      local id = T.local_of(dir, "contacts", record.id)
      assert.is_not_nil(rows[id], "no joined row for remote " .. record.id)
      assert.same({ record.email, record.company.name, record.company.city, id },
        { rows[id].email, rows[id].company, rows[id].city, rows[id].contact_id })
    end
    -- one id-map row per remote record
    assert.equal(3, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'contacts'"))
    -- the sqlite3 shell joins the same way
    local text = X.sql(dir, "SELECT c.name || '@' || p.company FROM contact c JOIN contact_profile p "
      .. "ON p.contact_id = c.id ORDER BY c.name")
    assert.equal("Ann@Acme\nBob@Globex\nCy@Initech\n", text)
  end)

  it("a contact and its profile written by another program go out as one record, and come back without "
    .. "duplicates", function()
      ok_run(dir)
      X.sql(dir, "INSERT INTO contact (email, name) VALUES ('dee@example.com', 'Dee')")
      local dee = T.value(dir, "SELECT id FROM contact WHERE email = 'dee@example.com'")
      X.sql(dir, string.format("INSERT INTO contact_profile (company, city, contact_id) VALUES ('Hooli', 'Denver', %d)",
        dee))
      server.reset_log()
      local r = ok_run(dir)
      assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).created, r.stdout .. r.stderr)
      local writes = T.writes(server.log())
      assert.equal(1, #writes, r.stdout .. r.stderr)
      assert.same({ "POST", "/api/contacts" }, { writes[1].method, writes[1].path })
      local sent = cjson.decode(writes[1].body)
      assert.same({ email = "dee@example.com", name = "Dee", company = { name = "Hooli", city = "Denver" } }, sent)
      local remote_id = T.remote_of(dir, "contacts", dee)
      assert.equal(4, remote_id)
      assert.same({ name = "Hooli", city = "Denver" }, X.remote(server, "contacts")[4].company)
      -- the echo: found unchanged, nothing sent, nothing duplicated
      server.reset_log()
      r = ok_run(dir)
      local s = T.counts(T.lines(r.stdout).contacts.import)
      assert.same({ 0, 0, 4 }, { s.created, s.updated, s.unchanged }, r.stdout)
      assert.same({}, T.writes(server.log()))
      -- a remote change comes into the same two rows
      X.remote_put(server, "contacts", 4, { email = "dee@example.com", name = "Dee D",
        company = { name = "Hooli", city = "Dallas" } })
      server.reset_log()
      r = ok_run(dir)
      s = T.counts(T.lines(r.stdout).contacts.import)
      assert.same({ 0, 1 }, { s.created, s.updated }, r.stdout)
      assert.equal(1, T.value(dir, "SELECT count(*) FROM contact WHERE email = 'dee@example.com'"))
      assert.equal(1, T.value(dir, "SELECT count(*) FROM contact_profile WHERE contact_id = ?1", dee))
      assert.equal(4, T.value(dir, "SELECT count(*) FROM contact"))
      assert.equal(4, T.value(dir, "SELECT count(*) FROM contact_profile"))
      local row = joined(dir)[dee]
      assert.same({ "Dee D", "Hooli", "Dallas", dee }, { row.name, row.company, row.city, row.contact_id })
      assert.equal(4, T.value(dir, "SELECT count(*) FROM entsync_map WHERE sync = 'contacts'"))
      assert.equal(4, #server.data().contacts)
      -- and the import's writes are not sent back
      assert.same({}, T.writes(server.log(), "/api/contacts/4"))
    end)

  it("an edit of the profile alone is an update of the one remote record", function()
    ok_run(dir)
    local ann = T.local_of(dir, "contacts", 1)
    X.sql(dir, string.format("UPDATE contact_profile SET city = 'Amarillo' WHERE contact_id = %d", ann))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(1, T.counts(T.lines(r.stdout).contacts.export).updated, r.stdout .. r.stderr)
    local writes = T.writes(server.log())
    assert.equal(1, #writes)
    assert.same({ "PUT", "/api/contacts/1" }, { writes[1].method, writes[1].path })
    local sent = cjson.decode(writes[1].body)
    assert.same({ "Ann", "Acme", "Amarillo" }, { sent.name, sent.company.name, sent.company.city })
    assert.equal("Amarillo", X.remote(server, "contacts")[1].company.city)
    assert.equal(3, T.value(dir, "SELECT count(*) FROM contact_profile"))
  end)
end)
