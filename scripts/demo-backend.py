#!/usr/bin/env python3
"""A tiny echo backend for the demo (standard library only, so the demo compiles nothing).

Answers every request with a JSON echo of what it received (method, path with query, headers,
body size) and its own name, and GET /health with 200 "ok". HTTP/1.1 with keep-alive, one
thread per connection.

Usage: scripts/demo-backend.py 127.0.0.1:9001 one
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-backend"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/health":
            payload = b"ok"
            content_type = "text/plain"
        else:
            payload = (
                json.dumps(
                    {
                        "backend": self.server.name,
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body_bytes": len(body),
                    },
                    indent=2,
                )
                + "\n"
            ).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args):
        pass  # the gateway's access log is the one to read


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9001"
    host, port = addr.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Echo)
    server.daemon_threads = True
    server.name = sys.argv[2] if len(sys.argv) > 2 else addr
    print(f"echo backend {server.name} listening on {addr}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
