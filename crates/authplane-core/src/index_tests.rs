//! The index in Linkerd's style: sequences of apply and delete, and assertions on the
//! published snapshot and on how many policies were compiled. No server, no API.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::HeaderMap;
use jiff::Timestamp;
use serde_json::json;

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Index, PolicyEnv};
use crate::api::{AuthPolicy, ObjectKey, SigningKey};
use crate::issuer_claims::{ClaimRank, IssuerScope, KeyClaim};
use crate::keys::KeyMaterial;
use crate::policy::cache::DecisionCache;
use crate::policy::{CompileContext, DecisionMeters, PolicyStats, Rejection, Verdict};
use crate::revocation::RevocationSet;
use crate::snapshot::ServedKeys;
use crate::token::{MintRequest, mint};

const URL: &str = "https://auth.example";

fn id(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The runtime's part, as small as a test needs: a token cache, one epoch per
/// fingerprint, and cache hits counted.
struct TestEnv {
    cache: Option<Arc<DecisionCache>>,
    epochs: std::sync::Mutex<std::collections::HashMap<[u8; 32], u64>>,
    hits: Arc<AtomicU64>,
    problems: Arc<Problems>,
}

/// The problems reported, by subject.
type Problems = std::sync::Mutex<std::collections::BTreeMap<String, String>>;

struct CountHits(Arc<AtomicU64>);

impl DecisionMeters for CountHits {
    fn record(&self, _: usize, _: &'static str, _: &'static str, _: f64) {}
    fn cache_hit(&self, hit: bool) {
        if hit {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PolicyEnv for TestEnv {
    fn context(&self, _: &ObjectKey, fingerprint: [u8; 32]) -> CompileContext<'_> {
        let epoch = *self
            .epochs
            .lock()
            .unwrap()
            .entry(fingerprint)
            .or_insert_with(crate::policy::cache::next_epoch);
        CompileContext {
            external: None,
            cache: self.cache.clone(),
            stats: Some(Arc::new(PolicyStats::new(Box::new(CountHits(
                self.hits.clone(),
            ))))),
            epoch: Some(epoch),
        }
    }
    fn problem(&self, subject: &str, problem: Option<String>) {
        let mut problems = self.problems.lock().unwrap();
        match problem {
            Some(problem) => problems.insert(subject.to_owned(), problem),
            None => problems.remove(subject),
        };
    }
    fn forget_policy(&self, _: &ObjectKey) {}
}

/// An index, and the count of its cache hits.
fn index(cache_size: usize) -> (Index, Arc<AtomicU64>) {
    let (index, hits, _) = index_in(IssuerScope::anywhere(URL), cache_size);
    (index, hits)
}

/// An index publishing issuers as `scope` allows, its cache hits, and the problems it
/// reports.
fn index_in(scope: IssuerScope, cache_size: usize) -> (Index, Arc<AtomicU64>, Arc<Problems>) {
    let hits = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(Problems::default());
    let env = TestEnv {
        cache: DecisionCache::new(cache_size),
        epochs: Default::default(),
        hits: hits.clone(),
        problems: problems.clone(),
    };
    (Index::new(Arc::new(env), Arc::new(scope)), hits, problems)
}

fn signing_key(name: &str, spec: serde_json::Value) -> SigningKey {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": name, "namespace": "auth"},
        "spec": spec,
    }))
    .unwrap()
}

/// Fresh keys for a SigningKey (EdDSA, fast to make): new kids every call.
fn fresh_keys(name: &str, spec: serde_json::Value) -> ServedKeys {
    let key = signing_key(name, spec);
    let outcome = crate::reconcile::signing_key(
        &key,
        None,
        URL,
        Timestamp::now(),
        &mut KeyMaterial::generate,
    )
    .unwrap();
    ServedKeys {
        published: Arc::new(outcome.published("auth", name)),
        keys: outcome.keys,
        max_token_lifetime: key.spec.max_token_lifetime(),
    }
}

fn eddsa(name: &str) -> ServedKeys {
    fresh_keys(name, json!({"algorithm": "EdDSA"}))
}

fn policy(name: &str, key: &str, audience: &str) -> AuthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": {
            "issuers": [{"signingKeyRef": {"name": key, "namespace": "auth"}}],
            "audiences": [audience],
            "rollout": {"mode": "Enforce", "percentage": 100},
        },
    }))
    .unwrap()
}

