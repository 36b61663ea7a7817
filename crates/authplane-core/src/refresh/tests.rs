//! The family rules one by one, then property tests over interleavings of refreshes,
//! concurrent retries, logouts and clock steps, against a model store that does what the
//! runtime's stores do: look a token up by its hash, decide, compare-and-set the
//! generation, and on a lost race read again.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const CLIENT: &str = "shop/web";
const ISSUER: &str = "https://auth.example/web";
const OTHER: &str = "shop/mobile";
const GRACE: i64 = 10;
const IDLE: i64 = 3_600;
const ABSOLUTE: i64 = 7 * 24 * 3_600;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

/// Deterministic and never repeating: SHA-256 of a counter.
struct Counter(u64);

impl Entropy for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        for chunk in dest.chunks_mut(32) {
            self.0 += 1;
            let block = digest(&SHA256, &self.0.to_be_bytes());
            chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        }
        Ok(())
    }
}

struct Broken;

impl Entropy for Broken {
    fn fill(&mut self, _: &mut [u8]) -> Result<(), EntropyUnavailable> {
        Err(EntropyUnavailable)
    }
}

fn lifetimes(grace: i64) -> Lifetimes {
    Lifetimes {
        absolute: SignedDuration::from_secs(ABSOLUTE),
        idle: SignedDuration::from_secs(IDLE),
        grace: SignedDuration::from_secs(grace),
    }
}

fn login(grace: i64) -> Login {
    Login {
        client: CLIENT.into(),
        issuer: ISSUER.into(),
        subject: "user-123".into(),
        audiences: vec!["payments-api".into()],
        claims: serde_json::json!({"roles": ["payments"]})
            .as_object()
            .cloned()
            .unwrap(),
        lifetimes: lifetimes(grace),
    }
}

/// The model of a store: families by id, and every issued token's hash with the family
/// and generation it was issued for.
#[derive(Default)]
struct Store {
    families: HashMap<String, Family>,
    issued: HashMap<TokenHash, (String, u64)>,
    /// Sessions revoked (the `sid` Revocations the runtime would create).
    sessions_revoked: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Pair(RefreshToken, AccessGrant),
    Refused(String),
    Unknown,
}

impl Store {
    fn start(&mut self, grace: i64, now: Timestamp, entropy: &mut Counter) -> RefreshToken {
        let started = start(login(grace), now, entropy).unwrap();
        self.issued
            .insert(started.token.hash(), (started.family.id.clone(), 0));
        self.families
            .insert(started.family.id.clone(), started.family);
        started.token
    }

    fn read(&self, token: &RefreshToken) -> Option<(Family, u64)> {
        let (id, generation) = self.issued.get(&token.hash())?;
        Some((self.families[id].clone(), *generation))
    }

    /// Compare-and-set: writes `next` only if the stored family is still at `expected`
    /// (and not revoked meanwhile).
    fn swap(&mut self, expected: &Family, next: Family, token: Option<&RefreshToken>) -> bool {
        let stored = self.families.get_mut(&next.id).unwrap();
        if stored.generation != expected.generation || stored.revoked != expected.revoked {
            return false;
        }
        if let Some(token) = token {
            self.issued
                .insert(token.hash(), (next.id.clone(), next.generation));
        }
        *stored = next;
        true
    }

    /// Decides against `snapshot` (what this request read) and writes with a
    /// compare-and-set; on a lost race, reads again and decides again, as the runtime does.
    fn finish(
        &mut self,
        token: &RefreshToken,
        client: &str,
        mut snapshot: Option<(Family, u64)>,
        now: Timestamp,
        entropy: &mut Counter,
    ) -> Answer {
        loop {
            let Some((family, generation)) = snapshot else {
                return Answer::Unknown;
            };
            let presented = Presented {
                token,
                generation,
                client,
                issuer: ISSUER,
            };
            match refresh(&family, presented, now, entropy) {
                Err(refused) => return Answer::Refused(refused.to_string()),
                Ok(Step::Replay { token, access }) => return Answer::Pair(token, access),
                Ok(Step::Rotate {
                    next,
                    token: new,
                    access,
                }) => {
                    if self.swap(&family, next, Some(&new)) {
                        return Answer::Pair(new, access);
                    }
                }
                Ok(Step::Revoke { next }) => {
                    let sid = next.id.clone();
                    if self.swap(&family, next, None) {
                        self.sessions_revoked.push(sid);
                        return Answer::Refused("reuse".into());
                    }
                }
            }
            snapshot = self.read(token);
        }
    }

