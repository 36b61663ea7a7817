use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use authplane::api::{
    AuthPolicy, ObjectKey, REVOKE_KIDS_ANNOTATION, ROTATE_AT_ANNOTATION, RolloutAction, SigningKey,
};
use authplane::api::{Duration, crds::crds};
use authplane::cli::{cluster, flags, manifest_edit};
use authplane::clock::{Clock, SystemClock};
use authplane::dev::manifests::{ManifestLoader, Object};
use authplane::dev::{self, DevConfig, state::StateStore};
use authplane::keys::store;
use authplane::operator::{self, OperatorConfig, TlsConfig, TlsSource};
use authplane::policy::{CompiledPolicy, rollout};
use authplane::server;
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
    /// Revoke tokens at once: one token (--jti), a subject's tokens issued up to an
    /// instant (--subject, --before), or a session (--session).
    Revoke(RevokeTokensArgs),
    /// The Revocations in force.
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// Steer an AuthPolicy's rollout: pause, resume, or set a percentage.
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
    #[command(flatten)]
    target: TargetArgs,
    /// Dev mode: the state folder of `authplane dev`, where a stepped rollout's progress
    /// is recorded.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".authplane",
        requires = "manifests"
    )]
    state: PathBuf,
}

#[derive(Args)]
struct RunArgs {
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
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    decision_cache_size: usize,
    /// Requests per minute per client address to `POST {issuer}/revoke` (beyond it:
    /// 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = authplane::server::revoke::DEFAULT_REVOKE_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    revoke_rate: u32,
    /// Worker threads serving requests (default: TOKIO_WORKER_THREADS, else one per
    /// core).
    #[arg(long, value_name = "N")]
    worker_threads: Option<NonZeroUsize>,
    /// Address to serve HTTPS on: every endpoint plus the admission webhook
    /// (POST /validate). Needs --tls-cert-file/--tls-key-file or --tls-bootstrap-secret.
    #[arg(long, value_name = "ADDR", value_parser = flags::listen_addr)]
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
    /// This installation's instance name: it serves and writes only the objects
    /// labelled authplane.io/instance=NAME (and, as `default`, those without the label),
    /// so that two installations in one cluster never write each other's objects.
    #[arg(
        long,
        env = "AUTHPLANE_INSTANCE",
        value_name = "NAME",
        default_value = "default"
    )]
    instance: authplane::operator::instance::Instance,
    /// Writes per second to the Kubernetes API, on average (client-go's QPS). Reads come
    /// from watches; API Priority and Fairness queues what exceeds the server's share.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KUBE_API_QPS, value_parser = clap::value_parser!(u32).range(1..))]
    kube_api_qps: u32,
    /// Writes sent at once before --kube-api-qps paces them (client-go's burst).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KUBE_API_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    kube_api_burst: u32,
}

const DEFAULT_KUBE_API_QPS: u32 = 500;
const DEFAULT_KUBE_API_BURST: u32 = 1000;

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
    target: TargetArgs,
}

/// Where a command acts: a cluster (the default), or dev mode's manifests folder.
#[derive(Args)]
struct TargetArgs {
    /// Kubeconfig file (default: KUBECONFIG or ~/.kube/config, or in-cluster config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Dev mode: act on the manifests folder of `authplane dev` instead of a cluster
    /// (the object's document is edited in place, as `kubectl annotate`/`patch` would).
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
}

