//! `ops`: device time of each operation of one layer at the benchmark model's shapes, for a
//! decode step at batch 1 and for a 4K-token prefill, with bytes or FLOPs per second — where a
//! forward pass's time goes. Random inputs; median of repeated runs timed with device events.

use std::sync::Arc;

use fused_daemon::model::ModelConfig;
use fused_kernels::cpu::{AttentionShape, RopeTable};
use fused_kernels::cuda::{
    BatchArrays, BatchShape, Blas, BlockFormat, BlockMatrix, CudaError, DecodeSplits, DeviceBatch,
    DeviceBuffer, Fp8Matrix, GEMV_MAX_ROWS, GemvBuild, GpuDevice, Kernels, Linear, LinearOut,
    LinearShape, NormRows, PREFILL_TILE_ROWS, RopeTables, WeightView,
};
use half::bf16;

use crate::report::Report;

fn time_us(device: &GpuDevice, op: impl FnMut() -> Result<(), CudaError>) -> anyhow::Result<f64> {
    time_us_each(device, 1, op)
}

/// Median over 12 timings of `reps` back-to-back runs of `op`, per run: with `reps` > 1 the
/// launch latency overlaps the previous run, as in a decode step.
fn time_us_each(
    device: &GpuDevice,
    reps: usize,
    mut op: impl FnMut() -> Result<(), CudaError>,
) -> anyhow::Result<f64> {
    let timer = device.timer()?;
    let mut times = Vec::new();
    for _ in 0..12 {
        timer.start()?;
        for _ in 0..reps {
            op()?;
        }
        times.push(f64::from(timer.stop_ms()?) * 1e3 / reps as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What a timed layer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    F32,
    AddF32,
    Bf16,
    Logits,
}

/// The timed layers' output buffers.
struct Outputs {
    f32: DeviceBuffer<f32>,
    bf16: DeviceBuffer<bf16>,
    logits: DeviceBuffer<f32>,
}

impl Outputs {
    fn get(&mut self, kind: Out) -> LinearOut<'_> {
        match kind {
            Out::F32 => LinearOut::f32(&mut self.f32),
            Out::AddF32 => LinearOut::add_f32(&mut self.f32),
            Out::Bf16 => LinearOut::bf16(&mut self.bf16),
            Out::Logits => LinearOut::f32(&mut self.logits),
        }
    }
}

pub fn run(
    device: &Arc<GpuDevice>,
    cfg: &ModelConfig,
    kernels: &mut Kernels,
    report: &mut Report,
) -> anyhow::Result<()> {
    let blas = Blas::new(device)?;
    let (h, q, kv, f, vocab) = (
        cfg.hidden,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.ffn,
        cfg.vocab_size,
    );
    let rows_max = 4096usize;
    // Weights of one layer and the LM head, activations for 4096 rows; random, never zeros.
    let matrix = |n: usize, seed: u64| -> anyhow::Result<DeviceBuffer<bf16>> {
        let mut buf = device.alloc(n)?;
        kernels.fill_uniform(&mut buf, seed, -1.0, 1.0)?;
        Ok(buf)
    };
    let w_qkv = matrix((q + 2 * kv) * h, 1)?;
    let w_o = matrix(h * q, 2)?;
    let w_gu = matrix(2 * f * h, 3)?;
    let w_down = matrix(h * f, 4)?;
    let w_head = matrix(vocab * h, 5)?;
    let x_bf = matrix(rows_max * f.max(h).max(q), 6)?;
    let mut y = Outputs {
        f32: device.alloc(rows_max * (q + 2 * kv).max(h))?,
        bf16: matrix(rows_max * 2 * f, 7)?,
        logits: device.alloc(GEMV_MAX_ROWS * vocab)?,
    };
    kernels.fill_uniform(&mut y.f32, 8, -1.0, 1.0)?;
    let gemms = [
        ("qkv", &w_qkv, q + 2 * kv, h, Out::F32),
        ("o (+= residual)", &w_o, h, q, Out::AddF32),
        ("gate_up (bf16 out)", &w_gu, 2 * f, h, Out::Bf16),
        ("down (+= residual)", &w_down, h, f, Out::AddF32),
        ("lm_head", &w_head, vocab, h, Out::Logits),
    ];
    gemv_builds(device, &blas, kernels, &x_bf, &mut y, &gemms, report)?;
    for (name, w, out, inner, kind) in gemms {
        let shape = |rows| LinearShape { rows, out, inner };
        let bytes = (out * inner * 2) as f64;
        let gemv = time_us(device, || {
            kernels.gemv(Linear::new(&x_bf, w, y.get(kind), shape(1))?)
        })?;
        let cublas = time_us(device, || {
            blas.gemm(Linear::new(&x_bf, w, y.get(kind), shape(1))?)
        })?;
        report.value(
            "ops",
            &format!("decode b1 {name} {inner}->{out}: gemv"),
            gemv,
            "us",
            &format!(
                "{:.2} TB/s; cuBLAS {cublas:.1} us ({:.2} TB/s)",
                bytes / gemv / 1e6,
                bytes / cublas / 1e6
            ),
        );
        if kind != Out::Logits {
            let n = rows_max;
            let t = time_us(device, || {
                blas.gemm(Linear::new(&x_bf, w, y.get(kind), shape(n))?)
            })?;
            report.value(
                "ops",
                &format!("prefill {n} {name}: cuBLAS"),
                t,
                "us",
                &format!("{:.0} TFLOP/s", 2.0 * (n * out * inner) as f64 / t / 1e6),
            );
        }
    }
    let mut norm_w = device.alloc::<f32>(h)?;
    kernels.fill_uniform(&mut norm_w, 9, 0.5, 1.5)?;
    let shape = LinearShape {
        rows: 1,
        out: f,
        inner: h,
    };
    let t = time_us(device, || {
        kernels.gemv_swiglu(&x_bf, &w_gu, &mut y.bf16, shape)
    })?;
    let bytes = (2 * f * h * 2) as f64;
    report.value(
        "ops",
        "decode b1 gate_up + SwiGLU: one gemv",
        t,
        "us",
        &format!("{:.2} TB/s", bytes / t / 1e6),
    );
    // The GEMVs of few rows without the split over warps.
    let split = std::mem::replace(&mut kernels.gemv_min_blocks, 0);
    for (name, w, inner) in [("o", &w_o, q), ("down", &w_down, f)] {
        let shape = LinearShape {
            rows: 1,
            out: h,
            inner,
        };
        let t = time_us(device, || {
            kernels.gemv(Linear::new(&x_bf, w, y.get(Out::AddF32), shape)?)
        })?;
        let bytes = (h * inner * 2) as f64;
        report.value(
            "ops",
            &format!("decode b1 {name}: gemv, rows not split"),
            t,
            "us",
            &format!("{:.2} TB/s", bytes / t / 1e6),
        );
    }
    kernels.gemv_min_blocks = split;
    let mut x_out = device.alloc::<bf16>(rows_max * h.max(f))?;
    for rows in [1usize, 4096] {
        let norm = time_us(device, || {
            let first = NormRows::First(rows);
            kernels.rms_norm(&y.f32, &norm_w, &mut x_out, first, h, 1e-5)
        })?;
        let silu = time_us(device, || kernels.silu_mul(&y.bf16, &mut x_out, rows, f))?;
        report.value("ops", &format!("rms_norm {rows} rows"), norm, "us", "");
        report.value("ops", &format!("silu_mul {rows} rows"), silu, "us", "");
    }
    attention(device, cfg, kernels, report)
}

/// The decode GEMVs of one layer (`gemms`: name, weights, out, inner, output; gate/up with
/// SwiGLU folded in, as decode runs it) and the LM head at 1, 2, 4 and 8 rows, bf16 and FP8
/// (quantized here; the LM head stays bf16, as in the model), through the tensor-core build and
/// the warp-per-row build, and bf16 through cuBLAS (gate/up without SwiGLU): device time per GEMV
/// and weight bytes per second.
fn gemv_builds(
    device: &GpuDevice,
    blas: &Blas,
    kernels: &mut Kernels,
    x: &DeviceBuffer<bf16>,
    y: &mut Outputs,
    gemms: &[(&str, &DeviceBuffer<bf16>, usize, usize, Out)],
    report: &mut Report,
) -> anyhow::Result<()> {
    for &(name, w, out, inner, kind) in gemms {
        let fp8 = match kind {
            Out::Logits => None,
            _ => Some(Fp8Matrix::quantize(device, kernels, w, out, inner)?),
        };
        for rows in [1, 2, 4, 8] {
            for (dtype, bytes) in [("bf16", out * inner * 2), ("fp8", out * inner + 4 * out)] {
                let times = match (dtype, &fp8) {
                    ("bf16", _) => gemv_times(device, kernels, x, y, w, (rows, out, inner), kind)?,
                    (_, Some(m)) => gemv_times(device, kernels, x, y, m, (rows, out, inner), kind)?,
                    _ => continue,
                };
                let [per_row, mma] = times;
                let rate = |t: f64| bytes as f64 / t / 1e6;
                let cublas = if dtype == "bf16" {
                    let shape = LinearShape { rows, out, inner };
                    let t = time_us_each(device, 20, || {
                        blas.gemm(Linear::new(x, w, y.get(kind), shape)?)
                    })?;
                    format!("; cuBLAS {t:.1} us ({:.2} TB/s)", rate(t))
                } else {
                    String::new()
                };
                report.value(
                    "ops",
                    &format!("decode gemv {name} {inner}->{out} {rows} rows {dtype}: tensor cores"),
                    mma,
                    "us",
                    &format!(
                        "{:.2} TB/s; warp per row {per_row:.1} us ({:.2} TB/s){cublas}",
                        rate(mma),
                        rate(per_row),
                    ),
                );
            }
        }
        if kind == Out::Logits {
            continue;
        }
        // GGUF blocks (`--quantization gguf`): one build, a warp per weight row.
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_K] {
            let m = BlockMatrix::random(device, format, out, inner, 9)?;
            for rows in [1, 2, 4, 8] {
                let t = time_us_each(device, 20, || {
                    if kind == Out::Bf16 {
                        let shape = LinearShape {
                            rows,
                            out: out / 2,
                            inner,
                        };
                        kernels.gemv_swiglu(x, &m, &mut y.bf16, shape)
                    } else {
                        let shape = LinearShape { rows, out, inner };
                        kernels.gemv(Linear::new(x, &m, y.get(kind), shape)?)
                    }
                })?;
                report.value(
                    "ops",
                    &format!("decode gemv {name} {inner}->{out} {rows} rows {format:?}: blocks"),
                    t,
                    "us",
                    &format!("{:.2} TB/s", m.bytes() as f64 / t / 1e6),
                );
            }
        }
    }
    Ok(())
}

