#!/usr/bin/env python3
"""scripts/bench_export.py: entsync's export speed and the cost of change capture.

    scripts/bench_export.py [N]       (scripts/bench runs it after the import benchmarks)

1. Export: N contacts (default 100,000; the drain takes about 9 minutes at the ideal rate) are
   imported from spec/support/fixture_server.py, then every local row is changed with one UPDATE
   through sqlite3 (as another program would), which queues N outbox rows; `entsync-run job.lua
   run` drains them with concurrency 8 against the fixture at 20 ms a request. Each export is a
   GET (the conflict check) and a PUT. The rate is requests per second of the drain, as the
   fixture's log counts them, beside the ideal 8 / 0.020 s = 400 requests a second; the target
   is 0.8 of it.
2. Change capture: writes to a table without and with entsync's capture triggers (the SQL
   entsync installs, read from its ledger) and with only an empty trigger whose WHEN is false
   (what any row trigger costs in SQLite): a bulk UPDATE of exported columns, single-row
   UPDATEs each in its own transaction, and a bulk UPDATE of a column no sync exports.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTSYNC = os.path.join(ROOT, "bin", "entsync-run")
SERVER = os.path.join(ROOT, "spec", "support", "fixture_server.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LATENCY_MS = 20
CONCURRENCY = 8

JOB = """
entity "contact" {{ email = "text", name = "text" }}
local api = provider "http_json" {{
  base_url = "http://127.0.0.1:{port}", page = {{ style = "page", size = 100 }}, concurrency = {concurrency},
  since = {{ param = "updated_from" }}, ordered = true, update_method = "PUT",
}}
sync "contacts" {{
  remote = api "/api/contacts", entity = "contact", mapping = {{ email = "email", name = "name" }},
  import = {{ mode = "incremental", changed = "updated_at", batch = 1000 }},
  export = {{ on_change = true, batch = 1000 }},
}}
"""


def control(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req) as r:
        text = r.read()
    return json.loads(text) if text else None


def start_server(tmp, records):
    data = os.path.join(tmp, "data.json")
    with open(data, "w") as f:
        json.dump({"resources": {"contacts": records}}, f)
    out = open(os.path.join(tmp, "server.out"), "w+")
    server = subprocess.Popen([PYTHON, SERVER, "--data", data, "--max-seconds", "1800"],
                              stdout=out, stderr=subprocess.STDOUT)
    for _ in range(100):
        out.seek(0)
        m = re.match(r"LISTENING (\d+)", out.read())
        if m:
            return server, int(m.group(1))
        time.sleep(0.05)
    raise SystemExit("bench_export: the fixture server did not start")


def bench_export(tmp, n):
    records = [{"id": i, "email": "user%d@example.org" % i, "name": "User %d" % i,
                "updated_at": "2026-01-01T00:00:00.000Z"} for i in range(1, n + 1)]
    server, port = start_server(tmp, records)
    try:
        job_dir = os.path.join(tmp, "export")
        os.makedirs(job_dir)
        with open(os.path.join(job_dir, "job.lua"), "w") as f:
            f.write(JOB.format(port=port, concurrency=CONCURRENCY))
        run = subprocess.run([ENTSYNC, "job.lua", "run", "--no-progress"], cwd=job_dir, capture_output=True, text=True)
        if run.returncode != 0 or ("%d created" % n) not in run.stdout:
            raise SystemExit("bench_export: the import failed: " + run.stdout + run.stderr)
        db = sqlite3.connect(os.path.join(job_dir, "entsync.db"))
        db.execute("UPDATE contact SET name = name || ' (changed)'")
        db.commit()
        queued = db.execute("SELECT count(*) FROM entsync_changes WHERE origin IS NULL").fetchone()[0]
        db.close()
        control(port, "/_control/latency", {"ms": LATENCY_MS})
        control(port, "/_control/reset_log", {})
        run = subprocess.run([ENTSYNC, "job.lua", "run", "--no-progress"], cwd=job_dir, capture_output=True, text=True)
        m = re.search(r"contacts: exported \d+ created, (\d+) updated.* in ([\d.]+)s", run.stdout)
        if run.returncode != 0 or not m or int(m.group(1)) != n:
            raise SystemExit("bench_export: the drain failed: " + run.stdout + run.stderr)
        log = control(port, "/_control/log")
        writes = [e for e in log if e["method"] == "PUT"]
        reads = [e for e in log if e["method"] == "GET" and re.search(r"/api/contacts/\d+$", e["path"])]
        first = min(e["start"] for e in writes + reads)
        last = max(e["end"] for e in writes + reads)
        seconds = float(m.group(2))
        requests = len(writes) + len(reads)
        rate = requests / seconds
        ideal = CONCURRENCY / (LATENCY_MS / 1000.0)
        print("Export: %d changed contacts logged by one UPDATE (%d change rows), concurrency %d, %d ms a request"
              % (n, queued, CONCURRENCY, LATENCY_MS))
        print("  %d PUT + %d GET in %.2fs (server saw %.2fs): %.0f requests/s, %.0f entities/s; ideal %.0f requests/s: "
              "%s (%.2f of ideal)" % (len(writes), len(reads), seconds, last - first, rate, n / seconds, ideal,
                                      "PASS" if rate >= 0.8 * ideal else "MISS", rate / ideal))
    finally:
        server.terminate()
        server.wait(timeout=10)


def capture_sql():
    """The capture triggers entsync installs on a table t(id, name, n, other) whose
    exported columns are name and n, from entsync's own ledger."""
    expr = ('local out = {} for _, t in ipairs(require("entsync.ledger").capture_sql("t", '
            '{ { entity_id = 1, column = "id" } }, { "n", "name" }, false)) do out[#out + 1] = t.sql .. ";" end '
            'return table.concat(out, "\\n")')
    run = subprocess.run([ENTSYNC, os.path.join(ROOT, "examples", "quickstart", "job.lua"), "repl", "-e", expr],
                         capture_output=True, text=True)
    text = run.stdout.strip()
    if run.returncode != 0 or not text.startswith('"'):
        raise SystemExit("bench_export: cannot read the trigger SQL: " + run.stdout + run.stderr)
    return json.loads(text.replace("\\\n", "\\n"))


