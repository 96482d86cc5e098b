//! Benchmarks of the GPU path on a dummy model: the two ceilings, decode of 1, 2, 4 and 8
//! sequences against the memory roofline (a), a long prefill against the GEMM rate (b), and the KV layouts (e).
//! Timings are wall-clock around whole forward passes (each ends by copying its picks or logits
//! to the host), after warm-up; the ceilings use device events.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fused_daemon::kv::{KvBudget, KvConfig, KvLayout, KvManager};
use fused_daemon::model::cuda::{GpuModel, GpuOptions};
use fused_daemon::model::{Forward, Logits, LogitsWanted, SeqChunk};
use fused_kernels::cuda::{Blas, GemvBuild, GpuDevice, Kernels, Linear, LinearOut, LinearShape};
use half::bf16;

use crate::report::{Report, argmax};

/// Device copy bandwidth (bytes read + written per second) and bf16 GEMM rate (FLOP/s).
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    pub copy_bytes_per_s: f64,
    pub gemm_flops_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn ceilings(device: &Arc<GpuDevice>, report: &mut Report) -> anyhow::Result<Ceilings> {
    let (kernels, _) = Kernels::load(device, None)?;
    let bytes = 4usize << 30;
    let (mut src, mut dst) = (
        device.alloc::<f32>(bytes / 4)?,
        device.alloc::<f32>(bytes / 4)?,
    );
    // Random contents, never zeros.
    kernels.fill_uniform(&mut src, 11, -1.0, 1.0)?;
    let timer = device.timer()?;
    let mut copy = Vec::new();
    for _ in 0..8 {
        timer.start()?;
        device.copy(&mut dst, &src)?;
        copy.push(f64::from(timer.stop_ms()?) * 1e-3);
    }
    let copy_bytes_per_s = 2.0 * bytes as f64 / median(copy[2..].to_vec());
    drop((src, dst));
    let n = 8192usize;
    let blas = Blas::new(device)?;
    let (mut a, mut b, mut c) = (
        device.alloc::<bf16>(n * n)?,
        device.alloc::<bf16>(n * n)?,
        device.alloc::<bf16>(n * n)?,
    );
    kernels.fill_uniform(&mut a, 12, -1.0, 1.0)?;
    kernels.fill_uniform(&mut b, 13, -1.0, 1.0)?;
    let shape = LinearShape {
        rows: n,
        out: n,
        inner: n,
    };
    let mut gemm = Vec::new();
    for _ in 0..12 {
        timer.start()?;
        blas.gemm(Linear::new(&a, &b, LinearOut::bf16(&mut c), shape)?)?;
        gemm.push(f64::from(timer.stop_ms()?) * 1e-3);
    }
    let gemm_flops_per_s = 2.0 * (n * n * n) as f64 / median(gemm[2..].to_vec());
    report.value(
        "ceiling",
        "device copy bandwidth (read + write, 4 GiB)",
        copy_bytes_per_s / 1e12,
        "TB/s",
        "",
    );
    report.value(
        "ceiling",
        "bf16 GEMM 8192^3 (cuBLAS, random data)",
        gemm_flops_per_s / 1e12,
        "TFLOP/s",
        "",
    );
    Ok(Ceilings {
        copy_bytes_per_s,
        gemm_flops_per_s,
    })
}

fn kv_for(
    device: &Arc<GpuDevice>,
    model: &GpuModel,
    layout: KvLayout,
    max_seqs: usize,
    max_context_len: usize,
    pool_bytes: usize,
) -> anyhow::Result<KvManager> {
    let cfg = model.config();
    let config = KvConfig {
        max_seqs,
        max_context_len,
        layout,
        pool_bytes,
        ..KvConfig::for_model(cfg.layers, cfg.kv_heads, cfg.head_dim, 2)
    };
    Ok(KvManager::cuda(&config, device.context().clone())?)
}

fn prompt(n: usize, vocab: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 7) % vocab as u32)
        .collect()
}

/// A decode configuration timed by (a): GEMV build-time knobs (`Kernels::load_with`), whether
/// kernels launch as programmatic dependents, whether SwiGLU folds into the gate/up GEMV, and
/// which GEMV build runs.
struct DecodeVariant {
    name: &'static str,
    graphs: bool,
    defines: &'static [(&'static str, i64)],
    dependent_launch: bool,
    fused_gemv: bool,
    gemv_build: GemvBuild,
    /// The layers of a one-sequence step in the persistent kernel.
    persistent: bool,
}

const DEFAULT: DecodeVariant = DecodeVariant {
    name: "graph",
    graphs: true,
    defines: &[],
    dependent_launch: true,
    fused_gemv: true,
    gemv_build: GemvBuild::Auto,
    persistent: false,
};

