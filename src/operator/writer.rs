//! The leader's writes, gated in one place. Every replica reads and serves; only the
//! Lease holder writes Secrets, JWKS ConfigMaps, status, Events and Revocation
//! deletions, and every one of those writes goes through a [`LeaderWriter`], which
//! refuses it (`NotLeader`, nothing sent) once this replica does not hold the lease.
//! The controllers run only while this replica leads; the gate refuses what a
//! reconcile still under way would send after the lease was lost. A request already
//! sent is not recalled: Secrets are written at the resourceVersion read, so a stale one
//! is refused by the apiserver (409); status and ConfigMaps are derived from the Secret
//! and the spec, so the next leader writes the same.
//!
//! Writes are paced (a token bucket, `--kube-api-qps`/`--kube-api-burst`), and each one
//! is compared first with what the apiserver holds, in the form it stores it: the watch
//! caches, or this replica's own last write while the caches have not seen it yet
//! ([`Latest`]). A write that would change nothing is not sent. An object of another
//! authplane instance is never written ([`Instance`]).
//!
//! Not gated, on purpose: the Lease itself, `/revoke` creating a Revocation (any
//! replica that receives one writes it), and the self-bootstrapped TLS Secret and the
//! webhook's `caBundle` (each replica needs a certificate before any of them leads).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::object::HasStatus;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::error::Error;
use super::instance::{self, INSTANCE_LABEL, Instance};
use super::latest::Latest;
use super::signing_keys::{MANAGED_BY, SIGNING_KEY_LABEL};
use super::status::{Conditions, news};
use crate::api::ObjectKey;

/// The field manager of every server-side apply.
pub const MANAGER: &str = "authplane";

/// Writes to the API server, only while this replica holds the lease.
#[derive(Clone)]
pub struct LeaderWriter {
    client: Client,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
    instance: Instance,
    /// Client-side pacing of writes; none in tests.
    pace: Option<Arc<DefaultDirectRateLimiter>>,
    written: Arc<Written>,
}

/// This replica's own writes, until the caches have seen them.
#[derive(Default)]
struct Written {
    /// Each status as written, by kind and object.
    statuses: Latest<Value, (String, ObjectKey)>,
    secrets: Latest<Secret>,
    config_maps: Latest<ConfigMap>,
}

/// How fast the leader may write: a token bucket, as client-go's QPS and burst.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// What a delete found.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// Gone already, or changed since it was judged (a failed precondition).
    NotAsJudged,
}

