//! Reconcile is idempotent: with a client that records every API call (a tower layer on the
//! kube client), a reconcile of an unchanged FusedModel makes no write — only reads — and a spec
//! change writes exactly the Deployment and the status. Runs against a real kube-apiserver
//! without the controller manager, so nothing but the reconciler changes the objects.

mod operator_support;

use std::sync::{Arc, Mutex};

use fused_crds::FusedModel;
use fused_operator::{Context, Metrics, OperatorConfig, reconcile};
use kube::api::{Patch, PatchParams};
use kube::client::ClientBuilder;
use kube::{Api, Client};
use operator_support::*;
use serde_json::json;

/// Every request a client sent, as `METHOD path`.
#[derive(Clone, Default)]
struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn writes(calls: &[String]) -> Vec<&String> {
    calls
        .iter()
        .filter(|c| {
            ["POST ", "PUT ", "PATCH ", "DELETE "]
                .iter()
                .any(|m| c.starts_with(m))
        })
        .collect()
}

async fn recording_client(kubeconfig: &std::path::Path) -> (Client, CallLog) {
    let config = client_config(kubeconfig).await;
    let log = CallLog::default();
    let recorder = log.clone();
    let layer =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            recorder
                .lock()
                .push(format!("{} {}", request.method(), request.uri().path()));
            request
        });
    let client = ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reconcile_of_an_unchanged_object_writes_nothing() {
    let cluster = cluster(false).await;
    let client = cluster.client().expect("client");
    let ns = "op-idempotent";
    create_namespace(&client, ns).await;
    let (recording, log) = recording_client(cluster.kubeconfig()).await;
    let mut config = OperatorConfig::with_daemon_image(TEST_DAEMON_IMAGE);
    config.watch_namespace = Some(ns.into());
    let ctx = Arc::new(
        Context::new(recording, config, Arc::new(Metrics::new().unwrap()))
            .await
            .expect("context"),
    );
    log.take();
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    // The scale-from-zero example has three children: Deployment, Service and its endpoints.
    let name = "smollm2-135m-on-demand";
    create_model(&client, ns, &example("smollm2-135m-scale-from-zero")).await;

    let pass = |label: &'static str| {
        let (models, ctx, log) = (models.clone(), ctx.clone(), log.clone());
        async move {
            let model = models.get(name).await.expect("get the FusedModel");
            reconcile(Arc::new(model), ctx).await.expect("reconcile");
            let calls = log.take();
            println!(
                "{label}: {} calls, {} writes",
                calls.len(),
                writes(&calls).len()
            );
            for call in &calls {
                println!("  {call}");
            }
            calls
        }
    };

    let creates = pass("reconcile 1 (new object)").await;
    let created = writes(&creates);
    assert!(
        !created
            .iter()
            .any(|w| w.ends_with(&format!("fusedmodels/{name}"))),
        "no finalizer is added: {created:?}"
    );
    for path in [
        format!("PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        format!("PATCH /api/v1/namespaces/{ns}/services/{name}"),
        format!("PATCH /api/v1/namespaces/{ns}/endpoints/{name}"),
        format!("PATCH /apis/fused.dev/v1alpha1/namespaces/{ns}/fusedmodels/{name}/status"),
        format!("POST /apis/events.k8s.io/v1/namespaces/{ns}/events"),
    ] {
        assert!(
            created.contains(&&path),
            "{path} among the writes {created:?}"
        );
    }

    let unchanged = pass("reconcile 2 (nothing changed)").await;
    assert!(!unchanged.is_empty(), "the reconcile did read the objects");
    assert_eq!(
        writes(&unchanged),
        Vec::<&String>::new(),
        "an unchanged object gets no write"
    );

    models
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scheduler": {"maxQueue": 32}}})),
        )
        .await
        .expect("change spec.scheduler.maxQueue");
    let changed = pass("reconcile 3 (spec.scheduler.maxQueue changed)").await;
    assert_eq!(
        writes(&changed),
        [
            &format!("PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}"),
            &format!("PATCH /apis/fused.dev/v1alpha1/namespaces/{ns}/fusedmodels/{name}/status"),
        ],
        "a spec change writes the Deployment and the status's observedGeneration, nothing else"
    );
    let again = pass("reconcile 4 (nothing changed)").await;
    assert_eq!(writes(&again), Vec::<&String>::new());
    let applies = ctx.metrics.render().unwrap();
    let lines: Vec<&str> = applies
        .lines()
        .filter(|l| l.starts_with("fused_operator_applies_total"))
        .collect();
    println!("{}", lines.join("\n"));
    assert!(
        lines.contains(&"fused_operator_applies_total{kind=\"Deployment\",result=\"unchanged\"} 2")
    );
    assert!(
        lines.contains(&"fused_operator_applies_total{kind=\"Deployment\",result=\"written\"} 2")
    );
}
