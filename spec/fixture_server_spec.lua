-- The HTTP fixture remote (spec/support/fixture_server.py, driven through
-- spec/support/fixture.lua): every pagination style, the since filter,
-- writes, injected faults as curl sees them, auth, and the request log.

local fixture = require "fixture"

local function contact(id, updated_at, name)
  return { id = id, updated_at = updated_at, name = name or ("c" .. id) }
end

-- Listing order is (updated_at, id) with ids compared as numbers: 2 before 10.
local CONTACTS = {
  contact(5, "2026-01-03T00:00:00Z"),
  contact(10, "2026-01-01T00:00:00Z"),
  contact(2, "2026-01-01T00:00:00Z"),
  contact(3, "2026-01-02T00:00:00.500Z"),
  contact(4, "2026-01-02T00:00:00Z"),
}
local ORDER = { 2, 10, 4, 3, 5 }

local function ids(records)
  local out = {}
  for i, r in ipairs(records) do out[i] = r.id end
  return out
end

describe("fixture server", function()
  local server

  setup(function()
    server = fixture.start({ resources = { contacts = CONTACTS, tags = {} } })
  end)

  teardown(function()
    if server then server.stop() end
  end)

  before_each(function()
    server.reset()
  end)

  local function get(path, opts)
    local res = server.request("GET", path, opts)
    return res, res.json
  end

  it("starts on a free port on 127.0.0.1 and answers", function()
    assert.matches("^http://127%.0%.0%.1:%d+$", server.url)
    assert.is_true(server.port > 0 and server.pid > 0)
    assert.is_true(server.running())
    assert.equal(server.pid, server.control("GET", "ping").pid)
  end)

  describe("pagination", function()
    it("pages with page/per_page and a total", function()
      local seen = {}
      for page = 1, 3 do
        local res, body = get("/page/contacts?per_page=2&page=" .. page)
        assert.equal(200, res.status)
        assert.equal(page, body.page)
        assert.equal(5, body.total)
        for _, id in ipairs(ids(body.data)) do seen[#seen + 1] = id end
      end
      assert.same(ORDER, seen)
      local _, empty = get("/page/contacts?per_page=2&page=4")
      assert.same({}, empty.data)
      local _, api = get("/api/contacts")
      assert.same(ORDER, ids(api.data))
    end)

    it("pages with offset/limit under results.items", function()
      local _, body = get("/offset/contacts?offset=1&limit=3")
      assert.same({ 10, 4, 3 }, ids(body.results.items))
      assert.equal(5, body.total)
    end)

    it("pages with an opaque cursor until next_cursor is null", function()
      local seen, cursor, pages = {}, nil, 0
      repeat
        local _, body = get("/cursor/contacts?limit=2" .. (cursor and ("&cursor=" .. cursor) or ""))
        for _, id in ipairs(ids(body.data)) do seen[#seen + 1] = id end
        cursor = body.next_cursor ~= fixture.null and body.next_cursor or nil
        pages = pages + 1
      until not cursor
      assert.same(ORDER, seen)
      assert.equal(3, pages)
      assert.equal(400, (get("/cursor/contacts?cursor=!!")).status)
    end)

    it("pages with an absolute Link rel=next header over a top-level array", function()
      local seen, url, pages = {}, "/link/contacts?per_page=2", 0
      while url do
        local res, body = get(url)
        for _, id in ipairs(ids(body)) do seen[#seen + 1] = id end
        local link = res.headers.link
        url = link and link:match('^<([^>]+)>; rel="next"$')
        if link then assert.matches("^http://127%.0%.0%.1:" .. server.port .. "/link/contacts%?", url) end
        pages = pages + 1
      end
      assert.same(ORDER, seen)
      assert.equal(3, pages)
    end)

    it("pages with an absolute next URL in the body", function()
      local seen, url = {}, "/next/contacts?per_page=3"
      while url do
        local _, body = get(url)
        for _, id in ipairs(ids(body.items)) do seen[#seen + 1] = id end
        url = body.next ~= fixture.null and body.next or nil
      end
      assert.same(ORDER, seen)
    end)

    it("filters by updated_since / updated_after (strictly later), carried into next links", function()
      local _, body = get("/page/contacts?updated_since=2026-01-01T00:00:00Z")
      assert.same({ 4, 3, 5 }, ids(body.data))
      _, body = get("/offset/contacts?updated_after=2026-01-02T00:00:00.100Z")
      assert.same({ 3, 5 }, ids(body.results.items))
      local res = get("/link/contacts?per_page=1&updated_since=2026-01-02T00:00:00Z")
      local _, second = get(res.headers.link:match("<([^>]+)>"))
      assert.same({ 5 }, ids(second))
      assert.equal(400, (get("/page/contacts?updated_since=yesterday")).status)
    end)

    it("gets one record under every style and 404s an unknown id", function()
      for _, style in ipairs({ "page", "offset", "cursor", "link", "next", "api" }) do
        local res, body = get("/" .. style .. "/contacts/3")
        assert.equal(200, res.status)
        assert.equal("c3", body.name)
      end
      local res, body = get("/api/contacts/99")
      assert.equal(404, res.status)
      assert.same({ error = "not found" }, body)
    end)
  end)

  describe("writes", function()
    it("creates, replaces, merges and deletes, bumping updated_at each time", function()
      local res = server.request("POST", "/api/contacts", { body = { name = "new" } })
      assert.equal(201, res.status)
      assert.equal(11, res.json.id)
      local created = res.json.updated_at
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", created)

      res = server.request("PATCH", "/api/contacts/11", { body = { email = "n@x" } })
      assert.equal(200, res.status)
      assert.same({ id = 11, name = "new", email = "n@x", updated_at = res.json.updated_at }, res.json)
      local patched = res.json.updated_at
      assert.is_true(patched > created)

      res = server.request("PUT", "/api/contacts/11", { body = { name = "put", id = 999 } })
      assert.same({ id = 11, name = "put", updated_at = res.json.updated_at }, res.json)
      assert.is_true(res.json.updated_at > patched)

      -- the write shows up in an incremental listing after the old stamp
      local _, body = get("/page/contacts?updated_since=" .. patched)
      assert.same({ 11 }, ids(body.data))
      assert.equal("put", server.data().contacts[6].name)

      assert.equal(204, server.request("DELETE", "/api/contacts/11").status)
      assert.equal(404, server.request("DELETE", "/api/contacts/11").status)
      assert.equal(404, server.request("PUT", "/api/contacts/11", { body = {} }).status)
      assert.equal(5, #server.data().contacts)
      assert.equal(405, server.request("POST", "/page/contacts", { body = {} }).status)
    end)

    it("keeps a given id and updated_at on create", function()
      local res = server.request("POST", "/api/tags", { body = { id = "t1", updated_at = "2020-01-01T00:00:00Z" } })
      assert.same({ id = "t1", updated_at = "2020-01-01T00:00:00Z" }, res.json)
      assert.equal(409, server.request("POST", "/api/tags", { body = { id = "t1" } }).status)
      server.set_data({ tags = { { id = 7, name = "only" } } })
      assert.same({ tags = { { id = 7, name = "only" } } }, server.data())
      assert.equal(404, server.request("GET", "/page/contacts").status)
    end)
  end)

  describe("faults", function()
    it("injects each kind, in order, on matching paths, count times", function()
      server.faults({
        { path = "/page/contacts", kind = "status", status = 503, count = 2 },
        { path = "/page/contacts", kind = "retry_after", seconds = 2 },
        { path = "/page/contacts", kind = "retry_after", date = true },
        { path = "/page/contacts", kind = "malformed" },
        { path = "/page/contacts", kind = "truncate" },
        { path = "/page/contacts", kind = "drop" },
        { path = "/page/contacts", kind = "slow", ms = 300 },
        { path = "/page/contacts", kind = "latency", ms = 200 },
      })
      -- another path is untouched
      assert.equal(200, (get("/offset/contacts")).status)

      local res = get("/page/contacts")
      assert.equal(503, res.status)
      assert.same({ error = "injected 503" }, res.json)
      assert.equal(503, (get("/page/contacts")).status)

      res = get("/page/contacts")
      assert.equal(429, res.status)
      assert.equal("2", res.headers["retry-after"])

      res = get("/page/contacts")
      assert.equal(429, res.status)
      assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", res.headers["retry-after"])

      res = get("/page/contacts")
      assert.equal(200, res.status)
      assert.is_nil(res.json)
      assert.is_nil(fixture.decode(res.body))

      res = get("/page/contacts")
      assert.equal(200, res.status)
      assert.equal(18, res.exit) -- CURLE_PARTIAL_FILE
      assert.is_true(#res.body < tonumber(res.headers["content-length"]))

      res = get("/page/contacts")
      assert.equal(0, res.status)
      assert.equal(52, res.exit) -- CURLE_GOT_NOTHING

      res = get("/page/contacts")
      assert.equal(200, res.status)
      assert.equal(5, res.json.total)
      assert.is_true(res.time >= 0.28, "slow took " .. res.time)

      res = get("/page/contacts")
      assert.equal(200, res.status)
      assert.is_true(res.time >= 0.19, "latency took " .. res.time)

      res = get("/page/contacts")
      assert.equal(200, res.status)
      assert.is_true(res.time < 0.15)
      for _, f in ipairs(server.pending_faults()) do assert.equal(0, f.count) end

      local kinds = {}
      for _, entry in ipairs(server.log()) do kinds[#kinds + 1] = entry.fault or entry.status end
      assert.same({ 200, "status", "status", "retry_after", "retry_after", "malformed", "truncate", "drop",
        "slow", "latency", 200 }, kinds)
    end)
  end)

  describe("auth", function()
    it("checks bearer, basic and api keys, never on control endpoints", function()
      server.auth({ bearer = "T0K" })
      local res = get("/page/contacts")
      assert.equal(401, res.status)
      assert.same({ error = "unauthorized" }, res.json)
      assert.equal('Bearer realm="fixture"', res.headers["www-authenticate"])
      assert.equal(401, (get("/page/contacts", { headers = { Authorization = "Bearer nope" } })).status)
      assert.equal(200, (get("/page/contacts", { headers = { Authorization = "Bearer T0K" } })).status)
      assert.equal(5, #server.data().contacts)

      server.auth({ basic = { "u", "p" } })
      assert.equal(401, (get("/page/contacts", { user = "u:x" })).status)
      assert.equal(200, (get("/page/contacts", { user = "u:p" })).status)

      server.auth({ api_key = { header = "X-Api-Key", value = "K" } })
      assert.equal(401, (get("/page/contacts?api_key=K")).status)
      assert.equal(200, (get("/page/contacts", { headers = { ["X-Api-Key"] = "K" } })).status)

      server.auth({ api_key = { query = "api_key", value = "K" } })
      assert.equal(401, (get("/page/contacts", { headers = { ["X-Api-Key"] = "K" } })).status)
      local link = (get("/link/contacts?api_key=K&per_page=2")).headers.link
      assert.equal(200, (get(link:match("<([^>]+)>"))).status)
    end)

    it("issues oauth2 client-credentials tokens, and revokes them", function()
      local oauth = fixture.start({ contacts = {} }, { auth = { oauth2 = { client_id = "id", client_secret = "s", expires_in = 60 } } })
      finally(function() oauth.stop() end)
      local form = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      local bad = oauth.request("POST", "/oauth/token",
        { headers = form, body = "grant_type=client_credentials&client_id=id&client_secret=wrong" })
      assert.equal(401, bad.status)
      local res = oauth.request("POST", "/oauth/token",
        { headers = form, body = "grant_type=client_credentials&client_id=id&client_secret=s" })
      assert.equal(200, res.status)
      assert.equal("bearer", res.json.token_type)
      assert.equal(60, res.json.expires_in)
      local token = res.json.access_token
      local by_basic = oauth.request("POST", "/oauth/token",
        { headers = form, body = "grant_type=client_credentials", user = "id:s" })
      assert.equal(200, by_basic.status)
      assert.not_equal(token, by_basic.json.access_token)

      local auth = { headers = { Authorization = "Bearer " .. token } }
      assert.equal(401, oauth.request("GET", "/api/contacts").status)
      assert.equal(200, oauth.request("GET", "/api/contacts", auth).status)
      oauth.revoke()
      local after = oauth.request("GET", "/api/contacts", auth)
      assert.equal(401, after.status)
      assert.matches('error="invalid_token"', after.headers["www-authenticate"])
    end)
  end)

  it("logs requests, which overlap when two run in parallel under latency", function()
    server.latency(300)
    local q = fixture.quote
    local started = os.time()
    os.execute(string.format("curl -s --noproxy '*' -o /dev/null %s & curl -s --noproxy '*' -o /dev/null %s & wait",
      q(server.url .. "/page/contacts?page=1"), q(server.url .. "/offset/contacts?offset=0")))
    assert.is_true(os.time() - started <= 1)
    local log = server.log()
    assert.equal(2, #log)
    local a, b = log[1], log[2]
    for _, e in ipairs(log) do
      assert.equal("GET", e.method)
      assert.equal(200, e.status)
      assert.is_true(e["end"] - e.start >= 0.29)
      assert.matches("^curl/", e.headers["User-Agent"])
    end
    assert.is_true(a.start < b["end"] and b.start < a["end"], "requests did not overlap")

    server.latency(0)
    server.request("POST", "/api/tags", { body = { name = "x" } })
    log = server.log()
    assert.equal("/api/tags", log[3].path)
    assert.equal('{"name":"x"}', log[3].body)
    assert.equal("", log[3].query)
    assert.equal("page=1", (log[1].path == "/page/contacts" and log[1] or log[2]).query)
    server.reset_log()
    assert.same({}, server.log())
  end)

  it("stops: the process is gone and its temp files removed; stopping twice is fine", function()
    local other = fixture.start({ contacts = {} })
    local files = other.files
    assert.equal(200, other.request("GET", "/page/contacts").status)
    other.stop()
    other:stop()
    assert.is_false(fixture.alive(other.pid))
    assert.is_false(other.running())
    for _, path in pairs(files) do assert.is_nil(io.open(path)) end
  end)
end)
