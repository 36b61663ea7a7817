//! The store that could not be opened (a corrupt file, an unwritable folder): every call
//! fails, so the token endpoint answers 503 with `Retry-After` and says why in the log,
//! while everything else keeps serving. Better than refusing to start: decisions, JWKS
//! and revocation never depend on the store.

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::{FamilyStore, Found, StoreError};
use crate::refresh::{Family, TokenHash};
use crate::revocation::SessionRevocation;

pub struct Unavailable(pub String);

impl Unavailable {
    fn fail<'a, T: Send + 'a>(&self) -> BoxFuture<'a, Result<T, StoreError>> {
        let why = self.0.clone();
        Box::pin(async move { Err(StoreError::Unavailable(why)) })
    }
}

impl FamilyStore for Unavailable {
    fn create<'a>(&'a self, _: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        self.fail()
    }

    fn find(&self, _: TokenHash, _: Timestamp) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        self.fail()
    }

    fn family<'a>(
        &'a self,
        _: &'a str,
        _: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        self.fail()
    }

    fn sessions<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        self.fail()
    }

    fn swap<'a>(
        &'a self,
        _: &'a Family,
        _: &'a Family,
        _: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.fail()
    }

    fn purge(&self, _: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.fail()
    }
}
