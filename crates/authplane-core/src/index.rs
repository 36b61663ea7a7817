//! The incremental index of SigningKeys and AuthPolicies, in the manner of Linkerd's
//! policy controller: drivers feed it `apply_*` and `delete_*` as objects change (the kube
//! watch and the dev-mode folder alike), and it keeps the compiled state the server
//! reads. A change costs in proportion to what it touches, never to the number of
//! objects:
//!
//! - an AuthPolicy is compiled when its spec, generation or rollout progress changes,
//!   not when anything else does;
//! - a SigningKey whose keys or issuer change recompiles only the policies that name it
//!   (a reverse index), and one that merely moves a key to another state (Next to Active)
//!   recompiles nothing;
//! - [`Index::snapshot`] is O(1): the published maps are persistent (`imbl`), so a new
//!   snapshot shares every compiled policy with the last one instead of copying 10,000.
//!
//! Issuer paths are shared names: the index serves each from the SigningKey that has
//! claimed it longest, and only where the [`IssuerScope`] lets its namespace publish
//! (see [`crate::issuer_claims`]).
//!
//! Validation is the driver's job, before `apply`: what reaches the index is valid.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use aws_lc_rs::digest::{Context as Digest, SHA256};

use crate::api::{AuthPolicy, ObjectKey};
use crate::external_quota::{OwnerKind, RefusedIssuers, SharedQuota};
use crate::issuer_claims::{ClaimRank, IssuerScope, KeyClaim, Placement};
use crate::policy::{CompileContext, CompiledPolicy, IssuerKeys};
use crate::snapshot::{PublishedIssuer, ServedKeys, Snapshot};

/// What the index needs from the runtime around it: what outlives one compiled form of
/// a policy (its meters, its cache epoch, the external issuers and the token cache), and
/// where problems are reported. The runtime implements it (`registry::PolicyRuntime`);
/// the index stays free of tasks, HTTP clients and metrics.
pub trait PolicyEnv: Send + Sync {
    /// What compiling the policy `id` needs; `fingerprint` hashes what decides its
    /// verifications, so that an unchanged one keeps its cached tokens.
    fn context(&self, id: &ObjectKey, fingerprint: [u8; 32]) -> CompileContext<'_>;
    /// Records a subject's problem (`AuthPolicy ns/name`), or that it has none.
    fn problem(&self, subject: &str, problem: Option<String>);
    /// A policy was deleted: forget what outlived its compiled forms.
    fn forget_policy(&self, id: &ObjectKey);
    /// External issuers the AuthPolicies of one namespace may use together.
    fn max_external_issuers_per_namespace(&self) -> usize {
        usize::MAX
    }
    /// The quota the policies count their external issuers in, shared with the
    /// TokenClients' index; `None`: one of the index's own.
    fn external_quota(&self) -> Option<Arc<SharedQuota>> {
        None
    }
}

/// Whether two versions of a policy compile the same: compiling reads its spec,
/// generation and rollout progress, so a change elsewhere (labels, annotations,
/// conditions written by the leader, `resourceVersion`) compiles nothing.
fn same_inputs(a: &AuthPolicy, b: &AuthPolicy) -> bool {
    fn progress(p: &AuthPolicy) -> Option<&crate::api::RolloutProgress> {
        p.status.as_ref().and_then(|s| s.rollout.as_ref())
    }
    a.metadata.generation == b.metadata.generation && a.spec == b.spec && progress(a) == progress(b)
}

struct PolicyEntry {
    /// Shared with the driver's copy where it can be (dev mode).
    policy: Arc<AuthPolicy>,
    /// The SigningKeys it names, for the reverse index.
    keys: BTreeSet<ObjectKey>,
}

struct KeyEntry {
    /// Its keys, once loaded.
    served: Option<ServedKeys>,
    claim: KeyClaim,
    /// The issuer URL path it claims on this server; `None` when its issuer is
    /// published elsewhere or may not be published here.
    path: Option<String>,
}

