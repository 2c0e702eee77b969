-- Exports, the outbox and conflicts through the real entsync-run binary:
-- job files and SQLite stores in temp dirs, local changes made with the
-- sqlite3 shell (as any other program would make them), the fixture
-- server (spec/support/fixture_server.py) on 127.0.0.1 as the remote and
-- its request log as the record of what was sent, and an ndjson file sink.

local core = require "entsync.core"
local helpers = require "helpers"
local S = require "http_support"
local X = require "export_support"

local function ok_run(dir, ...)
  local r = X.run(dir, ...)
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

local function local_of(dir, remote_id)
  return X.value(dir, "SELECT local_id FROM entsync_map WHERE sync = 'contacts' AND CAST(remote_id AS TEXT) = ?1",
    tostring(remote_id))
end

-- The change-log rows an import of sync made: stamped with that sync as
-- their origin, so they are not its to send.
local function own_changes(dir, sync)
  return X.count(dir, "entsync_changes", string.format(
    "origin = (SELECT id FROM entsync_syncs WHERE name = '%s')", sync or "contacts"))
end

-- The changes of the log no sync stamped: another program's writes.
local function unstamped_changes(dir)
  return X.count(dir, "entsync_changes", "origin IS NULL")
end

local function sleep(seconds)
  core.sys.sleep(seconds)
end

-- A copy of record with changes applied: what a replacing update (PUT)
-- sends, the remote's current copy with the mapped fields set, so fields
-- the mapping does not carry (id, updated_at) are kept.
local function with(record, changes)
  local out = {}
  for k, v in pairs(record) do out[k] = v end
  for k, v in pairs(changes) do out[k] = v end
  return out
end

-- change capture -------------------------------------------------------------------

