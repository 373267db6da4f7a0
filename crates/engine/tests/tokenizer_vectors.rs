//! Proof that the tokenizer matches llama.cpp:
//! 1. llama.cpp's own conformance vectors (`ggml-vocab-NAME.gguf` + `.inp` / `.out`, run the
//!    way `tests/test-tokenizer-0.cpp` runs them: no BOS, special tokens not parsed);
//! 2. llama.cpp's tokenization of real prompts for the reference models
//!    (`tests/data/*.jsonl`), with BOS rules and chat special tokens, and the decoding of
//!    what the model generated.
//!
//! Assets come from `scripts/fetch-test-assets.sh`; a missing folder is a failure, not a skip,
//! so that a CI box without them cannot pass by accident.

use std::path::Path;
use std::time::Instant;

use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::template::{ChatTemplate, TemplateMessage};
use tokenfab_engine::tokenizer::Tokenizer;

mod common;
use common::{assets_dir, gemma_path, qwen_path, smollm_path};

/// Vocabularies that must be present and pass (the brief's minimum).
const REQUIRED: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "llama-spm",
    "deepseek-llm",
    "starcoder",
    "falcon",
    // WordPiece (BERT), the embedding models' vocabulary kind.
    "bert-bge",
];

fn load(path: &Path) -> Tokenizer {
    let g = GgufFile::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("tokenizer from {}: {e}", path.display()))
}

/// Parse `.inp` / `.out` exactly as test-tokenizer-0.cpp does.
fn read_vectors(inp: &Path, out: &Path) -> Vec<(String, Vec<u32>)> {
    let raw = std::fs::read_to_string(inp).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(i) => {
                inputs.push(raw[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                inputs.push(raw[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: input and output counts differ",
        inp.display()
    );
    inputs.into_iter().zip(outputs).collect()
}

/// Run one vocabulary's vectors; returns the failures as readable lines.
fn run_vocab(dir: &Path, name: &str) -> Vec<String> {
    let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
    let tok = load(&gguf);
    let vectors = read_vectors(
        &dir.join(format!("ggml-vocab-{name}.gguf.inp")),
        &dir.join(format!("ggml-vocab-{name}.gguf.out")),
    );
    let mut failures = Vec::new();
    for (text, want) in &vectors {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!(
                "{name}: {text:?}\n    want {want:?}\n    got  {got:?}"
            ));
        }
    }
    failures
}

#[test]
fn llama_cpp_conformance_vectors() {
    let dir = assets_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let f = e.ok()?.file_name().into_string().ok()?;
            f.strip_prefix("ggml-vocab-")?
                .strip_suffix(".gguf.inp")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    for r in REQUIRED {
        assert!(
            names.iter().any(|n| n == r),
            "required vocabulary {r} has no vectors in {}: rerun scripts/fetch-test-assets.sh",
            dir.display()
        );
    }
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for name in &names {
        let f = run_vocab(&dir, name);
        if f.is_empty() {
            passed.push(name.clone());
        }
        failures.extend(f);
    }
    eprintln!("vocabularies passing all vectors: {passed:?}");
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every line of a reference file: prompt tokens, the decoded completion, and for chat
/// lines the GGUF's own chat template rendering the messages exactly as llama.cpp did.
fn check_reference(model: &Path, data: &str) {
    let tok = load(model);
    let gguf = GgufFile::open(model).unwrap();
    let name = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_owned();
    // Base models (gemma-3-270m) have no template, and their lines are all raw text.
    let template = gguf
        .get_str("tokenizer.chat_template")
        .map(|src| ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id())).unwrap());
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(data);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = v["prompt"].as_str().unwrap();
        let want: Vec<u32> = v["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        if v["kind"] == "chat" {
            let messages: Vec<TemplateMessage> = v["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| TemplateMessage {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                    extra: Default::default(),
                })
                .collect();
            let rendered = template
                .as_ref()
                .expect("a chat line needs the model's chat template")
                .render(&messages, true, &Default::default())
                .unwrap();
            assert_eq!(rendered, prompt, "{data}: chat template rendering");
        }
        let got = tok.encode(prompt, true, true);
        assert_eq!(got, want, "{data}: prompt {prompt:?}");
        if let (Some(ids), Some(want_text)) = (
            v["completion_tokens"].as_array(),
            v["completion_text"].as_str(),
        ) {
            let ids: Vec<u32> = ids.iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(
                tok.decode(&ids, true),
                want_text,
                "{data}: completion of {prompt:?}"
            );
        }
        n += 1;
    }
    assert!(n > 0, "{data} is empty");
}

