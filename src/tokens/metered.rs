//! The store's latency and errors, per operation, for `/metrics`: a wrapper around any
//! store (outside [`super::Timed`], so a missed deadline counts as an error).

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::metrics::{StoreLabels, TokenMetrics};
use super::{FamilyStore, Found, StoreError};
use crate::refresh::{Family, TokenHash};
use crate::revocation::SessionRevocation;

pub struct Metered<S> {
    store: S,
    metrics: TokenMetrics,
}

impl<S: FamilyStore> Metered<S> {
    pub fn new(store: S, metrics: TokenMetrics) -> Self {
        Self { store, metrics }
    }

    fn measured<'a, T: Send + 'a>(
        &self,
        operation: &'static str,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = call.await;
            let labels = StoreLabels { operation };
            metrics
                .store_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                metrics.store_errors.get_or_create(&labels).inc();
            }
            result
        })
    }
}

impl<S: FamilyStore> FamilyStore for Metered<S> {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        self.measured("create", self.store.create(family))
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        self.measured("find", self.store.find(token, now))
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        self.measured("family", self.store.family(id, now))
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        self.measured("sessions", self.store.sessions(client, subject, now))
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.measured("swap", self.store.swap(expected, next, ended))
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.measured("purge", self.store.purge(now))
    }
}

impl FamilyStore for Arc<dyn FamilyStore> {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).create(family)
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        (**self).find(token, now)
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        (**self).family(id, now)
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        (**self).sessions(client, subject, now)
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).swap(expected, next, ended)
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        (**self).purge(now)
    }
}
