//! The x86-64 kernels: AVX2+FMA+F16C, and the same code with AVX-512 VNNI's `vpdpbusd`
//! doing the int8 dot product where the CPU has it.
//!
//! Each weight format unpacks its blocks straight into registers (32 signed int8 weights,
//! the per-16 scales as one vector and the per-32 offset), so a weight is read from memory
//! once and never written back; the int8 products with the Q8 activations are summed by
//! `maddubs`+`madd` (AVX2) or `vpdpbusd` (VNNI), which give the same integers, so both
//! instruction sets produce bit-identical results.
//!
//! Batch invariance: the result for one (weight row, token) is accumulated by the same
//! sequence of operations whatever the number of tokens: per 32-weight sub-block, in
//! order, into that token's own vector accumulator, reduced horizontally once at the end.
//! Tokens are only tiled (64 at a time, in fours whose independent chains overlap) to
//! reuse unpacked weights; keep it that way (see `model/forward.rs`).

use std::arch::x86_64::*;

use super::{BlockQ8, KvView, TOKEN_TILE};

/// 32 unpacked weights: signed values `w`, their absolute values (for `maddubs`, which
/// wants one unsigned operand), the scale of each 16-weight half (lanes 0..4 the first,
/// lanes 4..8 the second, where the pairwise sums of each half land) and the offset that
/// multiplies the activation block's sum (Q4_1, Q4_K).
#[derive(Clone, Copy)]
struct Sub {
    w: __m256i,
    aw: __m256i,
    scale: __m256,
    min: f32,
    /// -128 × the sums of each lane's four weights, set only where the tiled path feeds
    /// biased activations (see [`add`]).
    corr: __m256i,
}

impl Default for Sub {
    fn default() -> Self {
        // SAFETY: all-zero bits are valid for the integer and float vectors and the f32.
        unsafe { std::mem::zeroed() }
    }
}

/// One ggml weight format, unpacked in registers. A row is a sequence of groups of 256
/// weights (one super-block, or eight 32-weight blocks); `Head` is what a group's
/// sub-blocks share (the K-quants' packed scales).
trait Format {
    const BLOCK: usize;
    const BYTES: usize;
    /// Whether sub-blocks carry an offset (`Sub::min` is otherwise zero and skipped).
    const HAS_MIN: bool;
    /// Whether weights can be negative; unsigned ones (0..=15) go to `maddubs` as they are,
    /// without moving their sign onto the activations.
    const SIGNED: bool;
    /// Whether a sub-block has one scale for all 32 weights (all but Q6_K, whose halves
    /// have their own): the tiled path then forms four tokens' scale products at once.
    const ONE_SCALE: bool = true;
    type Head: Copy + Default;
    /// # Safety
    /// `row` points at a whole row of this format with at least `gi + 1` groups, and the
    /// CPU has AVX2, FMA and F16C.
    unsafe fn head(row: *const u8, gi: usize) -> Self::Head;
    /// # Safety
    /// As [`Format::head`], and sub-block `s` exists in group `gi`.
    unsafe fn sub(row: *const u8, gi: usize, s: usize, head: &Self::Head) -> Sub;
}

/// The int8 dot product of 32 unsigned × 32 signed bytes into 8 lanes of 4-product sums.
trait IDot {
    /// Whether the tiled path may hand this instruction activations biased by +128 (as
    /// unsigned bytes) against signed weights: true for `vpdpbusd`, whose u8×i8 products
    /// cannot saturate; false for `maddubs`, whose pairwise i16 sums would.
    const BIASED_ACTS: bool;
    /// `acc` plus the products of 32 unsigned × 32 signed bytes, in 8 lanes of 4.
    ///
    /// # Safety
    /// The CPU has the instructions of the implementation.
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

struct Avx2Dot;
impl IDot for Avx2Dot {
    const BIASED_ACTS: bool = false;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the caller runs with AVX2.
        unsafe {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, p)
        }
    }
}

struct VnniDot;
impl IDot for VnniDot {
    const BIASED_ACTS: bool = true;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the caller runs with AVX-512 VNNI and VL.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p` and F16C.
    unsafe {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// 16 packed bytes → their 32 nibbles as bytes: low nibbles first, then high ones (the
/// element order of ggml's 32-weight blocks).
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p` and AVX2.
    unsafe {
        let b = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(b, m);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        _mm256_set_m128i(hi, lo)
    }
}

