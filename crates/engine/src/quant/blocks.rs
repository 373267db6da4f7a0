//! Scalar decoders for each ggml block format into one normalized form.
//!
//! Every supported integer format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
//! Q6_K, IQ4_NL, IQ4_XS) is expressed as `value[i] = q[i] * sc16[i / 16] + min16[i / 16]`
//! over a "group" of up to 256 weights. One kernel can then serve all formats: it
//! multiplies the small integers `q` with Q8 activations and applies the per-16 scales and
//! offsets in float (most formats repeat them over 32). The IQ4 formats' `q` are the values
//! of ggml's non-linear table ([`IQ4_VALUES`]), which the packer stores as 4-bit indices.
//! Each decoder gives the very f32 values of ggml's `dequantize_row_*`: the same products
//! of the same factors, an offset added as `+ (-m)` where ggml writes `- m`. Decoders are
//! `#[inline(always)]` so that the AVX2-compiled kernel instantiates them with AVX2 too.

use half::f16;

/// Up to 256 decoded weights: 8 sub-blocks of 32, with one scale and one offset per 16.
#[derive(Clone)]
pub(crate) struct Group {
    pub q: [i8; 256],
    pub sc16: [f32; 16],
    pub min16: [f32; 16],
    /// Number of valid 32-element sub-blocks (8, except at the end of a row of a 32-block format).
    pub n_sub: usize,
    /// The 256-weight formats' scales and offsets as ggml keeps them: small integers
    /// times one float per group (`d`, and `dmin` with the offsets' sign), from which
    /// `sc16 = d · isc16` and `min16 = dmin · imin16` are computed (see [`Group::put16`]),
    /// so that the packer can store the integers and the kernels recompute the very same
    /// floats.
    pub isc16: [i8; 16],
    pub imin16: [i8; 16],
    pub d: f32,
    pub dmin: f32,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            q: [0; 256],
            sc16: [0.0; 16],
            min16: [0.0; 16],
            n_sub: 0,
            isc16: [0; 16],
            imin16: [0; 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

impl Group {
    /// Scale `d` and offset `m` for the 32 weights of sub-block `sub`.
    #[inline(always)]
    fn put32(&mut self, sub: usize, d: f32, m: f32) {
        self.sc16[2 * sub..2 * sub + 2].fill(d);
        self.min16[2 * sub..2 * sub + 2].fill(m);
    }

    /// Integer scale `sc` and offset `m` of the sixteen weights `16j..`, under the group's
    /// `d` and `dmin` (set first).
    #[inline(always)]
    fn put16(&mut self, j: usize, sc: i32, m: i32) {
        self.isc16[j] = sc as i8;
        self.imin16[j] = m as i8;
        self.sc16[j] = self.d * sc as f32;
        self.min16[j] = self.dmin * m as f32;
    }
}

/// ggml's non-linear 4-bit code book (`kvalues_iq4nl`) shared by IQ4_NL and IQ4_XS.
pub(crate) const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Each byte's index in [`IQ4_VALUES`] (for the packer, which stores indices); 0 for bytes
/// that are no value of the table.
pub(crate) const IQ4_INDEX: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 16 {
        t[IQ4_VALUES[i] as u8 as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decodes 16 bytes of IQ4 nibbles (low nibbles first, as ggml) into 32 table values.
#[inline(always)]
fn iq4_nibbles(qs: &[u8], q: &mut [i8]) {
    for j in 0..16 {
        q[j] = IQ4_VALUES[(qs[j] & 0x0F) as usize];
        q[j + 16] = IQ4_VALUES[(qs[j] >> 4) as usize];
    }
}

#[inline(always)]
fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

/// One block format. `decode` fills `g` with group `gi` of a row (groups are 256 weights).
pub(crate) trait Decoder {
    /// Weights per block.
    const BLOCK: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Decodes one block (`blk` is exactly `BYTES` long) into `g` at sub-block `sub`
    /// (32-element formats) or as the whole group (256-element formats).
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group);

    #[inline(always)]
    fn decode_group(row: &[u8], gi: usize, g: &mut Group) {
        let n_blocks = row.len() / Self::BYTES;
        if Self::BLOCK == 256 {
            Self::decode_block(&row[gi * Self::BYTES..(gi + 1) * Self::BYTES], 0, g);
            g.n_sub = 8;
        } else {
            let first = gi * 8;
            let end = (first + 8).min(n_blocks);
            for b in first..end {
                Self::decode_block(&row[b * Self::BYTES..(b + 1) * Self::BYTES], b - first, g);
            }
            g.n_sub = end - first;
        }
    }
}

pub(crate) struct Q4_0;
pub(crate) struct Q4_1;
pub(crate) struct Q5_0;
pub(crate) struct Q5_1;
pub(crate) struct Q8_0;
pub(crate) struct Q2K;
pub(crate) struct Q3K;
pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;
pub(crate) struct IQ4NL;
pub(crate) struct IQ4XS;

impl Decoder for Q4_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        let qs: &[u8; 16] = blk[2..18].try_into().unwrap();
        let q: &mut [i8; 32] = (&mut g.q[sub * 32..sub * 32 + 32]).try_into().unwrap();
        for j in 0..16 {
            q[j] = (qs[j] & 0x0F) as i8 - 8;
            q[j + 16] = (qs[j] >> 4) as i8 - 8;
        }
        g.put32(sub, d, 0.0);
    }
}

impl Decoder for Q4_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 20;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs: &[u8; 16] = blk[4..20].try_into().unwrap();
        let q: &mut [i8; 32] = (&mut g.q[sub * 32..sub * 32 + 32]).try_into().unwrap();
        for j in 0..16 {
            q[j] = (qs[j] & 0x0F) as i8;
            q[j + 16] = (qs[j] >> 4) as i8;
        }
        g.put32(sub, d, m);
    }
}

