-- entsync.record_path: when an import run takes its records through the C
-- record path (core.record, src/record.h), and the program it runs.
--
-- The C path maps, hashes and writes the lines of an NDJSON input with no
-- Lua value made, calling Lua only for the user's import callbacks (which
-- get the record as a view: see src/record.h), and the records other
-- readers decode (a page of http_json) a list at a time. It takes exactly what the
-- Lua pipeline would create, update or find unchanged, and hands every
-- other line back to it (a stale record, a failure, an id stored under
-- another type, ...). It applies to incremental runs (not dry ones) over a
-- mapping with no filter, after_map, link or references, a provider
-- without versions, and no creates of an earlier run still unconfirmed;
-- it updates only where no conflict can arise: the sync does not export
-- on change, and no write of it awaits its answer. ENTSYNC_RECORD_PATH=lua
-- takes every record through the Lua pipeline (to compare the two).

local core = require "entsync.core"
local json = require "entsync.json"
local mapping = require "entsync.mapping"

local M = {}

-- Why run cannot use the C path, or nil when it can.
local function unsuitable(run)
  local sync, session = run.sync, run.session
  if os.getenv("ENTSYNC_RECORD_PATH") == "lua" then return "ENTSYNC_RECORD_PATH=lua" end
  if sync.import.mode ~= "incremental" or run.note_ids then return "not an incremental run" end
  if session.dry or session.options.diff then return "a dry run" end
  if sync.filter or sync.after_map or sync.link then return "a filter, after_map or link" end
  if sync.mapping.has_refs then return "references" end
  if run.versioned or run.creates then return "versions or unconfirmed creates" end
  local kind = sync.import.changed_kind
  if sync.changed_field and kind ~= "auto" and kind ~= "text" then return "changed_kind " .. kind end
  if #sync.mapping.entities > 16 then return "more than 16 entities" end
  return nil
end

-- The program for run (see core.record.program), or nil when the run's
-- records go through the Lua pipeline.
function M.program(run)
  if unsuitable(run) then return nil end
  local sync, session = run.sync, run.session
  local writers, entities, links, slots = {}, {}, {}, {}
  local cache = session:writers(sync)
  for i, entity in ipairs(sync.mapping.entities) do
    writers[i] = cache[entity.name].writer
    if i > 1 then links[i] = session:link_sql(sync, entity.name) end
    local fields = {}
    for j, field in ipairs(entity.fields) do
      slots[#slots + 1] = field
      fields[j] = { name = field.name, keys = field.keys, type = field.type, required = field.required,
        import = field.import, default = field.default }
    end
    entities[i] = { name = entity.name, fields = fields }
  end
  local sql = run.book:record_path_sql()
  run.program_fields = slots
  return core.record.program({
    store = session.store, writers = writers, links = links, sync_id = run.sync_id,
    idmap_sql = sql.insert_map, max_key_sql = sql.max_key, save_sql = sql.save_map, update_sql = sql.update_map,
    idmap_rows_sql = sql.insert_map_rows,
    -- a first import has nothing to look up
    lookup_sql = not run.fresh and sql.by_remote or nil,
    updates = not run.exports and not run.book:has_writes(run.sync_id), track_seen = run.track_seen,
    seed = sync.fingerprint, id_field = sync.id_field, changed_field = sync.changed_field,
    kind = sync.import.changed_kind, ctx = run.ctx, coerce = mapping.coerce, encode = json.encode,
    canonical = core.hash.canonical, entities = entities,
  })
end

local HELD_NIL = core.record.held_nil()

-- held(run) -> record, memo | nil: the record the C path last handed back
-- after callbacks ran, as they left it, and their outcomes by compiled
-- field ({ true, result } or { false, error }): Run:prepare gives them to
-- the pipeline (ctx.memo), which does not call those callbacks again.
function M.held(run)
  local program = run.program
  if not program then return nil end
  local record, results, raised = program:held()
  if record == nil then return nil end
  local memo = {}
  for slot, field in ipairs(run.program_fields) do
    local value = results[slot]
    if value ~= nil then
      memo[field] = { true, value ~= HELD_NIL and value or nil }
    elseif raised[slot] ~= nil then
      memo[field] = { false, raised[slot] }
    end
  end
  return record, memo
end

return M
