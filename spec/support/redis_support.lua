-- A real redis-server for the specs: started on a private port in a temp
-- folder (no persistence), stopped by the spec.
--
--   local R = require "redis_support"
--   local server = R.start()     -- { port, dir, pid, cli(args...) -> stdout, stop() }

local core = require "entsync.core"
local helpers = require "helpers"

local M = {}

local function cli(port, ...)
  local parts = {}
  for i, arg in ipairs({ ... }) do parts[i] = helpers.quote(arg) end
  local pipe = io.popen(string.format("redis-cli -p %d %s 2>&1", port, table.concat(parts, " ")))
  local out = pipe:read("a")
  pipe:close()
  return (out:gsub("\n$", ""))
end

-- start() -> server. Tries ports until one is free.
function M.start()
  local dir = helpers.tmpdir()
  for _ = 1, 20 do
    local port = 20000 + math.random(0, 20000)
    local pipe = io.popen(string.format("cd %s && redis-server --port %d --bind 127.0.0.1 --save '' "
      .. "--appendonly no --daemonize no --logfile redis.log >/dev/null 2>&1 & echo $!", helpers.quote(dir), port))
    local pid = tonumber(pipe:read("l"))
    pipe:close()
    local up = helpers.wait_for(function()
      if not helpers.alive(pid) then return "gone" end
      return cli(port, "PING") == "PONG" and "up"
    end, 10)
    if up == "up" then
      local server = { port = port, dir = dir, pid = pid, url = "redis://127.0.0.1:" .. port }
      function server.cli(...) return cli(port, ...) end
      function server.stop()
        helpers.kill(pid, "TERM")
        helpers.wait_gone(pid, 10)
        helpers.rmdir(dir)
      end
      return server
    end
    helpers.kill(pid, "KILL")
  end
  helpers.rmdir(dir)
  error("redis_support: no redis-server could be started")
end

math.randomseed(core.sys.getpid() + math.floor(core.sys.now() * 1000) % 100000)

return M
