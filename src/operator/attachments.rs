//! Policy attachment on a cluster: the leader writes the gateway objects an AuthPolicy's
//! Gateway API targets need (Envoy Gateway's `SecurityPolicy`, kgateway's
//! `GatewayExtension` and `TrafficPolicy`, the `ReferenceGrant` both need, Traefik's
//! `Middleware`, Istio's `AuthorizationPolicy`), and reports per target whether the
//! attachment took.
//! What to write is decided in the core ([`crate::attach::plan`]); this module reads what
//! the apiserver holds (watches of SecurityPolicies cluster-wide and ReferenceGrants in
//! authplane's namespace) and writes through the [`LeaderWriter`].
//!
//! Ownership: an object is ours when it carries our managed-by and instance labels and,
//! for a SecurityPolicy, its controlling owner is the AuthPolicy (by uid). Only ours is
//! ever applied or deleted; one of the same name that is not ours is reported in the
//! policy's status and left alone. An object authplane does not hold in its cache is
//! created (a POST, refused if the name is taken), never applied, so that it is never
//! merged into someone else's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{StreamExt, stream};
use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;

use super::error::Error;
use super::targets::Change;
use super::watch_failure::WatchFailure;
use super::writer::LeaderWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{
    AncestorStatus, AuthPolicy, AuthPolicyStatus, Mode, ObjectKey, TargetRef, TargetStatus,
    condition,
};
use crate::attach::{
    self, AuthzService, Claim, GRANT_NAMESPACE_LABEL, GatewayTopology, Implementation, MANAGED_BY,
    reason,
};

/// The condition type of each Gateway API target.
const ACCEPTED: &str = "Accepted";

/// The chart's gRPC port (`--grpc-listen`), as the README's Envoy recipes use it.
pub const DEFAULT_GRPC_PORT: u16 = 9191;

/// What the operator is told about attachment (flags, set by the chart).
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// The implementations this installation writes for (and has the RBAC of).
    pub enabled: Vec<Implementation>,
    /// authplane's Service, as gateways reach it.
    pub service: AuthzService,
    /// Istio's mesh config, a ConfigMap (namespace, name) whose `mesh` key is read to
    /// check each policy's extension provider; `None`: not checked.
    pub istio_mesh_config: Option<ObjectKey>,
}

impl Default for AttachConfig {
    /// Nothing written; the chart's Service.
    fn default() -> Self {
        Self {
            enabled: Vec::new(),
            service: AuthzService {
                namespace: "authplane".into(),
                name: "authplane".into(),
                port: 8080,
                grpc_port: DEFAULT_GRPC_PORT,
                protocol: attach::Protocol::Http,
            },
            istio_mesh_config: None,
        }
    }
}

/// An object as kept from a watch: who it belongs to and what it says.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    uid: String,
    created: Option<Timestamp>,
    /// Labelled as managed by this instance.
    labelled: bool,
    /// The uid of its controlling owner.
    controller: Option<String>,
    /// Its targets (kind, name), from `targetRefs` (and a SecurityPolicy's deprecated
    /// `targetRef`).
    targets: Vec<(String, String)>,
    /// Whether it configures external auth: an AuthorizationPolicy's `action: CUSTOM`,
    /// a TrafficPolicy's `extAuth` (to use an extension or to disable one).
    external_auth: bool,
    /// For a ReferenceGrant of ours: the namespace it admits.
    admits: Option<String>,
    /// For Istio's mesh config: its `mesh` key.
    mesh: Option<String>,
    /// Ours only: labels, owners and spec, to compare with what we would write.
    object: Option<Value>,
}

#[derive(Default)]
struct Cache {
    objects: HashMap<ObjectKey, Held>,
    relisting: Option<HashMap<ObjectKey, Held>>,
    listed: bool,
    failing: WatchFailure,
}

/// The kinds of gateway objects watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Envoy Gateway's, cluster-wide.
    SecurityPolicies,
    /// In authplane's namespace.
    ReferenceGrants,
    /// Traefik's, cluster-wide.
    Middlewares,
    /// Istio's, cluster-wide.
    AuthorizationPolicies,
    /// Istio's mesh config (one ConfigMap).
    MeshConfig,
    /// kgateway's, cluster-wide.
    GatewayExtensions,
    /// kgateway's, cluster-wide.
    TrafficPolicies,
}

impl Watched {
    fn name(self) -> &'static str {
        match self {
            Watched::SecurityPolicies => "SecurityPolicies",
            Watched::ReferenceGrants => "ReferenceGrants",
            Watched::Middlewares => "Middlewares",
            Watched::AuthorizationPolicies => "AuthorizationPolicies",
            Watched::MeshConfig => "the mesh config",
            Watched::GatewayExtensions => "GatewayExtensions",
            Watched::TrafficPolicies => "TrafficPolicies",
        }
    }
}

/// The attachment state of this leader's term.
pub struct Attachments {
    pub config: AttachConfig,
    pub topology: Arc<Mutex<GatewayTopology>>,
    instance: String,
    default_instance: bool,
    security_policies: Mutex<Cache>,
    grants: Mutex<Cache>,
    middlewares: Mutex<Cache>,
    authorization_policies: Mutex<Cache>,
    mesh_config: Mutex<Cache>,
    gateway_extensions: Mutex<Cache>,
    traffic_policies: Mutex<Cache>,
}

pub fn security_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            attach::ENVOY_GATEWAY_GROUP,
            "v1alpha1",
            attach::SECURITY_POLICY_KIND,
        ),
        "securitypolicies",
    )
}

pub fn middleware_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(attach::TRAEFIK_GROUP, "v1alpha1", attach::MIDDLEWARE_KIND),
        "middlewares",
    )
}

pub fn authorization_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            attach::ISTIO_SECURITY_GROUP,
            "v1",
            attach::AUTHORIZATION_POLICY_KIND,
        ),
        "authorizationpolicies",
    )
}

pub fn gateway_extension_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            attach::KGATEWAY_GROUP,
            "v1alpha1",
            attach::GATEWAY_EXTENSION_KIND,
        ),
        "gatewayextensions",
    )
}

pub fn traffic_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            attach::KGATEWAY_GROUP,
            "v1alpha1",
            attach::TRAFFIC_POLICY_KIND,
        ),
        "trafficpolicies",
    )
}

pub fn reference_grant_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            crate::api::TargetKind::GATEWAY_API_GROUP,
            "v1beta1",
            "ReferenceGrant",
        ),
        "referencegrants",
    )
}

