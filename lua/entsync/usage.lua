-- entsync.usage: the command line's grammar, its help texts and its
-- suggestions.
--
-- Every command says which options apply to it; an option that does not
-- is refused, naming the command, rather than ignored. A mistyped
-- command, option or sync name is answered with the nearest known one.

local errors = require "entsync.errors"

local M = {}

-- Options: name -> { key, value = true for options that take one, help }.
M.options = {
  ["--dry-run"] = { key = "dry_run", help = "report what would be created, updated and deleted; the store file is left untouched" },
  ["--diff"] = { key = "diff", help = "with --dry-run: each entity's field changes, old -> new, for imports and for the queued exports" },
  ["--full"] = { key = "full", help = "a full pass now, whatever the sync's import mode: every record is read and mapped again (a resync after a mapping change)" },
  ["--follow"] = { key = "follow", help = "a sync that reads a queue keeps consuming until SIGINT or SIGTERM, instead of stopping once nothing is pending" },
  ["--wait"] = { key = "wait", value = "SECONDS", help = "wait up to SECONDS for a sync locked by another run (default 0: exit 3 at once)" },
  ["--allow-deletes"] = { key = "allow_deletes", help = "let a full pass delete more than its delete guard allows (import delete_guard, default half)" },
  ["--all"] = { key = "all", help = "every entity (refresh, export) or every failure (failures dismiss)" },
  ["--where"] = { key = "where", value = "SQL", help = "export the local entities this SQL condition selects" },
  ["--json"] = { key = "json", help = "machine-readable output: one JSON document (status) or one JSON object a line (log, failures)" },
  ["--limit"] = { key = "limit", value = "N", help = "show at most N runs (default 20)" },
  ["--max-age"] = { key = "max_age", value = "SECONDS", help = "a sync whose last good run is older than this is stale (default: two periods of its schedule)" },
  ["--listen"] = { key = "listen", value = "HOST:PORT", help = "serve /metrics (Prometheus) and a status page on HOST:PORT (127.0.0.1:9464)" },
  ["--progress"] = { key = "progress", help = "the live progress line on stderr even when it is not a terminal" },
  ["--no-progress"] = { key = "no_progress", help = "no progress, neither the live line nor progress lines in the log" },
  ["--progress-every"] = { key = "progress_every", value = "SECONDS", help = "when stderr is not a terminal: a progress line in the log every SECONDS (default 15)" },
  ["--log-format"] = { key = "log_format", value = "text|json", help = "how the log on stderr is written: text lines, or one JSON object a line" },
  ["--verbose"] = { key = "verbose", help = "tracebacks with errors, HTTP requests, debug lines" },
  ["-v"] = { key = "verbose", alias = "--verbose" },
  ["--help"] = { key = "help", help = "this text; COMMAND --help: that command's" },
  ["-h"] = { key = "help", alias = "--help" },
  ["--version"] = { key = "version", help = "entsync's version" },
  ["-V"] = { key = "version", alias = "--version" },
  ["-e"] = { key = "eval", value = "EXPR", help = "evaluate EXPR, print its value and exit" },
}

-- Options every command takes: they say how output is shown, not what
-- the command does.
M.global = { "--log-format", "--verbose", "-v", "--help", "-h", "--progress", "--no-progress", "--progress-every" }

local progress = {}

