#!/usr/bin/env python3
"""scripts/bench_queue.py: entsync consuming a Redis stream (the redis_stream provider).

    scripts/bench_queue.py            (scripts/bench runs it after the other benchmarks)

A redis-server is started on a private port in a temp dir (no persistence). One job consumes
stream "events" through a consumer group into a store (one row a message).

1. Latency: `entsync-run job.lua daemon` consumes while this script XADDs messages at RATE a
   second for SECONDS (default 1,000 a second for 30 s), each carrying the wall-clock time it
   was sent (data.sent_us, taken just before the XADD is written). A second thread watches
   the store through its own SQLite connection: it reads PRAGMA data_version every 0.5 ms and,
   when another connection has committed, reads the new rows (rowid above the last seen) and
   takes now - sent_us for each. A row is visible only once its transaction has committed, so
   each figure is the time from XADD to the local commit plus at most the watcher's 0.5 ms
   and the read: an upper bound, never an underestimate. p50 and p99 over every message;
   target p99 <= 50 ms.
2. Drain: BACKLOG messages (default 200,000) are XADDed first (pipelined), then one
   `entsync-run job.lua run events` consumes them and stops once nothing is pending. The rate
   is messages per wall-clock second of that process, start-up included; target >= 20,000.

Each phase checks that the store holds one row a message and that nothing is left pending once
entsync has stopped.
Environment: BENCH_QUEUE_RATE, BENCH_QUEUE_SECONDS, BENCH_QUEUE_BACKLOG
shrink it for a quick run. Exits 1 when something failed to run or a check failed.
"""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTSYNC = os.path.join(ROOT, "bin", "entsync-run")
RATE = int(os.environ.get("BENCH_QUEUE_RATE", "1000"))
SECONDS = float(os.environ.get("BENCH_QUEUE_SECONDS", "30"))
BACKLOG = int(os.environ.get("BENCH_QUEUE_BACKLOG", "200000"))
TARGET_P99_MS = 50.0
TARGET_DRAIN = 20000.0

JOB = """
store "events.db"
entity "event" {{ name = "text", n = "integer", sent_us = "integer" }}
local q = provider "redis_stream" {{ url = "redis://127.0.0.1:{port}", group = "bench", count = 1000, block = 1000 }}
sync "events" {{
  remote = q "events", entity = "event", id = "id",
  mapping = {{ name = "data.name", n = "data.n", sent_us = "data.sent_us" }},
  import = {{ mode = "incremental", changed = "version", changed_kind = "number", batch = 5000 }},
}}
"""


class BenchError(Exception):
    pass


def say(*parts):
    print(*parts, flush=True)


def command(*args):
    """One command in RESP (bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Redis:
    """A minimal RESP client: send commands, read as many replies."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise BenchError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise BenchError("redis: " + rest.decode())
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 16)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise BenchError(f"redis: unexpected reply {line!r}")

    def send(self, data):
        self.sock.sendall(data)

    def call(self, *args):
        self.send(command(*args))
        return self._reply()

    def replies(self, n):
        return [self._reply() for _ in range(n)]


def message(i, sent_us=0):
    data = '{"name":"m%d","n":%d,"sent_us":%d}' % (i, i, sent_us)
    return command("XADD", "events", "*", "id", i, "op", "upsert", "version", 1, "data", data)


def start_redis(tmp):
    for attempt in range(20):
        port = 20000 + (os.getpid() * 7 + attempt * 131) % 20000
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if proc.poll() is not None:
                break
            try:
                r = Redis(port)
                if r.call("PING") == b"PONG":
                    return proc, port, r
            except OSError:
                time.sleep(0.01)
        proc.kill()
        proc.wait()
    raise BenchError("no redis-server could be started")


