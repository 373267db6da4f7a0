//! `tokenfab models list` and `models inspect` on real files: every catalog entry this
//! machine has is one this build runs, and its stated architecture is the file's own; a
//! file tokenfab cannot run is described anyway, with the reason.
//!
//! Reads the test models' cache (scripts/test.sh fetches SmolLM2, Qwen2.5-Coder-0.5B and
//! gemma-3-270m there); header-only, so it is quick.

use std::path::PathBuf;
use std::process::Command;

use tokenfab_engine::gguf::GgufFile;
use tokenfab_models::{catalog, default_cache_dir};

fn tokenfab(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(args)
        .output()
        .expect("run tokenfab");
    assert!(
        out.status.success(),
        "tokenfab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("TOKENFAB_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir)
}

/// The models every test run has: a missing one is a failure with the command to fetch it.
const TEST_MODELS: [&str; 5] = [
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "google/gemma-3-270m",
    "sentence-transformers/all-MiniLM-L6-v2",
    "nomic-ai/nomic-embed-text-v1.5",
];

#[test]
fn every_cached_catalog_entry_runs_and_states_its_architecture() {
    let dir = cache_dir();
    let list = tokenfab(&["models", "list"]);
    for e in catalog() {
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(e.id))
            .unwrap_or_else(|| panic!("{} missing from models list:\n{list}", e.id));
        assert!(
            line.contains(e.architecture) && line.contains(e.format),
            "{line}"
        );
        let path = e.cache_path(&dir);
        if !e.is_cached(&dir) {
            assert!(
                !TEST_MODELS.contains(&e.id),
                "{} is not cached: run `cargo run --release -- models fetch {}`",
                e.id,
                e.id
            );
            continue;
        }
        if tokenfab_engine::encoder::supports_architecture(e.architecture) {
            let config = tokenfab_engine::encoder::Encoder::config_of(&path).unwrap();
            assert_eq!(config.arch, e.architecture, "{}", e.id);
        } else {
            let g = GgufFile::open(&path).unwrap();
            assert_eq!(g.architecture(), Some(e.architecture), "{}", e.id);
        }
        let runs = line.split_whitespace().nth(6);
        assert_eq!(runs, Some("yes"), "{} does not run here: {line}", e.id);
    }
}

#[test]
fn inspect_describes_a_model() {
    let e = catalog().iter().find(|e| e.id == TEST_MODELS[0]).unwrap();
    let path = e.cache_path(&cache_dir());
    let out = tokenfab(&["models", "inspect", path.to_str().unwrap()]);
    for want in [
        "architecture:  llama",
        "parameters:    134.5M",
        "context:       8192",
        "heads:         9 (kv 3)",
        "Q4_1 ×",
        "Q8_0 ×1",
        "chat template: yes",
        "supported:     yes",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
}

#[test]
fn inspect_says_why_a_file_does_not_run() {
    let vocab_only = tokenfab_testkit::test_assets_dir().join("ggml-vocab-llama-spm.gguf");
    let out = tokenfab(&["models", "inspect", vocab_only.to_str().unwrap()]);
    assert!(out.contains("weight types:  none (no tensors)"), "{out}");
    assert!(
        out.contains("supported:     no:") && out.contains("token_embd.weight is missing"),
        "{out}"
    );
    let other_arch = tokenfab_testkit::test_assets_dir().join("ggml-vocab-gpt-2.gguf");
    let out = tokenfab(&["models", "inspect", other_arch.to_str().unwrap()]);
    assert!(
        out.contains("architecture `gpt2` is not supported"),
        "{out}"
    );
}
