//! The refresh path's contract, run against every store: the embedded one (a real redb
//! file in a temporary folder) and Redis (a real `redis-server` on loopback, started per
//! test; without one installed the Redis half says it is skipped). Then what is
//! particular to each store.

use std::any::Any;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use redb::{Database, TableDefinition};

use super::embedded::EmbeddedStore;
use super::embedded_sessions::EmbeddedSessionLog;
use super::redis::{RedisSettings, RedisStore};
use super::redis_sessions::RedisSessionLog;
use super::session_log::SessionLog;
use super::*;
use crate::refresh::{Lifetimes, Login, RevokedBecause, SystemEntropy, start};
use crate::revocation::{SessionEnd, SessionRevocation};
use futures::future::BoxFuture;

#[path = "../../tests/common/redis_server.rs"]
pub(crate) mod redis_server;
use redis_server::RedisServer;

const CLIENT: &str = "shop/web";
const ISSUER: &str = "https://auth.example/web";
const GRACE: i64 = 10;
const ABSOLUTE: i64 = 7 * 24 * 3_600;

/// `client` presenting at the families' own issuer, whose SigningKey is [`key`].
fn by(client: &str) -> Presenter<'_> {
    Presenter {
        client,
        issuer: ISSUER,
        sessions: Some(key()),
    }
}

/// The SigningKey of [`ISSUER`], under which ended sessions are recorded.
fn key() -> &'static ObjectKey {
    static KEY: std::sync::LazyLock<ObjectKey> = std::sync::LazyLock::new(|| ObjectKey {
        namespace: "shop".into(),
        name: "web".into(),
    });
    &KEY
}

/// A logout's key for every family: [`key`].
fn named_key(_: &Family) -> Option<ObjectKey> {
    Some(key().clone())
}

/// Every entry of the log of ended sessions.
async fn ended_sessions(log: &dyn SessionLog) -> Vec<SessionRevocation> {
    let read = log.read((0, 0), None).await.unwrap();
    assert_eq!(read.malformed, 0);
    read.revocations
}

/// The entry that ends `family`'s session for `reason` at `second`.
fn ended(family: &Family, reason: SessionEnd, second: i64) -> SessionRevocation {
    SessionRevocation::new(key().clone(), &family.id, reason, at(second))
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn login() -> Login {
    Login {
        client: CLIENT.into(),
        issuer: ISSUER.into(),
        subject: "user-123".into(),
        audiences: vec!["payments-api".into()],
        claims: Default::default(),
        lifetimes: Lifetimes {
            absolute: SignedDuration::from_secs(ABSOLUTE),
            idle: SignedDuration::from_hours(24),
            grace: SignedDuration::from_secs(GRACE),
        },
    }
}

/// A store under test, with what keeps it alive (its folder, its Redis).
struct Subject {
    store: Arc<dyn FamilyStore>,
    /// The store's log of ended sessions.
    log: Arc<dyn SessionLog>,
    _keep: Box<dyn Any + Send>,
}

fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("tokens.redb")).unwrap();
    Some(Subject {
        log: Arc::new(EmbeddedSessionLog::new(&store)),
        store: Arc::new(store),
        _keep: Box::new(dir),
    })
}

fn redis_settings(server: &RedisServer, installation: &str) -> RedisSettings {
    RedisSettings {
        url: server.url(),
        password: None,
        ca: None,
        installation: installation.into(),
        timeout: std::time::Duration::from_secs(2),
    }
}

fn redis(test: &str) -> Option<Subject> {
    let server = RedisServer::start(test)?;
    let settings = redis_settings(&server, "test");
    Some(Subject {
        store: Arc::new(RedisStore::new(&settings).unwrap()),
        log: Arc::new(RedisSessionLog::new(&settings).unwrap()),
        _keep: Box::new(server),
    })
}

/// Each contract test once per store.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::embedded().unwrap()).await
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(subject) = super::redis(stringify!($test)) {
                        super::$test(subject).await
                    }
                }
            )*
        }
    };
}

contract!(
    a_family_is_found_by_the_hash_of_each_of_its_tokens,
    a_stale_compare_and_set_writes_nothing,
    fifty_concurrent_refreshes_of_one_token_make_one_rotation_and_one_pair,
    reuse_after_the_grace_revokes_the_family,
    another_clients_token_changes_nothing,
    a_presentation_at_another_issuer_changes_nothing,
    logout_revokes_the_family_once,
    a_logout_records_its_end_under_the_key_named_for_the_family,
    a_family_past_its_expiry_is_not_found,
    a_rotation_over_the_familys_budget_changes_nothing_and_a_replay_is_free,
    a_revocation_in_force_revokes_the_family_once_and_not_for_another_client,
    the_sessions_of_a_subject_are_listed_and_ended,
);

