//! Block-quantised weight matrices as GGUF stores them (the formats of [`super::blocks`]), and
//! the product of a few f32 rows with such a matrix without dequantising it first. Batch-1 decode
//! on the CPU is bound by the bytes of weights it reads: 4.5–8.5 bits per weight here instead of
//! 32. A matrix may stack rows of several formats (a Q4_K_M file keeps Q in Q4_K and V in Q6_K).
//!
//! The products are exact up to f32 summation order against the dequantised matrix (the
//! activations stay f32; nothing is requantised).

use rayon::prelude::*;

use super::blocks::{BlockKind, UNIT};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("a {kind:?} row must be a whole number of {}-weight blocks, not {inner} weights", kind.block_weights())]
    PartialBlock { kind: BlockKind, inner: usize },
    #[error("{kind:?} data for {out} rows of {inner} weights is {expected} bytes, not {got}")]
    Size {
        kind: BlockKind,
        out: usize,
        inner: usize,
        expected: usize,
        got: usize,
    },
    #[error("quantised matrices stack only with the same row length")]
    Mismatch,
}

/// Rows `first..first + rows` of a matrix, all of one format (`row_bytes` each), at `offset` in
/// its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    kind: BlockKind,
    first: usize,
    rows: usize,
    row_bytes: usize,
    offset: usize,
}

/// An `[out, inner]` matrix of blocks, row-major: one or more segments of rows, each in one
/// format.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantMatrix {
    out: usize,
    inner: usize,
    segments: Vec<Segment>,
    data: Vec<u8>,
}

