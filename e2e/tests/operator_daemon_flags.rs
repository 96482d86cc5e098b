//! The FusedModel and the daemon speak the same language: the command lines the operator writes
//! into a Pod (`fused-daemon serve …` for the daemon container, `fused-daemon fetch …` for the
//! init containers) are parsed by the daemon's own clap definitions (`fused_daemon::serve::ServeArgs`,
//! `fused_daemon::fetch::FetchArgs`), and every spec field lands in the daemon setting of the same
//! meaning. A renamed or removed daemon flag, or a spec field wired to the wrong flag, fails here
//! rather than as a crash-looping Pod. No cluster needed: the Deployment is built by the same
//! function the reconciler applies.

use clap::Parser;
use fused_crds::{FusedModel, FusedModelSpec};
use fused_daemon::fetch::FetchArgs;
use fused_daemon::serve::{Device, KvLayoutArg, Quantization, ServeArgs};
use fused_operator::OperatorConfig;
use fused_operator::workload::{DAEMON_CONTAINER, DRAIN_TIMEOUT_S, HTTP_PORT, deployment};
use k8s_openapi::api::core::v1::Container;

/// `fused-daemon serve`'s arguments, as the daemon's `serve` subcommand parses them.
#[derive(Debug, Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

/// `fused-daemon fetch`'s arguments.
#[derive(Debug, Parser)]
struct Fetch {
    #[command(flatten)]
    args: FetchArgs,
}

fn model(spec: serde_json::Value) -> FusedModel {
    let spec: FusedModelSpec = serde_json::from_value(spec).expect("the test spec parses");
    let mut model = FusedModel::new("smollm2", spec);
    model.metadata.namespace = Some("team-a".into());
    model.metadata.uid = Some("uid-flags".into());
    model
}

fn containers(model: &FusedModel) -> (Container, Vec<Container>) {
    let config = OperatorConfig::with_daemon_image("registry.test/fused-daemon:1");
    let deployment = deployment(model, &config).expect("the Deployment builds");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("a Pod template");
    let daemon = pod
        .containers
        .iter()
        .find(|c| c.name == DAEMON_CONTAINER)
        .cloned()
        .expect("the daemon container");
    (daemon, pod.init_containers.unwrap_or_default())
}

/// The container's `fused-daemon <subcommand> …` line without the binary and the subcommand.
fn arguments(container: &Container, subcommand: &str) -> Vec<String> {
    assert_eq!(
        container.command.as_deref(),
        Some(&["fused-daemon".to_owned()][..]),
        "{} runs fused-daemon",
        container.name
    );
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some(subcommand),
        "{}",
        container.name
    );
    args
}

fn parse_serve(container: &Container) -> ServeArgs {
    let args = arguments(container, "serve");
    Serve::try_parse_from(args)
        .unwrap_or_else(|e| panic!("the daemon refuses the operator's serve flags:\n{e}"))
        .args
}

