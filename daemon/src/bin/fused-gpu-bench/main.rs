//! `fused-gpu-bench`: the GPU path's end-to-end checks and benchmarks, in one process on one GPU
//! (so one call on a lent machine runs them all):
//!
//! - `check`: the GPU forward pass against the CPU forward pass on the same (bf16-rounded) dummy
//!   weights, through the real CUDA KV region in both layouts, chunked prefill, eager and graph
//!   decode, and an FP8 checkpoint streamed in (alone: `fp8-checkpoint`); optionally writes a
//!   dummy checkpoint + GPU logits for the HF transformers check;
//! - `ceilings`: device copy bandwidth and bf16 GEMM rate, measured in the same run;
//! - `ops`: device time of each operation of a layer (decode at batch 1, 4K prefill);
//! - `decode`: batch-1 decode tok/s of dummy Llama-2-7B against the memory roofline (a);
//! - `prefill`: a 4K-token prompt's TFLOP/s against the GEMM rate (b);
//! - `vattn`: per-layer vs interleaved KV layout: throughput, waste, stalls, page boundaries (e);
//! - `offline`: N requests × (512 in, 128 out) through the real engine and scheduler (c).
//!
//! Prints a table last; exits non-zero if a correctness check fails.

mod bench;
mod check;
mod offline;
mod ops;
mod report;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fused_daemon::model::ModelConfig;
use fused_daemon::model::cuda::{GpuModel, GpuOptions, WeightFormat};
use fused_kernels::cuda::{BlockFormat, GpuDevice};

use report::Report;

