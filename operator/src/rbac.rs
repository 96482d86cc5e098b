//! The permissions the operator needs, and no more, as one ClusterRole: the single list the Helm
//! chart's ClusterRole and the least-privilege test are checked against.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// `(API group, resources, verbs)` of every rule.
pub const RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "fused.dev",
        &["fusedmodels"],
        &["get", "list", "watch", "patch", "update"],
    ),
    (
        "fused.dev",
        &["fusedmodels/status"],
        &["get", "patch", "update"],
    ),
    ("fused.dev", &["fusedmodels/finalizers"], &["update"]),
    (
        "fused.dev",
        &["fusedmodels/scale"],
        &["get", "patch", "update"],
    ),
    (
        "apps",
        &["deployments"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    (
        "",
        &["services"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    (
        "",
        &["endpoints"],
        &["get", "list", "watch", "create", "patch", "update"],
    ),
    ("", &["pods"], &["get", "list", "watch"]),
    (
        "autoscaling",
        &["horizontalpodautoscalers"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    (
        "networking.k8s.io",
        &["networkpolicies"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    (
        "policy",
        &["poddisruptionbudgets"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("", &["events"], &["create", "patch"]),
    (
        "coordination.k8s.io",
        &["leases"],
        &["get", "list", "watch", "create", "update", "patch"],
    ),
];

/// The operator's ClusterRole named `name`.
pub fn cluster_role(name: &str) -> ClusterRole {
    let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(
            RULES
                .iter()
                .map(|(group, resources, verbs)| PolicyRule {
                    api_groups: Some(vec![(*group).to_owned()]),
                    resources: Some(owned(resources)),
                    verbs: owned(verbs),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
        aggregation_rule: None,
    }
}