impl Decoder for Q5_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 22;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        let qh = u32::from_le_bytes(blk[2..6].try_into().unwrap());
        let qs: &[u8; 16] = blk[6..22].try_into().unwrap();
        let q: &mut [i8; 32] = (&mut g.q[sub * 32..sub * 32 + 32]).try_into().unwrap();
        for j in 0..16 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((qs[j] & 0x0F) | xh0) as i8 - 16;
            q[j + 16] = ((qs[j] >> 4) | xh1) as i8 - 16;
        }
        g.put32(sub, d, 0.0);
    }
}

impl Decoder for Q8_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        let qs: &[u8; 32] = blk[2..34].try_into().unwrap();
        let q: &mut [i8; 32] = (&mut g.q[sub * 32..sub * 32 + 32]).try_into().unwrap();
        for j in 0..32 {
            q[j] = qs[j] as i8;
        }
        g.put32(sub, d, 0.0);
    }
}

/// ggml's packing of Q4_K's eight 6-bit (scale, min) pairs into 12 bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl Decoder for Q4K {
    const BLOCK: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        // ggml subtracts `dmin · m`: the same float as adding `-dmin · m`.
        (g.d, g.dmin) = (f16_at(blk, 0), -f16_at(blk, 2));
        let scales = &blk[4..16];
        let qs: &[u8; 128] = blk[16..144].try_into().unwrap();
        for k in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * k, scales);
            let (sc1, m1) = scale_min_k4(2 * k + 1, scales);
            let src: &[u8; 32] = qs[k * 32..k * 32 + 32].try_into().unwrap();
            let dst: &mut [i8; 64] = (&mut g.q[k * 64..k * 64 + 64]).try_into().unwrap();
            for l in 0..32 {
                dst[l] = (src[l] & 0x0F) as i8;
                dst[l + 32] = (src[l] >> 4) as i8;
            }
            for j in 4 * k..4 * k + 2 {
                g.put16(j, sc0 as i32, m0 as i32);
                g.put16(j + 2, sc1 as i32, m1 as i32);
            }
        }
    }
}

