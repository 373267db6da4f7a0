//! What the server serves: the loaded models and the limits every request is held to.

use std::sync::Arc;

use tokenfab_engine::loader::ReasoningSpec;
use tokenfab_engine::scheduler::EngineHandle;
use tokenfab_engine::template::ChatTemplate;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_platform::Platform;

/// One model behind the API: its engine plus what handlers need to build prompts.
pub struct ServedModel {
    /// The id clients send in `model`, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub id: String,
    pub owned_by: String,
    /// Unix time the model was loaded, reported by `/v1/models`.
    pub created: u64,
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub context_length: usize,
    /// `Some` for reasoning models: the thought is split into `reasoning_content`.
    pub reasoning: Option<ReasoningSpec>,
    /// Reasoning tokens allowed when a request gives no `thinking_budget`.
    pub thinking_budget: usize,
}

/// SiliconFlow's default `thinking_budget`.
pub const DEFAULT_THINKING_BUDGET: usize = 4096;

/// Request limits that protect the server from oversized work.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// Operator's ceiling on generated tokens per choice (SiliconFlow caps at 16K). A request
    /// asking for more, or for nothing, gets at most this many and `finish_reason: "length"`.
    pub max_output_tokens: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_n: 8,
            max_output_tokens: None,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub models: Vec<Arc<ServedModel>>,
    pub limits: Limits,
    /// Keys, prices, balances and rate limits; `None` serves everyone, unbilled (an
    /// embedder that does its own accounting).
    pub platform: Option<Arc<Platform>>,
    /// SHA-256 of the admin key; the `/admin` API is off without one.
    pub admin_key_hash: Option<String>,
}

impl AppState {
    /// Looks a model up by id; ids compare case-insensitively, as users type them by hand.
    pub fn model(&self, id: &str) -> Option<Arc<ServedModel>> {
        self.models
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(id))
            .cloned()
    }
}
