-- entsync.engine: the import engine.
--
-- A session opens the job's store and defines its entity tables. A run of
-- one sync reads records from its provider, maps and hashes each, and
-- writes what changed; each batch's writes and the checkpoint that covers
-- them (cursor, pass position, counts) commit in one transaction, so a
-- killed run resumes where it stopped with nothing lost or doubled.

local cjson = require "cjson"
local core = require "entsync.core"
local cursor = require "entsync.cursor"
local errors = require "entsync.errors"
local http = require "entsync.http"
local mapping = require "entsync.mapping"
local progress = require "entsync.progress"

local M = {}

local null = cjson.null
local LOCK_TTL = 60

local SQL = {
  lookup = "SELECT entity, local_id, changed, hash FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2",
  has_idmap = "SELECT 1 FROM entsync_idmap WHERE sync = ?1 LIMIT 1",
  upsert_idmap = [[INSERT INTO entsync_idmap
      (sync, entity, local_id, remote_id, changed, hash, raw_hash, synced_at, seen_pass, gone_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL)
    ON CONFLICT (sync, remote_id, entity) DO UPDATE SET local_id = excluded.local_id,
      changed = excluded.changed, hash = excluded.hash, raw_hash = excluded.raw_hash,
      synced_at = excluded.synced_at, seen_pass = excluded.seen_pass, gone_at = NULL]],
  insert_idmap = [[INSERT INTO entsync_idmap
      (sync, entity, local_id, remote_id, changed, hash, raw_hash, synced_at, seen_pass, gone_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL)]],
  raw_hashes = "SELECT raw_hash FROM entsync_idmap WHERE sync = ?1 AND entity = ?2 AND raw_hash IS NOT NULL",
  mark_seen = "UPDATE entsync_idmap SET seen_pass = ?3, gone_at = NULL WHERE sync = ?1 AND remote_id = ?2",
  state = [[SELECT cursor_mark, cursor_id, pass, pass_resume, pass_open, pass_unreadable
    FROM entsync_state WHERE sync = ?1]],
  save_state = [[INSERT INTO entsync_state
      (sync, cursor_mark, cursor_id, pass, pass_resume, pass_open, pass_unreadable, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (sync) DO UPDATE SET cursor_mark = excluded.cursor_mark, cursor_id = excluded.cursor_id,
      pass = excluded.pass, pass_resume = excluded.pass_resume, pass_open = excluded.pass_open,
      pass_unreadable = excluded.pass_unreadable, updated_at = excluded.updated_at]],
  clear_unreadable = "DELETE FROM entsync_failures WHERE sync = ?1 AND remote_id LIKE '@%' AND last_at < ?2",
  failing = "SELECT remote_id FROM entsync_failures WHERE sync = ?1",
  failure_attempts = "SELECT attempts FROM entsync_failures WHERE sync = ?1 AND remote_id = ?2",
  save_failure = [[INSERT INTO entsync_failures
      (sync, remote_id, local_id, error, payload, attempts, first_at, last_at, next_at, waits_for)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)
    ON CONFLICT (sync, remote_id) DO UPDATE SET error = excluded.error,
      payload = coalesce(excluded.payload, payload), attempts = excluded.attempts,
      last_at = excluded.last_at, next_at = excluded.next_at, waits_for = excluded.waits_for]],
  seen_remote = "UPDATE entsync_idmap SET hash = ?3, changed = ?4 WHERE sync = ?1 AND remote_id = ?2",
  outbox_pending = "SELECT id, queued_at FROM entsync_outbox WHERE entity = ?1 AND local_id = ?2",
  outbox_drop = "DELETE FROM entsync_outbox WHERE entity = ?1 AND local_id = ?2",
  mark = "INSERT INTO entsync_mark (owner) VALUES ('import')",
  unmark = "DELETE FROM entsync_mark",
  trigger_exists = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
  note_refs = "INSERT OR REPLACE INTO entsync_meta (key, value) VALUES (?1, 1)",
  uses_refs = "SELECT value FROM entsync_meta WHERE key = ?1",
  release_deferred = "UPDATE entsync_failures SET next_at = ?2 WHERE waits_for = ?1",
  ref_lookup = "SELECT local_id FROM entsync_idmap WHERE sync = ?1 AND entity = ?2 AND remote_id = ?3",
  clear_failure = "DELETE FROM entsync_failures WHERE sync = ?1 AND remote_id = ?2",
  due_failures = [[SELECT remote_id, payload FROM entsync_failures
    WHERE sync = ?1 AND next_at <= ?2 ORDER BY first_at, remote_id]],
  start_run = [[INSERT INTO entsync_runs (sync, operation, mode, started_at, status, cursor_before, pid, host)
    VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)]],
  progress_run = [[UPDATE entsync_runs SET created = ?2, updated = ?3, unchanged = ?4, stale = ?5,
    failed = ?6, deleted = ?7, skipped = ?8, cursor_after = ?9 WHERE id = ?1]],
  finish_run = [[UPDATE entsync_runs SET ended_at = ?2, status = ?3, created = ?4, updated = ?5,
    unchanged = ?6, stale = ?7, failed = ?8, deleted = ?9, skipped = ?10, cursor_after = ?11, error = ?12
    WHERE id = ?1]],
  abandoned_runs = "UPDATE entsync_runs SET status = 'killed' WHERE sync = ?1 AND status = 'running'",
  unseen = [[SELECT remote_id, entity, local_id FROM entsync_idmap
    WHERE sync = ?1 AND gone_at IS NULL AND (seen_pass IS NULL OR seen_pass <> ?2)]],
  forget = "DELETE FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2",
  flag_gone = "UPDATE entsync_idmap SET gone_at = ?3 WHERE sync = ?1 AND remote_id = ?2",
  remote_ids = "SELECT DISTINCT remote_id FROM entsync_idmap WHERE sync = ?1 ORDER BY remote_id",
}

local OUTCOMES = { "created", "updated", "unchanged", "stale", "failed", "deleted" }
-- What the id map holds for a remote id that cannot be there, and its
-- local ids. Read only.
local NOT_STORED = {}
M.outcomes = OUTCOMES
-- A deferred entity waits for its dependency's next run, not for a clock.
local WAITING = 1e300

