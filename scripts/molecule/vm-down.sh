#!/usr/bin/env bash
# vm-down.sh NAME: stop the VM and remove its overlay disk.
name=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
d=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}/instances/vm-$name
. "$(dirname "$0")/lib.sh"
stop_pidfile "$d/qemu.pid" 50
rm -rf "$d"
exit 0
