-- JSON is type-faithful both ways: what the fixture remote received is
-- compared byte for byte (made canonical by Python's json, which keeps []
-- apart from {}, 1.5 apart from "1.5" and 101 apart from "101") with what it
-- had sent. References whose remote ids are numbers go back as numbers; a
-- reference with no remote counterpart waits or is sent as null, per
-- on_missing, and is never dropped silently.

local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

-- The data field of item 1: empty array and object, nested ones, numbers
-- of every kind, and a text that looks like a number.
local DATA = '{"empty_list": [], "empty_obj": {}, "nested": {"list": [1, [2, 3], {"k": "v"}, [], {}], '
  .. '"obj": {"deep": {"x": 1.5, "y": 2.5, "z": -3, "e": 1e-7}}}, "big": 1234567890123, "text": "7", '
  .. '"flag": true, "nothing": null}'

local ITEM = '{"id": 1, "name": "a", "count": 7, "ratio": 0.25, "list": [], "obj": {}, "data": ' .. DATA
  .. ', "tags": [101, 102], "updated_at": "2026-01-02T00:00:01Z"}'

local REMOTE = '{"tags": ['
  .. '{"id": 101, "name": "customer", "updated_at": "2026-01-01T00:00:01Z"}, '
  .. '{"id": 102, "name": "partner", "updated_at": "2026-01-01T00:00:02Z"}, '
  .. '{"id": 103, "name": "vip", "updated_at": "2026-01-01T00:00:03Z"}], '
  .. '"items": [' .. ITEM .. ']}'

-- opts.on_missing: the items sync's; opts.tags_export: the tags sync's
-- export table (Lua source) or nil.
local function write_job(dir, url, opts)
  opts = opts or {}
  local source = table.concat({
    'local map = require "entsync.map"',
    'entity "tag" { name = "text" }',
    'entity "item" { name = "text", count = "integer", ratio = "real", list = "json", obj = "json", data = "json", '
      .. 'tags = "json" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = "PUT", attempts = 2 }', url),
    'sync "tags" { remote = api "api/tags", entity = "tag", mapping = { name = "name" },',
    '  import = { mode = "full", changed = "updated_at" }' .. (opts.tags_export and (", export = " .. opts.tags_export)
      or "") .. " }",
    string.format('sync "items" { remote = api "api/items", entity = "item", depends_on = { "tags" }, on_missing = %q,',
      opts.on_missing or "defer"),
    '  mapping = { name = "name", count = "count", ratio = "ratio", list = "list", obj = "obj", data = "data",',
    '    tags = { "tags", import = map.refs "tags" } },',
    '  import = { mode = "full", changed = "updated_at" }, export = { on_change = true } }',
  }, "\n") .. "\n"
  helpers.write(dir .. "/job.lua", source)
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

