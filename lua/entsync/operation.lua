-- entsync.operation: the one protocol every run follows.
--
-- Import, single import, refresh, retry, export and the outbox drain are
-- each an operation of one sync: the sync's lease is taken (waiting up to
-- --wait for another run to let go, or taking over a lease whose holder
-- died or expired) and renewed by a task of its own while the operation
-- lives, however long it waits on the network; a run record is written;
-- the body works in short write transactions (op:transaction); at the end
-- the run record gets its status and counts, the lease is released, and a
-- summary is returned. An error ends the run recorded with it (the
-- transaction in progress rolled back, the lease released) and is raised
-- again.

local core = require "entsync.core"
local errors = require "entsync.errors"
local loop = require "entsync.loop"

local M = {}

-- The lease's life in seconds: 60, or ENTSYNC_LEASE_SECONDS (a positive
-- number; the renewal task renews it every third of it).
local function lease_seconds()
  local value = os.getenv("ENTSYNC_LEASE_SECONDS")
  if value == nil or value == "" then return 60 end
  local n = tonumber(value)
  if not n or n <= 0 or n ~= n or n == math.huge then
    errors.raise("usage", string.format("ENTSYNC_LEASE_SECONDS must be a positive number of seconds, not %q", value))
  end
  return n
end
M.lease_seconds = lease_seconds
M.OUTCOMES = { "created", "updated", "unchanged", "stale", "failed", "deleted" }

local function new_counts()
  local counts = { skipped = 0, retried = 0, filtered = 0, conflicts = 0 }
  for _, outcome in ipairs(M.OUTCOMES) do counts[outcome] = 0 end
  return counts
end
M.new_counts = new_counts

local Op = {}
Op.__index = Op

local function describe_holder(holder)
  return string.format("pid %s on %s (owner %s), heartbeat %.0fs ago, lease expires in %.0fs",
    tostring(holder.pid), tostring(holder.host), tostring(holder.owner),
    core.sys.now() - (holder.heartbeat_at or 0), (holder.expires_at or 0) - core.sys.now())
end
M.describe_holder = describe_holder

