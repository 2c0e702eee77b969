-- entsync.fingerprint: what decides the rows a sync's records map to, as
-- one number.
--
-- A sync's mapping fingerprint covers its entities' declared fields and
-- types, every mapped field (its path, type, default, whether required,
-- and its import and export callbacks), the id field, the link, and the
-- filter and after_map hooks. A callback counts by its code (string.dump
-- without debug information: moving a function to another line changes
-- nothing) and by the values it closes over (the lookup table of a
-- map.enum, the sync of a map.refs), so editing a callback, a helper's
-- argument or a path changes the fingerprint, and editing comments or
-- other syncs does not.
--
-- entsync_state.fingerprint keeps the one the sync's rows were written
-- under: a run warns (and check notes) when the job's differs, since an
-- incremental run maps only what changed at the remote.

local core = require "entsync.core"
local json = require "entsync.json"

local M = {}

-- The modules entsync and the job loaded: a callback closing over one (the
-- map helpers, entsync.json) counts it by name, not by its contents.
local function module_names()
  local names = {}
  for name, value in pairs(package.loaded) do
    if type(value) == "table" then names[value] = name end
  end
  names[_G] = "_G"
  return names
end

local function key_of(value, depth, seen, modules, out)
  local kind = type(value)
  if kind == "nil" or kind == "boolean" then
    out[#out + 1] = tostring(value)
  elseif kind == "number" then
    out[#out + 1] = math.type(value) == "integer" and string.format("i%d", value) or string.format("f%.17g", value)
  elseif kind == "string" then
    out[#out + 1] = string.format("s%d:%s", #value, value)
  elseif value == json.null then
    out[#out + 1] = "null"
  elseif kind == "function" then
    local info = debug.getinfo(value, "S")
    if info.what == "C" then
      out[#out + 1] = "C"
      return
    end
    if seen[value] or depth > 4 then
      out[#out + 1] = "fn-seen"
      return
    end
    seen[value] = true
    local ok, code = pcall(string.dump, value, true)
    out[#out + 1] = ok and string.format("fn%d:%s", #code, code) or "fn?"
    local i = 1
    while true do
      local name, upvalue = debug.getupvalue(value, i)
      if not name then break end
      if name ~= "_ENV" then
        out[#out + 1] = "up:" .. name
        key_of(upvalue, depth + 1, seen, modules, out)
      end
      i = i + 1
    end
  elseif kind == "table" then
    if modules[value] then
      out[#out + 1] = "module:" .. modules[value]
      return
    end
    if seen[value] or depth > 6 then
      out[#out + 1] = "t-seen"
      return
    end
    seen[value] = true
    local keys = {}
    for k in pairs(value) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
      return type(a) < type(b)
    end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      key_of(k, depth + 1, seen, modules, out)
      out[#out + 1] = "="
      key_of(value[k], depth + 1, seen, modules, out)
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = kind
  end
end

-- of(job, sync) -> integer: the sync's mapping fingerprint.
function M.of(job, sync)
  local parts = { sync.id_field, sync.link and sync.link.sync or "" }
  local subject = { entities = {}, filter = sync.filter, after_map = sync.after_map,
    link_key = sync.link and sync.link.key }
  for _, entity in ipairs(sync.mapping.entities) do
    local fields = {}
    for _, field in ipairs(entity.fields) do
      fields[#fields + 1] = { name = field.name, path = field.path, type = field.type, default = field.default,
        required = field.required, import = field.import, export = field.export }
    end
    subject.entities[#subject.entities + 1] = { name = entity.name, declared = job.entities[entity.name].fields,
      fields = fields }
  end
  local out = {}
  key_of(subject, 0, {}, module_names(), out)
  parts[#parts + 1] = table.concat(out, "\0")
  return core.hash.of(parts)
end

return M
