#!/usr/bin/env bash
# Local demo of the whole gateway (conf/dev.toml): starts two echo backends, makes an API key
# with `gatehouse keys new`, starts gatehouse, prints commands to paste into another shell
# (routing, balancing, 404/405, 429 with its headers, JWT 401/403/200, API keys, retries, a
# circuit breaker and a 503, the admin API, metrics, explain), and stops everything on Ctrl-C.
#
# Builds only the gatehouse binary (no dev-dependencies); the backends are a Python 3.11+
# standard-library script. Environment:
#   GATEHOUSE_BIN          use this binary instead of building target/release/gatehouse
#   GATEHOUSE_DEMO_CONF    another configuration laid out like conf/dev.toml (the tests use a
#                          copy on ephemeral ports); addresses and paths are read from it
set -euo pipefail
cd "$(dirname "$0")/.."
conf=${GATEHOUSE_DEMO_CONF:-conf/dev.toml}
bin=${GATEHOUSE_BIN:-}
if [ -z "$bin" ]; then
  scripts/install-deps.sh --build
  cargo build --release --bin gatehouse
  bin=target/release/gatehouse
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "the demo needs Python 3.11 or newer (tomllib)" >&2; exit 1; }

# Addresses and paths, read from the configuration itself.
eval "$(python3 - "$conf" <<'PY'
import os, shlex, sys, tomllib
path = sys.argv[1]
with open(path, "rb") as f:
    c = tomllib.load(f)
base = os.path.dirname(path) or "."
rel = lambda p: os.path.relpath(os.path.normpath(os.path.join(base, p)))
echo = [b["addr"] for b in c["upstreams"]["echo"]["backends"]]
flaky = [b["addr"] for b in c["upstreams"]["flaky"]["backends"]]
values = {
    "gw": c["server"]["listen"][0],
    "admin": c["admin"]["listen"],
    "b1": echo[0],
    "b2": echo[1],
    "dead": [a for a in flaky if a not in echo][0],
    "keys": rel(c["auth"]["api_keys"]["partners"]["keys_file"]),
    "access_log": rel(c["access_log"]["path"]),
}
for k, v in values.items():
    print(f"{k}={shlex.quote(v)}")
PY
)"
state=$(dirname "$keys")
mkdir -p "$state"
rm -f "$keys" "$access_log" "$state/backends.log"

export GATEHOUSE_ADMIN_TOKEN=${GATEHOUSE_ADMIN_TOKEN:-demo-token}
export GATEHOUSE_DEMO_JWT_SECRET=${GATEHOUSE_DEMO_JWT_SECRET:-demo-secret-for-local-tests-only-0123456789}
key=$("$bin" keys new --consumer acme --tier free --file "$keys" 2>"$state/keys-new.txt")
key_id=$(grep -o 'key_[0-9a-f]*' "$state/keys-new.txt" | head -n 1)

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
trap 'exit 130' INT TERM
python3 scripts/demo-backend.py "$b1" one 2>>"$state/backends.log" & pids+=($!)
python3 scripts/demo-backend.py "$b2" two 2>>"$state/backends.log" & pids+=($!)
for addr in "$b1" "$b2"; do
  for _ in $(seq 100); do curl -s -o /dev/null -f "http://$addr/health" && break; sleep 0.05; done
done
"$bin" -t -c "$conf" >/dev/null
RUST_LOG=warn "$bin" -c "$conf" 2>"$state/gatehouse.log" & gw_pid=$!
pids+=("$gw_pid")
for _ in $(seq 100); do
  curl -s -o /dev/null -f "http://$admin/ready" && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$state/gatehouse.log" >&2; exit 1; }
  sleep 0.1
done
curl -s -o /dev/null -f "http://$admin/ready" \
  || { echo "gatehouse did not become ready; see $state/gatehouse.log" >&2; exit 1; }

admin_auth="Authorization: Bearer $GATEHOUSE_ADMIN_TOKEN"
live=${b1}
cat <<TXT

