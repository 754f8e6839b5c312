#!/usr/bin/env bash
# vm-down.sh NAME: stop the VM and remove its overlay disk.
name=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
d=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}/instances/vm-$name
if [ -f "$d/qemu.pid" ]; then
  pid=$(cat "$d/qemu.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
fi
rm -rf "$d"
exit 0
