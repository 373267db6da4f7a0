//! The portable kernels. Written as plain loops over fixed-size arrays so that LLVM
//! vectorizes them; `avx2.rs` compiles the very same code with AVX2/FMA enabled, which is
//! why everything here is `#[inline(always)]`.

use super::BlockQ8;
use super::blocks::{Decoder, Group};

/// Tokens processed together per pass over a weight row: enough to amortize decoding a
/// weight group, few enough that their activations stay in L2.
const TOKEN_TILE: usize = 64;

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

/// `out[r * n_tok + t] = dot(weight row r, activation row t)` for the rows in `rows`.
#[inline(always)]
pub(crate) fn rows_q8<D: Decoder>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) {
    rows_q8_with::<D, f32, ()>(
        rows,
        n_in,
        acts,
        n_tok,
        out,
        0.0,
        |_, _| (),
        |g, _, a, acc| *acc += dot_group(g, a),
        |g, _, a, b, acc_a, acc_b| {
            *acc_a += dot_group(g, a);
            *acc_b += dot_group(g, b);
        },
        |acc| acc,
    )
}

/// [`rows_q8`] with the per-group arithmetic supplied: `prep` derives per-group data of
/// type `P` once per decoded group (shared by all tokens), `add` accumulates one decoded
/// group into a per-token accumulator of type `A` (starting at `zero`), `finish` reduces
/// it; `add2` does `add` for two tokens at once, with exactly the same arithmetic for each
/// (so that their independent dependency chains can overlap). The SIMD path reuses these
/// row and token loops and keeps vector accumulators, so it reduces horizontally once per
/// row instead of once per group.
///
/// Batch invariance: each (row, token) result is accumulated on its own, over the groups
/// in order, by the same code whatever `n_tok` is; the token tiling only decides which
/// accumulators are live at a time. Keep it that way (see `model/forward.rs`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_q8_with<D: Decoder, A: Copy, P>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
    zero: A,
    prep: impl Fn(&Group, &mut P),
    add: impl Fn(&Group, &P, &[BlockQ8], &mut A),
    add2: impl Fn(&Group, &P, &[BlockQ8], &[BlockQ8], &mut A, &mut A),
    finish: impl Fn(A) -> f32,
) where
    P: Default,
{
    let row_bytes = n_in / D::BLOCK * D::BYTES;
    let nb = n_in / 32;
    let n_groups = n_in.div_ceil(256);
    let n_rows = out.len() / n_tok;
    let mut g = Group::default();
    let mut p = P::default();
    let mut accs = [zero; TOKEN_TILE];
    for t0 in (0..n_tok).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(n_tok);
        for r in 0..n_rows {
            let row = &rows[r * row_bytes..(r + 1) * row_bytes];
            let accs = &mut accs[..t1 - t0];
            accs.fill(zero);
            for gi in 0..n_groups {
                D::decode_group(row, gi, &mut g);
                prep(&g, &mut p);
                let b0 = gi * 8;
                let at = |t: usize| &acts[t * nb + b0..t * nb + b0 + g.n_sub];
                let mut pairs = accs.chunks_exact_mut(2);
                let mut t = t0;
                for pair in &mut pairs {
                    let [acc_a, acc_b] = pair else { unreachable!() };
                    add2(&g, &p, at(t), at(t + 1), acc_a, acc_b);
                    t += 2;
                }
                if let [acc] = pairs.into_remainder() {
                    add(&g, &p, at(t), acc);
                }
            }
            for (o, &acc) in out[r * n_tok + t0..r * n_tok + t1]
                .iter_mut()
                .zip(accs.iter())
            {
                *o = finish(acc);
            }
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

/// Causal attention of one query head over `n_pos` cached positions, with the softmax
/// fused in (online max/sum), so no score buffer is needed. `k` and `v` hold rows of
/// `stride` floats; this head's slice starts at `offset` in each row (GQA by indexing).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    out.fill(0.0);
    let mut m = f32::NEG_INFINITY;
    let mut l = 0.0f32;
    for j in 0..n_pos {
        let base = j * stride + offset;
        let s = dot_f32(q, &k[base..base + hd]) * scale;
        if s > m {
            let c = (m - s).exp();
            for o in out.iter_mut() {
                *o *= c;
            }
            l *= c;
            m = s;
        }
        let w = (s - m).exp();
        l += w;
        for (o, &x) in out.iter_mut().zip(&v[base..base + hd]) {
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
