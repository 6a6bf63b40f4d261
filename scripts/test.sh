#!/usr/bin/env bash
# The second README command: installs whatever is missing (Debian packages, the guest image) and
# runs every test of the workspace: formatting, lints, unit, API, CLI, store conformance (embedded
# and real etcd), and the real-QEMU end-to-end tests. Safe to run again; idempotent set-up steps
# return at once when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "system packages"
scripts/install-build-deps.sh
scripts/install-qemu-deps.sh
[[ -x scripts/install-etcd.sh ]] && scripts/install-etcd.sh

step "guest image"
scripts/build-guest-image.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi

step "done"
