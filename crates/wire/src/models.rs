//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

/// The list envelope OpenAI clients expect (`client.models.list()`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Health {
    /// `ok` once the server accepts requests.
    pub status: String,
    pub models: Vec<ModelHealth>,
}

/// One served model's state: a local chat model's running sequences, an upstream model's
/// backends and how many of them are up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelHealth {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends_up: Option<usize>,
}

/// One served model. `id` is what clients put in a request's `model` field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// SiliconFlow's model kind (`chat`, `embedding`, `reranker`), used by the `type` filter.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// tokenfab's extension, present only for a model the server itself knows to reason:
    /// a client (the web console) then offers the thinking fields the model honours, and
    /// no others, which `enable_thinking: false` on a model that always thinks would be
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<ModelReasoning>,
}

/// How a reasoning model's thinking can be steered per request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelReasoning {
    /// `enable_thinking: false` turns the thought off (the chat template reads it).
    pub switchable: bool,
    /// The `thinking_budget` a request gets when it names none.
    pub thinking_budget: usize,
}
