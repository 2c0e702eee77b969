-- A batch whose write fails is written again record by record (each on
-- its own savepoint). The second write must store what the first would
-- have: a json field's value encoded once, whichever record path mapped it.

local cjson = require "cjson"
local helpers = require "helpers"

describe("a batch written again record by record", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  local function job()
    helpers.write(dir .. "/job.lua", table.concat({
      'store "entsync.db"',
      'entity "contact" { name = "text", tags = "json", meta = "json" }',
      'local files = provider "ndjson" { path = "contacts.ndjson" }',
      'sync "contacts" { remote = files, entity = "contact",',
      '  mapping = { name = "name", tags = "tags", meta = "meta" },',
      '  import = { mode = "incremental", changed = "at", batch = 10 } }',
    }, "\n") .. "\n")
    -- the first import's batch repeats id 2: its first write fails on the
    -- id map, and the batch is written again with lookups
    helpers.write(dir .. "/contacts.ndjson", table.concat({
      '{"id":1,"at":"2026-01-01","name":"one","tags":["a","b"],"meta":{"z":1,"a":[true,null]}}',
      '{"id":2,"at":"2026-01-02","name":"two","tags":[],"meta":{}}',
      '{"id":3,"at":"2026-01-03","name":"three","tags":"plain","meta":2.5}',
      '{"id":2,"at":"2026-01-04","name":"two again","tags":["c"],"meta":{"k":"v"}}',
    }, "\n") .. "\n")
  end

  for _, path in ipairs({ "c", "lua" }) do
    it("stores each json value encoded once (" .. path .. " record path)", function()
      job()
      local r = helpers.run(dir, { "job.lua", "run", "--no-progress" },
        { ENTSYNC_RECORD_PATH = path == "lua" and "lua" or "c" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("3 created, 1 updated", r.stdout, 1, true)
      local rows = helpers.query(dir .. "/entsync.db", "SELECT name, tags, meta FROM contact ORDER BY id")
      assert.same({
        { name = "one", tags = '["a","b"]', meta = '{"a":[true,null],"z":1}' },
        { name = "two again", tags = '["c"]', meta = '{"k":"v"}' },
        { name = "three", tags = '"plain"', meta = "2.5" },
      }, rows)
      for _, row in ipairs(rows) do
        assert.is_not_nil(cjson.decode(row.tags))
      end
    end)
  end
end)
