//! `authplane run`: the operator on a cluster.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use clap::Args;

use crate::cli::error::CliError;
use crate::cli::flags;
use crate::operator::{self, OperatorConfig, TlsConfig, TlsSource};
use crate::server;
use crate::tls::bootstrap::BootstrapSettings;
use crate::tls::files::TlsFiles;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Kubeconfig file (default: in-cluster config, or KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The operator's namespace, where its Lease lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "authplane")]
    namespace: String,
    /// Address to serve plain HTTP on (HOST:PORT; a host name is resolved at start):
    /// every endpoint but the admission webhook.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080", value_parser = flags::listen_addr)]
    listen: SocketAddr,
    /// How verifiers reach this service (an http(s) URL); the base of default issuer
    /// URLs.
    #[arg(long, value_name = "URL", value_parser = flags::external_url)]
    external_url: String,
    #[command(flatten)]
    serve: ServeArgs,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address to serve HTTPS on: every endpoint plus the admission webhook
    /// (POST /validate). Needs --tls-cert-file/--tls-key-file or --tls-bootstrap-secret.
    #[arg(long, value_name = "ADDR", value_parser = flags::listen_addr)]
    tls_listen: Option<SocketAddr>,
    /// PEM CA certificates: HTTPS clients must present a certificate of one of them (the
    /// apiserver, configured to present one to its webhooks), or the handshake fails.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_client_ca_file: Option<PathBuf>,
    /// Address to serve /metrics and /status on (plain HTTP), with /healthz and /readyz;
    /// they are then served nowhere else.
    #[arg(long, value_name = "ADDR", value_parser = flags::listen_addr)]
    admin_listen: Option<SocketAddr>,
    /// Let external issuers' URLs lead to loopback addresses (and plain http to
    /// localhost): on a cluster that is authplane's own pod, so it is refused otherwise.
    #[arg(long)]
    allow_loopback_issuers: bool,
    #[command(flatten)]
    serving: crate::driver::serve::SettingsFlags,
    #[command(flatten)]
    tls_files: TlsFileArgs,
    /// Self-bootstrapped TLS: keep a CA and a serving certificate in this Secret of
    /// --namespace, renew it, and set the caBundle of --webhook-configuration.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "tls_cert_file",
        requires = "webhook_service"
    )]
    tls_bootstrap_secret: Option<String>,
    /// The webhook's Service: the bootstrapped certificate is for NAME.NS.svc and
    /// NAME.NS.svc.cluster.local.
    #[arg(long, value_name = "NAME", requires = "tls_bootstrap_secret")]
    webhook_service: Option<String>,
    /// The ValidatingWebhookConfiguration whose webhooks get the bootstrapped CA as
    /// caBundle.
    #[arg(long, value_name = "NAME", requires = "tls_bootstrap_secret")]
    webhook_configuration: Option<String>,
    /// This installation's instance name: it serves and writes only the objects
    /// labelled authplane.io/instance=NAME (and, as `default`, those without the label),
    /// so that two installations in one cluster never write each other's objects.
    #[arg(
        long,
        env = "AUTHPLANE_INSTANCE",
        value_name = "NAME",
        default_value = "default"
    )]
    instance: crate::operator::instance::Instance,
    /// Writes per second to the Kubernetes API, on average (client-go's QPS). Reads come
    /// from watches; API Priority and Fairness queues what exceeds the server's share.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KUBE_API_QPS)]
    kube_api_qps: NonZeroU32,
    /// Writes sent at once before --kube-api-qps paces them (client-go's burst).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KUBE_API_BURST)]
    kube_api_burst: NonZeroU32,
    /// Gateway implementations to write configuration for, for AuthPolicies that target
    /// a Gateway API Gateway, HTTPRoute or GRPCRoute (comma-separated: `envoy-gateway`,
    /// `istio`, `traefik`, `kgateway`). Needs the RBAC of the objects written (the chart's
    /// gatewayAPI.<implementation>.enabled). None: such targets are reported only.
    #[arg(long, value_name = "IMPLEMENTATION,...", value_delimiter = ',')]
    gateway_implementations: Vec<crate::attach::Implementation>,
    /// The Service gateways reach authplane's decisions at, written into their
    /// configuration.
    #[arg(long, value_name = "NAME", default_value = "authplane")]
    authz_service_name: String,
    /// Namespace of --authz-service-name (default: --namespace).
    #[arg(long, value_name = "NAMESPACE")]
    authz_service_namespace: Option<String>,
    /// Port of --authz-service-name serving `/authz` (plain HTTP).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    authz_service_port: u16,
    /// How Envoy Gateway's SecurityPolicies and kgateway's GatewayExtensions ask for a
    /// decision: `http` (`/authz` on --authz-service-port) or `grpc` (Envoy's
    /// `Authorization/Check` on --authz-service-grpc-port, the policy named in the
    /// context extension authplane.io/policy; needs --grpc-listen). Istio and Traefik
    /// always use HTTP.
    #[arg(long, value_name = "PROTOCOL", default_value = "http")]
    attach_protocol: crate::attach::Protocol,
    /// Port of --authz-service-name serving gRPC `Check` (h2c), with --attach-protocol grpc.
    #[arg(long, value_name = "PORT", default_value_t = crate::operator::attachments::DEFAULT_GRPC_PORT)]
    authz_service_grpc_port: u16,
    /// Istio's mesh config, the ConfigMap whose `mesh` key holds each policy's extension
    /// provider (e.g. `istio-system/istio`): read to report a missing or wrong one in the
    /// policy's status. Needs read access to it (the chart's
    /// gatewayAPI.istio.meshConfig.read). Unset: not checked.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_key)]
    istio_mesh_config: Option<crate::api::ObjectKey>,
    /// The token service's store: an embedded file on a volume (created if missing),
    /// this replica's own, so the operator refuses to start while --deployment asks for
    /// more than one replica; or a Redis every replica shares,
    /// redis://[USER[:PASSWORD]@]HOST[:PORT][/DB] or rediss://… (TLS).
    #[arg(long, value_name = "PATH|URL")]
    token_store: Option<String>,
    /// A file holding the Redis password (a mounted Secret), used instead of the URL's.
    #[arg(long, value_name = "FILE", requires = "token_store")]
    token_store_password_file: Option<PathBuf>,
    /// PEM CA certificates a rediss:// server's certificate must chain to, instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", requires = "token_store")]
    token_store_ca_file: Option<PathBuf>,
    /// The Deployment this operator runs as, in --namespace (the chart sets it): with
    /// --token-store, its replica count is checked at start.
    #[arg(long, value_name = "NAME", requires = "token_store")]
    deployment: Option<String>,
    /// The budgets of POST {issuer}/token, per minute: failed requests per client
    /// address, refreshes (rotations) per session (beyond them: 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = server::token::DEFAULT_TOKEN_RATE, value_parser = clap::value_parser!(u32).range(1..), requires = "token_store")]
    token_rate: u32,
    /// The most token sessions the embedded store holds for one TokenClient (none by
    /// default: the memory budgets bound them): a login beyond it answers 503 until one
    /// expires (each is held in memory until its absolute expiry; not used with Redis).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "token_store")]
    max_sessions_per_client: Option<u32>,
    /// The memory (MiB) the embedded store's sessions may hold in all: a login beyond it
    /// answers 503 until sessions expire (not used with Redis).
    #[arg(long, value_name = "MIB", default_value_t = crate::tokens::embedded::SESSION_MEMORY_MIB as u32, value_parser = clap::value_parser!(u32).range(1..=1_048_576), requires = "token_store")]
    session_memory_mib: u32,
    /// The memory (MiB) the sessions of one namespace's TokenClients may hold, so that
    /// one tenant cannot take the whole budget.
    #[arg(long, value_name = "MIB", default_value_t = crate::tokens::embedded::SESSION_MEMORY_PER_NAMESPACE_MIB as u32, value_parser = clap::value_parser!(u32).range(1..=1_048_576), requires = "token_store")]
    session_memory_per_namespace_mib: u32,
}

