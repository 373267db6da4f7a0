//! The engine thread: admits generation jobs, steps every running sequence, streams tokens.
//!
//! HTTP handlers (or any embedder) call [`EngineHandle::submit`] from any thread and get a
//! channel of [`Event`]s. One dedicated OS thread owns the model, every sequence's KV cache
//! and sampler, and runs the loop: take new jobs (up to `max_running`), build one batch with
//! a prompt chunk or the last sampled token of each sequence, run one forward pass, sample,
//! detokenize, match stop strings, send. Heavy math runs on a private rayon pool, so tokio's
//! threads never compute and the math threads never wait on I/O.
//!
//! A sequence whose receiver is dropped (the client went away) is removed before the next
//! step, so generation stops at once and its KV cache is freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::detok::Utf8Stream;
use crate::error::EngineError;
use crate::model::{KvCache, Model, SeqInput};
use crate::sampler::{Sampler, SamplingParams, log_softmax, top_k_logprobs};
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;

/// Limits of the scheduler, chosen by the operator.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Math threads (the rayon pool size).
    pub threads: usize,
    /// Sequences stepped together at most.
    pub max_running: usize,
    /// Jobs allowed to wait for a slot; beyond this, submit fails with `Overloaded`.
    pub max_waiting: usize,
    /// Prompt tokens fed per sequence per step, so a long prompt does not stall others.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            threads: 2,
            max_running: 16,
            max_waiting: 64,
            prefill_chunk: 512,
        }
    }
}

/// One generation job: prompt tokens in, up to `max_tokens` tokens out.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Seed used when `sampling.seed` is `None` (the caller picks it at random).
    pub fallback_seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

/// Log-probability information of one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a job's channel carries, in order: tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completed (possibly empty: a partial character
    /// or a possible stop string is being held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end without a token of its own (held-back text).
    Text(String),
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    },
    Failed(String),
}

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is overloaded: {0} requests are already waiting; retry shortly")]
    Overloaded(usize),
    #[error("the inference engine has stopped")]
    Stopped,
}

struct Job {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
}

/// A cheap, cloneable handle for submitting jobs to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: SyncSender<Job>,
    max_waiting: usize,
    running: Arc<AtomicUsize>,
}

impl EngineHandle {
    /// Queues a job. Fails at once (no waiting) when the queue is full, so callers can
    /// answer 503 instead of piling up memory.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let (tx, rx) = unbounded_channel();
        match self.jobs.try_send(Job { req, events: tx }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::Overloaded(self.max_waiting)),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Sequences being generated right now, for health checks and load balancers (and the
    /// proof that a client's disconnect really stops its generation).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// Starts the engine thread over a loaded model and returns its handle. The thread ends when
/// every handle is dropped and the running sequences are done.
pub fn start(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    config: SchedulerConfig,
) -> Result<EngineHandle, EngineError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads.max(1))
        .thread_name(|i| format!("tokenfab-math-{i}"))
        .build()
        .map_err(|e| EngineError::BadModel(format!("cannot start math threads: {e}")))?;
    let (jobs_tx, jobs_rx) = sync_channel(config.max_waiting.max(1));
    let max_waiting = config.max_waiting;
    let running = Arc::new(AtomicUsize::new(0));
    let gauge = running.clone();
    std::thread::Builder::new()
        .name("tokenfab-engine".into())
        .spawn(move || Scheduler::new(model, tokenizer, config, pool).run(jobs_rx, &gauge))
        .map_err(|e| EngineError::BadModel(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle {
        jobs: jobs_tx,
        max_waiting,
        running,
    })
}

struct Sequence {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
    kv: KvCache,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    /// The token sampled last, to be fed next.
    last: Option<u32>,
    generated: usize,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopMatcher,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    config: SchedulerConfig,
    pool: rayon::ThreadPool,
    running: Vec<Sequence>,
    scratch: crate::model::Scratch,
    logprob_buf: Vec<f32>,
}

impl Scheduler {
    fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
        pool: rayon::ThreadPool,
    ) -> Self {
        let scratch = model.new_scratch();
        Scheduler {
            model,
            tokenizer,
            config,
            pool,
            running: Vec::new(),
            scratch,
            logprob_buf: Vec::new(),
        }
    }

