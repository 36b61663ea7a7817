//! Leader election against kube-rs's mock API and a manual clock: the skew between
//! nodes' clocks never makes two replicas lead, and never keeps a dead holder's lease.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authplane::clock::ManualClock;
use authplane::operator::lease::{Elector, LeaseSettings};
use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};

use common::mock_api::{self, Handle, within};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/authplane/leases/authplane-leader";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/authplane/leases";

fn t0() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: "authplane-leader".into(),
        namespace: "authplane".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        renew_every: Duration::from_secs(5),
    }
}

fn api() -> (Api<Lease>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Api::namespaced(Client::new(service, "default"), "authplane"),
        handle,
    )
}

fn elector(identity: &str) -> (Elector, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    (Elector::new(settings(identity), clock.clone()), clock)
}

/// The lease as another node wrote it: `renewed` is by that node's clock.
fn held_by(holder: &str, renewed: Timestamp, resource_version: u32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "authplane-leader", "namespace": "authplane",
                        "resourceVersion": resource_version.to_string()},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "renewTime": micro(renewed), "acquireTime": "2026-01-01T00:00:00.000000Z",
                    "leaseTransitions": 2}})
}

fn micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

/// Answers the next request, which must be `method path`; returns the body it carried.
/// A `Value::Null` answer echoes the body with the next resourceVersion, as the
/// apiserver does on a successful write.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    answer: Value,
) -> Value {
    mock_api::expect_echoing(handle, method, path, status, answer, |body| {
        let mut echo = body.clone();
        let version: u32 = echo["metadata"]["resourceVersion"]
            .as_str()
            .map_or(0, |v| v.parse().unwrap());
        echo["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        echo
    })
    .await
}

/// A round in which the elector reads `lease` and must not write.
async fn round_without_write(
    elector: &mut Elector,
    leases: &Api<Lease>,
    handle: &mut Handle,
    lease: Value,
) -> bool {
    let (held, _) = within(async {
        tokio::join!(
            elector.try_acquire_or_renew(leases),
            expect(handle, "GET", LEASE, 200, lease)
        )
    })
    .await;
    held.unwrap()
}

/// A round in which the elector reads `lease` and writes itself as the holder; returns
/// whether it holds the lease and what it wrote.
async fn round_with_write(
    elector: &mut Elector,
    leases: &Api<Lease>,
    handle: &mut Handle,
    lease: Value,
    write_status: u16,
    write_answer: Value,
) -> (bool, Value) {
    let (held, written) = within(async {
        tokio::join!(elector.try_acquire_or_renew(leases), async {
            expect(handle, "GET", LEASE, 200, lease).await;
            expect(handle, "PUT", LEASE, write_status, write_answer).await
        })
    })
    .await;
    (held.unwrap(), written)
}

async fn assert_no_further_requests(leases: Api<Lease>, mut handle: Handle) {
    drop(leases);
    assert!(handle.next_request().await.is_none(), "nothing else sent");
}

#[tokio::test]
async fn an_absent_lease_is_created() {
    let (leases, mut handle) = api();
    let (mut elector, _clock) = elector("pod-a");
    let (held, _) = within(async {
        tokio::join!(elector.try_acquire_or_renew(&leases), async {
            expect(&mut handle, "GET", LEASE, 404, not_found()).await;
            let lease = expect(&mut handle, "POST", LEASES, 201, Value::Null).await;
            assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
            assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        })
    })
    .await;
    assert!(held.unwrap());
    assert!(elector.is_leader());
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_holder_whose_clock_is_behind_but_keeps_renewing_is_never_taken_over() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    // pod-b's node is an hour behind: by our clock its lease expired long ago.
    let behind = t0() - secs(3600);
    for round in 0..20_i64 {
        let lease = held_by("pod-b", behind + secs(5 * round), 5 + round as u32);
        assert!(
            !round_without_write(&mut elector, &leases, &mut handle, lease).await,
            "taken over at round {round} although pod-b renews"
        );
        assert!(!elector.is_leader());
        clock.advance(secs(5));
    }
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_holder_whose_clock_is_ahead_and_stops_renewing_is_taken_over_after_one_duration() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    // pod-b's node is an hour ahead: by our clock its last renewal lies in the future.
    let lease = held_by("pod-b", t0() + secs(3600), 5);
    for at in [0, 5, 10, 14] {
        clock.set(t0() + secs(at));
        assert!(
            !round_without_write(&mut elector, &leases, &mut handle, lease.clone()).await,
            "taken over {at} s after pod-b's last renewal was seen"
        );
    }
    clock.set(t0() + secs(15));
    let (held, written) =
        round_with_write(&mut elector, &leases, &mut handle, lease, 200, Value::Null).await;
    assert!(held);
    assert!(elector.is_leader());
    assert_eq!(written["metadata"]["resourceVersion"], "5");
    assert_eq!(written["spec"]["holderIdentity"], "pod-a");
    assert_eq!(written["spec"]["leaseTransitions"], 3);
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_candidate_that_has_just_started_waits_a_full_duration() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    // By its renewTime this lease expired a minute ago; but this replica has not seen
    // it unchanged for a duration yet.
    let lease = held_by("pod-b", t0() - secs(60), 5);
    assert!(!round_without_write(&mut elector, &leases, &mut handle, lease.clone()).await);
    clock.set(t0() + secs(14));
    assert!(!round_without_write(&mut elector, &leases, &mut handle, lease.clone()).await);
    clock.set(t0() + secs(15));
    let (held, _) =
        round_with_write(&mut elector, &leases, &mut handle, lease, 200, Value::Null).await;
    assert!(held);
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let (leases, mut handle) = api();
    let (mut elector, _clock) = elector("pod-a");
    let mut released = held_by("pod-b", t0(), 5);
    released["spec"]["holderIdentity"] = Value::Null;
    let (held, _) = round_with_write(
        &mut elector,
        &leases,
        &mut handle,
        released,
        200,
        Value::Null,
    )
    .await;
    assert!(held);
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_conflict_on_the_write_means_not_leader() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    let lease = held_by("pod-b", t0(), 5);
    assert!(!round_without_write(&mut elector, &leases, &mut handle, lease.clone()).await);
    clock.advance(secs(15));
    let (held, written) =
        round_with_write(&mut elector, &leases, &mut handle, lease, 409, conflict()).await;
    assert_eq!(written["metadata"]["resourceVersion"], "5");
    assert!(!held);
    assert!(!elector.is_leader());
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_conflict_on_creating_the_lease_means_not_leader() {
    let (leases, mut handle) = api();
    let (mut elector, _clock) = elector("pod-a");
    let (held, _) = within(async {
        tokio::join!(elector.try_acquire_or_renew(&leases), async {
            expect(&mut handle, "GET", LEASE, 404, not_found()).await;
            expect(&mut handle, "POST", LEASES, 409, conflict()).await;
        })
    })
    .await;
    assert!(!held.unwrap());
    assert!(!elector.is_leader());
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn of_two_candidates_in_one_round_only_one_wins() {
    let (leases, mut handle) = api();
    let (mut a, clock_a) = elector("pod-a");
    let (mut b, clock_b) = elector("pod-b");
    let dead = held_by("pod-c", t0(), 5);
    // Both have watched pod-c's lease stay unchanged for a duration.
    for (elector, clock) in [(&mut a, &clock_a), (&mut b, &clock_b)] {
        assert!(!round_without_write(elector, &leases, &mut handle, dead.clone()).await);
        clock.advance(secs(15));
    }
    let server = async {
        expect(&mut handle, "GET", LEASE, 200, dead.clone()).await;
        expect(&mut handle, "GET", LEASE, 200, dead.clone()).await;
        // The apiserver accepts the first write based on resourceVersion 5 ...
        let first = expect(&mut handle, "PUT", LEASE, 200, Value::Null).await;
        // ... and refuses the second, based on the same version.
        let second = expect(&mut handle, "PUT", LEASE, 409, conflict()).await;
        assert_eq!(first["metadata"]["resourceVersion"], "5");
        assert_eq!(second["metadata"]["resourceVersion"], "5");
    };
    let (held_a, held_b, ()) = within(async {
        tokio::join!(
            a.try_acquire_or_renew(&leases),
            b.try_acquire_or_renew(&leases),
            server
        )
    })
    .await;
    assert!(held_a.unwrap() ^ held_b.unwrap(), "exactly one leads");
    assert!(a.is_leader() ^ b.is_leader());
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_holder_stops_leading_when_it_cannot_renew_within_its_deadline() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    let (held, _) = within(async {
        tokio::join!(elector.try_acquire_or_renew(&leases), async {
            expect(&mut handle, "GET", LEASE, 404, not_found()).await;
            expect(&mut handle, "POST", LEASES, 201, Value::Null).await;
        })
    })
    .await;
    assert!(held.unwrap());
    // No renewal gets through (the apiserver is away): by its own clock the holder
    // stops at renew_deadline, 5 s before others may take over at the lease duration.
    clock.advance(secs(9));
    assert!(elector.is_leader());
    clock.advance(secs(1));
    assert!(!elector.is_leader());
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_renewal_that_answers_after_the_deadline_does_not_keep_leading() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    let mine = held_by("pod-a", t0(), 5);
    let (held, _) = within(async {
        tokio::join!(elector.try_acquire_or_renew(&leases), async {
            expect(&mut handle, "GET", LEASE, 200, mine.clone()).await;
            // The apiserver is slow: the answer comes 10 s after the renewal started.
            clock.advance(secs(10));
            expect(&mut handle, "PUT", LEASE, 200, Value::Null).await;
        })
    })
    .await;
    assert!(held.unwrap(), "the lease was written");
    assert!(!elector.is_leader(), "but too late to rely on it");
    assert_no_further_requests(leases, handle).await;
}

#[tokio::test]
async fn a_failed_renewal_stops_leading_at_once() {
    let (leases, mut handle) = api();
    let (mut elector, clock) = elector("pod-a");
    let mine = held_by("pod-a", t0(), 5);
    let (held, _) =
        round_with_write(&mut elector, &leases, &mut handle, mine, 200, Value::Null).await;
    assert!(held && elector.is_leader());
    clock.advance(secs(5));
    let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "etcd is unhappy"});
    let (result, _) = within(async {
        tokio::join!(
            elector.try_acquire_or_renew(&leases),
            expect(&mut handle, "GET", LEASE, 503, unavailable)
        )
    })
    .await;
    assert!(result.is_err());
    assert!(!elector.is_leader());
    assert_no_further_requests(leases, handle).await;
}

/// The loop itself: leadership is published, and a renewal that hangs ends it.
#[tokio::test]
async fn the_run_loop_stops_leading_while_a_renewal_hangs() {
    let (leases, mut handle) = api();
    let settings = LeaseSettings {
        renew_every: Duration::from_millis(50),
        ..settings("pod-a")
    };
    let (leader_tx, mut leader) = tokio::sync::watch::channel(false);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clock = Arc::new(ManualClock::new(t0()));
    let running = tokio::spawn(authplane::operator::lease::run(
        leases, settings, clock, leader_tx, stopped,
    ));
    expect(&mut handle, "GET", LEASE, 404, not_found()).await;
    expect(&mut handle, "POST", LEASES, 201, Value::Null).await;
    within(leader.wait_for(|l| *l)).await.unwrap();
    // The renewal's GET is never answered.
    let (_hanging, _respond) = within(handle.next_request()).await.unwrap();
    within(leader.wait_for(|l| !*l)).await.unwrap();
    stop.send(true).unwrap();
    // Further rounds may have started and hang as well: the loop still ends.
    within(running).await.unwrap();
    assert!(!*leader.borrow());
}
