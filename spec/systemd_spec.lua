-- The daemon under a service manager: the notify protocol read from a
-- real AF_UNIX datagram socket (READY=1 once it serves, WATCHDOG=1 at half
-- the watchdog's period, RELOADING=1 and READY=1 around a SIGHUP,
-- STOPPING=1), an abstract socket name, and the unit shipped in
-- contrib/systemd checked by systemd-analyze.

local helpers = require "helpers"
local S = require "import_support"
local D = require "daemon_support"

local dir

before_each(function()
  dir = helpers.tmpdir()
  S.job(dir, {})
  S.data(dir, { S.contact(1) })
end)

after_each(function()
  D.cleanup()
  S.cleanup()
  helpers.rmdir(dir)
end)

-- A listener on an AF_UNIX datagram socket that writes each datagram it
-- gets to a file, a line each, until it is killed (at most 30 s).
local LISTENER = [[
import socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + path[1:] if path.startswith("@") else path)
s.settimeout(0.2)
end = time.time() + 30
open(out + ".ready", "w").close()
while time.time() < end:
    try:
        data = s.recv(4096)
    except socket.timeout:
        continue
    with open(out, "a") as f:
        f.write(data.decode().replace("\n", "|") + "\n")
]]

local function listen(socket_path)
  local script, out = dir .. "/listener.py", dir .. "/notes.txt"
  helpers.write(script, LISTENER)
  local pipe = io.popen(string.format("python3 %s %s %s >/dev/null 2>&1 & echo $!", helpers.quote(script),
    helpers.quote(socket_path), helpers.quote(out)))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  S.own(pid)
  assert.is_truthy(helpers.wait_for(function() return helpers.read(out .. ".ready") end, 5))
  return out
end

local function notes(out)
  local list = {}
  for line in (helpers.read(out) or ""):gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

local function count(list, text)
  local n = 0
  for _, line in ipairs(list) do if line:find(text, 1, true) then n = n + 1 end end
  return n
end

describe("under a service manager", function()
  it("says READY=1 once it serves, pings the watchdog, says RELOADING=1 and READY=1 on SIGHUP, STOPPING=1 on SIGTERM",
    function()
    local socket_path = dir .. "/notify.sock"
    local out = listen(socket_path)
    local child = D.start(dir, { "job.lua", "daemon", "--listen", "127.0.0.1:0" },
      { NOTIFY_SOCKET = socket_path, WATCHDOG_USEC = "200000" })
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "READY=1") > 0 end, 10), D.stderr(child))
    -- ready means served: the HTTP server answers at once
    local port = D.stderr(child):match("serving http://127%.0%.0%.1:(%d+)/")
    assert.is_truthy(port, D.stderr(child))
    local pipe = io.popen("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:" .. port .. "/metrics")
    assert.equal("200", pipe:read("a"))
    pipe:close()
    assert.matches("^READY=1|STATUS=serving http://127%.0%.0%.1:%d+/$", notes(out)[1])
    -- pings every 0.1 s
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "WATCHDOG=1") >= 5 end, 5), D.stderr(child))
    D.signal(child, "HUP")
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "RELOADING=1") == 1 end, 5))
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "READY=1") == 2 end, 5))
    assert.equal(0, (D.stop(child)))
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "STOPPING=1") == 1 end, 5))
    local list = notes(out)
    assert.equal("STOPPING=1", list[#list])
  end)

  it("writes to an abstract socket name, and without NOTIFY_SOCKET sends nothing and says nothing", function()
    local name = "@entsync-spec-" .. tostring(helpers.tmpdir():match("[^/]+$"))
    local out = listen(name)
    local child = D.start(dir, { "job.lua", "daemon" }, { NOTIFY_SOCKET = name })
    assert.is_truthy(helpers.wait_for(function() return count(notes(out), "READY=1") > 0 end, 10), D.stderr(child))
    -- no watchdog was asked for: no pings
    assert.equal(0, count(notes(out), "WATCHDOG=1"))
    assert.equal(0, (D.stop(child)))
    child = D.daemon(dir)
    assert.equal(0, (D.stop(child)))
    assert.is_nil(D.stderr(child):find("service manager", 1, true))
  end)

  it("ships a unit systemd-analyze finds valid, of Type=notify with a watchdog", function()
    local unit = helpers.read(helpers.root .. "/contrib/systemd/entsync@.service")
    for _, line in ipairs({ "Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM",
        "RestartPreventExitStatus=2 3" }) do
      assert.is_truthy(unit:find("\n" .. line, 1, true), line .. " missing from the unit")
    end
    -- verified with the binary built here in place of the installed one
    local units = helpers.tmpdir()
    helpers.write(units .. "/entsync@.service", (unit:gsub("/usr/local/bin/entsync%-run", helpers.bin)))
    local pipe = io.popen(string.format("cd %s && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "
      .. "entsync@spec.service 2>&1; echo rc=$?", helpers.quote(units)))
    local result = pipe:read("a")
    pipe:close()
    helpers.rmdir(units)
    assert.matches("rc=0\n$", result)
    assert.is_nil(result:find("entsync@", 1, true), result)
  end)
end)