impl Decoder for Q6K {
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        let ql = &blk[0..128];
        let qh = &blk[128..192];
        let scales = &blk[192..208];
        (g.d, g.dmin) = (f16_at(blk, 208), 0.0);
        for n in 0..2 {
            let ql: &[u8; 64] = ql[n * 64..n * 64 + 64].try_into().unwrap();
            let qh: &[u8; 32] = qh[n * 32..n * 32 + 32].try_into().unwrap();
            let dst: &mut [i8; 128] = (&mut g.q[n * 128..n * 128 + 128]).try_into().unwrap();
            for l in 0..32 {
                dst[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                dst[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                dst[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                dst[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        for (j, &raw) in scales.iter().enumerate() {
            g.put16(j, raw as i8 as i32, 0);
        }
    }
}

impl Decoder for Q5_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 24;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qh = u32::from_le_bytes(blk[4..8].try_into().unwrap());
        let qs: &[u8; 16] = blk[8..24].try_into().unwrap();
        let q: &mut [i8; 32] = (&mut g.q[sub * 32..sub * 32 + 32]).try_into().unwrap();
        for j in 0..16 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((qs[j] & 0x0F) | xh0) as i8;
            q[j + 16] = ((qs[j] >> 4) | xh1) as i8;
        }
        g.put32(sub, d, m);
    }
}

/// The 2-bit fields of the K-quants' 256 weights: weight `128n + 32j + l` is bits
/// `2j..2j + 2` of byte `32n + l`.
#[inline(always)]
fn two_bits(qs: &[u8], i: usize) -> u8 {
    (qs[i / 128 * 32 + i % 32] >> (2 * (i % 128 / 32))) & 3
}

impl Decoder for Q2K {
    const BLOCK: usize = 256;
    const BYTES: usize = 84;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        let scales = &blk[0..16];
        let qs = &blk[16..80];
        (g.d, g.dmin) = (f16_at(blk, 80), -f16_at(blk, 82));
        for (i, q) in g.q.iter_mut().enumerate() {
            *q = two_bits(qs, i) as i8;
        }
        for (j, &sc) in scales.iter().enumerate() {
            g.put16(j, (sc & 0x0F) as i32, (sc >> 4) as i32);
        }
    }
}

impl Decoder for Q3K {
    const BLOCK: usize = 256;
    const BYTES: usize = 110;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        let hmask = &blk[0..32];
        let qs = &blk[32..96];
        let s = &blk[96..108];
        (g.d, g.dmin) = (f16_at(blk, 108), 0.0);
        for (i, q) in g.q.iter_mut().enumerate() {
            // The high bit of weight 128n + 32j + l is bit 4n + j of hmask[l]; clear means -4.
            let high = (hmask[i % 32] >> (i / 32)) & 1;
            *q = two_bits(qs, i) as i8 - if high == 0 { 4 } else { 0 };
        }
        // Sixteen 6-bit scales: low nibbles from bytes 0..8 (low then high halves), the two
        // high bits from bytes 8..12, two bits per scale group of four.
        for j in 0..16 {
            let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
            let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            g.put16(j, (low | high << 4) as i32 - 32, 0);
        }
    }
}

impl Decoder for Q5K {
    const BLOCK: usize = 256;
    const BYTES: usize = 176;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        // ggml subtracts `dmin · m`: the same float as adding `-dmin · m`.
        (g.d, g.dmin) = (f16_at(blk, 0), -f16_at(blk, 2));
        let scales = &blk[4..16];
        let qh: &[u8; 32] = blk[16..48].try_into().unwrap();
        let qs: &[u8; 128] = blk[48..176].try_into().unwrap();
        for k in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * k, scales);
            let (sc1, m1) = scale_min_k4(2 * k + 1, scales);
            let src: &[u8; 32] = qs[k * 32..k * 32 + 32].try_into().unwrap();
            let dst: &mut [i8; 64] = (&mut g.q[k * 64..k * 64 + 64]).try_into().unwrap();
            for l in 0..32 {
                let h0 = ((qh[l] >> (2 * k)) & 1) << 4;
                let h1 = ((qh[l] >> (2 * k + 1)) & 1) << 4;
                dst[l] = ((src[l] & 0x0F) | h0) as i8;
                dst[l + 32] = ((src[l] >> 4) | h1) as i8;
            }
            for j in 4 * k..4 * k + 2 {
                g.put16(j, sc0 as i32, m0 as i32);
                g.put16(j + 2, sc1 as i32, m1 as i32);
            }
        }
    }
}

impl Decoder for IQ4NL {
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn decode_block(blk: &[u8], sub: usize, g: &mut Group) {
        let d = f16_at(blk, 0);
        iq4_nibbles(&blk[2..18], &mut g.q[sub * 32..sub * 32 + 32]);
        g.put32(sub, d, 0.0);
    }
}

impl Decoder for IQ4XS {
    const BLOCK: usize = 256;
    const BYTES: usize = 136;
    #[inline(always)]
    fn decode_block(blk: &[u8], _sub: usize, g: &mut Group) {
        (g.d, g.dmin) = (f16_at(blk, 0), 0.0);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
        let scales_l = &blk[4..8];
        for ib in 0..8 {
            let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32
                | (((scales_h >> (2 * ib)) & 3) << 4) as i32;
            let qs = &blk[8 + 16 * ib..8 + 16 * ib + 16];
            iq4_nibbles(qs, &mut g.q[ib * 32..ib * 32 + 32]);
            g.put16(2 * ib, ls - 32, 0);
            g.put16(2 * ib + 1, ls - 32, 0);
        }
    }
}