/// Every layer of the step in one persistent kernel (embedding and head per-op, no graph).
const PERSISTENT: DecodeVariant = DecodeVariant {
    name: "persistent kernel",
    persistent: true,
    ..DEFAULT
};

/// The GEMV a warp per weight row at every batch size (the build before the tensor-core one).
const PER_ROW: DecodeVariant = DecodeVariant {
    name: "graph, warp-per-row GEMV",
    gemv_build: GemvBuild::PerRow,
    ..DEFAULT
};

/// The default build first (eager, then graph), then one change at a time. The earlier sweeps
/// of the warp-per-row GEMV's knobs (unroll, split, L1) and of a streaming build are in
/// docs/BENCHMARKS.md.
const DECODE_VARIANTS: [DecodeVariant; 7] = [
    DecodeVariant {
        name: "eager",
        graphs: false,
        ..DEFAULT
    },
    DEFAULT,
    PERSISTENT,
    DecodeVariant {
        name: "graph, no dependent launch",
        dependent_launch: false,
        ..DEFAULT
    },
    DecodeVariant {
        name: "graph, SwiGLU unfused",
        fused_gemv: false,
        ..DEFAULT
    },
    PER_ROW,
    DecodeVariant {
        name: "graph, tensor-core GEMV at one row too",
        gemv_build: GemvBuild::TensorCores,
        ..DEFAULT
    },
];

/// Sequences of the batched decode runs ([`decode_batches`]).
const DECODE_BATCHES: [usize; 3] = [2, 4, 8];

/// Prompt tokens before the timed steps of (a) and the batched runs.
const PROMPT: usize = 128;

/// Contexts of the batch-1 runs whose roofline counts the KV read too ([`decode_contexts`]).
const DECODE_CONTEXTS: [usize; 3] = [512, 2048, 4000];

/// Steps timed at each of [`DECODE_CONTEXTS`]: the context stays within ±32 tokens of it.
const CONTEXT_STEPS: usize = 64;

/// (a) Batch-1 decode of each [`DECODE_VARIANTS`] against weight bytes / copy bandwidth.
pub fn decode_batch1(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    shape: &str,
    steps: usize,
    ceilings: Option<Ceilings>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut kv = kv_for(device, model, KvLayout::Interleaved, 2, 4096, 4 << 30)?;
    model.set_max_context(4096);
    // The caller's launch mode (`--no-dependent-launch`) holds for the variants and after them.
    let launch_mode = model.kernels_mut().dependent_launch;
    for v in &DECODE_VARIANTS {
        if !configure(device, model, v, launch_mode)? {
            continue;
        }
        if v.persistent {
            persistent_stages(device, model, &mut kv, shape, report)?;
        }
        let mean = mean_step(&decode_steps(model, &mut kv, PROMPT, steps, 1)?, steps);
        let note = step_floor(model, ceilings).map_or(String::new(), |floor| {
            format!(
                "{:.1}% of roofline {:.1} tok/s",
                100.0 * floor / mean,
                1.0 / floor
            )
        });
        report.value(
            "a",
            &format!("{shape} batch-1 decode tok/s ({})", v.name),
            1.0 / mean,
            "tok/s",
            &note,
        );
    }
    configure(device, model, &DEFAULT, launch_mode)?;
    kv.shutdown()?;
    Ok(())
}

/// Where the persistent kernel's step goes: a few steps with its timers on, then each stage's
/// work (the blocks' mean and the longest) and wait at the barrier after it, averaged over the
/// layers, from the last step. The timers themselves cost a little; the timed runs go without.
fn persistent_stages(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    kv: &mut KvManager,
    shape: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(program) = model.persistent_program() else {
        return Ok(());
    };
    program.enable_timers(device)?;
    decode_steps(model, kv, PROMPT, 16, 1)?;
    let Some(program) = model.persistent_program() else {
        return Ok(());
    };
    let times = program.stage_times(device)?.unwrap_or_default();
    for (stage, t) in ["A qkv", "B attention", "C o", "D gate/up", "E down"]
        .into_iter()
        .zip(times)
    {
        report.value(
            "a",
            &format!("{shape} persistent stage {stage}: mean work"),
            t.mean_work_us,
            "us",
            &format!(
                "longest block {:.1} us; mean wait at the barrier {:.1} us",
                t.max_work_us, t.mean_wait_us
            ),
        );
    }
    // Rebuilt without timers for the timed runs.
    model.set_persistent_decode(true)?;
    Ok(())
}

