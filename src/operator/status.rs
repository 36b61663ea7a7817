//! What the controllers' status writes share: conditions, and when a status is news.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AuthPolicyStatus, RevocationStatus, SigningKeyStatus, TokenClientStatus, keep_transition_times,
};

/// A status with conditions.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl Conditions for SigningKeyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditions for RevocationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditions for TokenClientStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditions for AuthPolicyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// The status to write, in the form the apiserver stores it, or `None` when `current`
/// (what the apiserver holds) says that already. Conditions whose status did not change
/// keep their `lastTransitionTime`. The stored form matters: times are kept to the
/// second, so a status made at 10:00:00.7 and compared as it is in memory never equals
/// what was stored from it, and was written again at every reconcile. Every status
/// write is also a change the controllers see, so writing an unchanged status would
/// make them reconcile forever.
pub fn news<S>(current: Option<&S>, mut status: S) -> Option<S>
where
    S: Conditions + PartialEq + Serialize + DeserializeOwned,
{
    if let Some(current) = current {
        keep_transition_times(status.conditions_mut(), current.conditions());
    }
    let stored = stored_form(&status).unwrap_or(status);
    (current != Some(&stored)).then_some(stored)
}

/// `value` as it reads back after a trip through JSON, as the apiserver stores it.
fn stored_form<T: Serialize + DeserializeOwned>(value: &T) -> Option<T> {
    serde_json::from_value(serde_json::to_value(value).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition;

    #[test]
    fn a_status_made_now_equals_what_was_stored_from_it_a_moment_ago() {
        let made: jiff::Timestamp = "2026-03-01T10:00:00.700Z".parse().unwrap();
        let status = |at: jiff::Timestamp| SigningKeyStatus {
            observed_generation: Some(1),
            conditions: vec![condition(
                "Ready",
                true,
                "KeysReady",
                "ok".into(),
                Some(1),
                at,
            )],
            next_transition: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)),
            ..SigningKeyStatus::default()
        };
        let first = news(None, status(made)).expect("nothing stored yet");
        assert_eq!(
            serde_json::to_value(&first).unwrap()["nextTransition"],
            "2026-03-01T10:00:00Z"
        );
        // What the apiserver answers, read back: the same status made again a moment
        // later (the condition's time moved on, its state did not) is no news.
        let stored: SigningKeyStatus =
            serde_json::from_value(serde_json::to_value(&first).unwrap()).unwrap();
        let later = made + jiff::SignedDuration::from_millis(900);
        let mut again = status(later);
        again.next_transition = stored.next_transition.clone();
        assert_eq!(news(Some(&stored), again), None);
        // A real change is news, and keeps the unchanged condition's time.
        let mut changed = status(later);
        changed.observed_generation = Some(2);
        let written = news(Some(&stored), changed).expect("news");
        assert_eq!(
            written.conditions[0].last_transition_time,
            stored.conditions[0].last_transition_time
        );
    }
}
