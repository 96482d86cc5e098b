//! The HorizontalPodAutoscaler of a FusedModel with `spec.autoscaling`: it scales the
//! FusedModel's scale subresource (not the Deployment) on the daemon's per-Pod metrics
//! `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` (served to the HPA by a metrics
//! adapter such as prometheus-adapter). Written as `autoscaling/v2`, or `autoscaling/v2beta2` on
//! servers without v2 (Kubernetes before 1.23); both have the same shape for these fields.

use fused_crds::FusedModel;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, Resource};

use crate::error::{Error, Result};
use crate::labels;
use crate::quantity;

/// Per-Pod metric of waiting requests (vLLM's name).
pub const WAITING_METRIC: &str = "vllm:num_requests_waiting";
/// Per-Pod metric of KV-cache utilisation in [0, 1] (vLLM's name).
pub const KV_UTILIZATION_METRIC: &str = "vllm:kv_cache_usage_perc";

/// Which HorizontalPodAutoscaler API the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpaVersion {
    /// `autoscaling/v2` (Kubernetes 1.23+).
    V2,
    /// `autoscaling/v2beta2` (Kubernetes 1.12 to 1.25).
    V2beta2,
}

impl HpaVersion {
    /// The API version string.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::V2 => "autoscaling/v2",
            Self::V2beta2 => "autoscaling/v2beta2",
        }
    }

    /// The API resource, for a dynamic `Api`.
    pub fn api_resource(self) -> ApiResource {
        let version = match self {
            Self::V2 => "v2",
            Self::V2beta2 => "v2beta2",
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("autoscaling", version, "HorizontalPodAutoscaler"),
            "horizontalpodautoscalers",
        )
    }

    /// The newest of v2 / v2beta2 the server serves, or `None` if neither.
    pub async fn discover(client: &Client) -> Result<Option<Self>> {
        let groups = client.list_api_groups().await?;
        let Some(autoscaling) = groups.groups.iter().find(|g| g.name == "autoscaling") else {
            return Ok(None);
        };
        let served = |version: &str| autoscaling.versions.iter().any(|v| v.version == version);
        Ok(if served("v2") {
            Some(Self::V2)
        } else if served("v2beta2") {
            Some(Self::V2beta2)
        } else {
            None
        })
    }
}

/// The autoscaler of `model` in API `version`, or `None` without `spec.autoscaling`.
///
/// `minReplicas` is at least 1: Kubernetes rejects 0 unless the `HPAScaleToZero` feature gate
/// is on. A FusedModel at 0 replicas stays there until something (a request activator, or
/// `kubectl scale fm`) sets replicas; the HPA takes over from 1.
pub fn autoscaler(model: &FusedModel, version: HpaVersion) -> Result<Option<DynamicObject>> {
    let Some(autoscaling) = &model.spec.autoscaling else {
        return Ok(None);
    };
    let (name, _) = labels::name_and_namespace(model)?;
    let pods_metric = |metric: &str, target: MetricTarget| MetricSpec {
        type_: "Pods".into(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: metric.into(),
                selector: None,
            },
            target,
        }),
        ..MetricSpec::default()
    };
    let average = |value: f64| MetricTarget {
        type_: "AverageValue".into(),
        average_value: Some(quantity::canonical_milli(value)),
        ..MetricTarget::default()
    };
    let mut metrics = Vec::new();
    if let Some(waiting) = autoscaling.target_waiting_requests {
        metrics.push(pods_metric(WAITING_METRIC, average(f64::from(waiting))));
    }
    if let Some(utilization) = autoscaling.target_kv_cache_utilization {
        metrics.push(pods_metric(KV_UTILIZATION_METRIC, average(utilization)));
    }
    let hpa = HorizontalPodAutoscaler {
        metadata: labels::child_metadata(model)?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(FusedModel::api_version(&()).into_owned()),
                kind: FusedModel::kind(&()).into_owned(),
                name,
            },
            min_replicas: Some(autoscaling.min_replicas.max(1)),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(metrics),
            behavior: None,
        }),
        status: None,
    };
    let mut json = serde_json::to_value(&hpa).map_err(Error::serialize("the autoscaler"))?;
    json["apiVersion"] = version.api_version().into();
    serde_json::from_value(json)
        .map(Some)
        .map_err(Error::serialize("the autoscaler"))
}
