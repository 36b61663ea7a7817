//! AuthPolicy status on a cluster: Accepted and Ready, the effective percentage, whether
//! each target exists, and the URLs to wire. The decisions themselves are served from
//! the registry on every replica; this controller only reports, and only on the leader.
//!
//! The status is the compiled policy's (its spec with the keys and external key sets it
//! resolved: the runtime's health), so it says what is served. Nothing polls for it: the
//! serving index announces every policy it compiles ([`Recompiled`]), and the
//! controller reconciles those, whether their own spec changed or a SigningKey they
//! name did.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use super::error::Error;
use super::targets::Targets;
use super::writer::LeaderWriter;
use crate::api::{
    AuthPolicy, AuthPolicyStatus, ObjectKey, RolloutProgress, Validate, condition, conditions,
};
use crate::clock::Clock;
use crate::driver::rollouts::{self, Recorded, RolloutStore};
use crate::policy::progression::{self, RolloutTracker, Schedule};
use crate::registry::{PolicyRuntime, Registry};

/// A safety net only: what the status reports changes through watches (the policy, its
/// keys through the serving index's announcements, its targets) or at known times (the
/// next rollout step, a legacy session's end, the external key sets' health).
pub const RECHECK: Duration = Duration::from_secs(300);
/// External issuers' key-set health is reported this fresh.
const EXTERNAL_RECHECK: Duration = Duration::from_secs(15);

pub struct PolicyContext {
    /// Which targets exist, from the target watches.
    pub targets: Arc<Targets>,
    pub registry: Arc<Registry>,
    pub external_url: String,
    pub clock: Arc<dyn Clock>,
    pub writer: LeaderWriter,
    /// The leader's own decisions feed the deny ratio of stepped rollouts: behind a load
    /// balancer, one replica's share is a fair sample.
    pub runtime: Arc<PolicyRuntime>,
    pub rollouts: std::sync::Mutex<RolloutTracker>,
}

pub async fn reconcile(policy: Arc<AuthPolicy>, ctx: Arc<PolicyContext>) -> Result<Action, Error> {
    let id = ObjectKey::of(&policy.metadata);
    let now = ctx.clock.now();
    let generation = policy.metadata.generation;
    let invalid = policy.validate();
    let mut requeue = RECHECK;
    let mut rollout = None;
    let status = if !invalid.is_empty() {
        let message: Vec<String> = invalid.iter().map(ToString::to_string).collect();
        AuthPolicyStatus {
            observed_generation: generation,
            conditions: vec![condition(
                conditions::ACCEPTED,
                false,
                conditions::reason::INVALID,
                message.join("; "),
                generation,
                now,
            )],
            ..AuthPolicyStatus::default()
        }
    } else {
        let snapshot = ctx.registry.load();
        let compiled = snapshot
            .policies
            .get(&id)
            .filter(|c| c.generation() == generation);
        let Some(compiled) = compiled else {
            // The serving view has not compiled this generation yet: it announces it
            // when it does, and this runs again then.
            return Ok(Action::requeue(RECHECK));
        };
        let mut status = compiled.status(&ctx.external_url, now, |target| {
            ctx.targets.exists(target.kind, &id.namespace, &target.name)
        });
        let totals = ctx.runtime.audit_totals(&id);
        let tracked = rollouts::track(
            &InStatus,
            &mut ctx.rollouts.lock().unwrap_or_else(|e| e.into_inner()),
            &ctx.runtime.metrics,
            &id,
            &policy,
            now,
            totals,
        );
        let schedule = Schedule::of(&policy.spec.rollout, tracked.progress.as_ref());
        progression::report(
            &mut status,
            policy.spec.rollout.mode,
            &schedule,
            tracked.progress.clone(),
            now,
        );
        // The status changes on its own at the next rollout step and as a legacy
        // session's end approaches and comes: report it then.
        for next in [tracked.next, compiled.next_status_change(now)]
            .into_iter()
            .flatten()
        {
            let wait = next.duration_since(now).unsigned_abs();
            requeue = requeue.min(wait.max(Duration::from_millis(100)));
        }
        if compiled.has_external_issuers() {
            // Fetch health changes without any object changing.
            requeue = requeue.min(EXTERNAL_RECHECK);
        }
        rollout = Some(tracked);
        status
    };
    let written = ctx.writer.status(policy.as_ref(), status).await?;
    if written && let Some(tracked) = &rollout {
        // Said once recorded: a write that failed (or was refused, the lease lost)
        // says nothing.
        rollouts::say_moved(&id, tracked);
    }
    Ok(Action::requeue(requeue))
}

