//! Speculative decoding: a small draft model of the same vocabulary proposes the next few
//! tokens, and the served model checks them all in one forward step.
//!
//! Single-stream decode is bound by reading the weights once per step, and a step over
//! `k + 1` tokens reads them once too, so every proposal the served model agrees with is a
//! token for almost nothing. The draft proposes its greedy choices (among the vocabulary's
//! first [`DRAFT_HEAD`] tokens, a fraction of its output matrix to read); the scheduler
//! feeds the last token and the proposals to the served model with every position's logits, then
//! samples position after position as it would without a draft, handing the sampler each
//! proposal ([`crate::sampler::Sampler::sample_proposed`]), and stops at the first token
//! that differs from its proposal. So greedy output is the output without a draft, token
//! for token, and sampled output keeps the served model's distribution; constraints,
//! stops, budgets, logprobs and usage all see the same tokens in the same order.
//!
//! How many tokens to propose follows each sequence's running acceptance rate
//! ([`Drafting::proposals`]): proposing costs a draft step per token, and a proposal is
//! worth only its chance of being taken. With many sequences in a step, the served model's
//! step is no longer bound by its weights but by arithmetic, so extra positions cost their
//! full price; speculation then stands aside ([`MAX_BATCH`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::EngineError;
use crate::model::{KvCache, Model};
use crate::tokenizer::Tokenizer;

/// The most tokens proposed in one step.
pub const MAX_PROPOSALS: usize = 8;

/// Decoding sequences in a step beyond which none speculates: past a handful, a step's
/// cost grows with its tokens, and proposals that may be refused are no longer cheap.
pub const MAX_BATCH: usize = 4;

/// Steps a sequence goes without drafting when proposing does not pay, before it tries a
/// single proposal again (its acceptance may have changed with the text).
const PAUSE_STEPS: usize = 16;

/// Tokens a draft proposes among: the first ones of its vocabulary. BPE vocabularies are
/// in merge order, most frequent first, and a small model's output matrix over 150k tokens
/// is a third of what it reads per token (Qwen2.5-Coder-0.5B: 138 of 375 MiB), so the
/// draft reads only the rows of the frequent tokens (FR-Spec's frequency-ranked draft
/// head, with the vocabulary's own order for the ranking). Measured with the 1.5B model on
/// a coding answer: the first 65536 rows kept acceptance at 0.83 (0.84 with all) and gave
/// 60.5-61.9 tokens/s against 58.2-59.8; 32768 rows cut it to 0.68 and 53-54 tokens/s.
pub const DRAFT_HEAD: usize = 65536;

/// A draft model for a served model: checked to share its vocabulary.
pub struct Draft {
    pub model: Arc<Model>,
    /// The tokens it proposes among: ids below this ([`DRAFT_HEAD`]).
    pub head: usize,
    /// A draft step's cost in served-model steps: the ratio of the bytes each reads per
    /// token (the draft's output matrix over its head only), which bounds both at batch 1.
    pub cost: f64,
}

impl std::fmt::Debug for Draft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draft")
            .field("head", &self.head)
            .field("cost", &self.cost)
            .finish()
    }
}

impl Draft {
    /// Pairs `model` (with its tokenizer) as the draft of `target`, refusing a draft whose
    /// vocabulary differs in any token: its proposals would be other tokens' ids.
    pub fn new(
        model: Arc<Model>,
        tokenizer: &Tokenizer,
        target: &Model,
        target_tokenizer: &Tokenizer,
    ) -> Result<Draft, EngineError> {
        let (n, m) = (tokenizer.vocab_size(), target_tokenizer.vocab_size());
        if n != m || model.config.vocab_size != target.config.vocab_size {
            return Err(EngineError::BadModel(format!(
                "the draft model's vocabulary ({n} tokens, {} logits) is not the served model's ({m} tokens, {} logits)",
                model.config.vocab_size, target.config.vocab_size
            )));
        }
        if let Some(id) = (0..n as u32).find(|&id| {
            tokenizer.token_bytes(id) != target_tokenizer.token_bytes(id)
                || tokenizer.special_text(id) != target_tokenizer.special_text(id)
        }) {
            return Err(EngineError::BadModel(format!(
                "the draft model's vocabulary differs from the served model's at token {id} ({:?} against {:?})",
                String::from_utf8_lossy(tokenizer.token_bytes(id)),
                String::from_utf8_lossy(target_tokenizer.token_bytes(id)),
            )));
        }
        let vocab = model.config.vocab_size;
        let head = DRAFT_HEAD.min(vocab);
        let skipped = model.head_bytes() as f64 * (1.0 - head as f64 / vocab as f64);
        let cost =
            (model.streamed_bytes() as f64 - skipped) / target.streamed_bytes().max(1) as f64;
        Ok(Draft { model, head, cost })
    }
}

/// What speculation achieved since the engine started, over all sequences (for logs and
/// metrics): proposals made and taken, verifying steps and the tokens they produced.
#[derive(Debug, Default)]
pub struct Counters {
    pub proposed: AtomicUsize,
    pub accepted: AtomicUsize,
    pub steps: AtomicUsize,
    pub produced: AtomicUsize,
}

impl Counters {
    fn add(&self, step: &Tally) {
        self.proposed.fetch_add(step.proposed, Ordering::Relaxed);
        self.accepted.fetch_add(step.accepted, Ordering::Relaxed);
        self.steps.fetch_add(step.steps, Ordering::Relaxed);
        self.produced.fetch_add(step.produced, Ordering::Relaxed);
    }
}

