-- entsync.ledger: entsync's own tables.
--
-- Every table of entsync's own (all named entsync_*) is defined here, with
-- its forward migrations and every statement run on it, so the engines ask
-- for what they need by name and no SQL text on these tables lives anywhere
-- else. (The lease statements on entsync_locks are the lease module's,
-- src/lock.c; the table itself is defined here.)
--
-- The tables, schema version 4:
--
--   entsync_meta      key/value: schema version, daemon state, notes
--   entsync_syncs     a sync's integer id, by name
--   entsync_entities  an entity's integer id, by name (change log rows)
--   entsync_idmap     one row per remote record and sync, a rowid table
--                     keyed by the sync and the local id in one integer
--                     (key_of below): the local id (a split's primary
--                     entity; its other entities carry a link column
--                     holding that id), the remote id (unique per sync) with
--                     its JSON type (integer or text), the changed mark,
--                     the mapped content hash, the raw line's hash, the
--                     remote's version token, and pass bookkeeping
--   entsync_writes    writes about to be sent to a remote, recorded before
--                     they are sent: after a crash, the remote's copy of
--                     such a write is known for ours
--   entsync_changes   the change log: every insert, update (of exported
--                     columns) and delete of an exported entity's table,
--                     written by triggers whoever writes; entsync stamps
--                     its own writes with the sync they came from
--   entsync_state     per sync: import cursor and checkpoint, full-pass
--                     bookkeeping, the export position in the change log,
--                     the mapping fingerprint
--   entsync_runs      every run with its counts
--   entsync_failures  failed entities per sync and direction, with
--                     payload and retry schedule
--   entsync_conflicts conflicts and how they were settled
--   entsync_locks     leases (src/lock.c)
--   entsync_webhook_events  each webhook event a sync received (schema 4):
--                     its event id (what a sender's redelivery repeats),
--                     the remote ids it named, when it came and when the
--                     pull of those ids committed; pending ones (no done_at)
--                     are pulled again after a restart, done ones are kept
--                     a while so a replay is known (webhook keep_days,
--                     keep_events). No secret and no signature is stored.
--
-- and three views for people reading the store with sqlite3: entsync_map
-- (the id map by sync name), entsync_failed (failures by sync name) and
-- entsync_history (runs by sync name).

local core = require "entsync.core"
local errors = require "entsync.errors"
local redact = require "entsync.redact"

local M = {}

M.VERSION = 4

-- The tables of schema 1 (milestone 1), kept to build a store of that
-- version from nothing, which then migrates forward like any other.
local SCHEMA_1 = [[
CREATE TABLE entsync_idmap (
  sync TEXT NOT NULL, entity TEXT NOT NULL, local_id INTEGER NOT NULL,
  remote_id TEXT NOT NULL, changed, hash INTEGER, raw_hash INTEGER, synced_at REAL,
  seen_pass INTEGER, gone_at REAL,
  PRIMARY KEY (sync, remote_id, entity)) WITHOUT ROWID;
CREATE UNIQUE INDEX entsync_idmap_local ON entsync_idmap (sync, entity, local_id);
CREATE TABLE entsync_state (
  sync TEXT PRIMARY KEY, cursor_mark, cursor_id TEXT,
  pass INTEGER NOT NULL DEFAULT 0, pass_resume TEXT,
  pass_open INTEGER NOT NULL DEFAULT 0, pass_unreadable INTEGER NOT NULL DEFAULT 0,
  updated_at REAL);
CREATE TABLE entsync_runs (
  id INTEGER PRIMARY KEY, sync TEXT NOT NULL, operation TEXT NOT NULL, mode TEXT,
  started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL,
  created INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0,
  unchanged INTEGER NOT NULL DEFAULT 0, stale INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0,
  cursor_before TEXT, cursor_after TEXT, error TEXT, pid INTEGER, host TEXT);
CREATE INDEX entsync_runs_sync ON entsync_runs (sync, id);
CREATE TABLE entsync_failures (
  sync TEXT NOT NULL, remote_id TEXT NOT NULL, local_id INTEGER,
  error TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 1,
  first_at REAL NOT NULL, last_at REAL NOT NULL, next_at REAL NOT NULL,
  waits_for TEXT,
  PRIMARY KEY (sync, remote_id)) WITHOUT ROWID;
CREATE TABLE entsync_outbox (
  id INTEGER PRIMARY KEY, entity TEXT NOT NULL, local_id INTEGER NOT NULL,
  operation TEXT NOT NULL, queued_at REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, next_at REAL,
  UNIQUE (entity, local_id));
CREATE TABLE entsync_conflicts (
  id INTEGER PRIMARY KEY, run_id INTEGER, sync TEXT NOT NULL, entity TEXT, local_id INTEGER,
  remote_id TEXT, local_hash INTEGER, remote_hash INTEGER, policy TEXT NOT NULL,
  winner TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE entsync_mark (owner TEXT);
CREATE TABLE entsync_locks (
  name TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL,
  host TEXT NOT NULL, acquired_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
  expires_at REAL NOT NULL) WITHOUT ROWID;
]]
M.SCHEMA_1 = SCHEMA_1

-- Schema 2: integer sync ids, one id-map row per remote record, the change
-- log with per-sync positions, writes recorded before they are sent.
-- Rows of the old id map wait in entsync_idmap_v1 until a job that knows
-- each sync's entities opens the store (adopt_v1 below).
local SCHEMA_2 = [[
CREATE TABLE entsync_syncs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL);
CREATE TABLE entsync_entities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
INSERT INTO entsync_syncs (name, created_at)
  SELECT DISTINCT sync, (julianday('now') - 2440587.5) * 86400.0 FROM (
    SELECT sync FROM entsync_idmap UNION SELECT sync FROM entsync_state UNION SELECT sync FROM entsync_runs
    UNION SELECT sync FROM entsync_failures UNION SELECT sync FROM entsync_conflicts) ORDER BY sync;
INSERT INTO entsync_entities (name)
  SELECT DISTINCT entity FROM (SELECT entity FROM entsync_idmap UNION SELECT entity FROM entsync_outbox) ORDER BY entity;

ALTER TABLE entsync_idmap RENAME TO entsync_idmap_v1;
CREATE TABLE entsync_idmap (
  sync INTEGER NOT NULL, local_id INTEGER NOT NULL, remote_id NOT NULL, changed,
  hash INTEGER, raw_hash INTEGER, version, synced_at REAL, seen_pass INTEGER, gone_at REAL,
  PRIMARY KEY (sync, local_id)) WITHOUT ROWID;
CREATE UNIQUE INDEX entsync_idmap_remote ON entsync_idmap (sync, remote_id);

CREATE TABLE entsync_writes (
  sync INTEGER NOT NULL, local_id INTEGER NOT NULL, operation TEXT NOT NULL, key TEXT,
  hash INTEGER, at REAL NOT NULL,
  PRIMARY KEY (sync, local_id)) WITHOUT ROWID;

CREATE TABLE entsync_changes (
  seq INTEGER PRIMARY KEY, entity INTEGER NOT NULL, local_id INTEGER, operation INTEGER NOT NULL,
  origin INTEGER, at REAL);
INSERT INTO entsync_changes (entity, local_id, operation, at)
  SELECT e.id, o.local_id, CASE o.operation WHEN 'delete' THEN 2 ELSE 1 END, o.queued_at
  FROM entsync_outbox o JOIN entsync_entities e ON e.name = o.entity ORDER BY o.queued_at, o.id;
-- the exporting sync of schema 1 had these changes to send: the job that
-- opens the store next hands them to its exporting syncs (start_position)
INSERT INTO entsync_meta (key, value)
  SELECT 'v1_outbox', 1 WHERE EXISTS (SELECT 1 FROM entsync_changes);
DROP TABLE entsync_outbox;
DROP TABLE entsync_mark;

CREATE TABLE entsync_state2 (
  sync INTEGER PRIMARY KEY, cursor_mark, cursor_id, checkpoint TEXT,
  pass INTEGER NOT NULL DEFAULT 0, pass_resume TEXT,
  pass_open INTEGER NOT NULL DEFAULT 0, pass_unreadable INTEGER NOT NULL DEFAULT 0,
  out_seq INTEGER, fingerprint INTEGER, updated_at REAL);
INSERT INTO entsync_state2 (sync, cursor_mark, cursor_id, pass, pass_resume, pass_open, pass_unreadable,
    out_seq, updated_at)
  SELECT s.id, t.cursor_mark, t.cursor_id, t.pass, t.pass_resume, t.pass_open, t.pass_unreadable, 0, t.updated_at
  FROM entsync_state t JOIN entsync_syncs s ON s.name = t.sync;
INSERT INTO entsync_state2 (sync, out_seq)
  SELECT id, 0 FROM entsync_syncs WHERE id NOT IN (SELECT sync FROM entsync_state2);
DROP TABLE entsync_state;
ALTER TABLE entsync_state2 RENAME TO entsync_state;

CREATE TABLE entsync_runs2 (
  id INTEGER PRIMARY KEY, sync INTEGER NOT NULL, operation TEXT NOT NULL, mode TEXT,
  started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL,
  created INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0,
  unchanged INTEGER NOT NULL DEFAULT 0, stale INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0, conflicts INTEGER NOT NULL DEFAULT 0,
  cursor_before TEXT, cursor_after TEXT, error TEXT, pid INTEGER, host TEXT);
INSERT INTO entsync_runs2 (id, sync, operation, mode, started_at, ended_at, status, created, updated,
    unchanged, stale, failed, deleted, skipped, cursor_before, cursor_after, error, pid, host)
  SELECT r.id, s.id, r.operation, r.mode, r.started_at, r.ended_at, r.status, r.created, r.updated,
    r.unchanged, r.stale, r.failed, r.deleted, r.skipped, r.cursor_before, r.cursor_after, r.error, r.pid, r.host
  FROM entsync_runs r JOIN entsync_syncs s ON s.name = r.sync;
DROP TABLE entsync_runs;
ALTER TABLE entsync_runs2 RENAME TO entsync_runs;
CREATE INDEX entsync_runs_sync ON entsync_runs (sync, id);

CREATE TABLE entsync_failures2 (
  sync INTEGER NOT NULL, direction TEXT NOT NULL, key TEXT NOT NULL, local_id INTEGER, remote_id,
  error TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 1,
  first_at REAL NOT NULL, last_at REAL NOT NULL, next_at REAL NOT NULL, waits_for TEXT,
  PRIMARY KEY (sync, direction, key)) WITHOUT ROWID;
INSERT INTO entsync_failures2 (sync, direction, key, local_id, remote_id, error, payload, attempts,
    first_at, last_at, next_at, waits_for)
  SELECT s.id, 'import', f.remote_id, f.local_id, f.remote_id, f.error, f.payload, f.attempts,
    f.first_at, f.last_at, f.next_at, f.waits_for
  FROM entsync_failures f JOIN entsync_syncs s ON s.name = f.sync;
DROP TABLE entsync_failures;
ALTER TABLE entsync_failures2 RENAME TO entsync_failures;

CREATE TABLE entsync_conflicts2 (
  id INTEGER PRIMARY KEY, run_id INTEGER, sync INTEGER NOT NULL, direction TEXT, local_id INTEGER,
  remote_id, local_hash INTEGER, remote_hash INTEGER, policy TEXT NOT NULL,
  winner TEXT NOT NULL, at REAL NOT NULL);
INSERT INTO entsync_conflicts2 (id, run_id, sync, local_id, remote_id, local_hash, remote_hash, policy,
    winner, at)
  SELECT c.id, c.run_id, s.id, c.local_id, c.remote_id, c.local_hash, c.remote_hash, c.policy, c.winner, c.at
  FROM entsync_conflicts c JOIN entsync_syncs s ON s.name = c.sync;
DROP TABLE entsync_conflicts;
ALTER TABLE entsync_conflicts2 RENAME TO entsync_conflicts;

CREATE VIEW entsync_map AS
  SELECT s.name AS sync, m.local_id, m.remote_id, m.changed, m.hash, m.version, m.synced_at, m.gone_at
  FROM entsync_idmap m JOIN entsync_syncs s ON s.id = m.sync;
CREATE VIEW entsync_failed AS
  SELECT s.name AS sync, f.direction, f.key, f.local_id, f.remote_id, f.error, f.payload, f.attempts,
    f.first_at, f.last_at, f.next_at, f.waits_for
  FROM entsync_failures f JOIN entsync_syncs s ON s.id = f.sync;
CREATE VIEW entsync_history AS
  SELECT r.id, s.name AS sync, r.operation, r.mode, r.started_at, r.ended_at, r.status, r.created, r.updated,
    r.unchanged, r.stale, r.failed, r.deleted, r.skipped, r.conflicts, r.cursor_before, r.cursor_after, r.error,
    r.pid, r.host
  FROM entsync_runs r JOIN entsync_syncs s ON s.id = r.sync;
]]

-- Schema 3: the id map as a rowid table keyed by one integer, the sync id
-- in the bits above 2^40 and the local id below (a local id outside
-- 0 .. 2^40 - 1 gets a negative key of its own, kept unique per sync by a
-- partial index), the remote id unique per sync. Two B-trees, integer
-- keyed, where schema 2 had a WITHOUT ROWID table on (sync, local_id).
-- Rows keep every column; the view is made again over the new table.
local KEY_BITS = 40
local KEY_SPAN = 1 << KEY_BITS
local SCHEMA_3 = string.format([[
DROP VIEW IF EXISTS entsync_map;
CREATE TABLE entsync_idmap3 (
  key INTEGER PRIMARY KEY, sync INTEGER NOT NULL, local_id INTEGER NOT NULL, remote_id NOT NULL, changed,
  hash INTEGER, raw_hash INTEGER, version, synced_at REAL, seen_pass INTEGER, gone_at REAL);
INSERT INTO entsync_idmap3 (key, sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at,
    seen_pass, gone_at)
  SELECT CASE WHEN local_id >= 0 AND local_id < %d THEN (sync << %d) | local_id
      ELSE -row_number() OVER (ORDER BY sync, local_id) END,
    sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass, gone_at
  FROM entsync_idmap ORDER BY sync, local_id;
DROP TABLE entsync_idmap;
ALTER TABLE entsync_idmap3 RENAME TO entsync_idmap;
CREATE UNIQUE INDEX entsync_idmap_remote ON entsync_idmap (sync, remote_id);
CREATE UNIQUE INDEX entsync_idmap_wide ON entsync_idmap (sync, local_id) WHERE key < 0;
CREATE VIEW entsync_map AS
  SELECT s.name AS sync, m.local_id, m.remote_id, m.changed, m.hash, m.version, m.synced_at, m.gone_at
  FROM entsync_idmap m JOIN entsync_syncs s ON s.id = m.sync;
]], KEY_SPAN, KEY_BITS)

-- Schema 4: the webhook events each sync received, for their pull and
-- to know a replay (entsync.webhook).
local SCHEMA_4 = [[
CREATE TABLE IF NOT EXISTS entsync_webhook_events (
  seq INTEGER PRIMARY KEY, sync INTEGER NOT NULL, event_id TEXT NOT NULL, ids TEXT NOT NULL,
  received_at REAL NOT NULL, done_at REAL,
  UNIQUE (sync, event_id));
CREATE INDEX IF NOT EXISTS entsync_webhook_events_pending ON entsync_webhook_events (sync, seq)
  WHERE done_at IS NULL;
]]

-- Migration i brings the schema from version i - 1 to i: SQL text, or a
-- function of the store for what SQL alone cannot say. Never edit a
-- released entry: add one.
local MIGRATIONS = {
  SCHEMA_1,
  function(store)
    -- schema 1's capture triggers write to entsync_outbox, which goes
    for _, row in ipairs(store:rows([[SELECT name FROM sqlite_master WHERE type = 'trigger'
        AND name LIKE 'entsync%' AND sql LIKE '%entsync_outbox%']])) do
      store:exec(string.format('DROP TRIGGER "%s"', row.name))
    end
    store:exec(SCHEMA_2)
    -- a store made from nothing has no id map of schema 1 to adopt
    if not store:value("SELECT 1 FROM entsync_idmap_v1 LIMIT 1") then store:exec("DROP TABLE entsync_idmap_v1") end
  end,
  SCHEMA_3,
  SCHEMA_4,
}
assert(#MIGRATIONS == M.VERSION)

local function read_version(store)
  local ok, version = pcall(store.value, store, "SELECT value FROM entsync_meta WHERE key = 'schema_version'")
  if not ok then return nil end
  return math.tointeger(version) or 0
end

-- The schema version of a store as it is (nil: entsync has not written
-- it), read without changing anything: status and check only look.
function M.stored_version(store)
  return read_version(store)
end

-- Brings entsync's tables to the current version, each step and the new
-- version in one transaction, so a failed migration leaves the previous
-- schema whole. A current store is read without a write lock: another
-- run may be writing a batch, and status must not wait for it. A store
-- written by a newer entsync is refused.
function M.migrate(store, upto)
  upto = upto or M.VERSION
  local version = read_version(store)
  if version == upto then return version end
  if version and version > M.VERSION then
    error(string.format("store %s has schema version %d; this entsync knows up to %d: upgrade entsync",
      store:path(), version, M.VERSION), 0)
  end
  store:run("BEGIN IMMEDIATE")
  local ok, err = pcall(function()
    store:exec("CREATE TABLE IF NOT EXISTS entsync_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    version = read_version(store) or 0
    for v = version + 1, upto do
      local step = MIGRATIONS[v]
      local done, message = pcall(function()
        if type(step) == "function" then step(store) else store:exec(step) end
      end)
      if not done then
        -- a store the machine refuses (busy, full, not writable) says so
        if errors.is(message) and errors.environment[message.kind] then error(message, 0) end
        error(string.format("store %s: migration to schema %d failed: %s", store:path(), v,
          tostring(message):gsub("^store [^:]+: ", "")), 0)
      end
    end
    store:run("INSERT OR REPLACE INTO entsync_meta (key, value) VALUES ('schema_version', ?1)", upto)
  end)
  if not ok then
    store:run("ROLLBACK")
    error(err, 0)
  end
  store:run("COMMIT")
  return upto
end

-- The ledger of one open store -----------------------------------------------

local Ledger = {}
Ledger.__index = Ledger

-- ledger.new(store): the statements of entsync's own tables on store.
-- Sync and entity ids are cached for the life of the connection.
function M.new(store)
  return setmetatable({ store = store, sync_ids = {}, sync_names = {}, entity_ids = {} }, Ledger)
end

-- ids ------------------------------------------------------------------------

local SQL = {
  sync_id = "SELECT id FROM entsync_syncs WHERE name = ?1",
  add_sync = "INSERT INTO entsync_syncs (name, created_at) VALUES (?1, ?2)",
  sync_name = "SELECT name FROM entsync_syncs WHERE id = ?1",
  entity_id = "SELECT id FROM entsync_entities WHERE name = ?1",
  add_entity = "INSERT INTO entsync_entities (name) VALUES (?1)",
}

-- The integer id of a sync (or entity), made on first use. Making one is
-- a write: callers that only read pass `peek` and get nil for a name the
-- store has not met.
function Ledger:sync_id(name, peek)
  local id = self.sync_ids[name]
  if id then return id end
  id = self.store:value(SQL.sync_id, name)
  if not id and not peek then
    local _, rowid = self.store:run(SQL.add_sync, name, core.sys.now())
    id = rowid
  end
  if id then self.sync_ids[name], self.sync_names[id] = id, name end
  return id
end

function Ledger:sync_name(id)
  local name = self.sync_names[id]
  if name then return name end
  name = self.store:value(SQL.sync_name, id)
  if name then self.sync_ids[name], self.sync_names[id] = id, name end
  return name
end

function Ledger:entity_id(name, peek)
  local id = self.entity_ids[name]
  if id then return id end
  id = self.store:value(SQL.entity_id, name)
  if not id and not peek then
    local _, rowid = self.store:run(SQL.add_entity, name)
    id = rowid
  end
  if id then self.entity_ids[name] = id end
  return id
end

-- the id map -----------------------------------------------------------------

SQL.by_remote = [[SELECT local_id, remote_id, changed, hash, version, seen_pass, gone_at, raw_hash
  FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2]]
SQL.by_local = [[SELECT local_id, remote_id, changed, hash, version, seen_pass, gone_at, raw_hash
  FROM entsync_idmap WHERE key = ?1]]
SQL.local_of = "SELECT local_id FROM entsync_idmap WHERE sync = ?1 AND remote_id = ?2"
SQL.remote_of = "SELECT remote_id FROM entsync_idmap WHERE key = ?1"
SQL.any_mapped = "SELECT 1 FROM entsync_idmap WHERE sync = ?1 LIMIT 1"
SQL.mapped_count = "SELECT count(*) FROM entsync_idmap WHERE sync = ?1"
SQL.wide_key = "SELECT key FROM entsync_idmap WHERE sync = ?1 AND local_id = ?2 AND key < 0"
SQL.new_wide_key = "SELECT min(0, coalesce(min(key), 0)) - 1 FROM entsync_idmap"
SQL.max_key = "SELECT max(key) FROM entsync_idmap"
SQL.insert_map = [[INSERT INTO entsync_idmap
  (key, sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass)
  VALUES (?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)]]
SQL.save_map = [[INSERT INTO entsync_idmap
  (key, sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass)
  VALUES (?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
  ON CONFLICT (key) DO UPDATE SET remote_id = excluded.remote_id, changed = excluded.changed,
    hash = excluded.hash, raw_hash = excluded.raw_hash, version = excluded.version,
    synced_at = excluded.synced_at, seen_pass = coalesce(excluded.seen_pass, seen_pass), gone_at = NULL]]
-- save_map of an entry known to be there (the C record path's updates),
-- bound as save_map: one search of the key instead of an insert that meets
-- it first
SQL.update_map = [[UPDATE entsync_idmap SET remote_id = ?3, changed = ?4, hash = ?5, raw_hash = ?6, version = ?7,
  synced_at = ?8, seen_pass = coalesce(?9, seen_pass), gone_at = NULL WHERE key = ?10 AND sync = ?1 AND local_id = ?2]]
SQL.seen_remote = "UPDATE entsync_idmap SET hash = ?2, changed = ?3, version = coalesce(?4, version) WHERE key = ?1"
SQL.mark_seen = "UPDATE entsync_idmap SET seen_pass = ?2 WHERE key = ?1"
SQL.set_raw_hash = "UPDATE entsync_idmap SET raw_hash = ?2 WHERE key = ?1"
SQL.retype = "UPDATE entsync_idmap SET remote_id = ?2 WHERE key = ?1"
-- A sync's rows: its range of keys (?2 .. ?3), then the negative keys of
-- its local ids outside the range (each part a plain rowid search).
local function in_sync(columns, where)
  return string.format("SELECT %s FROM entsync_idmap WHERE key >= ?2 AND key < ?3%s UNION ALL "
    .. "SELECT %s FROM entsync_idmap WHERE key < 0 AND sync = ?1%s", columns, where, columns, where)
end
SQL.raw_hashes = in_sync("raw_hash", " AND raw_hash IS NOT NULL")
SQL.unseen = in_sync("local_id, remote_id", " AND gone_at IS NULL AND (seen_pass IS NULL OR seen_pass <> ?4)")
SQL.forget = "DELETE FROM entsync_idmap WHERE key = ?1"
SQL.flag_gone = "UPDATE entsync_idmap SET gone_at = ?2 WHERE key = ?1"
SQL.remote_ids = in_sync("local_id, remote_id", "") .. " ORDER BY local_id"

-- The id map's key of a sync's local id: the sync id above bit 40 and
-- the local id below, or for a local id outside 0 .. 2^40 - 1 the
-- negative key its row was given (nil when it has none; `make` gives a
-- new one).
function Ledger:key_of(sync_id, local_id, make)
  local_id = math.tointeger(local_id)
  if local_id == nil then return nil end
  if local_id >= 0 and local_id < KEY_SPAN then return (sync_id << KEY_BITS) | local_id end
  local key = self.store:value(SQL.wide_key, sync_id, local_id)
  if key == nil and make then key = self.store:value(SQL.new_wide_key) end
  return key
end

-- The keys of a sync's range.
local function key_range(sync_id)
  return sync_id << KEY_BITS, (sync_id + 1) << KEY_BITS
end

-- The text form of an integer id, which schema 1 stored for every id.
local function legacy_text(remote_id)
  if math.type(remote_id) == "integer" then return string.format("%d", remote_id) end
  return nil
end

-- The id-map entry of a remote id, or nil. Ids keep their JSON type, so an
-- integer id is also looked for in the text form schema 1 stored (and
-- given its type back when found that way).
function Ledger:by_remote(sync_id, remote_id)
  local row = self.store:row(SQL.by_remote, sync_id, remote_id)
  if row then return row end
  local text = legacy_text(remote_id)
  if text then
    row = self.store:row(SQL.by_remote, sync_id, text)
    if row and not self.read_only then
      self.store:run(SQL.retype, self:key_of(sync_id, row.local_id), remote_id)
      row.remote_id = remote_id
    end
  elseif type(remote_id) == "string" and remote_id:match("^%-?[1-9]%d*$") and #remote_id < 19 then
    -- an id typed by hand (the command line) names an integer id too
    row = self.store:row(SQL.by_remote, sync_id, math.tointeger(tonumber(remote_id)))
  end
  return row
end

function Ledger:by_local(sync_id, local_id)
  local key = self:key_of(sync_id, local_id)
  return key and self.store:row(SQL.by_local, key)
end

function Ledger:local_of(sync_id, remote_id)
  local id = self.store:value(SQL.local_of, sync_id, remote_id)
  if id == nil then
    local row = self:by_remote(sync_id, remote_id)
    id = row and row.local_id
  end
  return id
end

function Ledger:remote_of(sync_id, local_id)
  local key = self:key_of(sync_id, local_id)
  return key and self.store:value(SQL.remote_of, key)
end

function Ledger:has_mapped(sync_id)
  return self.store:value(SQL.any_mapped, sync_id) ~= nil
end

function Ledger:mapped_count(sync_id)
  return self.store:value(SQL.mapped_count, sync_id) or 0
end

-- insert: a record new to the id map (the first import's path: the key
-- fails on a remote id met twice). save: insert or update.
function Ledger:insert_map(sync_id, local_id, remote_id, changed, hash, raw_hash, version, pass)
  self.store:run(SQL.insert_map, sync_id, local_id, remote_id, changed, hash, raw_hash, version, core.sys.now(), pass,
    self:key_of(sync_id, local_id, true))
end

-- The SQL the C record path runs (core.record), bound as insert_map,
-- save_map and by_remote bind theirs; insert_map_rows(n, keyed) inserts n
-- id-map rows at once, each bound as key (when keyed), sync, local_id,
-- remote_id, changed, hash, raw_hash, version, synced_at, seen_pass. With
-- no key SQLite gives each row the largest key plus one: the record path
-- does so when that is the row's own key, (sync << 40) | local_id, read
-- from max_key first. It is an INSERT OR FAIL, as the writers' many-rows
-- statements are (src/store.h): no statement journal, and a failure leaves
-- the rows before it, so the import rolls the batch back.
function Ledger:record_path_sql()
  return { insert_map = SQL.insert_map, save_map = SQL.save_map, update_map = SQL.update_map, by_remote = SQL.by_remote,
    max_key = SQL.max_key,
    insert_map_rows = function(n, keyed)
      return "INSERT OR FAIL INTO entsync_idmap (" .. (keyed and "key, " or "")
        .. "sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass) VALUES "
        .. string.rep(keyed and "(?,?,?,?,?,?,?,?,?,?)" or "(?,?,?,?,?,?,?,?,?)", n, ",")
    end }
end

-- Whether the sync has writes recorded and not yet confirmed.
function Ledger:has_writes(sync_id)
  return self.store:value(SQL.any_write, sync_id) ~= nil
end

function Ledger:save_map(sync_id, local_id, remote_id, changed, hash, raw_hash, version, pass)
  self.store:run(SQL.save_map, sync_id, local_id, remote_id, changed, hash, raw_hash, version, core.sys.now(), pass,
    self:key_of(sync_id, local_id, true))
end

-- The remote version was seen (and lost a conflict, or was our own write):
-- the entry takes its hash and mark, so it is not met as a change again.
function Ledger:seen_remote(sync_id, local_id, hash, changed, version)
  local key = self:key_of(sync_id, local_id)
  if key then self.store:run(SQL.seen_remote, key, hash, changed, version) end
end

function Ledger:mark_seen(sync_id, local_id, pass)
  local key = self:key_of(sync_id, local_id)
  if key then self.store:run(SQL.mark_seen, key, pass) end
end

-- A record found unchanged by its content whose line hashed otherwise
-- (another entsync version, or bytes that differ only in form): the map
-- keeps the line's hash now, so the next run skips the line unread.
function Ledger:set_raw_hash(sync_id, local_id, raw_hash)
  local key = self:key_of(sync_id, local_id)
  if key then self.store:run(SQL.set_raw_hash, key, raw_hash) end
end

function Ledger:raw_hashes(sync_id)
  local from, to = key_range(sync_id)
  return self.store:hash_set(SQL.raw_hashes, sync_id, from, to)
end

function Ledger:unseen(sync_id, pass)
  local from, to = key_range(sync_id)
  return self.store:rows(SQL.unseen, sync_id, from, to, pass)
end

function Ledger:forget(sync_id, local_id)
  local key = self:key_of(sync_id, local_id)
  if key then self.store:run(SQL.forget, key) end
end

function Ledger:flag_gone(sync_id, local_id)
  local key = self:key_of(sync_id, local_id)
  if key then self.store:run(SQL.flag_gone, key, core.sys.now()) end
end

function Ledger:remote_ids(sync_id)
  local out = {}
  local from, to = key_range(sync_id)
  for i, row in ipairs(self.store:rows(SQL.remote_ids, sync_id, from, to)) do out[i] = row.remote_id end
  return out
end

-- writes in flight ---------------------------------------------------------------

SQL.begin_write = [[INSERT INTO entsync_writes (sync, local_id, operation, key, hash, at)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6)
  ON CONFLICT (sync, local_id) DO UPDATE SET operation = excluded.operation,
    key = coalesce(entsync_writes.key, excluded.key), hash = excluded.hash, at = excluded.at]]
SQL.write_of = "SELECT operation, key, hash, at FROM entsync_writes WHERE sync = ?1 AND local_id = ?2"
SQL.end_write = "DELETE FROM entsync_writes WHERE sync = ?1 AND local_id = ?2"
SQL.any_write = "SELECT 1 FROM entsync_writes WHERE sync = ?1 LIMIT 1"
SQL.pending_creates = [[SELECT local_id, key, hash FROM entsync_writes
  WHERE sync = ?1 AND operation = 'create']]

-- Records a write about to be sent (operation "create", "update" or
-- "delete"; hash: the content hash the remote's copy will have). A create
-- keeps the idempotency key of its first attempt, so a create sent again
-- after a crash is the same create.
function Ledger:begin_write(sync_id, local_id, operation, key, hash)
  self.store:run(SQL.begin_write, sync_id, local_id, operation, key, hash, core.sys.now())
  return self.store:value("SELECT key FROM entsync_writes WHERE sync = ?1 AND local_id = ?2", sync_id, local_id)
end

function Ledger:write_of(sync_id, local_id)
  return self.store:row(SQL.write_of, sync_id, local_id)
end

function Ledger:end_write(sync_id, local_id)
  self.store:run(SQL.end_write, sync_id, local_id)
end

function Ledger:pending_creates(sync_id)
  return self.store:rows(SQL.pending_creates, sync_id)
end

-- the change log -------------------------------------------------------------------

SQL.last_seq = "SELECT coalesce(max(seq), 0) FROM entsync_changes"
SQL.stamp = "UPDATE entsync_changes SET origin = ?2 WHERE seq > ?1 AND origin IS NULL"
SQL.changes = [[SELECT seq, entity, local_id, operation, at FROM entsync_changes
  WHERE seq > ?1 AND entity IN (SELECT value FROM json_each(?2)) AND (origin IS NULL OR origin <> ?3)
  ORDER BY seq LIMIT ?4]]
SQL.pending_changes = [[SELECT entity, local_id, max(at) AS at FROM entsync_changes
  WHERE seq > ?1 AND entity IN (SELECT value FROM json_each(?2)) AND (origin IS NULL OR origin <> ?3)
  GROUP BY entity, local_id]]
SQL.pending_count = [[SELECT count(*) FROM entsync_changes
  WHERE seq > ?1 AND entity IN (SELECT value FROM json_each(?2)) AND (origin IS NULL OR origin <> ?3)]]
-- The last row stays: seq is a rowid, and a log emptied to nothing would
-- start counting again below the positions of its consumers.
SQL.prune = [[DELETE FROM entsync_changes WHERE seq <= ?1 AND entity IN (SELECT value FROM json_each(?2))
  AND seq < (SELECT max(seq) FROM entsync_changes)]]
SQL.unqueue = "DELETE FROM entsync_changes WHERE seq > ?1"

function Ledger:last_seq()
  return self.store:value(SQL.last_seq)
end

-- Names the sync whose import (or export answer) made the changes logged
-- after seq in the transaction in progress: the write lock is held, so
-- they are all its own.
function Ledger:stamp_origin(after_seq, sync_id)
  self.store:run(SQL.stamp, after_seq, sync_id)
end

-- The SQL of stamp_origin, bound (after_seq, sync_id), for a commit that
-- runs it on the store's writer thread (Session:hand_off).
function Ledger:stamp_sql()
  return SQL.stamp
end

-- Drops the change rows logged after seq in the transaction in progress:
-- writes that are no one's to send (a remote's answer mapped back).
function Ledger:unqueue(after_seq)
  self.store:run(SQL.unqueue, after_seq)
end

-- Changes after position to the entities (ids) that sync_id did not make.
function Ledger:changes(position, entity_ids_json, sync_id, limit)
  return self.store:rows(SQL.changes, position, entity_ids_json, sync_id, limit)
end

function Ledger:pending_changes(position, entity_ids_json, sync_id)
  return self.store:rows(SQL.pending_changes, position, entity_ids_json, sync_id)
end

function Ledger:pending_count(position, entity_ids_json, sync_id)
  return self.store:value(SQL.pending_count, position, entity_ids_json, sync_id)
end

function Ledger:prune_changes(upto_seq, entity_ids_json)
  self.store:run(SQL.prune, upto_seq, entity_ids_json)
end

-- The capture triggers of one entity table, as SQL. Each writes one change
-- row per target: { entity_id, id_expression } where the expression reads
-- the new or old row ("id" for the entity itself; the link column for a
-- split's other entity, so its changes are changes of the primary).
-- Updates are captured only when one of `columns` changes. `timed` adds
-- the time of the change (the newest conflict policy compares it).
function M.capture_sql(entity, targets, columns, timed)
  local at = timed and "(julianday('now') - 2440587.5) * 86400.0" or "NULL"
  local function body(row, operation)
    local inserts = {}
    for _, target in ipairs(targets) do
      inserts[#inserts + 1] = string.format(
        "  INSERT INTO entsync_changes (entity, local_id, operation, at) VALUES (%d, %s.\"%s\", %d, %s);",
        target.entity_id, row, target.column, operation, at)
    end
    return table.concat(inserts, "\n")
  end
  local quoted = {}
  for i, column in ipairs(columns) do quoted[i] = string.format('"%s"', column) end
  local deleted = {}
  for _, target in ipairs(targets) do
    -- a split's other entity deleted is a change of its primary; the
    -- primary deleted is a delete
    deleted[#deleted + 1] = { entity_id = target.entity_id, column = target.column,
      operation = target.column == "id" and 2 or 1 }
  end
  local delete_inserts = {}
  for _, target in ipairs(deleted) do
    delete_inserts[#delete_inserts + 1] = string.format(
      "  INSERT INTO entsync_changes (entity, local_id, operation, at) VALUES (%d, old.\"%s\", %d, %s);",
      target.entity_id, target.column, target.operation, at)
  end
  return {
    { name = string.format("entsync_%s_insert", entity), sql = string.format(
      'CREATE TRIGGER "entsync_%s_insert" AFTER INSERT ON "%s"\nBEGIN\n%s\nEND',
      entity, entity, body("new", 1)) },
    { name = string.format("entsync_%s_update", entity), sql = string.format(
      'CREATE TRIGGER "entsync_%s_update" AFTER UPDATE OF %s ON "%s"\nBEGIN\n%s\nEND',
      entity, table.concat(quoted, ", "), entity, body("new", 1)) },
    { name = string.format("entsync_%s_delete", entity), sql = string.format(
      'CREATE TRIGGER "entsync_%s_delete" AFTER DELETE ON "%s"\nBEGIN\n%s\nEND',
      entity, entity, table.concat(delete_inserts, "\n")) },
  }
end

SQL.trigger_sql = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1"
SQL.entsync_triggers = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'entsync\\_%' ESCAPE '\\'"

-- The SQL of a trigger as stored, or nil.
function Ledger:trigger_sql(name)
  return self.store:value(SQL.trigger_sql, name)
end

-- entsync's triggers: { name = table }.
function Ledger:triggers()
  local out = {}
  for _, row in ipairs(self.store:rows(SQL.entsync_triggers)) do out[row.name] = row.tbl_name end
  return out
end

-- state --------------------------------------------------------------------------------

SQL.state = [[SELECT cursor_mark, cursor_id, checkpoint, pass, pass_resume, pass_open, pass_unreadable,
  out_seq, fingerprint FROM entsync_state WHERE sync = ?1]]
SQL.save_state = [[INSERT INTO entsync_state
    (sync, cursor_mark, cursor_id, checkpoint, pass, pass_resume, pass_open, pass_unreadable, updated_at)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
  ON CONFLICT (sync) DO UPDATE SET cursor_mark = excluded.cursor_mark, cursor_id = excluded.cursor_id,
    checkpoint = excluded.checkpoint, pass = excluded.pass, pass_resume = excluded.pass_resume,
    pass_open = excluded.pass_open, pass_unreadable = excluded.pass_unreadable, updated_at = excluded.updated_at]]
SQL.set_position = [[INSERT INTO entsync_state (sync, out_seq, updated_at) VALUES (?1, ?2, ?3)
  ON CONFLICT (sync) DO UPDATE SET out_seq = excluded.out_seq, updated_at = excluded.updated_at]]
SQL.start_position = [[INSERT INTO entsync_state (sync, out_seq, updated_at) VALUES (?1, ?2, ?3)
  ON CONFLICT (sync) DO UPDATE SET out_seq = coalesce(out_seq, excluded.out_seq)]]
SQL.set_fingerprint = [[INSERT INTO entsync_state (sync, fingerprint, updated_at) VALUES (?1, ?2, ?3)
  ON CONFLICT (sync) DO UPDATE SET fingerprint = excluded.fingerprint]]
SQL.positions = [[SELECT s.name, t.out_seq FROM entsync_state t JOIN entsync_syncs s ON s.id = t.sync
  WHERE t.out_seq IS NOT NULL]]

-- A sync's state, with defaults for one that has none.
function Ledger:state(sync_id)
  local state = self.store:row(SQL.state, sync_id) or {}
  state.pass = state.pass or 0
  state.pass_open = state.pass_open or 0
  state.pass_unreadable = state.pass_unreadable or 0
  return state
end

function Ledger:save_state(sync_id, s)
  self.store:run(SQL.save_state, sync_id, s.cursor_mark, s.cursor_id, s.checkpoint, s.pass, s.pass_resume,
    s.pass_open, s.pass_unreadable, core.sys.now())
end

-- An exporting sync's position in the change log. A sync that starts to
-- export begins at the end of the log: what changed before it exported
-- is not its to send (export --all sends it).
function Ledger:position(sync_id)
  return (self.store:row(SQL.state, sync_id) or {}).out_seq
end

function Ledger:start_position(sync_id)
  -- changes migrated from schema 1's outbox were waiting for its exporter
  local from = self:meta("v1_outbox") and 0 or self:last_seq()
  self.store:run(SQL.start_position, sync_id, from, core.sys.now())
end

-- The schema 1 changes have their consumers now (after start_position).
function Ledger:v1_outbox_handed()
  self.store:run("DELETE FROM entsync_meta WHERE key = 'v1_outbox'")
end

function Ledger:set_position(sync_id, seq)
  self.store:run(SQL.set_position, sync_id, seq, core.sys.now())
end

function Ledger:set_fingerprint(sync_id, fingerprint)
  self.store:run(SQL.set_fingerprint, sync_id, fingerprint, core.sys.now())
end

SQL.reset_import = [[UPDATE entsync_state SET cursor_mark = NULL, cursor_id = NULL, checkpoint = NULL,
  pass_open = 0, pass_resume = NULL, pass_unreadable = 0, updated_at = ?2 WHERE sync = ?1]]
SQL.forget_raw_hashes = "UPDATE entsync_idmap SET raw_hash = NULL WHERE sync = ?1 AND raw_hash IS NOT NULL"

-- reset SYNC: the import's position is forgotten (cursor, checkpoint, the
-- full pass in progress) and so are the raw-line hashes, so the next run
-- reads and maps every record; the id map, rows, failures, export
-- position and history stay.
function Ledger:reset_import(sync_id)
  self.store:run(SQL.reset_import, sync_id, core.sys.now())
  self.store:run(SQL.forget_raw_hashes, sync_id)
end

-- failures --------------------------------------------------------------------------------

-- Failures are kept per sync and direction ("import": keyed by the remote
-- id's text, or "@file:line" for input that could not be read; "export":
-- keyed by the local id).
SQL.failure_keys = "SELECT key FROM entsync_failures WHERE sync = ?1 AND direction = ?2"
SQL.failure_attempts = "SELECT attempts FROM entsync_failures WHERE sync = ?1 AND direction = ?2 AND key = ?3"
SQL.save_failure = [[INSERT INTO entsync_failures
    (sync, direction, key, local_id, remote_id, error, payload, attempts, first_at, last_at, next_at, waits_for)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)
  ON CONFLICT (sync, direction, key) DO UPDATE SET error = excluded.error,
    local_id = coalesce(excluded.local_id, local_id), remote_id = coalesce(excluded.remote_id, remote_id),
    payload = coalesce(excluded.payload, payload), attempts = excluded.attempts,
    last_at = excluded.last_at, next_at = excluded.next_at, waits_for = excluded.waits_for]]
SQL.clear_failure = "DELETE FROM entsync_failures WHERE sync = ?1 AND direction = ?2 AND key = ?3"
SQL.due_failures = [[SELECT key, local_id, remote_id, payload, attempts FROM entsync_failures
  WHERE sync = ?1 AND direction = ?2 AND next_at <= ?3 ORDER BY first_at, key]]
SQL.next_due = "SELECT min(next_at) FROM entsync_failures WHERE sync = ?1 AND direction = ?2"
SQL.release_deferred = "UPDATE entsync_failures SET next_at = ?2 WHERE waits_for = ?1"
SQL.clear_unreadable = [[DELETE FROM entsync_failures
  WHERE sync = ?1 AND direction = 'import' AND key LIKE '@%' AND last_at < ?2]]
SQL.failures = [[SELECT direction, key, local_id, remote_id, error, payload, attempts, first_at, last_at,
  next_at, waits_for FROM entsync_failures WHERE sync = ?1 ORDER BY last_at DESC LIMIT ?2]]
SQL.failure_count = "SELECT count(*) FROM entsync_failures WHERE sync = ?1"
SQL.failure_count_dir = "SELECT count(*) FROM entsync_failures WHERE sync = ?1 AND direction = ?2"

function Ledger:failing(sync_id, direction)
  local set = {}
  for _, row in ipairs(self.store:rows(SQL.failure_keys, sync_id, direction)) do set[row.key] = true end
  return set
end

function Ledger:failure_attempts(sync_id, direction, key)
  return self.store:value(SQL.failure_attempts, sync_id, direction, key) or 0
end

-- f: { key, local_id, remote_id, error, payload (text), attempts, next_at, waits_for }
function Ledger:save_failure(sync_id, direction, f)
  -- no secret is stored: the message is redacted, the payload (retried
  -- as it is) loses the job's secret values only
  self.store:run(SQL.save_failure, sync_id, direction, f.key, f.local_id, f.remote_id, redact.text(f.error),
    redact.known(f.payload),
    f.attempts, core.sys.now(), f.next_at, f.waits_for)
end

function Ledger:clear_failure(sync_id, direction, key)
  self.store:run(SQL.clear_failure, sync_id, direction, key)
end

function Ledger:due_failures(sync_id, direction, now)
  return self.store:rows(SQL.due_failures, sync_id, direction, now)
end

function Ledger:next_due(sync_id, direction)
  return self.store:value(SQL.next_due, sync_id, direction)
end

-- A finished run of a sync makes the entities deferred on it due.
function Ledger:release_deferred(sync_name)
  self.store:run(SQL.release_deferred, sync_name, core.sys.now())
end

function Ledger:clear_unreadable(sync_id, before)
  self.store:run(SQL.clear_unreadable, sync_id, before)
end

function Ledger:failures(sync_id, limit)
  return self.store:rows(SQL.failures, sync_id, limit or -1)
end

SQL.make_due = [[UPDATE entsync_failures SET next_at = ?4 WHERE sync = ?1 AND key = ?2
  AND (?3 IS NULL OR direction = ?3)]]
SQL.make_all_due = "UPDATE entsync_failures SET next_at = ?2 WHERE sync = ?1"
SQL.dismiss = "DELETE FROM entsync_failures WHERE sync = ?1 AND key = ?2 AND (?3 IS NULL OR direction = ?3)"
SQL.dismiss_all = "DELETE FROM entsync_failures WHERE sync = ?1"

-- A key as the command line names a failure: "import:KEY" or
-- "export:KEY" for one direction, a bare key for both.
local function split_key(key)
  local direction, rest = tostring(key):match("^(%a+):(.+)$")
  if direction == "import" or direction == "export" then return rest, direction end
  return key, nil
end

-- Makes failures due now (keys: a list of keys, or nil for all); returns
-- how many.
function Ledger:make_due(sync_id, keys)
  local now = core.sys.now()
  if not keys then return (self.store:run(SQL.make_all_due, sync_id, now)) end
  local n = 0
  for _, given in ipairs(keys) do
    local key, direction = split_key(given)
    n = n + self.store:run(SQL.make_due, sync_id, key, direction, now)
  end
  return n
end

-- Forgets failures (keys, or nil for all); returns how many.
function Ledger:dismiss(sync_id, keys)
  if not keys then return (self.store:run(SQL.dismiss_all, sync_id)) end
  local n = 0
  for _, given in ipairs(keys) do
    local key, direction = split_key(given)
    n = n + self.store:run(SQL.dismiss, sync_id, key, direction)
  end
  return n
end

function Ledger:failure_count(sync_id, direction)
  if direction then return self.store:value(SQL.failure_count_dir, sync_id, direction) end
  return self.store:value(SQL.failure_count, sync_id)
end

-- runs ---------------------------------------------------------------------------------------

SQL.abandon_runs = "UPDATE entsync_runs SET status = 'killed' WHERE sync = ?1 AND status = 'running'"
SQL.start_run = [[INSERT INTO entsync_runs (sync, operation, mode, started_at, status, cursor_before, pid, host)
  VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)]]
SQL.progress_run = [[UPDATE entsync_runs SET created = ?2, updated = ?3, unchanged = ?4, stale = ?5,
  failed = ?6, deleted = ?7, skipped = ?8, conflicts = ?9, cursor_after = ?10 WHERE id = ?1]]
SQL.finish_run = [[UPDATE entsync_runs SET ended_at = ?2, status = ?3, created = ?4, updated = ?5,
  unchanged = ?6, stale = ?7, failed = ?8, deleted = ?9, skipped = ?10, conflicts = ?11, cursor_after = ?12,
  error = ?13 WHERE id = ?1]]
SQL.last_run = "SELECT * FROM entsync_runs WHERE sync = ?1 ORDER BY id DESC LIMIT 1"

-- A run of a sync that is still "running" when its sync starts again was
-- killed: its lease has been taken over.
function Ledger:start_run(sync_id, operation, mode, cursor_before)
  self.store:run(SQL.abandon_runs, sync_id)
  local _, id = self.store:run(SQL.start_run, sync_id, operation, mode, core.sys.now(), cursor_before,
    core.sys.getpid(), core.sys.hostname())
  return id
end

local function skipped(c) return (c.skipped or 0) + (c.filtered or 0) end

function Ledger:progress_run(run_id, c, cursor_after)
  self.store:run(SQL.progress_run, run_id, c.created, c.updated, c.unchanged, c.stale or 0, c.failed,
    c.deleted, skipped(c), c.conflicts or 0, cursor_after)
end

-- The run history's retention (the job's history setting): per sync at
-- most `runs` runs and none older than `days` days, except the last run
-- of each operation and status, which status and the metrics read.
SQL.prune_runs = [[DELETE FROM entsync_runs WHERE sync = ?1 AND status <> 'running'
  AND id NOT IN (SELECT max(id) FROM entsync_runs WHERE sync = ?1 GROUP BY operation, status)
  AND (started_at < ?2 OR id <= coalesce(
    (SELECT id FROM entsync_runs WHERE sync = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?3), 0))]]
SQL.run_sync = "SELECT sync FROM entsync_runs WHERE id = ?1"
M.HISTORY = { days = 90, runs = 10000 }

-- Totals per sync that only grow (the metrics' counters): kept in
-- entsync_meta as "totals:<sync id>", a JSON object, so pruning the
-- history never makes a counter go back.
local function add_totals(self, sync_id, status, c)
  local key = "totals:" .. tostring(sync_id)
  local json = require "entsync.json"
  local totals = json.try_decode(self.store:value(SQL.meta, key) or "{}")
  if type(totals) ~= "table" then totals = {} end
  local name = "runs_" .. tostring(status)
  totals[name] = (totals[name] or 0) + 1
  for _, outcome in ipairs({ "created", "updated", "unchanged", "stale", "failed", "deleted", "conflicts" }) do
    totals[outcome] = (totals[outcome] or 0) + (c[outcome] or 0)
  end
  self.store:run(SQL.set_meta, key, json.encode(json.object(totals)))
end

function Ledger:finish_run(run_id, status, c, cursor_after, err)
  local store = self.store
  store:run("SAVEPOINT finish_run")
  local ok, failure = pcall(function()
    store:run(SQL.finish_run, run_id, core.sys.now(), status, c.created, c.updated, c.unchanged,
      c.stale or 0, c.failed, c.deleted, skipped(c), c.conflicts or 0, cursor_after, redact.text(err))
    local sync_id = store:value(SQL.run_sync, run_id)
    if sync_id then
      add_totals(self, sync_id, status, c)
      local keep = self.history or M.HISTORY
      store:run(SQL.prune_runs, sync_id, core.sys.now() - keep.days * 86400, keep.runs)
    end
  end)
  if not ok then
    store:run("ROLLBACK TO finish_run")
    store:run("RELEASE finish_run")
    error(failure, 0)
  end
  store:run("RELEASE finish_run")
end

function Ledger:last_run(sync_id)
  return self.store:row(SQL.last_run, sync_id)
end

-- reading the record, for status, log and the metrics ----------------------------------

SQL.sync_list = "SELECT id, name, created_at FROM entsync_syncs ORDER BY id"
SQL.last_good_run = [[SELECT * FROM entsync_runs WHERE sync = ?1 AND operation = 'run' AND status = 'ok'
  ORDER BY id DESC LIMIT 1]]
SQL.last_managed_run = "SELECT * FROM entsync_runs WHERE sync = ?1 AND operation = 'run' ORDER BY id DESC LIMIT 1"
SQL.running_runs = "SELECT * FROM entsync_runs WHERE sync = ?1 AND status = 'running' ORDER BY id"
SQL.history_all = "SELECT * FROM entsync_history ORDER BY id DESC LIMIT ?1"
SQL.history_of = "SELECT * FROM entsync_history WHERE sync = ?1 ORDER BY id DESC LIMIT ?2"
SQL.recent_runs = [[SELECT id, operation, status, started_at, ended_at, created, updated, unchanged, failed, deleted
  FROM entsync_runs WHERE sync = ?1 ORDER BY id DESC LIMIT ?2]]
SQL.oldest_change = [[SELECT min(at) FROM entsync_changes
  WHERE seq > ?1 AND entity IN (SELECT value FROM json_each(?2)) AND (origin IS NULL OR origin <> ?3)]]
SQL.oldest_failure = "SELECT min(first_at) FROM entsync_failures WHERE sync = ?1 AND direction = ?2"

-- The syncs the store knows: { { id, name, created_at } } (status works
-- from these when the job file does not load).
function Ledger:sync_list()
  return self.store:rows(SQL.sync_list)
end

function Ledger:last_good_run(sync_id)
  return self.store:row(SQL.last_good_run, sync_id)
end

-- The last managed run (`run`, the daemon), as opposed to a one-off import,
-- refresh, retry or export.
function Ledger:last_managed_run(sync_id)
  return self.store:row(SQL.last_managed_run, sync_id)
end

function Ledger:running_runs(sync_id)
  return self.store:rows(SQL.running_runs, sync_id)
end

-- Runs, newest first, of one sync (its name) or all: entsync_history rows.
function Ledger:history(sync_name, limit)
  if sync_name then return self.store:rows(SQL.history_of, sync_name, limit or 20) end
  return self.store:rows(SQL.history_all, limit or 20)
end

function Ledger:recent_runs(sync_id, limit)
  return self.store:rows(SQL.recent_runs, sync_id, limit or 30)
end

function Ledger:totals(sync_id)
  local value = require("entsync.json").try_decode(self.store:value(SQL.meta, "totals:" .. tostring(sync_id)) or "{}")
  return type(value) == "table" and value or {}
end

-- When the oldest change waiting for a sync's export was made (nil when
-- the changes carry no time: only syncs whose conflict policy compares
-- times record it).
function Ledger:oldest_change(position, entity_ids_json, sync_id)
  return self.store:value(SQL.oldest_change, position, entity_ids_json, sync_id)
end

function Ledger:oldest_failure(sync_id, direction)
  return self.store:value(SQL.oldest_failure, sync_id, direction)
end

-- conflicts ------------------------------------------------------------------------------------

SQL.conflict = [[INSERT INTO entsync_conflicts (run_id, sync, direction, local_id, remote_id, local_hash,
  remote_hash, policy, winner, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)]]

-- c: { run_id, direction, local_id, remote_id, local_hash, remote_hash, policy, winner }
function Ledger:record_conflict(sync_id, c)
  self.store:run(SQL.conflict, c.run_id, sync_id, c.direction, c.local_id, c.remote_id, c.local_hash,
    c.remote_hash, c.policy, c.winner, core.sys.now())
end

-- meta -----------------------------------------------------------------------------------------

SQL.meta = "SELECT value FROM entsync_meta WHERE key = ?1"
SQL.set_meta = "INSERT OR REPLACE INTO entsync_meta (key, value) VALUES (?1, ?2)"

function Ledger:meta(key)
  return self.store:value(SQL.meta, key)
end

-- A random name of this store, made once: it keeps idempotency keys of one
-- store apart from another's.
function Ledger:store_id()
  if self.id then return self.id end
  local id = self:meta("store_id")
  if not id then
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(8) or tostring(core.sys.now()) .. tostring(core.sys.getpid())
    if f then f:close() end
    id = (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end)):sub(1, 16)
    self:set_meta("store_id", id)
  end
  self.id = id
  return id
