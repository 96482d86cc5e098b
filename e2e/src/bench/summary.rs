//! Reduces per-request records to `vllm bench serve`'s metrics: TTFT; TPOT = (latency − TTFT) /
//! (output tokens − 1) per request with more than one output token; ITL pooled over every gap of
//! every request; E2E latency; request, output and total token throughput over the run's wall
//! time; goodput = requests per second that met every given SLO.
//!
//! Token counts are the server's (`usage`) when it reports them, otherwise the reference
//! tokenizer's count of the text; the reference counts are kept too (`ref_*`), so servers with
//! different vocabularies compare on the same unit.

use serde::{Deserialize, Serialize};

use crate::bench::BenchError;
use crate::bench::client::RequestRecord;
use crate::bench::stats::Distribution;

/// Service-level objectives for goodput (`--goodput ttft:500 tpot:50 e2el:4000`, in ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2el: Option<f64>,
}

impl Slo {
    /// Parses `metric:milliseconds` items (metrics `ttft`, `tpot`, `e2el`).
    pub fn parse(items: &[String]) -> Result<Self, BenchError> {
        let mut slo = Self::default();
        for item in items {
            let bad = || {
                BenchError::BadOption(format!(
                    "--goodput item {item:?}: expected METRIC:MS with METRIC ttft, tpot or e2el \
                     and MS a positive number"
                ))
            };
            let (metric, ms) = item.split_once(':').ok_or_else(bad)?;
            let ms: f64 = ms.trim().parse().map_err(|_| bad())?;
            if !(ms.is_finite() && ms > 0.0) {
                return Err(bad());
            }
            let slot = match metric.trim() {
                "ttft" => &mut slo.ttft,
                "tpot" => &mut slo.tpot,
                "e2el" => &mut slo.e2el,
                _ => return Err(bad()),
            };
            *slot = Some(ms);
        }
        Ok(slo)
    }

    /// Whether any objective is set.
    pub fn is_set(&self) -> bool {
        self.ttft.is_some() || self.tpot.is_some() || self.e2el.is_some()
    }

    fn met(&self, ttft_s: f64, tpot_s: f64, e2el_s: f64) -> bool {
        let within = |limit: Option<f64>, s: f64| limit.is_none_or(|ms| s * 1000.0 <= ms);
        within(self.ttft, ttft_s) && within(self.tpot, tpot_s) && within(self.e2el, e2el_s)
    }
}

/// Where token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSource {
    /// Every successful request's `usage`.
    Usage,
    /// The reference tokenizer, for at least one request without `usage`.
    RefTokenizer,
}

/// One request as it appears in the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestResult {
    pub start_s: f64,
    pub success: bool,
    pub error: Option<String>,
    pub ttft_s: f64,
    pub itl_s: Vec<f64>,
    pub latency_s: f64,
    /// Tokens in the server's unit (see `token_counts_from`).
    pub input_len: usize,
    pub output_len: usize,
    /// Tokens by the reference tokenizer.
    pub ref_input_len: usize,
    pub ref_output_len: usize,
    pub generated_text: String,
}

/// The metrics of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Wall time from the first request sent to the last response finished.
    pub duration_s: f64,
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub token_counts_from: CountSource,
    pub ref_total_input_tokens: usize,
    pub ref_total_output_tokens: usize,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Requests per second that met every SLO in `goodput_slo_ms` (absent without SLOs).
    pub request_goodput: Option<f64>,
    pub goodput_slo_ms: Slo,
    /// Output tokens per second (server's unit).
    pub output_throughput: f64,
    /// Input + output tokens per second (server's unit).
    pub total_token_throughput: f64,
    /// Output tokens per second counted by the reference tokenizer on the generated text.
    pub ref_output_throughput: f64,
    /// Most requests in flight at once, seen from the client.
    pub max_concurrent_requests: usize,
    pub ttft_ms: Distribution,
    pub tpot_ms: Distribution,
    pub itl_ms: Distribution,
    pub e2el_ms: Distribution,
}

