-- The unchanged fast path: ndjson lines whose exact bytes were imported
-- before (under the same job and mapping) are skipped in C without being
-- decoded. These specs check that skipping keeps every count, position and
-- line number an ordinary read gives.

local helpers = require "helpers"
local S = require "import_support"

describe("the unchanged fast path", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  local function records(from, to, fields)
    local out = {}
    for id = from, to do out[#out + 1] = S.contact(id, fields and fields(id)) end
    return out
  end

  it("skips known lines, imports the changed ones between them, and passes over blank lines", function()
    S.job(dir, { mode = "full", batch = 7 })
    local data = records(1, 50)
    S.data(dir, data)
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    -- every fifth record changes; blank lines appear among known ones
    local again = {}
    for i, record in ipairs(records(1, 50, function(id) return id % 5 == 0 and { name = "Changed " .. id } or nil end)) do
      again[#again + 1] = record
      if i % 9 == 0 then again[#again + 1] = "" end
    end
    S.data(dir, again)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    local c = S.summary(r.stdout)
    assert.same({ 0, 10, 40 }, { c.created, c.updated, c.unchanged })
    local expected = S.expected(records(1, 50, function(id) return id % 5 == 0 and { name = "Changed " .. id } or nil end))
    assert.same(expected, S.contacts(dir))
  end)

  it("names the right line of a malformed record that follows a run of known ones", function()
    S.job(dir, { mode = "full" })
    S.data(dir, records(1, 30))
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    local again = records(1, 30)
    table.insert(again, 21, "{not json")
    S.data(dir, again)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(1, r.code, r.stderr)
    assert.matches("contacts.ndjson:21: malformed JSON", r.stderr, 1, true)
    local c = S.summary(r.stdout)
    assert.same({ 30, 1 }, { c.unchanged, c.failed })
  end)

  it("stops a limited full pass exactly at the limit and resumes where it stopped", function()
    S.job(dir, { mode = "full", limit = 12, batch = 5 })
    S.data(dir, records(1, 30))
    for _ = 1, 3 do assert.equal(0, S.run(dir, "run", "--no-progress").code) end
    assert.equal(30, S.count(dir, "contact"))
    -- a second pass over the same bytes: 12, 12, then the last 6, all unchanged
    local seen = {}
    for _ = 1, 3 do
      local r = S.run(dir, "run", "--no-progress")
      assert.equal(0, r.code, r.stderr)
      local c = S.summary(r.stdout)
      seen[#seen + 1] = c.unchanged
      assert.equal(0, c.created + c.updated)
    end
    assert.same({ 12, 12, 6 }, seen)
  end)

  it("maps every record again after the mapping changes", function()
    S.job(dir, { mode = "full" })
    S.data(dir, records(1, 10))
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    S.job(dir, { mode = "full", mapping = '{ email = "email", name = { "name", import = function(v) return v:upper() end }, age = "age" }' })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(10, S.summary(r.stdout).updated)
    assert.equal("CONTACT 3", S.value(dir, "SELECT name FROM contact WHERE email = 'c3@example.com'"))
  end)
end)
