//! tokenfab's inference engine, usable without HTTP (a benchmark or another server can
//! embed it).
//!
//! # Layout
//! Data flows top to bottom:
//! - [`gguf`]: the model container (metadata, tensor directory, mapped bytes).
//! - [`loader`]: a GGUF file becomes a [`loader::LoadedModel`]: weights, tokenizer, template,
//!   and how the model thinks ([`loader::ReasoningSpec`], which the engine then owns).
//! - [`template`]: a conversation becomes prompt text (the model's own Jinja template).
//! - [`tokenizer`]: prompt text becomes token ids; generated ids become bytes.
//! - [`scheduler`]: the engine thread; jobs arrive over a channel, every running sequence
//!   is stepped in one batch, and tokens go back over each job's channel with their text
//!   (made by `tokenfab-text`: whole characters, thought apart from answer, stop strings)
//!   and their counts (`tokenfab_wire::usage::TokenUsage`). Computed prompts' and finished
//!   sequences' KV blocks go to the [`prefix_cache`], a tree of blocks keyed by tokens,
//!   where later prompts share them.
//! - [`model`]: the transformer forward pass (llama incl. Llama 3, qwen2, qwen3, phi3, gemma3) over caller-owned paged KV
//!   caches (reference-counted blocks of 16 positions, copied only on write), with its
//!   attention over those pages, built on [`quant`]: the quantized block formats, repacked
//!   at load eight rows to a register for their kernels (portable, AVX2, AVX-512 VNNI).
//! - [`sampler`]: logits become the next token, within what a request's [`constraint`]
//!   allows (a JSON schema, regex or grammar, by llguidance).
//! - [`encoder`]: embedding models (BERT), text to one vector per input, over packed
//!   sequences without padding; their WordPiece vocabulary is the [`tokenizer`]'s.
//! - [`metrics`]: what the scheduler reports (queue, latencies, tokens, KV blocks), in
//!   vLLM's names, to whatever recorder the process installed.
//! - [`speculative`]: a draft model of the same vocabulary proposes tokens that the
//!   scheduler verifies in one step of the served model (greedy output unchanged).

pub mod constraint;
pub mod encoder;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod gguf;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod prefix_cache;
pub mod quant;
pub mod sampler;
pub mod scheduler;
pub mod speculative;
pub mod template;
pub mod tokenizer;

pub use error::EngineError;

/// Where the tokenizer vectors and reference templates live, for the unit tests.
#[cfg(test)]
pub(crate) use tokenfab_testkit::test_assets_dir;
