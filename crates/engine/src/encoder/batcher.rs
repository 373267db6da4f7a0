//! The thread that serves an encoder (embeddings or a reranker's scores): requests arrive over a bounded channel, and every
//! request waiting when a pass starts joins it (up to [`BATCH_TOKENS`]), so concurrent
//! clients share passes instead of queueing one pass each. Each request's inputs are
//! checked alone first: one bad request is refused without failing the others.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TrySendError, sync_channel};

use tokio::sync::oneshot;

use super::{Encoder, EncoderConfig, Segmented};
use crate::error::EngineError;
use crate::scheduler::SubmitError;
use crate::tokenizer::Tokenizer;

/// Tokens a gathered batch takes at most before it runs: a few passes' worth
/// ([`super::PASS_TOKENS`]), so a burst of small requests is served together without
/// one large request holding the others back for long.
pub const BATCH_TOKENS: usize = 4 * super::PASS_TOKENS;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>;

/// A request: its sequences, each with its token types (empty: all 0).
struct Job {
    inputs: Vec<(Vec<u32>, Vec<u32>)>,
    reply: Reply,
}

/// A running encoder: cheap to clone, shared by every request for the model.
#[derive(Clone)]
pub struct EncoderHandle {
    jobs: std::sync::mpsc::SyncSender<Job>,
    max_waiting: usize,
    encoder: Arc<Encoder>,
}

impl std::fmt::Debug for EncoderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderHandle")
            .field("config", &self.encoder.config)
            .finish_non_exhaustive()
    }
}

impl EncoderHandle {
    pub fn config(&self) -> &EncoderConfig {
        &self.encoder.config
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.encoder.tokenizer
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The vector of each input (token ids, framed): queued for the encoder's thread, or
    /// refused at once when `max_waiting` requests already wait.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.submit(inputs.into_iter().map(|t| (t, Vec::new())).collect())
            .await
    }

    /// A reranker's relevance of each (tokens, types) pair ([`Encoder::pair`]).
    pub async fn score(&self, pairs: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Vec<f32>, EmbedError> {
        let scores = self.submit(pairs).await?;
        Ok(scores.into_iter().map(|s| s[0]).collect())
    }

    async fn submit(&self, inputs: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        match self.jobs.try_send(Job { inputs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(EmbedError::Submit(SubmitError::Overloaded(
                    self.max_waiting,
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(EmbedError::Submit(SubmitError::Stopped));
            }
        }
        match rx.await {
            Ok(r) => r.map_err(EmbedError::Engine),
            Err(_) => Err(EmbedError::Submit(SubmitError::Stopped)),
        }
    }
}

/// Why a request got no vectors.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Not taken: the queue is full or the thread has stopped.
    #[error(transparent)]
    Submit(SubmitError),
    /// Taken and refused: the inputs do not fit the model.
    #[error(transparent)]
    Engine(EngineError),
}

/// Starts `encoder`'s thread with `threads` math threads, taking at most `max_waiting`
/// requests in its queue.
pub fn start(
    encoder: Arc<Encoder>,
    threads: usize,
    max_waiting: usize,
) -> Result<EncoderHandle, EngineError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("tokenfab-encoder-{i}"))
        .build()
        .map_err(|e| EngineError::BadModel(format!("cannot start math threads: {e}")))?;
    let (jobs, rx) = sync_channel(max_waiting.max(1));
    let served = encoder.clone();
    std::thread::Builder::new()
        .name("tokenfab-encoder".into())
        .spawn(move || serve(&served, &pool, &rx))
        .map_err(|e| EngineError::BadModel(format!("cannot start the encoder thread: {e}")))?;
    Ok(EncoderHandle {
        jobs,
        max_waiting,
        encoder,
    })
}

fn serve(encoder: &Encoder, pool: &rayon::ThreadPool, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut tokens = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if let Err(e) = encoder.check(&segmented(&job)) {
                let _ = job.reply.send(Err(e));
            } else if !job.reply.is_closed() {
                tokens += job.inputs.iter().map(|(t, _)| t.len()).sum::<usize>();
                batch.push(job);
            }
            if tokens < BATCH_TOKENS {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let all: Vec<Segmented<'_>> = batch.iter().flat_map(segmented).collect();
        match pool.install(|| encoder.run(&all)) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in batch {
                    let mine = vectors.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                // `embed` checks again; should it refuse, every request of the batch hears why.
                for job in batch {
                    let _ = job.reply.send(Err(EngineError::BadRequest(e.to_string())));
                }
            }
        }
    }
}

fn segmented(job: &Job) -> Vec<Segmented<'_>> {
    job.inputs
        .iter()
        .map(|(tokens, types)| Segmented { tokens, types })
        .collect()
}
