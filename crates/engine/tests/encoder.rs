//! The BERT encoder on real weights (all-MiniLM-L6-v2), against an independent
//! implementation: `python/bert_reference.py`, Hugging Face's `tokenizers` for the token
//! ids and a float64 numpy forward pass written from the paper for the vectors. Also the
//! published similarity of the model card's pair, and that packing several inputs into one
//! pass changes no input's vector.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use tokenfab_engine::encoder::{Encoder, Pooling, Segmented};
use tokenfab_testkit::cosine;

/// Fifty inputs (`data/sentences.json`, which llama.cpp's golden embeddings read too):
/// several languages and scripts, accents, CJK, emoji, numbers, punctuation runs, odd
/// whitespace, from one word to a few hundred tokens.
static SENTENCES: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| serde_json::from_str(include_str!("data/sentences.json")).unwrap());

/// Runs `python/bert_reference.py` with `args`, `input` on its standard input; returns
/// what it printed.
fn reference(args: &[&std::ffi::OsStr], input: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var("TOKENFAB_TEST_PYTHON").expect(
        "TOKENFAB_TEST_PYTHON is not set: run scripts/test.sh (it installs numpy and tokenizers in .venv)",
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/bert_reference.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed: {args:?}");
    if out.stdout.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn load() -> Encoder {
    let path = common::minilm_path();
    Encoder::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn encode(e: &Encoder, text: &str) -> Vec<u32> {
    e.tokenizer.encode(text, true, false)
}

#[test]
fn minilm_configuration_is_read() {
    let e = load();
    let c = &e.config;
    assert_eq!((c.width, c.layers, c.heads, c.ffn), (384, 6, 12, 1536));
    assert_eq!(c.pooling, Pooling::Mean);
    assert!(c.normalize);
    assert_eq!(
        c.context_length, 256,
        "sentence-transformers' max_seq_length"
    );
    // [CLS] hello world [SEP]
    assert_eq!(encode(&e, "Hello world"), [101, 7592, 2088, 102]);
}

#[test]
fn the_model_cards_pair_scores_as_published() {
    let e = load();
    let seqs: Vec<Vec<u32>> = SENTENCES[..2].iter().map(|s| encode(&e, s)).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let v = e.embed(&refs).unwrap();
    let c = cosine(&v[0], &v[1]);
    assert!((c - 0.755).abs() < 0.005, "cosine {c}");
    for x in &v {
        let norm = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalized: {norm}");
    }
}

/// Each input's vector is the same alone as inside a packed batch of different lengths
/// (no padding exists to leak in; what may differ is only the matrix kernels' blocking
/// over a different number of rows, within float rounding).
#[test]
fn packing_changes_no_vector() {
    let e = load();
    let seqs: Vec<Vec<u32>> = SENTENCES.iter().map(|s| encode(&e, s)).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let together = e.embed(&refs).unwrap();
    for (i, s) in refs.iter().enumerate().step_by(7) {
        let alone = &e.embed(&[s]).unwrap()[0];
        let diff = alone
            .iter()
            .zip(&together[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "input {i}: {diff}");
    }
}

#[test]
fn vectors_match_an_independent_implementation() {
    let e = load();
    let dir = common::minilm_path().parent().unwrap().to_owned();
    let reference = reference(
        &["embed".as_ref(), dir.as_os_str()],
        &serde_json::json!(*SENTENCES),
    );

    let seqs: Vec<Vec<u32>> = SENTENCES.iter().map(|s| encode(&e, s)).collect();
    for (i, (ours, theirs)) in seqs
        .iter()
        .zip(reference["ids"].as_array().unwrap())
        .enumerate()
    {
        let theirs: Vec<u32> = serde_json::from_value(theirs.clone()).unwrap();
        assert_eq!(ours, &theirs, "token ids of {:?} (input {i})", SENTENCES[i]);
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let ours = e.embed(&refs).unwrap();
    let (mut worst_cos, mut worst_diff) = (1.0f64, 0.0f32);
    for (i, (v, r)) in ours
        .iter()
        .zip(reference["embeddings"].as_array().unwrap())
        .enumerate()
    {
        let r: Vec<f32> = serde_json::from_value(r.clone()).unwrap();
        let c = cosine(v, &r);
        let diff = v
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            c >= 0.9999 && diff < 1e-4,
            "input {i} {:?}: cosine {c}, max diff {diff}",
            SENTENCES[i]
        );
        (worst_cos, worst_diff) = (worst_cos.min(c), worst_diff.max(diff));
    }
    eprintln!(
        "against the reference: lowest cosine {worst_cos:.9}, largest difference {worst_diff:e}"
    );
}

#[test]
fn inputs_the_model_cannot_hold_are_refused() {
    let e = load();
    let long = vec![1000u32; 257];
    let err = e.embed(&[&long]).unwrap_err().to_string();
    assert!(err.contains("257 tokens") && err.contains("256"), "{err}");
    assert!(e.embed(&[&[]]).unwrap_err().to_string().contains("empty"));
    let outside = [101u32, 40_000, 102];
    assert!(
        e.embed(&[&outside])
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
}

/// A cross-encoder (BERT with a classification head of one logit) against the reference,
/// on a seeded conformance file in Hugging Face's layout over all-MiniLM-L6-v2's real
/// vocabulary (random weights: it tests numerics and pair framing, it ranks nothing).
#[test]
fn a_cross_encoder_scores_pairs_as_the_reference_does() {
    let dir = tokenfab_testkit::temp_dir("cross-encoder");
    let tokenizer = common::minilm_path().with_file_name("tokenizer.json");
    reference(
        &[
            "make-reranker".as_ref(),
            dir.as_os_str(),
            tokenizer.as_os_str(),
        ],
        &serde_json::Value::Null,
    );
    let e = Encoder::load(&dir).unwrap();
    assert!(e.config.reranker);
    let pairs = [
        (
            "What is the capital of France?",
            "Paris is the capital and largest city of France.",
        ),
        (
            "What is the capital of France?",
            "Bananas are rich in potassium.",
        ),
        (
            "how do plants make food",
            "Photosynthesis converts light energy into chemical energy.",
        ),
        ("Wie spät ist es?", "Es ist halb acht am Morgen."),
        ("东京在哪里?", "東京は日本の首都です。"),
        ("a", "b"),
        ("Long documents", &SENTENCES[49][..400]),
    ];
    let want = reference(
        &["pairs".as_ref(), dir.as_os_str()],
        &serde_json::json!(pairs),
    );
    let framed: Vec<(Vec<u32>, Vec<u32>)> = pairs
        .iter()
        .map(|(q, d)| {
            let q = e.tokenizer.encode(q, false, false);
            let d = e.tokenizer.encode(d, false, false);
            e.pair(&q, &d)
        })
        .collect();
    for (i, (tokens, types)) in framed.iter().enumerate() {
        let ids: Vec<u32> = serde_json::from_value(want["ids"][i].clone()).unwrap();
        let tys: Vec<u32> = serde_json::from_value(want["types"][i].clone()).unwrap();
        assert_eq!((tokens, types), (&ids, &tys), "pair {i}");
    }
    let seqs: Vec<Segmented<'_>> = framed
        .iter()
        .map(|(tokens, types)| Segmented { tokens, types })
        .collect();
    let together = e.run(&seqs).unwrap();
    for (i, got) in together.iter().enumerate() {
        let want = want["scores"][i].as_f64().unwrap();
        assert!(
            (got[0] as f64 - want).abs() < 1e-5,
            "pair {i}: {} against {want}",
            got[0]
        );
        let alone = e.run(&seqs[i..=i]).unwrap();
        assert!((alone[0][0] - got[0]).abs() < 1e-6, "pair {i} alone");
    }
    // The scores are not all alike (random weights put them all low, but several-fold
    // apart): the pair, not a constant, decides them.
    let max = together
        .iter()
        .map(|s| s[0])
        .fold(f32::NEG_INFINITY, f32::max);
    let min = together.iter().map(|s| s[0]).fold(f32::INFINITY, f32::min);
    assert!(max > 2.0 * min, "{together:?}");
}
