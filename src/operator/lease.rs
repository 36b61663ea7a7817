//! Leader election with a `coordination.k8s.io/v1` Lease, written by hand: the loop is
//! small, and kube-runtime 5 has none while the lease crates trail kube's major versions.
//! Every replica serves; only the holder writes, and it stops the moment a renewal fails.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and others look).
    pub renew_every: Duration,
}

/// One attempt: `true` if this replica holds the lease afterwards.
pub async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let duration_secs = settings.duration.as_secs().clamp(1, i32::MAX as u64) as i32;
    let existing = api.get_opt(&settings.name).await?;
    let (resource_version, spec) = match existing {
        None => (None, LeaseSpec::default()),
        Some(lease) => (
            lease.metadata.resource_version,
            lease.spec.unwrap_or_default(),
        ),
    };
    let mine = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    let valid_until = spec
        .renew_time
        .as_ref()
        .zip(spec.lease_duration_seconds)
        .and_then(|(MicroTime(renewed), secs)| {
            renewed
                .checked_add(SignedDuration::from_secs(i64::from(secs)))
                .ok()
        });
    let held_by_other = !mine
        && spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty())
        && valid_until.is_some_and(|until| until > now);
    if held_by_other {
        return Ok(false);
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            resource_version: resource_version.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0)
                    + i32::from(!mine && resource_version.is_some()),
            ),
            ..LeaseSpec::default()
        }),
    };
    // resourceVersion makes a race between two candidates a 409 for one of them.
    let written = match resource_version {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => {
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
        }
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Holds (or waits for) the lease until `shutdown`, publishing leadership on `leader`.
/// A failed or late renewal drops leadership at once; on shutdown the lease is released
/// so that another replica takes over without waiting for it to expire.
pub async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let attempt = tokio::time::timeout(
            settings.renew_every,
            try_acquire(&api, &settings, Timestamp::now()),
        )
        .await;
        let held = match attempt {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!("lease {}/{}: {e}", settings.namespace, settings.name);
                false
            }
            Err(_) => {
                tracing::warn!(
                    "lease {}/{}: renewal timed out",
                    settings.namespace,
                    settings.name
                );
                false
            }
        };
        leader.send_if_modified(|current| {
            if *current != held {
                tracing::info!(identity = %settings.identity, "leadership {}", if held { "acquired" } else { "lost" });
                *current = held;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(settings.renew_every) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        release(&api, &settings).await;
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    if let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(settings.identity.as_str())
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = api
            .replace(&settings.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!("releasing the lease: {e}");
        }
    }
}
