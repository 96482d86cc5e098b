//! Leader election on a real Lease (kube-apiserver v1.20, loopback): one leader at a time,
//! renewals keep it, a silent leader is replaced after the lease duration, a released Lease
//! is taken over at once, and a leader whose renewal hangs (a proxy that stalls the Lease PUT)
//! stops its work within the renew deadline, before anyone else may lead.

mod operator_support;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kube::Client;
use kube::client::ClientBuilder;

use fused_operator::leader::{LeaderElector, LeaseTiming};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use operator_support::*;

fn timing() -> LeaseTiming {
    LeaseTiming {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_with_takeover_and_release() {
    let cluster = cluster(false).await;
    let client = cluster.client().expect("client");
    let ns = "op-leader";
    create_namespace(&client, ns).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let a = Arc::new(LeaderElector::new(
        client.clone(),
        ns,
        "fused-operator",
        "a",
        timing(),
    ));
    let b = Arc::new(LeaderElector::new(
        client.clone(),
        ns,
        "fused-operator",
        "b",
        timing(),
    ));

    // Both campaign at once: exactly one wins.
    let (won_a, won_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    println!("simultaneous campaign: a={won_a} b={won_b}");
    assert!(won_a ^ won_b, "exactly one leader");
    let (leader, follower) = if won_a {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };

    // The leader renews; the follower keeps losing while renewals continue.
    let mut last_renewal = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(leader.try_acquire_or_renew().await.unwrap());
        last_renewal = Instant::now();
        assert!(!follower.try_acquire_or_renew().await.unwrap());
    }
    let lease = leases.get("fused-operator").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some(leader.identity()));
    assert_eq!(lease.lease_transitions, Some(0));

    // The leader goes silent: the follower takes over once the record has not moved for the
    // lease duration (3 s) since its last renewal, not before.
    follower.acquire().await;
    let waited = last_renewal.elapsed();
    println!("takeover after {:.1} s of silence", waited.as_secs_f64());
    assert!(
        waited >= Duration::from_secs(3),
        "took over after only {waited:?}"
    );
    assert!(
        !leader.try_acquire_or_renew().await.unwrap(),
        "the old leader has lost"
    );
    let lease = leases.get("fused-operator").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some(follower.identity()));
    assert_eq!(lease.lease_transitions, Some(1));

    // Released: the other candidate takes it on its next attempt, without waiting.
    follower.release().await.unwrap();
    assert_eq!(lease_holder(&leases).await, None);
    assert!(leader.try_acquire_or_renew().await.unwrap());
    println!("after release: {} leads again", leader.identity());
}

/// A proxy in front of the API server (a layer of the client's HTTP stack) that, once `stall`
/// is set, holds every PUT of a Lease forever: a renewal that hangs.
#[derive(Clone)]
struct StallLeasePuts<S> {
    inner: S,
    stall: Arc<AtomicBool>,
}

impl<S, B> tower::Service<http::Request<B>> for StallLeasePuts<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let stalled = self.stall.load(Ordering::SeqCst)
            && request.method() == http::Method::PUT
            && request.uri().path().contains("/leases/");
        let answer = self.inner.call(request);
        Box::pin(async move {
            if stalled {
                std::future::pending::<()>().await;
            }
            answer.await
        })
    }
}

async fn stalling_client(kubeconfig: &std::path::Path) -> (Client, Arc<AtomicBool>) {
    let config = client_config(kubeconfig).await;
    let stall = Arc::new(AtomicBool::new(false));
    let flag = stall.clone();
    let layer = tower::layer::layer_fn(move |inner| StallLeasePuts {
        inner,
        stall: flag.clone(),
    });
    let client = ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, stall)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_renewal_stops_the_leader_before_its_lease_expires() {
    let cluster = cluster(false).await;
    let client = cluster.client().expect("client");
    let ns = "op-leader-stall";
    create_namespace(&client, ns).await;
    let timing = timing();
    timing.check().expect("consistent timing");
    let (stalling, stall) = stalling_client(cluster.kubeconfig()).await;
    let leader = LeaderElector::new(stalling, ns, "fused-operator", "stalled", timing);
    leader.acquire().await;

    // The leader's work: a counter that ticks while it runs.
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = ticks.clone();
    let work = async move {
        loop {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let leading = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stall.store(true, Ordering::SeqCst);
        Instant::now()
    };
    let (outcome, stalled_at) = tokio::join!(
        tokio::time::timeout(timing.lease_duration * 4, leader.run_while_leading(work)),
        leading
    );
    let outcome = outcome.expect("leadership ends instead of hanging on the renewal");
    let stopped_after = stalled_at.elapsed();
    assert!(outcome.is_none(), "the work never finishes by itself");
    println!(
        "renewals stalled: the leader stopped {:.2} s later (renew deadline {:?}, lease {:?})",
        stopped_after.as_secs_f64(),
        timing.renew_deadline,
        timing.lease_duration
    );
    assert!(
        stopped_after < timing.lease_duration,
        "stopped {stopped_after:?} after the stall, not within the lease"
    );
    let seen = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), seen, "the work was dropped");

    // Only then may another candidate lead.
    let follower = LeaderElector::new(client.clone(), ns, "fused-operator", "follower", timing);
    follower.acquire().await;
    let took_over = stalled_at.elapsed();
    println!(
        "the follower led {:.2} s after the stall",
        took_over.as_secs_f64()
    );
    assert!(took_over > stopped_after, "no two leaders at once");
}
