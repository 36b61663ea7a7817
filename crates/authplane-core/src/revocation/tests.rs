//! The index by `apply`/`delete` sequences and assertions on the published set.

use super::*;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

fn revocation(namespace: &str, name: &str, spec: serde_json::Value, created: i64) -> Revocation {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "authplane.io/v1alpha1",
        "kind": "Revocation",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": at(created).to_string(),
        },
        "spec": spec,
    }))
    .unwrap()
}

fn web() -> ObjectKey {
    ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    }
}

const ISS: &str = "https://auth.example/web";

fn token<'a>(
    key: Option<&'a ObjectKey>,
    claims: &'a serde_json::Map<String, Value>,
) -> TokenFacts<'a> {
    TokenFacts::of(claims, key)
}

fn claims(value: serde_json::Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn index_with(revocations: &[Revocation]) -> RevocationIndex {
    let mut index = RevocationIndex::default();
    index.set_key_lifetime(web(), Some(SignedDuration::from_mins(15)));
    for r in revocations {
        assert!(index.apply(r, at(0)).unwrap());
    }
    index
}

#[test]
fn a_token_id_revokes_that_token_only() {
    let index = index_with(&[revocation(
        "auth",
        "one",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j1"}),
        1000,
    )]);
    let (set, counts) = index.publish(at(1000));
    let key = web();
    let revoked = claims(serde_json::json!({"iss": ISS, "jti": "j1", "sub": "a", "iat": 900}));
    let other = claims(serde_json::json!({"iss": ISS, "jti": "j2", "sub": "a", "iat": 900}));
    assert!(set.is_revoked("shop", &token(Some(&key), &revoked), 1000));
    assert!(!set.is_revoked("shop", &token(Some(&key), &other), 1000));
    // Another issuer's token with the same jti is not touched.
    let elsewhere = ObjectKey {
        namespace: "auth".into(),
        name: "other".into(),
    };
    assert!(!set.is_revoked("shop", &token(Some(&elsewhere), &revoked), 1000));
    assert_eq!(
        counts,
        vec![Count {
            namespace: "auth".into(),
            issuer: "auth/web".into(),
            active: 1
        }]
    );
}

#[test]
fn a_subject_is_revoked_up_to_issued_before_and_tokens_minted_later_pass() {
    let index = index_with(&[revocation(
        "auth",
        "paid",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "subject": "alice",
            "issuedBefore": at(2000).to_string()}),
        1000,
    )]);
    let (set, _) = index.publish(at(2100));
    let key = web();
    let old = claims(serde_json::json!({"iss": ISS, "sub": "alice", "iat": 2000}));
    let new = claims(serde_json::json!({"iss": ISS, "sub": "alice", "iat": 2001}));
    let no_iat = claims(serde_json::json!({"iss": ISS, "sub": "alice"}));
    let bob = claims(serde_json::json!({"iss": ISS, "sub": "bob", "iat": 1}));
    assert!(set.is_revoked("x", &token(Some(&key), &old), 2100));
    assert!(!set.is_revoked("x", &token(Some(&key), &new), 2100));
    assert!(set.is_revoked("x", &token(Some(&key), &no_iat), 2100));
    assert!(!set.is_revoked("x", &token(Some(&key), &bob), 2100));
}

#[test]
fn issued_before_defaults_to_creation_and_expiry_is_that_plus_the_lifetime() {
    let index = index_with(&[revocation(
        "auth",
        "pw",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "subject": "alice"}),
        5000,
    )]);
    let entry = index
        .get(&ObjectKey {
            namespace: "auth".into(),
            name: "pw".into(),
        })
        .unwrap();
    // With 15-minute tokens, a revocation lives 15 minutes and the largest leeway: a
    // token issued at its instant passes until then.
    let until = 5000 + 15 * 60 + 5 * 60;
    assert_eq!(index.lapse(entry), Lapse::At(until));
    assert!(index.expired(at(until)).is_empty());
    assert_eq!(index.expired(at(until + 1)).len(), 1);
    assert_eq!(index.next_expiry(at(5000)), Some(at(until + 1)));
    // Lapsed entries stop counting, in the lookup and in the published set.
    let (set, _) = index.publish(at(5000));
    let key = web();
    let t = claims(serde_json::json!({"iss": ISS, "sub": "alice", "iat": 4000}));
    assert!(set.is_revoked("x", &token(Some(&key), &t), until));
    assert!(!set.is_revoked("x", &token(Some(&key), &t), until + 1));
    let (later, counts) = index.publish(at(until + 1));
    assert!(later.is_empty() && counts.is_empty());
}

