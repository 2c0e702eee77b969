-- entsync.conflicts: an entity changed on both sides since it was last
-- synced, settled by its sync's policy and recorded.
--
-- Imports meet a conflict when a remote change arrives for an entity
-- whose local change has not been exported yet; exports meet one when the
-- remote's current copy differs from what was last synced. Both ask
-- settle() here, which applies export.conflict ("remote_wins" (the
-- default), "local_wins", "newest", or a function(local_rows,
-- remote_record, ctx) returning "local" or "remote"), records the conflict
-- in entsync_conflicts with both versions' hashes, logs it, and returns
-- the winner.

local core = require "entsync.core"
local errors = require "entsync.errors"
local map = require "entsync.map"

local M = {}

-- The epoch seconds of a changed mark that is a time (an ISO 8601 text or
-- an epoch number), or nil.
function M.mark_time(mark)
  if type(mark) == "number" then return mark end
  if type(mark) ~= "string" then return nil end
  local ok, seconds = pcall(map.iso_to_epoch, mark)
  return ok and seconds or nil
end

local function newest(sync, info)
  local remote_at = M.mark_time(info.remote_changed)
  if info.remote_changed ~= nil and remote_at == nil then
    errors.raise("entity", string.format("conflict = \"newest\" compares times, but the remote's changed mark %s "
      .. "(field %s) is not one", tostring(info.remote_changed), tostring(sync.changed_field)))
  end
  local local_at = info.local_changed
  if remote_at == nil then return "local" end
  if local_at == nil then return "remote" end
  return remote_at > local_at and "remote" or "local"
end

-- settle(session, sync, info) -> "local" | "remote". info: direction,
-- run_id, local_id, remote_id, local_rows, remote_record, local_hash,
-- remote_hash, remote_changed, local_changed (epoch seconds of the local
-- change, when the change log kept it), ctx.
function M.settle(session, sync, info)
  local policy = sync.export and sync.export.conflict or "remote_wins"
  local winner
  if policy == "remote_wins" then
    winner = "remote"
  elseif policy == "local_wins" then
    winner = "local"
  elseif policy == "newest" then
    winner = newest(sync, info)
  else
    local ok, verdict = pcall(policy, info.local_rows, info.remote_record, info.ctx)
    if not ok or (verdict ~= "local" and verdict ~= "remote") then
      errors.raise("entity", string.format("conflict function (%s): %s", sync.export.conflict_where or "job",
        ok and ("returned " .. tostring(verdict) .. ", not \"local\" or \"remote\"") or errors.message(verdict)))
    end
    winner = verdict
  end
  local name = type(policy) == "function" and "function" or policy
  local book = session.ledger
  book:record_conflict(book:sync_id(sync.name), {
    run_id = info.run_id, direction = info.direction, local_id = info.local_id, remote_id = info.remote_id,
    local_hash = info.local_hash or (info.local_rows and core.hash.of(info.local_rows)), remote_hash = info.remote_hash,
    policy = name, winner = winner,
  })
  session.log("warn", string.format("%s %s: changed on both sides; %s kept (%s)", sync.name,
    tostring(info.remote_id or ("local " .. tostring(info.local_id))), winner, name))
  return winner
end

return M
