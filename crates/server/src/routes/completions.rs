//! `POST /v1/completions`: a local model's completion jobs (built by
//! [`crate::job::completion`]) rendered as the legacy text-completion answer, whole or
//! streamed; an upstream model's request is proxied ([`proxy::completions`]).
//!
//! Each choice's text is everything the model wrote (a reasoning model's thought and its
//! tags included: the engine does not split it for completions), after the echoed prompt
//! when `echo`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;
use tokenfab_engine::scheduler::{Event, TokenLogprob as EngineLogprob};
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_platform::Caller;
use tokenfab_wire::chat::{FinishReason, Usage};
use tokenfab_wire::completions::{
    Completion, CompletionChoice, CompletionChunk, CompletionLogprobs, TopLogprobs,
};
use tokenfab_wire::time::unix_now;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::error::HttpError;
use crate::fold::{Fold, Step};
use crate::job::completion::{self, CompletionJob};
use crate::request_id::RequestId;
use crate::routes::chat::{FINGERPRINT, finish_reason, token_string};
use crate::routes::local::{self, Started};
use crate::routes::{Lane, model_request, proxy, sse, sse_response, with_rate_headers};
use crate::state::{AppState, ModelEntry, ModelType, Serve};

/// A legacy text completion (with fill-in-the-middle `suffix`, `echo`, `best_of`).
#[utoipa::path(post, path = "/completions", tag = "inference", security(("api_key" = [])),
    request_body = tokenfab_wire::completions::CompletionRequest,
    responses(
        (status = 200, description = "The answer (`application/json`), or its stream (`text/event-stream`)",
            content((tokenfab_wire::completions::Completion = "application/json"), (tokenfab_wire::completions::CompletionChunk = "text/event-stream"))),
        (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, entry) = match model_request(body, &state, ModelType::Chat) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if let Serve::Upstream(up) = &entry.serve {
        return proxy::completions(&state, &caller, &entry, up, body).await;
    }
    answer(&state, &caller, &rid.0, body, &entry, &Lane::Interactive).await
}

/// A completions request's answer from a model tokenfab's engine runs, as
/// [`crate::routes::chat::answer`] gives a chat answer.
pub async fn answer(
    state: &AppState,
    caller: &Caller,
    rid: &str,
    body: Value,
    entry: &ModelEntry,
    lane: &Lane,
) -> Response {
    let model = match &entry.serve {
        Serve::Local(m) => m.clone(),
        Serve::Encoder(_) => return crate::routes::embedding_model(entry),
        Serve::Upstream(_) => return crate::routes::upstream_model(entry),
    };
    let (id, limits) = (entry.id.clone(), state.limits.clone());
    let build = move || completion::build(body, &id, model, &limits);
    let started = match local::start(state, caller, lane, build, |j: &CompletionJob| &j.job).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Started {
        job,
        receivers,
        fold,
        standing,
    } = started;
    let id = format!("cmpl-{rid}");
    let resp = if job.job.stream {
        stream_response(job, receivers, id, fold)
    } else {
        complete_response(job, receivers, id, fold)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    };
    with_rate_headers(resp, standing)
}

/// The legacy logprobs of one choice as they grow; `text_offset` runs on across stream
/// chunks, as vLLM's does.
#[derive(Default)]
struct Legacy {
    lists: CompletionLogprobs,
    /// Characters of the token strings so far.
    offset: u32,
}

impl Legacy {
    fn push(&mut self, token: String, logprob: Option<f32>, top: Option<TopLogprobs>) {
        self.lists.text_offset.push(self.offset);
        self.offset += token.chars().count() as u32;
        self.lists.tokens.push(token);
        self.lists.token_logprobs.push(logprob);
        self.lists.top_logprobs.push(top);
    }

    fn token(&mut self, tok: &Tokenizer, id: u32, lp: Option<&EngineLogprob>) {
        let top = lp.map(|lp| {
            TopLogprobs(
                lp.top
                    .iter()
                    .map(|&(t, l)| (token_string(tok, t).0, l))
                    .collect(),
            )
        });
        self.push(token_string(tok, id).0, lp.map(|l| l.logprob), top);
    }

    /// The echoed prompt's tokens: the first has no logprob, the others theirs.
    fn prompt(&mut self, tok: &Tokenizer, tokens: &[u32], logprobs: &[EngineLogprob]) {
        if let Some((&first, rest)) = tokens.split_first() {
            self.token(tok, first, None);
            for (&id, lp) in rest.iter().zip(logprobs) {
                self.token(tok, id, Some(lp));
            }
        }
    }

    /// What was pushed since the last take (the offset runs on).
    fn take(&mut self) -> CompletionLogprobs {
        std::mem::take(&mut self.lists)
    }
}

/// One choice as it is collected.
#[derive(Default)]
struct Collected {
    text: String,
    logprobs: Legacy,
    /// Sum and count of the generated tokens' logprobs, to rank `best_of` candidates.
    sum: f64,
    count: usize,
}