/// What a policy verifies against from one SigningKey: its issuer, the longest lifetime
/// of its tokens and, per key, the kid (an RFC 7638 thumbprint, so the key itself) and
/// algorithm. The states of the keys are not in it: a rotation that only promotes the
/// Next key changes no verification.
fn verification_inputs(served: &ServedKeys) -> (&str, i64, Vec<(&str, &'static str)>) {
    let keys = served
        .keys
        .records()
        .iter()
        .map(|r| (r.material.kid(), r.material.alg().as_str()))
        .collect();
    (
        &served.published.issuer,
        served.max_token_lifetime.as_secs(),
        keys,
    )
}

pub struct Index {
    runtime: Arc<dyn PolicyEnv>,
    scope: Arc<IssuerScope>,
    keys: HashMap<ObjectKey, KeyEntry>,
    /// The SigningKeys claiming each issuer path, earliest claim first: the first
    /// serves it, unless the second claimed it at the same instant (then neither does).
    claimants: HashMap<String, BTreeSet<(ClaimRank, ObjectKey)>>,
    /// The SigningKeys naming each Secret (namespace/name) as theirs.
    secret_users: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    policies: HashMap<ObjectKey, PolicyEntry>,
    /// The policies naming each SigningKey, whether it exists or not.
    dependents: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Published: issuer documents by URL path, compiled policies by namespace/name,
    /// and for the admission webhook who holds each claimed path and Secret.
    issuers: imbl::HashMap<String, Arc<PublishedIssuer>>,
    compiled: imbl::HashMap<ObjectKey, Arc<CompiledPolicy>>,
    path_owners: imbl::HashMap<String, Option<ObjectKey>>,
    secrets: imbl::HashMap<ObjectKey, ObjectKey>,
    /// What each namespace's policies (and TokenClients) fetch, and who is over the cap.
    external_quota: Arc<SharedQuota>,
    /// Policies compiled so far: tests count them.
    compilations: u64,
    /// The policies compiled since [`Index::take_recompiled`] was last called, when a
    /// driver asks for them ([`Index::recording_recompiled`]): the operator's status
    /// controller reports them then.
    recompiled: Option<BTreeSet<ObjectKey>>,
    /// Likewise the SigningKeys whose issuer publication may have changed (a claim
    /// contested, won or given up), for their status.
    reclaimed: Option<BTreeSet<ObjectKey>>,
}

impl Index {
    /// An index publishing issuers as `scope` allows.
    pub fn new(runtime: Arc<dyn PolicyEnv>, scope: Arc<IssuerScope>) -> Self {
        let external_quota = runtime
            .external_quota()
            .unwrap_or_else(|| SharedQuota::new(runtime.max_external_issuers_per_namespace()));
        Self {
            runtime,
            scope,
            keys: HashMap::new(),
            claimants: HashMap::new(),
            secret_users: HashMap::new(),
            policies: HashMap::new(),
            dependents: HashMap::new(),
            issuers: imbl::HashMap::new(),
            compiled: imbl::HashMap::new(),
            path_owners: imbl::HashMap::new(),
            secrets: imbl::HashMap::new(),
            external_quota,
            compilations: 0,
            recompiled: None,
            reclaimed: None,
        }
    }

    /// An index that records which policies it compiles, for [`Index::take_recompiled`],
    /// and which SigningKeys' issuer claims moved, for [`Index::take_reclaimed`].
    pub fn recording_recompiled(mut self) -> Self {
        self.recompiled = Some(BTreeSet::new());
        self.reclaimed = Some(BTreeSet::new());
        self
    }

    /// Compiles again the policies whose refusal a TokenClient moved (see
    /// [`SharedQuota::take_moved`]). Returns whether it compiled any.
    pub fn apply_quota_moves(&mut self) -> bool {
        let moved = self.external_quota.take_moved(OwnerKind::AuthPolicy);
        let mut compiled = false;
        for id in moved {
            if self.policies.contains_key(&id) {
                self.compile(&id);
                compiled = true;
            }
        }
        compiled
    }

    /// The state to serve, sharing everything with the previous snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            issuers: self.issuers.clone(),
            policies: self.compiled.clone(),
            policies_known: true,
            path_owners: self.path_owners.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Where issuers may be published.
    pub fn scope(&self) -> &Arc<IssuerScope> {
        &self.scope
    }

    /// How many policies were compiled since the index was made.
    pub fn compilations(&self) -> u64 {
        self.compilations
    }

    /// The policies compiled since the last call, whatever caused it (their own change,
    /// or a SigningKey they name).
    /// Empty unless the index was made [`Index::recording_recompiled`].
    pub fn take_recompiled(&mut self) -> BTreeSet<ObjectKey> {
        self.recompiled
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The SigningKeys whose issuer claim moved since the last call (see
    /// [`Index::recording_recompiled`]).
    pub fn take_reclaimed(&mut self) -> BTreeSet<ObjectKey> {
        self.reclaimed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The keys a SigningKey is served with, if it is.
    pub fn served(&self, id: &ObjectKey) -> Option<&ServedKeys> {
        self.keys.get(id).and_then(|entry| entry.served.as_ref())
    }

    /// The SigningKeys served, in no particular order.
    pub fn served_keys(&self) -> impl Iterator<Item = (&ObjectKey, &ServedKeys)> {
        self.keys
            .iter()
            .filter_map(|(id, entry)| Some((id, entry.served.as_ref()?)))
    }

    /// The SigningKey serving an issuer path, if one does.
    pub fn path_owner(&self, path: &str) -> Option<&ObjectKey> {
        self.path_owners.get(path).and_then(Option::as_ref)
    }

    /// Whether an AuthPolicy is indexed.
    pub fn has_policy(&self, id: &ObjectKey) -> bool {
        self.policies.contains_key(id)
    }

    /// The AuthPolicies indexed, in no particular order.
    pub fn policy_ids(&self) -> impl Iterator<Item = &ObjectKey> {
        self.policies.keys()
    }

    /// Serves a SigningKey's keys (new ones, or its first) under a claim ranked by
    /// nothing: for a key alone on its issuer path (tests, benchmarks). Drivers use
    /// [`Index::apply_claim`]. Returns whether anything served changed.
    pub fn apply_key(&mut self, id: &ObjectKey, served: ServedKeys) -> bool {
        let claim = KeyClaim::unranked(&served.published.issuer);
        self.apply_claim(id, claim, Some(served))
    }

    /// Indexes a valid SigningKey: its claim (issuer, rank, Secrets) and its keys once
    /// they are loaded (`None`: not yet, or no longer usable: a claim alone holds its
    /// issuer path, serving nothing, so that a key whose Secret is still being written
    /// keeps the path it claimed first). Returns whether anything served changed.
    pub fn apply_claim(
        &mut self,
        id: &ObjectKey,
        claim: KeyClaim,
        served: Option<ServedKeys>,
    ) -> bool {
        let old = self.keys.remove(id);
        let published = |served: &Option<ServedKeys>| served.as_ref().map(|s| s.published.clone());
        let published_changed = match (
            old.as_ref().map(|o| published(&o.served)),
            published(&served),
        ) {
            (Some(Some(a)), Some(b)) => !Arc::ptr_eq(&a, &b) && *a != *b,
            (Some(None), None) => false,
            _ => true,
        };
        let verification_changed = old.as_ref().is_none_or(|old| {
            old.served.as_ref().map(verification_inputs) != served.as_ref().map(verification_inputs)
        });
        let subject = format!("SigningKey {id}");
        // A usable path's problems (a clash) are settled by `resolve_path`.
        let path = match self.scope.place(&id.namespace, &claim.issuer) {
            Ok(Placement::Here { path }) => Some(path),
            Ok(Placement::Elsewhere) => {
                self.runtime.problem(&subject, None);
                None
            }
            Err(e) => {
                self.runtime.problem(
                    &subject,
                    Some(format!(
                        "its issuer is not served: {e} (its keys still sign, and policies naming it still verify)"
                    )),
                );
                None
            }
        };
        let (old_path, old_rank, old_secrets) = match old {
            Some(old) => (old.path, Some(old.claim.rank), old.claim.secrets),
            None => (None, None, Vec::new()),
        };
        let claim_moved = old_path != path || old_rank.as_ref() != Some(&claim.rank);
        if claim_moved {
            if let (Some(old_path), Some(old_rank)) = (&old_path, &old_rank) {
                self.unclaim(old_path, old_rank, id);
            }
            if let Some(path) = &path {
                self.claimants
                    .entry(path.clone())
                    .or_default()
                    .insert((claim.rank.clone(), id.clone()));
            }
            if let Some(reclaimed) = &mut self.reclaimed {
                reclaimed.insert(id.clone());
            }
        }
        if old_secrets != claim.secrets {
            self.release_secrets(id, &old_secrets, &claim.secrets);
            for secret in &claim.secrets {
                let secret = ObjectKey {
                    namespace: id.namespace.clone(),
                    name: secret.clone(),
                };
                self.secret_users
                    .entry(secret.clone())
                    .or_default()
                    .insert(id.clone());
                self.publish_secret(&secret);
            }
        }
        self.keys.insert(
            id.clone(),
            KeyEntry {
                served,
                claim,
                path: path.clone(),
            },
        );
        if published_changed || claim_moved {
            for path in [old_path, path].into_iter().flatten() {
                self.resolve_path(&path);
            }
        }
        if verification_changed {
            self.recompile_dependents(id);
        }
        published_changed || verification_changed
    }

    /// Stops serving a SigningKey: its issuer goes, and the policies naming it fail
    /// closed. Returns whether it was indexed.
    pub fn delete_key(&mut self, id: &ObjectKey) -> bool {
        let Some(entry) = self.keys.remove(id) else {
            return false;
        };
        self.runtime.problem(&format!("SigningKey {id}"), None);
        if let Some(path) = &entry.path {
            self.unclaim(path, &entry.claim.rank, id);
            self.resolve_path(path);
        }
        self.release_secrets(id, &entry.claim.secrets, &[]);
        if let Some(reclaimed) = &mut self.reclaimed {
            reclaimed.insert(id.clone());
        }
        self.recompile_dependents(id);
        true
    }

    /// Indexes a valid AuthPolicy (with its rollout progress in its status), compiling it
    /// if what it compiles from changed. Returns whether it was compiled.
    pub fn apply_policy(&mut self, policy: Arc<AuthPolicy>) -> bool {
        let id = ObjectKey::of(&policy.metadata);
        if self.policies.get(&id).is_some_and(|entry| {
            Arc::ptr_eq(&entry.policy, &policy) || same_inputs(&entry.policy, &policy)
        }) {
            return false;
        }
        let keys: BTreeSet<ObjectKey> = policy
            .spec
            .issuers
            .iter()
            .filter_map(|issuer| issuer.signing_key_id(&id.namespace))
            .collect();
        let old_keys = self
            .policies
            .get(&id)
            .map(|entry| entry.keys.clone())
            .unwrap_or_default();
        for key in old_keys.difference(&keys) {
            self.undepend(key, &id);
        }
        for key in keys.difference(&old_keys) {
            self.dependents
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
        }
        let configs = policy
            .spec
            .issuers
            .iter()
            .filter_map(crate::policy::remote::external_config)
            .collect();
        let flipped = self
            .external_quota
            .apply(OwnerKind::AuthPolicy, &policy.metadata, configs);
        self.policies
            .insert(id.clone(), PolicyEntry { policy, keys });
        self.compile(&id);
        for other in flipped {
            self.compile(&other);
        }
        true
    }

    /// Removes an AuthPolicy: its URL answers 404 and its meters go. Returns whether it
    /// was indexed.
    pub fn delete_policy(&mut self, id: &ObjectKey) -> bool {
        let Some(entry) = self.policies.remove(id) else {
            return false;
        };
        for key in &entry.keys {
            self.undepend(key, id);
        }
        self.compiled.remove(id);
        if let Some(recompiled) = &mut self.recompiled {
            recompiled.remove(id);
        }
        self.runtime.forget_policy(id);
        for other in self.external_quota.delete(OwnerKind::AuthPolicy, id) {
            self.compile(&other);
        }
        true
    }

    fn undepend(&mut self, key: &ObjectKey, policy: &ObjectKey) {
        if let Some(dependents) = self.dependents.get_mut(key) {
            dependents.remove(policy);
            if dependents.is_empty() {
                self.dependents.remove(key);
            }
        }
    }

    fn unclaim(&mut self, path: &str, rank: &ClaimRank, id: &ObjectKey) {
        if let Some(claimants) = self.claimants.get_mut(path) {
            claimants.remove(&(rank.clone(), id.clone()));
            if claimants.is_empty() {
                self.claimants.remove(path);
            }
        }
    }

    /// Gives up the Secrets in `old` that are not in `new`.
    fn release_secrets(&mut self, id: &ObjectKey, old: &[String], new: &[String]) {
        for name in old.iter().filter(|name| !new.contains(name)) {
            let secret = ObjectKey {
                namespace: id.namespace.clone(),
                name: name.clone(),
            };
            if let Some(users) = self.secret_users.get_mut(&secret) {
                users.remove(id);
                if users.is_empty() {
                    self.secret_users.remove(&secret);
                }
            }
            self.publish_secret(&secret);
        }
    }

    fn publish_secret(&mut self, secret: &ObjectKey) {
        match self
            .secret_users
            .get(secret)
            .and_then(|users| users.first())
        {
            Some(user) => self.secrets.insert(secret.clone(), user.clone()),
            None => self.secrets.remove(secret),
        };
    }

    /// Serves an issuer path from the SigningKey that claimed it first, and tells the
    /// others why they are not served. Never by name: two claims of the same instant
    /// (possible only without uids) serve neither.
    fn resolve_path(&mut self, path: &str) {
        let subject = format!("issuer path {path:?}");
        let Some(claimants) = self.claimants.get(path) else {
            self.issuers.remove(path);
            self.path_owners.remove(path);
            self.runtime.problem(&subject, None);
            return;
        };
        let ids: Vec<ObjectKey> = claimants.iter().map(|(_, id)| id.clone()).collect();
        let mut ranked = claimants.iter();
        let first = ranked.next().cloned();
        let tied = first
            .as_ref()
            .is_some_and(|(rank, _)| ranked.next().is_some_and(|(next, _)| next == rank));
        let owner = first.filter(|_| !tied).map(|(_, id)| id);
        match owner
            .as_ref()
            .and_then(|owner| self.keys.get(owner)?.served.as_ref())
        {
            Some(served) => {
                self.issuers
                    .insert(path.to_owned(), served.published.clone());
            }
            None => {
                self.issuers.remove(path);
            }
        }
        self.path_owners.insert(path.to_owned(), owner.clone());
        for id in &ids {
            let problem = match &owner {
                Some(owner) if owner == id => None,
                Some(owner) => Some(format!(
                    "issuer path {path:?} is served for {owner}, which claimed it first; nothing is served there for this SigningKey (its keys still sign, and policies naming it still verify): choose another issuer"
                )),
                None => Some(format!(
                    "issuer path {path:?} is claimed by {} since the same instant: it is served for none of them until all but one choose another issuer",
                    list(&ids)
                )),
            };
            self.runtime.problem(&format!("SigningKey {id}"), problem);
        }
        // The path's own line names every claimant, the one kept as well.
        let contest = (ids.len() > 1).then(|| match &owner {
            Some(owner) => format!(
                "claimed by {}; it stays with {owner}, which claimed it first",
                list(&ids)
            ),
            None => format!(
                "claimed by {} since the same instant; served for none",
                list(&ids)
            ),
        });
        self.runtime.problem(&subject, contest);
        if let Some(reclaimed) = &mut self.reclaimed {
            reclaimed.extend(ids);
        }
    }

    fn recompile_dependents(&mut self, key: &ObjectKey) {
        let dependents: Vec<ObjectKey> = self
            .dependents
            .get(key)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for id in dependents {
            self.compile(&id);
        }
    }

    fn compile(&mut self, id: &ObjectKey) {
        let Some(entry) = self.policies.get(id) else {
            return;
        };
        let runtime = &self.runtime;
        let keys = &self.keys;
        let refusal = self.external_quota.refusal(OwnerKind::AuthPolicy, id);
        let refused = refusal.clone().map(RefusedIssuers);
        let mut context = runtime.context(id, verification_fingerprint(id, &entry.policy, keys));
        if let Some(refused) = &refused {
            context.external = Some(refused);
        }
        let compiled = CompiledPolicy::compile_with(
            &entry.policy,
            |key| {
                let served = keys.get(key)?.served.as_ref()?;
                Some(IssuerKeys {
                    issuer: &served.published.issuer,
                    keys: &served.keys,
                    max_token_lifetime: served.max_token_lifetime,
                })
            },
            context,
        );
        let problem = (!compiled.unresolved.is_empty())
            .then(|| {
                format!(
                    "SigningKey {} not found; tokens cannot be verified, so requests under enforcement are refused (issuer_unavailable)",
                    compiled.unresolved.join(", ")
                )
            })
            .or(refusal);
        runtime.problem(&format!("AuthPolicy {id}"), problem);
        self.compiled.insert(id.clone(), Arc::new(compiled));
        self.compilations += 1;
        if let Some(recompiled) = &mut self.recompiled {
            recompiled.insert(id.clone());
        }
    }
}

/// A hash of everything that decides whether a token verifies under a policy: its spec
/// and, for each SigningKey it names, the issuer and the kids. A policy recompiled with
/// the same fingerprint (its rollout moved on, say) keeps its cached verifications.
/// External key sets are checked per cached entry instead.
fn verification_fingerprint(
    id: &ObjectKey,
    policy: &AuthPolicy,
    keys: &HashMap<ObjectKey, KeyEntry>,
) -> [u8; 32] {
    let mut hash = Digest::new(&SHA256);
    hash.update(&serde_json::to_vec(&policy.spec).unwrap_or_default());
    for issuer in &policy.spec.issuers {
        let Some(key_id) = issuer.signing_key_id(&id.namespace) else {
            continue;
        };
        hash.update(b"\0key\0");
        match keys.get(&key_id).and_then(|entry| entry.served.as_ref()) {
            Some(served) => {
                let (issuer, lifetime, kids) = verification_inputs(served);
                hash.update(issuer.as_bytes());
                hash.update(&lifetime.to_be_bytes());
                for (kid, alg) in kids {
                    hash.update(b"\0");
                    hash.update(kid.as_bytes());
                    hash.update(alg.as_bytes());
                }
            }
            None => hash.update(b"\0missing"),
        }
    }
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(hash.finish().as_ref());
    fingerprint
}

/// `a, b and c`.
fn list(ids: &[ObjectKey]) -> String {
    let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
