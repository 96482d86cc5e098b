//! The command line of `fused-bench`, in `vllm bench serve`'s spelling where vLLM has the flag,
//! and its translation into the library's specs. Parses and validates; runs nothing.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::bench::BenchError;
use crate::bench::client::Backend;
use crate::bench::dataset::random::{LongMix, RandomSpec};
use crate::bench::dataset::{DatasetName, DatasetSpec};
use crate::bench::plot::DEFAULT_FONT;
use crate::bench::runner::LoadSpec;
use crate::bench::summary::Slo;

/// Benchmark an OpenAI-compatible server (TTFT, TPOT, ITL, E2E latency, throughput, goodput),
/// or draw charts of saved results (`fused-bench plot`).
#[derive(Debug, Parser)]
#[command(name = "fused-bench", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Draw PNG charts from result JSON files (latency CDFs of every run; sweep charts)
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Result files written by --result-json
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Directory for the PNG files
    #[arg(long)]
    pub plot_dir: PathBuf,
    /// TrueType font for chart text
    #[arg(long, env = "FUSED_BENCH_FONT", default_value = DEFAULT_FONT)]
    pub plot_font: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// API flavour
    #[arg(long, value_enum, default_value = "openai")]
    pub backend: Backend,
    /// Server root, e.g. http://127.0.0.1:8000
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// API route; default /v1/completions (openai) or /v1/chat/completions (openai-chat)
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Model name sent in requests; default: the first model of GET /v1/models
    #[arg(long)]
    pub model: Option<String>,
    /// Reference tokenizer (GGUF, tokenizer.json or HF directory): sizes prompts, counts text.
    /// Default: the served model's, through the server's /tokenize and /detokenize.
    #[arg(long, env = "FUSED_BENCH_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Bearer token for the API
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    #[arg(long, value_enum, default_value = "random")]
    pub dataset_name: DatasetName,
    /// File of the sharegpt or text dataset
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Requests to send (with --duration: prompts to sample, reused in order)
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Turns per chat conversation: each arrival starts a conversation whose turns are sent one
    /// after another, each with the conversation so far (the earlier prompts and the server's
    /// answers) before the next prompt, so each turn extends the last. 1: independent requests
    #[arg(long, default_value_t = 1)]
    pub multi_turn: usize,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths uniform in [len·(1−r), len·(1+r)]
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Random tokens shared by every random prompt, before its own
    #[arg(long, default_value_t = 0)]
    pub random_prefix_len: usize,
    /// Fraction of random prompts that are long (0: none), e.g. 0.05 with
    /// --random-long-input-len 8000: long prompts arriving among short ones
    #[arg(long, default_value_t = 0.0)]
    pub random_long_fraction: f64,
    /// Length of the long random prompts (same range ratio)
    #[arg(long, default_value_t = 8192)]
    pub random_long_input_len: usize,
    /// Output length of every ShareGPT request instead of its answer's length
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    /// Reference tokens per text prompt (whole lines; at least this many)
    #[arg(long, default_value_t = 256)]
    pub text_input_len: usize,
    /// Output tokens per text request
    #[arg(long, default_value_t = 128)]
    pub text_output_len: usize,

    /// Requests per second (Poisson for burstiness 1), or inf to send all at once
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Gamma shape of the inter-arrival times: 1 Poisson, < 1 burstier, > 1 more regular
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight at once (a closed loop when --request-rate is inf)
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Send requests for this many seconds instead of --num-prompts requests
    #[arg(long)]
    pub duration: Option<f64>,
    /// Run once per request rate (comma-separated) and write a sweep result
    #[arg(long, value_delimiter = ',')]
    pub sweep_request_rates: Vec<f64>,
    /// Seed of the dataset sampling and the arrival times
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ask the server to generate exactly max_tokens (ignore_eos: true)
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// JSON object merged into every request body, e.g. '{"min_tokens": 64}'
    #[arg(long)]
    pub extra_body: Option<String>,
    /// SLOs for goodput, METRIC:MS with METRIC ttft, tpot or e2el, e.g. --goodput ttft:500 tpot:50
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Unmeasured requests sent one by one first (the first failure stops the benchmark)
    #[arg(long, default_value_t = 1)]
    pub num_warmups: usize,
    /// Seconds one request may take
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout_s: f64,
    /// Watch the server's /metrics during the run (peak running/waiting sequences, KV usage,
    /// preemptions; vLLM's metric names)
    #[arg(long)]
    pub scrape_metrics: bool,

    /// Name of this run in the result and the charts
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result (JSON) here
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// Draw PNG charts of this run (or sweep) into this directory
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// TrueType font for chart text
    #[arg(long, env = "FUSED_BENCH_FONT", default_value = DEFAULT_FONT)]
    pub plot_font: PathBuf,
    /// No progress bar
    #[arg(long)]
    pub disable_tqdm: bool,
}

