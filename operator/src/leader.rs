//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! the Lease every retry period; another instance takes it over once the holder's record has not
//! changed for a lease duration (judged on the local clock, so clock skew between nodes does not
//! matter); updates carry the resourceVersion so two candidates cannot both win. Only the leader
//! reconciles, and only until its renew deadline (shorter than the lease) passes without a
//! successful renewal: every renewal attempt is cut off at that deadline, so a hung request
//! cannot keep an old leader working after a successor may have taken over. It knows nothing
//! about FusedModels.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Timing of the election (client-go's defaults).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Checks that a leader stops before others may take over: the renew deadline is shorter
    /// than the lease, and the retry period shorter than the renew deadline.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for leadership of one Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    lease: String,
    namespace: String,
    identity: String,
    timing: LeaseTiming,
    observed: Mutex<Option<Observation>>,
    /// When the last successful acquire or renew started (we held the Lease at least then).
    renewed_at: Mutex<Option<tokio::time::Instant>>,
}

/// The last holder record seen, and when it was first seen.
#[derive(Debug, Clone)]
struct Observation {
    record: (Option<String>, Option<MicroTime>),
    since: Instant,
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease `namespace/lease`; `timing` must pass
    /// [`LeaseTiming::check`] (the binary checks it at start).
    pub fn new(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            lease: lease.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Mutex::new(None),
            renewed_at: Mutex::new(None),
        }
    }

    /// This candidate's identity (the Lease's `holderIdentity` while it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to acquire or renew; `true` when this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let started = tokio::time::Instant::now();
        let held = self.acquire_or_renew_once().await?;
        if held {
            *self
                .renewed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(started);
        }
        Ok(held)
    }

    async fn acquire_or_renew_once(&self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(lease) = self
            .api
            .get_opt(&self.lease)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.settle(self.api.create(&PostParams::default(), &lease).await);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() != Some(self.identity.as_str()) {
            if holder.is_some() && !self.expired(&spec) {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.lease_seconds());
        let updated = Lease {
            spec: Some(spec),
            ..lease
        };
        self.settle(
            self.api
                .replace(&self.lease, &PostParams::default(), &updated)
                .await,
        )
    }

    /// Waits until this candidate leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.lease, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "acquiring the leader Lease"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every retry period; returns when leadership is lost: another holder
    /// took it, or no renewal succeeded within the renew deadline of the last one (an attempt
    /// still hanging then is abandoned).
    pub async fn hold(&self) {
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let deadline = self.renew_deadline();
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.lease, "another instance took the leader Lease");
                    return;
                }
                Ok(Err(error)) => tracing::warn!(%error, "renewing the leader Lease"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= self.renew_deadline() {
                tracing::error!(lease = %self.lease, deadline = ?self.timing.renew_deadline, "could not renew the leader Lease within the renew deadline");
                return;
            }
        }
    }

    /// Runs `work` while this candidate leads (call after [`acquire`](Self::acquire)):
    /// `Some(output)` when it finishes first, `None` when leadership was lost first, in which
    /// case `work` is dropped at once, so nothing it does outlives the renew deadline.
    pub async fn run_while_leading<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            () = self.hold() => None,
        }
    }

    /// Gives the Lease up if this candidate holds it, so a successor need not wait it out.
    pub async fn release(&self) -> Result<()> {
        let Some(lease) = self
            .api
            .get_opt(&self.lease)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let released = Lease {
            spec: Some(spec),
            ..lease
        };
        self.api
            .replace(&self.lease, &PostParams::default(), &released)
            .await
            .map_err(|e| self.error(e))?;
        tracing::info!(lease = %self.lease, "released the leader Lease");
        Ok(())
    }

    /// When leading ends without another successful renewal: the renew deadline after the last
    /// one (now, if there was none).
    fn renew_deadline(&self) -> tokio::time::Instant {
        let renewed_at = *self
            .renewed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        renewed_at.map_or_else(tokio::time::Instant::now, |at| {
            at + self.timing.renew_deadline
        })
    }

    /// Whether the holder's record has stayed the same for its lease duration, as seen here.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some(seen) if seen.record == record => seen.since.elapsed() > duration,
            _ => {
                *observed = Some(Observation {
                    record,
                    since: Instant::now(),
                });
                false
            }
        }
    }

    /// `Ok(true)` for a write that went through, `Ok(false)` when another candidate won.
    fn settle(&self, result: kube::Result<Lease>) -> Result<bool> {
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn error(&self, source: kube::Error) -> Error {
        Error::LeaderElection {
            lease: format!("{}/{}", self.namespace, self.lease),
            source,
        }
    }
}

/// A candidate identity unique to this process: `$POD_NAME` or the host name, plus the PID and
/// start time.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()))
        .unwrap_or_else(|_| "fused-operator".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    format!("{host}_{}_{started}", std::process::id())
}
