-- entsync.filesource: what the file providers (ndjson, csv, json) share.
--
-- A file provider only knows how to read one open file as a sequence of
-- records. Everything else lives here: resolving paths against the job file,
-- walking a drop folder, skipping a resume offset, keeping the resume
-- position, and moving finished files into processed/ once the engine says
-- their records are committed.
--
-- Writers should drop files under a hidden name (leading dot) and rename them
-- when complete: hidden files are never read, so a half-written file is not
-- taken and moved away while its writer still appends to it. For writers
-- that cannot, a drop folder takes only settled files: regular files (by
-- lstat: no symbolic link out of the folder, no FIFO or device that would
-- block the run) whose size and modification time have not changed for
-- `settle` seconds; a younger one is looked at again once it is that old,
-- and one still changing is left for the next run. A line longer than
-- `max_line` bytes is read in bounded memory and reported as one bad
-- record naming the file, the line and the setting.

local core = require "entsync.core"
local json = require "entsync.json"
local loop = require "entsync.loop"

local M = {}

local BOM = "\239\187\191"

local find, sub, format = string.find, string.sub, string.format
local tointeger = math.tointeger

-- Paths --------------------------------------------------------------------

local function join(dir, name)
  if sub(dir, -1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

local function resolve(base, path)
  if sub(path, 1, 1) == "/" then return path end
  return join(base, path)
end

local function basename(path)
  return path:match("([^/]*)/*$")
end

M.join, M.resolve, M.basename = join, resolve, basename

-- Records ------------------------------------------------------------------

local try_decode, object_mt, null = json.try_decode, json.object_mt, json.null

local function kind_of(value)
  if value == null then return "null" end
  if type(value) == "table" then
    return getmetatable(value) == object_mt and "object" or "array"
  end
  return type(value)
end

-- decode_object(text) -> record | nil, message. A record must be a JSON
-- object; anything else is one bad record. Numbers keep their JSON type
-- (17 is an integer, 17.5 a float): see entsync.json.
function M.decode_object(text)
  local value, err = try_decode(text)
  if value == nil then
    return nil, "malformed JSON: " .. err
  end
  if getmetatable(value) ~= object_mt then
    return nil, "expected a JSON object, got " .. kind_of(value)
  end
  return value
end

-- located("people.csv", 5, "...") -> "people.csv:5: ..."
function M.located(name, line, message)
  return format("%s:%d: %s", name, line, message)
end

M.SETTLE, M.MAX_LINE = 0.25, 1024 * 1024

-- The bad record of a line over max_line (the source keeps its file in
-- the drop folder: a record of it was not read).
function M.too_long(source, name, line, bytes, max)
  source.keep = true
  return M.located(name, line, format("a line of %d bytes is over max_line (%d bytes): passed over; the provider's "
    .. "setting max_line reads longer ones", bytes, max))
end

-- unfinished(source, f, message) -> message: for a bad record read last
-- from a file that does not end in a line break (a writer may still be
-- writing it), the file stays in the drop folder and the message says so.
function M.unfinished(source, f, message)
  local here = f:seek()
  local size = here and f:seek("end")
  if not size then return message end
  local last = ""
  if here == size and size > 0 then
    f:seek("set", size - 1)
    last = f:read(1) or ""
  end
  f:seek("set", here)
  if here ~= size or last == "\n" then return message end
  source.keep = true
  return message .. " (the file ends without a line break: it stays in the drop folder, for its writer may not "
    .. "have finished it)"
end

function M.strip_bom(text)
  if sub(text, 1, 3) == BOM then return sub(text, 4) end
  return text
end

-- Reader -------------------------------------------------------------------
--
-- position is the offset to pass back as query.offset to resume: the number
-- of records (good or bad) returned so far from files that stay where they
-- are. A drop-folder file read to its end is due to move into processed/ at
-- the next committed(), so its records leave the count at once. A checkpoint
-- taken before the move then under-skips at worst (records read again are
-- echoes), never over-skips.

local Reader = {}
Reader.__index = Reader

local function new_reader(provider, files, dropdir, offset)
  local reader = setmetatable({
    position = 0,
    _provider = provider,
    _files = files,
    _index = 1,
    _skip = offset,
    _dropdir = dropdir,        -- nil for a single named file: never moved
    _pending = {},             -- finished files waiting for committed()
  }, Reader)
  if not provider._raw then reader.next_raw, reader.next_unknown, reader.next_bulk = false, false, false end
  return reader
end

-- A drop folder's files open only as regular files inside it (a link
-- swapped in since the listing is refused); a named file may be a link.
function Reader:_open(entry)
  local f, err = core.fs.open_file(entry.path, not self._dropdir)
  if not f then
    return nil, format("%s: %s", entry.name, err)
  end
  local p = self._provider
  return { entry = entry, file = f, count = 0,
           source = p._open(f, entry.name, p.config, p.max_line) }
