//! Envoy Gateway: a `SecurityPolicy` with `extAuth` per AuthPolicy (HTTP, or gRPC with
//! the policy in a context extension), targeting the routes and Gateways it names, and a `ReferenceGrant` in authplane's namespace that
//! lets SecurityPolicies of the policy's namespace reach authplane's Service (without
//! it Envoy Gateway silently does not call us, and the apiserver accepts the policy
//! anyway).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{
    AuthzService, GRANT_NAMESPACE_LABEL, Implementation, POLICY_EXTENSION, Protocol, Writer,
    kgateway,
};
use crate::api::{AuthPolicy, TargetRef};

pub const ENVOY_GATEWAY_GROUP: &str = "gateway.envoyproxy.io";
pub const SECURITY_POLICY_API_VERSION: &str = "gateway.envoyproxy.io/v1alpha1";
pub const SECURITY_POLICY_KIND: &str = "SecurityPolicy";
/// v1beta1: served by every Gateway API release since v0.6, and still the stored version
/// in v1.6.1 (v1 is served only from v1.5).
pub const REFERENCE_GRANT_API_VERSION: &str = "gateway.networking.k8s.io/v1beta1";

/// Longest object name (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The SecurityPolicy of the AuthPolicy `policy_name`: `authplane-<name>`, shortened
/// with a hash of the whole name when that is too long.
pub fn security_policy_name(policy_name: &str) -> String {
    let name = format!("authplane-{policy_name}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = stable_hash(policy_name);
    // Names are ASCII (DNS subdomains): cutting at a byte is cutting at a character.
    let kept = &name[..MAX_NAME - 17];
    format!("{}-{hash:016x}", kept.trim_end_matches(['-', '.']))
}

fn stable_hash(text: &str) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    hasher.write(text.as_bytes());
    hasher.finish()
}

/// The AuthPolicy as the controlling owner of what is written for it: the garbage
/// collector deletes the object with the policy, and never waits for it.
pub(super) fn owner_reference(policy: &AuthPolicy) -> Option<Value> {
    Some(json!({
        "apiVersion": "authplane.io/v1alpha1",
        "kind": "AuthPolicy",
        "name": policy.metadata.name.clone().unwrap_or_default(),
        "uid": policy.metadata.uid.as_ref()?,
        "controller": true,
        "blockOwnerDeletion": false,
    }))
}

/// GEP-713 references to `targets` (in the policy's namespace, so without one), as
/// Envoy Gateway's and kgateway's policies take them.
pub(super) fn target_refs(targets: &[&TargetRef]) -> Vec<Value> {
    targets
        .iter()
        .map(|target| {
            let mut reference = json!({
                "group": target.kind.group(),
                "kind": target.kind.name(),
                "name": target.name,
            });
            if let Some(section) = &target.section_name {
                reference["sectionName"] = json!(section);
            }
            reference
        })
        .collect()
}

/// The metadata of an object authplane writes for `policy` under the name
/// `authplane-<policy>`, in the policy's namespace: our labels, and the policy as its
/// controlling owner.
pub(super) fn owned_metadata(policy: &AuthPolicy, writer: &Writer) -> Value {
    let mut metadata = json!({
        "name": security_policy_name(policy.metadata.name.as_deref().unwrap_or_default()),
        "namespace": policy.metadata.namespace.clone().unwrap_or_default(),
        "labels": writer.labels(),
    });
    if let Some(owner) = owner_reference(policy) {
        metadata["ownerReferences"] = json!([owner]);
    }
    metadata
}

/// The SecurityPolicy that makes Envoy Gateway ask authplane about every request to
/// `targets` (all in the policy's namespace), fail closed.
pub fn security_policy(
    policy: &AuthPolicy,
    targets: &[&TargetRef],
    service: &AuthzService,
    writer: &Writer,
) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let target_refs = target_refs(targets);
    let metadata = owned_metadata(policy, writer);
    let mut ext_auth = json!({
        "failOpen": false,
        "headersToExtAuth": headers_to_ext_auth(policy),
    });
    match service.protocol {
        Protocol::Http => {
            ext_auth["http"] = json!({
                "backendRefs": [{
                    "name": service.name,
                    "namespace": service.namespace,
                    "port": service.port,
                }],
                // Envoy appends the request's path: /authz/{ns}/{name}/{path}.
                "path": format!("/authz/{namespace}/{name}"),
                "headersToBackend": headers_to_backend(policy, true),
            });
        }
        // No headersToBackend (gRPC has none): Envoy applies what the answer says, and
        // authplane's answer sets each identity header and removes a client's copy.
        Protocol::Grpc => {
            ext_auth["grpc"] = json!({
                "backendRefs": [{
                    "name": service.name,
                    "namespace": service.namespace,
                    "port": service.grpc_port,
                }],
            });
            ext_auth["contextExtensions"] = json!([{
                "name": POLICY_EXTENSION,
                "type": "Value",
                "value": format!("{namespace}/{name}"),
            }]);
        }
    }
    json!({
        "apiVersion": SECURITY_POLICY_API_VERSION,
        "kind": SECURITY_POLICY_KIND,
        "metadata": metadata,
        "spec": {
            "targetRefs": target_refs,
            "extAuth": ext_auth,
        },
    })
}