/// The summary and the per-request results of `records` over a run of `duration_s` seconds;
/// `count_tokens` is the reference tokenizer's count of a text.
pub fn summarize(
    records: &[RequestRecord],
    duration_s: f64,
    slo: &Slo,
    count_tokens: impl Fn(&str) -> Result<usize, BenchError>,
) -> Result<(Summary, Vec<RequestResult>), BenchError> {
    let mut requests = Vec::with_capacity(records.len());
    let mut source = CountSource::Usage;
    for r in records {
        let ref_output_len = if r.success {
            count_tokens(&r.generated_text)?
        } else {
            0
        };
        let output_len = match (r.success, r.usage_completion_tokens) {
            (false, _) => 0,
            (true, Some(n)) => n,
            (true, None) => {
                source = CountSource::RefTokenizer;
                ref_output_len
            }
        };
        requests.push(RequestResult {
            start_s: r.start_s,
            success: r.success,
            error: r.error.clone(),
            ttft_s: r.ttft_s,
            itl_s: r.itl_s.clone(),
            latency_s: r.latency_s,
            input_len: r.usage_prompt_tokens.unwrap_or(r.ref_prompt_len),
            output_len,
            ref_input_len: r.ref_prompt_len,
            ref_output_len,
            generated_text: r.generated_text.clone(),
        });
    }
    if records
        .iter()
        .any(|r| r.success && r.usage_prompt_tokens.is_none())
    {
        source = CountSource::RefTokenizer;
    }
    let ok: Vec<&RequestResult> = requests.iter().filter(|r| r.success).collect();
    let tpot_of = |r: &RequestResult| {
        if r.output_len > 1 {
            (r.latency_s - r.ttft_s) / (r.output_len - 1) as f64
        } else {
            0.0
        }
    };
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_len > 1)
        .map(|r| tpot_of(r))
        .collect();
    let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft_s).collect();
    let e2els: Vec<f64> = ok.iter().map(|r| r.latency_s).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    let sum = |f: fn(&RequestResult) -> usize| ok.iter().map(|r| f(r)).sum::<usize>();
    let (input, output) = (sum(|r| r.input_len), sum(|r| r.output_len));
    let ref_output = sum(|r| r.ref_output_len);
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let good = ok
        .iter()
        .filter(|r| slo.met(r.ttft_s, tpot_of(r), r.latency_s))
        .count();
    let summary = Summary {
        duration_s,
        completed: ok.len(),
        failed: requests.len() - ok.len(),
        total_input_tokens: input,
        total_output_tokens: output,
        token_counts_from: source,
        ref_total_input_tokens: sum(|r| r.ref_input_len),
        ref_total_output_tokens: ref_output,
        request_throughput: per_s(ok.len() as f64),
        request_goodput: slo.is_set().then(|| per_s(good as f64)),
        goodput_slo_ms: *slo,
        output_throughput: per_s(output as f64),
        total_token_throughput: per_s((input + output) as f64),
        ref_output_throughput: per_s(ref_output as f64),
        max_concurrent_requests: max_in_flight(&requests),
        ttft_ms: Distribution::from_seconds(&ttfts),
        tpot_ms: Distribution::from_seconds(&tpots),
        itl_ms: Distribution::from_seconds(&itls),
        e2el_ms: Distribution::from_seconds(&e2els),
    };
    Ok((summary, requests))
}

