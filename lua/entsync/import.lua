-- entsync.import: imports.
--
-- A managed run reads records from the sync's provider in batches. Each
-- record is mapped and hashed as it is read (entsync.pipeline; callbacks
-- run once, outside any transaction, so a reference imported on demand or
-- a provider call may wait on the network); what it needs written is kept
-- as a small plan. The batch's plans are then written in one short write
-- transaction with the checkpoint that covers them (cursor, pass position,
-- counts), so a killed run resumes where it stopped with nothing lost or
-- doubled. A write that fails (a constraint of the user's table, a remote
-- id met twice) rolls the batch back and writes it again record by record,
-- each on its own savepoint, so the one bad record is stored as failed.
--
-- The outcome of each record: created, updated, unchanged (the mapped
-- content hash equals the stored one: nothing written), stale (its changed
-- mark is older than the stored one), filtered, or failed (error, remote
-- id and payload kept in entsync_failures and retried with backoff).

local conflicts = require "entsync.conflicts"
local context = require "entsync.context"
local core = require "entsync.core"
local cursor = require "entsync.cursor"
local errors = require "entsync.errors"
local ids = require "entsync.ids"
local json = require "entsync.json"
local loop = require "entsync.loop"
local operation = require "entsync.operation"
local pipeline = require "entsync.pipeline"
local progress = require "entsync.progress"
local record_path = require "entsync.record_path"
local provider_contract = require "entsync.provider"
local sources = require "entsync.sources"

local M = {}

local null = json.null
local resume_of, checkpoint_text -- with the managed runs below
-- A deferred entity waits for its dependency's next run, not for a clock.
local WAITING = 1e300

-- one run's state ---------------------------------------------------------------------

local Run = {}
Run.__index = Run

-- new_run(session, sync, op) -> run. op is the operation it runs in (nil
-- for a dependency imported on demand inside another sync's run).
local function new_run(session, sync, op)
  local book = session.ledger
  local sync_id = book:sync_id(sync.name)
  local run = setmetatable({
    session = session, sync = sync, op = op, book = book, store = session.store, sync_id = sync_id,
    counts = op and op.counts or operation.new_counts(),
    failing = book:failing(sync_id, "import"),
    track_seen = sync.import.deletes ~= "keep",
    ctx = context.new(session, sync, "import"),
    provider = session:provider(sync.provider),
    shown = 0,
  }, Run)
  run.versioned = type(run.provider.version) == "function"
  run.state = book:state(sync_id)
  run.pass = run.state.pass
  run.writers = session:writers(sync)
  -- conflicts: a remote change to an entity whose local change this sync
  -- has not exported yet is settled by its export policy
  run.exports = sync.export and sync.export.on_change
  -- creates that may have reached the remote before a crash: their copy,
  -- met here, is that local entity's, not a new one
  for _, w in ipairs(book:pending_creates(sync_id)) do
    run.creates = run.creates or {}
    if w.hash then run.creates[w.hash] = w.local_id end
  end
  return run
end
M.new_run = new_run

-- The sync's failures are logged (the first ten of a run; then a line
-- pointing at status) and stored with their payload.
function Run:report(key, message, local_id, located)
  if self.quiet then return end
  -- a batch written again after a failed write applies its failures
  -- again: what they logged the first time is not logged twice
  if self.reported then
    if self.reported[key] then return end
    self.reported[key] = true
  end
  self.shown = self.shown + 1
  local sync = self.sync
  if self.shown <= 10 then
    local fields = { sync = sync.name, operation = self.op and self.op.operation or "import", entity = sync.entities[1],
      local_id = local_id, event = "failure" }
    if key:sub(1, 1) == "@" then fields.input = key:sub(2) else fields.remote_id = key end
    for k, v in pairs(located or {}) do fields[k] = v end
    self.session.log("error", string.format("%s %s%s: %s", sync.name, key,
      local_id and string.format(" (local %s %d)", sync.entities[1], local_id) or "", message), fields)
  elseif self.shown == 11 then
    self.session.log("error", string.format("sync %s: more failures; see entsync-run %s failures %s", sync.name,
      self.session.job.display_path, sync.name), { sync = sync.name, event = "failure" })
  end
end

-- plans ------------------------------------------------------------------------------------

-- What one record needs from the write phase, decided while it is read:
--   { "fail", key, message, payload, waits_for }
--   { "skip", outcome, local_id }          unchanged or stale: counted, marked seen
--   { "filtered" }
--   { "echo", local_id, hash, changed }    our own write seen coming back
--   { "adopt", local_id, remote_id, hash, changed }  a created record found again
--   { "write", remote_id, local_id, stored, mapped, hash, changed, raw_hash, record }

local function fail_plan(key, message, payload, waits_for)
  return { "fail", key = key, message = message, payload = payload, waits_for = waits_for }
end

local function payload_of(record)
  if type(record) ~= "table" then return record end
  local ok, text = pcall(json.encode, record)
  return ok and text or nil
end

-- Whether a record whose changed mark is changed is older than what the
-- id map holds for it (stored).
function Run:stale(changed, stored)
  return changed ~= nil and stored ~= nil and stored.changed ~= nil
    and cursor.compare_marks(changed, stored.changed, self.sync.import.changed_kind) < 0
end

