//! The token endpoint over HTTP in dev mode (`POST {issuer}/token`), with a real redb
//! store in the state folder: a login by token exchange whose access token passes
//! `/authz`, refresh with rotation, the grace's same pair under 50 concurrent refreshes,
//! reuse ending the session at `/authz`, the absolute lifetime, bad requests, and a
//! store that cannot be opened.

mod common;

use std::sync::Arc;

use authplane::api::ObjectKey;
use authplane::clock::{Clock, ManualClock};
use authplane::dev::state::StateStore;
use authplane::dev::tokens::TokenSettings;
use common::{CHANGE_DEADLINE, Dev, eventually, payments_policy, signing_key};
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SUBJECT: &str = "urn:authplane:params:oauth:token-type:subject";
const WEB: (&str, &str) = ("auth", "web");

fn token_client(name: &str, key: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {{name: {name}, namespace: auth}}
spec:
  signingKeyRef: {{name: {key}}}
  audiences: [payments, billing]
  allowedClaims: [roles, email]
  refreshTokens: {{absoluteLifetime: 2h, idleLifetime: 1h, reuseGrace: 5s}}
{extra}"#
    )
}

fn manifests() -> Vec<(&'static str, String)> {
    vec![
        (
            "keys.yaml",
            signing_key("auth", "web", "  algorithm: RS256\n"),
        ),
        (
            "other.yaml",
            signing_key("auth", "other", "  algorithm: RS256\n"),
        ),
        ("web.yaml", token_client("web", "web", "")),
        ("mobile.yaml", token_client("mobile", "web", "")),
        (
            "spa.yaml",
            token_client("spa", "web", "  delivery: Cookie\n"),
        ),
        ("other-client.yaml", token_client("other", "other", "")),
        (
            "generous.yaml",
            token_client(
                "generous",
                "web",
                "  rateLimit: {perMinute: 60, burst: 6}\n",
            ),
        ),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ]
}

async fn start(clock: Arc<dyn Clock>) -> (Dev, Secrets) {
    // Budgets these tests do not reach: the limits are tested on their own.
    let tokens = TokenSettings {
        rate_per_minute: 1000,
        ..TokenSettings::default()
    };
    start_limited(clock, common::test_settings(), tokens).await
}

async fn start_limited(
    clock: Arc<dyn Clock>,
    serving: authplane::driver::serve::Settings,
    tokens: TokenSettings,
) -> (Dev, Secrets) {
    let manifests = manifests();
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dev = Dev::start_with_tokens(&refs, clock, serving, tokens).await;
    let secrets = Secrets::make(&dev);
    (dev, secrets)
}

/// Client secrets of auth/web and auth/other, as `authplane token client-secret` makes them.
struct Secrets {
    web: String,
    other: String,
    spa: String,
}

impl Secrets {
    fn make(dev: &Dev) -> Self {
        Secrets {
            web: client_secret(dev, "web"),
            other: client_secret(dev, "other"),
            spa: client_secret(dev, "spa"),
        }
    }
}

/// A new client secret of TokenClient auth/`name`.
fn client_secret(dev: &Dev, name: &str) -> String {
    let new = authplane::token_endpoint::secret::new_secret(&mut authplane::refresh::SystemEntropy)
        .unwrap();
    let id = ObjectKey {
        namespace: "auth".into(),
        name: name.into(),
    };
    StateStore::new(dev.state())
        .save_client_secret(&id, &new.stored)
        .unwrap();
    new.secret
}

