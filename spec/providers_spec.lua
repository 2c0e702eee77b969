-- The file providers (ndjson, csv, json) against real files in a temp dir.

local core = require "entsync.core"
local ndjson = require "providers.ndjson"
local csv = require "providers.csv"
local json = require "providers.json"

local tmp

local function path(rel)
  return tmp .. "/" .. rel
end

local function write(rel, content)
  local dir = path(rel):match("^(.*)/[^/]*$")
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local f = assert(io.open(path(rel), "wb"))
  assert(f:write(content))
  assert(f:close())
end

local function exists(rel)
  return core.fs.exists(path(rel)) ~= false
end

local function new(module, config)
  return module.new(config, { base_dir = tmp, name = "test" })
end

-- Everything a reader gives: records as they come, errors as "!" .. message.
local function drain(reader, limit)
  local out = {}
  while not limit or #out < limit do
    local record, err = reader:next()
    if record == nil then break end
    out[#out + 1] = record or ("!" .. err)
  end
  return out
end

local function ids(items)
  local out = {}
  for i, item in ipairs(items) do
    out[i] = type(item) == "table" and tostring(item.id) or item
  end
  return out
end

local function read_all(module, config, resource, query)
  local reader = assert(new(module, config):list(resource, query))
  local items = drain(reader)
  reader:close()
  return items
end

before_each(function()
  tmp = os.tmpname()
  os.remove(tmp)
  assert(os.execute("mkdir -p '" .. tmp .. "'"))
end)

after_each(function()
  os.execute("rm -rf '" .. tmp .. "'")
end)

describe("ndjson provider", function()
  it("reads a single file in order", function()
    write("contacts.ndjson", '{"id":1,"name":"Ann"}\n{"id":2,"name":"Bob","tags":["a"]}\n')
    local items = read_all(ndjson, { path = "contacts.ndjson" })
    assert.same({ { id = 1, name = "Ann" }, { id = 2, name = "Bob", tags = { "a" } } }, items)
  end)

  it("gives integral numbers as integers, so an id prints as 17", function()
    write("a.ndjson", '{"id":17,"score":1.5,"nested":{"n":3}}\n')
    local record = read_all(ndjson, { path = "a.ndjson" })[1]
    assert.equal("17", tostring(record.id))
    assert.equal("integer", math.type(record.nested.n))
    assert.equal(1.5, record.score)
  end)

  it("keeps [] apart from {} and integers apart from floats, as the file has them", function()
    local ej = require "entsync.json"
    write("a.ndjson", '{"id":1,"tags":[],"meta":{},"n":2.0,"big":9007199254740993}\n')
    local record = read_all(ndjson, { path = "a.ndjson" })[1]
    assert.is_true(ej.is_array(record.tags))
    assert.is_true(ej.is_object(record.meta))
    assert.equal("float", math.type(record.n))
    assert.equal(9007199254740993, record.big)
    assert.equal('{"big":9007199254740993,"id":1,"meta":{},"n":2,"tags":[]}', ej.encode(record))
  end)

  it("reports invalid UTF-8, a raw NUL byte and a number out of range with file and line", function()
    write("a.ndjson", '{"id":1,"name":"\255"}\n{"id":2,"name":"a\0b"}\n{"id":3,"n":1e400}\n{"id":4}\n')
    local items = ids(read_all(ndjson, { path = "a.ndjson" }))
    assert.equal(4, #items)
    assert.equal("!a.ndjson:1: malformed JSON: invalid UTF-8 in a string at byte 17", items[1])
    assert.matches("^!a%.ndjson:2: malformed JSON: a control character %(such as a NUL byte%) inside a string "
      .. "must be escaped", items[2])
    assert.equal("!a.ndjson:3: malformed JSON: number out of range at byte 13", items[3])
    assert.equal("4", items[4])
  end)

  it("keeps JSON null as cjson.null", function()
    write("a.ndjson", '{"id":1,"mail":null}\n')
    local record = read_all(ndjson, { path = "a.ndjson" })[1]
    assert.equal(require("cjson").null, record.mail)
  end)

  it("skips blank lines silently and accepts CRLF", function()
    write("a.ndjson", '\n{"id":1}\r\n  \r\n\n{"id":2}\n\n')
    assert.same({ "1", "2" }, ids(read_all(ndjson, { path = "a.ndjson" })))
  end)

  it("reports a malformed line with file and line, then reads on", function()
    write("contacts.ndjson", '{"id":1}\n\n{"id":2,\n{"id":3}\n[1,2]\n{"id":4}')
    local items = ids(read_all(ndjson, { path = "contacts.ndjson" }))
    assert.equal(5, #items)
    assert.same({ "1", "3", "4" }, { items[1], items[3], items[5] })
    assert.equal("!contacts.ndjson:3: malformed JSON: unexpected end of input", items[2])
    assert.equal("!contacts.ndjson:5: expected a JSON object, got array", items[4])
  end)

  it("skips an offset that counts bad records too", function()
    write("a.ndjson", '{"id":1}\nbad\n{"id":3}\n{"id":4}\n')
    local reader = assert(new(ndjson, { path = "a.ndjson" }):list(nil, { offset = 2, since = "x" }))
    assert.equal(3, reader:next().id)
    assert.equal(3, reader.position)
    assert.equal(4, reader:next().id)
    assert.is_nil(reader:next())
    assert.equal(4, reader.position)
    reader:close()
    reader:close()
  end)

  it("rejects a bad offset", function()
    write("a.ndjson", '{"id":1}\n')
    local reader, err = new(ndjson, { path = "a.ndjson" }):list(nil, { offset = -1 })
    assert.is_nil(reader)
    assert.matches("offset", err)
  end)

  it("finds one record with get(), comparing ids as strings", function()
    write("a.ndjson", '{"id":1,"n":"a"}\nbad\n{"id":"x7","n":"b"}\n{"id":20,"n":"c"}\n')
    local provider = new(ndjson, { path = "a.ndjson" })
    assert.equal("c", provider:get(nil, 20).n)
    assert.equal("c", provider:get(nil, "20").n)
    assert.equal("b", provider:get(nil, "x7").n)
    local record, err = provider:get(nil, 99)
    assert.is_nil(record)
    assert.equal("not found", err)
  end)

  it("uses the configured id field", function()
    write("a.ndjson", '{"key":"k1","id":5}\n{"key":"k2","id":6}\n')
    local provider = new(ndjson, { path = "a.ndjson", id = "key" })
    assert.equal(6, provider:get(nil, "k2").id)
    assert.equal("k1", provider:id({ key = "k1" }))
  end)

  it("resolves a resource against dir", function()
    write("in/sub/a.ndjson", '{"id":1}\n')
    write("in/b.ndjson", '{"id":2}\n')
    local provider = new(ndjson, { dir = "in" })
    assert.same({ "1" }, ids(drain(provider:list("sub/a.ndjson"))))
    assert.same({ "1" }, ids(drain(provider:list("sub"))))
    assert.same({ "2" }, ids(drain(provider:list())))
  end)

  it("resolves a resource against the job's folder when only path is given", function()
    write("data/x.ndjson", '{"id":1}\n')
    write("other.ndjson", '{"id":2}\n')
    local provider = new(ndjson, { path = "data/x.ndjson" })
    assert.same({ "1" }, ids(drain(provider:list())))
    assert.same({ "2" }, ids(drain(provider:list("other.ndjson"))))
  end)

  it("answers a missing file with nil and a message", function()
    local reader, err = new(ndjson, { path = "nope.ndjson" }):list()
    assert.is_nil(reader)
    assert.matches("nope%.ndjson: no such file", err)
  end)

  it("never moves a single named file", function()
    write("a.ndjson", '{"id":1}\n')
    local reader = new(ndjson, { path = "a.ndjson" }):list()
    drain(reader)
    reader:committed()
    reader:close()
    assert.is_true(exists("a.ndjson"))
    assert.is_false(exists("processed"))
  end)

  describe("drop folder", function()
    before_each(function()
      write("in/2.ndjson", '{"id":"2a"}\n{"id":"2b"}\n')
      write("in/10.ndjson", '{"id":"10a"}\n')
      write("in/3.jsonl", '{"id":"3a"}\n{"id":"3b"}\n')
      write("in/.hidden.ndjson", '{"id":"hidden"}\n')
      write("in/notes.txt", "not a record\n")
      write("in/processed/old.ndjson", '{"id":"old"}\n')
    end)

    it("reads every file in byte-wise name order, skipping the rest", function()
      local items = read_all(ndjson, { dir = "in" })
      assert.same({ "10a", "2a", "2b", "3a", "3b" }, ids(items))
    end)

    it("moves files into processed/ only after committed()", function()
      local reader = new(ndjson, { dir = "in" }):list()
      assert.equal(5, #drain(reader))
      assert.is_true(exists("in/10.ndjson"))
      assert.is_true(exists("in/2.ndjson"))
      assert.is_true(exists("in/3.jsonl"))
      assert.equal(0, reader:committed())
      for _, name in ipairs { "10.ndjson", "2.ndjson", "3.jsonl" } do
        assert.is_false(exists("in/" .. name))
        assert.is_true(exists("in/processed/" .. name))
      end
      assert.is_true(exists("in/processed/old.ndjson"))
      assert.is_true(exists("in/.hidden.ndjson"))
      reader:close()
    end)

    it("leaves a file not read past its end in place", function()
      local reader = new(ndjson, { dir = "in" }):list()
      assert.same({ "10a", "2a", "2b" }, ids(drain(reader, 3)))
      reader:committed()
      assert.is_true(exists("in/processed/10.ndjson"))
      assert.is_true(exists("in/2.ndjson"))
      assert.is_true(exists("in/3.jsonl"))
      reader:close()
    end)

    it("keeps a position that resumes after the moves", function()
      local reader = new(ndjson, { dir = "in" }):list()
      drain(reader, 4)                       -- 10.ndjson, 2.ndjson, then 3a
      assert.equal(1, reader.position)       -- only 3.jsonl stays behind
      assert.equal(1, reader:committed())
      reader:close()
      local again = new(ndjson, { dir = "in" }):list(nil, { offset = 1 })
      assert.same({ "3b" }, ids(drain(again)))
    end)

    it("under-skips rather than loses records when the moves did not happen", function()
      local reader = new(ndjson, { dir = "in" }):list()
      drain(reader, 2)                       -- 10a, 2a
      local position = reader.position       -- taken, then a crash: no committed()
      reader:close()
      local again = new(ndjson, { dir = "in" }):list(nil, { offset = position })
      assert.same({ "2a", "2b", "3a", "3b" }, ids(drain(again)))
    end)

    it("moves files passed over by the offset too", function()
      local reader = new(ndjson, { dir = "in" }):list(nil, { offset = 2 })
      assert.same({ "2b" }, ids(drain(reader, 1)))
      reader:next()
      reader:committed()
      assert.is_false(exists("in/10.ndjson"))
      assert.is_false(exists("in/2.ndjson"))
      assert.is_true(exists("in/3.jsonl"))
    end)

    it("never moves with processed = false", function()
      local reader = new(ndjson, { dir = "in", processed = false }):list()
      drain(reader)
      assert.equal(5, reader.position)
      reader:committed()
      assert.is_true(exists("in/10.ndjson"))
    end)

    it("uses the configured processed folder and keeps earlier deliveries", function()
      write("in/done/2.ndjson", "earlier\n")
      local reader = new(ndjson, { dir = "in", processed = "done" }):list()
      drain(reader)
      reader:committed()
      assert.is_true(exists("in/done/2.ndjson"))
      assert.is_true(exists("in/done/2-2.ndjson"))
      assert.is_true(exists("in/done/10.ndjson"))
      assert.is_true(exists("in/processed/old.ndjson"))
    end)

    it("reads nothing from an empty folder", function()
      assert(os.execute("mkdir -p '" .. path("empty") .. "'"))
      assert.same({}, read_all(ndjson, { dir = "empty" }))
    end)
  end)

  describe("configuration", function()
    it("accepts a dir or a path", function()
      assert.is_true(ndjson.validate({ dir = "in" }))
      assert.is_true(ndjson.validate({ path = "a.ndjson", id = "key", processed = false }))
    end)

    it("names what is wrong", function()
      local cases = {
        { "x", "settings must be a table" },
        { {}, "needs dir" },
        { { dir = "a", path = "b" }, "not both" },
        { { dir = "" }, "dir must be" },
        { { path = 3 }, "setting path must be a string" },
        { { dir = "a", id = 1 }, "setting id must be a string" },
        { { dir = "a", processed = "a/b" }, "processed must be" },
        { { dir = "a", processed = true }, "processed must be" },
        { { dir = "a", dri = "b" }, "unknown setting dri %(did you mean dir%?%)" },
      }
      for _, case in ipairs(cases) do
        local ok, err = ndjson.validate(case[1])
        assert.is_nil(ok)
        assert.matches(case[2], err)
      end
    end)

    it("raises from new() on a bad config", function()
      assert.has_error(function() ndjson.new({}, { base_dir = tmp }) end,
        "provider ndjson: needs dir (a drop folder) or path (one file)")
    end)
  end)
end)

describe("csv provider", function()
  it("reads quoted delimiters, embedded newlines, doubled quotes", function()
    write("people.csv", 'id,name,note\n1,"Doe, Jane","said ""hi""\nthen left"\n2,Bob,\n')
    local items = read_all(csv, { path = "people.csv" })
    assert.same({
      { id = "1", name = "Doe, Jane", note = 'said "hi"\nthen left' },
      { id = "2", name = "Bob", note = "" },
    }, items)
  end)

  it("accepts CRLF line ends and strips a BOM", function()
    write("people.csv", '\239\187\191id,name\r\n1,Ann\r\n"2","B ""x"""\r\n')
    assert.same({ { id = "1", name = "Ann" }, { id = "2", name = 'B "x"' } },
      read_all(csv, { path = "people.csv" }))
  end)

  it("takes another delimiter", function()
    write("people.csv", 'id;name;city\n1;"a;b";Paris\n2;c,d;\n')
    assert.same({ { id = "1", name = "a;b", city = "Paris" }, { id = "2", name = "c,d", city = "" } },
      read_all(csv, { path = "people.csv", delimiter = ";" }))
  end)

  it("reports a row of the wrong width with its line, then reads on", function()
    write("people.csv", 'id,a,b,c\n1,x,"two\nlines",z\n2,x,y\n\n3,x,y,z\n4,x,y,z,extra\n')
    local items = read_all(csv, { path = "people.csv" })
    assert.equal("1", items[1].id)
    assert.equal("!people.csv:4: expected 4 fields, got 3", items[2])
    assert.equal("3", items[3].id)
    assert.equal("!people.csv:7: expected 4 fields, got 5", items[4])
    assert.equal(4, #items)
  end)

  it("reports stray text after a closing quote", function()
    write("p.csv", 'id,n\n1,"a"b\n2,c\n')
    local items = read_all(csv, { path = "p.csv" })
    assert.equal("!p.csv:2: unexpected character after a closing quote", items[1])
    assert.equal("2", items[2].id)
  end)

  it("keeps a drop-folder file whose last quote never closes", function()
    write("in/a.csv", 'id,n\n1,x\n2,"open\n')
    write("in/b.csv", 'id,n\n3,y\n')
    local reader = new(csv, { dir = "in" }):list()
    local items = drain(reader)
    assert.same({ "1", "!a.csv:3: unterminated quoted field", "3" }, ids(items))
    reader:committed()
    assert.is_true(exists("in/a.csv"))
    assert.is_true(exists("in/processed/b.csv"))
  end)

  it("refuses a header naming a column twice", function()
    write("p.csv", 'id,n,n\n1,2,3\n')
    assert.same({ '!p.csv:1: column "n" appears twice in the header' }, read_all(csv, { path = "p.csv" }))
  end)

  it("reads only .csv files from a drop folder", function()
    write("in/b.csv", "id\n2\n")
    write("in/A.CSV", "id\n1\n")
    write("in/c.tsv", "id\n3\n")
    assert.same({ "1", "2" }, ids(read_all(csv, { dir = "in" })))
  end)

  it("finds a record with get()", function()
    write("p.csv", "id,n\n1,a\n2,b\n")
    assert.equal("b", new(csv, { path = "p.csv" }):get(nil, 2).n)
  end)

  it("wants a one-character delimiter", function()
    assert.is_true(csv.validate({ path = "p.csv", delimiter = "\t" }))
    for _, bad in ipairs { ";;", "", '"', "\n", 1 } do
      local ok, err = csv.validate({ path = "p.csv", delimiter = bad })
      assert.is_nil(ok)
      assert.matches(bad == 1 and "^setting delimiter must be a string" or "^delimiter must be one character", err)
    end
  end)
end)

describe("json provider", function()
  it("reads a top-level array", function()
    write("a.json", '[ {"id":1,"s":"x"},\n {"id":2,"list":[1,{"k":[]}]} ]\n')
    assert.same({ { id = 1, s = "x" }, { id = 2, list = { 1, { k = {} } } } },
      read_all(json, { path = "a.json" }))
  end)

  it("reads an empty array", function()
    write("a.json", "  [ ]  ")
    assert.same({}, read_all(json, { path = "a.json" }))
  end)

  it("descends a records path past big sibling values", function()
    local big = '{"deep":[' .. string.rep('{"a":[1,2,"]["],"b":"}{\\"\\\\"},', 5000) .. '{}]}'
    write("a.json", '\239\187\191{"meta":' .. big .. ',"data":{"count":3,"skip":' .. big
      .. ',"items":[{"id":1,"s":"[{\\"]}"},{"id":2,"s":"\\\\"},{"id":3}],"after":' .. big
      .. '},"tail":' .. big .. '}')
    local items = read_all(json, { path = "a.json", records = "data.items" })
    assert.same({ { id = 1, s = '[{"]}' }, { id = 2, s = "\\" }, { id = 3 } }, items)
  end)

  it("finds keys written with escapes", function()
    write("a.json", '{"d\\u0061ta":{"items":[{"id":1}]}}')
    assert.same({ "1" }, ids(read_all(json, { path = "a.json", records = "data.items" })))
  end)

  it("reports a malformed element with file and line, then reads on", function()
    write("export.json", '[\n{"id":1},\n{"id":2,\n "x": },\n5,\n{"id":3}\n]')
    local items = read_all(json, { path = "export.json" })
    assert.same({ "1", "3" }, { tostring(items[1].id), tostring(items[4].id) })
    assert.equal("!export.json:4: malformed JSON: expected a value, found '}' at byte 16", items[2])
    assert.equal("!export.json:5: expected a JSON object, got number", items[3])
  end)

  it("stops at a broken structure and keeps the file", function()
    write("in/a.json", '[{"id":1},{"id":2,"x":[}]')
    write("in/b.json", '[{"id":3},\n{"id":4}')
    write("in/c.json", '[{"id":5}]')
    local reader = new(json, { dir = "in" }):list()
    local items = drain(reader)
    assert.same({ "1", "!a.json:1: malformed JSON: unexpected '}'", "3", "4",
      "!b.json:2: malformed JSON: unexpected end of input", "5" }, ids(items))
    reader:committed()
    assert.is_true(exists("in/a.json"))
    assert.is_true(exists("in/b.json"))
    assert.is_true(exists("in/processed/c.json"))
  end)

  it("names a missing records path or the wrong top level", function()
    write("a.json", '{"data":{"other":[]}}')
    write("b.json", '[{"id":1}]')
    write("c.json", '{"id":1}')
    assert.same({ '!a.json:1: malformed JSON: no key "items" in data' },
      read_all(json, { path = "a.json", records = "data.items" }))
    assert.same({ "!b.json:1: malformed JSON: expected a top-level object" },
      read_all(json, { path = "b.json", records = "data.items" }))
    assert.matches("^!c%.json:1: malformed JSON: expected a top%-level array",
      read_all(json, { path = "c.json" })[1])
  end)

  it("scans escapes and elements split across read chunks", function()
    local head = '[{"id":1,"s":"'
    for shift = -3, 3 do
      local pad = string.rep("x", 65536 - #head - 1 + shift)
      write("a.json", head .. pad .. '\\"]"},{"id":2}]')
      local items = read_all(json, { path = "a.json" })
      assert.equal(2, #items)
      assert.equal(pad .. '"]', items[1].s)
      assert.equal(2, items[2].id)
    end
  end)

  it("finds a record with get()", function()
    write("a.json", '{"data":{"items":[{"id":"a"},{"id":"b","n":2}]}}')
    assert.equal(2, new(json, { path = "a.json", records = "data.items" }):get(nil, "b").n)
  end)

  it("wants a dotted records path", function()
    assert.is_true(json.validate({ path = "a.json", records = "data.items" }))
    for _, bad in ipairs { "", ".a", "a.", "a..b", 3 } do
      local ok, err = json.validate({ path = "a.json", records = bad })
      assert.is_nil(ok)
      assert.matches(bad == 3 and "^setting records must be a string" or "^records must be", err)
    end
  end)
end)

describe("file providers stream", function()
  local SIZE = 50 * 1024 * 1024

  local function generate(rel, head, element, separator, tail)
    local f = assert(io.open(path(rel), "wb"))
    f:write(head)
    local block = string.rep(element .. separator, 1000)
    local count = 0
    for _ = 1, SIZE // #block do
      f:write(block)
      count = count + 1000
    end
    f:write(element, tail)
    f:close()
    return count + 1
  end

  local function peak_while_reading(module, config)
    local reader = assert(new(module, config):list())
    collectgarbage()
    -- Growth over what the process held before reading: other specs in
    -- the same process leave their own memory behind.
    local base = collectgarbage("count")
    local n, peak = 0, 0
    while true do
      local record = reader:next()
      if record == nil then break end
      assert.is_table(record)
      n = n + 1
      -- live memory, after a full collection: what the reader holds on to
      if n % 5000 == 0 then
        collectgarbage()
        peak = math.max(peak, collectgarbage("count") - base)
      end
    end
    reader:close()
    return n, peak
  end

  local element = '{"id":12345,"name":"n","tags":["a","b"],"pad":"' .. string.rep("x", 900) .. '"}'

  it("reads a 50 MB ndjson file in flat memory", function()
    local count = generate("big.ndjson", "", element, "\n", "\n")
    local n, peak = peak_while_reading(ndjson, { path = "big.ndjson" })
    assert.equal(count, n)
    assert.is_true(peak < 4096, "peak " .. peak .. " KB")
  end)

  it("reads a 50 MB json file in flat memory", function()
    local count = generate("big.json", '{"data":{"items":[\n', element, ",\n", "]}}")
    local n, peak = peak_while_reading(json, { path = "big.json", records = "data.items" })
    assert.equal(count, n)
    assert.is_true(peak < 4096, "peak " .. peak .. " KB")
  end)
end)
