-- entsync.loop: the one scheduler of an entsync process.
--
--   local loop = require "entsync.loop"
--   loop.run(function()
--     local a = loop.spawn(http.get, url_a)   -- both requests are in flight
--     local b = loop.spawn(http.get, url_b)
--     local ok_a, res_a = a:wait()
--     local ok_b, res_b = b:wait()
--   end)
--
-- Tasks are coroutines. One loop runs them in turns: it resumes every task
-- that is ready, then sleeps in core.loop.wait (src/loop.c), the single
-- blocking point of the program, until the next deadline, a completed HTTP
-- transfer, a ready file descriptor or a signal; whatever that wait brought
-- makes its tasks ready for the next turn. Nothing polls on a clock: a
-- semaphore's release or a condition's notify makes exactly its waiter
-- ready, a signal runs its handlers as new tasks, a sleep is a deadline.
--
-- The loop does not nest: a task that wants work done beside it spawns a
-- task and waits for it. Outside any loop (a script, the REPL) a wait
-- (loop.sleep, an HTTP request, ...) runs a loop on demand for its own
-- length, so transfers in flight go on meanwhile.
--
-- A task waits only from its own coroutine. A wait made where it cannot
-- yield to the loop (a coroutine of the task's own, such as an iterator
-- made by coroutine.wrap, or a to-be-closed variable of a task being
-- cancelled) blocks in place instead: it drives core.loop.wait itself until
-- its wait ends, collecting what arrives for others, who run later. The
-- loop's yields carry a private marker, so yields of such coroutines of
-- the task's own pass through untouched.

local core = require "entsync.core"
local errors = require "entsync.errors"

local C, monotonic = core.loop, core.sys.monotonic

local M = {}

local YIELD = setmetatable({}, { __tostring = function() return "entsync.loop yield" end })
local SIGNALS = { "TERM", "INT", "HUP", "USR1" }

local state               -- the running loop: { ready, timers, tasks, fd_waits, seq }
local current             -- the task being resumed
local forbidden = {}      -- the whys of the forbid_yield calls in progress, innermost last
local counters = { turns = 0, waits = 0 }
local sources = {}        -- descriptors every wait includes: { fd, events, on_ready } (file watches)
local transfers           -- { client, deliver }: entsync.http's client and where its responses go
local handlers = {}       -- signal name -> { handle, ... }
local handler_count = 0

M.now = monotonic

-- stats() -> { turns, waits }: how many turns the loops of this process
-- made and how many times they called core.loop.wait, for specs that
-- show a loop sleeps rather than spins.
function M.stats()
  return { turns = counters.turns, waits = counters.waits }
end

-- running() -> true inside a task of the running loop, where a wait yields.
local function in_task()
  return current ~= nil and not current.closing and current.co == coroutine.running()
end
M.running = in_task

-- active() -> true while a loop runs, inside one of its tasks or not.
function M.active()
  return state ~= nil
end

-- forbid_yield -------------------------------------------------------------------

