use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, jwk::Jwk};
use proptest::prelude::*;

use super::*;
use crate::keys::store;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    add(t0(), SignedDuration::from_secs(secs))
}

fn policy(every: i64, pre_publish: i64, retain_for: i64) -> KeyPolicy {
    KeyPolicy {
        algorithm: Algorithm::EdDSA,
        rsa_bits: 2048,
        every: SignedDuration::from_secs(every),
        pre_publish: SignedDuration::from_secs(pre_publish),
        retain_for: SignedDuration::from_secs(retain_for),
    }
}

fn run(keys: &KeySet, policy: &KeyPolicy, rotate: Option<Timestamp>, now: Timestamp) -> Plan {
    let requests = Requests {
        rotate_at: rotate,
        revoked: Vec::new(),
    };
    run_with(keys, policy, &requests, now)
}

fn run_with(keys: &KeySet, policy: &KeyPolicy, requests: &Requests, now: Timestamp) -> Plan {
    let plan = plan(keys, policy, requests, now, &mut KeyMaterial::generate).unwrap();
    let views = plan.keys.view(now, policy.retain_for);
    let active = views.iter().filter(|v| v.state == KeyState::Active).count();
    assert_eq!(active, 1, "invariant 1: exactly one Active key at {now}");
    plan
}

fn states(plan: &Plan, now: Timestamp) -> Vec<KeyState> {
    plan.keys
        .view(now, SignedDuration::ZERO)
        .iter()
        .map(|v| v.state)
        .collect()
}

fn generated(plan: &Plan) -> Vec<Timestamp> {
    plan.events
        .iter()
        .filter_map(|e| match e {
            KeyEvent::Generated { activates_at, .. } => Some(*activates_at),
            _ => None,
        })
        .collect()
}

#[test]
fn the_first_key_signs_at_once_and_the_next_wakeup_is_its_pre_publication() {
    let p = policy(100, 10, 30);
    let plan = run(&KeySet::default(), &p, None, t0());
    assert_eq!(generated(&plan), [t0()]);
    assert_eq!(plan.next_wakeup, Some(at(90)));
}

#[test]
fn a_scheduled_rotation_pre_publishes_activates_retires_and_removes() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());

    let published = run(&first.keys, &p, None, at(90));
    assert_eq!(generated(&published), [at(100)]);
    assert_eq!(
        states(&published, at(90)),
        [KeyState::Active, KeyState::Next]
    );
    assert_eq!(published.next_wakeup, Some(at(100)));

    let activated = run(&published.keys, &p, None, at(100));
    assert!(
        !activated.changed(),
        "activation is derived from time, not written"
    );
    assert_eq!(
        states(&activated, at(100)),
        [KeyState::Retired, KeyState::Active]
    );
    assert_eq!(
        activated.next_wakeup,
        Some(at(130)),
        "removal of the retired key"
    );

    let removed = run(&activated.keys, &p, None, at(130));
    assert!(matches!(removed.events[..], [KeyEvent::Removed { .. }]));
    assert_eq!(states(&removed, at(130)), [KeyState::Active]);
    assert_eq!(removed.next_wakeup, Some(at(190)));
}

#[test]
fn a_late_planner_keeps_the_old_key_signing_until_the_new_one_was_published_long_enough() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let late = run(&first.keys, &p, None, at(150));
    assert_eq!(generated(&late), [at(160)]);
    assert_eq!(states(&late, at(150)), [KeyState::Active, KeyState::Next]);
}

#[test]
fn an_outage_longer_than_a_period_leaves_no_gap() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let back = run(&first.keys, &p, None, at(10_000));
    let old = first.keys.records()[0].material.kid();
    assert_eq!(back.keys.active(at(10_000)).unwrap().material.kid(), old);
    assert_eq!(generated(&back), [at(10_010)]);
}

