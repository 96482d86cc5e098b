//! Watches a server's Prometheus `/metrics` during a run (`--scrape-metrics`) and keeps what the
//! client cannot see: the peaks of vLLM's scheduler gauges (sequences running and waiting, KV
//! usage) and the preemptions counted during the run. Any server with vLLM's metric names works;
//! missing series stay absent. Informational only: no client metric depends on it.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const RUNNING: &str = "vllm:num_requests_running";
const WAITING: &str = "vllm:num_requests_waiting";
const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
const PREEMPTIONS: &str = "vllm:num_preemptions_total";

/// What the server's gauges showed during a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    /// Scrapes that succeeded.
    pub samples: usize,
    pub peak_num_requests_running: Option<f64>,
    pub peak_num_requests_waiting: Option<f64>,
    /// Peak KV usage, 0..1 as vLLM reports it.
    pub peak_kv_cache_usage_perc: Option<f64>,
    /// `vllm:num_preemptions_total` at the end minus at the start.
    pub preemptions: Option<f64>,
}

/// Sums each metric over its label sets: `name → value`, from the text exposition format.
pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(brace) => match closing_brace(&line[brace..]) {
                Some(close) => (&line[..brace], &line[brace + close + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *values.entry(name.to_owned()).or_insert(0.0) += value;
    }
    values
}

/// Offset of the `}` closing the label set that `labels` starts with, skipping quoted values.
fn closing_brace(labels: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// Polls `url` every `period` until `stop` turns true, then reads the counters once more.
pub async fn watch_server(
    http: reqwest::Client,
    url: String,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> ServerMetrics {
    let mut out = ServerMetrics::default();
    let mut first_preemptions = None;
    let mut last_preemptions = None;
    loop {
        let stopping = *stop.borrow();
        if let Some(values) = scrape(&http, &url).await {
            out.samples += 1;
            let peak = |slot: &mut Option<f64>, key: &str| {
                if let Some(&v) = values.get(key) {
                    *slot = Some(slot.map_or(v, |p: f64| p.max(v)));
                }
            };
            peak(&mut out.peak_num_requests_running, RUNNING);
            peak(&mut out.peak_num_requests_waiting, WAITING);
            peak(&mut out.peak_kv_cache_usage_perc, KV_USAGE);
            if let Some(&v) = values.get(PREEMPTIONS) {
                first_preemptions.get_or_insert(v);
                last_preemptions = Some(v);
            }
        }
        if stopping {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => {}
        }
    }
    out.preemptions = first_preemptions.zip(last_preemptions).map(|(a, b)| b - a);
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> Option<HashMap<String, f64>> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(parse_exposition(&response.text().await.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_sums_label_sets_and_skips_comments() {
        let text = "# HELP vllm:num_requests_running x\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"a\"} 3\n\
                    vllm:num_requests_running{model_name=\"b\",x=\"}\"} 2\n\
                    vllm:num_preemptions_total 7 1700000000\n\
                    broken{ 1\n\
                    nan_value NaN\n";
        let v = parse_exposition(text);
        assert_eq!(v.get(RUNNING), Some(&5.0));
        assert_eq!(v.get(PREEMPTIONS), Some(&7.0));
        assert!(!v.contains_key("broken"));
        assert!(v.get("nan_value").is_some_and(|x| x.is_nan()));
    }
}
