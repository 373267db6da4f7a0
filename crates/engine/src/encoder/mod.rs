//! Encoder models: text in, one vector per input out (embeddings), batched without
//! padding.
//!
//! Layout: this file holds [`Encoder`] (configuration, tokenizer, weights) and its
//! pooling; `batcher.rs` is the thread that serves it ([`start`], [`EncoderHandle`]),
//! packing concurrent requests into shared passes; `hf.rs` reads a Hugging Face model
//! directory (`config.json`, `model.safetensors`, `tokenizer.json` and
//! sentence-transformers' pooling and normalization modules), `gguf.rs` a GGUF file
//! (Nomic-BERT); `bert.rs` is the forward pass over packed sequences. A causal decoder
//! (any chat GGUF the engine runs) serves as an encoder too ([`Encoder::from_decoder`]),
//! its vectors pooled from the final hidden states (Qwen3-Embedding's design).

mod batcher;
mod bert;
mod gguf;
mod hf;

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::EngineError;
use crate::model::{Model, SeqInput};
use crate::tokenizer::Tokenizer;

pub use batcher::{EmbedError, EncoderHandle, start};
pub use bert::Segmented;

/// The most tokens one forward pass packs: about 40 MB of activations for a model of
/// MiniLM's size (width 384, feed-forward 1536), and far past where larger passes stop
/// paying (the matrix kernels are saturated by a few hundred rows).
pub const PASS_TOKENS: usize = 8192;

/// How one vector is made of a sequence's hidden states (sentence-transformers'
/// `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token, `[CLS]` and `[SEP]` included.
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
    /// The last token's.
    Last,
}

impl Pooling {
    pub fn parse(s: &str) -> Option<Pooling> {
        match s {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "last" => Some(Pooling::Last),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

/// An encoder's shapes and what makes its vectors.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// The model family (`bert`).
    pub arch: String,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub positions: Positions,
    pub token_types: usize,
    pub norm_eps: f32,
    /// The longest input in tokens, `[CLS]` and `[SEP]` included: sentence-transformers'
    /// `max_seq_length` where the model has one, else what the position table holds.
    pub context_length: usize,
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length (a `Normalize` module).
    pub normalize: bool,
    /// A cross-encoder (a classification head of one logit): it scores (query, document)
    /// pairs instead of embedding texts.
    pub reranker: bool,
    /// The shorter vector sizes the model was trained to be cut to (Matryoshka
    /// representation learning), besides `width`: what `dimensions` may ask for.
    pub dimensions: Vec<usize>,
}

/// How an encoder knows where a token is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// A learned table of `rows` rows, position 0 at row `offset` (RoBERTa-style models
    /// skip the padding index's rows).
    Table { rows: usize, offset: usize },
    /// Rotary embeddings on queries and keys, of this frequency base.
    Rotary { base: f32 },
}

/// A loaded encoder: immutable, shared between threads behind an `Arc`.
pub struct Encoder {
    pub config: EncoderConfig,
    pub tokenizer: Arc<Tokenizer>,
    body: Body,
    head: Option<bert::Classifier>,
}

/// What turns a pass's tokens into hidden states.
enum Body {
    /// A bidirectional BERT-family encoder.
    Bert(bert::Bert),
    /// A causal decoder: each token sees the ones before it, in its own sequence.
    Decoder(Arc<Model>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Loads a GGUF encoder, a Hugging Face encoder directory, or its `model.safetensors`
    /// (the directory is the file's).
    pub fn load(path: &Path) -> Result<Encoder, EngineError> {
        if is_gguf(path) {
            gguf::load(path)
        } else {
            hf::load(path)
        }
    }

    /// The configuration of the encoder at `path`, read without its weights: whether
    /// tokenfab runs it, and its shapes.
    pub fn config_of(path: &Path) -> Result<EncoderConfig, EngineError> {
        if is_gguf(path) {
            gguf::config_of(path)
        } else {
            hf::config_of(path)
        }
    }

    /// A decoder (a chat model) as an embedding model: each sequence's final hidden
    /// states (after the output norm), pooled by `pooling` and normalized. Sequences are
    /// framed as the tokenizer frames them (a GGUF's `add_bos_token` / `add_eos_token`), as
    /// llama.cpp's embedding mode frames them.
    pub fn from_decoder(model: Arc<Model>, tokenizer: Arc<Tokenizer>, pooling: Pooling) -> Encoder {
        let m = &model.config;
        let config = EncoderConfig {
            arch: m.arch.clone(),
            width: m.n_embd,
            heads: m.n_head,
            layers: m.n_layer,
            ffn: m.n_ff,
            vocab: m.vocab_size,
            positions: Positions::Rotary {
                base: m.ropes.first().map_or(10_000.0, |r| r.theta),
            },
            token_types: 1,
            norm_eps: m.rms_eps,
            context_length: m.context_length,
            pooling,
            normalize: true,
            reranker: false,
            dimensions: Vec::new(),
        };
        Encoder {
            config,
            tokenizer,
            body: Body::Decoder(model),
            head: None,
        }
    }

    /// Whether `path` holds an embedding model rather than a chat model: a Hugging Face
    /// directory or safetensors file, or a GGUF file of a bidirectional model or of a
    /// decoder converted with a pooling type.
    pub fn at(path: &Path) -> bool {
        if is_gguf(path) {
            crate::gguf::GgufFile::open(path).is_ok_and(|g| gguf::is_encoder(&g))
        } else {
            path.is_dir() || path.extension().is_some_and(|e| e == "safetensors")
        }
    }

    /// The vector of each token sequence (each framed as the tokenizer frames it, at
    /// most [`EncoderConfig::context_length`] long, ids inside the vocabulary): pooled and,
    /// if the model says so, normalized. All sequences run in one packed pass.
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        let segmented: Vec<Segmented<'_>> = seqs
            .iter()
            .map(|tokens| Segmented { tokens, types: &[] })
            .collect();
        self.run(&segmented)
    }

