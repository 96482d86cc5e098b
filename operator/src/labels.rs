//! Names, labels and owner references shared by every object the operator writes, so that the
//! Deployment, its Pods, the Service and the autoscaler agree on how they find each other.

use std::collections::BTreeMap;

use fused_crds::FusedModel;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::error::{Error, Result};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "fused-operator";
/// Finalizer earlier versions put on each FusedModel; the operator now removes it (owner
/// references and garbage collection remove the children, and a finalizer would block the
/// namespace's deletion whenever the operator is not running).
pub const LEGACY_FINALIZER: &str = "fused.dev/cleanup";
/// Label carrying the owning FusedModel's name, on the workload, its Pods and the Service.
pub const MODEL_LABEL: &str = "fused.dev/model";
/// Label marking objects this operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "fused-operator";
/// Pod template annotation: a digest of the rest of the template, so the operator can tell the
/// Pods of the current spec from those of an older one.
pub const TEMPLATE_HASH_ANNOTATION: &str = "fused.dev/template-hash";

/// Labels of every object made for the FusedModel `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "fused-daemon".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "model-server".to_owned(),
        ),
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (MODEL_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The label selector of the FusedModel `name`'s Pods.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(MODEL_LABEL.to_owned(), name.to_owned())])
}

/// [`selector`] in string form (`status.selector`, list calls).
pub fn selector_string(name: &str) -> String {
    format!("{MODEL_LABEL}={name}")
}

/// Name and namespace of a FusedModel, which every API call about it needs.
pub fn name_and_namespace(model: &FusedModel) -> Result<(String, String)> {
    let name = model
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let namespace = model
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    Ok((name, namespace))
}

/// Metadata of a child object: same name and namespace as the FusedModel, its labels, and a
/// controller owner reference so garbage collection removes the child with its owner.
pub fn child_metadata(model: &FusedModel) -> Result<ObjectMeta> {
    let (name, namespace) = name_and_namespace(model)?;
    let mut owner = model
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    // Foreground deletion of the FusedModel waits for its children (needs the RBAC verb
    // `update` on fusedmodels/finalizers).
    owner.block_owner_deletion = Some(true);
    Ok(ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace),
        labels: Some(labels(&name)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}
