//! The GPU forward pass against the CPU forward pass on the same weights (rounded to bf16 on the
//! host, so the comparison measures the GPU's bf16 activations, not weight rounding), through the
//! real CUDA KV region in both layouts: a chunked prefill next to a one-shot one, then decode
//! steps eager and from graphs. Fresh random prompts each run. With FP8 weights
//! (`--quantization fp8`) the CPU model holds the same quantized values (each block matrix's rows
//! scaled to ±448, rounded to E4M3 on the host as the device rounds them), so the check measures
//! the FP8 kernels and the expansion for prefill GEMMs, not quantization error.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use fused_daemon::kv::{KvBudget, KvConfig, KvLayout, KvManager};
use fused_daemon::model::cuda::{GpuModel, GpuOptions, VocabMatrix, WeightFormat};
use fused_daemon::model::dense_kv::DenseKv;
use fused_daemon::model::weights::Weights;
use fused_daemon::model::{Forward, Logits, LogitsWanted, Model, ModelConfig, SeqChunk};
use fused_kernels::cpu::{BlockKind, QuantMatrix};
use fused_kernels::cuda::{E4M3_MAX, GpuDevice, round_to_e4m3};
use half::bf16;

use crate::report::{Report, argmax};
use fused_kernels::compare::rel_l2;

/// End-to-end logits after several layers of bf16 activations. Each kernel is held to the
/// method's bf16 band (1e-3..1e-2) by `fused-gpu-check`; through a whole model the roundings add
/// up (measured 1.5e-2 on 4 layers, 2.1e-2 on 30), and `e2e/gpu/hf_logits.py` measures
/// transformers' own bf16 error on the same weights as the yardstick for it.
const E2E_TOL: f64 = 3e-2;
/// Two GPU paths over the same bf16 weights and the same bf16 intermediates: only the order of
/// the f32 sums differs.
const PATHS_TOL: f64 = 1e-2;

fn round(v: &mut [f32]) {
    for x in v {
        *x = bf16::from_f32(*x).to_f32();
    }
}

/// Rounds every matrix to bf16 as the GPU stores it (norm weights and biases stay f32 on both
/// sides).
fn round_weights(w: &mut Weights) {
    round(&mut w.embed);
    for table in [&mut w.lm_head, &mut w.positions].into_iter().flatten() {
        round(table);
    }
    for b in &mut w.blocks {
        for l in b.linears_mut() {
            round(&mut l.weight);
        }
    }
    // The checkpoint's blocks no longer match the rounded matrices.
    w.drop_packed();
}

/// Quantizes every block matrix as `--quantization fp8` does on the device: per row, the
/// largest magnitude scaled to [`E4M3_MAX`], each value rounded to E4M3 (the bf16-rounded
/// matrices in, as the device gets them).
fn fp8_round_blocks(w: &mut Weights) {
    for b in &mut w.blocks {
        for l in b.linears_mut() {
            let inner = l.weight.len() / l.out.max(1);
            for row in l.weight.chunks_mut(inner) {
                let largest = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let scale = if largest > 0.0 {
                    largest / E4M3_MAX
                } else {
                    1.0
                };
                let inv = 1.0 / scale;
                for x in row {
                    *x = round_to_e4m3(*x * inv) * scale;
                }
            }
        }
    }
}

/// Quantizes every block matrix into GGUF blocks of `dtype` (candle's ggml port, as llama.cpp
/// writes them) and keeps both: the blocks (what `--quantization gguf` puts on the device, and
/// what the CPU decodes from at a few rows) and their decoded values (what it multiplies past
/// that), so the CPU reference computes with exactly the values the blocks hold.
fn gguf_round_blocks(w: &mut Weights, dtype: GgmlDType, kind: BlockKind) -> anyhow::Result<()> {
    for b in &mut w.blocks {
        for l in b.linears_mut() {
            let inner = l.weight.len() / l.out.max(1);
            let tensor = Tensor::from_vec(l.weight.clone(), (l.out, inner), &Device::Cpu)?;
            let bytes = QTensor::quantize(&tensor, dtype)?.data()?.into_owned();
            let packed = QuantMatrix::new(kind, l.out, inner, bytes)?;
            l.weight = packed.dequantize();
            l.packed = Some(packed);
        }
    }
    Ok(())
}

