-- Helpers shared by entsync's specs: temp dirs, files, and the real
-- entsync-run binary run as a child process.

local core = require "entsync.core"

local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = shell_quote

local root = core.fs.cwd()
M.root = root
M.bin = os.getenv("ENTSYNC_BIN") or (root .. "/bin/entsync-run")

-- The temp files and dirs handed out below, removed when the suite ends
-- (whatever a test's own cleanup left: a spawned run's output files, say,
-- which its test reads after the run stopped). Each spec file runs in a
-- busted of its own, so that is when the file's tests are done.
local handed = {}
local function hand(path)
  assert(path:match("^/tmp/"), path) -- the removal below is rm -rf
  handed[#handed + 1] = path
  return path
end
require("busted").subscribe({ "suite", "end" }, function()
  local quoted = {}
  for i, path in ipairs(handed) do quoted[i] = shell_quote(path) end
  if #quoted > 0 then os.execute("rm -rf " .. table.concat(quoted, " ")) end
  handed = {}
  return nil, true
end)

-- A temp file's path (the file made, empty), removed at the suite's end.
function M.tmpfile()
  return hand(os.tmpname())
end

function M.tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(core.fs.mkdir(name))
  return hand(name)
end

function M.rmdir(dir)
  if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. shell_quote(dir)) end
end

-- Inside a describe block: one fixture remote holding resources for the
-- whole block (spec/support/fixture.lua), reset before each test, and a
-- fresh temp dir for each test, removed after it. prepare(server, dir) runs
-- before each test, first among the block's own before_each hooks.
function M.remote_for_each_test(resources, prepare)
  local hooks = require "busted"
  local server, dir
  hooks.setup(function()
    server = require("fixture").start({ resources = resources })
  end)
  hooks.teardown(function()
    if server then server.stop() end
  end)
  hooks.before_each(function()
    server.reset()
    dir = M.tmpdir()
    prepare(server, dir)
  end)
  hooks.after_each(function()
    M.rmdir(dir)
  end)
end

-- Runs SQL on the store db through the sqlite3 shell, as another program
-- would; raises with the shell's message when it fails, blaming the
-- caller `level` frames up (2, its direct caller, by default). Returns stdout.
function M.sqlite3(db, sql, level)
  local err = os.tmpname()
  local pipe = io.popen(string.format("sqlite3 -cmd '.timeout 5000' %s %s 2>%s", shell_quote(db), shell_quote(sql), err))
  local out = pipe:read("a")
  local ok = pipe:close()
  local message = M.read(err) or ""
  os.remove(err)
  if not ok or message ~= "" then error("sqlite3: " .. message .. " (" .. sql .. ")", level or 2) end
  return out
end

-- Reads the store db with the sqlite3 shell, read-only: an observer that
-- never takes the write lock, so it does not disturb a live run or daemon.
-- Returns the output's lines, and the same lines as lists of fields.
function M.sqlite3_peek(db, sql)
  local pipe = io.popen(string.format("sqlite3 -readonly -cmd '.timeout 5000' %s %s 2>/dev/null", shell_quote(db),
    shell_quote(sql)))
  local lines, rows = {}, {}
  for line in pipe:lines() do
    local row = {}
    for field in (line .. "|"):gmatch("([^|]*)|") do row[#row + 1] = field end
    lines[#lines + 1], rows[#rows + 1] = line, row
  end
  pipe:close()
  return lines, rows
end

-- Puts the slow provider (spec/support/slow_provider.lua) into a job
-- folder as providers/slow.lua.
function M.install_slow_provider(dir)
  M.write(dir .. "/providers/slow.lua", M.read(root .. "/spec/support/slow_provider.lua"))
end

function M.write(path, content)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p " .. shell_quote(dir)) end
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local content = f:read("a")
  f:close()
  return content
end

local function command_line(args)
  if type(args) == "string" then return args end
  local parts = {}
  for i, arg in ipairs(args) do parts[i] = shell_quote(arg) end
  return table.concat(parts, " ")
end

-- The words put before a command to give it env: "env NAME=value ... ",
-- with -u NAME for an entry set to false (the child must not have it,
-- whatever the spec's own environment holds); "" for no env.
local function env_prefix(env)
  local words = {}
  for k, v in pairs(env or {}) do
    words[#words + 1] = v == false and ("-u " .. k) or (k .. "=" .. shell_quote(v))
  end
  if #words == 0 then return "" end
  return "env " .. table.concat(words, " ") .. " "
end

-- Runs entsync-run with args (a table, or a string already quoted) in dir;
-- returns { code, stdout, stderr }. env: see env_prefix.
function M.run(dir, args, env)
  local out, err = os.tmpname(), os.tmpname()
  local prefix = env_prefix(env)
  local cmd = string.format("cd %s && %s%s %s </dev/null >%s 2>%s", shell_quote(dir), prefix, shell_quote(M.bin),
    command_line(args), out, err)
  local _, _, code = os.execute(cmd)
  local result = { code = code, stdout = M.read(out) or "", stderr = M.read(err) or "" }
  os.remove(out)
  os.remove(err)
  return result
end

-- Starts entsync-run in the background; returns its pid and the paths of
-- its stdout and stderr.
function M.spawn(dir, args, env)
  local out, err = M.tmpfile(), M.tmpfile()
  local prefix = env_prefix(env)
  local cmd = string.format("cd %s && exec %s%s %s </dev/null >%s 2>%s & echo $!", shell_quote(dir), prefix,
    shell_quote(M.bin), command_line(args), out, err)
  local pipe = io.popen("sh -c " .. shell_quote(cmd))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  return { pid = pid, stdout = out, stderr = err }
end

-- Is the process alive (not gone, not a zombie)?
function M.alive(pid)
  local stat = M.read("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

function M.kill(pid, signal)
  os.execute(string.format("kill -%s %d 2>/dev/null", signal or "TERM", pid))
end

-- Waits until the process is gone, at most timeout seconds; true if gone.
function M.wait_gone(pid, timeout)
  local deadline = core.sys.monotonic() + (timeout or 10)
  while core.sys.monotonic() < deadline do
    if not M.alive(pid) then return true end
    core.sys.sleep(0.01)
  end
  return false
end

-- Polls fn until it returns a truthy value, at most timeout seconds.
function M.wait_for(fn, timeout)
  local deadline = core.sys.monotonic() + (timeout or 10)
  repeat
    local value = fn()
    if value then return value end
    core.sys.sleep(0.01)
  until core.sys.monotonic() >= deadline
  return nil
end

-- Opens the store file with entsync's own C store, for assertions.
function M.open_store(path)
  return core.store.open(path)
end

-- Rows of a query on a store file, through a fresh connection.
function M.query(path, sql, ...)
  local store = core.store.open(path)
  local rows = store:rows(sql, ...)
  store:close()
  return rows
end

return M
