//! One SigningKey brought up to date, the same way by both drivers: load what is
//! stored, plan (the pure [`reconcile::signing_key`]), persist before anything is
//! published, report what happened, measure. Where the keys live is a [`KeyStore`]:
//! dev mode's state folder, or a Secret.

use std::future::Future;
use std::sync::LazyLock;

use jiff::Timestamp;
use tokio::sync::Semaphore;

use crate::api::{ObjectKey, SigningKey};
use crate::keys::store::{Data, StoreError};
use crate::keys::{KeyError, KeyMaterial};
use crate::metrics::Metrics;
use crate::reconcile::{self, KeyOutcome, ReconcileError};

/// What a store holds for one SigningKey, as loaded.
pub struct Stored<V> {
    /// The stored form; `None` when nothing is stored yet.
    pub data: Option<Data>,
    /// Write it back even when the plan changes nothing: what the store held is gone and
    /// `data` comes from memory (dev mode's vanished state file).
    pub restore: bool,
    /// What a save needs from this load (a Secret's resourceVersion, say).
    pub version: V,
}

/// Where a SigningKey's keys live. Futures are `Send`: the operator runs them on the
/// controller's tasks.
pub trait KeyStore: Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// What the store must remember between a load and the save that follows it.
    type Version: Send + Sync;

    /// What is stored for `key` now. An error means nothing may be written over it.
    fn load(
        &self,
        id: &ObjectKey,
        key: &SigningKey,
    ) -> impl Future<Output = Result<Stored<Self::Version>, Self::Error>> + Send;

    /// Stores `data` over what `loaded` was.
    fn save(
        &self,
        id: &ObjectKey,
        key: &SigningKey,
        data: &Data,
        loaded: &Stored<Self::Version>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Where key events are told, besides the log: Kubernetes Events on a cluster.
pub trait KeyEvents: Sync {
    fn key_event(&self, key: &SigningKey, event: &Said) -> impl Future<Output = ()> + Send;
}

/// Dev mode: the log is the only place.
impl KeyEvents for () {
    async fn key_event(&self, _: &SigningKey, _: &Said) {}
}

/// A key event in words.
pub struct Said {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
    /// The key it is about.
    pub kid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStepError<E: std::error::Error + 'static> {
    /// The store could not be read; no keys were written.
    #[error("{0}")]
    Load(#[source] E),
    /// What is stored does not parse; nothing was written over it.
    #[error("the stored keys are unreadable: {0}")]
    Unreadable(#[source] StoreError),
    #[error(transparent)]
    Key(KeyError),
    /// The plan could not be stored; nothing of it is published.
    #[error("{0}")]
    Save(#[source] E),
}

/// The plan of one SigningKey at `now`. A plan that needs a new key is made on the
/// blocking pool: an RSA key takes up to a second of CPU, and on an async worker it
/// would stall every request that worker serves (a SigningKey rotating every few seconds
/// held `/authz` of every team for up to a second). Planning without one, by far the
/// common case, stays where it is.
async fn plan(
    key: &SigningKey,
    stored: Option<&Data>,
    external_url: &str,
    now: Timestamp,
) -> Result<KeyOutcome, ReconcileError> {
    let mut needs_a_key = false;
    let mut refuse = |alg, _bits| {
        needs_a_key = true;
        Err(KeyError::Generation(alg))
    };
    let planned = reconcile::signing_key(key, stored, external_url, now, &mut refuse);
    if !needs_a_key {
        return planned;
    }
    // One key at a time per spare core: a tenant whose SigningKeys rotate every few
    // seconds with large RSA keys costs the others their key generation's latency,
    // never every core the requests need.
    static GENERATING: LazyLock<Semaphore> = LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new(cores.saturating_sub(1).max(1))
    });
    let _permit = GENERATING.acquire().await;
    let (key, stored, external_url) = (key.clone(), stored.cloned(), external_url.to_owned());
    tokio::task::spawn_blocking(move || {
        reconcile::signing_key(
            &key,
            stored.as_ref(),
            &external_url,
            now,
            &mut KeyMaterial::generate,
        )
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Loads, plans, persists, reports and measures one valid SigningKey at `now`. The
/// outcome is what to publish (JWKS, status, the served keys) and when to run again;
/// with it comes what the load remembered.
pub async fn bring_up_to_date<S: KeyStore>(
    store: &S,
    events: &impl KeyEvents,
    metrics: &Metrics,
    id: &ObjectKey,
    key: &SigningKey,
    external_url: &str,
    now: Timestamp,
) -> Result<(KeyOutcome, S::Version), KeyStepError<S::Error>> {
    let step = step(store, events, metrics, id, key, external_url, now).await;
    if step.is_err() {
        metrics.key_failed(&id.namespace, &id.name);
    }
    step
}

async fn step<S: KeyStore>(
    store: &S,
    events: &impl KeyEvents,
    metrics: &Metrics,
    id: &ObjectKey,
    key: &SigningKey,
    external_url: &str,
    now: Timestamp,
) -> Result<(KeyOutcome, S::Version), KeyStepError<S::Error>> {
    let loaded = store.load(id, key).await.map_err(KeyStepError::Load)?;
    let outcome = plan(key, loaded.data.as_ref(), external_url, now)
        .await
        .map_err(|e| match e {
            ReconcileError::Store(e) => KeyStepError::Unreadable(e),
            ReconcileError::Key(e) => KeyStepError::Key(e),
        })?;
    if outcome.write || loaded.restore {
        // Persist before publishing: a key is never served, or used, unsaved.
        store
            .save(id, key, &outcome.data, &loaded)
            .await
            .map_err(KeyStepError::Save)?;
    }
    for event in &outcome.events {
        let (reason, message, warning) = reconcile::describe(event, outcome.policy.algorithm);
        if warning {
            tracing::warn!("SigningKey {id}: {message}");
        } else {
            tracing::info!("SigningKey {id}: {message}");
        }
        let said = Said {
            reason,
            message,
            warning,
            kid: event.kid().to_owned(),
        };
        events.key_event(key, &said).await;
    }
    metrics.observe_keys(&outcome, &id.namespace, &id.name, now);
    Ok((outcome, loaded.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A store in memory that counts saves and can be told to fail them.
    #[derive(Default)]
    struct Memory {
        data: Mutex<Option<Data>>,
        restore: bool,
        saves: AtomicUsize,
        fail_saves: bool,
        /// Set by another task; what it was at the last save is kept.
        other_task_ran: Arc<AtomicBool>,
        other_task_ran_before_save: AtomicBool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct Full;

    impl KeyStore for Memory {
        type Error = Full;
        type Version = ();

        async fn load(&self, _: &ObjectKey, _: &SigningKey) -> Result<Stored<()>, Full> {
            Ok(Stored {
                data: self.data.lock().unwrap().clone(),
                restore: self.restore,
                version: (),
            })
        }

        async fn save(
            &self,
            _: &ObjectKey,
            _: &SigningKey,
            data: &Data,
            _: &Stored<()>,
        ) -> Result<(), Full> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            self.other_task_ran_before_save
                .store(self.other_task_ran.load(Ordering::SeqCst), Ordering::SeqCst);
            if self.fail_saves {
                return Err(Full);
            }
            *self.data.lock().unwrap() = Some(data.clone());
            Ok(())
        }
    }

    /// The events told, each with what the store held then.
    #[derive(Default)]
    struct Told<'a> {
        store: Option<&'a Memory>,
        reasons: Mutex<Vec<(&'static str, bool)>>,
    }

    impl KeyEvents for Told<'_> {
        async fn key_event(&self, _: &SigningKey, said: &Said) {
            let stored = self.store.is_some_and(|s| s.data.lock().unwrap().is_some());
            self.reasons.lock().unwrap().push((said.reason, stored));
        }
    }

    fn key() -> (ObjectKey, SigningKey) {
        let key: SigningKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"algorithm": "EdDSA", "rotation": {"every": "100s", "prePublish": "10s", "retainFor": "30s"}},
        }))
        .unwrap();
        (ObjectKey::of(&key.metadata), key)
    }

    async fn step(store: &Memory, told: &Told<'_>) -> Result<KeyOutcome, KeyStepError<Full>> {
        let (id, key) = key();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let metrics = Metrics::default();
        bring_up_to_date(store, told, &metrics, &id, &key, "https://x", now)
            .await
            .map(|(outcome, ())| outcome)
    }

    #[tokio::test]
    async fn a_key_is_stored_before_it_is_told_of_and_an_unchanged_one_is_not_stored_again() {
        let store = &Memory::default();
        let told = Told {
            store: Some(store),
            ..Told::default()
        };
        let first = step(store, &told).await.unwrap();
        assert_eq!(store.saves.load(Ordering::SeqCst), 1);
        assert_eq!(
            *told.reasons.lock().unwrap(),
            [("KeyGenerated", true)],
            "told once stored"
        );
        assert_eq!(store.data.lock().unwrap().as_ref(), Some(&first.data));
        step(store, &told).await.unwrap();
        assert_eq!(store.saves.load(Ordering::SeqCst), 1, "nothing changed");
    }

    /// A new key is made without holding the runtime: on a runtime of one thread, a task
    /// that is ready (a decision, say) runs while the key is generated, before it is
    /// stored. Generated on the async thread, an RSA key held every such task for up to
    /// a second.
    #[tokio::test(flavor = "current_thread")]
    async fn a_key_is_generated_without_holding_the_runtime() {
        let store = Memory::default();
        let ran = store.other_task_ran.clone();
        let other = tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
        step(&store, &Told::default()).await.unwrap();
        assert_eq!(store.saves.load(Ordering::SeqCst), 1);
        assert!(
            store.other_task_ran_before_save.load(Ordering::SeqCst),
            "the runtime served nothing else while the key was generated"
        );
        other.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_save_publishes_nothing_and_tells_nothing() {
        let store = Memory {
            fail_saves: true,
            ..Memory::default()
        };
        let told = Told::default();
        assert!(matches!(
            step(&store, &told).await,
            Err(KeyStepError::Save(Full))
        ));
        assert!(told.reasons.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unreadable_keys_are_never_written_over() {
        let garbage = Data::from([("keys.json".to_owned(), "garbage".to_owned())]);
        let store = Memory {
            data: Mutex::new(Some(garbage.clone())),
            ..Memory::default()
        };
        let told = Told::default();
        assert!(matches!(
            step(&store, &told).await,
            Err(KeyStepError::Unreadable(_))
        ));
        assert_eq!(store.saves.load(Ordering::SeqCst), 0);
        assert_eq!(*store.data.lock().unwrap(), Some(garbage));
    }

    #[tokio::test]
    async fn a_restore_is_written_back_though_the_plan_changes_nothing() {
        let store = Memory::default();
        let told = Told::default();
        step(&store, &told).await.unwrap();
        let restoring = Memory {
            data: Mutex::new(store.data.lock().unwrap().clone()),
            restore: true,
            ..Memory::default()
        };
        let outcome = step(&restoring, &told).await.unwrap();
        assert!(!outcome.write, "the keys in memory are up to date");
        assert_eq!(restoring.saves.load(Ordering::SeqCst), 1, "written back");
    }
}
