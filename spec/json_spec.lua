-- core.json (require "entsync.json"): entsync's JSON codec. Decoding is
-- simdjson's and keeps JSON's types ([] apart from {}, integers apart from
-- floats, null as cjson.null); encoding is deterministic (sorted keys) so
-- its bytes can be compared.

local core = require "entsync.core"
local cjson = require "cjson"
local helpers = require "helpers"
local json = require "entsync.json"

local function decode_error(text)
  local value, err = json.try_decode(text)
  assert.is_nil(value, "decoded " .. string.format("%q", text))
  assert.is_string(err)
  local ok, raised = pcall(json.decode, text)
  assert.is_false(ok)
  assert.equal(err, raised, "decode raises the message try_decode returns")
  return err
end

local function encode_error(value)
  local ok, err = pcall(json.encode, value)
  assert.is_false(ok, "encoded")
  return tostring(err)
end

local function nested(levels, inner)
  return string.rep("[", levels) .. (inner or "") .. string.rep("]", levels)
end

describe("entsync.json", function()
  it("is core.json, with null the light userdata cjson.null is", function()
    assert.equal(core.json, json)
    assert.equal(cjson.null, json.null)
    assert.equal("userdata", type(json.null))
    assert.equal(cjson.null, json.decode("null"))
    assert.equal(cjson.null, json.decode('{"a":null}').a)
    assert.equal("null", json.encode(cjson.null))
  end)

  it("keeps its two marks in the registry, the same tables it exports", function()
    local registry = debug.getregistry()
    assert.equal(json.object_mt, registry["entsync.json.object"])
    assert.equal(json.array_mt, registry["entsync.json.array"])
    assert.equal(json.object_mt, getmetatable(json.decode("{}")))
    assert.equal(json.array_mt, getmetatable(json.decode("[]")))
  end)
end)

