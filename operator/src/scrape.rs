//! One daemon replica's serving signals, read from its `/metrics` (Prometheus text format): the
//! vLLM series the autoscaler targets — waiting and running requests and KV-cache utilisation
//! (gauges), generated and prompt tokens (counters, for rates and for telling traffic from
//! silence). Series are summed over their label sets (`model_name`, `engine`), except the
//! utilisation, which is averaged.
//!
//! Must not: guess a missing series as zero — a replica whose `/metrics` lacks one is not a
//! sample (the autoscaler then treats it as not ready).

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

/// Waiting requests (gauge).
pub const WAITING: &str = "vllm:num_requests_waiting";
/// Running requests (gauge).
pub const RUNNING: &str = "vllm:num_requests_running";
/// KV-cache utilisation in [0, 1] (gauge).
pub const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// Generated tokens (counter).
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
/// Prompt tokens (counter).
pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens_total";

/// What one scrape of one replica read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:kv_cache_usage_perc`.
    pub kv_usage: f64,
    /// `vllm:generation_tokens_total`.
    pub generation_tokens: f64,
    /// `vllm:prompt_tokens_total`.
    pub prompt_tokens: f64,
}

/// Why a replica gave no sample.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// The request failed or timed out.
    #[error("GET http://{address}/metrics: {source}")]
    Http {
        /// The replica's address.
        address: SocketAddr,
        /// The client's error.
        source: reqwest::Error,
    },
    /// The replica answered with another status than 200.
    #[error("GET http://{address}/metrics answered {status}")]
    Status {
        /// The replica's address.
        address: SocketAddr,
        /// Its status.
        status: reqwest::StatusCode,
    },
    /// A series the autoscaler needs is missing or unreadable.
    #[error("the replica's /metrics has no readable {0}")]
    Missing(&'static str),
}

/// Scrapes `address` (`GET /metrics`) within `timeout`.
pub async fn scrape(
    client: &reqwest::Client,
    address: SocketAddr,
    timeout: Duration,
) -> Result<Sample, ScrapeError> {
    let http = |source| ScrapeError::Http { address, source };
    let response = client
        .get(format!("http://{address}/metrics"))
        .timeout(timeout)
        .send()
        .await
        .map_err(http)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(ScrapeError::Status {
            address,
            status: response.status(),
        });
    }
    parse(&response.text().await.map_err(http)?)
}

/// The sample in a `/metrics` text.
pub fn parse(text: &str) -> Result<Sample, ScrapeError> {
    let mut sums = [0.0_f64; 5];
    let mut counts = [0_usize; 5];
    let names = [WAITING, RUNNING, KV_USAGE, GENERATION_TOKENS, PROMPT_TOKENS];
    for line in text.lines() {
        let Some((name, value)) = series_value(line) else {
            continue;
        };
        if let Some(at) = names.iter().position(|n| *n == name)
            && value.is_finite()
        {
            sums[at] += value;
            counts[at] += 1;
        }
    }
    for (at, name) in names.iter().enumerate() {
        if counts[at] == 0 {
            return Err(ScrapeError::Missing(name));
        }
    }
    Ok(Sample {
        waiting: sums[0],
        running: sums[1],
        kv_usage: sums[2] / counts[2] as f64,
        generation_tokens: sums[3],
        prompt_tokens: sums[4],
    })
}

/// The series name and value of one sample line (`name{labels} value [timestamp]`), or `None`
/// for comments, blank and malformed lines.
fn series_value(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        rest = &rest[labels_end(rest)?..];
    }
    let value = rest.split_whitespace().next()?;
    Some((name, value.parse().ok()?))
}

/// The index just past the `}` closing the label set `text` starts with (quoted values may hold
/// `}` and escaped quotes).
fn labels_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(at + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON: &str = r#"# HELP vllm:num_requests_waiting Requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 3
vllm:num_requests_waiting_by_reason{reason="capacity"} 99
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 2
vllm:num_requests_running{engine="1",model_name="smollm2"} 1
vllm:kv_cache_usage_perc{engine="0",model_name="a}\"b"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="a}\"b"} 0.75
vllm:generation_tokens_total 1234
vllm:prompt_tokens_total{model_name="smollm2"} 5.6e3 1700000000000
vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 7
"#;

    #[test]
    fn reads_the_vllm_series_over_their_label_sets() {
        let sample = parse(DAEMON).expect("a sample");
        assert_eq!(
            sample,
            Sample {
                waiting: 3.0,
                running: 3.0,
                kv_usage: 0.5,
                generation_tokens: 1234.0,
                prompt_tokens: 5600.0,
            }
        );
    }

    #[test]
    fn a_missing_series_is_no_sample() {
        let text = DAEMON.replace("vllm:kv_cache_usage_perc", "other");
        match parse(&text) {
            Err(ScrapeError::Missing(name)) => assert_eq!(name, KV_USAGE),
            other => panic!("{other:?}"),
        }
        assert!(parse("").is_err());
        assert!(parse("vllm:num_requests_waiting{unclosed=\"x 3").is_err());
    }
}
