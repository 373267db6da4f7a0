//! A scripted OpenAI-compatible upstream for proxy tests: an axum server on a free loopback
//! port, on a thread (and tokio runtime) of its own so it outlives any one test runtime.
//!
//! It records every request, counts streams its client abandoned, can be made unhealthy,
//! and answers chat (and legacy completions, the same script as `choices[].text`) by the
//! request's `model` (the upstream name tokenfab sends):
//! `plain`, `think-inline`, `reasoning-field`, `reasoning-content`, `no-usage`, `slow`,
//! `fail-mid`, `status-500`, `status-400`, `status-429` (with `retry-after: 7`), `hang`,
//! `silent-500` (an error's head, then nothing of the body it promised) (any other name
//! answers as `plain`).
//!
//! [`Resetter`] is another upstream, whose every answer breaks off with a TCP reset.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const CHAT: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";
const PLAIN: &str = "Hello from the stub.";
const USAGE: (u64, u64) = (11, 5);

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// The JSON body (`Null` for none or non-JSON).
    pub body: Value,
    /// The `Authorization` header.
    pub auth: Option<String>,
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<Recorded>>,
    cancelled: AtomicUsize,
    unhealthy: AtomicBool,
}

/// A server on a free loopback port, run on a thread and tokio runtime of its own; stops
/// when dropped, its open connections and sleeping handlers with it.
struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Listens before returning, so the server answers at once; `serve` runs it.
    fn start<F, Fut>(serve: F) -> Background
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = serve(listener) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        Background {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The OpenAI base URL: `http://127.0.0.1:PORT/v1`.
    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running stub; stops when dropped.
pub struct Stub {
    shared: Arc<Shared>,
    server: Background,
}

impl Stub {
    /// Listens before returning, so the base URL answers at once.
    pub fn start() -> Stub {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let server = Background::start(|listener| async move {
            let app = axum::Router::new().fallback(handle).with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
        Stub { shared, server }
    }

    /// The OpenAI base URL: `http://127.0.0.1:PORT/v1`.
    pub fn base(&self) -> String {
        self.server.base()
    }

    /// Every request so far, health probes included, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The chat-completions requests so far.
    pub fn chats(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == CHAT)
            .collect()
    }

    /// Streamed answers whose body was dropped before its end.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Unhealthy: every route answers 503 before any byte.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.unhealthy.store(!healthy, Ordering::SeqCst);
    }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.log.lock().unwrap().push(Recorded {
        path: path.clone(),
        body: body.clone(),
        auth,
    });
    if s.unhealthy.load(Ordering::SeqCst) {
        let e = json!({"error": {"message": "the stub is down", "type": "service_unavailable"}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response();
    }
    match (method, path.as_str()) {
        (Method::GET, "/health") => Json(json!({"status": "ok"})).into_response(),
        (Method::GET, "/v1/models") => {
            let names = [
                "plain",
                "think-inline",
                "reasoning-field",
                "reasoning-content",
                "no-usage",
                "slow",
                "fail-mid",
                "status-500",
                "status-400",
                "status-429",
                "hang",
                "silent-500",
                "embed",
                "rerank",
            ];
            let data: Vec<Value> = names
                .iter()
                .map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "stub"}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        (Method::POST, CHAT) => chat(&s, &body, false).await,
        (Method::POST, COMPLETIONS) => chat(&s, &body, true).await,
        (Method::POST, "/v1/embeddings") => embeddings(&body),
        (Method::POST, "/v1/rerank") => rerank(&body),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "no such route", "type": "invalid_request_error"}})),
        )
            .into_response(),
    }
}

