//! `authplane revoke`: creates a Revocation of a SigningKey's tokens; on a cluster
//! through the API, in dev mode as a manifest in the folder (what `/revoke` writes too).
//!
//! Nothing is written that would not apply: the Revocation is reviewed as the apiserver
//! (the CRD's schema and CEL rules), the admission webhook and dev mode review it, and
//! the SigningKey it names must exist.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::admission::{self, Kind, SigningKeyIndex};
use crate::api::{ObjectKey, Revocation, RevocationSpec, RevokedKeyRef, SigningKey};
use crate::cli::edit::print_warnings;
use crate::cli::error::{self, CliError};
use crate::cli::flags;
use crate::cli::revocations::{from_manifests, lapse_note, lifetimes_from_cluster};
use crate::cli::target::{TargetArgs, cluster_client, parse_id};
use crate::clock::{Clock, SystemClock};
use crate::dev::manifests::ManifestLoader;
use crate::dev::revocations::ManifestWriter;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject", "session"])))]
#[command(mut_arg("manifests", |a| a.help(
    "Dev mode: write the Revocation as a manifest into the folder of `authplane dev` instead of creating it on a cluster"
)))]
pub(crate) struct RevokeTokensArgs {
    /// The SigningKey whose tokens are revoked, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    issuer: String,
    /// One token: its `jti`.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// Every token of this subject (`sub`) issued at or before --before.
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,
    /// With --subject: tokens issued at or before this RFC 3339 instant, such as
    /// 2026-01-31T12:00:00Z (default: now).
    #[arg(long, value_name = "TIME", requires = "subject", value_parser = flags::rfc3339_time)]
    before: Option<Timestamp>,
    /// Every token of this session (`sid`).
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// Why, at most 256 characters (shown in logs; metrics keep logout, payment_failed,
    /// password_changed, compromised, account_disabled, and `other` for the rest).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Create the Revocation in this namespace: it then applies only to that
    /// namespace's AuthPolicies (default: the SigningKey's namespace, everywhere).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("the Revocation is refused, nothing was written: {0}")]
    Refused(String),
    #[error(
        "SigningKey {key} {missing}, so the Revocation would never apply; nothing was written ({hint})"
    )]
    NoSigningKey {
        key: ObjectKey,
        /// `is not defined in the manifests of DIR`, `does not exist`.
        missing: String,
        /// What exists, or how to find out.
        hint: String,
    },
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

pub(crate) fn revoke_tokens(args: RevokeTokensArgs) -> Result<(), CliError> {
    let key = parse_id(&args.issuer, "--issuer")?;
    let what = match (args.jti, args.subject, args.session) {
        (Some(jti), None, None) => What::TokenId(jti),
        (None, Some(subject), None) => What::Subject {
            subject,
            issued_before: args.before,
        },
        (None, None, Some(sid)) => What::Session(sid),
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --jti, --subject and --session".into(),
            ));
        }
    };
    args.target.announce();
    let now = SystemClock.now();
    if let Some(dir) = &args.target.manifests {
        let revocation = build(
            &key,
            args.namespace.as_deref(),
            what,
            args.reason,
            Some(random_name()),
            now,
        );
        let (file, warnings) = write_manifest(dir, &revocation)?;
        print_warnings(warnings);
        let note = lapse_note(&from_manifests(dir)?, &revocation, now);
        let id = ObjectKey::of(&revocation.metadata);
        println!("Revocation {id} created");
        eprintln!(
            "wrote {}; a running `authplane dev` applies it within a second",
            file.display()
        );
        eprintln!("{note}");
        return Ok(());
    }
    let revocation = build(
        &key,
        args.namespace.as_deref(),
        what,
        args.reason,
        None,
        now,
    );
    let runtime = error::runtime()?;
    runtime.block_on(async {
        let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
        let (id, warnings) = create(client.clone(), revocation.clone()).await?;
        print_warnings(warnings);
        println!("Revocation {id} created");
        // Reading every SigningKey and AuthPolicy may be more than a namespace's
        // revoker is allowed: then it only says so.
        match lifetimes_from_cluster(client).await {
            Ok(objects) => eprintln!("{}", lapse_note(&objects, &revocation, now)),
            Err(e) => eprintln!("cannot tell when it lapses: {e}"),
        }
        Ok(())
    })
}

