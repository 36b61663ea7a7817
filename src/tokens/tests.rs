//! The refresh path over the embedded store: a real redb file in a temporary folder.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use redb::{Database, TableDefinition};

use super::embedded::EmbeddedStore;
use super::*;
use crate::refresh::{Lifetimes, Login, RevokedBecause, SystemEntropy, start};

const CLIENT: &str = "shop/web";
const GRACE: i64 = 10;
const ABSOLUTE: i64 = 7 * 24 * 3_600;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn login() -> Login {
    Login {
        client: CLIENT.into(),
        issuer: "https://auth.example/web".into(),
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

async fn logged_in(store: &EmbeddedStore) -> (Family, RefreshToken) {
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    store.create(&started.family).await.unwrap();
    (started.family, started.token)
}

async fn refreshed(
    store: &EmbeddedStore,
    token: &RefreshToken,
    now: Timestamp,
) -> Result<Refreshed, RefreshError> {
    refresh(store, token, CLIENT, now, &mut SystemEntropy).await
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

#[tokio::test]
async fn a_family_is_found_by_the_hash_of_each_of_its_tokens() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let found = f.store.find(first.hash(), at(1)).await.unwrap().unwrap();
    assert_eq!((found.family, found.generation), (family.clone(), 0));
    let (next, second, _, rotated) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
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
        refreshed(&f.store, &stranger, at(61)).await,
        Err(RefreshError::Unknown)
    ));
}

#[tokio::test]
async fn a_stale_compare_and_set_writes_nothing() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let (rotated, ..) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
    // A writer that read generation 0 loses, whatever it wanted to write.
    let stale = crate::refresh::logout(&family, at(61)).unwrap();
    assert!(!f.store.swap(&family, &stale).await.unwrap());
    assert_eq!(
        f.store.family(&family.id, at(61)).await.unwrap(),
        Some(rotated.clone())
    );
    // One that read the revocation state wrongly loses too.
    let revoked = crate::refresh::logout(&rotated, at(62)).unwrap();
    assert!(f.store.swap(&rotated, &revoked).await.unwrap());
    let again = Family {
        generation: 2,
        ..rotated.clone()
    };
    assert!(!f.store.swap(&rotated, &again).await.unwrap());
    assert_eq!(
        f.store.family(&family.id, at(63)).await.unwrap(),
        Some(revoked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_of_one_token_make_one_rotation_and_one_pair() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let store: Arc<EmbeddedStore> = Arc::new(f.store.clone());
    let first = Arc::new(first);
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (store, first) = (store.clone(), first.clone());
            tokio::spawn(async move {
                refresh(&*store, &first, CLIENT, at(60), &mut SystemEntropy).await
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

#[tokio::test]
async fn reuse_after_the_grace_revokes_the_family_for_good() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let (_, second, ..) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
    let Refreshed::Reuse { family: revoked } =
        refreshed(&f.store, &first, at(60 + GRACE)).await.unwrap()
    else {
        panic!("expected reuse");
    };
    assert_eq!(revoked.id, family.id);
    // The revocation is on disk: a restarted authplane refuses the legitimate holder's
    // token too.
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
async fn another_clients_token_changes_nothing() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let answer = refresh(&f.store, &first, "shop/mobile", at(60), &mut SystemEntropy).await;
    assert!(matches!(
        answer,
        Err(RefreshError::Refused(Refused::OtherClient))
    ));
    assert_eq!(
        logout(&f.store, &first, "shop/mobile", at(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        f.store.family(&family.id, at(60)).await.unwrap(),
        Some(family)
    );
}

#[tokio::test]
async fn logout_revokes_the_family_once() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let revoked = logout(&f.store, &first, CLIENT, at(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.id, family.id);
    assert_eq!(revoked.revoked.unwrap().because, RevokedBecause::Logout);
    assert_eq!(
        f.store.family(&family.id, at(5)).await.unwrap(),
        Some(revoked.clone())
    );
    // Again: the family as the first logout left it, nothing written.
    assert_eq!(
        logout(&f.store, &first, CLIENT, at(6)).await.unwrap(),
        Some(revoked.clone())
    );
    assert!(matches!(
        refreshed(&f.store, &first, at(7)).await,
        Err(RefreshError::Refused(Refused::Revoked(
            RevokedBecause::Logout
        )))
    ));
}

#[tokio::test]
async fn expired_families_are_forgotten_with_all_their_tokens() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let (_, second, ..) = pair(refreshed(&f.store, &first, at(60)).await.unwrap());
    let (_, young) = {
        let started = start(login(), at(1_000), &mut SystemEntropy).unwrap();
        f.store.create(&started.family).await.unwrap();
        (started.family, started.token)
    };
    // Past its absolute expiry a family is gone for lookups at once, purged or not.
    assert!(
        f.store
            .find(second.hash(), at(ABSOLUTE))
            .await
            .unwrap()
            .is_none()
    );
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
async fn a_rotation_over_the_familys_budget_changes_nothing_and_a_replay_is_free() {
    let f = fixture();
    let (family, first) = logged_in(&f.store).await;
    let spent = |_: &Family| Err(7);
    let answer =
        refresh_admitted(&f.store, &first, CLIENT, at(5), &mut SystemEntropy, &spent).await;
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
        refresh_admitted(&f.store, &first, CLIENT, at(6), &mut SystemEntropy, &|_| {
            Ok(())
        })
        .await
        .unwrap(),
    );
    assert!(was_rotated);
    let (replayed, again, _, was_rotated) = pair(
        refresh_admitted(&f.store, &first, CLIENT, at(7), &mut SystemEntropy, &spent)
            .await
            .unwrap(),
    );
    assert!(!was_rotated);
    assert_eq!((replayed.generation, again), (rotated.generation, second));
}