describe("change capture", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = X.records(5, 101) }, function(remote, tmp)
    server, dir = remote, tmp
    X.http_job(dir, server.url, { export = "{ }" })
  end)

  it("an import of N records queues nothing for its sync: every change it logged carries its origin", function()
    local r = ok_run(dir)
    assert.equal(5, X.summary(r.stdout).created, r.stdout)
    assert.equal(5, X.count(dir, "contact"))
    assert.same({}, X.outbox(dir))
    -- the import's writes are logged, each stamped with the sync: that
    -- stamp, not a silent trigger, is what keeps them from being sent back
    assert.equal(5, own_changes(dir))
    assert.equal(0, unstamped_changes(dir))
    -- the triggers are there
    local triggers = X.query(dir, "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'contact' "
      .. "ORDER BY name")
    assert.same({ { name = "entsync_contact_delete" }, { name = "entsync_contact_insert" },
      { name = "entsync_contact_update" } }, triggers)
  end)

  it("an import that updates records queues nothing either", function()
    ok_run(dir)
    X.audit(dir)
    X.remote_put(server, "contacts", 102, { email = "new102@example.com", name = "Remote 102", age = 7 })
    X.remote_put(server, "contacts", 104, { email = "new104@example.com", name = "Remote 104", age = 9 })
    server.reset_log()
    local r = ok_run(dir)
    local s = X.summary(r.stdout)
    assert.equal(2, s.updated, r.stdout)
    assert.equal(2, X.audited(dir)) -- the import did write locally
    assert.equal("Remote 102", X.contacts(dir)[local_of(dir, 102)].name)
    assert.same({}, X.outbox(dir))
    -- and nothing was sent back
    assert.same({}, X.writes(server.log()))
  end)

  it("queues inserts, updates and deletes made through the sqlite3 shell, one pending row per entity", function()
    ok_run(dir)
    local one, two, three = local_of(dir, 101), local_of(dir, 102), local_of(dir, 103)
    -- three updates of one row are one pending row
    X.sql(dir, string.format("UPDATE contact SET name = 'a' WHERE id = %d", one))
    local first = X.outbox(dir)
    assert.equal(1, #first)
    sleep(0.01)
    X.sql(dir, string.format("UPDATE contact SET name = 'b' WHERE id = %d", one))
    X.sql(dir, string.format("UPDATE contact SET age = 99 WHERE id = %d", one))
    local after = X.outbox(dir)
    assert.equal(1, #after)
    assert.same({ "contact", one, "upsert" }, { after[1].entity, after[1].local_id, after[1].operation })
    assert.is_nil(X.export_failures(dir)[one], "a pending change that never failed has no export failure")
    assert.is_true(after[1].seq > first[1].seq, "the pending change is the latest one")
    -- an insert, a delete, and an update followed by a delete
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@example.com', 'New', 1)")
    local new_id = X.value(dir, "SELECT id FROM contact WHERE email = 'new@example.com'")
    X.sql(dir, string.format("DELETE FROM contact WHERE id = %d", two))
    X.sql(dir, string.format("UPDATE contact SET age = 1 WHERE id = %d; DELETE FROM contact WHERE id = %d", three,
      three))
    local ops = {}
    for _, row in ipairs(X.outbox(dir)) do ops[row.local_id] = row.operation end
    assert.same({ [one] = "upsert", [new_id] = "upsert", [two] = "delete", [three] = "delete" }, ops)
    assert.equal(4, #X.outbox(dir))
  end)

  it("a change another program makes while an import runs is queued; the import's changes are never seen "
    .. "outside it without their origin", function()
      server.reset({ contacts = X.records(30, 101) })
      server.latency(100)
      -- a batch a page: the first is committed while the others are read
      X.http_job(dir, server.url, { export = "{ }", page_size = 5,
        import = '{ mode = "full", changed = "updated_at", batch = 5 }' })
      local child = S.spawn(dir, 20)
      -- wait for the first batch, then write beside the import
      local first = helpers.wait_for(function()
        local rows = X.peek(dir, "SELECT min(id) FROM contact")
        return rows[1] and rows[1] ~= "" and tonumber(rows[1])
      end, 10)
      assert.is_not_nil(first, "the import wrote nothing")
      -- what another connection sees of the import's changes: all stamped
      local marks, during = {}, nil
      for _ = 1, 3 do
        marks[#marks + 1] = X.peek(dir, "SELECT count(*) FROM entsync_changes WHERE origin IS NULL")[1]
      end
      during = X.sql(dir, string.format("UPDATE contact SET name = 'outside' WHERE id = %d; "
        .. "SELECT status FROM entsync_runs ORDER BY id DESC LIMIT 1;", first))
      local r = child.wait()
      assert.equal(0, r.code, r.stderr)
      assert.equal("running\n", during, "the import had finished before the outside write")
      assert.same({ "0", "0", "0" }, marks)
      assert.equal(30, X.summary(r.stdout).created, r.stdout)
      assert.equal(30, own_changes(dir))
      assert.equal(1, unstamped_changes(dir), "the outside write was stamped as the import's own")
      local queued = X.outbox(dir)
      assert.equal(1, #queued)
      assert.same({ first, "upsert" }, { queued[1].local_id, queued[1].operation })
      assert.equal("outside", X.contacts(dir)[first].name)
    end)

  it("a new change to a row that failed before makes it due again, whatever its backoff", function()
    X.http_job(dir, server.url) -- exports on change
    ok_run(dir)
    local one = local_of(dir, 101)
    X.sql(dir, string.format("UPDATE contact SET name = 'a' WHERE id = %d", one))
    -- its export fails: kept as a failure, retried with backoff
    server.faults({ { path = "/api/contacts/101", method = "PUT", kind = "status", status = 500, count = 10 } })
    local r = X.run(dir)
    assert.equal(1, r.code, r.stdout .. r.stderr)
    server.faults({})
    local failure = X.export_failures(dir)[one]
    assert.is_not_nil(failure, "no export failure kept")
    assert.is_true(failure.next_at > core.sys.now() + 10, "the failure is not backed off")
    -- a new change: sent by the next run, though the failure's backoff is not over
    X.sql(dir, string.format("UPDATE contact SET name = 'b' WHERE id = %d", one))
    local pending = X.outbox(dir)
    assert.equal(1, #pending)
    assert.same({ "contact", one, "upsert" }, { pending[1].entity, pending[1].local_id, pending[1].operation })
    server.reset_log()
    r = ok_run(dir)
    assert.equal(1, X.summary(r.stdout, true).updated, r.stdout)
    local puts = X.writes(server.log(), { method = "PUT" })
    assert.equal(1, #puts)
    assert.equal("b", puts[1].record.name)
    assert.equal("b", X.remote(server, "contacts")[101].name)
    -- and its failure is gone: no attempts left on it
    assert.same({}, X.export_failures(dir))
    assert.same({}, X.outbox(dir))
  end)

  it("a sync that exports but not on change keeps its outbox through run", function()
    ok_run(dir)
    X.sql(dir, string.format("UPDATE contact SET name = 'kept' WHERE id = %d", local_of(dir, 101)))
    server.reset_log()
    local r = ok_run(dir)
    assert.is_nil(X.summary(r.stdout, true), r.stdout)
    assert.equal(1, #X.outbox(dir))
    assert.same({}, X.writes(server.log()))
  end)
end)

-- export SYNC against the fixture remote -------------------------------------------

describe("export SYNC to the fixture remote", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
    server, dir = remote, tmp
    X.http_job(dir, server.url, { export = "{ }" })
    ok_run(dir) -- imports 101..103
  end)

  local function insert(name)
    X.sql(dir, string.format("INSERT INTO contact (email, name, age) VALUES ('%s@example.com', '%s', 40)",
      name:lower(), name))
    return X.value(dir, "SELECT id FROM contact WHERE name = ?1", name)
  end

  -- An explicit export does not consume the change log: what it sent is
  -- met again by the next drain, found unchanged, and not sent again. Runs
  -- the job once with on_change = true (then puts the job back) and
  -- returns the drain's summary counts and the writes it sent.
  local function drain()
    X.http_job(dir, server.url, { export = "{ on_change = true }" })
    server.reset_log()
    local r = ok_run(dir)
    X.http_job(dir, server.url, { export = "{ }" })
    local s = X.summary(r.stdout, true)
    assert.is_not_nil(s, r.stdout)
    assert.same({}, X.outbox(dir))
    return s, X.writes(server.log())
  end

  local function assert_next_drain_sends_nothing()
    local s, writes = drain()
    assert.same({ 0, 0, 0, 0 }, { s.created, s.updated, s.deleted, s.failed }, s.line)
    assert.same({}, writes)
  end

  it("export SYNC LOCAL_ID creates the remote when there is none; the id map then has its id; again updates it",
    function()
      local id = insert("Dora")
      server.reset_log()
      local r = ok_run(dir, "export", "contacts", tostring(id))
      assert.equal(1, X.summary(r.stdout, true).created, r.stdout)
      local posts = X.writes(server.log(), { method = "POST" })
      assert.equal(1, #posts)
      assert.equal("/api/contacts", posts[1].path)
      assert.same({ email = "dora@example.com", name = "Dora", age = 40 }, posts[1].record)
      assert.is_not_nil(X.remote(server, "contacts")[104])
      assert.equal(104, X.remote_of(dir, "contacts", "contact", id))
      assert_next_drain_sends_nothing()

      X.sql(dir, string.format("UPDATE contact SET name = 'Dora Two' WHERE id = %d", id))
      local before = X.remote(server, "contacts")[104]
      server.reset_log()
      r = ok_run(dir, "export", "contacts", tostring(id))
      assert.equal(1, X.summary(r.stdout, true).updated, r.stdout)
      local writes = X.writes(server.log())
      assert.equal(1, #writes)
      assert.equal("PUT", writes[1].method)
      assert.equal("/api/contacts/104", writes[1].path)
      assert.same(with(before, { email = "dora@example.com", name = "Dora Two", age = 40 }), writes[1].record)
      assert.equal("Dora Two", X.remote(server, "contacts")[104].name)
      assert_next_drain_sends_nothing()

      -- the next import meets its own record: no second local row
      r = ok_run(dir)
      assert.equal(4, X.summary(r.stdout).unchanged, r.stdout)
      assert.equal(4, X.count(dir, "contact"))
    end)

  it("export SYNC --all creates the new and updates the mapped", function()
    local a, b = insert("Eve"), insert("Finn")
    server.reset_log()
    local r = ok_run(dir, "export", "contacts", "--all")
    local s = X.summary(r.stdout, true)
    assert.same({ 2, 3, 0 }, { s.created, s.updated, s.failed }, r.stdout)
    assert.equal(2, #X.writes(server.log(), { method = "POST" }))
    local puts = {}
    for _, e in ipairs(X.writes(server.log(), { method = "PUT" })) do puts[#puts + 1] = e.path end
    table.sort(puts)
    assert.same({ "/api/contacts/101", "/api/contacts/102", "/api/contacts/103" }, puts)
    local remote = X.remote(server, "contacts")
    assert.equal("Eve", remote[tonumber(X.remote_of(dir, "contacts", "contact", a))].name)
    assert.equal("Finn", remote[tonumber(X.remote_of(dir, "contacts", "contact", b))].name)
    assert.equal(5, #server.data().contacts)
    assert_next_drain_sends_nothing()
  end)

  it("export SYNC --where exports only the rows that match", function()
    insert("Alice")
    local bob = insert("Bob")
    insert("Alan")
    server.reset_log()
    local r = ok_run(dir, "export", "contacts", "--where", "name LIKE 'A%'")
    assert.equal(2, X.summary(r.stdout, true).created, r.stdout)
    local names = {}
    for _, e in ipairs(X.writes(server.log())) do
      assert.equal("POST", e.method)
      names[#names + 1] = e.record.name
    end
    table.sort(names)
    assert.same({ "Alan", "Alice" }, names)
    assert.is_nil(X.remote_of(dir, "contacts", "contact", bob))
    -- Bob's insert still waits: --where exported only what matched, and
    -- the next drain sends Bob alone
    local pending = {}
    for _, row in ipairs(X.outbox(dir)) do pending[row.local_id] = row.operation end
    assert.equal("upsert", pending[bob], "Bob's insert is not pending")
    local s, writes = drain()
    assert.same({ 1, 0, 0 }, { s.created, s.updated, s.failed }, s.line)
    assert.equal(1, #writes)
    assert.same({ "POST", "Bob" }, { writes[1].method, writes[1].record.name })
    assert.is_not_nil(X.remote_of(dir, "contacts", "contact", bob))
  end)

  it("a bad --where is a usage error and sends nothing", function()
    server.reset_log()
    local r = X.run(dir, "export", "contacts", "--where", "no_such_column = 1")
    assert.equal(2, r.code, r.stderr)
    assert.matches("--where", r.stderr, 1, true)
    assert.same({}, X.writes(server.log()))
  end)
end)

-- export SYNC to an ndjson file sink -------------------------------------------------

describe("export SYNC to an ndjson file sink", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
  end)

  after_each(function()
    helpers.rmdir(dir)
  end)

  local function setup_rows(extra)
    X.sink_job(dir, extra)
    ok_run(dir) -- creates the store and its tables; an export-only sync imports nothing
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('ann@x', 'Ann', 30), ('bob@x', 'Bob', 31), "
      .. "('al@x', 'Al', 32)")
  end

  -- An explicit export does not consume the change log: the next drain
  -- meets what it sent, finds it unchanged and sends only the rest. Runs
  -- the job once exporting on change (then puts the job back); returns
  -- the drain's counts and the sink lines it appended.
  local function drain()
    local before = #X.sink_lines(dir)
    X.sink_job(dir, "on_change = true")
    local r = ok_run(dir)
    X.sink_job(dir)
    local s = X.summary(r.stdout, true)
    assert.is_not_nil(s, r.stdout)
    assert.same({}, X.outbox(dir))
    return s, { table.unpack(X.sink_lines(dir), before + 1) }
  end

  local function names_of(lines)
    local names = {}
    for _, line in ipairs(lines) do names[#names + 1] = line.op .. " " .. line.record.name end
    table.sort(names)
    return names
  end

  it("export SYNC LOCAL_ID appends a create line with op, id and record", function()
    setup_rows()
    local r = ok_run(dir, "export", "contacts", "1")
    assert.equal(1, X.summary(r.stdout, true).created, r.stdout)
    local lines = X.sink_lines(dir)
    assert.equal(1, #lines)
    assert.equal("create", lines[1].op)
    assert.equal("1", tostring(lines[1].id))
    assert.same({ email = "ann@x", name = "Ann", age = 30 }, lines[1].record)
    assert.is_string(lines[1].at)
    assert.equal("1", X.remote_of(dir, "contacts", "contact", 1))
    -- the other two inserts wait: the next drain sends them, and not Ann again
    local s, sent = drain()
    assert.same({ 2, 0, 0 }, { s.created, s.updated, s.failed }, s.line)
    assert.same({ "create Al", "create Bob" }, names_of(sent))
  end)

  it("export SYNC --where appends a create line for each row that matches", function()
    setup_rows()
    local r = ok_run(dir, "export", "contacts", "--where", "name LIKE 'A%'")
    assert.equal(2, X.summary(r.stdout, true).created, r.stdout)
    local names = {}
    for _, line in ipairs(X.sink_lines(dir)) do
      assert.equal("create", line.op)
      names[#names + 1] = line.record.name
    end
    table.sort(names)
    assert.same({ "Al", "Ann" }, names)
    -- Bob's insert waits: the next drain sends Bob alone
    local s, sent = drain()
    assert.same({ 1, 0, 0 }, { s.created, s.updated, s.failed }, s.line)
    assert.same({ "create Bob" }, names_of(sent))
  end)

  it("export SYNC --all appends a create line for every row", function()
    setup_rows()
    local r = ok_run(dir, "export", "contacts", "--all")
    assert.equal(3, X.summary(r.stdout, true).created, r.stdout)
    local lines = X.sink_lines(dir)
    assert.equal(3, #lines)
    local by_id = {}
    for _, line in ipairs(lines) do
      assert.equal("create", line.op)
      by_id[tostring(line.id)] = line.record.name
    end
    assert.same({ ["1"] = "Ann", ["2"] = "Bob", ["3"] = "Al" }, by_id)
    -- the next drain sends nothing
    local s, sent = drain()
    assert.same({ 0, 0, 0, 0 }, { s.created, s.updated, s.deleted, s.failed }, s.line)
    assert.same({}, sent)
  end)

  it("exporting an entity again appends an update line and leaves the local row as it is", function()
    setup_rows()
    ok_run(dir, "export", "contacts", "1")
    X.sql(dir, "UPDATE contact SET name = 'Ann Two' WHERE id = 1")
    local r = ok_run(dir, "export", "contacts", "1")
    -- the local row is what the user wrote, not the sink's line read back
    local row = X.contacts(dir)[1]
    assert.same({ email = "ann@x", name = "Ann Two", age = 30 }, { email = row.email, name = row.name, age = row.age },
      "local row 1 after its second export (all NULL when the sink's line was read back as the remote record); "
        .. r.stderr)
    assert.equal(1, X.summary(r.stdout, true).updated, r.stdout .. r.stderr)
    local lines = X.sink_lines(dir)
    assert.equal(2, #lines)
    assert.equal("update", lines[2].op)
    assert.equal("1", tostring(lines[2].id))
    assert.same({ email = "ann@x", name = "Ann Two", age = 30 }, lines[2].record)
    assert.equal(0, X.count(dir, "entsync_conflicts"))
  end)

  it("run drains the outbox into the sink; deletes = \"delete\" appends a delete line", function()
    setup_rows('on_change = true, deletes = "delete"')
    local r = ok_run(dir)
    assert.equal(3, X.summary(r.stdout, true).created, r.stdout)
    assert.same({}, X.outbox(dir))
    X.sql(dir, "DELETE FROM contact WHERE id = 2")
    r = ok_run(dir)
    assert.equal(1, X.summary(r.stdout, true).deleted, r.stdout)
    local lines = X.sink_lines(dir)
    assert.equal(4, #lines)
    assert.equal("delete", lines[4].op)
    assert.equal("2", tostring(lines[4].id))
    assert.same({}, X.outbox(dir))
    assert.is_nil(X.remote_of(dir, "contacts", "contact", 2))
  end)
end)

-- managed exports: run drains the outbox -------------------------------------------------

describe("run drains the outbox of on_change syncs", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = X.records(4, 101) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  it("imports, then exports the queued changes: updates by PUT, new rows by POST", function()
    X.http_job(dir, server.url)
    ok_run(dir)
    local one = local_of(dir, 101)
    X.sql(dir, string.format("UPDATE contact SET age = 77 WHERE id = %d", one))
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('gus@example.com', 'Gus', 5)")
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(4, X.summary(r.stdout).unchanged, r.stdout)
    local s = X.summary(r.stdout, true)
    assert.same({ 1, 1, 0 }, { s.created, s.updated, s.failed }, r.stdout)
    local puts, posts = X.writes(server.log(), { method = "PUT" }), X.writes(server.log(), { method = "POST" })
    assert.equal(1, #puts)
    assert.equal("/api/contacts/101", puts[1].path)
    assert.equal(77, puts[1].record.age)
    assert.equal(1, #posts)
    assert.equal("Gus", posts[1].record.name)
    assert.same({}, X.outbox(dir))
    -- the export is a run in the run log
    local run = X.query(dir, "SELECT operation, mode, status, created, updated FROM entsync_runs ORDER BY id DESC LIMIT 1")[1]
    assert.same({ operation = "outbox", mode = "export", status = "ok", created = 1, updated = 1 }, run)
  end)

  -- http_json caps its requests itself (its limits): the drain runs twice
  -- as many tasks, so the remote has `concurrency` requests at once while
  -- answers are mapped, and never more.
  it("a drain keeps the provider's concurrency of requests at the remote, never more", function()
    server.set_data({ contacts = X.records(12, 101) })
    X.http_job(dir, server.url)
    local job = helpers.read(dir .. "/job.lua"):gsub('attempts = 2 }', 'attempts = 2, concurrency = 3 }')
    helpers.write(dir .. "/job.lua", job)
    ok_run(dir)
    X.sql(dir, "UPDATE contact SET age = age + 1")
    server.latency(60)
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(12, X.summary(r.stdout, true).updated, r.stdout)
    local sent = {}
    for _, e in ipairs(server.log()) do
      if e.path:match("^/api/contacts/%d+$") then sent[#sent + 1] = e end
    end
    assert.equal(24, #sent) -- a GET (the conflict check) and a PUT each
    assert.equal(3, S.peak(sent))
  end)

  it("deletes = \"delete\": a local delete deletes the remote", function()
    X.http_job(dir, server.url, { export = '{ on_change = true, deletes = "delete" }' })
    ok_run(dir)
    X.sql(dir, string.format("DELETE FROM contact WHERE id = %d", local_of(dir, 102)))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(1, X.summary(r.stdout, true).deleted, r.stdout)
    local writes = X.writes(server.log())
    assert.equal(1, #writes)
    assert.same({ "DELETE", "/api/contacts/102", 204 }, { writes[1].method, writes[1].path, writes[1].status })
    assert.is_nil(X.remote(server, "contacts")[102])
    assert.is_nil(local_of(dir, 102))
    assert.same({}, X.outbox(dir))
    -- and it stays gone: the next run neither brings it back nor sends anything
    server.reset_log()
    r = ok_run(dir)
    assert.equal(3, X.count(dir, "contact"))
    assert.same({}, X.writes(server.log()))
  end)

  it("deletes = \"ignore\": a local delete leaves the remote alone", function()
    X.http_job(dir, server.url, { export = '{ on_change = true, deletes = "ignore" }' })
    ok_run(dir)
    X.sql(dir, string.format("DELETE FROM contact WHERE id = %d", local_of(dir, 102)))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(0, X.summary(r.stdout, true).deleted, r.stdout)
    assert.same({}, X.writes(server.log()))
    assert.is_not_nil(X.remote(server, "contacts")[102])
    assert.same({}, X.outbox(dir))
  end)
end)

-- merge on export ----------------------------------------------------------------

describe("merge on export: one remote record from two local entities", function()
  local server, dir
  local PEOPLE = {
    { id = 1, email = "ann@x", name = "Ann", phone = "111", company = "Acme", updated_at = "2026-01-01T00:00:01Z" },
    { id = 2, email = "bob@x", name = "Bob", phone = "222", company = "Bco", updated_at = "2026-01-01T00:00:02Z" },
  }

  helpers.remote_for_each_test({ people = PEOPLE }, function(remote, tmp)
    server, dir = remote, tmp
    X.http_job(dir, server.url, {
      entities = 'entity "user" { email = "text", name = "text" }\nentity "profile" { phone = "text", company = "text" }',
      entity = '{ "user", "profile" }', resource = "api/people",
      mapping = '{ user = { email = "email", name = "name" }, profile = { phone = "phone", company = "company" } }',
    })
    ok_run(dir)
  end)

  -- The local rows of a remote record: the id map's one row names the
  -- user (the primary); the profile carries that id in user_id.
  local function ids_of(remote_id)
    local rows = X.query(dir, "SELECT local_id FROM entsync_map WHERE sync = 'contacts' AND remote_id = ?1",
      remote_id)
    assert.equal(1, #rows, "id-map rows of remote " .. tostring(remote_id))
    local user = rows[1].local_id
    return { user = user, profile = X.value(dir, "SELECT id FROM profile WHERE user_id = ?1", user) }
  end

  it("a change to either local row sends one record built from both", function()
    local ann, bob = ids_of(1), ids_of(2)
    X.sql(dir, string.format("UPDATE profile SET phone = '999' WHERE id = %d", ann.profile))
    X.sql(dir, string.format("UPDATE user SET name = 'Bobby' WHERE id = %d", bob.user))
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(2, X.summary(r.stdout, true).updated, r.stdout)
    local bodies = {}
    for _, e in ipairs(X.writes(server.log())) do
      assert.equal("PUT", e.method)
      bodies[e.path] = e.record
    end
    assert.same({
      ["/api/people/1"] = with(PEOPLE[1], { email = "ann@x", name = "Ann", phone = "999", company = "Acme" }),
      ["/api/people/2"] = with(PEOPLE[2], { email = "bob@x", name = "Bobby", phone = "222", company = "Bco" }),
    }, bodies)
    assert.same({}, X.outbox(dir))
    -- the echoes come back unchanged
    server.reset_log()
    r = ok_run(dir)
    assert.equal(2, X.summary(r.stdout).unchanged, r.stdout)
    assert.same({}, X.writes(server.log()))
  end)

  it("a change to both local rows of one remote record is sent once", function()
    local bob = ids_of(2)
    X.sql(dir, string.format("BEGIN; UPDATE profile SET phone = '888' WHERE id = %d; "
      .. "UPDATE user SET name = 'Bobby' WHERE id = %d; COMMIT;", bob.profile, bob.user))
    server.reset_log()
    ok_run(dir)
    local writes = X.writes(server.log())
    assert.equal("Bobby", writes[1] and writes[1].record.name)
    assert.equal("888", writes[1] and writes[1].record.phone)
    -- the two rows' outbox entries race: either both are sent, or the later
    -- one finds the first one's write at the remote and takes it for a
    -- conflict
    assert.equal(1, #writes, "one change of one remote record, sent " .. #writes .. " times")
    assert.equal(0, X.count(dir, "entsync_conflicts"), "our own write was taken for a remote change")
  end)
end)

-- conflicts ----------------------------------------------------------------------

describe("conflicts: both sides changed since the last sync", function()
  local server, dir, calls

  helpers.remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
    server, dir = remote, tmp
    calls = dir .. "/calls.txt"
  end)

  local ORIGINAL = X.records(1, 101)[1]

  -- Imports, then changes remote 101 at the fixture (a PUT through curl)
  -- and its local row (through sqlite3), in the given order, and runs.
  -- Returns the run, the local id and the remote record as it was before
  -- the run.
  local function both_changed(conflict, order, remote_name, command)
    X.http_job(dir, server.url, {
      prelude = string.format("local CALLS = %q", calls),
      export = "{ on_change = true, conflict = " .. conflict .. " }",
    })
    ok_run(dir)
    local id = local_of(dir, 101)
    local function remote_change()
      X.remote_put(server, "contacts", 101, { email = ORIGINAL.email, name = remote_name or "Remote", age = ORIGINAL.age })
    end
    local function local_change()
      X.sql(dir, string.format("UPDATE contact SET name = 'Local' WHERE id = %d", id))
    end
    if order == "local first" then
      local_change(); sleep(0.05); remote_change()
    else
      remote_change(); sleep(0.05); local_change()
    end
    server.reset_log()
    local before = X.remote(server, "contacts")[101]
    local r
    if command == "export" then
      r = ok_run(dir, "export", "contacts", tostring(id))
    else
      r = ok_run(dir)
    end
    return r, id, before
  end

  local function conflicts()
    return X.query(dir, "SELECT s.name AS sync, c.direction, c.local_id, c.remote_id, c.local_hash, c.remote_hash, "
      .. "c.policy, c.winner FROM entsync_conflicts c JOIN entsync_syncs s ON s.id = c.sync ORDER BY c.id")
  end

  -- direction: where the conflict was met: "import" (run: the import
  -- meets the remote change first) or "export" (export SYNC LOCAL_ID).
  local function assert_recorded(id, policy, winner, direction)
    local rows = conflicts()
    assert.is_true(#rows >= 1, "no conflict recorded")
    for _, row in ipairs(rows) do
      assert.same({ "contacts", direction or "import", id, 101, policy, winner },
        { row.sync, row.direction, row.local_id, row.remote_id, row.policy, row.winner })
      assert.is_not_nil(row.local_hash)
      assert.is_not_nil(row.remote_hash)
    end
  end

  local function assert_quiet_after()
    X.audit(dir)
    server.reset_log()
    local r = ok_run(dir)
    assert.equal(0, X.summary(r.stdout).updated, r.stdout)
    assert.same({}, X.writes(server.log()))
    assert.equal(0, X.audited(dir))
    assert.same({}, X.outbox(dir))
  end

  local function puts()
    return X.writes(server.log(), { method = "PUT" })
  end

  it("remote_wins: the local row gets the remote version and nothing is sent", function()
    local r, id = both_changed('"remote_wins"', "local first")
    assert.equal("Remote", X.contacts(dir)[id].name)
    assert.same({}, puts())
    assert.equal("Remote", X.remote(server, "contacts")[101].name)
    assert_recorded(id, "remote_wins", "remote")
    assert.equal(1, X.summary(r.stdout).conflicts, r.stdout)
    assert.same({}, X.outbox(dir))
    assert_quiet_after()
  end)

  it("local_wins: the remote gets the local version", function()
    local _, id, before = both_changed('"local_wins"', "remote first")
    assert.equal("Local", X.contacts(dir)[id].name)
    local sent = puts()
    assert.equal(1, #sent)
    assert.same(with(before, { email = ORIGINAL.email, name = "Local", age = ORIGINAL.age }), sent[1].record)
    assert.equal("Local", X.remote(server, "contacts")[101].name)
    assert_recorded(id, "local_wins", "local")
    assert_quiet_after()
  end)

  it("newest: the remote change came later and wins", function()
    local _, id = both_changed('"newest"', "local first")
    assert.equal("Remote", X.contacts(dir)[id].name)
    assert.same({}, puts())
    assert_recorded(id, "newest", "remote")
    assert_quiet_after()
  end)

  it("newest: the local change came later and wins", function()
    local _, id = both_changed('"newest"', "remote first")
    assert.equal("Local", X.contacts(dir)[id].name)
    assert.equal(1, #puts())
    assert.equal("Local", X.remote(server, "contacts")[101].name)
    assert_recorded(id, "newest", "local")
    assert_quiet_after()
  end)

  local FN = [[function(local_rows, remote_record, ctx)
      local f = io.open(CALLS, "a")
      f:write(string.format("%s|%s|%s\n", tostring(local_rows.contact and local_rows.contact.name),
        tostring(remote_record.name), tostring(ctx and ctx.sync)))
      f:close()
      return remote_record.name == "Remote wins" and "remote" or "local"
    end]]

  local function call_lines()
    local out = {}
    for line in (helpers.read(calls) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
    return out
  end

  it("a function policy is given the local rows, the remote record and ctx; its \"remote\" is honoured", function()
    local _, id = both_changed(FN, "local first", "Remote wins")
    assert.equal("Remote wins", X.contacts(dir)[id].name)
    assert.same({}, puts())
    assert.equal("Local|Remote wins|contacts", call_lines()[1])
    assert_recorded(id, "function", "remote")
    assert_quiet_after()
  end)

  it("a function policy's \"local\" is honoured", function()
    local _, id = both_changed(FN, "local first", "Remote loses")
    assert.equal("Local", X.contacts(dir)[id].name)
    assert.equal(1, #puts())
    assert.equal("Local", X.remote(server, "contacts")[101].name)
    assert.equal("Local|Remote loses|contacts", call_lines()[1])
    assert_recorded(id, "function", "local")
    assert_quiet_after()
  end)

  it("export SYNC LOCAL_ID meets the conflict too: remote_wins keeps the remote version and sends nothing",
    function()
      local r, id = both_changed('"remote_wins"', "local first", nil, "export")
      assert.equal(1, X.summary(r.stdout, true).unchanged, r.stdout)
      assert.equal("Remote", X.contacts(dir)[id].name)
      assert.same({}, puts())
      assert_recorded(id, "remote_wins", "remote", "export")
      assert_quiet_after()
    end)

  it("export SYNC LOCAL_ID with local_wins sends the local version", function()
    local r, id = both_changed('"local_wins"', "remote first", nil, "export")
    assert.equal(1, X.summary(r.stdout, true).updated, r.stdout)
    assert.equal(1, #puts())
    assert.equal("Local", X.remote(server, "contacts")[101].name)
    assert_recorded(id, "local_wins", "local", "export")
    assert_quiet_after()
  end)

  it("one conflict is decided once and recorded once: run, the local side winning", function()
    both_changed(FN, "local first", "Remote loses")
    assert.equal(1, #call_lines(), "the conflict function was called " .. #call_lines() .. " times")
    assert.equal(1, #conflicts(), "one conflict, " .. #conflicts() .. " rows in entsync_conflicts")
  end)

  it("one conflict is decided once and recorded once: export SYNC LOCAL_ID, the remote side winning", function()
    both_changed(FN, "local first", "Remote wins", "export")
    assert.equal(1, #call_lines(), "the conflict function was called " .. #call_lines() .. " times")
    assert.equal(1, #conflicts(), "one conflict, " .. #conflicts() .. " rows in entsync_conflicts")
  end)
end)

-- a remote that fails mid-batch, then recovers ----------------------------------------

describe("a remote that fails mid-batch, then recovers", function()
  local server, dir
  local FAILING = { 2, 5, 7 }

  helpers.remote_for_each_test({ contacts = X.records(10) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  it("exports what it can, keeps the failures with backoff, and sends each record exactly once in the end", function()
    X.http_job(dir, server.url, { attempts = 2 })
    ok_run(dir)
    X.sql(dir, "UPDATE contact SET age = age + 100")
    assert.equal(10, #X.outbox(dir))
    -- each failing record's PUT answers 500 more often than the client retries
    local faults = {}
    for i, id in ipairs(FAILING) do
      faults[i] = { path = "/api/contacts/" .. id, method = "PUT", kind = "status", status = 500, count = 10 }
    end
    server.faults(faults)
    server.reset_log()
    local before = core.sys.now()
    local r = X.run(dir)
    assert.equal(1, r.code, r.stdout .. r.stderr)
    local s = X.summary(r.stdout, true)
    assert.same({ 7, 3 }, { s.updated, s.failed }, r.stdout)
    -- the drain moved past its changes; the three failures wait as export failures
    assert.same({}, X.outbox(dir))
    local failures = X.export_failures(dir)
    local n = 0
    for _ in pairs(failures) do n = n + 1 end
    assert.equal(3, n)
    for _, remote_id in ipairs(FAILING) do
      local row = failures[local_of(dir, remote_id)]
      assert.is_not_nil(row, "no export failure for remote " .. remote_id)
      assert.equal(1, row.attempts)
      assert.matches("status 500", row.error, 1, true)
      assert.matches("/api/contacts/" .. remote_id, row.error, 1, true)
      assert.is_true(row.next_at > before + 10, "next_at is not in the future: backoff")
    end
    -- failures pending: status says so, and exits 1
    local status = X.run(dir, "status")
    assert.equal(1, status.code, status.stdout .. status.stderr)
    assert.matches("outbox%s+0 changes to send, 3 failed exports", status.stdout)

    -- not due yet: the next run leaves them alone
    local seen = #server.log()
    r = ok_run(dir)
    assert.same({}, X.writes({ table.unpack(server.log(), seen + 1) }))
    assert.equal(3, X.count(dir, "entsync_failed", "sync = 'contacts' AND direction = 'export' AND attempts = 1"))

    -- the remote recovers; once due they go
    server.faults({})
    X.sql(dir, "UPDATE entsync_failures SET next_at = 0 WHERE direction = 'export'")
    r = ok_run(dir)
    assert.equal(3, X.summary(r.stdout, true).updated, r.stdout)
    assert.same({}, X.outbox(dir))
    assert.same({}, X.export_failures(dir))

    -- over both runs: one successful PUT per record, no POST, nothing lost
    local log = server.log()
    local want = {}
    for i = 1, 10 do want["/api/contacts/" .. i] = 1 end
    assert.same(want, X.successes(log, "PUT"))
    assert.same({}, X.writes(log, { method = "POST" }))
    local remote = X.remote(server, "contacts")
    for i = 1, 10 do assert.equal(20 + i % 50 + 100, remote[i].age) end
  end)

  it("a create whose answer is lost after the remote made it is not sent again", function()
    X.http_job(dir, server.url, { attempts = 2 })
    ok_run(dir)
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('lost@example.com', 'Lost answer', 1)")
    -- the remote creates the record, then the connection breaks mid-answer
    server.faults({ { path = "/api/contacts", method = "POST", kind = "truncate", count = 1 } })
    server.reset_log()
    X.run(dir)
    server.faults({})
    X.sql(dir, "UPDATE entsync_failures SET next_at = 0 WHERE direction = 'export'")
    X.run(dir)
    local copies = 0
    for _, record in ipairs(server.data().contacts) do
      if record.email == "lost@example.com" then copies = copies + 1 end
    end
    local posts = X.writes(server.log(), { method = "POST" })
    assert.equal(1, copies, string.format("%d copies at the remote after %d POSTs", copies, #posts))
  end)
end)
