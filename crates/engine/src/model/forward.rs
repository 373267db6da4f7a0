//! One forward step: embeddings, the layer stack, and the logits of each sequence's last
//! token.
//!
//! # Batching
//!
//! A step gathers the new tokens of *every* sequence in the batch (prompt chunks and decode
//! tokens alike) into one activation matrix, one row per token, and every linear layer
//! (Q/K/V, the output projection, the FFN gate/up/down and the LM head) multiplies that
//! whole matrix at once: each weight row is read from memory once per step, not once per
//! sequence, which is what makes serving 16 decoding conversations much cheaper than 16
//! times one. The LM head only takes each sequence's last row. Norms, rotary embeddings
//! (each row at its own sequence's position), KV-cache appends and attention stay per
//! sequence: a row attends only to its own sequence's cache, causally. Very large steps
//! (many long prompt chunks) go through the layer stack in passes of at most
//! [`PASS_ROWS`] rows, so working memory stays bounded; the rows of one pass are still
//! tiled across sequences by the kernels (64 tokens per pass over a weight row).
//!
//! Matmuls are split over output rows with rayon; the caller decides the thread count by
//! running `forward` inside its own pool.
//!
//! # Batch invariance
//!
//! A sequence's logits are bit-for-bit identical whatever else is in the batch: how many
//! other sequences, which ones, in what order, prompt chunks or decode tokens, and however
//! the work is split over threads or passes. (vLLM and SGLang only recently began to offer
//! this, as an opt-in mode.) It holds because every output element is computed from its own
//! row alone, with a reduction order fixed by the model's shapes and never by the number of
//! rows or threads:
//!
//! - activations are quantized to Q8 row by row, and RMS norms reduce one row sequentially;
//! - the quant kernels (`quant::Weights::dot_rows`, portable and vector alike) keep one
//!   float accumulator per (weight row, token) and add the units of 32 (16) weights into it
//!   in order, each unit's integer sum being exact; tiling over tokens (64 at a time, 8
//!   side by side), packing rows eight to a register and splitting rows over threads only
//!   choose *which* elements a task computes, never how one is summed;
//! - attention of one (token, head) runs over its own cache positions in order;
//! - a token's K/V entries are computed from its own row, so a cache holds the same values
//!   whether it was filled by one prompt, by chunks, or token by token.
//!
//! Whoever changes a kernel must keep this: no reduction blocked by `n_tok`, no split of a
//! single dot product across threads. `tests/golden.rs` checks it over random batches.

use rayon::prelude::*;

use super::attention::{self, KvView};
use super::kv::{BLOCK_TOKENS, Pages};
use super::{FfnAct, KvCache, Matrix, Model, RopeStyle};
use crate::error::EngineError;
use crate::quant::{Acts, BlockQ8, QK8};

/// One sequence's part of a batch: the new tokens and the cache they extend.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a mut KvCache,
    /// Whether every new token's logits are wanted (a speculative step's verification,
    /// a prompt's log-probabilities), or only the last one's (what sampling needs).
    pub all_logits: bool,
}

impl<'a> SeqInput<'a> {
    /// The tokens, of which only the last one's logits are wanted.
    pub fn last(tokens: &'a [u32], kv: &'a mut KvCache) -> Self {
        SeqInput {
            tokens,
            kv,
            all_logits: false,
        }
    }
}

/// Working buffers reused across steps so that decoding does not allocate (vectors only
/// grow, to the largest step seen).
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    mm: Vec<f32>,
    q8: Vec<BlockQ8>,
    /// Integer-sum starts of the Q8 activations (see `quant::Weights::init_per_token`).
    init: Vec<i32>,
    /// Which input `q8` holds the blocks of (its address and length), when the last
    /// quantized matmul quantized it: `Input::Same` reuses them only then.
    q8_of: Option<(usize, usize)>,
    /// Rotary cosines and sines of each rotary set (`ModelConfig::ropes`), set after set.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Per row of the current pass: (batch item, position in its sequence).
    rows: Vec<(usize, usize)>,
    segs: Vec<Seg>,
    /// Final hidden states of the tokens whose logits are wanted, item after item, for
    /// the LM head.
    last: Vec<f32>,
    logits: Vec<f32>,
}

