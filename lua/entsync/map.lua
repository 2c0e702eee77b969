-- entsync.map: helpers for mapping tables.
--
-- Each helper is a callback (value, record, ctx) -> value, or a function
-- that builds one: `status = { "active", import = map.bool_to_int }`,
-- `kind = { "type", import = map.enum({ a = 1, b = 2 }, 0) }`. A value of
-- nil (or JSON null) passes through every helper unchanged, so a missing
-- remote field stays missing rather than failing.

local errors = require "entsync.errors"
local json = require "entsync.json"

local M = {}

local null = json.null

local function absent(value)
  return value == nil or value == null
end

local function fail(fmt, ...)
  errors.raise("entity", string.format(fmt, ...))
end

-- booleans and numbers --------------------------------------------------------

local truthy = { ["true"] = true, ["1"] = true, yes = true, y = true, on = true,
  ["false"] = false, ["0"] = false, no = false, n = false, off = false, [""] = false }

function M.to_bool(value)
  if absent(value) then return nil end
  if type(value) == "boolean" then return value end
  if type(value) == "number" then return value ~= 0 end
  if type(value) == "string" then
    local b = truthy[value:lower():match("^%s*(.-)%s*$")]
    if b ~= nil then return b end
  end
  fail("expected a boolean, got %s", tostring(value))
end

function M.bool_to_int(value)
  local b = M.to_bool(value)
  if b == nil then return nil end
  return b and 1 or 0
end

function M.int_to_bool(value)
  if absent(value) then return nil end
  return M.to_bool(value)
end

function M.number(value)
  if absent(value) then return nil end
  if type(value) == "number" then return value end
  local n = type(value) == "string" and tonumber((value:gsub("^%s+", ""):gsub("%s+$", "")))
  if not n then fail("expected a number, got %q", tostring(value)) end
  return n
end

function M.int(value)
  if absent(value) then return nil end
  local n = M.number(value)
  local i = math.tointeger(n)
  if not i then fail("expected an integer, got %s", tostring(value)) end
  return i
end

-- text ---------------------------------------------------------------------------

function M.trim(value)
  if type(value) ~= "string" then return value end
  return (value:gsub("^%s+", ""):gsub("%s+$", ""))
end

function M.lower(value)
  if type(value) ~= "string" then return value end
  return value:lower()
end

function M.upper(value)
  if type(value) ~= "string" then return value end
  return value:upper()
end

-- enum(lookup [, default]): a value looked up in a table; an unknown value
-- takes the default when one is given, and fails the entity otherwise.
function M.enum(lookup, default)
  assert(type(lookup) == "table", "map.enum expects a lookup table")
  return function(value)
    if absent(value) then return default end
    local mapped = lookup[value]
    if mapped == nil then
      if default ~= nil then return default end
      fail("%s is not one of the known values", tostring(value))
    end
    return mapped
  end
end

-- join(sep): a list becomes one string; split(sep): the reverse.
function M.join(sep)
  sep = sep or ","
  return function(value)
    if type(value) ~= "table" then return value end
    local parts = {}
    local text = require("entsync.mapping").coerce.text
    for i, v in ipairs(value) do parts[i] = text(v) or tostring(v) end
    return table.concat(parts, sep)
  end
end

