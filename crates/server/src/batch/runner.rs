//! The batch runner: one task per server, the single place batches are run.
//!
//! Each round it reads the batches with work left from the ledger and moves each along:
//! `validating` → `in_progress`; an in-progress batch's pending lines are started while
//! fewer than [`BatchConfig::concurrency`](super::BatchConfig) lines of all batches run
//! (each line a request of its own, through the handlers' own code, at batch priority and
//! the batch price); a batch with none left is finalized (`finalizing` → `completed`, its
//! output and error files written); one past its window stops starting lines and, once
//! its running lines end, gives the rest `batch_expired` errors (`expired`); a cancelled
//! one does the same with `batch_cancelled` (`cancelling` → `cancelled`).
//!
//! A line's answer is recorded once it has settled, so a crash between the two leaves a
//! settled line pending: it runs again under the same ledger id, which the ledger finds
//! settled, and is not charged again. A line cut short by a crash left its hold, which
//! the rerun adopts ([`tokenfab_platform::Platform::admit_batch`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokenfab_platform::Caller;
use tokenfab_platform::store::{BatchLine, BatchRecord, FileRecord, Store, StoreError, unix_now};
use tokenfab_wire::batch::{LineError, LineResponse, OutputLine};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Batches, ledger_id, ledger_prefix, line_id};
use crate::error::HttpError;
use crate::routes::{Lane, chat, completions, embeddings, model_entry, upstream_model};
use crate::state::{AppState, ModelType, Serve};

/// How often the runner looks at the ledger when nothing rings: a batch's window can end
/// without any event.
const TICK: Duration = Duration::from_secs(1);

/// Lines being run, per batch.
#[derive(Default)]
struct Flight(Mutex<HashMap<String, HashSet<i64>>>);

impl Flight {
    fn running(&self, batch: &str) -> HashSet<i64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(batch).cloned().unwrap_or_default()
    }

    fn start(&self, batch: &str, line: i64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(batch.to_owned()).or_default().insert(line);
    }

    fn end(&self, batch: &str, line: i64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = map.get_mut(batch) {
            set.remove(&line);
            if set.is_empty() {
                map.remove(batch);
            }
        }
    }
}

