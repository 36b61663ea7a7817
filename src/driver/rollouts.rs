//! One stepped rollout moved on, the same way by both drivers: read where it was
//! recorded, let the pure [`RolloutTracker`] decide, and record the new progress; the
//! driver says so ([`say_moved`]) once it is recorded. Where progress is recorded is a [`RolloutStore`]: dev mode's state folder, or the
//! AuthPolicy's status on a cluster.

use jiff::Timestamp;

use crate::api::{AuthPolicy, ObjectKey, RolloutProgress};
use crate::metrics::Metrics;
use crate::policy::progression::RolloutTracker;

/// Where a stepped rollout's progress is recorded.
pub trait RolloutStore {
    type Error: std::fmt::Display;
    /// What is recorded for `policy`; `restore` when it comes from memory because the
    /// record itself vanished, so that it is written back.
    fn load(&self, id: &ObjectKey, policy: &AuthPolicy) -> Result<Recorded, Self::Error>;
    fn save(&self, id: &ObjectKey, progress: &RolloutProgress) -> Result<(), Self::Error>;
    /// The rollout finished, or the policy stopped being stepped: forget its record.
    fn remove(&self, id: &ObjectKey) -> Result<(), Self::Error>;
}

/// A recorded progress, as loaded.
pub struct Recorded {
    pub progress: Option<RolloutProgress>,
    pub restore: bool,
}

/// Where the rollout stands now.
pub struct Tracked {
    /// The progress to serve with (the policy's `status.rollout`).
    pub progress: Option<RolloutProgress>,
    /// When it moves next.
    pub next: Option<Timestamp>,
    /// It moved since it was last recorded.
    pub moved: bool,
}

/// Moves the rollout of `policy` on at `now`, given its audit totals so far (audited,
/// would deny). A store that fails is logged and counted; the rollout goes on from what
/// is known, and recording is tried again at the next move.
pub fn track<S: RolloutStore>(
    store: &S,
    tracker: &mut RolloutTracker,
    metrics: &Metrics,
    id: &ObjectKey,
    policy: &AuthPolicy,
    now: Timestamp,
    totals: (u64, u64),
) -> Tracked {
    let failed = |what: &str, e: &S::Error| {
        tracing::error!("AuthPolicy {id}: {what}: {e}");
        metrics.reload_error("keystore");
    };
    let recorded = store.load(id, policy).unwrap_or_else(|e| {
        failed(
            "its rollout record is unreadable; the rollout starts over",
            &e,
        );
        Recorded {
            progress: None,
            restore: false,
        }
    });
    let (progress, next) = tracker.track(
        id,
        &policy.spec.rollout,
        recorded.progress.as_ref(),
        now,
        totals,
    );
    let moved = recorded.progress != progress;
    match &progress {
        Some(progress) if moved || recorded.restore => {
            if let Err(e) = store.save(id, progress) {
                failed("cannot record its rollout", &e);
            }
        }
        None if recorded.progress.is_some() => {
            if let Err(e) = store.remove(id) {
                failed("cannot forget its finished rollout", &e);
            }
        }
        _ => {}
    }
    let tracked = Tracked {
        progress,
        next,
        moved,
    };
    metrics.observe_rollout(&id.namespace, &id.name, &policy.spec.rollout, &tracked, now);
    tracked
}

