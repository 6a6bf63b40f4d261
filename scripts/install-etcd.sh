#!/usr/bin/env bash
# Installs what the etcd store engine, its tests and its benchmark need, from Debian's package
# registry only: `etcd-server` (the etcd binary the tests start themselves), `etcd-client`
# (etcdctl, for poking at a cluster by hand), and `protobuf-compiler` with `libprotobuf-dev`
# (protoc and Google's well-known .proto files, which the `etcd-client` crate's build script
# needs to compile etcd's API).
#
# Debian's etcd-server starts a system-wide etcd on install. Tests own their etcd processes (on
# free loopback ports, in temp dirs), so this script keeps that service from starting and, if it
# runs anyway, stops and disables it: with systemd when systemd is running, with the SysV script
# otherwise. Idempotent: does nothing (and touches no network) when all is present and the
# service is not running. apt-get update runs only when something must be installed.
set -euo pipefail

# command or file -> Debian package that provides it
declare -A NEED=(
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [protoc]=protobuf-compiler
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(false); fi
fi

missing=()
for what in "${!NEED[@]}"; do
  if [[ $what == /* ]]; then
    [[ -e $what ]] || missing+=("${NEED[$what]}")
  else
    command -v "$what" >/dev/null 2>&1 || missing+=("${NEED[$what]}")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ ${SUDO[*]-} == false ]]; then
    echo "install-etcd: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-etcd: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Refuse service starts during the install (invoke-rc.d honours policy-rc.d), unless the
  # machine already has a policy of its own, which is then left alone.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    own_policy=1
    trap '[[ $own_policy == 1 ]] && "${SUDO[@]}" rm -f "$policy"' EXIT
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Stop and disable the packaged service, whichever init is (or is not) running.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  "${SUDO[@]}" systemctl disable --now etcd.service >/dev/null 2>&1 || true
else
  if [[ -x /etc/init.d/etcd ]]; then
    "${SUDO[@]}" /etc/init.d/etcd stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    "${SUDO[@]}" update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
fi
# A service started without an init system to track it: the packaged one runs as user etcd
# (tests run theirs as the invoking user), so only that one is matched.
if pgrep -u etcd -x etcd >/dev/null 2>&1; then
  "${SUDO[@]}" pkill -u etcd -x etcd || true
fi

# sed reads all of its input: no SIGPIPE for etcd under pipefail (head could cause one).
etcd --version 2>/dev/null | sed -n 1p >&2 || true