-- prepare(record, raw_hash, text, memo) -> plan. Runs the pipeline; never
-- raises for the record's own faults (they become a "fail" plan). text is
-- the raw line the record was decoded from, when the reader gives it;
-- memo the outcomes of callbacks the C record path called already.
function Run:prepare(record, raw_hash, text, memo)
  local sync, book, ctx = self.sync, self.book, self.ctx
  self.stored_pass = nil
  if provider_contract.is_tombstone(record) then return self:gone(provider_contract.tombstone_id(record), record) end
  local raw_id = type(record) == "table" and record[sync.id_field] or nil
  local remote_id, why = ids.remote(raw_id)
  if remote_id == nil then
    -- Keyed by its content, so the same record failing again is one row.
    local hashed, hex = pcall(core.hash.hex, record)
    return fail_plan("@no-id:" .. (hashed and hex or "unhashable"),
      string.format("record has no usable id in field \"%s\" (got %s)", sync.id_field, why), payload_of(record))
  end
  local key = ids.text(remote_id)
  local changed = sync.changed_field and record[sync.changed_field]
  if changed == null then changed = nil end
  -- A run that began with no id map for its sync (a first import) skips
  -- the lookup: a remote id met twice then fails on the id map's key, and
  -- the batch is written again carefully, with lookups.
  local stored = nil
  if not self.fresh then stored = book:by_remote(self.sync_id, remote_id) end
  self.stored_pass = stored and stored.seen_pass
  if self:stale(changed, stored) then
    return { "skip", outcome = "stale", key = key, local_id = stored.local_id }
  end
  ctx:at(remote_id, stored and stored.local_id, record)
  ctx.memo = memo
  local ok, mapped = pcall(pipeline.import, sync, record, ctx)
  ctx.memo = nil
  if not ok then
    local plan = fail_plan(key, errors.message(mapped), payload_of(record), errors.is(mapped) and mapped.waits_for or nil)
    plan.local_id, plan.remote_id = stored and stored.local_id, remote_id
    if errors.is(mapped) and mapped.field then
      plan.located = { field = mapped.field, file = mapped.file, line = mapped.line }
    end
    return plan
  end
  if mapped == pipeline.FILTERED then return { "filtered", key = key } end
  local hash = pipeline.hash(mapped)
  local version = nil
  if self.versioned then
    local got, token = pcall(provider_contract.call, sync.provider, self.provider, "version", record)
    if not got then
      local plan = fail_plan(key, errors.message(token), payload_of(record))
      plan.local_id, plan.remote_id = stored and stored.local_id, remote_id
      return plan
    end
    version = token
  end
  if stored and stored.hash == hash and not stored.gone_at then
    if version ~= nil and version ~= stored.version then
      -- the same content under a new version (our own write's answer
      -- elsewhere, or a touch): the id map takes the version only
      return { "echo", key = key, local_id = stored.local_id, hash = hash, changed = changed, version = version }
    end
    return { "skip", outcome = "unchanged", key = key, local_id = stored.local_id,
      raw_hash = raw_hash ~= stored.raw_hash and raw_hash or nil }
  end
  if stored then
    local w = book:write_of(self.sync_id, stored.local_id)
    if w and w.hash == hash then
      return { "echo", key = key, local_id = stored.local_id, hash = hash, changed = changed, version = version,
        written = true }
    end
  elseif self.creates and self.creates[hash] then
    return { "adopt", key = key, local_id = self.creates[hash], remote_id = remote_id, hash = hash, changed = changed }
  end
  local local_id = stored and stored.local_id
  if not local_id and sync.link then
    local linked, message = self:linked_id(remote_id, record)
    if not linked then return fail_plan(key, message, payload_of(record), self.link_waits) end
    local_id = linked
  end
  -- The batch holds what its write needs: the decoded record only when a
  -- conflict may want it (the sync exports on change), else the raw line
  -- it came from stands for it as the payload of a write that fails.
  local held = record
  if text and not self.exports then held = nil end
  return { "write", key = key, remote_id = remote_id, local_id = local_id, stored = stored, mapped = mapped,
    hash = hash, changed = changed, raw_hash = raw_hash, version = version, record = held, text = held == nil and text }
end

-- The remote deleted remote_id (a tombstone in the listing, or a get that
-- found nothing): a "gone" plan, which the sync's deletes policy settles.
-- One the id map does not know is nothing to settle, unless the user
-- asked for it by id (`asked`): then it fails as not on the remote.
function Run:gone(raw_id, record, asked)
  local remote_id = ids.remote(raw_id)
  if remote_id == nil then
    return fail_plan("@tombstone", "a tombstone with no usable id", payload_of(record))
  end
  local stored = self.book:by_remote(self.sync_id, remote_id)
  if not stored and asked then return fail_plan(ids.text(remote_id), "the remote has no such entity") end
  local changed = record and self.sync.changed_field and record[self.sync.changed_field] or nil
  if changed == null then changed = nil end
  return { "gone", key = ids.text(remote_id), remote_id = remote_id, local_id = stored and stored.local_id,
    stored = stored, changed = changed }
end

-- A merge: this sync completes entities another sync owns; the local id
-- is found through that sync's id map (by the record's id, or by the
-- link's key path).
function Run:linked_id(remote_id, record)
  local link = self.sync.link
  local target = self.session.job.syncs[link.sync]
  local key = remote_id
  if link.key then key = ids.remote(require("entsync.mapping").get_path(record, link.key)) end
  if key == nil then return nil, "link key is missing from the record" end
  local ok, id = pcall(self.session.resolve_remote, self.session, self.sync, target, key)
  if not ok then
    self.link_waits = errors.is(id) and id.waits_for or nil
    return nil, errors.message(id)
  end
  if id == nil then return nil, string.format("link: %s %s is not imported", target.name, ids.text(key)) end
  return id
end

-- the write phase ----------------------------------------------------------------------------

function Run:count(outcome, key)
  self.counts[outcome] = self.counts[outcome] + 1
  if key and self.failing[key] then
    self.book:clear_failure(self.sync_id, "import", key)
    self.failing[key] = nil
  end
  return outcome
end

local byte, AT = string.byte, string.byte("@")

-- Notes that plan's remote id was read at position (the count of records
-- read so far) of a full pass: an id read twice in one pass warns, naming
-- both records when both are writes of one batch (batch_keys): the later
-- one is written over the earlier (records are applied in the order read).
-- The earlier batches of the pass are known by the id map's seen_pass, so
-- nothing is held in memory for them; records skipped unread as unchanged
-- are not seen.
function Run:note_position(plan, position)
  local key = plan.key
  if not self.note_ids or key == nil or byte(key) == AT then return false end
  local earlier = self.batch_keys[key]
  if earlier == nil and (self.stored_pass == nil or self.stored_pass ~= self.pass) then return false end
  self:warn_duplicate(plan, position, earlier)
  return true
end

-- Says that plan's remote id, read at position, was read before in this
-- pass (at earlier, when known), once per record.
function Run:warn_duplicate(plan, position, earlier)
  if plan.warned then return end
  plan.warned, self.duplicates = true, true
  local key = plan.key
  self.session.log("warn", string.format("sync \"%s\": remote id %s is in the input twice (%s): the later one is "
    .. "written", self.sync.name, key, earlier and string.format("records %d and %d read by this run", earlier, position)
    or string.format("record %d read by this run, and an earlier one of this pass", position)),
    { sync = self.sync.name, remote_id = key, event = "duplicate_id", first = earlier, again = position })
end

