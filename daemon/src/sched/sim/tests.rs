//! Simulator tests: run specs, determinism, the stall-freedom claim on the reference trace, and
//! preemption under a small KV pool.

use super::*;

const TARGET: Duration = Duration::from_millis(50);

fn setup(spec: &str, kv: KvShape) -> SimSetup {
    let spec: RunSpec = spec.parse().expect("valid spec");
    SimSetup {
        label: spec.label(TARGET),
        scheduler: spec.scheduler_config(128, TARGET, (128, 8192)),
        kv,
        cost: CostModel::mistral_7b_h200(),
    }
}

/// The H200's pool for Mistral-7B, pages of 32 tokens.
fn h200_kv() -> KvShape {
    KvShape::from_bytes(104 << 30, 32 * 2 * 8 * 128 * 2, 32, 16384)
}

#[test]
fn run_specs_parse_and_label() {
    let spec: RunSpec = "sarathi:512".parse().expect("valid");
    assert_eq!(
        spec,
        RunSpec {
            policy: Policy::Sarathi,
            budget: Some(512)
        }
    );
    assert_eq!(spec.label(TARGET), "sarathi 512");
    let auto: RunSpec = "sarathi:auto".parse().expect("valid");
    assert_eq!(auto.label(TARGET), "sarathi auto (50 ms)");
    assert!(matches!(
        auto.scheduler_config(64, TARGET, (64, 4096)).token_budget,
        TokenBudget::Auto {
            min: 64,
            max: 4096,
            ..
        }
    ));
    assert_eq!(
        "sarathi".parse::<RunSpec>(),
        Err(RunSpecError::Shape("sarathi".into()))
    );
    assert_eq!(
        "sarathi:0".parse::<RunSpec>(),
        Err(RunSpecError::Budget("sarathi:0".into()))
    );
    assert!(matches!(
        "fifo:512".parse::<RunSpec>(),
        Err(RunSpecError::Policy { .. })
    ));
}

#[test]
fn kv_shape_from_bytes() {
    let kv = h200_kv();
    // 104 GiB / (32 tokens × 128 KiB) = 26624 pages.
    assert_eq!(kv.total_pages, 26_624);
    assert_eq!(KvShape::from_bytes(10, 0, 0, 1).total_pages, 10);
}

#[test]
fn same_trace_same_report() {
    let trace = TraceConfig::decodes_with_long_prompts(20.0, 3, 1.0)
        .generate()
        .expect("valid");
    let setup = setup("sarathi:512", h200_kv());
    let first = run(&trace, &setup).expect("runs");
    assert_eq!(first, run(&trace, &setup).expect("runs"));
    assert_eq!(first.finished, trace.len());
}
