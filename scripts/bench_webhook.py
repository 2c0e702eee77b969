#!/usr/bin/env python3
"""scripts/bench_webhook.py: the latency from a webhook's POST to the local commit of what it names.

    scripts/bench_webhook.py            (scripts/bench runs it after the HTTP benchmarks)

Environment: BENCH_WEBHOOK_RATE (POSTs a second, default 1000), BENCH_WEBHOOK_SECONDS (default
30), BENCH_LATENCY_MS (the remote's answer time, default 20), BENCH_WEBHOOK_RECORDS (default 5000).

A daemon (entsync-run job.lua daemon --listen 127.0.0.1:0) serves one sync's webhook; its remote
is a small asyncio HTTP server in a process of its own (this file with --remote) that answers
each GET /contacts/<id> after BENCH_LATENCY_MS with the record, its name carrying a counter, so
every fetch is an update the pull writes. The sender, in this process, opens 8 keep-alive
connections and sends signed POSTs (HMAC-SHA256 of the body, X-Signature: sha256=<hex>) on an
open-loop schedule at the rate: the i-th POST is due at start + i / rate, each naming one remote
id (ids cycle over the records). Its send time is taken (time.time(), the wall clock) as its
first byte is written.

How the commit is observed: the pull that imports an event's ids marks the event pulled in the
same transaction (entsync_webhook_events.done_at = the daemon's wall clock, written just before
COMMIT, with no wait between them; WAL with synchronous=NORMAL, so COMMIT writes no fsync). After
the run the bench waits for every event to be pulled, then reads (event_id, received_at,
done_at) from the store: latency = done_at - send time, on the same host's clock. Every POST
must have been answered 202 and every event pulled, or the bench fails. Targets: p99 <= 100 ms,
and the sender keeping the rate (at least 0.95 of it).
"""

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTSYNC = os.path.join(ROOT, "bin", "entsync-run")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
RATE = float(os.environ.get("BENCH_WEBHOOK_RATE", "1000"))
SECONDS = float(os.environ.get("BENCH_WEBHOOK_SECONDS", "30"))
LATENCY_MS = float(os.environ.get("BENCH_LATENCY_MS", "20"))
RECORDS = int(os.environ.get("BENCH_WEBHOOK_RECORDS", "5000"))
CONNECTIONS = 8
SECRET = b"bench-secret-" + os.urandom(8).hex().encode()
TARGET_P99_MS = 100.0

JOB = """
entity "contact" {{ email = "text", name = "text" }}
local api = provider "http_json" {{ base_url = "http://127.0.0.1:{port}", concurrency = 64, attempts = 2 }}
sync "contacts" {{
  remote = api "contacts", entity = "contact", mapping = {{ email = "email", name = "name" }},
  webhook = {{ path = "/hooks/bench", secret = env "BENCH_HOOK_SECRET", ids = "data.ids", concurrency = 64 }},
}}
"""


# ------------------------------------------------------------------ the remote

async def body_length(reader):
    """Reads an HTTP message's header lines; returns its Content-Length (0 without one)."""
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            return length
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())