#[inline(always)]
unsafe fn sub_from(w: __m256i, scale: f32, min: f32) -> Sub {
    // SAFETY: the caller runs with AVX2.
    unsafe {
        Sub {
            w,
            aw: _mm256_sign_epi8(w, w),
            scale: _mm256_set1_ps(scale),
            min,
            corr: _mm256_setzero_si256(),
        }
    }
}

/// A 32-weight format: group `gi`, sub-block `s` is block `8 * gi + s`.
#[inline(always)]
unsafe fn block_ptr<F: Format>(row: *const u8, gi: usize, s: usize) -> *const u8 {
    // SAFETY: the caller guarantees the block exists.
    unsafe { row.add((gi * 8 + s) * F::BYTES) }
}

struct Q4_0;
impl Format for Q4_0 {
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    type Head = ();
    #[inline(always)]
    unsafe fn head(_: *const u8, _: usize) {}
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, _: &()) -> Sub {
        // SAFETY: the caller guarantees the block and the CPU features.
        unsafe {
            let b = block_ptr::<Self>(row, gi, s);
            let w = _mm256_sub_epi8(nibbles16(b.add(2)), _mm256_set1_epi8(8));
            sub_from(w, f16_at(b), 0.0)
        }
    }
}

struct Q4_1;
impl Format for Q4_1 {
    const SIGNED: bool = false;
    const BLOCK: usize = 32;
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    type Head = ();
    #[inline(always)]
    unsafe fn head(_: *const u8, _: usize) {}
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, _: &()) -> Sub {
        // SAFETY: the caller guarantees the block and the CPU features.
        unsafe {
            let b = block_ptr::<Self>(row, gi, s);
            let w = nibbles16(b.add(4));
            // Unsigned nibbles are their own absolute values.
            Sub {
                w,
                aw: w,
                scale: _mm256_set1_ps(f16_at(b)),
                min: f16_at(b.add(2)),
                corr: _mm256_setzero_si256(),
            }
        }
    }
}

struct Q5_0;
impl Format for Q5_0 {
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 22;
    const HAS_MIN: bool = false;
    type Head = ();
    #[inline(always)]
    unsafe fn head(_: *const u8, _: usize) {}
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, _: &()) -> Sub {
        // SAFETY: the caller guarantees the block and the CPU features.
        unsafe {
            let b = block_ptr::<Self>(row, gi, s);
            let qh = (b.add(2) as *const u32).read_unaligned();
            // Bit i of qh is the fifth bit of element i: spread the 32 bits over 32 bytes
            // (byte i gets qh's byte i / 8, then all its bits but bit i % 8 are set, so
            // it is all ones exactly when that bit was).
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh as i32),
                _mm256_setr_epi64x(
                    0,
                    0x0101_0101_0101_0101,
                    0x0202_0202_0202_0202,
                    0x0303_0303_0303_0303,
                ),
            );
            let bits = _mm256_cmpeq_epi8(
                _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
                _mm256_set1_epi64x(-1),
            );
            let hi = _mm256_and_si256(bits, _mm256_set1_epi8(0x10));
            let w = _mm256_sub_epi8(
                _mm256_or_si256(nibbles16(b.add(6)), hi),
                _mm256_set1_epi8(16),
            );
            sub_from(w, f16_at(b), 0.0)
        }
    }
}

struct Q8_0;
impl Format for Q8_0 {
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    const HAS_MIN: bool = false;
    type Head = ();
    #[inline(always)]
    unsafe fn head(_: *const u8, _: usize) {}
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, _: &()) -> Sub {
        // SAFETY: the caller guarantees the block and the CPU features.
        unsafe {
            let b = block_ptr::<Self>(row, gi, s);
            let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
            sub_from(w, f16_at(b), 0.0)
        }
    }
}

/// Q4_K's eight sub-block scales and offsets, decoded once per super-block.
#[derive(Clone, Copy, Default)]
struct Q4KHead {
    scale: [f32; 8],
    min: [f32; 8],
}

