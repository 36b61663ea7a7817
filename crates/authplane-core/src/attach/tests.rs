//! The plan of a policy from a topology, and every object it generates checked against
//! the implementations' published CRDs: their structural schema and every CEL rule, as
//! the apiserver applies them (see `crds` below).

use serde_json::{Value, json};

use super::*;
use crate::api::{AuthPolicy, TargetKind};

fn service() -> AuthzService {
    AuthzService {
        namespace: "authplane-system".into(),
        name: "authplane".into(),
        port: 8080,
        grpc_port: 9191,
        protocol: Protocol::Http,
    }
}

fn writer() -> Writer {
    Writer {
        instance: "default".into(),
        default_instance: true,
    }
}

fn policy(targets: Value, extra: Value) -> AuthPolicy {
    let mut spec = json!({
        "issuers": [{"signingKeyRef": {"name": "web"}}],
        "targetRefs": targets,
        "forwardClaims": {"sub": "X-Auth-Subject", "email": "X-Auth-Email"},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "payments", "namespace": "shop", "uid": "uid-1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap()
}

const ENVOY: &str = "gateway.envoyproxy.io/gatewayclass-controller";

/// `web` (Envoy Gateway, listeners `http` and `https`) and `mesh` (Istio, listener
/// `https`) Gateways in `shop`; route `payments` under
/// `web`, route `both` under both, route `lonely` under none.
fn topology() -> GatewayTopology {
    let mut topology = GatewayTopology::default();
    topology.apply_class("eg", ENVOY);
    topology.apply_class("istio", "istio.io/gateway-controller");
    let gateway = |class: &str, listeners: &[&str]| Gateway {
        class_name: class.into(),
        listeners: listeners.iter().map(|l| l.to_string()).collect(),
    };
    topology.apply_gateway("shop", "web", gateway("eg", &["http", "https"]));
    topology.apply_gateway("shop", "mesh", gateway("istio", &["https"]));
    let route =
        |parents: Value| Route::from_object("shop", &json!({"spec": {"parentRefs": parents}}));
    topology.apply_route(
        TargetKind::HttpRoute,
        "shop",
        "payments",
        route(json!([{"name": "web", "sectionName": "https"}])),
    );
    topology.apply_route(
        TargetKind::HttpRoute,
        "shop",
        "both",
        route(
            json!([{"name": "web"}, {"name": "mesh", "namespace": "shop"},
                     {"kind": "Service", "group": "", "name": "mesh-svc"}]),
        ),
    );
    topology.apply_route(TargetKind::GrpcRoute, "shop", "lonely", route(json!([])));
    topology
}

fn ours() -> Claim {
    Claim {
        created: "2026-01-01T00:00:00Z".parse().unwrap(),
        name: "shop/payments".into(),
        what: "AuthPolicy shop/payments".into(),
    }
}

fn plan_of(policy: &AuthPolicy, claims: Vec<Claim>) -> Plan {
    plan(
        policy,
        &topology(),
        &[Implementation::EnvoyGateway],
        &service(),
        &writer(),
        // The driver passes only the claims that come before this policy's.
        |_| claims.iter().filter(|c| *c < &ours()).cloned().collect(),
    )
}

/// Each ancestor of `outcome`: its name and its reason.
fn verdicts(outcome: &Outcome) -> Vec<(&str, &str)> {
    outcome
        .ancestors
        .iter()
        .map(|a| (a.name.as_str(), a.verdict.reason))
        .collect()
}

fn reasons(plan: &Plan) -> Vec<Option<&str>> {
    plan.outcomes
        .iter()
        .map(|o| o.as_ref().map(|o| o.verdict().reason))
        .collect()
}

#[test]
fn targets_keep_their_old_form_and_take_the_gep_713_one() {
    let policy = policy(
        json!([{"kind": "Ingress", "name": "payments"},
               {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments", "sectionName": "api"},
               {"kind": "GRPCRoute", "name": "rpc"}, {"kind": "Gateway", "name": "web"}]),
        json!({}),
    );
    let kinds: Vec<_> = policy.spec.target_refs.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        [
            TargetKind::Ingress,
            TargetKind::HttpRoute,
            TargetKind::GrpcRoute,
            TargetKind::Gateway
        ]
    );
    assert_eq!(
        policy.spec.target_refs[1].section_name.as_deref(),
        Some("api")
    );
}

#[test]
fn a_route_is_served_by_its_parents_classes_controllers() {
    let topology = topology();
    let ancestors = topology
        .ancestors(TargetKind::HttpRoute, "shop", "both")
        .unwrap();
    let controllers: Vec<_> = ancestors
        .iter()
        .map(|a| (a.name.as_str(), a.controller_name.as_deref()))
        .collect();
    // The Service parent (a mesh route) is no gateway.
    assert_eq!(
        controllers,
        [
            ("mesh", Some("istio.io/gateway-controller")),
            ("web", Some(ENVOY))
        ]
    );
    assert_eq!(
        topology
            .ancestors(TargetKind::Gateway, "shop", "web")
            .unwrap()[0]
            .controller_name
            .as_deref(),
        Some(ENVOY)
    );
    assert_eq!(
        topology.ancestors(TargetKind::HttpRoute, "other", "payments"),
        None,
        "same namespace only"
    );
    assert_eq!(
        topology.ancestors(TargetKind::Gateway, "shop", "nope"),
        None
    );
}

#[test]
fn only_targets_served_by_a_wired_implementation_are_attached() {
    let policy = policy(
        json!([{"kind": "Ingress", "name": "payments"},
               {"kind": "HTTPRoute", "name": "payments"},
               {"kind": "HTTPRoute", "name": "both"},
               {"kind": "GRPCRoute", "name": "lonely"},
               {"kind": "HTTPRoute", "name": "missing"},
               {"kind": "Gateway", "name": "web", "sectionName": "https"}]),
        json!({}),
    );
    let plan = plan_of(&policy, Vec::new());
    assert_eq!(
        reasons(&plan),
        [
            None,
            Some("Accepted"),
            Some("Invalid"),
            Some("TargetNotFound"),
            Some("TargetNotFound"),
            Some("Accepted")
        ]
    );
    // `both` is attached through `web` (Envoy Gateway), not through `mesh` (Istio, not
    // enabled here).
    let both = plan.outcomes[2].as_ref().unwrap();
    assert_eq!(verdicts(both), [("mesh", "Invalid"), ("web", "Accepted")]);
    let invalid = both.verdict();
    assert!(
        invalid
            .message
            .starts_with("Gateway shop/mesh: istio is not enabled in this installation"),
        "{}",
        invalid.message
    );
    let security_policy = plan.security_policy.unwrap();
    assert_eq!(
        security_policy["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"},
               {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "both"},
               {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web", "sectionName": "https"}])
    );
    assert_eq!(security_policy["metadata"]["name"], "authplane-payments");
    assert_eq!(security_policy["metadata"]["namespace"], "shop");
    assert_eq!(
        security_policy["metadata"]["ownerReferences"],
        json!([{"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy", "name": "payments",
                "uid": "uid-1", "controller": true, "blockOwnerDeletion": false}])
    );
    assert_eq!(
        security_policy["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "authplane", "authplane.io/instance": "default"})
    );
    let ext_auth = &security_policy["spec"]["extAuth"];
    assert_eq!(ext_auth["failOpen"], false);
    assert_eq!(ext_auth["http"]["path"], "/authz/shop/payments");
    assert_eq!(
        ext_auth["http"]["backendRefs"],
        json!([{"name": "authplane", "namespace": "authplane-system", "port": 8080}])
    );
    assert_eq!(
        ext_auth["http"]["headersToBackend"],
        json!(["x-auth-email", "x-auth-subject", "x-authplane-audit"])
    );
    assert_eq!(
        ext_auth["headersToExtAuth"],
        json!(["authorization", "x-forwarded-for", "x-real-ip"])
    );
    let grant = plan.reference_grant.unwrap();
    assert_eq!(grant["metadata"]["namespace"], "authplane-system");
    assert_eq!(grant["metadata"]["name"], "authplane-securitypolicies-shop");
    assert_eq!(
        grant["spec"],
        json!({"from": [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"}],
               "to": [{"group": "", "kind": "Service", "name": "authplane"}]})
    );
}

#[test]
fn the_decision_gets_every_header_it_reads() {
    let policy = policy(
        json!([{"kind": "HTTPRoute", "name": "payments"}]),
        json!({"tokenSources": {"headers": [{"name": "X-Token"}], "cookies": ["access_token"]},
               "rollout": {"bucketBy": {"header": "X-User-Id"}},
               "legacySession": {"cookie": "sid", "until": "2027-01-01T00:00:00Z"}}),
    );
    let sp = plan_of(&policy, Vec::new()).security_policy.unwrap();
    assert_eq!(
        sp["spec"]["extAuth"]["headersToExtAuth"],
        json!([
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-real-ip",
            "x-token",
            "x-user-id"
        ])
    );
    assert_eq!(
        sp["spec"]["extAuth"]["http"]["headersToBackend"],
        json!([
            "deprecation",
            "sunset",
            "x-auth-email",
            "x-auth-subject",
            "x-authplane-audit"
        ])
    );
}

#[test]
fn nothing_is_attached_when_disabled_or_when_nothing_is_wired() {
    let disabled = policy(
        json!([{"kind": "HTTPRoute", "name": "payments"}]),
        json!({"rollout": {"mode": "Disabled"}}),
    );
    let plan = plan_of(&disabled, Vec::new());
    assert_eq!(reasons(&plan), [Some("Disabled")]);
    assert_eq!((plan.security_policy, plan.reference_grant), (None, None));

    let reported_only = policy(json!([{"kind": "Deployment", "name": "api"}]), json!({}));
    assert_eq!(
        plan_of(&reported_only, Vec::new()),
        Plan {
            outcomes: vec![None],
            ..Plan::default()
        }
    );
}

#[test]
fn the_older_policy_on_a_target_wins() {
    let policy = policy(
        json!([{"kind": "HTTPRoute", "name": "payments"}]),
        json!({}),
    );
    let claim = |created: &str, name: &str| Claim {
        created: created.parse().unwrap(),
        name: name.into(),
        what: format!("SecurityPolicy {name}"),
    };
    let older = plan_of(&policy, vec![claim("2025-12-31T00:00:00Z", "shop/theirs")]);
    assert_eq!(reasons(&older), [Some("Conflicted")]);
    assert!(
        older.outcomes[0]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("SecurityPolicy shop/theirs")
    );
    assert_eq!(older.security_policy, None);
    // Same time: the name decides.
    let tie = plan_of(&policy, vec![claim("2026-01-01T00:00:00Z", "shop/a")]);
    assert_eq!(reasons(&tie), [Some("Conflicted")]);
    let newer = plan_of(
        &policy,
        vec![
            claim("2026-01-01T00:00:00Z", "shop/z"),
            claim("2026-02-01T00:00:00Z", "shop/b"),
        ],
    );
    assert_eq!(reasons(&newer), [Some("Accepted")]);
}

#[test]
fn long_names_are_shortened_stably_and_stay_names() {
    let long = "p".repeat(253);
    let name = security_policy_name(&long);
    assert_eq!(name.len(), 253);
    assert_eq!(name, security_policy_name(&long));
    assert_ne!(name, security_policy_name(&format!("{}q", "p".repeat(252))));
    assert_eq!(security_policy_name("payments"), "authplane-payments");
    let other = Writer {
        instance: "blue".into(),
        default_instance: false,
    };
    assert_eq!(
        reference_grant_name("shop", &other),
        "authplane-blue-securitypolicies-shop"
    );
}

/// The implementations' published CRDs (`../shared/third-party-crds/`, or
/// `AUTHPLANE_THIRD_PARTY_CRDS`): read at test time only, never by the binary.
mod crds {
    use std::path::PathBuf;

    use kube::core::cel::{Validator, compile_schema};
    use serde_json::Value;

    use crate::api::structural;

    fn folder() -> PathBuf {
        if let Some(dir) = std::env::var_os("AUTHPLANE_THIRD_PARTY_CRDS") {
            return dir.into();
        }
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        here.ancestors()
            .map(|dir| dir.join("shared/third-party-crds"))
            .find(|dir| dir.is_dir())
            .unwrap_or_else(|| {
                panic!(
                    "the third-party CRDs are not in a shared/third-party-crds folder above {}: set AUTHPLANE_THIRD_PARTY_CRDS",
                    here.display()
                )
            })
    }

    /// The `openAPIV3Schema` of `version` of the CRD in `file`.
    pub fn schema(file: &str, version: &str) -> Value {
        let text = std::fs::read_to_string(folder().join(file)).unwrap();
        let crd: Value = serde_yaml::from_str(&text).unwrap();
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let found = versions.iter().find(|v| v["name"] == version).unwrap();
        found["schema"]["openAPIV3Schema"].clone()
    }

    /// How many CEL rules `schema` holds, all compiled: a rule the evaluator could not
    /// compile would otherwise be skipped silently.
    pub fn rules(schema: &Value) -> usize {
        fn count(node: &kube::core::cel::CompiledSchema) -> usize {
            for rule in &node.validations {
                if let Err(e) = rule {
                    panic!("a CEL rule does not compile: {e}");
                }
            }
            node.validations.len()
                + node.properties.values().map(count).sum::<usize>()
                + node.items.as_deref().map_or(0, count)
                + node.additional_properties.as_deref().map_or(0, count)
                + [&node.all_of, &node.one_of, &node.any_of]
                    .into_iter()
                    .flatten()
                    .map(count)
                    .sum::<usize>()
        }
        count(&compile_schema(schema))
    }

    /// Every problem the apiserver would find with `object`: the structural schema
    /// (server-side apply refuses unknown fields) and every CEL rule.
    pub fn problems(schema: &Value, object: &Value) -> Vec<String> {
        let mut problems: Vec<String> = structural::check(schema, object)
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        let rules = compile_schema(schema);
        if let Err(errors) = Validator::new().validate_compiled(&rules, object, None) {
            problems.extend(
                errors
                    .into_vec()
                    .into_iter()
                    .map(|e| format!("{}: {}", e.field_path, e.message)),
            );
        }
        problems
    }
}

fn generated() -> Plan {
    let policy = policy(
        json!([{"kind": "HTTPRoute", "name": "payments"}, {"kind": "Gateway", "name": "web", "sectionName": "https"}]),
        json!({"tokenSources": {"headers": [{"name": "X-Token"}], "cookies": ["access_token"]},
               "legacySession": {"cookie": "sid", "until": "2027-01-01T00:00:00Z"}}),
    );
    plan_of(&policy, Vec::new())
}

#[test]
fn the_security_policy_is_what_envoy_gateways_crd_accepts() {
    let schema = crds::schema("securitypolicies.gateway.envoyproxy.io.yaml", "v1alpha1");
    assert_eq!(
        crds::rules(&schema),
        175,
        "every rule of the CRD compiles and runs"
    );
    let security_policy = generated().security_policy.unwrap();
    assert_eq!(
        crds::problems(&schema, &security_policy),
        Vec::<String>::new()
    );

    // The check is not blind: a misspelt field, and a rule broken (both path and
    // pathOverride; a target of a kind Envoy Gateway does not take) are refused.
    let mut misspelt = security_policy.clone();
    let http = misspelt["spec"]["extAuth"]["http"].as_object_mut().unwrap();
    let headers = http.remove("headersToBackend").unwrap();
    http.insert("headersToBackends".into(), headers);
    let problems = crds::problems(&schema, &misspelt);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("headersToBackends") && p.contains("unknown field")),
        "{problems:?}"
    );

    let mut both = security_policy.clone();
    both["spec"]["extAuth"]["http"]["pathOverride"] = json!("/authz/shop/payments");
    let problems = crds::problems(&schema, &both);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("only one of path or pathOverride")),
        "{problems:?}"
    );

    let mut service_target = security_policy;
    service_target["spec"]["targetRefs"][0] = json!({"group": "", "kind": "Service", "name": "x"});
    let problems = crds::problems(&schema, &service_target);
    assert!(
        problems.iter().any(|p| p.contains("targetRefs[*].group")),
        "{problems:?}"
    );
}

/// [`generated`]'s policy, asked over gRPC.
fn generated_grpc() -> Plan {
    let policy = policy(
        json!([{"kind": "HTTPRoute", "name": "payments"}, {"kind": "Gateway", "name": "web", "sectionName": "https"}]),
        json!({"tokenSources": {"headers": [{"name": "X-Token"}], "cookies": ["access_token"]},
               "legacySession": {"cookie": "sid", "until": "2027-01-01T00:00:00Z"}}),
    );
    let grpc = AuthzService {
        protocol: Protocol::Grpc,
        ..service()
    };
    plan(
        &policy,
        &topology(),
        &[Implementation::EnvoyGateway],
        &grpc,
        &writer(),
        |_| Vec::new(),
    )
}

#[test]
fn over_grpc_the_security_policy_names_the_policy_only_in_its_context_extension() {
    let http = generated();
    let grpc = generated_grpc();
    let security_policy = grpc.security_policy.unwrap();
    let ext_auth = &security_policy["spec"]["extAuth"];
    assert_eq!(
        ext_auth["grpc"],
        json!({"backendRefs": [{"name": "authplane", "namespace": "authplane-system", "port": 9191}]})
    );
    assert_eq!(
        ext_auth["contextExtensions"],
        json!([{"name": "authplane.io/policy", "type": "Value", "value": "shop/payments"}])
    );
    assert_eq!(ext_auth["failOpen"], false);
    assert!(ext_auth.get("http").is_none(), "{ext_auth}");
    // The same headers reach the decision as over HTTP (Envoy Gateway's allow-list
    // applies to both); nothing to list for the backend: the answer says it.
    let http_ext_auth = &http.security_policy.as_ref().unwrap()["spec"]["extAuth"];
    assert_eq!(
        ext_auth["headersToExtAuth"],
        http_ext_auth["headersToExtAuth"]
    );
    // The policy is named once, in the context extension: no path, no header.
    let spec = security_policy["spec"].to_string();
    assert_eq!(spec.matches("shop/payments").count(), 1, "{spec}");
    assert!(!spec.contains("/authz"), "{spec}");
    // Everything else is as over HTTP: targets, metadata, and the ReferenceGrant, which
    // lets the SecurityPolicies reach the Service by name, whatever its port.
    let http_policy = http.security_policy.unwrap();
    assert_eq!(security_policy["metadata"], http_policy["metadata"]);
    assert_eq!(
        security_policy["spec"]["targetRefs"],
        http_policy["spec"]["targetRefs"]
    );
    assert_eq!(grpc.reference_grant, http.reference_grant);
    assert_eq!(
        grpc.reference_grant.unwrap()["spec"]["to"],
        json!([{"group": "", "kind": "Service", "name": "authplane"}])
    );
}

#[test]
fn the_grpc_security_policy_is_what_envoy_gateways_crd_accepts() {
    let schema = crds::schema("securitypolicies.gateway.envoyproxy.io.yaml", "v1alpha1");
    crds::rules(&schema);
    let security_policy = generated_grpc().security_policy.unwrap();
    assert_eq!(
        crds::problems(&schema, &security_policy),
        Vec::<String>::new()
    );

    // Not blind: an extension without its value, both protocols, or headersToBackend
    // (an HTTP field) under grpc are refused.
    let mut valueless = security_policy.clone();
    valueless["spec"]["extAuth"]["contextExtensions"][0]
        .as_object_mut()
        .unwrap()
        .remove("value");
    let problems = crds::problems(&schema, &valueless);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Exactly one of value or valueRef")),
        "{problems:?}"
    );

    let mut both = security_policy.clone();
    both["spec"]["extAuth"]["http"] =
        generated().security_policy.unwrap()["spec"]["extAuth"]["http"].clone();
    let problems = crds::problems(&schema, &both);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("only one of grpc or http")),
        "{problems:?}"
    );

    let mut misplaced = security_policy;
    misplaced["spec"]["extAuth"]["grpc"]["headersToBackend"] = json!(["x-auth-subject"]);
    let problems = crds::problems(&schema, &misplaced);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("headersToBackend") && p.contains("unknown field")),
        "{problems:?}"
    );
}

