//! The AVX-512 kernel for several tokens at once (prompts, batched decoding), on CPUs with
//! AVX-512 VNNI.
//!
//! The packed layout is the 256-bit one (`packed.rs`): eight rows per register. Here two
//! blocks of eight rows are unpacked side by side into a thread's scratch, so that one
//! 512-bit `vpdpbusd` serves sixteen rows, and each token's sum runs as two integer chains
//! (even and odd registers of a unit): eight tokens then keep sixteen independent
//! `vpdpbusd` in flight, which is what the CPU needs to issue them back to back (measured
//! here: four per cycle, latency four; one chain per token left it at half that).
//!
//! The float part of every (row, token) is the 256-bit kernels' sequence to the bit (per
//! unit: convert, row scale × token scale, one FMA, one more for offsets), and integer
//! sums are exact however they are chained, so results are bit-identical to the AVX2 and
//! portable kernels' (batch invariance; `quant::tests` checks it).

use std::arch::x86_64::*;
use std::cell::Cell;

use super::QK8;
use super::avx2::{Stored, Tok, weights};
use super::packed::Job;

/// Sixteen rows' weights for one register of a unit: two 256-bit packed registers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Reg16([u8; 64]);

/// Sixteen rows' scales or offsets for one unit.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct F16x([f32; 16]);

/// A thread's unpacked pair of row blocks: weights, scales, offsets.
type Pair = (Vec<Reg16>, Vec<F16x>, Vec<F16x>);

