//! `POST /v1/chat/completions`: submits the engine jobs and turns their events into one
//! JSON response or a stream of server-sent events.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use tokenfab_engine::reasoning::Split;
use tokenfab_engine::scheduler::{
    Event, FinishReason as EngineFinish, Progress, TokenLogprob as EngineLogprob,
};
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_platform::money::Tokens;
use tokenfab_platform::store::{Outcome, Source};
use tokenfab_platform::{Admission, Caller, Used};
use tokenfab_wire::chat::{
    ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice,
    CompletionTokensDetails, Delta, FinishReason, PromptTokensDetails, ResponseMessage,
    TokenLogprob, TopLogprob, Usage,
};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::error::HttpError;
use crate::job::{self, ChatJob};
use crate::request_id::RequestId;
use crate::routes::{
    admit, model_request, proxy, settle, sse, sse_response, typed, with_rate_headers,
};
use crate::state::{AppState, ModelType, Serve};

const FINGERPRINT: &str = concat!("tokenfab-", env!("CARGO_PKG_VERSION"));

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

/// Token counts of a request's choices as they arrive: the usage reported to the client
/// and the usage billed, also when the client leaves before the end.
struct Tally {
    prompt: usize,
    choices: Vec<Progress>,
    /// Whether any choice was cut by its length limit.
    cut: bool,
}

impl Tally {
    fn new(prompt: usize, n: usize) -> Tally {
        Tally {
            prompt,
            choices: vec![Progress::default(); n],
            cut: false,
        }
    }

    fn finished(&mut self, i: usize, completion: usize, reasoning: usize, cached: usize) {
        self.choices[i] = Progress {
            completion,
            reasoning,
            cached,
        };
    }

    /// Totals over the choices; the prompt is counted once, as OpenAI does, with the best
    /// prefix-cache hit of its choices.
    fn used(&self) -> Used {
        let sum = |f: fn(&Progress) -> usize| self.choices.iter().map(f).sum::<usize>() as u64;
        let cached = self.choices.iter().map(|p| p.cached).max().unwrap_or(0) as u64;
        Used {
            tokens: Tokens {
                prompt: self.prompt as u64,
                cached: cached.min(self.prompt as u64),
                completion: sum(|p| p.completion),
            },
            reasoning: sum(|p| p.reasoning),
            source: Source::Engine,
        }
    }

    fn usage(&self) -> Usage {
        let u = self.used();
        Usage {
            prompt_tokens: u.tokens.prompt,
            completion_tokens: u.tokens.completion,
            total_tokens: u.tokens.prompt + u.tokens.completion,
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: u.reasoning,
            },
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.tokens.cached,
            },
        }
    }

    /// How the request ended, for the ledger, when every choice finished.
    fn outcome(&self) -> Outcome {
        if self.cut {
            Outcome::Length
        } else {
            Outcome::Done
        }
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, entry) = match model_request(body, &state, ModelType::Chat) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let model = match &entry.serve {
        Serve::Upstream(up) => return proxy::chat(&state, &caller, &entry, up, body).await,
        Serve::Local(m) => m.clone(),
    };
    let job = match typed(body).and_then(|req| job::build(req, &entry.id, model, &state.limits)) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    crate::request_id::note_prompt(job.prompt_tokens as u64);
    tracing::debug!(
        n = job.choices.len(),
        stream = job.stream,
        "chat completion"
    );
    // Admission: the rate limits, then the most the request can cost held from the
    // balance (every choice's cap on generated tokens).
    let most: u64 = job.choices.iter().map(|c| c.max_tokens as u64).sum();
    let admission = match admit(
        &state,
        &caller,
        &job.model_id,
        job.prompt_tokens as u64,
        most,
    )
    .await
    {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let standing = admission.as_ref().map(Admission::standing);
    with_rate_headers(run(job, rid, admission).await, standing)
}

async fn run(job: ChatJob, rid: RequestId, admission: Option<Admission>) -> Response {
    let mut receivers = Vec::with_capacity(job.choices.len());
    for r in job.choices.iter().cloned() {
        // On failure the receivers already taken are dropped, which cancels those jobs.
        match job.model.engine.submit(r) {
            Ok(rx) => receivers.push(rx),
            Err(e) => {
                let used = Tally::new(job.prompt_tokens, 0).used();
                settle(admission, used, Outcome::Error).await;
                return HttpError::overloaded(e.to_string()).into_response();
            }
        }
    }
    let id = format!("chatcmpl-{}", rid.0);
    if job.stream {
        stream_response(job, receivers, id, admission)
    } else {
        match complete_response(job, receivers, id, admission).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }
}