/// Support tools' view: a user's sessions listed (rotated ones at their generation),
/// ended once (no other subject's or client's), found ended again, gone with their
/// families.
async fn the_sessions_of_a_subject_are_listed_and_ended(f: Subject) {
    sessions_listed_and_ended(&*f.store).await;
}

/// The steps of the sessions contract; returns the first family, whose expiry the
/// embedded store's own test purges past.
async fn sessions_listed_and_ended(store: &dyn FamilyStore) -> Family {
    let (first, token) = logged_in(store).await;
    let (second, _) = logged_in(store).await;
    let bob = start(
        Login {
            subject: "bob".into(),
            ..login()
        },
        at(0),
        &mut SystemEntropy,
    )
    .unwrap()
    .family;
    let other_client = start(
        Login {
            client: "shop/mobile".into(),
            ..login()
        },
        at(0),
        &mut SystemEntropy,
    )
    .unwrap()
    .family;
    store.create(&bob).await.unwrap();
    store.create(&other_client).await.unwrap();
    // A rotation keeps the session listed, at its new generation.
    refreshed(store, &token, at(5)).await.unwrap();
    let ids = |families: &[Family]| {
        let mut ids: Vec<String> = families.iter().map(|f| f.id.clone()).collect();
        ids.sort();
        ids
    };
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    let listed = store.sessions(CLIENT, "user-123", at(6)).await.unwrap();
    assert_eq!(ids(&listed), expected);
    assert!(listed.iter().any(|f| f.generation == 1));
    assert!(
        store
            .sessions(CLIENT, "nobody", at(6))
            .await
            .unwrap()
            .is_empty()
    );

    // Ending them revokes both (the rotated one at its current generation), no other.
    let ended = end_sessions(store, CLIENT, "user-123", at(7))
        .await
        .unwrap();
    assert_eq!(ids(&ended), expected);
    for family in store.sessions(CLIENT, "user-123", at(8)).await.unwrap() {
        assert!(family.revoked.is_some(), "{}", family.id);
    }
    assert!(matches!(
        refresh(store, &token, by(CLIENT), at(8), &mut SystemEntropy).await,
        Err(RefreshError::Refused(_))
    ));
    assert!(
        store
            .family(&bob.id, at(8))
            .await
            .unwrap()
            .unwrap()
            .revoked
            .is_none()
    );
    let mobile = store
        .sessions("shop/mobile", "user-123", at(8))
        .await
        .unwrap();
    assert!(mobile[0].revoked.is_none());
    // Ending them again finds them ended: the same families, nothing new written.
    assert_eq!(
        ids(&end_sessions(store, CLIENT, "user-123", at(9))
            .await
            .unwrap()),
        expected
    );

    let later = first.forget_after() + SignedDuration::from_secs(1);
    assert!(
        store
            .sessions(CLIENT, "user-123", later)
            .await
            .unwrap()
            .is_empty()
    );
    first
}

async fn logged_in(store: &dyn FamilyStore) -> (Family, RefreshToken) {
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    store.create(&started.family).await.unwrap();
    (started.family, started.token)
}

async fn refreshed(
    store: &dyn FamilyStore,
    token: &RefreshToken,
    now: Timestamp,
) -> Result<Refreshed, RefreshError> {
    refresh(store, token, by(CLIENT), now, &mut SystemEntropy).await
}

fn pair(refreshed: Refreshed) -> (Family, RefreshToken, AccessGrant, bool) {
    match refreshed {
        Refreshed::Pair {
            family,
            token,
            access,
            rotated,
        } => (family, token, access, rotated),
        other => panic!("expected a pair, got {other:?}"),
    }
}