async def remote_main(port_file):
    served = [0]

    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                length = await body_length(reader)
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(LATENCY_MS / 1000.0)
                m = re.match(rb"GET /contacts/(\d+) ", line)
                if m:
                    served[0] += 1
                    rid = int(m.group(1))
                    body = json.dumps({"id": rid, "email": "c%d@example.org" % rid,
                                       "name": "Contact %d v%d" % (rid, served[0])}).encode()
                    status = b"200 OK"
                else:
                    body, status = b'{"error": "not found"}', b"404 Not Found"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    with open(port_file + ".part", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(port_file + ".part", port_file)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ the sender

def signed_post(i, n_records):
    rid = i % n_records + 1
    body = json.dumps({"id": "evt-%d" % i, "type": "contact.updated", "data": {"ids": [rid]}}).encode()
    signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return (b"POST /hooks/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Signature: sha256=" + signature.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


async def read_response(reader):
    status_line = await reader.readline()
    length = await body_length(reader)
    if length:
        await reader.readexactly(length)
    return int(status_line.split()[1])


async def send_all(port, total):
    sent_at, statuses, answer_ms = {}, {}, []
    queue = asyncio.Queue()
    start = time.monotonic() + 0.2
    behind = [0.0]

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            i = await queue.get()
            if i is None:
                break
            request = signed_post(i, RECORDS)
            t_send = time.time()
            t0 = time.monotonic()
            writer.write(request)
            await writer.drain()
            statuses[i] = await read_response(reader)
            answer_ms.append((time.monotonic() - t0) * 1000.0)
            sent_at["evt-%d" % i] = t_send
        writer.close()

    workers = [asyncio.ensure_future(connection()) for _ in range(CONNECTIONS)]
    for i in range(total):
        due = start + i / RATE
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            behind[0] = max(behind[0], -wait)
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - start
    return sent_at, statuses, answer_ms, elapsed, behind[0]


# ------------------------------------------------------------------ the run

def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


def wait_file(path, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
        time.sleep(0.02)
    raise SystemExit("bench_webhook: %s did not start" % what)


def main():
    tmp = tempfile.mkdtemp(prefix="entsync-bench-webhook-")
    remote = daemon = None
    try:
        port_file = os.path.join(tmp, "remote.port")
        remote = subprocess.Popen([PYTHON, os.path.abspath(__file__), "--remote", port_file])
        remote_port = int(wait_file(port_file, 10, "the remote"))
        with open(os.path.join(tmp, "job.lua"), "w") as f:
            f.write(JOB.format(port=remote_port))
        err_path = os.path.join(tmp, "daemon.err")
        env = dict(os.environ, BENCH_HOOK_SECRET=SECRET.decode())
        daemon = subprocess.Popen([ENTSYNC, "job.lua", "daemon", "--listen", "127.0.0.1:0"], cwd=tmp, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(err_path, "w"))
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            with open(err_path) as f:
                text = f.read()
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", text)
            if m and "daemon started" in text:
                port = int(m.group(1))
            else:
                time.sleep(0.02)
        if port is None:
            raise SystemExit("bench_webhook: the daemon did not start:\n" + open(err_path).read())

        total = int(RATE * SECONDS)
        print("Webhooks: %d signed POSTs at %.0f/s for %.0f s, one remote id each, %d ms remote latency, "
              "%d sender connections" % (total, RATE, SECONDS, LATENCY_MS, CONNECTIONS), flush=True)
        sent_at, statuses, answer_ms, elapsed, behind = asyncio.run(send_all(port, total))
        refused = {i: s for i, s in statuses.items() if s != 202}
        if refused or len(statuses) != total:
            raise SystemExit("bench_webhook: %d POSTs not answered 202 (of %d answered): %r" % (
                len(refused), len(statuses), list(refused.items())[:5]))

        db_path = os.path.join(tmp, "entsync.db")
        ticks = os.sysconf("SC_CLK_TCK")
        db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            pending = db.execute("SELECT count(*) FROM entsync_webhook_events WHERE done_at IS NULL").fetchone()[0]
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        rows = db.execute("SELECT event_id, received_at, done_at FROM entsync_webhook_events").fetchall()
        runs, created, updated = db.execute(
            "SELECT count(*), sum(created), sum(updated) FROM entsync_runs WHERE operation = 'webhook'").fetchone()
        db.close()
        with open("/proc/%d/stat" % daemon.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        daemon_cpu = (int(fields[11]) + int(fields[12])) / ticks
        if pending or len(rows) != total:
            raise SystemExit("bench_webhook: %d events stored, %d still pending" % (len(rows), pending))
        latency = [(done - sent_at[event]) * 1000.0 for event, _, done in rows]
        if os.environ.get("BENCH_WEBHOOK_TRACE"):
            first = min(sent_at.values())
            by_second = {}
            for event, _, done in rows:
                by_second.setdefault(int(sent_at[event] - first), []).append((done - sent_at[event]) * 1000.0)
            for second in sorted(by_second):
                print("  second %2d: p50 %6.1f ms, p99 %6.1f ms, max %6.1f ms" % (
                    second, percentile(by_second[second], 50), percentile(by_second[second], 99),
                    max(by_second[second])))
        inside = [(done - received) * 1000.0 for _, received, done in rows]
        rate = total / elapsed
        p50, p99, top = percentile(latency, 50), percentile(latency, 99), max(latency)
        print("%-44s %10s %10s %10s" % ("", "p50 ms", "p99 ms", "max ms"))
        print("%-44s %10.1f %10.1f %10.1f" % ("POST sent -> local commit", p50, p99, top))
        print("%-44s %10.1f %10.1f %10.1f" % ("  of which: stored (202) -> commit", percentile(inside, 50),
                                              percentile(inside, 99), max(inside)))
        print("%-44s %10.2f %10.2f %10.2f" % ("  the 202 answer, as the sender saw it", percentile(answer_ms, 50),
                                              percentile(answer_ms, 99), max(answer_ms)))
        print("pulls: %d runs of operation webhook (%.1f events each), %d created, %d updated; sender fell at most "
              "%.1f ms behind its schedule" % (runs, total / max(runs, 1), created or 0, updated or 0, behind * 1000))
        print("daemon CPU: %.1f s for %d events (%.0f us each: the POST, its commit, the get, the write); load "
              "average %.2f" % (daemon_cpu, total, daemon_cpu / total * 1e6, os.getloadavg()[0]))
        print("%-44s %10s %10s  %s" % ("target", "measured", "target", "result"))
        print("%-44s %10.1f %10s  %s" % ("p99 POST -> commit, ms", p99, "<= 100",
                                         "PASS" if p99 <= TARGET_P99_MS else "MISS"))
        print("%-44s %10.0f %10s  %s" % ("POSTs a second sent", rate, ">= %.0f" % (0.95 * RATE),
                                         "PASS" if rate >= 0.95 * RATE else "MISS"))
        return 0
    finally:
        if daemon:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if remote:
            remote.terminate()
            remote.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--remote":
        try:
            asyncio.run(remote_main(sys.argv[2]))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    sys.exit(main())