end

function Ledger:set_meta(key, value)
  self.store:run(SQL.set_meta, key, value)
end

-- Whether the last complete pass of a sync read a remote id twice: its
-- next runs decode every line (skipping lines by their bytes would let the
-- two records of an id take turns in the row).
function Ledger:input_duplicates(sync_id)
  return self:meta("input_duplicates:" .. sync_id) == "1"
end

function Ledger:set_input_duplicates(sync_id, seen)
  if seen or self:input_duplicates(sync_id) then
    self:set_meta("input_duplicates:" .. sync_id, seen and "1" or "0")
  end
end

-- webhook events ---------------------------------------------------------------------------------

SQL.receive_event = [[INSERT INTO entsync_webhook_events (sync, event_id, ids, received_at) VALUES (?1, ?2, ?3, ?4)
  ON CONFLICT (sync, event_id) DO NOTHING]]
SQL.pending_events = [[SELECT seq, event_id, ids, received_at FROM entsync_webhook_events
  WHERE sync = ?1 AND done_at IS NULL ORDER BY seq LIMIT ?2]]
SQL.finish_events = "UPDATE entsync_webhook_events SET done_at = ?2 WHERE seq IN (SELECT value FROM json_each(?1))"
SQL.pending_event_count = "SELECT count(*) FROM entsync_webhook_events WHERE sync = ?1 AND done_at IS NULL"
SQL.prune_events = [[DELETE FROM entsync_webhook_events WHERE sync = ?1 AND done_at IS NOT NULL
  AND (received_at < ?2 OR seq <= coalesce(
    (SELECT seq FROM entsync_webhook_events WHERE sync = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?3), 0))]]