function M.split(sep)
  sep = sep or ","
  return function(value)
    if type(value) ~= "string" then return value end
    local parts = {}
    if value == "" then return parts end
    local start = 1
    while true do
      local from, to = value:find(sep, start, true)
      if not from then break end
      parts[#parts + 1] = M.trim(value:sub(start, from - 1))
      start = to + 1
    end
    parts[#parts + 1] = M.trim(value:sub(start))
    return parts
  end
end

-- dates and times ----------------------------------------------------------------

-- Days since 1970-01-01 of a civil date (proleptic Gregorian), so ISO
-- timestamps convert without the local time zone os.time would apply.
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- iso_to_epoch("2026-01-02T03:04:05Z") -> 1767323045 (seconds, UTC)
function M.iso_to_epoch(value)
  if absent(value) then return nil end
  if type(value) == "number" then return value end
  local y, mo, d, rest = tostring(value):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then fail("expected an ISO 8601 date, got %q", tostring(value)) end
  local h, mi, s, frac, zone = rest:match("^[T ](%d%d):(%d%d):?(%d*)(%.?%d*)(.*)$")
  local seconds = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
  if h then
    seconds = seconds + tonumber(h) * 3600 + tonumber(mi) * 60 + (tonumber(s) or 0)
    if frac ~= "" and frac ~= "." then seconds = seconds + tonumber("0" .. frac) end
    local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
    if sign then
      local offset = tonumber(zh) * 3600 + tonumber(zm) * 60
      seconds = sign == "+" and seconds - offset or seconds + offset
    elseif zone ~= "" and zone ~= "Z" then
      fail("unknown time zone %q in %q", zone, tostring(value))
    end
  elseif rest ~= "" then
    fail("expected an ISO 8601 date, got %q", tostring(value))
  end
  return math.tointeger(seconds) or seconds
end

-- epoch_to_iso(1767323045) -> "2026-01-02T03:04:05Z"
function M.epoch_to_iso(value)
  if absent(value) then return nil end
  if type(value) == "string" then
    if value:match("^%d%d%d%d%-") then return value end
    value = M.number(value)
  end
  local iso = require("entsync.mapping").iso_from_epoch(value)
  if not iso then fail("epoch %s is outside the years 0001 to 9999", tostring(value)) end
  return iso
end

-- date_only("2026-01-02T03:04:05Z") -> "2026-01-02"
function M.date_only(value)
  if absent(value) then return nil end
  return M.epoch_to_iso(value):sub(1, 10)
end

-- json -------------------------------------------------------------------------------

-- json_encode(value) -> text (keys sorted; see entsync.json), failing
-- the entity for what JSON cannot hold.
function M.json_encode(value)
  if absent(value) then return nil end
  local ok, text = pcall(json.encode, value)
  if not ok then fail("cannot write as JSON: %s", tostring(text)) end
  return text
end

function M.json_decode(value)
  if type(value) ~= "string" then return value end
  local decoded, err = json.try_decode(value)
  if decoded == nil then fail("malformed JSON: %s", err) end
  return decoded
end

-- references --------------------------------------------------------------------------

-- refs "sync": remote ids (one or a list) become local ids through that
-- sync's id map. What happens to one not yet imported is the referring
-- sync's on_missing setting. The result is a callable table so `check` can
-- verify the named sync exists.
local Refs = {}
Refs.__call = function(self, value, _, ctx)
  if absent(value) then return nil end
  if not ctx or not ctx.ref then fail("map.refs \"%s\" needs the engine's context", self.sync) end
  if type(value) == "table" then
    local ids = {}
    for _, remote_id in ipairs(value) do
      local id = ctx:ref(self.sync, remote_id)
      if id ~= nil then ids[#ids + 1] = id end
    end
    return ids
  end
  return ctx:ref(self.sync, value)
end

function M.refs(sync)
  assert(type(sync) == "string", "map.refs expects a sync name")
  return setmetatable({ sync = sync, is_refs = true }, Refs)
end

-- The sync a refs helper (or a chain holding one) reads, or nil.
function M.is_refs(value)
  local meta = getmetatable(value)
  if meta == Refs then return true end
  return meta ~= nil and meta.__call ~= nil and rawget(value, "steps") ~= nil and rawget(value, "sync") ~= nil
end

-- chain(f, g, ...): apply several helpers in order. A chain holding a
-- refs step is itself a reference (check validates it; the engine knows).
local Chain = {}
Chain.__call = function(self, value, record, ctx)
  for _, step in ipairs(self.steps) do value = step(value, record, ctx) end
  return value
end

function M.chain(...)
  local chain = setmetatable({ steps = { ... } }, Chain)
  for _, step in ipairs(chain.steps) do
    if M.is_refs(step) then chain.sync = step.sync end
  end
  return chain
end

return M
