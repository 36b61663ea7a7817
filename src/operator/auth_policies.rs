//! AuthPolicy status on a cluster: Accepted and Ready, the effective percentage, whether
//! each target exists, and the URLs to wire. The decisions themselves are served from
//! the registry on every replica; this controller only reports, and only on the leader.
//!
//! The status is the compiled policy's (its spec with the keys and external key sets it
//! resolved: the runtime's health), so it says what is served. Nothing polls for it: the
//! serving loop announces every policy it applies or compiles ([`super::feed::Feed`]),
//! and the controller reconciles those, whether their own spec changed or a SigningKey
//! they name did.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

use super::attachments::Attachments;
use super::error::Error;
use super::targets::Targets;
use super::writer::LeaderWriter;
use crate::api::{
    AuthPolicy, AuthPolicyStatus, ObjectKey, RolloutProgress, SigningKey, Validate, condition,
    conditions,
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
/// For at most this long after the leader starts, a policy that names a SigningKey whose
/// keys are still being made waits for them instead of reporting the key as not found
/// (and then found: two writes per policy at every cold start). At a cold start with
/// 1,000 keys on a slow apiserver the last keys took 90 s.
pub const PENDING_KEYS_WAIT: SignedDuration = SignedDuration::from_mins(5);

pub struct PolicyContext {
    /// Which targets exist, from the target watches.
    pub targets: Arc<Targets>,
    /// The gateway objects written for Gateway API targets.
    pub attachments: Arc<Attachments>,
    /// The AuthPolicies of this instance (the serving cache): who else attaches to a
    /// target, and whether a namespace still needs its ReferenceGrant.
    pub policies: Store<DeserializeGuard<AuthPolicy>>,
    pub registry: Arc<Registry>,
    pub external_url: String,
    pub clock: Arc<dyn Clock>,
    pub writer: LeaderWriter,
    /// The leader's own decisions feed the deny ratio of stepped rollouts: behind a load
    /// balancer, one replica's share is a fair sample.
    pub runtime: Arc<PolicyRuntime>,
    pub rollouts: std::sync::Mutex<RolloutTracker>,
    /// The serving cache of SigningKeys: whether a key not served yet exists.
    pub keys: Store<DeserializeGuard<SigningKey>>,
    /// When this replica began to lead (see [`PENDING_KEYS_WAIT`]).
    pub leading_since: Mutex<Option<Timestamp>>,
}

impl PolicyContext {
    /// How long the policy `id`, whose compiled form names `unresolved` SigningKeys,
    /// waits for them before its status says they are missing: while this leader is
    /// young and every one of them exists and does not report a failure (its keys are
    /// being made), the rest of [`PENDING_KEYS_WAIT`]; otherwise not at all.
    fn wait_for_keys(
        &self,
        id: &ObjectKey,
        policy: &AuthPolicy,
        unresolved: &[String],
    ) -> Option<Duration> {
        if unresolved.is_empty() {
            return None;
        }
        let since = (*self.leading_since.lock().unwrap_or_else(|e| e.into_inner()))?;
        let left = (since + PENDING_KEYS_WAIT).duration_since(self.clock.now());
        if left <= SignedDuration::ZERO {
            return None;
        }
        let named: Vec<ObjectKey> = policy
            .spec
            .issuers
            .iter()
            .filter_map(|issuer| issuer.signing_key_id(&id.namespace))
            .collect();
        let pending = |missing: &String| {
            named.iter().any(|key| {
                key.to_string() == *missing
                    && self
                        .keys
                        .get(&ObjectRef::new(&key.name).within(&key.namespace))
                        .is_some_and(|guard| {
                            guard
                                .0
                                .as_ref()
                                .is_ok_and(|k| k.validate().is_empty() && !reports_failure(k))
                        })
            })
        };
        unresolved.iter().all(pending).then(|| left.unsigned_abs())
    }
}

/// Whether a SigningKey's status says that its current spec cannot be served (an
/// unmanaged or unreadable Secret): its keys are not coming.
fn reports_failure(key: &SigningKey) -> bool {
    key.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == conditions::READY
                && c.status == "False"
                && c.observed_generation == key.metadata.generation
        })
    })
}

pub async fn reconcile(policy: Arc<AuthPolicy>, ctx: Arc<PolicyContext>) -> Result<Action, Error> {
    ctx.runtime.metrics.policy_reconciles.inc();
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
        if let Some(wait) = ctx.wait_for_keys(&id, &policy, &compiled.unresolved) {
            // Its keys are being made: announced when served, and this runs again then.
            return Ok(Action::requeue(wait));
        }
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
        if ctx.writer.leads()
            && let Some(sooner) = ctx
                .attachments
                .reconcile(&policy, &ctx.writer, &ctx.policies, &mut status, now)
                .await?
        {
            requeue = requeue.min(sooner);
        }
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