fn token(served: &ServedKeys, audience: &str) -> String {
    let request = MintRequest {
        subject: "alice".into(),
        audiences: vec![audience.into()],
        ttl: jiff::SignedDuration::from_mins(10),
        ..MintRequest::default()
    };
    mint(
        &served.keys,
        &served.published.issuer,
        &request,
        Timestamp::now(),
    )
    .unwrap()
}

fn decide(index: &Index, policy: &str, token: &str) -> Verdict {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let snapshot = index.snapshot();
    snapshot.policies[&id("shop", policy)]
        .decide(&headers, Timestamp::now(), &RevocationSet::default())
        .verdict
}

#[test]
fn a_policy_is_served_once_applied_and_gone_once_deleted() {
    let (mut index, _) = index(0);
    let web = eddsa("web");
    index.apply_key(&id("auth", "web"), web.clone());
    assert!(index.apply_policy(Arc::new(policy("pay", "web", "pay"))));
    assert_eq!(decide(&index, "pay", &token(&web, "pay")), Verdict::Allow);
    assert_eq!(
        decide(&index, "pay", &token(&web, "other")),
        Verdict::Deny(Rejection::WrongAudience)
    );
    assert!(index.snapshot().issuers.contains_key("/auth/web"));

    assert!(index.delete_policy(&id("shop", "pay")));
    assert!(!index.snapshot().policies.contains_key(&id("shop", "pay")));
    assert!(!index.delete_policy(&id("shop", "pay")), "already gone");
}

#[test]
fn an_unchanged_policy_is_not_compiled_again() {
    let (mut index, _) = index(0);
    index.apply_key(&id("auth", "web"), eddsa("web"));
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    let compiled = index.snapshot().policies[&id("shop", "pay")].clone();
    assert_eq!(index.compilations(), 1);

    // What the leader writes (conditions, a new resourceVersion, labels) compiles nothing.
    let mut same = policy("pay", "web", "pay");
    same.metadata.resource_version = Some("42".into());
    same.metadata.labels = Some([("team".to_owned(), "payments".to_owned())].into());
    same.status = Some(crate::api::AuthPolicyStatus {
        forward_auth_url: Some("http://x".into()),
        ..Default::default()
    });
    assert!(!index.apply_policy(Arc::new(same)));
    assert_eq!(index.compilations(), 1);
    assert!(Arc::ptr_eq(
        &index.snapshot().policies[&id("shop", "pay")],
        &compiled
    ));

    // Its spec changing compiles it, and only it.
    index.apply_policy(Arc::new(policy("other", "web", "other")));
    assert!(index.apply_policy(Arc::new(policy("pay", "web", "pay-v2"))));
    assert_eq!(index.compilations(), 3);
}

#[test]
fn a_secret_change_recompiles_only_the_policies_naming_its_key() {
    let (index, _) = index(0);
    let mut index = index.recording_recompiled();
    index.apply_key(&id("auth", "web"), eddsa("web"));
    index.apply_key(&id("auth", "mobile"), eddsa("mobile"));
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    index.apply_policy(Arc::new(policy("cart", "web", "cart")));
    index.apply_policy(Arc::new(policy("app", "mobile", "app")));
    let before = index.snapshot();
    assert_eq!(index.compilations(), 3);
    assert_eq!(index.take_recompiled().len(), 3);

    // New keys in web's Secret (a rotation, a restore): pay and cart verify with them.
    let rotated = eddsa("web");
    assert!(index.apply_key(&id("auth", "web"), rotated.clone()));
    assert_eq!(index.compilations(), 5, "pay and cart, not app");
    assert_eq!(
        index.take_recompiled(),
        BTreeSet::from([id("shop", "cart"), id("shop", "pay")]),
        "what the status controller is told to report again"
    );
    let after = index.snapshot();
    assert!(Arc::ptr_eq(
        &before.policies[&id("shop", "app")],
        &after.policies[&id("shop", "app")]
    ));
    assert_eq!(
        decide(&index, "cart", &token(&rotated, "cart")),
        Verdict::Allow
    );
    assert_ne!(
        before.issuers["/auth/web"].jwks, after.issuers["/auth/web"].jwks,
        "the JWKS is rendered again"
    );

    // The same keys rendered again (a Secret event that changed nothing we verify with,
    // a Next key becoming Active) compile nothing.
    let again = ServedKeys {
        published: Arc::new(crate::snapshot::PublishedIssuer::render(
            "auth",
            "web",
            &rotated.published.issuer,
            &rotated.keys,
            crate::snapshot::Rotation {
                every: jiff::SignedDuration::from_hours(720),
                pre_publish: jiff::SignedDuration::from_hours(1),
                retain_for: jiff::SignedDuration::from_hours(24),
            },
        )),
        keys: rotated.keys.clone(),
        max_token_lifetime: rotated.max_token_lifetime,
    };
    assert!(!index.apply_key(&id("auth", "web"), again));
    assert_eq!(index.compilations(), 5);
    assert!(index.take_recompiled().is_empty());

    // A policy deleted before it was reported is not reported.
    index.apply_policy(Arc::new(policy("late", "web", "late")));
    index.delete_policy(&id("shop", "late"));
    assert!(index.take_recompiled().is_empty());
}

