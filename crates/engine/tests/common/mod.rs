//! Where the engine's tests find their real files: the test models (fetched by
//! `tokenfab models fetch`) and the test assets (scripts/fetch-test-assets.sh). Missing
//! files fail the test with the command that provides them; nothing is skipped. `golden`
//! holds the comparison with llama.cpp's golden outputs that several tests share.

#![allow(dead_code)]

pub mod golden;

use std::path::PathBuf;

use tokenfab_testkit::cache_home;

/// The test-assets folder (`TOKENFAB_TEST_ASSETS` overrides).
pub fn assets_dir() -> PathBuf {
    let dir = tokenfab_testkit::test_assets_dir();
    assert!(
        dir.join("ggml-vocab-gpt-2.gguf").is_file(),
        "test assets not found in {}: run scripts/fetch-test-assets.sh (or set TOKENFAB_TEST_ASSETS)",
        dir.display()
    );
    dir
}

/// One file of the test assets.
pub fn asset(rel: &str) -> PathBuf {
    let p = assets_dir().join(rel);
    assert!(
        p.is_file(),
        "test asset {} not found: run scripts/fetch-test-assets.sh (or set TOKENFAB_TEST_ASSETS)",
        p.display()
    );
    p
}

/// A cached catalog model: `$env` if set, else the models cache layout.
fn model_path(env: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("TOKENFAB_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_home().join("tokenfab/models"))
            .join(rel)
    });
    assert!(
        p.is_file(),
        "test model {} not found: fetch it with `cargo run --release -- models fetch` (or set {env})",
        p.display()
    );
    p
}

/// SmolLM2-135M-Instruct Q4_1, the default model.
pub fn smollm_path() -> PathBuf {
    model_path(
        "TOKENFAB_TEST_MODEL",
        "HuggingFaceTB--SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the qwen2 architecture and K-quants.
pub fn qwen_path() -> PathBuf {
    model_path(
        "TOKENFAB_TEST_MODEL_QWEN",
        "Qwen--Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    )
}

/// gemma-3-270m Q4_K_M (a base model: no chat template), the gemma3 architecture.
pub fn gemma_path() -> PathBuf {
    model_path(
        "TOKENFAB_TEST_MODEL_GEMMA",
        "google--gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
    )
}

/// all-MiniLM-L6-v2's `model.safetensors` (its directory holds the tokenizer and the
/// sentence-transformers configuration): the BERT encoder.
pub fn minilm_path() -> PathBuf {
    model_path(
        "TOKENFAB_TEST_MINILM",
        "sentence-transformers--all-MiniLM-L6-v2/model.safetensors",
    )
}

/// nomic-embed-text-v1.5 F16 GGUF: the Nomic-BERT encoder.
pub fn nomic_path() -> PathBuf {
    model_path(
        "TOKENFAB_TEST_NOMIC",
        "nomic-ai--nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf",
    )
}
