//! Attention over the paged KV cache, and the softmax's exponential.
//!
//! Layout:
//! - this file: [`KvView`] (one head's view of the cache pages), [`attend`] and
//!   [`exp_nonpositive`] (which the sampler's softmax also uses), each running the vector
//!   kernel when `quant::simd()`, the engine's one reading of the CPU's features, names a
//!   vector kernel set;
//! - `kernel.rs` holds the portable attention, the reference the vector ones are tested
//!   against, and `avx2.rs` the x86 kernels (AVX2+FMA): attention for the common head
//!   sizes and the eight-lane exponential and softmax it shares with [`exp_nonpositive`]
//!   and `avx512.rs`, the 512-bit attention for CPUs with the AVX-512 kernel set.

mod kernel;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
use crate::quant::{Isa, simd};

/// One head's view of a paged KV cache from position `first` on: the view's position `j`
/// is the cache's `p = first + j`, whose key row starts at `offset` in row `p % page_rows`
/// (of `stride` floats) of page `p / page_rows`, and likewise for values. Grouped-query
/// heads share cache rows by using different offsets, without copying; a sliding window
/// starts the view at its first position, so the kernels never see what it masks.
pub struct KvView<'a> {
    pub k: &'a [&'a [f32]],
    pub v: &'a [&'a [f32]],
    /// Positions per page; a power of two.
    pub page_rows: usize,
    pub stride: usize,
    pub offset: usize,
    pub first: usize,
}

impl KvView<'_> {
    /// Key row of position `j`, from this head's offset to the end of the cache row.
    #[inline(always)]
    fn k_row(&self, j: usize) -> &[f32] {
        let p = self.first + j;
        let r = (p % self.page_rows) * self.stride + self.offset;
        &self.k[p / self.page_rows][r..]
    }

    #[inline(always)]
    fn v_row(&self, j: usize) -> &[f32] {
        let p = self.first + j;
        let r = (p % self.page_rows) * self.stride + self.offset;
        &self.v[p / self.page_rows][r..]
    }

    /// Start of position `j`'s row in `pages` (the view's `k` or `v`), for the vector
    /// kernels, which read it through the pointer.
    ///
    /// # Safety
    /// [`KvView::check`] passed for some `n_pos > j`: the row's floats up to the head size
    /// are then inside its page (`pages[..]` itself is bounds-checked).
    #[inline(always)]
    #[cfg(target_arch = "x86_64")]
    unsafe fn row_ptr(&self, pages: &[&[f32]], j: usize) -> *const f32 {
        let p = self.first + j;
        let (shift, mask) = (self.page_rows.trailing_zeros(), self.page_rows - 1);
        // SAFETY: inside the page by the caller's contract.
        unsafe {
            pages[p >> shift]
                .as_ptr()
                .add((p & mask) * self.stride + self.offset)
        }
    }

    /// Panics unless `n_pos` positions of heads of `hd` dimensions are all inside the
    /// pages: the vector kernel reads through pointers and relies on it.
    fn check(&self, n_pos: usize, hd: usize) {
        assert!(self.page_rows.is_power_of_two());
        assert!(self.offset + hd <= self.stride);
        assert!(self.first + n_pos <= self.k.len().min(self.v.len()) * self.page_rows);
        let need = self.page_rows * self.stride;
        assert!(
            self.k.iter().chain(self.v.iter()).all(|p| p.len() >= need),
            "a KV page is shorter than {need} floats"
        );
    }
}

/// Causal attention for query heads of `hd` dimensions that share one KV head (`q` holds
/// them one after the other, and so does `out`) over the first `n_pos` positions of the
/// view `kv`, softmax included. Each head's result is the same whether it comes alone or
/// with others; grouping them lets a kernel read each cache row once for all of them.
/// `scores` is working memory, kept by the caller across calls so that attention does
/// not allocate.
pub fn attend(
    q: &[f32],
    hd: usize,
    kv: &KvView<'_>,
    n_pos: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    kv.check(n_pos, hd);
    assert_eq!(q.len(), out.len());
    assert!(hd > 0 && q.len().is_multiple_of(hd));
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: AVX-512 was detected at runtime; `check` bounded every row read.
        Some(Isa::Vnni)
            if unsafe { avx512::attend(q, hd, kv, n_pos, scale, out, scores) }.is_some() =>
        {
            return;
        }
        Some(_) => {
            for (q, out) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
                // SAFETY: avx2 and fma were detected at runtime; `check` bounded every
                // row read.
                unsafe { avx2::attend(q, kv, n_pos, scale, out, scores) };
            }
            return;
        }
        None => {}
    }
    for (q, out) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        kernel::attend(q, kv, n_pos, scale, out, scores)
    }
}

