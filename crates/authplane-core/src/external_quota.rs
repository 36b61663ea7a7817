//! How many external issuers the AuthPolicies of one namespace may use together. Each
//! one is a key set authplane fetches in the background, from every replica: a tenant
//! with rights in its own namespace must not be able to make it fetch without bound.
//!
//! An external issuer here is one configuration (issuer, JWKS URL, refresh settings),
//! the unit the runtime fetches. The policies of a namespace are taken oldest first (by
//! creation, then name); a policy whose issuers would take the namespace past the cap is
//! refused as a whole, its issuers are not fetched, and those it names do not count. So a
//! newcomer never pushes out what an older policy uses, and a policy is let in again when
//! room is made.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{AuthPolicy, ObjectKey};
use crate::policy::remote::{
    ExternalConfig, ExternalKeys, Health, RemoteIssuer, RemoteIssuers, external_config,
};

/// Where a policy stands in its namespace: older first; objects without a creation
/// time (dev mode's files) by name.
type Order = (Option<Timestamp>, String);

pub struct ExternalQuota {
    /// What is counted, for the refusal: (`AuthPolicies`, `policy`) or (`TokenClients`,
    /// `client`). Each kind has its quota: a TokenClient never pushes out a policy.
    kind: (&'static str, &'static str),
    /// Per namespace, its policies that name external issuers, in order.
    namespaces: HashMap<String, BTreeMap<Order, HashSet<ExternalConfig>>>,
    /// Each policy's place, to find its entry again.
    places: HashMap<ObjectKey, Order>,
    /// The policies over the cap, with why.
    refused: HashMap<ObjectKey, String>,
}

impl Default for ExternalQuota {
    /// The AuthPolicies' quota.
    fn default() -> Self {
        Self::of("AuthPolicies", "policy")
    }
}

