#!/usr/bin/env bash
# The embedding reference: sentence-transformers in PyTorch on CPU, in a virtual environment
# of its own (PyTorch and its libraries are a few GB; CI never calls anything under bench/).
# Cached: when the environment imports both, it does nothing. Prints the environment's
# folder on its last line.
set -euo pipefail

dest="${TOKENFAB_ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/st-venv}"
if [ -x "$dest/bin/python" ] && "$dest/bin/python" -c 'import torch, sentence_transformers' 2>/dev/null; then
  echo "$dest"
  exit 0
fi
echo "== installing torch and sentence-transformers into $dest (a few GB, once)" >&2
python3 -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --disable-pip-version-check \
  'torch==2.15.0' 'sentence-transformers==6.3.0' >&2
echo "$dest"
