#!/usr/bin/env python3
"""scripts/bench_export.py: entsync's export speed, with single writes and with a batch verb.

    scripts/bench_export.py [N]       (scripts/bench runs it after the import benchmarks)

N contacts (default 100,000, or BENCH_EXPORT_N; the single-write drain takes about 9 minutes at
the ideal rate) are imported from scripts/bench_fixture.py, then every local row is changed with
one UPDATE through sqlite3 (as another program would), which queues N outbox rows, and
`entsync-run job.lua run` drains them with concurrency 8 against the remote at 20 ms a request:

  single writes  http_json, update_method PUT: each export is a GET (the conflict check) and a
                 PUT. The rate is requests per second of the drain (entsync's summary line),
                 beside the ideal 8 / 0.020 s = 400 requests a second; the target is 0.9 of it.
  batch verb     examples/feed's docstore provider (write_batch posts /_bulk_docs and get_batch
                 /_all_docs, up to the export's batch of 1000 at once: a batch's records are read
                 in one request before its writes): its records a second beside the single
                 writes' records a second; target 5x.
and, beside the single writes, the remote timed alone: bench_fixture.py's own client reading and
writing back 5,000 of the records (a GET and a PUT each) at the same concurrency and latency,
which shows the remote is not the limit.
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_http import ENTSYNC, FIXTURE, PYTHON, ROOT, run_timed, start_fixture  # noqa: E402

LATENCY_MS = 20
CONCURRENCY = 8
RATE_TARGET = 0.9
BATCH_TARGET = 5.0
ALONE_RECORDS = 5000  # the remote timed alone on this many records' GET and PUT (a rate: fewer do)

SINGLE_JOB = """
entity "contact" {{ email = "text", name = "text" }}
local api = provider "http_json" {{
  base_url = "http://127.0.0.1:{port}", page = {{ style = "page", size = 100 }}, concurrency = {concurrency},
  update_method = "PUT",
}}
sync "contacts" {{
  remote = api "/api/contacts", entity = "contact", mapping = {{ email = "email", name = "name" }},
  import = {{ mode = "full", batch = 1000 }},
  export = {{ on_change = true, batch = 1000 }},
}}
"""

BATCH_JOB = """
entity "contact" {{ email = "text", name = "text" }}
local docs = provider "docstore" {{ base_url = "http://127.0.0.1:{port}", db = "contacts",
  concurrency = {concurrency} }}
