//! Requests for upstream models: admitted and billed like local ones, forwarded by
//! [`tokenfab_upstream`], answered chunk by chunk.
//!
//! The body is passed on as the client sent it (fields tokenfab does not know included),
//! with three changes: the upstream's model name, the operator's ceiling on `max_tokens`,
//! and, for streams, `stream_options.include_usage` so that the upstream reports what to
//! bill. Usage comes from the upstream when it reports it, else from counting with the
//! model's tokenizer, else from the text's length, and the ledger records which.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokenfab_platform::store::{Outcome, Source};
use tokenfab_platform::{Admission, Caller};
use tokenfab_upstream::client::{self, Answer, Failure};
use tokenfab_upstream::normalize::{self, StreamFilter};
use tokenfab_upstream::sse::Events;
use tokenfab_wire::usage::TokenUsage;
use tokio::sync::mpsc;

mod counting;

use counting::{
    Counted, count_completion_prompt, count_prompt, count_text, reported, usage_value, used,
};

use crate::error::HttpError;
use crate::routes::{admit, model_request, settle, sse, sse_response, with_rate_headers};
use crate::state::{AppState, ModelEntry, ModelType, Serve, UpstreamModel};

/// The API error for a request no backend answered. Upstream bodies never reach the
/// client, except the message of an error about the request itself.
fn failure(f: Failure, id: &str) -> HttpError {
    match f {
        Failure::Unreachable => HttpError::unavailable(format!(
            "no upstream server for `{id}` can be reached; try again later"
        )),
        Failure::Timeout => HttpError::gateway_timeout(format!(
            "the upstream server for `{id}` did not answer in time"
        )),
        Failure::Broken => HttpError::bad_gateway(format!(
            "the upstream server for `{id}` broke off without answering; it may have received the request"
        )),
        Failure::Status {
            message: Some(m), ..
        } => HttpError::bad_request(None, m),
        Failure::Status {
            status: 429 | 503,
            retry_after,
            ..
        } => {
            let mut e = HttpError::unavailable(format!(
                "every upstream server for `{id}` is overloaded; try again later"
            ));
            // The wait the upstream asked for, if it said.
            e.retry_after = retry_after.or(e.retry_after);
            e
        }
        Failure::Status { status, .. } if status >= 500 => HttpError::bad_gateway(format!(
            "the upstream server for `{id}` failed (HTTP {status})"
        )),
        Failure::Status { status, .. } => HttpError::bad_gateway(format!(
            "the upstream server for `{id}` refused the request (HTTP {status}); the server log has its answer"
        )),
        Failure::Protocol(m) => HttpError::bad_gateway(format!(
            "the upstream server for `{id}` sent an invalid answer: {m}"
        )),
    }
}

/// A conversation's prefix for affinity: its first two messages (the system prompt and
/// the first question), which every later turn repeats.
fn prefix_key(messages: &[Value]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for m in messages.iter().take(2) {
        m.to_string().hash(&mut h);
    }
    h.finish()
}

fn bad(param: &str, msg: &str) -> Response {
    HttpError::bad_request(Some(param), msg).into_response()
}

/// `POST /v1/chat/completions` for an upstream model.
pub async fn chat(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    up: &Arc<UpstreamModel>,
    mut body: Value,
) -> Response {
    let obj = body
        .as_object_mut()
        .expect("model_request checked an object");
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return bad("messages", "`messages` must be a non-empty array"),
    };
    let (prompt, prompt_source) = count_prompt(up, messages);
    let affinity = up.pool.affinity().then(|| prefix_key(messages));
    if let Err(e) = up.dialect.rewrite_thinking(obj) {
        return bad(e.field, &e.to_string());
    }
    let prompt = Counted {
        tokens: prompt,
        source: prompt_source,
    };
    generate(state, caller, entry, up, body, prompt, affinity, Path::Chat).await
}

