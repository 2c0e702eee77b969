-- entsync.http: HTTP for providers and scripts.
--
--   local http = require "entsync.http"
--   local res = http.get("https://api.example.com/contacts", { query = { page = 2 } })
--   for _, c in ipairs(res:json().data) do ... end
--
-- Every request goes through one curl multi handle (src/http.c), which
-- entsync's one loop (entsync.loop) drives in its wait. A request yields
-- the task that makes it until the response is there, so many requests are
-- in flight while the code reads as straight-line calls. Outside any loop
-- (a script, the REPL) a request runs a loop on demand for its length;
-- inside loop.forbid_yield (a write transaction) it is refused. Network
-- errors, 5xx and 408 are retried with exponential backoff and jitter; 429
-- waits for Retry-After, up to max_retry_wait seconds (a longer one fails
-- the request at once); after the last attempt the request fails with its
-- method, URL, status and the start of the body. A response body over
-- max_response bytes is stopped as it streams and, like a certificate
-- that does not verify, fails at once: no retry would mend it.

local core = require "entsync.core"
local errors = require "entsync.errors"
local json = require "entsync.json"
local loop = require "entsync.loop"

local M = {}

local client              -- the curl multi handle, made on first use
local arrived = {}        -- id -> response that no one was waiting for yet
local waiting = {}        -- id -> the loop's token of the wait for it
local held = {}           -- transfer id -> the limits whose slot it holds
local tallied = {}        -- transfer id -> the request's tally (req.tally)

-- Files a response that arrived: its slot is free at once, whoever waits
-- for it and whenever they do, and it is off its tally.
local function free_slot(id)
  local limits = held[id]
  if limits then
    held[id] = nil
    limits:release()
  end
  local tally = tallied[id]
  if tally then
    tallied[id] = nil
    tally.n = tally.n - 1
  end
end

-- Files the responses a wait collected: to the task waiting for each, or
-- aside until someone asks.
local function deliver(responses)
  for _, response in ipairs(responses) do
    local id = response.id
    free_slot(id)
    local token = waiting[id]
    waiting[id] = nil
    if not (token and loop.wake(token, response)) then arrived[id] = response end
  end
end

local function get_client()
  if not client then
    client = core.http.client()
    loop.attach_transfers(client, deliver)
  end
  return client
end

M.defaults = { timeout = 60, connect_timeout = 10, attempts = 4, backoff = 0.25, max_backoff = 30,
  max_retry_wait = 60, max_response = 64 * 1024 * 1024 }

-- counts ----------------------------------------------------------------------------

-- Requests sent (each attempt), retries and requests that failed for good,
-- per sync (the one whose run the request is made for: loop.context().sync),
-- for the daemon's /metrics. "" holds those made outside any run.
local counts = {}

local function count(what)
  local label = loop.context().sync or ""
  local c = counts[label]
  if not c then
    c = { requests = 0, retries = 0, failures = 0 }
    counts[label] = c
  end
  c[what] = c[what] + 1
end

-- stats() -> { [sync] = { requests, retries, failures } } since the
-- process started.
function M.stats()
  local out = {}
  for label, c in pairs(counts) do out[label] = { requests = c.requests, retries = c.retries, failures = c.failures } end
  return out
end

-- logging and redaction ---------------------------------------------------------

local log = function() end
local verbose = false
local redact = require "entsync.redact"

-- set_logger(fn(level, message), verbose): requests are logged at "debug"
-- under verbose, with secret headers redacted.
function M.set_logger(fn, is_verbose)
  log, verbose = fn or function() end, is_verbose and true or false
end

-- A header name whose value never reaches a log (besides Authorization,
-- Cookie and X-Api-Key): entsync.redact keeps the list.
M.secret_header = redact.secret_header

local function redacted_headers(lines)
  local shown = {}
  for i, line in ipairs(lines) do
    local name = line:match("^([^:]+):")
    shown[i] = (name and redact.secret_name(name)) and (name .. ": " .. redact.MARK) or redact.text(line)
  end
  return table.concat(shown, "; ")
end

-- Secret query parameters (api keys) and a URL's user information are
-- redacted from logged URLs.
M.secret_param = redact.secret_param

local function redacted_url(url)
  return redact.text(url)
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

-- prepare(req) -> the request table normalized into what the C client
-- takes (M.start does it; a caller sending many requests alike prepares
-- one and gives each a copy: see M.start).
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
    verify = verify, cafile = req.cafile, max_body = req.max_response or M.defaults.max_response,
  }
end
M.prepare = prepare

-- A response's methods: src/http.c gives them to every response, whose
-- body and headers it makes when they are first read.
local Response = core.http.response_methods

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

-- Waits for the response of transfer id through the loop: the task yields
-- until the loop's wait hands the response over. A task cancelled while it
-- waits takes its transfer (and the slot it holds) with it.
local function await(id)
  local response = arrived[id]
  if response then
    arrived[id] = nil
    return response
  end
  return loop.suspend(function(token)
    waiting[id] = token
    token.on_cancel = function()
      waiting[id] = nil
      client:cancel(id)
      free_slot(id)
    end
  end)
