-- entsync.cli: the command line of entsync-run.
--
-- main(args) parses the arguments (entsync.usage: the grammar, the help
-- texts, the suggestions), loads the job and runs the command; it returns
-- the exit status and never raises: every error becomes one line on stderr
-- (with its traceback under --verbose).

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local logger = require "entsync.logger"
local usage = require "entsync.usage"

local M = {}

local commands = {}
local usage_error = usage.usage_error

M.parse = usage.parse
M.EXIT_STOPPED = 5

-- check ------------------------------------------------------------------------

local function describe_remote(sync)
  local provider = sync.provider
  return sync.resource and string.format("%s %q", provider.name, sync.resource) or provider.name
end
M.describe_remote = describe_remote

-- Whether each sync's mapping changed since its rows were written, from
-- the store when there is one (read only; nothing is created).
local function mapping_notes(job)
  local notes = {}
  if not core.fs.exists(job.store_file) then return notes end
  local ok = pcall(function()
    local store = core.store.open(job.store_file)
    local ledger = require "entsync.ledger"
    if ledger.stored_version(store) == ledger.VERSION then
      local book = ledger.new(store)
      for _, name in ipairs(job.run_order) do
        local sync = job.syncs[name]
        local id = book:sync_id(name, true)
        local stored = id and book:state(id).fingerprint
        if stored and sync.mapping_fingerprint and stored ~= sync.mapping_fingerprint then
          notes[#notes + 1] = string.format("note: sync \"%s\": its mapping changed since its rows were written; "
            .. "`entsync-run %s run %s --full` maps every record again", name, job.display_path, name)
        end
      end
    end
    store:close()
  end)
  if not ok then return {} end
  return notes
end