/// [`Counters`]' figures for one sequence (or one verifying step).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Tally {
    pub proposed: usize,
    pub accepted: usize,
    /// Served-model steps that verified proposals, and the tokens they produced.
    pub steps: usize,
    pub produced: usize,
}

impl Tally {
    /// The share of proposals taken.
    pub(crate) fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.proposed.max(1) as f64
    }

    /// Tokens per verifying step.
    pub(crate) fn tokens_per_step(&self) -> f64 {
        self.produced as f64 / self.steps.max(1) as f64
    }
}

/// One sequence's drafting: the draft's own cache, its acceptance so far, and the counts
/// the log reports.
pub(crate) struct Drafting {
    pub kv: KvCache,
    /// Accepted and decided proposals, both decayed so the rate follows the text.
    accepted: f64,
    decided: f64,
    /// Steps left without drafting.
    paused: usize,
    pub tally: Tally,
}

impl Drafting {
    pub(crate) fn new(kv: KvCache) -> Self {
        Drafting {
            kv,
            // A prior of two decisions at 70%: code and chat drafts of the same family
            // agree that often, and a new sequence proposes a few tokens at once.
            accepted: 1.4,
            decided: 2.0,
            paused: 0,
            tally: Tally::default(),
        }
    }

    /// The running acceptance rate of one proposal.
    pub(crate) fn rate(&self) -> f64 {
        self.accepted / self.decided
    }

    /// How many tokens to propose this step (at most `room`): the `k` that maximizes the
    /// expected tokens per unit of time, `(1 - a^(k+1)) / (1 - a)` over `1 + cost · k`, for
    /// acceptance rate `a`; none (and a pause) when no `k` beats decoding alone.
    pub(crate) fn proposals(&mut self, cost: f64, room: usize) -> usize {
        if self.paused > 0 {
            self.paused -= 1;
            return if self.paused == 0 { 1.min(room) } else { 0 };
        }
        let k = best_k(self.rate(), cost, room.min(MAX_PROPOSALS));
        if k == 0 {
            self.paused = PAUSE_STEPS;
        }
        k
    }

    /// Records a verification: `proposed` tokens offered, the first `accepted` taken, and
    /// `produced` tokens in all (the sampled one after them included).
    pub(crate) fn record(
        &mut self,
        proposed: usize,
        accepted: usize,
        produced: usize,
        all: &Counters,
    ) {
        let step = Tally {
            proposed,
            accepted,
            steps: 1,
            produced,
        };
        all.add(&step);
        let t = &mut self.tally;
        (t.proposed, t.accepted) = (t.proposed + proposed, t.accepted + accepted);
        (t.steps, t.produced) = (t.steps + 1, t.produced + produced);
        const DECAY: f64 = 0.9;
        // The first refusal ends the run: later proposals were never decided.
        let decided = accepted + usize::from(accepted < proposed);
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.decided = self.decided * DECAY + decided as f64;
    }
}

/// The number of proposals (up to `most`) with the best expected tokens per cost.
fn best_k(rate: f64, cost: f64, most: usize) -> usize {
    let rate = rate.clamp(0.0, 0.999);
    let mut best = (0, 1.0);
    for k in 1..=most {
        let tokens = (1.0 - rate.powi(k as i32 + 1)) / (1.0 - rate);
        let gain = tokens / (1.0 + cost * k as f64);
        // A clear gain only: a draft step also costs its own fixed overheads.
        if gain > best.1 * 1.02 {
            best = (k, gain);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_follow_acceptance_and_cost() {
        // A good draft at a third of the cost proposes several tokens, a poor one none.
        assert!((3..=6).contains(&best_k(0.9, 0.35, MAX_PROPOSALS)));
        assert!((1..=3).contains(&best_k(0.7, 0.35, MAX_PROPOSALS)));
        assert_eq!(best_k(0.2, 0.35, MAX_PROPOSALS), 0);
        // A nearly free draft that is always right proposes all it may.
        assert_eq!(best_k(1.0, 0.01, MAX_PROPOSALS), MAX_PROPOSALS);
        assert_eq!(best_k(1.0, 0.01, 2), 2);
        assert_eq!(best_k(0.9, 0.35, 0), 0);
    }

    #[test]
    fn acceptance_is_learned_and_a_useless_draft_pauses() {
        let mut d = Drafting::new(KvCache::new(1, 1));
        let k = d.proposals(0.35, 100);
        assert!(k >= 1);
        let all = Counters::default();
        for _ in 0..20 {
            d.record(4, 0, 1, &all);
        }
        assert!(d.rate() < 0.1, "{}", d.rate());
        assert_eq!(d.proposals(0.35, 100), 0);
        // Paused, then one proposal to try again.
        let tries: Vec<usize> = (0..PAUSE_STEPS).map(|_| d.proposals(0.35, 100)).collect();
        assert!(tries[..PAUSE_STEPS - 1].iter().all(|&k| k == 0));
        assert_eq!(tries[PAUSE_STEPS - 1], 1);
        for _ in 0..30 {
            d.record(4, 4, 5, &all);
        }
        assert!(d.rate() > 0.9);
        assert!(d.proposals(0.35, 100) >= 3);
        assert_eq!(d.proposals(0.35, 2), 2, "no more than the room left");
        assert_eq!(d.tally.proposed, 20 * 4 + 30 * 4);
        assert_eq!(d.tally.accepted, 30 * 4);
        assert_eq!(all.steps.load(Ordering::Relaxed), 50);
        assert_eq!(all.produced.load(Ordering::Relaxed), 20 + 30 * 5);
    }
}
