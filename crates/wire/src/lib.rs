//! OpenAI-compatible wire types for tokenfab: serde only, no HTTP, no engine.
//!
//! # Layout
//! - [`admin`]: the `/admin` API's and `/v1/user/info`'s bodies.
//! - [`batch`]: the batch API's files, batches and the lines of their files.
//! - [`chat`]: `POST /v1/chat/completions` requests, responses and stream chunks.
//! - [`completions`]: `POST /v1/completions` (legacy text completion), with its own
//!   `logprobs` form; `usage`, `stop` and finish reasons are chat's.
//! - [`embeddings`]: `POST /v1/embeddings`.
//! - [`models`]: `GET /v1/models`.
//! - [`rerank`]: `POST /v1/rerank` (SiliconFlow's shape).
//! - [`tokenize`]: `POST /tokenize` and `/detokenize` (vLLM's and llama-server's shapes).
//! - [`error`]: the one error body every failing route returns.
//! - [`usage`]: [`usage::TokenUsage`], the token counts every layer passes, and the one
//!   conversion to and from the API's `usage` object.
//! - [`time`]: the one wall clock (Unix seconds).
//!
//! Requests keep every field optional and unknown fields ignored, as the OpenAI API does;
//! validation of values (ranges, limits) belongs to the server, which knows the model.

pub mod admin;
pub mod batch;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod models;
pub mod rerank;
pub mod time;
pub mod tokenize;
pub mod usage;

pub use error::{ApiError, ErrorBody};
