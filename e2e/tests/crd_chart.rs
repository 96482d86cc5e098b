//! The CRD chart (`charts/fused-crds`): lints strictly, installs with helm into a real API
//! server (CRD Established), and keeps the CRD on `helm uninstall` (`helm.sh/resource-policy:
//! keep`), so uninstalling never deletes users' FusedModels.

use fused_e2e::k8s::{TestCluster, wait_crd_established};
use fused_e2e::workspace_root;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

const CRD_NAME: &str = "fusedmodels.fused.dev";

fn run(command: &mut std::process::Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn crd_chart_installs_and_keeps_the_crd_on_uninstall() {
    let chart = workspace_root().join("charts/fused-crds");
    let cluster = TestCluster::start(false)
        .await
        .expect("start the test cluster");
    let lint = run(cluster
        .helm()
        .expect("helm")
        .arg("lint")
        .arg("--strict")
        .arg(&chart));
    println!("$ helm lint --strict charts/fused-crds\n{lint}");

    let install = run(cluster
        .helm()
        .expect("helm")
        .args(["install", "fused-crds"])
        .arg(&chart)
        .arg("--wait"));
    println!("$ helm install fused-crds charts/fused-crds\n{install}");
    let client = cluster.client().expect("client");
    let crd = wait_crd_established(&client, CRD_NAME)
        .await
        .expect("the chart's CRD is Established");
    let annotations = crd.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    assert_eq!(
        annotations
            .get("meta.helm.sh/release-name")
            .map(String::as_str),
        Some("fused-crds")
    );

    let uninstall = run(cluster
        .helm()
        .expect("helm")
        .args(["uninstall", "fused-crds"]));
    println!("$ helm uninstall fused-crds\n{uninstall}");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let kept = crds.get_opt(CRD_NAME).await.expect("get the CRD");
    assert!(
        kept.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
        "helm uninstall must keep {CRD_NAME}"
    );
}
