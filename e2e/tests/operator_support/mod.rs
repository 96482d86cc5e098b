//! Scaffolding shared by the `operator_*` tests (test logic stays in the test files): the
//! shared loopback cluster with the FusedModel CRD, one operator per test namespace running
//! in-process, the examples as typed FusedModels, polling with a failure that says what was
//! awaited, the Pod status patches that stand in for the scheduler and kubelet (which the test
//! cluster lacks), and the release binaries the tests run.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fused_crds::FusedModel;
use fused_e2e::k8s::{ClusterError, TestCluster, apply_yaml, install_fused_crd};
use fused_e2e::workspace_root;
use fused_operator::{Context, Metrics, OperatorConfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{OnceCell, watch};

/// Daemon image the test operators are configured with.
pub const TEST_DAEMON_IMAGE: &str = "registry.test/fused-daemon:e2e";
/// How long a condition may take to show up (two shared, busy cores).
pub const WAIT: Duration = Duration::from_secs(90);

/// The shared cluster of this test binary (with the controller manager when `with_kcm`), with
/// the FusedModel CRD installed from the chart.
pub async fn cluster(with_kcm: bool) -> &'static TestCluster {
    static PLAIN: OnceCell<()> = OnceCell::const_new();
    static WITH_KCM: OnceCell<()> = OnceCell::const_new();
    let cluster = TestCluster::shared(with_kcm)
        .await
        .expect("start the loopback test cluster");
    let installed = if with_kcm { &WITH_KCM } else { &PLAIN };
    installed
        .get_or_try_init(|| async {
            install_fused_crd(&cluster.client()?).await?;
            Ok::<(), ClusterError>(())
        })
        .await
        .expect("install the FusedModel CRD");
    cluster
}

