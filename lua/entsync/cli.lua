-- entsync.cli: the command line of entsync-run.
--
-- main(args) parses the arguments, loads the job and runs the command; it
-- returns the exit status and never raises: every error becomes one line
-- on stderr (with its traceback under --verbose).

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"

local M = {}

local USAGE = [[
usage: entsync-run JOB.lua [COMMAND] [ARGS] [OPTIONS]

commands:
  run [SYNC...]            import every sync (or the named ones and what they
                           depend on), in dependency order; the default
  import SYNC REMOTE_ID    import one remote entity
  refresh SYNC LOCAL_ID... refresh local entities from their remotes
  refresh SYNC --all       refresh every entity the sync has imported
  retry SYNC               retry the sync's failed entities now
  failures SYNC [--json]   the sync's failures with their payloads
  failures SYNC retry [KEY...]        retry them (all, or the keys given) now
  failures SYNC dismiss KEY...|--all  forget them (KEY: a remote id for an
                           import, a local id for an export; import:KEY or
                           export:KEY when both have one)
  export SYNC LOCAL_ID...  export local entities now (create or update their remote)
  export SYNC --all        export every local entity of the sync (or --where SQL)
  daemon                   run syncs on their schedules and export changes as
                           they arrive, until SIGTERM or SIGINT; SIGHUP reloads
  repl [-e EXPR]           a Lua prompt with the job loaded (help() lists helpers)
  check                    validate the job, its mappings and providers
  status                   per sync: settings, last run, cursor, lock, failures

options:
  --dry-run                report what would be created, updated and deleted;
                           the store file is left untouched
  --wait SECONDS           wait up to SECONDS for a sync locked by another run
  --allow-deletes          let a full pass delete more than its delete guard
                           allows (import delete_guard, default half)
  --progress, --no-progress  force the live progress line on or off
                           (default: on when stderr is a terminal)
  --log-format text|json   how warnings and errors are written to stderr
  --verbose, -v            tracebacks with errors, more detail
  --help, -h               this text
  --version                entsync's version

exit status: 0 success, 1 the run finished but some entities failed,
2 usage or configuration error, 3 a lock is held by another run,
4 an internal error. A remote that keeps failing stops a run with 1.
]]

local commands = {}

local function usage_error(fmt, ...)
  errors.raise("usage", string.format(fmt, ...) .. " (see entsync-run --help)")
end

-- Options that take a value, and flags.
local value_options = { ["--wait"] = "wait", ["--log-format"] = "log_format", ["--where"] = "where", ["-e"] = "eval" }
local flag_options = {
  ["--dry-run"] = "dry_run", ["--verbose"] = "verbose", ["-v"] = "verbose", ["--help"] = "help",
  ["-h"] = "help", ["--version"] = "version", ["--progress"] = "progress", ["--no-progress"] = "no_progress",
  ["--all"] = "all", ["--allow-deletes"] = "allow_deletes", ["--json"] = "json",
}

