//! For one AuthPolicy: which gateway objects it should have, and each Gateway API
//! target's status (GEP-713: `Accepted`, or why not).

use jiff::Timestamp;
use serde_json::Value;

use super::{
    Ancestor, AuthzService, GatewayTopology, Implementation, Writer, envoy, istio, kgateway,
    traefik,
};
use crate::api::{AuthPolicy, Mode, TargetRef};

/// The reasons of a target's `Accepted` condition (GEP-713's, and `Disabled`).
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const CONFLICTED: &str = "Conflicted";
    pub const INVALID: &str = "Invalid";
    /// `rollout.mode: Disabled`: nothing is attached.
    pub const DISABLED: &str = "Disabled";
}

/// A policy holding a target: an AuthPolicy, or a SecurityPolicy that is not
/// authplane's. Of two on one target the older wins (GEP-713): the earlier `created`,
/// then the name. Envoy Gateway ranks SecurityPolicies by their own age, not by their
/// AuthPolicy's: the driver compares each kind of claim with its own kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub created: Timestamp,
    /// `namespace/name`, the tie-breaker.
    pub name: String,
    /// What it is, for the message: `AuthPolicy shop/a`, `SecurityPolicy shop/b`.
    pub what: String,
}

/// Whether a target is attached through one Gateway, or as a whole: GEP-713's
/// `Accepted` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub accepted: bool,
    pub reason: &'static str,
    /// What was written, or what is wrong and what to do.
    pub message: String,
}

impl Verdict {
    fn accepted(message: String) -> Self {
        Self {
            accepted: true,
            reason: reason::ACCEPTED,
            message,
        }
    }

    fn refused(reason: &'static str, message: String) -> Self {
        Self {
            accepted: false,
            reason,
            message,
        }
    }
}

/// One Gateway serving a target (GEP-713's ancestor), and whether the target is attached
/// through it: a route's parents may be served by different implementations, and some
/// not at all.
#[derive(Clone, Debug, PartialEq)]
pub struct AncestorOutcome {
    pub namespace: String,
    pub name: String,
    /// Its GatewayClass's `spec.controllerName`, when known.
    pub controller_name: Option<String>,
    /// The implementation serving it, when authplane knows it.
    pub implementation: Option<Implementation>,
    pub verdict: Verdict,
}

/// One Gateway API target's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ancestors: Vec<AncestorOutcome>,
    /// A verdict on the target itself (it or its section is not found, another policy
    /// holds it, the policy is Disabled), which every ancestor shares; `None`: each
    /// ancestor has its own.
    whole: Option<Verdict>,
    /// A route's parents that are no Gateway (a mesh Service, ...): the route's traffic
    /// through them is not checked, so the target is not attached as a whole.
    unguarded: Vec<String>,
}

impl Outcome {
    /// The target's own condition, summing up its ancestors': accepted only when
    /// accepted through every one of them; otherwise the reason of the first that is not,
    /// and a message naming it.
    pub fn verdict(&self) -> Verdict {
        if let Some(whole) = &self.whole {
            return whole.clone();
        }
        let (accepted, refused): (Vec<&AncestorOutcome>, Vec<&AncestorOutcome>) =
            self.ancestors.iter().partition(|a| a.verdict.accepted);
        let Some(first) = refused.first() else {
            let mut said: Vec<&str> = Vec::new();
            for ancestor in &accepted {
                if !said.contains(&ancestor.verdict.message.as_str()) {
                    said.push(&ancestor.verdict.message);
                }
            }
            if !self.unguarded.is_empty() {
                return Verdict::refused(
                    reason::INVALID,
                    format!(
                        "its parent {} is no Gateway: requests through it are not checked by this policy; {}",
                        self.unguarded.join(", "),
                        said.join("; ")
                    ),
                );
            }
            return Verdict::accepted(said.join("; "));
        };
        let mut message = format!(
            "Gateway {}/{}: {}",
            first.namespace, first.name, first.verdict.message
        );
        if refused.len() > 1 {
            message.push_str(&format!(
                "; not accepted through {} more of its Gateways either (see ancestors)",
                refused.len() - 1
            ));
        }
        if !accepted.is_empty() {
            let names: Vec<String> = accepted
                .iter()
                .map(|a| format!("{}/{}", a.namespace, a.name))
                .collect();
            message.push_str(&format!("; attached through Gateway {}", names.join(", ")));
        }
        Verdict::refused(first.verdict.reason, message)
    }

