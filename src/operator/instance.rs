//! Installations of authplane in one cluster, told apart by an instance name, as
//! IngressClass and GatewayClass tell controllers apart: an object belongs to the
//! instance its `authplane.io/instance` label names, and to `default` without one. An
//! installation watches, serves and writes only its own objects; the Secrets and
//! ConfigMaps it writes carry its label, and it never writes one that carries another's.
//! Without this, two installations (a second install, a staging copy, a namespace move
//! during an upgrade) both managed every SigningKey and rewrote each other's Secrets,
//! ConfigMaps and status until the apiserver gave up.

use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use kube::Resource;
use kube::api::ObjectMeta;
use kube::runtime::watcher;

/// The label naming the instance an object belongs to.
pub const INSTANCE_LABEL: &str = crate::attach::INSTANCE_LABEL;
/// The instance of objects without the label.
pub const DEFAULT_INSTANCE: &str = "default";
/// The Lease of the default instance; others add `-<instance>`, so that two instances in
/// one namespace each have their own leader.
const LEASE: &str = "authplane-leader";
/// Longest instance name: a label value.
pub const MAX_INSTANCE_LEN: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance(Arc<str>);

impl Default for Instance {
    fn default() -> Self {
        Self(Arc::from(DEFAULT_INSTANCE))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "an instance name is 1 to {MAX_INSTANCE_LEN} lowercase letters, digits and '-', beginning and ending with a letter or digit (it is a label value, and part of the Lease's name): {0:?}"
)]
pub struct InvalidInstance(String);

impl std::str::FromStr for Instance {
    type Err = InvalidInstance;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let valid = !name.is_empty()
            && name.len() <= MAX_INSTANCE_LEN
            && name.chars().all(|c| alphanumeric(c) || c == '-')
            && name.starts_with(alphanumeric)
            && name.ends_with(alphanumeric);
        match valid {
            true => Ok(Self(Arc::from(name))),
            false => Err(InvalidInstance(name.to_owned())),
        }
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The instance an object belongs to.
pub fn instance_of(meta: &ObjectMeta) -> &str {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(INSTANCE_LABEL))
        .map_or(DEFAULT_INSTANCE, String::as_str)
}

impl Instance {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Whether the object belongs to this instance.
    pub fn owns(&self, meta: &ObjectMeta) -> bool {
        instance_of(meta) == &*self.0
    }

    /// The name of this instance's leader Lease.
    pub fn lease_name(&self) -> String {
        match self.is_default() {
            true => LEASE.to_owned(),
            false => format!("{LEASE}-{}", self.0),
        }
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == DEFAULT_INSTANCE
    }

