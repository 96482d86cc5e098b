//! Test scaffolding for reconciling against a mocked API server (kube-rs/controller-rs's
//! `fixtures.rs` pattern): a `kube::Client` over a `tower-test` mock service, an
//! [`ApiServerVerifier`] that answers each request from an in-memory [`World`] and records it,
//! and a [`Scenario`] per status transition that sets the world up. No logic under test lives
//! here.

use std::collections::BTreeMap;
use std::sync::Arc;

use fused_crds::FusedModel;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use crate::config::OperatorConfig;
use crate::context::Context;
use crate::labels::{LEGACY_FINALIZER, TEMPLATE_HASH_ANNOTATION};
use crate::metrics::Metrics;
use crate::observe;
use crate::service;
use crate::workload;

/// Namespace of every scenario's FusedModel.
pub const NAMESPACE: &str = "tenant-a";
/// Name of every scenario's FusedModel.
pub const NAME: &str = "smollm2";
/// Its uid.
pub const UID: &str = "5f1e2c1a-0000-4000-8000-000000000001";
/// The daemon image of the test configuration.
pub const DAEMON_IMAGE: &str = "registry.test/fused-daemon:1";

/// One request the verifier answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Resource (plural), with `/status` for the status subresource.
    pub resource: String,
    /// Object name (empty for a list or a create).
    pub name: String,
    /// The request body, when there was one.
    pub body: Option<Value>,
}

impl Call {
    /// `METHOD resource/name`, for assertions.
    pub fn summary(&self) -> String {
        format!("{} {}/{}", self.method, self.resource, self.name)
            .trim_end_matches('/')
            .to_owned()
    }

    /// Whether it changed something.
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// What the mocked API server holds: objects by `(resource, name)` as JSON, and the Pods.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Named objects (`fusedmodels`, `deployments`, `services`, `networkpolicies`, …).
    pub objects: BTreeMap<(String, String), Value>,
    /// The FusedModel's Pods (answered to a list).
    pub pods: Vec<Value>,
}

impl World {
    fn insert(&mut self, resource: &str, name: &str, object: Value) {
        self.objects
            .insert((resource.to_owned(), name.to_owned()), object);
    }

    /// The object `resource/name`, if present.
    pub fn get(&self, resource: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(resource.to_owned(), name.to_owned()))
    }
}

/// The state of the cluster before a reconcile, one per status transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A new FusedModel: nothing exists yet.
    Created,
    /// The Deployment rolled out and its one replica is ready.
    RolledOut,
    /// The spec breaks a rule the schema cannot express (`spec.image` outside the policy).
    InvalidSpec,
    /// A Service of the same name exists and belongs to someone else.
    NameConflict,
    /// The replica's fetch step failed with a digest mismatch.
    DigestMismatch,
    /// The scheduler found no node with a free GPU.
    InsufficientGpu,
    /// The Deployment exceeded its progress deadline.
    ProgressDeadlineExceeded,
    /// `replicas: 0`.
    ScaledToZero,
    /// A FusedModel of an earlier operator version, with the `fused.dev/cleanup` finalizer.
    LegacyFinalizer,
    /// `autoscaling.minReplicas: 0` at zero replicas; its Service still has the selector an
    /// earlier version gave it, and the activator has one ready replica.
    OnDemandAtZero,
    /// The same with one ready replica.
    OnDemandServing,
}

/// Namespace and name of the activator's Service in the test configuration.
pub const ACTIVATOR: (&str, &str) = ("fused-system", "fused-operator-activator");
/// The activator replica's address.
pub const ACTIVATOR_IP: &str = "10.1.0.7";

/// The FusedModel of the scenarios (the CPU example's shape), at generation 1.
pub fn model(spec: Value) -> FusedModel {
    let mut model: FusedModel = serde_json::from_value(json!({
        "apiVersion": "fused.dev/v1alpha1",
        "kind": "FusedModel",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": 1,
                     "resourceVersion": "10"},
        "spec": spec,
    }))
    .expect("a FusedModel");
    model.metadata.generation = Some(1);
    model
}

