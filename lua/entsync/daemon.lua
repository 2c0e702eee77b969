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
-- What the daemon is doing is written to entsync_meta for `status`. One
-- daemon per store: it holds the lease "daemon" (entsync_locks) while it
-- runs, and a second one exits 3 naming the first.
--
-- With --listen HOST:PORT it serves GET /metrics (entsync.metrics) and GET
-- / (entsync.web) from a task of the same loop (entsync.httpd), and the
-- webhooks the job's syncs declare (entsync.webhook: POST <path>, each
-- accepted event pulled by a task of its sync). Under a
-- service manager that listens ($NOTIFY_SOCKET: systemd's Type=notify) it
-- says READY=1 once it serves, STOPPING=1 when it stops, RELOADING=1 on
-- SIGHUP, and pings the watchdog ($WATCHDOG_USEC) from a timer task at half
-- its period, so a loop that stalls gets the daemon restarted.

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
local SETTLE_TRIES = 4

-- The daemon's lease: renewed with each heartbeat, so it outlives a
-- heartbeat missed or two.
local DAEMON_TTL = 30

local function now() return core.sys.now() end

-- A line to the service manager, when one listens (a failure to send is
-- said once and otherwise ignored: the daemon's work does not depend on it).
local notify_failed = false
local function notify(daemon, text)
  local sent, err = core.notify.send(text)
  if sent == nil and not notify_failed then
    notify_failed = true
    daemon:log("warn", "telling the service manager failed: " .. tostring(err))
  end
end

local Daemon = {}
Daemon.__index = Daemon

function Daemon:log(level, message, fields)
  self.options.log(level, message, fields)
end

-- A finished run's summary, with its counts as fields.
function Daemon:summary(result, line, seconds, kind)
  local counts = json.object()
  for k, v in pairs(result.counts) do counts[k] = v end
  self:log(result.counts.failed > 0 and "warn" or "info", line, { event = "summary", kind = kind, sync = result.sync,
    operation = result.operation, counts = counts, seconds = seconds, status = result.status,
    stopped = result.stopped or nil })
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
    next_due = json.object(due), listen = self.listen,
  })
  pcall(self.session.ledger.set_meta, self.session.ledger, "daemon", state)
end

-- Runs fn for sync name unless that sync is running already. A webhook's
-- pull (kind "webhook") holds a sync while events come; another task that
-- finds it so marks the sync wanted, and the pull lets go at its next batch.
function Daemon:exclusive(name, fn, kind)
  if self.busy[name] then
    if self.busy[name] == "webhook" and kind ~= "webhook" then self.wanted[name] = true end
    return false
  end
  if kind ~= "webhook" then self.wanted[name] = nil end
  self.busy[name] = kind or true
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
    local seconds = core.sys.monotonic() - started
    self:summary(result, export.summary(result, seconds), seconds, "export")
  end
end

-- Runs one sync and what it depends on.
function Daemon:run_sync(name)
  local job, session = self.job, self.session
  for _, planned in ipairs(require("entsync.job").plan(job, { name })) do
    if self.stopping then return end
    local sync = job.syncs[planned]
    local function body()
      if sync.import.enabled then
        local started = core.sys.monotonic()
        local result = require("entsync.import").run(session, sync)
        local seconds = core.sys.monotonic() - started
        self:summary(result, operation.summary(result, seconds), seconds, "import")
      end
      if sync.export and sync.export.on_change and not self.stopping then self:drain(sync) end
    end
    local ran = self:exclusive(planned, body)
    while not ran and self.busy[planned] == "webhook" and not self.stopping do
      self.idle:wait() -- a webhook's pull lets go of the sync at its next batch
      ran = self:exclusive(planned, body)
    end
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
      if (self.busy[name] and self.busy[name] ~= "webhook") or self.starting[name] then
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

-- After the store file changed: waits until another connection's commit
-- is visible (PRAGMA data_version moves), a few settles at most (a busy
-- machine may hold a writer between its log write and its commit).
-- Returns false when nothing new became visible (the change was this
-- process's own, or a commit still on its way: the caller looks again soon).
function Daemon:settle()
  local before = self.data_version
  for i = 1, SETTLE_TRIES do
    loop.sleep(SETTLE * i)
    local version = self:read_data_version()
    if version ~= before then
      self.data_version = version
      return true
    end
  end
  return false
end

-- The store's data version: it moves when another connection commits (the
-- pragma reads; the file control alone keeps its old value until a read
-- transaction starts).
function Daemon:read_data_version()
  local store = self.session.store
  local ok, version = pcall(store.value, store, "PRAGMA data_version")
  return ok and version or nil
