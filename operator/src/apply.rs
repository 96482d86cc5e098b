//! Writing child objects only when they differ: the live object is read, and a server-side
//! apply (field manager `fused-operator`) is sent only if some field of the desired object is
//! missing from it or has another value. Fields the API server adds (defaults, status,
//! metadata) are ignored, quantities are compared by value, and empty lists and maps in the
//! desired object match absent ones (the server drops them).
//!
//! Must not: take over an object it does not own. A live object without the desired object's
//! controller owner reference is left untouched and reported ([`Applied::NotOurs`]); only our
//! own objects are applied with `force` (to win fields back from a `kubectl edit`), and a
//! missing object is created by an apply without `force`, so one created meanwhile by someone
//! else makes the apply fail instead of being adopted.

use std::fmt::Debug;

use fused_crds::FusedModel;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::quantity;

/// What [`apply_if_changed`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied<K> {
    /// The live object already matched; nothing was written.
    Unchanged(K),
    /// The desired object was applied; this is what the server returned.
    Written(K),
    /// An object of that name exists and is not ours: nothing was written. The message names
    /// it and says how to resolve the conflict.
    NotOurs(String),
}

impl<K> Applied<K> {
    /// The object as it now is on the server, when it is ours.
    pub fn into_object(self) -> Option<K> {
        match self {
            Self::Unchanged(object) | Self::Written(object) => Some(object),
            Self::NotOurs(_) => None,
        }
    }

    /// Whether a write was made.
    pub fn written(&self) -> bool {
        matches!(self, Self::Written(_))
    }
}

/// Server-side applies `desired` as `name` unless the live object already holds every field,
/// or is not ours (see the module's contract).
pub async fn apply_if_changed<K>(api: &Api<K>, name: &str, desired: &K) -> Result<Applied<K>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    apply_if_changed_with(api, name, desired, &()).await
}

/// [`apply_if_changed`] for resources whose type is known at run time (the autoscaler).
pub async fn apply_if_changed_with<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    dynamic: &K::DynamicType,
) -> Result<Applied<K>>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    apply_unless_same(api, name, desired, dynamic, &[]).await
}

/// [`apply_if_changed`] for an object that may leave out, on purpose, fields an earlier apply
/// set (JSON pointers in `dropped`, e.g. a Service's `/spec/selector`): when `desired` has none
/// there, a live value is a difference, and the apply removes it.
pub async fn apply_if_changed_dropping<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    dropped: &[&str],
) -> Result<Applied<K>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    apply_unless_same(api, name, desired, &(), dropped).await
}

async fn apply_unless_same<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    dynamic: &K::DynamicType,
    dropped: &[&str],
) -> Result<Applied<K>>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let wanted = serde_json::to_value(desired).map_err(Error::serialize("a desired object"))?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if let Some(live) = api.get_opt(name).await? {
        if !same_controller(&live, desired) {
            return Ok(Applied::NotOurs(not_ours(&live, dynamic)));
        }
        let have = serde_json::to_value(&live).map_err(Error::serialize("a live object"))?;
        let set = |object: &serde_json::Value, pointer: &str| {
            object.pointer(pointer).is_some_and(|v| !is_empty(v))
        };
        let stale = dropped
            .iter()
            .any(|pointer| set(&have, pointer) && !set(&wanted, pointer));
        if !stale && contains(&have, &wanted) {
            return Ok(Applied::Unchanged(live));
        }
        params = params.force();
    }
    let written = api.patch(name, &params, &Patch::Apply(&wanted)).await?;
    Ok(Applied::Written(written))
}

