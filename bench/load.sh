#!/usr/bin/env bash
# End-to-end load benchmark: the same wrk load against a fast upstream directly, Spindle with
# two filters (router + balancer), Spindle with four (+ retry + breaker), nginx and HAProxy; then
# a filter hot swap under load and Spindle's memory with idle keep-alive connections. One run
# measures everything so that the ratios hold on a noisy machine. `make bench-load` runs it.
#
# Needs: a spindle binary (SPINDLE_BIN; `make bench-load` gives the profile-guided build of
# `make release-pgo`), target/release/demo-upstream, target/filters/*.wasm (`make build`), and
# wrk, nginx, haproxy, python3, taskset (`make bench-deps`). Everything started here listens on
# 127.0.0.1 only and is stopped on exit.
#
# Environment (defaults in brackets):
#   CONNECTIONS [32]        wrk connections (HTTP/1.1 keep-alive, one wrk thread)
#   DURATION [10]           seconds of each measured run
#   WARMUP [2]              seconds of warm-up load before each measured run
#   ROUNDS [3]              rounds over all targets; the table shows the median round by req/s
#   SWAP_DURATION [20]      seconds of load during the hot swap test
#   SWAP_INTERVAL_MS [500]  time between two module replacements
#   IDLE_CONNECTIONS ["1000 10000"]  steps of the memory test (connections open in all)
#   PROXY_CPU [0], LOAD_CPU [1]      cores: each proxy on PROXY_CPU; upstream, wrk, clients on LOAD_CPU,
#                           which may be a list as taskset takes it (2-3, 1,3): on a machine with
#                           more cores, so that the load side no longer sets the rate
#   RESULTS [bench/RESULTS.md]       where the report is written as well as printed (empty: nowhere)
#   OTHER_BIN [empty]       another spindle binary (e.g. target/release/spindle beside the
#                           profile-guided build): one more row, its 4-filter chain, in every round
#   PERF [0]                1: one more 4-filter run under `perf record`, top symbols printed
#   SYSCALLS [0]            1: `perf stat` counts each proxy's system calls per request in round 1
#   RATE [10000]            requests per second of the fixed-rate runs (latency at the same load):
#                           after its wrk run, every target gets RATE_DURATION seconds of oha at
#                           this rate in every round; 0 leaves them out
#   RATE_DURATION [10]      seconds of each fixed-rate run
#   SIDECAR [1]             1: after its fixed-rate run, every target gets one more wrk run with the
#                           upstream moved onto PROXY_CPU beside the proxy (wrk alone on LOAD_CPU),
#                           so that the proxy's core, not the load side, sets the rate; 0 leaves
#                           them out
#   OHA [target/bench-tools/bin/oha, of `make bench-deps`; else oha on the PATH]   the oha binary
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=spindle_config.sh
source "$HERE/spindle_config.sh"
# shellcheck source=proxy_configs.sh
source "$HERE/proxy_configs.sh"
# shellcheck source=processes.sh
source "$HERE/processes.sh"
CONNECTIONS="${CONNECTIONS:-32}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-3}"
SWAP_DURATION="${SWAP_DURATION:-20}"
SWAP_INTERVAL_MS="${SWAP_INTERVAL_MS:-500}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-1000 10000}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
RESULTS="${RESULTS-$ROOT/bench/RESULTS.md}"
PERF="${PERF:-0}"
SYSCALLS="${SYSCALLS:-0}"
OTHER_BIN="${OTHER_BIN:-}"
RATE="${RATE:-10000}"
RATE_DURATION="${RATE_DURATION:-10}"
SIDECAR="${SIDECAR:-1}"
OHA="${OHA:-$ROOT/target/bench-tools/bin/oha}"
[ -x "$OHA" ] || OHA="$(command -v oha || echo "$OHA")"
# Debian puts nginx and haproxy in /usr/sbin, which a non-login shell may not have on its PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

WORK="$(mktemp -d -t spindle-bench.XXXXXX)"
PIDS=()

stop_all_on_exit

die() {
  echo "bench/load.sh: $*" >&2
  exit 1
}

log() {
  echo "==> $*" >&2
}

# ---- preflight
for tool in wrk nginx haproxy python3 taskset; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'make bench-deps' first"
done
[ -x "$SPINDLE_BIN" ] || die "no spindle binary at $SPINDLE_BIN: run 'make build' first"
[ -z "$OTHER_BIN" ] || [ -x "$OTHER_BIN" ] || die "no spindle binary at OTHER_BIN=$OTHER_BIN"
[[ "$SIDECAR" =~ ^[01]$ ]] || die "SIDECAR='$SIDECAR' is not 0 or 1"
[ "$RATE" = 0 ] || [ -x "$OHA" ] || die "no oha at $OHA (RATE=$RATE): run 'make bench-deps' first"
[ -x "$UPSTREAM_BIN" ] || die "no demo-upstream binary at $UPSTREAM_BIN: run 'make build' first"
for f in router balancer retry breaker; do
  [ -f "$FILTERS/$f.wasm" ] || die "no $FILTERS/$f.wasm: run 'make build' first"
done
for n in "$CONNECTIONS" "$DURATION" "$WARMUP" "$ROUNDS" "$SWAP_DURATION" "$SWAP_INTERVAL_MS" \
  "$PROXY_CPU" "$RATE" "$RATE_DURATION" $IDLE_CONNECTIONS; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "'$n' is not a whole number (see the environment variables at the top)"
