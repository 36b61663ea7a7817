//! The SigningKey controller: keys in a Secret (the source of truth), the public JWKS in a
//! ConfigMap, status and Events. Writes only while this replica holds the lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::conditions::{self, reason};
use crate::api::{ObjectKey, SigningKey, SigningKeyStatus, Validate, condition};
use crate::clock::Clock;
use crate::driver::{
    self,
    keys::{KeyEvents, KeyStepError, Said},
};
use crate::issuer_claims::{IssuerScope, Publication};
use crate::keys::store::StoreError;
use crate::registry::Registry;

pub use super::error::{Error, ErrorKind};
use super::instance::INSTANCE_LABEL;
pub use super::secret_store::{NotItsSecret, check_owner};
pub use super::secret_store::{RECREATED_AT_ANNOTATION, SECRET_TYPE, secret_data};
use super::secret_store::{SECRET_RECREATED_SHOWN_FOR, SecretError, SecretStore};
pub use super::writer::MANAGER;
use super::writer::{ConfigMapWrite, LeaderWriter};

pub const MANAGED_BY: (&str, &str) = crate::attach::MANAGED_BY;
pub const SIGNING_KEY_LABEL: &str = "authplane.io/signing-key";
/// How often a SigningKey that cannot make progress is looked at again.
const STUCK_RETRY: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Context {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub external_url: String,
    pub clock: Arc<dyn Clock>,
    /// Every write goes through it.
    pub writer: LeaderWriter,
    /// What is read: the watch caches of the Secrets and JWKS ConfigMaps authplane
    /// manages. Nothing is read from the apiserver per reconcile.
    pub caches: OwnedCaches,
    /// Where issuers may be published and which SigningKey serves each path (the
    /// serving index's snapshot), for the status; `None`: not reported.
    issuer_claims: Option<(Arc<IssuerScope>, Arc<Registry>)>,
    /// Consecutive failures per SigningKey, for the backoff.
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// Secrets that exist though the cache does not hold them (see [`SecretStore`]).
    unseen: Mutex<HashSet<ObjectKey>>,
}

/// The watch caches of what SigningKeys own.
#[derive(Clone)]
pub struct OwnedCaches {
    pub secrets: Store<Secret>,
    pub config_maps: Store<ConfigMap>,
}

impl Context {
    pub fn new(
        metrics: Arc<crate::metrics::Metrics>,
        external_url: String,
        clock: Arc<dyn Clock>,
        writer: LeaderWriter,
        caches: OwnedCaches,
    ) -> Self {
        Self {
            metrics,
            external_url,
            clock,
            writer,
            caches,
            issuer_claims: None,
            failures: Mutex::default(),
            unseen: Mutex::default(),
        }
    }

    /// Reports in status (and Events) whether each SigningKey's issuer is served, as
    /// `scope` places it and the serving index in `registry` resolves its path.
    pub fn with_issuer_claims(mut self, scope: Arc<IssuerScope>, registry: Arc<Registry>) -> Self {
        self.issuer_claims = Some((scope, registry));
        self
    }

