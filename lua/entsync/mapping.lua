-- entsync.mapping: mapping tables, compiled once per sync and applied to
-- every record.
--
-- A mapping is keyed by local field. A value is a remote path ("email",
-- "company.name", "addresses[1].city") or a table { path, import = fn,
-- export = fn | false, default = v, required = true, type = "integer" }. A sync
-- over several entities (a split) has one sub-table per entity. Compiling
-- checks every field against the entity's declaration and remembers the
-- file and line of each, so errors point at the mapping source.

local errors = require "entsync.errors"

local M = {}

local null = require("entsync.json").null
local field_options = { path = true, import = true, export = true, default = true, required = true, type = true }

-- Compiles "a.b[2].c" into { "a", "b", 2, "c" }.
function M.compile_path(path)
  local keys = {}
  for part in path:gmatch("[^%.]+") do
    local name, rest = part:match("^([^%[]*)(.*)$")
    if name ~= "" then keys[#keys + 1] = name end
    for index in rest:gmatch("%[(%d+)%]") do keys[#keys + 1] = tonumber(index) end
    if rest:gsub("%[%d+%]", "") ~= "" then return nil end
  end
  if #keys == 0 then return nil end
  return keys
end

function M.get_path(record, keys)
  local value = record
  for i = 1, #keys do
    if type(value) ~= "table" then return nil end
    value = value[keys[i]]
  end
  return value
end

-- The line of "key =" in a mapping source, searched from a given line, so
-- errors about a field point at the line that maps it.
local function key_line(source_lines, key, from)
  if not source_lines then return nil end
  local pattern = "[%s{,]" .. key:gsub("%p", "%%%0") .. "%s*="
  for i = from or 1, #source_lines do
    if (" " .. source_lines[i]):find(pattern) then return i end
  end
  return nil
end

local function read_lines(file)
  local handle = file and io.open(file, "r")
  if not handle then return nil end
  local lines = {}
  for line in handle:lines() do lines[#lines + 1] = line end
  handle:close()
  return lines
end

-- Resolves the mapping named by a sync: a module name found through
-- package.path (beside the job first), or a table given inline.
local function load_mapping(job, sync, value)
  if type(value) == "table" then
    return value, { file = job.display_path, lines = read_lines(job.path), base = sync.where.line }
  end
  if type(value) ~= "string" then
    errors.config(sync.where, "sync \"%s\": mapping must be a module name or a table, got %s", sync.name, type(value))
  end
  local file, err = package.searchpath(value, package.path)
  if not file then
    errors.config(sync.where, "sync \"%s\": mapping \"%s\" not found:%s", sync.name, value, err:gsub("\n\t", " "))
  end
  local chunk, load_err = loadfile(file, "t")
  if not chunk then errors.raise("config", load_err) end
  local ok, result = pcall(chunk)
  if not ok then
    errors.raise("config", errors.is(result) and result.message
      or require("entsync.job").shorten_require_error(tostring(result)))
  end
  if type(result) ~= "table" then
    errors.config({ file = file, line = 1 }, "mapping must return a table, got %s", type(result))
  end
  return result, { file = file, lines = read_lines(file), base = 1 }
end

local function compile_field(job, sync, entity, field, spec, source, entity_line)
  local line = key_line(source.lines, field, entity_line) or entity_line or source.base
  local where = { file = source.file, line = line }
  local function fail(fmt, ...)
    errors.config(where, "sync \"%s\": " .. fmt, sync.name, ...)
  end
  local declared = job.entities[entity].fields
  if type(field) ~= "string" then fail("mapping keys must be local field names, got %s", type(field)) end
  if not declared[field] then
    fail("field \"%s\" is not declared in entity \"%s\"", field, entity)
  end
  if type(spec) == "string" then spec = { spec } end
  if type(spec) == "function" then spec = { import = spec } end
  if type(spec) ~= "table" then
    fail("field \"%s\": expected a remote path, a function or a table, got %s", field, type(spec))
  end
  for key in pairs(spec) do
    if key ~= 1 and not field_options[key] then fail("field \"%s\": unknown option \"%s\"", field, tostring(key)) end
  end
  local path = spec.path or spec[1]
  local keys
  if path ~= nil then
    if type(path) ~= "string" then fail("field \"%s\": path must be a string, got %s", field, type(path)) end
    keys = M.compile_path(path)
    if not keys then fail("field \"%s\": \"%s\" is not a remote path (name.name[1].name)", field, path) end
  end
  for _, callback in ipairs({ "import", "export" }) do
    local fn = spec[callback]
    local callable = type(fn) == "function" or (getmetatable(fn) or {}).__call ~= nil
    -- export = false: a field the import fills and an export never sends
    -- (one a remote computes, such as its updated_at)
    if fn ~= nil and not callable and not (callback == "export" and fn == false) then
      fail("field \"%s\": %s must be a function%s, got %s", field, callback,
        callback == "export" and " or false" or "", type(fn))
    end
  end
  local map = require "entsync.map"
  if map.is_refs(spec.import) and not job.syncs[spec.import.sync] then
    fail("field \"%s\": refs names sync \"%s\", which is not declared", field, spec.import.sync)
  end
  if spec.required and not keys and not spec.import then
    fail("field \"%s\" is required but has no path", field)
  end
  local field_type = spec.type or declared[field]
  if spec.type and not require("entsync.job").field_types[spec.type] then
    fail("field \"%s\": unknown type \"%s\"", field, tostring(spec.type))
  end
  return {
    name = field, path = path, keys = keys, import = spec.import, export = spec.export,
    default = spec.default, required = spec.required, type = field_type, where = where,
  }
end

local generate -- defined with the other code generation below

-- Compiles the mapping of a sync into { entities = { { name, fields } } }.
function M.compile(job, sync, value)
  local tbl, source = load_mapping(job, sync, value)
  local split = #sync.entities > 1
  local single = sync.entities[1]
  if not split and type(tbl[single]) == "table" and next(tbl, next(tbl)) == nil
     and not job.entities[single].fields[single] then
    split = true
  end
  local compiled = { entities = {}, source = source.file,
    source_text = source.lines and table.concat(source.lines, "\n") or "" }
  local map = require "entsync.map"
  for key in pairs(tbl) do
    if split then
      local known = false
      for _, entity in ipairs(sync.entities) do known = known or entity == key end
      if not known then
        local line = key_line(source.lines, tostring(key), source.base) or source.base
        errors.config({ file = source.file, line = line }, "sync \"%s\": mapping names entity \"%s\", which the sync does not write",
          sync.name, tostring(key))
      end
    end
  end
  for _, entity in ipairs(sync.entities) do
    local fields_spec = tbl
    if split then fields_spec = tbl[entity] end
    local entity_line = split and key_line(source.lines, entity, source.base) or source.base
    if type(fields_spec) ~= "table" then
      errors.config({ file = source.file, line = entity_line or 1 }, "sync \"%s\": mapping has no table for entity \"%s\"",
        sync.name, entity)
    end
    local fields, names = {}, {}
    for field in pairs(fields_spec) do names[#names + 1] = field end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, field in ipairs(names) do
      if job.problems then
        -- check: every field's error, not only the first
        local ok, compiled_field = pcall(compile_field, job, sync, entity, field, fields_spec[field], source, entity_line)
        if ok then
          fields[#fields + 1] = compiled_field
        else
          require("entsync.job").add_problem(job, compiled_field)
          compiled.broken = true
        end
      else
        fields[#fields + 1] = compile_field(job, sync, entity, field, fields_spec[field], source, entity_line)
      end
    end
    local columns, json_fields = {}, {}
    for i, field in ipairs(fields) do
      columns[i] = field.name
      if map.is_refs(field.import) then compiled.has_refs = true end
      if field.type == "json" then json_fields[#json_fields + 1] = field.name end
    end
    compiled.entities[#compiled.entities + 1] = { name = entity, fields = fields, columns = columns, json_fields = json_fields }
  end
  if compiled.broken then
    -- its errors are reported; the sync is passed over
    errors.raise("config", "the mapping has errors", { reported = true })
  end
  compiled.apply = generate(compiled)
  return compiled
end

-- coercion -------------------------------------------------------------------

local function describe(value)
  if type(value) == "string" then return string.format("%q", value) end
  if type(value) == "table" then return "a table" end
  return tostring(value)
end

-- The epochs ISO 8601's four-digit years write, in milliseconds:
-- 0001-01-01T00:00:00Z up to, not including, 10000-01-01T00:00:00Z.
local EPOCH_MILLIS_MIN, EPOCH_MILLIS_END = -62135596800000, 253402300800000

-- An epoch in seconds as ISO 8601 UTC text, to the millisecond; nil for
-- one outside the years 0001 to 9999 (or not finite).
local function iso_from_epoch(seconds)
  if not (seconds >= EPOCH_MILLIS_MIN / 1000 and seconds < EPOCH_MILLIS_END / 1000) then return nil end
  -- rounded to milliseconds first, so .9996 carries into the next second
  local millis = math.floor(seconds * 1000 + 0.5)
  if millis >= EPOCH_MILLIS_END then return nil end
  local whole, fraction = millis // 1000, millis % 1000
  -- the year by hand: os.date's %Y writes year 1 as "1"
  local t = os.date("!*t", whole)
  local text = string.format("%04d-%02d-%02dT%02d:%02d:%02d", t.year, t.month, t.day, t.hour, t.min, t.sec)
  if fraction > 0 then text = text .. string.format(".%03d", fraction) end
  return text .. "Z"
end

-- Text a column may hold: valid UTF-8 without NUL bytes (which other
-- programs reading the store would cut the text at).
local valid_text = require("entsync.core").json.text_ok
M.valid_text = valid_text

-- Why value cannot be stored in a column of field_type when the reason is
-- in the value itself (bad bytes, a number that is not finite), or nil.
local function unstorable(value)
  if type(value) == "string" then
    local ok, at, what = valid_text(value)
    if not ok then
      return string.format("%s at byte %d of \"%s\"", what == "nul" and "a NUL byte" or "invalid UTF-8", at,
        require("entsync.logger").printable(value:sub(1, 60)))
    end
  elseif type(value) == "number" and value - value ~= 0 then
    return string.format("%s, a number that is not finite", tostring(value))
  end
  return nil
end

M.type_names = { text = "text (UTF-8 without NUL bytes)", integer = "an integer", real = "a real number",
  boolean = "a boolean", json = "JSON", timestamp = "a timestamp" }

local coerce = {}

function coerce.text(value)
  local t = type(value)
  if t == "string" then return valid_text(value) and value or nil end
  if t == "number" then
    return math.type(value) == "float" and value == math.floor(value) and math.abs(value) < 2^53
      and string.format("%d", value) or tostring(value)
  end
  if t == "boolean" then return tostring(value) end
  return nil
end

function coerce.integer(value)
  if math.type(value) == "integer" then return value end
  if type(value) == "number" then return math.tointeger(value) end
  if type(value) == "string" and value:match("^%s*[-+]?%d+%s*$") then return math.tointeger(tonumber(value)) end
  if type(value) == "boolean" then return value and 1 or 0 end
  return nil
end

function coerce.real(value)
  local n = type(value) == "number" and value or type(value) == "string" and tonumber(value) or nil
  -- infinity and NaN have no place in SQLite's REAL nor in JSON
  if n == nil or n - n ~= 0 then return nil end
  return n + 0.0
end

local truthy = { ["true"] = true, ["1"] = true, yes = true, on = true, ["false"] = false, ["0"] = false, no = false, off = false }

function coerce.boolean(value)
  if type(value) == "boolean" then return value end
  if value == 1 or value == 0 then return value == 1 end
  if type(value) == "string" then return truthy[value:lower()] end
  return nil
end

function coerce.json(value)
  return value
end

function coerce.timestamp(value)
  if type(value) == "number" then return value - value == 0 and iso_from_epoch(value) or nil end
  if type(value) == "string" and value:match("^%d%d%d%d%-%d%d%-%d%d") and valid_text(value) then return value end
  return nil
end

M.coerce = coerce
M.iso_from_epoch = iso_from_epoch

-- Failures while mapping one field, raised as entity errors (or defer
-- errors, for references not imported yet) naming the mapping line.
-- The fields a log line or a failure names: the field and its mapping line.
local function located(field, extra)
  local out = { field = field.name, file = field.where.file, line = field.where.line }
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end
M.located = located

local function callback_failed(field, result)
  local is_error = errors.is(result)
  errors.raise(is_error and result.kind == "defer" and "defer" or "entity",
    string.format("field %s: %s (%s:%d)", field.name, errors.message(result),
      field.where.file, field.where.line), located(field, { waits_for = is_error and result.waits_for or nil }))
end

local function value_missing(field)
  errors.raise("entity", string.format("field %s: required value missing at %s (%s:%d)", field.name,
    field.path or "(callback)", field.where.file, field.where.line), located(field))
end

local function wrong_type(field, value)
  local why = unstorable(value)
  if why then
    errors.raise("entity", string.format("field %s: %s: not %s (%s:%d)", field.name, why, M.type_names[field.type],
      field.where.file, field.where.line), located(field))
  end
  errors.raise("entity", string.format("field %s: expected %s, got %s (%s:%d)", field.name, field.type,
    describe(value), field.where.file, field.where.line), located(field))
end

-- A callback the C record path called already for this record (ctx.memo,
-- entsync.record_path.held) gives the outcome it had: callbacks run once.
local function call_import(field, value, record, ctx)
  local memo = ctx and ctx.memo
  local ok, result
  if memo and memo[field] then
    ok, result = memo[field][1], memo[field][2]
  else
    ok, result = pcall(field.import, value, record, ctx)
  end
  if not ok then callback_failed(field, result) end
  return result
end

-- The check that keeps a value already of its column's type as it is, so
-- coercion runs only for values that need it.
local native_check = {
  text = 'type(value) == "string" and valid_text(value)',
  integer = 'math_type(value) == "integer"',
  real = 'math_type(value) == "float" and value - value == 0',
  boolean = 'type(value) == "boolean"',
  json = "true",
  timestamp = "false",
}

-- Emits the Lua that reads a remote path into `value`.
local function emit_path(out, keys)
  local function key(k)
    return type(k) == "number" and string.format("[%d]", k) or string.format("[%q]", k)
  end
  out[#out + 1] = "  value = record" .. key(keys[1])
  for i = 2, #keys do
    out[#out + 1] = string.format('  if type(value) == "table" then value = value%s else value = nil end', key(keys[i]))
  end
end

-- Generates the apply function of a compiled mapping: straight-line Lua
-- per field into locals, and each entity's values built by one table
-- constructor, which sizes the table once (growing it field by field was
-- most of the cost). Behaviour is that of the table: path, import
-- callback, default, required, coercion to the column type.
-- Mappings too wide for Lua's 200 locals are interpreted instead.
local MAX_GENERATED_FIELDS = 150

local function interpret(compiled)
  return function(record, ctx)
    local mapped = {}
    for _, entity in ipairs(compiled.entities) do
      local values = {}
      for _, field in ipairs(entity.fields) do
        local value = nil
        if field.keys then value = M.get_path(record, field.keys) elseif field.import then value = record end
        if field.import then value = call_import(field, value, record, ctx) end
        if value == null then value = nil end
        if value == nil then value = field.default end
        if value ~= nil then
          local typed = coerce[field.type](value)
          if typed == nil then wrong_type(field, value) end
          values[field.name] = typed
        elseif field.required then
          value_missing(field)
        end
      end
      mapped[entity.name] = values
    end
    return mapped
  end
end

generate = function(compiled)
  local total = 0
  for _, entity in ipairs(compiled.entities) do total = total + #entity.fields end
  if total > MAX_GENERATED_FIELDS then return interpret(compiled) end
  local out = {
    "local fields, coerce, null, call_import, value_missing, wrong_type, valid_text = ...",
    "local type, math_type = type, math.type",
    "return function(record, ctx)",
    "  local value, typed",
  }
  local entity_tables = {}
  for e, entity in ipairs(compiled.entities) do
    local members = {}
    for i, field in ipairs(entity.fields) do
      local ref = string.format("fields[%d][%d]", e, i)
      local var = string.format("v%d_%d", e, i)
      if field.keys then
        emit_path(out, field.keys)
      else
        -- a callback without a path sees the whole record; a field with
        -- neither has only its default
        out[#out + 1] = field.import and "  value = record" or "  value = nil"
      end
      if field.import then out[#out + 1] = string.format("  value = call_import(%s, value, record, ctx)", ref) end
      out[#out + 1] = "  if value == null then value = nil end"
      if field.default ~= nil then out[#out + 1] = string.format("  if value == nil then value = %s.default end", ref) end
      out[#out + 1] = string.format("  local %s", var)
      out[#out + 1] = "  if value ~= nil then"
      out[#out + 1] = string.format("    if %s then typed = value else typed = coerce[%q](value) end", native_check[field.type], field.type)
      out[#out + 1] = string.format("    if typed == nil then wrong_type(%s, value) end", ref)
      out[#out + 1] = string.format("    %s = typed", var)
      if field.required then out[#out + 1] = string.format("  else value_missing(%s)", ref) end
      out[#out + 1] = "  end"
      members[#members + 1] = string.format("[%q] = %s", field.name, var)
    end
    entity_tables[#entity_tables + 1] = string.format("[%q] = { %s }", entity.name, table.concat(members, ", "))
  end
  out[#out + 1] = "  return { " .. table.concat(entity_tables, ", ") .. " }"
  out[#out + 1] = "end"
  local fields = {}
  for e, entity in ipairs(compiled.entities) do fields[e] = entity.fields end
  local chunk = assert(load(table.concat(out, "\n"), "=(mapping " .. tostring(compiled.source) .. ")", "t"))
  return chunk(fields, coerce, null, call_import, value_missing, wrong_type, valid_text)
end

-- Applies a compiled mapping to a record. Returns { entity = values } or
-- raises an entity error naming the field, the problem and the mapping
-- line. Values are typed but not yet encoded: the content hash is taken
-- over them, so json fields hash by content, not by encoder key order.
function M.apply(compiled, record, ctx)
  return compiled.apply(record, ctx)
end

-- Coerces, in place, the values an after_map hook left: every field must
-- be declared in its entity and take its declared type.
function M.coerce_entities(job, sync, mapped)
  -- the hook's own file and line, for every message below
  local info = debug.getinfo(sync.after_map, "S")
  local hook = string.format("after_map, %s:%d", info.short_src, info.linedefined)
  for entity_name, values in pairs(mapped) do
    local declared = job.entities[entity_name]
    if not declared then
      errors.raise("entity", string.format("entity %q (returned by %s): the sync does not write it", tostring(entity_name),
        hook))
    end
    for field, value in pairs(values) do
      local field_type = declared.fields[field]
      if not field_type then
        errors.raise("entity", string.format("field %s (set by %s): entity %s does not declare it", tostring(field), hook,
          entity_name))
      end
      if value == null then
        values[field] = nil
      else
        local typed = coerce[field_type](value)
        if typed == nil then
          local why = unstorable(value)
          errors.raise("entity", why and string.format("field %s (set by %s): %s: not %s", field, hook, why,
            M.type_names[field_type]) or string.format("field %s (set by %s): expected %s, got %s", field, hook, field_type,
            describe(value)))
        end
        values[field] = typed
      end
    end
  end
end

return M