impl ExternalQuota {
    /// A quota of the objects of one kind, `plural`, each called `one` in refusals.
    pub fn of(plural: &'static str, one: &'static str) -> Self {
        Self {
            kind: (plural, one),
            namespaces: HashMap::new(),
            places: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// Records what `policy` names, with at most `cap` external issuers per namespace.
    /// Returns the other policies of its namespace whose refusal changed (to compile
    /// again).
    pub fn apply(&mut self, policy: &AuthPolicy, cap: usize) -> Vec<ObjectKey> {
        let configs: HashSet<ExternalConfig> = policy
            .spec
            .issuers
            .iter()
            .filter_map(external_config)
            .collect();
        self.apply_configs(&policy.metadata, configs, cap)
    }

    /// Records the external issuers of the object of `meta`; as [`ExternalQuota::apply`].
    pub fn apply_configs(
        &mut self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        configs: HashSet<ExternalConfig>,
        cap: usize,
    ) -> Vec<ObjectKey> {
        let id = ObjectKey::of(meta);
        if configs.is_empty() && !self.places.contains_key(&id) {
            return Vec::new(); // most objects: nothing to count, before or after
        }
        self.forget(&id);
        if !configs.is_empty() {
            let order = (meta.creation_timestamp.as_ref().map(|t| t.0), id.name.clone());
            self.namespaces
                .entry(id.namespace.clone())
                .or_default()
                .insert(order.clone(), configs);
            self.places.insert(id.clone(), order);
        }
        self.settle(&id, cap)
    }

    /// Forgets a deleted policy; returns the policies whose refusal changed.
    pub fn delete(&mut self, id: &ObjectKey, cap: usize) -> Vec<ObjectKey> {
        if !self.places.contains_key(id) {
            return Vec::new();
        }
        self.forget(id);
        self.refused.remove(id);
        self.settle(id, cap)
    }

    /// Why the policy's external issuers are not fetched, when they are not.
    pub fn refusal(&self, id: &ObjectKey) -> Option<&str> {
        self.refused.get(id).map(String::as_str)
    }

    fn forget(&mut self, id: &ObjectKey) {
        if let Some(order) = self.places.remove(id)
            && let Some(policies) = self.namespaces.get_mut(&id.namespace)
        {
            policies.remove(&order);
            if policies.is_empty() {
                self.namespaces.remove(&id.namespace);
            }
        }
    }

    /// Decides again which policies of `changed`'s namespace are over the cap.
    fn settle(&mut self, changed: &ObjectKey, cap: usize) -> Vec<ObjectKey> {
        let namespace = &changed.namespace;
        let mut counted: HashSet<&ExternalConfig> = HashSet::new();
        let mut over = Vec::new();
        for ((_, name), configs) in self.namespaces.get(namespace).into_iter().flatten() {
            let new = configs.iter().filter(|c| !counted.contains(c)).count();
            if counted.len() + new > cap {
                over.push(name.clone());
            } else {
                counted.extend(configs);
            }
        }
        let (plural, one) = self.kind;
        let reason = format!(
            "the {plural} of namespace {namespace} would use more than {cap} external issuers (distinct issuer, jwksUri and refresh settings; --max-external-issuers-per-namespace): this {one}'s are not fetched"
        );
        let now: HashMap<ObjectKey, String> = over
            .into_iter()
            .map(|name| {
                (
                    ObjectKey {
                        namespace: namespace.clone(),
                        name,
                    },
                    reason.clone(),
                )
            })
            .collect();
        let mut flipped: Vec<ObjectKey> = self
            .refused
            .keys()
            .filter(|id| &id.namespace == namespace && !now.contains_key(*id))
            .chain(now.keys().filter(|id| !self.refused.contains_key(*id)))
            .filter(|id| *id != changed)
            .cloned()
            .collect();
        flipped.sort();
        self.refused.retain(|id, _| &id.namespace != namespace);
        self.refused.extend(now);
        flipped
    }
}

/// The external issuers of a policy over the cap: never fetched, reported unavailable
/// with the reason, so that status says why and tokens of them are refused
/// (`issuer_unavailable`), as for any issuer without keys.
pub struct RefusedIssuers(pub String);

impl RemoteIssuers for RefusedIssuers {
    fn get(&self, config: &ExternalConfig) -> Arc<dyn RemoteIssuer> {
        Arc::new(RefusedIssuer {
            config: config.clone(),
            reason: self.0.clone(),
        })
    }
}

struct RefusedIssuer {
    config: ExternalConfig,
    reason: String,
}

impl RemoteIssuer for RefusedIssuer {
    fn config(&self) -> &ExternalConfig {
        &self.config
    }

    fn usable_keys(&self, _: Timestamp) -> Option<Arc<ExternalKeys>> {
        None
    }

    fn health(&self, _: Timestamp) -> Health {
        Health::Unavailable {
            error: self.reason.clone(),
        }
    }

    fn refetch_for_unknown_kid(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(namespace: &str, name: &str, created: i64, issuers: &[&str]) -> AuthPolicy {
        let issuers: Vec<_> = issuers
            .iter()
            .map(|i| json!({"issuer": format!("https://{i}.example")}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": name, "namespace": namespace,
                "creationTimestamp": Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"issuers": issuers, "audiences": ["a"]}
        }))
        .unwrap()
    }

    fn id(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_newcomer_over_the_cap_is_refused_never_an_older_policy() {
        let mut quota = ExternalQuota::default();
        // Named so that the newcomer sorts first: creation decides, not the name.
        assert!(
            quota
                .apply(&policy("t", "zz-old", 1, &["a", "b"]), 3)
                .is_empty()
        );
        assert!(
            quota
                .apply(&policy("t", "aa-new", 2, &["c", "d"]), 3)
                .is_empty()
        );
        assert!(quota.refusal(&id("t", "zz-old")).is_none());
        assert!(
            quota
                .refusal(&id("t", "aa-new"))
                .is_some_and(|r| r.contains("more than 3 external issuers"))
        );
        // Issuers already counted are free: a third policy reusing them gets in.
        assert!(
            quota
                .apply(&policy("t", "reuse", 3, &["a", "b"]), 3)
                .is_empty()
        );
        assert!(quota.refusal(&id("t", "reuse")).is_none());
        // Another namespace has its own count.
        quota.apply(&policy("u", "x", 1, &["c", "d"]), 3);
        assert!(quota.refusal(&id("u", "x")).is_none());
        // The old policy drops an issuer: the second fits now, and the third, which
        // needed the dropped one counted, is over; both are compiled again.
        assert_eq!(
            quota.apply(&policy("t", "zz-old", 1, &["a"]), 3),
            [id("t", "aa-new"), id("t", "reuse")]
        );
        assert!(quota.refusal(&id("t", "aa-new")).is_none());
        assert!(quota.refusal(&id("t", "reuse")).is_some());
        // Deleting the second makes room for the third.
        assert_eq!(quota.delete(&id("t", "aa-new"), 3), [id("t", "reuse")]);
        assert!(quota.refusal(&id("t", "reuse")).is_none());
        assert!(quota.delete(&id("t", "nobody"), 3).is_empty());
    }

    #[test]
    fn a_policy_without_external_issuers_costs_nothing() {
        let mut quota = ExternalQuota::default();
        assert!(quota.apply(&policy("t", "p", 1, &[]), 0).is_empty());
        assert!(quota.places.is_empty());
        assert!(quota.refusal(&id("t", "p")).is_none());
    }
}
