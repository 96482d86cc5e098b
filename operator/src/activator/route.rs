//! Which FusedModel a request that reached the activator is for, from its `Host` header: the
//! Service's DNS name in any of its forms (`name`, `name.ns`, `name.ns.svc`,
//! `name.ns.svc.cluster.local`, with or without the port) or its ClusterIP. A bare `name` is
//! accepted when one FusedModel in scope has it. Pure: the stores come in as slices.

use std::net::IpAddr;
use std::sync::Arc;

use fused_crds::FusedModel;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::endpoints::scales_to_zero;

/// A FusedModel by namespace and name.
pub type ModelKey = (String, String);

/// Why a request could not be routed (the message is for the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute(pub String);

/// The FusedModel `host` names among `models` (only scale-to-zero ones are served here).
pub fn route(
    host: &str,
    models: &[Arc<FusedModel>],
    services: &[Arc<Service>],
) -> Result<ModelKey, NoRoute> {
    let host = strip_port(host.trim()).to_ascii_lowercase();
    let known = |ns: &str, name: &str| {
        models.iter().any(|m| {
            m.namespace().as_deref() == Some(ns) && m.name_any() == name && scales_to_zero(m)
        })
    };
    let found = if let Ok(ip) = host.parse::<IpAddr>() {
        services
            .iter()
            .find(|s| {
                s.spec
                    .as_ref()
                    .and_then(|spec| spec.cluster_ip.as_deref())
                    .and_then(|c| c.parse::<IpAddr>().ok())
                    == Some(ip)
            })
            .and_then(|s| Some((s.namespace()?, s.name_any())))
    } else {
        let labels: Vec<&str> = host.split('.').collect();
        match labels.as_slice() {
            [name] => {
                let matches: Vec<ModelKey> = models
                    .iter()
                    .filter(|m| m.name_any() == *name && scales_to_zero(m))
                    .filter_map(|m| Some((m.namespace()?, m.name_any())))
                    .collect();
                match matches.as_slice() {
                    [one] => Some(one.clone()),
                    [] => None,
                    _ => {
                        return Err(NoRoute(format!(
                            "{name:?} names a FusedModel in several namespaces; address it as \
                             <name>.<namespace>.svc"
                        )));
                    }
                }
            }
            [name, ns] | [name, ns, "svc", ..] => Some(((*ns).to_owned(), (*name).to_owned())),
            _ => None,
        }
    };
    match found {
        Some((ns, name)) if known(&ns, &name) => Ok((ns, name)),
        _ => Err(NoRoute(format!(
            "no scale-to-zero FusedModel is served at {host:?}; address it by its Service \
             (http://<name>.<namespace>.svc:8000)"
        ))),
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets' content).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;
    use serde_json::json;

    fn model(ns: &str, name: &str, min: i32) -> Arc<FusedModel> {
        let spec: FusedModelSpec = serde_json::from_value(json!({
            "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
            "autoscaling": {"minReplicas": min, "maxReplicas": 2, "targetWaitingRequests": 2}
        }))
        .expect("test spec");
        let mut model = FusedModel::new(name, spec);
        model.metadata.namespace = Some(ns.into());
        Arc::new(model)
    }

    fn service(ns: &str, name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip}
            }))
            .expect("test service"),
        )
    }

    #[test]
    fn every_form_of_the_service_name_and_its_cluster_ip() {
        let models = [model("team-a", "chat", 0), model("team-b", "other", 0)];
        let services = [service("team-a", "chat", "10.96.0.12")];
        let want = Ok(("team-a".to_owned(), "chat".to_owned()));
        for host in [
            "chat",
            "chat:8000",
            "chat.team-a",
            "chat.team-a.svc",
            "chat.team-a.svc:8000",
            "Chat.Team-A.svc.cluster.local:8000",
            "10.96.0.12:8000",
            "10.96.0.12",
        ] {
            assert_eq!(route(host, &models, &services), want, "{host}");
        }
    }

    #[test]
    fn unknown_ambiguous_and_not_scale_to_zero_hosts_are_refused() {
        let models = [
            model("team-a", "chat", 0),
            model("team-b", "chat", 0),
            model("team-c", "always-on", 1),
        ];
        let refused = |host: &str| route(host, &models, &[]).expect_err(host).0;
        assert!(refused("chat").contains("several namespaces"));
        assert!(refused("nothing.team-a.svc").contains("no scale-to-zero FusedModel"));
        assert!(refused("always-on.team-c.svc").contains("no scale-to-zero"));
        assert!(refused("10.0.0.1").contains("no scale-to-zero"));
        assert!(refused("").contains("no scale-to-zero"));
        assert_eq!(
            route("chat.team-b.svc", &models, &[]),
            Ok(("team-b".to_owned(), "chat".to_owned()))
        );
    }

    #[test]
    fn ports_and_ipv6_literals_are_stripped() {
        assert_eq!(strip_port("a.b:8000"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[fd00::1]:8000"), "fd00::1");
        assert_eq!(strip_port("fd00::1"), "fd00::1");
    }
}
