//! Sending one request to a model's backends.
//!
//! A backend that cannot be reached, times out, or answers 5xx is taken out (see
//! [`crate::pool`]) and the request goes to another one; so does one answered 429
//! (overloaded, not broken). This happens only while nothing has reached the client:
//! [`send_whole`] has the whole answer before it returns, [`send_stream`] returns at the
//! first byte of a successful stream, after which the caller owns the failure. Other
//! 4xx answers describe the request itself and are returned at once.

use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Body, Response, success};
use crate::pool::{Lease, Pool};

/// The largest whole answer read (embeddings of many long inputs run to tens of MB).
const MAX_ANSWER: usize = 1 << 30;
/// The most of an error answer read.
const MAX_ERROR: usize = 1 << 20;

/// Why no backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No backend could be reached (or none is configured).
    Unreachable,
    /// A backend took longer than its timeout.
    Timeout,
    /// A backend's error status. `message` is the upstream's own error message for
    /// statuses that describe the client's request (400, 413, 422), and `None` for the
    /// others, whose bodies stay in the logs.
    Status {
        status: u16,
        message: Option<String>,
    },
    /// A backend answered with something that is not what the API promises.
    Protocol(String),
}

/// A successful answer and the backend lease it holds.
pub struct Answer<T> {
    pub body: T,
    pub lease: Lease,
}

/// Statuses whose upstream message concerns the client's request.
fn client_status(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// The `message` of an upstream error body (OpenAI's `{"error":{"message"}}`, FastAPI's
/// `{"detail"}`, or a bare message), cut to a sane length.
fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))
        .or_else(|| v.get("error"))?;
    let text = match m {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(text.chars().take(1000).collect())
}

/// What one attempt came to.
enum Attempt<T> {
    Done(T),
    /// Try another backend.
    Retry(Failure),
    /// Give this to the client.
    Stop(Failure),
}

/// Classifies an error status: whether to retry elsewhere, and whether the backend is
/// broken.
async fn status_failure<T>(lease: &Lease, resp: Response) -> Attempt<T> {
    let status = resp.status;
    let body = resp.body.bytes(MAX_ERROR).await.unwrap_or_default();
    let b = &lease.backend;
    if client_status(status) {
        return Attempt::Stop(Failure::Status {
            status,
            message: error_message(&body),
        });
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    tracing::warn!(url = %b.cfg.url, model = %b.cfg.model, status, body = %text, "upstream answered with an error");
    if status >= 500 {
        b.failed();
    }
    let failure = Failure::Status {
        status,
        message: None,
    };
    if status >= 500 || status == 429 {
        Attempt::Retry(failure)
    } else {
        Attempt::Stop(failure)
    }
}

/// Tries the backends in turn (each at most once) until one answers.
async fn attempts<T, F, Fut>(
    pool: &Pool,
    body: &mut Value,
    affinity: Option<u64>,
    mut one: F,
) -> Result<Answer<T>, Failure>
where
    F: FnMut(Lease, Vec<u8>) -> Fut,
    Fut: Future<Output = (Attempt<T>, Lease)>,
{
    let mut tried = Vec::new();
    let mut last = Failure::Unreachable;
    while let Some((i, lease)) = pool.pick(&tried, affinity) {
        tried.push(i);
        if let Some(obj) = body.as_object_mut() {
            obj.insert(
                "model".into(),
                Value::String(lease.backend.cfg.model.clone()),
            );
        }
        let (attempt, lease) = one(lease, body.to_string().into_bytes()).await;
        match attempt {
            Attempt::Done(body) => {
                lease.backend.succeeded();
                return Ok(Answer { body, lease });
            }
            Attempt::Retry(f) => last = f,
            Attempt::Stop(f) => return Err(f),
        }
    }
    Err(last)
}

/// An attempt that never got an answer: the backend is out, try another.
fn unreachable<T>(lease: &Lease, e: &http::Error) -> Attempt<T> {
    tracing::warn!(url = %lease.backend.cfg.url, %e, "upstream backend unreachable");
    lease.backend.failed();
    Attempt::Retry(Failure::Unreachable)
}

fn timed_out<T>(lease: &Lease) -> Attempt<T> {
    tracing::warn!(url = %lease.backend.cfg.url, timeout = ?lease.backend.cfg.timeout, "upstream backend timed out");
    lease.backend.failed();
    Attempt::Retry(Failure::Timeout)
}

/// Posts `body` to `path` (e.g. `chat/completions`) and reads the whole JSON answer.
pub async fn send_whole(
    pool: &Pool,
    path: &str,
    body: &mut Value,
    affinity: Option<u64>,
) -> Result<Answer<Value>, Failure> {
    attempts(pool, body, affinity, |lease, bytes| async move {
        let timeout = lease.backend.cfg.timeout;
        let exchange = async {
            let resp = match lease.backend.client.post(path, &bytes).await {
                Ok(r) => r,
                Err(e) => return unreachable(&lease, &e),
            };
            if !success(resp.status) {
                return status_failure(&lease, resp).await;
            }
            match resp.body.bytes(MAX_ANSWER).await {
                Ok(b) => match serde_json::from_slice::<Value>(&b) {
                    Ok(v) => Attempt::Done(v),
                    Err(e) => {
                        Attempt::Stop(Failure::Protocol(format!("the answer is not JSON: {e}")))
                    }
                },
                Err(e) => unreachable(&lease, &e),
            }
        };
        let attempt = match tokio::time::timeout(timeout, exchange).await {
            Ok(a) => a,
            Err(_) => timed_out(&lease),
        };
        (attempt, lease)
    })
    .await
}

/// Posts `body` and returns the successful streaming response as soon as its headers
/// arrive; reading it (with [`BackendConfig::idle_timeout`](crate::pool::BackendConfig)
/// between chunks) is the caller's.
pub async fn send_stream(
    pool: &Pool,
    path: &str,
    body: &mut Value,
    affinity: Option<u64>,
) -> Result<Answer<Body>, Failure> {
    attempts(pool, body, affinity, |lease, bytes| async move {
        let timeout = lease.backend.cfg.timeout;
        let sent = lease.backend.client.post(path, &bytes);
        let attempt = match tokio::time::timeout(timeout, sent).await {
            Err(_) => timed_out(&lease),
            Ok(Err(e)) => unreachable(&lease, &e),
            Ok(Ok(resp)) if success(resp.status) => Attempt::Done(resp.body),
            Ok(Ok(resp)) => status_failure(&lease, resp).await,
        };
        (attempt, lease)
    })
    .await
}

/// The idle timeout of the backend a lease holds.
pub fn idle_timeout(lease: &Lease) -> Duration {
    lease.backend.cfg.idle_timeout
}
