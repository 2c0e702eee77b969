-- entsync.repl: entsync-run job.lua repl [-e EXPR].
--
-- A Lua prompt with the job loaded: syncs, providers and entities by name,
-- and helpers to look at what a sync would do without writing anything.
-- Expressions print their values, tables pretty-printed; an error is one
-- line (its traceback under --verbose) and the session goes on.
--
-- On a terminal the prompt is GNU readline's (history, Tab completion of
-- globals, table fields, sync names and helpers, and table and column names
-- inside sql "..."), read through entsync's loop: the loop waits on
-- standard input, so Ctrl-C (a signal the loop handles) drops the line
-- being typed, or interrupts the expression being evaluated, and the
-- session goes on; Ctrl-D on an empty line ends it.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local redact = require "entsync.redact"

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
  provider(sync)                the sync's live provider object (its verbs: list, get, ...)
  sql "select ..."              a query, printed as the sqlite3 shell prints it
                                (headers, columns; the change counts of a write)
  print(json.encode(v, { pretty = true }))  a value as JSON (entsync.json)
  reload()                      load the job file, its mappings and providers again
  help()                        this text
An expression prints its value; `=expr` works too. End a line inside an
unfinished statement and the prompt continues it. Tab completes; Ctrl-C
drops the line (or stops what runs); Ctrl-D ends the session.]]

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

-- A query's result as the sqlite3 shell prints it in its column mode
-- with headers (.mode column, .headers on): the columns in the
-- statement's order, each as wide as its widest value, NULL as nothing.
local function width(text)
  return utf8.len(text) or #text
end

