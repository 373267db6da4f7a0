//! The AVX-512 attention kernel, for CPUs with the 512-bit kernel set (`quant::simd()`
//! names it).
//!
//! The AVX2 kernel is bound by the latency of its accumulator chains: eight positions'
//! scores (eight chains) at a time, and one chain per eight dimensions of the output over
//! every position. Here scores are computed sixteen positions at a time in 512-bit
//! registers and reduced together by a transposing tree ([`reduce16`]); the weighted sum
//! of values runs as sixteen chains whatever the head size (interleaved sets of positions,
//! summed at the end). A position's score depends only on its query and key row (its lane
//! is fixed by its index), and every sum's order only on the number of positions, so
//! batch invariance holds as in the AVX2 kernel.

use std::arch::x86_64::*;

use super::KvView;
use super::avx2::softmax;

/// `[Σ a[0], Σ a[1], …, Σ a[15]]`: four rounds of pairing vectors and adding their halves
/// (256-bit, 128-bit, then within 128-bit lanes twice), then one permutation that puts
/// the sums in order.
///
/// # Safety
/// The CPU has AVX-512 F.
#[inline(always)]
unsafe fn reduce16(a: &[__m512; 16]) -> __m512 {
    // SAFETY (whole body): register operations only; AVX-512 F per the caller.
    unsafe {
        // s[i]: 256-bit halves of a[i] (lanes 0-7) and a[i + 8] (lanes 8-15) added.
        let s: [__m512; 8] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[i], a[i + 8]),
                _mm512_shuffle_f32x4::<0xEE>(a[i], a[i + 8]),
            )
        });
        // u[i]: 128-bit quarters, positions (i, i + 8, i + 4, i + 12) by quarter.
        let u: [__m512; 4] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(s[i], s[i + 4]),
                _mm512_shuffle_f32x4::<0xDD>(s[i], s[i + 4]),
            )
        });
        let v: [__m512; 2] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x88>(u[i], u[i + 2]),
                _mm512_shuffle_ps::<0xDD>(u[i], u[i + 2]),
            )
        });
        let w = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(v[0], v[1]),
            _mm512_shuffle_ps::<0xDD>(v[0], v[1]),
        );
        // Lane 4k + m of w holds position (0, 8, 4, 12)[k] + (0, 2, 1, 3)[m].
        let order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
        _mm512_permutexvar_ps(order, w)
    }
}

/// Positions per block of the weighted sum of values: a block's value rows (64 × 1 KB at
/// most) stay in L1 while every head of the group adds them up.
const V_BLOCK: usize = 64;

