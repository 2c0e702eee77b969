-- csv: RFC 4180 files with a header row (.csv). Quoted fields may hold the
-- delimiter, doubled quotes and line breaks; CRLF or LF line ends; a UTF-8
-- BOM is ignored. Every value is a string, an empty field is "".
--
--   provider "csv" { dir = "inbox", delimiter = ";" }

local core = require "entsync.core"
local filesource = require "entsync.filesource"

local byte, find, sub, gsub, format = string.byte, string.find, string.sub, string.gsub, string.format
local concat = table.concat
local read_line_of = core.fs.read_line
local located, strip_bom = filesource.located, filesource.strip_bom

local QUOTE, CR, LF = byte('"'), byte("\r"), byte("\n")

local function validate(config)
  local d = config.delimiter
  if d ~= nil and (type(d) ~= "string" or #d ~= 1 or find(d, '["\r\n]')) then
    return "delimiter must be one character other than a quote or line break"
  end
end

local function open(f, name, config, max_line)
  local delimiter = config.delimiter or ","
  local DELIM = byte(delimiter)
  local line_no = 0
  local header, width
  local source = {}

  -- The next line with its line break; false, bytes for one over max_line.
  local function read_line()
    local line, bytes = read_line_of(f, max_line, true)
    if line ~= nil then line_no = line_no + 1 end
    return line, bytes
  end

  -- A quoted field starting at i; reads on while the quote is open, each
  -- line searched once (the field's pieces are joined when it closes, so
  -- an unbalanced quote costs time linear in the rest of the file, and
  -- max_line bytes of memory at most). Returns the value, the index after
  -- it and the line it ends in; or nil and why.
  local function quoted(text, i)
    local j, start, pieces, size = i + 1, i + 1, nil, 0
    while true do
      local q = find(text, '"', j, true)
      if not q then
        pieces = pieces or {}
        pieces[#pieces + 1] = sub(text, start)
        size = size + #text - start + 1
        local more = read_line()
        if more == nil then return nil, "unterminated quoted field" end
        if more == false or size + #more > max_line then
          return nil, format("a quoted field opened here runs on past max_line (%d bytes): an unbalanced quote? "
            .. "(the provider's setting max_line allows longer records)", max_line)
        end
        text, j, start = more, 1, 1
      elseif byte(text, q + 1) == QUOTE then
        j = q + 2
      else
        local value = sub(text, start, q - 1)
        if pieces then
          pieces[#pieces + 1] = value
          value = concat(pieces)
        end
        return gsub(value, '""', '"'), q + 1, text
      end
    end
  end

  -- parse(text) -> fields, count | nil, message, stop (the rest of the
  -- file cannot be read on from here)
  local function parse(text)
    local fields, n, i = {}, 0, 1
    while true do
      if byte(text, i) == QUOTE then
        local value, after, grown = quoted(text, i)
        if not value then return nil, after, true end
        text = grown
        n = n + 1
        fields[n] = value
        local b = byte(text, after)
        if b == nil or b == CR or b == LF then return fields, n end
        if b ~= DELIM then return nil, "unexpected character after a closing quote" end
        i = after + 1
      else
        local j = find(text, delimiter, i, true)
        n = n + 1
        if not j then
          fields[n] = gsub(sub(text, i), "\r?\n$", "")
          return fields, n
        end
        fields[n] = sub(text, i, j - 1)
        i = j + 1
      end
    end
  end

  local function set_header(fields, n, at)
    local seen = {}
    for k = 1, n do
      if seen[fields[k]] then
        source.broken = true
        return false, located(name, at, format("column %q appears twice in the header", fields[k]))
      end
      seen[fields[k]] = true
    end
    header, width = fields, n
  end

  function source.next()
    if source.broken then return nil end
    while true do
      local text, bytes = read_line()
      if text == nil then return nil end
      if text == false then return false, filesource.too_long(source, name, line_no, bytes, max_line) end
      if line_no == 1 then text = strip_bom(text) end
      local at = line_no
      -- Blank lines carry no record (a trailing one is common).
      if not find(text, "^\r?\n?$") then
        local fields, n, stop = parse(text)
        if not fields then
          -- An open quote that runs to the end of the file (or past
          -- max_line): the rest cannot be read as records.
          source.broken = stop or not header
          return false, located(name, at, n)
        end
        if not header then
          local bad, err = set_header(fields, n, at)
          if bad == false then return false, err end
        elseif n ~= width then
          return false, filesource.unfinished(source, f, located(name, at, format("expected %d fields, got %d", width,
            n)))
        else
          local record = {}
          for k = 1, n do record[header[k]] = fields[k] end
          return record
        end
      end
    end
  end

  return source
end

return filesource.provider {
  kind = "csv",
  extensions = { ".csv" },
  settings = { delimiter = "string" },
  validate = validate,
  open = open,
}
