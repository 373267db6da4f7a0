//! The x86-64 kernels: AVX2+FMA+F16C, and the same code with AVX-512 VNNI's `vpdpbusd`
//! doing the int8 dot product where the CPU has it (one token; several tokens at once go
//! to the 512-bit kernel of `avx512.rs` on such CPUs).
//!
//! The quantized matmul works on packed weights (eight rows side by side, see
//! `packed.rs`) and Q8 activations: per unit of 32 (16) weights, `unit / 4` products of a
//! weight register with four activation bytes broadcast to every lane leave each of the
//! eight rows' integer sums in its lane; one convert, one multiply (row scales × the
//! token's scale) and one FMA (plus one for offsets) add the unit to the eight rows' float
//! sums, which after the last unit are the results. `maddubs`+`madd` (AVX2) and
//! `vpdpbusd` (VNNI) give the same integers, so both instruction sets produce
//! bit-identical results.
//! IQ4 weights stay 4-bit indices in memory; one `vpshufb` per register looks their
//! code-book values (plus 128) up, and from there they take Q8_0's 8-bit path.
//!
//! Batch invariance: the float part of every (weight row, token) sum is the same sequence
//! of operations whatever the number of tokens: per unit, in order, into that pair's own
//! lane. Integer sums are exact, so how they are split (two chains in the one-token path)
//! changes nothing. Tokens are only tiled (64 at a time, 4 side by side) to reuse
//! loaded weights; keep it that way (see `model/forward.rs`).

use std::arch::x86_64::*;

use super::blocks::IQ4_VALUES;
use super::packed::{F8, H8, I8x8, Job, Packed, Reg, Scales, stored_regs};
use super::{BlockQ8, QK8, TOKEN_TILE};

/// The unsigned × signed byte dot product of one instruction set: `acc` plus, in each
/// 32-bit lane, the four products of that lane's bytes.
trait IDot {
    /// The integer sum's starting value, given the activations' `-bias · Σa`.
    ///
    /// # Safety
    /// The CPU has the instructions of the implementation.
    unsafe fn start<const WIDE: bool>(init: __m256i) -> __m256i;
    /// `acc` plus the lane-wise products of unsigned `u` and signed `s`. `WIDE` weights use
    /// all eight bits (Q8_0's `q + 128`).
    ///
    /// # Safety
    /// The CPU has the instructions of the implementation.
    unsafe fn dot<const WIDE: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

struct Avx2Dot;
impl IDot for Avx2Dot {
    #[inline(always)]
    unsafe fn start<const WIDE: bool>(init: __m256i) -> __m256i {
        // SAFETY: the caller runs with AVX2.
        unsafe { if WIDE { _mm256_setzero_si256() } else { init } }
    }
    #[inline(always)]
    unsafe fn dot<const WIDE: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the caller runs with AVX2.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            if WIDE {
                // `maddubs` would saturate 255 × 127 pairs: take the signed weights back
                // (q = u - 128) and move their sign onto the activations. The products are
                // then Σq·a, which is why `start` drops the -128·Σa correction.
                let q = _mm256_xor_si256(u, _mm256_set1_epi8(i8::MIN));
                let p = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(s, q));
                _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones))
            } else {
                // u ≤ 63, |s| ≤ 128: pairwise sums stay below 2^15.
                _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones))
            }
        }
    }
}

struct VnniDot;
impl IDot for VnniDot {
    #[inline(always)]
    unsafe fn start<const WIDE: bool>(init: __m256i) -> __m256i {
        init
    }
    #[inline(always)]
    unsafe fn dot<const WIDE: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the caller runs with AVX-512 VNNI and VL.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
}

#[inline(always)]
unsafe fn load(r: *const Reg) -> __m256i {
    // SAFETY: the caller guarantees a readable register; `Reg` is 32-byte aligned.
    unsafe { _mm256_load_si256(r as *const __m256i) }
}

#[inline(always)]
unsafe fn load_f(f: *const F8) -> __m256 {
    // SAFETY: as for `load`.
    unsafe { _mm256_load_ps(f as *const f32) }
}

