//! The PodDisruptionBudget of a FusedModel's replicas: node drains and cluster upgrades evict
//! them only while `minAvailable` replicas stay up (`spec.disruptionBudget`, else the operator's
//! `--model-min-available`). Scale-downs by the operator or an HPA are not evictions: the budget
//! does not hold them. Written as `policy/v1`, or `policy/v1beta1` on servers before 1.21; both
//! have the same shape for these fields. Pure.

use fused_crds::FusedModel;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::api::DynamicObject;

use crate::api_versions::VersionedKind;
use crate::config::OperatorConfig;
use crate::error::{Error, Result};
use crate::labels;

/// The PodDisruptionBudget in `policy/v1` (Kubernetes 1.21+).
pub const PDB_V1: VersionedKind = VersionedKind {
    group: "policy",
    version: "v1",
    kind: "PodDisruptionBudget",
    plural: "poddisruptionbudgets",
};
/// The PodDisruptionBudget in `policy/v1beta1` (Kubernetes 1.5 to 1.24).
pub const PDB_V1BETA1: VersionedKind = VersionedKind {
    version: "v1beta1",
    ..PDB_V1
};
/// The versions the operator writes, newest first.
pub const PDB_VERSIONS: [VersionedKind; 2] = [PDB_V1, PDB_V1BETA1];

/// The replicas of `model` that must stay available: its `spec.disruptionBudget`, else the
/// operator's default; `None` when that is zero (no budget) or invalid (the spec check reports
/// an invalid spec; the config check refuses an invalid default).
pub fn min_available(model: &FusedModel, config: &OperatorConfig) -> Option<IntOrString> {
    let value = match &model.spec.disruption_budget {
        Some(budget) => budget.min_available.clone(),
        None => config.model_min_available()?,
    };
    let zero = match &value {
        IntOrString::Int(count) => *count == 0,
        IntOrString::String(percent) => percent == "0%",
    };
    (!zero && fused_crds::validate::min_available_is_valid(&value)).then_some(value)
}

/// The PodDisruptionBudget of `model` in API `version`, or `None` when it has no budget.
pub fn disruption_budget(
    model: &FusedModel,
    config: &OperatorConfig,
    version: VersionedKind,
) -> Result<Option<DynamicObject>> {
    let Some(min_available) = min_available(model, config) else {
        return Ok(None);
    };
    let (name, _) = labels::name_and_namespace(model)?;
    let budget = PodDisruptionBudget {
        metadata: labels::child_metadata(model)?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(min_available),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    };
    let mut json =
        serde_json::to_value(&budget).map_err(Error::serialize("the disruption budget"))?;
    json["apiVersion"] = version.api_version().into();
    serde_json::from_value(json)
        .map(Some)
        .map_err(Error::serialize("the disruption budget"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;
    use serde_json::json;

    fn model(budget: Option<serde_json::Value>) -> FusedModel {
        let mut spec = json!({"baseModel": {"uri": "file:///m.gguf", "format": "gguf"}});
        if let Some(budget) = budget {
            spec["disruptionBudget"] = budget;
        }
        let spec: FusedModelSpec = serde_json::from_value(spec).expect("spec");
        let mut model = FusedModel::new("m", spec);
        model.metadata.namespace = Some("ns".into());
        model.metadata.uid = Some("u".into());
        model
    }

    #[test]
    fn the_budget_selects_the_replicas_with_the_operator_default() {
        let config = OperatorConfig::with_daemon_image("d:1");
        let budget = disruption_budget(&model(None), &config, PDB_V1BETA1)
            .expect("builds")
            .expect("the default is one replica");
        let json = serde_json::to_value(&budget).expect("json");
        assert_eq!(json["apiVersion"], "policy/v1beta1");
        assert_eq!(json["kind"], "PodDisruptionBudget");
        assert_eq!(json["metadata"]["name"], "m");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(json["spec"]["minAvailable"], 1);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            serde_json::to_value(labels::selector("m")).expect("labels")
        );
    }

    #[test]
    fn the_spec_overrides_the_default_and_zero_writes_none() {
        let mut config = OperatorConfig::with_daemon_image("d:1");
        let budget = disruption_budget(
            &model(Some(json!({"minAvailable": "50%"}))),
            &config,
            PDB_V1,
        )
        .expect("builds")
        .expect("asked for");
        let json = serde_json::to_value(&budget).expect("json");
        assert_eq!(json["apiVersion"], "policy/v1");
        assert_eq!(json["spec"]["minAvailable"], "50%");
        for zero in [json!(0), json!("0%")] {
            let none = disruption_budget(
                &model(Some(json!({ "minAvailable": zero }))),
                &config,
                PDB_V1,
            );
            assert!(none.expect("builds").is_none(), "{zero}");
        }
        config.model_min_available = "0".into();
        assert!(
            disruption_budget(&model(None), &config, PDB_V1)
                .expect("builds")
                .is_none()
        );
    }
}