def timed(db, sql, rows=None, autocommit=False):
    started = time.perf_counter()
    if rows is None:
        db.execute(sql)
        db.commit()
    elif autocommit:
        for row in rows:
            db.execute(sql, row)
            db.commit()
    else:
        db.executemany(sql, rows)
        db.commit()
    return time.perf_counter() - started


# The least a row trigger costs: its body never runs. In SQLite a row trigger's WHEN is
# evaluated inside the trigger's own program, so this measures the price of having any
# row trigger on the table at all, whatever it does.
EMPTY_TRIGGER = """
CREATE TRIGGER t_empty_update AFTER UPDATE ON t WHEN 0 BEGIN SELECT 1; END;
"""

TARGETS = {"bulk": 1.20, "single": 0.70, "unexported": 0.10}


def bench_capture(tmp, rows=100000, single_rows=10000, repeat=3):
    """Three kinds of write, on a plain table, with entsync's capture triggers, and with an
    empty trigger: one bulk UPDATE of the exported columns, single-row UPDATEs each in its own
    transaction (autocommit, as an application writes), and one bulk UPDATE of a column no sync
    exports."""
    variants = (("plain", None), ("capture", capture_sql()), ("empty", EMPTY_TRIGGER))
    results = {}
    for variant, triggers in variants:
        path = os.path.join(tmp, "capture-%s.db" % variant)
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript("""
          CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, other INTEGER);
          CREATE TABLE entsync_changes (seq INTEGER PRIMARY KEY, entity INTEGER NOT NULL, local_id INTEGER,
            operation INTEGER NOT NULL, origin INTEGER, at REAL);""")
        if triggers:
            db.executescript(triggers)
        db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", ((i, "name %d" % i, i, i) for i in range(rows)))
        db.commit()
        bulk, single, unexported = [], [], []
        for _ in range(repeat):
            db.execute("DELETE FROM entsync_changes")
            db.commit()
            bulk.append(timed(db, "UPDATE t SET n = n + 1, name = name"))
            db.execute("DELETE FROM entsync_changes")
            db.commit()
            single.append(timed(db, "UPDATE t SET n = ? WHERE id = ?", [(i * 2, i) for i in range(single_rows)],
                                autocommit=True))
            db.execute("DELETE FROM entsync_changes")
            db.commit()
            unexported.append(timed(db, "UPDATE t SET other = other + 1"))
        db.close()
        results[variant] = {"bulk": min(bulk), "single": min(single), "unexported": min(unexported)}
    print("Change capture: without and with entsync's capture triggers, and with an empty trigger")
    for key, label in (("bulk", "bulk UPDATE, %d rows, exported columns" % rows),
                       ("single", "%d single-row UPDATEs, autocommit" % single_rows),
                       ("unexported", "bulk UPDATE, %d rows, unexported column" % rows)):
        plain, captured, empty = results["plain"][key], results["capture"][key], results["empty"][key]
        added = (captured - plain) / plain
        print("  %-44s %.3fs -> %.3fs: %+.0f%% (target <= +%.0f%%: %s); empty trigger: %.3fs, %+.0f%%" % (
            label, plain, captured, added * 100, TARGETS[key] * 100, "PASS" if added <= TARGETS[key] else "MISS",
            empty, (empty - plain) / plain * 100))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    tmp = tempfile.mkdtemp(prefix="entsync-bench-export-")
    try:
        bench_export(tmp, n)
        bench_capture(tmp)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
