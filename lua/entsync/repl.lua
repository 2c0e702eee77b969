-- entsync.repl: entsync-run job.lua repl [-e EXPR].
--
-- A Lua prompt with the job loaded: syncs, providers and entities by name,
-- and helpers to look at what a sync would do without writing anything.
-- Expressions print their values, tables pretty-printed; an error shows
-- its traceback and the session goes on. Line editing and history come
-- from readline when the input is a terminal.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"

local M = {}

local HELP = [[
entsync repl: the job is loaded; what is written here runs in Lua 5.4.

  syncs.NAME, providers[i], entities.NAME   the job's declarations
  store                                     the job's store (store:rows(sql, ...))
  fetch(sync, remote_id)        the raw remote record
  map(sync, record)             the local entities it maps to (nothing written)
  import(sync, remote_id, { dry = true })   import one entity; dry: report only
  export(sync, local_id, { dry = true })    export one entity; dry: the remote record only
  state(sync)                   cursor, last run, failures and outbox of a sync
  sql "select ..."              a query, printed as a table
  print(json.encode(v, { pretty = true }))  a value as JSON (entsync.json)
  reload()                      load the job file and its mappings again
  help()                        this text
An expression prints its value; `=expr` works too. End a line inside an
unfinished statement and the prompt continues it.]]

-- pretty printing ---------------------------------------------------------------

local function is_identifier(key)
  return type(key) == "string" and key:match("^[%a_][%w_]*$") ~= nil
end

