//! The engine thread: admits generation jobs, steps every running sequence, streams tokens.
//!
//! HTTP handlers (or any embedder) call [`EngineHandle::submit`] from any thread and get a
//! channel of [`Event`]s. One dedicated OS thread owns the model, every sequence's KV cache
//! and sampler, and runs the loop: take new jobs (up to `max_running`), build one batch with
//! a prompt chunk or the last sampled token of each sequence, run one forward pass, sample,
//! turn the token into text ([`tokenfab_text::output`]: whole characters, thought apart from
//! answer, stop strings), send. A reasoning sequence whose thinking budget is spent gets
//! the closing tag's tokens fed in place of sampled ones, so its answer always comes.
//! Heavy math runs on a private rayon pool, so the math threads never wait on I/O and an
//! async caller's threads never compute here (the HTTP server also renders and tokenizes
//! prompts off its runtime, on tokio's blocking pool).
//!
//! A sequence whose receiver is dropped (the client went away) is removed before the next
//! step, so generation stops at once and its KV cache is freed.
//!
//! Jobs have a [`Priority`]. Batch jobs fill the capacity interactive ones leave: they
//! never take an interactive job's place (an interactive job is admitted whatever batch
//! jobs run, up to `max_running` interactive ones), a step carries them only in the slots
//! of `max_running` that interactive sequences leave free, and none at all while an
//! interactive sequence computes its prompt, so a batch never delays a first token by more
//! than the step already under way. Batch jobs wait in a queue of their own, off the
//! bounded job channel, so they never fill it against interactive requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use rayon::prelude::*;
use std::collections::VecDeque;

use crate::constraint::{Constraint, Grammar, Grammars};
use crate::error::EngineError;
use crate::loader::ReasoningSpec;
use crate::metrics::{Clock, Ending, EngineMetrics};
use crate::model::{BLOCK_TOKENS, KvCache, Model, SeqInput};
use crate::prefix_cache::PrefixCache;
use crate::sampler::{Sampler, SamplingParams, argmax, log_softmax, top_k_logprobs};
use crate::speculative::{Counters, Draft, Drafting, MAX_BATCH};
use crate::tokenizer::Tokenizer;
use tokenfab_text::output::{OutputText, Piece};
use tokenfab_text::reasoning::Split;
use tokenfab_wire::usage::TokenUsage;

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
    /// A draft model for speculative decoding ([`crate::speculative`]).
    pub draft: Option<Arc<Draft>>,
    /// The model's served id: the `model_name` label of the engine's metrics
    /// ([`crate::metrics`]).
    pub name: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            threads: 2,
            max_running: 16,
            max_waiting: 64,
            prefill_chunk: 512,
            prefix_cache_bytes: 128 << 20,
            draft: None,
            name: "model".into(),
        }
    }
}

/// Who is waiting for a job's tokens: a person (interactive) or a batch that only needs
/// them eventually.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Interactive,
    /// Runs only in capacity interactive jobs leave free (see the module's doc).
    Batch,
}

/// One generation job: prompt tokens in, up to `max_tokens` tokens out (none at all for
/// `max_tokens: 0`, which scores a prompt). The prompt and `max_tokens` together must fit
/// the context window ([`EngineHandle::context_length`]).
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
    /// Tokens whose log-probabilities each step also reports, after the `k` most likely
    /// (those among them not already there): a relevance judge's "yes" and "no".
    pub logprobs_of: Vec<u32>,
    /// `Some(k)`: also report each prompt token's log-probability given the tokens before
    /// it, with `k` alternatives (the legacy completions' `echo` with `logprobs`), in one
    /// [`Event::Prompt`] before the first token. Such a prompt is computed whole (not
    /// taken from the prefix cache, which keeps no logits).
    pub prompt_logprobs: Option<usize>,
    /// For a reasoning model, the most reasoning tokens (the closing tag included) instead
    /// of the model's default ([`ReasoningSpec::budget`]); when they are spent, the engine
    /// closes the thought itself and the model goes on to answer. Ignored by other models.
    pub thinking_budget: Option<usize>,
    /// For a reasoning model, whether its thought is split from the answer (and held to
    /// its budget), as chat answers it; `false` leaves the text as the model wrote it, tags
    /// included, as a plain text completion shows it. Ignored by other models.
    pub split_thought: bool,
    /// What the answer must be (a JSON schema, a regex, a grammar, compiled by
    /// [`EngineHandle::constraint`]); for a reasoning model whose thought is split, it
    /// starts when the thought has closed, so the thought stays free text.
    pub constraint: Option<Constraint>,
    /// Control tokens whose text the output shows (rendered as nothing otherwise): the
    /// markers a model writes its tool calls with in Llama's and Mistral's vocabularies.
    pub shown: Vec<u32>,
    pub priority: Priority,
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
    /// The most likely tokens at this step, most likely first, then the request's
    /// [`GenerateRequest::logprobs_of`] tokens not among them.
    pub top: Vec<(u32, f32)>,
}

