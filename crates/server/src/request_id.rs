//! Request ids: every response carries `x-request-id`, and every log line of the request
//! carries the same id, so a user's report can be matched to the server's log.
//!
//! Each request logs one access line at info (`response`, with its status and the
//! microseconds until the response head); handlers add the model and the prompt's tokens
//! to the request's span ([`note_model`], [`note_prompt`]) so that line carries them.
//! The same response is counted in `tokenfab:http_requests_total` by status and by the
//! served model it named ([`note_served`]: only ids the server serves become labels, so a
//! client cannot mint series).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The id of the request being handled, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A process-unique id: start time plus a counter, hex. A client-supplied `x-request-id`
/// (from a gateway in front of us) is kept instead when it is short and printable.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    });
    format!("{start:x}{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Names the request's model on its log lines.
pub fn note_model(id: &str) {
    tracing::Span::current().record("model", id);
}

tokio::task_local! {
    /// The served model the request named, once the handler has found it.
    static SERVED: RefCell<Option<String>>;
}

/// Names the served model a request is for, for its metrics; outside a request, nothing.
pub fn note_served(id: &str) {
    let _ = SERVED.try_with(|m| *m.borrow_mut() = Some(id.to_owned()));
}

/// Adds the prompt's token count to the request's log lines.
pub fn note_prompt(tokens: u64) {
    tracing::Span::current().record("prompt_tokens", tokens);
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path(), model = tracing::field::Empty, prompt_tokens = tracing::field::Empty);
    let started = std::time::Instant::now();
    let (mut resp, served) = SERVED
        .scope(RefCell::new(None), async {
            let resp = next.run(req).instrument(span.clone()).await;
            (resp, SERVED.with(|m| m.take()))
        })
        .await;
    metrics::counter!(
        "tokenfab:http_requests_total",
        "status" => resp.status().as_u16().to_string(),
        "model" => served.unwrap_or_default()
    )
    .increment(1);
    // Until the response head: a stream's body goes on after this.
    let micros = started.elapsed().as_micros() as u64;
    span.in_scope(|| tracing::info!(status = resp.status().as_u16(), micros, "response"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
