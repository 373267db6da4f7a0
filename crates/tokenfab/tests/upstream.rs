//! Upstream (proxied) models end to end: the real binary in front of scripted
//! OpenAI-compatible stubs (tests/common/stub.rs) and, once, of a second tokenfab.
//!
//! Model renaming both ways, streams passed through as they come with usage asked for and
//! stripped, reasoning dialects normalised to `reasoning_content`, cancellation reaching
//! the upstream, retries only before the first byte, health probes, safe error mapping,
//! embeddings / rerank and the model list's type filters, billing from upstream usage or
//! the model's own tokenizer, and a SIGHUP reload that lets in-flight streams finish.

mod common;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::stub::{COMPLETIONS, Stub};
use common::{MODEL, Server, run, temp_db};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

const ADMIN: &str = "test-admin-key-0123456789";
const PLAIN: &str = "Hello from the stub.";

// ---- configuration ----

/// One `[[models.backends]]` table; `extra` holds more `key = value` lines.
fn backend(url: &str, model: &str, extra: &str) -> String {
    format!("[[models.backends]]\nurl = \"{url}\"\nmodel = \"{model}\"\n{extra}\n")
}

/// One `[[models]]` entry: `extra` lines (type, prices, ...), then its backends.
fn model(id: &str, extra: &str, backends: &[String]) -> String {
    format!(
        "\n[[models]]\nid = \"{id}\"\n{extra}\n{}",
        backends.concat()
    )
}

/// A model with a single backend on `stub` named `name`.
fn on(stub: &Stub, id: &str, name: &str) -> String {
    model(id, "", &[backend(&stub.base(), name, "")])
}

/// A base URL nothing listens on.
fn closed() -> String {
    format!("http://127.0.0.1:{}/v1", common::free_port())
}

fn write_config(path: &Path, toml: &str) {
    std::fs::write(path, toml).unwrap();
}

/// The server of a config file holding `toml`, plus `extra` flags; and the file's path.
fn serve(toml: &str, extra: &[&str]) -> (Server, PathBuf) {
    let path = temp_db("upstream").with_extension("toml");
    write_config(&path, toml);
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::start(&args), path)
}

// ---- requests ----

fn body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

fn streamed(model: &str, include_usage: bool) -> Value {
    let mut b = body(model);
    b["stream"] = json!(true);
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

async fn send(s: &Server, key: Option<&str>, path: &str, body: &Value) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(s.url(path)).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

/// A non-streamed request: (status, JSON answer).
async fn ask(s: &Server, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let r = send(s, key, path, body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, v)
}

async fn chat(s: &Server, body: &Value) -> (u16, Value) {
    ask(s, None, "/v1/chat/completions", body).await
}

/// `n` non-streamed requests to `model`, each with its own prompt; their statuses.
async fn many(s: &Server, model: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let mut b = body(model);
        b["messages"][0]["content"] = json!(format!("Say hello, number {i}."));
        let (status, v) = chat(s, &b).await;
        if status == 200 {
            assert_eq!(v["model"], model, "{v}");
            assert_eq!(v["choices"][0]["message"]["content"], PLAIN, "{v}");
        }
        statuses.push(status);
    }
    statuses
}

/// The `data:` payloads of an event stream as they arrive.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Sse {
    fn new(r: reqwest::Response) -> Sse {
        Sse {
            body: Box::pin(r.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next payload; `None` at the end of the body or when it breaks off.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8(self.buf.drain(..i + 2).collect()).unwrap();
                match event.trim_end().strip_prefix("data: ") {
                    Some(data) => return Some(data.to_owned()),
                    None => continue,
                }
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                _ => return None,
            }
        }
    }

    async fn rest(mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }
}

/// A streamed answer taken apart.
#[derive(Debug)]
struct Streamed {
    /// Every JSON payload, `[DONE]` left out.
    chunks: Vec<Value>,
    content: String,
    reasoning: String,
    /// The last payload was `[DONE]`.
    done: bool,
}

