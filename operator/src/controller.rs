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
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Event;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use crate::apply::{
    Applied, apply_if_changed, apply_if_changed_dropping, apply_if_changed_with, apply_status,
    contains, controlled_by, same_controller,
};
use crate::autoscale;
use crate::autoscaler;
use crate::conditions::{self, Findings};
use crate::context::Context;
use crate::disruption_budget;
use crate::endpoints;
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
    let mut service_ours = false;
    let deployment = if problems.is_empty() {
        let desired = workload::deployment(model, &ctx.config)?;
        let applied = apply_if_changed(&deployments, &name, &desired).await?;
        record(ctx, "Deployment", &applied, &mut conflicts);
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        // A scale-to-zero model's Service has no selector: the operator writes its endpoints.
        let service = apply_if_changed_dropping(
            &services,
            &name,
            &service::service(model)?,
            &["/spec/selector"],
        )
        .await?;
        service_ours = !matches!(service, Applied::NotOurs(_));
        record(ctx, "Service", &service, &mut conflicts);
        if let Some(version) = ctx.hpa_version
            && let Some(hpa) = reconcile_versioned(
                model,
                &namespace,
                version.api_resource(),
                autoscaler::autoscaler(model, version)?,
                ctx,
            )
            .await?
        {
            record(ctx, "HorizontalPodAutoscaler", &hpa, &mut conflicts);
        }
        if let Some(version) = ctx.pdb_version
            && let Some(budget) = reconcile_versioned(
                model,
                &namespace,
                version.api_resource(),
                disruption_budget::disruption_budget(model, &ctx.config, version)?,
                ctx,
            )
            .await?
        {
            record(ctx, "PodDisruptionBudget", &budget, &mut conflicts);
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
    if service_ours && endpoints::scales_to_zero(model) {
        reconcile_endpoints(model, &namespace, &pods, ctx).await?;
    }
    let observed = observe::observe(deployment.as_ref(), &pods, model.spec.replicas);
    let findings = Findings {
        problems: &problems,
        conflicts: &conflicts,
        observed: &observed,
    };
    let status = conditions::status(model, &findings, Time(Timestamp::now()));
    if model.status.as_ref() != Some(&status) {
        let api: Api<FusedModel> = Api::namespaced(client.clone(), &namespace);
        // `status.autoscaling` belongs to the autoscaler's field manager: never written here.
        let mut body = serde_json::to_value(&status).map_err(Error::serialize("the status"))?;
        if let Some(fields) = body.as_object_mut() {
            fields.remove("autoscaling");
        }
        apply_status(&api, &name, FIELD_MANAGER, body).await?;
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

/// Applies `desired` (an autoscaler or a disruption budget, in the API version the server
/// serves) when the model asks for one, deletes ours when it no longer does.
async fn reconcile_versioned(
    model: &FusedModel,
    namespace: &str,
    resource: ApiResource,
    desired: Option<DynamicObject>,
    ctx: &Context,
) -> Result<Option<Applied<DynamicObject>>> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    match desired {
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

/// Points a scale-to-zero model's Service at its serving replicas, or else at the activator.
/// The Endpoints named like our Service are that Service's by the API's definition, so one
/// left by the endpoints controller (before the selector was dropped) is taken over.
async fn reconcile_endpoints(
    model: &FusedModel,
    namespace: &str,
    pods: &[Pod],
    ctx: &Context,
) -> Result<()> {
    let activator = match ctx.config.activator() {
        Some((ns, name)) => Api::<Endpoints>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|e| endpoints::ready_addresses(&e))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (desired, target) = endpoints::endpoints(model, pods, &activator)?;
    let (name, _) = labels::name_and_namespace(model)?;
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    let wanted = serde_json::to_value(&desired).map_err(Error::serialize("the endpoints"))?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if let Some(live) = api.get_opt(&name).await? {
        let have = serde_json::to_value(&live).map_err(Error::serialize("the live endpoints"))?;
        if same_controller(&live, &desired) && contains(&have, &wanted) {
            ctx.metrics.count_apply("Endpoints", false);
            return Ok(());
        }
        params = params.force();
    }
    api.patch(&name, &params, &Patch::Apply(&wanted)).await?;
    ctx.metrics.count_apply("Endpoints", true);
    tracing::info!(?target, "the Service's endpoints changed");
    Ok(())
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

/// Runs the controller and the autoscaler until `shutdown` completes (in-flight reconciles
/// finish first).
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let client = ctx.client.clone();
    let namespace = ctx.config.watch_namespace.clone();
    let models: Api<FusedModel> = scoped_api(&client, namespace.as_deref());
    let deployments: Api<Deployment> = scoped_api(&client, namespace.as_deref());
    let services: Api<Service> = scoped_api(&client, namespace.as_deref());
    let pods: Api<Pod> = scoped_api(&client, namespace.as_deref());
    let policies: Api<NetworkPolicy> = scoped_api(&client, namespace.as_deref());
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(models, watcher::Config::default());
    let store = controller.store();
    let mut controller = controller
        .owns(deployments, managed.clone())
        .owns(services, managed.clone())
        .owns(policies, managed)
        .watches(
            pods,
            watcher::Config::default().labels(MODEL_LABEL),
            |pod: Pod| {
                let name = pod.labels().get(MODEL_LABEL)?.clone();
                let namespace = pod.namespace()?;
                Some(ObjectRef::<FusedModel>::new(&name).within(&namespace))
            },
        );
    if let Some((activator_ns, activator)) = ctx.config.activator() {
        // When the activator's replicas change, every scale-to-zero Service follows them.
        let api: Api<Endpoints> = Api::namespaced(client.clone(), activator_ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={activator}"));
        controller = controller.watches(api, config, move |_| {
            store
                .state()
                .into_iter()
                .filter(|model| endpoints::scales_to_zero(model))
                .map(|model| ObjectRef::from_obj(&*model))
                .collect::<Vec<_>>()
        });
    }
    let reconciling = controller
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
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
        });
    futures::join!(reconciling, autoscale::run(ctx, shutdown));
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
