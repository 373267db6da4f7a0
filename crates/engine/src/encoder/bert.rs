//! The BERT encoder's forward pass over packed sequences: every sequence's tokens one
//! after the other in one matrix, so a batch of sentences of different lengths pays for
//! its tokens and nothing else (no padding, no mask). The dense layers run over all of
//! them at once; attention runs per sequence, each attending only to itself.
//!
//! The layer is BERT's as Hugging Face's `BertModel` computes it: embeddings (word,
//! absolute position, token type) and a LayerNorm, then per layer self-attention with
//! biases, a residual and a LayerNorm after it (post-norm), a GELU feed-forward, a residual
//! and a LayerNorm again. Nomic-BERT is the same layer with rotary positions instead of a
//! table (NeoX's halves, on queries and keys), no biases and a SwiGLU feed-forward: both
//! are options of the one pass ([`Positions`], [`Layer::gate`], an empty bias).
//! The matrix products are the `gemm` crate's (f32, blocked and vectorized for the CPU it
//! runs on, split over the rayon pool).

use gemm::Parallelism;
use rayon::prelude::*;

use super::{EncoderConfig, Positions};
use crate::model::exp_nonpositive;

/// A dense layer: `rows` outputs of `cols` inputs, and its bias (empty: none). The
/// weights are kept transposed, `cols × rows` row-major, so that the matrix kernel's packing
/// reads them in runs rather than gathering one float per row (PyTorch's `rows × cols`
/// layout cost a ninth of MiniLM's time in that gather).
pub(crate) struct Linear {
    wt: Vec<f32>,
    pub b: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Linear {
    /// From weights in PyTorch's layout (`Linear.weight`: `rows × cols` row-major).
    pub fn new(w: Vec<f32>, b: Vec<f32>, rows: usize, cols: usize) -> Linear {
        assert_eq!(w.len(), rows * cols);
        let mut wt = vec![0.0f32; w.len()];
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                wt[c * rows + r] = v;
            }
        }
        Linear { wt, b, rows, cols }
    }

    /// Layers of the same inputs as one, their outputs one after the other (queries, keys
    /// and values into one product).
    pub fn stack<E>(parts: [Result<Linear, E>; 3]) -> Result<Linear, E> {
        let parts = parts.into_iter().collect::<Result<Vec<_>, E>>()?;
        let cols = parts[0].cols;
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut wt = Vec::with_capacity(rows * cols);
        for c in 0..cols {
            for p in &parts {
                wt.extend_from_slice(&p.wt[c * p.rows..(c + 1) * p.rows]);
            }
        }
        let b = parts.iter().flat_map(|p| p.b.iter().copied()).collect();
        Ok(Linear { wt, b, rows, cols })
    }
}

pub(crate) struct Norm {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

pub(crate) struct Layer {
    /// Queries, keys and values in one product: `3 × width` rows, Q's then K's then V's.
    pub qkv: Linear,
    pub o: Linear,
    pub attn_norm: Norm,
    pub up: Linear,
    /// SwiGLU's gate (`down(silu(gate·x) ⊙ up·x)`); without one the feed-forward is
    /// `down(gelu(up·x))`.
    pub gate: Option<Linear>,
    pub down: Linear,
    pub out_norm: Norm,
}

/// The weights of a BERT encoder.
pub(crate) struct Bert {
    /// `vocab × width`, `positions × width` (empty for rotary positions), `types × width`.
    pub word: Vec<f32>,
    pub position: Vec<f32>,
    pub token_type: Vec<f32>,
    pub embd_norm: Norm,
    pub layers: Vec<Layer>,
}

/// A cross-encoder's head on the first token's hidden state: BERT's pooler (a dense layer
/// and tanh) and a classifier of one logit, whose sigmoid is the pair's relevance (what
/// sentence-transformers' `CrossEncoder` reports for a one-label model).
pub(crate) struct Classifier {
    pub pooler: Linear,
    pub out: Linear,
}

impl Classifier {
    pub(crate) fn score(&self, first: &[f32]) -> f32 {
        let mut pooled = vec![0.0f32; self.pooler.rows];
        linear(first, 1, &self.pooler, &mut pooled);
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        let mut logit = [0.0f32];
        linear(&pooled, 1, &self.out, &mut logit);
        1.0 / (1.0 + (-logit[0]).exp())
    }
}

/// One sequence of a packed batch: its tokens and, for a pair (a cross-encoder's query
/// and document), the token types (0 for the first segment, 1 for the second).
pub struct Segmented<'a> {
    pub tokens: &'a [u32],
    /// Token types, one per token; empty means all 0.
    pub types: &'a [u32],
}

