//! `authplane revocations list`: the Revocations in force, with what they match and when
//! they lapse; on a cluster through the API, in dev mode from the manifests folder.

use std::path::Path;

use clap::Subcommand;
use jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::api::{AuthPolicy, ObjectKey, Revocation, SigningKey, TokenClient};
use crate::cli::error::{self, CliError};
use crate::cli::revoke::RevokeError;
use crate::cli::target::{TargetArgs, cluster_client};
use crate::clock::{Clock, SystemClock};
use crate::dev::manifests::ManifestLoader;
use crate::policy::lifetime::MAX_LEEWAY;
use crate::revocation::{Lapse, Matcher, RevocationIndex};

/// What the lapse of Revocations depends on: the Revocations, the token lifetimes of the
/// SigningKeys and AuthPolicies, and how long the TokenClients' refresh families live.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub revocations: Vec<Revocation>,
    pub keys: Vec<SigningKey>,
    pub policies: Vec<AuthPolicy>,
    pub token_clients: Vec<TokenClient>,
}

impl Objects {
    fn index(&self, now: Timestamp) -> RevocationIndex {
        let (index, refused) = RevocationIndex::of(
            &self.revocations,
            &self.keys,
            &self.policies,
            &self.token_clients,
            now,
        );
        for refused in refused {
            eprintln!("{refused} (not listed)");
        }
        index
    }
}

/// One line of `revocations list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: ObjectKey,
    pub issuer: String,
    pub matches: String,
    pub reason: String,
    /// RFC 3339; `unknown` while the SigningKey is not known, `never` while a policy
    /// accepts the issuer's tokens of any lifetime.
    pub expires: String,
    pub lapsed: bool,
}

/// The rows of the Revocations of `objects`, at `now`.
pub fn rows(objects: &Objects, now: Timestamp) -> Vec<Row> {
    let index = objects.index(now);
    index
        .entries()
        .map(|entry| {
            let lapse = index.lapse(entry);
            Row {
                id: entry.id.clone(),
                issuer: entry.issuer.to_string(),
                matches: match &entry.matcher {
                    Matcher::TokenId(jti) => format!("jti={jti}"),
                    Matcher::Session(sid) => format!("sid={sid}"),
                    Matcher::Subject {
                        subject,
                        issued_before,
                    } => format!(
                        "sub={subject} iat<={}",
                        Timestamp::from_second(*issued_before)
                            .map(|t| t.to_string())
                            .unwrap_or_default()
                    ),
                },
                reason: entry.reason.clone().unwrap_or_default(),
                expires: match &lapse {
                    Lapse::At(at) => Timestamp::from_second(*at)
                        .map_or_else(|_| "unknown".to_owned(), |t| t.to_string()),
                    Lapse::Unknown => "unknown".to_owned(),
                    Lapse::Never { .. } => "never".to_owned(),
                },
                lapsed: lapse.lapsed(now.as_second()),
            }
        })
        .collect()
}

/// What `revoke` says of a new Revocation: when it lapses and why then, or why it cannot
/// say. The SigningKeys and AuthPolicies of `objects` decide (its Revocations do not).
pub fn lapse_note(objects: &Objects, revocation: &Revocation, now: Timestamp) -> String {
    let (mut index, _) = RevocationIndex::of(
        [],
        &objects.keys,
        &objects.policies,
        &objects.token_clients,
        now,
    );
    let mut named = revocation.clone();
    named
        .metadata
        .name
        .get_or_insert_with(|| "revoke-new".to_owned());
    if let Err(refused) = index.apply(&named, now) {
        return format!("cannot tell when it lapses: {refused}");
    }
    let Some(entry) = index.get(&ObjectKey::of(&named.metadata)) else {
        return "cannot tell when it lapses".to_owned();
    };
    match index.lapse(entry) {
        Lapse::At(at) => {
            let issued_before = match &entry.matcher {
                Matcher::Subject { issued_before, .. } => *issued_before,
                Matcher::TokenId(_) | Matcher::Session(_) => entry.created,
            };
            let longest = jiff::SignedDuration::from_secs(at - issued_before) - MAX_LEEWAY;
            let at = Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string());
            format!(
                "the Revocation lapses at {at}: by then no token it matches passes any AuthPolicy (tokens of {} pass at most {longest:#} after their iat, plus up to {MAX_LEEWAY:#} of leeway). A token minted to live longer (token mint --force) is refused by every AuthPolicy that does not accept it; a policy that accepts such tokens later does not bring back a lapsed Revocation",
                entry.issuer
            )
        }
        Lapse::Unknown => format!(
            "warning: SigningKey {} is not known here, so neither is how long its tokens live: the Revocation does not lapse until it is",
            entry.issuer
        ),
        Lapse::Never { policy } => format!(
            "warning: AuthPolicy {policy} accepts tokens of {} of any lifetime, so the Revocation does not lapse: set spec.expiresAt, or a maxTokenLifetime on that policy",
            entry.issuer
        ),
    }
}

/// Dev mode: the Revocations, SigningKeys and AuthPolicies of the manifests folder.
pub fn from_manifests(dir: &Path) -> Result<Objects, RevokeError> {
    let (desired, errors) = ManifestLoader::default().load(dir);
    for error in errors {
        eprintln!("{error}");
    }
    Ok(Objects {
        revocations: desired
            .revocations
            .into_values()
            .map(|r| Revocation::clone(&r))
            .collect(),
        keys: desired
            .signing_keys
            .into_values()
            .map(|k| SigningKey::clone(&k))
            .collect(),
        policies: desired
            .auth_policies
            .into_values()
            .map(|p| AuthPolicy::clone(&p))
            .collect(),
        token_clients: desired
            .token_clients
            .into_values()
            .map(|c| TokenClient::clone(&c))
            .collect(),
    })
}

/// On a cluster: every SigningKey, AuthPolicy and TokenClient (no Revocation).
pub async fn lifetimes_from_cluster(client: Client) -> Result<Objects, RevokeError> {
    let keys = Api::<SigningKey>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let policies = Api::<AuthPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let token_clients = Api::<TokenClient>::all(client)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(Objects {
        revocations: Vec::new(),
        keys,
        policies,
        token_clients,
    })
}

/// On a cluster: every Revocation, SigningKey and AuthPolicy.
pub async fn from_cluster(client: Client) -> Result<Objects, RevokeError> {
    let revocations = Api::<Revocation>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(Objects {
        revocations,
        ..lifetimes_from_cluster(client).await?
    })
}

/// The table `revocations list` prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("NAMESPACE/NAME\tISSUER\tMATCHES\tREASON\tEXPIRES\n");
    for row in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}{}\n",
            row.id,
            row.issuer,
            row.matches,
            if row.reason.is_empty() {
                "-"
            } else {
                &row.reason
            },
            row.expires,
            if row.lapsed { " (lapsed)" } else { "" }
        ));
    }
    out
}

#[derive(Subcommand)]
pub(crate) enum RevocationsCommand {
    /// List the Revocations, with what they match and when they lapse.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub(crate) fn list_revocations(target: TargetArgs) -> Result<(), CliError> {
    target.announce();
    let objects = match &target.manifests {
        Some(dir) => from_manifests(dir)?,
        None => {
            let runtime = error::runtime()?;
            runtime.block_on(async {
                let client = cluster_client(target.kubeconfig.as_ref()).await?;
                Ok::<_, CliError>(from_cluster(client).await?)
            })?
        }
    };
    print!("{}", table(&rows(&objects, SystemClock.now())));
    Ok(())
}
