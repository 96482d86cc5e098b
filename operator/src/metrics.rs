//! The operator's Prometheus series: reconciles, reconcile errors by kind, reconcile duration,
//! child writes versus no-op applies, whether this instance leads, the autoscaler's replica
//! changes and failed scrapes, and the activator's held requests and their outcomes.

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
    /// `fused_operator_scale_changes_total{direction="up"|"down"|"zero"}`.
    pub scale_changes: IntCounterVec,
    /// `fused_operator_scrape_failures_total`: replica `/metrics` reads that failed.
    pub scrape_failures: IntCounter,
    /// `fused_operator_activator_held_requests`: requests the activator holds now.
    pub held_requests: IntGauge,
    /// `fused_operator_activations_total{result="forwarded"|"timeout"|"unknown_model"|"error"}`.
    pub activations: IntCounterVec,
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
        let scale_changes = IntCounterVec::new(
            Opts::new(
                "fused_operator_scale_changes_total",
                "Replica count changes the autoscaler made, by direction",
            ),
            &["direction"],
        )?;
        let scrape_failures = IntCounter::new(
            "fused_operator_scrape_failures_total",
            "Reads of a daemon replica's /metrics that failed",
        )?;
        let held_requests = IntGauge::new(
            "fused_operator_activator_held_requests",
            "Requests the activator holds while a replica starts",
        )?;
        let activations = IntCounterVec::new(
            Opts::new(
                "fused_operator_activations_total",
                "Requests that reached the activator, by outcome",
            ),
            &["result"],
        )?;
        registry.register(Box::new(scale_changes.clone()))?;
        registry.register(Box::new(scrape_failures.clone()))?;
        registry.register(Box::new(held_requests.clone()))?;
        registry.register(Box::new(activations.clone()))?;
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
            scale_changes,
            scrape_failures,
            held_requests,
            activations,
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