/// `POST /v1/completions` for an upstream model: forwarded like chat; the prompt is
/// counted with the model's tokenizer (token-id prompts exactly), and its batch of prompts
/// multiplies what the request may cost.
pub async fn completions(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    up: &Arc<UpstreamModel>,
    body: Value,
) -> Response {
    let prompts = match body.get("prompt") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(a)) if !a.is_empty() => {
            if a.iter().all(Value::is_u64) {
                1
            } else {
                a.len() as u64
            }
        }
        _ => {
            return bad(
                "prompt",
                "`prompt` must be a string, an array of strings, or token ids",
            );
        }
    };
    let prompt = count_completion_prompt(up, &body["prompt"]);
    let affinity = up
        .pool
        .affinity()
        .then(|| prefix_key(std::slice::from_ref(&body["prompt"])));
    generate(
        state,
        caller,
        entry,
        up,
        body,
        prompt,
        affinity,
        Path::Completions { prompts },
    )
    .await
}

/// Which generating endpoint a request is for.
#[derive(Clone, Copy)]
enum Path {
    Chat,
    /// With the number of prompts in the batch.
    Completions {
        prompts: u64,
    },
}

impl Path {
    fn upstream(self) -> &'static str {
        match self {
            Path::Chat => "chat/completions",
            Path::Completions { .. } => "completions",
        }
    }
}

/// The forwarding every generating request shares: the operator's ceiling on
/// `max_tokens`, the most it can cost reserved, usage asked of a streaming upstream.
#[allow(clippy::too_many_arguments)]
async fn generate(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    up: &Arc<UpstreamModel>,
    mut body: Value,
    prompt: Counted,
    affinity: Option<u64>,
    path: Path,
) -> Response {
    let obj = body
        .as_object_mut()
        .expect("model_request checked an object");
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("stream", "`stream` must be a boolean"),
    };
    let want_usage = stream
        && obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    let requested = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_u64));
    let cap = state.limits.max_output_tokens.map(|c| c as u64);
    let max_tokens = match (requested, cap) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    };
    if max_tokens != requested
        && let Some(m) = max_tokens
    {
        obj.remove("max_completion_tokens");
        obj.insert("max_tokens".into(), json!(m));
    }
    let n = obj.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    // A completion generates `best_of` candidates for each of its prompts.
    let n = match path {
        Path::Chat => n,
        Path::Completions { prompts } => {
            let best_of = obj.get("best_of").and_then(Value::as_u64).unwrap_or(1);
            n.max(best_of).min(1 << 16) * prompts
        }
    };
    // No request generates 2^31 tokens: a larger `max_tokens` is held to that.
    let per_choice = max_tokens
        .unwrap_or_else(|| up.context_length.saturating_sub(prompt.tokens as usize) as u64)
        .min(1 << 31);
    let most = n.min(1 << 16) * per_choice;
    if stream {
        let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
        if !opts.is_object() {
            *opts = json!({});
        }
        opts["include_usage"] = json!(true);
    }
    crate::request_id::note_prompt(prompt.tokens);
    tracing::debug!(stream, path = path.upstream(), "generation (upstream)");
    let admission = match admit(state, caller, &entry.id, prompt.tokens, most).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let standing = admission.as_ref().map(Admission::standing);
    let path = path.upstream();
    let resp = if stream {
        chat_stream(
            entry, up, body, affinity, admission, prompt, want_usage, path,
        )
        .await
    } else {
        chat_whole(entry, up, body, affinity, admission, prompt, path).await
    };
    with_rate_headers(resp, standing)
}

