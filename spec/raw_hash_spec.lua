-- A line imported before is known by its bytes (the hash of the raw line,
-- kept in the id map) and skipped unread. A record found unchanged by its
-- content whose line hashes otherwise (an id map written by another entsync
-- version, a reset, or the same record in another form) takes the line's
-- hash then, so the run after it skips the line unread too: its callback is
-- not called. Both record paths, full and incremental runs.

local helpers = require "helpers"

local LINES = {
  '{"id":1,"at":1,"name":"one"}',
  '{"id":2,"at":2,"name":"two"}',
  '{"id":3,"at":3,"name":"three"}',
}

describe("a line's hash", function()
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  -- the callback leaves a line in calls.log each time a record is decoded
  local JOB = [==[
store "entsync.db"
entity "contact" { name = "text" }
local files = provider "ndjson" { path = "contacts.ndjson" }
local function seen(v) local f = assert(io.open("calls.log", "a")); f:write(v, "\n"); f:close(); return v end
sync "contacts" { remote = files, entity = "contact", mapping = { name = { "name", import = seen } },
  import = { mode = env("MODE", "full"), changed = "at" } }
]==]

  local function calls()
    local text = helpers.read(dir .. "/calls.log") or ""
    helpers.write(dir .. "/calls.log", "")
    local out = {}
    for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
    return out
  end

  local function raw_hashes()
    local out = {}
    for _, row in ipairs(helpers.query(dir .. "/entsync.db", "SELECT remote_id, raw_hash FROM entsync_idmap")) do
      out[row.remote_id] = row.raw_hash
    end
    return out
  end

  for _, mode in ipairs({ "full", "incremental" }) do
    for _, path in ipairs({ "c", "lua" }) do
      it("is kept when the record is unchanged but its line is not known (" .. mode .. " run, " .. path
        .. " record path)", function()
        helpers.write(dir .. "/job.lua", JOB)
        local env = { MODE = mode, ENTSYNC_RECORD_PATH = path }
        local function run(expect)
          -- every record read again, whatever the cursor
          if helpers.read(dir .. "/entsync.db") then
            helpers.sqlite3(dir .. "/entsync.db", "UPDATE entsync_state SET cursor_mark = NULL, cursor_id = NULL")
          end
          local r = helpers.run(dir, { "job.lua", "run", "--no-progress" }, env)
          assert.equal(0, r.code, r.stderr)
          assert.matches(expect, r.stdout, 1, true)
        end
        helpers.write(dir .. "/contacts.ndjson", table.concat(LINES, "\n") .. "\n")
        run("3 created, 0 updated, 0 unchanged")
        assert.same({ "one", "two", "three" }, calls())
        local first = raw_hashes()
        for id = 1, 3 do assert.is_number(first[id]) end

        -- a stale hash, none, and a line in another form with the same content
        helpers.sqlite3(dir .. "/entsync.db", "UPDATE entsync_idmap SET raw_hash = raw_hash + 1 WHERE remote_id = 1; "
          .. "UPDATE entsync_idmap SET raw_hash = NULL WHERE remote_id = 2")
        helpers.write(dir .. "/contacts.ndjson", LINES[1] .. "\n" .. LINES[2] .. "\n"
          .. '{ "id": 3, "at": 3, "name": "three" }\n')
        run("0 created, 0 updated, 3 unchanged")
        assert.same({ "one", "two", "three" }, calls())
        local second = raw_hashes()
        assert.equal(first[1], second[1])
        assert.equal(first[2], second[2])
        assert.is_number(second[3])
        assert.are_not.equal(first[3], second[3])

        -- every line is known now: none is decoded
        run("0 created, 0 updated, 3 unchanged")
        assert.same({}, calls())
        assert.same(second, raw_hashes())
        assert.equal("one|two|three", table.concat((function()
          local names = {}
          for _, row in ipairs(helpers.query(dir .. "/entsync.db", "SELECT name FROM contact ORDER BY id")) do
            names[#names + 1] = row.name
          end
          return names
        end)(), "|"))
      end)
    end
  end
end)
