#!/usr/bin/env bash
# ct-down.sh NAME: halt the container (SIGTERM to nspawn shuts it down cleanly) and remove its overlay.
name=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
d=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}/instances/ct-$name
if [ -f "$d/nspawn.pid" ]; then
  pid=$(cat "$d/nspawn.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
fi
umount "$d/merged" 2>/dev/null
ip link del "vh-$name" 2>/dev/null
rm -rf "$d"
exit 0