/// A Revocation of the tokens of SigningKey `key`, created in `namespace` (default: the
/// key's, so that it applies everywhere). It is reviewed before it is written.
pub fn build(
    key: &ObjectKey,
    namespace: Option<&str>,
    what: What,
    reason: Option<String>,
    name: Option<String>,
    now: Timestamp,
) -> Revocation {
    let namespace = namespace.unwrap_or(&key.namespace).to_owned();
    let mut spec = RevocationSpec {
        signing_key_ref: Some(RevokedKeyRef {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
        }),
        reason,
        ..RevocationSpec::default()
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
    Revocation {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace),
            creation_timestamp: Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now))),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// A name for a Revocation in dev mode, where nothing generates one.
pub fn random_name() -> String {
    let mut bytes = [0u8; 5];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("revoke-{suffix}")
}

/// The SigningKeys a review may take as existing.
struct Known(BTreeSet<ObjectKey>);

impl SigningKeyIndex for Known {
    fn contains(&self, id: &ObjectKey) -> bool {
        self.0.contains(id)
    }
}

/// Reviews `revocation` as the apiserver, the admission webhook and dev mode do (one
/// implementation for the three): its refusals refuse it; its warnings are returned.
pub fn review(
    revocation: &Revocation,
    keys: &dyn SigningKeyIndex,
) -> Result<Vec<String>, RevokeError> {
    let mut object = serde_json::to_value(revocation)
        .map_err(|e| RevokeError::Refused(format!("cannot be written as JSON: {e}")))?;
    if let Some(fields) = object.as_object_mut() {
        fields.insert("apiVersion".into(), crate::api::API_VERSION.into());
        fields.insert("kind".into(), "Revocation".into());
    }
    let verdict = admission::review(
        Kind::Revocation,
        &object,
        None,
        None,
        keys,
        SystemClock.now(),
    );
    if !verdict.allowed() {
        let refused: Vec<String> = verdict.refusals.iter().map(ToString::to_string).collect();
        return Err(RevokeError::Refused(refused.join("; ")));
    }
    Ok(verdict.warnings)
}

/// The SigningKey a Revocation names.
fn signing_key_of(revocation: &Revocation) -> Option<ObjectKey> {
    revocation
        .spec
        .signing_key_id(&ObjectKey::of(&revocation.metadata).namespace)
}

/// Dev mode: reviews the Revocation against the folder's SigningKeys and writes it as a
/// manifest into `dir`; returns its file and the review's warnings.
pub fn write_manifest(
    dir: &Path,
    revocation: &Revocation,
) -> Result<(std::path::PathBuf, Vec<String>), RevokeError> {
    let (desired, errors) = ManifestLoader::default().load(dir);
    let keys: BTreeSet<ObjectKey> = desired.signing_keys.keys().cloned().collect();
    if let Some(key) = signing_key_of(revocation).filter(|key| !keys.contains(key)) {
        let defined: Vec<String> = keys.iter().map(ToString::to_string).collect();
        let mut hint = match defined.as_slice() {
            [] => "it defines no SigningKey".to_owned(),
            _ => format!("the SigningKeys there: {}", defined.join(", ")),
        };
        if !errors.is_empty() {
            // The key may be in a file dev mode refuses (and serves from its last good
            // version): say so rather than let the list mislead.
            hint.push_str(&format!(
                "; {} file(s) there could not be read, such as {}",
                errors.len(),
                errors[0]
            ));
        }
        return Err(RevokeError::NoSigningKey {
            key,
            missing: format!("is not defined in the manifests of {}", dir.display()),
            hint,
        });
    }
    let warnings = review(revocation, &Known(keys))?;
    Ok((ManifestWriter::write(dir, revocation)?, warnings))
}

