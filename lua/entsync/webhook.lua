-- entsync.webhook: change notifications a remote POSTs to the daemon.
--
--   sync "contacts" { remote = crm "contacts", ...,
--     webhook = { path = "/hooks/crm", secret = env "CRM_HOOK_SECRET",
--       signature_header = "X-Signature", event_id = "id", ids = "data.ids" } }
--
-- The daemon's HTTP server (--listen) answers POST <path>:
--   401  the signature header is missing, or is not HMAC-SHA256 of the
--        raw body with the secret ("sha256=<hex>" or plain hex, compared in
--        constant time by core.sign): nothing is parsed, stored or fetched
--   413  the body is larger than max_body
--   400  the body is not a JSON object, or has no event id or no ids
--   200  an event id the sync received before: acknowledged, ignored
--   202  a new event: recorded in the store (entsync_webhook_events, in
--        its own commit) before the answer, then pulled on the loop. That
--        insert is the handler's one write, made in place (a handler cannot
--        wait): while another process holds the store's write lock the
--        whole loop waits for it, up to the store's busy timeout (then 500)
-- A GET of a webhook's path is 405; an unknown path 404 (entsync.httpd).
--
-- Accepted means stored: the pull of an event is a task of the loop (the
-- sync's "webhook" task) that fetches each named id through the
-- provider's get (`concurrency` at once) and imports them in one run of
-- operation "webhook", whose commit marks the events pulled. An event
-- whose pull did not commit (the remote failing, the daemon stopped or
-- killed) stays pending and is pulled again, after a restart too. A
-- remote id the remote answers 404 for settles by the sync's deletes
-- policy. Events pulled are remembered keep_days days (at most
-- keep_events per sync), so a sender's redelivery within that time is
-- known. The sync's schedule stays the safety net for notifications that
-- never come.
--
-- The secret is held by the job only: no log line, page, metric or row
-- holds it or a signature.

local context = require "entsync.context"
local core = require "entsync.core"
local errors = require "entsync.errors"
local ids = require "entsync.ids"
local json = require "entsync.json"
local loop = require "entsync.loop"
local mapping = require "entsync.mapping"
local provider_contract = require "entsync.provider"

local M = {}

M.DEFAULTS = { signature_header = "X-Signature", event_id = "id", max_body = 1024 * 1024, keep_days = 7,
  keep_events = 100000, concurrency = 8 }

-- The settings of webhook = { ... }, checked at load (entsync.provider's
-- schemas); secret is checked by hand, so no message ever shows it.
M.SETTINGS = {
  path = { type = "string", required = true }, secret = { type = "any", required = true },
  signature_header = "string", event_id = "string", ids = "string", id = "string",
  max_body = "positive", keep_days = "number", keep_events = "positive", concurrency = "positive",
}

-- Paths the daemon serves itself.
M.RESERVED = { ["/"] = true, ["/metrics"] = true, ["/status.json"] = true }

-- How long the pull task sleeps when nothing wakes it (a safety net: an
-- accepted event wakes it at once), how often pulled events are pruned,
-- and the longest pause after a failed pull.
local SAFETY_NET = 60
local PRUNE_EVERY = 60
local MAX_BACKOFF = 30

local function path_setting(fail, name, text)
  local keys = mapping.compile_path(text)
  if not keys then fail("%s must be a path in the JSON body (name.name[1].name), got %q", name, text) end
  return keys
end

-- settings(spec, fail) -> the webhook's settings, defaults filled in.
-- fail(fmt, ...) raises the sync's config error.
function M.settings(spec, fail)
  if type(spec) ~= "table" then fail("webhook must be a table such as { path = \"/hooks/crm\", secret = env "
    .. "\"CRM_HOOK_SECRET\", ids = \"data.ids\" }, got %s", type(spec)) end
  local valid, err = require("entsync.provider").check_settings(M.SETTINGS, spec)
  if not valid then fail("webhook %s", err) end
  if type(spec.secret) ~= "string" then
    fail("webhook secret must be a string (env \"NAME\" reads it from the environment), got %s", type(spec.secret))
  end
  if spec.secret == "" then fail("webhook secret is empty") end
  local path = spec.path
  if path:sub(1, 1) ~= "/" or path:find("[%s?#]") then
    fail("webhook path must be an absolute URL path such as \"/hooks/crm\", got %q", path)
  end
  if M.RESERVED[path] then fail("webhook path %q is the daemon's own (/, /metrics, /status.json)", path) end
  if (spec.ids == nil) == (spec.id == nil) then
    fail("webhook needs where the changed remote ids are in the body: ids = \"data.ids\" (a list) or "
      .. "id = \"data.id\" (one), not both")
  end
  if spec.keep_days ~= nil and spec.keep_days <= 0 then
    fail("webhook keep_days must be a positive number of days, got %s", tostring(spec.keep_days))
  end
  local s = {}
  for k, v in pairs(M.DEFAULTS) do s[k] = v end
  for k, v in pairs(spec) do s[k] = v end
  if s.signature_header == "" then fail("webhook signature_header is empty") end
  s.header_key = s.signature_header:lower()
  s.event_keys = path_setting(fail, "webhook event_id", s.event_id)
  s.ids_keys = s.ids and path_setting(fail, "webhook ids", s.ids)
  s.id_keys = s.id and path_setting(fail, "webhook id", s.id)
  return s
end

-- check_paths(job): two syncs cannot share a webhook path.
function M.check_paths(job)
  local seen = {}
  for _, name in ipairs(job.sync_order) do
    local sync = job.syncs[name]
    if sync.webhook then
      local other = seen[sync.webhook.path]
      if other then
        errors.config(sync.where, "sync \"%s\": webhook path %q is sync \"%s\"'s already", name, sync.webhook.path,
          other)
      end
      seen[sync.webhook.path] = name
    end
  end
end

-- max_body(job) -> the HTTP server's cap on a request body: 1 MiB, or
-- the largest webhook's max_body (each webhook checks its own).
function M.max_body(job)
  local most = 1024 * 1024
  for _, name in ipairs(job.sync_order) do
    local hook = job.syncs[name].webhook
    if hook and hook.max_body > most then most = hook.max_body end
  end
  return most
end

-- receiving -------------------------------------------------------------------------------

-- authentic(settings, headers, body) -> true | false, why: the signature
-- header holds HMAC-SHA256 of body with the secret. why never holds the
-- secret, the signature sent or the one expected.
function M.authentic(settings, headers, body)
  local given = headers[settings.header_key]
  if given == nil or given == "" then return false, "no " .. settings.signature_header .. " header" end
  given = given:match("^%s*(.-)%s*$")
  local prefix = given:sub(1, 7):lower()
  if prefix == "sha256=" then given = given:sub(8) end
  if not given:match("^%x+$") or #given ~= 64 then
    return false, settings.signature_header .. " is not sha256=<64 hex digits>"
  end
  local expected = core.sign.hmac_sha256(settings.secret, body)
  if not core.sign.equal(given:lower(), expected) then return false, "the signature does not match" end
  return true
end

-- parse(settings, body) -> event id (text), remote ids (a list) | nil, why
function M.parse(settings, body)
  local doc, err = json.try_decode(body)
  if not json.is_object(doc) then
    return nil, doc == nil and ("the body is not JSON: " .. tostring(err)) or "the body is not a JSON object"
  end
  local event, why = ids.remote(mapping.get_path(doc, settings.event_keys))
  if event == nil then return nil, string.format("no event id at %s (got %s)", settings.event_id, why) end
  local list
  if settings.id_keys then
    list = { mapping.get_path(doc, settings.id_keys) }
    if list[1] == nil then return nil, "no remote id at " .. settings.id end
  else
    list = mapping.get_path(doc, settings.ids_keys)
    if not json.is_array(list) then
      return nil, "no list of remote ids at " .. settings.ids
    end
  end
  local out = json.array()
  for i, raw in ipairs(list) do
    local id, bad = ids.remote(raw)
    if id == nil then
      return nil, string.format("remote id %d at %s is not an id (%s)", i, settings.ids or settings.id, bad)
    end
    out[i] = id
  end
  return ids.text(event), out
end

local Hook = {}
Hook.__index = Hook

-- A queued event: its seq, its remote ids, and their gets' results.
local function entry(seq, remote_ids)
  return { seq = seq, ids = remote_ids, results = {}, left = #remote_ids, started = 0 }
end

-- new(session, sync, options) -> hook, its queue the events pending in
-- the store. options: log(level, message, fields), exclusive(fn) -> false
-- when the sync is running already (the daemon's), idle (a condition
-- notified when a run of the job ends), wanted() (another task waits for
-- the sync), should_stop().
function M.new(session, sync, options)
  local hook = setmetatable({ session = session, sync = sync, settings = sync.webhook, options = options,
    wake = loop.condition(), pruned_at = 0, failures = 0,
    counts = { accepted = 0, duplicate = 0, unauthorized = 0, invalid = 0, too_large = 0 } }, Hook)
  hook:queue_pending()
  return hook
end

local function answer(status, text)
  return status, json.encode(json.object({ status = text })) .. "\n", { ["Content-Type"] = "application/json" }
end

-- receive(request) -> status, body, headers: the route's handler (it must
-- not wait: it runs inside the HTTP server's call).
function Hook:receive(request)
  local s, sync = self.settings, self.sync
  if #request.body > s.max_body then
    self.counts.too_large = self.counts.too_large + 1
    return answer(413, "too large")
  end
  local ok, why = M.authentic(s, request.headers, request.body)
  if not ok then
    self.counts.unauthorized = self.counts.unauthorized + 1
    self.options.log("warn", string.format("webhook of sync \"%s\" refused a POST from %s: %s", sync.name,
      request.remote, why), { event = "webhook", sync = sync.name, outcome = "unauthorized" })
    return answer(401, "unauthorized")
  end
  local event, list = M.parse(s, request.body)
  if not event then
    self.counts.invalid = self.counts.invalid + 1
    self.options.log("warn", string.format("webhook of sync \"%s\" refused a signed POST: %s", sync.name, list),
      { event = "webhook", sync = sync.name, outcome = "invalid" })
    return 400, list .. "\n"
  end
  local book = self.session.ledger
  local new, seq = book:receive_event(book:sync_id(sync.name), event, json.encode(list))
  if not new then
    self.counts.duplicate = self.counts.duplicate + 1
    self.options.log("debug", string.format("webhook of sync \"%s\": event %s seen before: ignored", sync.name, event),
      { event = "webhook", sync = sync.name, outcome = "duplicate", event_id = event })
    return answer(200, "duplicate")
  end
  self.counts.accepted = self.counts.accepted + 1
  self.options.log("debug", string.format("webhook of sync \"%s\": event %s names %d remote ids", sync.name, event,
    #list), { event = "webhook", sync = sync.name, outcome = "accepted", event_id = event })
  self.queue[#self.queue + 1] = entry(seq, list)
  self.wake:notify_all()
  return answer(202, "accepted")
end

-- pulling -----------------------------------------------------------------------------------
--
-- The accepted events wait in the hook's queue (in the order received;
-- the store holds the same as pending rows). While there are any, the
-- hook's task holds the sync (the daemon's exclusive) in one run of
-- operation "webhook" (import.pull): each event's gets start as soon as
-- it is queued, `concurrency` at a time, and the events at the head whose
-- every get has answered are written in one batch, whose commit marks them
-- pulled. Events commit in the order received, so of two events naming
-- one record the later fetch is written last. The run ends once the queue
-- has been empty for IDLE seconds, after MAX_RUN seconds, when another
-- task wants the sync (a scheduled run, an export) or the daemon stops:
-- it starts no new gets then, and ends once those started are written.

local IDLE = 0.5
local MAX_RUN = 10

-- queue_pending(): the queue is the store's pending events (at start, and
-- after a run that failed).
function Hook:queue_pending()
  local book = self.session.ledger
  self.queue, self.inflight, self.generation = {}, 0, (self.generation or 0) + 1
  for _, row in ipairs(book:pending_events(book:sync_id(self.sync.name), -1)) do
    self.queue[#self.queue + 1] = entry(row.seq, json.try_decode(row.ids) or {})
  end
end

-- Starts the gets of queued events, `concurrency` in flight at most.
function Hook:dispatch()
  local sync, s = self.sync, self.settings
  local provider = self.session:provider(sync.provider)
  for _, e in ipairs(self.queue) do
    while e.started < #e.ids do
      if self.inflight >= s.concurrency then return end
      e.started = e.started + 1
      self.inflight = self.inflight + 1
      local i, generation = e.started, self.generation
      loop.spawn(function()
        local remote_id = e.ids[i]
        local ctx = context.new(self.session, sync, "import"):at(remote_id, nil, nil)
        e.results[i] = table.pack(pcall(provider_contract.call, sync.provider, provider, "get", sync.resource,
          remote_id, ctx))
        e.left = e.left - 1
        if generation == self.generation then self.inflight = self.inflight - 1 end
        self.wake:notify_all()
      end)
    end
  end
end

-- The events at the head whose gets have all answered (one import batch
-- of ids at most, an event naming more taken whole), taken off the queue:
-- their records (each remote id once, its latest fetch) and their seqs.
function Hook:take_ready()
  local batch, count = {}, 0
  while self.queue[1] and self.queue[1].left == 0 and self.queue[1].started == #self.queue[1].ids do
    local e = self.queue[1]
    if #batch > 0 and count + #e.ids > self.sync.import.batch then break end
    table.remove(self.queue, 1)
    batch[#batch + 1], count = e, count + #e.ids
  end
  if #batch == 0 then return nil end
  local fetched, at, seqs = {}, {}, json.array()
  for _, e in ipairs(batch) do
    seqs[#seqs + 1] = e.seq
    for i, remote_id in ipairs(e.ids) do
      local key, r = ids.text(remote_id), e.results[i]
      local f = { remote_id = remote_id, ok = r[1], record = r[2] }
      if at[key] then fetched[at[key]] = f else fetched[#fetched + 1], at[key] = f, #fetched + 1 end
    end
  end
  return fetched, json.encode(seqs)
end

-- take(started): import.pull's source, in the run's task: starts gets,
-- waits for the next batch of fetched events; nil ends the run.
function Hook:take(started)
  local book, options = self.session.ledger, self.options
  local quiet_since = core.sys.monotonic()
  while true do
    local ending = options.should_stop() or options.wanted() or core.sys.monotonic() - started > MAX_RUN
    if not ending then self:dispatch() end
    local fetched, seqs = self:take_ready()
    if fetched then return fetched, function() book:finish_events(seqs) end end
    if self.inflight > 0 then
      self.wake:wait(1) -- a get answers, or an event comes
      quiet_since = core.sys.monotonic()
    elseif ending then
      return nil -- what was started is written; the rest waits for the next run
    else
      local left = IDLE - (core.sys.monotonic() - quiet_since)
      if left <= 0 then return nil end
      self.wake:wait(left)
    end
  end
end

function Hook:prune()
  local now = core.sys.now()
  if now - self.pruned_at < PRUNE_EVERY then return end
  self.pruned_at = now
  local book = self.session.ledger
  book:prune_events(book:sync_id(self.sync.name), now - self.settings.keep_days * 86400, self.settings.keep_events)
end

-- run(summary): the sync's webhook task: while events are queued, pulls
-- them in runs of the sync (summary(result, seconds) reports each); in
-- between, sleeps until one is accepted. After a run that failed, the
-- queue is read again from the store and the next run waits (0.5 s,
-- doubling up to 30 s).
function Hook:run(summary)
  local options = self.options
  while not options.should_stop() do
    if #self.queue == 0 then
      self.wake:wait(SAFETY_NET)
    elseif options.wanted() then
      options.idle:wait(1) -- another task takes the sync first
    else
      local result, started
      local ran = options.exclusive(function()
        started = core.sys.monotonic()
        result = require("entsync.import").pull(self.session, self.sync, function() return self:take(started) end)
      end)
      if not ran then
        options.idle:wait(1) -- the sync runs: its end lets the pull go
      elseif result then
        self.failures = 0
        summary(result, core.sys.monotonic() - started)
        pcall(self.prune, self)
      else
        self.failures = self.failures + 1
        self:queue_pending()
        loop.sleep(math.min(MAX_BACKOFF, 0.5 * 2 ^ (self.failures - 1)))
      end
    end
  end
end

-- stats() -> { accepted, duplicate, unauthorized, invalid, too_large,
-- pending } for the metrics.
function Hook:stats()
  local out = {}
  for k, v in pairs(self.counts) do out[k] = v end
  local book = self.session.ledger
  out.pending = book:pending_event_count(book:sync_id(self.sync.name))
  return out
end

return M
