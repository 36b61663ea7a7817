//! The server's read-side view: everything a request needs, rendered once per change and
//! swapped in atomically. Requests never wait on a driver and never do I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use aws_lc_rs::digest::{SHA256, digest};
use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::SignedDuration;
use serde_json::json;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{AuthPolicy, ObjectKey, issuer_path, keep_transition_times};
use crate::clock::Clock;
use crate::external::ExternalIssuers;
use crate::keys::Algorithm;
use crate::keys::lifecycle::KeySet;
use crate::metrics::Metrics;
use crate::policy::cache::DecisionCache;
use crate::policy::{CompileContext, CompiledPolicy, IssuerKeys, PolicyStats};

/// Upper bound of the JWKS `max-age`: verifiers should notice a new key within minutes.
const MAX_JWKS_MAX_AGE_SECS: i64 = 300;

/// One issuer's discovery document and JWKS, serialized.
#[derive(Debug)]
pub struct PublishedIssuer {
    pub namespace: String,
    pub name: String,
    pub issuer: String,
    pub jwks_uri: String,
    pub jwks: Bytes,
    pub discovery: Bytes,
    /// Strong ETag of `jwks` (quoted).
    pub etag: String,
    /// `Cache-Control: max-age` for both documents.
    pub max_age_secs: i64,
}

impl PublishedIssuer {
    /// Renders the public documents of a key set. `path` is the issuer's URL path.
    pub fn render(
        namespace: &str,
        name: &str,
        issuer: &str,
        keys: &KeySet,
        pre_publish: SignedDuration,
    ) -> Self {
        let jwks_uri = format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'));
        let jwks: Vec<_> = keys
            .records()
            .iter()
            .map(|r| {
                r.material
                    .public_jwk()
                    .to_json(r.material.kid(), r.material.alg())
            })
            .collect();
        let jwks = Bytes::from(serde_json::to_vec(&json!({ "keys": jwks })).unwrap_or_default());
        let mut algorithms: Vec<Algorithm> =
            keys.records().iter().map(|r| r.material.alg()).collect();
        algorithms.sort_by_key(|a| a.as_str());
        algorithms.dedup();
        let algorithms: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
        // The shape of the Kubernetes service-account issuer's discovery document.
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
        });
        let discovery = Bytes::from(serde_json::to_vec(&discovery).unwrap_or_default());
        let etag = format!(
            "\"{}\"",
            B64URL.encode(&digest(&SHA256, &jwks).as_ref()[..18])
        );
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            jwks_uri,
            jwks,
            discovery,
            etag,
            // A verifier that honours max-age refreshes well within prePublish, so it
            // knows the next key before that key signs.
            max_age_secs: (pre_publish.as_secs() / 2).clamp(0, MAX_JWKS_MAX_AGE_SECS),
        }
    }
}

/// One SigningKey as served: its public documents, and the keys policies verify with.
#[derive(Clone)]
pub struct ServedKeys {
    pub published: Arc<PublishedIssuer>,
    pub keys: KeySet,
}

/// What outlives snapshots: external issuers and their refresh tasks, the
/// verified-token cache, and each policy's meters and audit counters.
pub struct PolicyRuntime {
    pub metrics: Arc<Metrics>,
    external: ExternalIssuers,
    cache: Option<Arc<DecisionCache>>,
    stats: Mutex<HashMap<ObjectKey, Arc<PolicyStats>>>,
    /// Per policy, the fingerprint of what decides verification and its cache epoch:
    /// a rebuild for an unrelated change keeps the policy's cached tokens.
    epochs: Mutex<HashMap<ObjectKey, ([u8; 32], u64)>>,
    /// The problems found at the last build, by subject: logged when they appear and
    /// when they are gone, not at every rebuild.
    problems: Mutex<HashMap<String, String>>,
}

