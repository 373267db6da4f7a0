//! The vocabulary kind (`tokenizer.ggml.model`) and how a sequence is framed: llama.cpp's
//! per-kind defaults for BOS, EOS and the SentencePiece leading space, then the file's own
//! keys over them. WordPiece (BERT) frames a sequence as `[CLS] … [SEP]`: BOS is its
//! `[CLS]` (101 unless the file says otherwise) and EOS its separator.

use super::pretokenize::PreConfig;
use super::vocab::Vocab;
use super::wordpiece::Strip;
use crate::error::EngineError;
use crate::gguf::{GgufFile, MetaValue};

/// The vocabulary kinds tokenfab encodes, with what each needs from the file.
#[derive(Debug)]
pub(super) enum Kind {
    /// Byte-level BPE with its pre-tokenizer.
    Bpe(PreConfig),
    /// SentencePiece BPE.
    Spm,
    /// WordPiece, with whether it lowercases and strips accents and its unknown token.
    WordPiece {
        lowercase: bool,
        strip: Strip,
        unk: Option<u32>,
    },
}

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
    /// The framing of a vocabulary of kind `kind`, with what the kind's encoder needs;
    /// `BadModel` for kinds tokenfab does not implement (Unigram, RWKV).
    pub(super) fn from_gguf(
        g: &GgufFile,
        kind: &str,
        vocab: &Vocab,
    ) -> Result<(Framing, Kind), EngineError> {
        let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("");
        let in_range = |id: u32| ((id as usize) < vocab.tokens.len()).then_some(id);
        let key_bool = |key: &str| {
            g.get(&format!("tokenizer.ggml.{key}"))
                .and_then(MetaValue::as_bool)
        };
        let mut add_eos = false;
        let (encoder, mut bos, mut eos, mut add_bos, mut add_space_prefix) = match kind {
            "llama" => (Kind::Spm, in_range(1), in_range(2), true, true),
            "gpt2" | "gemma4" => {
                let cfg = PreConfig::for_name(if kind == "gemma4" { "gemma4" } else { pre_name });
                let (bos, eos) = if kind == "gemma4" {
                    (None, None)
                } else {
                    (in_range(11), in_range(11))
                };
                let bos = if cfg.no_bos { None } else { bos };
                let add_bos = cfg.add_bos;
                (Kind::Bpe(cfg), bos, eos, add_bos, false)
            }
            "bert" => {
                // llama.cpp's BertNormalizer options: lowercase unless the file says not,
                // accents stripped when lowercasing unless it says otherwise.
                let lowercase = key_bool("normalizer.lowercase").unwrap_or(true);
                let strip = match key_bool("normalizer.strip_accents").unwrap_or(lowercase) {
                    true => Strip::Marks,
                    false => Strip::Nothing,
                };
                let unk = vocab.key_id(g, "unknown_token_id").or(in_range(100));
                let sep = vocab.key_id(g, "seperator_token_id").or(in_range(102));
                add_eos = true;
                let wp = Kind::WordPiece {
                    lowercase,
                    strip,
                    unk,
                };
                (wp, in_range(101), sep, true, false)
            }
            other => {
                return Err(EngineError::BadModel(format!(
                    "tokenizer model '{other}' is not supported (only 'gpt2' byte-level BPE, 'llama' SentencePiece and 'bert' WordPiece)"
                )));
            }
        };
        let wordpiece = matches!(encoder, Kind::WordPiece { .. });
        if let Some(id) = vocab.key_id(g, "bos_token_id") {
            bos = Some(id);
        }
        // WordPiece ends a sequence with its separator, whatever the EOS key says.
        if let Some(id) = vocab.key_id(g, "eos_token_id").filter(|_| !wordpiece) {
            eos = Some(id);
        }
        if let Some(b) = key_bool("add_space_prefix") {
            add_space_prefix = b;
        }
        // llama.cpp frames every WordPiece sequence, whatever these keys say.
        if let Some(b) = key_bool("add_bos_token").filter(|_| !wordpiece) {
            add_bos = b;
        }
        if let Some(b) = key_bool("add_eos_token").filter(|_| !wordpiece) {
            add_eos = b;
        }
        if matches!(&encoder, Kind::Bpe(c) if c.gemma4) {
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
        Ok((framing, encoder))
    }
}
