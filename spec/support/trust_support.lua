-- Shared by the "exports you can trust" specs (export_pipeline, export_json,
-- export_merge, export_split, many_remotes, crash_export, scheduler,
-- migrate): the fixture's request log read byte for byte, JSON made
-- canonical by another JSON implementation (Python's, which keeps [] apart
-- from {} and 1 apart from 1.0 and "1"), and small store readers.

local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"

local M = {}

local function python()
  local f = io.open("/usr/bin/python3", "rb")
  if f then
    f:close()
    return "/usr/bin/python3"
  end
  return "python3"
end

-- canonical(text) -> the JSON text re-encoded by Python with sorted keys
-- and no spaces: two texts are the same JSON value, with the same types
-- ([] vs {}, 1 vs 1.0 vs "1"), exactly when their canonical forms are equal.
-- Raises when text is not JSON.
function M.canonical(text)
  local input = os.tmpname()
  helpers.write(input, text)
  local script = "import json,sys; print(json.dumps(json.load(open(sys.argv[1])), sort_keys=True, "
    .. "separators=(',', ':')))"
  local pipe = io.popen(string.format("%s -c %s %s 2>&1", python(), helpers.quote(script), helpers.quote(input)))
  local out = pipe:read("a")
  local ok = pipe:close()
  os.remove(input)
  if not ok then error("not JSON: " .. tostring(text) .. " (" .. out .. ")", 2) end
  return (out:gsub("\n$", ""))
end

-- The canonical form of one member of a JSON object text: '"key":value'.
function M.member(text, key)
  local script = "import json,sys; v=json.load(open(sys.argv[1])); k=sys.argv[2]; "
    .. "print(json.dumps({k: v[k]} if k in v else {}, sort_keys=True, separators=(',', ':'))[1:-1])"
  local input = os.tmpname()
  helpers.write(input, text)
  local pipe = io.popen(string.format("%s -c %s %s %s 2>&1", python(), helpers.quote(script), helpers.quote(input),
    helpers.quote(key)))
  local out = pipe:read("a")
  local ok = pipe:close()
  os.remove(input)
  if not ok then error("not a JSON object: " .. tostring(text) .. " (" .. out .. ")", 2) end
  return (out:gsub("\n$", ""))
end

-- The top-level keys of a JSON object text, sorted.
function M.keys(text)
  local script = "import json,sys; print('\\n'.join(sorted(json.load(open(sys.argv[1])).keys())))"
  local input = os.tmpname()
  helpers.write(input, text)
  local pipe = io.popen(string.format("%s -c %s %s 2>&1", python(), helpers.quote(script), helpers.quote(input)))
  local out = pipe:read("a")
  local ok = pipe:close()
  os.remove(input)
  if not ok then error("not a JSON object: " .. tostring(text) .. " (" .. out .. ")", 2) end
  local keys = {}
  for line in out:gmatch("[^\n]+") do keys[#keys + 1] = line end
  return keys
end

-- Requests of the fixture's log matching { method, path, under }, in the
-- order the server received them.
function M.requests(log, filter)
  filter = filter or {}
  local out = {}
  for _, e in ipairs(log) do
    if (not filter.method or e.method == filter.method) and (not filter.path or e.path == filter.path)
        and (not filter.under or e.path:sub(1, #filter.under) == filter.under) then
      out[#out + 1] = e
    end
  end
  table.sort(out, function(a, b) return a.start < b.start end)
  return out
end

-- Writes (POST, PUT, PATCH, DELETE) of the log, optionally under a path prefix.
function M.writes(log, under)
  local out = {}
  for _, e in ipairs(M.requests(log, { under = under })) do
    if e.method ~= "GET" then out[#out + 1] = e end
  end
  return out
end

-- A header of a logged request, by name in any case.
function M.header(entry, name)
  for k, v in pairs(entry.headers or {}) do
    if k:lower() == name:lower() then return v end
  end
  return nil
end

-- The raw JSON text the fixture holds for one record (GET through curl),
-- or nil when it has none.
function M.remote_text(server, resource, id)
  local res = server.request("GET", string.format("/api/%s/%s", resource, tostring(id)))
  if res.status ~= 200 then return nil end
  return res.body
end

-- Loads JSON text into the fixture as its whole data (and start-up state
-- for later resets within the test): raw text, so [] and {} reach it as
-- written.
function M.load_remote(server, resources_json)
  return server.control("POST", "reset", '{"resources": ' .. resources_json .. "}")
end

-- Inside a describe block: a new fixture remote for each test (not one
-- reset between tests: the fixture remembers the Idempotency-Keys it has
-- answered across resets, and entsync's keys are the same for the same
-- create in a new store), and a fresh temp dir; prepare(server, dir) runs
-- before each test. opts: fixture start options (latency_ms...).
function M.fresh_remote_for_each_test(resources, prepare, opts)
  local hooks = require "busted"
  local server, dir
  hooks.before_each(function()
    server = require("fixture").start({ resources = resources }, opts)
    dir = helpers.tmpdir()
    prepare(server, dir)
  end)
  hooks.after_each(function()
    if server then server.stop() end
    server = nil
    helpers.rmdir(dir)
  end)
end

-- The job's store file and its readers, import_support's.
M.db, M.query, M.value = S.db, S.query, S.value

-- The local id of a remote id in a sync's id map (ids compared as text).
function M.local_of(dir, sync, remote_id)
  return M.value(dir, "SELECT local_id FROM entsync_map WHERE sync = ?1 AND CAST(remote_id AS TEXT) = ?2", sync,
    tostring(remote_id))
end

-- The remote id of a local id in a sync's id map, with its stored type.
function M.remote_of(dir, sync, local_id)
  return M.value(dir, "SELECT remote_id FROM entsync_map WHERE sync = ?1 AND local_id = ?2", sync, local_id)
end

-- The conflicts recorded for a sync: { { direction, local_id, remote_id, policy, winner } }.
function M.conflicts(dir, sync)
  return M.query(dir, [[SELECT c.direction, c.local_id, c.remote_id, c.policy, c.winner, c.local_hash, c.remote_hash
    FROM entsync_conflicts c JOIN entsync_syncs s ON s.id = c.sync WHERE s.name = ?1 ORDER BY c.id]], sync)
end

-- The summary lines of a run's stdout by sync: { [sync] = { import = line, export = line } }.
function M.lines(stdout)
  local out = {}
  for line in stdout:gmatch("[^\n]+") do
    local sync, rest = line:match("^([%w_]+): (.*)$")
    if sync then
      out[sync] = out[sync] or {}
      if rest:match("^exported ") then out[sync].export = line else out[sync].import = line end
    end
  end
  return out
end

-- The counts of a summary line: { created = n, updated = n, ... }.
function M.counts(line)
  local counts = {}
  if not line then return counts end
  local body = line:gsub("^[%w_]+: ", ""):gsub("^exported ", ""):gsub(" in %d+%.%d+s.*$", "")
  for n, word in body:gmatch("(%d+) (%a+)") do counts[word] = tonumber(n) end
  return counts
end

-- Runs entsync-run job.lua ARGS... in dir (env: extra environment).
function M.run(dir, args, env)
  local all = { "job.lua" }
  for _, a in ipairs(args or {}) do all[#all + 1] = a end
  return helpers.run(dir, all, env)
end

function M.sleep(seconds)
  core.sys.sleep(seconds)
end

-- The line number of the first line of text holding `needle` (plain).
function M.line_of(text, needle)
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(needle, 1, true) then return n end
  end
  return nil
end

return M
