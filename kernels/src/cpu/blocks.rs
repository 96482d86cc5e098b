//! GGUF's block formats (ggml's layouts, byte for byte): which bytes hold a block's scales,
//! minimums and quants, and how one unit of a block decodes. Every format splits into units of
//! 32 weights that each decode to `scale · q` plus one constant per unit (a minimum or an
//! offset), so a dot product with activations is `Σ values · x + constant · Σx` per unit: the
//! matrix code ([`super::quant`]) needs nothing else of a format.

/// Weights of one unit: a block of the 32-weight formats, a sub-block of the K formats.
pub const UNIT: usize = 32;

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
            Self::Q4_K | Self::Q5_K | Self::Q6_K => 256,
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

    /// Byte offsets of a block's f16 fields (its scale, and its minimum where it has one).
    pub const fn f16_fields(self) -> &'static [usize] {
        match self {
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => &[0],
            Self::Q4_1 | Self::Q5_1 | Self::Q4_K | Self::Q5_K => &[0, 2],
            Self::Q6_K => &[208],
        }
    }

    /// Units of [`UNIT`] weights in one block.
    pub const fn units(self) -> usize {
        self.block_weights() / UNIT
    }

    /// Decodes unit `u` of `block` into its quants `values` and returns how they scale: weight
    /// `j` of the unit = `scale · values[j] + constant`, with the first 16 weights' scale and
    /// the last 16's (equal but in Q6_K, whose scales cover 16 weights each) and the constant
    /// the unit's weights share (a minimum or an offset).
    #[inline(always)]
    pub fn decode_unit(self, block: &[u8], u: usize, values: &mut [f32; UNIT]) -> UnitScale {
        match self {
            Self::Q4_0 | Self::Q4_1 => {
                let d = f16_at(block, 0);
                let qs = &block[self.block_bytes() - 16..];
                for j in 0..16 {
                    values[j] = f32::from(qs[j] & 15);
                    values[j + 16] = f32::from(qs[j] >> 4);
                }
                let constant = if self == Self::Q4_1 {
                    f16_at(block, 2)
                } else {
                    -8.0 * d
                };
                UnitScale::even(d, constant)
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
                    values[j] = f32::from(lo);
                    values[j + 16] = f32::from(hi);
                }
                let constant = if self == Self::Q5_1 {
                    f16_at(block, 2)
                } else {
                    -16.0 * d
                };
                UnitScale::even(d, constant)
            }
            Self::Q8_0 => {
                let d = f16_at(block, 0);
                for (v, &q) in values.iter_mut().zip(&block[2..34]) {
                    *v = f32::from(q as i8);
                }
                UnitScale::even(d, 0.0)
            }
            Self::Q4_K | Self::Q5_K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let (sc, m) = k_scale_min(&block[4..16], u);
                let scale = d * f32::from(sc);
                // Each 32 bytes of `qs` hold two units: the low nibbles, then the high ones.
                let (pair, shift) = (u / 2, 4 * (u % 2));
                if self == Self::Q5_K {
                    let (qh, q) = (&block[16..48], &block[48 + 32 * pair..80 + 32 * pair]);
                    for l in 0..UNIT {
                        let v = ((q[l] >> shift) & 15) | (((qh[l] >> u) & 1) << 4);
                        values[l] = f32::from(v);
                    }
                } else {
                    let q = &block[16 + 32 * pair..48 + 32 * pair];
                    for l in 0..UNIT {
                        values[l] = f32::from((q[l] >> shift) & 15);
                    }
                }
                UnitScale::even(scale, -dmin * f32::from(m))
            }
            Self::Q6_K => {
                // Two halves of 128 weights; in a half, position `l < 32` gives weights `l`,
                // `l + 32`, `l + 64`, `l + 96` (unit `k` of the half takes `l + 32 k`) from
                // `ql[l]` (k = 0, 2) or `ql[l + 32]` (k = 1, 3) and bits `2 k` of `qh[l]`.
                let d = f16_at(block, 208);
                let (half, k) = (u / 4, u % 4);
                let ql = &block[64 * half + 32 * (k % 2)..64 * half + 32 * (k % 2) + 32];
                let qh = &block[128 + 32 * half..160 + 32 * half];
                let scales = &block[192 + 8 * half + 2 * k..192 + 8 * half + 2 * k + 2];
                let (s0, s1) = (
                    d * f32::from(scales[0] as i8),
                    d * f32::from(scales[1] as i8),
                );
                let shift = 4 * (k / 2);
                for l in 0..UNIT {
                    let q = ((ql[l] >> shift) & 15) | (((qh[l] >> (2 * k)) & 3) << 4);
                    values[l] = f32::from(q) - 32.0;
                }
                UnitScale {
                    first: s0,
                    last: s1,
                    constant: 0.0,
                }
            }
        }
    }
}

/// How a unit's decoded quants scale (see [`BlockKind::decode_unit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitScale {
    /// Scale of the unit's first 16 weights.
    pub first: f32,
    /// Scale of its last 16.
    pub last: f32,
    /// Added to every weight of the unit.
    pub constant: f32,
}

impl UnitScale {
    fn even(scale: f32, constant: f32) -> Self {
        Self {
            first: scale,
            last: scale,
            constant,
        }
    }
}

/// The f16 at byte `at` of a block, as f32.
#[inline(always)]
pub fn f16_at(block: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// An f16 as f32, exactly, in a few branch-free instructions: the exponent and mantissa moved
/// into place and rebiased by a multiply by 2^112 (which also scales subnormals right),
/// infinities and NaNs kept. (`half`'s conversion checks the CPU's features at every call,
/// which costs more than the rest of a block's decoding.)
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    let value = if magnitude >= 0x7c00 {
        f32::from_bits(0x7f80_0000 | ((magnitude & 0x3ff) << 13))
    } else {
        f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(value.to_bits() | sign)
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

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn every_f16_converts_as_half_does() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }
}
