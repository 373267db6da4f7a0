//! What the server serves: the model registry (local engines and upstream pools, replaced
//! whole on a configuration reload) and the limits every request is held to.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokenfab_engine::encoder::EncoderHandle;
use tokenfab_engine::scheduler::EngineHandle;
use tokenfab_engine::template::ChatTemplate;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_platform::Platform;
use tokenfab_text::reasoning::ThinkTags;
use tokenfab_upstream::dialect::Dialect;
use tokenfab_upstream::pool::Pool;

/// One model run by tokenfab's engine: the engine plus what handlers need to build prompts.
/// The model's context window and how it thinks are the engine's
/// ([`EngineHandle::context_length`], [`EngineHandle::reasoning`]).
pub struct ServedModel {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
}

/// A model's tokenizer (and chat template), used to count what an upstream did not.
pub struct Counter {
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
}

/// One model answered by upstream servers.
pub struct UpstreamModel {
    pub pool: Arc<Pool>,
    /// Tags of a thought left inline in `content`, split into `reasoning_content`; `None`
    /// passes `content` on as it is.
    pub think: Option<ThinkTags>,
    /// Bounds what a request without `max_tokens` may cost.
    pub context_length: usize,
    /// Counts usage when an upstream reports none; without it, usage is estimated.
    pub counter: Option<Counter>,
    /// The engine the backends run, for its spelling of the thinking fields.
    pub dialect: Dialect,
}

/// Where a model's requests go.
pub enum Serve {
    /// A chat model on tokenfab's engine.
    Local(Arc<ServedModel>),
    /// An embedding model on tokenfab's encoder.
    Encoder(EncoderHandle),
    Upstream(Arc<UpstreamModel>),
}

/// What a model does, for `/v1/models`' filters and for which endpoints take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Chat,
    Embedding,
    Reranker,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Chat => "chat",
            ModelType::Embedding => "embedding",
            ModelType::Reranker => "reranker",
        }
    }

    pub fn parse(s: &str) -> Option<ModelType> {
        [ModelType::Chat, ModelType::Embedding, ModelType::Reranker]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// The endpoint that serves this type, for error messages.
    pub fn endpoint(self) -> &'static str {
        match self {
            ModelType::Chat => "/v1/chat/completions",
            ModelType::Embedding => "/v1/embeddings",
            ModelType::Reranker => "/v1/rerank",
        }
    }
}

/// One model behind the API.
pub struct ModelEntry {
    /// The id clients send in `model`, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub id: String,
    pub kind: ModelType,
    /// SiliconFlow's finer type (defaults to the type's name).
    pub sub_type: String,
    pub owned_by: String,
    /// Unix time the model was loaded, reported by `/v1/models`.
    pub created: u64,
    pub serve: Serve,
}

/// Request and connection limits that protect the server from oversized work and from
/// clients that hold connections without using them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest silence while a request body is read; the request is then answered 408.
    /// Between reads rather than in total, so a large upload on a slow link still arrives.
    pub body_read_timeout: Duration,
    /// From a connection's opening, or from the first byte of a kept-alive connection's
    /// next request, until the request's head is complete: a client that trickles its head
    /// (slowloris) is dropped after this.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub keep_alive_idle: Duration,
    /// Open connections at most; past it a connection is answered 503 and closed. Each
    /// holds a file descriptor, so this stays below the process's `ulimit -n`.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger ones are answered 431.
    pub max_header_bytes: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// Operator's ceiling on generated tokens per choice (SiliconFlow caps at 16K). A request
    /// asking for more, or for nothing, gets at most this many and `finish_reason: "length"`.
    pub max_output_tokens: Option<usize>,
    /// How long a shutdown waits for the requests in flight to finish; those still running
    /// then are cut (and settled as cut), so that a 10-minute stream cannot hold a SIGTERM
    /// up for its length. Below an orchestrator's own kill timeout (Kubernetes' is 30 s).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(60),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_n: 8,
            max_output_tokens: None,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    /// Replaced whole by [`AppState::set_models`]; a request keeps the entry it looked up,
    /// so a reload never cuts one short.
    models: RwLock<Arc<Vec<Arc<ModelEntry>>>>,
    pub limits: Limits,
    /// Keys, prices, balances and rate limits; `None` serves everyone, unbilled (an
    /// embedder that does its own accounting).
    pub platform: Option<Arc<Platform>>,
    /// SHA-256 of the admin key; the `/admin` API is off without one.
    pub admin_key_hash: Option<String>,
    /// The batch API's files and runner; off (404) without one ([`AppState::with_batches`]).
    pub batches: Option<Arc<crate::batch::Batches>>,
    /// Wrong admin keys per client address, to slow guessing.
    pub admin_guard: crate::guard::Guard,
    /// Set when the server begins to shut down: new requests are then refused.
    pub draining: crate::drain::Draining,
}

impl AppState {
    pub fn new(
        models: Vec<Arc<ModelEntry>>,
        limits: Limits,
        platform: Option<Arc<Platform>>,
        admin_key_hash: Option<String>,
    ) -> AppState {
        AppState {
            models: RwLock::new(Arc::new(models)),
            limits,
            platform,
            admin_key_hash,
            batches: None,
            admin_guard: Default::default(),
            draining: Default::default(),
        }
    }

    /// Serves the batch API with `batches` (it needs the platform's ledger too).
    pub fn with_batches(mut self, batches: Arc<crate::batch::Batches>) -> AppState {
        self.batches = Some(batches);
        self
    }

    /// The models served now.
    pub fn models(&self) -> Arc<Vec<Arc<ModelEntry>>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves `models` from now on (a configuration reload).
    pub fn set_models(&self, models: Vec<Arc<ModelEntry>>) {
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(models);
    }

    /// Looks a model up by id; ids compare case-insensitively, as users type them by hand.
    pub fn model(&self, id: &str) -> Option<Arc<ModelEntry>> {
        self.models()
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(id))
            .cloned()
    }
}
