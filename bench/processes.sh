# shellcheck shell=bash
# What the benchmark scripts share (sourced by load.sh, icount.sh and pgo.sh): free ports, and
# stopping everything a script started.

# A free TCP port on 127.0.0.1 (the kernel picks it; used at once, so a clash is unlikely).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops every process in PIDS (SIGTERM, then waits), prints the tail of each log in WORK when
# the script is failing, removes WORK and exits with the script's status. Installed by
# `stop_all_on_exit`.
stop_all() {
  local status=$?
  trap - EXIT INT TERM
  local pid log
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do
      [ -s "$log" ] || continue
      echo "---- $(basename "$log") (last 15 lines) ----" >&2
      tail -n 15 "$log" >&2 || true
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}

stop_all_on_exit() {
  trap stop_all EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