/// Istio's gRPC provider cannot name the policy, Traefik speaks HTTP only: choosing gRPC
/// changes only what Envoy Gateway gets.
#[test]
fn istio_and_traefik_stay_on_http_when_grpc_is_chosen() {
    let policy = policy(json!([{"kind": "Gateway", "name": "mesh"}]), json!({}));
    let grpc = AuthzService {
        protocol: Protocol::Grpc,
        ..service()
    };
    let provider = expected_provider(&policy, &grpc);
    assert_eq!(provider, expected_provider(&policy, &service()));
    assert!(provider.to_string().contains("8080"), "{provider}");
    assert!(!provider.to_string().contains("9191"), "{provider}");
    let middleware = middleware(&policy, &grpc, &writer());
    assert_eq!(
        middleware,
        super::middleware(&policy, &service(), &writer())
    );
    assert!(
        middleware.to_string().contains(":8080/authz/shop/payments"),
        "{middleware}"
    );
}

#[test]
fn protocols_are_named_as_flags_and_values_name_them() {
    assert_eq!("grpc".parse::<Protocol>(), Ok(Protocol::Grpc));
    assert_eq!("http".parse::<Protocol>(), Ok(Protocol::Http));
    assert!("GRPC".parse::<Protocol>().is_err());
    assert_eq!(Protocol::default(), Protocol::Http);
}

