//! `authplane dev`: the same core with no cluster, manifests from a folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::error::CliError;
use crate::cli::flags;
use crate::cli::run::{ServeArgs, TlsFileArgs, shutdown_signal};
use crate::clock::SystemClock;
use crate::dev::{self, DevConfig};
use crate::server;

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Folder of manifests (*.yaml, *.yml), watched for changes.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// Folder for key material (created with mode 0700; files 0600).
    #[arg(long, value_name = "DIR", default_value = ".authplane")]
    state: PathBuf,
    /// Address to serve on (HOST:PORT; a host name is resolved at start), HTTPS with
    /// --tls-cert-file, the admission webhook included.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = flags::listen_addr)]
    listen: SocketAddr,
    /// Base URL of default issuers, an http(s) URL (default: http(s)://<listen>).
    #[arg(long, value_name = "URL", value_parser = flags::external_url)]
    external_url: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Serve HTTPS instead of HTTP, with this certificate and key.
    #[command(flatten)]
    tls_files: TlsFileArgs,
    #[command(flatten)]
    serving: crate::driver::serve::SettingsFlags,
    /// Serve status, metrics and the sessions of a subject (`authplane token sessions`)
    /// on this address (plain HTTP) and nowhere else, as `run --admin-listen` does.
    #[arg(long, value_name = "ADDR", value_parser = flags::listen_addr)]
    admin_listen: Option<SocketAddr>,
    /// Do not serve POST {issuer}/token (the token service).
    #[arg(long)]
    no_token_endpoint: bool,
    /// The token service's store: a redb file (default: tokens.redb in the --state
    /// folder; one process at a time), or a Redis that several processes share,
    /// redis://[USER[:PASSWORD]@]HOST[:PORT][/DB] or rediss://… (TLS).
    #[arg(long, value_name = "FILE|URL", conflicts_with = "no_token_endpoint")]
    token_store: Option<String>,
    /// A file holding the Redis password (a mounted Secret), used instead of the URL's.
    #[arg(long, value_name = "FILE", requires = "token_store")]
    token_store_password_file: Option<PathBuf>,
    /// PEM CA certificates a rediss:// server's certificate must chain to, instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", requires = "token_store")]
    token_store_ca_file: Option<PathBuf>,
    /// The budgets of POST {issuer}/token, per minute: failed requests per client
    /// address, refreshes (rotations) per session (beyond them: 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = server::token::DEFAULT_TOKEN_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    token_rate: u32,
    /// The most token sessions the embedded store holds for one TokenClient (none by
    /// default: the memory budgets bound them): a login beyond it answers 503 until one
    /// expires (each is held in memory until its absolute expiry; not used with Redis).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions_per_client: Option<u32>,
    /// The memory (MiB) the embedded store's sessions may hold in all: a login beyond it
    /// answers 503 until sessions expire (not used with Redis).
    #[arg(long, value_name = "MIB", default_value_t = crate::tokens::embedded::SESSION_MEMORY_MIB as u32, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    session_memory_mib: u32,
    /// The memory (MiB) the sessions of one namespace's TokenClients may hold, so that
    /// one tenant cannot take the whole budget.
    #[arg(long, value_name = "MIB", default_value_t = crate::tokens::embedded::SESSION_MEMORY_PER_NAMESPACE_MIB as u32, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    session_memory_per_namespace_mib: u32,
}

pub(crate) fn run_dev(args: DevArgs) -> Result<(), CliError> {
    let (store, password, ca) = flags::token_store(
        args.token_store.as_deref(),
        args.token_store_password_file.as_deref(),
        args.token_store_ca_file.as_deref(),
    )
    .map_err(CliError::Usage)?;
    let runtime = server::runtime::build(args.serve.worker_threads).map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let config = DevConfig {
            manifests: args.manifests,
            state: args.state,
            listen: args.listen,
            external_url: args.external_url,
            decision_cache_size: args.serve.decision_cache_size,
            tls: args.tls_files.files(),
            revoke_rate_per_minute: args.serve.revoke_rate,
            unconfined_issuer_namespaces: args.serve.unconfined_issuer_namespaces,
            serving: args.serving.settings(),
            tokens: dev::tokens::TokenSettings {
                enabled: !args.no_token_endpoint,
                store,
                password,
                ca,
                rate_per_minute: args.token_rate,
                session_limits: crate::tokens::embedded::SessionLimits {
                    total_bytes: (args.session_memory_mib as usize) << 20,
                    bytes_per_namespace: (args.session_memory_per_namespace_mib as usize) << 20,
                    sessions_per_client: args.max_sessions_per_client.map(|n| n as usize),
                },
            },
            admin_listen: args.admin_listen,
        };
        let server = dev::start(config, Arc::new(SystemClock)).await?;
        tracing::info!(
            "serving on {} (external URL {}; admission webhook at POST /validate); Ctrl-C stops",
            server.base_url(),
            server.external_url()
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await?;
        Ok(())
    })
}