/// Where a kernel reads the eight rows' scales and offsets of entry `at` (a block of rows
/// and a unit, `block · units + unit`), as floats.
pub(super) trait LaneScales: Copy {
    /// # Safety
    /// Entry `at` exists; the CPU has AVX2 and F16C.
    unsafe fn d(self, at: usize) -> __m256;
    /// # Safety
    /// As for `d`, in a form with offsets.
    unsafe fn m(self, at: usize) -> __m256;
}

/// A form scales are stored in ([`Scales`]), chosen with the layout (`dot_packed`).
pub(super) trait Stored: LaneScales {
    /// The matrix's scales, which are in this form.
    fn of(p: &Packed) -> Self;
}

/// Scales already widened to floats (a thread's unpacked copy of a block's).
#[derive(Clone, Copy)]
pub(super) struct Floats {
    pub(super) d: *const F8,
    pub(super) m: *const F8,
}

impl LaneScales for Floats {
    #[inline(always)]
    unsafe fn d(self, at: usize) -> __m256 {
        // SAFETY: per the trait's contract.
        unsafe { load_f(self.d.add(at)) }
    }
    #[inline(always)]
    unsafe fn m(self, at: usize) -> __m256 {
        // SAFETY: per the trait's contract.
        unsafe { load_f(self.m.add(at)) }
    }
}

/// [`Scales::Half`]: one `vcvtph2ps` widens eight lanes exactly.
#[derive(Clone, Copy)]
pub(super) struct Halves {
    d: *const H8,
    m: *const H8,
}

