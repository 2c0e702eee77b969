-- Shared by spec/daemon_spec.lua and spec/repl_spec.lua: entsync-run
-- started in the background with its exit status kept, stderr read while
-- it runs, signals, and the store read without taking its write lock.

local cjson = require "cjson"
local core = require "entsync.core"
local helpers = require "helpers"

local M = {}

local q = helpers.quote

-- Starts entsync-run in dir with args (a list). The child's parent is a
-- shell that waits for it and writes its exit status to a file, so a child
-- that exits (or is killed) is reaped at once and its status is known.
-- Returns { pid, stdout, stderr, rc } (paths for the last three).
function M.start(dir, args, env)
  local out, err, rc = os.tmpname(), os.tmpname(), os.tmpname()
  os.remove(rc)
  local parts = {}
  for i, arg in ipairs(args) do parts[i] = q(arg) end
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. q(v) .. " " end
  local cmd = string.format("(cd %s && %s%s %s </dev/null >%s 2>%s & echo $!; exec >/dev/null 2>&1; wait $!; "
    .. "echo $? >%s.part && mv %s.part %s) &", q(dir), prefix, q(helpers.bin), table.concat(parts, " "), out, err,
    rc, rc, rc)
  local pipe = io.popen("sh -c " .. q(cmd))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  local child = { pid = pid, stdout = out, stderr = err, rc = rc }
  M.children[#M.children + 1] = child
  return child
end
M.children = {}

-- The exit status of a child started by M.start, waiting at most timeout
-- seconds for it to end; nil when it is still running.
function M.exit_code(child, timeout)
  local code = helpers.wait_for(function()
    local text = helpers.read(child.rc)
    return text and tonumber(text:match("%d+"))
  end, timeout or 5)
  return code
end

function M.stderr(child)
  return helpers.read(child.stderr) or ""
end

function M.stdout(child)
  return helpers.read(child.stdout) or ""
end

-- Waits until the child's stderr has `text` (a plain string) at least
-- `times` times; returns the stderr, or nil after timeout seconds.
function M.wait_log(child, text, timeout, times)
  return helpers.wait_for(function()
    local err = M.stderr(child)
    local n, from = 0, 1
    while true do
      local at = err:find(text, from, true)
      if not at then break end
      n, from = n + 1, at + #text
    end
    return n >= (times or 1) and err or nil
  end, timeout or 5)
end

-- How many times `text` occurs in the child's stderr.
function M.count_log(child, text)
  local err, n, from = M.stderr(child), 0, 1
  while true do
    local at = err:find(text, from, true)
    if not at then return n end
    n, from = n + 1, at + #text
  end
end

-- Starts `entsync-run job.lua daemon` (plus args) and waits for it to say
-- it started: its signal handlers are in place from then on.
function M.daemon(dir, args)
  local all = { "job.lua", "daemon" }
  for _, a in ipairs(args or {}) do all[#all + 1] = a end
  local child = M.start(dir, all)
  local started = M.wait_log(child, "daemon started", 5)
  assert(started, "the daemon did not start: " .. M.stderr(child))
  return child
end

function M.signal(child, name)
  helpers.kill(child.pid, name)
end

-- Sends SIGTERM and returns the exit status (nil if it did not end in
-- timeout seconds) and the seconds it took.
function M.stop(child, timeout, signal)
  local t0 = core.sys.monotonic()
  M.signal(child, signal or "TERM")
  local code = M.exit_code(child, timeout or 5)
  return code, core.sys.monotonic() - t0
end

-- Kills every child still running and removes their files.
function M.cleanup()
  for _, child in ipairs(M.children) do
    if helpers.alive(child.pid) then helpers.kill(child.pid, "KILL") end
    helpers.wait_for(function() return helpers.read(child.rc) ~= nil end, 5)
    os.remove(child.stdout)
    os.remove(child.stderr)
    os.remove(child.rc)
  end
  M.children = {}
end

-- Reads the store with the sqlite3 shell, read-only (never the write lock,
-- so it does not disturb a live daemon); rows as lists of strings.
function M.peek(db, sql)
  local _, rows = helpers.sqlite3_peek(db, sql)
  return rows
end

function M.peek_value(db, sql)
  local row = M.peek(db, sql)[1]
  return row and row[1]
end

-- Writes to the store through the sqlite3 shell, as another program would;
-- raises with the shell's message when it fails.
M.sql = helpers.sqlite3

-- Puts a file into a folder the way a careful writer does: under a hidden
-- name first, then renamed, so a reader never sees it half written.
function M.drop(dir, name, text)
  local hidden = dir .. "/." .. name .. ".part"
  helpers.write(hidden, text)
  assert(os.rename(hidden, dir .. "/" .. name))
end

-- The decoded lines of an ndjson file (an empty list when it is missing).
function M.ndjson_lines(path)
  local out = {}
  for line in (helpers.read(path) or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

return M
