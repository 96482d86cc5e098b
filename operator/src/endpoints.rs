//! The endpoints of a scale-to-zero FusedModel's Service, written by the operator (the Service has
//! no selector; Knative's "serverless service" does the same): the replicas that serve while any
//! does, else the activator's replicas, which hold requests while a replica starts. So the
//! activator is in the data path only at zero (or while no replica serves), and the Service's
//! ClusterIP and DNS name never change. Pure; the reconciler writes it.
//!
//! Must not: list a Pod that is not ready or is terminating (a replica chosen for removal
//! drains the requests it has and gets no new one).

use std::net::SocketAddr;

use fused_crds::{FusedModel, MetricSource};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod,
};
use kube::ResourceExt;

use crate::error::Result;
use crate::labels;
use crate::workload::{HTTP_PORT, HTTP_PORT_NAME};

/// Whether `model` scales to zero through the activator: its autoscaler may go to zero, so its
/// Service gets operator-written endpoints.
pub fn scales_to_zero(model: &FusedModel) -> bool {
    model
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| a.min_replicas == 0 && a.metric_source != MetricSource::External)
}

/// Whether `pod` serves requests: Ready, with an IP, and not terminating.
pub fn serves(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|status| {
            status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Where the endpoints of a scale-to-zero Service point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The serving replicas (at least one).
    Replicas,
    /// The activator (no replica serves).
    Activator,
    /// Nowhere: no replica serves and no activator is known.
    Nowhere,
}

/// The endpoints of `model`'s Service: its serving `pods`, or else `activator` (the activator
/// replicas' addresses, from its own Service's endpoints), and where they point.
pub fn endpoints(
    model: &FusedModel,
    pods: &[Pod],
    activator: &[SocketAddr],
) -> Result<(Endpoints, Target)> {
    let metadata = labels::child_metadata(model)?;
    let serving: Vec<&Pod> = pods.iter().filter(|p| serves(p)).collect();
    let (subsets, target) = if !serving.is_empty() {
        let addresses = serving
            .iter()
            .filter_map(|pod| {
                let ip = pod.status.as_ref()?.pod_ip.clone()?;
                Some(EndpointAddress {
                    ip,
                    node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.name_any()),
                        namespace: pod.namespace(),
                        uid: pod.uid(),
                        ..ObjectReference::default()
                    }),
                    ..EndpointAddress::default()
                })
            })
            .collect();
        (vec![subset(addresses, HTTP_PORT)], Target::Replicas)
    } else if !activator.is_empty() {
        // Endpoints carry one port per subset: one subset per activator port in use.
        let mut ports: Vec<u16> = activator.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        let subsets = ports
            .into_iter()
            .map(|port| {
                let addresses = activator
                    .iter()
                    .filter(|a| a.port() == port)
                    .map(|a| EndpointAddress {
                        ip: a.ip().to_string(),
                        ..EndpointAddress::default()
                    })
                    .collect();
                subset(addresses, i32::from(port))
            })
            .collect();
        (subsets, Target::Activator)
    } else {
        (Vec::new(), Target::Nowhere)
    };
    Ok((
        Endpoints {
            metadata,
            subsets: Some(subsets),
        },
        target,
    ))
}

/// The ready addresses of an Endpoints object (the activator's Service), one per address and port.
pub fn ready_addresses(endpoints: &Endpoints) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for port in subset.ports.iter().flatten() {
            let Ok(port) = u16::try_from(port.port) else {
                continue;
            };
            for address in subset.addresses.iter().flatten() {
                if let Ok(ip) = address.ip.parse() {
                    addresses.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    addresses.sort_unstable();
    addresses
}

fn subset(addresses: Vec<EndpointAddress>, port: i32) -> EndpointSubset {
    EndpointSubset {
        addresses: Some(addresses),
        not_ready_addresses: None,
        ports: Some(vec![EndpointPort {
            name: Some(HTTP_PORT_NAME.into()),
            port,
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;
    use serde_json::json;

    fn model(autoscaling: serde_json::Value) -> FusedModel {
        let spec: FusedModelSpec = serde_json::from_value(json!({
            "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
            "replicas": 0,
            "autoscaling": autoscaling,
        }))
        .expect("test spec");
        let mut model = FusedModel::new("m", spec);
        model.metadata.namespace = Some("ns".into());
        model.metadata.uid = Some("uid-1".into());
        model
    }

    fn pod(name: &str, ip: &str, ready: bool, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"containers": [], "nodeName": "node-1"},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("test pod");
        if terminating {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    fn ips(endpoints: &Endpoints) -> Vec<(String, i32)> {
        endpoints
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| {
                let port = s.ports.as_ref().expect("ports")[0].port;
                s.addresses
                    .iter()
                    .flatten()
                    .map(move |a| (a.ip.clone(), port))
            })
            .collect()
    }

    #[test]
    fn only_models_that_may_reach_zero_get_operator_endpoints() {
        let on_demand = json!({"minReplicas": 0, "maxReplicas": 2, "targetWaitingRequests": 2});
        assert!(scales_to_zero(&model(on_demand)));
        assert!(!scales_to_zero(&model(
            json!({"minReplicas": 1, "maxReplicas": 2, "targetWaitingRequests": 2})
        )));
        assert!(!scales_to_zero(&model(
            json!({"minReplicas": 0, "maxReplicas": 2, "metricSource": "external"})
        )));
    }

    #[test]
    fn serving_replicas_win_over_the_activator() {
        let m = model(json!({"minReplicas": 0, "maxReplicas": 3, "targetWaitingRequests": 2}));
        let activator: Vec<SocketAddr> = vec![
            "10.1.0.7:8081".parse().expect("addr"),
            "10.1.0.8:8081".parse().expect("addr"),
        ];
        let pods = [
            pod("a", "10.2.0.1", true, false),
            pod("b", "10.2.0.2", false, false),
            pod("c", "10.2.0.3", true, true),
        ];
        let (written, target) = endpoints(&m, &pods, &activator).expect("endpoints");
        assert_eq!(target, Target::Replicas);
        assert_eq!(
            ips(&written),
            [("10.2.0.1".to_owned(), 8000)],
            "not ready and terminating Pods get no request"
        );
        let address = &written.subsets.as_ref().expect("subsets")[0]
            .addresses
            .as_ref()
            .expect("addresses")[0];
        assert_eq!(
            address.target_ref.as_ref().and_then(|r| r.name.as_deref()),
            Some("a")
        );
        assert_eq!(
            written.metadata.owner_references.as_ref().map(Vec::len),
            Some(1),
            "owned by the FusedModel"
        );

        let (written, target) = endpoints(&m, &pods[1..], &activator).expect("endpoints");
        assert_eq!(target, Target::Activator);
        assert_eq!(
            ips(&written),
            [("10.1.0.7".to_owned(), 8081), ("10.1.0.8".to_owned(), 8081)]
        );
        let (written, target) = endpoints(&m, &[], &[]).expect("endpoints");
        assert_eq!(target, Target::Nowhere);
        assert_eq!(written.subsets, Some(Vec::new()));
    }

    #[test]
    fn ready_addresses_read_every_subset() {
        let endpoints: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "activator"},
            "subsets": [
                {"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
                 "notReadyAddresses": [{"ip": "10.0.0.9"}],
                 "ports": [{"name": "http", "port": 8081}]},
            ]
        }))
        .expect("endpoints");
        assert_eq!(
            ready_addresses(&endpoints),
            [
                "10.0.0.1:8081".parse::<SocketAddr>().expect("addr"),
                "10.0.0.2:8081".parse().expect("addr")
            ]
        );
    }
}
