//! What the engine reports to the process's metrics recorder (the `metrics` facade; the
//! server installs a Prometheus exporter, an embedder may install anything or nothing).
//!
//! Names follow vLLM's `vllm:` series with a `tokenfab:` prefix and the same `model_name`
//! label, so a vLLM dashboard needs only its prefix changed. Every handle is registered
//! once, when the engine starts: recording on the hot path is then an atomic add (a
//! histogram sample is a lock-free push), never a lookup by name.

use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::scheduler::FinishReason;

/// Names of the engine's histograms of counts per step, so an exporter can give them
/// buckets of counts (the latency histograms' names end in `_seconds`).
pub const STEP_HISTOGRAMS: [&str; 2] = [ITERATION_TOKENS, BATCH_SIZE];

const TTFT: &str = "tokenfab:time_to_first_token_seconds";
const ITL: &str = "tokenfab:inter_token_latency_seconds";
const E2E: &str = "tokenfab:e2e_request_latency_seconds";
const ITERATION_TOKENS: &str = "tokenfab:iteration_tokens_total";
const BATCH_SIZE: &str = "tokenfab:batch_size";

/// One engine's handles, labelled with the model's served id.
pub(crate) struct EngineMetrics {
    pub running: Gauge,
    /// Jobs queued or held back, not yet stepped.
    pub waiting: Gauge,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_queries: Counter,
    pub prefix_hits: Counter,
    pub kv_used: Gauge,
    pub kv_free: Gauge,
    /// Blocks the prefix cache keeps: of `kv_used`, those no sequence needs. An idle
    /// engine holds these and no others, so the two differing at rest is a leak.
    pub prefix_blocks: Gauge,
    pub iteration_tokens: Histogram,
    pub batch_size: Histogram,
    stop: Counter,
    length: Counter,
    abort: Counter,
    error: Counter,
    /// Jobs refused because the queue was full (the server's 503s).
    pub rejected: Counter,
    pub draft_tokens: Counter,
    pub accepted_tokens: Counter,
}

/// How a sequence left the engine, for `tokenfab:request_success_total`'s label.
pub(crate) enum Ending {
    Finished(FinishReason),
    /// The client went away first.
    Abort,
    Error,
}

impl EngineMetrics {
    pub fn new(model: &str) -> EngineMetrics {
        let m = model.to_string();
        let finished = |reason: &'static str| counter!("tokenfab:request_success_total", "model_name" => m.clone(), "finished_reason" => reason);
        EngineMetrics {
            running: gauge!("tokenfab:num_requests_running", "model_name" => m.clone()),
            waiting: gauge!("tokenfab:num_requests_waiting", "model_name" => m.clone()),
            ttft: histogram!(TTFT, "model_name" => m.clone()),
            itl: histogram!(ITL, "model_name" => m.clone()),
            e2e: histogram!(E2E, "model_name" => m.clone()),
            prompt_tokens: counter!("tokenfab:prompt_tokens_total", "model_name" => m.clone()),
            generation_tokens: counter!("tokenfab:generation_tokens_total", "model_name" => m.clone()),
            prefix_queries: counter!("tokenfab:prefix_cache_queries_total", "model_name" => m.clone()),
            prefix_hits: counter!("tokenfab:prefix_cache_hits_total", "model_name" => m.clone()),
            kv_used: gauge!("tokenfab:kv_blocks_used", "model_name" => m.clone()),
            kv_free: gauge!("tokenfab:kv_blocks_free", "model_name" => m.clone()),
            prefix_blocks: gauge!("tokenfab:prefix_cache_blocks", "model_name" => m.clone()),
            iteration_tokens: histogram!(ITERATION_TOKENS, "model_name" => m.clone()),
            batch_size: histogram!(BATCH_SIZE, "model_name" => m.clone()),
            stop: finished("stop"),
            length: finished("length"),
            abort: finished("abort"),
            error: finished("error"),
            rejected: counter!("tokenfab:num_requests_rejected_total", "model_name" => m.clone(), "reason" => "overloaded"),
            draft_tokens: counter!("tokenfab:spec_decode_num_draft_tokens_total", "model_name" => m.clone()),
            accepted_tokens: counter!("tokenfab:spec_decode_num_accepted_tokens_total", "model_name" => m),
        }
    }

    /// A sequence has left: its end-to-end latency (from submission) and why.
    pub fn ended(&self, arrived: Instant, how: Ending) {
        self.e2e.record(arrived.elapsed().as_secs_f64());
        match how {
            Ending::Finished(FinishReason::Stop) => self.stop.increment(1),
            Ending::Finished(FinishReason::Length) => self.length.increment(1),
            Ending::Abort => self.abort.increment(1),
            Ending::Error => self.error.increment(1),
        }
    }
}

/// When a sequence's tokens came, for its latencies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub arrived: Instant,
    /// The last token's time; `None` before the first.
    pub last: Option<Instant>,
}

impl Clock {
    pub fn new(arrived: Instant) -> Clock {
        Clock {
            arrived,
            last: None,
        }
    }

    /// A token came now: the time to the first token, or since the previous one.
    pub fn token(&mut self, m: &EngineMetrics) {
        let now = Instant::now();
        match self.last {
            None => m
                .ttft
                .record(now.duration_since(self.arrived).as_secs_f64()),
            Some(t) => m.itl.record(now.duration_since(t).as_secs_f64()),
        }
        self.last = Some(now);
    }
}
