-- Resyncing through the real entsync-run: a mapping changed since a
-- sync's rows were written (the warning at run, the note at check, the
-- status line), run SYNC --full, reset SYNC, and run --dry-run --diff for
-- imports and for the queued exports (against the fixture remote, whose
-- request log shows nothing was sent).

local cjson = require "cjson"
local helpers = require "helpers"
local S = require "import_support"
local X = require "export_support"

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  helpers.rmdir(dir)
end)

local dated = S.dated

local UPPER = '{ email = "email", name = { "name", import = function(v) return v:upper() end }, age = "age" }'

describe("a mapping changed since the rows were written", function()
  it("is a warning at an incremental run, a note at check and a line in status; run --full maps every record again",
    function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 3) })
    assert.equal(0, S.run(dir, "run").code)
    -- the same mapping, edited where it changes nothing: no warning
    helpers.write(dir .. "/job.lua", "-- a comment\n" .. helpers.read(dir .. "/job.lua"))
    local r = S.run(dir, "run")
    assert.equal("", r.stderr)
    -- now the mapping changes, and one record changes at the remote
    S.job(dir, { mode = "incremental", changed = "updated_at", mapping = UPPER })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 4, { name = "Third" }) })
    r = S.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.matches('sync "contacts": its mapping changed since its rows were written; an incremental run maps only '
      .. "what changed at the remote", r.stderr, 1, true)
    assert.matches("`entsync-run job.lua run contacts --full` maps every record again", r.stderr, 1, true)
    assert.equal("2 before the cursor", r.stdout:match("(%d+ before the cursor)"))
    -- rows written before keep the old mapping
    assert.same({ [1] = "c1@example.com|Contact 1|21", [2] = "c2@example.com|Contact 2|22",
      [3] = "c3@example.com|THIRD|23" }, S.contacts(dir))
    r = S.run(dir, "check")
    assert.equal(0, r.code, r.stderr)
    assert.matches('note: sync "contacts": its mapping changed since its rows were written; '
      .. "`entsync-run job.lua run contacts --full` maps every record again", r.stdout, 1, true)
    r = S.run(dir, "status")
    assert.matches("\n  mapping    changed since its rows were written\n", r.stdout, 1, true)
    assert.matches("hint       entsync-run job.lua run contacts --full", r.stdout, 1, true)

    -- the resync: every record read and mapped again at list speed
    r = S.run(dir, "run", "contacts", "--full")
    assert.equal(0, r.code, r.stderr)
    assert.matches("contacts: 0 created, 2 updated, 1 unchanged", r.stdout, 1, true)
    assert.same({ [1] = "c1@example.com|CONTACT 1|21", [2] = "c2@example.com|CONTACT 2|22",
      [3] = "c3@example.com|THIRD|23" }, S.contacts(dir))
    local runs = S.query(dir, "SELECT mode, cursor_after FROM entsync_runs ORDER BY id DESC LIMIT 1")
    assert.equal("full", runs[1].mode)
    assert.equal("2024-01-04/3", runs[1].cursor_after)
    -- the rows are the new mapping's now: no warning, no note
    r = S.run(dir, "run")
    assert.equal("", r.stderr)
    -- (each line's bytes are known under this mapping now: unchanged unread)
    assert.matches("contacts: 0 created, 0 updated, 3 unchanged", r.stdout, 1, true)
    assert.is_nil(S.run(dir, "check").stdout:find("note:", 1, true))
    assert.is_nil(S.run(dir, "status").stdout:find("mapping    changed", 1, true))
  end)

  it("a full pass with --full ignores the limit and the pass in progress, and applies deletes", function()
    S.job(dir, { limit = 2, batch = 2, deletes = "delete" })
    S.data(dir, { S.contact(1), S.contact(2), S.contact(3), S.contact(4), S.contact(5) })
    assert.matches("limit reached", S.run(dir, "run").stdout)
    S.data(dir, { S.contact(1), S.contact(2), S.contact(4) })
    local r = S.run(dir, "run", "--full")
    assert.equal(0, r.code, r.stderr)
    assert.matches("contacts: 1 created, 0 updated, 2 unchanged, 0 stale, 0 failed, 0 deleted", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("limit reached", 1, true))
    assert.same({ [1] = true, [2] = true, [4] = true }, (function()
      local out = {}
      for id in pairs(S.contacts(dir)) do out[id] = true end
      return out
    end)())
    assert.equal(0, S.value(dir, "SELECT pass_open FROM entsync_state"))
  end)
end)

