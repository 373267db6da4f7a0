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

/// Per-group scales laid out for the vector loop, computed once per decoded group and
/// shared by all tokens: for sub-block `s`, lanes 0..4 hold `sc16[2s]` and lanes 4..8
/// `sc16[2s + 1]` (the two 16-weight halves that `madd` leaves in those lanes).
struct Scales([__m256; 8]);

impl Default for Scales {
    fn default() -> Self {
        // SAFETY: an all-zero bit pattern is a valid __m256 (eight 0.0 floats).
        Scales(unsafe { std::mem::zeroed() })
    }
}

#[target_feature(enable = "avx2,fma")]
fn prep_group(g: &Group, out: &mut Scales) {
    for (s, o) in out.0.iter_mut().enumerate().take(g.n_sub) {
        *o = _mm256_set_m128(_mm_set1_ps(g.sc16[2 * s + 1]), _mm_set1_ps(g.sc16[2 * s]));
    }
}

/// One sub-block step of [`add_group`] for one token.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn add_sub(
    w: __m256i,
    abs_w: __m256i,
    scale: __m256,
    min: f32,
    a: &BlockQ8,
    acc: &mut (__m256, f32),
) {
    // SAFETY: `a.qs` is a fixed-size array of 32 readable bytes; loadu has no alignment
    // requirement.
    let x = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
    // maddubs wants unsigned × signed: move w's sign onto x. |w| ≤ 128 and |x| ≤ 127,
    // so the pairwise i16 sums (≤ 2·128·127) cannot saturate.
    let p16 = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
    acc.0 = _mm256_fmadd_ps(p, _mm256_mul_ps(scale, _mm256_set1_ps(a.d)), acc.0);
    acc.1 += min * a.s;
}

/// Loads sub-block `s` of the decoded weights, and its absolute value.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load_w(g: &Group, s: usize) -> (__m256i, __m256i) {
    let wq: &[i8; 32] = g.q[s * 32..s * 32 + 32].try_into().unwrap();
    // SAFETY: the pointer addresses 32 readable bytes (a fixed-size array of 32 i8); loadu
    // has no alignment requirement.
    let w = unsafe { _mm256_loadu_si256(wq.as_ptr() as *const __m256i) };
    (w, _mm256_sign_epi8(w, w))
}

/// Accumulates one group into `acc` (vector part, scalar offset part): the same sum as
/// `kernel::dot_group` up to float summation order. 32 int8 products per step with
/// `maddubs`, per-16 scales applied to whole vectors, no horizontal sum. The order of
/// operations on one accumulator is fixed by the code alone, never by the number of tokens
/// (batch invariance).
#[target_feature(enable = "avx2,fma")]
fn add_group(g: &Group, sc: &Scales, acts: &[BlockQ8], acc: &mut (__m256, f32)) {
    for (s, a) in acts.iter().enumerate().take(g.n_sub) {
        let (w, abs_w) = load_w(g, s);
        add_sub(w, abs_w, sc.0[s], g.min32[s], a, acc);
    }
}

/// [`add_group`] for two tokens, interleaved so that their (independent) FMA chains
/// overlap; each token's accumulator sees exactly the operations `add_group` would do.
#[target_feature(enable = "avx2,fma")]
fn add_group2(
    g: &Group,
    sc: &Scales,
    a: &[BlockQ8],
    b: &[BlockQ8],
    acc_a: &mut (__m256, f32),
    acc_b: &mut (__m256, f32),
) {
    let (mut va, mut vb) = (*acc_a, *acc_b);
    for (s, (a, b)) in a.iter().zip(b).enumerate().take(g.n_sub) {
        let (w, abs_w) = load_w(g, s);
        add_sub(w, abs_w, sc.0[s], g.min32[s], a, &mut va);
        add_sub(w, abs_w, sc.0[s], g.min32[s], b, &mut vb);
    }
    (*acc_a, *acc_b) = (va, vb);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn rows_q8<D: Decoder>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) {
    kernel::rows_q8_with::<D, (__m256, f32), Scales>(
        rows,
        n_in,
        acts,
        n_tok,
        out,
        (_mm256_setzero_ps(), 0.0),
        |g, sc| prep_group(g, sc),
        |g, sc, a, acc| add_group(g, sc, a, acc),
        |g, sc, a, b, acc_a, acc_b| add_group2(g, sc, a, b, acc_a, acc_b),
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