/// An AuthPolicy of `spec` (the lifetimes tests use it too).
pub(super) fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> AuthPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

/// A policy that accepts longer tokens of a key keeps that key's Revocations as long;
/// they lapse on time again once it is gone.
#[test]
fn a_policy_that_accepts_longer_tokens_keeps_the_revocations_as_long() {
    let mut index = index_with(&[revocation(
        "auth",
        "pw",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "subject": "alice"}),
        0,
    )]);
    let id = ObjectKey {
        namespace: "auth".into(),
        name: "pw".into(),
    };
    assert_eq!(index.lapse(index.get(&id).unwrap()), Lapse::At(20 * 60));
    let legacy = policy(
        "shop",
        "legacy",
        serde_json::json!({"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"},
            "maxTokenLifetime": "8h"}]}),
    );
    assert!(index.apply_policy(&legacy));
    let until = 8 * 3600 + 5 * 60;
    assert_eq!(index.lapse(index.get(&id).unwrap()), Lapse::At(until));
    let (set, _) = index.publish(at(4 * 3600));
    let seven_hours = claims(serde_json::json!({"iss": ISS, "sub": "alice", "iat": 0}));
    assert!(set.is_revoked("shop", &token(Some(&web()), &seven_hours), 4 * 3600));
    assert!(index.delete_policy(&ObjectKey::of(&legacy.metadata)));
    assert_eq!(index.lapse(index.get(&id).unwrap()), Lapse::At(20 * 60));
}

/// An external issuer's Revocation lives as long as the policies of its namespace accept
/// that issuer's tokens: for ever while one of them sets no limit.
#[test]
fn an_external_issuers_revocation_lives_as_long_as_its_namespaces_policies_need() {
    const ENTRA: &str = "https://login.example/t/v2.0";
    let mut index = index_with(&[revocation(
        "shop",
        "entra",
        serde_json::json!({"issuer": ENTRA, "subject": "e"}),
        0,
    )]);
    let id = ObjectKey {
        namespace: "shop".into(),
        name: "entra".into(),
    };
    let lapse = |index: &RevocationIndex| index.lapse(index.get(&id).unwrap());
    assert_eq!(lapse(&index), Lapse::At(24 * 3600));
    let open = policy(
        "shop",
        "api",
        serde_json::json!({"issuers": [{"issuer": ENTRA}]}),
    );
    index.apply_policy(&open);
    assert_eq!(
        lapse(&index),
        Lapse::Never {
            policy: ObjectKey::of(&open.metadata)
        }
    );
    assert!(index.expired(at(i64::from(u32::MAX))).is_empty());
    let limited = policy(
        "shop",
        "api",
        serde_json::json!({"issuers": [{"issuer": ENTRA, "maxTokenLifetime": "90m"}]}),
    );
    index.apply_policy(&limited);
    assert_eq!(lapse(&index), Lapse::At(95 * 60));
}

#[test]
fn an_unknown_signing_key_keeps_its_revocations_counting_and_never_expires_them() {
    let mut index = RevocationIndex::default();
    index
        .apply(
            &revocation(
                "auth",
                "j",
                serde_json::json!({"signingKeyRef": {"name": "gone"}, "tokenId": "x"}),
                0,
            ),
            at(0),
        )
        .unwrap();
    assert!(index.expired(at(10_000_000)).is_empty());
    assert_eq!(index.publish(at(10_000_000)).0.len(), 1);
}

#[test]
fn scope_is_where_the_object_lives() {
    // In shop, naming auth/web: only shop's policies.
    let index = index_with(&[
        revocation(
            "shop",
            "sess",
            serde_json::json!({"signingKeyRef": {"name": "web", "namespace": "auth"}, "sessionId": "s1"}),
            100,
        ),
        revocation(
            "shop",
            "entra",
            serde_json::json!({"issuer": "https://login.example/t/v2.0", "tokenId": "e1"}),
            100,
        ),
    ]);
    let (set, _) = index.publish(at(100));
    let key = web();
    let t = claims(serde_json::json!({"iss": ISS, "sid": "s1", "sub": "a", "iat": 50}));
    assert!(set.is_revoked("shop", &token(Some(&key), &t), 100));
    assert!(!set.is_revoked("billing", &token(Some(&key), &t), 100));
    let e = claims(serde_json::json!({"iss": "https://login.example/t/v2.0", "jti": "e1"}));
    assert!(set.is_revoked("shop", &token(None, &e), 100));
    assert!(!set.is_revoked("billing", &token(None, &e), 100));
}

