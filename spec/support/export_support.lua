-- Shared by spec/export_spec.lua and spec/loop_spec.lua: job files that
-- export (to the fixture remote through http_json, or to an ndjson file
-- sink), the store changed the way other programs change it (the sqlite3
-- shell), audit triggers that count local writes, and the fixture's
-- request log read as writes.

local cjson = require "cjson"
local helpers = require "helpers"
local S = require "http_support"

local M = {}

-- n contact records (ids first..first+n-1) with distinct updated_at marks
-- in the past, so every write the fixture makes is later than all of them.
function M.records(n, first)
  return S.records(n, first)
end

function M.db(dir)
  return dir .. "/entsync.db"
end

-- Runs SQL through the sqlite3 shell, as another program would; raises
-- with the shell's stderr when it fails. Returns stdout.
function M.sql(dir, sql)
  return helpers.sqlite3(M.db(dir), sql, 3)
end

-- Reads the store with the sqlite3 shell, read-only; returns the output's lines.
function M.peek(dir, sql)
  return (helpers.sqlite3_peek(M.db(dir), sql))
end

-- Rows of a query through entsync's own store (a fresh connection): the
-- import specs' helpers, for the same job layout (entsync.db in dir).
local import_support = require "import_support"
M.query, M.value, M.count = import_support.query, import_support.value, import_support.count

-- The changes waiting for a sync to export (default "contacts"): past its
-- position in the change log, not of its own making, the latest per local
-- id: { { entity, local_id, operation = "upsert"|"delete", seq } }.
function M.outbox(dir, sync)
  return M.query(dir, [[SELECT e.name AS entity, c.local_id,
      CASE max(c.operation) WHEN 2 THEN 'delete' ELSE 'upsert' END AS operation, max(c.seq) AS seq
    FROM entsync_changes c JOIN entsync_entities e ON e.id = c.entity
    JOIN entsync_syncs s ON s.name = ?1 JOIN entsync_state t ON t.sync = s.id
    WHERE c.seq > coalesce(t.out_seq, 0) AND (c.origin IS NULL OR c.origin <> s.id)
    GROUP BY e.name, c.local_id ORDER BY e.name, c.local_id]], sync or "contacts")
end

-- The export failures of a sync by local id: { [local_id] = row }.
function M.export_failures(dir, sync)
  local out = {}
  for _, row in ipairs(M.query(dir, "SELECT * FROM entsync_failed WHERE sync = ?1 AND direction = 'export'",
      sync or "contacts")) do
    out[row.local_id] = row
  end
  return out
end

-- The contact rows: { [local id] = { email, name, age } }.
function M.contacts(dir, entity)
  local out = {}
  for _, row in ipairs(M.query(dir, string.format('SELECT * FROM "%s" ORDER BY id', entity or "contact"))) do
    out[row.id] = row
  end
  return out
end

-- The remote id of a local entity in a sync's id map.
function M.remote_of(dir, sync, entity, local_id)
  return M.value(dir, "SELECT remote_id FROM entsync_map WHERE sync = ?1 AND local_id = ?2", sync, local_id)
end

local DEFAULT_MAPPING = '{ email = "email", name = "name", age = "age" }'

-- Writes job.lua in dir: entity contact, one http_json provider on the
-- fixture (page style over /api/<resource>, updates by PUT) and one sync
-- "contacts". opts:
--   export     Lua source of the export table (default "{ on_change = true }")
--   import     Lua source of the import table (default a full import with
--              changed = "updated_at"); "false" for an export-only sync
--   attempts   the provider's HTTP attempts (default 2: one retry)
--   page_size  records per page (default 100)
--   resource   default "api/contacts"
--   mapping    Lua source of the mapping
--   entities   Lua source of the entity declarations (default: contact)
--   entity     Lua source of the sync's entity (default "\"contact\"")
--   prelude    Lua put first
function M.http_job(dir, url, opts)
  opts = opts or {}
  local lines = {
    opts.prelude or "",
    opts.entities or 'entity "contact" { email = "text", name = "text", age = "integer" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = %d }, '
      .. 'update_method = "PUT", attempts = %d }', url, opts.page_size or 100, opts.attempts or 2),
    string.format('sync "contacts" { remote = api %q, entity = %s,', opts.resource or "api/contacts",
      opts.entity or '"contact"'),
    "  mapping = " .. (opts.mapping or DEFAULT_MAPPING) .. ",",
    "  import = " .. (opts.import or '{ mode = "full", changed = "updated_at" }') .. ",",
    "  export = " .. (opts.export or "{ on_change = true }") .. " }",
  }
  helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
  return dir .. "/job.lua"
