-- Shared by the import specs (import, runs, kill, lock): job files and data
-- written into temp dirs, the summary line parsed, and the store read back
-- through entsync's own C store (helpers.query).

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"

local M = {}

-- A JSON object with its keys in a fixed order, so generated files are the
-- same bytes every time.
local function encode_record(record)
  local keys = {}
  for k in pairs(record) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if a == "id" then return b ~= "id" end
    if b == "id" then return false end
    return a < b
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = cjson.encode(k) .. ":" .. cjson.encode(record[k])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.encode = encode_record

-- NDJSON text of a list of records; a string item is written as it is (a
-- malformed line, a blank line).
function M.ndjson(records)
  local lines = {}
  for i, record in ipairs(records) do
    lines[i] = type(record) == "string" and record or encode_record(record)
  end
  return table.concat(lines, "\n") .. "\n"
end

-- A contact record with predictable fields.
function M.contact(id, fields)
  local record = { id = id, email = "c" .. id .. "@example.com", name = "Contact " .. id, age = 20 + id % 50 }
  for k, v in pairs(fields or {}) do
    if v == cjson.null then record[k] = nil else record[k] = v end
  end
  return record
end

-- Writes a job file. opts:
--   mode, changed, limit, batch, deletes, retry  the import settings
--   provider      provider source (default: ndjson over dir "data")
--   remote        remote expression (default: files "contacts.ndjson")
--   mapping       mapping source (default: email, name, age)
--   prelude       Lua put before the declarations
--   extra         Lua put after the sync
function M.job(dir, opts)
  opts = opts or {}
  local import = {}
  local function add(key, value)
    if value ~= nil then
      import[#import + 1] = string.format("%s = %s", key, type(value) == "string" and string.format("%q", value)
        or tostring(value))
    end
  end
  add("mode", opts.mode or "full")
  add("changed", opts.changed)
  add("limit", opts.limit)
  add("batch", opts.batch)
  add("deletes", opts.deletes)
  add("retry", opts.retry)
  local source = table.concat({
    opts.prelude or "",
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    "local files = " .. (opts.provider or 'provider "ndjson" { dir = "data" }'),
    'sync "contacts" { remote = ' .. (opts.remote or 'files "contacts.ndjson"') .. ', entity = "contact",',
    "  mapping = " .. (opts.mapping or '{ email = "email", name = "name", age = "age" }') .. ",",
    "  import = { " .. table.concat(import, ", ") .. " } }",
    opts.extra or "",
  }, "\n") .. "\n"
  helpers.write(dir .. "/job.lua", source)
  return dir .. "/job.lua"
end

function M.data(dir, records, name)
  return helpers.write(dir .. "/data/" .. (name or "contacts.ndjson"), M.ndjson(records))
end

-- Runs the job in dir: helpers.run with "job.lua" and the args.
function M.run(dir, ...)
  local args = { "job.lua", ... }
  return helpers.run(dir, args)
end