end

-- sleep(seconds): loop.sleep (a task yields; outside a loop one runs for it).
function M.sleep(seconds)
  if seconds > 0 then loop.sleep(seconds) end
end

-- limits: a concurrency cap and a rate per provider ---------------------------

local Limits = {}
Limits.__index = Limits

-- limits{ concurrency = 8, per_second = 20 }: the cap is a semaphore (a
-- slot freed wakes the next request waiting for one); the rate gives each
-- request the next free instant and sleeps until it.
function M.limits(options)
  options = options or {}
  return setmetatable({ cap = options.concurrency or math.huge, in_flight = 0,
    slots = options.concurrency and loop.semaphore(options.concurrency),
    interval = options.per_second and 1 / options.per_second or 0, next_slot = 0 }, Limits)
end

-- Gives the slot back if the rate's sleep does not end (an error, or the
-- task cancelled meanwhile).
local Unacquire = { __close = function(undo) if not undo.kept then undo.limits:release() end end }

function Limits:acquire()
  if self.slots then self.slots:acquire() end
  self.in_flight = self.in_flight + 1
  if self.interval > 0 then
    local now = loop.now()
    local slot = math.max(now, self.next_slot)
    self.next_slot = slot + self.interval
    if slot > now then
      local undo <close> = setmetatable({ limits = self }, Unacquire)
      loop.sleep(slot - now)
      undo.kept = true
    end
  end
end

function Limits:release()
  self.in_flight = self.in_flight - 1
  if self.slots then self.slots:release() end
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
  if response.permanent then return false end
  return response.error ~= nil or response.status >= 500 or response.status == 408 or response.status == 429
end

-- Why a failure is not retried, naming the setting that governs it.
local function permanent_reason(response, req)
  if response.permanent == "too_large" then
    return string.format("the response is over max_response (%d bytes) and was stopped as it arrived",
      req.max_response or M.defaults.max_response)
  elseif response.permanent == "tls" then
    return response.error .. " (a TLS verification failure: see the settings verify and cafile)"
  end
end

-- reason: why the failure is not retried (permanent_reason), or nil.
local function describe_failure(prepared, response, attempts, reason)
  if reason then
    return string.format("%s %s: %s, at attempt %d; not retried", prepared.method, redacted_url(prepared.url), reason,
      attempts)
  end
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
-- max_retry_wait, max_response, limits, tally (a table whose n counts the
-- request while an attempt of it is on the wire: sent, no response yet, so
-- a caller knows its requests in flight without asking each future), and
-- on_response(response, attempt) -> "retry" to retry once more (used to
-- refresh an expired token). prepared, when given, is what M.prepare made
-- of req, less what the caller changed since (the URL of a listing's
-- numbered page): req then only gives the retries, limits and tally.
function M.start(req, prepared)
  prepared = prepared or prepare(req)
  if not prepared.verify then
    log("warn", "TLS peer verification is off for " .. redacted_url(prepared.url):match("^%a+://[^/]+"))
  end
  local future = setmetatable({ req = req, prepared = prepared, attempt = 0 }, Future)
  future:send()
  return future
end

function Future:send()
  loop.check_wait() -- inside forbid_yield the request is refused before it is sent
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
  local tally = self.req.tally
  if tally then
    tally.n = tally.n + 1
    tallied[id] = tally
  end
  count("requests") -- client:add has started the transfer
end

-- pump(): moves every transfer along without waiting, filing the
-- responses that are complete.
function M.pump()
  if client and client:pending() > 0 then deliver(core.loop.wait(client, 0, {})) end
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
  if not loop.active() then return loop.run(Future.wait, self) end
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
      local most = req.max_retry_wait or M.defaults.max_retry_wait
      if delay and delay > most then
        self.done = true
        count("failures")
        errors.raise("http", string.format("%s %s: status %d asks to retry after %.0fs (Retry-After), beyond "
          .. "max_retry_wait (%gs): failed without waiting", prepared.method, redacted_url(prepared.url),
          response.status, delay, most), { status = response.status, body = response.body })
      end
      if not delay then
        local base = math.min(M.defaults.max_backoff, (req.backoff or M.defaults.backoff) * 2 ^ (self.attempt - 1))
        delay = base * (0.5 + math.random() * 0.5)
      end
      log("warn", string.format("%s %s: %s; retrying in %.2fs (attempt %d of %d)", prepared.method,
        redacted_url(prepared.url), response.error or ("status " .. response.status), delay, self.attempt + 1, attempts))
      count("retries")
      M.sleep(delay)
      self:send()
    elseif retryable(response) or response.permanent then
      self.done = true
      count("failures")
      errors.raise("http", describe_failure(prepared, response, self.attempt, permanent_reason(response, req)),
        { status = response.status, body = response.body })
    else
      self.done = true
      response.method, response.url = prepared.method, prepared.url
      return response
    end
  end
end

-- request(req) -> response { status, headers, body, json() }. Outside any
-- loop it runs one for the request, its retries and their waits.
function M.request(req)
  if not loop.active() then return loop.run(M.request, req) end
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

return M
