//! `reconcile` against a mocked API server, one test per status transition: which calls it
//! makes (above all, which writes) and the status it writes. Fast and deterministic; the
//! loopback kube-apiserver suites in `e2e/tests/operator_*.rs` check the same against a real
//! server.

use std::sync::Arc;
use std::time::Duration;

use fused_crds::{FusedModel, FusedModelStatus, condition_reason, condition_type};
use kube::runtime::controller::Action;
use serde_json::Value;

use crate::controller::{CONFLICT_RETRY, RESYNC, reconcile};
use crate::fixtures::{Call, NAME, Scenario, UID, World, mocked_context};

/// Runs one reconcile of the scenario; returns its outcome, every call, and the final world.
async fn run(scenario: Scenario) -> (Action, Vec<Call>, World) {
    let (model, world) = scenario.setup();
    run_with(model, world).await
}

/// One reconcile at a time. tracing caches each callsite's interest when the callsite is first
/// hit; a first hit on another thread while a test sets its capturing subscriber can cache
/// "never" for good, and that test then sees no line (a CI failure once). Reconciles are short;
/// the test that captures logs sets its subscriber while it holds this.
static ONE_RECONCILE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one reconcile of `model` against `world`.
async fn run_with(model: FusedModel, world: World) -> (Action, Vec<Call>, World) {
    let _alone = ONE_RECONCILE.lock().await;
    run_alone(model, world).await
}

/// [`run_with`] for a caller that holds [`ONE_RECONCILE`].
async fn run_alone(model: FusedModel, world: World) -> (Action, Vec<Call>, World) {
    let (ctx, verifier) = mocked_context(world);
    let server = tokio::spawn(verifier.serve());
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(model), ctx))
        .await
        .expect("the reconcile finishes")
        .expect("the reconcile succeeds");
    let (calls, world) = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the client is dropped with the context")
        .expect("the verifier does not panic");
    (action, calls, world)
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::summary)
        .collect()
}

/// The status the reconcile wrote.
fn written_status(calls: &[Call]) -> FusedModelStatus {
    let body = calls
        .iter()
        .find(|c| c.resource == "fusedmodels/status")
        .and_then(|c| c.body.clone())
        .expect("a status patch");
    serde_json::from_value(body["status"].clone()).expect("a FusedModel status")
}

/// `(status, reason)` of the condition `type_`.
fn condition(status: &FusedModelStatus, type_: &str) -> (String, String) {
    let condition = status.condition(type_).expect("the condition is set");
    (condition.status.clone(), condition.reason.clone())
}

fn is(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// The reasons of the events published, in order.
fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.resource == "events")
        .filter_map(|c| c.body.as_ref()?.get("reason")?.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn created_applies_the_workload_and_reports_rolling_out() {
    let (action, calls, world) = run(Scenario::Created).await;
    let written = writes(&calls);
    assert_eq!(
        written[..3],
        [
            format!("PATCH deployments/{NAME}"),
            format!("PATCH services/{NAME}"),
            format!("PATCH fusedmodels/status/{NAME}"),
        ],
        "{written:?}"
    );
    assert!(world.get("deployments", NAME).is_some());
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", condition_reason::ROLLING_OUT)
    );
    assert_eq!(
        condition(&status, condition_type::PROGRESSING),
        is("True", condition_reason::ROLLING_OUT)
    );
    assert_eq!(status.observed_generation, Some(1));
    assert!(event_reasons(&calls).contains(&"RollingOut".to_owned()));
    assert_eq!(action, Action::requeue(RESYNC));
}

