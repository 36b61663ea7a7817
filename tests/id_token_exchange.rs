//! A login with an external issuer's ID token (RFC 8693 `subject_token_type` id_token),
//! over HTTP in dev mode against a stand-in OIDC provider on loopback: the app signed the
//! user in at "Entra ID" and exchanges the ID token at `{issuer}/token`. A good ID token
//! gives tokens that pass `/authz`; every bad one is a clear OAuth error and issues
//! nothing; a namespace over its cap of external issuers fetches nothing more; the
//! admission webhook refuses a bad entry by its field.

mod common;

use std::sync::Arc;

use authplane::api::ObjectKey;
use authplane::dev::state::StateStore;
use authplane::dev::tokens::TokenSettings;
use authplane::keys::KeyMaterial;
use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use common::provider::Provider;
use common::{CHANGE_DEADLINE, Dev, eventually, payments_policy, signing_key};
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The app's client id at the provider: the audience of its ID tokens.
const APP: &str = "app-client-id";
/// A second application of the same entry (say the app's API, registered on its own).
const API: &str = "api-client-id";
const FAST: &str = "{minInterval: 1s, maxInterval: 1h, maxStale: 1h}";

fn token_client(name: &str, issuers: &str) -> String {
    format!(
        r#"apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {{name: {name}, namespace: auth}}
spec:
  signingKeyRef: {{name: web}}
  audiences: [payments]
  allowedClaims: [roles]
{issuers}"#
    )
}

fn issuer_entry(provider: &Provider, prefix: &str) -> String {
    format!(
        "  idTokenIssuers:\n  - issuer: {}\n    audiences: [{APP}, {API}]\n    refresh: {FAST}\n{prefix}",
        provider.issuer()
    )
}

/// Dev mode with `manifests` besides the key and the payments policy; client secrets
/// for each of `clients`, in the order given.
async fn start(
    manifests: Vec<(&str, String)>,
    clients: &[&str],
    serving: authplane::driver::serve::Settings,
) -> (Dev, Vec<String>) {
    start_rated(manifests, clients, serving, 1000).await
}

/// [`start`] with a budget of `rate` failed requests a minute per client address.
async fn start_rated(
    manifests: Vec<(&str, String)>,
    clients: &[&str],
    serving: authplane::driver::serve::Settings,
    rate: u32,
) -> (Dev, Vec<String>) {
    let mut all = vec![
        (
            "keys.yaml",
            signing_key("auth", "web", "  algorithm: RS256\n"),
        ),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ];
    all.extend(manifests);
    let refs: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let tokens = TokenSettings {
        rate_per_minute: rate,
        ..TokenSettings::default()
    };
    let dev = Dev::start_with_tokens(
        &refs,
        Arc::new(authplane::clock::SystemClock),
        serving,
        tokens,
    )
    .await;
    let store = StateStore::new(dev.state());
    let secrets = clients
        .iter()
        .map(|name| {
            let new = authplane::token_endpoint::secret::new_secret(
                &mut authplane::refresh::SystemEntropy,
            )
            .unwrap();
            let id = ObjectKey {
                namespace: "auth".into(),
                name: (*name).into(),
            };
            store.save_client_secret(&id, &new.stored).unwrap();
            new.secret
        })
        .collect();
    (dev, secrets)
}