/// What a chat model name answers: delta pieces `(field, text)` in order.
struct Script {
    pieces: Vec<(&'static str, String)>,
    /// Before each streamed piece.
    gap: Duration,
    /// Before a whole (non-streamed) answer.
    delay: Duration,
    usage: bool,
    /// The stream breaks off after the pieces, without a finish or `[DONE]`.
    abort: bool,
}

fn words(field: &'static str, text: &str) -> Vec<(&'static str, String)> {
    text.split_inclusive(' ')
        .map(|w| (field, w.to_owned()))
        .collect()
}

fn script(model: &str) -> Script {
    let mut s = Script {
        pieces: words("content", PLAIN),
        gap: Duration::ZERO,
        delay: Duration::ZERO,
        usage: true,
        abort: false,
    };
    match model {
        "think-inline" => {
            s.pieces = ["<thi", "nk>I rea", "son.</th", "ink>The ", "answer."]
                .iter()
                .map(|p| ("content", (*p).to_owned()))
                .collect();
        }
        "reasoning-field" | "reasoning-content" => {
            let field = if model == "reasoning-field" {
                "reasoning"
            } else {
                "reasoning_content"
            };
            s.pieces = words(field, "I reason.");
            s.pieces.extend(words("content", "The answer."));
        }
        "no-usage" => s.usage = false,
        "slow" => {
            s.pieces = vec![("content", "tick ".to_owned()); 30];
            s.gap = Duration::from_millis(200);
            s.delay = Duration::from_secs(2);
        }
        "fail-mid" => {
            s.pieces = words("content", "one two three ");
            // Each piece is flushed before the next, so the break comes after them.
            s.gap = Duration::from_millis(50);
            s.abort = true;
        }
        _ => {}
    }
    s
}

/// A chat answer, or with `legacy` a text completion's (the answer's text in `text`).
async fn chat(s: &Arc<Shared>, req: &Value, legacy: bool) -> Response {
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "status-500" => {
            let e =
                json!({"error": {"message": "internal error: db password hunter2 at /srv/secret"}});
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(e)).into_response();
        }
        "status-400" => {
            let e = json!({"error": {
                "message": "temperature is out of range",
                "type": "invalid_request_error",
                "param": "temperature"
            }});
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        }
        "silent-500" => {
            let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header(header::CONTENT_LENGTH, 100)
                .body(Body::from_stream(never))
                .unwrap();
        }
        "status-429" => {
            let e = json!({"error": {"message": "slow down", "type": "rate_limit_error"}});
            let wait = [(header::RETRY_AFTER, "7")];
            return (StatusCode::TOO_MANY_REQUESTS, wait, Json(e)).into_response();
        }
        "hang" => tokio::time::sleep(Duration::from_secs(60)).await,
        _ => {}
    }
    let script = script(&model);
    if req["stream"].as_bool() == Some(true) {
        let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
        stream(s.clone(), &model, script, include_usage, legacy)
    } else {
        tokio::time::sleep(script.delay).await;
        let mut message = json!({"role": "assistant", "content": ""});
        for (field, text) in &script.pieces {
            let joined = format!("{}{text}", message[*field].as_str().unwrap_or_default());
            message[*field] = json!(joined);
        }
        let mut answer = json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        });
        if legacy {
            answer["object"] = json!("text_completion");
            answer["choices"] =
                json!([{"index": 0, "text": message["content"], "finish_reason": "stop"}]);
        }
        if script.usage {
            answer["usage"] = usage();
        }
        Json(answer).into_response()
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1, "total_tokens": USAGE.0 + USAGE.1})
}

