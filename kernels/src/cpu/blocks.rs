//! GGUF's block formats (ggml's layouts, byte for byte): which bytes hold a block's scales,
//! minimums and quants, and how one block decodes. Every format splits into units of 32 weights
//! that each decode to `scale · q` plus one constant per unit (a minimum or an offset), so a dot
//! product with activations is `Σ values · x + Σ constant · Σx` per unit: the matrix code
//! ([`super::quant`]) needs nothing else of a format.

use half::f16;

/// Weights of one unit: a block of the 32-weight formats, a sub-block of the K formats.
pub const UNIT: usize = 32;

/// Weights of the largest block (a K-format super-block).
pub const MAX_BLOCK: usize = 256;

/// The block formats kept packed (ggml's type names).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `d: f16, qs: [u8; 16]`; weight `j` = `d · (nibble_j − 8)`.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`; weight `j` = `d · nibble_j + m`.
    Q4_1,
    /// `d: f16, qh: u32, qs: [u8; 16]`; weight `j` = `d · (nibble_j + 16·bit_j − 16)`.
    Q5_0,
    /// `d: f16, m: f16, qh: u32, qs: [u8; 16]`; weight `j` = `d · (nibble_j + 16·bit_j) + m`.
    Q5_1,
    /// `d: f16, qs: [i8; 32]`; weight `j` = `d · qs_j`.
    Q8_0,
    /// 256 weights: `d, dmin: f16, scales: [u8; 12]` (a 6-bit scale and minimum per 32),
    /// `qs: [u8; 128]`; weight = `d · sc · nibble − dmin · m`.
    Q4_K,
    /// As Q4_K with a fifth bit per weight in `qh: [u8; 32]` (before `qs`).
    Q5_K,
    /// 256 weights: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; weight =
    /// `d · sc · (q − 32)` with a 6-bit `q` and a scale per 16 weights.
    Q6_K,
}

impl BlockKind {
    /// Weights in one block.
    pub const fn block_weights(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => UNIT,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => MAX_BLOCK,
        }
    }

    /// Bytes of one block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Decodes `block` into `values[..block_weights()]` (each weight less its unit's constant)
    /// and `consts[..block_weights() / UNIT]` (the constant each unit's weights share), so that
    /// weight `j` = `values[j] + consts[j / UNIT]`.
    #[inline(always)]
    pub fn decode(self, block: &[u8], values: &mut [f32; MAX_BLOCK], consts: &mut [f32; 8]) {
        match self {
            Self::Q4_0 | Self::Q4_1 => {
                let d = f16_at(block, 0);
                let qs = &block[self.block_bytes() - 16..];
                for j in 0..16 {
                    values[j] = d * f32::from(qs[j] & 15);
                    values[j + 16] = d * f32::from(qs[j] >> 4);
                }
                consts[0] = if self == Self::Q4_1 {
                    f16_at(block, 2)
                } else {
                    -8.0 * d
                };
            }
            Self::Q5_0 | Self::Q5_1 => {
                let d = f16_at(block, 0);
                let at = if self == Self::Q5_1 { 4 } else { 2 };
                let qh =
                    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                let qs = &block[at + 4..at + 20];
                for j in 0..16 {
                    let lo = (qs[j] & 15) | ((((qh >> j) << 4) & 0x10) as u8);
                    let hi = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
                    values[j] = d * f32::from(lo);
                    values[j + 16] = d * f32::from(hi);
                }
                consts[0] = if self == Self::Q5_1 {
                    f16_at(block, 2)
                } else {
                    -16.0 * d
                };
            }
            Self::Q8_0 => {
                let d = f16_at(block, 0);
                for (v, &q) in values.iter_mut().zip(&block[2..34]) {
                    *v = d * f32::from(q as i8);
                }
                consts[0] = 0.0;
            }
            Self::Q4_K | Self::Q5_K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales = &block[4..16];
                let (qh, qs) = if self == Self::Q5_K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                // Each 32 bytes of `qs` hold two units: the low nibbles, then the high ones.
                for pair in 0..4 {
                    let q = &qs[32 * pair..32 * pair + 32];
                    for half in 0..2 {
                        let unit = 2 * pair + half;
                        let (sc, m) = k_scale_min(scales, unit);
                        let scale = d * f32::from(sc);
                        let out = &mut values[UNIT * unit..UNIT * unit + UNIT];
                        for l in 0..UNIT {
                            let mut v = (q[l] >> (4 * half)) & 15;
                            if let Some(qh) = qh {
                                v |= ((qh[l] >> unit) & 1) << 4;
                            }
                            out[l] = scale * f32::from(v);
                        }
                        consts[unit] = -dmin * f32::from(m);
                    }
                }
            }
            Self::Q6_K => {
                let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
                let d = f16_at(block, 208);
                // Two halves of 128 weights; in each, 32 positions `l` give four weights
                // (`l`, `l + 32`, `l + 64`, `l + 96`) from `ql[l]`, `ql[l + 32]` and `qh[l]`.
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let out = &mut values[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 15) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (k, q) in q.into_iter().enumerate() {
                            let sc = scales[8 * half + l / 16 + 2 * k] as i8;
                            out[l + 32 * k] = d * f32::from(sc) * (f32::from(q) - 32.0);
                        }
                    }
                }
                consts.fill(0.0);
            }
        }
    }
}

/// The f16 at byte `at` of a block, as f32.
#[inline(always)]
pub fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[at], block[at + 1]])).to_f32()
}

/// The 6-bit scale and minimum of unit `j` of a Q4_K / Q5_K super-block (ggml's
/// `get_scale_min_k4`): units 0–3 in the low 6 bits of bytes 0–7, units 4–7 split over the
/// nibbles of bytes 8–11 and the top 2 bits of bytes 0–7.
#[inline(always)]
fn k_scale_min(q: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
