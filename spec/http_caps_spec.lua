-- Caps on what a remote can make entsync do: a Retry-After longer than
-- max_retry_wait fails the request at once (not after hours of waiting);
-- a response over max_response is stopped as it streams, whether it
-- declares its length or comes chunked, and is not fetched again; a
-- certificate that does not verify is not retried. Both directions: the
-- import's pages and the export's writes. The fixture counts the requests.

local helpers = require "helpers"
local X = require "export_support"
local T = require "trust_support"
local H = require "http_support"

local BIG = 8 * 1024 * 1024

-- The job: contacts through http_json (resource: api/contacts, or the
-- one given), attempts = 4, one request at a time (no page fetched ahead:
-- the fault meets page 1), with extra provider settings.
local function job(dir, url, settings, resource)
  helpers.write(dir .. "/job.lua", table.concat({
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    string.format('local api = provider "http_json" { base_url = %q, page = { style = "%s", size = 100 }, '
      .. 'update_method = "PUT", attempts = 4, concurrency = 1, %s }', url, resource and "cursor" or "page", settings or ""),
    string.format('sync "contacts" { remote = api %q, entity = "contact",', resource or "api/contacts"),
    '  mapping = { email = "email", name = "name", age = "age" },',
    '  import = { mode = "full", changed = "updated_at" },',
    "  export = " .. (resource and "false" or "{ on_change = true }") .. " }",
  }, "\n") .. "\n")
end

-- Requests the fixture had for the method and path; for GET only those
-- of the query the fault was served to (pages are fetched ahead, side by
-- side: the faulted page's requests are the ones that count).
local function requests(server, method, path)
  local log = T.requests(server.log(), { method = method, path = path })
  if method ~= "GET" then return #log end
  local faulted
  for _, e in ipairs(log) do
    if e.fault then faulted = e.query end
  end
  local n = 0
  for _, e in ipairs(log) do
    if e.query == faulted then n = n + 1 end
  end
  return n
end

describe("caps on the remote's demands", function()
  local server, dir

  T.fresh_remote_for_each_test({ contacts = X.records(3, 101) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  -- A local row to create at the remote; the store is made by a first run.
  local function with_new_row()
    job(dir, server.url, "max_retry_wait = 5, max_response = 100000")
    local r = T.run(dir, { "run", "--no-progress" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@example.com', 'New', 7)")
    server.reset_log()
  end

  describe("Retry-After", function()
    it("import: an hour's Retry-After fails the page at once, naming max_retry_wait; one request", function()
      job(dir, server.url, "max_retry_wait = 5")
      server.faults { { kind = "retry_after", path = "/api/contacts", method = "GET", seconds = 3600 } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("Retry-After", r.stderr, 1, true)
      assert.matches("max_retry_wait (5s)", r.stderr, 1, true)
      assert.matches('sync "contacts": GET ', r.stderr, 1, true)
      assert.equal(1, requests(server, "GET", "/api/contacts"))
      assert.equal(0, T.value(dir, "SELECT count(*) FROM contact"))
    end)

    it("import: a Retry-After within max_retry_wait is waited for and the page fetched again", function()
      job(dir, server.url, "max_retry_wait = 5")
      server.faults { { kind = "retry_after", path = "/api/contacts", method = "GET", seconds = 1 } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(2, requests(server, "GET", "/api/contacts"))
      assert.equal(3, T.value(dir, "SELECT count(*) FROM contact"))
    end)

    it("the default max_retry_wait is 60 s: a Retry-After of 3600 is not waited for", function()
      job(dir, server.url, "")
      server.faults { { kind = "retry_after", path = "/api/contacts", method = "GET", seconds = 3600, date = true } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("max_retry_wait (60s)", r.stderr, 1, true)
      assert.equal(1, requests(server, "GET", "/api/contacts"))
    end)

    it("export: an hour's Retry-After on a create fails it at once, kept as a failure; one request", function()
      with_new_row()
      server.faults { { kind = "retry_after", path = "/api/contacts", method = "POST", seconds = 3600 } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(1, requests(server, "POST", "/api/contacts"), r.stdout .. r.stderr)
      local failures = X.export_failures(dir)
      local _, failure = next(failures)
      assert.is_not_nil(failure, r.stdout .. r.stderr)
      assert.matches("max_retry_wait (5s)", failure.error, 1, true)
      -- a retry sends it
      server.reset_log()
      r = T.run(dir, { "failures", "contacts", "retry" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(1, requests(server, "POST", "/api/contacts"))
    end)
  end)

  describe("max_response", function()
    for _, chunked in ipairs({ false, true }) do
      local how = chunked and "chunked" or "with a Content-Length"
      it("import: a page over max_response " .. how .. " is stopped as it streams, fetched once", function()
        job(dir, server.url, "max_response = 100000")
        server.faults { { kind = "huge", path = "/api/contacts", method = "GET", bytes = BIG, chunked = chunked } }
        local r = T.run(dir, { "run", "--no-progress" })
        assert.equal(1, r.code, r.stdout .. r.stderr)
        assert.matches("over max_response (100000 bytes)", r.stderr, 1, true)
        assert.matches("not retried", r.stderr, 1, true)
        assert.equal(1, requests(server, "GET", "/api/contacts"))
        local function faulted()
          for _, e in ipairs(server.log()) do
            if e.fault then return e end
          end
        end
        helpers.wait_for(function() return faulted()["end"] end, 5)
        local sent = faulted().sent
        assert.is_true(sent == nil or sent < BIG / 2, "the body was sent whole: " .. tostring(sent))
        assert.equal(0, T.value(dir, "SELECT count(*) FROM contact"))
      end)
    end

    it("export: a create answered over max_response fails once, kept as a failure", function()
      with_new_row()
      server.faults { { kind = "huge", path = "/api/contacts", method = "POST", bytes = BIG, chunked = true } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(1, requests(server, "POST", "/api/contacts"))
      local _, failure = next(X.export_failures(dir))
      assert.is_not_nil(failure, r.stdout .. r.stderr)
      assert.matches("over max_response (100000 bytes)", failure.error, 1, true)
    end)

    it("a response within max_response imports", function()
      job(dir, server.url, "max_response = 100000")
      server.faults { { kind = "huge", path = "/api/contacts/", bytes = 1000 } }
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.equal(3, T.value(dir, "SELECT count(*) FROM contact"))
    end)
  end)

  describe("TLS", function()
    local tls

    setup(function()
      tls = H.tls_server({ data = {}, next_cursor = require("fixture").null })
    end)

    teardown(function()
      if tls then tls.stop() end
    end)

    it("a certificate that does not verify is not retried: one connection for attempts = 4", function()
      job(dir, tls.url, "", "cursor/contacts")
      local before = tls.accepted()
      local r = T.run(dir, { "run", "--no-progress" })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("certificate", r.stderr:lower(), 1, true)
      assert.matches("not retried", r.stderr, 1, true)
      helpers.wait_for(function() return tls.accepted() > before end, 5)
      assert.equal(1, tls.accepted() - before)
    end)
  end)
end)
