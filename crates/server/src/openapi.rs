//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, generated at start from the
//! handlers' `#[utoipa::path]` annotations and the wire types' schemas (see
//! [`crate::router`]); this module adds what no handler says: the title, the two kinds of
//! key, the document's own route, and, as it is served, the ids of the models each request
//! may name.

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, RefOr};

use crate::state::{ModelEntry, ModelType};

/// The document before the routes are added.
pub fn base() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("tokenfab")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Open models behind an OpenAI-compatible API: chat and text completions, \
                     embeddings, rerank, tokenize, with API keys, balances and rate limits.",
                ))
                .build(),
        )
        .paths(
            PathsBuilder::new().path(
                "/openapi.json",
                PathItem::new(
                    utoipa::openapi::HttpMethod::Get,
                    utoipa::openapi::path::OperationBuilder::new()
                        .operation_id(Some("openapi"))
                        .tag("operations")
                        .summary(Some("This document"))
                        .response(
                            "200",
                            utoipa::openapi::ResponseBuilder::new()
                                .description("The OpenAPI 3.1 document of every route"),
                        ),
                ),
            ),
        )
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    let bearer = |what: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(what))
                .build(),
        )
    };
    components.add_security_scheme(
        "api_key",
        bearer("An API key (`sk-…`); not needed when the server runs without keys"),
    );
    components.add_security_scheme("admin_key", bearer("The operator's admin key"));
    doc
}

/// The document built with the router, each request's `model` listed from the models
/// served now (they may change while the server runs): a generated client, or a tool that
/// generates requests from the document, then names a model this server answers for.
pub async fn document(doc: Arc<OpenApi>, models: Arc<Vec<Arc<ModelEntry>>>) -> Response {
    let mut doc = doc.as_ref().clone();
    served_models(&mut doc, &models);
    Json(doc).into_response()
}

/// Which models each request body may name, and whether it must name one.
const MODEL_FIELDS: [(&str, &[ModelType], bool); 6] = [
    ("ChatCompletionRequest", &[ModelType::Chat], true),
    ("CompletionRequest", &[ModelType::Chat], true),
    ("EmbeddingsRequest", &[ModelType::Embedding], true),
    // A chat model reranks as a relevance judge.
    (
        "RerankRequest",
        &[ModelType::Reranker, ModelType::Chat],
        true,
    ),
    (
        "TokenizeRequest",
        &[ModelType::Chat, ModelType::Embedding, ModelType::Reranker],
        false,
    ),
    (
        "DetokenizeRequest",
        &[ModelType::Chat, ModelType::Embedding, ModelType::Reranker],
        false,
    ),
];

fn served_models(doc: &mut OpenApi, models: &[Arc<ModelEntry>]) {
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    for (name, kinds, required) in MODEL_FIELDS {
        let Some(RefOr::T(Schema::Object(body))) = schemas.get_mut(name) else {
            continue;
        };
        if required && !body.required.iter().any(|r| r == "model") {
            body.required.push("model".into());
        }
        let ids: Vec<Value> = models
            .iter()
            .filter(|m| kinds.contains(&m.kind))
            .map(|m| Value::String(m.id.clone()))
            .collect();
        // No model of the kind: the field stays open (an empty `enum` admits nothing).
        if let Some(RefOr::T(Schema::Object(model))) = body.properties.get_mut("model")
            && !ids.is_empty()
        {
            model.enum_values = Some(ids);
        }
    }
}