struct Q4K;
impl Format for Q4K {
    const SIGNED: bool = false;
    const BLOCK: usize = 256;
    const BYTES: usize = 144;
    const HAS_MIN: bool = true;
    type Head = Q4KHead;
    #[inline(always)]
    unsafe fn head(row: *const u8, gi: usize) -> Q4KHead {
        // SAFETY: the caller guarantees the super-block and the CPU features.
        unsafe {
            let b = row.add(gi * Self::BYTES);
            let d = f16_at(b);
            let dmin = f16_at(b.add(2));
            let s: &[u8; 12] = &*(b.add(4) as *const [u8; 12]);
            let mut h = Q4KHead::default();
            for j in 0..8 {
                let (sc, m) = super::blocks::scale_min_k4(j, s);
                h.scale[j] = d * sc as f32;
                h.min[j] = -dmin * m as f32;
            }
            h
        }
    }
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, h: &Q4KHead) -> Sub {
        // SAFETY: the caller guarantees the super-block and the CPU features.
        unsafe {
            // Sub-blocks 2k and 2k+1 are the low and high nibbles of bytes 32k..32k+32.
            let q = row.add(gi * Self::BYTES + 16 + (s / 2) * 32);
            let bytes = _mm256_loadu_si256(q as *const __m256i);
            let bytes = if s % 2 == 1 {
                _mm256_srli_epi16(bytes, 4)
            } else {
                bytes
            };
            let w = _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F));
            Sub {
                w,
                aw: w,
                scale: _mm256_set1_ps(h.scale[s]),
                min: h.min[s],
                corr: _mm256_setzero_si256(),
            }
        }
    }
}

struct Q6K;
impl Format for Q6K {
    const SIGNED: bool = true;
    const ONE_SCALE: bool = false;
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    const HAS_MIN: bool = false;
    type Head = [f32; 16];
    #[inline(always)]
    unsafe fn head(row: *const u8, gi: usize) -> [f32; 16] {
        // SAFETY: the caller guarantees the super-block and the CPU features.
        unsafe {
            let b = row.add(gi * Self::BYTES);
            let d = f16_at(b.add(208));
            let mut sc = [0.0f32; 16];
            for (i, o) in sc.iter_mut().enumerate() {
                *o = d * (*b.add(192 + i) as i8) as f32;
            }
            sc
        }
    }
    #[inline(always)]
    unsafe fn sub(row: *const u8, gi: usize, s: usize, sc: &[f32; 16]) -> Sub {
        // SAFETY: the caller guarantees the super-block and the CPU features.
        unsafe {
            // Each half (128 weights) takes 64 bytes of low 4 bits and 32 bytes of high 2
            // bits; sub-block j of a half uses low nibbles (j = 0, 1) or high ones (2, 3)
            // of ql bytes 32(j % 2).., and bit pair j of the qh bytes.
            let b = row.add(gi * Self::BYTES);
            let (n, j) = (s / 4, s % 4);
            let ql = _mm256_loadu_si256(b.add(n * 64 + (j % 2) * 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + n * 32) as *const __m256i);
            let m4 = _mm256_set1_epi8(0x0F);
            let lo = if j < 2 {
                _mm256_and_si256(ql, m4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4)
            };
            let hi = match j {
                0 => _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
                1 => _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2),
                2 => _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                _ => _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(-64)), 2),
            };
            let w = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
            Sub {
                w,
                aw: _mm256_sign_epi8(w, w),
                scale: _mm256_set_m128(_mm_set1_ps(sc[2 * s + 1]), _mm_set1_ps(sc[2 * s])),
                min: 0.0,
                corr: _mm256_setzero_si256(),
            }
        }
    }
}

/// A token's running sum for one weight row: a vector part and the scalar offset part.
type Acc = (__m256, f32);

/// The factor of one sub-block's integer sums against one activation block: the weight
/// scale times the activations' (lane-wise, for Q6_K's two halves).
#[inline(always)]
unsafe fn scale_of(sub: &Sub, a: &BlockQ8) -> __m256 {
    // SAFETY: the caller runs with AVX.
    unsafe { _mm256_mul_ps(sub.scale, _mm256_set1_ps(a.d)) }
}

