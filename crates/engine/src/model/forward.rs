//! One forward step: embeddings, the layer stack, and the logits of each sequence's last
//! token.
//!
//! All tokens of one sequence go through each weight matrix together (a prompt is a
//! matrix, not a loop of vector products), so every weight row is read from memory once per
//! step. Matmuls are split over output rows with rayon; the caller decides the thread count
//! by running `forward` inside its own pool.

use rayon::prelude::*;

use super::{KvCache, Matrix, Model, RopeStyle};
use crate::error::EngineError;
use crate::quant::{self, Acts, BlockQ8, QK8};

/// One sequence's part of a batch: the new tokens and the cache they extend.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a mut KvCache,
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
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// Output rows per parallel task: several tasks per thread for balance, but not so few rows
/// that scheduling overhead shows.
fn rows_per_task(rows: usize, n_tok: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = if n_tok > 1 { 4 } else { 16 };
    rows.div_ceil(threads * 8).max(min_rows).min(rows.max(1))
}

/// `out[t][r] = dot(w row r, x[t])` for `n_tok` rows of `x`.
fn matmul(
    w: &Matrix,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
    mm: &mut Vec<f32>,
    q8: &mut Vec<BlockQ8>,
) {
    let (cols, rows) = (w.cols, w.rows);
    debug_assert_eq!(x.len(), n_tok * cols);
    debug_assert_eq!(out.len(), n_tok * rows);
    let acts = if quant::uses_q8_activations(w.ty) {
        let nb = cols / QK8;
        q8.resize(n_tok * nb, BlockQ8::default());
        let q8 = &mut q8[..n_tok * nb];
        if n_tok > 1 {
            q8.par_chunks_mut(nb)
                .zip(x.par_chunks(cols))
                .for_each(|(q, x)| quant::quantize_row_q8(x, q));
        } else {
            quant::quantize_row_q8(x, q8);
        }
        Acts::Q8(q8)
    } else {
        Acts::F32(x)
    };
    let chunk = rows_per_task(rows, n_tok);
    let kernel = |(i, o): (usize, &mut [f32])| {
        let r0 = i * chunk;
        let n = o.len() / n_tok;
        let bytes = &w.data[r0 * w.row_bytes..(r0 + n) * w.row_bytes];
        quant::dot_rows(w.ty, bytes, cols, acts, n_tok, o);
    };
    if n_tok == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(kernel);
        return;
    }
    // Row-major results per weight row, then transpose into token-major output.
    let tmp = resize(mm, rows * n_tok);
    tmp.par_chunks_mut(chunk * n_tok)
        .enumerate()
        .for_each(kernel);
    let tmp = &*tmp;
    out.par_chunks_mut(rows).enumerate().for_each(|(t, o)| {
        for (r, o) in o.iter_mut().enumerate() {
            *o = tmp[r * n_tok + t];
        }
    });
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
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
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Norm => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

impl Model {
    /// One forward step over a batch of sequences. Each item appends its `tokens` to its own
    /// cache (at positions `kv.len()..`) and gets the logits of its last token. All inputs
    /// are checked before any cache changes, so an error leaves every cache as it was.
    /// Items are processed one after another today; the signature is batched so that a
    /// later version can read the weights once per step for all of them.
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
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
            if item.kv.k.len() != c.n_layer || item.kv.kv_dim != c.n_head_kv * c.head_dim {
                return Err(EngineError::BadRequest(
                    "the KV cache was made for a different model".into(),
                ));
            }
        }
        Ok(batch
            .iter_mut()
            .map(|item| self.forward_one(item.tokens, item.kv, scratch))
            .collect())
    }

    fn forward_one(&self, tokens: &[u32], kv: &mut KvCache, s: &mut Scratch) -> Vec<f32> {
        let c = &self.config;
        let n = tokens.len();
        let past = kv.len();
        let (d, hd) = (c.n_embd, c.head_dim);
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        kv.reserve(n);

        // Rotary angles for the new positions, shared by all heads and layers.
        let half = c.n_rot / 2;
        let cos = resize(&mut s.cos, n * half);
        let sin = resize(&mut s.sin, n * half);
        for t in 0..n {
            let pos = (past + t) as f64;
            for i in 0..half {
                let freq = (c.rope_theta as f64).powf(-2.0 * i as f64 / c.n_rot as f64);
                let (sn, cs) = (pos * freq).sin_cos();
                cos[t * half + i] = cs as f32;
                sin[t * half + i] = sn as f32;
            }
        }

        let x = resize(&mut s.x, n * d);
        for (t, row) in tokens.iter().zip(x.chunks_exact_mut(d)) {
            let e = &self.tok_embd;
            let off = *t as usize * e.row_bytes;
            quant::dequantize_row(e.ty, &e.data[off..off + e.row_bytes], row);
        }

        for (li, l) in self.layers.iter().enumerate() {
            let xn = resize(&mut s.xn, n * d);
            rms_norm(x, &l.attn_norm, c.rms_eps, xn);
            let q = resize(&mut s.q, n * q_dim);
            let k = resize(&mut s.k, n * kv_dim);
            let v = resize(&mut s.v, n * kv_dim);
            matmul(&l.wq, xn, n, q, &mut s.mm, &mut s.q8);
            matmul(&l.wk, xn, n, k, &mut s.mm, &mut s.q8);
            matmul(&l.wv, xn, n, v, &mut s.mm, &mut s.q8);
            add_bias(q, l.bq.as_ref());
            add_bias(k, l.bk.as_ref());
            add_bias(v, l.bv.as_ref());
            rope(q, hd, c.n_rot, c.rope_style, &s.cos, &s.sin);
            rope(k, hd, c.n_rot, c.rope_style, &s.cos, &s.sin);
            kv.k[li].extend_from_slice(k);
            kv.v[li].extend_from_slice(v);

            let (kc, vc) = (&kv.k[li][..], &kv.v[li][..]);
            let att = resize(&mut s.att, n * q_dim);
            let q = &*q;
            att.par_chunks_mut(hd).enumerate().for_each(|(i, out)| {
                let (t, h) = (i / c.n_head, i % c.n_head);
                let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                let offset = (h / group) * hd;
                quant::attend(qh, kc, vc, kv_dim, offset, past + t + 1, scale, out);
            });

            let proj = resize(&mut s.proj, n * d);
            matmul(&l.wo, att, n, proj, &mut s.mm, &mut s.q8);
            for (a, b) in x.iter_mut().zip(proj.iter()) {
                *a += b;
            }

            rms_norm(x, &l.ffn_norm, c.rms_eps, xn);
            let gate = resize(&mut s.gate, n * c.n_ff);
            let up = resize(&mut s.up, n * c.n_ff);
            matmul(&l.gate, xn, n, gate, &mut s.mm, &mut s.q8);
            matmul(&l.up, xn, n, up, &mut s.mm, &mut s.q8);
            for (g, &u) in gate.iter_mut().zip(up.iter()) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            matmul(&l.down, gate, n, proj, &mut s.mm, &mut s.q8);
            for (a, b) in x.iter_mut().zip(proj.iter()) {
                *a += b;
            }
        }
        kv.len = past + n;

        let xn = resize(&mut s.xn, d);
        rms_norm(&x[(n - 1) * d..], &self.output_norm, c.rms_eps, xn);
        let out = self.output.as_ref().unwrap_or(&self.tok_embd);
        let mut logits = vec![0.0f32; c.vocab_size];
        matmul(out, xn, 1, &mut logits, &mut s.mm, &mut s.q8);
        logits
    }
}