#[test]
fn a_manual_rotation_is_pre_published_and_satisfied_once() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());

    let future = run(&first.keys, &p, Some(at(40)), at(20));
    assert!(!future.changed());
    assert_eq!(future.next_wakeup, Some(at(40)));

    let rotated = run(&first.keys, &p, Some(at(40)), at(40));
    assert_eq!(generated(&rotated), [at(50)]);
    let again = run(&rotated.keys, &p, Some(at(40)), at(45));
    assert!(
        !again.changed(),
        "the request is satisfied by the key made for it"
    );
}

#[test]
fn a_manual_rotation_replaces_a_next_key_that_never_signed() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let published = run(&first.keys, &p, None, at(90));
    let rotated = run(&published.keys, &p, Some(at(95)), at(95));
    assert!(matches!(
        rotated.events[..],
        [KeyEvent::Discarded { .. }, KeyEvent::Generated { .. }]
    ));
    assert_eq!(generated(&rotated), [at(105)]);
    assert_eq!(rotated.keys.records().len(), 2);
}

#[test]
fn changing_the_algorithm_rotates_into_it_with_pre_publication() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let es256 = KeyPolicy {
        algorithm: Algorithm::ES256,
        ..p.clone()
    };
    let changed = run(&first.keys, &es256, None, at(20));
    assert_eq!(generated(&changed), [at(30)]);
    assert_eq!(changed.keys.records()[1].material.alg(), Algorithm::ES256);
    assert!(!run(&changed.keys, &es256, None, at(25)).changed());
    let later = changed.keys.active(at(30)).unwrap();
    assert_eq!(later.material.alg(), Algorithm::ES256);
}

fn with_alg(p: &KeyPolicy, algorithm: Algorithm) -> KeyPolicy {
    KeyPolicy {
        algorithm,
        ..p.clone()
    }
}

fn discarded(plan: &Plan) -> Vec<String> {
    plan.events
        .iter()
        .filter_map(|e| match e {
            KeyEvent::Discarded { kid } => Some(kid.clone()),
            _ => None,
        })
        .collect()
}

/// Issue 11, item 1: ES256 -> EdDSA -> ES256 within seconds left the EdDSA key published
/// as Next, and it signed once its pre-publication was over.
#[test]
fn a_reverted_algorithm_change_drops_the_abandoned_next_key() {
    let es256 = with_alg(&policy(600, 15, 60), Algorithm::ES256);
    let eddsa = with_alg(&es256, Algorithm::EdDSA);
    let first = run(&KeySet::default(), &es256, None, t0());
    let original = first.keys.records()[0].material.kid().to_owned();

    let changed = run(&first.keys, &eddsa, None, at(2));
    assert_eq!(generated(&changed), [at(17)]);
    let abandoned = changed.keys.records()[1].material.kid().to_owned();

    let reverted = run(&changed.keys, &es256, None, at(4));
    assert_eq!(discarded(&reverted), [abandoned]);
    assert_eq!(
        generated(&reverted),
        [],
        "the Active key matches the spec again"
    );
    assert_eq!(kids(&reverted.keys), std::slice::from_ref(&original));
    assert_eq!(reverted.next_wakeup, Some(at(585)), "the regular schedule");

    // Long after the abandoned key would have activated, the original still signs.
    let later = run(&reverted.keys, &es256, None, at(30));
    assert!(!later.changed());
    let active = later.keys.active(at(30)).unwrap();
    assert_eq!(active.material.kid(), original);
    assert_eq!(active.material.alg(), Algorithm::ES256);
}

#[test]
fn revoking_the_active_key_never_promotes_a_next_key_the_spec_abandoned() {
    let es256 = with_alg(&policy(600, 15, 60), Algorithm::ES256);
    let first = run(&KeySet::default(), &es256, None, t0());
    let original = first.keys.records()[0].material.kid().to_owned();
    // The spec went to EdDSA (an EdDSA key waits as Next) and back, and the Active key
    // is revoked in the same reconcile.
    let changed = run(
        &first.keys,
        &with_alg(&es256, Algorithm::EdDSA),
        None,
        at(2),
    );
    let replaced = run_with(&changed.keys, &es256, &revoke(&original), at(4));
    let active = replaced.keys.active(at(4)).unwrap();
    assert_eq!(active.material.alg(), Algorithm::ES256);
    assert_ne!(active.material.kid(), original);
    assert!(
        replaced
            .keys
            .records()
            .iter()
            .all(|k| k.material.alg() == Algorithm::ES256),
        "the abandoned EdDSA key is gone"
    );
}