/// `x = exp(x)` for every element, all of them ≤ 0 (a softmax after subtracting the
/// maximum); vectorized where the CPU allows, within a few units in the last place of
/// `f32::exp`. Values below -87.3 give the smallest normal float, not 0.
pub fn exp_nonpositive(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd().is_some() {
        // SAFETY: avx2 and fma were detected at runtime.
        unsafe { avx2::exp_nonpositive(x) };
        return;
    }
    for v in x {
        *v = v.exp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;

    /// Every kernel against a naive softmax, over whole caches and over windows that start
    /// mid-page (`first`, a sliding window's view).
    #[test]
    fn attention_matches_naive_softmax() {
        let mut rng = Rng::new(5);
        let mut buf = Vec::new();
        let cases = [
            (64usize, 0usize, 1usize),
            (64, 0, 8),
            (64, 0, 37),
            (128, 0, 300),
            (48, 0, 9),
            (64, 5, 30),
            (256, 19, 45),
            (48, 3, 9),
            (32, 0, 17),
            (64, 2, 16),
            (128, 7, 33),
        ];
        for (hd, first, n_pos) in cases {
            let (stride, offset, page_rows) = (2 * hd, hd, 16);
            let pages = (first + n_pos).div_ceil(page_rows);
            let k: Vec<f32> = (0..pages * page_rows * stride)
                .map(|_| rng.next_signed_f32() * 2.0)
                .collect();
            let v: Vec<f32> = (0..pages * page_rows * stride)
                .map(|_| rng.next_signed_f32())
                .collect();
            let q: Vec<f32> = (0..hd).map(|_| rng.next_signed_f32()).collect();
            let kp: Vec<&[f32]> = k.chunks(page_rows * stride).collect();
            let vp: Vec<&[f32]> = v.chunks(page_rows * stride).collect();
            let view = KvView {
                k: &kp,
                v: &vp,
                page_rows,
                stride,
                offset,
                first,
            };
            let scale = 1.0 / (hd as f32).sqrt();
            // Pages are consecutive here, so position p is row p of the flat arrays.
            let scores: Vec<f32> = (first..first + n_pos)
                .map(|p| {
                    (0..hd)
                        .map(|i| q[i] * k[p * stride + offset + i])
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let mut out = vec![0.0f32; hd];
            attend(&q, hd, &view, n_pos, scale, &mut out, &mut buf);
            let mut out_scalar = vec![0.0f32; hd];
            kernel::attend(&q, &view, n_pos, scale, &mut out_scalar, &mut buf);
            // The AVX2 kernel too where the best one is another.
            #[cfg(target_arch = "x86_64")]
            let out_avx2 = simd().map(|_| {
                let mut o = vec![0.0f32; hd];
                // SAFETY: AVX2/FMA detected; `attend` above checked the view.
                unsafe { avx2::attend(&q, &view, n_pos, scale, &mut o, &mut buf) };
                o
            });
            #[cfg(not(target_arch = "x86_64"))]
            let out_avx2: Option<Vec<f32>> = None;
            for i in 0..hd {
                let want: f32 = (0..n_pos)
                    .map(|j| e[j] / z * v[(first + j) * stride + offset + i])
                    .sum();
                assert!(
                    (out[i] - want).abs() < 1e-5,
                    "hd {hd} first {first} n {n_pos}: {} vs {want}",
                    out[i]
                );
                assert!((out_scalar[i] - want).abs() < 1e-5);
                assert!(out_avx2.as_ref().is_none_or(|o| (o[i] - want).abs() < 1e-5));
            }
        }
    }

    /// Heads attended together give each head the very bits it gets alone (the kernels
    /// only share reads of the cache rows), over block and group boundaries.
    #[test]
    fn grouped_heads_match_heads_alone() {
        let mut rng = Rng::new(17);
        let (mut buf, mut buf1) = (Vec::new(), Vec::new());
        for (hd, heads, first, n_pos) in [
            (64usize, 3usize, 0usize, 1usize),
            (64, 3, 2, 150),
            (128, 7, 0, 33),
            (256, 4, 5, 70),
            (32, 2, 0, 17),
            (48, 2, 1, 9),
        ] {
            let (stride, offset, page_rows) = (2 * hd, hd, 16);
            let pages = (first + n_pos).div_ceil(page_rows);
            let kv: Vec<f32> = (0..2 * pages * page_rows * stride)
                .map(|_| rng.next_signed_f32() * 3.0)
                .collect();
            let (k, v) = kv.split_at(pages * page_rows * stride);
            let kp: Vec<&[f32]> = k.chunks(page_rows * stride).collect();
            let vp: Vec<&[f32]> = v.chunks(page_rows * stride).collect();
            let view = KvView {
                k: &kp,
                v: &vp,
                page_rows,
                stride,
                offset,
                first,
            };
            let q: Vec<f32> = (0..heads * hd).map(|_| rng.next_signed_f32()).collect();
            let mut together = vec![0.0f32; heads * hd];
            attend(&q, hd, &view, n_pos, 0.1, &mut together, &mut buf);
            for h in 0..heads {
                let mut alone = vec![0.0f32; hd];
                attend(
                    &q[h * hd..(h + 1) * hd],
                    hd,
                    &view,
                    n_pos,
                    0.1,
                    &mut alone,
                    &mut buf1,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&alone),
                    bits(&together[h * hd..(h + 1) * hd]),
                    "hd {hd} head {h}"
                );
            }
        }
    }

    /// The vector exponential against the library one over the softmax's range (down to
    /// -86.9; below -87.3 it returns the smallest normal float, documented).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_accurate() {
        if simd().is_none() {
            return;
        }
        let xs: Vec<f32> = (0..19304).map(|i| -(i as f32) * 0.0045).collect();
        for chunk in xs.chunks_exact(8) {
            let got = avx2::exp_neg8(chunk.try_into().unwrap());
            for (g, x) in got.iter().zip(chunk) {
                let want = x.exp();
                assert!(
                    (g - want).abs() <= 4.0 * f32::EPSILON * want,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
        // The slice form, remainder included, agrees with the eight-at-a-time one.
        let mut ys = xs[..1003].to_vec();
        exp_nonpositive(&mut ys);
        for (y, x) in ys.iter().zip(&xs) {
            assert!((y - x.exp()).abs() <= 4.0 * f32::EPSILON * x.exp(), "{x}");
        }
    }
}
