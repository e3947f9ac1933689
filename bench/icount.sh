#!/usr/bin/env bash
# Instructions Spindle executes per proxied request, counted by valgrind's callgrind: unlike
# times on a shared machine, the count repeats to within about 1% from run to run, so it shows
# what a change to the host or a filter costs. Kernel work (the loopback TCP stack) is not
# counted: this is Spindle's own code, wasmtime and the filters, libc included.
#
# For each chain (router + balancer; router + balancer + retry + breaker, the configs of
# bench/load.sh) Spindle runs under callgrind twice, serving LOW and then HIGH requests
# (keep-alive GETs one at a time over CONNS connections, after 50 warm-up requests); the
# difference of the two totals divided by HIGH - LOW is the per-request count, free of
# start-up and shutdown. Then nginx and HAProxy (the configs of bench/load.sh, one worker
# process or thread, nginx without its master process) are counted the same way, as the
# figure to beat.
#
# Needs: target/release/{spindle,demo-upstream} and target/filters/*.wasm (`make build`),
# valgrind, python3, nginx and haproxy (`make bench-deps`). About 5 minutes.
#
# Environment: LOW [1000], HIGH [3000], CHAINS ["2 4"], CONNS [2: the keep-alive connections the
# requests take turns on], COMPARE ["nginx haproxy"; empty: none],
# PROFILE [empty; a file: one more 4-filter run of HIGH requests whose callgrind profile, warm-up
# and start-up left out, is written there for `callgrind_annotate`, the filters' compiled functions
# named through wasmtime's perf map (SPINDLE_WASM_PERFMAP=1, bench/perfmap_names.py)],
# CACHESIM [empty; 1: callgrind also simulates the caches and branch predictors
# (--cache-sim=yes --branch-sim=yes) and every event is reported per request: instruction and
# data reads and writes, first-level instruction and data misses (I1mr, D1mr, D1mw), last-level
# misses, conditional and indirect branches and their mispredictions. The simulated caches take
# the sizes of this machine's; a model, not a measurement: it says where a proxy touches more code
# and data per request, which costs cycles where the instruction count does not show it. About 3
# times as slow.]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=spindle_config.sh
source "$HERE/spindle_config.sh"
# shellcheck source=proxy_configs.sh
source "$HERE/proxy_configs.sh"
# shellcheck source=processes.sh
source "$HERE/processes.sh"
LOW="${LOW:-1000}"
HIGH="${HIGH:-3000}"
CHAINS="${CHAINS:-2 4}"
COMPARE="${COMPARE-nginx haproxy}"
PROFILE="${PROFILE:-}"
CACHESIM="${CACHESIM:-}"
CONNS="${CONNS:-2}"
SIM=()
[ -n "$CACHESIM" ] && SIM=(--cache-sim=yes --branch-sim=yes)
# Debian puts nginx and haproxy in /usr/sbin, which a non-login shell may not have on its PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() {
  echo "icount: $*" >&2
  exit 1
}
command -v valgrind >/dev/null || die "needs valgrind (make bench-deps)"
[ -x "$SPINDLE_BIN" ] || die "no spindle binary at $SPINDLE_BIN: run 'make build' first"
[ -x "$UPSTREAM_BIN" ] || die "no demo-upstream binary at $UPSTREAM_BIN: run 'make build' first"
for p in $COMPARE; do
  command -v "$p" >/dev/null || die "needs $p (make bench-deps), or COMPARE=\"\""
done
[ "$HIGH" -gt "$LOW" ] || die "HIGH ($HIGH) must be more than LOW ($LOW)"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ready() {
  local admin=$1
  for _ in $(seq 1 600); do
    python3 - "$admin" <<'PY' 2>/dev/null && return 0
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=1)
PY
    sleep 0.2
  done
  die "spindle did not become ready under valgrind"
}

UPSTREAM_PORT="$(free_port)"
"$UPSTREAM_BIN" --listen "127.0.0.1:$UPSTREAM_PORT" --name bench >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# Total instructions of one Spindle run serving N requests through CHAIN.
run() (
  local chain=$1 n=$2 port admin pid
  port="$(free_port)"
  admin="$(free_port)"
  local filters=$TWO
  [ "$chain" = 4 ] && filters=$FOUR
  spindle_config "$WORK/spindle.toml" "$port" "$admin" "$filters" "$FILTERS/balancer.wasm"
  valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$WORK/cg.out" \
    "$SPINDLE_BIN" --log-level warn run --config "$WORK/spindle.toml" >"$WORK/spindle.log" 2>&1 &
  pid=$!
  # The function runs in a subshell: stop the proxy when it fails.
  trap "kill $pid 2>/dev/null || true" EXIT
  ready "$admin"
  python3 "$HERE/keepalive_get.py" "$port" 50 || die "warm-up failed"
  python3 "$HERE/keepalive_get.py" "$port" "$n" "$CONNS" || die "requests failed"
  kill -TERM "$pid"
  wait "$pid" || die "spindle exited with an error: $(tail -5 "$WORK/spindle.log")"
  totals "$WORK/cg.out"
)