function M.parse(args)
  local options, positional = {}, {}
  local i = 1
  while i <= #args do
    local arg = args[i]
    local name, inline = arg:match("^(%-%-[%w-]+)=(.*)$")
    name = name or arg
    if value_options[name] then
      local value = inline
      if value == nil then
        i = i + 1
        value = args[i]
      end
      if value == nil then usage_error("option %s needs a value", name) end
      options[value_options[name]] = value
    elseif flag_options[name] and not inline then
      options[flag_options[name]] = true
    elseif arg:sub(1, 1) == "-" and arg ~= "-" then
      usage_error("unknown option %s", arg)
    else
      positional[#positional + 1] = arg
    end
    i = i + 1
  end
  if options.wait then
    local seconds = tonumber(options.wait)
    if not seconds or seconds < 0 then usage_error("--wait needs a number of seconds, got %s", options.wait) end
    options.wait = seconds
  end
  if options.log_format and options.log_format ~= "text" and options.log_format ~= "json" then
    usage_error("--log-format is text or json, got %s", options.log_format)
  end
  if options.progress then options.progress = true elseif options.no_progress then options.progress = false end
  return options, positional
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

-- One JSON log line for --log-format json.
local function log_line(fields)
  local ok, line = pcall(json.encode, fields)
  if ok then return line .. "\n" end
  for k, v in pairs(fields) do
    if type(v) == "string" then fields[k] = valid_utf8(v) end
  end
  return json.encode(fields) .. "\n"
end

local function make_logger(options)
  return function(level, message)
    if options.log_format == "json" then
      io.stderr:write(log_line({ time = core.sys.now(), level = level, message = message }))
    else
      io.stderr:write(string.format("entsync: %s: %s\n", level, message))
    end
  end
end

-- check ------------------------------------------------------------------------

local function describe_remote(sync)
  local provider = sync.provider
  return sync.resource and string.format("%s %q", provider.name, sync.resource) or provider.name
end

function commands.check(job)
  local out = {}
  local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
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
    if not import.enabled then mode = "no import" end
    say("  %-16s %s -> %s; %s%s%s%s%s", name, describe_remote(sync), table.concat(sync.entities, ", "),
      mode, import.enabled and (", deletes " .. import.deletes) or "", depends, export, schedule)
  end
  print(table.concat(out, "\n"))
  return 0
end

-- status -----------------------------------------------------------------------

local function ago(t)
  if not t then return "never" end
  local seconds = core.sys.now() - t
  if seconds < 120 then return string.format("%.0fs ago", seconds) end
  if seconds < 7200 then return string.format("%.0fm ago", seconds / 60) end
  if seconds < 172800 then return string.format("%.1fh ago", seconds / 3600) end
  return os.date("!%Y-%m-%d %H:%M UTC", math.floor(t))
end

-- Where a full pass in progress resumes, in words.
local function describe_resume(text)
  if text == nil then return "from the start" end
  local number = tonumber(text)
  if number then return string.format("resumes after %d records", number) end
  local resume = json.try_decode(text)
  if type(resume) ~= "table" then return "resumes from " .. tostring(text) end
  if resume.offset then return string.format("resumes after %d records", resume.offset) end
  local checkpoint = resume.checkpoint
  if type(checkpoint) == "table" and checkpoint.file then
    return string.format("resumes in %s after %d records", checkpoint.file, checkpoint.skip or 0)
  end
  return "resumes from the provider's checkpoint " .. json.encode(checkpoint)
end

function commands.status(job)
  local store
  if core.fs.exists(job.store_file) then
    store = core.store.open(job.store_file)
    require("entsync.ledger").migrate(store)
  end
  local book = store and require("entsync.ledger").new(store)
  local out = {}
  local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  say("store %s%s", job.store_file, store and "" or " (not created yet: nothing has run)")
  local daemon = book and book:meta("daemon")
  if daemon then
    local info = json.try_decode(daemon)
    if type(info) == "table" then
      local alive = info.activity ~= "stopped" and core.sys.process_alive(info.pid or 0)
      say("daemon %s: pid %s on %s, started %s, %s%s", alive and "running" or "not running",
        tostring(math.tointeger(info.pid) or info.pid),
        tostring(info.host), ago(info.started_at), tostring(info.activity),
        (type(info.running) == "table" and #info.running > 0) and (" (" .. table.concat(info.running, ", ") .. ")") or "")
    end
  end
  for _, name in ipairs(job.run_order) do
    local sync = job.syncs[name]
    local import = sync.import
    say("")
    say("sync %s: %s -> %s, %s%s%s", name, describe_remote(sync), table.concat(sync.entities, ", "), import.mode,
      import.limit and (", limit " .. import.limit) or "", ", deletes " .. import.deletes)
    local sync_id = book and book:sync_id(name, true)
    if sync_id then
      local run = book:last_run(sync_id)
      if run then
        say("  last run   %s %s, %s (%s): %d created, %d updated, %d unchanged, %d stale, %d failed, %d deleted",
          run.operation, ago(run.started_at), run.status, run.mode or "-", run.created, run.updated, run.unchanged,
          run.stale, run.failed, run.deleted)
        if run.error then say("  last error %s", run.error) end
      else
        say("  last run   never")
      end
      local state = book:state(sync_id)
      if state.cursor_mark ~= nil then
        say("  cursor     %s / %s", tostring(state.cursor_mark), tostring(state.cursor_id))
      elseif import.mode == "incremental" then
        say("  cursor     none (the next run reads everything)")
      end
      if state.pass_open == 1 then
        say("  full pass  %d in progress, %s", state.pass, describe_resume(state.pass_resume))
      end
      say("  mapped     %d remote entities", book:mapped_count(sync_id))
      local holder = core.lock.holder(store, "sync:" .. name)
      if holder then
        say("  lock       held by pid %d on %s since %s, expires in %.0fs", holder.pid, holder.host,
          ago(holder.acquired_at), holder.expires_at - core.sys.now())
      else
        say("  lock       free")
      end
      if sync.export then
        local entity_id = book:entity_id(sync.entities[1], true)
        local queued = entity_id and book:pending_count(state.out_seq or 0, json.encode({ entity_id }), sync_id) or 0
        say("  outbox     %d changes to send, %d failed exports, deletes %s, conflicts: %s", queued,
          book:failure_count(sync_id, "export"), sync.export.deletes,
          type(sync.export.conflict) == "function" and "function" or sync.export.conflict)
      end
      say("  failures   %d pending", book:failure_count(sync_id))
      for _, failure in ipairs(book:failures(sync_id, 5)) do
        local when = failure.next_at <= core.sys.now() and "due"
          or failure.waits_for and failure.next_at > 1e100 and ("after " .. failure.waits_for .. " runs")
          or string.format("in %.0fs", failure.next_at - core.sys.now())
        say("    %s%s (attempt %d, retry %s): %s", failure.direction == "export" and "local " or "", failure.key,
          failure.attempts, when, failure.error)
      end
    else
      say("  last run   never")
    end
  end
  if store then store:close() end
  print(table.concat(out, "\n"))
  return 0
end

-- operations -------------------------------------------------------------------

-- Runs fn(session) inside the loop with the job's store open.
local function with_session(job, options, fn)
  local loop = require "entsync.loop"
  return loop.run(function()
    local session = require("entsync.session").open(job, { dry_run = options.dry_run, wait = options.wait,
      progress = options.progress, log = options.log, should_stop = options.should_stop,
      allow_deletes = options.allow_deletes })
    local ok, result = pcall(fn, session)
    session:close()
    if not ok then error(result, 0) end
    return result
  end)
end

local function report(results, started, options)
  local operation = require "entsync.operation"
  local failed = false
  for _, result in ipairs(results) do
    print(operation.summary(result, core.sys.monotonic() - started, options.dry_run))
    failed = failed or result.counts.failed > 0
  end
  return failed and errors.exit_codes.failed or 0
end

local function sync_named(job, name)
  if not name then usage_error("a sync name is needed") end
  local sync = job.syncs[name]
  if not sync then
    errors.raise("usage", string.format("%s: no sync named \"%s\" (declared: %s)", job.display_path, name,
      table.concat(job.sync_order, ", ")))
  end
  return sync
end

-- Runs the planned syncs as tasks of the loop: a sync's import starts once
-- the imports it depends on have finished (it waits for their tasks), so
-- independent syncs run side by side while their requests are in flight.
-- A sync that exports on change drains its changes once every import of
-- this run that writes its entity has finished, so what one remote brought
-- reaches the others in the same run.
function commands.run(job, args, options)
  local plan = require("entsync.job").plan(job, args)
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
      local started = core.sys.monotonic()
      local ok, result = pcall(require("entsync.import").run, session, sync)
      if not ok then
        first_error = first_error or result
        return false
      end
      print(operation.summary(result, core.sys.monotonic() - started, options.dry_run))
      io.stdout:flush()
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
      local started = core.sys.monotonic()
      local export = require "entsync.export"
      local done, result = pcall(export.drain, session, sync)
      if not done then
        first_error = first_error or result
        return
      end
      print(export.summary(result, core.sys.monotonic() - started))
      io.stdout:flush()
      failed_entities = failed_entities or result.counts.failed > 0
    end
    for _, name in ipairs(plan) do imports[name] = loop.spawn(import, job.syncs[name]) end
    for _, name in ipairs(plan) do
      local sync = job.syncs[name]
      if sync.export and sync.export.on_change and not options.dry_run then drains[#drains + 1] = loop.spawn(drain, sync) end
    end
    for _, name in ipairs(plan) do imports[name]:wait() end
    for _, task in ipairs(drains) do task:wait() end
    if first_error then error(first_error, 0) end
    return failed_entities and errors.exit_codes.failed or 0
  end)
end

function commands.import(job, args, options)
  local sync = sync_named(job, args[1])
  if not args[2] or args[3] then usage_error("import takes a sync and one remote id") end
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    return report({ require("entsync.import").import_one(session, sync, args[2]) }, started, options)
  end)
end

function commands.refresh(job, args, options)
  local sync = sync_named(job, args[1])
  local ids = { table.unpack(args, 2) }
  if options.all == (#ids > 0) then usage_error("refresh takes a sync and local ids, or --all") end
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    local local_ids = ids
    if options.all then local_ids = nil end
    return report({ require("entsync.import").refresh(session, sync, local_ids) }, started, options)
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
    print(export.summary(result, core.sys.monotonic() - started))
    return result.counts.failed > 0 and errors.exit_codes.failed or 0
  end)
end

-- failures SYNC [--json] | failures SYNC retry [KEY...] | failures SYNC dismiss KEY... | --all
function commands.failures(job, args, options)
  local sync = sync_named(job, args[1])
  local action = args[2]
  local keys = { table.unpack(args, 3) }
  if action ~= nil and action ~= "retry" and action ~= "dismiss" then
    usage_error("failures takes a sync, then nothing (list them), retry [KEY...] or dismiss KEY... | --all")
  end
  if action == "dismiss" and #keys == 0 and not options.all then
    usage_error("failures SYNC dismiss takes the keys to dismiss, or --all")
  end
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
          print(string.format("%s %s%s: %s (attempt %d, %s)", f.direction, f.key,
            f.local_id and string.format(" (local %d)", f.local_id) or "", f.error, f.attempts, when))
          if f.payload then print("  payload " .. f.payload) end
        end
      end
      if not options.json then print(string.format("%s: %d failures", sync.name, #rows)) end
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
      print(require("entsync.operation").summary(result, core.sys.monotonic() - started, options.dry_run))
      failed = result.counts.failed > 0
    end
    if sync.export and book:failure_count(sync_id, "export") > 0 then
      local export = require "entsync.export"
      local result = export.drain(session, sync)
      print(export.summary(result, core.sys.monotonic() - started))
      failed = failed or result.counts.failed > 0
    end
    return failed and errors.exit_codes.failed or 0
  end)
end

function commands.daemon(job, args, options)
  if args[1] then usage_error("daemon takes no arguments") end
  if options.dry_run then usage_error("daemon does not take --dry-run") end
  return require("entsync.daemon").run(job, options)
end

function commands.repl(job, args, options)
  return require("entsync.repl").run(job, args, options)
end

function commands.retry(job, args, options)
  local sync = sync_named(job, args[1])
  if args[2] then usage_error("retry takes one sync") end
  return with_session(job, options, function(session)
    local started = core.sys.monotonic()
    return report({ require("entsync.import").retry(session, sync) }, started, options)
  end)
end

-- main -------------------------------------------------------------------------

local function report_error(e, options)
  e = errors.wrap(e)
  if options.log_format == "json" then
    io.stderr:write(log_line({ time = core.sys.now(), level = "fatal", kind = e.kind, message = e.message,
      traceback = options.verbose and e.traceback or nil }))
    return errors.exit_codes[e.kind] or errors.exit_codes.internal
  end
  local prefix = e.kind == "internal" and "entsync-run: internal error: " or "entsync-run: "
  io.stderr:write(prefix, e.message, "\n")
  if options.verbose and e.traceback then io.stderr:write(e.traceback, "\n") end
  return errors.exit_codes[e.kind] or errors.exit_codes.internal
end

local function dispatch(args)
  local options, positional = M.parse(args)
  options.log = make_logger(options)
  require("entsync.http").set_logger(options.log, options.verbose)
  if options.help then
    io.stdout:write(USAGE)
    return 0
  end
  if options.version then
    print(string.format("entsync %s (Lua %s, SQLite %s)", core.version, _VERSION:match("%d.*"), core.sqlite_version))
    return 0
  end
  local job_path = positional[1]
  if not job_path then usage_error("no job file given") end
  local command = positional[2] or "run"
  local handler = commands[command]
  if not handler then usage_error("unknown command \"%s\"", command) end
  local job = require("entsync.job").load(job_path)
  return handler(job, { table.unpack(positional, 3) }, options)
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
