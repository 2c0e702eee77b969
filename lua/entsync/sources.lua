-- entsync.sources: where an import run's records come from.
--
-- A source wraps a provider's reader for one run: next(room) -> kind,
-- value, extra, text | nil, where kind is RECORD (a decoded record; extra
-- its raw line's hash and text its raw line, when known), UNCHANGED (value lines known unchanged by
-- their bytes, skipped without decoding), UNREADABLE (value the message,
-- extra the text) or TAKEN (value lines the C record path mapped into the
-- run's program: entsync.record_path). It also keeps the largest (changed mark, id) of the
-- records the run processed, for the incremental cursor.

local core = require "entsync.core"
local cursor = require "entsync.cursor"
local ids = require "entsync.ids"
local json = require "entsync.json"
local provider = require "entsync.provider"
local record_path = require "entsync.record_path"

local M = {}

local RECORD, UNCHANGED, UNREADABLE, TAKEN = 1, 2, 3, 4
M.RECORD, M.UNCHANGED, M.UNREADABLE, M.TAKEN = RECORD, UNCHANGED, UNREADABLE, TAKEN

local null = json.null

local function mark_of(sync, record)
  local mark = record[sync.changed_field]
  if mark == null then return nil end
  return mark
end

local function id_of(sync, record)
  local raw = provider.is_tombstone(record) and provider.tombstone_id(record) or record[sync.id_field]
  local id = ids.remote(raw)
  return id ~= nil and ids.text(id) or ""
end

-- The reader's methods, each raising a "provider" error (naming the
-- provider, the method and the message's file:line) for what the
-- provider's code raises, instead of an internal error.
local function passed(ok, ...)
  if ok then return ... end
  error((...), 0)
end

local function guarded(handle, reader)
  local out = setmetatable({}, { __index = reader })
  for _, method in ipairs({ "next", "next_raw", "next_unknown", "next_bulk", "take_records", "decode", "checkpoint", "ready", "total",
      "fraction", "committed", "awaits_commit", "close" }) do
    local fn = reader[method]
    if type(fn) == "function" then
      local handler = provider.as_provider_error(handle, "reader " .. method)
      out[method] = function(_, ...)
        return passed(xpcall(fn, handler, reader, ...))
      end
    end
  end
  return out
end
M.guarded = guarded

-- A small binary heap keeping the `limit` smallest (mark, id) candidates
-- for incremental runs with a limit over a source that is not ordered.
local function heap_push(heap, item, limit)
  local function less(a, b) return cursor.compare(a.mark, a.id, b.mark, b.id, heap.kind) > 0 end -- max-heap
  local function up(i)
    while i > 1 do
      local parent = i // 2
      if less(heap[i], heap[parent]) then heap[i], heap[parent] = heap[parent], heap[i]; i = parent else break end
    end
  end
  local function down(i)
    local n = #heap
    while true do
      local l, r, top = 2 * i, 2 * i + 1, i
      if l <= n and less(heap[l], heap[top]) then top = l end
      if r <= n and less(heap[r], heap[top]) then top = r end
      if top == i then break end
      heap[i], heap[top] = heap[top], heap[i]
      i = top
    end
  end
  if #heap < limit then
    heap[#heap + 1] = item
    up(#heap)
  elseif cursor.compare(item.mark, item.id, heap[1].mark, heap[1].id, heap.kind) < 0 then
    heap[1] = item
    down(1)
  end
end

-- new(run, reader, state, incremental [, track_marks]) -> source.
-- track_marks: keep the largest (mark, id) read though the run is not
-- incremental (a full pass of an incremental sync moves its cursor). Three
-- shapes: for an
-- incremental limited run over a reader that is not ordered, the `limit`
-- smallest records newer than the cursor (read in full first, so
-- `truncated` tells whether records were left for later runs); for
-- ndjson-like readers under a fingerprinted mapping, raw lines whose bytes
-- were imported before are UNCHANGED without decoding; else the reader's
-- records themselves.
function M.new(run, reader, state, incremental, track_marks)
  local sync, settings, session = run.sync, run.sync.import, run.session
  local kind = settings.changed_kind
  local source = { truncated = false, moves_each_batch = true, ordered = reader.ordered == true }
  -- ready() -> whether next() gives a record without waiting for the
  -- network (the reader's ready, when it has one)
  function source.ready()
    return not reader.ready or reader:ready()
  end
  local max_mark, max_id -- the largest (mark, id) processed in this run
  -- A reader that hands over checkpoints resumes from them: what it gives
  -- is new by its own account, whatever the marks say.
  local checkpointed = type(reader.checkpoint) == "function"
  reader = guarded(sync.provider, reader)
  source.reader = reader

  local function newer_than_cursor(record)
    if checkpointed or not incremental or state.cursor_mark == nil then return true end
    local mark = mark_of(sync, record)
    if mark == nil then return true end
    return cursor.compare(mark, id_of(sync, record), state.cursor_mark, state.cursor_id, kind) > 0
  end

  local function skip()
    run.counts.skipped = run.counts.skipped + 1
  end

  -- note_mark(record): the record is processed; the cursor may move to it.
  -- A reader that promised changed order and breaks it is told off once,
  -- and the cursor then moves only when the run completes.
  function source.note_mark(record)
    local mark = (incremental or track_marks) and mark_of(sync, record)
    if mark == nil or mark == false then return end
    local id = id_of(sync, record)
    local order = max_mark == nil and 1 or cursor.compare(mark, id, max_mark, max_id, kind)
    if order > 0 then
      max_mark, max_id = mark, id
    elseif order < 0 then
      if source.ordered then
        session.log("warn", string.format("sync \"%s\": the provider promised records in changed order but %s came after %s; "
          .. "the cursor now advances only when the run completes", sync.name, cursor.format(mark, id),
          cursor.format(max_mark, max_id)))
      end
      source.ordered = false
    end
  end

  function source.max()
    return max_mark, max_id
  end

  -- The largest (mark, id) of records the C record path took.
  local function note_pair(mark, id)
    if mark == nil then return end
    if max_mark == nil or cursor.compare(mark, id, max_mark, max_id, kind) > 0 then max_mark, max_id = mark, id end
  end

  if incremental and settings.limit and not reader.ordered and not checkpointed then
    local heap, unreadable = { kind = kind }, {}
    while true do
      local record, err, raw = reader:next()
      if record == nil then break end
      if record == false then
        unreadable[#unreadable + 1] = { err, raw }
      elseif newer_than_cursor(record) then
        if #heap >= settings.limit then source.truncated = true end
        heap_push(heap, { mark = mark_of(sync, record), id = id_of(sync, record), record = record }, settings.limit)
      else
        skip()
      end
    end
    table.sort(heap, function(a, b) return cursor.compare(a.mark, a.id, b.mark, b.id, kind) < 0 end)
    -- Everything was read already: files may move only once every record
    -- taken from them is committed, at the end, and only if none was left.
    source.moves_each_batch, source.ordered = false, true
    local u, h = 0, 0
    function source.next()
      if u < #unreadable then
        u = u + 1
        return UNREADABLE, unreadable[u][1], unreadable[u][2]
      end
      h = h + 1
      if heap[h] then return RECORD, heap[h].record end
      return nil
    end
    return source
  end

  if reader.next_raw and sync.fingerprint and not run.track_seen and not session:uses_refs(sync.name)
      and not (run.sync_id and run.book:input_duplicates(run.sync_id)) then
    local known = run.book:raw_hashes(run.sync_id)
    local fingerprint = sync.fingerprint
    local bulk = run.program and reader.next_bulk and not source.ordered
      and { program = run.program, take = run.program.take, seed = fingerprint } or nil
    if not bulk then run.program, run.mapped_in_c = nil, nil end
    -- Runs of known lines are skipped by the reader in C: UNCHANGED then
    -- carries how many; TAKEN how many the C record path took. A line
    -- found after such runs waits in `pending`.
    local pending, pending_hash, pending_taken
    function source.next(room, batch_room)
      while true do
        if pending_taken then
          local taken = pending_taken
          pending_taken = nil
          return TAKEN, taken
        end
        local text, skipped, err, raw_hash = pending, 0, nil, pending_hash
        pending, pending_hash = nil, nil
        if not text and bulk and run.program then
          local taken, older
          repeat
            -- the cursor as newer_than_cursor reads it
            local mark = (incremental and not checkpointed) and state.cursor_mark or nil
            text, skipped, err, raw_hash, taken, older = reader:next_bulk(bulk, known,
              math.max(1, math.min(room, batch_room or room, 65536)), mark, state.cursor_id, run.failing)
            run.counts.skipped = run.counts.skipped + older
          until text ~= nil or skipped > 0 or taken > 0 or older == 0
          -- marks of the records taken, and of those found unchanged by content
          if taken > 0 or skipped > 0 then note_pair(run.program:max()) end
          if skipped > 0 or taken > 0 then
            pending, pending_hash = text, raw_hash
            if skipped > 0 then
              pending_taken = taken > 0 and taken or nil
              return UNCHANGED, skipped
            end
            return TAKEN, taken
          end
        elseif not text then
          if reader.next_unknown then
            text, skipped, err, raw_hash = reader:next_unknown(known, fingerprint, math.max(1, math.min(room, 65536)))
          else
            text, err = reader:next_raw()
            raw_hash = text and core.hash.line(text, fingerprint)
            if raw_hash and known:has(raw_hash) then text, skipped = nil, 1 end
          end
          if skipped > 0 then
            pending, pending_hash = text, raw_hash
            return UNCHANGED, skipped
          end
        end
        if text == nil then return nil end
        if text == false then return UNREADABLE, err end
        -- each line is hashed once: by the reader, or here
        raw_hash = raw_hash or core.hash.line(text, fingerprint)
        -- a line the C record path handed back after callbacks ran comes
        -- as they left it, with their outcomes
        local record, memo = record_path.held(run)
        if record == nil then
          record, err = reader:decode(text)
          if record == false then return UNREADABLE, err, text end
        end
        if newer_than_cursor(record) then return RECORD, record, raw_hash, text, memo end
        skip()
      end
    end
    return source
  end

  -- Readers that hand over the records in hand as a page give them to the
  -- C record path a page at a time (run.program: entsync.record_path); a
  -- record it cannot take, and those after it, wait in `held`. A page is
  -- { doc = a json.document holding its records now, list = function(page)
  -- -> its records decoded as a Lua list, at any time }.
  local program = run.program
  if program and not reader.take_records then run.program, run.mapped_in_c, program = nil, nil, nil end
  local held
  local function next_held()
    local record, memo = held.list[held.from], held.memo
    held.from, held.memo = held.from + 1, nil
    if held.from > held.to then held = nil end
    return record, memo
  end
  local pending_skipped
  -- passing: the last records taken were older than the cursor; the Lua
  -- pipeline passes over those, fetching pages, within one next()
  local passing = false
  -- records taken from the reader and not planned yet are ready, and so is
  -- a pass over older records under way: a batch must not end (and move an
  -- ordered reader's cursor) before them
  function source.ready()
    return held ~= nil or pending_skipped ~= nil or passing or not reader.ready or reader:ready()
  end
  function source.next(room, batch_room)
    while true do
      if pending_skipped then
        local n = pending_skipped
        pending_skipped = nil
        return UNCHANGED, n
      end
      local record, err, raw, memo
      if held then
        record, memo = next_held()
      elseif program and run.program then
        local page, from, to = reader:take_records(math.max(1, math.min(room, batch_room or room, 65536)))
        if page then
          local mark = (incremental and not checkpointed) and state.cursor_mark or nil
          local taken, same, older, stop
          taken, same, older, stop, passing = program:take_records(page.doc, from, to, mark, state.cursor_id,
            run.failing, source.ordered, max_mark, max_id)
          run.counts.skipped = run.counts.skipped + older
          if taken > 0 or same > 0 then note_pair(program:max()) end
          if stop then
            -- the Lua pipeline takes the rest decoded; the record the
            -- program stopped at comes as its callbacks left it
            local list, record, memo = page:list(), record_path.held(run)
            if record ~= nil then list[stop] = record end
            held = { list = list, from = stop, to = to, memo = memo }
          end
          if taken > 0 then
            pending_skipped = same > 0 and same or nil
            return TAKEN, taken, page
          end
          if same > 0 then return UNCHANGED, same end
          goto continue
        end
      end
      if record == nil then
        passing = false
        record, err, raw = reader:next()
        if record == nil then return nil end
        if record == false then return UNREADABLE, err, raw end
      end
      if newer_than_cursor(record) then return RECORD, record, nil, nil, memo end
      skip()
      ::continue::
    end
  end
  return source
end

return M