Gatehouse is listening on http://$gw, its admin API on http://$admin (process $gw_pid).
Status page: open http://$admin/ in a browser, admin token $GATEHOUSE_ADMIN_TOKEN.
Paste these into another shell, from $(pwd):

# Routing and balancing: 200, path rewritten; 3:1 smooth weighted round robin; sticky by header; 405; 404
curl -si 'http://$gw/api/v1/users/7?expand=1'
for i in 1 2 3 4 5 6 7 8; do curl -s http://$gw/api/v1/users | grep '"backend"'; done
for i in 1 2 3; do curl -s -H 'X-User-Id: alice' http://$gw/sticky/x | grep '"backend"'; done
curl -si -X DELETE http://$gw/api/v1/users/7
curl -si http://$gw/nowhere

# Rate limiting: tier "demo" (burst 3, then one request per 2 s per client IP): 200 x3, then 429 with Retry-After
for i in 1 2 3 4 5; do curl -s -o /dev/null -D - http://$gw/public/hello | grep -iE '^(HTTP|x-ratelimit-(limit|remaining|tier)|ratelimit|retry-after)'; echo; done

# JWT (HS256, provider "demo"): 401 without a token, 403 without scope orders:read, 200 with it
export GATEHOUSE_DEMO_JWT_SECRET='$GATEHOUSE_DEMO_JWT_SECRET'
curl -si http://$gw/orders/42
TOKEN=\$($bin token -c $conf --provider demo --sub alice)
curl -si -H "Authorization: Bearer \$TOKEN" http://$gw/orders/42
TOKEN=\$($bin token -c $conf --provider demo --sub alice --claim scope=orders:read --claim tier=pro)
curl -si -H "Authorization: Bearer \$TOKEN" http://$gw/orders/42

# API key (made at start: gatehouse keys new --consumer acme --tier free --file $keys): 200, 401; revoked -> 401
curl -si -H 'X-API-Key: $key' http://$gw/partners/1
curl -si -H 'X-API-Key: ghk_wrong' http://$gw/partners/1
$bin keys revoke $key_id --file $keys
sleep 2; curl -si -H 'X-API-Key: $key' http://$gw/partners/1

# Resilience: /flaky has a live ($live) and a dead ($dead) backend. Retries hide the dead one (all 200)
# and its circuit breaker opens after 3 refused connections; drain the live one and the answer is 503
for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{http_code} ' http://$gw/flaky/x; done; echo
curl -s http://$admin/metrics | grep 'gatehouse_circuit_state{.*flaky'
curl -s -X POST -H '$admin_auth' http://$admin/admin/upstreams/flaky/backends/$live/drain; echo
curl -si http://$gw/flaky/x
curl -s -X POST -H '$admin_auth' http://$admin/admin/upstreams/flaky/backends/$live/enable; echo
curl -s -o /dev/null -w '%{http_code}\n' http://$gw/flaky/x

# Caching: /cached keeps answers 30 s: MISS, then HIT with Age (the backend is asked once); purged, it is fetched again
for i in 1 2; do curl -s -o /dev/null -D - http://$gw/cached/item | grep -iE '^(x-cache|age)'; done
curl -s -X POST -H '$admin_auth' -d '{"route": "cached", "path_prefix": "/cached"}' http://$admin/admin/cache/purge; echo
curl -s -o /dev/null -D - http://$gw/cached/item | grep -i '^x-cache'

# Operations: backend state, effective configuration (secrets redacted), metrics, explain, reload
curl -s -H '$admin_auth' http://$admin/admin/upstreams
curl -s -H '$admin_auth' http://$admin/admin/config | python3 -m json.tool | grep -B1 redacted
curl -s http://$admin/metrics | grep '^gatehouse_requests_total' | grep -v ' 0$'
$bin explain -c $conf GET http://$gw/orders/42
kill -HUP $gw_pid
tail -n 3 $access_log

Press Ctrl-C to stop.
TXT
wait "$gw_pid"