sync "contacts" {{
  remote = docs, entity = "contact", id = "_id", mapping = {{ email = "email", name = "name" }},
  import = {{ mode = "full" }},
  export = {{ on_change = true, batch = 1000 }},
}}
"""


def control(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def run(job_dir, what):
    """Runs the job; (its stdout, its CPU seconds)."""
    code, out, err, _, cpu = run_timed([ENTSYNC, "job.lua", "run", "--no-progress"], job_dir)
    if code != 0:
        raise SystemExit("bench_export: %s failed: %s%s" % (what, out, err))
    return out, cpu


def remote_alone(port, records):
    """The fixture's own rate for single writes: requests a second of its client reading and writing
    back records 1..records (a GET and a PUT each) over CONCURRENCY keep-alive connections."""
    run = subprocess.run([PYTHON, FIXTURE, "client", "--port", str(port), "--path", "/api/contacts",
                          "--records", str(records), "--concurrency", str(CONCURRENCY)],
                         capture_output=True, text=True)
    m = re.match(r"CLIENT ([\d.]+) (\d+)", run.stdout)
    if run.returncode != 0 or not m or int(m.group(2)) != 2 * records:
        raise SystemExit("bench_export: the remote-alone client failed: " + run.stdout + run.stderr)
    return int(m.group(2)) / float(m.group(1))


def drain(tmp, name, job, n, data):
    """Imports n contacts with job, changes every row, drains them; (seconds, CPU seconds of the run,
    stats of the remote)."""
    path = os.path.join(tmp, name)
    os.makedirs(path)
    with open(path + "/data.json", "w") as f:
        json.dump(data, f)
    server, port = start_fixture(path, path + "/data.json", 0)
    try:
        if name == "batch":
            os.makedirs(os.path.join(path, "providers"))
            shutil.copyfile(os.path.join(ROOT, "examples", "feed", "providers", "docstore.lua"),
                            os.path.join(path, "providers", "docstore.lua"))
        with open(os.path.join(path, "job.lua"), "w") as f:
            f.write(job.format(port=port, concurrency=CONCURRENCY))
        out, _ = run(path, "the import")
        if ("%d created" % n) not in out:
            raise SystemExit("bench_export: the import did not create %d: %s" % (n, out))
        db = sqlite3.connect(os.path.join(path, "entsync.db"))
        db.execute("UPDATE contact SET name = name || ' (changed)'")
        db.commit()
        db.close()
        control(port, "/_control/latency", {"ms": LATENCY_MS})
        control(port, "/_control/reset_stats", {})
        out, cpu = run(path, "the drain")
        m = re.search(r"contacts: exported \d+ created, (\d+) updated.* in ([\d.]+)s", out)
        if not m or int(m.group(1)) != n:
            raise SystemExit("bench_export: the drain did not update %d: %s" % (n, out))
        stats = control(port, "/_control/stats")
        if name == "single":
            stats["alone"] = remote_alone(port, min(n, ALONE_RECORDS))
        return float(m.group(2)), cpu, stats
    finally:
        server.terminate()
        server.wait(timeout=10)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_EXPORT_N", "100000"))
    tmp = tempfile.mkdtemp(prefix="entsync-bench-export-")
    try:
        records = [{"id": i, "email": "user%d@example.org" % i, "name": "User %d" % i,
                    "updated_at": "2026-01-01T00:00:00.000Z"} for i in range(1, n + 1)]
        seconds, cpu, stats = drain(tmp, "single", SINGLE_JOB, n, {"resources": {"contacts": records}})
        docs = [{"_id": str(r["id"]), "email": r["email"], "name": r["name"]} for r in records]
        batch_seconds, batch_cpu, batch_stats = drain(tmp, "batch", BATCH_JOB, n, {"feeds": {"contacts": docs}})
        ideal = CONCURRENCY / (LATENCY_MS / 1000.0)
        requests = stats["by_kind"].get("record", 0) + stats["by_kind"].get("write", 0)  # not the listing
        rate = requests / seconds
        single_rps, batch_rps = n / seconds, n / batch_seconds
        print("Export: %d changed contacts logged by one UPDATE, concurrency %d, %d ms a request "
              "(remote: scripts/bench_fixture.py)" % (n, CONCURRENCY, LATENCY_MS))
        print("%-36s %8s %6s %9s %10s %9s %8s  %s" % ("drain", "seconds", "cpu s", "requests", "records/s",
                                                      "measured", "target", "result"))
        print("-" * 100)
        alone = stats["alone"]
        print("%-36s %8s %6s %9d %10s %9.2f %8s  %s  (%.0f requests/s; %.2fx entsync's rate)" % (
            "remote alone (asyncio client)", "", "", 2 * min(n, ALONE_RECORDS), "", alone / ideal,
            ">= %g" % RATE_TARGET, "allows the target" if alone >= RATE_TARGET * ideal else "below the target",
            alone, alone / rate))
        print("%-36s %8.2f %6.2f %9d %10.0f %9.2f %8s  %s  (%.0f requests/s of ideal %.0f)" % (
            "single writes (http_json GET + PUT)", seconds, cpu, requests, single_rps, rate / ideal,
            ">= %g" % RATE_TARGET, "PASS" if rate >= RATE_TARGET * ideal else "MISS", rate, ideal))
        kinds = batch_stats["by_kind"]
        print("%-36s %8.2f %6.2f %9d %10.0f %9.2f %8s  %s  (x single writes; %d GET + %d _all_docs + %d bulk "
              "of %d docs)" % (
                  "batch verb (docstore write_batch)", batch_seconds, batch_cpu,
                  kinds.get("record", 0) + kinds.get("all_docs", 0) + kinds.get("bulk", 0), batch_rps,
                  batch_rps / single_rps, ">= %g" % BATCH_TARGET,
                  "PASS" if batch_rps >= BATCH_TARGET * single_rps else "MISS",
                  kinds.get("record", 0), kinds.get("all_docs", 0), kinds.get("bulk", 0), batch_stats["docs"]))
        print("(seconds: the drain's, from entsync's summary line; cpu s: the whole run's user + sys, from wait4)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
