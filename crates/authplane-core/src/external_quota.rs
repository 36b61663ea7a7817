//! How many external issuers the AuthPolicies and TokenClients of one namespace may use
//! together. Each one is a key set authplane fetches in the background, from every
//! replica: a tenant with rights in its own namespace must not be able to make it fetch
//! without bound.
//!
//! An external issuer here is one configuration (issuer, JWKS URL, refresh settings),
//! the unit the runtime fetches. The objects of a namespace (policies and TokenClients'
//! ID-token issuers alike) are taken oldest first (by creation, then name); one whose
//! issuers would take the namespace past the cap is refused as a whole, its issuers are
//! not fetched, and those it names do not count. So a newcomer never pushes out what an
//! older object uses, and an object is let in again when room is made.
//!
//! Policies and TokenClients are indexed apart (the operator follows them in two tasks):
//! both indexes count in one [`SharedQuota`], and an object of the other kind whose
//! refusal a change moved waits in it for its own index to compile it again
//! ([`SharedQuota::take_moved`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{AuthPolicy, ObjectKey};
use crate::policy::remote::{
    ExternalConfig, ExternalKeys, Health, RemoteIssuer, RemoteIssuers, external_config,
};

/// The kinds that name external issuers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    AuthPolicy,
    TokenClient,
}

impl OwnerKind {
    fn name(self) -> &'static str {
        match self {
            OwnerKind::AuthPolicy => "AuthPolicy",
            OwnerKind::TokenClient => "TokenClient",
        }
    }
}

/// An object that names external issuers.
pub type Owner = (OwnerKind, ObjectKey);

/// Where an object stands in its namespace: older first; objects without a creation
/// time (dev mode's files) by name, then kind.
type Order = (Option<Timestamp>, String, OwnerKind);

#[derive(Default)]
pub struct ExternalQuota {
    /// Per namespace, its objects that name external issuers, in order.
    namespaces: HashMap<String, BTreeMap<Order, HashSet<ExternalConfig>>>,
    /// Each object's place, to find its entry again.
    places: HashMap<Owner, Order>,
    /// The objects over the cap, with why.
    refused: HashMap<Owner, String>,
}

impl ExternalQuota {
    /// Records what `policy` names, with at most `cap` external issuers per namespace.
    /// Returns the other objects of its namespace whose refusal changed (to compile
    /// again).
    pub fn apply(&mut self, policy: &AuthPolicy, cap: usize) -> Vec<Owner> {
        let configs: HashSet<ExternalConfig> = policy
            .spec
            .issuers
            .iter()
            .filter_map(external_config)
            .collect();
        self.apply_owner(OwnerKind::AuthPolicy, &policy.metadata, configs, cap)
    }

    /// Records the external issuers of the object of `kind` and `meta`; as
    /// [`ExternalQuota::apply`].
    pub fn apply_owner(
        &mut self,
        kind: OwnerKind,
        meta: &ObjectMeta,
        configs: HashSet<ExternalConfig>,
        cap: usize,
    ) -> Vec<Owner> {
        let owner = (kind, ObjectKey::of(meta));
        if configs.is_empty() && !self.places.contains_key(&owner) {
            return Vec::new(); // most objects: nothing to count, before or after
        }
        self.forget(&owner);
        if !configs.is_empty() {
            let order = (
                meta.creation_timestamp.as_ref().map(|t| t.0),
                owner.1.name.clone(),
                kind,
            );
            self.namespaces
                .entry(owner.1.namespace.clone())
                .or_default()
                .insert(order.clone(), configs);
            self.places.insert(owner.clone(), order);
        }
        self.settle(&owner, cap)
    }

    /// Forgets a deleted policy; returns the objects whose refusal changed.
    pub fn delete(&mut self, id: &ObjectKey, cap: usize) -> Vec<Owner> {
        self.delete_owner(&(OwnerKind::AuthPolicy, id.clone()), cap)
    }

    /// Forgets a deleted object; returns the objects whose refusal changed.
    pub fn delete_owner(&mut self, owner: &Owner, cap: usize) -> Vec<Owner> {
        if !self.places.contains_key(owner) {
            return Vec::new();
        }
        self.forget(owner);
        self.refused.remove(owner);
        self.settle(owner, cap)
    }

