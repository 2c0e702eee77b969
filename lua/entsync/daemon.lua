-- entsync.daemon: entsync-run job.lua daemon.
--
-- One process and one loop: syncs run when their schedule says (cron or
-- intervals, each with what it depends on first, never twice at once),
-- and the export outbox is drained as changes arrive, noticed by polling
-- the store's data version. SIGTERM and SIGINT stop at the next batch
-- checkpoint, release the leases and exit 0; SIGHUP reloads the job and
-- its mappings between runs, keeping the old job when the new one does not
-- load. What the daemon is doing is written to entsync_meta for `status`.

local core = require "entsync.core"
local errors = require "entsync.errors"
local http = require "entsync.http"
local json = require "entsync.json"
local schedule = require "entsync.schedule"

local M = {}

local OUTBOX_POLL = 0.25

local function now() return core.sys.now() end

-- The syncs that run on a schedule, each with its parsed schedule and its
-- next due time.
local function plan_schedules(job, previous)
  local entries = {}
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    if sync.schedule then
      local old = previous and previous[name]
      local due = old and old.text == sync.schedule.text and old.due or schedule.next_time(sync.schedule, now())
      if sync.schedule.interval and not old then due = now() end -- intervals start with a run
      entries[name] = { text = sync.schedule.text, parsed = sync.schedule, due = due }
    end
  end
  return entries
end

local Daemon = {}
Daemon.__index = Daemon

function Daemon:publish(activity)
  self.activity = activity or self.activity
  local due = json.object()
  for name, entry in pairs(self.schedules) do due[name] = entry.due end
  local state = json.encode({
    pid = core.sys.getpid(), host = core.sys.hostname(), started_at = self.started_at, heartbeat_at = now(),
    activity = self.activity, running = self.running_names, next_due = due,
  })
  pcall(http.blocking, self.session.store.run, self.session.store,
    "INSERT OR REPLACE INTO entsync_meta (key, value) VALUES ('daemon', ?1)", state)
end

function Daemon:log(level, message)
  self.options.log(level, message)
end

function Daemon:stopping()
  return core.loop.signal_pending("TERM") or core.loop.signal_pending("INT")
end

-- Runs one sync and what it depends on, as a task of the scheduler.
function Daemon:run_sync(name)
  local job, session = self.job, self.session
  local engine = require "entsync.engine"
  local export = require "entsync.export"
  for _, planned in ipairs(require("entsync.job").plan(job, { name })) do
    if self:stopping() then return end
    -- a sync already importing or exporting (as another's dependency, or
    -- its outbox) is not run a second time beside itself
    if self.busy[planned] then
      self:log("info", string.format("sync \"%s\" is running already: not started again", planned))
      goto continue
    end
    self.busy[planned] = true
    local sync = job.syncs[planned]
    if sync.import.enabled then
      local started = core.sys.monotonic()
      local ok, result = pcall(engine.run_import, session, sync, self.options)
      if ok then
        self:log("info", engine.summary(result, core.sys.monotonic() - started))
      else
        self:log(errors.is(result, "lock") and "warn" or "error", errors.wrap(result).message)
      end
    end
    if sync.export and sync.export.on_change then self:drain(sync) end
    self.busy[planned] = nil
    ::continue::
  end
end

function Daemon:drain(sync)
  local export = require "entsync.export"
  local started = core.sys.monotonic()
  local ok, result = pcall(export.drain, self.session, sync)
  if ok then
    local c = result.counts
    if c.created + c.updated + c.deleted + c.failed + c.unchanged > 0 then
      self:log("info", export.summary(result, core.sys.monotonic() - started))
    end
  else
    self:log(errors.is(result, "lock") and "warn" or "error", errors.wrap(result).message)
  end
end

local function has_due_outbox(session, sync)
  return session.store:value([[SELECT 1 FROM entsync_outbox WHERE entity IN (SELECT value FROM json_each(?1))
    AND (next_at IS NULL OR next_at <= ?2) LIMIT 1]], json.encode(sync.entities), now()) ~= nil
end

