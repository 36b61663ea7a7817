//! The token service attacked as a hostile client would, over HTTP in dev mode: client
//! ids spelled otherwise, refresh tokens of another client or issuer, claims that would
//! override authplane's, forged cross-site cookie requests, and logouts repeated to make
//! authplane write. Each attack must be refused and must change nothing: the victim's
//! session keeps working afterwards.

mod common;

use std::sync::Arc;

use authplane::api::ObjectKey;
use authplane::dev::state::StateStore;
use authplane::dev::tokens::TokenSettings;
use common::{Dev, payments_policy, signing_key};
use serde_json::Value;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SUBJECT: &str = "urn:authplane:params:oauth:token-type:subject";

fn token_client(name: &str, key: &str, extra: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: TokenClient\nmetadata: {{name: {name}, namespace: auth}}\nspec:\n  signingKeyRef: {{name: {key}}}\n  audiences: [payments]\n  allowedClaims: [roles]\n{extra}"
    )
}

/// auth/web (issuer `/auth/web`), auth/mobile on the same key, auth/other on another
/// key, auth/spa with cookies; and the client secret of auth/web.
async fn start() -> (Dev, String) {
    let manifests = [
        (
            "keys.yaml",
            signing_key("auth", "web", "  algorithm: ES256\n"),
        ),
        (
            "other.yaml",
            signing_key("auth", "other", "  algorithm: ES256\n"),
        ),
        ("web.yaml", token_client("web", "web", "")),
        ("mobile.yaml", token_client("mobile", "web", "")),
        ("other-client.yaml", token_client("other", "other", "")),
        (
            "spa.yaml",
            token_client("spa", "web", "  delivery: Cookie\n"),
        ),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ];
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // Budgets these tests do not reach: the limits are tested in token_endpoint.rs.
    let tokens = TokenSettings {
        rate_per_minute: 1000,
        ..TokenSettings::default()
    };
    let dev = Dev::start_with_tokens(
        &refs,
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await;
    let new = authplane::token_endpoint::secret::new_secret(&mut authplane::refresh::SystemEntropy)
        .unwrap();
    let id = ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    StateStore::new(dev.state())
        .save_client_secret(&id, &new.stored)
        .unwrap();
    (dev, new.secret)
}

async fn post(
    dev: &Dev,
    path: &str,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = dev.http.post(dev.url(path)).form(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(dev: &Dev, secret: &str, claims: &str) -> (u16, Value) {
    post(
        dev,
        "/auth/web/token",
        &[],
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", secret),
            ("subject_token", "alice"),
            ("subject_token_type", SUBJECT),
            ("authplane_claims", claims),
        ],
    )
    .await
}

fn text<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

fn error(answer: &(u16, Value)) -> (u16, Option<&str>) {
    (answer.0, answer.1["error"].as_str())
}

#[tokio::test]
async fn a_stolen_refresh_token_gets_nothing_through_another_client_or_spelling() {
    let (dev, secret) = start().await;
    let session = login(&dev, &secret, r#"{"roles": ["payments"]}"#).await.1;
    let token = text(&session, "refresh_token").to_owned();
    let refresh_as = |path: &'static str, client: &'static str| {
        let dev = &dev;
        let token = token.clone();
        async move {
            post(
                dev,
                path,
                &[],
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", client),
                    ("refresh_token", &token),
                ],
            )
            .await
        }
    };
    // Another client of the same issuer: as if the token were unknown.
    let answer = refresh_as("/auth/web/token", "auth/mobile").await;
    assert_eq!(error(&answer), (400, Some("invalid_grant")), "{}", answer.1);
    // The client named otherwise, or on another issuer: no such client there.
    for (path, client) in [
        ("/auth/web/token", "AUTH/WEB"),
        ("/auth/web/token", "auth/web/"),
        ("/auth/web/token", "/auth/web"),
        ("/auth/web/token", "auth//web"),
        ("/auth/web/token", " auth/web"),
        ("/auth/web/token", "auth%2Fweb"),
        ("/auth/web/token", "web"),
        ("/auth/other/token", "auth/web"),
        ("/auth/other/token", "auth/other"),
        ("/auth/web/token/", "auth/web"),
    ] {
        let answer = refresh_as(path, client).await;
        assert!(
            matches!(
                error(&answer),
                (401, Some("invalid_client")) | (400, _) | (404, _)
            ),
            "{path} {client}: {answer:?}"
        );
        assert_ne!(answer.0, 200, "{path} {client}");
    }
    // Twice the token, or the client twice in two spellings of one name.
    for body in [
        format!(
            "grant_type=refresh_token&client_id=auth%2Fweb&client%5Fid=auth%2Fmobile&refresh_token={token}"
        ),
        format!(
            "grant_type=refresh_token&client_id=auth%2Fweb&refresh_token={token}&refresh_token={token}"
        ),
        format!(
            "grant_type=refresh_token&client_id=auth%2Fweb&refresh_token=&refresh_token={token}"
        ),
    ] {
        let response = dev
            .http
            .post(dev.url("/auth/web/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{body}");
    }
    // None of it touched the session: the token rotates once, now.
    let answer = refresh_as("/auth/web/token", "auth/web").await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    dev.stop().await;
}

#[tokio::test]
async fn a_workload_cannot_set_authplanes_claims_or_other_audiences() {
    let (dev, secret) = start().await;
    for claims in [
        r#"{"sub": "admin"}"#,
        r#"{"iss": "https://elsewhere"}"#,
        r#"{"act": {"sub": "admin"}}"#,
        r#"{"sid": "someone-elses-session"}"#,
        r#"{"may_act": {"sub": "admin"}}"#,
        r#"{"roles": ["payments"], "roles": ["admin"], "aud": "x"}"#,
        r#"[{"sub": "admin"}]"#,
    ] {
        let answer = login(&dev, &secret, claims).await;
        assert_eq!(error(&answer), (400, Some("invalid_request")), "{claims}");
    }
    let huge = format!(r#"{{"roles": ["{}"]}}"#, "a".repeat(9000));
    assert_eq!(
        error(&login(&dev, &secret, &huge).await),
        (400, Some("invalid_request"))
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep = format!(r#"{{"roles": {deep}}}"#);
    assert_eq!(
        error(&login(&dev, &secret, &deep).await),
        (400, Some("invalid_request"))
    );
    let answer = post(
        &dev,
        "/auth/web/token",
        &[],
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", &secret),
            ("subject_token", "alice"),
            ("subject_token_type", SUBJECT),
            ("audience", "payments billing"),
        ],
    )
    .await;
    assert_eq!(error(&answer), (400, Some("invalid_target")));
    dev.stop().await;
}

#[tokio::test]
async fn a_cross_site_request_cannot_refresh_with_the_cookie() {
    let (dev, _) = start().await;
    // The CSRF check comes before any lookup: any well-formed token shows it.
    let cookie = format!("__Host-authplane-refresh=aprt_{}", "A".repeat(43));
    let form = [("grant_type", "refresh_token"), ("client_id", "auth/spa")];
    let own_origin = dev.url("");
    let own_origin = own_origin.trim_end_matches('/');
    for headers in [
        // No custom header: a form post from any page.
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("origin", own_origin)],
        // The header, but from a sandboxed frame or a data: URL.
        vec![
            ("cookie", cookie.as_str()),
            ("x-authplane-csrf", "1"),
            ("origin", "null"),
        ],
        // A sibling subdomain (same site, another origin).
        vec![
            ("cookie", cookie.as_str()),
            ("x-authplane-csrf", "1"),
            ("origin", "https://evil.localhost"),
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("x-authplane-csrf", "1"),
            ("sec-fetch-site", "cross-site"),
        ],
        // Two cookies of that name: one was planted; neither is believed.
        vec![
            ("cookie", cookie.as_str()),
            (
                "cookie",
                "__Host-authplane-refresh=aprt_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            ),
            ("x-authplane-csrf", "1"),
        ],
    ] {
        let answer = post(&dev, "/auth/web/token", &headers, &form).await;
        assert_eq!(
            error(&answer),
            (400, Some("invalid_request")),
            "{headers:?}"
        );
    }
    dev.stop().await;
}

/// The Revocations in the manifests folder that logouts wrote: name and content.
fn logout_revocations(dev: &Dev) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(dev.manifests())
        .unwrap()
        .map(Result::unwrap)
        .filter(|entry| entry.file_name().to_string_lossy().contains("logout-"))
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(entry.path()).unwrap(),
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_logout_repeated_writes_nothing_again() {
    let (dev, secret) = start().await;
    let session = login(&dev, &secret, "{}").await.1;
    let refresh_token = text(&session, "refresh_token").to_owned();
    let access_token = text(&session, "access_token").to_owned();
    let logout = |token: String, hint: &'static str| {
        let dev = &dev;
        async move {
            post(
                dev,
                "/auth/web/revoke",
                &[],
                &[
                    ("token", token.as_str()),
                    ("token_type_hint", hint),
                    ("client_id", "auth/web"),
                ],
            )
            .await
        }
    };
    let first = logout(refresh_token.clone(), "refresh_token").await;
    assert_eq!(first.0, 200, "{}", first.1);
    // Kept in the token store: one entry appended, no Revocation file.
    assert_eq!(logout_revocations(&dev), Vec::new());
    let recorded = || async {
        let metrics = dev.get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("authplane_session_revocations_recorded_total "))
            .map(str::to_owned)
    };
    assert_eq!(recorded().await.as_deref(), Some("1"));
    // The dead refresh token, and the session's access token, again and again: each is
    // answered 200 (RFC 7009), none writes (a write each would be an apiserver write per
    // request on a cluster, with no budget to stop it).
    for _ in 0..15 {
        assert_eq!(logout(refresh_token.clone(), "refresh_token").await.0, 200);
    }
    assert_eq!(logout(access_token.clone(), "access_token").await.0, 200);
    assert_eq!(logout(access_token, "session").await.0, 200);
    assert_eq!(logout_revocations(&dev), Vec::new());
    assert_eq!(recorded().await.as_deref(), Some("1"));
    dev.stop().await;
}

/// A reviewer that refuses every assertion, and counts them.
struct CountingReviewer(std::sync::atomic::AtomicUsize);

impl authplane::tokens::client_auth::AssertionReviewer for CountingReviewer {
    fn review<'a>(
        &'a self,
        _assertion: &'a str,
        _audience: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<ObjectKey, authplane::tokens::client_auth::AssertionError>,
    > {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {
            Err(authplane::tokens::client_auth::AssertionError::Refused(
                "not a token the apiserver issued".into(),
            ))
        })
    }
}

struct NoWrites;

impl authplane::server::revoke::RevocationWriter for NoWrites {
    fn create(&self, _: authplane::api::Revocation) -> authplane::server::revoke::WriteFuture {
        Box::pin(async { Ok(()) })
    }
}

/// An internet client flooding `/token` with assertions: each review is an apiserver
/// round trip on authplane's account. Once its address has spent its budget of failures,
/// it is answered 429 before any review.
#[tokio::test]
async fn an_address_over_its_failure_budget_costs_the_apiserver_nothing() {
    use authplane::server::{AppState, Endpoints};
    use authplane::snapshot::{PublishedIssuer, Rotation, Snapshot};
    use authplane::token_clients::{Published, ServedClient};
    use authplane::token_endpoint::ClientRules;

    common::install_crypto();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = format!("{base}/auth/web");
    let key = ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    let hour = jiff::SignedDuration::from_hours(1);
    let registry = authplane::registry::Registry::default();
    let mut snapshot = Snapshot {
        policies_known: true,
        ..Snapshot::default()
    };
    snapshot.issuers.insert(
        "/auth/web".into(),
        Arc::new(PublishedIssuer {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            issuer: issuer.clone(),
            jwks_uri: format!("{issuer}/jwks"),
            jwks: Default::default(),
            discovery: Default::default(),
            etag: "\"x\"".into(),
            max_age_secs: 60,
            keys: Vec::new(),
            rotation: Rotation {
                every: hour,
                pre_publish: hour,
                retain_for: hour,
            },
        }),
    );
    registry.publish(snapshot);
    let mut clients = Published::default();
    clients.insert(
        "auth/web".into(),
        Arc::new(ServedClient {
            key: key.clone(),
            rules: ClientRules {
                client: "auth/web".into(),
                issuer: issuer.clone(),
                audiences: vec!["payments".into()],
                allowed_claims: Default::default(),
                access_lifetime: jiff::SignedDuration::from_mins(15),
                lifetimes: authplane::refresh::Lifetimes {
                    absolute: hour,
                    idle: hour,
                    grace: jiff::SignedDuration::from_secs(5),
                },
            },
            service_accounts: vec![ObjectKey {
                namespace: "auth".into(),
                name: "login".into(),
            }],
            delivery: authplane::api::Delivery::Body,
            rate_limit: None,
            id_tokens: Default::default(),
        }),
    );
    registry.publish_token_clients(clients);
    let reviewer = Arc::new(CountingReviewer(Default::default()));
    let mut endpoint = authplane::server::token::TokenEndpoint::new(
        Arc::new(authplane::tokens::Unavailable("never asked".into())),
        Arc::new(NoWrites),
        3,
    );
    endpoint.reviewer = Some(reviewer.clone());
    let state = AppState {
        registry: Arc::new(registry),
        metrics: Arc::new(authplane::metrics::Metrics::default()),
        clock: Arc::new(authplane::clock::SystemClock),
        base_url: Arc::from(base.as_str()),
        signing_keys: Arc::new(authplane::admission::NoSigningKeys),
        tls: None,
        revoke: None,
        token: Some(Arc::new(endpoint)),
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(authplane::server::serve(
        listener,
        authplane::server::router(state, Endpoints::Public),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let response = http
            .post(format!("{issuer}/token"))
            .form(&[
                ("grant_type", EXCHANGE),
                ("client_id", "auth/web"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                (
                    "client_assertion",
                    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
                ),
                ("subject_token", "alice"),
                ("subject_token_type", SUBJECT),
            ])
            .send()
            .await
            .unwrap();
        answers.push(response.status().as_u16());
    }
    assert_eq!(answers, [401, 401, 401, 429, 429, 429, 429, 429]);
    assert_eq!(
        reviewer.0.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "no review once the budget is spent"
    );
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// `/authz/shop/payments` for an access token: its status.
async fn decide(dev: &Dev, token: &str) -> u16 {
    decide_at(dev, "shop/payments", token).await
}

/// The decision of policy `policy` (namespace/name) on a bearer token.
async fn decide_at(dev: &Dev, policy: &str, token: &str) -> u16 {
    dev.get_with(
        &format!("/authz/{policy}"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .status()
    .as_u16()
}

/// A tenant moves its TokenClient to its other SigningKey (a spec edit in its own
/// namespace). A user of a session the old key signed logs out with its refresh token at
/// the issuer that serves the client now: the session's end must be recorded under the
/// key that signed its access tokens (the family's issuer's), not under the one the
/// request came in on, or they keep passing every gateway until they expire.
#[tokio::test]
async fn a_logout_at_another_issuer_refuses_the_sessions_access_tokens() {
    let (dev, secret) = start().await;
    let session = login(&dev, &secret, r#"{"roles": ["payments"]}"#).await.1;
    let refresh_token = text(&session, "refresh_token").to_owned();
    let access_token = text(&session, "access_token").to_owned();
    assert_eq!(decide(&dev, &access_token).await, 200);
    // auth/web is now served on auth/other's issuer (auth/web's key keeps verifying).
    move_web_to_other(&dev).await;
    let answer = logout_at_other(&dev, &refresh_token).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    // Answered 200: the session is over, so its access token must be refused.
    assert_ne!(
        decide(&dev, &access_token).await,
        200,
        "the logout was answered 200, but the session's access token still passes"
    );
    dev.stop().await;
}

/// The same move, then the client's earlier key goes and a namespace free to claim any
/// path (`--unconfined-issuer-namespaces`) serves its issuer URL with its own key. No
/// logout reaches across namespaces: auth's logout of a session the earlier key signed
/// ends nothing under aaa's key (ATTACK12 F4); aaa's logout with its own token naming one
/// of auth's sessions ends nothing of auth's; and support's "end this subject's
/// sessions" ends auth's all the same (their issuer is no longer one of auth's keys).
#[tokio::test]
async fn no_logout_reaches_another_namespaces_sessions() {
    let (mut dev, secret) = start().await;
    let external = "http://auth.test";
    dev.fixed_external_url = Some(external.into());
    dev.unconfined_issuer_namespaces = vec!["aaa".into()];
    dev.admin = true;
    dev.restart().await;
    let session = login(&dev, &secret, r#"{"roles": ["payments"]}"#).await.1;
    let refresh_token = text(&session, "refresh_token").to_owned();
    let sid = part_of(text(&session, "access_token"), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = login(&dev, &secret, r#"{"roles": ["payments"]}"#).await.1;
    let second_sid = part_of(text(&second, "access_token"), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    move_web_to_other(&dev).await;
    std::fs::remove_file(dev.manifests().join("keys.yaml")).unwrap();
    let web_issuer = format!("{external}/auth/web");
    dev.write(
        "aaa.yaml",
        &[
            signing_key(
                "aaa",
                "x",
                &format!("  algorithm: ES256\n  issuer: {web_issuer}\n"),
            ),
            "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: api, namespace: aaa}\nspec:\n  issuers: [{signingKeyRef: {name: x}}]\n  audiences: [payments]\n  rollout: {mode: Enforce, percentage: 100}\n".to_owned(),
        ]
        .join("---\n"),
    );
    // aaa's token of a session that carries the id `sid` (of one of auth's sessions).
    let aaa_token = |dev: &Dev, sid: &str| {
        let request = authplane::token::MintRequest {
            subject: "bob".into(),
            audiences: vec!["payments".into()],
            ttl: jiff::SignedDuration::from_mins(5),
            claims: Default::default(),
            session: Some(sid.to_owned()),
        };
        authplane::token::mint(
            &dev.keys("aaa", "x"),
            &web_issuer,
            &request,
            jiff::Timestamp::now(),
        )
        .unwrap()
    };
    let key_made = |dev: &Dev| dev.state().join("aaa").join("x.json").exists();
    common::eventually(
        "aaa/x serving auth/web's URL",
        common::CHANGE_DEADLINE,
        || async {
            if !key_made(&dev) {
                return None;
            }
            let token = aaa_token(&dev, &sid);
            let kid = part_of(&token, 0)["kid"].as_str().unwrap().to_owned();
            let served = dev.kids("/auth/web/.well-known/jwks.json").await;
            (served == Some(vec![kid]) && decide_at(&dev, "aaa/api", &token).await == 200)
                .then_some(())
        },
    )
    .await;
    let revoked_because = |sid: String| {
        let dev = &dev;
        async move {
            let listed: Value = dev
                .http
                .get(format!(
                    "{}/sessions/auth/web?subject=alice",
                    dev.admin_url()
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let session = listed["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["sid"] == sid.as_str())
                .unwrap_or_else(|| panic!("{sid} in {listed}"))
                .clone();
            session["revoked"]["because"].as_str().map(str::to_owned)
        }
    };

    // aaa logs out its own session that carries the id of auth's second session.
    let answer = post(
        &dev,
        "/auth/web/revoke",
        &[],
        &[
            ("token", aaa_token(&dev, &second_sid).as_str()),
            ("token_type_hint", "session"),
        ],
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        revoked_because(second_sid.clone()).await,
        None,
        "aaa's logout ended a session of auth's"
    );

    // auth's user logs out of the first session at the client's issuer now.
    let answer = logout_at_other(&dev, &refresh_token).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        revoked_because(sid.clone()).await.as_deref(),
        Some("logout")
    );
    assert_eq!(
        decide_at(&dev, "aaa/api", &aaa_token(&dev, &sid)).await,
        200,
        "auth's logout ended a session under aaa's key"
    );

    // Support ends the subject's sessions: no key of auth's serves their issuer, so
    // there is no Revocation to write, and every family ends.
    let ended = dev
        .http
        .post(format!(
            "{}/sessions/auth/web?subject=alice&revoke=true",
            dev.admin_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    assert_eq!(revoked_because(second_sid).await.as_deref(), Some("logout"));
    dev.stop().await;
}

/// Serves auth/web on auth/other's key (a spec edit of the TokenClient) and waits until
/// auth/other's token endpoint knows the client.
async fn move_web_to_other(dev: &Dev) {
    dev.write("web.yaml", &token_client("web", "other", ""));
    common::eventually(
        "auth/web served on auth/other",
        common::CHANGE_DEADLINE,
        || async {
            let answer = post(
                dev,
                "/auth/other/token",
                &[],
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", "auth/web"),
                    ("refresh_token", "aprt_not-a-token"),
                ],
            )
            .await;
            (error(&answer) != (401, Some("invalid_client"))).then_some(())
        },
    )
    .await;
}

/// A logout with auth/web's refresh token at auth/other's `/revoke`.
async fn logout_at_other(dev: &Dev, refresh_token: &str) -> (u16, Value) {
    post(
        dev,
        "/auth/other/revoke",
        &[],
        &[
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
            ("client_id", "auth/web"),
        ],
    )
    .await
}

/// The header (0) or the payload (1) of a compact JWT.
fn part_of(token: &str, part: usize) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(part).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