#[test]
fn the_reference_grant_is_what_the_gateway_apis_crd_accepts() {
    let schema = crds::schema("referencegrants.gateway.networking.k8s.io.yaml", "v1beta1");
    // It has no CEL rules: its schema alone (the pattern of names, the enum of kinds).
    crds::rules(&schema);
    let grant = generated().reference_grant.unwrap();
    assert_eq!(crds::problems(&schema, &grant), Vec::<String>::new());
    let mut misspelt = grant;
    misspelt["spec"]["to"][0]["names"] = json!("authplane");
    let problems = crds::problems(&schema, &misspelt);
    assert!(problems.iter().any(|p| p.contains("names")), "{problems:?}");
}

/// What the CRD (and dev mode, and the admission webhook) refuses in a target: a
/// namespace (same namespace only), a group that is not the kind's, a section of a kind
/// that has none.
#[test]
fn a_target_elsewhere_or_of_a_wrong_group_is_refused() {
    use crate::api::{Validate, read_object};
    let manifest = |target: Value| {
        json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}], "targetRefs": [target]},
        })
    };
    let problems = |target: Value| -> Vec<String> {
        match read_object::<AuthPolicy>(&manifest(target)) {
            Ok(policy) => policy.validate().iter().map(ToString::to_string).collect(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    };
    assert_eq!(
        problems(
            json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "a", "sectionName": "rule-1"})
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(json!({"kind": "Deployment", "name": "a"})),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(json!({"group": "", "kind": "Service", "name": "a"})),
        Vec::<String>::new()
    );
    let elsewhere = problems(json!({"kind": "HTTPRoute", "name": "a", "namespace": "other"}));
    assert!(
        elsewhere
            .iter()
            .any(|p| p.contains("targetRefs[0].namespace") && p.contains("unknown field")),
        "{elsewhere:?}"
    );
    let group = problems(json!({"group": "apps", "kind": "HTTPRoute", "name": "a"}));
    assert!(
        group
            .iter()
            .any(|p| p.contains("targetRefs[0].group") && p.contains("the kind's")),
        "{group:?}"
    );
    let section = problems(json!({"kind": "Deployment", "name": "a", "sectionName": "x"}));
    assert!(
        section.iter().any(|p| p.contains("sectionName")),
        "{section:?}"
    );
    let bad_section =
        problems(json!({"kind": "Gateway", "name": "a", "sectionName": "Not_A_Name"}));
    assert!(
        bad_section.iter().any(|p| p.contains("sectionName")),
        "{bad_section:?}"
    );
    let kind = problems(json!({"kind": "TCPRoute", "name": "a"}));
    assert!(
        kind.iter().any(|p| p.contains("targetRefs[0].kind")),
        "{kind:?}"
    );
}