#[tokio::test]
async fn rolled_out_is_ready_and_writes_only_the_status() {
    let (_, calls, _) = run(Scenario::RolledOut).await;
    assert_eq!(
        writes(&calls)
            .iter()
            .filter(|w| !w.starts_with("POST events"))
            .collect::<Vec<_>>(),
        [&format!("PATCH fusedmodels/status/{NAME}")],
        "the live Deployment and Service match: no write"
    );
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::READY),
        is("True", condition_reason::AVAILABLE)
    );
    assert_eq!(
        condition(&status, condition_type::ARTIFACTS_READY),
        is("True", "Verified")
    );
    assert_eq!((status.replicas, status.ready_replicas), (1, 1));

    // A second reconcile, of the object as the first left it, makes no write at all.
    let (_, _, world) = run(Scenario::RolledOut).await;
    let model: FusedModel =
        serde_json::from_value(world.get("fusedmodels", NAME).expect("model").clone())
            .expect("a FusedModel");
    let (_, calls, _) = run_with(model, world).await;
    assert_eq!(writes(&calls), Vec::<String>::new(), "{calls:?}");
}

#[tokio::test]
async fn invalid_spec_writes_no_workload_and_waits_for_a_change() {
    let (action, calls, _) = run(Scenario::InvalidSpec).await;
    assert!(
        writes(&calls)
            .iter()
            .all(|w| w.contains("fusedmodels/status") || w.starts_with("POST events")),
        "{:?}",
        writes(&calls)
    );
    let status = written_status(&calls);
    for type_ in [condition_type::READY, condition_type::DEGRADED] {
        let (_, reason) = condition(&status, type_);
        assert_eq!(reason, condition_reason::INVALID_SPEC);
    }
    let message = &status
        .condition(condition_type::DEGRADED)
        .expect("Degraded")
        .message;
    assert!(message.contains("spec.image"), "{message}");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_name_held_by_someone_else_is_a_conflict_and_is_left_alone() {
    let (action, calls, world) = run(Scenario::NameConflict).await;
    let written = writes(&calls);
    assert!(
        !written.iter().any(|w| w.contains("services")),
        "the foreign Service must not be written: {written:?}"
    );
    let service = world.get("services", NAME).expect("still there");
    assert_eq!(service["spec"]["selector"]["app"], "billing");
    assert!(service["metadata"].get("ownerReferences").is_none());
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::DEGRADED),
        is("True", condition_reason::NAME_CONFLICT)
    );
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", condition_reason::NAME_CONFLICT)
    );
    let message = &status
        .condition(condition_type::DEGRADED)
        .expect("Degraded")
        .message;
    assert!(
        message.contains(&format!("Service tenant-a/{NAME} already exists")),
        "{message}"
    );
    let events: Vec<&Value> = calls
        .iter()
        .filter(|c| c.resource == "events")
        .filter_map(|c| c.body.as_ref())
        .filter(|e| e["reason"] == condition_reason::NAME_CONFLICT)
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "Warning"),
        "a Warning event"
    );
    assert_eq!(action, Action::requeue(CONFLICT_RETRY));
}

#[tokio::test]
async fn a_digest_mismatch_degrades() {
    let (_, calls, _) = run(Scenario::DigestMismatch).await;
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::DEGRADED),
        is("True", "ArtifactDigestMismatch")
    );
    assert_eq!(
        condition(&status, condition_type::ARTIFACTS_READY),
        is("False", "ArtifactDigestMismatch")
    );
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", "ArtifactDigestMismatch")
    );
}

#[tokio::test]
async fn no_gpu_node_is_insufficient_gpu() {
    let (_, calls, _) = run(Scenario::InsufficientGpu).await;
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::SCHEDULED),
        is("False", condition_reason::INSUFFICIENT_GPU)
    );
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", condition_reason::INSUFFICIENT_GPU)
    );
    assert!(event_reasons(&calls).contains(&condition_reason::INSUFFICIENT_GPU.to_owned()));
}

#[tokio::test]
async fn a_stuck_rollout_is_progress_deadline_exceeded() {
    let (_, calls, _) = run(Scenario::ProgressDeadlineExceeded).await;
    let status = written_status(&calls);
    for type_ in [
        condition_type::READY,
        condition_type::PROGRESSING,
        condition_type::DEGRADED,
    ] {
        assert_eq!(
            condition(&status, type_).1,
            "ProgressDeadlineExceeded",
            "{type_}"
        );
    }
    assert_eq!(condition(&status, condition_type::DEGRADED).0, "True");
}