function Run:fail(plan)
  local book, sync = self.book, self.sync
  self.counts.failed = self.counts.failed + 1
  self:report(plan.key, plan.message, plan.local_id, plan.located)
  local attempts = book:failure_attempts(self.sync_id, "import", plan.key) + 1
  local now = core.sys.now()
  -- A remote that is there but fails to import is still there: a full
  -- pass must not delete what is stored for it.
  if self.track_seen and plan.key:sub(1, 1) ~= "@" then
    local local_id = book:local_of(self.sync_id, ids.remote(plan.key))
    if local_id then book:mark_seen(self.sync_id, local_id, self.pass) end
  end
  local next_at = plan.waits_for and WAITING or now + math.min(30 * 2 ^ (attempts - 1), 6 * 3600)
  book:save_failure(self.sync_id, "import", { key = plan.key, local_id = plan.local_id, remote_id = plan.remote_id,
    error = plan.message, payload = plan.payload, attempts = attempts, next_at = next_at, waits_for = plan.waits_for })
  self.failing[plan.key] = true
  return "failed"
end

-- The set of local ids with a change this sync has not exported yet (or
-- whose export failed), read inside the batch's transaction, when the
-- write lock keeps it from changing: { [local_id] = latest change time }.
function Run:unexported()
  if self.pending then return self.pending end
  local book, sync = self.book, self.sync
  local pending = {}
  local entity_ids = json.encode({ book:entity_id(sync.entities[1], true) or -1 })
  local position = book:position(self.sync_id) or 0
  for _, row in ipairs(book:pending_changes(position, entity_ids, self.sync_id)) do
    if row.local_id then pending[row.local_id] = row.at or true end
  end
  for key in pairs(book:failing(self.sync_id, "export")) do
    local id = math.tointeger(tonumber(key))
    if id and not pending[id] then pending[id] = true end
  end
  self.pending = pending
  return pending
end

-- A remote change to an entity whose local change waits to be exported:
-- true when the local version stays (nothing is written; the id map takes
-- the remote's hash, so the export that follows does not meet the same
-- conflict again). Otherwise the remote version is written, and the drain
-- finds nothing left to send.
function Run:local_wins(plan)
  local pending = self:unexported()[plan.local_id]
  if not pending then return false end
  local session = self.session
  local winner = conflicts.settle(session, self.sync, {
    direction = "import", run_id = self.op and self.op.run_id, local_id = plan.local_id, remote_id = plan.remote_id,
    local_rows = session:rows_of(self.sync, plan.local_id), remote_record = plan.record,
    remote_hash = plan.hash, remote_changed = plan.changed, local_changed = type(pending) == "number" and pending or nil,
    ctx = self.ctx:at(plan.remote_id, plan.local_id, plan.record),
  })
  self.counts.conflicts = self.counts.conflicts + 1
  if winner == "local" then
    self.book:seen_remote(self.sync_id, plan.local_id, plan.hash, plan.changed, plan.version)
    return true
  end
  return false
end

-- Writes a record's entities and its id-map row; returns the outcome.
function Run:write(plan)
  local session, sync, book = self.session, self.sync, self.book
  if self.careful and not plan.stored and not plan.local_id then
    -- written again after a failed batch: a remote id met twice in the
    -- input is found now
    local stored = book:by_remote(self.sync_id, plan.remote_id)
    if stored then
      local position = self.note_ids and self.batch_keys and self.batch_keys[plan.key]
      if position and stored.seen_pass == self.pass then self:warn_duplicate(plan, position) end
      plan.stored, plan.local_id = stored, stored.local_id
      -- what prepare would have found with the lookup
      if self:stale(plan.changed, stored) then
        return self:skip({ outcome = "stale", key = plan.key, local_id = stored.local_id })
      end
      if stored.hash == plan.hash then return self:skip({ outcome = "unchanged", key = plan.key, local_id = stored.local_id }) end
    end
  end
  if plan.stored and self.exports and self:local_wins(plan) then
    return self:count("unchanged", plan.key)
  end
  if self.diffs then
    self.diffs[#self.diffs + 1] = require("entsync.diff").import(session, sync, plan.remote_id, plan.local_id,
      plan.mapped)
  end
  local local_id = session:write_rows(sync, self.writers, plan.local_id, plan.mapped)
  if plan.stored then
    book:save_map(self.sync_id, local_id, plan.remote_id, plan.changed, plan.hash, plan.raw_hash, plan.version,
      self.pass)
  else
    book:insert_map(self.sync_id, local_id, plan.remote_id, plan.changed, plan.hash, plan.raw_hash, plan.version,
      self.pass)
  end
  return self:count(plan.stored and "updated" or "created", plan.key)
end

function Run:skip(plan)
  if plan.n then
    -- lines known unchanged by their bytes, skipped by the reader in C
    self.counts.unchanged = self.counts.unchanged + plan.n
    return "unchanged"
  end
  if self.track_seen and plan.local_id then self.book:mark_seen(self.sync_id, plan.local_id, self.pass) end
  if plan.raw_hash and plan.local_id then
    self.book:set_raw_hash(self.sync_id, plan.local_id, plan.raw_hash)
  end
  return self:count(plan.outcome, plan.key)
end

