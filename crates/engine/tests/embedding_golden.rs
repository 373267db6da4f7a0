//! Embeddings against llama.cpp's on the same files (`tests/data/embeddings/`, written by
//! `scripts/embedding_golden.py` from the reference `llama-server --embedding`):
//! nomic-embed-text-v1.5 (Nomic-BERT, F16, mean pooling) over the fifty inputs of the
//! encoder tests, and chat models used as embedders (Qwen2.5-Coder-0.5B pooled from its
//! last token, SmolLM2 by the mean). The token ids must be llama.cpp's exactly; the vectors
//! within the stated tolerances. Also: a vector does not depend on what else shares its
//! pass.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tokenfab_engine::encoder::{Encoder, Pooling};
use tokenfab_testkit::cosine;

struct Golden {
    pooling: String,
    items: Vec<(String, Vec<u32>, Vec<f32>)>,
}

fn golden(name: &str) -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/embeddings")
        .join(name);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let items = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(it["embedding"].as_str().unwrap())
                .unwrap();
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let ids = serde_json::from_value(it["ids"].clone()).unwrap();
            (it["input"].as_str().unwrap().to_owned(), ids, v)
        })
        .collect();
    Golden {
        pooling: doc["pooling"].as_str().unwrap().to_owned(),
        items,
    }
}

/// How far two vectors of one input are apart: (cosine, largest difference).
fn distance(a: &[f32], b: &[f32]) -> (f64, f32) {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    (cosine(a, b), diff)
}

fn load(path: PathBuf) -> Encoder {
    Encoder::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks `e` against `name`'s golden vectors: ids equal, every vector within `min_cos`
/// and `max_diff` of llama.cpp's, all inputs in one pass; and alone as in the pass.
fn check(e: &Encoder, name: &str, min_cos: f64, max_diff: f32) {
    let g = golden(name);
    assert_eq!(e.config.pooling, Pooling::parse(&g.pooling).unwrap());
    let seqs: Vec<Vec<u32>> = g
        .items
        .iter()
        .map(|(text, _, _)| e.tokenizer.encode(text, true, false))
        .collect();
    for ((text, ids, _), ours) in g.items.iter().zip(&seqs) {
        assert_eq!(ours, ids, "token ids of {text:?}");
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let ours = e.embed(&refs).unwrap();
    let (mut worst_cos, mut worst_diff) = (1.0f64, 0.0f32);
    for ((text, _, theirs), v) in g.items.iter().zip(&ours) {
        let (c, diff) = distance(v, theirs);
        assert!(
            c >= min_cos && diff <= max_diff,
            "{text:?}: cosine {c}, largest difference {diff}"
        );
        (worst_cos, worst_diff) = (worst_cos.min(c), worst_diff.max(diff));
    }
    // A decoder's vectors of different sentences can be close (0.97 for the model card's
    // pair): each of ours must still be nearest to llama.cpp's of the same input.
    for (i, v) in ours.iter().enumerate() {
        let own = cosine(v, &g.items[i].2);
        for (j, (text, _, other)) in g.items.iter().enumerate() {
            assert!(
                j == i || cosine(v, other) < own,
                "input {i} is nearer llama.cpp's vector of {text:?}"
            );
        }
    }
    eprintln!(
        "{name}: {} inputs, lowest cosine {worst_cos:.7}, largest difference {worst_diff:e}",
        ours.len()
    );
    // Alone or in the packed pass: the same vector, within float rounding.
    for (i, s) in refs.iter().enumerate().step_by(5) {
        let alone = &e.embed(&[s]).unwrap()[0];
        let (_, diff) = distance(alone, &ours[i]);
        assert!(diff < 1e-5, "input {i} alone differs by {diff}");
    }
}

#[test]
fn nomic_embed_matches_llama_cpp() {
    let e = load(common::nomic_path());
    let c = &e.config;
    assert_eq!(
        (c.arch.as_str(), c.width, c.layers),
        ("nomic-bert", 768, 12)
    );
    assert_eq!(c.context_length, 2048);
    check(&e, "nomic-embed-text-v1.5.f16.json", 0.9999, 1e-3);
}

/// A chat model's last token's final hidden state as its embedding (Qwen3-Embedding's
/// pooling) against llama.cpp's `--pooling last` on the same Q4_K_M file: both quantize
/// activations to 8 bits for the products, so they agree closely, not to the bit (the
/// lowest cosine is 0.9976, where the model card's two sentences are 0.974 apart: each
/// vector must also be nearest its own input's reference).
#[test]
fn a_decoder_pooled_from_its_last_token_matches_llama_cpp() {
    let e = load(common::qwen_path());
    assert_eq!(
        e.config.pooling,
        Pooling::Last,
        "a decoder's default pooling"
    );
    check(
        &e,
        "qwen2.5-coder-0.5b-instruct-q4_k_m.last.json",
        0.995,
        0.05,
    );
}

#[test]
fn a_decoder_pooled_by_the_mean_matches_llama_cpp() {
    let mut e = load(common::smollm_path());
    e.config.pooling = Pooling::Mean;
    check(&e, "smollm2-135m-instruct.q4_1.mean.json", 0.999, 0.05);
}