impl Bert {
    /// The last layer's hidden states of every token of `seqs`, packed in order
    /// (`Σ len × width` floats). Token ids and types must be inside the tables and every
    /// sequence no longer than the position table (the caller checks).
    pub(crate) fn forward(&self, c: &EncoderConfig, seqs: &[Segmented<'_>]) -> Vec<f32> {
        let d = c.width;
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let mut x = vec![0.0f32; n * d];
        let mut row = 0;
        for s in seqs {
            for (p, &t) in s.tokens.iter().enumerate() {
                let ty = s.types.get(p).copied().unwrap_or(0) as usize;
                let out = &mut x[row * d..(row + 1) * d];
                let word = &self.word[t as usize * d..(t as usize + 1) * d];
                let ty = &self.token_type[ty * d..(ty + 1) * d];
                for i in 0..d {
                    out[i] = word[i] + ty[i];
                }
                if let Positions::Table { offset, .. } = c.positions {
                    let pos = &self.position[(p + offset) * d..(p + offset + 1) * d];
                    out.iter_mut().zip(pos).for_each(|(o, p)| *o += p);
                }
                row += 1;
            }
        }
        layer_norm_rows(&mut x, d, &self.embd_norm, c.norm_eps);

        let spans: Vec<(usize, usize)> = seqs
            .iter()
            .scan(0, |start, s| {
                let span = (*start, s.tokens.len());
                *start += s.tokens.len();
                Some(span)
            })
            .collect();
        let rotary = match c.positions {
            Positions::Rotary { base } => Some(Rotary::new(c, &spans, base)),
            Positions::Table { .. } => None,
        };
        let mut qkv = vec![0.0; n * 3 * d];
        let mut att = vec![0.0; n * d];
        let mut proj = vec![0.0; n * d];
        let mut hidden = vec![0.0; n * c.ffn];
        let mut gated = vec![
            0.0;
            if self.layers.iter().any(|l| l.gate.is_some()) {
                n * c.ffn
            } else {
                0
            }
        ];
        for l in &self.layers {
            linear(&x, n, &l.qkv, &mut qkv);
            if let Some(r) = &rotary {
                r.apply(&mut qkv, c);
            }
            attention(c, &spans, &qkv, &mut att);
            linear(&att, n, &l.o, &mut proj);
            add_norm(&mut x, &proj, d, &l.attn_norm, c.norm_eps);
            linear(&x, n, &l.up, &mut hidden);
            match &l.gate {
                Some(gate) => {
                    linear(&x, n, gate, &mut gated);
                    hidden
                        .par_chunks_mut(4096)
                        .zip(gated.par_chunks_mut(4096))
                        .for_each(|(up, g)| swiglu(up, g));
                }
                None => hidden.par_chunks_mut(4096).for_each(gelu),
            }
            linear(&hidden, n, &l.down, &mut proj);
            add_norm(&mut x, &proj, d, &l.out_norm, c.norm_eps);
        }
        x
    }
}

/// Rotary positions as GPT-NeoX applies them (what llama.cpp does for Nomic-BERT): each
/// head's dimension `i < hd/2` is paired with `i + hd/2` and the pair turned by `p ·
/// base^(-2i/hd)` radians, `p` the token's position in its own sequence.
struct Rotary {
    /// Per packed row, the cosines and then the sines of its position (`hd/2` each).
    table: Vec<f32>,
}

impl Rotary {
    fn new(c: &EncoderConfig, spans: &[(usize, usize)], base: f32) -> Rotary {
        let half = c.width / c.heads / 2;
        let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
        let mut by_pos = vec![0.0f32; longest * 2 * half];
        for (p, row) in by_pos.chunks_exact_mut(2 * half).enumerate() {
            for i in 0..half {
                let theta = p as f64 * (base as f64).powf(-((2 * i) as f64) / (2 * half) as f64);
                row[i] = theta.cos() as f32;
                row[half + i] = theta.sin() as f32;
            }
        }
        let table = spans
            .iter()
            .flat_map(|&(_, len)| by_pos[..len * 2 * half].iter().copied())
            .collect();
        Rotary { table }
    }

    /// Turns the queries and keys of every row of `qkv` (`3 × width` per row).
    fn apply(&self, qkv: &mut [f32], c: &EncoderConfig) {
        let (d, hd) = (c.width, c.width / c.heads);
        let half = hd / 2;
        qkv.par_chunks_mut(3 * d)
            .zip(self.table.par_chunks(2 * half))
            .for_each(|(row, cs)| {
                let (cos, sin) = cs.split_at(half);
                for head in row[..2 * d].chunks_exact_mut(hd) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x, y) = (a[i], b[i]);
                        a[i] = x * cos[i] - y * sin[i];
                        b[i] = x * sin[i] + y * cos[i];
                    }
                }
            });
    }
}

/// `out[t] = x[t] · wᵀ + b` for the `n` rows of `x`.
fn linear(x: &[f32], n: usize, w: &Linear, out: &mut [f32]) {
    let (k, m) = (w.cols, w.rows);
    assert!(x.len() >= n * k && out.len() >= n * m && w.wt.len() == m * k);
    // SAFETY: dst is n×m row-major in `out`, lhs n×k row-major in `x`, rhs k×m row-major
    // in `wt`; the lengths were checked above.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.wt.as_ptr(),
            1,
            m as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    };
    if !w.b.is_empty() {
        out[..n * m]
            .par_chunks_mut(m)
            .for_each(|r| r.iter_mut().zip(&w.b).for_each(|(o, b)| *o += b));
    }
}