/// What a job's channel carries, in order: the prompt's logprobs if they were asked for,
/// tokens, then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completed in each field (either may be empty: a
    /// partial character, a possible tag or a possible stop string is being held back).
    Token {
        id: u32,
        text: Split,
        logprob: Option<TokenLogprob>,
        /// The sequence's counts with this token, so that a consumer that stops listening
        /// (a client gone mid-stream) knows what was generated and can bill it. Its
        /// `reasoning` counts the tokens known so far to be inside the thought.
        usage: TokenUsage,
    },
    /// The prompt's log-probabilities ([`GenerateRequest::prompt_logprobs`]): entry `i` is
    /// prompt token `i + 1`'s (the first token has none).
    Prompt(Vec<TokenLogprob>),
    /// Text released without a token of its own (held back until the end, or until a
    /// thinking budget closed the thought).
    Text(Split),
    /// The sequence ended; `usage` holds its final counts.
    Finished {
        reason: FinishReason,
        usage: TokenUsage,
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
    #[error(
        "the prompt ({prompt} tokens) and `max_tokens` ({max_tokens}) do not fit the context window of {context} tokens"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
}

/// Prompt tokens per step when their log-probabilities are wanted: 64 positions' logits
/// of a 152k vocabulary are 39 MB.
const PROMPT_LOGPROBS_CHUNK: usize = 64;

struct Job {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
    arrived: std::time::Instant,
}

/// A cheap, cloneable handle for submitting jobs to the engine thread, and what callers
/// must know of the model to build them.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: SyncSender<Job>,
    max_waiting: usize,
    running: Arc<AtomicUsize>,
    context_length: usize,
    reasoning: Option<Arc<ReasoningSpec>>,
    tokenizer: Arc<Tokenizer>,
    /// The vocabulary index for grammars, built on the first request that has one.
    grammars: Arc<OnceLock<Result<Grammars, String>>>,
    speculation: Option<Arc<Counters>>,
    metrics: Arc<EngineMetrics>,
}

impl EngineHandle {
    /// Queues a job. Fails at once (no waiting) when the queue is full, so callers can
    /// answer 503 instead of piling up memory.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let context = self.context_length;
        if req.prompt.len() + req.max_tokens > context {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context,
            });
        }
        let (tx, rx) = unbounded_channel();
        let job = Job {
            req,
            events: tx,
            arrived: std::time::Instant::now(),
        };
        // Counted before it is sent: the engine thread may take it at once.
        self.metrics.waiting.increment(1.0);
        let sent = self.jobs.try_send(job);
        if sent.is_err() {
            self.metrics.waiting.decrement(1.0);
        }
        match sent {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.metrics.rejected.increment(1);
                Err(SubmitError::Overloaded(self.max_waiting))
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Sequences being generated right now, for health checks and load balancers (and the
    /// proof that a client's disconnect really stops its generation).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The context window served: a prompt plus its `max_tokens` must fit in it.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// What speculative decoding achieved so far; `None` without a draft model.
    pub fn speculation(&self) -> Option<&Counters> {
        self.speculation.as_deref()
    }

    /// How the model thinks; `None` for a model that does not.
    pub fn reasoning(&self) -> Option<&ReasoningSpec> {
        self.reasoning.as_deref()
    }

    /// Compiles a grammar for [`GenerateRequest::constraint`], or says why it cannot be
    /// used (llguidance's words: the unsupported keyword, the bad regex). CPU work: the
    /// first call indexes the vocabulary (hundreds of milliseconds), so callers on an async
    /// runtime run it on a blocking thread.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, String> {
        self.grammars
            .get_or_init(|| Grammars::new(self.tokenizer.clone()))
            .as_ref()
            .map_err(Clone::clone)?
            .compile(grammar)
    }
}

