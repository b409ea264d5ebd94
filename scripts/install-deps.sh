#!/usr/bin/env bash
# Installs the system packages the build and tests need, when missing (Debian/Ubuntu).
# --build: only what building the gateway and running the demo need (scripts/demo.sh).
set -euo pipefail
build_only=false
[ "${1:-}" = "--build" ] && build_only=true
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if $build_only; then
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup first" >&2; exit 1; }
  exit 0
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# faketime runs a gateway instance with a skewed clock in the rate-limit tests.
command -v faketime >/dev/null 2>&1 || need+=(faketime)
# systemd-analyze verifies the shipped unit in the tests.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The CORS test drives a real headless browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip --version >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"; $SUDO apt-get update -qq; $SUDO apt-get install -y -qq python3-pip >/dev/null; }
# The metrics test checks our exposition with the official Prometheus Python client's parser.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install -q prometheus-client 2>/dev/null \
    || python3 -m pip install -q --break-system-packages prometheus-client \
    || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"; $SUDO apt-get install -y -qq python3-prometheus-client >/dev/null; }
fi
# The protocol tests drive real gRPC and WebSocket clients and servers.
for mod in grpc:grpcio websockets:websockets; do
  if ! python3 -c "import ${mod%%:*}" 2>/dev/null; then
    python3 -m pip install -q "${mod#*:}" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "${mod#*:}"
  fi
done
# The status page test drives Chromium with Playwright (tests/tools/package.json, pinned by its lock).
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
tools="$(dirname "$0")/../tests/tools"
if [ ! -d "$tools/node_modules/playwright-core" ]; then
  (cd "$tools" && npm ci --no-audit --no-fund --silent)
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup first" >&2; exit 1; }
