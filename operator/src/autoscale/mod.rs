//! The built-in autoscaler (`spec.autoscaling.metricSource: operator`, the default): every
//! `--autoscale-interval-s` the leader reads each serving replica's `/metrics`, turns the samples
//! into the FusedModel's signals ([`signals`]), decides the replica count as the HPA would
//! ([`recommend`]), writes it through the FusedModel's scale subresource, and reports the
//! signals, the decision and its reason in `status.autoscaling` and in Events. With
//! `minReplicas: 0` it also takes the model to zero after `scaleToZeroAfter` without traffic
//! (and, with `metricSource: customMetrics`, does only that: the HPA owns 1..max).
//!
//! Why not an HPA on an `external.metrics.k8s.io` API served by the operator: only one
//! provider can serve that API group in a cluster (KEDA and prometheus-adapter each register
//! it), an aggregated API needs serving certificates and the front-proxy set up, and scale to
//! zero is the operator's business anyway — one controller with one stabilisation state is
//! simpler and as responsive (see docs/AUTOSCALING.md).
//!
//! Must not: scale a FusedModel whose spec is invalid, or one whose replicas it could not read
//! (a failed scrape counts as a replica that is starting, never as an idle one).

pub mod recommend;
pub mod signals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fused_crds::duration;
use fused_crds::{AutoscalingStatus, FusedModel, MetricSource, SignalStatus};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::apply::apply_status;
use crate::context::Context;
use crate::endpoints::serves;
use crate::error::{Error, Result};
use crate::labels::MODEL_LABEL;
use crate::scrape::{self, Sample};
use crate::spec_check;
use recommend::{Bounds, Decision, History, Observation, decimal};
use signals::{Counters, Reading, Round, targets};

/// Field manager of the autoscaler's writes (`status.autoscaling`).
pub const FIELD_MANAGER: &str = "fused-operator-autoscaler";
/// How long one replica's `/metrics` may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Event reasons.
pub const SCALED_UP: &str = "ScaledUp";
/// A scale-down.
pub const SCALED_DOWN: &str = "ScaledDown";
/// A scale to zero.
pub const SCALED_TO_ZERO: &str = "ScaledToZero";