/// Starts the engine thread over a loaded model and returns its handle. The thread ends when
/// every handle is dropped and the running sequences are done.
pub fn start(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    reasoning: Option<ReasoningSpec>,
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
    let context_length = model.config.context_length;
    let reasoning = reasoning.map(Arc::new);
    let spec = reasoning.clone();
    let handle_tokenizer = tokenizer.clone();
    let counters = config.draft.as_ref().map(|_| Arc::new(Counters::default()));
    let engine_counters = counters.clone();
    let metrics = Arc::new(EngineMetrics::new(&config.name));
    let engine_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("tokenfab-engine".into())
        .spawn(move || {
            Scheduler::new(
                model,
                tokenizer,
                spec,
                config,
                pool,
                engine_counters,
                engine_metrics,
            )
            .run(jobs_rx, &gauge)
        })
        .map_err(|e| EngineError::BadModel(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle {
        jobs: jobs_tx,
        max_waiting,
        running,
        context_length,
        reasoning,
        tokenizer: handle_tokenizer,
        grammars: Arc::new(OnceLock::new()),
        speculation: counters,
        metrics,
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
    /// Most reasoning tokens, for a reasoning model.
    thinking_budget: Option<usize>,
    /// Tokens to feed instead of sampling (a thought's closing tag after its budget).
    forced: VecDeque<u32>,
    /// The prompt's logprobs so far, while they are being computed.
    prompt_logprobs: Vec<TokenLogprob>,
    constraint: Option<Constraint>,
    /// The tokens that open a thought, when the output may open one (a reasoning model
    /// whose prompt did not): a constrained answer may begin with them besides the
    /// grammar's tokens (once begun, the tag is finished), and the constraint waits while
    /// the thought is open.
    open_tokens: Vec<u32>,
    /// The draft's state, when the engine has a draft model.
    drafting: Option<Drafting>,
    /// This step's input of the draft: the tokens its cache lacks.
    draft_in: Vec<u32>,
    /// This step's input when proposals are verified: the last token, then the proposals.
    verify: Vec<u32>,
    clock: Clock,
}

/// What sampling a step's tokens reads besides the sequence: shared by every sequence of
/// the step, on whichever math thread it runs.
#[derive(Clone, Copy)]
struct StepCx<'a> {
    tokenizer: &'a Tokenizer,
    /// The tokens that close a thought whose budget is spent.
    close_tokens: &'a [u32],
    counters: Option<&'a Counters>,
    metrics: &'a EngineMetrics,
}

/// The draft model's share of the engine thread: its working memory and prefix cache.
struct Speculation {
    draft: Arc<Draft>,
    counters: Arc<Counters>,
    scratch: crate::model::Scratch,
    prefix: PrefixCache,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    reasoning: Option<Arc<ReasoningSpec>>,
    config: SchedulerConfig,
    pool: rayon::ThreadPool,
    running: Vec<Sequence>,
    /// Jobs held back while a running sequence computes a prompt prefix they share (see
    /// [`Scheduler::shares_prefill`]); admitted, in arrival order, once it is cached.
    deferred: VecDeque<Job>,
    /// Batch jobs taken off the channel, admitted in arrival order into free slots.
    batch_waiting: VecDeque<Job>,
    prefix: PrefixCache,
    scratch: crate::model::Scratch,
    speculation: Option<Speculation>,
    metrics: Arc<EngineMetrics>,
}

impl Scheduler {
    fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        reasoning: Option<Arc<ReasoningSpec>>,
        config: SchedulerConfig,
        pool: rayon::ThreadPool,
        counters: Option<Arc<Counters>>,
        metrics: Arc<EngineMetrics>,
    ) -> Self {
        let scratch = model.new_scratch();
        let prefix = PrefixCache::new(config.prefix_cache_bytes);
        let speculation = config
            .draft
            .clone()
            .zip(counters)
            .map(|(draft, counters)| Speculation {
                counters,
                scratch: draft.model.new_scratch(),
                prefix: PrefixCache::new(config.prefix_cache_bytes),
                draft,
            });
        Scheduler {
            speculation,
            model,
            tokenizer,
            reasoning,
            config,
            pool,
            running: Vec::new(),
            deferred: VecDeque::new(),
            batch_waiting: VecDeque::new(),
            prefix,
            scratch,
            metrics,
        }
    }

    /// The gauges a scrape reads: sequences running, KV blocks, speculation's totals.
    fn report(&self) {
        let m = &self.metrics;
        m.running.set(self.running.len() as f64);
        let (used, free) = self.model.kv_blocks();
        m.kv_used.set(used as f64);
        m.kv_free.set(free as f64);
        m.prefix_blocks.set(self.prefix.blocks() as f64);
        if let Some(sp) = &self.speculation {
            m.draft_tokens
                .absolute(sp.counters.proposed.load(Ordering::Relaxed) as u64);
            m.accepted_tokens
                .absolute(sp.counters.accepted.load(Ordering::Relaxed) as u64);
        }
    }

    fn run(mut self, jobs: Receiver<Job>, gauge: &AtomicUsize) {
        loop {
            gauge.store(self.running.len(), Ordering::Relaxed);
            self.report();
            if self.running.is_empty() && self.deferred.is_empty() && self.batch_waiting.is_empty()
            {
                // Idle: block until work arrives or every handle is gone.
                match jobs.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                }
            }
            // Held-back jobs first, in arrival order; then new ones, while the interactive
            // sequences, running and held back, stay within `max_running` (so holding back
            // never takes more from the bounded queue than running would; batch jobs leave
            // the queue for their own at once).
            for _ in 0..self.deferred.len() {
                if self.interactive() >= self.config.max_running {
                    break;
                }
                if let Some(job) = self.deferred.pop_front() {
                    self.take(job);
                }
            }
            while self.interactive() + self.deferred.len() < self.config.max_running {
                match jobs.try_recv() {
                    Ok(job) => self.take(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // Batch jobs into the slots left free.
            while self.running.len() < self.config.max_running {
                let Some(job) = self.batch_waiting.pop_front() else {
                    break;
                };
                if job.events.is_closed() {
                    self.metrics.waiting.decrement(1.0);
                    self.metrics.ended(job.arrived, Ending::Abort);
                } else {
                    self.admit(job);
                }
            }
            // Clients that went away stop here, before any more compute is spent on them
            // (what they computed is kept for a retry of the same conversation).
            let mut i = 0;
            while i < self.running.len() {
                if self.running[i].events.is_closed() {
                    let gone = self.running.swap_remove(i);
                    self.metrics.ended(gone.clock.arrived, Ending::Abort);
                    self.retire(gone);
                } else {
                    i += 1;
                }
            }
            gauge.store(self.running.len(), Ordering::Relaxed);
            let parked = self.park();
            if !self.running.is_empty() {
                self.step();
            }
            self.running.extend(parked);
        }
    }

    /// Interactive sequences running.
    fn interactive(&self) -> usize {
        self.running
            .iter()
            .filter(|s| s.req.priority == Priority::Interactive)
            .count()
    }

    /// Takes out of this step the batch sequences it must not carry: all of them while an
    /// interactive sequence computes its prompt (its first token comes as soon as it
    /// would alone), and beyond that those that do not fit in the slots of `max_running`
    /// the interactive sequences leave. They keep their KV caches and go on later.
    fn park(&mut self) -> Vec<Sequence> {
        let prefilling = self
            .running
            .iter()
            .any(|s| s.req.priority == Priority::Interactive && s.last.is_none());
        let mut room = if prefilling {
            0
        } else {
            self.config.max_running.saturating_sub(self.interactive())
        };
        let mut parked = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.priority == Priority::Batch {
                if room == 0 {
                    parked.push(self.running.remove(i));
                    continue;
                }
                room -= 1;
            }
            i += 1;
        }
        parked
    }

    /// Admits a job, or holds it back when a running sequence is computing a prefix of its
    /// prompt; a job whose client has gone is dropped.
    fn take(&mut self, job: Job) {
        if job.events.is_closed() {
            self.metrics.waiting.decrement(1.0);
            self.metrics.ended(job.arrived, Ending::Abort);
            return;
        }
        if job.req.priority == Priority::Batch {
            self.batch_waiting.push_back(job);
        } else if self.shares_prefill(&job.req.prompt) {
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
        let Job {
            mut req,
            events,
            arrived,
        } = job;
        self.metrics.waiting.decrement(1.0);
        let constraint = req.constraint.take();
        let seed = req.sampling.seed.unwrap_or(req.fallback_seed);
        let sampler = Sampler::new(req.sampling.clone(), seed, &req.prompt);
        let spec = self.reasoning.as_deref().filter(|_| req.split_thought);
        let thinking = spec.map(|r| {
            let opened = r.opens_thought(&self.tokenizer, &req.prompt);
            (r.tags.clone(), opened)
        });
        let open_tokens = match (spec, &thinking) {
            (Some(r), Some((_, false))) => r.open_tokens.clone(),
            _ => Vec::new(),
        };
        let output = OutputText::new(req.stop.clone(), thinking);
        let thinking_budget = spec.map(|r| req.thinking_budget.unwrap_or(r.budget));
        if req.prompt.is_empty() {
            let _ = events.send(Event::Failed("the prompt is empty".into()));
            self.metrics.ended(arrived, Ending::Error);
            return;
        }
        let kv = if req.prompt_logprobs.is_some() {
            self.model.new_kv_cache()
        } else {
            let kv = self.prefix.lookup(&req.prompt, self.model.new_kv_cache());
            self.metrics
                .prefix_queries
                .increment(req.prompt.len() as u64);
            self.metrics.prefix_hits.increment(kv.len() as u64);
            kv
        };
        self.metrics
            .prompt_tokens
            .increment(req.prompt.len() as u64);
        let drafting = self.speculation.as_mut().map(|sp| {
            let empty = sp.draft.model.new_kv_cache();
            Drafting::new(sp.prefix.lookup(&req.prompt, empty))
        });
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
            thinking_budget,
            forced: VecDeque::new(),
            prompt_logprobs: Vec::new(),
            constraint,
            open_tokens,
            drafting,
            draft_in: Vec::new(),
            verify: Vec::new(),
            clock: Clock::new(arrived),
        });
    }

    /// One forward pass over every running sequence, then sampling for those whose prompt
    /// is fully fed.
    fn step(&mut self) {
        let chunk = self.config.prefill_chunk.max(1);
        self.draft(chunk);
        let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(self.running.len());
        for s in self.running.iter_mut() {
            let tokens: &[u32] = match s.last {
                Some(_) if !s.verify.is_empty() => &s.verify,
                Some(ref t) => std::slice::from_ref(t),
                None => &s.req.prompt[s.fed..(s.fed + s.chunk(chunk)).min(s.req.prompt.len())],
            };
            inputs.push(SeqInput {
                tokens,
                kv: &mut s.kv,
                // Proposals are verified, and a prompt's log-probabilities read, at every
                // position.
                all_logits: !s.verify.is_empty()
                    || (s.last.is_none() && s.req.prompt_logprobs.is_some()),
            });
        }
        self.metrics.batch_size.record(inputs.len() as f64);
        let tokens: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        self.metrics.iteration_tokens.record(tokens as f64);
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
                    self.metrics.ended(s.clock.arrived, Ending::Error);
                }
                return;
            }
        };
        // Sampling, detokenizing and stop checks are per sequence: spread them over the
        // math threads too (each sequence stays on one thread, so its events keep their
        // order).
        let prefilling: Vec<bool> = self.running.iter().map(|s| s.last.is_none()).collect();
        let vocab = self.model.config.vocab_size;
        let cx = StepCx {
            tokenizer: &self.tokenizer,
            close_tokens: self.reasoning.as_ref().map_or(&[][..], |r| &r.close_tokens),
            counters: self.speculation.as_ref().map(|sp| &*sp.counters),
            metrics: &self.metrics,
        };
        let outcomes: Vec<Option<()>> = self.pool.install(|| {
            self.running
                .par_iter_mut()
                .zip(logits.par_iter_mut())
                .map_init(Vec::new, |buf, (s, logits)| {
                    let mut logits = &mut logits[..];
                    if s.last.is_none() {
                        let fed = s.fed;
                        s.fed = (s.fed + s.chunk(chunk)).min(s.req.prompt.len());
                        if let Some(k) = s.req.prompt_logprobs {
                            // Row j predicts the prompt token after position fed + j.
                            for (j, row) in logits.chunks_exact_mut(vocab).enumerate() {
                                if let Some(&next) = s.req.prompt.get(fed + j + 1) {
                                    log_softmax(row, buf);
                                    s.prompt_logprobs.push(TokenLogprob {
                                        logprob: buf[next as usize],
                                        top: top_k_logprobs(buf, k),
                                    });
                                } else {
                                    let all = std::mem::take(&mut s.prompt_logprobs);
                                    let _ = s.events.send(Event::Prompt(all));
                                }
                            }
                            // The last row is what the first answer token samples from.
                            let rows = logits.len() / vocab;
                            logits = &mut logits[(rows - 1) * vocab..];
                        }
                        if s.fed < s.req.prompt.len() {
                            return None;
                        }
                    }
                    let end = if s.req.max_tokens == 0 {
                        Ok(FinishReason::Length)
                    } else if !s.verify.is_empty() {
                        Self::verify(s, logits, cx, buf)?
                    } else {
                        Self::advance(s, logits, cx, buf, None)?
                    };
                    cx.metrics.ended(
                        s.clock.arrived,
                        match &end {
                            Ok(reason) => Ending::Finished(*reason),
                            Err(_) => Ending::Error,
                        },
                    );
                    let _ = s.events.send(match end {
                        Ok(reason) => Event::Finished {
                            reason,
                            usage: s.usage(),
                        },
                        Err(msg) => Event::Failed(msg),
                    });
                    Some(())
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

    /// A sequence leaves: its computed tokens go to the prefix cache (the draft's to the
    /// draft's), and what its draft achieved to the log.
    fn retire(&mut self, s: Sequence) {
        let mut tokens = s.req.prompt;
        tokens.extend_from_slice(&s.sampled);
        self.prefix.insert(&tokens, &s.kv);
        if let (Some(sp), Some(d)) = (&mut self.speculation, &s.drafting) {
            sp.prefix.insert(&tokens, &d.kv);
            let t = &d.tally;
            if t.steps > 0 {
                tracing::info!(
                    proposed = t.proposed,
                    accepted = t.accepted,
                    acceptance = format!("{:.2}", t.acceptance()),
                    tokens_per_step = format!("{:.2}", t.tokens_per_step()),
                    "speculative decoding"
                );
            }
        }
    }

    /// The draft's part of a step. Every sequence's draft cache catches up with what the
    /// served model has seen or is about to see (prompt chunks alongside the served
    /// model's, generated tokens); then each decoding sequence whose draft has caught up
    /// gets its proposals, greedy, one draft step per token for all of them together, and
    /// its `verify` input: the last token and the proposals.
    fn draft(&mut self, chunk: usize) {
        let Some(sp) = &mut self.speculation else {
            return;
        };
        let speculate = self.running.iter().filter(|s| s.last.is_some()).count() <= MAX_BATCH;
        let mut wanted: Vec<usize> = self
            .running
            .iter_mut()
            .map(|s| s.plan_draft(chunk, speculate, sp.draft.cost))
            .collect();
        let (model, head) = (&sp.draft.model, sp.draft.head);
        let scratch = &mut sp.scratch;
        let mut round = 0;
        loop {
            let mut inputs = Vec::new();
            let mut who = Vec::new();
            for (i, s) in self.running.iter_mut().enumerate() {
                let Some(d) = &mut s.drafting else {
                    continue;
                };
                let tokens: &[u32] = if round == 0 {
                    &s.draft_in
                } else if wanted[i] > round {
                    &s.verify[round..round + 1]
                } else {
                    continue;
                };
                if tokens.is_empty() {
                    continue;
                }
                who.push(i);
                inputs.push(SeqInput::last(tokens, &mut d.kv));
            }
            if inputs.is_empty() {
                break;
            }
            let logits = match self
                .pool
                .install(|| model.forward_head(&mut inputs, scratch, head))
            {
                Ok(l) => l,
                Err(e) => {
                    // The served model decodes on alone; only this step's proposals are lost.
                    tracing::warn!(error = %e, "the draft model's step failed");
                    drop(inputs);
                    for s in self.running.iter_mut() {
                        s.verify.clear();
                    }
                    return;
                }
            };
            drop(inputs);
            for (&i, l) in who.iter().zip(&logits) {
                let s = &mut self.running[i];
                if wanted[i] <= round {
                    continue;
                }
                if round == 0 {
                    s.verify.clear();
                    s.verify.extend(s.last);
                }
                let proposal = argmax(l);
                s.verify.push(proposal);
                if self.tokenizer.is_eog(proposal) {
                    // Nothing follows the end: propose no further.
                    wanted[i] = round + 1;
                }
            }
            round += 1;
        }
    }

    /// Samples a verified step's tokens position by position, as decoding without a draft
    /// would, each with its proposal, up to the first token that is not its proposal (or
    /// the end); the caches forget the positions past it. Returns as [`Self::advance`].
    fn verify(
        s: &mut Sequence,
        logits: &mut [f32],
        cx: StepCx<'_>,
        buf: &mut Vec<f32>,
    ) -> Option<Result<FinishReason, String>> {
        let input = std::mem::take(&mut s.verify);
        let vocab = logits.len() / input.len();
        let proposed = input.len() - 1;
        let base = s.kv.len() - input.len();
        let mut i = 0;
        let end = loop {
            let proposal = input.get(i + 1).copied();
            let row = &mut logits[i * vocab..(i + 1) * vocab];
            if let Some(end) = Self::advance(s, row, cx, buf, proposal) {
                break Some(end);
            }
            if proposal.is_none() || s.last != proposal {
                break None;
            }
            i += 1;
        };
        // Positions base..=base + i hold the last token and the i proposals taken.
        s.kv.truncate(base + i + 1);
        if let (Some(d), Some(all)) = (&mut s.drafting, cx.counters) {
            d.kv.truncate(d.kv.len().min(base + i + 1));
            d.record(proposed, i, i + 1, all);
        }
        s.verify = input;
        s.verify.clear();
        end
    }

    /// Samples (or takes a forced) token for a sequence, given the draft's `proposal` if
    /// there is one, and emits its text; returns why the sequence ended, if it did (an
    /// error: its grammar failed).
    fn advance(
        s: &mut Sequence,
        logits: &mut [f32],
        cx: StepCx<'_>,
        buf: &mut Vec<f32>,
        proposal: Option<u32>,
    ) -> Option<Result<FinishReason, String>> {
        let (tokenizer, close_tokens) = (cx.tokenizer, cx.close_tokens);
        // Log-probabilities describe the model's distribution, before the sampler's changes.
        if s.req.logprobs.is_some() {
            log_softmax(logits, buf);
        }
        let forced = s.forced.pop_front();
        // The constraint holds outside the thought. The output may begin with the tag
        // that opens one: its first token is allowed besides the grammar's, and once it
        // is chosen the rest of the tag follows.
        let constrained = forced.is_none() && !s.output.in_thought();
        let open = s
            .open_tokens
            .get(s.sampled.len())
            .copied()
            .filter(|_| s.open_tokens.starts_with(&s.sampled));
        if let Some(c) = &mut s.constraint {
            if constrained && !s.sampled.is_empty() && open.is_some() {
                for (id, l) in logits.iter_mut().enumerate() {
                    if Some(id as u32) != open {
                        *l = f32::NEG_INFINITY;
                    }
                }
            } else if constrained {
                match c.mask(logits, open) {
                    // The grammar's own reading of the token wins: no thought opens.
                    Ok(true) => s.open_tokens.clear(),
                    Ok(false) => {}
                    Err(e) => return Some(Err(format!("constrained decoding: {e}"))),
                }
            } else if forced.is_none() {
                // An answer is owed: the thought may not end the turn (it closes by
                // itself, or its budget closes it).
                for id in tokenizer.eog_ids() {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let token = forced.unwrap_or_else(|| s.sampler.sample_proposed(logits, proposal));
        if constrained
            && (Some(token) != open || s.open_tokens.is_empty())
            && let Some(c) = &mut s.constraint
            && let Err(e) = c.commit(token)
        {
            return Some(Err(format!("constrained decoding: {e}")));
        }
        s.generated += 1;
        s.clock.token(cx.metrics);
        cx.metrics.generation_tokens.increment(1);
        s.last = Some(token);
        s.sampled.push(token);
        let logprob = s.req.logprobs.map(|k| {
            let mut top = top_k_logprobs(buf, k);
            for &id in &s.req.logprobs_of {
                if !top.iter().any(|&(t, _)| t == id)
                    && let Some(&lp) = buf.get(id as usize)
                {
                    top.push((id, lp));
                }
            }
            TokenLogprob {
                logprob: buf[token as usize],
                top,
            }
        });
        if tokenizer.is_eog(token) {
            let tail = s.output.push_end();
            Self::send_text(s, tail);
            return Some(Ok(FinishReason::Stop));
        }
        let Piece { split, stopped } = s
            .output
            .push(Self::token_text(s, tokenizer, token), forced.is_some());
        let _ = s.events.send(Event::Token {
            id: token,
            text: split,
            logprob,
            usage: s.usage(),
        });
        if stopped {
            return Some(Ok(FinishReason::Stop));
        }
        if let Some(budget) = s.thinking_budget
            && s.output.in_thought()
            && s.forced.is_empty()
            && s.output.reasoning_tokens() + close_tokens.len() >= budget
        {
            let piece = s.output.force_close();
            s.forced.extend(close_tokens.iter().copied());
            Self::send_text(s, piece.split);
        }
        // `submit` made sure the prompt and `max_tokens` fit the context.
        if s.generated >= s.req.max_tokens {
            let tail = s.output.finish();
            Self::send_text(s, tail);
            return Some(Ok(FinishReason::Length));
        }
        None
    }

    /// The bytes `token` adds to the output.
    fn token_text<'t>(s: &Sequence, tokenizer: &'t Tokenizer, token: u32) -> &'t [u8] {
        match tokenizer.special_text(token) {
            Some(text) if s.req.shown.contains(&token) => text.as_bytes(),
            _ => tokenizer.token_bytes(token),
        }
    }

    fn send_text(s: &Sequence, split: Split) {
        if !split.is_empty() {
            let _ = s.events.send(Event::Text(split));
        }
    }
}

impl Sequence {
    /// Fills `draft_in` with what the draft's cache lacks this step (the served model's
    /// prompt chunk, or the generated tokens since it last drafted, a chunk at most) and
    /// returns how many tokens to propose after them: none while prefilling, catching up,
    /// feeding a forced token, or when `speculate` is off (the batch is too large).
    fn plan_draft(&mut self, chunk: usize, speculate: bool, cost: f64) -> usize {
        self.draft_in.clear();
        let Some(d) = &mut self.drafting else {
            return 0;
        };
        let (from, known) = (d.kv.len(), self.req.prompt.len() + self.sampled.len());
        let mut k = 0;
        let to = match self.last {
            None => (self.fed + self.chunk(chunk)).min(self.req.prompt.len()),
            Some(_) => {
                let caught_up = known - from <= chunk;
                if speculate && caught_up && self.forced.is_empty() {
                    // Every proposal and the token after them count against max_tokens.
                    let room = self.req.max_tokens.saturating_sub(self.generated + 1);
                    k = d.proposals(cost, room);
                }
                if k == 0 && caught_up {
                    // Not proposing: the draft catches up when it next does.
                    return 0;
                }
                known.min(from + chunk)
            }
        };
        let (prompt, sampled) = (&self.req.prompt, &self.sampled);
        let at = |p: usize| {
            prompt
                .get(p)
                .copied()
                .unwrap_or_else(|| sampled[p - prompt.len()])
        };
        self.draft_in.extend((from..to.max(from)).map(at));
        k
    }

    /// Prompt tokens to feed this step: a chunk, a smaller one when the prompt's logprobs
    /// are wanted (every position's logits are kept, a vocabulary's worth of floats each).
    fn chunk(&self, chunk: usize) -> usize {
        if self.req.prompt_logprobs.is_some() {
            chunk.min(PROMPT_LOGPROBS_CHUNK)
        } else {
            chunk
        }
    }

    /// The counts so far, for the sequence's events.
    fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt: self.req.prompt.len() as u64,
            cached: self.cached as u64,
            completion: self.generated as u64,
            reasoning: self.output.reasoning_tokens() as u64,
        }
    }
}
