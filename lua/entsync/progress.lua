-- entsync.progress: how far a run is, while it runs.
--
-- Three ways, by where stderr goes:
--   live    on a terminal (or --progress): one line redrawn at most five
--           times a second: records, the current rate (over the last few
--           seconds, not since the start), and when the size of the input
--           is known (a provider's total, or the bytes of the files being
--           read) the percentage and the ETA;
--   lines   elsewhere (a pipe, CI, journald, the daemon): the same facts as
--           a log line every --progress-every seconds (default 15), with
--           --log-format json a JSON event { event = "progress", ... };
--   quiet   --no-progress.
-- A JSON log stream never gets the live line: its escape codes are not
-- JSON. The summary line of a run is printed either way.

local core = require "entsync.core"

local M = {}

M.DEFAULT_EVERY = 15
-- The rate is measured over this many seconds of samples.
local WINDOW = 5

local Meter = {}
Meter.__index = Meter

local function silent() end
local quiet = setmetatable({ tick = silent, finish = silent, mode = "quiet" }, { __index = Meter })

local live_line = nil -- the live line on the terminal, if one is drawn

-- before_log(): a log line is about to be written to stderr; the live line
-- is cleared first and drawn again at the next tick.
function M.before_log()
  if live_line then
    io.stderr:write("\r\27[K")
    live_line = nil
  end
end

function M.clock(seconds)
  seconds = math.max(0, math.floor(seconds + 0.5))
  return string.format("%d:%02d:%02d", seconds // 3600, seconds // 60 % 60, seconds % 60)
end

-- The mode for the options of a session: progress true (live, unless the
-- log is JSON), false (quiet), "lines", or nil (live on a terminal, lines
-- otherwise).
function M.mode(options)
  local progress = options.progress
  if progress == false then return "quiet" end
  if progress == "lines" or options.log_format == "json" then return "lines" end
  if progress == true or core.sys.isatty(2) then return "live" end
  return "lines"
end

-- new(options, label, measure [, fields]) -> meter. options: a session's
-- options (progress, progress_every, log_format, log). measure() -> total
-- records or nil, fraction done (0..1) or nil, asked at each tick: a
-- provider learns its total from its first page. fields go into each
-- progress log line (sync, operation).
function M.new(options, label, measure, fields)
  options = options or {}
  local mode = M.mode(options)
  if mode == "quiet" then return quiet end
  local now = core.sys.monotonic()
  return setmetatable({
    mode = mode, label = label, measure = measure, fields = fields or {}, log = options.log,
    every = options.progress_every or M.DEFAULT_EVERY, started = now, drawn = 0, logged = now,
    samples = { { t = now, count = 0, fraction = 0 } },
  }, Meter)
end

-- The facts at count records: { count, rate, percent, eta }.
function Meter:facts(count, now)
  local total, fraction
  if self.measure then total, fraction = self.measure() end
  if total and total > 0 then fraction = math.min(1, count / total) end
  local samples = self.samples
  samples[#samples + 1] = { t = now, count = count, fraction = fraction }
  while #samples > 2 and now - samples[2].t >= WINDOW do table.remove(samples, 1) end
  local first = samples[1]
  local span = now - first.t
  local rate = span > 0 and (count - first.count) / span or 0
  local facts = { count = count, rate = rate, total = total, elapsed = now - self.started }
  if fraction then
    facts.percent = math.floor(100 * fraction)
    local moved = first.fraction and (fraction - first.fraction) or 0
    if span > 0 and moved > 0 then facts.eta = (1 - fraction) * span / moved end
  end
  return facts
end

local function describe(label, facts)
  local line = string.format("%s: %d records, %.0f/s", label, facts.count, facts.rate)
  if facts.percent then
    line = line .. string.format(", %d%%", facts.percent)
    if facts.eta then line = line .. ", ETA " .. M.clock(facts.eta) end
  end
  return line
end

function Meter:tick(count)
  local now = core.sys.monotonic()
  if self.mode == "live" then
    if now - self.drawn < 0.2 then return end
    self.drawn = now
    local line = describe(self.label, self:facts(count, now))
    io.stderr:write("\r\27[K", line)
    live_line = line
    return
  end
  if now - self.logged < self.every then
    -- the rate's samples are kept between log lines too
    if now - (self.samples[#self.samples].t) >= 1 then self:facts(count, now) end
    return
  end
  self.logged = now
  local facts = self:facts(count, now)
  if self.log then
    local fields = { event = "progress", records = facts.count, rate = math.floor(facts.rate + 0.5),
      percent = facts.percent, eta_seconds = facts.eta and math.floor(facts.eta + 0.5) or nil,
      elapsed_seconds = math.floor(facts.elapsed + 0.5) }
    for k, v in pairs(self.fields) do fields[k] = v end
    self.log("info", describe(self.label, facts), fields)
  end
end

function Meter:finish()
  if self.mode == "live" then M.before_log() end
end

return M
