//! The Helm charts (`charts/fused-crds`, `charts/fused-operator`) with the real `helm` and
//! `kubectl` against a real kube-apiserver (v1.20, loopback): `helm lint --strict` with default
//! and all-features values, `values.schema.json` rejecting bad values, the rendered RBAC and pod
//! security, `helm template | kubectl apply --dry-run=server`, and a real install / upgrade /
//! uninstall of both charts (the CRD survives its chart's uninstall, and an upgrade of the CRD
//! chart updates the CRD). RBAC is checked by the API server itself (`kubectl auth can-i` as the
//! operator's ServiceAccount).
//!
//! The prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) are not available
//! offline: the test registers stand-ins with the upstream group, version and kinds and an open
//! schema, so the API server stores the chart's monitoring objects; their content is checked by
//! a real Prometheus in `e2e/python/test_dashboards.py`. Run with `-- --nocapture` to see the
//! helm and kubectl output.

use std::io::Write;
use std::process::{Command, Stdio};

use fused_e2e::k8s::{
    ClusterError, TestCluster, install_crd_yaml, locate, parse_manifests, wait_crd_established,
};
use fused_e2e::workspace_root;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use tokio::sync::OnceCell;

const CRDS_CHART: &str = "charts/fused-crds";
const OPERATOR_CHART: &str = "charts/fused-operator";
/// Values that switch on every optional object of the operator chart.
const ALL_FEATURES: &[&str] = &[
    "serviceMonitor.enabled=true",
    "daemonPodMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "dashboard.enabled=true",
];
const MONITORING_KINDS: &[(&str, &str)] = &[
    ("ServiceMonitor", "servicemonitors"),
    ("PodMonitor", "podmonitors"),
    ("PrometheusRule", "prometheusrules"),
];

fn chart(path: &str) -> String {
    workspace_root().join(path).display().to_string()
}

fn set_args(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".to_owned(), (*v).to_owned()])
        .collect()
}

/// Runs `command`; returns (success, stdout, stderr).
fn run(mut command: Command, stdin: Option<&str>) -> (bool, String, String) {
    let described = format!("{command:?}");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {described}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {described}: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {described}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `helm` command without a cluster (lint, template).
fn helm_offline() -> Command {
    Command::new(locate("helm").expect("helm is installed by scripts/setup-k8s.sh"))
}

fn must(command: Command, stdin: Option<&str>) -> String {
    let described = format!("{command:?}");
    let (ok, stdout, stderr) = run(command, stdin);
    assert!(ok, "{described} failed:\n{stderr}\n{stdout}");
    stdout
}

fn template(chart_path: &str, release: &str, namespace: &str, values: &[&str]) -> String {
    let mut command = helm_offline();
    command
        .args([
            "template",
            release,
            &chart(chart_path),
            "--namespace",
            namespace,
        ])
        .args(set_args(values));
    must(command, None)
}

/// The rendered objects as (kind, name, JSON).
fn rendered_objects(yaml: &str) -> Vec<(String, String, serde_json::Value)> {
    parse_manifests(yaml)
        .expect("the chart renders valid manifests")
        .into_iter()
        .map(|o| {
            let kind = o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            let name = o.metadata.name.clone().unwrap_or_default();
            (kind, name, serde_json::to_value(&o).expect("to JSON"))
        })
        .collect()
}

fn rendered<T: serde::de::DeserializeOwned>(yaml: &str, kind: &str) -> T {
    let (_, _, json) = rendered_objects(yaml)
        .into_iter()
        .find(|(k, _, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    serde_json::from_value(json).unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |s: &[&str]| Some(s.iter().map(|x| (*x).to_owned()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|x| (*x).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The operator's agreed permissions, cluster-wide (leases are a namespaced Role).
fn agreed_cluster_rules() -> Vec<PolicyRule> {
    let crud = [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    vec![
        rule(
            &["fused.dev"],
            &["fusedmodels"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            &["fused.dev"],
            &["fusedmodels/status"],
            &["get", "patch", "update"],
        ),
        rule(&["fused.dev"], &["fusedmodels/finalizers"], &["update"]),
        rule(
            &["fused.dev"],
            &["fusedmodels/scale"],
            &["get", "patch", "update"],
        ),
        rule(&["apps"], &["deployments"], &crud),
        rule(&[""], &["services"], &crud),
        rule(
            &[""],
            &["endpoints"],
            &["get", "list", "watch", "create", "patch", "update"],
        ),
        rule(&[""], &["pods"], &["get", "list", "watch"]),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &crud),
        rule(&["networking.k8s.io"], &["networkpolicies"], &crud),
        rule(&["policy"], &["poddisruptionbudgets"], &crud),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["events"], &["create", "patch"]),
    ]
}

fn agreed_lease_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "list", "watch", "create", "update", "patch"],
    )]
}

/// The shared cluster with stand-ins for the prometheus-operator CRDs (see the module doc).
async fn cluster_with_monitoring_crds() -> &'static TestCluster {
    static MONITORING_CRDS: OnceCell<()> = OnceCell::const_new();
    let cluster = TestCluster::shared(false)
        .await
        .expect("start the test cluster");
    MONITORING_CRDS
        .get_or_try_init(|| async {
            let client = cluster.client()?;
            for (kind, plural) in MONITORING_KINDS {
                let yaml = format!(
                    "apiVersion: apiextensions.k8s.io/v1\n\
                     kind: CustomResourceDefinition\n\
                     metadata: {{name: {plural}.monitoring.coreos.com}}\n\
                     spec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n\
                     \x20 names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}\n\
                     \x20 versions:\n  - name: v1\n    served: true\n    storage: true\n\
                     \x20   schema:\n      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                    singular = kind.to_lowercase()
                );
                install_crd_yaml(&client, &yaml).await?;
            }
            Ok::<(), ClusterError>(())
        })
        .await
        .expect("register the monitoring.coreos.com stand-in CRDs");
    cluster
}

fn monitoring_api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn helm(cluster: &TestCluster, args: &[&str], values: &[&str]) -> String {
    let mut command = cluster.helm().expect("helm");
    command.args(args).args(set_args(values));
    let out = must(command, None);
    println!("$ helm {}\n{out}", args.join(" "));
    out
}

fn can_i(cluster: &TestCluster, who: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    let mut command = cluster.kubectl().expect("kubectl");
    command
        .args(["auth", "can-i", verb, resource, "--as", who])
        .args(scope);
    let (_, stdout, stderr) = run(command, None);
    match stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {resource}: {other:?} {stderr}"),
    }
}

