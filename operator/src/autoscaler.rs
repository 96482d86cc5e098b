//! The HorizontalPodAutoscaler of a FusedModel with `spec.autoscaling.metricSource:
//! customMetrics`: it scales the FusedModel's scale subresource (not the Deployment) on the
//! daemon's per-Pod metrics `vllm:num_requests_waiting`, `vllm:num_requests_running`,
//! `vllm:kv_cache_usage_perc` and `vllm:generation_tokens_per_second` (served to the HPA by a
//! custom-metrics adapter such as prometheus-adapter; the last one is a rate rule), with the
//! spec's scale-down stabilisation window. Written as `autoscaling/v2`, or `autoscaling/v2beta2`
//! on servers without v2 (Kubernetes before 1.23); both have the same shape for these fields.
//! The default source (`operator`) needs no HPA: see [`crate::autoscale`].

use fused_crds::{FusedModel, MetricSource, duration};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use kube::Resource;
use kube::api::DynamicObject;

use crate::api_versions::VersionedKind;
use crate::error::{Error, Result};
use crate::labels;
use crate::quantity;

/// Per-Pod metric of waiting requests (vLLM's name).
pub const WAITING_METRIC: &str = "vllm:num_requests_waiting";
/// Per-Pod metric of KV-cache utilisation in [0, 1] (vLLM's name).
pub const KV_UTILIZATION_METRIC: &str = "vllm:kv_cache_usage_perc";
/// Per-Pod metric of running requests (vLLM's name).
pub const RUNNING_METRIC: &str = "vllm:num_requests_running";
/// Per-Pod rate of generated tokens: the adapter's rule over `vllm:generation_tokens_total`.
pub const TOKENS_PER_SECOND_METRIC: &str = "vllm:generation_tokens_per_second";

/// The HorizontalPodAutoscaler in `autoscaling/v2` (Kubernetes 1.23+).
pub const HPA_V2: VersionedKind = VersionedKind {
    group: "autoscaling",
    version: "v2",
    kind: "HorizontalPodAutoscaler",
    plural: "horizontalpodautoscalers",
};
/// The HorizontalPodAutoscaler in `autoscaling/v2beta2` (Kubernetes 1.12 to 1.25).
pub const HPA_V2BETA2: VersionedKind = VersionedKind {
    version: "v2beta2",
    ..HPA_V2
};
/// The versions the operator writes, newest first.
pub const HPA_VERSIONS: [VersionedKind; 2] = [HPA_V2, HPA_V2BETA2];

/// The autoscaler of `model` in API `version`, or `None` unless `spec.autoscaling` asks for an
/// HPA (`metricSource: customMetrics`).
///
/// `minReplicas` is at least 1: Kubernetes rejects 0 unless the `HPAScaleToZero` feature gate
/// is on. A FusedModel at 0 replicas stays there until something (a request activator, or
/// `kubectl scale fm`) sets replicas; the HPA takes over from 1.
pub fn autoscaler(model: &FusedModel, version: VersionedKind) -> Result<Option<DynamicObject>> {
    let Some(autoscaling) = model
        .spec
        .autoscaling
        .as_ref()
        .filter(|a| a.metric_source == MetricSource::CustomMetrics)
    else {
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
    if let Some(running) = autoscaling.target_running_requests {
        metrics.push(pods_metric(RUNNING_METRIC, average(f64::from(running))));
    }
    if let Some(utilization) = autoscaling.target_kv_cache_utilization {
        metrics.push(pods_metric(KV_UTILIZATION_METRIC, average(utilization)));
    }
    if let Some(tokens) = autoscaling.target_tokens_per_second {
        metrics.push(pods_metric(
            TOKENS_PER_SECOND_METRIC,
            average(f64::from(tokens)),
        ));
    }
    let window = duration::seconds(&autoscaling.scale_down_stabilization)
        .and_then(|s| i32::try_from(s).ok())
        .unwrap_or(300);
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
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(window),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    };
    let mut json = serde_json::to_value(&hpa).map_err(Error::serialize("the autoscaler"))?;
    json["apiVersion"] = version.api_version().into();
    serde_json::from_value(json)
        .map(Some)
        .map_err(Error::serialize("the autoscaler"))
}
