-- Schedules: cron expressions (five fields with lists, ranges and steps)
-- and intervals, parsed by entsync.schedule; next_time at known instants,
-- all in UTC whatever the machine's time zone; bad expressions rejected
-- with a message that says what is wrong, and a job with one fails
-- `check` naming its line.

local core = require "entsync.core"
local helpers = require "helpers"
local schedule = require "entsync.schedule"

-- Seconds since the epoch of a UTC date and time (no os.time: it reads
-- local time).
local function utc(y, m, d, h, mi, s)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return (era * 146097 + doe - 719468) * 86400 + (h or 0) * 3600 + (mi or 0) * 60 + (s or 0)
end

local function show(t)
  if t == math.huge then return "never" end
  return os.date("!%Y-%m-%d %H:%M:%S %a", math.floor(t))
end

local function parse(text)
  local s, err = schedule.parse(text)
  assert(s, "parse(" .. tostring(text) .. "): " .. tostring(err))
  return s
end

-- The next `n` due times after `after`, shown as UTC text.
local function nexts(text, after, n)
  local s, out, t = parse(text), {}, after
  for i = 1, n or 1 do
    t = schedule.next_time(s, t)
    out[i] = show(t)
    if t == math.huge then break end
  end
  return table.concat(out, " | ")
end

