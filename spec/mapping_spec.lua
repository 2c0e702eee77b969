-- Mapping tables: remote paths, field tables with callbacks, defaults and
-- required fields, coercion to the declared local types, mapping modules
-- beside the job, `check`'s validation of mappings, splits (one record,
-- several entities) and the filter / after_map hooks. The direct Lua API
-- (entsync.mapping, entsync.job) where it is a unit; the real entsync-run
-- binary on job folders in temp dirs for everything else.

local cjson = require "cjson"
local errors = require "entsync.errors"
local helpers = require "helpers"
local job_module = require "entsync.job"
local mapping = require "entsync.mapping"
local T = require "mapping_support"

local null = cjson.null

local function exists(path)
  return require("entsync.core").fs.exists(path) ~= false
end

-- A configuration error: exit 2, one line on stderr matching pattern,
-- nothing run, no store created.
local function assert_config_error(dir, r, pattern)
  assert.equal(2, r.code, r.stderr)
  assert.equal(1, T.lines(r.stderr), r.stderr)
  assert.matches("^entsync%-run: ", r.stderr)
  assert.matches(pattern, r.stderr)
  assert.is_nil(r.stderr:find("traceback", 1, true))
  assert.equal("", r.stdout)
  assert.is_false(exists(T.db(dir)))
end

-- Loads a job file through the Lua API and gives the compiled mapping of
-- one of its syncs.
local function compiled(dir, source, sync)
  local path = T.job(dir, source)
  local job = job_module.load(path)
  return job.syncs[sync or "contacts"].mapping, path
end

-- The entity error apply raises for record.
local function apply_error(m, record)
  local ok, e = pcall(mapping.apply, m, record, {})
  assert.is_false(ok, "expected an entity error")
  assert.is_true(errors.is(e, "entity"), tostring(e))
  return e.message
end

after_each(T.cleanup)

describe("remote paths", function()
  it("compile to lists of keys: names, nested names and 1-based list indexes", function()
    assert.same({ "email" }, mapping.compile_path("email"))
    assert.same({ "company", "name" }, mapping.compile_path("company.name"))
    assert.same({ "addresses", 1, "city" }, mapping.compile_path("addresses[1].city"))
    assert.same({ "m", 2, 3 }, mapping.compile_path("m[2][3]"))
    assert.same({ "a_b", "c1" }, mapping.compile_path("a_b.c1"))
  end)

  it("reject what is no path", function()
    for _, bad in ipairs({ "", ".", "a[x]", "a[1]b", "a[-1]", "a[]" }) do
      assert.is_nil(mapping.compile_path(bad), bad)
    end
  end)

  it("read a record, giving nil where a step is missing or not a table", function()
    local record = { company = { name = "Acme" }, addresses = { { city = "Oslo" }, { city = "Rome" } }, n = 5 }
    assert.equal("Acme", mapping.get_path(record, mapping.compile_path("company.name")))
    assert.equal("Rome", mapping.get_path(record, mapping.compile_path("addresses[2].city")))
    assert.is_nil(mapping.get_path(record, mapping.compile_path("addresses[3].city")))
    assert.is_nil(mapping.get_path(record, mapping.compile_path("missing.name")))
    assert.is_nil(mapping.get_path(record, mapping.compile_path("n.value")))
  end)
end)

