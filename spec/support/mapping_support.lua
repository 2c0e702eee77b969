-- Shared by the mapping, map and depends specs: a job folder in a temp dir
-- (job.lua, mapping modules, NDJSON data), the real entsync-run run in it,
-- and the store read back through entsync's own C store or changed through
-- the sqlite3 shell.

local helpers = require "helpers"
local S = require "import_support"

local M = {}

-- A fresh job folder; M.cleanup removes every one made.
local made = {}
function M.dir()
  local dir = helpers.tmpdir()
  made[#made + 1] = dir
  return dir
end

function M.cleanup()
  for _, dir in ipairs(made) do helpers.rmdir(dir) end
  made = {}
end

-- Writes a file under dir (folders made as needed).
function M.file(dir, name, content)
  return helpers.write(dir .. "/" .. name, content)
end

-- Writes dir/job.lua.
function M.job(dir, source)
  return M.file(dir, "job.lua", source)
end

-- Writes dir/data/<name>.ndjson from a list of records (tables, or lines as
-- strings).
function M.data(dir, name, records)
  return M.file(dir, "data/" .. name .. ".ndjson", S.ndjson(records))
end

-- Runs entsync-run job.lua ARGS... in dir, without the progress line.
function M.run(dir, ...)
  local args = { "job.lua", ... }
  args[#args + 1] = "--no-progress"
  return helpers.run(dir, args)
end

-- Like M.run, but the run is killed after seconds: { code, stdout,
-- stderr, killed = true when it had to be }.
function M.run_limited(dir, seconds, ...)
  local out, err = os.tmpname(), os.tmpname()
  local parts = { helpers.quote(helpers.bin), "job.lua" }
  for _, arg in ipairs({ ... }) do parts[#parts + 1] = helpers.quote(arg) end
  parts[#parts + 1] = "--no-progress"
  local cmd = string.format("cd %s && timeout -s KILL %d %s </dev/null >%s 2>%s", helpers.quote(dir), seconds,
    table.concat(parts, " "), out, err)
  local _, _, code = os.execute(cmd)
  local result = { code = code, stdout = helpers.read(out) or "", stderr = helpers.read(err) or "", killed = code == 137 }
  os.remove(out)
  os.remove(err)
  return result
end

M.db, M.summary, M.query, M.value, M.count = S.db, S.summary, S.query, S.value, S.count

-- Runs SQL on the store through the sqlite3 shell (as another program
-- would); raises when the shell fails.
function M.sqlite(dir, sql)
  helpers.sqlite3(S.db(dir), sql, 3)
end

-- The local id of remote_id in sync's id map: its primary entity's id, or,
-- given a split's other entity, that entity's row linked to it (through
-- the link column <primary>_id).
function M.local_id(dir, sync, remote_id, entity, primary)
  local id = M.value(dir, "SELECT local_id FROM entsync_map WHERE sync = ?1 AND CAST(remote_id AS TEXT) = ?2", sync,
    tostring(remote_id))
  if id == nil or not entity or not primary or entity == primary then return id end
  return M.value(dir, string.format('SELECT id FROM "%s" WHERE "%s_id" = ?1', entity, primary), id)
end

-- The failures of a sync by key (the remote id's text): { [key] = row }.
function M.failures(dir, sync, direction)
  local out = {}
  for _, row in ipairs(M.query(dir, "SELECT * FROM entsync_failed WHERE sync = ?1 AND direction = ?2", sync,
      direction or "import")) do
    out[row.key] = row
  end
  return out
end

-- The sync names of the summary lines on stdout, in order.
function M.summary_order(stdout)
  local order = {}
  for name in stdout:gmatch("([%w_]+): %d+ created") do order[#order + 1] = name end
  return order
end

-- Number of lines in a string.
function M.lines(s)
  return select(2, s:gsub("\n", "\n"))
end

return M