    /// A watch of this instance's objects only: another instance's object is dropped
    /// from the initial list, and one that moves to another instance is a deletion.
    /// Every object also loses what no one here reads but every cache would keep:
    /// `managedFields` and kubectl's last-applied copy of the whole object (together
    /// often larger than the object itself).
    pub fn watch<K, S>(
        &self,
        what: &'static str,
        events: S,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
    where
        K: Resource + Send + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let instance = self.clone();
        let mut others = Others::new(what, self.clone());
        events.filter_map(move |event| {
            future::ready(match event {
                Ok(event) => others.sort(&instance, event).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
    }
}

/// How many objects of a watch belong to other instances: said once a list is complete,
/// when it changed, not per object.
struct Others {
    what: &'static str,
    instance: Instance,
    listing: usize,
    said: Option<usize>,
}

impl Others {
    fn new(what: &'static str, instance: Instance) -> Self {
        Self {
            what,
            instance,
            listing: 0,
            said: None,
        }
    }

    fn sort<K: Resource>(
        &mut self,
        instance: &Instance,
        event: watcher::Event<K>,
    ) -> Option<watcher::Event<K>> {
        use watcher::Event;
        match event {
            Event::Init => {
                self.listing = 0;
                Some(Event::Init)
            }
            Event::InitDone => {
                if self.said != Some(self.listing) && (self.listing > 0 || self.said.is_some()) {
                    tracing::info!(
                        instance = %self.instance,
                        count = self.listing,
                        "{} of other authplane instances (label {INSTANCE_LABEL}) are left alone",
                        self.what
                    );
                }
                self.said = Some(self.listing);
                Some(Event::InitDone)
            }
            Event::InitApply(object) if instance.owns(object.meta()) => {
                Some(Event::InitApply(trimmed(object)))
            }
            Event::InitApply(_) => {
                self.listing += 1;
                None
            }
            Event::Apply(object) if instance.owns(object.meta()) => {
                Some(Event::Apply(trimmed(object)))
            }
            // Moved to another instance: gone, as far as this one is concerned.
            Event::Apply(object) | Event::Delete(object) => Some(Event::Delete(trimmed(object))),
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object without `managedFields` and kubectl's last-applied annotation.
pub fn trimmed<K: Resource>(mut object: K) -> K {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    fn map(name: &str, instance: Option<&str>) -> ConfigMap {
        let mut labels = serde_json::Map::new();
        if let Some(instance) = instance {
            labels.insert(INSTANCE_LABEL.into(), json!(instance));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "auth", "labels": labels,
                         "annotations": {LAST_APPLIED: "{\"a\": \"big copy\"}", "keep": "me"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        }))
        .unwrap()
    }

    fn names(events: Vec<watcher::Event<ConfigMap>>) -> Vec<String> {
        events
            .into_iter()
            .map(|event| match event {
                watcher::Event::Init => "init".to_owned(),
                watcher::Event::InitDone => "done".to_owned(),
                watcher::Event::InitApply(o) => format!("list {}", o.metadata.name.unwrap()),
                watcher::Event::Apply(o) => format!("apply {}", o.metadata.name.unwrap()),
                watcher::Event::Delete(o) => format!("delete {}", o.metadata.name.unwrap()),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_watch_keeps_its_instances_objects_trimmed_and_drops_the_others() {
        use watcher::Event;
        let events = vec![
            Event::Init,
            Event::InitApply(map("mine", Some("blue"))),
            Event::InitApply(map("legacy", None)),
            Event::InitApply(map("theirs", Some("green"))),
            Event::InitDone,
            Event::Apply(map("moved-away", Some("green"))),
            Event::Apply(map("mine", Some("blue"))),
        ];
        let blue: Instance = "blue".parse().unwrap();
        let stream = blue.watch("ConfigMaps", futures::stream::iter(events.clone()).map(Ok));
        let seen: Vec<_> = stream.map(Result::unwrap).collect().await;
        let kept = seen.iter().find_map(|e| match e {
            Event::InitApply(o) => Some(o.clone()),
            _ => None,
        });
        assert_eq!(
            names(seen),
            [
                "init",
                "list mine",
                "done",
                "delete moved-away",
                "apply mine"
            ]
        );
        let kept = kept.unwrap();
        assert!(kept.metadata.managed_fields.is_none());
        assert_eq!(
            kept.metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["keep"]
        );

        // The default instance owns unlabelled objects.
        let stream = Instance::default().watch("ConfigMaps", futures::stream::iter(events).map(Ok));
        let seen: Vec<_> = stream.map(Result::unwrap).collect().await;
        assert_eq!(
            names(seen)[..3],
            ["init", "list legacy", "done"],
            "only the unlabelled one"
        );
    }

    #[test]
    fn instance_names_are_label_values_that_fit_a_lease_name() {
        assert_eq!(
            "staging".parse::<Instance>().unwrap().lease_name(),
            "authplane-leader-staging"
        );
        assert_eq!(Instance::default().lease_name(), "authplane-leader");
        for bad in [
            "",
            "Staging",
            "-a",
            "a-",
            "a_b",
            "a.b",
            &"x".repeat(MAX_INSTANCE_LEN + 1),
        ] {
            assert!(bad.parse::<Instance>().is_err(), "{bad:?}");
        }
        assert!("x".repeat(MAX_INSTANCE_LEN).parse::<Instance>().is_ok());
    }
}