describe("coercion to the declared local type", function()
  local coerce = mapping.coerce

  it("text: strings, numbers (whole floats without .0) and booleans", function()
    assert.equal("x", coerce.text("x"))
    assert.equal("42", coerce.text(42))
    assert.equal("3", coerce.text(3.0))
    assert.equal("2.5", coerce.text(2.5))
    assert.equal("true", coerce.text(true))
    assert.is_nil(coerce.text({}))
  end)

  it("integer: integers, whole floats, integer text and booleans", function()
    assert.equal(42, coerce.integer(42))
    assert.equal(3, coerce.integer(3.0))
    assert.equal("integer", math.type(coerce.integer(3.0)))
    assert.equal(-7, coerce.integer("  -7 "))
    assert.equal(1, coerce.integer(true))
    assert.equal(0, coerce.integer(false))
    for _, bad in ipairs({ 3.5, "yes", "1.5", "", {} }) do assert.is_nil(coerce.integer(bad), tostring(bad)) end
  end)

  it("real: numbers and numeric text, always a float", function()
    assert.equal("float", math.type(coerce.real(2)))
    assert.equal(2.5, coerce.real("2.5"))
    assert.equal(-1.0, coerce.real("-1"))
    for _, bad in ipairs({ "abc", true, {} }) do assert.is_nil(coerce.real(bad), tostring(bad)) end
  end)

  it("boolean: booleans, 1 and 0, and the usual words", function()
    assert.is_true(coerce.boolean(true))
    assert.is_true(coerce.boolean(1))
    assert.is_false(coerce.boolean(0.0))
    assert.is_true(coerce.boolean("Yes"))
    assert.is_false(coerce.boolean("off"))
    for _, bad in ipairs({ 2, "maybe", {} }) do assert.is_nil(coerce.boolean(bad), tostring(bad)) end
  end)

  it("json: anything", function()
    local t = { 1, 2 }
    assert.equal(t, coerce.json(t))
    assert.equal("x", coerce.json("x"))
  end)

  it("timestamp: epochs become ISO 8601 UTC; ISO text is kept; other text is rejected", function()
    assert.equal("2026-01-02T03:04:05Z", coerce.timestamp(1767323045))
    assert.equal("2026-01-02T03:04:05.500Z", coerce.timestamp(1767323045.5))
    assert.equal("2026-01-02T05:04:05+02:00", coerce.timestamp("2026-01-02T05:04:05+02:00"))
    assert.equal("2026-01-02", coerce.timestamp("2026-01-02"))
    assert.is_nil(coerce.timestamp("yesterday"))
    assert.is_nil(coerce.timestamp(true))
  end)

  it("timestamp: an epoch outside the years 0001 to 9999 (which ISO 8601's four digits write) is no timestamp", function()
    assert.equal("0001-01-01T00:00:00Z", coerce.timestamp(-62135596800))
    assert.equal("9999-12-31T23:59:59.999Z", coerce.timestamp(253402300799.999))
    -- beyond them: an integer whose milliseconds overflow (2^63 - 1 was
    -- written as 1969-12-31T23:59:59Z), a float os.date refuses (1e300
    -- raised its error, naming neither the field nor the mapping), a
    -- year of nine digits (1e16)
    for _, epoch in ipairs({ -62135596801, 253402300800, math.maxinteger, math.mininteger, 1e300, -1e300, 2^63, 1e16 }) do
      assert.is_nil(coerce.timestamp(epoch), tostring(epoch))
    end
  end)

  it("timestamp: entsync-run fails an entity whose epoch is out of range, naming the field and the mapping line", function()
    local dir = T.dir()
    T.job(dir, [[
entity "event" { at = "timestamp" }
local files = provider "ndjson" { dir = "data" }
sync "events" { remote = files "events.ndjson", entity = "event",
  mapping = { at = "at" } }
]])
    T.data(dir, "events", { '{"id":1,"at":1700000000}', '{"id":2,"at":1e300}', '{"id":3,"at":9223372036854775807}' })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.same({ 1, 2 }, { T.summary(r.stdout, "events").created, T.summary(r.stdout, "events").failed })
    assert.matches("events 2: field at: expected timestamp, got 1e%+300 %(job%.lua:4%)", r.stderr)
    assert.matches("events 3: field at: expected timestamp, got 9223372036854775807 %(job%.lua:4%)", r.stderr)
    assert.same({ { at = "2023-11-14T22:13:20Z" } }, T.query(dir, "SELECT at FROM event"))
  end)
end)