impl RunArgs {
    /// The server root without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.trim_end_matches('/').to_owned()
    }

    /// The full URL of the API route.
    pub fn api_url(&self) -> String {
        let route = self
            .endpoint
            .clone()
            .unwrap_or_else(|| self.backend.default_endpoint().to_owned());
        format!("{}/{}", self.base_url(), route.trim_start_matches('/'))
    }

    /// The dataset the flags describe.
    pub fn dataset(&self) -> Result<DatasetSpec, BenchError> {
        let path = || {
            self.dataset_path.clone().ok_or_else(|| {
                BenchError::BadOption(format!(
                    "--dataset-name {:?} needs --dataset-path",
                    self.dataset_name
                ))
            })
        };
        Ok(match self.dataset_name {
            DatasetName::Random => DatasetSpec::Random(RandomSpec {
                input_len: self.random_input_len,
                output_len: self.random_output_len,
                range_ratio: self.random_range_ratio,
                prefix_len: self.random_prefix_len,
                long: (self.random_long_fraction != 0.0).then_some(LongMix {
                    fraction: self.random_long_fraction,
                    input_len: self.random_long_input_len,
                }),
            }),
            DatasetName::Sharegpt => DatasetSpec::ShareGpt {
                path: path()?,
                output_len: self.sharegpt_output_len,
            },
            DatasetName::Text => DatasetSpec::Text {
                path: path()?,
                input_len: self.text_input_len,
                output_len: self.text_output_len,
            },
        })
    }

    /// The `--extra-body` object (empty without the flag).
    pub fn extra_body(&self) -> Result<Map<String, Value>, BenchError> {
        match &self.extra_body {
            None => Ok(Map::new()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(BenchError::BadOption(format!(
                    "--extra-body must be a JSON object, got {text:?}"
                ))),
            },
        }
    }

    /// The goodput SLOs.
    pub fn slo(&self) -> Result<Slo, BenchError> {
        Slo::parse(&self.goodput)
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Result<Duration, BenchError> {
        Duration::try_from_secs_f64(self.request_timeout_s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| BenchError::BadOption("--request-timeout-s must be > 0".into()))
    }

    /// The load of a run at `request_rate`.
    pub fn load(&self, request_rate: f64) -> Result<LoadSpec, BenchError> {
        let duration = match self.duration {
            None => None,
            Some(s) => Some(
                Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| BenchError::BadOption("--duration must be > 0".into()))?,
            ),
        };
        Ok(LoadSpec {
            request_rate,
            burstiness: self.burstiness,
            seed: self.seed,
            max_concurrency: self.max_concurrency,
            num_prompts: self.num_prompts,
            turns: self.multi_turn,
            duration,
            warmups: self.num_warmups,
            show_progress: !self.disable_tqdm,
            scrape_url: self
                .scrape_metrics
                .then(|| format!("{}/metrics", self.base_url())),
        })
    }

    /// The request rates to run: the sweep's, or the one `--request-rate`.
    pub fn rates(&self) -> Vec<f64> {
        if self.sweep_request_rates.is_empty() {
            vec![self.request_rate]
        } else {
            self.sweep_request_rates.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("fused-bench").chain(args.iter().copied()))
            .expect("valid command line")
    }

    #[test]
    fn vllm_spelling_parses() {
        let cli = parse(&[
            "--base-url",
            "http://h:1/",
            "--num-prompts",
            "5",
            "--request-rate",
            "2.5",
            "--random-input-len",
            "64",
            "--random-output-len",
            "8",
            "--ignore-eos",
            "--goodput",
            "ttft:100",
            "tpot:20",
            "--result-json",
            "r.json",
            "--backend",
            "openai-chat",
            "--max-concurrency",
            "4",
        ]);
        let run = cli.run;
        assert_eq!(run.api_url(), "http://h:1/v1/chat/completions");
        assert_eq!(run.rates(), vec![2.5]);
        assert!(run.ignore_eos);
        assert_eq!(run.slo().expect("valid").tpot, Some(20.0));
        assert_eq!(run.load(2.5).expect("valid").max_concurrency, Some(4));
        assert!(matches!(run.dataset(), Ok(DatasetSpec::Random(s)) if s.input_len == 64));
    }

    #[test]
    fn defaults_send_everything_at_once_and_plot_is_a_subcommand() {
        let run = parse(&[]).run;
        assert!(run.request_rate.is_infinite());
        assert_eq!(run.api_url(), "http://127.0.0.1:8000/v1/completions");
        let cli = parse(&["plot", "a.json", "--plot-dir", "out"]);
        assert!(matches!(cli.command, Some(Command::Plot(p)) if p.results.len() == 1));
    }

    #[test]
    fn bad_values_are_explained() {
        let run = parse(&[
            "--dataset-name",
            "text",
            "--extra-body",
            "[1]",
            "--duration",
            "0",
        ])
        .run;
        assert!(
            run.dataset()
                .is_err_and(|e| e.to_string().contains("--dataset-path"))
        );
        assert!(
            run.extra_body()
                .is_err_and(|e| e.to_string().contains("JSON object"))
        );
        assert!(
            run.load(1.0)
                .is_err_and(|e| e.to_string().contains("--duration"))
        );
        let rates = parse(&["--sweep-request-rates", "1,2,4"]).run.rates();
        assert_eq!(rates, vec![1.0, 2.0, 4.0]);
    }
}
