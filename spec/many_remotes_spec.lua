-- Many remotes on one entity: three syncs a, b and c each import the
-- contact entity from their own remote (three resources of one fixture
-- server, each behind a provider of its own) and export its changes on
-- change, beside the store that other programs (the sqlite3 shell) write.
-- A change travels from where it was made to every other side, and never
-- back: a remote receives a write only for changes that did not come from
-- it, counted exactly in the fixture's request log.

local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"

local SYNCS = { "a", "b", "c" }

local function records(n)
  local out = {}
  for i = 1, n do
    out[i] = { id = i, email = "p" .. i .. "@example.com", name = "Person " .. i, age = 20 + i,
      updated_at = string.format("2026-01-01T00:00:%02dZ", i) }
  end
  return out
end

local function write_job(dir, url)
  local lines = { 'entity "contact" { email = "text", name = "text", age = "integer" }' }
  for _, name in ipairs(SYNCS) do
    lines[#lines + 1] = string.format('local remote_%s = provider "http_json" { base_url = %q, name = "remote_%s", '
      .. 'page = { style = "page", size = 100 }, update_method = "PUT", attempts = 2 }', name, url, name)
    lines[#lines + 1] = string.format('sync %q { remote = remote_%s "api/%s", entity = "contact", '
      .. 'mapping = { email = "email", name = "name", age = "age" }, '
      .. 'import = { mode = "full", changed = "updated_at" }, export = { on_change = true } }', name, name, name)
  end
  helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
end

local function ok_run(dir, ...)
  local r = T.run(dir, { ... })
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