/// Adds one sub-block's products with one activation block, times `scale` (see
/// [`scale_of`]; the tiled path computes the same products four tokens at a time), to
/// `acc`. With `BIASED`, the
/// block holds x + 128 as unsigned bytes and `sub.corr` the matching -128·Σw, so one
/// `vpdpbusd` yields Σw·x directly; otherwise w's sign moves onto x. Both give the same
/// integers, hence the same result to the bit. Without `WITH_MIN` the caller adds the
/// offset part (`min · a.s`, a multiply then an add) itself, four tokens at a time.
#[inline(always)]
unsafe fn add<F: Format, D: IDot, const BIASED: bool, const WITH_MIN: bool>(
    sub: &Sub,
    a: &BlockQ8,
    scale: __m256,
    acc: &mut Acc,
) {
    // SAFETY: `a.qs` is 32 readable bytes (loadu needs no alignment); the caller runs
    // with the CPU features of `D` and AVX2/FMA.
    unsafe {
        let x = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let zero = _mm256_setzero_si256();
        // |w| (unsigned) × sign(w)·x is w·x. |w| ≤ 128 and |x| ≤ 127: maddubs' pairwise
        // i16 sums (≤ 2·128·127) cannot saturate. Unsigned weights are their own absolute
        // values: the same products without the move.
        let p = if BIASED {
            D::dot(sub.corr, x, sub.w)
        } else if F::SIGNED {
            D::dot(zero, sub.aw, _mm256_sign_epi8(x, sub.w))
        } else {
            D::dot(zero, sub.aw, x)
        };
        let p = _mm256_cvtepi32_ps(p);
        acc.0 = _mm256_fmadd_ps(p, scale, acc.0);
        if F::HAS_MIN && WITH_MIN {
            acc.1 += sub.min * a.s;
        }
    }
}

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

/// `dot(weight row r, activation row t)`, laid out as `super::tiled_index` says.
///
/// # Safety
/// `rows` holds `out.len() / n_tok` whole rows of `n_in` weights of format `F`, `acts` holds
/// `n_tok` rows of `n_in / 32` blocks, and the CPU has AVX2, FMA, F16C and what `D` needs.
#[inline(always)]
unsafe fn rows_q8<F: Format, D: IDot>(
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) {
    let row_bytes = n_in / F::BLOCK * F::BYTES;
    let nb = n_in / 32;
    let n_groups = n_in.div_ceil(256);
    let n_rows = out.len() / n_tok;
    assert!(rows.len() >= n_rows * row_bytes && acts.len() >= n_tok * nb);
    let n_sub = |gi: usize| (nb - gi * 8).min(8);
    // SAFETY (whole body): every group and sub-block index stays below the row's
    // `n_groups` / `n_sub(gi)`, inside the rows checked by the assert above; the caller
    // guarantees the CPU features.
    unsafe {
        let zero: Acc = (_mm256_setzero_ps(), 0.0);
        if n_tok == 1 {
            // Decode: stream each row once, unpacking straight into the dot product.
            for (r, o) in out.iter_mut().enumerate() {
                let row = rows.as_ptr().add(r * row_bytes);
                let mut acc = zero;
                for gi in 0..n_groups {
                    let head = F::head(row, gi);
                    for s in 0..n_sub(gi) {
                        let sub = F::sub(row, gi, s, &head);
                        let a = &acts[gi * 8 + s];
                        add::<F, D, false, true>(&sub, a, scale_of(&sub, a), &mut acc);
                    }
                }
                *o = hsum(acc.0) + acc.1;
            }
            return;
        }
        // Signed weights against biased activations: one instruction per product block.
        let biased = D::BIASED_ACTS && F::SIGNED;
        // Unpacked sub-blocks and accumulators of four rows, reused by every call.
        let mut scratch = ([[Sub::default(); 8]; 4], [[zero; TOKEN_TILE]; 4]);
        // Taken out of the thread-local rather than used in a closure: a closure would not
        // inherit this function's target features, and its intrinsics would not inline.
        let mut tile = TILE.take();
        for t0 in (0..n_tok).step_by(TOKEN_TILE) {
            let t1 = (t0 + TOKEN_TILE).min(n_tok);
            let nt = t1 - t0;
            // The tile's activations block-major (all tokens' block b, then b + 1), so
            // that a sweep over a weight row reads them in one sequential stream
            // instead of one cache line per token per block.
            let TileBuf {
                blocks: tile,
                d: tile_d,
                s: tile_s,
            } = &mut tile;
            tile.resize(nb * nt, BlockQ8::default());
            tile_d.resize(nb * nt, 0.0);
            tile_s.resize(nb * nt, 0.0);
            for (i, src) in acts[t0 * nb..t1 * nb].chunks_exact(nb).enumerate() {
                for (b, a) in src.iter().enumerate() {
                    tile_d[b * nt + i] = a.d;
                    tile_s[b * nt + i] = a.s;
                    let dst = &mut tile[b * nt + i];
                    *dst = *a;
                    if biased {
                        // x + 128 as an unsigned byte.
                        let q = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                        let q = _mm256_xor_si256(q, _mm256_set1_epi8(i8::MIN));
                        _mm256_storeu_si256(dst.qs.as_mut_ptr() as *mut __m256i, q);
                    }
                }
            }
            // Four weight rows at a time: each activation block loaded serves all four.
            let mut r = 0;
            let out = &mut out[t0 * n_rows..t1 * n_rows];
            while r < n_rows {
                let (x, tile) = (&mut scratch, (&tile[..], &tile_d[..], &tile_s[..]));
                if r + 4 <= n_rows {
                    let x4 = (&mut x.0, &mut x.1);
                    tile_rows::<F, D, 4>(rows, row_bytes, r, nb, tile, nt, biased, out, x4);
                    r += 4;
                } else {
                    let (subs, accs) = (&mut x.0[..1], &mut x.1[..1]);
                    let x1 = (subs.try_into().unwrap(), accs.try_into().unwrap());
                    tile_rows::<F, D, 1>(rows, row_bytes, r, nb, tile, nt, biased, out, x1);
                    r += 1;
                }
            }
        }
        TILE.set(tile);
    }
}

