-- entsync.diff: what `run --dry-run --diff` shows, entity by entity.
--
-- Imports: each entity a run would create, update or delete, and per
-- field its stored value and the one the mapping gives (old -> new), as
-- the store holds them (JSON fields as JSON, booleans as 0 and 1):
--
--   contacts 7 (local contact 3): update
--     contact.email: "ann@old.example" -> "ann@new.example"
--
-- Exports: each queued change a drain would send, and per remote field
-- the remote's current value (when the remote's copy is read, as an update
-- reads it) and what would be sent:
--
--   contacts local contact 3 (remote 7): would update
--     email: "ann@remote.example" -> "ann@new.example"
--
-- Values are written as JSON; nothing here writes or sends anything.

local ids = require "entsync.ids"
local json = require "entsync.json"

local M = {}

local null = json.null

-- A value as the store keeps it, as JSON text.
local function stored_text(value, field_type)
  if value == nil or value == null then return "null" end
  if field_type == "json" then
    if type(value) == "string" then
      local decoded = json.try_decode(value)
      if decoded ~= nil then return json.encode(decoded) end
    end
    local ok, text = pcall(json.encode, value)
    return ok and text or tostring(value)
  end
  if type(value) == "boolean" then return value and "1" or "0" end
  local ok, text = pcall(json.encode, value)
  return ok and text or tostring(value)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

-- import(session, sync, remote_id, local_id, mapped) -> diff: what writing
-- mapped ({ entity = values }) over local_id's rows (nil: new) changes.
function M.import(session, sync, remote_id, local_id, mapped)
  local job = session.job
  local rows = local_id and session:rows_of(sync, local_id) or {}
  local lines = {}
  for _, entity in ipairs(sync.mapping.entities) do
    local declared = job.entities[entity.name].fields
    local values = mapped[entity.name] or {}
    local old = rows[entity.name]
    local columns, seen = {}, {}
    for _, column in ipairs(entity.columns) do columns[#columns + 1], seen[column] = column, true end
    for _, column in ipairs(sorted_keys(values)) do
      if not seen[column] then columns[#columns + 1] = column end
    end
    for _, column in ipairs(columns) do
      local new = stored_text(values[column], declared[column])
      if old then
        local before = stored_text(old[column], declared[column])
        if before ~= new then
          lines[#lines + 1] = string.format("  %s.%s: %s -> %s", entity.name, column, before, new)
        end
      elseif new ~= "null" then
        lines[#lines + 1] = string.format("  %s.%s: %s", entity.name, column, new)
      end
    end
  end
  return {
    head = string.format("%s %s%s: %s", sync.name, ids.text(remote_id),
      local_id and string.format(" (local %s %d)", sync.entities[1], local_id) or "", local_id and "update" or "create"),
    lines = lines,
  }
end

-- gone(sync, remote_id, local_id, mode) -> diff: a local entity deleted
-- (or flagged as gone) because its remote is.
function M.gone(sync, remote_id, local_id, mode)
  return {
    head = string.format("%s %s (local %s %d): %s", sync.name, remote_id ~= nil and ids.text(remote_id) or "?",
      sync.entities[1], local_id, mode == "flag" and "flag as gone" or "delete"),
    lines = {},
  }
end

-- The leaves of a remote record (nested objects by dotted path).
local function flatten(value, prefix, out)
  if json.is_object(value) or (type(value) == "table" and getmetatable(value) == nil and next(value) ~= nil
      and value[1] == nil) then
    for _, k in ipairs(sorted_keys(value)) do
      flatten(value[k], prefix and (prefix .. "." .. tostring(k)) or tostring(k), out)
    end
  else
    out[#out + 1] = { path = prefix or "", value = value }
  end
  return out
end

local function dig(record, path)
  local value = record
  for part in path:gmatch("[^.]+") do
    if type(value) ~= "table" then return nil end
    value = value[part]
  end
  return value
end

local function remote_text(value)
  if value == nil then return "null" end
  local ok, text = pcall(json.encode, value)
  return ok and text or tostring(value)
end

-- export(sync, plan) -> diff: what an export plan (Exporter:plan) would
-- send.
function M.export(sync, plan)
  local lines = {}
  local head = string.format("%s local %s %s%s: would %s", sync.name, sync.entities[1], tostring(plan.local_id),
    plan.remote_id ~= nil and (" (remote " .. ids.text(plan.remote_id) .. ")") or "", plan.op)
  if plan.op == "create" or not plan.current then
    for _, leaf in ipairs(flatten(plan.op == "create" and plan.record or (plan.patch or plan.record), nil, {})) do
      lines[#lines + 1] = string.format("  %s: %s", leaf.path, remote_text(leaf.value))
    end
    if plan.op ~= "create" then head = head .. " (the remote's copy is not read first: every mapped field is sent)" end
  else
    for _, leaf in ipairs(flatten(plan.patch or {}, nil, {})) do
      lines[#lines + 1] = string.format("  %s: %s -> %s", leaf.path, remote_text(dig(plan.current, leaf.path)),
        remote_text(leaf.value))
    end
  end
  return { head = head, lines = lines }
end

-- A queued delete a drain would send (or only forget).
function M.export_delete(sync, local_id, remote_id, deleting)
  return {
    head = string.format("%s local %s %s (remote %s): %s", sync.name, sync.entities[1], tostring(local_id),
      ids.text(remote_id), deleting and "would delete" or "would forget the remote (deletes = \"ignore\")"),
    lines = {},
  }
end

-- A queued change that would fail.
function M.export_failure(sync, local_id, message)
  return { head = string.format("%s local %s %s: would fail: %s", sync.name, sync.entities[1], tostring(local_id),
    message), lines = {} }
end

-- Writes diffs where the session says (stdout by default).
function M.show(session, diffs)
  local out = session.options.out or function(line) io.stdout:write(line, "\n") end
  for _, d in ipairs(diffs) do
    out(d.head)
    for _, line in ipairs(d.lines) do out(line) end
  end
  io.stdout:flush()
end

return M
