//! `fused-bench`: benchmark an OpenAI-compatible server the way `vllm bench serve` does, or
//! chart saved results (`fused-bench plot`). See `fused_e2e::bench` and docs/BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use fused_e2e::bench::cli::{Cli, Command, PlotArgs, RunArgs};
use fused_e2e::bench::client::{Endpoint, first_model};
use fused_e2e::bench::report::{BenchResult, ResultFile, SCHEMA, SweepResult, console_summary};
use fused_e2e::bench::tokens::RefTokenizer;
use fused_e2e::bench::{plot, runner, summary};

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread: the client shares the machine with the server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Some(Command::Plot(args)) => draw(&args),
        None => runtime.block_on(bench(cli.run)),
    }
}

async fn bench(args: RunArgs) -> Result<()> {
    let dataset = args.dataset()?;
    let slo = args.slo()?;
    let http = reqwest::Client::builder()
        .timeout(args.request_timeout()?)
        .pool_max_idle_per_host(1024)
        .build()
        .context("building the HTTP client")?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => first_model(&http, &args.base_url(), args.api_key.as_deref()).await?,
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => RefTokenizer::load(path)?,
        None => {
            eprintln!(
                "no --tokenizer: sizing prompts and counting text with the server's /tokenize"
            );
            // Its calls block this thread: they happen before and after the measured run.
            RefTokenizer::from_server(&args.base_url(), &model, args.api_key.as_deref())?
        }
    };
    let endpoint = Arc::new(Endpoint {
        http,
        url: args.api_url(),
        backend: args.backend,
        model: model.clone(),
        api_key: args.api_key.clone(),
        ignore_eos: args.ignore_eos,
        temperature: args.temperature,
        extra_body: args.extra_body()?,
    });
    eprintln!(
        "sampling {} prompts ({:?} dataset, seed {}) ...",
        args.num_prompts, args.dataset_name, args.seed
    );
    let prompts = Arc::new(dataset.sample(&tokenizer, args.num_prompts, args.seed)?);
    if args.plot_dir.is_some() {
        plot::load_font(&args.plot_font)?;
    }

    let mut runs = Vec::new();
    for rate in args.rates() {
        let load = args.load(rate)?;
        eprintln!(
            "benchmarking {} ({model}) at request rate {rate}, max concurrency {} ...",
            endpoint.url,
            load.max_concurrency.map_or("-".into(), |c| c.to_string())
        );
        let outcome = runner::run(endpoint.clone(), prompts.clone(), &load).await?;
        let (summary, requests) =
            summary::summarize(&outcome.records, outcome.duration_s, &slo, |text| {
                tokenizer.count(text)
            })?;
        let result = BenchResult {
            schema: SCHEMA.into(),
            label: args.label.clone(),
            date_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            backend: args.backend,
            base_url: args.base_url(),
            endpoint: endpoint.url.clone(),
            model_id: model.clone(),
            tokenizer_id: tokenizer.source().to_owned(),
            dataset_name: args.dataset_name,
            num_prompts: args.num_prompts,
            request_rate: rate.is_finite().then_some(rate),
            burstiness: args.burstiness,
            max_concurrency: args.max_concurrency,
            duration_limit_s: args.duration,
            seed: args.seed,
            ignore_eos: args.ignore_eos,
            summary,
            server: outcome.server,
            requests,
        };
        print!("{}", console_summary(&result));
        if let Some(first_error) = result.requests.iter().find_map(|r| r.error.as_deref()) {
            eprintln!("first request error: {first_error}");
        }
        runs.push(result);
    }

    let file = if args.sweep_request_rates.is_empty() {
        let run = runs
            .pop()
            .context("a run without a sweep has exactly one result")?;
        ResultFile::Single(Box::new(run))
    } else {
        ResultFile::Sweep(SweepResult {
            schema: SCHEMA.into(),
            label: args.label.clone(),
            sweep: runs,
        })
    };
    if let Some(path) = &args.result_json {
        file.write(path)?;
        eprintln!("result written to {}", path.display());
    }
    if let Some(dir) = &args.plot_dir {
        plot_files(&[file], dir)?;
    }
    Ok(())
}

fn draw(args: &PlotArgs) -> Result<()> {
    plot::load_font(&args.plot_font)?;
    let files = args
        .results
        .iter()
        .map(|p| ResultFile::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    plot_files(&files, &args.plot_dir)
}

fn plot_files(files: &[ResultFile], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut singles: Vec<&BenchResult> = Vec::new();
    let mut sweeps = Vec::new();
    for file in files {
        match file {
            ResultFile::Single(run) => singles.push(run),
            ResultFile::Sweep(sweep) => sweeps.push((sweep.label.as_str(), sweep.sweep.as_slice())),
        }
    }
    let mut written = Vec::new();
    if !singles.is_empty() {
        written.push(plot::latency_cdfs(&singles, dir)?);
    }
    if !sweeps.is_empty() {
        written.extend(plot::sweeps(&sweeps, dir)?);
    }
    for path in written {
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}
