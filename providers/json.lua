-- json: a file holding one JSON array of objects (.json), or an object with
-- the array under a dotted path (records = "data.items"). The file is
-- streamed: a scanner finds each element's bytes and only that element is
-- decoded, so memory stays flat whatever the file size; sibling values on
-- the way to the array are skipped without being decoded.
--
--   provider "json" { path = "export.json", records = "data.items" }

local filesource = require "entsync.filesource"
local json = require "entsync.json"

local byte, find, sub, concat = string.byte, string.find, string.sub, table.concat
local located, decode_object = filesource.located, filesource.decode_object

local CHUNK = 65536
local QUOTE, BACKSLASH, COMMA, COLON = byte('"'), byte("\\"), byte(","), byte(":")
local LBRACE, RBRACE, LBRACK, RBRACK = byte("{"), byte("}"), byte("["), byte("]")
local BOM = "\239\187\191"

local function validate(config)
  local r = config.records
  if r ~= nil and (type(r) ~= "string" or r == "" or find(r, "^%.") or find(r, "%.$") or find(r, "%.%.")) then
    return "records must be a dotted path such as \"data.items\""
  end
end

local function path_of(records)
  local keys = {}
  for key in records:gmatch("[^.]+") do keys[#keys + 1] = key end
  return keys
end

-- Where entsync.json's "at byte N" falls, in lines past the element's start.
local function lines_before(text, message)
  local n = tonumber(message:match("at byte (%d+)"))
  if not n then return 0 end
  local count, i = 0, 1
  while true do
    local nl = find(text, "\n", i, true)
    if not nl or nl >= n then return count end
    count, i = count + 1, nl + 1
  end
end

local function open(f, name, config, max_line)
  local buf, pos, eof = "", 1, false
  local line, counted = 1, 1     -- newlines in buf before `counted` are in `line`
  local collecting, pieces, start = false, nil, 1
  local collected, oversize = 0, false -- a record's bytes so far; past max_line
  local stack = {}               -- open brackets of the value being scanned
  local state = "start"
  local source = {}

  local function count_to(p)
    local i = counted
    while true do
      local nl = find(buf, "\n", i, true)
      if not nl or nl >= p then break end
      line, i = line + 1, nl + 1
    end
    if p > counted then counted = p end
  end

  -- pos keeps its distance past the old end, so an escape split across two
  -- chunks still skips the right byte.
  local function refill()
    if eof then return false end
    local chunk = f:read(CHUNK)
    if not chunk then eof = true return false end
    count_to(#buf + 1)
    if collecting then
      pieces[#pieces + 1] = sub(buf, start)
      collected = collected + #buf - start + 1
      -- a record over max_line is scanned on to its end, not kept
      if collected > max_line then collecting, pieces, oversize = false, nil, true end
    end
    if pos <= #buf then pos = #buf + 1 end
    pos, buf, counted, start = pos - #buf, chunk, 1, 1
    return true
  end

  -- The byte at the next non-space, or nil at the end of input.
  local function skip_ws()
    while true do
      local i = find(buf, "[^ \t\r\n]", pos)
      if i then pos = i return byte(buf, i) end
      pos = #buf + 1
      if not refill() then return nil end
    end
  end

  -- Moves pos past a string (instring) or a bracketed value, jumping
  -- between the only characters that matter.
  local function nested(instring, depth)
    while true do
      local i = find(buf, instring and '["\\]' or '["%[%]{}]', pos)
      if not i then
        if not refill() then return nil, "unexpected end of input" end
      else
        local b = byte(buf, i)
        pos = i + 1
        if instring then
          if b == BACKSLASH then
            pos = i + 2
          else
            instring = false
            if depth == 0 then return true end
          end
        elseif b == QUOTE then
          instring = true
        elseif b == LBRACE or b == LBRACK then
          depth = depth + 1
          stack[depth] = b
        elseif stack[depth] ~= b - 2 then   -- '}' and ']' sit 2 after '{' and '['
          pos = i
          return nil, "unexpected '" .. string.char(b) .. "'"
        else
          depth = depth - 1
          if depth == 0 then return true end
        end
      end
    end
  end

  local function scalar()
    while true do
      local i = find(buf, "[,%]}%s]", pos)
      if i then pos = i return true end
      pos = #buf + 1
      if not refill() then return true end
    end
  end

  local function scan_any()
    local b = byte(buf, pos)
    if b == QUOTE then
      pos = pos + 1
      return nested(true, 0)
    elseif b == LBRACE or b == LBRACK then
      pos = pos + 1
      stack[1] = b
      return nested(false, 1)
    elseif b == COMMA or b == COLON or b == RBRACE or b == RBRACK then
      return nil, "unexpected '" .. string.char(b) .. "'"
    end
    return scalar()
  end

  -- scan(collect) -> the value's text (collect) or true | nil, message; the
  -- value starts at pos (not a space) and pos ends just after it.
  -- A collected value over max_line bytes is false (it was scanned past).
  local function scan(collect)
    collecting, pieces, start, collected, oversize = collect, collect and {} or nil, pos, 0, false
    local ok, err = scan_any()
    collecting = false
    if not ok then return nil, err end
    if not collect then return true end
    if oversize or collected + pos - start > max_line then return false end
    pieces[#pieces + 1] = sub(buf, start, pos - 1)
    return concat(pieces)
  end

  local function broken(message)
    state = "done"
    source.broken = true
    count_to(pos)
    return false, located(name, line, "malformed JSON: " .. message)
  end

  local function expect(b, what)
    if skip_ws() ~= b then
      return nil, pos > #buf and "unexpected end of input" or "expected " .. what
    end
    pos = pos + 1
    return true
  end

  -- Walks object keys down the records path, skipping sibling values.
  local function descend(keys)
    for depth, want in ipairs(keys) do
      local where = table.concat(keys, ".", 1, depth - 1)
      local ok, err = expect(LBRACE, depth == 1 and "a top-level object" or "an object at " .. where)
      if not ok then return nil, err end
      while true do
        local b = skip_ws()
        if b ~= QUOTE then
          return nil, (b == RBRACE and "no key " or "expected key ") .. string.format("%q", want)
            .. (depth > 1 and " in " .. where or "")
        end
        local text
        text, err = scan(true)
        if text == false then return nil, string.format("a key over max_line (%d bytes)", max_line) end
        if not text then return nil, err end
        ok, err = expect(COLON, "':'")
        if not ok then return nil, err end
        if skip_ws() == nil then return nil, "unexpected end of input" end
        local key = json.try_decode(text)
        if key == nil then return nil, "bad key " .. text end
        if key == want then break end
        ok, err = scan(false)
        if not ok then return nil, err end
        b = skip_ws()
        if b ~= COMMA then
          return nil, (b == RBRACE and "no key " or "expected ',' before key ")
            .. string.format("%q", want) .. (depth > 1 and " in " .. where or "")
        end
        pos = pos + 1
      end
    end
    return true
  end

  local function enter()
    refill()
    if sub(buf, 1, 3) == BOM then pos = 4 end
    if config.records then
      local ok, err = descend(path_of(config.records))
      if not ok then return nil, err end
      return expect(LBRACK, "an array at " .. config.records)
    end
    return expect(LBRACK, "a top-level array (records = \"path\" names one inside an object)")
  end

  local function element()
    count_to(pos)
    local at = line
    local text, err = scan(true)
    if text == false then
      source.keep = true
      return false, located(name, at, string.format("a record over max_line (%d bytes): passed over; the provider's "
        .. "setting max_line reads longer ones", max_line))
    end
    if not text then return broken(err) end
    local record
    record, err = decode_object(text)
    if record then return record end
    return false, located(name, at + lines_before(text, err), err)
  end

  function source.next()
    if state == "done" then return nil end
    if state == "start" then
      local ok, err = enter()
      if not ok then return broken(err) end
      state = "first"
    end
    local b = skip_ws()
    if b == RBRACK then
      state = "done"
      return nil
    end
    if state == "more" then
      if b ~= COMMA then return broken(b and "expected ',' or ']'" or "unexpected end of input") end
      pos = pos + 1
      b = skip_ws()
    end
    if not b then return broken("unexpected end of input") end
    state = "more"
    return element()
  end

  return source
end

return filesource.provider {
  kind = "json",
  extensions = { ".json" },
  settings = { records = "string" },
  validate = validate,
  open = open,
}