/// The spec of the scenarios.
pub fn spec() -> Value {
    json!({
        "baseModel": {"uri": "file:///models/m.gguf", "format": "gguf",
                      "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        "kvCache": {"maxSeqs": 8},
        "scheduler": {"tokenBudget": 256, "maxNumSeqs": 8},
        "resources": {"gpus": 0, "memory": "1Gi"}
    })
}

/// The test configuration of the operator.
pub fn config() -> OperatorConfig {
    let mut config = OperatorConfig::with_daemon_image(DAEMON_IMAGE);
    config.activator_service = Some(format!("{}/{}", ACTIVATOR.0, ACTIVATOR.1));
    config
}

impl Scenario {
    /// The FusedModel and the world this scenario starts from.
    pub fn setup(self) -> (FusedModel, World) {
        let mut world = World::default();
        let mut spec = spec();
        match self {
            Self::InvalidSpec => spec["image"] = "evil.example/rewrite-cache:1".into(),
            Self::ScaledToZero => spec["replicas"] = 0.into(),
            Self::OnDemandAtZero | Self::OnDemandServing => {
                spec["replicas"] = if self == Self::OnDemandAtZero { 0 } else { 1 }.into();
                spec["autoscaling"] =
                    json!({"minReplicas": 0, "maxReplicas": 2, "targetWaitingRequests": 4});
            }
            Self::InsufficientGpu => spec["resources"]["gpus"] = 1.into(),
            _ => {}
        }
        let mut model = model(spec);
        if self == Self::LegacyFinalizer {
            model.metadata.finalizers =
                Some(vec!["example.com/other".into(), LEGACY_FINALIZER.into()]);
        }
        let desired = workload::deployment(&model, &config()).ok();
        let hash = desired
            .as_ref()
            .and_then(observe::template_hash)
            .unwrap_or_default();
        let deployment_with = |status: Value| {
            let mut deployment = serde_json::to_value(desired.clone()).expect("json");
            deployment["metadata"]["generation"] = 1.into();
            deployment["status"] = status;
            deployment
        };
        let pod = |status: Value| {
            json!({"metadata": {"name": format!("{NAME}-abc"), "namespace": NAMESPACE,
                "labels": {"fused.dev/model": NAME},
                "annotations": {TEMPLATE_HASH_ANNOTATION: hash}}, "status": status})
        };
        let complete = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                              "readyReplicas": 1, "availableReplicas": 1});
        match self {
            Self::RolledOut => {
                world.insert("deployments", NAME, deployment_with(complete));
                world
                    .pods
                    .push(pod(json!({"phase": "Running", "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"}]})));
            }
            Self::ScaledToZero | Self::OnDemandAtZero => {
                let mut deployment = deployment_with(json!({"observedGeneration": 1}));
                deployment["spec"]["replicas"] = 0.into();
                world.insert("deployments", NAME, deployment);
            }
            Self::OnDemandServing => {
                world.insert("deployments", NAME, deployment_with(complete));
                world
                    .pods
                    .push(pod(json!({"phase": "Running", "podIP": "10.2.0.9",
                    "conditions": [{"type": "PodScheduled", "status": "True"},
                                   {"type": "Initialized", "status": "True"},
                                   {"type": "Ready", "status": "True"}]})));
            }
            Self::NameConflict => world.insert(
                "services",
                NAME,
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": "someone-else",
                                    "labels": {"app": "billing"}},
                       "spec": {"selector": {"app": "billing"}, "ports": [{"port": 80}]}}),
            ),
            Self::DigestMismatch => {
                world.insert(
                    "deployments",
                    NAME,
                    deployment_with(json!({"observedGeneration": 1, "replicas": 1,
                                           "updatedReplicas": 1})),
                );
                world.pods.push(pod(json!({"phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "initContainerStatuses": [{"name": "fetch-model", "ready": false,
                        "restartCount": 1, "image": "i", "imageID": "",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1,
                            "message": "ArtifactDigestMismatch: file:///models/m.gguf: SHA-256 is 00, expected b1"}}}]})));
            }
            Self::InsufficientGpu => {
                world.insert(
                    "deployments",
                    NAME,
                    deployment_with(json!({"observedGeneration": 1, "replicas": 1,
                                           "updatedReplicas": 1})),
                );
                world
                    .pods
                    .push(pod(json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]})));
            }
            Self::ProgressDeadlineExceeded => world.insert(
                "deployments",
                NAME,
                deployment_with(json!({"observedGeneration": 1, "replicas": 1,
                    "conditions": [{"type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"smollm2-abc\" has timed out progressing."}]})),
            ),
            Self::Created | Self::InvalidSpec | Self::LegacyFinalizer => {}
        }
        // Where an earlier reconcile made the Deployment, it made the Service too.
        if world.get("deployments", NAME).is_some() {
            let service = service::service(&model).expect("the Service");
            let mut service = serde_json::to_value(service).expect("json");
            if self == Self::OnDemandAtZero {
                // Made by a version that gave every Service a selector.
                service["spec"]["selector"] = json!({"fused.dev/model": NAME});
            }
            world.insert("services", NAME, service);
        }
        if matches!(self, Self::OnDemandAtZero | Self::OnDemandServing) {
            world.insert(
                "endpoints",
                ACTIVATOR.1,
                json!({"apiVersion": "v1", "kind": "Endpoints",
                       "metadata": {"name": ACTIVATOR.1, "namespace": ACTIVATOR.0},
                       "subsets": [{"addresses": [{"ip": ACTIVATOR_IP}],
                                    "ports": [{"name": "http", "port": 8081}]}]}),
            );
        }
        world.insert(
            "fusedmodels",
            NAME,
            serde_json::to_value(&model).expect("json"),
        );
        (model, world)
    }
}

