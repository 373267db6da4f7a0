//! The vocabulary kind (`tokenizer.ggml.model`) and how a sequence is framed: llama.cpp's
//! per-kind defaults for BOS, EOS and the SentencePiece leading space, then the file's own
//! keys over them.

use super::pretokenize::PreConfig;
use super::vocab::Vocab;
use crate::error::EngineError;
use crate::gguf::{GgufFile, MetaValue};

/// How the vocabulary kind and the file's keys frame an encoded sequence.
#[derive(Debug)]
pub(super) struct Framing {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether encoding with special tokens adds BOS / EOS (only when the token exists).
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece: a `▁` before text that starts the input or follows a special token.
    pub add_space_prefix: bool,
}

impl Framing {
    /// The framing of a vocabulary of kind `kind`, with the pre-tokenizer of a byte-level BPE
    /// kind (`None` for SentencePiece); `BadModel` for kinds tokenfab does not implement
    /// (WordPiece, Unigram, RWKV).
    pub(super) fn from_gguf(
        g: &GgufFile,
        kind: &str,
        vocab: &Vocab,
    ) -> Result<(Framing, Option<PreConfig>), EngineError> {
        let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("");
        let in_range = |id: u32| ((id as usize) < vocab.tokens.len()).then_some(id);
        let (pre, mut bos, mut eos, mut add_bos, mut add_space_prefix) = match kind {
            "llama" => (None, in_range(1), in_range(2), true, true),
            "gpt2" | "gemma4" => {
                let cfg = PreConfig::for_name(if kind == "gemma4" { "gemma4" } else { pre_name });
                let (bos, eos) = if kind == "gemma4" {
                    (None, None)
                } else {
                    (in_range(11), in_range(11))
                };
                let bos = if cfg.no_bos { None } else { bos };
                let add_bos = cfg.add_bos;
                (Some(cfg), bos, eos, add_bos, false)
            }
            other => {
                return Err(EngineError::BadModel(format!(
                    "tokenizer model '{other}' is not supported (only 'gpt2' byte-level BPE and 'llama' SentencePiece)"
                )));
            }
        };
        let mut add_eos = false;

        let key_bool = |key: &str| {
            g.get(&format!("tokenizer.ggml.{key}"))
                .and_then(MetaValue::as_bool)
        };
        if let Some(id) = vocab.key_id(g, "bos_token_id") {
            bos = Some(id);
        }
        if let Some(id) = vocab.key_id(g, "eos_token_id") {
            eos = Some(id);
        }
        if let Some(b) = key_bool("add_space_prefix") {
            add_space_prefix = b;
        }
        if let Some(b) = key_bool("add_bos_token") {
            add_bos = b;
        }
        if let Some(b) = key_bool("add_eos_token") {
            add_eos = b;
        }
        if pre.as_ref().is_some_and(|c| c.gemma4) {
            add_bos = true;
        }
        if add_bos && bos.is_none() {
            tracing::warn!("vocabulary asks for a BOS token but has none; not adding one");
            add_bos = false;
        }
        if add_eos && eos.is_none() {
            tracing::warn!("vocabulary asks for an EOS token but has none; not adding one");
            add_eos = false;
        }
        let framing = Framing {
            bos,
            eos,
            add_bos,
            add_eos,
            add_space_prefix,
        };
        Ok((framing, pre))
    }
}
