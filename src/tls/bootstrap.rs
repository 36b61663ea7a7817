//! Self-bootstrapped TLS, for clusters without cert-manager: authplane makes its own CA
//! and serving certificate, keeps them in a Secret in its namespace, renews the serving
//! certificate before it expires, and writes the CA into the `caBundle` of every webhook
//! of its ValidatingWebhookConfiguration.
//!
//! Every replica runs this; the Kubernetes API arbitrates. The Secret is created, and a
//! replica that gets `409 AlreadyExists` uses what the other one wrote, so all replicas
//! serve certificates of one CA. Renewals replace the Secret with its resourceVersion;
//! the loser of a race reads the winner's certificate. The CA stays (10 years), so a
//! renewal never changes the `caBundle` and never races with the apiserver's trust.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::{CertSlot, TlsError, certified_key};
use crate::clock::Clock;
use crate::metrics::Metrics;

/// The serving certificate's `notAfter`, so that a renewal is decided without parsing
/// X.509.
pub const NOT_AFTER_ANNOTATION: &str = "authplane.io/tls-not-after";
/// The DNS names the serving certificate was made for; a different `--webhook-service`
/// reissues it.
pub const DNS_NAMES_ANNOTATION: &str = "authplane.io/tls-dns-names";
/// The CA's subject. Fixed: a renewal rebuilds the issuer from it and the stored CA key,
/// so the new certificate chains to the stored CA certificate.
const CA_COMMON_NAME: &str = "authplane webhook CA";
/// How often every replica looks at the Secret and the webhook configuration: picks up
/// another replica's renewal, and restores a `caBundle` that an upgrade blanked.
const RECHECK: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// The Secret holding CA and serving certificate.
    pub secret: String,
    /// authplane's own namespace, where the Secret and the Service are.
    pub namespace: String,
    /// The webhook Service: the certificate is for `<service>.<namespace>.svc` and
    /// `<service>.<namespace>.svc.cluster.local`.
    pub service: String,
    /// The ValidatingWebhookConfiguration whose `caBundle`s are kept; none: not patched.
    pub webhook_configuration: Option<String>,
    /// Lifetime of a serving certificate.
    pub validity: SignedDuration,
    /// A serving certificate is renewed this long before it expires.
    pub renew_before: SignedDuration,
    /// Lifetime of the CA.
    pub ca_validity: SignedDuration,
}

impl BootstrapSettings {
    /// Serving certificates for 90 days, renewed 30 days before they expire (as
    /// cert-manager does by default); a CA for 10 years.
    pub fn new(
        secret: String,
        namespace: String,
        service: String,
        webhook_configuration: Option<String>,
    ) -> Self {
        Self {
            secret,
            namespace,
            service,
            webhook_configuration,
            validity: SignedDuration::from_hours(90 * 24),
            renew_before: SignedDuration::from_hours(30 * 24),
            ca_validity: SignedDuration::from_hours(3650 * 24),
        }
    }

    pub fn dns_names(&self) -> Vec<String> {
        let short = format!("{}.{}.svc", self.service, self.namespace);
        vec![format!("{short}.cluster.local"), short]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Secret {0}: {1}")]
    Unreadable(String, UnreadableSecret),
    #[error("{0} cannot be written into a certificate")]
    Time(String),
    #[error("ValidatingWebhookConfiguration {0} does not exist (yet)")]
    NoWebhookConfiguration(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why the Secret's certificates cannot be used (it is then replaced, never served).
#[derive(Debug, thiserror::Error)]
pub enum UnreadableSecret {
    #[error("no {0}")]
    MissingEntry(&'static str),
    #[error("no valid {NOT_AFTER_ANNOTATION} annotation")]
    NoExpiry,
    #[error(transparent)]
    ServingPair(#[from] TlsError),
    #[error("ca.key is not a private key")]
    CaKey,
}

/// What the Secret holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_pem: String,
    ca_key_pem: String,
    pub cert_pem: String,
    key_pem: String,
    pub not_after: Timestamp,
    pub dns_names: Vec<String>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("Material")
            .field("not_after", &self.not_after)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, BootstrapError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|_| BootstrapError::Time(t.to_string()))
}

fn ca_params(
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<CertificateParams, BootstrapError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

/// A little before now: a node whose clock is slightly behind still accepts it.
fn backdated(now: Timestamp) -> Timestamp {
    now - SignedDuration::from_mins(5)
}

impl Material {
    /// A new CA and a serving certificate signed by it.
    pub fn generate(settings: &BootstrapSettings, now: Timestamp) -> Result<Self, BootstrapError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ca = ca_params(backdated(now), now + settings.ca_validity)?.self_signed(&ca_key)?;
        Self::serving(ca.pem(), ca_key, settings, now)
    }

    /// A new serving certificate from the same CA.
    pub fn renewed(
        &self,
        settings: &BootstrapSettings,
        now: Timestamp,
    ) -> Result<Self, BootstrapError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        Self::serving(self.ca_pem.clone(), ca_key, settings, now)
    }

    fn serving(
        ca_pem: String,
        ca_key: KeyPair,
        settings: &BootstrapSettings,
        now: Timestamp,
    ) -> Result<Self, BootstrapError> {
        let dns_names = settings.dns_names();
        let ca_key_pem = ca_key.serialize_pem();
        // Only the subject, key identifier method and key usages matter to the issuer,
        // and they are fixed: the validity here is not used.
        let issuer = Issuer::new(ca_params(now, now)?, ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(dns_names.clone())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, dns_names[0].clone());
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + settings.validity;
        params.not_before = offset(backdated(now))?;
        params.not_after = offset(not_after)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem,
            ca_key_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: Timestamp::from_second(not_after.as_second()).unwrap_or(not_after),
            dns_names,
        })
    }