end

function Reader:_finish(current)
  current.file:close()
  self._current = nil
  self._index = self._index + 1
  -- A file that broke off (truncated, unbalanced) or had a line passed
  -- over stays for its owner to fix.
  local source = current.source
  if self._dropdir and self._provider.processed and not source.broken and not source.keep then
    self.position = self.position - current.count
    self._pending[#self._pending + 1] = current.entry
  end
end

-- The file being read, opening the next one when needed: current | nil
-- at the end of the files | false, message for a file that cannot be
-- opened (it is passed over).
function Reader:_current_file()
  if self._current then return self._current end
  local entry = self._files[self._index]
  if not entry then return nil end
  local current, err = self:_open(entry)
  if not current then
    self._index = self._index + 1
    return false, err
  end
  self._current = current
  return current
end

-- Pulls the next item through the current file's source with method
-- ("next" for records, "next_raw" for undecoded text), moving across files
-- and skipping the resume offset.
function Reader:_pull(method)
  if self._closed then return nil end
  while true do
    local current, open_err = self:_current_file()
    if not current then return current, open_err end
    local item, err, raw = current.source[method](current.source)
    if item == nil then
      self:_finish(current)
    else
      current.count = current.count + 1
      self.position = self.position + 1
      if self._skip > 0 then
        self._skip = self._skip - 1
      else
        self._last = current.source
        return item, err, raw
      end
    end
  end
end

-- next() -> record | nil at the end of all input | false, message [, text]
-- for one bad record, with its text when the source has it (the following
-- call goes on after it).
function Reader:next()
  return self:_pull("next")
end

-- For sources that read one record per line of text (ndjson), next_raw()
-- gives the text undecoded and decode(text) the record, so the engine can
-- recognise an unchanged record by its bytes without decoding it.
function Reader:next_raw()
  return self:_pull("next_raw")
end

-- Reads on through the files with take(source) -> text | nil | false,
-- skipped, more, hash, taken, older (a source's next_unknown or next_bulk),
-- counting what it passed over: a text, the skipped and taken lines
-- before it, or false and the message of a line over max_line.
local function pull_lines(self, take)
  while true do
    local current, open_err = self:_current_file()
    if not current then return current, 0, open_err, nil, 0, 0 end
    local text, skipped, more, hash, taken, older = take(current.source)
    taken, older = taken or 0, older or 0
    local read = skipped + taken + older
    current.count = current.count + read
    self.position = self.position + read
    self._last = current.source
    if text == false then
      -- one bad record (a line over max_line): more is its message
      current.count = current.count + 1
      self.position = self.position + 1
      return false, skipped, more, nil, taken, older
    end
    if text then
      current.count = current.count + 1
      self.position = self.position + 1
      return text, skipped, nil, hash, taken, older
    end
    if read > 0 then return nil, skipped, nil, nil, taken, older end
    if not more then self:_finish(current) end
  end
end

-- next_unknown(known, seed, max) -> text | nil, skipped, err, hash: like
-- next_raw, but records whose bytes hash (from seed) into `known` are
-- skipped by the source without reaching Lua, at most max of them per
-- call; nil with skipped > 0 means "call again", nil with 0 the end of all
-- input; hash is text's (nil when the source does not give it).
function Reader:next_unknown(known, seed, max)
  if self._closed then return nil, 0 end
  if self._skip > 0 then
    -- a resume offset is skipped record by record first
    local text, err = self:next_raw()
    if text == nil then return nil, 0 end
    if text == false then return false, 0, err end
    local hash = core.hash.line(text, seed)
    if known:has(hash) then return nil, 1 end
    return text, 0, nil, hash
  end
  local text, skipped, err, hash = pull_lines(self, function(source) return source.next_unknown(known, seed, max) end)
  return text, skipped, err, hash
end

-- next_bulk(program, known, max, cursor_mark, cursor_id, failing) -> text
-- | nil, skipped, err, hash, taken, older: next_unknown for sources that
-- also give lines to the C record path (entsync.record_path): taken lines
-- were mapped into the program's batch, older ones were older than the
-- cursor. Sources without it are read through next_unknown.
function Reader:next_bulk(program, known, max, cursor_mark, cursor_id, failing)
  if self._closed then return nil, 0, nil, nil, 0, 0 end
  if self._skip > 0 then
    local text, skipped, err, hash = self:next_unknown(known, program.seed, max)
    return text, skipped, err, hash, 0, 0
  end
  return pull_lines(self, function(source)
    if source.next_bulk then return source.next_bulk(program, known, max, cursor_mark, cursor_id, failing) end
    return source.next_unknown(known, program.seed, max)
  end)
end

function Reader:decode(text)
  return self._last.decode(text)
end

-- fraction() -> the share of the input's bytes read so far (0..1), or nil
-- when there is nothing to read: the progress line's percentage and ETA.
function Reader:fraction()
  if not self._sizes then
    local sizes, total = {}, 0
    for i, entry in ipairs(self._files) do
      local f = io.open(entry.path, "rb")
      sizes[i] = f and f:seek("end") or 0
      if f then f:close() end
      total = total + sizes[i]
    end
    self._sizes, self._total_bytes = sizes, total
  end
  if self._total_bytes == 0 then return nil end
  local done = 0
  for i = 1, math.min(self._index - 1, #self._sizes) do done = done + self._sizes[i] end
  local current = self._current
  if current then done = done + (current.file:seek() or 0) end
  return math.min(1, done / self._total_bytes)
end

-- A name already taken in processed/ (the same file dropped twice) gets a
-- number, so an earlier delivery is never overwritten.
local function free_name(dir, name)
  local target = join(dir, name)
  if not core.fs.exists(target) then return target end
  local stem, ext = name:match("^(.+)(%.[^.]*)$")
  if not stem then stem, ext = name, "" end
  local n = 2
  while true do
    target = join(dir, format("%s-%d%s", stem, n, ext))
    if not core.fs.exists(target) then return target end
    n = n + 1
  end
end

-- Whether a file read to its end is as it was listed: one that changed
-- since (its writer went on writing) stays in the folder, its new records
-- for the next run, with an info line.
function Reader:_unchanged(entry)
  local was, now = entry.stat, core.fs.lstat(entry.path)
  if not was or (now and now.type == "file" and now.size == was.size and now.mtime == was.mtime) then return true end
  self._provider:_note("info", format("%s: not moved to %s/: it changed while it was read (the next run reads it "
    .. "again)", entry.path, self._provider.processed))
  return false
end

-- committed(): every record returned so far is durably stored, so the files
-- read to their end may leave the drop folder now. Returns the position, or
-- nil, message when a move fails (the rest are retried next time).
function Reader:committed()
  local pending = self._pending
  if #pending == 0 then return self.position end
  local dir = join(self._dropdir, self._provider.processed)
  local ok, err = core.fs.mkdir(dir)
  if not ok then return nil, err end
  while #pending > 0 do
    local entry = pending[1]
    if self:_unchanged(entry) then
      ok, err = core.fs.rename(entry.path, free_name(dir, entry.name))
      if not ok then return nil, err end
    end
    table.remove(pending, 1)
  end
  return self.position
end

-- awaits_commit(): files read to their end wait for committed().
function Reader:awaits_commit()
  return #self._pending > 0
end

-- checkpoint() -> { file, skip }: the file being read and how many of its
-- records were returned, or the next file to read; { done = true } at the
-- end.
function Reader:checkpoint()
  local current = self._current
  if current then return { file = current.entry.name, skip = current.count } end
  local entry = self._files[self._index]
  if entry then return { file = entry.name, skip = 0 } end
  return { done = true }
end

function Reader:close()
  if self._current then
    self._current.file:close()
    self._current = nil
  end
  self._closed = true
end

Reader.__close = Reader.close

-- Provider -----------------------------------------------------------------

local Provider = {}
Provider.__index = Provider

function Provider:_target(resource)
  local config, base = self.config, self.base_dir
  if resource == nil or resource == "" then
    return resolve(base, config.dir or config.path)
  end
  if type(resource) ~= "string" then
    return nil, self.prefix .. "resource must be a string, got " .. type(resource)
  end
  return resolve(config.dir and resolve(base, config.dir) or base, resource)
end

function Provider:_wanted(name)
  local lower = name:lower()
  for _, ext in ipairs(self._extensions) do
    if sub(lower, -#ext) == ext then return true end
  end
  return false
end

function Provider:_note(level, message)
  if self.log then self.log(level, self.prefix .. message) end
end

-- Waits (on the loop when one runs) until the youngest of the files is
-- `settle` seconds old, at most `settle`; then keeps those whose size and
-- modification time did not change meanwhile: the others are still being
-- written and are left for the next run.
function Provider:_settled(files, young)
  local now, wait = core.sys.now(), 0
  for _, entry in ipairs(young) do wait = math.max(wait, entry.stat.mtime + self.settle - now) end
  wait = math.min(wait, self.settle)
  if wait > 0 then
    if loop.active() then loop.sleep(wait) else core.sys.sleep(wait) end
  end
  local out = {}
  for _, entry in ipairs(files) do
    local before = entry.stat
    local after = before.young and core.fs.lstat(entry.path)
    if after and (after.type ~= "file" or after.size ~= before.size or after.mtime ~= before.mtime) then
      self:_note("info", format("%s: left for the next run: it is still being written (it changed within %gs; the "
        .. "setting settle says how long a file must rest)", entry.path, self.settle))
    elseif before.young and not after then
      self:_note("info", format("%s: gone while it settled", entry.path))
    else
      out[#out + 1] = entry
    end
  end
  return out
end

-- The settled regular files of a drop folder, in name order; anything
-- else there (a link, a FIFO, a device, a folder) is passed over.
function Provider:_dropfiles(dir)
  local names, err = core.fs.listdir(dir)
  if not names then return nil, self.prefix .. err end
  local files, young, now = {}, {}, core.sys.now()
  for _, name in ipairs(names) do
    local path = join(dir, name)
    if name ~= self.processed and self:_wanted(name) then
      local stat = core.fs.lstat(path)
      if stat and stat.type == "file" then
        files[#files + 1] = { path = path, name = name, stat = stat }
        if now - stat.mtime < self.settle then
          stat.young = true
          young[#young + 1] = files[#files]
        end
      elseif stat and stat.type ~= "dir" then
        self:_note("warn", format("%s: passed over: not a regular file (a %s); a drop folder reads only regular "
          .. "files inside it", path, stat.type))
      end
    end
  end
  if #young > 0 then files = self:_settled(files, young) end
  return files
end

local function offset_of(query)
  if type(query) ~= "table" or query.offset == nil then return 0 end
  local offset = tointeger(query.offset)
  if not offset or offset < 0 then return nil end
  return offset
end

-- Where a full pass resumes: the checkpoint names the file being read and
-- how many of its records were taken; files before it in name order were
-- read whole (those of a drop folder have moved to processed/ since).
local function resume_from(files, checkpoint)
  if type(checkpoint) ~= "table" or type(checkpoint.file) ~= "string" then return files, 0 end
  local rest = {}
  for _, entry in ipairs(files) do
    if entry.name >= checkpoint.file then rest[#rest + 1] = entry end
  end
  local skip = 0
  if rest[1] and rest[1].name == checkpoint.file then skip = tointeger(checkpoint.skip) or 0 end
  return rest, skip
end

-- list(resource, query) -> reader | nil, message
function Provider:list(resource, query)
  local offset = offset_of(query)
  if not offset then
    return nil, self.prefix .. "query.offset must be a non-negative integer"
  end
  local target, err = self:_target(resource)
  if not target then return nil, err end
  local files, dropdir
  if core.fs.isdir(target) then
    files, err = self:_dropfiles(target)
    if not files then return nil, err end
    dropdir = target
  elseif not core.fs.exists(target) then
    return nil, self.prefix .. target .. ": no such file or directory"
  else
    files = { { path = target, name = basename(target) } }
  end
  local full = type(query) == "table" and query.mode == "full"
  if full and query.checkpoint ~= nil then files, offset = resume_from(files, query.checkpoint) end
  local reader = new_reader(self, files, dropdir, offset)
  -- Full passes hand over checkpoints; an incremental run over a file
  -- (which may be rewritten between runs) filters by the changed marks.
  if not full then reader.checkpoint = false end
  return reader
end

-- check(resource, wants) -> problems, notes: what `check` can see without
-- running anything. Problems: the file or folder an import reads does not
-- exist; the folder an export writes into does not. Notes: the first
-- record of the input has no id field, or no changed field, of the ones
-- the sync reads. wants: { import, id_field, changed_field, export,
-- export_resource }.
function Provider:check(resource, wants)
  local problems, notes = {}, {}
  if wants.import then
    local target, err = self:_target(resource)
    if not target then
      problems[#problems + 1] = err
    elseif not core.fs.exists(target) then
      problems[#problems + 1] = string.format("%s: no such file or folder", target)
    else
      local reader = self:list(resource)
      local record = reader and reader:next()
      if reader then reader:close() end
      if type(record) == "table" then
        if record[wants.id_field] == nil then
          notes[#notes + 1] = string.format("%s: its first record has no id field \"%s\" (the sync's id = \"...\" "
            .. "names another)", target, wants.id_field)
        end
        if wants.changed_field and record[wants.changed_field] == nil then
          notes[#notes + 1] = string.format("%s: its first record has no changed field \"%s\"", target,
            wants.changed_field)
        end
      end
    end
  end
  if wants.export and self._encode then
    local target = self:_target(wants.export_resource or resource)
    local dir = target and target:match("^(.*)/[^/]*$")
    if dir and not core.fs.isdir(dir) then
      problems[#problems + 1] = string.format("%s: the folder exports are written into does not exist", dir)
    end
  end
  return problems, notes
end

-- get(resource, id) -> record | nil, message. A full scan: files have no index.
function Provider:get(resource, id)
  if id == nil then return nil, self.prefix .. "get needs an id" end
  local reader, err = self:list(resource)
  if not reader then return nil, err end
  local want, field = tostring(id), self.id_field
  while true do
    local record = reader:next()
    if record == nil then
      reader:close()
      return nil, "not found"
    end
    if record and record[field] ~= nil and tostring(record[field]) == want then
      reader:close()
      return record
    end
  end
end

function Provider:id(record)
  return record[self.id_field]
end

-- Writes, for file sinks (ndjson): each create, update and delete is one
-- line appended to the target file, { op, id, record, at }, flushed before
-- the call returns. A created record's id is its own id field, or the
-- local id it came from.
function Provider:_append(resource, line)
  if not self._encode then
    return nil, self.prefix .. "cannot write " .. (resource or "") .. ": only ndjson files take writes"
  end
  local target, err = self:_target(resource)
  if not target then return nil, err end
  if core.fs.isdir(target) then return nil, self.prefix .. target .. " is a folder; writes go to a file" end
  local file, open_err = io.open(target, "ab")
  if not file then return nil, self.prefix .. tostring(open_err) end
  -- A full disk may only show at flush or close: each result is checked, or
  -- a lost line would be reported as sent.
  local ok, write_err = file:write(self._encode(line), "\n")
  if ok then ok, write_err = file:flush() end
  local closed, close_err = file:close()
  if not ok then return nil, self.prefix .. target .. ": " .. tostring(write_err) end
  if not closed then return nil, self.prefix .. target .. ": " .. tostring(close_err) end
  return true
end

local function write_or_raise(ok, err)
  if not ok then error(err, 0) end
end

-- A file sink is a log of writes, not a copy of the remote to read back.
Provider.log_sink = true

function Provider:create(resource, record, ctx)
  local id = record[self.id_field]
  if id == nil then id = ctx and ctx.local_id and tostring(ctx.local_id) or tostring(os.time()) end
  write_or_raise(self:_append(resource, { op = "create", id = id, record = record,
    at = os.date("!%Y-%m-%dT%H:%M:%SZ") }))
  return id, nil
end

function Provider:update(resource, id, record)
  write_or_raise(self:_append(resource, { op = "update", id = id, record = record,
    at = os.date("!%Y-%m-%dT%H:%M:%SZ") }))
  return nil
end

function Provider:delete(resource, id)
  write_or_raise(self:_append(resource, { op = "delete", id = id, at = os.date("!%Y-%m-%dT%H:%M:%SZ") }))
  return true
end

-- Validation ---------------------------------------------------------------

local function nonempty(value)
  return type(value) == "string" and value ~= ""
end

local function check_common(config)
  if type(config) ~= "table" then
    return "expects a table, got " .. type(config)
  end
  if config.dir == nil and config.path == nil then
    return "needs dir (a drop folder) or path (one file)"
  end
  if config.dir ~= nil and config.path ~= nil then
    return "takes dir or path, not both"
  end
  for _, key in ipairs { "dir", "path" } do
    if config[key] ~= nil and not nonempty(config[key]) then
      return key .. " must be a non-empty string"
    end
  end
  if config.settle ~= nil and config.settle < 0 then
    return "settle must be a number of seconds, 0 or more"
  end
  if config.id ~= nil and not nonempty(config.id) then
    return "id must be a non-empty string (the field holding the remote id)"
  end
  local processed = config.processed
  if processed ~= nil and processed ~= false and not (nonempty(processed)
      and not find(processed, "/", 1, true) and processed ~= "." and processed ~= "..") then
    return "processed must be false or a folder name without '/'"
  end
end

-- provider(spec) -> the module a provider file returns.
--   spec.kind        "ndjson", used in messages
--   spec.extensions  file name endings read from a drop folder, lower case
--   spec.settings    optional: the schema of its own settings (entsync.provider)
--   spec.validate    optional: config -> message | nil, for what a schema cannot say
--   spec.raw         true when sources also offer next_raw() and decode(text)
--   spec.open        (file, name, config, max_line) -> source; source:next()
--                    gives record | nil at end | false, message;
--                    source.broken set true means it stopped early and the
--                    file must stay, source.keep that it read on but the
--                    file must stay all the same (a line was passed over)
-- The settings every file provider takes; spec.settings adds its own.
local COMMON_SETTINGS = {
  dir = "string", path = "string", id = "string", name = "string",
  processed = { type = "any" }, settle = "number", max_line = "positive",
}

function M.provider(spec)
  local prefix = "provider " .. spec.kind .. ": "
  local P = { settings = {} }
  for k, v in pairs(COMMON_SETTINGS) do P.settings[k] = v end
  for k, v in pairs(spec.settings or {}) do P.settings[k] = v end

  function P.validate(config)
    local ok, err = require("entsync.provider").check_settings(P.settings, config)
    if not ok then return nil, err end
    local message = check_common(config) or (spec.validate and spec.validate(config))
    if message then return nil, message end
    return true
  end

  function P.new(config, ctx)
    local ok, err = P.validate(config)
    if not ok then error(prefix .. err, 0) end
    ctx = ctx or {}
    if ctx.base_dir ~= nil and type(ctx.base_dir) ~= "string" then
      error(prefix .. "ctx.base_dir must be a string", 0)
    end
    local processed = config.processed
    if processed == nil then processed = "processed" end
    return setmetatable({
      config = config,
      log = ctx.log,
      settle = config.settle or M.SETTLE,
      max_line = config.max_line or M.MAX_LINE,
      name = ctx.name or spec.kind,
      base_dir = ctx.base_dir or ".",
      id_field = config.id or "id",
      processed = processed,
      prefix = prefix,
      _extensions = spec.extensions,
      _open = spec.open,
      _raw = spec.raw,
      _encode = spec.encode,
    }, Provider)
  end

  return P
end

return M