async fn chat_whole(
    entry: &ModelEntry,
    up: &UpstreamModel,
    mut body: Value,
    affinity: Option<u64>,
    admission: Option<Admission>,
    prompt: Counted,
    path: &str,
) -> Response {
    let mut v = match client::send_whole(&up.pool, path, &mut body, affinity).await {
        Ok(Answer { body, .. }) => body,
        Err(f) => {
            settle(admission, prompt.alone(), Outcome::Error).await;
            return failure(f, &entry.id).into_response();
        }
    };
    normalize::completion(&mut v, &entry.id, up.think.as_ref());
    let choices = v["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let cut = choices.iter().any(|c| c["finish_reason"] == "length");
    let field = |k: &str| -> String {
        choices
            .iter()
            .filter_map(|c| c["message"][k].as_str().or(c[k].as_str()))
            .collect()
    };
    // A chat choice's `message`; a completion choice's `text`.
    let thought = field("reasoning_content");
    let answer = field("content") + &field("text");
    let (usage, source) = match v
        .get("usage")
        .and_then(|u| reported(up.counter.as_ref(), u, &thought))
    {
        Some(r) => r,
        None => prompt.with_text(up, &thought, &answer),
    };
    if source != Source::Upstream {
        v["usage"] = usage_value(usage);
    }
    let used = used(usage, source);
    let outcome = if cut { Outcome::Length } else { Outcome::Done };
    settle(admission, used, outcome).await;
    axum::Json(v).into_response()
}

#[allow(clippy::too_many_arguments)]
async fn chat_stream(
    entry: &Arc<ModelEntry>,
    up: &Arc<UpstreamModel>,
    mut body: Value,
    affinity: Option<u64>,
    admission: Option<Admission>,
    prompt: Counted,
    want_usage: bool,
    path: &str,
) -> Response {
    let Answer {
        body: mut upstream,
        lease,
    } = match client::send_stream(&up.pool, path, &mut body, affinity).await {
        Ok(a) => a,
        Err(f) => {
            settle(admission, prompt.alone(), Outcome::Error).await;
            return failure(f, &entry.id).into_response();
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let (entry, up) = (entry.clone(), up.clone());
    tokio::spawn(async move {
        // Held until the stream ends: the backend's outstanding count.
        let lease = lease;
        let idle = client::idle_timeout(&lease);
        let mut filter = StreamFilter::new(&entry.id, up.think.clone());
        let mut events = Events::default();
        // What went wrong mid-stream: told to the client as an error event, not charged.
        let broken = loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, upstream.chunk()) => n,
                _ = tx.closed() => {
                    // The client left: closing the upstream connection cancels the
                    // answer there; what was passed on is billed.
                    drop(upstream);
                    let (c, source) = prompt.with_text(&up, filter.thought(), filter.answer());
                    settle(admission, used(c, source), Outcome::ClientGone).await;
                    return;
                }
            };
            let data = match next {
                Err(_) => {
                    break Some(HttpError::gateway_timeout(format!(
                        "the upstream server for `{}` went silent for {idle:?}",
                        entry.id
                    )));
                }
                Ok(Ok(Some(b))) => events.push(&b),
                Ok(Err(e)) => {
                    tracing::warn!(url = %lease.backend.cfg.url, %e, "upstream stream broke off");
                    break Some(HttpError::bad_gateway(format!(
                        "the upstream server for `{}` broke off the answer",
                        entry.id
                    )));
                }
                Ok(Ok(None)) => match events.finish() {
                    Ok(Some(last)) => Ok(vec![last]),
                    Ok(None) => break None,
                    Err(e) => Err(e),
                },
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(url = %lease.backend.cfg.url, %e, "upstream stream refused");
                    break Some(HttpError::bad_gateway(format!(
                        "the upstream server for `{}` sent a malformed stream",
                        entry.id
                    )));
                }
            };
            let mut failed = None;
            for d in data {
                match filter.event(&d) {
                    Ok(Some(json)) => {
                        if tx.send(sse(&json)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(url = %lease.backend.cfg.url, %e, "upstream stream failed");
                        failed = Some(HttpError::bad_gateway(format!(
                            "the upstream server for `{}` failed mid-answer",
                            entry.id
                        )));
                        break;
                    }
                }
            }
            if failed.is_some() {
                break failed;
            }
        };
        let broken = broken.or_else(|| {
            (!filter.done()).then(|| {
                HttpError::bad_gateway(format!(
                    "the upstream server for `{}` ended the answer early",
                    entry.id
                ))
            })
        });
        if let Some(err) = broken {
            settle(admission, prompt.alone(), Outcome::Error).await;
            let _ = tx
                .send(sse(&json!({ "error": err.body }).to_string()))
                .await;
            return;
        }
        let (usage, source) = match filter
            .usage()
            .and_then(|u| reported(up.counter.as_ref(), u, filter.thought()))
        {
            Some(r) => r,
            None => prompt.with_text(&up, filter.thought(), filter.answer()),
        };
        let outcome = if filter.cut() {
            Outcome::Length
        } else {
            Outcome::Done
        };
        // Settled before the end of the stream, as for local models.
        settle(admission, used(usage, source), outcome).await;
        if want_usage {
            let chunk = filter.usage_chunk(usage_value(usage));
            let _ = tx.send(sse(&chunk)).await;
        }
        let _ = tx.send(sse("[DONE]")).await;
    });
    sse_response(rx)
}

