//! `POST /v1/chat/completions`: submits the engine jobs and turns their events into one
//! JSON response or a stream of server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokenfab_engine::scheduler::{
    Event, FinishReason as EngineFinish, TokenLogprob as EngineLogprob,
};
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_wire::chat::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChoiceLogprobs,
    ChunkChoice, Delta, FinishReason, ResponseMessage, TokenLogprob, TopLogprob, Usage,
};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::error::HttpError;
use crate::job::{self, ChatJob};
use crate::request_id::RequestId;
use crate::state::AppState;

const FINGERPRINT: &str = concat!("tokenfab-", env!("CARGO_PKG_VERSION"));

/// Parses a JSON body, naming the field whose type is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, HttpError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::payload_too_large(limit)
        } else {
            HttpError::bad_request(None, format!("could not read the request body: {e}"))
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            HttpError::bad_request(None, format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            HttpError::bad_request(
                None,
                format!("the request body must be a JSON object: {inner}"),
            )
        } else {
            HttpError::bad_request(Some(&path), format!("invalid value for `{path}`: {inner}"))
        }
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(r: EngineFinish) -> FinishReason {
    match r {
        EngineFinish::Stop => FinishReason::Stop,
        EngineFinish::Length => FinishReason::Length,
    }
}

fn token_string(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

fn wire_logprob(tok: &Tokenizer, id: u32, lp: &EngineLogprob) -> TokenLogprob {
    let (token, bytes) = token_string(tok, id);
    TokenLogprob {
        token,
        logprob: lp.logprob,
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(t, l)| {
                let (token, bytes) = token_string(tok, t);
                TopLogprob {
                    token,
                    logprob: l,
                    bytes,
                }
            })
            .collect(),
    }
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt as u64,
        completion_tokens: completion as u64,
        total_tokens: (prompt + completion) as u64,
        ..Default::default()
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(state, rid, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: Arc<AppState>,
    rid: RequestId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let req: ChatCompletionRequest = parse_json(body, state.limits.max_body_bytes)?;
    let job = job::build(req, &state)?;
    tracing::info!(model = %job.model.id, prompt_tokens = job.prompt_tokens, n = job.choices.len(), stream = job.stream, "chat completion");
    let mut receivers = Vec::with_capacity(job.choices.len());
    for r in job.choices.iter().cloned() {
        // On failure the receivers already taken are dropped, which cancels those jobs.
        receivers.push(
            job.model
                .engine
                .submit(r)
                .map_err(|e| HttpError::overloaded(e.to_string()))?,
        );
    }
    let id = format!("chatcmpl-{}", rid.0);
    if job.stream {
        Ok(stream_response(job, receivers, id))
    } else {
        complete_response(job, receivers, id).await
    }
}

async fn complete_response(
    job: ChatJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
) -> Result<Response, HttpError> {
    let tok = &job.model.tokenizer;
    let mut choices = Vec::with_capacity(receivers.len());
    let mut completion_total = 0;
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let mut text = String::new();
        let mut logprobs = ChoiceLogprobs::default();
        let mut finish = None;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token {
                    id,
                    text: t,
                    logprob,
                } => {
                    text.push_str(&t);
                    if let Some(lp) = logprob {
                        logprobs.content.push(wire_logprob(tok, id, &lp));
                    }
                }
                Event::Text(t) => text.push_str(&t),
                Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    completion_total += completion_tokens;
                    finish = Some(finish_reason(reason));
                }
                Event::Failed(msg) => {
                    return Err(HttpError::internal(format!("generation failed: {msg}")));
                }
            }
        }
        let finish = finish.ok_or_else(|| {
            HttpError::internal("the engine ended a generation without finishing it")
        })?;
        choices.push(Choice {
            index: index as u32,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(text),
                reasoning_content: None,
            },
            logprobs: job.logprobs.then_some(logprobs),
            finish_reason: Some(finish),
        });
    }
    let body = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: job.model.id.clone(),
        choices,
        usage: usage(job.prompt_tokens, completion_total),
        system_fingerprint: FINGERPRINT.into(),
    };
    Ok(axum::Json(body).into_response())
}

/// Builds stream chunks; one per event worth sending.
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
}

impl ChunkWriter {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Bytes {
        let c = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            system_fingerprint: FINGERPRINT.into(),
            usage,
        };
        sse(&serde_json::to_string(&c).unwrap_or_default())
    }

    fn choice(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<ChoiceLogprobs>,
        finish: Option<FinishReason>,
    ) -> Bytes {
        self.chunk(
            vec![ChunkChoice {
                index: index as u32,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            None,
        )
    }
}

fn sse(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn stream_response(job: ChatJob, receivers: Vec<UnboundedReceiver<Event>>, id: String) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let writer = ChunkWriter {
        id,
        created: unix_now(),
        model: job.model.id.clone(),
    };
    tokio::spawn(async move {
        // Every choice's events, tagged with the choice index, in arrival order.
        let tagged: Vec<BoxStream<'static, (usize, Event)>> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
                    .map(move |e| (i, e))
                    .boxed()
            })
            .collect();
        let mut events = stream::select_all(tagged);
        let tok = job.model.tokenizer.clone();
        let n = job.choices.len();
        for i in 0..n {
            let role = Delta {
                role: Some("assistant".into()),
                ..Default::default()
            };
            if tx.send(writer.choice(i, role, None, None)).await.is_err() {
                return;
            }
        }
        let mut completion_total = 0;
        let mut finished = 0;
        loop {
            let next = tokio::select! {
                e = events.next() => e,
                // The client went away: dropping the receivers cancels generation.
                _ = tx.closed() => return,
            };
            let Some((i, ev)) = next else { break };
            let bytes = match ev {
                Event::Token { id, text, logprob } => {
                    let lp = logprob.map(|lp| ChoiceLogprobs {
                        content: vec![wire_logprob(&tok, id, &lp)],
                    });
                    if text.is_empty() && lp.is_none() {
                        continue;
                    }
                    let delta = Delta {
                        content: (!text.is_empty()).then_some(text),
                        ..Default::default()
                    };
                    writer.choice(i, delta, lp, None)
                }
                Event::Text(text) => writer.choice(
                    i,
                    Delta {
                        content: Some(text),
                        ..Default::default()
                    },
                    None,
                    None,
                ),
                Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    completion_total += completion_tokens;
                    finished += 1;
                    writer.choice(i, Delta::default(), None, Some(finish_reason(reason)))
                }
                Event::Failed(msg) => {
                    tracing::error!(%msg, "generation failed mid-stream");
                    let err = HttpError::internal(format!("generation failed: {msg}"));
                    let _ = tx
                        .send(sse(&serde_json::json!({ "error": err.body }).to_string()))
                        .await;
                    return;
                }
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        if finished < n {
            return;
        }
        if job.include_usage {
            let _ = tx
                .send(writer.chunk(Vec::new(), Some(usage(job.prompt_tokens, completion_total))))
                .await;
        }
        let _ = tx.send(sse("[DONE]")).await;
    });
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
