//! How the operator reaches a daemon Pod's HTTP port — for its scrapes of `/metrics` and the
//! activator's forwarding: in a cluster, the Pod's IP and port as they are. The loopback test
//! suites, which run each "Pod" as a local process behind a made-up Pod IP, map the address to
//! the process's; nothing else may.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::workload::HTTP_PORT;

type Map = dyn Fn(SocketAddr) -> SocketAddr + Send + Sync;

/// Resolves a Pod's address to the socket the operator connects to.
#[derive(Clone)]
pub struct PodNetwork(Option<Arc<Map>>);

impl PodNetwork {
    /// Pod IPs are reachable as they are (in a cluster).
    pub fn direct() -> Self {
        Self(None)
    }

    /// Pod addresses go through `map` (the tests' stand-in for a Pod network).
    pub fn mapped(map: impl Fn(SocketAddr) -> SocketAddr + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(map)))
    }

    /// The socket to connect to for `address`.
    pub fn resolve(&self, address: SocketAddr) -> SocketAddr {
        match &self.0 {
            Some(map) => map(address),
            None => address,
        }
    }

    /// The socket of the daemon's HTTP port on `pod`, if it has an IP.
    pub fn daemon(&self, pod: &Pod) -> Option<SocketAddr> {
        let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        let port = u16::try_from(HTTP_PORT).ok()?;
        Some(self.resolve(SocketAddr::new(ip, port)))
    }
}

impl Default for PodNetwork {
    fn default() -> Self {
        Self::direct()
    }
}

impl fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "PodNetwork::mapped"
        } else {
            "PodNetwork::direct"
        })
    }
}
