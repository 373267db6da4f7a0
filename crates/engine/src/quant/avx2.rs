//! The AVX2+FMA kernels. The row/token loops and the block decoders are the portable ones
//! (`kernel.rs`, `blocks.rs`) compiled here with AVX2 enabled; the int8 dot product of a
//! decoded group with Q8 activations is written with intrinsics, because LLVM's own
//! vectorization of it needs a horizontal sum per 16 weights.

use std::arch::x86_64::*;

use super::BlockQ8;
use super::blocks::{Decoder, Group};
use super::kernel;

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Accumulates one group into `acc` (vector part, scalar offset part): the same sum as
/// `kernel::dot_group` up to float summation order. 32 int8 products per step with
/// `maddubs`, per-16 scales applied to whole vectors, no horizontal sum.
#[target_feature(enable = "avx2,fma")]
fn add_group(g: &Group, acts: &[BlockQ8], acc: &mut (__m256, f32)) {
    let ones = _mm256_set1_epi16(1);
    let (mut v, mut offsets) = *acc;
    for (s, a) in acts.iter().enumerate().take(g.n_sub) {
        let wq: &[i8; 32] = g.q[s * 32..s * 32 + 32].try_into().unwrap();
        // SAFETY: both pointers address 32 readable bytes (fixed-size arrays of 32 i8);
        // loadu has no alignment requirement.
        let (w, x) = unsafe {
            (
                _mm256_loadu_si256(wq.as_ptr() as *const __m256i),
                _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i),
            )
        };
        // maddubs wants unsigned × signed: move w's sign onto x. |w| ≤ 128 and |x| ≤ 127,
        // so the pairwise i16 sums (≤ 2·128·127) cannot saturate.
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        let sc = _mm256_set_m128(
            _mm_set1_ps(g.sc16[2 * s + 1] * a.d),
            _mm_set1_ps(g.sc16[2 * s] * a.d),
        );
        v = _mm256_fmadd_ps(p, sc, v);
        offsets += g.min32[s] * a.s;
    }
    *acc = (v, offsets);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn rows_q8<D: Decoder>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) {
    kernel::rows_q8_with::<D, (__m256, f32)>(
        rows,
        n_in,
        acts,
        n_tok,
        out,
        (_mm256_setzero_ps(), 0.0),
        |g, a, acc| add_group(g, a, acc),
        |(v, offsets)| hsum(v) + offsets,
    )
}

#[target_feature(enable = "avx2,fma")]
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
    kernel::attend(q, k, v, stride, offset, n_pos, scale, out)
}

#[target_feature(enable = "avx2,fma")]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    kernel::dot_f32(a, b)
}
