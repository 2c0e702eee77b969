-- entsync.progress: the live progress line of a run on a terminal.
--
-- Redrawn at most five times a second on stderr: records, rate, and the
-- ETA when the provider knows the total. Off when stderr is not a
-- terminal or with --no-progress; the summary line is printed either way.

local core = require "entsync.core"

local M = {}

local Meter = {}
Meter.__index = Meter

local function silent() end
local quiet = { tick = silent, finish = silent }

local function clock(seconds)
  seconds = math.max(0, math.floor(seconds + 0.5))
  return string.format("%d:%02d:%02d", seconds // 3600, seconds // 60 % 60, seconds % 60)
end

-- enabled: true, false or nil (nil: only when stderr is a terminal).
function M.new(enabled, label, total)
  if enabled == false or (enabled == nil and not core.sys.isatty(2)) then return quiet end
  return setmetatable({ label = label, total = total, started = core.sys.monotonic(), drawn = 0, shown = false }, Meter)
end

function Meter:tick(count)
  local now = core.sys.monotonic()
  if now - self.drawn < 0.2 then return end
  self.drawn = now
  local elapsed = now - self.started
  local rate = elapsed > 0 and count / elapsed or 0
  local line = string.format("%s: %d records, %.0f/s", self.label, count, rate)
  if self.total and self.total > 0 and rate > 0 then
    line = line .. string.format(", %d%%, ETA %s", math.floor(100 * count / self.total),
      clock((self.total - count) / rate))
  end
  io.stderr:write("\r\27[K", line)
  self.shown = true
end

function Meter:finish()
  if self.shown then io.stderr:write("\r\27[K") end
end

return M
