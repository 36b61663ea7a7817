use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use authplane::api::{
    AuthPolicy, ObjectKey, REVOKE_KIDS_ANNOTATION, ROTATE_AT_ANNOTATION, RolloutAction, SigningKey,
};
use authplane::api::{Duration, crds::crds};
use authplane::clock::{Clock, SystemClock};
use authplane::dev::manifests::ManifestLoader;
use authplane::dev::{self, DevConfig, state::StateStore};
use authplane::keys::store;
use authplane::operator::{self, OperatorConfig, TlsConfig, TlsSource};
use authplane::policy::{CompiledPolicy, rollout};
use authplane::tls::bootstrap::BootstrapSettings;
use authplane::tls::files::TlsFiles;
use authplane::token::{self, MintRequest};
use kube::ResourceExt;

/// authplane: JWT signing keys that rotate without breaking tokens, served as JWKS and
/// OIDC discovery.
#[derive(Parser)]
#[command(name = "authplane", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text (default) or json (default for `run`, for log collectors).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator on a cluster: keys in Secrets, every endpoint served.
    Run(RunArgs),
    /// Run without a cluster: manifests from a folder, keys in a state folder.
    Dev(DevArgs),
    /// Rotate a SigningKey now: a new key is made and pre-published, then signs.
    Rotate(RotateArgs),
    /// Revoke a key at once: it leaves the JWKS and its tokens stop verifying.
    RevokeKey(RevokeArgs),
    /// Steer an AuthPolicy's rollout on a cluster: pause, resume, or set a percentage.
    #[command(subcommand)]
    Rollout(RolloutCommand),
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
struct RunArgs {
    /// Kubeconfig file (default: in-cluster config, or KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The operator's namespace, where its Lease lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "authplane")]
    namespace: String,
    /// Address to serve plain HTTP on: every endpoint but the admission webhook.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// How verifiers reach this service; the base of default issuer URLs.
    #[arg(long, value_name = "URL")]
    external_url: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    decision_cache_size: usize,
    /// Address to serve HTTPS on: every endpoint plus the admission webhook
    /// (POST /validate). Needs --tls-cert-file/--tls-key-file or --tls-bootstrap-secret.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
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
}

#[derive(Args)]
struct TlsFileArgs {
    /// PEM certificate chain for HTTPS (a mounted Secret's tls.crt); reloaded when it
    /// changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (tls.key).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

impl TlsFileArgs {
    fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

const DEFAULT_DECISION_CACHE: usize = 10_000;

#[derive(Subcommand)]
enum RolloutCommand {
    /// Hold a stepped rollout on its current step (`spec.rollout.paused: true`).
    Pause(PolicyArgs),
    /// Let a held rollout move on; the current step gets a full `stepEvery` again.
    Resume(PolicyArgs),
    /// Enforce for PERCENT of users now, replacing any steps (0 rolls back at once).
    Set {
        #[command(flatten)]
        policy: PolicyArgs,
        /// 0 to 100, at most three decimals.
        percent: f64,
    },
}

#[derive(Args)]
struct PolicyArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    policy: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG or ~/.kube/config, or in-cluster config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
struct RotateArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct RevokeArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    /// The kid to revoke.
    kid: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct DevArgs {
    /// Folder of manifests (*.yaml, *.yml), watched for changes.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// Folder for key material (created with mode 0700; files 0600).
    #[arg(long, value_name = "DIR", default_value = ".authplane")]
    state: PathBuf,
    /// Address to serve on (HTTPS with --tls-cert-file), the admission webhook included.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of default issuers (default: http(s)://<listen>).
    #[arg(long, value_name = "URL")]
    external_url: Option<String>,
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    decision_cache_size: usize,
    /// Serve HTTPS instead of HTTP, with this certificate and key.
    #[command(flatten)]
    tls_files: TlsFileArgs,
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

/// mimalloc: per-thread free lists instead of glibc's arenas, whose consolidation showed
/// up on the request path under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_format = match cli.command {
        Command::Run(_) => LogFormat::Json,
        _ => LogFormat::Text,
    };
    init_logging(cli.log_format.unwrap_or(default_format));
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: our typed errors already include their
/// cause in their message (`TLS: cert.pem: not a PEM certificate`), and `{:#}` would
/// repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
    }
    message
}

fn init_logging(format: LogFormat) {
    // notify logs its own harmless bookkeeping when a watched folder is deleted.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=error"));
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
        Command::Run(args) => run_operator(args),
        Command::Dev(args) => run_dev(args),
        Command::Rotate(args) => annotate(&args.key, &args.cluster, rotate_annotation),
        Command::RevokeKey(args) => {
            let kid = args.kid.clone();
            annotate(&args.key, &args.cluster, move |key| {
                revoke_annotation(key, &kid)
            })
        }
        Command::Crdgen { out_dir } => crdgen(out_dir),
        Command::Token(TokenCommand::Mint(args)) => mint(args),
        Command::Bucket(args) => bucket(args),
        Command::Rollout(command) => rollout(command),
    }
}

fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    let (args, action) = match command {
        RolloutCommand::Pause(args) => (args, RolloutAction::Pause),
        RolloutCommand::Resume(args) => (args, RolloutAction::Resume),
        RolloutCommand::Set { policy, percent } => (policy, RolloutAction::Set(percent)),
    };
    let id = parse_id(&args.policy, "the AuthPolicy")?;
    let patch = action.patch().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = operator::client(args.cluster.kubeconfig.as_ref()).await?;
        let api: kube::Api<AuthPolicy> = kube::Api::namespaced(client, &id.namespace);
        let updated = api
            .patch(
                &id.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .with_context(|| format!("patching AuthPolicy {id}"))?;
        let rollout = &updated.spec.rollout;
        println!(
            "AuthPolicy {id}: mode {:?}, percentage {}, steps {:?}{}",
            rollout.mode,
            rollout.percentage,
            rollout.steps,
            if rollout.paused { ", paused" } else { "" }
        );
        if rollout.mode != authplane::api::Mode::Enforce {
            println!(
                "note: the mode is {:?}: nobody is enforced until it is Enforce",
                rollout.mode
            );
        }
        Ok(())
    })
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
    let now = jiff::Timestamp::now();
    let (bucket, enforced) = compiled.bucket_of(&args.key, now);
    println!(
        "bucket {bucket} of {} ({:.3}%); enforced now: {} ({:?} at {}%)",
        rollout::BUCKETS,
        f64::from(bucket) / 1000.0,
        if enforced { "yes" } else { "no" },
        compiled.mode,
        compiled.effective_percentage(now)
    );
    Ok(())
}

fn run_operator(args: RunArgs) -> anyhow::Result<()> {
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
        (Some(_), None) => bail!(
            "--tls-listen needs a certificate: --tls-cert-file and --tls-key-file, or --tls-bootstrap-secret"
        ),
        (None, Some(_)) => bail!("a TLS certificate was given but no --tls-listen address"),
    };
    let config = OperatorConfig {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        listen: args.listen,
        external_url: args.external_url.trim_end_matches('/').to_owned(),
        identity,
        decision_cache_size: args.decision_cache_size,
        tls,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(operator::run(config, shutdown_signal()))?;
    Ok(())
}

/// The annotation value that requests a rotation now.
fn rotate_annotation(_: &SigningKey) -> anyhow::Result<(String, String)> {
    let now = jiff::Timestamp::now().round(jiff::Unit::Second)?;
    Ok((ROTATE_AT_ANNOTATION.to_owned(), now.to_string()))
}

/// The revocation list with `kid` added (kept, so a revoked kid never comes back).
fn revoke_annotation(key: &SigningKey, kid: &str) -> anyhow::Result<(String, String)> {
    let status = key.status.clone().unwrap_or_default();
    if !status.keys.iter().any(|k| k.kid == kid) {
        bail!("{kid} is not a key of this SigningKey (see `kubectl get sk -o yaml`, status.keys)");
    }
    let mut kids: Vec<String> = key
        .annotations()
        .get(REVOKE_KIDS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !kids.iter().any(|k| k == kid) {
        kids.push(kid.to_owned());
    }
    Ok((REVOKE_KIDS_ANNOTATION.to_owned(), kids.join(",")))
}

fn annotate(
    key: &str,
    cluster: &ClusterArgs,
    annotation: impl FnOnce(&SigningKey) -> anyhow::Result<(String, String)>,
) -> anyhow::Result<()> {
    let id = parse_id(key, "the SigningKey")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = operator::client(cluster.kubeconfig.as_ref()).await?;
        let api: kube::Api<SigningKey> = kube::Api::namespaced(client, &id.namespace);
        let current = api
            .get(&id.name)
            .await
            .with_context(|| format!("reading SigningKey {id}"))?;
        let (name, value) = annotation(&current)?;
        let patch = serde_json::json!({"metadata": {"annotations": {name.clone(): value.clone()}}});
        api.patch(
            &id.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .with_context(|| format!("annotating SigningKey {id}"))?;
        println!("SigningKey {id}: {name}={value}");
        Ok(())
    })
}

fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let config = DevConfig {
            manifests: args.manifests,
            state: args.state,
            listen: args.listen,
            external_url: args.external_url,
            decision_cache_size: args.decision_cache_size,
            tls: args.tls_files.files(),
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
