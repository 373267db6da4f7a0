//! `POST /v1/chat/completions`: submits the engine jobs and turns their events into one
//! JSON response or a stream of server-sent events.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use tokenfab_engine::scheduler::{
    Event, FinishReason as EngineFinish, TokenLogprob as EngineLogprob,
};
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_platform::{Admission, Caller};
use tokenfab_text::reasoning::Split;
use tokenfab_wire::chat::{
    ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice, Delta, FinishReason,
    ResponseMessage, TokenLogprob, TopLogprob, Usage,
};
use tokenfab_wire::time::unix_now;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::error::HttpError;
use crate::fold::{Fold, Step};
use crate::job::{self, ChatJob};
use crate::request_id::RequestId;
use crate::routes::{admit, model_request, proxy, sse, sse_response, with_rate_headers};
use crate::state::{AppState, ModelType, Serve};

const FINGERPRINT: &str = concat!("tokenfab-", env!("CARGO_PKG_VERSION"));

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
    // Rendering and tokenizing take milliseconds for long conversations (an 8K-token one:
    // about 2.6 ms), which would stall every other connection on this runtime worker.
    let (id, limits) = (entry.id.clone(), state.limits.clone());
    let built = tokio::task::spawn_blocking(move || job::build(body, &id, model, &limits)).await;
    let job = match built {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return HttpError::internal(format!("could not prepare the request: {e}"))
                .into_response();
        }
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
    let fold = Fold::new(job.prompt_tokens, job.choices.len(), admission);
    let mut receivers = Vec::with_capacity(job.choices.len());
    for r in job.choices.iter().cloned() {
        // On failure the receivers already taken are dropped, which cancels those jobs.
        match job.model.engine.submit(r) {
            Ok(rx) => receivers.push(rx),
            Err(e) => {
                fold.fail().await;
                return HttpError::overloaded(e.to_string()).into_response();
            }
        }
    }
    let id = format!("chatcmpl-{}", rid.0);
    if job.stream {
        stream_response(job, receivers, id, fold)
    } else {
        match complete_response(job, receivers, id, fold).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }
}

/// One choice's answer, collected.
#[derive(Default)]
struct Collected {
    reasoning: String,
    content: String,
    logprobs: ChoiceLogprobs,
}

async fn complete_response(
    job: ChatJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
    mut fold: Fold,
) -> Result<Response, HttpError> {
    let tok = &job.model.tokenizer;
    let mut collected: Vec<Collected> = receivers.iter().map(|_| Collected::default()).collect();
    for (index, mut rx) in receivers.into_iter().enumerate() {
        // If the client hangs up, this handler is dropped mid-loop with the fold, whose
        // admission then bills what was generated.
        while let Some(ev) = rx.recv().await {
            let c = &mut collected[index];
            match fold.apply(index, ev) {
                Step::Text { text, token, .. } => {
                    c.reasoning.push_str(&text.reasoning);
                    c.content.push_str(&text.content);
                    if let Some((id, lp)) = token {
                        c.logprobs.content.push(wire_logprob(tok, id, &lp));
                    }
                }
                Step::Finished { .. } => {}
                Step::Failed(msg) => {
                    fold.fail().await;
                    return Err(HttpError::internal(format!("generation failed: {msg}")));
                }
            }
        }
    }
    let Some(reasons) = fold.finish_reasons() else {
        fold.fail().await;
        return Err(HttpError::internal(
            "the engine ended a generation without finishing it",
        ));
    };
    let usage = fold.settle().await;
    let choices = collected
        .into_iter()
        .zip(reasons)
        .enumerate()
        .map(|(index, (c, reason))| Choice {
            index: index as u32,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(c.content),
                reasoning_content: (!c.reasoning.is_empty()).then_some(c.reasoning),
            },
            logprobs: job.logprobs.then_some(c.logprobs),
            finish_reason: Some(finish_reason(reason)),
        })
        .collect();
    let body = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: job.model_id.clone(),
        choices,
        usage: usage.into(),
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
    mut fold: Fold,
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
        // The client went away: every event the engine already delivered is folded in,
        // then the fold's drop bills it and dropping the receivers cancels generation.
        let client_gone = |mut fold: Fold, mut events: stream::SelectAll<_>| {
            while let Some(Some((i, ev))) = events.next().now_or_never() {
                fold.apply(i, ev);
            }
        };
        for i in 0..job.choices.len() {
            let role = Delta {
                role: Some("assistant".into()),
                ..Default::default()
            };
            if tx.send(writer.choice(i, role, None, None)).await.is_err() {
                return client_gone(fold, events);
            }
        }
        loop {
            let next = tokio::select! {
                e = events.next() => e,
                _ = tx.closed() => return client_gone(fold, events),
            };
            let Some((i, ev)) = next else { break };
            let bytes = match fold.apply(i, ev) {
                Step::Text { text, token, .. } => {
                    let lp = token.map(|(id, lp)| ChoiceLogprobs {
                        content: vec![wire_logprob(&tok, id, &lp)],
                    });
                    writer.text(i, text, lp)
                }
                Step::Finished { reason, .. } => {
                    writer.choice(i, Delta::default(), None, Some(finish_reason(reason)))
                }
                Step::Failed(msg) => {
                    tracing::error!(%msg, "generation failed mid-stream");
                    fold.fail().await;
                    let err = HttpError::internal(format!("generation failed: {msg}"));
                    let _ = tx
                        .send(sse(&serde_json::json!({ "error": err.body }).to_string()))
                        .await;
                    return;
                }
            };
            if !bytes.is_empty() && tx.send(bytes).await.is_err() {
                return client_gone(fold, events);
            }
        }
        if fold.finish_reasons().is_none() {
            fold.fail().await;
            return;
        }
        // Settled before the end of the stream: a client that has read `[DONE]` sees its
        // balance.
        let usage = fold.settle().await;
        if job.include_usage {
            let _ = tx.send(writer.chunk(Vec::new(), Some(usage.into()))).await;
        }
        let _ = tx.send(sse("[DONE]")).await;
    });
    sse_response(rx)
}
