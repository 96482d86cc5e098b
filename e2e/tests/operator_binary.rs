//! The `fused-operator` binary as it runs in a cluster, with only the permissions of
//! `fused_operator::rbac` (a ServiceAccount bound to that ClusterRole, its token issued by the
//! controller manager): it wins the leader Lease, serves `/healthz` and `/metrics`, reconciles a
//! scale-to-zero FusedModel into a Deployment and a Service whose endpoints are its activator,
//! reports `status.autoscaling`, wakes the model when a request reaches the activator (503 with
//! `Retry-After` at the activation timeout, no kubelet here), cleans up on delete, logs JSON
//! lines without a single permission error, and on SIGTERM releases the Lease and exits 0.

mod operator_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fused_crds::{FusedModel, condition_reason, condition_type};
use fused_operator::autoscaler::HPA_V2BETA2;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use operator_support::*;
use serde_json::json;

const NS: &str = "op-binary";
const SERVICE_ACCOUNT: &str = "fused-operator";

/// Kills the operator if the test fails before it stops.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A ServiceAccount bound to exactly the operator's ClusterRole; returns its token.
async fn least_privilege_token(client: &Client) -> String {
    let name = "fused-operator-e2e";
    Api::<ClusterRole>::all(client.clone())
        .create(
            &PostParams::default(),
            &fused_operator::rbac::cluster_role(name),
        )
        .await
        .expect("create the ClusterRole");
    let account = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(SERVICE_ACCOUNT.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(NS.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the ClusterRoleBinding");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    wait_for(
        "the ServiceAccount's token (controller manager)",
        WAIT,
        || async {
            let list = secrets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
                .filter(|s| {
                    s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/service-account.name"))
                        == Some(&SERVICE_ACCOUNT.to_owned())
                })
                .find_map(|s| {
                    s.data?
                        .get("token")
                        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
                })
                .ok_or_else(|| "no token yet".to_owned())
        },
    )
    .await
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.text().await.map_err(|e| e.to_string())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_with_least_privilege() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    create_namespace(&client, NS).await;
    let token = least_privilege_token(&client).await;

    // A kubeconfig for the ServiceAccount: the admin's, with the token swapped.
    let dir = tempfile::tempdir().unwrap();
    let mut kubeconfig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.kubeconfig()).unwrap()).unwrap();
    kubeconfig["users"][0]["user"] = json!({"token": token});
    let kubeconfig_path = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig.to_string()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let activator_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The activator's Service, as the chart makes it (its endpoints: a made-up operator Pod).
    let activator_service: Service = serde_json::from_value(json!({
        "metadata": {"name": "fused-operator-activator"},
        "spec": {"ports": [{"name": "http", "port": 8081}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &activator_service)
        .await
        .expect("the activator Service");
    let activator_endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "fused-operator-activator"},
        "subsets": [{"addresses": [{"ip": "10.250.0.9"}], "ports": [{"name": "http", "port": 8081}]}]
    }))
    .unwrap();
    Api::<Endpoints>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &activator_endpoints)
        .await
        .expect("the activator Endpoints");
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let binary = workspace_binary("fused-operator", "FUSED_OPERATOR_BIN");
    let child = Command::new(&binary)
        .env("KUBECONFIG", &kubeconfig_path)
        .env("RUST_LOG", "info")
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--activator-addr", &format!("127.0.0.1:{activator_port}")])
        .args([
            "--activator-service",
            &format!("{NS}/fused-operator-activator"),
            "--autoscale-interval-s",
            "1",
        ])
        .args([
            "--leader-election-namespace",
            NS,
            "--lease-name",
            "fused-operator",
        ])
        .args([
            "--daemon-image",
            "registry.test/fused-daemon:binary",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start fused-operator");
    let mut guard = ChildGuard(Some(child));
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    wait_for("/healthz", WAIT, || async {
        get_text(&http, &format!("{base}/healthz")).await
    })
    .await;
    let metrics = wait_for("fused_operator_leader 1", WAIT, || async {
        let text = get_text(&http, &format!("{base}/metrics")).await?;
        if metric(&text, "fused_operator_leader") == Some(1.0) {
            Ok(text)
        } else {
            Err(read_log())
        }
    })
    .await;
    assert!(metrics.contains("fused_operator_reconciles_total"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = lease_holder(&leases).await;
    println!("Lease holder: {holder:?}");
    assert!(holder.is_some());

    // Reconciles with only its ClusterRole.
    let models: Api<FusedModel> = Api::namespaced(client.clone(), NS);
    let name = "smollm2-135m-on-demand";
    let mut on_demand = example("smollm2-135m-scale-from-zero");
    if let Some(autoscaling) = on_demand.spec.autoscaling.as_mut() {
        autoscaling.activation_timeout = "3s".into();
    }
    create_model(&client, NS, &on_demand).await;
    let stored = wait_model(&models, name, "ScaledToZero written by the binary", |m| {
        has(
            m,
            condition_type::READY,
            "False",
            condition_reason::SCALED_TO_ZERO,
        ) && m
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.as_ref())
            .is_some_and(|a| a.metric_source == "operator")
    })
    .await;
    println!("status:\n{}", describe(&stored));
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("Deployment");
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.test/fused-daemon:binary"));
    Api::<Service>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("Service");
    wait_for(
        "the Service's endpoints to be the activator",
        WAIT,
        || async {
            let endpoints = Api::<Endpoints>::namespaced(client.clone(), NS)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no Endpoints".to_owned())?;
            let ips = fused_operator::endpoints::ready_addresses(&endpoints);
            if ips == ["10.250.0.9:8081".parse().unwrap()] {
                Ok(())
            } else {
                Err(format!("{ips:?}"))
            }
        },
    )
    .await;
    let hpas: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &HPA_V2BETA2.api_resource());
    assert!(
        hpas.get_opt(name).await.unwrap().is_none(),
        "the operator's own autoscaler needs no HPA"
    );

    // A request reaching the binary's activator wakes the model; no replica can become ready
    // here (no kubelet), so it gets 503 and Retry-After at the activation timeout.
    let sent = Instant::now();
    let answer = http
        .post(format!(
            "http://127.0.0.1:{activator_port}/v1/chat/completions"
        ))
        .header("host", format!("{name}.{NS}.svc:8000"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("the activator answers");
    println!(
        "activator: {} after {:.1} s, Retry-After {:?}",
        answer.status(),
        sent.elapsed().as_secs_f64(),
        answer.headers().get("retry-after")
    );
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().get("retry-after").is_some());
    assert_eq!(
        models.get(name).await.unwrap().spec.replicas,
        1,
        "the activator woke the model with the operator's permissions"
    );
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("fused-operator")),
        "the binary published events"
    );
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Activated")),
        "the activator published its wake-up"
    );
    models.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(
        "the FusedModel and its children to be gone",
        WAIT,
        || async {
            let model = models.get_opt(name).await.map_err(|e| e.to_string())?;
            let service = Api::<Service>::namespaced(client.clone(), NS)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            if model.is_none() && service.is_none() {
                Ok(())
            } else {
                Err(read_log())
            }
        },
    )
    .await;

    let metrics = get_text(&http, &format!("{base}/metrics")).await.unwrap();
    let reconciles = metric(&metrics, "fused_operator_reconciles_total").unwrap_or(0.0);
    let timed = metric(&metrics, "fused_operator_reconcile_duration_seconds_count").unwrap_or(0.0);
    println!("reconciles {reconciles}, timed {timed}");
    assert!(reconciles >= 2.0 && timed >= 2.0);

    // SIGTERM: in-flight work finishes, the Lease is released, exit 0.
    let mut child = guard.0.take().unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let stopping = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = read_log();
    println!(
        "stopped in {:.1} s with {exit}",
        stopping.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "{exit}\n{log}");
    assert_eq!(lease_holder(&leases).await, None);

    // Structured logs, and not one permission error with the least-privilege role.
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed.get("level").is_some() && parsed.get("timestamp").is_some(),
            "{line}"
        );
    }
    let denied: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .collect();
    assert!(denied.is_empty(), "permission errors: {denied:#?}");
    println!(
        "{} JSON log lines, no permission error; first: {}",
        lines.len(),
        lines[0]
    );
}
