//! TokenClients as the token endpoint reads them: an incremental index the drivers feed
//! (`apply`/`delete` of TokenClients, and the issuer and `maxTokenLifetime` of each
//! SigningKey), publishing an immutable map from `client_id` (`namespace/name`) to the
//! compiled client. A SigningKey change recompiles only the clients that name it (a
//! reverse index); the published map is a persistent map, so publishing copies nothing.
//!
//! Each client's readiness is what its `Ready` condition reports.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use jiff::SignedDuration;

use crate::api::{FieldError, ObjectKey, TokenClient, Validate};
use crate::external_quota::{OwnerKind, RefusedIssuers, SharedQuota};
use crate::policy::remote::RemoteIssuers;
use crate::token_endpoint::ClientRules;
use crate::token_endpoint::id_token::IdTokenIssuers;

/// What the index needs of a SigningKey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    pub issuer: String,
    pub max_token_lifetime: SignedDuration,
}

/// A client as the endpoint uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedClient {
    /// The SigningKey that signs its tokens: the endpoint serves this client only on this
    /// key's issuer.
    pub key: ObjectKey,
    pub rules: ClientRules,
    /// The ServiceAccounts that may exchange tokens for it.
    pub service_accounts: Vec<ObjectKey>,
    /// Whether its refresh tokens travel in the body or in a cookie.
    pub delivery: crate::api::Delivery,
    /// The external issuers whose ID tokens it accepts as the user of a login.
    pub id_tokens: Arc<IdTokenIssuers>,
    /// Its own budgets, where the spec sets them (the server's otherwise).
    pub rate_limit: Option<crate::api::RateLimit>,
}

impl ServedClient {
    /// `(status, reason, message)` of its `Ready` condition at `now`: its readiness, or
    /// `IdTokenIssuerUnavailable` while an ID-token issuer has no usable keys (its ID
    /// tokens are refused; other logins are served).
    pub fn condition(
        &self,
        readiness: &Readiness,
        now: jiff::Timestamp,
    ) -> (&'static str, &'static str, String) {
        let unavailable = self.id_tokens.unavailable(now);
        if *readiness != Readiness::Serving || unavailable.is_empty() {
            return readiness.condition();
        }
        (
            "False",
            "IdTokenIssuerUnavailable",
            format!(
                "no usable keys for {}: its ID tokens are refused (other logins are served)",
                unavailable.join("; ")
            ),
        )
    }
}

/// The published clients by `client_id`.
pub type Published = imbl::HashMap<String, Arc<ServedClient>>;

/// Why a client is not (fully) served: its `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Served, as specified.
    Serving,
    /// Served with the key's limit: `accessTokenLifetime` is longer.
    LifetimeAboveKeyLimit {
        lifetime: SignedDuration,
        max: SignedDuration,
    },
    /// Not served: its SigningKey does not exist.
    SigningKeyNotFound(ObjectKey),
    /// Not served: the spec is invalid (each problem names its field).
    InvalidSpec(Vec<FieldError>),
}

impl Readiness {
    /// `(status, reason, message)` of the `Ready` condition.
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        match self {
            Readiness::Serving => (
                "True",
                "Serving",
                "the token endpoint issues for this client".into(),
            ),
            Readiness::LifetimeAboveKeyLimit { lifetime, max } => (
                "False",
                "LifetimeAboveKeyLimit",
                format!(
                    "accessTokenLifetime {lifetime:#} is longer than the SigningKey's maxTokenLifetime {max:#}: access tokens get {max:#}"
                ),
            ),
            Readiness::SigningKeyNotFound(key) => (
                "False",
                "SigningKeyNotFound",
                format!("SigningKey {key} does not exist: nothing is issued for this client"),
            ),
            Readiness::InvalidSpec(errors) => (
                "False",
                "InvalidSpec",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }
    }
}

pub struct TokenClientIndex {
    /// Every client applied, valid or not, with its readiness.
    clients: HashMap<ObjectKey, (Option<Arc<TokenClient>>, Readiness)>,
    keys: HashMap<ObjectKey, KeyFacts>,
    /// SigningKey → the valid clients that name it.
    by_key: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    published: Published,
    /// Where ID-token issuers' keys come from: the runtime's fetcher, the one AuthPolicies
    /// use (`None`: nothing is fetched, and ID tokens are refused).
    external: Option<Arc<dyn RemoteIssuers>>,
    /// The external issuers of each namespace, shared with the AuthPolicies' index.
    quota: Arc<SharedQuota>,
}