#[tokio::test]
async fn zero_replicas_is_scaled_to_zero() {
    let (_, calls, _) = run(Scenario::ScaledToZero).await;
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", condition_reason::SCALED_TO_ZERO)
    );
    assert_eq!(
        condition(&status, condition_type::SCHEDULED),
        is("True", condition_reason::SCALED_TO_ZERO)
    );
}

/// The IPs and ports the Endpoints patch of `calls` lists.
fn endpoint_addresses(calls: &[Call]) -> Vec<(String, i64)> {
    let body = calls
        .iter()
        .find(|c| c.resource == "endpoints" && c.is_write())
        .and_then(|c| c.body.clone())
        .expect("an Endpoints patch");
    body["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|subset| {
            let port = subset["ports"][0]["port"].as_i64().unwrap_or_default();
            subset["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |a| (a["ip"].as_str().unwrap_or_default().to_owned(), port))
        })
        .collect()
}

#[tokio::test]
async fn at_zero_a_scale_to_zero_service_drops_its_selector_and_points_at_the_activator() {
    let (_, calls, world) = run(Scenario::OnDemandAtZero).await;
    let written = writes(&calls);
    assert!(
        written.contains(&format!("PATCH services/{NAME}")),
        "the selector an older version set is dropped: {written:?}"
    );
    let service = calls
        .iter()
        .find(|c| c.resource == "services" && c.is_write())
        .and_then(|c| c.body.clone())
        .expect("the Service apply");
    assert_eq!(service["spec"].get("selector"), None, "{service}");
    assert_eq!(
        endpoint_addresses(&calls),
        [(crate::fixtures::ACTIVATOR_IP.to_owned(), 8081)]
    );
    let endpoints = world.get("endpoints", NAME).expect("the endpoints");
    assert_eq!(
        endpoints["metadata"]["ownerReferences"][0]["uid"], UID,
        "owned by the FusedModel"
    );
    let status = written_status(&calls);
    assert_eq!(
        condition(&status, condition_type::READY),
        is("False", condition_reason::SCALED_TO_ZERO)
    );
    assert_eq!(status.ready.as_deref(), Some("0/0"));
}

#[tokio::test]
async fn with_a_serving_replica_the_service_points_at_it() {
    let (_, calls, world) = run(Scenario::OnDemandServing).await;
    assert_eq!(endpoint_addresses(&calls), [("10.2.0.9".to_owned(), 8000)]);
    // The next reconcile of the same world leaves the endpoints alone.
    let model: FusedModel =
        serde_json::from_value(world.get("fusedmodels", NAME).expect("model").clone())
            .expect("a FusedModel");
    let (_, calls, _) = run_with(model, world).await;
    assert!(
        !writes(&calls).iter().any(|w| w.contains("endpoints")),
        "{:?}",
        writes(&calls)
    );
}

#[tokio::test]
async fn the_legacy_finalizer_is_removed_and_nothing_else_is_touched() {
    let (action, calls, world) = run(Scenario::LegacyFinalizer).await;
    assert_eq!(writes(&calls), [format!("PATCH fusedmodels/{NAME}")]);
    let model: FusedModel =
        serde_json::from_value(world.get("fusedmodels", NAME).expect("model").clone())
            .expect("a FusedModel");
    assert_eq!(
        model.metadata.finalizers,
        Some(vec!["example.com/other".to_owned()]),
        "only our legacy finalizer goes"
    );
    let patch = calls[0].body.clone().expect("a patch");
    assert_eq!(
        patch["metadata"]["resourceVersion"], "10",
        "optimistic concurrency"
    );
    assert_eq!(action, Action::await_change());
}

/// A writer collecting formatted log lines, for the span test.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_log_line_of_a_reconcile_names_the_object() {
    let _alone = ONE_RECONCILE.lock().await;
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let (model, world) = Scenario::InvalidSpec.setup();
    run_alone(model, world).await;
    let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("UTF-8");
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.contains("invalid spec"))
        .expect("the reconcile logged the invalid spec");
    assert!(
        line.contains("reconcile{object=") && line.contains(NAME) && line.contains("tenant-a"),
        "{line}"
    );
}
