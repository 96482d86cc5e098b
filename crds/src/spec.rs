//! The `FusedModel` desired state (`spec`): what a platform team writes in YAML.
//!
//! Every constraint a structural OpenAPI schema can express (required fields, enums, ranges,
//! `multipleOf`, patterns, defaults) is declared here with schemars attributes, so the API server
//! rejects bad objects itself. Cross-field rules live in [`crate::validate`]; this module must
//! not hold behaviour beyond defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;
use crate::status::FusedModelStatus;

/// Size of one physical KV page: the CUDA VMM granularity on stock drivers (2 MiB).
pub const KV_PAGE_BYTES: i64 = 2 * 1024 * 1024;
/// Largest accepted `kvCache.blockSize` (512 pages, 1 GiB).
pub const MAX_BLOCK_BYTES: i64 = 512 * KV_PAGE_BYTES;
/// Schema pattern for artifact URIs (`baseModel.uri`, `patchTokenizer.uri`): `hf`, `s3`, `gs`,
/// `http`, `https`, `pvc`, `file` or `oci`, then `://` and a location without whitespace.
pub const ARTIFACT_URI_PATTERN: &str = r"^(hf|s3|gs|https?|pvc|file|oci)://[^\s]+$";
/// Schema pattern for a non-negative resource quantity (`resources.cpu`, `resources.memory`)
/// as Kubernetes parses it: a decimal number with an optional binary (`Ki`..`Ei`), decimal or
/// exponent suffix.
pub const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
/// Schema pattern for a SHA-256 digest: 64 lowercase hex digits.
pub const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

/// Desired state of a `FusedModel`: the model to serve (base weights, optional AdaptiVocab patch
/// tokenizer), its vAttention KV cache and Sarathi-Serve scheduler, and how many replicas run where.
#[allow(
    clippy::duplicated_attributes,
    reason = "printer columns legitimately share `type_` values inside #[kube(...)]"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fused.dev",
    version = "v1alpha1",
    kind = "FusedModel",
    plural = "fusedmodels",
    singular = "fusedmodel",
    shortname = "fm",
    namespaced,
    status = "FusedModelStatus",
    derive = "PartialEq",
    doc = "A domain-tuned LLM served by FusedModel daemons behind one OpenAI-compatible endpoint.",
    annotation("helm.sh/resource-policy", "keep"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas / desired replicas"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        description = "Reason of the Ready condition (Available, RollingOut, ScaledToZero, ...)"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Base URL of the OpenAI-compatible endpoint"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "BlockSize",
        type_ = "integer",
        json_path = ".spec.kvCache.blockSize",
        description = "KV cache page size in bytes",
        priority = 1
    ),
    printcolumn(
        name = "Autoscaling",
        type_ = "string",
        json_path = ".status.autoscaling.summary",
        description = "Each autoscaling signal, current/target per replica",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FusedModelSpec {
    /// The base model weights.
    pub base_model: BaseModel,
    /// How the daemon keeps the weights (vLLM's `--quantization`): `none` (bf16 on the GPU; a
    /// GGUF's own blocks on the CPU), `fp8` (E4M3 with a scale per output channel, quantized at
    /// load; needs `resources.gpus`) or `gguf` (a GGUF's Q8_0 / Q4_K matrices stay in their
    /// blocks on the GPU too; needs `baseModel.format: gguf`).
    #[serde(default)]
    pub quantization: Quantization,
    /// The AdaptiVocab patch tokenizer; absent means the plain base tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_tokenizer: Option<PatchTokenizer>,
    /// The vAttention KV cache of each replica.
    #[serde(default)]
    pub kv_cache: KvCacheSpec,
    /// The Sarathi-Serve scheduler of each replica.
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    /// Desired daemon replicas (managed by the autoscaler when `autoscaling` is set).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Autoscaling on KV-cache utilisation and waiting requests; absent means fixed `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Compute resources and placement of each replica.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Model name served on the OpenAI API; defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub served_model_name: Option<String>,
    /// Daemon container image override; defaults to the operator's daemon image. Only images
    /// the operator's image policy allows are served (`--allowed-image`); any other is reported
    /// as `InvalidSpec`. The artifact fetch step always runs the operator's own fetch image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// The Secret key holding the API key clients must send (`Authorization: Bearer …`); given
    /// to the daemon as an environment variable from the Secret, never as an argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// How artifacts are fetched: credentials and a size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsSpec>,
    /// A NetworkPolicy admitting only the listed clients to the endpoint; absent means no policy
    /// is written (the namespace's own policies apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// The PodDisruptionBudget of the replicas: how many must stay up through voluntary
    /// disruptions (node drains, cluster upgrades). Absent means the operator's default
    /// (`--model-min-available`, the chart's `models.podDisruptionBudget.minAvailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetSpec>,
}

/// How many replicas a voluntary disruption must leave running.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudgetSpec {
    /// Replicas that must stay available: a count (`1`) or a percentage of the replicas
    /// (`"50%"`). `0` writes no PodDisruptionBudget. With one replica, `1` blocks a node drain
    /// until the model scales out or the budget is lowered: the drain waits rather than
    /// take the model down.
    pub min_available: IntOrString,
}

