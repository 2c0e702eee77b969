-- Dependent syncs through the real entsync-run binary: run order from
-- depends_on (and cycles as config errors), references between syncs
-- (map.refs, ctx:ref) under each on_missing policy, and merges (two syncs
-- completing one local entity through link).

local cjson = require "cjson"
local T = require "mapping_support"

local function exists(path)
  return require("entsync.core").fs.exists(path) ~= false
end

local function assert_config_error(dir, r, pattern)
  assert.equal(2, r.code, r.stderr)
  assert.equal(1, T.lines(r.stderr), r.stderr)
  assert.matches(pattern, r.stderr)
  assert.is_nil(r.stderr:find("traceback", 1, true))
  assert.equal("", r.stdout)
  assert.is_false(exists(T.db(dir)))
end

local function runs(dir)
  local out = {}
  for _, row in ipairs(T.query(dir, "SELECT sync FROM entsync_history ORDER BY id")) do out[#out + 1] = row.sync end
  return out
end

after_each(T.cleanup)

describe("depends_on", function()
  local dir

  -- notes is unrelated; contacts needs tags, tags needs groups; declared
  -- in the opposite order.
  local function chain_job(extra)
    T.job(dir, [[
entity "note" { text = "text" }
entity "contact" { name = "text" }
entity "tag" { name = "text" }
entity "grp" { name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "notes" { remote = files "notes.ndjson", entity = "note", mapping = { text = "text" } }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", mapping = { name = "name" },
  depends_on = { "tags" } }
sync "tags" { remote = files "tags.ndjson", entity = "tag", mapping = { name = "name" }, depends_on = "groups" }
sync "groups" { remote = files "groups.ndjson", entity = "grp", mapping = { name = "name" } }
]] .. (extra or ""))
    T.data(dir, "notes", { { id = 1, text = "n" } })
    T.data(dir, "contacts", { { id = 1, name = "Ann" } })
    T.data(dir, "tags", { { id = 1, name = "vip" } })
    T.data(dir, "groups", { { id = 1, name = "g" } })
  end

  before_each(function() dir = T.dir() end)

  it("run runs every sync after what it depends on, whatever the declaration order", function()
    chain_job()
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "notes", "groups", "tags", "contacts" }, T.summary_order(r.stdout))
    assert.same({ "notes", "groups", "tags", "contacts" }, runs(dir))
  end)

  it("check lists the syncs in run order with what each runs after", function()
    chain_job()
    local r = T.run(dir, "check")
    assert.equal(0, r.code, r.stderr)
    local listed = {}
    for line in r.stdout:match("syncs +4, in run order\n(.*)$"):gmatch("[^\n]+") do
      listed[#listed + 1] = line:match("^  (%w+) ")
    end
    assert.same({ "notes", "groups", "tags", "contacts" }, listed)
    assert.matches("contacts[^\n]*; after tags\n", r.stdout)
    assert.matches("tags[^\n]*; after groups\n", r.stdout)
  end)

  it("run contacts runs what contacts depends on first, transitively, and nothing unrelated", function()
    chain_job()
    local r = T.run(dir, "run", "contacts")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "groups", "tags", "contacts" }, T.summary_order(r.stdout))
    assert.same({ "groups", "tags", "contacts" }, runs(dir))
    assert.equal(0, T.count(dir, "note"))
    r = T.run(dir, "run", "tags")
    assert.same({ "groups", "tags" }, T.summary_order(r.stdout))
    r = T.run(dir, "run", "notes", "groups")
    assert.same({ "notes", "groups" }, T.summary_order(r.stdout))
  end)

  it("run with an unknown sync name is a usage error naming the declared syncs", function()
    chain_job()
    local r = T.run(dir, "run", "contcts")
    assert.equal(2, r.code)
    assert.matches('no sync named "contcts" %(declared: notes, contacts, tags, groups%)', r.stderr)
    assert.equal("", r.stdout)
  end)

  it("a cycle is a config error naming the cycle, file and line; nothing runs", function()
    T.job(dir, [[
entity "a" { name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "x" { remote = files "x.ndjson", entity = "a", mapping = { name = "name" } }
sync "a" { remote = files "a.ndjson", entity = "a", mapping = { name = "name" },
  depends_on = { "b" } }
sync "b" { remote = files "b.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "a" } }
]])
    local pattern = '^entsync%-run: job%.lua:4: sync "a": depends_on forms a cycle: a %-> b %-> a\n$'
    assert_config_error(dir, T.run(dir, "check"), pattern)
    assert_config_error(dir, T.run(dir, "run"), pattern)
    assert_config_error(dir, T.run(dir, "run", "x"), pattern)
  end)

  it("a longer cycle and a sync depending on itself are named the same way", function()
    T.job(dir, [[
entity "a" { name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "a" { remote = files "a.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "b" } }
sync "b" { remote = files "b.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "c" } }
sync "c" { remote = files "c.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "a" } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:3: sync "a": depends_on forms a cycle: a %-> b %-> c %-> a\n$')
    T.job(dir, [[
entity "a" { name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "ok" { remote = files "a.ndjson", entity = "a", mapping = { name = "name" } }
sync "me" { remote = files "a.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "ok", "me" } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:4: sync "me": depends_on forms a cycle: me %-> me\n$')
  end)

  it("depends_on naming an undeclared sync is a config error", function()
    T.job(dir, [[
entity "a" { name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "a" { remote = files "a.ndjson", entity = "a", mapping = { name = "name" }, depends_on = { "tgas" } }
]])
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:3: sync "a": depends_on names sync "tgas", which is not declared\n$')
  end)
end)

describe("references between syncs", function()
  local dir

  -- contacts refer to tags (one, and a list); tags refer to groups. The
  -- files list tags and groups out of id order, so local ids differ from
  -- the remote ones.
  local function write_job(opts)
    T.job(dir, string.format([[
local map = require "entsync.map"
entity "grp" { name = "text" }
entity "tag" { name = "text", grp = "integer" }
entity "contact" { name = "text", tag = "integer", tags = "json" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact", on_missing = %q,%s
  import = { mode = %q, changed = "updated_at" },
  mapping = {
    name = "name",
    tag = { "tag", import = map.refs "tags" },
    tags = { "tags", import = map.refs "tags" },
  } }
sync "tags" { remote = files "tags.ndjson", entity = "tag", on_missing = %q,%s
  mapping = { name = "name", grp = { "group", import = map.refs "groups" } } }
sync "groups" { remote = files "groups.ndjson", entity = "grp", mapping = { name = "name" } }
]], opts.on_missing or "defer", opts.depends and ' depends_on = { "tags" },' or "", opts.mode or "full",
      opts.tags_on_missing or opts.on_missing or "defer", opts.depends and ' depends_on = { "groups" },' or ""))
  end

  local function write_data(contacts)
    T.data(dir, "groups", { { id = "g3", name = "G3" }, { id = "g1", name = "G1" }, { id = "g2", name = "G2" } })
    T.data(dir, "tags", {
      { id = "t3", name = "T3", group = "g1" },
      { id = "t1", name = "T1", group = "g2" },
      { id = "t2", name = "T2", group = "g3" },
    })
    T.data(dir, "contacts", contacts or {
      { id = 1, name = "Ann", tag = "t1", tags = { "t2", "t3" }, updated_at = "2024-01-01" },
      { id = 2, name = "Bob", tag = "t3", tags = {}, updated_at = "2024-01-02" },
    })
  end

  local function tag_id(remote_id) return T.local_id(dir, "tags", remote_id) end
  local function group_id(remote_id) return T.local_id(dir, "groups", remote_id) end

  -- The contacts by remote id (integers, as the files give them).
  local function contacts()
    local out = {}
    for _, row in ipairs(T.query(dir, [[SELECT m.remote_id, c.name, c.tag, c.tags FROM contact c
        JOIN entsync_map m ON m.sync = 'contacts' AND m.local_id = c.id]])) do
      out[row.remote_id] = { name = row.name, tag = row.tag, tags = row.tags and cjson.decode(row.tags) }
    end
    return out
  end

  before_each(function() dir = T.dir() end)

  it("map.refs turns remote ids into local ids through the other sync's id map: one and a list", function()
    write_job({ depends = true })
    write_data({ { id = 1, name = "Ann", tag = "t1", tags = { "t2", "t3" } } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "groups", "tags", "contacts" }, T.summary_order(r.stdout))
    assert.same({ 2, 3, 1 }, { tag_id("t1"), tag_id("t2"), tag_id("t3") })
    assert.same({ [1] = { name = "Ann", tag = 2, tags = { 3, 1 } } }, contacts())
    -- and tags' own references to groups
    assert.same({ { name = "T3", grp = group_id("g1") }, { name = "T1", grp = group_id("g2") } },
      T.query(dir, "SELECT name, grp FROM tag WHERE id IN (1, 2) ORDER BY id"))
    assert.same({ 2, 3 }, { group_id("g1"), group_id("g2") })
  end)

  describe("on_missing = \"import\"", function()
    it("imports a missing reference through its sync's provider at once, down a chain three deep", function()
      write_job({ on_missing = "import" })
      write_data({
        { id = 1, name = "Ann", tag = "t1", tags = { "t3" } },
        { id = 2, name = "Bob", tag = "t3" },
      })
      local r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.same({ "contacts" }, T.summary_order(r.stdout))
      assert.equal(2, T.summary(r.stdout).created)
      assert.same({ "contacts" }, runs(dir))
      -- only what was referenced came in: t1, t3 and their groups g2, g1
      assert.equal(2, T.count(dir, "tag"))
      assert.equal(2, T.count(dir, "grp"))
      assert.is_nil(tag_id("t2"))
      assert.is_nil(group_id("g3"))
      assert.same({ name = "T1", grp = group_id("g2") }, T.query(dir, "SELECT name, grp FROM tag WHERE id = ?1", tag_id("t1"))[1])
      assert.same({ name = "T3", grp = group_id("g1") }, T.query(dir, "SELECT name, grp FROM tag WHERE id = ?1", tag_id("t3"))[1])
      assert.equal("G2", T.value(dir, "SELECT name FROM grp WHERE id = ?1", group_id("g2")))
      local c = contacts()
      assert.same({ name = "Ann", tag = tag_id("t1"), tags = { tag_id("t3") } }, c[1])
      assert.same({ name = "Bob", tag = tag_id("t3") }, c[2])
      assert.equal(0, T.count(dir, "entsync_failures"))
      -- a later run of the dependencies finds what was imported on demand
      r = T.run(dir, "run", "tags")
      assert.equal(0, r.code, r.stderr)
      local s = T.summary(r.stdout, "tags")
      assert.same({ 1, 0, 2 }, { s.created, s.updated, s.unchanged })
      assert.equal(3, T.count(dir, "tag"))
      assert.equal(3, T.count(dir, "grp"))
      -- and a second run of contacts imports nothing again
      r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.equal(2, T.summary(r.stdout).unchanged)
      assert.equal(3, T.count(dir, "tag"))
    end)

    it("fails the referring entity when the reference is not on the remote either", function()
      write_job({ on_missing = "import" })
      write_data({ { id = 1, name = "Ann", tag = "t9" }, { id = 2, name = "Bob", tag = "t1" } })
      local r = T.run(dir, "run", "contacts")
      assert.equal(1, r.code, r.stderr)
      assert.same({ 1, 1 }, { T.summary(r.stdout).created, T.summary(r.stdout).failed })
      assert.matches("contacts 1: field tag: reference tags t9: the remote has no such entity", r.stderr)
      assert.matches("^field tag: reference tags t9: the remote has no such entity", T.failures(dir, "contacts")["1"].error)
      assert.is_nil(r.stderr:find("traceback", 1, true))
    end)

    -- people refer to their boss, in the same sync
    local function people(records)
      T.job(dir, [[
local map = require "entsync.map"
entity "person" { name = "text", boss = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "people" { remote = files "people.ndjson", entity = "person", on_missing = "import",
  mapping = { name = "name", boss = { "boss", import = map.refs "people" } } }
]])
      T.data(dir, "people", records)
    end

    it("imports a boss on demand from the same sync", function()
      people({ { id = 1, name = "Ann", boss = 3 }, { id = 2, name = "Bob", boss = 1 }, { id = 3, name = "Cy" } })
      local r = T.run(dir, "run")
      assert.equal(0, r.code, r.stderr)
      local c = T.summary(r.stdout, "people")
      assert.same({ 2, 1 }, { c.created, c.unchanged })
      assert.same({ { name = "Cy" }, { name = "Ann", boss = 1 }, { name = "Bob", boss = 2 } },
        T.query(dir, "SELECT name, boss FROM person ORDER BY id"))
    end)

    it("a record referring to itself fails with a short message instead of one per level of recursion", function()
      people({ { id = 3, name = "Cy", boss = 3 } })
      local r = T.run_limited(dir, 3, "run")
      assert.is_false(r.killed)
      assert.equal(1, r.code, r.stderr)
      local err = T.failures(dir, "people")["3"].error
      assert.matches("reference people 3", err)
      assert.is_true(#err < 500, #err .. " characters: " .. err:sub(1, 300))
    end)

    it("a cycle of references (1 -> 2 -> 1) ends the run promptly instead of hanging", function()
      people({ { id = 1, name = "Ann", boss = 2 }, { id = 2, name = "Bob", boss = 1 }, { id = 3, name = "Cy", boss = 3 },
        { id = 4, name = "Dee" } })
      local r = T.run_limited(dir, 3, "run")
      assert.is_false(r.killed, "entsync-run still running after 3 s; stderr: " .. r.stderr:sub(1, 300))
      assert.equal(1, r.code, r.stderr:sub(1, 300))
      assert.equal("Dee", T.value(dir, "SELECT name FROM person WHERE id = ?1", T.local_id(dir, "people", 4)))
    end)
  end)

  describe("on_missing = \"defer\"", function()
    it("keeps the entity as failed, waiting for the dependency's next run, then retries it", function()
      write_job({ on_missing = "defer" })
      write_data()
      local r = T.run(dir, "run", "contacts")
      assert.equal(1, r.code, r.stderr)
      assert.same({ "contacts" }, T.summary_order(r.stdout))
      assert.equal(2, T.summary(r.stdout).failed)
      assert.equal(0, T.count(dir, "contact"))
      local failures = T.failures(dir, "contacts")
      assert.equal("tags", failures["1"].waits_for)
      assert.equal("tags", failures["2"].waits_for)
      assert.matches("^field tag: reference tags t1 is not imported yet; retried after tags runs %(job%.lua:10%)$",
        failures["1"].error)
      assert.is_true(failures["1"].next_at > 1e100)
      assert.matches("contacts 1: field tag: reference tags t1 is not imported yet", r.stderr)
      local status = T.run(dir, "status")
      assert.matches("retry after tags runs", status.stdout, 1, true)

      -- the dependency's run makes them due ...
      r = T.run(dir, "run", "tags")
      assert.equal(1, r.code, r.stderr) -- tags defer on groups in turn
      local now = os.time()
      for _, failure in pairs(T.failures(dir, "contacts")) do assert.is_true(failure.next_at <= now + 1) end
      r = T.run(dir, "run", "groups")
      assert.equal(0, r.code, r.stderr)
      r = T.run(dir, "run", "tags")
      assert.equal(0, r.code, r.stderr)
      -- ... and the next run of contacts imports them; the failures are gone
      r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.equal(2, T.summary(r.stdout).created)
      assert.equal(0, T.count(dir, "entsync_failures"))
      assert.same({
        [1] = { name = "Ann", tag = tag_id("t1"), tags = { tag_id("t2"), tag_id("t3") } },
        [2] = { name = "Bob", tag = tag_id("t3"), tags = {} },
      }, contacts())
    end)

    it("a run of everything with depends_on imports the deferred entities after their dependency", function()
      write_job({ on_missing = "defer" })
      write_data()
      assert.equal(1, T.run(dir, "run", "contacts").code)
      assert.equal(2, T.count(dir, "entsync_failed", "sync = 'contacts' AND waits_for = 'tags'"))
      write_job({ on_missing = "defer", depends = true })
      local r = T.run(dir, "run")
      assert.equal(0, r.code, r.stderr)
      assert.same({ "groups", "tags", "contacts" }, T.summary_order(r.stdout))
      assert.equal(2, T.summary(r.stdout).created)
      assert.equal(0, T.count(dir, "entsync_failures"))
      assert.equal(tag_id("t1"), contacts()[1].tag)
    end)

    it("an incremental sync retries its deferred entities after the dependency runs, behind its cursor", function()
      write_job({ on_missing = "defer", mode = "incremental" })
      write_data({
        { id = 1, name = "Ann", tag = "t1", updated_at = "2024-01-01" },
        { id = 2, name = "Bob", updated_at = "2024-01-02" },
      })
      T.data(dir, "tags", { { id = "t1", name = "T1" } })
      local r = T.run(dir, "run", "contacts")
      assert.equal(1, r.code, r.stderr)
      assert.same({ 1, 1 }, { T.summary(r.stdout).created, T.summary(r.stdout).failed })
      assert.equal("2024-01-02", T.value(dir, [[SELECT t.cursor_mark FROM entsync_state t
        JOIN entsync_syncs s ON s.id = t.sync WHERE s.name = 'contacts']]))
      -- nothing new for contacts, and tags has not run: still waiting
      r = T.run(dir, "run", "contacts")
      assert.equal(1, T.count(dir, "entsync_failed", "sync = 'contacts'"))
      assert.is_nil(T.summary(r.stdout).retried)
      assert.equal(0, T.run(dir, "run", "tags").code)
      r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      local s = T.summary(r.stdout)
      assert.same({ 1, 1, 0 }, { s.created, s.retried, s.failed })
      assert.equal(0, T.count(dir, "entsync_failures"))
      assert.equal(tag_id("t1"), contacts()[1].tag)
    end)
  end)

  describe("on_missing = \"null\"", function()
    it("stores nothing for a missing reference: NULL for one, the list without it", function()
      write_job({ on_missing = "null" })
      write_data({
        { id = 1, name = "Ann", tag = "t1", tags = { "t2", "t9", "t3" } },
        { id = 2, name = "Bob", tag = "t9", tags = { "t1" } },
      })
      T.data(dir, "tags", { { id = "t3", name = "T3" }, { id = "t1", name = "T1" }, { id = "t2", name = "T2" } })
      assert.equal(0, T.run(dir, "run", "tags").code)
      local r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.equal(2, T.summary(r.stdout).created)
      assert.equal(0, T.count(dir, "entsync_failures"))
      assert.same({
        [1] = { name = "Ann", tag = tag_id("t1"), tags = { tag_id("t2"), tag_id("t3") } },
        [2] = { name = "Bob", tags = { tag_id("t1") } },
      }, contacts())
    end)

    it("stores a list whose references are all missing as an empty JSON list", function()
      write_job({ on_missing = "null" })
      write_data({ { id = 1, name = "Ann", tags = { "t9" } } })
      local r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.equal("[]", T.value(dir, "SELECT tags FROM contact"))
    end)

    it("fills the references in once the dependency has run", function()
      write_job({ on_missing = "null" })
      write_data({ { id = 1, name = "Ann", tag = "t1", tags = { "t1", "t2" } } })
      assert.equal(0, T.run(dir, "run", "contacts").code)
      assert.same({ [1] = { name = "Ann", tags = {} } }, contacts())
      assert.equal(0, T.run(dir, "run", "tags").code)
      local r = T.run(dir, "run", "contacts")
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, T.summary(r.stdout).updated)
      assert.same({ [1] = { name = "Ann", tag = tag_id("t1"), tags = { tag_id("t1"), tag_id("t2") } } }, contacts())
    end)

    it("fills in references made by ctx:ref in a callback or by map.refs inside map.chain too", function()
      T.job(dir, [[
local map = require "entsync.map"
entity "grp" { name = "text" }
entity "tag" { name = "text", grp = "integer", grp2 = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "tags" { remote = files "tags.ndjson", entity = "tag", on_missing = "null",
  mapping = {
    name = "name",
    grp = { "group", import = function(value, record, ctx) return ctx:ref("groups", value) end },
    grp2 = { "group", import = map.chain(map.trim, map.refs "groups") },
  } }
sync "groups" { remote = files "groups.ndjson", entity = "grp", mapping = { name = "name" } }
]])
      write_data()
      assert.equal(0, T.run(dir, "run", "tags").code)
      assert.equal(0, T.count(dir, "tag", "grp IS NOT NULL OR grp2 IS NOT NULL"))
      assert.equal(0, T.run(dir, "run", "groups").code)
      local r = T.run(dir, "run", "tags")
      assert.equal(0, r.code, r.stderr)
      assert.equal(3, T.summary(r.stdout, "tags").updated)
      assert.same({ { grp = group_id("g1"), grp2 = group_id("g1") } },
        T.query(dir, "SELECT grp, grp2 FROM tag WHERE id = ?1", tag_id("t3")))
    end)
  end)

  it("ctx:ref to a sync that is not declared fails the entity at run time", function()
    T.job(dir, [[
entity "contact" { name = "text", tag = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = { name = "name", tag = { "tag", import = function(v, r, ctx) return ctx:ref("tgas", v) end } } }
]])
    write_data({ { id = 1, name = "Ann", tag = "t1" } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.matches('contacts 1: field tag: ref: no sync named "tgas"', r.stderr)
  end)

  it("on_missing must be import, defer or null", function()
    write_job({ on_missing = "skip", tags_on_missing = "null" })
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:6: sync "contacts": on_missing must be "import", "defer" or "null", got skip\n$')
  end)
end)

describe("a merge: two syncs writing one local entity", function()
  local dir

  local function write_job(link, on_missing)
    T.job(dir, string.format([[
entity "user" { name = "text", email = "text", phone = "text", company = "text" }
local files = provider "ndjson" { dir = "data" }
sync "profiles" { remote = files "profiles.ndjson", entity = "user", depends_on = { "users" },
  link = %s,%s
  mapping = { phone = "phone", company = "company.name" } }
sync "users" { remote = files "users.ndjson", entity = "user", mapping = { name = "name", email = "email" } }
]], link, on_missing and string.format(" on_missing = %q,", on_missing) or ""))
  end

  local function users()
    return T.query(dir, "SELECT id, name, email, phone, company FROM user ORDER BY id")
  end

  before_each(function() dir = T.dir() end)

  it("each sync owns the fields its mapping names: one never blanks the other's", function()
    write_job('{ sync = "users", key = "user_id" }')
    T.data(dir, "users", { { id = 1, name = "Ann", email = "a@x" }, { id = 2, name = "Bob", email = "b@x" } })
    T.data(dir, "profiles", {
      { id = "p2", user_id = 2, phone = "222", company = { name = "Beta" } },
      { id = "p1", user_id = 1, phone = "111", company = { name = "Acme" } },
    })
    local r = T.run(dir, "run", "users")
    assert.equal(0, r.code, r.stderr)
    r = T.run(dir, "run", "profiles")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "users", "profiles" }, T.summary_order(r.stdout))
    assert.equal(2, T.count(dir, "user"))
    assert.same({
      { id = 1, name = "Ann", email = "a@x", phone = "111", company = "Acme" },
      { id = 2, name = "Bob", email = "b@x", phone = "222", company = "Beta" },
    }, users())
    -- both syncs map the same local rows
    assert.same({ { remote_id = "p1", local_id = 1 }, { remote_id = "p2", local_id = 2 } },
      T.query(dir, "SELECT remote_id, local_id FROM entsync_map WHERE sync = 'profiles' ORDER BY remote_id"))
    -- users again, with a change: the profile fields stay
    T.data(dir, "users", { { id = 1, name = "Ann Lee", email = "ann@x" }, { id = 2, name = "Bob", email = "b@x" } })
    r = T.run(dir, "run", "users")
    assert.equal(0, r.code, r.stderr)
    local s = T.summary(r.stdout, "users")
    assert.same({ 0, 1, 1 }, { s.created, s.updated, s.unchanged })
    assert.same({
      { id = 1, name = "Ann Lee", email = "ann@x", phone = "111", company = "Acme" },
      { id = 2, name = "Bob", email = "b@x", phone = "222", company = "Beta" },
    }, users())
    -- profiles again, with a change: the user fields stay
    T.data(dir, "profiles", {
      { id = "p2", user_id = 2, phone = "223" },
      { id = "p1", user_id = 1, phone = "111", company = { name = "Acme" } },
    })
    r = T.run(dir, "run", "profiles")
    assert.equal(0, r.code, r.stderr)
    s = T.summary(r.stdout, "profiles")
    assert.same({ 0, 1, 1 }, { s.created, s.updated, s.unchanged })
    assert.same({
      { id = 1, name = "Ann Lee", email = "ann@x", phone = "111", company = "Acme" },
      { id = 2, name = "Bob", email = "b@x", phone = "223" },
    }, users())
    assert.equal(0, T.count(dir, "entsync_failures"))
  end)

  it("link = \"users\" links records with the same remote id", function()
    write_job('"users"')
    T.data(dir, "users", { { id = 7, name = "Ann", email = "a@x" } })
    T.data(dir, "profiles", { { id = 7, phone = "777" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "users", "profiles" }, T.summary_order(r.stdout))
    assert.same({ { id = 1, name = "Ann", email = "a@x", phone = "777" } }, users())
  end)

  it("a record whose linked entity is not imported yet waits for that sync (defer)", function()
    write_job('{ sync = "users", key = "user_id" }')
    T.data(dir, "users", { { id = 1, name = "Ann", email = "a@x" } })
    T.data(dir, "profiles", { { id = "p1", user_id = 1, phone = "111" }, { id = "p3", user_id = 3, phone = "333" } })
    local r = T.run(dir, "run")
    assert.equal(1, r.code, r.stderr)
    assert.same({ 1, 1 }, { T.summary(r.stdout, "profiles").created, T.summary(r.stdout, "profiles").failed })
    local failure = T.failures(dir, "profiles").p3
    assert.equal("users", failure.waits_for)
    assert.matches("reference users 3 is not imported yet", failure.error)
    assert.equal(1, T.count(dir, "user"))
    -- user 3 arrives: the next run links the waiting profile to it
    T.data(dir, "users", { { id = 1, name = "Ann", email = "a@x" }, { id = 3, name = "Cy", email = "c@x" } })
    r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, T.count(dir, "entsync_failures"))
    assert.same({ name = "Cy", phone = "333" }, T.query(dir, "SELECT name, phone FROM user WHERE id = ?1",
      T.local_id(dir, "users", 3))[1])
    assert.equal(2, T.count(dir, "user"))
  end)

  it("with on_missing = \"import\", the linked entity is imported from its own remote first", function()
    write_job('{ sync = "users", key = "user_id" }', "import")
    T.data(dir, "users", { { id = 1, name = "Ann", email = "a@x" }, { id = 2, name = "Bob", email = "b@x" } })
    T.data(dir, "profiles", { { id = "p2", user_id = 2, phone = "222" } })
    -- profiles alone (its depends_on brings users along with run; import does not)
    local r = T.run(dir, "import", "profiles", "p2")
    assert.equal(0, r.code, r.stderr)
    assert.same({ { id = 1, name = "Bob", email = "b@x", phone = "222" } }, users())
    assert.equal(1, T.local_id(dir, "users", 2))
  end)

  it("a link key may be a nested remote path", function()
    write_job('{ sync = "users", key = "owner.id" }')
    T.data(dir, "users", { { id = 1, name = "Ann", email = "a@x" }, { id = 2, name = "Bob", email = "b@x" } })
    T.data(dir, "profiles", { { id = "p9", owner = { id = 2 }, phone = "222" } })
    local r = T.run(dir, "run")
    assert.equal(0, r.code, r.stderr)
    assert.same({ name = "Bob", phone = "222" }, T.query(dir, "SELECT name, phone FROM user WHERE id = 2")[1])
    assert.equal(0, T.count(dir, "user", "id = 1 AND phone IS NOT NULL"))
  end)

  it("a link key that is no remote path is a config error (not a silent link by the record's own id)", function()
    write_job('{ sync = "users", key = "owner[id]" }')
    local r = T.run(dir, "check")
    assert.equal(2, r.code, r.stdout)
    assert.matches('job%.lua:3: sync "profiles": link key', r.stderr)
  end)

  it("link must name a declared sync", function()
    write_job('{ sync = "usres", key = "user_id" }')
    assert_config_error(dir, T.run(dir, "check"),
      '^entsync%-run: job%.lua:3: sync "profiles": link names sync "usres", which is not declared\n$')
    write_job("42")
    assert_config_error(dir, T.run(dir, "check"), 'sync "profiles": link must name the sync whose entities this one completes')
  end)
end)
