//! Which versions of an API group the server serves, and a kind in one version
//! ([`VersionedKind`]): the operator writes HPAs and PodDisruptionBudgets in the newest version
//! the cluster has (Kubernetes 1.20 serves `autoscaling/v2beta2` and `policy/v1beta1`, 1.25+
//! only `v2` and `v1`).

use kube::Client;
use kube::api::{ApiResource, GroupVersionKind};

use crate::error::Result;

/// A kind in one version of its API group (`policy/v1` PodDisruptionBudget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource's plural name (`poddisruptionbudgets`).
    pub plural: &'static str,
}

impl VersionedKind {
    /// `group/version`.
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The API resource, for a dynamic `Api`.
    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// The first of `versions` (one kind, newest first) that the server serves, or `None`.
    pub async fn newest_served(client: &Client, versions: &[Self]) -> Result<Option<Self>> {
        let Some(first) = versions.first() else {
            return Ok(None);
        };
        let served = served(client, first.group).await?;
        Ok(versions
            .iter()
            .copied()
            .find(|v| served.iter().any(|s| s == v.version)))
    }
}

/// The versions of API group `group` the server serves (empty when it serves none).
pub async fn served(client: &Client, group: &str) -> Result<Vec<String>> {
    let groups = client.list_api_groups().await?;
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.versions.into_iter().map(|v| v.version).collect())
        .unwrap_or_default())
}
