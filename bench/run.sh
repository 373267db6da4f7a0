#!/usr/bin/env bash
# The engine-speed table, tokenfab against llama.cpp, from one run, then the embeddings
# tables (tokenfab's encoder against sentence-transformers in PyTorch, whose environment
# bench/reference-st.sh installs once, and against llama-server on nomic-embed's GGUF), the
# rerank latency, the interactive TTFT beside a running batch and the proxy overhead table (tokenfab in front of
# an upstream against the upstream asked directly):
#
#   bench/run.sh
#
# Both engines run on the same GGUF files, the same 2 threads, one after the other (never
# both at once: on 2 cores they would measure each other). Engine rows: `tokenfab bench
# engine` and `llama-bench`. HTTP rows: the one load generator (`tokenfab bench http`)
# against `tokenfab serve` and against `llama-server --parallel 16`, so that the client's
# own costs are the same on both sides. Tokens are counted from the servers' `usage`, not
# assumed to be max_tokens: a chat model may stop early, and neither server can be told to
# ignore end-of-turn the same way.
#
# Opt-in and slow (the first run builds llama.cpp, about ten minutes on two cores); CI
# never calls it. Environment: CARGO_TARGET_DIR is honoured; TOKENFAB_BENCH_PORT (the
# first of two loopback ports, default 18431); TOKENFAB_BENCH_RUNS (engine repetitions,
# default 3); TOKENFAB_BENCH_ROUNDS (alternating engine and server rounds, best kept, default 2);
# TOKENFAB_BENCH_OUT (keep the raw JSON results there instead of a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

smol_id=HuggingFaceTB/SmolLM2-135M-Instruct
qwen_id=Qwen/Qwen2.5-Coder-0.5B-Instruct
gemma_id=google/gemma-3-270m
coder15_id=Qwen/Qwen2.5-Coder-1.5B-Instruct
threads=2
runs="${TOKENFAB_BENCH_RUNS:-3}"
rounds="${TOKENFAB_BENCH_ROUNDS:-2}"
tf_port="${TOKENFAB_BENCH_PORT:-18431}"
ref_port=$((tf_port + 1))
# Room for 16 slots of (prompt + 128): llama-server splits its context among its slots.
ref_ctx=16384
question="奥运会的传奇名将有哪些?"

if [ -n "${TOKENFAB_BENCH_OUT:-}" ]; then
  out="$TOKENFAB_BENCH_OUT"
  mkdir -p "$out"
else
  out=$(mktemp -d)
fi
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -z "${TOKENFAB_BENCH_OUT:-}" ]; then
    rm -rf "$out"
  fi
}
trap cleanup EXIT

load_1min() { cut -d' ' -f1 /proc/loadavg; }

# The engine's spin barriers collapse when another process wants the cores, so a figure
# taken under load says little. Warn, but measure anyway: the printed load is the context.
echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(load_1min)" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: load average above 0.5: other processes compete for the cores, the figures will be low and noisy" >&2
fi

echo "== building tokenfab (release)"
nice -n 19 cargo build --release --locked -p tokenfab
tf="${CARGO_TARGET_DIR:-target}/release/tokenfab"

echo "== building the reference (cached after the first run)"
ref_bin=$(bench/build-reference.sh | tail -n 1)
# On a CPU with AMX, this llama.cpp's kernels for repacked (AMX) weights segfault on a
# prompt pass (llama-bench at pp512, llama-server on a whole prompt); there the reference
# runs with its weights as they are in the file, and the table says so.
bench_repack=()
server_repack=()
if grep -qw amx_int8 /proc/cpuinfo; then
  bench_repack=(--repack 0)
  server_repack=(-nr)
  echo "note: AMX CPU: the reference runs without weight repacking (--repack 0 / -nr)" >&2
fi