/// A small GQA shape with head_dim 128 (the 7B kernels' path) whose CPU forward is quick.
pub fn small_gqa() -> ModelConfig {
    ModelConfig {
        vocab_size: 8192,
        hidden: 1024,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        head_dim: 128,
        ffn: 2816,
        max_positions: 2048,
        ..ModelConfig::preset("llama-2-7b").expect("preset exists")
    }
}

/// Qwen2.5-0.5B's blocks (Q/K/V biases, GQA groups of 7, head_dim 64, hidden 896) at 4 layers
/// and an 8,192-token vocabulary.
pub fn small_qwen2() -> ModelConfig {
    ModelConfig {
        vocab_size: 8192,
        layers: 4,
        max_positions: 2048,
        ..ModelConfig::preset("qwen2.5-0.5b").expect("preset exists")
    }
}

/// GPT-2's blocks (LayerNorm, learned positions, GELU, biases everywhere, head_dim 64, hidden
/// 768) at 4 layers and an 8,192-token vocabulary.
pub fn small_gpt2() -> ModelConfig {
    ModelConfig {
        vocab_size: 8192,
        layers: 4,
        ..ModelConfig::preset("gpt2").expect("preset exists")
    }
}

pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(5)
}

/// SplitMix64 for prompts.
fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % vocab as u64) as u32
        })
        .collect()
}

fn chunk(slot: u32, start_pos: usize, tokens: &[u32], logits: LogitsWanted) -> SeqChunk<'_> {
    SeqChunk {
        slot,
        start_pos,
        tokens,
        logits,
    }
}

/// Accumulates GPU and CPU logits of one kind of step.
#[derive(Default)]
struct Pair {
    gpu: Vec<f32>,
    cpu: Vec<f32>,
}

impl Pair {
    fn add(&mut self, gpu: &Logits, cpu: &Logits) {
        self.gpu.extend_from_slice(&gpu.data);
        self.cpu.extend_from_slice(&cpu.data);
    }
}

pub fn run(
    device: &Arc<GpuDevice>,
    report: &mut Report,
    hf_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let seed = seed();
    println!("forward check seed {seed}");
    let shapes = [
        ("gqa-d128", small_gqa()),
        (
            "smollm2-135m",
            ModelConfig::preset("smollm2-135m").expect("preset exists"),
        ),
        ("qwen2-d64-g7", small_qwen2()),
        ("gpt2-d64", small_gpt2()),
    ];
    for (name, cfg) in shapes {
        let mut host = Model::dummy(cfg.clone(), seed % 1000)?;
        round_weights(&mut host.weights);
        let mut fp8 = host.weights.clone();
        let host = Model::new(host.config, host.weights);
        for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
            scenario(
                device,
                &host,
                name,
                layout,
                WeightFormat::Bf16,
                seed,
                report,
            )?;
        }
        fp8_round_blocks(&mut fp8);
        let host = Model::new(cfg, fp8);
        let name = format!("{name} fp8");
        scenario(
            device,
            &host,
            &name,
            KvLayout::Interleaved,
            WeightFormat::Fp8,
            seed,
            report,
        )?;
    }
    // GGUF blocks kept on the device (`--quantization gguf`), every matrix of the shape in one
    // format (its rows are whole 256-weight super-blocks).
    for (dtype, kind) in [
        (GgmlDType::Q8_0, BlockKind::Q8_0),
        (GgmlDType::Q4K, BlockKind::Q4_K),
    ] {
        let mut host = Model::dummy(small_gqa(), seed % 1000)?;
        round_weights(&mut host.weights);
        gguf_round_blocks(&mut host.weights, dtype, kind)?;
        let host = Model::new(host.config, host.weights);
        let name = format!("gqa-d128 {kind:?} blocks");
        scenario(
            device,
            &host,
            &name,
            KvLayout::Interleaved,
            WeightFormat::Blocks,
            seed,
            report,
        )?;
    }
    fp8_checkpoint(device, small_gqa(), seed, report)?;
    for (name, cfg) in [
        ("gqa-d128", small_gqa()),
        (
            "smollm2-135m",
            ModelConfig::preset("smollm2-135m").expect("preset exists"),
        ),
    ] {
        persistent_decode(device, name, cfg, seed, report)?;
    }
    vocab_remap(device, seed, report)?;
    if let Some(dir) = hf_dir {
        for (name, cfg) in [
            ("llama-gqa-d128", small_gqa()),
            ("qwen2-d64-g7", small_qwen2()),
            ("gpt2-d64", small_gpt2()),
        ] {
            hf_export(device, &dir.join(name), cfg, seed, report)?;
        }
    }
    Ok(())
}

