//! SigningKey keys in a Secret: the operator's [`KeyStore`]. The Secret is the source of
//! truth; it is read from the watch cache of the Secrets authplane manages (no request
//! per reconcile), and written with optimistic concurrency, through the leader's writer.
//!
//! A Secret is read or written for a SigningKey only when it is that SigningKey's
//! ([`check_owner`]) and this instance's: naming another's Secret in `spec.secretName`
//! must not load its private keys, rewrite them, put another owner on them (the garbage
//! collector would then delete them with it) or revoke their kids. The signer Secret
//! (`<secretName>-active`, [`SecretStore::sync_signer`]) holds the Active key alone, for
//! workloads that sign.

use std::collections::HashSet;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::error::Error;
use super::signing_keys::{MANAGED_BY, SIGNING_KEY_LABEL, owned_metadata};
use super::writer::LeaderWriter;
use crate::api::conditions::reason;
use crate::api::{ObjectKey, SigningKey};
use crate::driver::keys::{KeyStore, Stored};
use crate::keys::store::{Data, StoreError};

pub const SECRET_TYPE: &str = "authplane.io/signing-keys";
/// On the Secret: when it was recreated after a deletion by hand.
pub const RECREATED_AT_ANNOTATION: &str = "authplane.io/recreated-at";
/// How long the condition that reports a Secret deleted by hand stays.
pub const SECRET_RECREATED_SHOWN_FOR: SignedDuration = SignedDuration::from_hours(24);

/// One reconcile's view of the Secrets: reads from the watch cache (and the leader's own
/// writes the cache has not seen yet), writes through the lease.
pub struct SecretStore<'a> {
    pub cache: &'a Store<Secret>,
    pub writer: &'a LeaderWriter,
    /// Secrets found to exist, by a create refused with 409, though the cache does not
    /// hold them.
    pub unseen: &'a Mutex<HashSet<ObjectKey>>,
    pub now: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A Secret of that name exists, and is not this SigningKey's (or not this
    /// instance's): it is left alone.
    #[error(transparent)]
    NotItsOwn(#[from] NotItsSecret),
    #[error("the Secret is unreadable: {0}")]
    Unreadable(StoreError),
    #[error(transparent)]
    Api(#[from] Error),
}

/// What a save needs from the load: the Secret as it was (its resourceVersion), and when
/// it was recreated after a deletion by hand, if that is recent.
pub struct SecretVersion {
    existing: Option<Secret>,
    pub recreated_at: Option<Timestamp>,
    /// The Secret is gone though keys existed: said once a new one is written.
    deleted_by_hand: bool,
}

impl KeyStore for SecretStore<'_> {
    type Error = SecretError;
    type Version = SecretVersion;

    async fn load(
        &self,
        id: &ObjectKey,
        key: &SigningKey,
    ) -> Result<Stored<SecretVersion>, SecretError> {
        let secret_name = key.secret_name();
        let secret_id = ObjectKey {
            namespace: id.namespace.clone(),
            name: secret_name.clone(),
        };
        let cached = self
            .cache
            .get(&ObjectRef::new(&secret_name).within(&id.namespace));
        let secret = self.writer.secret(&secret_id, cached.as_deref());
        // Keys existed (status says so) and their Secret is gone: someone deleted it.
        let deleted_by_hand =
            secret.is_none() && key.status.as_ref().is_some_and(|s| s.active_kid.is_some());
        // When the Secret was last recreated after such a deletion: kept in the Secret
        // (the source of truth), not in status, which the next reconcile may read from a
        // cache that has not seen the condition yet.
        let recreated_at = if deleted_by_hand {
            Some(self.now)
        } else {
            secret
                .as_ref()
                .and_then(|s| s.annotations().get(RECREATED_AT_ANNOTATION))
                .and_then(|t| t.parse::<Timestamp>().ok())
        }
        .filter(|at| *at + SECRET_RECREATED_SHOWN_FOR > self.now);
        let data = match &secret {
            Some(secret) => {
                self.check(secret, key)?;
                Some(secret_data(secret).map_err(SecretError::Unreadable)?)
            }
            None => None,
        };
        Ok(Stored {
            data,
            restore: false,
            version: SecretVersion {
                existing: secret,
                recreated_at,
                deleted_by_hand,
            },
        })
    }

    async fn save(
        &self,
        id: &ObjectKey,
        key: &SigningKey,
        data: &Data,
        loaded: &Stored<SecretVersion>,
    ) -> Result<(), SecretError> {
        let mut desired = build_secret(key, &key.secret_name(), data);
        if let Some(at) = loaded.version.recreated_at {
            desired
                .annotations_mut()
                .insert(RECREATED_AT_ANNOTATION.to_owned(), at.to_string());
        }
        let secret_id = ObjectKey::of(&desired.metadata);
        match &loaded.version.existing {
            None => self.create(&id.namespace, &desired).await?,
            Some(existing) => {
                // Optimistic concurrency: a concurrent writer makes this a 409, and the
                // retry starts from a fresh read; two Active keys can never both land.
                desired.metadata.resource_version = existing.metadata.resource_version.clone();
                self.writer.replace_secret(&id.namespace, &desired).await?;
            }
        }
        self.unseen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&secret_id);
        if loaded.version.deleted_by_hand {
            // Said once the new keys are stored: a Secret that is merely not ours (no
            // label) looks deleted from the cache too, and is refused by the create.
            let note = format!(
                "Secret {} was deleted; new keys are generated and tokens signed by the old ones no longer verify",
                key.secret_name()
            );
            let event = Event {
                type_: EventType::Warning,
                reason: reason::SECRET_DELETED.to_owned(),
                note: Some(note),
                action: "Reconcile".to_owned(),
                secondary: None,
            };
            self.writer.event(&event, &key.object_ref(&())).await;
        }
        Ok(())
    }
}

