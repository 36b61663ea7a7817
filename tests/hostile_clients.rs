//! Availability under hostile clients: what a client sends must not grow what the server
//! keeps (metric series), and a slow or greedy client must not hold the server's memory
//! or connections. Real servers on loopback, real sockets.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use authplane::clock::SystemClock;
use authplane::dev::{self, DevConfig, DevServer};
use authplane::driver::serve::Settings;
use authplane::server::limits::Limits;
use authplane::tls::files::TlsFiles;
use common::Dev;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An AdmissionReview of a kind that is not ours, as anyone who can reach the webhook
/// could send one.
fn foreign_review(uid: usize, kind: &str) -> serde_json::Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{uid}"),
            "kind": {"group": "example.com", "version": "v1", "kind": kind},
            "resource": {"group": "example.com", "version": "v1", "resource": "things"},
            "name": "x",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "mallory"},
            "object": {"apiVersion": "example.com/v1", "kind": kind, "metadata": {"name": "x"}},
            "dryRun": false,
        }
    })
}

#[tokio::test]
async fn request_kinds_never_become_metric_labels() {
    let dev = Dev::start(&[]).await;
    let before = dev.get("/metrics").await.text().await.unwrap().len();
    for i in 0..200 {
        // 2 KiB each, all distinct: 400 KiB of labels if any of it were kept.
        let kind = format!("K{i:04}{}", "x".repeat(2048));
        let response = dev
            .http
            .post(dev.url("/validate"))
            .json(&foreign_review(i, &kind))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], true, "not ours: allowed");
    }
    let text = dev.get("/metrics").await.text().await.unwrap();
    assert!(
        text.len() < before + 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains(
            r#"authplane_admission_reviews_total{kind="other",operation="CREATE",result="skipped"} 200"#
        ),
        "{text}"
    );
    dev.stop().await;
}

/// A dev server with these limits, TLS when `tls` is given (certificate and key PEM).
async fn limited(limits: Limits, tls: Option<(&str, &str)>) -> (DevServer, tempfile::TempDir) {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    let tls = tls.map(|(cert, key)| {
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        }
    });
    let config = DevConfig {
        manifests: dir.path().join("manifests"),
        state: dir.path().join("state"),
        listen: "127.0.0.1:0".parse().unwrap(),
        external_url: None,
        decision_cache_size: 100,
        tls,
        revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
        unconfined_issuer_namespaces: Vec::new(),
        serving: Settings {
            limits,
            ..Settings::default()
        },
        tokens: Default::default(),
    };
    let server = dev::start(config, Arc::new(SystemClock)).await.unwrap();
    (server, dir)
}

const SHORT: Duration = Duration::from_secs(1);

/// Reads until the server closes the connection; what it sent, and how long that took.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin)) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server never closed the connection");
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// One request on an open connection; the status line of its answer.
async fn get(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(stream).await
}

