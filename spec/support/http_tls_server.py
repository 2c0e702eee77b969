#!/usr/bin/env python3
"""A tiny HTTPS server for the TLS specs (Python 3 standard library only).

    python3 spec/support/http_tls_server.py --cert CERT.pem --key KEY.pem
        --body FILE.json [--parent-pid PID] [--max-seconds 120]

Binds 127.0.0.1 on a free port, prints "LISTENING <port>" as its first
stdout line (then "ACCEPTED" for each connection accepted), and answers every GET with the bytes of FILE.json (200,
application/json). Exits on SIGTERM, after --max-seconds, or once the
--parent-pid process is gone.
"""

import argparse
import signal
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fixture_server import serve  # beside this file: the same start and stop


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        """Accepts a connection (the TLS handshake with it); each one,
        shaken hands or refused, is an "ACCEPTED" line on stdout, so a spec
        counts the attempts of a client whose verification fails."""
        try:
            return super().get_request()
        finally:
            print("ACCEPTED", flush=True)

    def handle_error(self, request, client_address):
        pass  # failed handshakes are what the specs provoke


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()

    with open(args.body, "rb") as f:
        body = f.read()
    server = Server(("127.0.0.1", 0), Handler)
    server.body = body
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)

    try:
        serve(server, args.max_seconds, args.parent_pid, (signal.SIGTERM, signal.SIGINT))
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
