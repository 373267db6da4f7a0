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

# name, source, preset, sha256 of the output, then any options for llama-quantize. The
# presets fall back to other types on rows that are not a multiple of 256 (SmolLM2's 576,
# Qwen2.5's 896: Q5_K -> Q5_1, Q4_K -> Q5_0, Q6_K -> Q8_0, Q2_K/Q3_K/IQ4_XS -> IQ4_NL or
# Q4_0), so only ffn_down (rows of n_ff) gets the K and IQ4_XS types; and no preset puts
# Q2_K on a matrix of either model, so one file asks for it on ffn_down.
files=(
  "smollm2-135m-instruct.Q5_1.gguf    $TOKENFAB_TEST_MODEL      Q5_1   d0fe3cbb20771ac9dab0f4dd5aaa259785158177f6503d4dca32f4495dcffaea"
  "smollm2-135m-instruct.Q2_K.gguf    $TOKENFAB_TEST_MODEL      Q2_K   c1104c3aa7038fa3e40a558df9c2ba32161364f158f4c40c8add859b6a40a073 --tensor-type ffn_down=q2_k"
  "smollm2-135m-instruct.Q3_K_S.gguf  $TOKENFAB_TEST_MODEL      Q3_K_S ca3de3a0484059fee961521fb7f639b7876cef1cc206115b628b1f14432c71c0"
  "smollm2-135m-instruct.Q3_K_M.gguf  $TOKENFAB_TEST_MODEL      Q3_K_M 01045a8fee6c962e4f7b0f80dccf937503738f61f987c305378fd3f527eac9d4"
  "smollm2-135m-instruct.Q3_K_L.gguf  $TOKENFAB_TEST_MODEL      Q3_K_L 3acfe6c108190f7bb3d034e8ca6516eb3a721699d401e4a40ccabc4da212eb6f"
  "smollm2-135m-instruct.Q4_K_S.gguf  $TOKENFAB_TEST_MODEL      Q4_K_S 7d9eb1146bf78d98207372d1db5f4aad16ec094f11f8edd661627eda54f7cf53"
  "smollm2-135m-instruct.Q5_K_S.gguf  $TOKENFAB_TEST_MODEL      Q5_K_S d426b27bf6e06f6afe5ae60cf6457231a463f58db34d881febbd149c08007218"
  "smollm2-135m-instruct.Q5_K_M.gguf  $TOKENFAB_TEST_MODEL      Q5_K_M 8170c7ef444692b3b2fe63459c326def0358807ef9be6e3cb020efb86a71015e"
  "smollm2-135m-instruct.IQ4_NL.gguf  $TOKENFAB_TEST_MODEL      IQ4_NL b4d1842a26d8952bd7b609eb2062f7352aeb609c1ac5017542be18f83bc1776e"
  "smollm2-135m-instruct.IQ4_XS.gguf  $TOKENFAB_TEST_MODEL      IQ4_XS 5a4caecc8f966f75ff79b8f1522f76aedd2381d0722df17254e212f01526c7ba"
  "smollm2-135m-instruct.BF16.gguf    $TOKENFAB_TEST_MODEL      BF16   994c74505f109ce900a91772a38324b6635a16c1499111f1df4fb031233033d7"
  "qwen2.5-coder-0.5b-instruct.Q3_K_S.gguf $TOKENFAB_TEST_MODEL_QWEN Q3_K_S 4c2b7aed44f09ec8f19f7e487124aa61373df85d4aa221ed91d0c6280b3ac662"
  "qwen2.5-coder-0.5b-instruct.Q5_K_M.gguf $TOKENFAB_TEST_MODEL_QWEN Q5_K_M efd80692accef97925cd72cdac5bed6b603303737884ae43d5ccdf29eefef9c7"
  "qwen2.5-coder-0.5b-instruct.IQ4_XS.gguf $TOKENFAB_TEST_MODEL_QWEN IQ4_XS d41453d1fe843c5690aeb9fc6ec05a3145dd3a4e5a66f55244370e6358cf2a6b"
)

mkdir -p "$out"
failed=0
for entry in "${files[@]}"; do
  read -r name source preset want options <<<"$entry"
  dest="$out/$name"
  if [ ! -f "$dest" ]; then
    echo "== $name" >&2
    # shellcheck disable=SC2086 # options are words
    nice -n 19 "$quantize" --allow-requantize ${options:-} "$source" "$dest.tmp" "$preset" "$jobs" \
      >"$dest.log" 2>&1 ||
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
