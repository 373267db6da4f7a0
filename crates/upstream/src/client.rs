//! Sending one request to a model's backends.
//!
//! A request goes to another backend only when the one tried did not take it on: that
//! one could not be reached (nothing was sent), or answered 5xx (it failed) or 429
//! (overloaded, not broken). Once the request was written and no answer came
//! (the connection ended or broke, or the backend's timeout ran out), it is never sent
//! elsewhere: the upstream may be executing it. Other 4xx answers describe the request
//! itself and are returned at once. Retries happen only while nothing has reached the
//! client: [`send_whole`] has the whole answer before it returns, [`send_stream`] returns
//! at the first byte of a successful stream, after which the caller owns the failure.
//! Backends that fail as servers (unreachable, broken off, too slow, 5xx) are taken out
//! for a backoff (see [`crate::pool`]).
//!
//! The policy is pure, and tested without a network: `judge` turns what an attempt came
//! to (a `Miss`) into a `Verdict`, and `Retry` follows one request through the backends.
//! `attempts` does the I/O around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::time::timeout_at;

use crate::http::{self, Body, Response, success};
use crate::pool::{Backend, Lease, Pool};

/// The largest whole answer read (embeddings of many long inputs run to tens of MB).
const MAX_ANSWER: usize = 1 << 30;
/// The most of an error answer read.
const MAX_ERROR: usize = 1 << 20;

/// Why no backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No backend could be reached (or none is configured): the request went nowhere.
    Unreachable,
    /// The request was sent and the backend's timeout ran out before its answer (the
    /// head of a stream, the whole of any other answer).
    Timeout,
    /// The request was sent and the connection ended or broke before the answer did.
    Broken,
    /// A backend's error status. `message` is the upstream's own error message for
    /// statuses that describe the client's request (400, 413, 422), and `None` for the
    /// others, whose bodies stay in the logs. `retry_after`: the seconds its
    /// `retry-after` header asked an overloaded client to wait (429, 503).
    Status {
        status: u16,
        message: Option<String>,
        retry_after: Option<u64>,
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

/// What an attempt on one backend came to, when it is not an answer to pass on.
#[derive(Debug)]
enum Miss {
    /// Nothing was sent: connecting failed or timed out, or the first write did.
    Unsent,
    /// The request was sent; the connection then ended or broke before the answer did.
    Broken,
    /// The request was sent; the backend's timeout ran out before the answer came.
    Late,
    /// An error status, with what was read of its body and its `retry-after`.
    Status {
        status: u16,
        body: Bytes,
        retry_after: Option<u64>,
    },
    /// An answer that is not what the API promises.
    Invalid(String),
}

impl Miss {
    /// The `kind` label of `tokenfab:upstream_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Miss::Unsent => "unreachable",
            Miss::Broken => "broken",
            Miss::Late => "timeout",
            Miss::Status { status: 429, .. } => "overloaded",
            Miss::Status { status: 500.., .. } => "server_error",
            Miss::Status { .. } => "client_error",
            Miss::Invalid(_) => "protocol",
        }
    }

    /// What a transport error means for the attempt.
    fn of(e: &http::Error) -> Miss {
        match e {
            e if !e.sent() => Miss::Unsent,
            http::Error::Timeout { .. } => Miss::Late,
            http::Error::Protocol(_) | http::Error::TooLarge(_) => Miss::Invalid(e.to_string()),
            _ => Miss::Broken,
        }
    }
}

/// What follows a miss.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// Take the backend out for a backoff: it failed as a server, rather than being
    /// overloaded or refusing the request.
    down: bool,
    /// Another backend may be tried: the request had no effect on this one.
    retry: bool,
    /// What the client is told if the request ends here.
    failure: Failure,
}