/// One GEMV of `shape` (rows, out, inner) with the warp-per-row build and the tensor-core build,
/// alternating twice: the faster time of each, in µs per GEMV over 20
/// back-to-back launches. A bf16 output is gate/up with SwiGLU folded in (`out` stacked rows).
fn gemv_times(
    device: &GpuDevice,
    kernels: &mut Kernels,
    x: &DeviceBuffer<bf16>,
    y: &mut Outputs,
    w: &impl WeightView,
    (rows, out, inner): (usize, usize, usize),
    kind: Out,
) -> anyhow::Result<[f64; 2]> {
    let mut best = [f64::INFINITY; 2];
    for _ in 0..2 {
        for (i, build) in [GemvBuild::PerRow, GemvBuild::TensorCores]
            .into_iter()
            .enumerate()
        {
            kernels.gemv_build = build;
            let k = &*kernels;
            let t = time_us_each(device, 20, || {
                if kind == Out::Bf16 {
                    let shape = LinearShape {
                        rows,
                        out: out / 2,
                        inner,
                    };
                    k.gemv_swiglu(x, w, &mut y.bf16, shape)
                } else {
                    let shape = LinearShape { rows, out, inner };
                    k.gemv(Linear::new(x, w, y.get(kind), shape)?)
                }
            })?;
            best[i] = best[i].min(t);
        }
    }
    kernels.gemv_build = GemvBuild::default();
    Ok(best)
}

