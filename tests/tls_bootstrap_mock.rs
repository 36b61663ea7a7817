//! Self-bootstrapped TLS against kube-rs's mock API service: the exact requests, the race
//! between two replicas, renewal, and the caBundle patch. The certificates are real and
//! are checked with rustls's own verifier.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authplane::tls::bootstrap::{
    BootstrapSettings, Material, NOT_AFTER_ANNOTATION, ensure_ca_bundle, ensure_secret,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::{Api, Client};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

use common::mock_api::{self, Handle, within};

const SECRET: &str = "/api/v1/namespaces/authplane/secrets/authplane-webhook-tls";
const SECRETS: &str = "/api/v1/namespaces/authplane/secrets";
const WEBHOOKS: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/authplane";

fn settings() -> BootstrapSettings {
    BootstrapSettings::new(
        "authplane-webhook-tls".into(),
        "authplane".into(),
        "authplane-webhook".into(),
        Some("authplane".into()),
    )
}

fn t0() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn apis() -> (Api<Secret>, Api<ValidatingWebhookConfiguration>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        Api::namespaced(client.clone(), "authplane"),
        Api::all(client),
        handle,
    )
}

/// Takes the next request, checks method and path, answers; returns the request body
/// (a PATCH's with its content type under `contentType`). A null answer echoes the
/// body (as the apiserver answers a write with the object).
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    answer: Value,
) -> Value {
    let taken = mock_api::take(handle, method, path).await;
    let mut body = taken.body.clone();
    if method == "PATCH" {
        body["contentType"] = json!(taken.content_type);
    }
    let answer = if answer.is_null() {
        body.clone()
    } else {
        answer
    };
    taken.answer(status, &answer);
    body
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn decoded(secret: &Value, name: &str) -> String {
    String::from_utf8(B64.decode(secret["data"][name].as_str().unwrap()).unwrap()).unwrap()
}

/// The Secret as the apiserver returns it.
fn stored(secret: &Value, resource_version: &str) -> Value {
    let mut secret = secret.clone();
    secret["metadata"]["resourceVersion"] = json!(resource_version);
    secret
}

fn webhook_configuration(ca_bundle: Option<&str>) -> Value {
    let client_config = |path: &str| {
        let mut config = json!({"service": {"name": "authplane-webhook", "namespace": "authplane", "path": path}});
        if let Some(bundle) = ca_bundle {
            config["caBundle"] = json!(B64.encode(bundle));
        }
        config
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "authplane", "resourceVersion": "4"},
        "webhooks": [
            {"name": "signingkeys.authplane.io", "clientConfig": client_config("/validate"),
             "admissionReviewVersions": ["v1"], "sideEffects": "None"},
            {"name": "authpolicies.authplane.io", "clientConfig": client_config("/validate"),
             "admissionReviewVersions": ["v1"], "sideEffects": "None"},
        ]
    })
}

/// Checks with rustls's WebPKI verifier that `cert_pem` is valid at `at` for the
/// webhook Service's names, under `ca_pem` alone.
fn assert_serves_the_webhook(ca_pem: &str, cert_pem: &str, at: Timestamp) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(at.as_second() as u64));
    for name in [
        "authplane-webhook.authplane.svc",
        "authplane-webhook.authplane.svc.cluster.local",
    ] {
        verifier
            .verify_server_cert(&leaf, &[], &ServerName::try_from(name).unwrap(), &[], now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let other = ServerName::try_from("evil.example.com").unwrap();
    assert!(
        verifier
            .verify_server_cert(&leaf, &[], &other, &[], now)
            .is_err()
    );
}

#[tokio::test]
async fn the_first_replica_creates_the_secret_and_patches_every_webhook() {
    let (secrets, webhooks, mut api) = apis();
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 404, status(404, "NotFound")).await;
        let secret = expect(&mut api, "POST", SECRETS, 201, Value::Null).await;
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["name"], "authplane-webhook-tls");
        assert_eq!(
            secret["metadata"]["annotations"][NOT_AFTER_ANNOTATION],
            "2026-05-30T00:00:00Z"
        );
        assert!(decoded(&secret, "tls.key").contains("PRIVATE KEY"));
        assert!(decoded(&secret, "ca.key").contains("PRIVATE KEY"));
        assert!(!secret["metadata"].to_string().contains("PRIVATE KEY"));
        expect(&mut api, "GET", WEBHOOKS, 200, webhook_configuration(None)).await;
        let patch = expect(
            &mut api,
            "PATCH",
            WEBHOOKS,
            200,
            webhook_configuration(None),
        )
        .await;
        assert_eq!(
            patch["contentType"],
            "application/strategic-merge-patch+json"
        );
        let encoded = patch["webhooks"][0]["clientConfig"]["caBundle"].clone();
        let bundle = String::from_utf8(B64.decode(encoded.as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(
            patch["webhooks"],
            json!([
                {"name": "signingkeys.authplane.io", "clientConfig": {"caBundle": encoded}},
                {"name": "authpolicies.authplane.io", "clientConfig": {"caBundle": encoded}},
            ])
        );
        (secret, bundle, api)
    });
    let material = within(ensure_secret(&secrets, &settings(), t0()))
        .await
        .unwrap();
    let patched = within(ensure_ca_bundle(&webhooks, "authplane", &material.ca_pem))
        .await
        .unwrap();
    assert_eq!(patched, 2);
    let (secret, bundle, mut api) = server.await.unwrap();
    assert_eq!(
        bundle, material.ca_pem,
        "the caBundle is the CA that signed"
    );
    assert_eq!(decoded(&secret, "tls.crt"), material.cert_pem);
    assert_serves_the_webhook(&material.ca_pem, &material.cert_pem, t0());
    assert!(material.certified_key().is_ok());
    drop((secrets, webhooks));
    assert!(api.next_request().await.is_none(), "no further requests");
}