describe("json.decode", function()
  it("round-trips [] and {}, nested too", function()
    for _, text in ipairs({ "[]", "{}", '{"a":[],"b":{}}', "[[],{},[[]],[{}]]",
        '{"empty":{},"list":[{"x":[]},{"y":{}}]}' }) do
      assert.equal(text, json.encode(json.decode(text)))
    end
    local value = json.decode('{"a":[],"b":{}}')
    assert.is_true(json.is_array(value.a))
    assert.is_true(json.is_object(value.b))
    assert.is_true(json.is_object(value))
    assert.is_false(json.is_array(value.b))
  end)

  it("gives integers that fit an int64 as integers and every other number as a float", function()
    assert.equal("integer", math.type(json.decode("17")))
    assert.equal(17, json.decode("17"))
    assert.equal("float", math.type(json.decode("17.0")))
    assert.equal("float", math.type(json.decode("1e2")))
    assert.equal(9223372036854775807, json.decode("9223372036854775807"))
    assert.equal(math.mininteger, json.decode("-9223372036854775808"))
    assert.equal(9007199254740993, json.decode("9007199254740993")) -- exact, beyond 2^53
    -- beyond int64: floats
    for _, text in ipairs({ "9223372036854775808", "18446744073709551615", "18446744073709551616",
        "-9223372036854775809", "123456789012345678901234567890" }) do
      local n = json.decode(text)
      assert.equal("float", math.type(n), text)
      assert.equal(tonumber(text .. ".0"), n, text)
    end
    assert.same({ 1, 1.8446744073709552e19, "x" }, json.decode('[1, 18446744073709551616, "x"]'))
    assert.equal(1.2345678901234568e29, json.decode('{"a":{"b":[123456789012345678901234567890]}}').a.b[1])
    assert.equal(0.1, json.decode("0.1"))
    assert.equal(1e300, json.decode("1e300"))
    assert.equal(-2.5e-7, json.decode("-2.5E-7"))
    assert.equal(0, json.decode("1e-400")) -- underflow is zero, as strtod has it
  end)

  it("keeps -0.0 a negative zero float, and -0 the integer 0", function()
    local z = json.decode("-0.0")
    assert.equal("float", math.type(z))
    assert.equal(-math.huge, 1 / z)
    assert.equal("-0.0", json.encode(z))
    assert.equal("integer", math.type(json.decode("-0")))
    assert.equal("0", json.encode(json.decode("-0")))
  end)

  it("rejects a number too large for a float instead of giving inf", function()
    assert.equal("number out of range at byte 1", decode_error("1e400"))
    assert.equal("number out of range at byte 6", decode_error('{"a":-1e400}'))
    assert.equal("number out of range at byte 2", decode_error("[" .. string.rep("9", 400) .. "]"))
  end)

  it("rejects malformed numbers", function()
    for _, text in ipairs({ "01", "1.", ".5", "-", "1.5e", "+1", "0x10", "NaN", "Infinity", "1e5e5" }) do
      local err = decode_error(text)
      assert.is_truthy(err:find("number", 1, true) or err:find("expected a value", 1, true)
        or err:find("unexpected content", 1, true), text .. ": " .. err)
    end
  end)

  it("decodes escapes and unicode; \\u0000 is a NUL byte in the string", function()
    assert.equal("a\0b", json.decode('"a\\u0000b"'))
    assert.equal(3, #json.decode('"a\\u0000b"'))
    assert.equal('"\\/\b\f\n\r\t', json.decode('"\\"\\\\\\/\\b\\f\\n\\r\\t"'))
    assert.equal("é€😀", json.decode('"\\u00e9\\u20AC\\ud83d\\ude00"'))
    assert.equal("é€😀", json.decode('"é€😀"'))
    assert.equal("\127", json.decode('"\127"'))
    assert.same({ ["k\0ey"] = "v" }, json.decode('{"k\\u0000ey":"v"}'))
  end)

  it("rejects invalid UTF-8, with the message and where", function()
    assert.equal("invalid UTF-8 in a string at byte 7", decode_error('{"a":"\255"}'))
    assert.equal("invalid UTF-8 in a string at byte 3", decode_error('"a\192\128"'))   -- overlong
    assert.equal("invalid UTF-8 in a string at byte 2", decode_error('"\237\160\128"')) -- a surrogate
    assert.equal("invalid UTF-8 in a string at byte 2", decode_error('"\195"'))
    assert.matches("^invalid UTF%-8", decode_error("\255"))
  end)

  it("rejects a raw NUL byte and other unescaped control characters in a string", function()
    local err = decode_error('{"a":"x\0y"}')
    assert.matches("a control character (such as a NUL byte) inside a string must be escaped", err, 1, true)
    assert.matches("0x00 at byte 8", err, 1, true)
    assert.matches("must be escaped: found byte 0x09 at byte 3", decode_error('"a\tb"'), 1, true)
    assert.matches("must be escaped", decode_error('"a\nb"'), 1, true)
  end)

  it("rejects bad escapes and lone surrogates", function()
    assert.equal("invalid escape in a string (a backslash before 'x') at byte 2", decode_error('"\\x"'))
    assert.matches("invalid \\u escape", decode_error('"\\u12"'), 1, true)
    assert.matches("lone UTF-16 surrogate", decode_error('"\\ud800"'), 1, true)
    assert.matches("lone UTF-16 surrogate", decode_error('"\\udc00"'), 1, true)
    assert.matches("lone UTF-16 surrogate", decode_error('"\\ud800\\u0041"'), 1, true)
  end)

  it("rejects trailing content, truncation and broken structure, saying where", function()
    assert.equal("unexpected content after the JSON value at byte 9", decode_error('{"a":1} x'))
    assert.equal("unexpected content after the JSON value at byte 3", decode_error("{}{}"))
    assert.equal("unexpected end of input", decode_error('{"a":1'))
    assert.equal("unexpected end of input", decode_error("["))
    assert.equal("unclosed string starting at byte 6", decode_error('{"a":"abc'))
    assert.equal("expected a value, found ']' at byte 4", decode_error("[1,]"))
    assert.equal("expected ',' or ']', found '2' at byte 4", decode_error("[1 2]"))
    assert.equal("expected ':' after a key, found '1' at byte 6", decode_error('{"a" 1}'))
    assert.equal("expected a string key, found '1' at byte 2", decode_error("{1:2}"))
    assert.equal("expected ',' or '}', found ']' at byte 7", decode_error('{"a":1]'))
    assert.equal("invalid literal (true, false or null expected) at byte 2", decode_error("[tru]"))
    assert.equal("expected a value, found '}' at byte 16", decode_error('{"id":2,\n "x": }'))
    assert.equal("empty input: no JSON value", decode_error(""))
    assert.equal("empty input: no JSON value", decode_error(" \n\t "))
  end)

  it("accepts any value at the top level", function()
    assert.equal(5, json.decode(" 5 "))
    assert.equal("x", json.decode('"x"'))
    assert.is_true(json.decode("true"))
    assert.is_false(json.decode("false"))
    assert.same({ 1, "a", true }, json.decode('[1,"a",true]'))
  end)

  it("accepts 256 levels of nesting and rejects 257", function()
    for _, inner in ipairs({ "", "1" }) do
      local value = json.decode(nested(256, inner))
      for _ = 1, 255 do value = value[1] end
      assert.is_true(json.is_array(value))
      assert.equal("nested deeper than 256 levels at byte 257", decode_error(nested(257, inner)))
    end
    local value = json.decode(nested(255, "{}"))
    for _ = 1, 255 do value = value[1] end
    assert.is_true(json.is_object(value))
    assert.equal("nested deeper than 256 levels at byte 257", decode_error(nested(256, "{}")))
    assert.equal("nested deeper than 256 levels at byte 1281", decode_error(string.rep('{"a":', 257) .. "1"
      .. string.rep("}", 257)))
    assert.matches("nested deeper than 256 levels", decode_error(string.rep("[", 100000)))
  end)

  it("lets the last of a repeated key win", function()
    assert.same({ a = 3, b = 2 }, json.decode('{"a":1,"b":2,"a":3}'))
  end)

  it("keeps arrays with nulls whole", function()
    local list = json.decode("[1,null,3,null]")
    assert.equal(4, #list)
    assert.equal(json.null, list[2])
    assert.equal(json.null, list[4])
    assert.equal("[1,null,3,null]", json.encode(list))
  end)

  it("wants a string", function()
    assert.is_false((pcall(json.decode, 5)))
    assert.is_false((pcall(json.try_decode, nil)))
  end)

  it("reads large documents and goes on reading small ones", function()
    local parts = {}
    for i = 1, 50000 do parts[i] = string.format('{"id":%d,"name":"n%d","tags":[%d,"t"]}', i, i, i) end
    local text = "[" .. table.concat(parts, ",") .. "]"
    local list = json.decode(text)
    assert.equal(50000, #list)
    assert.equal(49999, list[49999].id)
    assert.equal("n7", list[7].name)
    assert.same({ a = 1 }, json.decode('{"a":1}'))
    assert.equal(text, json.encode(list))
  end)

  it("decodes correctly when a finalizer decodes and encodes while it builds tables", function()
    -- In a child with a small heap, so collections (and their finalizers)
    -- surely come during the decodes; entsync-run --script has
    -- entsync.core built in, the sanitized one under make asan.
    local child = [[
      local json = require("entsync.core").json
      local decoding, nested, inner_ok = false, 0, true
      local function litter()
        for _ = 1, 50 do
          setmetatable({}, { __gc = function()
            if decoding then nested = nested + 1 end
            local v = json.decode('{"inner":[1,2,{"x":"y"}]}')
            inner_ok = inner_ok and v.inner[3].x == "y" and json.encode(v) == '{"inner":[1,2,{"x":"y"}]}'
          end })
        end
      end
      local parts = {}
      for i = 1, 5000 do parts[i] = string.format('{"id":%d,"s":"%s"}', i, string.rep("x", i % 50)) end
      local text = "[" .. table.concat(parts, ",") .. "]"
      local outer_ok, list = true, nil
      -- Nearly all that is allocated, is allocated by the decodes.
      for _ = 1, 60 do
        litter()
        decoding = true
        list = json.decode(text)
        decoding = false
        outer_ok = outer_ok and #list == 5000 and list[4999].id == 4999 and #list[4999].s == 4999 % 50
      end
      outer_ok = outer_ok and json.encode(list) == text
      io.write(string.format("nested=%d inner=%s outer=%s", nested, tostring(inner_ok), tostring(outer_ok)))
    ]]
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/child.lua", child)
    local pipe = assert(io.popen(helpers.quote(helpers.bin) .. " --script " .. helpers.quote(dir .. "/child.lua")
      .. " 2>&1"))
    local out = pipe:read("a")
    pipe:close()
    helpers.rmdir(dir)
    local nested_count, inner, outer = out:match("^nested=(%d+) inner=(%a+) outer=(%a+)$")
    assert.is_truthy(nested_count, "child output: " .. out)
    assert.is_true(tonumber(nested_count) > 0, "no finalizer ran during a decode")
    assert.equal("true", inner)
    assert.equal("true", outer)
  end)
end)

describe("json.encode", function()
  it("writes object keys sorted bytewise, whatever the insertion order", function()
    local a, b = {}, {}
    for i = 1, 100 do a["k" .. i] = i end
    for i = 100, 1, -1 do b["k" .. i] = i end
    assert.equal(json.encode(a), json.encode(b))
    assert.equal('{"B":1,"a":2,"b":{"y":1,"z":2},"é":3}', json.encode({ ["é"] = 3, b = { z = 2, y = 1 }, a = 2, B = 1 }))
    assert.equal('{"1":"a","10":"c","2":"b","x":1}', json.encode({ [1] = "a", [2] = "b", [10] = "c", x = 1 }))
  end)

  it("writes an unmarked table as an array when empty or a sequence, else as an object", function()
    assert.equal("[]", json.encode({}))
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal('{"1":1,"3":3}', json.encode({ [1] = 1, [3] = 3 }))
    assert.equal('{"1":1,"2":2,"x":true}', json.encode({ 1, 2, x = true }))
    assert.equal('{"-1":"a"}', json.encode({ [-1] = "a" }))
  end)

  it("follows the marks: arrays with holes as nulls, empty objects as {}", function()
    assert.equal("{}", json.encode(json.object()))
    assert.equal("[]", json.encode(json.array()))
    assert.equal("[1,null,3]", json.encode(json.array({ 1, nil, 3 })))
    assert.equal('{"1":"a","2":"b"}', json.encode(json.object({ "a", "b" })))
    local t = {}
    assert.equal(t, json.array(t))
    assert.is_true(json.is_array(t))
    assert.equal(t, json.object(t))
    assert.is_true(json.is_object(t))
    assert.is_false(json.is_array(t))
    assert.is_false(json.is_object("x"))
    assert.is_false(json.is_array(nil))
    assert.is_false((pcall(json.array, setmetatable({}, { __index = {} }))))
    assert.is_false((pcall(json.object, "x")))
  end)

  it("writes integers as integers, floats as the shortest text that reads back, integral ones as integers", function()
    assert.equal("[0,-7,9223372036854775807,-9223372036854775808]",
      json.encode({ 0, -7, math.maxinteger, math.mininteger }))
    assert.equal("[0.1,0.3333333333333333,1e+300,1.5,-2.5e-07,123456.789]",
      json.encode({ 0.1, 1 / 3, 1e300, 1.5, -2.5e-7, 123456.789 }))
    assert.equal("[3,-3,0,9007199254740991]", json.encode({ 3.0, -3.0, 0.0, 2.0 ^ 53 - 1 }))
    assert.equal("[9007199254740992,9.223372036854776e+18,1.8446744073709552e+19]",
      json.encode({ 2.0 ^ 53, 2.0 ^ 63, 2.0 ^ 64 }))
    for _, x in ipairs({ 0.1, 1 / 3, 1e300, 5e-324, 1.7976931348623157e308, 2 ^ 0.5, -1e-7, 1e21, 1e22 }) do
      assert.equal(x, json.decode(json.encode(x)))
    end
  end)

  it("refuses NaN and infinities", function()
    assert.equal("cannot encode a non-finite number (nan) at .a", encode_error({ a = 0 / 0 }))
    assert.equal("cannot encode a non-finite number (inf) at [2]", encode_error({ 1, math.huge }))
    assert.equal("cannot encode a non-finite number (-inf)", encode_error(-math.huge))
  end)

  it("escapes quotes, backslashes and control characters, and leaves DEL and UTF-8 alone", function()
    assert.equal('"a\\"b\\\\c"', json.encode('a"b\\c'))
    assert.equal('"\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f"', json.encode("\b\f\n\r\t\0\1\31"))
    assert.equal('"\127é€😀/"', json.encode("\127é€😀/"))
    for _, s in ipairs({ "a\0b", "\1\2\3", "é\n€", "" }) do
      assert.equal(s, json.decode(json.encode(s)))
    end
  end)

  it("refuses invalid UTF-8, naming the path", function()
    assert.equal("invalid UTF-8 in a string at .name (its byte 2)", encode_error({ name = "a\255" }))
    assert.equal("invalid UTF-8 in a string at .a[1] (its byte 1)", encode_error({ a = { "\192\128" } }))
    assert.equal("invalid UTF-8 in a string (its byte 1)", encode_error("\237\160\128"))
    assert.equal('invalid UTF-8 in a key at .a (its byte 1)', encode_error({ a = { ["\255"] = 1 } }))
  end)

  it("names the path of what it cannot encode", function()
    assert.equal("cannot encode a function at .a.b[2]", encode_error({ a = { b = { 1, print } } }))
    assert.equal("cannot encode a userdata at .file", encode_error({ file = io.stdout }))
    assert.equal("cannot encode a thread at [1]", encode_error({ coroutine.create(print) }))
    assert.equal('cannot encode a function at ["odd key"][3]', encode_error({ ["odd key"] = { 1, 2, print } }))
    assert.equal("cannot encode a function", encode_error(print))
    assert.matches("cannot encode a boolean key: keys must be strings or integers at .a",
      encode_error({ a = { [true] = 1 } }), 1, true)
    assert.matches("cannot encode a float key (1.5)", encode_error({ [1.5] = 1 }), 1, true)
    assert.matches('cannot encode the key "1" twice', encode_error({ [1] = 1, ["1"] = 2, x = 0 }), 1, true)
  end)

  it("refuses nesting deeper than 256 levels and cycles, and works on after", function()
    local deep = {}
    local cur = deep
    for _ = 1, 255 do cur[1] = {}; cur = cur[1] end
    assert.equal(nested(256), json.encode(deep))
    cur[1] = {}
    assert.matches("^cannot encode a value nested deeper than 256 levels %(a cycle%?%) at %[1%]%[1%]",
      encode_error(deep))
    local loop = { name = "loop" }
    loop.self = loop
    assert.matches("nested deeper than 256 levels (a cycle?) at .self.self.self", encode_error(loop), 1, true)
    assert.equal('{"a":[1,{"b":null}]}', json.encode({ a = { 1, { b = json.null } } }))
  end)

  it("writes nil as null at the top and in array holes", function()
    assert.equal("null", json.encode(nil))
    assert.equal("[null,true,false]", json.encode(json.array({ nil, true, false })))
  end)

  it("pretty-prints with two spaces, one member or item a line", function()
    local value = json.decode('{"b":[1,{"c":"x"},[]],"a":{},"d":null}')
    assert.equal(table.concat({
      "{",
      '  "a": {},',
      '  "b": [',
      "    1,",
      "    {",
      '      "c": "x"',
      "    },",
      "    []",
      "  ],",
      '  "d": null',
      "}",
    }, "\n"), json.encode(value, { pretty = true }))
    assert.equal("[]", json.encode({}, { pretty = true }))
    assert.equal('"x"', json.encode("x", { pretty = true }))
    assert.equal('{"a":1}', json.encode({ a = 1 }, { pretty = false }))
  end)

  it("round-trips records byte for byte", function()
    for _, text in ipairs({
      '{"active":true,"company":{"city":"Zürich","name":"Acme"},"id":17,"score":0.1,"tags":[]}',
      '{"a":[1,2.5,-0.0,"\\u0000",null,{}],"b":"\\"q\\"\\n"}',
      '[{"x":9223372036854775807},{"y":1e+300}]',
    }) do
      assert.equal(text, json.encode(json.decode(text)))
    end
  end)
end)

describe("the content hash of decoded records", function()
  -- What file providers did before entsync.json: lua-cjson's decode, then
  -- integral floats made integers in C.
  local function cjson_decode_then_integerize(text)
    return core.hash.integerize(cjson.decode(text))
  end

  local records = {
    '{"id":1,"email":"niklaus.liskov1@example.org","first_name":"Niklaus","last_name":"Liskov","status":"active",'
      .. '"updated_at":"2026-02-02T01:01:00Z","company":{"name":"Wonka","city":"Brussels"},"tags":[],'
      .. '"phones":[{"kind":"work","number":"+1-555-0001"}]}',
    '{"id":2,"active":false,"tags":[1,2,3],"company":{},"score":1.5,"ratio":0.1,"parent":null,"n":1.0,"big":1e20}',
    '{"id":"x-3","nested":{"deep":{"list":[[],[{}],[null,true]]}},"name":"Ann O\'Neil","city":"Montréal"}',
    '{"e":[],"o":{},"z":-0.0,"neg":-17,"exp":2.5e3}',
  }

  it("equals the hash of the same record through cjson and integerize", function()
    for _, text in ipairs(records) do
      assert.equal(core.hash.of(cjson_decode_then_integerize(text)), core.hash.of(json.decode(text)), text)
      assert.equal(core.hash.canonical(cjson_decode_then_integerize(text)), core.hash.canonical(json.decode(text)))
    end
  end)

  it("does not depend on the marks", function()
    assert.equal(core.hash.of({}), core.hash.of(json.decode("[]")))
    assert.equal(core.hash.of({}), core.hash.of(json.decode("{}")))
    assert.equal(core.hash.of({ a = { 1, 2 } }), core.hash.of(json.decode('{"a":[1,2]}')))
  end)
end)