impl QuantMatrix {
    pub fn new(
        kind: BlockKind,
        out: usize,
        inner: usize,
        data: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if !inner.is_multiple_of(kind.block_weights()) {
            return Err(QuantError::PartialBlock { kind, inner });
        }
        let expected = out * inner / kind.block_weights() * kind.block_bytes();
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
            out,
            inner,
            segments: vec![Segment {
                kind,
                first: 0,
                rows: out,
                row_bytes: inner / kind.block_weights() * kind.block_bytes(),
                offset: 0,
            }],
            data,
        })
    }

    /// The formats of the rows, in row order (one per segment).
    pub fn kinds(&self) -> Vec<BlockKind> {
        self.segments.iter().map(|s| s.kind).collect()
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// The raw blocks, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The rows' blocks in row order, a run of one format at a time: each format and its bytes
    /// (consecutive slices of [`QuantMatrix::data`]).
    pub fn segments(&self) -> impl Iterator<Item = (BlockKind, &[u8])> + '_ {
        (self.segments.iter()).map(|s| {
            (
                s.kind,
                &self.data[s.offset..s.offset + s.rows * s.row_bytes],
            )
        })
    }

    /// The rows of `parts` one after the other (e.g. Q, K and V into one QKV matrix), each part
    /// keeping its format.
    pub fn stack(parts: Vec<Self>) -> Result<Self, QuantError> {
        let mut parts = parts.into_iter();
        let mut all = parts.next().ok_or(QuantError::Mismatch)?;
        for part in parts {
            if part.inner != all.inner {
                return Err(QuantError::Mismatch);
            }
            for s in part.segments {
                let segment = Segment {
                    first: all.out + s.first,
                    offset: all.data.len() + s.offset,
                    ..s
                };
                match all.segments.last_mut() {
                    Some(last) if last.kind == segment.kind => last.rows += segment.rows,
                    _ => all.segments.push(segment),
                }
            }
            all.out += part.out;
            all.data.extend_from_slice(&part.data);
        }
        Ok(all)
    }

    /// Row `o`'s format and bytes.
    #[inline]
    fn row(&self, o: usize) -> (BlockKind, &[u8]) {
        let s = self
            .segments
            .iter()
            .rfind(|s| s.first <= o)
            .unwrap_or(&self.segments[0]);
        let at = s.offset + (o - s.first) * s.row_bytes;
        (s.kind, &self.data[at..at + s.row_bytes])
    }

    /// `y[r, o] = x[r, :] · W[o, :]` for `rows` rows of `x` (`[rows, inner]`) into `y`
    /// (`[rows, out]`). Meant for a few rows: the weights are read and decoded once per group of
    /// four rows, so the arithmetic grows with the rows while the bytes read do not.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_first(x, rows, self.out, y);
    }

    /// [`matmul`](Self::matmul) with the first `out` rows of the matrix (`y` is `[rows, out]`).
    pub fn matmul_first(&self, x: &[f32], rows: usize, out: usize, y: &mut [f32]) {
        assert!(out <= self.out, "quant matmul: {out} of {} rows", self.out);
        assert_eq!(
            x.len(),
            rows * self.inner,
            "quant matmul: x is not rows × inner"
        );
        assert_eq!(y.len(), rows * out, "quant matmul: y is not rows × out");
        if rows == 0 || out == 0 {
            return;
        }
        // Σx of each unit of each row (the terms of the units' minimums and offsets).
        let xsum: Vec<f32> = x.chunks_exact(UNIT).map(|b| b.iter().sum()).collect();
        let row_bytes = self.data.len() / self.out;
        // Tasks of at least 64 KiB of blocks (a hand-off costs microseconds), a few per thread.
        let threads = rayon::current_num_threads();
        let chunk_rows = out
            .div_ceil(4 * threads)
            .max((64 << 10) / row_bytes.max(1))
            .max(1);
        let kernel = pick_kernel();
        // Output-major scratch so that tasks own whole output rows.
        let mut t = vec![0.0f32; out * rows];
        let task = |(c, out_chunk): (usize, &mut [f32])| {
            for (i, dst) in out_chunk.chunks_exact_mut(rows).enumerate() {
                let (kind, w) = self.row(c * chunk_rows + i);
                kernel(kind, w, x, &xsum, dst);
            }
        };
        if out <= chunk_rows {
            task((0, &mut t));
        } else {
            t.par_chunks_mut(chunk_rows * rows)
                .enumerate()
                .for_each(task);
        }
        for (o, values) in t.chunks_exact(rows).enumerate() {
            for (r, v) in values.iter().enumerate() {
                y[r * out + o] = *v;
            }
        }
    }

    /// The matrix as f32 (what `matmul` must equal up to summation order).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.out * self.inner);
        let mut values = [0.0f32; UNIT];
        for o in 0..self.out {
            let (kind, row) = self.row(o);
            for block in row.chunks_exact(kind.block_bytes()) {
                for u in 0..kind.units() {
                    let s = kind.decode_unit(block, u, &mut values);
                    let (first, last) = values.split_at(16);
                    out.extend(first.iter().map(|v| s.first * v + s.constant));
                    out.extend(last.iter().map(|v| s.last * v + s.constant));
                }
            }
        }
        out
    }
}

/// One weight row against every activation row: `dst[r] = x[r, :] · w`.
type RowKernel = fn(BlockKind, &[u8], &[f32], &[f32], &mut [f32]);