#[test]
fn a_changed_change_replaces_the_next_key_and_pre_publishes_from_now() {
    let es256 = with_alg(&policy(600, 15, 60), Algorithm::ES256);
    let first = run(&KeySet::default(), &es256, None, t0());
    let to_eddsa = run(
        &first.keys,
        &with_alg(&es256, Algorithm::EdDSA),
        None,
        at(2),
    );
    let es384 = with_alg(&es256, Algorithm::ES384);
    let to_es384 = run(&to_eddsa.keys, &es384, None, at(10));
    assert_eq!(
        discarded(&to_es384),
        [to_eddsa.keys.records()[1].material.kid().to_owned()]
    );
    assert_eq!(generated(&to_es384), [at(25)], "pre-publication restarts");
    assert_eq!(
        to_es384.keys.active(at(25)).unwrap().material.alg(),
        Algorithm::ES384
    );
    assert!(!run(&to_es384.keys, &es384, None, at(12)).changed());
}

#[test]
fn a_changed_rsa_size_replaces_the_next_key() {
    let rsa2048 = with_alg(&policy(600, 15, 60), Algorithm::RS256);
    let first = run(&KeySet::default(), &rsa2048, None, t0());
    let rsa3072 = KeyPolicy {
        rsa_bits: 3072,
        ..rsa2048.clone()
    };
    let bigger = run(&first.keys, &rsa3072, None, at(2));
    assert_eq!(generated(&bigger), [at(17)]);
    let back = run(&bigger.keys, &rsa2048, None, at(3));
    assert_eq!(discarded(&back).len(), 1);
    assert_eq!(back.keys.records().len(), 1);
    assert_eq!(
        back.keys.active(at(20)).unwrap().material.rsa_bits(),
        Some(2048)
    );
}

#[test]
fn a_matching_next_key_survives_an_unrelated_replan() {
    // Only keys the spec no longer wants are dropped; a scheduled Next key stays.
    let p = with_alg(&policy(100, 10, 30), Algorithm::ES256);
    let first = run(&KeySet::default(), &p, None, t0());
    let published = run(&first.keys, &p, None, at(90));
    let longer = KeyPolicy {
        retain_for: SignedDuration::from_secs(60),
        ..p.clone()
    };
    assert!(!run(&published.keys, &longer, None, at(95)).changed());
}

fn revoke(kid: &str) -> Requests {
    Requests {
        rotate_at: None,
        revoked: vec![kid.to_owned()],
    }
}

fn kids(keys: &KeySet) -> Vec<String> {
    keys.records()
        .iter()
        .map(|r| r.material.kid().to_owned())
        .collect()
}

#[test]
fn revoking_the_active_key_promotes_the_published_next_key_at_once() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let published = run(&first.keys, &p, None, at(92));
    let [old, next] = [0, 1].map(|i| published.keys.records()[i].material.kid().to_owned());

    let revoked = run_with(&published.keys, &p, &revoke(&old), at(95));
    assert_eq!(
        revoked.events,
        [
            KeyEvent::Revoked { kid: old.clone() },
            KeyEvent::Promoted { kid: next.clone() }
        ]
    );
    assert_eq!(kids(&revoked.keys), std::slice::from_ref(&next));
    assert_eq!(revoked.keys.active(at(95)).unwrap().material.kid(), next);

    // The annotation stays; planning again changes nothing.
    let again = run_with(&revoked.keys, &p, &revoke(&old), at(96));
    assert!(!again.changed());
}