    fn present(
        &mut self,
        token: &RefreshToken,
        client: &str,
        now: Timestamp,
        entropy: &mut Counter,
    ) -> Answer {
        let snapshot = self.read(token);
        self.finish(token, client, snapshot, now, entropy)
    }

    fn only(&self) -> &Family {
        assert_eq!(self.families.len(), 1);
        self.families.values().next().unwrap()
    }
}

fn pair(answer: Answer) -> (RefreshToken, AccessGrant) {
    match answer {
        Answer::Pair(token, access) => (token, access),
        other => panic!("expected a pair, got {other:?}"),
    }
}

#[test]
fn a_login_starts_generation_zero_with_a_fixed_absolute_expiry() {
    let mut entropy = Counter(0);
    let started = start(login(GRACE), at(0), &mut entropy).unwrap();
    let family = &started.family;
    assert_eq!(family.generation, 0);
    assert_eq!(family.expires_at, at(ABSOLUTE));
    assert_eq!(family.idle_deadline(), at(IDLE));
    assert_eq!(family.current, started.token.hash());
    assert_eq!(
        RefreshToken::parse(started.token.expose()).unwrap(),
        started.token
    );
    assert_eq!(family.access().issued_at, at(0));
    // Two logins: two sessions, two tokens, two access-token ids.
    let second = start(login(GRACE), at(0), &mut entropy).unwrap();
    assert_ne!(second.family.id, family.id);
    assert_ne!(second.token, started.token);
    assert_ne!(second.family.jti, family.jti);
}

#[test]
fn rotation_supersedes_the_token_and_keeps_the_absolute_expiry() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let first_jti = store.only().jti.clone();
    let (second, access) = pair(store.present(&first, CLIENT, at(600), &mut entropy));
    let family = store.only();
    assert_eq!(family.generation, 1);
    assert_eq!(family.current, second.hash());
    assert_ne!(second, first);
    assert_ne!(access.jti, first_jti);
    assert_eq!(access.issued_at, at(600));
    assert_eq!(family.expires_at, at(ABSOLUTE));
    assert_eq!(family.idle_deadline(), at(600 + IDLE));
    // The new token rotates in turn.
    let (third, _) = pair(store.present(&second, CLIENT, at(1_200), &mut entropy));
    assert_eq!(store.only().generation, 2);
    assert_eq!(store.only().current, third.hash());
}

#[test]
fn a_retry_within_the_grace_gets_the_same_pair() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let rotated = pair(store.present(&first, CLIENT, at(100), &mut entropy));
    for second in [100, 101, 100 + GRACE - 1] {
        let retried = pair(store.present(&first, CLIENT, at(second), &mut entropy));
        assert_eq!(retried, rotated);
    }
    assert_eq!(store.only().generation, 1);
    assert!(store.only().revoked.is_none());
    assert!(store.sessions_revoked.is_empty());
    // The pair got on a retry works like the original: it rotates.
    pair(store.present(&rotated.0, CLIENT, at(200), &mut entropy));
    assert_eq!(store.only().generation, 2);
}

#[test]
fn the_preceding_token_after_the_grace_is_reuse_and_revokes_the_session() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let (second, _) = pair(store.present(&first, CLIENT, at(100), &mut entropy));
    assert_eq!(
        store.present(&first, CLIENT, at(100 + GRACE), &mut entropy),
        Answer::Refused("reuse".into())
    );
    let family = store.only().clone();
    assert_eq!(
        family.revoked,
        Some(Revoked {
            at: at(100 + GRACE),
            because: RevokedBecause::Reuse
        })
    );
    assert_eq!(store.sessions_revoked, vec![family.id.clone()]);
    // The legitimate holder's current token is dead too, and nothing revokes twice.
    assert_eq!(
        store.present(&second, CLIENT, at(100 + GRACE), &mut entropy),
        Answer::Refused(Refused::Revoked(RevokedBecause::Reuse).to_string())
    );
    assert_eq!(store.sessions_revoked.len(), 1);
}

#[test]
fn an_older_token_is_reuse_even_within_the_grace() {
    // The grace bug of django-oauth-toolkit #1617: only the immediately preceding token
    // is honoured, never one of an older generation.
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let (second, _) = pair(store.present(&first, CLIENT, at(100), &mut entropy));
    pair(store.present(&second, CLIENT, at(101), &mut entropy));
    assert_eq!(
        store.present(&first, CLIENT, at(102), &mut entropy),
        Answer::Refused("reuse".into())
    );
    assert!(store.only().revoked.is_some());
}

#[test]
fn no_grace_means_every_superseded_token_is_reuse() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(0, at(0), &mut entropy);
    pair(store.present(&first, CLIENT, at(100), &mut entropy));
    assert_eq!(
        store.present(&first, CLIENT, at(100), &mut entropy),
        Answer::Refused("reuse".into())
    );
}