end

-- The task of one sync that exports on change: drains when there is
-- something to send, then sleeps until the store changes or a failed
-- export comes due.
-- A change of the store that arrives while a drainer looks (or drains)
-- is not lost: the watching task counts changes, and a drainer waits only
-- when none came since it began to look.
function Daemon:drainer(sync)
  local export = require "entsync.export"
  local soon = false -- a change was noticed but nothing new seen yet: look again shortly
  while not self.stopping do
    local mark = self.change_count
    local ok, work = pcall(export.has_work, self.session, sync)
    if ok and work and self.busy[sync.name] == "webhook" then self.wanted[sync.name] = true end
    if ok and work and not self.busy[sync.name] then
      self:exclusive(sync.name, function() self:drain(sync) end)
    elseif self.change_count == mark then
      local due = export.next_due(self.session, sync)
      local timeout = due and math.max(0.05, due - now()) or SAFETY_NET
      if soon then timeout = math.min(timeout, 1) end
      self.work:wait(math.min(timeout, SAFETY_NET))
    end
    soon = false
    if self.change_count ~= mark then soon = not self:settle() end
  end
end

-- The task of one sync that reads a queue (its provider's reader
-- follows): consumes messages as they come, blocking on the queue's
-- socket, one run per burst (a run ends once the queue is quiet after it
-- took something). A run that failed (the queue unreachable) is tried
-- again after a pause that grows to half a minute.
function Daemon:consumer(sync)
  local import = require "entsync.import"
  local pause = 0
  while not self.stopping do
    local failed = true
    local ran = self:exclusive(sync.name, function()
      local started = core.sys.monotonic()
      local result = import.run(self.session, sync, { follow = true, until_quiet = true })
      failed = false
      local seconds = core.sys.monotonic() - started
      if result.counts and (result.counts.created + result.counts.updated + result.counts.deleted
          + result.counts.failed > 0) then
        self:summary(result, operation.summary(result, seconds), seconds, "import")
      end
    end)
    pause = (failed or not ran) and math.min(30, math.max(1, pause * 2)) or 0
    if pause > 0 and not self.stopping then self.wake:wait(pause) end
  end
end

-- Whether a sync imports from a queue the daemon consumes continuously.
function Daemon:follows(sync)
  if not sync.import.enabled then return false end
  local ok, instance = pcall(self.session.provider, self.session, sync.provider)
  return ok and type(instance) == "table" and instance.follows == true
end