/// The status line of the next answer on `stream` (small answers: read until the body).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.lines().next().unwrap().to_owned();
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected_at_the_header_timeout() {
    let limits = Limits {
        header_read_timeout: SHORT,
        ..Limits::default()
    };
    let (server, _dir) = limited(limits, None).await;
    let slow = TcpStream::connect(server.addr()).await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    // One byte every 100 ms: every read makes progress, the headers never end.
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ").await;
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (answer, after) = until_closed(&mut reader).await;
    trickle.abort();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert!(
        after >= SHORT && after < SHORT * 5,
        "closed after {after:?}"
    );

    // Another client meanwhile is served as usual.
    let mut fine = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut fine, "/healthz").await, "HTTP/1.1 200 OK");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: SHORT,
        ..Limits::default()
    };
    let (server, _dir) = limited(limits, None).await;
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut client, "/healthz").await, "HTTP/1.1 200 OK");
    // Reused while it is fresh.
    assert_eq!(get(&mut client, "/healthz").await, "HTTP/1.1 200 OK");
    let (rest, after) = until_closed(&mut client).await;
    assert_eq!(rest, "");
    assert!(
        after >= SHORT * 9 / 10 && after < SHORT * 5,
        "closed after {after:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_connection_closed() {
    let (server, _dir) = limited(Limits::default(), None).await;
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    // 40 KiB of headers, over the default 32 KiB: hyper's own default would take 400 KB.
    let header = format!("x-big: {}\r\n", "a".repeat(1024)).repeat(40);
    client
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{header}\r\n").as_bytes())
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut client).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        answer.lines().next()
    );
    // Headers under the limit are fine.
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    let header = format!("x-big: {}\r\n", "a".repeat(1024)).repeat(20);
    client
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{header}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client).await, "HTTP/1.1 200 OK");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_the_open_ones_are_served() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (server, _dir) = limited(limits, None).await;
    let mut first = TcpStream::connect(server.addr()).await.unwrap();
    let mut second = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(get(&mut second, "/healthz").await, "HTTP/1.1 200 OK");
    // The kernel completes the third handshake (the backlog), the server does not serve it.
    let mut third = TcpStream::connect(server.addr()).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 64];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "a third connection was served: {waited:?}");
    // The two open connections keep being served.
    assert_eq!(get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(get(&mut second, "/healthz").await, "HTTP/1.1 200 OK");
    // One closes: the waiting one is taken and answered.
    drop(first);
    assert_eq!(read_answer(&mut third).await, "HTTP/1.1 200 OK");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_at_the_body_timeout() {
    let limits = Limits {
        body_timeout: SHORT,
        ..Limits::default()
    };
    let (server, _dir) = limited(limits, None).await;
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    client
        .write_all(b"POST /validate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        read_answer(&mut client).await,
        "HTTP/1.1 408 Request Timeout"
    );
    assert!(started.elapsed() < SHORT * 5, "{:?}", started.elapsed());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_is_disconnected() {
    let pki = common::https::Pki::new("test CA");
    let (cert, key) = pki.leaf();
    let limits = Limits {
        header_read_timeout: SHORT,
        ..Limits::default()
    };
    let (server, _dir) = limited(limits, Some((&cert, &key))).await;
    // A TCP connection to the HTTPS listener that sends nothing.
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let (_, after) = until_closed(&mut silent).await;
    assert!(
        after >= SHORT * 9 / 10 && after < SHORT * 5,
        "closed after {after:?}"
    );
    // A real client is served.
    let mut conn = common::https::connect(server.addr(), &pki.ca_pem)
        .await
        .unwrap();
    assert_eq!(conn.get("/healthz").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_an_admin_listener_status_the_status_page_and_metrics_are_served_there_only() {
    use authplane::admission::NoSigningKeys;
    use authplane::driver::serve::{self, Listener};
    use authplane::metrics::Metrics;
    use authplane::registry::{Registry, Snapshot};
    use authplane::server::{AppState, Endpoints};

    let registry = Registry::default();
    registry.publish(Snapshot {
        policies_known: true,
        ..Snapshot::default()
    });
    let state = AppState {
        registry: Arc::new(registry),
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(SystemClock),
        base_url: Arc::from("http://authplane.example"),
        signing_keys: Arc::new(NoSigningKeys),
        tls: None,
        revoke: None,
        token: None,
    };
    let public = serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = serve::start(
        state,
        vec![
            Listener {
                socket: public,
                endpoints: Endpoints::Public,
                tls: None,
                client_cas: None,
            },
            Listener {
                socket: admin,
                endpoints: Endpoints::Admin,
                tls: None,
                client_cas: None,
            },
        ],
        Limits::default(),
        &stopped,
    )
    .unwrap();
    let status = |addr, path: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        get(&mut stream, path).await
    };
    let admin_only = ["/metrics", "/status", "/ui", "/ui/app.js", "/ui/style.css"];
    for path in admin_only.iter().chain(&["/status/shop/api"]) {
        assert_eq!(
            status(public_addr, path).await,
            "HTTP/1.1 404 Not Found",
            "{path}"
        );
    }
    for path in admin_only {
        assert_eq!(status(admin_addr, path).await, "HTTP/1.1 200 OK", "{path}");
    }
    // The policy does not exist: the admin listener answers for it all the same.
    assert_eq!(
        status(admin_addr, "/status/shop/api").await,
        "HTTP/1.1 404 Not Found"
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(public_addr, path).await, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(status(admin_addr, path).await, "HTTP/1.1 200 OK", "{path}");
    }
    // Decisions are not served on the admin listener.
    assert_eq!(
        status(admin_addr, "/authz/shop/api").await,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(public_addr, "/authz/shop/api").await,
        "HTTP/1.1 404 Not Found"
    );
    stop.send(true).unwrap();
    serving.stopped().await.unwrap();
}

#[tokio::test]
async fn the_webhook_listener_can_require_a_client_certificate() {
    use authplane::admission::NoSigningKeys;
    use authplane::driver::serve::{self, Listener};
    use authplane::metrics::Metrics;
    use authplane::registry::{Registry, Snapshot};
    use authplane::server::{AppState, Endpoints};
    use authplane::tls::{self, CertSlot};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    common::install_crypto();
    let server_ca = common::https::Pki::new("serving CA");
    let apiserver_ca = common::https::Pki::new("apiserver client CA");
    let stranger_ca = common::https::Pki::new("someone else");
    let (cert, key) = server_ca.leaf();
    let slot = Arc::new(CertSlot::default());
    slot.set(tls::certified_key(cert.as_bytes(), key.as_bytes(), "test").unwrap());
    let registry = Registry::default();
    registry.publish(Snapshot::default());
    let state = AppState {
        registry: Arc::new(registry),
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(SystemClock),
        base_url: Arc::from("https://authplane.example"),
        signing_keys: Arc::new(NoSigningKeys),
        tls: Some(slot.clone()),
        revoke: None,
        token: None,
    };
    let socket = serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let listener = Listener {
        socket,
        endpoints: Endpoints::WithAdmission,
        tls: Some(slot),
        client_cas: Some(tls::client_roots(apiserver_ca.ca_pem.as_bytes(), "test").unwrap()),
    };
    let serving = serve::start(state, vec![listener], Limits::default(), &stopped).unwrap();

    // GET /healthz over TLS, presenting `client` (a certificate and key PEM) if any.
    let healthz = |client: Option<(String, String)>| {
        let server_ca = server_ca.ca_pem.clone();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = match client {
                None => builder.with_no_client_auth(),
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        CertificateDer::pem_slice_iter(cert.as_bytes())
                            .map(Result::unwrap)
                            .collect(),
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap(),
            };
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(answer.lines().next().unwrap_or("").to_owned())
        }
    };
    assert_eq!(
        healthz(Some(apiserver_ca.leaf())).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    // TLS 1.3 settles client authentication after the handshake: the refusal arrives as
    // the first read or write fails.
    for client in [None, Some(stranger_ca.leaf())] {
        let refused = healthz(client).await;
        assert!(refused.is_err(), "{refused:?}");
    }
    stop.send(true).unwrap();
    serving.stopped().await.unwrap();
}
