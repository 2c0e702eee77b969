-- The http_json provider end to end: real jobs run by bin/entsync-run
-- against the fixture server (spec/support/fixture_server.py) on 127.0.0.1:
-- every pagination style, the records selector, incremental runs with the
-- since filter, import of one id, every auth kind, faults during a run,
-- several syncs side by side, TLS settings; and the provider's verbs
-- called directly.

local core = require "entsync.core"
local http = require "entsync.http"
local fixture = require "fixture"
local helpers = require "helpers"
local I = require "import_support"
local S = require "http_support"

local CONTACTS = S.records(250)          -- ids 1..250
local OTHERS = S.records(120, 1001)      -- ids 1001..1120
local LAST_MARK = CONTACTS[250].updated_at

local function message_of(err)
  return tostring(type(err) == "table" and err.message or err)
end

describe("http_json", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = CONTACTS, others = OTHERS, items = S.records(3, 100) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  -- Writes a one-sync job on resource with the provider config and runs it.
  local function job(config, sync)
    sync = sync or {}
    return S.job(dir, server.url, config, { sync })
  end

  local function assert_all_once(sync, entity, records)
    local stored, n = S.stored(dir, sync or "contacts", entity or "contact")
    records = records or CONTACTS
    assert.equal(#records, n)
    assert.same(S.expected(records), stored)
    assert.equal(#records, S.count(dir, entity or "contact"))
  end

  describe("pagination styles import every record exactly once", function()
    local styles = {
      { style = "page", records = "data", pages = "page" },
      { style = "offset", records = "results.items", pages = "offset" },
      { style = "cursor", records = "data", pages = "cursor" },
      { style = "link", records = nil, pages = "page" },       -- a top-level array
      { style = "next", records = "items", pages = "page" },
    }
    for _, case in ipairs(styles) do
      it(case.style .. (case.records and (" with records = \"" .. case.records .. "\"") or " with a top-level array"),
        function()
          job({ page = { style = case.style, size = 100 }, records = case.records },
            { resource = case.style .. "/contacts" })
          local r = S.run(dir)
          assert.equal(0, r.code, r.stderr)
          local summary = I.summary(r.stdout)
          assert.equal(250, summary.created, r.stdout)
          assert_all_once()

          local gets = S.entries(server.log(), { method = "GET", path = "/" .. case.style .. "/contacts" })
          local queries = {}
          for i, e in ipairs(gets) do queries[i] = S.query(e.query) end
          if case.style == "page" then
            -- numbered pages are fetched ahead (a window of 4): 1..3 hold data
            local seen = {}
            for _, q in ipairs(queries) do
              assert.equal("100", q.per_page)
              seen[tonumber(q.page)] = (seen[tonumber(q.page)] or 0) + 1
            end
            assert.same({ 1, 1, 1 }, { seen[1], seen[2], seen[3] })
            for page, n in pairs(seen) do assert.equal(1, n, "page " .. page .. " fetched " .. n .. " times") end
          elseif case.style == "offset" then
            local seen = {}
            for _, q in ipairs(queries) do
              assert.equal("100", q.limit)
              seen[tonumber(q.offset)] = (seen[tonumber(q.offset)] or 0) + 1
            end
            assert.same({ 1, 1, 1 }, { seen[0], seen[100], seen[200] })
            for offset, n in pairs(seen) do assert.equal(1, n, "offset " .. offset .. " fetched " .. n .. " times") end
          elseif case.style == "cursor" then
            assert.equal(3, #gets)
            assert.is_nil(queries[1].cursor)
            assert.is_string(queries[2].cursor)
            assert.is_string(queries[3].cursor)
            for _, q in ipairs(queries) do assert.equal("100", q.limit) end
          else
            -- link and next follow the server's absolute next URLs
            assert.equal(3, #gets)
            for i, q in ipairs(queries) do
              assert.equal(tostring(i), q.page)
              assert.equal("100", q.per_page)
            end
          end
        end)
    end

    it("page style reads \"data\" when records is not set, and a total that fills whole pages", function()
      server.set_data({ contacts = S.records(200), others = OTHERS })
      job({ page = { style = "page", size = 100 } })
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once("contacts", "contact", S.records(200))
    end)

    -- A listing prepares its first numbered request and sends each page a
    -- copy with its own number: every query is the whole one, keys sorted
    -- and encoded, auth and since filter included, whatever the number.
    for _, case in ipairs({ { style = "page", key = "page", size = "per_page", first = 1, step = 1 },
      { style = "offset", key = "offset", size = "limit", first = 0, step = 100, records = "results.items" } }) do
      it("every numbered " .. case.style .. " request sends the whole query with its own number", function()
        server.auth({ api_key = { query = "api key", value = "K&1=é" } })
        job({ page = { style = case.style, size = 100 }, records = case.records, since = { param = "updated_from" },
          auth = { api_key = { query = "api key", value = "K&1=é" } } },
          { resource = case.style .. "/contacts", import = { mode = "incremental", changed = "updated_at" } })
        for run = 1, 2 do
          server.reset_log()
          local r = S.run(dir)
          assert.equal(0, r.code, r.stderr)
          local gets = S.entries(server.log(), { method = "GET", path = "/" .. case.style .. "/contacts" })
          assert.is_true(#gets >= (run == 1 and 3 or 1), #gets .. " requests")
          local seen = {}
          for _, e in ipairs(gets) do
            assert.equal(200, e.status)
            local n = assert(tonumber(S.query(e.query)[case.key]), e.query)
            assert.is_nil(seen[n], "asked twice: " .. e.query)
            seen[n] = true
            local since = run == 2 and ("&updated_from=" .. http.encode(LAST_MARK)) or ""
            assert.equal("api%20key=K%261%3D%C3%A9&" .. (case.style == "page"
              and ("page=" .. n .. "&per_page=100") or ("limit=100&offset=" .. n)) .. since, e.query)
          end
          for n = case.first, case.first + (run == 1 and 2 or 0) * case.step, case.step do
            assert.is_true(seen[n], case.key .. " " .. n .. " was not asked for")
          end
        end
        assert_all_once()
      end)
    end

    it("custom parameter names for page and offset", function()
      job({ page = { style = "offset", size = 100, offset_param = "offset", limit_param = "limit" },
        records = "results.items" }, { resource = "offset/contacts" })
      assert.equal(0, S.run(dir).code)
      assert_all_once()
    end)

    it("a records selector that finds nothing fails the run naming it", function()
      job({ page = { style = "offset", size = 100 }, records = "results.rows" }, { resource = "offset/contacts" })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches('GET ' .. server.url .. '/offset/contacts?limit=100&offset=0: no list of records at "results.rows"',
        r.stderr, 1, true)
      assert.equal(0, S.count(dir, "contact"))
    end)
  end)

  describe("incremental runs with the since filter", function()
    local function incremental_job(style, records)
      job({ page = { style = style, size = 100 }, records = records, since = { param = "updated_from" } },
        { resource = style .. "/contacts", import = { mode = "incremental", changed = "updated_at" } })
    end

    local function change_three()
      for _, id in ipairs({ 7, 120, 249 }) do
        local record = {}
        for k, v in pairs(CONTACTS[id]) do record[k] = v end
        record.updated_at = nil
        record.name = "Changed " .. id
        local res = server.request("PUT", "/api/contacts/" .. id, { body = record })
        assert.equal(200, res.status)
      end
    end

    for _, case in ipairs({ { "page", "data" }, { "cursor", "data" } }) do
      it("a second run imports only the 3 changed records (" .. case[1] .. " style)", function()
        incremental_job(case[1], case[2])
        local r = S.run(dir)
        assert.equal(0, r.code, r.stderr)
        assert.equal(250, I.summary(r.stdout).created)
        -- the first run sent no filter: there was no cursor yet
        for _, e in ipairs(server.log()) do assert.is_nil(S.query(e.query).updated_from) end

        change_three()
        server.reset_log()
        r = S.run(dir)
        assert.equal(0, r.code, r.stderr)
        local summary = I.summary(r.stdout)
        assert.equal(0, summary.created, r.stdout)
        assert.equal(3, summary.updated, r.stdout)
        assert.equal(0, summary.unchanged, r.stdout)
        -- the record at the cursor's mark comes again (updated_from is
        -- inclusive) and is dropped as already imported
        assert.equal(1, summary.before_cursor, r.stdout)

        local gets = S.entries(server.log(), { method = "GET", under = "/" .. case[1] .. "/contacts" })
        assert.is_true(#gets >= 1)
        for _, e in ipairs(gets) do
          assert.equal(LAST_MARK, (S.query(e.query).updated_from:gsub("%%3A", ":")), e.query)
        end
        local expected = {}
        for i, rec in ipairs(CONTACTS) do
          expected[i] = rec
          if i == 7 or i == 120 or i == 249 then
            expected[i] = { id = rec.id, email = rec.email, name = "Changed " .. i, age = rec.age }
          end
        end
        assert_all_once("contacts", "contact", expected)

        -- nothing changed since: a third run writes nothing
        r = S.run(dir)
        assert.equal(0, r.code, r.stderr)
        summary = I.summary(r.stdout)
        assert.same({ 0, 0 }, { summary.created, summary.updated })
      end)
    end

    it("set_data with 3 changed marks and one new record", function()
      incremental_job("page", "data")
      assert.equal(0, S.run(dir).code)
      local data = {}
      for i, rec in ipairs(CONTACTS) do data[i] = rec end
      for _, id in ipairs({ 3, 4, 5 }) do
        data[id] = { id = id, email = "new" .. id .. "@x", name = CONTACTS[id].name, age = CONTACTS[id].age,
          updated_at = "2026-02-01T00:00:0" .. id .. "Z" }
      end
      data[#data + 1] = S.records(1, 251)[1]
      data[#data].updated_at = "2026-02-02T00:00:00Z"
      server.set_data({ contacts = data, others = OTHERS })
      server.reset_log()
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      local summary = I.summary(r.stdout)
      assert.same({ 1, 3 }, { summary.created, summary.updated }, r.stdout)
      local stored = S.stored(dir)
      assert.equal("new4@x|Contact 4|24", stored[4])
      assert.is_string(stored[251])
      local gets = S.entries(server.log(), { method = "GET" })
      assert.matches("updated_from=", gets[1].query, 1, true)
    end)
  end)

  describe("import SYNC ID", function()
    it("fetches /<style>/<resource>/<id> with get", function()
      job({ page = { style = "page", size = 100 } })
      local r = S.run(dir, "import", "contacts", "42")
      assert.equal(0, r.code, r.stderr)
      assert.equal(1, I.summary(r.stdout).created)
      local log = server.log()
      assert.equal(1, #log)
      assert.same({ "GET", "/page/contacts/42" }, { log[1].method, log[1].path })
      local stored, n = S.stored(dir)
      assert.equal(1, n)
      assert.equal(S.expected({ CONTACTS[42] })[42], stored[42])
    end)

    it("an id the remote does not have is a failed entity", function()
      job({ page = { style = "cursor", size = 100 } }, { resource = "cursor/contacts" })
      local r = S.run(dir, "import", "contacts", "9999")
      assert.equal(1, r.code, r.stderr .. r.stdout)
      assert.equal(1, I.summary(r.stdout).failed)
      assert.equal("/cursor/contacts/9999", server.log()[1].path)
    end)
  end)

  describe("auth", function()
    local kinds = {
      { name = "bearer", server = { bearer = "SECRET-TOKEN-1" }, provider = { bearer = "SECRET-TOKEN-1" },
        check = function(e) assert.equal("Bearer SECRET-TOKEN-1", e.headers["Authorization"]) end },
      { name = "basic", server = { basic = { "spec-user", "SECRET-PASS" } },
        provider = { basic = { "spec-user", "SECRET-PASS" } },
        check = function(e) assert.equal("Basic c3BlYy11c2VyOlNFQ1JFVC1QQVNT", e.headers["Authorization"]) end },
      { name = "api_key header", server = { api_key = { header = "X-Api-Key", value = "SECRET-KEY-2" } },
        provider = { api_key = { header = "X-Api-Key", value = "SECRET-KEY-2" } },
        check = function(e) assert.equal("SECRET-KEY-2", e.headers["X-Api-Key"]) end },
      { name = "api_key query", server = { api_key = { query = "api_key", value = "SECRET-KEY-3" } },
        provider = { api_key = { query = "api_key", value = "SECRET-KEY-3" } },
        check = function(e) assert.equal("SECRET-KEY-3", S.query(e.query).api_key) end },
    }
    for _, kind in ipairs(kinds) do
      it(kind.name .. " end to end; the secret never reaches --verbose output", function()
        server.auth(kind.server)
        job({ page = { style = "page", size = 100 }, auth = kind.provider, concurrency = 2 })
        local r = S.run(dir, "--verbose")
        assert.equal(0, r.code, r.stderr)
        assert_all_once()
        local gets = S.entries(server.log(), { method = "GET" })
        assert.is_true(#gets >= 3)
        for _, e in ipairs(gets) do
          assert.equal(200, e.status)
          kind.check(e)
        end
        assert.matches("debug: GET", r.stderr, 1, true)
        assert.not_matches("SECRET", r.stderr)
        assert.not_matches("SECRET", r.stdout)
      end)
    end

    it("a wrong credential fails the run with status 401, without the secret", function()
      server.auth({ api_key = { query = "api_key", value = "right" } })
      job({ page = { style = "link", size = 100 }, auth = { api_key = { query = "api_key", value = "SECRET-WRONG" } } },
        { resource = "link/contacts" })
      local r = S.run(dir, "--verbose")
      assert.is_true(r.code ~= 0)
      assert.matches("GET " .. server.url .. "/link/contacts?api_key=[redacted]&page=1&per_page=100: status 401",
        r.stderr, 1, true)
      assert.not_matches("SECRET", r.stderr)
      assert.equal(1, #server.log())
    end)

    local OAUTH = { oauth2 = { client_id = "spec-client", client_secret = "SECRET-CLIENT" } }

    it("oauth2 client credentials: one token request serves every page", function()
      server.auth(OAUTH)
      job({ page = { style = "page", size = 50 }, auth = { oauth2 = { client_id = "spec-client",
        client_secret = "SECRET-CLIENT", token_url = "/oauth/token" } } })
      local r = S.run(dir, "--verbose")
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      local log = server.log()
      local tokens = S.entries(log, { path = "/oauth/token" })
      assert.equal(1, #tokens)
      assert.equal("POST", tokens[1].method)
      assert.equal("client_credentials", S.query(tokens[1].body).grant_type)
      local gets = S.entries(log, { method = "GET" })
      assert.is_true(#gets >= 5) -- 250 records, 50 a page: the total says there are five
      local bearer = gets[1].headers["Authorization"]
      assert.matches("^Bearer .+", bearer)
      for _, e in ipairs(gets) do
        assert.equal(bearer, e.headers["Authorization"])
        assert.equal(200, e.status)
        assert.is_true(e.start >= tokens[1]["end"])
      end
      assert.not_matches("SECRET", r.stderr)
      assert.not_matches(bearer:sub(8), r.stderr, 1, true)
    end)

    it("oauth2: a 401 after server.revoke() fetches a new token and the run completes", function()
      server.auth(OAUTH)
      server.latency(150)
      job({ page = { style = "cursor", size = 50 }, auth = OAUTH }, { resource = "cursor/contacts" })
      local child = S.spawn(dir, 20)
      -- revoke once the run has fetched two pages with its first token
      local seen = helpers.wait_for(function()
        return #S.entries(server.log(), { method = "GET" }) >= 2 or nil
      end, 10)
      assert.is_truthy(seen)
      server.revoke()
      local r = child.wait()
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      local log = server.log()
      local tokens = S.entries(log, { path = "/oauth/token" })
      assert.equal(2, #tokens)
      local gets = S.entries(log, { method = "GET" })
      local statuses, first, second = {}, gets[1].headers["Authorization"], nil
      for _, e in ipairs(gets) do
        statuses[#statuses + 1] = e.status
        if e.headers["Authorization"] ~= first then second = second or e.headers["Authorization"] end
      end
      assert.equal(1, #(function()
        local out = {}
        for _, s in ipairs(statuses) do if s == 401 then out[#out + 1] = s end end
        return out
      end)())
      assert.is_string(second)
      -- the page that got the 401 was asked again with the new token
      for i, e in ipairs(gets) do
        if e.status == 401 then
          assert.equal(e.query, gets[i + 1].query)
          assert.equal(second, gets[i + 1].headers["Authorization"])
          assert.equal(200, gets[i + 1].status)
        end
      end
    end)

    it("oauth2: pages in flight together when the token is revoked share one new token", function()
      server.auth(OAUTH)
      server.latency(150)
      job({ page = { style = "page", size = 25 }, concurrency = 4, auth = OAUTH })
      local child = S.spawn(dir, 20)
      local seen = helpers.wait_for(function()
        return #S.entries(server.log(), { method = "GET" }) >= 6 or nil
      end, 10)
      assert.is_truthy(seen)
      server.revoke()
      local r = child.wait()
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      local log = server.log()
      local refused = 0
      for _, e in ipairs(S.entries(log, { method = "GET" })) do
        if e.status == 401 then refused = refused + 1 end
      end
      assert.is_true(refused >= 2, refused .. " requests got a 401")
      -- one token at the start and one after the revocation, however many
      -- requests the revocation refused at once
      assert.equal(2, #S.entries(log, { path = "/oauth/token" }),
        refused .. " requests refused together each fetched a new token")
    end)

    it("oauth2: a rejected client fails the run naming the token request", function()
      server.auth(OAUTH)
      job({ page = { style = "page", size = 100 },
        auth = { oauth2 = { client_id = "spec-client", client_secret = "SECRET-WRONG" } } })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches("POST " .. server.url .. "/oauth/token: the token request failed with status 401", r.stderr, 1, true)
      assert.not_matches("SECRET", r.stderr)
    end)
  end)

  describe("faults during a run", function()
    it("500s and a 429 are recovered: the run succeeds with every record once", function()
      server.faults({
        { path = "/page/contacts", kind = "status", status = 500, count = 2 },
        { path = "/page/contacts", kind = "retry_after", seconds = 1 },
        { path = "/page/contacts", kind = "status", status = 503 },
      })
      job({ page = { style = "page", size = 100 } })
      local elapsed, r = S.timed(S.run, dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      local statuses = {}
      for _, e in ipairs(server.log()) do statuses[e.status] = (statuses[e.status] or 0) + 1 end
      assert.same({ 2, 1, 1 }, { statuses[500], statuses[429], statuses[503] })
      assert.is_true(elapsed >= 1, "the 429's Retry-After of 1s took " .. elapsed .. "s")
    end)

    it("a dropped connection and a truncated page are retried", function()
      server.faults({
        { path = "/cursor/contacts", kind = "truncate", count = 1 },
        { path = "/cursor/contacts", kind = "drop", count = 1 },
      })
      job({ page = { style = "cursor", size = 100 } }, { resource = "cursor/contacts" })
      local r = S.run(dir, "--verbose")
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      assert.matches("warn: GET " .. server.url .. "/cursor/contacts?limit=100: Transferred a partial file; retrying",
        r.stderr, 1, true)
      assert.matches("warn: GET " .. server.url .. "/cursor/contacts?limit=100: Server returned nothing", r.stderr, 1, true)
      local log = server.log()
      assert.same({ "truncate", "drop" }, { log[1].fault, log[2].fault })
    end)

    -- The first request gets a harmless fault (latency 0), the rest the
    -- given one: so page 1 is stored before page 2 fails.
    local function after_first_page(fault)
      local first = { path = "/page/contacts", kind = "latency", ms = 0, count = 1 }
      fault.path = "/page/contacts"
      server.faults({ first, fault })
    end

    local function sequential_job()
      job({ page = { style = "page", size = 100 }, concurrency = 1, attempts = 2 }, { import = { batch = 100 } })
    end

    it("a persistent 500 fails the run naming method, URL and status; a rerun completes", function()
      sequential_job()
      after_first_page({ kind = "status", status = 500, count = 1000, body = { error = "database on fire" } })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches("GET " .. server.url .. "/page/contacts?page=2&per_page=100: status 500 after 2 attempts",
        r.stderr, 1, true)
      assert.matches("database on fire", r.stderr, 1, true)
      -- page 1 was committed before page 2 failed
      assert_all_once("contacts", "contact", { table.unpack(CONTACTS, 1, 100) })
      local run = helpers.query(dir .. "/entsync.db", "SELECT status, error FROM entsync_runs ORDER BY id DESC LIMIT 1")[1]
      assert.equal("error", run.status)
      assert.matches("status 500", run.error, 1, true)

      server.faults({})
      r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
    end)

    it("a failed run loses nothing already stored", function()
      sequential_job()
      assert.equal(0, S.run(dir).code)
      -- the server's records change, then page 2 keeps failing
      local data = {}
      for i, rec in ipairs(CONTACTS) do data[i] = { id = rec.id, email = rec.email, name = "Renamed " .. i, age = rec.age } end
      server.set_data({ contacts = data, others = OTHERS })
      after_first_page({ kind = "status", status = 500, count = 1000 })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      local stored, n = S.stored(dir)
      assert.equal(250, n)
      assert.equal("c1@example.com|Renamed 1|21", stored[1])       -- page 1 committed
      assert.equal(S.expected({ CONTACTS[101] })[101], stored[101]) -- page 2 untouched
      assert.equal(250, S.count(dir, "contact"))

      server.faults({})
      r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      -- the full pass resumes after the 100 records it had stored
      assert.equal(150, I.summary(r.stdout).updated, r.stdout)
      assert_all_once("contacts", "contact", (function()
        local out = {}
        for i, rec in ipairs(data) do out[i] = rec end
        return out
      end)())
    end)

    it("a malformed JSON page fails the run naming method and URL; a rerun completes", function()
      sequential_job()
      after_first_page({ kind = "malformed", count = 1 })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches("GET " .. server.url .. "/page/contacts?page=2&per_page=100: the response is not JSON", r.stderr,
        1, true)
      assert_all_once("contacts", "contact", { table.unpack(CONTACTS, 1, 100) })
      r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
    end)

    it("a timeout fails the run naming the request", function()
      server.faults({ { path = "/cursor/contacts", kind = "latency", ms = 2000, count = 10 } })
      job({ page = { style = "cursor", size = 100 }, timeout = 0.3, attempts = 1 }, { resource = "cursor/contacts" })
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches("GET " .. server.url .. "/cursor/contacts?limit=100: ", r.stderr, 1, true)
      assert.matches("timeout", r.stderr:lower(), 1, true)
    end)
  end)

  describe("several syncs in one run", function()
    it("independent syncs have requests in flight together at the server", function()
      server.latency(200)
      S.job(dir, server.url, { page = { style = "cursor", size = 100 } }, {
        { name = "contacts", resource = "cursor/contacts", entity = "contact" },
        { name = "others", resource = "cursor/others", entity = "other" },
      })
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      assert_all_once("others", "other", OTHERS)
      local log = server.log()
      local a = S.entries(log, { path = "/cursor/contacts" })
      local b = S.entries(log, { path = "/cursor/others" })
      assert.same({ 3, 2 }, { #a, #b })
      local overlapping = false
      for _, x in ipairs(a) do
        for _, y in ipairs(b) do overlapping = overlapping or S.overlap(x, y) end
      end
      assert.is_true(overlapping)
    end)

    it("a sync waits for what it depends on", function()
      server.latency(50)
      S.job(dir, server.url, { page = { style = "cursor", size = 100 } }, {
        { name = "contacts", resource = "cursor/contacts", entity = "contact" },
        { name = "others", resource = "cursor/others", entity = "other", depends_on = { "contacts" } },
      })
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      local log = server.log()
      local a = S.entries(log, { path = "/cursor/contacts" })
      local b = S.entries(log, { path = "/cursor/others" })
      assert.is_true(b[1].start >= a[#a]["end"])
    end)

    it("a sync that fails does not stop an independent one", function()
      server.faults({ { path = "/cursor/contacts", kind = "status", status = 500, count = 100 } })
      local lines = {
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        'entity "other" { email = "text", name = "text", age = "integer" }',
        string.format('local a = provider "http_json" { base_url = %q, page = { style = "cursor", size = 100 }, attempts = 2 }',
          server.url),
        string.format('local b = provider "http_json" { base_url = %q, page = { style = "link", size = 50 } }', server.url),
        'sync "contacts" { remote = a "cursor/contacts", entity = "contact", mapping = { email = "email", name = "name", age = "age" } }',
        'sync "others" { remote = b "link/others", entity = "other", mapping = { email = "email", name = "name", age = "age" } }',
      }
      helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
      local r = S.run(dir)
      assert.is_true(r.code ~= 0)
      assert.matches("GET " .. server.url .. "/cursor/contacts?limit=100: status 500 after 2 attempts", r.stderr, 1, true)
      assert.equal(120, I.summary(r.stdout, "others").created, r.stdout)
      assert_all_once("others", "other", OTHERS)
      assert.equal(0, S.count(dir, "contact"))
    end)

    it("page-style syncs of two providers overlap too", function()
      server.latency(200)
      local lines = {
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        'entity "other" { email = "text", name = "text", age = "integer" }',
        string.format('local a = provider "http_json" { base_url = %q, page = { style = "page", size = 100 } }', server.url),
        string.format('local b = provider "http_json" { base_url = %q, page = { style = "offset", size = 50 }, '
          .. 'records = "results.items" }', server.url),
        'sync "contacts" { remote = a "page/contacts", entity = "contact", mapping = { email = "email", name = "name", age = "age" } }',
        'sync "others" { remote = b "offset/others", entity = "other", mapping = { email = "email", name = "name", age = "age" } }',
      }
      helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      assert_all_once("others", "other", OTHERS)
      local log = server.log()
      local a = S.entries(log, { path = "/page/contacts" })
      local b = S.entries(log, { path = "/offset/others" })
      local overlapping = false
      for _, x in ipairs(a) do
        for _, y in ipairs(b) do overlapping = overlapping or S.overlap(x, y) end
      end
      assert.is_true(overlapping)
      assert.is_true(S.peak(log) > 4, "peak " .. S.peak(log))
    end)
  end)

  describe("TLS", function()
    it("verification is on by default: no warning under --verbose", function()
      job({ page = { style = "cursor", size = 100 } }, { resource = "cursor/contacts" })
      local r = S.run(dir, "--verbose")
      assert.equal(0, r.code, r.stderr)
      assert.not_matches("TLS", r.stderr)
    end)

    it("verify = false logs a warning naming the host", function()
      job({ page = { style = "cursor", size = 100 }, verify = false }, { resource = "cursor/contacts" })
      local r = S.run(dir, "--verbose")
      assert.equal(0, r.code, r.stderr)
      assert.matches("warn: TLS peer verification is off for " .. server.url, r.stderr, 1, true)
    end)

    describe("against an HTTPS server with a self-signed certificate", function()
      local tls

      setup(function()
        tls = S.tls_server({ data = { CONTACTS[1], CONTACTS[2] }, next_cursor = fixture.null })
      end)

      teardown(function()
        if tls then tls.stop() end
      end)

      local function tls_job(extra)
        local config = { base_url = tls.url, page = { style = "cursor", size = 100 }, attempts = 1 }
        for k, v in pairs(extra or {}) do config[k] = v end
        job(config, { resource = "cursor/contacts" })
      end

      it("refuses the certificate by default, naming the request", function()
        tls_job()
        local r = S.run(dir, "--verbose")
        assert.is_true(r.code ~= 0)
        assert.matches("GET " .. tls.url .. "/cursor/contacts?limit=100: ", r.stderr, 1, true)
        assert.matches("certificate", r.stderr:lower(), 1, true)
        assert.equal(0, S.count(dir, "contact"))
      end)

      it("imports with verify = false, warning under --verbose", function()
        tls_job({ verify = false })
        local r = S.run(dir, "--verbose")
        assert.equal(0, r.code, r.stderr)
        assert.matches("warn: TLS peer verification is off for " .. tls.url, r.stderr, 1, true)
        assert_all_once("contacts", "contact", { CONTACTS[1], CONTACTS[2] })
      end)

      it("imports with the certificate as cafile, verification on", function()
        tls_job({ cafile = tls.cafile })
        local r = S.run(dir, "--verbose")
        assert.equal(0, r.code, r.stderr)
        assert.not_matches("TLS", r.stderr)
        assert_all_once("contacts", "contact", { CONTACTS[1], CONTACTS[2] })
      end)
    end)
  end)

  describe("the provider's verbs, called directly", function()
    local provider_module = require "providers.http_json"

    local function provider(config)
      local c = { base_url = server.url }
      for k, v in pairs(config or {}) do c[k] = v end
      return provider_module.new(c, { name = "spec" })
    end

    it("get, create, update (PUT and PATCH) and delete", function()
      local p = provider({})
      local got = p:get("api/items", 101)
      assert.equal("Contact 101", got.name)
      assert.same({ nil, "not found" }, { p:get("api/items", 555) })

      local id, created = p:create("api/items", { name = "made", email = "m@x" })
      assert.equal(103, math.tointeger(id))
      assert.equal("made", created.name)
      local log = server.log()
      assert.same({ "POST", "/api/items" }, { log[#log].method, log[#log].path })

      local updated = p:update("api/items", "103", { name = "put", email = "p@x" })
      assert.equal("put", updated.name)
      assert.equal("PUT", server.log()[#server.log()].method)
      local patcher = provider({ update_method = "PATCH" })
      updated = patcher:update("api/items", "103", { age = 9 })
      assert.same({ "put", 9 }, { updated.name, updated.age })
      assert.equal("PATCH", server.log()[#server.log()].method)

      assert.is_true(p:delete("api/items", "103"))
      assert.is_true(p:delete("api/items", "103")) -- already gone counts as deleted
      assert.same({ "DELETE", 404 }, { server.log()[#server.log()].method, server.log()[#server.log()].status })
    end)

    -- lua-cjson decodes every JSON number as a float, so create returns
    -- 103.0 and the record URL comes out as /api/items/103.0: get finds
    -- nothing, update fails with 404 and delete "succeeds" on the 404 while
    -- the record stays on the remote.
    it("the id create returns (a JSON number) works with get, update and delete", function()
      local p = provider({})
      local id = p:create("api/items", { name = "round trip" })
      local paths = {}
      local ok, got = pcall(p.get, p, "api/items", id)
      paths[#paths + 1] = server.log()[#server.log()].path
      local updated_ok, updated = pcall(p.update, p, "api/items", id, { name = "round trip 2" })
      paths[#paths + 1] = server.log()[#server.log()].path
      local deleted_ok, deleted = pcall(p.delete, p, "api/items", id)
      paths[#paths + 1] = server.log()[#server.log()].path
      assert.same({ "/api/items/103", "/api/items/103", "/api/items/103" }, paths)
      assert.is_true(ok, message_of(got))
      assert.equal("round trip", got.name)
      assert.is_true(updated_ok, message_of(updated))
      assert.is_true(deleted_ok, message_of(deleted))
    end)

    -- ready() tells the engine whether the next record comes without a
    -- request of its own: when it does not, the batch in hand is written
    -- first. A numbered page already asked for is such a record, so an
    -- import fills its batches whatever the latency (the same batches
    -- every time); a chained page's request goes out only when it is read.
    it("a listing is ready while its next numbered page is on the wire, not before a chained page", function()
      -- the ids of the records take_records gives: from the page's
      -- document, and decoded by page:list() for the Lua pipeline
      local function take(reader)
        local page, from, to = reader:take_records(1000)
        if not page then return nil end
        local list = page:list()
        assert.equal(page.doc:item(from, "id"), list[from].id)
        assert.equal(page.doc:item(to, "id"), list[to].id)
        return { math.tointeger(list[from].id), math.tointeger(list[to].id) }
      end
      server.latency(300)
      local reader = provider({ page = { style = "page", size = 100 }, concurrency = 1 }):list("page/contacts", {})
      assert.is_false(reader:ready()) -- nothing asked for yet
      assert.same({ 1, 100 }, take(reader))
      assert.is_true(reader:ready()) -- page 2 is on the wire
      local started = core.sys.monotonic()
      assert.same({ 101, 200 }, take(reader))
      assert.is_true(core.sys.monotonic() - started >= 0.2) -- it was not in yet
      assert.is_true(reader:ready())
      assert.same({ 201, 250 }, take(reader))
      assert.is_nil(take(reader))
      assert.is_true(reader:ready()) -- the end
      reader:close()
      server.latency(0)

      local results = S.tasks({ function()
        local chained = provider({ page = { style = "next", size = 40 }, records = "items" }):list("next/others", {})
        local first = take(chained)
        return { first[1], first[2], chained:ready() }
      end })
      assert.same({ true, { 1001, 1040, false } }, results[1])
    end)

    it("a failed write raises naming method, URL and status", function()
      local p = provider({})
      local ok, err = pcall(p.update, p, "api/items", "404404", { name = "x" })
      assert.is_false(ok)
      assert.matches("PUT " .. server.url .. "/api/items/404404: status 404", message_of(err), 1, true)
      ok, err = pcall(p.create, p, "api/items", { id = 101, name = "dup" })
      assert.is_false(ok)
      assert.matches("POST " .. server.url .. "/api/items: status 409", message_of(err), 1, true)
    end)

    it("list reads every page with the provider's headers", function()
      local p = provider({ page = { style = "next", size = 40 }, records = "items", headers = { ["X-Tenant"] = "t1" } })
      local results = S.tasks({ function()
        local reader, n, ids = p:list("next/others", {}), 0, {}
        while true do
          local record = reader:next()
          if not record then break end
          n = n + 1
          ids[#ids + 1] = string.format("%d", record.id)
        end
        return n .. ":" .. ids[1] .. ".." .. ids[#ids]
      end })
      assert.same({ true, "120:1001..1120" }, results[1])
      for _, e in ipairs(server.log()) do assert.equal("t1", e.headers["X-Tenant"]) end
      assert.equal(3, #server.log())
    end)

    it("validates its settings, every one by type, nested tables too", function()
      local contract = require "entsync.provider"
      local function check(config)
        local ok, err = contract.check_settings(provider_module.settings, config)
        if not ok then return ok, err end
        return provider_module.validate(config)
      end
      local function bad(config, pattern)
        local ok, err = check(config)
        assert.is_nil(ok)
        assert.matches(pattern, err, 1, true)
      end
      assert.is_true(check({ base_url = "http://x" }))
      bad({ base_url = "ftp://x" }, "setting base_url must be an http:// or https:// URL")
      bad({ base_url = "http://x", page = { style = "pages" } }, "setting page.style must be one of")
      bad({ base_url = "http://x", page = { style = "page", size = 0 } }, "setting page.size must be a positive integer")
      bad({ base_url = "http://x", auth = { bearer = "a", basic = { "u", "p" } } }, "setting auth takes one of")
      bad({ base_url = "http://x", auth = { api_key = { value = "k" } } }, "setting auth.api_key is")
      bad({ base_url = "http://x", auth = { oauth2 = { client_id = "c" } } }, "setting auth.oauth2.client_secret is required")
      bad({ base_url = "http://x", bogus = 1 }, "unknown setting bogus")
      bad({ base_url = "http://x", pag = {} }, "unknown setting pag (did you mean page?)")
      bad({ base_url = "http://x", update_method = "POST" }, 'setting update_method must be one of "PUT", "PATCH"')
      bad({ base_url = "http://x", timeout = "ten" }, 'setting timeout must be a number, got "ten"')
      bad({ base_url = "http://x", headers = "x" }, 'setting headers must be a table, got "x"')
      bad({ base_url = "http://x", id = 5 }, "setting id must be a string, got 5")
      bad({ base_url = "http://x", version = { field = "_rev", header = "ETag" } }, "setting version is")
      assert.equal("Basic dTpw", provider_module.basic_header("u", "p"))
      assert.equal("Basic YWJjOmRlZmc=", provider_module.basic_header("abc", "defg"))
    end)

    it("a bad provider setting fails the job before anything runs", function()
      job({ page = { style = "pages" } })
      local r = S.run(dir)
      assert.equal(2, r.code)
      assert.matches("job.lua:3: provider \"http_json\": setting page.style must be one of", r.stderr, 1, true)
      assert.equal(0, #server.log())
    end)
  end)

  describe("rate limits", function()
    -- The pages asked ahead are started during the rate's waits, when
    -- nobody polls curl (see http_spec: "per_second spaces requests that
    -- one task starts ahead as futures"); they reach the server together.
    it("rate.per_second spaces the pages a page-style sync asks ahead", function()
      job({ page = { style = "page", size = 50 }, rate = { per_second = 10 } })
      local t0 = core.sys.now()
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert_all_once()
      local gets = S.entries(server.log(), { method = "GET" })
      assert.is_true(#gets >= 5) -- 250 records, 50 a page: the total says there are five
      assert.same({}, S.rate_breaches(gets, t0, 10), "requests beyond 10 a second at the server")
    end)
  end)

  -- A provider's limits (concurrency cap) are shared by its syncs. A
  -- page/offset reader takes a slot per page it asks ahead and a slot comes
  -- back only when its future is waited on; so a reader that holds slots
  -- while waiting in Limits:acquire for more, beside another that does the
  -- same, waits forever (a retry's backoff hands a slot to the other
  -- reader), and the slots of pages a failed reader never waited on are
  -- never given back.
  describe("syncs sharing one provider's limits", function()
    local function two_syncs(config)
      local c = { page = { style = "page", size = 2 }, concurrency = 2, attempts = 3 }
      for k, v in pairs(config or {}) do c[k] = v end
      server.set_data({ contacts = S.records(10), others = S.records(10, 1001) })
      S.job(dir, server.url, c, {
        { name = "contacts", resource = "page/contacts", entity = "contact" },
        { name = "others", resource = "page/others", entity = "other" },
      })
    end

    it("a retried page in one sync does not deadlock the other", function()
      server.latency(50)
      two_syncs()
      server.faults({ { path = "/page/contacts", kind = "status", status = 500, count = 1 } })
      local r = S.run_limited(dir, 3)
      assert.is_false(r.killed, "the run hung and was killed after 3s; stderr: " .. r.stderr)
      assert.equal(0, r.code, r.stderr)
      assert_all_once("contacts", "contact", S.records(10))
      assert_all_once("others", "other", S.records(10, 1001))
    end)

    it("a sync that fails mid-listing does not hang the other sync", function()
      two_syncs({ attempts = 1 })
      server.faults({ { path = "/page/contacts", kind = "latency", ms = 0, count = 1 },
        { path = "/page/contacts", kind = "status", status = 500, count = 100 } })
      local r = S.run_limited(dir, 3)
      assert.is_false(r.killed, "the run hung and was killed after 3s; stderr: " .. r.stderr)
      assert.is_true(r.code ~= 0)
      -- pages go out together: which one meets the 500 first is a race
      assert.matches("/page/contacts%?page=%d+&per_page=2: status 500", r.stderr)
      assert_all_once("others", "other", S.records(10, 1001))
    end)
  end)
end)