/// The request headers the decision reads (Envoy sends an HTTP check only `Host`,
/// `Method`, `Path`, `Content-Length` and `Authorization` unless told more): the token
/// headers, the cookies (token cookies, the legacy session, a bucketing cookie), a
/// bucketing header, and the client address headers.
pub(super) fn headers_to_ext_auth(policy: &AuthPolicy) -> Vec<String> {
    let spec = &policy.spec;
    let mut headers: BTreeSet<String> = spec
        .token_sources
        .headers
        .iter()
        .map(|h| h.name.to_ascii_lowercase())
        .collect();
    headers.insert("authorization".into());
    let cookies = !spec.token_sources.cookies.is_empty()
        || spec.legacy_session.is_some()
        || spec.rollout.bucket_by.cookie.is_some();
    if cookies {
        headers.insert("cookie".into());
    }
    if let Some(header) = &spec.rollout.bucket_by.header {
        headers.insert(header.to_ascii_lowercase());
    }
    headers.extend(["x-forwarded-for".into(), "x-real-ip".into()]);
    headers.into_iter().collect()
}

/// The response headers of an allowed decision that reach the workload: the
/// `forwardClaims` headers, authplane's audit header, and during a migration
/// with an end, `Deprecation` and `Sunset`; lowercase (Envoy), or as written (Traefik).
pub(super) fn headers_to_backend(policy: &AuthPolicy, lowercase: bool) -> Vec<String> {
    let spec = &policy.spec;
    let mut headers: Vec<String> = spec.forward_claims.values().cloned().collect();
    // The audit header is answered on every pass (empty in force), so the gateway
    // overwrites a client's copy; the reason header only on refusals: not forwarded.
    headers.push("X-Authplane-Audit".into());
    if spec
        .legacy_session
        .as_ref()
        .is_some_and(|l| l.until.is_some())
    {
        headers.extend(["Deprecation".into(), "Sunset".into()]);
    }
    if lowercase {
        headers.iter_mut().for_each(|h| h.make_ascii_lowercase());
    }
    let unique: BTreeSet<String> = headers.into_iter().collect();
    unique.into_iter().collect()
}

/// The ReferenceGrant of the policies in `namespace`, in authplane's namespace.
pub fn reference_grant_name(namespace: &str, writer: &Writer) -> String {
    match writer.default_instance {
        true => format!("authplane-securitypolicies-{namespace}"),
        false => format!("authplane-{}-securitypolicies-{namespace}", writer.instance),
    }
}

/// Lets the objects of `namespace` that reach authplane for the `enabled`
/// implementations (Envoy Gateway's SecurityPolicies, kgateway's GatewayExtensions)
/// reference authplane's Service, and nothing else: one Service, by name, from one
/// namespace. One grant per namespace, the same whichever implementation a policy uses,
/// so that two policies of a namespace never pull it two ways.
pub fn reference_grant(
    namespace: &str,
    enabled: &[Implementation],
    service: &AuthzService,
    writer: &Writer,
) -> Value {
    let mut labels = writer.labels();
    labels.insert(GRANT_NAMESPACE_LABEL.into(), namespace.into());
    let from: Vec<Value> = [
        (
            Implementation::EnvoyGateway,
            ENVOY_GATEWAY_GROUP,
            SECURITY_POLICY_KIND,
        ),
        (
            Implementation::Kgateway,
            kgateway::KGATEWAY_GROUP,
            kgateway::GATEWAY_EXTENSION_KIND,
        ),
    ]
    .into_iter()
    .filter(|(implementation, ..)| enabled.contains(implementation))
    .map(|(_, group, kind)| json!({"group": group, "kind": kind, "namespace": namespace}))
    .collect();
    json!({
        "apiVersion": REFERENCE_GRANT_API_VERSION,
        "kind": "ReferenceGrant",
        "metadata": {
            "name": reference_grant_name(namespace, writer),
            "namespace": service.namespace,
            "labels": labels,
        },
        "spec": {
            "from": from,
            "to": [{"group": "", "kind": "Service", "name": service.name}],
        },
    })
}
