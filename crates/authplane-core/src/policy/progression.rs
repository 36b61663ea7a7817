//! Stepped rollouts: where a progression such as `[10, 50, 100]` every `1h` stands, from
//! its recorded state and the time. Pure: the recorded progress, the time and whether to
//! hold go in; the next recorded progress comes out.
//!
//! Restart-safe by construction: the step and when it began are recorded, and catching up
//! after downtime replays the schedule from there. A hold (manual, or a too-high deny
//! ratio) freezes the step; on resume the step gets a full interval again, so the
//! traffic that caused the hold is observed before enforcement grows.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::audit::DenyWindow;
use crate::api::{Mode, ObjectKey, Rollout, RolloutProgress, status_time};
use crate::keys::lifecycle::add;

/// Why a progression holds when `spec.rollout.paused` is set.
pub const PAUSED_BY_SPEC: &str = "paused by spec.rollout.paused";

/// The progression after `now`, or `None` when the rollout is not stepped (or not in
/// Enforce mode: leaving Enforce and coming back starts over). `hold` is a reason to hold
/// other than the spec's own `paused`.
pub fn advance(
    rollout: &Rollout,
    recorded: Option<&RolloutProgress>,
    now: Timestamp,
    hold: Option<String>,
) -> Option<RolloutProgress> {
    let every = stepped(rollout)?;
    let mut progress = match recorded {
        Some(p) if p.steps == rollout.steps && since(p).is_some() => p.clone(),
        _ => RolloutProgress {
            steps: rollout.steps.clone(),
            step: first_step(rollout, recorded),
            since: status_time(now),
            held: None,
        },
    };
    // Steps that came due before the hold are taken first: replicas already serve them,
    // and a hold must never lower enforcement.
    let mut began = since(&progress)?;
    if progress.held.is_none() {
        let last = rollout.steps.len() as u32 - 1;
        while progress.step < last && add(began, every) <= now {
            progress.step += 1;
            began = add(began, every);
        }
        progress.since = status_time(began);
    }
    let hold = rollout.paused.then(|| PAUSED_BY_SPEC.to_owned()).or(hold);
    if hold.is_some() {
        progress.held = hold;
    } else if progress.held.take().is_some() {
        progress.since = status_time(now);
    }
    Some(progress)
}

/// Where a new progression starts: the first step, or, when the steps were edited
/// mid-way, the highest new step not above the share already enforced. An edit never
/// jumps enforcement ahead (users suddenly refused), and steps back only as far as the
/// new steps make it.
fn first_step(rollout: &Rollout, recorded: Option<&RolloutProgress>) -> u32 {
    let Some(previous) = recorded else {
        return 0;
    };
    let Some(share) = previous
        .steps
        .get(previous.step as usize)
        .or(previous.steps.last())
    else {
        return 0;
    };
    rollout
        .steps
        .iter()
        .rposition(|step| step <= share)
        .unwrap_or(0) as u32
}

/// The step interval of a stepped rollout in Enforce mode.
fn stepped(rollout: &Rollout) -> Option<SignedDuration> {
    if rollout.mode != Mode::Enforce || rollout.steps.is_empty() {
        return None;
    }
    let every = rollout.step_every.as_ref()?.value();
    every.is_positive().then_some(every)
}

fn since(progress: &RolloutProgress) -> Option<Timestamp> {
    Some(progress.since.0)
}

/// The enforced percentage over time, as a replica serves it: each entry holds from its
/// time on. Steps are capped by `rollout.percentage`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// (from, percentage), ascending; the first entry holds from the beginning of time.
    pub entries: Vec<(Timestamp, f64)>,
}

impl Schedule {
    /// The schedule a policy is compiled with. Without a recorded progression a stepped
    /// rollout stays on its first step until a driver records one.
    pub fn of(rollout: &Rollout, recorded: Option<&RolloutProgress>) -> Schedule {
        let cap = rollout.percentage;
        let Some(every) = stepped(rollout) else {
            return Schedule {
                entries: vec![(Timestamp::MIN, cap)],
            };
        };
        let progress = recorded.filter(|p| p.steps == rollout.steps);
        let Some((progress, began)) = progress.and_then(|p| Some((p, since(p)?))) else {
            // Until a driver records the (new) progression: where it will start.
            let first = first_step(rollout, recorded) as usize;
            return Schedule {
                entries: vec![(Timestamp::MIN, rollout.steps[first].min(cap))],
            };
        };
        let current = (progress.step as usize).min(rollout.steps.len() - 1);
        let mut entries = vec![(Timestamp::MIN, rollout.steps[current].min(cap))];
        // Only a recorded hold freezes the schedule: the recording driver takes the steps
        // already due before it holds, so replicas never step back.
        if progress.held.is_none() {
            let mut at = began;
            for step in &rollout.steps[current + 1..] {
                at = add(at, every);
                entries.push((at, step.min(cap)));
            }
        }
        Schedule { entries }
    }

