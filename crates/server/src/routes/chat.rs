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
use tokenfab_engine::reasoning::Split;
use tokenfab_engine::scheduler::{
    Event, FinishReason as EngineFinish, TokenLogprob as EngineLogprob,
};
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_wire::chat::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChoiceLogprobs,
    ChunkChoice, CompletionTokensDetails, Delta, FinishReason, PromptTokensDetails,
    ResponseMessage, TokenLogprob, TopLogprob, Usage,
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

/// Token totals over a request's choices (the prompt is counted once, as OpenAI does).
#[derive(Default)]
struct Tally {
    completion: usize,
    reasoning: usize,
    /// Prompt tokens served from the prefix cache (the best of the choices: the prompt is
    /// one prompt).
    cached: usize,
}

impl Tally {
    fn add(&mut self, completion: usize, reasoning: usize, cached: usize) {
        self.completion += completion;
        self.reasoning += reasoning;
        self.cached = self.cached.max(cached);
    }

    fn usage(&self, prompt: usize) -> Usage {
        Usage {
            prompt_tokens: prompt as u64,
            completion_tokens: self.completion as u64,
            total_tokens: (prompt + self.completion) as u64,
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: self.reasoning as u64,
            },
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: self.cached as u64,
            },
        }
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
    let mut tally = Tally::default();
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let (mut reasoning, mut content) = (String::new(), String::new());
        let mut logprobs = ChoiceLogprobs::default();
        let mut finish = None;
        let mut append = |t: Split| {
            reasoning.push_str(&t.reasoning);
            content.push_str(&t.content);
        };
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token { id, text, logprob } => {
                    append(text);
                    if let Some(lp) = logprob {
                        logprobs.content.push(wire_logprob(tok, id, &lp));
                    }
                }
                Event::Text(t) => append(t),
                Event::Finished {
                    reason,
                    completion_tokens,
                    reasoning_tokens,
                    cached_tokens,
                    ..
                } => {
                    tally.add(completion_tokens, reasoning_tokens, cached_tokens);
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
                content: Some(content),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
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
        usage: tally.usage(job.prompt_tokens),
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

impl ChunkWriter {
    /// The chunks for one piece of text: the thought and the answer travel in separate
    /// deltas, so a delta never carries an empty string in the field without text; a
    /// token's logprobs ride on its last chunk (or alone when its text is held back).
    /// Empty when there is nothing to send.
    fn text(&self, index: usize, text: Split, mut logprobs: Option<ChoiceLogprobs>) -> Bytes {
        let mut deltas = Vec::new();
        if !text.reasoning.is_empty() {
            deltas.push(Delta {
                reasoning_content: Some(text.reasoning),
                ..Default::default()
            });
        }
        if !text.content.is_empty() {
            deltas.push(Delta {
                content: Some(text.content),
                ..Default::default()
            });
        }
        if deltas.is_empty() && logprobs.is_some() {
            deltas.push(Delta::default());
        }
        let last = deltas.len().saturating_sub(1);
        let mut out = Vec::new();
        for (k, delta) in deltas.into_iter().enumerate() {
            let lp = if k == last { logprobs.take() } else { None };
            out.extend_from_slice(&self.choice(index, delta, lp, None));
        }
        Bytes::from(out)
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
        let mut tally = Tally::default();
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
                    writer.text(i, text, lp)
                }
                Event::Text(text) => writer.text(i, text, None),
                Event::Finished {
                    reason,
                    completion_tokens,
                    reasoning_tokens,
                    cached_tokens,
                    ..
                } => {
                    tally.add(completion_tokens, reasoning_tokens, cached_tokens);
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
            if !bytes.is_empty() && tx.send(bytes).await.is_err() {
                return;
            }
        }
        if finished < n {
            return;
        }
        if job.include_usage {
            let _ = tx
                .send(writer.chunk(Vec::new(), Some(tally.usage(job.prompt_tokens))))
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