def run_entsync(tmp, *args):
    r = subprocess.run([ENTSYNC, "job.lua", *args], cwd=tmp, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"entsync-run {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def watch(db, expected, latencies, done):
    """Reads the rows other connections commit, as soon as data_version moves."""
    conn = sqlite3.connect(db, isolation_level=None)
    last_version, last_rowid = None, 0
    deadline = time.time() + SECONDS + 60
    while len(latencies) < expected and time.time() < deadline and not done.is_set():
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != last_version:
            last_version = version
            rows = conn.execute("SELECT rowid, sent_us FROM event WHERE rowid > ?", (last_rowid,)).fetchall()
            now_us = time.time() * 1e6
            for rowid, sent_us in rows:
                latencies.append((now_us - sent_us) / 1000.0)
                last_rowid = max(last_rowid, rowid)
        else:
            time.sleep(0.0005)
    conn.close()


def latency_phase(tmp, r):
    n = int(RATE * SECONDS)
    daemon = subprocess.Popen([ENTSYNC, "job.lua", "daemon"], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "daemon.log"), "w"))
    try:
        deadline = time.time() + 15
        while "daemon started" not in open(os.path.join(tmp, "daemon.log")).read():
            if time.time() > deadline or daemon.poll() is not None:
                raise BenchError("the daemon did not start: " + open(os.path.join(tmp, "daemon.log")).read())
            time.sleep(0.05)
        latencies, done = [], threading.Event()
        watcher = threading.Thread(target=watch, args=(os.path.join(tmp, "events.db"), n, latencies, done))
        watcher.start()
        start = time.time()
        for i in range(1, n + 1):
            due = start + (i - 1) / RATE
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            r.send(message(i, int(time.time() * 1e6)))
            r.replies(1)
        sent_seconds = time.time() - start
        watcher.join(timeout=SECONDS + 90)
        done.set()
        if len(latencies) != n:
            log = open(os.path.join(tmp, "daemon.log")).read()
            raise BenchError(f"latency: {len(latencies)} of {n} messages reached the store; the daemon's log "
                             f"ends:\n{log[-3000:]}")
        # a batch is acknowledged after its commit, so the watcher can see rows whose XACK is still
        # on its way: pending is read once the daemon has stopped, which acknowledges what it stored
        daemon.terminate()
        if daemon.wait(timeout=30) != 0:
            raise BenchError("the daemon did not stop cleanly: " + open(os.path.join(tmp, "daemon.log")).read())
        pending = r.call("XPENDING", "events", "bench")[0]
        if int(pending) != 0:
            raise BenchError(f"latency: {int(pending)} messages left pending")
        latencies.sort()
        return n, sent_seconds, percentile(latencies, 50), percentile(latencies, 99), latencies[-1]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def drain_phase(tmp, r, first_id):
    chunk = 1000
    t0 = time.time()
    for start in range(0, BACKLOG, chunk):
        count = min(chunk, BACKLOG - start)
        r.send(b"".join(message(first_id + start + k) for k in range(count)))
        r.replies(count)
    fill_seconds = time.time() - t0
    t0 = time.time()
    out = run_entsync(tmp, "run", "events", "--no-progress")
    seconds = time.time() - t0
    if f"{BACKLOG} created" not in out.stdout:
        raise BenchError(f"drain: expected {BACKLOG} created, got {out.stdout.strip()}")
    pending = int(r.call("XPENDING", "events", "bench")[0])
    if pending != 0:
        raise BenchError(f"drain: {pending} messages left pending")
    return seconds, fill_seconds


def main():
    if not shutil.which("redis-server"):
        print("bench_queue: redis-server is missing; make deps", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="entsync-bench-queue-")
    proc = None
    try:
        proc, port, r = start_redis(tmp)
        with open(os.path.join(tmp, "job.lua"), "w") as f:
            f.write(JOB.format(port=port))
        run_entsync(tmp, "run", "events")  # the store and the group
        say(f"bench_queue: redis-server on 127.0.0.1:{port}; {RATE} messages/s for {SECONDS:g} s, "
            f"then a backlog of {BACKLOG}")
        n, sent_seconds, p50, p99, worst = latency_phase(tmp, r)
        seconds, fill_seconds = drain_phase(tmp, r, n + 1)
        rate = BACKLOG / seconds
        say(f"latency: {n} messages sent in {sent_seconds:.1f}s ({n / sent_seconds:.0f}/s), XADD to local commit "
            f"(seen through data_version)")
        say(f"drain: {BACKLOG} messages XADDed in {fill_seconds:.1f}s, then consumed by one run in {seconds:.2f}s")
        say("")
        say(f"{'queue (redis_stream)':<46} {'measured':>9}  {'target':<9} result")
        say("-" * 72)
        say(f"{'XADD -> commit p50, ms':<46} {p50:>9.1f}  {'':<9}")
        say(f"{'XADD -> commit p99, ms':<46} {p99:>9.1f}  {'<= 50':<9} {'PASS' if p99 <= TARGET_P99_MS else 'MISS'}")
        say(f"{'XADD -> commit max, ms':<46} {worst:>9.1f}  {'':<9}")
        say(f"{'one consumer drains, messages/s':<46} {rate:>9.0f}  {'>= 20000':<9} "
            f"{'PASS' if rate >= TARGET_DRAIN else 'MISS'}")
        return 0
    except BenchError as e:
        print(f"bench_queue: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
