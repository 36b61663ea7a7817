//! `authplane revocations list`: the Revocations in force, with what they match and when
//! they lapse; on a cluster through the API, in dev mode from the manifests folder.

use std::path::Path;

use clap::Subcommand;
use jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::api::{ObjectKey, Revocation};
use crate::cli::error::{self, CliError};
use crate::cli::revoke::RevokeError;
use crate::cli::target::{TargetArgs, cluster_client};
use crate::clock::{Clock, SystemClock};
use crate::dev::manifests::ManifestLoader;
use crate::revocation::{Matcher, RevocationIndex};

/// One line of `revocations list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: ObjectKey,
    pub issuer: String,
    pub matches: String,
    pub reason: String,
    /// RFC 3339, `unknown` while the SigningKey is not known.
    pub expires: String,
    pub lapsed: bool,
}

/// The rows of `revocations`, with the lifetimes of `keys`, at `now`.
pub fn rows(
    revocations: &[Revocation],
    keys: &[crate::api::SigningKey],
    now: Timestamp,
) -> Vec<Row> {
    let mut index = RevocationIndex::default();
    for key in keys {
        index.set_key_lifetime(
            ObjectKey::of(&key.metadata),
            Some(key.spec.max_token_lifetime()),
        );
    }
    for revocation in revocations {
        if let Err(e) = index.apply(revocation, now) {
            eprintln!("{e} (not listed)");
        }
    }
    index
        .entries()
        .map(|entry| {
            let expires = index.expires(entry);
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
                expires: expires
                    .and_then(|s| Timestamp::from_second(s).ok())
                    .map_or("unknown".to_owned(), |t| t.to_string()),
                lapsed: expires.is_some_and(|s| s < now.as_second()),
            }
        })
        .collect()
}

/// Dev mode: the Revocations and SigningKeys of the manifests folder.
pub fn from_manifests(
    dir: &Path,
) -> Result<(Vec<Revocation>, Vec<crate::api::SigningKey>), RevokeError> {
    let (desired, errors) = ManifestLoader::default().load(dir);
    for error in errors {
        eprintln!("{error}");
    }
    Ok((
        desired
            .revocations
            .into_values()
            .map(|r| Revocation::clone(&r))
            .collect(),
        desired
            .signing_keys
            .into_values()
            .map(|k| crate::api::SigningKey::clone(&k))
            .collect(),
    ))
}

/// On a cluster: every Revocation and SigningKey.
pub async fn from_cluster(
    client: Client,
) -> Result<(Vec<Revocation>, Vec<crate::api::SigningKey>), RevokeError> {
    let revocations = Api::<Revocation>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let keys = Api::<crate::api::SigningKey>::all(client)
        .list(&ListParams::default())
        .await?
        .items;
    Ok((revocations, keys))
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
    let (found, keys) = match &target.manifests {
        Some(dir) => from_manifests(dir)?,
        None => {
            let runtime = error::runtime()?;
            runtime.block_on(async {
                let client = cluster_client(target.kubeconfig.as_ref()).await?;
                Ok::<_, CliError>(from_cluster(client).await?)
            })?
        }
    };
    print!("{}", table(&rows(&found, &keys, SystemClock.now())));
    Ok(())
}
