//! Policy attachment: an AuthPolicy whose `targetRefs` name a Gateway API Gateway,
//! HTTPRoute or GRPCRoute gets the gateway's own configuration written for it, pointing
//! at authplane's decision path. Pure: the drivers feed the Gateway API objects they
//! watch into a [`GatewayTopology`], and [`plan`] says, for one policy, which objects
//! to hold and what each target's status is. Writing them (server-side apply, the
//! lease, ownership checks against what the apiserver holds) is the driver's.
//!
//! Which gateway implementation serves a target comes from the Gateway API itself: a
//! route's `parentRefs` name Gateways, a Gateway names its GatewayClass, and the class's
//! `spec.controllerName` names the implementation.

mod envoy;
mod istio;
mod kgateway;
mod plan;
mod topology;
mod traefik;

pub use envoy::{
    ENVOY_GATEWAY_GROUP, REFERENCE_GRANT_API_VERSION, SECURITY_POLICY_API_VERSION,
    SECURITY_POLICY_KIND, reference_grant, reference_grant_name, security_policy,
    security_policy_name,
};
pub use istio::{
    AUTHORIZATION_POLICY_API_VERSION, AUTHORIZATION_POLICY_KIND, ISTIO_SECURITY_GROUP,
    authorization_policy, authorization_policy_name, check_mesh_config, expected_provider,
    path_prefix, provider_name,
};
pub use kgateway::{
    GATEWAY_EXTENSION_KIND, KGATEWAY_API_VERSION, KGATEWAY_GROUP, MAX_TRAFFIC_POLICY_TARGETS,
    TRAFFIC_POLICY_KIND, gateway_extension, kgateway_object_name, traffic_policy,
};
pub use plan::{AncestorOutcome, Claim, Outcome, Plan, Verdict, plan, reason};
pub use topology::{Ancestor, Gateway, GatewayTopology, ParentRef, Route, RuleMiddlewares};
pub use traefik::{
    MIDDLEWARE_API_VERSION, MIDDLEWARE_KIND, TRAEFIK_GROUP, middleware, middleware_name,
};

/// The label every object authplane writes carries, as Kubernetes recommends.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "authplane");
/// The label naming the authplane instance an object belongs to.
pub const INSTANCE_LABEL: &str = "authplane.io/instance";
/// On a ReferenceGrant: the namespace whose policies it lets reach authplane.
pub const GRANT_NAMESPACE_LABEL: &str = "authplane.io/grant-namespace";

/// A gateway implementation, told by its GatewayClass's `controllerName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Implementation {
    EnvoyGateway,
    Istio,
    Traefik,
    Kgateway,
}

impl Implementation {
    /// The implementation whose controller is `controller_name`, if authplane knows it.
    pub fn of_controller(controller_name: &str) -> Option<Self> {
        match controller_name {
            "gateway.envoyproxy.io/gatewayclass-controller" => Some(Self::EnvoyGateway),
            "istio.io/gateway-controller" => Some(Self::Istio),
            "traefik.io/gateway-controller" => Some(Self::Traefik),
            "kgateway.dev/kgateway" => Some(Self::Kgateway),
            _ => None,
        }
    }

    /// As flags, values and status messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::EnvoyGateway => "envoy-gateway",
            Self::Istio => "istio",
            Self::Traefik => "traefik",
            Self::Kgateway => "kgateway",
        }
    }
}

/// The implementations authplane writes configuration for.
pub const WRITTEN: [Implementation; 4] = [
    Implementation::EnvoyGateway,
    Implementation::Istio,
    Implementation::Traefik,
    Implementation::Kgateway,
];

impl std::str::FromStr for Implementation {
    type Err = String;

    /// Only those authplane writes for: naming another would leave its targets
    /// reported as attached with nothing written.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WRITTEN.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            let known: Vec<&str> = WRITTEN.iter().map(|i| i.name()).collect();
            format!(
                "{s:?} is not a gateway implementation authplane writes for: {}",
                known.join(", ")
            )
        })
    }
}

/// How an Envoy-based gateway (Envoy Gateway, kgateway) asks authplane for a decision.
/// Istio's gRPC provider cannot name the policy (it sets no context extension), and
/// Traefik speaks HTTP only: both always use HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /authz/{namespace}/{name}/{original path}`.
    #[default]
    Http,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` over HTTP/2, the policy named
    /// in the context extension [`POLICY_EXTENSION`].
    Grpc,
}

impl Protocol {
    /// As flags and values name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Http, Self::Grpc]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?} is not a protocol: http or grpc"))
    }
}

/// The context extension of a gRPC check that names the policy, `namespace/name`. Set
/// by the route's configuration (which authplane writes), never by the client: a
/// check's headers and path are the client's.
pub const POLICY_EXTENSION: &str = "authplane.io/policy";

/// Where gateways reach authplane: its Service, as the chart installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzService {
    pub namespace: String,
    pub name: String,
    /// The port serving `/authz` (plain HTTP).
    pub port: u16,
    /// The port serving gRPC `Check` (h2c), used with [`Protocol::Grpc`].
    pub grpc_port: u16,
    /// How Envoy Gateway and kgateway ask.
    pub protocol: Protocol,
}

/// Who writes: the labels every generated object carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The authplane instance (`authplane.io/instance`).
    pub instance: String,
    /// Whether the instance is the default one, whose names carry no instance part.
    pub default_instance: bool,
}

impl Writer {
    fn labels(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut labels = serde_json::Map::new();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        labels.insert(INSTANCE_LABEL.into(), self.instance.clone().into());
        labels
    }
}

#[cfg(test)]
mod tests;