/// What the other replica wrote: a real Secret body, captured from its own create.
async fn written_by_another_replica(at: Timestamp) -> (Material, Value) {
    let (secrets, _, mut api) = apis();
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 404, status(404, "NotFound")).await;
        expect(&mut api, "POST", SECRETS, 201, Value::Null).await
    });
    let material = within(ensure_secret(&secrets, &settings(), at))
        .await
        .unwrap();
    (material, server.await.unwrap())
}

#[tokio::test]
async fn the_second_replica_uses_what_the_first_wrote() {
    let (theirs, their_secret) = written_by_another_replica(t0()).await;
    let (secrets, webhooks, mut api) = apis();
    let answer = stored(&their_secret, "12");
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 404, status(404, "NotFound")).await;
        expect(&mut api, "POST", SECRETS, 409, status(409, "AlreadyExists")).await;
        expect(&mut api, "GET", SECRET, 200, answer).await;
        // The other replica already set the caBundle: nothing to patch.
        let configuration = webhook_configuration(Some(&decoded(&their_secret, "ca.crt")));
        expect(&mut api, "GET", WEBHOOKS, 200, configuration).await;
        api
    });
    let ours = within(ensure_secret(&secrets, &settings(), t0()))
        .await
        .unwrap();
    assert_eq!(ours, theirs, "one CA and one certificate for both replicas");
    let patched = within(ensure_ca_bundle(&webhooks, "authplane", &ours.ca_pem))
        .await
        .unwrap();
    assert_eq!(patched, 0);
    drop((secrets, webhooks));
    assert!(server.await.unwrap().next_request().await.is_none());
}

#[tokio::test]
async fn a_certificate_near_expiry_is_renewed_from_the_same_ca() {
    let (old, old_secret) = written_by_another_replica(t0()).await;
    let later = t0() + SignedDuration::from_hours(61 * 24); // 29 days left
    let (secrets, _, mut api) = apis();
    let answer = stored(&old_secret, "7");
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 200, answer).await;
        let renewed = expect(&mut api, "PUT", SECRET, 200, Value::Null).await;
        assert_eq!(
            renewed["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
        renewed
    });
    let renewed = within(ensure_secret(&secrets, &settings(), later))
        .await
        .unwrap();
    let written = server.await.unwrap();
    assert_eq!(renewed.ca_pem, old.ca_pem, "the caBundle stays valid");
    assert_ne!(renewed.cert_pem, old.cert_pem);
    assert_eq!(decoded(&written, "tls.crt"), renewed.cert_pem);
    assert_eq!(
        renewed.not_after,
        later + SignedDuration::from_hours(90 * 24)
    );
    assert_serves_the_webhook(&renewed.ca_pem, &renewed.cert_pem, later);

    // Well before that, the same Secret is left alone.
    let (secrets, _, mut api) = apis();
    let answer = stored(&old_secret, "7");
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 200, answer).await;
        api
    });
    let kept = within(ensure_secret(
        &secrets,
        &settings(),
        t0() + SignedDuration::from_hours(24),
    ))
    .await
    .unwrap();
    assert_eq!(kept, old);
    drop(secrets);
    assert!(server.await.unwrap().next_request().await.is_none());
}

#[tokio::test]
async fn losing_a_renewal_race_serves_the_winners_certificate() {
    let (_, old_secret) = written_by_another_replica(t0()).await;
    let later = t0() + SignedDuration::from_hours(61 * 24);
    // The winner renewed first and stored its certificate.
    let (winner, winner_secret) = {
        let (secrets, _, mut api) = apis();
        let answer = stored(&old_secret, "7");
        let server = tokio::spawn(async move {
            expect(&mut api, "GET", SECRET, 200, answer).await;
            expect(&mut api, "PUT", SECRET, 200, Value::Null).await
        });
        let material = within(ensure_secret(&secrets, &settings(), later))
            .await
            .unwrap();
        (material, server.await.unwrap())
    };
    let (secrets, _, mut api) = apis();
    let (stale, fresh) = (stored(&old_secret, "7"), stored(&winner_secret, "8"));
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", SECRET, 200, stale).await;
        expect(&mut api, "PUT", SECRET, 409, status(409, "Conflict")).await;
        expect(&mut api, "GET", SECRET, 200, fresh).await;
        api
    });
    let served = within(ensure_secret(&secrets, &settings(), later))
        .await
        .unwrap();
    assert_eq!(served, winner);
    drop(secrets);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "no second PUT"
    );
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_an_error_to_retry() {
    let (_, webhooks, mut api) = apis();
    let server = tokio::spawn(async move {
        expect(&mut api, "GET", WEBHOOKS, 404, status(404, "NotFound")).await;
    });
    let error = within(ensure_ca_bundle(
        &webhooks,
        "authplane",
        "-----BEGIN CERTIFICATE-----",
    ))
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("ValidatingWebhookConfiguration authplane does not exist")
    );
    server.await.unwrap();
}
