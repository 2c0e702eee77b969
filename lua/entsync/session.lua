-- entsync.session: one job's store, opened.
--
-- A session opens the job's SQLite file, brings entsync's tables to the
-- current schema (entsync.ledger) and the entity tables to their
-- declarations, keeps the change-capture triggers in step with what the
-- syncs export, and holds what runs share: provider instances, write
-- transactions, and the resolution of references between syncs.
--
-- A dry run works inside one transaction that is rolled back when the
-- session closes (or an in-memory store when there is no file yet), so the
-- file is left untouched.

local core = require "entsync.core"
local errors = require "entsync.errors"
local ledger = require "entsync.ledger"
local loop = require "entsync.loop"

local M = {}

local Session = {}
Session.__index = Session

local save_notes -- defined with the notes below

local function file_exists(path)
  return core.fs.exists(path) ~= false
end

-- open(job, options) -> session. options: dry_run, diff (with dry_run:
-- each entity's field changes on stdout), wait (seconds for a lease),
-- progress, progress_every, log_format, log(level, message, fields),
-- should_stop(), out(line) (where --diff lines go; default stdout).
function M.open(job, options)
  options = options or {}
  local dry = options.dry_run
  local path = job.store_file
  if dry and not file_exists(path) then path = ":memory:" end
  local ok, store = pcall(core.store.open, path, job.store_options)
  if ok then ok, store = pcall(function()
    ledger.migrate(store)
    return store
  end) end
  if not ok then
    -- A store the machine refuses (its folder, the disk, another writer)
    -- keeps its kind; one that was written by a newer entsync is a
    -- problem of the job's setup, not of entsync.
    if errors.is(store) and errors.environment[store.kind] then
      store.message = string.format("%s: %s", job.display_path, store.message)
      error(store, 0)
    end
    errors.raise("config", string.format("%s: %s", job.display_path, errors.strip_position(errors.message(store))))
  end
  local session = setmetatable({
    job = job, store = store, ledger = ledger.new(store), dry = dry, options = options, providers = {},
    log = options.log or function() end,
    owner = string.format("%s:%d:%d", core.sys.hostname(), core.sys.getpid(), math.floor(core.sys.now() * 1000)),
  }, Session)
  session.ledger.read_only = dry
  session.ledger.history = job.history
  -- what the job's providers log goes to this session's log
  job.log = session.log
  -- a dry run writes inside one transaction it rolls back: it takes the
  -- write lock first, so a writer beside it makes it wait (the busy
  -- timeout) rather than fail on a snapshot gone stale
  if dry then store:run(path == ":memory:" and "BEGIN" or "BEGIN IMMEDIATE") end
  session:define_entities()
  return session
end

function Session:close()
  if self.store:is_open() then
    if self.dry and self.store:in_transaction() then self.store:run("ROLLBACK") end
    self.store:close()
  end
end

-- entity tables and change capture ---------------------------------------------------

-- What the job asks of the store: per entity table, the change rows its
-- triggers write ({ entity = primary, column = "id" or the link column }),
-- the columns whose updates matter, and whether changes are timed.
local function capture_plan(job)
  local plan = {}
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    if sync.export then
      local primary = sync.entities[1]
      local timed = sync.export.conflict == "newest" or type(sync.export.conflict) == "function"
      for i, entity in ipairs(sync.mapping.entities) do
        local table_name = entity.name
        local entry = plan[table_name] or { targets = {}, columns = {}, timed = false }
        plan[table_name] = entry
        local column = i == 1 and "id" or job.links[table_name][primary]
        local key = primary .. "\0" .. column
        if not entry.targets[key] then entry.targets[key] = { entity = primary, column = column } end
        for _, c in ipairs(entity.columns) do entry.columns[c] = true end
        if i > 1 then entry.columns[column] = true end
        entry.timed = entry.timed or timed
      end
    end
  end
  return plan
end

-- The trigger SQL wanted on each table: { table = { trigger... } }.
function Session:wanted_triggers(plan)
  local wanted = {}
  for table_name, entry in pairs(plan) do
    local targets, columns = {}, {}
    for _, target in pairs(entry.targets) do
      targets[#targets + 1] = { entity_id = self.ledger:entity_id(target.entity, true) or -1, column = target.column,
        entity = target.entity }
    end
    table.sort(targets, function(a, b) return a.entity .. a.column < b.entity .. b.column end)
    for c in pairs(entry.columns) do columns[#columns + 1] = c end
    table.sort(columns)
    wanted[table_name] = { targets = targets, columns = columns, timed = entry.timed }
  end
  return wanted
end

-- Brings the entity tables up to their declarations (a split's other
-- entities with their link column and its unique index), the capture
-- triggers up to what the syncs export, every sync and exported entity
-- to an id, each exporting sync to a position in the change log, and a
-- store of schema 1 to one id-map row per remote record. The write
-- transaction is taken only when something is missing, so opening a
-- current store never waits for another run's batch.
function Session:define_entities()
  local store, job, book = self.store, self.job, self.ledger
  local plan = capture_plan(job)
  local needed = {}
  for _, name in ipairs(job.entity_order) do
    local columns, lower = store:columns(name), {}
    for column in pairs(columns) do lower[column:lower()] = true end
    local missing = next(columns) == nil
    for field in pairs(job.entities[name].fields) do missing = missing or not lower[field:lower()] end
    if missing then needed[#needed + 1] = name end
  end
  local function current()
    if #needed > 0 or book:has_v1() or book:meta("v1_outbox") then return false end
    for _, name in ipairs(job.sync_order) do
      local id = book:sync_id(name, true)
      if not id then return false end
      if job.syncs[name].export and book:position(id) == nil then return false end
    end
    for entity in pairs(plan) do if not book:entity_id(entity, true) then return false end end
    local wanted, present = self:wanted_triggers(plan), book:triggers()
    for table_name, want in pairs(wanted) do
      for _, trigger in ipairs(ledger.capture_sql(table_name, want.targets, want.columns, want.timed)) do
        if book:trigger_sql(trigger.name) ~= trigger.sql then return false end
        present[trigger.name] = nil
      end
    end
    for name in pairs(present) do
      if name:match("^entsync_.+_insert$") or name:match("^entsync_.+_update$") or name:match("^entsync_.+_delete$") then
        return false
      end
    end
    return true
  end
  if current() then return end
  if not self.dry then store:run("BEGIN IMMEDIATE") end
  local ok, err = pcall(function()
    for _, name in ipairs(needed) do store:define_entity(name, job.entities[name].fields) end
    for table_name, links in pairs(job.links) do
      for _, column in pairs(links) do
        store:exec(string.format('CREATE UNIQUE INDEX IF NOT EXISTS "entsync_link_%s_%s" ON "%s" ("%s")',
          table_name, column, table_name, column))
      end
    end
    for _, name in ipairs(job.sync_order) do book:sync_id(name) end
    for entity in pairs(plan) do book:entity_id(entity) end
    -- schema 1's id map: one row per remote record, links filled
    for _, name in ipairs(job.sync_order) do
      local sync = job.syncs[name]
      local links = {}
      for i = 2, #sync.entities do links[sync.entities[i]] = job.links[sync.entities[i]][sync.entities[1]] end
      book:adopt_v1(name, sync.entities[1], links)
    end
    local wanted, present = self:wanted_triggers(plan), book:triggers()
    for table_name, want in pairs(wanted) do
      for _, trigger in ipairs(ledger.capture_sql(table_name, want.targets, want.columns, want.timed)) do
        if book:trigger_sql(trigger.name) ~= trigger.sql then
          store:exec(string.format('DROP TRIGGER IF EXISTS "%s"', trigger.name))
          store:exec(trigger.sql)
        end
        present[trigger.name] = nil
      end
    end
    -- an entity no sync exports any more is no longer captured
    for name in pairs(present) do
      if name:match("^entsync_.+_insert$") or name:match("^entsync_.+_update$") or name:match("^entsync_.+_delete$") then
        store:exec(string.format('DROP TRIGGER "%s"', name))
      end
    end
    for _, name in ipairs(job.sync_order) do
      if job.syncs[name].export then book:start_position(book:sync_id(name)) end
    end
    book:v1_outbox_handed()
  end)
  if not ok then
    if not self.dry then store:run("ROLLBACK") end
    errors.raise("config", string.format("%s: %s", job.display_path, errors.strip_position(errors.message(err))))
  end
  if not self.dry then store:run("COMMIT") end
end

-- write transactions ---------------------------------------------------------------

-- transaction(origin, fn, ...) -> fn's results. Runs fn in one write
-- transaction (a savepoint in a dry run), committed when fn returns and
-- rolled back when it raises (the error is raised again). fn must not wait:
-- a request, sleep or lock wait inside raises, since every other task
-- would stall behind the write lock. origin names the sync (its id) whose
-- import makes these writes: the change log rows they cause are stamped
-- with it, so that sync does not send them back while every other
-- exporting sync does. origin M.UNQUEUED: the writes are no one's to send
-- (a remote's answer to our own write, mapped back), and their change
-- rows are dropped.
M.UNQUEUED = "unqueued"

-- The write transaction of transaction and hand_off: fn in it, then the
-- stamp of its change rows and the commit, on this thread, or (program)
-- handed off with program's queued writes to the store's writer thread.
local function write_transaction(self, origin, program, fn, ...)
  local store, book = self.store, self.ledger
  store:run(self.dry and "SAVEPOINT batch" or "BEGIN IMMEDIATE")
  local results = table.pack(pcall(function(...)
    local before = origin and book:last_seq()
    local out = table.pack(loop.forbid_yield("a write transaction", fn, ...))
    if program then
      -- the stamp runs after program's writes, on the writer thread
      save_notes(self)
      program:hand_off(book:stamp_sql(), before, origin)
      return table.unpack(out, 1, out.n)
    end
    if origin == M.UNQUEUED then
      book:unqueue(before)
    elseif origin then
      book:stamp_origin(before, origin)
    end
    save_notes(self)
    return table.unpack(out, 1, out.n)
  end, ...))
  if not results[1] then
    -- the first error wins: a rollback that fails too (the disk) must
    -- not hide why the transaction ended
    pcall(self.rollback, self)
    error(results[2], 0)
  end
  if not program then store:run(self.dry and "RELEASE batch" or "COMMIT") end
  return table.unpack(results, 2, results.n)
end

function Session:transaction(origin, fn, ...)
  return write_transaction(self, origin, nil, fn, ...)
end

-- hand_off(origin, program, fn, ...): as transaction(origin, fn, ...),
-- but its end (program's queued writes, the stamp of their change rows
-- with origin, a sync id, and the commit) runs on the store's writer
-- thread while the caller reads on; program:settle() says how it ended.
-- Every other use of the store waits for it first. Not in a dry run,
-- whose savepoint the writer's COMMIT would end.
function Session:hand_off(origin, program, fn, ...)
  if self.dry or type(origin) ~= "number" then
    error("Session:hand_off: a sync's writes, in a run that commits", 2)
  end
  write_transaction(self, origin, program, fn, ...)
end

function Session:rollback()
  if self.store:is_open() and self.store:in_transaction() then
    if self.dry then
      -- the savepoint may be gone already (a failed RELEASE)
      pcall(self.store.run, self.store, "ROLLBACK TO batch")
      pcall(self.store.run, self.store, "RELEASE batch")
    else
      self.store:run("ROLLBACK")
    end
  end
end

-- A savepoint inside the transaction in progress: fn's writes are undone
-- when it raises (the error is returned, not raised).
function Session:savepoint(fn, ...)
  local store = self.store
  store:run("SAVEPOINT entity")
  local results = table.pack(pcall(fn, ...))
  if not results[1] then store:run("ROLLBACK TO entity") end
  store:run("RELEASE entity")
  return table.unpack(results, 1, results.n)
end

-- entity rows -----------------------------------------------------------------------

-- The rows a sync's entities hold for one local id: { entity = row } with
-- the primary's row (by id) and the split's other entities (by their link
-- column); entities with no row are absent.
function Session:rows_of(sync, local_id)
  local store, rows = self.store, {}
  local primary = sync.entities[1]
  rows[primary] = store:row(string.format('SELECT * FROM "%s" WHERE id = ?1', primary), local_id)
  for i = 2, #sync.entities do
    local entity = sync.entities[i]
    rows[entity] = store:row(string.format('SELECT * FROM "%s" WHERE "%s" = ?1', entity,
      self.job.links[entity][primary]), local_id)
  end
  return rows
end

-- The writers of a sync's entities, each through exactly the columns the
-- mapping owns (a split's other entities also their link column), with
-- statements prepared once.
function Session:writers(sync)
  self.writer_cache = self.writer_cache or {}
  local writers = self.writer_cache[sync.name]
  if writers then return writers end
  writers = { by_columns = {} }
  for i, entity in ipairs(sync.mapping.entities) do
    local columns = { table.unpack(entity.columns) }
    if i > 1 then columns[#columns + 1] = self.job.links[entity.name][sync.entities[1]] end
    writers[entity.name] = { columns = columns, owned = {}, writer = self.store:writer(entity.name, columns) }
    for _, column in ipairs(columns) do writers[entity.name].owned[column] = true end
  end
  self.writer_cache[sync.name] = writers
  return writers
end

-- The writer for one entity's values: its own, or, when an after_map hook
-- set other declared fields, one that writes those too (with no hook the
-- mapping sets only its own columns).
local function writer_for(self, writers, entity, values, hooked)
  local own = writers[entity]
  if not hooked then return own.writer end
  local extra
  for field in pairs(values) do
    if not own.owned[field] then
      extra = extra or {}
      extra[#extra + 1] = field
    end
  end
  if not extra then return own.writer end
  table.sort(extra)
  local columns = { table.unpack(own.columns) }
  for _, field in ipairs(extra) do columns[#columns + 1] = field end
  local key = entity .. ":" .. table.concat(columns, ",")
  local writer = writers.by_columns[key]
  if not writer then
    writer = self.store:writer(entity, columns)
    writers.by_columns[key] = writer
  end
  return writer
end

-- The query of the row of a split's entity (name) linked to a local id of
-- the sync's first entity.
function Session:link_sql(sync, name)
  return string.format('SELECT id FROM "%s" WHERE "%s" = ?1', name, self.job.links[name][sync.entities[1]])
end

-- Writes mapped entities ({ entity = values }) for local_id (nil: new
-- rows); returns the primary's local id. A split's other entities are
-- found by their link column and get it set.
function Session:write_rows(sync, writers, local_id, mapped)
  local pipeline = require "entsync.pipeline"
  local store, links, primary = self.store, self.job.links, sync.entities[1]
  local existed = local_id ~= nil
  for i, entity in ipairs(sync.mapping.entities) do
    local name = entity.name
    local values = pipeline.storable(mapped[name] or {}, self.job.entities[name].fields)
    if i == 1 then
      local writer = writer_for(self, writers, name, values, sync.after_map)
      if local_id then
        if writer:update(local_id, values) == 0 then writer:insert(values, local_id) end
      else
        local_id = writer:insert(values)
      end
    else
      local link = links[name][primary]
      values[link] = local_id
      local writer = writer_for(self, writers, name, values, sync.after_map)
      local id = existed and store:value(self:link_sql(sync, name), local_id)
      if id then writer:update(id, values) else writer:insert(values) end
    end
  end
  return local_id
end

-- Whether mapped entities ({ entity = values }) differ from what the rows
-- of local_id hold: a field's value as it would be stored, against the
-- stored one (a field the values lack counts as NULL).
function Session:rows_differ(sync, local_id, mapped)
  local pipeline = require "entsync.pipeline"
  local json = require "entsync.json"
  local rows = self:rows_of(sync, local_id)
  for _, entity in ipairs(sync.mapping.entities) do
    local row, values = rows[entity.name], mapped[entity.name] or {}
    if not row then return true end
    local declared = self.job.entities[entity.name].fields
    local fields = {}
    for _, column in ipairs(entity.columns) do fields[column] = true end
    for field in pairs(values) do fields[field] = true end
    for field in pairs(fields) do
      local value = values[field]
      if declared[field] == "json" and value ~= nil then
        value = json.encode(value)
      elseif declared[field] == "boolean" and value ~= nil then
        value = value and 1 or 0
      end
      local stored = row[field]
      if value ~= stored and not (type(value) == "number" and type(stored) == "number" and value == stored) then
        return true
      end
    end
  end
  return false
end

-- Deletes the rows of one local id: the split's other entities, then the
-- primary.
function Session:delete_rows(sync, local_id)
  local store, primary = self.store, sync.entities[1]
  for i = #sync.entities, 2, -1 do
    local entity = sync.entities[i]
    store:run(string.format('DELETE FROM "%s" WHERE "%s" = ?1', entity, self.job.links[entity][primary]), local_id)
  end
  store:run(string.format('DELETE FROM "%s" WHERE id = ?1', primary), local_id)
end

-- providers ----------------------------------------------------------------------------

-- The provider object of a handle: the one the job made as it loaded.
function Session:provider(handle)
  local instance = self.providers[handle] or handle.instance
  if not instance then
    local ok, result = pcall(handle.module.new, handle.config, { base_dir = self.job.dir, name = handle.name,
      log = self.job.provider_log })
    if not ok then
      errors.config(handle.where, "provider \"%s\": %s", handle.name, errors.message(result))
    end
    instance = result
    self.providers[handle] = instance
  end
  return instance
end

-- references ----------------------------------------------------------------------------

-- The local id of remote_id in target's id map. One not imported yet
-- follows sync's on_missing: "import" imports it through target's
-- provider now, "defer" fails the referring entity until target runs
-- again, "null" gives nil.
function Session:resolve_remote(sync, target, remote_id)
  local id = require("entsync.ids").remote(remote_id)
  if id == nil then return nil end
  if sync.fingerprint then self:note_refs(sync.name) end
  local book = self.ledger
  -- a record earlier in the batch that target's own run is reading now:
  -- written first, then found
  local running = self.importing and self.importing[target.name]
  if running and running:holds(id) then running:flush() end
  local local_id = book:local_of(book:sync_id(target.name), id)
  if local_id or sync.on_missing == "null" then return local_id end
  if sync.on_missing == "import" then
    -- A record that references itself, or a cycle of them, would import
    -- forever: each remote entity is imported on demand once at a time.
    local key = target.name .. "\0" .. tostring(id)
    self.resolving = self.resolving or {}
    if self.resolving[key] then
      errors.raise("entity", string.format("reference %s %s refers back to itself through its references", target.name,
        tostring(id)))
    end
    self.resolving[key] = true
    local ok, result = pcall(require("entsync.import").import_reference, self, target, id)
    self.resolving[key] = nil
    if not ok then error(result, 0) end
    return result
  end
  errors.raise("defer", string.format("reference %s %s is not imported yet; retried after %s runs", target.name,
    tostring(id), target.name), { waits_for = target.name })
end

-- The remote id of target's local id (its primary entity's), for an
-- export. One with no remote id yet: "null" gives nil; otherwise the
-- referring entity waits until target runs again (its export may create
-- the remote), and says why.
function Session:resolve_local(sync, target, local_id)
  local book = self.ledger
  local id = math.tointeger(local_id)
  local remote_id = id and book:remote_of(book:sync_id(target.name), id)
  if remote_id ~= nil or sync.on_missing == "null" then return remote_id end
  errors.raise("defer", string.format("reference %s local %s has no remote id in sync %s yet; retried after %s runs",
    target.entities[1], tostring(local_id), target.name, target.name), { waits_for = target.name })
end

-- Notes (in the next write transaction) that a sync's mapping reads
-- other syncs' id maps: a record's bytes no longer decide what it maps to,
-- so later runs map every record again (no raw-line fast path).
function Session:note_refs(sync_name)
  self.refs_seen = self.refs_seen or {}
  if self.refs_seen[sync_name] then return end
  self.refs_seen[sync_name] = true
  self.refs_unsaved = self.refs_unsaved or {}
  self.refs_unsaved[#self.refs_unsaved + 1] = sync_name
end

function Session:uses_refs(sync_name)
  return (self.refs_seen and self.refs_seen[sync_name]) or self.ledger:meta("refs:" .. sync_name) ~= nil
end

save_notes = function(self)
  if not self.refs_unsaved then return end
  for _, name in ipairs(self.refs_unsaved) do self.ledger:set_meta("refs:" .. name, 1) end
  self.refs_unsaved = nil
end

return M
