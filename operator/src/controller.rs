//! The reconciler: for each FusedModel, check the spec, apply the Deployment, Service and
//! autoscaler when they differ from what is live, read back the workload and its Pods, and write
//! the status (and an Event per condition transition) when it changed. A finalizer deletes the
//! children in order when the FusedModel goes. `run` drives it with a kube-runtime `Controller`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fused_crds::FusedModel;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::apply_if_changed;
use crate::autoscaler::{self, HpaVersion};
use crate::conditions::{self, Findings};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events;
use crate::labels::{self, FIELD_MANAGER, FINALIZER, MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL};
use crate::observe;
use crate::service;
use crate::spec_check;
use crate::workload;

/// How often a FusedModel is reconciled with no change seen (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Pause before retrying a reconcile that failed.
pub const RETRY: Duration = Duration::from_secs(10);

/// Reconciles one FusedModel.
pub async fn reconcile(model: Arc<FusedModel>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let (_, namespace) = labels::name_and_namespace(&model)?;
    let api: Api<FusedModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, model, |event| async {
        match event {
            finalizer::Event::Apply(model) => apply(&model, &ctx).await,
            finalizer::Event::Cleanup(model) => cleanup(&model, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
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
    tracing::warn!(model = %model.name_any(), namespace = ?model.namespace(), %error, "reconcile failed");
    Action::requeue(RETRY)
}

async fn apply(model: &FusedModel, ctx: &Context) -> Result<Action> {
    let (name, namespace) = labels::name_and_namespace(model)?;
    let client = &ctx.client;
    let problems = spec_check::problems(model, &ctx.config);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = if problems.is_empty() {
        let desired = workload::deployment(model, &ctx.config)?;
        let applied = apply_if_changed(&deployments, &name, &desired).await?;
        ctx.metrics.count_apply("Deployment", applied.written());
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let service = apply_if_changed(&services, &name, &service::service(model)?).await?;
        ctx.metrics.count_apply("Service", service.written());
        if let Some(version) = ctx.hpa_version {
            reconcile_autoscaler(model, client, &namespace, version, ctx).await?;
        }
        Some(applied.into_object())
    } else {
        tracing::info!(model = %name, %namespace, ?problems, "invalid spec: the workload is left as it is");
        deployments.get_opt(&name).await?
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods = pods
        .list(&ListParams::default().labels(&labels::selector_string(&name)))
        .await?
        .items;
    let observed = observe::observe(deployment.as_ref(), &pods, model.spec.replicas);
    let findings = Findings {
        problems: &problems,
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
    Ok(if problems.is_empty() {
        Action::requeue(RESYNC)
    } else {
        // Only a spec change can fix the spec: wait for one instead of retrying.
        Action::await_change()
    })
}

/// Applies the autoscaler when the spec asks for one, deletes it when it no longer does.
async fn reconcile_autoscaler(
    model: &FusedModel,
    client: &Client,
    namespace: &str,
    version: HpaVersion,
    ctx: &Context,
) -> Result<()> {
    let (name, _) = labels::name_and_namespace(model)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &version.api_resource());
    match autoscaler::autoscaler(model, version)? {
        Some(desired) => {
            let applied = apply_if_changed(&api, &name, &desired).await?;
            ctx.metrics
                .count_apply("HorizontalPodAutoscaler", applied.written());
        }
        None => {
            let live = api.get_opt(&name).await?;
            let ours = live.is_some_and(|hpa| {
                hpa.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == model.meta().uid.as_ref())
            });
            if ours {
                delete_if_present(&api, &name).await?;
            }
        }
    }
    Ok(())
}

/// Deletes the children explicitly, autoscaler first (so it stops scaling), then the Service
/// (so traffic stops), then the Deployment. Garbage collection would get there too, through the
/// owner references, but only as fast as its queue and only where it runs.
async fn cleanup(model: &FusedModel, ctx: &Context) -> Result<Action> {
    let (name, namespace) = labels::name_and_namespace(model)?;
    let client = &ctx.client;
    if let Some(version) = ctx.hpa_version {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &version.api_resource());
        delete_if_present(&api, &name).await?;
    }
    delete_if_present(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &name,
    )
    .await?;
    delete_if_present(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &name,
    )
    .await?;
    let event = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some("deleted the autoscaler, Service and Deployment".into()),
        action: events::ACTION.into(),
        secondary: None,
    };
    publish(ctx, model, vec![event]).await;
    tracing::info!(model = %name, %namespace, "cleaned up");
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
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
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    Controller::new(models, watcher::Config::default())
        .owns(deployments, managed.clone())
        .owns(services, managed)
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
