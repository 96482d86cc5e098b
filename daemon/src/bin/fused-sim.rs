//! `fused-sim`: runs the real scheduler through a simulated arrival trace under several
//! policies and prints one Markdown table (TBT, TTFT, throughput). Deterministic for a seed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use fused_daemon::sched::sim::{
    self, CostModel, KvShape, RunSpec, SimReport, SimSetup, TraceConfig,
};

/// K/V bytes per token of Mistral-7B in bf16: 32 layers × (K + V) × 8 heads × 128 × 2 bytes.
const MISTRAL_7B_KV_BYTES_PER_TOKEN: u64 = 32 * 2 * 8 * 128 * 2;

#[derive(Debug, Parser)]
#[command(about = "Simulate the scheduler's policies on a trace of decodes with long prompts")]
struct Args {
    /// Seconds of arrivals.
    #[arg(long, default_value_t = 300.0)]
    duration_s: f64,
    /// Seed of the arrival trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Arrival rate multiplier: 1.0 = 12 streams/s (prompt 128–512, output 128–512) and
    /// 4.8 long prompts/s (prompt 2048–4096, output 32–128).
    #[arg(long, default_value_t = 1.0)]
    load: f64,
    /// Runs as POLICY:BUDGET, POLICY one of sarathi, prefill-first, decode-first, BUDGET a
    /// token count or auto.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sarathi:512,sarathi:2048,prefill-first:8192,decode-first:8192,sarathi:auto"
    )]
    runs: Vec<RunSpec>,
    /// Also print P50/P99 TBT of every run at each of these loads.
    #[arg(long, value_delimiter = ',')]
    sweep_loads: Vec<f64>,
    #[arg(long, default_value_t = 128)]
    max_num_seqs: usize,
    /// Tokens of KV the KV manager maps ahead of each reservation (its look-ahead; 0 = off).
    #[arg(long, default_value_t = fused_daemon::kv::DEFAULT_LOOKAHEAD_TOKENS)]
    lookahead: usize,
    /// KV pool in GiB (default: 90 % of an H200's 141 GB minus 14.5 GB of weights).
    #[arg(long, default_value_t = 104.0)]
    kv_gib: f64,
    /// Tokens per page (32: the layer-interleaved layout with 2 MiB pages, ANCHORS.md).
    #[arg(long, default_value_t = 32)]
    tokens_per_page: usize,
    /// Context length of one sequence.
    #[arg(long, default_value_t = 16384)]
    max_context: usize,
    /// TBT target of the auto budget, milliseconds.
    #[arg(long, default_value_t = 50)]
    tbt_target_ms: u64,
    #[arg(long, default_value_t = 128)]
    auto_min: usize,
    #[arg(long, default_value_t = 8192)]
    auto_max: usize,
}

fn setups(args: &Args) -> Result<Vec<SimSetup>> {
    if !(args.kv_gib > 0.0 && args.kv_gib.is_finite()) {
        bail!("--kv-gib must be a positive number, got {}", args.kv_gib);
    }
    let pool_bytes = (args.kv_gib * (1u64 << 30) as f64) as u64;
    let kv = KvShape {
        lookahead_tokens: args.lookahead,
        ..KvShape::from_bytes(
            pool_bytes,
            MISTRAL_7B_KV_BYTES_PER_TOKEN,
            args.tokens_per_page,
            args.max_context,
        )
    };
    let target = Duration::from_millis(args.tbt_target_ms);
    Ok(args
        .runs
        .iter()
        .map(|spec| {
            let scheduler =
                spec.scheduler_config(args.max_num_seqs, target, (args.auto_min, args.auto_max));
            SimSetup {
                label: spec.label(target),
                scheduler,
                kv,
                cost: CostModel::mistral_7b_h200(),
            }
        })
        .collect())
}

fn run_all(args: &Args, load: f64, setups: &[SimSetup]) -> Result<(usize, Vec<SimReport>)> {
    let trace = TraceConfig::decodes_with_long_prompts(args.duration_s, args.seed, load)
        .generate()
        .context("generating the trace")?;
    let reports = setups
        .iter()
        .map(|setup| sim::run(&trace, setup).with_context(|| format!("simulating {}", setup.label)))
        .collect::<Result<Vec<_>>>()?;
    Ok((trace.len(), reports))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let setups = setups(&args)?;
    let (requests, reports) = run_all(&args, args.load, &setups)?;
    let kv = setups.first().map(|setup| setup.kv);
    println!(
        "Trace: {requests} requests over {} s (seed {}, load {}), Mistral-7B on H200 cost model, \
         KV pool {} pages of {} tokens, max {} sequences.\n",
        args.duration_s,
        args.seed,
        args.load,
        kv.map_or(0, |kv| kv.total_pages),
        args.tokens_per_page,
        args.max_num_seqs,
    );
    println!("{}", SimReport::table_header());
    for report in &reports {
        println!("{}", report.table_row());
    }
    if !args.sweep_loads.is_empty() {
        println!(
            "\n| load | policy | TBT P50 ms | TBT P99 ms | P99/P50 | TTFT P50 s | TTFT P99 s \
             | output tok/s |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|");
        for &load in &args.sweep_loads {
            let (_, reports) = run_all(&args, load, &setups)?;
            for report in &reports {
                let ms = |p| sim::percentile(&report.tbt_s, p).map_or(f64::NAN, |v| v * 1e3);
                let secs = |p| sim::percentile(&report.ttft_s, p).unwrap_or(f64::NAN);
                println!(
                    "| {load} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} |",
                    report.label,
                    ms(50.0),
                    ms(99.0),
                    report.tbt_tail_ratio().unwrap_or(f64::NAN),
                    secs(50.0),
                    secs(99.0),
                    report.output_tokens_per_s(),
                );
            }
        }
    }
    Ok(())
}
