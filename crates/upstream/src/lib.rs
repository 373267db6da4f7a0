//! Upstream models: OpenAI-compatible servers (vLLM, SGLang, llama.cpp's `llama-server`,
//! another tokenfab) that answer for a model tokenfab does not run itself.
//!
//! # Layout
//! - [`pool`]: a model's backends, each with its weight, outstanding requests and health;
//!   [`pool::Pool::pick`] chooses by weighted least-outstanding (or by prefix affinity),
//!   skipping backends taken out by failures until their backoff ends or a probe finds
//!   them healthy again ([`pool::Pool::watch`]).
//! - [`client`]: sends one request, retrying on another backend only when the one tried
//!   provably did not take it on (unreachable before anything was written, or a 429/5xx
//!   answer; a pure policy with its own tests), and classifies failures
//!   ([`client::Failure`]) for the server to map onto the API's errors without passing on
//!   an upstream's body.
//! - [`http`]: the HTTP/1.1 client under [`client`]: kept-alive connections per backend,
//!   each request written and its answer read by the request's own task.
//! - [`sse`]: splits a server-sent-event byte stream into its `data` payloads.
//! - [`dialect`]: the upstream engine's own fields for `enable_thinking` and
//!   `thinking_budget` (vLLM's, llama.cpp's, SGLang's), rewritten before a request goes up.
//! - [`normalize`]: makes upstream answers look like tokenfab's own: the model id the
//!   client used, the thought in `reasoning_content` whichever dialect the upstream speaks
//!   (`reasoning_content`, vLLM's `reasoning`, or `<think>` left inline in `content`), and
//!   the usage chunk only when the client asked for it.
//! - [`fuzz`]: the fuzz target's body: a hostile upstream's bytes through the
//!   response framing, [`sse`] and [`normalize`].
//!
//! A request flows: the server admits it (and [`dialect`] rewrites its thinking fields) →
//! [`client::send_whole`] or
//! [`client::send_stream`] picks a backend, rewrites the model name and posts it over an
//! [`http::Client`] connection → the response's events go through [`sse::Events`] and
//! [`normalize::StreamFilter`] chunk by chunk to the client → the usage seen (or counted
//! by the server) settles the request.

pub mod client;
pub mod dialect;
pub mod fuzz;
pub mod http;
pub mod normalize;
pub mod pool;
pub mod sse;
