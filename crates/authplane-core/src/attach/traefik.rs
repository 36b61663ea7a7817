//! Traefik: a `Middleware` with `forwardAuth` per AuthPolicy, in its namespace. Traefik
//! attaches a Middleware to a route through the route's own filters (an HTTPRoute
//! `ExtensionRef` filter), which are the route owner's: the operator never edits a route,
//! and reports the target accepted once the route names the Middleware.

use serde_json::{Value, json};

use super::{AuthzService, Writer, envoy};
use crate::api::AuthPolicy;

pub const MIDDLEWARE_API_VERSION: &str = "traefik.io/v1alpha1";
pub const TRAEFIK_GROUP: &str = "traefik.io";
pub const MIDDLEWARE_KIND: &str = "Middleware";

/// The Middleware of the AuthPolicy `policy_name`: the same name as its SecurityPolicy
/// would have (`authplane-<name>`).
pub fn middleware_name(policy_name: &str) -> String {
    envoy::security_policy_name(policy_name)
}

/// The Middleware that makes Traefik ask authplane about every request of the routes
/// that use it. Traefik sends the request's method, host and URI in `X-Forwarded-*`
/// (it sets them itself: `trustForwardHeader: false`) and every request header.
pub fn middleware(policy: &AuthPolicy, service: &AuthzService, writer: &Writer) -> Value {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut metadata = json!({
        "name": middleware_name(&name),
        "namespace": namespace,
        "labels": writer.labels(),
    });
    if let Some(owner) = envoy::owner_reference(policy) {
        metadata["ownerReferences"] = json!([owner]);
    }
    json!({
        "apiVersion": MIDDLEWARE_API_VERSION,
        "kind": MIDDLEWARE_KIND,
        "metadata": metadata,
        "spec": {
            "forwardAuth": {
                "address": format!(
                    "http://{}.{}.svc:{}/authz/{namespace}/{name}",
                    service.name, service.namespace, service.port
                ),
                "trustForwardHeader": false,
                "authResponseHeaders": envoy::headers_to_backend(policy, false),
            },
        },
    })
}
