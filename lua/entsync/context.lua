-- entsync.context: the one context every callback receives.
--
-- Mapping callbacks (import and export), filter, after_map, conflict
-- functions and provider verbs all get the same kind of object:
--
--   ctx.sync        the sync's name
--   ctx.entity      the sync's primary entity; ctx.entities all of them
--   ctx.direction   "import" or "export"
--   ctx.remote_id   the remote id at hand (nil for a record not created yet)
--   ctx.local_id    the local id at hand (nil for a record not imported yet)
--   ctx.record      the remote record at hand, when there is one
--   ctx:ref(sync, id)        in an import: a remote id of that sync to its
--                            local id; in an export: a local id to its remote
--                            id; a missing one follows the sync's on_missing
--   ctx:local_id_of(sync, remote_id), ctx:remote_id_of(sync, local_id)
--                            the same lookups in a named direction
--   ctx:log(message, ...)    a line in entsync's log naming the sync and the
--                            entity (string.format when more arguments come;
--                            tables are written as JSON)
--   ctx:warn(message, ...)   the same at level "warn"

local errors = require "entsync.errors"

local M = {}

local Context = {}
Context.__index = Context

-- new(session, sync, direction) -> ctx. The engines move it from entity
-- to entity with at().
function M.new(session, sync, direction)
  return setmetatable({
    session = session, sync = sync.name, entity = sync.entities[1], entities = sync.entities,
    direction = direction, sync_def = sync,
  }, Context)
end

-- The entity at hand: its remote id, local id and remote record.
function Context:at(remote_id, local_id, record)
  self.remote_id, self.local_id, self.record = remote_id, local_id, record
  return self
end

local function text_of(message, ...)
  if select("#", ...) > 0 and type(message) == "string" then
    local ok, formatted = pcall(string.format, message, ...)
    if ok then return formatted end
  end
  if type(message) == "table" and not errors.is(message) then
    local ok, encoded = pcall(require("entsync.json").encode, message)
    if ok then return encoded end
  end
  return errors.message(message)
end

-- The entity a log line is about: "sync r:remote_id" or "sync l:local_id".
function Context:about()
  if self.remote_id ~= nil then return string.format("%s %s", self.sync, tostring(self.remote_id)) end
  if self.local_id ~= nil then return string.format("%s local %s", self.sync, tostring(self.local_id)) end
  return self.sync
end

-- The fields of a callback's log line: the sync and the entity at hand.
function Context:fields()
  return { sync = self.sync, entity = self.entity, direction = self.direction, remote_id = self.remote_id,
    local_id = self.local_id, event = "callback" }
end

function Context:log(message, ...)
  self.session.log("info", string.format("%s: %s", self:about(), text_of(message, ...)), self:fields())
end

function Context:warn(message, ...)
  self.session.log("warn", string.format("%s: %s", self:about(), text_of(message, ...)), self:fields())
end

local function target_sync(self, sync_name)
  local target = self.session.job.syncs[sync_name]
  if not target then errors.raise("entity", string.format("ref: no sync named \"%s\"", tostring(sync_name))) end
  return target
end

-- A remote id of sync_name to its local id, per this sync's on_missing.
function Context:local_id_of(sync_name, remote_id)
  return self.session:resolve_remote(self.sync_def, target_sync(self, sync_name), remote_id)
end

-- A local id of sync_name's entity to its remote id, per on_missing.
function Context:remote_id_of(sync_name, local_id)
  return self.session:resolve_local(self.sync_def, target_sync(self, sync_name), local_id)
end

function Context:ref(sync_name, id)
  if self.direction == "export" then return self:remote_id_of(sync_name, id) end
  return self:local_id_of(sync_name, id)
end

return M
