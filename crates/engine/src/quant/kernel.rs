//! The portable kernels: plain loops over fixed-size arrays that LLVM vectorizes as far as
//! the target allows, used where no vector kernel set is detected and as the reference the
//! vector kernels are tested against. `#[inline(always)]` so that `avx2.rs` can compile the
//! float ones (attention, dot) with AVX2/FMA enabled.

use super::blocks::{Decoder, Group};
use super::{BlockQ8, KvView, TOKEN_TILE};

#[inline(always)]
fn dot16(a: &[i8; 16], b: &[i8; 16]) -> i32 {
    let mut s = 0i32;
    for i in 0..16 {
        s += a[i] as i32 * b[i] as i32;
    }
    s
}

/// Dot product of one decoded group with the matching Q8 activation blocks.
#[inline(always)]
fn dot_group(g: &Group, acts: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (s, a) in acts.iter().enumerate().take(g.n_sub) {
        let q: &[i8; 32] = g.q[s * 32..s * 32 + 32].try_into().unwrap();
        let lo = dot16(q[..16].try_into().unwrap(), a.qs[..16].try_into().unwrap());
        let hi = dot16(q[16..].try_into().unwrap(), a.qs[16..].try_into().unwrap());
        acc += a.d * (g.sc16[2 * s] * lo as f32 + g.sc16[2 * s + 1] * hi as f32) + g.min32[s] * a.s;
    }
    acc
}

/// `dot(weight row r, activation row t)` for the rows in `rows`, laid out as
/// `super::tiled_index` says: the
/// portable kernel, and the reference the vector ones are tested against. Each (row,
/// token) sum runs over the groups in order whatever `n_tok` is (batch invariance).
#[inline(always)]
pub(crate) fn rows_q8<D: Decoder>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) {
    let row_bytes = n_in / D::BLOCK * D::BYTES;
    let nb = n_in / 32;
    let n_groups = n_in.div_ceil(256);
    let n_rows = out.len() / n_tok;
    let mut g = Group::default();
    let mut accs = [0.0f32; TOKEN_TILE];
    for t0 in (0..n_tok).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(n_tok);
        for r in 0..n_rows {
            let row = &rows[r * row_bytes..(r + 1) * row_bytes];
            let accs = &mut accs[..t1 - t0];
            accs.fill(0.0);
            for gi in 0..n_groups {
                D::decode_group(row, gi, &mut g);
                for (i, acc) in accs.iter_mut().enumerate() {
                    let t = t0 + i;
                    *acc += dot_group(&g, &acts[t * nb + gi * 8..t * nb + gi * 8 + g.n_sub]);
                }
            }
            let at = t0 * n_rows + r * (t1 - t0);
            out[at..at + t1 - t0].copy_from_slice(accs);
        }
    }
}

/// Float dot product with eight independent accumulators (so LLVM may vectorize it
/// without reassociating a single sum).
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// Causal attention of one query head over the first `n_pos` positions of `kv`: scores
/// into `scores`, softmax, then the weighted sum of values. Two passes over a score
/// buffer instead of an online softmax: no rescaling of the output per position, and the
/// exponentials run as one vectorizable loop.
#[inline(always)]
pub(crate) fn attend(
    q: &[f32],
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = q.len();
    scores.clear();
    scores.extend((0..n_pos).map(|j| dot_f32(q, &kv.k_row(j)[..hd]) * scale));
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut l = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        l += *s;
    }
    out.fill(0.0);
    for (j, &w) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&kv.v_row(j)[..hd]) {
            *o += w * x;
        }
    }
    if l > 0.0 {
        let inv = 1.0 / l;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}
