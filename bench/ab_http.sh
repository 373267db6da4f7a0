#!/usr/bin/env bash
# Two tokenfab binaries over HTTP, alternating, on the same model and load: for a change on
# the hot path (metrics, a scheduler change), the before/after figure the change must
# report. Each round serves the default model with one binary, then the other, and runs
# the same loads against each: 1 stream (per-token costs show most there) and 16 streams.
#
#   bench/ab_http.sh BEFORE_BINARY [AFTER_BINARY] [ROUNDS]
#
# AFTER_BINARY defaults to this checkout's release build; ROUNDS to 3. Prints one line per
# run (binary, streams, tokens/s, p50 time to first token, load average) and each load's best-of ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
before="$1"
after="${2:-${CARGO_TARGET_DIR:-target}/release/tokenfab}"
rounds="${3:-3}"
port="${TOKENFAB_BENCH_PORT:-18441}"
out=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
pid=""

run_side() { # label binary round
  "$2" serve --port "$port" --threads 2 --database "sqlite://$out/$1-$3.db" >"$out/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
  for c in 1 16; do
    "$after" bench http --url "http://127.0.0.1:$port/v1" --concurrency "$c" --requests $((c < 4 ? 4 : c)) \
      --max-tokens 128 --temperature 0.7 --seed 42 --json >"$out/$1-$c-$3.json"
    python3 - "$1" "$c" "$out/$1-$c-$3.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[3]))
print(f"{sys.argv[1]:6} streams={sys.argv[2]:>2} tokens/s={d['aggregate_tokens_per_s']:.1f} ttft_p50_ms={d['ttft_ms_p50']:.1f} load={d['load_before']}")
PY
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for r in $(seq "$rounds"); do
  run_side before "$before" "$r"
  run_side after "$after" "$r"
done
python3 - "$out" <<'PY'
import glob, json, sys
best = {}
for f in glob.glob(sys.argv[1] + "/*.json"):
    side, c, _ = f.rsplit("/", 1)[1][:-5].split("-")
    v = json.load(open(f))["aggregate_tokens_per_s"]
    best[(side, c)] = max(best.get((side, c), 0), v)
for c in ("1", "16"):
    print(f"streams={c:>2}: best tokens/s before {best[('before', c)]:.1f}, after {best[('after', c)]:.1f}, after/before {best[('after', c)] / best[('before', c)]:.3f}")
PY
