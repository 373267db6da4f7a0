//! A Hugging Face `tokenizer.json` of the WordPiece kind (BERT and its descendants: BGE,
//! E5, GTE, MiniLM), read into the same [`Tokenizer`] a GGUF vocabulary gives.
//!
//! The vocabulary is brought to llama.cpp's spelling (`▁` before a word's first piece,
//! continuations bare; see `wordpiece.rs`), the normalizer's options are read from its
//! `BertNormalizer`, and the framing from the post-processor's `[CLS] … [SEP]` template.
//! Other kinds (byte-level BPE, Unigram) are refused by name: their GGUF files are what
//! tokenfab loads for them.

use serde_json::Value;

use super::framing::Framing;
use super::special::Specials;
use super::vocab::{ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, Vocab};
use super::wordpiece::{Strip, WORD_START, WordPiece};
use super::{Model, Tokenizer};
use crate::error::EngineError;

fn bad(what: impl std::fmt::Display) -> EngineError {
    EngineError::BadModel(format!("tokenizer.json: {what}"))
}

impl Tokenizer {
    /// The tokenizer of a Hugging Face `tokenizer.json` (its text). Its padding and
    /// truncation settings are not the tokenizer's business here: the engine packs
    /// sequences without padding, and a request longer than the model is refused or
    /// truncated by the caller.
    pub fn from_hf_json(json: &str) -> Result<Tokenizer, EngineError> {
        let root: Value = serde_json::from_str(json).map_err(bad)?;
        let model = &root["model"];
        let kind = model["type"].as_str().unwrap_or("");
        if kind != "WordPiece" {
            return Err(bad(format!(
                "model type `{kind}` is not supported from tokenizer.json (only WordPiece; \
                 use the model's GGUF file for BPE and SentencePiece vocabularies)"
            )));
        }
        let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("##");
        let pieces = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("model.vocab is not a map"))?;
        let n = pieces
            .values()
            .filter_map(Value::as_u64)
            .max()
            .map_or(0, |m| m as usize + 1);
        if n == 0 || n != pieces.len() || n > u32::MAX as usize / 2 {
            return Err(bad("model.vocab's ids are not 0..n, each once"));
        }
        let mut tokens = vec![String::new(); n];
        let mut attrs = vec![ATTR_NORMAL; n];
        for (text, id) in pieces {
            let id = id
                .as_u64()
                .ok_or_else(|| bad("a vocabulary id is not a number"))?
                as usize;
            tokens[id] = match text.strip_prefix(prefix) {
                Some(rest) if !rest.is_empty() => rest.to_owned(),
                _ => format!("{WORD_START}{text}"),
            };
        }
        // Added tokens are matched by their text before WordPiece runs.
        for t in root["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
                return Err(bad("an added token without id or content"));
            };
            let id = id as usize;
            if id >= n {
                return Err(bad(format!(
                    "added token {text:?} has id {id} beyond the vocabulary"
                )));
            }
            tokens[id] = text.to_owned();
            attrs[id] = ATTR_CONTROL;
        }
        let unk_text = model["unk_token"].as_str().unwrap_or("[UNK]");
        let unk = tokens.iter().position(|t| t == unk_text).map(|i| i as u32);
        if let Some(u) = unk {
            attrs[u as usize] = ATTR_UNKNOWN;
        }
        let vocab = Vocab::from_parts(tokens, attrs);

        let norm = normalizer(&root["normalizer"])?;
        let lowercase = norm["lowercase"].as_bool().unwrap_or(true);
        let strip = match norm["strip_accents"].as_bool().unwrap_or(lowercase) {
            true => Strip::Nonspacing,
            false => Strip::Nothing,
        };
        let max_word_chars = model["max_input_chars_per_word"]
            .as_u64()
            .map(|m| m as usize);
        let wp = WordPiece::new(&vocab, lowercase, strip, max_word_chars, unk);

        let (cls, sep) = frame(&root["post_processor"], &vocab)?;
        let framing = Framing {
            bos: cls,
            eos: sep,
            add_bos: cls.is_some(),
            add_eos: sep.is_some(),
            add_space_prefix: false,
        };
        let special = Specials::marked(&vocab);
        Ok(Tokenizer::assemble(
            vocab,
            Model::WordPiece(wp),
            special,
            framing,
            None,
        ))
    }
}

/// The `BertNormalizer` among the normalizers (alone, or inside a `Sequence`); a file
/// without a normalizer gets BERT's defaults.
fn normalizer(n: &Value) -> Result<Value, EngineError> {
    match n["type"].as_str() {
        None => Ok(Value::Null),
        Some("BertNormalizer") => Ok(n.clone()),
        Some("Sequence") => n["normalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["type"] == "BertNormalizer")
            .cloned()
            .ok_or_else(|| bad("a normalizer sequence without BertNormalizer")),
        Some(other) => Err(bad(format!("normalizer `{other}` is not supported"))),
    }
}

/// The tokens a single sequence is framed with: `BertProcessing`'s `cls` and `sep`, or a
/// `TemplateProcessing` single template of special token, sequence, special token.
fn frame(p: &Value, vocab: &Vocab) -> Result<(Option<u32>, Option<u32>), EngineError> {
    let id = |text: &str| {
        vocab.id_of(text).ok_or_else(|| {
            bad(format!(
                "the post-processor's token {text:?} is not in the vocabulary"
            ))
        })
    };
    match p["type"].as_str() {
        None => Ok((None, None)),
        Some("BertProcessing") | Some("RobertaProcessing") => {
            let cls = p["cls"][0]
                .as_str()
                .ok_or_else(|| bad("post_processor.cls"))?;
            let sep = p["sep"][0]
                .as_str()
                .ok_or_else(|| bad("post_processor.sep"))?;
            Ok((Some(id(cls)?), Some(id(sep)?)))
        }
        Some("TemplateProcessing") => {
            let single = p["single"]
                .as_array()
                .ok_or_else(|| bad("post_processor.single"))?;
            let special = |v: &Value| v["SpecialToken"]["id"].as_str().map(&id).transpose();
            match single.as_slice() {
                [a, s, b] if s.get("Sequence").is_some() => Ok((special(a)?, special(b)?)),
                [s] if s.get("Sequence").is_some() => Ok((None, None)),
                _ => Err(bad(
                    "a post-processor template other than [special] sequence [special]",
                )),
            }
        }
        Some(other) => Err(bad(format!("post-processor `{other}` is not supported"))),
    }
}
