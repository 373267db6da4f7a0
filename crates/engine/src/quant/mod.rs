//! Quantized block formats and the kernels over them.
//!
//! Layout:
//! - `blocks.rs` decodes each ggml block format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
//!   Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) into one normalized form: small integers, a scale
//!   and an offset per 16;
//! - `packed.rs` repacks a matrix, once at load, from that form into lanes (eight units of
//!   rows side by side, see there) as a [`Weights`]; activations are quantized to Q8 per
//!   token ([`BlockQ8`], like llama.cpp's Q8_0/Q8_1), so every dot product is an integer
//!   one with float scales per unit of 32 (16) weights;
//! - `kernel.rs` holds the portable kernels and `avx2.rs` the x86 ones (AVX2+FMA, with
//!   AVX-512 VNNI where present), `avx512.rs` the 512-bit kernel for several tokens at
//!   once on AVX-512 VNNI CPUs.
//!
//! Which of them runs is decided in one place: `simd()`, detected once, names the vector
//! kernel set this CPU has, and every kernel entry point of the engine runs it when there
//! is one, the portable kernel otherwise: here [`Weights::dot_rows`], [`quantize_row_q8`]
//! and [`dot_f32`], and the model's attention and softmax exponential
//! (`model/attention`), which build on this module.
//!
//! F32/F16/BF16 matrices are kept as f32 and take float activations.

mod blocks;
mod kernel;
mod packed;

pub use packed::streamed;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::error::EngineError;
use crate::gguf::GgmlType;
use blocks::{Decoder, Group};
use packed::{Layout, Packed};

use half::f16;

/// Elements per activation block.
pub const QK8: usize = 32;

/// One block of 32 quantized activations. `s` caches `d * sum(qs)` so that formats with an
/// offset (Q4_1, Q4_K) apply it with one multiply per block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK8],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        BlockQ8 {
            d: 0.0,
            s: 0.0,
            qs: [0; QK8],
        }
    }
}

/// Tokens per tile of the kernels: a pass over a weight row (unpacked once into a
/// thread's scratch) serves this many tokens.
pub(crate) const TOKEN_TILE: usize = 64;

/// Whether tokenfab can compute with weights of this type; the loader refuses the others
/// by name so users learn which model files to pick.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::BF16
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::IQ4NL
            | GgmlType::IQ4XS
    )
}

/// The names used in error messages listing what is supported.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";

/// Whether matmuls with this weight type use Q8 activations (true) or float activations.
fn uses_q8_activations(ty: GgmlType) -> bool {
    is_supported(ty) && !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Bytes of one row of `n` weights, or an error when `n` does not fill whole blocks (a
/// K-quant row must be a multiple of 256).
pub fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, EngineError> {
    let (block, bytes) = ty
        .block_layout()
        .ok_or_else(|| EngineError::BadModel(format!("unknown tensor type {ty:?}")))?;
    if !n.is_multiple_of(block) || !n.is_multiple_of(QK8) && uses_q8_activations(ty) {
        return Err(EngineError::BadModel(format!(
            "a row of {n} weights does not fill whole {ty:?} blocks of {block}"
        )));
    }
    Ok(n / block * bytes)
}

/// Quantizes one activation row (length a multiple of 32) into `out` (length n/32).
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK8);
    #[cfg(target_arch = "x86_64")]
    if simd().is_some() {
        // SAFETY: avx2 and fma were detected at runtime.
        unsafe { avx2::quantize_row_q8(x, out) };
        return;
    }
    quantize_row_q8_scalar(x, out)
}

/// The portable [`quantize_row_q8`], and the reference for the vector one.
fn quantize_row_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, b) in x.chunks_exact(QK8).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

fn f16_row_at(data: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([data[2 * i], data[2 * i + 1]]).to_f32()
}

/// bf16 is the high half of an f32 (ggml's `GGML_BF16_TO_FP32`).
fn bf16_row_at(data: &[u8], i: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([data[2 * i], data[2 * i + 1]]) as u32) << 16)
}

fn f32_row_at(data: &[u8], i: usize) -> f32 {
    f32::from_le_bytes(data[4 * i..4 * i + 4].try_into().unwrap())
}

