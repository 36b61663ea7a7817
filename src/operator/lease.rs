//! Leader election with a `coordination.k8s.io/v1` Lease, written by hand after client-go's
//! `leaderelection`: the loop is small, and kube-runtime 5 has none.
//!
//! Every replica serves; only the holder writes. Nodes' clocks disagree, so no decision
//! compares a time written by another node with the local clock:
//! - a candidate remembers the lease record it last saw and *when, on its own clock*, it
//!   saw it change; the lease is expired only after `leaseDurationSeconds` of local time
//!   without a change. A candidate that has just started waits a full duration.
//! - the holder leads only while its last successful renewal *started* less than
//!   `renew_deadline` ago on its own clock. Others observe that renewal after it started
//!   and wait `duration > renew_deadline` from then, so the old leader has stopped before
//!   a new one can start (clock offsets cancel out; only clock rates matter).
//! - every write carries the resourceVersion it was based on, so of two candidates in
//!   the same round one wins and the other gets a 409.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::keys::lifecycle::add;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// How long others wait, on their own clocks, for a renewal before taking over.
    pub duration: Duration,
    /// How long the holder keeps leading after the start of its last successful renewal,
    /// on its own clock. Shorter than `duration`, so that it stops before others start.
    pub renew_deadline: Duration,
    /// How often the holder renews (and others look). Shorter than `renew_deadline`.
    pub renew_every: Duration,
}

/// The lease as last seen, and when this replica saw it change.
#[derive(Debug)]
struct Observed {
    /// Changes with every write, whatever the writer's clock says.
    resource_version: Option<String>,
    spec: LeaseSpec,
    /// Local time of the first sight of this record.
    at: Timestamp,
}

impl Observed {
    fn same_record(&self, lease: &Lease) -> bool {
        self.resource_version == lease.metadata.resource_version
            && Some(&self.spec) == lease.spec.as_ref()
    }
}

/// One replica's side of the election: what it saw and when, on its own clock.
pub struct Elector {
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
    observed: Option<Observed>,
    /// Local time at which the last successful acquisition or renewal started.
    renewed_at: Option<Timestamp>,
}

impl Elector {
    pub fn new(settings: LeaseSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            clock,
            observed: None,
            renewed_at: None,
        }
    }

    /// Whether this replica may write now: its last renewal started less than
    /// `renew_deadline` ago by its own clock.
    pub fn is_leader(&self) -> bool {
        self.time_to_deadline().is_some()
    }

    /// Local time left before the holder must stop leading; `None` when not leading.
    fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = add(self.renewed_at?, signed(self.settings.renew_deadline));
        Duration::try_from(deadline.duration_since(self.clock.now()))
            .ok()
            .filter(|left| !left.is_zero())
    }

    /// One round of client-go's `tryAcquireOrRenew`: `true` if this replica holds the
    /// lease afterwards. A failure, a conflict, or this future being dropped midway all
    /// leave this replica not leading.
    pub async fn try_acquire_or_renew(&mut self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        self.renewed_at = None;
        let started = self.clock.now();
        let Some(current) = api.get_opt(&self.settings.name).await? else {
            return self.write(api, None, &LeaseSpec::default(), started).await;
        };
        let seen_at = self.clock.now();
        if !self
            .observed
            .as_ref()
            .is_some_and(|o| o.same_record(&current))
        {
            self.observed = Some(Observed {
                resource_version: current.metadata.resource_version.clone(),
                spec: current.spec.clone().unwrap_or_default(),
                at: seen_at,
            });
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if !holder.is_empty() && holder != self.settings.identity && !self.expired(seen_at) {
            return Ok(false);
        }
        self.write(api, current.metadata.resource_version, &spec, started)
            .await
    }

    /// The observed record has not changed for its lease duration of local time.
    fn expired(&self, now: Timestamp) -> bool {
        let Some(observed) = &self.observed else {
            return true;
        };
        let duration = observed
            .spec
            .lease_duration_seconds
            .filter(|secs| *secs > 0)
            .map_or(signed(self.settings.duration), |secs| {
                SignedDuration::from_secs(i64::from(secs))
            });
        now >= add(observed.at, duration)
    }

    /// Writes this replica as the holder, based on `resource_version` (create when `None`),
    /// so that a concurrent write by another candidate makes this one a 409.
    async fn write(
        &mut self,
        api: &Api<Lease>,
        resource_version: Option<String>,
        previous: &LeaseSpec,
        started: Timestamp,
    ) -> Result<bool, kube::Error> {
        let settings = &self.settings;
        let mine = previous.holder_identity.as_deref() == Some(settings.identity.as_str());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                resource_version: resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(
                    settings.duration.as_secs().clamp(1, i32::MAX as u64) as i32
                ),
                acquire_time: if mine {
                    previous.acquire_time.clone()
                } else {
                    Some(MicroTime(started))
                },
                // For people reading the lease; no replica trusts another's clock.
                renew_time: Some(MicroTime(started)),
                lease_transitions: Some(
                    previous.lease_transitions.unwrap_or(0)
                        + i32::from(!mine && resource_version.is_some()),
                ),
                ..LeaseSpec::default()
            }),
        };
        let written = match resource_version {
            None => api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                api.replace(&settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(written) => {
                self.observed = Some(Observed {
                    resource_version: written.metadata.resource_version,
                    spec: written.spec.unwrap_or_default(),
                    at: started,
                });
                self.renewed_at = Some(started);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// Holds (or waits for) the lease until `shutdown`, publishing leadership on `leader`.
/// Leadership drops at once when a renewal fails, and at the latest `renew_deadline`
/// after the last renewal started, even while a request hangs. On shutdown the lease is
/// released so that another replica takes over without waiting for it to expire.
pub async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let renew_every = settings.renew_every;
    let (namespace, name, identity) = (
        settings.namespace.clone(),
        settings.name.clone(),
        settings.identity.clone(),
    );
    let mut elector = Elector::new(settings, clock);
    let publish = |held: bool| {
        leader.send_if_modified(|current| {
            if *current != held {
                tracing::info!(identity = %identity, "leadership {}", if held { "acquired" } else { "lost" });
                *current = held;
                true
            } else {
                false
            }
        });
    };
    loop {
        publish(elector.is_leader());
        // A holder's attempt may not outlast its deadline: a hung request must not keep
        // it leading while others, seeing no renewal, take over.
        let budget = elector
            .time_to_deadline()
            .map_or(renew_every, |left| left.min(renew_every));
        match tokio::time::timeout(budget, elector.try_acquire_or_renew(&api)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("lease {namespace}/{name}: {e}"),
            Err(_) => tracing::warn!("lease {namespace}/{name}: renewal timed out"),
        }
        publish(elector.is_leader());
        // Wake up at the deadline at the latest, to stop writing then.
        let pause = elector
            .time_to_deadline()
            .map_or(renew_every, |left| left.min(renew_every));
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        release(&api, &name, &identity).await;
    }
}

async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    if let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(identity)
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = api.replace(name, &PostParams::default(), &lease).await {
            tracing::warn!("releasing the lease: {e}");
        }
    }
}
