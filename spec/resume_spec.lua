-- Limited full passes that resume without offsets: http_json's key paging
-- hands over the last key as its checkpoint, so a remote list that shifts
-- between runs (records inserted before the key, records deleted ahead of
-- it) is read whole, and the pass's deletes take only what is really gone.
-- Page paging resumes by a count of records: such a pass applies no
-- deletes, and says so. And the delete guard: a full pass that would
-- delete most of a sync's entities deletes nothing unless told it may.
-- Real entsync-run processes and the real fixture remote only.

local cjson = require "cjson"
local helpers = require "helpers"
local I = require "import_support"
local S = require "http_support"

local TIMEOUT = 60

local function record(id)
  return { id = id, email = "c" .. id .. "@example.com", name = "Contact " .. id, age = 20 + id % 50 }
end

-- Records for the ids given, or for ids 10, 20, ..., 200.
local function records(ids)
  if not ids then
    ids = {}
    for i = 1, 20 do ids[i] = 10 * i end
  end
  local out = {}
  for i, id in ipairs(ids) do out[i] = record(id) end
  return out
end

local ORIGINAL = records()

-- The ids of ORIGINAL without the ones given, with the ones added.
local function ids_of(without, with)
  local drop, out = {}, {}
  for _, id in ipairs(without or {}) do drop[id] = true end
  for _, id in ipairs(with or {}) do out[#out + 1] = id end
  for i = 1, 20 do
    if not drop[10 * i] then out[#out + 1] = 10 * i end
  end
  table.sort(out)
  return out
end

describe("limited full passes", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = ORIGINAL }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  local function run(...)
    local r = S.run_limited(dir, TIMEOUT, ...)
    assert.is_false(r.killed, "entsync-run was killed after " .. TIMEOUT .. "s: " .. r.stderr)
    return r
  end

  local function state()
    return helpers.query(dir .. "/entsync.db", [[SELECT t.* FROM entsync_state t
      JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts']])[1]
  end

  -- The remote ids stored, sorted.
  local function stored_ids()
    local stored = S.stored(dir)
    local out = {}
    for id in pairs(stored) do out[#out + 1] = id end
    table.sort(out)
    return out
  end

  -- One run of the limited pass: its counts.
  local function step(expect_code)
    local r = run()
    assert.equal(expect_code or 0, r.code, r.stderr)
    local summary = I.summary(r.stdout)
    assert.is_not_nil(summary, r.stdout)
    summary.stderr = r.stderr
    return summary
  end

  -- The first pass over the 20 records, in runs of 7: 7, 7, 6.
  local function first_pass()
    local created = 0
    for _ = 1, 3 do
      local summary = step()
      assert.equal(0, summary.deleted, summary.line)
      created = created + summary.created
    end
    assert.equal(20, created)
    assert.same(ids_of(), stored_ids())
    assert.equal(0, state().pass_open)
  end

  describe("over key paging (a checkpoint: the last key)", function()
    before_each(function()
      S.job(dir, server.url, { page = { style = "key", size = 5, after_param = "after" } },
        { { resource = "key/contacts", import = { mode = "full", limit = 7, deletes = "delete" } } })
    end)

    it("skip nothing and delete only what is really gone when the list shifts between runs", function()
      first_pass()
      -- the second pass: 10..70
      local summary = step()
      assert.equal(7, summary.unchanged, summary.line)
      local resume = cjson.decode(state().pass_resume)
      assert.same({ checkpoint = { after = 70 } }, resume)
      assert.equal(1, state().pass_open)
      local status = run("status")
      assert.equal(0, status.code, status.stderr)
      assert.matches('in progress, resumes from the provider\'s checkpoint {"after":70}', status.stdout, 1, true)

      -- between the runs: records with low ids arrive, records the pass has
      -- not reached yet are deleted
      server.set_data({ contacts = records(ids_of({ 120, 150 }, { 5, 15 })) })
      server.reset_log()
      summary = step()
      assert.equal(7, summary.unchanged, summary.line) -- 80, 90, 100, 110, 130, 140, 160
      assert.equal(0, summary.created + summary.deleted + summary.failed, summary.line)
      assert.same({ checkpoint = { after = 160 } }, cjson.decode(state().pass_resume))
      -- it asked for the records after the last key it took
      local first = S.entries(server.log(), { path = "/key/contacts" })[1]
      assert.equal("70", S.query(first.query).after)

      summary = step()
      assert.equal(4, summary.unchanged, summary.line) -- 170..200: the pass is complete
      assert.equal(2, summary.deleted, summary.line)
      assert.same(ids_of({ 120, 150 }), stored_ids())
      assert.equal(0, state().pass_open)
      assert.is_nil(state().pass_resume)
      assert.is_nil(summary.stderr:match("not applied"), summary.stderr)

      -- the next pass finds the records that arrived before the key
      summary = step()
      assert.equal(2, summary.created, summary.line)
      assert.equal(5, summary.unchanged, summary.line)
      assert.same(ids_of({ 120, 150 }, { 5, 15 }), stored_ids())
    end)

    it("resume after the last key even when the record holding it is gone", function()
      first_pass()
      step() -- 10..70
      server.set_data({ contacts = records(ids_of({ 70, 80 })) })
      local summary = step()
      assert.equal(7, summary.unchanged, summary.line) -- 90..150
      summary = step()
      assert.equal(5, summary.unchanged, summary.line) -- 160..200
      assert.same(ids_of({ 80 }), stored_ids()) -- 70 was seen by this pass before it went
      assert.equal(1, summary.deleted, summary.line)
    end)
  end)

  describe("over page paging (no checkpoint: a count of records)", function()
    before_each(function()
      S.job(dir, server.url, { page = { style = "page", size = 5 } },
        { { resource = "page/contacts", import = { mode = "full", limit = 7, deletes = "delete" } } })
    end)

    it("apply no deletes when a resumed pass completes, and the log says so", function()
      first_pass()
      local summary = step()
      assert.equal(7, summary.unchanged, summary.line)
      local resume = cjson.decode(state().pass_resume)
      assert.is_nil(resume.checkpoint)
      assert.equal(7, resume.offset)
      local status = run("status")
      assert.matches("in progress, resumes after 7 records", status.stdout, 1, true)

      -- records the pass saw are deleted, and one it has not reached: the
      -- count now skips 80 and 90, which are still there
      server.set_data({ contacts = records(ids_of({ 30, 40, 120 })) })
      local seen = {}
      repeat
        summary = step()
        assert.equal(0, summary.deleted, summary.line)
        seen[#seen + 1] = summary
      until state().pass_open == 0 or #seen > 4
      assert.equal(0, state().pass_open)
      assert.matches("resumed by a count of records", summary.stderr, 1, true)
      assert.matches("not applied", summary.stderr, 1, true)
      -- nothing is deleted: not the records that are gone, and above all
      -- not 80 and 90, which the shifted count never showed this pass
      assert.same(ids_of(), stored_ids())
    end)
  end)
end)

describe("a full pass whose reader cannot vouch for it (complete_pass = false)", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  it("applies no deletes, and says why", function()
    -- records come from ids.txt beside the job, one id a line
    helpers.write(dir .. "/providers/partial.lua", [[
local M = {}
function M.new(config, ctx)
  local P = {}
  function P:list()
    local ids = {}
    for line in io.lines(ctx.base_dir .. "/ids.txt") do ids[#ids + 1] = tonumber(line) end
    local i = 0
    return { complete_pass = false, next = function()
      i = i + 1
      if ids[i] then return { id = ids[i], name = "N" .. ids[i] } end
    end }
  end
  return P
end
return M
]])
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { name = "text" }',
      'local p = provider "partial" {}',
      'sync "contacts" { remote = p "x", entity = "contact", mapping = { name = "name" },',
      '  import = { mode = "full", deletes = "delete" } }',
    }, "\n") .. "\n")
    helpers.write(dir .. "/ids.txt", "1\n2\n3\n4\n")
    local r = S.run_limited(dir, TIMEOUT)
    assert.equal(0, r.code, r.stderr)
    assert.equal(4, I.summary(r.stdout).created, r.stdout)
    helpers.write(dir .. "/ids.txt", "1\n2\n")
    r = S.run_limited(dir, TIMEOUT)
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, I.summary(r.stdout).deleted, r.stdout)
    assert.equal(4, S.count(dir, "contact"))
    assert.matches("cannot vouch", r.stderr, 1, true)
  end)
end)

describe("the delete guard", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = ORIGINAL }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  local function run(...)
    local r = S.run_limited(dir, TIMEOUT, ...)
    assert.is_false(r.killed, "entsync-run was killed after " .. TIMEOUT .. "s: " .. r.stderr)
    return r
  end

  local function imported(import)
    S.job(dir, server.url, { page = { style = "page", size = 50 } },
      { { resource = "page/contacts", import = import or { mode = "full", deletes = "delete" } } })
    local r = run()
    assert.equal(0, r.code, r.stderr)
    assert.equal(20, I.summary(r.stdout).created, r.stdout)
    server.set_data({ contacts = {} })
  end

  it("keeps every entity when the API suddenly answers an empty list, and says how to allow it", function()
    imported()
    local r = run()
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, I.summary(r.stdout).deleted, r.stdout)
    assert.equal(20, S.count(dir, "contact"))
    assert.matches("delete guard", r.stderr, 1, true)
    assert.matches("--allow-deletes", r.stderr, 1, true)
    assert.matches("contacts", r.stderr, 1, true)

    r = run("run", "--allow-deletes")
    assert.equal(0, r.code, r.stderr)
    assert.equal(20, I.summary(r.stdout).deleted, r.stdout)
    assert.equal(0, S.count(dir, "contact"))
    assert.equal(0, S.count(dir, "entsync_idmap"))
  end)

  it("is off with import = { delete_guard = false }", function()
    imported({ mode = "full", deletes = "delete", delete_guard = false })
    local r = run()
    assert.equal(0, r.code, r.stderr)
    assert.equal(20, I.summary(r.stdout).deleted, r.stdout)
    assert.equal(0, S.count(dir, "contact"))
    assert.is_nil(r.stderr:match("delete guard"), r.stderr)
  end)

  it("lets a pass delete a few", function()
    imported()
    server.set_data({ contacts = records(ids_of({ 10, 20, 30 })) })
    local r = run()
    assert.equal(0, r.code, r.stderr)
    assert.equal(3, I.summary(r.stdout).deleted, r.stdout)
    assert.equal(17, S.count(dir, "contact"))
  end)
end)
