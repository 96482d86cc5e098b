//! The reconciler: for each FusedModel, check the spec, apply the Deployment, Service,
//! autoscaler and NetworkPolicy when they differ from what is live (never taking over an
//! object it does not own), read back the workload and its Pods, and write the status (and an
//! Event per condition transition) when it changed. Children go with the FusedModel through
//! their owner references (garbage collection): no finalizer, so a FusedModel never blocks the
//! deletion of its namespace, even with the operator gone. `run` drives it with a kube-runtime
//! `Controller`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fused_crds::FusedModel;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Event;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use crate::apply::{Applied, apply_if_changed, apply_if_changed_with, controlled_by};
use crate::autoscaler::{self, HpaVersion};
use crate::conditions::{self, Findings};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events;
use crate::labels::{
    self, FIELD_MANAGER, LEGACY_FINALIZER, MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL,
};
use crate::network_policy;
use crate::observe;
use crate::service;
use crate::spec_check;
use crate::workload;

/// How often a FusedModel is reconciled with no change seen (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Pause before retrying a reconcile that failed.
pub const RETRY: Duration = Duration::from_secs(10);
/// Pause before looking again at a name held by an object that is not ours (it is not
/// watched: its deletion sends no event).
pub const CONFLICT_RETRY: Duration = Duration::from_secs(60);

/// Reconciles one FusedModel.
#[instrument(skip_all, fields(object = %ObjectRef::from_obj(&*model), generation = model.metadata.generation))]
pub async fn reconcile(model: Arc<FusedModel>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let result = if model.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        drop_legacy_finalizer(&model, &ctx).await
    } else if model.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children through their owner references.
        Ok(Action::await_change())
    } else {
        apply(&model, &ctx).await
    };
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// What to do after a failed reconcile: count it and retry soon.
pub fn error_policy(model: Arc<FusedModel>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    tracing::warn!(object = %ObjectRef::from_obj(&*model), %error, "reconcile failed");
    Action::requeue(RETRY)
}

/// Removes the `fused.dev/cleanup` finalizer earlier versions put on FusedModels (a merge
/// patch carrying the resourceVersion, so a concurrent change of the finalizers is not
/// overwritten: the server answers 409 and the reconcile is retried).
async fn drop_legacy_finalizer(model: &FusedModel, ctx: &Context) -> Result<Action> {
    let (name, namespace) = labels::name_and_namespace(model)?;
    let kept: Vec<&String> = model
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": kept,
        "resourceVersion": model.resource_version(),
    }});
    Api::<FusedModel>::namespaced(ctx.client.clone(), &namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!("removed the legacy finalizer {LEGACY_FINALIZER}");
    // The patch is a change: the watch brings the object back for a normal reconcile.
    Ok(Action::await_change())
}