    /// What the model makes of each sequence: its vector, or for a reranker its score
    /// alone (a vector of one). Checked first ([`Encoder::check`]).
    pub fn run(&self, seqs: &[Segmented<'_>]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.check(seqs)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut first = 0;
        while first < seqs.len() {
            // Consecutive inputs up to PASS_TOKENS per pass (at least one): a pass's
            // working memory grows with its tokens, a request's need not.
            let mut end = first + 1;
            let mut tokens = seqs[first].tokens.len();
            while end < seqs.len() && tokens + seqs[end].tokens.len() <= PASS_TOKENS {
                tokens += seqs[end].tokens.len();
                end += 1;
            }
            out.extend(self.pass(&seqs[first..end])?);
            first = end;
        }
        Ok(out)
    }

    /// A (query, document) pair as a cross-encoder reads it, from unframed tokens:
    /// `[CLS] query [SEP] document [SEP]`, the tokens and their types (0 up to the first
    /// separator, 1 after).
    pub fn pair(&self, query: &[u32], document: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let (cls, sep) = (self.tokenizer.bos_id(), self.tokenizer.eos_id());
        let mut tokens: Vec<u32> = cls.into_iter().chain(query.iter().copied()).collect();
        tokens.extend(sep);
        let first = tokens.len();
        tokens.extend_from_slice(document);
        tokens.extend(sep);
        let types = (0..tokens.len()).map(|i| u32::from(i >= first)).collect();
        (tokens, types)
    }

    /// Results of checked inputs, in one forward pass.
    fn pass(&self, seqs: &[Segmented<'_>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let hidden = match &self.body {
            Body::Bert(bert) => bert.forward(&self.config, seqs),
            Body::Decoder(model) => decoder_states(model, seqs)?,
        };
        let d = self.config.width;
        let mut starts = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            starts.push(at);
            at += s.tokens.len();
        }
        Ok(seqs
            .par_iter()
            .zip(starts)
            .map(|(s, start)| {
                let rows = &hidden[start * d..(start + s.tokens.len()) * d];
                if let Some(head) = &self.head {
                    return vec![head.score(&rows[..d])];
                }
                let mut v = match self.config.pooling {
                    Pooling::Cls => rows[..d].to_vec(),
                    Pooling::Last => rows[rows.len() - d..].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0.0f64; d];
                        for r in rows.chunks_exact(d) {
                            sum.iter_mut().zip(r).for_each(|(a, &b)| *a += b as f64);
                        }
                        let n = s.tokens.len() as f64;
                        sum.iter().map(|&x| (x / n) as f32).collect()
                    }
                };
                if self.config.normalize {
                    normalize(&mut v);
                }
                v
            })
            .collect())
    }

    /// Refuses what the tables cannot hold: empty or over-long sequences, ids or types
    /// outside them.
    pub fn check(&self, seqs: &[Segmented<'_>]) -> Result<(), EngineError> {
        let c = &self.config;
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(EngineError::BadRequest(format!("input {i} is empty")));
            }
            if s.tokens.len() > c.context_length {
                return Err(EngineError::BadRequest(format!(
                    "input {i} is {} tokens, more than the model's {}",
                    s.tokens.len(),
                    c.context_length
                )));
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::BadRequest(format!(
                    "input {i} holds token {t}, outside the vocabulary of {}",
                    c.vocab
                )));
            }
            if !s.types.is_empty() && s.types.len() != s.tokens.len() {
                return Err(EngineError::BadRequest(format!(
                    "input {i} has {} token types for {} tokens",
                    s.types.len(),
                    s.tokens.len()
                )));
            }
            if s.types.iter().any(|&t| t as usize >= c.token_types) {
                return Err(EngineError::BadRequest(format!(
                    "input {i} has a token type the model does not have"
                )));
            }
        }
        Ok(())
    }
}

/// Every token's final hidden state, sequence after sequence, from one step of the
/// decoder over fresh caches (checked already: in the vocabulary, within the context).
fn decoder_states(model: &Model, seqs: &[Segmented<'_>]) -> Result<Vec<f32>, EngineError> {
    let mut caches: Vec<_> = seqs.iter().map(|_| model.new_kv_cache()).collect();
    let mut batch: Vec<SeqInput<'_>> = seqs
        .iter()
        .zip(&mut caches)
        .map(|(s, kv)| SeqInput {
            tokens: s.tokens,
            kv,
            all_logits: true,
        })
        .collect();
    model.hidden(&mut batch, &mut model.new_scratch())
}

/// Whether tokenfab runs encoders of this `model_type` (`bert`, `roberta`, ...) or GGUF
/// architecture (`nomic-bert`).
pub fn supports_architecture(model_type: &str) -> bool {
    hf::family(model_type, 0).is_some() || gguf::ARCHITECTURES.contains(&model_type)
}

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}

/// Scales `v` to unit length (a zero vector stays zero), in f64 as
/// `torch.nn.functional.normalize` is exact enough to compare against.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm.max(1e-12);
        v.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
    }
}
