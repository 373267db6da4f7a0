//! Weights repacked at load time into the lane layout the kernels want.
//!
//! A ggml block keeps its 32 weights together, so a vector dot product over one block
//! leaves eight partial sums in eight lanes that must be reduced and scaled block by block
//! (three or four vector instructions per block, row and token). Here eight rows go side
//! by side, one per 32-bit lane: for each *unit* (the weights under one scale: 32, or 16
//! for Q6_K), register `k` holds weights `4k..4k + 4` of that unit of all eight rows.
//! `unit / 4` `vpdpbusd` (or `maddubs` + `madd`) against the token's activation bytes,
//! four at a time broadcast to every lane, leave each row's complete integer dot product
//! for the unit in its own lane; the eight rows' scales then apply with one multiply and
//! one FMA, and after the last unit the lanes *are* the eight results: no horizontal sums.
//!
//! Weights are stored as unsigned integers `u = q + bias` (the format's signed value plus a
//! constant, so the CPU's unsigned × signed byte product applies), with the units' scales
//! and offsets as f32. 8-bit weights take a byte each. Narrower ones keep their low four
//! bits two per byte (register `k` in the low nibbles, `k + unit / 8` in the high ones)
//! and the rest in one more register of bit planes (bits `(bits - 4)·k..` of each byte
//! belong to register `k`), so a matrix takes about the memory of its ggml form. The bias comes back out exactly: each activation unit
//! carries `-bias · Σa` as the starting value of its integer sum ([`quantize_token`]).
//! The IQ4 formats store their 4-bit code-book indices instead of `u`, and the kernels look
//! `u = value + 128` up from the nibbles (`vpshufb`): IQ4's footprint, then Q8_0's 8-bit
//! path. Offsets multiply the activations' sum: a Q8 block's `s` for units of 32, the
//! unit's own integer sum (carried per token, see [`Layout::init_per_token`]) for Q2_K's 16.
//! Matrices whose row count is not a multiple of eight get zero rows, never read back.

use super::blocks::{self, Decoder, Group};
use super::{BlockQ8, QK8};
use crate::gguf::GgmlType;
use rayon::prelude::*;

/// 32 bytes: one vector register of eight 4-byte lanes.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Reg(pub [u8; 32]);

/// Eight floats, one per lane.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct F8(pub [f32; 8]);

/// How one weight format sits in the lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Weights under one scale, hence per lane: 32, or 16 for Q2_K, Q3_K and Q6_K.
    pub unit: usize,
    /// Added to the format's signed integers to make them unsigned bytes.
    pub bias: i32,
    /// Bits per stored weight: 4, 5 or 6 (nibbles, plus bit planes above 4), or 8.
    pub bits: u32,
    /// Whether each unit adds an offset times the activations' sum (Q4_1, Q5_1, Q2_K,
    /// Q4_K, Q5_K).
    pub has_min: bool,
    /// Whether the stored nibbles index [`blocks::IQ4_VALUES`] (IQ4_NL, IQ4_XS), whose
    /// values plus `bias` (128) are the weights.
    pub nl: bool,
}

impl Layout {
    pub(crate) fn of(ty: GgmlType) -> Option<Layout> {
        let l = |unit, bias, bits, has_min| {
            Some(Layout {
                unit,
                bias,
                bits,
                has_min,
                nl: false,
            })
        };
        match ty {
            GgmlType::Q4_0 => l(32, 8, 4, false),
            GgmlType::Q4_1 | GgmlType::Q4K => l(32, 0, 4, true),
            GgmlType::Q5_0 => l(32, 16, 5, false),
            GgmlType::Q5_1 | GgmlType::Q5K => l(32, 0, 5, true),
            GgmlType::Q8_0 => l(32, 128, 8, false),
            // 2 and 3 bits kept as nibbles: simpler lanes, for formats that llama.cpp's
            // presets use on a few matrices only (they keep the rest wider).
            GgmlType::Q2K => l(16, 0, 4, true),
            GgmlType::Q3K => l(16, 4, 4, false),
            GgmlType::Q6K => l(16, 32, 6, false),
            GgmlType::IQ4NL | GgmlType::IQ4XS => Some(Layout {
                nl: true,
                ..l(32, 128, 4, false)?
            }),
            _ => None,
        }
    }

    /// Byte registers per unit once unpacked (four weights of each lane per register).
    pub(crate) fn regs(self) -> usize {
        self.unit / 4
    }

    /// Registers per unit as stored.
    pub(crate) fn stored_regs(self) -> usize {
        stored_regs(self.unit, self.bits)
    }

