#!/usr/bin/env bash
# vm-up.sh NAME PORT [v2|v1]: a QEMU VM (software emulation; KVM does not work here) booted from the
# molecule image on a copy-on-write overlay; SSH on 127.0.0.1:PORT; no other network (restrict=on).
set -euo pipefail
name=$1; port=$2; cgroup=${3:-v2}
top=$(cd "$(dirname "$0")/../.." && pwd)
img=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}
d=$img/instances/vm-$name
"$(dirname "$0")/vm-down.sh" "$name" >/dev/null 2>&1 || true
mkdir -p "$d"
qemu-img create -q -f qcow2 -b "$img/base.img" -F raw "$d/disk.qcow2"
mode="systemd.unified_cgroup_hierarchy=1"
[ "$cgroup" = v1 ] && mode="systemd.unified_cgroup_hierarchy=0"
start=$(date +%s)
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp "${VM_SMP:-2}" -m "${VM_MEMORY_MB:-1024}" \
  -nodefaults -display none -serial "file:$d/console.log" \
  -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 $mode" \
  -drive "file=$d/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
  -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
  -pidfile "$d/qemu.pid" -daemonize < /dev/null > "$d/qemu.log" 2>&1
ssh_cmd=(ssh -q -i "$img/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -p "$port" root@127.0.0.1)
for _ in $(seq 1 300); do
  if "${ssh_cmd[@]}" true 2>/dev/null; then echo "vm $name up on port $port ($cgroup) in $(( $(date +%s) - start ))s"; exit 0; fi
  sleep 1
done
echo "vm $name: no SSH after 300s; console:" >&2; tail -30 "$d/console.log" >&2; exit 1
