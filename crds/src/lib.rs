//! The FusedModel custom resource (`fused.dev/v1alpha1`, short name `fm`): its spec and status
//! types, the condition vocabulary, cross-field validation and the CRD YAML renderer.
//!
//! This crate only describes the API; it must not talk to a cluster.

pub mod crd_yaml;
pub mod duration;
pub mod spec;
pub mod status;
pub mod validate;

pub use crd_yaml::{CRD_CHART_PATH, render_crd_yaml};
pub use spec::{
    ArtifactsSpec, AutoscalingSpec, BaseModel, DisruptionBudgetSpec, FusedModel, FusedModelSpec,
    KV_PAGE_BYTES, KvCacheSpec, KvLayout, MetricSource, NetworkPolicySpec, PatchTokenizer,
    Quantization, ResourcesSpec, SchedulerSpec, SecretKeyRef, SecretRef, WeightsFormat,
};
pub use status::{
    AutoscalingStatus, FusedModelStatus, SignalStatus, condition, condition_reason, condition_type,
};
pub use validate::SpecError;