/// On a cluster: checks that the SigningKey exists, reviews the Revocation, and creates
/// it; returns its name and the review's warnings.
pub async fn create(
    client: Client,
    mut revocation: Revocation,
) -> Result<(ObjectKey, Vec<String>), RevokeError> {
    let namespace = revocation.metadata.namespace.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let mut known = BTreeSet::new();
    if let Some(key) = signing_key_of(&revocation) {
        match Api::<SigningKey>::namespaced(client.clone(), &key.namespace)
            .get_opt(&key.name)
            .await
        {
            Ok(Some(_)) => {
                known.insert(key);
            }
            Ok(None) => {
                return Err(RevokeError::NoSigningKey {
                    missing: "does not exist".to_owned(),
                    hint: format!("`kubectl get signingkeys -n {}` lists them", key.namespace),
                    key,
                });
            }
            // Who may revoke in one namespace need not read the keys of another: the
            // Revocation is not refused for that, and the user is told what is unknown.
            Err(kube::Error::Api(status)) if status.code == 403 => {
                warnings.push(format!(
                    "cannot check that SigningKey {key} exists (reading it is forbidden to you): if it does not, this Revocation never applies"
                ));
                known.insert(key);
            }
            Err(e) => return Err(e.into()),
        }
    }
    warnings.extend(review(&revocation, &Known(known))?);
    revocation.metadata.creation_timestamp = None;
    let created = Api::<Revocation>::namespaced(client, &namespace)
        .create(&PostParams::default(), &revocation)
        .await?;
    Ok((ObjectKey::of(&created.metadata), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock::Handle;

    fn respond(
        request: (
            Request<Body>,
            tower_test::mock::SendResponse<Response<Body>>,
        ),
        status: u16,
        body: serde_json::Value,
    ) -> Request<Body> {
        let (request, send) = request;
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        request
    }

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
    }

    fn web() -> ObjectKey {
        ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        }
    }

    fn revocation(reason: &str) -> Revocation {
        build(
            &web(),
            None,
            What::Subject {
                subject: "zoe".into(),
                issued_before: None,
            },
            Some(reason.into()),
            None,
            Timestamp::now(),
        )
    }

    const KEY_PATH: &str = "/apis/authplane.io/v1alpha1/namespaces/auth/signingkeys/web";

    /// Runs `create` against a fake apiserver; `serve` answers its requests, and the
    /// requests it did not expect fail the test.
    async fn run<F, Fut>(
        revocation: Revocation,
        serve: F,
    ) -> Result<(ObjectKey, Vec<String>), RevokeError>
    where
        F: FnOnce(Handle<Request<Body>, Response<Body>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Handle<Request<Body>, Response<Body>>> + Send,
    {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = serve(handle).await;
            // Nothing more: the client is gone once `create` returns.
            assert!(
                handle.next_request().await.is_none(),
                "an unexpected request"
            );
        });
        let outcome = create(Client::new(service, "default"), revocation).await;
        server.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn a_revocation_of_a_missing_signing_key_is_not_created() {
        let refused = run(revocation("logout"), |mut handle| async move {
            let request = respond(handle.next_request().await.unwrap(), 404, not_found());
            assert_eq!(request.uri().path(), KEY_PATH);
            handle
        })
        .await
        .unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("SigningKey auth/web does not exist, so the Revocation would never apply; nothing was written"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_revocation_the_apiserver_would_refuse_is_not_sent() {
        let refused = run(revocation(&"x".repeat(300)), |mut handle| async move {
            respond(
                handle.next_request().await.unwrap(),
                200,
                json!({
                    "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
                    "metadata": {"name": "web", "namespace": "auth"}, "spec": {},
                }),
            );
            handle
        })
        .await
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the Revocation is refused, nothing was written: spec.reason: may not be longer than 256 characters (300)"
        );
    }

    #[tokio::test]
    async fn a_good_revocation_is_created_and_an_unknowable_key_is_a_warning() {
        let (id, warnings) = run(revocation("logout"), |mut handle| async move {
            let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403});
            respond(handle.next_request().await.unwrap(), 403, forbidden);
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), "POST");
            assert_eq!(
                request.uri().path(),
                "/apis/authplane.io/v1alpha1/namespaces/auth/revocations"
            );
            let mut created = json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
                "metadata": {"name": "revoke-abcde", "namespace": "auth"},
                "spec": {"signingKeyRef": {"name": "web", "namespace": "auth"}, "subject": "zoe"},
            });
            created["spec"]["reason"] = "logout".into();
            respond((request, send), 201, created);
            handle
        })
        .await
        .unwrap();
        assert_eq!(id.to_string(), "auth/revoke-abcde");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("cannot check that SigningKey auth/web exists"));
    }
}
