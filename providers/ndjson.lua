-- ndjson: one JSON object per line (.ndjson, .jsonl), read line by line so
-- memory stays flat whatever the file size.
--
--   provider "ndjson" { dir = "inbox" }                 -- a drop folder
--   provider "ndjson" { path = "data/contacts.ndjson" } -- one file

local core = require "entsync.core"
local filesource = require "entsync.filesource"

local find = string.find
local decode_object, located, strip_bom =
  filesource.decode_object, filesource.located, filesource.strip_bom

local function open(f, name)
  local line_no = 0
  local source = {}

  -- The next non-blank line, undecoded; blank lines carry no record
  -- (editors and concatenation leave them).
  function source.next_raw()
    while true do
      local line = f:read("l")
      if not line then return nil end
      line_no = line_no + 1
      if line_no == 1 then line = strip_bom(line) end
      if find(line, "[^ \t\r]") then return line end
    end
  end

  -- decode(line) -> record | false, message naming the file and line of the
  -- line last read.
  function source.decode(line)
    local record, err = decode_object(line)
    if record then return record end
    return false, located(name, line_no, err), line
  end

  -- next_unknown(known, seed, max) -> line | nil, skipped, more, hash:
  -- lines whose hash is in `known` are skipped in C (at most max); hash is
  -- the line's; the first line goes through next_raw for its BOM.
  function source.next_unknown(known, seed, max)
    if line_no == 0 then
      local line = source.next_raw()
      if not line then return nil, 0 end
      local hash = core.hash.bytes(line, seed)
      if known:has(hash) then return nil, 1, true end
      return line, 0, false, hash
    end
    local line, skipped, lines, hash = core.hash.skip_known(f, known, seed, max)
    line_no = line_no + lines
    return line, skipped, line == nil and skipped >= max, hash
  end

  function source.next()
    local line = source.next_raw()
    if not line then return nil end
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
