//! The FusedModel CRD on a real kube-apiserver (v1.20, loopback): the generated CRD installs
//! and becomes Established, every example is accepted and listed by `kubectl get fm -A` with
//! the printer columns, the scale subresource works, and invalid FusedModels are rejected by
//! the API server with a message naming the field. Run with `-- --nocapture` to see the
//! server's rejection messages and the kubectl table.

use fused_crds::{
    FusedModel, FusedModelStatus, SpecError, condition, condition_reason, condition_type,
};
use fused_e2e::k8s::{
    ClusterError, TestCluster, apply_yaml, create_object, install_fused_crd, parse_manifests,
};
use fused_e2e::workspace_root;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::OnceCell;

const EXAMPLES_NS: &str = "examples";
const INVALID_NS: &str = "default";

/// The shared cluster of this test binary with the FusedModel CRD installed.
async fn cluster_with_crd() -> &'static TestCluster {
    static CRD_INSTALLED: OnceCell<()> = OnceCell::const_new();
    let cluster = TestCluster::shared(false)
        .await
        .expect("start the test cluster");
    CRD_INSTALLED
        .get_or_try_init(|| async {
            let crd = install_fused_crd(&cluster.client()?).await?;
            println!(
                "CRD {} is Established",
                crd.metadata.name.unwrap_or_default()
            );
            Ok::<(), ClusterError>(())
        })
        .await
        .expect("install the FusedModel CRD from charts/fused-crds");
    cluster
}

/// Every `examples/*.yaml`, sorted, with its contents.
fn example_files() -> Vec<(String, String)> {
    let dir = workspace_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected at least three examples in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable example");
            (
                format!(
                    "examples/{}",
                    p.file_name().expect("a file").to_string_lossy()
                ),
                text,
            )
        })
        .collect()
}

