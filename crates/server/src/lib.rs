//! tokenfab's HTTP server: the OpenAI-compatible API over the engine.
//!
//! # Layout
//! A request flows: [`request_id`] (id + log span) → [`auth`] (the bearer key becomes a
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
//!
//! The batch API ([`routes::files`], [`routes::batch`]) keeps its records in the
//! platform's ledger and its files in a directory; [`batch`]'s runner feeds each line of a
//! batch to the same handler code (`routes::chat::answer` and its siblings) in the batch
//! [`routes::Lane`]: the batch price, no rate limits, low priority in the engine.

pub mod auth;
pub mod batch;
pub mod error;
pub mod fold;
pub mod job;
pub mod metrics;
pub mod request_id;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use state::{
    AppState, Counter, Limits, ModelEntry, ModelType, Serve, ServedModel, UpstreamModel,
};

async fn not_found(method: Method, uri: Uri) -> impl IntoResponse {
    error::HttpError::route_not_found(method.as_str(), uri.path())
}

/// The whole API as an axum router, so tests and embedders can serve it on any listener.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.limits.max_body_bytes;
    let v1 = Router::new()
        .route("/chat/completions", post(routes::chat::chat_completions))
        .route("/completions", post(routes::completions::completions))
        .route("/embeddings", post(routes::proxy::embeddings))
        .route("/rerank", post(routes::proxy::rerank))
        .route("/models", get(routes::models::list))
        .route("/user/info", get(routes::user::info))
        .merge(routes::batch::router(&state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ));
    // vLLM and llama-server serve these beside `/v1`, not under it.
    let tokenizing = Router::new()
        .route("/tokenize", post(routes::tokenize::tokenize))
        .route("/detokenize", post(routes::tokenize::detokenize))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ));
    let mut app = Router::new().nest("/v1", v1).merge(tokenizing);
    if state.admin_key_hash.is_some() {
        use routes::admin;
        let admin = Router::new()
            .route(
                "/accounts",
                get(admin::list_accounts).post(admin::create_account),
            )
            .route("/accounts/{name}", get(admin::get_account))
            .route("/accounts/{name}/credit", post(admin::credit))
            .route("/keys", get(admin::list_keys).post(admin::create_key))
            .route("/keys/{which}", axum::routing::delete(admin::revoke_key))
            .route("/usage", get(admin::usage))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::layer,
            ));
        app = app.nest("/admin", admin);
    }
    // Behind the admin key when there is one (Prometheus sends it as a bearer token).
    let mut scrape = Router::new().route("/metrics", get(metrics::page));
    if state.admin_key_hash.is_some() {
        scrape = scrape.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::admin::layer,
        ));
    }
    app = app.merge(scrape);
    app.route("/health", get(routes::models::health))
        .fallback(not_found)
        .method_not_allowed_fallback(|m: Method, u: Uri| async move {
            error::HttpError::method_not_allowed(m.as_str(), u.path())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "tokenfab is listening");
    // Small writes (stream chunks, short answers) leave at once instead of waiting for the
    // client's acknowledgement of the previous one.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
