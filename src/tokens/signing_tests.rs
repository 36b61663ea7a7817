//! [`refresh_signing`]: the access token is made while the store writes the rotation,
//! and a rotation that loses its compare-and-set never hands out what it signed.

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

use super::embedded::EmbeddedStore;
use super::*;
use crate::refresh::{Lifetimes, Login, Presented, SystemEntropy, start};

const CLIENT: &str = "shop/web";

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
            absolute: SignedDuration::from_hours(24),
            idle: SignedDuration::from_hours(1),
            grace: SignedDuration::from_secs(10),
        },
    }
}

/// A store where another replica rotates the family first: the first compare-and-set
/// it is asked for is preceded by a winning rotation of the same token, so it loses.
struct Overtaken {
    store: EmbeddedStore,
    token: RefreshToken,
    /// The winner's family, once it has rotated.
    winner: Mutex<Option<Family>>,
}

impl FamilyStore for Overtaken {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.create(family)
    }
    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        self.store.find(token, now)
    }
    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        self.store.family(id, now)
    }
    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        self.store.sessions(client, subject, now)
    }
    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let first = self.winner.lock().unwrap().is_none();
            if first {
                let presented = Presented {
                    token: &self.token,
                    generation: expected.generation,
                    client: CLIENT,
                };
                let Ok(refresh::Step::Rotate { next: won, .. }) =
                    refresh::refresh(expected, presented, at(1), &mut SystemEntropy)
                else {
                    panic!("the competing refresh should rotate");
                };
                assert!(self.store.swap(expected, &won).await?);
                *self.winner.lock().unwrap() = Some(won);
            }
            self.store.swap(expected, next).await
        })
    }
    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.store.purge(now)
    }
}

#[tokio::test]
async fn a_rotation_that_loses_its_race_never_hands_out_its_signed_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("tokens.redb")).unwrap();
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    store.create(&started.family).await.unwrap();
    let store = Overtaken {
        store,
        token: started.token.clone(),
        winner: Mutex::new(None),
    };
    // Every access token made, as (generation, jti): the "signature" of this test.
    let made = Mutex::new(Vec::new());
    let sign = |family: &Family, access: &AccessGrant| {
        made.lock()
            .unwrap()
            .push((family.generation, access.jti.clone()));
        access.jti.clone()
    };
    let (refreshed, signed) = refresh_signing(
        &store,
        &started.token,
        CLIENT,
        at(1),
        &mut SystemEntropy,
        &|_| false,
        &|_| Ok(()),
        &sign,
    )
    .await
    .unwrap();

    let winner = store.winner.lock().unwrap().clone().unwrap();
    let Refreshed::Pair {
        family,
        access,
        rotated,
        ..
    } = refreshed
    else {
        panic!("expected the grace's pair, got {refreshed:?}");
    };
    // The loser read again and got the winner's pair, signed for the winner's grant.
    assert!(!rotated);
    assert_eq!(family.generation, winner.generation);
    assert_eq!(access.jti, winner.jti);
    assert_eq!(signed.as_deref(), Some(winner.jti.as_str()));
    // A token was made for the losing rotation (while its write was in flight) and
    // dropped: two were made, one answered.
    let made = made.into_inner().unwrap();
    assert_eq!(made.len(), 2, "made: {made:?}");
    assert_ne!(made[0].1, winner.jti, "the first token was the losing rotation's");
    assert_eq!(made[1], (winner.generation, winner.jti.clone()));
}

#[tokio::test]
async fn a_rotation_that_wins_answers_the_token_signed_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("tokens.redb")).unwrap();
    let started = start(login(), at(0), &mut SystemEntropy).unwrap();
    store.create(&started.family).await.unwrap();
    let (refreshed, signed) = refresh_signing(
        &store,
        &started.token,
        CLIENT,
        at(1),
        &mut SystemEntropy,
        &|_| false,
        &|_| Ok(()),
        &|family: &Family, access: &AccessGrant| (family.generation, access.jti.clone()),
    )
    .await
    .unwrap();
    let Refreshed::Pair {
        family, rotated, ..
    } = refreshed
    else {
        panic!("expected a rotation, got {refreshed:?}");
    };
    assert!(rotated);
    let stored = store.family(&family.id, at(1)).await.unwrap().unwrap();
    assert_eq!(signed, Some((stored.generation, stored.jti)));
    assert_eq!(stored.generation, 1);
}
