//! tokenfab's inference engine, usable without HTTP.
//!
//! # Layout
//! - [`gguf`]: the model container (metadata, tensor directory, mapped bytes).
//! - [`tokenizer`]: text ↔ token ids, built from the GGUF vocabulary.
//! - [`quant`]: quantized block formats and the dot-product kernels over them.
//! - [`model`]: the transformer forward pass (llama, qwen2) over a caller-owned KV cache.

pub mod error;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod tokenizer;

pub use error::EngineError;
