#!/usr/bin/env bash
# Whole-gateway throughput on this machine: nginx proxy_pass vs gatehouse (routing only,
# + API key auth + local rate limit, + JWT HS256 + local rate limit), then TLS termination
# with the same certificate (ECDSA P-256) in both: keep-alive, and handshake-heavy (every
# request on a new connection, `Connection: close`). The proxy under test is
# pinned to CPU 0; wrk and the backend (nginx returning a small body) share CPU 1. Bounded:
# wrk -t1 -c32 for DURATION seconds (default 10) per case, loopback only.
# Usage: scripts/proxy-bench.sh [duration_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
for tool in wrk nginx; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
duration="${1:-10}"
cargo build --release --bin gatehouse >/dev/null 2>&1

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port); nginx_port=$(free_port); gw_port=$(free_port)
nginx_tls_port=$(free_port); gw_tls_port=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

nginx_conf() { # $1 name, $2 cpu, $3 server block
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
worker_cpu_affinity $2;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1;
  proxy_temp_path $work/$1;
  fastcgi_temp_path $work/$1;
  uwsgi_temp_path $work/$1;
  scgi_temp_path $work/$1;
  upstream backend { server 127.0.0.1:$backend_port; keepalive 64; }
  $3
}
NGINX
  nginx -c "$work/$1/nginx.conf" -p "$work/$1" &
  pids+=($!)
}
nginx_conf backend 10 "server { listen 127.0.0.1:$backend_port; location / { return 200 'hello from the backend'; } }"
nginx_conf proxy 01 "server { listen 127.0.0.1:$nginx_port; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
  server { listen 127.0.0.1:$nginx_tls_port ssl; ssl_certificate $work/tls.pem; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
sleep 0.5

secret="proxy-bench-hmac-secret-of-32-bytes-or-more"
key=$(target/release/gatehouse keys new --consumer bench --tier big --file "$work/keys.toml" 2>/dev/null)
jwt=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b64(json.dumps({"sub": "bench", "tier": "big", "exp": int(time.time()) + 3600}).encode())
s = b64(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)
cat > "$work/gatehouse.toml" <<TOML
[server]
listen = ["127.0.0.1:$gw_port"]
threads = 1
pid_file = "$work/gatehouse.pid"
upgrade_sock = "$work/upgrade.sock"
[server.tls]
listen = ["127.0.0.1:$gw_tls_port"]
[[server.tls.certificates]]
cert = "$work/tls.pem"
key = "$work/tls.key"
[access_log]
enabled = false
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
BENCH_SECRET="$secret" RUST_LOG=warn taskset -c 0 target/release/gatehouse -c "$work/gatehouse.toml" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$gw_port/plain" && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$gw_port/plain" || { echo "gatehouse did not start" >&2; exit 1; }

run() { # $1 label, $2 url, extra wrk args...
  local label=$1 url=$2; shift 2
  local out rps non2xx
  out=$(taskset -c 1 wrk -t1 -c32 -d"${duration}s" "$@" "$url")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  printf '%-40s %12s req/s  non-2xx: %s\n' "$label" "$rps" "${non2xx:-0}"
  echo "$rps" > "$work/last"
}
run "nginx proxy_pass" "http://127.0.0.1:$nginx_port/"; base=$(cat "$work/last")
for case in "gatehouse, routing only|/plain|" "gatehouse + API key + rate limit|/apikey|X-API-Key: $key" "gatehouse + JWT HS256 + rate limit|/jwt|Authorization: Bearer $jwt"; do
  IFS='|' read -r label path header <<<"$case"
  if [ -n "$header" ]; then run "$label" "http://127.0.0.1:$gw_port$path" -H "$header"; else run "$label" "http://127.0.0.1:$gw_port$path"; fi
  awk -v a="$(cat "$work/last")" -v b="$base" 'BEGIN { printf "%40s %11.2fx nginx\n", "", a / b }'
done

echo "TLS (same certificate, ECDSA P-256):"
run "nginx TLS keep-alive" "https://127.0.0.1:$nginx_tls_port/"; base=$(cat "$work/last")
run "gatehouse TLS keep-alive" "https://127.0.0.1:$gw_tls_port/plain"
awk -v a="$(cat "$work/last")" -v b="$base" 'BEGIN { printf "%40s %11.2fx nginx\n", "", a / b }'
run "nginx TLS, new connection per request" "https://127.0.0.1:$nginx_tls_port/" -H "Connection: close"; base=$(cat "$work/last")
run "gatehouse TLS, new connection per request" "https://127.0.0.1:$gw_tls_port/plain" -H "Connection: close"
awk -v a="$(cat "$work/last")" -v b="$base" 'BEGIN { printf "%40s %11.2fx nginx\n", "", a / b }'