local function refuse_wait()
  errors.raise("usage", forbidden[#forbidden] .. ": cannot wait inside a write transaction "
    .. "(a request, a sleep or a lock wait there would stall every other task)")
end

-- check_wait(): raises inside forbid_yield; for what is about to wait but
-- must be refused before it does anything (an HTTP request is not sent).
function M.check_wait()
  if #forbidden > 0 then refuse_wait() end
end

local Unforbid = setmetatable({}, { __close = function() forbidden[#forbidden] = nil end })

-- forbid_yield(why, fn, ...) -> fn's results. Any wait inside fn (a sleep,
-- a task's or a semaphore's or a condition's wait, an HTTP request, a
-- wait_fd) raises "<why>: cannot wait inside a write transaction (...)".
-- Nestable.
function M.forbid_yield(why, fn, ...)
  forbidden[#forbidden + 1] = tostring(why)
  local _ <close> = Unforbid
  return fn(...)
end

-- timers ---------------------------------------------------------------------------
-- A binary heap of { at, seq, token, value }: the earliest deadline first,
-- and of equal deadlines the first set.

local function earlier(a, b)
  return a.at < b.at or (a.at == b.at and a.seq < b.seq)
end

local function heap_push(heap, item)
  local i = #heap + 1
  heap[i] = item
  while i > 1 do
    local parent = i // 2
    if not earlier(item, heap[parent]) then break end
    heap[i], heap[parent] = heap[parent], item
    i = parent
  end
end

local function heap_pop(heap)
  local top, n = heap[1], #heap
  local last = heap[n]
  heap[n] = nil
  n = n - 1
  if n == 0 then return top end
  local i = 1
  while true do
    local child = 2 * i
    if child > n then break end
    if child < n and earlier(heap[child + 1], heap[child]) then child = child + 1 end
    if not earlier(heap[child], last) then break end
    heap[i] = heap[child]
    i = child
  end
  heap[i] = last
  return top
end

local function add_timer(s, at, token, value)
  s.seq = s.seq + 1
  heap_push(s.timers, { at = at, seq = s.seq, token = token, value = value })
end

-- The earliest timer whose wait is still on (the others are dropped).
local function next_timer(s)
  local heap = s.timers
  while heap[1] and not heap[1].token.active do heap_pop(heap) end
  return heap[1]
end

-- waits ------------------------------------------------------------------------------
-- A wait is a token { active, task, values, on_cancel }: whatever can end it
-- (a timer, a release, a response) holds the token, and the first to wake
-- it wins; the others find it inactive and pass.

local function push_ready(task)
  task.status = "ready"
  local ready = task.loop.ready
  ready[#ready + 1] = task
end

-- wake(token, ...) -> true if this ended the wait; its waiter gets the
-- values. Used by the waits below and by entsync.http for responses.
function M.wake(token, ...)
  if not token.active then return false end
  token.active = false
  token.values = table.pack(...)
  local task = token.task
  if task and task.status == "waiting" then push_ready(task) end
  return true
end

local io_step

-- suspend(arm) -> the values the wait is woken with. arm(token) hands the
-- token to what will wake it (state is the running loop then). Yields the
-- current task; blocks in place where it cannot yield; outside any loop,
-- runs one for the wait.
function M.suspend(arm)
  if #forbidden > 0 then refuse_wait() end
  if not state then return M.run(M.suspend, arm) end
  local token = { active = true }
  if in_task() then
    local task = current
    token.task = task
    task.token = token
    arm(token)
    repeat coroutine.yield(YIELD) until not token.active
    task.token = nil
  else
    arm(token)
    local s = state
    while token.active do io_step(s, false) end
  end
  return table.unpack(token.values, 1, token.values.n)
end

-- sleep(seconds): until the deadline. sleep(0) lets every ready task run first.
function M.sleep(seconds)
  if type(seconds) ~= "number" then error("loop.sleep takes seconds, a number", 2) end
  M.suspend(function(token) add_timer(state, monotonic() + math.max(0, seconds), token) end)
end

-- Arms an optional timeout: the wait ends with false when it passes.
local function arm_timeout(token, timeout)
  if timeout then add_timer(state, monotonic() + timeout, token, false) end
end

-- tasks ------------------------------------------------------------------------------

local Task = {}
Task.__index = Task

local task_seq = 0

-- What tasks inherit: a task's context reads through to the context of
-- the task that spawned it (see M.context).
local root_context = {}

local function spawn(s, fn, ...)
  task_seq = task_seq + 1
  local parent = current and current.context or root_context
  local task = setmetatable({ co = coroutine.create(fn), args = table.pack(...), loop = s, waiters = {},
    seq = task_seq, status = "ready", context = setmetatable({}, { __index = parent }) }, Task)
  s.tasks[task] = true
  local ready = s.ready
  ready[#ready + 1] = task
  return task
end

-- context() -> the current task's context: a table of values (such as
-- the sync a run is for) that the tasks it spawns read as their own until
-- they set their own. Outside any task, a context shared by all.
function M.context()
  if current and not current.closing then return current.context end
  return root_context
end

-- spawn(fn, ...) -> task: fn(...) runs as a new task from the next turn.
-- Only while a loop runs.
function M.spawn(fn, ...)
  if not state then error("loop.spawn: no loop is running (loop.run starts one)", 2) end
  return spawn(state, fn, ...)
end

local function finish(task, ok, ...)
  task.status = "done"
  task.results = table.pack(ok, ...)
  task.loop.tasks[task] = nil
  local waiters = task.waiters
  task.waiters = nil
  for _, token in ipairs(waiters) do M.wake(token, ok, ...) end
  if not ok and task.on_failure then task.on_failure((...)) end
end

-- Closes a task's coroutine: its to-be-closed variables run (their waits
-- block in place); its waiters get false and the reason.
local function close_task(task, reason)
  local token = task.token
  task.token = nil
  if token and token.active then
    token.active = false
    if token.on_cancel then token.on_cancel() end
  end
  task.closing, task.status = true, "closing"
  local outer = current
  current = task
  coroutine.close(task.co)
  current = outer
  finish(task, false, reason or "cancelled")
end

local function settle(task, outer, forbid_depth, ok, marker, ...)
  current = outer
  if coroutine.status(task.co) == "dead" then
    -- a coroutine that died of an error keeps its to-be-closed variables
    -- open (a forbid_yield's, say) until it is closed
    if not ok then coroutine.close(task.co) end
    return finish(task, ok, marker, ...)
  end
  if #forbidden > forbid_depth then
    -- a yield of its own inside forbid_yield: refused like any other wait
    local _, refusal = pcall(refuse_wait)
    return close_task(task, refusal)
  end
  if task.cancel_requested then return close_task(task) end
  if marker == YIELD and task.token and task.token.active then
    task.status = "waiting"
  else
    -- woken already, or a yield of the task's own: on at the next turn
    push_ready(task)
  end
end

local function step(task)
  if task.status ~= "ready" then return end
  task.status = "running"
  local outer = current
  current = task
  local args = task.args
  task.args = nil
  if args then
    return settle(task, outer, #forbidden, coroutine.resume(task.co, table.unpack(args, 1, args.n)))
  end
  return settle(task, outer, #forbidden, coroutine.resume(task.co))
end

-- task:wait() -> ok, results...: true and what the task returned, or false
-- and its error ("cancelled" for a cancelled task), once it has ended.
function Task:wait()
  if #forbidden > 0 then refuse_wait() end
  if self.status ~= "done" then
    if self == current and in_task() then error("a task cannot wait for itself", 2) end
    if not in_task() then
      error("task:wait: only another task can wait for a task (a wait here would block every task, "
        .. "the one waited for too)", 2)
    end
    M.suspend(function(token) self.waiters[#self.waiters + 1] = token end)
  end
  return table.unpack(self.results, 1, self.results.n)
end

function Task:done()
  return self.status == "done"
end

-- task:cancel() -> true if it was still alive: its coroutine is closed (its
-- to-be-closed variables run) and its waiters get false, "cancelled".
function Task:cancel()
  if self.status == "done" or self.status == "closing" then return false end
  if self == current then
    if not in_task() then error("task:cancel: a task cancels itself from its own coroutine only", 2) end
    self.cancel_requested = true
    coroutine.yield(YIELD)
  end
  close_task(self)
  return true
end

-- the loop ---------------------------------------------------------------------------

local function report_failure(name)
  return function(err)
    io.stderr:write(string.format("entsync: the SIG%s handler failed: %s\n", name, errors.message(err)))
  end
end

local function dispatch_signals(s, arrived)
  for _, name in ipairs(SIGNALS) do
    if arrived[name] and handlers[name] then
      for _, handle in ipairs({ table.unpack(handlers[name]) }) do
        spawn(s, handle.fn, name).on_failure = report_failure(name)
      end
    end
  end
end

local function fire_timers(s)
  local heap, now = s.timers, monotonic()
  while heap[1] and heap[1].at <= now do
    local timer = heap_pop(heap)
    M.wake(timer.token, timer.value)
  end
end

-- One wait of the loop: for what is ready (zero) or until the next
-- deadline or event; what arrived wakes its waiters.
function io_step(s, zero)
  local arrived = C.signals_arrived() -- a wait elsewhere may have taken the pipe's byte
  if arrived then
    dispatch_signals(s, arrived)
    zero = true
  end
  local timeout
  if zero then
    timeout = 0
  else
    local timer = next_timer(s)
    if timer then timeout = math.max(0, timer.at - monotonic()) end
  end
  local fds, kept = {}, 0
  for i = 1, #s.fd_waits do
    local entry = s.fd_waits[i]
    s.fd_waits[i] = nil
    if entry.token.active then
      kept = kept + 1
      s.fd_waits[kept] = entry
      fds[kept] = entry
    end
  end
  for _, source in ipairs(sources) do fds[#fds + 1] = source end
  local client = transfers and transfers.client
  if client and client:pending() == 0 then client = nil end
  if not timeout and not client and #fds == 0 and handler_count == 0 then
    error("the loop has nothing left to wait for: every task waits for what nothing can bring "
      .. "(no timer, transfer, file descriptor or signal handler is left)", 0)
  end
  counters.waits = counters.waits + 1
  local responses, ready = C.wait(client, timeout, fds)
  if responses[1] then transfers.deliver(responses) end
  for _, entry in ipairs(ready) do entry.on_ready(entry) end
  arrived = C.signals_arrived()
  if arrived then dispatch_signals(s, arrived) end
  fire_timers(s)
end

local function drive(s, main)
  while main.status ~= "done" do
    counters.turns = counters.turns + 1
    local batch = s.ready
    s.ready = {}
    for i = 1, #batch do
      step(batch[i])
      if main.status == "done" then return end
    end
    io_step(s, #s.ready > 0)
  end
end

-- Cancels what is alive, in the order it was spawned, until nothing is
-- (a to-be-closed variable may spawn).
local function cancel_all(s)
  while next(s.tasks) do
    local alive = {}
    for task in pairs(s.tasks) do alive[#alive + 1] = task end
    table.sort(alive, function(a, b) return a.seq < b.seq end)
    for _, task in ipairs(alive) do
      if task.status ~= "done" and task.status ~= "closing" then close_task(task) end
      s.tasks[task] = nil
    end
  end
end

-- run(main, ...) -> main's results (or raises its error): main(...) runs as
-- the first task and the loop turns until it returns; tasks still alive
-- then are cancelled. Refuses to run inside a running loop.
function M.run(main, ...)
  if state then error("the loop is running already: spawn a task instead", 2) end
  local s = { ready = {}, timers = {}, tasks = {}, fd_waits = {}, seq = 0 }
  state = s
  local main_task = spawn(s, main, ...)
  local ok, err = pcall(drive, s, main_task)
  local closed, close_err = pcall(cancel_all, s)
  state, current = nil, nil
  if not ok then error(err, 0) end
  if not closed then error(close_err, 0) end
  local results = main_task.results
  if results[1] then return table.unpack(results, 2, results.n) end
  error(results[2], 0)
end

-- semaphores and conditions ------------------------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore

-- semaphore(n) -> s: n permits; waiters are served first come, first served.
function M.semaphore(n)
  return setmetatable({ permits = n or 1, waiters = {}, head = 1, tail = 0 }, Semaphore)
end

-- The waiters are a queue from head to tail.
local function next_waiter(s)
  local waiters = s.waiters
  while s.head <= s.tail do
    local token = waiters[s.head]
    waiters[s.head] = nil
    s.head = s.head + 1
    if token.active then return token end
  end
  s.head, s.tail = 1, 0
  return nil
end

-- s:acquire([timeout]) -> true with a permit, or false when timeout passed first.
function Semaphore:acquire(timeout)
  if #forbidden > 0 then refuse_wait() end
  if self.permits > 0 then
    self.permits = self.permits - 1
    return true
  end
  if timeout and timeout <= 0 then return false end
  return M.suspend(function(token)
    self.tail = self.tail + 1
    self.waiters[self.tail] = token
    arm_timeout(token, timeout)
  end)
end

-- s:release(): the permit goes to the next waiter at once (it runs at the
-- next turn), or back to the semaphore when none waits.
function Semaphore:release()
  local token = next_waiter(self)
  while token and not M.wake(token, true) do token = next_waiter(self) end
  if not token then self.permits = self.permits + 1 end
end

function Semaphore:available()
  return self.permits
end

local Condition = {}
Condition.__index = Condition

-- condition() -> c: tasks wait on it until another notifies.
function M.condition()
  return setmetatable({ waiters = {}, compact_at = 16 }, Condition)
end

-- The waits that timed out leave their tokens behind: they are dropped
-- whenever the list has doubled since it was last cleaned.
local function add_waiter(c, token)
  local waiters = c.waiters
  if #waiters >= c.compact_at then
    local kept = {}
    for _, t in ipairs(waiters) do
      if t.active then kept[#kept + 1] = t end
    end
    waiters = kept
    c.waiters, c.compact_at = kept, math.max(16, 2 * #kept)
  end
  waiters[#waiters + 1] = token
end

-- c:wait([timeout]) -> true when notified, false when timeout passed first.
function Condition:wait(timeout)
  if #forbidden > 0 then refuse_wait() end
  if timeout and timeout <= 0 then return false end
  return M.suspend(function(token)
    add_waiter(self, token)
    arm_timeout(token, timeout)
  end)
end

function Condition:notify_all()
  local waiters = self.waiters
  self.waiters, self.compact_at = {}, 16
  for _, token in ipairs(waiters) do M.wake(token, true) end
end

-- c:notify_one() -> true if it woke a waiter.
function Condition:notify_one()
  local waiters = self.waiters
  while waiters[1] do
    if M.wake(table.remove(waiters, 1), true) then return true end
  end
  return false
end

-- descriptors, files, signals, transfers ----------------------------------------------------

local function fd_ready(entry)
  M.wake(entry.token, true)
end

-- wait_fd(fd, "r" | "w", [timeout]) -> true when the descriptor is ready,
-- false when timeout passed first.
function M.wait_fd(fd, mode, timeout)
  if #forbidden > 0 then refuse_wait() end
  if math.type(fd) ~= "integer" or (mode ~= "r" and mode ~= "w") then
    error('loop.wait_fd takes a file descriptor and "r" or "w"', 2)
  end
  return M.suspend(function(token)
    local waits = state.fd_waits
    waits[#waits + 1] = { fd = fd, events = mode, token = token, on_ready = fd_ready }
    arm_timeout(token, timeout)
  end)
end

local Watcher = setmetatable({}, { __index = Condition })
Watcher.__index = Watcher

-- watch_file(path) -> watcher: a condition notified whenever path, or
-- path .. "-wal" beside it, is modified by any process (this one too).
-- Changes are noticed while a loop runs. watcher:close() ends it.
function M.watch_file(path)
  local watch, problem = C.file_watch(path)
  if not watch then error("loop.watch_file: " .. problem, 2) end
  local watcher = setmetatable(M.condition(), Watcher)
  watcher.watch = watch
  watcher.source = { fd = watch:fd(), events = "r", on_ready = function()
    local changed, failure = watch:changed()
    if changed == nil then error("loop.watch_file " .. path .. ": " .. failure, 0) end
    if changed then watcher:notify_all() end
  end }
  sources[#sources + 1] = watcher.source
  return watcher
end

function Watcher:close()
  for i, source in ipairs(sources) do
    if source == self.source then
      table.remove(sources, i)
      local closed, problem = self.watch:close()
      if not closed then error("loop.watch_file: " .. problem, 2) end
      return
    end
  end
end

local Handle = {}
Handle.__index = Handle

-- on_signal(name, fn) -> handle: when signal name ("TERM", "INT", "HUP",
-- "USR1") arrives, fn(name) runs as a new task at the next turn of the
-- running loop (a signal that arrives between loops runs it at the next
-- loop's first wait). The first handler of a signal installs entsync's C
-- handler for it; the last one removed gives the signal its former
-- disposition back. handle:remove().
function M.on_signal(name, fn)
  C.signal_handle(name, true)
  local handle = setmetatable({ name = name, fn = fn }, Handle)
  handlers[name] = handlers[name] or {}
  table.insert(handlers[name], handle)
  handler_count = handler_count + 1
  return handle
end

function Handle:remove()
  for i, handle in ipairs(handlers[self.name] or {}) do
    if handle == self then
      table.remove(handlers[self.name], i)
      handler_count = handler_count - 1
      C.signal_handle(self.name, false)
      return
    end
  end
end

-- attach_transfers(client, deliver): entsync.http's curl client, which the
-- loop's waits drive while it has transfers in flight; deliver(responses)
-- files what completed.
function M.attach_transfers(client, deliver)
  transfers = { client = client, deliver = deliver }
end

return M
