//! Putting manifests into a test cluster: parse multi-document YAML, server-side apply or create
//! each object through API discovery, and install a CRD and wait until it is Established.
//!
//! Errors from the API server are returned unchanged inside [`ClusterError::Api`] so tests can
//! assert on the server's own status code and message.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};

use super::error::{ClusterError, Result};

/// Field manager used for server-side apply by the harness.
pub const FIELD_MANAGER: &str = "fused-e2e";
/// How long a new CRD may take to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses every non-empty YAML document of `yaml` into a `DynamicObject`.
pub fn parse_manifests(yaml: &str) -> Result<Vec<DynamicObject>> {
    let documents: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ClusterError::Manifest(e.to_string()))?;
    documents
        .into_iter()
        .flatten()
        .filter(|doc| !doc.is_null())
        .map(|doc| {
            let object: DynamicObject =
                serde_json::from_value(doc).map_err(|e| ClusterError::Manifest(e.to_string()))?;
            if object.types.is_none() || object.metadata.name.is_none() {
                return Err(ClusterError::Manifest(
                    "each document needs apiVersion, kind and metadata.name".into(),
                ));
            }
            Ok(object)
        })
        .collect()
}

/// Server-side applies every object in `yaml` (namespaced ones into their own namespace or
/// `default_namespace`); returns the objects as stored by the server.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    default_namespace: &str,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for object in parse_manifests(yaml)? {
        let name = object.name_any();
        let api = dynamic_api(client, &object, default_namespace).await?;
        let stored = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map_err(ClusterError::api(format!("applying {}", describe(&object))))?;
        applied.push(stored);
    }
    Ok(applied)
}

/// Creates one object (POST), so the server validates it as new; the error keeps the server's
/// status (code, reason, message).
pub async fn create_object(
    client: &Client,
    object: &DynamicObject,
    default_namespace: &str,
) -> Result<DynamicObject> {
    let api = dynamic_api(client, object, default_namespace).await?;
    api.create(&PostParams::default(), object)
        .await
        .map_err(ClusterError::api(format!("creating {}", describe(object))))
}

/// Applies the CRD in `yaml` (one document) and waits until it is Established.
pub async fn install_crd_yaml(client: &Client, yaml: &str) -> Result<CustomResourceDefinition> {
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(yaml).map_err(|e| ClusterError::Manifest(format!("CRD: {e}")))?;
    let name = crd.name_any();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(ClusterError::api(format!("applying CRD {name}")))?;
    wait_crd_established(client, &name).await
}

/// Installs the committed FusedModel CRD from the CRD chart (`charts/fused-crds/templates/`).
pub async fn install_fused_crd(client: &Client) -> Result<CustomResourceDefinition> {
    let path = crate::workspace_root().join(fused_crds::CRD_CHART_PATH);
    let yaml = read(&path)?;
    install_crd_yaml(client, &yaml).await
}

/// Waits until the CRD `name` has the condition Established=True.
pub async fn wait_crd_established(client: &Client, name: &str) -> Result<CustomResourceDefinition> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let established = await_condition(api, name, conditions::is_crd_established());
    match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
        Ok(Ok(Some(crd))) => Ok(crd),
        Ok(Ok(None)) => Err(ClusterError::Manifest(format!(
            "CRD {name} was deleted while waiting"
        ))),
        Ok(Err(e)) => Err(ClusterError::Manifest(format!("watching CRD {name}: {e}"))),
        Err(_) => Err(ClusterError::Timeout {
            what: format!("CRD {name} to be Established"),
            seconds: ESTABLISH_TIMEOUT.as_secs(),
        }),
    }
}

/// An `Api<DynamicObject>` for the object's kind, found through discovery.
async fn dynamic_api(
    client: &Client,
    object: &DynamicObject,
    default_namespace: &str,
) -> Result<Api<DynamicObject>> {
    let types = object.types.as_ref().ok_or_else(|| {
        ClusterError::Manifest(format!("{} has no apiVersion/kind", object.name_any()))
    })?;
    let gvk = GroupVersionKind::try_from(types)
        .map_err(|e| ClusterError::Manifest(format!("{}: {e}", object.name_any())))?;
    let (resource, capabilities) =
        discovery::pinned_kind(client, &gvk)
            .await
            .map_err(ClusterError::api(format!(
                "discovering {}/{}",
                types.api_version, types.kind
            )))?;
    Ok(match capabilities.scope {
        Scope::Namespaced => {
            let namespace = object
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(default_namespace);
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    })
}

fn describe(object: &DynamicObject) -> String {
    let kind = object.types.as_ref().map_or("object", |t| t.kind.as_str());
    format!("{kind} {}", object.name_any())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(ClusterError::io(format!("reading {}", path.display())))
}
