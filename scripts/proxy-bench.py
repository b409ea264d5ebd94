#!/usr/bin/env python3
"""Side-by-side proxy benchmark: nginx proxy_pass, the bare Pingora reference proxy
(benches/bare_pingora: round robin to one backend, mimalloc, no work stealing) and Gatehouse
(routing only; JWT HS256 + local rate limit; the same with the JSON access log on; API key +
local rate limit; OAuth2 introspection + local rate limit with the token's answer cached (an
endpoint on CPU 1 answers the first call); routing with OpenTelemetry span export at
sample_ratio 0 and 1, to a receiver on CPU 1 that accepts and discards), all in one run.

Every proxy under test runs pinned to CPU 0 with one worker thread; wrk and the nginx backend
share CPU 1. Rounds are interleaved (every case once per round) and medians reported, because
single figures on these VMs move 10-25 % between runs. Reported per case: requests/s, CPU µs
per request (the proxy process's utime+stime ticks over the requests it served), and ratios to
the bare proxy and to nginx. Then memory per idle client connection (plain and TLS HTTP/1.1
keep-alive, HTTP/2 over TLS, and upgraded WebSockets; N connections, one request each, RSS
delta / N), latency added at a fixed rate below saturation (h2load --h1, 10 connections at 500 req/s each, which fire in step and so arrive as bursts of ten, and
one connection at 1k req/s, which never queues; median and p99 minus the same run straight to
the backend, interleaved rounds), and TLS termination (same certificate for nginx and
Gatehouse; keep-alive and a new connection per request).

Bounded and loopback only: DURATION seconds per wrk run (default 8), ROUNDS rounds (default 3).
Usage: scripts/proxy-bench.py [--duration S] [--rounds N] [--skip-throughput] [--skip-memory]
                              [--skip-latency] [--skip-tls]
"""

