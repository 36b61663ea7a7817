//! Istio: an `AuthorizationPolicy` with `action: CUSTOM` per AuthPolicy, targeting the
//! Gateways it names, and naming an extension provider of the mesh config. The provider
//! (`meshConfig.extensionProviders`) is the cluster admin's, and its `pathPrefix` fixes
//! the decision path for every request it checks: so each AuthPolicy has a provider of
//! its own, named by convention ([`provider_name`]), which the admin adds
//! ([`expected_provider`] says what it must hold, [`check_mesh_config`] whether it does).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{AuthzService, Writer, envoy};
use crate::api::{AuthPolicy, TargetRef};

pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
pub const AUTHORIZATION_POLICY_API_VERSION: &str = "security.istio.io/v1";
pub const AUTHORIZATION_POLICY_KIND: &str = "AuthorizationPolicy";

/// The AuthorizationPolicy of the AuthPolicy `policy_name`: `authplane-<name>`, as its
/// SecurityPolicy and Middleware.
pub fn authorization_policy_name(policy_name: &str) -> String {
    envoy::security_policy_name(policy_name)
}

/// The extension provider of the AuthPolicy `namespace/name`: `authplane.<namespace>.<name>`.
/// Unambiguous (a namespace holds no dot), and bounded by the names (Istio sets no limit
/// of its own on a provider's name).
pub fn provider_name(namespace: &str, name: &str) -> String {
    format!("authplane.{namespace}.{name}")
}

/// The decision path of the AuthPolicy `namespace/name`; Envoy appends the request's path.
pub fn path_prefix(namespace: &str, name: &str) -> String {
    format!("/authz/{namespace}/{name}")
}

/// The AuthorizationPolicy that makes Istio's gateway ask authplane (through the
/// policy's extension provider) about every request to `targets`, all Gateways in the
/// policy's namespace (Istio refuses a reference to another namespace).
pub fn authorization_policy(policy: &AuthPolicy, targets: &[&TargetRef], writer: &Writer) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let target_refs: Vec<Value> = targets
        .iter()
        .map(|target| {
            json!({
                "group": target.kind.group(),
                "kind": target.kind.name(),
                "name": target.name,
            })
        })
        .collect();
    let mut metadata = json!({
        "name": authorization_policy_name(&name),
        "namespace": namespace,
        "labels": writer.labels(),
    });
    if let Some(owner) = envoy::owner_reference(policy) {
        metadata["ownerReferences"] = json!([owner]);
    }
    json!({
        "apiVersion": AUTHORIZATION_POLICY_API_VERSION,
        "kind": AUTHORIZATION_POLICY_KIND,
        "metadata": metadata,
        "spec": {
            "targetRefs": target_refs,
            "action": "CUSTOM",
            "provider": {"name": provider_name(&namespace, &name)},
            // One rule that matches every request: all of them are asked about.
            "rules": [{}],
        },
    })
}

/// The mesh config's extension provider the AuthPolicy needs, as the admin adds it
/// under `meshConfig.extensionProviders`.
pub fn expected_provider(policy: &AuthPolicy, service: &AuthzService) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    json!({
        "name": provider_name(&namespace, &name),
        "envoyExtAuthzHttp": {
            "service": format!("{}.{}.svc.cluster.local", service.name, service.namespace),
            "port": service.port,
            "pathPrefix": path_prefix(&namespace, &name),
            "includeRequestHeadersInCheck": envoy::headers_to_ext_auth(policy),
            "headersToUpstreamOnAllow": envoy::headers_to_backend(policy, true),
            "headersToDownstreamOnDeny": ["www-authenticate", "x-authplane-reason"],
            "failOpen": false,
        },
    })
}

/// What is wrong with the AuthPolicy's provider in the mesh config `mesh` (the YAML of
/// the `istio` ConfigMap's `mesh` key): `None` when it is there and sends requests to
/// authplane's decision path of this policy with the headers the decision reads and the
/// identity headers it answers; otherwise what to add or change.
pub fn check_mesh_config(mesh: &str, expected: &Value) -> Option<String> {
    let name = expected["name"].as_str().unwrap_or_default();
    let mesh: Value = match serde_yaml::from_str(mesh) {
        Ok(mesh) => mesh,
        Err(e) => return Some(format!("the mesh config is not YAML: {e}")),
    };
    let add = || {
        format!(
            "add the extension provider to meshConfig.extensionProviders: {}",
            serde_json::to_string(expected).unwrap_or_default()
        )
    };
    let Some(provider) = mesh
        .get("extensionProviders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    else {
        return Some(format!(
            "the mesh config has no extension provider {name}: {}",
            add()
        ));
    };
    let Some(http) = provider.get("envoyExtAuthzHttp") else {
        return Some(format!(
            "the extension provider {name} is not envoyExtAuthzHttp: {}",
            add()
        ));
    };
    let wanted = &expected["envoyExtAuthzHttp"];
    let mut wrong = Vec::new();
    let service = http.get("service").and_then(Value::as_str).unwrap_or("");
    if !same_service(service, wanted["service"].as_str().unwrap_or_default()) {
        wrong.push(format!("service is {service:?}, not {}", wanted["service"]));
    }
    if http.get("port").and_then(Value::as_u64) != wanted["port"].as_u64() {
        wrong.push(format!(
            "port is {}, not {}",
            http.get("port").unwrap_or(&Value::Null),
            wanted["port"]
        ));
    }
    let prefix = http.get("pathPrefix").and_then(Value::as_str).unwrap_or("");
    if prefix != wanted["pathPrefix"] {
        wrong.push(format!(
            "pathPrefix is {prefix:?}, not {}",
            wanted["pathPrefix"]
        ));
    }
    if http.get("failOpen").and_then(Value::as_bool) == Some(true) {
        wrong.push("failOpen is true: requests would pass when authplane is unreachable".into());
    }
    for list in [
        "includeRequestHeadersInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
    ] {
        let held: BTreeSet<String> = http
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect();
        let missing: Vec<&str> = wanted[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|h| !held.contains(*h))
            .collect();
        if !missing.is_empty() {
            wrong.push(format!("{list} lacks {}", missing.join(", ")));
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "the extension provider {name} of the mesh config is not authplane's for this policy ({}): {}",
            wrong.join("; "),
            add()
        )
    })
}

/// Whether Istio's `service` (`[<namespace>/]<hostname>`) names `wanted`
/// (`<name>.<namespace>.svc.cluster.local`), in any cluster domain or none.
fn same_service(service: &str, wanted: &str) -> bool {
    let host = service.rsplit('/').next().unwrap_or(service);
    // Another cluster domain than cluster.local is the same Service.
    let short = wanted.trim_end_matches(".cluster.local");
    host == short || host.starts_with(&format!("{short}."))
}
