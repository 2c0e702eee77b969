-- A real HTTP remote for the specs: starts spec/support/fixture_server.py
-- (Python 3 standard library, 127.0.0.1 only) in the background and drives
-- its control endpoints with the curl CLI.
--
--   local fixture = require "fixture"
--   local server = fixture.start({ resources = { contacts = { ... } } },
--                                { latency_ms = 0, auth = { bearer = "T" } })
--   server.url                      -- "http://127.0.0.1:PORT"
--   server.faults { { path = "/page/contacts", kind = "status", status = 500 } }
--   local res = server.request("GET", "/page/contacts?per_page=2")
--   server.stop()
--
-- Every method works called with either a dot or a colon. Nothing here needs
-- entsync itself, so any spec (or a REPL) can use it.

local cjson = require("cjson").new()

local M = {}

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = quote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local content = f:read("a")
  f:close()
  return content
end

local function write_file(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

local function shell_output(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  return out, ok, how, code
end

local function sleep(seconds)
  os.execute("sleep " .. string.format("%.3f", seconds))
end

-- This Lua process's pid: the parent of the shell io.popen starts. The server
-- exits by itself once it is gone, so a crashed spec never leaves it running.
local own_pid = tonumber((shell_output("echo $PPID")):match("%d+"))

local here = (debug.getinfo(1, "S").source:match("^@(.*/)[^/]*$")) or "./"
local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = os.getenv("PWD")
  if not cwd or cwd == "" then cwd = (shell_output("pwd")):gsub("%s+$", "") end
  return cwd .. "/" .. path:gsub("^%./", "")
end
M.script = absolute(here .. "fixture_server.py")

-- /usr/bin/python3 skips version-manager shims that add half a second to
-- every start; ENTSYNC_FIXTURE_PYTHON overrides.
local function python()
  local env = os.getenv("ENTSYNC_FIXTURE_PYTHON")
  if env and env ~= "" then return env end
  local f = io.open("/usr/bin/python3", "rb")
  if f then
    f:close()
    return "/usr/bin/python3"
  end
  return "python3"
end

-- True while pid is a live (not zombie) process.
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then return not stat:match("^%d+ %b() [ZX]") end
  if read_file("/proc/self/stat") then return false end -- /proc works: pid is gone
  local _, _, code = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return code == 0
end
M.alive = alive

local function encode(value)
  if type(value) == "string" then return value end
  return cjson.encode(value)
end

local function decode(text)
  if text == nil or text == "" then return nil end
  local ok, value = pcall(cjson.decode, text)
  if ok then return value end
  return nil, value
end
M.decode = decode
M.null = cjson.null

-- One HTTP request through the curl CLI. target is a path on base_url or an
-- absolute URL; opts: headers = { name = value }, body = string or table
-- (sent as JSON), timeout (seconds, default 10), user = "u:p" (basic auth).
-- Returns { status (0 when no response), body, headers (lower-case names),
-- exit (curl's exit code: 0, 18 truncated, 28 timeout, 52 empty reply...),
-- time (seconds), json (decoded body or nil) }.
function M.curl(base_url, method, target, opts)
  opts = opts or {}
  local url = target:match("^https?://") and target or (base_url .. target)
  local base = os.tmpname()
  local head, out, body_file = base .. ".h", base .. ".b", nil
  local args = { "curl", "-s", "--noproxy", "'*'", "-m", tostring(opts.timeout or 10),
    "-X", quote(method), "-D", quote(head), "-o", quote(out), "-w", quote("%{http_code} %{time_total}") }
  for name, value in pairs(opts.headers or {}) do
    args[#args + 1] = "-H " .. quote(name .. ": " .. value)
  end
  if opts.user then args[#args + 1] = "-u " .. quote(opts.user) end
  if opts.body ~= nil then
    body_file = base .. ".in"
    write_file(body_file, encode(opts.body))
    if type(opts.body) ~= "string" and not (opts.headers or {})["Content-Type"] then
      args[#args + 1] = "-H 'Content-Type: application/json'"
    end
    args[#args + 1] = "--data-binary @" .. quote(body_file)
  end
  args[#args + 1] = quote(url)
  local written, _, _, code = shell_output(table.concat(args, " ") .. " 2>/dev/null")
  local status, seconds = written:match("(%d+) ([%d.]+)")
  local res = { status = tonumber(status) or 0, time = tonumber(seconds), exit = code or 0,
    body = read_file(out) or "", headers = {} }
  -- the last header block (a 100 Continue comes first)
  local raw = (read_file(head) or ""):gsub("\r", "")
  local last = raw
  for block in raw:gmatch("(HTTP/[^\n]*\n.-)\n\n") do last = block end
  for name, value in last:gmatch("\n([^:\n]+):%s*([^\n]*)") do res.headers[name:lower()] = value end
  res.json = decode(res.body)
  for _, f in ipairs({ base, head, out, body_file }) do os.remove(f) end
  return res
end

local servers = setmetatable({}, { __mode = "k" })

-- Starts a server. data: { resources = { name = { records } } } (or the
-- resources table itself, or nil); opts: latency_ms, auth (a table as in
-- --auth), max_seconds (default 600), verbose, timeout (seconds to wait for
-- the LISTENING line, default 5).
function M.start(data, opts)
  opts = opts or {}
  data = data or {}
  if data.resources == nil then data = { resources = data } end
  local base = os.tmpname()
  local files = { base = base, data = base .. ".json", out = base .. ".out", err = base .. ".err" }
  write_file(files.data, encode(data))
  local args = { "exec", quote(python()), quote(M.script), "--data", quote(files.data), "--port",
    tostring(opts.port or 0), "--latency-ms", tostring(opts.latency_ms or 0), "--max-seconds",
    tostring(opts.max_seconds or 600) }
  if own_pid then args[#args + 1] = "--parent-pid " .. own_pid end
  if opts.auth then args[#args + 1] = "--auth " .. quote(encode(opts.auth)) end
  if opts.verbose then args[#args + 1] = "--verbose" end
  -- the server deletes these itself when it stops, even if this process died
  for _, f in pairs(files) do args[#args + 1] = "--remove-on-exit " .. quote(f) end
  local cmd = table.concat(args, " ") .. " >" .. quote(files.out) .. " 2>" .. quote(files.err) ..
    " </dev/null & echo $!"
  local pid = tonumber((shell_output(cmd)):match("%d+"))
  local function cleanup()
    for _, f in pairs(files) do os.remove(f) end
  end
  if not pid then
    cleanup()
    error("fixture: could not start " .. M.script)
  end

  -- wait for "LISTENING <port>": sleeps of 20 ms (each also pays a fork),
  -- with a wall-clock cap in case the sleeps are slower than that
  local timeout = opts.timeout or 5
  local deadline = os.time() + math.ceil(timeout) + 1
  local port
  for i = 0, math.huge do
    port = tonumber(((read_file(files.out) or ""):match("^LISTENING (%d+)")))
    if port then break end
    if not alive(pid) or i * 0.02 > timeout or os.time() > deadline then
      local err = read_file(files.err) or ""
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      cleanup()
      error("fixture: server did not start: " .. err, 2)
    end
    sleep(0.02)
  end

  local server = { port = port, pid = pid, url = "http://127.0.0.1:" .. port, files = files }
  local stopped = false

  local function method(f)
    return function(first, ...)
      if first == server then return f(...) end
      return f(first, ...)
    end
  end

  -- A control call; returns the decoded reply, or raises on a non-2xx status.
  local function control(verb, path, body)
    local res = M.curl(server.url, verb, "/_control/" .. path,
      { body = body ~= nil and encode(body) or nil, headers = { ["Content-Type"] = "application/json" } })
    if res.status < 200 or res.status > 299 then
      error(string.format("fixture: %s /_control/%s -> %d (curl exit %d): %s", verb, path, res.status, res.exit,
        res.body), 3)
    end
    return res.json
  end
  server.control = method(control)

  server.stop = method(function()
    if stopped then return end
    stopped = true
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    for _ = 1, 250 do
      if not alive(pid) then break end
      sleep(0.02)
    end
    if alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    cleanup()
    servers[server] = nil
  end)
  server.running = method(function() return not stopped and alive(pid) end)
  server.stderr = method(function() return read_file(files.err) or "" end)

  server.faults = method(function(list) return control("POST", "faults", list or {}) end)
  server.pending_faults = method(function() return control("GET", "faults") end)
  server.revoke = method(function() return control("POST", "revoke", {}) end)
  server.log = method(function() return control("GET", "log") end)
  server.reset_log = method(function() return control("POST", "reset_log", {}) end)
  server.data = method(function() return control("GET", "data") end)
  server.set_data = method(function(resources)
    resources = resources or {}
    if resources.resources == nil then resources = { resources = resources } end
    return control("POST", "data", resources)
  end)
  server.latency = method(function(ms) return control("POST", "latency", { ms = ms or 0 }) end)
  server.auth = method(function(auth) return control("POST", "auth", auth or {}) end)
  -- Back to the start-up state in one call: the data given to start (or
  -- these resources), its auth and latency; no faults, tokens or log.
  server.reset = method(function(resources)
    if resources ~= nil and resources.resources == nil then resources = { resources = resources } end
    return control("POST", "reset", resources or {})
  end)
  server.request = method(function(verb, target, req_opts)
    return M.curl(server.url, verb, target, req_opts)
  end)

  setmetatable(server, { __gc = function() server.stop() end, __close = function() server.stop() end })
  servers[server] = true
  return server
end

-- Stops every server this module started and has not stopped yet.
function M.stop_all()
  local list = {}
  for s in pairs(servers) do list[#list + 1] = s end
  for _, s in ipairs(list) do s.stop() end
end

return M
