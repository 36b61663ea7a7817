//! How long the tokens of each issuer can still pass, as the Revocations need it: a
//! Revocation lapses only once no token it matches could be accepted by any policy.
//!
//! - A SigningKey's tokens pass for at most its `maxTokenLifetime`
//!   ([`crate::policy::lifetime`]), or longer where a policy raises that limit for it
//!   (`issuers[].maxTokenLifetime`): the longest of these.
//! - An external issuer's tokens pass, under the policies of one namespace, for the longest
//!   limit those policies set for it; for ever when one of them sets none.
//! - A SigningKey that signs for TokenClients: a refresh family started before a
//!   Revocation can refresh, and be ended by it, until the longest `absoluteLifetime` of
//!   those clients (the token endpoint checks the family against the Revocations in force
//!   at each refresh), so the key's Revocations live at least that long.
//! - Plus [`MAX_LEEWAY`]: a token passes that long after its `exp` under some policies.
//!
//! Fed incrementally: each policy's contribution is kept by its id, so an edit costs in
//! proportion to what that policy names.

use std::collections::{BTreeSet, HashMap};

use jiff::SignedDuration;

use crate::api::{AuthPolicy, ObjectKey, TokenClient};
use crate::policy::lifetime::{self, MAX_LEEWAY};

/// How long a Revocation of an external issuer lives while no policy of its namespace
/// accepts that issuer (it matches nothing meanwhile; a policy may come later, in any
/// order): providers do not publish their longest token lifetime, and Entra ID's access
/// tokens live 60 to 90 minutes, so a day covers them with room.
pub const EXTERNAL_MAX_LIFETIME: SignedDuration = SignedDuration::from_hours(24);

/// How long after its issue a token of an issuer may still pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Longest {
    /// At most this long (leeway included).
    For(SignedDuration),
    /// Not known: the issuer is a SigningKey that is not known, or the AuthPolicies are
    /// not all known yet.
    Unknown,
    /// This policy accepts the issuer's tokens of any lifetime.
    Unbounded { policy: ObjectKey },
}

/// What one policy contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Contribution {
    /// SigningKeys whose tokens it accepts beyond their own limit, and for how long
    /// (seconds).
    keys: Vec<(ObjectKey, i64)>,
    /// External issuers it accepts (by URL, in its namespace), with their limit in
    /// seconds (`None`: any).
    issuers: Vec<(String, Option<i64>)>,
}

impl Contribution {
    fn of(policy: &AuthPolicy) -> Self {
        let id = ObjectKey::of(&policy.metadata);
        let spec = &policy.spec;
        let mut contribution = Contribution::default();
        for issuer in &spec.issuers {
            if let Some(url) = &issuer.issuer {
                let limit = lifetime::accepted(spec, issuer, None).map(|d| d.as_secs());
                contribution.issuers.push((url.clone(), limit));
            } else if let Some(key) = issuer.signing_key_id(&id.namespace)
                && let Some(explicit) = lifetime::explicit(spec, issuer)
            {
                // Only an explicit entry can lengthen the key's own limit; a shorter one
                // counts for nothing, as the key's limit is counted anyway.
                contribution.keys.push((key, explicit.as_secs()));
            }
        }
        contribution
    }
}

/// The limits an external issuer has under the policies of one namespace.
#[derive(Debug, Default)]
struct IssuerLimits {
    bounded: BTreeSet<(i64, ObjectKey)>,
    unbounded: BTreeSet<ObjectKey>,
}

impl IssuerLimits {
    fn is_empty(&self) -> bool {
        self.bounded.is_empty() && self.unbounded.is_empty()
    }
}

