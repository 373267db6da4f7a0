//! tokenfab's HTTP server: the OpenAI-compatible API over the engine.
//!
//! # Layout
//! [`connections`] accepts each TCP connection and holds it to the connection limits (how
//! many, how long a head or a kept-alive wait may take), and drains them on shutdown
//! ([`drain`] refuses new requests meanwhile); [`body_timeout`] bounds the wait for a
//! request's body. A request flows: [`request_id`] (id + log span) → [`auth`] (the bearer key becomes a
//! `Caller`) → a handler in [`routes`], which finds the model in the registry
//! ([`state`]). A local model's request goes to [`job`] (validate, render the chat
//! template, tokenize, check the context) → the platform's admission (rate limits, then
//! the most the request can cost reserved from the balance) → the model's engine handle
//! → engine events, folded into the answer by [`fold`] (the one place events become
//! choices, usage and billing) → JSON or server-sent events → the admission settled with
//! the tokens used. An upstream model's request is admitted the same way and forwarded by
//! [`routes::proxy`] through `tokenfab-upstream` (backend choice, retries, normalisation
//! of the answer). Every failure is an [`error::HttpError`] in the OpenAI shape.
//! Every crate records its figures through the `metrics` facade; [`metrics`] installs the
//! Prometheus recorder and serves `/metrics`.
//! [`console`] serves the web console at `/`, a client of these same routes.
//! [`fuzz`] is the request fuzz target's body: untrusted bodies through each handler's
//! checks, up to the work they would start.
//!
//! The batch API ([`routes::files`], [`routes::batch`]) keeps its records in the
//! platform's ledger and its files in a directory; [`batch`]'s runner feeds each line of a
//! batch to the same handler code (`routes::chat::answer` and its siblings) in the batch
//! [`routes::Lane`]: the batch price, no rate limits, low priority in the engine.

pub mod auth;
pub mod batch;
pub mod body_timeout;
pub mod connections;
pub mod console;
pub mod drain;
pub mod error;
pub mod fold;
pub mod fuzz;
pub mod guard;
pub mod job;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use state::{
    AppState, Counter, Limits, ModelEntry, ModelType, Serve, ServedModel, UpstreamModel,
};

async fn not_found(method: Method, uri: Uri) -> impl IntoResponse {
    error::HttpError::route_not_found(method.as_str(), uri.path())
}

/// The whole API as an axum router, so tests and embedders can serve it on any listener.
pub fn router(state: Arc<AppState>) -> Router {
    let (app, doc) = api(&state).split_for_parts();
    let doc = Arc::new(doc);
    let served = state.clone();
    app.route(
        "/openapi.json",
        get(move || openapi::document(doc.clone(), served.models())),
    )
    .fallback(not_found)
    .method_not_allowed_fallback(|m: Method, u: Uri| async move {
        error::HttpError::method_not_allowed(m.as_str(), u.path())
    })
    .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
    .layer(axum::middleware::from_fn_with_state(
        state.limits.body_read_timeout,
        body_timeout::layer,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        drain::layer,
    ))
    .layer(axum::middleware::from_fn(request_id::layer))
    .with_state(state)
}

/// The OpenAPI document of the routes `state` serves (the admin API only with an admin key).
pub fn openapi(state: &Arc<AppState>) -> utoipa::openapi::OpenApi {
    api(state).split_for_parts().1
}

/// Every route with its documentation: each handler's `#[utoipa::path]` and the wire types
/// it names become the document, so a route cannot be served undocumented.
fn api(state: &Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    use routes::{admin, chat, completions, models, proxy, tokenize, user};
    let keyed = || axum::middleware::from_fn_with_state(state.clone(), auth::layer);
    let v1 = OpenApiRouter::new()
        .routes(routes!(chat::chat_completions))
        .routes(routes!(completions::completions))
        .routes(routes!(proxy::embeddings))
        .routes(routes!(proxy::rerank))
        .routes(routes!(models::list))
        .routes(routes!(user::info))
        .routes(routes!(user::usage))
        .routes(routes!(user::requests))
        .merge(routes::batch::router(state))
        .layer(keyed());
    // vLLM and llama-server serve these beside `/v1`, not under it.
    let tokenizing = OpenApiRouter::new()
        .routes(routes!(tokenize::tokenize))
        .routes(routes!(tokenize::detokenize))
        .layer(keyed());
    let mut app = OpenApiRouter::with_openapi(openapi::base())
        .nest("/v1", v1)
        .merge(tokenizing);
    // Behind the admin key when there is one (Prometheus sends it as a bearer token).
    let mut scrape = OpenApiRouter::new().routes(routes!(metrics::page));
    if state.admin_key_hash.is_some() {
        let admin_only = || axum::middleware::from_fn_with_state(state.clone(), admin::layer);
        let admin = OpenApiRouter::new()
            .routes(routes!(admin::list_accounts, admin::create_account))
            .routes(routes!(admin::get_account))
            .routes(routes!(admin::credit))
            .routes(routes!(admin::list_keys, admin::create_key))
            .routes(routes!(admin::revoke_key))
            .routes(routes!(admin::usage))
            .routes(routes!(admin::terms))
            .routes(routes!(admin::models))
            .layer(admin_only());
        app = app.nest("/admin", admin);
        scrape = scrape.layer(admin_only());
    }
    app.merge(scrape)
        .routes(routes!(models::health))
        .merge(console::router())
}

/// Serves until `shutdown` resolves, then drains: new requests are refused ([`drain`]) and
/// those in flight finish, within `state.limits.shutdown_grace`; connections are held to
/// `state.limits` ([`connections`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "tokenfab is listening");
    let limits = state.limits.clone();
    let draining = state.clone();
    let shutdown = async move {
        shutdown.await;
        draining.draining.begin();
    };
    connections::accept_loop(listener, router(state), &limits, shutdown).await;
}
