#!/usr/bin/env python3
"""scripts/bench_fixture.py: a fast remote for the HTTP benchmarks, and a client to time it alone.

    scripts/bench_fixture.py serve --data FILE.json [--latency-ms N] [--max-seconds S]
    scripts/bench_fixture.py client --port P --path /page/contacts --pages K --per-page M --concurrency C
    scripts/bench_fixture.py client --port P --path /api/contacts --records N --concurrency C

serve: binds 127.0.0.1, prints "LISTENING <port>", and answers HTTP/1.1 keep-alive requests on
one asyncio loop (no thread per request, no parsing library), each after --latency-ms of
asyncio.sleep. Listing pages are JSON encoded once and kept, so a page costs the remote a
dictionary look-up. FILE.json is {"resources": {name: [record, ...]}, "feeds": {db: [doc, ...]}};
records list in their file order. The protocol is the spec fixture's
(spec/support/fixture_server.py) for what the benchmarks use:

    GET /page/<res>?page=N&per_page=M, GET /api/<res>?...   {"data", "page", "total"}
    GET /api/<res>/<id>, PUT /api/<res>/<id>                the record / the record written
    GET /feed/<db>/_changes?since=T&limit=N                 {"results", "last_seq", "pending"}
    GET /feed/<db>/<id>, POST /feed/<db>/_bulk_docs {"docs"} the document / one answer a doc
    POST /feed/<db>/_all_docs?include_docs=true {"keys"}    {"rows"}: one row a key, in order
    GET /_control/stats, POST /_control/reset_stats, POST /_control/latency {"ms"}

Listing filters (updated_from= and the like) are ignored: the benchmarks list everything.
/_control/stats counts the requests by method and by kind ("page", "record", "bulk", "all_docs", ...) with
the first start and last end (time.monotonic) of the counted ones.

client: issues K listing requests (pages 1..K) over C keep-alive connections, each connection
taking the next page when its answer is in, and prints "CLIENT <seconds> <requests> <bytes>":
the remote's own rate at that concurrency, with nothing of entsync in the way. With --records N
it reads each of records 1..N (GET /api/<res>/<id>) and writes it back (PUT), as an export's
single writes do.

Both run on an event loop over select(2), whose timeout is in microseconds (epoll's and poll's
are rounded up to the next millisecond, which made every answer up to 1 ms late).
"""

import argparse
import asyncio
import gc
import json
import selectors
import signal
import sys
import time
import urllib.parse


class Store:
    def __init__(self, resources, feeds, latency_ms):
        self.resources = {name: list(records) for name, records in resources.items()}
        self.index = {name: {str(r.get("id")): i for i, r in enumerate(records)}
                      for name, records in self.resources.items()}
        self.feeds = {}
        for name, docs in feeds.items():
            feed = {"docs": {}, "order": []}
            for doc in docs:
                doc = dict(doc)
                doc.setdefault("_rev", "1-a")
                feed["docs"][str(doc["_id"])] = doc
                feed["order"].append(str(doc["_id"]))
            self.feeds[name] = feed
        self.pages = {}
        self.latency = latency_ms / 1000.0
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"count": 0, "by_method": {}, "by_kind": {}, "first": None, "last": None, "docs": 0}

    def count(self, method, kind, started, docs=0):
        s = self.stats
        s["count"] += 1
        s["by_method"][method] = s["by_method"].get(method, 0) + 1
        s["by_kind"][kind] = s["by_kind"].get(kind, 0) + 1
        s["docs"] += docs
        s["first"] = started if s["first"] is None else min(s["first"], started)
        s["last"] = time.monotonic()

    def page(self, name, page, per_page):
        key = (name, page, per_page)
        body = self.pages.get(key)
        if body is None:
            records = self.resources[name]
            chunk = records[(page - 1) * per_page: page * per_page]
            body = json.dumps({"data": chunk, "page": page, "total": len(records)}).encode()
            self.pages[key] = body
        return body

    def changes(self, name, since, limit):
        feed = self.feeds[name]
        order = feed["order"]
        chunk = order[since:since + limit]
        results = []
        for offset, doc_id in enumerate(chunk):
            doc = feed["docs"][doc_id]
            results.append({"seq": str(since + offset + 1), "id": doc_id, "rev": doc["_rev"], "doc": doc})
        last = since + len(chunk)
        return {"results": results, "last_seq": str(last), "pending": max(0, len(order) - last)}

    def all_docs(self, name, keys, include):
        docs = self.feeds[name]["docs"]
        rows = []
        for key in keys:
            doc = docs.get(str(key))
            if doc is None:
                rows.append({"key": key, "error": "not_found"})
                continue
            row = {"id": doc["_id"], "key": key, "value": {"rev": doc["_rev"]}}
            if include:
                row["doc"] = doc
            rows.append(row)
        return {"rows": rows}

    def bulk(self, name, docs):
        feed = self.feeds[name]
        answers = []
        for doc in docs:
            doc_id = str(doc.get("_id"))
            current = feed["docs"].get(doc_id)
            if current is not None and doc.get("_rev") != current["_rev"]:
                answers.append({"id": doc_id, "error": "conflict", "reason": "Document update conflict."})
                continue
            generation = int(current["_rev"].split("-")[0]) if current else 0
            stored = {k: v for k, v in doc.items() if k not in ("_rev", "_id")}
            stored["_id"], stored["_rev"] = doc_id, "%d-b" % (generation + 1)
            if current is None:
                feed["order"].append(doc_id)
            feed["docs"][doc_id] = stored
            answers.append({"ok": True, "id": doc_id, "rev": stored["_rev"]})
        return answers


REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class Handler(asyncio.Protocol):
    """One connection: requests parsed from a buffer, answered in order."""

    def __init__(self, store):
        self.store = store
        self.buffer = b""
        self.queue = asyncio.Queue()
        self.task = None

    def connection_made(self, transport):
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.answer())

    def connection_lost(self, exc):
        if self.task:
            self.task.cancel()

    def data_received(self, data):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < head_end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" and not getattr(self, "continued", False):
                    self.continued = True
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.continued = False
            body = self.buffer[head_end + 4: head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            self.queue.put_nowait((method, target, body, time.monotonic()))

    async def answer(self):
        store = self.store
        while True:
            method, target, body, started = await self.queue.get()
            try:
                status, payload, kind, docs = self.route(method, target, body)
            except (KeyError, ValueError, IndexError) as e:
                status, payload, kind, docs = 400, json.dumps({"error": str(e)}).encode(), "error", 0
            if kind != "control" and store.latency > 0:
                await asyncio.sleep(store.latency - (time.monotonic() - started))
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % (status, REASONS.get(status, "OK").encode(), len(payload)) + payload)
            if kind != "control":
                store.count(method, kind, started, docs)

    def route(self, method, target, body):
        """(status, body bytes, kind, docs written) of one request."""
        store = self.store
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qs(query)
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "_control":
            if parts[1] == "stats":
                return 200, json.dumps(store.stats).encode(), "control", 0
            if parts[1] == "reset_stats":
                store.reset_stats()
                return 200, b"{}", "control", 0
            if parts[1] == "latency":
                store.latency = float(json.loads(body or b"{}").get("ms", 0)) / 1000.0
                return 200, b"{}", "control", 0
        if parts[0] in ("page", "api") and len(parts) == 2 and method == "GET":
            page = int(params.get("page", ["1"])[0])
            per_page = int(params.get("per_page", ["100"])[0])
            return 200, store.page(parts[1], page, per_page), "page", 0
        if parts[0] in ("page", "api") and len(parts) == 3:
            name, record_id = parts[1], parts[2]
            index = store.index[name].get(record_id)
            if index is None:
                return 404, b'{"error": "not found"}', "record", 0
            if method == "GET":
                return 200, json.dumps(store.resources[name][index]).encode(), "record", 0
            if method in ("PUT", "PATCH"):
                old = store.resources[name][index]
                record = dict(old, **json.loads(body)) if method == "PATCH" else json.loads(body)
                record["id"] = old["id"]
                store.resources[name][index] = record
                store.pages.clear()
                return 200, json.dumps(record).encode(), "write", 1
        if parts[0] == "feed" and len(parts) == 3:
            name, doc_id = parts[1], parts[2]
            if doc_id == "_changes" and method == "GET":
                since = int(params.get("since", ["0"])[0] or 0)
                limit = int(params.get("limit", ["100"])[0])
                return 200, json.dumps(store.changes(name, since, limit)).encode(), "changes", 0
            if doc_id == "_bulk_docs" and method == "POST":
                docs = json.loads(body)["docs"]
                return 201, json.dumps(store.bulk(name, docs)).encode(), "bulk", len(docs)
            if doc_id == "_all_docs" and method == "POST":
                include = params.get("include_docs", ["false"])[0] == "true"
                rows = store.all_docs(name, json.loads(body)["keys"], include)
                return 200, json.dumps(rows).encode(), "all_docs", 0
            if method == "GET":
                doc = store.feeds[name]["docs"].get(doc_id)
                if doc is None:
                    return 404, b'{"error": "not_found", "reason": "missing"}', "record", 0
                return 200, json.dumps(doc).encode(), "record", 0
        return 405, b'{"error": "method not allowed"}', "error", 0


async def serve(args):
    with open(args.data) as f:
        data = json.load(f)
    store = Store(data.get("resources", {}), data.get("feeds", {}), args.latency_ms)
    del data
    # the records loaded stay for the run: the collector no longer walks them, which at 100,000
    # records paused the loop for tens of milliseconds at a time
    gc.freeze()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(store), "127.0.0.1", args.port, backlog=1024)
    sys.stdout.write("LISTENING %d\n" % server.sockets[0].getsockname()[1])
    sys.stdout.flush()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    try:
        await asyncio.wait_for(stop, args.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()


async def client(args):
    # --records N: records 1..N each read (GET) and written back (PUT), as an export's single
    # writes do; else the listing's pages 1..--pages
    jobs = iter(range(1, (args.records or args.pages) + 1))
    path = args.path.encode()
    received = [0, 0]

    async def exchange(reader, writer, request):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        received[0] += 1
        received[1] += length
        return body

    async def one_connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        for n in jobs:
            if not args.records:
                await exchange(reader, writer, b"GET %s?page=%d&per_page=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Accept: application/json\r\n\r\n" % (path, n, args.per_page))
                continue
            record = await exchange(reader, writer, b"GET %s/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Accept: application/json\r\n\r\n" % (path, n))
            await exchange(reader, writer, b"PUT %s/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (path, n, len(record), record))
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(args.concurrency)))
    print("CLIENT %.4f %d %d" % (time.monotonic() - started, received[0], received[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--data", required=True)
    s.add_argument("--latency-ms", type=float, default=0)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--max-seconds", type=float, default=1800)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--path", default="/page/contacts")
    c.add_argument("--pages", type=int, default=0)
    c.add_argument("--records", type=int, default=0)
    c.add_argument("--per-page", type=int, default=100)
    c.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    # select(2) takes its timeout in microseconds, where epoll and poll round it up to the next
    # millisecond: every answer would come up to 1 ms after its latency (5% of a 20 ms request)
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(args) if args.command == "serve" else client(args))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