fn dequantize_with<D: Decoder>(data: &[u8], out: &mut [f32]) {
    let mut g = Group::default();
    for gi in 0..out.len().div_ceil(256) {
        D::decode_group(data, gi, &mut g);
        let base = gi * 256;
        for i in 0..g.n_sub * 32 {
            out[base + i] = g.q[i] as f32 * g.sc16[i / 16] + g.min16[i / 16];
        }
    }
}

/// Scalar reference dequantization of one row (`out.len()` weights from `data`). Used for
/// embedding lookups and as the oracle that the kernels are tested against.
pub fn dequantize_row(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f32_row_at(data, i)),
        GgmlType::F16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f16_row_at(data, i)),
        GgmlType::BF16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = bf16_row_at(data, i)),
        GgmlType::Q4_0 => dequantize_with::<blocks::Q4_0>(data, out),
        GgmlType::Q4_1 => dequantize_with::<blocks::Q4_1>(data, out),
        GgmlType::Q5_0 => dequantize_with::<blocks::Q5_0>(data, out),
        GgmlType::Q5_1 => dequantize_with::<blocks::Q5_1>(data, out),
        GgmlType::Q8_0 => dequantize_with::<blocks::Q8_0>(data, out),
        GgmlType::Q2K => dequantize_with::<blocks::Q2K>(data, out),
        GgmlType::Q3K => dequantize_with::<blocks::Q3K>(data, out),
        GgmlType::Q4K => dequantize_with::<blocks::Q4K>(data, out),
        GgmlType::Q5K => dequantize_with::<blocks::Q5K>(data, out),
        GgmlType::Q6K => dequantize_with::<blocks::Q6K>(data, out),
        GgmlType::IQ4NL => dequantize_with::<blocks::IQ4NL>(data, out),
        GgmlType::IQ4XS => dequantize_with::<blocks::IQ4XS>(data, out),
        other => panic!("dequantize_row: unsupported type {other:?} (the loader refuses it)"),
    }
}

