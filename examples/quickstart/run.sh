#!/usr/bin/env bash
# The quickstart demo: three upstreams (one fails 30% of the time), spindle in front of them,
# a few hundred requests through it, then what spindle saw. Everything started here is stopped
# on exit, whatever happens.
#
# Needs `make build` first (target/release/spindle and target/filters/*.wasm).
# Environment: SPINDLE_BIN (default target/release/spindle), DEMO_BIN_DIR (default target/release),
# REQUESTS (default 300), CONCURRENCY (default 8).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SPINDLE_BIN="${SPINDLE_BIN:-$ROOT/target/release/spindle}"
DEMO_BIN_DIR="${DEMO_BIN_DIR:-$ROOT/target/release}"
REQUESTS="${REQUESTS:-300}"
CONCURRENCY="${CONCURRENCY:-8}"
CONFIG="$HERE/spindle.toml"
ADMIN_PORT=9901
EDGE="http://127.0.0.1:8080"

LOG_DIR="$(mktemp -d -t spindle-quickstart.XXXXXX)"
PIDS=()

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -f "$LOG_DIR/spindle.log" ]; then
    echo "---- spindle log (last 40 lines) ----" >&2
    tail -n 40 "$LOG_DIR/spindle.log" >&2 || true
  fi
  rm -rf "$LOG_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "run.sh: $*" >&2
  exit 1
}

# GET http://127.0.0.1:PORT/PATH with bash only (no curl needed); prints the raw response.
http_get() {
  local port=$1 path=$2
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
  cat <&3
  exec 3<&-
}

# The body of a GET (headers stripped).
http_body() {
  http_get "$@" 2>/dev/null | sed '1,/^\r\{0,1\}$/d'
}

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "$what did not start listening on port $port"
}

# ---- preflight
[ -x "$SPINDLE_BIN" ] || die "no spindle binary at $SPINDLE_BIN: run 'make build' first"
for f in router balancer retry breaker; do
  [ -f "$ROOT/target/filters/$f.wasm" ] || die "no target/filters/$f.wasm: run 'make build' first"
done
if [ ! -x "$DEMO_BIN_DIR/demo-upstream" ] || [ ! -x "$DEMO_BIN_DIR/demo-load" ]; then
  echo "==> building the demo services (cargo build --release -p demo-upstream)"
  (cd "$ROOT" && cargo build --release -p demo-upstream)
  DEMO_BIN_DIR="$ROOT/target/release"
fi
for port in 9001 9002 9003 8080 $ADMIN_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use; stop whatever listens there and try again"
  fi
done

# ---- upstreams
echo "==> starting upstreams a (9001), b (9002), c (9003, fails 30% of the time)"
"$DEMO_BIN_DIR/demo-upstream" --listen 127.0.0.1:9001 --name upstream-a >"$LOG_DIR/a.log" 2>&1 &
PIDS+=($!)
"$DEMO_BIN_DIR/demo-upstream" --listen 127.0.0.1:9002 --name upstream-b >"$LOG_DIR/b.log" 2>&1 &
PIDS+=($!)
"$DEMO_BIN_DIR/demo-upstream" --listen 127.0.0.1:9003 --name upstream-c --fail-rate 0.3 >"$LOG_DIR/c.log" 2>&1 &
PIDS+=($!)
wait_for_port 9001 upstream-a
wait_for_port 9002 upstream-b
wait_for_port 9003 upstream-c

# ---- spindle
echo "==> checking and starting spindle with $CONFIG"
if ! "$SPINDLE_BIN" check --config "$CONFIG" >"$LOG_DIR/check.log" 2>&1; then
  cat "$LOG_DIR/check.log" >&2
  die "spindle check rejected $CONFIG"
fi
echo "    spindle check: ok"
"$SPINDLE_BIN" run --config "$CONFIG" >"$LOG_DIR/spindle.log" 2>&1 &
SPINDLE_PID=$!
PIDS+=("$SPINDLE_PID")
ready=""
for _ in $(seq 1 600); do
  kill -0 "$SPINDLE_PID" 2>/dev/null || die "spindle exited during start-up"
  if http_get "$ADMIN_PORT" /ready 2>/dev/null | head -n 1 | grep -q ' 200'; then
    ready=1
    break
  fi
  sleep 0.1
done
[ -n "$ready" ] || die "spindle was not ready within 60 s"
echo "==> spindle is ready (admin http://127.0.0.1:$ADMIN_PORT)"

# ---- traffic
echo
echo "==> $REQUESTS requests to $EDGE/api/ (cluster api: a, b, and c with weight 2)"
"$DEMO_BIN_DIR/demo-load" --url "$EDGE" --path /api/ --requests "$REQUESTS" --concurrency "$CONCURRENCY"
echo
echo "==> 60 requests to $EDGE/ (cluster web: a and b)"
"$DEMO_BIN_DIR/demo-load" --url "$EDGE" --path / --requests 60 --concurrency 4

# ---- what spindle saw
METRICS="$(http_body "$ADMIN_PORT" /metrics)"
show() {
  local title=$1 pattern=$2
  echo
  echo "==> $title"
  printf '%s\n' "$METRICS" | grep -v '^#' | grep -E "$pattern" | awk '{ printf "  %-90s %s\n", $1, $2 }' || echo "  (none)"
}
show "upstream attempts per endpoint and result (retries included)" '^spindle_upstream_requests_total'
show "responses per listener and status" '^spindle_requests_total'
show "retry and breaker counters" '^[a-z_]*(retr|breaker|ejection)[a-z_]*(\{| )'
show "endpoints ejected right now (1 = ejected)" '^spindle_endpoint_ejected'

# ---- stop
echo
echo "==> stopping spindle (SIGTERM drains in-flight requests)"
kill -TERM "$SPINDLE_PID"
if wait "$SPINDLE_PID"; then
  echo "    spindle exited cleanly"
else
  echo "    spindle exited with status $?"
fi