-- Successful writes (POST, PUT, PATCH, DELETE) per remote in a log:
-- { a = { PUT = n, POST = n }, ... }, and the paths each went to.
local function writes_per_remote(log)
  local out, paths = {}, {}
  for _, name in ipairs(SYNCS) do out[name], paths[name] = { PUT = 0, POST = 0, other = 0 }, {} end
  for _, e in ipairs(T.writes(log)) do
    local remote = e.path:match("^/api/(%a)")
    if remote and out[remote] and e.status and e.status < 300 then
      local key = out[remote][e.method] and e.method or "other"
      out[remote][key] = out[remote][key] + 1
      paths[remote][#paths[remote] + 1] = e.path
    end
  end
  return out, paths
end

describe("three remotes and the store on one entity", function()
  local server, dir

  T.fresh_remote_for_each_test({ a = records(4), b = {}, c = {} }, function(remote, tmp)
    server, dir = remote, tmp
    write_job(dir, server.url)
  end)

  -- Every local contact with its name at each side: { [local_id] =
  -- { here = name, a = name, b = name, c = name } }.
  local function sides()
    local data = server.data()
    local out = {}
    for _, row in ipairs(T.query(dir, "SELECT id, name FROM contact ORDER BY id")) do
      out[row.id] = { here = row.name }
    end
    for _, sync in ipairs(SYNCS) do
      local by_id = {}
      for _, r in ipairs(data[sync] or {}) do by_id[tostring(math.tointeger(r.id) or r.id)] = r end
      for local_id, entry in pairs(out) do
        local remote_id = T.remote_of(dir, sync, local_id)
        local record = remote_id ~= nil and by_id[tostring(remote_id)] or nil
        entry[sync] = record and record.name or "(none)"
      end
    end
    return out
  end

  local function assert_everywhere(expected)
    local now = sides()
    for local_id, name in pairs(expected) do
      assert.same({ here = name, a = name, b = name, c = name }, now[local_id], "local " .. local_id)
    end
  end

  -- Changes a record at a remote the way another client would.
  local function remote_edit(sync, local_id, name)
    local remote_id = T.remote_of(dir, sync, local_id)
    assert.is_not_nil(remote_id, sync .. " has no remote for local " .. local_id)
    local current
    for _, r in ipairs(server.data()[sync]) do
      if tostring(math.tointeger(r.id) or r.id) == tostring(remote_id) then current = r end
    end
    X.remote_put(server, sync, remote_id, { email = current.email, name = name, age = current.age })
  end

  -- The first run: a's records are created at b and c, each exactly once.
  local function first_run()
    local r = ok_run(dir)
    local counts = writes_per_remote(server.log())
    assert.same({ a = { PUT = 0, POST = 0, other = 0 }, b = { PUT = 0, POST = 4, other = 0 },
      c = { PUT = 0, POST = 4, other = 0 } }, counts, r.stdout .. r.stderr)
    server.reset_log()
    r = ok_run(dir)
    assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
    for _, sync in ipairs(SYNCS) do
      assert.equal(4, T.counts(T.lines(r.stdout)[sync].import).unchanged, r.stdout)
    end
    assert.equal(4, T.value(dir, "SELECT count(*) FROM contact"))
  end

  it("10 cycles of a change at each remote and one local: every change reaches every other side, no echo writes",
    function()
      first_run()
      local ids = {}
      for i, row in ipairs(T.query(dir, "SELECT id FROM contact ORDER BY id")) do ids[i] = row.id end
      local expected = {}
      for _, id in ipairs(ids) do expected[id] = T.value(dir, "SELECT name FROM contact WHERE id = ?1", id) end
      for cycle = 1, 10 do
        -- four different records: one changed at a, one at b, one at c, one here
        local pick = {}
        for k = 0, 3 do pick[k + 1] = ids[(cycle + k) % 4 + 1] end
        local at_a, at_b, at_c, here = pick[1], pick[2], pick[3], pick[4]
        remote_edit("a", at_a, "from a " .. cycle)
        remote_edit("b", at_b, "from b " .. cycle)
        remote_edit("c", at_c, "from c " .. cycle)
        X.sql(dir, string.format("UPDATE contact SET name = 'from here %d' WHERE id = %d", cycle, here))
        expected[at_a], expected[at_b], expected[at_c], expected[here] =
          "from a " .. cycle, "from b " .. cycle, "from c " .. cycle, "from here " .. cycle
        server.reset_log()
        local r = ok_run(dir)
        -- each remote got the three changes that did not come from it: PUTs
        -- to exactly those records, nothing created, nothing sent back
        local counts, paths = writes_per_remote(server.log())
        local context = string.format("cycle %d: %s%s", cycle, r.stdout, r.stderr)
        assert.same({ a = { PUT = 3, POST = 0, other = 0 }, b = { PUT = 3, POST = 0, other = 0 },
          c = { PUT = 3, POST = 0, other = 0 } }, counts, context)
        local function path(sync, local_id)
          return string.format("/api/%s/%s", sync, tostring(T.remote_of(dir, sync, local_id)))
        end
        local function sorted(list) table.sort(list) return list end
        assert.same(sorted({ path("a", at_b), path("a", at_c), path("a", here) }), sorted(paths.a), context)
        assert.same(sorted({ path("b", at_a), path("b", at_c), path("b", here) }), sorted(paths.b), context)
        assert.same(sorted({ path("c", at_a), path("c", at_b), path("c", here) }), sorted(paths.c), context)
        assert_everywhere(expected)
        -- and a second run finds nothing to do anywhere
        server.reset_log()
        r = ok_run(dir)
        assert.same({}, T.writes(server.log()), "cycle " .. cycle .. " second run: " .. r.stdout .. r.stderr)
        assert.equal(0, #T.query(dir, "SELECT * FROM entsync_conflicts"), "cycle " .. cycle)
      end
      assert_everywhere(expected)
      assert.equal(4, T.value(dir, "SELECT count(*) FROM contact"))
      for _, sync in ipairs(SYNCS) do
        assert.equal(4, #server.data()[sync], sync)
        assert.same({}, X.outbox(dir, sync))
      end
    end)

  it("each exporting sync has its own position in the change log", function()
    first_run()
    local one = T.value(dir, "SELECT min(id) FROM contact")
    X.sql(dir, string.format("UPDATE contact SET name = 'moved' WHERE id = %d", one))
    local function position(sync)
      return T.value(dir, "SELECT t.out_seq FROM entsync_state t JOIN entsync_syncs s ON s.id = t.sync "
        .. "WHERE s.name = ?1", sync)
    end
    local before = { a = position("a"), b = position("b"), c = position("c") }
    for _, sync in ipairs(SYNCS) do assert.equal(1, #X.outbox(dir, sync), sync) end
    -- run a alone: a sends it and moves on; b and c still have it pending
    server.reset_log()
    ok_run(dir, "run", "a")
    assert.same({ a = { PUT = 1, POST = 0, other = 0 }, b = { PUT = 0, POST = 0, other = 0 },
      c = { PUT = 0, POST = 0, other = 0 } }, (writes_per_remote(server.log())))
    assert.is_true(position("a") > before.a)
    assert.same({ before.b, before.c }, { position("b"), position("c") })
    assert.same({}, X.outbox(dir, "a"))
    assert.equal(1, #X.outbox(dir, "b"))
    assert.equal(1, #X.outbox(dir, "c"))
    -- the rest go out on the next run, once each; a sends nothing again
    server.reset_log()
    ok_run(dir)
    assert.same({ a = { PUT = 0, POST = 0, other = 0 }, b = { PUT = 1, POST = 0, other = 0 },
      c = { PUT = 1, POST = 0, other = 0 } }, (writes_per_remote(server.log())))
    assert_everywhere({ [one] = "moved" })
  end)

  it("a failing remote keeps its own failures: a -> c still flows, and b's failures are retried later", function()
    first_run()
    local ids = {}
    for i, row in ipairs(T.query(dir, "SELECT id FROM contact ORDER BY id")) do ids[i] = row.id end
    local from_a, from_here = ids[1], ids[2]
    -- b's remote fails every single-record request (its listing still works)
    server.faults({ { path = "/api/b/", kind = "status", status = 500, count = 1000 } })
    remote_edit("a", from_a, "a while b is down")
    X.sql(dir, string.format("UPDATE contact SET name = 'here while b is down' WHERE id = %d", from_here))
    server.reset_log()
    local r = T.run(dir, {})
    assert.equal(1, r.code, r.stdout .. r.stderr)
    local lines = T.lines(r.stdout)
    assert.equal(2, T.counts(lines.b.export).failed, r.stdout)
    assert.equal(2, T.counts(lines.c.export).updated, r.stdout)
    assert.equal(1, T.counts(lines.a.export).updated, r.stdout)
    local now = sides()
    assert.same({ "a while b is down", "a while b is down", "Person 1" },
      { now[from_a].a, now[from_a].c, now[from_a].b })
    assert.same({ "here while b is down", "here while b is down", "Person 2" },
      { now[from_here].a, now[from_here].c, now[from_here].b })
    -- the failures are b's alone, keyed by local id
    local failed = T.query(dir, "SELECT sync, direction, key FROM entsync_failed ORDER BY sync, key")
    assert.same({ { sync = "b", direction = "export", key = tostring(from_a) },
      { sync = "b", direction = "export", key = tostring(from_here) } }, failed)
    -- nothing reached b, nothing went back to a
    local counts = writes_per_remote(server.log())
    assert.same({ 1, 0, 0, 2 }, { counts.a.PUT, counts.b.PUT, counts.b.POST, counts.c.PUT })
    -- b is back; its failures are retried (failures b retry): both go out, once
    server.faults({})
    server.reset_log()
    r = ok_run(dir, "failures", "b", "retry")
    counts = writes_per_remote(server.log())
    assert.same({ a = { PUT = 0, POST = 0, other = 0 }, b = { PUT = 2, POST = 0, other = 0 },
      c = { PUT = 0, POST = 0, other = 0 } }, counts, r.stdout .. r.stderr)
    assert_everywhere({ [from_a] = "a while b is down", [from_here] = "here while b is down" })
    assert.equal(0, T.value(dir, "SELECT count(*) FROM entsync_failed"))
    server.reset_log()
    r = ok_run(dir)
    assert.same({}, T.writes(server.log()), r.stdout .. r.stderr)
  end)
end)
