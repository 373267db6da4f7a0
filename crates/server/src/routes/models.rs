//! `GET /v1/models` and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use tokenfab_wire::models::{Health, ModelHealth, ModelList, ModelObject, ModelReasoning};

use crate::state::{AppState, ModelEntry, Serve};

/// SiliconFlow's filters: `type` (chat, embedding, reranker) and `sub_type`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelFilter {
    /// `chat`, `embedding` or `reranker`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    sub_type: Option<String>,
}

/// The served models.
#[utoipa::path(get, path = "/models", operation_id = "list_models", tag = "models", security(("api_key" = [])), params(ModelFilter),
    responses((status = 200, body = ModelList), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
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
pub fn model_health(m: &ModelEntry) -> ModelHealth {
    let mut h = ModelHealth {
        id: m.id.clone(),
        running: None,
        backends: None,
        backends_up: None,
    };
    match &m.serve {
        Serve::Local(l) => h.running = Some(l.engine.running()),
        Serve::Encoder(_) => {}
        Serve::Upstream(u) => {
            h.backends = Some(u.pool.backends.len());
            h.backends_up = Some(u.pool.up());
        }
    }
    h
}

/// For load balancers: 200 with the served models once the server accepts requests.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    let models = state.models().iter().map(|m| model_health(m)).collect();
    Json(Health {
        status: "ok".into(),
        models,
    })
}