/// Peak number of overlapping `[start, start + latency)` intervals.
fn max_in_flight(requests: &[RequestResult]) -> usize {
    let mut edges: Vec<(f64, i32)> = requests
        .iter()
        .flat_map(|r| [(r.start_s, 1), (r.start_s + r.latency_s, -1)])
        .collect();
    // ends sort before starts at the same instant
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut now = 0i32;
    let mut peak = 0i32;
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    peak.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_parsing_accepts_vllm_spelling_and_rejects_garbage() {
        let slo = Slo::parse(&["ttft:500".into(), "tpot: 50".into()]).expect("valid");
        assert_eq!(
            (slo.ttft, slo.tpot, slo.e2el),
            (Some(500.0), Some(50.0), None)
        );
        for bad in ["ttft", "itl:5", "ttft:-1", "ttft:x", "e2el:inf"] {
            assert!(Slo::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(!Slo::default().is_set());
        assert!(slo.met(0.5, 0.05, 100.0));
        assert!(!slo.met(0.5001, 0.05, 100.0));
    }

    #[test]
    fn in_flight_peak_counts_overlaps_only() {
        let at = |start_s: f64, latency_s: f64| RequestResult {
            start_s,
            success: true,
            error: None,
            ttft_s: 0.0,
            itl_s: vec![],
            latency_s,
            input_len: 0,
            output_len: 0,
            ref_input_len: 0,
            ref_output_len: 0,
            generated_text: String::new(),
        };
        assert_eq!(
            max_in_flight(&[at(0.0, 1.0), at(1.0, 1.0), at(2.0, 1.0)]),
            1
        );
        assert_eq!(
            max_in_flight(&[at(0.0, 3.0), at(1.0, 1.0), at(1.5, 1.0)]),
            3
        );
        assert_eq!(max_in_flight(&[]), 0);
    }

    fn record(
        start_s: f64,
        ttft_s: f64,
        itl_s: Vec<f64>,
        usage: Option<(usize, usize)>,
    ) -> RequestRecord {
        let latency_s = ttft_s + itl_s.iter().sum::<f64>();
        RequestRecord {
            start_s,
            success: true,
            error: None,
            ttft_s,
            itl_s,
            latency_s,
            generated_text: "a b c".into(),
            usage_prompt_tokens: usage.map(|u| u.0),
            usage_completion_tokens: usage.map(|u| u.1),
            ref_prompt_len: 10,
        }
    }

    fn words(text: &str) -> Result<usize, BenchError> {
        Ok(text.split_whitespace().count())
    }

    #[test]
    fn summary_follows_vllm_definitions() {
        let failed = RequestRecord {
            start_s: 0.5,
            error: Some("HTTP 503".into()),
            ..RequestRecord::default()
        };
        let records = vec![
            record(0.0, 0.1, vec![0.02, 0.02, 0.02], Some((8, 4))),
            record(0.0, 0.3, vec![0.04], Some((6, 2))),
            failed,
        ];
        let slo = Slo::parse(&["ttft:200".into()]).expect("valid");
        let (s, reqs) = summarize(&records, 2.0, &slo, words).expect("counts");
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (14, 6));
        assert_eq!(s.token_counts_from, CountSource::Usage);
        assert_eq!(
            (s.ref_total_input_tokens, s.ref_total_output_tokens),
            (20, 6)
        );
        assert!((s.request_throughput - 1.0).abs() < 1e-12);
        assert!((s.output_throughput - 3.0).abs() < 1e-12);
        assert!((s.total_token_throughput - 10.0).abs() < 1e-12);
        assert_eq!(
            s.request_goodput,
            Some(0.5),
            "only the first meets TTFT <= 200 ms"
        );
        // TPOT: (0.16 - 0.1) / 3 = 20 ms and (0.34 - 0.3) / 1 = 40 ms
        assert!((s.tpot_ms.mean - 30.0).abs() < 1e-9);
        // ITL pooled: 20, 20, 20, 40 ms
        assert!((s.itl_ms.mean - 25.0).abs() < 1e-9);
        assert!((s.ttft_ms.median - 200.0).abs() < 1e-9);
        assert_eq!(s.max_concurrent_requests, 2);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[2].output_len, 0);
    }

    #[test]
    fn without_usage_the_reference_tokenizer_counts() {
        let (s, _) = summarize(
            &[record(0.0, 0.1, vec![0.1], None)],
            1.0,
            &Slo::default(),
            words,
        )
        .expect("counts");
        assert_eq!(s.token_counts_from, CountSource::RefTokenizer);
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (10, 3));
        assert_eq!(s.request_goodput, None);
    }
}
