//! The engine thread: admits generation jobs, steps every running sequence, streams tokens.
//!
//! HTTP handlers (or any embedder) call [`EngineHandle::submit`] from any thread and get a
//! channel of [`Event`]s. One dedicated OS thread owns the model, every sequence's KV cache
//! and sampler, and runs the loop: take new jobs (up to `max_running`), build one batch with
//! a prompt chunk or the last sampled token of each sequence, run one forward pass, sample,
//! turn the token into text ([`crate::output`]: whole characters, thought apart from
//! answer, stop strings), send. A reasoning sequence whose thinking budget is spent gets
//! the closing tag's tokens fed in place of sampled ones, so its answer always comes. Heavy math runs on a private rayon pool, so tokio's
//! threads never compute and the math threads never wait on I/O.
//!
//! A sequence whose receiver is dropped (the client went away) is removed before the next
//! step, so generation stops at once and its KV cache is freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use rayon::prelude::*;
use std::collections::VecDeque;

use crate::error::EngineError;
use crate::model::{BLOCK_TOKENS, KvCache, Model, SeqInput};
use crate::output::{OutputText, Piece};
use crate::prefix_cache::PrefixCache;
use crate::reasoning::{Split, ThinkTags};
use crate::sampler::{Sampler, SamplingParams, log_softmax, top_k_logprobs};
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
    /// Memory for finished sequences' KV caches that later prompts can start from.
    pub prefix_cache_bytes: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            threads: 2,
            max_running: 16,
            max_waiting: 64,
            prefill_chunk: 512,
            prefix_cache_bytes: 128 << 20,
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
    /// `Some` when the model thinks: how to split and cap its thought.
    pub thinking: Option<ThinkingPlan>,
}

/// A reasoning request's thought: where it is, and how long it may be.
#[derive(Debug, Clone)]
pub struct ThinkingPlan {
    pub tags: ThinkTags,
    /// The prompt ends inside an opened thought (R1 distills' `<think>\n`).
    pub opened: bool,
    /// Most reasoning tokens, the closing tag included; when reached, the engine feeds
    /// `close_tokens` itself and the model goes on to answer.
    pub budget: Option<usize>,
    pub close_tokens: Vec<u32>,
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
    /// A generated token and the text it completed in each field (either may be empty: a
    /// partial character, a possible tag or a possible stop string is being held back).
    Token {
        id: u32,
        text: Split,
        logprob: Option<TokenLogprob>,
        /// The sequence's counts with this token, so that a consumer that stops listening
        /// (a client gone mid-stream) knows what was generated and can bill it.
        progress: Progress,
    },
    /// Text released without a token of its own (held back until the end, or until a
    /// thinking budget closed the thought).
    Text(Split),
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        /// Every generated token, reasoning included.
        completion_tokens: usize,
        /// Tokens generated inside the thought, its closing tag included.
        reasoning_tokens: usize,
        cached_tokens: usize,
    },
    Failed(String),
}

/// A sequence's token counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Generated tokens, reasoning included.
    pub completion: usize,
    /// Generated tokens known to be inside the thought.
    pub reasoning: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached: usize,
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
    /// Every token sampled so far (the KV cache holds all but the last).
    sampled: Vec<u32>,
    /// Prompt tokens that came from the prefix cache.
    cached: usize,
    generated: usize,
    sampler: Sampler,
    output: OutputText,
    /// Tokens to feed instead of sampling (a thought's closing tag after its budget).
    forced: VecDeque<u32>,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    config: SchedulerConfig,
    pool: rayon::ThreadPool,
    running: Vec<Sequence>,
    /// Jobs held back while a running sequence computes a prompt prefix they share (see
    /// [`Scheduler::shares_prefill`]); admitted, in arrival order, once it is cached.
    deferred: VecDeque<Job>,
    prefix: PrefixCache,
    scratch: crate::model::Scratch,
}

