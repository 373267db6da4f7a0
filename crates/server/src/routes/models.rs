//! `GET /v1/models` and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use tokenfab_wire::models::{ModelList, ModelObject};

use crate::state::{AppState, Serve};

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
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// For load balancers: 200 with the served models once the server accepts requests
/// (local ones with their running sequences, upstream ones with their backends up).
pub async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let models: Vec<_> = state
        .models()
        .iter()
        .map(|m| match &m.serve {
            Serve::Local(l) => serde_json::json!({ "id": m.id, "running": l.engine.running() }),
            Serve::Encoder(_) => serde_json::json!({ "id": m.id }),
            Serve::Upstream(u) => serde_json::json!({
                "id": m.id,
                "backends": u.pool.backends.len(),
                "backends_up": u.pool.up(),
            }),
        })
        .collect();
    Json(serde_json::json!({ "status": "ok", "models": models }))
}
