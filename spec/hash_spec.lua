-- core.hash.of / core.hash.canonical: the content hash the engine uses to tell an
-- echo from a change. It must depend on content only (never on the order
-- keys were inserted, nor on the process), and be stable across builds.

local core = require "entsync.core"
local cjson = require "cjson"
local helpers = require "helpers"

-- FNV-1a 64 over a string, in plain Lua (integers wrap around), to check the
-- C hash is exactly FNV-1a over the canonical encoding.
local function fnv1a64(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do
    h = (h ~ s:byte(i)) * 0x100000001b3
  end
  return h
end

-- The fixed value whose hash is pinned below; built twice, keys inserted in
-- opposite orders.
local function fixed_value_forward()
  local v = {}
  v.id = 42
  v.name = "Ann O'Neil"
  v.tags = { "a", "b" }
  v.score = 1.5
  v.active = true
  v.parent = cjson.null
  v.nested = {}
  v.nested.x = 1.0
  v.nested.y = "1"
  v.nested.deeper = { z = false }
  return v
end

local function fixed_value_backward()
  local nested = {}
  nested.deeper = { z = false }
  nested.y = "1"
  nested.x = 1
  local v = {}
  v.nested = nested
  v.parent = cjson.null
  v.active = true
  v.score = 1.5
  v.tags = { "a", "b" }
  v.name = "Ann O'Neil"
  v.id = 42
  return v
end

local PINNED_CANONICAL = "o7:s6:activets2:idi42;s4:names10:Ann O'Neils6:nestedo3:s6:deepero1:s1:zfs1:xi1;"
  .. "s1:ys1:1s6:parentns5:scored1.5;s4:tagsa2:s1:as1:b"
local PINNED_HASH = -8881113575889251038
local PINNED_HEX = "84bff241c338d522"

describe("core.hash.of", function()
  it("returns an integer", function()
    assert.equal("integer", math.type(core.hash.of({ a = 1 })))
    assert.equal("integer", math.type(core.hash.of("text")))
    assert.equal("integer", math.type(core.hash.of(7)))
  end)

  it("is FNV-1a 64 over the canonical encoding", function()
    for _, value in ipairs({ "", "x", 1, 1.5, true, { 1, 2 }, { a = { b = "c" } }, fixed_value_forward() }) do
      assert.equal(fnv1a64(core.hash.canonical(value)), core.hash.of(value))
    end
  end)

  it("gives the same hash whatever order the keys were inserted in, nested tables included", function()
    assert.equal(core.hash.of(fixed_value_forward()), core.hash.of(fixed_value_backward()))
    assert.equal(core.hash.canonical(fixed_value_forward()), core.hash.canonical(fixed_value_backward()))

    -- Many keys, so the tables' internal layouts really differ.
    local up, down = {}, {}
    for i = 1, 200 do up["k" .. i] = { i, { ["n" .. i] = i } } end
    for i = 200, 1, -1 do down["k" .. i] = { i, { ["n" .. i] = i } } end
    assert.equal(core.hash.of(up), core.hash.of(down))
  end)

  it("hashes 1 and 1.0 the same, as values and inside tables", function()
    assert.equal(core.hash.of(1), core.hash.of(1.0))
    assert.equal(core.hash.of({ n = 1, list = { 2, 3 } }), core.hash.of({ n = 1.0, list = { 2.0, 3.0 } }))
    assert.equal(core.hash.of(-0.0), core.hash.of(0))
  end)

  it("gives another hash when a value changes, even deep inside", function()
    local a, b = fixed_value_forward(), fixed_value_forward()
    b.nested.deeper.z = true
    assert.are_not.equal(core.hash.of(a), core.hash.of(b))
    local c = fixed_value_forward()
    c.score = 1.25
    assert.are_not.equal(core.hash.of(a), core.hash.of(c))
    local d = fixed_value_forward()
    d.tags = { "b", "a" } -- array order is content
    assert.are_not.equal(core.hash.of(a), core.hash.of(d))
    local e = fixed_value_forward()
    e.extra = 0
    assert.are_not.equal(core.hash.of(a), core.hash.of(e))
  end)

  it("tells the string \"1\" from the number 1", function()
    assert.are_not.equal(core.hash.of("1"), core.hash.of(1))
    assert.are_not.equal(core.hash.of({ v = "1" }), core.hash.of({ v = 1 }))
    assert.are_not.equal(core.hash.of("true"), core.hash.of(true))
  end)

  it("tells arrays from objects", function()
    assert.are_not.equal(core.hash.of({ "a", "b" }), core.hash.of({ [1] = "a", [3] = "b" }))
    assert.are_not.equal(core.hash.of({ 10, 20 }), core.hash.of({ ["1"] = 10, ["2"] = 20 }))
    assert.equal("a", core.hash.canonical({ "x" }):sub(1, 1))
    assert.equal("o", core.hash.canonical({ x = 1 }):sub(1, 1))
  end)

  it("tells strings apart by length, not just by bytes (no concatenation ambiguity)", function()
    assert.are_not.equal(core.hash.of({ "ab", "c" }), core.hash.of({ "a", "bc" }))
    assert.are_not.equal(core.hash.of({ a = "b:c" }), core.hash.of({ ["a:b"] = "c" }))
  end)

  it("handles cjson.null as a null, distinct from an absent key and from false", function()
    assert.equal("n", core.hash.canonical(cjson.null))
    assert.equal(core.hash.of(cjson.null), core.hash.of(nil))
    assert.are_not.equal(core.hash.of({ a = cjson.null }), core.hash.of({}))
    assert.are_not.equal(core.hash.of({ a = cjson.null }), core.hash.of({ a = false }))
    local decoded = cjson.decode('{"a":null,"b":[1,null,3]}')
    assert.equal(core.hash.of(decoded), core.hash.of({ b = { 1, cjson.null, 3 }, a = cjson.null }))
  end)

  it("hashes strings with NUL bytes and binary data by all their bytes", function()
    assert.are_not.equal(core.hash.of("a\0b"), core.hash.of("a\0c"))
    assert.are_not.equal(core.hash.of("a\0"), core.hash.of("a"))
  end)

  -- as deep as JSON decodes (256 levels), with the mapped entities' two
  -- levels around it; deeper is taken for a cycle
  it("raises an error for a value nested deeper than 264 levels, and the state stays usable", function()
    local ok_depth = {}
    local cur = ok_depth
    for _ = 1, 264 do cur.x = {}; cur = cur.x end
    assert.equal("integer", math.type(core.hash.of(ok_depth)))

    local too_deep = {}
    cur = too_deep
    for _ = 1, 265 do cur.x = {}; cur = cur.x end
    local ok, err = pcall(core.hash.of, too_deep)
    assert.is_false(ok)
    assert.matches("nested deeper than 264", tostring(err))

    local very_deep = {}
    cur = very_deep
    for _ = 1, 100000 do cur[1] = {}; cur = cur[1] end
    assert.is_false((pcall(core.hash.of, very_deep)))
    -- Hashing still works (and the shared buffer was reset) after an error.
    assert.equal(PINNED_HASH, core.hash.of(fixed_value_forward()))
  end)

  it("raises an error for a cycle instead of crashing", function()
    local t = { name = "loop" }
    t.self = t
    local ok, err = pcall(core.hash.of, t)
    assert.is_false(ok)
    assert.matches("hash:", tostring(err))
    local a, b = {}, {}
    a[1], b[1] = b, a
    assert.is_false((pcall(core.hash.of, a)))
    assert.is_false((pcall(core.hash.canonical, a)))
  end)

  it("raises an error naming the type for a function, a userdata or a boolean key", function()
    local ok, err = pcall(core.hash.of, function() end)
    assert.is_false(ok)
    assert.matches("cannot hash a function", tostring(err))
    ok, err = pcall(core.hash.of, { callback = print })
    assert.is_false(ok)
    assert.matches("cannot hash a function", tostring(err))
    ok, err = pcall(core.hash.of, io.stdout)
    assert.is_false(ok)
    assert.matches("cannot hash a userdata", tostring(err))
    ok, err = pcall(core.hash.of, { [true] = 1 })
    assert.is_false(ok)
    assert.matches("keys must be strings or numbers", tostring(err))
  end)

  it("keeps one known value pinned, so a change of the encoding is noticed", function()
    assert.equal(PINNED_CANONICAL, core.hash.canonical(fixed_value_forward()))
    assert.equal(PINNED_HASH, core.hash.of(fixed_value_forward()))
    assert.equal(PINNED_HEX, core.hash.hex(fixed_value_forward()))
    assert.equal("s0:", core.hash.canonical(""))
    assert.equal("818753195c48e144", core.hash.hex(""))
  end)

  it("is identical in a separate process", function()
    local cpath = os.getenv("ENTSYNC_CPATH") or (helpers.root .. "/build/lib/?.so")
    -- The child builds the value in yet another key order and prints the
    -- hash and the encoding; a fresh process has a fresh string-hash seed,
    -- so its tables are laid out differently from ours.
    local child = [[
      package.cpath = ]] .. string.format("%q", cpath) .. [[ .. ";" .. package.cpath
      local core = require "entsync.core"
      local cjson = require "cjson"
      local v = { parent = cjson.null, tags = { "a", "b" }, active = true, score = 1.5,
        nested = { deeper = { z = false }, x = 1, y = "1" }, name = "Ann O'Neil", id = 42.0 }
      io.write(core.hash.of(v), "\n", core.hash.hex(v), "\n", core.hash.canonical(v))
    ]]
    local script = helpers.tmpdir()
    helpers.write(script .. "/child.lua", child)
    -- entsync-run --script is a Lua interpreter with entsync.core built in:
    -- the same C code as the module, also when it is the sanitized build
    local pipe = assert(io.popen(helpers.quote(helpers.bin) .. " --script " .. helpers.quote(script .. "/child.lua")
      .. " 2>&1"))
    local out = pipe:read("a")
    pipe:close()
    helpers.rmdir(script)
    local hash, hex, canonical = out:match("^(%-?%d+)\n(%x+)\n(.*)$")
    assert.is_truthy(hash, "child output: " .. out)
    assert.equal(core.hash.of(fixed_value_forward()), math.tointeger(tonumber(hash)))
    assert.equal(core.hash.hex(fixed_value_forward()), hex)
    assert.equal(core.hash.canonical(fixed_value_forward()), canonical)
    assert.equal(PINNED_HASH, math.tointeger(tonumber(hash)))
  end)

  -- A table holding both the number key 1.5 and the string key "1.5" (or 1
  -- and "1") encodes both keys as the same string; equal keys are then
  -- ordered by qsort from the table's traversal order, so the hash depends
  -- on insertion order.
  it("gives the same hash for a table mixing number keys and their string forms, whatever the insertion order", function()
    local forward, backward = {}, {}
    for i = 1, 20 do
      local k = i + 0.5
      forward[k] = "number key"
      forward[tostring(k)] = "string key"
    end
    for i = 20, 1, -1 do
      local k = i + 0.5
      backward[tostring(k)] = "string key"
      backward[k] = "number key"
    end
    assert.equal(core.hash.of(forward), core.hash.of(backward))
  end)
end)

describe("core.hash.canonical", function()
  it("exposes the encoding: type tags, lengths, sorted keys", function()
    assert.equal("i1;", core.hash.canonical(1))
    assert.equal("i1;", core.hash.canonical(1.0))
    assert.equal("d1.5;", core.hash.canonical(1.5))
    assert.equal("s1:1", core.hash.canonical("1"))
    assert.equal("t", core.hash.canonical(true))
    assert.equal("f", core.hash.canonical(false))
    assert.equal("a2:i1;s1:x", core.hash.canonical({ 1, "x" }))
    assert.equal("o2:s1:ai1;s1:bi2;", core.hash.canonical({ b = 2, a = 1 }))
    assert.equal("a0:", core.hash.canonical({}))
  end)
end)
