//! The Gateway API objects that say who serves an AuthPolicy's Gateway API targets:
//! GatewayClasses (their controller), Gateways (their class), HTTPRoutes and GRPCRoutes
//! (their parent Gateways). Watched whole, cluster-wide, while this replica leads, and
//! kept reduced to those fields in a [`GatewayTopology`]; the Gateways' and routes'
//! names also feed [`Targets`] (found or missing). A change of a kept field, never a
//! status update, makes the naming policies' status stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{StreamExt, stream};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::targets::{self, Change, Name, Targets};
use super::watch_failure::WatchFailure;
use crate::api::TargetKind;
use crate::attach::{Gateway, GatewayTopology, Route};

/// What one watch is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Class,
    Target(TargetKind),
}

const WATCHED: [Watched; 4] = [
    Watched::Class,
    Watched::Target(TargetKind::Gateway),
    Watched::Target(TargetKind::HttpRoute),
    Watched::Target(TargetKind::GrpcRoute),
];

fn resource(watched: Watched) -> ApiResource {
    match watched {
        Watched::Class => ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(TargetKind::GATEWAY_API_GROUP, "v1", "GatewayClass"),
            "gatewayclasses",
        ),
        Watched::Target(kind) => targets::resource(kind),
    }
}

/// The fields kept of an object: a class's controller, a Gateway's class and listener
/// names, a route's parents and rules.
#[derive(Clone, Debug, PartialEq)]
enum Kept {
    Controller(String),
    Gateway(Gateway),
    Route(Route),
}

fn kept(watched: Watched, object: &DynamicObject) -> Kept {
    let text = |pointer: &str| {
        object
            .data
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match watched {
        Watched::Class => Kept::Controller(text("/spec/controllerName")),
        Watched::Target(TargetKind::Gateway) => Kept::Gateway(Gateway::from_object(&object.data)),
        Watched::Target(_) => Kept::Route(Route::from_object(
            &object.namespace().unwrap_or_default(),
            &object.data,
        )),
    }
}

/// Takes in one event of a watch: the topology, the targets; returns what changed.
#[derive(Default)]
struct Lists {
    relisting: HashMap<&'static str, HashMap<Name, Kept>>,
}

fn key(watched: Watched) -> &'static str {
    match watched {
        Watched::Class => "GatewayClass",
        Watched::Target(kind) => kind.name(),
    }
}

/// Every policy naming a Gateway API kind: a class or a Gateway changed, and with it
/// who serves any route.
fn everything() -> Vec<Change> {
    [
        TargetKind::Gateway,
        TargetKind::HttpRoute,
        TargetKind::GrpcRoute,
    ]
    .map(Change::Kind)
    .into()
}