/// POST a form to `{issuer of key}/token`; status and JSON body (Null if none).
async fn post(dev: &Dev, key: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = dev
        .http
        .post(dev.url(&format!("/auth/{key}/token")))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A login of `sub` as auth/web with `roles: [payments]`.
async fn login(dev: &Dev, secrets: &Secrets, sub: &str) -> Value {
    let (status, body) = post(
        dev,
        "web",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secrets.web),
            ("subject_token", sub),
            ("subject_token_type", SUBJECT),
            ("audience", "payments"),
            ("authplane_claims", r#"{"roles": ["payments"]}"#),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh(dev: &Dev, client: &str, token: &str) -> (u16, Value) {
    post(
        dev,
        "web",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", token),
        ],
    )
    .await
}

/// A form's parameters.
type Form = Vec<(&'static str, String)>;

fn text<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

/// `/authz/shop/payments` for an access token: status and reason.
async fn decide(dev: &Dev, token: &str) -> (u16, String) {
    let response = dev
        .get_with(
            "/authz/shop/payments",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    let reason = response
        .headers()
        .get("x-authplane-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), reason)
}

fn claims_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_login_gives_tokens_that_pass_authz_and_discovery_names_the_endpoint() {
    let (dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    let issuer = format!("{}/auth/web", dev.external_url());
    assert_eq!(discovery["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(
        discovery["grant_types_supported"],
        json!([EXCHANGE, "refresh_token"])
    );
    assert!(
        discovery["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_secret_post"))
    );

    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secrets.web),
            ("subject_token", "alice"),
            ("subject_token_type", SUBJECT),
            ("audience", "payments"),
            (
                "authplane_claims",
                r#"{"roles": ["payments"], "email": "a@example.com"}"#,
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["pragma"], "no-cache");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["expires_in"], 900);
    assert!(text(&body, "refresh_token").starts_with("aprt_"));
    let access = text(&body, "access_token");
    let claims = claims_of(access);
    assert_eq!(claims["iss"], issuer);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["roles"], json!(["payments"]));
    assert_eq!(claims["email"], "a@example.com");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(claims["jti"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(decide(&dev, access).await.0, 200);

    // A refresh: a new pair, the same session, the same login's claims.
    let (status, refreshed) = refresh(&dev, "auth/web", text(&body, "refresh_token")).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed.get("issued_token_type").is_none());
    assert_ne!(refreshed["refresh_token"], body["refresh_token"]);
    let renewed = claims_of(text(&refreshed, "access_token"));
    assert_eq!(renewed["sid"], claims["sid"]);
    assert_ne!(renewed["jti"], claims["jti"]);
    assert_eq!(renewed["email"], "a@example.com");
    assert_eq!(decide(&dev, text(&refreshed, "access_token")).await.0, 200);
    // Each login is a session of its own.
    let again = login(&dev, &secrets, "alice").await;
    assert_ne!(
        claims_of(text(&again, "access_token"))["sid"],
        claims["sid"]
    );
    // The store is the state folder's file.
    assert!(dev.state().join("tokens.redb").is_file());
    dev.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_oauth_errors_and_change_nothing() {
    let (dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let session = login(&dev, &secrets, "bob").await;
    let refresh_token = text(&session, "refresh_token").to_owned();
    let exchange = |extra: &[(&'static str, &'static str)]| {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", EXCHANGE.into()),
            ("client_id", "auth/web".into()),
            ("client_secret", secrets.web.clone()),
            ("subject_token", "bob".into()),
            ("subject_token_type", SUBJECT.into()),
        ];
        for (name, value) in extra {
            form.retain(|(n, _)| n != name);
            if !value.is_empty() {
                form.push((name, value.to_string()));
            }
        }
        form
    };
    let send = |key: &'static str, form: Vec<(&'static str, String)>| {
        let dev = &dev;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (*n, v.as_str())).collect();
            post(dev, key, &form).await
        }
    };
    // What, on which key's issuer, the form, then the status, error and description.
    let cases: Vec<(&str, &str, Form, u16, &str, &str)> = vec![
        (
            "a claim authplane sets",
            "web",
            exchange(&[("authplane_claims", r#"{"sub": "root"}"#)]),
            400,
            "invalid_request",
            "set by authplane itself",
        ),
        (
            "a claim the client may not set",
            "web",
            exchange(&[("authplane_claims", r#"{"admin": true}"#)]),
            400,
            "invalid_request",
            "not in TokenClient auth/web's allowedClaims",
        ),
        (
            "an audience outside the client's",
            "web",
            exchange(&[("audience", "admin-api")]),
            400,
            "invalid_target",
            "admin-api",
        ),
        (
            "a wrong client secret",
            "web",
            exchange(&[("client_secret", "apcs_wrong")]),
            401,
            "invalid_client",
            "client secret is wrong",
        ),
        (
            "a login without client authentication",
            "web",
            exchange(&[("client_secret", "")]),
            401,
            "invalid_client",
            "needs client authentication",
        ),
        (
            "another issuer's client",
            "web",
            {
                let mut form = exchange(&[("client_id", "auth/other")]);
                form.retain(|(n, _)| *n != "client_secret");
                form.push(("client_secret", secrets.other.clone()));
                form
            },
            401,
            "invalid_client",
            "no TokenClient \"auth/other\" is served on this issuer",
        ),
        (
            "a client assertion in dev mode",
            "web",
            {
                let mut form = exchange(&[("client_secret", "")]);
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", "eyJ.eyJ.sig".into()));
                form
            },
            401,
            "invalid_client",
            "need a cluster",
        ),
        (
            "an unknown grant",
            "web",
            exchange(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
            "\"password\"",
        ),
        (
            "an ID token subject, to a client that lists no ID-token issuer",
            "web",
            exchange(&[(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            )]),
            400,
            "invalid_request",
            "accepts no ID tokens",
        ),
        (
            "another client's refresh token",
            "web",
            vec![
                ("grant_type", "refresh_token".into()),
                ("client_id", "auth/mobile".into()),
                ("refresh_token", refresh_token.clone()),
            ],
            400,
            "invalid_grant",
            "unknown",
        ),
        (
            "a refresh token on another issuer",
            "other",
            vec![
                ("grant_type", "refresh_token".into()),
                ("client_id", "auth/web".into()),
                ("refresh_token", refresh_token.clone()),
            ],
            401,
            "invalid_client",
            "is served on this issuer",
        ),
        (
            "a malformed refresh token",
            "web",
            vec![
                ("grant_type", "refresh_token".into()),
                ("client_id", "auth/web".into()),
                ("refresh_token", "not-a-token".into()),
            ],
            400,
            "invalid_grant",
            "not one authplane issued",
        ),
    ];
    for (what, key, form, status, error, says) in cases {
        let (got, body) = send(key, form).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{what}: {body}"
        );
        let description = text(&body, "error_description");
        assert!(description.contains(says), "{what}: {description}");
        assert!(!description.contains(&secrets.web), "{what}: {description}");
        assert!(
            !description.contains(&refresh_token),
            "{what}: {description}"
        );
    }

    // A parameter given twice.
    let body = format!(
        "grant_type=refresh_token&client_id=auth%2Fweb&refresh_token={refresh_token}&refresh_token={refresh_token}"
    );
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "invalid_request");
    assert!(text(&answer, "error_description").contains("more than once"));
    // Not a form.
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["cache-control"], "no-store");
    // Too large.
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&x={}",
            "a".repeat(70 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Not a POST; no issuer there.
    assert_eq!(dev.get("/auth/web/token").await.status(), 405);
    let (status, _) = post(&dev, "nowhere", &[("grant_type", "refresh_token")]).await;
    assert_eq!(status, 404);

    // None of it changed the session: its refresh token still rotates.
    let (status, body) = refresh(&dev, "auth/web", &refresh_token).await;
    assert_eq!(status, 200, "{body}");
    dev.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_refreshes_make_one_rotation_and_get_the_same_pair() {
    let (dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let session = login(&dev, &secrets, "carol").await;
    let token = text(&session, "refresh_token").to_owned();
    let answers =
        futures::future::join_all((0..50).map(|_| refresh(&dev, "auth/web", &token))).await;
    let (first_status, first) = &answers[0];
    assert_eq!(*first_status, 200, "{first}");
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["refresh_token"], first["refresh_token"]);
        assert_eq!(body["access_token"], first["access_token"]);
    }
    let sid = claims_of(text(first, "access_token"))["sid"].clone();
    assert_eq!(claims_of(text(&session, "access_token"))["sid"], sid);
    // Exactly one rotation: the pair given is the current one, and the family lives.
    let (status, next) = refresh(&dev, "auth/web", text(first, "refresh_token")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(claims_of(text(&next, "access_token"))["sid"], sid);
    assert_eq!(decide(&dev, text(&next, "access_token")).await.0, 200);
    dev.stop().await;
}

#[tokio::test]
async fn reuse_after_the_grace_ends_the_session_at_authz() {
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let (dev, secrets) = start(clock.clone()).await;
    let session = login(&dev, &secrets, "dave").await;
    let first = text(&session, "refresh_token").to_owned();
    let (status, rotated) = refresh(&dev, "auth/web", &first).await;
    assert_eq!(status, 200, "{rotated}");
    let access = text(&rotated, "access_token").to_owned();
    assert_eq!(decide(&dev, &access).await.0, 200);
    // Within the grace, the superseded token gets the same pair again.
    clock.advance(jiff::SignedDuration::from_secs(4));
    let (status, replay) = refresh(&dev, "auth/web", &first).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["refresh_token"], rotated["refresh_token"]);
    assert_eq!(replay["access_token"], rotated["access_token"]);
    // After it, presenting it again is reuse.
    clock.advance(jiff::SignedDuration::from_secs(2));
    let (status, body) = refresh(&dev, "auth/web", &first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(text(&body, "error_description").contains("session is revoked"));
    // The whole family is dead ...
    let (status, body) = refresh(&dev, "auth/web", text(&rotated, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // ... and so is the session's access token, at the gateway.
    eventually(
        "the session's access token refused",
        CHANGE_DEADLINE,
        || async {
            (decide(&dev, &access).await == (401, "token_revoked".to_owned())).then_some(())
        },
    )
    .await;
    // Another session of the same user is not touched.
    let other = login(&dev, &secrets, "dave").await;
    assert_eq!(decide(&dev, text(&other, "access_token")).await.0, 200);
    // What /metrics says of it (labels: the TokenClient's name, fixed values).
    for (sample, value) in [
        (
            r#"authplane_tokens_issued_total{client="auth/web",grant="token_exchange"}"#,
            2.0,
        ),
        (
            r#"authplane_tokens_issued_total{client="auth/web",grant="refresh_token"}"#,
            1.0,
        ),
        (
            r#"authplane_refresh_token_reuse_total{client="auth/web"}"#,
            1.0,
        ),
        (r#"authplane_token_requests_total{result="replayed"}"#, 1.0),
        (
            r#"authplane_token_requests_total{result="invalid_grant"}"#,
            2.0,
        ),
        (
            r#"authplane_token_store_seconds_count{operation="swap"}"#,
            2.0,
        ),
    ] {
        assert_eq!(dev.metric(sample).await, value, "{sample}");
    }
    dev.stop().await;
}

#[tokio::test]
async fn the_absolute_lifetime_is_not_extended_by_refreshes() {
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let (dev, secrets) = start(clock.clone()).await;
    let session = login(&dev, &secrets, "erin").await;
    let mut token = text(&session, "refresh_token").to_owned();
    // Refreshed at 50, 100 and 119 minutes (idle lifetime 1h, each refresh starts it
    // again): fine until 2h after the login, and not a minute longer.
    for minutes in [50, 50, 19] {
        clock.advance(jiff::SignedDuration::from_mins(minutes));
        let (status, body) = refresh(&dev, "auth/web", &token).await;
        assert_eq!(status, 200, "{body}");
        token = text(&body, "refresh_token").to_owned();
    }
    clock.advance(jiff::SignedDuration::from_mins(2));
    let (status, body) = refresh(&dev, "auth/web", &token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        text(&body, "error_description").contains("session has ended"),
        "{body}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_answers_503_and_nothing_else_depends_on_it() {
    let (mut dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let session = login(&dev, &secrets, "frank").await;
    let server = dev.server.take().unwrap();
    server.shutdown().await.unwrap();
    std::fs::write(
        dev.state().join("tokens.redb"),
        b"this is not a redb file at all",
    )
    .unwrap();
    dev.restart().await;

    let (status, body) = refresh(&dev, "auth/web", text(&session, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secrets.web),
            ("subject_token", "frank"),
            ("subject_token_type", SUBJECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        dev.metric(r#"authplane_token_requests_total{result="unavailable"}"#)
            .await,
        2.0
    );
    assert_eq!(
        dev.metric(r#"authplane_token_store_errors_total{operation="create"}"#)
            .await,
        1.0
    );
    // Decisions, JWKS and revocation are served as ever (the restart moved the issuer to
    // the new port: a token of it now).
    let minted = dev.mint(WEB, "gina", &["payments"], json!({"roles": ["payments"]}));
    assert_eq!(decide(&dev, &minted).await.0, 200);
    assert_eq!(
        dev.get("/auth/web/.well-known/jwks.json").await.status(),
        200
    );
    let response = dev
        .http
        .post(dev.url("/auth/web/revoke"))
        .form(&[("token", minted.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    dev.stop().await;
}

async fn revoke(dev: &Dev, form: &[(&str, &str)]) -> (u16, Value) {
    let response = dev
        .http
        .post(dev.url("/auth/web/revoke"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn logout_with_a_refresh_token_ends_its_family_and_its_session() {
    let (mut dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let hinted = login(&dev, &secrets, "hana").await;
    let unhinted = login(&dev, &secrets, "hana").await;
    let kept = login(&dev, &secrets, "hana").await;
    for session in [&hinted, &unhinted, &kept] {
        assert_eq!(decide(&dev, text(session, "access_token")).await.0, 200);
    }

    // Another client's logout, an unknown token: 200, and nothing changes.
    let (status, _) = revoke(
        &dev,
        &[
            ("token", text(&kept, "refresh_token")),
            ("client_id", "auth/mobile"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let unknown = format!("aprt_{}", "A".repeat(43));
    let (status, _) = revoke(&dev, &[("token", &unknown), ("client_id", "auth/web")]).await;
    assert_eq!(status, 200);
    // Which client, on which issuer, must be said.
    let (status, body) = revoke(&dev, &[("token", text(&kept, "refresh_token"))]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = revoke(
        &dev,
        &[
            ("token", text(&kept, "refresh_token")),
            ("client_id", "auth/other"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // With the hint, and without: the answer comes once the session is refused here.
    let (status, body) = revoke(
        &dev,
        &[
            ("token", text(&hinted, "refresh_token")),
            ("token_type_hint", "refresh_token"),
            ("client_id", "auth/web"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decide(&dev, text(&hinted, "access_token")).await,
        (401, "token_revoked".to_owned())
    );
    let (status, body) = revoke(
        &dev,
        &[
            ("token", text(&unhinted, "refresh_token")),
            ("client_id", "auth/web"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decide(&dev, text(&unhinted, "access_token")).await,
        (401, "token_revoked".to_owned())
    );
    for session in [&hinted, &unhinted] {
        let (status, body) = refresh(&dev, "auth/web", text(session, "refresh_token")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        // Logging out again is fine, and the same Revocation.
        let (status, _) = revoke(
            &dev,
            &[
                ("token", text(session, "refresh_token")),
                ("client_id", "auth/web"),
            ],
        )
        .await;
        assert_eq!(status, 200);
    }
    // Kept in the token store, not written as Revocation files (on a cluster: objects);
    // `/status` counts them by key and reason, never naming a session.
    let files: Vec<_> = std::fs::read_dir(dev.manifests())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("logout-"))
        .collect();
    assert_eq!(files, Vec::<std::path::PathBuf>::new());
    let status = dev.json("/status").await;
    assert_eq!(
        status["endedSessions"],
        serde_json::json!([{"issuer": "auth/web", "reason": "logout", "count": 2}]),
        "{status}"
    );
    for session in [&hinted, &unhinted] {
        let sid = claims_of(text(session, "access_token"))["sid"].clone();
        assert!(!status.to_string().contains(sid.as_str().unwrap()));
    }
    // A restart keeps them in force: the store's file is read again before serving.
    // (The same issuer URL: the tokens name it.)
    dev.fixed_external_url = Some(dev.external_url());
    dev.restart().await;
    for session in [&hinted, &unhinted] {
        assert_eq!(
            decide(&dev, text(session, "access_token")).await,
            (401, "token_revoked".to_owned())
        );
    }
    // The other session of the same user lives on.
    assert_eq!(decide(&dev, text(&kept, "access_token")).await.0, 200);
    let (status, _) = refresh(&dev, "auth/web", text(&kept, "refresh_token")).await;
    assert_eq!(status, 200);
    dev.stop().await;
}

#[tokio::test]
async fn failed_requests_are_limited_per_client_address_behind_trusted_proxies() {
    let mut serving = common::test_settings();
    serving.trusted_proxies = authplane::server::client_address::TrustedProxies::Hops(1);
    let tokens = TokenSettings {
        rate_per_minute: 3,
        ..TokenSettings::default()
    };
    let (dev, secrets) =
        start_limited(Arc::new(authplane::clock::SystemClock), serving, tokens).await;
    let login_from = |forwarded: &'static str, secret: String| {
        let dev = &dev;
        async move {
            let response = dev
                .http
                .post(dev.url("/auth/web/token"))
                .header("x-forwarded-for", forwarded)
                .form(&[
                    ("grant_type", EXCHANGE),
                    ("client_id", "auth/web"),
                    ("client_secret", secret.as_str()),
                    ("subject_token", "ivan"),
                    ("subject_token_type", SUBJECT),
                ])
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (status, body["error"].as_str().map(str::to_owned), retry)
        }
    };
    let wrong = || "apcs_wrong".to_owned();
    for _ in 0..3 {
        let (status, error, _) = login_from("192.0.2.1", wrong()).await;
        assert_eq!((status, error.as_deref()), (401, Some("invalid_client")));
    }
    let (status, error, retry) = login_from("192.0.2.1", wrong()).await;
    assert_eq!((status, error.as_deref()), (429, Some("slow_down")));
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // An entry the client wrote itself does not give it a new budget ...
    let (status, _, _) = login_from("203.0.113.9, 192.0.2.1", wrong()).await;
    assert_eq!(status, 429);
    // ... another client has its own, and what succeeds is not refused.
    let (status, _, _) = login_from("192.0.2.2", wrong()).await;
    assert_eq!(status, 401);
    let (status, _, _) = login_from("192.0.2.1", secrets.web.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        dev.metric(r#"authplane_token_requests_total{result="rate_limited"}"#)
            .await,
        2.0
    );
    dev.stop().await;
}

/// POSTs `form` to auth/web's token endpoint as if through one proxy that saw
/// `address`: the status and the OAuth error.
async fn post_from(dev: &Dev, address: &str, form: &[(&str, &str)]) -> (u16, String) {
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .header("x-forwarded-for", address)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 429 {
        assert!(response.headers().contains_key("retry-after"));
    }
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_clients_rate_limit_is_its_own_per_address_and_naming_it_buys_nothing() {
    let mut serving = common::test_settings();
    serving.trusted_proxies = authplane::server::client_address::TrustedProxies::Hops(1);
    let tokens = TokenSettings {
        rate_per_minute: 3,
        ..TokenSettings::default()
    };
    let (dev, _) = start_limited(Arc::new(authplane::clock::SystemClock), serving, tokens).await;
    let secret = &client_secret(&dev, "generous");
    fn exchange<'a>(secret: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("grant_type", EXCHANGE),
            ("client_id", "auth/generous"),
            ("client_secret", secret),
            ("subject_token", "kim"),
            ("subject_token_type", SUBJECT),
            ("audience", audience),
        ]
    }
    // auth/generous (burst 6) fails six times from one address, proven its own by its
    // secret: twice the server's budget of 3 ...
    for _ in 0..6 {
        let answer = post_from(&dev, "192.0.2.1", &exchange(secret, "nobody")).await;
        assert_eq!(answer, (400, "invalid_target".to_owned()));
    }
    assert_eq!(
        post_from(&dev, "192.0.2.1", &exchange(secret, "nobody")).await,
        (429, "slow_down".to_owned())
    );
    // ... and has not spent the address's budget for requests of no proven client.
    let garbage = [
        ("grant_type", "refresh_token"),
        ("client_id", "auth/web"),
        ("refresh_token", "aprt_garbage"),
    ];
    assert_eq!(post_from(&dev, "192.0.2.1", &garbage).await.0, 400);
    // Naming the generous client proves nothing: a wrong secret, or a refresh token that
    // nobody issued to it, spend the server's budget of 3 per address.
    for address in ["192.0.2.2", "192.0.2.3"] {
        let named = if address == "192.0.2.2" {
            exchange("apcs_wrong", "payments")
        } else {
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", "auth/generous"),
                ("refresh_token", "aprt_garbage"),
            ]
        };
        for _ in 0..3 {
            assert_ne!(post_from(&dev, address, &named).await.0, 429, "{address}");
        }
        assert_eq!(
            post_from(&dev, address, &named).await,
            (429, "slow_down".to_owned()),
            "{address}"
        );
    }
    // Its sessions refresh within its own budget: more than the server's 3.
    let (status, login) = post(&dev, "web", &exchange(secret, "payments")).await;
    assert_eq!(status, 200, "{login}");
    let mut current = text(&login, "refresh_token").to_owned();
    for _ in 0..6 {
        let (status, body) = refresh(&dev, "auth/generous", &current).await;
        assert_eq!(status, 200, "{body}");
        current = text(&body, "refresh_token").to_owned();
    }
    assert_eq!(refresh(&dev, "auth/generous", &current).await.0, 429);
    // Every 429 above, whichever budget refused it, is counted as rate_limited.
    assert_eq!(
        dev.metric(r#"authplane_token_requests_total{result="rate_limited"}"#)
            .await,
        4.0
    );
    dev.stop().await;
}

/// Spends the server's budget of 2 failures of the client address that `forwarded`
/// comes to, and tells whether the next failure from `next` is then refused.
async fn shares_a_budget(dev: &Dev, forwarded: &str, next: &str) -> bool {
    let garbage = [
        ("grant_type", "refresh_token"),
        ("client_id", "auth/web"),
        ("refresh_token", "aprt_garbage"),
    ];
    for _ in 0..2 {
        assert_eq!(
            post_from(dev, forwarded, &garbage).await.0,
            400,
            "{forwarded}"
        );
    }
    post_from(dev, next, &garbage).await.0 == 429
}

async fn start_trusting(ranges: &[&str]) -> Dev {
    let mut serving = common::test_settings();
    serving.trusted_proxies = authplane::server::client_address::TrustedProxies::Ranges(
        ranges
            .iter()
            .map(|r| authplane::server::client_address::parse_range(r).unwrap())
            .collect(),
    );
    let tokens = TokenSettings {
        rate_per_minute: 2,
        ..TokenSettings::default()
    };
    start_limited(Arc::new(authplane::clock::SystemClock), serving, tokens)
        .await
        .0
}

#[tokio::test]
async fn client_addresses_come_through_trusted_proxy_ranges_only() {
    // The test's requests come from 127.0.0.1, outside these ranges: whatever they write
    // in X-Forwarded-For, they are one client.
    let dev = start_trusting(&["10.0.0.0/8", "fd00::/8"]).await;
    assert!(shares_a_budget(&dev, "198.51.100.1", "198.51.100.2").await);
    dev.stop().await;

    // From a trusted peer (loopback here) through a trusted balancer (10.1.0.1): the
    // address the balancer saw is the client, not what the client wrote before it.
    let dev = start_trusting(&["127.0.0.0/8", "10.0.0.0/8"]).await;
    assert!(
        !shares_a_budget(
            &dev,
            "203.0.113.66, 198.51.100.7, 10.1.0.1",
            "203.0.113.66, 198.51.100.8, 10.1.0.1"
        )
        .await,
        "two clients behind the balancer have their own budgets"
    );
    assert!(
        shares_a_budget(
            &dev,
            "203.0.113.67, 198.51.100.9, 10.1.0.1",
            "203.0.113.68, 198.51.100.9, 10.1.0.1"
        )
        .await,
        "what the client writes itself does not give it a new budget"
    );
    // A malformed entry before the client is found: the peer's budget, never a panic.
    assert!(shares_a_budget(&dev, "198.51.100.10, bogus, 10.1.0.1", "garbage").await);
    dev.stop().await;
}

#[tokio::test]
async fn rotations_are_limited_per_session_and_a_limited_refresh_changes_nothing() {
    let tokens = TokenSettings {
        rate_per_minute: 3,
        ..TokenSettings::default()
    };
    let (dev, secrets) = start_limited(
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await;
    let session = login(&dev, &secrets, "judy").await;
    let mut previous = String::new();
    let mut current = text(&session, "refresh_token").to_owned();
    let mut last = Value::Null;
    for _ in 0..3 {
        let (status, body) = refresh(&dev, "auth/web", &current).await;
        assert_eq!(status, 200, "{body}");
        previous = std::mem::replace(&mut current, text(&body, "refresh_token").to_owned());
        last = body;
    }
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "auth/web"),
            ("refresh_token", current.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // Nothing rotated: the token before is still the one just superseded, and within the
    // grace it gets the last pair again (were the limited one rotated, it would be reuse).
    let (status, replay) = refresh(&dev, "auth/web", &previous).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["refresh_token"], last["refresh_token"]);
    // Another session has its own budget.
    let other = login(&dev, &secrets, "judy").await;
    let (status, _) = refresh(&dev, "auth/web", text(&other, "refresh_token")).await;
    assert_eq!(status, 200);
    dev.stop().await;
}

/// The refresh cookie a response sets, whole (`None` without one).
fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// `name=value` of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn cookie_clients_get_a_host_cookie_that_refreshes_only_from_their_own_pages() {
    let (dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/spa"),
            ("client_secret", &secrets.spa),
            ("subject_token", "kim"),
            ("subject_token_type", SUBJECT),
            ("authplane_claims", r#"{"roles": ["payments"]}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set = set_cookie(&response).expect("a cookie");
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(set.starts_with("__Host-authplane-refresh=aprt_"), "{set}");
    for attribute in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=7200",
    ] {
        assert!(
            set.split("; ").any(|a| a == attribute),
            "{attribute} in {set}"
        );
    }
    let cookie = cookie_pair(&set);
    let origin = dev.external_url();
    let with_cookie = |path: &'static str,
                       client: &'static str,
                       headers: Vec<(&'static str, String)>,
                       cookie: String| {
        let dev = &dev;
        async move {
            let mut request = dev
                .http
                .post(dev.url(path))
                .header("cookie", cookie)
                .form(&[("grant_type", "refresh_token"), ("client_id", client)]);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.unwrap()
        }
    };
    let csrf = || ("x-authplane-csrf", "1".to_owned());
    // Without the header, from another origin, from another site: refused, nothing changes.
    for headers in [
        vec![],
        vec![csrf(), ("origin", "https://evil.example".to_owned())],
        vec![csrf(), ("sec-fetch-site", "cross-site".to_owned())],
    ] {
        let response = with_cookie(
            "/auth/web/token",
            "auth/spa",
            headers.clone(),
            cookie.clone(),
        )
        .await;
        assert_eq!(response.status(), 400, "{headers:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
    // A client that delivers in the body does not take the cookie.
    let response = with_cookie("/auth/web/token", "auth/web", vec![csrf()], cookie.clone()).await;
    let body: Value = response.json().await.unwrap();
    assert!(
        text(&body, "error_description").contains("in the body"),
        "{body}"
    );
    // From the app's own page: a new pair, the refresh token in a new cookie.
    let response = with_cookie(
        "/auth/web/token",
        "auth/spa",
        vec![csrf(), ("origin", origin.clone())],
        cookie.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let renewed = cookie_pair(&set_cookie(&response).unwrap());
    assert_ne!(renewed, cookie);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    let access = text(&body, "access_token").to_owned();
    assert_eq!(decide(&dev, &access).await.0, 200);
    // Logout with the cookie: not without the header ...
    let response = dev
        .http
        .post(dev.url("/auth/web/revoke"))
        .header("cookie", renewed.clone())
        .form(&[("client_id", "auth/spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(decide(&dev, &access).await.0, 200);
    // ... with it, the session ends and the cookie is cleared.
    let response = dev
        .http
        .post(dev.url("/auth/web/revoke"))
        .header("cookie", renewed.clone())
        .header("x-authplane-csrf", "1")
        .form(&[("client_id", "auth/spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(set_cookie(&response).unwrap().contains("Max-Age=0"));
    assert_eq!(
        decide(&dev, &access).await,
        (401, "token_revoked".to_owned())
    );
    // A dead session's cookie is cleared when presented.
    let response = with_cookie("/auth/web/token", "auth/spa", vec![csrf()], renewed).await;
    assert_eq!(response.status(), 400);
    assert!(set_cookie(&response).unwrap().contains("Max-Age=0"));
    dev.stop().await;
}

#[tokio::test]
async fn a_workload_may_authenticate_with_http_basic() {
    let (dev, secrets) = start(Arc::new(authplane::clock::SystemClock)).await;
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", "lena"),
        ("subject_token_type", SUBJECT),
    ];
    let with_basic = |user: &str, password: &str, extra: &[(&'static str, &'static str)]| {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        form.extend_from_slice(extra);
        dev.http
            .post(dev.url("/auth/web/token"))
            .basic_auth(user, Some(password))
            .form(&form)
            .send()
    };
    // RFC 6749 §2.3.1: the id and the secret form-urlencoded ("/" as %2F).
    let response = with_basic("auth%2Fweb", &secrets.web, &[]).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = with_basic("auth%2Fweb", "apcs_wrong", &[]).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"authplane\""
    );
    // One client authentication at a time; the form's client_id must agree.
    let response = with_basic("auth%2Fweb", &secrets.web, &[("client_secret", "x")])
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = with_basic("auth%2Fweb", &secrets.web, &[("client_id", "auth/mobile")])
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    dev.stop().await;
}

/// `authplane dev` as a user runs it, its log a real file: a reuse is logged with the
/// client, the family (the `sid`) and the client address, and no token or secret is
/// ever written to the log.
#[tokio::test]
async fn reuse_is_logged_with_the_family_and_the_address_and_no_token_is_ever_logged() {
    use std::process::{Command, Stdio};
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (manifests, state, log) = (
        dir.path().join("manifests"),
        dir.path().join("state"),
        dir.path().join("dev.log"),
    );
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("keys.yaml"),
        signing_key("auth", "web", "  algorithm: RS256\n"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        token_client("web", "web", "").replace("reuseGrace: 5s", "reuseGrace: 0s"),
    )
    .unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["token", "client-secret", "auth/web", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(made.status.success());
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
        .arg(&manifests)
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = eventually(
        "dev mode serving",
        std::time::Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                let rest = text.split("serving on ").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            }
        },
    )
    .await;
    let http = reqwest::Client::new();
    let post = |form: Vec<(&'static str, String)>| {
        let request = http.post(format!("{base}/auth/web/token")).form(&form);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, login) = post(vec![
        ("grant_type", EXCHANGE.into()),
        ("client_id", "auth/web".into()),
        ("client_secret", secret.clone()),
        ("subject_token", "mia".into()),
        ("subject_token_type", SUBJECT.into()),
    ])
    .await;
    assert_eq!(status, 200, "{login}");
    let first = text(&login, "refresh_token").to_owned();
    let refresh_form = |token: &str| {
        vec![
            ("grant_type", "refresh_token"),
            ("client_id", "auth/web"),
            ("refresh_token", token),
        ]
        .into_iter()
        .map(|(n, v)| (n, v.to_owned()))
        .collect::<Vec<_>>()
    };
    let (status, rotated) = post(refresh_form(&first)).await;
    assert_eq!(status, 200, "{rotated}");
    // No grace: the superseded token again is reuse at once.
    let (status, _) = post(refresh_form(&first)).await;
    assert_eq!(status, 400);
    let sid = claims_of(text(&login, "access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let logged = eventually("the reuse logged", CHANGE_DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("refresh token reuse").then_some(text) }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let line = logged
        .lines()
        .find(|line| line.contains("refresh token reuse"))
        .unwrap();
    for expected in [
        r#"client="auth/web""#,
        &format!(r#"family="{sid}""#),
        "client_address=127.0.0.1",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    for secret_text in [
        secret.as_str(),
        first.as_str(),
        text(&rotated, "refresh_token"),
        text(&login, "access_token"),
        text(&rotated, "access_token"),
    ] {
        assert!(
            !logged.contains(secret_text),
            "the log holds a token or secret:\n{logged}"
        );
    }
}

#[tokio::test]
async fn turned_off_the_token_endpoint_is_not_served_nor_advertised() {
    let tokens = TokenSettings {
        enabled: false,
        ..TokenSettings::default()
    };
    let (dev, secrets) = start_limited(
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await;
    let (status, _) = post(
        &dev,
        "web",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secrets.web),
            ("subject_token", "nina"),
            ("subject_token_type", SUBJECT),
        ],
    )
    .await;
    assert_eq!(status, 404);
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    assert!(discovery.get("token_endpoint").is_none(), "{discovery}");
    assert!(
        discovery.get("revocation_endpoint").is_some(),
        "{discovery}"
    );
    assert!(!dev.state().join("tokens.redb").exists());
    dev.stop().await;
}

fn revocation(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// Waits until `/authz` refuses `access` as revoked: the Revocation is in force.
async fn until_refused(dev: &Dev, access: &str) {
    eventually("the Revocation in force", CHANGE_DEADLINE, || async {
        (decide(dev, access).await == (401, "token_revoked".to_owned())).then_some(())
    })
    .await;
}

/// A Revocation lives as long as a refresh family started before it can refresh: with
/// 15-minute keys, tokens pass 20 minutes after their `iat`, but a family of a TokenClient
/// with a 2-hour `absoluteLifetime` refreshes for 2 hours, and each refresh mints a token
/// the gateways accept. A Revocation that lapsed at 20 minutes would let a session that
/// kept quiet for half an hour go on.
#[tokio::test]
async fn a_revocation_outlives_the_refresh_families_it_ends() {
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let manifests = [
        (
            "keys.yaml",
            signing_key(
                "auth",
                "web",
                "  algorithm: RS256\n  maxTokenLifetime: 15m\n",
            ),
        ),
        ("web.yaml", token_client("web", "web", "")),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ];
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let tokens = TokenSettings {
        rate_per_minute: 1000,
        ..TokenSettings::default()
    };
    let dev = Dev::start_with_tokens(&refs, clock.clone(), common::test_settings(), tokens).await;
    let secrets = Secrets::make(&dev);

    let ivan = login(&dev, &secrets, "ivan").await;
    let before = clock.now();
    dev.write(
        "revoke-ivan.yaml",
        &revocation(
            "auth",
            "ivan",
            &format!(
                "  signingKeyRef: {{name: web}}\n  subject: ivan\n  issuedBefore: \"{before}\"\n"
            ),
        ),
    );
    until_refused(&dev, text(&ivan, "access_token")).await;
    // Past the key's 15 minutes and the 5 minutes of leeway, within the 1-hour idle
    // lifetime: the family could refresh, so the Revocation still counts.
    clock.advance(jiff::SignedDuration::from_mins(30));
    let (status, body) = refresh(&dev, "auth/web", text(&ivan, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        text(&body, "error_description").contains("revoked"),
        "{body}"
    );
    // `revocations list` says so: it lapses 2 hours (the absoluteLifetime) and 5 minutes
    // after issuedBefore.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["revocations", "list", "--manifests"])
        .arg(dev.manifests())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let lapses = jiff::Timestamp::from_second(before.as_second() + 2 * 3600 + 5 * 60).unwrap();
    assert!(
        listed.contains("auth/ivan\tauth/web\tsub=ivan") && listed.contains(&lapses.to_string()),
        "{listed}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn revocations_in_force_stop_refreshing_and_another_namespace_cannot_end_a_session() {
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let (dev, secrets) = start(clock.clone()).await;

    // A subject revoked up to now: its sessions of before cannot refresh (the rotated
    // access token would carry an `iat` after issuedBefore and pass every gateway).
    let erin = login(&dev, &secrets, "erin").await;
    let before = clock.now();
    dev.write(
        "revoke-erin.yaml",
        &revocation(
            "auth",
            "erin",
            &format!(
                "  signingKeyRef: {{name: web}}\n  subject: erin\n  issuedBefore: \"{before}\"\n"
            ),
        ),
    );
    until_refused(&dev, text(&erin, "access_token")).await;
    clock.advance(jiff::SignedDuration::from_secs(10));
    let (status, body) = refresh(&dev, "auth/web", text(&erin, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        text(&body, "error_description").contains("revoked"),
        "{body}"
    );
    // A login after issuedBefore is a new session, and works.
    let again = login(&dev, &secrets, "erin").await;
    assert_eq!(decide(&dev, text(&again, "access_token")).await.0, 200);
    let (status, body) = refresh(&dev, "auth/web", text(&again, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");

    // A session revoked by an admin (`sessionId` = the `sid`): the family ends in the
    // store, so removing the Revocation later does not bring it back.
    let frank = login(&dev, &secrets, "frank").await;
    let sid = claims_of(text(&frank, "access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    dev.write(
        "revoke-frank.yaml",
        &revocation(
            "auth",
            "frank",
            &format!("  signingKeyRef: {{name: web}}\n  sessionId: \"{sid}\"\n"),
        ),
    );
    until_refused(&dev, text(&frank, "access_token")).await;
    let (status, body) = refresh(&dev, "auth/web", text(&frank, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    std::fs::remove_file(dev.manifests().join("revoke-frank.yaml")).unwrap();
    eventually("the Revocation withdrawn", CHANGE_DEADLINE, || async {
        (decide(&dev, text(&frank, "access_token")).await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = refresh(&dev, "auth/web", text(&frank, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // A tenant of another namespace may revoke auth/web's tokens under its own policies
    // (shop's gateway refuses them), but cannot end auth's sessions.
    let gina = login(&dev, &secrets, "gina").await;
    let sid = claims_of(text(&gina, "access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    dev.write(
        "shop-revokes-gina.yaml",
        &revocation(
            "shop",
            "gina",
            &format!("  signingKeyRef: {{name: web, namespace: auth}}\n  sessionId: \"{sid}\"\n"),
        ),
    );
    until_refused(&dev, text(&gina, "access_token")).await;
    let (status, body) = refresh(&dev, "auth/web", text(&gina, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = refresh(&dev, "auth/web", text(&body, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");

    // A subject revoked with issuedBefore in the future: no login for it until then.
    let later = clock.now() + jiff::SignedDuration::from_hours(1);
    dev.write(
        "revoke-hana.yaml",
        &revocation(
            "auth",
            "hana",
            &format!(
                "  signingKeyRef: {{name: web}}\n  subject: hana\n  issuedBefore: \"{later}\"\n"
            ),
        ),
    );
    eventually("hana's login refused", CHANGE_DEADLINE, || async {
        let (status, body) = post(
            &dev,
            "web",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "auth/web"),
                ("client_secret", &secrets.web),
                ("subject_token", "hana"),
                ("subject_token_type", SUBJECT),
                ("audience", "payments"),
            ],
        )
        .await;
        (status == 400 && body["error"] == "invalid_grant").then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn a_login_beyond_the_clients_cap_gets_503_naming_it_and_its_sessions_refresh_on() {
    let tokens = TokenSettings {
        rate_per_minute: 1000,
        session_limits: authplane::tokens::embedded::SessionLimits {
            sessions_per_client: Some(2),
            ..Default::default()
        },
        ..TokenSettings::default()
    };
    let (dev, secrets) = start_limited(
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await;
    let first = login(&dev, &secrets, "alice").await;
    login(&dev, &secrets, "bob").await;
    let (status, body) = post(
        &dev,
        "web",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secrets.web),
            ("subject_token", "carol"),
            ("subject_token_type", SUBJECT),
            ("audience", "payments"),
        ],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let why = text(&body, "error_description");
    assert!(
        why.contains("auth/web") && why.contains("--max-sessions-per-client"),
        "{why}"
    );
    // The sessions it holds go on.
    let (status, body) = refresh(&dev, "auth/web", text(&first, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_login_beyond_the_namespaces_memory_budget_gets_503_naming_it_and_changes_nothing() {
    // Room for one session without custom claims (about 1.4 KB), not two.
    let tokens = TokenSettings {
        rate_per_minute: 1000,
        session_limits: authplane::tokens::embedded::SessionLimits {
            bytes_per_namespace: 2_000,
            ..Default::default()
        },
        ..TokenSettings::default()
    };
    let (dev, secrets) = start_limited(
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await;
    let first = login(&dev, &secrets, "alice").await;
    let beyond = [
        ("grant_type", EXCHANGE),
        ("client_id", "auth/web"),
        ("client_secret", &secrets.web),
        ("subject_token", "bob"),
        ("subject_token_type", SUBJECT),
        ("audience", "payments"),
    ];
    let (status, body) = post(&dev, "web", &beyond).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let why = text(&body, "error_description");
    assert!(
        why.contains("namespace auth ") && why.contains("--session-memory-per-namespace-mib"),
        "{why}"
    );
    // Nothing was held for it: refused again, and the session held goes on.
    let (status, _) = post(&dev, "web", &beyond).await;
    assert_eq!(status, 503);
    let (status, body) = refresh(&dev, "auth/web", text(&first, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
}