done
[[ "$LOAD_CPU" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
  die "LOAD_CPU='$LOAD_CPU' is not a core or a list of cores (1, 2-3, 1,3)"
# The load cores one by one ("1 2 3" for 1-3).
LOAD_CORES=""
for part in ${LOAD_CPU//,/ }; do
  LOAD_CORES="$LOAD_CORES $(seq "${part%-*}" "${part#*-}" | paste -sd' ')"
done
LOAD_CORES="${LOAD_CORES# }"
LOAD_WHERE="core $LOAD_CPU"
[[ "$LOAD_CORES" == *" "* ]] && LOAD_WHERE="cores $LOAD_CPU"
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ] || [ "$RATE_DURATION" -lt 1 ] || [ "$SWAP_INTERVAL_MS" -lt 50 ]; then
  die "ROUNDS, DURATION and RATE_DURATION must be at least 1, SWAP_INTERVAL_MS at least 50"
fi
if ! taskset -c "$PROXY_CPU" true 2>/dev/null || ! taskset -c "$LOAD_CPU" true 2>/dev/null; then
  die "cannot pin to cores $PROXY_CPU and $LOAD_CPU (set PROXY_CPU and LOAD_CPU)"
fi

# File descriptors for the idle connections (the client and the proxy each hold one per connection).
max_idle=0
for n in $IDLE_CONNECTIONS; do
  if [ "$n" -gt "$max_idle" ]; then max_idle=$n; fi
done
want_fds=$((max_idle + 4096))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
  ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((max_idle + 100)) ] ||
  die "ulimit -n is $(ulimit -n), too low for $max_idle connections (lower IDLE_CONNECTIONS)"

CLK_TCK="$(getconf CLK_TCK)"
LOAD_BEFORE="$(uptime)"

# ---- helpers

# Raw HTTP/1.0 GET on 127.0.0.1 with bash only; prints the response (head and body).
http_get() {
  local port=$1 path=$2
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
  cat <&3
  exec 3<&-
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

wait_ready() {
  local admin=$1
  for _ in $(seq 1 150); do
    if http_get "$admin" /ready 2>/dev/null | head -n 1 | grep -q ' 200'; then
      return 0
    fi
    sleep 0.1
  done
  die "spindle did not become ready (admin port $admin)"
}

# Starts a command pinned to one core, its output in $WORK/NAME.log; sets STARTED to its pid.
start() {
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

stop() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# utime and stime of a process and of its live children (nginx's worker), in clock ticks:
# prints "USER SYSTEM".
cpu_ticks() {
  local pid=$1 user=0 system=0 p stat fields children
  children="$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
  for p in "$pid" $children; do
    stat="$(cat /proc/"$p"/stat 2>/dev/null)" || continue
    # Fields after "pid (comm) " start at field 3 (state); utime and stime are fields 14 and 15.
    read -r -a fields <<<"${stat##*) }"
    user=$((user + fields[11]))
    system=$((system + fields[12]))
  done
  echo "$user $system"
}

# Busy and total clock ticks of the load cores (or of the cores listed one by one in the
# argument) since boot, summed over their "cpuN" lines of /proc/stat: prints "BUSY TOTAL" (busy
# is user, nice, system, irq, softirq and steal; total adds idle and iowait).
core_ticks() {
  awk -v cores=" ${1:-$LOAD_CORES} " 'index(cores, " " substr($1, 4) " ") && $1 ~ /^cpu[0-9]+$/ {
      b = $2 + $3 + $4 + $7 + $8 + $9; busy += b; total += b + $5 + $6
    } END { print busy + 0, total + 0 }' /proc/stat
}

metric() {
  local admin=$1 pattern=$2
  http_get "$admin" /metrics 2>/dev/null | awk -v p="$pattern" 'index($0, p) == 1 { s += $NF } END { print s + 0 }'
}

# wrk against http://127.0.0.1:PORT/ for SECONDS; the summary line goes to OUT.
load() {
  local port=$1 seconds=$2 out=$3
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" --timeout 5s \
    -s "$HERE/wrk-report.lua" "http://127.0.0.1:$port/" >"$out" 2>&1 ||
    die "wrk failed: $(cat "$out")"
  grep -q '^BENCH ' "$out" || die "wrk printed no summary: $(cat "$out")"
}

# oha against http://127.0.0.1:PORT/ for RATE_DURATION seconds, paced at RATE requests per second
# over CONNECTIONS keep-alive connections (an open loop: a slow answer does not slow the next
# request down); with --latency-correction each latency counts from when its request was due,
# so queueing behind a stall is measured too. The summary line (as wrk's) goes to OUT.
rate_load() {
  local port=$1 out=$2
  taskset -c "$LOAD_CPU" "$OHA" --no-tui --worker-threads 1 -c "$CONNECTIONS" -q "$RATE" \
    -z "${RATE_DURATION}s" --latency-correction --output-format json "http://127.0.0.1:$port/" \
    >"$out.json" 2>"$out.err" || die "oha failed: $(cat "$out.err")"
  python3 "$HERE/oha_summary.py" "$out.json" >"$out" 2>>"$out.err" ||
    die "cannot read oha's report: $(cat "$out.err")"
}

# TCP segments sent in this network namespace so far (the absolute counter, without touching
# nstat's history): on loopback that is every packet of the run, both ways.
tcp_segments() {
  nstat -asz TcpOutSegs 2>/dev/null | awk '$1 == "TcpOutSegs" { s = $2 } END { print s + 0 }'
}

# SYSCALLS=1: in the first round, `perf stat` counts the system calls of the proxy (the process
# and its children: nginx's worker) over SYSCALL_WINDOW seconds of the measured run, one second
# in; SYSCALL_PID is that perf's pid (empty when not counting).
SYSCALL_WINDOW=3
count_syscalls() {
  SYSCALL_PID=""
  [ "$SYSCALLS" = 1 ] && [ "$2" = 1 ] || return 0
  local pids="$PROXY_PID" kids
  kids="$(pgrep -P "$PROXY_PID" | paste -sd, || true)"
  [ -n "$kids" ] && pids="$pids,$kids"
  (
    sleep 1
    perf stat -e 'syscalls:sys_enter_*' -p "$pids" -o "$WORK/syscalls.$1" -- sleep "$SYSCALL_WINDOW"
  ) &
  SYSCALL_PID=$!
}
# syscalls_per_request TARGET WRK-OUTPUT: the counted calls per request (the window's requests
# estimated from the run's rate), most frequent first, as "name count, ...".
syscalls_per_request() {
  local n
  n="$(awk -v r="$(field "$2" requests)" -v d="$(field "$2" duration_us)" -v w="$SYSCALL_WINDOW" 'BEGIN { print r * 1e6 / d * w }')"
  SYSCALL_LINE[$1]="$(awk -v n="$n" '$2 ~ /^syscalls:sys_enter_/ { gsub(",", "", $1); if ($1 / n >= 0.005) printf "%.3f %s\n", $1 / n, substr($2, 20) }' "$WORK/syscalls.$1" |
    sort -rn | awk '{ printf "%s%s %.2f", (NR > 1 ? ", " : ""), $2, $1 }')"
}
declare -A SYSCALL_LINE

# The value of KEY in the BENCH line of a wrk output file.
field() {
  grep '^BENCH ' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'
}
# The value of KEY in one of the KEY=VALUE lines the script adds to an output file (ticks=...).
counter() {
  sed -n "s/^$2=//p" "$1"
}
# per_second N MICROSECONDS: N per second, rounded.
per_second() {
  awk -v n="$1" -v d="$2" 'BEGIN { printf "%.0f", n * 1e6 / d }'
}
# per_10k TICKS REQUESTS: CPU seconds per 10k requests.
per_10k() {
  awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.3f", t / hz / n * 10000 }'
}
# core_share TICKS MICROSECONDS: how much of one core TICKS is over that time, as a percentage.
core_share() {
  awk -v t="$1" -v hz="$CLK_TCK" -v d="$2" 'BEGIN { printf "%.0f%%", t / hz / (d / 1e6) * 100 }'
}
# load_share OUTPUT-FILE [CORES]: how busy the load core was during the run ("—" when not read);
# with CORES "proxy", the proxy's core (side runs).
load_share() {
  local cores=${2:-load}
  awk -v b="$(counter "$1" "${cores}_busy")" -v t="$(counter "$1" "${cores}_total")" \
    'BEGIN { if (t + 0 > 0) printf "%.0f%%", b / t * 100; else print "—" }'
}
# failures WRK-OUTPUT: wrk's socket errors and responses >= 400 in the run.
failures() {
  local k n=0
  for k in err_connect err_read err_write err_timeout err_status; do
    n=$((n + $(field "$1" "$k")))
  done
  echo "$n"
}
# sorted_rounds TARGET METRIC: a round_value METRIC of every round, one per line, lowest first.
sorted_rounds() {
  local r
  for r in $(seq 1 "$ROUNDS"); do
    round_value "$1" "$r" "$2"
    echo
  done | sort -n
}
# rps_range TARGET METRIC: the lowest and highest req/s of the rounds, as "LOW–HIGH".
rps_range() {
  sorted_rounds "$1" "$2" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# SIDECAR=1: one more wrk run of the proxy of a target (PROXY_PID, PROXY_PORT) with the upstream
# moved onto the proxy's core (all its threads), wrk alone on the load core: with the proxy and
# the upstream sharing one core and wrk needing well under its own, the proxy's core sets the
# rate, and what differs between two rows is what the proxies cost per request (the upstream's
# share being the same work for all). Its output goes to OUT with the counters: ticks (the
# proxy's CPU), up_ticks (the upstream's), proxy_busy/proxy_total (the proxy's core) and
# load_busy/load_total (wrk's). The upstream goes back to the load core afterwards.
side_run() {
  local out=$1 user0 system0 user1 system1 up_user0 up_system0 up_user1 up_system1
  local busy0 total0 busy1 total1 load_busy0 load_total0 load_busy1 load_total1
  taskset -a -p -c "$PROXY_CPU" "$UPSTREAM_PID" >/dev/null
  # A second of load first: the moved upstream and the new connections settle.
  load "$PROXY_PORT" 1 "$WORK/warmup.out"
  read -r busy0 total0 <<<"$(core_ticks "$PROXY_CPU")"
  read -r load_busy0 load_total0 <<<"$(core_ticks)"
  read -r up_user0 up_system0 <<<"$(cpu_ticks "$UPSTREAM_PID")"
  if [ -n "$PROXY_PID" ]; then
    read -r user0 system0 <<<"$(cpu_ticks "$PROXY_PID")"
  fi
  load "$PROXY_PORT" "$DURATION" "$out"
  if [ -n "$PROXY_PID" ]; then
    read -r user1 system1 <<<"$(cpu_ticks "$PROXY_PID")"
    echo "ticks=$((user1 - user0 + system1 - system0))" >>"$out"
  else
    echo "ticks=-1" >>"$out"
  fi
  read -r up_user1 up_system1 <<<"$(cpu_ticks "$UPSTREAM_PID")"
  read -r load_busy1 load_total1 <<<"$(core_ticks)"
  read -r busy1 total1 <<<"$(core_ticks "$PROXY_CPU")"
  echo "up_ticks=$((up_user1 - up_user0 + up_system1 - up_system0))" >>"$out"
  echo "proxy_busy=$((busy1 - busy0))" >>"$out"
  echo "proxy_total=$((total1 - total0))" >>"$out"
  echo "load_busy=$((load_busy1 - load_busy0))" >>"$out"
  echo "load_total=$((load_total1 - load_total0))" >>"$out"
  taskset -a -p -c "$LOAD_CPU" "$UPSTREAM_PID" >/dev/null
}

# ---- configs

UPSTREAM_PORT="$(free_port)"

# Starts the proxy of a target; sets PROXY_PID, PROXY_PORT and (for Spindle) ADMIN_PORT.
start_proxy() {
  local target=$1
  PROXY_PORT="$(free_port)"
  ADMIN_PORT=""
  case "$target" in
    direct)
      PROXY_PID=""
      PROXY_PORT="$UPSTREAM_PORT"
      ;;
    spindle-2 | spindle-4 | spindle-4-other)
      ADMIN_PORT="$(free_port)"
      local chain="$TWO" bin="$SPINDLE_BIN"
      [ "$target" != spindle-2 ] && chain="$FOUR"
      [ "$target" = spindle-4-other ] && bin="$OTHER_BIN"
      spindle_config "$WORK/$target.toml" "$PROXY_PORT" "$ADMIN_PORT" "$chain" "$FILTERS/balancer.wasm"
      start "$target" "$PROXY_CPU" "$bin" --log-level warn run --config "$WORK/$target.toml"
      PROXY_PID=$STARTED
      wait_ready "$ADMIN_PORT"
      ;;
    nginx)
      nginx_config "$WORK/nginx" "$PROXY_PORT"
      start nginx "$PROXY_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" -g 'daemon off;'
      PROXY_PID=$STARTED
      wait_for_port "$PROXY_PORT" nginx
      ;;
    haproxy)
      haproxy_config "$WORK/haproxy.cfg" "$PROXY_PORT"
      start haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg"
      PROXY_PID=$STARTED
      wait_for_port "$PROXY_PORT" haproxy
      ;;
  esac
}