impl Attachments {
    pub fn new(config: AttachConfig, instance: &super::instance::Instance) -> Self {
        Self {
            config,
            topology: Arc::default(),
            instance: instance.name().to_owned(),
            default_instance: instance.is_default(),
            security_policies: Mutex::default(),
            grants: Mutex::default(),
            middlewares: Mutex::default(),
            authorization_policies: Mutex::default(),
            mesh_config: Mutex::default(),
            gateway_extensions: Mutex::default(),
            traffic_policies: Mutex::default(),
        }
    }

    fn istio(&self) -> bool {
        self.config.enabled.contains(&Implementation::Istio)
    }

    fn envoy(&self) -> bool {
        self.config.enabled.contains(&Implementation::EnvoyGateway)
    }

    fn traefik(&self) -> bool {
        self.config.enabled.contains(&Implementation::Traefik)
    }

    fn kgateway(&self) -> bool {
        self.config.enabled.contains(&Implementation::Kgateway)
    }

    /// Whether the namespaces' ReferenceGrants are written (and watched): an enabled
    /// implementation reaches authplane's Service from the policies' namespaces.
    fn grants(&self) -> bool {
        self.envoy() || self.kgateway()
    }

    fn cache(&self, watched: Watched) -> &Mutex<Cache> {
        match watched {
            Watched::SecurityPolicies => &self.security_policies,
            Watched::ReferenceGrants => &self.grants,
            Watched::Middlewares => &self.middlewares,
            Watched::AuthorizationPolicies => &self.authorization_policies,
            Watched::MeshConfig => &self.mesh_config,
            Watched::GatewayExtensions => &self.gateway_extensions,
            Watched::TrafficPolicies => &self.traffic_policies,
        }
    }

    fn writer_labels(&self) -> attach::Writer {
        attach::Writer {
            instance: self.instance.clone(),
            default_instance: self.default_instance,
        }
    }

    /// Forgets everything: a new leadership term lists again.
    pub fn clear(&self) {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self
            .security_policies
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Cache::default();
        *self.grants.lock().unwrap_or_else(|e| e.into_inner()) = Cache::default();
        for cache in [
            &self.middlewares,
            &self.authorization_policies,
            &self.mesh_config,
            &self.gateway_extensions,
            &self.traffic_policies,
        ] {
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = Cache::default();
        }
    }