/// A run of consecutive tokens of one batch item inside a pass.
#[derive(Clone, Copy)]
struct Seg {
    item: usize,
    /// First token (index into the item's `tokens`).
    start: usize,
    len: usize,
    /// First row of the pass's activation matrix.
    row0: usize,
    /// Cached positions before this run.
    past: usize,
}

/// Most rows (tokens over all items) that go through the layer stack together. Bounds the
/// working memory of a step (about 80 KB per row for a 0.5B model) when many sequences
/// send long prompt chunks at once; weights are then read once per pass, which for such
/// compute-bound steps costs nothing measurable.
const PASS_ROWS: usize = 512;

/// `rows` cut into consecutive pieces of `counts[i] * width` values.
fn split_rows(rows: &[f32], counts: &[usize], width: usize) -> Vec<Vec<f32>> {
    let mut rest = rows;
    counts
        .iter()
        .map(|&n| {
            let (item, tail) = rest.split_at(n * width);
            rest = tail;
            item.to_vec()
        })
        .collect()
}

fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// Output rows per parallel task: several tasks per thread for balance, but not so few rows
/// that scheduling overhead shows; whole blocks of eight, the kernels' unit of rows.
fn rows_per_task(rows: usize, n_tok: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = if n_tok > 1 { 8 } else { 16 };
    rows.div_ceil(threads * 8)
        .max(min_rows)
        .next_multiple_of(8)
        .min(rows.max(1))
}

/// Query heads per attention task, a divisor of `group` (the query heads of one KV head),
/// for `kv_tasks` (rows × KV heads) on `threads` threads. A task reads its KV head's cache
/// rows once for all its heads: this minimizes the busiest thread's `⌈tasks / threads⌉ ·
/// (heads + 1/4)`, reading the rows counted as a quarter of one head's arithmetic on
/// them, the largest group among equals. Measured on decode: the 1.5B model's 12 heads on
/// 2 KV heads as two whole groups, not 12 single heads that read the cache six times over
/// (26.0 → 33.8 tokens/s after 4096 positions); SmolLM2's 9 heads on 3 KV heads as single
/// heads, not 3 groups on 2 threads (258 against 236 tokens/s after 512).
fn heads_per_task(kv_tasks: usize, group: usize, threads: usize) -> usize {
    let cost = |g: usize| (kv_tasks * (group / g)).div_ceil(threads.max(1)) * (4 * g + 1);
    (1..=group)
        .rev()
        .filter(|g| group.is_multiple_of(*g))
        .min_by_key(|&g| cost(g))
        .unwrap_or(1)
}

/// Whether a matmul's input is new or the one the matmul before it quantized (`q8` then
/// holds its blocks: Q/K/V and gate/up read the same normed rows).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    New,
    Same,
}

