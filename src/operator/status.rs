//! What the controllers' status writes share: conditions, and when a status is news.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::object::HasStatus;

use crate::api::{AuthPolicyStatus, RevocationStatus, SigningKeyStatus, keep_transition_times};

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

impl Conditions for AuthPolicyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Whether `status` is what the object already says, after giving its conditions the
/// lastTransitionTime they have while their status is unchanged. Every status write is a
/// change the controller's own watch sees, so writing an unchanged status would make it
/// reconcile forever.
pub fn unchanged<K>(object: &K, status: &mut K::Status) -> bool
where
    K: HasStatus,
    K::Status: Conditions + PartialEq,
{
    match object.status() {
        Some(current) => {
            keep_transition_times(status.conditions_mut(), current.conditions());
            *current == *status
        }
        None => false,
    }
}
