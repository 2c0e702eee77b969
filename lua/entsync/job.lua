-- entsync.job: the job DSL and its validation.
--
-- A job file runs in an environment holding store, entity, provider, sync
-- and env. The calls only collect declarations (with the file and line of
-- each); validate() then checks them as a whole, so a broken job fails
-- before anything runs, with one line naming where.

local core = require "entsync.core"
local errors = require "entsync.errors"
local mapping = require "entsync.mapping"

local M = {}

M.field_types = { text = true, integer = true, real = true, boolean = true, json = true, timestamp = true }

local sync_options = {
  remote = true, entity = true, mapping = true, import = true, export = true, id = true,
  changed = true, depends_on = true, schedule = true, on_missing = true, filter = true,
  after_map = true, conflict = true, description = true, link = true, webhook = true,
}
local import_options = {
  mode = true, changed = true, changed_kind = true, limit = true, deletes = true, batch = true, retry = true,
  delete_guard = true,
}
local export_options = { on_change = true, deletes = true, conflict = true, batch = true, resource = true, enabled = true,
  natural_key = true }
M.changed_kinds = { auto = true, time = true, number = true, text = true }
local provider_marker = {}

-- collecting every error (check) ------------------------------------------

-- Records a problem found while collecting (check): its message, once.
function M.add_problem(job, err)
  if errors.is(err) and err.reported then return end
  local message = errors.message(err, true)
  for _, seen in ipairs(job.problems) do
    if seen == message then return end
  end
  job.problems[#job.problems + 1] = message
  if type(err) == "table" and err.traceback then
    job.tracebacks = job.tracebacks or {}
    job.tracebacks[message] = err.traceback
  end
end

-- attempt(job, fn, ...) -> ok: fn(...) raising records a problem when the
-- job collects them; otherwise the error goes on up.
local function attempt(job, fn, ...)
  if not job.problems then
    fn(...)
    return true
  end
  local ok, err = pcall(fn, ...)
  if not ok then M.add_problem(job, err) end
  return ok
end

-- What a DSL call that failed gives back while collecting: it takes any
-- call or index, so the rest of the job file goes on being read, and what
-- is built from it is passed over (its cause is reported already).
local poison = setmetatable({}, {
  __call = function(self) return self end,
  __index = function(self) return self end,
  __tostring = function() return "(a declaration that failed)" end,
})
M.poison = poison

local function guarded(job, kind, fn, name)
  return function(...)
    if not job.problems then return fn(...) end
    local first = ...
    local results = table.pack(pcall(fn, ...))
    if not results[1] then
      M.add_problem(job, results[2])
      if kind == "entity" then job.broken_entities[name or first] = true end
      return poison
    end
    local value = results[2]
    if type(value) == "function" then return guarded(job, kind, value, name or first) end
    return table.unpack(results, 2, results.n)
  end
end

-- Whether a sync is built from a declaration that failed (while collecting).
local function poisoned(job, sync)
  local spec = sync.spec
  if spec == poison or spec.remote == poison or (type(spec.remote) == "table" and rawget(spec.remote, "provider") == poison) then
    return true
  end
  local entities = type(spec.entity) == "string" and { spec.entity } or spec.entity
  if type(entities) == "table" and entities ~= poison then
    for _, entity in ipairs(entities) do
      if job.broken_entities[entity] then return true end
    end
  end
  local remote = spec.remote
  local handle = type(remote) == "table" and (rawget(remote, "provider") or remote) or nil
  return handle ~= nil and handle.broken == true
end


-- The job file's own frame: the nearest caller whose chunk is a file.
local function where_called(job)
  for level = 3, 8 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source == job.chunkname then
      return { file = job.display_path, line = info.currentline }
    end
  end
  return { file = job.display_path, line = 0 }
end

-- require's "module 'x' not found:" lists every path it tried, a line
-- each (22 lines and more): one line says the same.
function M.shorten_require_error(message)
  message = tostring(message)
  local head, name = message:match("^(.-module '([^']+)' not found):")
  if not head then return message end
  return string.format("%s (looked for %s.lua beside the job, then in entsync's lua/, providers/ and mappings/)",
    head, (name:gsub("%.", "/")))
end

local function check_name(where, what, name)
  if type(name) ~= "string" then
    errors.config(where, "%s name must be a string, got %s", what, type(name))
  end
  if not core.store.valid_identifier(name) then
    errors.config(where, "%s name \"%s\" is not an identifier (letters, digits and _, not starting with a digit)",
      what, name)
  end
end

-- A size in bytes: a positive integer, or a string such as "64MB",
-- "512 KiB", "2GB" (K, M, G: powers of 1024). Returns nil when it is not one.
local SIZE_UNITS = { [""] = 1, B = 1, K = 1024, M = 1024 ^ 2, G = 1024 ^ 3 }
function M.parse_size(value)
  if math.type(value) == "integer" and value > 0 then return value end
  if type(value) ~= "string" then return nil end
  local n, unit = value:upper():match("^%s*(%d+%.?%d*)%s*([KMG]?)I?B?%s*$")
  local bytes = n and tonumber(n) * SIZE_UNITS[unit]
  return bytes and bytes >= 1 and math.floor(bytes) or nil
end

-- store "file.db", or store { "file.db", busy_timeout = seconds, max_size
-- = bytes or "64MB" }: busy_timeout is how long a write waits for another
-- process's write transaction (default 10 s), max_size caps the file (a
-- write past it fails as a full disk does).
local function dsl_store(job)
  return function(spec)
    local where = where_called(job)
    local settings = type(spec) == "table" and spec or { spec }
    local path = settings[1] or settings.path
    if type(spec) == "table" and path == nil then path = "entsync.db" end
    if type(path) ~= "string" or path == "" then
      errors.config(where, "store expects a file path, got %s", type(path))
    end
    local options = {}
    for key, value in pairs(settings) do
      if key == "busy_timeout" then
        if type(value) ~= "number" or value <= 0 then
          errors.config(where, "store busy_timeout must be a positive number of seconds, got %s", type(value) == "string"
            and string.format("%q", value) or tostring(value))
        end
        options.busy_timeout = value
      elseif key == "max_size" then
        options.max_size = M.parse_size(value) or errors.config(where, "store max_size must be a size in bytes "
          .. "(an integer, or a string such as \"64MB\"), got %s", type(value) == "string" and string.format("%q", value)
          or tostring(value))
      elseif key ~= 1 and key ~= "path" then
        errors.config(where, "store: unknown setting \"%s\" (known: path, busy_timeout, max_size)", tostring(key))
      end
    end
    if job.store_where then
      errors.config(where, "store is already declared at line %d", job.store_where.line)
    end
    job.store_path, job.store_where, job.store_options = path, where, options
  end