impl LeaderWriter {
    /// `leader` is the lease's verdict; `identity` names this replica in Events. Writes
    /// as the default instance, unpaced, until told otherwise.
    pub fn new(client: Client, leader: watch::Receiver<bool>, identity: Option<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: identity,
            },
        );
        Self {
            client,
            leader,
            recorder,
            instance: Instance::default(),
            pace: None,
            written: Arc::default(),
        }
    }

    /// Writes as `instance`: objects of other instances are left alone.
    pub fn for_instance(mut self, instance: Instance) -> Self {
        self.instance = instance;
        self
    }

    /// Paces writes at `pace`.
    pub fn paced(mut self, pace: Pace) -> Self {
        let quota = Quota::per_second(pace.per_second).allow_burst(pace.burst);
        self.pace = Some(Arc::new(RateLimiter::direct(quota)));
        self
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Whether this replica holds the lease now.
    pub fn leads(&self) -> bool {
        *self.leader.borrow()
    }

    fn gate(&self) -> Result<(), Error> {
        if self.leads() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Waits for the pace, then checks the lease again: it may have been lost meanwhile.
    async fn admit(&self) -> Result<(), Error> {
        self.gate()?;
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
            self.gate()?;
        }
        Ok(())
    }

    /// Forgets this replica's own writes: a new leadership term starts from caches
    /// listed afresh.
    pub fn forget_writes(&self) {
        self.written.statuses.clear();
        self.written.secrets.clear();
        self.written.config_maps.clear();
    }

    /// Forgets the writes the caches have caught up with (see [`Latest::forget_seen`]).
    /// `cached_version` answers for an object of a kind: the cache's `resourceVersion`,
    /// or `None` when the cache does not hold it.
    pub fn forget_seen_writes(&self, cached_version: impl Fn(&str, &ObjectKey) -> Option<String>) {
        self.written
            .statuses
            .forget_seen(|(kind, id)| cached_version(kind, id));
        self.written
            .secrets
            .forget_seen(|id| cached_version(<Secret as k8s_openapi::Resource>::KIND, id));
        self.written
            .config_maps
            .forget_seen(|id| cached_version(<ConfigMap as k8s_openapi::Resource>::KIND, id));
    }

    /// How many of this replica's writes the caches have not caught up with yet.
    pub fn writes_ahead_of_caches(&self) -> usize {
        self.written.statuses.len() + self.written.secrets.len() + self.written.config_maps.len()
    }

    /// Applies `status` with server-side apply, unless it is what the apiserver holds
    /// (the object's, or this replica's last write of it if the object is older; see
    /// [`news`]), or the object belongs to another instance. Returns whether it wrote.
    pub async fn status<K>(&self, object: &K, status: K::Status) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + HasStatus
            + Clone
            + Debug
            + DeserializeOwned,
        K::Status: Conditions + PartialEq + Serialize + DeserializeOwned,
    {
        if !self.instance.owns(object.meta()) {
            return Ok(false);
        }
        let id = (K::kind(&()).into_owned(), ObjectKey::of(object.meta()));
        let remembered: Option<K::Status> = self
            .written
            .statuses
            .newer_than_cache(&id, object.meta().resource_version.as_deref())
            .and_then(|value| serde_json::from_value(value).ok());
        let Some(status) = news(remembered.as_ref().or(object.status()), status) else {
            return Ok(false);
        };
        self.admit().await?;
        let api: Api<K> =
            Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let written = api
            .patch_status(
                &object.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        if let Some(stored) = written.status() {
            let version = written.meta().resource_version.clone();
            let stored = serde_json::to_value(stored).unwrap_or_default();
            self.written.statuses.wrote(id, version, stored);
        }
        Ok(true)
    }

    /// The Secret as the apiserver holds it: `cached` from the watch cache, or this
    /// replica's last write of it if the cache has not seen that yet.
    pub fn secret(&self, id: &ObjectKey, cached: Option<&Secret>) -> Option<Secret> {
        let version = cached.and_then(|s| s.metadata.resource_version.as_deref());
        self.written
            .secrets
            .newer_than_cache(id, version)
            .or_else(|| cached.cloned())
    }

    /// Creates a Secret, labelled as this instance's; a concurrent creator makes this a
    /// 409.
    pub async fn create_secret(&self, namespace: &str, secret: &Secret) -> Result<(), Error> {
        self.admit().await?;
        let mut secret = secret.clone();
        self.label(&mut secret.metadata);
        let created = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        self.remember_secret(created);
        Ok(())
    }

    /// Replaces a Secret at the `resourceVersion` it carries: a concurrent writer makes
    /// this a 409, and the retry starts from the cache.
    pub async fn replace_secret(&self, namespace: &str, secret: &Secret) -> Result<(), Error> {
        self.admit().await?;
        let mut secret = secret.clone();
        self.label(&mut secret.metadata);
        let id = ObjectKey::of(&secret.metadata);
        match Api::<Secret>::namespaced(self.client.clone(), namespace)
            .replace(&secret.name_any(), &PostParams::default(), &secret)
            .await
        {
            Ok(replaced) => {
                self.remember_secret(replaced);
                Ok(())
            }
            Err(e) => {
                self.written.secrets.forget(&id);
                Err(e.into())
            }
        }
    }

    fn remember_secret(&self, secret: Secret) {
        let id = ObjectKey::of(&secret.metadata);
        let version = secret.metadata.resource_version.clone();
        // Kept in the form the cache holds: managedFields are most of a small object.
        self.written
            .secrets
            .wrote(id, version, instance::trimmed(secret));
    }

    /// Server-side applies a ConfigMap labelled as this instance's, unless the apiserver
    /// holds it already (`cached` from the watch cache, or this replica's last write):
    /// the same data, and the labels and owner asked for.
    ///
    /// Never over a ConfigMap that is not the one asked for ([`belongs`]). The watch
    /// holds only the ConfigMaps authplane manages, so one it does not hold is created,
    /// not applied: an apply would merge our data, labels and controlling owner into
    /// anyone's ConfigMap of that name (and the garbage collector would then delete it
    /// with the SigningKey). A create refused with 409 reads what is there.
    ///
    /// `listed`: whether the watch has listed the ConfigMaps yet. Before it has (a
    /// reconcile at the very start of a term), one it does not hold is read first rather
    /// than created: it most likely exists, and a create refused with 409 is still a
    /// write to the apiserver.
    pub async fn apply_config_map(
        &self,
        config_map: &ConfigMap,
        cached: Option<&ConfigMap>,
        listed: bool,
    ) -> Result<ConfigMapWrite, Error> {
        let id = ObjectKey::of(&config_map.metadata);
        let version = cached.and_then(|c| c.metadata.resource_version.as_deref());
        let remembered = self.written.config_maps.newer_than_cache(&id, version);
        let mut config_map = config_map.clone();
        self.label(&mut config_map.metadata);
        let api: Api<ConfigMap> = Api::namespaced(
            self.client.clone(),
            &config_map.namespace().unwrap_or_default(),
        );
        let read;
        let mut held = remembered.as_ref().or(cached);
        if held.is_none() && !listed {
            read = api.get_opt(&config_map.name_any()).await?;
            held = read.as_ref();
        }
        if let Some(held) = held {
            if !belongs(held, &config_map) {
                return Ok(ConfigMapWrite::NotOurs);
            }
            if holds(held, &config_map) {
                return Ok(ConfigMapWrite::Held);
            }
        }
        self.admit().await?;
        if held.is_none() {
            match api.create(&PostParams::default(), &config_map).await {
                Ok(created) => {
                    let version = created.metadata.resource_version.clone();
                    self.written
                        .config_maps
                        .wrote(id, version, instance::trimmed(created));
                    return Ok(ConfigMapWrite::Written);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    let existing = api.get(&config_map.name_any()).await?;
                    if !belongs(&existing, &config_map) {
                        return Ok(ConfigMapWrite::NotOurs);
                    }
                    if holds(&existing, &config_map) {
                        return Ok(ConfigMapWrite::Held);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut value = serde_json::to_value(&config_map).unwrap_or_default();
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("ConfigMap");
        let applied = api
            .patch(
                &config_map.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(value),
            )
            .await?;
        let version = applied.metadata.resource_version.clone();
        self.written
            .config_maps
            .wrote(id, version, instance::trimmed(applied));
        Ok(ConfigMapWrite::Written)
    }

    /// Labels an object this instance writes as its own.
    fn label(&self, meta: &mut kube::api::ObjectMeta) {
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(INSTANCE_LABEL.to_owned(), self.instance.name().to_owned());
    }

    /// Deletes a namespaced object, with `params`' preconditions.
    pub async fn delete<K>(
        &self,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<Deleted, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        self.admit().await?;
        match Api::<K>::namespaced(self.client.clone(), namespace)
            .delete(name, params)
            .await
        {
            Ok(_) => Ok(Deleted::Deleted),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                Ok(Deleted::NotAsJudged)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Server-side applies `object` (a whole object of `resource`, as JSON) under the
    /// field manager `authplane`. The caller has judged it ours (see
    /// [`super::attachments`]): force takes over fields another manager set on it.
    pub async fn apply_object(&self, resource: &ApiResource, object: &Value) -> Result<(), Error> {
        self.admit().await?;
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, resource)
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(object),
            )
            .await?;
        Ok(())
    }

    /// Merge-patches (RFC 7386) the object of `resource` `namespace`/`name` under the
    /// field manager `authplane`: a `null` removes a field, whoever set it, which a
    /// server-side apply cannot do to fields of an Update (kubernetes#99003). `patch`
    /// carries `metadata.uid`, so that an object recreated meanwhile is refused.
    pub async fn merge_patch_object(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), Error> {
        self.admit().await?;
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, resource)
            .patch(name, &params, &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Creates `object`: one that does not exist yet is created, never applied, so that
    /// an object of that name the caches did not show is refused (409), never merged
    /// into. Returns whether it was created.
    pub async fn create_object(
        &self,
        resource: &ApiResource,
        object: &Value,
    ) -> Result<bool, Error> {
        self.admit().await?;
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let dynamic: DynamicObject = serde_json::from_value(object.clone())
            .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..PostParams::default()
        };
        match Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, resource)
            .create(&params, &dynamic)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object of `resource` `namespace`/`name` if it is still the one of
    /// `uid` (a precondition: one recreated meanwhile by someone else is left alone).
    pub async fn delete_object(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Deleted, Error> {
        self.admit().await?;
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, resource)
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(Deleted::Deleted),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                Ok(Deleted::NotAsJudged)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records an Event on `object`. Best effort: a failure is logged, never returned,
    /// and a follower records nothing.
    pub async fn event(&self, event: &Event, object: &ObjectReference) {
        if self.admit().await.is_err() {
            return;
        }
        if let Err(e) = self.recorder.publish(event, object).await {
            tracing::warn!(reason = %event.reason, "cannot record event: {e}");
        }
    }
}

/// What [`LeaderWriter::apply_config_map`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigMapWrite {
    Written,
    /// The apiserver holds it already.
    Held,
    /// A ConfigMap of that name is someone else's: left alone.
    NotOurs,
}

/// Whether `existing` is the ConfigMap `wanted` stands for, so that writing it takes
/// nothing from anyone: labelled as managed by authplane for the same SigningKey as
/// `wanted`, and controlled, if at all, by the same object (its uid: a SigningKey deleted
/// and created again is another object, whose ConfigMap the garbage collector is about
/// to delete).
fn belongs(existing: &ConfigMap, wanted: &ConfigMap) -> bool {
    let label = |map: &ConfigMap, name: &str| {
        map.metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(name))
            .cloned()
    };
    let controller = |map: &ConfigMap| {
        map.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    };
    [MANAGED_BY.0, SIGNING_KEY_LABEL]
        .iter()
        .all(|name| label(existing, name).is_some() && label(existing, name) == label(wanted, name))
        && controller(existing).is_none_or(|uid| controller(wanted) == Some(uid))
}

/// Whether `held` already is `wanted`: the same data, and every label and owner asked
/// for (others may add theirs).
fn holds(held: &ConfigMap, wanted: &ConfigMap) -> bool {
    let labels_held = held.metadata.labels.clone().unwrap_or_default();
    let labels = wanted.metadata.labels.iter().flatten();
    let owners_held = held
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    let same_owner = |o: &OwnerReference, h: &OwnerReference| {
        (&o.uid, &o.kind, &o.name, o.controller) == (&h.uid, &h.kind, &h.name, h.controller)
    };
    held.data == wanted.data
        && held.binary_data == wanted.binary_data
        && labels
            .into_iter()
            .all(|(k, v)| labels_held.get(k) == Some(v))
        && wanted
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| owners_held.iter().any(|h| same_owner(o, h)))
}