#[test]
fn smollm2_reference_prompts() {
    check_reference(&smollm_path(), "smollm2-135m-instruct-q4_1.jsonl");
}

#[test]
fn qwen_reference_prompts() {
    check_reference(&qwen_path(), "qwen2.5-coder-0.5b-instruct-q4_k_m.jsonl");
}

/// gemma3's SentencePiece vocabulary (262k pieces, no space prefix), BOS added.
#[test]
fn gemma_reference_prompts() {
    check_reference(&gemma_path(), "gemma-3-270m-q4_k_m.jsonl");
}

#[test]
fn smollm2_known_ids_and_specials() {
    let tok = load(&smollm_path());
    assert_eq!(tok.encode("Hello world", false, false), vec![19556, 905]);
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_eog(im_end));
    assert!(tok.token_bytes(im_end).is_empty());
    // Without parse_special the control text is ordinary text.
    assert_ne!(tok.encode("<|im_end|>", false, false), vec![im_end]);
    assert_eq!(tok.encode("<|im_end|>", false, true), vec![im_end]);
    assert_eq!(tok.decode(&[im_end], false), "<|im_end|>");
    assert_eq!(tok.decode(&[im_end], true), "");
}

/// Generated tokens arrive one at a time and may split a UTF-8 character; their bytes, in
/// order, must rebuild the text exactly.
#[test]
fn token_bytes_reassemble_chinese() {
    let text = "奥运会的传奇名将有哪些?";
    for path in [smollm_path(), qwen_path()] {
        let tok = load(&path);
        let ids = tok.encode(text, false, false);
        let mut bytes = Vec::new();
        let mut partial = false;
        for &id in &ids {
            let b = tok.token_bytes(id);
            partial |= std::str::from_utf8(b).is_err();
            bytes.extend_from_slice(b);
        }
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), text);
        assert_eq!(tok.decode(&ids, true), text);
        if path == smollm_path() {
            // SmolLM2's vocabulary is English-heavy: some tokens are partial characters.
            assert!(
                partial,
                "expected split UTF-8 sequences in SmolLM2's tokens"
            );
        }
    }
}

/// Load and encode speed: a 151k vocabulary builds in well under a second and a ~2,000-token
/// prompt encodes in well under 50 ms (release build; debug builds only report).
#[test]
fn speed() {
    let t0 = Instant::now();
    let tok = load(&qwen_path());
    let build = t0.elapsed();
    let unit = "The quick brown fox jumps over the lazy dog. 这是一个测试。 fn main() { println!(\"{}\", 42); }\n";
    let text = unit.repeat(80);
    let t1 = Instant::now();
    let ids = tok.encode(&text, true, true);
    let enc = t1.elapsed();
    eprintln!(
        "qwen vocab: build {:.1} ms; encode {} bytes -> {} tokens in {:.2} ms",
        build.as_secs_f64() * 1e3,
        text.len(),
        ids.len(),
        enc.as_secs_f64() * 1e3
    );
    assert!(ids.len() >= 2000);
    assert_eq!(tok.decode(&ids, true), text);
    if !cfg!(debug_assertions) {
        assert!(enc.as_millis() < 50, "encoding took {enc:?}");
        assert!(build.as_millis() < 1500, "building took {build:?}");
    }
}
