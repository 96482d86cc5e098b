//! Fails when the committed CRD YAML in the chart differs from what the code generates.

use std::path::PathBuf;

#[test]
fn committed_crd_yaml_matches_generated() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(fused_crds::CRD_CHART_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; run `cargo run -p fused-crds --bin crdgen`",
            path.display()
        )
    });
    let generated = fused_crds::render_crd_yaml().expect("the CRD renders");
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p fused-crds --bin crdgen` and commit the result",
        path.display()
    );
}

#[test]
fn generated_crd_round_trips_to_the_same_definition() {
    use kube::CustomResourceExt;
    let generated = fused_crds::render_crd_yaml().expect("the CRD renders");
    let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_saphyr::from_str(&generated).expect("the rendered YAML parses as a CRD");
    assert_eq!(parsed, fused_crds::FusedModel::crd());
}
