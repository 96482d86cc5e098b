//! Leader election on a real Lease (kube-apiserver v1.20, loopback): one leader at a time,
//! renewals keep it, a silent leader is replaced after the lease duration, and a released Lease
//! is taken over at once.

mod operator_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

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