impl TargetArgs {
    /// Says where the command runs, before it does anything.
    fn announce(&self) {
        match &self.manifests {
            Some(dir) => eprintln!("dev mode: manifests folder {}", dir.display()),
            None => eprintln!("cluster: {}", cluster::describe(self.kubeconfig.as_deref())),
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject", "session"])))]
struct RevokeTokensArgs {
    /// The SigningKey whose tokens are revoked, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    issuer: String,
    /// One token: its `jti`.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// Every token of this subject (`sub`) issued at or before --before.
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,
    /// With --subject: tokens issued at or before this RFC 3339 instant (default: now).
    #[arg(long, value_name = "TIME", requires = "subject")]
    before: Option<jiff::Timestamp>,
    /// Every token of this session (`sid`).
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// Why (shown in logs; metrics keep logout, payment_failed, password_changed,
    /// compromised, account_disabled, and `other` for the rest).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Create the Revocation in this namespace: it then applies only to that
    /// namespace's AuthPolicies (default: the SigningKey's namespace, everywhere).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Subcommand)]
enum RevocationsCommand {
    /// List the Revocations, with what they match and when they lapse.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args)]
struct RotateArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct RevokeArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    /// The kid to revoke.
    // A kid is base64url, so one in 64 begins with `-`: it is a value, not a flag.
    #[arg(allow_hyphen_values = true)]
    kid: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Dev mode: the state folder of `authplane dev`, to check that the kid is a key of
    /// this SigningKey.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".authplane",
        requires = "manifests"
    )]
    state: PathBuf,
}

#[derive(Args)]
struct DevArgs {
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
    /// Entries of the verified-token cache (about 1 KiB each); 0 turns it off.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_DECISION_CACHE)]
    decision_cache_size: usize,
    /// Requests per minute per client address to `POST {issuer}/revoke` (beyond it:
    /// 429 with Retry-After).
    #[arg(long, value_name = "N", default_value_t = authplane::server::revoke::DEFAULT_REVOKE_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    revoke_rate: u32,
    /// Worker threads serving requests (default: TOKIO_WORKER_THREADS, else one per
    /// core).
    #[arg(long, value_name = "N")]
    worker_threads: Option<NonZeroUsize>,
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
    /// Sign with the keys on a cluster (the SigningKey's Secret) instead of a state
    /// folder, with this kubeconfig file.
    #[arg(long, value_name = "FILE", conflicts_with = "state")]
    kubeconfig: Option<PathBuf>,
    /// Sign with the keys on the cluster of the default kubeconfig (KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, conflicts_with_all = ["state", "kubeconfig"])]
    cluster: bool,
    /// The SigningKey, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    key: String,
    /// Subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Audience (`aud`); repeat for several.
    #[arg(long, value_name = "AUD")]
    aud: Vec<String>,
    /// Lifetime, in Go duration syntax; at most the key's retainFor and its
    /// maxTokenLifetime (default 1h), unless --force.
    #[arg(long, default_value = "15m", allow_hyphen_values = true)]
    ttl: Duration,
    /// Mint even when --ttl is longer than the key's retainFor (the token may stop
    /// verifying before it expires) or its maxTokenLifetime.
    #[arg(long)]
    force: bool,
    /// Extra claim KEY=VALUE; VALUE is read as JSON when it is JSON, else as a string.
    #[arg(long, value_name = "KEY=VALUE")]
    claim: Vec<String>,
    /// Issuer (`iss`) to put in the token (default: the one the server publishes).
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// Session id (`sid`), so that a logout of the session (`authplane revoke
    /// --session`, or `/revoke` with `token_type_hint=session`) revokes the token.
    #[arg(long, value_name = "SID")]
    session: Option<String>,
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
        Command::Rotate(args) => {
            // Rounded up: a key made earlier in this second must not count as the
            // rotation asked for.
            let now = jiff::Timestamp::now().round(
                jiff::TimestampRound::new()
                    .smallest(jiff::Unit::Second)
                    .mode(jiff::RoundMode::Ceil),
            )?;
            annotate(&args.key, &args.target, |_, _| {
                Ok((ROTATE_AT_ANNOTATION.to_owned(), now.to_string()))
            })
        }
        Command::RevokeKey(args) => revoke(args),
        Command::Revoke(args) => revoke_tokens(args),
        Command::Revocations(RevocationsCommand::List { target }) => list_revocations(target),
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
    let patch = action.patch()?;
    args.target.announce();
    if let Some(dir) = &args.target.manifests {
        let mut document = manifest_edit::locate(dir, "AuthPolicy", &id)?;
        document.merge_patch(&patch)?;
        let (file, updated) = document.save()?;
        if let Object::AuthPolicy(updated) = updated {
            report_rollout(&id, &updated);
        }
        eprintln!("{}", edited_note(&file));
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
        let api: kube::Api<AuthPolicy> = kube::Api::namespaced(client, &id.namespace);
        let updated = api
            .patch(
                &id.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .with_context(|| format!("patching AuthPolicy {id}"))?;
        report_rollout(&id, &updated);
        Ok(())
    })
}

/// A client for the commands that act on a cluster; without one, points at dev mode.
async fn cluster_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    operator::client(kubeconfig)
        .await
        .context("no cluster to talk to (in dev mode, pass --manifests DIR)")
}

/// What a dev-mode edit did, and when it takes effect.
fn edited_note(file: &std::path::Path) -> String {
    format!(
        "edited {} (that document is rewritten: its own comments inside are not kept); a running `authplane dev` applies it within a second",
        file.display()
    )
}

fn report_rollout(id: &ObjectKey, updated: &AuthPolicy) {
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
    args.target.announce();
    let policy = match &args.target.manifests {
        Some(dir) => {
            let (desired, errors) = ManifestLoader::default().load(dir);
            for error in &errors {
                eprintln!("warning: {error}");
            }
            let mut policy = AuthPolicy::clone(
                desired
                    .auth_policies
                    .get(&id)
                    .with_context(|| format!("no AuthPolicy {id} in {}", dir.display()))?,
            );
            // Where a stepped rollout stands is recorded by the server, not the manifest.
            let progress = StateStore::new(&args.state).load_rollout(&id)?;
            if progress.is_none() && !policy.spec.rollout.steps.is_empty() {
                eprintln!(
                    "note: no recorded progress for {id} in {}: assuming the first step (pass --state, the folder of `authplane dev`)",
                    args.state.display()
                );
            }
            policy.status.get_or_insert_with(Default::default).rollout = progress;
            policy
        }
        None => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
                anyhow::Ok(cluster::auth_policy(client, &id).await?)
            })?
        }
    };
    let compiled = CompiledPolicy::compile(&policy, |_| None);
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
        revoke_rate_per_minute: args.revoke_rate,
        instance: args.instance,
        write_pace: Some(authplane::operator::writer::Pace {
            per_second: NonZeroU32::new(args.kube_api_qps).context("--kube-api-qps")?,
            burst: NonZeroU32::new(args.kube_api_burst).context("--kube-api-burst")?,
        }),
    };
    let runtime = server::runtime::build(args.worker_threads).context("starting the runtime")?;
    runtime.block_on(operator::run(config, shutdown_signal()))?;
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let kid = args.kid.clone();
    let state = args.state.clone();
    let dev = args.target.manifests.is_some();
    annotate(&args.key, &args.target, move |id, key| {
        // A typo must not look like a revocation that happened.
        let known = match dev {
            false => key
                .status
                .iter()
                .flat_map(|s| &s.keys)
                .any(|k| k.kid == kid),
            true => {
                let data = StateStore::new(&state).load(id)?.with_context(|| {
                    format!(
                        "no keys for SigningKey {id} in {}: pass --state, the folder of `authplane dev`",
                        state.display()
                    )
                })?;
                store::from_data(&data)?.get(&kid).is_some()
            }
        };
        if !known {
            bail!(
                "{kid} is not a key of SigningKey {id} (see its JWKS, or `kubectl get sk -o yaml`, status.keys)"
            );
        }
        let current = key
            .annotations()
            .get(REVOKE_KIDS_ANNOTATION)
            .map_or("", String::as_str);
        Ok((
            REVOKE_KIDS_ANNOTATION.to_owned(),
            revoked_kids(current, &kid),
        ))
    })
}

