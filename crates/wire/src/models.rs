//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

/// The list envelope OpenAI clients expect (`client.models.list()`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// One served model. `id` is what clients put in a request's `model` field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// SiliconFlow's model kind (`chat`, `embedding`, `reranker`), used by the `type` filter.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}
