//! The SigningKey controller: keys in a Secret (the source of truth), the public JWKS in a
//! ConfigMap, status and Events. Writes only while this replica holds the lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, ObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};

use crate::api::conditions::{self, reason};
use crate::api::{ObjectKey, SigningKey, SigningKeyStatus, Validate, condition};
use crate::clock::Clock;
use crate::keys::KeyMaterial;
use crate::keys::store::{Data, StoreError};
use crate::reconcile::{self, ReconcileError};

pub use super::error::{Error, ErrorKind};
use super::writer::LeaderWriter;
pub use super::writer::MANAGER;

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "authplane");
pub const SIGNING_KEY_LABEL: &str = "authplane.io/signing-key";
pub const SECRET_TYPE: &str = "authplane.io/signing-keys";
/// How often a SigningKey that cannot make progress is looked at again.
const STUCK_RETRY: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Context {
    /// For reads; every write goes through `writer`.
    pub client: Client,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub external_url: String,
    pub clock: Arc<dyn Clock>,
    pub writer: LeaderWriter,
    /// Consecutive failures per SigningKey, for the backoff.
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<crate::metrics::Metrics>,
        external_url: String,
        clock: Arc<dyn Clock>,
        writer: LeaderWriter,
    ) -> Self {
        Self {
            client,
            metrics,
            external_url,
            clock,
            writer,
            failures: Mutex::default(),
        }
    }
}

fn id_of(key: &SigningKey) -> ObjectKey {
    ObjectKey::of(&key.metadata)
}

pub async fn reconcile(key: Arc<SigningKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&key, &ctx).await;
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result
        && e.kind().is_reported()
    {
        publish(
            &ctx,
            &key,
            EventType::Warning,
            "ReconcileFailed",
            &e.to_string(),
            None,
        )
        .await;
    }
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&crate::metrics::ErrorLabels {
                kind: e.kind().label().to_owned(),
            })
            .inc();
    }
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&id_of(&key));
    }
    result
}

/// The controller's entry point: a SigningKey that does not even parse is skipped with a
/// warning instead of stalling the watch.
pub async fn reconcile_guarded(
    guard: Arc<kube::core::DeserializeGuard<SigningKey>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &guard.0 {
        Ok(key) => reconcile(Arc::new(key.clone()), ctx).await,
        Err(invalid) => {
            tracing::warn!(
                signing_key = %ObjectKey::of(&invalid.metadata),
                "skipped, it does not parse: {}",
                invalid.error
            );
            Ok(Action::await_change())
        }
    }
}

pub fn error_policy_guarded(
    guard: Arc<kube::core::DeserializeGuard<SigningKey>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &guard.0 {
        Ok(key) => error_policy(Arc::new(key.clone()), error, ctx),
        Err(_) => Action::await_change(),
    }
}

/// Conflicts retry at once from a fresh read; other failures back off exponentially,
/// up to five minutes.
pub fn error_policy(key: Arc<SigningKey>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(signing_key = %id_of(&key), kind = error.kind().label(), "reconcile failed: {error}");
    if error.kind() == ErrorKind::Conflict {
        return Action::requeue(Duration::from_millis(200));
    }
    let attempts = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(id_of(&key)).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    Action::requeue(Duration::from_secs(1 << attempts.min(9)).min(MAX_BACKOFF))
}