impl Collected {
    /// Mean logprob per generated token (OpenAI's "highest log probability per token").
    fn score(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// Folds one step into choice `c`; returns the text and logprobs it added (for a stream
/// chunk), or the failure.
fn collect(
    job: &CompletionJob,
    c: &mut Collected,
    step: Step,
) -> Result<Option<(String, Option<FinishReason>)>, String> {
    let tok = &job.job.model.tokenizer;
    match step {
        Step::Text { text, token, .. } => {
            // Nothing is split out of a completion (`split_thought: false`): all is content.
            let piece = text.content;
            if let Some((id, lp)) = token {
                c.sum += f64::from(lp.logprob);
                c.count += 1;
                if job.logprobs.is_some() {
                    c.logprobs.token(tok, id, Some(&lp));
                }
            }
            c.text.push_str(&piece);
            Ok(Some((piece, None)))
        }
        Step::Prompt { index, logprobs } => {
            let echo =
                &job.echo.as_ref().expect("prompt logprobs come with echo")[index / job.best_of];
            c.logprobs.prompt(tok, &echo.tokens, &logprobs);
            Ok(None)
        }
        Step::Finished { reason, .. } => Ok(Some((String::new(), Some(finish_reason(reason))))),
        // Completions offer no tools.
        Step::Call { .. } => Ok(Some((String::new(), None))),
        Step::Failed(msg) => Err(msg),
    }
}

/// The echoed text in front of choice `index`, when `echo` and the prompt's logprobs do
/// not carry it (they come with the text, in [`Step::Prompt`]).
fn echo_text(job: &CompletionJob, index: usize) -> Option<&str> {
    job.echo
        .as_ref()
        .map(|e| e[index / job.best_of].text.as_str())
}

async fn complete_response(
    job: CompletionJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
    mut fold: Fold,
) -> Result<Response, HttpError> {
    let mut collected: Vec<Collected> = receivers.iter().map(|_| Collected::default()).collect();
    for (index, mut rx) in receivers.into_iter().enumerate() {
        if let Some(text) = echo_text(&job, index) {
            collected[index].text.push_str(text);
        }
        // A client that hangs up drops this handler and the fold, which bills.
        while let Some(ev) = rx.recv().await {
            for step in fold.apply(index, ev) {
                if let Err(msg) = collect(&job, &mut collected[index], step) {
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
    let mut candidates: Vec<(Collected, _)> = collected.into_iter().zip(reasons).collect();
    let mut choices = Vec::with_capacity(job.job.prompts.len() * job.n);
    // Prompt after prompt, the `n` best of its `best_of` candidates, best first.
    while !candidates.is_empty() {
        let mut group: Vec<_> = candidates.drain(..job.best_of).collect();
        if job.best_of > job.n {
            group.sort_by(|a, b| b.0.score().total_cmp(&a.0.score()));
        }
        for (mut c, reason) in group.into_iter().take(job.n) {
            choices.push(CompletionChoice {
                index: choices.len() as u32,
                text: c.text,
                logprobs: job.logprobs.map(|_| c.logprobs.take()),
                finish_reason: Some(finish_reason(reason)),
            });
        }
    }
    Ok(axum::Json(Completion {
        id,
        object: "text_completion".into(),
        created: unix_now(),
        model: job.job.model_id.clone(),
        choices,
        usage: usage.into(),
        system_fingerprint: FINGERPRINT.into(),
    })
    .into_response())
}

/// Builds the stream's chunks.
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
}

impl ChunkWriter {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Bytes {
        let c = CompletionChunk {
            id: self.id.clone(),
            object: "text_completion".into(),
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
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> Bytes {
        let choice = CompletionChoice {
            index: index as u32,
            text,
            logprobs,
            finish_reason,
        };
        self.chunk(vec![choice], None)
    }
}

fn stream_response(
    job: CompletionJob,
    receivers: Vec<UnboundedReceiver<Event>>,
    id: String,
    mut fold: Fold,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let writer = ChunkWriter {
        id,
        created: unix_now(),
        model: job.job.model_id.clone(),
    };
    tokio::spawn(async move {
        let mut events = local::events(receivers);
        let mut collected: Vec<Collected> = job
            .job
            .choices
            .iter()
            .map(|_| Collected::default())
            .collect();
        // Without the prompt's logprobs the echo goes first; with them, it rides on them.
        let echo_first = job
            .job
            .choices
            .first()
            .is_some_and(|c| c.prompt_logprobs.is_none());
        for i in 0..collected.len() {
            if let Some(text) = echo_text(&job, i).filter(|_| echo_first)
                && tx
                    .send(writer.choice(i, text.to_owned(), None, None))
                    .await
                    .is_err()
            {
                return local::client_gone(fold, events);
            }
        }
        loop {
            let next = tokio::select! {
                e = events.next() => e,
                _ = tx.closed() => return local::client_gone(fold, events),
            };
            let Some((i, ev)) = next else { break };
            for step in fold.apply(i, ev) {
                let c = &mut collected[i];
                let bytes = match collect(&job, c, step) {
                    // The echo, with its tokens' logprobs.
                    Ok(None) => {
                        let text = echo_text(&job, i).unwrap_or_default().to_owned();
                        writer.choice(i, text, Some(c.logprobs.take()), None)
                    }
                    Ok(Some((text, finish))) => {
                        let lp = c.logprobs.take();
                        let said = !text.is_empty() || !lp.tokens.is_empty() || finish.is_some();
                        if !said {
                            continue;
                        }
                        writer.choice(i, text, job.logprobs.map(|_| lp), finish)
                    }
                    Err(msg) => {
                        tracing::error!(%msg, "generation failed mid-stream");
                        fold.fail().await;
                        let err = HttpError::internal(format!("generation failed: {msg}"));
                        let _ = tx
                            .send(sse(&serde_json::json!({ "error": err.body }).to_string()))
                            .await;
                        return;
                    }
                };
                if tx.send(bytes).await.is_err() {
                    return local::client_gone(fold, events);
                }
            }
        }
        if fold.finish_reasons().is_none() {
            fold.fail().await;
            return;
        }
        // Settled before the end of the stream, as for chat.
        let usage = fold.settle().await;
        if job.job.include_usage {
            let _ = tx.send(writer.chunk(Vec::new(), Some(usage.into()))).await;
        }
        let _ = tx.send(sse("[DONE]")).await;
    });
    sse_response(rx)
}
