//! The FusedModel operator: reconciles each `FusedModel` into a Deployment of serving daemons
//! (with init containers that fetch and verify the artifacts into a node-local cache) and a
//! Service; scales it on the daemons' serving signals (its own autoscaler, or an HPA on a
//! custom-metrics adapter), to zero and back through its activator; and reports what it sees in
//! the FusedModel's status and Events.
//!
//! - [`controller`]: `reconcile`, `error_policy`, `run` — the one entry point;
//! - [`workload`], [`fetch_step`], [`pod_security`], [`service`], [`endpoints`], [`autoscaler`],
//!   [`network_policy`], [`disruption_budget`]: the desired children (pure);
//! - [`autoscale`], [`scrape`]: the built-in autoscaler and its reads of `/metrics`;
//! - [`activator`]: holds requests for a model at zero replicas, wakes it, forwards them;
//! - [`pod_network`]: how the operator reaches a daemon Pod;
//! - [`spec_check`]: spec problems the schema cannot catch;
//! - [`observe`], [`conditions`], [`events`]: from the cluster's view to status and Events;
//! - [`apply`]: server-side apply only when something differs;
//! - [`leader`], [`http`], [`metrics`]: what the binary needs to run in a cluster;
//! - [`api_versions`]: which versions of an API group the server serves, a kind in one of them;
//! - [`rbac`]: the permissions it needs, as one ClusterRole.

pub mod activator;
pub mod api_versions;
pub mod apply;
pub mod autoscale;
pub mod autoscaler;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod disruption_budget;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod fetch_step;
pub mod http;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod network_policy;
pub mod observe;
pub mod pod_network;
pub mod pod_security;
pub mod quantity;
pub mod rbac;
pub mod scrape;
pub mod service;
pub mod spec_check;
pub mod workload;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reconcile_tests;

pub use config::OperatorConfig;
pub use context::Context;
pub use controller::{error_policy, reconcile, run};
pub use error::{Error, Result};
pub use metrics::Metrics;
