#!/usr/bin/env bash
# Build (or reuse) the Debian 12 image the molecule tiers boot: a debootstrap root filesystem for
# systemd-nspawn containers, and an ext4 disk + kernel + initrd for QEMU VMs. Cached in
# .build/molecule and rebuilt only when missing or when this script changes.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${MOLECULE_IMAGE_DIR:-$top/.build/molecule}
stamp=$out/.image-stamp
want=$(sha256sum "$0" | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$out/base.img" ] && [ -d "$out/rootfs/etc" ]; then
  echo "molecule image: cached ($out)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "building the molecule image needs root" >&2; exit 1; }
need=()
for pkg in debootstrap qemu-system-x86 qemu-utils systemd-container e2fsprogs openssh-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "molecule image: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# debootstrap does not resolve virtual packages: python3-cffi-backend provides what python3-cryptography needs.
# The machine's own Debian mirror, as configured for apt (deb822 or one-line format).
mirror=$( { grep -rhE '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } \
         | { grep -oE 'https?://[^ ]+/debian/?( |$)' || true; } | head -1 | tr -d ' ')
[ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; exit 1; }
start=$(date +%s)
rm -rf "$out/rootfs" "$out/base.img"
mkdir -p "$out"
echo "molecule image: debootstrap bookworm from the configured mirror (about 2-3 minutes)"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,udev,dbus,openssh-server,python3,python3-apt,python3-yaml,python3-cffi-backend,python3-kubernetes,python3-prometheus-client,python3-jsonpatch,linux-image-amd64,initramfs-tools,iproute2,procps,kmod,sudo,bpftool,libbpf1 \
  bookworm "$out/rootfs" "$mirror" > "$out/debootstrap.log" 2>&1 || { tail -20 "$out/debootstrap.log"; exit 1; }
echo "molecule image: configuring"
R=$out/rootfs
[ -f "$out/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$out/id_ed25519"
echo node > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 node\n' > "$R/etc/hosts"
printf '/dev/vda / ext4 defaults,noatime 0 1\n' > "$R/etc/fstab"
install -d -m 700 "$R/root/.ssh"
install -m 600 "$out/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
mkdir -p "$R/etc/systemd/network"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' > "$R/etc/systemd/network/20-wired.network"
chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
printf 'PermitRootLogin prohibit-password\nUseDNS no\n' > "$R/etc/ssh/sshd_config.d/molecule.conf"
chroot "$R" passwd -d root >/dev/null
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/usr/share/doc/* "$R"/usr/share/man/*
kver=$(ls "$R/lib/modules" | head -1)
K=$R/usr/lib/modules/$kver/kernel
rm -rf "$K/drivers/gpu" "$K/sound" "$K/drivers/net/wireless" "$K/drivers/media" "$K/drivers/infiniband" "$K/drivers/staging" \
       "$K/net/bluetooth" "$K/drivers/bluetooth" "$K/drivers/net/ethernet" "$K/drivers/usb"
chroot "$R" depmod "$kver"
cp "$R/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$R/boot/initrd.img-$kver" "$out/initrd.img"
mkfs.ext4 -q -F -L root -d "$R" "$out/base.img" 2G
echo "$want" > "$stamp"
echo "molecule image: built in $(( $(date +%s) - start ))s (kernel $kver)"