fn observe(
    topology: &Mutex<GatewayTopology>,
    targets: &Targets,
    lists: &mut Lists,
    watched: Watched,
    event: watcher::Event<DynamicObject>,
) -> Vec<Change> {
    let name = |o: &DynamicObject| (o.namespace().unwrap_or_default(), o.name_any());
    let mut changes = match (watched, &event) {
        (Watched::Target(kind), event) => {
            let named = match event {
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
                watcher::Event::InitApply(o) => watcher::Event::InitApply(name(o)),
                watcher::Event::Apply(o) => watcher::Event::Apply(name(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(name(o)),
            };
            targets.observe(kind, named)
        }
        (Watched::Class, _) => Vec::new(),
    };
    let mut topology = topology.lock().unwrap_or_else(|e| e.into_inner());
    let changed = |(namespace, name): Name| match watched {
        Watched::Target(TargetKind::Gateway) | Watched::Class => everything(),
        Watched::Target(kind) => vec![Change::Target {
            kind,
            namespace,
            name,
        }],
    };
    match event {
        watcher::Event::Init => {
            lists.relisting.insert(key(watched), HashMap::new());
        }
        watcher::Event::InitApply(o) => {
            let kept = kept(watched, &o);
            lists
                .relisting
                .entry(key(watched))
                .or_default()
                .insert(name(&o), kept);
        }
        watcher::Event::InitDone => {
            let listed = lists.relisting.remove(key(watched)).unwrap_or_default();
            match watched {
                Watched::Class => topology.replace_classes(
                    listed
                        .into_iter()
                        .filter_map(|((_, name), kept)| match kept {
                            Kept::Controller(c) => Some((name, c)),
                            _ => None,
                        })
                        .collect(),
                ),
                Watched::Target(TargetKind::Gateway) => topology.replace_gateways(
                    listed
                        .into_iter()
                        .filter_map(|(name, kept)| match kept {
                            Kept::Gateway(g) => Some((name, g)),
                            _ => None,
                        })
                        .collect(),
                ),
                Watched::Target(kind) => topology.replace_routes(
                    kind,
                    listed
                        .into_iter()
                        .filter_map(|(name, kept)| match kept {
                            Kept::Route(r) => Some((name, r)),
                            _ => None,
                        })
                        .collect(),
                ),
            }
            changes.extend(match watched {
                Watched::Target(kind) if kind.is_route() => vec![Change::Kind(kind)],
                _ => everything(),
            });
        }
        watcher::Event::Apply(o) => {
            let (namespace, object) = name(&o);
            let moved = match kept(watched, &o) {
                Kept::Controller(c) => topology.apply_class(&object, &c),
                Kept::Gateway(g) => topology.apply_gateway(&namespace, &object, g),
                Kept::Route(r) => match watched {
                    Watched::Target(kind) => topology.apply_route(kind, &namespace, &object, r),
                    Watched::Class => false,
                },
            };
            if moved {
                changes.extend(changed((namespace, object)));
            }
        }
        watcher::Event::Delete(o) => {
            let (namespace, object) = name(&o);
            let gone = match watched {
                Watched::Class => topology.delete_class(&object),
                Watched::Target(TargetKind::Gateway) => {
                    topology.delete_gateway(&namespace, &object)
                }
                Watched::Target(kind) => topology.delete_route(kind, &namespace, &object),
            };
            if gone {
                changes.extend(changed((namespace, object)));
            }
        }
    }
    changes
}

/// Watches GatewayClasses, Gateways, HTTPRoutes and GRPCRoutes, cluster-wide, into
/// `topology` and `targets`, and sends what changed. Runs until the receiver is gone; a
/// failing watch (no Gateway API installed, no permission) retries with backoff, and
/// its targets are reported as unknown meanwhile.
pub async fn watch(
    client: Client,
    targets: Arc<Targets>,
    topology: Arc<Mutex<GatewayTopology>>,
    changes: mpsc::UnboundedSender<Change>,
) {
    let watches = WATCHED.map(|watched| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource(watched));
        super::watch_failure::watch(api, watcher::Config::default())
            .map(move |event| (watched, event))
            .boxed()
    });
    let mut events = stream::select_all(watches);
    let mut lists = Lists::default();
    let mut classes = WatchFailure::default();
    while let Some((watched, event)) = events.next().await {
        let found = match (watched, event) {
            (_, Ok(event)) => {
                if watched == Watched::Class && classes.observed(&event) {
                    tracing::info!("GatewayClasses: watching again");
                }
                observe(&topology, &targets, &mut lists, watched, event)
            }
            (Watched::Target(kind), Err(e)) => {
                targets.failed(kind, &e);
                continue;
            }
            (Watched::Class, Err(e)) => {
                if classes.failed(&e) {
                    tracing::warn!(
                        "cannot watch GatewayClasses: {e}; the implementation serving Gateway API targets is unknown meanwhile"
                    );
                }
                continue;
            }
        };
        for change in found {
            if changes.unbounded_send(change).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use watcher::Event;

    use super::*;

    fn object(
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        spec: serde_json::Value,
    ) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn lists_and_changes_build_the_topology_and_only_kept_fields_are_changes() {
        let topology = Mutex::new(GatewayTopology::default());
        let targets = Targets::default();
        let mut lists = Lists::default();
        let mut feed = |watched, event| observe(&topology, &targets, &mut lists, watched, event);
        let class = Watched::Class;
        let gateway = Watched::Target(TargetKind::Gateway);
        let route = Watched::Target(TargetKind::HttpRoute);
        feed(class, Event::Init);
        feed(
            class,
            Event::InitApply(object(
                "GatewayClass",
                None,
                "eg",
                json!({"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}),
            )),
        );
        assert_eq!(feed(class, Event::InitDone), everything());
        feed(gateway, Event::Init);
        feed(
            gateway,
            Event::InitApply(object(
                "Gateway",
                Some("shop"),
                "web",
                json!({"gatewayClassName": "eg"}),
            )),
        );
        feed(gateway, Event::InitDone);
        feed(route, Event::Init);
        let payments = object(
            "HTTPRoute",
            Some("shop"),
            "payments",
            json!({"parentRefs": [{"name": "web"}]}),
        );
        feed(route, Event::InitApply(payments.clone()));
        assert!(feed(route, Event::InitDone).contains(&Change::Kind(TargetKind::HttpRoute)));
        let ancestors = topology
            .lock()
            .unwrap()
            .ancestors(TargetKind::HttpRoute, "shop", "payments")
            .unwrap();
        assert_eq!(
            ancestors[0].controller_name.as_deref(),
            Some("gateway.envoyproxy.io/gatewayclass-controller")
        );
        assert_eq!(
            targets.exists(TargetKind::HttpRoute, "shop", "payments"),
            Some(true)
        );
        assert_eq!(
            targets.exists(TargetKind::Gateway, "shop", "web"),
            Some(true)
        );

        // A status update (the same parents) is no change; new parents are.
        assert_eq!(feed(route, Event::Apply(payments)), []);
        let moved = object(
            "HTTPRoute",
            Some("shop"),
            "payments",
            json!({"parentRefs": [{"name": "other"}]}),
        );
        let target = Change::Target {
            kind: TargetKind::HttpRoute,
            namespace: "shop".into(),
            name: "payments".into(),
        };
        assert_eq!(
            feed(route, Event::Apply(moved.clone())),
            std::slice::from_ref(&target)
        );
        assert_eq!(
            feed(
                gateway,
                Event::Apply(object(
                    "Gateway",
                    Some("shop"),
                    "web",
                    json!({"gatewayClassName": "eg"})
                ))
            ),
            []
        );
        // A listener's name is kept (a Gateway target's sectionName names it); the
        // rest of a listener is not.
        let listeners = |port: u16| {
            object(
                "Gateway",
                Some("shop"),
                "web",
                json!({"gatewayClassName": "eg",
                       "listeners": [{"name": "https", "port": port, "protocol": "HTTPS"}]}),
            )
        };
        assert_eq!(feed(gateway, Event::Apply(listeners(443))), everything());
        assert_eq!(
            topology
                .lock()
                .unwrap()
                .gateway("shop", "web")
                .unwrap()
                .listeners,
            ["https"]
        );
        assert_eq!(feed(gateway, Event::Apply(listeners(8443))), []);
        assert_eq!(
            feed(
                gateway,
                Event::Apply(object(
                    "Gateway",
                    Some("shop"),
                    "web",
                    json!({"gatewayClassName": "istio"})
                ))
            ),
            everything()
        );
        let deleted = feed(route, Event::Delete(moved));
        assert!(deleted.contains(&target), "{deleted:?}");
        assert_eq!(
            targets.exists(TargetKind::HttpRoute, "shop", "payments"),
            Some(false)
        );
        assert_eq!(
            topology
                .lock()
                .unwrap()
                .ancestors(TargetKind::HttpRoute, "shop", "payments"),
            None
        );
    }
}