    fn hold(&self, object: &DynamicObject) -> Held {
        let labels = object.labels();
        let labelled = labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
            && super::instance::instance_of(&object.metadata) == self.instance;
        let targets = object
            .data
            .pointer("/spec/targetRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(object.data.pointer("/spec/targetRef"))
            .filter_map(|t| {
                Some((
                    t.get("kind")?.as_str()?.to_owned(),
                    t.get("name")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        Held {
            uid: object.uid().unwrap_or_default(),
            created: object.creation_timestamp().map(|t| t.0),
            labelled,
            controller: object
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            targets,
            external_auth: object.data.pointer("/spec/action").and_then(Value::as_str)
                == Some("CUSTOM")
                || object.data.pointer("/spec/extAuth").is_some(),
            mesh: object
                .data
                .pointer("/data/mesh")
                .and_then(Value::as_str)
                .map(str::to_owned),
            admits: labels
                .get(GRANT_NAMESPACE_LABEL)
                .filter(|_| labelled)
                .cloned(),
            object: labelled.then(|| {
                serde_json::json!({
                    "metadata": {"labels": labels, "ownerReferences": object.owner_references()},
                    "spec": object.data.get("spec").cloned().unwrap_or_default(),
                })
            }),
        }
    }

    /// Watches the enabled implementations' kinds (cluster-wide) and ReferenceGrants (in
    /// authplane's namespace), and sends the namespaces whose policies' attachments are
    /// stale. A SecurityPolicy or GatewayExtension of ours that went away (the garbage
    /// collector after its AuthPolicy) may leave a ReferenceGrant no policy needs: it is
    /// deleted then.
    pub async fn watch(
        self: Arc<Self>,
        client: Client,
        writer: LeaderWriter,
        policies: Store<DeserializeGuard<AuthPolicy>>,
        changes: mpsc::UnboundedSender<Change>,
    ) {
        let watch = |watched: Watched, api: Api<DynamicObject>| {
            super::watch_failure::watch(api, watcher::Config::default())
                .map(move |e| (watched, e))
                .boxed()
        };
        let mut watches = Vec::new();
        if self.envoy() {
            watches.push(watch(
                Watched::SecurityPolicies,
                Api::all_with(client.clone(), &security_policy_resource()),
            ));
        }
        if self.kgateway() {
            watches.push(watch(
                Watched::GatewayExtensions,
                Api::all_with(client.clone(), &gateway_extension_resource()),
            ));
            watches.push(watch(
                Watched::TrafficPolicies,
                Api::all_with(client.clone(), &traffic_policy_resource()),
            ));
        }
        if self.grants() {
            watches.push(watch(
                Watched::ReferenceGrants,
                Api::namespaced_with(
                    client.clone(),
                    &self.config.service.namespace,
                    &reference_grant_resource(),
                ),
            ));
        }
        if self.traefik() {
            watches.push(watch(
                Watched::Middlewares,
                Api::all_with(client.clone(), &middleware_resource()),
            ));
        }
        if self.istio() {
            watches.push(watch(
                Watched::AuthorizationPolicies,
                Api::all_with(client.clone(), &authorization_policy_resource()),
            ));
            if let Some(mesh) = &self.config.istio_mesh_config {
                let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
                let api = Api::namespaced_with(client, &mesh.namespace, &resource);
                watches.push(
                    super::watch_failure::watch(
                        api,
                        watcher::Config::default().fields(&format!("metadata.name={}", mesh.name)),
                    )
                    .map(|e| (Watched::MeshConfig, e))
                    .boxed(),
                );
            }
        }
        if watches.is_empty() {
            return std::future::pending().await;
        }
        let mut events = stream::select_all(watches);
        while let Some((watched, event)) = events.next().await {
            let cache = self.cache(watched);
            let what = watched.name();
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.failing.failed(&e) {
                        tracing::warn!(
                            "cannot watch {what}: {e}; the Gateway API targets they serve are not attached meanwhile"
                        );
                    }
                    continue;
                }
            };
            let (stale, swept) = self.observe(watched, event);
            if let Some(namespace) = swept
                && let Err(e) = self
                    .sweep_grant(&writer, &policies.state(), &namespace)
                    .await
            {
                tracing::warn!(namespace = %namespace, "cannot delete the ReferenceGrant no policy needs: {e}");
            }
            for namespace in stale {
                if changes
                    .unbounded_send(Change::Namespace(namespace))
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// Takes in one event of a watch; returns the namespaces whose policies are stale,
    /// and the namespace whose ReferenceGrant may be unneeded now (one of our
    /// SecurityPolicies or GatewayExtensions went away).
    pub fn observe(
        &self,
        watched: Watched,
        event: watcher::Event<DynamicObject>,
    ) -> (Vec<String>, Option<String>) {
        let cache = self.cache(watched);
        let uses_grant = matches!(
            watched,
            Watched::SecurityPolicies | Watched::GatewayExtensions
        );
        // A SecurityPolicy or Middleware concerns the policies of its namespace; a
        // ReferenceGrant (in authplane's namespace) those of the namespace it admits.
        let scope = |key: &ObjectKey, held: &Held| match watched {
            Watched::ReferenceGrants => held.admits.clone(),
            Watched::MeshConfig => None,
            _ => Some(key.namespace.clone()),
        };
        let mut stale: Vec<String> = Vec::new();
        let mut swept = None;
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.failing.observed(&event) {
            tracing::info!("{}: watching again", watched.name());
        }
        match event {
            watcher::Event::Init => cache.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let held = self.hold(&o);
                cache
                    .relisting
                    .get_or_insert_default()
                    .insert(ObjectKey::of(&o.metadata), held);
            }
            watcher::Event::InitDone => {
                let listed = cache.relisting.take().unwrap_or_default();
                stale.extend(
                    listed
                        .iter()
                        .chain(&cache.objects)
                        .filter_map(|(k, h)| scope(k, h)),
                );
                cache.objects = listed;
                cache.listed = true;
            }
            watcher::Event::Apply(o) => {
                let key = ObjectKey::of(&o.metadata);
                let held = self.hold(&o);
                // Only what is kept can change a plan: an edit of anything else (a
                // label, an annotation, a foreign policy's settings) reconciles nothing,
                // or a tenant relabelling its own object in a loop would have every
                // policy of its namespace reconciled each time.
                if cache.objects.get(&key) != Some(&held) {
                    stale.extend(scope(&key, &held));
                    cache.objects.insert(key, held);
                }
            }
            watcher::Event::Delete(o) => {
                let key = ObjectKey::of(&o.metadata);
                let held = self.hold(&o);
                stale.extend(scope(&key, &held));
                if cache.objects.remove(&key).is_some_and(|g| g.labelled) && uses_grant {
                    swept = Some(key.namespace);
                }
            }
        }
        drop(cache);
        // The mesh config concerns every policy attached through Istio.
        if watched == Watched::MeshConfig {
            stale.extend(
                self.authorization_policies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .objects
                    .iter()
                    .filter(|(_, held)| held.labelled)
                    .map(|(key, _)| key.namespace.clone()),
            );
        }
        stale.sort();
        stale.dedup();
        (stale, swept)
    }

    /// Whether a policy of `namespace` other than `except` may want a SecurityPolicy: one
    /// that names a Gateway API target and is not Disabled.
    fn wanted_in(
        policies: &[Arc<DeserializeGuard<AuthPolicy>>],
        namespace: &str,
        except: Option<&str>,
    ) -> bool {
        policies.iter().any(|guard| {
            guard.0.as_ref().is_ok_and(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() != except
                    && p.spec.rollout.mode != Mode::Disabled
                    && p.spec.target_refs.iter().any(|t| t.kind.is_gateway_api())
            })
        })
    }

    /// Deletes the ReferenceGrant of `namespace` when it is ours and no policy there
    /// wants it any more.
    async fn sweep_grant(
        &self,
        writer: &LeaderWriter,
        policies: &[Arc<DeserializeGuard<AuthPolicy>>],
        namespace: &str,
    ) -> Result<(), Error> {
        if Self::wanted_in(policies, namespace, None) {
            return Ok(());
        }
        if self.holds_grant_user(policies, namespace, None) {
            return Ok(());
        }
        self.delete_grant(writer, namespace).await
    }

    /// Whether a SecurityPolicy or GatewayExtension of ours other than `except` stands in
    /// `namespace`: labelled as this instance's, and named for an AuthPolicy of the
    /// namespace that controls it (by uid). Labels alone do not count: a tenant can write
    /// them on any object of its namespace, and would keep its ReferenceGrant forever.
    fn holds_grant_user(
        &self,
        policies: &[Arc<DeserializeGuard<AuthPolicy>>],
        namespace: &str,
        except: Option<&ObjectKey>,
    ) -> bool {
        let owners: HashMap<String, &str> = policies
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter_map(|p| {
                Some((
                    attach::security_policy_name(p.metadata.name.as_deref()?),
                    p.metadata.uid.as_deref()?,
                ))
            })
            .collect();
        [&self.security_policies, &self.gateway_extensions]
            .iter()
            .any(|cache| {
                cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .objects
                    .iter()
                    .any(|(key, held)| {
                        key.namespace == namespace
                            && Some(key) != except
                            && held.labelled
                            && owners
                                .get(&key.name)
                                .is_some_and(|uid| held.controller.as_deref() == Some(*uid))
                    })
            })
    }

    async fn delete_grant(&self, writer: &LeaderWriter, namespace: &str) -> Result<(), Error> {
        let key = ObjectKey {
            namespace: self.config.service.namespace.clone(),
            name: attach::reference_grant_name(namespace, &self.writer_labels()),
        };
        let held = self
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .get(&key)
            .cloned();
        if let Some(held) = held.filter(|h| h.labelled) {
            writer
                .delete_object(
                    &reference_grant_resource(),
                    &key.namespace,
                    &key.name,
                    &held.uid,
                )
                .await?;
            tracing::info!(namespace = %namespace, reference_grant = %key, "deleted: no policy of the namespace attaches to Envoy Gateway or kgateway any more");
        }
        Ok(())
    }

    /// Brings the gateway objects of `policy` to what its plan says, and reports each
    /// Gateway API target in `status`. Returns how soon to look again, when sooner than
    /// usual (a cache not listed yet).
    pub async fn reconcile(
        &self,
        policy: &AuthPolicy,
        writer: &LeaderWriter,
        policies: &Store<DeserializeGuard<AuthPolicy>>,
        status: &mut AuthPolicyStatus,
        now: Timestamp,
    ) -> Result<Option<std::time::Duration>, Error> {
        let id = ObjectKey::of(&policy.metadata);
        // Most policies name no Gateway API target and hold nothing: they cost no look
        // at every other policy.
        let attaching = policy
            .spec
            .target_refs
            .iter()
            .any(|t| t.kind.is_gateway_api());
        let own = ObjectKey {
            namespace: id.namespace.clone(),
            name: attach::security_policy_name(&id.name),
        };
        let holds_one = [
            &self.security_policies,
            &self.middlewares,
            &self.authorization_policies,
            &self.gateway_extensions,
            &self.traffic_policies,
        ]
        .iter()
        .any(|cache| {
            cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .objects
                .contains_key(&own)
        });
        if !attaching && !holds_one {
            return Ok(None);
        }
        // A new term lists the Gateway API objects afresh: until every list a target
        // needs is complete, a plan would see no class or no Gateway and delete what
        // guards the target (fail open), then recreate it younger than a foreign policy
        // (Conflicted for good). Hold everything and keep the status as it was.
        let unlisted = {
            let topology = self.topology.lock().unwrap_or_else(|e| e.into_inner());
            policy
                .spec
                .target_refs
                .iter()
                .find(|t| t.kind.is_gateway_api() && !topology.listed_for(t.kind))
                .map(|t| t.kind)
        };
        if let Some(kind) = unlisted {
            tracing::debug!(policy = %id, kind = kind.name(), "Gateway API objects not listed yet: attachment held");
            let previous = policy
                .status
                .as_ref()
                .map(|s| s.targets.as_slice())
                .unwrap_or_default();
            for target in status.targets.iter_mut() {
                if let Some(before) = previous.iter().find(|p| {
                    (p.kind, &p.name, &p.section_name)
                        == (target.kind, &target.name, &target.section_name)
                }) {
                    target.conditions = before.conditions.clone();
                    target.ancestors = before.ancestors.clone();
                }
            }
            return Ok(Some(std::time::Duration::from_secs(10)));
        }
        let policies = &policies.state();
        let ours = Claim {
            created: policy
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0),
            name: id.to_string(),
            what: format!("AuthPolicy {id}"),
        };
        // Envoy Gateway ranks SecurityPolicies, and kgateway TrafficPolicies, by their own
        // age: ours is as old as the one we hold, or newer than every other when it is
        // still to be created (not `now`: the apiserver's clock, not ours, stamps it).
        let our_own = |cache: &Mutex<Cache>, kind: &str| Claim {
            created: cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .objects
                .get(&own)
                .filter(|held| {
                    held.labelled && held.controller.as_deref() == policy.metadata.uid.as_deref()
                })
                .and_then(|held| held.created)
                .unwrap_or(Timestamp::MAX),
            name: own.to_string(),
            what: format!("{kind} {own}"),
        };
        let our_security_policy = our_own(&self.security_policies, "SecurityPolicy");
        let our_traffic_policy = our_own(&self.traffic_policies, "TrafficPolicy");
        let claims = |target: &TargetRef| {
            self.claims(
                &id,
                target,
                policies,
                &ours,
                &our_security_policy,
                &our_traffic_policy,
            )
        };
        let plan = {
            let topology = self.topology.lock().unwrap_or_else(|e| e.into_inner());
            attach::plan(
                policy,
                &topology,
                &self.config.enabled,
                &self.config.service,
                &self.writer_labels(),
                claims,
            )
        };
        let mut outcomes = plan.outcomes;
        let mut later = None;
        // Refusals of an implementation's objects refuse the targets it serves.
        let refuse = |outcomes: &mut Vec<Option<attach::Outcome>>,
                      implementation: Implementation,
                      (reason, message): (&'static str, String)| {
            for outcome in outcomes.iter_mut().flatten() {
                outcome.refuse(implementation, reason, &message);
            }
        };
        let uid = policy.metadata.uid.as_deref();
        // The namespace's ReferenceGrant, shared by Envoy Gateway and kgateway: written
        // at most once, before the first objects that need it.
        let (grants_listed, grants_failing) = {
            let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
            (grants.listed, grants.failing.why().map(str::to_owned))
        };
        let mut grant_problem: Option<Option<(&'static str, String)>> = None;
        // Created in this order (an extension before the policy that uses it), deleted
        // in the other.
        let granted = [
            (
                Implementation::EnvoyGateway,
                vec![(
                    Watched::SecurityPolicies,
                    security_policy_resource(),
                    plan.security_policy.as_ref(),
                )],
                "is Envoy Gateway installed?",
            ),
            (
                Implementation::Kgateway,
                vec![
                    (
                        Watched::GatewayExtensions,
                        gateway_extension_resource(),
                        plan.gateway_extension.as_ref(),
                    ),
                    (
                        Watched::TrafficPolicies,
                        traffic_policy_resource(),
                        plan.traffic_policy.as_ref(),
                    ),
                ],
                "is kgateway installed?",
            ),
        ];
        for (implementation, objects, hint) in granted {
            if !self.config.enabled.contains(&implementation) {
                continue;
            }
            let mut listed = grants_listed;
            let mut failing = None;
            let mut held = Vec::new();
            for (watched, ..) in &objects {
                let cache = self
                    .cache(*watched)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                listed &= cache.listed;
                failing = failing.or_else(|| cache.failing.why().map(str::to_owned));
                held.push(cache.objects.get(&own).cloned());
            }
            // The implementation's own kinds first: a CRD not installed says the most.
            let failing = failing.or_else(|| grants_failing.clone());
            let what: Vec<&str> = objects.iter().map(|(w, ..)| w.name()).collect();
            let what = what.join(", ");
            if !listed {
                let why = failing.map_or_else(
                    || format!("the {what} and ReferenceGrants are not listed yet"),
                    |e| format!("cannot read {what} or ReferenceGrants ({hint}): {e}"),
                );
                refuse(&mut outcomes, implementation, (reason::INVALID, why));
                later = Some(std::time::Duration::from_secs(10));
            } else if objects.iter().any(|(.., wanted)| wanted.is_some()) {
                if grant_problem.is_none() {
                    grant_problem = Some(match &plan.reference_grant {
                        Some(grant) => self.write_grant(writer, grant).await?,
                        None => None,
                    });
                }
                let mut problem = grant_problem.clone().flatten();
                for ((_, resource, wanted), held) in objects.iter().zip(&held) {
                    if problem.is_none() {
                        problem =
                            sync_owned(writer, resource, &own, held.as_ref(), *wanted, uid).await?;
                    }
                }
                if let Some(problem) = problem {
                    refuse(&mut outcomes, implementation, problem);
                }
            } else {
                for ((_, resource, _), held) in objects.iter().zip(&held).rev() {
                    sync_owned(writer, resource, &own, held.as_ref(), None, uid).await?;
                }
            }
        }
        if grants_listed
            && plan.reference_grant.is_none()
            && !Self::wanted_in(policies, &id.namespace, Some(&id.name))
            && !self.holds_grant_user(policies, &id.namespace, Some(&own))
        {
            self.delete_grant(writer, &id.namespace).await?;
        }
        let own_objects = [
            (
                Implementation::Traefik,
                Watched::Middlewares,
                middleware_resource(),
                plan.middleware.as_ref(),
                "is Traefik installed?",
            ),
            (
                Implementation::Istio,
                Watched::AuthorizationPolicies,
                authorization_policy_resource(),
                plan.authorization_policy.as_ref(),
                "is Istio installed?",
            ),
        ];
        for (implementation, watched, resource, wanted, hint) in own_objects {
            if !self.config.enabled.contains(&implementation) {
                continue;
            }
            // Every such object is named as the SecurityPolicy: `authplane-<policy>`.
            let (listed, failing, held) = {
                let cache = self
                    .cache(watched)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                (
                    cache.listed,
                    cache.failing.why().map(str::to_owned),
                    cache.objects.get(&own).cloned(),
                )
            };
            let what = watched.name();
            if !listed {
                let why = failing.map_or_else(
                    || format!("the {what} are not listed yet"),
                    |e| format!("cannot read {what} ({hint}): {e}"),
                );
                refuse(&mut outcomes, implementation, (reason::INVALID, why));
                later = Some(std::time::Duration::from_secs(10));
            } else if let Some(problem) =
                sync_owned(writer, &resource, &own, held.as_ref(), wanted, uid).await?
            {
                refuse(&mut outcomes, implementation, problem);
            }
        }
        if let Some(expected) = &plan.istio_provider {
            match self.mesh_provider_problem(expected) {
                Ok(None) => {}
                Ok(Some(problem)) => refuse(
                    &mut outcomes,
                    Implementation::Istio,
                    (reason::INVALID, problem),
                ),
                Err(not_checked) => {
                    let note = format!(
                        "its extension provider in the mesh config is not checked: {not_checked}"
                    );
                    for outcome in outcomes.iter_mut().flatten() {
                        outcome.note(Implementation::Istio, &note);
                    }
                }
            }
        }
        let previous = policy
            .status
            .as_ref()
            .map(|s| s.targets.as_slice())
            .unwrap_or_default();
        let mut events = Vec::new();
        for (target, outcome) in status.targets.iter_mut().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            let before = previous.iter().find(|p| {
                (p.kind, &p.name, &p.section_name)
                    == (target.kind, &target.name, &target.section_name)
            });
            let accepted = |verdict: &attach::Verdict, before: Option<&[Condition]>| {
                let mut conditions = vec![condition(
                    ACCEPTED,
                    verdict.accepted,
                    verdict.reason,
                    bounded(&verdict.message),
                    policy.metadata.generation,
                    now,
                )];
                crate::api::keep_transition_times(&mut conditions, before.unwrap_or_default());
                conditions
            };
            let verdict = outcome.verdict();
            target.conditions = accepted(&verdict, before.map(|b| b.conditions.as_slice()));
            // At most as many as the CRD holds (a route has at most 32 parents).
            target.ancestors = outcome
                .ancestors
                .iter()
                .take(MAX_ANCESTORS)
                .map(|a| AncestorStatus {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    controller_name: a.controller_name.clone(),
                    conditions: accepted(
                        &a.verdict,
                        before
                            .and_then(|b| {
                                b.ancestors
                                    .iter()
                                    .find(|p| (&p.namespace, &p.name) == (&a.namespace, &a.name))
                            })
                            .map(|p| p.conditions.as_slice()),
                    ),
                })
                .collect();
            // Said once, when a verdict changes (the target's, or through one of its
            // Gateways): not at every reconcile, nor for a new leader that finds it
            // recorded; and only where attachment is on (otherwise Gateway API targets
            // are reported only, as other kinds).
            if !self.config.enabled.is_empty()
                && before.is_none_or(|b| verdicts(b) != verdicts(target))
            {
                events.push(Event {
                    type_: if verdict.accepted {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    },
                    reason: verdict.reason.to_owned(),
                    note: Some(
                        format!(
                            "{} {}: {}",
                            target.kind.name(),
                            target.name,
                            verdict.message
                        )
                        .chars()
                        .take(1000)
                        .collect(),
                    ),
                    action: "Attach".to_owned(),
                    secondary: None,
                });
            }
        }
        let regarding = policy.object_ref(&());
        for event in events {
            writer.event(&event, &regarding).await;
        }
        Ok(later)
    }

    /// What is wrong with the policy's extension provider in Istio's mesh config
    /// (`Ok(None)`: nothing), or why it is not checked.
    fn mesh_provider_problem(&self, expected: &Value) -> Result<Option<String>, String> {
        let Some(key) = &self.config.istio_mesh_config else {
            return Err("the operator does not read the mesh config (--istio-mesh-config)".into());
        };
        let cache = self.mesh_config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.failing.why() {
            return Err(format!("cannot read ConfigMap {key}: {e}"));
        }
        if !cache.listed {
            return Err(format!("ConfigMap {key} is not listed yet"));
        }
        match cache.objects.values().next() {
            None => Ok(Some(format!(
                "ConfigMap {key} (Istio's mesh config) does not exist: {}",
                attach::check_mesh_config("{}", expected).unwrap_or_default()
            ))),
            Some(held) => Ok(attach::check_mesh_config(
                held.mesh.as_deref().unwrap_or("{}"),
                expected,
            )),
        }
    }

    /// Writes the ReferenceGrant unless the apiserver holds it; `Some` says why the
    /// attachment cannot take.
    async fn write_grant(
        &self,
        writer: &LeaderWriter,
        grant: &Value,
    ) -> Result<Option<(&'static str, String)>, Error> {
        let key = ObjectKey {
            namespace: grant["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: grant["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let held = self
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .get(&key)
            .cloned();
        let not_ours = || {
            Some((
                reason::CONFLICTED,
                format!("ReferenceGrant {key} exists and is not authplane's: left alone"),
            ))
        };
        let result = match held {
            Some(held) if !held.labelled => return Ok(not_ours()),
            Some(held)
                if held
                    .object
                    .as_ref()
                    .is_some_and(|o| contains(o, &comparable(grant))) =>
            {
                return Ok(None);
            }
            Some(_) => {
                writer
                    .apply_object(&reference_grant_resource(), grant)
                    .await
            }
            None => match writer
                .create_object(&reference_grant_resource(), grant)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => return Ok(not_ours()),
                Err(e) => Err(e),
            },
        };
        Ok(refused(result)?.map(|message| {
            (
                reason::INVALID,
                format!("the apiserver refused ReferenceGrant {key}: {message}"),
            )
        }))
    }

    /// The other policies that hold `target` of the policy `id` before it: older
    /// AuthPolicies and `CUSTOM` AuthorizationPolicies not ours (than `ours`),
    /// SecurityPolicies not ours that Envoy Gateway ranks before `our_security_policy`,
    /// and TrafficPolicies with `extAuth` not ours that kgateway ranks before
    /// `our_traffic_policy`. Any SecurityPolicy counts, whatever it configures: Envoy
    /// Gateway applies one SecurityPolicy per target and refuses the others whole, so an
    /// older one with only `cors` or `jwt` would leave ours unapplied. kgateway merges
    /// TrafficPolicies by top-level field, the oldest `extAuth` winning (an `extAuth`
    /// that disables one too).
    fn claims(
        &self,
        id: &ObjectKey,
        target: &TargetRef,
        policies: &[Arc<DeserializeGuard<AuthPolicy>>],
        ours: &Claim,
        our_security_policy: &Claim,
        our_traffic_policy: &Claim,
    ) -> Vec<Claim> {
        let mut claims: Vec<Claim> = policies
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|p| {
                let other = ObjectKey::of(&p.metadata);
                other.namespace == id.namespace
                    && other != *id
                    && p.spec.rollout.mode != Mode::Disabled
                    && p.spec
                        .target_refs
                        .iter()
                        .any(|t| t.kind == target.kind && t.name == target.name)
            })
            .filter_map(|p| {
                let other = ObjectKey::of(&p.metadata);
                Some(Claim {
                    created: p.metadata.creation_timestamp.as_ref()?.0,
                    name: other.to_string(),
                    what: format!("AuthPolicy {other}"),
                })
            })
            .filter(|claim| claim < ours)
            .collect();
        // Envoy Gateway: any SecurityPolicy not ours, ranked against ours. Istio: a CUSTOM
        // AuthorizationPolicy not ours (other actions combine with it), ranked against the
        // AuthPolicy. kgateway: a TrafficPolicy with extAuth not ours (other fields merge
        // with ours), ranked against ours.
        for (cache, kind, before) in [
            (
                &self.security_policies,
                "SecurityPolicy",
                our_security_policy,
            ),
            (&self.authorization_policies, "AuthorizationPolicy", ours),
            (&self.traffic_policies, "TrafficPolicy", our_traffic_policy),
        ] {
            let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            claims.extend(
                cache
                    .objects
                    .iter()
                    .filter(|(key, held)| {
                        key.namespace == id.namespace
                            && !held.labelled
                            && (kind == "SecurityPolicy" || held.external_auth)
                            && held.targets.iter().any(|(kind, name)| {
                                kind == target.kind.name() && *name == target.name
                            })
                    })
                    .filter_map(|(key, held)| {
                        Some(Claim {
                            created: held.created?,
                            name: key.to_string(),
                            what: format!("{kind} {key}"),
                        })
                    })
                    .filter(|claim| claim < before),
            );
        }
        claims
    }
}

/// The most ancestors a target's status holds (the CRD's `maxItems`).
const MAX_ANCESTORS: usize = 32;

/// What a target's status says of its attachment, transition times aside: the target's
/// `Accepted` status and reason, and each ancestor's.
type Verdicts<'a> = Vec<(Option<(&'a str, &'a str)>, Option<(&'a str, &'a str)>)>;

fn verdicts(target: &TargetStatus) -> Verdicts<'_> {
    fn accepted(conditions: &[Condition]) -> Option<(&str, &str)> {
        conditions
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    }
    std::iter::once((None, accepted(&target.conditions)))
        .chain(target.ancestors.iter().map(|a| {
            (
                Some((a.namespace.as_str(), a.name.as_str())),
                accepted(&a.conditions),
            )
        }))
        .collect()
}

/// Brings the object `key` of `resource` to `wanted`, or deletes it when nothing is
/// wanted; only if it is ours (labelled as this instance's and controlled by the policy
/// of `uid`). Returns why the attachment cannot take: an object of that name that is
/// not ours, or the apiserver's refusal.
async fn sync_owned(
    writer: &LeaderWriter,
    resource: &ApiResource,
    key: &ObjectKey,
    held: Option<&Held>,
    wanted: Option<&Value>,
    uid: Option<&str>,
) -> Result<Option<(&'static str, String)>, Error> {
    let kind = &resource.kind;
    let ours = |held: &Held| held.labelled && held.controller.as_deref() == uid;
    let not_ours = || {
        Some((
            reason::CONFLICTED,
            format!("{kind} {key} exists and is not this AuthPolicy's: left alone"),
        ))
    };
    let result = match (held, wanted) {
        (Some(held), None) if ours(held) => {
            writer
                .delete_object(resource, &key.namespace, &key.name, &held.uid)
                .await?;
            tracing::info!(object = %key, kind = %kind, "deleted: no target of its policy is attached through it any more");
            return Ok(None);
        }
        (_, None) => return Ok(None),
        (Some(held), Some(_)) if !ours(held) => return Ok(not_ours()),
        (Some(held), Some(wanted))
            if held.object.as_ref().is_some_and(|o| up_to_date(o, wanted)) =>
        {
            return Ok(None);
        }
        (Some(held), Some(wanted)) => {
            if let Some(patch) = held
                .object
                .as_ref()
                .and_then(|o| protocol_switch(o, wanted, &held.uid))
            {
                let switched = writer
                    .merge_patch_object(resource, &key.namespace, &key.name, &patch)
                    .await;
                if let Some(message) = refused(switched)? {
                    return Ok(Some((
                        reason::INVALID,
                        format!("the apiserver refused {kind} {key}: {message}"),
                    )));
                }
                tracing::info!(object = %key, kind = %kind, "switched the protocol the gateway asks in");
            }
            writer.apply_object(resource, wanted).await
        }
        (None, Some(wanted)) => match writer.create_object(resource, wanted).await {
            Ok(true) => Ok(()),
            Ok(false) => return Ok(not_ours()),
            Err(e) => Err(e),
        },
    };
    Ok(refused(result)?.map(|message| {
        (
            reason::INVALID,
            format!("the apiserver refused {kind} {key}: {message}"),
        )
    }))
}

/// The fields of a `spec.extAuth` that say how Envoy asks (HTTP, or gRPC with the policy
/// in a context extension): a SecurityPolicy's, a GatewayExtension's, a TrafficPolicy's.
const EXT_AUTH_PROTOCOL_FIELDS: [&str; 6] = [
    "http",
    "grpc",
    "contextExtensions",
    "httpService",
    "grpcService",
    "headersToForward",
];

/// Whether `held` (ours) already says what `wanted` says. [`contains`] alone would take
/// a field `wanted` no longer has for a default of the apiserver's: a TrafficPolicy's
/// `contextExtensions` after a switch to HTTP, or the `sectionName` of a target that
/// now names the whole Gateway, which would keep the attachment on one listener while
/// the status says the Gateway. So the other protocol's fields and the targets, which
/// the apiserver does not default, must match exactly.
fn up_to_date(held: &Value, wanted: &Value) -> bool {
    contains(held, &comparable(wanted))
        && stale_protocol_fields(held, wanted).is_empty()
        && held["spec"].get("targetRefs") == wanted["spec"].get("targetRefs")
}

/// The fields of `held`'s `spec.extAuth` that say how to ask in a protocol `wanted` does
/// not use.
fn stale_protocol_fields(held: &Value, wanted: &Value) -> Vec<&'static str> {
    let (Some(held), Some(wanted)) = (
        held["spec"]["extAuth"].as_object(),
        wanted["spec"]["extAuth"].as_object(),
    ) else {
        return Vec::new();
    };
    EXT_AUTH_PROTOCOL_FIELDS
        .into_iter()
        .filter(|field| held.contains_key(*field) && !wanted.contains_key(*field))
        .collect()
}

/// When `held` (ours) asks in another protocol than `wanted`: the merge patch that
/// removes the other protocol's fields and sets `wanted`'s `extAuth`. The object was
/// created by a POST, whose fields a server-side apply never removes (they belong to
/// an Update, kubernetes#99003): applying alone would leave `http` beside `grpc`, which
/// the CRD refuses, so a switch of `--attach-protocol` would break every attachment.
fn protocol_switch(held: &Value, wanted: &Value, uid: &str) -> Option<Value> {
    let stale = stale_protocol_fields(held, wanted);
    if stale.is_empty() {
        return None;
    }
    let mut ext_auth = wanted["spec"]["extAuth"].as_object()?.clone();
    for field in stale {
        ext_auth.insert(field.into(), Value::Null);
    }
    Some(serde_json::json!({"metadata": {"uid": uid}, "spec": {"extAuth": ext_auth}}))
}

/// The apiserver's refusal of a write, quoted (a 4xx other than a conflict: the object
/// is wrong, and writing it again will not help); other errors are returned.
fn refused(result: Result<(), Error>) -> Result<Option<String>, Error> {
    match result {
        Ok(()) => Ok(None),
        Err(Error::Kube(kube::Error::Api(status)))
            if (400..500).contains(&status.code)
                && ![401, 403, 409, 429].contains(&status.code) =>
        {
            Ok(Some(status.message))
        }
        Err(e) => Err(e),
    }
}

/// What of a generated object is compared with what the apiserver holds: the labels,
/// the owners and the spec.
fn comparable(wanted: &Value) -> Value {
    let mut metadata = serde_json::Map::new();
    for field in ["labels", "ownerReferences"] {
        if let Some(value) = wanted["metadata"].get(field) {
            metadata.insert(field.into(), value.clone());
        }
    }
    serde_json::json!({"metadata": metadata, "spec": wanted["spec"]})
}

/// Whether `held` says everything `wanted` says (the apiserver adds defaults and others
/// may add labels): objects hold every field, lists the same items, values are equal.
fn contains(held: &Value, wanted: &Value) -> bool {
    match (held, wanted) {
        (Value::Object(held), Value::Object(wanted)) => wanted
            .iter()
            .all(|(k, w)| held.get(k).is_some_and(|h| contains(h, w))),
        (Value::Array(held), Value::Array(wanted)) => {
            held.len() == wanted.len() && held.iter().zip(wanted).all(|(h, w)| contains(h, w))
        }
        (held, wanted) => held == wanted,
    }
}

/// The longest condition message written: a policy of 32 targets with 32 parents each
/// would otherwise write over a megabyte of status for a few kilobytes of spec (names
/// of 253 characters, every Gateway listed); what is cut is in the Events and the
/// ancestors' own conditions.
const MAX_MESSAGE_CHARS: usize = 1024;

fn bounded(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{
        AttachConfig, Attachments, MAX_MESSAGE_CHARS, Watched, bounded, comparable, contains,
        protocol_switch, up_to_date,
    };
    use kube::api::DynamicObject;
    use kube::runtime::watcher::Event;

    /// A condition message is cut at its bound, on a character (never inside one).
    #[test]
    fn a_long_message_is_cut_at_its_bound() {
        let short = "Gateway shop/web: accepted";
        assert_eq!(bounded(short), short);
        let exact = "é".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(bounded(&exact), exact);
        let long = "é".repeat(MAX_MESSAGE_CHARS * 3);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_protocol_switch_removes_the_other_protocols_fields() {
        let http = json!({"spec": {"extAuth": {"failOpen": false,
            "http": {"backendRefs": [{"name": "authplane", "port": 8080}], "path": "/authz/shop/p"}}}});
        let grpc = json!({"spec": {"extAuth": {"failOpen": false,
            "contextExtensions": [{"name": "authplane.io/policy", "type": "Value", "value": "shop/p"}],
            "grpc": {"backendRefs": [{"name": "authplane", "port": 9191}]}}}});
        assert_eq!(
            protocol_switch(&http, &grpc, "uid-1"),
            Some(
                json!({"metadata": {"uid": "uid-1"}, "spec": {"extAuth": {"failOpen": false,
                "http": null,
                "contextExtensions": [{"name": "authplane.io/policy", "type": "Value", "value": "shop/p"}],
                "grpc": {"backendRefs": [{"name": "authplane", "port": 9191}]}}}})
            )
        );
        let back = protocol_switch(&grpc, &http, "uid-1").unwrap();
        assert_eq!(back["spec"]["extAuth"]["grpc"], Value::Null);
        assert_eq!(back["spec"]["extAuth"]["contextExtensions"], Value::Null);
        assert_eq!(
            back["spec"]["extAuth"]["http"],
            http["spec"]["extAuth"]["http"]
        );
        // The same protocol: a plain apply.
        assert_eq!(protocol_switch(&http, &http, "uid-1"), None);
        assert_eq!(protocol_switch(&grpc, &grpc, "uid-1"), None);
    }

    /// kgateway: the GatewayExtension holds one service (its CRD refuses both), and a
    /// TrafficPolicy asked over HTTP names no context extension.
    #[test]
    fn a_kgateway_protocol_switch_removes_the_other_protocols_fields() {
        let backend = json!({"name": "authplane", "namespace": "authplane-system", "port": 8080});
        let http = json!({"spec": {"extAuth": {"failOpen": false, "headersToForward": ["authorization"],
            "httpService": {"backendRef": backend, "pathPrefix": "/authz/shop/p"}}}});
        let grpc = json!({"spec": {"extAuth": {"failOpen": false,
            "grpcService": {"backendRef": backend}}}});
        let patch = protocol_switch(&http, &grpc, "uid-1").unwrap();
        assert_eq!(
            patch["spec"]["extAuth"],
            json!({"failOpen": false, "grpcService": {"backendRef": backend},
                   "httpService": null, "headersToForward": null})
        );
        let back = protocol_switch(&grpc, &http, "uid-1").unwrap();
        assert_eq!(back["spec"]["extAuth"]["grpcService"], Value::Null);
        let named = json!({"spec": {"extAuth": {"extensionRef": {"name": "authplane-p"},
            "contextExtensions": {"authplane.io/policy": "shop/p"}}}});
        let unnamed = json!({"spec": {"extAuth": {"extensionRef": {"name": "authplane-p"}}}});
        assert_eq!(
            protocol_switch(&named, &unnamed, "uid-1").unwrap()["spec"]["extAuth"],
            json!({"extensionRef": {"name": "authplane-p"}, "contextExtensions": null})
        );
        assert_eq!(protocol_switch(&unnamed, &named, "uid-1"), None);
    }

    #[test]
    fn what_the_apiserver_defaulted_is_no_difference() {
        let wanted = json!({"spec": {"extAuth": {"http": {"backendRefs": [{"name": "authplane", "port": 8080}]}}}});
        let held = json!({"spec": {"extAuth": {"failOpen": false, "http": {"backendRefs": [
            {"group": "", "kind": "Service", "name": "authplane", "port": 8080, "weight": 1}]}}}});
        assert!(contains(&held, &wanted));
        let changed = json!({"spec": {"extAuth": {"http": {"backendRefs": [{"name": "authplane", "port": 8081}]}}}});
        assert!(!contains(&held, &changed));
        let more =
            json!({"spec": {"extAuth": {"http": {"backendRefs": [{"name": "a"}, {"name": "b"}]}}}});
        assert!(!contains(&held, &more));
    }

    /// What the held object says beyond what is wanted is a default, except the other
    /// protocol's fields and the targets: those are rewritten.
    #[test]
    fn a_field_no_longer_wanted_is_rewritten() {
        let wanted = json!({"metadata": {}, "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}],
            "extAuth": {"extensionRef": {"name": "authplane-p"}}}});
        let held = json!({"metadata": {"uid": "u"}, "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}],
            "extAuth": {"extensionRef": {"name": "authplane-p"}, "statusOnError": 403}}});
        assert!(up_to_date(&held, &wanted));
        // Over gRPC, before a switch to HTTP.
        let mut named = held.clone();
        named["spec"]["extAuth"]["contextExtensions"] = json!({"authplane.io/policy": "shop/p"});
        assert!(contains(&named, &comparable(&wanted)), "what the check was");
        assert!(!up_to_date(&named, &wanted));
        // On one listener, before the policy named the whole Gateway.
        let mut listener = held.clone();
        listener["spec"]["targetRefs"][0]["sectionName"] = json!("http");
        assert!(
            contains(&listener, &comparable(&wanted)),
            "what the check was"
        );
        assert!(!up_to_date(&listener, &wanted));
    }