#[test]
fn an_index_not_asked_to_record_its_compilations_keeps_none() {
    let (mut index, _) = index(0);
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    assert_eq!(index.compilations(), 1);
    assert!(index.take_recompiled().is_empty());
}

#[test]
fn a_policy_waits_for_its_key_and_fails_closed_without_it() {
    let (mut index, _) = index(0);
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    let web = eddsa("web");
    let token = token(&web, "pay");
    assert_eq!(
        decide(&index, "pay", &token),
        Verdict::Deny(Rejection::IssuerUnavailable)
    );
    assert_eq!(
        index.snapshot().policies[&id("shop", "pay")].unresolved,
        ["auth/web"]
    );

    index.apply_key(&id("auth", "web"), web);
    assert_eq!(decide(&index, "pay", &token), Verdict::Allow);
    assert!(
        index.snapshot().policies[&id("shop", "pay")]
            .unresolved
            .is_empty()
    );

    assert!(index.delete_key(&id("auth", "web")));
    assert_ne!(decide(&index, "pay", &token), Verdict::Allow);
    assert!(!index.snapshot().issuers.contains_key("/auth/web"));
}

#[test]
fn a_policy_that_stops_naming_a_key_is_not_recompiled_by_it() {
    let (mut index, _) = index(0);
    index.apply_key(&id("auth", "web"), eddsa("web"));
    index.apply_key(&id("auth", "mobile"), eddsa("mobile"));
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    index.apply_policy(Arc::new(policy("pay", "mobile", "pay")));
    let compiled = index.compilations();
    index.apply_key(&id("auth", "web"), eddsa("web"));
    assert_eq!(index.compilations(), compiled, "pay no longer names web");
    index.apply_key(&id("auth", "mobile"), eddsa("mobile"));
    assert_eq!(index.compilations(), compiled + 1);
}

#[test]
fn an_unrelated_change_keeps_cached_decisions() {
    let (mut index, hits) = index(100);
    let web = eddsa("web");
    index.apply_key(&id("auth", "web"), web.clone());
    index.apply_key(&id("auth", "mobile"), eddsa("mobile"));
    index.apply_policy(Arc::new(policy("pay", "web", "pay")));
    let token = token(&web, "pay");
    assert_eq!(decide(&index, "pay", &token), Verdict::Allow);
    assert_eq!(decide(&index, "pay", &token), Verdict::Allow);
    assert_eq!(
        hits.load(Ordering::Relaxed),
        1,
        "the second decision is cached"
    );

    // Another policy, another key's rotation, pay's own rollout progress recorded: pay's
    // cached verification stays.
    index.apply_policy(Arc::new(policy("cart", "web", "cart")));
    index.apply_key(&id("auth", "mobile"), eddsa("mobile"));
    let mut progressed = policy("pay", "web", "pay");
    progressed.status = Some(crate::api::AuthPolicyStatus {
        rollout: Some(
            serde_json::from_value(
                json!({"step": 0, "steps": [100.0], "since": "2026-01-01T00:00:00Z"}),
            )
            .unwrap(),
        ),
        ..Default::default()
    });
    assert!(index.apply_policy(Arc::new(progressed)), "recompiled");
    assert_eq!(decide(&index, "pay", &token), Verdict::Allow);
    assert_eq!(hits.load(Ordering::Relaxed), 2, "still cached");

    // What pay verifies with changing does drop it.
    index.apply_key(&id("auth", "web"), eddsa("web"));
    assert_ne!(decide(&index, "pay", &token), Verdict::Allow);
    assert_eq!(hits.load(Ordering::Relaxed), 2);
}

