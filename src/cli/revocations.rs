//! `authplane revoke` and `authplane revocations list`: on a cluster through the API, in
//! dev mode as manifests in the folder (what `/revoke` writes too).

use std::path::Path;

use clap::Subcommand;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::api::{ObjectKey, Revocation, RevocationSpec, RevokedKeyRef, Validate};
use crate::cli::error::{self, CliError};
use crate::cli::target::{TargetArgs, cluster_client};
use crate::clock::{Clock, SystemClock};
use crate::dev::manifests::ManifestLoader;
use crate::dev::revocations::ManifestWriter;
use crate::revocation::{Matcher, RevocationIndex};

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("the Revocation is refused, nothing was written: {0}")]
    Refused(String),
    #[error("{0}")]
    Write(#[from] crate::server::revoke::WriteError),
    #[error("manifests folder {0}: {1}")]
    Manifests(String, String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What to revoke.
#[derive(Clone, Debug)]
pub enum What {
    TokenId(String),
    Subject {
        subject: String,
        issued_before: Option<Timestamp>,
    },
    Session(String),
}

/// A Revocation of the tokens of SigningKey `key`, created in `namespace` (default: the
/// key's, so that it applies everywhere).
pub fn build(
    key: &ObjectKey,
    namespace: Option<&str>,
    what: What,
    reason: Option<String>,
    name: Option<String>,
    now: Timestamp,
) -> Result<Revocation, RevokeError> {
    let namespace = namespace.unwrap_or(&key.namespace).to_owned();
    let mut spec = RevocationSpec {
        signing_key_ref: Some(RevokedKeyRef {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
        }),
        issuer: None,
        token_id: None,
        subject: None,
        issued_before: None,
        session_id: None,
        expires_at: None,
        reason,
    };
    match what {
        What::TokenId(jti) => spec.token_id = Some(jti),
        What::Subject {
            subject,
            issued_before,
        } => {
            spec.subject = Some(subject);
            spec.issued_before = issued_before.map(Time);
        }
        What::Session(sid) => spec.session_id = Some(sid),
    }
    let (name, generate_name) = match name {
        Some(name) => (Some(name), None),
        None => (None, Some("revoke-".to_owned())),
    };
    let revocation = Revocation {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace),
            creation_timestamp: Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now))),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    // The name is checked once it is known; the rest now, as the apiserver would.
    let mut named = revocation.clone();
    named
        .metadata
        .name
        .get_or_insert_with(|| "revoke-check".to_owned());
    let refused = named.validate();
    if !refused.is_empty() {
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(RevokeError::Refused(refused.join("; ")));
    }
    Ok(revocation)
}

/// A name for a Revocation in dev mode, where nothing generates one.
pub fn random_name() -> String {
    let mut bytes = [0u8; 5];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("revoke-{suffix}")
}

/// Dev mode: writes the Revocation as a manifest into `dir`; returns its file.
pub fn write_manifest(
    dir: &Path,
    revocation: &Revocation,
) -> Result<std::path::PathBuf, RevokeError> {
    Ok(ManifestWriter::write(dir, revocation)?)
}

/// On a cluster: creates the Revocation; returns its name.
pub async fn create(client: Client, mut revocation: Revocation) -> Result<ObjectKey, RevokeError> {
    let namespace = revocation.metadata.namespace.clone().unwrap_or_default();
    revocation.metadata.creation_timestamp = None;
    let created = Api::<Revocation>::namespaced(client, &namespace)
        .create(&PostParams::default(), &revocation)
        .await?;
    Ok(ObjectKey::of(&created.metadata))
}

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