/// [`super::attend`] for heads of `16 * NZ` dimensions sharing one KV head, with
/// `SETS · NZ` (at least sixteen where the head allows) output accumulators per head,
/// `SETS` interleaved sets of positions.
///
/// Scores go sixteen positions at a time, every head of the group in turn on the same
/// sixteen key rows (read from L2 once, then from L1); the weighted sum goes a block of
/// [`V_BLOCK`] value rows at a time, every head in turn, its accumulators kept in memory
/// between blocks. Storing a float and loading it back changes nothing, so each head's
/// result is the very one it would get alone.
///
/// # Safety
/// `q.len() == out.len()` is a multiple of `16 * NZ`, `kv.check(n_pos, 16 * NZ)` passed,
/// and the CPU has AVX2, FMA and AVX-512 F.
#[inline(always)]
unsafe fn attend_nz<const NZ: usize, const SETS: usize>(
    q: &[f32],
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    work: &mut Vec<f32>,
) {
    let hd = 16 * NZ;
    let heads = q.len() / hd;
    let padded = n_pos.next_multiple_of(16);
    // Each head's scores, then each head's SETS partial outputs, then each head's sum.
    work.clear();
    work.resize(heads * (padded + SETS * hd + 1), 0.0);
    let (scores, rest) = work.split_at_mut(heads * padded);
    let (acc, sums) = rest.split_at_mut(heads * SETS * hd);
    // SAFETY: `kv.check(n_pos, 16·NZ)` passed (the caller's contract) and j < n_pos.
    let row = |pages: &[&[f32]], j: usize| unsafe { kv.row_ptr(pages, j) };
    // SAFETY (whole body): loads are 16·NZ floats from `row(.., j)` with j < n_pos;
    // each head's scores hold n_pos rounded up to sixteen, its accumulators SETS·16·NZ;
    // `q`/`out` hold `heads` heads of 16·NZ.
    unsafe {
        let vscale = _mm512_set1_ps(scale);
        for j0 in (0..n_pos).step_by(16) {
            // Past the end, the last row again: scores in the padding, which the softmax
            // ignores and zeroes.
            let rows: [*const f32; 16] =
                std::array::from_fn(|i| row(kv.k, (j0 + i).min(n_pos - 1)));
            for h in 0..heads {
                let qh = q.as_ptr().add(h * hd);
                let qv: [__m512; NZ] = std::array::from_fn(|c| _mm512_loadu_ps(qh.add(16 * c)));
                let mut acc = [_mm512_setzero_ps(); 16];
                // Unrolled by hand so that the accumulators stay in registers (LLVM keeps
                // a 16-iteration loop and spills them).
                macro_rules! positions {
                    ($($i:literal)*) => {$(
                        for (c, x) in qv.iter().enumerate() {
                            let k = _mm512_loadu_ps(rows[$i].add(16 * c));
                            acc[$i] = _mm512_fmadd_ps(*x, k, acc[$i]);
                        }
                    )*};
                }
                positions!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
                let dst = scores.as_mut_ptr().add(h * padded + j0);
                _mm512_storeu_ps(dst, _mm512_mul_ps(reduce16(&acc), vscale));
            }
        }
        for (s, sum) in scores.chunks_exact_mut(padded).zip(sums.iter_mut()) {
            *sum = softmax(s, n_pos);
        }
        for b0 in (0..n_pos).step_by(V_BLOCK) {
            let b1 = (b0 + V_BLOCK).min(n_pos);
            for h in 0..heads {
                let sp = scores.as_ptr().add(h * padded);
                let ap = acc.as_mut_ptr().add(h * SETS * hd);
                let mut o: [[__m512; NZ]; SETS] = std::array::from_fn(|s| {
                    std::array::from_fn(|c| _mm512_loadu_ps(ap.add(s * hd + 16 * c)))
                });
                let mut j = b0;
                while j < b1 {
                    // Past the end, weight 0 (the zeroed padding) on the last row again.
                    for (s, o) in o.iter_mut().enumerate() {
                        let r = row(kv.v, (j + s).min(n_pos - 1));
                        let w = _mm512_set1_ps(*sp.add(j + s));
                        for (c, x) in o.iter_mut().enumerate() {
                            *x = _mm512_fmadd_ps(w, _mm512_loadu_ps(r.add(16 * c)), *x);
                        }
                    }
                    j += SETS;
                }
                for (s, o) in o.iter().enumerate() {
                    for (c, x) in o.iter().enumerate() {
                        _mm512_storeu_ps(ap.add(s * hd + 16 * c), *x);
                    }
                }
            }
        }
        for (h, &sum) in sums.iter().enumerate() {
            let inv = _mm512_set1_ps(if sum > 0.0 { 1.0 / sum } else { 0.0 });
            let ap = acc.as_ptr().add(h * SETS * hd);
            for c in 0..NZ {
                let mut x = _mm512_loadu_ps(ap.add(16 * c));
                for s in 1..SETS {
                    x = _mm512_add_ps(x, _mm512_loadu_ps(ap.add(s * hd + 16 * c)));
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(h * hd + 16 * c), _mm512_mul_ps(x, inv));
            }
        }
    }
}

/// [`super::attend`] with 512-bit registers for head sizes 32, 64, 128 and 256; `None`
/// (nothing written) for the others.
///
/// # Safety
/// `kv.check(n_pos, hd)` passed, `q.len() == out.len()` is a multiple of `hd`, and the
/// CPU has AVX2, FMA and AVX-512 F.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) unsafe fn attend(
    q: &[f32],
    hd: usize,
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    work: &mut Vec<f32>,
) -> Option<()> {
    macro_rules! go {
        ($nz:literal, $sets:literal) => {
            // SAFETY: head size 16 * $nz matched; the rest is the caller's contract; the
            // features are enabled on this function.
            unsafe { attend_nz::<$nz, $sets>(q, kv, n_pos, scale, out, work) }
        };
    }
    match hd {
        32 => go!(2, 8),
        64 => go!(4, 4),
        128 => go!(8, 2),
        256 => go!(16, 1),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reduction tree's sums come out in position order.
    #[test]
    fn reduce16_sums_in_order() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let vals: [[f32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|l| (i * 100 + l) as f32));
        let mut got = [0.0f32; 16];
        #[target_feature(enable = "avx512f")]
        fn run(vals: &[[f32; 16]; 16], got: &mut [f32; 16]) {
            // SAFETY: each row holds sixteen floats; AVX-512 F is enabled here.
            unsafe {
                let a: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(vals[i].as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), reduce16(&a));
            }
        }
        // SAFETY: AVX-512 F was detected above.
        unsafe { run(&vals, &mut got) };
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, vals[i].iter().sum::<f32>(), "position {i}");
        }
    }
}