describe("reset SYNC", function()
  it("forgets the cursor and the pass, keeps the id map and the rows, and the next run reads everything", function()
    S.job(dir, { mode = "incremental", changed = "updated_at" })
    S.data(dir, { dated(1, 1), dated(2, 2), dated(3, 3, { age = "x" }) })
    assert.equal(1, S.run(dir, "run").code)
    assert.matches("1 before the cursor", S.run(dir, "run").stdout)
    local r = S.run(dir, "reset", "contacts")
    assert.equal(0, r.code, r.stderr)
    assert.equal("contacts: reset: the next run reads and maps every record (kept: 2 id-map entries, the entity rows, "
      .. "1 failures, the export position and the run history)\n", r.stdout)
    assert.equal(cjson.null, S.query(dir, "SELECT cursor_mark FROM entsync_state")[1].cursor_mark or cjson.null)
    assert.equal(0, S.count(dir, "entsync_idmap", "raw_hash IS NOT NULL"))
    r = S.run(dir, "run")
    assert.matches("contacts: 0 created, 0 updated, 2 unchanged, 0 stale, 1 failed", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("before the cursor", 1, true))
    assert.equal(2, S.count(dir, "contact"))
    local ops = {}
    for _, row in ipairs(S.query(dir, "SELECT operation FROM entsync_runs ORDER BY id")) do ops[#ops + 1] = row.operation end
    assert.same({ "run", "run", "reset", "run" }, ops)
    -- a sync that does not import has nothing to reset
    X.sink_job(dir)
    r = S.run(dir, "reset", "contacts")
    assert.equal(2, r.code)
    assert.matches('sync "contacts" does not import', r.stderr, 1, true)
  end)
end)

describe("run --dry-run --diff", function()
  it("shows each entity an import would change, field by field, and writes nothing", function()
    S.job(dir, { deletes = "delete" })
    S.data(dir, { S.contact(1), S.contact(2), S.contact(3) })
    assert.equal(0, S.run(dir, "run").code)
    S.data(dir, { S.contact(1), S.contact(2, { name = "Two", age = cjson.null }), S.contact(4) })
    local before = S.dump(dir)
    local r = S.run(dir, "run", "--dry-run", "--diff")
    assert.equal(0, r.code, r.stderr)
    assert.matches(table.concat({
      "contacts 2 (local contact 2): update",
      '  contact.age: 22 -> null',
      '  contact.name: "Contact 2" -> "Two"',
      "contacts 4: create",
      '  contact.age: 24',
      '  contact.email: "c4@example.com"',
      '  contact.name: "Contact 4"',
      "contacts 3 (local contact 3): delete",
      "contacts: 1 would create, 1 would update, 1 unchanged, 0 stale, 0 failed, 1 would delete",
    }, "\n"), r.stdout, 1, true)
    assert.equal(before, S.dump(dir))
    -- --diff is a dry run's
    r = S.run(dir, "run", "--diff")
    assert.equal(2, r.code)
    assert.matches("%-%-diff goes with %-%-dry%-run", r.stderr)
  end)

  describe("of queued exports", function()
    local server, d

    helpers.remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
      server, d = remote, tmp
      X.http_job(d, server.url, {})
    end)

    it("shows what the drain would send, the remote's values beside the new ones, and sends nothing", function()
      assert.equal(0, X.run(d).code)
      local one = X.value(d, "SELECT local_id FROM entsync_map WHERE CAST(remote_id AS TEXT) = '101'")
      X.sql(d, string.format("UPDATE contact SET email = 'new101@example.com' WHERE id = %d", one))
      X.sql(d, "INSERT INTO contact (email, name, age) VALUES ('fresh@example.com', 'Fresh', 5)")
      local fresh = X.value(d, "SELECT id FROM contact WHERE email = 'fresh@example.com'")
      server.reset_log()
      local before = S.dump(d)
      local r = X.run(d, "--dry-run", "--diff")
      assert.equal(0, r.code, r.stderr)
      assert.matches(table.concat({
        string.format("contacts local contact %d (remote 101): would update", one),
        '  email: "c101@example.com" -> "new101@example.com"',
      }, "\n"), r.stdout, 1, true)
      assert.matches(table.concat({
        string.format("contacts local contact %d: would create", fresh),
        "  age: 5",
        '  email: "fresh@example.com"',
        '  name: "Fresh"',
      }, "\n"), r.stdout, 1, true)
      assert.matches("contacts: would export 1 created, 1 updated, 0 deleted, 0 unchanged, 0 failed", r.stdout, 1, true)
      assert.same({}, X.writes(server.log()))
      assert.equal(before, S.dump(d))
      -- without --diff: the counts alone
      r = X.run(d, "--dry-run")
      assert.is_nil(r.stdout:find("would update\n", 1, true))
      assert.matches("would export 1 created, 1 updated", r.stdout, 1, true)
      -- the real run sends exactly that
      r = X.run(d)
      assert.matches("exported 1 created, 1 updated", r.stdout, 1, true)
    end)
  end)
end)