-- The counts of the summary line of sync in stdout, or nil: { line,
-- created = n, ..., would_create = n, before_cursor = n, retried = n }.
function M.summary(stdout, sync)
  sync = sync or "contacts"
  for line in stdout:gmatch("[^\n]+") do
    if line:sub(1, #sync + 2) == sync .. ": " then
      local counts = { line = line }
      local body = line:sub(#sync + 3):gsub(" %(.-%)", ""):gsub(" in %d+%.%d+s.*$", "")
      for item in body:gmatch("[^,]+") do
        local n, words = item:match("^%s*(%d+) (.-)%s*$")
        if n then
          words = words:gsub("^would ", "would_"):gsub("before the cursor", "before_cursor")
          counts[words] = tonumber(n)
        end
      end
      return counts
    end
  end
  return nil
end

function M.db(dir)
  return dir .. "/entsync.db"
end

function M.query(dir, sql, ...)
  return helpers.query(M.db(dir), sql, ...)
end

function M.value(dir, sql, ...)
  local row = M.query(dir, sql, ...)[1]
  if not row then return nil end
  local _, v = next(row)
  return v
end

function M.count(dir, table_name, where)
  return M.value(dir, "SELECT count(*) AS n FROM " .. table_name .. (where and (" WHERE " .. where) or ""))
end

-- Contacts as { [id] = "email|name|age" } and the sorted list of remote ids
-- in the id map.
-- A contact whose changed mark (updated_at) is a day of January 2024.
function M.dated(id, day, fields)
  local record = M.contact(id, fields)
  record.updated_at = string.format("2024-01-%02d", day)
  return record
end

function M.contacts(dir)
  local out = {}
  for _, row in ipairs(M.query(dir, [[SELECT m.remote_id, c.email, c.name, c.age FROM contact c
      JOIN entsync_map m ON m.local_id = c.id AND m.sync = 'contacts' ORDER BY c.id]])) do
    out[tonumber(row.remote_id) or row.remote_id] = string.format("%s|%s|%s", tostring(row.email), tostring(row.name),
      tostring(row.age))
  end
  return out
end

function M.expected(records)
  local out = {}
  for _, r in ipairs(records) do
    if type(r) == "table" then
      out[r.id] = string.format("%s|%s|%s", tostring(r.email), tostring(r.name), tostring(r.age))
    end
  end
  return out
end

-- The whole imported state in a canonical text: entity rows by local id and
-- the id map by remote id (without synced_at, a clock reading, and
-- seen_pass, the number of the full pass that last saw the entity, which
-- counts runs rather than describing the data).
function M.dump(dir)
  local lines = {}
  for _, row in ipairs(M.query(dir, "SELECT id, email, name, age FROM contact ORDER BY id")) do
    lines[#lines + 1] = string.format("contact %d %s %s %s", row.id, tostring(row.email), tostring(row.name),
      tostring(row.age))
  end
  for _, row in ipairs(M.query(dir, [[SELECT sync, local_id, remote_id, changed, hash, gone_at
      FROM entsync_map ORDER BY sync, CAST(remote_id AS TEXT)]])) do
    lines[#lines + 1] = string.format("idmap %s %d %s %s %s %s", row.sync, row.local_id,
      row.remote_id, tostring(row.changed), tostring(row.hash), tostring(row.gone_at))
  end
  return table.concat(lines, "\n")
end

-- Installs triggers that log every write to the contact table and the id
-- map into import_audit, to prove that a run wrote nothing.
function M.audit(dir)
  local store = helpers.open_store(M.db(dir))
  store:exec([[
    CREATE TABLE IF NOT EXISTS import_audit (what TEXT);
    CREATE TRIGGER IF NOT EXISTS import_audit_ci AFTER INSERT ON contact BEGIN INSERT INTO import_audit VALUES ('contact insert'); END;
    CREATE TRIGGER IF NOT EXISTS import_audit_cu AFTER UPDATE ON contact BEGIN INSERT INTO import_audit VALUES ('contact update'); END;
    CREATE TRIGGER IF NOT EXISTS import_audit_cd AFTER DELETE ON contact BEGIN INSERT INTO import_audit VALUES ('contact delete'); END;
    CREATE TRIGGER IF NOT EXISTS import_audit_mi AFTER INSERT ON entsync_idmap BEGIN INSERT INTO import_audit VALUES ('idmap insert'); END;
    CREATE TRIGGER IF NOT EXISTS import_audit_mu AFTER UPDATE ON entsync_idmap BEGIN INSERT INTO import_audit VALUES ('idmap update'); END;
    CREATE TRIGGER IF NOT EXISTS import_audit_md AFTER DELETE ON entsync_idmap BEGIN INSERT INTO import_audit VALUES ('idmap delete'); END;
    DELETE FROM import_audit;
  ]])
  store:close()
end

function M.audited(dir)
  local out = {}
  for _, row in ipairs(M.query(dir, "SELECT what FROM import_audit ORDER BY rowid")) do out[#out + 1] = row.what end
  return out
end

function M.exists(path)
  return core.fs.exists(path) ~= false
end

function M.ls(dir)
  local names = core.fs.listdir(dir)
  if not names then return {} end
  table.sort(names)
  return names
end

-- A long-lived process we own (for a live pid in a hand-made lease).
function M.sleeper(seconds)
  local pipe = io.popen("sleep " .. (seconds or 30) .. " >/dev/null 2>&1 & echo $!")
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  return pid
end

-- A pid that has exited.
function M.dead_pid()
  local pipe = io.popen("sh -c 'echo $$'")
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  helpers.wait_gone(pid, 5)
  return pid
end

-- Makes the job's store with entsync's own tables at the current schema,
-- as entsync-run's first open would (core.store.open alone makes none of
-- them: entsync.ledger does).
function M.create_store(dir)
  local store = helpers.open_store(M.db(dir))
  require("entsync.ledger").migrate(store)
  store:close()
end

-- How many records of the input an open full pass has behind it, read
-- from entsync_state.pass_resume: a count of records ("3"), or the JSON
-- the pass resumes from ({"offset":3}, or a file reader's checkpoint
-- {"checkpoint":{"file":...,"skip":3}}). Other text is returned as it is.
function M.resumes_after(text)
  if text == nil then return nil end
  local n = tonumber(text)
  if n then return math.tointeger(n) end
  local ok, value = pcall(cjson.decode, text)
  if not ok or type(value) ~= "table" then return text end
  if value.offset ~= nil then return math.tointeger(value.offset) end
  if type(value.checkpoint) == "table" and value.checkpoint.skip ~= nil then
    return math.tointeger(value.checkpoint.skip)
  end
  return text
end

-- Writes a lease row for sync into the store.
function M.lease(dir, sync, fields)
  local store = helpers.open_store(M.db(dir))
  local now = core.sys.now()
  store:run([[INSERT OR REPLACE INTO entsync_locks (name, owner, pid, host, acquired_at, heartbeat_at, expires_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)]], "sync:" .. (sync or "contacts"), fields.owner or "spec-owner",
    fields.pid, fields.host or core.sys.hostname(), fields.acquired_at or now, fields.heartbeat_at or now,
    fields.expires_at or (now + 300))
  store:close()
end

-- Reads the store with the sqlite3 shell, read-only: an observer that
-- never takes the write lock, for polling while a run is in a batch.
-- Returns the rows as lists of strings.
function M.peek(dir, sql)
  local _, rows = helpers.sqlite3_peek(M.db(dir), sql)
  return rows
end

-- Like helpers.spawn, but the child's parent is a shell that waits for it,
-- so a child killed by a signal is reaped at once. (helpers.spawn's child is
-- an orphan; until the machine's init reaps it, a killed child stays a
-- zombie that kill(pid, 0) still finds, so its lease would look alive.)
function M.spawn(dir, args)
  local out, err = os.tmpname(), os.tmpname()
  local parts = {}
  for i, arg in ipairs(args) do parts[i] = helpers.quote(arg) end
  local cmd = string.format("(cd %s && %s %s </dev/null >%s 2>%s & echo $!; wait) &", helpers.quote(dir),
    helpers.quote(helpers.bin), table.concat(parts, " "), out, err)
  local pipe = io.popen("sh -c " .. helpers.quote(cmd))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  M.spawned[#M.spawned + 1] = out
  M.spawned[#M.spawned + 1] = err
  return { pid = pid, stdout = out, stderr = err }
end
M.spawned = {}

-- Registers the output files of a helpers.spawn child for M.cleanup.
function M.track(child)
  M.spawned[#M.spawned + 1] = child.stdout
  M.spawned[#M.spawned + 1] = child.stderr
  return child
end

-- A process the spec owns: cleanup() kills it if it still runs.
M.owned = {}
function M.own(pid)
  M.owned[#M.owned + 1] = pid
  return pid
end

-- A fresh temp dir that cleanup() removes.
M.dirs = {}
function M.newdir()
  local d = helpers.tmpdir()
  M.dirs[#M.dirs + 1] = d
  return d
end

-- Kills the owned processes still running and removes the output files of
-- every child spawned so far, and the dirs of newdir().
function M.cleanup()
  for _, pid in ipairs(M.owned) do
    if helpers.alive(pid) then helpers.kill(pid, "KILL") end
    helpers.wait_gone(pid, 5)
  end
  M.owned = {}
  for _, path in ipairs(M.spawned) do os.remove(path) end
  M.spawned = {}
  for _, d in ipairs(M.dirs) do helpers.rmdir(d) end
  M.dirs = {}
end

-- Waits until no process has the pid any more (not even a zombie).
function M.wait_reaped(pid, timeout)
  return helpers.wait_for(function() return not core.sys.process_alive(pid) end, timeout or 10) or false
end

return M