describe("schedule", function()
  it("has a UTC clock in this spec that agrees with the machine's", function()
    assert.equal("2024-01-01 00:00:00 Mon", show(utc(2024, 1, 1)))
    assert.equal(1704067200, utc(2024, 1, 1))
    assert.equal("2024-02-29 12:34:56 Thu", show(utc(2024, 2, 29, 12, 34, 56)))
  end)

  describe("cron next_time", function()
    local MON = utc(2024, 1, 1) -- Monday 2024-01-01 00:00 UTC

    it("every minute, strictly after the given moment", function()
      assert.equal("2024-01-01 00:01:00 Mon", nexts("* * * * *", MON))
      assert.equal("2024-01-01 00:01:00 Mon", nexts("* * * * *", MON + 30.5))
      assert.equal("2024-01-01 00:02:00 Mon", nexts("* * * * *", MON + 60))
      assert.equal("2024-01-01 00:01:00 Mon", nexts("* * * * *", MON + 59.999))
    end)

    it("*/15 steps through the hour", function()
      assert.equal("2024-01-01 00:15:00 Mon | 2024-01-01 00:30:00 Mon | 2024-01-01 00:45:00 Mon | "
        .. "2024-01-01 01:00:00 Mon", nexts("*/15 * * * *", MON + 7 * 60, 4))
      assert.equal("2024-01-01 00:30:00 Mon", nexts("*/15 * * * *", MON + 15 * 60))
    end)

    it("lists, ranges, and steps over a range or from a start", function()
      assert.equal("2024-01-01 00:45:00 Mon | 2024-01-01 01:15:00 Mon | 2024-01-01 01:45:00 Mon",
        nexts("15,45 * * * *", MON + 20 * 60, 3))
      assert.equal("2024-01-01 09:00:00 Mon | 2024-01-01 10:00:00 Mon",
        nexts("0 9-17 * * *", MON + 8 * 3600 + 59 * 60, 2))
      assert.equal("2024-01-02 09:00:00 Tue", nexts("0 9-17 * * *", MON + 17 * 3600))
      assert.equal("2024-01-01 00:05:00 Mon | 2024-01-01 00:10:00 Mon | 2024-01-01 00:15:00 Mon | "
        .. "2024-01-01 00:20:00 Mon | 2024-01-01 01:05:00 Mon", nexts("5-20/5 * * * *", MON, 5))
      assert.equal("2024-01-01 00:10:00 Mon | 2024-01-01 00:30:00 Mon | 2024-01-01 00:50:00 Mon | "
        .. "2024-01-01 01:10:00 Mon", nexts("10/20 * * * *", MON, 4))
      assert.equal("2024-01-01 00:00:00 Mon", nexts("0,30 0-23/6 * * *", MON - 1))
      assert.equal("2024-01-01 06:00:00 Mon", nexts("0,30 0-23/6 * * *", MON + 30 * 60))
    end)

    it("1-5 is Monday to Friday", function()
      -- Friday 2024-01-05 10:00 -> Monday 09:00
      assert.equal("2024-01-08 09:00:00 Mon | 2024-01-09 09:00:00 Tue",
        nexts("0 9 * * 1-5", utc(2024, 1, 5, 10, 0), 2))
      assert.equal("2024-01-06 12:00:00 Sat", nexts("0 12 * * 6", MON))
    end)

    it("7 is Sunday, like 0, alone and ending a range", function()
      assert.equal("2024-01-07 00:00:00 Sun | 2024-01-14 00:00:00 Sun", nexts("0 0 * * 7", MON, 2))
      assert.equal("2024-01-07 00:00:00 Sun | 2024-01-14 00:00:00 Sun", nexts("0 0 * * 0", MON, 2))
      assert.equal("2024-01-07 00:00:00 Sun | 2024-01-12 00:00:00 Fri",
        nexts("0 0 * * 5-7", utc(2024, 1, 6, 1, 0), 2))
    end)

    it("day of month OR day of week when both are restricted, AND-like when one is *", function()
      -- "0 0 13 * 5": every 13th and every Friday
      assert.equal("2024-01-05 00:00:00 Fri | 2024-01-12 00:00:00 Fri | 2024-01-13 00:00:00 Sat | "
        .. "2024-01-19 00:00:00 Fri", nexts("0 0 13 * 5", MON, 4))
      assert.equal("2024-01-13 00:00:00 Sat | 2024-02-13 00:00:00 Tue", nexts("0 0 13 * *", MON, 2))
      assert.equal("2024-01-05 00:00:00 Fri | 2024-01-12 00:00:00 Fri", nexts("0 0 * * 5", MON, 2))
    end)

    it("months, month ends, leap days and the turn of the year", function()
      assert.equal("2024-02-01 02:30:00 Thu | 2024-03-01 02:30:00 Fri", nexts("30 2 1 * *", utc(2024, 1, 15), 2))
      assert.equal("2025-01-01 00:00:00 Wed", nexts("0 0 1 1 *", utc(2024, 12, 31, 23, 59, 30)))
      assert.equal("2024-02-29 00:00:00 Thu | 2028-02-29 00:00:00 Tue", nexts("0 0 29 2 *", MON, 2))
      assert.equal("2024-03-31 00:00:00 Sun | 2024-05-31 00:00:00 Fri", nexts("0 0 31 * *", utc(2024, 1, 31), 2))
      assert.equal("2024-06-01 00:00:00 Sat | 2025-06-01 00:00:00 Sun", nexts("0 0 1 6 *", utc(2024, 1, 15), 2))
      assert.equal("2024-12-25 08:00:00 Wed", nexts("0 8 25 12 *", utc(2024, 7, 4)))
    end)

    it("an expression that never matches gives math.huge, quickly", function()
      local t0 = core.sys.monotonic()
      assert.equal(math.huge, schedule.next_time(parse("0 0 31 2 *"), MON))
      assert.equal(math.huge, schedule.next_time(parse("0 0 30 2 *"), MON))
      assert.is_true(core.sys.monotonic() - t0 < 2, "took " .. (core.sys.monotonic() - t0) .. "s")
    end)

    -- The daemon computes due times with the machine's zone set to
    -- anything; cron times here are UTC, so the zone must not matter.
    -- Each zone runs in a child entsync-run --script (the zone is read at
    -- start; entsync.core, which entsync.schedule reaches through
    -- entsync.map and entsync.json, is built in), under a timeout so a
    -- hang shows as a failure (a correct answer takes milliseconds).
    for _, zone in ipairs({ "Asia/Tokyo", "America/New_York" }) do
      it("gives the same UTC times when the machine's zone is " .. zone, function()
        if not core.fs.exists("/usr/share/zoneinfo/" .. zone) then
          pending("no zoneinfo for " .. zone)
          return
        end
        local cases = {
          { "0 0 1 6 *", utc(2024, 1, 15) },
          { "30 2 1 * *", utc(2024, 1, 15) },
          { "0 0 29 2 *", utc(2024, 1, 1) },
          { "0 9 * * 1-5", utc(2024, 1, 5, 10, 0) },
          { "0 0 1 1 *", utc(2024, 12, 31, 23, 59, 30) },
          { "0 3 * 3,10 0", utc(2024, 3, 1) },
        }
        local script = { 'package.path = "./lua/?.lua;" .. package.path',
          'local S = require "entsync.schedule"' }
        local expected = {}
        for i, case in ipairs(cases) do
          script[#script + 1] = string.format("local t = S.next_time(S.parse(%q), %d) "
            .. "print(t == math.huge and 'never' or string.format('%%.0f', t))", case[1], case[2])
          expected[i] = show(schedule.next_time(parse(case[1]), case[2]))
        end
        local file = os.tmpname()
        helpers.write(file, table.concat(script, "\n") .. "\n")
        local pipe = io.popen(string.format("cd %s && TZ=%s timeout 2 %s --script %s 2>&1; echo rc=$?",
          helpers.quote(helpers.root), zone, helpers.quote(helpers.bin), file))
        local output = pipe:read("a")
        pipe:close()
        os.remove(file)
        local got = {}
        for line in output:gmatch("[^\n]+") do
          if line == "never" then got[#got + 1] = "never" end
          local n = line:match("^%d+$") and tonumber(line)
          if n then got[#got + 1] = show(n) end
        end
        assert.is_truthy(output:match("rc=0"), "next_time under TZ=" .. zone .. " failed or hung:\n" .. output)
        -- the UTC answers, computed in this process, are checked above
        assert.same({ "2024-06-01 00:00:00 Sat", "2024-02-01 02:30:00 Thu", "2024-02-29 00:00:00 Thu",
          "2024-01-08 09:00:00 Mon", "2025-01-01 00:00:00 Wed", "2024-03-03 03:00:00 Sun" }, expected)
        assert.same(expected, got)
      end)
    end
  end)

  describe("intervals", function()
    it("every 30s, 5m, 2h, 1d, and a bare number of seconds", function()
      local t = utc(2024, 1, 1, 10, 0, 7)
      assert.equal(30, parse("every 30s").interval)
      assert.equal(t + 30, schedule.next_time(parse("every 30s"), t))
      assert.equal(t + 300, schedule.next_time(parse("every 5m"), t))
      assert.equal(t + 7200, schedule.next_time(parse("every 2h"), t))
      assert.equal(t + 86400, schedule.next_time(parse("every 1d"), t))
      assert.equal(t + 45, schedule.next_time(parse("every 45"), t))
      assert.equal(t + 0.5 + 30, schedule.next_time(parse("every 30s"), t + 0.5))
    end)

    it("keep their text", function()
      assert.equal("every 5m", parse("every 5m").text)
      assert.equal("*/5 * * * *", parse("*/5 * * * *").text)
    end)
  end)

  describe("rejects", function()
    local function rejected(text, ...)
      local s, err = schedule.parse(text)
      assert.is_nil(s, "accepted " .. tostring(text))
      assert.is_string(err)
      for _, pattern in ipairs({ ... }) do
        assert.is_truthy(err:find(pattern, 1, true), string.format("%q: message %q lacks %q", tostring(text), err,
          pattern))
      end
      return err
    end

    it("a wrong number of fields, saying cron takes five", function()
      rejected("* * * *", "* * * *", "4 fields", "five")
      rejected("* * * * * *", "6 fields", "five")
      rejected("", "five")
      rejected("every", "five")
    end)

    it("values outside a field's range, naming the field and its range", function()
      rejected("60 * * * *", "minute", "0-59")
      rejected("0 24 * * *", "hour", "0-23")
      rejected("0 0 0 * *", "day of month", "1-31")
      rejected("0 0 32 * *", "day of month", "1-31")
      rejected("0 0 * 13 *", "month", "1-12")
      rejected("0 0 * 0 *", "month", "1-12")
      rejected("0 0 * * 8", "day of week", "0-7")
      rejected("5-1 * * * *", "minute", "5-1")
    end)

    it("steps below one and things that are not numbers", function()
      rejected("*/0 * * * *", "minute", "step")
      rejected("a * * * *", "minute", '"a"')
      rejected("1-2-3 * * * *", "minute", "1-2-3")
      rejected("*/5/2 * * * *", "minute")
      rejected("1- * * * *", "minute")
      rejected("0 0 * * MON", "day of week", "MON")
    end)

    it("intervals below a second, unknown units and what is not a string", function()
      rejected("every 0s", "at least 1s")
      rejected("every 0m", "at least 1s")
      rejected("every 5x")
      rejected(42, "cron")
      rejected(nil, "cron")
      rejected({}, "cron")
    end)
  end)

  describe("in a job", function()
    local dir

    before_each(function()
      dir = helpers.tmpdir()
      helpers.write(dir .. "/data/contacts.ndjson", '{"id":1,"email":"a@x","name":"A","age":3}\n')
    end)

    after_each(function()
      helpers.rmdir(dir)
    end)

    local function job(schedule_source)
      helpers.write(dir .. "/job.lua", table.concat({
        'entity "contact" { email = "text", name = "text", age = "integer" }',
        'local files = provider "ndjson" { dir = "data" }',
        "",
        'sync "contacts" {',
        '  remote = files "contacts.ndjson", entity = "contact",',
        '  mapping = { email = "email", name = "name", age = "age" },',
        "  schedule = " .. schedule_source .. ",",
        "}",
      }, "\n") .. "\n")
    end

    it("a good schedule passes check", function()
      job('"*/15 9-17 * * 1-5"')
      local r = helpers.run(dir, { "job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
      job('"every 30s"')
      r = helpers.run(dir, { "job.lua", "check" })
      assert.equal(0, r.code, r.stderr)
    end)

    for _, case in ipairs({
      { '"*/5 * * *"', "4 fields" },
      { '"61 * * * *"', "minute" },
      { '"every 0s"', "at least 1s" },
      { "300", "cron" },
    }) do
      it("a bad schedule (" .. case[1] .. ") fails check with exit 2, naming the job line and the sync", function()
        job(case[1])
        local r = helpers.run(dir, { "job.lua", "check" })
        assert.equal(2, r.code, r.stdout .. r.stderr)
        assert.equal("", r.stdout)
        assert.is_truthy(r.stderr:find("job.lua:4:", 1, true), r.stderr)
        assert.is_truthy(r.stderr:find('sync "contacts"', 1, true), r.stderr)
        assert.is_truthy(r.stderr:find("schedule", 1, true), r.stderr)
        assert.is_truthy(r.stderr:find(case[2], 1, true), r.stderr)
        assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
        assert.is_false(core.fs.exists(dir .. "/entsync.db") ~= false)
      end)
    end
  end)
end)
