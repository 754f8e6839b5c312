# shellcheck shell=bash
# Sourced by the molecule driver scripts.

# stop_pidfile FILE TRIES: SIGTERM the process whose pid FILE holds, wait up to TRIES tenths of a second for it to
# exit, then SIGKILL it; nothing when FILE does not exist.
stop_pidfile() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 "$2"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
}