/// Rows `r0..r0 + R` of the tiled path against the `nt` tokens of `tile` (block-major),
/// written to `out` (this tile's part of the output, row-major), with the caller's scratch
/// for unpacked sub-blocks and accumulators. Every (row, token) sum is accumulated exactly
/// as [`add`] does alone: rows and tokens only share loads.
///
/// # Safety
/// As for [`rows_q8`], and rows `r0..r0 + R` exist.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<F: Format, D: IDot, const R: usize>(
    rows: &[u8],
    row_bytes: usize,
    r0: usize,
    nb: usize,
    (tile, tile_d, tile_s): (&[BlockQ8], &[f32], &[f32]),
    nt: usize,
    biased: bool,
    out: &mut [f32],
    (subs, accs): (&mut [[Sub; 8]; R], &mut [[Acc; TOKEN_TILE]; R]),
) {
    let n_groups = (nb * 32).div_ceil(256);
    // SAFETY (whole body): the rows exist (caller), group and sub-block indices stay below
    // `n_groups` / `ns`; the caller guarantees the CPU features.
    unsafe {
        let zero: Acc = (_mm256_setzero_ps(), 0.0);
        let zero_i = _mm256_setzero_si256();
        for a in accs.iter_mut() {
            a[..nt].fill(zero);
        }
        for gi in 0..n_groups {
            let ns = (nb - gi * 8).min(8);
            for (rr, subs) in subs.iter_mut().enumerate() {
                let row = rows.as_ptr().add((r0 + rr) * row_bytes);
                let head = F::head(row, gi);
                for (s, sub) in subs.iter_mut().enumerate().take(ns) {
                    *sub = F::sub(row, gi, s, &head);
                    if biased {
                        let sum128 = D::dot(zero_i, _mm256_set1_epi8(i8::MIN), sub.w);
                        sub.corr = _mm256_sub_epi32(zero_i, sum128);
                    }
                }
            }
            let blocks = &tile[gi * 8 * nt..(gi * 8 + ns) * nt];
            // Four tokens at a time: four independent FMA chains per row keep the
            // pipelines busy (one chain waits on each FMA's latency).
            let mut t = 0;
            let sums = &tile_s[gi * 8 * nt..(gi * 8 + ns) * nt];
            let ds = &tile_d[gi * 8 * nt..(gi * 8 + ns) * nt];
            while t + 4 <= nt {
                let mut acc = [[zero; 4]; R];
                // The four tokens' offset parts side by side: `off += min · s` per lane, the
                // same multiply and add as each token's scalar part alone.
                let mut off = [_mm_setzero_ps(); R];
                for rr in 0..R {
                    acc[rr].copy_from_slice(&accs[rr][t..t + 4]);
                    let a = &acc[rr];
                    off[rr] = _mm_setr_ps(a[0].1, a[1].1, a[2].1, a[3].1);
                }
                for (si, ((a, s4), d4)) in blocks
                    .chunks_exact(nt)
                    .zip(sums.chunks_exact(nt))
                    .zip(ds.chunks_exact(nt))
                    .enumerate()
                {
                    let a: &[BlockQ8; 4] = a[t..t + 4].try_into().unwrap();
                    // Each row's scale times the four tokens' in one multiply: the same
                    // products as `scale_of`, a quarter of the instructions; the FMAs
                    // below take them as broadcast operands.
                    let mut sd = [[0.0f32; 4]; R];
                    if F::ONE_SCALE {
                        let d4 = _mm_loadu_ps(d4[t..t + 4].as_ptr());
                        for rr in 0..R {
                            let sc = _mm256_castps256_ps128(subs[rr][si].scale);
                            _mm_storeu_ps(sd[rr].as_mut_ptr(), _mm_mul_ps(sc, d4));
                        }
                    }
                    for k in 0..4 {
                        for rr in 0..R {
                            let sub = &subs[rr][si];
                            let scale = if F::ONE_SCALE {
                                _mm256_set1_ps(sd[rr][k])
                            } else {
                                scale_of(sub, &a[k])
                            };
                            if biased {
                                add::<F, D, true, false>(sub, &a[k], scale, &mut acc[rr][k]);
                            } else {
                                add::<F, D, false, false>(sub, &a[k], scale, &mut acc[rr][k]);
                            }
                        }
                    }
                    if F::HAS_MIN {
                        let s4: &[f32; 4] = s4[t..t + 4].try_into().unwrap();
                        let s4 = _mm_loadu_ps(s4.as_ptr());
                        for rr in 0..R {
                            let m = _mm_mul_ps(_mm_set1_ps(subs[rr][si].min), s4);
                            off[rr] = _mm_add_ps(off[rr], m);
                        }
                    }
                }
                for rr in 0..R {
                    let mut o = [0.0f32; 4];
                    _mm_storeu_ps(o.as_mut_ptr(), off[rr]);
                    for k in 0..4 {
                        acc[rr][k].1 = o[k];
                    }
                    accs[rr][t..t + 4].copy_from_slice(&acc[rr]);
                }
                t += 4;
            }
            for t in t..nt {
                for (si, a) in blocks.chunks_exact(nt).enumerate() {
                    for rr in 0..R {
                        let (sub, a) = (&subs[rr][si], &a[t]);
                        let scale = scale_of(sub, a);
                        if biased {
                            add::<F, D, true, true>(sub, a, scale, &mut accs[rr][t]);
                        } else {
                            add::<F, D, false, true>(sub, a, scale, &mut accs[rr][t]);
                        }
                    }
                }
            }
        }
        for (rr, accs) in accs.iter().enumerate() {
            let out = &mut out[(r0 + rr) * nt..(r0 + rr + 1) * nt];
            for (o, &(v, off)) in out.iter_mut().zip(accs.iter()) {
                *o = hsum(v) + off;
            }
        }
    }
}

