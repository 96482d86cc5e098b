//! Spec problems the CRD schema cannot catch on Kubernetes 1.20 (no CEL): the cross-field rules
//! of `FusedModelSpec::validate`, plus those that need the operator's configuration or
//! Kubernetes naming rules: a KV budget too small for one page per sequence, a name that cannot
//! name a Service, a `pvc://` URI without a path, a `spec.image` the image policy does not
//! allow, an artifact size limit above the operator's. Each problem is a sentence naming the fields;
//! the operator reports them as `Degraded` / `InvalidSpec` and writes no workload.

use fused_crds::FusedModel;
use kube::ResourceExt;

use crate::config::OperatorConfig;
use crate::fetch_step::fetch_source;
use crate::quantity;

const MIB: f64 = 1024.0 * 1024.0;

/// Every problem of `model`'s spec, in a stable order; empty when it can be served.
pub fn problems(model: &FusedModel, config: &OperatorConfig) -> Vec<String> {
    let spec = &model.spec;
    let mut problems: Vec<String> = match spec.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    let name = model.name_any();
    if !is_dns1035_label(&name) {
        problems.push(format!(
            "metadata.name {name:?} must be a DNS-1035 label (at most 63 lowercase letters, digits \
             and '-', starting with a letter): it names the model's Service"
        ));
    }
    let mut uris = vec![("spec.baseModel.uri", &spec.base_model.uri)];
    if let Some(patch) = &spec.patch_tokenizer {
        uris.push(("spec.patchTokenizer.uri", &patch.uri));
    }
    for (field, uri) in uris {
        if let Err(message) = fetch_source(uri) {
            problems.push(format!("{field}: {message}"));
        }
    }
    if let Some(problem) = kv_budget_problem(model, config) {
        problems.push(problem);
    }
    if let Some(image) = &spec.image
        && !config.image_allowed(image)
    {
        problems.push(format!(
            "spec.image {image:?} is not allowed by the operator's image policy (allowed: the \
             daemon image {:?}{}); remove spec.image, or ask the platform team to allow it \
             (--allowed-image)",
            config.daemon_image,
            if config.allowed_images.is_empty() {
                String::new()
            } else {
                format!(" and {}", config.allowed_images.join(", "))
            }
        ));
    }
    if let Some(max_bytes) = spec.artifacts.as_ref().and_then(|a| a.max_bytes)
        && u64::try_from(max_bytes).is_ok_and(|bytes| bytes > config.max_artifact_bytes)
    {
        problems.push(format!(
            "spec.artifacts.maxBytes ({max_bytes}) exceeds the operator's limit of {} bytes",
            config.max_artifact_bytes
        ));
    }
    problems
}

/// Each running sequence holds at least one KV page, so `blockSize × maxNumSeqs` must fit in a
/// replica's memory budget: GPUs × GPU memory × gpuMemoryUtilization, or (CPU replicas) the
/// memory limit × gpuMemoryUtilization when one is set.
fn kv_budget_problem(model: &FusedModel, config: &OperatorConfig) -> Option<String> {
    let spec = &model.spec;
    let utilization = spec.kv_cache.gpu_memory_utilization;
    let (budget_bytes, budget_text) = if spec.resources.gpus > 0 {
        let bytes =
            f64::from(spec.resources.gpus) * config.gpu_memory_mib as f64 * MIB * utilization;
        let text = format!(
            "{} GPU(s) × {} MiB × gpuMemoryUtilization {utilization}",
            spec.resources.gpus, config.gpu_memory_mib
        );
        (bytes, text)
    } else {
        let memory = spec.resources.memory.as_ref()?;
        let bytes = quantity::parse(&memory.0)? * utilization;
        let text = format!(
            "resources.memory {} × gpuMemoryUtilization {utilization}",
            memory.0
        );
        (bytes, text)
    };
    let sequences = spec.scheduler.max_num_seqs;
    let needed = spec.kv_cache.block_size as f64 * f64::from(sequences);
    (needed > budget_bytes).then(|| {
        format!(
            "spec.kvCache.blockSize ({} MiB) × spec.scheduler.maxNumSeqs ({sequences}) = {:.0} MiB \
             exceeds the KV budget of a replica ({budget_text} = {:.0} MiB): every running \
             sequence holds at least one page; lower blockSize or maxNumSeqs",
            spec.kv_cache.block_size / (1 << 20),
            needed / MIB,
            budget_bytes / MIB
        )
    })
}

