use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use authplane::api::ObjectKey;
use authplane::api::{Duration, crds::crds};
use authplane::clock::{Clock, SystemClock};
use authplane::dev::manifests::ManifestLoader;
use authplane::dev::{self, DevConfig, state::StateStore};
use authplane::keys::store;
use authplane::policy::{CompiledPolicy, rollout};
use authplane::token::{self, MintRequest};

/// authplane: JWT signing keys that rotate without breaking tokens, served as JWKS and
/// OIDC discovery.
#[derive(Parser)]
#[command(name = "authplane", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format (default: text; JSON is meant for log collectors).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run without a cluster: manifests from a folder, keys in a state folder.
    Dev(DevArgs),
    /// Print the CustomResourceDefinitions as YAML, or write them into a folder.
    Crdgen {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Tokens for development and tests.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a user's rollout bucket under an AuthPolicy, and whether it is enforced now.
    Bucket(BucketArgs),
}

#[derive(Args)]
struct BucketArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    policy: String,
    /// The bucketing key: the value of the policy's bucketBy claim, header or cookie.
    #[arg(long)]
    key: String,
    /// Folder of manifests holding the policy.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
}

#[derive(Args)]
struct DevArgs {
    /// Folder of manifests (*.yaml, *.yml), watched for changes.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// Folder for key material (created with mode 0700; files 0600).
    #[arg(long, value_name = "DIR", default_value = ".authplane")]
    state: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of default issuers (default: http://<listen>).
    #[arg(long, value_name = "URL")]
    external_url: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a JWT signed by the Active key of a SigningKey.
    Mint(MintArgs),
}

#[derive(Args)]
struct MintArgs {
    /// The state folder of `authplane dev`.
    #[arg(long, value_name = "DIR", default_value = ".authplane")]
    state: PathBuf,
    /// The SigningKey, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    key: String,
    /// Subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Audience (`aud`); repeat for several.
    #[arg(long, value_name = "AUD")]
    aud: Vec<String>,
    /// Lifetime, in Go duration syntax.
    #[arg(long, default_value = "15m")]
    ttl: Duration,
    /// Extra claim KEY=VALUE; VALUE is read as JSON when it is JSON, else as a string.
    #[arg(long, value_name = "KEY=VALUE")]
    claim: Vec<String>,
    /// Issuer (`iss`) to put in the token (default: the one the server publishes).
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    // One TLS provider for every client and server in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match command {
        Command::Dev(args) => run_dev(args),
        Command::Crdgen { out_dir } => crdgen(out_dir),
        Command::Token(TokenCommand::Mint(args)) => mint(args),
        Command::Bucket(args) => bucket(args),
    }
}

fn parse_id(text: &str, flag: &str) -> anyhow::Result<ObjectKey> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        _ => bail!("{flag} must be NAMESPACE/NAME, got {text:?}"),
    }
}

fn bucket(args: BucketArgs) -> anyhow::Result<()> {
    let id = parse_id(&args.policy, "--policy")?;
    let (desired, errors) = ManifestLoader::default().load(&args.manifests);
    for error in &errors {
        eprintln!("warning: {error}");
    }
    let policy = desired
        .auth_policies
        .get(&id)
        .with_context(|| format!("no AuthPolicy {id} in {}", args.manifests.display()))?;
    let compiled = CompiledPolicy::compile(policy, |_| None);
    let (bucket, enforced) = compiled.bucket_of(&args.key);
    println!(
        "bucket {bucket} of {} ({:.3}%); enforced now: {} ({:?} at {}%)",
        rollout::BUCKETS,
        f64::from(bucket) / 1000.0,
        if enforced { "yes" } else { "no" },
        compiled.mode,
        compiled.percentage
    );
    Ok(())
}

fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let config = DevConfig {
            manifests: args.manifests,
            state: args.state,
            listen: args.listen,
            external_url: args.external_url,
        };
        let server = dev::start(config, Arc::new(SystemClock)).await?;
        tracing::info!(
            "serving on http://{} (external URL {}); Ctrl-C stops",
            server.addr(),
            server.external_url()
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await?;
        Ok(())
    })
}

async fn shutdown_signal() {
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

fn crdgen(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = crds();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in crds {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let docs: Vec<String> = crds.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}

fn mint(args: MintArgs) -> anyhow::Result<()> {
    let id = parse_id(&args.key, "--key")?;
    let state = StateStore::new(&args.state);
    let data = state.load(&id)?.with_context(|| {
        format!(
            "no keys for SigningKey {id} in {}: run `authplane dev` with a manifest for it first",
            args.state.display()
        )
    })?;
    let keys = store::from_data(&data)
        .with_context(|| format!("reading {}", state.path(&id).display()))?;
    let issuer = match args.issuer.as_deref().or(store::issuer(&data)) {
        Some(issuer) => issuer.to_owned(),
        None => bail!("the state of {id} records no issuer; pass --issuer"),
    };
    let mut request = MintRequest {
        subject: args.sub,
        audiences: args.aud,
        ttl: args.ttl.value(),
        ..MintRequest::default()
    };
    for claim in &args.claim {
        let (key, value) = token::parse_claim(claim)?;
        request.claims.insert(key, value);
    }
    println!(
        "{}",
        token::mint(&keys, &issuer, &request, SystemClock.now())?
    );
    Ok(())
}