impl PolicyRuntime {
    /// `cache_size` entries of verified tokens; 0 turns the cache off.
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>, cache_size: usize) -> Self {
        Self {
            external: ExternalIssuers::new(metrics.clone(), clock),
            metrics,
            cache: DecisionCache::new(cache_size),
            stats: Mutex::default(),
            epochs: Mutex::default(),
            problems: Mutex::default(),
        }
    }

    /// Logs the problems of a build that were not there at the previous one, and the
    /// subjects whose problem is gone: state changes, not states.
    fn report_problems(&self, found: HashMap<String, String>) {
        let mut known = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        for (subject, problem) in &found {
            if known.get(subject) != Some(problem) {
                tracing::warn!("{subject}: {problem}");
            }
        }
        for subject in known.keys() {
            if !found.contains_key(subject) {
                tracing::info!("{subject}: resolved");
            }
        }
        *known = found;
    }

    /// The epoch for a policy whose verification inputs hash to `fingerprint`: the last
    /// one while they are unchanged, a new one otherwise.
    fn epoch(&self, id: &ObjectKey, fingerprint: [u8; 32]) -> u64 {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        match epochs.get(id) {
            Some((known, epoch)) if *known == fingerprint => *epoch,
            _ => {
                let epoch = crate::policy::cache::next_epoch();
                epochs.insert(id.clone(), (fingerprint, epoch));
                epoch
            }
        }
    }

    fn stats(&self, id: &ObjectKey) -> Arc<PolicyStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .entry(id.clone())
            .or_insert_with(|| Arc::new(PolicyStats::new(&self.metrics, &id.namespace, &id.name)))
            .clone()
    }

    /// (audited, would deny) requests of a policy so far on this replica.
    pub fn audit_totals(&self, id: &ObjectKey) -> (u64, u64) {
        self.stats(id).audit.totals()
    }
}

/// The server's view of a set of SigningKeys and AuthPolicies; the same for every driver.
/// The first SigningKey (by namespace/name) claiming an issuer path wins it.
pub fn build_snapshot<'a>(
    served: &HashMap<ObjectKey, ServedKeys>,
    policies: impl IntoIterator<Item = (&'a ObjectKey, &'a AuthPolicy)>,
    runtime: &PolicyRuntime,
) -> Snapshot {
    let mut snapshot = Snapshot {
        policies_known: true,
        ..Snapshot::default()
    };
    let mut problems = HashMap::new();
    let mut ordered: Vec<(&ObjectKey, &ServedKeys)> = served.iter().collect();
    ordered.sort_by_key(|(id, _)| *id);
    for (id, entry) in ordered {
        let published = &entry.published;
        let path = match issuer_path(&published.issuer) {
            Ok(path) => path,
            Err(e) => {
                problems.insert(format!("SigningKey {id}"), e.to_string());
                continue;
            }
        };
        if let Some(owner) = snapshot.issuers.get(&path) {
            problems.insert(
                format!("SigningKey {id}"),
                format!(
                    "issuer path {path:?} is already served for {}/{}; not serving it twice",
                    owner.namespace, owner.name
                ),
            );
            continue;
        }
        snapshot.issuers.insert(path, published.clone());
    }
    for (id, policy) in policies {
        let context = CompileContext {
            external: Some(&runtime.external),
            cache: runtime.cache.clone(),
            stats: Some(runtime.stats(id)),
            epoch: Some(runtime.epoch(id, verification_fingerprint(id, policy, served))),
        };
        let compiled = CompiledPolicy::compile_with(
            policy,
            |key| {
                served.get(key).map(|entry| IssuerKeys {
                    issuer: &entry.published.issuer,
                    keys: &entry.keys,
                })
            },
            context,
        );
        if !compiled.unresolved.is_empty() {
            problems.insert(
                format!("AuthPolicy {id}"),
                format!(
                    "SigningKey {} not found; tokens cannot be verified, so requests under enforcement are refused (issuer_unavailable)",
                    compiled.unresolved.join(", ")
                ),
            );
        }
        snapshot.policies.insert(id.clone(), Arc::new(compiled));
    }
    runtime
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|id, _| snapshot.policies.contains_key(id));
    runtime
        .epochs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|id, _| snapshot.policies.contains_key(id));
    runtime.report_problems(problems);
    snapshot
}