/// The SigningKeys' own limits and what the policies accept, kept up to date.
#[derive(Debug)]
pub struct Lifetimes {
    /// False while the driver has not read every AuthPolicy yet (a watch still listing):
    /// a policy not read may accept longer tokens, so nothing is known to lapse.
    policies_known: bool,
    keys: HashMap<ObjectKey, SignedDuration>,
    policies: HashMap<ObjectKey, Contribution>,
    /// Per SigningKey: the policies accepting its tokens beyond its own limit.
    raised: HashMap<ObjectKey, BTreeSet<(i64, ObjectKey)>>,
    /// Per (namespace, issuer URL): the limits of that namespace's policies.
    external: HashMap<(String, String), IssuerLimits>,
    /// False while the driver has not read every TokenClient yet: one not read may keep
    /// refresh families alive longer.
    clients_known: bool,
    /// Each TokenClient's SigningKey and refresh `absoluteLifetime` (seconds).
    clients: HashMap<ObjectKey, (ObjectKey, i64)>,
    /// Per SigningKey: the TokenClients it signs for, by their `absoluteLifetime`.
    refreshed: HashMap<ObjectKey, BTreeSet<(i64, ObjectKey)>>,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            policies_known: true,
            keys: HashMap::new(),
            policies: HashMap::new(),
            raised: HashMap::new(),
            external: HashMap::new(),
            clients_known: true,
            clients: HashMap::new(),
            refreshed: HashMap::new(),
        }
    }
}

impl Lifetimes {
    /// Says whether every AuthPolicy has been read (true unless told otherwise). True when
    /// that changed.
    pub fn set_policies_known(&mut self, known: bool) -> bool {
        std::mem::replace(&mut self.policies_known, known) != known
    }

    /// Records a SigningKey's `maxTokenLifetime` (`None`: it is gone). True when it
    /// changed.
    pub fn set_key(&mut self, key: ObjectKey, limit: Option<SignedDuration>) -> bool {
        match limit {
            Some(limit) => self.keys.insert(key, limit) != Some(limit),
            None => self.keys.remove(&key).is_some(),
        }
    }

    /// Records what a policy accepts (it replaces its earlier version). True when that
    /// changed.
    pub fn apply_policy(&mut self, policy: &AuthPolicy) -> bool {
        let id = ObjectKey::of(&policy.metadata);
        let contribution = Contribution::of(policy);
        if self.policies.get(&id) == Some(&contribution) {
            return false;
        }
        self.delete_policy(&id);
        for (key, seconds) in &contribution.keys {
            self.raised
                .entry(key.clone())
                .or_default()
                .insert((*seconds, id.clone()));
        }
        for (url, limit) in &contribution.issuers {
            let limits = self
                .external
                .entry((id.namespace.clone(), url.clone()))
                .or_default();
            match limit {
                Some(seconds) => limits.bounded.insert((*seconds, id.clone())),
                None => limits.unbounded.insert(id.clone()),
            };
        }
        let changed = !(contribution.keys.is_empty() && contribution.issuers.is_empty());
        self.policies.insert(id, contribution);
        changed
    }

    /// Forgets a policy. True when it accepted anything that counts here.
    pub fn delete_policy(&mut self, id: &ObjectKey) -> bool {
        let Some(old) = self.policies.remove(id) else {
            return false;
        };
        for (key, seconds) in &old.keys {
            if let Some(set) = self.raised.get_mut(key) {
                set.remove(&(*seconds, id.clone()));
                if set.is_empty() {
                    self.raised.remove(key);
                }
            }
        }
        for (url, limit) in &old.issuers {
            let scope = (id.namespace.clone(), url.clone());
            if let Some(limits) = self.external.get_mut(&scope) {
                match limit {
                    Some(seconds) => limits.bounded.remove(&(*seconds, id.clone())),
                    None => limits.unbounded.remove(id),
                };
                if limits.is_empty() {
                    self.external.remove(&scope);
                }
            }
        }
        !(old.keys.is_empty() && old.issuers.is_empty())
    }

    /// Says whether every TokenClient has been read (true unless told otherwise). True
    /// when that changed.
    pub fn set_clients_known(&mut self, known: bool) -> bool {
        std::mem::replace(&mut self.clients_known, known) != known
    }

    /// Records how long a TokenClient's refresh families live and which key signs their
    /// tokens (it replaces its earlier version). True when that changed.
    pub fn apply_client(&mut self, client: &TokenClient) -> bool {
        let id = ObjectKey::of(&client.metadata);
        let key = client.spec.signing_key_id(&id.namespace);
        let seconds = client
            .spec
            .refresh_tokens
            .absolute_lifetime
            .value()
            .as_secs();
        if self.clients.get(&id) == Some(&(key.clone(), seconds)) {
            return false;
        }
        self.delete_client(&id);
        self.refreshed
            .entry(key.clone())
            .or_default()
            .insert((seconds, id.clone()));
        self.clients.insert(id, (key, seconds));
        true
    }

