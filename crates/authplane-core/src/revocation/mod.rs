//! Revocations as the decision path reads them: a pure index fed by the drivers
//! (`apply`/`delete`), publishing an immutable [`RevocationSet`] with O(1) lookups per
//! issuer (the `jti` set, subject → revoked-before instants, the `sid` set), scoped by
//! namespace.
//!
//! Kept apart from the policies on purpose: a Revocation changes nothing that is
//! compiled, so a new one never rebuilds a policy or drops a cached verification; the
//! decision reads the current set after the signature check and on cache hits alike.
//!
//! Scope: a Revocation that names a SigningKey of its own namespace applies to that
//! issuer's tokens under every AuthPolicy; any other Revocation applies only under the
//! AuthPolicies of its own namespace.
//!
//! Expiry: a Revocation lapses once no token it could match can still pass any policy:
//! `spec.expiresAt` when set, else the issued-before instant (the object's creation for a
//! token or session) plus the longest time a token of its issuer can pass after its issue
//! (see [`lifetimes`]: the SigningKey's `maxTokenLifetime` or what a policy raises it to,
//! the limits the policies set for an external issuer, plus the largest leeway). Lapsed
//! ones stop counting at once, before anyone deletes them.

mod lifetimes;
pub mod sessions;

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::api::{
    AuthPolicy, FieldError, ObjectKey, Revocation, SigningKey, TokenClient, Validate,
};
pub use lifetimes::{EXTERNAL_MAX_LIFETIME, Lifetimes, Longest};
pub use sessions::{SessionEnd, SessionRevocation, SessionSet};

/// Whose tokens a Revocation names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevokedIssuer {
    /// A SigningKey of authplane.
    Key(ObjectKey),
    /// An issuer as tokens carry it in `iss`.
    Url(String),
}

impl std::fmt::Display for RevokedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokedIssuer::Key(id) => write!(f, "{id}"),
            RevokedIssuer::Url(url) => f.write_str(url),
        }
    }
}

/// What a Revocation matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// The token whose `jti` is this.
    TokenId(String),
    /// Tokens whose `sub` is this and whose `iat` is at or before `issued_before` (Unix
    /// seconds).
    Subject { subject: String, issued_before: i64 },
    /// Tokens whose `sid` is this.
    Session(String),
}

/// For logs: `jti="..."`, `sub="..." iat<=2026-01-31T12:00:00Z`, `sid="..."`. Values are
/// quoted with their control characters escaped: they come from resources and tokens,
/// and must not forge a log line.
impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::TokenId(jti) => write!(f, "jti={jti:?}"),
            Matcher::Session(sid) => write!(f, "sid={sid:?}"),
            Matcher::Subject {
                subject,
                issued_before,
            } => match jiff::Timestamp::from_second(*issued_before) {
                Ok(before) => write!(f, "sub={subject:?} iat<={before}"),
                Err(_) => write!(f, "sub={subject:?} iat<={issued_before}"),
            },
        }
    }
}

/// One validated Revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ObjectKey,
    pub issuer: RevokedIssuer,
    /// `None`: applies under every AuthPolicy; else only under those of this namespace.
    pub scope: Option<String>,
    pub matcher: Matcher,
    /// The object's creation (Unix seconds): the default issued-before instant.
    pub created: i64,
    /// `spec.expiresAt` (Unix seconds), when set.
    pub expires_at: Option<i64>,
    /// The metric label of the reason.
    pub reason_label: &'static str,
    pub reason: Option<String>,
}

