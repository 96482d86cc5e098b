//! Waking a model: scale it from zero (a patch conditional on the resourceVersion at which the
//! model was seen at zero, so concurrent requests and activator replicas make one change and one
//! Event; again if the model is back at zero while requests wait), then wait for a serving
//! replica as the watches see it, until the model's activation timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fused_crds::{FusedModel, duration};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Activator, ModelKey};
use crate::endpoints::serves;
use crate::labels::MODEL_LABEL;

/// Activation timeout of a model that sets none (the spec's default).
pub const DEFAULT_ACTIVATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Event reason of a wake-up.
pub const ACTIVATED: &str = "Activated";
/// Longest wait between two looks at the replicas, whatever the watches say.
const RECHECK: Duration = Duration::from_secs(1);

impl Activator {
    fn model(&self, (ns, name): &ModelKey) -> Option<std::sync::Arc<FusedModel>> {
        self.models
            .state()
            .into_iter()
            .find(|m| m.namespace().as_deref() == Some(ns.as_str()) && &m.name_any() == name)
    }

    /// The model's `activationTimeout`.
    pub(super) fn activation_timeout(&self, key: &ModelKey) -> Duration {
        self.model(key)
            .and_then(|m| {
                let text = m.spec.autoscaling.as_ref()?.activation_timeout.clone();
                duration::seconds(&text).map(Duration::from_secs)
            })
            .unwrap_or(DEFAULT_ACTIVATION_TIMEOUT)
    }

    /// Addresses of the model's serving replicas, as the watches see them now.
    pub(super) fn serving(&self, (ns, name): &ModelKey) -> Vec<SocketAddr> {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get(MODEL_LABEL) == Some(name)
                    && serves(p)
            })
            .filter_map(|p| self.pod_network.daemon(p))
            .collect()
    }

    /// Scales the model from zero if it is there, and waits for a serving replica; the error
    /// says why none came.
    pub(super) async fn wake(
        &self,
        key: &ModelKey,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, String> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.changes.clone();
        let mut scaled: Option<Instant> = None;
        loop {
            let replicas = self.serving(key);
            if !replicas.is_empty() {
                return Ok(replicas);
            }
            // Once, and again whenever the model is back at zero while the request waits (an
            // autoscaler round that decided zero just before the wake-up, a person's scale).
            let again = scaled.is_some_and(|at| at.elapsed() >= RECHECK)
                && self.model(key).is_some_and(|m| m.spec.replicas == 0);
            if scaled.is_none() || again {
                scaled = Some(Instant::now());
                self.scale_from_zero(key).await;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no replica of FusedModel {}/{} became ready within {} s (activationTimeout); \
                     retry later",
                    key.0,
                    key.1,
                    timeout.as_secs()
                ));
            }
            let wait = (deadline - now).min(RECHECK);
            // A change seen by the watches, or a recheck: either way look again.
            let _ = tokio::time::timeout(wait, changes.changed()).await;
        }
    }

    /// Sets `spec.replicas` to `max(1, minReplicas)` if it is 0 now, with an Event. Failures
    /// are logged: the wait that follows reports what the client needs to know.
    async fn scale_from_zero(&self, key: &ModelKey) {
        let api: Api<FusedModel> = Api::namespaced(self.client.clone(), &key.0);
        for _ in 0..3 {
            let model = match api.get_opt(&key.1).await {
                Ok(Some(model)) => model,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(namespace = %key.0, model = %key.1, %error, "reading the model to wake");
                    return;
                }
            };
            if model.spec.replicas != 0 {
                return;
            }
            let replicas = model
                .spec
                .autoscaling
                .as_ref()
                .map_or(1, |a| a.min_replicas.max(1));
            // The resourceVersion makes it conditional: if the model changed since it was read
            // at zero (another request or activator woke it), the server answers 409.
            let patch = json!({
                "metadata": {"resourceVersion": model.resource_version()},
                "spec": {"replicas": replicas},
            });
            match api
                .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %key.0, model = %key.1, replicas, "woke the model");
                    self.publish_wake(&model, replicas).await;
                    return;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => {
                    tracing::warn!(namespace = %key.0, model = %key.1, %error, "waking the model");
                    return;
                }
            }
        }
    }

    async fn publish_wake(&self, model: &FusedModel, replicas: i32) {
        let event = Event {
            type_: EventType::Normal,
            reason: ACTIVATED.into(),
            note: Some(format!(
                "a request arrived at zero replicas: 0 → {replicas}; the activator holds requests \
                 until a replica serves"
            )),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &model.object_ref(&())).await {
            tracing::warn!(%error, "publishing the wake-up event");
        }
    }
}
