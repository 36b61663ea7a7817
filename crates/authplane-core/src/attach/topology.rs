//! What the Gateway API objects say about who serves a target: routes' parent Gateways,
//! Gateways' classes, classes' controllers. Only those fields are kept, whatever the
//! objects hold: a cluster with 10,000 routes keeps their parents and, per rule, its
//! name and the Middlewares it names, not the rules themselves; a Gateway its class and
//! its listeners' names (what a `sectionName` targets), not the listeners.

use std::collections::HashMap;

use crate::api::TargetKind;

/// A route's parent, as its `parentRefs` say (kind Gateway only: other parents, such as
/// a mesh Service, are not gateways authplane wires).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParentRef {
    pub namespace: String,
    pub name: String,
}

/// A route as kept: its parent Gateways, and the Traefik Middlewares each rule names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub parents: Vec<ParentRef>,
    /// Its parents that are no Gateway (a mesh `Service`, a `ListenerSet`, ...), as
    /// `Kind namespace/name`: traffic through them is routed by the route and checked
    /// by nothing authplane writes.
    pub other_parents: Vec<String>,
    /// Per rule, in order: its name (what a `sectionName` targets) and the Middlewares
    /// its filters name (`ExtensionRef` filters of group `traefik.io`, in the route's
    /// namespace). A rule without the filter is not guarded by the Middleware.
    pub rules: Vec<RuleMiddlewares>,
}

/// One rule of a route: its name and the Traefik Middlewares its filters name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMiddlewares {
    pub name: Option<String>,
    pub middlewares: Vec<String>,
}

impl Route {
    /// Whether `middleware` guards the route's rules that `section` targets (every rule
    /// when `None`): there is at least one, and each names it.
    pub fn guarded_by(&self, section: Option<&str>, middleware: &str) -> bool {
        let mut in_scope = self
            .rules
            .iter()
            .filter(|rule| section.is_none_or(|s| rule.name.as_deref() == Some(s)))
            .peekable();
        in_scope.peek().is_some()
            && in_scope.all(|rule| rule.middlewares.iter().any(|m| m == middleware))
    }

    /// The parent Gateways of a route object (`spec.parentRefs`) in `namespace`. A
    /// parent without `group`/`kind` is a Gateway, without `namespace` in the route's.
    pub fn from_object(namespace: &str, object: &serde_json::Value) -> Self {
        let is_gateway = |parent: &serde_json::Value| {
            let field = |name: &str, default: &str| {
                parent
                    .get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or(default)
                    .to_owned()
            };
            field("group", TargetKind::GATEWAY_API_GROUP) == TargetKind::GATEWAY_API_GROUP
                && field("kind", "Gateway") == "Gateway"
        };
        let refs = || {
            object
                .pointer("/spec/parentRefs")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
        };
        let mut other_parents: Vec<String> = refs()
            .filter(|parent| !is_gateway(parent))
            .map(|parent| {
                let text = |name: &str| parent.get(name).and_then(serde_json::Value::as_str);
                format!(
                    "{} {}/{}",
                    text("kind").unwrap_or("Gateway"),
                    text("namespace").unwrap_or(namespace),
                    text("name").unwrap_or_default()
                )
            })
            .collect();
        other_parents.sort();
        other_parents.dedup();
        let mut parents: Vec<ParentRef> = refs()
            .filter(|parent| is_gateway(parent))
            .filter_map(|parent| {
                Some(ParentRef {
                    namespace: parent
                        .get("namespace")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or(namespace)
                        .to_owned(),
                    name: parent.get("name")?.as_str()?.to_owned(),
                })
            })
            .collect();
        parents.sort();
        parents.dedup();
        let rules = object
            .pointer("/spec/rules")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|rule| {
                let mut middlewares: Vec<String> = rule
                    .get("filters")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|filter| {
                        let reference = filter.get("extensionRef")?;
                        let is = |field: &str, value: &str| {
                            reference.get(field).and_then(|v| v.as_str()) == Some(value)
                        };
                        (is("group", super::TRAEFIK_GROUP) && is("kind", super::MIDDLEWARE_KIND))
                            .then(|| reference.get("name")?.as_str().map(str::to_owned))?
                    })
                    .collect();
                middlewares.sort();
                middlewares.dedup();
                RuleMiddlewares {
                    name: rule
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned),
                    middlewares,
                }
            })
            .collect();
        Self {
            parents,
            other_parents,
            rules,
        }
    }
}

/// A Gateway as kept: its class, and its listeners' names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gateway {
    pub class_name: String,
    /// `spec.listeners[].name`, in order: what a Gateway target's `sectionName` names.
    pub listeners: Vec<String>,
}

impl Gateway {
    /// What is kept of a Gateway object.
    pub fn from_object(object: &serde_json::Value) -> Self {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        Self {
            class_name: object
                .pointer("/spec/gatewayClassName")
                .and_then(text)
                .unwrap_or_default(),
            listeners: object
                .pointer("/spec/listeners")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|listener| listener.get("name").and_then(text))
                .collect(),
        }
    }
}

/// A Gateway of its class alone, its listeners unknown (tests, mostly).
impl From<&str> for Gateway {
    fn from(class_name: &str) -> Self {
        Self {
            class_name: class_name.to_owned(),
            listeners: Vec::new(),
        }
    }
}

