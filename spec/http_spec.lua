-- entsync.http against a real HTTP server on 127.0.0.1 (the fixture server,
-- spec/support/fixture_server.py): requests, the scheduler, retries,
-- Retry-After, timeouts, limits, bad bodies and redaction in logs; and the
-- curl multi client of src/http.c underneath.

local core = require "entsync.core"
local http = require "entsync.http"
local fixture = require "fixture"
local S = require "http_support"

local RECORDS = S.records(5)

describe("entsync.http", function()
  local server, lines

  setup(function()
    server = fixture.start({ resources = { contacts = RECORDS, items = S.records(3, 100) } })
  end)

  teardown(function()
    http.set_logger(nil)
    if server then server.stop() end
  end)

  before_each(function()
    server.reset()
    lines = {}
    http.set_logger(function(level, message) lines[#lines + 1] = level .. ": " .. message end, true)
  end)

  local function url(path) return server.url .. path end

  describe("requests", function()
    it("GETs with an encoded query and headers; the response has status, lower-case headers, body, json()", function()
      local res = http.get(url("/page/contacts"), {
        query = { per_page = 2, page = 1, q = "a b&c=d/é", tag = { "x", "y z" }, skipped = false },
        headers = { ["X-Trace"] = "t-1", "X-Line: as-is" },
      })
      assert.equal(200, res.status)
      assert.is_true(res:ok())
      assert.equal("application/json", res.headers["content-type"])
      assert.equal(tostring(#res.body), res.headers["content-length"])
      assert.is_nil(res.headers["Content-Type"])
      local body = res:json()
      assert.same({ 1, 2 }, { body.data[1].id, body.data[2].id })
      assert.equal(5, body.total)

      local entry = server.log()[1]
      assert.equal("GET", entry.method)
      assert.equal("/page/contacts", entry.path)
      -- keys sorted, components percent-encoded, lists repeated, false left out
      assert.equal("page=1&per_page=2&q=a%20b%26c%3Dd%2F%C3%A9&tag=x&tag=y%20z", entry.query)
      assert.equal("t-1", entry.headers["X-Trace"])
      assert.equal("as-is", entry.headers["X-Line"])
      assert.equal("application/json", entry.headers["Accept"])
      assert.matches("^entsync/", entry.headers["User-Agent"])
    end)

    it("adds a query to a URL that already has one", function()
      assert.equal(200, http.get(url("/page/contacts?per_page=1"), { query = { page = 2 } }).status)
      assert.equal("per_page=1&page=2", server.log()[1].query)
    end)

    it("POSTs, PUTs, PATCHes and DELETEs JSON bodies", function()
      local created = http.post(url("/api/items"), { json = { name = "new", email = "n@x" } })
      assert.equal(201, created.status)
      -- (lua-cjson decodes every number as a float: 103.0)
      local id = math.tointeger(created:json().id)
      assert.equal(103, id)

      local put = http.put(url("/api/items/" .. id), { json = { name = "put", email = "p@x" } })
      assert.equal(200, put.status)
      assert.equal("put", put:json().name)

      local patched = http.patch(url("/api/items/" .. id), { json = { age = 7 } })
      assert.equal(200, patched.status)
      assert.same({ "put", 7 }, { patched:json().name, patched:json().age })

      local deleted = http.delete(url("/api/items/" .. id))
      assert.equal(204, deleted.status)
      assert.equal("", deleted.body)
      assert.equal(404, http.get(url("/api/items/" .. id)).status)

      local log = server.log()
      assert.same({ "POST", "PUT", "PATCH", "DELETE", "GET" },
        { log[1].method, log[2].method, log[3].method, log[4].method, log[5].method })
      assert.equal("application/json", log[1].headers["Content-Type"])
      assert.same({ name = "new", email = "n@x" }, fixture.decode(log[1].body))
      assert.same({ age = 7 }, fixture.decode(log[3].body))
      assert.equal("", log[4].body)
    end)

    it("http.request takes a method, a raw body, and a body alone means POST", function()
      local res = http.request({ url = url("/api/items"), body = '{"name":"raw"}',
        headers = { ["Content-Type"] = "application/json" } })
      assert.equal(201, res.status)
      assert.equal("POST", server.log()[1].method)
      assert.equal('{"name":"raw"}', server.log()[1].body)
      res = http.request({ method = "head", url = url("/page/contacts") })
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("HEAD", server.log()[2].method)
    end)

    it("a 4xx is a response, not an error, and is not retried", function()
      local res = http.get(url("/page/nothing"))
      assert.equal(404, res.status)
      assert.is_false(res:ok())
      assert.same({ error = "not found" }, res:json())
      assert.equal(1, #server.log())
    end)

    it("a request without a url is a usage error", function()
      assert.has_error(function() http.request({}) end)
      local ok, err = pcall(http.request, { method = "GET" })
      assert.is_false(ok)
      assert.matches("needs a table with a url", tostring(err.message or err))
    end)

    it("TLS verification is on unless verify = false, which logs a warning", function()
      local future = http.start({ url = url("/page/contacts") })
      assert.is_true(future.prepared.verify)
      future:wait()
      assert.equal(0, #(function()
        local warns = {}
        for _, l in ipairs(lines) do if l:match("TLS") then warns[#warns + 1] = l end end
        return warns
      end)())
      local off = http.start({ url = url("/page/contacts"), verify = false })
      assert.is_false(off.prepared.verify)
      off:wait()
      local found
      for _, l in ipairs(lines) do if l:match("^warn: TLS peer verification is off") then found = l end end
      assert.is_truthy(found)
      assert.matches(server.url, found, 1, true)
    end)
  end)

  describe("TLS against an HTTPS server with a self-signed certificate", function()
    local tls

    setup(function()
      tls = S.tls_server({ data = { { id = 1, name = "over tls" } }, next_cursor = fixture.null })
    end)

    teardown(function()
      if tls then tls.stop() end
    end)

    it("refuses it by default, naming the request", function()
      local ok, err = pcall(http.get, tls.url .. "/cursor/contacts", { attempts = 1 })
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("GET " .. tls.url .. "/cursor/contacts: ", message, 1, true)
      assert.matches("certificate", message:lower(), 1, true)
    end)

    it("accepts it with verify = false, and warns", function()
      local res = http.get(tls.url .. "/cursor/contacts", { verify = false })
      assert.equal(200, res.status)
      assert.equal("over tls", res:json().data[1].name)
      local warned = false
      for _, l in ipairs(lines) do
        if l == "warn: TLS peer verification is off for " .. tls.url then warned = true end
      end
      assert.is_true(warned, table.concat(lines, "\n"))
    end)

    it("accepts it verified against cafile", function()
      local res = http.get(tls.url .. "/cursor/contacts", { cafile = tls.cafile })
      assert.equal(200, res.status)
      assert.equal("over tls", res:json().data[1].name)
      for _, l in ipairs(lines) do assert.not_matches("TLS", l) end
    end)
  end)

  describe("the scheduler", function()
    it("tasks of one loop overlap their requests; outside a task a request blocks", function()
      server.latency(200)
      local elapsed, results = S.timed(S.tasks, {
        function() return http.get(url("/page/contacts")).status end,
        function() return http.get(url("/offset/contacts")).status end,
        function() return http.get(url("/cursor/contacts")).status end,
        function()
          http.sleep(0.05)
          return #http.get(url("/link/contacts")):json()
        end,
      })
      assert.same({ { true, 200 }, { true, 200 }, { true, 200 }, { true, 5 } }, results)
      local log = server.log()
      assert.equal(4, #log)
      assert.equal(4, S.peak(log))
      assert.is_true(elapsed < 0.6, "four 200 ms requests took " .. elapsed .. "s")

      -- outside a task: each request blocks until its response is there
      server.reset_log()
      local blocked = S.timed(function()
        assert.equal(200, http.get(url("/page/contacts")).status)
        assert.equal(200, http.get(url("/offset/contacts")).status)
      end)
      assert.is_true(blocked >= 0.4, "two blocking requests took " .. blocked .. "s")
      log = server.log()
      assert.is_false(S.overlap(log[1], log[2]))
    end)

    it("a task's error does not stop the others; results keep the task order", function()
      local results = S.tasks({
        function() error("task one failed") end,
        function() return http.get(url("/page/contacts")):json().total end,
      })
      assert.is_false(results[1][1])
      assert.matches("task one failed", tostring(results[1][2]))
      assert.same({ true, 5 }, results[2])
    end)

    it("futures started in a task are in flight together", function()
      server.latency(200)
      local elapsed, results = S.timed(S.tasks, { function()
        local futures = {}
        for i = 1, 3 do futures[i] = http.start({ url = url("/page/contacts"), query = { page = i, per_page = 2 } }) end
        local ids = {}
        for i = 1, 3 do
          for _, r in ipairs(futures[i]:wait():json().data) do ids[#ids + 1] = string.format("%d", r.id) end
        end
        return table.concat(ids, ",")
      end })
      assert.same({ true, "1,2,3,4,5" }, results[1])
      assert.is_true(elapsed < 0.5, "three requests took " .. elapsed .. "s")
      assert.equal(3, S.peak(server.log()))
    end)

    -- While every task sleeps the loop sleeps in core.loop.wait, which
    -- drives curl: a request started before a sleep is sent during it, not
    -- when the task comes to wait for it.
    it("a request started before a task sleeps is in flight during the sleep", function()
      server.latency(300)
      local elapsed, results = S.timed(S.tasks, { function()
        local future = http.start({ url = url("/page/contacts") })
        http.sleep(0.3)
        return future:wait().status
      end })
      assert.same({ true, 200 }, results[1])
      assert.is_true(elapsed < 0.5, string.format("a 300 ms request beside a 300 ms sleep took %.2fs", elapsed))
    end)

    it("a request inside a write (loop.forbid_yield) is an error, and is never sent", function()
      local loop = require "entsync.loop"
      local results = S.tasks({
        function()
          return loop.forbid_yield("a write transaction", function() return http.get(url("/page/contacts")).status end)
        end,
        function() return http.get(url("/offset/contacts")).status end,
      })
      assert.is_false(results[1][1])
      assert.matches("a write transaction: cannot wait inside a write transaction", tostring(results[1][2]))
      assert.same({ true, 200 }, results[2])
      assert.equal(0, #S.entries(server.log(), { path = "/page/contacts" }))
    end)
  end)

  describe("retries", function()
    it("500 twice then 200 succeeds after three requests", function()
      server.faults({ { path = "/page/contacts", kind = "status", status = 500, count = 2 } })
      local res = http.get(url("/page/contacts"), { backoff = 0.01 })
      assert.equal(200, res.status)
      assert.equal(5, res:json().total)
      local log = server.log()
      assert.equal(3, #log)
      assert.same({ 500, 500, 200 }, { log[1].status, log[2].status, log[3].status })
      local warns = 0
      for _, l in ipairs(lines) do if l:match("^warn: GET .* status 500; retrying") then warns = warns + 1 end end
      assert.equal(2, warns)
    end)

    it("retries a 408 and a 503", function()
      server.faults({ { path = "/page/contacts", kind = "status", status = 408 },
        { path = "/page/contacts", kind = "status", status = 503 } })
      local res = http.get(url("/page/contacts"), { backoff = 0.01 })
      assert.equal(200, res.status)
      local log = server.log()
      assert.same({ 408, 503, 200 }, { log[1].status, log[2].status, log[3].status })
    end)

    it("retries a dropped connection", function()
      -- curl itself resends a request whose reused connection died (up to
      -- 5 times); seven drops in a row are more than one attempt absorbs
      server.faults({ { path = "/page/contacts", kind = "drop", count = 7 } })
      local res = http.get(url("/page/contacts"), { backoff = 0.001, attempts = 8 })
      assert.equal(200, res.status)
      local log = server.log()
      assert.equal(8, #log)
      assert.equal("drop", log[7].fault)
      assert.equal(200, log[8].status)
      local retried = false
      for _, l in ipairs(lines) do
        if l:match("^warn: GET .*/page/contacts: .*; retrying in") then retried = true end
      end
      assert.is_true(retried, table.concat(lines, "\n"))
    end)

    it("retries a truncated body", function()
      server.faults({ { path = "/page/contacts", kind = "truncate" } })
      local res = http.get(url("/page/contacts"), { backoff = 0.01 })
      assert.equal(200, res.status)
      assert.equal(5, res:json().total)
      assert.equal(2, #server.log())
    end)

    it("honours a 429's Retry-After in seconds", function()
      server.faults({ { path = "/page/contacts", kind = "retry_after", seconds = 1 } })
      local elapsed, res = S.timed(http.get, url("/page/contacts"), { backoff = 0.01 })
      assert.equal(200, res.status)
      assert.is_true(elapsed >= 1, "waited only " .. elapsed .. "s")
      assert.is_true(elapsed < 3, "waited " .. elapsed .. "s")
      local log = server.log()
      assert.same({ 429, 200 }, { log[1].status, log[2].status })
      assert.is_true(log[2].start - log[1]["end"] >= 0.95)
    end)

    it("honours a 429's Retry-After as an HTTP date", function()
      server.faults({ { path = "/page/contacts", kind = "retry_after", seconds = 1, date = true } })
      local elapsed, res = S.timed(http.get, url("/page/contacts"), { backoff = 0.01 })
      assert.equal(200, res.status)
      assert.is_true(elapsed >= 1, "waited only " .. elapsed .. "s")
      assert.is_true(elapsed < 3.5, "waited " .. elapsed .. "s")
    end)

    it("parses Retry-After values", function()
      assert.equal(3, http.retry_after("3"))
      assert.equal(0, http.retry_after("-2"))
      assert.is_nil(http.retry_after(nil))
      assert.is_nil(http.retry_after("soon"))
      assert.equal(0, http.retry_after("Wed, 21 Oct 2015 07:28:00 GMT"))
      local future = os.date("!%a, %d %b %Y %H:%M:%S GMT", math.floor(core.sys.now()) + 100)
      local d = http.retry_after(future)
      assert.is_true(d > 98 and d <= 100, tostring(d))
    end)

    it("after the last attempt fails naming the method, URL, status and the start of the body", function()
      server.faults({ { path = "/page/contacts", kind = "status", status = 502, count = 10,
        body = { error = "upstream exploded" } } })
      local ok, err = pcall(http.get, url("/page/contacts"), { query = { page = 3 }, attempts = 3, backoff = 0.01 })
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("GET " .. server.url .. "/page/contacts?page=3", message, 1, true)
      assert.matches("status 502", message, 1, true)
      assert.matches("after 3 attempts", message, 1, true)
      assert.matches("upstream exploded", message, 1, true)
      assert.equal(3, #server.log())
      assert.equal(502, err.status)
    end)

    it("a persistent network error fails after the attempts, naming it", function()
      server.faults({ { path = "/page/contacts", kind = "drop", count = 20 } })
      local ok, err = pcall(http.get, url("/page/contacts"), { attempts = 2, backoff = 0.01 })
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("GET " .. server.url .. "/page/contacts", message, 1, true)
      assert.matches("after 2 attempts", message, 1, true)
      -- two attempts; curl may resend each on a reused connection
      local n = #server.log()
      assert.is_true(n >= 2 and n <= 12, n .. " requests")
    end)

    it("a truncated body that keeps coming fails with an error", function()
      server.faults({ { path = "/page/contacts", kind = "truncate", count = 10 } })
      local ok, err = pcall(http.get, url("/page/contacts"), { attempts = 2, backoff = 0.01 })
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("GET " .. server.url .. "/page/contacts", message, 1, true)
      assert.matches("partial", message:lower(), 1, true)
    end)
  end)

  describe("timeouts", function()
    it("a response slower than the timeout fails with a timeout error", function()
      server.faults({ { path = "/page/contacts", kind = "latency", ms = 1500 } })
      local elapsed, ok, err = S.timed(pcall, http.get, url("/page/contacts"), { timeout = 0.3, attempts = 1 })
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("timeout", message:lower(), 1, true)
      assert.matches("GET " .. server.url .. "/page/contacts", message, 1, true)
      assert.is_true(elapsed < 1.2, "took " .. elapsed .. "s")
    end)

    it("a body trickling in past the timeout fails too", function()
      server.faults({ { path = "/page/contacts", kind = "slow", ms = 1500, pieces = 5 } })
      local ok, err = pcall(http.get, url("/page/contacts"), { timeout = 0.4, attempts = 1 })
      assert.is_false(ok)
      assert.matches("timeout", tostring(err.message or err):lower(), 1, true)
    end)

    it("a timed-out attempt is retried", function()
      server.faults({ { path = "/page/contacts", kind = "latency", ms = 1000 } })
      local res = http.get(url("/page/contacts"), { timeout = 0.3, attempts = 2, backoff = 0.01 })
      assert.equal(200, res.status)
    end)
  end)

  describe("limits", function()
    it("a concurrency cap is never exceeded at the server", function()
      server.latency(100)
      local limits = http.limits({ concurrency = 2 })
      local tasks = {}
      for i = 1, 6 do
        tasks[i] = function()
          return http.get(url("/page/contacts"), { query = { page = 1, n = i }, limits = limits }).status
        end
      end
      local elapsed, results = S.timed(S.tasks, tasks)
      for i = 1, 6 do assert.same({ true, 200 }, results[i]) end
      local log = server.log()
      assert.equal(6, #log)
      assert.equal(2, S.peak(log))
      assert.is_true(elapsed >= 0.3, "took " .. elapsed .. "s")
      assert.equal(0, limits.in_flight)
    end)

    it("a cap holds across the retries of a request", function()
      server.latency(50)
      server.faults({ { path = "/page/contacts", kind = "status", status = 500, count = 3 } })
      local limits = http.limits({ concurrency = 1 })
      local tasks = {}
      for i = 1, 4 do
        tasks[i] = function()
          return http.get(url("/page/contacts"), { query = { n = i }, limits = limits, backoff = 0.01 }).status
        end
      end
      local results = S.tasks(tasks)
      for i = 1, 4 do assert.same({ true, 200 }, results[i]) end
      local log = server.log()
      assert.equal(7, #log)
      assert.equal(1, S.peak(log))
      assert.equal(0, limits.in_flight)
    end)

    it("per_second spaces the requests", function()
      local limits = http.limits({ per_second = 10 })
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = function() return http.get(url("/page/contacts"), { query = { n = i }, limits = limits }).status end
      end
      local t0 = core.sys.now()
      local elapsed = S.timed(S.tasks, tasks)
      assert.is_true(elapsed >= 0.38, "five requests at 10/s took " .. elapsed .. "s")
      local log = server.log()
      assert.equal(5, #log)
      assert.same({}, S.rate_breaches(log, t0, 10), "requests beyond 10 a second at the server")
    end)

    -- A future's transfer is only added to the curl multi handle; curl
    -- sends it when the loop's wait drives it. The rate's waits
    -- (Limits:acquire sleeps until the next slot) are such waits, so
    -- requests started ahead by one task go out one slot apart, not
    -- together at its first wait.
    it("per_second spaces requests that one task starts ahead as futures", function()
      local limits = http.limits({ per_second = 10 })
      local t0 = core.sys.now()
      local results = S.tasks({ function()
        local futures = {}
        for i = 1, 4 do
          futures[i] = http.start({ url = url("/page/contacts"), query = { n = i }, limits = limits })
        end
        for i = 1, 4 do futures[i]:wait() end
        return true
      end })
      assert.same({ true, true }, results[1])
      local log = server.log()
      assert.equal(4, #log)
      assert.same({}, S.rate_breaches(log, t0, 10), "requests beyond 10 a second at the server")
    end)
  end)

  describe("bad bodies", function()
    it("res:json() on a malformed body raises a clear error", function()
      server.faults({ { path = "/page/contacts", kind = "malformed" } })
      local res = http.get(url("/page/contacts"))
      assert.equal(200, res.status)
      local ok, err = pcall(res.json, res)
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.matches("GET " .. server.url .. "/page/contacts", message, 1, true)
      assert.matches("not JSON", message, 1, true)
      assert.matches('the body starts "{\\"data\\": [{\\"id\\": 1', message, 1, true)
    end)

    it("a body over max_response fails", function()
      local ok, err = pcall(http.get, url("/page/contacts"), { max_response = 10, attempts = 1 })
      assert.is_false(ok)
      assert.matches("over max_response (10 bytes)", tostring(err.message or err), 1, true)
    end)
  end)

  describe("redaction in --verbose logs", function()
    it("never logs Authorization, X-Api-Key or api_key values", function()
      server.faults({ { path = "/page/contacts", kind = "status", status = 500 },
        { path = "/offset/contacts", kind = "status", status = 503, count = 5 } })
      local headers = { Authorization = "Bearer SECRET-BEARER", ["X-Api-Key"] = "SECRET-HEADER-KEY" }
      local res = http.get(url("/page/contacts"), { headers = headers, backoff = 0.01,
        query = { api_key = "SECRET-QUERY-KEY", page = 1 } })
      assert.equal(200, res.status)
      local ok, err = pcall(http.get, url("/offset/contacts?api_key=SECRET-URL-KEY&x=1"),
        { headers = { "authorization: Basic SECRET-BASIC" }, attempts = 2, backoff = 0.01 })
      assert.is_false(ok)
      http.get(url("/page/contacts"), { verify = false, query = { token = "SECRET-TOKEN", access_token = "SECRET-AT" } })

      -- the secrets did go out
      local log = server.log()
      assert.equal("Bearer SECRET-BEARER", log[1].headers["Authorization"])
      assert.equal("SECRET-HEADER-KEY", log[1].headers["X-Api-Key"])
      assert.matches("api_key=SECRET-QUERY-KEY", log[1].query, 1, true)

      local text = table.concat(lines, "\n") .. "\n" .. tostring(err.message or err)
      assert.is_true(#lines >= 5, text)
      assert.not_matches("SECRET", text)
      assert.matches("Authorization: [redacted]", text, 1, true)
      assert.matches("X-Api-Key: [redacted]", text, 1, true)
      assert.matches("api_key=[redacted]", text, 1, true)
      assert.matches("page=1", text, 1, true)
    end)

    it("secret_header and secret_param add names to redact", function()
      http.secret_header("X-Spec-Secret")
      http.secret_param("spec_sig")
      http.get(url("/page/contacts"), { headers = { ["x-spec-secret"] = "SECRET-1" }, query = { spec_sig = "SECRET-2" } })
      local text = table.concat(lines, "\n")
      assert.matches("x-spec-secret: [redacted]", text, 1, true)
      assert.matches("spec_sig=[redacted]", text, 1, true)
      assert.not_matches("SECRET", text)
    end)

    it("logs nothing per request without verbose", function()
      http.set_logger(function(level, message) lines[#lines + 1] = level .. ": " .. message end, false)
      http.get(url("/page/contacts"), { headers = { Authorization = "Bearer SECRET" } })
      assert.same({}, lines)
    end)
  end)

  describe("the curl multi client (src/http.c)", function()
    it("adds, polls and cancels transfers", function()
      server.latency(300)
      local client = core.http.client()
      local a = client:add({ url = url("/page/contacts"), method = "GET", headers = { "Accept: application/json" } })
      local b = client:add({ url = url("/offset/contacts"), method = "GET" })
      assert.is_true(b ~= a)
      assert.equal(2, client:pending())
      assert.is_true(client:cancel(b))
      assert.is_false(client:cancel(b))
      assert.equal(1, client:pending())
      local got
      local deadline = core.sys.monotonic() + 5
      while not got and core.sys.monotonic() < deadline do
        for _, r in ipairs(client:poll(0.5)) do got = r end
      end
      assert.equal(a, got.id)
      assert.equal(200, got.status)
      assert.equal("application/json", got.headers["content-type"])
      assert.is_true(got.time >= 0.25)
      assert.equal(0, client:pending())
      assert.same({}, client:poll(0))
      client:close()
      assert.has_error(function() client:pending() end, "http client is closed")
    end)

    it("reports a transfer that fails with an error field", function()
      local client = core.http.client()
      -- a port nothing listens on: the server's own port once stopped is
      -- racy, so take a reserved one
      local id = client:add({ url = "http://127.0.0.1:9/", connect_timeout = 2 })
      local got
      local deadline = core.sys.monotonic() + 5
      while not got and core.sys.monotonic() < deadline do
        for _, r in ipairs(client:poll(0.5)) do got = r end
      end
      assert.equal(id, got.id)
      assert.equal(0, got.status)
      assert.is_string(got.error)
      client:close()
    end)

    local function one(client, request)
      local id = client:add(request)
      local deadline = core.sys.monotonic() + 5
      while core.sys.monotonic() < deadline do
        for _, r in ipairs(client:poll(0.5)) do if r.id == id then return r end end
      end
      error("no response")
    end

    it("an ended transfer's handle serves the next with none of its options", function()
      local client = core.http.client()
      local posted = one(client, { url = url("/api/items"), method = "POST", body = '{"name":"a"}',
        headers = { "Content-Type: application/json", "X-Once: 1" } })
      assert.equal(201, posted.status)
      local head = one(client, { url = url("/page/contacts"), method = "HEAD" })
      assert.same({ 200, "" }, { head.status, head.body })
      local got = one(client, { url = url("/page/contacts"), method = "GET" })
      assert.equal(200, got.status)
      assert.equal(5, fixture.decode(got.body).total) -- a body: HEAD's NOBODY went with its transfer
      local log = server.log()
      assert.same({ "POST", "HEAD", "GET" }, { log[1].method, log[2].method, log[3].method })
      assert.equal('{"name":"a"}', log[1].body)
      assert.equal("1", log[1].headers["X-Once"])
      assert.same({ "", nil, nil }, { log[3].body, log[3].headers["X-Once"], log[3].headers["Content-Type"] })
      client:close()
    end)

    it("a response's body and headers are made from its payload when first read, once", function()
      local client = core.http.client()
      local got = one(client, { url = url("/page/contacts"), method = "GET" })
      assert.same({ nil, nil }, { rawget(got, "body"), rawget(got, "headers") })
      local body = got.body
      assert.equal(5, fixture.decode(body).total)
      assert.equal(body, rawget(got, "body"))
      assert.equal(tostring(#body), got.headers["content-length"])
      assert.equal(got.headers, got.headers) -- kept: the same table at every read
      -- a document reads the payload in place
      local doc = core.json.document()
      assert.is_true(doc:load(got.payload))
      assert.equal(5, doc:get("total"))
      assert.is_function(got.json)
      client:close()
    end)

    it("rejects a request without a url", function()
      local client = core.http.client()
      assert.has_error(function() client:add({}) end, "http: request needs a url")
      client:close()
    end)
  end)
end)
