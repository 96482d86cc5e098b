//! Each example FusedModel, reconciled by the operator against a real kube-apiserver +
//! controller manager (v1.20, loopback), yields the expected Deployment and Service (for the
//! scale-to-zero example: a Service without selector and operator-written endpoints, no HPA;
//! with `metricSource: customMetrics` an autoscaling/v2beta2 HPA, this server having no v2);
//! removing `autoscaling` removes the HPA and gives the Service its selector back; a spec the schema accepts but the operator cannot serve is reported as
//! `Degraded`/`InvalidSpec`, writes no workload and is not retried in a loop.

mod operator_support;

use std::time::Duration;

use fused_crds::{FusedModel, condition_reason, condition_type};
use fused_operator::autoscaler::HPA_V2BETA2;
use fused_operator::workload::TERMINATION_GRACE_S;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_support::*;
use serde_json::json;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "container {name} in {:?}",
                containers.iter().map(|c| &c.name).collect::<Vec<_>>()
            )
        })
}

async fn deployment_of(api: &Api<Deployment>, name: &str) -> Deployment {
    wait_for(&format!("Deployment {name}"), WAIT, || async {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await
}

fn assert_owned_by(
    object_owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    model: &FusedModel,
) {
    assert_eq!(object_owners.len(), 1);
    let owner = &object_owners[0];
    assert_eq!(owner.kind, "FusedModel");
    assert_eq!(Some(&owner.uid), model.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_become_the_expected_deployment_service_and_autoscaler() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-examples";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    assert_eq!(
        operator.ctx.hpa_version,
        Some(HPA_V2BETA2),
        "a v1.20 server serves autoscaling/v2beta2 and not v2"
    );
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let hpas: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &HPA_V2BETA2.api_resource());

    // --- SmolLM2 on CPU.
    let smollm = create_model(&client, ns, &example("smollm2-135m-cpu")).await;
    let deployment = deployment_of(&deployments, "smollm2-135m").await;
    assert_owned_by(deployment.owner_references(), &smollm);
    let spec = deployment.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(1));
    let template = spec.template;
    let annotations = template.metadata.clone().unwrap().annotations.unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8000");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let pod = template.spec.expect("pod spec");
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(TERMINATION_GRACE_S)
    );
    let daemon = container(&pod.containers, "daemon");
    assert_eq!(daemon.image.as_deref(), Some(TEST_DAEMON_IMAGE));
    assert_eq!(
        daemon.command.as_deref(),
        Some(&["fused-daemon".to_owned()][..])
    );
    let args = daemon.args.clone().unwrap();
    println!("smollm2-135m daemon args: {}", args.join(" "));
    assert_eq!(args[0], "serve");
    for (name, value) in [
        ("--host", "0.0.0.0"),
        ("--port", "8000"),
        ("--model", "/artifacts/model"),
        ("--device", "cpu"),
        ("--kv-block-size", "2097152"),
        ("--kv-layout", "interleaved"),
        ("--max-num-seqs", "8"),
        ("--max-context", "2048"),
        ("--token-budget", "256"),
        ("--max-queue", "64"),
        ("--served-model-name", "smollm2-135m-instruct"),
    ] {
        assert_eq!(flag(&args, name), Some(value), "{name} in {args:?}");
    }
    assert_eq!(flag(&args, "--patch-tokenizer"), None);
    let port = &daemon.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8000)
    );
    let readiness = daemon
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/ready"));
    let liveness = daemon
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/health"));
    let pre_stop = daemon
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert_eq!(
        pre_stop.exec.as_ref().unwrap().command.as_ref().unwrap()[0],
        "sleep"
    );
    let resources = daemon.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "500m");
    assert_eq!(requests["memory"].0, "2Gi");
    assert!(!requests.contains_key("nvidia.com/gpu"));
    assert_eq!(resources.limits, resources.requests);
    let fetch = container(pod.init_containers.as_deref().unwrap(), "fetch-model");
    let fetch_args = fetch.args.clone().unwrap();
    println!("smollm2-135m fetch args: {}", fetch_args.join(" "));
    assert_eq!(
        flag(&fetch_args, "--uri"),
        Some("http://10.244.0.1:28090/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(
        flag(&fetch_args, "--sha256"),
        Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    );
    assert_eq!(
        flag(&fetch_args, "--cache-dir").map(str::to_owned),
        Some(format!("/var/cache/fusedmodel/tenants/{ns}"))
    );
    assert_eq!(
        fetch.image.as_deref(),
        Some(TEST_DAEMON_IMAGE),
        "the fetch step runs the operator's image"
    );
    assert_eq!(flag(&fetch_args, "--out-link"), Some("/artifacts/model"));
    assert_eq!(
        fetch.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    let cache = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "artifact-cache")
        .expect("the artifact cache volume");
    assert!(
        cache.empty_dir.is_some() && cache.host_path.is_none(),
        "the default cache is a per-Pod emptyDir"
    );
    let security = pod
        .security_context
        .as_ref()
        .expect("a Pod security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert!(pod.node_selector.is_none() && pod.tolerations.is_none());

    let service = wait_for("Service smollm2-135m", WAIT, || async {
        services
            .get_opt("smollm2-135m")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await;
    assert_owned_by(service.owner_references(), &smollm);
    let service_spec = service.spec.unwrap();
    assert_eq!(
        service_spec.selector.unwrap()["fused.dev/model"],
        "smollm2-135m"
    );
    let service_port = &service_spec.ports.unwrap()[0];
    assert_eq!(
        (service_port.name.as_deref(), service_port.port),
        (Some("http"), 8000)
    );
    assert!(hpas.get_opt("smollm2-135m").await.unwrap().is_none());
    let stored = wait_model(&models, "smollm2-135m", "status of smollm2-135m", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == Some(1))
    })
    .await;
    let status = stored.status.unwrap();
    assert_eq!(
        status.selector.as_deref(),
        Some("fused.dev/model=smollm2-135m")
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://smollm2-135m.op-examples.svc:8000/v1")
    );

    // --- Llama-2-7B with a patch tokenizer on GPUs, with placement.
    let llama = create_model(&client, ns, &example("llama2-7b-patch-tokenizer")).await;
    let deployment = deployment_of(&deployments, "llama2-7b-medical").await;
    assert_owned_by(deployment.owner_references(), &llama);
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let daemon = container(&pod.containers, "daemon");
    let args = daemon.args.clone().unwrap();
    println!("llama2-7b-medical daemon args: {}", args.join(" "));
    assert_eq!(flag(&args, "--device"), Some("cuda"));
    assert_eq!(flag(&args, "--kv-layout"), Some("perLayer"));
    assert_eq!(flag(&args, "--max-num-seqs"), Some("128"));
    assert_eq!(
        flag(&args, "--patch-tokenizer"),
        Some("/artifacts/patch-tokenizer")
    );
    let resources = daemon.resources.as_ref().unwrap();
    assert_eq!(
        resources.requests.as_ref().unwrap()["nvidia.com/gpu"].0,
        "1"
    );
    assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "48Gi");
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.present"],
        "true"
    );
    let toleration = &pod.tolerations.as_ref().unwrap()[0];
    assert_eq!(
        (
            toleration.key.as_deref(),
            toleration.operator.as_deref(),
            toleration.effect.as_deref()
        ),
        (Some("nvidia.com/gpu"), Some("Exists"), Some("NoSchedule"))
    );
    let inits = pod.init_containers.as_deref().unwrap();
    let patch_fetch = container(inits, "fetch-patch-tokenizer")
        .args
        .clone()
        .unwrap();
    assert_eq!(
        flag(&patch_fetch, "--uri"),
        Some("s3://fused-artifacts/patches/llama2-7b-icd10cm/patch.json")
    );
    assert_eq!(
        flag(&patch_fetch, "--out-link"),
        Some("/artifacts/patch-tokenizer")
    );
    let model_fetch = container(inits, "fetch-model").args.clone().unwrap();
    assert_eq!(
        flag(&model_fetch, "--uri"),
        Some("hf://meta-llama/Llama-2-7b-hf")
    );
    assert_eq!(flag(&model_fetch, "--sha256"), None);

    // --- Scale from zero: Deployment at 0; the operator's own autoscaler (no HPA); a Service
    // without selector whose endpoints the operator writes (none here: this operator has no
    // activator configured).
    let on_demand = create_model(&client, ns, &example("smollm2-135m-scale-from-zero")).await;
    let deployment = deployment_of(&deployments, "smollm2-135m-on-demand").await;
    assert_eq!(deployment.spec.unwrap().replicas, Some(0));
    let endpoints = wait_for("the on-demand endpoints", WAIT, || async {
        Api::<k8s_openapi::api::core::v1::Endpoints>::namespaced(client.clone(), ns)
            .get_opt("smollm2-135m-on-demand")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await;
    assert_owned_by(endpoints.owner_references(), &on_demand);
    assert_eq!(endpoints.subsets.unwrap_or_default(), Vec::new());
    let on_demand_service = Api::<Service>::namespaced(client.clone(), ns)
        .get("smollm2-135m-on-demand")
        .await
        .expect("the on-demand Service");
    assert_eq!(
        on_demand_service.spec.and_then(|s| s.selector),
        None,
        "the operator routes a scale-to-zero Service"
    );
    assert!(
        hpas.get_opt("smollm2-135m-on-demand")
            .await
            .unwrap()
            .is_none(),
        "the default metric source needs no HPA"
    );
    // With a custom-metrics adapter: an HPA on the FusedModel's scale subresource.
    models
        .patch(
            "smollm2-135m-on-demand",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {"metricSource": "customMetrics"}}})),
        )
        .await
        .expect("switch to customMetrics");
    let hpa = wait_for("the on-demand autoscaler", WAIT, || async {
        hpas.get_opt("smollm2-135m-on-demand")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await;
    assert_owned_by(hpa.owner_references(), &on_demand);
    println!(
        "autoscaler: {}",
        serde_json::to_string(&hpa.data["spec"]).unwrap()
    );
    assert_eq!(
        hpa.types.as_ref().unwrap().api_version,
        "autoscaling/v2beta2"
    );
    let hpa_spec = &hpa.data["spec"];
    assert_eq!(
        hpa_spec["scaleTargetRef"],
        json!({"apiVersion": "fused.dev/v1alpha1", "kind": "FusedModel", "name": "smollm2-135m-on-demand"})
    );
    assert_eq!(
        hpa_spec["minReplicas"], 1,
        "HPA minReplicas 0 needs a feature gate"
    );
    assert_eq!(hpa_spec["maxReplicas"], 4);
    assert_eq!(
        hpa_spec["metrics"],
        json!([
            {"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_waiting"},
             "target": {"type": "AverageValue", "averageValue": "4"}}},
            {"type": "Pods", "pods": {"metric": {"name": "vllm:kv_cache_usage_perc"},
             "target": {"type": "AverageValue", "averageValue": "800m"}}},
        ])
    );
    assert_eq!(
        hpa_spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 120,
        "the spec's scale-down window"
    );
    let stored = wait_model(&models, "smollm2-135m-on-demand", "ScaledToZero", |m| {
        has(
            m,
            condition_type::READY,
            "False",
            condition_reason::SCALED_TO_ZERO,
        ) && has(
            m,
            condition_type::SCHEDULED,
            "True",
            condition_reason::SCALED_TO_ZERO,
        )
    })
    .await;
    println!("on-demand status:\n{}", describe(&stored));

    // Dropping autoscaling removes the autoscaler; the Deployment follows spec.replicas.
    models
        .patch(
            "smollm2-135m-on-demand",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": null, "replicas": 2}})),
        )
        .await
        .expect("drop autoscaling");
    wait_for("the autoscaler to be deleted", WAIT, || async {
        match hpas
            .get_opt("smollm2-135m-on-demand")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    wait_for("the Service to select the Pods again", WAIT, || async {
        let service = Api::<Service>::namespaced(client.clone(), ns)
            .get("smollm2-135m-on-demand")
            .await
            .map_err(|e| e.to_string())?;
        match service.spec.and_then(|s| s.selector) {
            Some(selector) => Ok(selector),
            None => Err("no selector".to_owned()),
        }
    })
    .await;
    wait_for("the Deployment at 2 replicas", WAIT, || async {
        let d = deployments
            .get("smollm2-135m-on-demand")
            .await
            .map_err(|e| e.to_string())?;
        let replicas = d.spec.and_then(|s| s.replicas);
        if replicas == Some(2) {
            Ok(())
        } else {
            Err(format!("{replicas:?}"))
        }
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_the_schema_cannot_catch_are_degraded_without_a_hot_loop() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-invalid";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);

    let mut model = example("smollm2-135m-cpu");
    model.metadata.name = Some("too-big".into());
    model.spec.autoscaling = Some(fused_crds::AutoscalingSpec {
        target_kv_cache_utilization: Some(0.8),
        ..fused_crds::AutoscalingSpec::new(3, 1)
    });
    // 1 GiB pages for 8 sequences cannot fit a 1 GiB replica.
    model.spec.kv_cache.block_size = 1 << 30;
    create_model(&client, ns, &model).await;
    let degraded = wait_model(&models, "too-big", "Degraded/InvalidSpec", |m| {
        has(
            m,
            condition_type::DEGRADED,
            "True",
            condition_reason::INVALID_SPEC,
        )
    })
    .await;
    println!("invalid spec status:\n{}", describe(&degraded));
    let message = &condition(&degraded, condition_type::DEGRADED)
        .unwrap()
        .message;
    assert!(
        message.contains("spec.autoscaling.minReplicas (3)"),
        "{message}"
    );
    assert!(
        message.contains("spec.kvCache.blockSize (1024 MiB)"),
        "{message}"
    );
    assert!(has(
        &degraded,
        condition_type::READY,
        "False",
        condition_reason::INVALID_SPEC
    ));
    assert!(
        deployments.get_opt("too-big").await.unwrap().is_none(),
        "no workload for an invalid spec"
    );

    // Not retried in a loop: over a few seconds the reconcile count barely moves.
    let before = operator.ctx.metrics.reconciles.get();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = operator.ctx.metrics.reconciles.get();
    println!(
        "reconciles of an unchanged invalid spec in 5 s: {}",
        after - before
    );
    assert!(after - before <= 1, "{} reconciles in 5 s", after - before);

    // Fixing the spec serves it.
    models
        .patch(
            "too-big",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"autoscaling": null, "kvCache": {"blockSize": 2097152}}}),
            ),
        )
        .await
        .expect("fix the spec");
    let fixed = wait_model(&models, "too-big", "Degraded=False after the fix", |m| {
        has(m, condition_type::DEGRADED, "False", "AsExpected")
            && m.status.as_ref().unwrap().observed_generation == Some(2)
    })
    .await;
    println!("fixed spec status:\n{}", describe(&fixed));
    deployment_of(&deployments, "too-big").await;
    operator.stop().await;
}