impl Default for TokenClientIndex {
    /// An index that fetches nothing: ID tokens are refused.
    fn default() -> Self {
        Self {
            clients: HashMap::new(),
            keys: HashMap::new(),
            by_key: HashMap::new(),
            published: Published::default(),
            external: None,
            quota: SharedQuota::new(usize::MAX),
        }
    }
}

impl TokenClientIndex {
    /// An index whose clients' ID-token issuers are fetched by `external`, counted in
    /// `quota` with the AuthPolicies' external issuers
    /// (`--max-external-issuers-per-namespace`).
    pub fn with_external(external: Arc<dyn RemoteIssuers>, quota: Arc<SharedQuota>) -> Self {
        Self {
            external: Some(external),
            quota,
            ..Self::default()
        }
    }

    /// Compiles again the clients whose refusal an AuthPolicy moved (see
    /// [`SharedQuota::take_moved`]). Returns the clients compiled.
    pub fn apply_quota_moves(&mut self) -> Vec<ObjectKey> {
        let moved: Vec<ObjectKey> = self
            .quota
            .take_moved(OwnerKind::TokenClient)
            .into_iter()
            .filter(|id| self.clients.contains_key(id))
            .collect();
        for id in &moved {
            self.compile(id);
        }
        moved
    }

    pub fn apply(&mut self, client: Arc<TokenClient>) {
        let id = ObjectKey::of(&client.metadata);
        self.forget(&id);
        let errors = client.validate();
        if !errors.is_empty() {
            self.clients
                .insert(id.clone(), (None, Readiness::InvalidSpec(errors)));
            self.count_issuers(&client.metadata, &[]);
            return;
        }
        let key = client.spec.signing_key_id(&id.namespace);
        self.by_key.entry(key).or_default().insert(id.clone());
        let issuers = client.spec.id_token_issuers.clone();
        self.clients
            .insert(id.clone(), (Some(client.clone()), Readiness::Serving));
        self.count_issuers(&client.metadata, &issuers);
        self.compile(&id);
    }

    pub fn delete(&mut self, id: &ObjectKey) {
        self.forget(id);
        self.clients.remove(id);
        for other in self.quota.delete(OwnerKind::TokenClient, id) {
            self.compile(&other);
        }
    }

    /// Why a client's ID-token issuers are not fetched, when its namespace is over the cap.
    pub fn quota_refusal(&self, id: &ObjectKey) -> Option<String> {
        self.quota.refusal(OwnerKind::TokenClient, id)
    }

    /// Counts a client's external issuers in its namespace's quota, and compiles again
    /// the other clients whose refusal that changed.
    fn count_issuers(
        &mut self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        issuers: &[crate::api::IdTokenIssuer],
    ) {
        let configs = IdTokenIssuers::configs(issuers).collect();
        for other in self.quota.apply(OwnerKind::TokenClient, meta, configs) {
            self.compile(&other);
        }
    }

    /// A SigningKey appeared or changed (its issuer or its limit).
    pub fn apply_key(&mut self, id: ObjectKey, facts: KeyFacts) {
        if self.keys.get(&id) == Some(&facts) {
            return;
        }
        self.keys.insert(id.clone(), facts);
        self.recompile_key(&id);
    }

    pub fn delete_key(&mut self, id: &ObjectKey) {
        if self.keys.remove(id).is_some() {
            self.recompile_key(id);
        }
    }

    pub fn published(&self) -> Published {
        self.published.clone()
    }

    pub fn readiness(&self, id: &ObjectKey) -> Option<&Readiness> {
        self.clients.get(id).map(|(_, readiness)| readiness)
    }

    /// The valid clients that name SigningKey `key`: those whose readiness a change of
    /// the key may change.
    pub fn clients_of(&self, key: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.by_key.get(key).into_iter().flatten()
    }

    /// Every client applied, valid or not.
    pub fn ids(&self) -> impl Iterator<Item = &ObjectKey> {
        self.clients.keys()
    }

