#!/usr/bin/env bash
# Installs what the QEMU driver, its tests and the guest image build need, from Debian's
# package registry only. Idempotent: does nothing (and touches no network) when all is present.
# Works as root; uses sudo when not root and sudo exists.
set -euo pipefail

# command-or-file -> Debian package that provides it
declare -A NEED=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [/bin/busybox]=busybox-static
  [cpio]=cpio
  [mke2fs]=e2fsprogs
  [zstd]=zstd
  [xz]=xz-utils
  [dpkg-deb]=dpkg
  [sha256sum]=coreutils
  [gzip]=gzip
  [python3]=python3
  [ip]=iproute2  # the network namespaces of the multi-host test lab
  [nft]=nftables  # panal-net: anti-spoofing and security groups
)

missing=()
for what in "${!NEED[@]}"; do
  if [[ $what == /* ]]; then
    # busybox may be the dynamic one; we need the static build.
    status=$(dpkg-query -W -f='${Status}' "${NEED[$what]}" 2>/dev/null || true)
    [[ $status == *"ok installed"* ]] || missing+=("${NEED[$what]}")
  else
    command -v "$what" >/dev/null 2>&1 || missing+=("${NEED[$what]}")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "install-qemu-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-qemu-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
