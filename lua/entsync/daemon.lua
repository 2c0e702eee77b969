-- entsync.daemon: entsync-run job.lua daemon.
--
-- One process, one loop (entsync.loop), a task per concern, and nothing
-- that polls:
--   - a task per scheduled sync sleeps until its next due time (cron or
--     interval), then runs it and what it depends on first; a sync never
--     runs beside itself (as another's dependency, or its drain), and an
--     overrun skips its turn;
--   - a task per sync that exports on change sleeps until the store
--     changes (the loop watches the store file: any program's commit
--     wakes it) or its next failed export comes due, then drains;
--   - signals are calls: SIGTERM and SIGINT stop every task at its next
--     checkpoint, release the leases and exit 0; SIGHUP reloads the job
--     and its mappings once nothing runs, keeping the old job when the new
--     one does not load.
-- What the daemon is doing is written to entsync_meta for `status`.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local loop = require "entsync.loop"
local operation = require "entsync.operation"
local schedule = require "entsync.schedule"

local M = {}

-- How long a drain task sleeps when nothing wakes it: a safety net for
-- writes the file watch cannot see (another host on a network share).
local SAFETY_NET = 60
-- How often the daemon's state is written for status, while it idles.
local HEARTBEAT = 5
-- How long after the store's file changes the drains look: SQLite writes
-- a commit's log frames (which the file watch sees) a moment before it
-- publishes them in the shared index (which it cannot see); a look in
-- between would find nothing new and sleep until the next change.
local SETTLE = 0.02

local function now() return core.sys.now() end

local Daemon = {}
Daemon.__index = Daemon

function Daemon:log(level, message)
  self.options.log(level, message)
end

function Daemon:running_names()
  local names = {}
  for name in pairs(self.busy) do names[#names + 1] = name end
  table.sort(names)
  return names
end

function Daemon:publish()
  local due = {}
  for name, entry in pairs(self.schedules) do due[name] = entry.due end
  local names = self:running_names()
  local state = json.encode({
    pid = core.sys.getpid(), host = core.sys.hostname(), started_at = self.started_at, heartbeat_at = now(),
    activity = self.stopped and "stopped" or (#names > 0 and "running" or "idle"), running = json.array(names),
    next_due = json.object(due),
  })
  pcall(self.session.ledger.set_meta, self.session.ledger, "daemon", state)
end

-- Runs fn for sync name unless that sync is running already.
function Daemon:exclusive(name, fn)
  if self.busy[name] then return false end
  self.busy[name] = true
  self:publish()
  local ok, err = pcall(fn)
  self.busy[name] = nil
  self:publish()
  self.idle:notify_all()
  if not ok then self:log(errors.is(err, "lock") and "warn" or "error", errors.wrap(err).message) end
  return true
end

function Daemon:drain(sync)
  local export = require "entsync.export"
  local started = core.sys.monotonic()
  local result = export.drain(self.session, sync)
  local c = result.counts
  if c.created + c.updated + c.deleted + c.failed + c.unchanged + c.conflicts > 0 then
    self:log("info", export.summary(result, core.sys.monotonic() - started))
  end
end

-- Runs one sync and what it depends on.
function Daemon:run_sync(name)
  local job, session = self.job, self.session
  for _, planned in ipairs(require("entsync.job").plan(job, { name })) do
    if self.stopping then return end
    local sync = job.syncs[planned]
    local ran = self:exclusive(planned, function()
      if sync.import.enabled then
        local started = core.sys.monotonic()
        local result = require("entsync.import").run(session, sync)
        self:log("info", operation.summary(result, core.sys.monotonic() - started))
      end
      if sync.export and sync.export.on_change and not self.stopping then self:drain(sync) end
    end)
    if not ran then
      self:log("info", string.format("sync \"%s\" is running already: not started again", planned))
    end
  end
end

-- The task of one scheduled sync: sleeps until it is due, then starts
-- its run as a task of its own and sleeps until the next time, when a run
-- still going makes it skip that turn.
function Daemon:scheduled(name, entry)
  while not self.stopping do
    local wait = entry.due - now()
    if wait > 0 then
      self.wake:wait(wait)
    else
      entry.due = schedule.next_time(entry.parsed, now())
      if self.busy[name] or self.starting[name] then
        self:log("warn", string.format("sync \"%s\" is still running: this turn is skipped", name))
      else
        self:log("info", string.format("sync \"%s\" is due (%s)", name, entry.text))
        self.starting[name] = true
        loop.spawn(function()
          local ok, err = pcall(self.run_sync, self, name)
          self.starting[name] = nil
          self.idle:notify_all()
          if not ok then self:log("error", errors.wrap(err).message) end
        end)
      end
    end
  end
end

-- The task of one sync that exports on change: drains when there is
-- something to send, then sleeps until the store changes or a failed
-- export comes due.
function Daemon:drainer(sync)
  local export = require "entsync.export"
  while not self.stopping do
    local ok, work = pcall(export.has_work, self.session, sync)
    if ok and work and not self.busy[sync.name] then
      self:exclusive(sync.name, function() self:drain(sync) end)
    else
      local due = export.next_due(self.session, sync)
      local timeout = due and math.max(0.05, due - now()) or SAFETY_NET
      if self.changed:wait(math.min(timeout, SAFETY_NET)) then loop.sleep(SETTLE) end
    end
  end
end

-- The syncs that run on a schedule, each with its parsed schedule and its
-- next due time (kept across a reload when the schedule is the same).
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

-- Starts the tasks of the job's syncs; stop_tasks() ends them (at a
-- reload).
function Daemon:start_tasks()
  self.tasks = {}
  for name, entry in pairs(self.schedules) do
    self.tasks[#self.tasks + 1] = loop.spawn(self.scheduled, self, name, entry)
  end
  for _, name in ipairs(self.job.sync_order) do
    local sync = self.job.syncs[name]
    if sync.export and sync.export.on_change then
      self.tasks[#self.tasks + 1] = loop.spawn(self.drainer, self, sync)
    end
  end
end

function Daemon:stop_tasks()
  for _, task in ipairs(self.tasks or {}) do task:cancel() end
  self.tasks = {}
end

-- Reloads the job file once nothing runs; the old job stays when the new
-- one fails to load.
function Daemon:reload()
  while next(self.busy) or next(self.starting) do self.idle:wait() end
  local ok, job = pcall(require("entsync.job").load, self.job.path)
  if not ok then
    self:log("error", "reload failed; the running job stays: " .. errors.wrap(job).message)
    return
  end
  self:stop_tasks()
  self.job = job
  self.session.job = job
  self.session.providers, self.session.dependents, self.session.writer_cache = {}, nil, nil
  local define_ok, err = pcall(self.session.define_entities, self.session)
  if not define_ok then self:log("error", "reload: " .. errors.wrap(err).message) end
  self.schedules = plan_schedules(job, self.schedules)
  self:start_tasks()
  self:log("info", string.format("reloaded %s", job.display_path))
end

function Daemon:main()
  local stop = loop.condition()
  local function stopping(name)
    if self.stopping then return end
    self:log("info", string.format("SIG%s: stopping at the next checkpoint", name))
    self.stopping = true
    self.wake:notify_all()
    self.changed:notify_all()
    stop:notify_all()
  end
  local handlers = {
    loop.on_signal("TERM", stopping), loop.on_signal("INT", stopping),
    loop.on_signal("HUP", function() if not self.stopping then self:reload() end end),
  }
  self.changed = loop.watch_file(self.session.store:path())
  self:start_tasks()
  local heartbeat = loop.spawn(function()
    while not self.stopping do
      self:publish()
      stop:wait(HEARTBEAT)
    end
  end)
  while not self.stopping do stop:wait() end
  -- stopping: the running syncs stop at their checkpoints
  while next(self.busy) or next(self.starting) do self.idle:wait() end
  self:stop_tasks()
  heartbeat:cancel()
  for _, handler in ipairs(handlers) do handler:remove() end
  self.changed:close()
end

function M.run(job, options)
  return loop.run(function()
    local daemon
    local session = require("entsync.session").open(job, { wait = 0, progress = false, log = options.log,
      should_stop = function() return daemon.stopping end })
    daemon = setmetatable({
      job = job, session = session, options = options, started_at = now(), busy = {}, starting = {},
      schedules = plan_schedules(job), wake = loop.condition(), idle = loop.condition(),
    }, Daemon)
    local names = {}
    for name, entry in pairs(daemon.schedules) do names[#names + 1] = name .. " (" .. entry.text .. ")" end
    table.sort(names)
    daemon:log("info", string.format("daemon started, pid %d: %s", core.sys.getpid(),
      #names > 0 and table.concat(names, ", ") or "no scheduled syncs; exporting changes as they come"))
    daemon:publish()
    local ok, err = pcall(daemon.main, daemon)
    daemon.stopped = true
    daemon:publish()
    session:close()
    if not ok then error(err, 0) end
    daemon:log("info", "daemon stopped")
    return 0
  end)
end

return M