    /// Integer inputs per token, one per unit where the layout needs them, none
    /// otherwise: the integer sums' starting values `-bias · Σa` where a bias needs taking
    /// out, or the activations' sums `Σa` where offsets apply to units narrower than a Q8
    /// block (whose `s` covers 32).
    pub(crate) fn init_per_token(self, cols: usize) -> usize {
        if self.bias != 0 || self.unit_sums() {
            cols / self.unit
        } else {
            0
        }
    }

    /// Whether the per-token integers are the units' activation sums (see
    /// [`Layout::init_per_token`]).
    pub(crate) fn unit_sums(self) -> bool {
        self.has_min && self.unit < QK8
    }
}

/// Registers per stored unit of `unit` weights of `bits` bits: bytes, or nibbles plus
/// one register of bit planes above 4 bits.
pub(crate) const fn stored_regs(unit: usize, bits: u32) -> usize {
    match bits {
        8 => unit / 4,
        4 => unit / 8,
        _ => unit / 8 + 1,
    }
}

/// A matrix in packed form: for block `b` of eight rows and unit `u`, the stored
/// registers at `q[(b * units + u) * stored_regs..]`, the eight rows' scales at
/// `d[b * units + u]` and offsets at `m[b * units + u]` (empty without offsets).
pub(crate) struct Packed {
    pub layout: Layout,
    /// Units per row.
    pub units: usize,
    pub q: Vec<Reg>,
    pub d: Vec<F8>,
    pub m: Vec<F8>,
}