async fn a_family_is_found_by_the_hash_of_each_of_its_tokens(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let found = f.store.find(first.hash(), at(1)).await.unwrap().unwrap();
    assert_eq!((found.family, found.generation), (family.clone(), 0));
    let (next, second, _, rotated) = pair(refreshed(&*f.store, &first, at(60)).await.unwrap());
    assert!(rotated);
    assert_eq!(next.generation, 1);
    assert_eq!(
        f.store
            .find(second.hash(), at(61))
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
    // The old token still leads to the family, at its own generation: that is how reuse
    // is recognised.
    let old = f.store.find(first.hash(), at(61)).await.unwrap().unwrap();
    assert_eq!((old.generation, old.family.generation), (0, 1));
    assert_eq!(
        f.store.family(&family.id, at(61)).await.unwrap(),
        Some(next)
    );
    // A token nobody issued is unknown, not an error.
    let stranger = start(login(), at(0), &mut SystemEntropy).unwrap().token;
    assert!(
        f.store
            .find(stranger.hash(), at(61))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        refreshed(&*f.store, &stranger, at(61)).await,
        Err(RefreshError::Unknown)
    ));
}

async fn a_stale_compare_and_set_writes_nothing(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let (rotated, ..) = pair(refreshed(&*f.store, &first, at(60)).await.unwrap());
    // A writer that read generation 0 loses, whatever it wanted to write.
    let stale = crate::refresh::logout(&family, at(61)).unwrap();
    assert!(!f.store.swap(&family, &stale, None).await.unwrap());
    assert_eq!(
        f.store.family(&family.id, at(61)).await.unwrap(),
        Some(rotated.clone())
    );
    // One that read the revocation state wrongly loses too.
    let revoked = crate::refresh::logout(&rotated, at(62)).unwrap();
    assert!(f.store.swap(&rotated, &revoked, None).await.unwrap());
    let again = Family {
        generation: 2,
        ..rotated.clone()
    };
    assert!(!f.store.swap(&rotated, &again, None).await.unwrap());
    assert_eq!(
        f.store.family(&family.id, at(63)).await.unwrap(),
        Some(revoked)
    );
}

