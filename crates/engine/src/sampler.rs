//! Turning a step's logits into the next token.
//!
//! The order of operations follows what vLLM and llama.cpp users expect: logit bias, then
//! penalties, then (unless greedy) temperature, top-k, top-p, min-p, and a draw. Log
//! probabilities reported to the client come from the model's own distribution (before any
//! of this), as OpenAI and vLLM report them.
//!
//! The random generator is our own SplitMix64 rather than a crate's: a seeded request must
//! produce the same tokens across tokenfab releases, and general-purpose RNG crates do not
//! promise value stability across versions.

use crate::model;
use std::collections::HashMap;

/// The sampling knobs of one request, already validated by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub min_p: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// 1.0 means none; applied to every token seen in the prompt or the output (vLLM).
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    pub logit_bias: HashMap<u32, f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            logit_bias: HashMap::new(),
        }
    }
}

/// SplitMix64: tiny, fast, and its output for a given seed never changes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
impl Rng {
    /// Uniform in [-1, 1]: random weights and activations for the kernels' tests.
    pub(crate) fn next_signed_f32(&mut self) -> f32 {
        (self.next_f64() * 2.0 - 1.0) as f32
    }
}

/// Per-sequence sampling state: the parameters, the generator, and the token counts the
/// penalties need (kept incrementally so a step costs O(vocab), not O(history)).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Occurrences of each token in the output so far.
    output_counts: HashMap<u32, u32>,
    /// Tokens seen in prompt or output, for the repetition penalty.
    seen: HashMap<u32, ()>,
    /// Reused buffer of (token, logit) candidates.
    candidates: Vec<(u32, f32)>,
    /// Reused buffer of every token's weight (sampling from the whole distribution).
    weights: Vec<f32>,
}

impl Sampler {
    /// `seed` is the effective seed: the request's, or a random one chosen by the caller.
    pub fn new(params: SamplingParams, seed: u64, prompt: &[u32]) -> Self {
        let mut seen = HashMap::new();
        if params.repetition_penalty != 1.0 {
            for &t in prompt {
                seen.insert(t, ());
            }
        }
        Sampler {
            params,
            rng: Rng::new(seed),
            output_counts: HashMap::new(),
            seen,
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.sample_proposed(logits, None)
    }

    /// [`Sampler::sample`] where a draft model proposed `proposal` (speculative decoding):
    /// the token drawn is still distributed exactly as the sampler's distribution `p`, but
    /// it is the proposal whenever it can be. The proposal is taken with probability
    /// `p(proposal)`, else a token is drawn from `p` without it, renormalized; so every
    /// token `x` comes with probability `p(x)`. (This is the speculative-sampling rule for
    /// a draft that proposes its argmax, whose own distribution is a point mass.) Greedy
    /// sampling takes the argmax, proposal or not, so speculative greedy output is the
    /// output without a draft, token for token.
    pub fn sample_proposed(&mut self, logits: &mut [f32], proposal: Option<u32>) -> u32 {
        self.apply_bias_and_penalties(logits);
        let token = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits, proposal)
        };
        *self.output_counts.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token, ());
        }
        token
    }

    fn apply_bias_and_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        for (&t, &b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn draw(&mut self, logits: &[f32], proposal: Option<u32>) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            return self.draw_all(logits, inv_t, proposal);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if c.is_empty() {
            return argmax(logits);
        }
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_weight);
            c.truncate(p.top_k);
        }
        let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.1));
        let mut sum = 0.0f64;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            sum += x.1 as f64;
        }
        // Candidates are visited in descending order, but only as far as the walk goes:
        // the probability mass sits in a few tokens, and sorting a 150k vocabulary for
        // every token of every stream was a tenth of the serving time.
        let mut order = Descending::default();
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0f64;
            for i in 0..c.len() {
                acc += order.at(c, i).1 as f64 / sum;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // Probabilities are relative to the top one, which has weight exp(0) = 1.
            let above = (0..keep)
                .take_while(|&i| order.at(c, i).1 >= p.min_p)
                .count();
            keep = above.max(1);
        }
        let mut total = if keep == c.len() {
            sum
        } else {
            (0..keep).map(|i| order.at(c, i).1 as f64).sum()
        };
        // The kept candidates are `c[..keep]`: all of them, or the first `keep` in order.
        if let Some(d) = proposal {
            let w = c[..keep]
                .iter()
                .find(|x| x.0 == d)
                .map_or(0.0, |x| x.1 as f64);
            match accept(&mut self.rng, w, total) {
                Some(true) => return d,
                Some(false) => total -= w,
                None => {}
            }
        }
        let mut r = self.rng.next_f64() * total;
        let mut last = order.at(c, keep - 1).0;
        for i in 0..keep {
            let (token, w) = order.at(c, i);
            if Some(token) == proposal {
                continue;
            }
            last = token;
            r -= w as f64;
            if r < 0.0 {
                return token;
            }
        }
        last
    }
}

