//! The vocabulary proper: token texts, scores and attributes by id, and the reverse map.

use std::collections::HashMap;

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
    pub(super) byte_tokens: [Option<u32>; 256],
}

impl Vocab {
    #[inline]
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    #[inline]
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }
}