impl Packed {
    /// Repacks `rows` ggml rows of `cols` weights (`data` holds exactly those rows).
    pub(crate) fn from_ggml(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Packed {
        let layout = Layout::of(ty).expect("a quantized type");
        let units = cols / layout.unit;
        let n = rows.div_ceil(8) * units;
        let mut p = Packed {
            layout,
            units,
            q: vec![Reg::default(); n * layout.stored_regs()],
            d: vec![F8::default(); n],
            m: if layout.has_min {
                vec![F8::default(); n]
            } else {
                Vec::new()
            },
        };
        if rows == 0 || units == 0 {
            return p;
        }
        let row_bytes = data.len() / rows;
        let regs = units * layout.stored_regs();
        // Blocks of eight rows are independent: pack them in parallel.
        let mins: Vec<&mut [F8]> = if layout.has_min {
            p.m.chunks_mut(units).collect()
        } else {
            (0..rows.div_ceil(8)).map(|_| &mut [][..]).collect()
        };
        let blocks = p.q.chunks_mut(regs).zip(p.d.chunks_mut(units)).zip(mins);
        let rows_of = data.chunks(8 * row_bytes);
        macro_rules! go {
            ($d:ty) => {
                blocks
                    .zip(rows_of)
                    .par_bridge()
                    .for_each(|(((q, d), m), rows)| {
                        put_block::<$d>(layout, cols, rows, row_bytes, q, d, m)
                    })
            };
        }
        match ty {
            GgmlType::Q4_0 => go!(blocks::Q4_0),
            GgmlType::Q4_1 => go!(blocks::Q4_1),
            GgmlType::Q5_0 => go!(blocks::Q5_0),
            GgmlType::Q5_1 => go!(blocks::Q5_1),
            GgmlType::Q8_0 => go!(blocks::Q8_0),
            GgmlType::Q2K => go!(blocks::Q2K),
            GgmlType::Q3K => go!(blocks::Q3K),
            GgmlType::Q4K => go!(blocks::Q4K),
            GgmlType::Q5K => go!(blocks::Q5K),
            GgmlType::Q6K => go!(blocks::Q6K),
            GgmlType::IQ4NL => go!(blocks::IQ4NL),
            GgmlType::IQ4XS => go!(blocks::IQ4XS),
            _ => unreachable!("Layout::of accepted it"),
        }
        p
    }

    /// Index of unit `u` of row `r`'s block of eight, and `r`'s lane.
    fn at(&self, r: usize, u: usize) -> (usize, usize) {
        ((r / 8) * self.units + u, r % 8)
    }

    /// Unpacked register `k` of entry `at` (a block of eight rows and a unit): byte
    /// `4j + i` is weight `4k + i` of the unit in the block's row `j`, as the unsigned `u`.
    pub(crate) fn unpacked(&self, at: usize, k: usize) -> [u8; 32] {
        let l = self.layout;
        let regs = &self.q[at * l.stored_regs()..(at + 1) * l.stored_regs()];
        if l.bits == 8 {
            return regs[k].0;
        }
        let half = l.unit / 8;
        let (lo, shift) = (&regs[k % half].0, 4 * (k / half));
        let hi_bits = l.bits as usize - 4;
        if l.nl {
            return std::array::from_fn(|b| {
                let i = (lo[b] >> shift) & 0x0F;
                (blocks::IQ4_VALUES[i as usize] as i32 + l.bias) as u8
            });
        }
        std::array::from_fn(|b| {
            let hi = if hi_bits > 0 {
                (regs[half].0[b] >> (hi_bits * k)) & ((1 << hi_bits) - 1)
            } else {
                0
            };
            ((lo[b] >> shift) & 0x0F) | hi << 4
        })
    }

    /// Row `r` as floats, the same values to the bit as ggml's dequantization
    /// (`q · scale + offset`, each in f32).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let l = self.layout;
        for (u, chunk) in out.chunks_mut(l.unit).enumerate() {
            let (at, lane) = self.at(r, u);
            let d = self.d[at].0[lane];
            let m = if l.has_min { self.m[at].0[lane] } else { 0.0 };
            for (k, four) in chunk.chunks_mut(4).enumerate() {
                let reg = self.unpacked(at, k);
                for (i, o) in four.iter_mut().enumerate() {
                    let q = reg[4 * lane + i] as i32 - l.bias;
                    *o = q as f32 * d + m;
                }
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.q)
            + std::mem::size_of_val(&*self.d)
            + std::mem::size_of_val(&*self.m)
    }
}

/// Packs up to eight ggml rows (`rows`, `row_bytes` each) into one block's registers `q`,
/// scales `d` and offsets `m` (empty without offsets).
fn put_block<D: Decoder>(
    l: Layout,
    cols: usize,
    rows: &[u8],
    row_bytes: usize,
    q: &mut [Reg],
    d: &mut [F8],
    m: &mut [F8],
) {
    let per_group = 256 / l.unit;
    let half = l.unit / 8;
    let mut g = Group::default();
    for (lane, row) in rows.chunks(row_bytes).enumerate() {
        for gi in 0..cols.div_ceil(256) {
            D::decode_group(row, gi, &mut g);
            for j in 0..g.n_sub * 32 / l.unit {
                let unit = gi * per_group + j;
                let off = j * l.unit;
                d[unit].0[lane] = g.sc16[off / 16];
                if l.has_min {
                    m[unit].0[lane] = g.min16[off / 16];
                }
                let regs = &mut q[unit * l.stored_regs()..(unit + 1) * l.stored_regs()];
                for e in 0..l.unit {
                    let q = g.q[off + e];
                    let u = if l.nl {
                        blocks::IQ4_INDEX[q as u8 as usize]
                    } else {
                        (q as i32 + l.bias) as u8
                    };
                    let (k, b) = (e / 4, 4 * lane + e % 4);
                    if l.bits == 8 {
                        regs[k].0[b] = u;
                        continue;
                    }
                    regs[k % half].0[b] |= (u & 0x0F) << (4 * (k / half));
                    if l.bits > 4 {
                        regs[half].0[b] |= (u >> 4) << ((l.bits as usize - 4) * k);
                    }
                }
            }
        }
    }
}

/// One call of the quantized matmul: rows `r0..r0 + n_rows` of `p` against `n_tok`
/// tokens of Q8 activations (`blocks`, and `init` where the layout has a bias, see
/// [`quantize_token`]).
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub p: &'a Packed,
    pub r0: usize,
    pub n_rows: usize,
    pub blocks: &'a [BlockQ8],
    pub init: &'a [i32],
    pub n_tok: usize,
}

/// Quantizes one token's activations `x` into Q8 `blocks` (as [`super::quantize_row_q8`])
/// and each unit's integer input into `init` ([`Layout::init_per_token`] values).
pub(crate) fn quantize_token(layout: Layout, x: &[f32], blocks: &mut [BlockQ8], init: &mut [i32]) {
    super::quantize_row_q8(x, blocks);
    token_init(layout, blocks, init);
}

/// A token's per-unit integers ([`Layout::init_per_token`]) from its Q8 `blocks`.
pub(crate) fn token_init(layout: Layout, blocks: &[BlockQ8], init: &mut [i32]) {
    let factor = if layout.unit_sums() { 1 } else { -layout.bias };
    for (unit, v) in init.iter_mut().enumerate() {
        let at = unit * layout.unit;
        let qs = &blocks[at / QK8].qs[at % QK8..at % QK8 + layout.unit];
        *v = factor * qs.iter().map(|&q| q as i32).sum::<i32>();
    }
}