#[test]
fn both_charts_pass_helm_lint_strict() {
    for (chart_path, values) in [
        (CRDS_CHART, &[][..]),
        (OPERATOR_CHART, &[][..]),
        (OPERATOR_CHART, ALL_FEATURES),
    ] {
        let mut command = helm_offline();
        command
            .args(["lint", "--strict", &chart(chart_path)])
            .args(set_args(values));
        let out = must(command, None);
        println!("$ helm lint --strict {chart_path} {values:?}\n{out}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn values_schema_rejects_bad_values_naming_the_field() {
    for (value, field) in [
        ("replicaCount=0", "replicaCount"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        (
            "securityContext.allowPrivilegeEscalation=true",
            "securityContext.allowPrivilegeEscalation",
        ),
        (
            "podSecurityContext.runAsNonRoot=false",
            "podSecurityContext",
        ),
        ("cacheHostPath=var/cache", "cacheHostPath"),
        ("artifactCache=nfs", "artifactCache"),
        (
            "prometheusRule.thresholds.kvSaturatedRatio=1.5",
            "kvSaturatedRatio",
        ),
        (
            "prometheusRule.thresholds.kvSaturatedFor=soon",
            "kvSaturatedFor",
        ),
        ("metrics.port=70000", "metrics.port"),
        ("imageTag=latest", "imageTag"),
    ] {
        let mut command = helm_offline();
        command.args(["template", "x", &chart(OPERATOR_CHART), "--set", value]);
        let (ok, _, stderr) = run(command, None);
        println!("--set {value}: {}", stderr.trim());
        assert!(!ok, "--set {value} must be rejected by values.schema.json");
        assert!(stderr.contains(field), "the error names {field}: {stderr}");
    }
}

#[test]
fn default_render_is_least_privilege_and_restricted() {
    let yaml = template(OPERATOR_CHART, "fused-operator", "fused-system", &[]);
    let mut kinds: Vec<String> = rendered_objects(&yaml)
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount"
        ],
        "monitoring objects are off by default (the Services: metrics and the activator)"
    );
    let cluster_role: ClusterRole = rendered(&yaml, "ClusterRole");
    assert_eq!(cluster_role.rules, Some(agreed_cluster_rules()));
    let role: Role = rendered(&yaml, "Role");
    assert_eq!(role.rules, Some(agreed_lease_rules()));
    assert_eq!(role.metadata.namespace.as_deref(), Some("fused-system"));

    let deployment: Deployment = rendered(&yaml, "Deployment");
    let pod = deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/fusedmodel/fused-operator:0.1.0"),
        "tag = appVersion"
    );
    assert_eq!(
        container.args.clone().unwrap_or_default(),
        [
            "--daemon-image",
            "ghcr.io/fusedmodel/fused-daemon:0.1.0",
            "--metrics-addr",
            "0.0.0.0:8080",
            "--leader-election-namespace",
            "fused-system",
            "--cache-host-path",
            "/var/cache/fusedmodel",
            "--artifact-cache",
            "emptyDir",
            "--autoscale-interval-s",
            "5",
            "--model-min-available",
            "1",
            "--gpu-daemon-memory",
            "2Gi",
            "--activator-addr",
            "0.0.0.0:8081",
            "--activator-service",
            "fused-system/fused-operator-activator"
        ]
    );
    let security = container
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let get = probe.clone().and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
    }
    let resources = container.resources.clone().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());

    // nodeSelector / tolerations / affinity and the daemon image come from values.
    let yaml = template(
        OPERATOR_CHART,
        "fused-operator",
        "ops",
        &[
            "nodeSelector.pool=system",
            "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=arch",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "daemonImage=registry.local/daemon:dev",
        ],
    );
    let pod = rendered::<Deployment>(&yaml, "Deployment")
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(
        pod.node_selector.and_then(|s| s.get("pool").cloned()),
        Some("system".to_owned())
    );
    assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
    assert!(pod.affinity.and_then(|a| a.node_affinity).is_some());
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w == ["--daemon-image", "registry.local/daemon:dev"])
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--leader-election-namespace", "ops"])
    );
}

