//! A deadline on every store call: a store that hangs (a disk stalled, a Redis that does
//! not answer) makes the token endpoint answer 503 within the deadline instead of holding
//! connections open; it never blocks anything else, which does not use the store.

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::{FamilyStore, Found, StoreError};
use crate::refresh::{Family, TokenHash};
use crate::revocation::SessionRevocation;

/// `S` with every call bounded by `deadline`. A call that misses it is
/// [`StoreError::Unavailable`]. The future of a call that misses it is dropped: the
/// embedded store then does not commit the write (unless its transaction had already
/// begun), so that a 503 means nothing changed; with Redis, a write that missed it may
/// still land, and the next request reads what landed.
pub struct Timed<S> {
    store: S,
    deadline: Duration,
}

impl<S: FamilyStore> Timed<S> {
    pub fn new(store: S, deadline: Duration) -> Self {
        Self { store, deadline }
    }

    fn bounded<'a, T: Send + 'a>(
        &self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let deadline = self.deadline;
        Box::pin(async move {
            tokio::time::timeout(deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "the token store did not answer a {what} within {deadline:?}"
                    )))
                })
        })
    }
}

impl<S: FamilyStore> FamilyStore for Timed<S> {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded("write", self.store.create(family))
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        self.bounded("lookup", self.store.find(token, now))
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        self.bounded("lookup", self.store.family(id, now))
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        self.bounded("lookup", self.store.sessions(client, subject, now))
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.bounded("write", self.store.swap(expected, next, ended))
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.bounded("purge", self.store.purge(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::{RefreshToken, SystemEntropy};
    use crate::tokens::{RefreshError, refresh};

    /// A store that never answers.
    struct Stalled;

    impl FamilyStore for Stalled {
        fn create<'a>(&'a self, _: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(futures::future::pending())
        }
        fn find(
            &self,
            _: TokenHash,
            _: Timestamp,
        ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
            Box::pin(futures::future::pending())
        }
        fn family<'a>(
            &'a self,
            _: &'a str,
            _: Timestamp,
        ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
            Box::pin(futures::future::pending())
        }
        fn sessions<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Timestamp,
        ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
            Box::pin(futures::future::pending())
        }
        fn swap<'a>(
            &'a self,
            _: &'a Family,
            _: &'a Family,
            _: Option<&'a SessionRevocation>,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(futures::future::pending())
        }
        fn purge(&self, _: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
            Box::pin(futures::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_is_unavailable_within_the_deadline() {
        let store = Timed::new(Stalled, Duration::from_millis(500));
        let token = RefreshToken::parse(&format!("aprt_{}", "A".repeat(43))).unwrap();
        let started = tokio::time::Instant::now();
        let answer = refresh(
            &store,
            &token,
            crate::tokens::Presenter {
                client: "shop/web",
                issuer: "https://auth.example/web",
                sessions: None,
            },
            Timestamp::now(),
            &mut SystemEntropy,
        )
        .await;
        let Err(RefreshError::Store(StoreError::Unavailable(why))) = answer else {
            panic!("expected the store to be unavailable, got {answer:?}");
        };
        assert!(
            why.contains("did not answer a lookup within 500ms"),
            "{why}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }
}