    pub fn percentage_at(&self, now: Timestamp) -> f64 {
        self.entries
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map_or(0.0, |(_, p)| *p)
    }

    /// When the percentage changes next after `now`.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.entries
            .iter()
            .map(|(from, _)| *from)
            .find(|from| *from > now)
    }
}

/// Writes a progression into a status: the effective percentage at `now`, the next
/// step, and whether (and why) it is held.
pub fn report(
    status: &mut crate::api::AuthPolicyStatus,
    mode: Mode,
    schedule: &Schedule,
    progress: Option<RolloutProgress>,
    now: Timestamp,
) {
    let enforce = mode == Mode::Enforce;
    status.effective_percentage = Some(if enforce {
        schedule.percentage_at(now)
    } else {
        0.0
    });
    status.next_step_at = schedule
        .next_change(now)
        .filter(|_| enforce)
        .map(status_time);
    status.paused = progress.as_ref().map(|p| p.held.is_some());
    status.paused_reason = progress.as_ref().and_then(|p| p.held.clone());
    status.rollout = progress;
}

/// What a driver keeps between runs to move stepped rollouts: the deny-ratio window of
/// each policy.
#[derive(Default)]
pub struct RolloutTracker {
    windows: HashMap<ObjectKey, DenyWindow>,
}

impl RolloutTracker {
    /// The progression to record for a policy at `now`, given its audit totals so far
    /// (audited, would deny), and when to look again.
    pub fn track(
        &mut self,
        id: &ObjectKey,
        rollout: &Rollout,
        recorded: Option<&RolloutProgress>,
        now: Timestamp,
        totals: (u64, u64),
    ) -> (Option<RolloutProgress>, Option<Timestamp>) {
        // Windows of policies that stopped being tracked (deleted, or no rule any more).
        let stale = add(now, -SignedDuration::from_hours(24));
        self.windows
            .retain(|_, w| w.last_sample().is_some_and(|t| t > stale));
        let rule = rollout
            .pause_above_deny_ratio
            .as_ref()
            .filter(|_| stepped(rollout).is_some());
        let hold = rule.and_then(|rule| {
            let measured = self
                .windows
                .entry(id.clone())
                .or_default()
                .observe(now, totals, rule);
            // Without enough traffic to tell, a ratio hold stays.
            measured.unwrap_or_else(|| {
                recorded
                    .and_then(|p| p.held.clone())
                    .filter(|reason| reason != PAUSED_BY_SPEC)
            })
        });
        let progress = advance(rollout, recorded, now, hold);
        let next_step = progress
            .as_ref()
            .and_then(|p| Schedule::of(rollout, Some(p)).next_change(now));
        // Sample the counters often enough to see the window move.
        let sample = rule.map(|rule| {
            let every = (rule.window.value() / 20)
                .clamp(SignedDuration::from_secs(1), SignedDuration::from_secs(15));
            add(now, every)
        });
        let next = [next_step, sample].into_iter().flatten().min();
        (progress, next)
    }

