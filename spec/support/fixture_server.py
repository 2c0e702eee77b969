#!/usr/bin/env python3
"""A fake REST remote for entsync's specs (Python 3 standard library only).

    python3 spec/support/fixture_server.py [--data FILE.json] [--latency-ms N]
        [--auth JSON] [--port 0] [--max-seconds 600] [--parent-pid PID]
        [--remove-on-exit PATH]... [--verbose]

Binds 127.0.0.1 only and prints "LISTENING <port>" as its first stdout line;
serves until SIGTERM/SIGINT/SIGHUP, until --max-seconds have passed, or until
the --parent-pid process is gone (exit status 0), then deletes the
--remove-on-exit files. HTTP/1.1 keep-alive, Content-Length on every response.

FILE.json is {"resources": {name: [record, ...]}}; records live in memory and
list in (updated_at, id) order (instants compared, integer ids numerically).
Every listing takes updated_since= or updated_after= (records strictly later)
or updated_from= (records at or after; 400 if unparsable); an unknown
resource is a 404.

    GET /page/<res>?page=N&per_page=M   {"data", "page", "total"}
    GET /offset/<res>?offset=N&limit=M  {"results": {"items"}, "total"}
    GET /cursor/<res>?cursor=T&limit=M  {"data", "next_cursor": token|null}
    GET /link/<res>?page=N&per_page=M   [...] + Link: <absolute next>; rel="next"
    GET /next/<res>?page=N&per_page=M   {"items", "next": absolute url|null}
    GET /key/<res>?after=K&limit=M      {"data"}: the records in id order whose id is
                                        after K (integer ids numerically)
    GET /api/<res>                      like /page
    GET /<style>/<res>/<id>             the record, or 404 {"error": "not found"}
    POST /api/<res>, PUT|PATCH|DELETE /api/<res>/<id>   201 / 200 / 204, 404, 409
                                        (a POST repeating an Idempotency-Key gets
                                        the first answer, nothing created again)
    POST /oauth/token                   client_credentials (form, JSON or basic)

A document store with a changes feed lives beside the REST resources, seeded
from {"feeds": {name: [doc, ...]}} in FILE.json (or /_control/data, /reset):

    GET /feed/<db>/_changes?since=T&limit=N[&type=V]
        {"results": [{"seq": T, "id", "rev", "deleted"?, "doc"}], "last_seq": T,
        "pending": n}: the latest change of each document after T, in
        sequence order. Tokens are opaque ("<n>-g<hex>": as text "100-g.."
        sorts before "99-g.."). type=V returns only documents whose "type" is
        V, while last_seq still covers every change scanned (pages may be
        empty). A deleted document's change has "deleted": true.
    GET /feed/<db>/<id>                 the document with _id and _rev; 404
                                        {"error": "not_found", "reason": "deleted"|"missing"}
    PUT /feed/<db>/<id>                 create, or update with the current
                                        revision ("_rev" in the body or If-Match):
                                        201 {"ok", "id", "rev"}; 409 on a stale one
    POST /feed/<db>                     create with a new id: 201 {"ok", "id", "rev"}
    DELETE /feed/<db>/<id>?rev=R        (or If-Match) 200 {"ok", "id", "rev"}; 409
    POST /feed/<db>/_bulk_docs {"docs": [...]}   201 with one answer per doc, in
                                        order: {"ok", "id", "rev"} or {"id", "error":
                                        "conflict"|"forbidden", "reason"}; a doc with
                                        "_deleted": true is deleted
    POST /feed/<db>/_all_docs[?include_docs=true] {"keys": [...]}   200 {"rows": [...]},
                                        a row per key, in order: {"id", "key", "value":
                                        {"rev"}, "doc"} ("doc" with include_docs; a
                                        deleted one has "value": {"rev", "deleted":
                                        true} and "doc": null) or {"key", "error":
                                        "not_found"}
    POST /_control/feed_reject {"ids": [...]}    writes to these ids are refused
                                        with 403 (a bulk item with "forbidden")

Control (never faulted, logged or authenticated): POST /_control/faults (list,
replaces the queue), GET /_control/faults, POST /_control/revoke, GET
/_control/log, POST /_control/reset_log, GET|POST /_control/data, GET|POST
/_control/latency {"ms"}, GET|POST /_control/auth, POST /_control/reset,
GET /_control/ping.

A fault {"kind", "path" (prefix), "method"?, "count" (default 1), ...} is
taken by the next matching request: latency {ms}, status {status, body,
headers}, retry_after {seconds, date?, status}, malformed, truncate, drop,
slow {ms, pieces}, huge {bytes, chunked?}: a 200 JSON body of that many
bytes sent in 64 KiB pieces (the log entry's "sent" counts the body bytes
written before the client hung up).
"""