# ---- upstream
log "upstream: demo-upstream on 127.0.0.1:$UPSTREAM_PORT, $LOAD_WHERE"
start upstream "$LOAD_CPU" "$UPSTREAM_BIN" --listen "127.0.0.1:$UPSTREAM_PORT" --name bench --threads 1
UPSTREAM_PID=$STARTED
wait_for_port "$UPSTREAM_PORT" demo-upstream

TARGETS=(direct spindle-2 spindle-4 nginx haproxy)
if [ -n "$OTHER_BIN" ]; then
  TARGETS+=(spindle-4-other)
fi
declare -A LABEL=(
  [spindle-4-other]="Spindle: the 4 filters, \`${OTHER_BIN#"$ROOT"/}\`"
  [direct]="upstream direct (no proxy)"
  [spindle-2]="Spindle: router + balancer"
  [spindle-4]="Spindle: router + balancer + retry + breaker"
  [nginx]="nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')"
  [haproxy]="HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')"
)
declare -A THREADS=([direct]="—" [spindle-2]="1 worker thread" [spindle-4]="1 worker thread" [spindle-4-other]="1 worker thread"
  [nginx]="worker_processes 1" [haproxy]="nbthread 1")

if [ "$SYSCALLS" = 1 ]; then
  command -v perf >/dev/null 2>&1 || die "SYSCALLS=1 needs perf (Debian: linux-perf)"
fi

# ---- throughput and latency, ROUNDS rounds over every target
mkdir -p "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    log "round $round/$ROUNDS: $target (${WARMUP}s warm-up, ${DURATION}s measured, $CONNECTIONS connections$([ "$RATE" -gt 0 ] && echo ", then ${RATE_DURATION}s at $RATE req/s")$([ "$SIDECAR" = 1 ] && echo ", then ${DURATION}s with the upstream on core $PROXY_CPU"))"
    start_proxy "$target"
    if [ "$WARMUP" -gt 0 ]; then
      load "$PROXY_PORT" "$WARMUP" "$WORK/warmup.out"
    fi
    out="$WORK/results/$target.$round"
    # Every counter is read right before and right after wrk's run (the system call count,
    # when on, is collected after: tearing `perf stat` down takes seconds).
    SYSCALL_PID=""
    segs0="$(tcp_segments)"
    read -r load_busy0 load_total0 <<<"$(core_ticks)"
    if [ -n "$PROXY_PID" ]; then
      read -r user0 system0 <<<"$(cpu_ticks "$PROXY_PID")"
      count_syscalls "$target" "$round"
      load "$PROXY_PORT" "$DURATION" "$out"
      read -r user1 system1 <<<"$(cpu_ticks "$PROXY_PID")"
      echo "ticks=$((user1 - user0 + system1 - system0))" >>"$out"
      echo "user_ticks=$((user1 - user0))" >>"$out"
    else
      load "$PROXY_PORT" "$DURATION" "$out"
      echo "ticks=-1" >>"$out"
    fi
    read -r load_busy1 load_total1 <<<"$(core_ticks)"
    echo "segs=$(($(tcp_segments) - segs0))" >>"$out"
    echo "load_busy=$((load_busy1 - load_busy0))" >>"$out"
    echo "load_total=$((load_total1 - load_total0))" >>"$out"
    if [ -n "$SYSCALL_PID" ]; then
      wait "$SYSCALL_PID"
      syscalls_per_request "$target" "$out"
    fi
    # The same process at the fixed rate: every target serves the same load here.
    if [ "$RATE" -gt 0 ]; then
      read -r load_busy0 load_total0 <<<"$(core_ticks)"
      [ -n "$PROXY_PID" ] && read -r user0 system0 <<<"$(cpu_ticks "$PROXY_PID")"
      rate_load "$PROXY_PORT" "$out.rate"
      if [ -n "$PROXY_PID" ]; then
        read -r user1 system1 <<<"$(cpu_ticks "$PROXY_PID")"
        echo "ticks=$((user1 - user0 + system1 - system0))" >>"$out.rate"
      else
        echo "ticks=-1" >>"$out.rate"
      fi
      read -r load_busy1 load_total1 <<<"$(core_ticks)"
      echo "load_busy=$((load_busy1 - load_busy0))" >>"$out.rate"
      echo "load_total=$((load_total1 - load_total0))" >>"$out.rate"
    fi
    if [ "$SIDECAR" = 1 ]; then
      side_run "$out.side"
    fi
    if [ -n "$PROXY_PID" ]; then
      stop "$PROXY_PID"
    fi
  done