#[tokio::test]
async fn examples_are_accepted_and_listed_with_printer_columns() {
    let cluster = cluster_with_crd().await;
    let client = cluster.client().expect("client");
    let namespace =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": EXAMPLES_NS}});
    apply_yaml(&client, &namespace.to_string(), "default")
        .await
        .expect("create the examples namespace");

    let mut names = Vec::new();
    for (file, text) in example_files() {
        for object in parse_manifests(&text).expect("example parses") {
            let typed: FusedModel =
                serde_json::from_value(serde_json::to_value(&object).expect("to JSON"))
                    .unwrap_or_else(|e| panic!("{file} is not a FusedModel: {e}"));
            assert_eq!(
                typed.spec.validate(),
                Ok(()),
                "{file} breaks a cross-field rule"
            );
        }
        let applied = apply_yaml(&client, &text, EXAMPLES_NS)
            .await
            .unwrap_or_else(|e| panic!("{file} must be accepted: {e}"));
        for object in applied {
            println!(
                "applied {file} -> fusedmodel/{}",
                object.metadata.name.clone().unwrap_or_default()
            );
            names.push(object.metadata.name.unwrap_or_default());
        }
    }

    let models: Api<FusedModel> = Api::namespaced(client.clone(), EXAMPLES_NS);
    // Schema defaults fill what an example leaves out.
    let on_demand = models
        .get("smollm2-135m-on-demand")
        .await
        .expect("scale-from-zero example stored");
    assert_eq!(on_demand.spec.kv_cache.block_size, 2_097_152);
    assert_eq!(on_demand.spec.kv_cache.gpu_memory_utilization, 0.9);
    assert_eq!(on_demand.spec.scheduler.max_queue, 1024);

    // Status subresource: Progressing listed before Ready, so a Reason column taken from
    // conditions[0] would show the wrong reason.
    let smollm = models
        .get("smollm2-135m")
        .await
        .expect("SmolLM2 example stored");
    let mut status = FusedModelStatus {
        observed_generation: smollm.metadata.generation,
        replicas: 1,
        ready_replicas: 1,
        ready: Some("1/1".into()),
        selector: Some("fused.dev/model=smollm2-135m".into()),
        endpoint: Some("http://smollm2-135m.examples.svc:8000/v1".into()),
        autoscaling: None,
        conditions: Vec::new(),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = smollm.metadata.generation;
    status.set_condition(
        condition(
            condition_type::PROGRESSING,
            false,
            "RolloutComplete",
            "all replicas updated",
            generation,
        ),
        now.clone(),
    );
    status.set_condition(
        condition(
            condition_type::READY,
            true,
            condition_reason::AVAILABLE,
            "1/1 replicas serve requests",
            generation,
        ),
        now,
    );
    let patch = json!({"apiVersion": "fused.dev/v1alpha1", "kind": "FusedModel", "status": status});
    models
        .patch_status(
            "smollm2-135m",
            &PatchParams::apply("crd-api-test").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status subresource accepts the status");

    // Scale subresource: kubectl scale writes spec.replicas.
    cluster
        .run_kubectl(&[
            "scale",
            "fm",
            "llama2-7b-medical",
            "-n",
            EXAMPLES_NS,
            "--replicas=3",
        ])
        .expect("kubectl scale works through the scale subresource");
    let llama = models
        .get("llama2-7b-medical")
        .await
        .expect("Llama example stored");
    assert_eq!(llama.spec.replicas, 3);
    let scale = models
        .get_scale("smollm2-135m")
        .await
        .expect("scale subresource");
    assert_eq!(
        scale.status.as_ref().and_then(|s| s.selector.as_deref()),
        Some("fused.dev/model=smollm2-135m")
    );

    let table = cluster
        .run_kubectl(&["get", "fm", "-A"])
        .expect("kubectl get fm -A");
    println!("$ kubectl get fm -A\n{table}");
    let rows = parse_table(&table);
    let header = table.lines().next().expect("a header line");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAMESPACE", "NAME", "READY", "STATUS", "ENDPOINT", "AGE"]
    );
    for name in &names {
        let row = rows
            .iter()
            .find(|r| r["NAMESPACE"] == EXAMPLES_NS && &r["NAME"] == name)
            .unwrap_or_else(|| panic!("kubectl lists {name}"));
        assert!(!row["AGE"].is_empty(), "{name} has an age");
        if name == "smollm2-135m" {
            assert_eq!(
                (
                    row["READY"].as_str(),
                    row["STATUS"].as_str(),
                    row["ENDPOINT"].as_str()
                ),
                (
                    "1/1",
                    "Available",
                    "http://smollm2-135m.examples.svc:8000/v1"
                )
            );
        } else {
            assert_eq!(
                (row["READY"].as_str(), row["STATUS"].as_str()),
                ("", ""),
                "{name} has no status yet"
            );
        }
    }
    // The wide listing adds the KV page size.
    let wide = cluster
        .run_kubectl(&["get", "fm", "-n", EXAMPLES_NS, "-o", "wide"])
        .expect("kubectl get fm -o wide");
    println!("$ kubectl get fm -o wide\n{wide}");
    let rows = parse_table(&wide);
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.split_whitespace().any(|c| c == "BLOCKSIZE")),
        "{wide}"
    );
    for row in rows {
        assert_eq!(row["BLOCKSIZE"], "2097152", "{row:?}");
    }
}

/// Splits a kubectl table into rows keyed by column header, using the header's column offsets
/// (empty cells are blank, so splitting on whitespace would shift columns).
fn parse_table(table: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    for word in header.split_whitespace() {
        let at = offset
            + header[offset..]
                .find(word)
                .expect("word comes from the header");
        starts.push((at, word));
        offset = at + word.len();
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(i, (start, name))| {
                    let end = starts
                        .get(i + 1)
                        .map_or(line.len(), |(next, _)| *next)
                        .min(line.len());
                    let cell = line.get((*start).min(end)..end).unwrap_or_default().trim();
                    ((*name).to_owned(), cell.to_owned())
                })
                .collect()
        })
        .collect()
}

/// A FusedModel with `spec` exactly as given (no client-side defaults or types).
fn raw_fused_model(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "fused.dev/v1alpha1",
        "kind": "FusedModel",
        "metadata": {"name": name, "namespace": INVALID_NS},
        "spec": spec,
    }))
    .expect("a well-formed object")
}