import argparse
import urllib.request
import json
import os
import shutil
import signal
import asyncio
import socket
import ssl
import struct
import threading
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def need(tool, package):
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       stdout=subprocess.DEVNULL)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children_pids(pid):
    """nginx: the master and its worker (not the proxy_cache loader, which exits a minute
    after start, nor the cache manager, which only wakes to expire files)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids = [pid]
    for p in out.split():
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"worker process" in f.read():
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def wait_up(port, path="/", timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answers on port {port}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="proxy-bench-")
        # nginx workers (an unprivileged user when run as root) write proxy_cache files.
        os.chmod(self.work, 0o755)
        os.makedirs(os.path.join(self.work, "nginx-cache"), mode=0o777)
        os.chmod(os.path.join(self.work, "nginx-cache"), 0o777)
        self.procs = []

    def spawn(self, cmd, cpu, env=None, **kw):
        full = ["taskset", "-c", str(cpu)] + cmd
        p = subprocess.Popen(full, env={**os.environ, **(env or {})},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def close(self):
        # SIGTERM first: an nginx master killed outright leaves its workers running.
        for p in self.procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def nginx(self, name, cpu, servers):
        d = os.path.join(self.work, name)
        os.makedirs(d)
        os.chmod(d, 0o777)
        conf = f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream backend {{ server 127.0.0.1:{self.backend_port}; keepalive 64; }}
  {servers}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        return self.spawn(["nginx", "-c", f"{d}/nginx.conf", "-p", d], cpu)

    def setup(self):
        self.backend_port = free_port()
        self.nginx_port, self.nginx_tls_port = free_port(), free_port()
        self.bare_port, self.gw_port, self.gw_log_port = free_port(), free_port(), free_port()
        self.gw_tr0_port, self.gw_tr1_port = free_port(), free_port()
        self.otlp_port = self.otlp_receiver()
        self.introspection_port = self.introspection_endpoint()
        self.gw_tls_port = free_port()
        w = self.work
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", f"{w}/tls.key", "-out", f"{w}/tls.pem"],
            check=True, capture_output=True)
        self.nginx("backend", 1,
                   f"server {{ listen 127.0.0.1:{self.backend_port}; "
                   "location / { return 200 'hello from the backend'; } }")
        self.ws_port = self.ws_backend()
        proxy = ("location / { proxy_pass http://backend; proxy_http_version 1.1; "
                 "proxy_set_header Connection \"\"; }\n"
                 "location /cached { proxy_pass http://backend; proxy_http_version 1.1; "
                 "proxy_set_header Connection \"\"; proxy_cache bench; "
                 "proxy_cache_valid 200 10m; add_header X-Cache $upstream_cache_status; }\n"
                 f"location /ws {{ proxy_pass http://127.0.0.1:{self.ws_port}; "
                 "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
                 "proxy_set_header Connection upgrade; proxy_read_timeout 1h; }")
        self.nginx_proc = self.nginx(
            "proxy", 0,
            f"proxy_cache_path {w}/nginx-cache keys_zone=bench:10m;\n"
            f"server {{ listen 127.0.0.1:{self.nginx_port}; {proxy} }}\n"
            f"server {{ listen 127.0.0.1:{self.nginx_tls_port} ssl http2; ssl_certificate {w}/tls.pem; "
            f"ssl_certificate_key {w}/tls.key; ssl_protocols TLSv1.2 TLSv1.3; "
            f"ssl_session_cache shared:SSL:10m; {proxy} }}")
        wait_up(self.backend_port)

        bare_dir = os.path.join(ROOT, "benches", "bare_pingora")
        bare_target = os.environ.get("BARE_TARGET_DIR", "/tmp/gatehouse-bare-target")
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=bare_dir, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": bare_target})
        self.bare_proc = self.spawn(
            [f"{bare_target}/release/bare-pingora", "-c", f"{bare_dir}/pingora.yaml"], 0,
            env={"BARE_BACKEND": f"127.0.0.1:{self.backend_port}",
                 "BARE_LISTEN": f"127.0.0.1:{self.bare_port}", "RUST_LOG": "error"})

        gh = os.path.join(ROOT, "target", "release", "gatehouse")
        secret = "proxy-bench-hmac-secret-of-32-bytes-or-more"
        self.key = subprocess.run(
            [gh, "keys", "new", "--consumer", "bench", "--tier", "big", "--file", f"{w}/keys.toml"],
            check=True, capture_output=True, text=True).stdout.strip()
        self.jwt = make_jwt(secret)

        def config(name, port, access_log, tls, sample_ratio=None):
            tls_section = (f'[server.tls]\nlisten = ["127.0.0.1:{self.gw_tls_port}"]\n'
                           f'[[server.tls.certificates]]\ncert = "{w}/tls.pem"\nkey = "{w}/tls.key"\n'
                           if tls else "")
            log = (f'[access_log]\npath = "{w}/{name}-access.log"\n' if access_log
                   else "[access_log]\nenabled = false\n")
            if sample_ratio is not None:
                log += (f'[tracing]\notlp_endpoint = "http://127.0.0.1:{self.otlp_port}"\n'
                        f'sample_ratio = {sample_ratio:.1f}\n')
            text = f"""[server]
