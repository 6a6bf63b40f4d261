#!/usr/bin/env bash
# Builds Panal's tiny test guest from Debian packages and caches it:
#   vmlinuz            the compressed kernel (q35, firmware-less direct boot)
#   vmlinux            the uncompressed ELF kernel with PVH entry (microvm)
#   initramfs.cpio.gz  busybox-static init (images/guest/init): loads virtio/ext4 modules, DHCP in
#                      the background, prints PANAL-GUEST-READY on ttyS0, root shell on ttyS0
#   rootfs.ext4        the same userland on an ext4 disk (boot with root=/dev/vda + the initramfs)
#   rootfs.qcow2       the same disk as qcow2
#   manifest.json      versions and sha256 of every file
# Usage: scripts/build-guest-image.sh [OUTDIR]   (default ${PANAL_GUEST_DIR:-$HOME/.cache/panal/guest})
# Rerunning with everything present and these sources unchanged returns at once.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC="$HERE/../images/guest"
OUT=${1:-${PANAL_GUEST_DIR:-$HOME/.cache/panal/guest}}
FILES=(vmlinuz vmlinux initramfs.cpio.gz rootfs.ext4 rootfs.qcow2)
# Modules the guest loads (with their dependencies); names missing from the kernel are skipped.
MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_rng virtio_balloon virtio_console
         crc32c_generic crc32c_intel ext4 button evdev pvpanic_pci pvpanic_mmio)

# The cache key: this script, the guest sources and the module list.
key=$(cat "${BASH_SOURCE[0]}" "$SRC"/* | sha256sum | cut -d' ' -f1)
if [[ -f $OUT/manifest.json ]] && grep -q "\"source_key\": \"$key\"" "$OUT/manifest.json"; then
  ok=1
  for f in "${FILES[@]}"; do [[ -s $OUT/$f ]] || ok=0; done
  if ((ok)); then echo "guest image up to date in $OUT"; exit 0; fi
fi

"$HERE/install-qemu-deps.sh"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# --- kernel: the real package behind the linux-image-amd64 metapackage -------------------
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found=1}')
if [[ -z $pkg ]]; then
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found=1}')
fi
[[ -n $pkg ]] || { echo "cannot resolve linux-image-amd64" >&2; exit 1; }
(cd "$WORK" && { apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$pkg" >/dev/null; }; })
deb=$(ls "$WORK"/linux-image-*.deb)
kver_pkg=$(dpkg-deb -f "$deb" Version)
dpkg -x "$deb" "$WORK/k"
kver=$(basename "$(ls -d "$WORK"/k/lib/modules/*)")
moddir="$WORK/k/lib/modules/$kver"
cp "$WORK/k/boot/vmlinuz-$kver" "$WORK/vmlinuz"
python3 "$SRC/kernel_tools.py" vmlinux "$WORK/vmlinuz" "$WORK/vmlinux"

# --- userland shared by the initramfs and the root disk -----------------------------------
make_root() { # $1 = directory
  local r=$1
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/panal,proc,sys,dev,run,tmp,root,newroot,lib/modules}
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list-full); do
    [[ -e $r/$a ]] || ln -s /bin/busybox "$r/$a"
  done
  install -m 0755 "$SRC/init" "$r/init"
  install -m 0755 "$SRC/init" "$r/sbin/init.panal"
  ln -sf /sbin/init.panal "$r/sbin/init"
  install -m 0755 "$SRC/udhcpc.script" "$r/etc/panal/udhcpc.script"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
  echo 'root:x:0:' > "$r/etc/group"
  echo 'export PS1="panal# "' > "$r/etc/profile"
  mkdir -p "$r/lib/modules/$kver"
  : > "$r/etc/panal/modules"
  python3 "$SRC/kernel_tools.py" modules "$moddir" "${MODULES[@]}" | while read -r rel; do
    mkdir -p "$r/lib/modules/$kver/$(dirname "$rel")"
    cp "$moddir/$rel" "$r/lib/modules/$kver/$rel"
    echo "$kver/$rel" >> "$r/etc/panal/modules"
  done
}

make_root "$WORK/initramfs"
touch "$WORK/initramfs/panal-initramfs"
(cd "$WORK/initramfs" && find . -print0 | cpio --null -o -H newc --quiet --owner 0:0 | gzip -6 > "$WORK/initramfs.cpio.gz")

make_root "$WORK/rootfs"
rm -f "$WORK/rootfs/init"
# mke2fs -d builds the file system from a directory without root or loop devices.
mke2fs -q -t ext4 -L panal-root -E root_owner=0:0 -d "$WORK/rootfs" "$WORK/rootfs.ext4" 64M
qemu-img convert -q -f raw -O qcow2 "$WORK/rootfs.ext4" "$WORK/rootfs.qcow2"

# --- publish atomically-ish: files first, manifest last (it is the cache marker) ---------
rm -f "$OUT/manifest.json"
for f in "${FILES[@]}"; do mv -f "$WORK/$f" "$OUT/$f"; done
{
  echo "{"
  echo "  \"source_key\": \"$key\","
  echo "  \"kernel_package\": \"$pkg\","
  echo "  \"kernel_package_version\": \"$kver_pkg\","
  echo "  \"kernel_release\": \"$kver\","
  echo "  \"busybox\": \"$(dpkg-query -W -f='${Version}' busybox-static)\","
  echo "  \"readiness_line\": \"PANAL-GUEST-READY\","
  echo "  \"microvm_cmdline\": \"console=ttyS0 quiet lpj=1000000 tsc=reliable no_timer_check\","
  echo "  \"rootfs_cmdline\": \"root=/dev/vda\","
  echo "  \"files\": {"
  n=${#FILES[@]}; i=0
  for f in "${FILES[@]}"; do
    i=$((i+1)); sep=,; ((i==n)) && sep=
    echo "    \"$f\": {\"sha256\": \"$(sha256sum "$OUT/$f" | cut -d' ' -f1)\", \"bytes\": $(stat -c %s "$OUT/$f")}$sep"
  done
  echo "  }"
  echo "}"
} > "$OUT/manifest.json.tmp"
mv "$OUT/manifest.json.tmp" "$OUT/manifest.json"
echo "guest image built in $OUT (kernel $kver)"
