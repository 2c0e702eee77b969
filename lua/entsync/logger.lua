-- entsync.logger: the log every part of a run writes to (stderr).
--
--   log(level, message [, fields])
--
-- level: "debug", "info", "warn", "error" or "fatal". fields, when the
-- writer knows them: sync, operation, entity, local_id, remote_id, field,
-- file, line, counts (a table of outcome counts), event (what kind of
-- line: "summary", "progress", ...) and any others. Callers that pass only
-- a level and a message are as welcome.
--
-- --log-format text (the default): "entsync: LEVEL: MESSAGE", one line
-- (whatever the message quotes: see printable);
-- the fields are already said in the message. --log-format json: one JSON
-- object a line, { time = ISO 8601 UTC with milliseconds, level, message,
-- and the fields }, and nothing else on the stream (no progress escape
-- codes: see entsync.progress). No secret is written (entsync.redact).

local core = require "entsync.core"
local json = require "entsync.json"
local redact = require "entsync.redact"

local M = {}

-- "2026-11-25T10:00:01.234Z" for an epoch time.
function M.iso_time(t)
  t = t or core.sys.now()
  local millis = math.floor(t * 1000 + 0.5)
  return os.date("!%Y-%m-%dT%H:%M:%S", millis // 1000) .. string.format(".%03dZ", millis % 1000)
end

-- printable(text) -> text that cannot forge or garble a log line: control
-- characters as escapes (\n, \r, \t, \x1b, ...), C1 controls as \u{9b},
-- bytes that are not UTF-8 as \xff. A remote id or value quoted in a
-- message is whatever the remote sent.
local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function escape_control(c)
  return ESCAPES[c] or string.format("\\x%02x", c:byte())
end
function M.printable(text)
  text = tostring(text)
  if not text:find("[%c\128-\255]") then return text end
  local parts, i = {}, 1
  while true do
    local _, bad = utf8.len(text, i)
    local segment = text:sub(i, bad and bad - 1 or #text)
    segment = segment:gsub("%c", escape_control):gsub("\194([\128-\159])", function(c)
      return string.format("\\u{%x}", c:byte())
    end)
    parts[#parts + 1] = segment
    if not bad then return table.concat(parts) end
    parts[#parts + 1] = string.format("\\x%02x", text:byte(bad))
    i = bad + 1
  end
end

-- Invalid UTF-8 (a message may quote a bad record's bytes) as U+FFFD, so
-- a log line is always JSON.
local function valid_utf8(text)
  local parts, i = {}, 1
  while true do
    local _, bad = utf8.len(text, i)
    if not bad then
      parts[#parts + 1] = text:sub(i)
      return table.concat(parts)
    end
    parts[#parts + 1] = text:sub(i, bad - 1) .. "\239\191\189"
    i = bad + 1
  end
end

local function cleaned(value, depth)
  if type(value) == "string" then return valid_utf8(value) end
  if type(value) == "table" and depth < 4 and value ~= json.null then
    local out = getmetatable(value) == json.array_mt and json.array() or {}
    for k, v in pairs(value) do out[k] = cleaned(v, depth + 1) end
    return out
  end
  if type(value) == "function" or type(value) == "userdata" or type(value) == "thread" then return tostring(value) end
  return value
end

-- The JSON line of one entry (a table of fields), newline included.
function M.json_line(entry)
  local ok, line = pcall(json.encode, entry)
  if ok then return line .. "\n" end
  return json.encode(cleaned(entry, 0)) .. "\n"
end

-- new(options) -> log. options: log_format ("text" | "json"), verbose
-- (debug lines are written only then), stream (default io.stderr).
function M.new(options)
  options = options or {}
  local stream = options.stream or io.stderr
  local progress = require "entsync.progress"
  return function(level, message, fields)
    if level == "debug" and not options.verbose then return end
    progress.before_log()
    message = redact.text(tostring(message))
    if options.log_format == "json" then
      local entry = json.object({ time = M.iso_time(), level = level, message = message })
      for k, v in pairs(fields or {}) do
        if entry[k] == nil then entry[k] = redact.deep(v) end
      end
      stream:write(M.json_line(entry))
    else
      stream:write(string.format("entsync: %s: %s\n", level, M.printable(message)))
    end
    stream:flush()
  end
end

return M