listen = ["127.0.0.1:{port}"]
threads = 1
pid_file = "{w}/{name}.pid"
upgrade_sock = "{w}/{name}.sock"
{tls_section}{log}
[auth.api_keys.k]
keys_file = "{w}/keys.toml"
[auth.introspection.i]
url = "http://127.0.0.1:{self.introspection_port}/introspect"
client_id = "bench"
client_secret_env = "BENCH_SECRET"
tier_claim = "tier"
[auth.jwt.j]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
tier_claim = "tier"
[rate_limit.tiers.big]
rps = 10000000
burst = 100000000
[upstreams.b]
backends = [{{ addr = "127.0.0.1:{self.backend_port}" }}]
[upstreams.ws]
backends = [{{ addr = "127.0.0.1:{self.ws_port}" }}]
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "b"
[[routes]]
name = "ws"
path_prefix = "/ws"
upstream = "ws"
[[routes]]
name = "apikey"
path_prefix = "/apikey"
upstream = "b"
auth = ["api_key:k"]
rate_limit = {{ key = "consumer", default_tier = "big" }}
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "b"
auth = ["jwt:j"]
rate_limit = {{ key = "consumer", default_tier = "big" }}
[[routes]]
name = "introspect"
path_prefix = "/introspect"
upstream = "b"
auth = ["introspection:i"]
rate_limit = {{ key = "consumer", default_tier = "big" }}
[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "b"
[routes.cache]
ttl = "10m"
"""
            path = f"{w}/{name}.toml"
            with open(path, "w") as f:
                f.write(text)
            return self.spawn([gh, "-c", path], 0,
                              env={"BENCH_SECRET": secret, "RUST_LOG": "error"})

        self.gw_proc = config("gw", self.gw_port, False, True)
        self.gw_log_proc = config("gwlog", self.gw_log_port, True, False)
        self.gw_tr0_proc = config("gwtr0", self.gw_tr0_port, False, False, 0.0)
        self.gw_tr1_proc = config("gwtr1", self.gw_tr1_port, False, False, 1.0)
        for port in (self.nginx_port, self.bare_port):
            wait_up(port)
        for port in (self.gw_port, self.gw_log_port, self.gw_tr0_port, self.gw_tr1_port):
            wait_up(port, "/plain")
        # The cached cases measure hits: fill both caches and check that they answer.
        for port in (self.nginx_port, self.gw_port):
            url = f"http://127.0.0.1:{port}/cached"
            try:
                urllib.request.urlopen(url, timeout=5).read()
                with urllib.request.urlopen(url, timeout=5) as r:
                    x_cache = r.headers.get("X-Cache")
            except OSError as e:
                raise SystemExit(f"{url}: {e}")
            if x_cache != "HIT":
                raise SystemExit(f"{url}: X-Cache {x_cache}, not HIT")

    def introspection_endpoint(self):
        """An RFC 7662 endpoint on CPU 1: every token is active for an hour (the gateway asks
        once per token and then answers from its cache)."""
        port = free_port()
        code = (
            "import http.server, json, sys, time\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    protocol_version = 'HTTP/1.1'\n"
            "    def do_POST(self):\n"
            "        self.rfile.read(int(self.headers.get('Content-Length') or 0))\n"
            "        body = json.dumps({'active': True, 'sub': 'bench', 'tier': 'big',\n"
            "                           'exp': int(time.time()) + 3600}).encode()\n"
            "        self.send_response(200)\n"
            "        self.send_header('Content-Type', 'application/json')\n"
            "        self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers()\n"
            "        self.wfile.write(body)\n"
            "    def do_GET(self):\n"
            "        self.do_POST()\n"
            "    def log_message(self, *a): pass\n"
            "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
        self.spawn([sys.executable, "-c", code, str(port)], 1)
        wait_up(port)
        return port

    def otlp_receiver(self):
        """An OTLP/HTTP endpoint on CPU 1 that reads each export and answers 200 (an empty
        ExportTraceServiceResponse), so that the gateway's side of tracing is what is measured."""
        port = free_port()
        code = (
            "import http.server, sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    protocol_version = 'HTTP/1.1'\n"
            "    def do_POST(self):\n"
            "        self.rfile.read(int(self.headers.get('Content-Length') or 0))\n"
            "        self.send_response(200)\n"
            "        self.send_header('Content-Type', 'application/x-protobuf')\n"
            "        self.send_header('Content-Length', '0')\n"
            "        self.end_headers()\n"
            "    def log_message(self, *a): pass\n"
            "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
        self.spawn([sys.executable, "-c", code, str(port)], 1)
        wait_up(port)
        return port

    def wrk(self, url, headers=(), connections=64):
        cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}",
               f"-d{self.args.duration}s"]
        for h in headers:
            cmd += ["-H", h]
        out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
        total = rps = 0.0
        for line in out.splitlines():
            if "requests in" in line:
                total = float(line.split()[0])
            if line.startswith("Requests/sec:"):
                rps = float(line.split()[1])
            if "Non-2xx" in line:
                raise SystemExit(f"errors from {url}: {line}")
        return total, rps

    def measure(self, pids, url, headers=()):
        before = sum(cpu_ticks(p) for p in pids)
        total, rps = self.wrk(url, headers)
        used = sum(cpu_ticks(p) for p in pids) - before
        return rps, used / TICK * 1e6 / max(total, 1)

    def throughput(self):
        n = self.nginx_proc.pid
        cases = [
            ("nginx proxy_pass", lambda: children_pids(n), f"http://127.0.0.1:{self.nginx_port}/", ()),
            ("bare Pingora", lambda: [self.bare_proc.pid], f"http://127.0.0.1:{self.bare_port}/", ()),
            ("gatehouse routing only", lambda: [self.gw_proc.pid],
             f"http://127.0.0.1:{self.gw_port}/plain", ()),
            ("gatehouse JWT + rate limit", lambda: [self.gw_proc.pid],
             f"http://127.0.0.1:{self.gw_port}/jwt", (f"Authorization: Bearer {self.jwt}",)),
            ("gatehouse JWT + rate limit + access log", lambda: [self.gw_log_proc.pid],
             f"http://127.0.0.1:{self.gw_log_port}/jwt", (f"Authorization: Bearer {self.jwt}",)),
            ("gatehouse API key + rate limit", lambda: [self.gw_proc.pid],
             f"http://127.0.0.1:{self.gw_port}/apikey", (f"X-API-Key: {self.key}",)),
            ("gatehouse introspection (cached) + rate limit", lambda: [self.gw_proc.pid],
             f"http://127.0.0.1:{self.gw_port}/introspect",
             ("Authorization: Bearer opaque-bench-token",)),
            ("nginx proxy_cache (hit)", lambda: children_pids(n),
             f"http://127.0.0.1:{self.nginx_port}/cached", ()),
            ("gatehouse cached route (hit)", lambda: [self.gw_proc.pid],
             f"http://127.0.0.1:{self.gw_port}/cached", ()),
            ("gatehouse routing + tracing, sample_ratio 0", lambda: [self.gw_tr0_proc.pid],
             f"http://127.0.0.1:{self.gw_tr0_port}/plain", ()),
            ("gatehouse routing + tracing, sample_ratio 1", lambda: [self.gw_tr1_proc.pid],
             f"http://127.0.0.1:{self.gw_tr1_port}/plain", ()),
        ]
        results = {c[0]: ([], []) for c in cases}
        for r in range(self.args.rounds):
            for name, pids, url, headers in cases:
                rps, us = self.measure(pids(), url, headers)
                results[name][0].append(rps)
                results[name][1].append(us)
            print(f"  round {r + 1}/{self.args.rounds} done", file=sys.stderr)
        med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in results.items()}
        bare_us = med["bare Pingora"][1]
        nginx_rps = med["nginx proxy_pass"][0]
        print(f"\nThroughput, wrk -t1 -c64, {self.args.duration}s x {self.args.rounds} "
              "interleaved rounds (medians):")
        print(f"| case | req/s | vs nginx | CPU µs/request | vs bare |")
        print("|---|---|---|---|---|")
        for name, _, _, _ in cases:
            rps, us = med[name]
            print(f"| {name} | {rps:,.0f} | {rps / nginx_rps:.2f}x | {us:.1f} | "
                  f"{us / bare_us:.2f}x |")
        return med

    def ws_backend(self):
        """A WebSocket backend for the idle-connection measurement: answers every upgrade with
        101 and then keeps the connection, silent (asyncio, in a thread of this script)."""
        port = free_port()
        ready = threading.Event()

        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            await writer.drain()
            await reader.read()  # until the proxy closes
            writer.close()

        def run():
            loop = asyncio.new_event_loop()
            server = loop.run_until_complete(
                asyncio.start_server(handle, "127.0.0.1", port, backlog=4096))
            self.ws_server = (loop, server)
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait()
        return port

    @staticmethod
    def open_idle(port, path, kind, tls_ctx):
        """One connection to port that makes one request of `kind` (plain, tls, h2, ws), reads
        its answer and is then kept, idle."""
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        if kind in ("tls", "h2"):
            s = tls_ctx[kind].wrap_socket(s, server_hostname="localhost")
        if kind == "h2":
            def frame(kind_, flags, stream, payload=b""):
                return struct.pack(">I", len(payload))[1:] + bytes([kind_, flags]) + \
                    struct.pack(">I", stream) + payload
            # HPACK: :method GET, :scheme https (static table), :path and :authority as
            # literals without indexing.
            block = (b"\x82\x87\x04" + bytes([len(path)]) + path.encode() +
                     b"\x01\x09localhost")
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) +
                      frame(1, 0x5, 1, block))
            buf, done = b"", False
            while not done:
                got = s.recv(65536)
                if not got:
                    raise SystemExit("h2: connection closed")
                buf += got
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    length, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                    if ftype == 4 and not flags & 1:
                        s.sendall(frame(4, 1, 0))  # acknowledge the server's SETTINGS
                    if ftype in (0, 1) and flags & 1:
                        done = True  # END_STREAM on the response
                    buf = buf[9 + length:]
            return s
        if kind == "ws":
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        else:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = s.recv(4096)
            if not got:
                raise SystemExit(f"{kind}: connection closed")
            head += got
        want = b"HTTP/1.1 101" if kind == "ws" else b"HTTP/1.1 200"
        if not head.startswith(want):
            raise SystemExit(f"{kind} to {port}{path}: {head[:60]!r}")
        return s

    def memory(self, n=2000):
        """RSS per idle connection: warm up with 64 connections (closed), then open N, one at
        a time, each making one request and reading its answer (so that no more than one
        request is in flight and the figure is what idle connections hold, not a peak), then
        RSS delta / N. N = 2000 because RSS grows in steps of up to 2 MiB here."""
        tls_ctx = {}
        for kind, alpn in (("tls", ["http/1.1"]), ("h2", ["h2"])):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(alpn)
            tls_ctx[kind] = ctx
        n_pids = lambda: children_pids(self.nginx_proc.pid)
        rows = [
            ("plain HTTP/1.1", "nginx proxy_pass", n_pids, self.nginx_port, "/", "plain"),
            ("plain HTTP/1.1", "bare Pingora", lambda: [self.bare_proc.pid], self.bare_port,
             "/", "plain"),
            ("plain HTTP/1.1", "gatehouse", lambda: [self.gw_proc.pid], self.gw_port, "/plain",
             "plain"),
            ("TLS HTTP/1.1", "nginx proxy_pass", n_pids, self.nginx_tls_port, "/", "tls"),
            ("TLS HTTP/1.1", "gatehouse", lambda: [self.gw_proc.pid], self.gw_tls_port,
             "/plain", "tls"),
            ("TLS HTTP/2", "nginx proxy_pass", n_pids, self.nginx_tls_port, "/", "h2"),
            ("TLS HTTP/2", "gatehouse", lambda: [self.gw_proc.pid], self.gw_tls_port, "/plain",
             "h2"),
            ("WebSocket (plain)", "nginx proxy_pass", n_pids, self.nginx_port, "/ws", "ws"),
            ("WebSocket (plain)", "gatehouse", lambda: [self.gw_proc.pid], self.gw_port, "/ws",
             "ws"),
        ]
        print(f"\nMemory per idle client connection ({n} connections, one request each, "
              "RSS delta / N; a WebSocket counts its upstream connection too):")
        print("| connection | proxy | KB per connection |")
        print("|---|---|---|")
        for kind_label, name, pids, port, path, kind in rows:
            warm = [self.open_idle(port, path, kind, tls_ctx) for _ in range(64)]
            for s in warm:
                s.close()
            time.sleep(1)
            before = sum(rss_kb(p) for p in pids())
            socks = [self.open_idle(port, path, kind, tls_ctx) for _ in range(n)]
            time.sleep(1)
            after = sum(rss_kb(p) for p in pids())
            for s in socks:
                s.close()
            print(f"| {kind_label} | {name} | {(after - before) / n:.1f} |", flush=True)
            time.sleep(1)

    def latency(self):
        need("h2load", "nghttp2-client")
        rounds = self.args.rounds
        modes = [
            ("10 connections, 500 req/s each (bursts of ten)", ["-c", "10", "--rps", "500"]),
            ("one connection, 1k req/s (no queueing)", ["-c", "1", "--rps", "1000"]),
        ]
        targets = [
            ("backend directly", f"http://127.0.0.1:{self.backend_port}/", ()),
            ("nginx proxy_pass", f"http://127.0.0.1:{self.nginx_port}/", ()),
            ("bare Pingora", f"http://127.0.0.1:{self.bare_port}/", ()),
            ("gatehouse routing only", f"http://127.0.0.1:{self.gw_port}/plain", ()),
            ("gatehouse JWT + rate limit", f"http://127.0.0.1:{self.gw_port}/jwt",
             (f"Authorization: Bearer {self.jwt}",)),
        ]
        log = os.path.join(self.work, "h2load.log")
        for label, load in modes:
            samples = {name: [] for name, _, _ in targets}
            achieved = {name: [] for name, _, _ in targets}
            for _ in range(rounds):
                for name, url, headers in targets:
                    # h2load appends to --log-file: start each run from an empty file, or
                    # every target after the first is mixed with the ones before it.
                    if os.path.exists(log):
                        os.remove(log)
                    cmd = ["taskset", "-c", "1", "h2load", "--h1", *load, "-D", "4",
                           "--log-file", log]
                    for h in headers:
                        cmd += ["-H", h]
                    subprocess.run(cmd + [url], capture_output=True, check=True)
                    with open(log) as f:
                        durations = sorted(int(l.split()[2]) for l in f if l.strip())
                    samples[name].append((durations[len(durations) // 2],
                                          durations[int(len(durations) * 0.99)]))
                    achieved[name].append(len(durations) / 4)
            med = {k: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v))
                   for k, v in samples.items()}
            rate = statistics.median(r for v in achieved.values() for r in v)
            base = med["backend directly"]
            print(f"\nLatency, h2load --h1 {' '.join(load)}, {rate:,.0f} req/s achieved, "
                  f"4 s x {rounds} interleaved rounds (medians), {label}:")
            print("| target | p50 µs | p99 µs | added p50 | added p99 | added p50 vs nginx |")
            print("|---|---|---|---|---|---|")
            nginx_added = max(med["nginx proxy_pass"][0] - base[0], 1)
            for name, _, _ in targets:
                p50, p99 = med[name]
                print(f"| {name} | {p50:.0f} | {p99:.0f} | {p50 - base[0]:+.0f} | "
                      f"{p99 - base[1]:+.0f} | {(p50 - base[0]) / nginx_added:.2f}x |")

    def tls(self):
        print("\nTLS termination, same ECDSA P-256 certificate (one round each):")
        print("| case | nginx req/s | gatehouse req/s | ratio |")
        print("|---|---|---|---|")
        for label, headers in [("keep-alive", ()), ("new connection per request",
                                                    ("Connection: close",))]:
            _, n = self.wrk(f"https://127.0.0.1:{self.nginx_tls_port}/", headers)
            _, g = self.wrk(f"https://127.0.0.1:{self.gw_tls_port}/plain", headers)
            print(f"| {label} | {n:,.0f} | {g:,.0f} | {g / n:.2f}x |")


def make_jwt(secret):
    import base64
    import hashlib
    import hmac

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps({"sub": "bench", "tier": "big", "exp": int(time.time()) + 3600}).encode())
    s = b64(hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{s}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-tls", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    for tool, pkg in [("wrk", "wrk"), ("nginx", "nginx"), ("openssl", "openssl")]:
        need(tool, pkg)
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "gatehouse"], cwd=ROOT,
                   check=True)
    b = Bench(args)
    try:
        b.setup()
        print(f"# {time.strftime('%Y-%m-%d')} on {os.uname().nodename}, "
              f"{os.cpu_count()} CPUs; proxies pinned to CPU 0, wrk and the backend to CPU 1")
        if not args.skip_throughput:
            b.throughput()
        if not args.skip_memory:
            b.memory()
        if not args.skip_latency:
            b.latency()
        if not args.skip_tls:
            b.tls()
    finally:
        b.close()


if __name__ == "__main__":
    main()
