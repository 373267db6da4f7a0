#!/usr/bin/env bash
# Sourced, not run: the llama.cpp source and cmake that bench/build-reference.sh and
# scripts/requantize.sh both build from, so the reference engine and the quantizer that
# makes the test files are one version. Defines:
#   reference_version      the llama-cpp-python release whose vendored llama.cpp is used
#   reference_cmake DEST   prints a cmake binary (the system's, else a private venv in DEST)
#   reference_source DEST  makes sure DEST/src holds the source; prints that directory
# Both cache what they fetch under DEST: a second call does nothing.

reference_version=0.3.36

reference_cmake() {
  local dest=$1 cmake_bin
  cmake_bin=$(command -v cmake || true)
  if [ -z "$cmake_bin" ]; then
    if [ ! -x "$dest/cmake-venv/bin/cmake" ]; then
      echo "== cmake not found: installing it into $dest/cmake-venv" >&2
      python3 -m venv "$dest/cmake-venv"
      "$dest/cmake-venv/bin/python" -m pip install --quiet --disable-pip-version-check 'cmake>=3.25,<5'
    fi
    cmake_bin="$dest/cmake-venv/bin/cmake"
  fi
  echo "$cmake_bin"
}

# The sdist only (`--no-binary llama-cpp-python`, not `:all:`, which would try to build
# cmake itself from source as a build dependency).
reference_source() {
  local dest=$1 src tmp
  src="$dest/src"
  if [ ! -f "$src/CMakeLists.txt" ]; then
    mkdir -p "$dest"
    tmp=$(mktemp -d)
    echo "== fetching llama-cpp-python $reference_version's source distribution" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python "llama-cpp-python==$reference_version" -d "$tmp"
    tar xzf "$tmp/llama_cpp_python-$reference_version.tar.gz" -C "$tmp" \
      "llama_cpp_python-$reference_version/vendor/llama.cpp"
    rm -rf "$src"
    mv "$tmp/llama_cpp_python-$reference_version/vendor/llama.cpp" "$src"
    rm -rf "$tmp"
  fi
  echo "$src"
}
