#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for SECONDS (default 60) one after another, then prints
# every target's executions and coverage. libFuzzer grows fuzz/work/<target> (ignored by
# git) from the seed corpus fuzz/corpus/<target>; a crash lands in fuzz/artifacts/<target>:
# copy it to fuzz/regressions/<target>/ so that `cargo test fuzz::` replays it (the bodies
# live in the crates they fuzz: tokenfab-engine's gguf, template and tokenizer,
# tokenfab-server's request, tokenfab-upstream's upstream), then fix it.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It wants nightly; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept its flags. FUZZ_SANITIZER=address (default none: several times
# the executions, and the code fuzzed is safe Rust) and FUZZ_TARGETS="gguf template" adjust.
# The tokenizer target reads Qwen2's vocabulary from the test assets
# (scripts/fetch-test-assets.sh) or $TOKENFAB_FUZZ_VOCAB; the request target the default
# chat model and all-MiniLM-L6-v2 ($TOKENFAB_TEST_MODEL, $TOKENFAB_TEST_MINILM), fetched
# into the cache here when unset.
set -euo pipefail
seconds=${1:-60}
targets=${FUZZ_TARGETS:-gguf template tokenizer request upstream}
cd "$(dirname "$0")/.."
if [[ " $targets " == *" request "* ]]; then
    fetch() { cargo run -q --release --locked -- models fetch "$1"; }
    TOKENFAB_TEST_MODEL=${TOKENFAB_TEST_MODEL:-$(fetch HuggingFaceTB/SmolLM2-135M-Instruct)}
    TOKENFAB_TEST_MINILM=${TOKENFAB_TEST_MINILM:-$(fetch sentence-transformers/all-MiniLM-L6-v2)}
    export TOKENFAB_TEST_MODEL TOKENFAB_TEST_MINILM
fi
cd fuzz
export RUSTC_BOOTSTRAP=1
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "== $t: ${seconds}s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    cargo fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" 2>&1 | tee -a "work/$t.log" |
        grep -E '^#[0-9]+ *(DONE|INITED)|stat::|SUMMARY|panicked|ERROR' || true
done
# Every run's figures are appended to work/<target>.log: the executions of all of them.
echo "== executions so far, all runs (work/<target>.log)"
for t in $targets; do
    awk -v t="$t" '/stat::number_of_executed_units/ {n += $2} END {printf "%-10s %12d\n", t, n}' "work/$t.log"
done