    /// Why the policy's external issuers are not fetched, when they are not.
    pub fn refusal(&self, id: &ObjectKey) -> Option<&str> {
        self.refusal_of(&(OwnerKind::AuthPolicy, id.clone()))
    }

    /// Why an object's external issuers are not fetched, when they are not.
    pub fn refusal_of(&self, owner: &Owner) -> Option<&str> {
        self.refused.get(owner).map(String::as_str)
    }

    fn forget(&mut self, owner: &Owner) {
        if let Some(order) = self.places.remove(owner)
            && let Some(objects) = self.namespaces.get_mut(&owner.1.namespace)
        {
            objects.remove(&order);
            if objects.is_empty() {
                self.namespaces.remove(&owner.1.namespace);
            }
        }
    }

    /// Decides again which objects of `changed`'s namespace are over the cap.
    fn settle(&mut self, changed: &Owner, cap: usize) -> Vec<Owner> {
        let namespace = &changed.1.namespace;
        let mut counted: HashSet<&ExternalConfig> = HashSet::new();
        let mut over = Vec::new();
        for ((_, name, kind), configs) in self.namespaces.get(namespace).into_iter().flatten() {
            let new = configs.iter().filter(|c| !counted.contains(c)).count();
            if counted.len() + new > cap {
                over.push((*kind, name.clone()));
            } else {
                counted.extend(configs);
            }
        }
        let now: HashMap<Owner, String> = over
            .into_iter()
            .map(|(kind, name)| {
                let reason = format!(
                    "the AuthPolicies and TokenClients of namespace {namespace} would use more than {cap} external issuers (distinct issuer, jwksUri and refresh settings; --max-external-issuers-per-namespace): this {}'s are not fetched",
                    kind.name()
                );
                let id = ObjectKey {
                    namespace: namespace.clone(),
                    name,
                };
                ((kind, id), reason)
            })
            .collect();
        let mut flipped: Vec<Owner> = self
            .refused
            .keys()
            .filter(|owner| &owner.1.namespace == namespace && !now.contains_key(*owner))
            .chain(
                now.keys()
                    .filter(|owner| !self.refused.contains_key(*owner)),
            )
            .filter(|owner| *owner != changed)
            .cloned()
            .collect();
        flipped.sort();
        self.refused
            .retain(|owner, _| &owner.1.namespace != namespace);
        self.refused.extend(now);
        flipped
    }
}

/// One [`ExternalQuota`] that the policy index and the TokenClient index count in
/// together, with the cap. Objects whose refusal a change of the other kind moved wait
/// here for their own index.
pub struct SharedQuota {
    cap: usize,
    state: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    quota: ExternalQuota,
    moved: HashMap<OwnerKind, BTreeSet<ObjectKey>>,
}

impl SharedQuota {
    /// At most `cap` external issuers per namespace.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what an object of `kind` names. Returns the other objects of that kind
    /// whose refusal changed; those of the other kind wait for [`SharedQuota::take_moved`].
    pub fn apply(
        &self,
        kind: OwnerKind,
        meta: &ObjectMeta,
        configs: HashSet<ExternalConfig>,
    ) -> Vec<ObjectKey> {
        let mut shared = self.lock();
        let moved = shared.quota.apply_owner(kind, meta, configs, self.cap);
        shared.sort(kind, moved)
    }

    /// Forgets a deleted object; as [`SharedQuota::apply`].
    pub fn delete(&self, kind: OwnerKind, id: &ObjectKey) -> Vec<ObjectKey> {
        let mut shared = self.lock();
        let moved = shared.quota.delete_owner(&(kind, id.clone()), self.cap);
        shared.moved.entry(kind).or_default().remove(id);
        shared.sort(kind, moved)
    }

    /// Why an object's external issuers are not fetched, when they are not.
    pub fn refusal(&self, kind: OwnerKind, id: &ObjectKey) -> Option<String> {
        self.lock()
            .quota
            .refusal_of(&(kind, id.clone()))
            .map(str::to_owned)
    }

