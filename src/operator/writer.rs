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
//! Not gated, on purpose: the Lease itself, `/revoke` creating a Revocation (any
//! replica that receives one writes it), and the self-bootstrapped TLS Secret and the
//! webhook's `caBundle` (each replica needs a certificate before any of them leads).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::object::HasStatus;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;

use super::error::Error;
use super::status::{Conditions, unchanged};

/// The field manager of every server-side apply.
pub const MANAGER: &str = "authplane";

/// Writes to the API server, only while this replica holds the lease.
#[derive(Clone)]
pub struct LeaderWriter {
    client: Client,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
}

/// What a delete found.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// Gone already, or changed since it was judged (a failed precondition).
    NotAsJudged,
}

impl LeaderWriter {
    /// `leader` is the lease's verdict; `instance` names this replica in Events.
    pub fn new(client: Client, leader: watch::Receiver<bool>, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            leader,
            recorder,
        }
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

    /// Applies `status` with server-side apply, unless it is what the object already
    /// says (see [`unchanged`]). Returns whether it wrote.
    pub async fn status<K>(&self, object: &K, mut status: K::Status) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + HasStatus
            + Clone
            + Debug
            + DeserializeOwned,
        K::Status: Conditions + PartialEq + Serialize,
    {
        if unchanged(object, &mut status) {
            return Ok(false);
        }
        self.gate()?;
        let api: Api<K> =
            Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &object.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        Ok(true)
    }

    /// Creates a Secret; a concurrent creator makes this a 409.
    pub async fn create_secret(&self, namespace: &str, secret: &Secret) -> Result<(), Error> {
        self.gate()?;
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), secret)
            .await?;
        Ok(())
    }

    /// Replaces a Secret at the `resourceVersion` it carries: a concurrent writer makes
    /// this a 409, and the retry starts from a fresh read.
    pub async fn replace_secret(&self, namespace: &str, secret: &Secret) -> Result<(), Error> {
        self.gate()?;
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .replace(&secret.name_any(), &PostParams::default(), secret)
            .await?;
        Ok(())
    }

    /// Server-side applies a ConfigMap.
    pub async fn apply_config_map(&self, config_map: &ConfigMap) -> Result<(), Error> {
        self.gate()?;
        let api: Api<ConfigMap> = Api::namespaced(
            self.client.clone(),
            &config_map.namespace().unwrap_or_default(),
        );
        let mut value = serde_json::to_value(config_map).unwrap_or_default();
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("ConfigMap");
        api.patch(
            &config_map.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(value),
        )
        .await?;
        Ok(())
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
        self.gate()?;
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

    /// Records an Event on `object`. Best effort: a failure is logged, never returned,
    /// and a follower records nothing.
    pub async fn event(&self, event: &Event, object: &ObjectReference) {
        if self.gate().is_err() {
            return;
        }
        if let Err(e) = self.recorder.publish(event, object).await {
            tracing::warn!("cannot record event {}: {e}", event.reason);
        }
    }
}