/// Decode of 2, 4 and 8 sequences in one batch (graphs), the default GEMV against a warp per
/// row: aggregate tok/s, and per sequence against the batch-1 roofline (the weights are read
/// once per step whatever the batch).
pub fn decode_batches(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    shape: &str,
    steps: usize,
    ceilings: Option<Ceilings>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let most = DECODE_BATCHES.into_iter().max().unwrap_or(1);
    let mut kv = kv_for(device, model, KvLayout::Interleaved, most, 4096, 8 << 30)?;
    model.set_max_context(4096);
    let launch_mode = model.kernels_mut().dependent_launch;
    for sequences in DECODE_BATCHES {
        for v in [&DEFAULT, &PER_ROW] {
            configure(device, model, v, launch_mode)?;
            let mean = mean_step(
                &decode_steps(model, &mut kv, PROMPT, steps, sequences)?,
                steps,
            );
            let note = step_floor(model, ceilings).map_or(String::new(), |floor| {
                format!(
                    "{:.1} tok/s per sequence, {:.1}% of the step roofline {:.3} ms",
                    1.0 / mean,
                    100.0 * floor / mean,
                    floor * 1e3
                )
            });
            report.value(
                "a",
                &format!(
                    "{shape} batch-{sequences} decode aggregate tok/s ({})",
                    v.name
                ),
                sequences as f64 / mean,
                "tok/s",
                &note,
            );
        }
    }
    configure(device, model, &DEFAULT, launch_mode)?;
    kv.shutdown()?;
    Ok(())
}

/// Batch-1 decode (the default build, graphs) at each of [`DECODE_CONTEXTS`], against a
/// roofline of the weight bytes plus the K/V bytes read at that context (issue 19's (a)).
pub fn decode_contexts(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    shape: &str,
    ceilings: Option<Ceilings>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cfg = model.config().clone();
    let longest = DECODE_CONTEXTS.into_iter().max().unwrap_or(0) + CONTEXT_STEPS;
    let contexts: Vec<usize> = DECODE_CONTEXTS
        .into_iter()
        .filter(|&c| c + CONTEXT_STEPS / 2 <= cfg.max_positions)
        .collect();
    let mut kv = kv_for(
        device,
        model,
        KvLayout::Interleaved,
        1,
        longest.min(cfg.max_positions),
        8 << 30,
    )?;
    model.set_max_context(longest.min(cfg.max_positions));
    let launch_mode = model.kernels_mut().dependent_launch;
    for (context, v) in contexts
        .iter()
        .flat_map(|&c| [(c, &DEFAULT), (c, &PERSISTENT)])
    {
        if !configure(device, model, v, launch_mode)? {
            continue;
        }
        let prompt_len = context - CONTEXT_STEPS / 2;
        let times = decode_steps(model, &mut kv, prompt_len, CONTEXT_STEPS, 1)?;
        let mean = mean_step(&times, CONTEXT_STEPS);
        // K and V of every layer, bf16, for each token of the context.
        let kv_bytes = 2 * cfg.layers * cfg.kv_dim() * 2 * context;
        let note = ceilings.map_or(String::new(), |c| {
            let floor = (model.weight_bytes_per_step() + kv_bytes) as f64 / c.copy_bytes_per_s;
            format!(
                "{:.1}% of roofline {:.1} tok/s ({:.2} GB of weights + {:.3} GB of K/V)",
                100.0 * floor / mean,
                1.0 / floor,
                model.weight_bytes_per_step() as f64 / 1e9,
                kv_bytes as f64 / 1e9
            )
        });
        report.value(
            "a",
            &format!(
                "{shape} batch-1 decode tok/s at context {context} ({})",
                v.name
            ),
            1.0 / mean,
            "tok/s",
            &note,
        );
    }
    configure(device, model, &DEFAULT, launch_mode)?;
    kv.shutdown()?;
    Ok(())
}

/// Seconds a decode step takes at the memory roofline: the weight bytes it reads over the copy
/// bandwidth (`None` without the ceilings).
fn step_floor(model: &GpuModel, ceilings: Option<Ceilings>) -> Option<f64> {
    ceilings.map(|c| model.weight_bytes_per_step() as f64 / c.copy_bytes_per_s)
}

/// The mean of `times` without the first steps, which capture the graph and warm caches.
fn mean_step(times: &[f64], steps: usize) -> f64 {
    let timed = &times[steps.min(8).min(times.len())..];
    timed.iter().sum::<f64>() / timed.len().max(1) as f64
}