#[test]
fn every_spec_field_reaches_the_daemon_setting_of_the_same_meaning() {
    let fm = model(serde_json::json!({
        "baseModel": {"uri": "file:///models/m.gguf", "format": "gguf"},
        "kvCache": {"blockSize": 4194304, "layout": "perLayer", "maxContextLen": 1536,
                    "maxSeqs": 24, "gpuMemoryUtilization": 0.75},
        "scheduler": {"tokenBudget": 384, "maxNumSeqs": 12, "maxQueue": 77},
        "servedModelName": "smollm2-chat",
        "patchTokenizer": {"uri": "file:///patches/p", "sha256": "a".repeat(64)},
        "quantization": "fp8",
        "resources": {"gpus": 1}
    }));
    let (daemon, _) = containers(&fm);
    // Each field is passed under the flag named like it (vLLM's name where vLLM has the field).
    let args = arguments(&daemon, "serve");
    for (field, flag) in [
        ("kvCache.blockSize", "--kv-block-size"),
        ("kvCache.layout", "--kv-layout"),
        ("kvCache.maxContextLen", "--max-context"),
        ("kvCache.gpuMemoryUtilization", "--gpu-memory-utilization"),
        ("scheduler.tokenBudget", "--token-budget"),
        ("scheduler.maxNumSeqs", "--max-num-seqs"),
        ("scheduler.maxQueue", "--max-queue"),
        ("servedModelName", "--served-model-name"),
        ("patchTokenizer", "--patch-tokenizer"),
        ("quantization", "--quantization"),
    ] {
        assert!(args.iter().any(|a| a == flag), "{field} → {flag}: {args:?}");
    }
    let serve = parse_serve(&daemon);
    let spec = &fm.spec;
    assert_eq!(serve.host, "0.0.0.0");
    assert_eq!(serve.port, u16::try_from(HTTP_PORT).expect("a port"));
    assert_eq!(serve.model.as_deref(), Some("/artifacts/model"));
    assert_eq!(serve.device, Device::Cuda, "gpus: 1 serves on the GPU");
    assert_eq!(
        serve.kv_block_size as i64, spec.kv_cache.block_size,
        "kvCache.blockSize"
    );
    assert_eq!(serve.kv_layout, KvLayoutArg::PerLayer, "kvCache.layout");
    assert_eq!(
        serve.max_seqs as i32, spec.scheduler.max_num_seqs,
        "scheduler.maxNumSeqs is the daemon's running-sequence (and KV slot) limit"
    );
    assert_eq!(serve.max_context, 1536, "kvCache.maxContextLen");
    assert_eq!(serve.token_budget, "384", "scheduler.tokenBudget");
    assert_eq!(serve.max_queue, 77, "scheduler.maxQueue");
    assert_eq!(
        serve.gpu_memory_utilization, 0.75,
        "kvCache.gpuMemoryUtilization"
    );
    assert_eq!(serve.served_model_name.as_deref(), Some("smollm2-chat"));
    assert_eq!(
        serve.patch_tokenizer.as_deref(),
        Some(std::path::Path::new("/artifacts/patch-tokenizer"))
    );
    assert_eq!(serve.drain_timeout_s as i64, DRAIN_TIMEOUT_S);
    assert_eq!(serve.quantization, Some(Quantization::Fp8), "quantization");
}

#[test]
fn gguf_quantization_keeps_the_blocks_on_either_device() {
    for gpus in [0, 1] {
        let fm = model(serde_json::json!({
            "baseModel": {"uri": "file:///models/m.gguf", "format": "gguf"},
            "quantization": "gguf",
            "resources": {"gpus": gpus}
        }));
        let serve = parse_serve(&containers(&fm).0);
        assert_eq!(serve.quantization, Some(Quantization::Gguf), "{gpus} GPUs");
        // The daemon's own check of the flag against its device passes.
        Quantization::check(serve.quantization, gpus == 1).expect("gguf runs on either device");
    }
}

#[test]
fn defaults_parse_and_match_the_daemons_own_defaults() {
    let fm = model(serde_json::json!({
        "baseModel": {"uri": "file:///models/m.gguf", "format": "gguf"},
        "resources": {"gpus": 0}
    }));
    let (daemon, init) = containers(&fm);
    let serve = parse_serve(&daemon);
    let own = Serve::try_parse_from(["serve"])
        .expect("the daemon's defaults parse")
        .args;
    assert_eq!(serve.device, Device::Cpu, "gpus: 0 serves on the CPU");
    assert_eq!(
        serve.kv_layout, own.kv_layout,
        "the CRD's default KV layout is the daemon's"
    );
    assert_eq!(serve.kv_block_size, own.kv_block_size);
    assert_eq!(
        serve.quantization, None,
        "quantization: none passes no flag"
    );
    assert_eq!(
        serve.served_model_name.as_deref(),
        Some("smollm2"),
        "the object's name"
    );

    // The fetch step's command line parses too, and carries the spec's URI and the tenant scope.
    assert!(!init.is_empty(), "the fetch init container");
    for container in &init {
        let args = arguments(container, "fetch");
        let fetch = Fetch::try_parse_from(args)
            .unwrap_or_else(|e| panic!("the daemon refuses the fetch flags:\n{e}"))
            .args;
        assert_eq!(fetch.uri, "file:///models/m.gguf");
        assert_eq!(
            fetch.scope, "team-a registry.test/fused-daemon:1",
            "a file:// URI is scoped by namespace and fetch image"
        );
    }
}
