#!/usr/bin/env bash
# ct-down.sh NAME: halt the container (SIGTERM to nspawn shuts it down cleanly) and remove its overlay.
name=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
d=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}/instances/ct-$name
. "$(dirname "$0")/lib.sh"
stop_pidfile "$d/nspawn.pid" 100
umount "$d/merged" 2>/dev/null
ip link del "vh-$name" 2>/dev/null
rm -rf "$d"
exit 0
