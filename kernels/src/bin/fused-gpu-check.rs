//! `fused-gpu-check`: every CUDA kernel against its CPU reference on fresh random inputs.
//!
//! Outputs are poisoned (all bits set: NaN in bf16 and f32) before each run, inputs are random
//! (never zeros), and each result is compared by relative L2 error; NaN never passes. Prints one
//! line per check and exits non-zero if any fails (2 when there is no usable GPU).

use fused_kernels::compare::rel_l2;
use fused_kernels::cpu::{self, AttentionShape, BlockKind, QuantMatrix, RopeTable};
use fused_kernels::cuda::{
    BatchArrays, BatchShape, Blas, BlockFormat, BlockMatrix, CudaError, DecodeSplits, DeviceBatch,
    DeviceBuffer, DeviceView, E4M3_MAX, Element, Fp8Matrix, GEMV_MAX_ROWS, GemvBuild, GpuDevice,
    IndexBuffer, Kernels, Linear, LinearOut, LinearShape, NormRows, PREFILL_TILE_ROWS,
    PositionEmbedding, RopeTables, WeightView, e4m3_to_f32,
};
use half::bf16;

/// SplitMix64: a small seeded generator (the check must not depend on dev-only crates).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Rounds through bf16, as the GPU sees its inputs.
fn round_bf16(v: &[f32]) -> Vec<f32> {
    from_bf16(&to_bf16(v))
}

/// Tolerances from the method: fp32 arithmetic far under 1e-3; bf16 results under 1e-2.
const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 1e-2;

struct Check<'a> {
    dev: &'a GpuDevice,
    kernels: Kernels,
    blas: &'a Blas,
    rng: Rng,
    failures: usize,
}

