#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches what the tests read (cached after the
# first run), requantizes the test models into every weight type the engine runs
# (scripts/requantize.sh, which builds llama.cpp's llama-quantize once), installs the Python `openai` package for the client tests, numpy and `tokenizers` for the encoder's reference, schemathesis for the API's generated tests and Playwright for the web console's browser test in .venv (with Debian's `chromium` when missing), and runs
# every test. Model-heavy tests run one at a time: two engines on two cores would only
# measure contention. The platform tests get a PostgreSQL and a Redis of their own
# (scripts/services.sh), installed from Debian's packages when missing; the /metrics test a
# Prometheus (Debian's package, installed when missing; the test starts and stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test assets (tokenizer vectors, reference templates)"
export TOKENFAB_TEST_ASSETS="${TOKENFAB_TEST_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenfab/test-assets}"
scripts/fetch-test-assets.sh

echo "== models (SmolLM2 is the default model; Qwen2.5-Coder-0.5B covers qwen2, gemma-3-270m gemma3)"
cargo build --release --locked
# `models fetch` prints the cached file's path; the engine's tests read the files there.
TOKENFAB_TEST_MODEL="$(cargo run -q --release --locked -- models fetch HuggingFaceTB/SmolLM2-135M-Instruct)"
TOKENFAB_TEST_MODEL_QWEN="$(cargo run -q --release --locked -- models fetch Qwen/Qwen2.5-Coder-0.5B-Instruct)"
TOKENFAB_TEST_MODEL_GEMMA="$(cargo run -q --release --locked -- models fetch google/gemma-3-270m)"
# all-MiniLM-L6-v2, the BERT embedding model (a Hugging Face directory).
TOKENFAB_TEST_MINILM="$(cargo run -q --release --locked -- models fetch sentence-transformers/all-MiniLM-L6-v2)"
# nomic-embed-text-v1.5, the Nomic-BERT encoder (a GGUF).
TOKENFAB_TEST_NOMIC="$(cargo run -q --release --locked -- models fetch nomic-ai/nomic-embed-text-v1.5)"
export TOKENFAB_TEST_MODEL TOKENFAB_TEST_MODEL_QWEN TOKENFAB_TEST_MODEL_GEMMA TOKENFAB_TEST_MINILM TOKENFAB_TEST_NOMIC
echo "$TOKENFAB_TEST_MODEL"
echo "$TOKENFAB_TEST_MODEL_QWEN"
echo "$TOKENFAB_TEST_MODEL_GEMMA"
echo "$TOKENFAB_TEST_MINILM"
echo "$TOKENFAB_TEST_NOMIC"

echo "== requantized real-weight files (every weight type; llama-quantize is built once, cached)"
# The last line is the folder; crates/engine/tests/requantized.rs reads the files there.
TOKENFAB_REQUANTIZED="$(scripts/requantize.sh | tail -n 1)"
export TOKENFAB_REQUANTIZED
echo "$TOKENFAB_REQUANTIZED"

echo "== Python: the client for the seed programs, and the encoder's reference (numpy, tokenizers)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check 'openai>=1.40,<3' \
  'numpy>=1.26,<3' 'tokenizers>=0.19,<1' 'openapi-spec-validator>=0.7,<1' 'schemathesis>=4,<5' \
  'playwright>=1.40,<2'
export TOKENFAB_TEST_PYTHON="$PWD/.venv/bin/python"

echo "== Chromium for the web console's browser test (Debian's package; Playwright drives it)"
# Playwright is told to use this browser, never to download its own.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
export TOKENFAB_TEST_CHROMIUM=/usr/bin/chromium

echo "== PostgreSQL and Redis for the platform tests (throwaway, loopback)"
# shellcheck source=scripts/services.sh
. scripts/services.sh
services_start

echo "== Prometheus for the /metrics test (Debian's package; the test starts its own on loopback)"
if ! command -v prometheus >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
TOKENFAB_TEST_PROMETHEUS="$(command -v prometheus)"
export TOKENFAB_TEST_PROMETHEUS

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
# The opt-in https client for upstreams (the `tls` feature).
cargo clippy --release --locked -p tokenfab-upstream --features tls --all-targets -- -D warnings

echo "== supply chain (cargo-deny: licences, sources; advisories where RustSec is reachable)"
scripts/deny.sh

echo "== tests"
cargo test --release --locked --workspace -- --test-threads=1
# The vendored minijinja's unit tests, with those of our patch to it (vendor/README.md).
cargo test --release --locked --manifest-path vendor/minijinja/Cargo.toml --target-dir target/vendor \
  --features serde,json,fuel --lib
cargo test --release --locked -p tokenfab-upstream --features tls -- --test-threads=1
