-- entsync.status: what the store says about each sync, for `status`,
-- `log`, the daemon's /metrics and its status page.
--
-- gather() reads the store alone, read only: the syncs come from the job
-- when it loads, and from the store's own list of them when it does not
-- (a broken job file, the daemon still running the old one). It says per
-- sync what ran last and last went well, what runs now (and whether the
-- lease holder is alive), the cursor and full pass, failures, the outbox,
-- the next scheduled run, whether it is stale, and the problems that make
-- `status` exit 1, each with a hint for the next command.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local ledger = require "entsync.ledger"
local redact = require "entsync.redact"

local M = {}

local null = json.null

local function now() return core.sys.now() end

-- "12s ago", "5m ago", "2.5h ago", then the date.
function M.ago(t)
  if not t then return "never" end
  local seconds = now() - t
  if seconds < 120 then return string.format("%.0fs ago", math.max(0, seconds)) end
  if seconds < 7200 then return string.format("%.0fm ago", seconds / 60) end
  if seconds < 172800 then return string.format("%.1fh ago", seconds / 3600) end
  return os.date("!%Y-%m-%d %H:%M UTC", math.floor(t))
end

local function span(seconds)
  seconds = math.max(0, seconds)
  if seconds < 120 then return string.format("%.0fs", seconds) end
  if seconds < 7200 then return string.format("%.0fm", seconds / 60) end
  return string.format("%.1fh", seconds / 3600)
end
M.span = span

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

-- The store file of a job that does not load: its `store "..."` line when
-- one can be read, else entsync.db beside it.
function M.guess_store(job_path)
  local dir = job_path:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then dir = core.fs.cwd() .. (dir == "." and "" or ("/" .. dir:gsub("^%./", ""))) end
  local file = io.open(job_path, "r")
  local source = file and file:read("a") or ""
  if file then file:close() end
  local path = source:match("\n%s*store%s*%(?%s*\"([^\"]+)\"") or source:match("^%s*store%s*%(?%s*\"([^\"]+)\"")
    or source:match("\n%s*store%s*%(?%s*'([^']+)'") or "entsync.db"
  if path:sub(1, 1) == "/" then return path end
  return dir .. "/" .. path
end

-- The period of a schedule: the time between its next two due times.
local function period_of(schedule)
  local s = require "entsync.schedule"
  local first = s.next_time(schedule, now())
  local second = first and s.next_time(schedule, first)
  return first and second and (second - first) or nil, first
end

local function lease_of(store, name)
  local holder = core.lock.holder(store, name)
  if not holder then return nil end
  local here = holder.host == core.sys.hostname()
  local alive
  if here then alive = core.sys.process_alive(holder.pid or 0) else alive = (holder.expires_at or 0) > now() end
  return { pid = math.tointeger(holder.pid) or holder.pid, host = holder.host, owner = holder.owner,
    acquired_at = holder.acquired_at, heartbeat_at = holder.heartbeat_at, expires_at = holder.expires_at,
    alive = alive and (holder.expires_at or 0) > now() or false, dead = here and not alive,
    expired = (holder.expires_at or 0) <= now() }
end

local function run_of(row)
  if not row then return nil end
  return {
    id = row.id, operation = row.operation, mode = row.mode, status = row.status, started_at = row.started_at,
    ended_at = row.ended_at, seconds = row.ended_at and (row.ended_at - row.started_at) or nil,
    counts = json.object({ created = row.created, updated = row.updated, unchanged = row.unchanged, stale = row.stale,
      failed = row.failed, deleted = row.deleted, skipped = row.skipped, conflicts = row.conflicts }),
    cursor_before = row.cursor_before, cursor_after = row.cursor_after, error = row.error, pid = row.pid,
    host = row.host,
  }
end

-- The daemon's own record (entsync_meta "daemon"), and whether it lives.
local function daemon_of(store, book)
  local text = book:meta("daemon")
  local info = text and json.try_decode(text)
  if type(info) ~= "table" then return nil end
  local lease = lease_of(store, "daemon")
  local here = info.host == core.sys.hostname()
  local alive = info.activity ~= "stopped"
    and (here and core.sys.process_alive(info.pid or 0) or (not here and (info.heartbeat_at or 0) > now() - 60))
  return {
    pid = math.tointeger(info.pid) or info.pid, host = info.host, started_at = info.started_at,
    heartbeat_at = info.heartbeat_at, activity = info.activity, alive = alive and true or false,
    running = type(info.running) == "table" and info.running or {}, next_due = type(info.next_due) == "table"
      and info.next_due or json.object(), listen = info.listen, lease = lease,
  }
