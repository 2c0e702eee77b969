-- SIGKILL at random moments of exports to the fixture remote (http_json),
-- real processes and real signals, again and again, then runs until
-- nothing is left to do: every local row is on the remote exactly once,
-- the import of a record we created never makes a second local row, and
-- nothing of an update is lost. With an Idempotency-Key (the fixture
-- answers a repeated key with its first answer) and without one (entsync
-- finds a create that reached the remote by the provider's lookup).

local helpers = require "helpers"
local S = require "import_support"
local X = require "export_support"
local T = require "trust_support"

local N = 24

after_each(S.cleanup)

local function job(dir, url, case)
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, '
      .. 'update_method = "PUT", attempts = 2, concurrency = 2%s }', url, case.settings and (", " .. case.settings) or ""),
    'sync "contacts" { remote = api "api/contacts", entity = "contact",',
    '  mapping = { email = "email", name = "name", age = "age" },',
    "  import = " .. (case.import or '{ mode = "full", changed = "updated_at" }') .. ",",
    "  export = { on_change = true" .. (case.export and (", " .. case.export) or "") .. " } }",
  }, "\n") .. "\n")
end

-- Runs the job and SIGKILLs it after a random pause, `kills` times (a run
-- that ended before its kill counts as no kill); returns the kills that
-- hit a live run.
local function kill_loop(dir, kills, most)
  local hit = 0
  for _ = 1, kills do
    local child = S.spawn(dir, { "job.lua", "run", "--no-progress" })
    S.own(child.pid)
    T.sleep(0.05 + math.random() * most)
    if helpers.alive(child.pid) then hit = hit + 1 end
    helpers.kill(child.pid, "KILL")
    assert.is_true(S.wait_reaped(child.pid, 5))
  end
  return hit
end

-- Runs until a run exits 0 with nothing more sent.
local function settle(server, dir)
  for _ = 1, 6 do
    server.reset_log()
    local r = T.run(dir, { "run", "--no-progress" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    if #T.writes(server.log()) == 0 then return r end
  end
  error("the runs never settled")
end

-- Every local row linked to one remote record holding its values, and
-- nothing else at the remote.
local function assert_one_to_one(server, dir)
  local remote = server.data().contacts or {}
  local locals = T.query(dir, "SELECT c.id, c.email, c.name, c.age, m.remote_id FROM contact c "
    .. "LEFT JOIN entsync_map m ON m.local_id = c.id AND m.sync = 'contacts' ORDER BY c.id")
  local emails = {}
  for _, r in ipairs(remote) do emails[r.email] = (emails[r.email] or 0) + 1 end
  local dup = {}
  for email, n in pairs(emails) do if n > 1 then dup[#dup + 1] = email .. " x" .. n end end
  assert.same({}, dup, "records created twice at the remote")
  assert.equal(N, #remote, "remote records")
  assert.equal(N, #locals, "local rows")
  local function key_of(id) return tostring(math.tointeger(id) or id) end
  local by_id, seen = {}, {}
  for _, r in ipairs(remote) do by_id[key_of(r.id)] = r end
  for _, row in ipairs(locals) do
    assert.is_not_nil(row.remote_id, "local " .. row.id .. " is linked to no remote record")
    local key = key_of(row.remote_id)
    assert.is_nil(seen[key], "two local rows link to remote " .. key)
    seen[key] = true
    local r = by_id[key]
    assert.is_not_nil(r, "local " .. row.id .. " links to remote " .. key .. ", which does not exist")
    assert.same({ row.email, row.name, row.age }, { r.email, r.name, r.age })
  end
end

for _, case in ipairs({
  { what = "with an Idempotency-Key", settings = nil },
  { what = "without an idempotency key", settings = 'idempotency_header = false' },
  { what = "of an export-only sync with an Idempotency-Key", settings = nil, import = "false" },
  { what = "of an export-only sync without an idempotency key (found again by its natural_key)",
    settings = 'idempotency_header = false', import = "false", export = 'natural_key = "email"' },
}) do
  describe("SIGKILL at random moments of exports " .. case.what, function()
    local server, dir

    T.fresh_remote_for_each_test({ contacts = {} }, function(remote, tmp)
      server, dir = remote, tmp
    end, { latency_ms = 50 })

    it("creates: N local rows end as N remote records and N local rows, linked one to one", function()
      math.randomseed(os.time())
      job(dir, server.url, case)
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      local values = {}
      for i = 1, N do values[i] = string.format("('c%d@example.com', 'Contact %d', %d)", i, i, i) end
      X.sql(dir, "INSERT INTO contact (email, name, age) VALUES " .. table.concat(values, ", "))
      local hit = kill_loop(dir, 10, 0.15)
      assert.is_true(hit >= 2, "only " .. hit .. " kills hit a live run")
      settle(server, dir)
      assert_one_to_one(server, dir)

      -- updates, killed again: the final remote state is the final local state
      X.sql(dir, "UPDATE contact SET name = name || ' v2', age = age + 100")
      kill_loop(dir, 5, 0.3)
      X.sql(dir, "UPDATE contact SET name = name || ' v3' WHERE id % 2 = 0")
      kill_loop(dir, 5, 0.3)
      settle(server, dir)
      assert_one_to_one(server, dir)
    end)
  end)
end
