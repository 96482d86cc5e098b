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

fn reference_trace(load: f64) -> Vec<TraceRequest> {
    TraceConfig::decodes_with_long_prompts(60.0, 1, load)
        .generate()
        .expect("valid")
}

fn p(report: &SimReport, percent: f64) -> f64 {
    percentile(&report.tbt_s, percent).expect("tokens were generated")
}

#[test]
fn sarathi_keeps_tail_tbt_near_its_median_and_prefill_first_does_not() {
    let trace = reference_trace(1.0);
    let sarathi = run(&trace, &setup("sarathi:512", h200_kv())).expect("runs");
    let prefill_first = run(&trace, &setup("prefill-first:8192", h200_kv())).expect("runs");
    let decode_first = run(&trace, &setup("decode-first:8192", h200_kv())).expect("runs");
    for report in [&sarathi, &prefill_first, &decode_first] {
        assert_eq!(report.finished, trace.len(), "{}", report.label);
    }
    let ratio = |report: &SimReport| report.tbt_tail_ratio().expect("tokens");
    assert!(
        ratio(&sarathi) <= 1.5,
        "sarathi P99/P50 {}",
        ratio(&sarathi)
    );
    assert!(
        ratio(&prefill_first) > 1.5,
        "prefill-first P99/P50 {}",
        ratio(&prefill_first)
    );
    assert!(
        ratio(&decode_first) > 1.5,
        "decode-first P99/P50 {}",
        ratio(&decode_first)
    );
    assert!(p(&prefill_first, 99.0) > 5.0 * p(&sarathi, 99.0));
}

#[test]
fn sarathi_tail_tbt_is_bounded_by_its_budget_at_every_load() {
    // One full iteration of 512 tokens with 128 decodes of 4096 context: the worst case.
    let cost = CostModel::mistral_7b_h200();
    let bound = cost.fixed_s
        + cost.per_prefill_token_s * 512.0
        + cost.per_context_token_s * (128.0 * 4096.0 + 4096.0);
    for load in [0.3, 0.5, 0.8, 1.1] {
        let trace = reference_trace(load);
        let sarathi = run(&trace, &setup("sarathi:512", h200_kv())).expect("runs");
        assert!(
            p(&sarathi, 99.0) <= bound,
            "load {load}: {} > {bound}",
            p(&sarathi, 99.0)
        );
        // From half load on, more than 1 % of prefill-first's token gaps are stalls.
        if load >= 0.5 {
            let prefill_first = run(&trace, &setup("prefill-first:8192", h200_kv())).expect("runs");
            assert!(
                p(&prefill_first, 99.0) > 3.0 * p(&sarathi, 99.0),
                "load {load}"
            );
        }
    }
}

#[test]
fn auto_budget_keeps_tail_tbt_under_its_target() {
    let trace = reference_trace(1.0);
    let auto = run(&trace, &setup("sarathi:auto", h200_kv())).expect("runs");
    assert!(
        p(&auto, 99.0) <= TARGET.as_secs_f64(),
        "P99 TBT {}",
        p(&auto, 99.0)
    );
    assert!(
        p(&auto, 100.0) <= TARGET.as_secs_f64() * 1.05,
        "max TBT {}",
        p(&auto, 100.0)
    );
    // It found a budget well above the minimum: (50 − 3.4) ms / 30.6 µs ≈ 1500 tokens.
    assert!(
        auto.mean_token_budget > 1200.0,
        "mean budget {}",
        auto.mean_token_budget
    );
}

#[test]
fn small_kv_pool_preempts_and_still_finishes_everything() {
    let trace = reference_trace(1.0);
    let small = KvShape::from_bytes(3 << 30, 32 * 2 * 8 * 128 * 2, 32, 16384);
    for spec in ["sarathi:512", "prefill-first:8192", "decode-first:8192"] {
        let report = run(&trace, &setup(spec, small)).expect("no leak, nothing lost");
        assert!(
            report.preemptions > 0,
            "{spec}: the pool is small enough to preempt"
        );
        assert_eq!(report.finished, trace.len(), "{spec}");
    }
}

#[test]
fn impossible_requests_are_aborted_not_lost() {
    // A pool of 1024 tokens: every long prompt (2048+) is aborted, the streams finish.
    let trace = reference_trace(0.5);
    let tiny = KvShape {
        tokens_per_page: 32,
        total_pages: 32,
        max_tokens_per_slot: 16384,
        lookahead_tokens: 0,
    };
    let report = run(&trace, &setup("sarathi:512", tiny)).expect("accounted for");
    let long_prompts = trace
        .iter()
        .filter(|request| request.prompt_tokens > 1024)
        .count();
    assert!(
        report.aborted >= long_prompts,
        "{} < {long_prompts}",
        report.aborted
    );
    assert_eq!(report.finished + report.aborted, trace.len());
}

#[test]
fn a_bad_scheduler_config_is_an_error() {
    let mut bad = setup("sarathi:64", h200_kv());
    bad.label = "budget below max_num_seqs".into();
    assert!(matches!(
        run(&reference_trace(0.1), &bad),
        Err(SimError::Config(_))
    ));
}

#[test]
fn lookahead_takes_decode_page_claims_off_the_critical_path() {
    let trace = reference_trace(0.5);
    let ahead = setup("sarathi:512", h200_kv());
    let mut just_in_time = ahead.clone();
    just_in_time.kv.lookahead_tokens = 0;
    let late_ahead = run(&trace, &ahead).expect("runs").late_decode_pages;
    let late_jit = run(&trace, &just_in_time).expect("runs").late_decode_pages;
    assert_eq!(late_ahead, 0);
    // Every 32nd decode step crosses a page: thousands of pages over the trace.
    assert!(late_jit > 1000, "{late_jit} late pages without lookahead");
}