/// A GPU KV region of `seqs` sequences of `max_len` tokens in `layout` (1 GiB) and `host`'s
/// weights on the device in `weights`: what each forward check runs.
fn checked_model(
    device: &Arc<GpuDevice>,
    host: &Model,
    (seqs, max_len): (usize, usize),
    layout: KvLayout,
    weights: WeightFormat,
) -> anyhow::Result<(KvManager, GpuModel)> {
    let cfg = &host.config;
    let kv_config = KvConfig {
        max_seqs: seqs,
        max_context_len: max_len,
        layout,
        pool_bytes: 1 << 30,
        ..KvConfig::for_model(cfg.layers, cfg.kv_heads, cfg.head_dim, 2)
    };
    let kv = KvManager::cuda(&kv_config, device.context().clone())?;
    let options = GpuOptions {
        max_context: max_len,
        kernel_cache: Some(std::env::temp_dir().join("fused-kernel-cache")),
        weights,
        ..GpuOptions::default()
    };
    Ok((kv, GpuModel::from_host(device.clone(), host, options)?))
}

/// The persistent decode kernel against the per-op path on the same weights: one prompt
/// prefilled (per-op) into two slots, then 256 decode steps with both fed the same token (the
/// per-op path's pick), one slot through each path; the logits of every step (rel. L2) and the
/// steps whose picks differ. The context crosses KV pages.
fn persistent_decode(
    device: &Arc<GpuDevice>,
    name: &str,
    cfg: ModelConfig,
    seed: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut host = Model::dummy(cfg.clone(), seed % 1000)?;
    round_weights(&mut host.weights);
    let host = Model::new(host.config, host.weights);
    let (prompt_len, steps, max_len) = (300, 256, 1024);
    let (mut kv, mut gpu) = checked_model(
        device,
        &host,
        (2, max_len),
        KvLayout::Interleaved,
        WeightFormat::Bf16,
    )?;
    let prompt = tokens(seed ^ 3, prompt_len, cfg.vocab_size);
    let slots = [
        kv.admit(prompt_len + steps + 1)?,
        kv.admit(prompt_len + steps + 1)?,
    ];
    kv.sync()?;
    let mut next = 0;
    for slot in slots {
        let logits = gpu.forward(&[chunk(slot, 0, &prompt, LogitsWanted::Last)], &kv)?;
        next = argmax(&logits.data);
    }
    let (mut per_op, mut persistent) = (Vec::new(), Vec::new());
    let mut mismatches = 0;
    for step in 0..steps {
        let token = [next];
        let mut logits = [Vec::new(), Vec::new()];
        for (i, (slot, kernel)) in slots.into_iter().zip([false, true]).enumerate() {
            if gpu.set_persistent_decode(kernel)? != kernel {
                anyhow::bail!("{name}: the persistent decode kernel does not run this model");
            }
            let chunks = [chunk(slot, prompt_len + step, &token, LogitsWanted::Last)];
            logits[i] = gpu.forward(&chunks, &kv)?.data;
        }
        next = argmax(&logits[0]);
        mismatches += usize::from(argmax(&logits[1]) != next);
        per_op.extend_from_slice(&logits[0]);
        persistent.extend_from_slice(&logits[1]);
    }
    gpu.set_persistent_decode(false)?;
    for slot in slots {
        kv.free(slot)?;
    }
    kv.shutdown()?;
    report.check(
        "check",
        &format!("{name} persistent decode vs per-op ({steps} steps)"),
        rel_l2(&persistent, &per_op),
        PATHS_TOL,
    );
    report.check(
        "check",
        &format!("{name} persistent decode greedy picks vs per-op (mismatches)"),
        mismatches as f64,
        0.0,
    );
    Ok(())
}

