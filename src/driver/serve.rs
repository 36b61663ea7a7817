//! The serving half, started the same way by both drivers: bind with a deep backlog,
//! load the certificate before anything is served (a bad one fails the start), serve
//! the same router over the same registry on each listener, and stop together, letting
//! open requests finish. What differs between the drivers is only which listeners they
//! ask for and where a certificate comes from.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::builder::TypedValueParser as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::server::limits::Limits;
use crate::server::{self, AppState, Endpoints};
use crate::tls::files::TlsFiles;
use crate::tls::{self, CertSlot, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// How the serving half treats clients, the same for both drivers.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The limits of every listener.
    pub limits: Limits,
    /// Proxies in front of authplane (an ingress, a load balancer) whose
    /// `X-Forwarded-For` entries name the client, for limits per client address.
    pub trusted_proxies: crate::server::client_address::TrustedProxies,
    /// What AuthPolicies may make authplane fetch (external issuers), and how often.
    pub fetch: crate::external::FetchSettings,
    /// Where Envoy's gRPC ext_authz is served (HTTP/2, plain); nowhere when `None`.
    pub grpc_listen: Option<SocketAddr>,
}

/// The flags of [`Settings`], shared by `run` and `dev`.
#[derive(clap::Args, Clone, Debug)]
pub struct SettingsFlags {
    #[command(flatten)]
    pub limits: crate::server::limits::LimitFlags,
    /// Proxies in front of authplane whose X-Forwarded-For entries are believed: the
    /// client is the entry the outermost of them appended (0: the peer's address).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// Address ranges of proxies in front of authplane (comma-separated CIDRs or
    /// addresses, IPv4 and IPv6): from a peer in them, X-Forwarded-For is walked from the
    /// right past every entry in them, and the first other entry is the client. Not with
    /// --trusted-proxy-hops.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',',
          conflicts_with = "trusted_proxy_hops",
          value_parser = crate::server::client_address::parse_range)]
    pub trusted_proxy_cidrs: Vec<ipnet::IpNet>,
    /// The least time between two fetches of an external issuer's key set, whatever an
    /// AuthPolicy's refresh.minInterval says.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = crate::server::limits::positive_duration)]
    pub external_refresh_floor: std::time::Duration,
    /// External issuers (issuer, JWKS URL and refresh settings) the AuthPolicies of one
    /// namespace may use together; a policy that would add more is not served.
    #[arg(long, value_name = "N", default_value_t = crate::external::DEFAULT_MAX_PER_NAMESPACE,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_external_issuers_per_namespace: usize,
    /// Let external issuers' URLs lead to link-local addresses (169.254.0.0/16, fe80::/10,
    /// cloud metadata), which are refused otherwise.
    #[arg(long)]
    pub allow_link_local_issuers: bool,
    /// Address to serve Envoy's gRPC external authorization on
    /// (envoy.service.auth.v3.Authorization/Check, HTTP/2 without TLS); the route names
    /// the policy in the context extension authplane.io/policy.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::cli::flags::listen_addr)]
    pub grpc_listen: Option<SocketAddr>,
}

impl SettingsFlags {
    pub fn settings(&self) -> Settings {
        Settings {
            limits: self.limits.limits(),
            trusted_proxies: crate::server::client_address::TrustedProxies::of(
                self.trusted_proxy_hops,
                &self.trusted_proxy_cidrs,
            ),
            fetch: crate::external::FetchSettings {
                allow_loopback: false,
                allow_link_local: self.allow_link_local_issuers,
                refresh_floor: self.external_refresh_floor,
                max_per_namespace: self.max_external_issuers_per_namespace,
            },
            grpc_listen: self.grpc_listen,
        }
    }
}

/// A bound socket and what it serves.
pub struct Listener {
    pub socket: TcpListener,
    pub endpoints: Endpoints,
    /// HTTPS with this certificate; plain HTTP when `None`.
    pub tls: Option<Arc<CertSlot>>,
    /// With HTTPS: clients must present a certificate of one of these CAs.
    pub client_cas: Option<Arc<rustls::RootCertStore>>,
}

/// The gRPC ext_authz listener of `settings`, bound, when it asks for one.
pub fn grpc_listener(settings: &Settings) -> Result<Option<Listener>, ServeError> {
    let Some(addr) = settings.grpc_listen else {
        return Ok(None);
    };
    Ok(Some(Listener {
        socket: bind(addr)?,
        endpoints: Endpoints::GrpcExtAuthz,
        tls: None,
        client_cas: None,
    }))
}

/// Binds `addr` with [`server::listen::LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    server::listen::bind(addr).map_err(|e| ServeError::Listen(addr, e))
}

/// A certificate read from PEM files and reloaded when they change, until `stop`.
/// Returns once the first one is loaded: a bad certificate fails the start.
pub async fn certificate_from_files(
    files: TlsFiles,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<Arc<CertSlot>, TlsError> {
    let slot = Arc::new(CertSlot::default());
    // The reload task ends with `stop`.
    tls::files::watch(files, slot.clone(), metrics, stop).await?;
    Ok(slot)
}

/// The servers, running until `stop` turns true.
pub struct Serving(Vec<JoinHandle<std::io::Result<()>>>);

/// Serves `state` on every listener, each under `limits`, until `stop` turns true. With
/// an admin listener among them, status and metrics are served there only.
pub fn start(
    state: AppState,
    listeners: Vec<Listener>,
    limits: Limits,
    stop: &watch::Receiver<bool>,
) -> Result<Serving, ServeError> {
    let admin_elsewhere = listeners.iter().any(|l| l.endpoints == Endpoints::Admin);
    let mut servers = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let mut stop = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if listener.endpoints == Endpoints::GrpcExtAuthz {
            servers.push(tokio::spawn(server::grpc::serve(
                listener.socket,
                Arc::new(state.clone()),
                limits,
                stopped,
            )));
            continue;
        }
        let app = server::app_for(state.clone(), listener.endpoints, admin_elsewhere);
        let tls = match listener.tls {
            Some(slot) => Some(tls::server_config_for_clients(slot, listener.client_cas)?),
            None => None,
        };
        servers.push(tokio::spawn(server::listen::serve(
            listener.socket,
            app,
            tls,
            limits,
            stopped,
        )));
    }
    Ok(Serving(servers))
}

impl Serving {
    /// Waits for every server to stop (after `stop`), and returns the first failure.
    pub async fn stopped(self) -> Result<(), ServeError> {
        let mut result = Ok(());
        for server in self.0 {
            let served = server
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let (Ok(()), Err(e)) = (&result, served) {
                result = Err(ServeError::Serve(e));
            }
        }
        result
    }
}