function commands.check(job, _, options)
  options = options or {}
  local out = {}
  local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  local problems = job.problems or {}
  -- in the order of the files and lines they name
  local order = {}
  for i, problem in ipairs(problems) do
    local file, line = problem:match("^([^:\n]+):(%d+):")
    order[problem] = { file = file or "\255", line = tonumber(line) or 0, i = i }
  end
  table.sort(problems, function(a, b)
    local x, y = order[a], order[b]
    if x.file ~= y.file then return x.file < y.file end
    if x.line ~= y.line then return x.line < y.line end
    return x.i < y.i
  end)
  if #problems > 0 then
    for _, problem in ipairs(problems) do
      io.stderr:write("entsync-run: ", problem, "\n")
      local traceback = options.verbose and job.tracebacks and job.tracebacks[problem]
      if traceback then io.stderr:write(traceback, "\n") end
    end
    if #problems > 1 then io.stderr:write(string.format("entsync-run: %s: %d errors\n", job.display_path, #problems)) end
    return errors.exit_codes.config
  end
  say("job %s: ok", job.display_path)
  say("store     %s", job.store_file)
  say("entities  %d", #job.entity_order)
  for _, name in ipairs(job.entity_order) do
    local fields = {}
    for field, field_type in pairs(job.entities[name].fields) do fields[#fields + 1] = field .. " " .. field_type end
    table.sort(fields)
    say("  %-16s %s", name, table.concat(fields, ", "))
  end
  say("providers %d", #job.providers)
  for _, provider in ipairs(job.providers) do
    say("  %-16s %s (line %d)", provider.name, provider.type, provider.where.line)
  end
  say("syncs     %d, in run order", #job.run_order)
  for _, name in ipairs(job.run_order) do
    local sync = job.syncs[name]
    local import = sync.import
    local mode = import.mode .. (import.mode == "incremental" and (" on " .. import.changed) or "")
    if import.limit then mode = mode .. ", limit " .. import.limit end
    local depends = #sync.depends_on > 0 and ("; after " .. table.concat(sync.depends_on, ", ")) or ""
    local export = ""
    if sync.export then
      local conflict = sync.export.conflict
      if type(conflict) == "function" then
        conflict = "a function"
      elseif conflict == "newest" then
        conflict = string.format("newest (%s compared as %s)", sync.changed_field,
          sync.import.changed_kind == "time" and "a time" or "a time: it must hold ISO 8601 or epoch times")
      end
      export = string.format("; exports%s (deletes %s, conflicts: %s)", sync.export.on_change and " on change" or "",
        sync.export.deletes, conflict)
    end
    local schedule = sync.schedule and ("; schedule " .. sync.schedule.text) or ""
    if sync.webhook then
      schedule = schedule .. string.format("; webhook POST %s (ids at %s)", sync.webhook.path,
        sync.webhook.ids or sync.webhook.id)
    end
    if not import.enabled then mode = "no import" end
    say("  %-16s %s -> %s; %s%s%s%s%s", name, describe_remote(sync), table.concat(sync.entities, ", "),
      mode, import.enabled and (", deletes " .. import.deletes) or "", depends, export, schedule)
  end
  for _, note in ipairs(job.notes or {}) do say("note: %s", note) end
  for _, note in ipairs(mapping_notes(job)) do say("%s", note) end
  print(table.concat(out, "\n"))
  return 0
end

-- operations -------------------------------------------------------------------

-- Runs fn(session) inside the loop with the job's store open. SIGINT and
-- SIGTERM (when stoppable) ask the run to stop at its next checkpoint; a
-- second one takes the signal's own course (the process ends at once).
local function with_session(job, options, fn, stoppable)
  local loop = require "entsync.loop"
  return loop.run(function()
    local handles = {}
    local function drop()
      for _, handle in ipairs(handles) do handle:remove() end
      handles = {}
    end
    if stoppable then
      local function stop(name)
        if options.stopped then return end
        options.stopped = name
        options.log("warn", string.format("SIG%s: stopping at the next checkpoint (once more to end at once)", name),
          { event = "signal", signal = name })
        drop()
      end
      handles = { loop.on_signal("INT", stop), loop.on_signal("TERM", stop) }
      options.should_stop = function() return options.stopped ~= nil end
    end
    local ok, session = pcall(require("entsync.session").open, job, {
      dry_run = options.dry_run, wait = options.wait, progress = options.progress,
      progress_every = options.progress_every, log_format = options.log_format, log = options.log,
      should_stop = options.should_stop, allow_deletes = options.allow_deletes, diff = options.diff,
      out = options.out,
    })
    if not ok then
      drop()
      error(session, 0)
    end
    local done, result = pcall(fn, session)
    -- the first error wins: closing after a failure must not replace it
    local closed, err = pcall(session.close, session)
    if done and not closed then done, result = false, err end
    drop()
    if not done then error(result, 0) end
    return result
  end)
end

-- Prints a summary line, and with --log-format json writes it as an event.
local function announce(options, result, line, seconds, kind)
  print(line)
  io.stdout:flush()
  if options.log_format == "json" then
    local counts = json.object()
    for k, v in pairs(result.counts) do counts[k] = v end
    options.log(result.counts.failed > 0 and "warn" or "info", line, { event = "summary", kind = kind,
      sync = result.sync, operation = result.operation, counts = counts, seconds = seconds,
      status = result.status, stopped = result.stopped or nil, dry_run = options.dry_run or nil })
  end
end
M.announce = announce

local function report(results, started, options)
  local operation = require "entsync.operation"
  local failed = false
  for _, result in ipairs(results) do
    local seconds = core.sys.monotonic() - started
    announce(options, result, operation.summary(result, seconds, options.dry_run), seconds, "import")
    failed = failed or result.counts.failed > 0
  end
  return failed and errors.exit_codes.failed or 0
end

local function sync_named(job, name)
  if not name then usage_error("a sync name is needed") end
  local sync = job.syncs[name]
  if not sync then
    errors.raise("usage", string.format("%s: no sync named \"%s\" (declared: %s)%s", job.display_path, name,
      table.concat(job.sync_order, ", "), usage.did_you_mean(name, job.sync_order)))
  end
  return sync
end
M.sync_named = sync_named

local function exit_status(options, failed)
  if options.stopped then return M.EXIT_STOPPED end
  return failed and errors.exit_codes.failed or 0
end

-- Runs the planned syncs as tasks of the loop: a sync's import starts once
-- the imports it depends on have finished (it waits for their tasks), so
-- independent syncs run side by side while their requests are in flight.
-- A sync that exports on change drains its changes once every import of
-- this run that writes its entity has finished, so what one remote brought
-- reaches the others in the same run. A dry run reports what the drains
-- would send, without sending.
function commands.run(job, args, options)
  for _, name in ipairs(args) do sync_named(job, name) end
  local plan = require("entsync.job").plan(job, args)
  local named = {}
  for _, name in ipairs(args) do named[name] = true end
  local loop = require "entsync.loop"
  local operation = require "entsync.operation"
  return with_session(job, options, function(session)
    local imports, drains, failed_entities, first_error = {}, {}, false, nil
    local function import(sync)
      for _, other in ipairs(sync.depends_on) do
        local task = imports[other]
        if task then
          local ok, fine = task:wait()
          if not ok or not fine then return false end
        end
      end
      if not sync.import.enabled then return true end
      if options.stopped then return false end
      local started = core.sys.monotonic()
      local full = options.full and (#args == 0 or named[sync.name]) or nil
      local ok, result = pcall(require("entsync.import").run, session, sync, { full = full, follow = options.follow })
      if not ok then
        first_error = first_error or result
        return false
      end
      local seconds = core.sys.monotonic() - started
      announce(options, result, operation.summary(result, seconds, options.dry_run), seconds, "import")
      failed_entities = failed_entities or result.counts.failed > 0
      return not result.stopped
    end
    local function writes(sync, entity)
      if not sync.import.enabled then return false end
      for _, e in ipairs(sync.entities) do if e == entity then return true end end
      return false
    end
    local function drain(sync)
      local ok, fine = imports[sync.name]:wait()
      if not ok or not fine then return end
      for _, name in ipairs(plan) do
        if name ~= sync.name and writes(job.syncs[name], sync.entities[1]) then imports[name]:wait() end
      end
      if options.stopped then return end
      local started = core.sys.monotonic()
      local export = require "entsync.export"
      local done, result = pcall(options.dry_run and export.dry_drain or export.drain, session, sync)
      if not done then
        first_error = first_error or result
        return
      end
      local seconds = core.sys.monotonic() - started
      announce(options, result, export.summary(result, seconds, options.dry_run), seconds, "export")
      failed_entities = failed_entities or result.counts.failed > 0
    end
    for _, name in ipairs(plan) do imports[name] = loop.spawn(import, job.syncs[name]) end
    for _, name in ipairs(plan) do
      local sync = job.syncs[name]
      if sync.export and sync.export.on_change then drains[#drains + 1] = loop.spawn(drain, sync) end
    end
    for _, name in ipairs(plan) do imports[name]:wait() end
    for _, task in ipairs(drains) do task:wait() end
    if first_error then error(first_error, 0) end
    return exit_status(options, failed_entities)
  end, true)
end

function commands.import(job, args, options)
  local sync = sync_named(job, args[1])
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    return report({ require("entsync.import").import_one(session, sync, args[2]) }, started, options)
  end)
end

function commands.refresh(job, args, options)
  local sync = sync_named(job, args[1])
  local ids = { table.unpack(args, 2) }
  if (options.all and true or false) == (#ids > 0) then
    usage_error("refresh takes a sync and local ids, or --all")
  end
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    local local_ids = ids
    if options.all then local_ids = nil end
    local result = require("entsync.import").refresh(session, sync, local_ids)
    local code = report({ result }, started, options)
    return exit_status(options, code ~= 0)
  end, true)
end

-- reset SYNC: the next run reads everything.
function commands.reset(job, args, options)
  local sync = sync_named(job, args[1])
  if not sync.import.enabled then
    errors.raise("usage", string.format("%s: sync \"%s\" does not import: there is nothing to reset",
      job.display_path, sync.name))
  end
  return with_session(job, options, function(session)
    local kept = require("entsync.import").reset(session, sync)
    print(string.format("%s: reset: the next run reads and maps every record (kept: %d id-map entries, "
      .. "the entity rows, %d failures, the export position and the run history)", sync.name, kept.mapped,
      kept.failures))
    return 0
  end)
end

-- export SYNC LOCAL_ID... | --all | --where SQL
function commands.export(job, args, options)
  local sync = sync_named(job, args[1])
  local ids = { table.unpack(args, 2) }
  local chosen = (#ids > 0 and 1 or 0) + (options.all and 1 or 0) + (options.where and 1 or 0)
  if chosen ~= 1 then usage_error("export takes a sync and local ids, or --all, or --where CONDITION") end
  if not sync.export then
    errors.raise("usage", string.format("%s: sync \"%s\" does not export (give it export = { ... })",
      job.display_path, sync.name))
  end
  return with_session(job, options, function(session)
    local export = require "entsync.export"
    local entity = sync.entities[1]
    if options.all or options.where then
      local sql = string.format('SELECT id FROM "%s"%s ORDER BY id', entity,
        options.where and (" WHERE " .. options.where) or "")
      local ok, rows = pcall(session.store.rows, session.store, sql)
      if not ok then usage_error("--where: %s", errors.strip_position(tostring(rows))) end
      ids = {}
      for _, row in ipairs(rows) do ids[#ids + 1] = row.id end
    else
      for i, id in ipairs(ids) do
        ids[i] = math.tointeger(tonumber(id))
        if not ids[i] then usage_error("local ids are integers, got %s", id) end
      end
    end
    if options.dry_run then
      -- what would be sent, one JSON line per entity; nothing is written
      for _, id in ipairs(ids) do print(json.encode(export.preview(session, sync, id))) end
      print(string.format("%s: would export %d (dry run: nothing was sent or written)", sync.name, #ids))
      return 0
    end
    local started = core.sys.monotonic()
    local result = export.export_list(session, sync, ids)
    local seconds = core.sys.monotonic() - started
    announce(options, result, export.summary(result, seconds), seconds, "export")
    return result.counts.failed > 0 and errors.exit_codes.failed or 0
  end)
end

-- failures SYNC [--json] | failures SYNC retry [KEY...] | failures SYNC dismiss KEY... | --all
function commands.failures(job, args, options)
  local sync = sync_named(job, args[1])
  local action = args[2]
  local keys = { table.unpack(args, 3) }
  if action ~= nil and action ~= "retry" and action ~= "dismiss" then
    usage_error("failures takes a sync, then nothing (list them), retry [KEY...] or dismiss KEY... | --all%s",
      usage.did_you_mean(action, { "retry", "dismiss" }))
  end
  if action == "dismiss" and #keys == 0 and not options.all then
    usage_error("failures SYNC dismiss takes the keys to dismiss, or --all")
  end
  if options.all and action ~= "dismiss" then usage_error("--all goes with failures SYNC dismiss") end
  if options.json and action ~= nil then usage_error("--json goes with failures SYNC (the list)") end
  return with_session(job, options, function(session)
    local book = session.ledger
    local sync_id = book:sync_id(sync.name)
    if action == nil then
      local rows = book:failures(sync_id)
      for _, f in ipairs(rows) do
        if options.json then
          print(json.encode(json.object({ sync = sync.name, direction = f.direction, key = f.key,
            local_id = f.local_id, remote_id = f.remote_id, error = f.error, attempts = f.attempts,
            first_at = f.first_at, last_at = f.last_at, next_at = f.next_at < 1e100 and f.next_at or nil,
            waits_for = f.waits_for, payload = f.payload and json.try_decode(f.payload) or f.payload })))
        else
          local when = f.next_at <= core.sys.now() and "due now"
            or f.next_at > 1e100 and ("after " .. tostring(f.waits_for) .. " runs")
            or string.format("retried in %.0fs", f.next_at - core.sys.now())
          print(string.format("%s %s%s: %s (attempt %d, %s)", f.direction, logger.printable(f.key),
            f.local_id and string.format(" (local %d)", f.local_id) or "", logger.printable(f.error), f.attempts, when))
          if f.payload then print("  payload " .. logger.printable(f.payload)) end
        end
      end
      if not options.json then
        print(string.format("%s: %d failures%s", sync.name, #rows, #rows > 0 and string.format(
          " (retry them: entsync-run %s failures %s retry)", job.display_path, sync.name) or ""))
      end
      return 0
    end
    local chosen = #keys > 0 and keys or nil
    if action == "dismiss" then
      local n = session:transaction(nil, book.dismiss, book, sync_id, chosen)
      print(string.format("%s: %d failures dismissed", sync.name, n))
      return 0
    end
    -- retry: the chosen failures come due now and are retried, imports by
    -- fetching them again, exports by the drain
    session:transaction(nil, book.make_due, book, sync_id, chosen)
    local started, failed = core.sys.monotonic(), false
    if book:failure_count(sync_id, "import") > 0 then
      local result = require("entsync.import").retry(session, sync, chosen ~= nil)
      local seconds = core.sys.monotonic() - started
      announce(options, result, require("entsync.operation").summary(result, seconds, options.dry_run), seconds,
        "import")
      failed = result.counts.failed > 0
    end
    if sync.export and book:failure_count(sync_id, "export") > 0 then
      local export = require "entsync.export"
      local result = export.drain(session, sync)
      local seconds = core.sys.monotonic() - started
      announce(options, result, export.summary(result, seconds), seconds, "export")
      failed = failed or result.counts.failed > 0
    end
    return failed and errors.exit_codes.failed or 0
  end)
end

function commands.daemon(job, _, options)
  return require("entsync.daemon").run(job, options)
end

function commands.repl(job, args, options)
  return require("entsync.repl").run(job, args, options)
end

function commands.retry(job, args, options)
  local sync = sync_named(job, args[1])
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    return report({ require("entsync.import").retry(session, sync) }, started, options)
  end)
end

function commands.log(job, args, options)
  if args[1] then sync_named(job, args[1]) end
  return require("entsync.status").history(job.store_file, args[1], options)
end

-- main -------------------------------------------------------------------------

local function report_error(e, options)
  e = errors.wrap(e)
  local redact = require "entsync.redact"
  e.message, e.traceback = redact.text(e.message), redact.text(e.traceback)
  if options.log_format == "json" then
    io.stderr:write(logger.json_line(json.object({ time = logger.iso_time(), level = "fatal", kind = e.kind,
      message = e.message, traceback = options.verbose and e.traceback or nil })))
    return errors.exit_codes[e.kind] or errors.exit_codes.internal
  end
  local prefix = e.kind == "internal" and "entsync-run: internal error: " or "entsync-run: "
  io.stderr:write(prefix, logger.printable(e.message), "\n")
  if options.verbose and e.traceback then io.stderr:write(e.traceback, "\n") end
  return errors.exit_codes[e.kind] or errors.exit_codes.internal
end

-- The command a --help is about: `job.lua CMD --help`, `CMD --help` (with
-- no file of that name) or `help CMD`.
local function help_subject(positional)
  local a, b = positional[1], positional[2]
  if b and usage.commands[b] then return b end
  if a and usage.commands[a] and not core.fs.exists(a) then return a end
  return nil
end

local function print_help(name)
  if name and name ~= "help" then
    io.stdout:write(usage.command_text(name))
  else
    io.stdout:write(usage.text())
  end
  return 0
end

-- A job path that is a folder: a usage error, pointing at the job inside.
local function check_job_path(path)
  if core.fs.isdir(path) then
    local inside = path:gsub("/+$", "") .. "/job.lua"
    local hint = core.fs.exists(inside) and string.format(" (did you mean %s?)", inside) or ""
    errors.raise("usage", string.format("%s is a folder; give the job file%s (see entsync-run --help)", path, hint))
  end
end

local function dispatch(args)
  local options, positional = M.parse(args)
  options.log = logger.new(options)
  require("entsync.http").set_logger(options.log, options.verbose)
  if options.version then
    print(string.format("entsync %s (Lua %s, SQLite %s)", core.version, _VERSION:match("%d.*"), core.sqlite_version))
    return 0
  end
  if options.help then return print_help(help_subject(positional)) end
  -- `help [COMMAND]`, with or without a job before it
  local help_at = (positional[1] == "help" and not core.fs.exists("help")) and 1
    or (positional[2] == "help" and 2) or nil
  if help_at then
    local name = positional[help_at + 1]
    if name and not usage.commands[name] then
      usage_error("no command \"%s\"%s", name, usage.did_you_mean(name, usage.order))
    end
    return print_help(name)
  end
  local job_path = positional[1]
  if not job_path then usage_error("no job file given") end
  local command = positional[2] or "run"
  check_job_path(job_path)
  local rest = { table.unpack(positional, 3) }
  if not usage.commands[command] then
    if usage.commands[job_path] and core.fs.exists(command) then
      usage_error("the job file comes first: entsync-run %s %s", command, job_path)
    end
    local hint = usage.did_you_mean(command, usage.order)
    if hint == "" then
      -- a sync's name given as the command
      local ok, job = pcall(require("entsync.job").load, job_path)
      if ok and job.syncs[command] then
        hint = string.format(" (to run sync %s: entsync-run %s run %s)", command, job_path, command)
      end
    end
    usage_error("unknown command \"%s\"%s", command, hint)
  end
  usage.check_command(command, options, rest)
  if command == "status" then
    return require("entsync.status").command(job_path, rest, options)
  end
  if command == "check" then
    local job = require("entsync.job").load(job_path, { collect = true })
    return commands.check(job, rest, options)
  end
  local job = require("entsync.job").load(job_path)
  return commands[command](job, rest, options)
end

function M.main(args)
  local options = {}
  for i, arg in ipairs(args) do
    if arg == "--verbose" or arg == "-v" then options.verbose = true end
    if arg == "--log-format=json" or (arg == "--log-format" and args[i + 1] == "json") then options.log_format = "json" end
  end
  local ok, result = xpcall(dispatch, function(e)
    if errors.is(e) then return e end
    return errors.new("internal", tostring(e), { traceback = debug.traceback(tostring(e), 2) })
  end, args)
  io.stdout:flush()
  if not ok then return report_error(result, options) end
  return result
end

return M