end

local function problem(entry, kind, message, hint)
  entry.problems[#entry.problems + 1] = { kind = kind, message = message }
  if hint then entry.hints[#entry.hints + 1] = hint end
end

-- One sync's entry. sync: the job's declaration, or nil (the job does not
-- load, or no longer declares it).
local function sync_entry(store, book, job, name, sync, daemon, options)
  local entry = { name = name, declared = sync ~= nil, problems = {}, hints = {} }
  local display = job and job.display_path or options.job_path or "JOB.lua"
  local function cmd(...) return "entsync-run " .. display .. " " .. table.concat({ ... }, " ") end
  if sync then
    local import = sync.import
    entry.remote = require("entsync.cli").describe_remote(sync)
    entry.entities = sync.entities
    entry.mode = import.enabled and import.mode or "none"
    entry.limit = import.limit
    entry.deletes = import.deletes
    entry.schedule = sync.schedule and sync.schedule.text or nil
    entry.exports = sync.export ~= nil
  end
  local sync_id = book and book:sync_id(name, true)
  entry.known = sync_id ~= nil
  if not sync_id then return entry end
  entry.last_run = run_of(book:last_run(sync_id))
  entry.last_managed = run_of(book:last_managed_run(sync_id))
  entry.last_good = run_of(book:last_good_run(sync_id))
  entry.lease = lease_of(store, "sync:" .. name)
  entry.running = {}
  for _, row in ipairs(book:running_runs(sync_id)) do
    local run = run_of(row)
    local here = row.host == core.sys.hostname()
    run.alive = entry.lease ~= nil and entry.lease.alive and entry.lease.pid == row.pid
    run.dead = here and not core.sys.process_alive(row.pid or 0)
    entry.running[#entry.running + 1] = run
  end
  local state = book:state(sync_id)
  entry.cursor = state.cursor_mark ~= nil and { mark = state.cursor_mark, id = state.cursor_id } or nil
  entry.checkpoint = state.checkpoint
  if state.pass_open == 1 then
    entry.pass = { number = state.pass, resume = describe_resume(state.pass_resume) }
  end
  entry.mapped = book:mapped_count(sync_id)
  entry.totals = book:totals(sync_id)
  if options.recent then
    local recent = {}
    for i, row in ipairs(book:recent_runs(sync_id, options.recent)) do recent[i] = row end
    entry.recent = recent
  end
  entry.mapping_changed = sync ~= nil and state.fingerprint ~= nil and sync.mapping_fingerprint ~= nil
    and state.fingerprint ~= sync.mapping_fingerprint
  local failures = { count = book:failure_count(sync_id), import = book:failure_count(sync_id, "import"),
    export = book:failure_count(sync_id, "export"), recent = {} }
  for _, f in ipairs(book:failures(sync_id, 5)) do
    failures.recent[#failures.recent + 1] = { direction = f.direction, key = f.key, local_id = f.local_id,
      remote_id = f.remote_id, error = f.error, attempts = f.attempts, next_at = f.next_at < 1e100 and f.next_at or nil,
      waits_for = f.waits_for, payload = f.payload }
  end
  entry.failures = failures
  local position = state.out_seq
  if sync and sync.export or (not sync and position ~= nil) then
    local entity = sync and sync.entities[1]
    local entity_id = entity and book:entity_id(entity, true)
    local depth, oldest = 0, nil
    if entity_id then
      local ids = json.encode({ entity_id })
      depth = book:pending_count(position or 0, ids, sync_id)
      if depth > 0 then oldest = book:oldest_change(position or 0, ids, sync_id) end
    end
    local failed_since = book:oldest_failure(sync_id, "export")
    if failed_since and (not oldest or failed_since < oldest) then oldest = failed_since end
    entry.outbox = { depth = depth, failed = failures.export, oldest_at = oldest }
  end
  -- the next scheduled run, and staleness
  if sync and sync.schedule then
    local period, due = period_of(sync.schedule)
    entry.period = period
    local daemon_due = (daemon and daemon.alive) and tonumber(daemon.next_due[name]) or nil
    entry.next_run = daemon_due or due
    entry.next_run_by_daemon = daemon_due ~= nil
  end
  local good_at = entry.last_good and (entry.last_good.ended_at or entry.last_good.started_at)
  entry.lag = good_at and (now() - good_at) or nil
  local max_age = options.max_age or (entry.period and math.max(2 * entry.period, entry.period + 30))
  if max_age and (not sync or sync.import.enabled) then
    if good_at and now() - good_at > max_age then
      entry.stale = true
      problem(entry, "stale", string.format("last good run %s ago, more than %s", span(now() - good_at), span(max_age)),
        daemon and daemon.alive and cmd("log", name) or cmd("run", name))
    elseif not good_at and entry.last_managed and now() - entry.last_managed.started_at > max_age then
      entry.stale = true
      problem(entry, "stale", "no run has gone well yet", cmd("log", name))
    end
  end
  local last = entry.last_managed
  if last and (last.status == "failed" or last.status == "error" or last.status == "killed") then
    problem(entry, "failed", string.format("the last run %s%s", last.status == "killed" and "was killed" or last.status,
      last.error and (": " .. last.error) or ""), cmd("log", name))
  end
  if failures.count > 0 then
    problem(entry, "failures", string.format("%d failures pending", failures.count), cmd("failures", name))
  end
  if entry.mapping_changed then
    entry.hints[#entry.hints + 1] = cmd("run", name, "--full") .. "   (the mapping changed since its rows were written)"
  end
  if entry.lease and entry.lease.dead then
    entry.hints[#entry.hints + 1] = string.format("the lease holder pid %s is dead: the next run takes the lease over",
      tostring(entry.lease.pid))
  end
  return entry
end

-- gather(store_file, job, options) -> report. options: sync (one name),
-- max_age, job_path, job_error.
function M.gather(store_file, job, options)
  options = options or {}
  local report = { store = store_file, generated_at = now(), syncs = {}, problems = {},
    job = { path = job and job.display_path or options.job_path, loads = job ~= nil, error = options.job_error } }
  local store, book
  report.exists = core.fs.exists(store_file) and true or false
  if report.exists then
    store = core.store.open(store_file)
    local ok, err = pcall(ledger.migrate, store)
    if not ok then
      store:close()
      -- what the machine refuses keeps its kind (and exit status)
      if errors.is(err) and errors.environment[err.kind] then error(err, 0) end
      errors.raise("config", string.format("%s: %s", store_file, errors.strip_position(errors.message(err))))
    end
    book = ledger.new(store)
    report.daemon = daemon_of(store, book)
  end
  local names = {}
  if job then
    for _, name in ipairs(job.run_order) do names[#names + 1] = name end
  elseif book then
    for _, row in ipairs(book:sync_list()) do names[#names + 1] = row.name end
  end
  for _, name in ipairs(names) do
    if not options.sync or options.sync == name then
      local entry = sync_entry(store, book, job, name, job and job.syncs[name], report.daemon, options)
      report.syncs[#report.syncs + 1] = entry
      for _, p in ipairs(entry.problems) do
        report.problems[#report.problems + 1] = { sync = name, kind = p.kind, message = p.message }
      end
    end
  end
  if options.job_error then
    report.problems[#report.problems + 1] = { kind = "job", message = "the job does not load: " .. options.job_error }
  end
  report.ok = #report.problems == 0
  if store then store:close() end
  return report
end

-- text -----------------------------------------------------------------------

local function counts_text(c)
  return string.format("%d created, %d updated, %d unchanged, %d stale, %d failed, %d deleted", c.created or 0,
    c.updated or 0, c.unchanged or 0, c.stale or 0, c.failed or 0, c.deleted or 0)
end
M.counts_text = counts_text

local function run_line(run)
  return string.format("%s %s, %s (%s): %s", run.operation, M.ago(run.started_at), run.status, run.mode or "-",
    counts_text(run.counts))
end

function M.text(report)
  local out = {}
  -- what the store quotes (remote ids, errors) is shown escaped: one line each
  local printable = require("entsync.logger").printable
  local function say(fmt, ...)
    local args = table.pack(...)
    for i = 1, args.n do
      if type(args[i]) == "string" then args[i] = printable(args[i]) end
    end
    out[#out + 1] = string.format(fmt, table.unpack(args, 1, args.n))
  end
  say("store %s%s", report.store, report.exists and "" or " (not created yet: nothing has run)")
  if not report.job.loads then
    say("job %s does not load: %s", tostring(report.job.path), tostring(report.job.error))
    say("  (what follows is what the store holds; a daemon that runs goes on with the job it loaded)")
  end
  local daemon = report.daemon
  if daemon then
    say("daemon %s: pid %s on %s, started %s, %s%s%s", daemon.alive and "running" or "not running",
      tostring(daemon.pid), tostring(daemon.host), M.ago(daemon.started_at), tostring(daemon.activity),
      #daemon.running > 0 and (" (" .. table.concat(daemon.running, ", ") .. ")") or "",
      daemon.alive and daemon.listen and (", serving http://" .. daemon.listen .. "/") or "")
  end
  for _, s in ipairs(report.syncs) do
    say("")
    if s.remote then
      say("sync %s: %s -> %s, %s%s%s", s.name, s.remote, table.concat(s.entities, ", "), s.mode,
        s.limit and (", limit " .. s.limit) or "", ", deletes " .. s.deletes)
    else
      say("sync %s: %s", s.name, report.job.loads and "(in the store, no longer in the job)" or "(settings unknown)")
    end
    if not s.known then
      say("  last run   never")
    else
      local last = s.last_managed or s.last_run
      if last then
        say("  last run   %s", run_line(last))
        if last.error then say("  last error %s", last.error) end
      else
        say("  last run   never")
      end
      if s.last_run and last and s.last_run.id ~= last.id then say("  latest     %s", run_line(s.last_run)) end
      if last and last.status ~= "ok" then
        say("  last good  %s", s.last_good and run_line(s.last_good) or "none yet")
      end
      for _, run in ipairs(s.running) do
        if run.alive then
          say("  running    %s %s (%s) by pid %s: %s so far", run.operation, M.ago(run.started_at), run.mode or "-",
            tostring(run.pid), counts_text(run.counts))
        elseif run.dead then
          say("  killed     %s %s by pid %s, which is gone: the next run takes over", run.operation,
            M.ago(run.started_at), tostring(run.pid))
        end
      end
      if s.cursor then
        say("  cursor     %s / %s", tostring(s.cursor.mark), tostring(s.cursor.id))
      elseif s.mode == "incremental" then
        say("  cursor     none (the next run reads everything)")
      end
      if s.pass then say("  full pass  %d in progress, %s", s.pass.number, s.pass.resume) end
      say("  mapped     %d remote entities", s.mapped)
      if s.mapping_changed then say("  mapping    changed since its rows were written") end
      local lease = s.lease
      if lease then
        if lease.dead then
          say("  lock       held by pid %s on %s since %s, which is dead: the next run takes it over",
            tostring(lease.pid), tostring(lease.host), M.ago(lease.acquired_at))
        elseif lease.expired then
          say("  lock       held by pid %s on %s since %s, expired: the next run takes it over", tostring(lease.pid),
            tostring(lease.host), M.ago(lease.acquired_at))
        else
          say("  lock       held by pid %s on %s since %s, expires in %.0fs", tostring(lease.pid), tostring(lease.host),
            M.ago(lease.acquired_at), (lease.expires_at or 0) - now())
        end
      else
        say("  lock       free")
      end
      if s.outbox then
        say("  outbox     %d changes to send, %d failed exports%s", s.outbox.depth, s.outbox.failed,
          s.outbox.oldest_at and (", the oldest from " .. M.ago(s.outbox.oldest_at)) or "")
      end
      say("  failures   %d pending", s.failures.count)
      for _, f in ipairs(s.failures.recent) do
        local when = f.next_at == nil and f.waits_for and ("after " .. f.waits_for .. " runs")
          or (f.next_at and f.next_at <= now() and "due")
          or (f.next_at and string.format("in %.0fs", f.next_at - now())) or "not scheduled"
        say("    %s%s (attempt %d, retry %s): %s", f.direction == "export" and "local " or "", f.key, f.attempts, when,
          f.error)
      end
      if s.failures.count > #s.failures.recent then
        say("    ... %d more", s.failures.count - #s.failures.recent)
      end
    end
    if s.schedule then
      if s.next_run then
        say("  next run   %s (%s)%s", s.next_run <= now() and "due now" or ("in " .. span(s.next_run - now())),
          s.schedule, s.next_run_by_daemon and "" or ": when a daemon runs")
      end
    end
    for _, p in ipairs(s.problems) do
      if p.kind == "stale" then say("  stale      %s", p.message) end
    end
    for _, hint in ipairs(s.hints) do say("  hint       %s", hint) end
  end
  return table.concat(out, "\n")
end

-- The report as JSON (status --json): times as epoch seconds.
function M.json(report)
  local function clean(value)
    if type(value) ~= "table" then return value end
    if value == null then return value end
    local out = getmetatable(value) == json.object_mt and json.object() or {}
    for k, v in pairs(value) do out[k] = clean(v) end
    return out
  end
  local doc = clean(report)
  doc.syncs = json.array(doc.syncs)
  doc.problems = json.array(doc.problems)
  for _, s in ipairs(doc.syncs) do
    s.problems, s.hints = json.array(s.problems), json.array(s.hints)
    if s.running then s.running = json.array(s.running) end
    if s.failures then s.failures.recent = json.array(s.failures.recent) end
    if s.entities then s.entities = json.array(s.entities) end
    if s.failures then
      for _, f in ipairs(s.failures.recent) do
        if f.payload then f.payload = json.try_decode(f.payload) or f.payload end
      end
    end
  end
  if doc.daemon then
    doc.daemon.running = json.array(doc.daemon.running)
  end
  return json.encode(json.object(doc), { pretty = true })
end

-- status [SYNC] [--json] [--max-age SECONDS] ------------------------------------

function M.command(job_path, args, options)
  local ok, job = pcall(require("entsync.job").load, job_path)
  local job_error
  if not ok then
    if errors.is(job, "usage") then error(job, 0) end
    job_error = errors.message(job, true)
    job = nil
  end
  local store_file = job and job.store_file or M.guess_store(job_path)
  local report = M.gather(store_file, job, { sync = args[1], max_age = options.max_age, job_path = job_path,
    job_error = job_error })
  if args[1] and #report.syncs == 0 then
    local known = {}
    if job then known = job.sync_order end
    errors.raise("usage", string.format("%s: no sync named \"%s\"%s%s", job_path, args[1],
      #known > 0 and (" (declared: " .. table.concat(known, ", ") .. ")") or "",
      require("entsync.usage").did_you_mean(args[1], known)))
  end
  if options.json then
    print(redact.text(M.json(report)))
  else
    print(redact.text(M.text(report)))
  end
  if job_error then return errors.exit_codes.config end
  return report.ok and 0 or errors.exit_codes.failed
end

-- log [SYNC] [--json] [--limit N] ------------------------------------------------

local function iso(t)
  if not t then return "-" end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

function M.history(store_file, sync_name, options)
  if not core.fs.exists(store_file) then
    if not options.json then print("no runs yet (the store is not created)") end
    return 0
  end
  local store = core.store.open(store_file)
  local ok, rows = pcall(function()
    ledger.migrate(store)
    return ledger.new(store):history(sync_name, options.limit or 20)
  end)
  store:close()
  if not ok then errors.raise("config", string.format("%s: %s", store_file, errors.message(rows, true))) end
  for _, r in ipairs(rows) do
    if options.json then
      print(json.encode(json.object({ id = r.id, sync = r.sync, operation = r.operation, mode = r.mode,
        status = r.status, started_at = r.started_at, ended_at = r.ended_at,
        seconds = r.ended_at and (r.ended_at - r.started_at) or nil,
        counts = json.object({ created = r.created, updated = r.updated, unchanged = r.unchanged, stale = r.stale,
          failed = r.failed, deleted = r.deleted, skipped = r.skipped, conflicts = r.conflicts }),
        cursor_before = r.cursor_before, cursor_after = r.cursor_after, error = redact.text(r.error), pid = r.pid, host = r.host })))
    else
      print(string.format("#%-5d %s  %-14s %-8s %-11s %-8s %8s  %s", r.id, iso(r.started_at), r.sync, r.operation,
        r.mode or "-", r.status, r.ended_at and string.format("%.2fs", r.ended_at - r.started_at) or "-",
        counts_text(r)))
      if r.error then print("       error: " .. require("entsync.logger").printable(redact.text(r.error))) end
    end
  end
  if #rows == 0 and not options.json then print("no runs yet") end
  return 0
end

return M
