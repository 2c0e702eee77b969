-- The C record path over http_json pages, against the Lua pipeline: each
-- case runs one job over the same fixture server data twice, with real
-- entsync-run processes, once with ENTSYNC_RECORD_PATH=lua and once with
-- the C path, into two stores, and compares what they hold: every entity
-- table's rows (all columns, with their SQLite types), the id map (but
-- synced_at and the time of gone_at), the failures (but their times), the
-- state, the summary counts, the exit codes and the warnings. Then the
-- data changes at the server (updates, a new record, one with an older
-- mark, one made invalid) and a second, incremental pass is compared too.

local cjson = require "cjson"
local helpers = require "helpers"
local I = require "import_support"

local PATHS = { "lua", "c" }

-- Columns left out of the comparison: times of the run.
local TIMES = {
  entsync_idmap = { synced_at = true, gone_at = "set" },
  entsync_failures = { first_at = true, last_at = true, next_at = true },
  entsync_state = { updated_at = true },
}

-- JSON text of a value, for records written by hand: numbers, strings,
-- booleans and tables through cjson, and raw JSON text kept as it is
-- when given as { json = "12.0" }.
local function encode(value)
  if type(value) == "table" and value.json then return value.json end
  if type(value) == "table" and value[1] == nil and next(value) ~= nil then
    local keys = {}
    for k in pairs(value) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ":" .. encode(value[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  if type(value) == "table" then
    local parts = {}
    for i, v in ipairs(value) do parts[i] = encode(v) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  return cjson.encode(value)
end

local function raw(text) return { json = text } end

-- A changed mark for n: distinct and increasing with n.
local function mark(n, day)
  return string.format("2026-01-%02dT%02d:%02d:%02dZ", day or 1, n // 3600, (n // 60) % 60, n % 60)
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

describe("the C record path over http_json matches the Lua pipeline", function()
  local server, root

  helpers.remote_for_each_test({}, function(remote, tmp)
    server, root = remote, tmp
    for _, path in ipairs(PATHS) do assert(require("entsync.core").fs.mkdir(tmp .. "/" .. path)) end
  end)

  -- Replaces the server's resources: { name = { record, ... } } (records
  -- as for encode, or JSON text).
  local function set_data(resources)
    local parts = {}
    for name, records in pairs(resources) do
      local list = {}
      for i, r in ipairs(records) do list[i] = type(r) == "string" and r or encode(r) end
      parts[#parts + 1] = cjson.encode(name) .. ":[" .. table.concat(list, ",") .. "]"
    end
    local res = server.request("POST", "/_control/data", { body = '{"resources":{' .. table.concat(parts, ",") .. "}}" })
    assert.equal(200, res.status, res.body)
  end

  -- Writes the same job.lua into both stores' folders; URL stands for
  -- the server's base URL. Returns the job's text.
  local function job(text)
    text = text:gsub("URL", server.url)
    for _, path in ipairs(PATHS) do helpers.write(root .. "/" .. path .. "/job.lua", text) end
    return text
  end

  -- The line of job.lua holding needle.
  local function line_of(text, needle)
    local n = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      if line:find(needle, 1, true) then return n end
    end
  end

  -- Every column of a table as SQLite quotes it (so 3, 3.0 and '3'
  -- differ), but the ones left out; gone_at only as whether it is set.
  local function table_rows(store, dir, name, order)
    local columns = {}
    for _, c in ipairs(store:rows(string.format('PRAGMA table_info("%s")', name))) do
      local skip = (TIMES[name] or {})[c.name]
      if skip == "set" then
        columns[#columns + 1] = string.format('"%s" IS NOT NULL AS "%s"', c.name, c.name)
      elseif not skip then
        columns[#columns + 1] = string.format('quote("%s") AS "%s"', c.name, c.name)
      end
    end
    local rows = store:rows(string.format('SELECT %s FROM "%s" AS src ORDER BY %s', table.concat(columns, ", "), name,
      (order:gsub("[%w_]+", "src.%0"))))
    for _, row in ipairs(rows) do
      for k, v in pairs(row) do
        if type(v) == "string" then row[k] = v:gsub(dir, "DIR", nil) end
      end
    end
    return rows
  end

  -- What one run left: its exit code, summary counts, warnings and
  -- errors (sorted), and the store's tables.
  local function snapshot(dir, result, syncs)
    local snap = { code = result.code, summary = {}, said = {}, tables = {} }
    for _, name in ipairs(syncs) do
      local counts = I.summary(result.stdout, name)
      if counts then counts.line = nil end
      snap.summary[name] = counts or "no summary line"
    end
    for line in result.stderr:gmatch("[^\n]+") do
      if not line:find("^entsync: debug: ") then snap.said[#snap.said + 1] = (line:gsub(dir, "DIR", nil)) end
    end
    table.sort(snap.said)
    local store = helpers.open_store(dir .. "/entsync.db")
    for _, t in ipairs(store:rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'entsync%' "
        .. "AND name NOT LIKE 'sqlite%' ORDER BY name")) do
      snap.tables[t.name] = table_rows(store, dir, t.name, "id")
    end
    snap.tables.entsync_idmap = table_rows(store, dir, "entsync_idmap", "key")
    snap.tables.entsync_failures = table_rows(store, dir, "entsync_failures", "sync, direction, key")
    snap.tables.entsync_state = table_rows(store, dir, "entsync_state", "sync")
    store:close()
    return snap
  end

  -- The differences between two values as lines "path: lua ... c ...".
  local function differences(a, b, path, out)
    out = out or {}
    if type(a) == "table" and type(b) == "table" then
      local keys, seen = {}, {}
      for k in pairs(a) do keys[#keys + 1], seen[k] = k, true end
      for k in pairs(b) do if not seen[k] then keys[#keys + 1] = k end end
      table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
      for _, k in ipairs(keys) do differences(a[k], b[k], path .. "." .. tostring(k), out) end
    elseif a ~= b or math.type(a) ~= math.type(b) then
      local function show(v) return type(v) == "table" and encode(v) or tostring(v) end
      out[#out + 1] = string.format("%s: lua %s, c %s", path, show(a), show(b))
    end
    return out
  end

  -- Runs the job in both folders with args and compares them; returns
  -- the two results and their snapshots. The C run logs how many records
  -- it mapped in C (result.c.in_c).
  local function both(syncs, ...)
    local args = { "job.lua", "run", "--no-progress", "--verbose", ... }
    local results, snaps = {}, {}
    for _, path in ipairs(PATHS) do
      local dir = root .. "/" .. path
      results[path] = helpers.run(dir, args, { ENTSYNC_RECORD_PATH = path })
      assert.is_true(results[path].code == 0 or results[path].code == 1, results[path].stderr)
      local n = 0
      for taken in results[path].stderr:gmatch("(%d+) of %d+ records mapped in C") do n = n + tonumber(taken) end
      results[path].in_c = n
      snaps[path] = snapshot(dir, results[path], syncs or { "contacts" })
    end
    local diff = differences(snaps.lua, snaps.c, "")
    assert.equal("", table.concat(diff, "\n"))
    assert.equal(0, results.lua.in_c)
    return results, snaps
  end

  -- contact records id from..to with marks on day 1
  local function contacts(from, to)
    local out = {}
    for id = from, to do
      out[#out + 1] = { id = id, email = "c" .. id .. "@example.com", name = "Contact " .. id, age = 20 + id,
        updated_at = mark(id) }
    end
    return out
  end

  -- The changes of a second pass: records 3 and 17 change (a later mark),
  -- 5 changes under an older mark, 9 gets an age that is no integer, a
  -- new record 24, and record 11 changes through PUT.
  local function change_contacts(records, resource)
    records = copy(records)
    for i, r in ipairs(records) do records[i] = copy(r) end
    records[3].name, records[3].updated_at = "Changed 3", mark(3, 2)
    records[17].age, records[17].updated_at = 99, mark(17, 2)
    records[5].name, records[5].updated_at = "Older 5", "2025-12-31T00:00:00Z"
    records[9].age, records[9].updated_at = "not a number", mark(9, 2)
    records[#records + 1] = { id = 24, email = "c24@example.com", name = "Contact 24", age = 44, updated_at = mark(24, 2) }
    set_data({ [resource or "contacts"] = records })
    local put = copy(records[11])
    put.updated_at, put.name = nil, "Put 11"
    assert.equal(200, server.request("PUT", "/api/" .. (resource or "contacts") .. "/11", { body = put }).status)
  end

  local PLAIN = [[
store "entsync.db"
entity "contact" { email = "text", name = "text", age = "integer" }
local api = provider "http_json" { base_url = "URL", page = { style = "STYLE", size = 5 }, records = "data"SINCE }
sync "contacts" { remote = api "STYLE/contacts", entity = "contact",
  mapping = { email = "email", name = "name", age = "age" },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]]

  local function plain(style, since)
    return (PLAIN:gsub("STYLE", style):gsub("SINCE", since and ', since = { param = "updated_from" }' or ""))
  end

  describe("paging styles", function()
    for _, case in ipairs({ { "page", true }, { "cursor", false }, { "cursor", true }, { "key", true }, { "key", false } }) do
      local style, since = case[1], case[2]
      it(style .. " style" .. (since and " with the since filter" or " without a filter"), function()
        job(plain(style, since))
        local data = contacts(1, 23)
        set_data({ contacts = data })
        local first = both()
        assert.equal(0, first.c.code)
        assert.equal(23, I.summary(first.c.stdout).created)
        assert.is_true(first.c.in_c > 0, first.c.stderr)
        change_contacts(data)
        local second = both()
        assert.equal(1, second.c.code)
        local c = I.summary(second.c.stdout)
        assert.same({ 1, 3, 1 }, { c.created, c.updated, c.failed }, second.c.stdout)
        -- nothing changed since: a third pass writes nothing, in both
        local third = both()
        assert.equal(0, I.summary(third.c.stdout).created + I.summary(third.c.stdout).updated)
      end)
    end
  end)

  -- Records whose mark equals the cursor's are compared by id: those of
  -- lower ids are before the cursor, even when their content changed.
  -- Each pass is a new process, so the comparison is made many times.
  it("records sharing the cursor's mark, their ids compared with the cursor's", function()
    job(plain("page", true))
    local data = contacts(1, 20)
    for _, r in ipairs(data) do r.updated_at = mark(500) end
    set_data({ contacts = data })
    both()
    for _, r in ipairs(data) do
      if r.id % 3 == 0 then r.name = "Same mark " .. r.id end
    end
    set_data({ contacts = data })
    for _ = 1, 12 do
      local r = both()
      local c = I.summary(r.c.stdout)
      assert.same({ 0, 0, 0, 20 }, { c.created, c.updated, c.unchanged, c.before_cursor }, r.c.stdout)
    end
  end)

  it("says how many records the C path mapped, for a plain mapping (--verbose)", function()
    job(plain("page", true))
    set_data({ contacts = contacts(1, 23) })
    local r = helpers.run(root .. "/c", { "job.lua", "run", "--no-progress", "--verbose" })
    assert.equal(0, r.code, r.stderr)
    local n, m = r.stderr:match('sync "contacts": (%d+) of (%d+) records mapped in C')
    assert.is_not_nil(n, r.stderr)
    assert.is_true(tonumber(n) > 0, r.stderr)
    assert.equal(23, tonumber(m))
    r = helpers.run(root .. "/lua", { "job.lua", "run", "--no-progress", "--verbose" }, { ENTSYNC_RECORD_PATH = "lua" })
    assert.equal(0, r.code, r.stderr)
    n = r.stderr:match('sync "contacts": (%d+) of %d+ records mapped in C')
    assert.is_true(n == nil or n == "0", r.stderr)
  end)

  it("a split into two entities", function()
    job([[
store "entsync.db"
entity "contact" { email = "text", name = "text" }
entity "profile" { company = "text", city = "text", zip = "integer" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "page/people", entity = { "contact", "profile" },
  mapping = {
    contact = { email = "email", name = "name" },
    profile = { company = { "company.name", required = true }, city = "addresses[1].city", zip = "addresses[1].zip" },
  },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local people = {}
    for id = 1, 17 do
      people[id] = { id = id, email = "p" .. id .. "@example.com", name = "Person " .. id, updated_at = mark(id),
        company = { name = "Co " .. id % 4 }, addresses = id % 3 == 0 and {} or { { city = "City " .. id, zip = tostring(1000 + id) } } }
    end
    set_data({ people = people })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    people[2] = copy(people[2]); people[2].company, people[2].updated_at = { name = "New Co" }, mark(2, 2)
    people[4] = copy(people[4]); people[4].name, people[4].updated_at = "Renamed 4", mark(4, 2)
    people[6] = copy(people[6]); people[6].company, people[6].updated_at = {}, mark(6, 2)
    people[8] = copy(people[8]); people[8].name, people[8].updated_at = "Older 8", "2025-06-01T00:00:00Z"
    people[10] = copy(people[10]); people[10].addresses, people[10].updated_at = { { zip = "12x" } }, mark(10, 2)
    people[18] = { id = 18, email = "p18@example.com", name = "Person 18", updated_at = mark(18, 2),
      company = { name = "Co 18" }, addresses = { { city = "Far" } } }
    set_data({ people = people })
    local second = both()
    assert.equal(1, second.c.code)
  end)

  it("json fields: objects, arrays, nested, empty, and scalars", function()
    job([[
store "entsync.db"
entity "doc" { meta = "json", tags = "json", deep = "json", empty_object = "json", empty_array = "json", any = "json" }
local api = provider "http_json" { base_url = "URL", page = { style = "cursor", size = 5 } }
sync "contacts" { remote = api "cursor/docs", entity = "doc",
  mapping = { meta = "meta", tags = "tags", deep = "deep.inner", empty_object = "eo", empty_array = "ea", any = "any" },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local anys = { raw("{}"), raw("[]"), raw("null"), raw("12.0"), raw("12"), raw("-0.0"), raw("1e20"), raw("2.50"),
      raw('"text"'), raw('""'), raw("true"), raw("false"), raw('{"b":1,"a":[1,{"c":null}]}'), raw('[[],{},[[]]]'),
      raw("9007199254740993"), raw('{"":0}'), raw('"\\u00e9\\n"') }
    local docs = {}
    for i, any in ipairs(anys) do
      docs[i] = raw(string.format('{"id":%d,"updated_at":"%s","meta":{"z":%d,"a":{"b":[1,2,{"c":"d"}]}},'
        .. '"tags":["x","y",%d],"deep":{"inner":{"k":[{},[],{"m":null}]}},"eo":{},"ea":[],"any":%s}',
        i, mark(i), i, i, encode(any)))
    end
    set_data({ docs = docs })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    -- the same content with keys in another order is unchanged; changed values update
    docs[1] = raw(string.format('{"updated_at":"%s","any":{},"ea":[],"eo":{},"deep":{"inner":{"k":[{},[],{"m":null}]}},'
      .. '"tags":["x","y",1],"meta":{"a":{"b":[1,2,{"c":"d"}]},"z":1},"id":1}', mark(1, 2)))
    docs[2] = raw(string.format('{"id":2,"updated_at":"%s","meta":{},"tags":[],"deep":{"inner":[]},"eo":[],"ea":{},"any":[]}',
      mark(2, 2)))
    docs[3] = raw(string.format('{"id":3,"updated_at":"%s","meta":null,"tags":{"x":[]},"any":{"nested":{"deeper":[1.5]}}}',
      mark(3, 2)))
    docs[4] = raw(string.format('{"id":4,"updated_at":"2025-01-01T00:00:00Z","meta":"older"}'))
    docs[#docs + 1] = raw(string.format('{"id":99,"updated_at":"%s","meta":{"new":true},"any":[1,"two",null]}', mark(99, 2)))
    set_data({ docs = docs })
    both()
  end)

  -- One base record, and a record per (field, value) pair, each with one
  -- field set to a value to coerce: every declared type, defaults and required.
  it("every declared type with coercions, defaults and required", function()
    job([[
store "entsync.db"
entity "typed" { t = "text", i = "integer", r = "real", b = "boolean", ts = "timestamp", j = "json",
  dt = "text", di = "integer", req = "text" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "page/typed", entity = "typed",
  mapping = { t = "t", i = "i", r = "r", b = "b", ts = "ts", j = "j",
    dt = { "dt", default = "none" }, di = { "di", default = 7 }, req = { "req", required = true } },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local values = {
      t = { "12", "12.0", "12.5", "1e20", "-0.0", "9007199254740993", "true", "false", '"plain"', '""', "null", "{}",
        "[]", "[1]", '"\\u00e9"', '"a\\u0000b"', "0.1", "1e-7" },
      i = { '"12"', '" 12 "', '"+3"', '"-4"', "12.0", "12.5", "true", "false", '"12.5"', '"x"', "9007199254740993",
        "1e3", "-0.0", "null", "[]", "1e300", '""', "9223372036854775807", "9223372036854775808" },
      r = { "3", '"3.5"', '"abc"', "true", "1e308", '"1e400"', '"nan"', '"inf"', "-0.0", '" 2 "', "{}" },
      b = { '"yes"', '"on"', '"OFF"', "1", "0", "2", '"true"', '"maybe"', "true", "false", "1.0", '"1"' },
      ts = { "1700000000", "1700000000.25", '"2026-01-01T00:00:00Z"', '"2026-01-01"', '"yesterday"', "-1", "1e20",
        "true", "0", '"2026-13-45 junk"' },
      j = { "{}", "[]", '"s"', "1.5", "null" },
      dt = { "null", '"given"', "5" },
      di = { "null", '"8"', "false" },
      req = { "null", '""', '"x"', "0", "{}" },
    }
    local base = { t = '"text"', i = "1", r = "1.5", b = "true", ts = '"2026-01-01T00:00:00Z"', j = '{"k":1}', req = '"here"' }
    local records, id = {}, 0
    local function add(fields, at)
      id = id + 1
      local parts = { '"id":' .. id, '"updated_at":"' .. (at or mark(id)) .. '"' }
      for k, v in pairs(fields) do parts[#parts + 1] = cjson.encode(k) .. ":" .. v end
      records[#records + 1] = "{" .. table.concat(parts, ",") .. "}"
    end
    local names = {}
    for name in pairs(values) do names[#names + 1] = name end
    table.sort(names)
    local variants = {}
    add(base)
    for _, name in ipairs(names) do
      for _, v in ipairs(values[name]) do
        local fields = copy(base)
        fields[name] = v
        variants[#variants + 1] = fields
        add(fields)
      end
      -- the field left out
      local fields = copy(base)
      fields[name] = nil
      variants[#variants + 1] = fields
      add(fields)
    end
    set_data({ typed = records })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    -- the second pass: each variant record with its values moved one on
    -- (a value that failed may now be stored, and the other way round)
    local n = #variants
    records, id = {}, 0
    add(base, mark(1))
    for i = 1, n do
      add(variants[i % n + 1], i % 5 == 0 and mark(i + 1) or mark(i + 1, 2))
    end
    add(base, mark(999, 2))
    set_data({ typed = records })
    both()
  end)

  it("callbacks: with and without a path, nested fields, pairs, ctx, an error, and a record mutated", function()
    local text = job([[
store "entsync.db"
entity "contact" { full = "text", upper = "text", nested = "text", keys = "text", boom = "text", a_mut = "text",
  b_later = "text", c_gone = "text", who = "text", idtype = "text", nullish = "text", shape = "json", n = "integer" }
local api = provider "http_json" { base_url = "URL", page = { style = "key", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "key/contacts", entity = "contact",
  mapping = {
    full = { import = function(r) return r.first .. " " .. r.last end },
    upper = { "first", import = function(v) return v and v:upper() end },
    nested = { import = function(_, r) return r.a and r.a.b and tostring(r.a.b.c) or nil end },
    keys = { import = function(r)
      local names = {}
      for k, v in pairs(r) do names[#names + 1] = k .. "=" .. type(v) end
      table.sort(names)
      return table.concat(names, ",")
    end },
    boom = { "boom", import = function(v) if v == "bad" then error("boom on " .. v) end return v end },
    a_mut = { import = function(r) r.later = "mutated " .. tostring(r.later); r.gone = nil; r.added = 1; return "m" end },
    b_later = "later",
    c_gone = { "gone", default = "was removed" },
    who = { import = function(_, r, ctx) return ctx.sync .. ":" .. tostring(ctx.remote_id) .. ":" .. tostring(ctx.entity)
      .. ":" .. tostring(ctx.direction) end },
    idtype = { import = function(r) return math.type(r.id) or type(r.id) end },
    nullish = { import = function(r) return type(r.maybe) .. "/" .. type(r.absent) end },
    shape = { import = function(r) return { n = #(r.list or {}), first = (r.list or {})[1], added = r.added } end },
    n = { "list", import = function(v) return v and #v or 0 end },
  },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local records = {}
    for id = 1, 16 do
      records[id] = { id = id, updated_at = mark(id), first = "First" .. id, last = "Last" .. id,
        a = id % 2 == 0 and { b = { c = id * 10 } } or nil, boom = id == 6 and "bad" or "fine " .. id,
        later = "later " .. id, gone = "here " .. id, maybe = id % 3 == 0 and cjson.null or "set",
        list = id % 4 == 0 and { "x", "y", id } or nil }
    end
    set_data({ contacts = records })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    local line = line_of(text, "boom = {")
    for _, path in ipairs(PATHS) do
      local rows = helpers.query(root .. "/" .. path .. "/entsync.db", "SELECT error FROM entsync_failures")
      assert.equal(1, #rows)
      assert.matches("field boom: ", rows[1].error, 1, true)
      assert.matches("boom on bad", rows[1].error, 1, true)
      assert.matches("job.lua:" .. line .. ")", rows[1].error, 1, true)
    end
    for _, id in ipairs({ 2, 7, 11 }) do
      records[id] = copy(records[id]); records[id].later, records[id].updated_at = "again " .. id, mark(id, 2)
    end
    records[6] = copy(records[6]); records[6].boom, records[6].updated_at = "fixed", mark(6, 2)
    records[12] = copy(records[12]); records[12].first, records[12].updated_at = nil, mark(12, 2)
    records[13] = copy(records[13]); records[13].last, records[13].updated_at = "Older", "2025-01-01T00:00:00Z"
    records[17] = { id = 17, updated_at = mark(17, 2), first = "F", last = "L", boom = "bad", later = "x" }
    set_data({ contacts = records })
    both()
  end)

  -- With deletes, an unchanged record is the Lua pipeline's (it marks it
  -- seen): records whose mark moved while their content did not.
  it("a callback that changes the record, under deletes = \"flag\", over records found unchanged", function()
    job([[
store "entsync.db"
entity "contact" { a_mut = "text", b_later = "text" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "page/contacts", entity = "contact",
  mapping = {
    a_mut = { import = function(r) r.later = "mutated " .. tostring(r.later); return "m" end },
    b_later = "later",
  },
  import = { mode = "incremental", changed = "updated_at", batch = 7, deletes = "flag" } }
]])
    local records = {}
    for id = 1, 12 do records[id] = { id = id, later = "later " .. id, updated_at = mark(id) } end
    set_data({ contacts = records })
    both()
    for id = 1, 12 do records[id].updated_at = mark(id, 2) end
    set_data({ contacts = records })
    local second = both()
    local c = I.summary(second.c.stdout)
    assert.same({ 0, 12 }, { c.updated, c.unchanged }, second.c.stdout)
  end)

  it("ids: none, float, string, typed apart, repeated on one page and across pages", function()
    job([[
store "entsync.db"
entity "contact" { name = "text" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "page/contacts", entity = "contact", mapping = { name = "name" },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local ids = { "1", "2", "2", "3.5", "4.0", '"s1"', '"7"', "7", "-1", "0", "true", '{"x":1}', '""', "1e20", "null",
      "9007199254740993", "3", "8", "2", "9", "3", '"3"', "10", "11" }
    local function records(day, names)
      local out = {}
      for i, id in ipairs(ids) do
        out[i] = string.format('{"id":%s,"name":"%s %d","updated_at":"%s"}', id, names, i, mark(i, day))
      end
      out[#out + 1] = string.format('{"name":"no id","updated_at":"%s"}', mark(50, day))
      return out
    end
    set_data({ contacts = records(1, "first") })
    both()
    local again = records(2, "second")
    again[1] = string.format('{"id":1,"name":"older","updated_at":"2025-01-01T00:00:00Z"}')
    again[#again + 1] = string.format('{"id":12,"name":"new","updated_at":"%s"}', mark(60, 2))
    set_data({ contacts = again })
    both()
  end)

  it("a page holding records that are no objects", function()
    job([[
store "entsync.db"
entity "contact" { name = "text" }
local api = provider "http_json" { base_url = "URL", records = "data" }
sync "contacts" { remote = api "mixed", entity = "contact", mapping = { name = "name" },
  import = { mode = "incremental", changed = "updated_at", batch = 7 } }
]])
    local function serve(day, items)
      local list = {}
      for i, item in ipairs(items) do
        list[i] = item == "R" and string.format('{"id":%d,"name":"n%d-%d","updated_at":"%s"}', i, i, day, mark(i, day)) or item
      end
      -- one answer for each of the two runs
      server.faults({ { path = "/mixed", kind = "malformed", count = 2, body = '{"data":[' .. table.concat(list, ",") .. "]}" } })
    end
    serve(1, { "R", "R", "42", "R", "null", '"text"', "R", "[]", "[1,2]", "R", "R", "true", "R", "R", "R", "R" })
    both()
    serve(2, { "R", "[]", "R", "R", "R", '{"id":4}', "R", "R", "R", "7", "R", "R", "R", "R", "R", "R", "R" })
    both()
  end)

  it("ordered = true with records out of order warns in both", function()
    job([[
store "entsync.db"
entity "contact" { name = "text" }
local api = provider "http_json" { base_url = "URL", page = { style = "cursor", size = 5 }, ordered = true }
sync "contacts" { remote = api "cursor/contacts", entity = "contact", mapping = { name = "name" },
  import = { mode = "incremental", changed = "rev", batch = 7 } }
]])
    -- listed in updated_at order, but rev (the changed mark) goes back
    -- after 9 (105, then 100 for 10: both newer than the cursor the first
    -- batch leaves)
    local records = {}
    for id = 1, 18 do
      local rev = id == 9 and 105 or id * 10
      records[id] = { id = id, name = "n" .. id, rev = rev, updated_at = mark(id) }
    end
    set_data({ contacts = records })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    for _, path in ipairs(PATHS) do
      assert.matches("the provider promised records in changed order but", first[path].stderr, 1, true)
    end
    records[2] = copy(records[2]); records[2].name, records[2].rev = "changed", 500
    records[19] = { id = 19, name = "n19", rev = 400, updated_at = mark(19) }
    records[4] = copy(records[4]); records[4].name, records[4].rev = "older", 1
    set_data({ contacts = records })
    local second = both()
    for _, path in ipairs(PATHS) do
      assert.matches("the provider promised records in changed order but", second[path].stderr, 1, true)
    end
  end)

  it("deletes = \"flag\" with incremental passes and a full one", function()
    job([[
store "entsync.db"
entity "contact" { email = "text", name = "text", age = "integer" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, since = { param = "updated_from" } }
sync "contacts" { remote = api "page/contacts", entity = "contact",
  mapping = { email = "email", name = "name", age = "age" },
  import = { mode = "incremental", changed = "updated_at", batch = 7, deletes = "flag" } }
]])
    local data = contacts(1, 23)
    set_data({ contacts = data })
    local first = both()
    assert.is_true(first.c.in_c > 0, first.c.stderr)
    change_contacts(data)
    both()
    -- two records gone at the remote: a full pass flags them
    for _, id in ipairs({ 4, 20 }) do
      assert.equal(204, server.request("DELETE", "/api/contacts/" .. id).status)
    end
    both(nil, "--full")
    local flagged = helpers.query(root .. "/c/entsync.db", "SELECT count(*) AS n FROM entsync_idmap WHERE gone_at IS NOT NULL")
    assert.equal(2, flagged[1].n)
    -- one comes back, changed
    local back = copy(data[4])
    back.name, back.updated_at = "Back 4", mark(4, 3)
    assert.equal(201, server.request("POST", "/api/contacts", { body = back }).status)
    both()
  end)

  -- A limit over a reader in changed order: records are taken as they
  -- come (an unordered one is read whole and sorted first, in Lua).
  it("a limit: consecutive runs of an ordered sync", function()
    job([[
store "entsync.db"
entity "contact" { email = "text", name = "text", age = "integer" }
local api = provider "http_json" { base_url = "URL", page = { style = "page", size = 5 }, ordered = true,
  since = { param = "updated_from" } }
sync "contacts" { remote = api "page/contacts", entity = "contact",
  mapping = { email = "email", name = "name", age = "age" },
  import = { mode = "incremental", changed = "updated_at", batch = 7, limit = 6 } }
]])
    local data = contacts(1, 23)
    set_data({ contacts = data })
    local created = {}
    for i = 1, 5 do created[i] = I.summary(both().c.stdout).created end
    assert.same({ 6, 6, 6, 5, 0 }, created)
    change_contacts(data)
    for _ = 1, 3 do both() end
  end)
end)
