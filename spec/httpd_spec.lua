-- The daemon's HTTP server: entsync.httpd on the loop in this process
-- (routes, a POST body and headers for a handler, what a handler may not
-- do), and the real daemon with --listen: /metrics scraped and parsed as
-- Prometheus' text format, and the status page loaded in headless
-- Chromium (its DOM dumped, and a screenshot's pixels counted).

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"
local D = require "daemon_support"

describe("entsync.httpd", function()
  local loop = require "entsync.loop"
  local http = require "entsync.http"
  local httpd = require "entsync.httpd"

  it("serves routes on the loop: a prefix route gets the method, the rest of the path, headers, query and body",
    function()
    local seen
    loop.run(function()
      local server = httpd.listen("127.0.0.1", 0, { max_body = 64 })
      server:route("POST", "/webhooks/", function(request, rest)
        seen = { method = request.method, rest = rest, signature = request.headers["x-signature"],
          query = request.query.source, body = request.body, remote = request.remote }
        return { status = 202, body = "queued\n", headers = { ["X-Queued"] = "1" } }
      end, { prefix = true })
      server:route("GET", "/waits", function() loop.sleep(1) return 200, "never" end)
      server:route("GET", "/raises", function() error("no such thing", 0) end)
      server:start()
      local base = "http://127.0.0.1:" .. server.port
      local res = http.request({ method = "POST", url = base .. "/webhooks/contacts?source=crm", body = '{"id":7}',
        headers = { ["X-Signature"] = "abc", ["Content-Type"] = "application/json" }, attempts = 1 })
      assert.equal(202, res.status)
      assert.equal("queued\n", res.body)
      assert.equal("1", res.headers["x-queued"])
      -- a handler that waits is refused, and the server goes on
      -- (a 500 is raised by the client after its last attempt, with the body)
      local ok, err = pcall(http.request, { url = base .. "/waits", attempts = 1 })
      assert.is_false(ok)
      assert.matches("status 500 after 1 attempt; the body starts \"an HTTP handler: cannot wait", tostring(err), 1, true)
      ok, err = pcall(http.request, { url = base .. "/raises", attempts = 1 })
      assert.is_false(ok)
      assert.matches('the body starts "no such thing', tostring(err), 1, true)
      assert.equal(404, http.request({ url = base .. "/nothing", attempts = 1 }).status)
      res = http.request({ method = "GET", url = base .. "/webhooks/contacts", attempts = 1 })
      assert.equal(405, res.status)
      assert.equal("POST", res.headers["allow"])
      res = http.request({ method = "POST", url = base .. "/webhooks/x", body = string.rep("x", 100), attempts = 1 })
      assert.equal(413, res.status)
      server:close()
    end)
    assert.same({ method = "POST", rest = "contacts", signature = "abc", query = "crm", body = '{"id":7}',
      remote = "127.0.0.1" }, seen)
  end)

  it("sleeps in the loop's one wait between requests, and refuses an address it cannot bind", function()
    loop.run(function()
      local server = httpd.listen("127.0.0.1", 0)
      server:route("GET", "/", function() return 200, "hi" end)
      server:start()
      loop.sleep(0.05)
      local before = loop.stats()
      loop.sleep(0.5)
      local after = loop.stats()
      -- an idle server is one descriptor the loop waits on: a handful of
      -- waits in half a second, not a poll
      assert.is_true(after.waits - before.waits <= 4, (after.waits - before.waits) .. " waits")
      local taken = server.port
      local ok, err = pcall(httpd.listen, "127.0.0.1", taken)
      assert.is_false(ok)
      assert.matches("cannot listen on 127.0.0.1:" .. taken .. ": ", tostring(err), 1, true)
      assert.is_false((pcall(httpd.listen, "nonsense", 0)))
      server:close()
    end)
  end)
end)

-- Parses Prometheus' text format strictly: every line is a comment (HELP
-- or TYPE) or a sample; each sample's family was typed before it.
local function parse_metrics(text)
  local types, samples = {}, {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) == "#" then
      local kind, name, rest = line:match("^# (%u+) ([%w_:]+) (.+)$")
      assert.is_truthy(kind == "HELP" or kind == "TYPE", "bad comment: " .. line)
      if kind == "TYPE" then
        assert.is_truthy(rest == "counter" or rest == "gauge", line)
        types[name] = rest
      end
    else
      local name, labels, value = line:match("^([%a_:][%w_:]*){(.-)} (%S+)$")
      if not name then name, value = line:match("^([%a_:][%w_:]*) (%S+)$") labels = "" end
      assert.is_truthy(name, "bad sample: " .. line)
      assert.is_truthy(types[name], "sample before its TYPE: " .. line)
      assert.is_number(tonumber(value), line)
      local parsed = {}
      for k, v in (labels or ""):gmatch('([%a_][%w_]*)="(.-)"') do parsed[k] = v end
      samples[#samples + 1] = { name = name, labels = parsed, value = tonumber(value) }
    end
  end
  return samples, types
end

local function metric(samples, name, labels)
  for _, s in ipairs(samples) do
    if s.name == name then
      local all = true
      for k, v in pairs(labels or {}) do all = all and s.labels[k] == v end
      if all then return s.value end
    end
  end
  return nil
end

local function get(url)
  local pipe = io.popen("curl -s -w '\\n%{http_code} %{content_type}' " .. helpers.quote(url))
  local out = pipe:read("a")
  pipe:close()
  local body, code, ctype = out:match("^(.*)\n(%d+) (.*)$")
  return body, tonumber(code), ctype
end

describe("daemon --listen", function()
  local server, dir

  helpers.remote_for_each_test({ contacts = require("http_support").records(30) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  after_each(D.cleanup)

  local function start_daemon()
    local child = D.daemon(dir, { "--listen", "127.0.0.1:0" })
    local err = D.wait_log(child, "serving http://127.0.0.1:", 5)
    assert.is_truthy(err, D.stderr(child))
    local port = err:match("serving http://127%.0%.0%.1:(%d+)/")
    return child, "http://127.0.0.1:" .. port
  end

  it("serves /metrics in Prometheus' text format: runs, entities, failures, outbox, lag, HTTP requests and retries",
    function()
    helpers.write(dir .. "/job.lua", string.format([[
entity "contact" { email = "text", name = "text", age = "integer" }
local api = provider "http_json" { base_url = %q, page = { style = "page", size = 10 }, attempts = 3 }
sync "contacts" { remote = api "api/contacts", entity = "contact",
  mapping = { email = "email", name = "name", age = { "age", import = function(v) return v ~= 25 and v or "x" end } },
  import = { mode = "full" }, export = { on_change = true }, schedule = "every 1h" }
]], server.url))
    server.faults({ { path = "/api/contacts", kind = "status", status = 503, count = 1 } })
    local child, base = start_daemon()
    assert.is_truthy(D.wait_log(child, "contacts: 29 created", 10), D.stderr(child))
    local body, code, ctype = get(base .. "/metrics")
    assert.equal(200, code)
    assert.matches("^text/plain; version=0%.0%.4", ctype)
    local samples, types = parse_metrics(body)
    assert.equal("counter", types.entsync_runs_total)
    assert.equal("gauge", types.entsync_lag_seconds)
    local c = { sync = "contacts" }
    assert.equal(1, metric(samples, "entsync_runs_total", { sync = "contacts", status = "failed" }))
    assert.equal(29, metric(samples, "entsync_entities_total", { sync = "contacts", outcome = "created" }))
    assert.equal(1, metric(samples, "entsync_entities_total", { sync = "contacts", outcome = "failed" }))
    assert.equal(1, metric(samples, "entsync_failures", { sync = "contacts", direction = "import" }))
    assert.equal(0, metric(samples, "entsync_outbox_depth", c))
    assert.equal(0, metric(samples, "entsync_running", c))
    assert.equal(30, metric(samples, "entsync_mapped_entities", c) + 1)
    -- every request the remote saw was this sync's, the 503's retry among them
    assert.equal(#server.log(), metric(samples, "entsync_http_requests_total", c))
    assert.equal(1, metric(samples, "entsync_http_retries_total", c))
    assert.equal(0, metric(samples, "entsync_http_failures_total", c))
    assert.is_nil(metric(samples, "entsync_lag_seconds", c), "no good run yet: no lag")
    -- a local change waits in the outbox while the remote refuses it
    server.faults({ { path = "/api/contacts/3", kind = "status", status = 500, count = 100 } })
    helpers.sqlite3(dir .. "/entsync.db", "UPDATE contact SET name = 'Changed' WHERE email = 'c3@example.com'")
    assert.is_truthy(helpers.wait_for(function()
      local s = parse_metrics((get(base .. "/metrics")))
      return metric(s, "entsync_failures", { sync = "contacts", direction = "export" }) == 1
    end, 10), D.stderr(child))
    samples = parse_metrics((get(base .. "/metrics")))
    assert.is_true(metric(samples, "entsync_outbox_oldest_age_seconds", c) >= 0)
    assert.is_true(metric(samples, "entsync_http_failures_total", c) >= 1)
    assert.equal(0, (D.stop(child)))
  end)

  it("serves a status page that headless Chromium renders: the syncs, their last runs, failures and a lag chart",
    function()
    helpers.write(dir .. "/job.lua", string.format([[
entity "contact" { email = "text", name = "text", age = "integer" }
local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, attempts = 1 }
sync "contacts" { remote = api "api/contacts", entity = "contact", mapping = { email = "email", name = "name", age = "age" },
  import = { mode = "full" } }
sync "ages" { remote = api "api/contacts", entity = "contact", mapping = { age = "email" }, import = { mode = "full" } }
]], server.url))
    for _ = 1, 3 do assert.is_true(S.run(dir, "run").code <= 1) end
    local child, base = start_daemon()
    local profile = helpers.tmpdir()
    local flags = string.format("--headless --no-sandbox --disable-gpu --disable-background-networking "
      .. "--disable-component-update --disable-sync --no-first-run --user-data-dir=%s", helpers.quote(profile))
    local pipe = io.popen(string.format("timeout 60 chromium %s --dump-dom %s 2>/dev/null", flags, helpers.quote(base .. "/")))
    local dom = pipe:read("a")
    pipe:close()
    assert.matches("<title>entsync: job%.lua</title>", dom)
    assert.matches('<tr class="sync" data%-sync="contacts">', dom)
    assert.matches('<tr class="sync" data%-sync="ages">', dom)
    -- each sync's chart holds a dot per recent run, coloured by its status
    local runs = dom:match('<svg class="lag%-chart" data%-sync="contacts" data%-runs="(%d+)"')
    assert.equal("3", runs)
    local chart = dom:match('<svg class="lag%-chart" data%-sync="contacts".-</svg>')
    assert.equal(3, select(2, chart:gsub('<circle class="run ok"', "")))
    assert.matches("<polyline class=\"lag\"", chart)
    local ages = dom:match('<svg class="lag%-chart" data%-sync="ages".-</svg>')
    assert.equal(3, select(2, ages:gsub('<circle class="run failed"', "")))
    -- the failures of "ages" are listed with their error
    assert.matches('<tr class="failure"><td><code>%d+</code></td><td>import</td>', dom)
    assert.matches("expected integer", dom, 1, true)
    -- rendered: the screenshot holds the green of ok runs and the red of failed ones
    local png = profile .. "/page.png"
    os.execute(string.format("timeout 60 chromium %s --window-size=1000,1400 --screenshot=%s %s >/dev/null 2>&1", flags,
      helpers.quote(png), helpers.quote(base .. "/")))
    pipe = io.popen(string.format("python3 %s %s 1a7f37 cf222e", helpers.quote(helpers.root .. "/spec/support/png_colours.py"),
      helpers.quote(png)))
    local colours = cjson.decode(pipe:read("a"))
    pipe:close()
    assert.equal(1000, colours.width)
    assert.is_true(colours["1a7f37"] > 50, "no green on the page")
    assert.is_true(colours["cf222e"] > 50, "no red on the page")
    helpers.rmdir(profile)
    -- the same facts as JSON
    local body = get(base .. "/status.json")
    local doc = cjson.decode(body)
    assert.equal(2, #doc.syncs)
    assert.equal(0, (D.stop(child)))
  end)
end)