fn scenario(
    device: &Arc<GpuDevice>,
    host: &Model,
    name: &str,
    layout: KvLayout,
    weights: WeightFormat,
    seed: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cfg = &host.config;
    let max_len = 512;
    let (mut kv, mut gpu) = checked_model(device, host, (4, max_len), layout, weights)?;
    let dense = DenseKv::new(cfg, 4, max_len);
    let a = tokens(seed ^ 1, 300, cfg.vocab_size);
    let b = tokens(seed ^ 2, 70, cfg.vocab_size);
    // Reserve everything the scenario writes up front: this checks arithmetic, not mapping.
    let steps = 8;
    let slot_a = kv.admit(300 + steps + 1)?;
    let slot_b = kv.admit(70 + steps + 1)?;
    let (cpu_a, cpu_b) = (0, 1);
    kv.sync()?;
    let (mut prefill, mut eager, mut graph) = (Pair::default(), Pair::default(), Pair::default());
    // Step 1: A's first chunk (no logits) next to B's whole prompt (all logits).
    let run = |gpu: &mut GpuModel,
               kv: &KvManager,
               gpu_chunks: &[SeqChunk<'_>],
               cpu_chunks: &[SeqChunk<'_>]|
     -> anyhow::Result<(Logits, Logits)> {
        Ok((
            gpu.forward(gpu_chunks, kv)?,
            host.forward(cpu_chunks, &dense)?,
        ))
    };
    let (g, c) = run(
        &mut gpu,
        &kv,
        &[
            chunk(slot_a, 0, &a[..200], LogitsWanted::None),
            chunk(slot_b, 0, &b, LogitsWanted::All),
        ],
        &[
            chunk(cpu_a, 0, &a[..200], LogitsWanted::None),
            chunk(cpu_b, 0, &b, LogitsWanted::All),
        ],
    )?;
    prefill.add(&g, &c);
    // Step 2: A's second chunk continues over the K/V of the first.
    let (g, c) = run(
        &mut gpu,
        &kv,
        &[chunk(slot_a, 200, &a[200..], LogitsWanted::Last)],
        &[chunk(cpu_a, 200, &a[200..], LogitsWanted::Last)],
    )?;
    prefill.add(&g, &c);
    let mut next_a = argmax(&c.data[..cfg.vocab_size]);
    let mut next_b = argmax(&prefill.cpu[(70 - 1) * cfg.vocab_size..70 * cfg.vocab_size]);
    // Decode steps, both sequences: the first half eager, the second from a graph.
    for step in 0..steps {
        gpu.set_graphs(step >= steps / 2);
        let (ta, tb) = ([next_a], [next_b]);
        let (pa, pb) = (300 + step, 70 + step);
        let (g, c) = run(
            &mut gpu,
            &kv,
            &[
                chunk(slot_a, pa, &ta, LogitsWanted::Last),
                chunk(slot_b, pb, &tb, LogitsWanted::Last),
            ],
            &[
                chunk(cpu_a, pa, &ta, LogitsWanted::Last),
                chunk(cpu_b, pb, &tb, LogitsWanted::Last),
            ],
        )?;
        if step >= steps / 2 {
            graph.add(&g, &c);
        } else {
            eager.add(&g, &c);
        }
        // Both follow the CPU's choice, so the two sides see the same tokens.
        next_a = argmax(&c.data[..cfg.vocab_size]);
        next_b = argmax(&c.data[cfg.vocab_size..]);
    }
    let layout_name = match layout {
        KvLayout::PerLayer => "perLayer",
        KvLayout::Interleaved => "interleaved",
    };
    let label = |what: &str| format!("{name} {layout_name} {what} vs CPU");
    report.check(
        "check",
        &label("chunked prefill"),
        rel_l2(&prefill.gpu, &prefill.cpu),
        E2E_TOL,
    );
    report.check(
        "check",
        &label("decode eager"),
        rel_l2(&eager.gpu, &eager.cpu),
        E2E_TOL,
    );
    report.check(
        "check",
        &label("decode graph"),
        rel_l2(&graph.gpu, &graph.cpu),
        E2E_TOL,
    );
    if gpu.graphs_captured() == 0 {
        report.check("check", &label("graph was captured"), f64::NAN, 0.0);
    }
    let wrong = greedy_picks(
        &mut gpu,
        &kv,
        [slot_a, slot_b],
        [300 + steps, 70 + steps],
        [next_a, next_b],
    )?;
    report.check(
        "check",
        &format!(
            "{name} {layout_name} greedy picks on the device vs argmax of the rows (mismatches)"
        ),
        wrong as f64,
        0.0,
    );
    kv.shutdown()?;
    Ok(())
}

/// Runs one decode step of two sequences with full rows, then again with the device picking
/// greedily for one and for both (eager and from a graph; the same token at the same position
/// writes the same K/V), and counts picks that differ from the argmax of the full rows or that
/// came with a row.
fn greedy_picks(
    gpu: &mut GpuModel,
    kv: &KvManager,
    slots: [u32; 2],
    positions: [usize; 2],
    next: [u32; 2],
) -> anyhow::Result<usize> {
    let vocab = gpu.config().vocab_size;
    let tokens = next.map(|t| [t]);
    let step = |gpu: &mut GpuModel, wanted: [LogitsWanted; 2]| {
        let chunks: Vec<SeqChunk<'_>> = (0..2)
            .map(|i| chunk(slots[i], positions[i], &tokens[i], wanted[i]))
            .collect();
        gpu.forward(&chunks, kv)
    };
    let mut wrong = 0;
    for graphs in [false, true] {
        gpu.set_graphs(graphs);
        let rows = step(gpu, [LogitsWanted::Last; 2])?;
        for wanted in [
            [LogitsWanted::Greedy, LogitsWanted::Last],
            [LogitsWanted::Greedy; 2],
        ] {
            let got = step(gpu, wanted)?;
            for (i, want) in wanted.iter().enumerate() {
                let expect = argmax(&rows.data[i * vocab..(i + 1) * vocab]);
                let seen = match want {
                    LogitsWanted::Greedy => got.picked(i).filter(|_| got.rows(i).next().is_none()),
                    _ => got.rows(i).next().map(argmax),
                };
                wrong += usize::from(seen != Some(expect));
            }
        }
    }
    Ok(wrong)
}

/// A CUDA KV region for one sequence of up to 256 tokens of `cfg`.
fn one_sequence_kv(device: &Arc<GpuDevice>, cfg: &ModelConfig) -> anyhow::Result<KvManager> {
    let kv_config = KvConfig {
        max_seqs: 1,
        max_context_len: 256,
        pool_bytes: 1 << 30,
        ..KvConfig::for_model(cfg.layers, cfg.kv_heads, cfg.head_dim, 2)
    };
    Ok(KvManager::cuda(&kv_config, device.context().clone())?)
}

/// The largest difference between two passes' logits; NaN when either has a value that is not
/// finite or they differ in length (so the check fails).
fn max_abs_diff(a: &Logits, b: &Logits) -> f64 {
    let finite = |l: &Logits| l.data.iter().all(|v| v.is_finite());
    if a.data.len() != b.data.len() || !finite(a) || !finite(b) {
        return f64::NAN;
    }
    let diffs = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs());
    f64::from(diffs.fold(0f32, f32::max))
}

/// `m [rows, hidden]` with its rows rotated `by` rows up: a stand-in for a vocabulary patch's
/// row layout.
fn rotate_rows<T: Copy>(m: &[T], hidden: usize, by: usize) -> Vec<T> {
    let mut out = m.to_vec();
    out.rotate_left(by * hidden);
    out
}

/// A vocabulary patch laid into the GPU's own embedding and head (`GpuModel::remap_vocab`, what
/// `serve --patch-tokenizer` does to streamed or dummy weights) is the model whose host weights
/// were patched before the upload: prompt logits bit for bit. SmolLM2's tied head becomes its
/// own matrix on both sides.
fn vocab_remap(device: &Arc<GpuDevice>, seed: u64, report: &mut Report) -> anyhow::Result<()> {
    let cfg = ModelConfig {
        layers: 2,
        ..ModelConfig::preset("smollm2-135m").expect("preset exists")
    };
    let (hidden, input_shift, output_shift) = (cfg.hidden, 7, 11);
    let mut host = Model::dummy(cfg.clone(), seed % 1000)?;
    round_weights(&mut host.weights);
    let mut patched = host.weights.clone();
    let embed = rotate_rows(&patched.embed, hidden, input_shift);
    let head = rotate_rows(patched.lm_head(), hidden, output_shift);
    patched.set_vocab(embed, head);
    let patched = Model::new(cfg.clone(), patched);
    let mut kv = one_sequence_kv(device, &cfg)?;
    let prompt = tokens(seed ^ 4, 64, cfg.vocab_size);
    let slot = kv.admit(prompt.len())?;
    kv.sync()?;
    let whole_prompt = [chunk(slot, 0, &prompt, LogitsWanted::All)];
    let mut remapped = GpuModel::from_host(device.clone(), &host, GpuOptions::default())?;
    remapped.remap_vocab(|base, matrix| {
        let by = match matrix {
            VocabMatrix::Input => input_shift,
            VocabMatrix::Output => output_shift,
        };
        Ok(rotate_rows(base, hidden, by))
    })?;
    let got = remapped.forward(&whole_prompt, &kv)?;
    drop(remapped);
    let mut uploaded = GpuModel::from_host(device.clone(), &patched, GpuOptions::default())?;
    let want = uploaded.forward(&whole_prompt, &kv)?;
    let name = "vocabulary remapped on the GPU = patched host weights (max |dlogit|)";
    report.check("check", name, max_abs_diff(&got, &want), 0.0);
    kv.shutdown()?;
    Ok(())
}

/// An FP8 checkpoint of `cfg` (E4M3 block matrices, scales per row and per tensor) streamed to
/// the device, kept FP8 and expanded to bf16, against the CPU model of the values it decodes to:
/// prompt logits within the forward check's tolerance.
pub fn fp8_checkpoint(
    device: &Arc<GpuDevice>,
    cfg: ModelConfig,
    seed: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    use fused_daemon::model::dummy;
    let dir = std::env::temp_dir().join(format!("fused-fp8-check-{}", std::process::id()));
    let (fp8_dir, decoded_dir) = (dir.join("fp8"), dir.join("decoded"));
    let checkpoint = dummy::fp8_checkpoint(&cfg, seed % 1000)?;
    dummy::write_checkpoint(&cfg, &checkpoint.fp8, &fp8_dir)?;
    dummy::write_checkpoint(&cfg, &checkpoint.decoded, &decoded_dir)?;
    let cpu = Model::load_hf_dir(&decoded_dir)?;
    let prompt = tokens(seed ^ 5, 96, cfg.vocab_size);
    let dense = DenseKv::new(&cfg, 1, 128);
    let whole = [chunk(0, 0, &prompt, LogitsWanted::All)];
    let want = cpu.forward(&whole, &dense)?;
    let mut kv = one_sequence_kv(device, &cfg)?;
    let slot = kv.admit(prompt.len())?;
    kv.sync()?;
    let whole = [chunk(slot, 0, &prompt, LogitsWanted::All)];
    for format in [WeightFormat::Fp8, WeightFormat::Bf16] {
        let options = GpuOptions {
            weights: format,
            ..GpuOptions::default()
        };
        let mut gpu = GpuModel::from_checkpoint(device.clone(), cfg.clone(), &fp8_dir, options)?;
        let got = gpu.forward(&whole, &kv)?;
        report.check(
            "check",
            &format!("FP8 checkpoint streamed, kept {format:?}, prefill vs CPU"),
            rel_l2(&got.data, &want.data),
            E2E_TOL,
        );
    }
    kv.shutdown()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Writes a dummy checkpoint (f32) of `cfg`, a prompt and the GPU's logits for every prompt
/// position into `dir`; `e2e/gpu/hf_logits.py` runs HF transformers on the same weights (rounded
/// to bf16, computed in f32) and prints the relative error.
fn hf_export(
    device: &Arc<GpuDevice>,
    dir: &Path,
    cfg: ModelConfig,
    seed: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let weights_seed = seed % 1000;
    fused_daemon::model::dummy::save_safetensors(&cfg, weights_seed, dir)?;
    let mut host = Model::dummy(cfg.clone(), weights_seed)?;
    round_weights(&mut host.weights);
    let host = Model::new(host.config, host.weights);
    let mut kv = one_sequence_kv(device, &cfg)?;
    let mut gpu = GpuModel::from_host(device.clone(), &host, GpuOptions::default())?;
    let prompt = tokens(seed ^ 3, 96, cfg.vocab_size);
    let slot = kv.admit(prompt.len())?;
    kv.sync()?;
    let whole_prompt = [SeqChunk {
        slot,
        start_pos: 0,
        tokens: &prompt,
        logits: LogitsWanted::All,
    }];
    let logits = gpu.forward(&whole_prompt, &kv)?;
    // The same checkpoint loaded from disk as `serve` loads it (streamed to the device, f32 →
    // bf16 on the way, or read on the host first for a family the GPU does not stream) is the
    // same model: the logits must be bit for bit those of the uploaded host weights.
    drop(gpu);
    let (mut loaded, how) = if cfg.arch.streams_to_gpu() {
        let model = GpuModel::from_checkpoint(device.clone(), cfg.clone(), dir, Default::default());
        (model?, "streamed")
    } else {
        let host = Model::load_hf_dir(dir)?;
        let model = GpuModel::from_host(device.clone(), &host, GpuOptions::default());
        (model?, "read on the host")
    };
    let again = loaded.forward(&whole_prompt, &kv)?;
    report.check(
        "check",
        &format!(
            "{} checkpoint {how} = uploaded weights (max |dlogit|)",
            cfg.arch.name()
        ),
        max_abs_diff(&logits, &again),
        0.0,
    );
    drop(loaded);
    let bytes: Vec<u8> = logits.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(dir.join("gpu_logits.f32"), bytes)?;
    std::fs::write(dir.join("prompt.json"), serde_json::to_string(&prompt)?)?;
    report.value(
        "check",
        &format!(
            "{} HF export (see hf_logits.py for the comparison)",
            cfg.arch.name()
        ),
        prompt.len() as f64,
        "tokens",
        &dir.display().to_string(),
    );
    kv.shutdown()?;
    Ok(())
}