impl Check<'_> {
    fn report(&mut self, name: &str, err: f64, tol: f64) {
        let pass = err.is_finite() && err <= tol;
        if !pass {
            self.failures += 1;
        }
        println!(
            "{:<44} rel_l2 {:>10.3e}  tol {:>7.0e}  {}",
            name,
            err,
            tol,
            if pass { "PASS" } else { "FAIL" }
        );
    }

    fn buffer<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer<T>, CudaError> {
        self.dev.upload_new(data)
    }

    /// An output buffer of `n` elements of `T`, all bits set (NaN).
    fn poisoned<T: Element>(&self, n: usize) -> Result<DeviceBuffer<T>, CudaError> {
        let mut buf = self.dev.alloc(n)?;
        self.dev.fill_bytes(&mut buf, 0xff)?;
        Ok(buf)
    }

    fn read<T: Element + Default>(&self, buf: &impl DeviceView<T>) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); buf.view().len()];
        self.dev.download(buf, &mut out)?;
        Ok(out)
    }

    fn read_bf16(&self, buf: &impl DeviceView<bf16>) -> Result<Vec<f32>, CudaError> {
        Ok(from_bf16(&self.read(buf)?))
    }

    /// A bf16 product through cuBLAS, and through the GEMV within its rows, against the CPU.
    fn gemm(&mut self, rows: usize, out: usize, inner: usize) -> Result<(), CudaError> {
        let x = round_bf16(&self.rng.vec(rows * inner, -1.0, 1.0));
        let w = round_bf16(&self.rng.vec(out * inner, -0.1, 0.1));
        let mut want = vec![0.0; rows * out];
        cpu::linear(&x, &w, None, rows, out, &mut want);
        let (xd, wd) = (self.buffer(&to_bf16(&x))?, self.buffer(&to_bf16(&w))?);
        let shape = LinearShape { rows, out, inner };
        let name = format!("gemm bf16 {rows}x{out}x{inner}");
        self.each_output(&name, &want, FP32_TOL, |check, y| {
            check.blas.gemm(Linear::new(&xd, &wd, y, shape)?)
        })?;
        if rows <= GEMV_MAX_ROWS {
            self.each_output(
                &format!("gemv {} {rows}x{out}x{inner}", self.gemv_kind()),
                &want,
                FP32_TOL,
                |check, y| check.kernels.gemv(Linear::new(&xd, &wd, y, shape)?),
            )?;
        }
        Ok(())
    }

    /// Runs `product` once into each output (a fresh f32 buffer, `y +=` onto random values, a
    /// fresh bf16 buffer) and reports each against `want`: the f32 ones within `f32_tol`, the
    /// bf16 one within `BF16_TOL`.
    fn each_output(
        &mut self,
        name: &str,
        want: &[f32],
        f32_tol: f64,
        mut product: impl FnMut(&Self, LinearOut<'_>) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let n = want.len();
        let y0 = self.rng.vec(n, -1.0, 1.0);
        let want_acc: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        let mut y = self.poisoned::<f32>(n)?;
        let mut acc = self.buffer(&y0)?;
        let mut yb = self.poisoned::<bf16>(n)?;
        product(self, LinearOut::f32(&mut y))?;
        product(self, LinearOut::add_f32(&mut acc))?;
        product(self, LinearOut::bf16(&mut yb))?;
        let got = self.read(&y)?;
        self.report(&format!("{name} ->f32"), rel_l2(&got, want), f32_tol);
        let got = self.read(&acc)?;
        self.report(&format!("{name} y+="), rel_l2(&got, &want_acc), f32_tol);
        let got = self.read_bf16(&yb)?;
        self.report(&format!("{name} ->bf16"), rel_l2(&got, want), BF16_TOL);
        Ok(())
    }

    /// Which GEMV build the checks run (the names say it).
    fn gemv_kind(&self) -> &'static str {
        match self.kernels.gemv_build {
            GemvBuild::TensorCores => "mma",
            GemvBuild::PerRow => "per-row",
            GemvBuild::Auto => "auto",
        }
    }

    /// The GEMV with its rows split over 1, the default number of and 8 warps, plain and with
    /// SwiGLU folded in (`w` a stacked `[gate; up]` of `2 out` rows), against a GEMM and SwiGLU
    /// on the CPU.
    fn gemv_splits(&mut self, rows: usize, out: usize, inner: usize) -> Result<(), CudaError> {
        let x = round_bf16(&self.rng.vec(rows * inner, -1.0, 1.0));
        let w = round_bf16(&self.rng.vec(2 * out * inner, -0.1, 0.1));
        let mut want = vec![0.0; rows * 2 * out];
        cpu::linear(&x, &w, None, rows, 2 * out, &mut want);
        let mut act = vec![0.0; rows * out];
        cpu::silu_mul(&want, out, &mut act);
        let (xd, wd) = (self.buffer(&to_bf16(&x))?, self.buffer(&to_bf16(&w))?);
        let stacked = LinearShape {
            rows,
            out: 2 * out,
            inner,
        };
        let halves = LinearShape { out, ..stacked };
        let default_blocks = self.kernels.gemv_min_blocks;
        let splits = [("1", 0), ("default", default_blocks), ("8", usize::MAX)];
        for (split, min_blocks) in splits {
            self.kernels.gemv_min_blocks = min_blocks;
            let mut y = self.poisoned::<f32>(rows * 2 * out)?;
            let mut y_act = self.poisoned::<bf16>(rows * out)?;
            let k = &self.kernels;
            k.gemv(Linear::new(&xd, &wd, LinearOut::f32(&mut y), stacked)?)?;
            k.gemv_swiglu(&xd, &wd, &mut y_act, halves)?;
            let kind = self.gemv_kind();
            let name = format!("gemv {kind} {rows}x{}x{inner} split {split}", 2 * out);
            let got = self.read(&y)?;
            self.report(&format!("{name} ->f32"), rel_l2(&got, &want), FP32_TOL);
            let got = self.read_bf16(&y_act)?;
            self.report(&format!("{name} +SwiGLU"), rel_l2(&got, &act), BF16_TOL);
        }
        self.kernels.gemv_min_blocks = default_blocks;
        Ok(())
    }

    /// FP8 weights: quantized on the device to within half an E4M3 step of each value with
    /// scale = row max / 448, expanded back as the host decodes the codes, and the product
    /// (the GEMV, or cuBLAS on the expansion past the GEMV's rows: both through
    /// `linear_dense`) plain, accumulating, to bf16 and with SwiGLU folded in, against the CPU
    /// product with the decoded weights.
    fn fp8(&mut self, rows: usize, out: usize, inner: usize) -> Result<(), CudaError> {
        let w = round_bf16(&self.rng.vec(2 * out * inner, -0.1, 0.1));
        let wd = self.buffer(&to_bf16(&w))?;
        let m = Fp8Matrix::quantize(self.dev, &self.kernels, &wd, 2 * out, inner)?;
        let (codes, scales) = (self.read(m.codes())?, self.read(m.scales())?);
        let decoded: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| e4m3_to_f32(c) * scales[i / inner])
            .collect();
        // Half a step: 2^-4 of the value for normal codes, 2^-10 of the scale below them.
        let steps = w.iter().zip(&decoded).enumerate().map(|(i, (&v, &d))| {
            let half_step = 2f32.powi(-4) * v.abs() + 2f32.powi(-10) * scales[i / inner];
            f64::from((d - v).abs() / half_step)
        });
        let worst_step = steps.fold(0.0, f64::max);
        let worst_scale = w
            .chunks(inner)
            .zip(&scales)
            .map(|(row, &s)| {
                let largest = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                f64::from((s - largest / E4M3_MAX).abs() / s)
            })
            .fold(0.0, f64::max);
        let name = format!("fp8 {} {rows}x{}x{inner}", self.gemv_kind(), 2 * out);
        self.report(&format!("{name} quantize (half-steps)"), worst_step, 1.0);
        self.report(&format!("{name} scales"), worst_scale, 1e-6);
        let mut dense = self.poisoned::<bf16>(2 * out * inner)?;
        self.kernels.dequantize_fp8(&m, &mut dense)?;
        self.quantized_products(&name, &m, &decoded, rows, out, &mut dense)
    }

    /// Quantized weights `m` (`[2 out, inner]`, decoding to `decoded`): their expansion already
    /// in `dense` against the decoded values, then their products with random rows through
    /// `linear_dense` (the GEMV, or cuBLAS on the expansion into `dense` past its rows) plain,
    /// accumulating and to bf16, and with SwiGLU folded in where the GEMV takes them, against the
    /// CPU product with the decoded weights.
    fn quantized_products(
        &mut self,
        name: &str,
        m: &impl WeightView,
        decoded: &[f32],
        rows: usize,
        out: usize,
        dense: &mut DeviceBuffer<bf16>,
    ) -> Result<(), CudaError> {
        let inner = decoded.len() / (2 * out);
        let got = self.read_bf16(&*dense)?;
        self.report(
            &format!("{name} expand"),
            rel_l2(&got, &round_bf16(decoded)),
            1e-6,
        );
        let x = round_bf16(&self.rng.vec(rows * inner, -1.0, 1.0));
        let xd = self.buffer(&to_bf16(&x))?;
        let mut want = vec![0.0; rows * 2 * out];
        cpu::linear(&x, decoded, None, rows, 2 * out, &mut want);
        let shape = LinearShape {
            rows,
            out: 2 * out,
            inner,
        };
        // The GEMV sums in f32; cuBLAS multiplies the bf16 expansion (rounded weights).
        let gemv = Kernels::gemv_takes(&m.weights(), rows, inner);
        let tol = if gemv { FP32_TOL } else { BF16_TOL };
        self.each_output(name, &want, tol, |check, y| {
            let layer = Linear::new(&xd, m, y, shape)?;
            check.kernels.linear_dense(check.blas, layer, &mut *dense)
        })?;
        if gemv {
            let mut act = vec![0.0; rows * out];
            cpu::silu_mul(&want, out, &mut act);
            let mut y_act = self.poisoned::<bf16>(rows * out)?;
            let halves = LinearShape { out, ..shape };
            self.kernels.gemv_swiglu(&xd, m, &mut y_act, halves)?;
            let got = self.read_bf16(&y_act)?;
            self.report(&format!("{name} +SwiGLU"), rel_l2(&got, &act), BF16_TOL);
        }
        Ok(())
    }

    /// GGUF blocks (Q8_0, Q4_K) of random bytes with modest f16 scales: expanded on the device
    /// as the host decodes them, and the product (the GEMV reading the blocks, or cuBLAS on the
    /// expansion past its rows) plain, accumulating, to bf16 and with SwiGLU folded in, against
    /// the CPU product with the decoded weights.
    fn blocks(
        &mut self,
        kind: BlockKind,
        rows: usize,
        out: usize,
        inner: usize,
    ) -> Result<(), CudaError> {
        let format = BlockFormat::of(kind).expect("a device block format");
        let bytes = self.random_blocks(kind, 2 * out, inner);
        let host = QuantMatrix::new(kind, 2 * out, inner, bytes.clone())
            .map_err(|e| CudaError::Invalid(e.to_string()))?;
        let decoded = host.dequantize();
        let m = BlockMatrix::upload(self.dev, format, 2 * out, inner, &bytes)?;
        let name = format!("{kind:?} {rows}x{}x{inner}", 2 * out);
        let mut dense = self.poisoned::<bf16>(2 * out * inner)?;
        self.kernels.dequantize_blocks(&m, &mut dense)?;
        self.quantized_products(&name, &m, &decoded, rows, out, &mut dense)
    }

    /// Random blocks of `kind` for an `[out, inner]` matrix, their f16 scales (and minimums) of
    /// magnitude 1e-4..1e-2, either sign.
    fn random_blocks(&mut self, kind: BlockKind, out: usize, inner: usize) -> Vec<u8> {
        let bb = kind.block_bytes();
        let mut bytes: Vec<u8> = (0..out * inner / kind.block_weights() * bb)
            .map(|_| self.rng.next_u64() as u8)
            .collect();
        for block in bytes.chunks_exact_mut(bb) {
            for &at in kind.f16_fields() {
                let v = half::f16::from_f32(
                    self.rng.uniform(1e-4, 1e-2) * if self.rng.below(2) == 0 { 1.0 } else { -1.0 },
                );
                block[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        bytes
    }

    /// Each GGUF format the host reads, expanded to bf16 on the device (`expand_gguf`): the
    /// host's dequantisation of the same blocks rounded to bf16, bit for bit (tolerance 0).
    fn expand_gguf(&mut self, out: usize, inner: usize) -> Result<(), CudaError> {
        use BlockKind::*;
        for kind in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K] {
            let bytes = self.random_blocks(kind, out, inner);
            let host = QuantMatrix::new(kind, out, inner, bytes.clone())
                .map_err(|e| CudaError::Invalid(e.to_string()))?;
            let want = round_bf16(&host.dequantize());
            let blocks = self.buffer(&bytes)?;
            let mut dense = self.poisoned::<bf16>(out * inner)?;
            self.kernels
                .expand_gguf(kind, blocks.view(), dense.view_mut())?;
            let got = self.read_bf16(&dense)?;
            let name = format!("expand {kind:?} {out}x{inner} (exact)");
            self.report(&name, rel_l2(&got, &want), 0.0);
        }
        Ok(())
    }

    /// The embedding gather alone and with learned positions, then RMSNorm and LayerNorm over
    /// gathered rows.
    fn embed_and_norm(
        &mut self,
        rows: usize,
        hidden: usize,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let table = round_bf16(&self.rng.vec(vocab * hidden, -1.0, 1.0));
        let tokens: Vec<u32> = (0..rows).map(|_| self.rng.below(vocab) as u32).collect();
        let td = IndexBuffer::upload(self.dev, &tokens, vocab)?;
        let tabd = self.buffer(&to_bf16(&table))?;
        let mut x = self.poisoned::<f32>(rows * hidden)?;
        self.kernels
            .embed(td.indices(), &tabd, None, &mut x, hidden)?;
        let got = self.read(&x)?;
        let mut want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| table[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
            .collect();
        self.report(&format!("embed {rows}x{hidden}"), rel_l2(&got, &want), 0.0);

        let max_positions = 2 * rows + 3;
        let pos_table = round_bf16(&self.rng.vec(max_positions * hidden, -1.0, 1.0));
        let positions: Vec<u32> = (0..rows)
            .map(|_| self.rng.below(max_positions) as u32)
            .collect();
        let pd = IndexBuffer::upload(self.dev, &positions, max_positions)?;
        let pos_tabd = self.buffer(&to_bf16(&pos_table))?;
        let learned = PositionEmbedding {
            positions: pd.indices().into(),
            table: pos_tabd.view(),
        };
        let mut x = self.poisoned::<f32>(rows * hidden)?;
        (self.kernels).embed(td.indices(), &tabd, Some(learned), &mut x, hidden)?;
        let got = self.read(&x)?;
        for (row, &p) in want.chunks_exact_mut(hidden).zip(&positions) {
            let p = p as usize;
            for (v, add) in row.iter_mut().zip(&pos_table[p * hidden..(p + 1) * hidden]) {
                *v += add;
            }
        }
        let name = format!("embed + positions {rows}x{hidden}");
        self.report(&name, rel_l2(&got, &want), 0.0);

        // Rows with a large common offset: LayerNorm must subtract the mean first.
        let xs: Vec<f32> = (self.rng.vec(rows * hidden, -2.0, 2.0).iter())
            .map(|v| v + 3.0)
            .collect();
        let weight = self.rng.vec(hidden, 0.5, 1.5);
        let bias = self.rng.vec(hidden, -0.5, 0.5);
        let map: Vec<u32> = (0..rows).rev().step_by(2).map(|r| r as u32).collect();
        let (xd, wd, bd) = (
            self.buffer(&xs)?,
            self.buffer(&weight)?,
            self.buffer(&bias)?,
        );
        let md = IndexBuffer::upload(self.dev, &map, rows)?;
        let gathered: Vec<f32> = map
            .iter()
            .flat_map(|&r| xs[r as usize * hidden..(r as usize + 1) * hidden].to_vec())
            .collect();
        let mut out = self.poisoned::<bf16>(map.len() * hidden)?;
        let gather = NormRows::Gather(md.indices());
        self.kernels
            .rms_norm(&xd, &wd, &mut out, gather, hidden, 1e-5)?;
        let got = self.read_bf16(&out)?;
        let mut want = vec![0.0; gathered.len()];
        cpu::rms_norm(&gathered, &weight, 1e-5, &mut want);
        let name = format!("rms_norm (row map) {}x{hidden}", map.len());
        self.report(&name, rel_l2(&got, &want), BF16_TOL);

        let mut out = self.poisoned::<bf16>(map.len() * hidden)?;
        self.kernels
            .layer_norm(&xd, &wd, &bd, &mut out, gather, hidden, 1e-5)?;
        let got = self.read_bf16(&out)?;
        cpu::layer_norm(&gathered, &weight, &bias, 1e-5, &mut want);
        let name = format!("layer_norm (row map) {}x{hidden}", map.len());
        self.report(&name, rel_l2(&got, &want), BF16_TOL);
        Ok(())
    }

    /// GELU of bf16 rows plus a bias, and a bias added to f32 rows.
    fn gelu_and_bias(&mut self, rows: usize, n: usize) -> Result<(), CudaError> {
        let input = round_bf16(&self.rng.vec(rows * n, -4.0, 4.0));
        let bias = self.rng.vec(n, -0.5, 0.5);
        let (ind, bd) = (self.buffer(&to_bf16(&input))?, self.buffer(&bias)?);
        let mut out = self.poisoned::<bf16>(rows * n)?;
        self.kernels.gelu_bias(&ind, &bd, &mut out, rows, n)?;
        let got = self.read_bf16(&out)?;
        let mut want: Vec<f32> = input.clone();
        cpu::add_bias(&mut want, &bias);
        cpu::gelu_tanh_inplace(&mut want);
        let name = format!("gelu_bias {rows}x{n}");
        self.report(&name, rel_l2(&got, &want), BF16_TOL);

        let mut xd = self.buffer(&input)?;
        self.kernels.add_bias(&mut xd, &bd, rows, n)?;
        let got = self.read(&xd)?;
        let mut want = input;
        cpu::add_bias(&mut want, &bias);
        self.report(&format!("add_bias {rows}x{n}"), rel_l2(&got, &want), 0.0);
        Ok(())
    }

    fn silu_and_argmax(&mut self, rows: usize, ffn: usize, vocab: usize) -> Result<(), CudaError> {
        let gu = round_bf16(&self.rng.vec(rows * 2 * ffn, -4.0, 4.0));
        let gd = self.buffer(&to_bf16(&gu))?;
        let mut out = self.poisoned::<bf16>(rows * ffn)?;
        self.kernels.silu_mul(&gd, &mut out, rows, ffn)?;
        let got = self.read_bf16(&out)?;
        let mut want = vec![0.0; rows * ffn];
        cpu::silu_mul(&gu, ffn, &mut want);
        self.report(
            &format!("silu_mul {rows}x{ffn}"),
            rel_l2(&got, &want),
            BF16_TOL,
        );

        let logits = self.rng.vec(rows * vocab, -10.0, 10.0);
        let ld = self.buffer(&logits)?;
        let mut idx = self.poisoned::<u32>(rows)?;
        self.kernels.argmax(&ld, &mut idx, rows, vocab)?;
        let got = self.read(&idx)?;
        let want: Vec<u32> = logits
            .chunks_exact(vocab)
            .map(|row| {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                best as u32
            })
            .collect();
        let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        self.report(
            &format!("argmax {rows}x{vocab} (fraction wrong)"),
            wrong as f64 / rows as f64,
            0.0,
        );
        Ok(())
    }

    fn fill(&mut self) -> Result<(), CudaError> {
        let n = 1 << 20;
        let mut buf = self.poisoned::<bf16>(n)?;
        self.kernels.fill_uniform(&mut buf, 7, -0.5, 0.5)?;
        let got = self.read_bf16(&buf)?;
        let mean = got.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = got.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64;
        let in_range = got.iter().all(|x| (-0.5..=0.5).contains(x));
        // Uniform(-0.5, 0.5): mean 0, variance 1/12.
        let err = if in_range {
            (mean.abs() + (var - 1.0 / 12.0).abs()) * 12.0
        } else {
            f64::NAN
        };
        self.report("fill_uniform bf16 (moments)", err, 1e-2);
        Ok(())
    }

    /// Several sequences at once: RoPE + K/V scatter into a strided region, then attention
    /// (prefill chunks through the tensor-core kernel, single tokens through split-KV decode).
    fn attention(
        &mut self,
        shape: AttentionShape,
        seqs: &[(usize, usize)],
    ) -> Result<(), CudaError> {
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
        } = shape;
        let (q_dim, kv_dim) = (heads * d, kv_heads * d);
        let width = q_dim + 2 * kv_dim;
        let max_pos = seqs.iter().map(|(s, n)| s + n).max().unwrap_or(1);
        let rope = RopeTable::new(d, 10_000.0, None, max_pos);
        // Region: per sequence max_pos positions; a position holds K then V then 16 spare bytes,
        // like the interleaved layout's strided rows. `at(i, p, v)`: element offset of sequence
        // i's K (v = 0) or V (v = 1) at position p.
        let stride = 2 * kv_dim + 8;
        let at = |i: usize, p: usize, v: usize| (i * max_pos + p) * stride + v * kv_dim;
        let mut region = self.poisoned::<bf16>(seqs.len() * max_pos * stride)?;
        let base = region.view().address();
        let kv_ptrs: Vec<u64> = (0..seqs.len())
            .flat_map(|i| [at(i, 0, 0), at(i, 0, 1)].map(|e| base + 2 * e as u64))
            .collect();
        // History keys/values (positions before each chunk) are written by the host.
        let mut k_hist: Vec<Vec<f32>> = Vec::new();
        let mut v_hist: Vec<Vec<f32>> = Vec::new();
        for (i, &(start, _)) in seqs.iter().enumerate() {
            let k = round_bf16(&self.rng.vec(start * kv_dim, -1.0, 1.0));
            let v = round_bf16(&self.rng.vec(start * kv_dim, -1.0, 1.0));
            for p in 0..start {
                for (which, rows) in [(0, &k), (1, &v)] {
                    let row = to_bf16(&rows[p * kv_dim..(p + 1) * kv_dim]);
                    let e = at(i, p, which);
                    self.dev
                        .upload(&mut region.slice_mut(e..e + kv_dim)?, &row)?;
                }
            }
            k_hist.push(k);
            v_hist.push(v);
        }
        // Batch rows: the chunks' tokens, then two padding rows.
        let total: usize = seqs.iter().map(|(_, n)| n).sum();
        let rows = total + 2;
        let qkv = self.rng.vec(rows * width, -1.0, 1.0);
        // Qwen2's Q/K/V biases: one vector added to every row before the rotation.
        let bias = self.rng.vec(width, -0.5, 0.5);
        let (mut positions, mut row_chunk) = (Vec::new(), Vec::new());
        let (mut q_start, mut lens, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &(start, n)) in seqs.iter().enumerate() {
            q_start.push(positions.len() as u32);
            lens.push(n as u32);
            starts.push(start as u32);
            for t in 0..n {
                positions.push((start + t) as u32);
                row_chunk.push(i as u32);
            }
        }
        positions.extend([u32::MAX, u32::MAX]);
        row_chunk.extend([0, 0]);
        // Prefill tiles over the multi-token chunks, decodes for the single tokens.
        let (mut tile_chunk, mut tile_row0, mut dec_row, mut dec_chunk) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, &(_, n)) in seqs.iter().enumerate() {
            if n == 1 {
                dec_row.push(q_start[i]);
                dec_chunk.push(i as u32);
            } else {
                for r0 in (0..n).step_by(PREFILL_TILE_ROWS) {
                    tile_chunk.push(i as u32);
                    tile_row0.push(r0 as u32);
                }
            }
        }
        let tokens = vec![0u32; rows];
        let lists = [
            &tokens,
            &positions,
            &row_chunk,
            &q_start,
            &lens,
            &starts,
            &tile_chunk,
            &tile_row0,
            &dec_row,
            &dec_chunk,
            &Vec::new(),
        ]
        .map(|list| self.buffer(list));
        let [tok, pos, chunk, qs, len, st, tc, tr, dr, dc, head] = lists;
        let (tok, pos, chunk, qs, len, st) = (tok?, pos?, chunk?, qs?, len?, st?);
        let (tc, tr, dr, dc, head) = (tc?, tr?, dr?, dc?, head?);
        let kv_d = self.buffer(&kv_ptrs)?;
        let arrays = BatchArrays {
            tokens: tok.view(),
            positions: pos.view(),
            row_chunk: chunk.view(),
            chunk_q_start: qs.view(),
            chunk_len: len.view(),
            chunk_start: st.view(),
            tile_chunk: tc.view(),
            tile_row0: tr.view(),
            dec_row: dr.view(),
            dec_chunk: dc.view(),
            head_rows: head.view(),
            kv: kv_d.view(),
        };
        let batch_shape = BatchShape {
            attention: shape,
            token_stride: 2 * stride,
            layers: 1,
            vocab: 1,
            positions: max_pos,
            max_context: max_pos,
        };
        // SAFETY: the arrays were built above from `seqs`: tokens are 0 (< vocab 1), each row's
        // position lies in its chunk (padding rows are u32::MAX), tiles and decodes index their
        // chunks, and every chunk ends at or before `max_pos`; `kv_ptrs` address sequence `i`'s K
        // and V rows in `region`, a live allocation of `max_pos` positions per sequence that
        // nothing else touches until the checks below have read it back.
        let batch = unsafe { DeviceBatch::new(arrays, batch_shape) }?;
        let layer = batch.layer(0)?;
        let tables = RopeTables::upload(self.dev, &rope, d)?;
        let (qkv_d, bias_d) = (self.buffer(&qkv)?, self.buffer(&bias)?);
        let mut q = self.poisoned::<bf16>(rows * q_dim)?;
        self.kernels
            .rope_kv_write(&layer, &qkv_d, Some(&bias_d), &mut q, Some(&tables))?;
        // CPU reference of RoPE + scatter.
        let mut want_q = Vec::with_capacity(total * q_dim);
        let mut k_all = Vec::new();
        let mut v_all = Vec::new();
        let mut row = 0;
        for (i, &(start, n)) in seqs.iter().enumerate() {
            let mut k = k_hist[i].clone();
            let mut v = v_hist[i].clone();
            for t in 0..n {
                let mut r = qkv[row * width..(row + 1) * width].to_vec();
                r.iter_mut().zip(&bias).for_each(|(x, b)| *x += b);
                let (qp, rest) = r.split_at_mut(q_dim);
                let (kp, vp) = rest.split_at_mut(kv_dim);
                rope.apply(qp, start + t);
                rope.apply(kp, start + t);
                want_q.extend_from_slice(qp);
                k.extend(round_bf16(kp));
                v.extend(round_bf16(vp));
                row += 1;
            }
            k_all.push(k);
            v_all.push(v);
        }
        let got_q = self.read_bf16(&q.slice(0..total * q_dim)?)?;
        let name = format!("rope_q (+bias) h{heads}/{kv_heads} d{d}");
        self.report(&name, rel_l2(&got_q, &want_q), BF16_TOL);
        let (mut got_kv, mut want_kv) = (Vec::new(), Vec::new());
        let mut pad_untouched = true;
        for (i, &(start, n)) in seqs.iter().enumerate() {
            for p in 0..start + n {
                for (which, rows) in [(0, &k_all[i]), (1, &v_all[i])] {
                    let e = at(i, p, which);
                    got_kv.extend(self.read_bf16(&region.slice(e..e + kv_dim)?)?);
                    want_kv.extend_from_slice(&rows[p * kv_dim..(p + 1) * kv_dim]);
                }
            }
            // Padding rows point at chunk 0, position 0 must be the real one; spare bytes of
            // every position stay poisoned.
            let spare = at(i, 0, 2);
            let bits = self.read(&region.slice(spare..spare + 8)?)?;
            pad_untouched &= bits.iter().all(|b| b.to_bits() == 0xffff);
        }
        let kv_err = if pad_untouched {
            rel_l2(&got_kv, &want_kv)
        } else {
            f64::NAN
        };
        self.report(
            &format!("kv_write (+spare bytes kept) d{d}"),
            kv_err,
            BF16_TOL,
        );

        // Reference attention from the bf16 Q the kernel produced (isolates attention error).
        let scale = 1.0 / (d as f32).sqrt();
        let mut want = Vec::with_capacity(total * q_dim);
        let mut row = 0;
        for (i, &(start, n)) in seqs.iter().enumerate() {
            let qs = &got_q[row * q_dim..(row + n) * q_dim];
            let mut out = vec![0.0; n * q_dim];
            cpu::attend_causal(
                shape, qs, start, &k_all[i], &v_all[i], kv_dim, scale, &mut out,
            );
            want.extend(out);
            row += n;
        }
        // Prefill kernel over the multi-token chunks, decode kernel over the single tokens.
        let mut out = self.poisoned::<bf16>(rows * q_dim)?;
        let splits = DecodeSplits::plan(
            dec_row.len(),
            kv_heads,
            max_pos,
            self.kernels.multiprocessors(),
        );
        let (po_n, pml_n) = splits.partial_sizes(dec_row.len(), heads, d);
        let (mut po, mut pml) = (self.poisoned::<f32>(po_n)?, self.poisoned::<f32>(pml_n)?);
        self.kernels.attention_prefill(&layer, &q, &mut out)?;
        self.kernels
            .attention_decode(&layer, &q, &mut out, splits, &mut po, &mut pml)?;
        let got = self.read_bf16(&out.slice(0..total * q_dim)?)?;
        let (mut gp, mut wp, mut gd, mut wd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut row = 0;
        for &(_, n) in seqs {
            let span = row * q_dim..(row + n) * q_dim;
            if n == 1 {
                gd.extend_from_slice(&got[span.clone()]);
                wd.extend_from_slice(&want[span]);
            } else {
                gp.extend_from_slice(&got[span.clone()]);
                wp.extend_from_slice(&want[span]);
            }
            row += n;
        }
        let name = format!("attn prefill h{heads}/{kv_heads} d{d}");
        self.report(&name, rel_l2(&gp, &wp), BF16_TOL);
        let name = format!(
            "attn decode h{heads}/{kv_heads} d{d} split {}",
            splits.split_len
        );
        self.report(&name, rel_l2(&gd, &wd), BF16_TOL);
        Ok(())
    }
}

fn run(seed: u64) -> Result<usize, CudaError> {
    let dev = GpuDevice::open(0)?;
    println!(
        "device: {} ({}, {} SMs), seed {seed}",
        dev.name(),
        dev.arch(),
        dev.multiprocessors()
    );
    let cache = std::env::temp_dir().join("fused-kernel-cache");
    let started = std::time::Instant::now();
    let (kernels, status) = Kernels::load(&dev, Some(&cache))?;
    println!(
        "kernels loaded in {:.1} ms ({status:?})",
        started.elapsed().as_secs_f64() * 1e3
    );
    let blas = Blas::new(&dev)?;
    let mut check = Check {
        dev: &dev,
        kernels,
        blas: &blas,
        rng: Rng(seed),
        failures: 0,
    };
    // Every product check once per GEMV build (cuBLAS's rows again with each: cheap).
    for build in [GemvBuild::PerRow, GemvBuild::TensorCores] {
        check.kernels.gemv_build = build;
        check.gemm(1, 4096, 4096)?;
        check.gemm(3, 22016, 4096)?;
        check.gemm(8, 4096, 11008)?;
        check.gemm(5, 4096, 576)?;
        check.gemm(37, 1000, 576)?;
        check.gemm(300, 2304, 4096)?;
        check.gemv_splits(1, 11008, 4096)?;
        check.gemv_splits(1, 2048, 11008)?;
        check.gemv_splits(3, 1000, 576)?;
        check.gemv_splits(8, 2048, 4096)?;
        // Parts of uneven length, and five rows in the eight-row build.
        check.gemv_splits(5, 300, 4104)?;
        // FP8: the GEMV's row counts, and past them (cuBLAS on the expansion).
        check.fp8(1, 5504, 4096)?;
        check.fp8(5, 1000, 576)?;
        check.fp8(8, 2048, 4096)?;
        check.fp8(100, 2048, 4096)?;
    }
    check.kernels.gemv_build = GemvBuild::default();
    // GGUF blocks: the GEMV's row counts (Llama-2-7B widths, and uneven ones), and past them.
    for kind in [BlockKind::Q8_0, BlockKind::Q4_K] {
        check.blocks(kind, 1, 4096, 4096)?;
        check.blocks(kind, 3, 1000, 11008)?;
        check.blocks(kind, 5, 300, 1024)?;
        check.blocks(kind, 8, 2048, 4096)?;
        check.blocks(kind, 40, 512, 4096)?;
    }
    check.expand_gguf(37, 512)?;
    check.expand_gguf(3, 4096)?;
    check.embed_and_norm(37, 4096, 1000)?;
    check.silu_and_argmax(29, 11008, 32000)?;
    // Widths off the vectorised paths.
    check.silu_and_argmax(3, 1001, 999)?;
    check.embed_and_norm(5, 577, 300)?;
    check.gelu_and_bias(37, 3072)?;
    check.gelu_and_bias(3, 1001)?;
    check.fill()?;
    // (start, new tokens) per sequence: fresh prefills, continued chunks, decodes.
    let seqs = [
        (0, 130),
        (200, 77),
        (0, 1),
        (37, 1),
        (1500, 1),
        (999, 64),
        (3000, 1),
    ];
    for shape in [
        AttentionShape {
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
        },
        AttentionShape {
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
        },
        AttentionShape {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
        },
    ] {
        check.attention(shape, &seqs)?;
    }
    Ok(check.failures)
}

fn main() {
    let seed = std::env::var("FUSED_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    match run(seed) {
        Ok(0) => println!("all GPU kernel checks passed"),
        Ok(failures) => {
            println!("{failures} GPU kernel check(s) FAILED");
            std::process::exit(1);
        }
        Err(CudaError::NoDevice(why)) => {
            eprintln!("fused-gpu-check: no usable GPU ({why}); nothing was checked");
            std::process::exit(2);
        }
        Err(error) => {
            eprintln!("fused-gpu-check: {error}");
            std::process::exit(1);
        }
    }
}