#[test]
fn the_absolute_expiry_is_never_extended_by_rotation() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let mut token = store.start(GRACE, at(0), &mut entropy);
    let mut now = 0;
    while now + IDLE / 2 < ABSOLUTE {
        now += IDLE / 2;
        token = pair(store.present(&token, CLIENT, at(now), &mut entropy)).0;
        assert_eq!(store.only().expires_at, at(ABSOLUTE));
    }
    assert!(store.only().idle_deadline() <= at(ABSOLUTE));
    assert_eq!(
        store.present(&token, CLIENT, at(ABSOLUTE), &mut entropy),
        Answer::Refused(Refused::Expired.to_string())
    );
    // Expiry is not reuse: nothing revoked, nothing written.
    assert!(store.only().revoked.is_none());
    assert!(store.sessions_revoked.is_empty());
}

#[test]
fn idle_expiry_counts_from_the_latest_use() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let (second, _) = pair(store.present(&first, CLIENT, at(IDLE - 1), &mut entropy));
    let before = store.only().clone();
    assert_eq!(
        store.present(&second, CLIENT, at(2 * IDLE - 1), &mut entropy),
        Answer::Refused(Refused::Idle.to_string())
    );
    assert_eq!(store.only(), &before);
}

#[test]
fn another_clients_presentation_changes_nothing() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let (second, _) = pair(store.present(&first, CLIENT, at(100), &mut entropy));
    let before = store.only().clone();
    // Neither the current token (no rotation) nor a superseded one (no revocation: a
    // client cannot kill another client's sessions).
    for token in [&first, &second] {
        assert_eq!(
            store.present(token, OTHER, at(1_000), &mut entropy),
            Answer::Refused(Refused::OtherClient.to_string())
        );
    }
    assert_eq!(store.only(), &before);
    assert!(store.sessions_revoked.is_empty());
}

#[test]
fn a_presentation_at_another_issuer_changes_nothing() {
    let mut entropy = Counter(0);
    let started = start(login(GRACE), at(0), &mut entropy).unwrap();
    let Ok(Step::Rotate { next, .. }) = refresh(
        &started.family,
        Presented {
            token: &started.token,
            generation: 0,
            client: CLIENT,
            issuer: ISSUER,
        },
        at(100),
        &mut entropy,
    ) else {
        panic!("the first refresh rotates");
    };
    // Neither the current token (no rotation: its retry would then look like reuse) nor
    // a superseded one (no revocation) at an issuer that is not the family's.
    for (family, generation) in [(&started.family, 0), (&next, 0)] {
        let presented = Presented {
            token: &started.token,
            generation,
            client: CLIENT,
            issuer: "https://auth.example/other",
        };
        assert_eq!(
            refresh(family, presented, at(1_000), &mut entropy).unwrap_err(),
            Refused::OtherIssuer
        );
    }
}

#[test]
fn logout_revokes_once() {
    let mut entropy = Counter(0);
    let mut store = Store::default();
    let first = store.start(GRACE, at(0), &mut entropy);
    let family = store.only().clone();
    let revoked = logout(&family, at(5)).unwrap();
    assert_eq!(
        revoked.revoked,
        Some(Revoked {
            at: at(5),
            because: RevokedBecause::Logout
        })
    );
    assert!(logout(&revoked, at(6)).is_none());
    assert!(store.swap(&family, revoked, None));
    assert_eq!(
        store.present(&first, CLIENT, at(6), &mut entropy),
        Answer::Refused(Refused::Revoked(RevokedBecause::Logout).to_string())
    );
}

#[test]
fn a_store_that_disagrees_with_the_token_is_refused() {
    let mut entropy = Counter(0);
    let started = start(login(GRACE), at(0), &mut entropy).unwrap();
    let family = &started.family;
    let other = start(login(GRACE), at(0), &mut entropy).unwrap().token;
    for (token, generation) in [(&other, 0), (&started.token, 1), (&started.token, u64::MAX)] {
        let presented = Presented {
            token,
            generation,
            client: CLIENT,
            issuer: ISSUER,
        };
        assert!(matches!(
            refresh(family, presented, at(1), &mut entropy),
            Err(Refused::Inconsistent { .. })
        ));
    }
    // At the last generation there is no next one.
    let exhausted = Family {
        generation: u64::MAX,
        ..family.clone()
    };
    let presented = Presented {
        token: &started.token,
        generation: u64::MAX,
        client: CLIENT,
        issuer: ISSUER,
    };
    assert!(matches!(
        refresh(&exhausted, presented, at(1), &mut entropy),
        Err(Refused::Inconsistent { .. })
    ));
}