/// Weight quantization of the served model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Quantization {
    /// The checkpoint's weights as bf16.
    #[default]
    None,
    /// FP8 E4M3 weights, quantized at load (GPU only).
    Fp8,
    /// A GGUF checkpoint's blocks, kept as stored (on the CPU a GGUF is always served so).
    Gguf,
}

/// A key of a Secret in the FusedModel's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the FusedModel's namespace, as a whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How the artifacts (`baseModel`, `patchTokenizer`) are fetched.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactsSpec {
    /// A Secret whose keys become environment variables of the fetch step only (`HF_TOKEN`,
    /// `GOOGLE_OAUTH_ACCESS_TOKEN`, …); the serving container never sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Largest artifact accepted, in bytes (default and ceiling: the operator's
    /// `--max-artifact-bytes`); a bigger download is aborted as `ArtifactTooLarge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
}

/// The NetworkPolicy in front of the model's replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Clients allowed to reach the HTTP port (NetworkPolicy peers: pod and namespace
    /// selectors, IP blocks); everything else is refused. Include your metrics scraper.
    #[schemars(length(min = 1))]
    pub allowed_clients: Vec<NetworkPolicyPeer>,
}

/// Where the base weights come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseModel {
    /// Weights location: `hf://`, `s3://`, `gs://`, `http(s)://`, `pvc://`, `file://` or `oci://`.
    #[schemars(pattern(ARTIFACT_URI_PATTERN))]
    pub uri: String,
    /// Weights file format.
    pub format: WeightsFormat,
    /// Expected SHA-256 of the weights (64 lowercase hex digits); checked after download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: Option<String>,
}

/// Weights file formats the daemon loads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WeightsFormat {
    /// GGUF (llama.cpp), possibly quantised.
    Gguf,
    /// Hugging Face safetensors.
    Safetensors,
}

/// An AdaptiVocab patch tokenizer artifact (JSON + embedding rows), pinned by digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchTokenizer {
    /// Patch location, same schemes as `baseModel.uri`.
    #[schemars(pattern(ARTIFACT_URI_PATTERN))]
    pub uri: String,
    /// SHA-256 of the patch artifact (64 lowercase hex digits).
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: String,
}

/// The vAttention KV cache: virtually contiguous per request, 2 MiB pages mapped on demand.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvCacheSpec {
    /// Physical page size in bytes: a multiple of 2097152 (2 MiB), at most 1 GiB.
    #[serde(default = "default_block_size")]
    #[schemars(range(min = KV_PAGE_BYTES, max = MAX_BLOCK_BYTES), extend("multipleOf" = KV_PAGE_BYTES))]
    pub block_size: i64,
    /// Tensor layout: all layers of a token interleaved on one page (default, as the daemon's),
    /// or one region per layer.
    #[serde(default)]
    pub layout: KvLayout,
    /// Longest context (prompt + output tokens) per request; defaults to the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_context_len: Option<i32>,
    /// Request slots reserved in the KV region; defaults to `scheduler.maxNumSeqs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_seqs: Option<i32>,
    /// Fraction of accelerator memory the daemon may use for weights and KV, in (0, 1].
    #[serde(default = "default_gpu_memory_utilization")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true))]
    pub gpu_memory_utilization: f64,
}

impl Default for KvCacheSpec {
    fn default() -> Self {
        Self {
            block_size: default_block_size(),
            layout: KvLayout::default(),
            max_context_len: None,
            max_seqs: None,
            gpu_memory_utilization: default_gpu_memory_utilization(),
        }
    }
}

/// KV tensor layout inside the virtual region.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KvLayout {
    /// `[slot, ctx, kv_heads, head_dim]` per layer (vAttention's layout).
    PerLayer,
    /// `[slot, ctx, layer, kv_heads, head_dim]`: every layer of a token on one page (the
    /// daemon's default, `--kv-layout interleaved`).
    #[default]
    Interleaved,
}

/// Sarathi-Serve stall-free batching limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerSpec {
    /// Tokens per iteration: running decodes first, then prefill chunks fill the rest.
    #[serde(default = "default_token_budget")]
    #[schemars(range(min = 1, max = 1048576))]
    pub token_budget: i32,
    /// Most sequences running in one iteration.
    #[serde(default = "default_max_num_seqs")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_num_seqs: i32,
    /// Most requests waiting for admission; more are refused with 503.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_queue: i32,
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        Self {
            token_budget: default_token_budget(),
            max_num_seqs: default_max_num_seqs(),
            max_queue: default_max_queue(),
        }
    }
}

