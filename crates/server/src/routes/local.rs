//! The path every local model's generating request takes before its answer is rendered:
//! the job built off the async runtime, the platform's admission, the engine jobs
//! submitted, and the [`Fold`] that will bill them. Chat and completions differ only in
//! how they build the job and render the fold's steps.

use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use tokenfab_engine::scheduler::Event;
use tokenfab_platform::limits::Standing;
use tokenfab_platform::{Admission, Caller};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::HttpError;
use crate::fold::Fold;
use crate::job::Job;
use crate::routes::{Lane, admit_in, with_rate_headers};
use crate::state::AppState;

/// A request whose engine jobs run.
pub struct Started<J> {
    pub job: J,
    /// One per engine job, in the job's choice order.
    pub receivers: Vec<UnboundedReceiver<Event>>,
    pub fold: Fold,
    /// The admission's rate-limit standing, for the answer's `x-ratelimit-*` headers
    /// ([`with_rate_headers`]).
    pub standing: Option<(Option<Standing>, Option<Standing>)>,
}

/// Builds the job with `build` (rendering and tokenizing take milliseconds for long
/// prompts, which would stall every other connection on this runtime worker, so it runs
/// on the blocking pool), admits it (the rate limits, then the most it can cost held from
/// the balance: every choice's cap on generated tokens) and submits its engine jobs.
/// `engine_job` finds the [`Job`] in what `build` made; `lane` says how it is admitted and
/// at which priority the engine runs it. Any refusal is the answer.
pub async fn start<J: Send + 'static>(
    state: &AppState,
    caller: &Caller,
    lane: &Lane,
    build: impl FnOnce() -> Result<J, HttpError> + Send + 'static,
    engine_job: impl Fn(&J) -> &Job,
) -> Result<Started<J>, Response> {
    let built = match tokio::task::spawn_blocking(build).await {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return Err(e.into_response()),
        Err(e) => {
            return Err(
                HttpError::internal(format!("could not prepare the request: {e}")).into_response(),
            );
        }
    };
    let job = engine_job(&built);
    crate::request_id::note_prompt(job.prompt_tokens as u64);
    tracing::debug!(n = job.choices.len(), stream = job.stream, "generation");
    let most: u64 = job.choices.iter().map(|c| c.max_tokens as u64).sum();
    let admission = admit_in(
        state,
        caller,
        lane,
        &job.model_id,
        job.prompt_tokens as u64,
        most,
    )
    .await?;
    let standing = admission.as_ref().map(Admission::standing);
    let per_prompt = job.choices.len() / job.prompts.len().max(1);
    let fold = Fold::batch(&job.prompts, per_prompt, admission);
    let fold = match &job.tool_calls {
        Some(offer) => fold.with_tool_calls(offer),
        None => fold,
    };
    let mut receivers = Vec::with_capacity(job.choices.len());
    for mut r in job.choices.iter().cloned() {
        r.priority = lane.priority();
        // On failure the receivers already taken are dropped, which cancels those jobs.
        match job.model.engine.submit(r) {
            Ok(rx) => receivers.push(rx),
            Err(e) => {
                fold.fail().await;
                let resp = HttpError::overloaded(e.to_string()).into_response();
                return Err(with_rate_headers(resp, standing));
            }
        }
    }
    Ok(Started {
        job: built,
        receivers,
        fold,
        standing,
    })
}

/// A stream's events: every choice's, tagged with the choice index, in arrival order.
pub type Events = SelectAll<BoxStream<'static, (usize, Event)>>;

/// The events of `receivers` (one per choice) as they arrive.
pub fn events(receivers: Vec<UnboundedReceiver<Event>>) -> Events {
    stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .map(move |e| (i, e))
            .boxed()
    }))
}

/// A stream's client went away: every event the engine already delivered is folded in,
/// then the fold's drop bills it and dropping the receivers cancels generation.
pub fn client_gone(mut fold: Fold, mut events: Events) {
    while let Some(Some((i, ev))) = events.next().now_or_never() {
        fold.apply(i, ev);
    }
}