    /// The implementations written for the target: those of the ancestors it is
    /// accepted through.
    pub fn implementations(&self) -> Vec<Implementation> {
        let mut written: Vec<Implementation> = self
            .ancestors
            .iter()
            .filter(|a| a.verdict.accepted)
            .filter_map(|a| a.implementation)
            .collect();
        written.sort();
        written.dedup();
        written
    }

    /// Refuses the target through the Gateways `implementation` serves, where it was
    /// accepted: the apiserver refused what was written for them, or it cannot be read.
    pub fn refuse(&mut self, implementation: Implementation, reason: &'static str, message: &str) {
        for ancestor in self.through(implementation) {
            ancestor.verdict = Verdict::refused(reason, message.to_owned());
        }
    }

    /// Adds `note` to the message of the Gateways `implementation` serves, where the
    /// target is accepted.
    pub fn note(&mut self, implementation: Implementation, note: &str) {
        for ancestor in self.through(implementation) {
            ancestor.verdict.message = format!("{}; {note}", ancestor.verdict.message);
        }
    }

    fn through(
        &mut self,
        implementation: Implementation,
    ) -> impl Iterator<Item = &mut AncestorOutcome> {
        self.ancestors
            .iter_mut()
            .filter(move |a| a.verdict.accepted && a.implementation == Some(implementation))
    }
}

/// What one AuthPolicy should have.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Per entry of `spec.targetRefs`: `None` for the kinds that are only reported.
    pub outcomes: Vec<Option<Outcome>>,
    /// The Envoy Gateway SecurityPolicy; `None`: it should not exist.
    pub security_policy: Option<Value>,
    /// The ReferenceGrant the SecurityPolicy or the GatewayExtension needs.
    pub reference_grant: Option<Value>,
    /// The Traefik Middleware; `None`: it should not exist.
    pub middleware: Option<Value>,
    /// The Istio AuthorizationPolicy; `None`: it should not exist.
    pub authorization_policy: Option<Value>,
    /// The mesh config's extension provider the AuthorizationPolicy names, as the
    /// cluster admin adds it.
    pub istio_provider: Option<Value>,
    /// kgateway's GatewayExtension and the TrafficPolicy that uses it; `None`: they
    /// should not exist.
    pub gateway_extension: Option<Value>,
    pub traffic_policy: Option<Value>,
}