/// The retry policy.
fn judge(miss: Miss) -> Verdict {
    let verdict = |down, retry, failure| Verdict {
        down,
        retry,
        failure,
    };
    match miss {
        Miss::Unsent => verdict(true, true, Failure::Unreachable),
        Miss::Broken => verdict(true, false, Failure::Broken),
        Miss::Late => verdict(true, false, Failure::Timeout),
        Miss::Invalid(m) => verdict(false, false, Failure::Protocol(m)),
        Miss::Status {
            status,
            body,
            retry_after,
        } => {
            let failure = Failure::Status {
                status,
                message: client_status(status)
                    .then(|| error_message(&body))
                    .flatten(),
                retry_after,
            };
            match status {
                500.. => verdict(true, true, failure),
                429 => verdict(false, true, failure),
                _ => verdict(false, false, failure),
            }
        }
    }
}

/// One request's way through a model's backends: those tried, and what the client is
/// told if none answers.
struct Retry {
    tried: Vec<usize>,
    last: Failure,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            tried: Vec::new(),
            last: Failure::Unreachable,
        }
    }

    /// Takes in the verdict on the backend just tried: `Err` when the request ends here.
    fn missed(&mut self, verdict: Verdict) -> Result<(), Failure> {
        if !verdict.retry {
            return Err(verdict.failure);
        }
        self.last = verdict.failure;
        Ok(())
    }
}

/// Tries the backends in turn (each at most once) until one answers or the policy stops.
async fn attempts<T, F, Fut>(
    pool: &Pool,
    body: &mut Value,
    affinity: Option<u64>,
    mut one: F,
) -> Result<Answer<T>, Failure>
where
    F: FnMut(Arc<Backend>, Vec<u8>) -> Fut,
    Fut: Future<Output = Result<T, Miss>>,
{
    let mut retry = Retry::new();
    // The backend the last attempt failed on: the next attempt is a failover from it.
    let mut failed: Option<Arc<Backend>> = None;
    while let Some((i, lease)) = pool.pick(&retry.tried, affinity) {
        if let Some(from) = failed.take() {
            from.count_failover();
        }
        retry.tried.push(i);
        if let Some(obj) = body.as_object_mut() {
            obj.insert(
                "model".into(),
                Value::String(lease.backend.cfg.model.clone()),
            );
        }
        match one(lease.backend.clone(), body.to_string().into_bytes()).await {
            Ok(body) => {
                lease.backend.succeeded();
                return Ok(Answer { body, lease });
            }
            Err(miss) => {
                lease.backend.count_error(miss.kind());
                let verdict = judge(miss);
                if verdict.down {
                    lease.backend.failed();
                }
                retry.missed(verdict)?;
                failed = Some(lease.backend.clone());
            }
        }
    }
    Err(retry.last)
}

/// One post to `backend` within its timeout: a successful answer's head and the deadline
/// left for the rest, or the miss it came to.
async fn post(backend: &Backend, path: &str, bytes: &[u8]) -> Result<(Response, Instant), Miss> {
    let deadline = Instant::now() + backend.cfg.timeout;
    let resp = backend
        .client
        .post(path, bytes, deadline)
        .await
        .map_err(|e| lost(backend, e))?;
    if success(resp.status) {
        Ok((resp, deadline))
    } else {
        Err(refused(backend, resp, deadline).await)
    }
}

/// A transport error on `backend`, logged.
fn lost(backend: &Backend, e: http::Error) -> Miss {
    tracing::warn!(url = %backend.cfg.url, %e, sent = e.sent(), "upstream request failed");
    Miss::of(&e)
}

/// An error answer, its body read by `deadline` or within the idle timeout, whichever
/// ends first: a server going silent after the head cannot hold the request.
async fn refused(backend: &Backend, resp: Response, deadline: Instant) -> Miss {
    let cfg = &backend.cfg;
    let (status, retry_after) = (resp.status, resp.retry_after);
    let by = deadline.min(Instant::now() + cfg.idle_timeout);
    let body = timeout_at(by.into(), resp.body.bytes(MAX_ERROR))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if !client_status(status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(500)]);
        tracing::warn!(url = %cfg.url, model = %cfg.model, status, body = %text, "upstream answered with an error");
    }
    Miss::Status {
        status,
        body,
        retry_after,
    }
}