/// Multi-head self-attention of every sequence over itself, from the fused `qkv` rows
/// (`3 × width` each). Tasks are heads, each writing its own head's columns: the output
/// is gathered head-major first (one contiguous block per head) and then interleaved.
fn attention(c: &EncoderConfig, spans: &[(usize, usize)], qkv: &[f32], out: &mut [f32]) {
    let (d, hd) = (c.width, c.width / c.heads);
    let n: usize = spans.iter().map(|s| s.1).sum();
    let scale = 1.0 / (hd as f32).sqrt();
    let mut by_head = vec![0.0f32; n * d];
    by_head
        .par_chunks_mut(n * hd)
        .enumerate()
        .for_each(|(h, head_out)| {
            let mut scores = Vec::new();
            for &(start, len) in spans {
                scores.clear();
                scores.resize(len * len, 0.0);
                let col = h * hd;
                let (q, k, v) = (
                    &qkv[start * 3 * d + col..],
                    &qkv[start * 3 * d + d + col..],
                    &qkv[start * 3 * d + 2 * d + col..],
                );
                // SAFETY: scores is len×len row-major; Q's and K's rows are `len` rows of
                // stride 3d from the slices' starts, hd columns each, the last ending
                // inside `qkv`; the output block is this head's len×hd rows at `start`.
                unsafe {
                    gemm::gemm(
                        len,
                        len,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q.as_ptr(),
                        1,
                        3 * d as isize,
                        k.as_ptr(),
                        3 * d as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for r in scores.chunks_exact_mut(len) {
                    let m = r.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut z = 0.0;
                    for s in r.iter_mut() {
                        *s = (*s - m).exp();
                        z += *s;
                    }
                    let inv = 1.0 / z;
                    r.iter_mut().for_each(|s| *s *= inv);
                }
                let dst = &mut head_out[start * hd..(start + len) * hd];
                // SAFETY: as above; dst is len×hd row-major, V's block like K's.
                unsafe {
                    gemm::gemm(
                        len,
                        hd,
                        len,
                        dst.as_mut_ptr(),
                        1,
                        hd as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v.as_ptr(),
                        1,
                        3 * d as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        });
    out[..n * d]
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(t, row)| {
            for (h, part) in row.chunks_exact_mut(hd).enumerate() {
                part.copy_from_slice(&by_head[h * n * hd + t * hd..h * n * hd + (t + 1) * hd]);
            }
        });
}

/// `x = LayerNorm(x + y)` row by row.
fn add_norm(x: &mut [f32], y: &[f32], d: usize, norm: &Norm, eps: f32) {
    x.par_chunks_mut(d).zip(y.par_chunks(d)).for_each(|(x, y)| {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        layer_norm(x, norm, eps);
    });
}

fn layer_norm_rows(x: &mut [f32], d: usize, norm: &Norm, eps: f32) {
    x.par_chunks_mut(d).for_each(|r| layer_norm(r, norm, eps));
}

/// `(x - mean) / sqrt(var + eps) · w + b`, the statistics in f64 (a row is short; this
/// keeps them exact whatever the row's scale).
fn layer_norm(x: &mut [f32], norm: &Norm, eps: f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, w), b) in x.iter_mut().zip(&norm.w).zip(&norm.b) {
        *v = ((*v as f64 - mean) * inv) as f32 * w + b;
    }
}

/// SwiGLU in place: `up ⊙ silu(gate)`, the sigmoid from `e^(-|g|)` (the engine's vector
/// exponential, which takes non-positive arguments) so no lane overflows. `gate` is
/// scratch.
fn swiglu(up: &mut [f32], gate: &mut [f32]) {
    let g: Vec<f32> = gate.to_vec();
    gate.iter_mut().for_each(|v| *v = -v.abs());
    exp_nonpositive(gate);
    for ((u, e), &g) in up.iter_mut().zip(gate.iter()).zip(&g) {
        let sigmoid = if g >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        *u *= g * sigmoid;
    }
}

/// GELU with the error function (Hugging Face's `"gelu"`), in place, `x · (1 + erf(x/√2))
/// / 2`. The error function is Abramowitz and Stegun's 7.1.26, `1 - t·P(t)·e^(-z²)` with `t
/// = 1 / (1 + p·z)`, within 1.5e-7 of the true one, over the engine's vector exponential:
/// a loop the compiler vectorizes, where the scalar `erff` took a fifth of the encoder's
/// time.
fn gelu(x: &mut [f32]) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let mut e: Vec<f32> = x.iter().map(|&v| -0.5 * v * v).collect();
    exp_nonpositive(&mut e);
    for (v, e) in x.iter_mut().zip(&e) {
        let z = v.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + P * z);
        let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
        let erf = (1.0 - poly * e).copysign(*v);
        *v = 0.5 * *v * (1.0 + erf);
    }
}
