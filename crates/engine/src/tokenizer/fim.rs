//! Fill-in-the-middle tokens: the prefix, suffix and middle markers a code model was
//! trained with, found as llama.cpp finds them (`llama-vocab.cpp`): the GGUF's own keys
//! first, then the vocabulary's known spellings of each marker.

use crate::gguf::GgufFile;

use super::vocab::Vocab;

/// A model's fill-in-the-middle markers. A FIM prompt is
/// `prefix-marker PREFIX suffix-marker SUFFIX middle-marker`, and the model writes the middle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fim {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
}

/// Each marker's metadata keys (llama.cpp's current and older names) and the vocabulary
/// spellings llama.cpp recognises (Qwen, StarCoder, Granite, DeepSeek, CodeLlama, GLM,
/// Falcon).
const MARKERS: [(&[&str], &[&str]); 3] = [
    (
        &[
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        ],
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.suffix_token_id",
        ],
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.middle_token_id",
        ],
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
];

impl Fim {
    /// The markers of `g`'s vocabulary, or `None` unless all three exist.
    pub(super) fn from_gguf(g: &GgufFile, vocab: &Vocab) -> Option<Fim> {
        let n = vocab.tokens.len() as u64;
        let find = |(keys, spellings): (&[&str], &[&str])| {
            keys.iter()
                .filter_map(|k| g.get_u64(k))
                .find(|&id| id < n)
                .map(|id| id as u32)
                .or_else(|| spellings.iter().find_map(|t| vocab.id_of(t)))
        };
        let [prefix, suffix, middle] = MARKERS.map(find);
        Some(Fim {
            prefix: prefix?,
            suffix: suffix?,
            middle: middle?,
        })
    }
}