-- receive_event(sync_id, event_id, ids_json) -> true and its seq when the
-- event is new (recorded, its pull pending), false when the sync received
-- it before.
function Ledger:receive_event(sync_id, event_id, ids_json)
  local changes, seq = self.store:run(SQL.receive_event, sync_id, event_id, ids_json, core.sys.now())
  if changes == 1 then return true, seq end
  return false
end

-- The events whose pull has not committed, oldest first: { seq, event_id,
-- ids (JSON text), received_at }.
function Ledger:pending_events(sync_id, limit)
  return self.store:rows(SQL.pending_events, sync_id, limit)
end

-- Marks events (a JSON array of their seq) pulled, inside the pull's
-- transaction.
function Ledger:finish_events(seqs_json)
  self.store:run(SQL.finish_events, seqs_json, core.sys.now())
end

function Ledger:pending_event_count(sync_id)
  return self.store:value(SQL.pending_event_count, sync_id) or 0
end

-- Forgets pulled events received before `before` (epoch seconds), and all
-- but the newest `keep` events; pending ones stay.
function Ledger:prune_events(sync_id, before, keep)
  self.store:run(SQL.prune_events, sync_id, before, keep)
end

-- schema 1's id map, adopted -------------------------------------------------------------------

SQL.v1_exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entsync_idmap_v1'"
SQL.v1_rows = "SELECT 1 FROM entsync_idmap_v1 WHERE sync = ?1 LIMIT 1"
SQL.v1_primary = string.format([[INSERT OR IGNORE INTO entsync_idmap
    (key, sync, local_id, remote_id, changed, hash, raw_hash, synced_at, seen_pass, gone_at)
  SELECT CASE WHEN local_id >= 0 AND local_id < %d THEN (?1 << %d) | local_id
      ELSE (SELECT min(0, coalesce(min(key), 0)) FROM entsync_idmap) - row_number() OVER (ORDER BY local_id) END,
    ?1, local_id, remote_id, changed, hash, raw_hash, synced_at, seen_pass, gone_at
  FROM entsync_idmap_v1 WHERE sync = ?2 AND entity = ?3]], KEY_SPAN, KEY_BITS)
