//! For one AuthPolicy: which gateway objects it should have, and each Gateway API
//! target's status (GEP-713: `Accepted`, or why not).

use jiff::Timestamp;
use serde_json::Value;

use super::{
    AuthzService, GatewayTopology, Implementation, Writer, envoy, istio, kgateway, traefik,
};
use crate::api::{AncestorStatus, AuthPolicy, Mode, TargetRef};

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

/// One Gateway API target's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ancestors: Vec<AncestorStatus>,
    /// The implementations written for it.
    pub implementations: Vec<Implementation>,
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
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
            let Some(ancestors) = topology.ancestors(target.kind, namespace, &target.name) else {
                return Some(refused(
                    Vec::new(),
                    reason::TARGET_NOT_FOUND,
                    format!(
                        "{} {namespace}/{} not found",
                        target.kind.name(),
                        target.name
                    ),
                ));
            };
            let statuses: Vec<AncestorStatus> = ancestors
                .iter()
                .map(|a| AncestorStatus {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    controller_name: a.controller_name.clone(),
                })
                .collect();
            if ancestors.is_empty() {
                return Some(refused(
                    statuses,
                    reason::TARGET_NOT_FOUND,
                    format!(
                        "{} {namespace}/{} has no parent Gateway",
                        target.kind.name(),
                        target.name
                    ),
                ));
            }
            // A rule that does not exist guards nothing: the gateway would attach the
            // object to no traffic while the target read as attached.
            if let Some(section) = target.section_name.as_deref().filter(|_| target.kind.is_route()) {
                let has_rule = topology
                    .route(target.kind, namespace, &target.name)
                    .is_some_and(|route| {
                        route.rules.iter().any(|rule| rule.name.as_deref() == Some(section))
                    });
                if !has_rule {
                    return Some(refused(
                        statuses,
                        reason::TARGET_NOT_FOUND,
                        format!(
                            "{} {namespace}/{} has no rule named {section}",
                            target.kind.name(),
                            target.name
                        ),
                    ));
                }
            }
            let implementations: Vec<Option<Implementation>> = ancestors
                .iter()
                .map(|a| {
                    a.controller_name
                        .as_deref()
                        .and_then(Implementation::of_controller)
                })
                .collect();
            let unwired: Vec<String> = ancestors
                .iter()
                .zip(&implementations)
                .filter(|(_, i)| {
                    !i.is_some_and(|i| enabled.contains(&i) && super::WRITTEN.contains(&i))
                })
                .map(|(a, i)| {
                    let why = match (i, &a.controller_name) {
                        (Some(i), _) if !super::WRITTEN.contains(i) => {
                            format!(
                                "authplane does not write configuration for {} yet",
                                i.name()
                            )
                        }
                        (Some(i), _) => format!("{} is not enabled in this installation", i.name()),
                        (None, Some(controller)) => {
                            format!("its controller {controller} is not one authplane wires")
                        }
                        (None, None) => "its GatewayClass is not known".to_owned(),
                    };
                    format!("Gateway {}/{}: {why}", a.namespace, a.name)
                })
                .collect();
            if !unwired.is_empty() {
                return Some(refused(statuses, reason::INVALID, unwired.join("; ")));
            }
            if disabled {
                return Some(refused(
                    statuses,
                    reason::DISABLED,
                    "rollout.mode is Disabled: nothing is attached".to_owned(),
                ));
            }
            if let Some(older) = claims(target).into_iter().min() {
                return Some(refused(
                    statuses,
                    reason::CONFLICTED,
                    format!("{} holds it first", older.what),
                ));
            }
            let mut written: Vec<Implementation> = implementations.into_iter().flatten().collect();
            written.sort();
            written.dedup();
            let mut said = Vec::new();
            let mut problem = None;
            // Written only when every implementation serving the target takes it: a
            // target refused is attached through none of them.
            let (mut to_envoy, mut to_istio, mut to_traefik) = (false, false, false);
            let mut to_kgateway = false;
            for implementation in &written {
                match implementation {
                    Implementation::EnvoyGateway => {
                        to_envoy = true;
                        said.push(format!(
                            "SecurityPolicy {namespace}/{} sends its requests to authplane",
                            envoy::security_policy_name(policy_name)
                        ));
                    }
                    // Istio's targetRefs take a Gateway (a route is no target of
                    // theirs), and no section of it. Attaching to a route's parent
                    // instead would check every other route of the Gateway too.
                    Implementation::Istio if target.kind.is_route() => {
                        problem = Some(format!(
                            "Istio attaches an AuthorizationPolicy to a Gateway, not to a {}: target its Gateway (every route of it is then checked)",
                            target.kind.name()
                        ));
                    }
                    Implementation::Istio if target.section_name.is_some() => {
                        problem = Some(
                            "Istio attaches an AuthorizationPolicy to a whole Gateway: remove sectionName"
                                .to_owned(),
                        );
                    }
                    Implementation::Istio => {
                        to_istio = true;
                        said.push(format!(
                            "AuthorizationPolicy {namespace}/{} sends its requests to the extension provider {}",
                            istio::authorization_policy_name(policy_name),
                            istio::provider_name(namespace, policy_name)
                        ));
                    }
                    Implementation::Traefik if !target.kind.is_route() => {
                        problem = Some(format!(
                            "Traefik attaches a Middleware to routes, not to a {}: target its routes",
                            target.kind.name()
                        ));
                    }
                    Implementation::Traefik => {
                        to_traefik = true;
                        let middleware = traefik::middleware_name(policy_name);
                        // A rule without the filter is not guarded: every rule the
                        // target covers must name it, or the target is not attached.
                        let guarded = topology
                            .route(target.kind, namespace, &target.name)
                            .is_some_and(|route| {
                                route.guarded_by(target.section_name.as_deref(), &middleware)
                            });
                        if guarded {
                            said.push(format!("its rules use the Middleware {namespace}/{middleware}"));
                        } else {
                            problem = Some(format!(
                                "add the Middleware to each of the route's rules (authplane never edits a route; a rule without it is not guarded): filters: [{{type: ExtensionRef, extensionRef: {{group: traefik.io, kind: Middleware, name: {middleware}}}}}]"
                            ));
                        }
                    }
                    // One TrafficPolicy holds every target: past its CRD's limit, the
                    // apiserver would refuse it whole.
                    Implementation::Kgateway
                        if !kgateway_targets.contains(&target)
                            && kgateway_targets.len() >= kgateway::MAX_TRAFFIC_POLICY_TARGETS =>
                    {
                        problem = Some(format!(
                            "a kgateway TrafficPolicy takes at most {} targets: split the policy",
                            kgateway::MAX_TRAFFIC_POLICY_TARGETS
                        ));
                    }
                    Implementation::Kgateway => {
                        to_kgateway = true;
                        said.push(format!(
                            "TrafficPolicy {namespace}/{} sends its requests to authplane",
                            kgateway::kgateway_object_name(policy_name)
                        ));
                    }
                }
            }
            if let Some(problem) = problem {
                return Some(Outcome {
                    implementations: written,
                    ..refused(statuses, reason::INVALID, problem)
                });
            }
            if to_envoy && !envoy_targets.contains(&target) {
                envoy_targets.push(target);
            }
            if to_istio && !istio_targets.contains(&target) {
                istio_targets.push(target);
            }
            traefik |= to_traefik;
            if to_kgateway && !kgateway_targets.contains(&target) {
                kgateway_targets.push(target);
            }
            Some(Outcome {
                ancestors: statuses,
                implementations: written,
                accepted: true,
                reason: reason::ACCEPTED,
                message: said.join("; "),
            })
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

fn refused(ancestors: Vec<AncestorStatus>, reason: &'static str, message: String) -> Outcome {
    Outcome {
        ancestors,
        implementations: Vec::new(),
        accepted: false,
        reason,
        message,
    }
}