#[test]
fn revoking_the_active_key_without_a_next_key_makes_one_that_signs_at_once() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let rotated = run(&run(&first.keys, &p, None, at(90)).keys, &p, None, at(100));
    let [retired, active] = [0, 1].map(|i| rotated.keys.records()[i].material.kid().to_owned());

    let revoked = run_with(&rotated.keys, &p, &revoke(&active), at(110));
    assert_eq!(generated(&revoked), [at(110)]);
    let now_active = revoked
        .keys
        .active(at(110))
        .unwrap()
        .material
        .kid()
        .to_owned();
    assert_ne!(now_active, active);
    assert_ne!(now_active, retired, "a retired key never signs again");
    assert!(!kids(&revoked.keys).contains(&active));
    assert!(
        kids(&revoked.keys).contains(&retired),
        "the retired key keeps its retention"
    );
}

#[test]
fn revoking_a_next_or_retired_key_only_removes_it() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    let published = run(&first.keys, &p, None, at(90));
    let next = published.keys.records()[1].material.kid().to_owned();
    let revoked = run_with(&published.keys, &p, &revoke(&next), at(91));
    // The schedule makes a replacement next key at once.
    assert_eq!(revoked.events[0], KeyEvent::Revoked { kid: next.clone() });
    assert_eq!(generated(&revoked), [at(101)]);
    assert!(!kids(&revoked.keys).contains(&next));

    let rotated = run(&published.keys, &p, None, at(100));
    let retired = rotated.keys.records()[0].material.kid().to_owned();
    let revoked = run_with(&rotated.keys, &p, &revoke(&retired), at(105));
    assert_eq!(revoked.events, [KeyEvent::Revoked { kid: retired }]);
    assert_eq!(revoked.keys.records().len(), 1);
}

#[test]
fn unknown_revoked_kids_are_ignored() {
    let p = policy(100, 10, 30);
    let first = run(&KeySet::default(), &p, None, t0());
    assert!(!run_with(&first.keys, &p, &revoke("not-a-kid"), at(10)).changed());
}

/// splitmix64: a tiny deterministic generator, so a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n.max(1) as u64) as i64
    }
}

/// The JWKS served at `s`: what the planner wrote last, at or before `s`.
fn served(history: &[(Timestamp, KeySet)], s: Timestamp) -> Option<&KeySet> {
    history
        .iter()
        .rev()
        .find(|(t, _)| *t <= s)
        .map(|(_, keys)| keys)
}

