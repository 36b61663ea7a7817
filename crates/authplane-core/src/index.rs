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
//! Validation is the driver's job, before `apply`: what reaches the index is valid.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use aws_lc_rs::digest::{Context as Digest, SHA256};

use crate::api::{AuthPolicy, ObjectKey, issuer_path};
use crate::external_quota::{ExternalQuota, RefusedIssuers};
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
    served: ServedKeys,
    /// The issuer URL path it claims; `None` when its issuer has no usable path.
    path: Option<String>,
}

/// What a policy verifies against from one SigningKey: its issuer and, per key, the kid
/// (an RFC 7638 thumbprint, so the key itself) and algorithm. The states of the keys are
/// not in it: a rotation that only promotes the Next key changes no verification.
fn verification_inputs(served: &ServedKeys) -> (&str, Vec<(&str, &'static str)>) {
    let keys = served
        .keys
        .records()
        .iter()
        .map(|r| (r.material.kid(), r.material.alg().as_str()))
        .collect();
    (&served.published.issuer, keys)
}

pub struct Index {
    runtime: Arc<dyn PolicyEnv>,
    keys: HashMap<ObjectKey, KeyEntry>,
    /// The SigningKeys claiming each issuer path; the first by namespace/name serves it.
    claimants: HashMap<String, BTreeSet<ObjectKey>>,
    policies: HashMap<ObjectKey, PolicyEntry>,
    /// The policies naming each SigningKey, whether it exists or not.
    dependents: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Published: issuer documents by URL path, compiled policies by namespace/name.
    issuers: imbl::HashMap<String, Arc<PublishedIssuer>>,
    compiled: imbl::HashMap<ObjectKey, Arc<CompiledPolicy>>,
    /// What each namespace's policies fetch, and who is over the cap.
    external_quota: ExternalQuota,
    /// Policies compiled so far: tests count them.
    compilations: u64,
    /// The policies compiled since [`Index::take_recompiled`] was last called, when a
    /// driver asks for them ([`Index::recording_recompiled`]): the operator's status
    /// controller reports them then.
    recompiled: Option<BTreeSet<ObjectKey>>,
}

impl Index {
    pub fn new(runtime: Arc<dyn PolicyEnv>) -> Self {
        Self {
            runtime,
            keys: HashMap::new(),
            claimants: HashMap::new(),
            policies: HashMap::new(),
            dependents: HashMap::new(),
            issuers: imbl::HashMap::new(),
            compiled: imbl::HashMap::new(),
            external_quota: ExternalQuota::default(),
            compilations: 0,
            recompiled: None,
        }
    }

    /// An index that records which policies it compiles, for [`Index::take_recompiled`].
    pub fn recording_recompiled(mut self) -> Self {
        self.recompiled = Some(BTreeSet::new());
        self
    }

    /// The state to serve, sharing everything with the previous snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            issuers: self.issuers.clone(),
            policies: self.compiled.clone(),
            policies_known: true,
        }
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

    /// The keys a SigningKey is served with, if it is.
    pub fn served(&self, id: &ObjectKey) -> Option<&ServedKeys> {
        self.keys.get(id).map(|entry| &entry.served)
    }

    /// The SigningKeys served, in no particular order.
    pub fn served_keys(&self) -> impl Iterator<Item = (&ObjectKey, &ServedKeys)> {
        self.keys.iter().map(|(id, entry)| (id, &entry.served))
    }

    /// Whether an AuthPolicy is indexed.
    pub fn has_policy(&self, id: &ObjectKey) -> bool {
        self.policies.contains_key(id)
    }

    /// The AuthPolicies indexed, in no particular order.
    pub fn policy_ids(&self) -> impl Iterator<Item = &ObjectKey> {
        self.policies.keys()
    }

    /// Serves a SigningKey's keys (new ones, or its first). Returns whether anything
    /// served changed.
    pub fn apply_key(&mut self, id: &ObjectKey, served: ServedKeys) -> bool {
        let old = self.keys.get(id);
        let published_changed = old.is_none_or(|old| {
            !Arc::ptr_eq(&old.served.published, &served.published)
                && *old.served.published != *served.published
        });
        let verification_changed =
            old.is_none_or(|old| verification_inputs(&old.served) != verification_inputs(&served));
        let old_path = old.and_then(|old| old.path.clone());
        // A usable path's problems (a clash) are settled by `resolve_path`.
        let path = match issuer_path(&served.published.issuer) {
            Ok(path) => Some(path),
            Err(e) => {
                self.runtime
                    .problem(&format!("SigningKey {id}"), Some(e.to_string()));
                None
            }
        };
        self.keys.insert(
            id.clone(),
            KeyEntry {
                served,
                path: path.clone(),
            },
        );
        if old_path != path {
            if let Some(old_path) = &old_path {
                self.unclaim(old_path, id);
            }
            if let Some(path) = &path {
                self.claimants
                    .entry(path.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        if published_changed || old_path != path {
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
    /// closed. Returns whether it was served.
    pub fn delete_key(&mut self, id: &ObjectKey) -> bool {
        let Some(entry) = self.keys.remove(id) else {
            return false;
        };
        self.runtime.problem(&format!("SigningKey {id}"), None);
        if let Some(path) = &entry.path {
            self.unclaim(path, id);
            self.resolve_path(path);
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
        let cap = self.runtime.max_external_issuers_per_namespace();
        let flipped = self.external_quota.apply(&policy, cap);
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
        let cap = self.runtime.max_external_issuers_per_namespace();
        for other in self.external_quota.delete(id, cap) {
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

    fn unclaim(&mut self, path: &str, id: &ObjectKey) {
        if let Some(claimants) = self.claimants.get_mut(path) {
            claimants.remove(id);
            if claimants.is_empty() {
                self.claimants.remove(path);
            }
        }
    }

    /// Serves an issuer path from its first claimant, and tells the others why they are
    /// not served.
    fn resolve_path(&mut self, path: &str) {
        let Some(claimants) = self.claimants.get(path) else {
            self.issuers.remove(path);
            return;
        };
        let mut claimants = claimants.iter();
        let Some(owner) = claimants.next() else {
            return;
        };
        if let Some(entry) = self.keys.get(owner) {
            self.issuers
                .insert(path.to_owned(), entry.served.published.clone());
        }
        self.runtime.problem(&format!("SigningKey {owner}"), None);
        for other in claimants {
            self.runtime.problem(
                &format!("SigningKey {other}"),
                Some(format!(
                    "issuer path {path:?} is already served for {owner}; not serving it twice"
                )),
            );
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
        let refusal = self.external_quota.refusal(id);
        let refused = refusal.map(|reason| RefusedIssuers(reason.to_owned()));
        let mut context = runtime.context(id, verification_fingerprint(id, &entry.policy, keys));
        if let Some(refused) = &refused {
            context.external = Some(refused);
        }
        let compiled = CompiledPolicy::compile_with(
            &entry.policy,
            |key| {
                keys.get(key).map(|entry| IssuerKeys {
                    issuer: &entry.served.published.issuer,
                    keys: &entry.served.keys,
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
            .or_else(|| refusal.map(str::to_owned));
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
        match keys.get(&key_id) {
            Some(entry) => {
                let (issuer, kids) = verification_inputs(&entry.served);
                hash.update(issuer.as_bytes());
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

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