-- session ------------------------------------------------------------------

local Session = {}
Session.__index = Session

local function file_exists(path)
  return core.fs.exists(path) ~= false
end

-- Opens the job's store (for a dry run, the existing file inside a
-- transaction that is rolled back, or an in-memory store when there is no
-- file yet) and brings the entity tables up to their declarations.
function M.open(job, options)
  options = options or {}
  local dry = options.dry_run
  local path = job.store_file
  if dry and not file_exists(path) then path = ":memory:" end
  local opened, store = pcall(core.store.open, path)
  if not opened then
    -- A store that cannot be opened or was written by a newer entsync is
    -- a problem of the job's setup, not of entsync.
    errors.raise("config", string.format("%s: %s", job.display_path, tostring(store):gsub("^[^\n]-%.lua:%d+: ", "")))
  end
  local session = setmetatable({
    job = job, store = store, dry = dry, options = options, providers = {},
    log = options.log or function() end,
    owner = string.format("%s:%d:%d", core.sys.hostname(), core.sys.getpid(), math.floor(core.sys.now() * 1000)),
  }, Session)
  if dry then store:run("BEGIN") end
  session:define_entities()
  return session
end

-- Brings the entity tables up to their declarations. The write
-- transaction is taken only when a table or column is missing, so opening
-- a current store never waits for another run's batch.
function Session:define_entities()
  local store = self.store
  local needed, triggers = {}, {}
  for _, name in ipairs(self.job.entity_order) do
    local columns, lower = store:columns(name), {}
    for column in pairs(columns) do lower[column:lower()] = true end
    local missing = next(columns) == nil
    for field in pairs(self.job.entities[name].fields) do missing = missing or not lower[field:lower()] end
    if missing then needed[#needed + 1] = name end
    if self.job.exported[name] and not store:value(SQL.trigger_exists, "entsync_" .. name .. "_update") then
      triggers[#triggers + 1] = name
    end
  end
  if #needed == 0 and #triggers == 0 then return end
  if not self.dry then store:run("BEGIN IMMEDIATE") end
  local ok, err = pcall(function()
    for _, name in ipairs(needed) do store:define_entity(name, self.job.entities[name].fields) end
    for _, name in ipairs(triggers) do store:exec(M.capture_sql(name)) end
  end)
  if not ok then
    if not self.dry then store:run("ROLLBACK") end
    errors.raise("config", string.format("%s: %s", self.job.display_path, tostring(err)))
  end
  if not self.dry then store:run("COMMIT") end
end

-- The triggers that queue changes to an exported entity's table in the
-- outbox, one pending row per entity. Writes made inside an import's own
-- transaction (which holds a row in entsync_mark) are not queued. Names
-- are identifiers validated by the job and the store.
function M.capture_sql(entity)
  local function trigger(event, row, operation)
    return string.format([[
CREATE TRIGGER IF NOT EXISTS "entsync_%s_%s" AFTER %s ON "%s"
WHEN NOT EXISTS (SELECT 1 FROM entsync_mark)
BEGIN
  INSERT INTO entsync_outbox (entity, local_id, operation, queued_at)
  VALUES ('%s', %s.id, '%s', (julianday('now') - 2440587.5) * 86400.0)
  ON CONFLICT (entity, local_id) DO UPDATE SET operation = excluded.operation,
    queued_at = excluded.queued_at, attempts = 0, next_at = NULL;
END;
]], entity, event:lower(), event, entity, entity, row, operation)
  end
  return trigger("INSERT", "new", "upsert") .. trigger("UPDATE", "new", "upsert") .. trigger("DELETE", "old", "delete")
end

function Session:close()
  if self.store:is_open() then
    if self.dry and self.store:in_transaction() then self.store:run("ROLLBACK") end
    self.store:close()
  end
end

-- Batches are transactions; in a dry run they are savepoints inside the
-- one transaction that is rolled back at the end. An import's batch marks
-- itself in entsync_mark so the outbox triggers skip its writes; the mark
-- is removed before the commit, so no other connection ever sees it.
function Session:begin()
  self.store:run(self.dry and "SAVEPOINT batch" or "BEGIN IMMEDIATE")
  self.store:run(SQL.mark)
end

function Session:commit()
  self.store:run(SQL.unmark)
  self.store:run(self.dry and "RELEASE batch" or "COMMIT")
end

function Session:rollback()
  if self.store:in_transaction() then
    self.store:run(self.dry and "ROLLBACK TO batch" or "ROLLBACK")
    if self.dry then self.store:run("RELEASE batch") end
  end
end

function Session:provider(handle)
  local instance = self.providers[handle]
  if not instance then
    local ok, result = pcall(handle.module.new, handle.config, { base_dir = self.job.dir, name = handle.name })
    if not ok then
      errors.config(handle.where, "provider \"%s\": %s", handle.name, errors.message(result))
    end
    instance = result
    self.providers[handle] = instance
  end
  return instance
end

-- locking --------------------------------------------------------------------

local function describe_holder(holder)
  return string.format("pid %s on %s (owner %s), heartbeat %.0fs ago, lease expires in %.0fs",
    tostring(holder.pid), tostring(holder.host), tostring(holder.owner),
    core.sys.now() - (holder.heartbeat_at or 0), (holder.expires_at or 0) - core.sys.now())
end

function Session:lock(sync)
  if self.dry then return end
  local name = "sync:" .. sync.name
  local deadline = core.sys.monotonic() + (self.options.wait or 0)
  while true do
    local ok, info = core.lock.acquire(self.store, name, self.owner, LOCK_TTL)
    if ok then
      if info then
        self.log("warn", string.format("sync \"%s\": took over a lease whose holder is %s: %s", sync.name, info.reason,
          describe_holder(info.holder)))
      end
      return
    end
    if core.sys.monotonic() >= deadline then
      errors.raise("lock", string.format("sync \"%s\" is locked by another run: %s", sync.name, describe_holder(info)),
        { holder = info })
    end
    core.sys.sleep(math.min(0.25, math.max(0.01, deadline - core.sys.monotonic())))
  end
end

function Session:heartbeat(sync)
  if self.dry then return end
  if not core.lock.heartbeat(self.store, "sync:" .. sync.name, self.owner, LOCK_TTL) then
    errors.raise("lock", string.format("sync \"%s\": the lease was lost to another run", sync.name))
  end
end

function Session:unlock(sync)
  if self.dry or not self.store:is_open() then return end
  if self.store:in_transaction() then self:rollback() end
  core.lock.release(self.store, "sync:" .. sync.name, self.owner)
end

-- one run of one sync -----------------------------------------------------------

local Run = {}
Run.__index = Run

local function new_counts()
  local counts = { skipped = 0, retried = 0, filtered = 0, conflicts = 0 }
  for _, outcome in ipairs(OUTCOMES) do counts[outcome] = 0 end
  return counts
end

local remote_id_text = cursor.id_text

local function load_state(store, sync)
  local state = store:row(SQL.state, sync.name) or {}
  state.pass = state.pass or 0
  state.pass_open = state.pass_open or 0
  state.pass_unreadable = state.pass_unreadable or 0
  return state
end

local function save_state(store, sync, state)
  store:run(SQL.save_state, sync.name, state.cursor_mark, state.cursor_id, state.pass, state.pass_resume,
    state.pass_open, state.pass_unreadable, core.sys.now())
end

function M.new_run(session, sync, operation)
  local store = session.store
  local run = setmetatable({
    session = session, store = store, sync = sync, operation = operation, counts = new_counts(),
    failing = {}, failures_shown = 0, writers = {},
    track_seen = sync.import.deletes ~= "keep",
  }, Run)
  for _, row in ipairs(store:rows(SQL.failing, sync.name)) do run.failing[row.remote_id] = true end
  run.ctx = M.new_context(run)
  -- Entities written outside a managed run (import, refresh) count as seen
  -- in the current full pass, so completing it does not delete them.
  run.state = load_state(store, sync)
  run.pass = run.state.pass
  for _, entity in ipairs(sync.mapping.entities) do
    run.writers[entity.name] = store:writer(entity.name, entity.columns)
  end
  run.provider = session:provider(sync.provider)
  return run
end

-- The context mapping callbacks and hooks receive: which sync, entities
-- and remote id are at hand, references to other syncs, and a logger.
local Context = {}
Context.__index = Context

function M.new_context(run)
  return setmetatable({ run = run, sync = run.sync.name, entities = run.sync.entities,
    entity = run.sync.entities[1] }, Context)
end

function Context:log(message, level)
  local run = self.run
  local line = string.format("%s %s: %s", self.sync, tostring(self.remote_id), message)
  -- a batch written again after a failed write maps its records again:
  -- what they logged the first time is not logged twice
  if run.reported then
    if run.replaying and run.reported[line] then return end
    run.reported[line] = true
  end
  run.session.log(level or "info", line)
end

-- The local id of remote_id in sync_name's id map. One not yet imported
-- follows this sync's on_missing: "import" imports it through that sync's
-- provider now, "defer" fails this entity until that sync runs again,
-- "null" gives nil.
function Context:ref(sync_name, remote_id)
  local run = self.run
  local session = run.session
  local target = session.job.syncs[sync_name]
  if not target then errors.raise("entity", string.format("ref: no sync named \"%s\"", tostring(sync_name))) end
  local id = remote_id_text(remote_id)
  if not id then return nil end
  if run.sync.fingerprint and not run.refs_noted then
    -- This mapping reads other syncs' id maps: a record's bytes no longer
    -- decide what it maps to, so later runs map every record again.
    run.refs_noted = true
    session.store:run(SQL.note_refs, "refs:" .. run.sync.name)
  end
  return session:resolve(target, target.entities[1], id, run.sync.on_missing)
end

-- Resolves a remote id of sync target to the local id of entity, applying
-- an on_missing policy when it has not been imported yet.
function Session:resolve(target, entity, remote_id, on_missing)
  local store = self.store
  local local_id = store:value(SQL.ref_lookup, target.name, entity, remote_id)
  if local_id or on_missing == "null" then return local_id end
  if on_missing == "import" then
    -- A record that references itself, or a cycle of them, would import
    -- forever: each remote entity is imported on demand once at a time.
    local key = target.name .. "\0" .. remote_id
    self.resolving = self.resolving or {}
    if self.resolving[key] then
      errors.raise("entity", string.format("reference %s %s refers back to itself through its references", target.name,
        remote_id))
    end
    self.resolving[key] = true
    local ok, result = pcall(self.import_reference, self, target, entity, remote_id)
    self.resolving[key] = nil
    if not ok then error(result, 0) end
    return result
  end
  errors.raise("defer", string.format("reference %s %s is not imported yet; retried after %s runs", target.name,
    remote_id, target.name), { waits_for = target.name })
end

function Session:import_reference(target, entity, remote_id)
  local store = self.store
  local local_id
  do
    local dependency = self:dependent_run(target)
    local ok, record, err = pcall(dependency.provider.get, dependency.provider, target.resource, remote_id)
    if not ok or record == nil then
      errors.raise("entity", string.format("reference %s %s: the remote has no such entity%s", target.name, remote_id,
        (not ok or err) and (" (" .. tostring(errors.is(record) and record.message or record or err) .. ")") or ""))
    end
    local outcome, message = dependency:process(record)
    if outcome == "failed" then
      errors.raise("entity", string.format("reference %s %s could not be imported: %s", target.name, remote_id,
        tostring(message)))
    end
    local_id = store:value(SQL.ref_lookup, target.name, entity, remote_id)
    if local_id then return local_id end
    errors.raise("entity", string.format("reference %s %s: imported, but no %s came of it", target.name, remote_id, entity))
  end
end

-- A run of a dependency used for imports on demand ("import" references):
-- it writes inside the referring run's transaction and is not logged.
function Session:dependent_run(target)
  self.dependents = self.dependents or {}
  local run = self.dependents[target.name]
  if not run then
    run = M.new_run(self, target, "import")
    -- it writes inside another run's batch: each record on its own savepoint
    run.quiet, run.careful = true, true
    self.dependents[target.name] = run
  end
  return run
end

-- Stores a failed entity (its error, attempts and payload) and reports it;
-- the run goes on. waits_for names a sync whose next run makes it due.
function Run:fail(remote_id, message, payload, waits_for)
  local sync, store = self.sync, self.store
  self.counts.failed = self.counts.failed + 1
  self.failures_shown = self.failures_shown + 1
  if self.quiet or (self.replaying and self.reported[remote_id]) then
    -- a dependency imported on demand (the referring entity reports it),
    -- or a failure already reported before its batch was written again
  elseif self.failures_shown <= 10 then
    self.session.log("error", string.format("%s %s: %s", sync.name, remote_id, message))
    if self.reported then self.reported[remote_id] = true end
  elseif self.failures_shown == 11 then
    self.session.log("error", string.format("sync %s: more failures; see entsync-run %s status", sync.name,
      self.session.job.display_path))
  end
  local encoded = payload
  if type(payload) == "table" then
    local ok, json = pcall(cjson.encode, payload)
    encoded = ok and json or nil
  end
  local attempts = (store:value(SQL.failure_attempts, sync.name, remote_id) or 0) + 1
  local now = core.sys.now()
  -- A remote that is there but fails to import is still there: a full
  -- pass must not delete what is stored for it.
  if self.track_seen and remote_id:sub(1, 1) ~= "@" then store:run(SQL.mark_seen, sync.name, remote_id, self.pass) end
  local next_at = waits_for and WAITING or now + math.min(30 * 2 ^ (attempts - 1), 6 * 3600)
  store:run(SQL.save_failure, sync.name, remote_id, nil, message, encoded, attempts, now, next_at, waits_for)
  self.failing[remote_id] = true
end

-- Writes the mapped entities of one remote record; returns the outcome.
function Run:write(remote_id, changed, mapped, hash, rows, record, raw_hash)
  local store, sync = self.store, self.sync
  -- a record new to this sync (the common case of a first import) has no
  -- local ids to gather, unless a link finds them in another sync
  local local_ids = NOT_STORED
  if rows[1] or sync.link then
    local_ids = {}
    for _, row in ipairs(rows) do local_ids[row.entity] = row.local_id end
    if sync.link then self:link(local_ids, remote_id, record) end
  end
  local idmap_sql = rows[1] and SQL.upsert_idmap or SQL.insert_idmap
  local now = core.sys.now()
  local entities = sync.mapping.entities
  for i = 1, #entities do
    local entity = entities[i]
    local values = mapped[entity.name]
    local writer = self:writer_for(entity, values)
    local row = mapping.storable(entity, values)
    local id = local_ids[entity.name]
    if id then
      if writer:update(id, row) == 0 then writer:insert(row, id) end
    else
      id = writer:insert(row)
    end
    store:run(idmap_sql, sync.name, entity.name, id, remote_id, changed, hash, raw_hash, now, self.pass)
  end
  return rows[1] and "updated" or "created"
end

-- The writer for one entity's values: the mapping's own columns, plus,
-- when an after_map hook set other declared fields, those too.
function Run:writer_for(entity, values)
  local writer = self.writers[entity.name]
  if not self.sync.after_map then return writer end
  local extra = {}
  local owned = {}
  for _, column in ipairs(entity.columns) do owned[column] = true end
  for field in pairs(values) do
    if not owned[field] then extra[#extra + 1] = field end
  end
  if #extra == 0 then return writer end
  table.sort(extra)
  local columns = { table.unpack(entity.columns) }
  for _, field in ipairs(extra) do columns[#columns + 1] = field end
  local key = entity.name .. ":" .. table.concat(columns, ",")
  self.extra_writers = self.extra_writers or {}
  if not self.extra_writers[key] then self.extra_writers[key] = self.store:writer(entity.name, columns) end
  return self.extra_writers[key]
end

-- A merge: this sync completes entities another sync owns. Entities the
-- two syncs share, and this one has not written yet, are found through the
-- other sync's id map (by the record's id, or by the link's key path).
function Run:link(local_ids, remote_id, record)
  local link = self.sync.link
  local target = self.session.job.syncs[link.sync]
  local key = link.key and remote_id_text(mapping.get_path(record, link.key)) or remote_id
  for _, entity in ipairs(self.sync.entities) do
    if not local_ids[entity] then
      for _, owned in ipairs(target.entities) do
        if owned == entity then
          if not key then errors.raise("entity", "link key is missing from the record") end
          local_ids[entity] = self.session:resolve(target, entity, key, self.sync.on_missing)
        end
      end
    end
  end
end

-- Imports one record; returns its outcome. Entity errors are stored as
-- failures and never escape; anything else (the store failing) does.
-- raw_hash, when given, identifies the record's bytes for later runs.
function Run:process(record, raw_hash)
  local sync, store, ctx = self.sync, self.store, self.ctx
  local raw_id = type(record) == "table" and record[sync.id_field] or nil
  local remote_id = remote_id_text(raw_id)
  if not remote_id then
    -- Keyed by its content, so the same record failing again is one row.
    local hashed, hex = pcall(core.hash.hex, record)
    local key = "@no-id:" .. (hashed and hex or "unhashable")
    self:fail(key, string.format("record has no usable id in field \"%s\" (got %s)", sync.id_field,
      raw_id == nil and "nothing" or tostring(raw_id)), record)
    return "failed"
  end
  local changed = sync.changed_field and record[sync.changed_field]
  if changed == null then changed = nil end
  -- A run that began with no id map for its sync (a first import) skips
  -- the lookup: a remote id met twice then fails on the id map's key,
  -- and the batch is written again carefully, with lookups.
  local rows = (self.fresh and not self.careful) and NOT_STORED or store:rows(SQL.lookup, sync.name, remote_id)
  local stored = rows[1]
  if changed ~= nil and stored and stored.changed ~= nil and cursor.compare_marks(changed, stored.changed) < 0 then
    if self.track_seen then store:run(SQL.mark_seen, sync.name, remote_id, self.pass) end
    return self:count("stale", remote_id)
  end
  ctx.remote_id = remote_id
  local ok, mapped = pcall(self.map, self, record, ctx)
  if not ok then
    local message = errors.message(mapped)
    self:fail(remote_id, message, record, errors.is(mapped) and mapped.waits_for or nil)
    return "failed", message
  end
  if mapped == false then
    self.counts.filtered = self.counts.filtered + 1
    return "filtered"
  end
  local hash = core.hash.of(mapped)
  if stored and stored.hash == hash and #rows == #sync.mapping.entities then
    if self.track_seen then store:run(SQL.mark_seen, sync.name, remote_id, self.pass) end
    return self:count("unchanged", remote_id)
  end
  if stored and sync.export and sync.export.on_change and self:local_wins(rows, record, remote_id, hash, changed) then
    return self:count("unchanged", remote_id)
  end
  -- Writes go straight into the batch: a savepoint per record cost a
  -- third of an import. When a write fails, the batch is rolled back and
  -- written again carefully, one savepoint per record (see write_batch).
  if not self.careful then
    local written, outcome = pcall(self.write, self, remote_id, changed, mapped, hash, rows, record, raw_hash)
    if not written then errors.raise("redo", "a write failed; the batch is written again record by record") end
    return self:count(outcome, remote_id)
  end
  store:run("SAVEPOINT entity")
  local written, outcome = pcall(self.write, self, remote_id, changed, mapped, hash, rows, record, raw_hash)
  if not written then
    store:run("ROLLBACK TO entity")
    store:run("RELEASE entity")
    local message = errors.message(outcome, true)
    self:fail(remote_id, message, record, errors.is(outcome) and outcome.waits_for or nil)
    return "failed", message
  end
  store:run("RELEASE entity")
  return self:count(outcome, remote_id)
end

-- Runs fn (the handling of one batch) inside a transaction. A write that
-- fails raises "redo": the batch is rolled back, the run's counters and
-- failure set restored, and fn runs again with a savepoint per record so
-- the one bad record is stored as failed and the others are written.
function Run:write_batch(fn, snapshot, restore)
  local session = self.session
  local saved = { counts = {}, failing = {}, failures_shown = self.failures_shown, extra = snapshot() }
  for k, v in pairs(self.counts) do saved.counts[k] = v end
  for k, v in pairs(self.failing) do saved.failing[k] = v end
  self.reported = {}
  session:begin()
  local ok, err = pcall(fn)
  if ok then
    session:commit()
    return
  end
  session:rollback()
  if not errors.is(err, "redo") then error(err, 0) end
  self.counts, self.failing, self.failures_shown = saved.counts, saved.failing, saved.failures_shown
  restore(saved.extra)
  -- An input that repeats remote ids (a change log) would replay batch
  -- after batch: one replay ends the first import's unchecked writes.
  self.fresh = false
  self.careful, self.replaying = true, true
  session:begin()
  ok, err = pcall(fn)
  self.careful, self.replaying = false, false
  if not ok then
    session:rollback()
    error(err, 0)
  end
  session:commit()
end

-- A remote change to an entity whose local change waits in the outbox is
-- a conflict: the export's policy decides. True when the local version
-- stays (nothing is written and the outbox keeps it); otherwise the
-- pending local change is dropped and the remote version written.
function Run:local_wins(rows, record, remote_id, hash, changed)
  local store, pending = self.store, nil
  for _, row in ipairs(rows) do
    pending = pending or store:row(SQL.outbox_pending, row.entity, row.local_id)
  end
  if not pending then return false end
  local export = require "entsync.export"
  local local_rows = {}
  for _, row in ipairs(rows) do
    local_rows[row.entity] = export.local_row(store, row.entity, row.local_id)
  end
  local winner = export.resolve_conflict(self.session, self.sync, self.run_id, {
    entity = rows[1].entity, local_id = rows[1].local_id, remote_id = remote_id, local_rows = local_rows,
    remote_record = record, local_hash = core.hash.of(local_rows), remote_hash = hash, remote_changed = changed,
    local_changed = pending.queued_at, ctx = self.ctx,
  })
  self.counts.conflicts = self.counts.conflicts + 1
  if winner == "local" then
    -- The remote version was seen and lost: the id map takes its hash, so
    -- the export that follows does not meet the same conflict again.
    store:run(SQL.seen_remote, self.sync.name, remote_id, hash, changed)
    return true
  end
  for _, row in ipairs(rows) do store:run(SQL.outbox_drop, row.entity, row.local_id) end
  return false
end

-- Maps a record through the sync's hooks and mapping: false when the
-- filter skips it, else { entity = values }.
function Run:map(record, ctx)
  local sync = self.sync
  if sync.filter and sync.filter(record, ctx) == false then return false end
  local mapped = mapping.apply(sync.mapping, record, ctx)
  if sync.after_map then
    local adjusted = sync.after_map(mapped, record, ctx)
    if type(adjusted) == "table" then mapped = adjusted end
    mapping.coerce_entities(self.session.job, sync, mapped)
  end
  return mapped
end

function Run:count(outcome, remote_id)
  self.counts[outcome] = self.counts[outcome] + 1
  if self.failing[remote_id] then
    self.store:run(SQL.clear_failure, self.sync.name, remote_id)
    self.failing[remote_id] = nil
  end
  return outcome
end

function Run:start(mode, cursor_before)
  local store = self.store
  store:run(SQL.abandoned_runs, self.sync.name)
  local _, id = store:run(SQL.start_run, self.sync.name, self.operation, mode, core.sys.now(), cursor_before,
    core.sys.getpid(), core.sys.hostname())
  self.run_id = id
end

function Run:save_progress(cursor_after)
  local c = self.counts
  self.store:run(SQL.progress_run, self.run_id, c.created, c.updated, c.unchanged, c.stale, c.failed, c.deleted,
    c.skipped + c.filtered, cursor_after)
end

function Run:finish(status, cursor_after, err)
  local c = self.counts
  if self.session.dry or not self.run_id then return end
  self.store:run(SQL.finish_run, self.run_id, core.sys.now(), status, c.created, c.updated, c.unchanged, c.stale,
    c.failed, c.deleted, c.skipped + c.filtered, cursor_after, err)
end

-- Failures of unreadable or id-less input ("@...") that a full pass read
-- from its start did not meet again are gone from the input: cleared.
function Run:clear_unseen_unreadable(started)
  if self.session.dry then return end
  self.store:run(SQL.clear_unreadable, self.sync.name, started)
end

-- A finished run of this sync makes the entities deferred on it due.
function Run:release_dependents()
  if not self.session.dry then self.store:run(SQL.release_deferred, self.sync.name, core.sys.now()) end
end

-- Retries stored failures that are due (all of them when forced) from
-- their stored payloads, in one batch.
function Run:retry_failures(force)
  local session, sync = self.session, self.sync
  local due = self.store:rows(SQL.due_failures, sync.name, force and math.huge or core.sys.now())
  if #due == 0 then return end
  local provider = self.provider
  local can_get = type(provider.get) == "function"
  session:begin()
  for _, row in ipairs(due) do
    self.counts.retried = self.counts.retried + 1
    local record, fetch_error
    if can_get and row.remote_id:sub(1, 1) ~= "@" then
      -- The remote may have been fixed since: fetch it again.
      local fetched, value, err = pcall(provider.get, provider, sync.resource, row.remote_id)
      if fetched and value ~= nil then
        record = value
      elseif fetched then
        fetch_error = "the remote has no such entity" .. (err and (" (" .. tostring(err) .. ")") or "")
      end
    end
    if record == nil and fetch_error == nil and row.payload then
      local decoded, value = pcall(cjson.decode, row.payload)
      if decoded and type(value) == "table" then record = value end
      if not decoded then fetch_error = "malformed JSON: " .. tostring(value) end
    end
    if record ~= nil then
      self:process(record)
    else
      self:fail(row.remote_id, fetch_error or "nothing to retry", nil)
    end
  end
  session:commit()
end

-- Applies deletes = "delete" | "flag" to local entities whose remote was
-- not seen in the pass that just completed.
function Run:apply_deletes(pass_had_unreadable)
  local sync, store = self.sync, self.store
  local mode = sync.import.deletes
  if mode == "keep" then return end
  if pass_had_unreadable then
    -- An unreadable record may be any stored entity: deleting what was not
    -- seen could delete it.
    self.session.log("warn", string.format("sync \"%s\": the pass read records it could not parse; "
      .. "deletes = \"%s\" is not applied this time", sync.name, mode))
    return
  end
  local gone, order = {}, {}
  for _, row in ipairs(store:rows(SQL.unseen, sync.name, self.pass)) do
    if not gone[row.remote_id] then
      gone[row.remote_id] = {}
      order[#order + 1] = row.remote_id
    end
    table.insert(gone[row.remote_id], row)
  end
  local now = core.sys.now()
  for _, remote_id in ipairs(order) do
    if mode == "delete" then
      for _, row in ipairs(gone[remote_id]) do
        store:run(string.format('DELETE FROM "%s" WHERE id = ?1', row.entity), row.local_id)
      end
      store:run(SQL.forget, sync.name, remote_id)
    else
      store:run(SQL.flag_gone, sync.name, remote_id, now)
    end
    self.counts.deleted = self.counts.deleted + 1
  end
end

-- record sources -------------------------------------------------------------------

-- A small binary heap keeping the `limit` smallest (mark, id) candidates
-- for incremental runs with a limit over a source that is not ordered.
local function heap_push(heap, item, limit)
  local function less(a, b) return cursor.compare(a.mark, a.id, b.mark, b.id) > 0 end -- max-heap
  local function up(i)
    while i > 1 do
      local parent = i // 2
      if less(heap[i], heap[parent]) then heap[i], heap[parent] = heap[parent], heap[i]; i = parent else break end
    end
  end
  local function down(i)
    local n = #heap
    while true do
      local l, r, top = 2 * i, 2 * i + 1, i
      if l <= n and less(heap[l], heap[top]) then top = l end
      if r <= n and less(heap[r], heap[top]) then top = r end
      if top == i then break end
      heap[i], heap[top] = heap[top], heap[i]
      i = top
    end
  end
  if #heap < limit then
    heap[#heap + 1] = item
    up(#heap)
  elseif cursor.compare(item.mark, item.id, heap[1].mark, heap[1].id) < 0 then
    heap[1] = item
    down(1)
  end
end

-- The import run --------------------------------------------------------------------

-- What a record source gives the batch loop: a decoded record, a record
-- known unchanged by its bytes, or an input that could not be read.
local RECORD, UNCHANGED, UNREADABLE = 1, 2, 3

local function mark_of(sync, record)
  local mark = record[sync.changed_field]
  if mark == null then return nil end
  return mark
end

-- Builds the source of one run: next() -> kind, value, extra | nil.
-- Three shapes: for an incremental limited run over a source that is not
-- ordered, the `limit` smallest records newer than the cursor (read in
-- full first, so `truncated` tells whether records were left for later
-- runs); for ndjson-like readers under a fingerprinted mapping, raw lines
-- whose bytes were imported before are UNCHANGED without decoding; else
-- the stream of records itself.
local function record_source(run, reader, state, incremental)
  local sync, store, settings = run.sync, run.store, run.sync.import
  local source = { truncated = false, moves_each_batch = true }

  local function newer_than_cursor(record)
    if not incremental or state.cursor_mark == nil then return true end
    local mark = mark_of(sync, record)
    if mark == nil then return true end
    return cursor.compare(mark, remote_id_text(record[sync.id_field]) or "", state.cursor_mark, state.cursor_id) > 0
  end

  local function skip()
    run.counts.skipped = run.counts.skipped + 1
  end

  if incremental and settings.limit and not reader.ordered then
    local heap, unreadable = {}, {}
    while true do
      local record, err, raw = reader:next()
      if record == nil then break end
      if record == false then
        unreadable[#unreadable + 1] = { err, raw }
      elseif newer_than_cursor(record) then
        if #heap >= settings.limit then source.truncated = true end
        heap_push(heap, { mark = mark_of(sync, record), id = remote_id_text(record[sync.id_field]) or "",
          record = record }, settings.limit)
      else
        skip()
      end
    end
    table.sort(heap, function(a, b) return cursor.compare(a.mark, a.id, b.mark, b.id) < 0 end)
    -- Everything was read already: files may move only once every record
    -- taken from them is committed, at the end, and only if none was left.
    source.moves_each_batch, source.ordered = false, true
    local u, h = 0, 0
    function source.next()
      if u < #unreadable then
        u = u + 1
        return UNREADABLE, unreadable[u][1], unreadable[u][2]
      end
      h = h + 1
      if heap[h] then return RECORD, heap[h].record end
      return nil
    end
    return source
  end

  source.ordered = reader.ordered == true
  if reader.next_raw and sync.fingerprint and not run.track_seen
      and not store:value(SQL.uses_refs, "refs:" .. sync.name) then
    local known = store:hash_set(SQL.raw_hashes, sync.name, sync.entities[1])
    local fingerprint = sync.fingerprint
    -- Runs of known lines are skipped by the reader in C: UNCHANGED then
    -- carries how many. A line found after such a run waits in `pending`.
    local pending
    function source.next(room)
      while true do
        local text, skipped, err = pending, 0, nil
        pending = nil
        if not text then
          if reader.next_unknown then
            text, skipped, err = reader:next_unknown(known, fingerprint, math.max(1, math.min(room, 65536)))
          else
            text, err = reader:next_raw()
            if text and known:has(core.hash.bytes(text, fingerprint)) then text, skipped = nil, 1 end
          end
          if skipped > 0 then
            pending = text
            return UNCHANGED, skipped
          end
        end
        if text == nil then return nil end
        if text == false then return UNREADABLE, err end
        local raw_hash = core.hash.bytes(text, fingerprint)
        local record
        record, err = reader:decode(text)
        if record == false then return UNREADABLE, err, text end
        if newer_than_cursor(record) then return RECORD, record, raw_hash end
        skip()
      end
    end
    return source
  end

  function source.next()
    while true do
      local record, err, raw = reader:next()
      if record == nil then return nil end
      if record == false then return UNREADABLE, err, raw end
      if newer_than_cursor(record) then return RECORD, record end
      skip()
    end
  end
  return source
end

local function as_entsync_error(e)
  if errors.is(e) then return e end
  return errors.new("internal", tostring(e), { traceback = debug.traceback(tostring(e), 2) })
end

-- Runs body(runs) holding the sync's lease, where body puts the run it
-- makes in runs[1]. On an error the batch in progress is rolled back, a
-- listing still open is closed, the run is logged as failed with the
-- error, the lease is released and the error raised again.
local function leased(session, sync, body)
  session:lock(sync)
  local runs = {}
  local ok, result = xpcall(body, as_entsync_error, runs)
  if not ok then
    session:rollback()
    local run = runs[1]
    if run and run.reader and run.reader.close then pcall(run.reader.close, run.reader) end
    if run and run.run_id and session.store:is_open() then pcall(run.finish, run, "error", nil, result.message) end
  end
  session:unlock(sync)
  if not ok then error(result, 0) end
  return result
end

-- Runs one managed import of sync: full or incremental, optionally limited.
-- Each batch is read first, outside any transaction, then written in one
-- short transaction with its checkpoint, so other programs and runs wait
-- for the store no longer than a batch takes to write.
function M.run_import(session, sync, options)
  options = options or {}
  local store = session.store
  return leased(session, sync, function(runs)
    local run = M.new_run(session, sync, "run")
    runs[1] = run
    run.fresh = store:value(SQL.has_idmap, sync.name) == nil
    local settings = sync.import
    local state = run.state
    local started = core.sys.now()
    if not session.dry then run:start(settings.mode, cursor.format(state.cursor_mark, state.cursor_id)) end
    local incremental = settings.mode == "incremental"
    if not incremental then
      if state.pass_open == 0 then
        state.pass, state.pass_resume, state.pass_open, state.pass_unreadable = state.pass + 1, nil, 1, 0
      end
      run.pass = state.pass
    end
    -- A pass read whole by this run re-met every input still there.
    local pass_from_start = not incremental and state.pass_resume == nil
    local query = { offset = not incremental and tonumber(state.pass_resume) or nil, limit = settings.limit }
    if incremental and state.cursor_mark ~= nil then query.since = { state.cursor_mark, state.cursor_id } end
    local reader, list_err = run.provider:list(sync.resource, query)
    if not reader then
      errors.raise("config", string.format("%s: sync \"%s\": %s", errors.at(sync.where, ""):gsub(": $", ""),
        sync.name, tostring(list_err)))
    end
    run.reader = reader
    local source = record_source(run, reader, state, incremental)
    local meter = progress.new(session.options.progress, sync.name, reader.total and reader:total())
    local limit = (source.moves_each_batch and settings.limit) or math.huge
    local ordered = source.ordered
    local max_mark, max_id -- the largest (mark, id) processed in this run
    local processed, complete, stopped = 0, false, false

    local function note_mark(record)
      local mark = mark_of(sync, record)
      if not incremental or mark == nil then return end
      local id = remote_id_text(record[sync.id_field]) or ""
      local order = max_mark == nil and 1 or cursor.compare(mark, id, max_mark, max_id)
      if order > 0 then
        max_mark, max_id = mark, id
      elseif order < 0 then
        if ordered then
          session.log("warn", string.format("sync \"%s\": the provider promised records in changed order but %s came after %s; "
            .. "the cursor now advances only when the run completes", sync.name, cursor.format(mark, id),
            cursor.format(max_mark, max_id)))
        end
        ordered = false
      end
    end

    local function handle(kind, value, extra)
      if kind == UNCHANGED then
        run.counts.unchanged = run.counts.unchanged + value
      elseif kind == UNREADABLE then
        -- An input that could not be read has no id: it is kept under its
        -- place in the input ("@contacts.ndjson:7"), with its text.
        local place, message = tostring(value):match("^([^:]+:%d+): (.*)$")
        run:fail("@" .. (place or "input"), message or tostring(value), extra)
        state.pass_unreadable = 1
      else
        note_mark(value)
        run:process(value, extra)
      end
    end

    local kinds, values, extras = {}, {}, {}
    while true do
      local n, taken, exhausted = 0, 0, false
      while n < settings.batch and processed + taken < limit do
        -- Records in hand are written while the network works: a batch
        -- ends early when the next record would have to wait for it.
        if n > 0 and reader.ready and not reader:ready() then break end
        local room = limit - processed - taken
        local kind, value, extra = source.next(room == math.huge and 65536 or room)
        if kind == nil then exhausted = true; break end
        n = n + 1
        kinds[n], values[n], extras[n] = kind, value, extra
        taken = taken + (kind == UNCHANGED and value or 1)
      end
      -- The write phase never yields: other tasks' requests wait, and no
      -- other task runs inside this transaction.
      local function write_all()
        for i = 1, n do
          handle(kinds[i], values[i], extras[i])
          meter:tick(processed + i)
        end
        complete = exhausted and not source.truncated
        if incremental then
          if max_mark ~= nil and (ordered or complete) then state.cursor_mark, state.cursor_id = max_mark, max_id end
        elseif exhausted then
          run:apply_deletes(state.pass_unreadable == 1)
          if pass_from_start then run:clear_unseen_unreadable(started) end
          state.pass_open, state.pass_resume, state.pass_unreadable = 0, nil, 0
        else
          -- The reader's position is its resume offset: it counts only the
          -- records of files that stay in place.
          state.pass_resume = reader.position
        end
        save_state(store, sync, state)
        if run.run_id then run:save_progress(cursor.format(state.cursor_mark, state.cursor_id)) end
      end
      local function snapshot()
        return { max_mark = max_mark, max_id = max_id, ordered = ordered, unreadable = state.pass_unreadable }
      end
      local function restore(saved)
        max_mark, max_id, ordered, state.pass_unreadable = saved.max_mark, saved.max_id, saved.ordered, saved.unreadable
      end
      http.blocking(run.write_batch, run, write_all, snapshot, restore)
      processed = processed + taken
      for i = 1, n do values[i], extras[i] = nil, nil end
      if not session.dry and reader.committed and (source.moves_each_batch or complete) then
        local moved, move_err = reader:committed()
        if moved == nil and move_err then session.log("warn", string.format("sync \"%s\": %s", sync.name, move_err)) end
      end
      session:heartbeat(sync)
      if exhausted or processed >= limit then break end
      -- a daemon asked to stop: the batch is committed, stop here
      if session.should_stop and session.should_stop() then
        stopped = true
        break
      end
    end
    if reader.close then reader:close() end
    meter:finish()
    -- A full run reads every record again, failed ones included; an
    -- incremental one retries the failures that are due.
    if complete and incremental and settings.retry then run:retry_failures(false) end
    run:release_dependents()
    local status = run.counts.failed > 0 and "failed" or (complete and "ok" or "partial")
    run:finish(status, cursor.format(state.cursor_mark, state.cursor_id))
    return { sync = sync.name, counts = run.counts, complete = complete, status = status, stopped = stopped,
      cursor = cursor.format(state.cursor_mark, state.cursor_id) }
  end)
end

-- Imports single records by remote id (import) or by local id (refresh),
-- within one run logged as that operation.
local function run_single(session, sync, operation, remote_ids)
  return leased(session, sync, function(runs)
    local run = M.new_run(session, sync, operation)
    runs[1] = run
    run.careful = true
    if not session.dry then run:start(operation, nil) end
    if type(run.provider.get) ~= "function" then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot fetch one record (it has no get)",
        sync.name, sync.provider.name))
    end
    local meter = progress.new(session.options.progress, sync.name, #remote_ids)
    for start = 1, #remote_ids, sync.import.batch do
      session:begin()
      for i = start, math.min(#remote_ids, start + sync.import.batch - 1) do
        local remote_id = remote_ids[i]
        local fetched, record, err = pcall(run.provider.get, run.provider, sync.resource, remote_id)
        if not fetched then
          run:fail(remote_id, "fetching it failed: " .. errors.message(record))
        elseif record == nil then
          run:fail(remote_id, "the remote has no such entity" .. (err and (" (" .. tostring(err) .. ")") or ""))
        else
          run:process(record)
        end
        meter:tick(i)
      end
      session:commit()
      session:heartbeat(sync)
    end
    meter:finish()
    run:release_dependents()
    local status = run.counts.failed > 0 and "failed" or "ok"
    run:finish(status, nil)
    return { sync = sync.name, counts = run.counts, complete = true, status = status }
  end)
end

function M.import_one(session, sync, remote_id)
  return run_single(session, sync, "import", { remote_id })
end

-- refresh: local ids to remote ids through the id map; nil means --all.
function M.refresh(session, sync, local_ids)
  local store = session.store
  local remote_ids = {}
  if local_ids == nil then
    for _, row in ipairs(store:rows(SQL.remote_ids, sync.name)) do remote_ids[#remote_ids + 1] = row.remote_id end
  else
    for _, local_id in ipairs(local_ids) do
      local id = math.tointeger(tonumber(local_id))
      local remote_id = id and require("entsync.export").remote_id_of(store, sync.name, sync.entities[1], id)
      if not remote_id then
        errors.raise("usage", string.format("sync \"%s\": local %s %s has no remote in the id map",
          sync.name, sync.entities[1], tostring(local_id)))
      end
      remote_ids[#remote_ids + 1] = remote_id
    end
  end
  return run_single(session, sync, "refresh", remote_ids)
end

function M.retry(session, sync)
  return leased(session, sync, function(runs)
    local run = M.new_run(session, sync, "retry")
    runs[1] = run
    run.careful = true
    if not session.dry then run:start("retry", nil) end
    run:retry_failures(true)
    local status = run.counts.failed > 0 and "failed" or "ok"
    run:finish(status, nil)
    return { sync = sync.name, counts = run.counts, complete = true, status = status }
  end)
end

-- A summary line of one run's counts.
function M.summary(result, seconds, dry)
  local c = result.counts
  local parts = {}
  local verbs = dry and { created = "would create", updated = "would update", deleted = "would delete" } or {}
  for _, outcome in ipairs(OUTCOMES) do
    parts[#parts + 1] = string.format("%d %s", c[outcome], verbs[outcome] or outcome)
  end
  local line = string.format("%s: %s", result.sync, table.concat(parts, ", "))
  if c.skipped > 0 then line = line .. string.format(", %d before the cursor", c.skipped) end
  if c.filtered > 0 then line = line .. string.format(", %d filtered out", c.filtered) end
  if c.conflicts > 0 then line = line .. string.format(", %d conflicts", c.conflicts) end
  if c.retried > 0 then line = line .. string.format(", %d retried", c.retried) end
  if result.stopped then
    line = line .. " (stopped: the next run continues here)"
  elseif not result.complete then
    line = line .. " (limit reached: the next run continues here)"
  end
  if seconds then line = line .. string.format(" in %.2fs", seconds) end
  if dry then line = line .. " (dry run: nothing was written)" end
  return line
end

return M