fn sign(key: &KeyMaterial, issued: Timestamp) -> String {
    let mut header = Header::new(key.alg().to_jwt());
    header.kid = Some(key.kid().to_owned());
    let claims = serde_json::json!({"sub": "user", "iat": issued.as_second()});
    let encoding: EncodingKey = key.encoding_key().unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

/// Verifies as an independent verifier would: find the kid in the JWKS it holds, build
/// the key from the published JWK, check the signature.
fn verifies(token: &str, jwks: &KeySet, now: Timestamp) -> bool {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let Some(record) = jwks.get(&kid) else {
        return false;
    };
    let jwk: Jwk = serde_json::from_value(
        record
            .material
            .public_jwk()
            .to_json(&kid, record.material.alg()),
    )
    .unwrap();
    let mut validation = Validation::new(record.material.alg().to_jwt());
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let _ = now;
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .is_ok()
}

const ROTATIONS_PER_CASE: usize = 25;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Invariants 1, 3, 4 and 5 over random schedules, a planner that runs late or early,
    /// restarts through the stored form, manual rotations, and algorithm changes that are
    /// often reverted: every token signed by the Active key verifies, for its whole
    /// lifetime (at most retainFor), for a verifier that refreshes its JWKS every
    /// prePublish; and a key made before a spec change never starts signing after it
    /// unless it matches the spec. 48 cases x 25 rotations = 1,200.
    #[test]
    fn no_rotation_ever_breaks_a_valid_token(
        every in 4i64..100_000,
        pre_percent in 1i64..100,
        retain_percent in 0i64..400,
        seed in any::<u64>(),
    ) {
        let pre = (every * pre_percent / 100).clamp(1, every - 1);
        let retain = pre + every * retain_percent / 100;
        let mut p = policy(every, pre, retain);
        let mut rng = Rng(seed);
        // (from, spec): the spec in force from each planning run on.
        let mut specs: Vec<(Timestamp, KeyPolicy)> = Vec::new();
        let mut keys = KeySet::default();
        let mut now = t0();
        let mut rotate: Option<Timestamp> = None;
        let mut history: Vec<(Timestamp, KeySet)> = Vec::new();
        let mut rotations = 0;

        while rotations < ROTATIONS_PER_CASE {
            if rng.below(12) == 0 {
                rotate = Some(now);
            }
            if rng.below(6) == 0 {
                // Flip between two algorithms, so that every other change is a revert.
                let flipped = match p.algorithm {
                    Algorithm::EdDSA => Algorithm::ES256,
                    _ => Algorithm::EdDSA,
                };
                p = with_alg(&p, flipped);
            }
            if specs.last().is_none_or(|(_, last)| *last != p) {
                specs.push((now, p.clone()));
            }
            let plan = run(&keys, &p, rotate, now);
            for upcoming in plan.keys.records().iter().filter(|k| k.activates_at > now) {
                prop_assert!(p.matches(&upcoming.material),
                    "a Next key of {:?} waits while the spec asks for {:?}", upcoming.material.alg(), p.algorithm);
            }
            rotations += generated(&plan).len();
            keys = plan.keys;
            if rng.below(3) == 0 {
                // Invariant 5: a restart reads back exactly what was written.
                let restored = store::from_data(&store::to_data(&keys, "iss", p.retain_for, now)).unwrap();
                prop_assert_eq!(&restored, &keys);
                keys = restored;
            }
            history.push((now, keys.clone()));
            let wakeup = plan.next_wakeup.expect("a key set always has a next transition");
            prop_assert!(wakeup > now);
            let gap = wakeup.duration_since(now).as_secs();
            now = match rng.below(10) {
                0 => add(now, SignedDuration::from_secs(1 + rng.below(gap))), // early run
                1 => add(wakeup, SignedDuration::from_secs(rng.below(2 * every))), // very late
                _ => add(wakeup, SignedDuration::from_secs(rng.below(pre))),
            };
        }

        let start = history[0].0;
        let end = now;
        let phase = rng.below(pre);
        let last_refresh = |s: Timestamp| -> Option<Timestamp> {
            let since = s.duration_since(add(start, SignedDuration::from_secs(phase))).as_secs();
            (since >= 0).then(|| add(start, SignedDuration::from_secs(phase + since / pre * pre)))
        };

        for _ in 0..40 {
            let span = end.duration_since(start).as_secs() - retain;
            prop_assume!(span > 0);
            let issued = add(start, SignedDuration::from_secs(rng.below(span)));
            let signer = served(&history, issued).unwrap();
            let active = signer.active(issued).expect("invariant 1: a key signs");
            let (changed, spec) = specs.iter().rev().find(|(from, _)| *from <= issued).unwrap();
            prop_assert!(active.activates_at <= *changed || spec.matches(&active.material),
                "{:?} key activated at {} signs although the spec asks for {:?} since {}",
                active.material.alg(), active.activates_at, spec.algorithm, changed);
            let token = sign(&active.material, issued);
            let lifetime = rng.below(retain + 1);
            for s in [issued, add(issued, SignedDuration::from_secs(lifetime)),
                      add(issued, SignedDuration::from_secs(rng.below(lifetime + 1)))] {
                // Invariant 3: the JWKS served at any instant of the token's life has it.
                prop_assert!(verifies(&token, served(&history, s).unwrap(), s),
                    "token of {} issued at {} fails against the JWKS served at {}", active.material.kid(), issued, s);
                // Invariant 4: so does a verifier that refreshed at most prePublish ago.
                if let Some(refreshed) = last_refresh(s).filter(|r| *r >= start) {
                    prop_assert!(verifies(&token, served(&history, refreshed).unwrap(), s),
                        "a verifier that refreshed at {} rejects a token issued at {}", refreshed, issued);
                }
            }
        }
    }
}
