//! One tenant cannot hurt another through the operator, on a real kube-apiserver + controller
//! manager (v1.20, loopback): an object that is not the FusedModel's is never taken over nor
//! deleted (`Degraded/NameConflict` instead); a namespace is deleted even while the operator is
//! stopped (no finalizer holds its FusedModels); secrets reach the Pods as references only and
//! appear in no argument, event, status or log line, the fetch step's included; the optional
//! NetworkPolicy comes and goes with the spec.

mod operator_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use fused_crds::{FusedModel, condition_reason, condition_type};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use operator_support::*;
use serde_json::json;

async fn create_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create Secret {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_is_not_ours_is_reported_never_taken_over_nor_deleted() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-conflict";
    create_namespace(&client, ns).await;
    // Another team's Service already has the name.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let theirs: Service = serde_json::from_value(json!({
        "metadata": {"name": "smollm2-135m", "labels": {"app": "billing"}},
        "spec": {"selector": {"app": "billing"}, "ports": [{"port": 80, "targetPort": 9090}]}
    }))
    .unwrap();
    let theirs = services
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the other team's Service");
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    create_model(&client, ns, &example("smollm2-135m-cpu")).await;
    let conflicted = wait_model(&models, "smollm2-135m", "Degraded=True/NameConflict", |m| {
        has(
            m,
            condition_type::DEGRADED,
            "True",
            condition_reason::NAME_CONFLICT,
        )
    })
    .await;
    println!("{}", describe(&conflicted));
    let message = &condition(&conflicted, condition_type::DEGRADED)
        .unwrap()
        .message;
    assert!(
        message.contains("Service op-conflict/smollm2-135m already exists"),
        "{message}"
    );
    assert!(has(
        &conflicted,
        condition_type::READY,
        "False",
        condition_reason::NAME_CONFLICT
    ));
    let service = services.get("smollm2-135m").await.unwrap();
    assert!(
        service.metadata.owner_references.is_none(),
        "not adopted: {:?}",
        service.metadata.owner_references
    );
    let spec = service.spec.clone().unwrap();
    assert_eq!(
        spec.selector.unwrap().get("app").map(String::as_str),
        Some("billing")
    );
    assert_eq!(spec.ports.unwrap()[0].port, 80);
    let managers: Vec<String> = service
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "fused-operator"),
        "{managers:?}"
    );

    // Deleting the FusedModel deletes what it owns (its Deployment), not their Service.
    models
        .delete("smollm2-135m", &DeleteParams::default())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for("the FusedModel and its Deployment to go", WAIT, || async {
        let model = models
            .get_opt("smollm2-135m")
            .await
            .map_err(|e| e.to_string())?;
        let deployment = deployments
            .get_opt("smollm2-135m")
            .await
            .map_err(|e| e.to_string())?;
        match (model, deployment) {
            (None, None) => Ok(()),
            left => Err(format!("{left:?}")),
        }
    })
    .await;
    let service = services.get("smollm2-135m").await.expect("theirs stays");
    assert_eq!(service.metadata.uid, theirs.metadata.uid);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_deleted_while_the_operator_is_stopped() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-ns-deletion";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    create_model(&client, ns, &example("smollm2-135m-cpu")).await;
    let reconciled = wait_model(&models, "smollm2-135m", "a status", |m| m.status.is_some()).await;
    assert!(
        reconciled.metadata.finalizers.is_none(),
        "no finalizer: {:?}",
        reconciled.metadata.finalizers
    );
    // A FusedModel an earlier version left with its finalizer: the operator removes it.
    let mut legacy = example("smollm2-135m-cpu");
    legacy.metadata.name = Some("from-an-old-operator".into());
    legacy.metadata.finalizers = Some(vec!["fused.dev/cleanup".into()]);
    create_model(&client, ns, &legacy).await;
    wait_model(
        &models,
        "from-an-old-operator",
        "the legacy finalizer removed",
        |m| m.metadata.finalizers.as_ref().is_none_or(Vec::is_empty) && m.status.is_some(),
    )
    .await;

    // The operator goes away (uninstalled, crashed, scaled to zero); the tenant deletes the
    // namespace. Nothing may hold it.
    operator.stop().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    wait_for("the namespace to be gone", WAIT, || async {
        match namespaces.get_opt(ns).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(namespace) => Err(format!(
                "still there: {:?}",
                namespace.status.and_then(|s| s.conditions)
            )),
        }
    })
    .await;
    println!("namespace {ns} deleted with the operator stopped");
}

/// A Hugging Face Hub stand-in on loopback: serves `model.gguf` of any repository at
/// `/{org}/{repo}/resolve/{rev}/model.gguf` only to `Authorization: Bearer <token>`.
#[derive(Clone)]
struct Hub {
    token: String,
    bytes: Arc<Vec<u8>>,
    authorized: Arc<AtomicUsize>,
}

