//! The Pod the operator writes really serves: the test takes the Pod spec the operator
//! generated (created by the controller manager from its Deployment), runs its init container
//! and then its daemon container as local processes — the real `fused-daemon` release binary,
//! SmolLM2-135M on CPU through a `file://` URI, container paths mapped to temporary directories
//! (the hostPath cache to a stand-in node directory) — waits for `/ready`, sends one chat
//! request, and stops it with SIGTERM as the kubelet would. Fetch failures produced the same
//! way (a wrong digest, an unreachable source) are written into the Pod's status as the kubelet
//! would write them, and must come out in the FusedModel's conditions.

mod operator_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fused_crds::{FusedModel, condition_type};
use fused_operator::OperatorConfig;
use fused_operator::config::ArtifactCache;
use fused_operator::workload::TERMINATION_GRACE_S;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::Api;
use operator_support::*;
use serde_json::json;

/// A Pod spec mapped onto this machine: each volume a local directory (hostPath volumes share
/// one stand-in node directory), the `fused-daemon` command the release binary.
struct LocalPod {
    spec: PodSpec,
    root: PathBuf,
    node_cache: PathBuf,
    daemon_bin: PathBuf,
}

impl LocalPod {
    fn new(spec: PodSpec, root: &Path, node_cache: &Path) -> Self {
        Self {
            spec,
            root: root.to_owned(),
            node_cache: node_cache.to_owned(),
            daemon_bin: workspace_binary("fused-daemon", "FUSED_DAEMON_BIN"),
        }
    }

    fn volume_dir(&self, volume: &str) -> PathBuf {
        let spec = self
            .spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .expect("mounted volume exists");
        let dir = if spec.host_path.is_some() {
            self.node_cache.clone()
        } else {
            assert!(
                spec.empty_dir.is_some(),
                "volume {volume}: only hostPath and emptyDir map to local directories"
            );
            self.root.join("volumes").join(volume)
        };
        std::fs::create_dir_all(&dir).expect("create a local volume directory");
        dir
    }

    /// The container's command line with container paths replaced by local ones, and the
    /// local path of its termination log.
    fn command(&self, container: &Container) -> (Command, PathBuf) {
        let mut mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let dir = self.volume_dir(&m.name);
                let dir = match &m.sub_path {
                    Some(sub) => dir.join(sub),
                    None => dir,
                };
                (m.mount_path.clone(), dir)
            })
            .collect();
        let termination_log = self
            .root
            .join(format!("{}.termination-log", container.name));
        if let Some(path) = &container.termination_message_path {
            mounts.push((path.clone(), termination_log.clone()));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let map = |arg: &String| -> String {
            for (container_path, local) in &mounts {
                if arg == container_path {
                    return local.display().to_string();
                }
                if let Some(rest) = arg.strip_prefix(&format!("{container_path}/")) {
                    return local.join(rest).display().to_string();
                }
            }
            arg.clone()
        };
        let command_line: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(map)
            .collect();
        assert_eq!(
            command_line[0], "fused-daemon",
            "the container runs fused-daemon"
        );
        let mut command = Command::new(&self.daemon_bin);
        command.args(&command_line[1..]);
        (command, termination_log)
    }

    fn init_container(&self, name: &str) -> &Container {
        self.spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .expect("init container")
    }
}

/// Kills the daemon if the test fails before stopping it.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn replace_flag(args: &mut [String], flag: &str, value: &str) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} in {args:?}"));
    args[at + 1] = value.to_owned();
}

