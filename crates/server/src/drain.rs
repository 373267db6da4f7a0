//! The request side of a graceful shutdown. Once the server drains ([`Draining::begin`],
//! on SIGTERM), the listener is closed (a new connection is refused, which any client or
//! load balancer may retry elsewhere: nothing was sent) and the requests in flight are let
//! finish ([`crate::connections`]); a request that still arrives, on a connection kept
//! alive from before, is answered here `503` with `retry-after` and `connection: close`,
//! so that its client knows for certain it was not run. Closing such connections at once
//! instead (as hyper's graceful shutdown does with idle ones) races with a request already
//! on its way, which its client then sees as a reset it cannot tell from a failure midway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::HttpError;
use crate::state::AppState;

/// Whether the server is shutting down.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// From now on, every new request is refused.
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Answers every request 503 once the server drains (`/health` too: a load balancer that
/// still asks takes this replica out).
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !state.draining.is_on() {
        return next.run(req).await;
    }
    let mut resp = HttpError::shutting_down().into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