    /// The objects of `kind` whose refusal a change of the other kind moved since the
    /// last call: to compile again.
    pub fn take_moved(&self, kind: OwnerKind) -> BTreeSet<ObjectKey> {
        self.lock().moved.remove(&kind).unwrap_or_default()
    }
}

impl Shared {
    fn sort(&mut self, kind: OwnerKind, moved: Vec<Owner>) -> Vec<ObjectKey> {
        let mut own = Vec::new();
        for (other, id) in moved {
            if other == kind {
                own.push(id);
            } else {
                self.moved.entry(other).or_default().insert(id);
            }
        }
        own
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
            [
                (OwnerKind::AuthPolicy, id("t", "aa-new")),
                (OwnerKind::AuthPolicy, id("t", "reuse"))
            ]
        );
        assert!(quota.refusal(&id("t", "aa-new")).is_none());
        assert!(quota.refusal(&id("t", "reuse")).is_some());
        // Deleting the second makes room for the third.
        assert_eq!(
            quota.delete(&id("t", "aa-new"), 3),
            [(OwnerKind::AuthPolicy, id("t", "reuse"))]
        );
        assert!(quota.refusal(&id("t", "reuse")).is_none());
        assert!(quota.delete(&id("t", "nobody"), 3).is_empty());
    }

    fn meta(namespace: &str, name: &str, created: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(created).unwrap(),
            )),
            ..ObjectMeta::default()
        }
    }

    fn configs(issuers: &[&str]) -> HashSet<ExternalConfig> {
        issuers
            .iter()
            .map(|i| ExternalConfig::of(&format!("https://{i}.example"), None, None))
            .collect()
    }

    #[test]
    fn policies_and_token_clients_share_one_cap_oldest_first() {
        use OwnerKind::{AuthPolicy as Policy, TokenClient as Client};
        let quota = SharedQuota::new(2);
        // An old client and an old policy fill the namespace, sharing issuer "a".
        assert!(
            quota
                .apply(Client, &meta("t", "login", 1), configs(&["a", "b"]))
                .is_empty()
        );
        assert!(
            quota
                .apply(Policy, &meta("t", "api", 2), configs(&["a"]))
                .is_empty()
        );
        // A newer policy with a third issuer is refused, whatever its kind.
        assert!(
            quota
                .apply(Policy, &meta("t", "new", 3), configs(&["c"]))
                .is_empty()
        );
        assert!(quota.refusal(Policy, &id("t", "new")).is_some_and(|r| {
            r.contains("AuthPolicies and TokenClients of namespace t would use more than 2")
                && r.ends_with("this AuthPolicy's are not fetched")
        }));
        assert!(quota.refusal(Client, &id("t", "login")).is_none());
        // So is a newer client; a policy of the same name is another object.
        assert!(
            quota
                .apply(Client, &meta("t", "new", 4), configs(&["d"]))
                .is_empty()
        );
        assert!(
            quota
                .refusal(Client, &id("t", "new"))
                .is_some_and(|r| r.ends_with("this TokenClient's are not fetched"))
        );
        assert!(quota.take_moved(Policy).is_empty());
        // The old client goes: the policy index learns which policy got in, and the
        // client index which client did not (the policy, older, took the room).
        assert!(quota.delete(Client, &id("t", "login")).is_empty());
        assert_eq!(quota.take_moved(Policy), [id("t", "new")].into());
        assert!(quota.take_moved(Policy).is_empty(), "once");
        assert!(quota.refusal(Policy, &id("t", "new")).is_none());
        assert!(quota.refusal(Client, &id("t", "new")).is_some());
        // The new policy drops its issuer: the client gets in, announced to its index.
        assert!(
            quota
                .apply(Policy, &meta("t", "new", 3), configs(&[]))
                .is_empty()
        );
        assert_eq!(quota.take_moved(Client), [id("t", "new")].into());
        assert!(quota.refusal(Client, &id("t", "new")).is_none());
    }

    #[test]
    fn a_policy_without_external_issuers_costs_nothing() {
        let mut quota = ExternalQuota::default();
        assert!(quota.apply(&policy("t", "p", 1, &[]), 0).is_empty());
        assert!(quota.places.is_empty());
        assert!(quota.refusal(&id("t", "p")).is_none());
    }
}
