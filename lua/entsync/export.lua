-- entsync.export: exports, the change-log drain and export conflicts.
--
-- Every sync that exports an entity is a consumer of its changes: the
-- capture triggers log each insert, update and delete of the entity's
-- tables (whoever writes them) in entsync_changes, and each exporting sync
-- keeps its own position in that log, its own failures and retries. A
-- change carries its origin, the sync whose import (or export answer) made
-- it: a sync never sends back what came from its own remote, and every
-- other exporting sync sends it on, so A -> store -> B works and nothing
-- echoes back to A.
--
-- One export of a local entity:
--   1. its rows (the primary and a split's other entities, found by their
--      link column) are mapped by the pipeline into the remote record;
--   2. a drain sends nothing when that record would import to the hash the
--      id map holds: the local write changed nothing the mapping carries;
--   3. an update first fetches the remote's current copy: one that differs
--      from what was last synced is a conflict, settled by the sync's
--      policy and recorded; the copy is also what a replacing update (PUT)
--      is merged over, so fields the mapping does not carry are kept, and
--      what a patching update (PATCH) is compared with, so only what
--      changed is sent; a drain through write_batch reads the copies of a
--      batch's updates with one get_batch call, when the provider has it;
--   4. what is about to be sent is recorded first (entsync_writes), so
--      after a crash its echo is known for ours;
--   5. the remote's answer is mapped back: the id map takes its hash, mark
--      and version, and the local rows its server-computed fields (stamped
--      with this sync as origin, so this sync does not send them back).

local conflicts = require "entsync.conflicts"
local context = require "entsync.context"
local core = require "entsync.core"
local errors = require "entsync.errors"
local ids = require "entsync.ids"
local json = require "entsync.json"
local loop = require "entsync.loop"
local operation = require "entsync.operation"
local pipeline = require "entsync.pipeline"
local sources = require "entsync.sources"

local M = {}

local null = json.null
local WAITING = 1e300
local UPSERT, DELETE = 1, 2

local Exporter = {}
Exporter.__index = Exporter

-- new(session, sync, op) -> exporter of one sync within an operation.
function M.new(session, sync, op)
  local book = session.ledger
  local provider = session:provider(sync.provider)
  return setmetatable({
    session = session, sync = sync, op = op, book = book, sync_id = book:sync_id(sync.name),
    provider = provider, resource = sync.export.resource or sync.resource,
    counts = op and op.counts or operation.new_counts(),
    writers = session:writers(sync),
    can_create = type(provider.create) == "function" or type(provider.write_batch) == "function",
    -- an update reads the remote's copy first (the conflict check, and what
    -- a replacing update is merged over), unless there is none to read (a
    -- file sink), or the provider's updates change only the fields they
    -- are given and its versions catch a remote change (the remote refuses
    -- a write on a stale version)
    reads_before_write = type(provider.get) == "function" and not provider.log_sink
      and not (provider.partial_updates and type(provider.version) == "function"),
  }, Exporter)
end

function Exporter:transaction(fn, ...)
  if self.op then return self.op:transaction(fn, ...) end
  return self.session:transaction(self.sync_id, fn, ...)
end

local function mark_of(sync, record)
  local mark = sync.changed_field and type(record) == "table" and record[sync.changed_field] or nil
  if mark == null then return nil end
  return mark
end

local provider_contract = require "entsync.provider"

-- A record's version token, when the provider keeps versions.
local function version_of(provider, record, handle)
  if type(provider.version) == "function" and type(record) == "table" then
    return provider_contract.call(handle or { name = "provider" }, provider, "version", record)
  end
  return nil
end

-- The contexts of one export: the export direction's, and the import
-- direction's for reading remote records (hashes, answers).
local function contexts(self, local_id, remote_id)
  return context.new(self.session, self.sync, "export"):at(remote_id, local_id, nil),
    context.new(self.session, self.sync, "import"):at(remote_id, local_id, nil)
end

