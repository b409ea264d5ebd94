#!/usr/bin/env python3
"""What `[server] read_buffer` and `[server.tls] read_buffer` cost and save: Gatehouse with
each size side by side (one process per size, all pinned to CPU 0, wrk and the nginx backend
on CPU 1), small GETs and 64 KiB POSTs, plain and TLS, interleaved rounds, medians of
requests/s and CPU µs per request. Memory per idle connection for each size comes from
`scripts/proxy-bench.py` (the buffer is held for a connection's whole life).

Loopback only, bounded: 4 s per wrk run, ROUNDS rounds (default 3).
Usage: [ROUNDS=N] [SIZES="0 16384 65536"] scripts/read-buffer-bench.py
"""

import importlib.util
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("proxy_bench", os.path.join(HERE, "proxy-bench.py"))
pb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pb)


class Args:
    duration = 4
    rounds = 1


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "gatehouse"],
                   cwd=pb.ROOT, check=True)
    b = pb.Bench(Args())
    post = os.path.join(b.work, "post.lua")
    with open(post, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    try:
        b.setup()
        gh = os.path.join(pb.ROOT, "target", "release", "gatehouse")
        base = open(os.path.join(b.work, "gw.toml")).read()
        inst = {}
        for size in os.environ.get("SIZES", "0 16384 65536").split():
            port, tls_port = pb.free_port(), pb.free_port()
            text = (base.replace(f"127.0.0.1:{b.gw_port}", f"127.0.0.1:{port}")
                    .replace(f"127.0.0.1:{b.gw_tls_port}", f"127.0.0.1:{tls_port}")
                    .replace("gw.pid", f"rb{size}.pid").replace("gw.sock", f"rb{size}.sock")
                    .replace("[server]\n", f"[server]\nread_buffer = {size}\n", 1)
                    .replace("[server.tls]\n", f"[server.tls]\nread_buffer = {size}\n", 1))
            path = os.path.join(b.work, f"rb{size}.toml")
            with open(path, "w") as f:
                f.write(text)
            p = b.spawn([gh, "-c", path], 0, env={"BENCH_SECRET": "x" * 43, "RUST_LOG": "error"})
            inst[size] = (p, port, tls_port)
        for _, port, _ in inst.values():
            pb.wait_up(port, "/plain")
        cases = [("GET, plain", "http", []), ("POST 64 KiB, plain", "http", ["-s", post]),
                 ("GET, TLS", "https", []), ("POST 64 KiB, TLS", "https", ["-s", post])]
        results = {}
        for r in range(int(os.environ.get("ROUNDS", "3"))):
            for label, scheme, extra in cases:
                for size, (p, port, tls_port) in inst.items():
                    url = f"{scheme}://127.0.0.1:{port if scheme == 'http' else tls_port}/plain"
                    before = pb.cpu_ticks(p.pid)
                    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", "-d4s",
                                          *extra, url], capture_output=True, text=True,
                                         check=True).stdout
                    used = pb.cpu_ticks(p.pid) - before
                    if "Non-2xx" in out:
                        raise SystemExit(f"errors from {url}:\n{out}")
                    total = [float(l.split()[0]) for l in out.splitlines() if "requests in" in l][0]
                    results.setdefault((label, size), []).append(
                        (total / 4, used / pb.TICK * 1e6 / total))
            print(f"  round {r + 1} done", file=sys.stderr)
        print("| case | read_buffer | req/s | CPU µs/request |")
        print("|---|---|---|---|")
        for (label, size), v in results.items():
            print(f"| {label} | {size} | {statistics.median(x for x, _ in v):,.0f} | "
                  f"{statistics.median(y for _, y in v):.1f} |")
    finally:
        b.close()


if __name__ == "__main__":
    main()
