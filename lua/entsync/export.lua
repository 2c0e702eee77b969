-- entsync.export: exports, the outbox drain and conflicts.
--
-- A local entity is mapped in the export direction (paths written into a
-- remote record, export callbacks, references turned back into remote
-- ids) and created on the remote when the id map has no remote id for it,
-- updated otherwise. The id map then records the remote's answer as an
-- import would see it (its changed mark and mapped content hash), so the
-- echo of our own write that comes back with the next import is found
-- unchanged: nothing is written and nothing is queued.

local cjson = require "cjson"
local core = require "entsync.core"
local errors = require "entsync.errors"
local http = require "entsync.http"
local map = require "entsync.map"
local mapping = require "entsync.mapping"

local M = {}

local null = cjson.null

local id_text = require("entsync.cursor").id_text

local SQL = {
  map_local = "SELECT remote_id FROM entsync_idmap WHERE sync = ?1 AND entity = ?2 AND local_id = ?3",
  map_remote = "SELECT entity, local_id, hash, changed FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2",
  save_map = [[INSERT INTO entsync_idmap (sync, entity, local_id, remote_id, changed, hash, raw_hash, synced_at, seen_pass)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, (SELECT pass FROM entsync_state WHERE sync = ?1))
    ON CONFLICT (sync, remote_id, entity) DO UPDATE SET local_id = excluded.local_id, changed = excluded.changed,
      hash = excluded.hash, raw_hash = NULL, synced_at = excluded.synced_at, gone_at = NULL]],
  forget_remote = "DELETE FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2",
  forget_local = "DELETE FROM entsync_idmap WHERE sync = ?1 AND entity = ?2 AND local_id = ?3",
  due = [[SELECT id, entity, local_id, operation, queued_at, attempts FROM entsync_outbox
    WHERE entity IN (SELECT value FROM json_each(?1)) AND (next_at IS NULL OR next_at <= ?2)
    ORDER BY id LIMIT ?3]],
  pending = "SELECT id, queued_at FROM entsync_outbox WHERE entity = ?1 AND local_id = ?2",
  done = "DELETE FROM entsync_outbox WHERE id = ?1 AND queued_at = ?2",
  drop = "DELETE FROM entsync_outbox WHERE entity = ?1 AND local_id = ?2",
  retry_later = [[UPDATE entsync_outbox SET attempts = attempts + 1, last_error = ?2, next_at = ?3
    WHERE id = ?1]],
  conflict = [[INSERT INTO entsync_conflicts (run_id, sync, entity, local_id, remote_id, local_hash, remote_hash,
    policy, winner, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)]],
  start_run = [[INSERT INTO entsync_runs (sync, operation, mode, started_at, status, pid, host)
    VALUES (?1, ?2, 'export', ?3, 'running', ?4, ?5)]],
  finish_run = [[UPDATE entsync_runs SET ended_at = ?2, status = ?3, created = ?4, updated = ?5, deleted = ?6,
    failed = ?7, unchanged = ?8, error = ?9 WHERE id = ?1]],
}
M.SQL = SQL

-- Runs fn inside one short write transaction, rolled back if it fails.
local function in_transaction(store, fn)
  store:run("BEGIN IMMEDIATE")
  local ok, err = pcall(fn)
  if not ok then
    store:run("ROLLBACK")
    error(err, 0)
  end
  store:run("COMMIT")
end

-- The local row of entity id, or nil.
function M.local_row(store, entity, id)
  return store:row(string.format('SELECT * FROM "%s" WHERE id = ?1', entity), id)
end
local local_row = M.local_row

