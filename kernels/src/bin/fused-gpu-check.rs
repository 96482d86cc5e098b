//! `fused-gpu-check`: every CUDA kernel against its CPU reference on fresh random inputs.
//!
//! Outputs are poisoned (all bits set: NaN in bf16 and f32) before each run, inputs are random
//! (never zeros), and each result is compared by relative L2 error; NaN never passes. Prints one
//! line per check and exits non-zero if any fails (2 when there is no usable GPU).

use fused_kernels::compare::rel_l2;
use fused_kernels::cpu::{self, AttentionShape, RopeTable};
use fused_kernels::cuda::{
    AttentionBatch, Blas, CudaError, DecodeSplits, DeviceBuffer, GEMV_MAX_ROWS, GemmOut, GemvOut,
    GemvShape, GpuDevice, Kernels, PREFILL_TILE_ROWS,
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

    fn buffer<T: Copy>(&self, data: &[T]) -> Result<DeviceBuffer, CudaError> {
        let buf = self.dev.alloc(std::mem::size_of_val(data))?;
        // SAFETY: the buffer was just sized for `data`.
        unsafe { self.dev.upload(buf.ptr(), data) }?;
        Ok(buf)
    }

    /// An output buffer of `n` elements of `T`, all bits set (NaN).
    fn poisoned<T>(&self, n: usize) -> Result<DeviceBuffer, CudaError> {
        let bytes = n * std::mem::size_of::<T>();
        let buf = self.dev.alloc(bytes)?;
        // SAFETY: the buffer holds `bytes` bytes.
        unsafe { self.dev.fill_bytes(buf.ptr(), 0xff, bytes) }?;
        Ok(buf)
    }

    fn read_f32(&self, buf: &DeviceBuffer, n: usize) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0f32; n];
        // SAFETY: callers read at most what they allocated.
        unsafe { self.dev.download(buf.ptr(), &mut out) }?;
        Ok(out)
    }

    fn read_bf16(&self, ptr: u64, n: usize) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![bf16::ZERO; n];
        // SAFETY: callers read at most what they allocated.
        unsafe { self.dev.download(ptr, &mut out) }?;
        Ok(from_bf16(&out))
    }

    fn gemm(&mut self, rows: usize, out: usize, inner: usize) -> Result<(), CudaError> {
        let x = round_bf16(&self.rng.vec(rows * inner, -1.0, 1.0));
        let w = round_bf16(&self.rng.vec(out * inner, -0.1, 0.1));
        let y0 = self.rng.vec(rows * out, -1.0, 1.0);
        let mut want = vec![0.0; rows * out];
        cpu::linear(&x, &w, None, rows, out, &mut want);
        let (xd, wd) = (self.buffer(&to_bf16(&x))?, self.buffer(&to_bf16(&w))?);
        let y = self.poisoned::<f32>(rows * out)?;
        // SAFETY: shapes as allocated.
        unsafe {
            self.blas.linear(
                xd.ptr(),
                wd.ptr(),
                y.ptr(),
                rows,
                out,
                inner,
                GemmOut::F32 { accumulate: false },
            )
        }?;
        let got = self.read_f32(&y, rows * out)?;
        self.report(
            &format!("gemm bf16->f32 {rows}x{out}x{inner}"),
            rel_l2(&got, &want),
            FP32_TOL,
        );
        let acc = self.buffer(&y0)?;
        // SAFETY: shapes as allocated.
        unsafe {
            self.blas.linear(
                xd.ptr(),
                wd.ptr(),
                acc.ptr(),
                rows,
                out,
                inner,
                GemmOut::F32 { accumulate: true },
            )
        }?;
        let got = self.read_f32(&acc, rows * out)?;
        let want_acc: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        self.report(
            &format!("gemm bf16 y+=xW^T {rows}x{out}x{inner}"),
            rel_l2(&got, &want_acc),
            FP32_TOL,
        );
        let yb = self.poisoned::<bf16>(rows * out)?;
        // SAFETY: shapes as allocated.
        unsafe {
            self.blas.linear(
                xd.ptr(),
                wd.ptr(),
                yb.ptr(),
                rows,
                out,
                inner,
                GemmOut::Bf16,
            )
        }?;
        let got = self.read_bf16(yb.ptr(), rows * out)?;
        self.report(
            &format!("gemm bf16->bf16 {rows}x{out}x{inner}"),
            rel_l2(&got, &want),
            BF16_TOL,
        );
        if rows <= GEMV_MAX_ROWS {
            let acc = self.buffer(&y0)?;
            let yb = self.poisoned::<bf16>(rows * out)?;
            let y = self.poisoned::<f32>(rows * out)?;
            // SAFETY: shapes as allocated.
            unsafe {
                let (x, w) = (xd.ptr(), wd.ptr());
                let set = GemmOut::F32 { accumulate: false };
                let add = GemmOut::F32 { accumulate: true };
                self.kernels.gemv(x, w, y.ptr(), rows, out, inner, set)?;
                self.kernels.gemv(x, w, acc.ptr(), rows, out, inner, add)?;
                self.kernels
                    .gemv(x, w, yb.ptr(), rows, out, inner, GemmOut::Bf16)?;
            }
            let name = format!("gemv {rows}x{out}x{inner}");
            let got = self.read_f32(&y, rows * out)?;
            self.report(&format!("{name} ->f32"), rel_l2(&got, &want), FP32_TOL);
            let got = self.read_f32(&acc, rows * out)?;
            self.report(&format!("{name} y+="), rel_l2(&got, &want_acc), FP32_TOL);
            let got = self.read_bf16(yb.ptr(), rows * out)?;
            self.report(&format!("{name} ->bf16"), rel_l2(&got, &want), BF16_TOL);
        }
        Ok(())
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
        let stacked = GemvShape {
            rows,
            out: 2 * out,
            inner,
        };
        let halves = GemvShape { out, ..stacked };
        let default_blocks = self.kernels.gemv_min_blocks;
        for (split, min_blocks) in [("1", 0), ("default", default_blocks), ("8", usize::MAX)] {
            self.kernels.gemv_min_blocks = min_blocks;
            let y = self.poisoned::<f32>(rows * 2 * out)?;
            let y_act = self.poisoned::<bf16>(rows * out)?;
            let set = GemvOut::Gemm(GemmOut::F32 { accumulate: false });
            // SAFETY: shapes as allocated.
            unsafe {
                let k = &self.kernels;
                k.gemv_fused(xd.ptr(), wd.ptr(), y.ptr(), stacked, set)?;
                k.gemv_fused(xd.ptr(), wd.ptr(), y_act.ptr(), halves, GemvOut::SwiGlu)?;
            }
            let name = format!("gemv {rows}x{}x{inner} split {split}", 2 * out);
            let got = self.read_f32(&y, rows * 2 * out)?;
            self.report(&format!("{name} ->f32"), rel_l2(&got, &want), FP32_TOL);
            let got = self.read_bf16(y_act.ptr(), rows * out)?;
            self.report(&format!("{name} +SwiGLU"), rel_l2(&got, &act), BF16_TOL);
        }
        self.kernels.gemv_min_blocks = default_blocks;
        Ok(())
    }

    fn embed_and_norm(
        &mut self,
        rows: usize,
        hidden: usize,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let table = round_bf16(&self.rng.vec(vocab * hidden, -1.0, 1.0));
        let tokens: Vec<u32> = (0..rows).map(|_| self.rng.below(vocab) as u32).collect();
        let (td, tabd) = (self.buffer(&tokens)?, self.buffer(&to_bf16(&table))?);
        let x = self.poisoned::<f32>(rows * hidden)?;
        // SAFETY: shapes as allocated; tokens below vocab.
        unsafe {
            self.kernels
                .embed(td.ptr(), tabd.ptr(), x.ptr(), rows, hidden)
        }?;
        let got = self.read_f32(&x, rows * hidden)?;
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| table[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
            .collect();
        self.report(&format!("embed {rows}x{hidden}"), rel_l2(&got, &want), 0.0);

        let xs = self.rng.vec(rows * hidden, -2.0, 2.0);
        let weight = self.rng.vec(hidden, 0.5, 1.5);
        let map: Vec<u32> = (0..rows).rev().step_by(2).map(|r| r as u32).collect();
        let (xd, wd, md) = (self.buffer(&xs)?, self.buffer(&weight)?, self.buffer(&map)?);
        let out = self.poisoned::<bf16>(map.len() * hidden)?;
        // SAFETY: shapes as allocated; mapped rows exist.
        unsafe {
            self.kernels.rms_norm(
                xd.ptr(),
                wd.ptr(),
                out.ptr(),
                Some(md.ptr()),
                map.len(),
                hidden,
                1e-5,
            )
        }?;
        let got = self.read_bf16(out.ptr(), map.len() * hidden)?;
        let gathered: Vec<f32> = map
            .iter()
            .flat_map(|&r| xs[r as usize * hidden..(r as usize + 1) * hidden].to_vec())
            .collect();
        let mut want = vec![0.0; gathered.len()];
        cpu::rms_norm(&gathered, &weight, 1e-5, &mut want);
        self.report(
            &format!("rms_norm (row map) {}x{hidden}", map.len()),
            rel_l2(&got, &want),
            BF16_TOL,
        );
        Ok(())
    }

    fn silu_and_argmax(&mut self, rows: usize, ffn: usize, vocab: usize) -> Result<(), CudaError> {
        let gu = round_bf16(&self.rng.vec(rows * 2 * ffn, -4.0, 4.0));
        let gd = self.buffer(&to_bf16(&gu))?;
        let out = self.poisoned::<bf16>(rows * ffn)?;
        // SAFETY: shapes as allocated.
        unsafe { self.kernels.silu_mul(gd.ptr(), out.ptr(), rows, ffn) }?;
        let got = self.read_bf16(out.ptr(), rows * ffn)?;
        let mut want = vec![0.0; rows * ffn];
        cpu::silu_mul(&gu, ffn, &mut want);
        self.report(
            &format!("silu_mul {rows}x{ffn}"),
            rel_l2(&got, &want),
            BF16_TOL,
        );

        let logits = self.rng.vec(rows * vocab, -10.0, 10.0);
        let ld = self.buffer(&logits)?;
        let idx = self.poisoned::<u32>(rows)?;
        // SAFETY: shapes as allocated.
        unsafe { self.kernels.argmax(ld.ptr(), idx.ptr(), rows, vocab) }?;
        let mut got = vec![0u32; rows];
        // SAFETY: `rows` u32 allocated.
        unsafe { self.dev.download(idx.ptr(), &mut got) }?;
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
        let buf = self.poisoned::<bf16>(n)?;
        // SAFETY: `n` elements allocated.
        unsafe { self.kernels.fill_uniform(buf.ptr(), n, 7, -0.5, 0.5, false) }?;
        let got = self.read_bf16(buf.ptr(), n)?;
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
        // like the interleaved layout's strided rows.
        let stride = 2 * kv_dim * 2 + 16;
        let region = self.poisoned::<u8>(seqs.len() * max_pos * stride)?;
        let mut kv_ptrs = Vec::new();
        for i in 0..seqs.len() {
            let k = region.ptr() + (i * max_pos * stride) as u64;
            kv_ptrs.extend([k, k + (kv_dim * 2) as u64]);
        }
        // History keys/values (positions before each chunk) are written by the host.
        let mut k_hist: Vec<Vec<f32>> = Vec::new();
        let mut v_hist: Vec<Vec<f32>> = Vec::new();
        for (i, &(start, _)) in seqs.iter().enumerate() {
            let k = round_bf16(&self.rng.vec(start * kv_dim, -1.0, 1.0));
            let v = round_bf16(&self.rng.vec(start * kv_dim, -1.0, 1.0));
            for p in 0..start {
                let row = to_bf16(&k[p * kv_dim..(p + 1) * kv_dim]);
                let vrow = to_bf16(&v[p * kv_dim..(p + 1) * kv_dim]);
                // SAFETY: inside the region: position p < max_pos of sequence i.
                unsafe {
                    self.dev
                        .upload(kv_ptrs[2 * i] + (p * stride) as u64, &row)?;
                    self.dev
                        .upload(kv_ptrs[2 * i + 1] + (p * stride) as u64, &vrow)?;
                }
            }
            k_hist.push(k);
            v_hist.push(v);
        }
        // Batch rows: the chunks' tokens, then two padding rows.
        let total: usize = seqs.iter().map(|(_, n)| n).sum();
        let rows = total + 2;
        let qkv = self.rng.vec(rows * width, -1.0, 1.0);
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
        let (cos, sin) = rope_tables(&rope, d, max_pos);
        let bufs = [
            self.buffer(&qkv)?,
            self.buffer(&positions)?,
            self.buffer(&row_chunk)?,
            self.buffer(&kv_ptrs)?,
            self.buffer(&cos)?,
            self.buffer(&sin)?,
            self.buffer(&q_start)?,
            self.buffer(&lens)?,
            self.buffer(&starts)?,
        ];
        let [
            qkv_d,
            pos_d,
            chunk_d,
            kv_d,
            cos_d,
            sin_d,
            qs_d,
            len_d,
            start_d,
        ] = &bufs;
        let q = self.poisoned::<bf16>(rows * q_dim)?;
        let batch = AttentionBatch {
            chunk_q_start: qs_d.ptr(),
            chunk_len: len_d.ptr(),
            chunk_start: start_d.ptr(),
            kv: kv_d.ptr(),
            token_stride: stride,
            heads,
            kv_heads,
            head_dim: d,
        };
        // SAFETY: shapes as allocated; every position is below max_pos.
        unsafe {
            self.kernels.rope_kv_write(
                qkv_d.ptr(),
                q.ptr(),
                pos_d.ptr(),
                chunk_d.ptr(),
                &batch,
                Some((cos_d.ptr(), sin_d.ptr())),
                rows,
            )
        }?;
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
        let got_q = self.read_bf16(q.ptr(), total * q_dim)?;
        let name = format!("rope_q h{heads}/{kv_heads} d{d}");
        self.report(&name, rel_l2(&got_q, &want_q), BF16_TOL);
        let (mut got_kv, mut want_kv) = (Vec::new(), Vec::new());
        let mut pad_untouched = true;
        for (i, &(start, n)) in seqs.iter().enumerate() {
            for p in 0..start + n {
                got_kv.extend(self.read_bf16(kv_ptrs[2 * i] + (p * stride) as u64, kv_dim)?);
                got_kv.extend(self.read_bf16(kv_ptrs[2 * i + 1] + (p * stride) as u64, kv_dim)?);
                want_kv.extend_from_slice(&k_all[i][p * kv_dim..(p + 1) * kv_dim]);
                want_kv.extend_from_slice(&v_all[i][p * kv_dim..(p + 1) * kv_dim]);
            }
            // Padding rows point at chunk 0, position 0 must be the real one; spare bytes of
            // every position stay poisoned.
            let mut spare = [0u8; 16];
            // SAFETY: inside the region.
            unsafe {
                self.dev
                    .download(kv_ptrs[2 * i] + (2 * kv_dim * 2) as u64, &mut spare)?;
            }
            pad_untouched &= spare.iter().all(|&b| b == 0xff);
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
        let out = self.poisoned::<bf16>(rows * q_dim)?;
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
        let splits = DecodeSplits::plan(
            dec_row.len(),
            kv_heads,
            max_pos,
            self.kernels.multiprocessors(),
        );
        let (po_n, pml_n) = splits.partial_sizes(dec_row.len(), heads, d);
        let lists = [
            self.buffer(&tile_chunk)?,
            self.buffer(&tile_row0)?,
            self.buffer(&dec_row)?,
            self.buffer(&dec_chunk)?,
            self.poisoned::<f32>(po_n)?,
            self.poisoned::<f32>(pml_n)?,
        ];
        let [tc, tr, dr, dc, po, pml] = &lists;
        // SAFETY: shapes as allocated; all keys were written above.
        unsafe {
            self.kernels.attention_prefill(
                &batch,
                q.ptr(),
                out.ptr(),
                tc.ptr(),
                tr.ptr(),
                tile_chunk.len(),
            )?;
            self.kernels.attention_decode(
                &batch,
                q.ptr(),
                out.ptr(),
                dr.ptr(),
                dc.ptr(),
                dec_row.len(),
                splits,
                po.ptr(),
                pml.ptr(),
            )?;
        }
        let got = self.read_bf16(out.ptr(), total * q_dim)?;
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

fn rope_tables(rope: &RopeTable, d: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
    // Recover cos/sin from the CPU table by rotating unit vectors: the GPU uses the same values.
    let half = d / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..positions {
        let mut unit = vec![0.0; d];
        unit[..half].fill(1.0);
        rope.apply(&mut unit, p);
        cos.extend_from_slice(&unit[..half]);
        sin.extend_from_slice(&unit[half..]);
    }
    (cos, sin)
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
    check.embed_and_norm(37, 4096, 1000)?;
    check.silu_and_argmax(29, 11008, 32000)?;
    // Widths off the vectorised paths.
    check.silu_and_argmax(3, 1001, 999)?;
    check.embed_and_norm(5, 577, 300)?;
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
