//! kgateway: per AuthPolicy, a `GatewayExtension` that says how to reach authplane (its
//! `extAuth` provider) and a `TrafficPolicy` with `extAuth` that attaches it to the
//! routes and Gateways the AuthPolicy names. Both in the policy's namespace; a
//! cross-namespace `backendRef` needs a ReferenceGrant in authplane's namespace from
//! GatewayExtensions of that namespace (kgateway enforces it for backendRefs in its
//! default `PERMISSIVE` mode), which [`super::reference_grant`] writes.
//!
//! How kgateway names the policy to authplane, so that no client can choose it:
//! - gRPC: the TrafficPolicy's `extAuth.contextExtensions` (Envoy's per-route
//!   `check_settings.context_extensions`), set by the route's configuration, which
//!   authplane writes: [`super::POLICY_EXTENSION`].
//! - HTTP: the GatewayExtension's `httpService.pathPrefix`, `/authz/{ns}/{name}`, before
//!   the request's path (Envoy's `path_prefix`): one GatewayExtension per policy.
//!
//! Fields relied on, checked against kgateway's CRDs (`gateway.kgateway.dev/v1alpha1`,
//! the only version served) of v2.2.0, v2.3.0 and main of 2026-08-20 (after v2.4.0):
//! GatewayExtension `spec.extAuth.{failOpen, headersToForward, grpcService.backendRef,
//! httpService.{backendRef, pathPrefix, authorizationResponse.headersToBackend}}` (HTTP
//! since v2.2; `spec.type` is deprecated and ignored since v2.2, so not set);
//! TrafficPolicy `spec.targetRefs[].{group, kind, name, sectionName}` (at most 16; a
//! GRPCRoute only since v2.3, v2.2 refuses the object) and
//! `spec.extAuth.{extensionRef.name, contextExtensions}`. Validated by hand against those
//! CRDs with this crate's validator (`tests.rs`, `crds`): they are not among the
//! published schemas the tests read.

use serde_json::{Value, json};

use super::{AuthzService, POLICY_EXTENSION, Protocol, Writer, envoy};
use crate::api::{AuthPolicy, TargetRef};

pub const KGATEWAY_GROUP: &str = "gateway.kgateway.dev";
pub const KGATEWAY_API_VERSION: &str = "gateway.kgateway.dev/v1alpha1";
pub const GATEWAY_EXTENSION_KIND: &str = "GatewayExtension";
pub const TRAFFIC_POLICY_KIND: &str = "TrafficPolicy";
/// The most targets a TrafficPolicy takes (its CRD's `maxItems`).
pub const MAX_TRAFFIC_POLICY_TARGETS: usize = 16;

/// The GatewayExtension and the TrafficPolicy of the AuthPolicy `policy_name`: named as
/// its SecurityPolicy would be (`authplane-<name>`).
pub fn kgateway_object_name(policy_name: &str) -> String {
    envoy::security_policy_name(policy_name)
}

/// The GatewayExtension through which kgateway asks authplane about the requests of
/// this policy's targets, fail closed.
pub fn gateway_extension(policy: &AuthPolicy, service: &AuthzService, writer: &Writer) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let ext_auth = match service.protocol {
        // Over gRPC Envoy sends every request header (no headersToForward), and applies
        // what the answer says: authplane sets each identity header and removes a
        // client's copy.
        Protocol::Grpc => json!({
            "failOpen": false,
            "grpcService": {
                "backendRef": {
                    "name": service.name,
                    "namespace": service.namespace,
                    "port": service.grpc_port,
                },
            },
        }),
        Protocol::Http => json!({
            "failOpen": false,
            // Over HTTP Envoy sends only Host, Method, Path, Content-Length and
            // Authorization unless told more.
            "headersToForward": envoy::headers_to_ext_auth(policy),
            "httpService": {
                "backendRef": {
                    "name": service.name,
                    "namespace": service.namespace,
                    "port": service.port,
                },
                // Envoy appends the request's path: /authz/{ns}/{name}/{path}.
                "pathPrefix": format!("/authz/{namespace}/{name}"),
                "authorizationResponse": {
                    "headersToBackend": envoy::headers_to_backend(policy, true),
                },
            },
        }),
    };
    json!({
        "apiVersion": KGATEWAY_API_VERSION,
        "kind": GATEWAY_EXTENSION_KIND,
        "metadata": envoy::owned_metadata(policy, writer),
        "spec": {"extAuth": ext_auth},
    })
}

/// The TrafficPolicy that attaches the policy's GatewayExtension to `targets` (all in
/// the policy's namespace, at most [`MAX_TRAFFIC_POLICY_TARGETS`]).
pub fn traffic_policy(
    policy: &AuthPolicy,
    targets: &[&TargetRef],
    service: &AuthzService,
    writer: &Writer,
) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let target_refs = envoy::target_refs(targets);
    let mut ext_auth = json!({"extensionRef": {"name": kgateway_object_name(&name)}});
    // An HTTP check carries no context extension: its path names the policy.
    if service.protocol == Protocol::Grpc {
        ext_auth["contextExtensions"] = json!({POLICY_EXTENSION: format!("{namespace}/{name}")});
    }
    json!({
        "apiVersion": KGATEWAY_API_VERSION,
        "kind": TRAFFIC_POLICY_KIND,
        "metadata": envoy::owned_metadata(policy, writer),
        "spec": {
            "targetRefs": target_refs,
            "extAuth": ext_auth,
        },
    })
}
