-- core.json.document(): a JSON text parsed once, asked for its parts. A
-- reader of pages (http_json) loads each page into one and the C record
-- path maps the records from it; what it gives must be what json.decode
-- and http_json's path reading give for the same text.

local json = require "entsync.json"

local function loaded(text)
  local doc = json.document()
  assert.is_true(doc:load(text))
  return doc
end

describe("json.document", function()
  local page = '{"data":[{"id":1,"name":"a","tags":["x"]},{"id":2,"name":"b"},7,null,{"id":3}],'
    .. '"total":25,"next":{"cursor":"c2","url":"/p?2"},"items":{},"list":[[1,2],[3]]}'

  it("gets values at dotted paths as json.decode gives them, numbers reading arrays", function()
    local doc, decoded = loaded(page), json.decode(page)
    assert.same(decoded, doc:get(""))
    assert.same(decoded, doc:get(nil))
    assert.equal(25, doc:get("total"))
    assert.equal(math.type(25), math.type(doc:get("total")))
    assert.equal("c2", doc:get("next.cursor"))
    assert.equal("c2", doc:get("..next..cursor.")) -- empty steps are passed over
    assert.equal(2, doc:get("data.2.id"))
    assert.equal(3, doc:get("list.2.1"))
    assert.equal(3, doc:get("list.2.0x1")) -- a step is what tonumber reads
    assert.same(json.decode('["x"]'), doc:get("data.1.tags"))
    assert.is_true(json.is_array(doc:get("data.1.tags")))
    assert.is_true(json.is_object(doc:get("items")))
    assert.equal(json.null, doc:get("data.4"))
    -- nothing there
    assert.is_nil(doc:get("missing"))
    assert.is_nil(doc:get("total.x"))
    assert.is_nil(doc:get("data.9"))
    assert.is_nil(doc:get("data.0"))
    assert.is_nil(doc:get("data.1.5")) -- a number does not read an object
    assert.is_nil(doc:get("data.x")) -- a name does not read an array
    assert.is_nil(doc:get("list.1.5"))
  end)

  it("selects the records and tells their kind and count", function()
    local doc = loaded(page)
    assert.same({ "array", 5 }, { doc:select("data") })
    assert.same({ "object", 0 }, { doc:select("items") })
    assert.same({ "object", 5 }, { doc:select("") })
    assert.same({ "number" }, { doc:select("total") })
    assert.same({ "string" }, { doc:select("next.cursor") })
    assert.same({ "null" }, { doc:select("data.4") })
    assert.is_nil(doc:select("nothing"))
    assert.same({}, doc:list()) -- no array selected: no records
    assert.is_true(json.is_array(doc:list()))
    assert.same({ "array", 2 }, { doc:select("list") })
    assert.same({ { 1, 2 }, { 3 } }, doc:list())
    assert.same({ "boolean" }, { loaded("[true]"):select("1") })
  end)

  it("gives records, their members and the run of objects, in any order", function()
    local doc, decoded = loaded(page), json.decode(page)
    doc:select("data")
    assert.same(decoded.data, doc:list())
    for _, i in ipairs({ 1, 2, 3, 4, 5, 2, 1, 5 }) do
      assert.same(decoded.data[i], doc:item(i))
    end
    assert.equal("b", doc:item(2, "name"))
    assert.is_nil(doc:item(2, "missing"))
    assert.is_nil(doc:item(3, "id")) -- 7 is no object
    assert.equal(2, doc:objects(1, 5))
    assert.equal(2, doc:objects(1, 2))
    assert.equal(2, doc:objects(3, 5)) -- record 3 is not an object
    assert.equal(5, doc:objects(5, 5))
    assert.has_error(function() doc:item(6) end, "document: no record 6 (it has 5)")
    assert.has_error(function() doc:item(0) end, "document: no record 0 (it has 5)")
    assert.has_error(function() doc:objects(1, 6) end)
  end)

  it("keeps a repeated key's last value, and reads integers beyond 64 bits as floats, as decode does", function()
    local text = '{"a":1,"a":[{"id":1,"id":"two"}],"big":18446744073709551616,"neg":-9223372036854775809}'
    local doc, decoded = loaded(text), json.decode(text)
    assert.same(decoded, doc:get())
    assert.equal("two", doc:get("a.1.id"))
    assert.equal(math.type(decoded.big), math.type(doc:get("big")))
    assert.equal("float", math.type(doc:get("big")))
    doc:select("a")
    assert.equal("two", doc:item(1, "id"))
  end)

  it("refuses a text that is not JSON with json.decode's message, and is empty after it", function()
    for _, text in ipairs({ "", "{", '{"a":}', '{"a":"\255"}', "[1,]", "nul", '{"a":1} x' }) do
      local doc = loaded('{"a":1}')
      local ok, message = doc:load(text)
      local _, expected = json.try_decode(text)
      assert.is_nil(ok)
      assert.equal(expected, message)
      assert.has_error(function() doc:get("a") end, "document: nothing is loaded")
      assert.has_error(function() doc:select("") end, "document: nothing is loaded")
    end
    assert.has_error(function() json.document():get("") end, "document: nothing is loaded")
  end)

  it("is reused text after text: each load forgets the last one", function()
    local doc = json.document()
    for i = 1, 50 do
      local records = {}
      for j = 1, i do records[j] = { id = i * 1000 + j } end
      assert.is_true(doc:load(json.encode({ data = records })))
      assert.same({ "array", i }, { doc:select("data") })
      assert.equal(i * 1000 + i, doc:item(i, "id"))
      assert.equal(i, doc:objects(1, i))
    end
    -- a large text, then a small one
    local big = {}
    for j = 1, 50000 do big[j] = { id = j, text = string.rep("x", 40) } end
    assert.is_true(doc:load(json.encode(big)))
    assert.same({ "array", 50000 }, { doc:select("") })
    assert.equal(50000, doc:item(50000, "id"))
    assert.is_true(doc:load("[]"))
    assert.same({ "array", 0 }, { doc:select("") })
    assert.equal(0, doc:objects(1, 0))
  end)
end)
