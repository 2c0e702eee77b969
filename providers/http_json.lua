-- http_json: a provider for HTTP/JSON APIs.
--
--   local crm = provider "http_json" {
--     base_url = env "CRM_URL",
--     auth = { bearer = env "CRM_TOKEN" },
--     page = { style = "page", size = 100 },   -- page | offset | cursor | link | next
--     records = "data",                        -- where the records are in a page
--     since = { param = "updated_since" },     -- incremental filter at the source
--     concurrency = 8, rate = { per_second = 50 },
--   }
--   sync "contacts" { remote = crm "/contacts", ... }
--
-- A resource is a path on base_url (or a name in `resources`); single
-- records are at <path>/<id>. Page and offset styles fetch `concurrency`
-- pages ahead, so the next pages arrive while the current one is stored;
-- cursor, link and next styles follow the chain one page at a time.

local core = require "entsync.core"
local errors = require "entsync.errors"
local http = require "entsync.http"
local json = require "entsync.json"
local loop = require "entsync.loop"

local M = {}

local null = json.null

local id_text = require("entsync.cursor").id_text
local contract = require "entsync.provider"

local styles = { "page", "offset", "cursor", "link", "next", "key", "none" }

-- Every setting, by type (entsync.provider checks them before new runs).
M.settings = {
  base_url = { type = "string", required = true },
  name = "string",
  auth = { fields = {
    bearer = { type = "string_or_number", secret = true },
    basic = { list = "string_or_number", secret = true },
    api_key = { fields = { header = "string", query = "string",
      value = { type = "string_or_number", required = true, secret = true } } },
    oauth2 = { fields = { client_id = { type = "string_or_number", required = true },
      client_secret = { type = "string_or_number", required = true, secret = true }, token_url = "string",
      scope = "string" } },
  } },
  page = { fields = {
    style = { one_of = styles }, size = "positive", first = "integer", total = "string",
    page_param = "string", size_param = "string", offset_param = "string", limit_param = "string",
    cursor_param = "string", cursor_path = "string", next_path = "string", after_param = "string", key = "string",
  } },
  records = "string", record_path = "string", resources = { map = "string" },
  id = "string", changed = "string",
  since = { type = "any" },
  version = { fields = { field = "string", header = "string" } },
  headers = { map = "string_or_number" }, secret_headers = { list = "string" },
  timeout = "number", connect_timeout = "number", attempts = "positive", concurrency = "positive",
  max_retry_wait = "number", max_response = "positive",
  rate = { fields = { per_second = "number" } },
  verify = "boolean", cafile = "string", ordered = "boolean",
  update_method = { one_of = { "PUT", "PATCH" } }, idempotency_header = { type = "any" },
}

local function fail(fmt, ...)
  return nil, string.format(fmt, ...)
end

-- What the schema cannot say.
function M.validate(config)
  if not config.base_url:match("^https?://") then
    return fail("setting base_url must be an http:// or https:// URL, got %q", config.base_url)
  end
  local since = config.since
  if since ~= nil and type(since) ~= "string" and not (type(since) == "table" and type(since.param) == "string") then
    return fail("setting since must be a query parameter name, or { param = name }")
  end
  local auth = config.auth
  if auth ~= nil then
    local kinds = 0
    for _, kind in ipairs({ "bearer", "basic", "api_key", "oauth2" }) do
      if auth[kind] ~= nil then kinds = kinds + 1 end
    end
    if kinds ~= 1 then return fail("setting auth takes one of bearer, basic, api_key, oauth2") end
    if auth.basic and #auth.basic ~= 2 then return fail("setting auth.basic is { user, password }") end
    if auth.api_key and not (auth.api_key.header or auth.api_key.query) then
      return fail("setting auth.api_key is { header = name, value = key } or { query = name, value = key }")
    end
  end
  if config.version and (config.version.field == nil) == (config.version.header == nil) then
    return fail("setting version is { field = name } (in the record) or { header = name } (such as ETag)")
  end
  local idempotency = config.idempotency_header
  if idempotency ~= nil and idempotency ~= false and type(idempotency) ~= "string" then
    return fail("setting idempotency_header must be a header name or false")
  end
  return true
end

local Provider = {}
Provider.__index = Provider

