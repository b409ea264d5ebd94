#!/usr/bin/env bash
# Starts `gatehouse -d` (daemon_wait_for_ready, as the systemd unit does) N times while BUSY
# busy loops compete for the CPU, and counts how often the starting command fails although
# the daemon came up. Loopback only; bounded by N and by a 20 s limit per start.
#
#   scripts/daemon-ready-race.sh [BINARY] [N=40] [BUSY=3]
#
# Pingora 0.9.1's parent registers its SIGUSR1 handler only after forking; a daemon that
# signals readiness before that kills the parent (SIGUSR1's default action), and the start
# (or a systemd reload's `-d -u`) reports failure. third_party/README.md, pingora-core.
set -u
BIN=${1:-target/debug/gatehouse}
N=${2:-40}
BUSY=${3:-3}
work=$(mktemp -d)
busy_pids=()
cleanup() {
    for p in "${busy_pids[@]}"; do kill "$p" 2>/dev/null; done
    [ -f "$work/pid" ] && kill "$(cat "$work/pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq "$BUSY"); do (while :; do :; done) & busy_pids+=($!); done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/gatehouse.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
pid_file = "$work/pid"
upgrade_sock = "$work/upgrade.sock"
graceful_shutdown_timeout = "1s"

[upstreams.svc]
backends = [{ addr = "127.0.0.1:9" }]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
TOML
failed=0; by_signal=0
for i in $(seq "$N"); do
    rm -f "$work/pid"
    timeout 20 "$BIN" -d -c "$work/gatehouse.toml" 2>"$work/log"
    status=$?
    if [ "$status" -ne 0 ]; then
        failed=$((failed + 1))
        # 128 + 10: killed by SIGUSR1.
        [ "$status" -eq 138 ] && by_signal=$((by_signal + 1))
    fi
    for _ in $(seq 50); do [ -s "$work/pid" ] && break; sleep 0.1; done
    if [ -s "$work/pid" ]; then
        # Its shutdown is not what is measured.
        pid=$(cat "$work/pid")
        kill -KILL "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
done
echo "starts: $N, failed: $failed (killed by SIGUSR1: $by_signal), busy loops: $BUSY"
