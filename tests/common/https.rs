//! HTTPS for the loopback tests: a throwaway PKI (real certificates from rcgen) and a
//! client that trusts exactly one CA and can keep one connection open across requests.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// A CA that signs serving certificates for `localhost`.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for `localhost` and its key, as PEM.
    pub fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A client configuration that trusts `ca_pem` and nothing else.
pub fn pinned(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTP/1.1 connection over TLS, reused for every request sent on it.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
}

/// Connects to `addr` as `localhost`, trusting only `ca_pem`; the handshake error if the
/// server's certificate is not one of that CA.
pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Result<Conn, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(pinned(ca_pem))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(Conn { send })
}

impl Conn {
    /// Sends one request on this connection; the status and the body.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Bytes) {
        self.send
            .ready()
            .await
            .expect("the connection is still open");
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let response = self.send.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    pub async fn get(&mut self, path: &str) -> (u16, String) {
        let (status, body) = self.request("GET", path, b"").await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// POSTs JSON and reads JSON back (asserting a 200).
    pub async fn post_json(&mut self, path: &str, body: &Value) -> Value {
        let (status, bytes) = self
            .request("POST", path, &serde_json::to_vec(body).unwrap())
            .await;
        assert_eq!(
            status,
            200,
            "POST {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}
