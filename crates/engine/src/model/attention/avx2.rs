//! The x86-64 attention kernels (AVX2+FMA): attention of one head for the common head
//! sizes, and the eight-lane exponential that it and [`super::exp_nonpositive`] use.

use std::arch::x86_64::*;

use super::KvView;

/// Sum of the eight lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller runs with AVX.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// `e^x` for `x ≤ 0` (softmax after subtracting the maximum), to about 2 ulp: `x = n·ln2 +
/// r`, a degree-6 polynomial for `e^r` on |r| ≤ ln2/2, and `2^n` built in the exponent bits.
/// Inputs below -87.3 give the smallest normal float instead of 0 or a denormal.
#[inline(always)]
unsafe fn exp_neg(x: __m256) -> __m256 {
    // SAFETY: the caller runs with AVX2 and FMA.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_54));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2n = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }
}

/// [`super::exp_nonpositive`] with [`exp_neg`], eight at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_nonpositive(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 floats; the features are enabled on this function.
        unsafe {
            let v = exp_neg(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    let rest = chunks.into_remainder();
    let mut tail = [-100.0f32; 8];
    tail[..rest.len()].copy_from_slice(rest);
    // SAFETY: as above, on the padded tail.
    unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), exp_neg(_mm256_loadu_ps(tail.as_ptr()))) };
    rest.copy_from_slice(&tail[..rest.len()]);
}

/// [`exp_neg`] on eight values, for the tests.
#[cfg(test)]
pub(crate) fn exp_neg8(x: &[f32; 8]) -> [f32; 8] {
    let mut out = [0.0f32; 8];
    // SAFETY: the test calls this only after detecting AVX2/FMA; both arrays hold 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp_neg(_mm256_loadu_ps(x.as_ptr()))) };
    out
}

/// The eight horizontal sums of eight vectors, as one vector.
#[inline(always)]
unsafe fn reduce8(a: &[__m256; 8]) -> __m256 {
    // SAFETY: the caller runs with AVX.
    unsafe {
        let h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        _mm256_add_ps(
            _mm256_permute2f128_ps(h0123, h4567, 0x20),
            _mm256_permute2f128_ps(h0123, h4567, 0x31),
        )
    }
}

/// The softmax of the scores `scores[..n_pos]` in place, unnormalized: `e^(s - max)`, with
/// the padding after `n_pos` (up to the next multiple of eight) zeroed; returns their sum.
///
/// # Safety
/// `scores` holds `n_pos` rounded up to a multiple of eight; the CPU has AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn softmax(scores: &mut [f32], n_pos: usize) -> f32 {
    assert!(scores.len() >= n_pos.next_multiple_of(8));
    let sp = scores.as_mut_ptr();
    // SAFETY (whole body): eight-float loads and stores below n_pos rounded up to eight.
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for j0 in (0..n_pos).step_by(8) {
            let x = _mm256_loadu_ps(sp.add(j0));
            // Padding lanes (zeros) must not raise the maximum.
            let keep = _mm256_cmp_ps(
                _mm256_cvtepi32_ps(_mm256_add_epi32(
                    _mm256_set1_epi32(j0 as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                )),
                _mm256_set1_ps(n_pos as f32),
                _CMP_LT_OQ,
            );
            m = _mm256_max_ps(m, _mm256_blendv_ps(m, x, keep));
        }
        let m = {
            let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h))))
        };
        let mut lsum = _mm256_setzero_ps();
        for j0 in (0..n_pos).step_by(8) {
            let e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(sp.add(j0)), m));
            _mm256_storeu_ps(sp.add(j0), e);
        }
        for s in &mut scores[n_pos..] {
            *s = 0.0;
        }
        for j0 in (0..n_pos).step_by(8) {
            lsum = _mm256_add_ps(lsum, _mm256_loadu_ps(scores.as_ptr().add(j0)));
        }
        hsum(lsum)
    }
}

/// [`super::kernel::attend`] for a head of `8 * NQ` dimensions, with the query and the
/// output held in registers. Scores are computed eight positions at a time (one
/// accumulator per position, reduced together); a last partial group runs the same code
/// (the last row again in the missing lanes, scores the softmax ignores), so a position's
/// score never depends on where the group boundaries fall. Exponentials run eight at a time ([`exp_neg`]).
///
/// # Safety
/// `q.len() == out.len() == 8 * NQ`, `kv.check(n_pos, 8 * NQ)` passed, and the CPU has
/// AVX2 and FMA.
#[inline(always)]
unsafe fn attend_nq<const NQ: usize>(
    q: &[f32],
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let padded = n_pos.next_multiple_of(8);
    scores.clear();
    scores.resize(padded, 0.0);
    // SAFETY: `kv.check(n_pos, 8·NQ)` passed (the caller's contract) and j < n_pos.
    let row = |pages: &[&[f32]], j: usize| unsafe { kv.row_ptr(pages, j) };
    // SAFETY (whole body): loads are 8·NQ floats from `row(.., j)` with j < n_pos (see
    // above); `scores` has `padded` elements; `q`/`out` have 8·NQ.
    unsafe {
        let mut qv = [_mm256_setzero_ps(); NQ];
        for (c, x) in qv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(q.as_ptr().add(8 * c));
        }
        let sp = scores.as_mut_ptr();
        let vscale = _mm256_set1_ps(scale);
        for j0 in (0..n_pos).step_by(8) {
            let mut acc = [_mm256_setzero_ps(); 8];
            // Past the end, the last row again (a fixed trip count keeps the accumulators
            // in registers): scores in the padding, which the softmax ignores and zeroes.
            for (i, a) in acc.iter_mut().enumerate() {
                let r = row(kv.k, (j0 + i).min(n_pos - 1));
                for (c, x) in qv.iter().enumerate() {
                    *a = _mm256_fmadd_ps(*x, _mm256_loadu_ps(r.add(8 * c)), *a);
                }
            }
            _mm256_storeu_ps(sp.add(j0), _mm256_mul_ps(reduce8(&acc), vscale));
        }
        let l = softmax(scores, n_pos);
        let mut o = [_mm256_setzero_ps(); NQ];
        for (j, &w) in scores[..n_pos].iter().enumerate() {
            let r = row(kv.v, j);
            let w = _mm256_set1_ps(w);
            for (c, x) in o.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8 * c)), *x);
            }
        }
        let inv = _mm256_set1_ps(if l > 0.0 { 1.0 / l } else { 0.0 });
        for (c, x) in o.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_mul_ps(*x, inv));
        }
    }
}

/// [`super::attend`] on x86-64 for the common head sizes (32, 64, 128, 256); other sizes
/// use the portable kernel.
///
/// # Safety
/// `kv.check(n_pos, q.len())` passed and `q.len() == out.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn attend(
    q: &[f32],
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    macro_rules! go {
        ($nq:literal) => {
            // SAFETY: head size 8 * $nq matched; the rest is the caller's contract; the
            // features are enabled on this function.
            unsafe { attend_nq::<$nq>(q, kv, n_pos, scale, out, scores) }
        };
    }
    match q.len() {
        32 => go!(4),
        64 => go!(8),
        128 => go!(16),
        256 => go!(32),
        _ => super::kernel::attend(q, kv, n_pos, scale, out, scores),
    }
}