/// The widest build of [`row_dot`] this CPU runs.
fn pick_kernel() -> RowKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return |k, w, x, s, d| {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { row_dot_avx512(k, w, x, s, d) }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return |k, w, x, s, d| {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { row_dot_avx2(k, w, x, s, d) }
            };
        }
    }
    row_dot
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_dot_avx512(k: BlockKind, w: &[u8], x: &[f32], xs: &[f32], d: &mut [f32]) {
    row_dot(k, w, x, xs, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_dot_avx2(k: BlockKind, w: &[u8], x: &[f32], xs: &[f32], d: &mut [f32]) {
    row_dot(k, w, x, xs, d)
}

/// One weight row against every activation row: [`rows_of`] built for each format (the kind a
/// constant in each build, so its decoding folds into straight-line code).
#[inline(always)]
fn row_dot(kind: BlockKind, w: &[u8], x: &[f32], xsum: &[f32], dst: &mut [f32]) {
    macro_rules! each_kind {
        ($($k:ident),*) => {
            match kind {
                $(BlockKind::$k => rows_of(BlockKind::$k, w, x, xsum, dst),)*
            }
        };
    }
    each_kind!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
}

/// One weight row of `kind` against every activation row, four rows at a time.
#[inline(always)]
fn rows_of(kind: BlockKind, w: &[u8], x: &[f32], xsum: &[f32], dst: &mut [f32]) {
    let mut r0 = 0;
    while r0 < dst.len() {
        let n = (dst.len() - r0).min(4);
        let out = &mut dst[r0..r0 + n];
        match n {
            1 => rows_dot::<1>(kind, w, x, xsum, r0, out),
            2 => rows_dot::<2>(kind, w, x, xsum, r0, out),
            3 => rows_dot::<3>(kind, w, x, xsum, r0, out),
            _ => rows_dot::<4>(kind, w, x, xsum, r0, out),
        }
        r0 += n;
    }
}

/// `N` activation rows from `r0` against one weight row: each unit of 32 weights is decoded once
/// into its quants, then lane-wise arithmetic (16 lanes, no reassociation needed) that the
/// compiler vectorises for whichever target features its caller enables; the unit's scale
/// multiplies each row's sum (Q6_K: one scale per 16 lanes), and its constant (a minimum or an
/// offset) the unit's sum of `x`.
#[inline(always)]
fn rows_dot<const N: usize>(
    kind: BlockKind,
    w: &[u8],
    x: &[f32],
    xsum: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    let (bb, units) = (kind.block_bytes(), kind.units());
    let row_units = w.len() / bb * units;
    let inner = row_units * UNIT;
    let mut acc = [[0.0f32; 16]; N];
    let mut tail = [0.0f32; N];
    for (b, block) in w.chunks_exact(bb).enumerate() {
        for u in 0..units {
            let mut values = [0.0f32; UNIT];
            let s = kind.decode_unit(block, u, &mut values);
            let unit = b * units + u;
            let (lo, hi) = values.split_at(16);
            for i in 0..N {
                let r = r0 + i;
                let xb = &x[r * inner + unit * UNIT..r * inner + (unit + 1) * UNIT];
                let (xl, xh) = xb.split_at(16);
                if kind != BlockKind::Q6_K {
                    for j in 0..16 {
                        acc[i][j] += s.first * (lo[j] * xl[j] + hi[j] * xh[j]);
                    }
                } else {
                    for j in 0..16 {
                        acc[i][j] += s.first * lo[j] * xl[j] + s.last * hi[j] * xh[j];
                    }
                }
                tail[i] += s.constant * xsum[r * row_units + unit];
            }
        }
    }
    for i in 0..N {
        out[i] = acc[i].iter().sum::<f32>() + tail[i];
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use proptest::prelude::*;

    use super::*;
    use crate::compare::rel_l2;

    const KINDS: [BlockKind; 8] = [
        BlockKind::Q4_0,
        BlockKind::Q4_1,
        BlockKind::Q5_0,
        BlockKind::Q5_1,
        BlockKind::Q8_0,
        BlockKind::Q4_K,
        BlockKind::Q5_K,
        BlockKind::Q6_K,
    ];

    fn matrix(kind: BlockKind, out: usize, inner: usize, bytes: &[u8]) -> QuantMatrix {
        let bb = kind.block_bytes();
        let mut data: Vec<u8> = bytes
            .iter()
            .cycle()
            .take(out * inner / kind.block_weights() * bb)
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
            for &at in kind.f16_fields() {
                let v = fix(block[at], block[at + 1]);
                block[at..at + 2].copy_from_slice(&v);
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
            Err(QuantError::PartialBlock {
                kind: BlockKind::Q4_1,
                inner: 48
            })
        );
        assert!(matches!(
            QuantMatrix::new(BlockKind::Q4_K, 1, 128, vec![0; 72]),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(matches!(
            QuantMatrix::new(BlockKind::Q8_0, 2, 64, vec![0; 135]),
            Err(QuantError::Size { expected: 136, .. })
        ));
        let a = matrix(BlockKind::Q4_1, 2, 64, &[1, 2, 3]);
        let b = matrix(BlockKind::Q8_0, 2, 32, &[1, 2, 3]);
        assert_eq!(
            QuantMatrix::stack(vec![a.clone(), b]),
            Err(QuantError::Mismatch)
        );
        let aa = QuantMatrix::stack(vec![a.clone(), a.clone()]).expect("same format");
        assert_eq!((aa.out(), aa.data().len()), (4, 2 * a.data().len()));
        assert_eq!(aa.kinds(), [BlockKind::Q4_1], "one segment");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matmul_equals_the_dequantised_product(
            kind in prop::sample::select(KINDS.to_vec()),
            out in 1usize..150,
            blocks in 1usize..4,
            rows in 1usize..9,
            bytes in prop::collection::vec(any::<u8>(), 64..256),
            xs in prop::collection::vec(-2.0f32..2.0, 64..256),
        ) {
            let inner = blocks * kind.block_weights();
            let m = matrix(kind, out, inner, &bytes);
            let x: Vec<f32> = xs.iter().cycle().take(rows * inner).copied().collect();
            let mut y = vec![f32::NAN; rows * out];
            m.matmul(&x, rows, &mut y);
            let want = reference(&m, &x, rows);
            prop_assert!(y.iter().all(|v| v.is_finite()));
            let err = rel_l2(&y, &want);
            prop_assert!(err < 1e-5, "{kind:?} {rows}x{inner}->{out}: rel l2 {err}");
            // The first rows alone are the same columns of the product.
            let first = out.div_ceil(2);
            let mut part = vec![f32::NAN; rows * first];
            m.matmul_first(&x, rows, first, &mut part);
            for r in 0..rows {
                prop_assert_eq!(&part[r * first..(r + 1) * first], &y[r * out..r * out + first]);
            }
        }

        #[test]
        fn a_stack_of_formats_is_its_parts_one_after_the_other(
            parts in prop::collection::vec((prop::sample::select(KINDS.to_vec()), 1usize..40), 1..4),
            rows in 1usize..9,
            bytes in prop::collection::vec(any::<u8>(), 64..256),
            xs in prop::collection::vec(-2.0f32..2.0, 64..256),
        ) {
            let inner = 512;
            let parts: Vec<QuantMatrix> =
                parts.iter().map(|&(kind, out)| matrix(kind, out, inner, &bytes)).collect();
            let m = QuantMatrix::stack(parts.clone()).expect("same row length");
            let want: Vec<f32> = parts.iter().flat_map(QuantMatrix::dequantize).collect();
            prop_assert_eq!(m.dequantize(), want);
            // Its segments: runs of one format, in row order, that together are its bytes.
            let segments: Vec<(BlockKind, &[u8])> = m.segments().collect();
            prop_assert_eq!(segments.iter().flat_map(|s| s.1.iter().copied()).collect::<Vec<u8>>(), m.data().to_vec());
            prop_assert!(segments.windows(2).all(|w| w[0].0 != w[1].0));
            let mut runs: Vec<BlockKind> = parts.iter().flat_map(QuantMatrix::kinds).collect();
            runs.dedup();
            prop_assert_eq!(segments.iter().map(|s| s.0).collect::<Vec<_>>(), runs);
            let x: Vec<f32> = xs.iter().cycle().take(rows * inner).copied().collect();
            let mut y = vec![f32::NAN; rows * m.out()];
            m.matmul(&x, rows, &mut y);
            let err = rel_l2(&y, &reference(&m, &x, rows));
            prop_assert!(err < 1e-5, "{:?}: rel l2 {err}", m.kinds());
        }
    }
}
