//! HTTPS serving with rustls (aws-lc provider). The certificate sits in a [`CertSlot`]
//! that the server consults at every handshake, so a new certificate is a pointer swap:
//! established connections keep the session they negotiated, new ones get the new
//! certificate, and nothing restarts.
//!
//! Where the certificate comes from is the job of [`files`] (PEM files of a mounted
//! Secret, reloaded when they change) or [`bootstrap`] (authplane's own CA and serving
//! certificate in a Secret, with the webhook's `caBundle` kept in step).

pub mod bootstrap;
pub mod files;

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key was refused. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: not a PEM certificate chain: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    BadKey { what: String },
    #[error("the private key does not fit the certificate: {0}")]
    Mismatch(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("cannot watch {path}: {reason}")]
    Watch { path: String, reason: String },
}

/// The serving certificate, swapped atomically; empty until the first one is loaded (a
/// handshake meanwhile fails, and `/readyz` says not ready).
#[derive(Default)]
pub struct CertSlot {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertSlot")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertSlot {
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and its private key from PEM, checked to belong together.
/// `what` names the source in errors (file names, `Secret ns/name`).
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    // The PEM error could quote the input: report only that it failed.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::BadKey {
        what: what.to_owned(),
    })?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(e) => Err(TlsError::Mismatch(e.to_string())),
    }
}

/// The server configuration: TLS 1.2 and 1.3 with aws-lc, HTTP/1.1, the certificate from
/// `slot` at every handshake.
pub fn server_config(slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for_clients(slot, None)
}

/// [`server_config`]; with `clients`, a client must present a certificate of one of
/// these CAs (the apiserver, configured to present one to its webhooks), or the
/// handshake fails.
pub fn server_config_for_clients(
    slot: Arc<CertSlot>,
    clients: Option<Arc<rustls::RootCertStore>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        ),
    };
    let mut config = builder.with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates (PEM) a client certificate must chain to.
pub fn client_roots(pem: &[u8], what: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        what: what.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(Arc::new(roots))
}

/// A short fingerprint of a PEM pair, to tell a real change from a touched file without
/// keeping or logging the key.
fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(&(cert_pem.len() as u64).to_be_bytes());
    context.update(cert_pem);
    context.update(key_pem);
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}
