//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, generated at start from the
//! handlers' `#[utoipa::path]` annotations and the wire types' schemas (see
//! [`crate::router`]); this module adds what no handler says: the title, the two kinds of
//! key, and the document's own route.

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder};

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

/// The document, as built with the router.
pub async fn document(doc: Arc<OpenApi>) -> Response {
    Json(doc.as_ref()).into_response()
}