end

-- Writes job.lua in dir: entity contact exported to an ndjson file sink,
-- provider "ndjson" { dir = "out" } and export = { resource = "sink.ndjson",
-- ... } (extra export settings as Lua source, e.g. 'on_change = true').
function M.sink_job(dir, extra)
  helpers.write(dir .. "/out/.keep", "")
  local lines = {
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    'local out = provider "ndjson" { dir = "out" }',
    'sync "contacts" { remote = out, entity = "contact",',
    "  mapping = " .. DEFAULT_MAPPING .. ",",
    '  import = false, export = { resource = "sink.ndjson"' .. (extra and (", " .. extra) or "") .. " } }",
  }
  helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
  return dir .. "/job.lua"
end

-- The decoded lines of the sink file (an empty list when it is not there).
function M.sink_lines(dir)
  local text = helpers.read(dir .. "/out/sink.ndjson") or ""
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

-- Runs the job in dir with args: { code, stdout, stderr }.
function M.run(dir, ...)
  return helpers.run(dir, { "job.lua", ... })
end

-- The counts of a summary line: the import line ("contacts: 3 created, ...")
-- when export is false, the export line ("contacts: exported ...") when true.
function M.summary(stdout, export, sync)
  sync = sync or "contacts"
  for line in stdout:gmatch("[^\n]+") do
    local body = line:match("^" .. sync .. ": (.*)$")
    if body and (body:match("^exported ") ~= nil) == (export == true) then
      local counts = { line = line }
      body = body:gsub("^exported ", ""):gsub(" in %d+%.%d+s.*$", "")
      for n, word in body:gmatch("(%d+) (%a+)") do counts[word] = tonumber(n) end
      return counts
    end
  end
  return nil
end

-- Writes (everything but GET) in the fixture's request log, optionally
-- only those of a method or under a path prefix; each with its body
-- decoded as .record.
function M.writes(log, filter)
  filter = filter or {}
  local out = {}
  for _, e in ipairs(log) do
    if e.method ~= "GET" and (not filter.method or e.method == filter.method)
        and (not filter.under or e.path:sub(1, #filter.under) == filter.under)
        and (not filter.path or e.path == filter.path) then
      if e.body and e.body ~= "" then
        local ok, record = pcall(cjson.decode, e.body)
        if ok then e.record = record end
      end
      out[#out + 1] = e
    end
  end
  return out
end

-- Successful writes per path: { ["/api/contacts/3"] = n }.
function M.successes(log, method)
  local out = {}
  for _, e in ipairs(M.writes(log, { method = method })) do
    if e.status and e.status >= 200 and e.status < 300 then out[e.path] = (out[e.path] or 0) + 1 end
  end
  return out
end

-- Installs triggers that count every write to a local entity table in
-- export_audit (what, local id), so a spec can prove a run wrote nothing.
function M.audit(dir, entity)
  entity = entity or "contact"
  M.sql(dir, string.format([[
    CREATE TABLE IF NOT EXISTS export_audit (what TEXT, entity TEXT, local_id INTEGER);
    CREATE TRIGGER IF NOT EXISTS export_audit_%s_i AFTER INSERT ON "%s"
      BEGIN INSERT INTO export_audit VALUES ('insert', '%s', new.id); END;
    CREATE TRIGGER IF NOT EXISTS export_audit_%s_u AFTER UPDATE ON "%s"
      BEGIN INSERT INTO export_audit VALUES ('update', '%s', new.id); END;
    CREATE TRIGGER IF NOT EXISTS export_audit_%s_d AFTER DELETE ON "%s"
      BEGIN INSERT INTO export_audit VALUES ('delete', '%s', old.id); END;
  ]], entity, entity, entity, entity, entity, entity, entity, entity, entity))
end

function M.audited(dir)
  return M.count(dir, "export_audit")
end

-- Changes a record at the remote as another client would (a PUT through
-- curl); returns the record the fixture stored.
function M.remote_put(server, resource, id, record)
  local res = server.request("PUT", string.format("/api/%s/%s", resource, tostring(id)), { body = record })
  assert(res.status == 200, "fixture PUT: " .. tostring(res.status) .. " " .. tostring(res.body))
  return res.json
end

-- The remote's records of a resource by id.
function M.remote(server, resource)
  local out = {}
  for _, r in ipairs(server.data()[resource] or {}) do out[r.id] = r end
  return out
end

return M