    /// A tenant relabelling its own SecurityPolicy in a loop must not have every policy
    /// of its namespace reconciled each time: only a change of what is kept counts.
    #[test]
    fn an_edit_of_what_is_not_kept_reconciles_nothing() {
        let attachments = Attachments::new(
            AttachConfig::default(),
            &crate::operator::instance::Instance::default(),
        );
        let object = |labels: serde_json::Value, spec: serde_json::Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
                "metadata": {"name": "theirs", "namespace": "shop", "uid": "u",
                             "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels},
                "spec": spec,
            }))
            .unwrap()
        };
        let route = |name: &str| json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name}]);
        let apply = |labels, spec| {
            attachments
                .observe(
                    Watched::SecurityPolicies,
                    Event::Apply(object(labels, spec)),
                )
                .0
        };
        assert_eq!(
            apply(json!({}), json!({"targetRefs": route("a")})),
            ["shop"]
        );
        assert!(apply(json!({"n": "1"}), json!({"targetRefs": route("a")})).is_empty());
        assert!(
            apply(
                json!({"n": "2"}),
                json!({"targetRefs": route("a"), "cors": {"allowOrigins": ["https://x.example"]}})
            )
            .is_empty()
        );
        assert_eq!(
            apply(json!({"n": "2"}), json!({"targetRefs": route("b")})),
            ["shop"]
        );
        // Labelled as ours: it is ours or not by its labels, so they count.
        let ours = json!({"app.kubernetes.io/managed-by": "authplane"});
        assert_eq!(apply(ours, json!({"targetRefs": route("b")})), ["shop"]);
    }
}