fn revoke_tokens(args: RevokeTokensArgs) -> anyhow::Result<()> {
    use authplane::cli::revocations::{self, What};
    let key = parse_id(&args.issuer, "--issuer")?;
    let what = match (args.jti, args.subject, args.session) {
        (Some(jti), None, None) => What::TokenId(jti),
        (None, Some(subject), None) => What::Subject {
            subject,
            issued_before: args.before,
        },
        (None, None, Some(sid)) => What::Session(sid),
        _ => bail!("give exactly one of --jti, --subject and --session"),
    };
    args.target.announce();
    let now = SystemClock.now();
    if let Some(dir) = &args.target.manifests {
        let revocation = revocations::build(
            &key,
            args.namespace.as_deref(),
            what,
            args.reason,
            Some(revocations::random_name()),
            now,
        )?;
        let file = revocations::write_manifest(dir, &revocation)?;
        let id = ObjectKey::of(&revocation.metadata);
        println!("Revocation {id} created");
        eprintln!(
            "wrote {}; a running `authplane dev` applies it within a second",
            file.display()
        );
        return Ok(());
    }
    let revocation = revocations::build(
        &key,
        args.namespace.as_deref(),
        what,
        args.reason,
        None,
        now,
    )?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
        let id = revocations::create(client, revocation).await?;
        println!("Revocation {id} created");
        Ok(())
    })
}