    fn recompile_key(&mut self, key: &ObjectKey) {
        let ids: Vec<ObjectKey> = self
            .by_key
            .get(key)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            self.compile(&id);
        }
    }

    fn compile(&mut self, id: &ObjectKey) {
        let client_id = id.to_string();
        let Some((Some(client), readiness)) = self.clients.get_mut(id) else {
            return;
        };
        let key = client.spec.signing_key_id(&id.namespace);
        let Some(facts) = self.keys.get(&key) else {
            *readiness = Readiness::SigningKeyNotFound(key);
            self.published.remove(&client_id);
            return;
        };
        let lifetime = client.spec.access_token_lifetime.value();
        *readiness = if lifetime > facts.max_token_lifetime {
            Readiness::LifetimeAboveKeyLimit {
                lifetime,
                max: facts.max_token_lifetime,
            }
        } else {
            Readiness::Serving
        };
        let id_tokens = match (
            self.quota.refusal(OwnerKind::TokenClient, id),
            &self.external,
        ) {
            (None, Some(external)) => {
                IdTokenIssuers::new(&client.spec.id_token_issuers, external.as_ref())
            }
            (Some(refusal), _) => {
                IdTokenIssuers::new(&client.spec.id_token_issuers, &RefusedIssuers(refusal))
            }
            (None, None) => IdTokenIssuers::new(
                &client.spec.id_token_issuers,
                &RefusedIssuers("external issuers are not fetched here".to_owned()),
            ),
        };
        let served = ServedClient {
            id_tokens: Arc::new(id_tokens),
            rules: ClientRules::new(client, &facts.issuer, facts.max_token_lifetime),
            service_accounts: client.spec.service_account_ids(&id.namespace),
            delivery: client.spec.delivery,
            rate_limit: client.spec.rate_limit,
            key,
        };
        self.published.insert(client_id, Arc::new(served));
    }

    fn forget(&mut self, id: &ObjectKey) {
        if let Some((Some(client), _)) = self.clients.get(id) {
            let key = client.spec.signing_key_id(&id.namespace);
            if let Some(ids) = self.by_key.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        self.published.remove(&id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn client(namespace: &str, name: &str, spec: serde_json::Value) -> Arc<TokenClient> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn facts(issuer: &str, max_mins: i64) -> KeyFacts {
        KeyFacts {
            issuer: issuer.into(),
            max_token_lifetime: SignedDuration::from_mins(max_mins),
        }
    }

    #[test]
    fn a_client_is_served_once_its_key_is_known_and_follows_the_key() {
        let mut index = TokenClientIndex::default();
        let web = client(
            "auth",
            "web",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "serviceAccounts": [{"name": "login"}, {"name": "x", "namespace": "shop"}]}),
        );
        let id = key("auth", "web");
        index.apply(web);
        assert_eq!(
            index.readiness(&id),
            Some(&Readiness::SigningKeyNotFound(key("auth", "web")))
        );
        assert!(index.published().is_empty());
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 60));
        assert_eq!(
            index.clients_of(&key("auth", "web")).collect::<Vec<_>>(),
            [&id]
        );
        assert_eq!(index.clients_of(&key("auth", "other")).count(), 0);
        let served = index.published()["auth/web"].clone();
        assert_eq!(served.key, key("auth", "web"));
        assert_eq!(served.rules.issuer, "https://a.example/auth/web");
        assert_eq!(served.rules.access_lifetime, SignedDuration::from_mins(15));
        assert_eq!(
            served.service_accounts,
            [key("auth", "login"), key("shop", "x")]
        );
        assert_eq!(index.readiness(&id), Some(&Readiness::Serving));
        // The key's limit drops under the client's lifetime: served with the key's.
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 5));
        assert_eq!(
            index.published()["auth/web"].rules.access_lifetime,
            SignedDuration::from_mins(5)
        );
        assert_eq!(
            index.readiness(&id).unwrap().condition().1,
            "LifetimeAboveKeyLimit"
        );
        // The key goes: so does the client.
        index.delete_key(&key("auth", "web"));
        assert!(index.published().is_empty());
        assert_eq!(
            index.readiness(&id).unwrap().condition().1,
            "SigningKeyNotFound"
        );
    }

    #[test]
    fn a_client_names_only_a_key_of_its_namespace() {
        let mut index = TokenClientIndex::default();
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 60));
        // shop/web names "web": shop/web the key, never auth/web.
        index.apply(client(
            "shop",
            "web",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"]}),
        ));
        assert!(index.published().is_empty());
        assert_eq!(
            index.readiness(&key("shop", "web")),
            Some(&Readiness::SigningKeyNotFound(key("shop", "web")))
        );
    }

    #[test]
    fn an_invalid_edit_stops_serving_and_a_deletion_forgets() {
        let mut index = TokenClientIndex::default();
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 60));
        index.apply_key(
            key("auth", "other"),
            facts("https://a.example/auth/other", 60),
        );
        let id = key("auth", "web");
        index.apply(client(
            "auth",
            "web",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"]}),
        ));
        assert!(index.published().contains_key("auth/web"));
        index.apply(client(
            "auth",
            "web",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "allowedClaims": ["sub"]}),
        ));
        assert!(index.published().is_empty());
        let (status, reason, message) = index.readiness(&id).unwrap().condition();
        assert_eq!((status, reason), ("False", "InvalidSpec"));
        assert!(message.starts_with("spec.allowedClaims"), "{message}");
        // Moved to another key: the old key's changes no longer touch it.
        index.apply(client(
            "auth",
            "web",
            json!({"signingKeyRef": {"name": "other"}, "audiences": ["a"]}),
        ));
        index.delete_key(&key("auth", "web"));
        assert_eq!(index.published()["auth/web"].key, key("auth", "other"));
        index.delete(&id);
        assert!(index.published().is_empty());
        assert!(index.readiness(&id).is_none());
        assert!(index.by_key.is_empty());
    }

    #[test]
    fn ready_says_when_an_id_token_issuer_has_no_keys_and_the_cap_moves_clients() {
        use crate::external_quota::OwnerKind;
        let quota = SharedQuota::new(1);
        let refusing: Arc<dyn RemoteIssuers> =
            Arc::new(RefusedIssuers("connection refused".into()));
        let mut index = TokenClientIndex::with_external(refusing, quota.clone());
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 60));
        let spec = |issuer: &str| {
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"],
                "idTokenIssuers": [{"issuer": issuer, "audiences": ["app"]}]})
        };
        index.apply(client("auth", "b", spec("https://idp.example/v2.0")));
        let now = jiff::Timestamp::UNIX_EPOCH;
        let id = key("auth", "b");
        let condition = |index: &TokenClientIndex| {
            let served = index.published()["auth/b"].clone();
            served.condition(index.readiness(&id).unwrap(), now)
        };
        let (status, reason, message) = condition(&index);
        assert_eq!((status, reason), ("False", "IdTokenIssuerUnavailable"));
        assert_eq!(
            message,
            "no usable keys for https://idp.example/v2.0: connection refused: its ID tokens are refused (other logins are served)"
        );
        // An older AuthPolicy takes the namespace's one external issuer: the client is
        // compiled again once its index looks, and says why.
        let policy = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("a".into()),
            namespace: Some("auth".into()),
            ..Default::default()
        };
        let other = crate::policy::remote::ExternalConfig::of("https://other.example", None, None);
        assert!(
            quota
                .apply(OwnerKind::AuthPolicy, &policy, [other].into())
                .is_empty()
        );
        assert!(condition(&index).2.contains("connection refused"));
        assert_eq!(index.apply_quota_moves(), std::slice::from_ref(&id));
        assert!(
            condition(&index)
                .2
                .contains("would use more than 1 external issuers")
        );
        // Without issuers, a client is Serving.
        index.apply(client(
            "auth",
            "b",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"]}),
        ));
        assert_eq!(condition(&index).1, "Serving");
    }

    #[test]
    fn a_published_map_is_a_snapshot() {
        let mut index = TokenClientIndex::default();
        index.apply_key(key("auth", "web"), facts("https://a.example/auth/web", 60));
        index.apply(client(
            "auth",
            "web",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"]}),
        ));
        let before = index.published();
        index.delete(&key("auth", "web"));
        assert!(before.contains_key("auth/web"));
        assert!(index.published().is_empty());
    }
}