/// The plan of `policy`. `enabled`: the implementations this installation wires;
/// `claims(target)`: the other policies that hold `target` before this one (the oldest
/// is named in the status).
pub fn plan(
    policy: &AuthPolicy,
    topology: &GatewayTopology,
    enabled: &[Implementation],
    service: &AuthzService,
    writer: &Writer,
    claims: impl Fn(&TargetRef) -> Vec<Claim>,
) -> Plan {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let disabled = policy.spec.rollout.mode == Mode::Disabled;
    let mut envoy_targets: Vec<&TargetRef> = Vec::new();
    let mut traefik = false;
    let mut istio_targets: Vec<&TargetRef> = Vec::new();
    let mut kgateway_targets: Vec<&TargetRef> = Vec::new();
    let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
    let outcomes = policy
        .spec
        .target_refs
        .iter()
        .map(|target| {
            if !target.kind.is_gateway_api() {
                return None;
            }
            let what = format!("{} {namespace}/{}", target.kind.name(), target.name);
            let Some(found) = topology.ancestors(target.kind, namespace, &target.name) else {
                return Some(whole(
                    Vec::new(),
                    reason::TARGET_NOT_FOUND,
                    format!("{what} not found"),
                ));
            };
            let mut ancestors: Vec<AncestorOutcome> = found
                .iter()
                .map(|a| AncestorOutcome {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    controller_name: a.controller_name.clone(),
                    implementation: a
                        .controller_name
                        .as_deref()
                        .and_then(Implementation::of_controller),
                    verdict: unserved(a, enabled),
                })
                .collect();
            if ancestors.is_empty() {
                return Some(whole(
                    ancestors,
                    reason::TARGET_NOT_FOUND,
                    format!("{what} has no parent Gateway"),
                ));
            }
            // A section that does not exist guards nothing: the gateway would attach
            // the object to no traffic while the target read as attached.
            if let Some(section) = target.section_name.as_deref()
                && let Some(missing) = missing_section(topology, target, namespace, section)
            {
                return Some(whole(
                    ancestors,
                    reason::TARGET_NOT_FOUND,
                    format!("{what} {missing}"),
                ));
            }
            if disabled {
                return Some(whole(
                    ancestors,
                    reason::DISABLED,
                    "rollout.mode is Disabled: nothing is attached".to_owned(),
                ));
            }
            if let Some(older) = claims(target).into_iter().min() {
                return Some(whole(
                    ancestors,
                    reason::CONFLICTED,
                    format!("{} holds it first", older.what),
                ));
            }
            // What each implementation serving the target says of it: the same for every
            // Gateway of that implementation.
            let through = |implementation: Implementation| -> Result<String, String> {
                match implementation {
                    Implementation::EnvoyGateway => Ok(format!(
                        "SecurityPolicy {namespace}/{} sends its requests to authplane",
                        envoy::security_policy_name(policy_name)
                    )),
                    // Istio's targetRefs take a Gateway (a route is no target of
                    // theirs), and no section of it. Attaching to a route's parent
                    // instead would check every other route of the Gateway too.
                    Implementation::Istio if target.kind.is_route() => Err(format!(
                        "Istio attaches an AuthorizationPolicy to a Gateway, not to a {}: target its Gateway (every route of it is then checked)",
                        target.kind.name()
                    )),
                    Implementation::Istio if target.section_name.is_some() => Err(
                        "Istio attaches an AuthorizationPolicy to a whole Gateway: remove sectionName"
                            .to_owned(),
                    ),
                    Implementation::Istio => Ok(format!(
                        "AuthorizationPolicy {namespace}/{} sends its requests to the extension provider {}",
                        istio::authorization_policy_name(policy_name),
                        istio::provider_name(namespace, policy_name)
                    )),
                    Implementation::Traefik if !target.kind.is_route() => Err(format!(
                        "Traefik attaches a Middleware to routes, not to a {}: target its routes",
                        target.kind.name()
                    )),
                    Implementation::Traefik => {
                        let middleware = traefik::middleware_name(policy_name);
                        // A rule without the filter is not guarded: every rule the
                        // target covers must name it, or the target is not attached.
                        let guarded = topology
                            .route(target.kind, namespace, &target.name)
                            .is_some_and(|route| {
                                route.guarded_by(target.section_name.as_deref(), &middleware)
                            });
                        if guarded {
                            Ok(format!("its rules use the Middleware {namespace}/{middleware}"))
                        } else {
                            Err(format!(
                                "add the Middleware to each of the route's rules (authplane never edits a route; a rule without it is not guarded): filters: [{{type: ExtensionRef, extensionRef: {{group: traefik.io, kind: Middleware, name: {middleware}}}}}]"
                            ))
                        }
                    }
                    // One TrafficPolicy holds every target: past its CRD's limit, the
                    // apiserver would refuse it whole.
                    Implementation::Kgateway
                        if !kgateway_targets.contains(&target)
                            && kgateway_targets.len() >= kgateway::MAX_TRAFFIC_POLICY_TARGETS =>
                    {
                        Err(format!(
                            "a kgateway TrafficPolicy takes at most {} targets: split the policy",
                            kgateway::MAX_TRAFFIC_POLICY_TARGETS
                        ))
                    }
                    Implementation::Kgateway => Ok(format!(
                        "TrafficPolicy {namespace}/{} sends its requests to authplane",
                        kgateway::kgateway_object_name(policy_name)
                    )),
                }
            };
            // Each Gateway whose implementation authplane wires and takes the target
            // gets its object; the others are reported, and guard nothing.
            for ancestor in &mut ancestors {
                let Some(implementation) = ancestor
                    .implementation
                    .filter(|_| ancestor.verdict.accepted)
                else {
                    continue;
                };
                ancestor.verdict = match through(implementation) {
                    Ok(said) => Verdict::accepted(said),
                    Err(problem) => Verdict::refused(reason::INVALID, problem),
                };
            }
            let outcome = Outcome {
                ancestors,
                whole: None,
                unguarded: topology
                    .route(target.kind, namespace, &target.name)
                    .map(|route| route.other_parents.clone())
                    .unwrap_or_default(),
            };
            for implementation in outcome.implementations() {
                let targets = match implementation {
                    Implementation::EnvoyGateway => &mut envoy_targets,
                    Implementation::Istio => &mut istio_targets,
                    Implementation::Kgateway => &mut kgateway_targets,
                    Implementation::Traefik => {
                        traefik = true;
                        continue;
                    }
                };
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            Some(outcome)
        })
        .collect();
    let wanted = !envoy_targets.is_empty();
    let kgateway = !kgateway_targets.is_empty();
    Plan {
        outcomes,
        security_policy: wanted
            .then(|| envoy::security_policy(policy, &envoy_targets, service, writer)),
        reference_grant: ((wanted || kgateway) && namespace != service.namespace)
            .then(|| envoy::reference_grant(namespace, enabled, service, writer)),
        middleware: (traefik && !disabled).then(|| traefik::middleware(policy, service, writer)),
        authorization_policy: (!istio_targets.is_empty())
            .then(|| istio::authorization_policy(policy, &istio_targets, writer)),
        istio_provider: (!istio_targets.is_empty())
            .then(|| istio::expected_provider(policy, service)),
        gateway_extension: kgateway.then(|| kgateway::gateway_extension(policy, service, writer)),
        traffic_policy: kgateway
            .then(|| kgateway::traffic_policy(policy, &kgateway_targets, service, writer)),
    }
}

/// A verdict on the target itself, which each of its `ancestors` shares.
fn whole(mut ancestors: Vec<AncestorOutcome>, reason: &'static str, message: String) -> Outcome {
    let verdict = Verdict::refused(reason, message);
    for ancestor in &mut ancestors {
        ancestor.verdict = verdict.clone();
    }
    Outcome {
        ancestors,
        whole: Some(verdict),
        unguarded: Vec::new(),
    }
}

/// Why the target cannot be attached through `ancestor` whatever the target, or an
/// accepted placeholder when it can be (the implementation then has its say).
fn unserved(ancestor: &Ancestor, enabled: &[Implementation]) -> Verdict {
    let implementation = ancestor
        .controller_name
        .as_deref()
        .and_then(Implementation::of_controller);
    let problem = match (
        &ancestor.class_name,
        &ancestor.controller_name,
        implementation,
    ) {
        (None, _, _) => (
            reason::TARGET_NOT_FOUND,
            "the Gateway does not exist: create it, or remove it from the route's parentRefs"
                .to_owned(),
        ),
        (Some(class), None, _) => (
            reason::INVALID,
            format!(
                "its GatewayClass {class} does not exist: create it, or correct the Gateway's gatewayClassName"
            ),
        ),
        (_, Some(controller), None) => (
            reason::INVALID,
            format!(
                "no implementation authplane writes for: controllerName {controller}; requests through this Gateway are not checked by this policy: wire it by hand (README: \"Wiring a gateway\"), or attach the route to a Gateway of {}",
                super::WRITTEN.map(Implementation::name).join(", ")
            ),
        ),
        (_, _, Some(i)) if !super::WRITTEN.contains(&i) => (
            reason::INVALID,
            format!(
                "authplane does not write configuration for {} yet: wire it by hand (README: \"Wiring a gateway\")",
                i.name()
            ),
        ),
        (_, _, Some(i)) if !enabled.contains(&i) => (
            reason::INVALID,
            format!(
                "{} is not enabled in this installation: enable it in the chart's gatewayAPI values (the operator's --gateway-implementations)",
                i.name()
            ),
        ),
        (_, _, Some(_)) => return Verdict::accepted(String::new()),
    };
    Verdict::refused(problem.0, problem.1)
}

/// What is wrong with a target's `sectionName`, `None` when it names a listener of the
/// Gateway, or a rule of the route.
fn missing_section(
    topology: &GatewayTopology,
    target: &TargetRef,
    namespace: &str,
    section: &str,
) -> Option<String> {
    let (what, names): (&str, Vec<&str>) = if target.kind.is_route() {
        let route = topology.route(target.kind, namespace, &target.name)?;
        (
            "rule",
            route
                .rules
                .iter()
                .filter_map(|r| r.name.as_deref())
                .collect(),
        )
    } else {
        let gateway = topology.gateway(namespace, &target.name)?;
        (
            "listener",
            gateway.listeners.iter().map(String::as_str).collect(),
        )
    };
    if names.contains(&section) {
        return None;
    }
    Some(if names.is_empty() {
        format!("has no {what} named {section}: none of its {what}s has a name")
    } else {
        format!(
            "has no {what} named {section}: its {what}s are {}",
            names.join(", ")
        )
    })
}
