//! `GET /v1/models` and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use tokenfab_wire::models::{ModelList, ModelObject};

use crate::state::AppState;

/// SiliconFlow's filters; every model served today is a chat model.
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
    const KIND: &str = "chat";
    let wanted = |f: &Option<String>| f.as_deref().is_none_or(|k| k.is_empty() || k == KIND);
    let data = if wanted(&filter.kind) && wanted(&filter.sub_type) {
        state
            .models
            .iter()
            .map(|m| ModelObject {
                id: m.id.clone(),
                object: "model".into(),
                created: m.created,
                owned_by: m.owned_by.clone(),
                kind: Some(KIND.into()),
            })
            .collect()
    } else {
        Vec::new()
    };
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// For load balancers: 200 with the served models once the server accepts requests.
pub async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let models: Vec<_> = state
        .models
        .iter()
        .map(|m| serde_json::json!({ "id": m.id, "running": m.engine.running() }))
        .collect();
    Json(serde_json::json!({ "status": "ok", "models": models }))
}