    fn run(mut self, jobs: Receiver<Job>, gauge: &AtomicUsize) {
        loop {
            gauge.store(self.running.len(), Ordering::Relaxed);
            if self.running.is_empty() {
                // Idle: block until work arrives or every handle is gone.
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while self.running.len() < self.config.max_running {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // Clients that went away stop here, before any more compute is spent on them.
            self.running.retain(|s| !s.events.is_closed());
            gauge.store(self.running.len(), Ordering::Relaxed);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn admit(&mut self, job: Job) {
        let Job { req, events } = job;
        let seed = req.sampling.seed.unwrap_or(req.fallback_seed);
        let sampler = Sampler::new(req.sampling.clone(), seed, &req.prompt);
        let stop = StopMatcher::new(req.stop.clone());
        if req.prompt.is_empty() {
            let _ = events.send(Event::Failed("the prompt is empty".into()));
            return;
        }
        self.running.push(Sequence {
            kv: self.model.new_kv_cache(),
            req,
            events,
            fed: 0,
            last: None,
            generated: 0,
            sampler,
            utf8: Utf8Stream::new(),
            stop,
        });
    }

    /// One forward pass over every running sequence, then sampling for those whose prompt
    /// is fully fed.
    fn step(&mut self) {
        let chunk = self.config.prefill_chunk.max(1);
        let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(self.running.len());
        for s in self.running.iter_mut() {
            let tokens: &[u32] = match s.last {
                Some(ref t) => std::slice::from_ref(t),
                None => &s.req.prompt[s.fed..(s.fed + chunk).min(s.req.prompt.len())],
            };
            inputs.push(SeqInput {
                tokens,
                kv: &mut s.kv,
            });
        }
        let model = &self.model;
        let scratch = &mut self.scratch;
        let result = self.pool.install(|| model.forward(&mut inputs, scratch));
        drop(inputs);
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                for s in self.running.drain(..) {
                    let _ = s.events.send(Event::Failed(msg.clone()));
                }
                return;
            }
        };
        let mut finished = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            if s.last.is_none() {
                s.fed = (s.fed + chunk).min(s.req.prompt.len());
                if s.fed < s.req.prompt.len() {
                    continue;
                }
            }
            if let Some(reason) = Self::advance(
                s,
                &mut logits[i],
                &self.tokenizer,
                &mut self.logprob_buf,
                self.model.config.context_length,
            ) {
                let _ = s.events.send(Event::Finished {
                    reason,
                    prompt_tokens: s.req.prompt.len(),
                    completion_tokens: s.generated,
                    cached_tokens: 0,
                });
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            self.running.swap_remove(i);
        }
    }

    /// Samples one token for a sequence and emits it; returns why it ended, if it did.
    fn advance(
        s: &mut Sequence,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        buf: &mut Vec<f32>,
        context_length: usize,
    ) -> Option<FinishReason> {
        // Log-probabilities describe the model's distribution, before the sampler's changes.
        if s.req.logprobs.is_some() {
            log_softmax(logits, buf);
        }
        let token = s.sampler.sample(logits);
        s.generated += 1;
        s.last = Some(token);
        let logprob = s.req.logprobs.map(|k| TokenLogprob {
            logprob: buf[token as usize],
            top: top_k_logprobs(buf, k),
        });
        if tokenizer.is_eog(token) {
            let tail = Self::flush(s);
            if !tail.is_empty() {
                let _ = s.events.send(Event::Text(tail));
            }
            return Some(FinishReason::Stop);
        }
        let text = s.utf8.push(tokenizer.token_bytes(token));
        let out = s.stop.push(&text);
        let _ = s.events.send(Event::Token {
            id: token,
            text: out.text,
            logprob,
        });
        if out.stopped {
            return Some(FinishReason::Stop);
        }
        let full = s.req.prompt.len() + s.generated >= context_length;
        if s.generated >= s.req.max_tokens || full {
            let tail = Self::flush(s);
            if !tail.is_empty() {
                let _ = s.events.send(Event::Text(tail));
            }
            return Some(FinishReason::Length);
        }
        None
    }

    /// Releases text held back for possible stop strings (an unfinished character is
    /// dropped by the UTF-8 stream).
    fn flush(s: &mut Sequence) -> String {
        s.utf8.finish();
        s.stop.finish()
    }
}
