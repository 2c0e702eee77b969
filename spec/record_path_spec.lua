-- The record path of ndjson imports: each line decoded, mapped, hashed and
-- written in C, with Lua only for the mapping's callbacks, and every line
-- the C path cannot take exactly handed to the Lua pipeline as it is.
-- ENTSYNC_RECORD_PATH=lua sends every record through the Lua pipeline.
--
-- Each case is a job run by the real entsync-run twice over the same
-- input, once with ENTSYNC_RECORD_PATH=lua and once without, into two
-- stores; everything a run leaves must be the same in both: every entity
-- row (all columns), the id map (all but synced_at), the failures (all but
-- their times), the sync state (all but updated_at), the run history and
-- the change log (all but times, pids and hosts), stdout (the summary
-- lines, without their timings), stderr and the exit status. A second run
-- over changed input (lines changed, unchanged, gone and new) is compared
-- the same way. Batches are 3 records, so batch boundaries fall inside
-- every case. Most cases import incrementally on a mark the spec adds to
-- each line, the runs the C path takes (lua/entsync/record_path.lua says
-- when); the second run reads what the first left (hashes, raw hashes,
-- failures, the cursor).
--
-- "[C path] maps a plain mapping in C" checks that the C path is taken at
-- all (the --verbose line `sync "NAME": N of M records mapped in C`, and
-- its JSON log event record_path).

local helpers = require "helpers"
local json = require "entsync.json"
local S = require "import_support"

local LUA = { ENTSYNC_RECORD_PATH = "lua" }
local DEFAULT = { ENTSYNC_RECORD_PATH = false }

-- Columns that are clock readings or name the process: they differ
-- between any two runs.
local UNSTABLE = {
  entsync_idmap = { synced_at = true },
  entsync_failures = { first_at = true, last_at = true, next_at = true },
  entsync_state = { updated_at = true },
  entsync_runs = { started_at = true, ended_at = true, pid = true, host = true },
  entsync_changes = { at = true },
  entsync_syncs = { created_at = true },
}

-- entsync's tables compared, with the order their rows are read in.
local LEDGER = {
  { "entsync_syncs", "id" }, { "entsync_entities", "id" }, { "entsync_idmap", "key" },
  { "entsync_failures", "sync, direction, key" }, { "entsync_state", "sync" }, { "entsync_runs", "id" },
  { "entsync_changes", "seq" },
}