/// RoPE + K/V scatter and attention for one 4K-token prefill and for one decode at 4K context.
fn attention(
    device: &Arc<GpuDevice>,
    cfg: &ModelConfig,
    kernels: &mut Kernels,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = 4096usize;
    let (q_dim, kv_dim, d) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let region = device.alloc::<bf16>(n * 2 * kv_dim)?;
    let mut qkv = device.alloc::<f32>(n * (q_dim + 2 * kv_dim))?;
    kernels.fill_uniform(&mut qkv, 3, -1.0, 1.0)?;
    let mut qb = device.alloc::<bf16>(n * q_dim)?;
    let mut out = device.alloc::<bf16>(n * q_dim)?;
    let rope = RopeTables::upload(device, &RopeTable::new(d, 10_000.0, None, n), d)?;
    let positions: Vec<u32> = (0..n as u32).collect();
    let zeros = vec![0u32; n];
    let tiles: Vec<u32> = (0..n.div_ceil(PREFILL_TILE_ROWS))
        .map(|t| (t * PREFILL_TILE_ROWS) as u32)
        .collect();
    let tile_chunk = vec![0u32; tiles.len()];
    let base = region.slice(0..1)?.address();
    let kv_ptrs = [base, base + (kv_dim * 2) as u64];
    let (pos_d, zero_d, tiles_d, tc_d) = (
        device.upload_new(&positions)?,
        device.upload_new(&zeros)?,
        device.upload_new(&tiles)?,
        device.upload_new(&tile_chunk)?,
    );
    let (len_d, start_d, none) = (
        device.upload_new(&[n as u32])?,
        device.upload_new(&[0u32])?,
        device.upload_new::<u32>(&[])?,
    );
    let kv_d = device.upload_new(&kv_ptrs)?;
    let shape = BatchShape {
        attention: AttentionShape {
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: d,
        },
        token_stride: 2 * kv_dim * 2,
        layers: 1,
        vocab: 1,
        positions: n,
        max_context: n,
    };
    let prefill = BatchArrays {
        tokens: zero_d.view(),
        positions: pos_d.view(),
        row_chunk: zero_d.view(),
        chunk_q_start: zero_d.slice(0..1)?,
        chunk_len: len_d.view(),
        chunk_start: start_d.view(),
        tile_chunk: tc_d.view(),
        tile_row0: tiles_d.view(),
        dec_row: none.view(),
        dec_chunk: none.view(),
        head_rows: none.view(),
        kv: kv_d.view(),
    };
    // SAFETY: one chunk of n rows at positions 0..n (tokens 0, below vocab 1), in tiles of its
    // rows; its K/V are `region`, a live allocation of n positions of K then V that nothing
    // else touches while the timed kernels run.
    let batch = unsafe { DeviceBatch::new(prefill, shape) }?;
    let layer = batch.layer(0)?;
    let rope_t = time_us(device, || {
        kernels.rope_kv_write(&layer, &qkv, None, &mut qb, Some(&rope))
    })?;
    report.value(
        "ops",
        &format!("rope + kv write {n} rows"),
        rope_t,
        "us",
        "",
    );
    let flops = 4.0 * (cfg.heads * d) as f64 * (n * (n + 1) / 2) as f64;
    for occ3 in [false, true] {
        kernels.prefill_occupancy3 = occ3;
        let t = time_us(device, || kernels.attention_prefill(&layer, &qb, &mut out))?;
        report.value(
            "ops",
            &format!(
                "attention prefill {n} causal{}",
                if occ3 { " (168-register build)" } else { "" }
            ),
            t,
            "us",
            &format!("{:.0} TFLOP/s", flops / t / 1e6),
        );
    }
    kernels.prefill_occupancy3 = false;
    // One decode at context n: the chunk is the last position, its row is row 0.
    let (dlen, dstart) = (
        device.upload_new(&[1u32])?,
        device.upload_new(&[(n - 1) as u32])?,
    );
    let decode = BatchArrays {
        tokens: zero_d.slice(0..1)?,
        positions: dstart.view(),
        row_chunk: zero_d.slice(0..1)?,
        chunk_len: dlen.view(),
        chunk_start: dstart.view(),
        tile_chunk: none.view(),
        tile_row0: none.view(),
        dec_row: zero_d.slice(0..1)?,
        dec_chunk: zero_d.slice(0..1)?,
        ..prefill
    };
    let splits = DecodeSplits::plan(1, cfg.kv_heads, n, device.multiprocessors());
    let (po, pml) = splits.partial_sizes(1, cfg.heads, d);
    let (mut po_d, mut pml_d) = (device.alloc::<f32>(po)?, device.alloc::<f32>(pml)?);
    // SAFETY: one single-row chunk at position n - 1 over the same region, whose positions
    // 0..n were written by the RoPE runs above; its row 0 is the decode's.
    let batch = unsafe { DeviceBatch::new(decode, shape) }?;
    let layer = batch.layer(0)?;
    let t = time_us(device, || {
        kernels.attention_decode(&layer, &qb, &mut out, splits, &mut po_d, &mut pml_d)
    })?;
    let bytes = (n * kv_dim * 2 * 2) as f64;
    report.value(
        "ops",
        &format!("attention decode ctx {n} (split {})", splits.split_len),
        t,
        "us",
        &format!("{:.2} TB/s of K/V", bytes / t / 1e6),
    );
    Ok(())
}
