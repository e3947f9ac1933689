# shellcheck shell=bash
# Spindle's config for the benchmarks (sourced by load.sh and icount.sh): a router sending
# everything to one cluster of one endpoint, the upstream at 127.0.0.1:$UPSTREAM_PORT, the
# filters in $FILTERS, the compile cache in $WORK/cache.
#
# Needs HERE (the bench folder); sets ROOT, and SPINDLE_BIN, UPSTREAM_BIN and FILTERS unless the
# environment does (the builds of `make build`).

# shellcheck disable=SC2034 # used by the scripts that source this file
ROOT="$(cd "$HERE/.." && pwd)"
SPINDLE_BIN="${SPINDLE_BIN:-$ROOT/target/release/spindle}"
UPSTREAM_BIN="${UPSTREAM_BIN:-$ROOT/target/release/demo-upstream}"
FILTERS="${FILTERS:-$ROOT/target/filters}"

# spindle_config FILE PORT ADMIN_PORT CHAIN BALANCER_MODULE
#   CHAIN is the listener's filter list: $TWO or $FOUR.

# The two chains compared: the smallest that routes, and the standard four.
# shellcheck disable=SC2034 # used by the scripts that source this file
TWO='"router", "balancer"'
# shellcheck disable=SC2034
FOUR='"router", "balancer", "retry", "breaker"'

spindle_config() {
  local file=$1 port=$2 admin=$3 chain=$4 balancer=$5
  cat >"$file" <<EOF
# Written by bench/spindle_config.sh.
[admin]
listen = "127.0.0.1:$admin"

[runtime]
worker_threads = 1
cache_dir = "$WORK/cache"

[[listener]]
name = "bench"
listen = "127.0.0.1:$port"
filters = [$chain]
max_connections = 20000

[filter.router]
module = "$FILTERS/router.wasm"
config = { routes = [{ path_prefix = "/", cluster = "upstream" }] }

[filter.balancer]
module = "$balancer"
config = { policy = "round_robin" }

[filter.retry]
module = "$FILTERS/retry.wasm"
config = { attempts = 3, retry_on = ["5xx", "connect-failure", "reset", "timeout"], per_try_timeout_ms = 2000, budget_percent = 20 }

[filter.breaker]
module = "$FILTERS/breaker.wasm"
config = { consecutive_failures = 5, base_ejection_ms = 30000, max_ejection_percent = 50, max_pending = 1024 }

[cluster.upstream]
endpoints = ["127.0.0.1:$UPSTREAM_PORT"]
connect_timeout_ms = 1000
max_idle_per_endpoint = 256
EOF
}