/// Bytes per row of a supported type, or why `data` is not `rows` whole rows of `cols`.
fn check_size(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Result<usize, EngineError> {
    if !is_supported(ty) {
        return Err(EngineError::BadModel(format!(
            "{ty:?} weights are not supported (supported: {SUPPORTED_TYPES})"
        )));
    }
    let rb = row_bytes(ty, cols)?;
    if data.len() != rb * rows {
        return Err(EngineError::BadModel(format!(
            "{rows} rows of {cols} {ty:?} weights take {} bytes, not {}",
            rb * rows,
            data.len()
        )));
    }
    Ok(rb)
}

/// A weight matrix of `rows` rows of `cols` weights, in the form the kernels read:
/// quantized formats repacked into lanes (`packed.rs`), float ones as f32.
pub struct Weights {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    repr: Repr,
}

enum Repr {
    Float(Vec<f32>),
    Packed(Packed),
}

impl Weights {
    /// Takes `rows` ggml rows of `cols` weights of type `ty`, exactly `data`.
    pub fn from_ggml(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Weights, EngineError> {
        check_size(ty, rows, cols, data)?;
        let repr = if Layout::of(ty).is_some() {
            Repr::Packed(Packed::from_ggml(ty, rows, cols, data))
        } else {
            let mut f = vec![0.0f32; rows * cols];
            dequantize_row(ty, data, &mut f);
            Repr::Float(f)
        };
        Ok(Weights {
            ty,
            rows,
            cols,
            repr,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::Float(f) => std::mem::size_of_val(&**f),
            Repr::Packed(p) => p.bytes(),
        }
    }

    /// Row `r` as floats (embedding lookups), the values ggml's dequantization gives.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.repr {
            Repr::Float(f) => out.copy_from_slice(&f[r * self.cols..(r + 1) * self.cols]),
            Repr::Packed(p) => p.dequantize_row(r, out),
        }
    }

    /// Whether the matrix takes Q8 activations ([`Weights::quantize_token`]) rather than
    /// floats.
    pub fn takes_q8(&self) -> bool {
        matches!(self.repr, Repr::Packed(_))
    }

    /// Integer-sum starts per token that [`Weights::quantize_token`] writes beside the
    /// `cols / 32` Q8 blocks.
    pub fn init_per_token(&self) -> usize {
        match &self.repr {
            Repr::Float(_) => 0,
            Repr::Packed(p) => p.layout.init_per_token(self.cols),
        }
    }

    /// Quantizes one token's activations `x` (`cols` floats) for this matrix into `blocks`
    /// (`cols / 32`) and `init` ([`Weights::init_per_token`]).
    pub fn quantize_token(&self, x: &[f32], blocks: &mut [BlockQ8], init: &mut [i32]) {
        if let Repr::Packed(p) = &self.repr {
            packed::quantize_token(p.layout, x, blocks, init);
        }
    }

    /// [`Weights::quantize_token`]'s `init` from blocks already quantized (the Q8 blocks
    /// of a token are the same for every quantized matrix of its width; only the
    /// per-unit integers depend on the format).
    pub fn token_init(&self, blocks: &[BlockQ8], init: &mut [i32]) {
        if let Repr::Packed(p) = &self.repr {
            packed::token_init(p.layout, blocks, init);
        }
    }

    /// `out[t * n_rows + r] = dot(row r0 + r, token t)` for the `n_rows = out.len() / n_tok`
    /// rows from `r0` (token-major, what the kernels' registers hold: eight rows of one
    /// token). Callers split the rows of a matrix over threads; the result does not
    /// depend on how they split.
    pub fn dot_rows(&self, r0: usize, acts: Acts<'_>, n_tok: usize, out: &mut [f32]) {
        self.dot_rows_with(simd(), r0, acts, n_tok, out)
    }

    fn dot_rows_with(&self, simd: Simd, r0: usize, acts: Acts<'_>, n_tok: usize, out: &mut [f32]) {
        let n_rows = out.len() / n_tok;
        assert!(
            r0 + n_rows <= self.rows,
            "rows {r0}..{} of {}",
            r0 + n_rows,
            self.rows
        );
        match (&self.repr, acts) {
            (Repr::Packed(p), Acts::Q8 { blocks, init }) => {
                assert_eq!(blocks.len(), n_tok * self.cols / QK8, "activation blocks");
                assert_eq!(init.len(), n_tok * p.layout.init_per_token(self.cols));
                let job = packed::Job {
                    p,
                    r0,
                    n_rows,
                    blocks,
                    init,
                    n_tok,
                };
                #[cfg(target_arch = "x86_64")]
                if let Some(isa) = simd {
                    // SAFETY: `isa` was detected on this CPU; the kernel checks the shapes.
                    unsafe { avx2::dot_packed(isa, &job, out) };
                    return;
                }
                let _ = simd;
                kernel::rows_packed(&job, out)
            }
            (Repr::Float(w), Acts::F32(x)) => {
                let c = self.cols;
                for r in 0..n_rows {
                    let row = &w[(r0 + r) * c..(r0 + r + 1) * c];
                    for t in 0..n_tok {
                        out[t * n_rows + r] = dot_f32(row, &x[t * c..(t + 1) * c]);
                    }
                }
            }
            _ => panic!("{:?} weights got the other kind of activations", self.ty),
        }
    }
}

/// A matrix kept in its ggml form and only ever read one row at a time: a token embedding
/// table beside its own output head. Packing it would cost load time and buy nothing.
pub struct Rows {
    ty: GgmlType,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Rows {
    /// Takes `rows` ggml rows of `cols` weights of type `ty`, exactly `data`.
    pub fn from_ggml(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Rows, EngineError> {
        let row_bytes = check_size(ty, rows, cols, data)?;
        Ok(Rows {
            ty,
            row_bytes,
            data: data.to_vec(),
        })
    }

    /// Row `r` as floats.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(
            self.ty,
            &self.data[r * self.row_bytes..(r + 1) * self.row_bytes],
            out,
        )
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Activations for [`Weights::dot_rows`], in the form the matrix takes.
#[derive(Clone, Copy)]
pub enum Acts<'a> {
    /// `n_tok` tokens of `cols / 32` blocks and [`Weights::init_per_token`] starts each,
    /// for quantized weights.
    Q8 {
        blocks: &'a [BlockQ8],
        init: &'a [i32],
    },
    /// `n_tok` rows of `cols` floats, for F32/F16 weights.
    F32(&'a [f32]),
}

/// A vector kernel set: on x86-64 AVX2, or AVX2 with AVX-512 VNNI; none elsewhere.
#[cfg(target_arch = "x86_64")]
pub(crate) type Simd = Option<Isa>;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Isa;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) type Simd = Option<std::convert::Infallible>;

/// The vector kernel set this CPU runs, or `None` for the portable kernels: the one place
/// where the engine reads the CPU's features. Detected once, since it is asked on every
/// matmul; every kernel entry point asks it (see the module doc).
pub(crate) fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *ISA.get_or_init(avx2::Isa::detect)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Float dot product (attention scores, float weights).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd().is_some() {
        // SAFETY: avx2 and fma were detected at runtime.
        return unsafe { avx2::dot_f32(a, b) };
    }
    kernel::dot_f32(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;

    /// Random blocks with sane f16 scales (random bytes would give NaN/inf scales).
    fn random_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
        let (block, bytes) = ty.block_layout().unwrap();
        let mut out = Vec::new();
        for _ in 0..n / block {
            let mut b: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
            let put = |b: &mut Vec<u8>, off: usize, v: f32| {
                b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes())
            };
            match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => {
                    put(&mut b, 0, rng.next_signed_f32() * 0.1)
                }
                GgmlType::Q4_1 | GgmlType::Q5_1 => {
                    put(&mut b, 0, rng.next_signed_f32() * 0.1);
                    put(&mut b, 2, rng.next_signed_f32() * 0.5);
                }
                GgmlType::Q4K | GgmlType::Q5K => {
                    put(&mut b, 0, rng.next_signed_f32() * 0.01);
                    put(&mut b, 2, rng.next_signed_f32() * 0.01);
                }
                GgmlType::Q2K => {
                    put(&mut b, 80, rng.next_signed_f32() * 0.01);
                    put(&mut b, 82, rng.next_signed_f32() * 0.01);
                }
                GgmlType::Q3K => put(&mut b, 108, rng.next_signed_f32() * 0.01),
                GgmlType::Q6K => put(&mut b, 208, rng.next_signed_f32() * 0.01),
                GgmlType::IQ4XS => put(&mut b, 0, rng.next_signed_f32() * 0.01),
                GgmlType::F16 => {
                    for i in 0..block {
                        put(&mut b, 2 * i, rng.next_signed_f32())
                    }
                }
                GgmlType::BF16 => {
                    let v = rng.next_signed_f32().to_bits() >> 16;
                    b.copy_from_slice(&(v as u16).to_le_bytes())
                }
                GgmlType::F32 => b.copy_from_slice(&rng.next_signed_f32().to_le_bytes()),
                _ => unreachable!(),
            }
            out.extend_from_slice(&b);
        }
        out
    }

    const TYPES: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ];

    /// Every supported type is in [`TYPES`], so the kernel tests below cover it.
    #[test]
    fn tests_cover_every_supported_type() {
        let n = (0..64)
            .map(GgmlType::from_id)
            .filter(|&t| is_supported(t))
            .count();
        assert_eq!(n, TYPES.len());
        assert!(TYPES.iter().all(|&t| is_supported(t)));
    }

    /// Known values: a Q4_0 block with scale 0.5 and nibbles 0..15 decodes to (n - 8) / 2.
    #[test]
    fn dequantize_q4_0_known_block() {
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[j + 16], (15.0 - j as f32 - 8.0) * 0.5);
        }
    }

    /// Known values for each decoder added after Q4_0, from ggml's formulas worked by hand
    /// (the requantized real-weight test checks them against llama.cpp end to end).
    #[test]
    fn dequantize_known_blocks() {
        let h = |v: f32| f16::from_f32(v).to_le_bytes();
        let dq = |ty: GgmlType, b: &[u8]| {
            let (block, bytes) = ty.block_layout().unwrap();
            assert_eq!(b.len(), bytes, "{ty:?}");
            let mut out = vec![0.0f32; block];
            dequantize_row(ty, b, &mut out);
            out
        };
        // Q5_1: (nibble | fifth bit) · d + m; qh bit j is element j's fifth bit.
        let mut b = [h(0.5), h(1.0)].concat();
        b.extend((1u32 | 1 << 16).to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dq(GgmlType::Q5_1, &b);
        assert_eq!([v[0], v[1], v[16], v[17]], [9.0, 1.5, 16.5, 8.0]);
        // Q2_K: scale byte = min << 4 | scale per 16; 2-bit field j of byte 32n + l.
        let mut b: Vec<u8> = (0..16u8).map(|j| j | 1 << 4).collect();
        b.extend([0xE4u8; 64]);
        b.extend([h(1.0), h(0.5)].concat());
        let v = dq(GgmlType::Q2K, &b);
        assert_eq!([v[0], v[40], v[200]], [-0.5, 1.5, 23.5]);
        // Q3_K: a clear hmask bit subtracts 4; 6-bit scales minus 32, the high bits of
        // scale 0 in bits 0..2 of byte 8.
        let mut b = vec![0xFFu8; 32];
        b[0] = 0xFE;
        b.extend([0xE4u8; 64]);
        b.extend([0x11u8; 8]);
        b.extend([0xA8u8, 0xAA, 0xAA, 0xAA]);
        b.extend(h(0.25));
        let v = dq(GgmlType::Q3K, &b);
        assert_eq!([v[0], v[1], v[32], v[16]], [31.0, 0.0, 0.25, 0.0]);
        // Q5_K: Q4_K's scales and mins, qh bit 2k (2k + 1) the fifth bit of chunk k's low
        // (high) nibbles.
        let mut b = [h(0.5), h(1.0)].concat();
        b.extend([2u8, 2, 2, 2, 1, 1, 1, 1, 0x12, 0x12, 0x12, 0x12]);
        b.extend([0x01u8; 32]);
        b.extend([0x21u8; 128]);
        let v = dq(GgmlType::Q5K, &b);
        assert_eq!([v[0], v[32], v[64], v[255]], [16.0, 1.0, 0.0, 1.0]);
        // IQ4_NL: d · table[nibble].
        let mut b = h(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dq(GgmlType::IQ4NL, &b);
        assert_eq!([v[0], v[16], v[8]], [-254.0, 226.0, 2.0]);
        // IQ4_XS: per 32, a 6-bit scale (4 bits in scales_l, 2 in scales_h) minus 32.
        let mut b = [h(1.0), 0xAAAAu16.to_le_bytes()].concat();
        b.extend([0x21u8; 4]);
        b.extend([0x98u8; 128]);
        let v = dq(GgmlType::IQ4XS, &b);
        assert_eq!([v[0], v[16], v[32], v[48]], [1.0, 13.0, 2.0, 26.0]);
        // BF16: the high half of an f32.
        assert_eq!(dq(GgmlType::BF16, &0x3FC0u16.to_le_bytes()), [1.5]);
    }

    /// Q8_0 round trip: activations quantize to within half a step.
    #[test]
    fn q8_activation_roundtrip() {
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..256).map(|_| rng.next_signed_f32() * 3.0).collect();
        let mut q = vec![BlockQ8::default(); 8];
        quantize_row_q8(&x, &mut q);
        for (i, &v) in x.iter().enumerate() {
            let b = &q[i / 32];
            assert!((b.qs[i % 32] as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-6);
        }
    }

    /// The vector quantizer gives the scalar one's bits, rounding ties away from zero.
    #[test]
    fn q8_quantizers_agree() {
        let mut rng = Rng::new(11);
        let mut x: Vec<f32> = (0..32 * 40).map(|_| rng.next_signed_f32() * 5.0).collect();
        // A block scaled by exactly 1 (amax 127) with ties at every half.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = i as f32 * 0.5 - 8.0;
        }
        x[31] = -127.0;
        x[32..64].fill(0.0);
        let mut a = vec![BlockQ8::default(); 40];
        let mut b = vec![BlockQ8::default(); 40];
        quantize_row_q8(&x, &mut a);
        quantize_row_q8_scalar(&x, &mut b);
        assert_eq!(a, b);
        assert_eq!(a[0].qs[1], -8); // -7.5 rounds away from zero
        assert_eq!(a[0].qs[17], 1); // 0.5 too
    }

    /// Q8 activations: blocks and integer-sum starts.
    type Q8 = (Vec<BlockQ8>, Vec<i32>);

    /// A matrix of random rows and its activations for `n_tok` random tokens.
    fn random_case(
        rng: &mut Rng,
        ty: GgmlType,
        n_in: usize,
        n_rows: usize,
        n_tok: usize,
    ) -> (Vec<u8>, Weights, Vec<f32>, Q8) {
        let raw: Vec<u8> = (0..n_rows)
            .flat_map(|_| random_row(rng, ty, n_in))
            .collect();
        let w = Weights::from_ggml(ty, n_rows, n_in, &raw).unwrap();
        let x: Vec<f32> = (0..n_tok * n_in).map(|_| rng.next_signed_f32()).collect();
        let (nb, ni) = (n_in / QK8, w.init_per_token());
        let mut blocks = vec![BlockQ8::default(); n_tok * nb];
        let mut init = vec![0; n_tok * ni];
        for t in 0..n_tok {
            let xt = &x[t * n_in..(t + 1) * n_in];
            let (b, i) = (
                &mut blocks[t * nb..(t + 1) * nb],
                &mut init[t * ni..(t + 1) * ni],
            );
            w.quantize_token(xt, b, i);
        }
        (raw, w, x, (blocks, init))
    }

    /// Token `t` (of all when `None`) of the activations.
    fn acts_of<'a>(w: &Weights, x: &'a [f32], (b, i): &'a Q8, t: Option<usize>) -> Acts<'a> {
        let (nb, ni, n) = (w.cols / QK8, w.init_per_token(), w.cols);
        let (b, i, x) = match t {
            None => (&b[..], &i[..], x),
            Some(t) => (
                &b[t * nb..(t + 1) * nb],
                &i[t * ni..(t + 1) * ni],
                &x[t * n..(t + 1) * n],
            ),
        };
        if w.takes_q8() {
            Acts::Q8 { blocks: b, init: i }
        } else {
            Acts::F32(x)
        }
    }

    /// Every kernel (portable and, where available, AVX2 and VNNI) agrees with the scalar
    /// reference (dequantize both sides, float dot) on random blocks, for several token
    /// counts, row lengths with a partial last group (Qwen's 896) and row offsets; and a
    /// token alone gives the very bits it gets in a batch.
    #[test]
    fn kernels_match_reference() {
        let mut rng = Rng::new(0x9e3779b97f4a7c15);
        let n_rows = 21;
        for &ty in &TYPES {
            for n_in in [768usize, 896] {
                if row_bytes(ty, n_in).is_err() {
                    continue;
                }
                for &n_tok in &[1usize, 2, 3, 9, 70] {
                    let (raw, w, x, acts) = random_case(&mut rng, ty, n_in, n_rows, n_tok);
                    let rb = row_bytes(ty, n_in).unwrap();
                    let a = acts_of(&w, &x, &acts, None);
                    let mut scalar = vec![0.0f32; n_rows * n_tok];
                    w.dot_rows_with(None, 0, a, n_tok, &mut scalar);
                    let simd = simd_results(&w, a, n_tok, n_rows);
                    let mut wf = vec![0.0f32; n_in];
                    for r in 0..n_rows {
                        dequantize_row(ty, &raw[r * rb..(r + 1) * rb], &mut wf);
                        let wnorm = wf.iter().map(|v| v * v).sum::<f32>().sqrt();
                        for t in 0..n_tok {
                            let xr = &x[t * n_in..(t + 1) * n_in];
                            let reference: f32 = wf.iter().zip(xr).map(|(a, b)| a * b).sum();
                            let got = scalar[t * n_rows + r];
                            // Q8 activations carry ~0.4% relative error per element.
                            let tol = 1e-2 * wnorm * (n_in as f32).sqrt() / 10.0 + 1e-4;
                            assert!(
                                (got - reference).abs() <= tol,
                                "{ty:?} n_tok {n_tok} row {r} tok {t}: {got} vs {reference} (tol {tol})"
                            );
                            let s = simd[t * n_rows + r];
                            assert!(
                                (s - got).abs() <= 1e-4 * (got.abs() + wnorm),
                                "{ty:?}: simd {s} vs scalar {got}"
                            );
                            // Batch invariance inside the kernel: the same token alone, on
                            // this row alone.
                            let one = acts_of(&w, &x, &acts, Some(t));
                            let mut alone = [0.0f32];
                            w.dot_rows(r, one, 1, &mut alone);
                            assert_eq!(alone[0].to_bits(), s.to_bits(), "{ty:?} row {r} tok {t}");
                        }
                    }
                }
            }
        }
    }

    /// The vector kernels' results: the best set this CPU runs (the portable ones where
    /// there is none), after checking that every x86 set gives the very same bits, and
    /// that splitting the rows (as threads do) changes nothing.
    fn simd_results(w: &Weights, acts: Acts<'_>, n_tok: usize, n_rows: usize) -> Vec<f32> {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut best = vec![0.0f32; n_rows * n_tok];
        w.dot_rows(0, acts, n_tok, &mut best);
        #[cfg(target_arch = "x86_64")]
        for isa in [avx2::Isa::Avx2, avx2::Isa::Vnni] {
            if simd().is_some_and(|have| isa == avx2::Isa::Avx2 || have == isa) {
                let mut got = vec![0.0f32; n_rows * n_tok];
                w.dot_rows_with(Some(isa), 0, acts, n_tok, &mut got);
                assert_eq!(bits(&got), bits(&best), "{:?} {isa:?}", w.ty);
            }
        }
        let split = 8.min(n_rows);
        let (mut head, mut tail) = (
            vec![0.0; split * n_tok],
            vec![0.0; (n_rows - split) * n_tok],
        );
        w.dot_rows(0, acts, n_tok, &mut head);
        w.dot_rows(split, acts, n_tok, &mut tail);
        for t in 0..n_tok {
            for r in 0..n_rows {
                let got = if r < split {
                    head[t * split + r]
                } else {
                    tail[t * (n_rows - split) + r - split]
                };
                assert_eq!(got.to_bits(), best[t * n_rows + r].to_bits());
            }
        }
        best
    }

    /// Packed rows read back as exactly what ggml's dequantization gives, for every type.
    #[test]
    fn packed_rows_dequantize_like_ggml() {
        let mut rng = Rng::new(3);
        for &ty in &TYPES {
            let n_in = if row_bytes(ty, 896).is_ok() { 896 } else { 512 };
            let (raw, w, _, _) = random_case(&mut rng, ty, n_in, 3, 1);
            let rb = row_bytes(ty, n_in).unwrap();
            let (mut a, mut b) = (vec![0.0f32; n_in], vec![0.0f32; n_in]);
            for r in 0..3 {
                dequantize_row(ty, &raw[r * rb..(r + 1) * rb], &mut a);
                w.row(r, &mut b);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{ty:?} row {r}");
            }
        }
    }

    /// Packed matrices take about the memory of their ggml form, scales included: a decode
    /// step reads all of it, so every byte more is decode time. (Q2_K and Q3_K keep their
    /// weights as nibbles, and take more.)
    #[test]
    fn packed_matrices_keep_their_ggml_size() {
        let mut rng = Rng::new(5);
        for &ty in &TYPES {
            let Some(l) = packed::Layout::of(ty) else {
                continue;
            };
            let (rows, cols) = (64, 1024);
            let raw: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, ty, cols))
                .collect();
            let w = Weights::from_ggml(ty, rows, cols, &raw).unwrap();
            let ratio = w.bytes() as f64 / raw.len() as f64;
            let most = match ty {
                GgmlType::Q2K => 2.01,
                GgmlType::Q3K => 1.35,
                _ if l.int_scales => 1.06,
                _ => 1.0,
            };
            assert!(ratio <= most, "{ty:?}: packed {ratio:.3}x its ggml size");
        }
    }

    /// A matrix refuses data of the wrong size and types it cannot run, with a message.
    #[test]
    fn weights_check_their_input() {
        let e = Weights::from_ggml(GgmlType::Q4_0, 2, 64, &[0; 35])
            .err()
            .unwrap();
        assert!(e.to_string().contains("take 72 bytes"), "{e}");
        let e = Weights::from_ggml(GgmlType::Q4K, 1, 64, &[0; 36])
            .err()
            .unwrap();
        assert!(e.to_string().contains("whole"), "{e}");
    }
}
