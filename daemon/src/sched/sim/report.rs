//! What one simulated run measured, and the percentiles and table that summarise it.
//!
//! Must not: simulate; it only records latencies and formats them.

/// Latencies and counts of one run. Times are seconds of simulated clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    /// Label of the run (policy and budget) for the table.
    pub label: String,
    /// Time to first token of every request that produced one.
    pub ttft_s: Vec<f64>,
    /// Time between consecutive tokens of a request, pooled over requests (includes the wait
    /// and recompute of a preempted request, as Sarathi-Serve counts it).
    pub tbt_s: Vec<f64>,
    pub requests: usize,
    pub finished: usize,
    pub aborted: usize,
    pub rejected: usize,
    pub preemptions: u64,
    pub iterations: u64,
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    /// From the first arrival to the last token.
    pub makespan_s: f64,
    /// Mean token budget of the iterations (it moves in auto mode).
    pub mean_token_budget: f64,
    /// Pages decodes needed that were not yet reserved when their iteration was scheduled:
    /// mapping on the critical path. The KV look-ahead (`KvShape::lookahead_tokens` ≥ 1) makes
    /// this 0.
    pub late_decode_pages: u64,
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl SimReport {
    pub fn output_tokens_per_s(&self) -> f64 {
        if self.makespan_s > 0.0 {
            self.output_tokens as f64 / self.makespan_s
        } else {
            0.0
        }
    }

    pub fn total_tokens_per_s(&self) -> f64 {
        if self.makespan_s > 0.0 {
            (self.output_tokens + self.prompt_tokens) as f64 / self.makespan_s
        } else {
            0.0
        }
    }

    /// P99 TBT over median TBT (the stall-freedom measure).
    pub fn tbt_tail_ratio(&self) -> Option<f64> {
        Some(percentile(&self.tbt_s, 99.0)? / percentile(&self.tbt_s, 50.0)?)
    }

    /// The header of [`SimReport::table_row`], as a Markdown table.
    pub fn table_header() -> String {
        [
            "| policy | TBT P50 ms | TBT P99 ms | P99/P50 | TTFT P50 s | TTFT P99 s \
             | output tok/s | total tok/s | mean budget | preempted | late decode pages \
             | finished/aborted |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        .join("\n")
    }

    pub fn table_row(&self) -> String {
        let ms = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{:.1}", v * 1e3));
        let secs = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.2}"));
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {}/{} |",
            self.label,
            ms(percentile(&self.tbt_s, 50.0)),
            ms(percentile(&self.tbt_s, 99.0)),
            self.tbt_tail_ratio()
                .map_or("-".to_string(), |ratio| format!("{ratio:.2}")),
            secs(percentile(&self.ttft_s, 50.0)),
            secs(percentile(&self.ttft_s, 99.0)),
            self.output_tokens_per_s(),
            self.total_tokens_per_s(),
            self.mean_token_budget,
            self.preemptions,
            self.late_decode_pages,
            self.finished,
            self.aborted + self.rejected,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
    }

    #[test]
    fn rates_and_row() {
        let report = SimReport {
            label: "x".into(),
            tbt_s: vec![0.010, 0.020],
            ttft_s: vec![1.0],
            output_tokens: 100,
            prompt_tokens: 300,
            makespan_s: 2.0,
            finished: 1,
            ..SimReport::default()
        };
        assert_eq!(report.output_tokens_per_s(), 50.0);
        assert_eq!(report.total_tokens_per_s(), 200.0);
        assert_eq!(report.tbt_tail_ratio(), Some(2.0));
        let row = report.table_row();
        assert!(
            row.starts_with("| x | 10.0 | 20.0 | 2.00 | 1.00 | 1.00 | 50 | 200 |"),
            "{row}"
        );
        assert_eq!(SimReport::default().output_tokens_per_s(), 0.0);
        assert!(SimReport::default().table_row().contains("| - |"));
    }
}