/// Starts the runner, if the server serves batches (it needs the ledger).
pub fn start(state: Arc<AppState>) {
    let (Some(batches), Some(platform)) = (state.batches.clone(), state.platform.clone()) else {
        return;
    };
    let store = platform.store.clone();
    let runner = Runner {
        permits: Arc::new(Semaphore::new(batches.cfg.concurrency.max(1))),
        flight: Arc::new(Flight::default()),
        batch_instance: platform.batch_instance(),
        state,
        batches,
        store,
    };
    tokio::spawn(async move {
        loop {
            if let Err(e) = runner.round().await {
                tracing::error!(%e, "the batch runner could not read or record its work");
            }
            tokio::select! {
                _ = runner.batches.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    });
}

struct Runner {
    state: Arc<AppState>,
    batches: Arc<Batches>,
    store: Store,
    permits: Arc<Semaphore>,
    flight: Arc<Flight>,
    /// Where batch lines' holds are recorded, to release a finished batch's leftovers.
    batch_instance: String,
}

impl Runner {
    async fn round(&self) -> Result<(), StoreError> {
        for batch in self.store.open_batches().await? {
            let running = self.flight.running(&batch.id);
            match batch.status.as_str() {
                "validating" => {
                    self.store
                        .move_batch(&batch.id, &["validating"], "in_progress")
                        .await?;
                    self.batches.wake();
                }
                "in_progress" if unix_now() < batch.expires_at => {
                    self.feed(&batch, &running).await?
                }
                // Past its window: no new line; the running ones end first.
                "in_progress" if running.is_empty() => {
                    self.close(&batch, "batch_expired", "expired").await?;
                }
                "cancelling" if running.is_empty() => {
                    self.close(&batch, "batch_cancelled", "cancelled").await?;
                }
                "finalizing" => self.finish(&batch, "completed").await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts pending lines of `batch` in the free places; finalizes it when none is
    /// left.
    async fn feed(&self, batch: &BatchRecord, running: &HashSet<i64>) -> Result<(), StoreError> {
        let free = self.permits.available_permits();
        let pending = self
            .store
            .pending_lines(&batch.id, -1, (free + running.len()).max(1) as i64)
            .await?;
        if pending.is_empty() {
            if running.is_empty()
                && self
                    .store
                    .move_batch(&batch.id, &["in_progress"], "finalizing")
                    .await?
            {
                self.finish(batch, "completed").await?;
            }
            return Ok(());
        }
        let todo: Vec<BatchLine> = pending
            .into_iter()
            .filter(|l| !running.contains(&l.line))
            .collect();
        if todo.is_empty() || free == 0 {
            return Ok(());
        }
        let Some(caller) = self.caller(batch).await? else {
            self.store
                .fail_batch(
                    &batch.id,
                    &errors("account_not_found", "the batch's account no longer exists"),
                )
                .await?;
            return Ok(());
        };
        let batch = Arc::new(batch.clone());
        for line in todo {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            self.flight.start(&batch.id, line.line);
            let job = Line {
                state: self.state.clone(),
                batches: self.batches.clone(),
                store: self.store.clone(),
                flight: self.flight.clone(),
                batch: batch.clone(),
                caller: caller.clone(),
            };
            tokio::spawn(job.run(line, permit));
        }
        Ok(())
    }

    /// Who the batch's lines are run for: its account, through the key that made it.
    async fn caller(&self, batch: &BatchRecord) -> Result<Option<Caller>, StoreError> {
        let Some(key_id) = batch.key_id else {
            return Ok(Some(Caller::Open));
        };
        let account = self.store.account_by_id(batch.account_id).await?;
        Ok(account.map(|account| Caller::Key { key_id, account }))
    }

    /// Ends a batch that stops early: its lines not run get `code` errors, then its files
    /// are written and it reaches `status`.
    async fn close(&self, batch: &BatchRecord, code: &str, status: &str) -> Result<(), StoreError> {
        let message = match code {
            "batch_expired" => "the batch's completion window ended before this request ran",
            _ => "the batch was cancelled before this request ran",
        };
        loop {
            let pending = self.store.pending_lines(&batch.id, -1, 500).await?;
            if pending.is_empty() {
                break;
            }
            for l in pending {
                let out = OutputLine {
                    id: line_id(&batch.id, l.line),
                    custom_id: l.custom_id,
                    response: None,
                    error: Some(LineError {
                        code: code.into(),
                        message: message.into(),
                    }),
                };
                let text = serde_json::to_string(&out).unwrap_or_default();
                self.store
                    .finish_line(&batch.id, l.line, "failed", &text)
                    .await?;
            }
        }
        self.finish(batch, status).await
    }

    /// Writes a batch's output and error files (those that have lines), names them on the
    /// batch, moves it to `status`, and releases any hold its lines still have. Writing
    /// again after a crash writes the same files under the same ids.
    async fn finish(&self, batch: &BatchRecord, status: &str) -> Result<(), StoreError> {
        let (mut output, mut error) = (Vec::new(), Vec::new());
        let mut after = -1;
        loop {
            let lines = self.store.lines(&batch.id, after, 1000).await?;
            let Some(last) = lines.last() else { break };
            after = last.line;
            for l in lines {
                let to = if l.state == "done" {
                    &mut output
                } else {
                    &mut error
                };
                to.extend_from_slice(l.result.unwrap_or_default().as_bytes());
                to.push(b'\n');
            }
        }
        let hex = batch.id.strip_prefix("batch_").unwrap_or(&batch.id);
        let mut ids = [None, None];
        for (slot, (bytes, kind)) in ids.iter_mut().zip([(output, "output"), (error, "error")]) {
            if bytes.is_empty() {
                continue;
            }
            let id = format!("file-batch-{hex}-{kind}");
            let record = FileRecord {
                id: id.clone(),
                account_id: batch.account_id,
                bytes: bytes.len() as i64,
                filename: format!("{}_{kind}.jsonl", batch.id),
                purpose: "batch_output".into(),
                created_at: unix_now(),
            };
            if let Err(e) = self.batches.write(&id, bytes).await {
                tracing::error!(%e, batch = %batch.id, "cannot write a batch's {kind} file");
                return Ok(());
            }
            if self.store.file(batch.account_id, &id).await?.is_none() {
                self.store.add_file(&record).await?;
            }
            *slot = Some(id);
        }
        let [output, error] = ids;
        self.store
            .set_batch_files(&batch.id, output.as_deref(), error.as_deref())
            .await?;
        let from = ["in_progress", "cancelling", "finalizing"];
        self.store.move_batch(&batch.id, &from, status).await?;
        self.store
            .release(&self.batch_instance, &ledger_prefix(&batch.id))
            .await?;
        tracing::info!(batch = %batch.id, status, "batch finished");
        Ok(())
    }
}

/// A batch's `errors` object with one error.
pub fn errors(code: &str, message: &str) -> String {
    serde_json::json!({"object": "list", "data": [{"code": code, "message": message, "param": null, "line": null}]})
        .to_string()
}

/// One line on its way.
struct Line {
    state: Arc<AppState>,
    batches: Arc<Batches>,
    store: Store,
    flight: Arc<Flight>,
    batch: Arc<BatchRecord>,
    caller: Caller,
}

impl Line {
    async fn run(self, line: BatchLine, permit: OwnedSemaphorePermit) {
        let (batch, n) = (&self.batch.id, line.line);
        let ledger = ledger_id(batch, n);
        let body: Value = line
            .request
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or(Value::Null);
        let lane = Lane::Batch {
            ledger_id: ledger.clone(),
        };
        let rid = line_id(batch, n);
        let resp = answer(
            &self.state,
            &self.caller,
            &lane,
            &rid,
            &self.batch.endpoint,
            body,
        )
        .await;
        let status = resp.status().as_u16();
        let body = match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
            Ok(b) => serde_json::from_slice(&b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
            Err(e) => Value::String(format!("the answer could not be read: {e}")),
        };
        let error = (status != 200).then(|| {
            let e = &body["error"];
            LineError {
                code: e["code"]
                    .as_str()
                    .or(e["type"].as_str())
                    .unwrap_or("error")
                    .to_owned(),
                message: e["message"]
                    .as_str()
                    .unwrap_or("the request failed")
                    .to_owned(),
            }
        });
        let state = if error.is_none() { "done" } else { "failed" };
        let out = OutputLine {
            id: rid,
            custom_id: line.custom_id,
            response: Some(LineResponse {
                status_code: status,
                request_id: ledger,
                body,
            }),
            error,
        };
        let text = serde_json::to_string(&out).unwrap_or_default();
        // A line whose answer cannot be recorded stays pending and runs again (charged
        // once: its ledger id is settled).
        if let Err(e) = self.store.finish_line(batch, n, state, &text).await {
            tracing::error!(%e, batch = %batch, line = n, "cannot record a batch line's answer");
        }
        drop(permit);
        self.flight.end(batch, n);
        self.batches.wake();
    }
}

/// A batch line's answer, from the handlers' own code for `endpoint`. Lines for an
/// upstream model and streamed lines are refused.
async fn answer(
    state: &AppState,
    caller: &Caller,
    lane: &Lane,
    rid: &str,
    endpoint: &str,
    body: Value,
) -> Response {
    let kind = if endpoint == "/v1/embeddings" {
        ModelType::Embedding
    } else {
        ModelType::Chat
    };
    let entry = match model_entry(state, &body, kind) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    if body.get("stream") == Some(&Value::Bool(true)) {
        return HttpError::bad_request(
            Some("stream"),
            "a batch's requests cannot be streamed: their answers go to the output file",
        )
        .into_response();
    }
    match &entry.serve {
        Serve::Upstream(_) => upstream_model(&entry),
        Serve::Encoder(enc) if kind == ModelType::Embedding => {
            embeddings::local(state, caller, lane, &entry, enc, body).await
        }
        _ if endpoint == "/v1/completions" => {
            completions::answer(state, caller, rid, body, &entry, lane).await
        }
        _ => chat::answer(state, caller, rid, body, &entry, lane).await,
    }
}
