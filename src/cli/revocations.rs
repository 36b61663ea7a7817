//! `authplane revoke` and `authplane revocations list`: on a cluster through the API, in
//! dev mode as manifests in the folder (what `/revoke` writes too).

use std::path::Path;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::api::{
    AuthPolicy, ObjectKey, Revocation, RevocationSpec, RevokedKeyRef, SigningKey, Validate,
};
use crate::dev::manifests::ManifestLoader;
use crate::dev::revocations::ManifestWriter;
use crate::policy::lifetime::MAX_LEEWAY;
use crate::revocation::{Lapse, Matcher, RevocationIndex};

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

/// What the lapse of Revocations depends on: the Revocations, and the token lifetimes of
/// the SigningKeys and AuthPolicies.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub revocations: Vec<Revocation>,
    pub keys: Vec<SigningKey>,
    pub policies: Vec<AuthPolicy>,
}

impl Objects {
    fn index(&self, now: Timestamp) -> RevocationIndex {
        let (index, refused) =
            RevocationIndex::of(&self.revocations, &self.keys, &self.policies, now);
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
    let (mut index, _) = RevocationIndex::of([], &objects.keys, &objects.policies, now);
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
    })
}

/// On a cluster: every SigningKey and AuthPolicy (no Revocation).
pub async fn lifetimes_from_cluster(client: Client) -> Result<Objects, RevokeError> {
    let keys = Api::<SigningKey>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let policies = Api::<AuthPolicy>::all(client)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(Objects {
        revocations: Vec::new(),
        keys,
        policies,
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
