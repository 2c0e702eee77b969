-- entsync.loop, the one scheduler (lua/entsync/loop.lua over src/loop.c):
-- tasks, sleeps, semaphores, conditions, forbid_yield, signals sent by
-- another process, file watches written by another process, waits on a
-- pipe, and HTTP transfers against the fixture server. Times are asserted
-- with wide margins (other specs may run beside these on a busy machine);
-- that the loop sleeps instead of spinning is shown by counting its turns
-- (loop.stats()), not by timing.
--
-- (spec/loop_spec.lua is about something else: sync loops between an
-- import and an export.)

local core = require "entsync.core"
local loop = require "entsync.loop"
local http = require "entsync.http"
local fixture = require "fixture"
local helpers = require "helpers"
local S = require "http_support"

-- what a block of code cost the loop: turns and waits
local function cost(fn)
  local before = loop.stats()
  local results = table.pack(fn())
  local after = loop.stats()
  return after.turns - before.turns, after.waits - before.waits, table.unpack(results, 1, results.n)
end

describe("entsync.loop", function()
  describe("tasks", function()
    it("spawned tasks start at the next turn, in spawn order; wait gives each one's results", function()
      local order = {}
      local a_results, b_results = loop.run(function()
        local a = loop.spawn(function(x, y)
          order[#order + 1] = "a"
          return x + y, "a"
        end, 1, 2)
        local b = loop.spawn(function()
          order[#order + 1] = "b"
          loop.sleep(0.01)
          order[#order + 1] = "b after its sleep"
          return "b"
        end)
        order[#order + 1] = "main"
        assert.is_false(a:done())
        local ra = table.pack(a:wait())
        assert.is_true(a:done())
        return ra, table.pack(b:wait())
      end)
      assert.same({ "main", "a", "b", "b after its sleep" }, order)
      assert.same({ n = 3, true, 3, "a" }, a_results)
      assert.same({ n = 2, true, "b" }, b_results)
    end)

    it("loop.run passes its arguments to main and returns all of main's results", function()
      assert.same({ n = 3, "x", nil, 3 }, table.pack(loop.run(function(a, b) return a, nil, b end, "x", 3)))
    end)

    it("several tasks wait for one; an error reaches every waiter", function()
      local seen = loop.run(function()
        local failing = loop.spawn(function()
          loop.sleep(0.02)
          error({ reason = "boom" })
        end)
        local waiters = {}
        for i = 1, 3 do
          waiters[i] = loop.spawn(function()
            local ok, err = failing:wait()
            return ok, err.reason
          end)
        end
        local out = {}
        for i = 1, 3 do out[i] = table.pack(waiters[i]:wait()) end
        -- a task that ended already is waited for at once
        out[4] = table.pack(failing:wait())
        return out
      end)
      for i = 1, 3 do assert.same({ n = 3, true, false, "boom" }, seen[i]) end
      assert.is_false(seen[4][1])
      assert.equal("boom", seen[4][2].reason)
    end)

    it("loop.run raises main's error as it was raised", function()
      local raised = { kind = "mine" }
      local ok, err = pcall(loop.run, function() error(raised) end)
      assert.is_false(ok)
      assert.equal(raised, err)
    end)

    it("tasks still alive when main returns are cancelled: their to-be-closed variables run", function()
      local closed = {}
      local waiter_saw, unstarted
      loop.run(function()
        local sleeper = loop.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() closed[#closed + 1] = "sleeper" end })
          loop.sleep(60)
          closed[#closed + 1] = "never"
        end)
        loop.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() closed[#closed + 1] = "waiter" end })
          waiter_saw = table.pack(sleeper:wait())
        end)
        loop.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() closed[#closed + 1] = "ended" end })
        end)
        loop.sleep(0.01)
        unstarted = loop.spawn(function() closed[#closed + 1] = "never started" end)
      end)
      -- one ended on its own; the others are cancelled in spawn order
      assert.same({ "ended", "sleeper", "waiter" }, closed)
      assert.is_nil(waiter_saw)
      assert.same({ n = 2, false, "cancelled" }, table.pack(unstarted:wait()))
    end)

    it("task:cancel closes the task; its waiters get false, \"cancelled\"", function()
      local closed = false
      local results = loop.run(function()
        local victim = loop.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() closed = true end })
          loop.sleep(60)
        end)
        local waiter = loop.spawn(function() return victim:wait() end)
        loop.sleep(0.01)
        assert.is_true(victim:cancel())
        assert.is_false(victim:cancel())
        assert.is_true(victim:done())
        return table.pack(waiter:wait())
      end)
      assert.is_true(closed)
      assert.same({ n = 3, true, false, "cancelled" }, results)
    end)

    it("refuses to nest: loop.run inside a running loop raises; spawn needs a loop", function()
      local ok, err = loop.run(function()
        return pcall(loop.run, function() end)
      end)
      assert.is_false(ok)
      assert.matches("the loop is running already: spawn a task instead", err, 1, true)
      assert.has_error(function() loop.spawn(function() end) end)
      local ok2, err2 = pcall(loop.spawn, function() end)
      assert.is_false(ok2)
      assert.matches("no loop is running", err2, 1, true)
    end)

    it("loop.running() is true in a task only", function()
      assert.is_false(loop.running())
      local inside, in_own_coroutine = loop.run(function()
        return loop.running(), coroutine.wrap(function() return loop.running() end)()
      end)
      assert.is_true(inside)
      assert.is_false(in_own_coroutine)
      assert.is_false(loop.running())
    end)

    it("a task's own coroutines keep their yields; a wait inside one blocks in place", function()
      local got, other_ran_before = loop.run(function()
        local ticks = 0
        local other = loop.spawn(function()
          for _ = 1, 3 do
            ticks = ticks + 1
            loop.sleep(0.01)
          end
        end)
        local numbers = coroutine.wrap(function()
          for i = 1, 3 do
            -- blocks this task in place: no other task runs meanwhile
            loop.sleep(0.02)
            coroutine.yield(i)
          end
        end)
        local out = { numbers(), numbers(), numbers() }
        local seen = ticks
        other:wait()
        return out, seen
      end)
      assert.same({ 1, 2, 3 }, got)
      assert.equal(0, other_ran_before)
    end)

    it("a task's raw yield is resumed at the next turn", function()
      local order = {}
      loop.run(function()
        local t = loop.spawn(function()
          order[#order + 1] = "t1"
          coroutine.yield("not the loop's")
          order[#order + 1] = "t2"
        end)
        loop.spawn(function() order[#order + 1] = "u" end)
        t:wait()
      end)
      assert.same({ "t1", "u", "t2" }, order)
    end)

    it("a loop whose tasks all wait for what nothing can bring raises instead of hanging", function()
      local ok, err = pcall(loop.run, function() loop.condition():wait() end)
      assert.is_false(ok)
      assert.matches("nothing left to wait for", err, 1, true)
    end)
  end)

  describe("sleep", function()
    it("sleepers wake in the order of their deadlines, none early", function()
      local woke = {}
      local delays = { 0.09, 0.01, 0.05, 0.03, 0.07, 0.02, 0.08, 0.04, 0.06, 0.1 }
      loop.run(function()
        local tasks = {}
        for i, d in ipairs(delays) do
          tasks[i] = loop.spawn(function()
            local from = loop.now()
            loop.sleep(d)
            woke[#woke + 1] = { d = d, late = loop.now() - from - d }
          end)
        end
        -- the same deadline twice: in the order they were set
        tasks[#tasks + 1] = loop.spawn(function() loop.sleep(0.12) woke[#woke + 1] = { d = "first" } end)
        tasks[#tasks + 1] = loop.spawn(function() loop.sleep(0.12) woke[#woke + 1] = { d = "second" } end)
        for _, t in ipairs(tasks) do t:wait() end
      end)
      local got = {}
      for i, w in ipairs(woke) do
        got[i] = w.d
        if w.late then assert.is_true(w.late >= 0, "woke early: " .. w.late) end
      end
      assert.same({ 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, "first", "second" }, got)
    end)

    it("a 1 s sleep costs a handful of turns, not a poll every few ms", function()
      local turns, waits, elapsed = cost(function()
        return loop.run(function()
          local from = loop.now()
          loop.sleep(1)
          return loop.now() - from
        end)
      end)
      assert.is_true(elapsed >= 1 and elapsed < 1.5, "slept " .. elapsed)
      assert.is_true(turns <= 4, turns .. " turns")
      assert.is_true(waits <= 4, waits .. " waits")
    end)

    it("outside any loop, loop.sleep runs one for its length", function()
      local from = loop.now()
      local turns = cost(function() loop.sleep(0.1) end)
      assert.is_true(loop.now() - from >= 0.1)
      assert.is_true(turns >= 1 and turns <= 4, turns .. " turns")
    end)
  end)

  describe("semaphore", function()
    it("a release wakes its waiter at once, with no polling, while the releaser goes on sleeping", function()
      local sem = loop.semaphore(0)
      local turns, waits, lag, held = cost(function()
        return loop.run(function()
          local released_at
          local waiter = loop.spawn(function()
            assert.is_true(sem:acquire())
            return loop.now()
          end)
          local releaser = loop.spawn(function()
            loop.sleep(0.1)
            released_at = loop.now()
            sem:release()
            loop.sleep(1)
          end)
          local _, resumed_at = waiter:wait()
          local lag_seen = resumed_at - released_at
          local releaser_asleep = not releaser:done()
          releaser:wait()
          return lag_seen, releaser_asleep
        end)
      end)
      assert.is_true(held, "the releaser had ended before the waiter resumed")
      assert.is_true(lag < 0.2, string.format("the waiter resumed %.3fs after the release", lag))
      -- two sleeps and a release: a few turns, not one per poll interval
      assert.is_true(turns <= 12, turns .. " turns")
      assert.is_true(waits <= 12, waits .. " waits")
      assert.equal(0, sem:available())
    end)

    it("serves waiters first come, first served; available counts permits", function()
      local sem = loop.semaphore(2)
      local order = loop.run(function()
        assert.is_true(sem:acquire())
        assert.is_true(sem:acquire())
        assert.equal(0, sem:available())
        local got, tasks = {}, {}
        for i = 1, 4 do
          tasks[i] = loop.spawn(function()
            sem:acquire()
            got[#got + 1] = i
          end)
        end
        loop.sleep(0.01)
        for _ = 1, 4 do
          sem:release()
          loop.sleep(0)
        end
        for _, t in ipairs(tasks) do t:wait() end
        sem:release()
        sem:release()
        return got
      end)
      assert.same({ 1, 2, 3, 4 }, order)
      assert.equal(2, sem:available())
    end)

    it("acquire with a timeout gives false when no permit comes; a later release is kept", function()
      local sem = loop.semaphore(0)
      local ok, waited = loop.run(function()
        local from = loop.now()
        return sem:acquire(0.1), loop.now() - from
      end)
      assert.is_false(ok)
      assert.is_true(waited >= 0.1 and waited < 1, "waited " .. waited)
      assert.is_false(sem:acquire(0))
      sem:release()
      assert.equal(1, sem:available())
      assert.is_true(loop.run(function() return sem:acquire(1) end))
    end)
  end)

  describe("condition", function()
    it("wait gives true when notified, false when its timeout passes first", function()
      local cond = loop.condition()
      local first, all, left = loop.run(function()
        local woken = {}
        for i = 1, 3 do
          woken[i] = loop.spawn(function() return cond:wait(5) end)
        end
        local timed = loop.spawn(function()
          local from = loop.now()
          local notified = cond:wait(0.05)
          return notified, loop.now() - from
        end)
        local _, notified, waited = timed:wait()
        assert.is_false(notified)
        assert.is_true(waited >= 0.05 and waited < 1, "waited " .. waited)
        assert.is_true(cond:notify_one())
        loop.sleep(0)
        local first = { woken[1]:done(), woken[2]:done(), woken[3]:done() }
        cond:notify_all()
        local all = {}
        for i = 1, 3 do all[i] = table.pack(woken[i]:wait()) end
        return first, all, cond:notify_one()
      end)
      assert.same({ true, false, false }, first)
      for i = 1, 3 do assert.same({ n = 2, true, true }, all[i]) end
      assert.is_false(left)
    end)
  end)

  describe("forbid_yield", function()
    local REFUSAL = ": cannot wait inside a write transaction (a request, a sleep or a lock wait there would "
      .. "stall every other task)"

    local function refused(fn, ...)
      local ok, err = pcall(loop.forbid_yield, "writing batch 3", fn, ...)
      assert.is_false(ok)
      assert.equal("writing batch 3" .. REFUSAL, tostring(err))
    end

    it("gives fn's results and refuses every kind of wait inside, nested or not", function()
      assert.same({ n = 2, 1, "two" }, table.pack(loop.forbid_yield("w", function(a) return a, "two" end, 1)))
      refused(loop.sleep, 1)
      loop.run(function()
        local sem, cond = loop.semaphore(1), loop.condition()
        local done = loop.spawn(function() end)
        loop.sleep(0)
        refused(loop.sleep, 0)
        refused(function() return sem:acquire() end)
        refused(function() return cond:wait(1) end)
        refused(function() return done:wait() end)
        refused(function() return loop.wait_fd(0, "r", 1) end)
        refused(function() return loop.forbid_yield("inner", function() return 1 end) and loop.sleep(1) end)
        -- after a refusal, waits are allowed again
        loop.sleep(0)
        assert.is_true(sem:acquire())
      end)
    end)

    it("a task's raw yield inside it fails the task with the refusal", function()
      local ok, err = loop.run(function()
        local t = loop.spawn(function()
          loop.forbid_yield("writing batch 3", coroutine.yield)
        end)
        return t:wait()
      end)
      assert.is_false(ok)
      assert.equal("writing batch 3" .. REFUSAL, tostring(err))
      loop.sleep(0) -- the refusal ended with the task
    end)
  end)

  describe("signals", function()
    local pid = core.sys.getpid()

    it("on_signal runs its handler as a task, promptly, while another task's sleep is honoured", function()
      local got = {}
      local handle = loop.on_signal("HUP", function(name)
        got[#got + 1] = { name = name, at = loop.now(), in_task = loop.running() }
      end)
      local results = loop.run(function()
        local from = loop.now()
        local sleeper = loop.spawn(function()
          loop.sleep(2)
          return loop.now() - from
        end)
        -- sent by another process while the loop sleeps in its wait
        os.execute(string.format("(sleep 0.2; kill -HUP %d) >/dev/null 2>&1 &", pid))
        local _, slept = sleeper:wait()
        -- and sent from a task, by a child process it waits for
        os.execute(string.format("kill -HUP %d", pid))
        loop.sleep(0.05)
        return { slept = slept, first = got[1] and got[1].at - from }
      end)
      handle:remove()
      assert.equal(2, #got)
      assert.same({ "HUP", true }, { got[1].name, got[1].in_task })
      -- promptly: the signal woke the loop's wait, or the handler would
      -- have run only when the sleep's deadline did
      assert.is_true(results.first >= 0.2 and results.first < results.slept - 0.5,
        string.format("the handler ran %.3fs after the start, the sleep ended after %.3fs", results.first,
          results.slept))
      assert.is_true(results.slept >= 2, string.format("the sleep ended after %.3fs", results.slept))
    end)

    it("a handler's failure is reported on stderr and the loop goes on", function()
      local handle = loop.on_signal("USR1", function() error("handler failed", 0) end)
      local stderr, written = io.stderr, {}
      io.stderr = { write = function(_, text) written[#written + 1] = text end }
      local ok, result = pcall(loop.run, function()
        os.execute(string.format("kill -USR1 %d", pid))
        loop.sleep(0.05)
        return "went on"
      end)
      io.stderr = stderr
      handle:remove()
      assert.same({ true, "went on" }, { ok, result })
      assert.same({ "entsync: the SIGUSR1 handler failed: handler failed\n" }, written)
    end)

    -- whether this process catches SIGHUP, from the kernel's mask of caught signals
    local function catches_hup()
      for line in io.lines("/proc/self/status") do
        local mask = line:match("^SigCgt:%s*(%x+)")
        if mask then return tonumber(mask:sub(-1), 16) & 1 == 1 end
      end
    end

    it("the first handler of a signal installs the C handler; removing the last gives the signal back", function()
      assert.is_false(catches_hup())
      local count = 0
      local a = loop.on_signal("HUP", function() count = count + 1 end)
      assert.is_true(catches_hup())
      local b = loop.on_signal("HUP", function() count = count + 10 end)
      a:remove()
      a:remove()
      assert.is_true(catches_hup())
      loop.run(function()
        os.execute(string.format("kill -HUP %d", pid))
        loop.sleep(0.05)
      end)
      b:remove()
      assert.equal(10, count)
      assert.is_false(catches_hup())
      assert.has_error(function() loop.on_signal("PIPE", function() end) end)
    end)
  end)

  describe("watch_file", function()
    local dir
    before_each(function() dir = helpers.tmpdir() end)
    after_each(function() helpers.rmdir(dir) end)

    it("wakes a waiting task when another process appends to the file, and not for another file", function()
      local path = dir .. "/store.db"
      helpers.write(path, "")
      local watcher = loop.watch_file(path)
      local result = loop.run(function()
        local quiet = loop.spawn(function() return watcher:wait(0.3) end)
        os.execute("echo x >> " .. helpers.quote(dir .. "/other.db"))
        local _, woke_for_other = quiet:wait()
        local waiter = loop.spawn(function()
          local notified = watcher:wait(5)
          return notified, loop.now()
        end)
        loop.sleep(0.05)
        os.execute("echo x >> " .. helpers.quote(path))
        local written = loop.now()
        local _, notified, at = waiter:wait()
        return { other = woke_for_other, notified = notified, lag = at - written }
      end)
      watcher:close()
      assert.is_false(result.other)
      assert.is_true(result.notified)
      assert.is_true(result.lag < 0.2, string.format("woke %.3fs after the write", result.lag))
    end)

    it("a commit by the sqlite3 shell (write-ahead log) wakes the waiter while the loop sleeps", function()
      local path = dir .. "/store.db"
      helpers.sqlite3(path, "PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
      local watcher = loop.watch_file(path)
      local result = loop.run(function()
        local from = loop.now()
        local waiter = loop.spawn(function() return watcher:wait(5), loop.now() - from end)
        os.execute(string.format("(sleep 0.2; sqlite3 %s 'INSERT INTO t VALUES (1)') >/dev/null 2>&1 &",
          helpers.quote(path)))
        local _, notified, after = waiter:wait()
        return { notified = notified, after = after }
      end)
      watcher:close()
      assert.is_true(result.notified)
      assert.is_true(result.after >= 0.2 and result.after < 2, string.format("woke after %.3fs", result.after))
    end)

    it("a folder that is not there is an error naming it", function()
      local ok, err = pcall(loop.watch_file, dir .. "/missing/store.db")
      assert.is_false(ok)
      assert.matches("cannot watch " .. dir .. "/missing: No such file or directory", err, 1, true)
    end)
  end)

  describe("wait_fd", function()
    it("wakes when a pipe becomes readable, times out when it does not; a pipe is writable at once", function()
      local r, w = core.loop.pipe()
      local result = loop.run(function()
        local timed_out = loop.wait_fd(r, "r", 0.05)
        local reader = loop.spawn(function()
          local ready = loop.wait_fd(r, "r", 5)
          return ready, core.loop.read(r), loop.now()
        end)
        loop.spawn(function()
          loop.sleep(0.1)
          assert.equal(2, core.loop.write(w, "hi"))
        end)
        local written = loop.now() + 0.1
        local _, ready, data, at = reader:wait()
        return { timed_out = timed_out, ready = ready, data = data, lag = at - written,
          writable = loop.wait_fd(w, "w", 1) }
      end)
      assert.is_false(result.timed_out)
      assert.is_true(result.ready)
      assert.equal("hi", result.data)
      assert.is_true(result.lag < 0.2, string.format("woke %.3fs after the write", result.lag))
      assert.is_true(result.writable)
      -- nothing to read: the descriptor says so instead of blocking
      local none, message = core.loop.read(r)
      assert.is_nil(none)
      assert.matches("read: Resource temporarily unavailable", message, 1, true)
      -- the writer closed: the reader is woken and meets the end of the file
      assert.is_true(core.loop.close(w))
      assert.is_true(loop.run(function() return loop.wait_fd(r, "r", 5) end))
      assert.equal("", core.loop.read(r))
      assert.is_true(core.loop.close(r))
    end)

    it("core.loop.wait lists the ready entries themselves, returns at once for a timeout of 0", function()
      local r, w = core.loop.pipe()
      local entries = { { fd = r, events = "r" }, { fd = w, events = "w" } }
      local responses, ready = core.loop.wait(nil, 0, entries)
      assert.same({}, responses)
      assert.equal(1, #ready)
      assert.equal(entries[2], ready[1])
      core.loop.write(w, "x")
      local _, readable = core.loop.wait(nil, 5, { entries[1] })
      assert.equal(entries[1], readable[1])
      assert.has_error(function() core.loop.wait(nil, 0, { { fd = r, events = "x" } }) end)
      core.loop.close(r)
      core.loop.close(w)
    end)
  end)

  describe("HTTP transfers", function()
    local server

    setup(function()
      server = fixture.start({ resources = { contacts = S.records(5) } })
    end)
    teardown(function()
      if server then server.stop() end
    end)
    before_each(function() server.reset() end)

    local function url(path) return server.url .. path end

    -- A task that counts its 20 ms sleeps; ticks() says how many so far.
    local function ticker()
      local count = 0
      local task = loop.spawn(function()
        while true do
          loop.sleep(0.02)
          count = count + 1
        end
      end)
      return function() return count end, task
    end

    it("requests from two tasks are on the wire together", function()
      server.latency(300)
      local from = loop.now()
      local statuses = loop.run(function()
        local a = loop.spawn(function() return http.get(url("/page/contacts")).status end)
        local b = loop.spawn(function() return http.get(url("/offset/contacts")).status end)
        return { select(2, a:wait()), select(2, b:wait()) }
      end)
      local elapsed = loop.now() - from
      assert.same({ 200, 200 }, statuses)
      assert.equal(2, S.peak(server.log()))
      assert.is_true(elapsed < 0.58, string.format("two 300 ms requests took %.2fs", elapsed))
    end)

    it("outside any loop a request runs one on demand", function()
      assert.is_false(loop.active())
      local turns = cost(function()
        assert.equal(200, http.get(url("/page/contacts")).status)
      end)
      assert.is_true(turns >= 1)
      assert.is_false(loop.active())
    end)

    it("a request yields its task: another task goes on while it is in flight", function()
      server.latency(300)
      local ticks, status = loop.run(function()
        local count = ticker()
        local response = http.get(url("/page/contacts"))
        return count(), response.status
      end)
      assert.equal(200, status)
      assert.is_true(ticks >= 5, ticks .. " ticks during a 300 ms request")
    end)

    it("a task waiting on tasks that make requests does not freeze the others meanwhile", function()
      server.latency(200)
      local ticks = loop.run(function()
        local count, ticking = ticker()
        local a = loop.spawn(function() return http.get(url("/page/contacts")).status end)
        local b = loop.spawn(function() return http.get(url("/offset/contacts")).status end)
        assert.same({ true, 200 }, { a:wait() })
        assert.same({ true, 200 }, { b:wait() })
        ticking:cancel()
        return count()
      end)
      assert.is_true(ticks >= 4, ticks .. " ticks during the requests")
    end)

    it("a task that dies of an error inside forbid_yield leaves no refusal behind it", function()
      local ok = loop.run(function()
        local t = loop.spawn(function() return loop.forbid_yield("a batch", function() error("boom") end) end)
        return (t:wait())
      end)
      assert.is_false(ok)
      -- waits after it are waits again
      loop.run(function() loop.sleep(0.01) end)
      assert.is_true(pcall(loop.run, function() loop.sleep(0) end))
    end)

    it("inside forbid_yield a request is refused before it is sent", function()
      server.reset_log()
      local ok, err = loop.run(function()
        return pcall(loop.forbid_yield, "writing batch 1", http.get, url("/page/contacts"))
      end)
      assert.is_false(ok)
      assert.matches("^writing batch 1: cannot wait inside a write transaction", tostring(err))
      assert.same({}, server.log())
      -- and the next request, outside it, goes
      assert.equal(200, http.get(url("/page/contacts")).status)
      assert.equal(1, #server.log())
    end)

    it("a task cancelled while its request is in flight takes the transfer and its slot with it", function()
      server.latency(300)
      local limits = http.limits({ concurrency = 1 })
      loop.run(function()
        local t = loop.spawn(function() return http.get(url("/page/contacts"), { limits = limits }) end)
        loop.sleep(0.05)
        assert.equal(1, limits.in_flight)
        t:cancel()
      end)
      assert.equal(0, limits.in_flight)
      assert.equal(1, limits.slots:available())
      server.latency(0)
      assert.equal(200, http.get(url("/page/contacts"), { limits = limits }).status)
    end)
  end)
end)