impl Entry {
    /// Reads a Revocation. `seen` stands in for a missing creation time (a manifest in
    /// dev mode written by hand): the time it was first read.
    pub fn compile(revocation: &Revocation, seen: Timestamp) -> Result<Self, Vec<FieldError>> {
        let errors = revocation.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let id = ObjectKey::of(&revocation.metadata);
        let spec = &revocation.spec;
        let created = revocation
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(seen, |t| t.0)
            .as_second();
        let (issuer, scope) = match (spec.signing_key_id(&id.namespace), &spec.issuer) {
            (Some(key), _) => {
                let scope = (key.namespace != id.namespace).then(|| id.namespace.clone());
                (RevokedIssuer::Key(key), scope)
            }
            (None, Some(url)) => (RevokedIssuer::Url(url.clone()), Some(id.namespace.clone())),
            (None, None) => {
                return Err(vec![FieldError::new(
                    "spec",
                    "set exactly one of signingKeyRef and issuer",
                )]);
            }
        };
        let matcher = match (&spec.token_id, &spec.subject, &spec.session_id) {
            (Some(jti), None, None) => Matcher::TokenId(jti.clone()),
            (None, Some(subject), None) => Matcher::Subject {
                subject: subject.clone(),
                issued_before: spec
                    .issued_before
                    .as_ref()
                    .map_or(created, |t| t.0.as_second()),
            },
            (None, None, Some(sid)) => Matcher::Session(sid.clone()),
            _ => {
                return Err(vec![FieldError::new(
                    "spec",
                    "set exactly one of tokenId, subject and sessionId",
                )]);
            }
        };
        Ok(Self {
            id,
            issuer,
            scope,
            matcher,
            created,
            expires_at: spec.expires_at.as_ref().map(|t| t.0.as_second()),
            reason_label: spec.reason_label(),
            reason: spec.reason.clone(),
        })
    }

    /// The last instant a token this entry matches can have been issued at.
    fn issued_before(&self) -> i64 {
        match &self.matcher {
            Matcher::Subject { issued_before, .. } => *issued_before,
            Matcher::TokenId(_) | Matcher::Session(_) => self.created,
        }
    }

    /// When the entry lapses, with the lifetimes known now.
    pub fn lapse(&self, lifetimes: &Lifetimes) -> Lapse {
        if let Some(at) = self.expires_at {
            return Lapse::At(at);
        }
        let longest = match &self.issuer {
            RevokedIssuer::Key(key) => lifetimes.of_key(key),
            // An external issuer's Revocation applies in its own namespace only.
            RevokedIssuer::Url(url) => lifetimes.of_issuer(&self.id.namespace, url),
        };
        match longest {
            Longest::For(lifetime) => {
                Lapse::At(self.issued_before().saturating_add(lifetime.as_secs()))
            }
            Longest::Unknown => Lapse::Unknown,
            Longest::Unbounded { policy } => Lapse::Never { policy },
        }
    }
}

/// When a Revocation stops counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// It counts through this second (Unix seconds), then lapses.
    At(i64),
    /// How long its issuer's tokens live is not known (its SigningKey is not, or the
    /// AuthPolicies are not all read yet): it counts meanwhile.
    Unknown,
    /// This policy accepts the issuer's tokens of any lifetime: it counts until its
    /// `expiresAt`, or for ever.
    Never { policy: ObjectKey },
}

impl Lapse {
    /// The instant it lapses, when there is one.
    pub fn at(&self) -> Option<i64> {
        match self {
            Lapse::At(at) => Some(*at),
            Lapse::Unknown | Lapse::Never { .. } => None,
        }
    }

    /// Whether it lapsed before `now` (Unix seconds).
    pub fn lapsed(&self, now: i64) -> bool {
        self.at().is_some_and(|at| at < now)
    }
}

/// The revocations of one issuer in one scope.
#[derive(Debug, Default)]
struct Entries {
    /// `jti` → until (Unix seconds, inclusive).
    tokens: HashMap<String, i64>,
    /// `sub` → (issued before, until) pairs; almost always one.
    subjects: HashMap<String, Vec<(i64, i64)>>,
    /// `sid` → until.
    sessions: HashMap<String, i64>,
}

impl Entries {
    fn add(&mut self, matcher: &Matcher, until: i64) {
        let keep_latest = |old: &mut i64| *old = (*old).max(until);
        match matcher {
            Matcher::TokenId(jti) => keep_latest(self.tokens.entry(jti.clone()).or_insert(until)),
            Matcher::Session(sid) => keep_latest(self.sessions.entry(sid.clone()).or_insert(until)),
            Matcher::Subject {
                subject,
                issued_before,
            } => self
                .subjects
                .entry(subject.clone())
                .or_default()
                .push((*issued_before, until)),
        }
    }

