-- entsync.http: HTTP for providers and scripts.
--
--   local http = require "entsync.http"
--   local res = http.get("https://api.example.com/contacts", { query = { page = 2 } })
--   for _, c in ipairs(res:json().data) do ... end
--
-- Every request goes through one curl multi handle (src/http.c). Inside a
-- task of entsync's scheduler (the engine runs providers so) a request
-- yields its coroutine until the response is there, so many requests are
-- in flight while the code reads as straight-line calls; anywhere else (a
-- script, the REPL, a write transaction) it simply blocks. Network errors,
-- 5xx and 408 are retried with exponential backoff and jitter; 429 waits
-- for Retry-After; after the last attempt the request fails with its
-- method, URL, status and the start of the body.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"

local M = {}

local client              -- the curl multi handle, made on first use

local function get_client()
  if not client then client = core.http.client() end
  return client
end
local arrived = {}        -- id -> response that no one was waiting for yet
local YIELD = {}          -- marks the scheduler's own yields
local managed = setmetatable({}, { __mode = "k" }) -- coroutines the scheduler runs
local blocking = 0        -- > 0: every request blocks (inside a write)
local held = {}           -- transfer id -> the limits whose slot it holds

-- Files a response that arrived: its slot is free at once, whoever waits
-- for it and whenever they do.
local function free_slot(id)
  local limits = held[id]
  if limits then
    held[id] = nil
    limits:release()
  end
end

local function arrive(response)
  free_slot(response.id)
  arrived[response.id] = response
end

local function poll(timeout)
  for _, r in ipairs(get_client():poll(timeout)) do arrive(r) end
end

M.defaults = { timeout = 60, connect_timeout = 10, attempts = 4, backoff = 0.25, max_backoff = 30 }

-- logging and redaction ---------------------------------------------------------

local log = function() end
local verbose = false
local secret_headers = { authorization = true, ["proxy-authorization"] = true, cookie = true, ["x-api-key"] = true }

-- set_logger(fn(level, message), verbose): requests are logged at "debug"
-- under verbose, with secret headers redacted.
function M.set_logger(fn, is_verbose)
  log, verbose = fn or function() end, is_verbose and true or false
end

-- A header name whose value never reaches a log (besides Authorization,
-- Cookie and X-Api-Key).
function M.secret_header(name)
  secret_headers[name:lower()] = true
end

local function redacted_headers(lines)
  local shown = {}
  for i, line in ipairs(lines) do
    local name = line:match("^([^:]+):")
    shown[i] = (name and secret_headers[name:lower()]) and (name .. ": [redacted]") or line
  end
  return table.concat(shown, "; ")
end

-- Secret query parameters (api keys) are redacted from logged URLs.
local secret_params = { api_key = true, apikey = true, access_token = true, token = true, client_secret = true }

function M.secret_param(name)
  secret_params[name:lower()] = true
end

local function redacted_url(url)
  return (url:gsub("([?&])([^=&]+)=([^&]*)", function(sep, key, value)
    if secret_params[key:lower()] then return sep .. key .. "=[redacted]" end
    return sep .. key .. "=" .. value
  end))
end
M.redacted_url = redacted_url

-- requests -------------------------------------------------------------------------