thread_local! {
    static SCRATCH: Cell<Pair> = const { Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// `out[t * n_rows + r] = dot(weight row r0 + r, token t)` for the job's rows, for a layout
/// of `U`, `BITS`, `MIN`, `NL` (checked here).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_tiled<
    S: Stored,
    const U: usize,
    const BITS: u32,
    const MIN: bool,
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
    let l = p.layout;
    let units = p.units;
    let (stored, regs) = (l.stored_regs(), U / 4);
    let (nb, ni) = (units * U / QK8, l.init_per_token(units * U));
    assert!(l.unit == U && l.bits == BITS && l.has_min == MIN && l.nl == NL);
    assert_eq!(ni, if MIN && U == QK8 { 0 } else { units });
    let (b0, b1) = (r0 / 8, (r0 + n_rows).div_ceil(8));
    assert!(p.q.len() >= b1 * units * stored && p.scales_cover(b1 * units));
    let sc = S::of(p);
    assert!(blocks.len() >= n_tok * nb && init.len() >= n_tok * ni && out.len() >= n_rows * n_tok);
    let tok = |t: usize| Tok {
        blocks: blocks[t * nb..].as_ptr(),
        init: init.as_ptr().wrapping_add(t * ni),
    };
    let (mut w, mut d, mut m) = SCRATCH.take();
    w.resize(units * regs, Reg16([0; 64]));
    d.resize(units, F16x([0.0; 16]));
    m.resize(if MIN { units } else { 0 }, F16x([0.0; 16]));
    for b in (b0..b1).step_by(2) {
        // Unpack blocks b and b + 1 (zeros where b is the last one: lanes never stored).
        for half in 0..2 {
            let at0 = (b + half) * units;
            for u in 0..units {
                let lanes = 8 * half..8 * half + 8;
                if b + half == b1 {
                    for k in 0..regs {
                        w[u * regs + k].0[32 * half..32 * half + 32].fill(0);
                    }
                    d[u].0[lanes.clone()].fill(0.0);
                    if MIN {
                        m[u].0[lanes].fill(0.0);
                    }
                    continue;
                }
                // SAFETY: block b + half < b1 is inside `p` (asserted above); AVX2.
                unsafe {
                    let q = p.q.as_ptr().add((at0 + u) * stored);
                    for k in 0..regs {
                        let wk = weights::<U, BITS, NL>(q, k);
                        let dst = w[u * regs + k].0[32 * half..].as_mut_ptr();
                        _mm256_store_si256(dst as *mut __m256i, wk);
                    }
                }
                // SAFETY: entry at0 + u is inside `p` (asserted above); AVX2, F16C;
                // the scratch's unit `u` holds sixteen floats.
                unsafe {
                    let dst = d[u].0[8 * half..].as_mut_ptr();
                    _mm256_storeu_ps(dst, sc.d(at0 + u));
                    if MIN {
                        let dst = m[u].0[8 * half..].as_mut_ptr();
                        _mm256_storeu_ps(dst, sc.m(at0 + u));
                    }
                }
            }
        }
        let rows = (b * 8).max(r0) - r0..(b * 8 + 16).min(r0 + n_rows) - r0;
        let first = b * 8;
        // While this pair computes, the next one's weights stream in: its first pass over
        // the units prefetches them, a share per unit (otherwise reading a pair and
        // computing it take turns, and a few tokens pay for both).
        let next = (b + 2).min(b1);
        let ahead = (
            next * units * stored,
            (b + 4).min(b1).max(next) * units * stored,
        );
        let mut prefetch = Some(Prefetch {
            // SAFETY: `ahead` lies inside `p.q` (blocks below b1).
            from: unsafe { p.q.as_ptr().add(ahead.0) as *const u8 },
            per_unit: ((ahead.1 - ahead.0) * 32).div_ceil(units.max(1)),
        });
        let mut t = 0;
        macro_rules! run {
            ($tt:literal) => {
                while n_tok - t >= $tt {
                    let toks: [Tok; $tt] = std::array::from_fn(|i| tok(t + i));
                    // SAFETY: the scratch holds `units` units; tokens below n_tok are
                    // inside the activations (asserted above); features enabled here;
                    // prefetches stay inside `p.q`.
                    let f = unsafe {
                        pair_tokens::<U, MIN, $tt>(
                            w.as_ptr(),
                            d.as_ptr(),
                            m.as_ptr(),
                            units,
                            &toks,
                            prefetch.take(),
                        )
                    };
                    put(&f, first, r0, rows.clone(), n_rows, t, out);
                    t += $tt;
                }
            };
        }
        run!(8);
        run!(4);
        run!(1);
    }
    SCRATCH.set((w, d, m));
}

/// Sixteen rows (an unpacked pair of blocks) against `TT` tokens: each token's sixteen
/// results in one vector.
///
/// # Safety
/// `w`, `d` (and `m` with `MIN`) cover `units` units; the tokens' pointers cover theirs;
/// the CPU has AVX-512 F and VNNI.
#[inline(always)]
unsafe fn pair_tokens<const U: usize, const MIN: bool, const TT: usize>(
    w: *const Reg16,
    d: *const F16x,
    m: *const F16x,
    units: usize,
    toks: &[Tok; TT],
    prefetch: Option<Prefetch>,
) -> [__m512; TT] {
    // SAFETY (whole body): unit indices stay below `units` (the caller's contract);
    // prefetches only hint, and stay inside the range the caller gave.
    unsafe {
        let mut f = [_mm512_setzero_ps(); TT];
        for u in 0..units {
            if let Some(pf) = prefetch {
                let start = u * pf.per_unit;
                for line in (start..start + pf.per_unit).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(pf.from.wrapping_add(line) as *const i8);
                }
            }
            let start = u * U;
            let a: [&super::BlockQ8; TT] =
                std::array::from_fn(|t| &*toks[t].blocks.add(start / QK8));
            let qs: [*const i8; TT] = std::array::from_fn(|t| a[t].qs.as_ptr().add(start % QK8));
            // Biased formats (those without offsets) start from -bias · Σa.
            let mut even: [__m512i; TT] = std::array::from_fn(|t| {
                if MIN {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(*toks[t].init.add(u))
                }
            });
            let mut odd = [_mm512_setzero_si512(); TT];
            let wu = w.add(u * (U / 4));
            for k in 0..U / 4 {
                let wk = _mm512_load_si512(wu.add(k) as *const __m512i);
                for t in 0..TT {
                    let x = _mm512_set1_epi32((qs[t].add(4 * k) as *const i32).read_unaligned());
                    if k % 2 == 1 {
                        odd[t] = _mm512_dpbusd_epi32(odd[t], wk, x);
                    } else {
                        even[t] = _mm512_dpbusd_epi32(even[t], wk, x);
                    }
                }
            }
            let dl = _mm512_load_ps((*d.add(u)).0.as_ptr());
            for t in 0..TT {
                let acc = _mm512_add_epi32(even[t], odd[t]);
                let s = _mm512_mul_ps(dl, _mm512_set1_ps(a[t].d));
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, f[t]);
                if MIN {
                    // Offsets per 16 take the unit's own activation sum, per 32 the block's.
                    let sum = if U < QK8 {
                        a[t].d * *toks[t].init.add(u) as f32
                    } else {
                        a[t].s
                    };
                    let ml = _mm512_load_ps((*m.add(u)).0.as_ptr());
                    f[t] = _mm512_fmadd_ps(ml, _mm512_set1_ps(sum), f[t]);
                }
            }
        }
        f
    }
}

/// Bytes to prefetch while a pair computes: `per_unit` of them from `from` for each unit.
#[derive(Clone, Copy)]
struct Prefetch {
    from: *const u8,
    per_unit: usize,
}

/// Stores `f` (token `t + i` in `f[i]`, lane `j` the row `first + j`) into the
/// token-major `out` (`n_rows` per token, rows relative to `r0`), only the rows `rows`.
#[inline(always)]
fn put<const TT: usize>(
    f: &[__m512; TT],
    first: usize,
    r0: usize,
    rows: std::ops::Range<usize>,
    n_rows: usize,
    t: usize,
    out: &mut [f32],
) {
    for (i, &v) in f.iter().enumerate() {
        let dst = &mut out[(t + i) * n_rows..][rows.clone()];
        // SAFETY: `dst` is a checked slice of as many floats as the store writes;
        // `rows_tiled` enables AVX-512 F.
        unsafe {
            if dst.len() == 16 {
                _mm512_storeu_ps(dst.as_mut_ptr(), v);
                continue;
            }
            let mut x = [0.0f32; 16];
            _mm512_storeu_ps(x.as_mut_ptr(), v);
            let lane0 = rows.start + r0 - first;
            dst.copy_from_slice(&x[lane0..lane0 + dst.len()]);
        }
    }
}