    fn matches(&self, token: &TokenFacts<'_>, now: i64) -> bool {
        let live = |until: &i64| now <= *until;
        if let Some(jti) = token.jti
            && self.tokens.get(jti).is_some_and(live)
        {
            return true;
        }
        if let Some(sid) = token.sid
            && self.sessions.get(sid).is_some_and(live)
        {
            return true;
        }
        if let Some(sub) = token.sub
            && let Some(list) = self.subjects.get(sub)
        {
            // A token without `iat` cannot show it was issued after: revoked.
            let iat = token.iat.unwrap_or(i64::MIN);
            return list
                .iter()
                .any(|(before, until)| iat <= *before && now <= *until);
        }
        false
    }

    fn len(&self) -> usize {
        self.tokens.len()
            + self.sessions.len()
            + self.subjects.values().map(Vec::len).sum::<usize>()
    }
}

/// The revocations that apply under one scope (everywhere, or one namespace).
#[derive(Debug, Default)]
struct Scope {
    by_key: HashMap<ObjectKey, Entries>,
    by_issuer: HashMap<String, Entries>,
}

impl Scope {
    fn entries(&mut self, issuer: &RevokedIssuer) -> &mut Entries {
        match issuer {
            RevokedIssuer::Key(key) => self.by_key.entry(key.clone()).or_default(),
            RevokedIssuer::Url(url) => self.by_issuer.entry(url.clone()).or_default(),
        }
    }

    fn matches(&self, token: &TokenFacts<'_>, now: i64) -> bool {
        if let Some(key) = token.key
            && let Some(entries) = self.by_key.get(key)
            && entries.matches(token, now)
        {
            return true;
        }
        self.by_issuer
            .get(token.iss)
            .is_some_and(|entries| entries.matches(token, now))
    }
}

/// What the decision knows of a verified token.
#[derive(Clone, Copy, Debug)]
pub struct TokenFacts<'a> {
    /// The verified `iss`.
    pub iss: &'a str,
    /// The SigningKey whose key verified it, when it is one of ours.
    pub key: Option<&'a ObjectKey>,
    pub jti: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub sid: Option<&'a str>,
    pub iat: Option<i64>,
}

impl<'a> TokenFacts<'a> {
    /// The facts of verified claims; `key` is the SigningKey that verified them.
    pub fn of(claims: &'a serde_json::Map<String, Value>, key: Option<&'a ObjectKey>) -> Self {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        Self {
            iss: text("iss").unwrap_or(""),
            key,
            jti: text("jti"),
            sub: text("sub"),
            sid: text("sid"),
            iat: claims.get("iat").and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            }),
        }
    }
}

/// Active entries of one issuer in one namespace, for the metric.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count {
    pub namespace: String,
    pub issuer: String,
    pub active: usize,
}

/// One Revocation in force, as the status page shows it: whose tokens and which kind of
/// match, never the subject, token id or session id themselves (those are personal data
/// or bearer-adjacent; `authplane revocations list` shows them to whoever may list the
/// objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub id: ObjectKey,
    /// The SigningKey (`namespace/name`) or issuer URL whose tokens it names.
    pub issuer: String,
    /// `None`: under every AuthPolicy; else only under those of this namespace.
    pub scope: Option<String>,
    /// `token`, `subject` or `session`.
    pub matches: &'static str,
    pub reason: &'static str,
    /// When it was created (Unix seconds).
    pub created: i64,
    /// When it lapses (Unix seconds); `None` while that is not known, or never.
    pub lapses_at: Option<i64>,
}

impl Matcher {
    /// What kind of match it is, without its value.
    pub fn kind(&self) -> &'static str {
        match self {
            Matcher::TokenId(_) => "token",
            Matcher::Subject { .. } => "subject",
            Matcher::Session(_) => "session",
        }
    }
}

/// The revocations in force, immutable; the decision path reads it: the Revocation
/// objects, and the sessions the token store ended ([`sessions`]). Two parts published
/// by two followers, each shared: replacing one keeps the other (a clone copies nothing).
#[derive(Clone, Debug, Default)]
pub struct RevocationSet {
    objects: std::sync::Arc<ObjectSet>,
    sessions: SessionSet,
}

/// The Revocation objects in force.
#[derive(Debug, Default)]
struct ObjectSet {
    global: Scope,
    namespaced: HashMap<String, Scope>,
    active: usize,
    /// What is in force, by object, for the status page.
    in_force: Vec<InForce>,
}