/// Counts the stream as cancelled when dropped before its last step was sent.
struct Guard {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn stream(
    shared: Arc<Shared>,
    model: &str,
    script: Script,
    include_usage: bool,
    legacy: bool,
) -> Response {
    let object = if legacy {
        "text_completion"
    } else {
        "chat.completion.chunk"
    };
    let chunk = |choices: Value| {
        json!({
            "id": "chatcmpl-stub",
            "object": object,
            "created": 1700000000,
            "model": model,
            "choices": choices,
        })
        .to_string()
    };
    let delta = |d: Value, finish: Value| match legacy {
        false => chunk(json!([{"index": 0, "delta": d, "finish_reason": finish}])),
        true => {
            let text = d["content"].as_str().unwrap_or_default();
            chunk(json!([{"index": 0, "text": text, "finish_reason": finish}]))
        }
    };
    // (wait before, data); `None` data breaks the connection.
    let mut steps: VecDeque<(Duration, Option<String>)> = VecDeque::new();
    steps.push_back((
        Duration::ZERO,
        Some(delta(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )),
    ));
    for (field, text) in &script.pieces {
        let mut d = json!({});
        d[*field] = json!(text);
        steps.push_back((script.gap, Some(delta(d, Value::Null))));
    }
    if script.abort {
        steps.push_back((script.gap, None));
    } else {
        steps.push_back((Duration::ZERO, Some(delta(json!({}), json!("stop")))));
        if include_usage && script.usage {
            let mut c: Value = serde_json::from_str(&chunk(json!([]))).unwrap();
            c["usage"] = usage();
            steps.push_back((Duration::ZERO, Some(c.to_string())));
        }
        steps.push_back((Duration::ZERO, Some("[DONE]".to_owned())));
    }
    let guard = Guard {
        shared,
        finished: false,
    };
    let body = futures_util::stream::unfold((steps, guard), |(mut steps, mut guard)| async move {
        let (wait, data) = steps.pop_front()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if steps.is_empty() {
            guard.finished = true;
        }
        let item = match data {
            Some(d) => Ok(Bytes::from(format!("data: {d}\n\n"))),
            None => Err(std::io::Error::other("the stub breaks the stream off")),
        };
        Some((item, (steps, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn embeddings(req: &Value) -> Response {
    let n = match &req["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": req["model"],
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }))
    .into_response()
}

fn rerank(req: &Value) -> Response {
    let n = req["documents"].as_array().map_or(1, Vec::len);
    let results: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "relevance_score": 0.9 - 0.1 * i as f64}))
        .collect();
    Json(json!({
        "id": "r1",
        "results": results,
        "tokens": {"input_tokens": 9, "output_tokens": 0},
    }))
    .into_response()
}

/// An upstream whose answers break off with a TCP reset (`SO_LINGER` 0, then close), as
/// a crashing server or a middlebox cutting connections does: a stream after its first
/// two events, a whole answer halfway through the body its head promised. `GET`s (the
/// health probes, the model list) are answered, on connections kept alive. Raw HTTP/1.1
/// on the socket: no server library lets a handler reset its own connection.
pub struct Resetter {
    server: Background,
}

impl Resetter {
    pub fn start() -> Resetter {
        let server = Background::start(|listener| async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(reset_after_answering(tcp));
            }
        });
        Resetter { server }
    }

    pub fn base(&self) -> String {
        self.server.base()
    }
}

/// Serves one connection of the [`Resetter`].
async fn reset_after_answering(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut tcp, &mut buf).await {
        if head.starts_with("GET ") {
            let data = json!({"object": "list", "data": [
                {"id": "reset-mid", "object": "model", "created": 0, "owned_by": "stub"}
            ]})
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{data}",
                data.len()
            );
            if tcp.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let part = if body["stream"] == true {
            let mut out =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_owned();
            for text in ["one ", "two "] {
                let chunk = json!({"id": "chatcmpl-reset", "object": "chat.completion.chunk",
                    "created": 1700000000, "model": "reset-mid",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
                let event = format!("data: {chunk}\n\n");
                out += &format!("{:x}\r\n{event}\r\n", event.len());
            }
            out
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"id\": \"chatcmpl-reset\", \"object\": \"chat.completion\", \"choices\": [".to_owned()
        };
        let _ = tcp.write_all(part.as_bytes()).await;
        // Let the client have what was sent before the reset destroys what is unread.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tcp.set_zero_linger();
        return;
    }
}

/// The next request on a connection: its head and its JSON body (`Null` for none);
/// `None` once the client closes. `buf` keeps what was read past it.
async fn read_request(
    tcp: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Value)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = serde_json::from_slice(&buf[end..end + len]).unwrap_or(Value::Null);
    buf.drain(..end + len);
    Some((head, body))
}
