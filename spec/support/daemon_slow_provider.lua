-- A provider for the daemon specs whose reads take a while the way a
-- remote's do: each record costs `delay` seconds of http.sleep, which
-- yields to the scheduler inside entsync (so the daemon's loop keeps
-- turning during a run) and blocks plainly elsewhere. `count` contacts,
-- ids 1..count, the same every time. It takes writes (and forgets them).
--
--   provider "slow" { count = 60, delay = 0.03 }

local http = require "entsync.http"

local P = {}
P.__index = P

local function record(i)
  return { id = i, email = "s" .. i .. "@example.com", name = "Slow " .. i, age = i % 100 }
end

function P.validate(config)
  if math.type(config.count) ~= "integer" then return nil, "count must be an integer" end
  if type(config.delay) ~= "number" then return nil, "delay must be a number" end
  return true
end

function P.new(config)
  return setmetatable({ config = config }, P)
end

function P:list(_, query)
  local n, delay = self.config.count, self.config.delay
  local i = query and query.offset or 0
  local reader = { position = i }
  function reader.next(r)
    if i >= n then return nil end
    http.sleep(delay)
    i = i + 1
    r.position = i
    return record(i)
  end
  return reader
end

function P:get(_, id)
  local i = math.tointeger(tonumber(id))
  if not i or i < 1 or i > self.config.count then return nil, "not found" end
  return record(i)
end

-- Writes go nowhere but take `delay` too; a created record's id is the
-- local id it came from, offset so it never meets a listed one.
function P:create(_, _, ctx)
  http.sleep(self.config.delay)
  return tostring(100000 + (ctx and ctx.local_id or 0)), nil
end

function P:update()
  http.sleep(self.config.delay)
  return nil
end

return P
