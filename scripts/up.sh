#!/usr/bin/env bash
# The first README command: installs whatever is missing (Debian packages, the built-in guest
# image), builds Panal, runs the single-machine platform in the foreground and starts a tiny
# Linux VM in it. Ctrl-C stops the platform (the VM keeps running and is re-attached next time).
#
#   scripts/up.sh [--data-dir DIR] [--listen ADDR]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
scripts/install-qemu-deps.sh
scripts/build-guest-image.sh

echo "Building Panal (release)..." >&2
cargo build --release -p panal --quiet
PANAL=$PWD/target/release/panal
export PATH="$PWD/target/release:$PATH"

"$PANAL" up "$@" &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP' INT TERM

# Wait for the API (up writes the default client configuration once it serves).
for _ in $(seq 1 100); do
  "$PANAL" host list >/dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { echo "panal up exited" >&2; exit 1; }
  sleep 0.2
done

if ! "$PANAL" vm show demo >/dev/null 2>&1; then
  "$PANAL" vm create demo --image tiny --machine microvm --memory 256M --wait
else
  "$PANAL" vm start demo --wait 2>/dev/null || true
fi
"$PANAL" vm list
cat <<MSG

A tiny Linux VM named "demo" is running. In another terminal:
  $PANAL vm console demo      # its serial console (detach with Ctrl-])
  $PANAL vm logs demo         # what it printed
  $PANAL vm create web --image tiny --machine microvm --wait
Ctrl-C here stops the platform.
MSG
wait $UP
