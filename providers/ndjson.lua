-- ndjson: one JSON object per line (.ndjson, .jsonl), read line by line so
-- memory stays flat whatever the file size.
--
--   provider "ndjson" { dir = "inbox" }                 -- a drop folder
--   provider "ndjson" { path = "data/contacts.ndjson" } -- one file

local core = require "entsync.core"
local filesource = require "entsync.filesource"

local find = string.find
local read_line = core.fs.read_line
local decode_object, located, strip_bom =
  filesource.decode_object, filesource.located, filesource.strip_bom

local function open(f, name, _, max_line)
  local line_no = 0
  local held -- the message of a line over max_line found after known ones
  local source = {}

  -- The next non-blank line, undecoded; blank lines carry no record
  -- (editors and concatenation leave them). A line over max_line is
  -- false, message.
  function source.next_raw()
    while true do
      local line, bytes = read_line(f, max_line)
      if line == nil then return nil end
      line_no = line_no + 1
      if line == false then return false, filesource.too_long(source, name, line_no, bytes, max_line) end
      if line_no == 1 then line = strip_bom(line) end
      if find(line, "[^ \t\r]") then return line end
    end
  end

  -- decode(line) -> record | false, message naming the file and line of the
  -- line last read.
  function source.decode(line)
    local record, err = decode_object(line)
    if record then return record end
    return false, filesource.unfinished(source, f, located(name, line_no, err)), line
  end

  -- next_unknown(known, seed, max) -> line | nil, skipped, more, hash:
  -- lines whose hash is in `known` are skipped in C (at most max); hash is
  -- the line's; the first line goes through next_raw for its BOM. A line
  -- over max_line is false, skipped, message (after the known lines before
  -- it have been counted as skipped).
  function source.next_unknown(known, seed, max)
    if held then
      local message = held
      held = nil
      return false, 0, message
    end
    if line_no == 0 then
      local line, err = source.next_raw()
      if line == false then return false, 0, err end
      if not line then return nil, 0 end
      local hash = core.hash.line(line, seed)
      if known:has(hash) then return nil, 1, true end
      return line, 0, false, hash
    end
    local line, skipped, lines, hash = core.hash.skip_known(f, known, seed, max, max_line)
    line_no = line_no + lines
    if line == false then
      local message = filesource.too_long(source, name, line_no, hash, max_line)
      if skipped == 0 then return false, 0, message end
      held = message
      return nil, skipped, true
    end
    return line, skipped, line == nil and skipped >= max, hash
  end

  -- next_bulk(program, known, max, cursor_mark, cursor_id, failing) ->
  -- like next_unknown, with the lines the C record path took as a fifth
  -- result and those older than the cursor as a sixth (core.record's
  -- take); the first line goes through next_unknown for its BOM.
  function source.next_bulk(program, known, max, cursor_mark, cursor_id, failing)
    if held or line_no == 0 then
      local line, skipped, more, hash = source.next_unknown(known, program.seed, max)
      return line, skipped, more, hash, 0, 0
    end
    local line, skipped, lines, hash, taken, older = program.take(program.program, f, known, max, max_line,
      cursor_mark, cursor_id, failing)
    line_no = line_no + lines
    if line == false then
      local message = filesource.too_long(source, name, line_no, hash, max_line)
      if skipped + taken + older == 0 then return false, 0, message, nil, 0, 0 end
      held = message
      return nil, skipped, true, nil, taken, older
    end
    return line, skipped, line == nil and skipped + taken + older >= max, hash, taken, older
  end

  function source.next()
    local line, err = source.next_raw()
    if not line then return line, err end
    return source.decode(line)
  end

  return source
end

return filesource.provider {
  kind = "ndjson",
  extensions = { ".ndjson", ".jsonl" },
  raw = true,
  -- a sink: writes append one JSON line each
  encode = require("entsync.json").encode,
  open = open,
}
