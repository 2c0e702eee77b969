-- entsync.map, the helpers of mapping tables: each one called directly
-- (value, record, ctx) -> value, then a job that uses several of them run
-- by the real entsync-run binary.

local cjson = require "cjson"
local errors = require "entsync.errors"
local map = require "entsync.map"
local T = require "mapping_support"

local null = cjson.null

-- The entity error a helper raises for value: its message (and that it is
-- an entity error, so the engine stores a failure instead of crashing).
local function failure(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_true(errors.is(e, "entity"), "not an entity error: " .. tostring(e))
  return e.message
end

describe("entsync.map", function()
  describe("to_bool", function()
    it("reads booleans, numbers and the usual words, ignoring case and spaces", function()
      assert.is_true(map.to_bool(true))
      assert.is_false(map.to_bool(false))
      assert.is_true(map.to_bool(1))
      assert.is_true(map.to_bool(2.5))
      assert.is_false(map.to_bool(0))
      assert.is_false(map.to_bool(0.0))
      for _, word in ipairs({ "true", "TRUE", "1", "yes", "Y", "on", " True " }) do
        assert.is_true(map.to_bool(word), word)
      end
      for _, word in ipairs({ "false", "False", "0", "no", "n", "OFF", "" }) do
        assert.is_false(map.to_bool(word), word)
      end
    end)

    it("passes nil and JSON null through as nil", function()
      assert.is_nil(map.to_bool(nil))
      assert.is_nil(map.to_bool(null))
    end)

    it("fails the entity for a value that is no boolean", function()
      assert.matches("expected a boolean, got maybe", failure(map.to_bool, "maybe"))
      assert.matches("expected a boolean", failure(map.to_bool, {}))
    end)
  end)

  describe("bool_to_int and int_to_bool", function()
    it("bool_to_int gives 1 or 0 (integers) for anything to_bool reads", function()
      assert.equal(1, map.bool_to_int(true))
      assert.equal(0, map.bool_to_int(false))
      assert.equal(1, map.bool_to_int("yes"))
      assert.equal(0, map.bool_to_int("off"))
      assert.equal(1, map.bool_to_int(1.0))
      assert.equal("integer", math.type(map.bool_to_int("on")))
      assert.is_nil(map.bool_to_int(nil))
      assert.is_nil(map.bool_to_int(null))
      assert.matches("expected a boolean", failure(map.bool_to_int, "perhaps"))
    end)

    it("int_to_bool gives a boolean for 1, 0 and their spellings", function()
      assert.is_true(map.int_to_bool(1))
      assert.is_false(map.int_to_bool(0))
      assert.is_true(map.int_to_bool("1"))
      assert.is_false(map.int_to_bool("0"))
      assert.is_nil(map.int_to_bool(nil))
      assert.is_nil(map.int_to_bool(null))
    end)
  end)

  describe("number and int", function()
    it("number reads numbers from strings, keeping integers integers", function()
      assert.equal(42, map.number("42"))
      assert.equal("integer", math.type(map.number("42")))
      assert.equal(2.5, map.number(" 2.5 "))
      assert.equal(-3, map.number("-3"))
      assert.equal(1000.0, map.number("1e3"))
      assert.equal(7, map.number(7))
      assert.equal(7.25, map.number(7.25))
      assert.is_nil(map.number(nil))
      assert.is_nil(map.number(null))
    end)

    it("number fails the entity for text that is no number", function()
      assert.matches('expected a number, got "abc"', failure(map.number, "abc"))
      assert.matches("expected a number", failure(map.number, ""))
      assert.matches("expected a number", failure(map.number, true))
    end)

    it("int gives an integer for whole numbers however written", function()
      assert.equal(42, map.int("42"))
      assert.equal("integer", math.type(map.int(" 42 ")))
      assert.equal(1000, map.int("1e3"))
      assert.equal("integer", math.type(map.int("1e3")))
      assert.equal(3, map.int(3.0))
      assert.equal("integer", math.type(map.int(3.0)))
      assert.is_nil(map.int(nil))
      assert.is_nil(map.int(null))
    end)

    it("int fails the entity for a fraction or text", function()
      assert.matches("expected an integer, got 3.5", failure(map.int, "3.5"))
      assert.matches("expected an integer", failure(map.int, 2.25))
      assert.matches("expected a number", failure(map.int, "many"))
    end)
  end)

  describe("trim, lower and upper", function()
    it("change text and pass everything else through", function()
      assert.equal("a b", map.trim("  a b \t\n"))
      assert.equal("", map.trim("   "))
      assert.equal("mixed case", map.lower("MiXed Case"))
      assert.equal("MIXED CASE", map.upper("MiXed Case"))
      for _, fn in ipairs({ map.trim, map.lower, map.upper }) do
        assert.equal(5, fn(5))
        assert.is_nil(fn(nil))
        assert.equal(null, fn(null))
        local t = {}
        assert.equal(t, fn(t))
      end
    end)
  end)

  describe("enum", function()
    local kinds = { person = 1, company = 2 }

    it("looks a value up", function()
      local kind = map.enum(kinds)
      assert.equal(1, kind("person"))
      assert.equal(2, kind("company"))
    end)

    it("gives the default for an unknown value when one is given (false included)", function()
      assert.equal(0, map.enum(kinds, 0)("robot"))
      assert.is_false(map.enum({ yes = true }, false)("unsure"))
    end)

    it("fails the entity for an unknown value without a default", function()
      assert.matches("robot is not one of the known values", failure(map.enum(kinds), "robot"))
    end)

    it("gives the default (or nil) for a missing value", function()
      assert.is_nil(map.enum(kinds)(nil))
      assert.is_nil(map.enum(kinds)(null))
      assert.equal(0, map.enum(kinds, 0)(nil))
    end)

    it("finds numeric keys for numbers decoded from JSON (1.0 is 1)", function()
      local status = map.enum({ [1] = "active", [2] = "closed" })
      assert.equal("active", status(cjson.decode("[1]")[1]))
    end)

    it("needs a lookup table", function()
      assert.has_error(function() map.enum("person") end)
    end)
  end)

  describe("join and split", function()
    it("join makes one string of a list (\",\" by default)", function()
      assert.equal("a,b,c", map.join()({ "a", "b", "c" }))
      assert.equal("a; b", map.join("; ")({ "a", "b" }))
      assert.equal("", map.join(",")({}))
      assert.equal("already text", map.join(",")("already text"))
      assert.is_nil(map.join(",")(nil))
    end)

    it("join writes whole numbers from a JSON list as integers (1, not 1.0)", function()
      -- lua-cjson decodes every JSON number as a float: [1,2.5,3] is {1.0, 2.5, 3.0}.
      local decoded = cjson.decode("[1,2.5,3]")
      assert.equal("1,2.5,3", map.join(",")(decoded))
    end)

    it("split makes a list of a string, trimming each part", function()
      assert.same({ "a", "b", "c" }, map.split()("a, b ,c"))
      assert.same({ "a", "", "b" }, map.split(",")("a,,b"))
      assert.same({ "x" }, map.split(",")("x"))
      assert.same({}, map.split(",")(""))
      assert.same({ "a", "b" }, map.split("|")("a|b"))
      assert.same({ "1.5", "2" }, map.split(";")("1.5;2"))
      local list = { "kept" }
      assert.equal(list, map.split(",")(list))
      assert.is_nil(map.split(",")(nil))
    end)

    it("split on a separator of several characters keeps parts that contain one of them", function()
      assert.same({ "New York", "Boston" }, map.split(", ")("New York, Boston"))
      assert.same({ "a-b", "c" }, map.split("--")("a-b--c"))
    end)

    it("split then join gives the text back", function()
      assert.equal("a,b,c", map.join(",")(map.split(",")("a, b, c")))
    end)
  end)

  describe("dates", function()
    it("iso_to_epoch reads UTC timestamps", function()
      assert.equal(1767323045, map.iso_to_epoch("2026-01-02T03:04:05Z"))
      assert.equal("integer", math.type(map.iso_to_epoch("2026-01-02T03:04:05Z")))
      assert.equal(0, map.iso_to_epoch("1970-01-01T00:00:00Z"))
      assert.equal(951782400, map.iso_to_epoch("2000-02-29T00:00:00Z"))
      assert.equal(1767323045, map.iso_to_epoch("2026-01-02 03:04:05"))
      assert.equal(1767323040, map.iso_to_epoch("2026-01-02T03:04Z"))
    end)

    it("iso_to_epoch applies +hh:mm and -hh:mm offsets (and +hhmm)", function()
      assert.equal(1767323045, map.iso_to_epoch("2026-01-02T05:04:05+02:00"))
      assert.equal(1767323045, map.iso_to_epoch("2026-01-01T22:04:05-05:00"))
      assert.equal(1767323045, map.iso_to_epoch("2026-01-02T08:34:05+0530"))
      assert.equal(1767323045, map.iso_to_epoch("2026-01-02T03:04:05+00:00"))
    end)

    it("iso_to_epoch keeps fractions of a second", function()
      assert.equal(1767323045.25, map.iso_to_epoch("2026-01-02T03:04:05.25Z"))
      assert.equal(1767323045.5, map.iso_to_epoch("2026-01-02T05:04:05.500+02:00"))
      assert.equal("float", math.type(map.iso_to_epoch("2026-01-02T03:04:05.125Z")))
    end)

    it("iso_to_epoch reads a date alone as its midnight UTC", function()
      assert.equal(1767312000, map.iso_to_epoch("2026-01-02"))
    end)

    it("iso_to_epoch passes numbers, nil and null through", function()
      assert.equal(12, map.iso_to_epoch(12))
      assert.is_nil(map.iso_to_epoch(nil))
      assert.is_nil(map.iso_to_epoch(null))
    end)

    it("iso_to_epoch fails the entity for text that is no ISO 8601 timestamp", function()
      assert.matches('expected an ISO 8601 date, got "yesterday"', failure(map.iso_to_epoch, "yesterday"))
      assert.matches("expected an ISO 8601 date", failure(map.iso_to_epoch, "2026-01-02 noon"))
      assert.matches('unknown time zone " CET"', failure(map.iso_to_epoch, "2026-01-02T03:04:05 CET"))
    end)

    it("epoch_to_iso writes UTC with Z, and milliseconds only when there is a fraction", function()
      assert.equal("2026-01-02T03:04:05Z", map.epoch_to_iso(1767323045))
      assert.equal("1970-01-01T00:00:00Z", map.epoch_to_iso(0))
      assert.equal("2026-01-02T03:04:05.250Z", map.epoch_to_iso(1767323045.25))
      assert.equal("1969-12-31T23:59:59.500Z", map.epoch_to_iso(-0.5))
      assert.equal("2026-01-02T03:04:05Z", map.epoch_to_iso("1767323045"))
      assert.equal("2026-01-02T03:04:05Z", map.epoch_to_iso(1767323045.0))
    end)

    it("epoch_to_iso passes ISO text, nil and null through", function()
      assert.equal("2026-01-02T03:04:05Z", map.epoch_to_iso("2026-01-02T03:04:05Z"))
      assert.is_nil(map.epoch_to_iso(nil))
      assert.is_nil(map.epoch_to_iso(null))
      assert.matches("expected a number", failure(map.epoch_to_iso, "soon"))
    end)

    it("epoch_to_iso fails an epoch outside the years 0001 to 9999", function()
      for _, epoch in ipairs({ 253402300800, math.maxinteger, 1e300, -1e300, "1e16" }) do
        assert.matches("outside the years 0001 to 9999", failure(map.epoch_to_iso, epoch))
      end
    end)

    it("epoch_to_iso rounds a fraction just under a second up to the next second", function()
      -- 1.9996 s is 2.000 s to the millisecond: not "00:00:01.1000Z".
      local iso = map.epoch_to_iso(1.9996)
      assert.matches("^1970%-01%-01T00:00:02", iso)
      assert.matches("^1970%-01%-01T00:00:02%.?0*Z$", iso)
    end)

    it("iso_to_epoch and epoch_to_iso round-trip", function()
      for _, t in ipairs({ 0, 86399, 951782400, 1767323045, 1767323045.125, 4102444800 }) do
        assert.equal(t, map.iso_to_epoch(map.epoch_to_iso(t)))
      end
    end)

    it("date_only gives the date of a timestamp or epoch", function()
      assert.equal("2026-01-02", map.date_only("2026-01-02T03:04:05Z"))
      assert.equal("2026-01-02", map.date_only("2026-01-02T03:04:05.999Z"))
      assert.equal("2026-01-02", map.date_only(1767323045))
      assert.equal("2026-01-02", map.date_only("1767323045"))
      assert.equal("2026-01-02", map.date_only("2026-01-02"))
      assert.is_nil(map.date_only(nil))
      assert.is_nil(map.date_only(null))
    end)
  end)

  describe("json_encode and json_decode", function()
    it("encode a table to JSON text and decode it back", function()
      local text = map.json_encode({ a = 1, list = { "x", "y" } })
      assert.equal("string", type(text))
      assert.same({ a = 1, list = { "x", "y" } }, map.json_decode(text))
      assert.equal('"plain"', map.json_encode("plain"))
      assert.is_nil(map.json_encode(nil))
      assert.is_nil(map.json_encode(null))
    end)

    it("json_decode passes what is not text through", function()
      local t = { 1 }
      assert.equal(t, map.json_decode(t))
      assert.equal(5, map.json_decode(5))
      assert.is_nil(map.json_decode(nil))
    end)

    it("json_decode fails the entity for malformed JSON", function()
      assert.matches("malformed JSON", failure(map.json_decode, "{not json"))
    end)
  end)

  describe("refs", function()
    -- A context whose ref knows a few ids of the tags sync.
    local function ctx_with(ids)
      local calls = {}
      return {
        calls = calls,
        ref = function(self, sync, remote_id)
          calls[#calls + 1] = sync .. ":" .. tostring(remote_id)
          return ids[remote_id]
        end,
      }
    end

    it("is a callable table naming its sync, which is_refs recognises", function()
      local r = map.refs "tags"
      assert.equal("tags", r.sync)
      assert.is_true(map.is_refs(r))
      assert.is_false(map.is_refs(function() end))
      assert.is_false(map.is_refs({ sync = "tags" }))
      assert.is_false(map.is_refs(nil))
    end)

    it("turns one remote id into a local id through ctx:ref", function()
      local ctx = ctx_with({ t1 = 10 })
      assert.equal(10, (map.refs "tags")("t1", {}, ctx))
      assert.same({ "tags:t1" }, ctx.calls)
    end)

    it("turns a list of remote ids into local ids, leaving out those ctx:ref gives nil for", function()
      local ctx = ctx_with({ t1 = 10, t3 = 30 })
      assert.same({ 30, 10 }, (map.refs "tags")({ "t3", "t2", "t1" }, {}, ctx))
      assert.same({ "tags:t3", "tags:t2", "tags:t1" }, ctx.calls)
    end)

    it("passes nil and null through without asking", function()
      local ctx = ctx_with({})
      assert.is_nil((map.refs "tags")(nil, {}, ctx))
      assert.is_nil((map.refs "tags")(null, {}, ctx))
      assert.same({}, ctx.calls)
    end)

    it("fails the entity without the engine's context", function()
      assert.matches('map.refs "tags" needs the engine\'s context', failure(map.refs "tags", "t1", {}, nil))
    end)

    it("needs a sync name", function()
      assert.has_error(function() map.refs(5) end)
    end)
  end)

  describe("chain", function()
    it("applies helpers in order, each given the record and ctx", function()
      local seen = {}
      local function note(v, record, ctx)
        seen[#seen + 1] = { record.id, ctx.sync }
        return v
      end
      local f = map.chain(map.trim, note, map.lower, map.split(","))
      assert.same({ "a", "b" }, f("  A, B ", { id = 7 }, { sync = "contacts" }))
      assert.same({ { 7, "contacts" } }, seen)
    end)

    it("with nothing to chain gives the value back", function()
      assert.equal("x", map.chain()("x"))
    end)

    it("stops at the first helper that fails the entity", function()
      local later = false
      local f = map.chain(map.int, function(v) later = true return v end)
      assert.matches("expected a number", failure(f, "many", {}, {}))
      assert.is_false(later)
    end)
  end)
end)

describe("a job using the helpers", function()
  local dir

  before_each(function()
    dir = T.dir()
    T.file(dir, "mappings/person.lua", [[
local map = require "entsync.map"
return {
  name    = { "name", import = map.chain(map.trim, map.upper) },
  email   = { "email", import = map.chain(map.trim, map.lower) },
  active  = { "active", import = map.bool_to_int },
  vip     = { "vip", import = map.to_bool },
  age     = { "age", import = map.int },
  score   = { "score", import = map.number },
  kind    = { "kind", import = map.enum({ person = 1, company = 2 }, 0) },
  tags    = { "tags", import = map.join("|") },
  labels  = { "labels", import = map.split(",") },
  born    = { "born", import = map.iso_to_epoch },
  seen    = { "seen", import = map.epoch_to_iso },
  day     = { "seen", import = map.date_only },
  extra   = { "extra", import = map.json_decode },
  raw     = { "address", import = map.json_encode },
}
]])
    T.job(dir, [[
entity "person" { name = "text", email = "text", active = "integer", vip = "boolean", age = "integer",
  score = "real", kind = "integer", tags = "text", labels = "json", born = "integer", seen = "timestamp",
  day = "text", extra = "json", raw = "text" }
local files = provider "ndjson" { dir = "data" }
sync "people" { remote = files "people.ndjson", entity = "person", mapping = "mappings.person" }
]])
  end)

  after_each(T.cleanup)

  it("stores what each helper makes of the remote values", function()
    T.data(dir, "people", {
      { id = 1, name = "  ann lee ", email = " Ann@Example.ORG ", active = "yes", vip = "no", age = "42",
        score = " 7.5 ", kind = "company", tags = { "a", "b" }, labels = "x, y", born = "2000-02-29T01:00:00+01:00",
        seen = 1767323045, extra = '{"k":[1,2]}', address = { city = "Oslo" } },
      { id = 2, name = "bob", active = false, kind = "robot", seen = "2026-01-02T03:04:05Z" },
    })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(2, T.summary(r.stdout, "people").created)
    local rows = T.query(dir, [[SELECT name, email, active, vip, age, score, kind, tags, labels, born, seen, day,
      extra, raw, typeof(age) AS age_type, typeof(score) AS score_type FROM person ORDER BY id]])
    assert.same({
      name = "ANN LEE", email = "ann@example.org", active = 1, vip = 0, age = 42, score = 7.5, kind = 2, tags = "a|b",
      labels = '["x","y"]', born = 951782400, seen = "2026-01-02T03:04:05Z", day = "2026-01-02", extra = '{"k":[1,2]}',
      raw = '{"city":"Oslo"}', age_type = "integer", score_type = "real",
    }, rows[1])
    assert.same({ name = "BOB", active = 0, kind = 0, seen = "2026-01-02T03:04:05Z", day = "2026-01-02",
      age_type = "null", score_type = "null" }, rows[2])
  end)

  it("fails only the entity a helper rejects, naming the field and the mapping line", function()
    T.data(dir, "people", {
      { id = 1, name = "ann", active = "maybe" },
      { id = 2, name = "bob", age = "forty" },
      { id = 3, name = "cy", born = "last tuesday" },
      { id = 4, name = "dee" },
    })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    local c = T.summary(r.stdout, "people")
    assert.same({ 1, 3 }, { c.created, c.failed })
    assert.is_nil(r.stderr:find("traceback", 1, true))
    assert.matches("people 1: field active: expected a boolean, got maybe %(%.?/?mappings/person%.lua:5%)", r.stderr)
    assert.matches('people 2: field age: expected a number, got "forty" %(%.?/?mappings/person%.lua:7%)', r.stderr)
    assert.matches('people 3: field born: expected an ISO 8601 date, got "last tuesday" %(%.?/?mappings/person%.lua:12%)',
      r.stderr)
    local failures = T.failures(dir, "people")
    assert.matches("^field active: expected a boolean, got maybe", failures["1"].error)
    assert.matches("^field age: ", failures["2"].error)
    assert.matches("^field born: ", failures["3"].error)
    assert.same({ { name = "DEE" } }, T.query(dir, "SELECT name FROM person"))
  end)
end)