#[test]
fn a_failing_random_generator_refuses_without_a_token() {
    let mut entropy = Counter(0);
    let started = start(login(GRACE), at(0), &mut entropy).unwrap();
    assert!(matches!(
        start(login(GRACE), at(0), &mut Broken),
        Err(StartError::Entropy(_))
    ));
    let presented = Presented {
        token: &started.token,
        generation: 0,
        client: CLIENT,
        issuer: ISSUER,
    };
    assert_eq!(
        refresh(&started.family, presented, at(1), &mut Broken).unwrap_err(),
        Refused::Entropy
    );
}

#[test]
fn only_well_formed_tokens_parse() {
    let mut entropy = Counter(0);
    let good = start(login(GRACE), at(0), &mut entropy).unwrap().token;
    let text = good.expose();
    assert!(text.starts_with(TOKEN_PREFIX));
    assert_eq!(text.len(), TOKEN_LEN);
    let secret = &text[TOKEN_PREFIX.len()..];
    for bad in [
        String::new(),
        secret.to_owned(),
        format!("aprx_{secret}"),
        format!("{text}A"),
        text[..text.len() - 1].to_owned(),
        format!("{TOKEN_PREFIX}{}", "!".repeat(43)),
        format!("{TOKEN_PREFIX}{}=", &secret[..42]),
        format!("{TOKEN_PREFIX}{}", "é".repeat(21)),
        // 43 base64url characters whose last one carries bits beyond 32 bytes.
        format!("{TOKEN_PREFIX}{}B", &secret[..42]),
    ] {
        if bad != text {
            assert_eq!(RefreshToken::parse(&bad), Err(MalformedToken), "{bad:?}");
        }
    }
}

#[test]
fn neither_debug_nor_the_stored_family_shows_a_token() {
    let mut entropy = Counter(0);
    let started = start(login(GRACE), at(0), &mut entropy).unwrap();
    let secret = &started.token.expose()[TOKEN_PREFIX.len()..];
    assert_eq!(format!("{:?}", started.token), "RefreshToken(..)");
    assert!(!format!("{started:?}").contains(secret));
    let stored = serde_json::to_string(&started.family).unwrap();
    assert!(!stored.contains(secret));
    let back: Family = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, started.family);
}

#[test]
fn lifetimes_are_checked() {
    let s = SignedDuration::from_secs;
    let base = lifetimes(GRACE);
    assert_eq!(base.check(), Ok(()));
    let cases = [
        (
            Lifetimes {
                absolute: s(0),
                ..base
            },
            LifetimeError::Absolute(s(0)),
        ),
        (
            Lifetimes {
                idle: s(-1),
                ..base
            },
            LifetimeError::Idle(s(-1)),
        ),
        (
            Lifetimes {
                grace: s(-1),
                ..base
            },
            LifetimeError::Grace(s(-1)),
        ),
        (
            Lifetimes {
                grace: s(IDLE),
                ..base
            },
            LifetimeError::GraceOutlivesIdle {
                grace: s(IDLE),
                idle: s(IDLE),
            },
        ),
    ];
    for (lifetimes, error) in cases {
        assert_eq!(lifetimes.check(), Err(error));
        let login = Login {
            lifetimes,
            ..login(GRACE)
        };
        assert!(start(login, at(0), &mut Counter(0)).is_err());
    }
}

