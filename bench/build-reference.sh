#!/usr/bin/env bash
# Builds the reference the engine is measured against: llama.cpp's `llama-bench` and
# `llama-server`, from the llama.cpp that llama-cpp-python 0.3.36's source distribution
# vendors -- the same llama.cpp whose tokenizer vectors, templates and golden logits the
# tests already compare against, so speed and correctness are judged against one version.
#
# CPU only, tuned for this machine (GGML_NATIVE), Release. Slow (about ten minutes on two
# cores), hence opt-in: CI never calls anything under bench/. Cached: when both binaries are
# there, it does nothing. Prints the directory holding the binaries on its last line.
set -euo pipefail

# shellcheck source=bench/reference-source.sh
. "$(dirname "$0")/reference-source.sh"
dest="${TOKENFAB_REFERENCE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/llama.cpp-$reference_version}"
bin="$dest/bin"
jobs="${TOKENFAB_REFERENCE_JOBS:-2}"

if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-server" ]; then
  echo "reference already built in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$dest"

cmake_bin=$(reference_cmake "$dest")
src=$(reference_source "$dest")

echo "== building llama-bench and llama-server (-j$jobs, nice'd; about ten minutes on two cores)" >&2
nice -n 19 "$cmake_bin" -S "$src" -B "$dest/build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
nice -n 19 "$cmake_bin" --build "$dest/build" --config Release -j "$jobs" \
  --target llama-bench llama-server >&2

mkdir -p "$bin"
for b in llama-bench llama-server; do
  cp "$dest/build/bin/$b" "$bin/$b.tmp"
  mv "$bin/$b.tmp" "$bin/$b"
done
echo "reference built in $bin" >&2
echo "$bin"