async fn reconcile_inner(key: &SigningKey, ctx: &Context) -> Result<Action, Error> {
    let id = id_of(key);
    let now = ctx.clock.now();
    let generation = key.metadata.generation;
    let invalid = key.validate();
    if !invalid.is_empty() {
        let message: Vec<String> = invalid.iter().map(ToString::to_string).collect();
        not_ready(key, ctx, reason::INVALID_SPEC, &message.join("; ")).await?;
        return Ok(Action::requeue(STUCK_RETRY));
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let secret_name = key.secret_name();
    let secret = secrets.get_opt(&secret_name).await?;
    // Keys existed (status says so) and their Secret is gone: someone deleted it.
    let deleted_by_hand =
        secret.is_none() && key.status.as_ref().is_some_and(|s| s.active_kid.is_some());
    // When the Secret was last recreated after such a deletion: kept in the Secret (the
    // source of truth), not in status, which the next reconcile may read from a cache
    // that has not seen the condition yet.
    let recreated_at = if deleted_by_hand {
        Some(now)
    } else {
        secret
            .as_ref()
            .and_then(|s| s.annotations().get(RECREATED_AT_ANNOTATION))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    }
    .filter(|at| *at + SECRET_RECREATED_SHOWN_FOR > now);
    let stored = match &secret {
        Some(secret) if !is_managed(secret) => {
            let message = format!(
                "Secret {secret_name} exists and is not managed by authplane (label {}={}); it is left alone: choose another spec.secretName or delete it",
                MANAGED_BY.0, MANAGED_BY.1
            );
            not_ready(key, ctx, reason::SECRET_NOT_MANAGED, &message).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Some(secret) => match secret_data(secret) {
            Ok(data) => Some(data),
            Err(e) => {
                unreadable(key, ctx, &secret_name, &e).await?;
                return Ok(Action::requeue(STUCK_RETRY));
            }
        },
        None => {
            if deleted_by_hand {
                // Keys existed: someone deleted the Secret. Say so loudly, then start over.
                let note = format!(
                    "Secret {secret_name} was deleted; new keys are generated and tokens signed by the old ones no longer verify"
                );
                publish(
                    ctx,
                    key,
                    EventType::Warning,
                    reason::SECRET_DELETED,
                    &note,
                    None,
                )
                .await;
            }
            None
        }
    };

    let outcome = match reconcile::signing_key(
        key,
        stored.as_ref(),
        &ctx.external_url,
        now,
        &mut KeyMaterial::generate,
    ) {
        Ok(outcome) => outcome,
        Err(ReconcileError::Store(e)) => {
            unreadable(key, ctx, &secret_name, &e).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Err(ReconcileError::Key(e)) => return Err(Error::Key(e)),
    };

    if outcome.write {
        let mut desired = build_secret(key, &secret_name, &outcome.data);
        if let Some(at) = recreated_at {
            desired
                .annotations_mut()
                .insert(RECREATED_AT_ANNOTATION.to_owned(), at.to_string());
        }
        match &secret {
            None => ctx.writer.create_secret(&id.namespace, &desired).await?,
            Some(existing) => {
                // Optimistic concurrency: a concurrent writer makes this a 409, and the
                // retry starts from a fresh read; two Active keys can never both land.
                desired.metadata.resource_version = existing.metadata.resource_version.clone();
                ctx.writer.replace_secret(&id.namespace, &desired).await?;
            }
        }
    }

    ctx.metrics
        .observe_keys(&outcome, &id.namespace, &id.name, now);
    let published = outcome.published(&id.namespace, &id.name);
    apply_jwks_config_map(
        key,
        ctx,
        std::str::from_utf8(&published.jwks).unwrap_or("{}"),
    )
    .await?;
    for event in &outcome.events {
        let (reason, note, warning) = reconcile::describe(event, outcome.policy.algorithm);
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            ctx,
            key,
            kind,
            reason,
            &note,
            Some(key_reference(key, event.kid())),
        )
        .await;
    }
    let mut status = outcome.status(generation, now);
    let mut next_wakeup = outcome.next_wakeup;
    if let Some(at) = recreated_at {
        // Kept for a day, so that whoever looks at the SigningKey learns that every
        // token signed before the deletion stopped verifying.
        status.conditions.push(condition(
            conditions::SECRET_RECREATED,
            true,
            reason::SECRET_DELETED,
            format!("Secret {secret_name} was deleted by hand at {at}; new keys were generated"),
            generation,
            at,
        ));
        next_wakeup = earliest(next_wakeup, at + SECRET_RECREATED_SHOWN_FOR);
    }
    patch_status(key, ctx, &status).await?;

    let wait = next_wakeup
        .map(|t| std::time::Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .unwrap_or(STUCK_RETRY);
    Ok(Action::requeue(wait.max(Duration::from_millis(100))))
}

/// How long the condition that reports a Secret deleted by hand stays.
/// On the Secret: when it was recreated after a deletion by hand.
pub const RECREATED_AT_ANNOTATION: &str = "authplane.io/recreated-at";
const SECRET_RECREATED_SHOWN_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

fn earliest(a: Option<jiff::Timestamp>, b: jiff::Timestamp) -> Option<jiff::Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn is_managed(secret: &Secret) -> bool {
    secret.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

/// The Secret's data as text; any entry that is not UTF-8 makes it unreadable.
pub fn secret_data(secret: &Secret) -> Result<Data, StoreError> {
    let mut data = Data::new();
    for (name, ByteString(bytes)) in secret.data.iter().flatten() {
        let text =
            String::from_utf8(bytes.clone()).map_err(|_| StoreError::NotText(name.clone()))?;
        data.insert(name.clone(), text);
    }
    Ok(data)
}

/// Metadata of an object the SigningKey owns: labelled as ours, deleted with it.
fn owned_metadata(key: &SigningKey, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: key.namespace(),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (SIGNING_KEY_LABEL.to_owned(), key.name_any()),
        ])),
        owner_references: key.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn build_secret(key: &SigningKey, name: &str, data: &Data) -> Secret {
    Secret {
        metadata: owned_metadata(key, name),
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

async fn apply_jwks_config_map(key: &SigningKey, ctx: &Context, jwks: &str) -> Result<(), Error> {
    let name = format!("{}-jwks", key.name_any());
    let config_map = ConfigMap {
        metadata: owned_metadata(key, &name),
        data: Some(BTreeMap::from([("jwks.json".to_owned(), jwks.to_owned())])),
        ..ConfigMap::default()
    };
    ctx.writer.apply_config_map(&config_map).await
}

async fn patch_status(
    key: &SigningKey,
    ctx: &Context,
    status: &SigningKeyStatus,
) -> Result<(), Error> {
    ctx.writer.status(key, status.clone()).await?;
    Ok(())
}

/// `Ready=False` with a message naming the problem; nothing else is written.
async fn not_ready(
    key: &SigningKey,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let now = ctx.clock.now();
    let generation = key.metadata.generation;
    let mut status = key.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.conditions = vec![condition(
        conditions::READY,
        false,
        reason,
        message.to_owned(),
        generation,
        now,
    )];
    publish(ctx, key, EventType::Warning, reason, message, None).await;
    patch_status(key, ctx, &status).await
}

async fn unreadable(
    key: &SigningKey,
    ctx: &Context,
    secret: &str,
    reason: &StoreError,
) -> Result<(), Error> {
    let message = format!(
        "Secret {secret} is unreadable ({reason}); the last good keys keep serving and nothing is overwritten: restore the Secret, or delete it to start over with new keys"
    );
    not_ready(key, ctx, reason::SECRET_UNREADABLE, &message).await
}

/// Events are best effort: a failure to record one never fails the reconcile.
///
/// `key` names the key an event is about. The recorder folds events with the same
/// reason and references into one series that keeps the first message, so without it
/// the third rotation's `KeyGenerated` would show the first rotation's kid.
async fn publish(
    ctx: &Context,
    signing_key: &SigningKey,
    type_: EventType,
    reason: &str,
    note: &str,
    key: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: key,
    };
    ctx.writer.event(&event, &signing_key.object_ref(&())).await;
}

/// The entry of one key in its Secret, as an event's related object: every key's events
/// are distinct, and the reference says where the key lives.
fn key_reference(signing_key: &SigningKey, kid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: signing_key.metadata.namespace.clone(),
        name: Some(signing_key.secret_name()),
        field_path: Some(format!("data[{}]", crate::keys::store::pem_file(kid))),
        ..ObjectReference::default()
    }
}