import argparse
import base64
import email.utils
import json
import math
import os
import secrets
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STYLES = ("page", "offset", "cursor", "link", "next", "key", "api")
FEED_TOKEN_SALT = "entsync"
DEFAULT_LIMIT = 100
ONE_MS = timedelta(milliseconds=1)


class HttpError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": message}
        self.headers = headers or {}


# ---------------------------------------------------------------- timestamps

def parse_time(value):
    """A datetime (UTC-aware) for an ISO 8601 string or epoch number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    for candidate in (text, text.replace(" ", "+")):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    return None


def time_key(value):
    """Sort key of an updated_at value: missing < parsable (by instant) < other text."""
    if value is None:
        return (-1, "")
    parsed = parse_time(value)
    if parsed is not None:
        return (0, parsed)
    return (1, str(value))


def id_key(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value, "")
    if isinstance(value, float):
        return (0, value, "")
    return (1, 0, str(value))


def format_time(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


# ---------------------------------------------------------------- state

class State:
    """Resources, auth, faults, latency and the request log, behind one lock."""

    def __init__(self, resources, auth, latency_ms):
        self.lock = threading.RLock()
        self.resources = {}
        self.sorted_cache = {}
        self.id_index = {}  # resource -> {id as text: position of its first record}
        self.feeds = {}
        self.set_resources(resources)
        self.auth = None
        self.tokens = {}
        self.set_auth(auth)
        self.latency_ms = float(latency_ms or 0)
        self.initial = (json.dumps(dict(self.resources, **({"feeds": resources.get("feeds")} if isinstance(resources, dict) and resources.get("feeds") else {}))), auth, self.latency_ms)
        self.faults = []
        self.log = []
        self.last_time = None
        self.idempotent = {}  # Idempotency-Key -> (resource, created record)

    # data ----------------------------------------------------------------
    @staticmethod
    def normalize(resources):
        if resources is None:
            return {}
        if isinstance(resources, dict) and isinstance(resources.get("resources"), dict):
            resources = resources["resources"]
        if isinstance(resources, list) and not resources:
            resources = {}  # an empty Lua table encodes as []
        if not isinstance(resources, dict):
            raise HttpError(400, "resources must be an object of lists")
        out = {}
        for name, records in resources.items():
            if isinstance(records, dict):
                records = list(records.values())  # {} from an empty Lua table, or id -> record
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise HttpError(400, "resource %s must be a list of objects" % name)
            out[str(name)] = [dict(r) for r in records]
        return out

    def set_resources(self, resources):
        feeds = resources.get("feeds") if isinstance(resources, dict) else None
        if isinstance(resources, dict) and "feeds" in resources:
            resources = {k: v for k, v in resources.items() if k != "feeds"}
            if "resources" in resources and not isinstance(resources["resources"], dict):
                resources = {}
        normalized = self.normalize(resources)
        with self.lock:
            self.resources = normalized
            self.sorted_cache = {}
            self.id_index = {}
            self.feeds = {}
            self.feed_reject = set()
            for name, docs in (feeds or {}).items():
                feed = self.feed(name)
                for doc in (docs.values() if isinstance(docs, dict) else docs):
                    self.feed_write(feed, str(doc.get("_id", doc.get("id"))), dict(doc), None, force=True)

    # documents and their changes feed -----------------------------------
    def feed(self, name):
        """The document store `name` (made on first use): documents by id, their
        revisions, and the list of changes (seq, id)."""
        with self.lock:
            feed = self.feeds.get(name)
            if feed is None:
                feed = {"docs": {}, "changes": [], "seq": 0}
                self.feeds[name] = feed
            return feed

    @staticmethod
    def feed_token(seq):
        return "%d-g%s" % (seq, format((seq * 2654435761) & 0xFFFFFF, "06x"))

    @staticmethod
    def feed_seq(token):
        if token in (None, "", "0", 0):
            return 0
        try:
            return int(str(token).split("-", 1)[0])
        except ValueError:
            raise HttpError(400, "bad since token")

    def feed_write(self, feed, doc_id, doc, rev, force=False, delete=False):
        """Writes (or deletes) a document; (status, answer). A write to an existing
        document must name its current revision unless forced."""
        with self.lock:
            if doc_id in self.feed_reject:
                return 403, {"id": doc_id, "error": "forbidden", "reason": "rejected by validation"}
            current = feed["docs"].get(doc_id)
            live = current is not None and not current.get("_deleted")
            if not force and live and rev != current["_rev"]:
                return 409, {"id": doc_id, "error": "conflict", "reason": "Document update conflict."}
            if not force and not live and delete:
                return 404, {"id": doc_id, "error": "not_found", "reason": "missing"}
            generation = int(current["_rev"].split("-")[0]) if current else 0
            body = {k: v for k, v in doc.items() if k not in ("_rev", "_id", "_deleted")}
            new_rev = "%d-%s" % (generation + 1, format(abs(hash(json.dumps(body, sort_keys=True))) & 0xFFFFFFFF, "08x"))
            stored = {"_deleted": True} if delete else dict(body)
            stored["_id"], stored["_rev"] = doc_id, new_rev
            feed["docs"][doc_id] = stored
            feed["seq"] += 1
            feed["changes"].append((feed["seq"], doc_id))
            return (200 if delete else 201), {"ok": True, "id": doc_id, "rev": new_rev}

    def sorted_records(self, name):
        """(records, keys) of a resource in listing order; None for an unknown one."""
        with self.lock:
            if name not in self.resources:
                return None
            cached = self.sorted_cache.get(name)
            if cached is None:
                records = sorted(self.resources[name],
                                 key=lambda r: (time_key(r.get("updated_at")), id_key(r.get("id"))))
                cached = (records, [time_key(r.get("updated_at")) for r in records])
                self.sorted_cache[name] = cached
            return cached

    def dump_resources(self):
        with self.lock:
            return {name: list(self.sorted_records(name)[0]) for name in self.resources}

    def find(self, name, record_id):
        """(position, record) of the first record of a resource with that id, or (None, None).
        Looked up in an index built on first use: a scan per request made a remote of
        100,000 records slower than the client it serves."""
        with self.lock:
            records = self.resources.get(name, ())
            index = self.id_index.get(name)
            if index is None:
                index = {}
                for position, record in enumerate(records):
                    if "id" in record:
                        index.setdefault(str(record["id"]), position)
                self.id_index[name] = index
            position = index.get(record_id)
            if position is None:
                return None, None
            return position, records[position]

    def now(self, previous=None):
        """Now as ISO 8601 UTC with milliseconds, strictly after every value
        this server issued and after `previous` (the record's old updated_at)."""
        with self.lock:
            moment = datetime.now(timezone.utc)
            moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
            floors = [self.last_time]
            old = parse_time(previous) if previous is not None else None
            floors.append(old)
            for floor in floors:
                if floor is not None and moment <= floor:
                    moment = floor.replace(microsecond=floor.microsecond // 1000 * 1000) + ONE_MS
            self.last_time = moment
            return format_time(moment)

    def touched(self, name, moved=True):
        """A resource changed: its listing order is stale; its positions too when records
        were added or removed (moved), not when one was replaced in place."""
        self.sorted_cache.pop(name, None)
        if moved:
            self.id_index.pop(name, None)

    # auth ----------------------------------------------------------------
    def set_auth(self, auth):
        if auth in (None, {}, []):
            auth = None
        elif not isinstance(auth, dict) or len(auth) != 1 or \
                next(iter(auth)) not in ("bearer", "basic", "api_key", "oauth2"):
            raise HttpError(400, "auth must be one of bearer, basic, api_key, oauth2")
        with self.lock:
            self.auth = auth
            self.tokens = {}

    # faults --------------------------------------------------------------
    def set_faults(self, faults):
        if faults in (None, {}):
            faults = []
        if isinstance(faults, dict):
            faults = [faults]
        if not isinstance(faults, list):
            raise HttpError(400, "faults must be a list")
        kinds = ("latency", "status", "retry_after", "malformed", "truncate", "drop", "slow", "huge")
        prepared = []
        for fault in faults:
            if not isinstance(fault, dict) or fault.get("kind") not in kinds:
                raise HttpError(400, "each fault needs a kind among " + ", ".join(kinds))
            fault = dict(fault)
            fault.setdefault("path", "/")
            fault.setdefault("count", 1)
            prepared.append(fault)
        with self.lock:
            self.faults = prepared

    def take_fault(self, method, path):
        with self.lock:
            for fault in self.faults:
                if fault["count"] <= 0 or not path.startswith(fault["path"]):
                    continue
                if fault.get("method") and fault["method"].upper() != method:
                    continue
                fault["count"] -= 1
                return dict(fault)
        return None


# ---------------------------------------------------------------- handler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY the
    # body waits for the client's delayed ACK, 40 ms a response.
    disable_nagle_algorithm = True
    server_version = "entsync-fixture/1"
    timeout = 60  # idle keep-alive connections close after this

    # quiet unless --verbose
    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fixture: %s - %s\n" % (self.address_string(), fmt % args))

    @property
    def state(self):
        return self.server.state

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    # request plumbing ----------------------------------------------------
    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self):
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path, split.query
        self.params = urllib.parse.parse_qs(query, keep_blank_values=True)
        self.raw_query = query
        self.body_bytes = self.read_body()
        try:
            if path.startswith("/_control/") or path == "/_control":
                status, body, headers = self.control(path)
                self.respond(status, body, headers)
            else:
                self.serve(path, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def encode(self, body):
        if body is None:
            return b""
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode("utf-8")
        return json.dumps(body).encode("utf-8")

    def respond(self, status, body, headers=None, fault=None):
        data = self.encode(body)
        self.send_response(status)
        headers = dict(headers or {})
        if status != 204:
            if data or "Content-Type" not in headers:
                headers.setdefault("Content-Type", "application/json")
            headers["Content-Length"] = str(len(data))
        else:
            data = b""
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        kind = fault and fault["kind"]
        if kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "slow" and data:
            pieces = max(1, min(len(data), int(fault.get("pieces", 10))))
            size = math.ceil(len(data) / pieces)
            pause = float(fault.get("ms", 1000)) / 1000.0 / pieces
            for start in range(0, len(data), size):
                time.sleep(pause)
                self.wfile.write(data[start:start + size])
                self.wfile.flush()
        else:
            self.wfile.write(data)

    def respond_huge(self, size, chunked):
        """A 200 of size bytes of JSON ({"pad": "xxx..."}), sent in 64 KiB
        pieces, with a Content-Length or chunked; self.sent counts the body
        bytes written before the client hung up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        data = b'{"pad": "' + b"x" * max(0, size - 11) + b'"}'
        sent = 0
        try:
            for start in range(0, len(data), 65536):
                piece = data[start:start + 65536]
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                self.sent = sent
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return 200

    # non-control requests ------------------------------------------------
    def serve(self, path, query):
        entry = {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": {k: v for k, v in self.headers.items()},
            "body": self.body_bytes.decode("utf-8", errors="replace"),
            "start": time.time(),
            "end": None,
            "status": None,
            "sent": None,
        }
        state = self.state
        fault = state.take_fault(self.command, path)
        if fault:
            entry["fault"] = fault["kind"]
        with state.lock:
            state.log.append(entry)  # from here on only existing keys change
        status = None
        self.sent = None
        try:
            delay = state.latency_ms
            if fault and fault["kind"] == "latency":
                delay += float(fault.get("ms", 300))
            if delay > 0:
                time.sleep(delay / 1000.0)
            status = self.serve_with_fault(path, fault)
        finally:
            entry["status"] = status
            entry["end"] = time.time()
            entry["sent"] = self.sent

    def serve_with_fault(self, path, fault):
        kind = fault and fault["kind"]
        if kind == "drop":
            self.close_connection = True
            return None
        if kind == "status":
            status = int(fault.get("status", 500))
            body = fault.get("body", {"error": "injected %d" % status})
            self.respond(status, body, fault.get("headers"))
            return status
        if kind == "retry_after":
            seconds = fault.get("seconds", 1)
            if fault.get("date"):
                value = email.utils.formatdate(math.ceil(time.time()) + float(seconds), usegmt=True)
            else:
                value = str(seconds)
            status = int(fault.get("status", 429))
            self.respond(status, fault.get("body", {"error": "rate limited"}), {"Retry-After": value})
            return status
        if kind == "huge":
            return self.respond_huge(int(fault.get("bytes", 1 << 20)), bool(fault.get("chunked")))
        if kind == "malformed":
            body = fault.get("body", '{"data": [{"id": 1, "name": "trunc')
            self.respond(200, body if isinstance(body, str) else json.dumps(body)[:-1])
            return 200
        try:
            status, body, headers = self.handle_api(path)
        except HttpError as err:
            status, body, headers = err.status, err.body, err.headers
        except Exception as err:  # a bug here must show as a 500, not a hang
            traceback.print_exc()
            status, body, headers = 500, {"error": "fixture server error: %s" % err}, {}
        self.respond(status, body, headers, fault if kind in ("truncate", "slow") else None)
        return status

    # auth ----------------------------------------------------------------
    def basic_credentials(self):
        header = self.headers.get("Authorization") or ""
        if not header[:6].lower() == "basic ":
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except Exception:
            return None
        return user, password

    def check_auth(self):
        state = self.state
        with state.lock:
            auth = state.auth
        if not auth:
            return
        kind, conf = next(iter(auth.items()))
        header = self.headers.get("Authorization") or ""
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
        if kind == "bearer":
            if bearer is not None and bearer == str(conf):
                return
            challenge = 'Bearer realm="fixture"'
        elif kind == "basic":
            if self.basic_credentials() == (str(conf[0]), str(conf[1])):
                return
            challenge = 'Basic realm="fixture"'
        elif kind == "api_key":
            if conf.get("header"):
                given = self.headers.get(conf["header"])
            else:
                given = (self.params.get(conf.get("query", "api_key")) or [None])[0]
            if given is not None and given == str(conf.get("value")):
                return
            challenge = 'ApiKey realm="fixture"'
        else:  # oauth2
            with state.lock:
                expiry = state.tokens.get(bearer) if bearer else None
            if expiry is not None and time.time() < expiry:
                return
            challenge = 'Bearer realm="fixture"' + (', error="invalid_token"' if bearer else "")
        raise HttpError(401, "unauthorized", {"WWW-Authenticate": challenge})

    def token(self):
        state = self.state
        with state.lock:
            auth = state.auth
        if not auth or "oauth2" not in auth:
            raise HttpError(404, "not found")
        if self.command != "POST":
            raise HttpError(405, "method not allowed")
        conf = auth["oauth2"]
        text = self.body_bytes.decode("utf-8", errors="replace")
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                form = {k: str(v) for k, v in json.loads(text or "{}").items()}
            except (ValueError, AttributeError):
                raise HttpError(400, "invalid_request")
        else:
            form = {k: v[0] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "unsupported_grant_type")
        client = (form.get("client_id"), form.get("client_secret"))
        if client[0] is None:
            client = self.basic_credentials() or (None, None)
        if client != (str(conf.get("client_id")), str(conf.get("client_secret"))):
            raise HttpError(401, "invalid_client", {"WWW-Authenticate": 'Basic realm="fixture"'})
        expires_in = conf.get("expires_in", 3600)
        access = secrets.token_urlsafe(24)
        with state.lock:
            state.tokens[access] = time.time() + float(expires_in)
        return 200, {"access_token": access, "token_type": "bearer", "expires_in": expires_in}, {}

    # REST ----------------------------------------------------------------
    def int_param(self, name, default, minimum):
        values = self.params.get(name)
        if not values or values[0] == "":
            return default
        try:
            value = int(values[0])
        except ValueError:
            raise HttpError(400, "bad %s" % name)
        if value < minimum:
            raise HttpError(400, "bad %s" % name)
        return value

    def since_param(self):
        # An inclusive bound is carried as "from:<time>" (cursor tokens keep it).
        for name in ("updated_since", "updated_after", "updated_from"):
            values = self.params.get(name)
            if values and values[0] != "":
                if parse_time(values[0]) is None:
                    raise HttpError(400, "bad %s" % name)
                return ("from:" if name == "updated_from" else "") + values[0]
        return None

    def listing(self, name, since):
        cached = self.state.sorted_records(name)
        if cached is None:
            raise HttpError(404, "not found")
        records, keys = cached
        if since is None:
            return records
        if since.startswith("from:"):
            floor = time_key(since[5:])
            return [r for r, k in zip(records, keys) if k >= floor]
        floor = time_key(since)
        return [r for r, k in zip(records, keys) if k > floor]

    def url_with(self, **changes):
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_address[1]
        pairs = [(k, v) for k, v in urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True)
                 if k not in changes]
        pairs += [(k, str(v)) for k, v in changes.items()]
        path = urllib.parse.urlsplit(self.path).path
        return "http://%s%s?%s" % (host, path, urllib.parse.urlencode(pairs))

    def handle_api(self, path):
        if path == "/oauth/token":
            return self.token()
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) in (2, 3) and parts[0] == "feed" and parts[1]:
            self.check_auth()
            return self.handle_feed(parts[1], parts[2] if len(parts) == 3 else None)
        if len(parts) < 2 or len(parts) > 3 or parts[0] not in STYLES or not parts[1]:
            raise HttpError(404, "not found")
        self.check_auth()
        style, name = parts[0], parts[1]
        record_id = parts[2] if len(parts) == 3 else None
        method = "GET" if self.command == "HEAD" else self.command
        if method != "GET" and style != "api":
            raise HttpError(405, "method not allowed")
        if method == "GET":
            if record_id is not None:
                _, record = self.state.find(name, record_id)
                if record is None:
                    raise HttpError(404, "not found")
                return 200, record, {}
            return self.list_style(style, name)
        return self.write(method, name, record_id)

    def handle_feed(self, name, doc_id):
        state = self.state
        feed = state.feed(name)
        method = "GET" if self.command == "HEAD" else self.command
        if doc_id == "_changes" and method == "GET":
            since = state.feed_seq((self.params.get("since") or [""])[0])
            limit = self.int_param("limit", DEFAULT_LIMIT, 1)
            wanted = (self.params.get("type") or [None])[0]
            with state.lock:
                latest = {}
                for seq, changed_id in feed["changes"]:
                    if seq > since:
                        latest[changed_id] = seq
                ordered = sorted(latest.items(), key=lambda item: item[1])
                page, last = [], since
                for changed_id, seq in ordered[:limit]:
                    last = seq
                    doc = feed["docs"][changed_id]
                    if wanted is not None and not doc.get("_deleted") and doc.get("type") != wanted:
                        continue
                    result = {"seq": state.feed_token(seq), "id": changed_id, "rev": doc["_rev"]}
                    if doc.get("_deleted"):
                        result["deleted"] = True
                    else:
                        result["doc"] = dict(doc)
                    page.append(result)
                pending = max(0, len(ordered) - limit)
                if not ordered:
                    last = feed["seq"] if since < feed["seq"] and not latest else since
            return 200, {"results": page, "last_seq": state.feed_token(last) if last else "0",
                         "pending": pending}, {}
        if doc_id == "_bulk_docs" and method == "POST":
            body = self.json_body()
            docs = body.get("docs")
            if not isinstance(docs, list):
                raise HttpError(400, "bulk_docs needs {\"docs\": [...]}")
            answers = []
            for doc in docs:
                if not isinstance(doc, dict):
                    answers.append({"error": "bad_request", "reason": "a doc must be an object"})
                    continue
                target = str(doc.get("_id") or secrets.token_hex(8))
                _, answer = state.feed_write(feed, target, doc, doc.get("_rev"), delete=doc.get("_deleted") is True)
                answers.append(answer)
            return 201, answers, {}
        if doc_id == "_all_docs" and method == "POST":
            keys = self.json_body().get("keys")
            if not isinstance(keys, list):
                raise HttpError(400, "_all_docs needs {\"keys\": [...]}")
            include = (self.params.get("include_docs") or ["false"])[0] == "true"
            return 200, {"rows": [self.all_docs_row(feed, key, include) for key in keys]}, {}
        rev = self.headers.get("If-Match") or (self.params.get("rev") or [None])[0]
        if rev:
            rev = rev.strip('"')
        if doc_id is None:
            if method != "POST":
                raise HttpError(405, "method not allowed")
            body = self.json_body()
            status, answer = state.feed_write(feed, str(body.get("_id") or secrets.token_hex(8)), body, None)
            return status, answer, {}
        if method == "GET":
            with state.lock:
                doc = feed["docs"].get(doc_id)
                if doc is None or doc.get("_deleted"):
                    return 404, {"error": "not_found", "reason": "deleted" if doc else "missing"}, {}
                return 200, dict(doc), {"ETag": '"%s"' % doc["_rev"]}
        if method == "PUT":
            body = self.json_body()
            status, answer = state.feed_write(feed, doc_id, body, body.get("_rev") or rev)
            return status, answer, {}
        if method == "DELETE":
            status, answer = state.feed_write(feed, doc_id, {}, rev, delete=True)
            return status, answer, {}
        raise HttpError(405, "method not allowed")

    def all_docs_row(self, feed, key, include):
        """The _all_docs row of one key, as CouchDB answers it."""
        with self.state.lock:
            doc = feed["docs"].get(str(key))
            if doc is None:
                return {"key": key, "error": "not_found"}
            row = {"id": doc["_id"], "key": key, "value": {"rev": doc["_rev"]}}
            if doc.get("_deleted"):
                row["value"]["deleted"] = True
            if include:
                row["doc"] = None if doc.get("_deleted") else dict(doc)
            return row

    def list_style(self, style, name):
        since = self.since_param()
        if style == "cursor":
            cursor = (self.params.get("cursor") or [""])[0]
            offset = 0
            if cursor:
                try:
                    padded = cursor + "=" * (-len(cursor) % 4)
                    token = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
                    offset = int(token["offset"])
                    if since is None:
                        since = token.get("since")
                except Exception:
                    raise HttpError(400, "bad cursor")
            limit = self.int_param("limit", DEFAULT_LIMIT, 1)
            records = self.listing(name, since)
            chunk = records[offset:offset + limit]
            next_cursor = None
            if offset + limit < len(records):
                token = {"offset": offset + limit}
                if since is not None:
                    token["since"] = since
                raw = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                next_cursor = raw.rstrip("=")
            return 200, {"data": chunk, "next_cursor": next_cursor}, {}
        if style == "key":
            limit = self.int_param("limit", DEFAULT_LIMIT, 1)
            after = (self.params.get("after") or [None])[0]
            records = sorted(self.listing(name, since), key=lambda r: id_key(r.get("id")))
            if after is not None and after != "":
                floor = id_key(int(after)) if after.lstrip("-").isdigit() else id_key(after)
                records = [r for r in records if id_key(r.get("id")) > floor]
            return 200, {"data": records[:limit]}, {}
        if style == "offset":
            offset = self.int_param("offset", 0, 0)
            limit = self.int_param("limit", DEFAULT_LIMIT, 1)
            records = self.listing(name, since)
            return 200, {"results": {"items": records[offset:offset + limit]}, "total": len(records)}, {}
        page = self.int_param("page", 1, 1)
        per_page = self.int_param("per_page", DEFAULT_LIMIT, 1)
        records = self.listing(name, since)
        chunk = records[(page - 1) * per_page: page * per_page]
        has_next = page * per_page < len(records)
        if style == "link":
            headers = {"Link": '<%s>; rel="next"' % self.url_with(page=page + 1)} if has_next else {}
            return 200, chunk, headers
        if style == "next":
            return 200, {"items": chunk, "next": self.url_with(page=page + 1) if has_next else None}, {}
        return 200, {"data": chunk, "page": page, "total": len(records)}, {}  # page, api

    def json_body(self):
        try:
            body = json.loads(self.body_bytes.decode("utf-8") or "null")
        except ValueError:
            raise HttpError(400, "invalid JSON body")
        if body == []:
            body = {}  # an empty Lua table
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def write(self, method, name, record_id):
        state = self.state
        if method == "POST":
            if record_id is not None:
                raise HttpError(405, "method not allowed")
            body = self.json_body()
            key = self.headers.get("Idempotency-Key")
            with state.lock:
                # A create repeated with the same Idempotency-Key (a retry
                # after a lost response) answers with the first record.
                if key and key in state.idempotent and state.idempotent[key][0] == name:
                    return 201, state.idempotent[key][1], {}
                records = state.resources.setdefault(name, [])
                if "id" in body:
                    if state.find(name, str(body["id"]))[1] is not None:
                        raise HttpError(409, "conflict")
                else:
                    ints = [r["id"] for r in records
                            if isinstance(r.get("id"), int) and not isinstance(r.get("id"), bool)]
                    body = dict(body, id=max(ints, default=0) + 1)
                if body.get("updated_at") is None:
                    body["updated_at"] = state.now()
                records.append(body)
                state.touched(name, moved=False)
                index = state.id_index.get(name)
                if index is not None:  # appended: every other record keeps its position
                    index.setdefault(str(body["id"]), len(records) - 1)
                if key:
                    state.idempotent[key] = (name, body)
            return 201, body, {}
        if record_id is None:
            raise HttpError(405, "method not allowed")
        if method == "DELETE":
            with state.lock:
                index, _ = state.find(name, record_id)
                if index is None:
                    raise HttpError(404, "not found")
                del state.resources[name][index]
                state.touched(name)
            return 204, None, {}
        if method not in ("PUT", "PATCH"):
            raise HttpError(405, "method not allowed")
        body = self.json_body()
        with state.lock:
            index, old = state.find(name, record_id)
            if index is None:
                raise HttpError(404, "not found")
            record = dict(old, **body) if method == "PATCH" else dict(body)
            record["id"] = old["id"]
            record["updated_at"] = state.now(old.get("updated_at"))
            state.resources[name][index] = record
            state.touched(name, moved=False)
        return 200, record, {}

    # control -------------------------------------------------------------
    def control(self, path):
        state = self.state
        method = self.command
        what = path[len("/_control/"):].strip("/")

        def body_json():
            try:
                return json.loads(self.body_bytes.decode("utf-8") or "null")
            except ValueError:
                raise HttpError(400, "invalid JSON body")

        try:
            if what == "log" and method == "GET":
                with state.lock:
                    return 200, json.dumps(state.log), {}
            if what == "reset_log" and method == "POST":
                with state.lock:
                    state.log = []
                return 200, {"ok": True}, {}
            if what == "faults" and method == "POST":
                state.set_faults(body_json())
                return 200, {"ok": True, "faults": len(state.faults)}, {}
            if what == "faults" and method == "GET":
                with state.lock:
                    return 200, json.dumps(state.faults), {}
            if what == "feed_reject" and method == "POST":
                body = body_json()
                with state.lock:
                    state.feed_reject = set(str(i) for i in (body or {}).get("ids", []))
                return 200, {"ok": True}, {}
            if what == "feed" and method == "GET":
                with state.lock:
                    return 200, json.dumps({name: feed["docs"] for name, feed in state.feeds.items()}), {}
            if what == "revoke" and method == "POST":
                with state.lock:
                    revoked = len(state.tokens)
                    state.tokens = {}
                return 200, {"ok": True, "revoked": revoked}, {}
            if what == "data" and method == "GET":
                return 200, state.dump_resources(), {}
            if what == "data" and method == "POST":
                state.set_resources(body_json())
                return 200, {"ok": True}, {}
            if what == "latency" and method == "POST":
                body = body_json()
                ms = body.get("ms", 0) if isinstance(body, dict) else body
                if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
                    raise HttpError(400, "latency needs {\"ms\": N}")
                with state.lock:
                    state.latency_ms = float(ms)
                return 200, {"ok": True, "ms": ms}, {}
            if what == "latency" and method == "GET":
                return 200, {"ms": state.latency_ms}, {}
            if what == "auth" and method == "POST":
                state.set_auth(body_json())
                return 200, {"ok": True}, {}
            if what == "auth" and method == "GET":
                return 200, {"auth": state.auth}, {}
            if what == "reset" and method == "POST":
                # back to the start-up state: data (or the given resources),
                # auth, latency; no faults, tokens or log
                body = body_json()
                resources, auth, latency_ms = state.initial
                given = isinstance(body, dict) and body.get("resources") is not None
                state.set_resources(body["resources"] if given else json.loads(resources))
                state.set_auth(auth)
                with state.lock:
                    state.latency_ms = latency_ms
                    state.faults = []
                    state.log = []
                return 200, {"ok": True}, {}
            if what == "ping":
                return 200, {"ok": True, "port": self.server.server_address[1], "pid": os.getpid()}, {}
        except HttpError as err:
            return err.status, err.body, {}
        return 404, {"error": "not found"}, {}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        kind = sys.exc_info()[0]
        if kind and issubclass(kind, (ConnectionError, TimeoutError)):
            return
        if self.verbose or not (kind and issubclass(kind, OSError)):
            super().handle_error(request, client_address)


def serve(server, max_seconds, parent_pid, stop_signals):
    """Prints "LISTENING <port>" and serves until one of stop_signals arrives, max_seconds
    pass, or the parent_pid process (when given) is gone, so a crashed spec never leaves a
    server behind. The caller closes the server."""
    started = time.monotonic()

    def stop_soon(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    for stop_signal in stop_signals:
        signal.signal(stop_signal, stop_soon)

    def watchdog():
        while time.monotonic() - started < max_seconds:
            time.sleep(0.25)
            if parent_pid:
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        server.shutdown()

    threading.Thread(target=watchdog, daemon=True).start()
    sys.stdout.write("LISTENING %d\n" % server.server_address[1])
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="JSON file: {\"resources\": {name: [records]}}")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--auth", help="JSON auth config, e.g. '{\"bearer\": \"T\"}'")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--remove-on-exit", action="append", default=[], metavar="PATH",
                        help="a file to delete after serving (the caller's temp files)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    try:
        resources = {}
        if args.data:
            with open(args.data, "rb") as f:
                text = f.read().decode("utf-8")
            resources = json.loads(text) if text.strip() else {}
        auth = json.loads(args.auth) if args.auth else None
        state = State(resources, auth, args.latency_ms)
    except (OSError, ValueError, HttpError) as err:
        sys.stderr.write("fixture_server: %s\n" % err)
        return 2

    server = Server(("127.0.0.1", args.port), Handler)
    server.state = state
    server.verbose = args.verbose
    try:
        serve(server, args.max_seconds, args.parent_pid, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    finally:
        server.server_close()
        for path in args.remove_on_exit:
            try:
                os.remove(path)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