/// The AuthPolicies the serving index compiled, announced to the status controller.
/// Announcements are sets, so a burst (a relist, a key named by many policies) asks for
/// each policy once; and they are kept only while a controller listens (on the leader),
/// so a follower keeps nothing.
#[derive(Default)]
pub struct Recompiled {
    ids: Mutex<BTreeSet<ObjectKey>>,
    wake: Notify,
    listeners: AtomicUsize,
}

/// A listener's presence: counted while its trigger stream lives.
struct Listening(Arc<Recompiled>);

impl Drop for Listening {
    fn drop(&mut self) {
        if self.0.listeners.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.take();
        }
    }
}

impl Recompiled {
    pub fn announce(&self, ids: BTreeSet<ObjectKey>) {
        if ids.is_empty() || self.listeners.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids);
        self.wake.notify_one();
    }

    fn take(&self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The policies announced from now on, for `Controller::reconcile_on`, until the
    /// stream is dropped (the lease is lost). A controller that starts reconciles every
    /// policy anyway, so nothing from before is needed.
    pub fn triggers<K>(self: Arc<Self>) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: kube::Resource<DynamicType = ()> + 'static,
    {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        let listening = Listening(self);
        futures::stream::unfold(listening, |listening| async move {
            loop {
                listening.0.wake.notified().await;
                let ids = listening.0.take();
                if !ids.is_empty() {
                    return Some((ids, listening));
                }
            }
        })
        .flat_map(|ids| {
            futures::stream::iter(
                ids.into_iter()
                    .map(|id| ObjectRef::new(&id.name).within(&id.namespace)),
            )
        })
    }
}

/// On a cluster, a rollout's progress is recorded in the AuthPolicy's status: it is read
/// from the object, and the status written after tracking carries it (the leader's
/// writer), so saving here has nothing left to do.
struct InStatus;

impl RolloutStore for InStatus {
    type Error = std::convert::Infallible;

    fn load(&self, _: &ObjectKey, policy: &AuthPolicy) -> Result<Recorded, Self::Error> {
        Ok(Recorded {
            progress: policy.status.as_ref().and_then(|s| s.rollout.clone()),
            restore: false,
        })
    }

    fn save(&self, _: &ObjectKey, _: &RolloutProgress) -> Result<(), Self::Error> {
        Ok(())
    }

    fn remove(&self, _: &ObjectKey) -> Result<(), Self::Error> {
        Ok(())
    }
}

pub async fn reconcile_guarded(
    guard: Arc<DeserializeGuard<AuthPolicy>>,
    ctx: Arc<PolicyContext>,
) -> Result<Action, Error> {
    match &guard.0 {
        Ok(policy) => reconcile(Arc::new(policy.clone()), ctx).await,
        Err(invalid) => {
            tracing::warn!(auth_policy = %ObjectKey::of(&invalid.metadata), "skipped, it does not parse: {}", invalid.error);
            Ok(Action::await_change())
        }
    }
}

pub fn error_policy(
    guard: Arc<DeserializeGuard<AuthPolicy>>,
    error: &Error,
    _: Arc<PolicyContext>,
) -> Action {
    if let Ok(policy) = &guard.0 {
        tracing::warn!(auth_policy = %policy.name_any(), "status update failed: {error}");
    }
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn announcements_reach_the_controller_once_each_and_only_while_it_listens() {
        let feed = Arc::new(Recompiled::default());
        // Announced while no controller listened (a follower): nothing is kept, and a
        // new controller reconciles every policy anyway.
        feed.announce(BTreeSet::from([id("old")]));
        assert!(feed.take().is_empty(), "a follower keeps nothing");
        let mut triggers = Box::pin(feed.clone().triggers::<DeserializeGuard<AuthPolicy>>());
        feed.announce(BTreeSet::from([id("pay"), id("cart")]));
        feed.announce(BTreeSet::from([id("pay")]));
        let mut seen = Vec::new();
        for _ in 0..2 {
            let next = tokio::time::timeout(Duration::from_secs(10), triggers.next()).await;
            seen.push(next.expect("announced").expect("endless").name);
        }
        assert_eq!(
            seen,
            ["cart", "pay"],
            "each once, whatever the announcements"
        );
        assert!(
            futures::FutureExt::now_or_never(triggers.next()).is_none(),
            "nothing else"
        );
        // The lease is lost: the controller and its stream go, and nothing is kept.
        drop(triggers);
        feed.announce(BTreeSet::from([id("later")]));
        assert!(feed.take().is_empty());
    }
}
