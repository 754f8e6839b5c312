#!/usr/bin/env bash
# ct-up.sh NAME IDX: a systemd-nspawn container booted from the molecule image on a throw-away overlay,
# in its own network namespace, reachable over SSH at 10.99.IDX.2 (the project's own test address range).
set -euo pipefail
name=$1; idx=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
img=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}
d=$img/instances/ct-$name
"$(dirname "$0")/ct-down.sh" "$name" >/dev/null 2>&1 || true
mkdir -p "$d/upper" "$d/work" "$d/merged"
mount -t overlay overlay -o "lowerdir=$img/rootfs,upperdir=$d/upper,workdir=$d/work" "$d/merged"
mkdir -p "$d/merged/etc/systemd/network"
printf '[Match]\nName=ct0\n[Network]\nAddress=10.99.%s.2/30\n' "$idx" > "$d/merged/etc/systemd/network/10-ct0.network"
echo "$name" > "$d/merged/etc/hostname"
start=$(date +%s.%N)
setsid systemd-nspawn -q -D "$d/merged" -M "$name" --register=no --keep-unit --boot \
  --network-veth-extra="vh-$name:ct0" ${NSPAWN_EXTRA:-} > "$d/console.log" 2>&1 < /dev/null &
echo $! > "$d/nspawn.pid"
for _ in $(seq 1 100); do ip link show "vh-$name" >/dev/null 2>&1 && break; sleep 0.1; done
ip addr add "10.99.$idx.1/30" dev "vh-$name"
ip link set "vh-$name" up
ssh_cmd=(ssh -q -i "$img/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=1 "root@10.99.$idx.2")
for _ in $(seq 1 300); do
  if "${ssh_cmd[@]}" true 2>/dev/null; then
    echo "container $name up at 10.99.$idx.2 in $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo '?')s"; exit 0
  fi
  sleep 0.2
done
echo "container $name: no SSH after 60s; console:" >&2; tail -20 "$d/console.log" >&2; exit 1