/// Creates the namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    apply_yaml(client, &namespace.to_string(), "default")
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// An operator running in this process, watching one namespace.
pub struct RunningOperator {
    /// Its context (client, configuration, metrics).
    pub ctx: Arc<Context>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningOperator {
    /// Starts an operator for `namespace` with `config` (its `watch_namespace` is set here).
    pub async fn start(client: &Client, namespace: &str, mut config: OperatorConfig) -> Self {
        config.watch_namespace = Some(namespace.to_owned());
        let metrics = Arc::new(Metrics::new().expect("register metrics"));
        let ctx = Arc::new(
            Context::new(client.clone(), config, metrics)
                .await
                .expect("operator context"),
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(fused_operator::run(ctx.clone(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Self {
            ctx,
            stop,
            task: Some(task),
        }
    }

    /// An operator for `namespace` with the test daemon image.
    pub async fn start_default(client: &Client, namespace: &str) -> Self {
        Self::start(
            client,
            namespace,
            OperatorConfig::with_daemon_image(TEST_DAEMON_IMAGE),
        )
        .await
    }

    /// Stops it gracefully and waits for it.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the operator stops within 30 s")
                .expect("the operator task ends cleanly");
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The FusedModel of `examples/<file>.yaml`.
pub fn example(file: &str) -> FusedModel {
    let path = workspace_root()
        .join("examples")
        .join(format!("{file}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is a FusedModel: {e}", path.display()))
}

/// Creates `model` in `namespace`; returns it as stored.
pub async fn create_model(client: &Client, namespace: &str, model: &FusedModel) -> FusedModel {
    let api: Api<FusedModel> = Api::namespaced(client.clone(), namespace);
    let mut model = model.clone();
    model.metadata.namespace = Some(namespace.to_owned());
    api.create(&PostParams::default(), &model)
        .await
        .unwrap_or_else(|e| panic!("create FusedModel {:?}: {e}", model.metadata.name))
}

/// Polls `probe` every 250 ms until it returns `Some`, failing the test after `timeout` with
/// `what` and the last observation `describe` gave.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!(
                    "timed out after {} s waiting for {what}; last seen: {last}",
                    timeout.as_secs()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits until the FusedModel `name` satisfies `check`.
pub async fn wait_model(
    api: &Api<FusedModel>,
    name: &str,
    what: &str,
    check: impl Fn(&FusedModel) -> bool,
) -> FusedModel {
    wait_for(what, WAIT, || async {
        match api.get(name).await {
            Ok(model) if check(&model) => Ok(model),
            Ok(model) => Err(describe(&model)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// The condition `type_` of `model`.
pub fn condition<'a>(model: &'a FusedModel, type_: &str) -> Option<&'a Condition> {
    model.status.as_ref()?.condition(type_)
}

/// Whether `model`'s condition `type_` has `status` and `reason`.
pub fn has(model: &FusedModel, type_: &str, status: &str, reason: &str) -> bool {
    condition(model, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// One line per condition, and the generations, for messages and logs.
pub fn describe(model: &FusedModel) -> String {
    let Some(status) = &model.status else {
        return format!("generation {:?}, no status", model.metadata.generation);
    };
    let mut text = format!(
        "generation {:?} observed {:?} replicas {}/{} ready",
        model.metadata.generation,
        status.observed_generation,
        status.ready_replicas,
        status.replicas
    );
    for c in &status.conditions {
        text.push_str(&format!(
            "\n  {}={} {} (gen {:?}): {}",
            c.type_, c.status, c.reason, c.observed_generation, c.message
        ));
    }
    text
}

/// The Pods of the FusedModel `name`.
pub async fn pods_of(client: &Client, namespace: &str, name: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("fused.dev/model={name}")))
        .await
        .expect("list Pods")
        .items
}

/// Waits for at least `count` Pods of `name` (created by the controller manager).
pub async fn wait_pods(client: &Client, namespace: &str, name: &str, count: usize) -> Vec<Pod> {
    wait_for(&format!("{count} Pod(s) of {name}"), WAIT, || async {
        let pods = pods_of(client, namespace, name).await;
        if pods.len() >= count {
            Ok(pods)
        } else {
            Err(format!("{} Pods", pods.len()))
        }
    })
    .await
}

async fn patch_pod_status(client: &Client, namespace: &str, pod: &str, status: serde_json::Value) {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .unwrap_or_else(|e| panic!("patch the status of Pod {pod}: {e}"));
}

fn init_statuses(pod: &Pod, state: serde_json::Value) -> Vec<serde_json::Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| {
            json!({"name": c.name, "ready": false, "restartCount": 0, "image": c.image,
                   "imageID": "", "state": state})
        })
        .collect()
}

/// What a kubelet would report for a Pod whose artifacts were fetched and whose daemon is ready.
pub async fn mark_pod_ready(client: &Client, namespace: &str, pod: &Pod) {
    let name = pod.metadata.name.clone().expect("Pod name");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let status = json!({
        "phase": "Running",
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
        "initContainerStatuses": init_statuses(pod, json!({"terminated": {"exitCode": 0, "reason": "Completed"}})),
        "containerStatuses": [{"name": "daemon", "ready": true, "restartCount": 0,
                               "image": TEST_DAEMON_IMAGE, "imageID": "", "started": true,
                               "state": {"running": {"startedAt": now}}}],
    });
    patch_pod_status(client, namespace, &name, status).await;
}

/// What the scheduler writes for a Pod no node can take.
pub async fn mark_pod_unschedulable(client: &Client, namespace: &str, pod: &str, message: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": now}]});
    patch_pod_status(client, namespace, pod, status).await;
}

/// What a kubelet reports for a Pod whose init container `container` failed with the
/// termination `message` (and now waits in back-off).
pub async fn mark_fetch_failed(
    client: &Client,
    namespace: &str,
    pod: &Pod,
    container: &str,
    message: &str,
) {
    let name = pod.metadata.name.clone().expect("Pod name");
    let status = json!({
        "phase": "Pending",
        "initContainerStatuses": [{"name": container, "ready": false, "restartCount": 1,
            "image": TEST_DAEMON_IMAGE, "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}],
    });
    patch_pod_status(client, namespace, &name, status).await;
}

/// A release binary of this workspace: `$<env_var>`, or next to the test executable's
/// directory (`target/release/<name>`). Fails loudly when it is missing.
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --release -p {name}`) or set ${env_var}",
        path.display()
    );
    path
}

/// A client configuration for `kubeconfig`, for tests that add layers to the client.
pub async fn client_config(kubeconfig: &std::path::Path) -> kube::Config {
    let parsed = kube::config::Kubeconfig::read_from(kubeconfig).expect("read the kubeconfig");
    kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
        .await
        .expect("client config")
}

/// Who holds the operator's leader lease (`fused-operator`) in `leases`' namespace now.
pub async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("fused-operator")
        .await
        .expect("the operator's lease exists")
        .spec
        .expect("the lease has a spec")
        .holder_identity
}

/// The SmolLM2 GGUF the tests serve.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF in the model cache (`$FUSED_MODEL_CACHE` or `~/.cache/fusedmodel/models`).
pub fn local_model() -> PathBuf {
    let dir = std::env::var_os("FUSED_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("$HOME")).join(".cache/fusedmodel/models")
        });
    let path = dir.join(MODEL_FILE);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}