/// Traefik: a Middleware per policy, which the route's owner names in the route's
/// filters; the target is accepted once the route does.
fn traefik_plan(targets: Value) -> Plan {
    let mut topology = topology();
    topology.apply_class("traefik", "traefik.io/gateway-controller");
    topology.apply_gateway("shop", "edge", "traefik");
    let route = |filters: Value| {
        Route::from_object(
            "shop",
            &json!({"spec": {"parentRefs": [{"name": "edge"}],
            "rules": [{"filters": filters}]}}),
        )
    };
    let wired = route(json!([{"type": "ExtensionRef",
        "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "authplane-payments"}}]));
    assert!(wired.guarded_by(None, "authplane-payments"));
    topology.apply_route(TargetKind::HttpRoute, "shop", "ui", wired);
    topology.apply_route(TargetKind::HttpRoute, "shop", "plain", route(json!([])));
    plan(
        &policy(targets, json!({})),
        &topology,
        &[Implementation::Traefik],
        &service(),
        &writer(),
        |_| Vec::new(),
    )
}

#[test]
fn traefik_gets_a_middleware_that_the_route_names() {
    let plan = traefik_plan(json!([{"kind": "HTTPRoute", "name": "ui"},
                                   {"kind": "HTTPRoute", "name": "plain"},
                                   {"kind": "Gateway", "name": "edge"}]));
    assert_eq!(
        reasons(&plan),
        [Some("Accepted"), Some("Invalid"), Some("Invalid")]
    );
    let plain = &plan.outcomes[1].as_ref().unwrap().verdict().message;
    assert!(plain.contains("name: authplane-payments"), "{plain}");
    assert!(
        plan.outcomes[2]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("routes")
    );
    assert_eq!((plan.security_policy, plan.reference_grant), (None, None));
    let middleware = plan.middleware.unwrap();
    assert_eq!(middleware["metadata"]["name"], "authplane-payments");
    assert_eq!(middleware["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(
        middleware["spec"],
        json!({"forwardAuth": {
            "address": "http://authplane.authplane-system.svc:8080/authz/shop/payments",
            "trustForwardHeader": false,
            "authResponseHeaders": ["X-Auth-Email", "X-Auth-Subject", "X-Authplane-Audit"],
        }})
    );
}

#[test]
fn the_middleware_is_what_traefiks_crd_accepts() {
    let schema = crds::schema("middlewares.traefik.io.yaml", "v1alpha1");
    crds::rules(&schema);
    let middleware = traefik_plan(json!([{"kind": "HTTPRoute", "name": "ui"}]))
        .middleware
        .unwrap();
    assert_eq!(crds::problems(&schema, &middleware), Vec::<String>::new());
    let mut misspelt = middleware;
    let forward = misspelt["spec"]["forwardAuth"].as_object_mut().unwrap();
    let headers = forward.remove("authResponseHeaders").unwrap();
    forward.insert("authResponseHeader".into(), headers);
    let problems = crds::problems(&schema, &misspelt);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("authResponseHeader") && p.contains("unknown field")),
        "{problems:?}"
    );
}

/// A route is guarded only when every rule the target covers names the Middleware: one
/// rule with it and one without leaves the second open, and is not `Accepted`.
#[test]
fn traefik_accepts_a_route_only_when_each_targeted_rule_names_the_middleware() {
    let mut topology = topology();
    topology.apply_class("traefik", "traefik.io/gateway-controller");
    topology.apply_gateway("shop", "edge", "traefik");
    let filter = json!([{"type": "ExtensionRef",
        "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "authplane-payments"}}]);
    let half = Route::from_object(
        "shop",
        &json!({"spec": {"parentRefs": [{"name": "edge"}], "rules": [
            {"name": "guarded", "filters": filter},
            {"name": "open", "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}]}]}}),
    );
    topology.apply_route(TargetKind::HttpRoute, "shop", "half", half);
    let plan = plan(
        &policy(
            json!([{"kind": "HTTPRoute", "name": "half"},
                   {"kind": "HTTPRoute", "name": "half", "sectionName": "guarded"},
                   {"kind": "HTTPRoute", "name": "half", "sectionName": "open"},
                   {"kind": "HTTPRoute", "name": "half", "sectionName": "missing"}]),
            json!({}),
        ),
        &topology,
        &[Implementation::Traefik],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    assert_eq!(
        reasons(&plan),
        [
            Some("Invalid"),
            Some("Accepted"),
            Some("Invalid"),
            Some("TargetNotFound")
        ]
    );
    let whole = &plan.outcomes[0].as_ref().unwrap().verdict().message;
    assert!(whole.contains("each of the route's rules"), "{whole}");
}

/// A `sectionName` naming no rule of the route attaches to nothing: the target is not
/// found, and no SecurityPolicy is written for it.
#[test]
fn a_rule_that_the_route_does_not_have_is_not_found() {
    let mut topology = topology();
    let named = Route::from_object(
        "shop",
        &json!({"spec": {"parentRefs": [{"name": "web"}], "rules": [{"name": "api"}]}}),
    );
    topology.apply_route(TargetKind::HttpRoute, "shop", "named", named);
    let plan_for = |targets: Value| {
        plan(
            &policy(targets, json!({})),
            &topology,
            &[Implementation::EnvoyGateway],
            &service(),
            &writer(),
            |_| Vec::new(),
        )
    };
    let typo = plan_for(json!([{"kind": "HTTPRoute", "name": "named", "sectionName": "apl"}]));
    assert_eq!(reasons(&typo), [Some("TargetNotFound")]);
    assert!(
        typo.outcomes[0]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("no rule named apl")
    );
    assert_eq!(typo.security_policy, None);
    let rule = plan_for(json!([{"kind": "HTTPRoute", "name": "named", "sectionName": "api"}]));
    assert_eq!(reasons(&rule), [Some("Accepted")]);
    assert_eq!(
        rule.security_policy.unwrap()["spec"]["targetRefs"][0]["sectionName"],
        "api"
    );
}

/// Istio: an AuthorizationPolicy per policy on the Gateways it targets, naming the
/// policy's own extension provider.
fn istio_plan(targets: Value) -> Plan {
    plan(
        &policy(
            targets,
            json!({"tokenSources": {"headers": [{"name": "X-Token"}]}}),
        ),
        &topology(),
        &[Implementation::EnvoyGateway, Implementation::Istio],
        &service(),
        &writer(),
        |_| Vec::new(),
    )
}

#[test]
fn istio_gets_a_custom_authorization_policy_on_the_gateway() {
    let plan = istio_plan(json!([{"kind": "Gateway", "name": "mesh"},
                                 {"kind": "HTTPRoute", "name": "both"},
                                 {"kind": "Gateway", "name": "web"}]));
    assert_eq!(
        reasons(&plan),
        [Some("Accepted"), Some("Invalid"), Some("Accepted")]
    );
    // The route `both` is attached through its Envoy Gateway, not through Istio's.
    let both = plan.outcomes[1].as_ref().unwrap();
    assert_eq!(verdicts(both), [("mesh", "Invalid"), ("web", "Accepted")]);
    let route = both.verdict().message;
    assert!(
        route.starts_with("Gateway shop/mesh: Istio attaches")
            && route.contains("target its Gateway"),
        "{route}"
    );
    assert!(
        route.ends_with("; attached through Gateway shop/web"),
        "{route}"
    );
    let accepted = &plan.outcomes[0].as_ref().unwrap().verdict().message;
    assert!(
        accepted.contains("extension provider authplane.shop.payments"),
        "{accepted}"
    );
    let authorization_policy = plan.authorization_policy.unwrap();
    assert_eq!(
        authorization_policy["metadata"]["name"],
        "authplane-payments"
    );
    assert_eq!(authorization_policy["metadata"]["namespace"], "shop");
    assert_eq!(
        authorization_policy["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
    assert_eq!(
        authorization_policy["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "authplane", "authplane.io/instance": "default"})
    );
    assert_eq!(
        authorization_policy["spec"],
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mesh"}],
               "action": "CUSTOM",
               "provider": {"name": "authplane.shop.payments"},
               "rules": [{}]})
    );
    // The Envoy Gateway targets still get their SecurityPolicy, without the Istio one.
    let security_policy = plan.security_policy.unwrap();
    assert_eq!(
        security_policy["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "both"},
               {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}])
    );
    assert_eq!(
        plan.istio_provider.unwrap(),
        json!({"name": "authplane.shop.payments", "envoyExtAuthzHttp": {
            "service": "authplane.authplane-system.svc.cluster.local",
            "port": 8080,
            "pathPrefix": "/authz/shop/payments",
            "includeRequestHeadersInCheck": ["authorization", "x-forwarded-for", "x-real-ip", "x-token"],
            "headersToUpstreamOnAllow": ["x-auth-email", "x-auth-subject", "x-authplane-audit"],
            "headersToDownstreamOnDeny": ["www-authenticate", "x-authplane-reason"],
            "failOpen": false,
        }})
    );
}

#[test]
fn istio_takes_no_section_and_nothing_when_disabled_or_not_enabled() {
    let section = istio_plan(json!([{"kind": "Gateway", "name": "mesh", "sectionName": "https"}]));
    assert_eq!(reasons(&section), [Some("Invalid")]);
    assert!(
        section.outcomes[0]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("remove sectionName")
    );
    assert_eq!(section.authorization_policy, None);
    let not_enabled = plan_of(
        &policy(json!([{"kind": "Gateway", "name": "mesh"}]), json!({})),
        Vec::new(),
    );
    assert_eq!(reasons(&not_enabled), [Some("Invalid")]);
    assert_eq!(not_enabled.authorization_policy, None);
    let disabled = plan(
        &policy(
            json!([{"kind": "Gateway", "name": "mesh"}]),
            json!({"rollout": {"mode": "Disabled"}}),
        ),
        &topology(),
        &[Implementation::Istio],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    assert_eq!(reasons(&disabled), [Some("Disabled")]);
    assert_eq!(
        (disabled.authorization_policy, disabled.istio_provider),
        (None, None)
    );
}

#[test]
fn the_authorization_policy_is_what_istios_crd_accepts() {
    let schema = crds::schema("authorizationpolicies.security.istio.io.yaml", "v1");
    assert!(crds::rules(&schema) >= 2, "its CEL rules compile and run");
    let authorization_policy = istio_plan(json!([{"kind": "Gateway", "name": "mesh"}]))
        .authorization_policy
        .unwrap();
    assert_eq!(
        crds::problems(&schema, &authorization_policy),
        Vec::<String>::new()
    );
    // Not blind: a misspelt field, a target elsewhere, and a selector besides targetRefs.
    let mut misspelt = authorization_policy.clone();
    let spec = misspelt["spec"].as_object_mut().unwrap();
    let provider = spec.remove("provider").unwrap();
    spec.insert("providers".into(), provider);
    let problems = crds::problems(&schema, &misspelt);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("providers") && p.contains("unknown field")),
        "{problems:?}"
    );
    let mut elsewhere = authorization_policy.clone();
    elsewhere["spec"]["targetRefs"][0]["namespace"] = json!("other");
    let problems = crds::problems(&schema, &elsewhere);
    assert!(
        problems.iter().any(|p| p.contains("cross namespace")),
        "{problems:?}"
    );
    let mut both = authorization_policy;
    both["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
    let problems = crds::problems(&schema, &both);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("only one of targetRefs or selector")),
        "{problems:?}"
    );
}

#[test]
fn the_mesh_config_must_hold_the_policys_provider() {
    let expected = istio_plan(json!([{"kind": "Gateway", "name": "mesh"}]))
        .istio_provider
        .unwrap();
    let good = r#"
accessLogFile: /dev/stdout
extensionProviders:
- name: other
  envoyExtAuthzGrpc: {service: x.y.svc.cluster.local, port: 9000}
- name: authplane.shop.payments
  envoyExtAuthzHttp:
    service: authplane.authplane-system.svc.cluster.local
    port: 8080
    pathPrefix: /authz/shop/payments
    includeRequestHeadersInCheck: [Authorization, x-forwarded-for, x-real-ip, x-token, x-extra]
    headersToUpstreamOnAllow: [x-auth-email, x-auth-subject, x-authplane-audit]
    headersToDownstreamOnDeny: [www-authenticate, x-authplane-reason]
"#;
    assert_eq!(check_mesh_config(good, &expected), None);
    let short_service = good.replace(
        "authplane.authplane-system.svc.cluster.local",
        "authplane-system/authplane.authplane-system.svc",
    );
    assert_eq!(check_mesh_config(&short_service, &expected), None);

    let missing = check_mesh_config("extensionProviders: []", &expected).unwrap();
    assert!(
        missing.contains("no extension provider authplane.shop.payments")
            && missing.contains(r#""pathPrefix":"/authz/shop/payments""#),
        "{missing}"
    );
    let elsewhere = check_mesh_config(
        &good.replace("/authz/shop/payments", "/authz/shop/other"),
        &expected,
    )
    .unwrap();
    assert!(
        elsewhere.contains(r#"pathPrefix is "/authz/shop/other""#),
        "{elsewhere}"
    );
    let other_service = check_mesh_config(
        &good.replace("authplane.authplane-system", "evil.authplane-system"),
        &expected,
    )
    .unwrap();
    assert!(other_service.contains("service is"), "{other_service}");
    let identity = check_mesh_config(&good.replace("x-auth-email, ", ""), &expected).unwrap();
    assert!(
        identity.contains("headersToUpstreamOnAllow lacks x-auth-email"),
        "{identity}"
    );
    let open = check_mesh_config(
        &good.replace("port: 8080", "port: 8080\n    failOpen: true"),
        &expected,
    )
    .unwrap();
    assert!(open.contains("failOpen"), "{open}");
    assert!(
        check_mesh_config("extensionProviders: [", &expected)
            .unwrap()
            .contains("not YAML")
    );
}

/// GEP-713: a policy's status is per ancestor. A route whose parents are served by an
/// implementation authplane wires, one it does not know, and a Gateway that does not
/// exist is attached through the first only, and says so per Gateway; the target's own
/// condition names the first Gateway it is not attached through.
#[test]
fn each_gateway_of_a_route_has_its_own_verdict() {
    let mut topology = topology();
    topology.apply_class("legacy", "example.com/legacy-controller");
    topology.apply_gateway("shop", "legacy", "legacy");
    topology.apply_gateway("shop", "classless", "gone");
    let parents = |names: &[&str]| {
        let refs: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
        Route::from_object("shop", &json!({"spec": {"parentRefs": refs}}))
    };
    topology.apply_route(
        TargetKind::HttpRoute,
        "shop",
        "mixed",
        parents(&["web", "legacy"]),
    );
    topology.apply_route(
        TargetKind::HttpRoute,
        "shop",
        "orphaned",
        parents(&["web", "nowhere", "classless"]),
    );
    let plan = plan(
        &policy(
            json!([{"kind": "HTTPRoute", "name": "mixed"},
                   {"kind": "HTTPRoute", "name": "orphaned"},
                   {"kind": "HTTPRoute", "name": "payments"}]),
            json!({}),
        ),
        &topology,
        &[Implementation::EnvoyGateway],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    let mixed = plan.outcomes[0].as_ref().unwrap();
    assert_eq!(
        verdicts(mixed),
        [("legacy", "Invalid"), ("web", "Accepted")]
    );
    let legacy = &mixed.ancestors[0];
    assert_eq!(
        legacy.controller_name.as_deref(),
        Some("example.com/legacy-controller")
    );
    assert!(
        legacy.verdict.message.starts_with(
            "no implementation authplane writes for: controllerName example.com/legacy-controller;"
        ),
        "{}",
        legacy.verdict.message
    );
    assert!(
        legacy.verdict.message.contains("Wiring a gateway"),
        "says what to do: {}",
        legacy.verdict.message
    );
    assert!(
        mixed.ancestors[1]
            .verdict
            .message
            .contains("SecurityPolicy shop/authplane-payments")
    );
    let target = mixed.verdict();
    assert_eq!((target.accepted, target.reason), (false, "Invalid"));
    assert!(
        target
            .message
            .starts_with("Gateway shop/legacy: no implementation")
            && target
                .message
                .ends_with("; attached through Gateway shop/web"),
        "{}",
        target.message
    );

    let orphaned = plan.outcomes[1].as_ref().unwrap();
    assert_eq!(
        verdicts(orphaned),
        [
            ("classless", "Invalid"),
            ("nowhere", "TargetNotFound"),
            ("web", "Accepted")
        ]
    );
    assert!(
        orphaned.ancestors[0]
            .verdict
            .message
            .contains("GatewayClass gone does not exist"),
        "{}",
        orphaned.ancestors[0].verdict.message
    );
    assert!(
        orphaned.ancestors[1]
            .verdict
            .message
            .contains("the Gateway does not exist"),
        "{}",
        orphaned.ancestors[1].verdict.message
    );
    let target = orphaned.verdict();
    assert_eq!(target.reason, "Invalid", "the first Gateway not accepted");
    assert!(
        target
            .message
            .contains("not accepted through 1 more of its Gateways either"),
        "{}",
        target.message
    );

    // Accepted through every Gateway: the target is.
    let payments = plan.outcomes[2].as_ref().unwrap();
    assert_eq!(verdicts(payments), [("web", "Accepted")]);
    assert!(payments.verdict().accepted);

    // Written for the routes, as far as the Gateways accepting them go.
    assert_eq!(
        plan.security_policy.unwrap()["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "mixed"},
               {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orphaned"},
               {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"}])
    );
}

/// A verdict on the target itself (another policy holds it, the policy is Disabled, its
/// section does not exist) is every Gateway's.
#[test]
fn a_verdict_on_the_target_is_every_gateways() {
    let target = json!([{"kind": "HTTPRoute", "name": "both"}]);
    let older = Claim {
        created: "2025-01-01T00:00:00Z".parse().unwrap(),
        name: "shop/theirs".into(),
        what: "AuthPolicy shop/theirs".into(),
    };
    let conflicted = plan_of(&policy(target.clone(), json!({})), vec![older]);
    let outcome = conflicted.outcomes[0].as_ref().unwrap();
    assert_eq!(
        verdicts(outcome),
        [("mesh", "Conflicted"), ("web", "Conflicted")]
    );
    assert_eq!(
        outcome.verdict().message,
        "AuthPolicy shop/theirs holds it first"
    );
    assert_eq!(conflicted.security_policy, None);

    let disabled = plan_of(
        &policy(target, json!({"rollout": {"mode": "Disabled"}})),
        Vec::new(),
    );
    assert_eq!(
        verdicts(disabled.outcomes[0].as_ref().unwrap()),
        [("mesh", "Disabled"), ("web", "Disabled")]
    );
}

/// What the driver learns after the plan (the apiserver refused what was written for
/// one implementation) refuses the target through that implementation's Gateways only.
#[test]
fn a_refusal_touches_only_the_gateways_of_its_implementation() {
    let mut plan = plan(
        &policy(json!([{"kind": "HTTPRoute", "name": "both"}]), json!({})),
        &topology(),
        &[Implementation::EnvoyGateway, Implementation::Istio],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    let outcome = plan.outcomes[0].as_mut().unwrap();
    assert_eq!(outcome.implementations(), [Implementation::EnvoyGateway]);
    outcome.note(Implementation::EnvoyGateway, "noted");
    assert!(outcome.ancestors[1].verdict.message.ends_with("; noted"));
    outcome.refuse(
        Implementation::EnvoyGateway,
        reason::INVALID,
        "the apiserver refused SecurityPolicy shop/authplane-payments: denied",
    );
    assert_eq!(verdicts(outcome), [("mesh", "Invalid"), ("web", "Invalid")]);
    assert!(
        outcome.ancestors[0]
            .verdict
            .message
            .starts_with("Istio attaches"),
        "the other Gateway keeps its own reason: {}",
        outcome.ancestors[1].verdict.message
    );
    assert_eq!(outcome.implementations(), []);
}

/// A Gateway target's `sectionName` must name one of its listeners, a route target's one
/// of its rules; otherwise the target is not found, and the message names the section
/// and those that exist.
#[test]
fn a_section_that_does_not_exist_is_not_found() {
    let plan_for = |targets: Value| plan_of(&policy(targets, json!({})), Vec::new());
    let listener = plan_for(json!([{"kind": "Gateway", "name": "web", "sectionName": "https"}]));
    assert_eq!(reasons(&listener), [Some("Accepted")]);
    assert_eq!(
        listener.security_policy.unwrap()["spec"]["targetRefs"][0]["sectionName"],
        "https"
    );
    let typo = plan_for(json!([{"kind": "Gateway", "name": "web", "sectionName": "htps"}]));
    let outcome = typo.outcomes[0].as_ref().unwrap();
    assert_eq!(verdicts(outcome), [("web", "TargetNotFound")]);
    assert_eq!(
        outcome.verdict().message,
        "Gateway shop/web has no listener named htps: its listeners are http, https"
    );
    assert_eq!(typo.security_policy, None);
    // A route whose rules have no names has no section to target.
    let unnamed =
        plan_for(json!([{"kind": "HTTPRoute", "name": "payments", "sectionName": "api"}]));
    assert_eq!(
        unnamed.outcomes[0].as_ref().unwrap().verdict().message,
        "HTTPRoute shop/payments has no rule named api: none of its rules has a name"
    );
}

const KGATEWAY: &str = "kgateway.dev/kgateway";

/// kgateway: the Gateway `kgw` in `shop` (listener `https`) and the route `store` under it, whose rule is
/// named `api`; Envoy Gateway and kgateway enabled.
fn kgateway_plan(targets: Value, protocol: Protocol) -> Plan {
    let mut topology = topology();
    topology.apply_class("kgateway", KGATEWAY);
    topology.apply_gateway(
        "shop",
        "kgw",
        Gateway {
            class_name: "kgateway".to_owned(),
            listeners: vec!["https".to_owned()],
        },
    );
    let store = Route::from_object(
        "shop",
        &json!({"spec": {"parentRefs": [{"name": "kgw"}], "rules": [{"name": "api"}]}}),
    );
    topology.apply_route(TargetKind::HttpRoute, "shop", "store", store);
    let policy = policy(
        targets,
        json!({"tokenSources": {"cookies": ["access_token"]}}),
    );
    plan(
        &policy,
        &topology,
        &[Implementation::EnvoyGateway, Implementation::Kgateway],
        &AuthzService {
            protocol,
            ..service()
        },
        &writer(),
        |_| Vec::new(),
    )
}

fn kgateway_targets() -> Value {
    json!([{"kind": "HTTPRoute", "name": "store", "sectionName": "api"},
           {"kind": "Gateway", "name": "kgw", "sectionName": "https"}])
}

#[test]
fn kgateway_is_a_flag_value() {
    assert_eq!(
        "kgateway".parse::<Implementation>(),
        Ok(Implementation::Kgateway)
    );
    assert_eq!(
        Implementation::of_controller(KGATEWAY),
        Some(Implementation::Kgateway)
    );
}

#[test]
fn over_grpc_kgateway_names_the_policy_only_in_the_traffic_policys_context_extension() {
    let plan = kgateway_plan(kgateway_targets(), Protocol::Grpc);
    assert_eq!(reasons(&plan), [Some("Accepted"), Some("Accepted")]);
    assert!(
        plan.outcomes[0]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("TrafficPolicy shop/authplane-payments"),
        "{:?}",
        plan.outcomes[0]
    );
    let metadata = json!({
        "name": "authplane-payments", "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "authplane", "authplane.io/instance": "default"},
        "ownerReferences": [{"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy", "name": "payments",
                             "uid": "uid-1", "controller": true, "blockOwnerDeletion": false}],
    });
    assert_eq!(
        plan.gateway_extension,
        Some(json!({
            "apiVersion": "gateway.kgateway.dev/v1alpha1", "kind": "GatewayExtension",
            "metadata": metadata,
            "spec": {"extAuth": {"failOpen": false, "grpcService": {"backendRef":
                {"name": "authplane", "namespace": "authplane-system", "port": 9191}}}},
        }))
    );
    assert_eq!(
        plan.traffic_policy,
        Some(json!({
            "apiVersion": "gateway.kgateway.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": metadata,
            "spec": {
                "targetRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "store", "sectionName": "api"},
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "kgw", "sectionName": "https"}],
                "extAuth": {"extensionRef": {"name": "authplane-payments"},
                            "contextExtensions": {"authplane.io/policy": "shop/payments"}},
            },
        }))
    );
    // Nothing for Envoy Gateway, whose targets these are not; one ReferenceGrant for
    // the namespace, from both kinds enabled here, to authplane's Service only.
    assert_eq!(plan.security_policy, None);
    assert_eq!(
        plan.reference_grant.unwrap()["spec"],
        json!({"from": [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"},
                        {"group": "gateway.kgateway.dev", "kind": "GatewayExtension", "namespace": "shop"}],
               "to": [{"group": "", "kind": "Service", "name": "authplane"}]})
    );
}

#[test]
fn over_http_kgateway_names_the_policy_in_the_gateway_extensions_path() {
    let plan = kgateway_plan(kgateway_targets(), Protocol::Http);
    assert_eq!(reasons(&plan), [Some("Accepted"), Some("Accepted")]);
    let extension = plan.gateway_extension.unwrap();
    assert_eq!(
        extension["spec"],
        json!({"extAuth": {
            "failOpen": false,
            "headersToForward": ["authorization", "cookie", "x-forwarded-for", "x-real-ip"],
            "httpService": {
                "backendRef": {"name": "authplane", "namespace": "authplane-system", "port": 8080},
                "pathPrefix": "/authz/shop/payments",
                "authorizationResponse": {"headersToBackend": ["x-auth-email", "x-auth-subject", "x-authplane-audit"]},
            },
        }})
    );
    let traffic_policy = plan.traffic_policy.unwrap();
    assert_eq!(
        traffic_policy["spec"]["extAuth"],
        json!({"extensionRef": {"name": "authplane-payments"}})
    );
}

#[test]
fn kgateway_is_written_for_only_when_enabled_and_not_disabled() {
    let mut topology = topology();
    topology.apply_class("kgateway", KGATEWAY);
    topology.apply_gateway("shop", "kgw", "kgateway");
    let target = json!([{"kind": "Gateway", "name": "kgw"}]);
    let only_envoy = plan(
        &policy(target.clone(), json!({})),
        &topology,
        &[Implementation::EnvoyGateway],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    assert_eq!(reasons(&only_envoy), [Some("Invalid")]);
    let message = &only_envoy.outcomes[0].as_ref().unwrap().verdict().message;
    assert!(
        message.contains("kgateway is not enabled in this installation"),
        "{message}"
    );
    assert_eq!(only_envoy.gateway_extension, None);
    assert_eq!(only_envoy.traffic_policy, None);
    let disabled = plan(
        &policy(target, json!({"rollout": {"mode": "Disabled"}})),
        &topology,
        &[Implementation::Kgateway],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    assert_eq!(reasons(&disabled), [Some("Disabled")]);
    assert_eq!(disabled.gateway_extension, None);
    assert_eq!(disabled.traffic_policy, None);
    assert_eq!(disabled.reference_grant, None);
}

#[test]
fn an_older_policy_on_a_kgateway_target_wins() {
    let mut topology = topology();
    topology.apply_class("kgateway", KGATEWAY);
    topology.apply_gateway("shop", "kgw", "kgateway");
    let older = Claim {
        created: "2025-06-01T00:00:00Z".parse().unwrap(),
        name: "shop/theirs".into(),
        what: "TrafficPolicy shop/theirs".into(),
    };
    let plan = plan(
        &policy(json!([{"kind": "Gateway", "name": "kgw"}]), json!({})),
        &topology,
        &[Implementation::Kgateway],
        &service(),
        &writer(),
        |_| vec![older.clone()],
    );
    assert_eq!(reasons(&plan), [Some("Conflicted")]);
    assert!(
        plan.outcomes[0]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("TrafficPolicy shop/theirs holds it first")
    );
    assert_eq!(plan.traffic_policy, None);
    assert_eq!(plan.gateway_extension, None);
}

/// One TrafficPolicy holds every target, and its CRD takes 16: the 17th is refused
/// with the reason, not the whole TrafficPolicy by the apiserver.
#[test]
fn a_traffic_policy_takes_at_most_sixteen_targets() {
    let mut topology = topology();
    topology.apply_class("kgateway", KGATEWAY);
    let mut targets = Vec::new();
    for i in 0..17 {
        topology.apply_gateway("shop", &format!("kgw-{i}"), "kgateway");
        targets.push(json!({"kind": "Gateway", "name": format!("kgw-{i}")}));
    }
    // The same target twice takes one place.
    targets.push(json!({"kind": "Gateway", "name": "kgw-0"}));
    let plan = plan(
        &policy(Value::Array(targets), json!({})),
        &topology,
        &[Implementation::Kgateway],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    let reasons = reasons(&plan);
    assert_eq!(reasons[..16], [Some("Accepted"); 16]);
    assert_eq!(reasons[16], Some("Invalid"));
    assert_eq!(reasons[17], Some("Accepted"));
    assert!(
        plan.outcomes[16]
            .as_ref()
            .unwrap()
            .verdict()
            .message
            .contains("at most 16 targets")
    );
    let traffic_policy = plan.traffic_policy.unwrap();
    assert_eq!(
        traffic_policy["spec"]["targetRefs"]
            .as_array()
            .unwrap()
            .len(),
        MAX_TRAFFIC_POLICY_TARGETS
    );
}

/// The ReferenceGrant that lets GatewayExtensions reach authplane too.
#[test]
fn the_reference_grant_of_both_kinds_is_what_the_gateway_apis_crd_accepts() {
    let schema = crds::schema("referencegrants.gateway.networking.k8s.io.yaml", "v1beta1");
    let grant = kgateway_plan(kgateway_targets(), Protocol::Grpc)
        .reference_grant
        .unwrap();
    assert_eq!(crds::problems(&schema, &grant), Vec::<String>::new());
}

#[test]
fn a_partial_topology_is_not_listed_for_its_targets() {
    use std::collections::HashMap;
    let mut topology = GatewayTopology::default();
    topology.apply_class("eg", ENVOY);
    topology.apply_gateway("shop", "web", "eg");
    // Objects seen one by one are no complete list: a plan from them must not delete.
    assert!(!topology.listed_for(TargetKind::Gateway));
    topology.replace_classes(HashMap::from([("eg".into(), ENVOY.into())]));
    topology.replace_gateways(HashMap::from([(
        ("shop".into(), "web".into()),
        "eg".into(),
    )]));
    assert!(topology.listed_for(TargetKind::Gateway));
    assert!(!topology.listed_for(TargetKind::HttpRoute));
    topology.replace_routes(TargetKind::HttpRoute, HashMap::new());
    assert!(topology.listed_for(TargetKind::HttpRoute));
    assert!(!topology.listed_for(TargetKind::GrpcRoute));
    topology.clear();
    assert!(
        !topology.listed_for(TargetKind::Gateway),
        "a new term lists again"
    );
}

#[test]
fn a_route_with_a_parent_that_is_no_gateway_is_not_attached_as_a_whole() {
    let mut topology = topology();
    topology.apply_route(
        TargetKind::HttpRoute,
        "shop",
        "meshed",
        Route::from_object(
            "shop",
            &json!({"spec": {"parentRefs": [{"name": "web"},
                                            {"group": "", "kind": "Service", "name": "payments"}]}}),
        ),
    );
    let policy = policy(json!([{"kind": "HTTPRoute", "name": "meshed"}]), json!({}));
    let plan = plan(
        &policy,
        &topology,
        &[Implementation::EnvoyGateway],
        &service(),
        &writer(),
        |_| Vec::new(),
    );
    let outcome = plan.outcomes[0].as_ref().unwrap();
    // Written for `web`, which checks what comes through it...
    assert_eq!(verdicts(outcome), [("web", "Accepted")]);
    assert!(plan.security_policy.is_some());
    // ...but the mesh routes the same rules past every Gateway: not Accepted.
    let verdict = outcome.verdict();
    assert_eq!(verdict.reason, "Invalid");
    assert!(
        verdict
            .message
            .contains("Service shop/payments is no Gateway"),
        "{}",
        verdict.message
    );
}