async fn pod_spec_of(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> (k8s_openapi::api::core::v1::Pod, PodSpec) {
    let pod = wait_pods(client, ns, name, 1).await.remove(0);
    let spec = pod.spec.clone().expect("Pod spec");
    (pod, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_pod_serves_a_chat_request() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-serves";
    create_namespace(&client, ns).await;
    // The node cache as a hostPath (the opt-in), so the test can look into it.
    let mut config = OperatorConfig::with_daemon_image(TEST_DAEMON_IMAGE);
    config.artifact_cache = ArtifactCache::HostPath;
    let operator = RunningOperator::start(&client, ns, config).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);

    // The endpoint's API key, in a Secret the Pod refers to.
    const API_KEY: &str = "sk-pod-serves-2f8e61";
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "smollm2-api-key"},
        "stringData": {"apiKey": API_KEY}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .expect("create the API key Secret");

    // The CPU example, with the weights at a file:// URI on this machine; the example's pinned
    // digest must match the cached file.
    let mut model = example("smollm2-135m-cpu");
    model.spec.base_model.uri = format!("file://{}", local_model().display());
    model.spec.api_key_secret_ref = Some(fused_crds::SecretKeyRef {
        name: "smollm2-api-key".into(),
        key: "apiKey".into(),
    });
    create_model(&client, ns, &model).await;
    let (pod, spec) = pod_spec_of(&client, ns, "smollm2-135m").await;

    let dir = tempfile::tempdir().unwrap();
    let node_cache = dir.path().join("node/var-cache-fusedmodel");
    let local = LocalPod::new(spec.clone(), &dir.path().join("pod"), &node_cache);
    for init in spec.init_containers.iter().flatten() {
        let (mut command, termination_log) = local.command(init);
        println!("init container {}: {command:?}", init.name);
        let output = command.output().expect("run the init container");
        assert!(
            output.status.success(),
            "init container {} failed: {}\n{}",
            init.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !termination_log.exists(),
            "a successful fetch writes no termination message"
        );
    }
    let cached: Vec<_> = std::fs::read_dir(node_cache.join("tenants").join(ns).join("sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        cached,
        ["b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"]
    );

    let daemon = spec
        .containers
        .iter()
        .find(|c| c.name == "daemon")
        .expect("daemon container");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut container = daemon.clone();
    let args = container.args.as_mut().unwrap();
    replace_flag(args, "--host", "127.0.0.1");
    replace_flag(args, "--port", &port.to_string());
    let (mut command, _) = local.command(&container);
    // The kubelet resolves the container's environment, Secret references included.
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => {
                let selector = from.secret_key_ref.as_ref().expect("a secretKeyRef");
                let secret =
                    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
                        .get(&selector.name)
                        .await
                        .expect("the referenced Secret");
                let bytes = secret.data.unwrap()[&selector.key].0.clone();
                String::from_utf8(bytes).unwrap()
            }
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    let args_text = container.args.clone().unwrap_or_default().join(" ");
    assert!(!args_text.contains(API_KEY), "the key is not an argument");
    println!(
        "daemon container: {:?}",
        command.get_args().collect::<Vec<_>>()
    );
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = command
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the daemon");
    let mut guard = ChildGuard(Some(child));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Readiness as the kubelet probes it: GET /ready on the `http` port.
    let started = Instant::now();
    loop {
        if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the daemon exited with {status}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if http
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not ready after 180 s:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "daemon ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert!(health.status().is_success());

    let chat = json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0
    });
    let refused = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .expect("chat request without the key");
    assert_eq!(
        refused.status(),
        401,
        "the API key from the Secret is required"
    );
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&chat)
        .send()
        .await
        .expect("chat request");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    println!("chat answer: {content:?}");
    assert!(!content.trim().is_empty(), "{body}");
    assert_eq!(body["model"], "smollm2-135m-instruct");

    // The process is the Pod: report it ready as the kubelet would; the FusedModel is Ready.
    mark_pod_ready(&client, ns, &pod).await;
    wait_model(&models, "smollm2-135m", "Ready=True", |m| {
        has(m, condition_type::READY, "True", "Available")
    })
    .await;

    // SIGTERM, as the kubelet sends after the preStop hook: the daemon drains and exits 0
    // within terminationGracePeriodSeconds.
    let mut child = guard.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(TERMINATION_GRACE_S as u64),
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "daemon stopped on SIGTERM in {:.1} s with {exit}",
        stopping.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "{exit}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !log.contains(API_KEY),
        "the daemon's log shows the key:\n{log}"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_failures_reach_the_fusedmodel_status() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-fetch-failures";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let cases = [
        (
            "bad-digest",
            format!("file://{}", local_model().display()),
            Some("0".repeat(64)),
            "ArtifactDigestMismatch",
        ),
        (
            "unreachable",
            format!("http://127.0.0.1:{closed_port}/{MODEL_FILE}"),
            None,
            "ArtifactUnreachable",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, uri, sha256, reason) in cases {
        let mut model = example("smollm2-135m-cpu");
        model.metadata.name = Some(name.into());
        model.spec.base_model.uri = uri;
        model.spec.base_model.sha256 = sha256;
        create_model(&client, ns, &model).await;
        let (pod, spec) = pod_spec_of(&client, ns, name).await;
        let local = LocalPod::new(spec, &dir.path().join(name), &dir.path().join("node-cache"));
        let (mut command, termination_log) = local.command(local.init_container("fetch-model"));
        let output = command.output().expect("run the init container");
        assert!(!output.status.success(), "{name}: the fetch must fail");
        let message = std::fs::read_to_string(&termination_log)
            .expect("the fetch wrote its termination message");
        println!("{name}: termination message: {message}");
        assert!(message.starts_with(&format!("{reason}: ")), "{message}");

        // The kubelet puts the termination message into the init container's status.
        mark_fetch_failed(&client, ns, &pod, "fetch-model", &message).await;
        let failed = wait_model(
            &models,
            name,
            &format!("ArtifactsReady=False/{reason}"),
            |m| has(m, condition_type::ARTIFACTS_READY, "False", reason),
        )
        .await;
        println!("{name}:\n{}", describe(&failed));
        assert!(has(&failed, condition_type::READY, "False", reason));
        let degraded = reason == "ArtifactDigestMismatch";
        assert_eq!(
            has(&failed, condition_type::DEGRADED, "True", reason),
            degraded,
            "only a digest mismatch is Degraded"
        );
        let artifacts = condition(&failed, condition_type::ARTIFACTS_READY).unwrap();
        assert!(
            artifacts.message.contains("fetch-model"),
            "{}",
            artifacts.message
        );
    }
    operator.stop().await;
}