/// `/v1/embeddings` and `/v1/rerank` for an upstream model: one JSON answer, billed for
/// its input tokens.
pub async fn json(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    up: &Arc<UpstreamModel>,
    mut body: Value,
    path: &str,
) -> Response {
    let text: String = ["input", "query", "documents"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(Value::to_string)
        .collect();
    let (tokens, source) = count_text(up.counter.as_ref(), &text);
    let prompt = Counted { tokens, source };
    let admission = match admit(state, caller, &entry.id, tokens, 0).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let standing = admission.as_ref().map(Admission::standing);
    let mut v = match client::send_whole(&up.pool, path, &mut body, None).await {
        Ok(Answer { body, .. }) => body,
        Err(f) => {
            settle(admission, prompt.alone(), Outcome::Error).await;
            return with_rate_headers(failure(f, &entry.id).into_response(), standing);
        }
    };
    if let Some(m) = v.get_mut("model") {
        *m = Value::String(entry.id.clone());
    }
    let reported = ["usage", "tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(TokenUsage::from_reported))
        .or_else(|| {
            v.pointer("/meta/tokens")
                .and_then(TokenUsage::from_reported)
        });
    let used = match reported {
        Some(c) => used(c, Source::Upstream),
        None => prompt.alone(),
    };
    settle(admission, used, Outcome::Done).await;
    with_rate_headers(axum::Json(v).into_response(), standing)
}

/// Embeddings of one or many inputs.
#[utoipa::path(post, path = "/embeddings", tag = "inference", security(("api_key" = [])),
    request_body = tokenfab_wire::embeddings::EmbeddingsRequest,
    responses((status = 200, body = tokenfab_wire::embeddings::EmbeddingsResponse), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    forward(&state, &caller, body, ModelType::Embedding, "embeddings").await
}

/// Documents ordered by relevance to a query (SiliconFlow's shape).
#[utoipa::path(post, path = "/rerank", tag = "inference", security(("api_key" = [])),
    request_body = tokenfab_wire::rerank::RerankRequest,
    responses((status = 200, body = tokenfab_wire::rerank::RerankResponse), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(rid): Extension<crate::request_id::RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, entry) = match model_request(body, &state, ModelType::Reranker) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    match &entry.serve {
        Serve::Encoder(enc) => {
            crate::routes::rerank::local(&state, &caller, &entry, enc, body, &rid).await
        }
        Serve::Local(m) => {
            crate::routes::rerank::judge(&state, &caller, &entry, m, body, &rid).await
        }
        _ => serve(&state, &caller, body, entry, ModelType::Reranker, "rerank").await,
    }
}

async fn forward(
    state: &AppState,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
    kind: ModelType,
    path: &str,
) -> Response {
    let (body, entry) = match model_request(body, state, kind) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    serve(state, caller, body, entry, kind, path).await
}

/// Where an embeddings or rerank request for `entry` (of type `kind`) is answered.
async fn serve(
    state: &AppState,
    caller: &Caller,
    body: Value,
    entry: Arc<ModelEntry>,
    kind: ModelType,
    path: &str,
) -> Response {
    match &entry.serve {
        Serve::Upstream(up) => json(state, caller, &entry, up, body, path).await,
        Serve::Encoder(enc) if kind == ModelType::Embedding => {
            let lane = crate::routes::Lane::Interactive;
            crate::routes::embeddings::local(state, caller, &lane, &entry, enc, body).await
        }
        // The type check above refused every other pairing of a local model.
        Serve::Local(_) | Serve::Encoder(_) => HttpError::bad_request(
            Some("model"),
            format!(
                "`{}` is run by tokenfab's engine, which does not serve {path} for it",
                entry.id
            ),
        )
        .into_response(),
    }
}
