#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy in deny.toml): every dependency's licence is
# one the project allows, no dependency comes from an unknown registry or git repository,
# and no known advisory (RustSec) affects one. Installs cargo-deny from the crates registry
# when missing (once; minutes on two cores).
#
# The advisory check needs RustSec's database, a git repository that cargo-deny fetches
# itself. Where that repository cannot be reached (a machine whose network reaches only the
# package registries), this script says so and checks everything else; set
# TOKENFAB_REQUIRE_ADVISORIES=1 to fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null; then
  echo "installing cargo-deny (crates registry)"
  cargo install --locked --quiet cargo-deny
fi
cargo deny --offline check licenses bans sources
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "cargo-deny: RustSec's advisory database cannot be fetched from here; advisories NOT checked" >&2
  if [ "${TOKENFAB_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    exit 1
  fi
fi