/// Posts `body` to `path` (e.g. `chat/completions`) and reads the whole JSON answer.
pub async fn send_whole(
    pool: &Pool,
    path: &str,
    body: &mut Value,
    affinity: Option<u64>,
) -> Result<Answer<Value>, Failure> {
    attempts(pool, body, affinity, |backend, bytes| async move {
        let (resp, deadline) = post(&backend, path, &bytes).await?;
        let whole = timeout_at(deadline.into(), resp.body.bytes(MAX_ANSWER))
            .await
            .unwrap_or(Err(http::Error::Timeout { sent: true }))
            .map_err(|e| lost(&backend, e))?;
        serde_json::from_slice(&whole)
            .map_err(|e| Miss::Invalid(format!("the answer is not JSON: {e}")))
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
    attempts(pool, body, affinity, |backend, bytes| async move {
        post(&backend, path, &bytes)
            .await
            .map(|(resp, _)| resp.body)
    })
    .await
}

/// The idle timeout of the backend a lease holds.
pub fn idle_timeout(lease: &Lease) -> Duration {
    lease.backend.cfg.idle_timeout
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use serde_json::json;
    use tokio::net::TcpStream;

    use super::*;
    use crate::http::testing::{Seen, answer, serve};
    use crate::pool::BackendConfig;

    fn status(status: u16, body: &str) -> Miss {
        Miss::Status {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
            retry_after: None,
        }
    }

    fn verdict(down: bool, retry: bool, failure: Failure) -> Verdict {
        Verdict {
            down,
            retry,
            failure,
        }
    }

    /// An error status without a message for the client.
    fn bare(status: u16) -> Failure {
        Failure::Status {
            status,
            message: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_request_that_was_not_sent_goes_to_the_next_backend() {
        let errors = [
            http::Error::Connect("h:1".into(), ErrorKind::ConnectionRefused.into()),
            http::Error::ConnectTimeout("h:1".into(), Duration::from_secs(3)),
            http::Error::Unsent(ErrorKind::BrokenPipe.into()),
            http::Error::Timeout { sent: false },
        ];
        for e in errors {
            let v = judge(Miss::of(&e));
            assert_eq!(v, verdict(true, true, Failure::Unreachable), "{e}");
        }
    }

    #[test]
    fn a_request_that_was_sent_and_not_answered_goes_nowhere_else() {
        let errors = [
            (
                http::Error::Unanswered(ErrorKind::UnexpectedEof.into()),
                Failure::Broken,
            ),
            (
                http::Error::Unanswered(ErrorKind::ConnectionReset.into()),
                Failure::Broken,
            ),
            (
                http::Error::Io(ErrorKind::ConnectionReset.into()),
                Failure::Broken,
            ),
            (http::Error::Closed, Failure::Broken),
            (http::Error::Timeout { sent: true }, Failure::Timeout),
        ];
        for (e, failure) in errors {
            assert_eq!(judge(Miss::of(&e)), verdict(true, false, failure), "{e}");
        }
        // An answer, if not one that makes sense: the backend is up.
        for e in [
            http::Error::Protocol("bad".into()),
            http::Error::TooLarge(9),
        ] {
            let f = Failure::Protocol(e.to_string());
            assert_eq!(judge(Miss::of(&e)), verdict(false, false, f));
        }
    }

    #[test]
    fn failing_and_overloaded_backends_pass_the_request_on() {
        let secret = r#"{"error": {"message": "db password hunter2"}}"#;
        for s in [500, 502, 503, 504] {
            assert_eq!(judge(status(s, secret)), verdict(true, true, bare(s)));
        }
        // Overloaded, not broken: it stays in.
        assert_eq!(judge(status(429, secret)), verdict(false, true, bare(429)));
    }

    #[test]
    fn overloaded_answers_keep_their_retry_after() {
        for s in [429, 503] {
            let miss = Miss::Status {
                status: s,
                body: Bytes::new(),
                retry_after: Some(7),
            };
            let failure = Failure::Status {
                status: s,
                message: None,
                retry_after: Some(7),
            };
            assert_eq!(judge(miss).failure, failure);
        }
    }

    #[test]
    fn client_errors_stop_with_the_upstreams_message() {
        let message = |status, m: &str| Failure::Status {
            status,
            message: Some(m.into()),
            retry_after: None,
        };
        let answers = [
            (
                400,
                r#"{"error": {"message": "temperature is out of range"}}"#,
                "temperature is out of range",
            ),
            (413, r#"{"detail": "too long"}"#, "too long"),
            (422, r#"{"message": "bad field"}"#, "bad field"),
        ];
        for (s, body, m) in answers {
            assert_eq!(judge(status(s, body)), verdict(false, false, message(s, m)));
        }
        assert_eq!(
            judge(status(400, "not json")),
            verdict(false, false, bare(400))
        );
        // Other refusals keep their bodies in the logs.
        for s in [401, 403, 404, 409] {
            let body = r#"{"error": {"message": "no key sk-secret"}}"#;
            assert_eq!(judge(status(s, body)), verdict(false, false, bare(s)));
        }
    }

    #[test]
    fn a_request_ends_at_a_verdict_that_stops_it_or_with_the_last_failure() {
        let mut r = Retry::new();
        // No backend at all.
        assert_eq!(r.last, Failure::Unreachable);
        assert_eq!(r.missed(judge(Miss::Unsent)), Ok(()));
        assert_eq!(r.missed(judge(status(429, ""))), Ok(()));
        assert_eq!(r.last, bare(429));
        assert_eq!(r.missed(judge(Miss::Broken)), Err(Failure::Broken));
    }

    fn backend(port: u16, timeout: Duration) -> BackendConfig {
        BackendConfig {
            url: format!("http://127.0.0.1:{port}/v1"),
            api_key: None,
            model: "m".into(),
            weight: 1,
            connect_timeout: Duration::from_secs(1),
            timeout,
            idle_timeout: Duration::from_secs(60),
            ca_file: None,
        }
    }

    /// A backend that read the request and closed without answering may be executing
    /// it: it goes to no other backend.
    /// One chat request through `pool`, whole or streamed: how it failed, if it did.
    async fn failure(pool: &Pool, stream: bool) -> Option<Failure> {
        let mut body = json!({"stream": stream});
        if stream {
            send_stream(pool, "chat/completions", &mut body, None)
                .await
                .err()
        } else {
            send_whole(pool, "chat/completions", &mut body, None)
                .await
                .err()
        }
    }

    #[tokio::test]
    async fn a_request_a_backend_may_have_received_goes_to_no_other() {
        async fn close(mut s: TcpStream, seen: Arc<Seen>) {
            answer(&mut s, &[""], &seen).await;
        }
        let (a, seen_a) = serve(close).await;
        let (b, seen_b) = serve(close).await;
        let second = Duration::from_secs(1);
        let pool = Pool::new(vec![backend(a, second), backend(b, second)], false).unwrap();
        for stream in [false, true] {
            assert_eq!(failure(&pool, stream).await, Some(Failure::Broken));
        }
        assert_eq!(seen_a.requests() + seen_b.requests(), 2);
    }

    /// An error's head, then silence: its body is waited for only within the backend's
    /// time, and the status still decides.
    #[tokio::test]
    async fn an_error_answer_that_goes_silent_is_given_up_on_in_time() {
        async fn silent(mut s: TcpStream, seen: Arc<Seen>) {
            let head = "HTTP/1.1 500 Oops\r\ncontent-length: 100\r\n\r\n";
            answer(&mut s, &[head], &seen).await;
            std::future::pending::<()>().await;
        }
        let (port, _) = serve(silent).await;
        let timeout = Duration::from_millis(300);
        let pool = Pool::new(vec![backend(port, timeout)], false).unwrap();
        for stream in [true, false] {
            let t0 = Instant::now();
            let failed = tokio::time::timeout(Duration::from_secs(5), failure(&pool, stream))
                .await
                .expect("no answer within 5 s");
            assert_eq!(failed, Some(bare(500)), "stream: {stream}");
            assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        }
    }
}
