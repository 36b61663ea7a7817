//! A certificate rotated on disk, the way the kubelet updates a mounted Secret (new files
//! in a fresh folder, then the `..data` symlink swapped), is picked up by the running
//! server: a client that pins the new CA gets in, one that pins the old CA no longer
//! does, and a connection opened before the swap keeps working.

mod common;

use std::path::Path;
use std::sync::Arc;

use authplane::clock::SystemClock;
use authplane::dev::{self, DevConfig};
use authplane::tls::files::TlsFiles;
use common::https::{self, Pki};
use common::{CHANGE_DEADLINE, eventually};

/// Publishes a pair as the kubelet's atomic writer does: `..<version>/` holds the files,
/// `..data` points at it, and `tls.crt`/`tls.key` point into `..data`.
fn publish(dir: &Path, version: u32, cert: &str, key: &str) {
    let folder = format!("..{version}");
    std::fs::create_dir(dir.join(&folder)).unwrap();
    std::fs::write(dir.join(&folder).join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join(&folder).join("tls.key"), key).unwrap();
    std::os::unix::fs::symlink(&folder, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        if !dir.join(name).exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let tls = dir.path().join("tls");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::create_dir(&tls).unwrap();
    let (old_ca, new_ca) = (Pki::new("old CA"), Pki::new("new CA"));
    let (cert, key) = old_ca.leaf();
    publish(&tls, 1, &cert, &key);
    let config = DevConfig {
        manifests,
        state: dir.path().join("state"),
        listen: "127.0.0.1:0".parse().unwrap(),
        external_url: None,
        decision_cache_size: 100,
        revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
        unconfined_issuer_namespaces: Vec::new(),
        serving: Default::default(),
        tls: Some(TlsFiles {
            cert: tls.join("tls.crt"),
            key: tls.join("tls.key"),
        }),
        tokens: Default::default(),
    };
    let server = dev::start(config, Arc::new(SystemClock)).await.unwrap();
    let addr = server.addr();

    let mut established = https::connect(addr, &old_ca.ca_pem).await.unwrap();
    assert_eq!(established.get("/healthz").await.0, 200);
    let refused = https::connect(addr, &new_ca.ca_pem).await.err().unwrap();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let (cert, key) = new_ca.leaf();
    publish(&tls, 2, &cert, &key);
    let mut fresh = eventually(
        "a client pinning the new CA to get in",
        CHANGE_DEADLINE,
        || async { https::connect(addr, &new_ca.ca_pem).await.ok() },
    )
    .await;
    assert_eq!(fresh.get("/readyz").await.0, 200);
    let refused = https::connect(addr, &old_ca.ca_pem).await.err().unwrap();
    assert!(
        refused.contains("UnknownIssuer"),
        "the old certificate is gone: {refused}"
    );
    // The connection opened with the old certificate still serves.
    assert!(!established.is_closed());
    assert_eq!(established.get("/healthz").await.0, 200);

    // A bad pair (a certificate with another certificate's key) is refused and counted;
    // the current certificate keeps serving.
    let (bad_cert, _) = Pki::new("bad CA").leaf();
    publish(&tls, 3, &bad_cert, &key);
    eventually("the refusal to be counted", CHANGE_DEADLINE, || async {
        let metrics = https::connect(addr, &new_ca.ca_pem)
            .await
            .unwrap()
            .get("/metrics")
            .await
            .1;
        metrics
            .contains("authplane_reload_errors_total{source=\"tls\"} 1")
            .then_some(())
    })
    .await;
    let mut still = https::connect(addr, &new_ca.ca_pem).await.unwrap();
    assert_eq!(still.get("/healthz").await.0, 200);
    assert_eq!(fresh.get("/healthz").await.0, 200);

    drop((established, fresh, still));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_does_not_start_with_a_bad_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    let (cert, _) = Pki::new("a").leaf();
    let (_, other_key) = Pki::new("b").leaf();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), other_key).unwrap();
    let config = DevConfig {
        manifests: dir.path().join("manifests"),
        state: dir.path().join("state"),
        listen: "127.0.0.1:0".parse().unwrap(),
        external_url: None,
        decision_cache_size: 100,
        revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
        unconfined_issuer_namespaces: Vec::new(),
        serving: Default::default(),
        tls: Some(TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        }),
        tokens: Default::default(),
    };
    let Err(error) = dev::start(config, Arc::new(SystemClock)).await else {
        panic!("started with a key that does not fit its certificate");
    };
    let message = error.to_string();
    assert!(
        message.contains("does not fit the certificate"),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");
}
