//! The operator's Prometheus series: reconciles, reconcile errors by kind, reconcile duration,
//! child writes versus no-op applies, and whether this instance leads.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The operator's metrics and the registry they live in.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `fused_operator_reconciles_total`.
    pub reconciles: IntCounter,
    /// `fused_operator_reconcile_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `fused_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `fused_operator_applies_total{kind, result="written"|"unchanged"}`.
    pub applies: IntCounterVec,
    /// `fused_operator_leader`: 1 while this instance holds the Lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every series.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "fused_operator_reconciles_total",
            "FusedModel reconciles started",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "fused_operator_reconcile_errors_total",
                "FusedModel reconciles that failed, by error kind",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "fused_operator_reconcile_duration_seconds",
                "Time one FusedModel reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let applies = IntCounterVec::new(
            Opts::new(
                "fused_operator_applies_total",
                "Child objects applied (written) or found already up to date (unchanged)",
            ),
            &["kind", "result"],
        )?;
        let leader = IntGauge::new(
            "fused_operator_leader",
            "1 while this operator instance holds the leader Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(applies.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            applies,
            leader,
        })
    }

    /// Counts one apply of a `kind` child.
    pub fn count_apply(&self, kind: &str, written: bool) {
        let result = if written { "written" } else { "unchanged" };
        self.applies.with_label_values(&[kind, result]).inc();
    }

    /// The text exposition of every series.
    pub fn render(&self) -> prometheus::Result<String> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
