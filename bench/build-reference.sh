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

version=0.3.36
dest="${TOKENFAB_REFERENCE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/llama.cpp-$version}"
bin="$dest/bin"
jobs="${TOKENFAB_REFERENCE_JOBS:-2}"

if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-server" ]; then
  echo "reference already built in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$dest"

# cmake: the system's if it has one, else a private venv in the cache (no root needed and
# nothing installed into the user's Python).
cmake_bin=$(command -v cmake || true)
if [ -z "$cmake_bin" ]; then
  if [ ! -x "$dest/cmake-venv/bin/cmake" ]; then
    echo "== cmake not found: installing it into $dest/cmake-venv" >&2
    python3 -m venv "$dest/cmake-venv"
    "$dest/cmake-venv/bin/python" -m pip install --quiet --disable-pip-version-check 'cmake>=3.25,<5'
  fi
  cmake_bin="$dest/cmake-venv/bin/cmake"
fi

# The source: the sdist only (`--no-binary llama-cpp-python`, not `:all:`, which would
# try to build cmake itself from source as a build dependency).
src="$dest/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "== fetching llama-cpp-python $version's source distribution" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$tmp"
  tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp" \
    "llama_cpp_python-$version/vendor/llama.cpp"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$src"
fi

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
