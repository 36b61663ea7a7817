//! The runtime side of serving: the registry the server reads snapshots from (swapped
//! in atomically; requests never wait on a driver and never do I/O), the state of each
//! input, and what outlives snapshots (external issuers, the token cache, meters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{ObjectKey, keep_transition_times};
use crate::clock::Clock;
use crate::external::{ExternalIssuers, FetchSettings};
use crate::index::PolicyEnv;
use crate::metrics::Metrics;
use crate::policy::cache::DecisionCache;
use crate::policy::{CompileContext, CompiledPolicy, METER_SLOTS, PolicyStats};
pub use crate::snapshot::{PublishedIssuer, ServedKeys, Snapshot};

/// What outlives snapshots: external issuers and their refresh tasks, the
/// verified-token cache, and each policy's meters and audit counters.
pub struct PolicyRuntime {
    pub metrics: Arc<Metrics>,
    external: ExternalIssuers,
    /// External issuers the AuthPolicies of one namespace may use.
    max_external_per_namespace: usize,
    /// Where AuthPolicies and TokenClients count their external issuers together.
    external_quota: Arc<crate::external_quota::SharedQuota>,
    cache: Option<Arc<DecisionCache>>,
    stats: Mutex<HashMap<ObjectKey, Arc<PolicyStats>>>,
    /// Per policy, the fingerprint of what decides verification and its cache epoch:
    /// a rebuild for an unrelated change keeps the policy's cached tokens.
    epochs: Mutex<HashMap<ObjectKey, ([u8; 32], u64)>>,
    /// The problems found at the last build, by subject: logged when they appear (or,
    /// with a grace, once they lasted) and when they are gone, not at every rebuild.
    problems: Mutex<HashMap<String, Problem>>,
    /// How long a problem must last to be logged.
    problem_grace: std::time::Duration,
}

/// A subject's problem, and whether it was logged.
struct Problem {
    text: String,
    since: tokio::time::Instant,
    said: bool,
}

