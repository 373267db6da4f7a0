//! Hostile text through real vocabularies (llama.cpp's conformance files, from
//! `scripts/fetch-test-assets.sh`): one-megabyte "words", runs of combining marks,
//! controls, emoji sequences, the replacement character and noncharacters. No panic, every
//! id inside the vocabulary, and for the byte-level BPE vocabularies the round trip gives
//! the text back exactly. (Invalid UTF-8 never reaches the tokenizer as text: request
//! bodies are JSON, whose lone surrogates serde refuses; byte tokens decoded alone are the
//! fuzz target's and `detokenize`'s business.)

use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::tokenizer::Tokenizer;

mod common;
use common::assets_dir;

/// Byte-level BPE vocabularies: encoding loses nothing.
const LOSSLESS: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "deepseek-llm",
    "starcoder",
    "falcon",
];
/// SentencePiece and WordPiece (which lowercases and strips accents): no round trip.
const LOSSY: &[&str] = &["llama-spm", "bert-bge"];

fn load(name: &str) -> Tokenizer {
    let path = assets_dir().join(format!("ggml-vocab-{name}.gguf"));
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("tokenizer {name}: {e}"))
}

/// Deterministic pseudo-random lowercase letters: one word, no spaces.
fn letters(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("1 MB word of random letters", letters(1 << 20)),
        ("1 MB of one letter", "a".repeat(1 << 20)),
        ("1 MB of digits", "7".repeat(1 << 20)),
        (
            "combining marks",
            format!("e{}", "\u{301}\u{302}\u{303}\u{308}".repeat(25_000)),
        ),
        ("zero-width joiners", "👩\u{200d}".repeat(20_000)),
        (
            "controls and NUL",
            (0u8..32).map(char::from).collect::<String>().repeat(1000),
        ),
        (
            "replacement and noncharacters",
            "\u{fffd}\u{fffe}\u{ffff}\u{10ffff}\u{e000}".repeat(5000),
        ),
        ("one long mixed-script word", "abcй中文ثم🙂".repeat(20_000)),
        ("whitespace runs", " \t\n\r\u{a0}\u{3000}".repeat(50_000)),
    ]
}

#[test]
fn byte_level_vocabularies_round_trip_hostile_text() {
    for name in LOSSLESS {
        let tok = load(name);
        for (what, text) in hostile() {
            let ids = tok.encode(&text, false, false);
            assert!(
                ids.iter().all(|&i| (i as usize) < tok.vocab_size()),
                "{name}, {what}: an id outside the vocabulary"
            );
            let back = tok.decode(&ids, false);
            if *name == "falcon" && what == "controls and NUL" {
                // Falcon's byte alphabet lacks most C0 controls (no `ă` for byte 3, …):
                // they are dropped, as llama.cpp's BPE drops a byte without a token. What
                // comes back is the text without them, never other characters.
                let mut sent = text.chars();
                assert!(
                    back.chars().all(|c| sent.any(|t| t == c)),
                    "{name}: {back:?}"
                );
                continue;
            }
            if back != text {
                let at = back.chars().zip(text.chars()).position(|(a, b)| a != b);
                let at = at.unwrap_or(back.chars().count().min(text.chars().count()));
                let near = |s: &str| {
                    s.chars()
                        .skip(at.saturating_sub(3))
                        .take(8)
                        .collect::<String>()
                };
                panic!(
                    "{name}, {what}: round trip differs at char {at}: {:?} for {:?} ({} chars back, {} sent; ids: {:?})",
                    near(&back),
                    near(&text),
                    back.chars().count(),
                    text.chars().count(),
                    &ids[..ids.len().min(12)]
                );
            }
        }
    }
}

#[test]
fn other_vocabularies_take_hostile_text() {
    for name in LOSSY {
        let tok = load(name);
        for (what, text) in hostile() {
            let ids = tok.encode(&text, true, true);
            assert!(
                ids.iter().all(|&i| (i as usize) < tok.vocab_size()),
                "{name}, {what}: an id outside the vocabulary"
            );
            let _ = tok.decode(&ids, true);
        }
    }
}
