-- entsync.provider: the provider contract (version 2), declared once and
-- checked when a job loads.
--
-- A provider is a Lua module returning { new = function(config, ctx) ... end }
-- (optionally also `settings`, a schema of its settings checked before new
-- is called, and `validate(config)` for what a schema cannot say). new
-- returns the provider object; ctx holds base_dir (the job's folder) and
-- name. The object has the verbs its remote supports (providers/README.md
-- documents each in full):
--
--   list(resource, query) -> reader | nil, message
--       query.since = { mark, id }   incremental runs: what changed after it
--       query.checkpoint = value     what the reader handed over before
--       query.after = key            a limited full pass resumed after a key
--       query.limit = n              records this run takes at most
--   get(resource, id, ctx) -> record | nil [, why]   nil: the remote has none
--   create(resource, record, ctx) -> id, answer      ctx.idempotency_key
--   update(resource, id, record, ctx) -> answer      record: the mapped fields
--       merged over ctx.current (the remote's copy, when fetched); ctx.patch:
--       only what changed; ctx.version: the version token last seen
--   delete(resource, id, ctx) -> true                ctx.version
--   write_batch(resource, items, ctx) -> results     many writes at once:
--       items[i] = { op = "create"|"update"|"delete", id, record, patch,
--       version, key }; results[i] = { ok = true, id, answer } or
--       { ok = false, error = message, conflict = true|nil }
--   get_batch(resource, ids, ctx) -> list            many reads at once: list[i]
--       is the record of ids[i], nil when the remote has none (a drain
--       through write_batch reads the copies its updates check with it)
--   version(record) -> token | nil                   a record's version (ETag, _rev)
--   limits = an entsync.http limits                 the provider caps its own
--       requests with it (each request made with it): an export then runs
--       more tasks than its concurrency, the cap keeping the requests to it
--
-- A reader:
--   next() -> record | tombstone | nil (the end) | false, message [, text]
--       (one bad record; the next call goes on after it)
--   checkpoint() -> value | nil   an opaque JSON value covering everything
--       returned so far: stored with the batch that covers it, handed back
--       as query.checkpoint next run, never compared
--   key() -> the key of the last record returned, for query.after
--   ready() -> true when next() would not wait on the network
--   total() -> how many records there are, when the remote says
--   committed()  everything returned so far is stored (files may move)
--   awaits_commit() -> whether committed() has something to do now (with
--       committed and no awaits_commit, it always has)
--   close()
--   ordered = true  records come in changed-mark order (the cursor may
--       move batch by batch)
--   complete_pass = false  a full pass this reader resumes cannot vouch
--       for having seen every record (deletes are not applied)
--
-- One failure convention: a verb raises for the remote failing (an entsync
-- error of kind "http", or "conflict" for a version conflict: raise it with
-- provider.conflict(message)); it returns nil, why for "not there". A
-- reader returns false, message for one record it cannot read.

local errors = require "entsync.errors"

local M = {}

-- tombstones ---------------------------------------------------------------------

local Tombstone = { __name = "entsync.tombstone" }
Tombstone.__index = Tombstone

-- tombstone(id [, fields]) -> a record saying the remote deleted id; fields
-- may carry its changed mark and version under the names the sync reads.
function M.tombstone(id, fields)
  local t = {}
  for k, v in pairs(fields or {}) do t[k] = v end
  t.id = t.id == nil and id or t.id
  t.__id = id
  return setmetatable(t, Tombstone)
end

function M.is_tombstone(record)
  return getmetatable(record) == Tombstone
end

-- The id a tombstone names.
function M.tombstone_id(record)
  return rawget(record, "__id")
end

-- conflict(message): raises a version conflict (the remote refused a write
-- made against a version it no longer has).
function M.conflict(message, fields)
  errors.raise("conflict", message, fields)
end

-- settings -----------------------------------------------------------------------

-- Checks config against a schema: { name = spec }, spec one of
--   "string" | "number" | "integer" | "positive" (an integer >= 1) |
--   "boolean" | "function" | "table" | "any" | "string_or_number"
--   { type = spec, required = true, one_of = { ... } }
--   { fields = { ... } }            a nested table with its own schema
--   { list = spec }                 a list whose items match spec
--   { map = spec }                  a table of string keys to spec
--   { any_of = { spec, ... }, describe = "what it is" }  the first that fits
--   "false"                         the value false (as in import = false)
-- A spec table may say secret = true: its value (all of it) is kept out of
-- every log, error and store row (entsync.redact), as are settings named
-- like secrets (password, token, api_key, ...) whatever their schema.
-- Unknown settings are errors, naming the closest known one. Returns true,
-- or nil and a message naming the setting's full path.
local function describe(value)
  if type(value) == "string" then return string.format("%q", value) end
  return type(value) == "table" and "a table" or tostring(value)
end

local checks = {
  string = function(v) return type(v) == "string" end,
  number = function(v) return type(v) == "number" and v == v end,
  integer = function(v) return math.type(v) == "integer" end,
  positive = function(v) return math.type(v) == "integer" and v >= 1 end,
  boolean = function(v) return type(v) == "boolean" end,
  ["function"] = function(v) return type(v) == "function" or (getmetatable(v) or {}).__call ~= nil end,
  table = function(v) return type(v) == "table" end,
  any = function() return true end,
  string_or_number = function(v) return type(v) == "string" or type(v) == "number" end,
  ["false"] = function(v) return v == false end,
}
local names = {
  string = "a string", number = "a number", integer = "an integer", positive = "a positive integer",
  boolean = "true or false", ["function"] = "a function", table = "a table", any = "a value",
  string_or_number = "a string or a number", ["false"] = "false",
}

local function closest(name, known)
  local best, best_score
  for candidate in pairs(known) do
    -- letters in common, in order: enough to catch a typo
    local score, i = 0, 1
    for c in tostring(name):gmatch(".") do
      local found = candidate:find(c, i, true)
      if found then score, i = score + 1, found + 1 end
    end
    score = score - math.abs(#candidate - #tostring(name))
    if not best_score or score > best_score then best, best_score = candidate, score end
  end
  if best and best_score >= math.max(2, #tostring(name) // 2) then return best end
  return nil
end

local check_table

local function check_value(spec, value, path)
  if type(spec) == "string" then
    if not checks[spec](value) then
      return nil, string.format("setting %s must be %s, got %s", path, names[spec], describe(value))
    end
    return true
  end
  if spec.any_of then
    local first_err
    for _, option in ipairs(spec.any_of) do
      local ok, err = check_value(option, value, path)
      if ok then return true end
      -- a table of the right shape with a wrong setting inside says which
      if type(value) == "table" and type(option) == "table" and option.fields then first_err = err end
    end
    return nil, first_err or string.format("setting %s must be %s, got %s", path, spec.describe, describe(value))
  end
  if spec.fields then
    if type(value) ~= "table" then
      return nil, string.format("setting %s must be a table, got %s", path, describe(value))
    end
    return check_table(spec.fields, value, path .. ".")
  end
  if spec.list then
    if type(value) ~= "table" then
      return nil, string.format("setting %s must be a list, got %s", path, describe(value))
    end
    for k, item in pairs(value) do
      if math.type(k) ~= "integer" then
        return nil, string.format("setting %s must be a list, got a key %s", path, describe(k))
      end
      local ok, err = check_value(spec.list, item, string.format("%s[%d]", path, k))
      if not ok then return nil, err end
    end
    return true
  end
  if spec.map then
    if type(value) ~= "table" then
      return nil, string.format("setting %s must be a table, got %s", path, describe(value))
    end
    for k, item in pairs(value) do
      if type(k) ~= "string" then
        return nil, string.format("setting %s must have names as keys, got %s", path, describe(k))
      end
      local ok, err = check_value(spec.map, item, path .. "." .. k)
      if not ok then return nil, err end
    end
    return true
  end
  if spec.one_of then
    for _, allowed in ipairs(spec.one_of) do
      if value == allowed then return true end
    end
    local shown = {}
    for i, allowed in ipairs(spec.one_of) do shown[i] = describe(allowed) end
    return nil, string.format("setting %s must be one of %s, got %s", path, table.concat(shown, ", "), describe(value))
  end
  return check_value(spec.type or "any", value, path)
end

check_table = function(schema, config, prefix)
  for key, value in pairs(config) do
    local spec = schema[key]
    if spec == nil then
      local hint = type(key) == "string" and closest(key, schema)
      return nil, string.format("unknown setting %s%s%s", prefix, tostring(key),
        hint and string.format(" (did you mean %s%s?)", prefix, hint) or "")
    end
    local ok, err = check_value(spec, value, prefix .. tostring(key))
    if not ok then return nil, err end
  end
  for key, spec in pairs(schema) do
    if type(spec) == "table" and spec.required and config[key] == nil then
      return nil, string.format("setting %s%s is required", prefix, key)
    end
  end
  return true
end

-- check_settings(schema, config) -> true | nil, message
function M.check_settings(schema, config)
  if type(config) ~= "table" then return nil, "settings must be a table, got " .. describe(config) end
  return check_table(schema, config, "")
end

-- the contract, checked at load ------------------------------------------------------

-- The verbs a sync's settings need from its provider, each with why.
function M.needs(sync)
  local needs = {}
  if sync.import.enabled then needs[#needs + 1] = { "list", "its import reads the remote's records" } end
  if sync.webhook then needs[#needs + 1] = { "get", "its webhook fetches each remote id a notification names" } end
  if sync.export then
    needs[#needs + 1] = { "create", "its export creates the remote of a new local entity" }
    needs[#needs + 1] = { "update", "its export updates the remote of a changed local entity" }
    if sync.export.deletes == "delete" then
      needs[#needs + 1] = { "delete", "its export deletes the remote of a deleted local entity (deletes = \"delete\")" }
    end
  end
  return needs
end

local function callable(value)
  return type(value) == "function" or (getmetatable(value) or {}).__call ~= nil
end

-- The file that defines a provider module, for messages.
function M.file_of(handle)
  local info = handle.module and type(handle.module.new) == "function" and debug.getinfo(handle.module.new, "S")
  return info and info.short_src or ("providers/" .. tostring(handle.type) .. ".lua")
end

-- The optional verbs, each with the verb it needs beside it (and why):
-- present (anything but nil or false), it must be callable, and that verb
-- there too.
M.optional = {
  write_batch = {},
  get_batch = { needs = "get", why = "reads the remote's copy again after a version conflict" },
}

local function check_optional(sync, instance)
  for verb, spec in pairs(M.optional) do
    local value = instance[verb]
    if value ~= nil and value ~= false then
      if not callable(value) then
        errors.config(sync.where, "sync \"%s\": provider \"%s\" (%s): its %s is %s, not a function", sync.name,
          sync.provider.name, M.file_of(sync.provider), verb, type(value))
      end
      if spec.needs and not callable(instance[spec.needs]) then
        errors.config(sync.where, "sync \"%s\": provider \"%s\" (%s) has %s but no %s, which %s", sync.name,
          sync.provider.name, M.file_of(sync.provider), verb, spec.needs, spec.why)
      end
    end
  end
end

-- check(sync, instance): raises a config error naming the job's line, the
-- sync, the provider and its file, and the verb, when the provider lacks a
-- verb the sync's settings need, or has an optional verb that is no
-- function or lacks the verb it goes with.
function M.check(sync, instance)
  check_optional(sync, instance)
  for _, need in ipairs(M.needs(sync)) do
    local verb, why = need[1], need[2]
    -- write_batch speeds a drain up; the single verbs stay needed (an
    -- export by hand, a write sent again after a conflict)
    local has = callable(instance[verb])
    if not has then
      errors.config(sync.where, "sync \"%s\": provider \"%s\" (%s) has no %s, which %s", sync.name,
        sync.provider.name, M.file_of(sync.provider), verb, why)
    end
  end
end

-- Calls a verb of a provider: its own errors (kinds http, conflict, config,
-- usage) pass as they are; anything else raised in provider code becomes a
-- "provider" error naming the provider and the verb, keeping the message's
-- file:line.
local function as_provider_error(handle, what)
  return function(err)
    if errors.is(err) then return err end
    return errors.new("provider", string.format("provider \"%s\" %s: %s", handle.name, what, tostring(err)),
      { traceback = debug.traceback(tostring(err), 2) })
  end
end
M.as_provider_error = as_provider_error

function M.call(handle, instance, verb, ...)
  local results = table.pack(xpcall(instance[verb], as_provider_error(handle, verb), instance, ...))
  if results[1] then return table.unpack(results, 2, results.n) end
  error(results[2], 0)
end

return M