/// A claim of `issuer` first stored at `since` (seconds after an epoch), with a uid.
fn claim(issuer: &str, since: Option<i64>, uid: Option<&str>) -> KeyClaim {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    KeyClaim {
        issuer: issuer.to_owned(),
        rank: ClaimRank {
            since: since.map(|s| t0 + jiff::SignedDuration::from_secs(s)),
            uid: uid.map(str::to_owned),
        },
        secrets: Vec::new(),
    }
}

#[test]
fn an_issuer_path_stays_with_its_earliest_claim_whatever_the_names() {
    let (index, _, problems) = index_in(IssuerScope::anywhere(URL), 0);
    let mut index = index.recording_recompiled();
    let shared = json!({"algorithm": "EdDSA", "issuer": "https://auth.example/shared"});
    let (web, aaa) = (fresh_keys("web", shared.clone()), fresh_keys("aaa", shared));
    let issuer = "https://auth.example/shared";
    index.apply_claim(
        &id("auth", "web"),
        claim(issuer, Some(10), Some("u-web")),
        Some(web.clone()),
    );
    assert_eq!(index.snapshot().issuers["/shared"].jwks, web.published.jwks);
    assert_eq!(index.take_reclaimed(), BTreeSet::from([id("auth", "web")]));

    // A newcomer that sorts first by name and has the smaller uid takes nothing.
    index.apply_claim(
        &id("auth", "aaa"),
        claim(issuer, Some(20), Some("u-0")),
        Some(aaa.clone()),
    );
    let snapshot = index.snapshot();
    assert_eq!(
        snapshot.issuers["/shared"].jwks, web.published.jwks,
        "never by name"
    );
    assert_eq!(snapshot.path_owners["/shared"], Some(id("auth", "web")));
    assert_eq!(
        index.take_reclaimed(),
        BTreeSet::from([id("auth", "aaa"), id("auth", "web")]),
        "both are told (their status, their Events)"
    );
    let told = problems.lock().unwrap().clone();
    assert!(
        told["SigningKey auth/aaa"]
            .starts_with("issuer path \"/shared\" is served for auth/web, which claimed it first"),
        "{told:?}"
    );
    assert!(!told.contains_key("SigningKey auth/web"));
    assert_eq!(
        told["issuer path \"/shared\""],
        "claimed by auth/web and auth/aaa; it stays with auth/web, which claimed it first"
    );
    // Its keys still verify for the policies that name it.
    index.apply_policy(Arc::new(policy("pay", "aaa", "pay")));
    assert_eq!(decide(&index, "pay", &token(&aaa, "pay")), Verdict::Allow);

    // A rotation of the newcomer moves nothing; the owner gone, the next claim serves.
    index.apply_claim(
        &id("auth", "aaa"),
        claim(issuer, Some(20), Some("u-0")),
        Some(eddsa("aaa")),
    );
    assert_eq!(index.snapshot().issuers["/shared"].jwks, web.published.jwks);
    index.delete_key(&id("auth", "web"));
    assert_eq!(
        index.snapshot().path_owners["/shared"],
        Some(id("auth", "aaa"))
    );
    assert!(
        problems.lock().unwrap().is_empty(),
        "every conflict resolved"
    );
    index.delete_key(&id("auth", "aaa"));
    assert!(index.snapshot().issuers.is_empty());
    assert!(index.snapshot().path_owners.is_empty());
}

#[test]
fn a_claim_without_keys_holds_its_path_and_a_tie_serves_neither() {
    let (mut index, _) = index(0);
    let issuer = "https://auth.example/shared";
    // The first claim's Secret is still being written: its path serves nothing yet, and
    // not the keys of a later claim.
    index.apply_claim(&id("auth", "web"), claim(issuer, None, Some("u-web")), None);
    let later = fresh_keys("x", json!({"algorithm": "EdDSA", "issuer": issuer}));
    index.apply_claim(
        &id("auth", "x"),
        claim(issuer, None, Some("u-x")),
        Some(later.clone()),
    );
    assert!(!index.snapshot().issuers.contains_key("/shared"));
    let web = fresh_keys("web", json!({"algorithm": "EdDSA", "issuer": issuer}));
    index.apply_claim(
        &id("auth", "web"),
        claim(issuer, Some(5), Some("u-web")),
        Some(web.clone()),
    );
    assert_eq!(index.snapshot().issuers["/shared"].jwks, web.published.jwks);

    // Without uids (dev mode), two claims of the same instant: neither is served.
    let (mut index, _, problems) = index_in(IssuerScope::anywhere(URL), 0);
    index.apply_claim(&id("auth", "b"), claim(issuer, Some(5), None), Some(web));
    index.apply_claim(&id("auth", "a"), claim(issuer, Some(5), None), Some(later));
    let snapshot = index.snapshot();
    assert!(!snapshot.issuers.contains_key("/shared"));
    assert_eq!(snapshot.path_owners["/shared"], None);
    assert!(problems.lock().unwrap()["SigningKey auth/a"].contains("since the same instant"));
    index.delete_key(&id("auth", "a"));
    assert!(index.snapshot().issuers.contains_key("/shared"));
}