    /// Forgets the windows of policies that are gone.
    pub fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.windows.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(yaml: &str) -> Rollout {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const STEPPED: &str = "{mode: Enforce, steps: [10, 50, 100], stepEvery: 1h}";

    #[test]
    fn a_full_progression_from_ten_to_a_hundred() {
        let r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        assert_eq!(
            (p.step, Schedule::of(&r, Some(&p)).percentage_at(start)),
            (0, 10.0)
        );
        let schedule = Schedule::of(&r, Some(&p));
        assert_eq!(
            schedule.next_change(start),
            Some(at("2026-01-01T01:00:00Z"))
        );
        assert_eq!(schedule.percentage_at(at("2026-01-01T00:59:59Z")), 10.0);
        assert_eq!(schedule.percentage_at(at("2026-01-01T01:00:00Z")), 50.0);
        assert_eq!(schedule.percentage_at(at("2026-01-01T02:00:00Z")), 100.0);

        let later = at("2026-01-01T01:30:00Z");
        let p = advance(&r, Some(&p), later, None).unwrap();
        assert_eq!(
            (p.step, p.since.0.to_string().as_str()),
            (1, "2026-01-01T01:00:00Z")
        );
        let p = advance(&r, Some(&p), at("2026-01-01T05:00:00Z"), None).unwrap();
        assert_eq!(p.step, 2);
        assert_eq!(
            Schedule::of(&r, Some(&p)).next_change(at("2026-01-01T05:00:00Z")),
            None
        );
    }

    #[test]
    fn a_restart_in_the_middle_continues_from_the_record() {
        let r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        // The record goes through its serialized form, as in status or the state folder.
        let stored = serde_json::to_string(&p).unwrap();
        let restored: RolloutProgress = serde_json::from_str(&stored).unwrap();
        let p = advance(&r, Some(&restored), at("2026-01-01T01:10:00Z"), None).unwrap();
        assert_eq!(p.step, 1, "the first hour counted across the restart");
    }

    #[test]
    fn a_hold_freezes_the_step_and_resuming_restarts_its_interval() {
        let r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        let held = advance(
            &r,
            Some(&p),
            at("2026-01-01T00:30:00Z"),
            Some("deny ratio".into()),
        );
        let held = held.unwrap();
        assert_eq!(held.held.as_deref(), Some("deny ratio"));
        let schedule = Schedule::of(&r, Some(&held));
        assert_eq!(schedule.percentage_at(at("2026-01-01T03:00:00Z")), 10.0);
        assert_eq!(schedule.next_change(at("2026-01-01T00:30:00Z")), None);

        let still = advance(
            &r,
            Some(&held),
            at("2026-01-01T02:00:00Z"),
            Some("deny ratio".into()),
        );
        assert_eq!(still.as_ref().map(|p| p.step), Some(0));
        let resumed = advance(&r, still.as_ref(), at("2026-01-01T02:10:00Z"), None).unwrap();
        assert_eq!((resumed.step, resumed.held.as_deref()), (0, None));
        assert_eq!(resumed.since.0.to_string(), "2026-01-01T02:10:00Z");
        let next = advance(&r, Some(&resumed), at("2026-01-01T03:10:00Z"), None).unwrap();
        assert_eq!(next.step, 1);

        // A pause takes the steps already due first (replicas serve them): 1 → 2 here.
        let mut paused = r.clone();
        paused.paused = true;
        let p = advance(&paused, Some(&next), at("2026-01-01T09:00:00Z"), None).unwrap();
        assert_eq!((p.step, p.held.as_deref()), (2, Some(PAUSED_BY_SPEC)));
    }

    #[test]
    fn percentage_caps_the_steps_and_leaving_enforce_starts_over() {
        let mut r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        r.percentage = 0.0;
        let schedule = Schedule::of(&r, Some(&p));
        assert_eq!(schedule.percentage_at(at("2026-01-01T05:00:00Z")), 0.0);

        r.mode = Mode::Audit;
        assert_eq!(advance(&r, Some(&p), start, None), None);
        r.mode = Mode::Enforce;
        r.steps = vec![5.0, 100.0];
        let p = advance(&r, Some(&p), at("2026-01-02T00:00:00Z"), None).unwrap();
        assert_eq!(
            (p.step, p.since.0.to_string().as_str()),
            (0, "2026-01-02T00:00:00Z")
        );
    }

    #[test]
    fn editing_the_steps_never_jumps_ahead() {
        let r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        let p = advance(&r, Some(&p), at("2026-01-01T01:30:00Z"), None).unwrap();
        assert_eq!(p.step, 1, "at 50%");
        let mut edited = r.clone();
        edited.steps = vec![10.0, 25.0, 50.0, 75.0, 100.0];
        // Replicas, before the driver records the edit, and the driver itself.
        assert_eq!(Schedule::of(&edited, Some(&p)).percentage_at(start), 50.0);
        let q = advance(&edited, Some(&p), at("2026-01-01T01:40:00Z"), None).unwrap();
        assert_eq!(
            (q.step, q.since.0.to_string().as_str()),
            (2, "2026-01-01T01:40:00Z")
        );
        edited.steps = vec![5.0, 20.0, 100.0];
        let q = advance(&edited, Some(&p), at("2026-01-01T01:40:00Z"), None).unwrap();
        assert_eq!(q.step, 1, "20, not 100");
    }

    #[test]
    fn a_pause_never_lowers_enforcement() {
        let r = rollout(STEPPED);
        let start = at("2026-01-01T00:00:00Z");
        let p = advance(&r, None, start, None).unwrap();
        // Recorded at step 0; replicas serve 100% by schedule two hours later.
        let late = at("2026-01-01T02:30:00Z");
        assert_eq!(Schedule::of(&r, Some(&p)).percentage_at(late), 100.0);
        let mut paused = r.clone();
        paused.paused = true;
        // Before the driver records the pause, replicas keep the schedule...
        assert_eq!(Schedule::of(&paused, Some(&p)).percentage_at(late), 100.0);
        // ...and the driver records it at the step already reached.
        let held = advance(&paused, Some(&p), late, None).unwrap();
        assert_eq!(held.step, 2);
        assert_eq!(
            Schedule::of(&paused, Some(&held)).percentage_at(late),
            100.0
        );
    }

    #[test]
    fn without_steps_the_percentage_is_the_schedule() {
        let r = rollout("{mode: Enforce, percentage: 25}");
        assert_eq!(advance(&r, None, Timestamp::now(), None), None);
        assert_eq!(Schedule::of(&r, None).percentage_at(Timestamp::now()), 25.0);
    }
}
