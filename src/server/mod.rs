//! The embedded HTTP server: small handlers over the registry.

mod admission;
mod authz;
pub mod body;
pub mod client_address;
mod client_basic;
pub mod deadlines;
pub mod grpc;
mod health;
pub mod limits;
pub mod listen;
mod overview;
mod page;
pub mod rate_limit;
pub mod refresh_cookie;
pub mod revoke;
pub mod runtime;
mod sessions;
pub mod shared_limits;
mod status;
pub mod token;
mod tokenreview;
mod wellknown;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::admission::SigningKeyIndex;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::tls::CertSlot;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// This server's own base URL, for the URLs reported in status.
    pub base_url: Arc<str>,
    /// Which SigningKeys exist, for the admission webhook's `signingKeyRef` check.
    pub signing_keys: Arc<dyn SigningKeyIndex>,
    /// The HTTPS certificate, when this process serves HTTPS: not ready without one.
    pub tls: Option<Arc<CertSlot>>,
    /// `POST {issuer}/revoke`: where Revocations are written, and the rate limit. `None`:
    /// not served (404).
    pub revoke: Option<Arc<revoke::RevokeEndpoint>>,
    /// `POST {issuer}/token`: the token endpoint's store and client authentication.
    /// `None`: not served (404).
    pub token: Option<Arc<token::TokenEndpoint>>,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// JWKS, discovery, decisions, TokenReview, revocation and health; status and metrics
    /// too unless an [`Endpoints::Admin`] listener serves them.
    Public,
    /// The same plus `POST /validate`, the admission webhook.
    WithAdmission,
    /// Status (the status page too), metrics and health only (`--admin-listen`): what
    /// shows configuration and internal URLs, kept off the listeners that gateways and
    /// verifiers reach; and the sessions of a subject, served nowhere else.
    Admin,
    /// Envoy's gRPC ext_authz `Check` only, HTTP/2 (`--grpc-listen`, [`grpc`]).
    GrpcExtAuthz,
}

/// What an HTTP listener serves: its router, and the state to decide with when it
/// answers decisions, which the connection then answers without the router (see
/// [`listen`]; routing them through axum cost more than a cached decision's checks).
#[derive(Clone)]
pub struct App {
    pub router: Router,
    pub decisions: Option<Arc<AppState>>,
}

impl From<Router> for App {
    /// Everything through the router, decisions too.
    fn from(router: Router) -> Self {
        Self {
            router,
            decisions: None,
        }
    }
}

/// The [`App`] of one listener: [`router_for`], and decisions unless it is the admin
/// listener.
pub fn app_for(state: AppState, endpoints: Endpoints, admin_elsewhere: bool) -> App {
    let decisions = match endpoints {
        Endpoints::Admin | Endpoints::GrpcExtAuthz => None,
        Endpoints::Public | Endpoints::WithAdmission => Some(Arc::new(state.clone())),
    };
    App {
        router: router_for(state, endpoints, admin_elsewhere),
        decisions,
    }
}

/// The router of a listener serving every endpoint of its kind, status and metrics
/// included.
pub fn router(state: AppState, endpoints: Endpoints) -> Router {
    router_for(state, endpoints, false)
}

/// The router of one listener; with `admin_elsewhere`, status and metrics are left to the
/// admin listener.
pub fn router_for(state: AppState, endpoints: Endpoints, admin_elsewhere: bool) -> Router {
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let admin = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/status/{namespace}/{name}", get(status::policy_status))
        // The status page and the document it polls: read-only, GET only.
        .route("/status", get(overview::overview))
        .route("/ui", get(page::html))
        .route("/ui/app.js", get(page::script))
        .route("/ui/style.css", get(page::style));
    if endpoints == Endpoints::Admin {
        // The sessions of a subject: on the admin listener only, never on a public one
        // (not even when no admin listener takes status and metrics).
        let admin = admin.route(
            "/sessions/{namespace}/{name}",
            get(sessions::sessions).post(sessions::sessions),
        );
        return health.merge(admin).with_state(Arc::new(state));
    }
    // `/authz/...` is not a route: the fallback matches it first (see
    // `authz::decision_path`).
    let router = health.route(
        "/tokenreview/{namespace}/{name}",
        post(tokenreview::review).layer(from_fn(body::buffered::<{ tokenreview::MAX_BODY_BYTES }>)),
    );
    let router = match admin_elsewhere {
        true => router,
        false => router.merge(admin),
    };
    let router = match endpoints {
        Endpoints::WithAdmission => router.route(
            "/validate",
            post(admission::validate)
                .layer(from_fn(body::buffered::<{ admission::MAX_BODY_BYTES }>)),
        ),
        _ => router,
    };
    // One shared state: axum clones it per request, and one Arc is cheaper than six.
    router.fallback(unrouted).with_state(Arc::new(state))
}

/// Every path no route takes: decisions (`/authz/...`), then issuer paths, which are data,
/// not code: discovery and JWKS are found by suffix.
async fn unrouted(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    match authz::decision_path(request.uri().path()) {
        Some(target) => authz::answer(&state, target, request.headers()).await,
        // Boxed: a large future, which would otherwise be moved with every decision's.
        None => Box::pin(issuer_documents(state, request)).await,
    }
}

/// Everything under an issuer's path: `POST {issuer}/revoke` and `POST {issuer}/token`,
/// else discovery and JWKS.
async fn issuer_documents(
    state: Arc<AppState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let (issuer_path, limit, endpoint) =
        if let Some(issuer_path) = path.strip_suffix(revoke::REVOKE_SUFFIX) {
            (issuer_path, revoke::MAX_BODY_BYTES, IssuerEndpoint::Revoke)
        } else if let Some(issuer_path) = path.strip_suffix(token::TOKEN_SUFFIX) {
            (issuer_path, token::MAX_BODY_BYTES, IssuerEndpoint::Token)
        } else {
            return wellknown::serve(
                axum::extract::State(state),
                parts.method,
                parts.uri,
                parts.headers,
            )
            .await;
        };
    if parts.method != axum::http::Method::POST {
        return (
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            [(axum::http::header::ALLOW, "POST")],
            "only POST\n",
        )
            .into_response();
    }
    let connection = listen::connection();
    let timeout = connection.map_or(limits::DEFAULT_BODY_TIMEOUT, |c| c.limits.body_timeout);
    let body = match body::read(body, limit, timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let peer = connection.map(|c| c.peer);
    match endpoint {
        IssuerEndpoint::Revoke => {
            revoke::revoke(state, issuer_path, &parts.headers, peer, body).await
        }
        IssuerEndpoint::Token => token::token(state, issuer_path, &parts.headers, peer, body).await,
    }
}

/// The POST endpoints under an issuer's path.
enum IssuerEndpoint {
    Revoke,
    Token,
}

/// Serves plain HTTP with the default [`limits::Limits`] until `shutdown` resolves, then
/// lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, app, None, limits::Limits::default(), shutdown).await
}

/// The issuer served at `issuer_path` (a trailing slash ignored), for the endpoints under
/// it that act on its behalf (`/token`, `/revoke`).
fn served_issuer(
    state: &AppState,
    issuer_path: &str,
) -> Option<Arc<crate::registry::PublishedIssuer>> {
    state
        .registry
        .load()
        .issuers
        .get(issuer_path.trim_end_matches('/'))
        .cloned()
}

/// What those endpoints answer where no issuer is served.
fn no_issuer_at(issuer_path: &str) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::NOT_FOUND,
        format!("no issuer is served at {issuer_path:?}\n"),
    )
        .into_response()
}