async fn complete_response(
    job: ChatJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
    mut admission: Option<Admission>,
) -> Result<Response, HttpError> {
    let tok = &job.model.tokenizer;
    let mut choices = Vec::with_capacity(receivers.len());
    let mut tally = Tally::new(job.prompt_tokens, receivers.len());
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
                Event::Token {
                    id,
                    text,
                    logprob,
                    progress,
                } => {
                    append(text);
                    tally.choices[index] = progress;
                    // If the client hangs up, this handler is dropped mid-loop: the
                    // admission then bills what was generated.
                    if let Some(a) = admission.as_mut() {
                        a.record(tally.used());
                    }
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
                    tally.finished(index, completion_tokens, reasoning_tokens, cached_tokens);
                    tally.cut |= reason == EngineFinish::Length;
                    finish = Some(finish_reason(reason));
                }
                Event::Failed(msg) => {
                    settle(admission, tally.used(), Outcome::Error).await;
                    return Err(HttpError::internal(format!("generation failed: {msg}")));
                }
            }
        }
        let Some(finish) = finish else {
            settle(admission, tally.used(), Outcome::Error).await;
            return Err(HttpError::internal(
                "the engine ended a generation without finishing it",
            ));
        };
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
    // Settled before the answer leaves: a client that has its answer sees its balance.
    settle(admission, tally.used(), tally.outcome()).await;
    let body = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: job.model_id.clone(),
        choices,
        usage: tally.usage(),
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

fn stream_response(
    job: ChatJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
    admission: Option<Admission>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let writer = ChunkWriter {
        id,
        created: unix_now(),
        model: job.model_id.clone(),
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
        let mut tally = Tally::new(job.prompt_tokens, n);
        // The client went away: what was generated (every event already delivered by the
        // engine) is billed, then dropping the receivers cancels generation.
        macro_rules! client_gone {
            () => {{
                while let Some(Some((i, ev))) = events.next().now_or_never() {
                    match ev {
                        Event::Token { progress, .. } => tally.choices[i] = progress,
                        Event::Finished {
                            completion_tokens,
                            reasoning_tokens,
                            cached_tokens,
                            ..
                        } => tally.finished(i, completion_tokens, reasoning_tokens, cached_tokens),
                        Event::Text(_) | Event::Failed(_) => {}
                    }
                }
                drop(events);
                settle(admission, tally.used(), Outcome::ClientGone).await;
                return;
            }};
        }
        for i in 0..n {
            let role = Delta {
                role: Some("assistant".into()),
                ..Default::default()
            };
            if tx.send(writer.choice(i, role, None, None)).await.is_err() {
                client_gone!();
            }
        }
        let mut finished = 0;
        loop {
            let next = tokio::select! {
                e = events.next() => e,
                _ = tx.closed() => client_gone!(),
            };
            let Some((i, ev)) = next else { break };
            let bytes = match ev {
                Event::Token {
                    id,
                    text,
                    logprob,
                    progress,
                } => {
                    tally.choices[i] = progress;
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
                    tally.finished(i, completion_tokens, reasoning_tokens, cached_tokens);
                    tally.cut |= reason == EngineFinish::Length;
                    finished += 1;
                    writer.choice(i, Delta::default(), None, Some(finish_reason(reason)))
                }
                Event::Failed(msg) => {
                    tracing::error!(%msg, "generation failed mid-stream");
                    settle(admission, tally.used(), Outcome::Error).await;
                    let err = HttpError::internal(format!("generation failed: {msg}"));
                    let _ = tx
                        .send(sse(&serde_json::json!({ "error": err.body }).to_string()))
                        .await;
                    return;
                }
            };
            if !bytes.is_empty() && tx.send(bytes).await.is_err() {
                client_gone!();
            }
        }
        if finished < n {
            settle(admission, tally.used(), Outcome::Error).await;
            return;
        }
        // Settled before the end of the stream: a client that has read `[DONE]` sees its
        // balance.
        settle(admission, tally.used(), tally.outcome()).await;
        if job.include_usage {
            let _ = tx.send(writer.chunk(Vec::new(), Some(tally.usage()))).await;
        }
        let _ = tx.send(sse("[DONE]")).await;
    });
    sse_response(rx)
}
