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
use half::f16;
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
    /// Whether scales are integers under a float per 256 weights ([`Scales::Int`]).
    pub int_scales: bool,
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
                int_scales: false,
            })
        };
        let k = |l: Option<Layout>| {
            Some(Layout {
                int_scales: true,
                ..l?
            })
        };
        match ty {
            GgmlType::Q4_0 => l(32, 8, 4, false),
            GgmlType::Q4_1 => l(32, 0, 4, true),
            GgmlType::Q4K => k(l(32, 0, 4, true)),
            GgmlType::Q5_0 => l(32, 16, 5, false),
            GgmlType::Q5_1 => l(32, 0, 5, true),
            GgmlType::Q5K => k(l(32, 0, 5, true)),
            GgmlType::Q8_0 => l(32, 128, 8, false),
            // 2 and 3 bits kept as nibbles: simpler lanes, for formats that llama.cpp's
            // presets use on a few matrices only (they keep the rest wider).
            GgmlType::Q2K => k(l(16, 0, 4, true)),
            GgmlType::Q3K => k(l(16, 4, 4, false)),
            GgmlType::Q6K => k(l(16, 32, 6, false)),
            GgmlType::IQ4NL => Some(Layout {
                nl: true,
                ..l(32, 128, 4, false)?
            }),
            GgmlType::IQ4XS => Some(Layout {
                nl: true,
                ..k(l(32, 128, 4, false))?
            }),
            _ => None,
        }
    }

    /// Units under one group factor of [`Scales::Int`]: those of 256 weights.
    pub(crate) const fn group_units(self) -> usize {
        256 / self.unit
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

/// Eight lanes' f16 values, as bits.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct H8(pub [u16; 8]);

/// Eight lanes' small integers.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct I8x8(pub [i8; 8]);

/// The units' scales and offsets, stored about as compactly as ggml stores them (a decode
/// step reads every byte of a matrix, so its speed limit is the matrix's size), yet so
/// that each lane's float comes back as the very f32 ggml's dequantization computes.
pub(crate) enum Scales {
    /// The 32-weight formats: the block's f16 scale (and offset), which widen exactly.
    Half { d: Vec<H8>, m: Vec<H8> },
    /// The 256-weight formats (the K-quants, IQ4_XS): the unit's integer scale (and
    /// offset) and, per 256 weights, the group's float factors (`Group::d`, `dmin`); the
    /// float is their product, one f32 multiply as in ggml.
    Int {
        d: Vec<I8x8>,
        m: Vec<I8x8>,
        gd: Vec<F8>,
        gm: Vec<F8>,
    },
}

/// A matrix in packed form: for block `b` of eight rows and unit `u`, the stored
/// registers at `q[(b * units + u) * stored_regs..]` and the eight rows' scales and
/// offsets at entry `b * units + u` of [`Scales`] (group factors at that index over
/// [`Layout::group_units`]; offsets empty without them).
pub(crate) struct Packed {
    pub layout: Layout,
    /// Units per row.
    pub units: usize,
    pub q: Vec<Reg>,
    pub scales: Scales,
}

impl Packed {
    /// Repacks `rows` ggml rows of `cols` weights (`data` holds exactly those rows).
    pub(crate) fn from_ggml(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Packed {
        let layout = Layout::of(ty).expect("a quantized type");
        let units = cols / layout.unit;
        let n_blocks = rows.div_ceil(8);
        let n = n_blocks * units;
        let mins = if layout.has_min { n } else { 0 };
        let mut q = streamed(n * layout.stored_regs());
        let mut scales = if layout.int_scales {
            let groups = n / layout.group_units();
            Scales::Int {
                d: streamed(n),
                m: streamed(mins),
                gd: streamed(groups),
                gm: streamed(if layout.has_min { groups } else { 0 }),
            }
        } else {
            Scales::Half {
                d: streamed(n),
                m: streamed(mins),
            }
        };
        if rows > 0 && units > 0 {
            let row_bytes = data.len() / rows;
            let regs = units * layout.stored_regs();
            let rows_of = data.chunks(8 * row_bytes);
            // One block of eight rows' share of each array (empty where a format has none).
            fn per_block<T>(v: &mut [T], len: usize, n_blocks: usize) -> Vec<&mut [T]> {
                if v.is_empty() {
                    (0..n_blocks).map(|_| &mut [][..]).collect()
                } else {
                    v.chunks_mut(len).collect()
                }
            }
            let out: Vec<BlockScales<'_>> = match &mut scales {
                Scales::Half { d, m } => per_block(d, units, n_blocks)
                    .into_iter()
                    .zip(per_block(m, units, n_blocks))
                    .map(|(d, m)| BlockScales::Half { d, m })
                    .collect(),
                Scales::Int { d, m, gd, gm } => {
                    let groups = units / layout.group_units();
                    per_block(d, units, n_blocks)
                        .into_iter()
                        .zip(per_block(m, units, n_blocks))
                        .zip(per_block(gd, groups, n_blocks))
                        .zip(per_block(gm, groups, n_blocks))
                        .map(|(((d, m), gd), gm)| BlockScales::Int { d, m, gd, gm })
                        .collect()
                }
            };
            // Blocks of eight rows are independent: pack them in parallel.
            let blocks = q.chunks_mut(regs).zip(out).zip(rows_of);
            macro_rules! go {
                ($d:ty) => {
                    blocks.par_bridge().for_each(|((q, sc), rows)| {
                        put_block::<$d>(layout, cols, rows, row_bytes, q, sc)
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
        }
        Packed {
            layout,
            units,
            q,
            scales,
        }
    }

    /// Whether the scales (and offsets) cover the first `entries` entries, which the
    /// vector kernels then read unchecked.
    pub(crate) fn scales_cover(&self, entries: usize) -> bool {
        let min = if self.layout.has_min { entries } else { 0 };
        match &self.scales {
            Scales::Half { d, m } => d.len() >= entries && m.len() >= min,
            Scales::Int { d, m, gd, gm } => {
                let g = self.layout.group_units();
                d.len() >= entries
                    && m.len() >= min
                    && gd.len() >= entries.div_ceil(g)
                    && gm.len() >= min.div_ceil(g)
            }
        }
    }

    /// The scale and offset (0 without offsets) of entry `at`'s lane `lane`, the floats
    /// the vector kernels compute from the stored form.
    pub(crate) fn scale(&self, at: usize, lane: usize) -> (f32, f32) {
        match &self.scales {
            Scales::Half { d, m } => (
                f16::from_bits(d[at].0[lane]).to_f32(),
                m.get(at)
                    .map_or(0.0, |m| f16::from_bits(m.0[lane]).to_f32()),
            ),
            Scales::Int { d, m, gd, gm } => {
                let g = at / self.layout.group_units();
                (
                    gd[g].0[lane] * d[at].0[lane] as f32,
                    m.get(at).map_or(0.0, |m| gm[g].0[lane] * m.0[lane] as f32),
                )
            }
        }
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
            let (d, m) = self.scale(at, lane);
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
            + match &self.scales {
                Scales::Half { d, m } => std::mem::size_of_val(&**d) + std::mem::size_of_val(&**m),
                Scales::Int { d, m, gd, gm } => {
                    std::mem::size_of_val(&**d)
                        + std::mem::size_of_val(&**m)
                        + std::mem::size_of_val(&**gd)
                        + std::mem::size_of_val(&**gm)
                }
            }
    }
}

/// `n` default values in memory that decode steps stream through, backed by 2 MiB pages
/// where the kernel allows it (Linux's transparent huge pages, asked for with `madvise`
/// before the first write): a page walk every 4 KiB of a stream that reads a gigabyte per
/// token is a cost of its own, and the hardware prefetchers stop at page boundaries.
pub fn streamed<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let (start, len) = (v.as_mut_ptr() as usize, n * std::mem::size_of::<T>());
        let first = start.next_multiple_of(PAGE);
        let end = (start + len) / PAGE * PAGE;
        if end > first {
            // SAFETY: the range lies inside `v`'s allocation, page-aligned; the advice
            // changes how its pages are backed, never their contents. A kernel without
            // transparent huge pages refuses it, and small pages stay: nothing to handle.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    v.resize(n, T::default());
    v
}

/// One block of eight rows' share of [`Scales`].
enum BlockScales<'a> {
    Half {
        d: &'a mut [H8],
        m: &'a mut [H8],
    },
    Int {
        d: &'a mut [I8x8],
        m: &'a mut [I8x8],
        gd: &'a mut [F8],
        gm: &'a mut [F8],
    },
}

/// Packs up to eight ggml rows (`rows`, `row_bytes` each) into one block's registers `q`
/// and scales `sc`.
fn put_block<D: Decoder>(
    l: Layout,
    cols: usize,
    rows: &[u8],
    row_bytes: usize,
    q: &mut [Reg],
    mut sc: BlockScales<'_>,
) {
    let per_group = 256 / l.unit;
    let half = l.unit / 8;
    let mut g = Group::default();
    for (lane, row) in rows.chunks(row_bytes).enumerate() {
        for gi in 0..cols.div_ceil(256) {
            D::decode_group(row, gi, &mut g);
            if let BlockScales::Int { gd, gm, .. } = &mut sc {
                gd[gi].0[lane] = g.d;
                if l.has_min {
                    gm[gi].0[lane] = g.dmin;
                }
            }
            for j in 0..g.n_sub * 32 / l.unit {
                let unit = gi * per_group + j;
                let off = j * l.unit;
                match &mut sc {
                    BlockScales::Half { d, m } => {
                        // The 32-weight formats' scales are f16 values widened.
                        d[unit].0[lane] = f16::from_f32(g.sc16[off / 16]).to_bits();
                        if l.has_min {
                            m[unit].0[lane] = f16::from_f32(g.min16[off / 16]).to_bits();
                        }
                    }
                    BlockScales::Int { d, m, .. } => {
                        d[unit].0[lane] = g.isc16[off / 16];
                        if l.has_min {
                            m[unit].0[lane] = g.imin16[off / 16];
                        }
                    }
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