describe("JSON round trip through an export", function()
  local server, dir

  helpers.remote_for_each_test({}, function(remote, tmp)
    server, dir = remote, tmp
    T.load_remote(server, REMOTE)
  end)

  it("stores json fields as the remote wrote them: [] and {} kept apart, numbers kept numbers", function()
    write_job(dir, server.url)
    ok_run(dir)
    local row = T.query(dir, "SELECT * FROM item")[1]
    assert.equal(T.canonical(DATA), T.canonical(row.data))
    assert.equal("[]", T.canonical(row.list))
    assert.equal("{}", T.canonical(row.obj))
    assert.same({ 7, 0.25 }, { row.count, row.ratio })
    assert.equal("integer", T.value(dir, "SELECT typeof(count) FROM item"))
    -- references by local id; the remote ids keep their JSON type in the id map
    assert.same({ "integer", "integer", "integer" }, (function()
      local out = {}
      for i, r in ipairs(T.query(dir, "SELECT typeof(remote_id) AS t FROM entsync_map WHERE sync = 'tags' "
          .. "ORDER BY local_id")) do out[i] = r.t end
      return out
    end)())
    assert.equal("integer", T.value(dir, "SELECT typeof(remote_id) FROM entsync_map WHERE sync = 'items'"))
  end)

  it("a local edit goes out with every other value as it came: [] {} nested values and 101, not \"101\"", function()
    write_job(dir, server.url)
    ok_run(dir)
    X.sql(dir, "UPDATE item SET name = 'b'")
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(1, T.counts(T.lines(r.stdout).items.export).updated, r.stdout .. r.stderr)
    local puts = T.requests(server.log(), { method = "PUT" })
    assert.equal(1, #puts)
    assert.equal("/api/items/1", puts[1].path)
    local body = puts[1].body
    -- member by member, so a failure says which value changed type
    assert.equal('"data":' .. T.canonical(DATA), T.member(body, "data"))
    assert.equal('"list":[]', T.member(body, "list"))
    assert.equal('"obj":{}', T.member(body, "obj"))
    assert.equal('"tags":[101,102]', T.member(body, "tags"))
    assert.equal('"count":7', T.member(body, "count"))
    assert.equal('"ratio":0.25', T.member(body, "ratio"))
    assert.equal('"id":1', T.member(body, "id"))
    assert.equal('"name":"b"', T.member(body, "name"))
    -- and as a whole: the remote's record with the one edit
    assert.equal(T.canonical((ITEM:gsub('"name": "a"', '"name": "b"'))), T.canonical(body))
    -- no string where a number was, in the raw bytes either
    assert.is_nil(body:find('"101"', 1, true), body)
    -- the echo comes back unchanged, and nothing goes out again
    server.reset_log()
    r = ok_run(dir)
    assert.equal(1, T.counts(T.lines(r.stdout).items.import).unchanged, r.stdout)
    assert.same({}, T.writes(server.log()))
  end)

  it("a local edit of a json field sends exactly the JSON the store holds, not merged into the remote's old value",
    function()
      write_job(dir, server.url)
      ok_run(dir)
      X.sql(dir, [[UPDATE item SET data = '{"a": [], "b": {}, "c": [{}], "d": 2.5, "e": 2, "f": "2"}', list = '[{}]',
        obj = '{"x": []}']])
      server.reset_log()
      ok_run(dir)
      local put = T.requests(server.log(), { method = "PUT" })[1]
      assert.is_not_nil(put, "nothing was PUT")
      assert.equal('"data":{"a":[],"b":{},"c":[{}],"d":2.5,"e":2,"f":"2"}', T.member(put.body, "data"))
      assert.equal('"list":[{}]', T.member(put.body, "list"))
      assert.equal('"obj":{"x":[]}', T.member(put.body, "obj"))
      -- the remote holds it so
      local remote = T.remote_text(server, "items", 1)
      assert.equal('"data":{"a":[],"b":{},"c":[{}],"d":2.5,"e":2,"f":"2"}', T.member(remote, "data"))
    end)

  it("a reference with no remote id fails the entity with a clear message (on_missing = \"defer\"), and goes out "
    .. "after the referenced sync runs", function()
      write_job(dir, server.url, { tags_export = "{ }" })
      ok_run(dir)
      local customer = T.local_of(dir, "tags", 101)
      X.sql(dir, "INSERT INTO tag (name) VALUES ('new')")
      local new = T.value(dir, "SELECT id FROM tag WHERE name = 'new'")
      X.sql(dir, string.format("UPDATE item SET tags = '[%d, %d]'", customer, new))
      server.reset_log()
      local r = T.run(dir, {})
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(1, T.counts(T.lines(r.stdout).items.export).failed, r.stdout)
      assert.same({}, T.writes(server.log()), "a reference was dropped or sent without its remote id")
      assert.truthy(r.stderr:find(string.format("reference tag local %d has no remote id in sync tags yet", new), 1,
        true), r.stderr)
      assert.truthy(r.stderr:find("field tags", 1, true), r.stderr)
      local failure = T.query(dir, "SELECT * FROM entsync_failed WHERE sync = 'items' AND direction = 'export'")[1]
      assert.is_not_nil(failure)
      assert.equal("tags", failure.waits_for)
      -- it waits for tags, not for a clock: another run of items alone
      -- sends nothing
      server.reset_log()
      r = T.run(dir, { "items" })
      assert.same({}, T.writes(server.log(), "/api/items"), r.stdout .. r.stderr)
      -- the tag gets its remote: exported by hand, a POST answered with id 104
      r = ok_run(dir, "export", "tags", tostring(new))
      local created = T.remote_of(dir, "tags", new)
      assert.equal(104, created)
      -- the next run of tags releases the item, and it goes out with both ids, as numbers
      server.reset_log()
      r = ok_run(dir)
      local puts = T.requests(server.log(), { method = "PUT", path = "/api/items/1" })
      assert.equal(1, #puts, r.stdout .. r.stderr)
      assert.equal('"tags":[101,104]', T.member(puts[1].body, "tags"))
      assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_failed"))
    end)

  it("on_missing = \"null\": the reference with no remote id is sent as null, in its place", function()
    write_job(dir, server.url, { on_missing = "null" })
    ok_run(dir)
    local customer, vip = T.local_of(dir, "tags", 101), T.local_of(dir, "tags", 103)
    X.sql(dir, "INSERT INTO tag (name) VALUES ('new')")
    local new = T.value(dir, "SELECT id FROM tag WHERE name = 'new'")
    X.sql(dir, string.format("UPDATE item SET tags = '[%d, %d, %d]'", customer, new, vip))
    server.reset_log()
    local r = ok_run(dir)
    local puts = T.requests(server.log(), { method = "PUT" })
    assert.equal(1, #puts, r.stdout .. r.stderr)
    assert.equal('"tags":[101,null,103]', T.member(puts[1].body, "tags"))
  end)
end)