local function list(...)
  local out = {}
  for _, group in ipairs({ ... }) do
    for _, name in ipairs(type(group) == "table" and group or { group }) do out[#out + 1] = name end
  end
  return out
end

-- The commands, in the order the usage lists them.
M.order = { "run", "import", "refresh", "retry", "reset", "failures", "export", "status", "log", "check", "daemon",
  "repl", "help" }

M.commands = {
  run = {
    synopsis = "run [SYNC...]", options = list("--dry-run", "--diff", "--full", "--follow", "--wait", "--allow-deletes", progress),
    summary = "import every sync (or the named ones and what they depend on), then drain the outboxes of syncs that export on change; the default",
    help = [[
Imports every sync of the job (or the named ones, and what they depend on
first), independent ones side by side, then drains the outbox of each sync
that exports on change. Each prints one summary line.

  --full        a full pass now, whatever the import mode: the cursor and the
                checkpoint are not used, every record is read and mapped
                again (the resync after a mapping change); the limit is not
                applied; an incremental sync's cursor moves to the newest
                record read; deletes apply as for any complete full pass
  --follow      a sync that reads a queue (redis_stream) keeps consuming as
                messages come, until SIGINT or SIGTERM; without it the run
                takes what is pending and stops
  --dry-run     nothing is written: counts of what would be created, updated
                and deleted, and of the queued exports that would be sent
  --diff        with --dry-run, every entity that would change, field by
                field (old -> new), imports and queued exports alike

SIGINT (Ctrl-C) or SIGTERM stops the run at its next checkpoint: the batch
in hand is committed, the summary printed, the lease released, exit 5; the
next run goes on from there. A second Ctrl-C ends it at once.]],
  },
  import = {
    synopsis = "import SYNC REMOTE_ID", args = { 2, 2 }, options = list("--dry-run", "--diff", "--wait", progress),
    summary = "import one remote entity",
    help = "Fetches one record by its remote id through the sync's provider (its get) and imports it.",
  },
  refresh = {
    synopsis = "refresh SYNC LOCAL_ID... | refresh SYNC --all", args = { 1 },
    options = list("--all", "--dry-run", "--diff", "--wait", progress),
    summary = "refresh local entities from their remotes, one request each",
    help = [[
Fetches the remote of each local entity named (or of every entity the sync
has imported, with --all) and imports it again: one request per entity.
To read everything again at list speed, `run SYNC --full` is the faster way.]],
  },
  retry = {
    synopsis = "retry SYNC", args = { 1, 1 }, options = list("--wait", progress),
    summary = "retry the sync's failed entities now",
    help = "Retries every failed import of the sync now, fetching each again (failures SYNC retry does imports and exports).",
  },
  reset = {
    synopsis = "reset SYNC", args = { 1, 1 }, options = list("--wait"),
    summary = "forget the cursor, checkpoint and pass, so the next run reads everything",
    help = [[
Forgets where the sync's imports stand: the incremental cursor, the
provider's checkpoint and the full pass in progress, and the raw-line hashes
that let unchanged lines be skipped unread. The next run reads and maps every
record. Kept: the entity rows, the id map (so nothing is created twice), the
failures, the export position and the run history.]],
  },
  failures = {
    synopsis = "failures SYNC [retry [KEY...] | dismiss KEY... | dismiss --all]", args = { 1 },
    options = list("--json", "--all", "--wait", progress),
    summary = "the sync's failures with their payloads; retry or dismiss them",
    help = [[
failures SYNC                the failures, each with its error, attempts, next
                             retry and payload (--json: one object a line)
failures SYNC retry [KEY...] retry them (all, or the keys given) now
failures SYNC dismiss KEY... forget them (--all: every one)
A KEY is the remote id of a failed import or the local id of a failed
export; import:KEY or export:KEY names one direction when both have one.]],
  },
  export = {
    synopsis = "export SYNC LOCAL_ID... | --all | --where SQL", args = { 1 },
    options = list("--all", "--where", "--dry-run", "--wait"),
    summary = "export local entities now (create or update their remote)",
    help = "Exports the named local entities now, whatever they hold; --dry-run prints what would be sent.",
  },
  status = {
    synopsis = "status [SYNC]", args = { 0, 1 }, options = list("--json", "--max-age"),
    summary = "per sync: last runs, live runs, lease, failures, outbox, next run, with hints",
    help = [[
Reads the store alone (it works while the job file is broken, from the
store's own record of its syncs), and shows the daemon, and per sync its last
run and last good run, a run in progress, the lease and whether its holder is
alive, the cursor and full pass, failures, the outbox, the next scheduled
run, and a hint for the next command where one helps.

Exit status: 0 when all is well; 1 when a sync's last run failed, failures
are pending or a sync is stale (its last good run is older than --max-age,
or than two periods of its schedule); 2 when the job does not load.]],
  },
  log = {
    synopsis = "log [SYNC]", args = { 0, 1 }, options = list("--json", "--limit"),
    summary = "the run history, newest first",
    help = [[
The runs recorded in the store (entsync_runs), newest first: when, sync,
operation, mode, status, duration and counts. Old runs are pruned as the
job's history setting says: history { days = 90, runs = 10000 } keeps, per
sync, at most 10000 runs and none older than 90 days (the last run of each
operation and status is always kept).]],
  },
  check = {
    synopsis = "check", args = { 0, 0 }, options = {},
    summary = "validate the job, its mappings, providers, files and folders; runs nothing",
    help = [[
Loads the job and reports every error it finds in one pass (each with its
file and line), checks that the files and folders the providers read exist,
and prints a summary. Notes a sync whose mapping changed since its rows were
written. Runs nothing and writes nothing.]],
  },
  daemon = {
    synopsis = "daemon [--listen HOST:PORT]", args = { 0, 0 }, options = list("--listen"),
    summary = "run syncs on their schedules and export changes as they arrive; SIGHUP reloads",
    help = [[
Runs each sync when its schedule says and drains the outboxes as the store
changes, until SIGTERM or SIGINT (exit 0); SIGHUP reloads the job. One daemon
per store: a second one exits 3 naming the first.

  --listen HOST:PORT   serve GET /metrics (Prometheus text format) and GET /
                       (a status page) there, e.g. 127.0.0.1:9464

Under systemd (Type=notify) it says when it is ready and pings the watchdog:
see contrib/systemd/.]],
  },
  repl = {
    synopsis = "repl [-e EXPR]", args = { 0 }, options = list("-e"),
    summary = "a Lua prompt with the job loaded (help() lists the helpers)",
    help = "A Lua prompt with the job loaded; Tab completes, Ctrl-C cancels the line, help() lists the helpers.",
  },
  help = {
    synopsis = "help [COMMAND]", args = { 0, 1 }, options = {}, no_job = true,
    summary = "this text, or one command's",
    help = "Prints the usage, or the help of one command.",
  },
}

-- suggestions ------------------------------------------------------------------

-- The edit distance of two short strings (insertions, deletions,
-- substitutions and swaps of neighbours).
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    for j = 1, lb do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      d[i][j] = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
        d[i][j] = math.min(d[i][j], d[i - 2][j - 2] + 1)
      end
    end
  end
  return d[la][lb]
end
M.distance = distance

-- nearest(word, candidates) -> the closest candidate when it is close
-- enough to be what was meant (or one that starts with word), else nil.
function M.nearest(word, candidates)
  local best, best_d
  for _, candidate in ipairs(candidates) do
    local d = distance(word:lower(), candidate:lower())
    if #word >= 3 and candidate:sub(1, #word) == word then d = math.min(d, 1) end
    if not best_d or d < best_d then best, best_d = candidate, d end
  end
  if best and best_d <= math.max(1, math.min(3, #word // 3)) then return best end
  return nil
end

-- " (did you mean X?)" or "".
function M.did_you_mean(word, candidates)
  local near = M.nearest(word, candidates)
  return near and string.format(" (did you mean %s?)", near) or ""
end

function M.usage_error(fmt, ...)
  errors.raise("usage", string.format(fmt, ...) .. " (see entsync-run --help)")
end

-- texts -------------------------------------------------------------------------

local function wrap(text, width, indent)
  local lines, line = {}, ""
  for word in text:gmatch("%S+") do
    if #line + #word + 1 > width and line ~= "" then
      lines[#lines + 1] = line
      line = word
    else
      line = line == "" and word or (line .. " " .. word)
    end
  end
  if line ~= "" then lines[#lines + 1] = line end
  return table.concat(lines, "\n" .. indent)
end

local function option_line(name)
  local option = M.options[name]
  local aliases = {}
  for other, o in pairs(M.options) do
    if o.alias == name then aliases[#aliases + 1] = other end
  end
  table.sort(aliases)
  local label = name .. (option.value and (" " .. option.value) or "")
  if #aliases > 0 then label = label .. ", " .. table.concat(aliases, ", ") end
  return string.format("  %-24s %s", label, wrap(option.help, 52, string.rep(" ", 27)))
end

M.EXIT_STATUSES = [[
exit status: 0 success, 1 the run finished but some entities failed,
2 usage or configuration error, 3 a lock is held by another run,
4 an internal error, 5 stopped by SIGINT or SIGTERM at a checkpoint,
6 the store is busy (another process holds its write lock), 7 the disk
or the store's max_size is full, 8 the store cannot be opened or
written, 9 an I/O error. A remote that keeps failing stops a run with 1.]]

function M.text()
  local out = { "usage: entsync-run JOB.lua [COMMAND] [ARGS] [OPTIONS]", "", "commands:" }
  for _, name in ipairs(M.order) do
    local command = M.commands[name]
    local synopsis = command.synopsis
    if #synopsis > 24 then
      out[#out + 1] = "  " .. synopsis
      out[#out + 1] = string.rep(" ", 27) .. wrap(command.summary, 52, string.rep(" ", 27))
    else
      out[#out + 1] = string.format("  %-24s %s", synopsis, wrap(command.summary, 52, string.rep(" ", 27)))
    end
  end
  out[#out + 1] = ""
  out[#out + 1] = "options (each command takes those that apply to it; COMMAND --help lists them):"
  local names = {}
  for name, option in pairs(M.options) do
    if not option.alias then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do out[#out + 1] = option_line(name) end
  out[#out + 1] = ""
  out[#out + 1] = M.EXIT_STATUSES
  return table.concat(out, "\n") .. "\n"
end

function M.command_text(name)
  local command = M.commands[name]
  local out = { "usage: entsync-run JOB.lua " .. command.synopsis .. " [OPTIONS]", "", command.help, "" }
  local names = {}
  for _, option in ipairs(command.options) do names[#names + 1] = option end
  for _, option in ipairs(M.global) do
    if not M.options[option].alias then names[#names + 1] = option end
  end
  out[#out + 1] = "options:"
  for _, option in ipairs(names) do
    if not M.options[option].alias then out[#out + 1] = option_line(option) end
  end
  out[#out + 1] = ""
  out[#out + 1] = M.EXIT_STATUSES
  return table.concat(out, "\n") .. "\n"
end

-- parsing ---------------------------------------------------------------------

-- parse(args) -> options, positional. Only the shape of each option is
-- checked here; whether it applies to the command is check_command's.
function M.parse(args)
  local options, positional, given = {}, {}, {}
  local all_names = {}
  for name in pairs(M.options) do all_names[#all_names + 1] = name end
  table.sort(all_names)
  local i = 1
  while i <= #args do
    local arg = args[i]
    local name, inline = arg:match("^(%-%-[%w-]+)=(.*)$")
    name = name or arg
    local option = M.options[name]
    if option and option.value then
      local value = inline
      if value == nil then
        i = i + 1
        value = args[i]
      end
      if value == nil then M.usage_error("option %s needs a value (%s)", name, option.value) end
      options[option.key] = value
      given[#given + 1] = option.alias or name
    elseif option and not inline then
      options[option.key] = true
      given[#given + 1] = option.alias or name
    elseif arg:sub(1, 1) == "-" and arg ~= "-" then
      M.usage_error("unknown option %s%s", arg, M.did_you_mean(name, all_names))
    else
      positional[#positional + 1] = arg
    end
    i = i + 1
  end
  options.given = given
  local function number(key, name, integer)
    if options[key] == nil then return end
    local n = tonumber(options[key])
    if not n or n < 0 or (integer and math.type(n) ~= "integer" and n ~= math.floor(n)) then
      M.usage_error("%s needs a number%s, got %s", name, integer and "" or " of seconds", options[key])
    end
    options[key] = integer and math.tointeger(n) or n
  end
  number("wait", "--wait")
  number("max_age", "--max-age")
  number("progress_every", "--progress-every")
  number("limit", "--limit", true)
  if options.progress_every and options.progress_every <= 0 then
    M.usage_error("--progress-every needs a number of seconds above 0, got %s", options.progress_every)
  end
  if options.log_format and options.log_format ~= "text" and options.log_format ~= "json" then
    M.usage_error("--log-format is text or json, got %s", options.log_format)
  end
  if options.listen then
    local host, port = options.listen:match("^%[?([^%]]*)%]?:(%d+)$")
    if not host or tonumber(port) > 65535 then
      M.usage_error("--listen takes HOST:PORT (127.0.0.1:9464), got %s", options.listen)
    end
    options.listen = { host = host == "" and "127.0.0.1" or host, port = math.tointeger(tonumber(port)) }
  end
  if options.progress and options.no_progress then M.usage_error("--progress and --no-progress contradict each other") end
  if options.progress then options.progress = true elseif options.no_progress then options.progress = false end
  return options, positional
end

-- check_command(name, options, args): refuses options that do not apply to
-- the command, and a count of arguments it does not take.
function M.check_command(name, options, args)
  local command = M.commands[name]
  local allowed = {}
  for _, option in ipairs(command.options) do allowed[option] = true end
  for _, option in ipairs(M.global) do allowed[option] = true end
  for _, option in ipairs(options.given or {}) do
    if not allowed[option] then
      errors.raise("usage", string.format("%s does not take %s (see entsync-run help %s)", name, option, name))
    end
  end
  if options.diff and not options.dry_run then
    errors.raise("usage", "--diff goes with --dry-run (see entsync-run help " .. name .. ")")
  end
  local range = command.args
  if range then
    local low, high = range[1], range[2]
    if #args < low then
      errors.raise("usage", string.format("%s needs %s (usage: entsync-run JOB.lua %s)", name,
        low == 1 and "a sync name" or "more arguments", command.synopsis))
    end
    if high and #args > high then
      errors.raise("usage", string.format("%s takes %s, got %q too (usage: entsync-run JOB.lua %s)", name,
        high == 0 and "no arguments" or (high == 1 and "one argument" or (high .. " arguments")), args[high + 1],
        command.synopsis))
    end
  end
end

return M
