-- entsync.errors: the one error shape entsync raises and reports.
--
-- An error is a table { kind, message, ... } with a __tostring, raised with
-- error(e, 0) so no position is prepended twice: the message already names
-- the job file and line, the sync and the entity where they are known.
-- Kinds map to exit statuses: config and usage 2, lock 3, internal 4;
-- what the machine refuses has a kind and a status of its own: busy 6
-- (another process holds the store's write lock), disk_full 7, permissions
-- 8, io 9; entity failures are stored, never raised out of a run. (5 is a
-- run stopped by SIGINT or SIGTERM, cli.lua's.)
--
-- The store (src/store.c) raises its environment failures with the same
-- metatable (entsync.core's error_meta), so they are entsync errors too.

local M = {}

local Error = require("entsync.core").error_meta
Error.__index = Error
Error.__tostring = function(e) return e.message end

-- A remote that keeps failing stops a run with status 1: entities were
-- not imported, and nothing is wrong with the job or with entsync.
M.exit_codes = { ok = 0, failed = 1, http = 1, provider = 1, queue = 1, conflict = 1, usage = 2, config = 2, lock = 3,
  internal = 4, busy = 6, disk_full = 7, permissions = 8, io = 9 }

-- The kinds of what the machine refuses (the store's file, the disk):
-- nothing is wrong with the job or with entsync, and a record is not to
-- blame either, so they end the run rather than fail an entity.
M.environment = { busy = true, disk_full = true, permissions = true, io = true }

function M.new(kind, message, fields)
  local e = setmetatable({ kind = kind, message = message }, Error)
  for k, v in pairs(fields or {}) do e[k] = v end
  return e
end

function M.raise(kind, message, fields)
  error(M.new(kind, message, fields), 0)
end

-- Formats "file:line: message" when the location is known.
function M.at(where, message)
  if where and where.file then
    return string.format("%s:%d: %s", where.file, where.line or 0, message)
  end
  return message
end

function M.config(where, fmt, ...)
  M.raise("config", M.at(where, string.format(fmt, ...)))
end

-- Drops a leading "…/lua/entsync/x.lua:12: " that luaL_error put before a
-- message raised from C on behalf of entsync's own code: users need the
-- reason, not entsync's source line.
function M.strip_position(message)
  return (tostring(message):gsub("^[^\n]-/lua/entsync/[%w_]+%.lua:%d+: ", ""))
end

-- The text to show for anything raised: an entsync error's message, else
-- its text, with entsync's own source position dropped when strip is true.
function M.message(value, strip)
  if M.is(value) then return value.message end
  local text = M.text(value)
  return strip and M.strip_position(text) or text
end

-- Text for a value code raised: a string or number as it is, a value
-- with a __tostring through it, a table as the JSON it encodes to, and
-- anything else by its type ("table: 0x55d0..." names nothing).
function M.text(value)
  local t = type(value)
  if t == "string" or t == "number" or (getmetatable(value) or {}).__tostring then return tostring(value) end
  if t == "table" then
    local ok, encoded = pcall(require("entsync.json").encode, value)
    if ok then return "raised " .. encoded end
  end
  return "raised a " .. t
end

function M.is(value, kind)
  return getmetatable(value) == Error and (kind == nil or value.kind == kind)
end

-- Turns anything raised into an entsync error; Lua errors keep their text
-- ("file:line: message") and become internal unless a kind is given.
function M.wrap(value, kind)
  if M.is(value) then return value end
  return M.new(kind or "internal", M.text(value))
end

return M