/// Logs where a rollout that moved stands now.
pub fn say_moved(id: &ObjectKey, tracked: &Tracked) {
    if let Some(progress) = &tracked.progress
        && tracked.moved
    {
        let steps: Vec<String> = progress.steps.iter().map(ToString::to_string).collect();
        tracing::info!(
            "AuthPolicy {id}: rollout at step {} of [{}]{}",
            progress.step + 1,
            steps.join(", "),
            progress
                .held
                .as_deref()
                .map(|r| format!(", held: {r}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A record in memory that can be told to fail its writes.
    #[derive(Default)]
    struct Memory {
        record: RefCell<Option<RolloutProgress>>,
        restore: bool,
        writes: RefCell<usize>,
        fail: bool,
    }

    impl RolloutStore for Memory {
        type Error = &'static str;

        fn load(&self, _: &ObjectKey, _: &AuthPolicy) -> Result<Recorded, &'static str> {
            Ok(Recorded {
                progress: self.record.borrow().clone(),
                restore: self.restore,
            })
        }

        fn save(&self, _: &ObjectKey, progress: &RolloutProgress) -> Result<(), &'static str> {
            *self.writes.borrow_mut() += 1;
            if self.fail {
                return Err("read-only");
            }
            *self.record.borrow_mut() = Some(progress.clone());
            Ok(())
        }

        fn remove(&self, _: &ObjectKey) -> Result<(), &'static str> {
            *self.writes.borrow_mut() += 1;
            *self.record.borrow_mut() = None;
            Ok(())
        }
    }

    fn policy(rollout: serde_json::Value) -> (ObjectKey, AuthPolicy) {
        let policy: AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "pay", "namespace": "shop", "generation": 1},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                     "audiences": ["pay"], "rollout": rollout},
        }))
        .unwrap();
        (ObjectKey::of(&policy.metadata), policy)
    }

    fn at(minutes: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
            + jiff::SignedDuration::from_mins(minutes)
    }

    fn run(
        store: &Memory,
        tracker: &mut RolloutTracker,
        policy: &(ObjectKey, AuthPolicy),
        minutes: i64,
    ) -> Tracked {
        track(
            store,
            tracker,
            &Metrics::default(),
            &policy.0,
            &policy.1,
            at(minutes),
            (0, 0),
        )
    }

    #[test]
    fn progress_is_recorded_when_it_moves_and_forgotten_when_the_steps_go() {
        let stepped = policy(
            serde_json::json!({"mode": "Enforce", "steps": [10, 50, 100], "stepEvery": "1h"}),
        );
        let store = Memory::default();
        let mut tracker = RolloutTracker::default();
        let first = run(&store, &mut tracker, &stepped, 0);
        assert_eq!(first.next, Some(at(60)));
        assert_eq!(*store.record.borrow(), first.progress);
        assert_eq!(*store.writes.borrow(), 1);
        run(&store, &mut tracker, &stepped, 30);
        assert_eq!(*store.writes.borrow(), 1, "nothing moved");
        let second = run(&store, &mut tracker, &stepped, 61);
        assert_eq!(second.progress.as_ref().map(|p| p.step), Some(1));
        assert_eq!(*store.writes.borrow(), 2);

        let plain = policy(serde_json::json!({"mode": "Enforce", "percentage": 50}));
        assert!(run(&store, &mut tracker, &plain, 62).progress.is_none());
        assert!(store.record.borrow().is_none(), "forgotten");
    }

    #[test]
    fn a_record_restored_from_memory_is_written_back_and_a_failed_write_keeps_the_rollout_going() {
        let stepped = policy(
            serde_json::json!({"mode": "Enforce", "steps": [10, 50, 100], "stepEvery": "1h"}),
        );
        let mut tracker = RolloutTracker::default();
        let source = Memory::default();
        let recorded = run(&source, &mut tracker, &stepped, 0).progress;
        let restoring = Memory {
            record: RefCell::new(recorded.clone()),
            restore: true,
            ..Memory::default()
        };
        assert_eq!(
            run(&restoring, &mut tracker, &stepped, 10).progress,
            recorded
        );
        assert_eq!(*restoring.writes.borrow(), 1, "written back though unmoved");

        let read_only = Memory {
            record: RefCell::new(recorded),
            fail: true,
            ..Memory::default()
        };
        let moved = run(&read_only, &mut tracker, &stepped, 61);
        assert_eq!(
            moved.progress.map(|p| p.step),
            Some(1),
            "moved all the same"
        );
    }
}