echo "== models"
smol=$("$tf" models fetch "$smol_id")
qwen=$("$tf" models fetch "$qwen_id")
gemma=$("$tf" models fetch "$gemma_id")
coder15=$("$tf" models fetch "$coder15_id")
# The other weight formats: SmolLM2 requantized by llama.cpp's own llama-quantize (the
# files the engine's requantized tests read; made once, cached).
requantized=$(TOKENFAB_TEST_MODEL="$smol" TOKENFAB_TEST_MODEL_QWEN="$qwen" scripts/requantize.sh | tail -n 1)
smol_q5km="$requantized/smollm2-135m-instruct.Q5_K_M.gguf"
smol_iq4xs="$requantized/smollm2-135m-instruct.IQ4_XS.gguf"
printf '%s\n' "$smol" "$qwen" "$gemma" "$coder15" "$smol_q5km" "$smol_iq4xs"


# Engine rows. llama-bench: pp512 at depth 0, and tg128 at depth 512 -- decode after a
# 512-token prompt, what `tokenfab bench engine` measures (its tg128 at depth 0 would
# flatter it: attention over an empty cache is free).
# The pair runs $rounds times, alternating, and each side keeps its best round: the shared
# machine's speed drifts over minutes, and alternation gives both sides the same chances.
for m in smol qwen smol_q5km smol_iq4xs gemma; do
  path=${!m}
  for round in $(seq 1 "$rounds"); do
    echo "== engine bench: $m, round $round of $rounds (tokenfab, then llama-bench)"
    "$tf" bench engine --model "$path" --threads "$threads" --prompt 512 --generate 128 \
      --runs "$runs" --json >"$out/tf-engine-$m-$round.json"
    cat "$out/tf-engine-$m-$round.json"
    "$ref_bin/llama-bench" "${bench_repack[@]}" -m "$path" -t "$threads" -p 512 -n 128 -d 0,512 -r "$runs" \
      -o json >"$out/ref-engine-$m-$round.json" 2>"$out/ref-engine-$m-$round.log"
  done
done

# The real-size model: decode after 512 and after 4096 tokens (where attention's reads of
# the cache rival the weights'), and its prompt rate.
for round in $(seq 1 "$rounds"); do
  echo "== engine bench: coder15, round $round of $rounds (tokenfab, then llama-bench)"
  # The machine's read bandwidth, the limit of single-stream decode on a model that does
  # not fit the caches: measured, not assumed, right before the decode it bounds (on this
  # shared machine it drifts between about 43 and 76 GB/s from one hour to the next).
  "$tf" bench bandwidth --threads "$threads" --json >"$out/bandwidth-$round.json"
  cat "$out/bandwidth-$round.json"
  for depth in 512 4096; do
    "$tf" bench engine --model "$coder15" --threads "$threads" --prompt "$depth" --generate 128 \
      --runs "$runs" --json >"$out/tf-engine-coder15-d$depth-$round.json"
    cat "$out/tf-engine-coder15-d$depth-$round.json"
  done
  "$ref_bin/llama-bench" "${bench_repack[@]}" -m "$coder15" -t "$threads" -p 512 -n 0 -r "$runs" \
    -o json >"$out/ref-engine-coder15-pp-$round.json" 2>"$out/ref-engine-coder15-pp-$round.log"
  "$ref_bin/llama-bench" "${bench_repack[@]}" -m "$coder15" -t "$threads" -p 0 -n 128 -d 512,4096 -r "$runs" \
    -o json >"$out/ref-engine-coder15-tg-$round.json" 2>"$out/ref-engine-coder15-tg-$round.log"
done