fn parse_object_key(text: &str) -> Result<crate::api::ObjectKey, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(crate::api::ObjectKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

const DEFAULT_KUBE_API_QPS: NonZeroU32 = NonZeroU32::new(500).unwrap();
const DEFAULT_KUBE_API_BURST: NonZeroU32 = NonZeroU32::new(1000).unwrap();

/// What `run` and `dev` both serve with: who may publish where, the verified-token
/// cache, `/revoke`'s budgets and the worker threads.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Namespaces whose SigningKeys may publish an issuer at any path of the external
    /// URL (comma-separated); SigningKeys of the others only under /<namespace>/.
    #[arg(long, value_name = "NAMESPACE,...", value_delimiter = ',')]
    pub(crate) unconfined_issuer_namespaces: Vec<String>,
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    pub(crate) decision_cache_size: usize,
    /// The budgets of `POST {issuer}/revoke`, per minute: failed requests per client
    /// address, verified logouts per subject (beyond them: 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = crate::server::revoke::DEFAULT_REVOKE_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) revoke_rate: u32,
    /// Worker threads serving requests (default: TOKIO_WORKER_THREADS, else one per
    /// core).
    #[arg(long, value_name = "N")]
    pub(crate) worker_threads: Option<NonZeroUsize>,
}

#[derive(Args)]
pub(crate) struct TlsFileArgs {
    /// PEM certificate chain for HTTPS (a mounted Secret's tls.crt); reloaded when it
    /// changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (tls.key).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

impl TlsFileArgs {
    pub(crate) fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

pub(crate) const DEFAULT_DECISION_CACHE: usize = 10_000;

pub(crate) fn run_operator(args: RunArgs) -> Result<(), CliError> {
    let (store, password, ca) = flags::token_store(
        args.token_store.as_deref(),
        args.token_store_password_file.as_deref(),
        args.token_store_ca_file.as_deref(),
    )
    .map_err(CliError::Usage)?;
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("authplane-{}", std::process::id()));
    let source = match (args.tls_files.files(), args.tls_bootstrap_secret) {
        (Some(files), _) => Some(TlsSource::Files(files)),
        (None, Some(secret)) => Some(TlsSource::Bootstrap(BootstrapSettings::new(
            secret,
            args.namespace.clone(),
            args.webhook_service.unwrap_or_default(),
            args.webhook_configuration,
        ))),
        (None, None) => None,
    };
    let tls = match (args.tls_listen, source) {
        (Some(listen), Some(source)) => Some(TlsConfig { listen, source }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(CliError::Usage(
            "--tls-listen needs a certificate: --tls-cert-file and --tls-key-file, or --tls-bootstrap-secret"
            .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "a TLS certificate was given but no --tls-listen address".into(),
            ));
        }
    };
    // gRPC SecurityPolicies and GatewayExtensions point the gateways at this Service's
    // gRPC port, which reaches these pods: without a gRPC listener, every attached route
    // would be refused.
    if args.attach_protocol == crate::attach::Protocol::Grpc && args.serving.grpc_listen.is_none() {
        return Err(CliError::Usage(
            "--attach-protocol grpc needs --grpc-listen (the gRPC Check listener the Service's gRPC port reaches)".into(),
        ));
    }
    let attach = crate::operator::attachments::AttachConfig {
        enabled: args.gateway_implementations,
        service: crate::attach::AuthzService {
            namespace: args
                .authz_service_namespace
                .unwrap_or_else(|| args.namespace.clone()),
            name: args.authz_service_name,
            port: args.authz_service_port,
            grpc_port: args.authz_service_grpc_port,
            protocol: args.attach_protocol,
        },
        istio_mesh_config: args.istio_mesh_config,
    };
    let config = OperatorConfig {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        listen: args.listen,
        external_url: args.external_url.trim_end_matches('/').to_owned(),
        identity,
        decision_cache_size: args.serve.decision_cache_size,
        tls,
        revoke_rate_per_minute: args.serve.revoke_rate,
        unconfined_issuer_namespaces: args.serve.unconfined_issuer_namespaces,
        admin_listen: args.admin_listen,
        tls_client_ca_file: args.tls_client_ca_file,
        serving: {
            let mut serving = args.serving.settings();
            serving.fetch.allow_loopback = args.allow_loopback_issuers;
            serving
        },
        instance: args.instance,
        write_pace: Some(crate::operator::writer::Pace {
            per_second: args.kube_api_qps,
            burst: args.kube_api_burst,
        }),
        attach,
        token_store: store.map(|location| crate::operator::token_store::TokenStoreConfig {
            location,
            password,
            ca,
            deployment: args.deployment,
            rate_per_minute: args.token_rate,
            session_limits: crate::tokens::embedded::SessionLimits {
                total_bytes: (args.session_memory_mib as usize) << 20,
                bytes_per_namespace: (args.session_memory_per_namespace_mib as usize) << 20,
                sessions_per_client: args.max_sessions_per_client.map(|n| n as usize),
            },
        }),
    };
    let runtime = server::runtime::build(args.serve.worker_threads).map_err(CliError::Runtime)?;
    runtime.block_on(operator::run(config, shutdown_signal()))?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