/// `out[t][r] = dot(w row r, x[t])` for `n_tok` rows of `x`, for the first
/// `out.len() / n_tok` rows of `w` (all of them but in a draft's head).
fn matmul(
    w: &Matrix,
    (x, input): (&[f32], Input),
    n_tok: usize,
    out: &mut [f32],
    mm: &mut Vec<f32>,
    (q8, init, q8_of): (
        &mut Vec<BlockQ8>,
        &mut Vec<i32>,
        &mut Option<(usize, usize)>,
    ),
) {
    let (cols, rows) = (w.cols, out.len() / n_tok.max(1));
    debug_assert_eq!(x.len(), n_tok * cols);
    debug_assert!(rows <= w.rows && out.len() == n_tok * rows);
    if input == Input::New {
        // Whatever `q8` holds is another input's, even at the same address (a buffer
        // rewritten since, as `xn` is layer after layer).
        *q8_of = None;
    }
    let acts = if w.takes_q8() {
        let (nb, ni) = (cols / QK8, w.init_per_token());
        let this = Some((x.as_ptr() as usize, x.len()));
        let reuse = input == Input::Same && *q8_of == this;
        *q8_of = this;
        q8.resize(n_tok * nb, BlockQ8::default());
        init.resize(n_tok * ni, 0);
        let (blocks, init) = (&mut q8[..n_tok * nb], &mut init[..n_tok * ni]);
        if reuse {
            if ni > 0 {
                blocks
                    .par_chunks(nb)
                    .zip(init.par_chunks_mut(ni))
                    .with_min_len(16)
                    .for_each(|(b, i)| w.token_init(b, i));
            }
        } else if n_tok > 1 && ni > 0 {
            blocks
                .par_chunks_mut(nb)
                .zip(x.par_chunks(cols))
                .zip(init.par_chunks_mut(ni))
                .for_each(|((b, x), i)| w.quantize_token(x, b, i));
        } else if n_tok > 1 {
            blocks
                .par_chunks_mut(nb)
                .zip(x.par_chunks(cols))
                .for_each(|(b, x)| w.quantize_token(x, b, &mut []));
        } else {
            w.quantize_token(x, blocks, init);
        }
        Acts::Q8 { blocks, init }
    } else {
        Acts::F32(x)
    };
    let chunk = rows_per_task(rows, n_tok);
    let kernel = |(i, o): (usize, &mut [f32])| w.dot_rows(i * chunk, acts, n_tok, o);
    if n_tok == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(kernel);
        return;
    }
    // Each task's results are token-major over its own rows; they are copied into place
    // a row segment at a time, in groups of tokens small enough that every thread gets
    // some (a decode step's 16 tokens too).
    let tmp = resize(mm, rows * n_tok);
    tmp.par_chunks_mut(chunk * n_tok)
        .enumerate()
        .for_each(kernel);
    let tmp = &*tmp;
    let group = n_tok.div_ceil(2 * rayon::current_num_threads()).max(1);
    out.par_chunks_mut(rows * group)
        .enumerate()
        .for_each(|(k, o)| {
            let ta = k * group;
            for (c, part) in tmp.chunks(chunk * n_tok).enumerate() {
                let n = part.len() / n_tok;
                for (t, dst) in o.chunks_exact_mut(rows).enumerate() {
                    dst[c * chunk..c * chunk + n].copy_from_slice(&part[(ta + t) * n..][..n]);
                }
            }
        });
}

/// RMS norm of every row of `x` (rows of `w.len()`); each row reduced on its own.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    let norm = |(xr, or): (&[f32], &mut [f32])| {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    };
    if x.len() >= 64 * n {
        x.par_chunks_exact(n)
            .zip(out.par_chunks_exact_mut(n))
            .with_min_len(16)
            .for_each(norm);
    } else {
        x.chunks_exact(n)
            .zip(out.chunks_exact_mut(n))
            .for_each(norm);
    }
}

fn add_bias(x: &mut [f32], b: Option<&Vec<f32>>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

/// `gate = act(gate) · up`, element by element: one `exp` (or table lookup) per element,
/// which over a batch (16 decode tokens × 1536 for SmolLM2, every layer) is worth spreading
/// over the math threads; a single token's row stays on one.
fn gated_act(act: FfnAct, gate: &mut [f32], up: &[f32]) {
    const CHUNK: usize = 4096;
    let f = |(g, u): (&mut [f32], &[f32])| match act {
        FfnAct::Silu => {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        FfnAct::GeluF16 => {
            let table = gelu_f16_table();
            for (g, &u) in g.iter_mut().zip(u) {
                // ggml's f16 GELU: saturated beyond ±10, else looked up by the f16 input.
                *g = if *g <= -10.0 {
                    0.0
                } else if *g >= 10.0 {
                    *g * u
                } else {
                    table[half::f16::from_f32(*g).to_bits() as usize] * u
                };
            }
        }
    };
    if gate.len() <= CHUNK {
        f((gate, up));
    } else {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(f);
    }
}

/// GELU (tanh form) of every f16 value, rounded to f16 and widened back: ggml's CPU table,
/// built once (256 KiB).
fn gelu_f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh());
                half::f16::from_f32(y).to_f32()
            })
            .collect()
    })
}

/// `x = x + norm(y)` row by row when the layer has a post-norm, else `x = x + y`; `tmp`
/// holds the norm's output.
fn add_residual(x: &mut [f32], y: &[f32], post_norm: Option<&Vec<f32>>, eps: f32, tmp: &mut [f32]) {
    let y = match post_norm {
        Some(w) => {
            rms_norm(y, w, eps, tmp);
            &*tmp
        }
        None => y,
    };
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rotates the first `n_rot` dimensions of every head of every token. `cos`/`sin` hold
/// `n_rot / 2` angles per token.
fn rope(x: &mut [f32], head_dim: usize, n_rot: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = n_rot / 2;
    let row_len = x.len() / (cos.len() / half);
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        // One loop per style (not a match per element), so that LLVM vectorizes both.
        for head in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Norm => {
                    for ((p, &c), &s) in head[..n_rot].chunks_exact_mut(2).zip(c).zip(s) {
                        let (x0, x1) = (p[0], p[1]);
                        p[0] = x0 * c - x1 * s;
                        p[1] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::Neox => {
                    let (lo, hi) = head[..n_rot].split_at_mut(half);
                    for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi).zip(c).zip(s) {
                        let (a, b) = (*x0, *x1);
                        *x0 = a * c - b * s;
                        *x1 = a * s + b * c;
                    }
                }
            }
        }
    }
}

