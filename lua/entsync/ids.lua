-- entsync.ids: remote ids as entsync keeps them.
--
-- A remote id keeps its JSON type through the id map: an integer stays an
-- integer (101 goes back to the remote as 101), text stays text ("101"
-- goes back as "101"). Usable ids are integers (an integral float within
-- 2^53 counts as one: JSON has one number type) and non-empty strings;
-- anything else (a fraction, infinity, a table, an empty string) is not an
-- id, and the record that carries it fails with a message naming it.

local M = {}

local MAX_EXACT = 2 ^ 53

-- remote(value) -> the id, or nil and why it is not one.
function M.remote(value)
  local t = type(value)
  if t == "string" then
    if value == "" then return nil, "an empty string" end
    return value
  end
  if math.type(value) == "integer" then return value end
  if t == "number" then
    if value ~= value or value == math.huge or value == -math.huge then return nil, "a number that is not finite" end
    local integer = math.tointeger(value)
    if integer and math.abs(value) <= MAX_EXACT then return integer end
    return nil, string.format("%s, which is not an integer", tostring(value))
  end
  if value == nil then return nil, "nothing" end
  return nil, t == "table" and "a table" or t
end

-- The text of an id: how failures are keyed, logs show it and cursors
-- compare it.
function M.text(id)
  if math.type(id) == "integer" then return string.format("%d", id) end
  return tostring(id)
end

return M
