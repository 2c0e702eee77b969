-- Loop prevention end to end: a sync that imports from the fixture remote
-- and exports local changes on change. Local changes are made through the
-- sqlite3 shell, each followed by `entsync-run job.lua run`; the fixture's
-- request log counts what was sent, and an audit trigger on the entity
-- table counts what entsync wrote locally. A change must travel once: one
-- remote write per real change, and its echo (the next import meeting the
-- record it just wrote) must write nothing and queue nothing.

local helpers = require "helpers"
local X = require "export_support"

local N = 5

describe("no loops between imports and exports", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = X.records(N, 101) }, function(remote, tmp)
    server, dir = remote, tmp
    X.http_job(dir, server.url)
    local r = X.run(dir)
    assert.equal(0, r.code, r.stderr)
    assert.equal(N, X.summary(r.stdout).created, r.stdout)
    X.audit(dir)
  end)

  -- Runs the job; the drain of every run leaves nothing pending, so a
  -- change of entsync's own making (an import's write, an answer mapped
  -- back) is never left waiting to be sent.
  local function run()
    local r = X.run(dir)
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.same({}, X.outbox(dir), "changes left pending after the run: " .. r.stdout)
    return r
  end

  it("ten cycles of (a local change, run): one PUT per change, echoes write nothing, the outbox ends empty", function()
    local ids = {}
    for _, row in ipairs(X.query(dir, "SELECT local_id FROM entsync_idmap ORDER BY remote_id")) do
      ids[#ids + 1] = row.local_id
    end
    assert.equal(N, #ids)
    server.reset_log()
    local expected = {}
    for cycle = 1, 10 do
      local id = ids[(cycle - 1) % N + 1]
      X.sql(dir, string.format("UPDATE contact SET name = 'cycle %d', age = age + 1 WHERE id = %d", cycle, id))
      local audited = X.audited(dir)
      local r = run()
      -- the import before the export meets last cycle's echo: unchanged
      local import = X.summary(r.stdout)
      assert.same({ 0, 0, N, 0 }, { import.created, import.updated, import.unchanged, import.conflicts or 0 },
        "cycle " .. cycle .. ": " .. r.stdout)
      local export = X.summary(r.stdout, true)
      assert.same({ 0, 1, 0 }, { export.created, export.updated, export.failed }, "cycle " .. cycle .. ": " .. r.stdout)
      assert.equal(audited, X.audited(dir), "cycle " .. cycle .. ": entsync wrote to the contact table")
      assert.same({}, X.outbox(dir))
      expected[#expected + 1] = { id = id, name = string.format("cycle %d", cycle) }
    end
    -- one more run meets the last echo and sends nothing
    local audited = X.audited(dir)
    local r = run()
    assert.equal(N, X.summary(r.stdout).unchanged, r.stdout)
    assert.equal(audited, X.audited(dir))

    local log = server.log()
    local puts = X.writes(log, { method = "PUT" })
    assert.equal(10, #puts, "one PUT per real change")
    assert.equal(10, #X.writes(log), "no other writes")
    for i, e in ipairs(puts) do
      local remote_id = X.remote_of(dir, "contacts", "contact", expected[i].id)
      assert.equal("/api/contacts/" .. remote_id, e.path)
      assert.equal(expected[i].name, e.record.name)
      assert.equal(200, e.status)
    end
    assert.same({}, X.outbox(dir))
    -- both sides hold the same data in the end
    local remote = X.remote(server, "contacts")
    for _, row in pairs(X.contacts(dir)) do
      local other = remote[tonumber(X.remote_of(dir, "contacts", "contact", row.id))]
      assert.same({ row.email, row.name, row.age }, { other.email, other.name, other.age })
    end
  end)

  -- GETs of single records: the drain's conflict checks
  local function record_reads(log)
    local out = {}
    for _, e in ipairs(log) do
      if e.method == "GET" and e.path:match("^/api/contacts/%d+$") then out[#out + 1] = e.path end
    end
    return out
  end

  it("a local write that changes nothing the remote sees is drained without a request", function()
    server.reset_log()
    X.sql(dir, "UPDATE contact SET name = name")
    assert.equal(N, #X.outbox(dir))
    local export = X.summary(run().stdout, true)
    assert.same({ 0, 0, N, 0 }, { export.created, export.updated, export.unchanged, export.failed })
    assert.same({}, X.outbox(dir))
    assert.same({}, X.writes(server.log()))
    assert.same({}, record_reads(server.log()))
    -- a real change after it still travels, once
    local id = X.value(dir, "SELECT min(id) FROM contact")
    X.sql(dir, string.format("UPDATE contact SET name = 'Real' WHERE id = %d", id))
    export = X.summary(run().stdout, true)
    assert.same({ 0, 1, 0 }, { export.created, export.updated, export.failed })
    assert.equal(1, #X.writes(server.log(), { method = "PUT" }))
  end)

  it("a write to a column no field maps is drained without a request", function()
    X.http_job(dir, server.url, { entities = 'entity "contact" { email = "text", name = "text", age = "integer", '
      .. 'note = "text" }' })
    run()
    server.reset_log()
    X.sql(dir, "UPDATE contact SET note = 'called on Monday'")
    -- the capture triggers watch only the columns the mapping exports: the
    -- write is not even logged, so the drain has nothing to look at
    assert.same({}, X.outbox(dir))
    local export = X.summary(run().stdout, true)
    assert.same({ 0, 0, 0, 0 }, { export.created, export.updated, export.unchanged, export.failed })
    assert.same({}, X.writes(server.log()))
    assert.same({}, record_reads(server.log()))
    assert.same({}, X.outbox(dir))
  end)

  it("export SYNC LOCAL_ID sends the entity even when nothing changed", function()
    local id = X.value(dir, "SELECT min(id) FROM contact")
    server.reset_log()
    local r = X.run(dir, "export", "contacts", tostring(id))
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal(1, X.summary(r.stdout, true).updated, r.stdout)
    assert.equal(1, #X.writes(server.log(), { method = "PUT" }))
  end)

  it("a remote change is imported and not sent back", function()
    X.remote_put(server, "contacts", 103, { email = "c103@example.com", name = "Changed remotely", age = 3 })
    server.reset_log()
    local r = run()
    assert.equal(1, X.summary(r.stdout).updated, r.stdout)
    assert.equal(1, X.audited(dir))
    assert.same({}, X.outbox(dir))
    r = run()
    assert.equal(N, X.summary(r.stdout).unchanged, r.stdout)
    assert.same({}, X.writes(server.log()))
    assert.equal(1, X.audited(dir))
  end)

  it("a record created locally is POSTed once and its echo is the same local row", function()
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@example.com', 'New', 1)")
    local id = X.value(dir, "SELECT id FROM contact WHERE email = 'new@example.com'")
    server.reset_log()
    local r = run()
    assert.equal(1, X.summary(r.stdout, true).created, r.stdout)
    local audited = X.audited(dir)
    for _ = 1, 2 do
      r = run()
      assert.equal(N + 1, X.summary(r.stdout).unchanged, r.stdout)
    end
    assert.equal(audited, X.audited(dir))
    assert.equal(N + 1, X.count(dir, "contact"))
    assert.equal(1, X.count(dir, "contact", "email = 'new@example.com'"))
    local log = server.log()
    assert.equal(1, #X.writes(log), "one write: the POST")
    assert.equal(1, #X.writes(log, { method = "POST" }))
    -- the id map names the remote's id as the remote gives it
    local remote_id = X.remote_of(dir, "contacts", "contact", id)
    assert.equal(N + 101, remote_id)
    -- and a later local change to it is one PUT to that id
    X.sql(dir, string.format("UPDATE contact SET age = 2 WHERE id = %d", id))
    server.reset_log()
    r = run()
    local puts = X.writes(server.log(), { method = "PUT" })
    assert.equal(1, #puts)
    assert.equal("/api/contacts/" .. (N + 101), puts[1].path)
    assert.equal(200, puts[1].status)
  end)
end)