-- Reloads the job file; the old job stays when the new one fails.
function Daemon:reload()
  local ok, job = pcall(require("entsync.job").load, self.job.path)
  if not ok then
    self:log("error", "reload failed; the running job stays: " .. errors.wrap(job).message)
    return
  end
  self.job = job
  self.session.job = job
  self.session.providers = {}
  self.session.dependents = nil
  local define_ok, err = pcall(self.session.define_entities, self.session)
  if not define_ok then self:log("error", "reload: " .. errors.wrap(err).message) end
  self.schedules = plan_schedules(job, self.schedules)
  self:log("info", string.format("reloaded %s", job.display_path))
end

-- The loop: a task per due sync; between them, the outbox, the signals.
function Daemon:loop()
  local tasks_running = {}
  self.running_names = {}
  local last_version, last_publish, last_due_check = nil, 0, 0
  local function start(name, fn)
    if tasks_running[name] then return end -- an overrun is never started twice
    tasks_running[name] = true
    self.running_names[#self.running_names + 1] = name
    self.pending_tasks[#self.pending_tasks + 1] = function()
      local ok, err = pcall(fn)
      if not ok then self:log("error", errors.wrap(err).message) end
      tasks_running[name] = nil
      for i, n in ipairs(self.running_names) do
        if n == name then table.remove(self.running_names, i) break end
      end
    end
  end
  http.run({ function()
    while not self:stopping() do
      if core.loop.signal_take("HUP") > 0 then
        if next(tasks_running) then
          self.reload_wanted = true
        else
          self:reload()
        end
      end
      if self.reload_wanted and not next(tasks_running) then
        self.reload_wanted = false
        self:reload()
      end
      local t = now()
      for name, entry in pairs(self.schedules) do
        if entry.due <= t then
          entry.due = schedule.next_time(entry.parsed, t)
          if tasks_running[name] then
            self:log("warn", string.format("sync \"%s\" is still running: this turn is skipped", name))
          else
            self:log("info", string.format("sync \"%s\" is due (%s)", name, entry.text))
            start(name, function() self:run_sync(name) end)
          end
        end
      end
      -- PRAGMA data_version changes when another connection commits: a
      -- cheap way to notice writes made by other programs.
      local version = self.session.store:value("PRAGMA data_version")
      -- another program wrote (a change to export), or a failed export may
      -- have come due: both are checked
      if version ~= last_version or t - last_due_check >= 1 then
        last_version, last_due_check = version, t
        for _, name in ipairs(self.job.sync_order) do
          local sync = self.job.syncs[name]
          if sync.export and sync.export.on_change and not self.busy[name]
              and has_due_outbox(self.session, sync) then
            self.busy[name] = true
            start("outbox:" .. name, function()
              local ok, err = pcall(self.drain, self, sync)
              self.busy[name] = nil
              if not ok then error(err, 0) end
            end)
          end
        end
      end
      -- tasks started above run beside this one
      while #self.pending_tasks > 0 do
        local fn = table.remove(self.pending_tasks, 1)
        http.spawn(fn)
      end
      if t - last_publish >= 1 then
        self:publish(next(tasks_running) and "running" or "idle")
        last_publish = t
      end
      http.sleep(OUTBOX_POLL)
    end
    -- stopping: wait for the running syncs to reach their checkpoint
    while next(tasks_running) do http.sleep(0.05) end
  end })
end

function M.run(job, options)
  local engine = require "entsync.engine"
  core.loop.signals_install()
  local session = engine.open(job, { wait = 0, progress = false, log = options.log })
  session.should_stop = function()
    return core.loop.signal_pending("TERM") or core.loop.signal_pending("INT")
  end
  local daemon = setmetatable({
    job = job, session = session, options = options, started_at = now(), pending_tasks = {}, busy = {},
    schedules = plan_schedules(job), activity = "starting",
  }, Daemon)
  local names = {}
  for name, entry in pairs(daemon.schedules) do names[#names + 1] = name .. " (" .. entry.text .. ")" end
  table.sort(names)
  daemon:log("info", string.format("daemon started, pid %d: %s", core.sys.getpid(),
    #names > 0 and table.concat(names, ", ") or "no scheduled syncs; draining the outbox"))
  daemon:publish("idle")
  local ok, err = pcall(daemon.loop, daemon)
  daemon:publish("stopped")
  session:close()
  if not ok then error(err, 0) end
  daemon:log("info", "daemon stopped")
  return 0
end

return M