/// A thread's block-major copy of the activation tile it works on, with the blocks' scales
/// (`BlockQ8::d`) and offset sums (`BlockQ8::s`) apart, so that four tokens' load as one
/// vector.
#[derive(Default)]
struct TileBuf {
    blocks: Vec<BlockQ8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

thread_local! {
    static TILE: std::cell::Cell<TileBuf> = const {
        std::cell::Cell::new(TileBuf { blocks: Vec::new(), d: Vec::new(), s: Vec::new() })
    };
}

/// Which int8 dot product the CPU offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    Avx2,
    Vnni,
}

impl Isa {
    /// The best kernel set this CPU runs, or `None` without AVX2/FMA/F16C.
    pub(crate) fn detect() -> Option<Isa> {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let vnni = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
        match (avx2, vnni) {
            (false, _) => None,
            (true, false) => Some(Isa::Avx2),
            (true, true) => Some(Isa::Vnni),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<F: Format>(rows: &[u8], n_in: usize, a: &[BlockQ8], n: usize, o: &mut [f32]) {
    // SAFETY: forwarded from the caller; this function enables the features it needs.
    unsafe { rows_q8::<F, Avx2Dot>(rows, n_in, a, n, o) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows_vnni<F: Format>(rows: &[u8], n_in: usize, a: &[BlockQ8], n: usize, o: &mut [f32]) {
    // SAFETY: forwarded from the caller; this function enables the features it needs.
    unsafe { rows_q8::<F, VnniDot>(rows, n_in, a, n, o) }
}

/// [`super::dot_rows`] for quantized weights on x86-64. Returns false for a type it has
/// no kernel for.
///
/// # Safety
/// `isa` came from [`Isa::detect`] on this CPU; `rows`, `acts` and `out` are shaped as
/// for [`super::dot_rows`] (whole rows of `ty`).
pub(crate) unsafe fn dot_rows_q8(
    isa: Isa,
    ty: crate::gguf::GgmlType,
    rows: &[u8],
    n_in: usize,
    acts: &[BlockQ8],
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    use crate::gguf::GgmlType as T;
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                match isa {
                    Isa::Avx2 => rows_avx2::<$f>(rows, n_in, acts, n_tok, out),
                    Isa::Vnni => rows_vnni::<$f>(rows, n_in, acts, n_tok, out),
                }
            }
        };
    }
    match ty {
        T::Q4_0 => go!(Q4_0),
        T::Q4_1 => go!(Q4_1),
        T::Q5_0 => go!(Q5_0),
        T::Q8_0 => go!(Q8_0),
        T::Q4K => go!(Q4K),
        T::Q6K => go!(Q6K),
        _ => return false,
    }
    true
}

/// [`super::quantize_row_q8`] with eight lanes: the same values to the bit (the maximum is
/// exact in any order, and rounding is half away from zero like `f32::round`).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: `xb` has 32 floats, read as four unaligned vectors; `b.qs` has 32 bytes.
        unsafe {
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let y = _mm256_mul_ps(v[k], id);
                let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let half = _mm256_cmp_ps(
                    _mm256_and_ps(_mm256_sub_ps(y, t), abs),
                    _mm256_set1_ps(0.5),
                    _CMP_GE_OQ,
                );
                let away = _mm256_or_ps(_mm256_and_ps(y, sign), _mm256_set1_ps(1.0));
                _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(half, away)))
            });
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let ordered =
                _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, ordered);
            b.d = d;
            b.s = d * _mm_cvtsi128_si32(s1) as f32;
        }
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