fn base(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"baseModel": {"uri": "file:///models/m.gguf", "format": "gguf"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

#[tokio::test]
async fn invalid_fused_models_are_rejected_naming_the_field() {
    let cluster = cluster_with_crd().await;
    let client = cluster.client().expect("client");
    let cases = [
        (
            "block-size-1000",
            base(json!({"kvCache": {"blockSize": 1000}})),
            "spec.kvCache.blockSize",
        ),
        (
            "block-size-0",
            base(json!({"kvCache": {"blockSize": 0}})),
            "spec.kvCache.blockSize",
        ),
        (
            "block-size-3mib",
            base(json!({"kvCache": {"blockSize": 3145728}})),
            "spec.kvCache.blockSize",
        ),
        (
            "negative-replicas",
            base(json!({"replicas": -1})),
            "spec.replicas",
        ),
        (
            "missing-base-model",
            json!({"replicas": 1}),
            "spec.baseModel",
        ),
        (
            "unknown-uri-scheme",
            json!({"baseModel": {"uri": "ftp://example/m.gguf", "format": "gguf"}}),
            "spec.baseModel.uri",
        ),
        (
            "unknown-format",
            json!({"baseModel": {"uri": "file:///m.bin", "format": "pickle"}}),
            "spec.baseModel.format",
        ),
        (
            "gpu-memory-1.5",
            base(json!({"kvCache": {"gpuMemoryUtilization": 1.5}})),
            "spec.kvCache.gpuMemoryUtilization",
        ),
        (
            "gpu-memory-0",
            base(json!({"kvCache": {"gpuMemoryUtilization": 0}})),
            "spec.kvCache.gpuMemoryUtilization",
        ),
        (
            "unknown-layout",
            base(json!({"kvCache": {"layout": "paged"}})),
            "spec.kvCache.layout",
        ),
        (
            "bad-patch-digest",
            base(json!({"patchTokenizer": {"uri": "s3://b/p.json", "sha256": "abc"}})),
            "spec.patchTokenizer.sha256",
        ),
        (
            "patch-without-digest",
            base(json!({"patchTokenizer": {"uri": "s3://b/p.json"}})),
            "spec.patchTokenizer.sha256",
        ),
        (
            "zero-token-budget",
            base(json!({"scheduler": {"tokenBudget": 0}})),
            "spec.scheduler.tokenBudget",
        ),
        (
            "negative-min-replicas",
            base(json!({"autoscaling": {"minReplicas": -1, "maxReplicas": 2}})),
            "spec.autoscaling.minReplicas",
        ),
        (
            "bad-memory-quantity",
            base(json!({"resources": {"memory": "lots"}})),
            "spec.resources.memory",
        ),
        (
            "negative-cpu",
            base(json!({"resources": {"cpu": -2}})),
            "spec.resources.cpu",
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, field) in cases {
        match create_object(&client, &raw_fused_model(name, spec), INVALID_NS).await {
            Err(ClusterError::Api { source, .. }) => match *source {
                kube::Error::Api(status) => {
                    println!(
                        "REJECTED {name} ({} {}): {}",
                        status.code, status.reason, status.message
                    );
                    if status.code != 422
                        || status.reason != "Invalid"
                        || !status.message.contains(field)
                    {
                        failures.push(format!(
                            "{name}: expected 422 Invalid naming {field}, got {status:?}"
                        ));
                    }
                }
                other => failures.push(format!("{name}: not an API status: {other}")),
            },
            Err(other) => failures.push(format!("{name}: {other}")),
            Ok(_) => failures.push(format!("{name}: accepted, but must be rejected ({field})")),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid FusedModels not rejected as expected:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn min_replicas_above_max_is_left_to_the_operator() {
    // Kubernetes 1.20 has no CEL, so a structural schema cannot compare two fields: the API
    // server accepts the object and FusedModelSpec::validate (run by the operator) rejects it.
    let cluster = cluster_with_crd().await;
    let client = cluster.client().expect("client");
    let name = "min-above-max";
    let spec = base(
        json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 1, "targetWaitingRequests": 4}}),
    );
    create_object(&client, &raw_fused_model(name, spec), INVALID_NS)
        .await
        .expect("the API server cannot express minReplicas <= maxReplicas");
    let models: Api<FusedModel> = Api::namespaced(client, INVALID_NS);
    let stored = models.get(name).await.expect("stored");
    let errors = stored
        .spec
        .validate()
        .expect_err("validate catches minReplicas > maxReplicas");
    println!(
        "ACCEPTED {name} by the API server (no CEL in 1.20); FusedModelSpec::validate: {}",
        errors[0]
    );
    assert_eq!(errors, [SpecError::MinReplicasAboveMax { min: 3, max: 1 }]);
    models
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
}
