#!/usr/bin/env bash
# Local demo: builds gatehouse, starts two echo backends (127.0.0.1:9001, :9002) and the gateway
# with conf/dev.toml on 127.0.0.1:8080, prints curl lines to try, and stops everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin gatehouse --example echo_backend
mkdir -p target/demo
target/release/examples/echo_backend 127.0.0.1:9001 one & b1=$!
target/release/examples/echo_backend 127.0.0.1:9002 two & b2=$!
target/release/gatehouse -t -c conf/dev.toml
GATEHOUSE_ADMIN_TOKEN=demo-token RUST_LOG=info target/release/gatehouse -c conf/dev.toml > target/demo/access.log & gw=$!
trap 'kill $gw $b1 $b2 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.1; done
cat <<'TXT'

Gatehouse is listening on http://127.0.0.1:8080. Try:

  curl -i http://127.0.0.1:8080/api/v1/users/7?expand=1     # routed to "echo", path rewritten to /users/7?expand=1
  for i in 1 2 3 4 5 6 7 8; do curl -s http://127.0.0.1:8080/api/v1/users | grep '"backend"'; done   # 3:1 smooth weighted
  curl -s -H 'X-User-Id: alice' http://127.0.0.1:8080/sticky/x | grep '"backend"'   # same backend every time for alice
  curl -i -X DELETE http://127.0.0.1:8080/api/v1/users/7     # 405 with Allow: GET, POST
  curl -i http://127.0.0.1:8080/nowhere                      # 404 JSON with request_id
  curl -s http://127.0.0.1:9901/metrics | grep gatehouse_requests_total   # Prometheus metrics
  curl -s -H 'Authorization: Bearer demo-token' http://127.0.0.1:9901/admin/upstreams   # backend state
  kill -HUP $(pgrep -f 'gatehouse -c conf/dev.toml')          # reload conf/dev.toml in place
  tail -f target/demo/access.log                              # JSON access log
  ./target/release/gatehouse -t -c conf/gatehouse.toml        # validate a config file

Press Ctrl-C to stop.
TXT
wait $gw