    /// How `key`'s issuer is published, if this context reports it.
    fn publication(&self, id: &ObjectKey, key: &SigningKey) -> Option<Publication> {
        let (scope, registry) = self.issuer_claims.as_ref()?;
        let placement = scope.place(&id.namespace, &key.issuer(scope.external_url()));
        Some(Publication::of(id, placement, &registry.load().path_owners))
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
                kind: e.kind().label(),
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

    let secret_name = key.secret_name();
    let store = SecretStore {
        cache: &ctx.caches.secrets,
        writer: &ctx.writer,
        unseen: &ctx.unseen,
        now,
    };
    let step =
        driver::keys::bring_up_to_date(&store, ctx, &ctx.metrics, &id, key, &ctx.external_url, now)
            .await;
    let (outcome, loaded) = match step {
        Ok(done) => done,
        Err(
            KeyStepError::Load(SecretError::NotItsOwn(not_its))
            | KeyStepError::Save(SecretError::NotItsOwn(not_its)),
        ) => {
            not_its_secret(key, ctx, &secret_name, &not_its).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Err(
            KeyStepError::Load(SecretError::Unreadable(e))
            | KeyStepError::Save(SecretError::Unreadable(e))
            | KeyStepError::Unreadable(e),
        ) => {
            unreadable(key, ctx, &secret_name, &e).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Err(KeyStepError::Load(SecretError::Api(e)) | KeyStepError::Save(SecretError::Api(e))) => {
            return Err(e);
        }
        Err(KeyStepError::Key(e)) => return Err(Error::Key(e)),
    };
    let recreated_at = loaded.recreated_at;
    // The keys are stored; signers get the Active one in their own Secret.
    match store.sync_signer(&id, key, &outcome.data).await {
        Ok(()) => {}
        Err(SecretError::NotItsOwn(not_its)) => {
            not_its_secret(key, ctx, &key.signer_secret_name(), &not_its).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Err(SecretError::Unreadable(e)) => {
            unreadable(key, ctx, &key.signer_secret_name(), &e).await?;
            return Ok(Action::requeue(STUCK_RETRY));
        }
        Err(SecretError::Api(e)) => return Err(e),
    }

    let published = outcome.published(&id.namespace, &id.name);
    apply_jwks_config_map(
        key,
        ctx,
        std::str::from_utf8(&published.jwks).unwrap_or("{}"),
    )
    .await?;
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
    if let Some(publication) = ctx.publication(&id, key) {
        report_publication(key, ctx, &publication, &mut status).await;
    }
    patch_status(key, ctx, &status).await?;

    let wait = next_wakeup
        .map(|t| std::time::Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .unwrap_or(STUCK_RETRY);
    Ok(Action::requeue(wait.max(Duration::from_millis(100))))
}

/// Says in status whether the issuer is served: an issuer path another SigningKey
/// claimed first, or one the namespace may not claim, makes `Ready` False (the keys still
/// sign); the first time, an Event says so on this SigningKey and, for a conflict, on the
/// one that keeps the path. An issuer published elsewhere has no `jwksUri` here.
async fn report_publication(
    key: &SigningKey,
    ctx: &Context,
    publication: &Publication,
    status: &mut SigningKeyStatus,
) {
    let id = id_of(key);
    let (reason, message) = match publication {
        Publication::Served { .. } => return,
        Publication::Elsewhere => {
            status.jwks_uri = None;
            if let Some(ready) = status
                .conditions
                .iter_mut()
                .find(|c| c.type_ == conditions::READY)
            {
                ready.message.push_str(
                    "; its issuer is on another host: published elsewhere, authplane serves no discovery or JWKS for it",
                );
            }
            return;
        }
        Publication::Conflict { path, owner } => (
            reason::ISSUER_PATH_CONFLICT,
            match owner {
                Some(owner) => format!(
                    "issuer path {path:?} is served for SigningKey {owner}, which claimed it first; nothing is served there for this one (its keys still sign, and policies naming it still verify): choose another spec.issuer"
                ),
                None => format!(
                    "issuer path {path:?} is claimed by other SigningKeys since the same instant: it is served for none of them; choose another spec.issuer"
                ),
            },
        ),
        Publication::NotAllowed(why) => (
            reason::ISSUER_NOT_ALLOWED,
            format!(
                "its issuer is not served: {why} (its keys still sign, and policies naming it still verify)"
            ),
        ),
    };
    status.jwks_uri = None;
    let generation = key.metadata.generation;
    let new = condition(
        conditions::READY,
        false,
        reason,
        message.clone(),
        generation,
        ctx.clock.now(),
    );
    let known = key
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY))
        .is_some_and(|c| {
            c.status == new.status && c.reason == new.reason && c.message == new.message
        });
    status.conditions.retain(|c| c.type_ != conditions::READY);
    status.conditions.insert(0, new);
    if known {
        return;
    }
    publish(ctx, key, EventType::Warning, reason, &message, None).await;
    if let Publication::Conflict {
        path,
        owner: Some(owner),
    } = publication
    {
        let note = format!(
            "SigningKey {id} also claims issuer path {path:?}; it stays with this SigningKey, which claimed it first"
        );
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: Some(key.object_ref(&())),
        };
        let regarding = ObjectReference {
            api_version: Some(SigningKey::api_version(&()).into_owned()),
            kind: Some(SigningKey::kind(&()).into_owned()),
            namespace: Some(owner.namespace.clone()),
            name: Some(owner.name.clone()),
            ..ObjectReference::default()
        };
        ctx.writer.event(&event, &regarding).await;
    }
}

/// `Ready=False` for a Secret that is not this SigningKey's; nothing is written to it.
async fn not_its_secret(
    key: &SigningKey,
    ctx: &Context,
    secret: &str,
    not_its: &NotItsSecret,
) -> Result<(), Error> {
    let (reason, message) = match not_its {
        NotItsSecret::NotManaged => (
            reason::SECRET_NOT_MANAGED,
            format!(
                "Secret {secret} exists and is not this authplane instance's to manage (it needs the label {}={}, and {INSTANCE_LABEL}={} unless that is the default); it is left alone: choose another spec.secretName or delete it",
                MANAGED_BY.0,
                MANAGED_BY.1,
                ctx.writer.instance()
            ),
        ),
        NotItsSecret::OtherInstance { instance } => (
            reason::SECRET_NOT_MANAGED,
            format!(
                "Secret {secret} belongs to authplane instance {instance:?}, not to this one ({}); it is left alone: choose another spec.secretName",
                ctx.writer.instance()
            ),
        ),
        NotItsSecret::Another { owner } => (
            reason::SECRET_IN_USE,
            format!(
                "Secret {secret} belongs to {owner}; it is never read or written for this SigningKey: choose another spec.secretName"
            ),
        ),
    };
    not_ready(key, ctx, reason, &message).await
}

fn earliest(a: Option<jiff::Timestamp>, b: jiff::Timestamp) -> Option<jiff::Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Metadata of an object the SigningKey owns: labelled as ours, deleted with it.
pub(super) fn owned_metadata(key: &SigningKey, name: &str) -> ObjectMeta {
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

/// Applies the JWKS ConfigMap where the apiserver does not hold it already. One that
/// belongs to another instance, or is not this SigningKey's (a ConfigMap of the
/// namespace that happens to bear the name), is left alone.
async fn apply_jwks_config_map(key: &SigningKey, ctx: &Context, jwks: &str) -> Result<(), Error> {
    let name = format!("{}-jwks", key.name_any());
    let namespace = key.namespace().unwrap_or_default();
    let cached = ctx
        .caches
        .config_maps
        .get(&ObjectRef::new(&name).within(&namespace));
    if let Some(theirs) = cached
        .as_deref()
        .filter(|c| !ctx.writer.instance().owns(&c.metadata))
    {
        tracing::warn!(
            config_map = %ObjectKey::of(&theirs.metadata),
            instance = %ctx.writer.instance(),
            "belongs to another authplane instance: not written"
        );
        return Ok(());
    }
    let config_map = ConfigMap {
        metadata: owned_metadata(key, &name),
        data: Some(BTreeMap::from([("jwks.json".to_owned(), jwks.to_owned())])),
        ..ConfigMap::default()
    };
    let listed = ctx
        .caches
        .config_maps
        .wait_until_ready()
        .now_or_never()
        .is_some();
    let written = ctx
        .writer
        .apply_config_map(&config_map, cached.as_deref(), listed)
        .await?;
    if written == ConfigMapWrite::NotOurs {
        tracing::warn!(
            config_map = %ObjectKey::of(&config_map.metadata),
            signing_key = %ObjectKey::of(&key.metadata),
            "a ConfigMap of that name exists and is not this SigningKey's: the JWKS is not written there"
        );
    }
    Ok(())
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
    let id = id_of(key);
    ctx.metrics.key_not_ready(&id.namespace, &id.name);
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

/// Key events become Kubernetes Events on the SigningKey, each naming its key.
impl KeyEvents for Context {
    async fn key_event(&self, key: &SigningKey, said: &Said) {
        let type_ = if said.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            self,
            key,
            type_,
            said.reason,
            &said.message,
            Some(key_reference(key, &said.kid)),
        )
        .await;
    }
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
