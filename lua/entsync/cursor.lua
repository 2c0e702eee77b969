-- entsync.cursor: ordering of changed marks and remote ids.
--
-- A cursor is the pair (changed mark, remote id). Marks are numbers
-- (epochs, versions) or strings (ISO 8601 timestamps compare as text);
-- ids that are both integers compare as numbers, otherwise as text. The
-- pair makes records that share a mark across a batch boundary neither
-- lost nor repeated.

local M = {}

local function compare_scalar(a, b)
  if a == b then return 0 end
  local na, nb = tonumber(a), tonumber(b)
  if na and nb and type(a) == type(b) then
    if na < nb then return -1 elseif na > nb then return 1 end
    return 0
  end
  if math.type(a) and math.type(b) then return a < b and -1 or 1 end
  local sa, sb = tostring(a), tostring(b)
  if sa < sb then return -1 elseif sa > sb then return 1 end
  return 0
end

local function integer_text(s)
  return type(s) == "string" and s:match("^%-?%d+$") and #s < 19
end

-- A mark as its declared kind compares it: "time" (ISO 8601 text or
-- epoch seconds, as epoch seconds), "number", "text"; nil when it is not
-- of that kind.
local function as_kind(mark, kind)
  if kind == "time" then
    if type(mark) == "number" then return mark end
    local ok, seconds = pcall(require("entsync.map").iso_to_epoch, mark)
    return ok and seconds or nil
  elseif kind == "number" then
    return tonumber(mark)
  elseif kind == "text" then
    return tostring(mark)
  end
  return mark
end

-- compare_marks(a, b [, kind]) -> -1, 0, 1. Without a kind ("auto"),
-- numbers compare as numbers and text as text. Marks that are not of the
-- declared kind compare as text after those that are.
function M.compare_marks(a, b, kind)
  if kind and kind ~= "auto" then
    local ka, kb = as_kind(a, kind), as_kind(b, kind)
    if ka ~= nil and kb ~= nil then return compare_scalar(ka, kb) end
    if ka ~= nil then return -1 elseif kb ~= nil then return 1 end
  end
  return compare_scalar(a, b)
end

function M.compare_ids(a, b)
  if integer_text(a) and integer_text(b) then
    local na, nb = tonumber(a), tonumber(b)
    if na < nb then return -1 elseif na > nb then return 1 end
    return 0
  end
  if a < b then return -1 elseif a > b then return 1 end
  return 0
end

-- Compares (mark_a, id_a) with (mark_b, id_b); a nil mark sorts first.
function M.compare(mark_a, id_a, mark_b, id_b, kind)
  if mark_a == nil or mark_b == nil then
    if mark_a ~= nil then return 1 elseif mark_b ~= nil then return -1 end
  else
    local c = M.compare_marks(mark_a, mark_b, kind)
    if c ~= 0 then return c end
  end
  return M.compare_ids(id_a, id_b)
end

-- A remote id as text, the one form ids take in the store: integral
-- numbers without a fraction (cjson gives JSON numbers as floats, and 17.0
-- is id "17"), strings as they are; nil for nothing usable.
function M.id_text(value)
  if type(value) == "number" then
    local integer = math.tointeger(value)
    return integer and string.format("%d", integer) or tostring(value)
  end
  if type(value) == "string" and value ~= "" then return value end
  return nil
end

function M.format(mark, id)
  if mark == nil and id == nil then return nil end
  return string.format("%s/%s", tostring(mark), tostring(id))
end

return M