wait_ready() { # url pid log
  for _ in $(seq 1 240); do
    if curl -sf -o /dev/null "$1"; then
      return 0
    fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server exited; its log:" >&2
      tail -n 30 "$3" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "the server did not answer $1 in 2 minutes" >&2
  return 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Starts one server on its loopback port and waits until it answers.
start_tf() { # model [serve flags...]
  local model=$1
  shift
  "$tf" serve --model "$model" "$@" --port "$tf_port" --threads "$threads" >"$out/tf-serve.log" 2>&1 &
  server_pid=$!
  wait_ready "http://127.0.0.1:$tf_port/v1/models" "$server_pid" "$out/tf-serve.log"
}
start_ref() { # model [llama-server flags...]
  local model=$1
  shift
  "$ref_bin/llama-server" "${server_repack[@]}" -m "$model" "$@" --host 127.0.0.1 --port "$ref_port" -t "$threads" \
    >"$out/ref-serve.log" 2>&1 &
  server_pid=$!
  wait_ready "http://127.0.0.1:$ref_port/health" "$server_pid" "$out/ref-serve.log"
}

# HTTP rows for one server already listening: 16 streams (aggregate tokens/s, peak RSS
# over that run), then 8 streams for 24 requests (time to first token; a closed loop, so
# later requests arrive while others decode, as they would in use).
http_rows() { # name base_url
  local name=$1 url=$2
  # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak read afterwards
  # is the peak of the 16-stream run (the load's own peak excluded). Linux >= 4.0.
  echo 5 >"/proc/$server_pid/clear_refs" 2>/dev/null || echo "note: cannot reset VmHWM; the peak includes model loading" >&2
  "$tf" bench http --url "$url" --concurrency 16 --requests 16 --max-tokens 128 \
    --prompt "$question" --temperature 0.7 --seed 42 --json >"$out/$name-http16.json"
  grep VmHWM "/proc/$server_pid/status" | awk '{ print $2 }' >"$out/$name-hwm-kb"
  cat "$out/$name-http16.json"
  "$tf" bench http --url "$url" --concurrency 8 --requests 24 --max-tokens 128 \
    --prompt "$question" --temperature 0.7 --seed 42 --json >"$out/$name-http8.json"
  cat "$out/$name-http8.json"
  python3 bench/second_turn.py "$url" "$(model_id "$url")" >"$out/$name-turn2.json"
  cat "$out/$name-turn2.json"
  # Structured outputs: the same 16 streams, each held to bench/schema.json.
  "$tf" bench http --url "$url" --concurrency 16 --requests 16 --max-tokens 128 \
    --prompt "$question" --temperature 0.7 --seed 42 --json-schema bench/schema.json \
    --json >"$out/$name-http16-schema.json"
  cat "$out/$name-http16-schema.json"
}

# The first model a server lists (llama-server names it after the file).
model_id() { # base_url
  curl -sf "$1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])'
}

# The servers alternate too, $rounds times, each started fresh; each side keeps its best
# figure per row (its worst for peak RSS).
for round in $(seq 1 "$rounds"); do
  echo "== HTTP round $round: tokenfab serve"
  start_tf "$smol"
  http_rows "tf-$round" "http://127.0.0.1:$tf_port/v1"
  stop_server

  echo "== HTTP round $round: llama-server --parallel 16"
  start_ref "$smol" --parallel 16 -c "$ref_ctx"
  http_rows "ref-$round" "http://127.0.0.1:$ref_port/v1"
  stop_server
done

# The real-size model over HTTP: 16 streams against llama-server's 16 slots.
coder15_http16() { # name base_url
  "$tf" bench http --url "$2" --concurrency 16 --requests 16 --max-tokens 128 \
    --prompt "$question" --temperature 0.7 --seed 42 --json >"$out/$1-coder15-http16.json"
  cat "$out/$1-coder15-http16.json"
}
for round in $(seq 1 "$rounds"); do
  echo "== HTTP round $round, coder15: tokenfab serve, then llama-server --parallel 16"
  start_tf "$coder15"
  coder15_http16 "tf-$round" "http://127.0.0.1:$tf_port/v1"
  stop_server
  start_ref "$coder15" --parallel 16 -c "$ref_ctx"
  coder15_http16 "ref-$round" "http://127.0.0.1:$ref_port/v1"
  stop_server
done

# Speculative decoding: one stream at a time on a code prompt, greedy, the 1.5B model with
# Qwen2.5-Coder-0.5B as its draft, against llama-server with the same draft
# (`--model-draft`), and both servers without a draft on the same requests.
code_prompt="Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation, with a docstring and three doctests."
spec_rows() { # name base_url
  "$tf" bench http --url "$2" --concurrency 1 --requests 3 --max-tokens 256 \
    --prompt "$code_prompt" --temperature 0 --json >"$out/$1.json"
  cat "$out/$1.json"
}
for round in $(seq 1 "$rounds"); do
  for draft in none qwen; do
    echo "== speculative round $round, draft $draft: tokenfab serve, then llama-server"
    extra=()
    ref_extra=()
    if [ "$draft" = qwen ]; then
      extra=(--draft "$qwen")
      ref_extra=(--model-draft "$qwen")
    fi
    start_tf "$coder15" "${extra[@]}"
    spec_rows "tf-$round-spec-$draft" "http://127.0.0.1:$tf_port/v1"
    stop_server
    start_ref "$coder15" "${ref_extra[@]}" -c 4096
    spec_rows "ref-$round-spec-$draft" "http://127.0.0.1:$ref_port/v1"
    stop_server
  done
done

echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
rounds = int(os.environ.get("TOKENFAB_BENCH_ROUNDS", "2"))
def llama_bench(model, n_prompt, n_gen, n_depth):
    best = None
    for rnd in range(1, rounds + 1):
        name = f"ref-engine-{model}-{rnd}.json"
        for r in load(name):
            if (r["n_prompt"], r["n_gen"], r.get("n_depth", 0)) == (n_prompt, n_gen, n_depth):
                best = max(best or 0.0, r["avg_ts"])
    if best is None:
        raise SystemExit(f"{model}: no llama-bench result for pp{n_prompt} tg{n_gen} depth {n_depth}")
    return best
def tf_engine(model):
    runs = [load(f"tf-engine-{model}-{rnd}.json") for rnd in range(1, rounds + 1)]
    best = dict(runs[0])
    for key in ("prompt_tokens_per_s", "decode_tokens_per_s"):
        best[key] = max(r[key] for r in runs)
    return best
def hwm_mib(side):
    def one(rnd):
        with open(os.path.join(out, f"{side}-{rnd}-hwm-kb")) as f:
            return int(f.read().strip()) / 1024
    return max(one(rnd) for rnd in range(1, rounds + 1))
def http(side, kind):
    """One side's HTTP results: the first round's, with each figure its best round's."""
    runs = [load(f"{side}-{rnd}-{kind}.json") for rnd in range(1, rounds + 1)]
    best = dict(runs[0])
    best["aggregate_tokens_per_s"] = max(r["aggregate_tokens_per_s"] for r in runs)
    for key in ("ttft_ms_p50", "ttft_ms_p99"):
        best[key] = min(r[key] for r in runs)
    return best

def best_of(prefix, key):
    return max(load(f"{prefix}-{rnd}.json")[key] for rnd in range(1, rounds + 1))
def llama_bench_file(kind, n_prompt, n_gen, n_depth):
    best = None
    for rnd in range(1, rounds + 1):
        for r in load(f"ref-engine-coder15-{kind}-{rnd}.json"):
            if (r["n_prompt"], r["n_gen"], r.get("n_depth", 0)) == (n_prompt, n_gen, n_depth):
                best = max(best or 0.0, r["avg_ts"])
    if best is None:
        raise SystemExit(f"coder15: no llama-bench result for pp{n_prompt} tg{n_gen} depth {n_depth}")
    return best

rows = []
tf_s, tf_q = tf_engine("smol"), tf_engine("qwen")
rows.append(("SmolLM2-135M Q4_1 decode tokens/s (128 after 512, 2 threads)",
             tf_s["decode_tokens_per_s"], llama_bench("smol", 0, 128, 512), "{:.1f}"))
rows.append(("SmolLM2-135M Q4_1 prompt processing tokens/s (512)",
             tf_s["prompt_tokens_per_s"], llama_bench("smol", 512, 0, 0), "{:.1f}"))
t16, r16 = http("tf", "http16"), http("ref", "http16")
rows.append(("HTTP aggregate generated tokens/s (16 streams x 128)",
             t16["aggregate_tokens_per_s"], r16["aggregate_tokens_per_s"], "{:.1f}"))
t8, r8 = http("tf", "http8"), http("ref", "http8")
rows.append(("HTTP time to first token p50, ms (8 streams)", t8["ttft_ms_p50"], r8["ttft_ms_p50"], "{:.0f}"))
rows.append(("HTTP time to first token p99, ms (8 streams)", t8["ttft_ms_p99"], r8["ttft_ms_p99"], "{:.0f}"))
rows.append(("Qwen2.5-Coder-0.5B Q4_K_M decode tokens/s (128 after 512)",
             tf_q["decode_tokens_per_s"], llama_bench("qwen", 0, 128, 512), "{:.1f}"))
rows.append(("Qwen2.5-Coder-0.5B Q4_K_M prompt processing tokens/s (512)",
             tf_q["prompt_tokens_per_s"], llama_bench("qwen", 512, 0, 0), "{:.1f}"))
for key, label in (("smol_q5km", "SmolLM2-135M Q5_K_M"), ("smol_iq4xs", "SmolLM2-135M IQ4_XS"),
                   ("gemma", "gemma-3-270m Q4_K_M")):
    e = tf_engine(key)
    rows.append((f"{label} decode tokens/s (128 after 512)",
                 e["decode_tokens_per_s"], llama_bench(key, 0, 128, 512), "{:.1f}"))
    rows.append((f"{label} prompt processing tokens/s (512)",
                 e["prompt_tokens_per_s"], llama_bench(key, 512, 0, 0), "{:.1f}"))
bw = max((load(f"bandwidth-{rnd}.json") for rnd in range(1, rounds + 1)),
         key=lambda b: b["read_gb_per_s"])
bandwidth, huge = bw["read_gb_per_s"], bw["huge_page_fraction"]
c512 = best_of("tf-engine-coder15-d512", "decode_tokens_per_s")
c4096 = best_of("tf-engine-coder15-d4096", "decode_tokens_per_s")
bytes_per_token = load("tf-engine-coder15-d512-1.json")["bytes_per_token"]
limit = bandwidth * 1e9 / bytes_per_token
rows.append(("Qwen2.5-Coder-1.5B Q4_K_M decode tokens/s (128 after 512)",
             c512, llama_bench_file("tg", 0, 128, 512), "{:.1f}"))
rows.append(("Qwen2.5-Coder-1.5B Q4_K_M decode tokens/s (128 after 4096)",
             c4096, llama_bench_file("tg", 0, 128, 4096), "{:.1f}"))
rows.append(("Qwen2.5-Coder-1.5B Q4_K_M prompt processing tokens/s (512)",
             best_of("tf-engine-coder15-d512", "prompt_tokens_per_s"),
             llama_bench_file("pp", 512, 0, 0), "{:.1f}"))
def coder15_http(side):
    return max(load(f"{side}-{rnd}-coder15-http16.json")["aggregate_tokens_per_s"]
               for rnd in range(1, rounds + 1))
rows.append(("Qwen2.5-Coder-1.5B HTTP aggregate generated tokens/s (16 streams x 128)",
             coder15_http("tf"), coder15_http("ref"), "{:.1f}"))
# Not against llama.cpp: decode after 512 as a fraction of the bandwidth limit (target >= 0.85).
rows.append((f"1.5B decode / bandwidth limit ({bandwidth:.1f} GB/s, {huge:.0%} in huge pages, over {bytes_per_token / 2**20:.0f} MiB per token; llama.cpp column: the limit)",
             c512, limit, "{:.1f}"))
def spec(side, draft):
    return max(load(f"{side}-{rnd}-spec-{draft}.json")["aggregate_tokens_per_s"]
               for rnd in range(1, rounds + 1))
rows.append(("1.5B one stream, code prompt, greedy, with the 0.5B draft (llama.cpp: llama-server --model-draft)",
             spec("tf", "qwen"), spec("ref", "qwen"), "{:.1f}"))
# Not against llama.cpp with a draft: tokenfab with its draft against llama-server without one (target >= 2.0).
rows.append(("1.5B one stream with the draft / llama-server without one (llama.cpp column: without)",
             spec("tf", "qwen"), spec("ref", "none"), "{:.1f}"))
rows.append(("1.5B one stream, code prompt, greedy, no draft",
             spec("tf", "none"), spec("ref", "none"), "{:.1f}"))
ts, rs = http("tf", "http16-schema"), http("ref", "http16-schema")
rows.append(("HTTP aggregate generated tokens/s, 16 streams x 128 with a json_schema",
             ts["aggregate_tokens_per_s"], rs["aggregate_tokens_per_s"], "{:.1f}"))
# Not against llama.cpp: tokenfab with the schema against tokenfab without it (target >= 0.9).
rows.append(("tokenfab with a json_schema / without (16 streams; llama.cpp column: without)",
             ts["aggregate_tokens_per_s"], t16["aggregate_tokens_per_s"], "{:.1f}"))
rows.append(("server peak RSS, MiB (SmolLM2, 16 streams)", hwm_mib("tf"), hwm_mib("ref"), "{:.0f}"))
t2, r2 = load("tf-1-turn2.json"), load("ref-1-turn2.json")
rows.append((f"second turn (seed's Round 2): prompt tokens recomputed, of {t2['round2_prompt_tokens']}",
             t2["round2_recomputed"], r2["round2_recomputed"], "{:.0f}"))

print("| figure | tokenfab | llama.cpp | ratio |")
print("|---|---|---|---|")
for name, tf, ref, fmt in rows:
    ratio = tf / ref if ref else float("nan")
    print(f"| {name} | {fmt.format(tf)} | {fmt.format(ref)} | {ratio:.2f} |")
print()
print("ratio = tokenfab / llama.cpp: above 1 is better for tokens/s, worse for ms, MiB and recomputed tokens.")
print(f"second turn counted by: tokenfab {t2['counted_by']}, llama.cpp {r2['counted_by']} "
      f"(llama.cpp's round 2 prompt: {r2['round2_prompt_tokens']} tokens)")
for name, d in (("16 streams", (t16, r16)), ("8 streams", (t8, r8))):
    t, r = d
    print(f"{name}: generated tokens tokenfab {t['generated_tokens']} ({t['tokens_counted_by']}, "
          f"{t['finished_by_stop']}/{t['requests']} stopped early), llama.cpp {r['generated_tokens']} "
          f"({r['tokens_counted_by']}, {r['finished_by_stop']}/{r['requests']} stopped early)")
print(f"engine load average: tokenfab smol {tf_s['load_before']}, qwen {tf_q['load_before']}; "
      f"HTTP: tokenfab {t16['load_before']}, llama.cpp {r16['load_before']}")
PY

# Embeddings: tokenfab's encoder against sentence-transformers in PyTorch on CPU, the same
# 1000 sentences in the same batches of 32, on the same 2 threads, alternating rounds.
echo
echo "== embeddings (reference: sentence-transformers in PyTorch on CPU)"
minilm=$("$tf" models fetch sentence-transformers/all-MiniLM-L6-v2)
st_venv=$(bench/reference-st.sh | tail -n 1)
python3 bench/sentences.py >"$out/sentences.json"
for round in $(seq 1 "$rounds"); do
  "$tf" bench embed --model "$minilm" --input "$out/sentences.json" --batch 32 \
    --threads "$threads" --runs "$runs" --json >"$out/tf-embed-$round.json"
  "$st_venv/bin/python" bench/st_reference.py "$(dirname "$minilm")" "$out/sentences.json" \
    "$threads" 32 "$runs" 2>/dev/null >"$out/st-embed-$round.json"
done
python3 bench/embed_row.py "$out" "$rounds" embed st sentence-transformers \
  "all-MiniLM-L6-v2 sentences/s (1000 sentences, {tokens} tokens, batches of 32; target >= 1.5)"

# nomic-embed-text against llama.cpp on the same F16 GGUF: both as servers, the same 1000
# sentences (with nomic's `search_document: ` prefix) in requests of 32 inputs, one request
# at a time, through the same client (bench/embed_http.py), alternating rounds. llama-server
# gets 32 slots and a micro-batch that holds a whole request (its best of the settings
# tried: 8 or 32 slots, 1024 or 4096 per micro-batch, flash attention on or off).
echo
echo "== embeddings over HTTP: nomic-embed-text-v1.5 (reference: llama-server --embedding)"
nomic=$("$tf" models fetch nomic-ai/nomic-embed-text-v1.5)
python3 -c 'import json, sys; print(json.dumps(["search_document: " + t for t in json.load(open(sys.argv[1]))]))' \
  "$out/sentences.json" >"$out/nomic-sentences.json"
for round in $(seq 1 "$rounds"); do
  start_tf "$nomic" --model-id nomic
  python3 bench/embed_http.py "http://127.0.0.1:$tf_port/v1" nomic "$out/nomic-sentences.json" 32 "$runs" \
    >"$out/tf-nomic-$round.json"
  stop_server
  start_ref "$nomic" --embedding --pooling mean -np 32 -c 16384 -b 4096 -ub 4096
  python3 bench/embed_http.py "http://127.0.0.1:$ref_port/v1" nomic "$out/nomic-sentences.json" 32 "$runs" \
    >"$out/ref-nomic-$round.json"
  stop_server
done
python3 bench/embed_row.py "$out" "$rounds" nomic ref llama.cpp \
  "nomic-embed-text-v1.5 F16 sentences/s over HTTP (1000 sentences, {tokens} tokens, requests of 32; target >= 1.5)"

# Rerank latency (reported, no reference): Qwen2.5-Coder-0.5B as relevance judge, 1 query x
# 32 documents of about 100 tokens, 20 requests in a row.
echo
echo "== rerank latency (a chat model as judge)"
printf '[[models]]\nid = "judge"\nsource = "%s"\ntype = "reranker"\n' "$qwen" >"$out/judge.toml"
"$tf" serve --config "$out/judge.toml" --port "$tf_port" --threads "$threads" >"$out/judge-serve.log" 2>&1 &
server_pid=$!
wait_ready "http://127.0.0.1:$tf_port/v1/models" "$server_pid" "$out/judge-serve.log"
python3 bench/rerank_latency.py "http://127.0.0.1:$tf_port/v1" judge | tee "$out/rerank.json"
stop_server

# What a running batch costs interactive requests (reported, target <= 1.2): p99 TTFT of 8
# streams, 5 rounds, without and then with a 500-request batch queued through the batch API.
echo
echo "== interactive TTFT with a 500-request batch running (SmolLM2)"
start_tf "$smol"
python3 bench/batch_ttft.py "http://127.0.0.1:$tf_port/v1" "$(model_id "http://127.0.0.1:$tf_port/v1")" | tee "$out/batch-ttft.json"
stop_server

# What tokenfab adds in front of an upstream (issue 6's figure). Its reference is the same
# instant upstream asked directly, alternating with the runs through `tokenfab serve`.
echo
echo "== proxy overhead (reference: the upstream asked directly)"
"$tf" bench proxy
