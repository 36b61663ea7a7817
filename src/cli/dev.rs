//! `authplane dev`: the same core with no cluster, manifests from a folder.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::error::CliError;
use crate::cli::flags;
use crate::cli::run::{DEFAULT_DECISION_CACHE, TlsFileArgs, shutdown_signal};
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
    /// Namespaces whose SigningKeys may publish an issuer at any path of the external
    /// URL (comma-separated); SigningKeys of the others only under /<namespace>/.
    #[arg(long, value_name = "NAMESPACE,...", value_delimiter = ',')]
    unconfined_issuer_namespaces: Vec<String>,
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    decision_cache_size: usize,
    /// The budgets of `POST {issuer}/revoke`, per minute: failed requests per client
    /// address, verified logouts per subject (beyond them: 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = crate::server::revoke::DEFAULT_REVOKE_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    revoke_rate: u32,
    /// Worker threads serving requests (default: TOKIO_WORKER_THREADS, else one per
    /// core).
    #[arg(long, value_name = "N")]
    worker_threads: Option<NonZeroUsize>,
    /// Serve HTTPS instead of HTTP, with this certificate and key.
    #[command(flatten)]
    tls_files: TlsFileArgs,
    #[command(flatten)]
    serving: crate::driver::serve::SettingsFlags,
}

pub(crate) fn run_dev(args: DevArgs) -> Result<(), CliError> {
    let runtime = server::runtime::build(args.worker_threads).map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let config = DevConfig {
            manifests: args.manifests,
            state: args.state,
            listen: args.listen,
            external_url: args.external_url,
            decision_cache_size: args.decision_cache_size,
            tls: args.tls_files.files(),
            revoke_rate_per_minute: args.revoke_rate,
            unconfined_issuer_namespaces: args.unconfined_issuer_namespaces,
            serving: args.serving.settings(),
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
