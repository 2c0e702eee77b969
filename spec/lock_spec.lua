-- Locks: a sync is leased to one run at a time (entsync_locks). Leases are
-- made by hand (a row with a live pid we own) or held by a real, slow
-- entsync-run child process.

local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"

local contact, summary = S.contact, S.summary

local dir

local own = S.own

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  S.cleanup()
  helpers.rmdir(dir)
end)

local function escape(s)
  return (tostring(s):gsub("%p", "%%%0"))
end

local function five()
  local records = {}
  for i = 1, 5 do records[i] = contact(i) end
  return records
end

-- A job with its data and its store (no run yet).
local function prepared()
  S.job(dir, {})
  S.data(dir, five())
  S.create_store(dir)
end

local function leases()
  return S.query(dir, "SELECT * FROM entsync_locks ORDER BY name")
end

local function slow_job(count, delay, list_delay)
  helpers.install_slow_provider(dir)
  S.job(dir, { provider = string.format('provider "slow" { count = %d, delay = %s, list_delay = %s }', count, delay,
    list_delay or 0), remote = "files", batch = 2 })
end

describe("a held lease", function()
  it("makes a second run exit 3, naming the holder's pid and host on stderr", function()
    prepared()
    local sleeper = own(S.sleeper(30))
    S.lease(dir, "contacts", { pid = sleeper })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(3, r.code, r.stderr)
    assert.matches('sync "contacts" is locked', r.stderr)
    assert.matches("pid " .. sleeper .. " on " .. escape(core.sys.hostname()), r.stderr)
    assert.equal("", r.stdout)
    assert.equal(0, S.count(dir, "contact"))
    local lease = leases()[1]
    assert.same({ "sync:contacts", "spec-owner", sleeper }, { lease.name, lease.owner, lease.pid })
  end)

  it("holds off import, refresh and retry of the same sync too", function()
    prepared()
    local sleeper = own(S.sleeper(30))
    S.lease(dir, "contacts", { pid = sleeper })
    assert.equal(3, S.run(dir, "import", "contacts", "1").code)
    assert.equal(3, S.run(dir, "refresh", "contacts", "--all").code)
    assert.equal(3, S.run(dir, "retry", "contacts").code)
    assert.equal(0, S.count(dir, "contact"))
  end)

  it("on another host, alive as far as we can tell, is not taken over", function()
    prepared()
    S.lease(dir, "contacts", { pid = 4242, host = "some-other-host.invalid" })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(3, r.code)
    assert.matches("some%-other%-host%.invalid", r.stderr)
  end)

  it("--wait 1 waits about a second, then fails with 3", function()
    prepared()
    local sleeper = own(S.sleeper(30))
    S.lease(dir, "contacts", { pid = sleeper })
    local t0 = core.sys.monotonic()
    local r = S.run(dir, "run", "--no-progress", "--wait", "1")
    local elapsed = core.sys.monotonic() - t0
    assert.equal(3, r.code)
    assert.matches("pid " .. sleeper, r.stderr)
    assert.is_true(elapsed >= 0.95, "returned after " .. elapsed .. "s")
    assert.is_true(elapsed < 5, "returned after " .. elapsed .. "s")
  end)

  it("--wait 5 succeeds once the holder releases the lease", function()
    prepared()
    local sleeper = own(S.sleeper(30))
    S.lease(dir, "contacts", { pid = sleeper })
    os.execute(string.format("(sleep 0.5; sqlite3 -cmd '.timeout 3000' %s 'DELETE FROM entsync_locks') >/dev/null 2>&1 &",
      helpers.quote(S.db(dir))))
    local t0 = core.sys.monotonic()
    local r = S.run(dir, "run", "--no-progress", "--wait", "5")
    local elapsed = core.sys.monotonic() - t0
    assert.equal(0, r.code, r.stderr)
    assert.equal(5, summary(r.stdout).created)
    assert.is_true(elapsed >= 0.4, "did not wait: " .. elapsed .. "s")
    assert.is_true(elapsed < 5)
    assert.same({}, leases())
  end)
end)

describe("a stale lease", function()
  it("whose pid is dead is taken over with a warning, and the run succeeds", function()
    prepared()
    local dead = S.dead_pid()
    S.lease(dir, "contacts", { pid = dead })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(5, summary(r.stdout).created)
    assert.matches("warn", r.stderr)
    assert.matches("took over", r.stderr)
    assert.matches("dead", r.stderr)
    assert.matches("pid " .. dead, r.stderr)
    assert.same({}, leases())
  end)

  it("whose expires_at has passed is taken over with a warning, even from another host", function()
    prepared()
    local sleeper = own(S.sleeper(30))
    S.lease(dir, "contacts", { pid = sleeper, host = "some-other-host.invalid", expires_at = core.sys.now() - 5 })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.equal(5, summary(r.stdout).created)
    assert.matches("took over", r.stderr)
    assert.matches("expired", r.stderr)
    assert.same({}, leases())
  end)
end)