#[tokio::test]
async fn rendered_charts_pass_server_side_dry_run() {
    let cluster = cluster_with_monitoring_crds().await;
    let namespace = "fused-dry-run";
    cluster
        .run_kubectl(&["create", "namespace", namespace])
        .expect("create the dry-run namespace");
    for (chart_path, values) in [
        (CRDS_CHART, &[][..]),
        (OPERATOR_CHART, &[][..]),
        (OPERATOR_CHART, ALL_FEATURES),
    ] {
        let yaml = template(chart_path, "fused-dry", namespace, values);
        let objects = rendered_objects(&yaml);
        let mut command = cluster.kubectl().expect("kubectl");
        command.args(["apply", "--dry-run=server", "-n", namespace, "-f", "-"]);
        let out = must(command, Some(&yaml));
        println!(
            "$ helm template {chart_path} {values:?} | kubectl apply --dry-run=server -f -\n{out}"
        );
        let accepted = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            objects.len(),
            "every rendered object is accepted: {out}"
        );
    }
    // Dry run created nothing.
    let client = cluster.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    assert!(
        deployments
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn both_charts_install_upgrade_and_uninstall() {
    let cluster = cluster_with_monitoring_crds().await;
    let client = cluster.client().expect("client");
    let namespace = "fused-system";
    let crd_name = "fusedmodels.fused.dev";

    // CRD chart: installed from templates/, so upgrades update it; kept on uninstall.
    helm(cluster, &["install", "fused-crds", &chart(CRDS_CHART)], &[]);
    let crd = wait_crd_established(&client, crd_name)
        .await
        .expect("the chart's CRD becomes Established");
    let annotations = crd.metadata.annotations.clone().unwrap_or_default();
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

    // Operator chart with everything on; its notes show a first FusedModel and a curl.
    let installed = helm(
        cluster,
        &[
            "install",
            "fused-operator",
            &chart(OPERATOR_CHART),
            "--namespace",
            namespace,
            "--create-namespace",
        ],
        ALL_FEATURES,
    );
    let first_model = notes_first_model(&installed);
    assert!(
        installed.contains("curl -s localhost:8000/v1/chat/completions"),
        "{installed}"
    );
    let mut command = cluster.kubectl().expect("kubectl");
    command.args(["apply", "--dry-run=server", "-n", "default", "-f", "-"]);
    let out = must(command, Some(&first_model));
    assert!(out.contains("fusedmodel.fused.dev/smollm2-135m"), "{out}");
    let typed: fused_crds::FusedModel =
        serde_saphyr::from_str(&first_model).expect("the notes' FusedModel parses");
    assert_eq!(
        typed.spec.validate(),
        Ok(()),
        "the notes' FusedModel is valid"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get("fused-operator").await.expect("Deployment");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    assert_eq!(
        cluster_roles
            .get("fused-operator")
            .await
            .expect("ClusterRole")
            .rules,
        Some(agreed_cluster_rules())
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .get("fused-operator")
        .await
        .expect("ClusterRoleBinding");
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    assert_eq!(
        roles
            .get("fused-operator-leader-election")
            .await
            .expect("leader-election Role")
            .rules,
        Some(agreed_lease_rules())
    );
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get("fused-operator")
        .await
        .expect("ServiceAccount");
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get("fused-operator-metrics")
        .await
        .expect("metrics Service");
    let port = &service.spec.and_then(|s| s.ports).expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8080));
    let dashboard = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get("fused-operator-dashboard")
        .await
        .expect("dashboard ConfigMap");
    assert_eq!(
        dashboard
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    let json: serde_json::Value = serde_json::from_str(
        dashboard
            .data
            .as_ref()
            .and_then(|d| d.get("fused-daemon.json"))
            .expect("dashboard JSON key"),
    )
    .expect("the dashboard is valid JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 10));
    for (kind, _) in MONITORING_KINDS {
        let stored = monitoring_api(&client, namespace, kind)
            .list(&Default::default())
            .await
            .expect("list monitoring objects");
        assert_eq!(stored.items.len(), 1, "one {kind} installed");
    }

    // The API server's RBAC answers for the operator's ServiceAccount.
    let sa = format!("system:serviceaccount:{namespace}:fused-operator");
    let anywhere = ["--all-namespaces"];
    let in_ns = ["-n", namespace];
    let in_default = ["-n", "default"];
    for (verb, resource, scope, allowed) in [
        ("watch", "fusedmodels.fused.dev", &anywhere[..], true),
        ("patch", "fusedmodels.fused.dev", &anywhere[..], true),
        ("delete", "fusedmodels.fused.dev", &anywhere[..], false),
        ("create", "fusedmodels.fused.dev", &anywhere[..], false),
        ("patch", "fusedmodels.fused.dev/status", &anywhere[..], true),
        (
            "update",
            "fusedmodels.fused.dev/finalizers",
            &anywhere[..],
            true,
        ),
        ("create", "deployments.apps", &anywhere[..], true),
        ("delete", "deployments.apps", &anywhere[..], true),
        ("create", "services", &anywhere[..], true),
        ("list", "pods", &anywhere[..], true),
        ("create", "pods", &anywhere[..], false),
        ("delete", "pods", &anywhere[..], false),
        (
            "create",
            "horizontalpodautoscalers.autoscaling",
            &anywhere[..],
            true,
        ),
        ("create", "events.events.k8s.io", &anywhere[..], true),
        ("create", "events", &anywhere[..], true),
        ("delete", "events", &anywhere[..], false),
        ("create", "leases.coordination.k8s.io", &in_ns[..], true),
        (
            "create",
            "leases.coordination.k8s.io",
            &in_default[..],
            false,
        ),
        ("get", "secrets", &anywhere[..], false),
        ("list", "configmaps", &anywhere[..], false),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            &anywhere[..],
            false,
        ),
        (
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            &anywhere[..],
            false,
        ),
    ] {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let mut scope = scope.to_vec();
        let flag = format!("--subresource={subresource}");
        if !subresource.is_empty() {
            scope.push(&flag);
        }
        let answer = can_i(cluster, &sa, verb, resource, &scope);
        println!("can-i {verb} {resource} {scope:?}: {answer}");
        assert_eq!(answer, allowed, "{verb} {resource} {scope:?}");
    }

    // Upgrades: values reach the Deployment; a changed CRD in the CRD chart reaches the server.
    helm(
        cluster,
        &[
            "upgrade",
            "fused-operator",
            &chart(OPERATOR_CHART),
            "--namespace",
            namespace,
            "--reuse-values",
        ],
        &["replicaCount=2"],
    );
    let deployment = deployments.get("fused-operator").await.expect("Deployment");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let changed_chart = tempfile::tempdir().expect("temp dir");
    copy_dir(&workspace_root().join(CRDS_CHART), changed_chart.path());
    let crd_file = changed_chart
        .path()
        .join("templates/fusedmodels.fused.dev.yaml");
    let crd_yaml = std::fs::read_to_string(&crd_file).expect("read CRD template");
    assert!(
        crd_yaml.contains("    - fm\n"),
        "the CRD has the short name fm"
    );
    std::fs::write(
        &crd_file,
        crd_yaml.replace("    - fm\n", "    - fm\n    - fmx\n"),
    )
    .expect("write CRD template");
    helm(
        cluster,
        &[
            "upgrade",
            "fused-crds",
            &changed_chart.path().display().to_string(),
        ],
        &[],
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let upgraded = crds.get(crd_name).await.expect("CRD");
    assert!(
        upgraded
            .spec
            .names
            .short_names
            .unwrap_or_default()
            .contains(&"fmx".to_owned()),
        "helm upgrade of the CRD chart updated the CRD"
    );

    // Uninstall: the operator's objects go, the CRD stays.
    helm(
        cluster,
        &["uninstall", "fused-operator", "--namespace", namespace],
        &[],
    );
    assert!(
        deployments
            .get_opt("fused-operator")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        cluster_roles
            .get_opt("fused-operator")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        bindings
            .get_opt("fused-operator")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        roles
            .get_opt("fused-operator-leader-election")
            .await
            .expect("get")
            .is_none()
    );
    for (kind, _) in MONITORING_KINDS {
        let left = monitoring_api(&client, namespace, kind)
            .list(&Default::default())
            .await
            .expect("list");
        assert!(left.items.is_empty(), "{kind} removed on uninstall");
    }
    let out = helm(cluster, &["uninstall", "fused-crds"], &[]);
    assert!(out.contains("kept due to the resource policy"), "{out}");
    assert!(
        crds.get_opt(crd_name).await.expect("get CRD").is_some(),
        "the CRD (and so every FusedModel) survives the chart's uninstall"
    );
    let releases = helm(cluster, &["list", "--all-namespaces", "--short"], &[]);
    assert!(releases.trim().is_empty(), "no release left: {releases}");
}

/// The FusedModel the install notes show (the here-document between `<<'YAML'` and `YAML`).
fn notes_first_model(notes: &str) -> String {
    let body: Vec<&str> = notes
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("<<'YAML'"))
        .skip(1)
        .take_while(|l| l.trim() != "YAML")
        .collect();
    assert!(!body.is_empty(), "the notes show a FusedModel:\n{notes}");
    body.iter()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An umbrella chart (as Argo CD / Flux users and platform charts wrap ours) passes `global`
/// values to every subchart; the values schema accepts them, with and without the umbrella.
#[test]
fn umbrella_charts_pass_global_values() {
    let yaml = template(
        OPERATOR_CHART,
        "fused-operator",
        "fused-system",
        &[
            "global.imageRegistry=registry.example",
            "global.labels.team=ml",
        ],
    );
    assert!(yaml.contains("kind: Deployment"), "{yaml}");

    let dir = tempfile::tempdir().expect("temp dir");
    let umbrella = dir.path().join("platform");
    copy_dir(
        &workspace_root().join(OPERATOR_CHART),
        &umbrella.join("charts/fused-operator"),
    );
    std::fs::write(
        umbrella.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: fused-operator\n    version: 0.1.0\n",
    )
    .expect("write Chart.yaml");
    std::fs::write(
        umbrella.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\n  storageClass: fast\nfused-operator:\n  replicaCount: 2\n",
    )
    .expect("write values.yaml");
    let path = umbrella.display().to_string();
    let mut lint = helm_offline();
    lint.args(["lint", "--strict", &path]);
    let out = must(lint, None);
    println!("$ helm lint --strict platform\n{out}");
    let mut render = helm_offline();
    render.args(["template", "platform", &path, "--namespace", "fused-system"]);
    let yaml = must(render, None);
    let deployment: Deployment = rendered(&yaml, "Deployment");
    assert_eq!(
        deployment.spec.and_then(|s| s.replicas),
        Some(2),
        "the umbrella's values reach the subchart"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