-- The remote's answer (or, when it answered nothing, what was sent) is
-- what the remote now holds: the id map takes its hash, changed mark and
-- version, and the write in flight is done. The local rows take the
-- answer as an import maps it (server-computed fields, what after_map
-- derives) unless they changed while the write was on its way (that change
-- is in the log and goes out next), or keep_rows says the answer is older
-- than the rows; those writes are no other sync's to send: a field one
-- remote computes does not travel to the others, so remotes never
-- ping-pong. An answer the mapping cannot read still records the remote id
-- (raising after), so a create is never sent twice.
function Exporter:record(local_id, remote_id, sent, answer, rows_hash, in_ctx, keep_rows)
  local session, sync, book = self.session, self.sync, self.book
  local echo = type(answer) == "table" and next(answer) ~= nil and answer or sent
  in_ctx:at(remote_id, local_id, echo)
  local mapped_ok, mapped = pcall(pipeline.import, sync, echo, in_ctx)
  local hash = mapped_ok and mapped ~= pipeline.FILTERED and pipeline.hash(mapped) or nil
  local changed, version = mark_of(sync, echo), version_of(self.provider, echo, self.sync.provider)
  local write_back = mapped_ok and mapped ~= pipeline.FILTERED and not keep_rows
  local pass = book:state(self.sync_id).pass
  self.session:transaction(require("entsync.session").UNQUEUED, function()
    book:save_map(self.sync_id, local_id, remote_id, changed, hash, nil, version, pass)
    book:end_write(self.sync_id, local_id)
    if write_back and core.hash.of(session:rows_of(sync, local_id)) == rows_hash
        and session:rows_differ(sync, local_id, mapped) then
      session:write_rows(sync, self.writers, local_id, mapped)
    end
    if self.op and self.op.run_id then book:progress_run(self.op.run_id, self.counts, nil) end
  end)
  if not mapped_ok then
    errors.raise("entity", string.format("the remote's answer could not be mapped: %s", errors.message(mapped)))
  end
end

-- The remote changed since it was last synced: settled by the policy.
-- Returns true when the remote version stays (and was written locally).
function Exporter:remote_wins(local_id, entry, current, remote_hash, rows, in_ctx, change_at)
  local session, sync, book = self.session, self.sync, self.book
  local winner = self:transaction(function()
    return conflicts.settle(session, sync, {
      direction = "export", run_id = self.op and self.op.run_id, local_id = local_id, remote_id = entry.remote_id,
      local_rows = rows, remote_record = current, remote_hash = remote_hash, remote_changed = mark_of(sync, current),
      local_changed = change_at, ctx = in_ctx,
    })
  end)
  self.counts.conflicts = self.counts.conflicts + 1
  if winner ~= "remote" then return false end
  in_ctx:at(entry.remote_id, local_id, current)
  local mapped = pipeline.import(sync, current, in_ctx)
  self:transaction(function()
    if mapped ~= pipeline.FILTERED then session:write_rows(sync, self.writers, local_id, mapped) end
    book:save_map(self.sync_id, local_id, entry.remote_id, mark_of(sync, current), remote_hash, nil,
      version_of(self.provider, current, self.sync.provider), nil)
  end)
  return true
end

-- Fetches the remote's current copy of an entry and compares it with what
-- was last synced. Returns the copy and whether to go on (false: a
-- conflict the remote won, settled already).
function Exporter:check_remote(plan, options)
  local sync, book, provider = self.sync, self.book, self.provider
  local entry, local_id, in_ctx = plan.entry, plan.local_id, plan.in_ctx
  -- a copy read with the batch's others (get_batch) serves once: a read
  -- after a version conflict goes to the remote again
  local read, current, err = plan.prefetched, nil, nil
  plan.prefetched = nil
  if read then
    current = read.record
  else
    current, err = provider_contract.call(sync.provider, provider, "get", self.resource, entry.remote_id, plan.out_ctx)
  end
  if current == nil then
    errors.raise("entity", string.format("remote %s is gone (%s)", ids.text(entry.remote_id), tostring(err or "not found")))
  end
  in_ctx:at(entry.remote_id, local_id, current)
  local remote_hash = pipeline.import_hash(sync, current, in_ctx)
  -- a remote record the import filter skips is none of the import's
  -- business: it is no change to settle
  if remote_hash ~= entry.hash and remote_hash ~= pipeline.FILTERED then
    local w = book:write_of(self.sync_id, local_id)
    if w and w.hash == remote_hash then
      -- our own write reached the remote before a crash: not a change
      self:transaction(function()
        book:seen_remote(self.sync_id, local_id, remote_hash, mark_of(sync, current),
          version_of(provider, current, sync.provider))
      end)
    elseif self:remote_wins(local_id, entry, current, remote_hash, plan.rows, in_ctx, options.change_at) then
      return current, false
    end
  end
  return current, true
end

-- Fills in what an update sends, given the remote's current copy (nil
-- when the provider is not asked for it): the mapped fields merged over it
-- (a replacing update keeps what the mapping does not carry), only what
-- changed (a patching one), and the version to send.
function Exporter:fill_update(plan, current)
  local out_ctx, record = plan.out_ctx, plan.record
  plan.current = current
  plan.body = current and pipeline.merge(current, record, plan.leaves) or record
  plan.patch = current and pipeline.changes(current, record, plan.leaves) or record
  plan.version = current and version_of(self.provider, current, self.sync.provider) or plan.entry.version
  out_ctx.current, out_ctx.version, out_ctx.patch = current, plan.version, plan.patch
  plan.expected = pipeline.import_hash(self.sync, plan.body, plan.in_ctx:at(plan.remote_id, plan.local_id, plan.body))
