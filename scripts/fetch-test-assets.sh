#!/usr/bin/env bash
# Fetches what the tokenizer and template tests read: the vocab-only GGUFs with their
# .inp/.out test vectors and the reference chat templates that llama-cpp-python's source
# distribution ships. Cached: a second run does nothing.
set -euo pipefail
dest="${TOKENFAB_TEST_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/test-assets}"
if [ -f "$dest/.complete" ]; then
  echo "test assets already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/models/*'
src="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models"
mkdir -p "$dest/templates"
cp "$src"/ggml-vocab-* "$dest"/
cp "$src"/templates/*.jinja "$dest"/templates/
touch "$dest/.complete"
echo "test assets in $dest"
