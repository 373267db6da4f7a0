//! The portable attention: plain loops that LLVM vectorizes as far as the target allows,
//! used where no vector kernel set is detected and as the reference the vector kernel is
//! tested against. `#[inline(always)]` so that `avx2.rs` compiles it with AVX2/FMA
//! enabled for the head sizes it has no kernel of its own for.

use super::KvView;
use crate::quant::dot_f32;

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
