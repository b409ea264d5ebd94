#!/usr/bin/env bash
# Instructions and heap allocations per proxied request, counted by callgrind (deterministic:
# the same binary, config and requests give the same count whatever else the machine does,
# unlike wall-clock figures on these VMs). Runs each given gatehouse binary (default:
# target/release/gatehouse) under callgrind with one worker thread against an nginx backend,
# warms up, zeroes the counters, sends N keep-alive requests per case (routing only; API key +
# local rate limit; JWT HS256 + local rate limit; the same with the JSON access log written to
# a file, its writer thread included) and prints instructions and allocations
# (calls into mimalloc's and libc's allocation entry points, reallocations included) per
# request. BARE=path/to/bare-pingora adds the bare Pingora reference proxy
# (benches/bare_pingora, same allocator) as the first row. Loopback only, bounded by N.
# Usage: [BARE=BIN] scripts/instructions-per-request.sh [-n N] [BINARY...]
# CALLGRIND_KEEP=DIR keeps each profile for callgrind_annotate; CALLGRIND_OPTS adds valgrind
# options (for example --separate-callers=8 to see who allocates).
set -euo pipefail
cd "$(dirname "$0")/.."
n=2000
if [ "${1:-}" = "-n" ]; then n=$2; shift 2; fi
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/gatehouse)
for tool in valgrind nginx; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$backend_port; location / { return 200 'hello from the backend'; } }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

secret="instructions-bench-hmac-secret-of-32-bytes"
key=$("${binaries[0]}" keys new --consumer bench --tier big --file "$work/keys.toml" 2>/dev/null)
jwt=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b64(json.dumps({"sub": "bench", "tier": "big", "exp": int(time.time()) + 3600}).encode())
s = b64(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)

# Sends COUNT keep-alive GETs to PORT PATH with an optional header; fails on a non-200.
send() { # $1 port, $2 path, $3 count, $4 header line or ""
  python3 - "$@" <<'PY'
import http.client, sys
port, path, count, header = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
headers = dict([header.split(": ", 1)]) if header else {}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(count):
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: status {r.status}")
PY
}

# Allocation calls in a callgrind profile: calls into the allocators' entry points from
# outside the allocator (mimalloc's aligned entry points are what Rust's GlobalAlloc uses).
count_allocations() {
  python3 - "$@" <<'PY'
import re, sys
ENTRY = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "mi_malloc", "mi_zalloc",
         "mi_calloc", "mi_realloc", "malloc", "calloc", "realloc"}
names, total, caller, target = {}, 0, "", None
ref = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
for path in sys.argv[1:]:
    with open(path, errors="replace") as f:
        for line in f:
            m = ref.match(line)
            if m:
                kind, i, name = m.groups()
                if name:
                    names[i] = name.strip()
                if kind == "fn":
                    caller = names.get(i, "")
                else:
                    target = names.get(i, "")
            elif line.startswith("calls=") and target is not None:
                if target in ENTRY and not caller.startswith("mi_"):
                    total += int(line.split()[0][6:])
                target = None
print(total)
PY
}

# Runs one callgrind measurement of the proxy started by "$@" listening on $port: warm up,
# zero the counters, N requests to $path with $header, dump; prints the row.
measure() { # label, then the command
  local label=$1; shift
  local out="$work/callgrind.out"
  rm -f "$out"*
  BENCH_SECRET="$secret" RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out" ${CALLGRIND_OPTS:-} \
    "$@" >"$work/proxy.log" 2>&1 &
  local vg=$!
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port$path" && break; sleep 0.2; done
  send "$port" "$path" 200 "$header"
  callgrind_control -z "$vg" >/dev/null 2>&1
  send "$port" "$path" "$n" "$header"
  # The access-log writer drains its queue every 50 ms: let it write the last lines.
  [ "${log:-off}" = on ] && sleep 0.3
  callgrind_control -d "$vg" >/dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  # The dump after zeroing holds only the N requests; sum every dump part's totals.
  local total allocations
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  allocations=$(count_allocations "$out".*)
  # CALLGRIND_KEEP=DIR keeps the profiles (for callgrind_annotate), one per binary and case.
  if [ -n "${CALLGRIND_KEEP:-}" ]; then
    mkdir -p "$CALLGRIND_KEEP"
    for f in "$out".*; do cp "$f" "$CALLGRIND_KEEP/$(basename "$bin")-${path#/}${log:+-log$log}-${f##*.}"; done
  fi
  printf '%-40s %-28s %12s %10s\n' "$bin" "$label" "$((total / n))" \
    "$(python3 -c "print(f'{$allocations / $n:.1f}')")"
}

printf '%-40s %-28s %12s %10s\n' binary case instr/request allocs/req
if [ -n "${BARE:-}" ]; then
  bin=$BARE path=/ header='' port=$(free_port)
  export BARE_BACKEND="127.0.0.1:$backend_port" BARE_LISTEN="127.0.0.1:$port"
  measure "routing only" "$BARE" -c benches/bare_pingora/pingora.yaml
fi
for bin in "${binaries[@]}"; do
  for case in "routing only|/plain||off" "API key + local rate limit|/apikey|X-API-Key: $key|off" \
    "JWT HS256 + local rate limit|/jwt|Authorization: Bearer $jwt|off" \
    "JWT + rate limit + access log|/jwt|Authorization: Bearer $jwt|on"; do
    IFS='|' read -r label path header log <<<"$case"
    if [ "$log" = on ]; then
      access_log="path = \"$work/access.log\""
    else
      access_log="enabled = false"
    fi
    port=$(free_port)
    cat > "$work/gatehouse.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
pid_file = "$work/gatehouse.pid"
upgrade_sock = "$work/upgrade.sock"
[access_log]
$access_log
[auth.api_keys.k]
keys_file = "$work/keys.toml"
[auth.jwt.j]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
tier_claim = "tier"
[rate_limit.tiers.big]
rps = 10000000
burst = 100000000
[upstreams.b]
backends = [{ addr = "127.0.0.1:$backend_port" }]
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "b"
[[routes]]
name = "apikey"
path_prefix = "/apikey"
upstream = "b"
auth = ["api_key:k"]
rate_limit = { key = "consumer", default_tier = "big" }
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "b"
auth = ["jwt:j"]
rate_limit = { key = "consumer", default_tier = "big" }
TOML
    measure "$label" "$bin" -c "$work/gatehouse.toml"
  done
done