describe("leases of real runs", function()
  it("a run holds the lease while it works and releases it at the end, also when entities fail", function()
    S.job(dir, {})
    S.data(dir, { contact(1), contact(2, { age = "x" }) })
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(1, r.code)
    assert.same({}, leases())
    S.job(dir, { remote = 'files "missing.ndjson"' })
    local r2 = S.run(dir, "run", "--no-progress")
    assert.equal(2, r2.code)
    assert.same({}, leases())
  end)

  -- The child's lease, read without taking the store's write lock.
  local function child_lease(pid)
    return helpers.wait_for(function()
      if not S.exists(S.db(dir)) then return nil end
      local row = S.peek(dir, "SELECT pid, host, expires_at FROM entsync_locks WHERE name = 'sync:contacts'")[1]
      return row and tonumber(row[1]) == pid and row or nil
    end, 5)
  end

  it("a second run while a real run holds the lease exits 3 naming it; --wait lets it follow", function()
    -- the child holds its lease for 1.5 s before its first batch
    slow_job(6, 0, 1.5)
    local child = S.track(helpers.spawn(dir, { "job.lua", "run", "--no-progress" }))
    own(child.pid)
    local lease = child_lease(child.pid)
    assert.is_not_nil(lease, "the child took no lease")
    assert.equal(core.sys.hostname(), lease[2])
    assert.is_true(tonumber(lease[3]) > core.sys.now())

    local r = S.run(dir, "run", "--no-progress")
    assert.equal(3, r.code, r.stderr)
    assert.matches("pid " .. child.pid .. " on " .. escape(core.sys.hostname()), r.stderr)

    local status = S.run(dir, "status")
    assert.matches("lock%s+held by pid " .. child.pid, status.stdout)

    local follower = S.run(dir, "run", "--no-progress", "--wait", "10")
    assert.equal(0, follower.code, follower.stderr)
    assert.is_true(helpers.wait_gone(child.pid, 5))
    assert.equal(6, summary(helpers.read(child.stdout)).created)
    assert.equal(6, summary(follower.stdout).unchanged)
    assert.same({}, leases())
  end)

  it("a second run while a real run is inside a batch exits 3 promptly, naming it", function()
    -- the child's provider is slow between records, inside its batches
    slow_job(10, 0.1)
    local child = S.track(helpers.spawn(dir, { "job.lua", "run", "--no-progress" }))
    own(child.pid)
    assert.is_not_nil(child_lease(child.pid), "the child took no lease")
    local t0 = core.sys.monotonic()
    local r = S.run(dir, "run", "--no-progress")
    local elapsed = core.sys.monotonic() - t0
    local child_running = helpers.alive(child.pid)
    assert.is_true(helpers.wait_gone(child.pid, 15))
    assert.equal(3, r.code, string.format("exit %s after %.1fs (child still running: %s): %s%s", tostring(r.code),
      elapsed, tostring(child_running), r.stdout, r.stderr))
    assert.matches("pid " .. child.pid, r.stderr)
    assert.is_true(elapsed < 1.5, "took " .. elapsed .. "s")
  end)

  it("a run killed while holding the lease leaves it to the next run, which takes it over", function()
    slow_job(40, 0.05)
    local child = S.spawn(dir, { "job.lua", "run", "--no-progress" })
    own(child.pid)
    assert.is_not_nil(child_lease(child.pid), "the child took no lease")
    assert.is_not_nil(helpers.wait_for(function()
      local row = S.peek(dir, "SELECT count(*) FROM entsync_idmap")[1]
      return row and tonumber(row[1]) >= 4
    end, 10))
    helpers.kill(child.pid, "KILL")
    assert.is_true(helpers.wait_gone(child.pid, 5))
    assert.is_true(S.wait_reaped(child.pid, 5))
    assert.equal(child.pid, leases()[1].pid)
    slow_job(40, 0)
    local r = S.run(dir, "run", "--no-progress")
    assert.equal(0, r.code, r.stderr)
    assert.matches("took over", r.stderr)
    assert.matches("pid " .. child.pid, r.stderr)
    assert.equal(40, S.count(dir, "contact"))
    assert.same({}, leases())
  end)
end)