/// Answers the reconciler's requests from a [`World`], recording each.
pub struct ApiServerVerifier {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    world: World,
    calls: Vec<Call>,
}

/// A context whose client talks to a verifier, and the verifier.
pub fn mocked_context(world: World) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NAMESPACE);
    let ctx = Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "fused-operator".into(),
                instance: None,
            },
        ),
        client,
        config: config(),
        hpa_version: None,
        pdb_version: None,
        pod_network: crate::pod_network::PodNetwork::direct(),
        metrics: Arc::new(Metrics::new().expect("metrics")),
    };
    let verifier = ApiServerVerifier {
        handle,
        world,
        calls: Vec::new(),
    };
    (Arc::new(ctx), verifier)
}

impl ApiServerVerifier {
    /// Answers requests until every client is dropped; returns the calls and the final world.
    pub async fn serve(mut self) -> (Vec<Call>, World) {
        while let Some((request, respond)) = self.handle.next_request().await {
            let response = self.answer(request).await;
            respond.send_response(response);
        }
        (self.calls, self.world)
    }

    async fn answer(&mut self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("a request body");
        let body: Option<Value> = (!bytes.is_empty())
            .then(|| serde_json::from_slice(&bytes).expect("a JSON request body"));
        // .../namespaces/<ns>/<resource>[/<name>[/<subresource>]]
        let segments: Vec<&str> = path.split('/').collect();
        let at = segments
            .iter()
            .position(|s| *s == "namespaces")
            .unwrap_or_else(|| panic!("a namespaced request: {method} {path}"));
        let resource = segments.get(at + 2).copied().unwrap_or_default().to_owned();
        let name = segments.get(at + 3).copied().unwrap_or_default().to_owned();
        let subresource = segments.get(at + 4).copied();
        let call = Call {
            method: method.clone(),
            resource: match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            },
            name: name.clone(),
            body: body.clone(),
        };
        self.calls.push(call);
        let key = (resource.clone(), name.clone());
        match (method, resource.as_str(), subresource) {
            (Method::GET, "pods", None) if name.is_empty() => respond(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                        "items": self.world.pods}),
            ),
            (Method::GET, _, None) => match self.world.objects.get(&key) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(&resource, &name),
            },
            (Method::POST, "events", None) => {
                respond(StatusCode::CREATED, &body.expect("an event"))
            }
            (Method::PATCH, "fusedmodels", Some("status")) => {
                let object = self.world.objects.get_mut(&key).expect("the FusedModel");
                object["status"] = body.expect("a status patch")["status"].clone();
                respond(StatusCode::OK, object)
            }
            (Method::PATCH, _, None) => {
                let patch = body.expect("a patch");
                let object = match self.world.objects.remove(&key) {
                    Some(mut live) => {
                        merge(&mut live, &patch);
                        live
                    }
                    None => patch,
                };
                let answer = respond(StatusCode::OK, &object);
                self.world.objects.insert(key, object);
                answer
            }
            (Method::DELETE, _, None) => match self.world.objects.remove(&key) {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(&resource, &name),
            },
            (method, _, _) => panic!("unexpected request {method} {path}"),
        }
    }
}

/// A JSON merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound",
                "code": 404}),
    )
}