local function basic_header(user, password)
  local text = tostring(user) .. ":" .. tostring(password)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local quad = {}
    for j = 3, 0, -1 do
      local index = (n >> (6 * j)) & 63
      quad[#quad + 1] = chars:sub(index + 1, index + 1)
    end
    if not b then quad[3], quad[4] = "=", "=" elseif not c then quad[4] = "=" end
    out[#out + 1] = table.concat(quad)
  end
  return "Basic " .. table.concat(out)
end
M.basic_header = basic_header

function M.new(config, ctx)
  local self = setmetatable({
    config = config, name = (ctx and ctx.name) or "http_json",
    base = config.base_url:gsub("/+$", ""),
    page = config.page or { style = "none" },
    id_field = config.id or "id",
    limits = http.limits({ concurrency = config.concurrency or 4, per_second = config.rate and config.rate.per_second }),
    refreshed = loop.condition(), -- notified when a token refresh ends
    -- a PATCH changes only the fields it is given
    partial_updates = config.update_method == "PATCH",
    etags = setmetatable({}, { __mode = "k" }), -- record -> the version header it came with
  }, Provider)
  if not config.version then self.version = false end
  for _, name in ipairs(config.secret_headers or {}) do http.secret_header(name) end
  local auth = config.auth or {}
  if auth.api_key and auth.api_key.header then http.secret_header(auth.api_key.header) end
  if auth.api_key and auth.api_key.query then http.secret_param(auth.api_key.query) end
  return self
end

-- auth ----------------------------------------------------------------------------

-- The OAuth2 client-credentials token, fetched on first use and again
-- when it expires or the API answers 401.
function Provider:token(force)
  local oauth = self.config.auth.oauth2
  if not force and self.oauth_token and core.sys.monotonic() < self.oauth_expires then return self.oauth_token end
  local url = oauth.token_url or "/oauth/token"
  if not url:match("^https?://") then url = self.base .. url end
  local form = { grant_type = "client_credentials", client_id = oauth.client_id, client_secret = oauth.client_secret,
    scope = oauth.scope }
  local response = http.request({ method = "POST", url = url, body = http.encode_query(form),
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, timeout = self.config.timeout,
    verify = self.config.verify, cafile = self.config.cafile, max_retry_wait = self.config.max_retry_wait,
    max_response = self.config.max_response })
  if response.status ~= 200 then
    errors.raise("http", string.format("POST %s: the token request failed with status %d", url, response.status))
  end
  local body = response:json()
  if type(body.access_token) ~= "string" then
    errors.raise("http", string.format("POST %s: the token response has no access_token", url))
  end
  self.oauth_token = body.access_token
  self.oauth_expires = core.sys.monotonic() + math.max(1, (tonumber(body.expires_in) or 3600) - 30)
  return self.oauth_token
end

function Provider:auth_headers(headers, query)
  local auth = self.config.auth
  if not auth then return end
  if auth.bearer then
    headers.Authorization = "Bearer " .. tostring(auth.bearer)
  elseif auth.basic then
    headers.Authorization = basic_header(auth.basic[1], auth.basic[2])
  elseif auth.api_key then
    if auth.api_key.header then headers[auth.api_key.header] = tostring(auth.api_key.value)
    else query[auth.api_key.query] = tostring(auth.api_key.value) end
  elseif auth.oauth2 then
    headers.Authorization = "Bearer " .. self:token(false)
  end
end

-- Builds a request on this API: url (a path or an absolute URL), with
-- auth, default headers, limits and the 401 refresh for OAuth2.
function Provider:req(method, url, query, body)
  local config = self.config
  if not url:match("^https?://") then url = self.base .. (url:sub(1, 1) == "/" and url or ("/" .. url)) end
  local headers, q = {}, {}
  for k, v in pairs(config.headers or {}) do headers[k] = v end
  for k, v in pairs(query or {}) do q[k] = v end
  self:auth_headers(headers, q)
  local req = {
    method = method, url = url, query = q, headers = headers, json = body, timeout = config.timeout,
    connect_timeout = config.connect_timeout, attempts = config.attempts, verify = config.verify,
    cafile = config.cafile, limits = self.limits, max_retry_wait = config.max_retry_wait,
    max_response = config.max_response,
  }
  if config.auth and config.auth.oauth2 then
    req.on_response = function(response, attempt)
      if response.status == 401 and attempt == 1 then return "retry" end
    end
    req.refresh = function(r)
      -- Requests refused together share one new token: the first refreshes,
      -- the others take what it got.
      while self.refreshing do self.refreshed:wait() end
      if r.headers.Authorization == "Bearer " .. tostring(self.oauth_token) then
        self.refreshing = true
        local ok, token = pcall(self.token, self, true)
        self.refreshing = false
        self.refreshed:notify_all()
        if not ok then error(token, 0) end
      end
      r.headers.Authorization = "Bearer " .. self.oauth_token
      return r
    end
  end
  return req
end

local function check_status(response, what)
  if response.status >= 200 and response.status < 300 then return end
  errors.raise("http", string.format("%s %s: status %d; the body starts %q", response.method,
    http.redacted_url(response.url), response.status, response.body:sub(1, 200)), { status = response.status })
end

local function dig(value, path)
  if not path or path == "" then return value end
  for key in path:gmatch("[^%.]+") do
    if type(value) ~= "table" then return nil end
    value = value[tonumber(key) or key]
  end
  return value
end

-- Selects the records of the page parsed into doc (a json.document): at
-- config.records, or the page itself when it is an array (or empty), or
-- its "data"; returns how many there are (an object there holds none).
function Provider:select_records(doc, response)
  local kind, n
  if self.config.records then
    kind, n = doc:select(self.config.records)
  else
    kind, n = doc:select("")
    if not (kind == "array" or (kind == "object" and n == 0)) then kind, n = doc:select("data") end
  end
  if kind ~= "array" and kind ~= "object" then
    errors.raise("http", string.format("%s %s: no list of records at %q in the response", response.method,
      http.redacted_url(response.url), tostring(self.config.records or "data")))
  end
  return kind == "array" and n or 0
end

-- A page of a listing. Its text is parsed once, into the reader's
-- document, for the listing's own fields and for the C record path, which
-- maps the records from it; list() decodes its records into Lua values
-- for the Lua pipeline, only when that reads one (and later, when a batch
-- is written again record by record: the document has moved on by then).
local Page = {}
Page.__index = Page

function Page:list()
  if not self.records then
    local doc = self.doc
    if self.reader.page ~= self then
      -- the reader's document holds a later page now
      doc = json.document()
      doc:load(self.response.body)
      self.reader.provider:select_records(doc, self.response)
    end
    self.records = doc:list()
  end
  return self.records
end

function Provider:path(resource)
  local resources = self.config.resources or {}
  local path = resources[resource] or resource or ""
  return path
end

-- listing --------------------------------------------------------------------------

-- A reader's numbered pages asked for and not read yet, oldest first: a
-- queue, so taking the oldest moves none of the others (table.remove of
-- the first moved up to four windows of futures for every page read).
local Inflight = {}
Inflight.__index = Inflight

local function inflight() return setmetatable({ head = 1, tail = 0 }, Inflight) end

function Inflight:size() return self.tail - self.head + 1 end

function Inflight:push(future)
  self.tail = self.tail + 1
  self[self.tail] = future
end

function Inflight:pop()
  if self.head > self.tail then return nil end
  local future = self[self.head]
  self[self.head] = nil
  self.head = self.head + 1
  return future
end

-- for future in q:each() do ... end, oldest first
function Inflight:each()
  local i = self.head - 1
  return function()
    i = i + 1
    if i <= self.tail then return self[i] end
  end
end

local Reader = {}
Reader.__index = Reader

-- list(resource, query) -> reader. query.since = { mark, id } filters at
-- the source through config.since (the parameter must include records
-- whose mark equals since: the engine drops those already imported).
function Provider:list(resource, query)
  query = query or {}
  local params = {}
  local since = self.config.since
  if query.since and since then
    local value = query.since[1]
    if type(since) == "string" then params[since] = value else params[since.param or "updated_since"] = value end
  end
  local reader = setmetatable({
    provider = self, path = self:path(resource), params = params, doc = json.document(), index = 0, count = 0,
    position = 0, done = false, ordered = self.config.ordered == true, inflight = inflight(), next_page = nil,
    skip = query.offset or 0, tally = { n = 0 },
  }, Reader)
  local style, size = self.page.style or "none", self.page.size or 100
  reader.style, reader.size = style, size
  if style == "page" then
    reader.next_page = self.page.first or 1
  elseif style == "offset" then
    reader.next_page = 0
  end
  if style == "page" or style == "offset" or style == "none" or query.mode ~= "full" then
    -- a page number or an offset is no place to resume a list that may
    -- shift: these styles hand over no checkpoint; and an incremental run
    -- starts a new listing of what changed since its cursor
    reader.checkpoint = false
  elseif type(query.checkpoint) == "table" then
    -- resume: the page the checkpoint names, less the records taken from it
    local cp = query.checkpoint
    reader.cursor, reader.next_url, reader.after = cp.cursor, cp.url, cp.after
    reader.skip = math.tointeger(cp.skip) or 0
    if cp.done then reader.done = true end
  end
  return reader
end

-- checkpoint() -> where this listing resumes: the token or URL of the page
-- being read with how many of its records were taken ({ cursor, skip },
-- { url, skip }), or the last key taken ({ after }); { done = true } at
-- the end.
function Reader:checkpoint()
  if self.done and self.index >= self.count then return { done = true } end
  if self.style == "key" then return { after = self.last_key } end
  if self.style == "cursor" then return { cursor = self.page_cursor, skip = self.index } end
  return { url = self.page_url, skip = self.index }
end

-- Stands for the page number in a reader's prepared URL.
local NUMBER = "entsync-page-number"

-- The request for page number n (page style) or offset n (offset style),
-- and its prepared form (http.prepare). A listing's numbered requests
-- differ in their number only, so the reader prepares one (its headers,
-- auth and encoded query) and gives each page a copy with its number in
-- the URL. An OAuth2 token may be refreshed between two pages: those
-- requests are built afresh each time.
function Reader:numbered_request(n)
  local template = self.template
  if not template then
    local page, params = self.provider.page, {}
    for k, v in pairs(self.params) do params[k] = v end
    local key
    if self.style == "page" then
      key = page.page_param or "page"
      params[page.size_param or "per_page"] = self.size
    else
      key = page.offset_param or "offset"
      params[page.limit_param or "limit"] = self.size
    end
    local auth = self.provider.config.auth
    local oauth2 = auth and auth.oauth2
    params[key] = oauth2 and n or NUMBER
    local req = self.provider:req("GET", self.path, params)
    req.tally = self.tally
    if oauth2 then return req end
    local prepared = http.prepare(req)
    local url = prepared.url
    local _, to = url:find("[?&]" .. (http.encode(key) .. "=" .. NUMBER):gsub("%p", "%%%0"))
    template = { req = req, prepared = prepared, before = url:sub(1, to - #NUMBER), after = url:sub(to + 1) }
    self.template = template
  end
  local prepared = {}
  for k, v in pairs(template.prepared) do prepared[k] = v end
  prepared.url = template.before .. n .. template.after
  return template.req, prepared
end

-- Keeps `concurrency` numbered pages on the wire ahead of the one read.
-- Pages that have arrived but are not read yet do not count: the next
-- ones are asked for as soon as a response is in, not when it is read, so
-- the network is kept busy while pages are stored (at most four windows
-- of pages wait to be read).
function Reader:fill_window()
  local window = self.provider.config.concurrency or 4
  http.pump()
  -- tally.n: the requests on the wire, those issued whose response has
  -- not come (at most window of them, where inflight may hold four windows)
  while not self.stop_issuing and self.tally.n < window and self.inflight:size() < 4 * window
      and not (self.last_start and self.next_page > self.last_start) do
    local n = self.next_page
    self.inflight:push(http.start(self:numbered_request(n)))
    self.next_page = n + (self.style == "page" and 1 or self.size)
  end
end

function Reader:fetch_numbered()
  self:fill_window()
  local future = self.inflight:pop()
  local response = future:wait()
  -- responses that came in meanwhile free their places on the wire: the
  -- next pages go out before this one is stored
  self:fill_window()
  check_status(response)
  local doc, count = self:load(response)
  -- A page that gives the total (page.total, default "total") tells where
  -- the list ends: no page is asked for beyond it.
  local total = tonumber(doc:get(self.provider.page.total or "total"))
  if total and not self.last_start then
    self.last_start = self.style == "page" and ((self.provider.page.first or 1) + math.max(0, math.ceil(total / self.size) - 1))
      or math.max(0, (math.ceil(total / self.size) - 1) * self.size)
  end
  if count < self.size or (self.last_start and self.inflight:size() == 0 and self.next_page > self.last_start) then
    -- A short page is the last. The pages asked for beyond it are answered
    -- (the server did the work) and dropped.
    self.stop_issuing, self.done = true, true
    for pending in self.inflight:each() do pcall(pending.wait, pending) end
    self.inflight = inflight()
  end
  return count
end

-- Cursor, link and next styles: each page names the next.
function Reader:fetch_chained()
  local page, provider = self.provider.page, self.provider
  local req
  self.page_cursor, self.page_url = self.cursor, self.next_url
  if self.next_url then
    req = provider:req("GET", self.next_url, nil)
  else
    local params = {}
    for k, v in pairs(self.params) do params[k] = v end
    if self.style == "key" then
      params[page.limit_param or "limit"] = self.size
      if self.after ~= nil then params[page.after_param or "after"] = self.after end
    elseif self.style == "cursor" then
      params[page.limit_param or "limit"] = self.size
      if self.cursor then params[page.cursor_param or "cursor"] = self.cursor end
    elseif self.style ~= "none" then
      params[page.page_param or "page"] = page.first or 1
      params[page.size_param or "per_page"] = self.size
    end
    req = provider:req("GET", self.path, params)
  end
  local response = http.request(req)
  check_status(response)
  local doc, count = self:load(response)
  if self.style == "key" then
    -- the next page starts after the last key of this one; a short page
    -- is the last
    local key = count > 0 and doc:item(count, page.key or provider.id_field) or nil
    if count < self.size or key == nil or key == null then self.done = true else self.after = key end
  elseif self.style == "cursor" then
    local cursor = doc:get(page.cursor_path or "next_cursor")
    if cursor == nil or cursor == null or cursor == "" or count == 0 then self.done = true else self.cursor = cursor end
  elseif self.style == "link" then
    local link = response.headers["link"] or ""
    local next_url = link:match('<([^>]+)>%s*;%s*rel="?next"?')
    if next_url and count > 0 then self.next_url = next_url else self.done = true end
  elseif self.style == "next" then
    local next_url = doc:get(page.next_path or "next")
    if type(next_url) == "string" and next_url ~= "" and count > 0 then self.next_url = next_url else self.done = true end
  else
    self.done = true
  end
  return count
end

-- Parses a page's response into the reader's document (a body that is
-- not JSON raises as response:json() does) and selects its records;
-- returns the document and how many records it holds.
function Reader:load(response)
  local doc = self.doc
  -- the payload: the body is parsed where curl left it, no Lua string made
  if not doc:load(response.payload or response.body) then
    response:json()
    errors.raise("http", "the response is not JSON") -- response:json() raised already
  end
  local count = self.provider:select_records(doc, response)
  self.page = setmetatable({ reader = self, response = response, doc = doc }, Page)
  return doc, count
end

-- next() -> record | nil at the end; a page that fails raises (the run
-- stops with the method, URL and status; nothing of it is stored).
function Reader:next()
  while true do
    if self.index < self.count then
      self.index = self.index + 1
      local records = self.page:list()
      local record = records[self.index]
      records[self.index] = nil
      self.position = self.position + 1
      if self.skip > 0 then
        self.skip = self.skip - 1
      elseif type(record) == "table" then
        if self.style == "key" then self.last_key = record[self.provider.page.key or self.provider.id_field] end
        return record
      else
        return false, string.format("%s: a record that is not an object (%s)", self.path, type(record))
      end
    elseif self.done then
      return nil
    else
      self:fetch()
    end
  end
end

-- Reads the next page.
function Reader:fetch()
  self.index, self.page = 0, nil
  if self.style == "page" or self.style == "offset" then
    self.count = self:fetch_numbered()
  else
    self.count = self:fetch_chained()
  end
  if self.count == 0 then self.done = true end
end

-- take_records(max) -> page, from, to | nil: the records of the page in
-- hand that next() would give, from..to of the page (at most max, all
-- objects), taken as next() takes them, for the C record path to map
-- from the page's document without a call a record (the provider
-- contract's page: page.doc, page:list()); nil when next() must give the
-- next one (a page to fetch, a resume offset to skip, a record that is not
-- an object).
function Reader:take_records(max)
  if self.index >= self.count and not self.done and self.skip == 0 then self:fetch() end
  if self.skip > 0 or self.index >= self.count then return nil end
  local from = self.index + 1
  local to = self.doc:objects(from, math.min(self.count, self.index + max))
  if to < from then return nil end
  self.index, self.position = to, self.position + (to - from + 1)
  if self.style == "key" then self.last_key = self.doc:item(to, self.provider.page.key or self.provider.id_field) end
  return self.page, from, to
end

-- ready() -> true when next() gives a record without waiting for a
-- request of its own: one in hand, or one of the numbered pages already
-- asked for, which comes within the remote's latency. Otherwise (a
-- chained page, whose request goes out only now) the engine writes what
-- it has meanwhile. A batch of numbered pages so fills to its size, as
-- the same input read twice does, whenever each response lands; writing
-- a page at a time cost the import a transaction a page (a third of its
-- CPU at concurrency 64).
function Reader:ready()
  return self.index < self.count or self.done or (self.skip == 0 and self.inflight ~= nil and self.inflight:size() > 0)
end

function Reader:close()
  for pending in self.inflight:each() do pending:cancel() end
  self.inflight = inflight()
  self.done = true
end

-- single records and writes ---------------------------------------------------------------

function Provider:record_url(resource, id)
  return self:path(resource):gsub("/+$", "") .. "/" .. http.encode(id_text(id))
end

-- version(record) -> the record's version token: version.field of the
-- record, or the version.header (an ETag) its response came with.
function Provider:version(record)
  local v = self.config.version
  if v.field then
    local token = record[v.field]
    if token == null then return nil end
    return token
  end
  return self.etags[record]
end

-- The headers that make a write conditional on the version last seen.
local function if_match(self, req, ctx)
  if self.config.version and ctx and ctx.version ~= nil then
    req.headers["If-Match"] = self.config.version.header and tostring(ctx.version)
      or string.format('"%s"', tostring(ctx.version))
  end
  return req
end

-- A 409 or 412 to a write made on a version: the remote changed since.
local function check_write(response)
  if response.status == 409 or response.status == 412 then
    contract.conflict(string.format("%s %s: status %d: the remote changed since its version was read", response.method,
      http.redacted_url(response.url), response.status))
  end
  check_status(response)
end

local function keep_etag(self, response, body)
  local header = self.config.version and self.config.version.header
  if header and type(body) == "table" then self.etags[body] = response.headers[header:lower()] end
  return body
end

-- get(resource, id) -> record | nil, "not found"
function Provider:get(resource, id)
  local response = http.request(self:req("GET", self:record_url(resource, id)))
  if response.status == 404 or response.status == 410 then return nil, "not found" end
  check_status(response)
  local body = response:json()
  if self.config.record_path then body = dig(body, self.config.record_path) end
  return keep_etag(self, response, body)
end

-- create(resource, record, ctx) -> remote id, the created record. A
-- retried create (a lost response, a failed export tried again) carries
-- the same Idempotency-Key (config.idempotency_header; false: none), so an
-- API that honours it creates the record once.
function Provider:create(resource, record, ctx)
  local req = self:req("POST", self:path(resource), nil, record)
  local header = self.config.idempotency_header
  if header == nil then header = "Idempotency-Key" end
  if header and ctx and ctx.idempotency_key then req.headers[header] = ctx.idempotency_key end
  local response = http.request(req)
  check_status(response)
  local body = response.body ~= "" and response:json() or {}
  if self.config.record_path then body = dig(body, self.config.record_path) end
  local id = type(body) == "table" and body[self.id_field] or nil
  if id == nil or id == null then
    errors.raise("http", string.format("POST %s: the response names no id in %q", http.redacted_url(response.url),
      self.id_field))
  end
  return id, keep_etag(self, response, body)
end

-- update(resource, id, record, ctx) -> the updated record. PUT sends the
-- record as entsync gives it (the mapped fields merged over the remote's
-- copy); PATCH sends only what changed (ctx.patch). With versions, the
-- write names the version last seen (If-Match) and a 409 or 412 is a
-- version conflict.
function Provider:update(resource, id, record, ctx)
  local method = self.config.update_method or "PUT"
  local body = record
  if method == "PATCH" and ctx and ctx.patch then body = ctx.patch end
  local response = http.request(if_match(self, self:req(method, self:record_url(resource, id), nil, body), ctx))
  check_write(response)
  if response.body == "" then return record end
  return keep_etag(self, response, response:json())
end

-- delete(resource, id, ctx) -> true (a remote already gone counts as deleted)
function Provider:delete(resource, id, ctx)
  local response = http.request(if_match(self, self:req("DELETE", self:record_url(resource, id)), ctx))
  if response.status == 404 or response.status == 410 then return true end
  check_write(response)
  return true
end

function Provider:id(record)
  return record[self.id_field]
end

return M
