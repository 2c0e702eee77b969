-- A provider for specs that need a run to take a while: it makes `count`
-- contacts, sleeps `list_delay` seconds when a run lists them (before any
-- batch starts) and `delay` seconds before each record (inside the batch).
-- The import specs copy it into a job's folder as providers/slow.lua.
--
--   provider "slow" { count = 20, delay = 0.05, list_delay = 1 }

local core = require "entsync.core"

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
  if self.config.list_delay then core.sleep(self.config.list_delay) end
  local i = query and query.offset or 0
  local reader = { position = i }
  function reader.next(r)
    if i >= n then return nil end
    core.sleep(delay)
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

return P
