-- docstore: a provider for a document store with a changes feed, the kind
-- of remote providers/README.md works through. Documents have an "_id"
-- and a revision "_rev" that every write must name (a stale one is
-- refused with 409); GET /feed/<db>/_changes?since=T gives the latest
-- change of each document after the opaque token T, deletions included;
-- POST /feed/<db>/_bulk_docs writes many documents at once, answering each;
-- POST /feed/<db>/_all_docs?include_docs=true with {"keys": [...]} reads
-- many at once, a row per key.
--
--   local docs = provider "docstore" { base_url = env "DOCS_URL", db = "contacts" }
--   sync "contacts" { remote = docs, entity = "contact", id = "_id", mapping = ...,
--     import = { mode = "incremental" }, export = { on_change = true, conflict = "newest" } }
--
-- The feed's tokens are its checkpoints: entsync stores the one covering
-- each committed batch and hands it back as query.checkpoint, never
-- comparing tokens (as text "100-g.." sorts before "99-g..").

local http = require "entsync.http"
local json = require "entsync.json"
local provider = require "entsync.provider"

local M = {}

M.settings = {
  base_url = { type = "string", required = true },
  db = { type = "string", required = true },
  page_size = "positive",      -- changes per page (default 100)
  type = "string",             -- only documents whose "type" is this
  token = "string",            -- a bearer token, when the store wants one
  concurrency = "positive",    -- reads and single writes in flight on export (default 4)
}

local Docs = {}
Docs.__index = Docs

function M.new(config)
  return setmetatable({ config = config, base = config.base_url:gsub("/+$", "") .. "/feed/" .. config.db,
    size = config.page_size or 100 }, Docs)
end

-- One request; its JSON body, or nil for a 404; a 409 is a version conflict.
function Docs:call(method, path, body, query)
  local headers = self.config.token and { Authorization = "Bearer " .. self.config.token } or nil
  local response = http.request({ method = method, url = self.base .. path, json = body, query = query,
    headers = headers })
  if response.status == 404 then return nil end
  if response.status == 409 then provider.conflict(method .. " " .. path .. ": the document has a newer revision") end
  if response.status >= 300 then error(string.format("%s %s: status %d", method, path, response.status), 0) end
  return response:json()
end

-- The reader: pages of the changes feed. A page may carry no record (every
-- change in it filtered out) and still move the checkpoint on.
local Reader = {}
Reader.__index = Reader

function Docs:list(_, query)
  local since = type(query.checkpoint) == "string" and query.checkpoint or "0"
  return setmetatable({ docs = self, since = since, page = {}, index = 0, done = false }, Reader)
end

function Reader:next()
  while self.index >= #self.page do
    if self.done then return nil end
    local body = self.docs:call("GET", "/_changes", nil,
      { since = self.since, limit = self.docs.size, type = self.docs.config.type })
    self.page, self.index = body.results, 0
    self.taken = self.since            -- the checkpoint while a page is being read
    self.since = body.last_seq         -- where the next page starts
    if body.pending == 0 then self.done = true end
    if #self.page == 0 then self.taken = self.since end
  end
  self.index = self.index + 1
  local change = self.page[self.index]
  self.taken = change.seq
  if change.deleted then return provider.tombstone(change.id, { _rev = change.rev }) end
  return change.doc
end

-- Everything returned so far is covered by the last change's token; a page
-- read to its end, by the page's last_seq (past the changes it filtered out).
function Reader:checkpoint()
  if self.index >= #self.page then return self.since end
  return self.taken
end

function Reader:ready()
  return self.index < #self.page or self.done
end

function Docs:get(_, id)
  return self:call("GET", "/" .. http.encode(id))
end

-- Many documents in one request, as CouchDB reads them: a row per key,
-- { id, key, value, doc } or { key, error = "not_found" } (a deleted one
-- has a null doc). list[i] is the document of ids[i], nil when there is none.
function Docs:get_batch(_, ids)
  local keys = json.array()
  for i, id in ipairs(ids) do keys[i] = id end
  local body = self:call("POST", "/_all_docs", { keys = keys }, { include_docs = "true" })
  local by_key = {}
  for _, row in ipairs(body and body.rows or {}) do
    if type(row.doc) == "table" and not row.error then by_key[tostring(row.key)] = row.doc end
  end
  local list = {}
  for i, id in ipairs(ids) do list[i] = by_key[tostring(id)] end
  return list
end

function Docs:version(record)
  return record._rev
end

-- What the store answers to a write is { ok, id, rev }: the document as
-- entsync sent it, with its new revision, is the remote's copy now.
local function written(record, answer)
  local doc = {}
  for k, v in pairs(record) do doc[k] = v end
  doc._id, doc._rev = answer.id, answer.rev
  return doc
end

-- A document made here carries the type the provider reads, so its later
-- changes come back through the feed's type filter.
local function typed(self, record)
  if not self.config.type or record.type ~= nil then return record end
  local doc = {}
  for k, v in pairs(record) do doc[k] = v end
  doc.type = self.config.type
  return doc
end

function Docs:create(_, record)
  record = typed(self, record)
  local answer = self:call("POST", "", record)
  return answer.id, written(record, answer)
end

-- entsync gives the mapped fields merged over the current document
-- (ctx.current), so fields the mapping does not carry are kept.
function Docs:update(_, id, record, ctx)
  local doc = {}
  for k, v in pairs(record) do doc[k] = v end
  doc._rev = ctx.version
  return written(record, self:call("PUT", "/" .. http.encode(id), doc))
end

function Docs:delete(_, id, ctx)
  self:call("DELETE", "/" .. http.encode(id), nil, { rev = ctx.version })
  return true
end

-- Many writes in one request; one answer per document, in order.
function Docs:write_batch(_, items)
  local docs = {}
  for i, item in ipairs(items) do
    local doc = {}
    for k, v in pairs(item.op == "create" and typed(self, item.record) or item.record or {}) do doc[k] = v end
    doc._id, doc._rev = item.id, item.version
    if item.op == "delete" then doc._deleted = true end
    docs[i] = doc
  end
  local answers = self:call("POST", "/_bulk_docs", { docs = docs })
  local results = {}
  for i, answer in ipairs(answers) do
    if answer.ok then
      results[i] = { ok = true, id = answer.id, answer = written(items[i].record or {}, answer) }
    else
      results[i] = { ok = false, conflict = answer.error == "conflict", error = answer.reason or answer.error }
    end
  end
  return results
end

return M