local function set_path(out, keys, value)
  local node = out
  for i = 1, #keys - 1 do
    local key = keys[i]
    if type(node[key]) ~= "table" then node[key] = {} end
    node = node[key]
  end
  node[keys[#keys]] = value
end

-- A stored value as the remote gets it: json decoded, booleans as such.
local function remote_value(field, value)
  if value == nil then return null end
  if field.type == "json" and type(value) == "string" then
    local ok, decoded = pcall(cjson.decode, value)
    return ok and decoded or value
  end
  if field.type == "boolean" then return value ~= 0 and value ~= false end
  return value
end

-- Maps the local rows of one remote entity ({ entity = row }) to the
-- remote record.
function M.remote_record(session, sync, rows, ctx)
  local out = {}
  for _, entity in ipairs(sync.mapping.entities) do
    local row = rows[entity.name]
    if row then
      for _, field in ipairs(entity.fields) do
        local value = remote_value(field, row[field.name])
        if map.is_refs(field.import) and value ~= null then
          local target = session.job.syncs[field.import.sync]
          local function remote_of(id)
            return M.remote_id_of(session.store, target.name, target.entities[1], id)
          end
          if type(value) == "table" then
            local ids = {}
            for _, id in ipairs(value) do ids[#ids + 1] = remote_of(id) end
            value = ids
          else
            value = remote_of(value)
          end
        end
        if field.export then
          local ok, result = pcall(field.export, value, out, ctx)
          if not ok then
            errors.raise("entity", string.format("field %s: export: %s (%s:%d)", field.name,
              errors.message(result), field.where.file, field.where.line))
          end
          if result ~= nil and field.keys then set_path(out, field.keys, result) end
        elseif field.keys then
          set_path(out, field.keys, value)
        end
      end
    end
  end
  return out
end

-- The remote id that sync's id map gives local (entity, id), or nil.
function M.remote_id_of(store, sync_name, entity, id)
  return store:value(SQL.map_local, sync_name, entity, id)
end

-- The local rows of the remote entity that local (entity, id) belongs to,
-- with its remote id when it has one.
function M.gather(session, sync, entity, id)
  local store = session.store
  local remote_id = M.remote_id_of(store, sync.name, entity, id)
  local rows, ids = {}, {}
  if remote_id then
    for _, m in ipairs(store:rows(SQL.map_remote, sync.name, remote_id)) do ids[m.entity] = m.local_id end
  else
    ids[entity] = id
  end
  for name, local_id in pairs(ids) do rows[name] = local_row(store, name, local_id) end
  return remote_id, rows, ids
end

-- Records a conflict and the policy's verdict: "local" or "remote".
function M.resolve_conflict(session, sync, run_id, info)
  local policy = sync.export and sync.export.conflict or "remote_wins"
  local winner
  if policy == "remote_wins" then
    winner = "remote"
  elseif policy == "local_wins" then
    winner = "local"
  elseif policy == "newest" then
    local remote_at = info.remote_changed and (tonumber(info.remote_changed)
      or select(2, pcall(map.iso_to_epoch, info.remote_changed)))
    winner = (type(remote_at) == "number" and remote_at > (info.local_changed or 0)) and "remote" or "local"
  else
    local ok, verdict = pcall(policy, info.local_rows, info.remote_record, info.ctx)
    if not ok or (verdict ~= "local" and verdict ~= "remote") then
      errors.raise("entity", string.format("conflict function: %s", ok and ("returned " .. tostring(verdict)
        .. ", not \"local\" or \"remote\"") or tostring(verdict)))
    end
    winner = verdict
  end
  session.store:run(SQL.conflict, run_id, sync.name, info.entity, info.local_id, info.remote_id,
    info.local_hash, info.remote_hash, type(policy) == "function" and "function" or policy, winner, core.sys.now())
  session.log("warn", string.format("%s %s: changed on both sides; %s kept (%s)", sync.name,
    tostring(info.remote_id or info.local_id), winner, type(policy) == "function" and "function" or policy))
  return winner
end

-- The hash and changed mark an import of record would store.
local function echo_of(sync, record, ctx)
  local ok, mapped = pcall(mapping.apply, sync.mapping, record, ctx)
  if not ok then return nil, nil end
  local changed = sync.changed_field and record[sync.changed_field]
  if changed == null then changed = nil end
  return core.hash.of(mapped), changed
end

-- Exports one local entity; returns "created", "updated", "deleted",
-- "unchanged" (a conflict the remote won or, when changed_only, nothing
-- the remote sees changed) or raises an entity error. An export asked for
-- by name sends the entity whatever it holds; the outbox's drain passes
-- changed_only.
-- The caller runs it in a scheduler task or plainly; its store writes are
-- short transactions that never yield.
function M.export_one(session, sync, entity, id, run_id, changed_only)
  local store, provider = session.store, session:provider(sync.provider)
  local resource = sync.export and sync.export.resource or sync.resource
  local remote_id, rows, ids = M.gather(session, sync, entity, id)
  local ctx = { sync = sync.name, entity = entity, local_id = id, remote_id = remote_id, log = session.log }
  if not rows[sync.entities[1]] and not rows[entity] then
    errors.raise("entity", string.format("local %s %s does not exist", entity, tostring(id)))
  end
  if not remote_id and entity ~= sync.entities[1] then
    -- A split's other entities reach the remote with their first one; on
    -- its own, a new one has nothing to complete.
    return "unchanged", nil
  end
  local stored = remote_id and store:rows(SQL.map_remote, sync.name, remote_id)[1]
  local record
  -- A local write that changed nothing the mapping carries (the same
  -- values written again, or columns no field maps) leaves the remote as
  -- it was last synced: nothing is sent. (A record that cannot be built
  -- fails below, where a conflict the remote wins may still settle it.)
  if changed_only and stored and stored.hash ~= nil then
    local built, built_record = pcall(M.remote_record, session, sync, rows, ctx)
    if built then
      if echo_of(sync, built_record, ctx) == stored.hash then return "unchanged", remote_id end
      record = built_record
    end
  end
  -- The remote changed since the last sync too: a conflict. (A file sink
  -- is a log of our writes: there is nothing to compare with.)
  if remote_id and type(provider.get) == "function" and not provider.log_sink then
    local current = provider:get(resource, remote_id)
    if current then
      local remote_hash, remote_changed = echo_of(sync, current, ctx)
      if stored and remote_hash and remote_hash ~= stored.hash then
        local pending = store:row(SQL.pending, entity, id)
        local winner = http.blocking(M.resolve_conflict, session, sync, run_id, {
          entity = entity, local_id = id, remote_id = remote_id, local_rows = rows, remote_record = current,
          local_hash = core.hash.of(rows), remote_hash = remote_hash, remote_changed = remote_changed,
          local_changed = pending and pending.queued_at, ctx = ctx,
        })
        if winner == "remote" then
          http.blocking(function()
            local run = session:dependent_run(sync)
            session:begin()
            -- decided: the local change is dropped, not met again as a conflict
            local ok, outcome, message = pcall(function()
              for name, local_id in pairs(ids) do store:run(SQL.drop, name, local_id) end
              return run:process(current)
            end)
            if not ok then
              session:rollback()
              error(outcome, 0)
            end
            session:commit()
            if outcome == "failed" then errors.raise("entity", "importing the remote version failed: " .. tostring(message)) end
          end)
          return "unchanged", remote_id
        end
      end
    end
  end
  record = record or M.remote_record(session, sync, rows, ctx)
  local outcome, answer
  if remote_id then
    answer = provider:update(resource, remote_id, record, ctx)
    outcome = "updated"
  else
    if type(provider.create) ~= "function" then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot create records", sync.name,
        sync.provider.name))
    end
    ctx.idempotency_key = string.format("%s:%s:%s:%s", sync.name, entity, tostring(id), core.hash.hex(record))
    remote_id, answer = provider:create(resource, record, ctx)
    remote_id = id_text(remote_id)
    outcome = "created"
  end
  local echo = type(answer) == "table" and next(answer) ~= nil and answer or record
  local hash, changed = echo_of(sync, echo, ctx)
  http.blocking(in_transaction, store, function()
    local now = core.sys.now()
    for name, local_id in pairs(ids) do
      store:run(SQL.save_map, sync.name, name, local_id, remote_id, changed, hash, now)
    end
  end)
  return outcome, remote_id
end

-- Deletes the remote of a local entity that is gone (export deletes =
-- "delete"), or only forgets it ("ignore").
function M.export_delete(session, sync, entity, id)
  local store, provider = session.store, session:provider(sync.provider)
  local remote_id = M.remote_id_of(store, sync.name, entity, id)
  if not remote_id then return "unchanged" end
  local primary = entity == sync.entities[1]
  if primary and sync.export.deletes == "delete" then
    if type(provider.delete) ~= "function" then
      errors.raise("usage", string.format("sync \"%s\": provider \"%s\" cannot delete records", sync.name,
        sync.provider.name))
    end
    provider:delete(sync.export.resource or sync.resource, remote_id, { sync = sync.name, local_id = id })
  end
  http.blocking(function()
    if primary and sync.export.deletes == "delete" then
      store:run(SQL.forget_remote, sync.name, remote_id)
    else
      store:run(SQL.forget_local, sync.name, entity, id)
    end
  end)
  return primary and sync.export.deletes == "delete" and "deleted" or "unchanged"
end

local function new_counts()
  return { created = 0, updated = 0, deleted = 0, unchanged = 0, failed = 0 }
end

local function start_run(session, sync, operation)
  if session.dry then return nil end
  local _, id = session.store:run(SQL.start_run, sync.name, operation, core.sys.now(), core.sys.getpid(), core.sys.hostname())
  return id
end

local function finish_run(session, run_id, counts, err)
  if not run_id then return end
  session.store:run(SQL.finish_run, run_id, core.sys.now(), err and "error" or (counts.failed > 0 and "failed" or "ok"),
    counts.created, counts.updated, counts.deleted, counts.failed, counts.unchanged, err)
end

-- Runs jobs (functions returning an outcome) with up to `width` in flight
-- as scheduler tasks; on_done(i, ok, outcome_or_error) after each.
local function run_concurrently(width, jobs, on_done)
  local next_job = 0
  local tasks = {}
  for _ = 1, math.max(1, math.min(width, #jobs)) do
    tasks[#tasks + 1] = function()
      while true do
        next_job = next_job + 1
        local i = next_job
        if i > #jobs then return end
        local ok, outcome = pcall(jobs[i])
        on_done(i, ok, outcome)
      end
    end
  end
  http.run(tasks)
end

-- Runs body(counts, run_id) holding the sync's lease, logged as one run of
-- the operation; an error ends the run logged with it and is raised again.
local function exporting(session, sync, operation, body)
  session:lock(sync)
  local counts = new_counts()
  local run_id = start_run(session, sync, operation)
  local ok, err = pcall(body, counts, run_id)
  finish_run(session, run_id, counts, not ok and errors.message(err, true) or nil)
  session:unlock(sync)
  if not ok then error(errors.wrap(err), 0) end
  return { sync = sync.name, counts = counts, complete = true, export = true }
end

-- export SYNC LOCAL_ID... : exports the listed local entities (of the
-- sync's first entity) now, whatever the outbox holds.
function M.export_list(session, sync, ids)
  return exporting(session, sync, "export", function(counts, run_id)
    local entity = sync.entities[1]
    local width = sync.provider.config.concurrency or 4
    local jobs = {}
    for i, id in ipairs(ids) do
      jobs[i] = function() return M.export_one(session, sync, entity, id, run_id) end
    end
    run_concurrently(width, jobs, function(i, done, outcome)
      if done then
        counts[outcome] = counts[outcome] + 1
        http.blocking(session.store.run, session.store, SQL.drop, entity, ids[i])
      else
        counts.failed = counts.failed + 1
        session.log("error", string.format("%s local %s %s: %s", sync.name, entity, tostring(ids[i]),
          errors.message(outcome, true)))
      end
    end)
  end)
end

-- Drains the outbox of a sync that exports on change: the due rows of its
-- entities in batches, `concurrency` at a time. A row is removed only if
-- no change came after the one exported; a failure stays with its
-- attempts and error and is retried with backoff.
function M.drain(session, sync)
  local store = session.store
  local entities = cjson.encode(sync.entities)
  local width = sync.provider.config.concurrency or 4
  return exporting(session, sync, "outbox", function(counts, run_id)
    local seen = {}
    while true do
      local due = store:rows(SQL.due, entities, core.sys.now(), sync.export.batch)
      local fresh = {}
      for _, row in ipairs(due) do
        if not seen[row.id .. ":" .. row.queued_at] then fresh[#fresh + 1] = row end
      end
      if #fresh == 0 then break end
      -- Rows of one remote entity (a split's entities changed together)
      -- are exported once, together.
      local groups, by_key = {}, {}
      for _, row in ipairs(fresh) do
        seen[row.id .. ":" .. row.queued_at] = true
        local remote_id = row.operation ~= "delete" and M.remote_id_of(store, sync.name, row.entity, row.local_id)
        local key = remote_id and ("remote:" .. remote_id) or ("local:" .. row.entity .. ":" .. row.local_id)
        local group = by_key[key]
        if group and row.operation ~= "delete" and group.rows[1].operation ~= "delete" then
          table.insert(group.rows, row)
        else
          group = { rows = { row } }
          by_key[key] = group
          groups[#groups + 1] = group
        end
      end
      local jobs = {}
      for i, group in ipairs(groups) do
        local row = group.rows[1]
        jobs[i] = function()
          if row.operation == "delete" then return M.export_delete(session, sync, row.entity, row.local_id) end
          return M.export_one(session, sync, row.entity, row.local_id, run_id, true)
        end
      end
      run_concurrently(width, jobs, function(i, done, outcome)
        local row = groups[i].rows[1]
        http.blocking(function()
          if done then
            counts[outcome] = counts[outcome] + 1
            for _, member in ipairs(groups[i].rows) do store:run(SQL.done, member.id, member.queued_at) end
          else
            counts.failed = counts.failed + 1
            local message = errors.message(outcome, true)
            if counts.failed <= 10 then
              session.log("error", string.format("%s local %s %s: %s", sync.name, row.entity, tostring(row.local_id),
                message))
            end
            local backoff = math.min(30 * 2 ^ (row.attempts or 0), 6 * 3600)
            store:run(SQL.retry_later, row.id, message, core.sys.now() + backoff)
          end
        end)
      end)
      session:heartbeat(sync)
      if session.should_stop and session.should_stop() then break end
    end
  end)
end

function M.summary(result, seconds)
  local c = result.counts
  return string.format("%s: exported %d created, %d updated, %d deleted, %d unchanged, %d failed%s", result.sync,
    c.created, c.updated, c.deleted, c.unchanged, c.failed, seconds and string.format(" in %.2fs", seconds) or "")
end

return M
