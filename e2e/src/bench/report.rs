//! The result of a run as JSON (the schema below) and as a console table; a sweep is a list of
//! runs. Reading results back is what `fused-bench plot` does.
//!
//! Schema `fused-bench/1` of one run: the options that shaped the load (`label`, `backend`,
//! `base_url`, `endpoint`, `model_id`, `tokenizer_id`, `dataset_name`, `num_prompts`,
//! `request_rate` (null = all at once), `burstiness`, `max_concurrency`, `duration_limit_s`,
//! `seed`, `ignore_eos`), the [`Summary`] fields at top level, `server` (the [`ServerMetrics`]
//! when `--scrape-metrics`, else null) and `requests` (every [`RequestResult`]). A sweep file is
//! `{"schema", "label", "sweep": [run, …]}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bench::BenchError;
use crate::bench::client::Backend;
use crate::bench::dataset::DatasetName;
use crate::bench::scrape::ServerMetrics;
use crate::bench::stats::Distribution;
use crate::bench::summary::{RequestResult, Summary};

/// The schema tag every result carries.
pub const SCHEMA: &str = "fused-bench/1";

/// One run: its load, its metrics, its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub schema: String,
    pub label: String,
    /// Seconds since the Unix epoch when the run started.
    pub date_unix_s: u64,
    pub backend: Backend,
    pub base_url: String,
    pub endpoint: String,
    pub model_id: String,
    pub tokenizer_id: String,
    pub dataset_name: DatasetName,
    pub num_prompts: usize,
    /// Requests per second; null: all at once.
    pub request_rate: Option<f64>,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub duration_limit_s: Option<f64>,
    pub seed: u64,
    pub ignore_eos: bool,
    #[serde(flatten)]
    pub summary: Summary,
    pub server: Option<ServerMetrics>,
    pub requests: Vec<RequestResult>,
}

/// Runs at several request rates, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    pub schema: String,
    pub label: String,
    pub sweep: Vec<BenchResult>,
}

/// What a result file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResultFile {
    Sweep(SweepResult),
    Single(Box<BenchResult>),
}

impl ResultFile {
    /// Writes pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| BenchError::Result {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, json + "\n").map_err(BenchError::io(path))
    }

    /// Reads a result written by [`Self::write`], checking its schema tag.
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(BenchError::io(path))?;
        let file: Self = serde_json::from_str(&text).map_err(|e| BenchError::Result {
            path: path.to_owned(),
            reason: format!("not a fused-bench result: {e}"),
        })?;
        let schema = match &file {
            Self::Sweep(s) => &s.schema,
            Self::Single(r) => &r.schema,
        };
        if schema != SCHEMA {
            return Err(BenchError::Result {
                path: path.to_owned(),
                reason: format!("schema {schema:?}, expected {SCHEMA:?}"),
            });
        }
        Ok(file)
    }
}

/// The console summary of a run, in the layout of `vllm bench serve`.
pub fn console_summary(r: &BenchResult) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<42}{value:>12}\n"));
    let rate = r
        .request_rate
        .map_or("inf".to_owned(), |rate| format!("{rate}"));
    line("Label:", r.label.clone());
    line("Request rate (req/s):", rate);
    line(
        "Max concurrency:",
        r.max_concurrency.map_or("-".into(), |c| c.to_string()),
    );
    line("Successful requests:", s.completed.to_string());
    line("Failed requests:", s.failed.to_string());
    line("Benchmark duration (s):", format!("{:.2}", s.duration_s));
    line("Total input tokens:", s.total_input_tokens.to_string());
    line("Total generated tokens:", s.total_output_tokens.to_string());
    line(
        "Request throughput (req/s):",
        format!("{:.2}", s.request_throughput),
    );
    if let Some(goodput) = s.request_goodput {
        line("Request goodput (req/s):", format!("{goodput:.2}"));
    }
    line(
        "Output token throughput (tok/s):",
        format!("{:.2}", s.output_throughput),
    );
    line(
        "Total token throughput (tok/s):",
        format!("{:.2}", s.total_token_throughput),
    );
    line(
        "Output throughput, ref. tokens (tok/s):",
        format!("{:.2}", s.ref_output_throughput),
    );
    line(
        "Peak requests in flight:",
        s.max_concurrent_requests.to_string(),
    );
    for (title, name, d) in [
        ("Time to First Token", "TTFT", &s.ttft_ms),
        (
            "Time per Output Token (excl. 1st token)",
            "TPOT",
            &s.tpot_ms,
        ),
        ("Inter-token Latency", "ITL", &s.itl_ms),
        ("End-to-end Latency", "E2EL", &s.e2el_ms),
    ] {
        out.push_str(&format!("{:-^54}\n", title));
        distribution_lines(&mut out, name, d);
    }
    if let Some(server) = &r.server {
        out.push_str(&format!("{:-^54}\n", "Server gauges (/metrics)"));
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let mut line =
            |name: &str, value: String| out.push_str(&format!("{name:<42}{value:>12}\n"));
        line(
            "Peak sequences running:",
            opt(server.peak_num_requests_running),
        );
        line(
            "Peak requests waiting:",
            opt(server.peak_num_requests_waiting),
        );
        line("Peak KV usage (0-1):", opt(server.peak_kv_cache_usage_perc));
        line("Preemptions:", opt(server.preemptions));
    }
    out.push_str(&"=".repeat(54));
    out.push('\n');
    out
}

fn distribution_lines(out: &mut String, name: &str, d: &Distribution) {
    for (stat, value) in [
        ("Mean", d.mean),
        ("Median", d.median),
        ("P90", d.p90),
        ("P99", d.p99),
    ] {
        out.push_str(&format!(
            "{:<42}{:>12}\n",
            format!("{stat} {name} (ms):"),
            format!("{value:.2}")
        ));
    }
}