impl Streamed {
    fn of(events: &[String]) -> Streamed {
        let done = events.last().is_some_and(|e| e == "[DONE]");
        assert!(
            events.iter().filter(|e| *e == "[DONE]").count() <= usize::from(done),
            "[DONE] only at the end: {events:?}"
        );
        let chunks: Vec<Value> = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}")))
            .collect();
        let (mut content, mut reasoning) = (String::new(), String::new());
        for c in &chunks {
            for choice in c["choices"].as_array().into_iter().flatten() {
                let d = &choice["delta"];
                assert!(d.get("reasoning").is_none(), "a `reasoning` key: {c}");
                content += d["content"].as_str().unwrap_or_default();
                reasoning += d["reasoning_content"].as_str().unwrap_or_default();
            }
        }
        Streamed {
            chunks,
            content,
            reasoning,
            done,
        }
    }

    /// The chunks that carry usage.
    fn usage_chunks(&self) -> Vec<&Value> {
        self.chunks
            .iter()
            .filter(|c| c["usage"].is_object())
            .collect()
    }
}

/// A streamed chat request's events as they come, once it was answered 200.
async fn open(s: &Server, key: Option<&str>, body: &Value) -> Sse {
    let r = send(s, key, "/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200, "{body}");
    Sse::new(r)
}

/// A streamed request read to its end.
async fn stream(s: &Server, key: Option<&str>, body: &Value) -> Streamed {
    Streamed::of(&open(s, key, body).await.rest().await)
}

/// Asserts an OpenAI-shaped error body; returns it.
fn openai_error(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    v
}

async fn model_ids(s: &Server, query: &str) -> Vec<String> {
    let r = reqwest::get(s.url(&format!("/v1/models{query}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- proxying ----

/// The model is renamed to the upstream's on the way up and back on the way down, the
/// upstream key is sent, and usage is always asked for upstream but reaches the client
/// only when it asked, as exactly one `choices: []` chunk before `[DONE]`.
#[test]
fn proxy_renames_the_model_and_passes_usage_through() {
    let stub = Stub::start();
    let toml = model(
        "up/plain",
        "",
        &[backend(
            &stub.base(),
            "plain",
            "api_key = \"upstream-secret\"",
        )],
    );
    let (s, _) = serve(&toml, &[]);
    run(async {
        let (status, v) = chat(&s, &body("up/plain")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "up/plain");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], PLAIN);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 11, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 16);
        let sent = stub.chats().pop().unwrap();
        assert_eq!(sent.body["model"], "plain");
        assert_eq!(sent.body["messages"][0]["content"], "Say hello.");
        assert_eq!(sent.auth.as_deref(), Some("Bearer upstream-secret"));

        // Streamed, usage not asked for: asked upstream anyway, stripped here.
        let out = stream(&s, None, &streamed("up/plain", false)).await;
        let sent = stub.chats().pop().unwrap();
        assert_eq!(sent.body["model"], "plain");
        assert_eq!(sent.body["stream"], true);
        assert_eq!(
            sent.body["stream_options"]["include_usage"], true,
            "{}",
            sent.body
        );
        assert!(out.done, "{out:?}");
        assert_eq!(out.content, PLAIN);
        assert!(out.chunks.len() >= 4, "passed through chunk by chunk");
        assert!(
            out.chunks.iter().all(|c| c["model"] == "up/plain"),
            "{out:?}"
        );
        assert!(out.usage_chunks().is_empty(), "{out:?}");

        // Asked for: exactly one usage chunk, the last before [DONE].
        let out = stream(&s, None, &streamed("up/plain", true)).await;
        assert!(out.done);
        assert_eq!(out.content, PLAIN);
        assert!(
            out.chunks.iter().all(|c| c["model"] == "up/plain"),
            "{out:?}"
        );
        let usage = out.usage_chunks();
        assert_eq!(usage.len(), 1, "{out:?}");
        assert_eq!(usage[0], out.chunks.last().unwrap());
        assert_eq!(usage[0]["choices"], json!([]));
        assert_eq!(usage[0]["usage"]["prompt_tokens"], 11);
        assert_eq!(usage[0]["usage"]["completion_tokens"], 5);
        assert_eq!(usage[0]["usage"]["total_tokens"], 16);
        assert_eq!(
            stub.cancelled(),
            0,
            "streams read to the end are not cancelled"
        );
    });
}

/// A stream reaches the client as the upstream sends it, not when it ends.
#[test]
fn streams_are_passed_through_as_they_come() {
    let stub = Stub::start();
    let (s, _) = serve(&on(&stub, "up/slow", "slow"), &[]);
    run(async {
        let t0 = Instant::now();
        let mut sse = open(&s, None, &streamed("up/slow", false)).await;
        let mut events = Vec::new();
        let mut first_content = None;
        while let Some(e) = sse.next().await {
            if first_content.is_none() && e.contains("tick") {
                first_content = Some(t0.elapsed());
            }
            events.push(e);
        }
        let whole = t0.elapsed();
        let first = first_content.expect("content arrived");
        assert!(
            first < Duration::from_millis(1500),
            "first content after {first:?}"
        );
        assert!(whole > Duration::from_secs(4), "whole stream in {whole:?}");
        let out = Streamed::of(&events);
        assert!(out.done);
        assert_eq!(out.content, "tick ".repeat(30));
    });
}

/// Inline `<think>` tags (split across chunks), vLLM's `reasoning` and DeepSeek's
/// `reasoning_content` all come out as `reasoning_content` + `content`, streamed or not.
#[test]
fn reasoning_dialects_become_reasoning_content() {
    let stub = Stub::start();
    let names = ["think-inline", "reasoning-field", "reasoning-content"];
    let toml: String = names
        .iter()
        .map(|n| on(&stub, &format!("up/{n}"), n))
        .collect();
    let (s, _) = serve(&toml, &[]);
    run(async {
        for name in names {
            let id = format!("up/{name}");
            let (status, v) = chat(&s, &body(&id)).await;
            assert_eq!(status, 200, "{v}");
            let m = &v["choices"][0]["message"];
            assert_eq!(m["reasoning_content"], "I reason.", "{name}: {v}");
            assert_eq!(m["content"], "The answer.", "{name}: {v}");
            assert!(m.get("reasoning").is_none(), "{name}: {v}");

            let out = stream(&s, None, &streamed(&id, false)).await;
            assert!(out.done, "{name}");
            assert_eq!(out.reasoning, "I reason.", "{name}: {out:?}");
            assert_eq!(out.content, "The answer.", "{name}: {out:?}");
            for text in [&out.reasoning, &out.content] {
                assert!(!text.contains("<think>") && !text.contains("</think>"));
            }
        }
    });
}

/// An upstream that splits the thought but reports no reasoning tokens (llama-server with
/// `--reasoning-format deepseek`) gets them counted; and `enable_thinking` /
/// `thinking_budget` go up in each dialect's own fields, or are refused where the upstream
/// cannot enforce them.
#[test]
fn thinking_fields_speak_the_upstreams_dialect_and_reasoning_tokens_are_counted() {
    let stub = Stub::start();
    let toml = [
        model(
            "up/vllm",
            "dialect = \"vllm\"",
            &[backend(&stub.base(), "reasoning-content", "")],
        ),
        model(
            "up/cpp",
            "dialect = \"llama.cpp\"",
            &[backend(&stub.base(), "reasoning-field", "")],
        ),
        model(
            "up/sglang",
            "dialect = \"sglang\"",
            &[backend(&stub.base(), "plain", "")],
        ),
    ]
    .concat();
    let (s, _) = serve(&toml, &[]);
    let sent = |name: &str| {
        stub.chats()
            .into_iter()
            .rev()
            .find(|r| r.body["model"] == name)
            .unwrap()
            .body
    };
    run(async {
        // "I reason." is 9 bytes: 3 tokens estimated (no tokenizer is configured).
        let mut b = body("up/vllm");
        b["enable_thinking"] = json!(false);
        b["thinking_budget"] = json!(64);
        let (status, v) = chat(&s, &b).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"], 3,
            "{v}"
        );
        let up = sent("reasoning-content");
        assert_eq!(up["chat_template_kwargs"]["enable_thinking"], false, "{up}");
        assert_eq!(up["thinking_token_budget"], 64, "{up}");
        assert!(up.get("enable_thinking").is_none() && up.get("thinking_budget").is_none());

        let mut b = streamed("up/cpp", true);
        b["thinking_budget"] = json!(32);
        let out = stream(&s, None, &b).await;
        assert_eq!(out.reasoning, "I reason.");
        let usage = &out.usage_chunks()[0]["usage"];
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"], 3,
            "{usage}"
        );
        assert_eq!(sent("reasoning-field")["thinking_budget_tokens"], 32);

        let mut b = body("up/sglang");
        b["enable_thinking"] = json!(true);
        assert_eq!(chat(&s, &b).await.0, 200);
        assert_eq!(
            sent("plain")["chat_template_kwargs"]["enable_thinking"],
            true
        );
        b["thinking_budget"] = json!(16);
        let (status, v) = chat(&s, &b).await;
        assert_eq!(
            (status, &v["error"]["param"]),
            (400, &json!("thinking_budget")),
            "{v}"
        );
    });
}