impl SecretStore<'_> {
    /// Whether the Secret may hold `key`'s keys here: it is that SigningKey's
    /// ([`check_owner`]) and this instance's to write.
    fn check(&self, secret: &Secret, key: &SigningKey) -> Result<(), NotItsSecret> {
        check_owner(secret, key)?;
        if !self.writer.instance().owns(&secret.metadata) {
            return Err(NotItsSecret::OtherInstance {
                instance: super::instance::instance_of(&secret.metadata).to_owned(),
            });
        }
        Ok(())
    }

    /// Creates a Secret the cache does not hold. A 409 means it exists all the same: not
    /// ours (no managed-by label, or another instance's), or created a moment ago and
    /// the cache is behind. Retried at once the first time; the second time running, it
    /// is reported as not ours.
    async fn create(&self, namespace: &str, desired: &Secret) -> Result<(), SecretError> {
        let secret_id = ObjectKey::of(&desired.metadata);
        match self.writer.create_secret(namespace, desired).await {
            Ok(()) => Ok(()),
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 => {
                let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
                if !unseen.insert(secret_id) {
                    return Err(NotItsSecret::NotManaged.into());
                }
                Err(Error::Kube(kube::Error::Api(status)).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Brings the signer Secret (`<secretName>-active`) in step with `data`, the key
    /// Secret just stored: the Active key alone, under the names a signer reads. Read from
    /// the cache like the key Secret; written only when it differs, and never over a
    /// Secret that is not this SigningKey's.
    pub async fn sync_signer(
        &self,
        id: &ObjectKey,
        key: &SigningKey,
        data: &Data,
    ) -> Result<(), SecretError> {
        let signer = crate::keys::store::signer_data(data);
        if signer.is_empty() {
            return Ok(());
        }
        let name = key.signer_secret_name();
        let signer_id = ObjectKey {
            namespace: id.namespace.clone(),
            name: name.clone(),
        };
        let cached = self.cache.get(&ObjectRef::new(&name).within(&id.namespace));
        let existing = self.writer.secret(&signer_id, cached.as_deref());
        let mut desired = build_secret(key, &name, &signer);
        match existing {
            None => self.create(&id.namespace, &desired).await?,
            Some(existing) => {
                self.check(&existing, key)?;
                let current = secret_data(&existing).ok();
                // `check` passed: any controller is this SigningKey; one restored
                // without owner is adopted.
                let owned = existing
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true));
                if current.as_ref() == Some(&signer) && owned {
                    return Ok(());
                }
                desired.metadata.resource_version = existing.metadata.resource_version.clone();
                self.writer.replace_secret(&id.namespace, &desired).await?;
            }
        }
        self.unseen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&signer_id);
        Ok(())
    }
}

/// Why a Secret may not hold a SigningKey's keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotItsSecret {
    /// It lacks the label `app.kubernetes.io/managed-by=authplane`.
    #[error("the Secret exists and is not managed by authplane")]
    NotManaged,
    /// It is managed by authplane for something else: another SigningKey (its
    /// `authplane.io/signing-key` label or its controlling owner says so), or no
    /// SigningKey at all (authplane's own TLS Secret).
    #[error("the Secret belongs to {owner}")]
    Another { owner: String },
    /// It is another authplane installation's (its `authplane.io/instance` label).
    #[error("the Secret belongs to authplane instance {instance:?}")]
    OtherInstance { instance: String },
}

/// Whether `secret` may hold the keys of `key`, from the Secret alone (so that one read
/// from a watch cache is checked the same way): it is managed by authplane, its
/// `authplane.io/signing-key` label names this SigningKey, and any controlling owner is
/// this SigningKey (its uid: one deleted and created again under the same name is another
/// object, whose Secret the garbage collector is about to delete). The label and owner
/// are what authplane writes on every Secret it creates.
pub fn check_owner(secret: &Secret, key: &SigningKey) -> Result<(), NotItsSecret> {
    let labels = secret.labels();
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        return Err(NotItsSecret::NotManaged);
    }
    let namespace = key.namespace().unwrap_or_default();
    let name = key.name_any();
    match labels.get(SIGNING_KEY_LABEL) {
        None => {
            return Err(NotItsSecret::Another {
                owner: format!("no SigningKey (it has no {SIGNING_KEY_LABEL} label)"),
            });
        }
        Some(label) if *label != name => {
            return Err(NotItsSecret::Another {
                owner: format!("SigningKey {namespace}/{label}"),
            });
        }
        Some(_) => {}
    }
    let controller = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(controller) = controller {
        let ours = controller.kind == SigningKey::kind(&())
            && controller.name == name
            && key
                .meta()
                .uid
                .as_ref()
                .is_none_or(|uid| *uid == controller.uid);
        if !ours {
            return Err(NotItsSecret::Another {
                owner: format!(
                    "{} {namespace}/{} (uid {})",
                    controller.kind, controller.name, controller.uid
                ),
            });
        }
    }
    Ok(())
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
