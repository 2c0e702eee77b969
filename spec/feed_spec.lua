-- The docstore example provider (examples/feed/providers/docstore.lua)
-- against the fixture's document store with a changes feed
-- (/feed/<db>/..., spec/support/fixture_server.py): opaque sequence tokens
-- that sort wrongly as text, pages that a type filter empties, tombstones
-- under each deletes policy, revisions refused with 409 and settled by
-- each conflict policy in the same run, and bulk writes with one item
-- refused. Real entsync-run processes and the real fixture remote only.

local cjson = require "cjson"
local helpers = require "helpers"
local I = require "import_support"
local S = require "http_support"
local X = require "export_support"

local DOCSTORE = helpers.root .. "/examples/feed/providers/docstore.lua"
local TIMEOUT = 60

-- The fixture's token for sequence number n: "<n>-g<hex>".
local function token(n)
  return string.format("%d-g%06x", n, (n * 2654435761) & 0xFFFFFF)
end

-- A contact document; i gives its id "c001" and its values.
local function doc(i, fields)
  local d = {
    _id = string.format("c%03d", i), type = "contact", name = "Contact " .. i, email = "c" .. i .. "@example.com",
    address = { city = "City " .. i },
    updated_at = string.format("2026-01-01T%02d:%02d:%02dZ", i // 3600, (i // 60) % 60, i % 60),
  }
  for k, v in pairs(fields or {}) do d[k] = v end
  return d
end

local function docs(from, to, fields)
  local out = {}
  for i = from, to do out[#out + 1] = doc(i, fields) end
  return out
end

describe("the docstore provider on a changes feed", function()
  local server, dir

  helpers.remote_for_each_test({}, function(remote, tmp)
    server, dir = remote, tmp
  end)

  -- the remote's documents -------------------------------------------------------

  -- Seeds the store "contacts" with documents (in this order: their
  -- sequence numbers are 1..n); clears the log and the reject list.
  local function seed(list)
    server.reset({ feeds = { contacts = list } })
  end

  local function remote_get(id)
    local res = server.request("GET", "/feed/contacts/" .. id)
    return res.status == 200 and res.json or nil, res
  end

  -- Changes a document at the remote as another client would: PUT with
  -- its current _rev. Returns the new revision.
  local function remote_put(id, changes)
    local current = assert(remote_get(id), "no document " .. id)
    for k, v in pairs(changes) do current[k] = v end
    local res = server.request("PUT", "/feed/contacts/" .. id, { body = current })
    assert(res.status == 201, "fixture PUT: " .. res.status .. " " .. res.body)
    return res.json.rev
  end

  local function remote_delete(id)
    local current = assert(remote_get(id), "no document " .. id)
    local res = server.request("DELETE", "/feed/contacts/" .. id .. "?rev=" .. current._rev)
    assert(res.status == 200, "fixture DELETE: " .. res.status .. " " .. res.body)
  end

  -- Every document of the store by id (deleted ones as { _deleted = true }).
  local function remote_docs()
    return server.control("GET", "feed").contacts or {}
  end

  local function reject(ids)
    server.control("POST", "feed_reject", { ids = setmetatable(ids, cjson.array_mt) })
  end

  -- the fixture's request log ----------------------------------------------------

  local function changes_requests()
    local out = {}
    for _, e in ipairs(server.log()) do
      if e.method == "GET" and e.path == "/feed/contacts/_changes" then out[#out + 1] = S.query(e.query) end
    end
    return out
  end

  -- Writes to the store (a POST to _all_docs is a read): { { method,
  -- path, record, status } }.
  local function writes()
    local out = {}
    for _, e in ipairs(X.writes(server.log(), { under = "/feed/contacts" })) do
      if e.path ~= "/feed/contacts/_all_docs" then out[#out + 1] = e end
    end
    return out
  end

  -- A run after one that settled everything: it sends nothing.
  local function sends_nothing(run)
    server.reset_log()
    local r = run()
    assert.equal(0, r.code, r.stderr)
    assert.same({}, writes())
  end

  -- The reads of an export: the keys of each _all_docs request, and the
  -- ids read one GET each.
  local function reads()
    local batches, gets = {}, {}
    for _, e in ipairs(server.log()) do
      if e.method == "POST" and e.path == "/feed/contacts/_all_docs" then
        batches[#batches + 1] = cjson.decode(e.body).keys
      elseif e.method == "GET" and e.path ~= "/feed/contacts/_changes" then
        gets[#gets + 1] = e.path:match("^/feed/contacts/(.*)$")
      end
    end
    return batches, gets
  end

  -- the job ----------------------------------------------------------------------

  -- Writes job.lua with the docstore provider copied into providers/. opts:
  -- page_size, type (the provider's type filter), deletes (import),
  -- conflict (export), limit, export (Lua source of the whole export
  -- table, or "false"), import (the same of the import table), provider
  -- (the provider module's name, default docstore), mode.
  local function job(opts)
    opts = opts or {}
    helpers.write(dir .. "/providers/docstore.lua", helpers.read(DOCSTORE))
    local provider = string.format('provider %q { base_url = %q, db = "contacts", page_size = %d%s }',
      opts.provider or "docstore", server.url, opts.page_size or 100,
      opts.type and string.format(", type = %q", opts.type) or "")
    local import = opts.import or string.format(
      '{ mode = %q, changed = "updated_at", changed_kind = "time", deletes = %q%s }',
      opts.mode or "incremental", opts.deletes or "delete", opts.limit and (", limit = " .. opts.limit) or "")
    local export = opts.export or string.format('{ on_change = true, conflict = %q, deletes = "delete" }',
      opts.conflict or "newest")
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { name = "text", email = "text", city = "text", updated = "timestamp" }',
      "local docs = " .. provider,
      'sync "contacts" { remote = docs, entity = "contact", id = "_id",',
      '  mapping = { name = "name", email = "email", city = "address.city", updated = "updated_at" },',
      "  import = " .. import .. ",",
      "  export = " .. export .. " }",
    }, "\n") .. "\n")
  end

  local function run(...)
    local r = S.run_limited(dir, TIMEOUT, ...)
    assert.is_false(r.killed, "entsync-run was killed after " .. TIMEOUT .. "s: " .. r.stderr)
    return r
  end

  local function db() return dir .. "/entsync.db" end

  -- The local contacts by remote id: { c001 = row }.
  local function contacts()
    local out = {}
    for _, row in ipairs(helpers.query(db(), [[SELECT m.remote_id, m.gone_at, m.version, c.* FROM contact c
        JOIN entsync_map m ON m.local_id = c.id AND m.sync = 'contacts']])) do
      out[row.remote_id] = row
    end
    return out
  end

  local function count(sql, ...)
    local row = helpers.query(db(), sql, ...)[1]
    local _, n = next(row)
    return n
  end

  local function local_of(remote_id)
    return count("SELECT local_id FROM entsync_map WHERE sync = 'contacts' AND remote_id = ?1", remote_id)
  end

  local function state()
    return helpers.query(db(), [[SELECT t.* FROM entsync_state t JOIN entsync_syncs s ON s.id = t.sync
      WHERE s.name = 'contacts']])[1]
  end

  local function sql(text)
    return helpers.sqlite3(db(), text)
  end

  local function conflicts()
    return helpers.query(db(), [[SELECT c.* FROM entsync_conflicts c JOIN entsync_syncs s ON s.id = c.sync
      WHERE s.name = 'contacts' ORDER BY c.id]])
  end

  local function failures()
    return helpers.query(db(), "SELECT * FROM entsync_failed WHERE sync = 'contacts' ORDER BY key")
  end

  -- tokens ------------------------------------------------------------------------

  describe("tokens that sort wrongly as text", function()
    it("import every document of a feed of 150 changes, and the next run only what changed after", function()
      assert.is_true(token(100) < token(99)) -- the point: as text, 100 comes first
      seed(docs(1, 150))
      job({ page_size = 40 })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local summary = I.summary(r.stdout)
      assert.equal(150, summary.created, r.stdout)
      assert.equal(0, summary.failed, r.stdout)
      local stored = contacts()
      for i = 1, 150 do
        local id = string.format("c%03d", i)
        assert.is_not_nil(stored[id], "missing " .. id)
        assert.equal("City " .. i, stored[id].city)
      end
      assert.equal(150, count("SELECT count(*) FROM contact"))
      -- the checkpoint is the feed's token, past "99-...": JSON text
      assert.equal(cjson.encode(token(150)), state().checkpoint)

      -- changes at the remote after the cursor passed "99-..."
      remote_put("c005", { address = { city = "Changed 5" } })
      remote_put("c120", { address = { city = "Changed 120" } })
      remote_put("c099", { address = { city = "Changed 99" } })
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      summary = I.summary(r.stdout)
      assert.equal(0, summary.created, r.stdout)
      assert.equal(3, summary.updated, r.stdout)
      assert.equal(0, summary.unchanged, r.stdout)
      assert.is_nil(summary.before_cursor, r.stdout)
      stored = contacts()
      assert.equal("Changed 5", stored.c005.city)
      assert.equal("Changed 120", stored.c120.city)
      assert.equal("Changed 99", stored.c099.city)
      assert.equal("City 100", stored.c100.city)
      -- the run asked for the changes after the stored token, once
      local asked = changes_requests()
      assert.equal(1, #asked)
      assert.equal(token(150), asked[1].since)
      assert.equal(cjson.encode(token(153)), state().checkpoint)
      -- nothing was sent back: the remote's copies came from the remote
      assert.same({}, writes())
    end)

    it("resume from each checkpoint across runs that stop at the limit, past 99 into 100 and beyond", function()
      seed(docs(1, 150))
      job({ page_size = 40, limit = 60 })
      local total = 0
      for runs = 1, 3 do
        local r = run()
        assert.equal(0, r.code, r.stderr)
        local summary = I.summary(r.stdout)
        total = total + summary.created
        assert.equal(0, summary.updated + summary.unchanged, r.stdout)
        assert.is_nil(summary.before_cursor, r.stdout)
        assert.equal(math.min(60, 150 - 60 * (runs - 1)), summary.created, "run " .. runs .. ": " .. r.stdout)
      end
      assert.equal(150, total)
      assert.equal(150, count("SELECT count(*) FROM contact"))
      assert.equal(cjson.encode(token(150)), state().checkpoint)
      -- each run began where the one before stopped
      local since = {}
      for _, q in ipairs(changes_requests()) do since[#since + 1] = q.since end
      assert.equal("0", since[1])
      local seen60, seen120 = false, false
      for _, s in ipairs(since) do
        if s == token(60) then seen60 = true end
        if s == token(120) then seen120 = true end
      end
      assert.is_true(seen60 and seen120, table.concat(since, " "))

      -- changes after the cursor passed "99-": exactly those
      remote_put("c010", { name = "Renamed 10" })
      remote_put("c101", { name = "Renamed 101" })
      local r = run()
      local summary = I.summary(r.stdout)
      assert.equal(2, summary.updated, r.stdout)
      assert.equal(0, summary.created + summary.unchanged, r.stdout)
      assert.is_nil(summary.before_cursor, r.stdout)
      assert.equal("Renamed 10", contacts().c010.name)
      assert.equal("Renamed 101", contacts().c101.name)
    end)
  end)

  -- empty pages -------------------------------------------------------------------------

  describe("pages that the type filter empties", function()
    it("move the checkpoint on, so the next run starts after them", function()
      -- 10 contacts, 45 notes, then 5 contacts: pages of 10 changes, the
      -- ones in the middle carry nothing of the type asked for
      local list = docs(1, 10)
      for i = 11, 55 do list[#list + 1] = doc(i, { type = "note" }) end
      for i = 56, 60 do list[#list + 1] = doc(i) end
      seed(list)
      job({ page_size = 10, type = "contact" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(15, I.summary(r.stdout).created, r.stdout)
      assert.equal(15, count("SELECT count(*) FROM contact"))
      assert.equal(cjson.encode(token(60)), state().checkpoint)

      -- notes only, at the end of the feed: pages with nothing to import
      for i = 1, 25 do
        local d = doc(100 + i, { type = "note" })
        local res = server.request("PUT", "/feed/contacts/" .. d._id, { body = d })
        assert.equal(201, res.status)
      end
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local summary = I.summary(r.stdout)
      assert.equal(0, summary.created + summary.updated + summary.unchanged, r.stdout)
      assert.equal(cjson.encode(token(85)), state().checkpoint)
      local asked = changes_requests()
      assert.equal(3, #asked) -- 60..70, 70..80, 80..85
      assert.equal(token(60), asked[1].since)

      -- the next run starts after them: one request, nothing re-read
      remote_put("c003", { name = "Renamed 3" })
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      summary = I.summary(r.stdout)
      assert.equal(1, summary.updated, r.stdout)
      assert.equal(0, summary.created + summary.unchanged, r.stdout)
      asked = changes_requests()
      assert.equal(1, #asked)
      assert.equal(token(85), asked[1].since)
      assert.equal("Renamed 3", contacts().c003.name)
    end)

    it("are never read again from the start when every page of a run is empty", function()
      local list = docs(1, 5)
      for i = 6, 40 do list[#list + 1] = doc(i, { type = "note" }) end
      seed(list)
      job({ page_size = 5, type = "contact" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(5, I.summary(r.stdout).created, r.stdout)
      local first = #changes_requests()
      assert.equal(8, first) -- 0..5, 5..10, ..., 35..40
      assert.equal(cjson.encode(token(40)), state().checkpoint)
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local asked = changes_requests()
      assert.equal(1, #asked)
      assert.equal(token(40), asked[1].since)
    end)
  end)

  -- tombstones ---------------------------------------------------------------------------

  describe("tombstones in incremental runs", function()
    local function imported(opts)
      seed(docs(1, 5))
      job(opts)
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(5, I.summary(r.stdout).created, r.stdout)
      return local_of("c003")
    end

    it('deletes = "delete" deletes the local row and its id-map row', function()
      local id = imported({ deletes = "delete" })
      remote_delete("c003")
      server.reset_log()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local summary = I.summary(r.stdout)
      assert.equal(1, summary.deleted, r.stdout)
      assert.equal(0, count("SELECT count(*) FROM contact WHERE id = ?1", id))
      assert.equal(0, count("SELECT count(*) FROM entsync_map WHERE remote_id = 'c003'"))
      assert.equal(4, count("SELECT count(*) FROM contact"))
      assert.same({}, writes()) -- the local delete is not sent back
      -- a tombstone of a document never imported is nothing to settle
      local d = doc(900)
      assert.equal(201, server.request("PUT", "/feed/contacts/c900", { body = d }).status)
      remote_delete("c900")
      r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(0, I.summary(r.stdout).failed, r.stdout)
      assert.equal(4, count("SELECT count(*) FROM contact"))
      assert.same({}, failures())
    end)

    it('deletes = "flag" sets gone_at and keeps the row', function()
      local id = imported({ deletes = "flag" })
      remote_delete("c003")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, count("SELECT count(*) FROM contact WHERE id = ?1", id))
      assert.is_not_nil(contacts().c003.gone_at)
      assert.is_nil(contacts().c002.gone_at)
    end)

    it('deletes = "keep" keeps the row and its id map', function()
      local id = imported({ deletes = "keep" })
      remote_delete("c003")
      server.reset_log()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, count("SELECT count(*) FROM contact WHERE id = ?1", id))
      assert.is_not_nil(contacts().c003)
      assert.is_nil(contacts().c003.gone_at)
      assert.same({}, writes())
    end)

    it("meet a local change as a conflict: remote_wins deletes the local row", function()
      local id = imported({ deletes = "delete", conflict = "remote_wins" })
      sql(string.format("UPDATE contact SET city = 'Local' WHERE id = %d", id))
      remote_delete("c003")
      server.reset_log()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local rows = conflicts()
      assert.equal(1, #rows)
      assert.equal("remote", rows[1].winner)
      assert.equal("remote_wins", rows[1].policy)
      assert.equal(0, count("SELECT count(*) FROM contact WHERE id = ?1", id))
      assert.equal(0, count("SELECT count(*) FROM entsync_map WHERE local_id = ?1", id))
      assert.same({}, writes())
      assert.is_true(remote_docs().c003._deleted)
    end)

    it("meet a local change as a conflict: local_wins forgets the remote and the drain creates it again", function()
      local id = imported({ deletes = "delete", conflict = "local_wins" })
      sql(string.format("UPDATE contact SET city = 'Local' WHERE id = %d", id))
      remote_delete("c003")
      server.reset_log()
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local rows = conflicts()
      assert.equal(1, #rows)
      assert.equal("local", rows[1].winner)
      assert.equal(1, count("SELECT count(*) FROM contact WHERE id = ?1", id))
      local created = X.summary(r.stdout, true)
      assert.equal(1, created.created, r.stdout)
      local remote_id = count("SELECT remote_id FROM entsync_map WHERE local_id = ?1", id)
      assert.is_not_nil(remote_id)
      assert.are_not.equal("c003", remote_id)
      local remote = remote_docs()[remote_id]
      assert.is_not_nil(remote)
      assert.equal("Local", remote.address.city)
      assert.equal("Contact 3", remote.name)
      assert.is_true(remote_docs().c003._deleted)
      assert.same({}, failures())
    end)
  end)

  -- revisions --------------------------------------------------------------------------------

  describe("a document changed on both sides", function()
    -- imports 5 documents, then changes c003 at the remote (name, and its
    -- updated_at as given) and locally (city)
    local function both_changed(conflict, remote_updated_at)
      seed(docs(1, 5))
      job({ conflict = conflict })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local id = local_of("c003")
      local rev = remote_put("c003", { name = "Remote name", updated_at = remote_updated_at or "2026-06-01T00:00:00Z" })
      sql(string.format("UPDATE contact SET city = 'Local city' WHERE id = %d", id))
      server.reset_log()
      return id, rev
    end

    local function successful_writes()
      local out = {}
      for _, e in ipairs(writes()) do
        if e.status and e.status >= 200 and e.status < 300 then out[#out + 1] = e end
      end
      return out
    end

    it("remote_wins keeps the remote's version locally and sends nothing", function()
      local id, rev = both_changed("remote_wins")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local row = contacts().c003
      assert.equal("Remote name", row.name)
      assert.equal("City 3", row.city)
      assert.equal(id, row.id)
      assert.same({}, successful_writes())
      local remote = remote_docs().c003
      assert.equal(rev, remote._rev)
      assert.equal("Remote name", remote.name)
      assert.equal("City 3", remote.address.city)
      local rows = conflicts()
      assert.equal(1, #rows)
      assert.equal("remote", rows[1].winner)
      assert.same({}, failures())
    end)

    it("local_wins sends the local version on the new revision", function()
      local id, rev = both_changed("local_wins")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local row = contacts().c003
      assert.equal("Contact 3", row.name)
      assert.equal("Local city", row.city)
      assert.equal(id, row.id)
      local remote = remote_docs().c003
      assert.are_not.equal(rev, remote._rev)
      assert.equal("3-", remote._rev:sub(1, 2)) -- written on revision 2
      assert.equal("Contact 3", remote.name)
      assert.equal("Local city", remote.address.city)
      assert.equal("contact", remote.type) -- fields the mapping does not carry are kept
      local rows = conflicts()
      assert.equal(1, #rows)
      assert.equal("local", rows[1].winner)
      assert.same({}, failures())
      local summary = X.summary(r.stdout, true)
      assert.equal(1, summary.updated, r.stdout)
      -- the remote's copy of our write comes back unchanged
      r = run()
      assert.equal(0, r.code, r.stderr)
      summary = I.summary(r.stdout)
      assert.equal(0, summary.updated + summary.created, r.stdout)
      assert.equal(0, X.summary(r.stdout, true).updated, r.stdout)
    end)

    it("newest keeps the remote's version when its updated_at is later than the local change", function()
      local _, rev = both_changed("newest", "2099-01-01T00:00:00Z")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal("Remote name", contacts().c003.name)
      assert.equal("City 3", contacts().c003.city)
      assert.equal(rev, remote_docs().c003._rev)
      assert.same({}, successful_writes())
      assert.equal("remote", conflicts()[1].winner)
    end)

    it("newest sends the local version when the local change is later", function()
      local _, rev = both_changed("newest", "2001-01-01T00:00:00Z")
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal("Local city", contacts().c003.city)
      local remote = remote_docs().c003
      assert.are_not.equal(rev, remote._rev)
      assert.equal("Local city", remote.address.city)
      assert.equal("local", conflicts()[1].winner)
      assert.same({}, failures())
    end)
  end)

  describe("a write that meets a newer revision (409)", function()
    -- A provider wrapping docstore that, before it writes a document,
    -- changes it at the remote as another client would (once per id): the
    -- write then carries a stale revision and the store answers 409.
    -- batch = true keeps docstore's write_batch; false hides it, so the
    -- drain writes through update.
    local function racing_job(conflict, batch, raced_at)
      job({ provider = "racing", conflict = conflict })
      helpers.write(dir .. "/providers/racing.lua", string.format([[
local http = require "entsync.http"
local docstore = require "providers.docstore"
local M = { settings = docstore.settings }
local BASE = %q
local raced = {}
local function race(id)
  if raced[id] then return end
  raced[id] = true
  local current = http.get(BASE .. "/feed/contacts/" .. id):json()
  current.name = "Raced name"
  current.updated_at = %q
  local res = http.request({ method = "PUT", url = BASE .. "/feed/contacts/" .. id, json = current })
  assert(res.status == 201, "the race's PUT got " .. res.status)
end
function M.new(config, ctx)
  local inner = docstore.new(config, ctx)
  local P = setmetatable({}, { __index = inner })
  function P:update(resource, id, record, c)
    race(id)
    return inner:update(resource, id, record, c)
  end
  if %s then
    function P:write_batch(resource, items, c)
      for _, item in ipairs(items) do if item.id then race(item.id) end end
      return inner:write_batch(resource, items, c)
    end
  else
    P.write_batch = false
  end
  return P
end
return M
]], server.url, raced_at or "2001-01-01T00:00:00Z", tostring(batch)))
    end

    local function prepared(conflict, batch)
      seed(docs(1, 5))
      if conflict == "newest_remote" then
        racing_job("newest", batch, "2099-01-01T00:00:00Z")
      elseif conflict == "newest_local" then
        racing_job("newest", batch, "2001-01-01T00:00:00Z")
      else
        racing_job(conflict, batch)
      end
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local id = local_of("c003")
      sql(string.format("UPDATE contact SET city = 'Local city' WHERE id = %d", id))
      server.reset_log()
      return id
    end

    for _, batch in ipairs({ false, true }) do
      local how = batch and "through write_batch" or "through update"
      it("local_wins sends the local version again on the new revision, in the same run (" .. how .. ")", function()
        local id = prepared("local_wins", batch)
        local r = run()
        assert.equal(0, r.code, r.stderr)
        local summary = X.summary(r.stdout, true)
        assert.equal(1, summary.updated, r.stdout)
        assert.equal(1, summary.conflicts, r.stdout)
        assert.equal(0, summary.failed, r.stdout)
        local rows = conflicts()
        assert.equal(1, #rows)
        assert.equal("export", rows[1].direction)
        assert.equal("local", rows[1].winner)
        assert.same({}, failures())
        local remote = remote_docs().c003
        assert.equal("Local city", remote.address.city)
        assert.equal("Contact 3", remote.name)
        assert.equal("3-", remote._rev:sub(1, 2))
        assert.equal("Local city", contacts().c003.city)
        assert.equal(id, contacts().c003.id)
        -- the race's PUT, the stale write, and the write sent again on the
        -- new revision
        local sent = {}
        for _, e in ipairs(writes()) do sent[#sent + 1] = string.format("%s %s %d", e.method, e.path, e.status or 0) end
        if batch then
          assert.same({ "PUT /feed/contacts/c003 201", "POST /feed/contacts/_bulk_docs 201",
            "PUT /feed/contacts/c003 201" }, sent)
        else
          assert.same({ "PUT /feed/contacts/c003 201", "PUT /feed/contacts/c003 409",
            "PUT /feed/contacts/c003 201" }, sent)
        end
      end)

      it("remote_wins keeps the remote's version, in the same run (" .. how .. ")", function()
        local id = prepared("remote_wins", batch)
        local r = run()
        assert.equal(0, r.code, r.stderr)
        local summary = X.summary(r.stdout, true)
        assert.equal(1, summary.conflicts, r.stdout)
        assert.equal(0, summary.failed, r.stdout)
        local rows = conflicts()
        assert.equal(1, #rows)
        assert.equal("remote", rows[1].winner)
        assert.same({}, failures())
        local remote = remote_docs().c003
        assert.equal("Raced name", remote.name)
        assert.equal("City 3", remote.address.city)
        assert.equal("2-", remote._rev:sub(1, 2))
        assert.equal("Raced name", contacts().c003.name)
        assert.equal("City 3", contacts().c003.city)
        assert.equal(id, contacts().c003.id)
        local sent = {}
        for _, e in ipairs(writes()) do sent[#sent + 1] = string.format("%s %s %d", e.method, e.path, e.status or 0) end
        assert.same({ "PUT /feed/contacts/c003 201",
          batch and "POST /feed/contacts/_bulk_docs 201" or "PUT /feed/contacts/c003 409" }, sent)
        -- settled: the next run sends nothing and finds nothing changed
        sends_nothing(run)
      end)
    end

    it("newest settles it by updated_at, in the same run: the remote's later change wins", function()
      prepared("newest_remote", false)
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, X.summary(r.stdout, true).conflicts, r.stdout)
      assert.equal("remote", conflicts()[1].winner)
      assert.equal("Raced name", remote_docs().c003.name)
      assert.equal("City 3", remote_docs().c003.address.city)
      assert.equal("Raced name", contacts().c003.name)
      assert.same({}, failures())
    end)

    it("newest settles it by updated_at, in the same run: the later local change wins", function()
      prepared("newest_local", true)
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, X.summary(r.stdout, true).conflicts, r.stdout)
      assert.equal("local", conflicts()[1].winner)
      assert.equal("Contact 3", remote_docs().c003.name)
      assert.equal("Local city", remote_docs().c003.address.city)
      assert.same({}, failures())
    end)
  end)

  -- batch reads ------------------------------------------------------------------------------

  describe("a drain through write_batch and get_batch", function()
    -- The job over docstore (get_batch reads through _all_docs) or over
    -- "plain", docstore without get_batch (each copy read with a GET);
    -- export.batch = 5. import = false leaves the drain alone to meet what
    -- changed at the remote.
    local function batch_job(get_batch, conflict, import)
      helpers.write(dir .. "/providers/plain.lua", [[
local docstore = require "providers.docstore"
local M = { settings = docstore.settings }
function M.new(config, ctx)
  return setmetatable({ get_batch = false }, { __index = docstore.new(config, ctx) })
end
return M
]])
      job({ provider = get_batch and "docstore" or "plain", import = import,
        export = string.format('{ on_change = true, conflict = %q, deletes = "delete", batch = 5 }',
          conflict or "remote_wins") })
    end

    -- A new store in the same folder: the next run starts from nothing.
    local function fresh_store()
      for _, name in ipairs({ "entsync.db", "entsync.db-wal", "entsync.db-shm" }) do os.remove(dir .. "/" .. name) end
    end

    -- Imports docs 1..n, then changes their cities locally (one UPDATE):
    -- n changes queued. Returns the next run's result.
    local function drained(get_batch, n)
      fresh_store()
      seed(docs(1, n))
      batch_job(get_batch)
      local r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(n, I.summary(r.stdout).created, r.stdout)
      sql("UPDATE contact SET city = city || ' changed'")
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      return r
    end

    -- What the store and the remote hold after a drain (the remote's
    -- revisions aside, which the store's hash of each body makes).
    local function outcome()
      local remote = {}
      for id, d in pairs(remote_docs()) do
        d._rev = d._rev:match("^%d+%-")
        remote[id] = d
      end
      return { remote = remote, map = helpers.query(db(), [[SELECT local_id, remote_id, hash FROM entsync_map
        WHERE sync = 'contacts' ORDER BY local_id]]), rows = helpers.query(db(), "SELECT * FROM contact ORDER BY id"),
        failures = failures(), conflicts = #conflicts() }
    end

    it("reads the copies of 12 changed records with ceil(12 / 5) _all_docs requests and no GET of each, "
      .. "and stores what reading each with get stores", function()
      local r = drained(true, 12)
      local summary = X.summary(r.stdout, true)
      assert.equal(12, summary.updated, r.stdout)
      assert.equal(0, summary.failed + (summary.conflicts or 0), r.stdout)
      local batches, gets = reads()
      assert.same({}, gets)
      assert.equal(3, #batches)
      local keys = {}
      for _, batch in ipairs(batches) do
        assert.is_true(#batch <= 5, cjson.encode(batch))
        for _, key in ipairs(batch) do keys[#keys + 1] = key end
      end
      table.sort(keys)
      local want = {}
      for i = 1, 12 do want[i] = string.format("c%03d", i) end
      assert.same(want, keys)
      local bulks = 0
      for _, e in ipairs(writes()) do
        assert.equal("/feed/contacts/_bulk_docs", e.path)
        bulks = bulks + 1
      end
      assert.equal(3, bulks)
      local remote = remote_docs()
      for i = 1, 12 do
        local d = remote[string.format("c%03d", i)]
        assert.equal("City " .. i .. " changed", d.address.city)
        assert.equal("Contact " .. i, d.name)
        assert.equal("contact", d.type) -- merged over the copy read: kept
        assert.equal("2-", d._rev:sub(1, 2))
      end
      local with_batch = outcome()

      r = drained(false, 12)
      assert.equal(12, X.summary(r.stdout, true).updated, r.stdout)
      batches, gets = reads()
      assert.same({}, batches)
      assert.equal(12, #gets)
      assert.same(outcome(), with_batch)
    end)

    for _, policy in ipairs({ "remote_wins", "local_wins" }) do
      it("meets a record changed at the remote after the last import as a conflict that " .. policy
        .. " settles, read through _all_docs", function()
        seed(docs(1, 5))
        batch_job(true, policy)
        local r = run()
        assert.equal(0, r.code, r.stderr)
        batch_job(true, policy, "false")
        local rev = remote_put("c003", { name = "Remote name" })
        sql(string.format("UPDATE contact SET city = 'Local ' || id WHERE id IN (%d, %d)", local_of("c003"),
          local_of("c004")))
        server.reset_log()
        r = run()
        assert.equal(0, r.code, r.stderr)
        local summary = X.summary(r.stdout, true)
        assert.equal(1, summary.conflicts, r.stdout)
        assert.equal(0, summary.failed, r.stdout)
        local batches, gets = reads()
        assert.same({}, gets)
        assert.equal(1, #batches)
        table.sort(batches[1])
        assert.same({ "c003", "c004" }, batches[1])
        local rows = conflicts()
        assert.equal(1, #rows)
        assert.equal("export", rows[1].direction)
        assert.equal(policy, rows[1].policy)
        assert.same({}, failures())
        local remote, c003 = remote_docs(), contacts().c003
        assert.equal("Local " .. local_of("c004"), remote.c004.address.city)
        if policy == "remote_wins" then
          assert.equal("remote", rows[1].winner)
          assert.equal(rev, remote.c003._rev)
          assert.equal("Remote name", remote.c003.name)
          assert.equal("City 3", remote.c003.address.city)
          assert.equal("Remote name", c003.name)
          assert.equal("City 3", c003.city)
          assert.equal(1, #writes()) -- c004's bulk only
        else
          assert.equal("local", rows[1].winner)
          assert.equal("3-", remote.c003._rev:sub(1, 2)) -- written on the revision read
          assert.equal("Contact 3", remote.c003.name)
          assert.equal("Local " .. c003.id, remote.c003.address.city)
          assert.equal("Local " .. c003.id, c003.city)
        end
        -- settled: the next run sends nothing
        sends_nothing(run)
      end)
    end

    it("fails a record deleted at the remote as reading it with get does", function()
      local seen = {}
      for _, get_batch in ipairs({ true, false }) do
        fresh_store()
        seed(docs(1, 5))
        batch_job(get_batch)
        local r = run()
        assert.equal(0, r.code, r.stderr)
        batch_job(get_batch, "remote_wins", "false")
        remote_delete("c003")
        local id = local_of("c003")
        sql(string.format("UPDATE contact SET city = 'Local' WHERE id IN (%d, %d)", id, local_of("c004")))
        server.reset_log()
        r = run()
        assert.equal(1, r.code, r.stdout .. r.stderr)
        local summary = X.summary(r.stdout, true)
        assert.equal(1, summary.failed, r.stdout)
        assert.equal(1, summary.updated, r.stdout)
        local batches, gets = reads()
        if get_batch then
          assert.same({}, gets)
          assert.equal(1, #batches)
        else
          assert.same({}, batches)
          assert.equal(2, #gets)
        end
        local rows = failures()
        assert.equal(1, #rows)
        assert.equal(tostring(id), rows[1].key)
        assert.matches("remote c003 is gone", rows[1].error, 1, true)
        assert.equal("Local", remote_docs().c004.address.city)
        assert.is_true(remote_docs().c003._deleted)
        seen[#seen + 1] = { error = rows[1].error, attempts = rows[1].attempts, remote_id = rows[1].remote_id,
          local_row = contacts().c003.city }
      end
      assert.same(seen[2], seen[1])
    end)
  end)

  -- creates ---------------------------------------------------------------------------------

  describe("a contact created locally", function()
    it("is created at the remote as a document of the type the provider reads, so its remote changes come back", function()
      seed(docs(1, 3))
      job({ type = "contact", conflict = "remote_wins" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      sql("INSERT INTO contact (name, email, city) VALUES ('New one', 'new@example.com', 'Newtown')")
      local id = count("SELECT id FROM contact WHERE name = 'New one'")
      r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, X.summary(r.stdout, true).created, r.stdout)
      local remote_id = count("SELECT remote_id FROM entsync_map WHERE local_id = ?1", id)
      assert.is_not_nil(remote_id)
      local remote = remote_docs()[remote_id]
      assert.equal("Newtown", remote.address.city)
      assert.equal("contact", remote.type)
      -- changed at the remote: the feed, filtered by type, brings it back
      remote_put(remote_id, { name = "Renamed at the remote" })
      r = run()
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, I.summary(r.stdout).updated, r.stdout)
      assert.equal("Renamed at the remote", count("SELECT name FROM contact WHERE id = ?1", id))
    end)
  end)

  -- batch writes -----------------------------------------------------------------------------

  describe("a batch write with one item refused", function()
    it("updates the others, stores the refused one as an export failure, and sends it once allowed", function()
      seed(docs(1, 5))
      job({ conflict = "remote_wins" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      reject({ "c002" })
      sql([[UPDATE contact SET city = 'New ' || id
        WHERE id IN (SELECT local_id FROM entsync_map WHERE remote_id IN ('c001', 'c002', 'c003'))]])
      local refused = local_of("c002")
      server.reset_log()
      r = run()
      assert.equal(1, r.code, r.stderr)
      -- one POST to _bulk_docs, no PUT
      local bulk, puts = 0, 0
      for _, e in ipairs(writes()) do
        if e.method == "POST" and e.path == "/feed/contacts/_bulk_docs" then
          bulk = bulk + 1
          assert.equal(3, #e.record.docs)
        end
        if e.method == "PUT" then puts = puts + 1 end
      end
      assert.equal(1, bulk)
      assert.equal(0, puts)
      local summary = X.summary(r.stdout, true)
      assert.equal(2, summary.updated, r.stdout)
      assert.equal(1, summary.failed, r.stdout)
      local remote = remote_docs()
      assert.equal("New " .. local_of("c001"), remote.c001.address.city)
      assert.equal("New " .. local_of("c003"), remote.c003.address.city)
      assert.equal("City 2", remote.c002.address.city)
      local failed = failures()
      assert.equal(1, #failed)
      assert.equal("export", failed[1].direction)
      assert.equal(tostring(refused), failed[1].key)
      assert.equal(refused, failed[1].local_id)
      assert.matches("rejected by validation", failed[1].error, 1, true)

      -- allowed again: retried now, it goes out
      reject({})
      server.reset_log()
      r = run("failures", "contacts", "retry")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal("New " .. refused, remote_docs().c002.address.city)
      assert.same({}, failures())
      -- and the remote's copies come back unchanged
      r = run()
      assert.equal(0, r.code, r.stderr)
      summary = I.summary(r.stdout)
      assert.equal(0, summary.updated + summary.created, r.stdout)
      assert.equal(0, X.summary(r.stdout, true).updated, r.stdout)
    end)

    it("carries local deletes too: one POST to _bulk_docs, no DELETE", function()
      seed(docs(1, 5))
      job({ conflict = "remote_wins" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      sql([[DELETE FROM contact
        WHERE id IN (SELECT local_id FROM entsync_map WHERE remote_id IN ('c001', 'c002'))]])
      sql("UPDATE contact SET city = 'Moved' WHERE id = " .. local_of("c003"))
      server.reset_log()
      r = run()
      assert.equal(0, r.code, r.stderr)
      local summary = X.summary(r.stdout, true)
      assert.equal(2, summary.deleted, r.stdout)
      assert.equal(1, summary.updated, r.stdout)
      local remote = remote_docs()
      assert.is_true(remote.c001._deleted)
      assert.is_true(remote.c002._deleted)
      assert.equal("Moved", remote.c003.address.city)
      local sent = {}
      for _, e in ipairs(writes()) do sent[#sent + 1] = e.method .. " " .. e.path end
      assert.same({ "POST /feed/contacts/_bulk_docs" }, sent)
      assert.equal(0, count("SELECT count(*) FROM entsync_map WHERE remote_id IN ('c001', 'c002')"))
    end)
  end)

  describe("import SYNC ID and refresh of a document deleted at the remote", function()
    it("apply the deletes policy", function()
      seed(docs(1, 5))
      job({ deletes = "delete" })
      local r = run()
      assert.equal(0, r.code, r.stderr)
      local two, three = local_of("c002"), local_of("c003")
      remote_delete("c002")
      remote_delete("c003")
      r = run("import", "contacts", "c002")
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, count("SELECT count(*) FROM contact WHERE id = ?1", two))
      r = run("refresh", "contacts", tostring(three))
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(0, count("SELECT count(*) FROM contact WHERE id = ?1", three))
      assert.equal(3, count("SELECT count(*) FROM contact"))
      assert.same({}, failures())
    end)
  end)
end)
