//! Block-quantised weight matrices as GGUF stores them — Q4_0, Q4_1 and Q8_0: each row is cut
//! into blocks of 32 weights with an f16 scale (and, for Q4_1, an f16 minimum) — and the product
//! of a few f32 rows with such a matrix without dequantising it first. Batch-1 decode on the CPU
//! is bound by the bytes of weights it reads: 4.5–8.5 bits per weight here instead of 32.
//!
//! The products are exact up to f32 summation order against the dequantised matrix (the
//! activations stay f32; nothing is requantised).

use half::f16;
use rayon::prelude::*;

/// Weights per block.
pub const BLOCK: usize = 32;

/// The block formats this module computes with (ggml's layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `d: f16, qs: [u8; 16]`; weight `j` = `d · (nibble_j − 8)`.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`; weight `j` = `d · nibble_j + m`.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`; weight `j` = `d · qs_j`.
    Q8_0,
}

impl BlockKind {
    /// Bytes of one block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("a quantised row must be a whole number of {BLOCK}-weight blocks, not {0} weights")]
    PartialBlock(usize),
    #[error("{kind:?} data for {out} rows of {inner} weights is {expected} bytes, not {got}")]
    Size {
        kind: BlockKind,
        out: usize,
        inner: usize,
        expected: usize,
        got: usize,
    },
    #[error("quantised matrices stack only with the same format and row length")]
    Mismatch,
}

/// An `[out, inner]` matrix of blocks, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantMatrix {
    kind: BlockKind,
    out: usize,
    inner: usize,
    data: Vec<u8>,
}

impl QuantMatrix {
    pub fn new(
        kind: BlockKind,
        out: usize,
        inner: usize,
        data: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if !inner.is_multiple_of(BLOCK) {
            return Err(QuantError::PartialBlock(inner));
        }
        let expected = out * inner / BLOCK * kind.block_bytes();
        if data.len() != expected {
            return Err(QuantError::Size {
                kind,
                out,
                inner,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            kind,
            out,
            inner,
            data,
        })
    }

    pub fn kind(&self) -> BlockKind {
        self.kind
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.inner / BLOCK * self.kind.block_bytes()
    }

    /// The raw blocks, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The rows of `parts` one after the other (e.g. Q, K and V into one QKV matrix).
    pub fn stack(parts: Vec<Self>) -> Result<Self, QuantError> {
        let mut parts = parts.into_iter();
        let mut all = parts.next().ok_or(QuantError::Mismatch)?;
        for part in parts {
            if part.kind != all.kind || part.inner != all.inner {
                return Err(QuantError::Mismatch);
            }
            all.out += part.out;
            all.data.extend_from_slice(&part.data);
        }
        Ok(all)
    }

    /// `y[r, o] = x[r, :] · W[o, :]` for `rows` rows of `x` (`[rows, inner]`) into `y`
    /// (`[rows, out]`). Meant for a few rows: the weights are read and decoded once per group of
    /// four rows, so the arithmetic grows with the rows while the bytes read do not.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        assert_eq!(
            x.len(),
            rows * self.inner,
            "quant matmul: x is not rows × inner"
        );
        assert_eq!(
            y.len(),
            rows * self.out,
            "quant matmul: y is not rows × out"
        );
        if rows == 0 || self.out == 0 {
            return;
        }
        let blocks = self.inner / BLOCK;
        // Σx of each block of each row (the terms of Q4_1's minimum and Q4_0's offset).
        let xsum: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        let row_bytes = self.row_bytes();
        // Tasks of at least 64 KiB of blocks (a hand-off costs microseconds), a few per thread.
        let threads = rayon::current_num_threads();
        let chunk_rows = self
            .out
            .div_ceil(4 * threads)
            .max((64 << 10) / row_bytes)
            .max(1);
        let kernel = pick_kernel();
        // Output-major scratch so that tasks own whole output rows.
        let mut t = vec![0.0f32; self.out * rows];
        let task = |(c, out_chunk): (usize, &mut [f32])| {
            for (i, dst) in out_chunk.chunks_exact_mut(rows).enumerate() {
                let o = c * chunk_rows + i;
                let w = &self.data[o * row_bytes..(o + 1) * row_bytes];
                kernel(self.kind, w, blocks, x, &xsum, dst);
            }
        };
        if self.out <= chunk_rows {
            task((0, &mut t));
        } else {
            t.par_chunks_mut(chunk_rows * rows)
                .enumerate()
                .for_each(task);
        }
        for (o, values) in t.chunks_exact(rows).enumerate() {
            for (r, v) in values.iter().enumerate() {
                y[r * self.out + o] = *v;
            }
        }
    }

    /// The matrix as f32 (what `matmul` must equal up to summation order).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.out * self.inner);
        for block in self.data.chunks_exact(self.kind.block_bytes()) {
            let d = scale(block, 0);
            match self.kind {
                BlockKind::Q4_0 => {
                    let qs = &block[2..18];
                    out.extend(qs.iter().map(|q| d * (f32::from(q & 15) - 8.0)));
                    out.extend(qs.iter().map(|q| d * (f32::from(q >> 4) - 8.0)));
                }
                BlockKind::Q4_1 => {
                    let (m, qs) = (scale(block, 2), &block[4..20]);
                    out.extend(qs.iter().map(|q| d * f32::from(q & 15) + m));
                    out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
                }
                BlockKind::Q8_0 => {
                    out.extend(block[2..34].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
        }
        out
    }
}

/// The f16 at byte `at` of a block, as f32.
#[inline(always)]
fn scale(block: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[at], block[at + 1]])).to_f32()
}

