-- A provider for specs that need a run to take a while, the way a
-- remote's reads do: `count` contacts, ids 1..count, the same every time;
-- each record costs `delay` seconds and a listing `list_delay` more before
-- its first record (before any batch starts). It sleeps through
-- http.sleep, which yields to the scheduler inside entsync (so the
-- daemon's loop keeps turning during a run) and blocks plainly elsewhere.
-- It takes writes (and forgets them). helpers.install_slow_provider copies
-- it into a job's folder as providers/slow.lua.
--
--   provider "slow" { count = 60, delay = 0.03, list_delay = 1 }

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
  if self.config.list_delay then http.sleep(self.config.list_delay) end
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