/// Horizontal autoscaling on the daemons' serving signals. `minReplicas: 0` scales to zero after
/// `scaleToZeroAfter` without traffic; a request that arrives at zero replicas is held by the
/// operator's activator until a replica is ready (at most `activationTimeout`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest replicas; 0 allows scale to zero.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas; at least `minReplicas` (checked by the operator).
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Who reads the signals and sets the replicas: `operator` (default: the operator scrapes
    /// each replica's `/metrics` and scales, nothing else to install), `customMetrics` (an HPA on
    /// the per-Pod `vllm:*` series a custom-metrics adapter such as prometheus-adapter serves), or
    /// `external` (the operator writes no autoscaler; a KEDA ScaledObject or your own HPA scales
    /// the FusedModel's scale subresource).
    #[serde(default)]
    pub metric_source: MetricSource,
    /// Target mean waiting requests per replica (`vllm:num_requests_waiting`): the signal for
    /// latency objectives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_waiting_requests: Option<i32>,
    /// Target mean running requests per replica (`vllm:num_requests_running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_running_requests: Option<i32>,
    /// Target mean KV-cache utilisation per replica (`vllm:kv_cache_usage_perc`), in (0, 1]:
    /// the signal for long contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true))]
    pub target_kv_cache_utilization: Option<f64>,
    /// Target generated tokens per second per replica (the rate of
    /// `vllm:generation_tokens_total`): the signal for throughput-bound batch work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_tokens_per_second: Option<i32>,
    /// Scale down only to the highest replica count recommended over this window (the HPA's
    /// scale-down stabilisation window), e.g. `300s`.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub scale_down_stabilization: String,
    /// With `minReplicas: 0`: go to zero replicas after this long without a request, e.g. `5m`.
    #[serde(default = "default_scale_to_zero_after")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub scale_to_zero_after: String,
    /// How long the activator holds a request that arrived at zero replicas while one starts;
    /// then it answers 503 with `Retry-After`.
    #[serde(default = "default_activation_timeout")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub activation_timeout: String,
}

impl AutoscalingSpec {
    /// An autoscaler between `min_replicas` and `max_replicas` with the default source,
    /// windows and timeouts, and no target yet.
    pub fn new(min_replicas: i32, max_replicas: i32) -> Self {
        Self {
            min_replicas,
            max_replicas,
            metric_source: MetricSource::default(),
            target_waiting_requests: None,
            target_running_requests: None,
            target_kv_cache_utilization: None,
            target_tokens_per_second: None,
            scale_down_stabilization: default_scale_down_stabilization(),
            scale_to_zero_after: default_scale_to_zero_after(),
            activation_timeout: default_activation_timeout(),
        }
    }

    /// Whether any target is set.
    pub fn has_target(&self) -> bool {
        self.target_waiting_requests.is_some()
            || self.target_running_requests.is_some()
            || self.target_kv_cache_utilization.is_some()
            || self.target_tokens_per_second.is_some()
    }
}

/// Who reads the serving signals and sets the FusedModel's replicas.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricSource {
    /// The operator scrapes each replica's `/metrics` and writes the scale subresource.
    #[default]
    Operator,
    /// A HorizontalPodAutoscaler on the per-Pod series of the custom metrics API.
    CustomMetrics,
    /// Nothing from the operator: KEDA or your own HPA scales the FusedModel.
    External,
}

/// Compute resources and placement of one replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs per replica: 0 runs the CPU backend, 1 the CUDA backend. More than one is refused
    /// (`InvalidSpec`) until the daemon has tensor parallelism: run more replicas instead.
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 8))]
    pub gpus: i32,
    /// CPU request and limit per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = QUANTITY_PATTERN, "minimum" = 0))]
    pub cpu: Option<Quantity>,
    /// Memory request and limit per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = QUANTITY_PATTERN, "minimum" = 0))]
    pub memory: Option<Quantity>,
    /// Node labels a replica's node must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints a replica tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            cpu: None,
            memory: None,
            node_selector: None,
            tolerations: None,
        }
    }
}

fn default_block_size() -> i64 {
    KV_PAGE_BYTES
}
fn default_gpu_memory_utilization() -> f64 {
    0.9
}
fn default_token_budget() -> i32 {
    512
}
fn default_max_num_seqs() -> i32 {
    128
}
fn default_max_queue() -> i32 {
    1024
}
fn default_replicas() -> i32 {
    1
}
fn default_min_replicas() -> i32 {
    1
}
fn default_gpus() -> i32 {
    1
}
fn default_scale_down_stabilization() -> String {
    "300s".into()
}
fn default_scale_to_zero_after() -> String {
    "5m".into()
}
fn default_activation_timeout() -> String {
    "5m".into()
}