/// One weight row against every activation row: `dst[r] = x[r, :] · w`.
type RowKernel = fn(BlockKind, &[u8], usize, &[f32], &[f32], &mut [f32]);

/// The widest build of [`row_dot`] this CPU runs.
fn pick_kernel() -> RowKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return |k, w, b, x, s, d| {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { row_dot_avx512(k, w, b, x, s, d) }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return |k, w, b, x, s, d| {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { row_dot_avx2(k, w, b, x, s, d) }
            };
        }
    }
    row_dot
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_dot_avx512(k: BlockKind, w: &[u8], blocks: usize, x: &[f32], xs: &[f32], d: &mut [f32]) {
    row_dot(k, w, blocks, x, xs, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_dot_avx2(k: BlockKind, w: &[u8], blocks: usize, x: &[f32], xs: &[f32], d: &mut [f32]) {
    row_dot(k, w, blocks, x, xs, d)
}

/// One weight row against every activation row, four rows at a time.
#[inline(always)]
fn row_dot(kind: BlockKind, w: &[u8], blocks: usize, x: &[f32], xsum: &[f32], dst: &mut [f32]) {
    let mut r0 = 0;
    while r0 < dst.len() {
        let n = (dst.len() - r0).min(4);
        let out = &mut dst[r0..r0 + n];
        match n {
            1 => rows_dot::<1>(kind, w, blocks, x, xsum, r0, out),
            2 => rows_dot::<2>(kind, w, blocks, x, xsum, r0, out),
            3 => rows_dot::<3>(kind, w, blocks, x, xsum, r0, out),
            _ => rows_dot::<4>(kind, w, blocks, x, xsum, r0, out),
        }
        r0 += n;
    }
}

/// `N` activation rows from `r0` against one weight row: each block is decoded once into 32
/// small numbers, then lane-wise arithmetic (16 lanes, no reassociation needed) that the
/// compiler vectorises for whichever target features its caller enables. The scale multiplies
/// per block; the minimum (Q4_1) or offset (Q4_0) term uses the block sums of `x`.
#[inline(always)]
fn rows_dot<const N: usize>(
    kind: BlockKind,
    w: &[u8],
    blocks: usize,
    x: &[f32],
    xsum: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    let inner = blocks * BLOCK;
    let bb = kind.block_bytes();
    let mut acc = [[0.0f32; 16]; N];
    let mut tail = [0.0f32; N];
    for b in 0..blocks {
        let block = &w[b * bb..(b + 1) * bb];
        let d = scale(block, 0);
        let (mut lo, mut hi) = ([0.0f32; 16], [0.0f32; 16]);
        let offset = match kind {
            BlockKind::Q4_0 | BlockKind::Q4_1 => {
                let qs = &block[bb - 16..];
                for j in 0..16 {
                    lo[j] = f32::from(qs[j] & 15);
                    hi[j] = f32::from(qs[j] >> 4);
                }
                if kind == BlockKind::Q4_1 {
                    scale(block, 2)
                } else {
                    -8.0 * d
                }
            }
            BlockKind::Q8_0 => {
                let qs = &block[2..34];
                for j in 0..16 {
                    lo[j] = f32::from(qs[j] as i8);
                    hi[j] = f32::from(qs[j + 16] as i8);
                }
                0.0
            }
        };
        for i in 0..N {
            let r = r0 + i;
            let xb = &x[r * inner + b * BLOCK..r * inner + (b + 1) * BLOCK];
            let (xl, xh) = xb.split_at(16);
            for j in 0..16 {
                acc[i][j] += d * (lo[j] * xl[j] + hi[j] * xh[j]);
            }
            tail[i] += offset * xsum[r * blocks + b];
        }
    }
    for i in 0..N {
        out[i] = acc[i].iter().sum::<f32>() + tail[i];
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::compare::rel_l2;

    fn matrix(kind: BlockKind, out: usize, inner: usize, bytes: &[u8]) -> QuantMatrix {
        let bb = kind.block_bytes();
        let mut data: Vec<u8> = bytes
            .iter()
            .cycle()
            .take(out * inner / BLOCK * bb)
            .copied()
            .collect();
        // Keep the f16 scales finite and modest: exponent bits from the random byte, sign kept.
        for block in data.chunks_exact_mut(bb) {
            let fix = |lo: u8, hi: u8| {
                let v = f16::from_f32(
                    (f32::from(lo) / 255.0 + 0.01) * if hi & 1 == 0 { 0.1 } else { -0.1 },
                );
                v.to_bits().to_le_bytes()
            };
            let s = fix(block[0], block[1]);
            block[..2].copy_from_slice(&s);
            if kind == BlockKind::Q4_1 {
                let m = fix(block[2], block[3]);
                block[2..4].copy_from_slice(&m);
            }
        }
        QuantMatrix::new(kind, out, inner, data).expect("sized")
    }

    fn reference(m: &QuantMatrix, x: &[f32], rows: usize) -> Vec<f32> {
        let w = m.dequantize();
        let mut y = vec![0.0f32; rows * m.out];
        for r in 0..rows {
            for o in 0..m.out {
                y[r * m.out + o] = (0..m.inner)
                    .map(|i| f64::from(x[r * m.inner + i]) * f64::from(w[o * m.inner + i]))
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn dequantises_known_blocks() {
        let one = f16::from_f32(0.5).to_bits().to_le_bytes();
        let min = f16::from_f32(-1.0).to_bits().to_le_bytes();
        let mut q40 = one.to_vec();
        q40.extend([0x9a; 16]); // low nibble 10, high 9
        let w = QuantMatrix::new(BlockKind::Q4_0, 1, 32, q40)
            .expect("one block")
            .dequantize();
        assert_eq!((w[0], w[16]), (1.0, 0.5));
        let mut q41 = one.to_vec();
        q41.extend(min);
        q41.extend([0x9a; 16]);
        let w = QuantMatrix::new(BlockKind::Q4_1, 1, 32, q41)
            .expect("one block")
            .dequantize();
        assert_eq!((w[0], w[16]), (4.0, 3.5));
        let mut q80 = one.to_vec();
        q80.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let w = QuantMatrix::new(BlockKind::Q8_0, 1, 32, q80)
            .expect("one block")
            .dequantize();
        assert_eq!((w[0], w[31]), (-8.0, 7.5));
    }

    #[test]
    fn refuses_bad_shapes() {
        assert_eq!(
            QuantMatrix::new(BlockKind::Q4_1, 2, 48, vec![0; 60]),
            Err(QuantError::PartialBlock(48))
        );
        assert!(matches!(
            QuantMatrix::new(BlockKind::Q8_0, 2, 64, vec![0; 135]),
            Err(QuantError::Size { expected: 136, .. })
        ));
        let a = matrix(BlockKind::Q4_1, 2, 64, &[1, 2, 3]);
        let b = matrix(BlockKind::Q8_0, 2, 64, &[1, 2, 3]);
        assert_eq!(
            QuantMatrix::stack(vec![a.clone(), b]),
            Err(QuantError::Mismatch)
        );
        let ab = QuantMatrix::stack(vec![a.clone(), a.clone()]).expect("same format");
        assert_eq!((ab.out(), ab.data().len()), (4, 2 * a.data().len()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matmul_equals_the_dequantised_product(
            kind in prop::sample::select(vec![BlockKind::Q4_0, BlockKind::Q4_1, BlockKind::Q8_0]),
            out in 1usize..150,
            blocks in 1usize..6,
            rows in 1usize..9,
            bytes in prop::collection::vec(any::<u8>(), 64..256),
            xs in prop::collection::vec(-2.0f32..2.0, 64..256),
        ) {
            let inner = blocks * BLOCK;
            let m = matrix(kind, out, inner, &bytes);
            let x: Vec<f32> = xs.iter().cycle().take(rows * inner).copied().collect();
            let mut y = vec![f32::NAN; rows * out];
            m.matmul(&x, rows, &mut y);
            let want = reference(&m, &x, rows);
            prop_assert!(y.iter().all(|v| v.is_finite()));
            let err = rel_l2(&y, &want);
            prop_assert!(err < 1e-5, "{kind:?} {rows}x{inner}->{out}: rel l2 {err}");
        }
    }
}
