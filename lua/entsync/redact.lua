-- entsync.redact: what a secret looks like, and the one function that
-- takes secrets out of text before it leaves entsync.
--
-- A secret is the value of a setting declared secret in a provider's
-- schema ({ type = ..., secret = true }) or named like one (password,
-- secret, token, bearer, authorization, cookie, credential, api_key, ...:
-- see M.secret_name), the user information of a URL (https://user:pw@host),
-- a secret header's value (Authorization, Cookie, X-Api-Key and those a
-- provider names) and a secret query parameter's value (api_key, token,
-- ...). Job settings are remembered as they are declared (M.settings), so
-- their values are taken out wherever they turn up: in an error of a
-- remote, a provider's message, a traceback.
--
-- Every sink applies M.text: the logger (message and fields), fatal
-- errors, the run records and failures written to the store, status and
-- the REPL's printing.

local M = {}

M.MARK = "[redacted]"

-- Values shorter than this are not searched for in text: they would take
-- ordinary words out of every line.
M.MIN_LENGTH = 4

local secret_headers = { authorization = true, ["proxy-authorization"] = true, cookie = true, ["set-cookie"] = true,
  ["x-api-key"] = true }
local secret_params = { api_key = true, apikey = true, access_token = true, token = true, client_secret = true,
  password = true, secret = true, key = true, auth = true, signature = true, sig = true }
local secret_words = { "pass", "secret", "token", "bearer", "authorization", "cookie", "credential", "api_?key",
  "private_?key", "access_?key" }
local values = {} -- secret text -> true
local ordered     -- the values, longest first (a secret may hold another)

-- Whether a setting, header or parameter of this name holds a secret.
function M.secret_name(name)
  if type(name) ~= "string" then return false end
  local folded = name:lower():gsub("%-", "_")
  if secret_headers[name:lower()] then return true end
  for _, word in ipairs(secret_words) do
    if folded:find(word) then return true end
  end
  return false
end

-- A header name whose value never reaches a log.
function M.secret_header(name)
  secret_headers[name:lower()] = true
end

-- A query parameter whose value never reaches a log.
function M.secret_param(name)
  secret_params[name:lower()] = true
end

-- Remembers a secret value (a string or number; others are ignored).
function M.value(secret)
  if type(secret) == "number" then secret = tostring(secret) end
  if type(secret) ~= "string" or #secret < M.MIN_LENGTH or values[secret] then return end
  values[secret] = true
  ordered = nil
end

local function userinfo_secrets(text)
  for info in text:gmatch("%a[%w+.-]*://([^/?#@%s]+)@") do
    M.value(info)
    local password = info:match(":(.*)$")
    if password then M.value(password) end
  end
end

-- settings(config [, schema]): remembers the secrets of a provider's
-- settings: values under a secret name or a schema entry marked secret
-- (everything below them), and the user information of every URL.
function M.settings(config, schema, inside)
  if type(config) ~= "table" then
    if inside then M.value(config) elseif type(config) == "string" then userinfo_secrets(config) end
    return
  end
  local fields = type(schema) == "table" and (schema.fields or (schema.map == nil and schema.list == nil and schema))
    or nil
  for key, value in pairs(config) do
    local entry = fields and fields[key] or nil
    -- a table under a secret name (auth.api_key = { header, value }) is
    -- looked into: its leaves say which of them are secret
    local secret = inside or (type(entry) == "table" and entry.secret == true)
      or (type(value) ~= "table" and M.secret_name(key))
    M.settings(value, type(entry) == "table" and entry or nil, secret)
  end
end

local function by_length()
  if not ordered then
    ordered = {}
    for v in pairs(values) do ordered[#ordered + 1] = v end
    table.sort(ordered, function(a, b) return #a > #b end)
  end
  return ordered
end

local function plain(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- known(s) -> s without the secret values remembered (only those: for
-- data such as a failed record's payload, which is retried as it is).
function M.known(s)
  if type(s) ~= "string" then return s end
  for _, secret in ipairs(by_length()) do
    if s:find(secret, 1, true) then s = s:gsub(plain(secret), M.MARK) end
  end
  return s
end

-- text(s) -> s without secrets: known values, URL user information,
-- secret query parameters and header values, Bearer and Basic
-- credentials. Anything not a string is returned as it is.
function M.text(s)
  if type(s) ~= "string" then return s end
  s = M.known(s)
  s = s:gsub("(%a[%w+.-]*://)[^/?#@%s\"']+@", "%1" .. M.MARK .. "@")
  s = s:gsub("([?&;])([^=&%s]+)=([^&%s#\"']*)", function(sep, key, value)
    if value ~= M.MARK and secret_params[key:lower()] then return sep .. key .. "=" .. M.MARK end
  end)
  s = s:gsub("([%w-]+)(\"?%s*[:=]%s*\"?)([^\n;,\"]+)", function(name, sep, value)
    if secret_headers[name:lower()] and value ~= M.MARK then return name .. sep .. M.MARK end
  end)
  s = s:gsub("(Bearer%s+)([%w%-._~+/]+=*)", function(prefix, credential)
    if #credential >= 8 then return prefix .. M.MARK end
  end)
  s = s:gsub("(Basic%s+)([%w+/]+=*)", function(prefix, credential)
    if #credential >= 8 then return prefix .. M.MARK end
  end)
  return s
end

-- deep(value) -> a copy of value with text() applied to every string, and
-- the values under secret names replaced whole (for printing settings,
-- a provider object, log fields). A copy keeps its original's metatable
-- (a JSON array stays one); a value that prints itself (__tostring) is
-- left to the text it prints.
function M.deep(value, depth, seen)
  depth, seen = depth or 0, seen or {}
  if type(value) == "string" then return M.text(value) end
  if type(value) ~= "table" or depth > 8 or seen[value] then return value end
  local meta = getmetatable(value)
  if meta ~= nil and (type(meta) ~= "table" or meta.__tostring) then return value end
  seen[value] = true
  local out = {}
  for k, v in pairs(value) do
    out[k] = (M.secret_name(k) and type(v) ~= "table") and M.MARK or M.deep(v, depth + 1, seen)
  end
  seen[value] = nil
  return setmetatable(out, meta)
end

return M