/// One step of a property test.
#[derive(Clone, Debug)]
enum Op {
    /// The client refreshes with the newest token it holds.
    Refresh,
    /// `copies` requests with the newest token read the store before any of them writes:
    /// two tabs, or a retry racing the original.
    Race {
        copies: usize,
    },
    /// The token `back` generations before the newest one the client holds comes again
    /// (a lost response retried, or an attacker's stolen copy).
    Replay {
        back: usize,
    },
    /// A token of this family from another client.
    OtherClient,
    /// The clock moves (backwards too: an NTP step).
    Clock {
        seconds: i64,
    },
    Logout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Refresh),
        2 => (2usize..50).prop_map(|copies| Op::Race { copies }),
        3 => (1usize..4).prop_map(|back| Op::Replay { back }),
        1 => Just(Op::OtherClient),
        4 => prop_oneof![-30i64..30, 0..2 * IDLE, 0..ABSOLUTE / 2].prop_map(|seconds| Op::Clock { seconds }),
        1 => Just(Op::Logout),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn family_rules_hold_over_any_interleaving(
        grace in prop_oneof![Just(0i64), 1i64..60],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut entropy = Counter(0);
        let mut store = Store::default();
        let mut now = 0i64;
        // Every refresh token the client was given, oldest first, with its generation.
        let mut held = vec![(store.start(grace, at(0), &mut entropy), 0u64)];
        let expires_at = store.only().expires_at;
        for op in ops {
            let before = store.only().clone();
            let newest = held.last().unwrap().clone();
            match op {
                Op::Clock { seconds } => now += seconds,
                Op::Logout => {
                    if let Some(next) = logout(&before, at(now)) {
                        prop_assert!(store.swap(&before, next, None));
                    }
                }
                Op::OtherClient => {
                    let answer = store.present(&newest.0, OTHER, at(now), &mut entropy);
                    prop_assert_eq!(answer, Answer::Refused(Refused::OtherClient.to_string()));
                    prop_assert_eq!(store.only(), &before);
                }
                Op::Refresh | Op::Replay { .. } => {
                    let (token, generation) = match op {
                        Op::Replay { back } => held[held.len().saturating_sub(1 + back)].clone(),
                        _ => newest,
                    };
                    let answer = store.present(&token, CLIENT, at(now), &mut entropy);
                    check(&before, store.only(), generation, now, &answer)?;
                    if let Answer::Pair(token, _) = answer {
                        prop_assert!(store.only().revoked.is_none());
                        let generation = store.only().generation;
                        if held.last().unwrap().1 != generation {
                            held.push((token, generation));
                        }
                    }
                }
                Op::Race { copies } => {
                    let (token, generation) = newest;
                    let snapshot = store.read(&token);
                    let answers: Vec<Answer> = (0..copies)
                        .map(|_| store.finish(&token, CLIENT, snapshot.clone(), at(now), &mut entropy))
                        .collect();
                    // At most one rotation, whatever the race.
                    prop_assert!(store.only().generation <= before.generation + 1);
                    let pairs: Vec<&Answer> = answers.iter().filter(|a| matches!(a, Answer::Pair(..))).collect();
                    // (Without a grace, the second request of a race is reuse: the
                    // README says so where it offers `reuseGrace: 0s`.)
                    if store.only().generation == before.generation + 1 && grace > 0 {
                        // Everyone in the race got the same pair, and the family lives.
                        prop_assert_eq!(pairs.len(), copies);
                        prop_assert!(pairs.iter().all(|p| *p == pairs[0]));
                        prop_assert!(store.only().revoked.is_none());
                    }
                    for answer in &answers {
                        check(&before, store.only(), generation, now, answer)?;
                    }
                    if let Some(Answer::Pair(token, _)) = pairs.first()
                        && store.only().generation != generation
                    {
                        held.push((token.clone(), store.only().generation));
                    }
                }
            }
            let after = store.only();
            // Never extended, never moved back; revoked stays revoked.
            prop_assert_eq!(after.expires_at, expires_at);
            prop_assert!(after.generation >= before.generation);
            if before.revoked.is_some() {
                prop_assert_eq!(after, &before);
            }
            // A session is revoked exactly when its family was revoked for reuse.
            let reused = after.revoked.is_some_and(|r| r.because == RevokedBecause::Reuse);
            prop_assert_eq!(store.sessions_revoked.len(), usize::from(reused));
        }
    }
}

/// What one answer to the token of `generation` may be, given the family `before` the
/// request and `after` it.
fn check(
    before: &Family,
    after: &Family,
    generation: u64,
    now: i64,
    answer: &Answer,
) -> Result<(), TestCaseError> {
    let now = at(now);
    let alive = before.revoked.is_none() && now < before.expires_at;
    match answer {
        Answer::Pair(token, access) => {
            prop_assert!(alive, "a pair from a dead family");
            // Always the current generation's pair, never an older one.
            prop_assert_eq!(token.hash(), after.current);
            prop_assert_eq!(access, &after.access());
            let current = generation == before.generation;
            let preceding =
                generation + 1 == before.generation && now < add(before.rotated_at, before.grace);
            prop_assert!(current || preceding || after.generation > before.generation);
        }
        Answer::Refused(why) if why == "reuse" => {
            prop_assert!(alive);
            prop_assert!(generation < after.generation);
            prop_assert_eq!(
                after.revoked.map(|r| r.because),
                Some(RevokedBecause::Reuse)
            );
        }
        Answer::Refused(_) => {
            // Refusals other than reuse change nothing (unless another request of a race
            // wrote first).
            prop_assert!(!alive || generation == before.generation || after != before);
        }
        Answer::Unknown => prop_assert!(false, "a token the store issued is unknown"),
    }
    Ok(())
}
