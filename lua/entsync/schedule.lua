-- entsync.schedule: when syncs run under the daemon.
--
-- A schedule is a cron expression of five fields (minute hour day-of-month
-- month day-of-week) with lists, ranges and steps ("*/5 * * * *",
-- "0 9-17 * * 1-5", "15,45 * * * *"), or an interval ("every 30s",
-- "every 5m", "every 2h"). next_time(schedule, after) gives the next time
-- it is due after a moment (seconds since the epoch, UTC).

local M = {}

local FIELDS = {
  { name = "minute", min = 0, max = 59 },
  { name = "hour", min = 0, max = 23 },
  { name = "day of month", min = 1, max = 31 },
  { name = "month", min = 1, max = 12 },
  { name = "day of week", min = 0, max = 7 },
}

local function parse_field(text, field)
  local set = {}
  if text:find(",,", 1, true) or text:match("^,") or text:match(",$") then
    return nil, string.format("%s: %q has an empty item in its list", field.name, text)
  end
  for part in text:gmatch("[^,]+") do
    local range, step = part:match("^([^/]+)/(%d+)$")
    range, step = range or part, tonumber(step) or 1
    if step < 1 or step > field.max then
      return nil, string.format("%s: step must be between 1 and %d", field.name, field.max)
    end
    local from, to
    if range == "*" then
      from, to = field.min, field.max
    else
      local a, b = range:match("^(%d+)%-(%d+)$")
      if a then
        from, to = tonumber(a), tonumber(b)
      elseif range:match("^%d+$") then
        from = tonumber(range)
        to = part:find("/", 1, true) and field.max or from
      else
        return nil, string.format("%s: %q is not a number, range or *", field.name, range)
      end
    end
    if from < field.min or to > field.max or from > to then
      return nil, string.format("%s: %s is outside %d-%d", field.name, range, field.min, field.max)
    end
    for v = from, to, step do set[v] = true end
  end
  return set
end

-- parse(text) -> schedule | nil, message
function M.parse(text)
  if type(text) ~= "string" then return nil, "a schedule is a cron expression or \"every 30s\"" end
  if text:match("^%s*every%s") then
    local amount, unit = text:match("^%s*every%s+(%d+)%s*([smhd]?)%s*$")
    if not amount then
      return nil, string.format("%q: an interval is \"every N\" with s, m, h or d, as in \"every 30s\"", text)
    end
    local seconds = tonumber(amount) * ({ s = 1, m = 60, h = 3600, d = 86400 })[unit ~= "" and unit or "s"]
    if seconds < 1 then return nil, string.format("%q: an interval must be at least 1s", text) end
    return { interval = seconds, text = text }
  end
  local parts = {}
  for part in text:gmatch("%S+") do parts[#parts + 1] = part end
  if #parts ~= 5 then
    return nil, string.format("%q has %d fields; cron takes five (minute hour day month weekday) or \"every 5m\"",
      text, #parts)
  end
  local schedule = { text = text, sets = {} }
  for i, field in ipairs(FIELDS) do
    local set, err = parse_field(parts[i], field)
    if not set then return nil, string.format("%q: %s", text, err) end
    schedule.sets[i] = set
  end
  if schedule.sets[5][7] then schedule.sets[5][0] = true end -- 7 is Sunday too
  -- as in cron, a day field starting with * does not restrict the other
  schedule.any_day = parts[3]:sub(1, 1) == "*"
  schedule.any_weekday = parts[5]:sub(1, 1) == "*"
  return schedule
end

local function matches_day(schedule, d)
  local s = schedule.sets
  local day, weekday = s[3][d.day], s[5][d.wday - 1]
  if schedule.any_day then return weekday end
  if schedule.any_weekday then return day end
  return day or weekday
end

local function matches(schedule, t)
  local d = os.date("!*t", t)
  local s = schedule.sets
  if not (s[1][d.min] and s[2][d.hour] and s[4][d.month]) then return false end
  local day, weekday = s[3][d.day], s[5][d.wday - 1]
  -- cron: when both day fields are restricted, either may match
  if schedule.any_day then return weekday end
  if schedule.any_weekday then return day end
  return day or weekday
end

-- next_time(schedule, after) -> the next due time strictly after `after`
-- (math.huge for an expression that never matches, such as 30 February).
-- A month, day or hour that cannot match is skipped whole.
function M.next_time(schedule, after)
  if schedule.interval then return after + schedule.interval end
  local t = (math.floor(after / 60) + 1) * 60
  local limit = after + 5 * 366 * 86400
  local s = schedule.sets
  while t < limit do
    local d = os.date("!*t", t)
    if not s[4][d.month] then
      local year, month = d.year, d.month + 1
      if month > 12 then year, month = year + 1, 1 end
      -- the first of next month, in UTC whatever the machine's zone
      t = require("entsync.map").iso_to_epoch(string.format("%04d-%02d-01T00:00:00Z", year, month))
    elseif not matches_day(schedule, d) then
      t = t - (d.hour * 3600 + d.min * 60) + 86400
    elseif not s[2][d.hour] then
      t = t - d.min * 60 + 3600
    elseif matches(schedule, t) then
      return t
    else
      t = t + 60
    end
  end
  return math.huge
end

return M