SQL.v1_forget = "DELETE FROM entsync_idmap_v1 WHERE sync = ?1"
SQL.v1_left = "SELECT 1 FROM entsync_idmap_v1 LIMIT 1"

-- Moves the schema 1 id-map rows of a sync into the id map: one row per
-- remote record, keyed by its primary entity's local id; the split's other
-- entities get that id in their link column (link = { entity = column }).
-- Their remote ids stay text, as schema 1 stored them, until a record
-- brings the id's own type (by_remote).
function Ledger:adopt_v1(sync_name, primary, links)
  local store = self.store
  if not store:value(SQL.v1_exists) or not store:value(SQL.v1_rows, sync_name) then return false end
  local sync_id = self:sync_id(sync_name)
  store:run(SQL.v1_primary, sync_id, sync_name, primary)
  for entity, column in pairs(links) do
    store:run(string.format([[UPDATE "%s" SET "%s" = (
        SELECT p.local_id FROM entsync_idmap_v1 s JOIN entsync_idmap_v1 p
          ON p.sync = s.sync AND p.remote_id = s.remote_id AND p.entity = ?2
        WHERE s.sync = ?1 AND s.entity = ?3 AND s.local_id = "%s".id)
      WHERE id IN (SELECT local_id FROM entsync_idmap_v1 WHERE sync = ?1 AND entity = ?3)]],
      entity, column, entity), sync_name, primary, entity)
  end
  store:run(SQL.v1_forget, sync_name)
  if not store:value(SQL.v1_left) then store:exec("DROP TABLE entsync_idmap_v1") end
  return true
end

function Ledger:has_v1()
  return self.store:value(SQL.v1_exists) ~= nil
end

M.SQL = SQL

return M