/// A client that hangs up mid-stream makes tokenfab drop the upstream stream too.
#[test]
fn a_client_hanging_up_cancels_the_upstream_stream() {
    let stub = Stub::start();
    let (s, _) = serve(&on(&stub, "up/slow", "slow"), &[]);
    run(async {
        let mut sse = open(&s, None, &streamed("up/slow", false)).await;
        for _ in 0..2 {
            assert!(sse.next().await.is_some());
        }
        assert_eq!(stub.cancelled(), 0);
        drop(sse);
        eventually(
            "the upstream stream cancelled",
            Duration::from_secs(3),
            async || stub.cancelled() >= 1,
        )
        .await;
    });
}

// ---- several backends ----

/// A dead or failing backend is retried on another before the first byte; a stream that
/// breaks after bytes were sent is never retried, and ends with an error event.
#[test]
fn requests_fail_over_before_the_first_byte_only() {
    let (a, b) = (Stub::start(), Stub::start());
    let no_affinity = "affinity = false";
    let gone = closed();
    let toml = [
        model(
            "up/retry",
            no_affinity,
            &[backend(&gone, "plain", ""), backend(&a.base(), "plain", "")],
        ),
        model(
            "up/failover",
            no_affinity,
            &[
                backend(&a.base(), "status-500", ""),
                backend(&b.base(), "plain", ""),
            ],
        ),
        model(
            "up/fail-mid",
            no_affinity,
            &[
                backend(&a.base(), "fail-mid", ""),
                backend(&b.base(), "fail-mid", ""),
            ],
        ),
    ]
    .concat();
    let (s, _) = serve(&toml, &[]);
    let tried = |stub: &Stub, name: &str| {
        stub.chats()
            .iter()
            .filter(|r| r.body["model"] == name)
            .count()
    };
    run(async {
        assert_eq!(many(&s, "up/retry", 10).await, vec![200; 10]);
        // Streams too are retried while nothing was sent.
        let out = stream(&s, None, &streamed("up/retry", false)).await;
        assert!(out.done);
        assert_eq!(out.content, PLAIN);

        assert_eq!(many(&s, "up/failover", 20).await, vec![200; 20]);
        assert!(
            tried(&a, "status-500") >= 1,
            "the failing backend was never tried"
        );

        let events = open(&s, None, &streamed("up/fail-mid", false))
            .await
            .rest()
            .await;
        assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert!(
            last["error"]["message"].is_string(),
            "ends with an error event: {events:?}"
        );
        let out = Streamed::of(&events[..events.len() - 1]);
        assert!(out.content.starts_with("one "), "{events:?}");
        assert_eq!(
            tried(&a, "fail-mid") + tried(&b, "fail-mid"),
            1,
            "a stream that sent bytes is not retried"
        );

        // The metrics tell the same story: each failed attempt by its kind, each retry
        // elsewhere a failover, the closed backend out, nothing left in flight.
        let page = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let m = |name: &str, labels: &[(&str, &str)]| {
            common::metric(&page, name, labels).unwrap_or_else(|| panic!("{name} {labels:?}"))
        };
        let errors = "tokenfab:upstream_errors_total";
        let failovers = "tokenfab:upstream_failovers_total";
        let unreachable = m(errors, &[("backend", &gone), ("kind", "unreachable")]);
        assert!(unreachable >= 1.0);
        assert_eq!(m(failovers, &[("upstream_model", "plain")]), unreachable);
        let five_hundreds = tried(&a, "status-500") as f64;
        assert_eq!(
            m(
                errors,
                &[("upstream_model", "status-500"), ("kind", "server_error")]
            ),
            five_hundreds
        );
        assert_eq!(
            m(failovers, &[("upstream_model", "status-500")]),
            five_hundreds
        );
        assert_eq!(m("tokenfab:upstream_up", &[("backend", &gone)]), 0.0);
        assert_eq!(m("tokenfab:upstream_in_flight", &[]), 0.0);
    });
}

