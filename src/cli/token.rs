//! `authplane token mint`: a JWT signed by the Active key of a SigningKey; and
//! `token client-secret`. (`token exchange` and `token refresh` are `token_request`'s.)

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::api::Duration;
use crate::cli::cluster;
use crate::cli::error::{self, CliError};
use crate::cli::target::{cluster_client, parse_id};
use crate::clock::{Clock, SystemClock};
use crate::dev::state::StateStore;
use crate::keys::store;
use crate::token::{self, MintRequest};

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a JWT signed by the Active key of a SigningKey.
    Mint(MintArgs),
    /// Dev mode: make a new client secret for a TokenClient, print it once and keep only
    /// its hash in the state folder (the previous secret stops working).
    ClientSecret(ClientSecretArgs),
    /// Log a user in as a trusted workload: `POST {issuer}/token` with a token exchange;
    /// prints the JSON answer (or one field of it).
    Exchange(crate::cli::token_request::ExchangeArgs),
    /// Refresh: `POST {issuer}/token` with a refresh token from a file or stdin; prints
    /// the JSON answer (or one field of it).
    Refresh(crate::cli::token_request::RefreshArgs),
    /// The sessions of a user (refresh-token families) of a TokenClient, from the admin
    /// listener; `--revoke` ends them all.
    Sessions(crate::cli::token_request::SessionsArgs),
}

#[derive(Args)]
pub(crate) struct ClientSecretArgs {
    /// The TokenClient, as NAMESPACE/NAME (its `client_id`).
    #[arg(value_name = "NAMESPACE/NAME")]
    client: String,
    /// The state folder of `authplane dev`.
    #[arg(long, value_name = "DIR", default_value = ".authplane")]
    state: PathBuf,
}

/// Prints the new secret alone on stdout (for `$(...)`), what it is on stderr.
pub(crate) fn client_secret(args: ClientSecretArgs) -> Result<(), CliError> {
    let id = parse_id(&args.client, "NAMESPACE/NAME")?;
    // The names become paths in the state folder: only Kubernetes names, never `..`.
    if !crate::api::is_dns_label(&id.namespace) || !crate::api::is_dns_subdomain(&id.name) {
        return Err(CliError::Usage(format!(
            "{:?} is not a TokenClient's NAMESPACE/NAME (lowercase letters, digits, '-' and, in the name, '.')",
            args.client
        )));
    }
    let new = crate::token_endpoint::secret::new_secret(&mut crate::refresh::SystemEntropy)
        .map_err(|e| CliError::Refused(e.to_string()))?;
    let state = StateStore::open(&args.state)?;
    let replaced = state.load_client_secret(&id).ok().flatten().is_some();
    state.save_client_secret(&id, &new.stored)?;
    eprintln!(
        "dev mode: state folder {}: {} client secret of TokenClient {id}, shown once (only its hash is kept, in {})",
        args.state.display(),
        if replaced { "replaced the" } else { "made a" },
        state.client_secret_path(&id).display()
    );
    println!("{}", new.secret);
    Ok(())
}

#[derive(Args)]
pub(crate) struct MintArgs {
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
    /// Extra claim KEY=VALUE; VALUE is read as JSON when it is JSON (`n=3`,
    /// `roles=["a","b"]`), else as a string (with a warning when it looks like JSON).
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

pub(crate) fn mint(args: MintArgs) -> Result<(), CliError> {
    let id = parse_id(&args.key, "--key")?;
    token::check_lifetime(&args.ttl, None)?;
    // The claims are checked before any key is read: a mistake there needs no keys.
    let mut claims = serde_json::Map::new();
    for claim in &args.claim {
        let (key, value) = token::parse_claim(claim)?;
        if let Some(warning) = not_the_json_it_looks_like(&key, &value) {
            eprintln!("warning: {warning}");
        }
        claims.insert(key, value);
    }
    let stored = if args.kubeconfig.is_some() || args.cluster {
        eprintln!("cluster: {}", cluster::describe(args.kubeconfig.as_deref()));
        let runtime = error::runtime()?;
        runtime.block_on(async {
            let client = cluster_client(args.kubeconfig.as_ref()).await?;
            Ok::<_, CliError>(cluster::signing_keys(client, &id).await?)
        })?
    } else {
        // Nothing on stderr when all is well: `TOKEN=$(authplane token mint ...)` is how
        // the command is used, and the folder is named in every refusal.
        let state = StateStore::new(&args.state);
        let data = state.load(&id)?.ok_or_else(|| {
            CliError::Refused(format!(
                "no keys for SigningKey {id} in {}: run `authplane dev` with a manifest for it first",
                args.state.display()
            ))
        })?;
        let keys = store::from_data(&data).map_err(|source| CliError::Keys {
            path: state.path(&id),
            source,
        })?;
        cluster::StoredKeys {
            keys,
            issuer: store::issuer(&data).map(str::to_owned),
            retain_for: store::retain_for(&data),
            max_token_lifetime: store::max_token_lifetime(&data),
        }
    };
    let issuer = match args.issuer.or(stored.issuer) {
        Some(issuer) => issuer,
        None => {
            return Err(CliError::Usage(format!(
                "the keys of {id} record no issuer; pass --issuer"
            )));
        }
    };
    let retain_for = stored.retain_for.filter(|_| !args.force);
    token::check_lifetime(&args.ttl, retain_for)?;
    token::check_max_lifetime(&args.ttl, stored.max_token_lifetime.filter(|_| !args.force))?;
    if let Err(forced) = token::check_max_lifetime(&args.ttl, stored.max_token_lifetime) {
        eprintln!("warning: {}", forced.forced());
    }
    let request = MintRequest {
        subject: args.sub,
        audiences: args.aud,
        ttl: args.ttl.value(),
        session: args.session,
        claims,
    };
    println!(
        "{}",
        token::mint(&stored.keys, &issuer, &request, SystemClock.now())?
    );
    Ok(())
}

/// A `--claim` value that starts like a JSON list, object or string but does not parse
/// became a plain string (`roles=[a,b]` is the string "[a,b]", not a list): say so, with
/// what to write instead.
fn not_the_json_it_looks_like(key: &str, value: &serde_json::Value) -> Option<String> {
    let text = value.as_str()?;
    if !text.trim_start().starts_with(['[', '{', '"']) {
        return None;
    }
    let error = serde_json::from_str::<serde_json::Value>(text).err()?;
    Some(format!(
        r#"--claim {key}={text}: the value is not valid JSON ({error}), so the claim is the string {text:?}; for a list write {key}='["a","b"]' (JSON strings are double-quoted; single quotes keep them from the shell)"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_looks_like_json_but_is_not_is_pointed_out() {
        let warn = |text: &str| {
            let (key, value) = token::parse_claim(text).unwrap();
            not_the_json_it_looks_like(&key, &value)
        };
        let warning = warn("roles=[a,b]").unwrap();
        assert!(
            warning.contains("the string \"[a,b]\"") && warning.contains(r#"roles='["a","b"]'"#),
            "{warning}"
        );
        assert!(warn("meta={a: 1}").is_some());
        for fine in ["roles=[\"a\",\"b\"]", "n=3", "email=a@b", "empty=", "x=[]"] {
            assert_eq!(warn(fine), None, "{fine}");
        }
    }
}