fn list_revocations(target: TargetArgs) -> anyhow::Result<()> {
    use authplane::cli::revocations;
    target.announce();
    let (found, keys) = match &target.manifests {
        Some(dir) => revocations::from_manifests(dir)?,
        None => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let client = cluster_client(target.kubeconfig.as_ref()).await?;
                anyhow::Ok(revocations::from_cluster(client).await?)
            })?
        }
    };
    print!(
        "{}",
        revocations::table(&revocations::rows(&found, &keys, SystemClock.now()))
    );
    Ok(())
}

/// The revocation list with `kid` added (kept, so a revoked kid never comes back).
fn revoked_kids(current: &str, kid: &str) -> String {
    let mut kids: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if !kids.contains(&kid) {
        kids.push(kid);
    }
    kids.join(",")
}

/// Sets one annotation of a SigningKey: on the cluster, or in the manifests folder. The
/// closure gets the object as it is now.
fn annotate(
    key: &str,
    target: &TargetArgs,
    annotation: impl FnOnce(&ObjectKey, &SigningKey) -> anyhow::Result<(String, String)>,
) -> anyhow::Result<()> {
    let id = parse_id(key, "the SigningKey")?;
    target.announce();
    if let Some(dir) = &target.manifests {
        let mut document = manifest_edit::locate(dir, "SigningKey", &id)?;
        let Object::SigningKey(current) = document.parsed()? else {
            bail!("{} does not hold SigningKey {id}", document.file.display());
        };
        let (name, value) = annotation(&id, &current)?;
        document.set_annotation(&name, &value)?;
        let (file, _) = document.save()?;
        println!("SigningKey {id}: {name}={value}");
        eprintln!("{}", edited_note(&file));
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = cluster_client(target.kubeconfig.as_ref()).await?;
        let api: kube::Api<SigningKey> = kube::Api::namespaced(client, &id.namespace);
        let current = api
            .get(&id.name)
            .await
            .with_context(|| format!("reading SigningKey {id}"))?;
        let (name, value) = annotation(&id, &current)?;
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
    let runtime = server::runtime::build(args.worker_threads).context("starting the runtime")?;
    runtime.block_on(async {
        let config = DevConfig {
            manifests: args.manifests,
            state: args.state,
            listen: args.listen,
            external_url: args.external_url,
            decision_cache_size: args.decision_cache_size,
            tls: args.tls_files.files(),
            revoke_rate_per_minute: args.revoke_rate,
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
    token::check_lifetime(&args.ttl, None)?;
    let stored = if args.kubeconfig.is_some() || args.cluster {
        eprintln!("cluster: {}", cluster::describe(args.kubeconfig.as_deref()));
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        runtime.block_on(async {
            let client = cluster_client(args.kubeconfig.as_ref()).await?;
            anyhow::Ok(cluster::signing_keys(client, &id).await?)
        })?
    } else {
        eprintln!("dev mode: state folder {}", args.state.display());
        let state = StateStore::new(&args.state);
        let data = state.load(&id)?.with_context(|| {
            format!(
                "no keys for SigningKey {id} in {}: run `authplane dev` with a manifest for it first",
                args.state.display()
            )
        })?;
        let keys = store::from_data(&data)
            .with_context(|| format!("reading {}", state.path(&id).display()))?;
        cluster::StoredKeys {
            keys,
            issuer: store::issuer(&data).map(str::to_owned),
            retain_for: store::retain_for(&data),
            max_token_lifetime: store::max_token_lifetime(&data),
        }
    };
    let issuer = match args.issuer.or(stored.issuer) {
        Some(issuer) => issuer,
        None => bail!("the keys of {id} record no issuer; pass --issuer"),
    };
    let retain_for = stored.retain_for.filter(|_| !args.force);
    token::check_lifetime(&args.ttl, retain_for)?;
    token::check_max_lifetime(&args.ttl, stored.max_token_lifetime.filter(|_| !args.force))?;
    let mut request = MintRequest {
        subject: args.sub,
        audiences: args.aud,
        ttl: args.ttl.value(),
        session: args.session,
        ..MintRequest::default()
    };
    for claim in &args.claim {
        let (key, value) = token::parse_claim(claim)?;
        request.claims.insert(key, value);
    }
    println!(
        "{}",
        token::mint(&stored.keys, &issuer, &request, SystemClock.now())?
    );
    Ok(())
}