/// A Gateway that serves a target, with its controller when known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ancestor {
    pub namespace: String,
    pub name: String,
    /// Its `spec.gatewayClassName`; `None`: the Gateway does not exist (a route's
    /// `parentRefs` may name one that was never created, or was deleted).
    pub class_name: Option<String>,
    /// `None`: the Gateway or its class is not known (yet).
    pub controller_name: Option<String>,
}

type Key = (String, String);

/// The Gateway API objects as the watches last saw them.
#[derive(Default, Debug)]
pub struct GatewayTopology {
    /// GatewayClass name → `spec.controllerName`.
    classes: HashMap<String, String>,
    gateways: HashMap<Key, Gateway>,
    routes: HashMap<(TargetKind, String, String), Route>,
    /// The lists completed this term. Until a target's are, what is kept of it is
    /// partial: a plan made from it would find no Gateway or no class, and the driver
    /// would delete the objects that guard the target (fail open).
    listed: Listed,
}

#[derive(Default, Debug, Clone, Copy)]
struct Listed {
    classes: bool,
    gateways: bool,
    http_routes: bool,
    grpc_routes: bool,
}

impl GatewayTopology {
    /// Each `apply_*` and `delete_*` returns whether what is kept changed (a Gateway's
    /// status update is an event too, and changes nothing here).
    pub fn apply_class(&mut self, name: &str, controller_name: &str) -> bool {
        self.classes
            .insert(name.to_owned(), controller_name.to_owned())
            .as_deref()
            != Some(controller_name)
    }

    pub fn delete_class(&mut self, name: &str) -> bool {
        self.classes.remove(name).is_some()
    }

    pub fn apply_gateway(
        &mut self,
        namespace: &str,
        name: &str,
        gateway: impl Into<Gateway>,
    ) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let gateway = gateway.into();
        self.gateways.insert(key, gateway.clone()) != Some(gateway)
    }

    pub fn delete_gateway(&mut self, namespace: &str, name: &str) -> bool {
        self.gateways
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    pub fn apply_route(
        &mut self,
        kind: TargetKind,
        namespace: &str,
        name: &str,
        route: Route,
    ) -> bool {
        let key = (kind, namespace.to_owned(), name.to_owned());
        self.routes.insert(key, route.clone()) != Some(route)
    }

    pub fn delete_route(&mut self, kind: TargetKind, namespace: &str, name: &str) -> bool {
        self.routes
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Replaces every GatewayClass: a watch listed them afresh.
    pub fn replace_classes(&mut self, classes: HashMap<String, String>) {
        self.classes = classes;
        self.listed.classes = true;
    }

    /// Replaces every Gateway (namespace, name → Gateway).
    pub fn replace_gateways(&mut self, gateways: HashMap<(String, String), Gateway>) {
        self.gateways = gateways;
        self.listed.gateways = true;
    }

    /// Replaces every route of `kind` (namespace, name → route).
    pub fn replace_routes(&mut self, kind: TargetKind, routes: HashMap<(String, String), Route>) {
        match kind {
            TargetKind::GrpcRoute => self.listed.grpc_routes = true,
            _ => self.listed.http_routes = true,
        }
        self.routes.retain(|(k, _, _), _| *k != kind);
        self.routes.extend(
            routes
                .into_iter()
                .map(|((namespace, name), route)| ((kind, namespace, name), route)),
        );
    }

    /// Forgets everything: a new leadership term lists again.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Whether everything that says who serves a target of `kind` was listed this term
    /// (its classes, Gateways and, for a route, routes of its kind): only then may a
    /// plan remove what is written for it.
    pub fn listed_for(&self, kind: TargetKind) -> bool {
        let listed = self.listed;
        listed.classes
            && listed.gateways
            && match kind {
                TargetKind::HttpRoute => listed.http_routes,
                TargetKind::GrpcRoute => listed.grpc_routes,
                _ => true,
            }
    }

    /// A route as kept.
    pub fn route(&self, kind: TargetKind, namespace: &str, name: &str) -> Option<&Route> {
        self.routes
            .get(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// A Gateway as kept.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        self.gateways.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The Gateways serving the target `kind`/`name` in `namespace`, or `None` when the
    /// target is not known (it does not exist, or its kind was not listed).
    pub fn ancestors(
        &self,
        kind: TargetKind,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<Ancestor>> {
        let gateway = |parent: &ParentRef| {
            let class = self
                .gateways
                .get(&(parent.namespace.clone(), parent.name.clone()))
                .map(|gateway| &gateway.class_name);
            Ancestor {
                namespace: parent.namespace.clone(),
                name: parent.name.clone(),
                class_name: class.cloned(),
                controller_name: class.and_then(|class| self.classes.get(class)).cloned(),
            }
        };
        match kind {
            TargetKind::Gateway => {
                let parent = ParentRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                self.gateways
                    .contains_key(&(parent.namespace.clone(), parent.name.clone()))
                    .then(|| vec![gateway(&parent)])
            }
            TargetKind::HttpRoute | TargetKind::GrpcRoute => {
                let route = self
                    .routes
                    .get(&(kind, namespace.to_owned(), name.to_owned()))?;
                Some(route.parents.iter().map(gateway).collect())
            }
            _ => None,
        }
    }
}