    /// Forgets a TokenClient. True when it was known.
    pub fn delete_client(&mut self, id: &ObjectKey) -> bool {
        let Some((key, seconds)) = self.clients.remove(id) else {
            return false;
        };
        if let Some(set) = self.refreshed.get_mut(&key) {
            set.remove(&(seconds, id.clone()));
            if set.is_empty() {
                self.refreshed.remove(&key);
            }
        }
        true
    }

    /// How long after its issue a token of SigningKey `key` may still pass anywhere, or a
    /// refresh family its TokenClients started then may still refresh.
    pub fn of_key(&self, key: &ObjectKey) -> Longest {
        let known = self.policies_known && self.clients_known;
        let Some(own) = self.keys.get(key).filter(|_| known) else {
            return Longest::Unknown;
        };
        let longest_of = |set: Option<&BTreeSet<(i64, ObjectKey)>>| {
            set.and_then(|set| set.last())
                .map_or(0, |(seconds, _)| *seconds)
        };
        let raised = longest_of(self.raised.get(key));
        let refreshed = longest_of(self.refreshed.get(key));
        Longest::For(
            SignedDuration::from_secs(own.as_secs().max(raised).max(refreshed)) + MAX_LEEWAY,
        )
    }

    /// How long after its issue a token of external issuer `url` may still pass under
    /// the policies of `namespace`.
    pub fn of_issuer(&self, namespace: &str, url: &str) -> Longest {
        if !self.policies_known {
            return Longest::Unknown;
        }
        let limits = self.external.get(&(namespace.to_owned(), url.to_owned()));
        let Some(limits) = limits else {
            return Longest::For(EXTERNAL_MAX_LIFETIME);
        };
        if let Some(policy) = limits.unbounded.first() {
            return Longest::Unbounded {
                policy: policy.clone(),
            };
        }
        let longest = limits.bounded.last().map_or(0, |(seconds, _)| *seconds);
        Longest::For(SignedDuration::from_secs(longest) + MAX_LEEWAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::tests::policy;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "auth".into(),
            name: name.into(),
        }
    }

    fn mins(m: i64) -> SignedDuration {
        SignedDuration::from_mins(m)
    }