-- Takes the sync's lease, waiting up to session.options.wait seconds. The
-- wait sleeps until the store changes (the holder's release is a commit)
-- or the holder's lease would expire, never spinning.
local function acquire(session, sync, ttl)
  local name = "sync:" .. sync.name
  local deadline = loop.now() + (session.options.wait or 0)
  local watch
  while true do
    local ok, info = core.lock.acquire(session.store, name, session.owner, ttl)
    if ok then
      if watch then watch:close() end
      if info then
        session.log("warn", string.format("sync \"%s\": took over a lease whose holder is %s: %s", sync.name,
          info.reason, describe_holder(info.holder)))
      end
      return
    end
    local left = deadline - loop.now()
    if left <= 0 then
      if watch then watch:close() end
      errors.raise("lock", string.format("sync \"%s\" is locked by another run: %s", sync.name, describe_holder(info)),
        { holder = info })
    end
    watch = watch or loop.watch_file(session.store:path())
    local expires = (info.expires_at or 0) - core.sys.now()
    watch:wait(math.max(0.01, math.min(left, expires + 0.01)))
  end
end

-- Renews the lease every third of its life while the operation lives; a
-- lease found taken by another run marks the operation lost, and its next
-- checkpoint stops it.
local function renew(op)
  local session, name, ttl = op.session, "sync:" .. op.sync.name, op.lease_ttl
  while not op.finished do
    loop.sleep(ttl / 3)
    if op.finished then return end
    local ok, kept = pcall(core.lock.heartbeat, session.store, name, session.owner, ttl)
    if ok and not kept then
      op.lost = true
      return
    elseif not ok then
      session.log("warn", string.format("sync \"%s\": renewing the lease failed (tried again in %.3gs): %s",
        op.sync.name, ttl / 3, errors.message(kept, true)))
    end
  end
end

-- Raises when the lease was lost to another run: the operation stops at
-- this checkpoint rather than write beside that run.
function Op:check()
  if self.lost then
    errors.raise("lock", string.format("sync \"%s\": the lease was lost to another run", self.sync.name))
  end
end

-- transaction(fn, ...) -> fn's results: one write transaction whose
-- writes are stamped with this sync as their origin; the run record's
-- counts are saved in it too, so they always match what was committed.
-- fn, then the run record's counts saved, in the transaction in progress.
local function with_progress(op, fn)
  return function(...)
    local results = table.pack(fn(...))
    if op.run_id then op.session.ledger:progress_run(op.run_id, op.counts, op.cursor_after) end
    return table.unpack(results, 1, results.n)
  end
end

function Op:transaction(fn, ...)
  self:check()
  local results = table.pack(self.session:transaction(self.sync_id, with_progress(self, fn), ...))
  self:settled(self.counts)
  return table.unpack(results, 1, results.n)
end

-- hand_off(program, fn): as transaction(fn), its commit on the store's
-- writer thread (Session:hand_off); settled(counts) once it committed.
function Op:hand_off(program, fn)
  self:check()
  self.session:hand_off(self.sync_id, program, with_progress(self, fn))
end

-- counts are committed: what a run that ends in a refusal of the machine
-- reports as done
function Op:settled(counts)
  for k, v in pairs(counts) do self.committed[k] = v end
end

-- "800 created, 0 updated, ..." of the counts committed so far.
local function committed_counts(op)
  local parts = {}
  for _, outcome in ipairs(M.OUTCOMES) do
    parts[#parts + 1] = string.format("%d %s", op.committed[outcome], outcome)
  end
  return table.concat(parts, ", ")
end

function Op:count(outcome, n)
  self.counts[outcome] = self.counts[outcome] + (n or 1)
end

local function as_entsync_error(e)
  if errors.is(e) then return e end
  return errors.new("internal", tostring(e), { traceback = debug.traceback(tostring(e), 2) })
end

-- An error that ends a run names its sync (the remote's and the provider's
-- own messages do not know it; a URL holding the sync's name is no naming).
-- What the machine refused (the store's file, the disk) names the job
-- file as well: the message names the store, not whose it is.
local function naming(sync, e, session)
  local named = 'sync "' .. sync.name .. '"'
  if (e.kind == "provider" or e.kind == "http" or e.kind == "conflict") and not e.message:find(named, 1, true) then
    e.message = string.format("sync \"%s\": %s", sync.name, e.message)
  elseif errors.environment[e.kind] and not e.named then
    e.named = true
    e.message = string.format("%s: sync \"%s\": %s", session and session.job.display_path or "?", sync.name, e.message)
  end
  return e
end

-- run(session, sync, operation, mode, body [, cursor_before]) -> result.
-- cursor_before: the import cursor the run starts from, for its record.
-- body(op) returns a
-- table { status = "ok"|"partial"|"failed" (default: from the counts),
-- complete, stopped, cursor, ... }; the result is that table with sync,
-- counts and status filled in. op: session, sync, sync_id, counts,
-- run_id, transaction, count, check. Runs inside the loop (one is started
-- for it when none runs).
function M.run(session, sync, operation, mode, body, cursor_before)
  if not loop.running() then return loop.run(M.run, session, sync, operation, mode, body, cursor_before) end
  local book = session.ledger
  local op = setmetatable({ session = session, sync = sync, operation = operation, counts = new_counts(),
    committed = new_counts(), cursor_before = cursor_before }, Op)
  local dry = session.dry
  -- what the run's tasks do on its behalf (HTTP requests) counts for it
  local context = loop.context()
  local outer_sync = rawget(context, "sync")
  context.sync = sync.name
  if not dry then
    op.lease_ttl = lease_seconds()
    local taken, err = pcall(acquire, session, sync, op.lease_ttl)
    if not taken then
      context.sync = outer_sync
      error(naming(sync, as_entsync_error(err), session), 0)
    end
  end
  local renewer = not dry and loop.spawn(renew, op)
  local ok, result = xpcall(function()
    op.sync_id = book:sync_id(sync.name, dry) or -1
    if not dry then
      op.run_id = book:start_run(op.sync_id, operation, mode, op.cursor_before)
    end
    return body(op) or {}
  end, as_entsync_error)
  op.finished = true
  context.sync = outer_sync
  if renewer then renewer:cancel() end
  if not ok then
    result = naming(sync, result, session)
    if errors.environment[result.kind] then
      result.message = string.format("%s (this run committed: %s)", result.message, committed_counts(op))
      result.counts = op.committed
    end
    -- the first error wins: a rollback that fails too must not hide it
    pcall(session.rollback, session)
    if op.run_id and session.store:is_open() then
      pcall(book.finish_run, book, op.run_id, "error", op.counts, op.cursor_after, result.message)
    end
  else
    result.sync, result.counts, result.operation = sync.name, op.counts, operation
    result.status = result.status or (op.counts.failed > 0 and "failed" or "ok")
    if op.run_id then
      local done, err = pcall(book.finish_run, book, op.run_id, result.status, op.counts, result.cursor, nil)
      if not done then ok, result = false, as_entsync_error(err) end
    end
  end
  if not dry and session.store:is_open() then
    local released, err = pcall(core.lock.release, session.store, "sync:" .. sync.name, session.owner)
    -- a failure to let go must not hide the error that ended the run
    if not released and ok then ok, result = false, as_entsync_error(err) end
  end
  if not ok then error(result, 0) end
  return result
end

-- summaries --------------------------------------------------------------------------

-- The summary line of an import-side run's counts.
function M.summary(result, seconds, dry)
  local c = result.counts
  local parts = {}
  local verbs = dry and { created = "would create", updated = "would update", deleted = "would delete" } or {}
  for _, outcome in ipairs(M.OUTCOMES) do
    parts[#parts + 1] = string.format("%d %s", c[outcome], verbs[outcome] or outcome)
  end
  local line = string.format("%s: %s", result.sync, table.concat(parts, ", "))
  if c.skipped > 0 then line = line .. string.format(", %d before the cursor", c.skipped) end
  if c.filtered > 0 then line = line .. string.format(", %d filtered out", c.filtered) end
  if c.conflicts > 0 then line = line .. string.format(", %d conflicts", c.conflicts) end
  if c.retried > 0 then line = line .. string.format(", %d retried", c.retried) end
  if result.stopped then
    line = line .. " (stopped: the next run continues here)"
  elseif result.complete == false then
    line = line .. " (limit reached: the next run continues here)"
  end
  if seconds then line = line .. string.format(" in %.2fs", seconds) end
  if dry then line = line .. " (dry run: nothing was written)" end
  return line
end

-- The summary line of an export-side run's counts.
function M.export_summary(result, seconds, dry)
  local c = result.counts
  local line = string.format("%s: %s %d created, %d updated, %d deleted, %d unchanged, %d failed", result.sync,
    dry and "would export" or "exported", c.created, c.updated, c.deleted, c.unchanged, c.failed)
  if c.conflicts > 0 then line = line .. string.format(", %d conflicts", c.conflicts) end
  if result.stopped then line = line .. " (stopped: the next run continues here)" end
  if seconds then line = line .. string.format(" in %.2fs", seconds) end
  if dry then line = line .. " (dry run: nothing was sent or written)" end
  return line
end

return M