local function encode_component(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end
M.encode = encode_component

-- Encodes a query table (keys sorted, so URLs are stable) or a string.
function M.encode_query(query)
  if type(query) == "string" then return query end
  local keys = {}
  for k in pairs(query) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = query[k]
    if type(v) == "table" then
      for _, item in ipairs(v) do parts[#parts + 1] = encode_component(k) .. "=" .. encode_component(item) end
    elseif v ~= nil and v ~= false then
      parts[#parts + 1] = encode_component(k) .. "=" .. encode_component(v)
    end
  end
  return table.concat(parts, "&")
end

local function with_query(url, query)
  if query == nil then return url end
  local encoded = M.encode_query(query)
  if encoded == "" then return url end
  return url .. (url:find("?", 1, true) and "&" or "?") .. encoded
end

-- Normalizes a request table into what the C client takes.
local function prepare(req)
  if type(req) ~= "table" or type(req.url) ~= "string" then
    errors.raise("usage", "http.request needs a table with a url")
  end
  local headers, has = {}, {}
  for name, value in pairs(req.headers or {}) do
    if type(name) == "number" then
      headers[#headers + 1] = value
      has[(value:match("^([^:]+):") or ""):lower()] = true
    else
      headers[#headers + 1] = name .. ": " .. tostring(value)
      has[name:lower()] = true
    end
  end
  table.sort(headers)
  local body = req.body
  if req.json ~= nil then
    body = json.encode(req.json)
    if not has["content-type"] then headers[#headers + 1] = "Content-Type: application/json" end
  end
  if not has["accept"] then headers[#headers + 1] = "Accept: application/json" end
  if not has["user-agent"] then headers[#headers + 1] = "User-Agent: entsync/" .. core.version end
  local method = (req.method or (body and "POST") or "GET"):upper()
  local verify = req.verify ~= false
  return {
    method = method, url = with_query(req.url, req.query), headers = headers, body = body,
    timeout = req.timeout or M.defaults.timeout, connect_timeout = req.connect_timeout or M.defaults.connect_timeout,
    verify = verify, cafile = req.cafile, max_body = req.max_body,
  }
end

local Response = {}
Response.__index = Response

-- response:json() -> the decoded body; a body that is not JSON raises an
-- error naming the request and the start of the body.
function Response:json()
  local value, err = json.try_decode(self.body)
  if value == nil then
    errors.raise("http", string.format("%s %s: the response is not JSON (status %d: %s); the body starts %q",
      self.method, redacted_url(self.url), self.status, err, self.body:sub(1, 120)),
      { status = self.status })
  end
  return value
end

function Response:ok()
  return self.status >= 200 and self.status < 300
end

-- Waiting ---------------------------------------------------------------------------

-- Waits for the response of transfer id: yields to the scheduler when the
-- current coroutine is one of its tasks, else drives the client itself,
-- keeping responses that arrive for others.
local function await(id)
  local co = coroutine.running()
  if blocking == 0 and managed[co] then
    return coroutine.yield(YIELD, "http", id)
  end
  while true do
    local response = arrived[id]
    if response then
      arrived[id] = nil
      return response
    end
    poll(0.5)
  end
end

-- sleep(seconds): yields to the scheduler in a task, else sleeps.
function M.sleep(seconds)
  if seconds <= 0 then return end
  local co = coroutine.running()
  if blocking == 0 and managed[co] then
    coroutine.yield(YIELD, "sleep", core.sys.monotonic() + seconds)
  elseif client and client:pending() > 0 then
    -- transfers in flight go on while this caller waits
    local deadline = core.sys.monotonic() + seconds
    repeat poll(math.max(0, deadline - core.sys.monotonic())) until core.sys.monotonic() >= deadline
  else
    core.sys.sleep(seconds)
  end
end

-- Runs fn with every request blocking: the engine writes a batch so, so
-- that no other task runs inside its transaction.
function M.blocking(fn, ...)
  blocking = blocking + 1
  local results = table.pack(pcall(fn, ...))
  blocking = blocking - 1
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

-- limits: a concurrency cap and a rate per provider ---------------------------

local Limits = {}
Limits.__index = Limits

-- limits{ concurrency = 8, per_second = 20 }
function M.limits(options)
  options = options or {}
  return setmetatable({ cap = options.concurrency or math.huge, in_flight = 0,
    interval = options.per_second and 1 / options.per_second or 0, next_slot = 0 }, Limits)
end

function Limits:acquire()
  while self.in_flight >= self.cap do M.sleep(0.002) end
  self.in_flight = self.in_flight + 1
  if self.interval > 0 then
    local now = core.sys.monotonic()
    local slot = math.max(now, self.next_slot)
    self.next_slot = slot + self.interval
    if slot > now then M.sleep(slot - now) end
  end
end

function Limits:release()
  self.in_flight = self.in_flight - 1
end

-- retries ---------------------------------------------------------------------------

-- Seconds to wait from a Retry-After header: seconds, or an HTTP date.
function M.retry_after(value)
  if not value then return nil end
  local seconds = tonumber(value)
  if seconds then return math.max(0, seconds) end
  local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
  local d, mon, y, h, mi, s = value:match("%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT")
  if not d or not months[mon] then return nil end
  local iso = string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", tonumber(y), months[mon], tonumber(d), tonumber(h),
    tonumber(mi), tonumber(s))
  return math.max(0, require("entsync.map").iso_to_epoch(iso) - core.sys.now())
end

local function retryable(response)
  return response.error ~= nil or response.status >= 500 or response.status == 408 or response.status == 429
end

local function describe_failure(prepared, response, attempts)
  local what
  if response.error then
    what = response.error
  else
    what = string.format("status %d", response.status)
  end
  local body = response.body and response.body ~= "" and string.format("; the body starts %q", response.body:sub(1, 200)) or ""
  return string.format("%s %s: %s after %d attempt%s%s", prepared.method, redacted_url(prepared.url), what, attempts,
    attempts == 1 and "" or "s", body)
end

local Future = {}
Future.__index = Future

-- start(req) -> future: the request is on its way; future:wait() gives
-- the response (after retries) or raises. req takes: method, url, query,
-- headers, body, json, timeout, connect_timeout, verify, cafile, attempts,
-- limits, and on_response(response, attempt) -> "retry" to retry once
-- more (used to refresh an expired token).
function M.start(req)
  local prepared = prepare(req)
  if not prepared.verify then
    log("warn", "TLS peer verification is off for " .. redacted_url(prepared.url):match("^%a+://[^/]+"))
  end
  local future = setmetatable({ req = req, prepared = prepared, attempt = 0 }, Future)
  future:send()
  return future
end

function Future:send()
  local limits = self.req.limits
  if limits then limits:acquire() end
  self.attempt = self.attempt + 1
  self.started = core.sys.monotonic()
  local ok, id = pcall(get_client().add, get_client(), self.prepared)
  if not ok then
    if limits then limits:release() end
    errors.raise("http", string.format("%s %s: %s", self.prepared.method, redacted_url(self.prepared.url), tostring(id)))
  end
  self.id = id
  if limits then held[id] = limits end
  poll(0) -- starts the transfer now, not at the next wait
end

-- ready() -> true when wait() would not wait (the response is here).
function Future:ready()
  return self.done or arrived[self.id] ~= nil
end

-- pump(): moves every transfer along without waiting, collecting the
-- responses that are complete.
function M.pump()
  if client and client:pending() > 0 then poll(0) end
end

-- cancel(): drops a request still in flight (a listing that stopped).
function Future:cancel()
  if not self.id or self.done then return end
  -- a response that arrived meanwhile freed the slot already
  get_client():cancel(self.id)
  free_slot(self.id)
  arrived[self.id] = nil
  self.done = true
end

function Future:wait()
  local req, prepared = self.req, self.prepared
  local attempts = req.attempts or M.defaults.attempts
  while true do
    local response = await(self.id)
    if verbose then
      log("debug", string.format("%s %s [%s] -> %s in %.0fms", prepared.method, redacted_url(prepared.url),
        redacted_headers(prepared.headers), response.error or tostring(response.status),
        (core.sys.monotonic() - self.started) * 1000))
    end
    local again = req.on_response and req.on_response(response, self.attempt)
    if again == "retry" and self.attempt < attempts + 1 then
      if type(req.refresh) == "function" then prepared = prepare(req.refresh(req)); self.prepared = prepared end
      self:send()
    elseif retryable(response) and self.attempt < attempts then
      local delay = (response.status == 429 or response.status == 503) and M.retry_after(response.headers["retry-after"])
      if not delay then
        local base = math.min(M.defaults.max_backoff, (req.backoff or M.defaults.backoff) * 2 ^ (self.attempt - 1))
        delay = base * (0.5 + math.random() * 0.5)
      end
      log("warn", string.format("%s %s: %s; retrying in %.2fs (attempt %d of %d)", prepared.method,
        redacted_url(prepared.url), response.error or ("status " .. response.status), delay, self.attempt + 1, attempts))
      M.sleep(delay)
      self:send()
    elseif retryable(response) then
      self.done = true
      errors.raise("http", describe_failure(prepared, response, self.attempt),
        { status = response.status, body = response.body })
    else
      self.done = true
      response.method, response.url = prepared.method, prepared.url
      return setmetatable(response, Response)
    end
  end
end

-- request(req) -> response { status, headers, body, json() }
function M.request(req)
  return M.start(req):wait()
end

for _, method in ipairs({ "get", "post", "put", "patch", "delete" }) do
  M[method] = function(url, options)
    local req = {}
    for k, v in pairs(options or {}) do req[k] = v end
    req.url, req.method = url, method:upper()
    return M.request(req)
  end
end

-- the scheduler ---------------------------------------------------------------------------

-- run(tasks) runs each function of tasks as a coroutine; their requests
-- and sleeps interleave. Returns, per task, true and its first result or
-- false and its error. A task's errors never stop the others.
local running_scheduler -- the innermost M.run in progress, for spawn

function M.run(tasks)
  local results = {}
  local ready, waiting, sleeping = {}, {}, {}
  local alive = 0
  local function add(fn, index)
    local co = coroutine.create(fn)
    managed[co] = true
    ready[#ready + 1] = { co = co, index = index }
    alive = alive + 1
  end
  for i, fn in ipairs(tasks) do add(fn, i) end
  local outer = running_scheduler
  running_scheduler = { add = function(fn) add(fn, #tasks + alive + 1) end }
  local function step(entry, ...)
    local co = entry.co
    local ok, marker, kind, value = coroutine.resume(co, ...)
    if not ok then
      results[entry.index] = { false, marker }
      alive = alive - 1
    elseif coroutine.status(co) == "dead" then
      results[entry.index] = { true, marker }
      alive = alive - 1
    elseif marker ~= YIELD then
      -- a yield of the task's own: nothing to wait for, resume it
      ready[#ready + 1] = entry
    elseif kind == "http" then
      waiting[value] = entry
    else
      sleeping[#sleeping + 1] = { entry = entry, at = value }
    end
  end
  while alive > 0 do
    while #ready > 0 do
      local entry = table.remove(ready, 1)
      step(entry, table.unpack(entry.args or {}))
    end
    if alive == 0 then break end
    -- responses that a blocking wait collected for a task
    for id, entry in pairs(waiting) do
      if arrived[id] then
        local response = arrived[id]
        arrived[id], waiting[id] = nil, nil
        entry.args = { response }
        ready[#ready + 1] = entry
      end
    end
    local now = core.sys.monotonic()
    local timeout = 0.5
    for i = #sleeping, 1, -1 do
      if sleeping[i].at <= now then
        local entry = table.remove(sleeping, i).entry
        entry.args = {}
        ready[#ready + 1] = entry
      else
        timeout = math.min(timeout, sleeping[i].at - now)
      end
    end
    if #ready == 0 then
      if alive == 0 then break end
      if next(waiting) or (#sleeping > 0 and client and client:pending() > 0) then
        -- transfers go on while tasks sleep: a request started before a
        -- sleep is on the wire during it
        for _, r in ipairs(get_client():poll(math.max(0, timeout))) do
          local entry = waiting[r.id]
          free_slot(r.id)
          if entry then
            waiting[r.id] = nil
            entry.args = { r }
            ready[#ready + 1] = entry
          else
            arrived[r.id] = r
          end
        end
      elseif #sleeping > 0 then
        core.sys.sleep(math.max(0, timeout))
      else
        break -- nothing can wake the remaining tasks
      end
    end
  end
  running_scheduler = outer
  return results
end

-- spawn(fn): runs fn as one more task of the scheduler in progress (or
-- right away, as its own scheduler, when none runs).
function M.spawn(fn)
  if running_scheduler then
    running_scheduler.add(fn)
  else
    M.run({ fn })
  end
end

return M
