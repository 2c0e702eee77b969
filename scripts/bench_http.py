#!/usr/bin/env python3
"""scripts/bench_http.py: entsync's HTTP import speed against the fixture remote.

    scripts/bench_http.py [N]          (scripts/bench runs it after the file benchmarks)

N records (default 20000) are served by spec/support/fixture_server.py on 127.0.0.1 with
20 ms of latency on every request and 100 records a page (page-number pagination). An
incremental http_json sync imports them into a fresh store, once with concurrency 8 and once
with concurrency 1. The ideal rate is concurrency x 100 records / 0.020 s: 40,000/s and
5,000/s; the targets are 0.8 of each. The rate is records per second of the run itself, as
entsync's summary line reports it (start-up excluded), and of the whole process beside it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTSYNC = os.path.join(ROOT, "bin", "entsync-run")
SERVER = os.path.join(ROOT, "spec", "support", "fixture_server.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LATENCY_MS = int(os.environ.get("BENCH_LATENCY_MS", "20"))
PAGE = 100

JOB = """
entity "contact" {{ email = "text", name = "text", updated = "timestamp" }}
local api = provider "http_json" {{
  base_url = "http://127.0.0.1:{port}", page = {{ style = "page", size = {page} }},
  concurrency = {concurrency}, since = {{ param = "updated_from" }}, ordered = true,
}}
sync "contacts" {{
  remote = api "/page/contacts", entity = "contact",
  mapping = {{ email = "email", name = "name", updated = "updated_at" }},
  import = {{ mode = "incremental", changed = "updated_at", batch = 1000 }},
}}
"""


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    tmp = tempfile.mkdtemp(prefix="entsync-bench-http-")
    server = None
    try:
        records = [{"id": i, "email": "user%d@example.org" % i, "name": "User %d" % i,
                    "updated_at": "2026-01-%02dT%02d:%02d:%02dZ" % (1 + i // 86400 % 28, i // 3600 % 24,
                                                                      i // 60 % 60, i % 60)}
                   for i in range(1, n + 1)]
        data = os.path.join(tmp, "data.json")
        with open(data, "w") as f:
            json.dump({"resources": {"contacts": records}}, f)
        out = open(os.path.join(tmp, "server.out"), "w+")
        server = subprocess.Popen([PYTHON, SERVER, "--data", data, "--latency-ms", str(LATENCY_MS),
                                   "--max-seconds", "600"], stdout=out, stderr=subprocess.STDOUT)
        port = None
        for _ in range(100):
            out.seek(0)
            m = re.match(r"LISTENING (\d+)", out.read())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.05)
        if port is None:
            print("bench_http: the fixture server did not start")
            return 1
        # The fixture sorts a resource on its first listing (tens of ms for
        # 20,000 records): one request before the runs keeps that out.
        urllib.request.urlopen("http://127.0.0.1:%d/page/contacts?page=1&per_page=1" % port).read()
        print("HTTP import: %d records, %d a page, %d ms latency per request" % (n, PAGE, LATENCY_MS))
        print("%-14s %10s %12s %14s %8s %8s" % ("concurrency", "seconds", "records/s", "process rec/s", "ideal", "target"))
        failed = False
        for concurrency in [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "8,1").split(",")]:
            job_dir = os.path.join(tmp, "c%d" % concurrency)
            os.makedirs(job_dir)
            with open(os.path.join(job_dir, "job.lua"), "w") as f:
                f.write(JOB.format(port=port, page=PAGE, concurrency=concurrency))
            started = time.monotonic()
            run = subprocess.run([ENTSYNC, "job.lua", "run", "--no-progress"], cwd=job_dir,
                                 capture_output=True, text=True)
            wall = time.monotonic() - started
            m = re.search(r"contacts: (\d+) created.* in ([\d.]+)s", run.stdout)
            if run.returncode != 0 or not m or int(m.group(1)) != n:
                print("bench_http: the run failed:", run.stdout, run.stderr)
                return 1
            seconds = float(m.group(2))
            rate = n / seconds
            ideal = concurrency * PAGE / (max(LATENCY_MS, 1) / 1000.0)
            verdict = "PASS" if rate >= 0.8 * ideal else "MISS"
            failed = failed or verdict == "MISS"
            print("%-14d %10.2f %12.0f %14.0f %8.0f %8s (%.2f of ideal)" % (
                concurrency, seconds, rate, n / wall, ideal, verdict, rate / ideal))
        return 0
    finally:
        if server:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