fn is_dns1035_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;

    fn model(name: &str, spec: serde_json::Value) -> FusedModel {
        let spec: FusedModelSpec = serde_json::from_value(spec).expect("test spec parses");
        FusedModel::new(name, spec)
    }

    fn config() -> OperatorConfig {
        OperatorConfig::with_daemon_image("daemon:test")
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        let m = model(
            "smollm2",
            serde_json::json!({"baseModel": {"uri": "pvc://weights/m.gguf", "format": "gguf"}}),
        );
        assert_eq!(problems(&m, &config()), Vec::<String>::new());
    }

    #[test]
    fn block_size_beyond_the_gpu_budget_is_reported_with_the_numbers() {
        let m = model(
            "big-pages",
            serde_json::json!({
                "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
                "kvCache": {"blockSize": 1073741824, "gpuMemoryUtilization": 0.5},
                "scheduler": {"maxNumSeqs": 128, "tokenBudget": 512},
                "resources": {"gpus": 1}
            }),
        );
        let found = problems(&m, &config());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("spec.kvCache.blockSize (1024 MiB)")
                && found[0].contains("131072 MiB")
                && found[0].contains("40960 MiB"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn cpu_replicas_are_checked_against_their_memory() {
        let m = model(
            "cpu",
            serde_json::json!({
                "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
                "kvCache": {"blockSize": 67108864},
                "scheduler": {"maxNumSeqs": 16, "tokenBudget": 256},
                "resources": {"gpus": 0, "memory": "512Mi"}
            }),
        );
        let found = problems(&m, &config());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("resources.memory 512Mi"), "{}", found[0]);
    }

    #[test]
    fn images_outside_the_policy_are_invalid_specs() {
        let spec = |image: &str| {
            serde_json::json!({
                "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
                "image": image,
                "resources": {"gpus": 0}
            })
        };
        let found = problems(&model("m", spec("evil.example/rewrite-cache:1")), &config());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("spec.image \"evil.example/rewrite-cache:1\" is not allowed")
                && found[0].contains("daemon:test"),
            "{}",
            found[0]
        );
        assert!(problems(&model("m", spec("daemon:test")), &config()).is_empty());
        let mut open = config();
        open.allow_any_image = true;
        assert!(problems(&model("m", spec("evil.example/rewrite-cache:1")), &open).is_empty());
    }

    #[test]
    fn a_size_limit_above_the_operators_is_invalid() {
        let m = model(
            "m",
            serde_json::json!({
                "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
                "artifacts": {"maxBytes": 1_i64 << 50},
                "resources": {"gpus": 0}
            }),
        );
        let found = problems(&m, &config());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("spec.artifacts.maxBytes"), "{}", found[0]);
    }

    #[test]
    fn more_than_one_gpu_is_an_invalid_spec() {
        let m = model(
            "tp",
            serde_json::json!({
                "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
                "resources": {"gpus": 2}
            }),
        );
        let found = problems(&m, &config());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("spec.resources.gpus (2) must be 0 or 1"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn schema_gaps_are_all_reported() {
        let m = model(
            "9-starts-with-a-digit",
            serde_json::json!({
                "baseModel": {"uri": "pvc://claim-without-path", "format": "gguf"},
                "autoscaling": {"minReplicas": 3, "maxReplicas": 1, "targetWaitingRequests": 2},
                "resources": {"gpus": 0}
            }),
        );
        let found = problems(&m, &config());
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("minReplicas (3)"));
        assert!(found[1].contains("DNS-1035"));
        assert!(found[2].contains("spec.baseModel.uri"));
    }
}
