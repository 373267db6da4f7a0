#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for SECONDS (default 60) one after another, then prints
# every target's executions and coverage. libFuzzer grows fuzz/work/<target> (ignored by
# git) from the seed corpus fuzz/corpus/<target>; a crash lands in fuzz/artifacts/<target>:
# copy it to fuzz/regressions/<target>/ so that `cargo test -p tokenfab-engine fuzz::`
# replays it, then fix it.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It wants nightly; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept its flags. FUZZ_SANITIZER=address (default none: several times
# the executions, and the code fuzzed is safe Rust) and FUZZ_TARGETS="gguf template" adjust.
# The tokenizer target reads Qwen2's vocabulary from the test assets
# (scripts/fetch-test-assets.sh) or $TOKENFAB_FUZZ_VOCAB.
set -euo pipefail
seconds=${1:-60}
targets=${FUZZ_TARGETS:-gguf template tokenizer}
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "== $t: ${seconds}s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    cargo fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" 2>&1 | tee "work/$t.log" |
        grep -E '^#[0-9]+ *(DONE|INITED)|stat::|SUMMARY|panicked|ERROR' || true
done
