-- The lease outlives the network: a run that waits on the remote longer
-- than its lease's life keeps the lease (its renewal task runs on the loop
-- while the request waits), so a second run started meanwhile is refused
-- with "locked" (exit 3) and the remote sees every write once. The lease
-- is made short by ENTSYNC_LEASE_SECONDS; the fixture delays one request
-- well past it.

local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local LEASE = { ENTSYNC_LEASE_SECONDS = "0.6" }

local function wait_exit(child, timeout)
  assert.is_true(helpers.wait_gone(child.pid, timeout or 20), "the run did not end")
  local r = { stdout = helpers.read(child.stdout) or "", stderr = helpers.read(child.stderr) or "" }
  os.remove(child.stdout)
  os.remove(child.stderr)
  return r
end

-- Starts a run of the job that waits on `path` (a fault of the fixture),
-- then, while it waits well past its lease, a second run: the second is
-- refused, the first ends well. Returns the first run's output.
local function overlap(server, dir, fault)
  server.faults { fault }
  local first = helpers.spawn(dir, { "job.lua", "run", "--no-progress" }, LEASE)
  -- the lease (0.6 s) has expired thrice over unless it was renewed
  T.sleep(2)
  assert.is_true(helpers.alive(first.pid), "the first run ended before the second started")
  local second = T.run(dir, { "run", "--no-progress" }, LEASE)
  assert.equal(3, second.code, second.stdout .. second.stderr)
  assert.matches("locked by another run", second.stderr)
  local r = wait_exit(first)
  assert.is_nil(r.stderr:find("lease was lost", 1, true), r.stderr)
  assert.is_nil(r.stderr:find("took over", 1, true), r.stderr)
  return r
end

describe("a lease shorter than a wait on the network", function()
  local server, dir

  T.fresh_remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  it("export: a create delayed past the lease holds it; a second run is refused; one create reaches the remote",
    function()
      X.http_job(dir, server.url)
      local r = T.run(dir, { "run", "--no-progress" }, LEASE)
      assert.equal(0, r.code, r.stdout .. r.stderr)
      X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@example.com', 'New', 7)")
      server.reset_log()
      r = overlap(server, dir, { kind = "latency", method = "POST", path = "/api/contacts", ms = 3500 })
      assert.equal(1, X.summary(r.stdout, true).created, r.stdout .. r.stderr)
      local posts = X.writes(server.log(), { method = "POST" })
      assert.equal(1, #posts)
      local names = {}
      for _, record in pairs(X.remote(server, "contacts")) do
        names[record.name] = (names[record.name] or 0) + 1
      end
      assert.equal(1, names.New)
      assert.equal(4, T.value(dir, "SELECT count(*) FROM contact"))
      assert.same({}, T.query(dir, "SELECT * FROM entsync_locks"))
    end)

  it("import: a page delayed past the lease holds it; a second run is refused; the import ends whole", function()
    X.http_job(dir, server.url, { export = "false" })
    -- pages are fetched ahead, side by side: every one of them is delayed
    local r = overlap(server, dir, { kind = "latency", method = "GET", path = "/api/contacts", ms = 3500, count = 8 })
    assert.equal(3, X.summary(r.stdout).created, r.stdout .. r.stderr)
    assert.equal(3, T.value(dir, "SELECT count(*) FROM contact"))
    assert.equal(1, T.value(dir, "SELECT count(*) FROM entsync_history WHERE status = 'ok'"))
  end)

  it("ENTSYNC_LEASE_SECONDS that is no positive number is refused as a usage error", function()
    X.http_job(dir, server.url)
    local r = T.run(dir, { "run", "--no-progress" }, { ENTSYNC_LEASE_SECONDS = "soon" })
    assert.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("ENTSYNC_LEASE_SECONDS", r.stderr)
  end)
end)