end

-- plan(local_id, options) -> plan: what an export of one local entity
-- would send, worked out without sending anything. plan.done is set (an
-- outcome) when there is nothing to send: the mapping sees no change
-- (options.changed_only, the drain), or the remote won a conflict.
-- Otherwise plan.op is "create" or "update" with its body.
-- options.change_at: when the local change was made (newest policy).
-- options.read_later: an update that reads the remote's copy first is
-- left at plan.read = true, its copy to be read with others' (read_batch)
-- and its plan finished by plan_update.
-- Raises an entity error (or a defer error) for this entity's faults.
function Exporter:plan(local_id, options)
  options = options or {}
  local session, sync, book = self.session, self.sync, self.book
  local rows = session:rows_of(sync, local_id)
  if not rows[sync.entities[1]] then
    errors.raise("entity", string.format("local %s %s does not exist", sync.entities[1], tostring(local_id)))
  end
  local entry = book:by_local(self.sync_id, local_id)
  local out_ctx, in_ctx = contexts(self, local_id, entry and entry.remote_id)
  local plan = { local_id = local_id, entry = entry, rows = rows, rows_hash = core.hash.of(rows),
    out_ctx = out_ctx, in_ctx = in_ctx, remote_id = entry and entry.remote_id }
  plan.record, plan.leaves = pipeline.export(sync, rows, out_ctx)
  if not entry then
    if not self.can_create then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot create records", sync.name,
        sync.provider.name))
    end
    plan.op, plan.body = "create", plan.record
    local expected = pipeline.import_hash(sync, plan.record, in_ctx:at(nil, local_id, plan.record))
    plan.expected = expected ~= pipeline.FILTERED and expected or nil
    -- the same for every attempt of this create, and unlike any other
    -- store's (a store made again must not meet an old answer)
    plan.key = string.format("%s:%s:%d:%s", book:store_id(), sync.name, local_id, core.hash.hex(plan.record))
    return plan
  end
  if options.changed_only and entry.hash ~= nil then
    local local_hash = pipeline.import_hash(sync, plan.record, in_ctx:at(entry.remote_id, local_id, plan.record))
    if local_hash == entry.hash then plan.done = "unchanged" return plan end
  end
  plan.op = "update"
  if self.reads_before_write and options.read_later then
    plan.read = true
    return plan
  end
  return self:plan_update(plan, options)
end

-- plan_update(plan, options) -> plan: the rest of an update's plan, from
-- the remote's copy (read now with get, or plan.prefetched) on.
function Exporter:plan_update(plan, options)
  local current
  if self.reads_before_write then
    local go_on
    current, go_on = self:check_remote(plan, options or {})
    if not go_on then plan.done = "unchanged" return plan end
  end
  self:fill_update(plan, current)
  if current and plan.patch == nil then
    -- the remote holds these values already: the id map catches up
    self:record(plan.local_id, plan.entry.remote_id, plan.body, nil, plan.rows_hash, plan.in_ctx)
    plan.done = "unchanged"
  end
  return plan
end