    #[test]
    fn a_keys_tokens_live_its_limit_plus_the_leeway_or_what_a_policy_raises_it_to() {
        let mut lifetimes = Lifetimes::default();
        assert_eq!(lifetimes.of_key(&key("web")), Longest::Unknown);
        assert!(lifetimes.set_key(key("web"), Some(mins(15))));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(20)));
        // A policy's own maxTokenLifetime never lengthens a key's limit.
        let plain = policy(
            "shop",
            "plain",
            serde_json::json!({"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                "maxTokenLifetime": "4h"}),
        );
        assert!(!lifetimes.apply_policy(&plain));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(20)));
        let raised = |limit: &str| {
            policy(
                "shop",
                "legacy",
                serde_json::json!({"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"},
                    "maxTokenLifetime": limit}]}),
            )
        };
        assert!(lifetimes.apply_policy(&raised("3h")));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(185)));
        assert!(!lifetimes.apply_policy(&raised("3h")), "unchanged");
        assert!(lifetimes.apply_policy(&raised("2h")));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(125)));
        assert_eq!(lifetimes.of_key(&key("other")), Longest::Unknown);
        assert!(lifetimes.delete_policy(&ObjectKey {
            namespace: "shop".into(),
            name: "legacy".into()
        }));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(20)));
        assert!(lifetimes.set_key(key("web"), None));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::Unknown);
    }

    #[test]
    fn nothing_is_known_to_lapse_while_the_policies_are_not_all_read() {
        let mut lifetimes = Lifetimes::default();
        lifetimes.set_key(key("web"), Some(mins(15)));
        assert!(lifetimes.set_policies_known(false));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::Unknown);
        assert_eq!(
            lifetimes.of_issuer("shop", "https://x.example"),
            Longest::Unknown
        );
        assert!(lifetimes.set_policies_known(true));
        assert!(!lifetimes.set_policies_known(true));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(20)));
    }

    #[test]
    fn an_external_issuers_tokens_live_the_longest_limit_of_the_namespaces_policies() {
        const ENTRA: &str = "https://login.example/t/v2.0";
        let mut lifetimes = Lifetimes::default();
        // No policy of the namespace accepts it (yet): a day.
        assert_eq!(
            lifetimes.of_issuer("shop", ENTRA),
            Longest::For(EXTERNAL_MAX_LIFETIME)
        );
        let limited = policy(
            "shop",
            "api",
            serde_json::json!({"issuers": [{"issuer": ENTRA}], "maxTokenLifetime": "90m"}),
        );
        assert!(lifetimes.apply_policy(&limited));
        assert_eq!(lifetimes.of_issuer("shop", ENTRA), Longest::For(mins(95)));
        // Another namespace's policies do not count.
        assert_eq!(
            lifetimes.of_issuer("billing", ENTRA),
            Longest::For(EXTERNAL_MAX_LIFETIME)
        );
        let open = policy(
            "shop",
            "open",
            serde_json::json!({"issuers": [{"issuer": ENTRA}]}),
        );
        assert!(lifetimes.apply_policy(&open));
        assert_eq!(
            lifetimes.of_issuer("shop", ENTRA),
            Longest::Unbounded {
                policy: ObjectKey {
                    namespace: "shop".into(),
                    name: "open".into()
                }
            }
        );
        assert!(lifetimes.delete_policy(&ObjectKey::of(&open.metadata)));
        assert_eq!(lifetimes.of_issuer("shop", ENTRA), Longest::For(mins(95)));
    }

    fn token_client(name: &str, key: &str, absolute: &str) -> TokenClient {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
            "metadata": {"name": name, "namespace": "auth"},
            "spec": {"signingKeyRef": {"name": key}, "serviceAccounts": [{"name": "app"}],
                "audiences": ["api"], "refreshTokens": {"absoluteLifetime": absolute}},
        }))
        .unwrap()
    }

    #[test]
    fn a_keys_revocations_live_as_long_as_its_clients_refresh_families() {
        let mut lifetimes = Lifetimes::default();
        lifetimes.set_key(key("web"), Some(mins(15)));
        assert!(lifetimes.apply_client(&token_client("shop", "web", "168h")));
        assert!(!lifetimes.apply_client(&token_client("shop", "web", "168h")));
        assert!(lifetimes.apply_client(&token_client("admin", "web", "8h")));
        assert_eq!(
            lifetimes.of_key(&key("web")),
            Longest::For(mins(168 * 60 + 5))
        );
        // Another key's clients do not count.
        lifetimes.set_key(key("other"), Some(mins(15)));
        assert_eq!(lifetimes.of_key(&key("other")), Longest::For(mins(20)));
        // An edit shortens it; moving the client to another key moves its lifetime.
        assert!(lifetimes.apply_client(&token_client("shop", "web", "1h")));
        assert_eq!(
            lifetimes.of_key(&key("web")),
            Longest::For(mins(8 * 60 + 5))
        );
        assert!(lifetimes.apply_client(&token_client("admin", "other", "8h")));
        assert_eq!(lifetimes.of_key(&key("web")), Longest::For(mins(65)));
        assert_eq!(
            lifetimes.of_key(&key("other")),
            Longest::For(mins(8 * 60 + 5))
        );
        assert!(lifetimes.delete_client(&key("admin")));
        assert!(!lifetimes.delete_client(&key("admin")));
        assert_eq!(lifetimes.of_key(&key("other")), Longest::For(mins(20)));
        // While the TokenClients are not all read, nothing of a key is known to lapse.
        assert!(lifetimes.set_clients_known(false));
        assert_eq!(lifetimes.of_key(&key("other")), Longest::Unknown);
        assert!(lifetimes.set_clients_known(true));
        assert_eq!(lifetimes.of_key(&key("other")), Longest::For(mins(20)));
    }
}