impl PolicyRuntime {
    /// `cache_size` entries of verified tokens; 0 turns the cache off. External issuers
    /// are fetched as on a cluster ([`FetchSettings::default`]).
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>, cache_size: usize) -> Self {
        Self::with_fetch(metrics, clock, cache_size, FetchSettings::default())
    }

    /// [`PolicyRuntime::new`], fetching external issuers as `fetch` allows.
    pub fn with_fetch(
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        cache_size: usize,
        fetch: FetchSettings,
    ) -> Self {
        Self {
            max_external_per_namespace: fetch.max_per_namespace,
            external_quota: crate::external_quota::SharedQuota::new(fetch.max_per_namespace),
            external: ExternalIssuers::new(metrics.clone(), clock, fetch),
            metrics,
            cache: DecisionCache::new(cache_size),
            stats: Mutex::default(),
            epochs: Mutex::default(),
            problems: Mutex::default(),
            problem_grace: std::time::Duration::ZERO,
        }
    }

    /// Logs a problem only once it has lasted `grace` ([`Self::report_lasting_problems`]
    /// says which did), and its resolution only if it was logged. On a cluster, watches
    /// arrive in any order and the leader writes a new SigningKey's Secret a moment after
    /// the key appears: at a cold start with 1,000 keys, every key and many policies had a
    /// problem for a second, each logged twice (a warning, then "resolved").
    pub fn with_problem_grace(mut self, grace: std::time::Duration) -> Self {
        self.problem_grace = grace;
        self
    }

    /// Records the problem of a subject (`SigningKey ns/name`), or that it has none:
    /// logged when it appears or changes (once it lasted the grace) and when it is
    /// resolved, not at every change.
    pub fn problem(&self, subject: &str, problem: Option<String>) {
        let mut known = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let immediate = self.problem_grace.is_zero();
        match (problem, known.get_mut(subject)) {
            (Some(problem), Some(known)) if known.text == problem => {}
            (Some(problem), Some(known)) => {
                // A changed problem of a subject in trouble all along: the trouble
                // counts from its start.
                if known.said || immediate {
                    tracing::warn!("{subject}: {problem}");
                    known.said = true;
                }
                known.text = problem;
            }
            (Some(problem), None) => {
                if immediate {
                    tracing::warn!("{subject}: {problem}");
                }
                let problem = Problem {
                    text: problem,
                    since: now,
                    said: immediate,
                };
                known.insert(subject.to_owned(), problem);
            }
            (None, _) => {
                if known.remove(subject).is_some_and(|p| p.said) {
                    tracing::info!("{subject}: resolved");
                }
            }
        }
    }

    /// Logs the problems that have lasted the grace and were not logged yet, but for
    /// those the driver still expects to resolve themselves (a SigningKey whose Secret
    /// the leader is still making, and the policies naming it); returns their subjects.
    pub fn report_lasting_problems(&self, still_expected: impl Fn(&str) -> bool) -> Vec<String> {
        let mut known = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let mut said: Vec<String> = Vec::new();
        for (subject, problem) in known.iter_mut() {
            if !problem.said
                && now.duration_since(problem.since) >= self.problem_grace
                && !still_expected(subject)
            {
                tracing::warn!("{subject}: {}", problem.text);
                problem.said = true;
                said.push(subject.clone());
            }
        }
        said.sort();
        said
    }

    /// Forgets a deleted policy: its meters, gauges, cache epoch and problem. One created
    /// again starts afresh.
    pub fn forget_policy(&self, id: &ObjectKey) {
        self.metrics.forget_policy(&id.namespace, &id.name);
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.problem(&format!("AuthPolicy {id}"), None);
    }

    /// The epoch for a policy whose verification inputs hash to `fingerprint`: the last
    /// one while they are unchanged, a new one otherwise.
    pub fn epoch(&self, id: &ObjectKey, fingerprint: [u8; 32]) -> u64 {
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

    pub fn stats(&self, id: &ObjectKey) -> Arc<PolicyStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .entry(id.clone())
            .or_insert_with(|| {
                let meters = self
                    .metrics
                    .policy_meters(&id.namespace, &id.name, METER_SLOTS);
                Arc::new(PolicyStats::new(Box::new(meters)))
            })
            .clone()
    }

    /// (audited, would deny) requests of a policy so far on this replica.
    pub fn audit_totals(&self, id: &ObjectKey) -> (u64, u64) {
        self.stats(id).audit.totals()
    }
}

impl PolicyEnv for PolicyRuntime {
    fn context(&self, id: &ObjectKey, fingerprint: [u8; 32]) -> CompileContext<'_> {
        CompileContext {
            external: Some(&self.external),
            cache: self.cache.clone(),
            stats: Some(self.stats(id)),
            epoch: Some(self.epoch(id, fingerprint)),
        }
    }

    fn problem(&self, subject: &str, problem: Option<String>) {
        PolicyRuntime::problem(self, subject, problem)
    }

    fn forget_policy(&self, id: &ObjectKey) {
        PolicyRuntime::forget_policy(self, id)
    }

    fn max_external_issuers_per_namespace(&self) -> usize {
        self.max_external_per_namespace
    }

    fn external_quota(&self) -> Option<Arc<crate::external_quota::SharedQuota>> {
        Some(self.external_quota.clone())
    }
}

/// TokenClients' ID-token issuers are fetched by the same fetcher as AuthPolicies'
/// external issuers: one refresh task per issuer configuration, whoever names it.
impl crate::policy::remote::RemoteIssuers for PolicyRuntime {
    fn get(
        &self,
        config: &crate::policy::remote::ExternalConfig,
    ) -> Arc<dyn crate::policy::remote::RemoteIssuer> {
        self.external.get(config)
    }
}

