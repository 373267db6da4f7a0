//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept here so that the
//! saved corpus and every crash found run as ordinary tests on stable: `fuzz/corpus/<target>`
//! and `fuzz/regressions/<target>` are replayed by this module's tests.
//!
//! Each body takes arbitrary bytes and must return without panicking, within bounded time
//! and memory, whatever they hold; where a property holds (a tokenizer round trip), it
//! asserts it.

use std::path::Path;

use crate::gguf::GgufFile;
use crate::model::Model;
use crate::template::{ChatTemplate, TemplateMessage};
use crate::tokenizer::Tokenizer;

/// A GGUF file from untrusted bytes, taken as far as loading goes: the header, then the
/// tokenizer, the weights and the chat template its metadata describe.
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for t in &g.tensors {
        let _ = g.tensor_data(t);
    }
    let tokenizer = Tokenizer::from_gguf(&g);
    let _ = Model::load(&g);
    if let (Ok(tok), Some(src)) = (tokenizer, g.get_str("tokenizer.chat_template")) {
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("");
        let _ = ChatTemplate::new(src, text(tok.bos_id()), text(tok.eos_id()));
    }
}

/// A template source, then (after the first NUL byte) a user message: compiled with the
/// budgets real requests get, and rendered.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, content) = text.split_once('\0').unwrap_or((&text, "Hello"));
    let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let messages = [
        TemplateMessage {
            role: "system".into(),
            content: "Be brief.".into(),
            extra: Default::default(),
        },
        TemplateMessage {
            role: "user".into(),
            content: content.into(),
            extra: Default::default(),
        },
    ];
    let _ = t.render(&messages, true, &Default::default());
}

/// The vocabulary the tokenizer target runs against: `$TOKENFAB_FUZZ_VOCAB`, else Qwen2's
/// byte-level BPE vocabulary from the test assets.
pub fn load_vocab() -> Tokenizer {
    let path = std::env::var_os("TOKENFAB_FUZZ_VOCAB")
        .map(Into::into)
        .unwrap_or_else(|| assets_dir().join("ggml-vocab-qwen2.gguf"));
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("fuzz vocabulary: {e}"));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("fuzz vocabulary: {e}"))
}

/// The test-assets folder without the testkit (a dev-dependency the fuzz crate lacks).
fn assets_dir() -> std::path::PathBuf {
    std::env::var_os("TOKENFAB_TEST_ASSETS")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(Into::into)
                .unwrap_or_else(|| {
                    Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("tokenfab/test-assets")
        })
}

/// Arbitrary bytes as text (lossily) through encode and decode, which must give the text
/// back; and the same bytes as token ids, in range or not, through decode. The first byte's
/// low bit picks whether control-token texts are parsed (the chat prompt's mode, which adds
/// BOS/EOS too) or left as text: one encode a run, the costly part, rather than both.
pub fn tokenizer(tok: &Tokenizer, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let _ = tok.encode(&text, true, true);
    } else {
        let ids = tok.encode(&text, false, false);
        assert_eq!(tok.decode(&ids, false), text, "round trip of {text:?}");
    }
    let ids: Vec<u32> = data
        .chunks(4)
        .map(|c| {
            c.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) % (tok.vocab_size() as u32 + 16)
        })
        .collect();
    let _ = tok.decode(&ids, false);
    let _ = tok.decode(&ids, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file saved for `target`: the seed corpus and the crashes found.
    fn saved(target: &str) -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut inputs = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                inputs.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
        inputs
    }

    #[test]
    fn gguf_corpus() {
        let inputs = saved("gguf");
        assert!(!inputs.is_empty(), "no gguf corpus");
        inputs.iter().for_each(|i| gguf(i));
    }

    #[test]
    fn template_corpus() {
        let inputs = saved("template");
        assert!(!inputs.is_empty(), "no template corpus");
        inputs.iter().for_each(|i| template(i));
    }

    #[test]
    fn tokenizer_corpus() {
        let tok = load_vocab();
        let inputs = saved("tokenizer");
        assert!(!inputs.is_empty(), "no tokenizer corpus");
        inputs.iter().for_each(|i| tokenizer(&tok, i));
    }
}