/// A backend that fails its health probes gets no requests until it passes them again.
#[test]
fn unhealthy_backends_are_skipped_until_they_recover() {
    let (a, b) = (Stub::start(), Stub::start());
    let toml = model(
        "up/hc",
        "affinity = false\nhealth_interval_s = 1",
        &[
            backend(&a.base(), "plain", ""),
            backend(&b.base(), "plain", ""),
        ],
    );
    let (s, _) = serve(&toml, &[]);
    run(async {
        a.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = a.chats().len();
        assert_eq!(many(&s, "up/hc", 10).await, vec![200; 10]);
        assert_eq!(
            a.chats().len(),
            before,
            "the unhealthy backend got requests"
        );

        a.set_healthy(true);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(many(&s, "up/hc", 20).await, vec![200; 20]);
        assert!(
            a.chats().len() > before,
            "the recovered backend got no requests"
        );
    });
}

// ---- errors ----

/// Upstream failures become OpenAI-shaped errors: a 500 becomes 502/503 without leaking
/// its message, a 400 keeps its message, a silent upstream times out as 504, an
/// unreachable one is 503.
#[test]
fn upstream_errors_map_to_safe_openai_errors() {
    let stub = Stub::start();
    let toml = [
        on(&stub, "up/err500", "status-500"),
        on(&stub, "up/err400", "status-400"),
        model(
            "up/hang",
            "",
            &[backend(&stub.base(), "hang", "timeout_s = 1")],
        ),
        model("up/dead", "", &[backend(&closed(), "plain", "")]),
    ]
    .concat();
    let (s, _) = serve(&toml, &[]);
    run(async {
        let outcome = async |b: &Value| {
            let t0 = Instant::now();
            let r = send(&s, None, "/v1/chat/completions", b).await;
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text, t0.elapsed())
        };
        for b in [body("up/err500"), streamed("up/err500", false)] {
            let (status, text, _) = outcome(&b).await;
            assert!(status == 502 || status == 503, "{status} {text}");
            openai_error(&text);
            assert!(
                !text.contains("hunter2") && !text.contains("/srv/secret"),
                "{text}"
            );
        }

        let mut b = body("up/err400");
        b["temperature"] = json!(0.5);
        let (status, text, _) = outcome(&b).await;
        assert_eq!(status, 400, "{text}");
        let e = openai_error(&text);
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("temperature is out of range"),
            "{e}"
        );

        let (status, text, took) = outcome(&body("up/hang")).await;
        assert_eq!(status, 504, "{text}");
        openai_error(&text);
        assert!(took < Duration::from_secs(10), "{took:?}");

        let (status, text, _) = outcome(&body("up/dead")).await;
        assert_eq!(status, 503, "{text}");
        openai_error(&text);
    });
}

