//! The NetworkPolicy of a FusedModel with `spec.networkPolicy`: only the listed clients may
//! reach the replicas' HTTP port; every other ingress to them is refused (where the cluster's
//! network plugin enforces NetworkPolicies). Pure; it must not call the API server.

use fused_crds::FusedModel;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::Result;
use crate::labels;
use crate::workload::HTTP_PORT;

/// The NetworkPolicy of `model`, or `None` without `spec.networkPolicy`.
pub fn network_policy(model: &FusedModel) -> Result<Option<NetworkPolicy>> {
    let Some(policy) = &model.spec.network_policy else {
        return Ok(None);
    };
    let (name, _) = labels::name_and_namespace(model)?;
    Ok(Some(NetworkPolicy {
        metadata: labels::child_metadata(model)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(policy.allowed_clients.clone()),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(HTTP_PORT)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;

    #[test]
    fn only_labelled_clients_reach_the_http_port() {
        let spec: FusedModelSpec = serde_json::from_value(serde_json::json!({
            "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
            "networkPolicy": {"allowedClients": [
                {"podSelector": {"matchLabels": {"fused.dev/client": "true"}}}]}
        }))
        .expect("spec");
        let mut model = FusedModel::new("m", spec.clone());
        model.metadata.namespace = Some("ns".into());
        model.metadata.uid = Some("u".into());
        let policy = network_policy(&model).expect("builds").expect("asked for");
        let json = serde_json::to_value(&policy).expect("json");
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "podSelector": {"matchLabels": {"fused.dev/model": "m"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"fused.dev/client": "true"}}}],
                             "ports": [{"port": 8000, "protocol": "TCP"}]}]
            })
        );
        let mut without = model;
        without.spec.network_policy = None;
        assert!(network_policy(&without).expect("builds").is_none());
    }
}
