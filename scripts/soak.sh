#!/usr/bin/env bash
# The long soak (crates/tokenfab/tests/soak.rs): the real server under mixed traffic for
# MINUTES minutes (default 30), then checked at rest (RSS, KV blocks, reservations, the
# ledger); prints its figures. `cargo test` runs the same soak for 75 seconds.
# Needs the default model cached (`cargo run --release -- models fetch`).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
case "$minutes" in
  '' | *[!0-9]*) echo "usage: scripts/soak.sh [minutes]" >&2; exit 2 ;;
esac
TOKENFAB_SOAK_SECS=$((minutes * 60)) exec cargo test --release --locked -p tokenfab \
  --test soak -- --nocapture
