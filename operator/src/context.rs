//! What every reconcile shares: the API client, the operator's configuration, the autoscaling
//! and disruption-budget API versions the server serves, the metrics, the event recorder, and how Pods are reached.

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::api_versions::VersionedKind;
use crate::autoscaler::HPA_VERSIONS;
use crate::config::OperatorConfig;
use crate::disruption_budget::PDB_VERSIONS;
use crate::error::{Error, Result};
use crate::labels::MANAGED_BY;
use crate::metrics::Metrics;
use crate::pod_network::PodNetwork;

/// Shared state of the reconciler.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's configuration.
    pub config: OperatorConfig,
    /// `autoscaling/v2` or `v2beta2`, or `None` when the server serves neither.
    pub hpa_version: Option<VersionedKind>,
    /// `policy/v1` or `v1beta1`, or `None` when the server serves neither.
    pub pdb_version: Option<VersionedKind>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events on FusedModels.
    pub recorder: Recorder,
    /// How the autoscaler and the activator reach a daemon Pod's HTTP port.
    pub pod_network: PodNetwork,
}

impl Context {
    /// A context for `client`, discovering the autoscaling API version.
    pub async fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let hpa_version = VersionedKind::newest_served(&client, &HPA_VERSIONS).await?;
        match hpa_version {
            Some(version) => tracing::info!(api = %version.api_version(), "autoscaler API"),
            None => tracing::warn!(
                "the server serves no autoscaling/v2 or v2beta2: spec.autoscaling is ignored"
            ),
        }
        let pdb_version = VersionedKind::newest_served(&client, &PDB_VERSIONS).await?;
        match pdb_version {
            Some(version) => tracing::info!(api = %version.api_version(), "disruption budget API"),
            None => tracing::warn!(
                "the server serves no policy/v1 or v1beta1: no PodDisruptionBudgets are written"
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
            pdb_version,
            metrics,
            pod_network: PodNetwork::direct(),
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("hpa_version", &self.hpa_version)
            .field("pdb_version", &self.pdb_version)
            .finish_non_exhaustive()
    }
}