async fn hub_file(
    State(hub): State<Hub>,
    UrlPath((_org, _repo, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    let expected = format!("Bearer {}", hub.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    if file != "model.gguf" {
        return Err(StatusCode::NOT_FOUND);
    }
    hub.authorized.fetch_add(1, Ordering::SeqCst);
    Ok(hub.bytes.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_travel_as_references_and_show_up_nowhere() {
    let cluster = cluster(false).await;
    let client = cluster.client().expect("client");
    let ns = "op-secrets";
    create_namespace(&client, ns).await;
    const API_KEY: &str = "sk-e2e-api-key-5d1f0c9a";
    const HF_TOKEN: &str = "hf_e2eTokenThatMustNotLeak7731";
    // The Hub stand-in the fetch step will talk to.
    let hub = Hub {
        token: HF_TOKEN.into(),
        bytes: Arc::new(b"GGUF weights behind a token".to_vec()),
        authorized: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/{org}/{repo}/resolve/{rev}/{file}",
            axum::routing::get(hub_file),
        )
        .with_state(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    create_secret(&client, ns, "model-api-key", &[("key", API_KEY)]).await;
    create_secret(
        &client,
        ns,
        "hub-credentials",
        &[("HF_TOKEN", HF_TOKEN), ("HF_ENDPOINT", &endpoint)],
    )
    .await;

    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let mut model = example("smollm2-135m-cpu");
    model.metadata.name = Some("private".into());
    model.spec.base_model.uri = "hf://acme/private-model/model.gguf".into();
    model.spec.base_model.sha256 = None;
    model.spec.api_key_secret_ref = Some(fused_crds::SecretKeyRef {
        name: "model-api-key".into(),
        key: "key".into(),
    });
    model.spec.artifacts = Some(fused_crds::ArtifactsSpec {
        credentials_secret_ref: Some(fused_crds::SecretRef {
            name: "hub-credentials".into(),
        }),
        max_bytes: None,
    });
    model.spec.network_policy = Some(
        serde_json::from_value(json!({"allowedClients": [
            {"podSelector": {"matchLabels": {"fused.dev/client-of": "private"}}}]}))
        .unwrap(),
    );
    create_model(&client, ns, &model).await;
    let reconciled = wait_model(&models, "private", "RollingOut", |m| {
        has(
            m,
            condition_type::READY,
            "False",
            condition_reason::ROLLING_OUT,
        )
    })
    .await;

    // The Pod template carries references, never values.
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("private")
        .await
        .unwrap();
    let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    let daemon = &pod.containers[0];
    let key_env = daemon
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "FUSED_API_KEY")
        .expect("the API key variable");
    assert!(key_env.value.is_none());
    assert_eq!(
        key_env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|r| (r.name.as_str(), r.key.as_str())),
        Some(("model-api-key", "key"))
    );
    assert!(
        daemon.env_from.is_none(),
        "the serving container gets no fetch credentials"
    );
    let fetch = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        fetch.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("hub-credentials")
    );

    // The optional NetworkPolicy admits only the labelled clients to port 8000.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let policy = wait_for("the NetworkPolicy", WAIT, || async {
        policies
            .get_opt("private")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await;
    let policy_json = serde_json::to_value(policy.spec.unwrap()).unwrap();
    assert_eq!(
        policy_json["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["fused.dev/client-of"],
        "private"
    );
    assert_eq!(
        policy_json["podSelector"]["matchLabels"]["fused.dev/model"],
        "private"
    );

    // The fetch step, run as the kubelet would (its env from the Secret), gets the artifact
    // with the token, and neither its output nor its termination message shows the token.
    let run_fetch = |token: &str, dir: &std::path::Path| {
        let args: Vec<String> = fetch
            .args
            .clone()
            .unwrap()
            .into_iter()
            .map(|a| {
                a.replace(
                    "/var/cache/fusedmodel",
                    &dir.join("cache").display().to_string(),
                )
                .replace("/artifacts", &dir.join("artifacts").display().to_string())
                .replace(
                    "/dev/termination-log",
                    &dir.join("log").display().to_string(),
                )
            })
            .collect();
        let output = Command::new(workspace_binary("fused-daemon", "FUSED_DAEMON_BIN"))
            .args(&args)
            .env("HF_TOKEN", token)
            .env("HF_ENDPOINT", &endpoint)
            .env("RUST_LOG", "debug")
            .output()
            .expect("run the fetch step");
        let text = format!(
            "{}{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        println!("fetch step: {}\n{text}", output.status);
        (output.status.success(), text)
    };
    let good = tempfile::tempdir().unwrap();
    let (fetched, fetch_output) = run_fetch(HF_TOKEN, good.path());
    assert!(fetched);
    assert_eq!(
        hub.authorized.load(Ordering::SeqCst),
        1,
        "sent with the token"
    );
    assert_eq!(
        std::fs::read(good.path().join("artifacts/model")).unwrap(),
        hub.bytes.as_slice()
    );
    // With a wrong token the Hub refuses; the failure does not echo what was sent.
    let bad = tempfile::tempdir().unwrap();
    let (fetched, failure) = run_fetch("hf_wrongTokenAlsoSecret", bad.path());
    assert!(!fetched);
    assert!(failure.contains("ArtifactAccessDenied"), "{failure}");

    // Nothing the operator wrote or said holds a secret.
    let status = serde_json::to_string(&models.get("private").await.unwrap()).unwrap();
    let deployment = serde_json::to_string(&deployment).unwrap();
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    for (what, text) in [
        ("the FusedModel and its status", &status),
        ("the Deployment", &deployment),
        ("the events", &events),
        ("the fetch step's output", &fetch_output),
        ("the failed fetch step's output", &failure),
    ] {
        for secret in [API_KEY, HF_TOKEN, "hf_wrongTokenAlsoSecret"] {
            assert!(!text.contains(secret), "{what} contain a secret: {text}");
        }
    }
    println!("{}", describe(&reconciled));

    // Without spec.networkPolicy, the policy goes.
    models
        .patch(
            "private",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": null}})),
        )
        .await
        .unwrap();
    wait_for("the NetworkPolicy to be deleted", WAIT, || async {
        match policies
            .get_opt("private")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    operator.stop().await;
}