/// Runs the autoscaler until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    let mut autoscaler = Autoscaler::new(ctx.clone());
    let mut interval =
        tokio::time::interval(Duration::from_secs(ctx.config.autoscale_interval_s.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if let Err(error) = autoscaler.round().await {
                    tracing::warn!(%error, "autoscaling round failed");
                }
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("autoscaler stopped");
}

/// What the autoscaler remembers about one FusedModel between rounds.
#[derive(Debug)]
struct ModelState {
    uid: String,
    history: History,
    counters: Counters,
    last_scale: Option<(Time, String)>,
    /// The last traffic, as an instant and as the wall-clock time reported.
    active_mark: (Instant, Time),
}

impl ModelState {
    fn new(uid: String, now: Instant, replicas: i32) -> Self {
        Self {
            uid,
            history: History::new(now, replicas),
            counters: Counters::default(),
            last_scale: None,
            active_mark: (now, now_seconds()),
        }
    }
}

/// The autoscaler: the context and each FusedModel's memory.
struct Autoscaler {
    ctx: Arc<Context>,
    http: reqwest::Client,
    models: HashMap<(String, String), ModelState>,
}

impl Autoscaler {
    fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            http: reqwest::Client::new(),
            models: HashMap::new(),
        }
    }

    /// One round over every FusedModel in scope: two lists, the scrapes, the writes.
    async fn round(&mut self) -> Result<()> {
        let client = &self.ctx.client;
        let namespace = self.ctx.config.watch_namespace.as_deref();
        let models: Api<FusedModel> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let pods: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let models = models.list(&ListParams::default()).await?.items;
        let pods = pods
            .list(&ListParams::default().labels(MODEL_LABEL))
            .await?
            .items;
        let mut seen = Vec::new();
        for model in &models {
            let (Some(name), Some(ns)) = (model.meta().name.clone(), model.namespace()) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            let mine: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    p.namespace().as_deref() == Some(ns.as_str())
                        && p.labels().get(MODEL_LABEL) == Some(&name)
                })
                .collect();
            match self.autoscale(model, &mine).await {
                Ok(true) => seen.push(key),
                Ok(false) => {}
                Err(error) => {
                    seen.push(key);
                    tracing::warn!(model = %name, namespace = %ns, %error, "autoscaling failed");
                }
            }
        }
        self.models.retain(|key, _| seen.contains(key));
        Ok(())
    }

    /// Autoscales one FusedModel; `false` when it is not autoscaled by the operator (its
    /// status then carries no autoscaling part).
    async fn autoscale(&mut self, model: &FusedModel, pods: &[&Pod]) -> Result<bool> {
        let Some(spec) = model
            .spec
            .autoscaling
            .as_ref()
            .filter(|a| a.metric_source != MetricSource::External)
        else {
            if model
                .status
                .as_ref()
                .is_some_and(|s| s.autoscaling.is_some())
            {
                self.write_status(model, None).await?;
            }
            return Ok(false);
        };
        if model.metadata.deletion_timestamp.is_some()
            || !spec_check::problems(model, &self.ctx.config).is_empty()
        {
            return Ok(false);
        }
        let (name, ns) = crate::labels::name_and_namespace(model)?;
        let uid = model.uid().unwrap_or_default();
        let now = Instant::now();
        let current = model.spec.replicas;
        let state = self
            .models
            .entry((ns.clone(), name.clone()))
            .or_insert_with(|| ModelState::new(uid.clone(), now, current));
        if state.uid != uid {
            // The FusedModel was deleted and created again under the same name.
            *state = ModelState::new(uid, now, current);
        }

        let samples = self.samples(pods).await;
        let targets = targets(spec);
        let state = self
            .models
            .get_mut(&(ns.clone(), name.clone()))
            .ok_or(Error::MissingField("autoscaler state"))?;
        let Round { readings, active } = state.counters.round(&targets, &samples);
        let bounds = Bounds {
            min: spec.min_replicas,
            max: spec.max_replicas,
            scale_down_window: window(&spec.scale_down_stabilization),
            scale_to_zero_after: self
                .ctx
                .config
                .activator()
                .map(|_| window(&spec.scale_to_zero_after)),
        };
        if current > 0 && model_was_woken(model) {
            state.last_scale = Some((
                now_seconds(),
                format!("a request arrived at zero replicas (activator): 0 → {current}"),
            ));
        }
        let mut decision = state.history.decide(
            &Observation {
                now,
                replicas: current,
                readings: &readings,
                active,
            },
            &bounds,
        );
        if state.history.last_active() != state.active_mark.0 {
            state.active_mark = (state.history.last_active(), now_seconds());
        }
        if spec.metric_source == MetricSource::CustomMetrics && decision.replicas != 0 {
            // The HPA owns 1..max; the operator only takes the model to zero.
            decision = Decision {
                replicas: current,
                reason: None,
            };
        }
        if let Some(reason) = &decision.reason {
            self.scale(model, current, decision.replicas, reason)
                .await?;
            if let Some(state) = self.models.get_mut(&(ns.clone(), name.clone())) {
                state.last_scale = Some((now_seconds(), reason.clone()));
            }
        }
        let state = self
            .models
            .get(&(ns, name))
            .ok_or(Error::MissingField("autoscaler state"))?;
        let status = AutoscalingStatus {
            metric_source: source_name(spec.metric_source).to_owned(),
            signals: readings.iter().map(signal_status).collect(),
            scraped_replicas: i32::try_from(samples.len()).unwrap_or(i32::MAX),
            desired_replicas: decision.replicas,
            last_scale_time: state
                .last_scale
                .as_ref()
                .map(|(t, _)| t.clone())
                .or_else(|| live(model).and_then(|a| a.last_scale_time.clone())),
            last_scale_reason: state
                .last_scale
                .as_ref()
                .map(|(_, r)| r.clone())
                .or_else(|| live(model).and_then(|a| a.last_scale_reason.clone())),
            last_active_time: Some(state.active_mark.1.clone()),
            summary: Some(summary(&readings)),
        };
        if live(model) != Some(&status) {
            self.write_status(model, Some(&status)).await?;
        }
        Ok(true)
    }

    /// A sample of every serving replica (those whose scrape fails are left out).
    async fn samples(&self, pods: &[&Pod]) -> Vec<(String, Instant, Sample)> {
        let scrapes = pods.iter().filter(|p| serves(p)).filter_map(|pod| {
            let address = self.ctx.pod_network.daemon(pod)?;
            let id = pod.uid().unwrap_or_else(|| pod.name_any());
            let http = self.http.clone();
            Some(async move {
                let result = scrape::scrape(&http, address, SCRAPE_TIMEOUT).await;
                (id, Instant::now(), result, pod.name_any())
            })
        });
        let mut samples = Vec::new();
        for (id, at, result, pod) in join_all(scrapes).await {
            match result {
                Ok(sample) => samples.push((id, at, sample)),
                Err(error) => {
                    self.ctx.metrics.scrape_failures.inc();
                    tracing::info!(%pod, %error, "no sample from a replica");
                }
            }
        }
        samples
    }

    /// Writes `replicas` through the scale subresource and publishes the Event.
    async fn scale(
        &self,
        model: &FusedModel,
        from: i32,
        replicas: i32,
        reason: &str,
    ) -> Result<()> {
        let (name, ns) = crate::labels::name_and_namespace(model)?;
        let api: Api<FusedModel> = Api::namespaced(self.ctx.client.clone(), &ns);
        api.patch_scale(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await?;
        let (direction, event_reason) = if replicas == 0 {
            ("zero", SCALED_TO_ZERO)
        } else if replicas > from {
            ("up", SCALED_UP)
        } else {
            ("down", SCALED_DOWN)
        };
        self.ctx
            .metrics
            .scale_changes
            .with_label_values(&[direction])
            .inc();
        tracing::info!(model = %name, namespace = %ns, from, to = replicas, %reason, "scaled");
        let event = Event {
            type_: EventType::Normal,
            reason: event_reason.into(),
            note: Some(reason.to_owned()),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(error) = self
            .ctx
            .recorder
            .publish(&event, &model.object_ref(&()))
            .await
        {
            tracing::warn!(%error, "publishing a scaling event");
        }
        Ok(())
    }

    /// Applies `status.autoscaling` (or removes it) under the autoscaler's field manager.
    async fn write_status(
        &self,
        model: &FusedModel,
        status: Option<&AutoscalingStatus>,
    ) -> Result<()> {
        let (name, ns) = crate::labels::name_and_namespace(model)?;
        let api: Api<FusedModel> = Api::namespaced(self.ctx.client.clone(), &ns);
        let body = match status {
            Some(status) => json!({"autoscaling": status}),
            None => json!({}),
        };
        apply_status(&api, &name, FIELD_MANAGER, body).await
    }
}

/// Whether the live status says the model was at zero (the activator woke it since).
fn model_was_woken(model: &FusedModel) -> bool {
    live(model).is_some_and(|a| a.desired_replicas == 0)
}

fn live(model: &FusedModel) -> Option<&AutoscalingStatus> {
    model.status.as_ref()?.autoscaling.as_ref()
}

/// A duration of the spec (the schema checks the spelling; an unreadable one counts as zero).
fn window(text: &str) -> Duration {
    Duration::from_secs(duration::seconds(text).unwrap_or(0))
}

/// `source` as the spec spells it.
pub fn source_name(source: MetricSource) -> &'static str {
    match source {
        MetricSource::Operator => "operator",
        MetricSource::CustomMetrics => "customMetrics",
        MetricSource::External => "external",
    }
}

fn signal_status(reading: &Reading) -> SignalStatus {
    SignalStatus {
        name: reading.target.signal.series().to_owned(),
        current: reading.mean().map(decimal),
        target: decimal(reading.target.value),
    }
}

/// `waiting 3.5/2 kv 0.41/0.8` (`-` before a signal has a value).
fn summary(readings: &[Reading]) -> String {
    readings
        .iter()
        .map(|r| {
            format!(
                "{} {}/{}",
                r.target.signal.short(),
                r.mean().map_or_else(|| "-".to_owned(), decimal),
                decimal(r.target.value)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now, to the second (as the API server stores times: a status compares equal after a
/// round trip).
fn now_seconds() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}