async fn fifty_concurrent_refreshes_of_one_token_make_one_rotation_and_one_pair(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let store = f.store.clone();
    let first = Arc::new(first);
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (store, first) = (store.clone(), first.clone());
            tokio::spawn(async move {
                refresh(&*store, &first, by(CLIENT), at(60), &mut SystemEntropy).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(pair(request.await.unwrap().unwrap()));
    }
    assert_eq!(answers.iter().filter(|(.., rotated)| *rotated).count(), 1);
    let (_, token, access, _) = &answers[0];
    for (_, other_token, other_access, _) in &answers {
        assert_eq!((other_token, other_access), (token, access));
    }
    let stored = f.store.family(&family.id, at(60)).await.unwrap().unwrap();
    assert_eq!(stored.generation, 1);
    assert!(stored.revoked.is_none());
    assert_eq!(stored.current, token.hash());
}

async fn reuse_after_the_grace_revokes_the_family(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let (_, second, ..) = pair(refreshed(&*f.store, &first, at(60)).await.unwrap());
    let Refreshed::Reuse { family: revoked } =
        refreshed(&*f.store, &first, at(60 + GRACE)).await.unwrap()
    else {
        panic!("expected reuse");
    };
    assert_eq!(revoked.id, family.id);
    // The legitimate holder's token is refused too.
    assert!(matches!(
        refreshed(&*f.store, &second, at(100)).await,
        Err(RefreshError::Refused(Refused::Revoked(
            RevokedBecause::Reuse
        )))
    ));
    // The session's end was recorded with the family's revocation, once.
    assert_eq!(
        ended_sessions(&*f.log).await,
        [ended(&family, SessionEnd::Reuse, 60 + GRACE)]
    );
}

async fn another_clients_token_changes_nothing(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let answer = refresh(
        &*f.store,
        &first,
        by("shop/mobile"),
        at(60),
        &mut SystemEntropy,
    )
    .await;
    assert!(matches!(
        answer,
        Err(RefreshError::Refused(Refused::OtherClient))
    ));
    assert_eq!(
        logout(&*f.store, &first, "shop/mobile", &named_key, at(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        f.store.family(&family.id, at(60)).await.unwrap(),
        Some(family)
    );
}

/// After a client's key or the key's issuer changed, its families were started on
/// another issuer: refused without a rotation, so that the refresh at the right issuer
/// still works and is not taken for reuse; and a Revocation in force of this issuer
/// does not end them.
async fn a_presentation_at_another_issuer_changes_nothing(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let elsewhere = Presenter {
        client: CLIENT,
        issuer: "https://auth.example/other",
        sessions: Some(key()),
    };
    let answer = refresh_admitted(
        &*f.store,
        &first,
        elsewhere,
        at(60),
        &mut SystemEntropy,
        &|_| true,
        &|_| Box::pin(async { Ok(()) }),
    )
    .await;
    assert!(
        matches!(answer, Err(RefreshError::Refused(Refused::OtherIssuer))),
        "{answer:?}"
    );
    assert_eq!(
        f.store.family(&family.id, at(60)).await.unwrap(),
        Some(family)
    );
    let (_, _, _, rotated) = pair(refreshed(&*f.store, &first, at(61)).await.unwrap());
    assert!(rotated);
}

/// A logout records the session's end under the key the caller names for the family
/// (its issuer's, which may not be the one the logout came in on), or none.
async fn a_logout_records_its_end_under_the_key_named_for_the_family(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let other = ObjectKey {
        namespace: "shop".into(),
        name: "earlier".into(),
    };
    let ended = logout(
        &*f.store,
        &first,
        CLIENT,
        &|found: &Family| (found.issuer == ISSUER).then(|| other.clone()),
        at(5),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(ended.recorded);
    let entry = SessionRevocation::new(other.clone(), &family.id, SessionEnd::Logout, at(5));
    assert_eq!(ended_sessions(&*f.log).await, [entry]);
    // No key named (no log, or the issuer is not published): the family ends, no entry.
    let (_, second) = logged_in(&*f.store).await;
    let ended = logout(&*f.store, &second, CLIENT, &|_: &Family| None, at(6))
        .await
        .unwrap()
        .unwrap();
    assert!(!ended.recorded);
    assert_eq!(ended_sessions(&*f.log).await.len(), 1);
}

async fn logout_revokes_the_family_once(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let first_logout = logout(&*f.store, &first, CLIENT, &named_key, at(5))
        .await
        .unwrap()
        .unwrap();
    assert!(first_logout.recorded);
    let revoked = first_logout.family;
    assert_eq!(revoked.id, family.id);
    assert_eq!(revoked.revoked.unwrap().because, RevokedBecause::Logout);
    assert_eq!(
        f.store.family(&family.id, at(5)).await.unwrap(),
        Some(revoked.clone())
    );
    // Again: the family as the first logout left it, nothing written (not recorded: the
    // caller writes the end again, the same entry to every reader).
    let again = logout(&*f.store, &first, CLIENT, &named_key, at(6))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.family, again.recorded), (revoked.clone(), false));
    assert_eq!(
        ended_sessions(&*f.log).await,
        [ended(&family, SessionEnd::Logout, 5)]
    );
    assert!(matches!(
        refreshed(&*f.store, &first, at(7)).await,
        Err(RefreshError::Refused(Refused::Revoked(
            RevokedBecause::Logout
        )))
    ));
}

async fn a_family_past_its_expiry_is_not_found(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let (_, second, ..) = pair(refreshed(&*f.store, &first, at(60)).await.unwrap());
    // Past its absolute expiry a family is gone for lookups at once, purged or not.
    for token in [&first, &second] {
        assert!(
            f.store
                .find(token.hash(), at(ABSOLUTE))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        f.store
            .family(&family.id, at(ABSOLUTE))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        refreshed(&*f.store, &second, at(ABSOLUTE)).await,
        Err(RefreshError::Unknown)
    ));
}

async fn a_rotation_over_the_familys_budget_changes_nothing_and_a_replay_is_free(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let spent = |_: &Family| -> BoxFuture<'static, Result<(), u64>> { Box::pin(async { Err(7) }) };
    let answer = refresh_admitted(
        &*f.store,
        &first,
        by(CLIENT),
        at(5),
        &mut SystemEntropy,
        &|_| false,
        &spent,
    )
    .await;
    assert!(
        matches!(answer, Err(RefreshError::Limited(7))),
        "{answer:?}"
    );
    assert_eq!(
        f.store.family(&family.id, at(5)).await.unwrap(),
        Some(family.clone())
    );
    // Admitted, it rotates; the retry within the grace is not asked for a budget.
    let (rotated, second, _, was_rotated) = pair(
        refresh_admitted(
            &*f.store,
            &first,
            by(CLIENT),
            at(6),
            &mut SystemEntropy,
            &|_| false,
            &|_| Box::pin(async { Ok(()) }),
        )
        .await
        .unwrap(),
    );
    assert!(was_rotated);
    let (replayed, again, _, was_rotated) = pair(
        refresh_admitted(
            &*f.store,
            &first,
            by(CLIENT),
            at(7),
            &mut SystemEntropy,
            &|_| false,
            &spent,
        )
        .await
        .unwrap(),
    );
    assert!(!was_rotated);
    assert_eq!((replayed.generation, again), (rotated.generation, second));
}

async fn a_revocation_in_force_revokes_the_family_once_and_not_for_another_client(f: Subject) {
    let (family, first) = logged_in(&*f.store).await;
    let ended = |_: &Family| true;
    // Another client's request is refused as such and ends nothing.
    let answer = refresh_admitted(
        &*f.store,
        &first,
        by("auth/other"),
        at(5),
        &mut SystemEntropy,
        &ended,
        &|_| Box::pin(async { Ok(()) }),
    )
    .await;
    assert!(
        matches!(answer, Err(RefreshError::Refused(Refused::OtherClient))),
        "{answer:?}"
    );
    assert_eq!(
        f.store.family(&family.id, at(5)).await.unwrap(),
        Some(family.clone())
    );
    // The owner's refresh ends the family, in the store.
    let answer = refresh_admitted(
        &*f.store,
        &first,
        by(CLIENT),
        at(6),
        &mut SystemEntropy,
        &ended,
        &|_| Box::pin(async { Ok(()) }),
    )
    .await;
    assert!(
        matches!(
            answer,
            Err(RefreshError::Refused(Refused::Revoked(
                RevokedBecause::Revocation
            )))
        ),
        "{answer:?}"
    );
    let stored = f.store.family(&family.id, at(6)).await.unwrap().unwrap();
    assert_eq!(stored.revoked.unwrap().because, RevokedBecause::Revocation);
    // With the Revocation gone, the family stays ended.
    let answer = refresh_admitted(
        &*f.store,
        &first,
        by(CLIENT),
        at(7),
        &mut SystemEntropy,
        &|_| false,
        &|_| Box::pin(async { Ok(()) }),
    )
    .await;
    assert!(
        matches!(
            answer,
            Err(RefreshError::Refused(Refused::Revoked(
                RevokedBecause::Revocation
            )))
        ),
        "{answer:?}"
    );
}

// The embedded store's own: its file across restarts, its purge, its corruption.

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: EmbeddedStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

#[tokio::test]
async fn a_reuse_revocation_is_on_disk() {
    let f = fixture();
    let (_, first) = logged_in(&f.store).await;
    let (_, second, ..) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
    let answer = refreshed(&f.store, &first, at(60 + GRACE)).await.unwrap();
    assert!(matches!(answer, Refreshed::Reuse { .. }));
    // A restarted authplane refuses the legitimate holder's token too.
    drop(f.store);
    let store = EmbeddedStore::open(&f.path).unwrap();
    assert!(matches!(
        refreshed(&store, &second, at(100)).await,
        Err(RefreshError::Refused(Refused::Revoked(
            RevokedBecause::Reuse
        )))
    ));
}

#[tokio::test]
async fn expired_families_are_purged_with_all_their_tokens() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let (_, second, ..) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
    let (_, young) = {
        let started = start(login(), at(1_000), &mut SystemEntropy).unwrap();
        f.store.create(&started.family).await.unwrap();
        (started.family, started.token)
    };
    assert_eq!(f.store.purge(at(ABSOLUTE - 1)).await.unwrap(), 0);
    assert_eq!(f.store.purge(at(ABSOLUTE + 1)).await.unwrap(), 1);
    assert_eq!(f.store.purge(at(ABSOLUTE + 1)).await.unwrap(), 0);
    assert!(f.store.family(&family.id, at(0)).await.unwrap().is_none());
    for token in [&first, &second] {
        assert!(f.store.find(token.hash(), at(0)).await.unwrap().is_none());
    }
    // The younger family is untouched.
    assert!(
        f.store
            .find(young.hash(), at(ABSOLUTE + 1))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_record_that_does_not_read_is_an_error_not_a_token() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    drop(f.store);
    {
        const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
        let db = Database::open(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FAMILIES)
            .unwrap()
            .insert(family.id.as_str(), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = EmbeddedStore::open(&f.path).unwrap();
    assert!(matches!(
        refreshed(&store, &first, at(60)).await,
        Err(RefreshError::Store(StoreError::Corrupt(_)))
    ));
}

#[test]
fn a_file_that_is_not_a_store_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(EmbeddedStore::open(&path).is_err());
    // And is left as it was, for someone to look at.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}

#[test]
fn the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_sessions_of_a_subject_are_listed_and_ended_and_forgotten_with_their_families() {
    let f = fixture();
    let first = sessions_listed_and_ended(&f.store).await;
    let store = &f.store;
    let later = first.forget_after() + SignedDuration::from_secs(1);
    assert_eq!(store.purge(later).await.unwrap(), 4);
    drop(f.store);
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
    let db = Database::open(&f.path).unwrap();
    let txn = db.begin_read().unwrap();
    let index = txn
        .open_multimap_table(redb::MultimapTableDefinition::<(&str, &str), &str>::new(
            "sessions",
        ))
        .unwrap();
    assert!(index.is_empty().unwrap());
}

// Redis's own: a restart, an outage, a full Redis, records of the wrong shape, and what
// it holds.

/// A raw connection to the test's Redis, to look at and spoil what the store wrote.
fn raw(server: &RedisServer) -> ::redis::Connection {
    ::redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test]
async fn redis_a_restart_loses_nothing() {
    let Some(mut server) = RedisServer::start("redis_a_restart_loses_nothing") else {
        return;
    };
    let store = RedisStore::new(&redis_settings(&server, "test")).unwrap();
    let (family, first) = logged_in(&store).await;
    let (rotated, second, ..) = pair(refreshed(&store, &first, at(60)).await.unwrap());
    let (other, other_token) = logged_in(&store).await;
    let ended = logout(&store, &other_token, CLIENT, &named_key, at(61))
        .await
        .unwrap()
        .unwrap()
        .family;
    server.restart();
    // The first call after the restart already answers: the store reconnects.
    let found = store.find(second.hash(), at(62)).await.unwrap().unwrap();
    assert_eq!((found.family, found.generation), (rotated, 1));
    let old = store.find(first.hash(), at(62)).await.unwrap().unwrap();
    assert_eq!((old.family.id, old.generation), (family.id, 0));
    assert_eq!(store.family(&other.id, at(62)).await.unwrap(), Some(ended));
}

#[tokio::test]
async fn redis_down_is_unavailable_and_then_back() {
    let Some(mut server) = RedisServer::start("redis_down_is_unavailable_and_then_back") else {
        return;
    };
    let store = Timed::new(
        RedisStore::new(&redis_settings(&server, "test")).unwrap(),
        std::time::Duration::from_secs(10),
    );
    let (_, first) = logged_in(&store).await;
    server.kill();
    let answer = refreshed(&store, &first, at(60)).await;
    let Err(RefreshError::Store(StoreError::Unavailable(why))) = answer else {
        panic!("expected the store to be unavailable, got {answer:?}");
    };
    // Redis's own refusal, not the deadline's: an outage is answered at once.
    assert!(why.starts_with("Redis"), "{why}");
    server.restart();
    assert!(pair(refreshed(&store, &first, at(61)).await.unwrap()).3);
}

#[tokio::test]
async fn redis_full_refuses_writes_clearly_and_writes_nothing() {
    let Some(server) = RedisServer::start_with(
        "redis_full_refuses_writes_clearly_and_writes_nothing",
        &["--maxmemory", "1", "--maxmemory-policy", "noeviction"],
    ) else {
        return;
    };
    let store = RedisStore::new(&redis_settings(&server, "test")).unwrap();
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    let answer = store.create(&started.family).await;
    let Err(StoreError::Unavailable(why)) = answer else {
        panic!("expected a full Redis to refuse, got {answer:?}");
    };
    assert!(why.contains("maxmemory"), "{why}");
    // Reads still answer, and nothing was half-written.
    assert!(
        store
            .find(started.token.hash(), at(1))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .family(&started.family.id, at(1))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn redis_records_of_the_wrong_shape_are_corrupt_not_tokens() {
    let Some(server) =
        RedisServer::start("redis_records_of_the_wrong_shape_are_corrupt_not_tokens")
    else {
        return;
    };
    let store = RedisStore::new(&redis_settings(&server, "test")).unwrap();
    let mut raw = raw(&server);
    let family_key = |family: &Family| format!("authplane:test:f:{}", family.id);
    let token_key = |token: &RefreshToken| format!("authplane:test:t:{}", token.hash());
    let corrupt = |answer: &Result<Refreshed, RefreshError>| {
        matches!(answer, Err(RefreshError::Store(StoreError::Corrupt(_))))
    };
    let set = |raw: &mut ::redis::Connection, args: &[&str]| {
        ::redis::cmd(args[0]).arg(&args[1..]).exec(raw).unwrap();
    };

    // A family key that is a string, not a hash.
    let (family, token) = logged_in(&store).await;
    set(&mut raw, &["DEL", &family_key(&family)]);
    set(&mut raw, &["SET", &family_key(&family), "garbage"]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    let answer = store.family(&family.id, at(60)).await;
    assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");

    // A family whose JSON does not read, or disagrees with the compared fields.
    let (family, token) = logged_in(&store).await;
    set(
        &mut raw,
        &["HSET", &family_key(&family), "family", "{not json"],
    );
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    let (family, token) = logged_in(&store).await;
    set(&mut raw, &["HSET", &family_key(&family), "generation", "7"]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    // A family hash that lost a field: the compare-and-set refuses it too.
    let (family, token) = logged_in(&store).await;
    set(&mut raw, &["HDEL", &family_key(&family), "revoked"]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    let next = crate::refresh::logout(&family, at(60)).unwrap();
    assert!(matches!(
        store.swap(&family, &next, None).await,
        Err(StoreError::Corrupt(_))
    ));

    // A token key holding nonsense, or of the wrong type.
    let (_, token) = logged_in(&store).await;
    set(&mut raw, &["SET", &token_key(&token), "nonsense"]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    let (_, token) = logged_in(&store).await;
    set(&mut raw, &["DEL", &token_key(&token)]);
    set(&mut raw, &["LPUSH", &token_key(&token), "1"]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
    // A token whose family is gone.
    let (family, token) = logged_in(&store).await;
    set(&mut raw, &["DEL", &family_key(&family)]);
    assert!(corrupt(&refreshed(&store, &token, at(60)).await));
}

#[tokio::test]
async fn redis_holds_hashes_only_under_its_installations_prefix_and_everything_expires() {
    let Some(server) = RedisServer::start(
        "redis_holds_hashes_only_under_its_installations_prefix_and_everything_expires",
    ) else {
        return;
    };
    let ours = RedisStore::new(&redis_settings(&server, "shop-prod")).unwrap();
    let theirs = RedisStore::new(&redis_settings(&server, "shop-staging")).unwrap();
    let (family, first) = logged_in(&ours).await;
    let (_, second, ..) = pair(refreshed(&ours, &first, at(60)).await.unwrap());
    // Another installation in the same Redis does not see the family.
    assert!(theirs.find(second.hash(), at(61)).await.unwrap().is_none());
    assert!(theirs.family(&family.id, at(61)).await.unwrap().is_none());
    assert!(matches!(
        refreshed(&theirs, &second, at(61)).await,
        Err(RefreshError::Unknown)
    ));

    let mut raw = raw(&server);
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut raw).unwrap();
    // The family, its two tokens, and the sessions of its client and subject.
    assert_eq!(keys.len(), 4, "{keys:?}");
    let forget_after = family.forget_after().as_millisecond();
    let secrets = [first.expose(), second.expose()];
    for key in &keys {
        assert!(key.starts_with("authplane:shop-prod:"), "{key}");
        let expires: i64 = ::redis::cmd("PEXPIRETIME")
            .arg(key)
            .query(&mut raw)
            .unwrap();
        assert_eq!(expires, forget_after, "{key}");
        let dump: Vec<u8> = ::redis::cmd("DUMP").arg(key).query(&mut raw).unwrap();
        for secret in secrets {
            assert!(!key.contains(secret));
            assert!(
                !dump
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "{key} holds a refresh token"
            );
        }
    }
}

#[test]
fn an_installation_name_cannot_forge_another_prefix() {
    assert_eq!(super::redis::prefix("shop/prod"), "authplane:shop/prod:");
    assert_eq!(super::redis::prefix("a:f:x"), "authplane:a_f_x:");
    assert_eq!(super::redis::prefix("a b\n*"), "authplane:a_b__:");
}

#[tokio::test]
async fn redis_down_at_start_is_not_fatal_and_is_used_once_up() {
    // A free port where nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{port}/"),
        password: None,
        ca: None,
        installation: "test".into(),
        timeout: std::time::Duration::from_secs(2),
    };
    let store = RedisStore::new(&settings).unwrap();
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    let answer = store.create(&started.family).await;
    assert!(
        matches!(answer, Err(StoreError::Unavailable(_))),
        "{answer:?}"
    );
    let Some(server) =
        RedisServer::start_on("redis_down_at_start_is_not_fatal_and_is_used_once_up", port)
    else {
        return;
    };
    store.create(&started.family).await.unwrap();
    assert!(
        store
            .find(started.token.hash(), at(1))
            .await
            .unwrap()
            .is_some()
    );
    drop(server);
}

#[tokio::test]
async fn redis_settings_that_can_lose_sessions_are_pointed_out() {
    let Some(safe) = RedisServer::start("redis_settings_that_can_lose_sessions_are_pointed_out")
    else {
        return;
    };
    let store = RedisStore::new(&redis_settings(&safe, "test")).unwrap();
    assert_eq!(store.advice().await.unwrap(), Vec::<String>::new());
    let risky = RedisServer::start_with(
        "redis_settings_that_can_lose_sessions_are_pointed_out",
        &["--maxmemory-policy", "allkeys-lru", "--appendonly", "no"],
    )
    .unwrap();
    let store = RedisStore::new(&redis_settings(&risky, "test")).unwrap();
    let advice = store.advice().await.unwrap();
    assert_eq!(advice.len(), 2, "{advice:?}");
    assert!(
        advice[0].contains("maxmemory-policy noeviction"),
        "{advice:?}"
    );
    assert!(advice[1].contains("appendonly yes"), "{advice:?}");
}

#[tokio::test]
async fn a_redis_that_does_not_answer_is_unavailable_within_its_timeout() {
    let Some(server) =
        RedisServer::start("a_redis_that_does_not_answer_is_unavailable_within_its_timeout")
    else {
        return;
    };
    let settings = RedisSettings {
        timeout: std::time::Duration::from_millis(300),
        ..redis_settings(&server, "test")
    };
    // The deadline of the endpoint well beyond Redis's own timeout: the store answers.
    let store = Timed::new(
        RedisStore::new(&settings).unwrap(),
        std::time::Duration::from_secs(30),
    );
    let (_, first) = logged_in(&store).await;
    server.freeze();
    let answer = refreshed(&store, &first, at(60)).await;
    server.thaw();
    let Err(RefreshError::Store(StoreError::Unavailable(why))) = answer else {
        panic!("expected the store to be unavailable, got {answer:?}");
    };
    assert!(why.contains("did not answer in time"), "{why}");
    // Once Redis answers again, so does the store.
    assert!(pair(refreshed(&store, &first, at(61)).await.unwrap()).3);
}

#[tokio::test]
async fn rediss_checks_the_servers_certificate_against_the_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let file = |name: &str, text: String| {
        let path = pki.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca_file, cert_file, key_file) = (
        file("ca.pem", ca.pem()),
        file("cert.pem", leaf.pem()),
        file("key.pem", key.serialize_pem()),
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let Some(server) = RedisServer::start_with(
        "rediss_checks_the_servers_certificate_against_the_given_ca",
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ],
    ) else {
        return;
    };
    let over_tls = |ca: Option<Vec<u8>>| RedisSettings {
        url: format!("rediss://localhost:{tls_port}/"),
        ca,
        ..redis_settings(&server, "test")
    };

    let store = RedisStore::new(&over_tls(Some(ca.pem().into_bytes()))).unwrap();
    let (family, first) = logged_in(&store).await;
    let found = store.find(first.hash(), at(1)).await.unwrap().unwrap();
    assert_eq!(found.family, family);

    // The system's roots do not know this CA: no connection, no session.
    let untrusting = RedisStore::new(&over_tls(None)).unwrap();
    let answer = untrusting.find(first.hash(), at(1)).await;
    assert!(
        matches!(answer, Err(StoreError::Unavailable(_))),
        "{answer:?}"
    );
}

/// A subject that logs in more often than its families expire keeps its sessions set
/// alive for ever (each login raises its expiry): the members of families Redis has
/// expired must leave it, or it grows with every login ever made, and listing or ending
/// that user's sessions reads every one of them.
#[tokio::test]
async fn redis_a_sessions_set_does_not_keep_the_ids_of_expired_families() {
    let Some(server) =
        RedisServer::start("redis_a_sessions_set_does_not_keep_the_ids_of_expired_families")
    else {
        return;
    };
    let store = RedisStore::new(&redis_settings(&server, "test")).unwrap();
    let mut raw = raw(&server);
    let set = format!("authplane:test:s:{CLIENT}\n{}", login().subject);
    for _ in 0..50 {
        let (family, _) = logged_in(&store).await;
        // What Redis does at the family's forget-after.
        let _: i64 = ::redis::cmd("DEL")
            .arg(format!("authplane:test:f:{}", family.id))
            .query(&mut raw)
            .unwrap();
    }
    let members: i64 = ::redis::cmd("SCARD").arg(&set).query(&mut raw).unwrap();
    assert!(members <= 2, "{members} ids of expired families kept");
}
