-- Shared by spec/http_spec.lua and spec/http_json_spec.lua: records for the
-- fixture server, reading its request log (overlaps, peak concurrency, rates,
-- query strings), and http_json job files run through the real binary.

local core = require "entsync.core"
local helpers = require "helpers"

local M = {}

-- n contact records with distinct, increasing updated_at marks.
function M.records(n, first)
  first = first or 1
  local out = {}
  for i = first, first + n - 1 do
    out[#out + 1] = {
      id = i, email = "c" .. i .. "@example.com", name = "Contact " .. i, age = 20 + i % 50,
      updated_at = string.format("2026-01-01T%02d:%02d:%02dZ", i // 3600, (i // 60) % 60, i % 60),
    }
  end
  return out
end

-- The log entries (of the fixture's request log) matching a filter:
-- { method = "GET", path = "/page/contacts" } or a path prefix via `under`.
function M.entries(log, filter)
  filter = filter or {}
  local out = {}
  for _, e in ipairs(log) do
    if (not filter.method or e.method == filter.method)
        and (not filter.path or e.path == filter.path)
        and (not filter.under or e.path:sub(1, #filter.under) == filter.under) then
      out[#out + 1] = e
    end
  end
  return out
end

-- Do two log entries overlap in time at the server?
function M.overlap(a, b)
  return a.start < b["end"] and b.start < a["end"]
end

-- True if some pair of the entries overlapped in time.
function M.any_overlap(entries)
  for i = 1, #entries do
    for j = i + 1, #entries do
      if M.overlap(entries[i], entries[j]) then return true end
    end
  end
  return false
end

-- The largest number of entries in progress at one instant at the server.
function M.peak(entries)
  local events = {}
  for _, e in ipairs(entries) do
    events[#events + 1] = { t = e.start, d = 1 }
    events[#events + 1] = { t = e["end"], d = -1 }
  end
  -- at equal instants an end comes before a start: touching is not overlapping
  table.sort(events, function(a, b)
    if a.t ~= b.t then return a.t < b.t end
    return a.d < b.d
  end)
  local now, best = 0, 0
  for _, ev in ipairs(events) do
    now = now + ev.d
    if now > best then best = now end
  end
  return best
end

-- How entries reached the server against a rate of per_second requests a
-- second counted from t0 (core.sys.now() taken before the first could be
-- sent): a line for each entry that arrived before its slot ("n=3 at
-- +0.105s, its slot +0.200s") and for each three that arrived within one
-- interval ("n=2 to n=4 within 0.004s"), {} when the rate held. A limiter
-- lets the k-th request (in order of arrival) go no sooner than t0 +
-- (k - 1) / per_second, and a request reaches the server only after it
-- went, so a server slow to take one up (a loaded machine) never puts it
-- ahead of its slot. The gap between two arrivals does shrink when the
-- first is taken up late; three arriving within one interval (two gaps
-- that should be two intervals) are a burst, as when requests started
-- ahead go out together at a later wait.
function M.rate_breaches(entries, t0, per_second)
  local sorted = { table.unpack(entries) }
  table.sort(sorted, function(a, b) return a.start < b.start end)
  local interval, breaches = 1 / per_second, {}
  for k, e in ipairs(sorted) do
    local slot = (k - 1) * interval
    -- 5 ms for the two processes' readings of the same clock
    if e.start - t0 < slot - 0.005 then
      breaches[#breaches + 1] = string.format("%s at +%.3fs, its slot +%.3fs", e.query, e.start - t0, slot)
    end
    local before = sorted[k - 2]
    if before and e.start - before.start < interval then
      breaches[#breaches + 1] = string.format("%s to %s within %.3fs", before.query, e.query, e.start - before.start)
    end
  end
  return breaches
end

-- Parses a query string into { name = value } (last one wins) .
function M.query(qs)
  local out = {}
  for pair in (qs or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    out[k] = v
  end
  return out
end

-- Elapsed seconds of fn(), and its results.
function M.timed(fn, ...)
  local t0 = core.sys.monotonic()
  local results = table.pack(fn(...))
  return core.sys.monotonic() - t0, table.unpack(results, 1, results.n)
end

-- Lua source of a value (strings quoted, tables as constructors).
local function lua_source(value)
  if type(value) == "string" then return string.format("%q", value) end
  if type(value) ~= "table" then return tostring(value) end
  local keys = {}
  for k in pairs(value) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local key = type(k) == "number" and "" or (k:match("^[%a_][%w_]*$") and (k .. " = ") or ("[" .. string.format("%q", k) .. "] = "))
    parts[#parts + 1] = key .. lua_source(value[k])
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end
M.lua = lua_source

-- Writes job.lua into dir: one http_json provider with `config` (base_url
-- added), and syncs = { { name = "contacts", resource = "page/contacts",
-- entity = "contact", import = {...}, depends_on = {...} }, ... }.
-- Entities contact and other share the fields email, name, age.
function M.job(dir, base_url, config, syncs)
  local provider = {}
  for k, v in pairs(config or {}) do provider[k] = v end
  provider.base_url = provider.base_url or base_url
  local lines = {
    'entity "contact" { email = "text", name = "text", age = "integer" }',
    'entity "other" { email = "text", name = "text", age = "integer" }',
    "local api = provider \"http_json\" " .. lua_source(provider),
  }
  for _, s in ipairs(syncs or { {} }) do
    local import = s.import or { mode = "full" }
    lines[#lines + 1] = string.format(
      'sync %q { remote = api %q, entity = %q, mapping = { email = "email", name = "name", age = "age" }, '
        .. "import = %s%s }",
      s.name or "contacts", s.resource or "page/contacts", s.entity or "contact", lua_source(import),
      s.depends_on and (", depends_on = " .. lua_source(s.depends_on)) or "")
  end
  helpers.write(dir .. "/job.lua", table.concat(lines, "\n") .. "\n")
  return dir .. "/job.lua"
end

-- Runs the job in dir with args; returns { code, stdout, stderr }.
function M.run(dir, ...)
  return helpers.run(dir, { "job.lua", ... })
end

-- The rows of entity in the job's store, keyed by remote id:
-- { [remote_id] = "email|name|age" }, and how many id-map rows the sync has.
function M.stored(dir, sync, entity)
  local db = dir .. "/entsync.db"
  local out, n = {}, 0
  for _, row in ipairs(helpers.query(db, string.format([[SELECT m.remote_id, c.email, c.name, c.age
      FROM %s c JOIN entsync_map m ON m.local_id = c.id WHERE m.sync = ?1]], entity or "contact"),
      sync or "contacts")) do
    local id = tonumber(row.remote_id) or row.remote_id
    if out[id] then out[id] = "DUPLICATE" end
    out[id] = out[id] or string.format("%s|%s|%s", tostring(row.email), tostring(row.name), tostring(row.age))
    n = n + 1
  end
  return out, n
end

function M.count(dir, table_name)
  local rows = helpers.query(dir .. "/entsync.db", "SELECT count(*) AS n FROM " .. table_name)
  return rows[1].n
end

-- What records should look like once stored: { [id] = "email|name|age" }.
function M.expected(records)
  local out = {}
  for _, r in ipairs(records) do out[r.id] = string.format("%s|%s|%s", r.email, r.name, r.age) end
  return out
end

-- Runs the job in dir with args, killed after `seconds` (so a hang fails
-- the spec instead of stopping the suite): { code, stdout, stderr,
-- killed }; code 137 when it was killed.
function M.run_limited(dir, seconds, ...)
  local parts = {}
  for i, arg in ipairs({ "job.lua", ... }) do parts[i] = helpers.quote(arg) end
  local out, err = os.tmpname(), os.tmpname()
  local cmd = string.format("cd %s && timeout -s KILL %s %s %s </dev/null >%s 2>%s", helpers.quote(dir),
    tostring(seconds), helpers.quote(helpers.bin), table.concat(parts, " "), out, err)
  local _, _, code = os.execute(cmd)
  local result = { code = code, stdout = helpers.read(out) or "", stderr = helpers.read(err) or "" }
  result.killed = code == 137
  os.remove(out)
  os.remove(err)
  return result
end

-- Starts the job in the background (killed after `seconds`); returns a
-- child whose wait() gives { code, stdout, stderr } once it has exited.
function M.spawn(dir, seconds, ...)
  local parts = {}
  for i, arg in ipairs({ "job.lua", ... }) do parts[i] = helpers.quote(arg) end
  local base = os.tmpname()
  local out, err, rc = base .. ".out", base .. ".err", base .. ".rc"
  local inner = string.format("cd %s && timeout -s KILL %s %s %s </dev/null >%s 2>%s; echo $? >%s.tmp && mv %s.tmp %s",
    helpers.quote(dir), tostring(seconds), helpers.quote(helpers.bin), table.concat(parts, " "), out, err, rc, rc, rc)
  os.execute("sh -c " .. helpers.quote(inner) .. " >/dev/null 2>&1 &")
  local child = {}
  function child.wait(timeout)
    local text = helpers.wait_for(function() return helpers.read(rc) end, timeout or (seconds + 5))
    local result = { code = tonumber(text or ""), stdout = helpers.read(out) or "", stderr = helpers.read(err) or "" }
    for _, f in ipairs({ base, out, err, rc }) do os.remove(f) end
    return result
  end
  return child
end

-- An HTTPS server on 127.0.0.1 with a fresh self-signed certificate for
-- 127.0.0.1 (spec/support/http_tls_server.py) answering every GET with
-- body (a string, or a table sent as JSON). Returns { url, cafile,
-- accepted(), stop() }.
function M.tls_server(body)
  local dir = helpers.tmpdir()
  local cert, key, body_file, out = dir .. "/cert.pem", dir .. "/key.pem", dir .. "/body.json", dir .. "/out"
  helpers.write(body_file, type(body) == "string" and body or require("cjson").encode(body))
  local ok = os.execute(string.format("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
    .. "-keyout %s -out %s -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
    helpers.quote(key), helpers.quote(cert)))
  if not ok then
    helpers.rmdir(dir)
    error("http_support: openssl could not make a certificate")
  end
  local script = helpers.root .. "/spec/support/http_tls_server.py"
  local parent = io.popen("echo $PPID"):read("l")
  local python = io.open("/usr/bin/python3", "rb") and "/usr/bin/python3" or "python3"
  local pipe = io.popen(string.format("exec %s %s --cert %s --key %s --body %s --parent-pid %s >%s 2>/dev/null "
    .. "</dev/null & echo $!", python, helpers.quote(script), helpers.quote(cert), helpers.quote(key),
    helpers.quote(body_file), parent, helpers.quote(out)))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  local port = helpers.wait_for(function()
    return tonumber(((helpers.read(out) or ""):match("^LISTENING (%d+)")))
  end, 5)
  local server = { pid = pid, cafile = cert }
  function server.stop()
    if server.stopped then return end
    server.stopped = true
    if pid then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
    helpers.wait_for(function() return not helpers.alive(pid) end, 3)
    helpers.rmdir(dir)
  end
  if not port then
    server.stop()
    error("http_support: the TLS server did not start")
  end
  server.url = "https://127.0.0.1:" .. port
  -- connections accepted so far (each attempt of a client is one)
  function server.accepted()
    local n = 0
    for _ in (helpers.read(out) or ""):gmatch("ACCEPTED") do n = n + 1 end
    return n
  end
  return server
end

-- Runs each function of fns as a task of one loop and waits for all:
-- per function { true, its first result } or { false, its error }.
function M.tasks(fns)
  local loop = require "entsync.loop"
  return loop.run(function()
    local spawned, results = {}, {}
    for i, fn in ipairs(fns) do spawned[i] = loop.spawn(fn) end
    for i, task in ipairs(spawned) do
      local ok, value = task:wait()
      results[i] = { ok, value }
    end
    return results
  end)
end

return M