impl RevocationSet {
    /// Whether a verified token is revoked under a policy of `namespace` at `now`
    /// (Unix seconds). A few hash lookups; nothing is allocated.
    pub fn is_revoked(&self, namespace: &str, token: &TokenFacts<'_>, now: i64) -> bool {
        if self.sessions.is_revoked(token, now) {
            return true;
        }
        let objects = &*self.objects;
        if objects.active == 0 {
            return false;
        }
        objects.global.matches(token, now)
            || objects
                .namespaced
                .get(namespace)
                .is_some_and(|scope| scope.matches(token, now))
    }

    /// Revocation objects in the set (lapsed ones included until the next publication).
    pub fn len(&self) -> usize {
        self.objects.active
    }

    /// No Revocation object and no session ended in the store.
    pub fn is_empty(&self) -> bool {
        self.objects.active == 0 && self.sessions.is_empty()
    }

    /// Each Revocation object in force, ordered by namespace and name.
    pub fn in_force(&self) -> &[InForce] {
        &self.objects.in_force
    }

    /// The sessions the token store ended.
    pub fn sessions(&self) -> &SessionSet {
        &self.sessions
    }

    /// This set with `sessions` in place of its sessions.
    pub fn with_sessions(mut self, sessions: SessionSet) -> Self {
        self.sessions = sessions;
        self
    }
}

/// Why an object is not in the index.
#[derive(Debug, thiserror::Error)]
#[error("Revocation {id}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Refused {
    pub id: ObjectKey,
    pub problems: Vec<FieldError>,
}

/// Every Revocation a driver has seen, and how long the tokens of each issuer live (from
/// the SigningKeys, the AuthPolicies and the TokenClients).
#[derive(Debug, Default)]
pub struct RevocationIndex {
    entries: BTreeMap<ObjectKey, Entry>,
    lifetimes: Lifetimes,
}

