#!/usr/bin/env bash
# Load check for shared rate limits: runs wrk (bounded: 5 s, 32 connections, loopback only)
# against a release gateway backed by a local redis-server, once with sync = "exact" and once
# with sync = "batched", and reports admitted throughput and Redis script calls per request.
# Usage: scripts/ratelimit-load.sh [duration_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
duration="${1:-5}"
cargo build --release --bin gatehouse --example echo_backend >/dev/null 2>&1

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port); backend_port=$(free_port); gw_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
redis_pid=$!
target/release/examples/echo_backend "127.0.0.1:$backend_port" load 2>/dev/null &
backend_pid=$!
gw_pid=""
cleanup() { kill $gw_pid $backend_pid $redis_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
sleep 0.5

printf '%-8s %12s %14s %16s %18s\n' sync "requests/s" "admitted/s" "admitted total" "redis calls/req"
for sync in exact batched; do
  cat > "$work/gatehouse.toml" <<TOML
[server]
listen = ["127.0.0.1:$gw_port"]
threads = 1
pid_file = "$work/gatehouse.pid"
upgrade_sock = "$work/upgrade.sock"
[access_log]
enabled = false
[rate_limit]
store = "redis"
redis_url = "redis://127.0.0.1:$redis_port"
sync = "$sync"
[rate_limit.tiers.load]
rps = 1000
burst = 1000
[upstreams.echo]
backends = [{ addr = "127.0.0.1:$backend_port" }]
[[routes]]
name = "load"
path_prefix = "/"
upstream = "echo"
rate_limit = { key = "header:X-Client", default_tier = "load" }
TOML
  RUST_LOG=warn target/release/gatehouse -c "$work/gatehouse.toml" &
  gw_pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$gw_port/" && break; sleep 0.1; done
  sleep 0.5
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
  out=$(wrk -t2 -c32 -d"${duration}s" -H 'X-Client: load' "http://127.0.0.1:$gw_port/")
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  non2xx=${non2xx:-0}
  admitted=$((total - non2xx))
  calls=$(redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_eval(sha)?:/ {s += $2} END {print s+0}')
  awk -v s="$sync" -v r="$rps" -v a="$admitted" -v d="$duration" -v c="$calls" -v t="$total" \
    'BEGIN { printf "%-8s %12s %14.0f %16d %18.4f\n", s, r, a / d, a, c / t }'
  kill -INT $gw_pid; wait $gw_pid 2>/dev/null || true
done