impl Scheduler {
    fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
        pool: rayon::ThreadPool,
    ) -> Self {
        let scratch = model.new_scratch();
        let prefix = PrefixCache::new(config.prefix_cache_bytes);
        Scheduler {
            model,
            tokenizer,
            config,
            pool,
            running: Vec::new(),
            deferred: VecDeque::new(),
            prefix,
            scratch,
        }
    }

    fn run(mut self, jobs: Receiver<Job>, gauge: &AtomicUsize) {
        loop {
            gauge.store(self.running.len(), Ordering::Relaxed);
            if self.running.is_empty() && self.deferred.is_empty() {
                // Idle: block until work arrives or every handle is gone.
                match jobs.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                }
            }
            // Held-back jobs first, in arrival order; then new ones, while the running and
            // held-back sequences together stay within `max_running` (so holding back
            // never takes more from the bounded queue than running would).
            for _ in 0..self.deferred.len() {
                if self.running.len() >= self.config.max_running {
                    break;
                }
                if let Some(job) = self.deferred.pop_front() {
                    self.take(job);
                }
            }
            while self.running.len() + self.deferred.len() < self.config.max_running {
                match jobs.try_recv() {
                    Ok(job) => self.take(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // Clients that went away stop here, before any more compute is spent on them
            // (what they computed is kept for a retry of the same conversation).
            let mut i = 0;
            while i < self.running.len() {
                if self.running[i].events.is_closed() {
                    let gone = self.running.swap_remove(i);
                    self.retire(gone);
                } else {
                    i += 1;
                }
            }
            gauge.store(self.running.len(), Ordering::Relaxed);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Admits a job, or holds it back when a running sequence is computing a prefix of its
    /// prompt; a job whose client has gone is dropped.
    fn take(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        if self.shares_prefill(&job.req.prompt) {
            self.deferred.push_back(job);
        } else {
            self.admit(job);
        }
    }

    /// Whether a sequence still computing its prompt shares at least one full block with
    /// `prompt` beyond what it found cached: requests that arrive together with a common
    /// system prompt (or the same question) then compute it once, the later ones taking it
    /// from the prefix cache a step later, instead of all computing it side by side.
    fn shares_prefill(&self, prompt: &[u32]) -> bool {
        self.running.iter().any(|s| {
            if s.last.is_some() {
                return false;
            }
            let common = s
                .req
                .prompt
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count();
            let shared = common / BLOCK_TOKENS * BLOCK_TOKENS;
            shared >= BLOCK_TOKENS && shared > s.cached
        })
    }

    fn admit(&mut self, job: Job) {
        let Job { req, events } = job;
        let seed = req.sampling.seed.unwrap_or(req.fallback_seed);
        let sampler = Sampler::new(req.sampling.clone(), seed, &req.prompt);
        let thinking = req.thinking.as_ref().map(|t| (t.tags.clone(), t.opened));
        let output = OutputText::new(req.stop.clone(), thinking);
        if req.prompt.is_empty() {
            let _ = events.send(Event::Failed("the prompt is empty".into()));
            return;
        }
        let kv = self.prefix.lookup(&req.prompt, self.model.new_kv_cache());
        self.running.push(Sequence {
            fed: kv.len(),
            cached: kv.len(),
            kv,
            req,
            events,
            last: None,
            sampled: Vec::new(),
            generated: 0,
            sampler,
            output,
            forced: VecDeque::new(),
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
        // Sampling, detokenizing and stop checks are per sequence: spread them over the
        // math threads too (each sequence stays on one thread, so its events keep their
        // order).
        let prefilling: Vec<bool> = self.running.iter().map(|s| s.last.is_none()).collect();
        let (tokenizer, context_length) = (&self.tokenizer, self.model.config.context_length);
        let outcomes: Vec<Option<FinishReason>> = self.pool.install(|| {
            self.running
                .par_iter_mut()
                .zip(logits.par_iter_mut())
                .map_init(Vec::new, |buf, (s, logits)| {
                    if s.last.is_none() {
                        s.fed = (s.fed + chunk).min(s.req.prompt.len());
                        if s.fed < s.req.prompt.len() {
                            return None;
                        }
                    }
                    let reason = Self::advance(s, logits, tokenizer, buf, context_length)?;
                    let _ = s.events.send(Event::Finished {
                        reason,
                        prompt_tokens: s.req.prompt.len(),
                        completion_tokens: s.generated,
                        reasoning_tokens: s.output.reasoning_tokens(),
                        cached_tokens: s.cached,
                    });
                    Some(reason)
                })
                .collect()
        });
        // A prompt just computed: its full blocks serve requests that arrive while this
        // one still runs (its last, partial block is registered when it ends).
        for (s, _) in self.running.iter().zip(prefilling).filter(|(_, p)| *p) {
            if s.fed == s.req.prompt.len() {
                let full = s.fed / BLOCK_TOKENS * BLOCK_TOKENS;
                self.prefix.insert(&s.req.prompt[..full], &s.kv);
            }
        }
        let finished: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].is_some())
            .collect();
        for i in finished.into_iter().rev() {
            let done = self.running.swap_remove(i);
            self.retire(done);
        }
    }

    /// A sequence leaves: its computed tokens go to the prefix cache.
    fn retire(&mut self, s: Sequence) {
        let mut tokens = s.req.prompt;
        tokens.extend_from_slice(&s.sampled);
        self.prefix.insert(&tokens, &s.kv);
    }

    /// Samples (or takes a forced) token for a sequence and emits its text; returns why
    /// the sequence ended, if it did.
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
        let forced = s.forced.pop_front();
        let token = forced.unwrap_or_else(|| s.sampler.sample(logits));
        s.generated += 1;
        s.last = Some(token);
        s.sampled.push(token);
        let logprob = s.req.logprobs.map(|k| TokenLogprob {
            logprob: buf[token as usize],
            top: top_k_logprobs(buf, k),
        });
        if tokenizer.is_eog(token) {
            let tail = s.output.push_end();
            Self::send_text(s, tail);
            return Some(FinishReason::Stop);
        }
        let Piece { split, stopped } = s
            .output
            .push(tokenizer.token_bytes(token), forced.is_some());
        let _ = s.events.send(Event::Token {
            id: token,
            text: split,
            logprob,
            progress: Progress {
                completion: s.generated,
                reasoning: s.output.reasoning_tokens(),
                cached: s.cached,
            },
        });
        if stopped {
            return Some(FinishReason::Stop);
        }
        if let Some(plan) = &s.req.thinking
            && let Some(budget) = plan.budget
            && s.output.in_thought()
            && s.forced.is_empty()
            && s.output.reasoning_tokens() + plan.close_tokens.len() >= budget
        {
            let piece = s.output.force_close();
            s.forced.extend(plan.close_tokens.iter().copied());
            Self::send_text(s, piece.split);
        }
        let full = s.req.prompt.len() + s.generated >= context_length;
        if s.generated >= s.req.max_tokens || full {
            let tail = s.output.finish();
            Self::send_text(s, tail);
            return Some(FinishReason::Length);
        }
        None
    }

    fn send_text(s: &Sequence, split: Split) {
        if !split.is_empty() {
            let _ = s.events.send(Event::Text(split));
        }
    }
}