/// Whether a proposal of weight `w` out of `total` is taken (`None` when it cannot be
/// drawn at all, or is the only token that can): drawn with probability `w / total`.
fn accept(rng: &mut Rng, w: f64, total: f64) -> Option<bool> {
    if w <= 0.0 || w >= total {
        return (w > 0.0).then_some(true);
    }
    Some(rng.next_f64() * total < w)
}

impl Sampler {
    /// Sampling from the whole distribution (no top-k, top-p or min-p cut): no candidate
    /// list and no order, only the weights in token order, a vectorized `exp`, and a walk
    /// to the drawn point of the cumulative sum (any fixed order draws from the same
    /// distribution).
    fn draw_all(&mut self, logits: &[f32], inv_t: f32, proposal: Option<u32>) -> u32 {
        let max = logits
            .iter()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, |m, &l| m.max(l * inv_t));
        if max == f32::NEG_INFINITY {
            return argmax(logits);
        }
        let w = &mut self.weights;
        w.clear();
        w.extend(logits.iter().map(|&l| (l * inv_t - max).min(0.0)));
        model::exp_nonpositive(w);
        // Tokens that cannot be drawn (-inf or NaN logits) weigh nothing.
        for (w, l) in w.iter_mut().zip(logits) {
            if !l.is_finite() {
                *w = 0.0;
            }
        }
        let mut sum: f64 = w.iter().map(|&x| x as f64).sum();
        if let Some(d) = proposal {
            let wd = w.get(d as usize).map_or(0.0, |&x| x as f64);
            match accept(&mut self.rng, wd, sum) {
                Some(true) => return d,
                Some(false) => {
                    sum -= wd;
                    w[d as usize] = 0.0;
                }
                None => {}
            }
        }
        let mut r = self.rng.next_f64() * sum;
        let mut last = 0;
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                last = i;
                r -= x as f64;
                if r < 0.0 {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// Descending by weight; ties by token id, so the order is deterministic.
fn by_weight(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Lazily sorts candidates in descending order: `c[..sorted]` is in final order and every
/// later element ranks below them, so reading position `i` sorts only as far as `i` (in
/// geometrically growing chunks, each found with a linear-time selection).
#[derive(Default)]
struct Descending {
    sorted: usize,
}

impl Descending {
    fn at(&mut self, c: &mut [(u32, f32)], i: usize) -> (u32, f32) {
        if i >= self.sorted {
            let target = (i + 1).max(2 * self.sorted).max(64).min(c.len());
            let rest = &mut c[self.sorted..];
            let k = target - self.sorted;
            if k < rest.len() {
                rest.select_nth_unstable_by(k - 1, by_weight);
            }
            rest[..k].sort_unstable_by(by_weight);
            self.sorted = target;
        }
        c[i]
    }
}

/// Index of the largest logit; the lowest index wins ties so greedy output is stable.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log softmax of `logits` into `out` (same length).
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    out.clear();
    out.extend(logits.iter().map(|&l| l - lse));
}

/// The `k` most likely tokens of a log-probability vector, most likely first.
pub fn top_k_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let mut s = Sampler::new(params(0.0), 1, &[]);
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0), seed, &[]);
            (0..40)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = params(5.0);
        p.top_k = 1;
        let mut s = Sampler::new(p, 7, &[]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 2.0, 0.5]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut p = params(1.0);
        p.top_p = 0.5;
        let mut s = Sampler::new(p, 3, &[]);
        // token 0 has ~0.84 of the mass: the nucleus at 0.5 is token 0 alone.
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [3.0, 1.0, 0.0, 0.0]), 0);
        }
    }

    #[test]
    fn min_p_cuts_unlikely_tokens() {
        let mut p = params(1.0);
        p.min_p = 0.5;
        let mut s = Sampler::new(p, 9, &[]);
        for _ in 0..50 {
            let t = s.sample(&mut [2.0, 1.9, -5.0, -5.0]);
            assert!(t == 0 || t == 1);
        }
    }

    #[test]
    fn penalties_change_the_choice() {
        let mut p = params(0.0);
        p.frequency_penalty = 2.0;
        let mut s = Sampler::new(p, 0, &[]);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 0);
        // token 0 now carries a penalty of 2.0: 1.0 - 2.0 < 0.5
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);

        let mut p = params(0.0);
        p.repetition_penalty = 4.0;
        let mut s = Sampler::new(p, 0, &[0]);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);

        let mut p = params(0.0);
        p.presence_penalty = 1.0;
        let mut s = Sampler::new(p, 0, &[]);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 0);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);
    }

    #[test]
    fn tokens_without_weight_are_never_drawn() {
        // -inf and NaN logits beside ordinary ones: the whole-distribution path skips them.
        let mut s = Sampler::new(params(1.0), 7, &[]);
        for _ in 0..200 {
            let mut l = vec![f32::NEG_INFINITY, 0.5, f32::NAN, 0.4, f32::NEG_INFINITY];
            let t = s.sample(&mut l);
            assert!(t == 1 || t == 3, "drew {t}");
        }
    }

    #[test]
    fn logit_bias_can_ban_a_token() {
        let mut p = params(0.0);
        p.logit_bias.insert(0, -100.0);
        let mut s = Sampler::new(p, 0, &[]);
        assert_eq!(s.sample(&mut [5.0, 1.0]), 1);
    }

    #[test]
    fn log_softmax_and_top_k() {
        let mut out = Vec::new();
        log_softmax(&[0.0, 0.0_f32.ln_1p(), 2.0], &mut out);
        let total: f32 = out.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        let top = top_k_logprobs(&out, 2);
        assert_eq!(top[0].0, 2);
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(params(1.0), 11, &[]);
        let logits = [0.0f32, (3.0f32).ln()];
        let ones = (0..4000)
            .filter(|_| s.sample(&mut logits.clone()) == 1)
            .count();
        // expected 3000 of 4000
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    /// A large vocabulary whose mass spreads over 300 tokens, so the draw walks past the
    /// first lazily sorted chunks: frequencies follow the distribution, and top-p still
    /// keeps exactly the nucleus.
    /// Speculative sampling keeps the target's distribution: whatever the draft proposes
    /// (a likely token, an unlikely one, one the cuts remove, none), the tokens drawn
    /// follow the sampler's own distribution, for the whole-vocabulary draw and the cut
    /// one (top-k, top-p) alike; and greedy takes the argmax whatever is proposed.
    #[test]
    fn proposals_keep_the_distribution() {
        let logits = [1.0f32, 2.5, 0.3, 2.0, -1.0, 1.7];
        let n = 60_000;
        let cases = [
            params(0.8),
            SamplingParams {
                top_k: 4,
                top_p: 0.9,
                ..params(1.3)
            },
        ];
        for (ci, sp) in cases.into_iter().enumerate() {
            // The reference: the distribution drawn without proposals.
            let freq = |proposal: Option<u32>, seed: u64| {
                let mut s = Sampler::new(sp.clone(), seed, &[]);
                let mut f = [0usize; 6];
                for _ in 0..n {
                    f[s.sample_proposed(&mut logits.clone(), proposal) as usize] += 1;
                }
                f
            };
            let base = freq(None, 1);
            for proposal in [Some(1), Some(4), Some(5), Some(0)] {
                let got = freq(proposal, 2 + proposal.unwrap() as u64);
                for t in 0..6 {
                    let (a, b) = (base[t] as f64 / n as f64, got[t] as f64 / n as f64);
                    // Two samples' frequencies: about five standard deviations apart at most.
                    let sd = (2.0 * a.max(b).max(1e-4) * (1.0 - a.min(b)) / n as f64).sqrt();
                    assert!(
                        (a - b).abs() <= 5.0 * sd + 1e-4,
                        "case {ci}, proposal {proposal:?}, token {t}: {a} vs {b}"
                    );
                }
            }
        }
        let mut greedy = Sampler::new(params(0.0), 1, &[]);
        for d in 0..6 {
            assert_eq!(greedy.sample_proposed(&mut logits.clone(), Some(d)), 1);
        }
        // A proposal the cuts remove is never drawn.
        let mut cut = Sampler::new(
            SamplingParams {
                top_k: 2,
                ..params(1.0)
            },
            9,
            &[],
        );
        assert!((0..2000).all(|_| cut.sample_proposed(&mut logits.clone(), Some(4)) != 4));
    }

    #[test]
    fn lazy_order_over_a_large_vocabulary() {
        let mut logits = vec![-30.0f32; 20_000];
        // Tokens 7, 73, ..., 19741 (scattered ids) get equal high logits, one gets more.
        let hot: Vec<usize> = (0..300).map(|i| i * 66 + 7).collect();
        for &t in &hot {
            logits[t] = 0.0;
        }
        logits[hot[150]] = (30.0f32).ln(); // 30x the weight of each other hot token
        let mut s = Sampler::new(params(1.0), 5, &[]);
        let n = 20_000;
        let mut hits = 0;
        for _ in 0..n {
            let t = s.sample(&mut logits.clone()) as usize;
            assert!(hot.contains(&t), "{t} is outside the hot set");
            hits += (t == hot[150]) as usize;
        }
        // expected 30/329 of the draws
        let want = n * 30 / 329;
        assert!(hits.abs_diff(want) < want / 10, "{hits} vs {want}");

        // top_p 0.05: the heavy token (0.091 of the mass) alone is the nucleus.
        let mut p = params(1.0);
        p.top_p = 0.05;
        let mut s = Sampler::new(p, 6, &[]);
        for _ in 0..200 {
            assert_eq!(s.sample(&mut logits.clone()) as usize, hot[150]);
        }
        // top_p 0.5: the heavy token and about 135 of the others, never a cold one.
        let mut p = params(1.0);
        p.top_p = 0.5;
        let mut s = Sampler::new(p, 7, &[]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            let t = s.sample(&mut logits.clone()) as usize;
            assert!(hot.contains(&t));
            seen.insert(t);
        }
        assert!((100..=140).contains(&seen.len()), "{}", seen.len());
    }
}
