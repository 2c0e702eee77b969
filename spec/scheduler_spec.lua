-- One scheduler: a run's syncs progress side by side, each waiting on its
-- own remote (the fixture's latency) while another drains the change log;
-- and the daemon sleeps until something happens: no CPU while idle, and a
-- commit by another program is exported within about a second.

local core = require "entsync.core"
local helpers = require "helpers"
local D = require "daemon_support"
local X = require "export_support"
local T = require "trust_support"

local function records(prefix, n)
  local out = {}
  for i = 1, n do
    out[i] = { id = i, email = prefix .. i .. "@example.com", name = prefix .. " " .. i, age = i,
      updated_at = string.format("2026-01-01T00:%02d:%02dZ", i // 60, i % 60) }
  end
  return out
end

local LATENCY_MS = 30
local PAGES = 16 -- pages of 2 records, read one at a time, for a and b
local CREATES = 128 -- rows c creates, 8 at a time

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

-- The span of a set of log entries at the server: first start, last end.
local function span(entries)
  local first, last = math.huge, -math.huge
  for _, e in ipairs(entries) do
    first, last = math.min(first, e.start), math.max(last, e["end"])
  end
  return first, last
end

-- Whether some entry of xs overlaps some entry of ys in time.
local function interleaved(xs, ys)
  for _, x in ipairs(xs) do
    for _, y in ipairs(ys) do
      if x.start < y["end"] and y.start < x["end"] then return true end
    end
  end
  return false
end

describe("the scheduler", function()
  local server, dir

  T.fresh_remote_for_each_test({ a = records("a", 2 * PAGES), b = records("b", 2 * PAGES), c = {} },
    function(remote, tmp)
      server, dir = remote, tmp
    end)

  it("two slow imports and a large drain progress concurrently in one run", function()
    local lines = {
      'entity "a_item" { email = "text", name = "text", age = "integer" }',
      'entity "b_item" { email = "text", name = "text", age = "integer" }',
      'entity "c_item" { email = "text", name = "text", age = "integer" }',
    }
    for _, s in ipairs({ { "a", 1 }, { "b", 1 }, { "c", 8 } }) do
      lines[#lines + 1] = string.format('local p_%s = provider "http_json" { base_url = %q, name = "p_%s", '
        .. 'page = { style = "page", size = 2 }, concurrency = %d, update_method = "PUT", attempts = 2 }', s[1],
        server.url, s[1], s[2])
    end
    lines[#lines + 1] = 'local m = { email = "email", name = "name", age = "age" }'
    lines[#lines + 1] = 'sync "a" { remote = p_a "api/a", entity = "a_item", mapping = m, import = { mode = "full" } }'
    lines[#lines + 1] = 'sync "b" { remote = p_b "api/b", entity = "b_item", mapping = m, import = { mode = "full" } }'
    lines[#lines + 1] = 'sync "c" { remote = p_c "api/c", entity = "c_item", mapping = m, import = false, '
      .. "export = { on_change = true } }"
    helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
    ok_run(dir)
    assert.equal(2 * PAGES, T.value(dir, "SELECT count(*) FROM a_item"))
    -- a large change log for c, written by another program
    X.sql(dir, string.format([[WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
      INSERT INTO c_item (email, name, age) SELECT 'c' || i || '@example.com', 'c ' || i, i FROM n]], CREATES))
    assert.equal(CREATES, #X.outbox(dir, "c"))
    server.latency(LATENCY_MS)
    server.reset_log()
    local r = ok_run(dir)
    local out = T.lines(r.stdout)
    assert.equal(2 * PAGES, T.counts(out.a.import).unchanged, r.stdout)
    assert.equal(2 * PAGES, T.counts(out.b.import).unchanged, r.stdout)
    assert.equal(CREATES, T.counts(out.c.export).created, r.stdout)
    local log = server.log()
    local a = T.requests(log, { under = "/api/a" })
    local b = T.requests(log, { under = "/api/b" })
    local c = T.requests(log, { under = "/api/c", method = "POST" })
    assert.is_true(#a >= PAGES and #b >= PAGES, "pages read: " .. #a .. ", " .. #b)
    assert.equal(CREATES, #c)
    -- each pair of syncs had requests in flight at the same moment
    assert.is_true(interleaved(a, b), "a and b never had requests in flight together")
    assert.is_true(interleaved(a, c), "a and c never had requests in flight together")
    assert.is_true(interleaved(b, c), "b and c never had requests in flight together")
    -- all three were under way at once
    local a0, a1 = span(a)
    local b0, b1 = span(b)
    local c0, c1 = span(c)
    assert.is_true(math.max(a0, b0, c0) < math.min(a1, b1, c1), "the three spans do not overlap")
    -- and the whole took well under the sum of its parts
    local total = math.max(a1, b1, c1) - math.min(a0, b0, c0)
    local sum = (a1 - a0) + (b1 - b0) + (c1 - c0)
    assert.is_true(total < 0.7 * sum, string.format("total %.3fs, sum of the syncs' spans %.3fs", total, sum))
    -- each one paced by its own remote: a's pages one after another
    assert.is_true(a1 - a0 >= PAGES * LATENCY_MS / 1000 * 0.9, string.format("a took %.3fs", a1 - a0))
  end)

  describe("the daemon", function()
    after_each(function() D.cleanup() end)

    -- utime + stime of a process, in seconds.
    local function cpu_seconds(pid)
      local stat = helpers.read("/proc/" .. pid .. "/stat")
      assert.is_not_nil(stat, "no /proc/" .. pid .. "/stat")
      local rest = stat:match("^%d+ %b() (.*)$")
      local fields = {}
      for field in rest:gmatch("%S+") do fields[#fields + 1] = field end
      -- fields after the command: state is 3rd in stat, so utime (14) and stime (15) are 12th and 13th here
      local ticks = tonumber(fields[12]) + tonumber(fields[13])
      local pipe = io.popen("getconf CLK_TCK")
      local hz = tonumber(pipe:read("l")) or 100
      pipe:close()
      return ticks / hz
    end

    it("sleeps while idle (no CPU, no requests) and exports another program's commit within about a second",
      function()
        X.http_job(dir, server.url, { resource = "api/a" })
        ok_run(dir)
        local id = T.local_of(dir, "contacts", 3)
        local child = D.daemon(dir)
        -- settle: the daemon's start-up work is done
        core.sys.sleep(0.5)
        server.reset_log()
        local before = cpu_seconds(child.pid)
        core.sys.sleep(3)
        local after = cpu_seconds(child.pid)
        assert.is_true(after - before < 0.1, string.format("the idle daemon used %.2fs of CPU in 3s", after - before))
        assert.same({}, server.log(), "the idle daemon sent requests")
        assert.is_true(helpers.alive(child.pid), D.stderr(child))
        -- a commit by another program
        local t0 = core.sys.monotonic()
        X.sql(dir, string.format("UPDATE contact SET name = 'daemon' WHERE id = %d", id))
        local put = helpers.wait_for(function()
          for _, e in ipairs(server.log()) do
            if e.method == "PUT" and e.status then return e end
          end
        end, 10)
        local elapsed = core.sys.monotonic() - t0
        assert.is_not_nil(put, "nothing was exported: " .. D.stderr(child))
        assert.equal("/api/a/3", put.path)
        assert.is_true(elapsed < 1.5, string.format("exported %.2fs after the commit", elapsed))
        assert.equal("daemon", X.remote(server, "a")[3].name)
        local code = D.stop(child, 10)
        assert.equal(0, code, D.stderr(child))
      end)
  end)
end)