/// Sets `model` up as `v` says (kernels built with its knobs, from the model's kernel cache);
/// false when the model cannot run it as `v` asks (the caller skips the variant).
fn configure(
    device: &GpuDevice,
    model: &mut GpuModel,
    v: &DecodeVariant,
    dependent_launch: bool,
) -> anyhow::Result<bool> {
    // Graphs hold the old kernels and launch modes: drop them before anything changes.
    model.set_graphs(false);
    let cache = GpuOptions::default().kernel_cache;
    let mut kernels = Kernels::load_with(device, cache.as_deref(), v.defines)?.0;
    kernels.dependent_launch &= v.dependent_launch && dependent_launch;
    kernels.gemv_build = v.gemv_build;
    *model.kernels_mut() = kernels;
    model.set_fused_gemv(v.fused_gemv);
    model.set_graphs(v.graphs);
    // The persistent kernel runs bf16 Llama-family blocks only: other models skip its variant.
    Ok(model.set_persistent_decode(v.persistent)? == v.persistent)
}

/// `sequences` sequences: each a `prompt_len`-token prompt, then `steps` greedy decode steps of
/// all of them in one batch (the device picks each token, as for greedy requests); the seconds of each
/// step.
fn decode_steps(
    model: &mut GpuModel,
    kv: &mut KvManager,
    prompt_len: usize,
    steps: usize,
    sequences: usize,
) -> anyhow::Result<Vec<f64>> {
    let slots = (0..sequences)
        .map(|_| kv.admit(prompt_len + steps + 1))
        .collect::<Result<Vec<_>, _>>()?;
    kv.sync()?;
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..sequences)
        .map(|i| prompt(prompt_len, vocab, 1 + i as u32))
        .collect();
    fn chunks<'a>(slots: &[u32], start_pos: usize, tokens: &'a [Vec<u32>]) -> Vec<SeqChunk<'a>> {
        (slots.iter().zip(tokens))
            .map(|(&slot, tokens)| SeqChunk {
                slot,
                start_pos,
                tokens,
                logits: LogitsWanted::Greedy,
            })
            .collect()
    }
    let picked = |logits: &Logits| -> anyhow::Result<Vec<Vec<u32>>> {
        (0..sequences)
            .map(|i| {
                let token = logits
                    .picked(i)
                    .context("a greedy decode step returned no token")?;
                Ok(vec![token])
            })
            .collect()
    };
    let mut next = picked(&model.forward(&chunks(&slots, 0, &prompts), &*kv)?)?;
    let mut times = Vec::with_capacity(steps);
    for step in 0..steps {
        let started = Instant::now();
        next = picked(&model.forward(&chunks(&slots, prompt_len + step, &next), &*kv)?)?;
        times.push(started.elapsed().as_secs_f64());
    }
    for slot in slots {
        kv.free(slot)?;
    }
    Ok(times)
}

/// (b) One prompt of `tokens` tokens in one forward pass.
pub fn prefill(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    tokens: usize,
    ceilings: Option<Ceilings>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cfg = model.config().clone();
    let mut kv = kv_for(device, model, KvLayout::Interleaved, 1, tokens, 4 << 30)?;
    let slot = kv.admit(tokens)?;
    kv.sync()?;
    let ids = prompt(tokens, cfg.vocab_size, 2);
    let mut times = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        model.forward(
            &[SeqChunk {
                slot,
                start_pos: 0,
                tokens: &ids,
                logits: LogitsWanted::Last,
            }],
            &kv,
        )?;
        times.push(started.elapsed().as_secs_f64());
    }
    let seconds = median(times[1..].to_vec());
    let (h, q, kvd, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let matmul_params = cfg.layers * (h * (q + 2 * kvd) + q * h + 3 * h * f);
    let n = tokens as f64;
    let gemm_flops = 2.0 * matmul_params as f64 * n + 2.0 * (h * cfg.vocab_size) as f64;
    // Causal attention: QKᵀ and PV over n²/2 pairs per head.
    let attn_flops = 4.0 * (cfg.layers * cfg.heads * cfg.head_dim) as f64 * n * (n + 1.0) / 2.0;
    let achieved = (gemm_flops + attn_flops) / seconds;
    let note = ceilings.map_or(String::new(), |c| {
        format!(
            "{:.1}% of the GEMM rate; {:.1} ms; linear layers alone {:.0} TFLOP/s",
            100.0 * achieved / c.gemm_flops_per_s,
            seconds * 1e3,
            gemm_flops / seconds / 1e12
        )
    });
    report.value(
        "b",
        &format!("llama-2-7b prefill of {tokens} tokens (matmul + attention FLOPs)"),
        achieved / 1e12,
        "TFLOP/s",
        &note,
    );
    kv.free(slot)?;
    kv.shutdown()?;
    Ok(())
}

