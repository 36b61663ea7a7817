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
use crate::api::{Mode, ObjectKey, Rollout, RolloutProgress};
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
            step: 0,
            since: now.to_string(),
            held: None,
        },
    };
    let hold = rollout.paused.then(|| PAUSED_BY_SPEC.to_owned()).or(hold);
    if hold.is_some() {
        progress.held = hold;
        return Some(progress);
    }
    if progress.held.take().is_some() {
        progress.since = now.to_string();
    }
    let mut began = since(&progress)?;
    let last = rollout.steps.len() as u32 - 1;
    while progress.step < last && add(began, every) <= now {
        progress.step += 1;
        began = add(began, every);
    }
    progress.since = began.to_string();
    Some(progress)
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
    progress.since.parse().ok()
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
            return Schedule {
                entries: vec![(Timestamp::MIN, rollout.steps[0].min(cap))],
            };
        };
        let current = (progress.step as usize).min(rollout.steps.len() - 1);
        let mut entries = vec![(Timestamp::MIN, rollout.steps[current].min(cap))];
        if progress.held.is_none() && !rollout.paused {
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
        .map(|t| t.to_string());
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
        assert_eq!((p.step, p.since.as_str()), (1, "2026-01-01T01:00:00Z"));
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
        assert_eq!(resumed.since, "2026-01-01T02:10:00Z");
        let next = advance(&r, Some(&resumed), at("2026-01-01T03:10:00Z"), None).unwrap();
        assert_eq!(next.step, 1);

        let mut paused = r.clone();
        paused.paused = true;
        let p = advance(&paused, Some(&next), at("2026-01-01T09:00:00Z"), None).unwrap();
        assert_eq!((p.step, p.held.as_deref()), (1, Some(PAUSED_BY_SPEC)));
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
        assert_eq!((p.step, p.since.as_str()), (0, "2026-01-02T00:00:00Z"));
    }

    #[test]
    fn without_steps_the_percentage_is_the_schedule() {
        let r = rollout("{mode: Enforce, percentage: 25}");
        assert_eq!(advance(&r, None, Timestamp::now(), None), None);
        assert_eq!(Schedule::of(&r, None).percentage_at(Timestamp::now()), 25.0);
    }
}