/// Exchanges `id_token` as TokenClient `auth/{client}`: status and JSON body.
async fn exchange(dev: &Dev, client: &str, secret: &str, id_token: &str) -> (u16, Value) {
    let client_id = format!("auth/{client}");
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("client_id", client_id.as_str()),
            ("client_secret", secret),
            ("subject_token", id_token),
            ("subject_token_type", ID_TOKEN),
            ("audience", "payments"),
            ("authplane_claims", r#"{"roles": ["payments"]}"#),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An ID token of `provider` for `sub`, with `changes` to its claims (null removes).
fn id_token(provider: &Provider, key: &KeyMaterial, changes: Value) -> String {
    let now = jiff::Timestamp::now().as_second();
    let mut claims = json!({
        "iss": provider.issuer(), "sub": "alice", "aud": APP,
        "iat": now, "nbf": now, "exp": now + 600, "nonce": "n-0S6_WzA2Mj",
        "email": "alice@example.com", "name": "Alice",
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    provider.sign(key, key.kid(), &claims)
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn issued(dev: &Dev, client: &str) -> f64 {
    dev.metric(&format!(
        "authplane_tokens_issued_total{{client=\"auth/{client}\",grant=\"token_exchange\"}}"
    ))
    .await
}

#[tokio::test]
async fn an_entra_id_login_gives_tokens_that_pass_authz() {
    let provider = Provider::start().await;
    let (dev, secrets) = start(
        vec![(
            "web.yaml",
            token_client(
                "web",
                &issuer_entry(&provider, "    subjectPrefix: \"entra:\"\n"),
            ),
        )],
        &["web"],
        common::test_settings(),
    )
    .await;
    // The first login may wait for the provider's first fetch; it never fails for lack
    // of one.
    let (status, body) = exchange(
        &dev,
        "web",
        &secrets[0],
        &id_token(&provider, &provider.key(0), json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert!(body["refresh_token"].is_string());
    let access = body["access_token"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["iss"], format!("{}/auth/web", dev.external_url()));
    // The user is the ID token's, under the entry's prefix; the issuer is named.
    assert_eq!(claims["sub"], "entra:alice");
    assert_eq!(claims["idp"], provider.issuer());
    assert_eq!(claims["roles"], json!(["payments"]));
    // No claim of the ID token is copied: only what the client allows the workload.
    for copied in ["email", "name", "nonce"] {
        assert!(claims.get(copied).is_none(), "{copied} in {claims}");
    }
    let response = dev
        .get_with(
            "/authz/shop/payments",
            &[("Authorization", &format!("Bearer {access}"))],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-auth-subject"], "entra:alice");

    // The provider rotates: a token of its new key works as soon as the key set may be
    // fetched again (at most once per minInterval, 1 s here).
    let rotated = provider.add_key();
    let token = id_token(&provider, &rotated, json!({"sub": "bob", "azp": APP}));
    let body = eventually("the provider's new key", CHANGE_DEADLINE, || async {
        let (status, body) = exchange(&dev, "web", &secrets[0], &token).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["sub"],
        "entra:bob"
    );
    assert!(provider.fetches() <= 4, "{} fetches", provider.fetches());
    assert_eq!(issued(&dev, "web").await, 2.0);
    dev.stop().await;
}

#[tokio::test]
async fn a_bad_id_token_is_refused_with_a_clear_error_and_nothing_is_issued() {
    let provider = Provider::start().await;
    let stranger = Provider::start().await;
    let (dev, secrets) = start(
        vec![
            (
                "web.yaml",
                token_client("web", &issuer_entry(&provider, "")),
            ),
            // A client that lists no ID-token issuer.
            ("plain.yaml", token_client("plain", "")),
        ],
        &["web", "plain"],
        common::test_settings(),
    )
    .await;
    let key = provider.key(0);
    let good = id_token(&provider, &key, json!({}));
    // The provider's keys are known from here on.
    let (status, body) = exchange(&dev, "web", &secrets[0], &good).await;
    assert_eq!(status, 200, "{body}");
    let now = jiff::Timestamp::now().as_second();

    // The public key, as an attacker would find it, used as an HMAC secret.
    let der = pem::parse(key.to_pem()).unwrap().into_contents();
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
    let spki = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_der()
        .unwrap();
    let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec()));
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let mut hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs256.kid = Some(key.kid().to_owned());
    let confused = jsonwebtoken::encode(
        &hs256,
        &claims_of(&good),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let (head, _) = good.rsplit_once('.').unwrap();
    let forged_signature = format!("{head}.{}", b64(&[7; 256]));
    let unknown = KeyMaterial::generate(authplane::keys::Algorithm::RS256, 2048).unwrap();

    let cases: Vec<(&str, &str, String, &str, &str)> = vec![
        (
            "wrong audience",
            "web",
            id_token(&provider, &key, json!({"aud": "another-app"})),
            "invalid_grant",
            "(wrong_audience)",
        ),
        (
            "no audience",
            "web",
            id_token(&provider, &key, json!({"aud": null})),
            "invalid_grant",
            "(wrong_audience)",
        ),
        (
            "expired beyond the leeway",
            "web",
            id_token(
                &provider,
                &key,
                json!({"iat": now - 700, "nbf": now - 700, "exp": now - 60}),
            ),
            "invalid_grant",
            "(expired)",
        ),
        (
            "not yet valid",
            "web",
            id_token(&provider, &key, json!({"nbf": now + 120})),
            "invalid_grant",
            "(not_yet_valid)",
        ),
        (
            "issued in the future",
            "web",
            id_token(&provider, &key, json!({"iat": now + 120})),
            "invalid_grant",
            "(iat_in_future)",
        ),
        (
            "another issuer",
            "web",
            id_token(&stranger, &stranger.key(0), json!({})),
            "invalid_grant",
            "not one of TokenClient auth/web's idTokenIssuers",
        ),
        (
            "a listed issuer's iss on a key of another issuer",
            "web",
            id_token(&provider, &stranger.key(0), json!({})),
            "invalid_grant",
            "(unknown_kid)",
        ),
        (
            "a client that lists no ID-token issuer",
            "plain",
            good.clone(),
            "invalid_request",
            "TokenClient auth/plain accepts no ID tokens",
        ),
        (
            "alg none",
            "web",
            format!(
                "{}.{payload}.",
                b64(json!({"alg": "none", "kid": key.kid()})
                    .to_string()
                    .as_bytes())
            ),
            "invalid_grant",
            "(alg_not_allowed)",
        ),
        (
            "HS256 signed with the RSA public key",
            "web",
            confused,
            "invalid_grant",
            "(alg_not_allowed)",
        ),
        (
            "unknown kid",
            "web",
            id_token(&provider, &unknown, json!({})),
            "invalid_grant",
            "(unknown_kid)",
        ),
        (
            "forged signature",
            "web",
            forged_signature,
            "invalid_grant",
            "(bad_signature)",
        ),
        (
            "no subject",
            "web",
            id_token(&provider, &key, json!({"sub": null})),
            "invalid_grant",
            "no subject (sub)",
        ),
        (
            "a subject with a control character",
            "web",
            id_token(&provider, &key, json!({"sub": "alice\nadmin"})),
            "invalid_grant",
            "without control characters",
        ),
        (
            "garbage",
            "web",
            "not-a-jwt".to_owned(),
            "invalid_grant",
            "is not an ID token",
        ),
        (
            // An Entra ID access token another app requested for this app's API has
            // this app as `aud` and the other app as `azp` (OIDC Core 3.1.3.7).
            "issued to another client (azp)",
            "web",
            id_token(&provider, &key, json!({"azp": "another-app"})),
            "invalid_grant",
            "(azp)",
        ),
        (
            // Both applications are listed, but the token is for one and presented by
            // the other: an access token the app requested for its API, not a login.
            "for one listed application, requested by the other (aud api, azp app)",
            "web",
            id_token(&provider, &key, json!({"aud": API, "azp": APP})),
            "invalid_grant",
            "(azp)",
        ),
        (
            // Entra ID's v1 access tokens name the requesting application `appid`.
            "requested by another application (appid)",
            "web",
            id_token(&provider, &key, json!({"appid": "another-app"})),
            "invalid_grant",
            "(azp)",
        ),
        (
            "too large",
            "web",
            id_token(&provider, &key, json!({"pad": "x".repeat(9000)})),
            "invalid_grant",
            "",
        ),
    ];
    for (case, client, token, error, says) in &cases {
        let secret = if *client == "web" {
            &secrets[0]
        } else {
            &secrets[1]
        };
        let (status, body) = exchange(&dev, client, secret, token).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"], *error, "{case}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(says), "{case}: {description}");
        assert!(body.get("access_token").is_none(), "{case}: {body}");
    }
    // Nothing was issued but the one good login.
    assert_eq!(issued(&dev, "web").await, 1.0);
    assert_eq!(issued(&dev, "plain").await, 0.0);
    dev.stop().await;
}

#[tokio::test]
async fn users_stale_id_tokens_do_not_spend_the_workloads_budget_of_failures() {
    let provider = Provider::start().await;
    let (dev, secrets) = start_rated(
        vec![(
            "web.yaml",
            token_client("web", &issuer_entry(&provider, "")),
        )],
        &["web"],
        common::test_settings(),
        2,
    )
    .await;
    let key = provider.key(0);
    let now = jiff::Timestamp::now().as_second();
    // Every user comes from the workload's one address: five expired ID tokens ...
    for _ in 0..5 {
        let stale = id_token(
            &provider,
            &key,
            json!({"iat": now - 4000, "exp": now - 400}),
        );
        let (status, body) = exchange(&dev, "web", &secrets[0], &stale).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_grant")),
            "{body}"
        );
    }
    // ... and the next user still logs in.
    let (status, body) = exchange(
        &dev,
        "web",
        &secrets[0],
        &id_token(&provider, &key, json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A wrong client secret is the workload's own failure, and still counts.
    for expected in [401, 401, 429] {
        let (status, _) = exchange(
            &dev,
            "web",
            "apcs_wrong",
            &id_token(&provider, &key, json!({})),
        )
        .await;
        assert_eq!(status, expected);
    }
    dev.stop().await;
}

#[tokio::test]
async fn token_clients_and_policies_of_a_namespace_share_its_cap_of_external_issuers() {
    let first = Provider::start().await;
    let second = Provider::start().await;
    let mut serving = common::test_settings();
    serving.fetch.max_per_namespace = 1;
    // An AuthPolicy of the namespace uses its one external issuer. Dev mode's manifests
    // have no creation time: the older is the first by name.
    let policy = format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: a-policy, namespace: auth}}\n\
         spec:\n  issuers:\n  - issuer: {}\n    refresh: {FAST}\n  audiences: [{APP}]\n\
         \x20 rollout: {{mode: Enforce, percentage: 100}}\n",
        first.issuer()
    );
    let (dev, secrets) = start(
        vec![
            ("a.yaml", policy),
            (
                "b.yaml",
                token_client("b-client", &issuer_entry(&second, "")),
            ),
        ],
        &["b-client"],
        serving,
    )
    .await;
    let response = dev
        .get_with(
            "/authz/auth/a-policy",
            &[(
                "Authorization",
                &format!("Bearer {}", id_token(&first, &first.key(0), json!({}))),
            )],
        )
        .await;
    assert_eq!(response.status(), 200);
    let token = id_token(&second, &second.key(0), json!({}));
    let (status, body) = exchange(&dev, "b-client", &secrets[0], &token).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("no usable keys of the ID token's issuer")
            && description.contains("TokenClient auth/b-client's status says why"),
        "{description}"
    );
    // The second provider was never asked for anything.
    assert_eq!(second.fetches(), 0);
    assert_eq!(issued(&dev, "b-client").await, 0.0);
    // The policy goes: its room is the client's.
    std::fs::remove_file(dev.manifests().join("a.yaml")).unwrap();
    eventually("the client's issuer let in", CHANGE_DEADLINE, || async {
        (exchange(&dev, "b-client", &secrets[0], &token).await.0 == 200).then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn the_admission_webhook_refuses_a_bad_id_token_issuer_by_its_field() {
    let (dev, _) = start(Vec::new(), &[], common::test_settings()).await;
    let client = json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
        "metadata": {"name": "web", "namespace": "auth"},
        "spec": {
            "signingKeyRef": {"name": "web"},
            "audiences": ["payments"],
            "allowedClaims": ["idp"],
            "idTokenIssuers": [
                {"issuer": "http://metadata.internal/v2.0", "audiences": [APP]},
                {"issuer": "https://login.example/v2.0", "audiences": [],
                 "jwksUri": "https://login.example/keys\nforged", "subjectPrefix": ""},
            ],
        },
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "1", "operation": "CREATE", "userInfo": {},
            "kind": {"group": "authplane.io", "version": "v1alpha1", "kind": "TokenClient"},
            "resource": {"group": "authplane.io", "version": "v1alpha1", "resource": "tokenclients"},
            "object": client},
    });
    let answer: Value = dev
        .http
        .post(dev.url("/validate"))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let mut fields: Vec<&str> = answer["response"]["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cause| cause["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    fields.dedup();
    assert_eq!(
        fields,
        [
            "spec.allowedClaims",
            "spec.idTokenIssuers[0].issuer",
            "spec.idTokenIssuers[1].audiences",
            "spec.idTokenIssuers[1].jwksUri",
            "spec.idTokenIssuers[1].subjectPrefix",
        ],
        "{answer}"
    );
    dev.stop().await;
}
