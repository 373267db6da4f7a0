//! The vocabulary proper: token texts, scores and attributes by id, the reverse map and the
//! byte tokens, read from the file's `tokenizer.ggml.*` arrays.

use std::collections::HashMap;

use crate::error::EngineError;
use crate::gguf::{GgufFile, MetaValue};

// Token attributes (llama.cpp's `llama_token_attr`, reduced to what we use).
pub(super) const ATTR_UNDEFINED: u16 = 0;
pub(super) const ATTR_UNKNOWN: u16 = 1 << 0;
pub(super) const ATTR_UNUSED: u16 = 1 << 1;
pub(super) const ATTR_NORMAL: u16 = 1 << 2;
pub(super) const ATTR_CONTROL: u16 = 1 << 3;
pub(super) const ATTR_USER_DEFINED: u16 = 1 << 4;
pub(super) const ATTR_BYTE: u16 = 1 << 5;
pub(super) const ATTR_LSTRIP: u16 = 1 << 6;
pub(super) const ATTR_RSTRIP: u16 = 1 << 7;

/// The hasher of the vocabulary maps, which are probed on every symbol pair while encoding:
/// foldhash (already in the build, through serde_json) rather than SipHash, whose flood
/// resistance buys nothing for a table built from the model file. Its fixed seed keeps
/// every run's tables alike. Chosen by measuring encode speed against rustc-hash and the
/// hand-written FxHash it replaces (equal or faster on every vocabulary tried).
pub(crate) type VocabHash = foldhash::fast::FixedState;

/// The vocabulary proper: texts, scores and attributes by id, and the reverse map.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub text_to_id: HashMap<String, u32, VocabHash>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// SentencePiece byte fallback: `<0xXX>`, else the byte itself as a one-char token.
    byte_tokens: [Option<u32>; 256],
}

/// A malformed vocabulary.
pub(super) fn meta_err(what: &str) -> EngineError {
    EngineError::BadModel(format!("GGUF vocabulary: {what}"))
}

impl Vocab {
    /// Reads the token texts, scores and types of `g` (`tokenizer.ggml.tokens`, `.scores`,
    /// `.token_type`; no scores are zeros, no types normal tokens). As in llama.cpp an empty
    /// text becomes `[EMPTY_<id>]`, and a text listed twice maps to its first id.
    pub(super) fn from_gguf(g: &GgufFile) -> Result<Vocab, EngineError> {
        let token_vals = g
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| meta_err("missing tokenizer.ggml.tokens"))?;
        let n = token_vals.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(meta_err("empty or oversized token list"));
        }
        let mut tokens = Vec::with_capacity(n);
        let mut text_to_id: HashMap<String, u32, VocabHash> =
            HashMap::with_capacity_and_hasher(n, VocabHash::default());
        for (i, v) in token_vals.iter().enumerate() {
            let mut t = v
                .as_str()
                .ok_or_else(|| meta_err("tokenizer.ggml.tokens holds a non-string"))?
                .to_owned();
            if t.is_empty() {
                t = format!("[EMPTY_{i}]");
            }
            if text_to_id.contains_key(&t) {
                tracing::warn!("duplicate token {t:?} at id {i} in vocabulary; the first id wins");
            } else {
                text_to_id.insert(t.clone(), i as u32);
            }
            tokens.push(t);
        }
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(MetaValue::as_array) {
            Some(a) => {
                if a.len() < n {
                    return Err(meta_err("fewer scores than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect()
            }
            None => vec![0.0; n],
        };
        let attrs: Vec<u16> = match g
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            Some(a) => {
                if a.len() < n {
                    return Err(meta_err("fewer token types than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| match v.as_i64() {
                        Some(1) => ATTR_NORMAL,
                        Some(2) => ATTR_UNKNOWN,
                        Some(3) => ATTR_CONTROL,
                        Some(4) => ATTR_USER_DEFINED,
                        Some(5) => ATTR_UNUSED,
                        Some(6) => ATTR_BYTE,
                        _ => ATTR_UNDEFINED,
                    })
                    .collect()
            }
            None => vec![ATTR_NORMAL; n],
        };
        let byte_tokens = byte_tokens(&text_to_id);
        Ok(Vocab {
            tokens,
            text_to_id,
            scores,
            attrs,
            byte_tokens,
        })
    }

    /// A vocabulary of these texts and attributes by id (no scores), for a tokenizer read
    /// from elsewhere than a GGUF file; a text listed twice maps to its first id.
    pub(super) fn from_parts(tokens: Vec<String>, attrs: Vec<u16>) -> Vocab {
        let mut text_to_id: HashMap<String, u32, VocabHash> =
            HashMap::with_capacity_and_hasher(tokens.len(), VocabHash::default());
        for (i, t) in tokens.iter().enumerate() {
            text_to_id.entry(t.clone()).or_insert(i as u32);
        }
        let byte_tokens = byte_tokens(&text_to_id);
        Vocab {
            scores: vec![0.0; tokens.len()],
            tokens,
            text_to_id,
            attrs,
            byte_tokens,
        }
    }

    /// The id that the key `tokenizer.ggml.<key>` names, if the file has it; an id outside
    /// the vocabulary is ignored, with a warning.
    pub(super) fn key_id(&self, g: &GgufFile, key: &str) -> Option<u32> {
        let v = g.get_u64(&format!("tokenizer.ggml.{key}"))?;
        if (v as usize) < self.tokens.len() {
            Some(v as u32)
        } else {
            tracing::warn!("tokenizer.ggml.{key} = {v} is outside the vocabulary; ignored");
            None
        }
    }

    #[inline]
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    #[inline]
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }
}

/// Each byte's fallback token: `<0xXX>`, else the byte itself as a one-character token.
fn byte_tokens(text_to_id: &HashMap<String, u32, VocabHash>) -> [Option<u32>; 256] {
    let mut byte_tokens = [None; 256];
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        *slot = text_to_id
            .get(format!("<0x{b:02X}>").as_str())
            .copied()
            .or_else(|| {
                std::str::from_utf8(&[b as u8])
                    .ok()
                    .and_then(|s| text_to_id.get(s).copied())
            });
    }
    byte_tokens
}
