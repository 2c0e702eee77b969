-- entsync.pipeline: the one record pipeline, both ways.
--
-- Import:  remote record -> filter -> mapping (paths, callbacks, defaults)
--          -> after_map -> coercion to the declared types -> references
--          (callbacks resolve them through ctx:ref) -> content hash.
-- Export:  local rows -> each field's value as JSON (json fields decoded,
--          booleans as such) -> references turned back into remote ids
--          (with their JSON type) -> export callbacks and paths -> the
--          remote record, holding exactly the fields the mapping carries.
--
-- Import runs, exports, echo detection, conflict checks, dry runs and the
-- REPL all call these functions with one callback context (entsync.context),
-- so a record maps the same wherever it is met. A callback that raises
-- fails the entity with the field and the mapping's file:line; no check is
-- skipped because something raised.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local map = require "entsync.map"
local mapping = require "entsync.mapping"

local M = {}

local null = json.null
local hash_of = core.hash.of

-- What import() gives for a record the sync's filter skips.
M.FILTERED = false

-- import(sync, record, ctx) -> { entity = values } | FILTERED. Raises an
-- entity error (or a defer error, for a reference not imported yet).
function M.import(sync, record, ctx)
  if sync.filter then
    local ok, keep = pcall(sync.filter, record, ctx)
    if not ok then
      errors.raise(errors.is(keep, "defer") and "defer" or "entity", "filter: " .. errors.message(keep),
        { waits_for = errors.is(keep) and keep.waits_for or nil })
    end
    if keep == false then return M.FILTERED end
  end
  local mapped = mapping.apply(sync.mapping, record, ctx)
  if sync.after_map then
    local ok, adjusted = pcall(sync.after_map, mapped, record, ctx)
    if not ok then
      errors.raise(errors.is(adjusted, "defer") and "defer" or "entity", "after_map: " .. errors.message(adjusted),
        { waits_for = errors.is(adjusted) and adjusted.waits_for or nil })
    end
    if type(adjusted) == "table" then mapped = adjusted end
    mapping.coerce_entities(ctx.session.job, sync, mapped)
  end
  return mapped
end

-- The content hash of mapped entities: what the id map keeps.
function M.hash(mapped)
  return hash_of(mapped)
end

-- The hash an import of record would store, or FILTERED: what echo
-- detection and conflict checks compare with the id map.
function M.import_hash(sync, record, ctx)
  local mapped = M.import(sync, record, ctx)
  if mapped == M.FILTERED then return M.FILTERED end
  return hash_of(mapped)
end

-- export ------------------------------------------------------------------------------

-- A stored value as JSON has it: json fields decoded (arrays stay arrays,
-- objects objects), booleans as booleans, NULL as null.
local function json_value(field, value)
  if value == nil then return null end
  if field.type == "json" and type(value) == "string" then
    local decoded, err = json.try_decode(value)
    if decoded == nil and err then
      errors.raise("entity", string.format("field %s: the stored value is not JSON: %s (%s:%d)", field.name, err,
        field.where.file, field.where.line))
    end
    return decoded
  end
  if field.type == "boolean" then return value ~= 0 and value ~= false end
  return value
end
M.json_value = json_value

-- Local ids of a refs field back to the target sync's remote ids.
local function remote_refs(field, value, ctx)
  if value == null then return value end
  local target = field.import.sync
  if type(value) == "table" then
    local ids = json.array()
    for i, id in ipairs(value) do
      local remote_id = ctx:remote_id_of(target, id)
      ids[i] = remote_id == nil and null or remote_id
    end
    return ids
  end
  local remote_id = ctx:remote_id_of(target, value)
  return remote_id == nil and null or remote_id
end

