#!/usr/bin/env bash
# Installs the Debian packages the Rust build itself needs (a C toolchain for crates that build
# C, protobuf for the etcd client's code generation). Idempotent; apt-get update only when
# something is missing.
set -euo pipefail

declare -A NEED=([cc]=gcc [make]=make [pkg-config]=pkg-config [protoc]=protobuf-compiler [curl]=curl)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
((${#missing[@]} == 0)) && exit 0

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "install-build-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