impl Model {
    /// One forward step over a batch of sequences. Each item appends its `tokens` to its own
    /// cache (at positions `kv.len()..`) and gets the logits of its last token, or of
    /// every token with [`SeqInput::all_logits`] (one row of `vocab_size` after another).
    /// All inputs are checked before any cache changes, so an error leaves every cache as
    /// it was.
    ///
    /// The tokens of all items go through every linear layer together (see the module
    /// docs), and an item's logits do not depend, to the last bit, on the rest of the batch.
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.forward_head(batch, scratch, self.config.vocab_size)
    }

    /// [`Model::forward`] with the logits of the first `head` tokens of the vocabulary
    /// only (the same values as theirs in the full logits): a draft model that proposes
    /// among the frequent tokens reads a fraction of its output matrix.
    pub fn forward_head(
        &self,
        batch: &mut [SeqInput<'_>],
        scratch: &mut Scratch,
        head: usize,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let c = &self.config;
        let head = head.clamp(1, c.vocab_size);
        let wanted = self.final_states(batch, scratch)?;
        let s = scratch;
        let n_out: usize = wanted.iter().sum();
        let logits = resize(&mut s.logits, n_out * head);
        matmul(
            &self.output,
            (&s.xn[..n_out * c.n_embd], Input::New),
            n_out,
            logits,
            &mut s.mm,
            (&mut s.q8, &mut s.init, &mut s.q8_of),
        );
        if let Some(cap) = c.final_softcap {
            for v in logits.iter_mut() {
                *v = (*v / cap).tanh() * cap;
            }
        }
        Ok(split_rows(logits, &wanted, head))
    }

    /// The final hidden states (after the output norm, what the LM head reads) of the
    /// tokens [`Model::forward`] would give logits for, `n_embd` values a token, item after
    /// item in one buffer: what a decoder used as an embedding model pools. Same checks,
    /// same cache updates.
    pub fn hidden(
        &self,
        batch: &mut [SeqInput<'_>],
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>, EngineError> {
        let wanted = self.final_states(batch, scratch)?;
        let n_out: usize = wanted.iter().sum();
        Ok(scratch.xn[..n_out * self.config.n_embd].to_vec())
    }

    /// Runs `batch` through the layer stack and leaves the normed final states of the
    /// wanted tokens in `scratch.xn`, item after item; returns how many each item has.
    fn final_states(
        &self,
        batch: &mut [SeqInput<'_>],
        scratch: &mut Scratch,
    ) -> Result<Vec<usize>, EngineError> {
        let c = &self.config;
        for item in batch.iter() {
            if item.tokens.is_empty() {
                return Err(EngineError::BadRequest(
                    "a forward step needs at least one token".into(),
                ));
            }
            if let Some(&bad) = item.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::BadRequest(format!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    c.vocab_size
                )));
            }
            let total = item.kv.len() + item.tokens.len();
            if total > c.context_length {
                return Err(EngineError::BadRequest(format!(
                    "the sequence would reach {total} tokens, beyond the model's context length of {}",
                    c.context_length
                )));
            }
            if !item.kv.fits(c.n_layer, c.n_head_kv * c.head_dim) {
                return Err(EngineError::BadRequest(
                    "the KV cache was made for a different model".into(),
                ));
            }
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for item in batch.iter_mut() {
            item.kv.reserve(item.tokens.len());
        }
        let d = c.n_embd;
        let n_items = batch.len();
        let wanted: Vec<usize> = batch
            .iter()
            .map(|i| if i.all_logits { i.tokens.len() } else { 1 })
            .collect();
        let n_out: usize = wanted.iter().sum();
        scratch.last.clear();

        // Cut the step's tokens, item after item, into passes of at most PASS_ROWS rows.
        let mut segs = std::mem::take(&mut scratch.segs);
        let (mut item, mut start) = (0, 0);
        while item < n_items {
            segs.clear();
            let mut n_rows = 0;
            while item < n_items && n_rows < PASS_ROWS {
                let tokens = batch[item].tokens;
                let len = (tokens.len() - start).min(PASS_ROWS - n_rows);
                segs.push(Seg {
                    item,
                    start,
                    len,
                    row0: n_rows,
                    past: batch[item].kv.len(),
                });
                n_rows += len;
                start += len;
                if start == tokens.len() {
                    item += 1;
                    start = 0;
                }
            }
            self.pass(batch, &segs, n_rows, scratch);
            // Passes and their segments go item after item, so the wanted rows land in order.
            for seg in &segs {
                let rows = if batch[seg.item].all_logits {
                    seg.row0..seg.row0 + seg.len
                } else if seg.start + seg.len == batch[seg.item].tokens.len() {
                    seg.row0 + seg.len - 1..seg.row0 + seg.len
                } else {
                    continue;
                };
                scratch
                    .last
                    .extend_from_slice(&scratch.x[rows.start * d..rows.end * d]);
            }
        }
        scratch.segs = segs;

        // The output norm, over the wanted rows only.
        let s = scratch;
        debug_assert_eq!(s.last.len(), n_out * d);
        let xn = resize(&mut s.xn, n_out * d);
        rms_norm(&s.last, &self.output_norm, c.rms_eps, xn);
        Ok(wanted)
    }

    /// Runs the rows of `segs` (`n` rows in all) through the layer stack, appending their
    /// keys and values to their items' caches. Leaves the final hidden states in `s.x`.
    fn pass(&self, batch: &mut [SeqInput<'_>], segs: &[Seg], n: usize, s: &mut Scratch) {
        let c = &self.config;
        let (d, hd) = (c.n_embd, c.head_dim);
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        let group = c.n_head / c.n_head_kv;
        let scale = c.attn_scale;

        s.rows.clear();
        for seg in segs {
            s.rows
                .extend((0..seg.len).map(|j| (seg.item, seg.past + j)));
        }
        let rows = &s.rows[..];

        // Rotary angles for each row's own position, per rotary set, shared by all heads
        // and the layers of the set.
        let half = c.n_rot / 2;
        let cos = resize(&mut s.cos, c.ropes.len() * n * half);
        let sin = resize(&mut s.sin, c.ropes.len() * n * half);
        for (set, rope) in c.ropes.iter().enumerate() {
            let base = set * n * half;
            for (t, &(_, pos)) in rows.iter().enumerate() {
                let pos = pos as f64;
                for (i, &freq) in rope.inv_freq.iter().enumerate() {
                    let (sn, cs) = (pos * freq).sin_cos();
                    cos[base + t * half + i] = cs as f32;
                    sin[base + t * half + i] = sn as f32;
                }
            }
        }

        let x = resize(&mut s.x, n * d);
        for seg in segs {
            let tokens = &batch[seg.item].tokens[seg.start..seg.start + seg.len];
            let dst = &mut x[seg.row0 * d..(seg.row0 + seg.len) * d];
            for (t, row) in tokens.iter().zip(dst.chunks_exact_mut(d)) {
                match &self.tok_embd {
                    Some(e) => e.row(*t as usize, row),
                    None => self.output.row(*t as usize, row),
                }
            }
        }
        if let Some(f) = c.embd_scale {
            x.iter_mut().for_each(|v| *v *= f);
        }

        for (li, (l, la)) in self.layers.iter().zip(&c.layers).enumerate() {
            let xn = resize(&mut s.xn, n * d);
            rms_norm(x, &l.attn_norm, c.rms_eps, xn);
            let q = resize(&mut s.q, n * q_dim);
            let k = resize(&mut s.k, n * kv_dim);
            let v = resize(&mut s.v, n * kv_dim);
            matmul(
                &l.wq,
                (xn, Input::New),
                n,
                q,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            matmul(
                &l.wk,
                (xn, Input::Same),
                n,
                k,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            matmul(
                &l.wv,
                (xn, Input::Same),
                n,
                v,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            add_bias(q, l.bq.as_ref());
            add_bias(k, l.bk.as_ref());
            add_bias(v, l.bv.as_ref());
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                // Heads are rows of `hd`: normalize in place through `att` as scratch.
                for (x, w) in [(&mut *q, qn), (&mut *k, kn)] {
                    let tmp = resize(&mut s.att, x.len());
                    rms_norm(x, w, c.rms_eps, tmp);
                    x.copy_from_slice(tmp);
                }
            }
            let set = la.rope * n * half..(la.rope + 1) * n * half;
            let (cos, sin) = (&s.cos[set.clone()], &s.sin[set]);
            rope(q, hd, c.n_rot, c.rope_style, cos, sin);
            rope(k, hd, c.n_rot, c.rope_style, cos, sin);
            for seg in segs {
                let kv = &mut *batch[seg.item].kv;
                for j in 0..seg.len {
                    let r = (seg.row0 + j) * kv_dim;
                    kv.write(li, seg.past + j, &k[r..r + kv_dim], &v[r..r + kv_dim]);
                }
            }

            // Each row's heads attend over its own sequence's cache, up to its position:
            // a task takes the query heads of one KV head together (the kernel reads each
            // cache row once for them), or single heads when there are too few tasks for
            // the threads (one decode token of a model with one KV head).
            let pages: Vec<Pages<'_>> = batch.iter().map(|item| item.kv.pages(li)).collect();
            let att = resize(&mut s.att, n * q_dim);
            let q = &*q;
            let per_task = heads_per_task(n * c.n_head_kv, group, rayon::current_num_threads());
            att.par_chunks_mut(per_task * hd).enumerate().for_each_init(
                Vec::new,
                |scores, (i, out)| {
                    let tasks_per_row = c.n_head / per_task;
                    let (t, h0) = (i / tasks_per_row, i % tasks_per_row * per_task);
                    let (item, pos) = rows[t];
                    let (k_pages, v_pages) = &pages[item];
                    // A sliding window sees the `w` positions ending at this one.
                    let first = la.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let view = KvView {
                        k: k_pages,
                        v: v_pages,
                        page_rows: BLOCK_TOKENS,
                        stride: kv_dim,
                        offset: (h0 / group) * hd,
                        first,
                    };
                    let qh = &q[t * q_dim + h0 * hd..t * q_dim + (h0 + per_task) * hd];
                    attention::attend(qh, hd, &view, pos + 1 - first, scale, out, scores);
                },
            );
            drop(pages);

            let proj = resize(&mut s.proj, n * d);
            matmul(
                &l.wo,
                (att, Input::New),
                n,
                proj,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            add_residual(x, proj, l.attn_post_norm.as_ref(), c.rms_eps, xn);

            rms_norm(x, &l.ffn_norm, c.rms_eps, xn);
            let gate = resize(&mut s.gate, n * c.n_ff);
            let up = resize(&mut s.up, n * c.n_ff);
            matmul(
                &l.gate,
                (xn, Input::New),
                n,
                gate,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            matmul(
                &l.up,
                (xn, Input::Same),
                n,
                up,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            gated_act(c.ffn_act, gate, up);
            matmul(
                &l.down,
                (gate, Input::New),
                n,
                proj,
                &mut s.mm,
                (&mut s.q8, &mut s.init, &mut s.q8_of),
            );
            add_residual(x, proj, l.ffn_post_norm.as_ref(), c.rms_eps, xn);
        }
        for seg in segs {
            batch[seg.item].kv.len = seg.past + seg.len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::heads_per_task;

    #[test]
    fn attention_tasks_keep_kv_heads_whole_when_threads_allow() {
        // One decode token, 1.5B (12 heads on 2 KV heads) and 0.5B (14 on 2), 2 threads.
        assert_eq!(heads_per_task(2, 6, 2), 6);
        assert_eq!(heads_per_task(2, 7, 2), 7);
        // SmolLM2 (9 on 3): three groups would leave one thread twice the work.
        assert_eq!(heads_per_task(3, 3, 2), 1);
        // One KV head on many threads: split it rather than leave threads idle.
        assert_eq!(heads_per_task(1, 8, 8), 1);
        assert_eq!(heads_per_task(1, 8, 4), 2);
        // A prompt's many rows: whole groups.
        assert_eq!(heads_per_task(512 * 2, 6, 2), 6);
        assert_eq!(heads_per_task(4, 1, 2), 1);
    }
}