#[test]
fn a_refused_object_changes_nothing_and_delete_removes() {
    let mut index = index_with(&[revocation(
        "auth",
        "r",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j1"}),
        0,
    )]);
    let both = revocation(
        "auth",
        "r",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j2", "subject": "a"}),
        0,
    );
    let refused = index.apply(&both, at(0)).unwrap_err().to_string();
    assert!(
        refused.contains("exactly one of tokenId, subject and sessionId"),
        "{refused}"
    );
    assert_eq!(
        index
            .get(&ObjectKey {
                namespace: "auth".into(),
                name: "r".into()
            })
            .unwrap()
            .matcher,
        Matcher::TokenId("j1".into())
    );
    // Applying the same object again is no change.
    let same = revocation(
        "auth",
        "r",
        serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j1"}),
        0,
    );
    assert!(!index.apply(&same, at(0)).unwrap());
    assert!(index.delete("auth", "r"));
    assert!(!index.delete("auth", "r"));
    assert!(index.publish(at(0)).0.is_empty());
}

#[test]
fn reasons_become_a_bounded_label_set() {
    let r = |reason: &str| {
        revocation(
            "auth",
            "r",
            serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j", "reason": reason}),
            0,
        )
    };
    assert_eq!(r("payment_failed").spec.reason_label(), "payment_failed");
    assert_eq!(r("Card declined at 10:02").spec.reason_label(), "other");
}

/// Logs name what a Revocation matches in words, not as Rust's `Debug` of the type
/// (`Subject { subject: "zed", issued_before: 1764237600 }`), with the values escaped.
#[test]
fn a_matcher_reads_as_the_claims_it_matches() {
    assert_eq!(Matcher::TokenId("t-1".into()).to_string(), r#"jti="t-1""#);
    assert_eq!(Matcher::Session("s-9".into()).to_string(), r#"sid="s-9""#);
    assert_eq!(
        Matcher::Subject {
            subject: "zed\nINFO forged".into(),
            issued_before: 1_764_237_600,
        }
        .to_string(),
        r#"sub="zed\nINFO forged" iat<=2025-11-27T10:00:00Z"#
    );
}

/// What the status page lists: each Revocation in force by kind of match, with when it
/// lapses, and never the value it matches; lapsed ones leave the list with the lookup.
#[test]
fn the_revocations_in_force_are_listed_without_what_they_match() {
    let index = index_with(&[
        revocation(
            "auth",
            "pw",
            serde_json::json!({"signingKeyRef": {"name": "web"}, "subject": "alice",
                "reason": "password_changed"}),
            5000,
        ),
        revocation(
            "shop",
            "one",
            serde_json::json!({"signingKeyRef": {"name": "web", "namespace": "auth"},
                "tokenId": "j1", "expiresAt": at(9000).to_string()}),
            5000,
        ),
    ]);
    let (set, _) = index.publish(at(5000));
    let until = 5000 + 15 * 60 + 5 * 60;
    assert_eq!(
        set.in_force(),
        [
            InForce {
                id: ObjectKey {
                    namespace: "auth".into(),
                    name: "pw".into()
                },
                issuer: "auth/web".into(),
                scope: None,
                matches: "subject",
                reason: "password_changed",
                created: 5000,
                lapses_at: Some(until),
            },
            InForce {
                id: ObjectKey {
                    namespace: "shop".into(),
                    name: "one".into()
                },
                issuer: "auth/web".into(),
                scope: Some("shop".into()),
                matches: "token",
                reason: "other",
                created: 5000,
                lapses_at: Some(9000),
            },
        ]
    );
    let (later, _) = index.publish(at(until + 1));
    assert_eq!(later.in_force().len(), 1);
    assert_eq!(later.in_force()[0].id.name, "one");
}