/// (e) The two KV layouts under the same decode workload: `seqs` sequences with prompts of
/// 100 + 4 i tokens decoding together, KV reserved one token ahead per step (as the scheduler
/// does) so the mapper maps pages in the background; per-step times split by whether a sequence
/// entered a new page that step (every fourth step, in both layouts).
pub fn vattention(
    device: &Arc<GpuDevice>,
    model: &mut GpuModel,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (seqs, steps) = (64usize, 160usize);
    let prompt_len = |i: usize| 100 + 4 * i;
    let vocab = model.config().vocab_size;
    model.set_graphs(true);
    model.set_max_context(1024);
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        let name = match layout {
            KvLayout::PerLayer => "perLayer",
            KvLayout::Interleaved => "interleaved",
        };
        let mut kv = kv_for(device, model, layout, seqs, 1024, 48 << 30)?;
        let per_page = kv.tokens_per_page();
        let mut slots = Vec::new();
        let prompts: Vec<Vec<u32>> = (0..seqs)
            .map(|i| prompt(prompt_len(i), vocab, i as u32))
            .collect();
        for p in &prompts {
            slots.push(kv.admit(p.len())?);
        }
        for (chunk_slots, chunk_prompts) in slots.chunks(16).zip(prompts.chunks(16)) {
            let chunks: Vec<SeqChunk<'_>> = chunk_slots
                .iter()
                .zip(chunk_prompts)
                .map(|(&slot, p)| {
                    kv.wait_ready(slot, p.len())?;
                    Ok(SeqChunk {
                        slot,
                        start_pos: 0,
                        tokens: p,
                        logits: LogitsWanted::Last,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            model.forward(&chunks, &kv)?;
        }
        let stalls_before = kv.stats().map_stalls;
        let mut next: Vec<[u32; 1]> = (0..seqs).map(|i| [(i * 7 % vocab) as u32]).collect();
        let (mut boundary, mut steady) = (Vec::new(), Vec::new());
        let started_all = Instant::now();
        for step in 0..steps {
            let started = Instant::now();
            let mut crossing = false;
            for (i, &slot) in slots.iter().enumerate() {
                let pos = prompt_len(i) + step;
                crossing |= pos.is_multiple_of(per_page);
                // Next step's token too: the mapper works while this step computes.
                kv.reserve(slot, pos + 2)?;
                kv.wait_ready(slot, pos + 1)?;
            }
            let chunks: Vec<SeqChunk<'_>> = slots
                .iter()
                .zip(&next)
                .enumerate()
                .map(|(i, (&slot, token))| SeqChunk {
                    slot,
                    start_pos: prompt_len(i) + step,
                    tokens: token,
                    logits: LogitsWanted::Last,
                })
                .collect();
            let logits = model.forward(&chunks, &kv)?;
            for (i, t) in next.iter_mut().enumerate() {
                t[0] = argmax(logits.rows(i).next().unwrap_or(&[]));
            }
            let seconds = started.elapsed().as_secs_f64();
            if step >= 4 {
                if crossing {
                    boundary.push(seconds);
                } else {
                    steady.push(seconds);
                }
            }
        }
        let total = started_all.elapsed().as_secs_f64();
        let stats = kv.stats();
        let held = stats.pages_held * stats.page_bytes;
        let (b, s) = (median(boundary.clone()), median(steady.clone()));
        report.value(
            "e",
            &format!("{name}: decode throughput, {seqs} seqs"),
            (seqs * steps) as f64 / total,
            "tok/s",
            &format!("{per_page} tokens/page"),
        );
        report.value(
            "e",
            &format!("{name}: KV memory wasted (held - live)"),
            100.0 * stats.wasted_bytes as f64 / held.max(1) as f64,
            "%",
            &format!(
                "{:.1} MiB of {:.1} MiB held",
                stats.wasted_bytes as f64 / (1u64 << 20) as f64,
                held as f64 / (1u64 << 20) as f64
            ),
        );
        report.value(
            "e",
            &format!("{name}: map stalls during decode"),
            (stats.map_stalls - stalls_before) as f64,
            "stalls",
            &format!("{} pages mapped in all", stats.pages_mapped_total),
        );
        report.value(
            "e",
            &format!("{name}: page-boundary step vs steady step"),
            100.0 * (b / s - 1.0),
            "% slower",
            &format!(
                "median {:.3} ms ({} steps) vs {:.3} ms ({} steps)",
                b * 1e3,
                boundary.len(),
                s * 1e3,
                steady.len()
            ),
        );
        for slot in slots {
            kv.free(slot)?;
        }
        kv.shutdown()?;
    }
    Ok(())
}