/// When every backend is overloaded, the client is told to come back when the upstream
/// said it could: its `retry-after` is passed on with the 503, streamed or not.
#[test]
fn an_overloaded_upstreams_retry_after_reaches_the_client() {
    let stub = Stub::start();
    let (s, _) = serve(&on(&stub, "up/busy", "status-429"), &[]);
    run(async {
        for b in [body("up/busy"), streamed("up/busy", false)] {
            let r = send(&s, None, "/v1/chat/completions", &b).await;
            let status = r.status().as_u16();
            let wait = r.headers().get("retry-after").cloned();
            let text = r.text().await.unwrap();
            assert_eq!(status, 503, "{text}");
            assert_eq!(
                wait.as_ref().and_then(|v| v.to_str().ok()),
                Some("7"),
                "{b}"
            );
            openai_error(&text);
        }
    });
}

/// An upstream that sends an error's head and then none of its body is given up on within
/// the backend's timeout, streamed or not, and its status still decides (502).
#[test]
fn an_error_head_followed_by_silence_fails_in_time() {
    let stub = Stub::start();
    let toml = model(
        "up/silent",
        "",
        &[backend(&stub.base(), "silent-500", "timeout_s = 1")],
    );
    let (s, _) = serve(&toml, &[]);
    run(async {
        for b in [streamed("up/silent", false), body("up/silent")] {
            let t0 = Instant::now();
            let sent = send(&s, None, "/v1/chat/completions", &b);
            let r = tokio::time::timeout(Duration::from_secs(20), sent)
                .await
                .unwrap_or_else(|_| panic!("no answer within 20 s: {b}"));
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 502, "{text}");
            openai_error(&text);
            assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        }
    });
}

// ---- model kinds ----