/// Applies `status` (the part of a FusedModel's status that `manager` owns) with server-side
/// apply on the status subresource, taking those fields over from any other manager.
pub async fn apply_status(
    api: &Api<FusedModel>,
    name: &str,
    manager: &str,
    status: Value,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": FusedModel::api_version(&()),
        "kind": FusedModel::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Whether `live` has the controller owner reference `desired` carries.
pub fn same_controller<K: Resource>(live: &K, desired: &K) -> bool {
    let controller = |object: &K| {
        object
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    };
    controller(desired).is_some_and(|uid| controller(live).as_ref() == Some(&uid))
}

/// Whether `object` is controlled by the object with `uid`.
pub fn controlled_by<K: Resource>(object: &K, uid: Option<&str>) -> bool {
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

fn not_ours<K: Resource>(live: &K, dynamic: &K::DynamicType) -> String {
    let owner = live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map_or_else(
            || "it has no controller".to_owned(),
            |o| format!("it is controlled by {} {}", o.kind, o.name),
        );
    format!(
        "{} {}/{} already exists and is not owned by this FusedModel ({owner}); the operator \
         leaves it alone: delete or rename it, or give the FusedModel another name",
        K::kind(dynamic),
        live.namespace().unwrap_or_default(),
        live.name_any()
    )
}

/// Whether `live` holds every field of `desired` with the same value.
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, Context::Plain)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Plain,
    /// Inside `resources.requests` / `resources.limits`, or an HPA target value.
    Quantity,
}

fn contains_at(live: &Value, desired: &Value, context: Context) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(key, want)| {
            let child = match key.as_str() {
                "requests" | "limits" | "averageValue" => Context::Quantity,
                _ if context == Context::Quantity => Context::Quantity,
                _ => Context::Plain,
            };
            match live.get(key) {
                Some(have) => contains_at(have, want, child),
                None => is_empty(want),
            }
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| contains_at(have, want, context))
        }
        (Value::String(have), Value::String(want)) if context == Context::Quantity => {
            have == want || quantity::same(have, want)
        }
        (have, want) => have == want,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{contains, same_controller};
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    #[test]
    fn only_the_same_controller_counts_as_ours() {
        let service = |owners: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "m", "ownerReferences": owners}}))
                .expect("a Service")
        };
        let owner = |uid: &str, controller: bool| {
            json!({"apiVersion": "fused.dev/v1alpha1", "kind": "FusedModel", "name": "m",
                   "uid": uid, "controller": controller})
        };
        let desired = service(json!([owner("u1", true)]));
        assert!(same_controller(
            &service(json!([owner("u1", true)])),
            &desired
        ));
        assert!(!same_controller(&service(json!([])), &desired));
        assert!(!same_controller(
            &service(json!([owner("u2", true)])),
            &desired
        ));
        assert!(!same_controller(
            &service(json!([owner("u1", false)])),
            &desired
        ));
    }

    #[test]
    fn server_added_fields_do_not_count_as_changes() {
        let desired = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "daemon", "ports": [{"containerPort": 8000, "name": "http"}]}]}}}});
        let live = json!({"metadata": {"resourceVersion": "7"}, "status": {"replicas": 1},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {
                "dnsPolicy": "ClusterFirst", "containers": [{"name": "daemon",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}]}]}}}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_value_or_element_is_a_change() {
        let live = json!({"spec": {"replicas": 1, "args": ["--port", "8000"]}});
        assert!(!contains(&live, &json!({"spec": {"replicas": 2}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"args": ["--port", "8001"]}})
        ));
        assert!(!contains(
            &live,
            &json!({"spec": {"args": ["--port", "8000", "--x"]}})
        ));
        assert!(!contains(&live, &json!({"spec": {"selector": {"a": "b"}}})));
    }

    #[test]
    fn quantities_compare_by_value_and_empty_matches_absent() {
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            "target": {"averageValue": "800m"}});
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}},
            "target": {"averageValue": "0.8"}, "tolerations": [], "nodeSelector": {}});
        assert!(contains(&live, &desired));
        // Outside quantities, strings compare exactly.
        assert!(!contains(&json!({"name": "500m"}), &json!({"name": "0.5"})));
    }
}