local function pretty(value, indent, seen)
  indent, seen = indent or "", seen or {}
  if value == json.null then return "null" end
  if type(value) == "string" then return string.format("%q", value) end
  if type(value) ~= "table" then return tostring(value) end
  if seen[value] then return "<cycle>" end
  if getmetatable(value) and getmetatable(value).__tostring then return tostring(value) end
  seen[value] = true
  local keys, n = {}, #value
  for k in pairs(value) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
    return type(a) < type(b)
  end)
  if n + #keys == 0 then seen[value] = nil return "{}" end
  local inner = indent .. "  "
  local parts = {}
  for i = 1, n do parts[#parts + 1] = inner .. pretty(value[i], inner, seen) end
  for _, k in ipairs(keys) do
    local label = is_identifier(k) and k or ("[" .. pretty(k, inner, seen) .. "]")
    parts[#parts + 1] = inner .. label .. " = " .. pretty(value[k], inner, seen)
  end
  seen[value] = nil
  local flat = "{ " .. table.concat(parts, ", "):gsub("\n%s*", " "):gsub("^%s+", ""):gsub(",%s+", ", ") .. " }"
  if #flat <= 72 and not flat:find("\n") then
    local items = {}
    for _, p in ipairs(parts) do items[#items + 1] = p:gsub("^%s+", "") end
    return "{ " .. table.concat(items, ", ") .. " }"
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end
M.pretty = pretty

-- A query result as an aligned text table.
local function text_table(rows)
  if #rows == 0 then return "(no rows)" end
  local columns, seen = {}, {}
  for _, row in ipairs(rows) do
    for k in pairs(row) do
      if not seen[k] then seen[k] = true; columns[#columns + 1] = k end
    end
  end
  table.sort(columns, function(a, b)
    if a == "id" then return true elseif b == "id" then return false end
    return a < b
  end)
  local widths = {}
  local function cell(v)
    if v == nil then return "" end
    local text = tostring(v)
    if #text > 40 then text = text:sub(1, 37) .. "..." end
    return text
  end
  for i, c in ipairs(columns) do
    widths[i] = #c
    for _, row in ipairs(rows) do widths[i] = math.max(widths[i], #cell(row[c])) end
  end
  local lines = {}
  local function line(values)
    local out = {}
    for i, v in ipairs(values) do out[i] = v .. string.rep(" ", widths[i] - #v) end
    lines[#lines + 1] = table.concat(out, "  "):gsub("%s+$", "")
  end
  line(columns)
  local rule = {}
  for i in ipairs(columns) do rule[i] = string.rep("-", widths[i]) end
  line(rule)
  for _, row in ipairs(rows) do
    local values = {}
    for i, c in ipairs(columns) do values[i] = cell(row[c]) end
    line(values)
  end
  lines[#lines + 1] = string.format("(%d row%s)", #rows, #rows == 1 and "" or "s")
  return table.concat(lines, "\n")
end

-- the session -------------------------------------------------------------------

local function new_env(ctx)
  local env = setmetatable({ json = json }, { __index = _G })
  local function sync_of(name)
    local sync = ctx.job.syncs[name]
    if not sync then
      error(string.format("no sync named %q (declared: %s)", tostring(name), table.concat(ctx.job.sync_order, ", ")), 0)
    end
    return sync
  end
  local function refresh_names()
    env.syncs, env.entities, env.providers, env.job = ctx.job.syncs, ctx.job.entities, ctx.job.providers, ctx.job
    env.store = ctx.session.store
  end

  function env.help() print(HELP) end

  function env.fetch(name, remote_id)
    local sync = sync_of(name)
    local provider = ctx.session:provider(sync.provider)
    local record, err = provider:get(sync.resource, remote_id)
    if record == nil then error(string.format("%s %s: %s", name, tostring(remote_id), tostring(err or "not found")), 0) end
    return record
  end

  function env.map(name, record)
    local sync = sync_of(name)
    if type(record) ~= "table" then record = env.fetch(name, record) end
    local context = require "entsync.context"
    local map_ctx = context.new(ctx.session, sync, "import"):at(record[sync.id_field], nil, record)
    local mapped = require("entsync.pipeline").import(sync, record, map_ctx)
    if mapped == false then return "filtered out" end
    return mapped
  end

  -- import(sync, remote_id, { dry = true }): dry imports inside a
  -- transaction that is rolled back.
  function env.import(name, remote_id, opts)
    local sync = sync_of(name)
    local session = ctx.session
    if opts and opts.dry then
      local record = env.fetch(name, remote_id)
      local import = require "entsync.import"
      local run = import.new_run(session, sync, nil)
      run.careful = true
      local plan = run:prepare(record)
      local store = session.store
      store:run("SAVEPOINT repl_dry")
      local ok, outcome = pcall(function()
        return require("entsync.loop").forbid_yield("a dry import", run.apply, run, plan)
      end)
      store:run("ROLLBACK TO repl_dry")
      store:run("RELEASE repl_dry")
      if not ok then error(outcome, 0) end
      return outcome .. (plan.message and (": " .. plan.message) or "") .. " (dry: rolled back)"
    end
    local result = require("entsync.import").import_one(session, sync, remote_id)
    for _, outcome in ipairs({ "created", "updated", "unchanged", "stale", "failed" }) do
      if result.counts[outcome] > 0 then return outcome end
    end
    return result.counts.filtered > 0 and "filtered" or "unchanged"
  end

  function env.export(name, local_id, opts)
    local sync = sync_of(name)
    local export = require "entsync.export"
    if not sync.export then error(string.format("sync %s does not export", name), 0) end
    if opts and opts.dry then return export.preview(ctx.session, sync, local_id) end
    local result = export.export_list(ctx.session, sync, { local_id })
    local outcome = "unchanged"
    for _, o in ipairs({ "created", "updated", "deleted", "failed" }) do
      if result.counts[o] > 0 then outcome = o end
    end
    local book = ctx.session.ledger
    return { outcome = outcome, remote_id = book:remote_of(book:sync_id(name), local_id) }
  end

  function env.state(name)
    local sync = sync_of(name)
    local book = ctx.session.ledger
    local sync_id = book:sync_id(sync.name)
    local state = book:state(sync_id)
    local entity_id = book:entity_id(sync.entities[1], true)
    return {
      state = state,
      last_run = book:last_run(sync_id),
      mapped = book:mapped_count(sync_id),
      failures = book:failures(sync_id, 20),
      outbox = sync.export and entity_id and book:pending_count(state.out_seq or 0, json.encode({ entity_id }), sync_id) or 0,
      lock = core.lock.holder(ctx.session.store, "sync:" .. name),
    }
  end

  function env.sql(query, ...)
    local rows = ctx.session.store:rows(query, ...)
    print(text_table(rows))
  end

  function env.reload()
    local job = require("entsync.job").load(ctx.job.path)
    ctx.job = job
    ctx.session.job = job
    ctx.session.providers, ctx.session.dependents, ctx.session.writer_cache = {}, nil, nil
    ctx.session:define_entities()
    refresh_names()
    return "reloaded " .. job.display_path
  end

  refresh_names()
  return env
end

-- Compiles a line: first as an expression to print, then as a statement.
-- Returns the function, or nil and whether more input may complete it.
local function compile(source, env)
  local text = source:gsub("^=", "return ")
  local chunk = load("return " .. text, "=repl", "t", env)
  if chunk and not source:match("^=") then return chunk end
  if source:match("^=") then
    chunk = load(text, "=repl", "t", env)
    if chunk then return chunk end
  end
  local err
  chunk, err = load(source, "=repl", "t", env)
  if chunk then return chunk end
  if err:match("<eof>$") then return nil, true end
  return nil, false, err
end

local function evaluate(chunk, out)
  local results = table.pack(xpcall(chunk, function(e)
    local message = errors.message(e)
    -- the frames of the repl itself are noise under what the user typed
    return (debug.traceback(message, 2):gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
  end))
  if not results[1] then
    out(tostring(results[2]))
    return false
  end
  for i = 2, results.n do out(pretty(results[i])) end
  return true
end

function M.run(job, args, options)
  local session = require("entsync.session").open(job, { progress = false, log = options.log })
  local ctx = { job = job, session = session, options = options }
  local env = new_env(ctx)
  local function out(text) io.stdout:write(text, "\n") io.stdout:flush() end
  local status = 0
  if options.eval or args[1] then
    local source = options.eval or table.concat(args, " ")
    local chunk, _, err = compile(source, env)
    if not chunk then
      out(err or "incomplete input")
      status = 2
    elseif not evaluate(chunk, out) then
      status = 1
    end
    session:close()
    return status
  end
  local tty = core.sys.isatty(0)
  local history = (os.getenv("HOME") or ".") .. "/.entsync_history"
  if tty then core.readline.read_history(history) end
  local function read(prompt)
    if tty then return core.readline.read(prompt) end
    return io.read("l")
  end
  if tty then out(string.format("entsync %s repl: %s (help() lists the helpers)", core.version, job.display_path)) end
  local buffer = nil
  while true do
    local line = read(buffer and ">> " or "> ")
    if line == nil then break end
    if tty and line:match("%S") then core.readline.add_history(line) end
    buffer = buffer and (buffer .. "\n" .. line) or line
    if buffer:match("^%s*$") then
      buffer = nil
    else
      local chunk, more, err = compile(buffer, env)
      if chunk then
        evaluate(chunk, out)
        buffer = nil
      elseif not more then
        out(err)
        buffer = nil
      end
    end
  end
  if tty then core.readline.write_history(history) end
  session:close()
  return 0
end

return M
