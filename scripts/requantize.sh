#!/usr/bin/env bash
# Makes the requantized real-weight files that crates/engine/tests/requantized.rs reads:
# the SmolLM2 and Qwen2.5-Coder files (TOKENFAB_TEST_MODEL, TOKENFAB_TEST_MODEL_QWEN)
# requantized by llama.cpp's own `llama-quantize` into the presets whose weight types the
# engine runs, so every type is tested on real weights rather than only on random rows.
#
# `llama-quantize` is built from the reference source (bench/reference-source.sh), portable:
# GGML_NATIVE=OFF and every ISA option off, so the quantizer's float code is the same
# baseline x86-64 code on every machine and the output bits do not depend on the CPU (the
# sha256 of each file is pinned below). Built once (a few minutes on two cores, nice'd) and
# cached beside the reference; each file is written to a temp name then renamed, so an
# interrupted run never leaves a half file that looks done. Prints the folder on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TOKENFAB_TEST_MODEL:?set TOKENFAB_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF (scripts/test.sh does)}"
: "${TOKENFAB_TEST_MODEL_QWEN:?set TOKENFAB_TEST_MODEL_QWEN to the Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (scripts/test.sh does)}"

# shellcheck source=bench/reference-source.sh
. bench/reference-source.sh
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab"
ref="${TOKENFAB_REFERENCE_DIR:-$cache/llama.cpp-$reference_version}"
out="${TOKENFAB_REQUANTIZED:-$cache/requantized}"
jobs="${TOKENFAB_REFERENCE_JOBS:-2}"

quantize="$ref/quantize/bin/llama-quantize"
if [ ! -x "$quantize" ]; then
  cmake_bin=$(reference_cmake "$ref")
  src=$(reference_source "$ref")
  echo "== building a portable llama-quantize (-j$jobs, nice'd; once)" >&2
  nice -n 19 "$cmake_bin" -S "$src" -B "$ref/quantize/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF \
    -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_LLAMAFILE=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
  nice -n 19 "$cmake_bin" --build "$ref/quantize/build" --config Release -j "$jobs" \
    --target llama-quantize >&2
  mkdir -p "$ref/quantize/bin"
  cp "$ref/quantize/build/bin/llama-quantize" "$quantize.tmp"
  mv "$quantize.tmp" "$quantize"
fi

# name  source  preset  sha256 of the output
files=(
  "smollm2-135m-instruct.Q5_1.gguf    $TOKENFAB_TEST_MODEL      Q5_1   -"
  "smollm2-135m-instruct.Q2_K.gguf    $TOKENFAB_TEST_MODEL      Q2_K   -"
  "smollm2-135m-instruct.Q3_K_S.gguf  $TOKENFAB_TEST_MODEL      Q3_K_S -"
  "smollm2-135m-instruct.Q3_K_M.gguf  $TOKENFAB_TEST_MODEL      Q3_K_M -"
  "smollm2-135m-instruct.Q3_K_L.gguf  $TOKENFAB_TEST_MODEL      Q3_K_L -"
  "smollm2-135m-instruct.Q4_K_S.gguf  $TOKENFAB_TEST_MODEL      Q4_K_S -"
  "smollm2-135m-instruct.Q5_K_S.gguf  $TOKENFAB_TEST_MODEL      Q5_K_S -"
  "smollm2-135m-instruct.Q5_K_M.gguf  $TOKENFAB_TEST_MODEL      Q5_K_M -"
  "smollm2-135m-instruct.IQ4_NL.gguf  $TOKENFAB_TEST_MODEL      IQ4_NL -"
  "smollm2-135m-instruct.IQ4_XS.gguf  $TOKENFAB_TEST_MODEL      IQ4_XS -"
  "smollm2-135m-instruct.BF16.gguf    $TOKENFAB_TEST_MODEL      BF16   -"
  "qwen2.5-coder-0.5b-instruct.Q3_K_M.gguf $TOKENFAB_TEST_MODEL_QWEN Q3_K_M -"
  "qwen2.5-coder-0.5b-instruct.Q5_K_M.gguf $TOKENFAB_TEST_MODEL_QWEN Q5_K_M -"
  "qwen2.5-coder-0.5b-instruct.IQ4_XS.gguf $TOKENFAB_TEST_MODEL_QWEN IQ4_XS -"
)

mkdir -p "$out"
failed=0
for entry in "${files[@]}"; do
  read -r name source preset want <<<"$entry"
  dest="$out/$name"
  if [ ! -f "$dest" ]; then
    echo "== $name" >&2
    nice -n 19 "$quantize" --allow-requantize "$source" "$dest.tmp" "$preset" "$jobs" >"$dest.log" 2>&1 ||
      { echo "llama-quantize failed for $name: see $dest.log" >&2; exit 1; }
    mv "$dest.tmp" "$dest"
  fi
  got=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "sha256 mismatch for $dest: got $got, pinned $want." >&2
    echo "  The quantizer or its source file differs from the pinned one. If the source model or" >&2
    echo "  reference version changed on purpose, regenerate the goldens (bench/ tool) and pin the" >&2
    echo "  new sums here; otherwise delete $out and $ref/quantize and run this script again." >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
echo "$out"
