//! `GET /v1/models` and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenfab_wire::models::{ModelList, ModelObject, ModelReasoning};

use crate::state::{AppState, ModelEntry, Serve};

/// SiliconFlow's filters: `type` (chat, embedding, reranker) and `sub_type`.
#[derive(Debug, Deserialize)]
pub struct ModelFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    sub_type: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<ModelFilter>,
) -> Json<ModelList> {
    let wanted = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|k| k.is_empty() || k == v);
    let data = state
        .models()
        .iter()
        .filter(|m| wanted(&filter.kind, m.kind.as_str()) && wanted(&filter.sub_type, &m.sub_type))
        .map(|m| ModelObject {
            id: m.id.clone(),
            object: "model".into(),
            created: m.created,
            owned_by: m.owned_by.clone(),
            kind: Some(m.kind.as_str().into()),
            reasoning: reasoning(m),
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// What the engine says of a local model's thinking. An upstream model's backends are
/// not asked, so it is reported as not known to reason.
pub fn reasoning(m: &ModelEntry) -> Option<ModelReasoning> {
    let Serve::Local(l) = &m.serve else {
        return None;
    };
    l.engine.reasoning().map(|r| ModelReasoning {
        switchable: r.switchable,
        thinking_budget: r.budget,
    })
}

/// A model's state now: a local one's running sequences, an upstream one's backends up.
/// `/health` shows it; the admin's model list adds its details.
pub fn health_json(m: &ModelEntry) -> Value {
    match &m.serve {
        Serve::Local(l) => json!({ "id": m.id, "running": l.engine.running() }),
        Serve::Encoder(_) => json!({ "id": m.id }),
        Serve::Upstream(u) => json!({
            "id": m.id,
            "backends": u.pool.backends.len(),
            "backends_up": u.pool.up(),
        }),
    }
}

/// For load balancers: 200 with the served models once the server accepts requests.
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state.models().iter().map(|m| health_json(m)).collect();
    Json(json!({ "status": "ok", "models": models }))
}
