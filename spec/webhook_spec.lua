-- Webhooks: a real daemon (entsync-run job.lua daemon --listen), the real
-- fixture remote holding the records, and real POSTs signed by the openssl
-- command (not by entsync's own code) and sent by curl. A good signature
-- gets the named entities fetched (GETs at the remote) and stored; a bad
-- or missing one is 401 with nothing fetched or stored; a replayed event
-- is 200 with nothing fetched again; an id the remote no longer has
-- applies the deletes policy; /metrics and the status page are served
-- beside; a local change is still exported on change; an event accepted
-- by a daemon killed before its pull is pulled after the restart. The
-- secret appears in no log line, page or byte of the store.

local core = require "entsync.core"
local D = require "daemon_support"
local fixture = require "fixture"
local helpers = require "helpers"
local H = require "http_support"

local SECRET = "whsec-9f3a1c77-spec-only"

-- HMAC-SHA256 of body with secret, by the openssl command: hex digits.
local function openssl_sign(secret, body)
  local file = os.tmpname()
  helpers.write(file, body)
  local pipe = io.popen(string.format("openssl dgst -sha256 -hmac %s -r %s", helpers.quote(secret),
    helpers.quote(file)))
  local out = pipe:read("a")
  pipe:close()
  os.remove(file)
  return assert(out:match("^(%x+)"), out)
end

local function event(id, remote_ids)
  local parts = {}
  for i, v in ipairs(remote_ids) do parts[i] = string.format("%d", v) end
  return string.format('{"id":"%s","type":"contact.changed","data":{"ids":[%s]}}', id, table.concat(parts, ","))
end

local function job_text(url, extra)
  return string.format([[
entity "contact" { email = "text", name = "text" }
local api = provider "http_json" { base_url = %q, page = { style = "page", size = 100 }, attempts = 1 }
sync "contacts" { remote = api "api/contacts", entity = "contact", mapping = { email = "email", name = "name" },
  import = { mode = "full", deletes = "delete" }, %s
  webhook = { path = "/hooks/crm", secret = env "CRM_HOOK_SECRET", signature_header = "X-Signature",
    event_id = "id", ids = "data.ids", max_body = 4096 } }
]], url, extra or "")
end

describe("webhooks", function()
  local server, dir, base

  helpers.remote_for_each_test({ contacts = H.records(6) }, function(remote, tmp)
    server, dir = remote, tmp
  end)

  after_each(D.cleanup)

  local function start(extra)
    helpers.write(dir .. "/job.lua", job_text(server.url, extra))
    local child = D.start(dir, { "job.lua", "daemon", "--listen", "127.0.0.1:0" }, { CRM_HOOK_SECRET = SECRET })
    local err = D.wait_log(child, "daemon started", 10)
    assert(err, "the daemon did not start: " .. D.stderr(child))
    base = "http://127.0.0.1:" .. assert(err:match("serving http://127%.0%.0%.1:(%d+)/"))
    return child
  end

  local function post(body, signature, path)
    local headers = { ["Content-Type"] = "application/json" }
    if signature then headers["X-Signature"] = signature end
    return fixture.curl(base, "POST", path or "/hooks/crm", { body = body, headers = headers })
  end

  local function signed(body) return post(body, "sha256=" .. openssl_sign(SECRET, body)) end

  local function db() return dir .. "/entsync.db" end

  local function rows()
    local out = {}
    for _, row in ipairs(D.peek(db(), "SELECT email, name FROM contact ORDER BY email")) do out[row[1]] = row[2] end
    return out
  end

  local function wait_row(email, name)
    return helpers.wait_for(function() return rows()[email] == (name or rows()[email]) and rows()[email] ~= nil end, 10)
  end

  local function gets()
    local out = {}
    for _, e in ipairs(H.entries(server.log(), { method = "GET", under = "/api/contacts/" })) do
      out[#out + 1] = e.path
    end
    table.sort(out)
    return out
  end

  it("imports what a signed event names: a GET of each id at the remote, rows in the store, 202", function()
    local child = start()
    local res = signed(event("evt-1", { 1, 2 }))
    assert.equal(202, res.status, res.body)
    assert.equal("accepted", res.json.status)
    -- plain hex is taken too, in upper case as well
    res = post(event("evt-2", { 3 }), openssl_sign(SECRET, event("evt-2", { 3 })):upper())
    assert.equal(202, res.status, res.body)
    assert.is_truthy(wait_row("c3@example.com"), D.stderr(child))
    assert.is_truthy(wait_row("c1@example.com"))
    assert.same({ ["c1@example.com"] = "Contact 1", ["c2@example.com"] = "Contact 2", ["c3@example.com"] = "Contact 3" },
      rows())
    assert.same({ "/api/contacts/1", "/api/contacts/2", "/api/contacts/3" }, gets())
    -- both events are pulled, in runs of operation "webhook"; nothing was listed
    assert.is_truthy(helpers.wait_for(function()
      return D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events WHERE done_at IS NOT NULL") == "2"
    end, 5))
    assert.equal("3", D.peek_value(db(), "SELECT sum(created) FROM entsync_runs WHERE operation = 'webhook'"))
    assert.same({}, H.entries(server.log(), { under = "/page/" }))
    assert.equal(0, (D.stop(child)))
  end)

  it("refuses a bad or missing signature with 401: nothing fetched, nothing stored, no secret said", function()
    local child = start()
    local body = event("evt-bad", { 1, 2 })
    local good = openssl_sign(SECRET, body)
    local refused = {
      post(body, nil),                                               -- no header
      post(body, ""),                                                -- an empty one
      post(body, "sha256=" .. openssl_sign("not the secret", body)), -- another key
      post(body, "sha256=" .. good:sub(1, 63)),                      -- cut short
      post(body, "sha256=" .. good:sub(1, 63) .. (good:sub(64) == "0" and "1" or "0")), -- one digit off
      post(event("evt-bad", { 1, 2, 3 }), "sha256=" .. good),        -- a body changed under its signature
      post(body, "sha1=" .. good),                                   -- another scheme
    }
    for i, res in ipairs(refused) do assert.equal(401, res.status, "POST " .. i .. ": " .. res.body) end
    assert.equal("0", D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events"))
    assert.same({}, rows())
    -- a good event after them: once it is stored, the remote has seen its GET only
    assert.equal(202, signed(event("evt-good", { 4 })).status)
    assert.is_truthy(wait_row("c4@example.com"), D.stderr(child))
    assert.same({ "/api/contacts/4" }, gets())
    assert.same({ ["c4@example.com"] = "Contact 4" }, rows())
    assert.equal("evt-good", D.peek_value(db(), "SELECT group_concat(event_id) FROM entsync_webhook_events"))
    local err = D.stderr(child)
    assert.equal(7, D.count_log(child, "refused a POST from 127.0.0.1"))
    assert.matches("no X%-Signature header", err)
    assert.matches("the signature does not match", err)
    -- the secret and the signatures are nowhere: not in the log, the pages or the store's bytes
    local metrics = fixture.curl(base, "GET", "/metrics").body
    local page = fixture.curl(base, "GET", "/").body
    local status = fixture.curl(base, "GET", "/status.json").body
    assert.equal(0, (D.stop(child)))
    local stored = (helpers.read(db()) or "") .. (helpers.read(db() .. "-wal") or "")
    for what, text in pairs({ log = err, metrics = metrics, page = page, status = status, store = stored }) do
      assert.is_nil(text:find(SECRET, 1, true), "the secret is in the " .. what)
      assert.is_nil(text:find(good, 1, true), "a signature is in the " .. what)
    end
  end)

  it("acknowledges a replayed event with 200 and fetches nothing again", function()
    local child = start()
    local body = event("evt-7", { 1 })
    assert.equal(202, signed(body).status)
    assert.is_truthy(wait_row("c1@example.com"), D.stderr(child))
    -- the remote changes: a second fetch of 1 would store the new name
    local records = H.records(6)
    records[1].name = "Renamed"
    server.set_data({ contacts = records })
    for _ = 1, 3 do
      local res = signed(body)
      assert.equal(200, res.status)
      assert.equal("duplicate", res.json.status)
    end
    -- events are pulled in order: once the next one is stored, a pull of the replays would have been made
    assert.equal(202, signed(event("evt-8", { 2 })).status)
    assert.is_truthy(wait_row("c2@example.com"), D.stderr(child))
    assert.same({ "/api/contacts/1", "/api/contacts/2" }, gets())
    assert.equal("Contact 1", rows()["c1@example.com"])
    assert.equal("2", D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events"))
    assert.equal(0, (D.stop(child)))
    -- a new daemon knows the event from the store
    child = start()
    assert.equal(200, signed(body).status)
    assert.equal(0, (D.stop(child)))
  end)

  it("applies the deletes policy to an id the remote answers 404 for; an unknown one is nothing to do", function()
    local child = start()
    assert.equal(202, signed(event("evt-a", { 1, 2 })).status)
    assert.is_truthy(wait_row("c2@example.com"), D.stderr(child))
    local records = H.records(6)
    table.remove(records, 2)
    server.set_data({ contacts = records })
    assert.equal(202, signed(event("evt-b", { 2, 99 })).status)
    assert.is_truthy(helpers.wait_for(function() return rows()["c2@example.com"] == nil end, 10), D.stderr(child))
    assert.same({ ["c1@example.com"] = "Contact 1" }, rows())
    assert.same({ "/api/contacts/1", "/api/contacts/2", "/api/contacts/2", "/api/contacts/99" }, gets())
    assert.equal("0", D.peek_value(db(), "SELECT count(*) FROM entsync_map WHERE remote_id = 2"))
    assert.equal("0", D.peek_value(db(), "SELECT count(*) FROM entsync_failures"))
    assert.is_truthy(D.wait_log(child, "1 deleted", 5))
    assert.equal(0, (D.stop(child)))
  end)

  it("answers 405, 404, 413 and 400 as it should, and serves /metrics and the status page beside", function()
    local child = start()
    local res = fixture.curl(base, "GET", "/hooks/crm")
    assert.equal(405, res.status)
    assert.equal("POST", res.headers.allow)
    assert.equal(404, post(event("e", { 1 }), "sha256=" .. openssl_sign(SECRET, event("e", { 1 })), "/hooks/other")
      .status)
    local big = '{"id":"big","data":{"ids":[1]},"pad":"' .. string.rep("x", 5000) .. '"}'
    assert.equal(413, signed(big).status)
    assert.equal(400, signed("not json").status)
    res = signed('{"id":"no-ids","data":{}}')
    assert.equal(400, res.status)
    assert.matches("no list of remote ids at data.ids", res.body, 1, true)
    assert.equal(400, signed('{"data":{"ids":[1]}}').status)
    assert.equal(400, signed('{"id":"e","data":{"ids":[1.5]}}').status)
    assert.equal(202, signed(event("evt-m", { 5 })).status)
    assert.equal(401, post(event("evt-x", { 5 }), nil).status)
    assert.is_truthy(wait_row("c5@example.com"), D.stderr(child))
    assert.equal("0", D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events WHERE event_id <> 'evt-m'"))
    local metrics = fixture.curl(base, "GET", "/metrics")
    assert.equal(200, metrics.status)
    local function sample(outcome)
      return tonumber(metrics.body:match('entsync_webhook_requests_total{sync="contacts",outcome="' .. outcome
        .. '"} (%d+)'))
    end
    assert.equal(1, sample("accepted"))
    assert.equal(1, sample("unauthorized"))
    assert.equal(4, sample("invalid"))
    assert.equal(1, sample("too_large"))
    -- the run of the pull is counted once it ends (a moment after the queue is empty)
    assert.is_truthy(helpers.wait_for(function()
      return fixture.curl(base, "GET", "/metrics").body:find('entsync_entities_total{sync="contacts",outcome="created"} 1',
        1, true)
    end, 5))
    local page = fixture.curl(base, "GET", "/")
    assert.equal(200, page.status)
    assert.matches('<tr class="sync" data-sync="contacts">', page.body, 1, true)
    assert.equal(200, fixture.curl(base, "GET", "/status.json").status)
    assert.equal(0, (D.stop(child)))
  end)

  it("exports a local change on change beside the webhooks, and sends nothing back of what they imported", function()
    local child = start("export = { on_change = true },")
    assert.equal(202, signed(event("evt-1", { 1, 2 })).status)
    assert.is_truthy(wait_row("c2@example.com"), D.stderr(child))
    helpers.sqlite3(db(), "UPDATE contact SET name = 'Changed here' WHERE email = 'c1@example.com'")
    local put = helpers.wait_for(function()
      return H.entries(server.log(), { method = "PUT", path = "/api/contacts/1" })[1]
    end, 10)
    assert.is_truthy(put, D.stderr(child))
    assert.matches('"name": *"Changed here"', put.body)
    local remote_name
    for _, record in ipairs(server.data().contacts) do
      if record.id == 1 then remote_name = record.name end
    end
    assert.equal("Changed here", remote_name)
    -- webhooks go on: the remote's answer to the event is imported, and nothing of it is sent back
    assert.equal(202, signed(event("evt-2", { 3 })).status)
    assert.is_truthy(wait_row("c3@example.com"), D.stderr(child))
    assert.equal(0, (D.stop(child)))
    local writes = {}
    for _, e in ipairs(server.log()) do
      if e.method ~= "GET" then writes[#writes + 1] = e.method .. " " .. e.path end
    end
    assert.same({ "PUT /api/contacts/1" }, writes)
  end)

  it("lets an export and a scheduled run take the sync while events keep coming, and pulls them all", function()
    local child = start('export = { on_change = true }, schedule = "every 2s",')
    assert.is_truthy(D.wait_log(child, "contacts: 6 created", 10), D.stderr(child))
    local sent = os.tmpname()
    local t0 = os.time()
    local sender = io.popen(string.format("python3 %s %s %s 40 5 1 6 %s", helpers.quote(helpers.root
      .. "/spec/support/webhook_sender.py"), helpers.quote(base .. "/hooks/crm"), helpers.quote(SECRET),
      helpers.quote(sent)))
    -- a second into the stream, a local change
    assert.is_truthy(helpers.wait_for(function() return #(helpers.read(sent) or "") > 0 end, 5))
    core.sys.sleep(1)
    local changed_at = os.time()
    helpers.sqlite3(db(), "UPDATE contact SET name = 'Changed here' WHERE email = 'c1@example.com'")
    local put = helpers.wait_for(function()
      return H.entries(server.log(), { method = "PUT", path = "/api/contacts/1" })[1]
    end, 10)
    sender:close()
    local lines = {}
    for line in (helpers.read(sent) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
    os.remove(sent)
    assert.is_truthy(put, D.stderr(child))
    -- sent while the stream went on: the pull let go of the sync for the export
    local last_sent = tonumber(lines[#lines]:match("([%d.]+)$"))
    assert.is_true(put.start < last_sent, "the export waited for the stream to end")
    assert.is_true(put.start - changed_at < 3, "the export came late")
    for _, line in ipairs(lines) do assert.matches("^%d+ 202 ", line) end
    assert.is_true(#lines >= 150, "the sender sent " .. #lines)
    -- every event is pulled
    assert.is_truthy(helpers.wait_for(function()
      return D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events WHERE done_at IS NOT NULL") == tostring(#lines)
    end, 10), D.stderr(child))
    -- scheduled runs came while events flowed: none of their turns was skipped
    local runs = tonumber(D.peek_value(db(), string.format(
      "SELECT count(*) FROM entsync_runs WHERE operation = 'run' AND started_at > %d AND started_at < %f", t0, last_sent)))
    assert.is_true(runs >= 2, "scheduled runs during the stream: " .. runs)
    assert.is_nil(D.stderr(child):find("this turn is skipped", 1, true), D.stderr(child))
    assert.equal(0, (D.stop(child)))
  end)

  it("serves the new path after SIGHUP reloads a job whose webhook moved, and pulls there", function()
    local child = start()
    assert.equal(202, signed(event("evt-r1", { 1 })).status)
    assert.is_truthy(wait_row("c1@example.com"), D.stderr(child))
    helpers.write(dir .. "/job.lua", (job_text(server.url):gsub('"/hooks/crm"', '"/hooks/moved"')))
    D.signal(child, "HUP")
    assert.is_truthy(D.wait_log(child, "reloaded job.lua", 10), D.stderr(child))
    local body = event("evt-r2", { 2 })
    local res = signed(body)
    assert.equal(404, res.status)
    res = post(body, "sha256=" .. openssl_sign(SECRET, body), "/hooks/moved")
    assert.equal(202, res.status, res.body)
    assert.is_truthy(wait_row("c2@example.com"), D.stderr(child))
    -- the event id is the sync's, whatever the path: a replay there is known
    assert.equal(200, post(event("evt-r1", { 1 }), "sha256=" .. openssl_sign(SECRET, event("evt-r1", { 1 })),
      "/hooks/moved").status)
    assert.same({ "/api/contacts/1", "/api/contacts/2" }, gets())
    assert.equal(0, (D.stop(child)))
  end)

  it("pulls after a restart an event accepted by a daemon killed before its pull committed", function()
    local child = start()
    server.latency(3000)
    assert.equal(202, signed(event("evt-k", { 6 })).status)
    assert.is_truthy(helpers.wait_for(function() return #gets() == 1 end, 5))
    D.signal(child, "KILL")
    assert.is_truthy(D.exit_code(child, 5))
    assert.equal("1", D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events WHERE done_at IS NULL"))
    assert.same({}, rows())
    server.latency(0)
    child = start()
    assert.is_truthy(wait_row("c6@example.com"), D.stderr(child))
    assert.equal("0", D.peek_value(db(), "SELECT count(*) FROM entsync_webhook_events WHERE done_at IS NULL"))
    assert.equal(0, (D.stop(child)))
  end)
end)

describe("webhook settings", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  local function check(webhook, env, more)
    helpers.write(dir .. "/job.lua", string.format([[
entity "contact" { email = "text" }
local api = provider "http_json" { base_url = "http://127.0.0.1:9" }
sync "contacts" { remote = api "contacts", entity = "contact", mapping = { email = "email" },
  webhook = %s }
%s]], webhook, more or ""))
    return helpers.run(dir, { "job.lua", "check" }, env)
  end

  it("are checked at load, each error naming the job's line and the sync, never showing the secret", function()
    local cases = {
      { '{ path = "/h", ids = "ids" }', "webhook setting secret is required" },
      { '{ path = "/h", secret = env "NO_SUCH_HOOK_SECRET", ids = "ids" }',
        "environment variable NO_SUCH_HOOK_SECRET is not set" },
      { '{ path = "/h", secret = 271828, ids = "ids" }', "webhook secret must be a string" },
      { '{ path = "/h", secret = "", ids = "ids" }', "webhook secret is empty" },
      { '{ path = "h", secret = "k", ids = "ids" }', "webhook path must be an absolute URL path" },
      { '{ path = "/metrics", secret = "k", ids = "ids" }', "is the daemon's own" },
      { '{ path = "/h", secret = "k" }', "webhook needs where the changed remote ids are" },
      { '{ path = "/h", secret = "k", ids = "a", id = "b" }', "not both" },
      { '{ path = "/h", secret = "k", ids = "a..[x]" }', "webhook ids must be a path in the JSON body" },
      { '{ path = "/h", secret = "k", ids = "a", sigature_header = "X" }',
        "unknown setting sigature_header (did you mean signature_header?)" },
      { '{ path = "/h", secret = "k", ids = "a", max_body = 0 }', "setting max_body must be a positive integer" },
      { '{ path = "/h", secret = "k", ids = "a", keep_days = -1 }', "keep_days must be a positive number" },
      { '"/h"', "webhook must be a table" },
    }
    for _, case in ipairs(cases) do
      local res = check(case[1])
      assert.equal(2, res.code, case[1] .. ": " .. res.stdout .. res.stderr)
      local out = res.stdout .. res.stderr
      assert.matches("job.lua:3: sync \"contacts\": ", out, 1, true)
      assert.matches(case[2], out, 1, true)
      assert.is_nil(out:find("271828", 1, true), "the secret is shown")
    end
    local res = check('{ path = "/h", secret = "k", ids = "a" }', nil, [[
sync "others" { remote = api "others", entity = "contact", mapping = { email = "email" },
  webhook = { path = "/h", secret = "k", id = "id" } }]])
    assert.equal(2, res.code)
    assert.matches('webhook path "/h" is sync "contacts"\'s already', res.stdout .. res.stderr, 1, true)
    res = check('{ path = "/h", secret = "k", ids = "a" }', nil, "")
    assert.equal(0, res.code, res.stdout .. res.stderr)
    assert.matches('webhook POST /h (ids at a)', res.stdout, 1, true)
  end)

  it("need the daemon to listen: without --listen it exits 2 naming the sync", function()
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text" }
local api = provider "http_json" { base_url = "http://127.0.0.1:9" }
sync "contacts" { remote = api "contacts", entity = "contact", mapping = { email = "email" },
  webhook = { path = "/h", secret = env "HOOK_SECRET", ids = "ids" } }
]])
    local res = helpers.run(dir, { "job.lua", "daemon" }, { HOOK_SECRET = SECRET })
    assert.equal(2, res.code)
    assert.matches('sync "contacts" declares a webhook: start the daemon with --listen HOST:PORT', res.stderr, 1, true)
    assert.is_nil(res.stderr:find(SECRET, 1, true))
  end)

  it("want a provider that can fetch one record (get)", function()
    os.execute("mkdir -p " .. helpers.quote(dir .. "/providers"))
    helpers.write(dir .. "/providers/listonly.lua", [[
return { new = function() return { list = function() return nil, "nothing" end } end }
]])
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text" }
local remote = provider "listonly" {}
sync "contacts" { remote = remote, entity = "contact", mapping = { email = "email" },
  webhook = { path = "/h", secret = "k", ids = "ids" } }
]])
    local res = helpers.run(dir, { "job.lua", "check" })
    assert.equal(2, res.code, res.stdout .. res.stderr)
    assert.matches("has no get, which its webhook fetches each remote id a notification names", res.stdout
      .. res.stderr, 1, true)
  end)
end)

describe("examples/webhooks", function()
  it("runs as its README says: a signed POST imports the change, a replay is a duplicate, a bad one is refused",
    function()
    local readme = helpers.read(helpers.root .. "/examples/webhooks/README.md")
    local block = assert(readme:match("```sh\n(.-)```"), "no sh block in examples/webhooks/README.md")
    local top = helpers.tmpdir()
    -- a copy of the tree's top: the example, the fixture server, bin/entsync-run (the binary under test)
    os.execute(string.format("mkdir -p %s/bin %s/examples %s/spec && cp -R %s %s/examples/ && cp -R %s %s/spec/ "
      .. "&& ln -s %s %s/bin/entsync-run", helpers.quote(top), helpers.quote(top), helpers.quote(top),
      helpers.quote(helpers.root .. "/examples/webhooks"), helpers.quote(top),
      helpers.quote(helpers.root .. "/spec/support"), helpers.quote(top), helpers.quote(helpers.bin),
      helpers.quote(top)))
    local pipe = io.popen("python3 -c 'import socket\nfor _ in range(2):\n s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
      .. "print(s.getsockname()[1]); s.close()'")
    local remote_port, listen_port = pipe:read("l"), pipe:read("l")
    pipe:close()
    -- as typed at a prompt, each line runs once the one before has done its work: here, the
    -- servers are waited for, and the store is read once the pull has had a moment
    local lines = { "pids=", "trap 'kill $pids 2>/dev/null' EXIT INT TERM",
      "export CRM_URL=http://127.0.0.1:" .. remote_port }
    for line in block:gsub("8765", remote_port):gsub("9464", listen_port):gmatch("[^\n]+") do
      if line:match("^sqlite3 ") then lines[#lines + 1] = "sleep 1" end
      if line:match("&$") then
        -- the servers' output goes elsewhere, so this pipe ends with the script
        lines[#lines + 1] = line:gsub("&$", ">/dev/null 2>&1 &")
        lines[#lines + 1] = 'pids="$pids $!"'
      else
        lines[#lines + 1] = line
      end
      if line:match("fixture_server%.py") then
        lines[#lines + 1] = "until curl -s http://127.0.0.1:" .. remote_port .. "/_control/ping >/dev/null; do sleep 0.1; done"
      elseif line:match("daemon %-%-listen") then
        lines[#lines + 1] = "until curl -s http://127.0.0.1:" .. listen_port .. "/metrics >/dev/null; do sleep 0.1; done"
      end
      if not line:match("^#") and not line:match("&$") and not line:match("^export ") and not line:match("\\$") then
        lines[#lines + 1] = "echo"
      end
    end
    helpers.write(top .. "/example.sh", "set -e\n" .. table.concat(lines, "\n") .. "\n")
    pipe = io.popen(string.format("cd %s && timeout 60 sh example.sh 2>&1; echo \"rc=$?\"", helpers.quote(top)))
    local out = pipe:read("a")
    pipe:close()
    helpers.rmdir(top)
    assert.matches("rc=0\n$", out)
    assert.matches('{"status":"accepted"}', out, 1, true)
    assert.matches("\nAnn Lee\n", out)
    assert.matches('{"status":"duplicate"}', out, 1, true)
    assert.matches('{"status":"unauthorized"}', out, 1, true)
  end)
end)