-- Reads the remote's copies of planned updates through the provider's
-- get_batch, as many at once as the export's batch allows: each plan's
-- plan.prefetched = { record = its copy, or nil when the remote has none }.
-- on_failed(plan, err) for each plan of a read that failed.
function Exporter:read_batch(plans, on_failed)
  local sync, size, read = self.sync, self.sync.export.batch, {}
  for first = 1, #plans, size do
    local chunk, remote_ids = {}, {}
    for i = first, math.min(first + size - 1, #plans) do
      chunk[#chunk + 1] = plans[i]
      remote_ids[#remote_ids + 1] = plans[i].remote_id
    end
    local ok, list = pcall(provider_contract.call, sync.provider, self.provider, "get_batch", self.resource,
      remote_ids, context.new(self.session, sync, "export"))
    if ok and type(list) ~= "table" then
      ok, list = false, errors.new("provider", string.format("provider \"%s\" get_batch gave %s, not a list",
        sync.provider.name, type(list)))
    end
    for i, plan in ipairs(chunk) do
      if ok then
        plan.prefetched = { record = list[i] }
        read[#read + 1] = plan
      else
        on_failed(plan, list)
      end
    end
  end
  return read
end

-- Sends one planned write through the provider's own verb; returns the
-- outcome. A version conflict (the remote changed since its version was
-- read) is met like a conflict found before sending: the remote is read
-- again and the policy settles it, in this run; the local version, when it
-- wins, is sent once more on the new version.
function Exporter:send(plan, options)
  local sync, book, provider = self.sync, self.book, self.provider
  local handle, local_id = sync.provider, plan.local_id
  if plan.op == "create" then
    local earlier = book:write_of(self.sync_id, local_id)
    local key = self:transaction(function()
      return book:begin_write(self.sync_id, local_id, "create", plan.key, plan.expected)
    end)
    plan.resent = key ~= plan.key
    plan.out_ctx.idempotency_key = key
    local found = earlier and earlier.operation == "create" and self:find_created(plan)
    if found then
      -- the earlier attempt's record: what changed since goes as an update
      plan.resent = true
      return self:created(plan, found[sync.id_field], found)
    end
    local remote_id, answer = provider_contract.call(handle, provider, "create", self.resource, plan.body, plan.out_ctx)
    return self:created(plan, remote_id, answer)
  end
  self:transaction(function()
    book:begin_write(self.sync_id, local_id, "update", nil, plan.expected ~= pipeline.FILTERED and plan.expected or nil)
  end)
  local ok, answer = pcall(provider_contract.call, handle, provider, "update", self.resource, plan.remote_id, plan.body,
    plan.out_ctx)
  if not ok and errors.is(answer, "conflict") and not plan.retried then
    plan.retried = true
    local current, go_on = self:check_remote(plan, options or {})
    if not go_on then return "unchanged" end
    self:fill_update(plan, current)
    return self:send(plan, options)
  end
  if not ok then error(answer, 0) end
  self:record(local_id, plan.remote_id, plan.body, answer, plan.rows_hash, plan.in_ctx)
  return "updated"
end

-- The remote's records by their natural key's value (as text), read once
-- per export through the provider's listing; a value two records share
-- names neither (the match would be a guess).
function Exporter:natural_index(field)
  if self.by_natural_key then return self.by_natural_key end
  local sync = self.sync
  local reader, err = provider_contract.call(sync.provider, self.provider, "list", self.resource, { mode = "full" })
  if not reader then
    errors.raise("provider", string.format("sync \"%s\": looking for records created before a crash by natural_key "
      .. "\"%s\": %s", sync.name, field, tostring(err)))
  end
  reader = sources.guarded(sync.provider, reader)
  local index = {}
  while true do
    local record = reader:next()
    if record == nil then break end
    local value = record and record[field]
    if value ~= nil and value ~= null then
      local text = tostring(value)
      index[text] = index[text] == nil and record or false
    end
  end
  if reader.close then reader:close() end
  self.by_natural_key = index
  return index
end

-- find_created(plan) -> the remote record an earlier attempt of this
-- create made, or nil. An attempt whose answer was never recorded (the
-- process died meanwhile) may have reached the remote; without an
-- idempotency key the remote would make it twice, so when the export
-- declares natural_key (a field of the sent record whose value names one
-- remote record) the remote is looked in first.
function Exporter:find_created(plan)
  local field = self.sync.export.natural_key
  if not field then return nil end
  local value = plan.body[field]
  if value == nil or value == null then return nil end
  local found = self:natural_index(field)[tostring(value)]
  if found and found[self.sync.id_field] ~= nil then
    self.session.log("info", string.format("sync \"%s\": local %s %s: the create an earlier run sent reached the "
      .. "remote (found by natural_key %s = %s): not sent again", self.sync.name, self.sync.entities[1],
      tostring(plan.local_id), field, tostring(value)))
    return found
  end
  return nil
end

function Exporter:created(plan, remote_id, answer)
  local typed, why = ids.remote(remote_id)
  if typed == nil then
    errors.raise("entity", string.format("the provider's create gave no usable remote id (got %s)", why))
  end
  plan.remote_id = typed
  self:record(plan.local_id, typed, plan.body, answer, plan.rows_hash, plan.in_ctx, plan.resent)
  if plan.resent then
    -- the create of an earlier attempt, sent again under its key: the
    -- remote may answer with what that attempt carried, older than the
    -- rows now; what changed since goes out as an update
    self:export_one(plan.local_id, { changed_only = true })
  end
  return "created"
end

-- Sends planned writes through the provider's write_batch, as many at
-- once as the export's batch allows, and records each answer:
-- on_done(plan, ok, outcome_or_error). An item refused for a version
-- conflict is settled like any conflict, and sent again on its own when
-- the local version wins.
function Exporter:send_batch(plans, on_done)
  local sync, book, provider = self.sync, self.book, self.provider
  self:transaction(function()
    for _, plan in ipairs(plans) do
      if plan.op == "create" then
        local key = book:begin_write(self.sync_id, plan.local_id, "create", plan.key, plan.expected)
        plan.resent, plan.key = key ~= plan.key, key
      else
        book:begin_write(self.sync_id, plan.local_id, "update", nil,
          plan.expected ~= pipeline.FILTERED and plan.expected or nil)
      end
    end
  end)
  local items = {}
  self:transaction(function()
    for _, plan in ipairs(plans) do
      if plan.op == "delete" then book:begin_write(self.sync_id, plan.local_id, "delete", nil, nil) end
    end
  end)
  for i, plan in ipairs(plans) do
    items[i] = { op = plan.op, id = plan.remote_id, record = plan.body, patch = plan.patch, version = plan.version,
      key = plan.key, current = plan.current, local_id = plan.local_id }
  end
  local ok, results = pcall(provider_contract.call, sync.provider, provider, "write_batch", self.resource, items,
    context.new(self.session, sync, "export"))
  for i, plan in ipairs(plans) do
    local result = ok and type(results) == "table" and results[i]
    if not ok then
      on_done(plan, false, results)
    elseif type(result) ~= "table" then
      on_done(plan, false, errors.new("provider", string.format("provider \"%s\" write_batch gave no answer for "
        .. "item %d of %d", sync.provider.name, i, #plans)))
    elseif result.ok and plan.op == "delete" then
      on_done(plan, pcall(self.deleted, self, plan.local_id, true))
    elseif result.ok then
      local done, outcome = pcall(function()
        if plan.op == "create" then return self:created(plan, result.id, result.answer) end
        self:record(plan.local_id, plan.remote_id, plan.body, result.answer, plan.rows_hash, plan.in_ctx)
        return "updated"
      end)
      on_done(plan, done, outcome)
    elseif result.conflict and plan.op == "update" then
      -- the remote changed since its version was read: settled now
      on_done(plan, pcall(function()
        local current, go_on = self:check_remote(plan, plan.options or {})
        if not go_on then return "unchanged" end
        self:fill_update(plan, current)
        plan.retried = true
        return self:send(plan, plan.options)
      end))
    else
      on_done(plan, false, errors.new(result.conflict and "conflict" or "entity",
        string.format("the remote refused it: %s", tostring(result.error or "no reason given"))))
    end
  end
end

-- export_one(local_id, options) -> outcome, remote_id: plan, then send.
-- outcome: "created", "updated", or "unchanged" (nothing the remote would
-- see changed, or a conflict the remote won).
function Exporter:export_one(local_id, options)
  local plan = self:plan(local_id, options)
  if plan.done then return plan.done, plan.remote_id end
  return self:send(plan, options), plan.remote_id
end

-- Deletes the remote of a deleted local entity (export deletes =
-- "delete"), or only forgets it ("ignore").
function Exporter:export_delete(local_id)
  local sync, book, provider = self.sync, self.book, self.provider
  local entry = book:by_local(self.sync_id, local_id)
  if not entry then return "unchanged" end
  local deleting = sync.export.deletes == "delete"
  if deleting then
    if type(provider.delete) ~= "function" then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot delete records", sync.name,
        sync.provider.name))
    end
    self:transaction(function() book:begin_write(self.sync_id, local_id, "delete", nil, nil) end)
    local out_ctx = contexts(self, local_id, entry.remote_id)
    out_ctx.version = entry.version
    provider_contract.call(sync.provider, provider, "delete", self.resource, entry.remote_id, out_ctx)
  end
  return self:deleted(local_id, deleting)
end

-- The remote of a deleted local entity is gone (or is left, with deletes
-- = "ignore"): the id map forgets it.
function Exporter:deleted(local_id, deleting)
  self:transaction(function()
    self.book:forget(self.sync_id, local_id)
    self.book:end_write(self.sync_id, local_id)
  end)
  return deleting and "deleted" or "unchanged"
end

-- A delete to send through write_batch, or nil when there is nothing to
-- send (no remote, or deletes = "ignore": export_delete settles those).
function Exporter:plan_delete(local_id)
  if self.sync.export.deletes ~= "delete" then return nil end
  local entry = self.book:by_local(self.sync_id, local_id)
  if not entry then return nil end
  return { op = "delete", local_id = local_id, remote_id = entry.remote_id, version = entry.version }
end

-- failures -------------------------------------------------------------------------------

function Exporter:failed(local_id, err)
  local sync, book = self.sync, self.book
  local message = errors.message(err, true)
  self.counts.failed = self.counts.failed + 1
  local entry = book:by_local(self.sync_id, local_id)
  if self.counts.failed <= 10 then
    local fields = { sync = sync.name, operation = self.op and self.op.operation or "export", event = "failure",
      entity = sync.entities[1], local_id = local_id, remote_id = entry and entry.remote_id or nil }
    if errors.is(err) and err.field then fields.field, fields.file, fields.line = err.field, err.file, err.line end
    self.session.log("error", string.format("%s local %s %s%s: %s", sync.name, sync.entities[1], tostring(local_id),
      entry and (" (remote " .. ids.text(entry.remote_id) .. ")") or "", message), fields)
  end
  local key = tostring(local_id)
  local waits_for = errors.is(err) and err.waits_for or nil
  -- what the export would send, when it can still be built: the payload
  local payload
  local built, preview = pcall(M.preview, self.session, sync, local_id)
  if built then
    local encoded, text = pcall(json.encode, preview.record)
    payload = encoded and text or nil
  end
  self:transaction(function()
    local attempts = book:failure_attempts(self.sync_id, "export", key) + 1
    local next_at = waits_for and WAITING or core.sys.now() + math.min(30 * 2 ^ (attempts - 1), 6 * 3600)
    book:save_failure(self.sync_id, "export", { key = key, local_id = local_id, remote_id = entry and entry.remote_id,
      error = message, payload = payload, attempts = attempts, next_at = next_at, waits_for = waits_for })
  end)
end

function Exporter:succeeded(local_id, outcome, failing)
  self.counts[outcome] = self.counts[outcome] + 1
  local key = tostring(local_id)
  if failing[key] then
    self:transaction(function() self.book:clear_failure(self.sync_id, "export", key) end)
    failing[key] = nil
  end
end

-- Runs jobs (functions returning an outcome) with up to `width` of them in
-- flight, as tasks of the loop; on_done(i, ok, outcome_or_error) after
-- each. Returns when all are done.
local function run_concurrently(width, jobs, on_done)
  local next_job = 0
  local workers = {}
  for w = 1, math.max(1, math.min(width, #jobs)) do
    workers[w] = loop.spawn(function()
      while true do
        next_job = next_job + 1
        local i = next_job
        if i > #jobs then return end
        local ok, outcome = pcall(jobs[i])
        on_done(i, ok, outcome)
      end
    end)
  end
  for _, worker in ipairs(workers) do
    local ok, err = worker:wait()
    if not ok then error(err, 0) end
  end
end

-- How many exports run at once: the provider's concurrency, or twice it
-- when the provider caps its requests itself (provider.limits, as
-- http_json's; providers/README.md). A task mapping an answer or writing
-- the store then holds no slot: another task's request takes it, so the
-- remote always has `concurrency` requests to answer, where a task a slot
-- left the slot idle for each answer's Lua and SQLite.
local function width_of(exporter)
  local width = exporter.sync.provider.config.concurrency or 4
  return exporter.provider.limits and 2 * width or width
end

-- operations -------------------------------------------------------------------------------

-- export SYNC LOCAL_ID...: exports the listed local entities (of the
-- sync's primary entity) now, whatever they hold.
function M.export_list(session, sync, local_ids)
  return operation.run(session, sync, "export", "export", function(op)
    local exporter = M.new(session, sync, op)
    local failing = exporter.book:failing(exporter.sync_id, "export")
    local jobs = {}
    for i, id in ipairs(local_ids) do jobs[i] = function() return exporter:export_one(id) end end
    run_concurrently(width_of(exporter), jobs, function(i, ok, outcome)
      if ok then exporter:succeeded(local_ids[i], outcome, failing) else exporter:failed(local_ids[i], outcome) end
    end)
    return { complete = true, export = true }
  end)
end

-- The consumers of one entity: the syncs exporting it as their primary.
local function consumers_of(job, entity)
  local out = {}
  for _, name in ipairs(job.sync_order) do
    local other = job.syncs[name]
    if other.export and other.entities[1] == entity then out[#out + 1] = other end
  end
  return out
end

-- Drops the change rows every consumer of the entity has passed.
local function prune(session, sync, entity_ids)
  local book = session.ledger
  local lowest
  for _, consumer in ipairs(consumers_of(session.job, sync.entities[1])) do
    local position = book:position(book:sync_id(consumer.name)) or 0
    lowest = lowest and math.min(lowest, position) or position
  end
  if lowest and lowest > 0 then book:prune_changes(lowest, entity_ids) end
end

-- One batch of the log: the latest change per local id, in log order.
local function latest_changes(rows)
  local by_id, order, last = {}, {}, 0
  for _, row in ipairs(rows) do
    last = math.max(last, row.seq)
    if row.local_id then
      local seen = by_id[row.local_id]
      if not seen then
        seen = { local_id = row.local_id }
        by_id[row.local_id] = seen
        order[#order + 1] = seen
      end
      seen.operation = row.operation
      if row.at then seen.at = math.max(seen.at or 0, row.at) end
    end
  end
  return order, last
end

-- Drains the change log for a sync that exports on change: first the
-- export failures that are due, then the changes past its position, in
-- batches, `concurrency` at a time. The position moves past a batch once
-- every change in it was sent or stored as a failure (retried with
-- backoff), so a killed drain sends a batch again at worst, and finds
-- what it had sent unchanged.
function M.drain(session, sync)
  return operation.run(session, sync, "outbox", "export", function(op)
    local exporter = M.new(session, sync, op)
    local book, sync_id = exporter.book, exporter.sync_id
    local entity_ids = json.encode({ book:entity_id(sync.entities[1]) })
    local failing = book:failing(sync_id, "export")
    local width = width_of(exporter)
    local batched = type(exporter.provider.write_batch) == "function"
    -- with get_batch too, the copies a batch's updates are checked against
    -- are read at once, after planning
    local read_later = batched and exporter.reads_before_write and type(exporter.provider.get_batch) == "function"
    local function finish(plan, ok, outcome)
      if ok then exporter:succeeded(plan.local_id, outcome, failing) else exporter:failed(plan.local_id, outcome) end
    end
    -- The planned updates waiting for their copies, read at once; the
    -- plans left to send.
    local function read_copies(plans)
      local ready, reading = {}, {}
      for _, plan in ipairs(plans) do
        if plan.read then reading[#reading + 1] = plan else ready[#ready + 1] = plan end
      end
      if #reading == 0 then return plans end
      for _, plan in ipairs(exporter:read_batch(reading, function(plan, err) finish(plan, false, err) end)) do
        local ok, err = pcall(exporter.plan_update, exporter, plan, plan.options)
        if not ok then finish(plan, false, err)
        elseif plan.done then finish(plan, true, plan.done)
        else ready[#ready + 1] = plan end
      end
      return ready
    end
    local function send(items)
      local jobs, plans = {}, {}
      for i, item in ipairs(items) do
        jobs[i] = function()
          if item.operation == DELETE then
            local plan = batched and exporter:plan_delete(item.local_id)
            if not plan then return exporter:export_delete(item.local_id) end
            plans[#plans + 1] = plan
            return nil
          end
          if item.gone_ok and not session.store:value(string.format('SELECT 1 FROM "%s" WHERE id = ?1',
              sync.entities[1]), item.local_id) then
            return "unchanged" -- deleted since: its delete follows in the log
          end
          local options = { changed_only = true, change_at = item.at, read_later = read_later }
          if not batched then return exporter:export_one(item.local_id, options) end
          -- with a batch verb, the writes are planned here and sent together
          local plan = exporter:plan(item.local_id, options)
          if plan.done then return plan.done end
          plan.options, plan.index = options, i
          plans[#plans + 1] = plan
          return nil
        end
      end
      run_concurrently(width, jobs, function(i, ok, outcome)
        if not ok then
          exporter:failed(items[i].local_id, outcome)
        elseif outcome ~= nil then
          exporter:succeeded(items[i].local_id, outcome, failing)
        end
      end)
      if read_later then plans = read_copies(plans) end
      if #plans > 0 then exporter:send_batch(plans, finish) end
    end
    -- failures that came due
    local retries = {}
    for _, row in ipairs(book:due_failures(sync_id, "export", core.sys.now())) do
      local id = math.tointeger(tonumber(row.key))
      if id then retries[#retries + 1] = { local_id = id, operation = UPSERT, gone_ok = true } end
    end
    if #retries > 0 then
      op.counts.retried = op.counts.retried + #retries
      send(retries)
    end
    local stopped = false
    local queued = book:pending_count(book:position(sync_id) or 0, entity_ids, sync_id)
    local meter = require("entsync.progress").new(session.options, sync.name .. " export",
      function() return queued end, { sync = sync.name, operation = "outbox" })
    local sent = 0
    while true do
      local position = book:position(sync_id) or 0
      local rows = book:changes(position, entity_ids, sync_id, sync.export.batch)
      if #rows == 0 then break end
      local items, last = latest_changes(rows)
      for _, item in ipairs(items) do item.gone_ok = true end
      send(items)
      exporter:transaction(function() book:set_position(sync_id, last) end)
      sent = sent + #rows
      meter:tick(sent)
      loop.sleep(0) -- signals, and the daemon's other tasks, between batches
      if session.options.should_stop and session.options.should_stop() then
        stopped = true
        break
      end
    end
    meter:finish()
    exporter:transaction(function() prune(session, sync, entity_ids) end)
    return { complete = not stopped, stopped = stopped, export = true }
  end)
end

-- Whether a drain of sync has anything to do now: changes past its
-- position, or failures due.
function M.has_work(session, sync)
  local book = session.ledger
  local sync_id = book:sync_id(sync.name, true)
  if not sync_id then return false end
  local entity_id = book:entity_id(sync.entities[1], true)
  if not entity_id then return false end
  if book:pending_count(book:position(sync_id) or 0, json.encode({ entity_id }), sync_id) > 0 then return true end
  local due = book:next_due(sync_id, "export")
  return due ~= nil and due <= core.sys.now()
end

-- When the next export failure of sync comes due (nil: none waits).
function M.next_due(session, sync)
  local sync_id = session.ledger:sync_id(sync.name, true)
  local due = sync_id and session.ledger:next_due(sync_id, "export")
  if due and due < WAITING then return due end
  return nil
end

-- What an export of a local entity would send, without sending anything:
-- { local_id, remote_id, operation, record }.
function M.preview(session, sync, local_id)
  local book = session.ledger
  local rows = session:rows_of(sync, local_id)
  if not rows[sync.entities[1]] then
    errors.raise("usage", string.format("local %s %s does not exist", sync.entities[1], tostring(local_id)))
  end
  local entry = book:by_local(book:sync_id(sync.name), local_id)
  local ctx = context.new(session, sync, "export"):at(entry and entry.remote_id, local_id, nil)
  return { local_id = local_id, remote_id = entry and entry.remote_id or null,
    operation = entry and "update" or "create", record = pipeline.export(sync, rows, ctx) }
end

-- dry_drain(session, sync) -> result: what a drain would send now, worked
-- out without sending (a dry run): the counts, and with --diff each
-- entity's changes. An update reads the remote's copy first, as a drain
-- does (the conflict check), so what is shown is what would change there.
function M.dry_drain(session, sync)
  return operation.run(session, sync, "outbox", "export", function(op)
    local exporter = M.new(session, sync, op)
    local book, sync_id, counts = exporter.book, exporter.sync_id, op.counts
    local entity_id = book:entity_id(sync.entities[1], true)
    if not entity_id then return { complete = true, export = true, dry = true } end
    local entity_ids = json.encode({ entity_id })
    local items = {}
    for _, row in ipairs(book:due_failures(sync_id, "export", core.sys.now())) do
      local id = math.tointeger(tonumber(row.key))
      if id then items[#items + 1] = { local_id = id, operation = UPSERT } end
    end
    local changes = latest_changes(book:changes(book:position(sync_id) or 0, entity_ids, sync_id, -1))
    local seen = {}
    for _, item in ipairs(items) do seen[item.local_id] = item end
    for _, item in ipairs(changes) do
      if seen[item.local_id] then seen[item.local_id].operation = item.operation
      else items[#items + 1] = item end
    end
    local diffing = session.options.diff
    local diff = require "entsync.diff"
    local shown = {}
    local jobs = {}
    for i, item in ipairs(items) do
      jobs[i] = function()
        if item.operation == DELETE then
          local entry = book:by_local(sync_id, item.local_id)
          if not entry then return "unchanged" end
          shown[i] = diff.export_delete(sync, item.local_id, entry.remote_id, sync.export.deletes == "delete")
          return sync.export.deletes == "delete" and "deleted" or "unchanged"
        end
        if not session.store:value(string.format('SELECT 1 FROM "%s" WHERE id = ?1', sync.entities[1]),
            item.local_id) then
          return "unchanged" -- deleted since: its delete follows
        end
        local plan = exporter:plan(item.local_id, { changed_only = true, change_at = item.at })
        if plan.done then return plan.done end
        shown[i] = diff.export(sync, plan)
        return plan.op == "create" and "created" or "updated"
      end
    end
    run_concurrently(width_of(exporter), jobs, function(i, ok, outcome)
      if ok then
        counts[outcome] = counts[outcome] + 1
      else
        counts.failed = counts.failed + 1
        shown[i] = diff.export_failure(sync, items[i].local_id, errors.message(outcome, true))
      end
    end)
    if diffing then
      local list = {}
      for i = 1, #items do if shown[i] then list[#list + 1] = shown[i] end end
      diff.show(session, list)
    end
    return { complete = true, export = true, dry = true }
  end)
end

M.summary = operation.export_summary

return M