#[test]
fn only_an_issuer_of_this_server_within_its_namespace_is_served() {
    let scope = IssuerScope::new(URL, ["platform".to_owned()]).unwrap();
    let (mut index, _, problems) = index_in(scope, 0);
    let keys = |name: &str, issuer: &str| {
        let served = fresh_keys(name, json!({"algorithm": "EdDSA", "issuer": issuer}));
        (claim(issuer, Some(1), Some(name)), served)
    };
    for (namespace, name, issuer) in [
        ("aaa", "x", "https://auth.example/auth/web"),
        ("aaa", "evil", "https://evil.example/auth/web"),
    ] {
        let (claim, served) = keys(name, issuer);
        index.apply_claim(&id(namespace, name), claim, Some(served));
    }
    let snapshot = index.snapshot();
    assert!(
        snapshot.issuers.is_empty(),
        "neither is served at /auth/web"
    );
    assert!(snapshot.path_owners.is_empty(), "nor holds it");
    let told = problems.lock().unwrap().clone();
    assert!(
        told["SigningKey aaa/x"].contains("is outside \"/aaa\""),
        "{told:?}"
    );
    assert!(
        !told.contains_key("SigningKey aaa/evil"),
        "published elsewhere is no problem"
    );
    // auth/web, in its namespace, and the platform's root issuer are served.
    let (claim_web, web) = keys("web", "https://auth.example/auth/web");
    index.apply_claim(&id("auth", "web"), claim_web, Some(web));
    let (claim_root, root) = keys("root", "https://auth.example");
    index.apply_claim(&id("platform", "root"), claim_root, Some(root));
    let mut paths: Vec<String> = index.snapshot().issuers.keys().cloned().collect();
    paths.sort();
    assert_eq!(paths, ["", "/auth/web"]);
}

#[test]
fn the_secrets_named_are_published_for_the_admission_webhook() {
    let (mut index, _) = index(0);
    let mut web = claim("https://auth.example/auth/web", Some(1), Some("u"));
    web.secrets = vec!["web-keys".into(), "web-keys-active".into()];
    index.apply_claim(&id("auth", "web"), web.clone(), None);
    let secrets = index.snapshot().secrets;
    assert_eq!(secrets[&id("auth", "web-keys-active")], id("auth", "web"));
    assert_eq!(secrets.len(), 2);
    web.secrets = vec!["other".into(), "other-active".into()];
    index.apply_claim(&id("auth", "web"), web, None);
    assert!(
        !index
            .snapshot()
            .secrets
            .contains_key(&id("auth", "web-keys"))
    );
    index.delete_key(&id("auth", "web"));
    assert!(index.snapshot().secrets.is_empty());
}

#[test]
fn a_snapshot_shares_what_did_not_change() {
    let (mut index, _) = index(0);
    index.apply_key(&id("auth", "web"), eddsa("web"));
    for i in 0..100 {
        index.apply_policy(Arc::new(policy(&format!("p{i}"), "web", "pay")));
    }
    let before = index.snapshot();
    index.apply_policy(Arc::new(policy("p7", "web", "other")));
    index.delete_policy(&id("shop", "p8"));
    let after = index.snapshot();
    assert_eq!(after.policies.len(), 99);
    for i in (0..100).filter(|i| ![7, 8].contains(i)) {
        let key = id("shop", &format!("p{i}"));
        assert!(Arc::ptr_eq(&before.policies[&key], &after.policies[&key]));
    }
    assert!(!Arc::ptr_eq(
        &before.policies[&id("shop", "p7")],
        &after.policies[&id("shop", "p7")]
    ));
    assert_eq!(
        before.policies.len(),
        100,
        "a published snapshot never changes"
    );
}
