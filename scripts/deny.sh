#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy in deny.toml): every dependency's licence is
# one the project allows, no dependency comes from an unknown registry or git repository,
# and no known advisory (RustSec) affects one. Installs cargo-deny from the crates registry
# when missing (once; minutes on two cores).
#
# The advisory check needs RustSec's database, a git repository that cargo-deny fetches
# itself into target/advisory-dbs (deny.toml's db-path). Where that repository cannot be
# reached (a machine whose network reaches only the package registries), the advisories are
# checked against the snapshot in supply-chain/ instead, and the script says how old it is;
# TOKENFAB_REQUIRE_FRESH_ADVISORIES=1 fails then instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null; then
  echo "installing cargo-deny (crates registry)"
  cargo install --locked --quiet cargo-deny
fi
cargo deny --offline check licenses bans sources

# cargo-deny's folder for RustSec's database: the name it derives from the database's URL.
db=target/advisory-dbs/advisory-db-3157b0e258782691
# A snapshot unpacked by an earlier run is no clone to update: start afresh.
if [ -e "$db/SNAPSHOT" ]; then
  rm -rf "$db"
fi
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
  exit 0
fi
if [ "${TOKENFAB_REQUIRE_FRESH_ADVISORIES:-0}" = 1 ]; then
  echo "cargo-deny: RustSec's advisory database cannot be fetched from here" >&2
  exit 1
fi
# cargo-deny reads the database's age from its git head: the snapshot is committed with
# the date of the RustSec commit it was taken from.
rm -rf "$db"
mkdir -p "$db"
tar -xzf supply-chain/rustsec-advisory-db.tar.gz -C "$db"
date=$(sed -n 's/^date //p' "$db/SNAPSHOT")
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -C "$db" -c user.name=tokenfab \
  -c user.email=tokenfab@localhost -c commit.gpgsign=false commit -q -m "RustSec snapshot"
echo "cargo-deny: RustSec's advisory database cannot be fetched from here; checking against" \
  "the snapshot in supply-chain/ ($(sed -n 's/^commit //p' "$db/SNAPSHOT" | cut -c1-12)," \
  "$date): advisories published since are NOT checked" >&2
cargo deny --offline check advisories