/// A hash of everything that decides whether a token verifies under a policy: its spec
/// and, for each SigningKey it names, the issuer and the kids (RFC 7638 thumbprints, so
/// the keys themselves). External key sets are checked per cached entry instead. The
/// rollout's progress is not in it: it is applied on every request, cached or not.
fn verification_fingerprint(
    id: &ObjectKey,
    policy: &AuthPolicy,
    served: &HashMap<ObjectKey, ServedKeys>,
) -> [u8; 32] {
    let mut hash = aws_lc_rs::digest::Context::new(&SHA256);
    hash.update(&serde_json::to_vec(&policy.spec).unwrap_or_default());
    for issuer in &policy.spec.issuers {
        let Some(key_id) = issuer.signing_key_id(&id.namespace) else {
            continue;
        };
        hash.update(b"\0key\0");
        match served.get(&key_id) {
            Some(entry) => {
                hash.update(entry.published.issuer.as_bytes());
                for record in entry.keys.records() {
                    hash.update(b"\0");
                    hash.update(record.material.kid().as_bytes());
                }
            }
            None => hash.update(b"\0missing"),
        }
    }
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(hash.finish().as_ref());
    fingerprint
}

/// What the server reads.
#[derive(Default)]
pub struct Snapshot {
    /// By issuer URL path (`""` for an issuer at the root of its host).
    pub issuers: HashMap<String, Arc<PublishedIssuer>>,
    /// Compiled AuthPolicies by namespace/name.
    pub policies: HashMap<ObjectKey, Arc<CompiledPolicy>>,
    /// False while the AuthPolicies are not known (their watch has not listed them, for
    /// example because their CRD is missing): a policy that is not found may exist, so
    /// the answer is 503, not 404. Keys are served meanwhile.
    pub policies_known: bool,
}

/// The state of one input a driver reads, such as a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Not listed yet.
    Syncing,
    /// Listed, and followed.
    Synced,
    /// Failing; what was listed before (if anything) keeps serving.
    Failing(String),
}

/// The snapshot holder: drivers publish, handlers load; neither blocks the other.
#[derive(Default)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    ready: std::sync::atomic::AtomicBool,
    /// Each input by name ("SigningKey watch"), for `/readyz` and the logs.
    sources: Mutex<std::collections::BTreeMap<&'static str, SourceState>>,
    /// The conditions `/status` last reported, per policy.
    pub reported: ReportedConditions,
    /// The revocations in force: published on their own, so that a Revocation never
    /// rebuilds a policy.
    revocations: ArcSwap<crate::revocation::RevocationSet>,
}

/// The conditions last reported per policy, so that a condition's `lastTransitionTime`
/// moves only when its status does, as Kubernetes conventions ask (status in dev mode is
/// computed per request; nothing else remembers it).
#[derive(Default)]
pub struct ReportedConditions(Mutex<HashMap<ObjectKey, Vec<Condition>>>);

impl ReportedConditions {
    /// Keeps the transition times of `conditions` that did not change since the last
    /// report of `id`, and remembers them as its last report.
    pub fn settle(&self, id: &ObjectKey, conditions: &mut [Condition]) {
        let mut reported = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = reported.get(id) {
            keep_transition_times(conditions, previous);
        }
        reported.insert(id.clone(), conditions.to_vec());
    }

    /// Forgets the policies that are gone: one created again starts afresh.
    fn retain(&self, policies: &HashMap<ObjectKey, Arc<CompiledPolicy>>) {
        let mut reported = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        reported.retain(|id, _| policies.contains_key(id));
    }
}

impl Registry {
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the served state and marks the registry ready.
    pub fn publish(&self, snapshot: Snapshot) {
        self.reported.retain(&snapshot.policies);
        self.current.store(Arc::new(snapshot));
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Replaces the revocations in force.
    pub fn publish_revocations(&self, set: crate::revocation::RevocationSet) {
        self.revocations.store(Arc::new(set));
    }

    /// The revocations in force.
    pub fn revocations(&self) -> arc_swap::Guard<Arc<crate::revocation::RevocationSet>> {
        self.revocations.load()
    }

    /// True once a driver has published its first state.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records the state of an input; returns the previous one, so that the caller logs
    /// changes rather than states.
    pub fn set_source(&self, name: &'static str, state: SourceState) -> Option<SourceState> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, state)
    }

    /// Every input that is not synced, with its state.
    pub fn unsynced_sources(&self) -> Vec<(&'static str, SourceState)> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, state)| **state != SourceState::Synced)
            .map(|(name, state)| (*name, state.clone()))
            .collect()
    }
}
