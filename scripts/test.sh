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

# Lints and tests all run even when an earlier one fails, so one CI run reports everything.
failed=()
step "format"
cargo fmt --all -- --check || failed+=("cargo fmt")
step "lints"
cargo clippy --workspace --all-targets --all-features -- -D warnings || failed+=("cargo clippy")

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast || failed+=("tests")
else
  cargo test --workspace --all-features --no-fail-fast || failed+=("tests")
fi

step "done"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