impl RevocationIndex {
    /// An index of these objects at once, at `now` (the leader's judgement, `revocations
    /// list`). The Revocations it refuses come back apart.
    pub fn of<'a>(
        revocations: impl IntoIterator<Item = &'a Revocation>,
        keys: impl IntoIterator<Item = &'a SigningKey>,
        policies: impl IntoIterator<Item = &'a AuthPolicy>,
        clients: impl IntoIterator<Item = &'a TokenClient>,
        now: Timestamp,
    ) -> (Self, Vec<Refused>) {
        let mut index = Self::default();
        for key in keys {
            index.apply_key(key);
        }
        for policy in policies {
            index.apply_policy(policy);
        }
        for client in clients {
            index.apply_client(client);
        }
        let refused = revocations
            .into_iter()
            .filter_map(|revocation| index.apply(revocation, now).err())
            .collect();
        (index, refused)
    }

    /// Adds or replaces a Revocation. A refused one changes nothing (an earlier good
    /// version of the same object is kept). `seen` is now: the creation time of an
    /// object that has none. Returns true when the index changed.
    pub fn apply(&mut self, revocation: &Revocation, seen: Timestamp) -> Result<bool, Refused> {
        let id = ObjectKey::of(&revocation.metadata);
        let seen = self.entries.get(&id).map_or(seen, |old| {
            Timestamp::from_second(old.created).unwrap_or(seen)
        });
        let entry = Entry::compile(revocation, seen).map_err(|problems| Refused {
            id: id.clone(),
            problems,
        })?;
        Ok(self.entries.insert(id, entry.clone()) != Some(entry))
    }

    /// Removes a Revocation; true when it was there.
    pub fn delete(&mut self, namespace: &str, name: &str) -> bool {
        self.entries
            .remove(&ObjectKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .is_some()
    }

    /// Keeps only the objects `keep` says exist (a relist).
    pub fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.entries.retain(|id, _| keep(id));
    }

    /// Records the longest token lifetime of a SigningKey that exists. True when it
    /// changed.
    pub fn apply_key(&mut self, key: &SigningKey) -> bool {
        self.set_key_lifetime(
            ObjectKey::of(&key.metadata),
            Some(key.spec.max_token_lifetime()),
        )
    }

    /// Records a SigningKey's longest token lifetime (`None`: it is gone). True when it
    /// changed.
    pub fn set_key_lifetime(&mut self, key: ObjectKey, lifetime: Option<SignedDuration>) -> bool {
        self.lifetimes.set_key(key, lifetime)
    }

    /// Records the token lifetimes an AuthPolicy accepts (a valid one: what dev mode and
    /// the apiserver accept). True when expiries may have changed.
    pub fn apply_policy(&mut self, policy: &AuthPolicy) -> bool {
        self.lifetimes.apply_policy(policy)
    }

    /// Forgets an AuthPolicy. True when expiries may have changed.
    pub fn delete_policy(&mut self, id: &ObjectKey) -> bool {
        self.lifetimes.delete_policy(id)
    }

    /// Says whether every AuthPolicy has been read (a watch that has not listed them yet
    /// has not): until then nothing lapses. True when that changed.
    pub fn set_policies_known(&mut self, known: bool) -> bool {
        self.lifetimes.set_policies_known(known)
    }

    /// Records how long a TokenClient's refresh families live (a valid one). True when
    /// expiries may have changed.
    pub fn apply_client(&mut self, client: &TokenClient) -> bool {
        self.lifetimes.apply_client(client)
    }

    /// Forgets a TokenClient. True when expiries may have changed.
    pub fn delete_client(&mut self, id: &ObjectKey) -> bool {
        self.lifetimes.delete_client(id)
    }

    /// Says whether every TokenClient has been read: until then nothing of a SigningKey
    /// lapses. True when that changed.
    pub fn set_clients_known(&mut self, known: bool) -> bool {
        self.lifetimes.set_clients_known(known)
    }

    pub fn get(&self, id: &ObjectKey) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When an entry lapses, as the index knows now.
    pub fn lapse(&self, entry: &Entry) -> Lapse {
        entry.lapse(&self.lifetimes)
    }

    /// The Revocations that lapsed at `now`: no token they match can still pass.
    pub fn expired(&self, now: Timestamp) -> Vec<&Entry> {
        let now = now.as_second();
        self.entries
            .values()
            .filter(|e| e.lapse(&self.lifetimes).lapsed(now))
            .collect()
    }

    /// The next instant an entry lapses, after `now`: when to publish again.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        let now = now.as_second();
        self.entries
            .values()
            .filter_map(|e| e.lapse(&self.lifetimes).at())
            .filter(|until| *until >= now)
            .min()
            .and_then(|until| Timestamp::from_second(until.saturating_add(1)).ok())
    }

    /// The set to publish at `now`: lapsed entries are left out. Also the active count
    /// per (namespace, issuer), for the metric.
    pub fn publish(&self, now: Timestamp) -> (RevocationSet, Vec<Count>) {
        let now = now.as_second();
        let mut set = ObjectSet::default();
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for entry in self.entries.values() {
            let lapses_at = entry.lapse(&self.lifetimes).at();
            let until = lapses_at.unwrap_or(i64::MAX);
            if until < now {
                continue;
            }
            set.in_force.push(InForce {
                id: entry.id.clone(),
                issuer: entry.issuer.to_string(),
                scope: entry.scope.clone(),
                matches: entry.matcher.kind(),
                reason: entry.reason_label,
                created: entry.created,
                lapses_at,
            });
            let scope = match &entry.scope {
                None => &mut set.global,
                Some(namespace) => set.namespaced.entry(namespace.clone()).or_default(),
            };
            scope.entries(&entry.issuer).add(&entry.matcher, until);
            set.active += 1;
            *counts
                .entry((entry.id.namespace.clone(), entry.issuer.to_string()))
                .or_default() += 1;
        }
        debug_assert_eq!(
            set.active,
            set.global
                .by_key
                .values()
                .chain(set.global.by_issuer.values())
                .map(Entries::len)
                .sum::<usize>()
                + set
                    .namespaced
                    .values()
                    .flat_map(|s| s.by_key.values().chain(s.by_issuer.values()))
                    .map(Entries::len)
                    .sum::<usize>()
        );
        let counts = counts
            .into_iter()
            .map(|((namespace, issuer), active)| Count {
                namespace,
                issuer,
                active,
            })
            .collect();
        (
            RevocationSet {
                objects: std::sync::Arc::new(set),
                sessions: SessionSet::default(),
            },
            counts,
        )
    }
}

#[cfg(test)]
mod tests;
