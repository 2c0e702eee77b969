#!/usr/bin/env python3
"""scripts/bench_export.py: entsync's export speed.

    scripts/bench_export.py [N]       (scripts/bench runs it after the import benchmarks)

Export: N contacts (default 100,000; the drain takes about 9 minutes at the ideal rate) are
   imported from spec/support/fixture_server.py, then every local row is changed with one UPDATE
   through sqlite3 (as another program would), which queues N outbox rows; `entsync-run job.lua
   run` drains them with concurrency 8 against the fixture at 20 ms a request. Each export is a
   GET (the conflict check) and a PUT. The rate is requests per second of the drain, as the
   fixture's log counts them, beside the ideal 8 / 0.020 s = 400 requests a second; the target
   is 0.8 of it.
(The cost of change capture is scripts/bench_capture.py's.)
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


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    tmp = tempfile.mkdtemp(prefix="entsync-bench-export-")
    try:
        bench_export(tmp, n)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