end

local function dsl_entity(job)
  return function(name)
    local where = where_called(job)
    check_name(where, "entity", name)
    if name:lower():match("^entsync_") or name:lower():match("^sqlite_") then
      errors.config(where, "entity \"%s\": names starting with entsync_ or sqlite_ are reserved", name)
    end
    -- SQLite compares table names without regard to case.
    local same = job.entity_names[name:lower()]
    if same then
      errors.config(where, "entity \"%s\" is already declared at line %d%s", name, same.where.line,
        same.name ~= name and (" as \"" .. same.name .. "\"") or "")
    end
    return function(fields)
      if type(fields) ~= "table" then
        errors.config(where, "entity \"%s\" expects a table of fields, got %s", name, type(fields))
      end
      local decl = { name = name, fields = {}, where = where }
      local folded = {}
      for field, field_type in pairs(fields) do
        if type(field) ~= "string" or not core.store.valid_identifier(field) then
          errors.config(where, "entity \"%s\": field name %s is not an identifier", name,
            type(field) == "string" and ('"' .. field .. '"') or tostring(field))
        end
        if field:lower() == "id" then
          errors.config(where, "entity \"%s\": field \"%s\" is the primary key and cannot be declared", name, field)
        end
        local other = folded[field:lower()]
        if other then
          errors.config(where, "entity \"%s\": fields \"%s\" and \"%s\" differ only in case (SQLite treats them as one)",
            name, other < field and other or field, other < field and field or other)
        end
        folded[field:lower()] = field
        if not M.field_types[field_type] then
          errors.config(where, "entity \"%s\": field \"%s\" has unknown type %s (text, integer, real, boolean, json, timestamp)",
            name, field, type(field_type) == "string" and ('"' .. field_type .. '"') or type(field_type))
        end
        decl.fields[field] = field_type
      end
      job.entities[name] = decl
      job.entity_names[name:lower()] = decl
      job.entity_order[#job.entity_order + 1] = name
      return decl
    end
  end
end

-- A provider handle; calling it with a resource names what a sync reads.
local function new_provider(job, module_name, module, config, where)
  local handle = {
    kind = provider_marker, type = module_name, module = module, config = config,
    where = where, name = config.name or module_name,
  }
  return setmetatable(handle, {
    __call = function(self, resource)
      return { kind = provider_marker, provider = self, resource = resource, where = where_called(job) }
    end,
  })
end

local function dsl_provider(job)
  return function(module_name)
    local where = where_called(job)
    if type(module_name) ~= "string" then
      errors.config(where, "provider expects a provider name such as \"ndjson\", got %s", type(module_name))
    end
    local ok, module = pcall(require, "providers." .. module_name)
    if not ok then
      local message = tostring(module)
      local inner = message:match("^error loading module [^\n]*\n%s*(.-)$")
      if inner then message = M.shorten_require_error(inner) end
      local missing = message:match("^module '[^']+' not found")
      -- require's own message spans lines ("error loading module ...:\n\t
      -- file:line: reason"); its last line says what is wrong.
      local reason = message:match("\n%s*([^\n]+)$") or message
      errors.config(where, "provider \"%s\": %s", module_name,
        missing and "no such provider (looked for providers/" .. module_name .. ".lua)" or reason)
    end
    if type(module) ~= "table" or type(module.new) ~= "function" then
      errors.config(where, "provider \"%s\": its module must return a table with a new function", module_name)
    end
    return function(config)
      if type(config) ~= "table" then
        errors.config(where, "provider \"%s\" expects a table of settings, got %s", module_name, type(config))
      end
      -- its secrets are known before anything can print them
      require("entsync.redact").settings(config, module.settings)
      if module.settings then
        local valid, err = require("entsync.provider").check_settings(module.settings, config)
        if not valid then errors.config(where, "provider \"%s\": %s", module_name, err) end
      end
      if module.validate then
        local ran, valid, err = pcall(module.validate, config)
        if not ran then valid, err = nil, errors.message(valid) end
        if not valid then errors.config(where, "provider \"%s\": %s", module_name, err) end
      end
      local handle = new_provider(job, module_name, module, config, where)
      job.providers[#job.providers + 1] = handle
      return handle
    end
  end
end

local function dsl_sync(job)
  return function(name)
    local where = where_called(job)
    check_name(where, "sync", name)
    if job.syncs[name] then
      errors.config(where, "sync \"%s\" is already declared at line %d", name, job.syncs[name].where.line)
    end
    return function(spec)
      if type(spec) ~= "table" then
        errors.config(where, "sync \"%s\" expects a table of settings, got %s", name, type(spec))
      end
      job.syncs[name] = { name = name, spec = spec, where = where }
      job.sync_order[#job.sync_order + 1] = name
      return job.syncs[name]
    end
  end
end

-- history { days = 90, runs = 10000 }: how long entsync_runs keeps runs.
local function dsl_history(job)
  return function(settings)
    local where = where_called(job)
    if type(settings) ~= "table" then
      errors.config(where, "history expects a table such as { days = 90, runs = 10000 }, got %s", type(settings))
    end
    for key, value in pairs(settings) do
      if key ~= "days" and key ~= "runs" then
        errors.config(where, "history: unknown setting \"%s\" (known: days, runs)", tostring(key))
      end
      if type(value) ~= "number" or value <= 0 or (key == "runs" and math.type(value) ~= "integer") then
        errors.config(where, "history %s must be a positive %s, got %s", key, key == "runs" and "integer" or "number",
          tostring(value))
      end
    end
    job.history = { days = settings.days or M.HISTORY.days, runs = settings.runs or M.HISTORY.runs }
  end
end

-- How long the run history is kept when the job does not say.
M.HISTORY = require("entsync.ledger").HISTORY

local function dsl_env(job)
  return function(name, default)
    local where = where_called(job)
    if type(name) ~= "string" then
      errors.config(where, "env expects a variable name, got %s", type(name))
    end
    local value = os.getenv(name)
    if value == nil then
      if default == nil then
        errors.config(where, "environment variable %s is not set (give env a default to make it optional)", name)
      end
      return default
    end
    return value
  end
end

-- validation ----------------------------------------------------------------

local function sync_error(sync, fmt, ...)
  errors.config(sync.where, "sync \"%s\": " .. fmt, sync.name, ...)
end

local function check_options(sync, tbl, allowed, what)
  for key in pairs(tbl) do
    if not allowed[key] then
      local names = {}
      for option in pairs(allowed) do names[#names + 1] = option end
      table.sort(names)
      sync_error(sync, "unknown %s option \"%s\" (known: %s)", what, tostring(key), table.concat(names, ", "))
    end
  end
end

local function validate_import(sync)
  if sync.spec.import == false then
    -- an export-only sync: run does not import it
    return { enabled = false, mode = "none", deletes = "keep", batch = 1000, retry = false }
  end
  local import = sync.spec.import or {}
  if type(import) ~= "table" then sync_error(sync, "import must be a table, got %s", type(import)) end
  -- its option names and types were checked by check_types
  local settings = {
    enabled = true,
    mode = import.mode or "full",
    changed = import.changed or sync.spec.changed,
    limit = import.limit,
    deletes = import.deletes or "keep",
    changed_kind = import.changed_kind or "auto",
    delete_guard = import.delete_guard == nil and 0.5 or import.delete_guard,
    batch = import.batch or 1000,
    retry = import.retry ~= false,
  }
  if settings.mode ~= "full" and settings.mode ~= "incremental" then
    sync_error(sync, "import mode must be \"full\" or \"incremental\", got %s", tostring(settings.mode))
  end
  if settings.mode == "incremental" and not settings.changed then
    sync_error(sync, "incremental imports need the changed field (import = { changed = \"updated_at\" })")
  end
  if settings.limit ~= nil and (math.type(settings.limit) ~= "integer" or settings.limit < 1) then
    sync_error(sync, "import limit must be a positive integer, got %s", tostring(settings.limit))
  end
  if math.type(settings.batch) ~= "integer" or settings.batch < 1 then
    sync_error(sync, "import batch must be a positive integer, got %s", tostring(settings.batch))
  end
  if settings.deletes ~= "keep" and settings.deletes ~= "delete" and settings.deletes ~= "flag" then
    sync_error(sync, "import deletes must be \"keep\", \"delete\" or \"flag\", got %s", tostring(settings.deletes))
  end
  if settings.changed ~= nil and type(settings.changed) ~= "string" then
    sync_error(sync, "changed must be a field name, got %s", type(settings.changed))
  end
  local guard = settings.delete_guard
  if guard ~= false and (type(guard) ~= "number" or guard < 0 or guard > 1) then
    sync_error(sync, "import delete_guard must be a share between 0 and 1 (0.5: a pass may delete at most half of "
      .. "the sync's entities), or false, got %s", tostring(guard))
  end
  if not M.changed_kinds[settings.changed_kind] then
    sync_error(sync, "import changed_kind must be \"time\", \"number\", \"text\" or \"auto\", got %s",
      tostring(settings.changed_kind))
  end
  return settings
end

-- A split's other entities (a sync over several entities) carry a link
-- column holding the primary's id: "<primary>_id", an integer, declared by
-- entsync unless the entity declares it itself. It is what the rows of one
-- remote record share, and what users join on.
local function declare_links(job, sync)
  local primary = sync.entities[1]
  for i = 2, #sync.entities do
    local entity = sync.entities[i]
    if entity == primary then sync_error(sync, "entity \"%s\" is named twice", entity) end
    local column = primary .. "_id"
    local declared = job.entities[entity].fields[column]
    if declared and declared ~= "integer" then
      sync_error(sync, "entity \"%s\" declares %s as %s, but it is the link to %s, an integer", entity, column,
        declared, primary)
    end
    job.entities[entity].fields[column] = "integer"
    job.links[entity] = job.links[entity] or {}
    job.links[entity][primary] = column
  end
end

-- The type of every sync option, import and export setting (what a type
-- cannot say, the checks below say: a mode's name, a positive batch).
local FUNCTION = { type = "function" }
local sync_types = {
  remote = "any", entity = { any_of = { "string", { list = "string" } }, describe = "an entity name or a list of them" },
  mapping = { any_of = { "string", "table" }, describe = "a module name or a mapping table" },
  import = { any_of = { "false", { fields = {
    mode = "string", changed = "string", changed_kind = "string", limit = "integer", deletes = "string",
    batch = "integer", retry = "boolean",
    delete_guard = { any_of = { "false", "number" }, describe = "a share between 0 and 1, or false" },
  } } }, describe = "a table or false" },
  export = { any_of = { "boolean", { fields = {
    on_change = "boolean", deletes = "string", batch = "integer", resource = "string", enabled = "boolean",
    natural_key = "string",
    conflict = { any_of = { "string", FUNCTION }, describe = "a policy name or a function" },
  } } }, describe = "true, false or a table" },
  id = "string", changed = "string", description = "string",
  depends_on = { any_of = { "string", { list = "string" } }, describe = "a sync name or a list of them" },
  schedule = "any", on_missing = "string", filter = FUNCTION, after_map = FUNCTION,
  conflict = { any_of = { "string", FUNCTION }, describe = "a policy name or a function" },
  link = "any", -- checked below, with an example
  webhook = "any", -- entsync.webhook checks its settings
}

-- Checks the type of each of the sync's settings, once the names are known.
local function check_types(sync)
  local spec = sync.spec
  -- a webhook's secret is a secret like a provider's
  if type(spec.webhook) == "table" then require("entsync.redact").settings(spec.webhook) end
  check_options(sync, spec, sync_options, "sync")
  if type(spec.import) == "table" then check_options(sync, spec.import, import_options, "import") end
  if type(spec.export) == "table" then check_options(sync, spec.export, export_options, "export") end
  local ok, err = require("entsync.provider").check_settings(sync_types, spec)
  if not ok then sync_error(sync, "%s", err) end
end

local function validate_sync(job, sync)
  local spec = sync.spec
  check_types(sync)
  local remote = spec.remote
  if type(remote) ~= "table" or remote.kind ~= provider_marker then
    sync_error(sync, "remote must be a provider (remote = crm \"contacts\"), got %s", type(remote))
  end
  if remote.provider then
    sync.provider, sync.resource = remote.provider, remote.resource
  else
    sync.provider, sync.resource = remote, nil
  end
  local entities = spec.entity
  if type(entities) == "string" then entities = { entities } end
  if type(entities) ~= "table" or #entities == 0 then
    sync_error(sync, "entity must name a declared entity or a list of them")
  end
  for _, entity in ipairs(entities) do
    if type(entity) ~= "string" then sync_error(sync, "entity names must be strings, got %s", type(entity)) end
    if not job.entities[entity] then sync_error(sync, "entity \"%s\" is not declared", entity) end
  end
  sync.entities = entities
  sync.import = validate_import(sync)
  if spec.webhook ~= nil then
    if not sync.import.enabled then
      sync_error(sync, "a webhook imports what it names, but the sync does not import (import = false)")
    end
    sync.webhook = require("entsync.webhook").settings(spec.webhook, function(fmt, ...) sync_error(sync, fmt, ...) end)
  end
  sync.id_field = spec.id or sync.provider.config.id or "id"
  sync.changed_field = sync.import.changed
  declare_links(job, sync)
  if spec.mapping == nil then sync_error(sync, "mapping is missing (a module name such as \"mappings.contact\", or a table)") end
  sync.mapping = mapping.compile(job, sync, spec.mapping)
  for i = 2, #sync.mapping.entities do
    local entity = sync.mapping.entities[i]
    local link = job.links[entity.name][entities[1]]
    for _, field in ipairs(entity.fields) do
      if field.name == link then
        errors.config(field.where, "sync \"%s\": field \"%s\" of %s is its link to %s, kept by entsync: the mapping "
          .. "cannot set it", sync.name, link, entity.name, entities[1])
      end
    end
  end
  local depends = spec.depends_on or {}
  if type(depends) == "string" then depends = { depends } end
  for _, other in ipairs(depends) do
    if not job.syncs[other] then sync_error(sync, "depends_on names sync \"%s\", which is not declared", tostring(other)) end
  end
  sync.depends_on = depends
  sync.on_missing = spec.on_missing or "defer"
  if sync.on_missing ~= "import" and sync.on_missing ~= "defer" and sync.on_missing ~= "null" then
    sync_error(sync, "on_missing must be \"import\", \"defer\" or \"null\", got %s", tostring(spec.on_missing))
  end
  for _, hook in ipairs({ "filter", "after_map" }) do
    if spec[hook] ~= nil and type(spec[hook]) ~= "function" then
      sync_error(sync, "%s must be a function, got %s", hook, type(spec[hook]))
    end
  end
  sync.filter, sync.after_map = spec.filter, spec.after_map
  if spec.schedule ~= nil then
    local parsed, err = require("entsync.schedule").parse(spec.schedule)
    if not parsed then sync_error(sync, "schedule %s", err) end
    sync.schedule = parsed
  end
  if spec.link ~= nil then
    local link = spec.link
    if type(link) == "string" then link = { sync = link } end
    if type(link) ~= "table" or type(link.sync) ~= "string" then
      sync_error(sync, "link must name the sync whose entities this one completes: link = { sync = \"users\", key = \"user_id\" }")
    end
    local other = job.syncs[link.sync]
    if not other then sync_error(sync, "link names sync \"%s\", which is not declared", link.sync) end
    if link.key ~= nil and (type(link.key) ~= "string" or not mapping.compile_path(link.key)) then
      sync_error(sync, "link key must be a remote path (name.name[1].name), got %s", tostring(link.key))
    end
    sync.link = { sync = link.sync, key = link.key and mapping.compile_path(link.key) }
  end
  -- Everything that decides how a record maps: a record whose bytes and
  -- fingerprint were seen before maps to what is stored. Syncs whose
  -- mapping reads other syncs' id maps (refs, links) have no fingerprint.
  if not sync.mapping.has_refs and not sync.link then
    sync.fingerprint = core.hash.of({ core.version, name = sync.name, job = job.source, mapping = sync.mapping.source_text })
  end
  -- What decides the rows its records map to: a change warns at the next
  -- run that rows written before it keep the old mapping.
  sync.mapping_fingerprint = require("entsync.fingerprint").of(job, sync)
end

-- Orders syncs so each comes after what it depends on; a cycle is an error
-- that names it.
local function order_syncs(job)
  local order, state = {}, {}
  local function visit(name, path)
    if state[name] == "done" then return end
    if state[name] == "visiting" then
      local cycle, started = {}, false
      for _, step in ipairs(path) do
        if step == name then started = true end
        if started then cycle[#cycle + 1] = step end
      end
      cycle[#cycle + 1] = name
      local sync = job.syncs[name]
      sync_error(sync, "depends_on forms a cycle: %s", table.concat(cycle, " -> "))
    end
    state[name] = "visiting"
    path[#path + 1] = name
    for _, other in ipairs(job.syncs[name].depends_on) do visit(other, path) end
    path[#path] = nil
    state[name] = "done"
    order[#order + 1] = name
  end
  for _, name in ipairs(job.sync_order) do visit(name, {}) end
  job.run_order = order
end

-- export = true | { on_change = true, deletes = "delete" | "ignore",
--   conflict = "remote_wins" | "local_wins" | "newest" | function, batch }
local function validate_export(job, sync)
  local spec = sync.spec.export
  if spec == nil or spec == false then return end
  if spec == true then spec = {} end
  if type(spec) ~= "table" then sync_error(sync, "export must be true or a table, got %s", type(spec)) end
  -- its option names and types were checked by check_types, and a sync
  -- that failed there is not validated further
  local settings = {
    on_change = spec.on_change == true, deletes = spec.deletes or "ignore", conflict = spec.conflict or "remote_wins",
    batch = spec.batch or 500, resource = spec.resource, natural_key = spec.natural_key,
  }
  if settings.natural_key ~= nil and (type(settings.natural_key) ~= "string" or settings.natural_key == "") then
    sync_error(sync, "export natural_key must be the name of a field of the records sent, got %s",
      tostring(settings.natural_key))
  end
  if settings.deletes ~= "delete" and settings.deletes ~= "ignore" then
    sync_error(sync, "export deletes must be \"delete\" or \"ignore\", got %s", tostring(settings.deletes))
  end
  local policies = { remote_wins = true, local_wins = true, newest = true }
  if type(settings.conflict) ~= "function" and not policies[settings.conflict] then
    sync_error(sync, "export conflict must be \"remote_wins\", \"local_wins\", \"newest\" or a function, got %s",
      tostring(settings.conflict))
  end
  if math.type(settings.batch) ~= "integer" or settings.batch < 1 then
    sync_error(sync, "export batch must be a positive integer, got %s", tostring(settings.batch))
  end
  if settings.conflict == "newest" then
    -- newest compares the time of the local change with the remote's
    -- changed mark: like with like
    if not sync.changed_field then
      sync_error(sync, "export conflict = \"newest\" compares the remote's changed mark with the local change's "
        .. "time: give the import its changed field (import = { changed = \"updated_at\" })")
    end
    local kind = sync.import.changed_kind
    if kind ~= "time" and kind ~= "auto" then
      sync_error(sync, "export conflict = \"newest\" compares times, but the changed mark %s is declared %s "
        .. "(changed_kind): use \"time\", or another conflict policy", sync.changed_field, kind)
    end
  end
  for _, entity in ipairs(sync.entities) do
    job.exported[entity] = job.exported[entity] or {}
    table.insert(job.exported[entity], sync.name)
  end
  if type(settings.conflict) == "function" then
    local info = debug.getinfo(settings.conflict, "S")
    settings.conflict_where = info and info.short_src and string.format("%s:%d", info.short_src, info.linedefined or 0)
  end
  sync.export = settings
end

-- Makes each provider's object once, as the job loads, and checks that it
-- has the verbs every sync using it needs (entsync.provider).
local function check_providers(job)
  local contract = require "entsync.provider"
  for _, handle in ipairs(job.providers) do
    local made = attempt(job, function()
      local ok, instance = pcall(handle.module.new, handle.config, { base_dir = job.dir, name = handle.name,
        log = job.provider_log })
      if not ok then errors.config(handle.where, "provider \"%s\": %s", handle.name, errors.message(instance)) end
      if type(instance) ~= "table" then
        errors.config(handle.where, "provider \"%s\": new must return the provider object, got %s", handle.name,
          type(instance))
      end
      handle.instance = instance
    end)
    if not made then handle.broken = true end
  end
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    if sync.provider.instance then attempt(job, contract.check, sync, sync.provider.instance) end
  end
end

-- The files and folders the providers read, where they can be seen
-- (check): a provider object with check(resource, wants) answers.
local function check_files(job)
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    local instance = sync.provider.instance
    if instance and type(instance.check) == "function" then
      local ok, found, notes = pcall(instance.check, instance, sync.resource, {
        import = sync.import.enabled, id_field = sync.id_field, changed_field = sync.changed_field,
        export = sync.export ~= nil, export_resource = sync.export and sync.export.resource,
      })
      if not ok then found, notes = { errors.message(found, true) }, nil end
      for _, message in ipairs(found or {}) do
        M.add_problem(job, errors.at(sync.where, string.format("sync \"%s\": %s", sync.name, message)))
      end
      for _, message in ipairs(notes or {}) do
        job.notes = job.notes or {}
        job.notes[#job.notes + 1] = string.format("sync \"%s\": %s", sync.name, message)
      end
    end
  end
end

function M.validate(job)
  job.exported, job.links = {}, {}
  local broken = {}
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    if job.problems and poisoned(job, sync) then
      broken[name] = true
    elseif not attempt(job, validate_sync, job, sync) then
      broken[name] = true
    end
  end
  if job.problems and next(broken) then
    -- what failed is reported; the rest is checked without it
    local kept = {}
    for _, name in ipairs(job.sync_order) do
      if broken[name] then job.syncs[name] = nil else kept[#kept + 1] = name end
    end
    job.sync_order = kept
    for _, name in ipairs(kept) do
      local depends = {}
      for _, other in ipairs(job.syncs[name].depends_on or {}) do
        if not broken[other] then depends[#depends + 1] = other end
      end
      job.syncs[name].depends_on = depends
    end
  end
  for _, name in ipairs(job.sync_order) do attempt(job, validate_export, job, job.syncs[name]) end
  attempt(job, require("entsync.webhook").check_paths, job)
  attempt(job, check_providers, job)
  if not attempt(job, order_syncs, job) then job.run_order = job.sync_order end
  -- the files and folders are the environment's, looked at once the job
  -- itself is right
  if job.problems and #job.problems == 0 then check_files(job) end
  return job
end

-- The syncs to run for the given names (all when empty), with what each
-- depends on, in dependency order.
function M.plan(job, names)
  if not names or #names == 0 then return job.run_order end
  local wanted = {}
  local function want(name)
    if wanted[name] then return end
    wanted[name] = true
    for _, other in ipairs(job.syncs[name].depends_on) do want(other) end
  end
  for _, name in ipairs(names) do
    if not job.syncs[name] then
      errors.raise("usage", string.format("%s: no sync named \"%s\" (declared: %s)", job.display_path, name,
        table.concat(job.sync_order, ", ")))
    end
    want(name)
  end
  local order = {}
  for _, name in ipairs(job.run_order) do
    if wanted[name] then order[#order + 1] = name end
  end
  return order
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = core.fs.cwd()
  if path == "." then return cwd end
  return (cwd .. "/" .. path:gsub("^%./", ""))
end

-- Loads and validates the job file at path; raises a config error naming
-- the file and line on any problem.
-- Forgets the provider modules and the modules beside the job that
-- require cached, so a reload (the daemon's SIGHUP, the REPL's reload())
-- reads their code again. entsync's own modules stay.
function M.forget_modules(job)
  local dir = job.dir .. "/"
  for name in pairs(package.loaded) do
    if type(name) == "string" and (name:match("^providers%.") or name:match("^mappings%.")) then
      package.loaded[name] = nil
    elseif type(name) == "string" and not name:match("^entsync") then
      local file = package.searchpath(name, package.path)
      if file and absolute(file):sub(1, #dir) == dir then package.loaded[name] = nil end
    end
  end
end

-- reload(job) -> true, the job loaded again | false, the error: the job
-- file, its mappings, its providers' code and its own modules are read
-- again; when the new job does not load, the modules loaded before stay.
function M.reload(job)
  local loaded = {}
  for name, value in pairs(package.loaded) do loaded[name] = value end
  M.forget_modules(job)
  local ok, result = pcall(M.load, job.path)
  if not ok then
    for name, value in pairs(loaded) do package.loaded[name] = value end
    return false, result
  end
  return true, result
end

-- options.collect: every error is collected in job.problems (a list of
-- messages) rather than raised at the first (check); the job is as far
-- as it could be read and validated.
function M.load(path, options)
  options = options or {}
  local job = {
    path = path, display_path = path, chunkname = "@" .. path,
    dir = absolute(dirname(path)),
    entities = {}, entity_names = {}, entity_order = {}, providers = {}, syncs = {}, sync_order = {},
    history = { days = M.HISTORY.days, runs = M.HISTORY.runs },
  }
  if options.collect then job.problems, job.broken_entities = {}, {} end
  -- providers log through the session that runs the job (job.log)
  job.provider_log = function(level, message)
    if job.log then job.log(level, message) end
  end
  local env = setmetatable({
    store = guarded(job, "store", dsl_store(job)), entity = guarded(job, "entity", dsl_entity(job)),
    provider = guarded(job, "provider", dsl_provider(job)), sync = guarded(job, "sync", dsl_sync(job)),
    env = guarded(job, "env", dsl_env(job)), history = guarded(job, "history", dsl_history(job)),
  }, { __index = _G })
  local file = io.open(path, "r")
  if not file then errors.raise("usage", string.format("%s: cannot open the job file", path)) end
  local source = file:read("a")
  file:close()
  job.source = source
  local chunk, err = load(source, job.chunkname, "t", env)
  if not chunk then
    if job.problems then
      M.add_problem(job, err)
      return job
    end
    errors.raise("config", err)
  end
  local ok, failure = xpcall(chunk, function(e)
    if errors.is(e) then return e end
    local message = type(e) == "table" and e.message ~= nil and tostring(e.message) or tostring(e)
    message = M.shorten_require_error(message)
    -- An error raised without a position (error({...}), error("x", 0))
    -- still names the job file.
    if not message:match("^[^:\n]+:%d+:") then message = path .. ": " .. message end
    return errors.new("config", message, { traceback = debug.traceback(message, 2) })
  end)
  if not ok then
    if not job.problems then error(failure, 0) end
    -- the job file stopped there: what it declared before is checked too
    M.add_problem(job, failure)
  end
  if not next(job.syncs) and not next(job.entities) then
    if job.problems and #job.problems > 0 then return job end
    errors.raise("config", string.format("%s: declares no entity and no sync", path))
  end
  local store_path = job.store_path or "entsync.db"
  job.store_file = store_path:sub(1, 1) == "/" and store_path or (job.dir .. "/" .. store_path)
  return M.validate(job)
end

return M