/// `/v1/models` lists local and upstream models and filters them by `type` / `sub_type`;
/// embeddings and rerank requests go to their upstream models; embeddings refuse a chat model.
#[test]
fn models_by_type_and_proxied_embeddings_and_rerank() {
    let stub = Stub::start();
    let toml = format!(
        "\n[[models]]\nid = \"local/smol\"\nsource = \"{MODEL}\"\n{}",
        [
            on(&stub, "up/plain", "plain"),
            model(
                "up/embed",
                "type = \"embedding\"",
                &[backend(&stub.base(), "embed", "")],
            ),
            model(
                "up/rerank",
                "type = \"reranker\"",
                &[backend(&stub.base(), "rerank", "")],
            ),
        ]
        .concat()
    );
    let (s, _) = serve(&toml, &[]);
    run(async {
        let all = model_ids(&s, "").await;
        for id in ["local/smol", "up/plain", "up/embed", "up/rerank"] {
            assert!(all.iter().any(|m| m == id), "{id} not in {all:?}");
        }
        assert_eq!(model_ids(&s, "?type=embedding").await, ["up/embed"]);
        assert_eq!(model_ids(&s, "?sub_type=reranker").await, ["up/rerank"]);
        let mut chat_models = model_ids(&s, "?type=chat").await;
        chat_models.sort();
        assert_eq!(chat_models, ["local/smol", "up/plain"]);

        let (status, v) = ask(
            &s,
            None,
            "/v1/embeddings",
            &json!({"model": "up/embed", "input": ["a", "b"]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "up/embed");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"], json!([0.1, 0.2, 0.3]));
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        let sent = stub.requests().pop().unwrap();
        assert_eq!(sent.path, "/v1/embeddings");
        assert_eq!(sent.body["model"], "embed");
        assert_eq!(sent.body["input"], json!(["a", "b"]));

        let docs = json!(["red", "green", "blue"]);
        let (status, v) = ask(
            &s,
            None,
            "/v1/rerank",
            &json!({"model": "up/rerank", "query": "a colour", "documents": docs}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), 3);
        assert_eq!(v["results"][0]["index"], 0);
        assert_eq!(v["results"][0]["relevance_score"], 0.9);
        assert!(
            v.get("model").is_none_or(|m| m == "up/rerank"),
            "the upstream name leaked: {v}"
        );
        let sent = stub.requests().pop().unwrap();
        assert_eq!(sent.path, "/v1/rerank");
        assert_eq!(sent.body["model"], "rerank");
        assert_eq!(sent.body["documents"], docs);

        for chat_model in ["up/plain", "local/smol"] {
            let (status, v) = ask(
                &s,
                None,
                "/v1/embeddings",
                &json!({"model": chat_model, "input": "a"}),
            )
            .await;
            assert_eq!(status, 400, "{chat_model}: {v}");
            openai_error(&v.to_string());
        }
    });
}

// ---- tokenfab behind tokenfab ----

/// A tokenfab in front of another answers a greedy request exactly as the one behind it
/// does, streamed and not, with usage.
#[test]
fn a_tokenfab_upstream_answers_like_the_tokenfab_behind_it() {
    let back = Server::start(&[]);
    let toml = model("front/smol", "", &[backend(&back.url("/v1"), MODEL, "")]);
    let (front, _) = serve(&toml, &[]);
    run(async {
        let greedy = |model: &str| {
            json!({
                "model": model,
                "messages": [{"role": "user", "content": "Name three colours."}],
                "temperature": 0,
                "max_tokens": 8,
            })
        };
        let (status, direct) = chat(&back, &greedy(MODEL)).await;
        assert_eq!(status, 200, "{direct}");
        let (status, proxied) = chat(&front, &greedy("front/smol")).await;
        assert_eq!(status, 200, "{proxied}");
        assert_eq!(proxied["model"], "front/smol");
        let text = direct["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!text.is_empty());
        assert_eq!(proxied["choices"][0]["message"]["content"], text);
        // The counts, not the prefix cache's share (the back computed this prompt before).
        let counts = |u: &Value| {
            ["prompt_tokens", "completion_tokens", "total_tokens"].map(|k| u[k].as_u64().unwrap())
        };
        assert_eq!(counts(&proxied["usage"]), counts(&direct["usage"]));

        let mut b = greedy("front/smol");
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
        let out = stream(&front, None, &b).await;
        assert!(out.done);
        assert_eq!(out.content, text);
        assert!(
            out.chunks.iter().all(|c| c["model"] == "front/smol"),
            "{out:?}"
        );
        let usage = out.usage_chunks();
        assert_eq!(usage.len(), 1, "{out:?}");
        assert_eq!(counts(&usage[0]["usage"]), counts(&direct["usage"]));
    });
}

// ---- billing ----

fn micros(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i64 = int.trim_start_matches('-').parse().unwrap();
    let frac: i64 = format!("{frac:0<6}").parse().unwrap();
    let v = whole * 1_000_000 + frac;
    if int.starts_with('-') { -v } else { v }
}

async fn admin(s: &Server, path: &str, body: Option<Value>) -> Value {
    let c = reqwest::Client::new();
    let r = match body {
        Some(b) => c.post(s.url(path)).json(&b),
        None => c.get(s.url(path)),
    };
    let r = r.bearer_auth(ADMIN).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// The account's balance in micro-units once nothing is reserved any more.
async fn settled_balance(s: &Server, account: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = admin(s, &format!("/admin/accounts/{account}"), None).await;
        if micros(&a["reserved"]) == 0 {
            return micros(&a["balance"]);
        }
        assert!(Instant::now() < deadline, "still reserved: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 1000 and 2000 micro-units per prompt and generated token.
fn cost(usage: &Value) -> i64 {
    usage["prompt_tokens"].as_i64().unwrap() * 1000
        + usage["completion_tokens"].as_i64().unwrap() * 2000
}

/// Upstream answers are charged from the upstream's usage, streamed or not; an upstream
/// that reports none is counted with the model's tokenizer, and charged for it.
#[test]
fn upstream_requests_are_billed_from_usage_or_the_tokenizer() {
    let stub = Stub::start();
    let prices =
        "input_per_million = \"1000\"\noutput_per_million = \"2000\"\ncontext_length = 4096";
    let toml = [
        model("up/paid", prices, &[backend(&stub.base(), "plain", "")]),
        model(
            "up/counted",
            &format!("{prices}\ntokenizer = \"{MODEL}\""),
            &[backend(&stub.base(), "no-usage", "")],
        ),
    ]
    .concat();
    let (s, _) = serve(&toml, &["--admin-key", ADMIN]);
    run(async {
        admin(&s, "/admin/accounts", Some(json!({"name": "buyer"}))).await;
        admin(
            &s,
            "/admin/accounts/buyer/credit",
            Some(json!({"amount": "100.00"})),
        )
        .await;
        let k = admin(&s, "/admin/keys", Some(json!({"account": "buyer"}))).await;
        let key = k["key"].as_str().unwrap().to_owned();
        let key = Some(key.as_str());
        let exact = 11 * 1000 + 5 * 2000;

        let b0 = settled_balance(&s, "buyer").await;
        let (status, v) = ask(&s, key, "/v1/chat/completions", &body("up/paid")).await;
        assert_eq!(status, 200, "{v}");
        let b1 = settled_balance(&s, "buyer").await;
        assert_eq!(b0 - b1, exact, "{v}");

        let out = stream(&s, key, &streamed("up/paid", true)).await;
        assert_eq!(out.usage_chunks().len(), 1, "{out:?}");
        let b2 = settled_balance(&s, "buyer").await;
        assert_eq!(b1 - b2, exact);

        // No usage upstream: counted here.
        let out = stream(&s, key, &streamed("up/counted", true)).await;
        assert!(out.done);
        assert_eq!(out.content, PLAIN);
        let usage = out.usage_chunks();
        assert_eq!(usage.len(), 1, "{out:?}");
        let usage = usage[0]["usage"].clone();
        assert!(usage["completion_tokens"].as_i64().unwrap() > 0, "{usage}");
        let b3 = settled_balance(&s, "buyer").await;
        assert!(b2 - b3 > 0, "not charged");
        assert_eq!(b2 - b3, cost(&usage), "{usage}");

        let (status, v) = ask(&s, key, "/v1/chat/completions", &body("up/counted")).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["usage"]["completion_tokens"].as_i64().unwrap() > 0, "{v}");
        let b4 = settled_balance(&s, "buyer").await;
        assert_eq!(b3 - b4, cost(&v["usage"]), "{v}");
    });
}

/// `/v1/completions` is forwarded to the upstream's `/v1/completions` like chat: the
/// model renamed, streams passed on with usage asked upstream and sent only when asked
/// for, and billed from the upstream's usage or, without one, the model's tokenizer.
#[test]
fn completions_are_proxied_and_billed_like_chat() {
    let stub = Stub::start();
    let prices =
        "input_per_million = \"1000\"\noutput_per_million = \"2000\"\ncontext_length = 4096";
    let toml = [
        model("up/paid", prices, &[backend(&stub.base(), "plain", "")]),
        model(
            "up/counted",
            &format!("{prices}\ntokenizer = \"{MODEL}\""),
            &[backend(&stub.base(), "no-usage", "")],
        ),
    ]
    .concat();
    let (s, _) = serve(&toml, &["--admin-key", ADMIN]);
    run(async {
        admin(&s, "/admin/accounts", Some(json!({"name": "coder"}))).await;
        let credit = json!({"amount": "100.00"});
        admin(&s, "/admin/accounts/coder/credit", Some(credit)).await;
        let k = admin(&s, "/admin/keys", Some(json!({"account": "coder"}))).await;
        let key = k["key"].as_str().unwrap().to_owned();
        let key = Some(key.as_str());
        let body = |m: &str| json!({"model": m, "prompt": "Say hello.", "max_tokens": 9});
        let last_sent = || {
            let sent = stub.requests();
            sent.into_iter().rfind(|r| r.path == COMPLETIONS).unwrap()
        };

        let b0 = settled_balance(&s, "coder").await;
        let (status, v) = ask(&s, key, "/v1/completions", &body("up/paid")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["model"].as_str(), v["object"].as_str()),
            (Some("up/paid"), Some("text_completion"))
        );
        assert_eq!(v["choices"][0]["text"], PLAIN);
        let sent = last_sent();
        assert_eq!(sent.body["model"], "plain");
        assert_eq!(sent.body["prompt"], "Say hello.");
        let b1 = settled_balance(&s, "coder").await;
        assert_eq!(b0 - b1, 11 * 1000 + 5 * 2000, "{v}");

        let mut streamed = body("up/paid");
        streamed["stream"] = json!(true);
        let events = send(&s, key, "/v1/completions", &streamed)
            .await
            .text()
            .await
            .unwrap();
        let events = common::sse_events(&events);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, PLAIN);
        assert!(
            chunks
                .iter()
                .all(|c| c["model"] == "up/paid" && c["usage"].is_null())
        );
        assert_eq!(last_sent().body["stream_options"]["include_usage"], true);
        let b2 = settled_balance(&s, "coder").await;
        assert_eq!(b1 - b2, 11 * 1000 + 5 * 2000);

        // No usage upstream: the prompt and the text are counted with the tokenizer, and
        // the one usage chunk asked for is a text completion's.
        streamed["model"] = json!("up/counted");
        streamed["stream_options"] = json!({"include_usage": true});
        let events = send(&s, key, "/v1/completions", &streamed)
            .await
            .text()
            .await
            .unwrap();
        let events = common::sse_events(&events);
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(
            (last["choices"].clone(), last["object"].clone()),
            (json!([]), json!("text_completion"))
        );
        let usage = last["usage"].clone();
        assert!(usage["completion_tokens"].as_i64().unwrap() > 0, "{usage}");
        let b3 = settled_balance(&s, "coder").await;
        assert_eq!(b2 - b3, cost(&usage), "{usage}");

        let (status, v) = ask(
            &s,
            key,
            "/v1/completions",
            &json!({"model": "up/paid", "prompt": 3}),
        )
        .await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("prompt")),
            "{v}"
        );
    });
}

// ---- reload ----

/// A server whose models come from flags has nothing to reload: SIGHUP leaves it serving
/// (a signal's default action would end it).
#[test]
fn a_hangup_without_a_config_file_is_ignored() {
    let s = Server::start(&[]);
    run(async {
        s.signal("HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, v) = chat(&s, &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})).await;
        assert_eq!(status, 200, "{v}");
    });
}

/// SIGHUP rereads the config file: the model list changes within seconds and a stream
/// already running on a removed model still finishes.
#[test]
fn sighup_reloads_models_and_running_streams_finish() {
    let stub = Stub::start();
    let (s, config) = serve(&on(&stub, "up/one", "slow"), &[]);
    run(async {
        let mut sse = open(&s, None, &streamed("up/one", false)).await;
        let mut events = Vec::new();
        while !events.iter().any(|e: &String| e.contains("tick")) {
            events.push(sse.next().await.expect("the stream started"));
        }

        write_config(&config, &on(&stub, "up/two", "plain"));
        s.signal("HUP");
        eventually(
            "the reloaded model list",
            Duration::from_secs(5),
            async || {
                let ids = model_ids(&s, "").await;
                ids.iter().any(|m| m == "up/two") && !ids.iter().any(|m| m == "up/one")
            },
        )
        .await;
        let (status, v) = chat(&s, &body("up/two")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "up/two");
        assert_eq!(v["choices"][0]["message"]["content"], PLAIN);
        let (status, v) = chat(&s, &body("up/one")).await;
        assert_eq!(status, 404, "{v}");

        events.extend(sse.rest().await);
        let out = Streamed::of(&events);
        assert!(out.done, "the running stream was cut: {events:?}");
        assert_eq!(out.content, "tick ".repeat(30));
        assert_eq!(stub.cancelled(), 0);
    });
}