/// [`super::kernel::attend`] for a head of `8 * NQ` dimensions, with the query and the
/// output held in registers. Scores are computed eight positions at a time (one
/// accumulator per position, reduced together); a last partial group runs the same code
/// with zero accumulators in the missing lanes, so a position's score never depends on
/// where the group boundaries fall. Exponentials run eight at a time ([`exp_neg`]).
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
    let shift = kv.page_rows.trailing_zeros();
    let mask = kv.page_rows - 1;
    // Row `j` of a head: inside its page by `KvView::check` (j < n_pos, offset + 8·NQ ≤
    // stride, pages hold page_rows full rows).
    let row = |pages: &[&[f32]], j: usize| {
        // SAFETY: see above; `pages[j >> shift]` is bounds-checked.
        unsafe {
            pages[j >> shift]
                .as_ptr()
                .add((j & mask) * kv.stride + kv.offset)
        }
    };
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
            for (i, a) in acc.iter_mut().enumerate().take(n_pos - j0) {
                let r = row(kv.k, j0 + i);
                for (c, x) in qv.iter().enumerate() {
                    *a = _mm256_fmadd_ps(*x, _mm256_loadu_ps(r.add(8 * c)), *a);
                }
            }
            _mm256_storeu_ps(sp.add(j0), _mm256_mul_ps(reduce8(&acc), vscale));
        }
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
        let l = hsum(lsum);
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

#[target_feature(enable = "avx2,fma")]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    super::kernel::dot_f32(a, b)
}