async fn apply(model: &FusedModel, ctx: &Context) -> Result<Action> {
    let (name, namespace) = labels::name_and_namespace(model)?;
    let client = &ctx.client;
    let problems = spec_check::problems(model, &ctx.config);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let mut conflicts = Vec::new();
    let deployment = if problems.is_empty() {
        let desired = workload::deployment(model, &ctx.config)?;
        let applied = apply_if_changed(&deployments, &name, &desired).await?;
        record(ctx, "Deployment", &applied, &mut conflicts);
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let service = apply_if_changed(&services, &name, &service::service(model)?).await?;
        record(ctx, "Service", &service, &mut conflicts);
        if let Some(version) = ctx.hpa_version
            && let Some(hpa) = reconcile_autoscaler(model, &namespace, version, ctx).await?
        {
            record(ctx, "HorizontalPodAutoscaler", &hpa, &mut conflicts);
        }
        if let Some(policy) = reconcile_network_policy(model, &namespace, ctx).await? {
            record(ctx, "NetworkPolicy", &policy, &mut conflicts);
        }
        applied.into_object()
    } else {
        tracing::info!(?problems, "invalid spec: the workload is left as it is");
        deployments
            .get_opt(&name)
            .await?
            .filter(|d| controlled_by(d, model.uid().as_deref()))
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods = pods
        .list(&ListParams::default().labels(&labels::selector_string(&name)))
        .await?
        .items;
    let observed = observe::observe(deployment.as_ref(), &pods, model.spec.replicas);
    let findings = Findings {
        problems: &problems,
        conflicts: &conflicts,
        observed: &observed,
    };
    let status = conditions::status(model, &findings, Time(Timestamp::now()));
    if model.status.as_ref() != Some(&status) {
        let api: Api<FusedModel> = Api::namespaced(client.clone(), &namespace);
        let patch = json!({
            "apiVersion": FusedModel::api_version(&()),
            "kind": FusedModel::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        publish(
            ctx,
            model,
            events::transitions(model.status.as_ref(), &status),
        )
        .await;
    }
    Ok(if !problems.is_empty() {
        // Only a spec change can fix the spec: wait for one instead of retrying.
        Action::await_change()
    } else if !conflicts.is_empty() {
        tracing::info!(?conflicts, "names held by objects that are not ours");
        Action::requeue(CONFLICT_RETRY)
    } else {
        Action::requeue(RESYNC)
    })
}

/// Counts an apply in the metrics, or keeps the conflict it met.
fn record<K>(ctx: &Context, kind: &str, applied: &Applied<K>, conflicts: &mut Vec<String>) {
    match applied {
        Applied::NotOurs(message) => conflicts.push(message.clone()),
        Applied::Unchanged(_) | Applied::Written(_) => {
            ctx.metrics.count_apply(kind, applied.written());
        }
    }
}

/// Applies the autoscaler when the spec asks for one, deletes ours when it no longer does.
async fn reconcile_autoscaler(
    model: &FusedModel,
    namespace: &str,
    version: HpaVersion,
    ctx: &Context,
) -> Result<Option<Applied<DynamicObject>>> {
    let resource = version.api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    match autoscaler::autoscaler(model, version)? {
        Some(desired) => {
            let (name, _) = labels::name_and_namespace(model)?;
            Ok(Some(
                apply_if_changed_with(&api, &name, &desired, &resource).await?,
            ))
        }
        None => {
            delete_if_ours(&api, model).await?;
            Ok(None)
        }
    }
}

/// Applies the NetworkPolicy when the spec asks for one, deletes ours when it no longer does.
async fn reconcile_network_policy(
    model: &FusedModel,
    namespace: &str,
    ctx: &Context,
) -> Result<Option<Applied<NetworkPolicy>>> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    match network_policy::network_policy(model)? {
        Some(desired) => {
            let (name, _) = labels::name_and_namespace(model)?;
            Ok(Some(apply_if_changed(&api, &name, &desired).await?))
        }
        None => {
            delete_if_ours(&api, model).await?;
            Ok(None)
        }
    }
}

/// Deletes the object named like `model` if `model` controls it; the delete carries the
/// object's uid as a precondition, so an object recreated meanwhile by someone else stays.
async fn delete_if_ours<K>(api: &Api<K>, model: &FusedModel) -> Result<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let (name, _) = labels::name_and_namespace(model)?;
    let Some(live) = api.get_opt(&name).await? else {
        return Ok(());
    };
    if !controlled_by(&live, model.uid().as_deref()) {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: live.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Publishes `events` on `model`; a failure is logged, not fatal (events are best effort).
async fn publish(ctx: &Context, model: &FusedModel, events: Vec<Event>) {
    let reference = model.object_ref(&());
    for event in events {
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, "publishing an event");
        }
    }
}

/// Runs the controller until `shutdown` completes (in-flight reconciles finish first).
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let namespace = ctx.config.watch_namespace.clone();
    let models: Api<FusedModel> = scoped_api(&client, namespace.as_deref());
    let deployments: Api<Deployment> = scoped_api(&client, namespace.as_deref());
    let services: Api<Service> = scoped_api(&client, namespace.as_deref());
    let pods: Api<Pod> = scoped_api(&client, namespace.as_deref());
    let policies: Api<NetworkPolicy> = scoped_api(&client, namespace.as_deref());
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    Controller::new(models, watcher::Config::default())
        .owns(deployments, managed.clone())
        .owns(services, managed.clone())
        .owns(policies, managed)
        .watches(pods, watcher::Config::default().labels(MODEL_LABEL), |pod: Pod| {
            let name = pod.labels().get(MODEL_LABEL)?.clone();
            let namespace = pod.namespace()?;
            Some(ObjectRef::<FusedModel>::new(&name).within(&namespace))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => {
                    tracing::debug!(model = %object.name, namespace = ?object.namespace, "reconciled");
                }
                // Already logged by error_policy, or a deleted object: nothing to add.
                Err(
                    controller::Error::ReconcilerFailed(..) | controller::Error::ObjectNotFound(_),
                ) => {}
                // A watch failing (lost permission, CRD missing): the controller retries.
                Err(error) => tracing::warn!(%error, "watching failed"),
            }
        })
        .await;
    tracing::info!("controller stopped");
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
