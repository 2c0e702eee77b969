#!/usr/bin/env python3
"""bench_hand.py: the sync script an engineer would write by hand, for scripts/bench.

    python3 scripts/bench_hand.py DATA.ndjson STORE.db [BATCH]

The same job as scripts/bench_job.lua, written directly against json and
sqlite3: each contact is split into a user row and a profile row, an id map
remembers which local rows a remote id owns and the updated_at last stored,
and a record whose updated_at is not newer than the stored one is skipped
(an incremental import by the changed mark). Written to be fast the ordinary
way: one json.loads per line, batches of BATCH records in one transaction,
one IN (...) query per batch for the id map, local ids allocated in Python
so inserts go through executemany, WAL mode and synchronous=NORMAL as
entsync uses. No content hashing, failure bookkeeping, run log or resumable
cursor: what a one-off script skips.

Prints "created N, updated N, skipped N" on stdout.
"""

import json
import sqlite3
import sys

SCHEMA = """
CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY, email TEXT, name TEXT, status INTEGER, updated TEXT);
CREATE TABLE IF NOT EXISTS profile (id INTEGER PRIMARY KEY, company TEXT, city TEXT, tags TEXT, phone TEXT);
CREATE TABLE IF NOT EXISTS idmap (
  remote_id TEXT PRIMARY KEY, user_id INTEGER NOT NULL, profile_id INTEGER NOT NULL, changed TEXT
) WITHOUT ROWID;
"""

UPSERT_USER = """INSERT INTO user (id, email, name, status, updated) VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name,
  status = excluded.status, updated = excluded.updated"""
UPSERT_PROFILE = """INSERT INTO profile (id, company, city, tags, phone) VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (id) DO UPDATE SET company = excluded.company, city = excluded.city,
  tags = excluded.tags, phone = excluded.phone"""
UPSERT_IDMAP = """INSERT INTO idmap (remote_id, user_id, profile_id, changed) VALUES (?, ?, ?, ?)
  ON CONFLICT (remote_id) DO UPDATE SET changed = excluded.changed"""

LOOKUP_CHUNK = 900  # bound parameters per IN (...) query


def to_int(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: bench_hand.py DATA.ndjson STORE.db [BATCH]")
    path, store = sys.argv[1], sys.argv[2]
    batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 5000

    db = sqlite3.connect(store, isolation_level=None)
    db.execute("PRAGMA page_size=16384")  # as entsync's new stores
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    next_user = db.execute("SELECT coalesce(max(id), 0) FROM user").fetchone()[0]
    next_profile = db.execute("SELECT coalesce(max(id), 0) FROM profile").fetchone()[0]
    counts = {"created": 0, "updated": 0, "skipped": 0}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    loads = json.loads

    def flush(records):
        nonlocal next_user, next_profile
        known = {}
        ids = [rid for rid, _ in records]
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start:start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                    f"SELECT remote_id, user_id, profile_id, changed FROM idmap WHERE remote_id IN ({marks})", chunk):
                known[row[0]] = row
        users, profiles, idmap = [], [], []
        for rid, r in records:
            changed = r.get("updated_at")
            row = known.get(rid)
            if row is not None:
                if changed is not None and row[3] is not None and changed <= row[3]:
                    counts["skipped"] += 1
                    continue
                user_id, profile_id = row[1], row[2]
                counts["updated"] += 1
            else:
                next_user += 1
                next_profile += 1
                user_id, profile_id = next_user, next_profile
                counts["created"] += 1
            # A remote id seen twice in one batch maps to the rows made for it first.
            known[rid] = (rid, user_id, profile_id, changed)
            company = r.get("company") or {}
            phones = r.get("phones") or []
            users.append((user_id, r.get("email"), f'{r["first_name"]} {r["last_name"]}',
                          to_int(r.get("active")), changed))
            profiles.append((profile_id, company.get("name"), company.get("city"),
                             dumps(r.get("tags")),
                             phones[0].get("number") if phones else None))
            idmap.append((rid, user_id, profile_id, changed))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(UPSERT_USER, users)
        db.executemany(UPSERT_PROFILE, profiles)
        db.executemany(UPSERT_IDMAP, idmap)
        db.execute("COMMIT")

    pending = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = loads(line)
            pending.append((str(r["id"]), r))
            if len(pending) == batch_size:
                flush(pending)
                pending = []
    if pending:
        flush(pending)
    db.close()
    print("created {created}, updated {updated}, skipped {skipped}".format(**counts))


if __name__ == "__main__":
    main()