local function set_path(out, keys, value)
  local node = out
  for i = 1, #keys - 1 do
    local key = keys[i]
    if type(node[key]) ~= "table" then
      node[key] = type(keys[i + 1]) == "number" and json.array() or json.object()
    end
    node = node[key]
  end
  node[keys[#keys]] = value
end

local function export_failed(field, result)
  errors.raise(errors.is(result, "defer") and "defer" or "entity",
    string.format("field %s: export: %s (%s:%d)", field.name, errors.message(result), field.where.file,
      field.where.line), mapping.located(field, { waits_for = errors.is(result) and result.waits_for or nil }))
end

-- export(sync, rows, ctx) -> record, leaves: the remote record of local
-- rows ({ entity = row }, the split's entities that exist), and the paths
-- it sets ({ { "company", "name" }, ... }: where a field's value goes,
-- whole; a key an export callback sets counts as one). Raises an entity
-- error naming the field and the mapping line, or a defer error for a
-- reference whose target has no remote id yet.
function M.export(sync, rows, ctx)
  local out, leaves, seen = json.object(), {}, {}
  local function leaf(keys)
    local key = table.concat(keys, "\0")
    if not seen[key] then seen[key] = true; leaves[#leaves + 1] = keys end
  end
  for _, entity in ipairs(sync.mapping.entities) do
    local row = rows[entity.name]
    if row then
      for _, field in ipairs(entity.fields) do
        if field.export == false then goto next_field end
        local value = json_value(field, row[field.name])
        if map.is_refs(field.import) and not field.export then
          local ok, converted = pcall(remote_refs, field, value, ctx)
          if not ok then export_failed(field, converted) end
          value = converted
        end
        if field.export then
          local before = {}
          for k in pairs(out) do before[k] = true end
          local ok, result = pcall(field.export, value, out, ctx)
          if not ok then export_failed(field, result) end
          for k in pairs(out) do if not before[k] then leaf({ k }) end end
          if result ~= nil and field.keys then
            set_path(out, field.keys, result)
            leaf(field.keys)
          end
        elseif field.keys then
          set_path(out, field.keys, value)
          leaf(field.keys)
        end
        ::next_field::
      end
    end
  end
  return out, leaves
end

-- merging and comparing remote records ------------------------------------------------------

local function is_object(value)
  return type(value) == "table" and not json.is_array(value) and (json.is_object(value) or next(value) == nil
    or value[1] == nil)
end

local function copy(value)
  if type(value) ~= "table" then return value end
  local out = setmetatable({}, getmetatable(value))
  for k, v in pairs(value) do out[k] = copy(v) end
  return out
end

local get_at = mapping.get_path

local function top_leaves(record)
  local leaves = {}
  for k in pairs(record) do leaves[#leaves + 1] = { k } end
  return leaves
end

-- merge(current, record, leaves) -> the remote's current copy with each of
-- record's leaves (the paths the mapping sets: export's second result)
-- written over it, whole: what a replacing update (PUT) sends, so fields
-- the mapping does not carry keep the remote's values, and a value the
-- mapping carries (a json field's object, say) is sent as the store holds
-- it, not merged into the remote's old one.
function M.merge(current, record, leaves)
  if not is_object(current) or not is_object(record) then return copy(record) end
  local out = copy(current)
  for _, keys in ipairs(leaves or top_leaves(record)) do
    local value = get_at(record, keys)
    set_path(out, keys, value == nil and null or copy(value))
  end
  return out
end

local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  return core.hash.of(a) == core.hash.of(b) and json.is_array(a) == json.is_array(b)
end

-- changes(current, record, leaves) -> the leaves of record whose values
-- differ from current's, as a record holding only those, or nil when none
-- does: what a patching update (PATCH) sends.
function M.changes(current, record, leaves)
  if not is_object(current) then return copy(record) end
  local out, any = json.object(), false
  for _, keys in ipairs(leaves or top_leaves(record)) do
    local value, before = get_at(record, keys), get_at(current, keys)
    if not same(before == nil and null or before, value == nil and null or value) then
      any = true
      set_path(out, keys, value == nil and null or copy(value))
    end
  end
  return any and out or nil
end

-- storing ------------------------------------------------------------------------------------

-- The json fields of an entity's declared fields ({ field = type }), a
-- list made once per declaration.
local json_fields_of = setmetatable({}, { __mode = "k" })
local function json_fields(declared)
  local names = json_fields_of[declared]
  if not names then
    names = {}
    for name, kind in pairs(declared) do if kind == "json" then names[#names + 1] = name end end
    json_fields_of[declared] = names
  end
  return names
end

-- The row to store for one entity's mapped values: the values of its json
-- fields (declared: { field = type }) encoded, in a copy when there are
-- any: a batch written again record by record writes the same mapped
-- values a second time, which must not find them encoded already.
function M.storable(values, declared)
  local names = json_fields(declared)
  if #names == 0 then return values end
  local row = {}
  for k, v in pairs(values) do row[k] = v end
  for _, name in ipairs(names) do
    local value = row[name]
    if value ~= nil then row[name] = json.encode(value) end
  end
  return row
end

return M