impl PolicyRuntime {
    /// The TokenClients' index: their ID-token issuers fetched as policies' issuers are,
    /// and counted with them in one cap per namespace.
    pub fn token_client_index(self: &Arc<Self>) -> crate::token_clients::TokenClientIndex {
        crate::token_clients::TokenClientIndex::with_external(
            self.clone(),
            self.external_quota.clone(),
        )
    }
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
    /// Counts publications of `revocations`, for whoever waits for one to be in force.
    revocations_published: tokio::sync::watch::Sender<u64>,
    /// The TokenClients the token endpoint serves, by `client_id`: published on their
    /// own (dev mode's driver and the operator's TokenClient watch), like revocations.
    token_clients: ArcSwap<crate::token_clients::Published>,
    /// The key sets the token endpoint signs with, by SigningKey: private keys, kept in
    /// memory only and never in a snapshot that status or metrics read.
    signers: ArcSwap<Signers>,
}

/// The key sets of the served SigningKeys, by SigningKey (a persistent map: publishing
/// one copies nothing).
pub type Signers = imbl::HashMap<ObjectKey, Arc<crate::keys::lifecycle::KeySet>>;

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
    fn retain(&self, policies: &imbl::HashMap<ObjectKey, Arc<CompiledPolicy>>) {
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
        self.revocations_published
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes with every publication of the revocations in force.
    pub fn revocations_published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations_published.subscribe()
    }

    /// The revocations in force.
    pub fn revocations(&self) -> arc_swap::Guard<Arc<crate::revocation::RevocationSet>> {
        self.revocations.load()
    }

    /// Replaces the TokenClients the token endpoint serves.
    pub fn publish_token_clients(&self, clients: crate::token_clients::Published) {
        self.token_clients.store(Arc::new(clients));
    }

    /// The TokenClients the token endpoint serves.
    pub fn token_clients(&self) -> Arc<crate::token_clients::Published> {
        self.token_clients.load_full()
    }

    /// Replaces the key sets the token endpoint signs with.
    pub fn publish_signers(&self, signers: Signers) {
        self.signers.store(Arc::new(signers));
    }

    /// The key set of a SigningKey, to sign a token with its Active key.
    pub fn signer(&self, key: &ObjectKey) -> Option<Arc<crate::keys::lifecycle::KeySet>> {
        self.signers.load().get(key).cloned()
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

    /// Every input, and whether it is synced.
    pub fn sources_synced(&self) -> Vec<(&'static str, bool)> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, state)| (*name, *state == SourceState::Synced))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_problem_is_logged_once_it_lasts_and_its_resolution_only_if_it_was() {
        let runtime = PolicyRuntime::new(
            Arc::new(Metrics::default()),
            Arc::new(crate::clock::SystemClock),
            0,
        )
        .with_problem_grace(Duration::from_secs(30));
        // A new key's Secret arrives a moment after the key: never logged.
        runtime.problem("SigningKey auth/web", Some("not served yet".into()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(runtime.report_lasting_problems(|_| false).is_empty());
        runtime.problem("SigningKey auth/web", None);
        // One that lasts is logged once, after the grace, whatever changes meanwhile.
        runtime.problem(
            "AuthPolicy shop/pay",
            Some("SigningKey auth/x not found".into()),
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        runtime.problem(
            "AuthPolicy shop/pay",
            Some("SigningKey auth/y not found".into()),
        );
        assert!(runtime.report_lasting_problems(|_| false).is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        // While its key is still being made, it is expected to resolve: not yet.
        assert!(runtime.report_lasting_problems(|_| true).is_empty());
        assert_eq!(
            runtime.report_lasting_problems(|_| false),
            ["AuthPolicy shop/pay"]
        );
        assert!(
            runtime.report_lasting_problems(|_| false).is_empty(),
            "once"
        );
        runtime.problem("AuthPolicy shop/pay", None);
        assert!(runtime.problems.lock().unwrap().is_empty());
    }
}