-- A remote entity is gone: deletes = "delete" deletes the local entity,
-- "flag" sets gone_at in the id map, "keep" keeps both. A local change
-- not exported yet is a conflict the export policy settles: when the
-- local version wins, the id map forgets the remote, and the next export
-- creates it again.
function Run:apply_gone(plan)
  local book, session = self.book, self.session
  if not plan.stored then return self:count("unchanged", plan.key) end
  if plan.stored.gone_at and self.sync.import.deletes == "flag" then return self:count("unchanged", plan.key) end
  if self.exports and self:unexported()[plan.local_id] then
    local winner = conflicts.settle(session, self.sync, {
      direction = "import", run_id = self.op and self.op.run_id, local_id = plan.local_id, remote_id = plan.remote_id,
      local_rows = session:rows_of(self.sync, plan.local_id), remote_record = nil, remote_hash = nil,
      remote_changed = plan.changed, ctx = self.ctx:at(plan.remote_id, plan.local_id, nil),
    })
    self.counts.conflicts = self.counts.conflicts + 1
    if winner == "local" then
      book:forget(self.sync_id, plan.local_id)
      return self:count("unchanged", plan.key)
    end
  end
  local mode = self.sync.import.deletes
  if mode == "delete" then
    session:delete_rows(self.sync, plan.local_id)
    book:forget(self.sync_id, plan.local_id)
  elseif mode == "flag" then
    book:flag_gone(self.sync_id, plan.local_id)
  else
    return self:count("unchanged", plan.key)
  end
  if self.diffs then
    self.diffs[#self.diffs + 1] = require("entsync.diff").gone(self.sync, plan.remote_id, plan.local_id, mode)
  end
  return self:count("deleted", plan.key)
end

local apply = {
  fail = Run.fail,
  gone = Run.apply_gone,
  skip = Run.skip,
  filtered = function(self) self.counts.filtered = self.counts.filtered + 1; return "filtered" end,
  echo = function(self, plan)
    -- our own write, whose answer was not recorded (a crash between send
    -- and record): the remote holds what we sent, nothing changed here
    self.book:seen_remote(self.sync_id, plan.local_id, plan.hash, plan.changed, plan.version)
    if plan.written then self.book:end_write(self.sync_id, plan.local_id) end
    if self.track_seen then self.book:mark_seen(self.sync_id, plan.local_id, self.pass) end
    return self:count("unchanged", plan.key)
  end,
  adopt = function(self, plan)
    -- a create that reached the remote before a crash, met again: it is
    -- that local entity's remote, not a new entity
    self.book:save_map(self.sync_id, plan.local_id, plan.remote_id, plan.changed, plan.hash, nil, plan.version,
      self.pass)
    self.book:end_write(self.sync_id, plan.local_id)
    self.creates[plan.hash] = nil
    return self:count("unchanged", plan.key)
  end,
  write = Run.write,
  taken = function(self, plan)
    -- entries of the C record path: creates and updates, written by the
    -- program
    -- a batch handed off writes them on the store's writer thread
    local write = self.handing and self.program.queue or self.program.write
    local ok, created, updated = pcall(write, self.program, plan.from, plan.to, self.pass, core.sys.now())
    if not ok then
      if errors.is(created) and created.kind ~= "entity" then error(created, 0) end
      errors.raise("redo", "a write failed; the batch is written again record by record")
    end
    self.counts.created = self.counts.created + created
    self.counts.updated = self.counts.updated + updated
    self.mapped_in_c = self.mapped_in_c + created + updated
    return "written"
  end,
}

-- The plans of a batch again, with the C record path's entries planned
-- by the Lua pipeline: the batch is written record by record (careful),
-- which only the Lua pipeline does.
function Run:expand(plans, handed)
  local out = {}
  for _, plan in ipairs(plans) do
    if plan[1] == "taken" then
      for _, part in ipairs(plan.parts) do
        for i = part.from, part.to do
          -- handed: the entries of the batch handed off last
          local text, raw_hash, src = self.program:entry(i, handed)
          if text then
            out[#out + 1] = self:prepare(json.decode(text), raw_hash, text)
          else
            out[#out + 1] = self:prepare(part.page:list()[src])
          end
        end
      end
    else
      out[#out + 1] = plan
    end
  end
  for i = 1, math.max(#plans, #out) do plans[i] = out[i] end
end

-- Applies one plan; in careful mode on its own savepoint, so a record
-- whose write fails is stored as failed and the others are written.
function Run:apply(plan)
  local kind = plan[1]
  if kind ~= "write" then return apply[kind](self, plan) end
  if not self.careful then
    local ok, outcome = pcall(Run.write, self, plan)
    if not ok then
      if errors.is(outcome) and outcome.kind ~= "entity" then error(outcome, 0) end
      errors.raise("redo", "a write failed; the batch is written again record by record")
    end
    return outcome
  end
  local ok, outcome = self.session:savepoint(Run.write, self, plan)
  if ok then return outcome end
  if errors.is(outcome) and outcome.kind ~= "entity" then error(outcome, 0) end
  local failed = fail_plan(plan.key, errors.message(outcome, true), plan.text or payload_of(plan.record))
  failed.remote_id, failed.local_id = plan.remote_id, plan.local_id
  return self:fail(failed)
end

-- What write_batch restores when a batch is written again.
function Run:snapshot()
  local saved = { counts = {}, failing = {}, shown = self.shown, mapped_in_c = self.mapped_in_c }
  for k, v in pairs(self.counts) do saved.counts[k] = v end
  for k, v in pairs(self.failing) do saved.failing[k] = v end
  return saved
end

function Run:restore(saved)
  for k, v in pairs(saved.counts) do self.counts[k] = v end
  self.failing, self.shown, self.mapped_in_c = saved.failing, saved.shown, saved.mapped_in_c
end

-- settle([ending]) -> batch | nil: waits for the batch handed off last
-- (see write_batch) to commit; nil when it did (or none was), else the
-- batch, its plans planned again by the Lua pipeline (ending: the run is
-- ending, not planned), and what it counted taken out of the counts (what
-- the reader counted since, records skipped, stays). An environment
-- failure (the disk) is raised.
function Run:settle(ending)
  local handed = self.handed
  if not handed then return nil end
  self.handed = nil
  local ok, err = self.program:settle()
  if ok then
    if self.op then self.op:settled(handed.counts) end
    self.handed_off = (self.handed_off or 0) + 1
    return nil
  end
  -- its plans are taken and skipped lines: the counts and mapped_in_c are
  -- all it changed
  for k, v in pairs(handed.counts) do self.counts[k] = self.counts[k] - (v - handed.saved.counts[k]) end
  self.mapped_in_c = self.mapped_in_c - (handed.mapped_in_c - handed.saved.mapped_in_c)
  if errors.is(err) and err.kind ~= "entity" then error(err, 0) end
  if ending then return handed end
  -- as any batch written again: the rest of the run looks every remote id
  -- up, these records first
  self.fresh = false
  self:expand(handed.plans, true)
  return handed
end

-- Whether write_batch may hand plans off: the C record path's entries
-- only (what the Lua pipeline writes would then be written before them,
-- and take other local ids), with no lookup that would wait for the
-- writer, written whole (not record by record) and for real.
function Run:may_hand_off(plans)
  if not (self.program and self.writer and self.fresh) or self.careful or self.session.dry or self.diffs then
    return false
  end
  for _, plan in ipairs(plans) do
    if plan[1] ~= "taken" and not (plan[1] == "skip" and plan.n) then return false end
  end
  return #plans > 0
end

-- write_batch(plans, checkpoint [, overlap]) writes the plans and the
-- checkpoint in one transaction. A write that fails rolls it back; the
-- counters and the failure set are restored, and it is written again with
-- a savepoint per record.
-- overlap: the caller reads the next batch before it needs this one
-- committed (it calls write_batch again, or settle): the transaction's
-- C record path writes and its commit are handed off to the store's writer
-- thread (Session:hand_off). A handed-off batch that fails is written
-- again, record by record, with the next batch, in that batch's
-- transaction, under its checkpoint (which covers both); its own
-- checkpoint would claim what the reader has read since.
function Run:write_batch(plans, checkpoint, overlap, failed)
  failed = failed or self:settle()
  local saved = self:snapshot()
  self.reported = failed and failed.reported or {}
  if failed then
    local both = {}
    table.move(failed.plans, 1, #failed.plans, 1, both)
    table.move(plans, 1, #plans, #both + 1, both)
    plans = both
  end
  local diffing = self.session.options.diff and self.session.dry
  local function body()
    self.pending = nil
    -- the field changes of a dry run's --diff, shown once the batch is in
    if diffing then self.diffs = {} end
    for i = 1, #plans do self:apply(plans[i]) end
    if checkpoint then checkpoint() end
  end
  local function show_diffs()
    if self.diffs then require("entsync.diff").show(self.session, self.diffs) end
    self.diffs = nil
  end
  local transaction = self.op and function(fn) return self.op:transaction(fn) end
    or function(fn) return self.session:transaction(self.sync_id, fn) end
  if not failed then
    local ok, err
    if overlap and self:may_hand_off(plans) then
      self.handing = true
      ok, err = pcall(function()
        if self.op then return self.op:hand_off(self.program, body) end
        return self.session:hand_off(self.sync_id, self.program, body)
      end)
      self.handing = false
      if ok then
        local counts = {}
        for k, v in pairs(self.counts) do counts[k] = v end
        self.handed = { plans = plans, checkpoint = checkpoint, saved = saved, reported = self.reported,
          counts = counts, mapped_in_c = self.mapped_in_c }
        self.reported = nil
        return
      end
    else
      ok, err = pcall(transaction, body)
      if ok then
        self.reported = nil
        show_diffs()
        return
      end
    end
    if not errors.is(err, "redo") then self.reported = nil error(err, 0) end
    self:restore(saved)
  end
  -- An input that repeats remote ids (a change log) would replay batch
  -- after batch: one replay ends the first import's unchecked writes.
  self.fresh = false
  self.careful = true
  if self.program then
    -- the rest of the run is the Lua pipeline's, which now looks every
    -- remote id up
    self:expand(plans)
    self.program = nil
  end
  local done, again = pcall(transaction, body)
  self.careful, self.reported = false, nil
  if not done then
    self.diffs = nil
    error(again, 0)
  end
  show_diffs()
end

-- finish_writes(): the batch handed off last committed; when it failed
-- it is written again record by record, under its own checkpoint (nothing
-- was read since it was handed off, so that checkpoint still holds).
function Run:finish_writes()
  if not self.handed then return end
  local checkpoint = self.handed.checkpoint
  local failed = self:settle()
  if failed then self:write_batch({}, checkpoint, nil, failed) end
end

-- Whether the batch being read holds a record of remote_id not written
-- yet: a record that refers to one before it in the same batch.
function Run:holds(remote_id)
  return self.batch_keys ~= nil and self.batch_keys[ids.text(remote_id)] ~= nil
end

-- Writes what the batch being read holds so far (without a checkpoint:
-- the batch's own commit brings it), so a later record of the batch can
-- find an earlier one it refers to.
function Run:flush()
  local plans = self.batch
  if not plans or #plans == 0 then return end
  self:write_batch({ table.unpack(plans) })
  for i = #plans, 1, -1 do plans[i] = nil end
  self.batch_keys = {}
end

-- deletes ------------------------------------------------------------------------------------

-- The delete guard: a full pass that would delete (or flag) more than
-- this share of a sync's entities, and more than GUARD_MIN of them,
-- deletes nothing unless the run is told it may (--allow-deletes): an API
-- that answers an empty list, or a wrong filter, must not empty the store.
local GUARD_MIN = 10
M.GUARD_MIN = GUARD_MIN

-- Applies deletes = "delete" | "flag" to the local entities whose remote
-- was not seen in the full pass that just completed. why_not, when given,
-- says why this pass cannot vouch for having seen every remote record:
-- then nothing is deleted, and the log says why.
function Run:apply_deletes(why_not)
  local sync, book, session = self.sync, self.book, self.session
  local mode = sync.import.deletes
  if mode == "keep" then return end
  if why_not then
    session.log("warn", string.format("sync \"%s\": %s; deletes = \"%s\" is not applied this time", sync.name,
      why_not, mode))
    return
  end
  local unseen = book:unseen(self.sync_id, self.pass)
  local guard = sync.import.delete_guard
  if guard and #unseen > GUARD_MIN and not session.options.allow_deletes then
    local mapped = book:mapped_count(self.sync_id)
    if #unseen > guard * mapped then
      self.guarded = #unseen
      session.log("warn", string.format("sync \"%s\": the pass would %s %d of %d entities, more than the delete "
        .. "guard's %d%%: nothing is %s (run it with --allow-deletes if the remote really lost them)", sync.name,
        mode == "delete" and "delete" or "flag as gone", #unseen, mapped, math.floor(guard * 100 + 0.5),
        mode == "delete" and "deleted" or "flagged"))
      return
    end
  end
  for _, row in ipairs(unseen) do
    if self.diffs then
      self.diffs[#self.diffs + 1] = require("entsync.diff").gone(sync, row.remote_id, row.local_id, mode)
    end
    if mode == "delete" then
      session:delete_rows(sync, row.local_id)
      book:forget(self.sync_id, row.local_id)
    else
      book:flag_gone(self.sync_id, row.local_id)
    end
    self.counts.deleted = self.counts.deleted + 1
  end
end

-- failures and retries -------------------------------------------------------------------------

-- Fetches a failed entity again (the remote may have been fixed since),
-- or takes its stored payload: a plan.
function Run:refetch(row)
  local sync, provider = self.sync, self.provider
  if type(provider.get) == "function" and row.key:sub(1, 1) ~= "@" then
    local fetched, value = pcall(provider_contract.call, sync.provider, provider, "get", sync.resource,
      row.remote_id or row.key, self.ctx:at(row.remote_id, row.local_id, nil))
    if fetched and value ~= nil then return self:prepare(value) end
    -- gone from the remote: settled by the deletes policy, not kept failing
    if fetched then return self:gone(row.remote_id or row.key, nil) end
  end
  if row.payload then
    local value, err = json.try_decode(row.payload)
    if type(value) == "table" then return self:prepare(value) end
    return fail_plan(row.key, "malformed JSON: " .. tostring(err))
  end
  return fail_plan(row.key, "nothing to retry")
end

-- Retries the stored failures that are due (all of them when forced).
function Run:retry_failures(force)
  local due = self.book:due_failures(self.sync_id, "import", force and math.huge or core.sys.now())
  if #due == 0 then return end
  local plans = {}
  for i, row in ipairs(due) do
    self.counts.retried = self.counts.retried + 1
    plans[i] = self:refetch(row)
  end
  self:write_batch(plans)
end

-- managed runs ---------------------------------------------------------------------------------

local function cursor_text(state)
  return cursor.format(state.cursor_mark, state.cursor_id)
end

-- Where a full pass resumes: { checkpoint = value } or { offset = n }
-- (stored as JSON; a bare number is what schema 1 stored), or nil.
resume_of = function(text)
  if text == nil then return nil end
  local number = tonumber(text)
  if number then return { offset = math.tointeger(number) or 0, positional = true } end
  local value = json.try_decode(text)
  if type(value) ~= "table" then return nil end
  if value.checkpoint == json.null then value.checkpoint = nil end
  return value
end

checkpoint_text = function(value)
  if value == nil then return nil end
  return json.encode(value)
end

-- run(session, sync, options) -> result: one managed import of sync, full
-- or incremental, optionally limited. Each batch is read (and mapped)
-- first, outside any transaction, then written in one short transaction
-- with its checkpoint, so other programs and runs wait for the store no
-- longer than a batch takes to write.
-- The mapping changed since the sync's rows were written: said once at
-- the start of a run, with what this run does about it.
local function note_mapping_change(session, sync, state, full, incremental)
  local stored, current = state.fingerprint, sync.mapping_fingerprint
  if stored == nil or current == nil or stored == current then return end
  local fields = { sync = sync.name, event = "mapping_changed" }
  if full then
    session.log("info", string.format("sync \"%s\": its mapping changed since its rows were written; this full pass "
      .. "maps every record again", sync.name), fields)
  elseif incremental then
    session.log("warn", string.format("sync \"%s\": its mapping changed since its rows were written; an incremental "
      .. "run maps only what changed at the remote, so the other rows keep the old mapping: `entsync-run %s run %s "
      .. "--full` maps every record again", sync.name, session.job.display_path, sync.name), fields)
  elseif state.pass_open == 1 and state.pass_resume ~= nil then
    session.log("warn", string.format("sync \"%s\": its mapping changed since its rows were written; this run "
      .. "resumes a full pass, so what the pass read before keeps the old mapping until the next pass (`entsync-run %s "
      .. "run %s --full` starts one now)", sync.name, session.job.display_path, sync.name), fields)
  else
    session.log("info", string.format("sync \"%s\": its mapping changed since its rows were written; this full pass "
      .. "maps every record again", sync.name), fields)
  end
end

-- run(session, sync [, options]) -> result. options.full: a full pass
-- now, whatever the import mode: no cursor, checkpoint or limit, a new
-- pass from the start (with deletes, as any complete pass); an
-- incremental sync's cursor moves to the newest record read.
-- options.follow: a reader that can wait for more (a queue's) does, until
-- the session's should_stop says stop (options.until_quiet: or until it
-- found nothing more after taking something).
function M.run(session, sync, options)
  options = options or {}
  local full = options.full and true or false
  local book = session.ledger
  local before = book:state(book:sync_id(sync.name))
  return operation.run(session, sync, "run", full and "full" or sync.import.mode, function(op)
    local run = new_run(session, sync, op)
    run.fresh = not book:has_mapped(run.sync_id)
    session.importing = session.importing or {}
    session.importing[sync.name] = run
    local settings, state = sync.import, run.state
    local started = core.sys.now()
    local keeps_cursor = settings.mode == "incremental"
    local incremental = keeps_cursor and not full
    note_mapping_change(session, sync, state, full, incremental)
    -- whether this run, once complete, has mapped every record the sync
    -- holds under the current mapping
    local maps_all = run.fresh or full or (incremental and state.cursor_mark == nil and state.checkpoint == nil)
    if not incremental then
      if full or state.pass_open == 0 then
        state.pass, state.pass_resume, state.pass_open, state.pass_unreadable = state.pass + 1, nil, 1, 0
        maps_all = true
      end
      run.pass = state.pass
    end
    -- A full pass resumes where the last run of it stopped: from the
    -- reader's checkpoint, or (for readers that give none) by a count of
    -- records, which cannot vouch that a remote list that shifted meanwhile
    -- was seen whole.
    local resume = not incremental and resume_of(state.pass_resume) or nil
    local pass_from_start = not incremental and resume == nil
    -- a full pass reads each remote record once: an id read twice is
    -- noted (a change log read incrementally repeats ids by nature)
    run.note_ids = not incremental
    -- the records the C record path can take
    run.program = record_path.program(run)
    if run.program then run.mapped_in_c = 0 end
    -- ENTSYNC_WRITER=off writes every batch on the Lua thread (to compare)
    run.writer = os.getenv("ENTSYNC_WRITER") ~= "off"
    local limit_setting = not full and settings.limit or nil
    local query = { limit = limit_setting, mode = full and "full" or settings.mode }
    if options.follow then
      -- a queue's reader waits for messages until the run is asked to stop
      query.follow, query.should_stop, query.until_quiet = true, session.options.should_stop, options.until_quiet
    end
    if resume then
      query.checkpoint, query.offset = resume.checkpoint, resume.offset
      run.positional = resume.positional or resume.offset ~= nil
    end
    if incremental then
      if state.cursor_mark ~= nil then query.since = { state.cursor_mark, state.cursor_id } end
      if state.checkpoint ~= nil then query.checkpoint = json.try_decode(state.checkpoint) end
    end
    local reader, list_err = provider_contract.call(sync.provider, run.provider, "list", sync.resource, query)
    if not reader then
      errors.raise("config", string.format("%s: sync \"%s\": %s", errors.at(sync.where, ""):gsub(": $", ""),
        sync.name, tostring(list_err)))
    end
    local source = sources.new(run, reader, state, incremental, keeps_cursor)
    local checkpointed = type(reader.checkpoint) == "function"
    reader = source.reader
    local meter = progress.new(session.options, sync.name, function()
      return reader.total and reader:total() or nil, reader.fraction and reader:fraction() or nil
    end, { sync = sync.name, operation = "run" })
    local limit = (source.moves_each_batch and limit_setting) or math.huge
    local processed, complete, stopped = 0, false, false
    local ok, result = pcall(function()
      while true do
        -- held: the records the batch's plans write (a plan of the C
        -- record path holds many)
        local plans, taken, exhausted, held = {}, 0, false, 0
        run.batch, run.batch_keys = plans, {}
        if run.program then run.program:reset() end
        while held < settings.batch and processed + taken < limit do
          -- Records in hand are written while the network works: a batch
          -- ends early when the next record would have to wait for it.
          if #plans > 0 and not source.ready() then break end
          local room = limit - processed - taken
          local kind, value, extra, text, memo = source.next(room == math.huge and 65536 or room,
            settings.batch - held)
          held = held + 1
          if kind == nil then exhausted = true; break end
          if kind == sources.UNCHANGED then
            plans[#plans + 1] = { "skip", outcome = "unchanged", n = value }
            taken = taken + value
          elseif kind == sources.TAKEN then
            -- mapped in C into the program's batch: its entries up to here,
            -- one plan with the entries taken just before (another page), so
            -- the program writes their creates in runs across pages
            local to = run.program:count()
            local from, last = to - value + 1, plans[#plans]
            local part = { from = from, to = to, page = extra }
            if last and last[1] == "taken" and last.to == from - 1 then
              last.to, last.parts[#last.parts + 1] = to, part
            else
              plans[#plans + 1] = { "taken", from = from, to = to, parts = { part } }
            end
            taken = taken + value
            held = held + value - 1
          elseif kind == sources.UNREADABLE then
            -- An input that could not be read has no id: it is kept under
            -- its place in the input ("@contacts.ndjson:7"), with its text.
            local place, message = tostring(value):match("^(.-:[%w%-]+): (.*)$")
            plans[#plans + 1] = fail_plan("@" .. (place or "input"), message or tostring(value), extra)
            plans[#plans].unreadable = true
            taken = taken + 1
          else
            source.note_mark(value)
            local plan = run:prepare(value, extra, text, memo)
            if run:note_position(plan, processed + taken + 1) and run.batch_keys[plan.key] then
              -- the earlier record of this id is in the batch, not written
              -- yet: it is written first, and this one planned over it
              run:flush()
              plan = run:prepare(value, extra, text, memo)
            end
            plans[#plans + 1] = plan
            -- the batch's writes by remote id, with where each was read
            if plan[1] == "write" then run.batch_keys[plan.key] = processed + taken + 1 end
            taken = taken + 1
          end
        end
        -- the next batch is read while this one is written, unless
        -- something waits for its commit: the end of the pass, or a reader
        -- told what each batch committed
        local awaits = not session.dry and reader.committed and (source.moves_each_batch or exhausted)
          and (not reader.awaits_commit or reader:awaits_commit())
        local overlap = not exhausted and not awaits
        run:write_batch(plans, function()
          for _, plan in ipairs(plans) do if plan.unreadable then state.pass_unreadable = 1 end end
          complete = exhausted and not source.truncated
          if complete and not session.dry and pass_from_start then
            book:set_input_duplicates(run.sync_id, run.duplicates)
          end
          if incremental then
            local mark, id = source.max()
            if mark ~= nil and (source.ordered or complete or checkpointed) then
              state.cursor_mark, state.cursor_id = mark, id
            end
            -- the checkpoint covers every record this batch holds, and
            -- moves on over pages that held none
            if checkpointed then state.checkpoint = checkpoint_text(reader:checkpoint()) end
          elseif exhausted then
            local why_not
            if state.pass_unreadable == 1 then
              -- an unreadable record may be any stored entity
              why_not = "the pass read records it could not parse"
            elseif run.positional then
              why_not = "the pass was resumed by a count of records, which a remote list that changed meanwhile "
                .. "makes unreliable"
            elseif reader.complete_pass == false then
              why_not = "the provider cannot vouch that the pass saw every record"
            end
            run:apply_deletes(why_not)
            if pass_from_start and not session.dry then book:clear_unreadable(run.sync_id, started) end
            state.pass_open, state.pass_resume, state.pass_unreadable = 0, nil, 0
            if keeps_cursor then
              -- a full pass of an incremental sync: its cursor moves to the
              -- newest record the pass read
              local mark, id = source.max()
              if mark ~= nil and (state.cursor_mark == nil
                  or cursor.compare(mark, id, state.cursor_mark, state.cursor_id or "", settings.changed_kind) > 0) then
                state.cursor_mark, state.cursor_id = mark, id
              end
            end
          elseif checkpointed then
            state.pass_resume = json.encode(json.object({ checkpoint = reader:checkpoint() or json.null,
              positional = run.positional or nil }))
          else
            -- no checkpoint: the reader's position (a count of records of
            -- files that stay in place) is where the pass resumes
            state.pass_resume = json.encode(json.object({ offset = reader.position or 0, positional = true }))
          end
          book:save_state(run.sync_id, state)
          op.cursor_after = cursor_text(state)
          if sync.mapping_fingerprint and ((complete and maps_all) or state.fingerprint == nil) then
            -- the rows are the current mapping's (or, with no fingerprint
            -- kept yet, taken to be)
            book:set_fingerprint(run.sync_id, sync.mapping_fingerprint)
            state.fingerprint = sync.mapping_fingerprint
          end
        end, overlap)
        processed = processed + taken
        meter:tick(processed)
        if awaits and (source.moves_each_batch or complete) then
          -- files may leave the drop folder now: the commit that holds their
          -- records must outlive a power loss first (synchronous=NORMAL
          -- leaves it in the WAL, not yet on the disk)
          session.store:sync()
          -- the keys that failed in it: a queue leaves their messages
          -- to be delivered again
          local failed = {}
          for _, plan in ipairs(plans) do if plan[1] == "fail" then failed[plan.key] = true end end
          local moved, move_err = reader:committed(failed)
          if moved == nil and move_err then session.log("warn", string.format("sync \"%s\": %s", sync.name, move_err)) end
        end
        if exhausted or processed >= limit then break end
        -- between batches the loop turns once: signals are handled (and a
        -- daemon's other tasks, its HTTP server, go on) even while a file
        -- is read without any wait
        loop.sleep(0)
        -- asked to stop (a signal): the batch is committed, stop here
        if session.options.should_stop and session.options.should_stop() then
          stopped = true
          break
        end
      end
      run:finish_writes()
    end)
    if not ok and run.handed then
      -- the run failed: the batch handed off last commits, or (failed)
      -- is left out of the counts; its records are read again next run
      pcall(run.settle, run, true)
    end
    session.importing[sync.name] = nil
    run.batch, run.batch_keys = nil, nil
    if reader.close then pcall(reader.close, reader) end
    if not ok then error(result, 0) end
    if run.mapped_in_c then
      session.log("debug", string.format("sync \"%s\": %d of %d records mapped in C; %d batches committed on the "
        .. "writer thread", sync.name, run.mapped_in_c or 0, processed, run.handed_off or 0), { sync = sync.name,
        event = "record_path", c = run.mapped_in_c or 0, lua = processed - (run.mapped_in_c or 0),
        handed_off = run.handed_off or 0 })
    end
    meter:finish()
    -- A full run reads every record again, failed ones included; an
    -- incremental one retries the failures that are due.
    if complete and incremental and settings.retry then run:retry_failures(false) end
    if not session.dry then book:release_deferred(sync.name) end
    return { complete = complete, stopped = stopped, cursor = cursor_text(state),
      status = run.counts.failed > 0 and "failed" or (complete and "ok" or "partial") }
  end, cursor_text(before))
end

-- The plan of a record fetched by get (ok, record: pcall's results). A
-- record the remote does not have is gone: the deletes policy settles it;
-- unasked, one the id map does not know either is nothing to do rather
-- than a failure.
function Run:plan_fetched(remote_id, ok, record, unasked)
  if not ok then return fail_plan(ids.text(remote_id), "fetching it failed: " .. errors.message(record)) end
  if record == nil then return self:gone(remote_id, nil, not unasked) end
  return self:prepare(record)
end

-- Imports records by remote id (import) or by local id (refresh), in one
-- run logged as that operation.
local function run_single(session, sync, operation_name, remote_ids, options)
  return operation.run(session, sync, operation_name, operation_name, function(op)
    local run = new_run(session, sync, op)
    if type(run.provider.get) ~= "function" then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot fetch one record (it has no get)",
        sync.name, sync.provider.name))
    end
    local meter = progress.new(session.options, sync.name, function() return #remote_ids end,
      { sync = sync.name, operation = operation_name })
    for start = 1, #remote_ids, sync.import.batch do
      local plans = {}
      for i = start, math.min(#remote_ids, start + sync.import.batch - 1) do
        local remote_id = remote_ids[i]
        local fetched, record = pcall(provider_contract.call, sync.provider, run.provider, "get", sync.resource,
          remote_id, run.ctx:at(remote_id, nil, nil))
        plans[#plans + 1] = run:plan_fetched(remote_id, fetched, record, false)
        meter:tick(i)
      end
      local last = start + sync.import.batch - 1 >= #remote_ids
      run:write_batch(plans, function()
        if last and options and options.all and sync.mapping_fingerprint then
          -- every entity was fetched and mapped again
          session.ledger:set_fingerprint(run.sync_id, sync.mapping_fingerprint)
        end
      end)
      if not last then loop.sleep(0) end
      if not last and session.options.should_stop and session.options.should_stop() then
        meter:finish()
        return { complete = false, stopped = true, status = "partial" }
      end
    end
    meter:finish()
    if not session.dry then session.ledger:release_deferred(sync.name) end
    return { complete = true }
  end)
end

-- pull(session, sync, take) -> result: one run of operation "webhook"
-- that imports what take(op) hands over, batch by batch, until it hands
-- over nothing. take may wait (it fetches, in the run's task and under its
-- lease); it returns a list of { remote_id, ok, record } (get's results
-- through pcall) and a function called in that batch's commit, or nil.
-- A remote id the remote no longer has settles by the deletes policy, or
-- is nothing to do when the id map does not know it.
function M.pull(session, sync, take)
  return operation.run(session, sync, "webhook", "webhook", function(op)
    local run = new_run(session, sync, op)
    while true do
      local fetched, checkpoint = take(op)
      if not fetched then break end
      local plans = {}
      for i, f in ipairs(fetched) do plans[i] = run:plan_fetched(f.remote_id, f.ok, f.record, true) end
      run:write_batch(plans, checkpoint)
    end
    if not session.dry then session.ledger:release_deferred(sync.name) end
    return { complete = true }
  end)
end

function M.import_one(session, sync, remote_id)
  return run_single(session, sync, "import", { remote_id })
end

-- refresh: local ids to remote ids through the id map; nil means --all.
function M.refresh(session, sync, local_ids)
  local book = session.ledger
  local sync_id = book:sync_id(sync.name)
  local remote_ids
  if local_ids == nil then
    remote_ids = book:remote_ids(sync_id)
  else
    remote_ids = {}
    for _, local_id in ipairs(local_ids) do
      local id = math.tointeger(tonumber(local_id))
      local remote_id = id and book:remote_of(sync_id, id)
      if remote_id == nil then
        errors.raise("usage", string.format("sync \"%s\": local %s %s has no remote in the id map",
          sync.name, sync.entities[1], tostring(local_id)))
      end
      remote_ids[#remote_ids + 1] = remote_id
    end
  end
  return run_single(session, sync, "refresh", remote_ids, { all = local_ids == nil })
end

-- reset(session, sync) -> { mapped, failures }: forgets the cursor, the
-- checkpoint, the full pass in progress and the raw-line hashes, so the
-- next run reads and maps every record; says what it kept.
function M.reset(session, sync)
  local kept
  operation.run(session, sync, "reset", "reset", function(op)
    local book = session.ledger
    op:transaction(function() book:reset_import(op.sync_id) end)
    kept = { mapped = book:mapped_count(op.sync_id), failures = book:failure_count(op.sync_id) }
    return { complete = true, status = "ok" }
  end)
  return kept
end

-- retry(session, sync [, due_only]): retries the sync's failed entities
-- now, all of them (or those due, when due_only).
function M.retry(session, sync, due_only)
  return operation.run(session, sync, "retry", "retry", function(op)
    new_run(session, sync, op):retry_failures(not due_only)
    return { complete = true }
  end)
end

-- references imported on demand -------------------------------------------------------------

-- Imports remote_id of target now (on_missing = "import" of a referring
-- sync) through target's provider, in its own short transaction; returns
-- its local id. Runs outside any transaction: the referring record is
-- mapped before its batch is written.
function M.import_reference(session, target, remote_id)
  session.dependents = session.dependents or {}
  local run = session.dependents[target.name]
  if not run then
    run = new_run(session, target, nil)
    -- its failures are the referring entity's to report
    run.quiet, run.careful = true, true
    session.dependents[target.name] = run
  end
  local ok, record, err = pcall(provider_contract.call, target.provider, run.provider, "get", target.resource, remote_id,
    run.ctx:at(remote_id, nil, nil))
  if not ok or record == nil then
    errors.raise("entity", string.format("reference %s %s: the remote has no such entity%s", target.name,
      ids.text(remote_id), (not ok or err) and (" (" .. errors.message(ok and err or record) .. ")") or ""))
  end
  local plan = run:prepare(record)
  if plan[1] == "fail" then
    errors.raise("entity", string.format("reference %s %s could not be imported: %s", target.name,
      ids.text(remote_id), plan.message))
  end
  run:write_batch({ plan })
  local local_id = session.ledger:local_of(run.sync_id, remote_id)
  if local_id then return local_id end
  errors.raise("entity", string.format("reference %s %s: imported, but no %s came of it", target.name,
    ids.text(remote_id), target.entities[1]))
end

M.summary = operation.summary

return M