#[derive(Debug, Parser)]
struct Args {
    /// Comma-separated parts: check, ceilings, ops, decode, decode-batches, decode-contexts
    /// (batch 1 at contexts 512, 2,048 and 4,000), prefill, vattn, offline (`fp8-checkpoint`:
    /// the one check of `check` that streams an FP8 checkpoint).
    #[arg(
        long,
        default_value = "check,ceilings,ops,decode,decode-batches,prefill,vattn,offline"
    )]
    only: String,
    /// Write a dummy checkpoint, prompt and GPU logits here for `e2e/gpu/hf_logits.py`.
    #[arg(long)]
    hf_dir: Option<PathBuf>,
    /// Shape of the benchmark model (dummy weights generated on the GPU).
    #[arg(long, default_value = "llama-2-7b")]
    shape: String,
    /// Decode steps timed at batch 1.
    #[arg(long, default_value_t = 256)]
    decode_steps: usize,
    /// Prompt length of the prefill benchmark.
    #[arg(long, default_value_t = 4096)]
    prefill_tokens: usize,
    /// Offline workload: requests, prompt and output tokens.
    #[arg(long, default_value_t = 256)]
    offline_requests: usize,
    #[arg(long, default_value_t = 512)]
    offline_prompt: usize,
    #[arg(long, default_value_t = 128)]
    offline_output: usize,
    /// Tokenizer of the offline run (the engine detokenizes every output token, as when
    /// serving): a tokenizer.json, an HF directory or a GGUF whose vocabulary covers the shape's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Scheduler token budgets of the offline run (comma-separated: one run each).
    #[arg(long, default_value = "4096")]
    token_budget: String,
    /// Keep the benchmark model's block matrices as FP8 (E4M3, a scale per row), quantized at
    /// load: vLLM's `--quantization fp8`.
    #[arg(long)]
    fp8: bool,
    /// Make the benchmark model's block matrices random GGUF blocks of this format (`q8_0`,
    /// `q4_k`), read by the block GEMV: what `--quantization gguf` keeps of a GGUF file.
    #[arg(long, value_parser = parse_block_format)]
    gguf: Option<BlockFormat>,
    /// Launch kernels in stream order only (no programmatic dependent launch), to measure what
    /// it brings.
    #[arg(long)]
    no_dependent_launch: bool,
    /// Append the results as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_block_format(name: &str) -> Result<BlockFormat, String> {
    match name {
        "q8_0" => Ok(BlockFormat::Q8_0),
        "q4_k" => Ok(BlockFormat::Q4_K),
        other => Err(format!("`{other}`: q8_0 or q4_k")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let parts: Vec<&str> = args.only.split(',').map(str::trim).collect();
    let wants = |part: &str| parts.contains(&part);
    let device = match GpuDevice::open(0) {
        Ok(device) => Arc::new(device),
        Err(error) => {
            eprintln!("fused-gpu-bench: no usable GPU ({error}); nothing was run");
            std::process::exit(2);
        }
    };
    let (free, total) = device.memory()?;
    println!(
        "device: {} ({}, {} SMs, {:.1} of {:.1} GiB free)",
        device.name(),
        device.arch(),
        device.multiprocessors(),
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64
    );
    let mut report = Report::default();
    if wants("check") {
        check::run(&device, &mut report, args.hf_dir.as_deref())?;
    } else if wants("fp8-checkpoint") {
        check::fp8_checkpoint(&device, check::small_gqa(), check::seed(), &mut report)?;
    }
    let mut ceilings = None;
    if wants("ceilings") {
        ceilings = Some(bench::ceilings(&device, &mut report)?);
    }
    let perf = [
        "ops",
        "decode",
        "decode-batches",
        "decode-contexts",
        "prefill",
        "vattn",
        "offline",
    ];
    if perf.iter().any(|p| wants(p)) {
        let config = ModelConfig::preset(&args.shape)
            .with_context(|| format!("unknown shape {}", args.shape))?;
        let started = std::time::Instant::now();
        let options = GpuOptions {
            weights: if args.fp8 {
                WeightFormat::Fp8
            } else {
                WeightFormat::Bf16
            },
            ..GpuOptions::default()
        };
        let dummy = || -> anyhow::Result<GpuModel> {
            let mut model = match args.gguf {
                Some(format) => GpuModel::dummy_blocks(
                    device.clone(),
                    config.clone(),
                    1,
                    options.clone(),
                    format,
                )?,
                None => GpuModel::dummy(device.clone(), config.clone(), 1, options.clone())?,
            };
            model.kernels_mut().dependent_launch &= !args.no_dependent_launch;
            Ok(model)
        };
        let mut model = dummy()?;
        println!(
            "{}{}: dummy weights on the GPU in {:.2} s ({:.2} GB read per decode step); kernels: {:?}",
            args.shape,
            match (args.fp8, args.gguf) {
                (_, Some(format)) => format!(" {format:?}"),
                (true, None) => " fp8".to_owned(),
                (false, None) => String::new(),
            },
            started.elapsed().as_secs_f64(),
            model.weight_bytes_per_step() as f64 / 1e9,
            model.kernel_cache_status()
        );
        if wants("ops") {
            ops::run(&device, &config, model.kernels_mut(), &mut report)?;
        }
        if wants("decode") {
            bench::decode_batch1(
                &device,
                &mut model,
                &args.shape,
                args.decode_steps,
                ceilings,
                &mut report,
            )?;
        }
        if wants("decode-contexts") {
            bench::decode_contexts(&device, &mut model, &args.shape, ceilings, &mut report)?;
        }
        if wants("decode-batches") {
            bench::decode_batches(
                &device,
                &mut model,
                &args.shape,
                args.decode_steps,
                ceilings,
                &mut report,
            )?;
        }
        if wants("prefill") {
            bench::prefill(
                &device,
                &mut model,
                args.prefill_tokens,
                ceilings,
                &mut report,
            )?;
        }
        if wants("vattn") {
            bench::vattention(&device, &mut model, &mut report)?;
        }
        let mut spare = Some(model);
        if wants("offline") {
            let budgets: Vec<usize> = args
                .token_budget
                .split(',')
                .map(|b| b.trim().parse())
                .collect::<Result<_, _>>()
                .context("--token-budget: comma-separated numbers")?;
            let tokenizer = args
                .tokenizer
                .as_deref()
                .context("the offline part needs --tokenizer (the engine detokenizes output)")?;
            let codec = Arc::new(
                fused_daemon::tokenizer::Codec::from_path(tokenizer)
                    .with_context(|| format!("loading {}", tokenizer.display()))?,
            );
            for token_budget in budgets {
                let workload = offline::Workload {
                    requests: args.offline_requests,
                    prompt: args.offline_prompt,
                    output: args.offline_output,
                    token_budget,
                };
                // The engine takes the model; later runs get a fresh one (same seed).
                let model = match spare.take() {
                    Some(model) => model,
                    None => dummy()?,
                };
                offline::run(&device, model, codec.clone(), workload, &mut report)?;
            }
        }
    }
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if report.failures() > 0 {
        println!("{} correctness check(s) FAILED", report.failures());
        std::process::exit(1);
    }
    Ok(())
}
