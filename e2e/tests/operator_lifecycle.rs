//! A FusedModel's life under the operator, on a real kube-apiserver + controller manager
//! (v1.20, loopback; no scheduler or kubelet, so the tests write the Pod statuses those would):
//! created → RollingOut; Pods ready → `Ready=True`; a spec change → new generation in status, a
//! rollout to new Pods with `Ready=False` until they are ready; Pods the scheduler cannot place
//! for lack of GPUs → `Scheduled=False/InsufficientGPU`; an Event per transition; deleting the
//! FusedModel removes everything; its PodDisruptionBudget lets a node drain evict replicas only
//! while `minAvailable` stay up.

mod operator_support;

use fused_crds::{FusedModel, condition_reason, condition_type};
use fused_operator::autoscaler::HPA_V2BETA2;
use fused_operator::disruption_budget::PDB_V1BETA1;
use fused_operator::labels::TEMPLATE_HASH_ANNOTATION;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use operator_support::*;
use serde_json::json;

fn template_hash(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .cloned()
}

async fn events_of(client: &Client, namespace: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("FusedModel") && r.name.as_deref() == Some(name)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_rollout_and_deletion() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-lifecycle";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let name = "smollm2-135m";

    // Created: Pods exist (controller manager), none ready yet.
    create_model(&client, ns, &example("smollm2-135m-cpu")).await;
    let rolling = wait_model(&models, name, "RollingOut at generation 1", |m| {
        has(
            m,
            condition_type::READY,
            "False",
            condition_reason::ROLLING_OUT,
        ) && m.status.as_ref().unwrap().observed_generation == Some(1)
    })
    .await;
    println!("created:\n{}", describe(&rolling));
    assert!(has(
        &rolling,
        condition_type::PROGRESSING,
        "True",
        condition_reason::ROLLING_OUT
    ));
    let pods = wait_pods(&client, ns, name, 1).await;
    let first_hash = template_hash(&pods[0]).expect("Pods carry the template hash");

    // Simulated readiness: the kubelet would report the Pod initialised and ready.
    mark_pod_ready(&client, ns, &pods[0]).await;
    let ready = wait_model(&models, name, "Ready=True", |m| {
        has(
            m,
            condition_type::READY,
            "True",
            condition_reason::AVAILABLE,
        )
    })
    .await;
    println!("ready:\n{}", describe(&ready));
    let status = ready.status.as_ref().unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (1, 1));
    assert!(has(
        &ready,
        condition_type::PROGRESSING,
        "False",
        "RolloutComplete"
    ));
    assert!(has(
        &ready,
        condition_type::ARTIFACTS_READY,
        "True",
        "Verified"
    ));
    assert!(has(
        &ready,
        condition_type::SCHEDULED,
        "True",
        "AllReplicasScheduled"
    ));
    assert!(has(&ready, condition_type::DEGRADED, "False", "AsExpected"));
    for condition in &status.conditions {
        assert_eq!(
            condition.observed_generation,
            Some(1),
            "{}",
            condition.type_
        );
    }

    // A spec change: generation 2 in status, Ready=False while new Pods roll out.
    models
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"kvCache": {"blockSize": 4194304}}})),
        )
        .await
        .expect("change the block size");
    let rolling = wait_model(&models, name, "RollingOut at generation 2", |m| {
        m.status.as_ref().unwrap().observed_generation == Some(2)
            && has(
                m,
                condition_type::READY,
                "False",
                condition_reason::ROLLING_OUT,
            )
    })
    .await;
    println!("spec changed:\n{}", describe(&rolling));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let args = deployments
        .get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.windows(2).any(|w| w == ["--kv-block-size", "4194304"]),
        "{args:?}"
    );
    let new_pod = wait_for("a Pod of the new template", WAIT, || async {
        let pods = pods_of(&client, ns, name).await;
        pods.into_iter()
            .find(|p| template_hash(p).is_some_and(|h| h != first_hash))
            .ok_or_else(|| "only old Pods".to_owned())
    })
    .await;
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("fused.dev/model={name}")))
        .await
        .unwrap();
    assert_eq!(
        replica_sets.items.len(),
        2,
        "the rollout created a second ReplicaSet"
    );
    // The old replica still serves (maxUnavailable 0) while the new one starts.
    let still_rolling = models.get(name).await.unwrap();
    assert!(
        has(
            &still_rolling,
            condition_type::READY,
            "False",
            condition_reason::ROLLING_OUT
        ),
        "{}",
        describe(&still_rolling)
    );

    mark_pod_ready(&client, ns, &new_pod).await;
    let ready = wait_model(
        &models,
        name,
        "Ready=True at generation 2, old Pods gone",
        |m| {
            has(
                m,
                condition_type::READY,
                "True",
                condition_reason::AVAILABLE,
            ) && m.status.as_ref().unwrap().observed_generation == Some(2)
        },
    )
    .await;
    println!("rolled out:\n{}", describe(&ready));
    let pods = pods_of(&client, ns, name).await;
    assert!(
        pods.iter()
            .all(|p| template_hash(p) != Some(first_hash.clone())),
        "old Pods were replaced"
    );

    // An Event per transition.
    let events = events_of(&client, ns, name).await;
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    println!("events: {reasons:?}");
    for reason in ["RollingOut", "Available", "RolloutComplete", "Verified"] {
        assert!(
            reasons.contains(&reason),
            "an Event with reason {reason} in {reasons:?}"
        );
    }

    // Deleting the FusedModel removes every object made for it.
    models
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    let hpas: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &HPA_V2BETA2.api_resource());
    let budgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &PDB_V1BETA1.api_resource());
    wait_for(
        "the FusedModel and everything it owned to be gone",
        WAIT,
        || async {
            let selector = ListParams::default().labels(&format!("fused.dev/model={name}"));
            let left = [
                (
                    "FusedModel",
                    models
                        .get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                ),
                (
                    "Deployment",
                    deployments
                        .get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                ),
                (
                    "Service",
                    Api::<Service>::namespaced(client.clone(), ns)
                        .get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                ),
                (
                    "HPA",
                    hpas.get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                ),
                (
                    "PodDisruptionBudget",
                    budgets
                        .get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some(),
                ),
                (
                    "ReplicaSets",
                    !Api::<ReplicaSet>::namespaced(client.clone(), ns)
                        .list(&selector)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .is_empty(),
                ),
                ("Pods", !pods_of(&client, ns, name).await.is_empty()),
            ];
            let remaining: Vec<&str> = left
                .iter()
                .filter(|(_, present)| *present)
                .map(|(kind, _)| *kind)
                .collect();
            if remaining.is_empty() {
                Ok(())
            } else {
                Err(format!("still present: {remaining:?}"))
            }
        },
    )
    .await;
    println!(
        "deleted: no FusedModel, Deployment, Service, autoscaler, disruption budget, ReplicaSet or Pod left"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_a_gpu_node_are_insufficient_gpu() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-gpu";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let mut model = example("smollm2-135m-cpu");
    model.metadata.name = Some("needs-gpu".into());
    model.spec.resources.gpus = 1;
    create_model(&client, ns, &model).await;
    let pods = wait_pods(&client, ns, "needs-gpu", 1).await;
    let pod_name = pods[0].metadata.name.clone().unwrap();
    let requests = pods[0].spec.as_ref().unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    assert_eq!(requests["nvidia.com/gpu"].0, "1");

    mark_pod_unschedulable(
        &client,
        ns,
        &pod_name,
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    .await;
    let waiting = wait_model(
        &models,
        "needs-gpu",
        "Scheduled=False/InsufficientGPU",
        |m| {
            has(
                m,
                condition_type::SCHEDULED,
                "False",
                condition_reason::INSUFFICIENT_GPU,
            )
        },
    )
    .await;
    println!("unschedulable:\n{}", describe(&waiting));
    assert!(has(
        &waiting,
        condition_type::READY,
        "False",
        condition_reason::INSUFFICIENT_GPU
    ));
    let message = &condition(&waiting, condition_type::SCHEDULED)
        .unwrap()
        .message;
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");
    let warning = wait_for("a Warning event InsufficientGPU", WAIT, || async {
        events_of(&client, ns, "needs-gpu")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InsufficientGPU"))
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    println!(
        "event: {} {}",
        warning.reason.unwrap_or_default(),
        warning.note.unwrap_or_default()
    );

    // Any other reason the scheduler gives is Unschedulable, not a GPU shortage.
    mark_pod_unschedulable(
        &client,
        ns,
        &pod_name,
        "0/3 nodes are available: 3 node(s) didn't match node selector.",
    )
    .await;
    wait_model(&models, "needs-gpu", "Scheduled=False/Unschedulable", |m| {
        has(m, condition_type::SCHEDULED, "False", "Unschedulable")
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drain_evicts_replicas_only_down_to_min_available() {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    let ns = "op-disruption";
    create_namespace(&client, ns).await;
    let operator = RunningOperator::start_default(&client, ns).await;
    assert_eq!(operator.ctx.pdb_version, Some(PDB_V1BETA1));
    let models: Api<FusedModel> = Api::namespaced(client.clone(), ns);
    let budgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &PDB_V1BETA1.api_resource());
    let mut model = example("smollm2-135m-cpu");
    let name = "drained";
    model.metadata.name = Some(name.into());
    model.spec.replicas = 2;
    create_model(&client, ns, &model).await;

    // The operator's default budget (one replica), selecting the model's Pods, owned by it.
    let budget = wait_for("the PodDisruptionBudget", WAIT, || async {
        budgets
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    assert_eq!(budget.data["spec"]["minAvailable"], 1);
    assert_eq!(
        budget.data["spec"]["selector"]["matchLabels"]["fused.dev/model"],
        name
    );
    let owner = &budget.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("FusedModel", name)
    );

    // Two ready replicas: the disruption controller allows one eviction.
    let pods = wait_pods(&client, ns, name, 2).await;
    for pod in &pods {
        mark_pod_ready(&client, ns, pod).await;
    }
    wait_for("one disruption allowed", WAIT, || async {
        let live = budgets.get(name).await.map_err(|e| e.to_string())?;
        let status = &live.data["status"];
        (status["disruptionsAllowed"] == 1 && status["currentHealthy"] == 2)
            .then_some(())
            .ok_or_else(|| format!("status {status}"))
    })
    .await;

    // A drain evicts the first replica and is refused the second (429, the budget named).
    let pods_api: Api<Pod> = Api::namespaced(cluster.client_without_retries().expect("client"), ns);
    let first = pods[0].metadata.name.as_deref().expect("Pod name");
    let second = pods[1].metadata.name.as_deref().expect("Pod name");
    pods_api
        .evict(first, &EvictParams::default())
        .await
        .expect("the first eviction is allowed");
    match pods_api.evict(second, &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(status.message.contains("disruption budget"), "{status:?}");
        }
        other => panic!("the second eviction must be refused by the budget: {other:?}"),
    }
    println!("drain: {first} evicted, {second} kept by the budget");

    // The spec overrides the default; 0 removes the budget.
    for (value, expected) in [(json!("50%"), Some(json!("50%"))), (json!(0), None)] {
        models
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"disruptionBudget": {"minAvailable": value}}})),
            )
            .await
            .expect("patch the budget");
        wait_for(&format!("minAvailable {value}"), WAIT, || async {
            let live = budgets.get_opt(name).await.map_err(|e| e.to_string())?;
            let have = live.map(|b| b.data["spec"]["minAvailable"].clone());
            (have == expected)
                .then_some(())
                .ok_or_else(|| format!("have {have:?}"))
        })
        .await;
    }
    operator.stop().await;
}
