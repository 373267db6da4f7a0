//! The portable kernels: plain loops over fixed-size arrays that LLVM vectorizes as far as
//! the target allows, used where no vector kernel set is detected and as the reference the
//! vector kernels are tested against. `#[inline(always)]` so that `avx2.rs` can compile the
//! float dot product with AVX2/FMA enabled.

use super::QK8;
use super::packed::Job;

/// `out[t * n_rows + r] = dot(weight row r0 + r, token t)` for the job's rows: the
/// portable kernel, and the reference the vector ones are tested against. Per
/// (row, token): each unit's exact integer sum, then its scaled contribution added to the
/// row's float sum, units in order whatever `n_tok` is (batch invariance).
pub(crate) fn rows_packed(job: &Job<'_>, out: &mut [f32]) {
    let Job {
        p,
        r0,
        n_rows,
        blocks,
        init,
        n_tok,
    } = *job;
    let l = p.layout;
    let (nb, ni) = (blocks.len() / n_tok, init.len() / n_tok);
    for r in r0..r0 + n_rows {
        let lane = r % 8;
        for t in 0..n_tok {
            let mut f = 0.0f32;
            for u in 0..p.units {
                let at = (r / 8) * p.units + u;
                let start = u * l.unit;
                let a = &blocks[t * nb + start / QK8];
                let qs = &a.qs[start % QK8..start % QK8 + l.unit];
                let mut acc = if l.bias != 0 { init[t * ni + u] } else { 0 };
                for k in 0..l.regs() {
                    let w = p.unpacked(at, k);
                    for i in 0..4 {
                        acc += w[4 * lane + i] as i32 * qs[4 * k + i] as i32;
                    }
                }
                let (d, m) = p.scale(at, lane);
                f += acc as f32 * (d * a.d);
                if l.has_min {
                    let s = if l.unit_sums() {
                        a.d * init[t * ni + u] as f32
                    } else {
                        a.s
                    };
                    f += m * s;
                }
            }
            out[t * n_rows + r - r0] = f;
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