done

# round_value TARGET ROUND METRIC: that round's requests per second ("rps"), the proxy's CPU per
# request ("cpu") or the load core's busy time per request ("load"), both in clock ticks, or the
# p99 latency in microseconds ("p99"); with "rate_" in front (rate_p99...), of the round's
# fixed-rate run; with "side_" in front, of its run with the upstream beside the proxy.
round_value() {
  local f="$WORK/results/$1.$2" m=$3
  if [[ "$m" == rate_* || "$m" == side_* ]]; then
    f="$f.${m%%_*}"
    m="${m#*_}"
  fi
  case "$m" in
    rps) awk -v n="$(field "$f" requests)" -v d="$(field "$f" duration_us)" 'BEGIN { printf "%.6f", n * 1e6 / d }' ;;
    cpu) awk -v t="$(counter "$f" ticks)" -v n="$(field "$f" requests)" 'BEGIN { printf "%.9f", t / n }' ;;
    load) awk -v t="$(counter "$f" load_busy)" -v n="$(field "$f" requests)" 'BEGIN { printf "%.9f", t / n }' ;;
    p99) field "$f" p99_us ;;
  esac
}
# The median round of a target (by requests per second): prints its wrk output file.
# median_round TARGET [METRIC]: the same by another round_value METRIC; for a "rate_" or "side_"
# metric, that run's output file.
median_round() {
  local target=$1 metric=${2:-rps} r suffix=""
  [[ "$metric" == rate_* || "$metric" == side_* ]] && suffix=".${metric%%_*}"
  for r in $(seq 1 "$ROUNDS"); do
    echo "$(round_value "$target" "$r" "$metric") $WORK/results/$target.$r$suffix"
  done | sort -n | awk -v m=$(((ROUNDS + 1) / 2)) 'NR == m { print $2 }'
}

declare -A RPS P50 P99 P999 CPU10K USER10K SYS10K CPUPCT ERRORS RANGE SEGS LOADPCT LOAD10K
for target in "${TARGETS[@]}"; do
  f="$(median_round "$target")"
  requests="$(field "$f" requests)"
  dur="$(field "$f" duration_us)"
  ticks="$(counter "$f" ticks)"
  user_ticks="$(counter "$f" user_ticks)"
  RPS[$target]="$(per_second "$requests" "$dur")"
  SEGS[$target]="$(awk -v s="$(counter "$f" segs)" -v n="$requests" 'BEGIN { if (s + 0 > 0) printf "%.2f", s / n; else print "—" }')"
  LOADPCT[$target]="$(load_share "$f")"
  LOAD10K[$target]="$(per_10k "$(counter "$f" load_busy)" "$requests")"
  P50[$target]="$(field "$f" p50_us)"
  P99[$target]="$(field "$f" p99_us)"
  P999[$target]="$(field "$f" p999_us)"
  ERRORS[$target]="$(failures "$f")"
  if [ "$ticks" -ge 0 ]; then
    CPU10K[$target]="$(per_10k "$ticks" "$requests")"
    CPUPCT[$target]="$(core_share "$ticks" "$dur")"
    USER10K[$target]="$(per_10k "$user_ticks" "$requests")"
    SYS10K[$target]="$(per_10k "$((ticks - user_ticks))" "$requests")"
  else
    USER10K[$target]="—"
    SYS10K[$target]="—"
    CPU10K[$target]="—"
    CPUPCT[$target]="—"
  fi
  RANGE[$target]="$(rps_range "$target" rps)"
done

# Rounds are interleaved, so a target and nginx measured in the same round share the machine's
# state of that moment: the per-round ratios cancel the drift between rounds that the median rows
# keep. paired TARGET METRIC: that round-by-round ratio against nginx (METRIC as for
# round_value), as "median (lowest–highest; K of N rounds within the target)": req/s at or above
# nginx's, CPU and load-core time at or below, p99 at most 1.2x nginx's.
paired() {
  local target=$1 metric=$2 r
  for r in $(seq 1 "$ROUNDS"); do
    awk -v a="$(round_value "$target" "$r" "$metric")" -v b="$(round_value nginx "$r" "$metric")" 'BEGIN { if (b + 0 > 0) printf "%.4f\n", a / b }'
  done | sort -n | awk -v metric="${metric#*_}" '
    { v[NR] = $1; if ((metric == "rps" && $1 >= 1) || (metric == "p99" && $1 <= 1.2) || ((metric == "cpu" || metric == "load") && $1 <= 1)) good++ }
    END {
      if (NR == 0) { print "—"; exit }
      m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      what = metric == "rps" ? "at or above nginx" : metric == "p99" ? "at most 1.2x nginx" : "at or below nginx"
      printf "%.2fx (%.2f–%.2f; %d of %d rounds %s)", m, v[1], v[NR], good, NR, what
    }'
}
PAIRED_RPS="$(paired spindle-4 rps)"
PAIRED_CPU="$(paired spindle-4 cpu)"
PAIRED_LOAD="$(paired spindle-4 load)"
PAIRED_P99="$(paired spindle-4 p99)"

# The fixed-rate runs: each target's median round by p99, and the lowest rate any round reached.
declare -A R_RPS R_MIN R_P50 R_P99 R_P999 R_CPU10K R_CPUPCT R_LOADPCT R_FAILED
if [ "$RATE" -gt 0 ]; then
  for target in "${TARGETS[@]}"; do
    f="$(median_round "$target" rate_p99)"
    requests="$(field "$f" requests)"
    dur="$(field "$f" duration_us)"
    ticks="$(counter "$f" ticks)"
    R_RPS[$target]="$(per_second "$requests" "$dur")"
    R_MIN[$target]="$(sorted_rounds "$target" rate_rps | awk 'NR == 1 { printf "%.0f", $1 }')"
    R_P50[$target]="$(field "$f" p50_us)"
    R_P99[$target]="$(field "$f" p99_us)"
    R_P999[$target]="$(field "$f" p999_us)"
    R_FAILED[$target]="$(field "$f" failed)"
    R_LOADPCT[$target]="$(load_share "$f")"
    if [ "$ticks" -ge 0 ]; then
      R_CPU10K[$target]="$(per_10k "$ticks" "$requests")"
      R_CPUPCT[$target]="$(core_share "$ticks" "$dur")"
    else
      R_CPU10K[$target]="—"
      R_CPUPCT[$target]="—"
    fi
  done
  PAIRED_RATE_P99="$(paired spindle-4 rate_p99)"
  PAIRED_RATE_CPU="$(paired spindle-4 rate_cpu)"