describe("compiled mappings (Lua API)", function()
  local dir
  before_each(function() dir = T.dir() end)

  it("apply paths, defaults, JSON null and coercion", function()
    local m = compiled(dir, [[
entity "contact" { email = "text", age = "integer", city = "text", vip = "boolean", score = "real" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "c.ndjson", entity = "contact",
  mapping = { email = "email", age = { "age", default = 18 }, city = "addresses[1].city",
              vip = { path = "flags.vip", default = false }, score = "score" } }
]])
    local out = mapping.apply(m, { email = "a@x", age = "42", addresses = { { city = "Oslo" } },
      flags = { vip = "yes" }, score = 3 }, {})
    assert.same({ contact = { email = "a@x", age = 42, city = "Oslo", vip = true, score = 3.0 } }, out)
    assert.equal("float", math.type(out.contact.score))
    out = mapping.apply(m, { email = "b@x", age = null, flags = { vip = null } }, {})
    assert.same({ contact = { email = "b@x", age = 18, vip = false } }, out)
  end)

  it("raise entity errors naming the field, the problem and the mapping line", function()
    local m, path = compiled(dir, [[
entity "contact" { email = "text", age = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "c.ndjson", entity = "contact",
  mapping = {
    email = { "email", required = true },
    age = "age",
  } }
]])
    assert.equal(string.format("field email: required value missing at email (%s:5)", path),
      apply_error(m, { age = 3 }))
    assert.equal(string.format('field age: expected integer, got "x" (%s:6)', path),
      apply_error(m, { email = "a", age = "x" }))
    assert.equal(string.format("field age: expected integer, got 2.5 (%s:6)", path),
      apply_error(m, { email = "a", age = 2.5 }))
  end)

  it("behave the same when too wide to be generated (interpreted mappings)", function()
    local fields, maps = {}, {}
    for i = 1, 160 do
      fields[#fields + 1] = string.format("f%d = \"integer\"", i)
      maps[#maps + 1] = string.format("f%d = { \"v.f%d\", default = %d }", i, i, -i)
    end
    local m, path = compiled(dir, string.format([[
entity "wide" { %s, name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "c.ndjson", entity = "wide",
  mapping = { %s,
    name = { "name", required = true } } }
]], table.concat(fields, ", "), table.concat(maps, ", ")))
    local record = { name = "w", v = { f1 = "10", f2 = 20.0, f3 = null } }
    local out = mapping.apply(m, record, {}).wide
    assert.equal(10, out.f1)
    assert.equal("integer", math.type(out.f2))
    assert.equal(-3, out.f3)
    assert.equal(-160, out.f160)
    assert.equal("w", out.name)
    assert.equal(string.format("field name: required value missing at name (%s:5)", path), apply_error(m, { v = {} }))
    assert.matches('^field f7: expected integer, got "seven"', apply_error(m, { name = "w", v = { f7 = "seven" } }))
  end)
end)

describe("mapping tables", function()
  local dir
  before_each(function() dir = T.dir() end)

  it("map remote paths into local fields: names, nested names and list elements", function()
    T.job(dir, [[
entity "contact" { email = "text", company = "text", city = "text", second = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = { email = "email", company = "company.name", city = "addresses[1].city", second = "addresses[2].city" } }
]])
    T.data(dir, "contacts", {
      { id = 1, email = "a@x", company = { name = "Acme" }, addresses = { { city = "Oslo" }, { city = "Rome" } } },
      { id = 2, email = "b@x", company = "not a table", addresses = {} },
      { id = 3 },
    })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({
      { email = "a@x", company = "Acme", city = "Oslo", second = "Rome" },
      { email = "b@x" },
      {},
    }, T.query(dir, "SELECT email, company, city, second FROM contact ORDER BY id"))
  end)

  it("find a mapping module beside the job first (mapping = \"mappings.contact\")", function()
    -- entsync's own mappings/contact.lua maps contact_profile, which this
    -- job does not declare: were it found instead, the job would not load.
    T.file(dir, "mappings/contact.lua", 'return { email = "mail", name = "full_name" }\n')
    T.job(dir, [[
entity "contact" { email = "text", name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.contact" }
]])
    T.data(dir, "contacts", { { id = 1, mail = "a@x", full_name = "Ann" } })
    local r = T.run(dir, "check")
    assert.equal(0, r.code, r.stderr)
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { email = "a@x", name = "Ann" } }, T.query(dir, "SELECT email, name FROM contact"))
  end)

  it("find the module beside the job when the job is run from another folder", function()
    T.file(dir, "mappings/people.lua", 'return { email = "mail" }\n')
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.people" }
]])
    T.data(dir, "contacts", { { id = 1, mail = "a@x" } })
    local elsewhere = T.dir()
    local r = helpers.run(elsewhere, { dir .. "/job.lua", "run", "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ { email = "a@x" } }, T.query(dir, "SELECT email FROM contact"))
  end)

  it("a mapping module that cannot be found is a config error naming the job line", function()
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }

sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.nowhere" }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:4: sync "contacts": mapping "mappings.nowhere" not found:')
  end)

  it("a mapping module with a syntax error or that returns no table is a config error naming it", function()
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.broken" }
]])
    T.file(dir, "mappings/broken.lua", "return {\n  email = = \"x\",\n}\n")
    assert_config_error(dir, T.run(dir, "check"), "mappings/broken%.lua:2:")
    T.file(dir, "mappings/broken.lua", "-- nothing\nreturn 5\n")
    assert_config_error(dir, T.run(dir, "check"), "mappings/broken%.lua:1: mapping must return a table, got number")
  end)

  it("pass callbacks (value, record, ctx): ctx names the sync, entities and remote id, and logs", function()
    T.job(dir, [[
entity "user" { email = "text", note = "text", whole = "text" }
entity "profile" { phone = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = {
    user = {
      email = "email",
      note = { "email", import = function(value, record, ctx)
        ctx:log("mapping " .. value)
        return table.concat({ value, record.name, ctx.sync, ctx.entity, table.concat(ctx.entities, "+"),
          ctx.remote_id }, "|")
      end },
      whole = function(record) return record.name .. "/" .. record.phone end,
    },
    profile = { phone = "phone" },
  } }
]])
    T.data(dir, "accounts", { { id = "a7", email = "a@x", name = "Ann", phone = "555" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { email = "a@x", note = "a@x|Ann|accounts|user|user+profile|a7", whole = "Ann/555" } },
      T.query(dir, "SELECT email, note, whole FROM user"))
    assert.matches("accounts a7: mapping a@x", r.stderr, 1, true)
  end)

  it("a callback that raises fails that entity, naming the field and line; the run goes on", function()
    T.job(dir, [[
entity "contact" { email = "text", n = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = {
    email = "email",
    n = { "n", import = function(v) if v == 13 then error("unlucky number") end return v end },
  } }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x", n = 1 }, { id = 2, email = "b@x", n = 13 }, { id = 3, n = 3 } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local c = T.summary(r.stdout)
    assert.same({ 2, 1 }, { c.created, c.failed })
    assert.matches("contacts 2: field n: job%.lua:6: unlucky number %(job%.lua:6%)", r.stderr)
    assert.is_nil(r.stderr:find("traceback", 1, true))
    assert.matches("^field n: job%.lua:6: unlucky number", T.failures(dir, "contacts")["2"].error)
  end)

  it("a callback that raises a value other than text is named by that value, never by its address", function()
    T.job(dir, [[
entity "contact" { n = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = {
    n = { "n", import = function(v)
      if v == 1 then error({ code = 7, why = "over quota" }) end
      if v == 2 then error(setmetatable({}, { __tostring = function() return "a quota error" end })) end
      if v == 3 then error(print) end
      error(42)
    end },
  } }
]])
    T.data(dir, "contacts", { { id = 1, n = 1 }, { id = 2, n = 2 }, { id = 3, n = 3 }, { id = 4, n = 4 } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.is_nil(r.stderr:find("0x", 1, true), r.stderr)
    local failures = T.failures(dir, "contacts")
    assert.equal('field n: raised {"code":7,"why":"over quota"} (job.lua:5)', failures["1"].error)
    assert.equal("field n: a quota error (job.lua:5)", failures["2"].error)
    assert.equal("field n: raised a function (job.lua:5)", failures["3"].error)
    assert.equal("field n: 42 (job.lua:5)", failures["4"].error)
  end)

  it("an export callback that raises a table is named by its content too", function()
    helpers.write(dir .. "/out/.keep", "")
    T.job(dir, [[
entity "contact" { name = "text" }
local out = provider "ndjson" { dir = "out" }
sync "contacts" { remote = out, entity = "contact", import = false, export = { resource = "sink.ndjson" },
  mapping = {
    name = { "name", export = function(v) error({ refused = v }) end },
  } }
]])
    assert.equal(0, T.run(dir, "run").code)
    T.sqlite(dir, "INSERT INTO contact (name) VALUES ('Ann')")
    local r = T.run(dir, "export", "contacts", "1")
    assert.equal(1, r.code, r.stderr)
    assert.is_nil(r.stderr:find("0x", 1, true), r.stderr)
    local failure = T.query(dir, "SELECT error FROM entsync_failed WHERE sync = 'contacts' AND direction = 'export'")[1]
    assert.equal('field name: export: raised {"refused":"Ann"} (job.lua:5)', failure.error)
  end)

  it("coerce values to each declared type and store them as SQLite types", function()
    T.job(dir, [[
entity "thing" { t = "text", i = "integer", r = "real", b = "boolean", j = "json", ts = "timestamp",
  as_ts = "text", as_int = "text" }
local files = provider "ndjson" { dir = "data" }
sync "things" { remote = files "things.ndjson", entity = "thing",
  mapping = { t = "t", i = "i", r = "r", b = "b", j = "j", ts = "ts",
    as_ts = { "epoch", type = "timestamp" }, as_int = { "count", type = "integer" } } }
]])
    T.data(dir, "things", {
      { id = 1, t = 42, i = "7", r = "2.5", b = "yes", j = { a = { 1, 2 } }, ts = 1767323045, epoch = 0, count = 3.0 },
      { id = 2, t = "x", i = 8.0, r = 3, b = 0, j = "text", ts = "2026-01-02T05:04:05+02:00", epoch = 1.25 },
      { id = 3, t = true, i = true, b = true, j = { 1, "two" } },
    })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({
      { t = "42", tt = "text", i = 7, it = "integer", r = 2.5, rt = "real", b = 1, bt = "integer", j = '{"a":[1,2]}',
        ts = "2026-01-02T03:04:05Z", as_ts = "1970-01-01T00:00:00Z", as_int = "3" },
      { t = "x", tt = "text", i = 8, it = "integer", r = 3.0, rt = "real", b = 0, bt = "integer", j = '"text"',
        ts = "2026-01-02T05:04:05+02:00", as_ts = "1970-01-01T00:00:01.250Z" },
      { t = "true", tt = "text", i = 1, it = "integer", rt = "null", b = 1, bt = "integer", j = '[1,"two"]' },
    }, T.query(dir, [[SELECT t, typeof(t) AS tt, i, typeof(i) AS it, r, typeof(r) AS rt, b, typeof(b) AS bt, j, ts,
      as_ts, as_int FROM thing ORDER BY id]]))
  end)

  it("a value that cannot be coerced fails its entity with field, value and mapping line; exit 1, no crash", function()
    T.file(dir, "mappings/contact.lua", [[
-- contacts from the CRM
return {
  email  = "email",
  name   = "name",
  score  = "score",
  vip    = "vip",
  status = "status",
  seen   = "seen",
}
]])
    T.job(dir, [[
entity "contact" { email = "text", name = "text", score = "real", vip = "boolean", status = "integer", seen = "timestamp" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.contact" }
]])
    T.data(dir, "contacts", {
      { id = "c1", email = "a@x", status = 1 },
      { id = "c42", email = "b@x", status = "yes" },
      { id = "c43", score = "high" },
      { id = "c44", vip = "maybe" },
      { id = "c45", seen = "yesterday" },
      { id = "c46", name = { first = "Ann" } },
      { id = "c47", status = 2.5 },
      { id = "c48", email = "z@x", status = "3" },
    })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local c = T.summary(r.stdout)
    assert.same({ 2, 6 }, { c.created, c.failed })
    assert.is_nil(r.stderr:find("traceback", 1, true))
    assert.is_nil(r.stderr:find("internal error", 1, true))
    local file = "%(%.?/?mappings/contact%.lua:"
    assert.matches('contacts c42: field status: expected integer, got "yes" ' .. file .. "7%)", r.stderr)
    assert.matches('contacts c43: field score: expected real, got "high" ' .. file .. "5%)", r.stderr)
    assert.matches('contacts c44: field vip: expected boolean, got "maybe" ' .. file .. "6%)", r.stderr)
    assert.matches('contacts c45: field seen: expected timestamp, got "yesterday" ' .. file .. "8%)", r.stderr)
    assert.matches("contacts c46: field name: expected text, got a table " .. file .. "4%)", r.stderr)
    assert.matches("contacts c47: field status: expected integer, got 2.5 " .. file .. "7%)", r.stderr)
    local failures = T.failures(dir, "contacts")
    assert.matches('^field status: expected integer, got "yes" ' .. file .. "7%)$", failures.c42.error)
    assert.same({ email = "b@x", id = "c42", status = "yes" }, cjson.decode(failures.c42.payload))
    assert.same({ { email = "a@x", status = 1 }, { email = "z@x", status = 3 } },
      T.query(dir, "SELECT email, status FROM contact ORDER BY id"))
    -- the failed entity goes through once its remote value is fixed
    T.data(dir, "contacts", { { id = "c42", email = "b@x", status = "4" } })
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.is_nil(T.failures(dir, "contacts").c42)
  end)

  it("required fields: a missing or null value fails the entity; a default fills a missing value", function()
    T.job(dir, [[
entity "contact" { email = "text", country = "text", age = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = {
    email = { "email", required = true },
    country = { "address.country", default = "NO" },
    age = { "age", default = 0, required = true },
  } }
]])
    T.data(dir, "contacts", {
      { id = 1, email = "a@x", address = { country = "SE" }, age = 30 },
      { id = 2, email = "b@x" },
      { id = 3, email = null, address = { country = null } },
      { id = 4 },
    })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.same({ 2, 2 }, { T.summary(r.stdout).created, T.summary(r.stdout).failed })
    assert.matches("contacts 3: field email: required value missing at email %(job%.lua:5%)", r.stderr)
    assert.matches("contacts 4: field email: required value missing at email %(job%.lua:5%)", r.stderr)
    assert.same({ { email = "a@x", country = "SE", age = 30 }, { email = "b@x", country = "NO", age = 0 } },
      T.query(dir, "SELECT email, country, age FROM contact ORDER BY id"))
  end)

  it("a field with only a default (no path, no callback) stores the default", function()
    T.job(dir, [[
entity "contact" { email = "text", source = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = { email = "email", source = { default = "crm" } } }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { email = "a@x", source = "crm" } }, T.query(dir, "SELECT email, source FROM contact"))
  end)
end)

describe("check validates mappings against the entity declarations", function()
  local dir
  before_each(function()
    dir = T.dir()
    T.job(dir, [[
local map = require "entsync.map"
entity "tag" { name = "text" }
entity "contact" { email = "text", name = "text", status = "integer", tags = "json" }
local files = provider "ndjson" { dir = "data" }
sync "tags" { remote = files "tags.ndjson", entity = "tag", mapping = { name = "name" } }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = "mappings.contact" }
]])
  end)

  -- Writes mappings/contact.lua and expects check (and run) to fail with
  -- message at that file's line.
  local function expect(source, line, message)
    T.file(dir, "mappings/contact.lua", source)
    local pattern = "^entsync%-run: %.?/?mappings/contact%.lua:" .. line .. ': sync "contacts": ' .. message .. "\n$"
    assert_config_error(dir, T.run(dir, "check"), pattern)
    assert_config_error(dir, T.run(dir, "run"), pattern)
  end

  it("passes a valid mapping: exit 0, the summary of the job, no store created", function()
    T.file(dir, "mappings/contact.lua", [[
local map = require "entsync.map"
return {
  email = "email",
  name = { "name", import = map.trim, export = map.trim, default = "", required = true, type = "text" },
  status = { "active", import = map.bool_to_int },
  tags = { "tags", import = map.refs "tags" },
}
]])
    -- check looks at the input files too: they are there
    T.data(dir, "tags", {})
    T.data(dir, "contacts", {})
    local r = T.run(dir, "check")
    assert.equal(0, r.code, r.stderr)
    assert.matches("^job job%.lua: ok\n", r.stdout)
    assert.equal("", r.stderr)
    assert.is_false(exists(T.db(dir)))
  end)

  it("an unknown local field", function()
    expect('return {\n  email = "email",\n\n  mail = "mail",\n}\n', 4,
      'field "mail" is not declared in entity "contact"')
  end)

  it("a callback that is not a function", function()
    expect('return {\n  email = "email",\n  name = { "name", import = "trim" },\n}\n', 3,
      'field "name": import must be a function, got string')
    expect('return {\n  email = "email",\n  name = { "name",\n    export = 42 },\n}\n', 3,
      'field "name": export must be a function or false, got number')
  end)

  it("an unknown sync in a reference", function()
    expect('local map = require "entsync.map"\nreturn {\n  email = "email",\n  tags = { "tags", import = map.refs "nope" },\n}\n',
      4, 'field "tags": refs names sync "nope", which is not declared')
  end)

  it("an unknown sync in a reference inside map.chain", function()
    expect('local map = require "entsync.map"\nreturn {\n  email = "email",\n'
      .. '  tags = { "tags", import = map.chain(map.split(","), map.refs "nope") },\n}\n',
      4, 'field "tags": refs names sync "nope", which is not declared')
  end)

  it("a required field with no path", function()
    expect('return {\n  email = "email",\n  name = { required = true },\n}\n', 3,
      'field "name" is required but has no path')
  end)

  it("an unknown option in a field table", function()
    expect('return {\n  email = "email",\n  name = { "name", requird = true },\n}\n', 3,
      'field "name": unknown option "requird"')
  end)

  it("an unknown type override", function()
    expect('return {\n  email = "email",\n  status = { "status", type = "int" },\n}\n', 3,
      'field "status": unknown type "int"')
  end)

  it("a path that is no path, and a value that is neither path, function nor table", function()
    expect('return {\n  email = "emails[first]",\n}\n', 2,
      'field "email": "emails%[first%]" is not a remote path %(name%.name%[1%]%.name%)')
    expect('return {\n  email = "email",\n  status = 5,\n}\n', 3,
      'field "status": expected a remote path, a function or a table, got number')
  end)

  it("errors in inline mappings name the job file and the line of the field", function()
    T.job(dir, [[
entity "contact" { email = "text", name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = {
    email = "email",
    nmae = "name",
  } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:6: sync "contacts": field "nmae" is not declared in entity "contact"\n$')
  end)

  it("errors in a split mapping name the entity the sync does not write, or the one it lacks", function()
    T.job(dir, [[
entity "user" { name = "text" }
entity "profile" { phone = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = {
    user = { name = "name" },
    profiles = { phone = "phone" },
  } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:7: sync "accounts": mapping names entity "profiles", which the sync does not write\n$')
    T.job(dir, [[
entity "user" { name = "text" }
entity "profile" { phone = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = { user = { name = "name" } } }
]])
    assert_config_error(dir, T.run(dir, "check"), 'sync "accounts": mapping has no table for entity "profile"\n$')
  end)

  it("errors in the second of two inline split mappings name the second one's line", function()
    T.job(dir, [[
entity "user" { name = "text" }
entity "profile" { phone = "text" }
local files = provider "ndjson" { dir = "data" }
sync "a" { remote = files "a.ndjson", entity = { "user", "profile" },
  mapping = { user = { name = "name" }, profile = { phone = "phone" } } }
sync "b" { remote = files "b.ndjson", entity = { "user", "profile" },
  mapping = {
    user = { name = "name" },
    profile = { phone = { "phone", import = 5 } },
  } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:9: sync "b": field "phone": import must be a function, got number\n$')
  end)
end)

describe("a split: one remote record, several local entities", function()
  local dir
  before_each(function()
    dir = T.dir()
    T.job(dir, [[
entity "user" { name = "text", email = "text" }
entity "profile" { phone = "text", company = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = {
    user = { name = "name", email = "email" },
    profile = { phone = "phone", company = "company.name" },
  } }
]])
  end)

  local function users() return T.query(dir, "SELECT id, name, email FROM user ORDER BY id") end
  local function profiles() return T.query(dir, "SELECT id, phone, company FROM profile ORDER BY id") end

  it("creates and updates the entities together, linked by one remote id in the id map", function()
    T.data(dir, "accounts", {
      { id = 10, name = "Ann", email = "a@x", phone = "1", company = { name = "Acme" } },
      { id = 20, name = "Bob", email = "b@x", phone = "2" },
    })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(2, T.summary(r.stdout, "accounts").created)
    assert.same({ { id = 1, name = "Ann", email = "a@x" }, { id = 2, name = "Bob", email = "b@x" } }, users())
    assert.same({ { id = 1, phone = "1", company = "Acme" }, { id = 2, phone = "2" } }, profiles())
    -- one id-map row per remote record, keyed by the primary entity (user);
    -- the profile carries the user's id in its link column
    assert.same({ { local_id = 1, remote_id = 10 }, { local_id = 2, remote_id = 20 } },
      T.query(dir, "SELECT local_id, remote_id FROM entsync_map WHERE sync = 'accounts' ORDER BY remote_id"))
    assert.same({ { id = 1, user_id = 1 }, { id = 2, user_id = 2 } }, T.query(dir, "SELECT id, user_id FROM profile ORDER BY id"))
    assert.equal(1, T.local_id(dir, "accounts", 10, "profile", "user"))
    assert.equal(2, T.local_id(dir, "accounts", 20, "profile", "user"))
    -- a change to either part updates both rows of that record, in place
    T.data(dir, "accounts", {
      { id = 10, name = "Ann", email = "a@x", phone = "1", company = { name = "Acme" } },
      { id = 20, name = "Bob", email = "b@x", phone = "22" },
    })
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    local c = T.summary(r.stdout, "accounts")
    assert.same({ 0, 1, 1 }, { c.created, c.updated, c.unchanged })
    assert.same({ { id = 1, phone = "1", company = "Acme" }, { id = 2, phone = "22" } }, profiles())
    assert.equal(2, #users())
    assert.equal(2, T.count(dir, "entsync_map", "sync = 'accounts'"))
    assert.same({ { id = 1, user_id = 1 }, { id = 2, user_id = 2 } }, T.query(dir, "SELECT id, user_id FROM profile ORDER BY id"))
  end)

  it("writes neither entity of a record when writing one fails, and stores the failure", function()
    T.data(dir, "accounts", {
      { id = 10, name = "Ann", email = "a@x", phone = "1" },
      { id = 20, name = "Bob", email = "b@x", phone = "2" },
    })
    assert.equal(0, T.run(dir, "run").code)
    -- another program's rule: the profile table rejects the phone "bad"
    T.sqlite(dir, [[
      CREATE TRIGGER profile_no_bad_insert BEFORE INSERT ON profile WHEN NEW.phone = 'bad'
        BEGIN SELECT RAISE(ABORT, 'phone rejected'); END;
      CREATE TRIGGER profile_no_bad_update BEFORE UPDATE ON profile WHEN NEW.phone = 'bad'
        BEGIN SELECT RAISE(ABORT, 'phone rejected'); END;]])
    local idmap_before = T.query(dir, "SELECT * FROM entsync_map ORDER BY remote_id")
    T.data(dir, "accounts", {
      { id = 10, name = "Ann Changed", email = "a@x", phone = "11" },
      { id = 20, name = "Bob Changed", email = "b@x", phone = "bad" },
      { id = 30, name = "Cy", email = "c@x", phone = "bad" },
      { id = 40, name = "Dee", email = "d@x", phone = "4" },
    })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local c = T.summary(r.stdout, "accounts")
    assert.same({ 1, 1, 2 }, { c.created, c.updated, c.failed })
    assert.is_nil(r.stderr:find("traceback", 1, true))
    assert.matches("accounts 20 %(local user %d+%): [^\n]*phone rejected", r.stderr)
    assert.matches("accounts 30: [^\n]*phone rejected", r.stderr)
    -- record 20: the user row was not updated either; record 30: no user row
    assert.same({
      { id = 1, name = "Ann Changed", email = "a@x" }, { id = 2, name = "Bob", email = "b@x" },
      { id = 3, name = "Dee", email = "d@x" },
    }, users())
    assert.same({ { id = 1, phone = "11" }, { id = 2, phone = "2" }, { id = 3, phone = "4" } }, profiles())
    local idmap = T.query(dir, "SELECT * FROM entsync_map WHERE remote_id = 20")
    assert.equal(1, #idmap)
    assert.equal(idmap_before[2].hash, idmap[1].hash)
    assert.equal(0, T.count(dir, "entsync_map", "CAST(remote_id AS TEXT) = '30'"))
    local failures = T.failures(dir, "accounts")
    assert.matches("phone rejected", failures["20"].error)
    assert.matches("phone rejected", failures["30"].error)
    assert.matches('"Bob Changed"', failures["20"].payload)
    -- the other program relents: both go through on the next run
    T.sqlite(dir, "DROP TRIGGER profile_no_bad_insert; DROP TRIGGER profile_no_bad_update;")
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, T.count(dir, "entsync_failures"))
    assert.equal("Bob Changed", T.value(dir, "SELECT name FROM user WHERE id = 2"))
    assert.equal(4, T.count(dir, "user"))
    assert.equal(4, T.count(dir, "profile"))
  end)

  -- A rule of another program that rejects profile phone "bad".
  local function reject_bad_phones()
    T.sqlite(dir, [[CREATE TRIGGER profile_no_bad BEFORE INSERT ON profile WHEN NEW.phone = 'bad'
      BEGIN SELECT RAISE(ABORT, 'phone rejected'); END;]])
  end

  local function occurrences(text, plain)
    local n, from = 0, 1
    while true do
      local at = text:find(plain, from, true)
      if not at then return n end
      n, from = n + 1, at + #plain
    end
  end

  it("reports each failure once when a later write in the same batch fails", function()
    T.job(dir, [[
entity "user" { name = "text", email = "text", n = "integer" }
entity "profile" { phone = "text", company = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = {
    user = { name = { "name", import = function(v, r, ctx) ctx:log("mapping " .. v) return v end }, email = "email",
             n = "n" },
    profile = { phone = "phone", company = "company.name" },
  } }
]])
    T.data(dir, "accounts", { { id = 10, name = "Ann", phone = "1" } })
    assert.equal(0, T.run(dir, "run").code)
    reject_bad_phones()
    T.data(dir, "accounts", {
      { id = 20, name = "Bob", n = "x" },   -- fails in its mapping
      { id = 30, name = "Cy", phone = "bad" }, -- fails in its write
      { id = 40, name = "Dee", phone = "4" },
    })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local c = T.summary(r.stdout, "accounts")
    assert.same({ 1, 2 }, { c.created, c.failed })
    assert.equal(1, occurrences(r.stderr, 'accounts 20: field n: expected integer, got "x"'), r.stderr)
    assert.equal(1, occurrences(r.stderr, "accounts 30: store "), r.stderr)
    assert.equal(1, occurrences(r.stderr, "accounts 30: mapping Cy"), r.stderr)
    assert.equal(1, occurrences(r.stderr, "accounts 40: mapping Dee"), r.stderr)
  end)

  it("a write the store rejects is stored with the store's reason, not entsync's own source position", function()
    T.data(dir, "accounts", { { id = 10, name = "Ann", phone = "1" } })
    assert.equal(0, T.run(dir, "run").code)
    reject_bad_phones()
    T.data(dir, "accounts", { { id = 30, name = "Cy", phone = "bad" } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local err = T.failures(dir, "accounts")["30"].error
    assert.matches("phone rejected", err)
    assert.is_nil(err:find("lua/entsync/", 1, true), err)
    assert.is_nil(r.stderr:find("lua/entsync/", 1, true), r.stderr)
  end)
end)

describe("hooks", function()
  local dir
  before_each(function() dir = T.dir() end)

  it("filter(record, ctx) returning false skips the record: nothing written, reported as filtered out", function()
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email" },
  filter = function(record, ctx)
    assert(ctx.sync == "contacts" and ctx.entity == "contact")
    return record.active ~= false
  end }
]])
    T.data(dir, "contacts", {
      { id = 1, email = "a@x" }, { id = 2, email = "b@x", active = false }, { id = 3, email = "c@x", active = true },
    })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    local c = T.summary(r.stdout)
    -- filtered records are reported as such, and counted as skipped in
    -- the run log
    assert.same({ 2, 0 }, { c.created, c.failed })
    assert.matches(", 1 filtered out", c.line, 1, true)
    assert.is_nil(c.line:find("before the cursor", 1, true))
    assert.same({ { email = "a@x" }, { email = "c@x" } }, T.query(dir, "SELECT email FROM contact ORDER BY id"))
    assert.equal(0, T.count(dir, "entsync_map", "CAST(remote_id AS TEXT) = '2'"))
    assert.equal(0, T.count(dir, "entsync_failures"))
    local run = T.query(dir, "SELECT skipped, created, status FROM entsync_history ORDER BY id DESC LIMIT 1")[1]
    assert.same({ skipped = 1, created = 2, status = "ok" }, run)
  end)

  it("a filter that raises fails that record; the run goes on", function()
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email" },
  filter = function(record) if record.id == 2 then error("cannot decide") end return true end }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x" }, { id = 2, email = "b@x" } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.same({ 1, 1 }, { T.summary(r.stdout).created, T.summary(r.stdout).failed })
    assert.matches("contacts 2: [^\n]*cannot decide", r.stderr)
  end)

  it("after_map(entities, record, ctx) adjusts mapped values, e.g. a field computed from two entities", function()
    T.job(dir, [[
entity "user" { name = "text", label = "text" }
entity "profile" { company = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = { user = { name = "name", label = "name" }, profile = { company = "company" } },
  after_map = function(entities, record, ctx)
    entities.user.label = entities.user.name .. " @ " .. entities.profile.company .. " (" .. ctx.sync .. " "
      .. ctx.remote_id .. ", v" .. record.version .. ")"
  end }
]])
    T.data(dir, "accounts", { { id = 1, name = "Ann", company = "Acme", version = 3 } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { name = "Ann", label = "Ann @ Acme (accounts 1, v3)" } }, T.query(dir, "SELECT name, label FROM user"))
    -- a change to the other entity's part changes the computed field
    T.data(dir, "accounts", { { id = 1, name = "Ann", company = "Beta", version = 3 } })
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, T.summary(r.stdout, "accounts").updated)
    assert.equal("Ann @ Beta (accounts 1, v3)", T.value(dir, "SELECT label FROM user"))
  end)

  it("after_map may return new tables instead of changing them", function()
    T.job(dir, [[
entity "contact" { email = "text", domain = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email", domain = "email" },
  after_map = function(e) return { contact = { email = e.contact.email, domain = e.contact.email:match("@(.*)$") } } end }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@example.org" } })
    assert.equal(0, T.run(dir, "run").code)
    assert.same({ { email = "a@example.org", domain = "example.org" } }, T.query(dir, "SELECT email, domain FROM contact"))
  end)

  it("after_map may set a declared field that the mapping table does not name", function()
    T.job(dir, [[
entity "user" { name = "text", label = "text" }
entity "profile" { company = "text" }
local files = provider "ndjson" { dir = "data" }
sync "accounts" { remote = files "accounts.ndjson", entity = { "user", "profile" },
  mapping = { user = { name = "name" }, profile = { company = "company" } },
  after_map = function(entities) entities.user.label = entities.user.name .. " @ " .. entities.profile.company end }
]])
    T.data(dir, "accounts", { { id = 1, name = "Ann", company = "Acme" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { name = "Ann", label = "Ann @ Acme" } }, T.query(dir, "SELECT name, label FROM user"))
  end)

  it("values set by after_map are coerced to the declared type like mapped ones", function()
    T.job(dir, [[
entity "contact" { email = "text", vip = "boolean" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email", vip = "vip" },
  after_map = function(e, record) e.contact.vip = record.level == "gold" and "yes" or "no" end }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x", level = "gold" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { vip = 1, t = "integer" } }, T.query(dir, "SELECT vip, typeof(vip) AS t FROM contact"))
  end)

  it("what after_map sets that cannot be stored fails the record, naming the field and after_map's line", function()
    T.job(dir, [[
entity "contact" { email = "text", tags = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email" },
  after_map = function(e, record)
    if record.id == 3 then return { nope = {} } end
    if record.id == 4 then e.contact.zzz = 1 end
    e.contact.tags = record.tags
  end }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x", tags = "one" }, { id = 2, email = "b@x", tags = { "x" } },
      { id = 3 }, { id = 4 } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local failures = T.failures(dir, "contacts")
    assert.equal("field tags (set by after_map, job.lua:4): expected text, got a table", failures["2"].error)
    assert.equal('entity "nope" (returned by after_map, job.lua:4): the sync does not write it', failures["3"].error)
    assert.equal("field zzz (set by after_map, job.lua:4): entity contact does not declare it", failures["4"].error)
    assert.equal(1, T.count(dir, "contact"))
  end)

  it("an after_map that raises fails that record; the run goes on", function()
    T.job(dir, [[
entity "contact" { email = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email" },
  after_map = function(e) assert(e.contact.email, "no email to adjust") end }
]])
    T.data(dir, "contacts", { { id = 1, email = "a@x" }, { id = 2 } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.matches("contacts 2: [^\n]*no email to adjust", r.stderr)
    assert.equal(1, T.count(dir, "contact"))
  end)
end)