impl LaneScales for Halves {
    #[inline(always)]
    unsafe fn d(self, at: usize) -> __m256 {
        // SAFETY: per the trait's contract; `H8` is 16-byte aligned.
        unsafe { _mm256_cvtph_ps(_mm_load_si128(self.d.add(at) as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn m(self, at: usize) -> __m256 {
        // SAFETY: as for `d`.
        unsafe { _mm256_cvtph_ps(_mm_load_si128(self.m.add(at) as *const __m128i)) }
    }
}

impl Stored for Halves {
    fn of(p: &Packed) -> Self {
        match &p.scales {
            Scales::Half { d, m } => Halves {
                d: d.as_ptr(),
                m: m.as_ptr(),
            },
            Scales::Int { .. } => unreachable!("dispatched on the layout"),
        }
    }
}

/// [`Scales::Int`] of units of `U` weights: the lanes' integers widened and multiplied by
/// their group's factors, the one f32 product ggml's dequantization computes.
#[derive(Clone, Copy)]
pub(super) struct Ints<const U: usize> {
    d: *const I8x8,
    m: *const I8x8,
    gd: *const F8,
    gm: *const F8,
}

impl<const U: usize> Ints<U> {
    #[inline(always)]
    unsafe fn times(ints: *const I8x8, group: *const F8) -> __m256 {
        // SAFETY: the caller's entry exists; AVX2.
        unsafe {
            let i = _mm256_cvtepi8_epi32(_mm_loadl_epi64(ints as *const __m128i));
            _mm256_mul_ps(load_f(group), _mm256_cvtepi32_ps(i))
        }
    }
}

impl<const U: usize> LaneScales for Ints<U> {
    #[inline(always)]
    unsafe fn d(self, at: usize) -> __m256 {
        // SAFETY: per the trait's contract (groups hold whole blocks' units).
        unsafe { Self::times(self.d.add(at), self.gd.add(at / (256 / U))) }
    }
    #[inline(always)]
    unsafe fn m(self, at: usize) -> __m256 {
        // SAFETY: as for `d`.
        unsafe { Self::times(self.m.add(at), self.gm.add(at / (256 / U))) }
    }
}

impl<const U: usize> Stored for Ints<U> {
    fn of(p: &Packed) -> Self {
        match &p.scales {
            Scales::Int { d, m, gd, gm } => Ints {
                d: d.as_ptr(),
                m: m.as_ptr(),
                gd: gd.as_ptr(),
                gm: gm.as_ptr(),
            },
            Scales::Half { .. } => unreachable!("dispatched on the layout"),
        }
    }
}

/// Four activation bytes (`4k..4k + 4` from `qs`) in every lane.
#[inline(always)]
unsafe fn bcast4(qs: *const i8, k: usize) -> __m256i {
    // SAFETY: the caller guarantees four readable bytes; AVX.
    unsafe { _mm256_set1_epi32((qs.add(4 * k) as *const i32).read_unaligned()) }
}

/// Register `k` of a stored unit `q`, unpacked: `BITS` 8 as stored, narrower ones from
/// their nibbles (registers `k` and `k + U / 8` share one) and bit planes (see `packed.rs`),
/// `NL` nibbles looked up in IQ4's code book (plus 128) with one `vpshufb`.
#[inline(always)]
pub(super) unsafe fn weights<const U: usize, const BITS: u32, const NL: bool>(
    q: *const Reg,
    k: usize,
) -> __m256i {
    // SAFETY: the caller guarantees the unit's registers; AVX2.
    unsafe {
        if BITS == 8 {
            return load(q.add(k));
        }
        let half = U / 8;
        let s = load(q.add(k % half));
        let s = if k >= half {
            _mm256_srli_epi16(s, 4)
        } else {
            s
        };
        let lo = _mm256_and_si256(s, _mm256_set1_epi8(0x0F));
        if NL {
            let lut: [u8; 16] = std::array::from_fn(|i| (IQ4_VALUES[i] as i32 + 128) as u8);
            let lut = _mm_loadu_si128(lut.as_ptr() as *const __m128i);
            return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(lut), lo);
        }
        if BITS == 4 {
            return lo;
        }
        // Register k's high bits sit at bit (BITS - 4)·k of each plane byte: move them to
        // bit 4. Sixteen-bit shifts are fine, the mask keeps each byte's own bits.
        let plane = load(q.add(half));
        let at = (BITS as i32 - 4) * k as i32;
        let moved = match at {
            0 => _mm256_slli_epi16(plane, 4),
            1 => _mm256_slli_epi16(plane, 3),
            2 => _mm256_slli_epi16(plane, 2),
            3 => _mm256_slli_epi16(plane, 1),
            4 => plane,
            5 => _mm256_srli_epi16(plane, 1),
            6 => _mm256_srli_epi16(plane, 2),
            _ => _mm256_srli_epi16(plane, 3),
        };
        let mask = ((1i32 << (BITS - 4)) - 1) << 4;
        _mm256_or_si256(lo, _mm256_and_si256(moved, _mm256_set1_epi8(mask as i8)))
    }
}

/// One token's activations: its Q8 blocks and, where the layout has them, its units'
/// integers (biased formats' integer-sum starts, or the activation sums of offsets per 16;
/// see `Layout::init_per_token`).
#[derive(Clone, Copy)]
pub(super) struct Tok {
    pub(super) blocks: *const BlockQ8,
    pub(super) init: *const i32,
}

/// One block of eight rows against `TT` tokens: the eight rows' results for each token,
/// lane by lane. `w` points at the block's first unit as stored (`BITS` below 8 or `NL`:
/// unpacked here) or unpacked; its scales and offsets are entries `at..at + units` of `sc`.
///
/// # Safety
/// `w` and `sc` cover `units` units (offsets only with `MIN`, `Tok::init` only where the
/// layout has per-token integers); the CPU has AVX2, FMA, F16C and what `D` needs.
#[inline(always)]
unsafe fn block_tokens<
    D: IDot,
    S: LaneScales,
    const U: usize,
    const BITS: u32,
    const MIN: bool,
    const WIDE: bool,
    const NL: bool,
    const TT: usize,
>(
    w: *const Reg,
    (sc, at): (S, usize),
    units: usize,
    toks: &[Tok; TT],
) -> [__m256; TT] {
    let stored = stored_regs(U, BITS);
    // SAFETY (whole body): unit indices stay below `units` (caller's contract).
    unsafe {
        let mut f = [_mm256_setzero_ps(); TT];
        for u in 0..units {
            // The same unit of the block after next: read now, it is in the cache when
            // its turn comes, and the loads of this block never wait for memory.
            let ahead = w.wrapping_add(u * stored + PREFETCH_BLOCKS * units * stored) as *const i8;
            for line in 0..(stored * 32).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
            }
            let start = u * U;
            let a: [&BlockQ8; TT] = std::array::from_fn(|t| &*toks[t].blocks.add(start / 32));
            let qs: [*const i8; TT] = std::array::from_fn(|t| a[t].qs.as_ptr().add(start % 32));
            // Biased formats are exactly those without offsets.
            let mut even: [__m256i; TT] = std::array::from_fn(|t| {
                let init = if MIN {
                    _mm256_setzero_si256()
                } else {
                    _mm256_set1_epi32(*toks[t].init.add(u))
                };
                D::start::<WIDE>(init)
            });
            // One token alone: a second chain so that consecutive products overlap.
            let mut odd = [_mm256_setzero_si256(); TT];
            let wu = w.add(u * stored);
            for k in 0..U / 4 {
                let wk = weights::<U, BITS, NL>(wu, k);
                for t in 0..TT {
                    let x = bcast4(qs[t], k);
                    if TT == 1 && k % 2 == 1 {
                        odd[t] = D::dot::<WIDE>(odd[t], wk, x);
                    } else {
                        even[t] = D::dot::<WIDE>(even[t], wk, x);
                    }
                }
            }
            let dl = sc.d(at + u);
            for t in 0..TT {
                let acc = if TT == 1 {
                    _mm256_add_epi32(even[t], odd[t])
                } else {
                    even[t]
                };
                let s = _mm256_mul_ps(dl, _mm256_set1_ps(a[t].d));
                f[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), s, f[t]);
                if MIN {
                    // Offsets per 16 take the unit's own activation sum, per 32 the block's.
                    let sum = if U < QK8 {
                        a[t].d * *toks[t].init.add(u) as f32
                    } else {
                        a[t].s
                    };
                    f[t] = _mm256_fmadd_ps(sc.m(at + u), _mm256_set1_ps(sum), f[t]);
                }
            }
        }
        f
    }
}

/// `out[t * n_rows + r] = dot(weight row r0 + r, token t)` for the job's rows.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and what `D` needs, and the job's layout is `U`, `BITS`,
/// `MIN`, `WIDE`, `NL` (its shapes are checked here).
#[inline(always)]
unsafe fn rows_packed<
    D: IDot,
    S: Stored,
    const U: usize,
    const BITS: u32,
    const MIN: bool,
    const WIDE: bool,
    const NL: bool,
>(
    job: &Job<'_>,
    out: &mut [f32],
) {
    let Job {
        p,
        r0,
        n_rows,
        blocks,
        init,
        n_tok,
    } = *job;
    let units = p.units;
    let stored = p.layout.stored_regs();
    let (nb, ni) = (units * U / 32, p.layout.init_per_token(units * U));
    assert_eq!(ni, if MIN && U == QK8 { 0 } else { units });
    assert!(p.q.len() >= (r0 + n_rows).div_ceil(8) * units * stored);
    assert!(blocks.len() >= n_tok * nb && init.len() >= n_tok * ni && out.len() >= n_rows * n_tok);
    assert!(p.scales_cover(p.q.len() / stored));
    let sc = S::of(p);
    let tok = |t: usize| Tok {
        blocks: blocks[t * nb..].as_ptr(),
        init: init.as_ptr().wrapping_add(t * ni),
    };
    // SAFETY (whole body): row blocks below (r0 + n_rows) / 8 and units below `units` are
    // inside `p`, tokens below `n_tok` inside the activations (asserted above); the caller
    // guarantees the CPU features.
    unsafe {
        let (b0, b1) = (r0 / 8, (r0 + n_rows).div_ceil(8));
        // The lanes of block `b` that fall in the requested rows, as indices into them.
        let lanes = |b: usize| (b * 8).max(r0) - r0..(b * 8 + 8).min(r0 + n_rows) - r0;
        if n_tok <= DIRECT_TOKENS {
            // A few tokens (a decode step, a speculative verification): the stored weights
            // are unpacked in registers for each group of tokens, and read once from memory.
            for b in b0..b1 {
                let at = b * units;
                let w = p.q.as_ptr().add(at * stored);
                let mut t = 0;
                macro_rules! run {
                    ($tt:literal) => {
                        while n_tok - t >= $tt {
                            let toks: [Tok; $tt] = std::array::from_fn(|i| tok(t + i));
                            let f = block_tokens::<D, S, U, BITS, MIN, WIDE, NL, $tt>(
                                w,
                                (sc, at),
                                units,
                                &toks,
                            );
                            put_tokens(&f, b * 8, r0, lanes(b), n_rows, t, out);
                            t += $tt;
                        }
                    };
                }
                run!(4);
                run!(2);
                run!(1);
            }
            return;
        }
        // Narrow rows are unpacked once per tile into this thread's scratch, so that every
        // token reuses plain byte registers; scales are widened there too.
        let (mut scratch, mut d, mut m) = SCRATCH.take();
        d.resize(units, F8::default());
        m.resize(if MIN { units } else { 0 }, F8::default());
        for t0 in (0..n_tok).step_by(TOKEN_TILE) {
            let nt = (n_tok - t0).min(TOKEN_TILE);
            let out = &mut out[t0 * n_rows..(t0 + nt) * n_rows];
            for b in b0..b1 {
                let at = b * units;
                let w = if BITS < 8 {
                    scratch.resize(units * (U / 4), Reg::default());
                    for u in 0..units {
                        let q = p.q.as_ptr().add((at + u) * stored);
                        for k in 0..U / 4 {
                            let dst = scratch.as_mut_ptr().add(u * (U / 4) + k);
                            let wk = weights::<U, BITS, NL>(q, k);
                            _mm256_store_si256(dst as *mut __m256i, wk);
                        }
                    }
                    scratch.as_ptr()
                } else {
                    p.q.as_ptr().add(at * stored)
                };
                widen::<S, MIN>(sc, at, &mut d, &mut m);
                let floats = Floats {
                    d: d.as_ptr(),
                    m: m.as_ptr(),
                };
                let mut t = 0;
                macro_rules! run {
                    ($tt:literal) => {
                        while nt - t >= $tt {
                            let toks: [Tok; $tt] = std::array::from_fn(|i| tok(t0 + t + i));
                            let f = block_tokens::<D, Floats, U, 8, MIN, WIDE, false, $tt>(
                                w,
                                (floats, 0),
                                units,
                                &toks,
                            );
                            put_tokens(&f, b * 8, r0, lanes(b), n_rows, t, out);
                            t += $tt;
                        }
                    };
                }
                run!(4);
                run!(1);
            }
        }
        SCRATCH.set((scratch, d, m));
    }
}

/// Widens the scales (and with `MIN` offsets) of entries `at..at + d.len()` of `sc` into
/// `d` and `m`.
///
/// # Safety
/// Those entries exist; the CPU has AVX2 and F16C.
#[inline(always)]
pub(super) unsafe fn widen<S: LaneScales, const MIN: bool>(
    sc: S,
    at: usize,
    d: &mut [F8],
    m: &mut [F8],
) {
    // SAFETY: per the contract; `F8` is 32-byte aligned.
    unsafe {
        for (u, d) in d.iter_mut().enumerate() {
            _mm256_store_ps(d.0.as_mut_ptr(), sc.d(at + u));
        }
        if MIN {
            for (u, m) in m.iter_mut().enumerate() {
                _mm256_store_ps(m.0.as_mut_ptr(), sc.m(at + u));
            }
        }
    }
}

/// Stores `f` (token `t + i` in `f[i]`, one lane per row of the block whose first row is
/// `first`) into the token-major `out` (`n_rows` results per token, rows relative to
/// `r0`): only the rows `rows` are written, a whole block of eight with one store per token.
///
/// # Safety
/// AVX; `out` holds the tokens' rows.
#[inline(always)]
unsafe fn put_tokens<const TT: usize>(
    f: &[__m256; TT],
    first: usize,
    r0: usize,
    rows: std::ops::Range<usize>,
    n_rows: usize,
    t: usize,
    out: &mut [f32],
) {
    // SAFETY (whole body): indices are checked by the slices; AVX per the caller.
    unsafe {
        for (i, &v) in f.iter().enumerate() {
            let dst = &mut out[(t + i) * n_rows..][rows.clone()];
            if dst.len() == 8 {
                _mm256_storeu_ps(dst.as_mut_ptr(), v);
                continue;
            }
            let mut x = [0.0f32; 8];
            _mm256_storeu_ps(x.as_mut_ptr(), v);
            let lane0 = rows.start + r0 - first;
            dst.copy_from_slice(&x[lane0..lane0 + dst.len()]);
        }
    }
}

thread_local! {
    /// A thread's unpacked copy of the narrow weight rows it works on, and of their
    /// scales and offsets.
    static SCRATCH: std::cell::Cell<(Vec<Reg>, Vec<F8>, Vec<F8>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Which int8 dot product the CPU offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    Avx2,
    /// AVX-512 F, BW, VL and VNNI besides AVX2.
    Vnni,
}

impl Isa {
    /// The best kernel set this CPU runs, or `None` without AVX2/FMA/F16C.
    pub(crate) fn detect() -> Option<Isa> {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        match (avx2, vnni) {
            (false, _) => None,
            (true, false) => Some(Isa::Avx2),
            (true, true) => Some(Isa::Vnni),
        }
    }
}

macro_rules! packed_entry {
    ($name:ident, $dot:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<
            S: Stored,
            const U: usize,
            const BITS: u32,
            const MIN: bool,
            const WIDE: bool,
            const NL: bool,
        >(
            job: &Job<'_>,
            out: &mut [f32],
        ) {
            // SAFETY: forwarded from the caller; this function enables the features.
            unsafe { rows_packed::<$dot, S, U, BITS, MIN, WIDE, NL>(job, out) }
        }
    };
}
packed_entry!(packed_avx2, Avx2Dot, "avx2,fma,f16c");
packed_entry!(packed_vnni, VnniDot, "avx2,fma,f16c,avx512vnni,avx512vl");

/// How many blocks of eight rows ahead of its work a kernel prefetches the weights. The
/// hardware prefetchers alone left single-token decode of a 1 GB model at 33-35 tokens/s
/// here; two blocks ahead (a few KiB, well inside L1 and L2) gave 38-52 on the same runs.
/// A prefetch past the matrix's end is harmless: prefetches never fault.
const PREFETCH_BLOCKS: usize = 2;

/// Tokens up to which a matmul reads the stored weights directly (unpacking them in
/// registers for each group of tokens) rather than unpacking a pair of row blocks into
/// memory for the 512-bit kernel first. Measured on the 1.5B model: a forward step over 2
/// tokens took 31 ms direct and 35 ms unpacked, over 4 tokens 36 and 34, over 8 66 and 46.
pub(crate) const DIRECT_TOKENS: usize = 3;

/// [`super::Weights::dot_rows`] for packed weights on x86-64.
///
/// # Safety
/// `isa` came from [`Isa::detect`] on this CPU; the rest as for `rows_packed`.
pub(crate) unsafe fn dot_packed(isa: Isa, job: &Job<'_>, out: &mut [f32]) {
    let l = job.p.layout;
    macro_rules! go {
        ($s:ty, $u:literal, $bits:literal, $min:literal, $wide:literal, $nl:literal) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                match isa {
                    Isa::Avx2 => packed_avx2::<$s, $u, $bits, $min, $wide, $nl>(job, out),
                    Isa::Vnni if job.n_tok > DIRECT_TOKENS => {
                        super::avx512::rows_tiled::<$s, $u, $bits, $min, $nl>(job, out)
                    }
                    Isa::Vnni => packed_vnni::<$s, $u, $bits, $min, $wide, $nl>(job, out),
                }
            }
        };
    }
    type H = Halves;
    type I32 = Ints<32>;
    type I16 = Ints<16>;
    match (l.unit, l.bits, l.has_min, l.bias == 128, l.nl, l.int_scales) {
        (32, 4, false, false, false, false) => go!(H, 32, 4, false, false, false),
        (32, 4, true, false, false, false) => go!(H, 32, 4, true, false, false),
        (32, 4, true, false, false, true) => go!(I32, 32, 4, true, false, false),
        (32, 4, false, true, true, false) => go!(H, 32, 4, false, true, true),
        (32, 4, false, true, true, true) => go!(I32, 32, 4, false, true, true),
        (32, 5, false, false, false, false) => go!(H, 32, 5, false, false, false),
        (32, 5, true, false, false, false) => go!(H, 32, 5, true, false, false),
        (32, 5, true, false, false, true) => go!(I32, 32, 5, true, false, false),
        (32, 8, false, true, false, false) => go!(H, 32, 8, false, true, false),
        (16, 4, false, false, false, true) => go!(I16, 16, 4, false, false, false),
        (16, 4, true, false, false, true) => go!(I16, 16, 4, true, false, false),
        (16, 6, false, false, false, true) => go!(I16, 16, 6, false, false, false),
        other => unreachable!("no packed layout {other:?}"),
    }
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

#[target_feature(enable = "avx2,fma")]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    super::kernel::dot_f32(a, b)
}