-- The task that watches the store file: counts its changes and wakes the
-- drainers.
function Daemon:watcher()
  while not self.stopping do
    if self.changed:wait() then
      self.change_count = self.change_count + 1
      self.work:notify_all()
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
  self:start_webhooks()
  for name, entry in pairs(self.schedules) do
    self.tasks[#self.tasks + 1] = loop.spawn(self.scheduled, self, name, entry)
  end
  for _, name in ipairs(self.job.sync_order) do
    local sync = self.job.syncs[name]
    if sync.export and sync.export.on_change then
      self.tasks[#self.tasks + 1] = loop.spawn(self.drainer, self, sync)
    end
    if self:follows(sync) then self.tasks[#self.tasks + 1] = loop.spawn(self.consumer, self, sync) end
  end
end

function Daemon:stop_tasks()
  for _, task in ipairs(self.tasks or {}) do task:cancel() end
  self.tasks = {}
end

-- Reloads the job file once nothing runs; the old job stays when the new
-- one fails to load.
function Daemon:reload()
  self.reloading = true
  while next(self.busy) or next(self.starting) do self.idle:wait() end
  self.reloading = false
  notify(self, "RELOADING=1")
  -- the providers' code and the job's own modules are read again too
  local ok, job = require("entsync.job").reload(self.job)
  if not ok then
    self:log("error", "reload failed; the running job stays: " .. errors.wrap(job).message)
    notify(self, "READY=1")
    return
  end
  self:stop_tasks()
  self.job = job
  self.session.job = job
  self.session.providers, self.session.dependents, self.session.writer_cache = {}, nil, nil
  local define_ok, err = pcall(self.session.define_entities, self.session)
  if not define_ok then self:log("error", "reload: " .. errors.wrap(err).message) end
  self.session.ledger.history = job.history
  self.schedules = plan_schedules(job, self.schedules)
  self:start_tasks()
  self:log("info", string.format("reloaded %s", job.display_path))
  notify(self, "READY=1")
end

-- The HTTP server of --listen: /metrics and the status page, each read
-- from the store when asked.
function Daemon:serve(listen)
  local httpd = require "entsync.httpd"
  local server = httpd.listen(listen.host, listen.port, { log = self.options.log,
    max_body = require("entsync.webhook").max_body(self.job) })
  local daemon = self
  local function report(recent)
    return require("entsync.status").gather(daemon.job.store_file, daemon.job, { recent = recent })
  end
  server:route("GET", "/metrics", function()
    local text = require("entsync.metrics").render(report(), { http = require("entsync.http").stats(),
      started_at = daemon.started_at, requests = server.requests, webhooks = daemon:webhook_stats() })
    return 200, text, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }
  end)
  server:route("GET", "/", function()
    return 200, require("entsync.web").page(report(30)), { ["Content-Type"] = "text/html; charset=utf-8" }
  end)
  server:route("GET", "/status.json", function()
    return 200, require("entsync.status").json(report(30)), { ["Content-Type"] = "application/json" }
  end)
  server:start()
  self.server = server
  local host = listen.host:find(":", 1, true) and ("[" .. listen.host .. "]") or listen.host
  self.listen = string.format("%s:%d", host, server.port)
  local paths = {}
  for _, name in ipairs(self.job.sync_order) do
    local hook = self.job.syncs[name].webhook
    if hook then paths[#paths + 1] = "POST " .. hook.path end
  end
  self:log("info", string.format("serving http://%s/ (/metrics, /, /status.json%s)", self.listen,
    #paths > 0 and (", " .. table.concat(paths, ", ")) or ""), { event = "listening", address = self.listen })
end

-- The job's webhooks: a hook per sync that declares one (its counts kept
-- across a reload), its route on the server and its pull task.
function Daemon:start_webhooks()
  local webhook = require "entsync.webhook"
  local old, daemon = self.hooks or {}, self
  self.hooks = {}
  if self.server then self.server:unroute("webhook") end
  for _, name in ipairs(self.job.sync_order) do
    local sync = self.job.syncs[name]
    if sync.webhook then
      local hook = webhook.new(self.session, sync, { log = self.options.log, idle = self.idle,
        exclusive = function(fn) return daemon:exclusive(name, fn, "webhook") end,
        wanted = function() return daemon.wanted[name] or daemon.reloading end,
        should_stop = function() return daemon.stopping end })
      if old[name] then hook.counts = old[name].counts end
      self.hooks[name] = hook
      if self.server then
        self.server:route("POST", sync.webhook.path, function(request) return hook:receive(request) end,
          { tag = "webhook" })
      else
        self:log("error", string.format("sync \"%s\" declares a webhook, but the daemon does not listen: "
          .. "start it with --listen HOST:PORT", name), { sync = name })
      end
      self.tasks[#self.tasks + 1] = loop.spawn(hook.run, hook, function(result, seconds)
        self:summary(result, require("entsync.operation").summary(result, seconds), seconds, "webhook")
      end)
    end
  end
end

-- The webhooks' counts for the metrics: { sync = hook:stats() }.
function Daemon:webhook_stats()
  local out = {}
  for name, hook in pairs(self.hooks or {}) do
    local ok, stats = pcall(hook.stats, hook)
    if ok then out[name] = stats end
  end
  return out
end

-- Pings the service manager's watchdog at half its period, while the
-- loop turns (a loop that stalls misses its pings and is restarted).
function Daemon:watchdog()
  local usec = tonumber(os.getenv("WATCHDOG_USEC") or "")
  local pid = tonumber(os.getenv("WATCHDOG_PID") or "")
  if not usec or usec <= 0 or (pid and pid ~= core.sys.getpid()) then return nil end
  return loop.spawn(function()
    while not self.stopping do
      notify(self, "WATCHDOG=1")
      loop.sleep(usec / 2e6)
    end
  end)
end

function Daemon:main()
  local stop = loop.condition()
  local function stopping(name)
    if self.stopping then return end
    self:log("info", string.format("SIG%s: stopping at the next checkpoint", name))
    self.stopping = true
    self.wake:notify_all()
    self.changed:notify_all()
    self.work:notify_all()
    stop:notify_all()
  end
  local handlers = {
    loop.on_signal("TERM", stopping), loop.on_signal("INT", stopping),
    loop.on_signal("HUP", function() if not self.stopping then self:reload() end end),
  }
  self.changed, self.work, self.change_count = loop.watch_file(self.session.store:path()), loop.condition(), 0
  self.data_version = self:read_data_version()
  local watching = loop.spawn(self.watcher, self)
  if self.options.listen then self:serve(self.options.listen) end
  self:start_tasks()
  local store, owner = self.session.store, self.session.owner
  local heartbeat = loop.spawn(function()
    while not self.stopping do
      local renewed, kept = pcall(core.lock.heartbeat, store, "daemon", owner, DAEMON_TTL)
      if renewed and not kept then
        self:log("warn", "the daemon's lease was taken by another daemon; this one goes on, but two daemons now "
          .. "share the store")
      end
      self:publish()
      stop:wait(HEARTBEAT)
    end
  end)
  local watchdog = self:watchdog()
  -- said once the store is watched: a change made after this line is seen
  local names = {}
  for name, entry in pairs(self.schedules) do names[#names + 1] = name .. " (" .. entry.text .. ")" end
  table.sort(names)
  self:log("info", string.format("daemon started, pid %d: %s", core.sys.getpid(),
    #names > 0 and table.concat(names, ", ") or "no scheduled syncs; exporting changes as they come"))
  self:publish()
  notify(self, "READY=1\nSTATUS=" .. (self.listen and ("serving http://" .. self.listen .. "/") or "running"))
  while not self.stopping do stop:wait() end
  notify(self, "STOPPING=1")
  -- stopping: the running syncs stop at their checkpoints
  while next(self.busy) or next(self.starting) do self.idle:wait() end
  self:stop_tasks()
  heartbeat:cancel()
  watching:cancel()
  if watchdog then watchdog:cancel() end
  if self.server then self.server:close() end
  for _, handler in ipairs(handlers) do handler:remove() end
  self.changed:close()
end

function M.run(job, options)
  if not options.listen then
    for _, name in ipairs(job.sync_order) do
      if job.syncs[name].webhook then
        errors.raise("usage", string.format("%s: sync \"%s\" declares a webhook: start the daemon with --listen "
          .. "HOST:PORT to receive it", job.display_path, name))
      end
    end
  end
  return loop.run(function()
    local daemon
    local session = require("entsync.session").open(job, { wait = 0, log = options.log,
      progress = options.progress ~= false and "lines" or false, progress_every = options.progress_every,
      log_format = options.log_format, should_stop = function() return daemon.stopping end })
    -- one daemon per store
    local held, info = core.lock.acquire(session.store, "daemon", session.owner, DAEMON_TTL)
    if not held then
      session:close()
      errors.raise("lock", string.format("another daemon runs on %s: %s", job.store_file,
        operation.describe_holder(info)), { holder = info })
    end
    if info then
      options.log("warn", string.format("took over the daemon lease of a daemon that is %s: %s", info.reason,
        operation.describe_holder(info.holder)))
    end
    daemon = setmetatable({
      job = job, session = session, options = options, started_at = now(), busy = {}, starting = {}, wanted = {},
      schedules = plan_schedules(job), wake = loop.condition(), idle = loop.condition(),
    }, Daemon)
    daemon:publish()
    local ok, err = pcall(daemon.main, daemon)
    daemon.stopped = true
    daemon:publish()
    pcall(core.lock.release, session.store, "daemon", session.owner)
    session:close()
    if not ok then error(err, 0) end
    daemon:log("info", "daemon stopped")
    return 0
  end)
end

return M