fi

# The runs with the upstream beside the proxy: each target's median round by req/s.
declare -A S_RPS S_RANGE S_P50 S_P99 S_CPU10K S_UP10K S_PROXYPCT S_LOADPCT S_ERRORS
if [ "$SIDECAR" = 1 ]; then
  for target in "${TARGETS[@]}"; do
    f="$(median_round "$target" side_rps)"
    requests="$(field "$f" requests)"
    dur="$(field "$f" duration_us)"
    ticks="$(counter "$f" ticks)"
    S_RPS[$target]="$(per_second "$requests" "$dur")"
    S_RANGE[$target]="$(rps_range "$target" side_rps)"
    S_P50[$target]="$(field "$f" p50_us)"
    S_P99[$target]="$(field "$f" p99_us)"
    S_UP10K[$target]="$(per_10k "$(counter "$f" up_ticks)" "$requests")"
    S_PROXYPCT[$target]="$(load_share "$f" proxy)"
    S_LOADPCT[$target]="$(load_share "$f")"
    S_ERRORS[$target]="$(failures "$f")"
    if [ "$ticks" -ge 0 ]; then
      S_CPU10K[$target]="$(per_10k "$ticks" "$requests")"
    else
      S_CPU10K[$target]="—"
    fi
  done
  PAIRED_SIDE_RPS="$(paired spindle-4 side_rps)"
  PAIRED_SIDE_CPU="$(paired spindle-4 side_cpu)"
fi

# ---- hot swap under load
log "hot swap: ${SWAP_DURATION}s of load on the 4-filter chain, balancer.wasm replaced every ${SWAP_INTERVAL_MS} ms"
mkdir -p "$WORK/swap"
cp "$FILTERS/balancer.wasm" "$WORK/swap/balancer-a.wasm"
cp "$FILTERS/balancer.wasm" "$WORK/swap/balancer-b.wasm"
# A custom section (id 0, 12 bytes: name length 10, "bench-swap", payload "b") makes a second,
# equally valid module with another sha256, so every replacement is a real reload.
printf '\000\014\012bench-swapb' >>"$WORK/swap/balancer-b.wasm"
cp "$WORK/swap/balancer-a.wasm" "$WORK/swap/balancer.wasm"
SWAP_PORT="$(free_port)"
SWAP_ADMIN="$(free_port)"
spindle_config "$WORK/swap.toml" "$SWAP_PORT" "$SWAP_ADMIN" "$FOUR" "$WORK/swap/balancer.wasm"
"$SPINDLE_BIN" --log-level warn check --config "$WORK/swap.toml" >/dev/null
cp "$WORK/swap/balancer-b.wasm" "$WORK/swap/balancer.wasm"
"$SPINDLE_BIN" --log-level warn check --config "$WORK/swap.toml" >/dev/null ||
  die "the second balancer variant does not load"
cp "$WORK/swap/balancer-a.wasm" "$WORK/swap/balancer.wasm"
start spindle-swap "$PROXY_CPU" "$SPINDLE_BIN" --log-level warn run --config "$WORK/swap.toml"
SWAP_PID=$STARTED
wait_ready "$SWAP_ADMIN"
if [ "$WARMUP" -gt 0 ]; then
  load "$SWAP_PORT" "$WARMUP" "$WORK/warmup.out"
fi
swaps=$((SWAP_DURATION * 1000 / SWAP_INTERVAL_MS))
interval="$(awk -v ms="$SWAP_INTERVAL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
# swap_files DIR: in the background, every SWAP_INTERVAL_MS, writes the next variant beside
# DIR/balancer.wasm and renames it over that file (the watcher sees one complete new file); runs
# on the load core, as wrk does; sets SWAPPER to its pid.
swap_files() {
  local dir=$1
  (
    taskset -cp "$LOAD_CPU" "$BASHPID" >/dev/null
    for i in $(seq 1 "$swaps"); do
      sleep "$interval"
      variant=a
      [ $((i % 2)) -eq 1 ] && variant=b
      cp "$WORK/swap/balancer-$variant.wasm" "$dir/.balancer.wasm.new"
      mv -f "$dir/.balancer.wasm.new" "$dir/balancer.wasm"
    done
  ) &
  SWAPPER=$!
  PIDS+=("$SWAPPER")
}
# reloads RESULT: the swap proxy's balancer reloads so far with that result (ok, error).
reloads() {
  metric "$SWAP_ADMIN" "spindle_filter_reloads_total{filter=\"balancer\",result=\"$1\"}"
}
# The control: the same writes, the same processes, into a folder Spindle does not watch, so that
# what the swapping itself costs the machine is told apart from what a reload costs Spindle.
mkdir -p "$WORK/control"
ok_before="$(reloads ok)"
swap_files "$WORK/control"
load "$SWAP_PORT" "$SWAP_DURATION" "$WORK/swap-control.out"
wait "$SWAPPER" || true
CONTROL_RELOADS=$(($(reloads ok) - ok_before))
CONTROL_P99="$(field "$WORK/swap-control.out" p99_us)"
ok_before="$(reloads ok)"
err_before="$(reloads error)"
swap_files "$WORK/swap"
load "$SWAP_PORT" "$SWAP_DURATION" "$WORK/swap.out"
wait "$SWAPPER" || true
sleep 1.5
ok_after="$(reloads ok)"
err_after="$(reloads error)"
stop "$SWAP_PID"
SWAP_RELOADS=$((ok_after - ok_before))
SWAP_RELOAD_ERRORS=$((err_after - err_before))
SWAP_FAILED=0
for k in err_connect err_read err_write err_timeout err_status; do
  SWAP_FAILED=$((SWAP_FAILED + $(field "$WORK/swap.out" "$k")))
done
SWAP_REQUESTS="$(field "$WORK/swap.out" requests)"
SWAP_RPS="$(per_second "$SWAP_REQUESTS" "$(field "$WORK/swap.out" duration_us)")"
SWAP_P99="$(field "$WORK/swap.out" p99_us)"

# ---- memory with idle keep-alive connections
log "memory: the 4-filter Spindle idle, then with $IDLE_CONNECTIONS idle keep-alive connections"
MEM_PORT="$(free_port)"
MEM_ADMIN="$(free_port)"
spindle_config "$WORK/mem.toml" "$MEM_PORT" "$MEM_ADMIN" "$FOUR" "$FILTERS/balancer.wasm"
start spindle-mem "$PROXY_CPU" "$SPINDLE_BIN" --log-level warn run --config "$WORK/mem.toml"
MEM_PID=$STARTED
wait_ready "$MEM_ADMIN"
# shellcheck disable=SC2086 # IDLE_CONNECTIONS is a list of steps
taskset -c "$LOAD_CPU" python3 "$HERE/idle_conns.py" --port "$MEM_PORT" --pid "$MEM_PID" \
  --admin "127.0.0.1:$MEM_ADMIN" $IDLE_CONNECTIONS >"$WORK/mem.out" 2>&1 ||
  die "idle connection test failed: $(cat "$WORK/mem.out")"
