//! What every reconcile shares: the API client, the operator's configuration, the autoscaling
//! API version the server serves, the metrics and the event recorder.

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::autoscaler::HpaVersion;
use crate::config::OperatorConfig;
use crate::error::{Error, Result};
use crate::labels::MANAGED_BY;
use crate::metrics::Metrics;

/// Shared state of the reconciler.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's configuration.
    pub config: OperatorConfig,
    /// `autoscaling/v2` or `v2beta2`, or `None` when the server serves neither.
    pub hpa_version: Option<HpaVersion>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events on FusedModels.
    pub recorder: Recorder,
}

impl Context {
    /// A context for `client`, discovering the autoscaling API version.
    pub async fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let hpa_version = HpaVersion::discover(&client).await?;
        match hpa_version {
            Some(version) => tracing::info!(api = version.api_version(), "autoscaler API"),
            None => tracing::warn!(
                "the server serves no autoscaling/v2 or v2beta2: spec.autoscaling is ignored"
            ),
        }
        let reporter = Reporter {
            controller: MANAGED_BY.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Ok(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            hpa_version,
            metrics,
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("hpa_version", &self.hpa_version)
            .finish_non_exhaustive()
    }
}
