//! `ops`: device time of each operation of one layer at the benchmark model's shapes, for a
//! decode step at batch 1 and for a 4K-token prefill, with bytes or FLOPs per second — where a
//! forward pass's time goes. Random inputs; median of repeated runs timed with device events.

use std::sync::Arc;

use fused_daemon::model::ModelConfig;
use fused_kernels::cuda::{
    AttentionBatch, Blas, CudaError, DecodeSplits, GemmOut, GemvOut, GemvShape, GpuDevice, Kernels,
    PREFILL_TILE_ROWS,
};

use crate::report::Report;

fn time_us(
    device: &GpuDevice,
    mut op: impl FnMut() -> Result<(), CudaError>,
) -> anyhow::Result<f64> {
    let timer = device.timer()?;
    let mut times = Vec::new();
    for _ in 0..12 {
        timer.start()?;
        op()?;
        times.push(f64::from(timer.stop_ms()?) * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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
    let alloc = |bytes: usize| device.alloc(bytes);
    let fill = |buf: u64, n: usize, f32: bool| {
        // SAFETY: callers pass buffers of at least `n` elements.
        unsafe { kernels.fill_uniform(buf, n, n as u64, -1.0, 1.0, f32) }
    };
    // Weights of one layer and the LM head, activations for 4096 rows.
    let w_qkv = alloc((q + 2 * kv) * h * 2)?;
    let w_o = alloc(h * q * 2)?;
    let w_gu = alloc(2 * f * h * 2)?;
    let w_down = alloc(h * f * 2)?;
    let w_head = alloc(vocab * h * 2)?;
    let x_bf = alloc(rows_max * f.max(h).max(q) * 2)?;
    let y_f32 = alloc(rows_max * (q + 2 * kv).max(h) * 4)?;
    let y_bf = alloc(rows_max * 2 * f * 2)?;
    let logits = alloc(vocab * 4)?;
    for (buf, n) in [
        (&w_qkv, (q + 2 * kv) * h),
        (&w_o, h * q),
        (&w_gu, 2 * f * h),
        (&w_down, h * f),
        (&w_head, vocab * h),
        (&x_bf, rows_max * f.max(h).max(q)),
        (&y_bf, rows_max * 2 * f),
    ] {
        fill(buf.ptr(), n, false)?;
    }
    fill(y_f32.ptr(), rows_max * (q + 2 * kv).max(h), true)?;
    let set = GemmOut::F32 { accumulate: false };
    let acc = GemmOut::F32 { accumulate: true };
    let gemms = [
        ("qkv", w_qkv.ptr(), q + 2 * kv, h, set),
        ("o (+= residual)", w_o.ptr(), h, q, acc),
        ("gate_up (bf16 out)", w_gu.ptr(), 2 * f, h, GemmOut::Bf16),
        ("down (+= residual)", w_down.ptr(), h, f, acc),
        ("lm_head", w_head.ptr(), vocab, h, set),
    ];
    for (name, w, out, inner, kind) in gemms {
        let y = match kind {
            GemmOut::Bf16 => y_bf.ptr(),
            _ if name == "lm_head" => logits.ptr(),
            _ => y_f32.ptr(),
        };
        let bytes = (out * inner * 2) as f64;
        // SAFETY: every buffer holds at least the shapes used.
        let gemv = time_us(device, || unsafe {
            kernels.gemv(x_bf.ptr(), w, y, 1, out, inner, kind)
        })?;
        let cublas = time_us(device, || unsafe {
            blas.linear(x_bf.ptr(), w, y, 1, out, inner, kind)
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
        if name != "lm_head" {
            let n = rows_max;
            // SAFETY: as above, 4096 rows.
            let t = time_us(device, || unsafe {
                blas.linear(x_bf.ptr(), w, y, n, out, inner, kind)
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
    let norm_w = alloc(h * 4)?;
    fill(norm_w.ptr(), h, true)?;
    let shape = GemvShape {
        rows: 1,
        out: f,
        inner: h,
    };
    // SAFETY: x_bf holds h bf16, w_gu 2f x h, y_bf f bf16.
    let t = time_us(device, || unsafe {
        kernels.gemv_fused(x_bf.ptr(), w_gu.ptr(), y_bf.ptr(), shape, GemvOut::SwiGlu)
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
    for (name, w, inner) in [("o", w_o.ptr(), q), ("down", w_down.ptr(), f)] {
        // SAFETY: x_bf holds `inner` bf16, y_f32 h f32.
        let t = time_us(device, || unsafe {
            kernels.gemv(x_bf.ptr(), w, y_f32.ptr(), 1, h, inner, acc)
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
    for rows in [1usize, 4096] {
        // SAFETY: y_f32 holds 4096 x h f32, x_bf 4096 x h bf16, y_bf 4096 x 2f bf16.
        let norm = time_us(device, || unsafe {
            kernels.rms_norm(y_f32.ptr(), norm_w.ptr(), x_bf.ptr(), None, rows, h, 1e-5)
        })?;
        let silu = time_us(device, || unsafe {
            kernels.silu_mul(y_bf.ptr(), x_bf.ptr(), rows, f)
        })?;
        report.value("ops", &format!("rms_norm {rows} rows"), norm, "us", "");
        report.value("ops", &format!("silu_mul {rows} rows"), silu, "us", "");
    }
    attention(device, cfg, kernels, report)
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
    let stride = 2 * kv_dim * 2;
    let region = device.alloc(n * stride)?;
    let qkv = device.alloc(n * (q_dim + 2 * kv_dim) * 4)?;
    let qb = device.alloc(n * q_dim * 2)?;
    let out = device.alloc(n * q_dim * 2)?;
    let half = d / 2;
    let rope = device.alloc(n * half * 4)?;
    // SAFETY: sizes as allocated.
    unsafe {
        kernels.fill_uniform(qkv.ptr(), n * (q_dim + 2 * kv_dim), 3, -1.0, 1.0, true)?;
        kernels.fill_uniform(rope.ptr(), n * half, 4, -1.0, 1.0, true)?;
    }
    let positions: Vec<u32> = (0..n as u32).collect();
    let zeros = vec![0u32; n];
    let tiles: Vec<u32> = (0..n.div_ceil(PREFILL_TILE_ROWS))
        .map(|t| (t * PREFILL_TILE_ROWS) as u32)
        .collect();
    let tile_chunk = vec![0u32; tiles.len()];
    let kv_ptrs = [region.ptr(), region.ptr() + (kv_dim * 2) as u64];
    let meta = |data: &[u32]| -> anyhow::Result<_> {
        let buf = device.alloc(data.len() * 4)?;
        // SAFETY: sized for `data`.
        unsafe { device.upload(buf.ptr(), data)? };
        Ok(buf)
    };
    let (pos_d, zero_d, tiles_d, tc_d) = (
        meta(&positions)?,
        meta(&zeros)?,
        meta(&tiles)?,
        meta(&tile_chunk)?,
    );
    let (len_d, start_d) = (meta(&[n as u32])?, meta(&[0])?);
    let kv_d = device.alloc(16)?;
    // SAFETY: 16 bytes.
    unsafe { device.upload(kv_d.ptr(), &kv_ptrs)? };
    let batch = AttentionBatch {
        chunk_q_start: zero_d.ptr(),
        chunk_len: len_d.ptr(),
        chunk_start: start_d.ptr(),
        kv: kv_d.ptr(),
        token_stride: stride,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: d,
    };
    // SAFETY: all buffers sized for n rows; the region for n positions.
    let rope_t = time_us(device, || unsafe {
        kernels.rope_kv_write(
            qkv.ptr(),
            qb.ptr(),
            pos_d.ptr(),
            zero_d.ptr(),
            &batch,
            Some((rope.ptr(), rope.ptr())),
            n,
        )
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
        // SAFETY: as above.
        let t = time_us(device, || unsafe {
            kernels.attention_prefill(
                &batch,
                qb.ptr(),
                out.ptr(),
                tc_d.ptr(),
                tiles_d.ptr(),
                tiles.len(),
            )
        })?;
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
    // One decode at context n: the chunk is the last position.
    let (dlen, dstart) = (meta(&[1])?, meta(&[(n - 1) as u32])?);
    let dbatch = AttentionBatch {
        chunk_len: dlen.ptr(),
        chunk_start: dstart.ptr(),
        ..batch
    };
    let splits = DecodeSplits::plan(1, cfg.kv_heads, n, device.multiprocessors());
    let (po, pml) = splits.partial_sizes(1, cfg.heads, d);
    let (po_d, pml_d) = (device.alloc(po * 4)?, device.alloc(pml * 4)?);
    // SAFETY: as above; partials sized by the plan.
    let t = time_us(device, || unsafe {
        kernels.attention_decode(
            &dbatch,
            qb.ptr(),
            out.ptr(),
            zero_d.ptr(),
            zero_d.ptr(),
            1,
            splits,
            po_d.ptr(),
            pml_d.ptr(),
        )
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