# A profile's totals, every event (just instructions without CACHESIM), space-separated.
totals() {
  awk '/^(summary|totals):/ { $1 = ""; sub(/^ /, ""); print; exit }' "$1"
}

# The names of the events a run counts, space-separated.
events() {
  awk '/^events:/ { $1 = ""; sub(/^ /, ""); print; exit }' "$WORK/cg.out"
}

# Per request, each event of two runs' totals: "name value" pairs, space-separated.
per_request() {
  local low=$1 high=$2 names
  names="$(events)"
  python3 - "$names" "$low" "$high" "$((HIGH - LOW))" <<'PY'
import sys
names, low, high, n = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
print(" ".join(f"{k} {(int(h) - int(l)) / n:.0f}" for k, l, h in zip(names, low, high)))
PY
}

# How one target's counts are printed: the instruction count alone, or every event.
report() {
  local label=$1 low=$2 high=$3
  if [ -z "$CACHESIM" ]; then
    echo "$label: $(((${high%% *} - ${low%% *}) / (HIGH - LOW)))"
  else
    echo "$label: $(per_request "$low" "$high")"
  fi
}

wait_for_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  die "$2 did not start listening under valgrind"
}

# Total instructions of one nginx or HAProxy run serving N requests.
run_other() (
  local proxy=$1 n=$2 port pid stop
  port="$(free_port)"
  case "$proxy" in
    nginx)
      nginx_config "$WORK/nginx" "$port"
      # No master process: the one process counted is the one that serves.
      valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$WORK/cg.out" \
        nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" \
        -g 'daemon off; master_process off;' >"$WORK/nginx.log" 2>&1 &
      stop=QUIT
      ;;
    haproxy)
      haproxy_config "$WORK/haproxy.cfg" "$port"
      valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$WORK/cg.out" \
        haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
      stop=USR1
      ;;
    *) die "unknown proxy to compare: $proxy" ;;
  esac
  pid=$!
  trap "kill $pid 2>/dev/null || true" EXIT
  wait_for_port "$port" "$proxy"
  python3 "$HERE/keepalive_get.py" "$port" 50 || die "$proxy: warm-up failed"
  python3 "$HERE/keepalive_get.py" "$port" "$n" "$CONNS" || die "$proxy: requests failed"
  # Graceful stops, after which each writes its profile.
  kill "-$stop" "$pid"
  wait "$pid" || true
  totals "$WORK/cg.out"
)

if [ -z "$CACHESIM" ]; then
  echo "instructions per request (callgrind; $LOW and $HIGH requests, 1 worker thread)"
else
  echo "events per request (callgrind with its cache and branch simulation; $LOW and $HIGH requests, 1 worker thread)"
fi
# The first run compiles the filters into the cache: not counted.
run 2 10 >/dev/null
for chain in $CHAINS; do
  low="$(run "$chain" "$LOW")"
  high="$(run "$chain" "$HIGH")"
  report "chain of $chain filters" "$low" "$high"
done
for proxy in $COMPARE; do
  low="$(run_other "$proxy" "$LOW")"
  high="$(run_other "$proxy" "$HIGH")"
  report "$proxy" "$low" "$high"
done
if [ -n "$PROFILE" ]; then
  # Counting starts after start-up and the warm-up, switched on through callgrind_control.
  (
    port="$(free_port)"
    admin="$(free_port)"
    spindle_config "$WORK/spindle.toml" "$port" "$admin" "$FOUR" "$FILTERS/balancer.wasm"
    SPINDLE_WASM_PERFMAP=1 valgrind --tool=callgrind "${SIM[@]}" --instr-atstart=no --callgrind-out-file="$PROFILE" \
      "$SPINDLE_BIN" --log-level warn run --config "$WORK/spindle.toml" >"$WORK/spindle.log" 2>&1 &
    pid=$!
    trap "kill $pid 2>/dev/null || true" EXIT
    ready "$admin"
    python3 "$HERE/keepalive_get.py" "$port" 50 || die "warm-up failed"
    callgrind_control -i on "$pid" >/dev/null 2>&1
    python3 "$HERE/keepalive_get.py" "$port" "$HIGH" "$CONNS" || die "requests failed"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || die "spindle exited with an error: $(tail -5 "$WORK/spindle.log")"
    # The filters' compiled code by name instead of `???` at an address.
    if [ -f "/tmp/perf-$pid.map" ]; then
      python3 "$HERE/perfmap_names.py" "$PROFILE" "/tmp/perf-$pid.map" >/dev/null
      rm -f "/tmp/perf-$pid.map"
    fi
  )
  echo "profile of $HIGH requests through the chain of 4 filters: $PROFILE (callgrind_annotate $PROFILE)"
fi
