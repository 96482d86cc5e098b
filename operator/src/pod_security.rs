//! The security contexts of daemon Pods: the `restricted` Pod Security Standard by default —
//! a non-root user and group (the images' numeric user), `seccompProfile: RuntimeDefault`, no
//! privilege escalation, every capability dropped, a read-only root filesystem (scratch space
//! is an emptyDir). Only the hostPath artifact cache, an opt-in of the operator's
//! configuration, falls outside the profile. Pure; it must not call the API server.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// The Pod-level security context: the user and group every container runs as, the group
/// that owns the Pod's volumes, and the runtime's default seccomp profile.
pub fn pod_security_context(run_as_user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as_user),
        run_as_group: Some(run_as_user),
        fs_group: Some(run_as_user),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The security context of every container.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// The rules of the `baseline` and `restricted` Pod Security Standards (Kubernetes 1.25+
/// wording) that a Pod spec breaks, one sentence each: what a namespace labelled
/// `pod-security.kubernetes.io/enforce: restricted` would refuse. The 1.20 API servers of the
/// tests have no PodSecurity admission, so the tests check the generated Pods with this.
#[cfg(test)]
pub(crate) fn restricted_violations(pod: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    use k8s_openapi::api::core::v1::Container;
    const ALLOWED_VOLUMES: &str = "configMap, csi, downwardAPI, emptyDir, ephemeral, \
                                   persistentVolumeClaim, projected, secret";
    let mut found = Vec::new();
    // Baseline: host namespaces, host ports, privileged, hostPath, sysctls, /proc, AppArmor.
    for (field, value) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if value == Some(true) {
            found.push(format!("spec.{field} must not be true"));
        }
    }
    let pod_context = pod.security_context.clone().unwrap_or_default();
    for sysctl in pod_context.sysctls.iter().flatten() {
        found.push(format!("sysctl {} is not in the safe set", sysctl.name));
    }
    if pod_context
        .se_linux_options
        .as_ref()
        .is_some_and(|o| o.user.is_some() || o.role.is_some())
    {
        found.push("spec.securityContext.seLinuxOptions must not set user or role".into());
    }
    for volume in pod.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or_default();
        let kinds: Vec<&String> = value
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        for kind in kinds {
            if !ALLOWED_VOLUMES.split(", ").any(|allowed| allowed == kind) {
                found.push(format!(
                    "volume {}: type {kind} is not allowed (only {ALLOWED_VOLUMES})",
                    volume.name
                ));
            }
        }
    }
    // Restricted: non-root, seccomp, no escalation, drop ALL (add at most NET_BIND_SERVICE).
    let pod_non_root = pod_context.run_as_non_root == Some(true);
    let pod_seccomp = pod_context
        .seccomp_profile
        .as_ref()
        .map(|p| p.type_.as_str());
    if pod_context.run_as_user == Some(0) {
        found.push("spec.securityContext.runAsUser must not be 0".into());
    }
    if pod_seccomp == Some("Unconfined") {
        found.push("spec.securityContext.seccompProfile must not be Unconfined".into());
    }
    let containers: Vec<(&str, &Container)> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainer", c))
        .chain(pod.containers.iter().map(|c| ("container", c)))
        .collect();
    for (kind, container) in containers {
        let at = format!("{kind} {}", container.name);
        let context = container.security_context.clone().unwrap_or_default();
        if context.privileged == Some(true) {
            found.push(format!("{at}: privileged must not be true"));
        }
        if context
            .proc_mount
            .as_deref()
            .is_some_and(|m| m != "Default")
        {
            found.push(format!("{at}: procMount must be Default"));
        }
        for port in container.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                found.push(format!("{at}: hostPort must not be set"));
            }
        }
        if context.allow_privilege_escalation != Some(false) {
            found.push(format!("{at}: allowPrivilegeEscalation must be false"));
        }
        let non_root = match context.run_as_non_root {
            Some(value) => value,
            None => pod_non_root,
        };
        if !non_root {
            found.push(format!(
                "{at}: runAsNonRoot must be true (on the Pod or the container)"
            ));
        }
        if context.run_as_user == Some(0) {
            found.push(format!("{at}: runAsUser must not be 0"));
        }
        let seccomp = context
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.as_str())
            .or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            found.push(format!(
                "{at}: seccompProfile must be RuntimeDefault or Localhost (on the Pod or the \
                 container)"
            ));
        }
        let capabilities = context.capabilities.clone().unwrap_or_default();
        if !capabilities.drop.iter().flatten().any(|c| c == "ALL") {
            found.push(format!("{at}: capabilities must drop ALL"));
        }
        for added in capabilities.add.iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                found.push(format!("{at}: capability {added} must not be added"));
            }
        }
    }
    found
}