local function column_table(columns, rows)
  if #rows == 0 then return nil end
  local widths = {}
  for i, name in ipairs(columns) do
    widths[i] = width(name)
    for _, row in ipairs(rows) do widths[i] = math.max(widths[i], width(row[i] or "")) end
  end
  local lines = {}
  local function line(values)
    local cells = {}
    for i = 1, #columns do
      local text = values[i] or ""
      cells[i] = text .. string.rep(" ", widths[i] - width(text))
    end
    lines[#lines + 1] = table.concat(cells, "  ")
  end
  line(columns)
  local rule = {}
  for i = 1, #columns do rule[i] = string.rep("-", widths[i]) end
  line(rule)
  for _, row in ipairs(rows) do line(row) end
  return table.concat(lines, "\n")
end
M.column_table = column_table

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

  -- what a line prints holds no secret either
  function env.print(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = redact.text(tostring(parts[i])) end
    print(table.concat(parts, "\t", 1, parts.n))
  end

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

  -- sql(query, ...): the rows as the sqlite3 shell shows them; a write,
  -- its change counts as `.changes on` shows them.
  function env.sql(query, ...)
    local columns, rows, changes, total, readonly = ctx.session.store:query(query, ...)
    local text = column_table(columns, rows)
    if text then print(text) end
    if not readonly then print(string.format("changes: %d   total_changes: %d", changes, total)) end
  end

  function env.provider(name)
    return ctx.session:provider(sync_of(name).provider)
  end

  -- reload(): the job file, its mappings and the providers' code are read
  -- again; a job that no longer loads leaves the old one in place.
  function env.reload()
    local ok, job = require("entsync.job").reload(ctx.job)
    if not ok then error(job, 0) end
    ctx.job = job
    ctx.session.job = job
    ctx.session.providers, ctx.session.dependents, ctx.session.writer_cache = {}, nil, nil
    ctx.session.ledger.history = job.history
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

-- An error as one line: entsync's own errors by their message, Lua's by
-- theirs ("repl:2: inner"), without entsync's source positions.
local function error_line(e)
  local message = errors.message(e, true)
  return "error: " .. (message:match("^[^\n]*") or message)
end

-- Runs a compiled line as a task of its own (Ctrl-C cancels it) and prints
-- its values or its error; true when it ran without error.
local function evaluate(chunk, out, options, state)
  local loop = require "entsync.loop"
  local task = loop.spawn(function()
    return table.pack(xpcall(chunk, function(e)
      if options.verbose then
        return { line = error_line(e), traceback = debug.traceback(errors.message(e), 2) }
      end
      return { line = error_line(e) }
    end))
  end)
  state.evaluating = task
  local ok, results = task:wait()
  state.evaluating = nil
  if not ok then
    out(results == "cancelled" and "interrupted" or error_line(results))
    return false
  end
  if not results[1] then
    out(results[2].line)
    if results[2].traceback then out(results[2].traceback) end
    return false
  end
  for i = 2, results.n do out(pretty(redact.deep(results[i]))) end
  return true
end

-- Tab completion ------------------------------------------------------------------

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
  "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }
-- the helpers whose first argument is a sync's name
local SYNC_HELPERS = { fetch = true, map = true, import = true, export = true, state = true, provider = true }

local function starting(list, prefix, out, seen)
  out, seen = out or {}, seen or {}
  for _, candidate in ipairs(list) do
    if type(candidate) == "string" and candidate:sub(1, #prefix) == prefix and not seen[candidate] then
      seen[candidate] = true
      out[#out + 1] = candidate
    end
  end
  return out, seen
end

-- The string keys of a value (a table, its __index chain, a userdata's
-- methods) that are identifiers.
local function keys_of(value, methods_only)
  local out, seen, depth = {}, {}, 0
  local function add(t)
    for k, v in pairs(t) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k]
          and (not methods_only or type(v) == "function") then
        seen[k] = true
        out[#out + 1] = k
      end
    end
  end
  while value ~= nil and depth < 5 do
    depth = depth + 1
    if type(value) == "table" then add(value) end
    local mt = getmetatable(value)
    local index = type(mt) == "table" and rawget(mt, "__index") or nil
    if type(index) ~= "table" then break end
    value = index
  end
  table.sort(out)
  return out
end

local function resolve(env, path)
  local value = env
  for part in path:gmatch("[^.:]+") do
    if not part:match("^[%a_][%w_]*$") then return nil end
    local ok, next_value = pcall(function() return value[part] end)
    if not ok then return nil end
    value = next_value
    if value == nil then return nil end
  end
  return value
end

-- complete(ctx, env, word, before) -> candidates: whole words for readline.
local function complete(ctx, env, word, before)
  local helper = before:match("([%a_][%w_]*)%s*%(%s*[\"']$")
  if helper and SYNC_HELPERS[helper] then return starting(ctx.job.sync_order, word) end
  if before:match("sql%s*%(?%s*[\"'][^\"']*$") or before:match("rows%s*%(%s*[\"'][^\"']*$") then
    local names = {}
    for _, entity in ipairs(ctx.job.entity_order) do
      names[#names + 1] = entity
      for field in pairs(ctx.job.entities[entity].fields) do names[#names + 1] = field end
    end
    for _, t in ipairs({ "entsync_map", "entsync_failed", "entsync_history", "entsync_runs", "entsync_failures",
        "entsync_idmap", "entsync_state", "entsync_changes", "entsync_conflicts", "entsync_locks", "entsync_meta" }) do
      names[#names + 1] = t
    end
    for _, keyword in ipairs({ "SELECT", "FROM", "WHERE", "ORDER", "BY", "LIMIT", "COUNT", "UPDATE", "SET",
        "INSERT", "INTO", "VALUES", "DELETE", "JOIN", "GROUP" }) do
      names[#names + 1] = keyword
    end
    table.sort(names)
    return starting(names, word)
  end
  local base, sep, partial = word:match("^(.*)([.:])([%w_]*)$")
  if base and base ~= "" then
    local value = resolve(env, base)
    if value == nil then return {} end
    local out = {}
    for _, key in ipairs(starting(keys_of(value, sep == ":"), partial)) do out[#out + 1] = base .. sep .. key end
    return out
  end
  local out, seen = starting(keys_of(env), word)
  starting(KEYWORDS, word, out, seen)
  table.sort(out)
  return out
end
M.complete = complete

function M.run(job, args, options)
  local loop = require "entsync.loop"
  return loop.run(function()
    local session = require("entsync.session").open(job, { progress = false, log = options.log })
    local ctx = { job = job, session = session, options = options }
    local env = new_env(ctx)
    local state = {}
    local function out(text) io.stdout:write(redact.text(text), "\n") io.stdout:flush() end
    if options.eval or args[1] then
      local source = options.eval or table.concat(args, " ")
      local chunk, _, err = compile(source, env)
      local status = 0
      if not chunk then
        out(err or "incomplete input")
        status = 2
      elseif not evaluate(chunk, out, options, state) then
        status = 1
      end
      session:close()
      return status
    end
    local tty = core.sys.isatty(0)
    local history = (os.getenv("HOME") or ".") .. "/.entsync_history"
    local buffer = nil
    local interrupt
    if tty then
      core.readline.read_history(history)
      core.readline.set_completer(function(word, before) return complete(ctx, env, word, before) end)
      -- Ctrl-C: what is being evaluated stops; else the line is dropped
      interrupt = loop.on_signal("INT", function()
        if state.evaluating then
          state.evaluating:cancel()
        else
          buffer = nil
          core.readline.cancel("> ")
        end
      end)
      out(string.format("entsync %s repl: %s (help() lists the helpers)", core.version, job.display_path))
    end
    local function read()
      if not tty then return io.read("l") end
      core.readline.start(buffer and ">> " or "> ")
      while true do
        -- readline reads only what is there: a wait for a key is the
        -- loop's, so a signal (Ctrl-C) is handled while the prompt waits
        loop.wait_fd(0, "r")
        local line = core.readline.feed()
        if line then return line end
        if line == false then return nil end
      end
    end
    while true do
      local line = read()
      if line == nil then break end
      if tty and line:match("%S") then core.readline.add_history(line) end
      buffer = buffer and (buffer .. "\n" .. line) or line
      if buffer:match("^%s*$") then
        buffer = nil
      else
        local chunk, more, err = compile(buffer, env)
        if chunk then
          buffer = nil
          evaluate(chunk, out, options, state)
        elseif not more then
          buffer = nil
          out("error: " .. err)
        end
      end
    end
    if tty then
      core.readline.stop()
      core.readline.set_completer(nil)
      interrupt:remove()
      core.readline.write_history(history)
      io.stdout:write("\n")
    end
    session:close()
    return 0
  end)
end

return M
