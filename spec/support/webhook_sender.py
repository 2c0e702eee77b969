#!/usr/bin/env python3
"""Sends signed webhook POSTs at a steady pace, as a remote's notifier would.

    webhook_sender.py URL SECRET RATE SECONDS FIRST_ID LAST_ID OUT

Each POST is {"id": "flow-<n>", "data": {"ids": [<id>]}}, its ids cycling from FIRST_ID to
LAST_ID, signed with HMAC-SHA256 of the body (X-Signature: sha256=<hex>), over one keep-alive
connection. Writes to OUT one line per POST: "<n> <status> <wall-clock send time>".
"""
import hashlib
import hmac
import http.client
import json
import sys
import time
import urllib.parse

url, secret, rate, seconds, first, last, out = sys.argv[1:8]
rate, seconds, first, last = float(rate), float(seconds), int(first), int(last)
target = urllib.parse.urlparse(url)
connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
start = time.monotonic()
with open(out, "w") as log:
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        rid = first + n % (last - first + 1)
        body = json.dumps({"id": "flow-%d" % n, "data": {"ids": [rid]}}).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        sent = time.time()
        connection.request("POST", target.path, body, {"X-Signature": "sha256=" + signature,
                                                       "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        log.write("%d %d %.6f\n" % (n, response.status, sent))
        log.flush()
        n += 1