stop "$MEM_PID"
MEM_CLOSED="$(sed -n 's/^CLOSED count=//p' "$WORK/mem.out")"
mem_value() {
  awk -v open="$1" -v key="$2" '$1 == "CONNS" {
    delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
    if (kv["open"] == open) print kv[key] }' "$WORK/mem.out"
}
IDLE_RSS_KB="$(mem_value 0 rss_kb)"
# The per-connection figure judged below: the slope between the last two steps, which leaves
# out what the first requests set up once (filter instances, the upstream connection).
read -r -a steps <<<"$IDLE_CONNECTIONS"
LAST_STEP=${steps[${#steps[@]} - 1]}
PREV_STEP=0
[ "${#steps[@]}" -gt 1 ] && PREV_STEP=${steps[${#steps[@]} - 2]}
KB_PER_CONN="$(awk -v a="$(mem_value "$LAST_STEP" rss_kb)" -v b="$(mem_value "$PREV_STEP" rss_kb)" \
  -v n=$((LAST_STEP - PREV_STEP)) 'BEGIN { printf "%.1f", (a - b) / n }')"

# ---- optional profile of the 4-filter chain
PERF_TOP=""
if [ "$PERF" = 1 ]; then
  command -v perf >/dev/null 2>&1 || die "PERF=1 needs perf (Debian: linux-perf)"
  log "perf: ${DURATION}s of load on the 4-filter chain under perf record"
  start_proxy spindle-4
  if [ "$WARMUP" -gt 0 ]; then
    load "$PROXY_PORT" "$WARMUP" "$WORK/warmup.out"
  fi
  perf record -q -F 999 -o "$WORK/perf.data" -p "$PROXY_PID" -- sleep "$DURATION" >"$WORK/perf.log" 2>&1 &
  perf_pid=$!
  PIDS+=("$perf_pid")
  load "$PROXY_PORT" "$DURATION" "$WORK/perf.out"
  wait "$perf_pid" || true
  # Self time by binary, then by symbol. The filters' compiled code is mapped from Spindle's cache,
  # in files named after the module's sha256: name them after the filter instead.
  names=()
  for f in router balancer retry breaker; do
    names+=(-e "s/$(sha256sum "$FILTERS/$f.wasm" | cut -d' ' -f1)-[0-9a-f]*\\.cwasm/$f.wasm (compiled)/")
  done
  PERF_TOP="$(
    perf report -i "$WORK/perf.data" --stdio --no-children -g none --sort dso 2>/dev/null |
      awk '/^ +[0-9]/ && n < 8 { $1 = $1; print; n++ }'
    echo
    perf report -i "$WORK/perf.data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null |
      awk '/^ +[0-9]/ && n < 25 { $1 = $1; sub(/ - -$/, ""); print; n++ }'
  )"
  PERF_TOP="$(sed "${names[@]}" <<<"$PERF_TOP")"
  stop "$PROXY_PID"
fi
stop "$UPSTREAM_PID"
LOAD_AFTER="$(uptime)"

# ---- report
ms() {
  awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "—"; else printf "%.2f", a / b }'
}
# verdict CONDITION-AS-AWK-EXPRESSION: "met" or "**missed**"
verdict() {
  awk "BEGIN { if ($1) print \"met\"; else print \"**missed**\" }"
}

report() {
  local t
  echo "# Spindle load benchmark (\`make bench-load\`)"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr); shared with other work, so numbers are noisy"
  echo "- Load average before: ${LOAD_BEFORE##*load average: }; after: ${LOAD_AFTER##*load average: }"
  echo "- Command: \`make bench-load\` (\`SPINDLE_BIN=${SPINDLE_BIN#"$ROOT"/}${OTHER_BIN:+ OTHER_BIN=${OTHER_BIN#"$ROOT"/}} CONNECTIONS=$CONNECTIONS DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS RATE=$RATE RATE_DURATION=$RATE_DURATION SIDECAR=$SIDECAR SWAP_DURATION=$SWAP_DURATION SWAP_INTERVAL_MS=$SWAP_INTERVAL_MS IDLE_CONNECTIONS=\"$IDLE_CONNECTIONS\" PERF=$PERF SYSCALLS=$SYSCALLS bash bench/load.sh\`)"
  case "$SPINDLE_BIN" in
    *target/pgo/spindle) echo "- Spindle: \`target/pgo/spindle\`, the profile-guided release build (\`make release-pgo\`, bench/pgo.sh)" ;;
    *target/release/spindle) echo "- Spindle: \`target/release/spindle\`, the release build without profile guidance (\`PGO=0\`)" ;;
    *) echo "- Spindle: \`$SPINDLE_BIN\`" ;;
  esac
  echo "- Load: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\`, HTTP/1.1 keep-alive, GET / answered 200 with a 6-byte body by \`demo-upstream --threads 1\` (hyper on a current-thread runtime); ${WARMUP}s warm-up before every run; each proxy started afresh for each run"
  echo "- Pinning: each proxy on core $PROXY_CPU (\`taskset -c $PROXY_CPU\`), upstream and wrk on $LOAD_WHERE; one serving thread per proxy: Spindle \`[runtime] worker_threads = 1\`, nginx \`worker_processes 1\`, HAProxy \`nbthread 1\`"
  echo "- All proxies keep upstream connections alive (nginx \`keepalive\` + \`proxy_http_version 1.1\` + \`Connection \"\"\`, HAProxy \`http-reuse always\`) and add \`X-Forwarded-For\` as Spindle does; Spindle runs with \`--log-level warn\`"
  echo "- $ROUNDS rounds over all targets; each row is the target's median round by req/s (the range column shows all rounds)"
  echo
  echo "## Throughput and latency"
  echo
  echo "| target | threads | req/s | req/s range | p50 ms | p99 ms | p99.9 ms | req/s vs nginx | proxy CPU s / 10k req | user / system | proxy CPU | load core busy | load core s / 10k req | TCP segments / req | failed |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for t in "${TARGETS[@]}"; do
    echo "| ${LABEL[$t]} | ${THREADS[$t]} | ${RPS[$t]} | ${RANGE[$t]} | $(ms "${P50[$t]}") | $(ms "${P99[$t]}") | $(ms "${P999[$t]}") | $(ratio "${RPS[$t]}" "${RPS[nginx]}") | ${CPU10K[$t]} | ${USER10K[$t]} / ${SYS10K[$t]} | ${CPUPCT[$t]} | ${LOADPCT[$t]} | ${LOAD10K[$t]} | ${SEGS[$t]} | ${ERRORS[$t]} |"
  done
  echo
  echo "\"proxy CPU\" is the proxy process's user + system time (all its threads, nginx's master and worker) over the measured run, from /proc/PID/stat; 100% is one core; \"user / system\" splits the CPU seconds per 10k requests into the proxy's own code and the kernel's work for it (the loopback TCP stack, epoll). \"load core\" is $LOAD_WHERE, where wrk and the upstream run, from /proc/stat over the measured run: how busy it was (with several cores, their average), and its busy time (wrk, the upstream, the kernel's work for both, anything else there) per 10k requests; at 100% busy, req/s is bounded by the load side's cost per request, which the proxy changes only through what it makes wrk and the upstream do (wake-ups, segments). \"TCP segments / req\" counts every loopback segment sent during the run (wrk, proxy and upstream, both ways; \`nstat\`'s TcpOutSegs) per request: 2 is the least for the upstream alone, 4 through a proxy; the rest are ACKs that carried no data (each one more trip through the kernel's TCP stack). \"failed\" counts wrk's socket errors and responses >= 400."
  echo
  # A proxy that did not use its whole core was held back by something other than its own work:
  # the load side (wrk and the upstream on the load core) or other processes on the machine. Its
  # req/s is then a lower bound, and CPU per request is the comparison that holds.
  local idle=""
  for t in "${TARGETS[@]}"; do
    if [ "${CPU10K[$t]}" != "—" ] && [ "${CPUPCT[$t]%\%}" -lt 90 ]; then
      idle="$idle${idle:+, }${LABEL[$t]} (${CPUPCT[$t]})"
    fi
  done
  if [ -n "$idle" ]; then
    echo "Used under 90% of its core: $idle. Such a proxy was held back by the load side (wrk and the upstream, on $LOAD_WHERE) or by other processes on the machine, not by its own work: its req/s is a lower bound, and CPU per request is the fairer comparison."
    echo
  fi
  # When the load core was (nearly) always busy in both rows, the load side set the pace of both:
  # the req/s comparison then measures what each proxy costs wrk and the upstream, and CPU per
  # request is the comparison of the proxies' own work.
  if [ "${LOADPCT[spindle-4]%\%}" != "—" ] && [ "${LOADPCT[spindle-4]%\%}" -ge 95 ] && [ "${LOADPCT[nginx]%\%}" -ge 95 ]; then
    echo "The load core (wrk and the upstream) was busy ${LOADPCT[spindle-4]} of the 4-filter row's run and ${LOADPCT[nginx]} of nginx's: there the load side, not the proxy, set the rate (${LOAD10K[spindle-4]} against ${LOAD10K[nginx]} load-core s / 10k req), so req/s compares what each proxy makes wrk and the upstream spend; CPU per request compares the proxies' own work."
    echo
  fi
  echo "4-filter / 2-filter throughput: **$(ratio "${RPS[spindle-4]}" "${RPS[spindle-2]}")**"
  echo
  echo "Round by round (the 4-filter chain against nginx in the same round, median of the $ROUNDS ratios): req/s $PAIRED_RPS; CPU per request $PAIRED_CPU; the load core's busy time per request $PAIRED_LOAD; p99 $PAIRED_P99."
  echo
  if [ "$SYSCALLS" = 1 ]; then
    echo "System calls per request (round 1, \`perf stat -e 'syscalls:sys_enter_*'\` on the proxy's processes over ${SYSCALL_WINDOW} s of the measured run; requests estimated from the run's rate; calls under 0.005 per request left out):"
    echo
    for t in "${TARGETS[@]}"; do
      [ -n "${SYSCALL_LINE[$t]:-}" ] && echo "- ${LABEL[$t]}: ${SYSCALL_LINE[$t]}"
    done
    echo
  fi
  if [ "$RATE" -gt 0 ]; then
    echo "## Latency at the same load"
    echo
    echo "After its wrk run, in every round, the same process of every target got ${RATE_DURATION}s of \`oha -c $CONNECTIONS -q $RATE --latency-correction\` ($("$OHA" --version | awk '{ print $2 }'), one thread, on $LOAD_WHERE with the upstream): the same $RATE requests per second for all, paced by the load generator whatever the answers' speed (an open loop), each latency counted from when its request was due. Each row is the target's median round by p99."
    echo
    echo "| target | req/s | lowest req/s of the rounds | p50 ms | p99 ms | p99.9 ms | p99 vs nginx | proxy CPU s / 10k req | proxy CPU | load core busy | failed |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${TARGETS[@]}"; do
      echo "| ${LABEL[$t]} | ${R_RPS[$t]} | ${R_MIN[$t]} | $(ms "${R_P50[$t]}") | $(ms "${R_P99[$t]}") | $(ms "${R_P999[$t]}") | $(ratio "${R_P99[$t]}" "${R_P99[nginx]}") | ${R_CPU10K[$t]} | ${R_CPUPCT[$t]} | ${R_LOADPCT[$t]} | ${R_FAILED[$t]} |"
    done
    echo
    local behind=""
    for t in "${TARGETS[@]}"; do
      if [ "${R_MIN[$t]}" -lt $((RATE * 98 / 100)) ]; then
        behind="$behind${behind:+, }${LABEL[$t]} (${R_MIN[$t]} req/s)"
      fi
    done
    if [ -n "$behind" ]; then
      echo "Fell short of $RATE req/s in at least one round: $behind. The load side or the proxy could not keep that rate there; those latencies include the backlog."
      echo
    fi
    echo "Round by round (the 4-filter chain against nginx in the same round, median of the $ROUNDS ratios): p99 $PAIRED_RATE_P99; CPU per request $PAIRED_RATE_CPU."
    echo
  fi
  if [ "$SIDECAR" = 1 ]; then
    echo "## Throughput where the proxy's core sets the rate"
    echo
    echo "After its fixed-rate run, in every round, the same process of every target got one more ${DURATION}s of the same wrk load (after 1 s of warm-up) with the upstream moved onto core $PROXY_CPU beside the proxy (\`taskset -a -p\`), wrk alone on $LOAD_WHERE: the arrangement of a sidecar, which shares its machine with the service behind it. Above, the load core (wrk and the upstream) is as busy as the proxy's and sets the rate; here wrk needs well under its core, so the proxy's core sets it, and two rows differ by what the proxies cost per request (the upstream's share of the core is the same work for all). Every proxy keeps its core busy here, so CPU per request compares them without the sleeps and wake-ups that a proxy held below its full core by the load side pays above. Each row is the target's median round by req/s; the upstream direct row is the upstream alone on core $PROXY_CPU."
    echo
    echo "| target | req/s | req/s range | p50 ms | p99 ms | req/s vs nginx | proxy CPU s / 10k req | upstream CPU s / 10k req | core $PROXY_CPU busy (proxy + upstream) | wrk's core busy | failed |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${TARGETS[@]}"; do
      echo "| ${LABEL[$t]} | ${S_RPS[$t]} | ${S_RANGE[$t]} | $(ms "${S_P50[$t]}") | $(ms "${S_P99[$t]}") | $(ratio "${S_RPS[$t]}" "${S_RPS[nginx]}") | ${S_CPU10K[$t]} | ${S_UP10K[$t]} | ${S_PROXYPCT[$t]} | ${S_LOADPCT[$t]} | ${S_ERRORS[$t]} |"
    done
    echo
    local side_loaded=""
    for t in "${TARGETS[@]}"; do
      if [ "$t" != direct ] && [ "${S_LOADPCT[$t]%\%}" != "—" ] && [ "${S_LOADPCT[$t]%\%}" -ge 90 ]; then
        side_loaded="$side_loaded${side_loaded:+, }${LABEL[$t]} (${S_LOADPCT[$t]})"
      fi
    done
    if [ -n "$side_loaded" ]; then
      echo "wrk's core was busy 90% or more in: $side_loaded. There wrk may have set the rate as well."
      echo
    fi
    echo "4-filter / 2-filter throughput here: **$(ratio "${S_RPS[spindle-4]}" "${S_RPS[spindle-2]}")**"
    echo
    echo "Round by round (the 4-filter chain against nginx in the same round, median of the $ROUNDS ratios): req/s $PAIRED_SIDE_RPS; proxy CPU per request $PAIRED_SIDE_CPU."
    echo
  fi
  echo "## Hot swap under load"
  echo
  echo "${SWAP_DURATION}s of the same load on the 4-filter chain while \`balancer.wasm\` is replaced (copy beside it, rename over it) every ${SWAP_INTERVAL_MS} ms, alternating between two variants that differ by a custom section."
  echo
  echo "| replacements | reloads ok | reloads refused | requests | failed | req/s | p99 ms during swaps | p99 ms, the same writes elsewhere | p99 ms without (4-filter row) |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| $swaps | $SWAP_RELOADS | $SWAP_RELOAD_ERRORS | $SWAP_REQUESTS | $SWAP_FAILED | $SWAP_RPS | $(ms "$SWAP_P99") | $(ms "$CONTROL_P99") | $(ms "${P99[spindle-4]}") |"
  echo
  echo "\"The same writes elsewhere\" is a control run of the same Spindle just before: the same ${SWAP_DURATION}s of load and the same copies and renames on the same schedule, into a folder Spindle does not watch ($CONTROL_RELOADS reloads), so that what the swapping processes cost the machine (both cores are busy) is told apart from what the reloads cost. The swapping processes run on $LOAD_WHERE, with wrk."
  echo
  echo "## Memory"
  echo
  echo "VmRSS of the 4-filter Spindle (1 worker thread): idle right after \`/ready\`, then with idle keep-alive connections (each sent one request, read the response, and stays open)."
  echo
  echo "| open connections | Spindle's count | VmRSS MB | KB per connection (from idle) | KB per connection (from the previous step) |"
  echo "| ---: | ---: | ---: | ---: | ---: |"
  local prev_open=0 prev_rss="$IDLE_RSS_KB" open rss
  while read -r open rss gauge; do
    if [ "$open" -eq 0 ]; then
      echo "| 0 (idle) | $gauge | $(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }') | — | — |"
    else
      echo "| $open | $gauge | $(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }') | $(awk -v a="$rss" -v b="$IDLE_RSS_KB" -v n="$open" 'BEGIN { printf "%.1f", (a - b) / n }') | $(awk -v a="$rss" -v b="$prev_rss" -v n="$open" -v m="$prev_open" 'BEGIN { printf "%.1f", (a - b) / (n - m) }') |"
    fi
    prev_open=$open
    prev_rss=$rss
  done < <(awk '$1 == "CONNS" { delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
    print kv["open"], kv["rss_kb"], kv["gauge"] }' "$WORK/mem.out")
  echo
  echo "Connections the proxy had closed by the end: ${MEM_CLOSED:-?}."
  echo
  echo "## Targets (issue 5)"
  echo
  echo "| target | measured | verdict |"
  echo "| --- | --- | --- |"
  echo "| 4-filter throughput >= 0.85x router+balancer | $(ratio "${RPS[spindle-4]}" "${RPS[spindle-2]}")x | $(verdict "${RPS[spindle-4]} >= 0.85 * ${RPS[spindle-2]}") |"
  if [ "$SIDECAR" = 1 ]; then
    # Only a run where wrk had room to spare measured the proxies: else no verdict.
    local side_verdict
    side_verdict="$(verdict "${S_RPS[spindle-4]} >= ${S_RPS[nginx]}")"
    if [ "${S_LOADPCT[spindle-4]%\%}" -ge 90 ] || [ "${S_LOADPCT[nginx]%\%}" -ge 90 ]; then
      side_verdict="not measured: wrk's core was busy (${S_LOADPCT[spindle-4]} and ${S_LOADPCT[nginx]})"
    fi
    echo "| 4-filter throughput >= 1.0x nginx, the proxy's core setting the rate (upstream beside the proxy) | ${S_RPS[spindle-4]} vs ${S_RPS[nginx]} req/s ($(ratio "${S_RPS[spindle-4]}" "${S_RPS[nginx]}")x); round by round $PAIRED_SIDE_RPS | $side_verdict |"
  fi
  local per_core=""
  if [ "${CPUPCT[nginx]%\%}" -lt 90 ]; then
    per_core="; nginx not CPU-bound: per CPU second Spindle serves $(ratio "${CPU10K[nginx]}" "${CPU10K[spindle-4]}")x nginx's requests"
  fi
  echo "| 4-filter throughput >= 1.0x nginx, the load core setting the rate | $(ratio "${RPS[spindle-4]}" "${RPS[nginx]}")x$per_core; round by round $PAIRED_RPS | $(verdict "${RPS[spindle-4]} >= ${RPS[nginx]}") |"
  echo "| CPU per request <= nginx, at the rate the load core set (wrk) | ${CPU10K[spindle-4]} vs ${CPU10K[nginx]} CPU s / 10k req; round by round $PAIRED_CPU | $(verdict "${CPU10K[spindle-4]} <= ${CPU10K[nginx]}") |"
  if [ "$SIDECAR" = 1 ]; then
    echo "| CPU per request <= nginx, the proxy's core setting the rate (upstream beside the proxy) | ${S_CPU10K[spindle-4]} vs ${S_CPU10K[nginx]} CPU s / 10k req; round by round $PAIRED_SIDE_CPU | $(verdict "${S_CPU10K[spindle-4]} <= ${S_CPU10K[nginx]}") |"
  fi
  if [ "$RATE" -gt 0 ]; then
    # A row whose median round fell short of the rate did not serve the same load: no verdict.
    local rate_verdict
    rate_verdict="$(verdict "${R_P99[spindle-4]} <= 1.2 * ${R_P99[nginx]}")"
    if [ "${R_RPS[spindle-4]}" -lt $((RATE * 98 / 100)) ] || [ "${R_RPS[nginx]}" -lt $((RATE * 98 / 100)) ]; then
      rate_verdict="not measured: the rate was not reached (${R_RPS[spindle-4]} and ${R_RPS[nginx]} req/s)"
    fi
    echo "| p99 <= 1.2x nginx p99 at the same load ($RATE req/s, oha) | $(ms "${R_P99[spindle-4]}") vs $(ms "${R_P99[nginx]}") ms ($(ratio "${R_P99[spindle-4]}" "${R_P99[nginx]}")x); round by round $PAIRED_RATE_P99 | $rate_verdict |"
  fi
  echo "| p99 <= 1.2x nginx p99, each at its own saturation (wrk) | $(ms "${P99[spindle-4]}") vs $(ms "${P99[nginx]}") ms ($(ratio "${P99[spindle-4]}" "${P99[nginx]}")x); round by round $PAIRED_P99 | $(verdict "${P99[spindle-4]} <= 1.2 * ${P99[nginx]}") |"
  echo "| 0 failed requests during swaps (with reloads happening) | $SWAP_FAILED failed, $SWAP_RELOADS reloads | $(verdict "$SWAP_FAILED == 0 && $SWAP_RELOADS > 0") |"
  echo "| idle RSS <= 40 MB | $(awk -v k="$IDLE_RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }') MB | $(verdict "$IDLE_RSS_KB <= 40 * 1024") |"
  echo "| <= 20 KB per idle keep-alive connection | $KB_PER_CONN KB (from $PREV_STEP to $LAST_STEP connections) | $(verdict "$KB_PER_CONN <= 20") |"
  if [ -n "$PERF_TOP" ]; then
    echo
    echo "## Profile of the 4-filter run (perf, self time, top symbols)"
    echo
    echo '```'
    echo "$PERF_TOP"
    echo '```'
  fi
}

report >"$WORK/report.md"
cat "$WORK/report.md"
if [ -n "$RESULTS" ]; then
  cp "$WORK/report.md" "$RESULTS"
  log "report written to $RESULTS"
fi