-- text with every occurrence of the job folder's path replaced by <dir>,
-- and addresses ("table: 0x55d0c0ffee00", a table turned into text) by 0x?.
local function relative(text, dir)
  local from = 1
  while true do
    local at = text:find(dir, from, true)
    if not at then break end
    text = text:sub(1, at - 1) .. "<dir>" .. text:sub(at + #dir)
    from = at + 5
  end
  return (text:gsub("(%a+): 0x%x+", "%1: 0x?"))
end

-- The rows of a table as lines "column=quote(value) ...", in order: SQL's
-- quote() tells 1 from 1.0 from '1' and writes a real so it reads back.
local function rows(dir, table_name, order)
  local skip = UNSTABLE[table_name] or {}
  local parts = {}
  for _, column in ipairs(S.query(dir, string.format('PRAGMA table_info("%s")', table_name))) do
    if not skip[column.name] then
      parts[#parts + 1] = string.format([['%s=' || quote("%s")]], column.name, column.name)
    end
  end
  assert(#parts > 0, "no table " .. table_name)
  local out = {}
  for i, row in ipairs(S.query(dir, string.format('SELECT %s AS line FROM "%s" ORDER BY %s',
      table.concat(parts, " || ' ' || "), table_name, order))) do
    out[i] = relative(row.line, dir)
  end
  return out
end

-- The lines of text that are not empty (relative to dir, given one).
local function lines_of(text, dir)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = dir and relative(line, dir) or line end
  return out
end

-- Everything observable after a run of the job in dir: { section = value }
-- and the order of the sections.
local function observe(dir, result, entities)
  local seen, order = {}, {}
  local function add(name, value)
    seen[name] = value
    order[#order + 1] = name
  end
  add("exit status", result.code)
  local stdout = {}
  for _, line in ipairs(lines_of(result.stdout, dir)) do stdout[#stdout + 1] = (line:gsub(" in [%d%.]+m?s", "")) end
  add("stdout", stdout)
  add("stderr", lines_of(result.stderr, dir))
  for _, entity in ipairs(entities) do add("entity " .. entity, rows(dir, entity, "id")) end
  for _, ledger in ipairs(LEDGER) do add(ledger[1], rows(dir, ledger[1], ledger[2])) end
  return seen, order
end

-- The start of every case's job: the ndjson provider over data/, and
-- marked(), the import settings of most cases: incremental on the field
-- "mark", which write_input puts in every object line, so a first run is
-- one the C path takes (a first import of an incremental sync).
local JOB_HEAD = 'local json = require "entsync.json"\n'
  .. 'local files = provider "ndjson" { dir = "data", max_line = 1000 }\n'
  .. 'local function marked() return { mode = "incremental", changed = "mark", batch = 3 } end\n'

-- Writes the input files of a pass, { name = lines } as
-- data/<name>.ndjson. Unless the case has marks of its own (own_marks),
-- each line that opens an object (after any white space) gets the field
-- "mark" first: its line number in the first pass. In the second, a line
-- the first pass had at an odd line keeps its mark there (the same bytes,
-- before the cursor), and every other line is marked after every
-- first-pass mark: changed records, new ones, and unchanged ones given a
-- newer mark (read again, their content unchanged).
local function write_input(dir, case, pass)
  for name, lines in pairs(case[pass]) do
    local before = {}
    if pass == "again" then
      for i, line in ipairs(case.first[name] or {}) do before[line] = before[line] or i end
    end
    local out = {}
    for i, line in ipairs(lines) do
      local lead, rest = line:match("^(%s*){(.*)$")
      if not case.own_marks and lead then
        local kept = before[line] and before[line] % 2 == 1 and before[line]
        local mark = pass == "first" and i or kept or 1000 + i
        line = string.format('%s{"mark":%d%s%s', lead, mark, rest:match("^%s*}") and "" or ",", rest)
      end
      out[i] = line
    end
    helpers.write(dir .. "/data/" .. name .. ".ndjson", table.concat(out, "\n") .. "\n")
  end
end

-- The cursor an incremental sync keeps: "mark id", as quote() writes them.
local function cursor(dir)
  local row = S.query(dir, "SELECT quote(cursor_mark) || ' ' || quote(cursor_id) AS c FROM entsync_state")[1]
  return row and row.c
end

-- Runs case in two fresh stores, one per record path, and compares each
-- of its passes. A case: { name, job (the job's declarations, after
-- JOB_HEAD), entities (the tables compared), first and again ({ file
-- name = lines } for each pass), expect = { first = stdout lines, again =
-- ... } (the Lua pipeline's summary lines, so a case that does nothing
-- cannot pass), cursor = { first = "mark id", again = ... } }.
local function differ(case)
  local lua_dir, default_dir = S.newdir(), S.newdir()
  for _, dir in ipairs({ lua_dir, default_dir }) do helpers.write(dir .. "/job.lua", JOB_HEAD .. case.job) end
  for _, pass in ipairs({ "first", "again" }) do
    write_input(lua_dir, case, pass)
    write_input(default_dir, case, pass)
    local lua_seen, order = observe(lua_dir, helpers.run(lua_dir, { "job.lua", "run", "--no-progress" }, LUA),
      case.entities)
    local default_seen = observe(default_dir,
      helpers.run(default_dir, { "job.lua", "run", "--no-progress" }, DEFAULT), case.entities)
    -- a job both paths refuse compares equal and proves nothing
    assert(lua_seen["exit status"] == 0 or lua_seen["exit status"] == 1,
      string.format("%s, %s pass: exit %s\n%s", case.name, pass, tostring(lua_seen["exit status"]),
        table.concat(lua_seen.stderr, "\n")))
    for _, section in ipairs(order) do
      assert.same(lua_seen[section], default_seen[section],
        string.format("%s, %s pass: %s differs between ENTSYNC_RECORD_PATH=lua (expected) and the default path",
          case.name, pass, section))
    end
    if case.expect and case.expect[pass] then
      assert.same(case.expect[pass], lua_seen.stdout, case.name .. ", " .. pass .. " pass: summary lines")
    end
    if case.cursor then
      assert.equal(case.cursor[pass], cursor(lua_dir), case.name .. ", " .. pass .. " pass: the cursor")
    end
  end
end

-- Lines {"id":N,"v":<value>} for each value (JSON text), ids from first.
local function values_lines(values, first)
  local out = {}
  for i, value in ipairs(values) do out[i] = string.format('{"id":%d,"v":%s}', first + i - 1, value) end
  return out
end

-- A value of every declared type, native, and values each type coerces,
-- or refuses (one JSON value a line).
local VALUES = lines_of([=[
"x"
""
"é"
"caf\u00e9 \ud83d\ude00"
"a\u0000b"
"tab\tnl\n"
12
-7
0
-0
1.0
2.5
-0.0
0.1
1e-7
1E2
1e300
-1e300
1e16
9007199254740993
9223372036854775807
-9223372036854775808
9223372036854775808
12345678901234567890
true
false
"12"
" 12 "
"+3"
"-4"
"12.0"
"1e3"
"0x10"
"abc"
"yes"
"No"
"on"
"OFF"
"1"
"0"
1
0
2
1700000000
1700000000.5
1700000000.9996
-1
"2024-01-02T03:04:05Z"
"2024-01-02"
"2024"
null
{}
[]
{"a":1,"a":2}
[1,[2,[]],{}]
{"k":null,"l":[null]}
]=])

-- The second pass over VALUES: every fourth line takes the next line's
-- value (changed), every seventh is gone, the rest unchanged, and three
-- new lines.
local function values_again()
  local out = {}
  for i, value in ipairs(VALUES) do
    if i % 7 ~= 0 then
      out[#out + 1] = string.format('{"id":%d,"v":%s}', i, i % 4 == 0 and VALUES[i % #VALUES + 1] or value)
    end
  end
  for _, line in ipairs(values_lines({ '"new"', "3.25", "true" }, #VALUES + 1)) do out[#out + 1] = line end
  return out
end

local TYPES_JOB = [[
entity "t_text" { v = "text" }
entity "t_integer" { v = "integer" }
entity "t_real" { v = "real" }
entity "t_boolean" { v = "boolean" }
entity "t_json" { v = "json" }
entity "t_timestamp" { v = "timestamp" }
-- one after the other (syncs without an order run at once, and their
-- lines would interleave as they happen to)
local before
for _, kind in ipairs({ "text", "integer", "real", "boolean", "json", "timestamp" }) do
  sync(kind) { remote = files "values.ndjson", entity = "t_" .. kind, mapping = { v = "v" }, import = marked(),
    depends_on = { before } }
  before = kind
end
]]

local CASES = {}

CASES[#CASES + 1] = {
  name = "every declared type, native values and coerced ones",
  expect = {
    first = {
      "text: 50 created, 0 updated, 0 unchanged, 0 stale, 6 failed, 0 deleted",
      "integer: 26 created, 0 updated, 0 unchanged, 0 stale, 30 failed, 0 deleted",
      "real: 36 created, 0 updated, 0 unchanged, 0 stale, 20 failed, 0 deleted",
      "boolean: 15 created, 0 updated, 0 unchanged, 0 stale, 41 failed, 0 deleted",
      "json: 56 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
      "timestamp: 20 created, 0 updated, 0 unchanged, 0 stale, 36 failed, 0 deleted",
    },
    again = {
      "text: 3 created, 10 updated, 32 unchanged, 0 stale, 3 failed, 0 deleted, 3 before the cursor",
      "integer: 3 created, 3 updated, 17 unchanged, 0 stale, 16 failed, 0 deleted, 12 before the cursor",
      "real: 1 created, 7 updated, 23 unchanged, 0 stale, 13 failed, 0 deleted, 7 before the cursor",
      "boolean: 4 created, 2 updated, 11 unchanged, 0 stale, 18 failed, 0 deleted, 16 before the cursor",
      "json: 3 created, 11 updated, 37 unchanged, 0 stale, 0 failed, 0 deleted",
      "timestamp: 2 created, 4 updated, 11 unchanged, 0 stale, 19 failed, 0 deleted, 15 before the cursor",
    },
  },



  job = TYPES_JOB,
  entities = { "t_text", "t_integer", "t_real", "t_boolean", "t_json", "t_timestamp" },
  first = { values = values_lines(VALUES, 1) },
  again = { values = values_again() },
}

CASES[#CASES + 1] = {
  name = "nested paths",
  expect = {
    first = {
      "recs: 8 created, 0 updated, 0 unchanged, 0 stale, 1 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 2 updated, 4 unchanged, 0 stale, 1 failed, 0 deleted",
    },
  },



  job = [[
entity "rec" { ab = "text", item = "text", deep = "integer", through_string = "text", missing = "text",
  whole = "json", cell = "json", dotted = "text" }
sync "recs" { remote = files "paths.ndjson", entity = "rec", import = marked(),
  mapping = { ab = "a.b", item = "items[2].name", deep = "a.c.d", through_string = "s.x", missing = "nope.x",
    whole = "a", cell = "m[2][1]", dotted = "x.y" } }
]],
  entities = { "rec" },
  first = { paths = {
    '{"id":1,"a":{"b":"ab1","c":{"d":4}},"items":[{"name":"i1"},{"name":"i2"}],"s":"str","m":[[1],[2,3]],"x":{"y":"xy"}}',
    '{"id":2,"a":{"b":5},"items":[{"name":"only"}],"s":{"x":"sx"},"m":[[1]]}',
    '{"id":3,"a":"a string","items":{"2":{"name":"key two"}},"s":["x"],"m":[]}',
    '{"id":4,"a":[{"b":"in array"}],"items":[null,{"name":null}],"x.y":"literal dotted key"}',
    '{"id":5,"a":{"b":null,"c":{"d":"7"}},"items":[{},{"name":3.5}],"m":[1,[{"k":"v"}]]}',
    '{"id":6,"a":{"c":{"d":1.5}}}',
    '{"id":7}',
    '{"id":8,"a":{"b":"ab8","c":[1,2]},"items":[1,{"name":true}],"m":{"2":[9]}}',
    '{"id":10,"a":{"b":"first a"},"a":{"c":{"d":5}},"items":[{"name":"x"},{"name":"y"},{"name":"z"}]}',
  } },
  again = { paths = {
    '{"id":1,"a":{"b":"ab1","c":{"d":4}},"items":[{"name":"i1"},{"name":"i2"}],"s":"str","m":[[1],[2,3]],"x":{"y":"xy"}}',
    '{"id":2,"a":{"b":"changed"},"items":[{"name":"only"},{"name":"second"}],"s":{"x":"sx"},"m":[[1]]}',
    '{"id":4,"a":[{"b":"in array"}],"items":[null,{"name":null}],"x.y":"literal dotted key"}',
    '{"id":5,"a":{"b":null,"c":{"d":"8"}},"items":[{},{"name":3.5}],"m":[1,[{"k":"w"}]]}',
    '{"id":6,"a":{"c":{"d":1.5}}}',
    '{"id":7}',
    '{"id":8,"a":{"b":"ab8","c":[1,2]},"items":[1,{"name":true}],"m":{"2":[9]}}',
    '{"id":9,"a":{"b":"new"},"items":[{"name":"n1"},{"name":"n2"}],"m":[[0],[{"deep":[1,2]}]]}',
  } },
}

CASES[#CASES + 1] = {
  name = "json fields",
  expect = {
    first = {
      "docs: 10 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "docs: 1 created, 2 updated, 5 unchanged, 0 stale, 0 failed, 0 deleted",
    },
  },



  job = [[
entity "doc" { body = "json", inner = "json" }
sync "docs" { remote = files "docs.ndjson", entity = "doc", import = marked(),
  mapping = { body = "body", inner = "wrap.inner" } }
]],
  entities = { "doc" },
  first = { docs = {
    '{"id":1,"body":{"a":1,"a":2,"b":{"c":3,"c":[4]}},"wrap":{"inner":{"z":1,"y":2,"x":3}}}',
    '{"id":2,"body":{},"wrap":{"inner":[]}}',
    '{"id":3,"body":[[1,[2,[3,[]]]],[],{}],"wrap":{"inner":[[[[]]]]}}',
    '{"id":4,"body":{"s":"\\u00e9\\u00E9\\ud83d\\ude00 \\" \\\\ \\/ \\b\\f\\n\\r\\t \\u001f \\u0000"},"wrap":{"inner":"\\u2028"}}',
    '{"id":5,"body":[null,1,null],"wrap":{"inner":{"k":null}}}',
    '{"id":6,"body":{"n":[-0,-0.0,1.0,2.5,1e300,0.30000000000000004,9223372036854775807,12345678901234567890]}}',
    '{"id":7,"body":null,"wrap":null}',
    '{"id":8,"body":"a string","wrap":{"inner":false}}',
    '{"id":9,"body":{"1":"digit key","":"empty key","é":"utf8 key"},"wrap":{"inner":0}}',
    '{"id":10,"body":[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]],"wrap":{"inner":{"a":{"b":{"c":{}}}}}}',
  } },
  again = { docs = {
    '{"id":1,"body":{"a":2,"b":{"c":[4]}},"wrap":{"inner":{"x":3,"y":2,"z":1}}}',
    '{"id":2,"body":[],"wrap":{"inner":{}}}',
    '{"id":3,"body":[[1,[2,[3,[]]]],[],{}],"wrap":{"inner":[[[[]]]]}}',
    '{"id":5,"body":[null,1,null,null],"wrap":{"inner":{"k":null}}}',
    '{"id":6,"body":{"n":[0,0.0,1,2.5,1e300,0.30000000000000004,9223372036854775807,12345678901234567890]}}',
    '{"id":7,"body":null}',
    '{"id":8,"body":"another string","wrap":{"inner":false}}',
    '{"id":11,"body":{"new":[{},[]]},"wrap":{"inner":[null]}}',
  } },
}

CASES[#CASES + 1] = {
  name = "nulls, defaults and required fields",
  expect = {
    first = {
      "recs: 5 created, 0 updated, 0 unchanged, 0 stale, 3 failed, 0 deleted",
    },
    again = {
      "recs: 3 created, 1 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted, 1 before the cursor",
    },
  },



  job = [[
entity "rec" { plain = "text", dflt = "text", count = "integer", coerced = "integer", flag = "boolean", need = "text",
  need_n = "integer" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = {
    plain = "plain",
    dflt = { "dflt", default = "fallback" },
    count = { "count", default = 7 },
    coerced = { "coerced", default = "5" },
    flag = { "flag", default = false },
    need = { "need", required = true },
    need_n = { "n.v", required = true, default = 0 },
  } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"plain":"p","dflt":"d","count":1,"coerced":2,"flag":true,"need":"x","n":{"v":9}}',
    '{"id":2,"plain":null,"dflt":null,"count":null,"coerced":null,"flag":null,"need":"x","n":{"v":null}}',
    '{"id":3,"need":"x"}',
    '{"id":4,"plain":"p","need":null}',
    '{"id":5,"plain":"p"}',
    '{"id":6,"need":"","n":null}',
    '{"id":7,"need":"x","count":"12","coerced":"abc"}',
    '{"id":8,"need":1,"flag":"yes","dflt":false}',
  } },
  again = { recs = {
    '{"id":1,"plain":"p","dflt":"d","count":1,"coerced":2,"flag":true,"need":"x","n":{"v":9}}',
    '{"id":2,"plain":"now set","dflt":null,"count":null,"coerced":null,"flag":null,"need":"x","n":{"v":null}}',
    '{"id":3,"need":"x","count":null}',
    '{"id":4,"plain":"p","need":"now present"}',
    '{"id":5,"plain":"p"}',
    '{"id":7,"need":"x","count":"12","coerced":"3"}',
    '{"id":9,"need":"new","dflt":null}',
  } },
}

CASES[#CASES + 1] = {
  name = "split entities and a sync linked to them",
  expect = {
    first = {
      "people: 4 created, 0 updated, 0 unchanged, 0 stale, 1 failed, 0 deleted",
      "phones: 3 created, 0 updated, 0 unchanged, 0 stale, 2 failed, 0 deleted",
    },
    again = {
      "people: 2 created, 2 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted",
      "phones: 2 created, 1 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted, 2 before the cursor, 2 retried",
    },
  },



  job = [[
entity "person" { name = "text", email = "text", phone = "text" }
entity "profile" { company = "text", city = "text", size = "integer" }
sync "people" { remote = files "people.ndjson", entity = { "person", "profile" }, import = marked(),
  mapping = { person = { name = "name", email = "email" },
    profile = { company = "company.name", city = "addr[1].city", size = "company.size" } } }
sync "phones" { remote = files "phones.ndjson", entity = "person", depends_on = { "people" },
  link = { sync = "people", key = "person_id" }, import = marked(), mapping = { phone = "phone" } }
]],
  entities = { "person", "profile" },
  first = {
    people = {
      '{"id":1,"name":"Ann","email":"a@x","company":{"name":"Acme","size":"10"},"addr":[{"city":"Oslo"}]}',
      '{"id":2,"name":"Bob","email":"b@x","company":{"name":"Beta"}}',
      '{"id":3,"name":"Cy","company":{"size":2.5}}',
      '{"id":4,"name":"Dee","email":"d@x","addr":[{"city":"Rome"},{"city":"Pisa"}]}',
      '{"id":5,"name":"Eve"}',
    },
    phones = {
      '{"id":"p1","person_id":1,"phone":"111"}',
      '{"id":"p2","person_id":2,"phone":222}',
      '{"id":"p9","person_id":9,"phone":"999"}',
      '{"id":"p4","person_id":4,"phone":null}',
      '{"id":"px","phone":"no link"}',
    },
  },
  again = {
    people = {
      '{"id":1,"name":"Ann","email":"a@x","company":{"name":"Acme","size":"10"},"addr":[{"city":"Oslo"}]}',
      '{"id":2,"name":"Bob","email":"b@x","company":{"name":"Beta Ltd"}}',
      '{"id":3,"name":"Cy","company":{"size":3}}',
      '{"id":5,"name":"Eve","addr":[{"city":"Bern"}]}',
      '{"id":9,"name":"Ivy","email":"i@x"}',
    },
    phones = {
      '{"id":"p1","person_id":1,"phone":"111"}',
      '{"id":"p2","person_id":2,"phone":"223"}',
      '{"id":"p9","person_id":9,"phone":"999"}',
      '{"id":"p5","person_id":5,"phone":"555"}',
    },
  },
}

-- Callbacks that read the record given to them (a view whose fields
-- appear as they are read) the ways a decoded record is read.
local VIEW_JOB = [[
local previous
local function show(v)
  return type(v) == "table" and json.encode(v) or tostring(v)
end
local function sorted_keys(t)
  local keys = {}
  for k, v in pairs(t) do keys[#keys + 1] = tostring(k) .. ":" .. type(v) end
  table.sort(keys)
  return table.concat(keys, ",")
end
entity "rec" { x = "text", ab = "text", tag1 = "text", ntags = "integer", keys = "text", a_keys = "text",
  encoded = "text", kinds = "text", listed = "text", tags_json = "text", a_value = "text", is_null = "text",
  previous = "text", made = "json", a_write = "text", read_back = "text", about = "text", tricks = "text" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = {
    x = { import = function(_, r) return r.x end },
    ab = { import = function(_, r) return type(r.a) == "table" and r.a.b or nil end },
    tag1 = { import = function(_, r) return type(r.tags) == "table" and r.tags[1] or nil end },
    ntags = { import = function(_, r) return type(r.tags) == "table" and #r.tags or -1 end },
    keys = { import = function(_, r) return sorted_keys(r) end },
    a_keys = { import = function(_, r) return type(r.a) == "table" and sorted_keys(r.a) or nil end },
    encoded = { import = function(_, r) return json.encode(r) end },
    kinds = { import = function(_, r)
      return table.concat({ type(r), type(r.a), type(r.tags), type(r.missing), tostring(#r), tostring(r.missing == nil) }, " ")
    end },
    listed = { import = function(_, r)
      if type(r.tags) ~= "table" then return nil end
      local out = {}
      for i, v in ipairs(r.tags) do out[#out + 1] = i .. "=" .. show(v) end
      return table.concat(out, ";")
    end },
    tags_json = { "tags", import = function(v) return v ~= nil and json.encode(v) or nil end },
    a_value = { "a", import = function(v) return show(v) end },
    is_null = { import = function(_, r) return tostring(r.n == json.null) .. " " .. tostring(r.n) end },
    previous = { import = function(_, r)
      local out = "none"
      if previous then
        out = table.concat({ show(previous.x), show(type(previous.a) == "table" and previous.a.b or nil),
          show(type(previous.tags) == "table" and previous.tags[2] or nil), sorted_keys(previous) }, "/")
      end
      previous = r
      return out
    end },
    made = { "x", import = function(v, r, ctx)
      return { x = v, id = ctx.remote_id, list = { 1, "two", { three = 3 } }, empty = {}, obj = json.object(),
        arr = json.array(), tags = json.decode(json.encode(r.tags)) }
    end },
    a_write = { import = function(_, r) r.added = "written by a_write"; r.x_seen = r.x; return "wrote" end },
    read_back = { import = function(_, r) return tostring(r.added) .. " " .. tostring(r.x_seen) end },
    -- the table library on a list of the record, which it then changes
    -- (record 4's tags are an object with the key "1": the integer key 1
    -- pushed beside it cannot be encoded, and that record fails)
    tricks = { import = function(_, r)
      if type(r.tags) ~= "table" then return nil end
      local copy = { table.unpack(r.tags) }
      local ok, joined = pcall(table.concat, r.tags, ",")
      table.insert(r.tags, "pushed")
      return table.concat({ #copy, select("#", table.unpack(r.tags)), ok and joined or "no concat",
        show(r.tags[#r.tags]), show(r.tags[0]), tostring(next(r) ~= nil), json.encode(r.tags) }, " ")
    end },
    about = { import = function(_, r, ctx)
      return table.concat({ ctx.sync, ctx.entity, tostring(ctx.remote_id), tostring(math.type(ctx.remote_id)),
        tostring(ctx.local_id), ctx.direction }, " ")
    end },
  } }
]]

local VIEW_RECORDS = {
  '{"id":1,"x":"one","a":{"b":"ab","c":[1,2],"d":{"e":null}},"tags":["t1","t2","t3"],"n":null}',
  '{"id":2,"x":"two","a":{"b":2},"tags":[],"n":0}',
  '{"id":3,"x":"three","a":"not a table","tags":[["nested",1],{"k":"v"},null,true]}',
  '{"id":4,"a":{},"tags":{"1":"object, not a list"}}',
  '{"id":5,"x":"five","a":{"b":"x","b":"dup wins"},"tags":[null,null],"extra":{"deep":[{"deeper":[]}]}}',
  '{"id":6,"x":"\\u00e9\\ud83d\\ude00","tags":["\\u0041"],"n":"null"}',
  '{"id":7,"x":"seven","a":[{"b":"array a"}],"tags":[1.5,-0,1e300,9223372036854775807]}',
}

CASES[#CASES + 1] = {
  name = "callbacks reading the record view",
  expect = {
    first = {
      "recs: 5 created, 0 updated, 0 unchanged, 0 stale, 2 failed, 0 deleted",
    },
    again = {
      "recs: 2 created, 1 updated, 3 unchanged, 0 stale, 0 failed, 0 deleted, 1 before the cursor",
    },
  },



  job = VIEW_JOB,
  entities = { "rec" },
  first = { recs = VIEW_RECORDS },
  again = { recs = {
    VIEW_RECORDS[1],
    '{"id":2,"x":"two changed","a":{"b":2,"c":{}},"tags":["now one"],"n":0}',
    VIEW_RECORDS[3],
    VIEW_RECORDS[5],
    VIEW_RECORDS[7],
    '{"id":8,"x":"eight","a":{"b":"new"},"tags":["n1","n2"]}',
    '{"id":9}',
  } },
}

CASES[#CASES + 1] = {
  name = "a json value a callback returns holding a list of the record that a later callback changes",
  expect = {
    first = {
      "recs: 4 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 1 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted",
    },
  },
  job = [[
entity "rec" { a_made = "json", z_push = "text" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = {
    a_made = { import = function(_, r) return { tags = r.tags } end },
    z_push = { import = function(_, r) table.insert(r.tags, "pushed") return "z" end },
  } }
]],
  entities = { "rec" },
  first = { recs = { '{"id":1,"tags":["a"]}', '{"id":2,"tags":["b"]}', '{"id":3,"tags":[]}', '{"id":4,"tags":["d"]}' } },
  again = { recs = { '{"id":1,"tags":["a"]}', '{"id":2,"tags":["b"]}', '{"id":3,"tags":["c"]}', '{"id":5,"tags":["e"]}' } },
}

CASES[#CASES + 1] = {
  name = "a callback that raises, and callbacks giving values to convert",
  expect = {
    first = {
      "recs: 3 created, 0 updated, 0 unchanged, 0 stale, 5 failed, 0 deleted",
    },
    again = {
      "recs: 2 created, 0 updated, 1 unchanged, 0 stale, 2 failed, 0 deleted",
    },
  },



  job = [[
entity "rec" { checked = "text", upper = "text", total = "integer", when = "timestamp", doc = "json" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = {
    checked = { "x", import = function(v)
      if v == "bad" then error("x must not be bad") end
      if v == "table error" then error({ code = 7 }) end
      if v == "index" then return v.no.such end
      return v
    end },
    upper = { "name", import = function(v) return v and v:upper() end },
    total = { import = function(_, r) return r.a and r.b and r.a + r.b end },
    when = { "t", import = function(v) return v end },
    doc = { import = function(_, r) return r.doc and { wrapped = r.doc, n = #r.doc } end },
  } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"x":"good","name":"ann","a":1,"b":2,"t":1700000000,"doc":[1,2]}',
    '{"id":2,"x":"bad","name":"bob"}',
    '{"id":3,"x":"table error"}',
    '{"id":4,"x":"index"}',
    '{"id":5,"x":"fine","name":5}',
    '{"id":6,"x":"fine","a":1.5,"b":1.5,"t":"2024-02-03"}',
    '{"id":7,"x":"fine","a":"1","b":2}',
    '{"id":8,"x":"fine","a":1,"b":"x"}',
  } },
  again = { recs = {
    '{"id":1,"x":"good","name":"ann","a":1,"b":2,"t":1700000000,"doc":[1,2]}',
    '{"id":2,"x":"no longer bad","name":"bob"}',
    '{"id":3,"x":"bad"}',
    '{"id":5,"x":"fine","name":"five"}',
    '{"id":9,"x":"bad"}',
  } },
}

CASES[#CASES + 1] = {
  name = "callbacks run once per record, also for a record that fails",
  expect = {
    first = {
      "recs: 5 created, 0 updated, 0 unchanged, 0 stale, 2 failed, 0 deleted",
    },
    again = {
      "recs: 2 created, 0 updated, 1 unchanged, 0 stale, 1 failed, 0 deleted",
    },
  },



  job = [[
local calls = 0
entity "rec" { a_count = "integer", b_check = "text", c_count = "integer" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = {
    a_count = { import = function(_, _, ctx) calls = calls + 1; ctx:log("call %d", calls); return calls end },
    b_check = { "x", import = function(v) if v == "bad" then error("bad x") end return v end },
    c_count = { "x", import = function() calls = calls + 1; return calls end },
  } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"x":"a"}', '{"id":2,"x":"bad"}', '{"id":3,"x":"b"}', '{"id":4,"x":123}', '{"id":5,"x":"c"}',
    '{"id":6,"x":"bad"}', '{"id":7,"x":"d"}',
  } },
  again = { recs = { '{"id":1,"x":"a"}', '{"id":2,"x":"fixed"}', '{"id":6,"x":"bad"}', '{"id":8,"x":"e"}' } },
}

local LONG = string.format('{"id":20,"v":"%s"}', string.rep("y", 1020))
-- JSON nested deeper than entsync's decoder takes (256 levels)
local TOO_DEEP = '{"id":15,"doc":' .. string.rep("[", 257) .. string.rep("]", 257) .. "}"

CASES[#CASES + 1] = {
  name = "lines the record path cannot take: bad JSON, no usable id, duplicates, NUL, blank and long lines",
  expect = {
    first = {
      "recs: 15 created, 4 updated, 0 unchanged, 0 stale, 19 failed, 0 deleted",
    },
    again = {
      "recs: 3 created, 6 updated, 3 unchanged, 0 stale, 2 failed, 0 deleted",
    },
  },



  job = [[
entity "rec" { v = "text", doc = "json" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(),
  mapping = { v = "v", doc = "doc" } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"v":"one"}',
    "not json",
    '{"id":2,"v":"two"',
    "[1,2]",
    '"just a string"',
    "42",
    "null",
    '{"v":"no id"}',
    '{"id":null,"v":"null id"}',
    '{"id":1.5,"v":"float id"}',
    '{"id":3.0,"v":"whole float id"}',
    '{"id":"","v":"empty id"}',
    '{"id":true,"v":"boolean id"}',
    '{"id":{"a":1},"v":"object id"}',
    '{"id":"s1","v":"string id"}',
    '{"id":"1","v":"string one"}',
    '{"id":4,"v":"first four"}',
    '{"id":4,"v":"second four"}',
    '{"id":4,"v":"third four"}',
    '{"id":5,"v":"a\\u0000b"}',
    '{"id":6,"v":"ok","doc":{"s":"a\\u0000b"}}',
    "",
    "   ",
    LONG,
    '{"id":7,"v":"after the long line"}',
    '{"id":8,"v":"crlf"}\r',
    '{"id":9} {"id":10}',
    '{"id":11,"v":"bad utf8 \255"}',
    '{"id":12,"v":"x","v":"duplicate key"}',
    '{"id":-3,"v":"negative id"}',
    '{"id":9223372036854775807,"v":"largest id"}',
    '{"id":9223372036854775808,"v":"beyond int64"}',
    '{"id":-0,"v":"minus zero id"}',
    '{"id":30,"v":"id key twice","id":31}',
    '  {"id":32,"v":"white space around"}  ',
    '\t{"id":33,"v":"a tab before"}',
    '{"id":34,"v":"bad key \255","\255":1}',
    '{"id":35,"v":"esc \\/ \\" \\\\ \\b\\f\\r \\u00e9"}',
    TOO_DEEP,
    '{"id":1,"v":"one again, a later batch"}',
  } },
  again = { recs = {
    '{"id":1,"v":"one again, a later batch"}',
    '{"id":2,"v":"two"}',
    '{"id":3,"v":"three"}',
    '{"id":"s1","v":"string id"}',
    '{"id":4,"v":"one four"}',
    '{"id":5,"v":"ab"}',
    "not json either",
    '{"id":13,"v":"new"}',
    '{"id":13,"v":"new, twice"}',
    LONG,
    '{"id":"1","v":"string one, changed"}',
    '{"id":7.0,"v":"seven as a float"}',
    '{"id":"32","v":"white space around"}',
    '{"id":-0.0,"v":"minus zero id as a float"}',
  } },
}

CASES[#CASES + 1] = {
  name = "incremental import with text marks",
  own_marks = true,
  cursor = { first = "'2024-01-01T00:00:05Z' '4'", again = "'2024-01-01T00:00:07Z' '7'" },
  expect = {
    first = {
      "recs: 7 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "recs: 2 created, 2 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted, 1 before the cursor",
    },
  },



  job = [[
entity "rec" { v = "text", at = "timestamp" }
sync "recs" { remote = files "recs.ndjson", entity = "rec",
  import = { mode = "incremental", changed = "updated_at", batch = 3 }, mapping = { v = "v", at = "updated_at" } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"v":"a","updated_at":"2024-01-01T00:00:01Z"}',
    '{"id":2,"v":"b","updated_at":"2024-01-01T00:00:03Z"}',
    '{"id":3,"v":"c","updated_at":"2024-01-01T00:00:02Z"}',
    '{"id":4,"v":"d","updated_at":"2024-01-01T00:00:05Z"}',
    '{"id":5,"v":"e"}',
    '{"id":6,"v":"f","updated_at":null}',
    '{"id":7,"v":"g","updated_at":"2024-01-01T00:00:04Z"}',
  } },
  again = { recs = {
    '{"id":1,"v":"a","updated_at":"2024-01-01T00:00:01Z"}',
    '{"id":2,"v":"b changed","updated_at":"2024-01-01T00:00:06Z"}',
    '{"id":3,"v":"c changed, old mark","updated_at":"2024-01-01T00:00:02Z"}',
    '{"id":4,"v":"d","updated_at":"2024-01-01T00:00:05Z"}',
    '{"id":7,"v":"g changed","updated_at":"2024-01-01T00:00:07Z"}',
    '{"id":8,"v":"new","updated_at":"2024-01-01T00:00:06Z"}',
    '{"id":9,"v":"new, no mark"}',
  } },
}

CASES[#CASES + 1] = {
  name = "incremental import with integer marks",
  own_marks = true,
  cursor = { first = "10.5 '9'", again = "12 '7'" },
  expect = {
    first = {
      "recs: 8 created, 0 updated, 0 unchanged, 0 stale, 1 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 1 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted, 3 before the cursor",
    },
  },



  job = [[
entity "rec" { v = "text", rev = "integer" }
sync "recs" { remote = files "recs.ndjson", entity = "rec",
  import = { mode = "incremental", changed = "rev", batch = 3 }, mapping = { v = "v", rev = "rev" } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"v":"a","rev":1}',
    '{"id":2,"v":"b","rev":10}',
    '{"id":3,"v":"c","rev":9}',
    '{"id":4,"v":"d","rev":2}',
    '{"id":5,"v":"e","rev":10}',
    '{"id":6,"v":"f","rev":3.0}',
    '{"id":9,"v":"float rev","rev":10.5}',
    '{"id":11,"v":"null rev","rev":null}',
    '{"id":12,"v":"rev twice","rev":1,"rev":9}',
  } },
  again = { recs = {
    '{"id":1,"v":"a","rev":1}',
    '{"id":2,"v":"b","rev":10}',
    '{"id":3,"v":"c changed","rev":11}',
    '{"id":4,"v":"d changed, old rev","rev":2}',
    '{"id":5,"v":"e changed, same rev","rev":10}',
    '{"id":7,"v":"new","rev":12}',
    '{"id":8,"v":"new, low rev","rev":0}',
  } },
}

CASES[#CASES + 1] = {
  name = "an id field of another name, a field typed apart from its column, filter and after_map",
  expect = {
    first = {
      "recs: 3 created, 0 updated, 0 unchanged, 0 stale, 4 failed, 0 deleted, 2 filtered out",
    },
    again = {
      "recs: 3 created, 1 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted, 1 filtered out",
    },
  },



  job = [[
entity "rec" { v = "text", n = "text", both = "text", domain = "text" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", id = "uid", import = marked(),
  filter = function(record, ctx)
    if record.skip == json.null then error("skip is null") end
    if record.skip then return false end
    return type(record.meta) ~= "table" or record.meta.keep ~= false
  end,
  after_map = function(entities, record, ctx)
    entities.rec.both = tostring(entities.rec.v) .. "+" .. tostring(record.n)
    if type(record.email) == "string" then entities.rec.domain = record.email:match("@(.*)$") end
    if record.bad_after then entities.rec.n = { "not", "text" } end
  end,
  mapping = { v = "v", n = { "n", type = "integer" } } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"uid":"a","v":"one","n":"12","email":"a@x.org"}',
    '{"uid":"b","v":"two","n":2.0,"skip":true}',
    '{"uid":"c","v":"three","n":"x"}',
    '{"uid":"d","v":"four","meta":{"keep":false}}',
    '{"uid":"e","v":"five","skip":null}',
    '{"uid":7,"v":"seven","n":true,"meta":{"keep":true}}',
    '{"id":8,"v":"no uid"}',
    '{"uid":"9","v":"nine","bad_after":1}',
    '{"uid":"f","v":"six","n":-0,"skip":false}',
  } },
  again = { recs = {
    '{"uid":"a","v":"one","n":"12","email":"a@x.org"}',
    '{"uid":"b","v":"two","n":2.0}',
    '{"uid":"c","v":"three","n":"3"}',
    '{"uid":"d","v":"four","meta":{"keep":false}}',
    '{"uid":7,"v":"seven changed","n":false}',
    '{"uid":"g","v":"new","email":"g@y.net"}',
  } },
}

CASES[#CASES + 1] = {
  name = "references through another sync (map.refs)",
  expect = {
    first = {
      "teams: 3 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
      "members: 3 created, 0 updated, 0 unchanged, 0 stale, 2 failed, 0 deleted",
    },
    again = {
      "teams: 1 created, 0 updated, 3 unchanged, 0 stale, 0 failed, 0 deleted",
      "members: 2 created, 1 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted, 1 before the cursor, 1 retried",
    },
  },



  job = [[
local map = require "entsync.map"
entity "team" { name = "text" }
entity "member" { name = "text", team = "integer", teams = "json" }
sync "teams" { remote = files "teams.ndjson", entity = "team", import = marked(), mapping = { name = "name" } }
sync "members" { remote = files "members.ndjson", entity = "member", depends_on = { "teams" }, import = marked(),
  mapping = { name = "name", team = { "team", import = map.refs "teams" },
    teams = { "teams", import = map.refs "teams" } } }
]],
  entities = { "team", "member" },
  first = {
    teams = { '{"id":"t1","name":"Red"}', '{"id":"t2","name":"Blue"}', '{"id":3,"name":"Green"}' },
    members = {
      '{"id":1,"name":"Ann","team":"t1","teams":["t1","t2"]}',
      '{"id":2,"name":"Bob","team":"t9","teams":[]}',
      '{"id":3,"name":"Cy","team":3,"teams":[3,"t1"]}',
      '{"id":4,"name":"Dee","team":null}',
      '{"id":5,"name":"Eve","teams":["t2","t8"]}',
    },
  },
  again = {
    teams = { '{"id":"t1","name":"Red"}', '{"id":"t2","name":"Blue"}', '{"id":3,"name":"Green"}',
      '{"id":"t9","name":"Late"}' },
    members = {
      '{"id":1,"name":"Ann","team":"t2","teams":["t1","t2"]}',
      '{"id":2,"name":"Bob","team":"t9","teams":[]}',
      '{"id":3,"name":"Cy","team":3,"teams":[3,"t1"]}',
      '{"id":6,"name":"Fay","team":"t1"}',
    },
  },
}

CASES[#CASES + 1] = {
  name = "incremental import with time marks (ISO text and epochs, changed_kind = time)",
  own_marks = true,
  expect = {
    first = {
      "recs: 5 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 1 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted, 1 before the cursor",
    },
  },



  cursor = { first = "1704067260 '2'", again = "'2024-01-01T00:02:00Z' '2'" },
  job = [[
entity "rec" { v = "text" }
sync "recs" { remote = files "recs.ndjson", entity = "rec",
  import = { mode = "incremental", changed = "at", changed_kind = "time", batch = 3 }, mapping = { v = "v" } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"v":"a","at":"2024-01-01T00:00:00Z"}',
    '{"id":2,"v":"b","at":1704067260}',
    '{"id":3,"v":"c","at":"2024-01-01T02:00:00+02:00"}',
    '{"id":4,"v":"d","at":1704067230.5}',
    '{"id":5,"v":"e","at":"2024-01-01T00:00:30.250Z"}',
  } },
  again = { recs = {
    '{"id":1,"v":"a","at":"2024-01-01T00:00:00Z"}',
    '{"id":2,"v":"b changed","at":"2024-01-01T00:02:00Z"}',
    '{"id":4,"v":"d changed","at":1704067200}',
    '{"id":6,"v":"new","at":1704067300}',
  } },
}

CASES[#CASES + 1] = {
  name = "numbers and text as the marks of one input (changed_kind auto)",
  own_marks = true,
  expect = {
    first = {
      "recs: 6 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 1 updated, 1 unchanged, 0 stale, 0 failed, 0 deleted, 2 before the cursor",
    },
  },


  job = [[
entity "rec" { v = "text" }
sync "recs" { remote = files "recs.ndjson", entity = "rec",
  import = { mode = "incremental", changed = "rev", batch = 3 }, mapping = { v = "v" } }
]],
  entities = { "rec" },
  first = { recs = {
    '{"id":1,"v":"a","rev":1}', '{"id":2,"v":"b","rev":10}', '{"id":3,"v":"c","rev":"11"}',
    '{"id":4,"v":"d","rev":9}', '{"id":5,"v":"e","rev":"2024-01-01"}', '{"id":6,"v":"f","rev":2}',
  } },
  again = { recs = {
    '{"id":1,"v":"a","rev":1}', '{"id":3,"v":"c changed","rev":"12"}', '{"id":4,"v":"d changed","rev":10}',
    '{"id":7,"v":"g","rev":12}', '{"id":8,"v":"h","rev":"2025-01-01"}',
  } },
}

-- A json value nested 100 deep: JSON the decoder takes (up to 256
-- levels), and so a value a json field holds.
local function nested(id, depth)
  return string.format('{"id":%d,"doc":%s"deep"%s}', id, string.rep("[", depth), string.rep("]", depth))
end

CASES[#CASES + 1] = {
  name = "a json field holding a value nested 100 levels deep",
  expect = {
    first = {
      "recs: 5 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted",
    },
    again = {
      "recs: 1 created, 1 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted",
    },
  },
  job = [[
entity "rec" { doc = "json" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = marked(), mapping = { doc = "doc" } }
]],
  entities = { "rec" },
  first = { recs = { '{"id":1,"doc":[1]}', '{"id":2,"doc":{"a":[2]}}', nested(3, 100), '{"id":4,"doc":4}', nested(5, 60) } },
  again = { recs = { '{"id":1,"doc":[1]}', nested(3, 100), nested(6, 100), nested(5, 61) } },
}

local PARTS = {
  '{"id":1,"v":"a","n":1}', "not json", '{"id":2,"v":"b","n":"2"}', '{"id":3,"v":"c","n":"x"}', "",
  '{"id":4,"v":"d","n":4}', '{"id":5,"v":"e","n":5.0}', '{"id":6,"v":"f"}', '{"id":2,"v":"b again"}',
  '{"id":7,"v":"g","n":7}',
}

CASES[#CASES + 1] = {
  name = "a full pass in parts (import limit), resumed from its checkpoint",
  own_marks = true,
  expect = {
    first = {
      "recs: 2 created, 0 updated, 0 unchanged, 0 stale, 2 failed, 0 deleted (limit reached: the next run continues here)",
    },
    again = {
      "recs: 3 created, 1 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted (limit reached: the next run continues here)",
    },
  },



  job = [[
entity "rec" { v = "text", n = "integer" }
sync "recs" { remote = files "recs.ndjson", entity = "rec", import = { batch = 3, limit = 4 },
  mapping = { v = "v", n = "n" } }
]],
  entities = { "rec" },
  first = { recs = PARTS },
  -- the same file: the pass goes on where the first run stopped
  again = { recs = PARTS },
}

describe("the ndjson record path", function()
  after_each(S.cleanup)

  for _, case in ipairs(CASES) do
    it("gives the Lua pipeline's results: " .. case.name, function()
      differ(case)
    end)
  end
end)

-- The C path in use: on a plain mapping (paths, no callbacks) it must
-- take records.
describe("the ndjson record path in use", function()
  after_each(S.cleanup)

  -- a first import of an incremental sync: what the C path takes
  local function plain_job()
    local dir = S.newdir()
    S.job(dir, { mode = "incremental", changed = "updated_at", batch = 3 })
    local records = {}
    for id = 1, 10 do records[id] = S.dated(id, id) end
    S.data(dir, records)
    return dir
  end

  local function run(dir, env, ...)
    local r = helpers.run(dir, { "job.lua", "run", "--no-progress", "--verbose", ... }, env)
    assert.equal(0, r.code, r.stderr)
    return r
  end

  it("[C path] maps a plain mapping in C: --verbose logs N of M records mapped in C with N > 0", function()
    local r = run(plain_job(), DEFAULT)
    local n, m = r.stderr:match('entsync: debug: sync "contacts": (%d+) of (%d+) records mapped in C')
    assert.is_not_nil(n, "no record path line in:\n" .. r.stderr)
    assert.equal(10, tonumber(m))
    assert.is_true(tonumber(n) > 0, r.stderr)
    -- the JSON log gives the counts as fields
    r = run(plain_job(), DEFAULT, "--log-format", "json")
    local event
    for line in r.stderr:gmatch("[^\n]+") do
      local entry = json.try_decode(line)
      if type(entry) == "table" and entry.event == "record_path" then event = entry end
    end
    assert.is_not_nil(event, "no record_path event in:\n" .. r.stderr)
    assert.same({ "debug", 10 }, { event.level, event.c + event.lua })
    assert.is_true(event.c > 0, r.stderr)
    -- ENTSYNC_RECORD_PATH=lua: no record is mapped in C
    r = run(plain_job(), LUA)
    local off = r.stderr:match('sync "contacts": (%d+) of %d+ records mapped in C')
    assert.is_true(off == nil or off == "0", r.stderr)
  end)
end)