    /// Due for renewal, or made for other DNS names.
    pub fn needs_renewal(&self, settings: &BootstrapSettings, now: Timestamp) -> bool {
        now >= self.not_after - settings.renew_before || self.dns_names != settings.dns_names()
    }

    /// The serving pair, for the TLS server.
    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        // The chain includes the CA: harmless for clients that have it, and it lets a
        // client that pins the CA see the whole path.
        let chain = format!("{}{}", self.cert_pem, self.ca_pem);
        certified_key(
            chain.as_bytes(),
            self.key_pem.as_bytes(),
            "the bootstrapped certificate",
        )
    }

    fn to_secret(&self, settings: &BootstrapSettings, resource_version: Option<String>) -> Secret {
        let data = [
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
            ("ca.crt", &self.ca_pem),
            ("ca.key", &self.ca_key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "authplane".to_owned(),
                    ),
                    (
                        "app.kubernetes.io/component".to_owned(),
                        "webhook-tls".to_owned(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), self.not_after.to_string()),
                    (DNS_NAMES_ANNOTATION.to_owned(), self.dns_names.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn from_secret(secret: &Secret) -> Result<Self, UnreadableSecret> {
        let data = secret.data.clone().unwrap_or_default();
        let entry = |name: &'static str| {
            data.get(name)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
                .ok_or(UnreadableSecret::MissingEntry(name))
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let not_after = annotations
            .get(NOT_AFTER_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .ok_or(UnreadableSecret::NoExpiry)?;
        let material = Self {
            ca_pem: entry("ca.crt")?,
            ca_key_pem: entry("ca.key")?,
            cert_pem: entry("tls.crt")?,
            key_pem: entry("tls.key")?,
            not_after,
            dns_names: annotations
                .get(DNS_NAMES_ANNOTATION)
                .map(|n| n.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        };
        // Both pairs must load: the serving pair to serve, the CA key to renew.
        material.certified_key()?;
        KeyPair::from_pem(&material.ca_key_pem).map_err(|_| UnreadableSecret::CaKey)?;
        Ok(material)
    }
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Makes sure the Secret holds a CA and a current serving certificate, and returns them.
pub async fn ensure_secret(
    secrets: &Api<Secret>,
    settings: &BootstrapSettings,
    now: Timestamp,
) -> Result<Material, BootstrapError> {
    let id = format!("{}/{}", settings.namespace, settings.secret);
    let read = |secret: &Secret| {
        Material::from_secret(secret).map_err(|e| BootstrapError::Unreadable(id.clone(), e))
    };
    let (material, resource_version) = match secrets.get_opt(&settings.secret).await? {
        None => {
            let fresh = Material::generate(settings, now)?;
            match secrets
                .create(&PostParams::default(), &fresh.to_secret(settings, None))
                .await
            {
                Ok(created) => {
                    tracing::info!("TLS: created CA and serving certificate in Secret {id}");
                    (fresh, created.metadata.resource_version)
                }
                // Another replica was first: serve its CA, or the two would fight over
                // the caBundle.
                Err(e) if conflict(&e) => {
                    let theirs = secrets.get(&settings.secret).await?;
                    (read(&theirs)?, theirs.metadata.resource_version)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(secret) => match read(&secret) {
            Ok(material) => (material, secret.metadata.resource_version),
            Err(e) => {
                // Our own Secret, edited into something unusable: start over. The next
                // caBundle patch makes the apiserver trust the new CA.
                tracing::warn!("TLS: {e}; replacing it with a new CA and certificate");
                let fresh = Material::generate(settings, now)?;
                return replace(
                    secrets,
                    settings,
                    fresh,
                    secret.metadata.resource_version,
                    &read,
                )
                .await;
            }
        },
    };
    if !material.needs_renewal(settings, now) {
        return Ok(material);
    }
    let renewed = material.renewed(settings, now)?;
    tracing::info!(
        "TLS: renewing the serving certificate in Secret {id} (it expires {})",
        material.not_after
    );
    replace(secrets, settings, renewed, resource_version, &read).await
}

/// Replaces the Secret with `material`, guarded by `resource_version`; on a conflict,
/// what the other writer stored wins.
async fn replace(
    secrets: &Api<Secret>,
    settings: &BootstrapSettings,
    material: Material,
    resource_version: Option<String>,
    read: &impl Fn(&Secret) -> Result<Material, BootstrapError>,
) -> Result<Material, BootstrapError> {
    match secrets
        .replace(
            &settings.secret,
            &PostParams::default(),
            &material.to_secret(settings, resource_version),
        )
        .await
    {
        Ok(_) => Ok(material),
        Err(e) if conflict(&e) => read(&secrets.get(&settings.secret).await?),
        Err(e) => Err(e.into()),
    }
}

/// Writes the CA into the `caBundle` of every webhook of the configuration that does not
/// have it yet. Returns how many were patched.
pub async fn ensure_ca_bundle(
    webhooks: &Api<ValidatingWebhookConfiguration>,
    name: &str,
    ca_pem: &str,
) -> Result<usize, BootstrapError> {
    let Some(configuration) = webhooks.get_opt(name).await? else {
        return Err(BootstrapError::NoWebhookConfiguration(name.to_owned()));
    };
    let stale: Vec<&str> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes())
        })
        .map(|w| w.name.as_str())
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    // A strategic merge patch: webhooks merge by name, so only caBundle changes and a
    // webhook added meanwhile is left alone.
    let bundle = B64.encode(ca_pem);
    let patch = serde_json::json!({
        "webhooks": stale
            .iter()
            .map(|name| serde_json::json!({"name": name, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>(),
    });
    webhooks
        .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    tracing::info!("TLS: caBundle set on {} webhook(s) of {name}", stale.len());
    Ok(stale.len())
}

/// Keeps `slot` serving a current certificate from the Secret, and the webhook
/// configuration trusting its CA, until `shutdown`.
pub async fn run(
    client: Client,
    settings: BootstrapSettings,
    slot: Arc<CertSlot>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let mut served: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut failed = false;
        match ensure_secret(&secrets, &settings, clock.now()).await {
            Ok(material) => {
                if served.as_deref() != Some(material.cert_pem.as_str()) {
                    match material.certified_key() {
                        Ok(key) => {
                            slot.set(key);
                            served = Some(material.cert_pem.clone());
                            tracing::info!(
                                "TLS: serving the bootstrapped certificate (valid until {})",
                                material.not_after
                            );
                        }
                        Err(e) => {
                            failed = true;
                            metrics.reload_error("tls");
                            tracing::error!("TLS: {e}; the previous certificate keeps serving");
                        }
                    }
                }
                if let Some(name) = &settings.webhook_configuration
                    && let Err(e) = ensure_ca_bundle(&webhooks, name, &material.ca_pem).await
                {
                    failed = true;
                    metrics.reload_error("tls");
                    tracing::warn!("TLS: cannot set the caBundle: {e} (retrying)");
                }
            }
            Err(e) => {
                failed = true;
                metrics.reload_error("tls");
                tracing::error!("TLS bootstrap: {e} (retrying)");
            }
        }
        let wait = if failed {
            let wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            wait
        } else {
            backoff = Duration::from_secs(1);
            RECHECK
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BootstrapSettings {
        BootstrapSettings::new(
            "authplane-webhook-tls".into(),
            "authplane".into(),
            "authplane-webhook".into(),
            None,
        )
    }

    #[test]
    fn a_renewal_keeps_the_ca_and_the_secret_round_trips() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let first = Material::generate(&settings(), now).unwrap();
        assert!(!first.needs_renewal(&settings(), now));
        assert!(first.needs_renewal(&settings(), now + SignedDuration::from_hours(61 * 24)));
        let renewed = first.renewed(&settings(), now).unwrap();
        assert_eq!(renewed.ca_pem, first.ca_pem);
        assert_ne!(renewed.cert_pem, first.cert_pem);
        let secret = renewed.to_secret(&settings(), Some("3".into()));
        assert_eq!(Material::from_secret(&secret).unwrap(), renewed);
        let annotations = serde_json::to_string(&secret.metadata).unwrap();
        assert!(!annotations.contains("PRIVATE"), "no key outside data");
        assert!(!format!("{renewed:?}").contains("PRIVATE"));
        let mut other = settings();
        other.service = "other".into();
        assert!(renewed.needs_renewal(&other, now));
    }
}
