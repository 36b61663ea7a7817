//! Forward-auth and TokenReview over HTTP in dev mode: every row of the decision table.

mod common;

use common::{CHANGE_DEADLINE, Dev, eventually, payments_policy, signing_key, tamper, user_in};
use serde_json::{Value, json};

const KEYS: &str = "  algorithm: ES256\n";

async fn start(rollout: &str, extra: &str) -> Dev {
    Dev::start(&[
        ("keys.yaml", &signing_key("auth", "web", KEYS)),
        ("policy.yaml", &payments_policy(rollout, extra)),
    ])
    .await
}

const AUTHZ: &str = "/authz/shop/payments";
const SALT: &str = "shop/payments";

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Request headers of both gateway dialects around the token headers.
fn dialects() -> [Vec<(&'static str, &'static str)>; 2] {
    [
        vec![
            ("X-Original-URL", "https://shop.example/pay"),
            ("X-Original-Method", "POST"),
        ],
        vec![
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
            ("X-Forwarded-Uri", "/pay"),
        ],
    ]
}

async fn request(
    dev: &Dev,
    dialect: &[(&str, &str)],
    user: String,
    auth: Option<String>,
) -> reqwest::Response {
    let mut headers: Vec<(&str, &str)> = dialect.to_vec();
    headers.push(("X-User-Id", &user));
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    dev.get_with(AUTHZ, &headers).await
}

#[tokio::test]
async fn the_decision_table_for_enforced_and_audited_users() {
    // Bucketing by a header lets the test choose the bucket independently of the token.
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "",
    )
    .await;
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);
    let good = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"], "email": "a@x"}),
    );
    let no_role = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["other"]}),
    );
    let bad = tamper(&good);
    let bearer = |t: &str| format!("Bearer {t}");

    for dialect in dialects() {
        let call =
            |user: &str, auth: Option<String>| request(&dev, &dialect, user.to_owned(), auth);

        // Valid token, claims satisfied: 200 with claim headers, in both buckets.
        for user in [&enforced, &audited] {
            let r = call(user, Some(bearer(&good))).await;
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "x-auth-subject").as_deref(), Some("alice"));
            assert_eq!(header(&r, "x-auth-email").as_deref(), Some("a@x"));
            // Answered empty, so a gateway overwrites a client's own copy.
            assert_eq!(header(&r, "x-authplane-audit").as_deref(), Some(""));
        }

        // No token: 401 with a bare challenge when enforced; 200 + audit header otherwise.
        let r = call(&enforced, None).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            header(&r, "www-authenticate").as_deref(),
            Some("Bearer realm=\"shop/payments\"")
        );
        assert_eq!(
            header(&r, "x-authplane-reason").as_deref(),
            Some("missing_token")
        );
        let r = call(&audited, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-authplane-audit").as_deref(),
            Some("would-deny; reason=missing_token")
        );

        // Bad token: 401 invalid_token (RFC 6750) when enforced; audited otherwise.
        let r = call(&enforced, Some(bearer(&bad))).await;
        assert_eq!(r.status(), 401);
        let challenge = header(&r, "www-authenticate").unwrap();
        assert!(
            challenge.starts_with(
                "Bearer realm=\"shop/payments\", error=\"invalid_token\", error_description=\""
            ),
            "{challenge}"
        );
        assert_eq!(
            header(&r, "x-authplane-reason").as_deref(),
            Some("bad_signature")
        );
        let r = call(&audited, Some(bearer(&bad))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-authplane-audit").as_deref(),
            Some("would-deny; reason=bad_signature")
        );

        // Valid token without the required claim: 403 insufficient_scope; audited otherwise.
        let r = call(&enforced, Some(bearer(&no_role))).await;
        assert_eq!(r.status(), 403);
        assert!(
            header(&r, "www-authenticate")
                .unwrap()
                .contains("error=\"insufficient_scope\"")
        );
        assert_eq!(
            header(&r, "x-auth-subject"),
            None,
            "no identity headers on a refusal"
        );
        let r = call(&audited, Some(bearer(&no_role))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-authplane-audit").as_deref(),
            Some("would-deny; reason=insufficient_scope")
        );
        assert_eq!(
            header(&r, "x-auth-subject").as_deref(),
            Some(""),
            "a token that failed a check is not an identity"
        );
    }

    // Envoy's ext_authz appends the original path to the configured one.
    let r = dev
        .get_with(
            &format!("{AUTHZ}/pay/checkout?step=2"),
            &[("X-User-Id", &enforced)],
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = dev
        .get_with(
            &format!("{AUTHZ}/pay"),
            &[("X-User-Id", &enforced), ("Authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(r.status(), 200);

    // Any method, empty body.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::HEAD,
    ] {
        let r = dev
            .http
            .request(method.clone(), dev.url(AUTHZ))
            .header("X-User-Id", &enforced)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method}");
    }
    let metrics = dev.get("/metrics").await.text().await.unwrap();
    for sample in [
        r#"authplane_decisions_total{namespace="shop",policy="payments",decision="deny",reason="missing_token"}"#,
        r#"authplane_decisions_total{namespace="shop",policy="payments",decision="would_deny",reason="bad_signature"}"#,
        r#"authplane_decisions_total{namespace="shop",policy="payments",decision="allow",reason=""}"#,
        "authplane_decision_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(sample), "missing {sample}");
    }
    dev.stop().await;
}

#[tokio::test]
async fn tokens_in_cookies_and_custom_headers() {
    let dev = start("{mode: Enforce, percentage: 100}", "").await;
    let good = dev.mint(
        ("auth", "web"),
        "bob",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let r = dev
        .get_with(
            AUTHZ,
            &[(
                "Cookie",
                &format!("theme=dark; access_token={good}; other=1"),
            )],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-auth-subject").as_deref(), Some("bob"));
    // The prefix is matched case-insensitively.
    let r = dev
        .get_with(AUTHZ, &[("Authorization", &format!("bearer {good}"))])
        .await;
    assert_eq!(r.status(), 200);
    let r = dev
        .get_with(AUTHZ, &[("Authorization", &format!("Basic {good}"))])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "x-authplane-reason").as_deref(),
        Some("missing_token")
    );
    dev.stop().await;
}

#[tokio::test]
async fn audit_mode_passes_everything_and_disabled_checks_nothing() {
    let dev = start("{mode: Audit}", "").await;
    let status = dev.json("/status/shop/payments").await;
    assert_eq!(
        status["effectivePercentage"], 0.0,
        "nobody is enforced in Audit"
    );
    let r = dev.get(AUTHZ).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("would-deny; reason=missing_token")
    );

    dev.write("policy.yaml", &payments_policy("{mode: Disabled}", ""));
    eventually("mode Disabled", CHANGE_DEADLINE, || async {
        let r = dev.get(AUTHZ).await;
        (r.status() == 200 && header(&r, "x-authplane-audit").as_deref() == Some("")).then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn legacy_session_cookies_pass_outside_enforcement_only() {
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {cookie: session_id}}",
        "  legacySession: {cookie: session_id}\n",
    )
    .await;
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);

    let r = dev
        .get_with(AUTHZ, &[("Cookie", &format!("session_id={audited}"))])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("legacy-session; reason=missing_token")
    );
    let r = dev
        .get_with(AUTHZ, &[("Cookie", &format!("session_id={enforced}"))])
        .await;
    assert_eq!(r.status(), 401, "an enforced user needs a token");
    let r = dev.get(AUTHZ).await;
    assert_eq!(r.status(), 401, "neither token nor session");
    dev.stop().await;
}

#[tokio::test]
async fn bucketing_by_claim_keeps_an_enforced_user_enforced_when_the_token_expires() {
    let dev = start("{mode: Enforce, percentage: 10}", "").await;
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);
    let expired = |sub: &str| {
        let mut claims = dev.claims(("auth", "web"), sub, "payments");
        claims["exp"] = json!(jiff::Timestamp::now().as_second() - 3600);
        claims["roles"] = json!(["payments"]);
        dev.sign(("auth", "web"), &claims)
    };
    let r = dev
        .get_with(
            AUTHZ,
            &[("Authorization", &format!("Bearer {}", expired(&enforced)))],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-authplane-reason").as_deref(), Some("expired"));
    let r = dev
        .get_with(
            AUTHZ,
            &[("Authorization", &format!("Bearer {}", expired(&audited)))],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("would-deny; reason=expired")
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_percentage_change_applies_within_a_second_without_restart() {
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "",
    )
    .await;
    let enforced = user_in(SALT, 10.0, true);
    assert_eq!(
        dev.get_with(AUTHZ, &[("X-User-Id", &enforced)])
            .await
            .status(),
        401
    );

    let started = std::time::Instant::now();
    dev.write(
        "policy.yaml",
        &payments_policy(
            "{mode: Enforce, percentage: 0, bucketBy: {header: X-User-Id}}",
            "",
        ),
    );
    eventually("the rollback to 0%", CHANGE_DEADLINE, || async {
        (dev.get_with(AUTHZ, &[("X-User-Id", &enforced)])
            .await
            .status()
            == 200)
            .then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(1),
        "rollback took {took:?}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_policy_naming_a_missing_signing_key_denies_under_enforcement() {
    let broken = payments_policy("{mode: Enforce, percentage: 100}", "")
        .replace("name: web, namespace: auth", "name: nope, namespace: auth");
    let dev = Dev::start(&[
        ("keys.yaml", &signing_key("auth", "web", KEYS)),
        ("policy.yaml", &broken),
    ])
    .await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let r = dev
        .get_with(AUTHZ, &[("Authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "x-authplane-reason").as_deref(),
        Some("issuer_unavailable")
    );
    let status = dev.json("/status/shop/payments").await;
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SigningKeyNotFound");
    assert!(ready["message"].as_str().unwrap().contains("auth/nope"));
    assert_eq!(status["effectivePercentage"], 100.0);
    assert_eq!(
        status["forwardAuthUrl"],
        format!("{}/authz/shop/payments", dev.external_url())
    );
    assert_eq!(dev.get("/status/shop/unknown").await.status(), 404);

    let r = dev.get("/authz/shop/unknown").await;
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no AuthPolicy shop/unknown")
    );
    dev.stop().await;
}

async fn review(dev: &Dev, body: Value) -> (u16, Value) {
    let r = dev
        .http
        .post(dev.url("/tokenreview/shop/payments"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn token_review_v1_and_v1beta1() {
    let extra = "  tokenReview: {usernamePrefix: \"authplane:\", groupsClaim: groups, groupsPrefix: \"authplane:\"}\n";
    let dev = start("{mode: Audit}", extra).await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"], "groups": ["dev", "ops"]}),
    );
    for version in ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"] {
        let (status, body) = review(
            &dev,
            json!({"apiVersion": version, "kind": "TokenReview", "spec": {"token": token}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["apiVersion"], version);
        assert_eq!(body["kind"], "TokenReview");
        let status = &body["status"];
        assert_eq!(status["authenticated"], true, "{body}");
        assert_eq!(status["user"]["username"], "authplane:alice");
        assert_eq!(status["user"]["uid"], "alice");
        assert_eq!(
            status["user"]["groups"],
            json!(["authplane:dev", "authplane:ops"])
        );
        assert_eq!(
            status["user"]["extra"]["authplane.io/issuer"],
            json!([format!("{}/auth/web", dev.external_url())])
        );
        assert_eq!(status["audiences"], json!(["payments"]));

        // Audience-aware reviews.
        let (_, body) = review(&dev, json!({"apiVersion": version, "kind": "TokenReview", "spec": {"token": token, "audiences": ["payments", "x"]}})).await;
        assert_eq!(body["status"]["audiences"], json!(["payments"]));
        let (_, body) = review(&dev, json!({"apiVersion": version, "kind": "TokenReview", "spec": {"token": token, "audiences": ["x"]}})).await;
        assert_eq!(body["status"]["authenticated"], false);

        // Failures are answered in the body, with a reason.
        let (status, body) = review(
            &dev,
            json!({"apiVersion": version, "kind": "TokenReview", "spec": {"token": "garbage"}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["status"]["authenticated"], false);
        assert!(
            body["status"]["error"]
                .as_str()
                .unwrap()
                .contains("well-formed")
        );
    }
    // Not a TokenReview at all: 400 with a message, never a 500.
    for bad in [
        json!({"kind": "Pod"}),
        json!("text"),
        json!({"apiVersion": "authentication.k8s.io/v2", "kind": "TokenReview"}),
    ] {
        let r = dev
            .http
            .post(dev.url("/tokenreview/shop/payments"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = dev
        .http
        .post(dev.url("/tokenreview/shop/payments"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    dev.stop().await;
}

/// TokenReview maps users as the apiserver's own OIDC authenticator does: usernames carry
/// their issuer, groups come from `groups`, and no token names a `system:` user or group
/// unless the policy allows it.
#[tokio::test]
async fn token_review_maps_users_safely_by_default() {
    let bare = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: bare, namespace: shop}\n\
        spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [payments]\n\
        \x20 tokenReview: {usernamePrefix: \"-\"}\n";
    let dev = Dev::start(&[
        ("keys.yaml", &signing_key("auth", "web", KEYS)),
        ("policy.yaml", &payments_policy("{mode: Audit}", "")),
        ("bare.yaml", bare),
    ])
    .await;
    let ask = |policy: &'static str, token: String| {
        let dev = &dev;
        async move {
            let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}});
            let r = dev
                .http
                .post(dev.url(&format!("/tokenreview/shop/{policy}")))
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["status"].clone()
        }
    };
    let mint = |sub: &str, claims: Value| {
        let mut claims = claims;
        claims["roles"] = json!(["payments"]);
        dev.mint(("auth", "web"), sub, &["payments"], claims)
    };
    let issuer = format!("{}/auth/web", dev.external_url());
    // `token mint --sub system:kube-controller-manager` is not the controller manager.
    let controller = mint("system:kube-controller-manager", json!({"groups": ["dev"]}));
    let status = ask("payments", controller.clone()).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        format!("{issuer}#system:kube-controller-manager")
    );
    assert_eq!(status["user"]["groups"], json!(["dev"]));
    // Without a prefix it would be: refused.
    let status = ask("bare", controller).await;
    assert_eq!(status["authenticated"], false, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("\"system:kube-controller-manager\" starts with system:"),
        "{status}"
    );
    // A group of Kubernetes' own, with a prefix or not: refused.
    let masters = mint("alice", json!({"groups": ["dev", "system:masters"]}));
    for policy in ["payments", "bare"] {
        let status = ask(policy, masters.clone()).await;
        assert_eq!(status["authenticated"], false, "{policy}: {status}");
        assert!(status.get("user").is_none(), "{policy}: {status}");
    }
    let alice = ask("bare", mint("alice", json!({}))).await;
    assert_eq!(alice["user"]["username"], "alice");
    assert_eq!(
        dev.metric("authplane_decisions_total{namespace=\"shop\",policy=\"bare\",decision=\"deny\",reason=\"system_name\"}")
            .await,
        2.0
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_is_revoked() {
    let dev = start("{mode: Enforce, percentage: 100}", "").await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let bearer = [("Authorization", format!("Bearer {token}"))];
    let headers: Vec<(&str, &str)> = bearer.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(dev.get_with(AUTHZ, &headers).await.status(), 200);
    let hits = dev.metric("authplane_decision_cache_hits_total").await;
    let response = dev.get_with(AUTHZ, &headers).await;
    assert_eq!(response.status(), 200);
    // Forwarded claims come with cached answers too.
    assert_eq!(
        header(&response, "x-auth-subject").as_deref(),
        Some("alice")
    );
    assert_eq!(
        dev.metric("authplane_decision_cache_hits_total").await,
        hits + 1.0
    );

    let kid = dev
        .keys("auth", "web")
        .active(jiff::Timestamp::now())
        .unwrap()
        .material
        .kid()
        .to_owned();
    let revoked = signing_key("auth", "web", KEYS).replace(
        "  namespace: auth\n",
        &format!("  namespace: auth\n  annotations:\n    authplane.io/revoke-kids: {kid}\n"),
    );
    dev.write("keys.yaml", &revoked);
    eventually(
        "the revoked key's cached token refused",
        CHANGE_DEADLINE,
        || async {
            let response = dev.get_with(AUTHZ, &headers).await;
            (response.status() == 401).then_some(())
        },
    )
    .await;
    assert_eq!(
        header(&dev.get_with(AUTHZ, &headers).await, "x-authplane-reason").as_deref(),
        Some("unknown_kid")
    );
    dev.stop().await;
}

#[tokio::test]
async fn with_the_cache_off_every_request_verifies() {
    let manifests = [
        ("keys.yaml", signing_key("auth", "web", KEYS)),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ];
    let manifests: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dev = Dev::start_with(
        &manifests,
        std::sync::Arc::new(authplane::clock::SystemClock),
        0,
    )
    .await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let auth = format!("Bearer {token}");
    for _ in 0..3 {
        assert_eq!(
            dev.get_with(AUTHZ, &[("Authorization", &auth)])
                .await
                .status(),
            200
        );
    }
    assert_eq!(dev.metric("authplane_decision_cache_hits_total").await, 0.0);
    dev.stop().await;
}

#[tokio::test]
async fn cached_tokens_survive_unrelated_changes_but_not_their_policy_changing() {
    let dev = start("{mode: Enforce, percentage: 100}", "").await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    assert_eq!(dev.get_with(AUTHZ, &headers).await.status(), 200);

    // Another SigningKey appears: the snapshot is rebuilt, this policy's entries stay.
    dev.write("other.yaml", &signing_key("auth", "other", KEYS));
    eventually("the other key served", CHANGE_DEADLINE, || async {
        dev.kids("/auth/other/.well-known/jwks.json").await
    })
    .await;
    let hits = dev.metric("authplane_decision_cache_hits_total").await;
    assert_eq!(dev.get_with(AUTHZ, &headers).await.status(), 200);
    assert_eq!(
        dev.metric("authplane_decision_cache_hits_total").await,
        hits + 1.0
    );

    // The policy now requires a role the token lacks: the cached "verified" is not reused.
    dev.write(
        "policy.yaml",
        &payments_policy("{mode: Enforce, percentage: 100}", "")
            .replace("contains: payments", "contains: admin"),
    );
    eventually("the new required claim", CHANGE_DEADLINE, || async {
        (dev.get_with(AUTHZ, &headers).await.status() == 403).then_some(())
    })
    .await;
    dev.stop().await;
}

/// GET the policy with raw header bytes (values that are not text, as browsers and
/// third-party scripts send them).
async fn get_raw(dev: &Dev, headers: &[(&str, &[u8])]) -> reqwest::Response {
    let mut request = dev.http.get(dev.url(AUTHZ));
    for (name, value) in headers {
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    request.send().await.unwrap()
}

const REVOKED_JTI: &str = "stolen-1";

/// A Revocation of the token whose `jti` is [`REVOKED_JTI`].
fn revocation_of_stolen_token() -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {{name: stolen, namespace: auth}}\nspec:\n  signingKeyRef: {{name: web}}\n  tokenId: {REVOKED_JTI}\n"
    )
}

#[tokio::test]
async fn a_revoked_token_is_never_an_identity_in_any_bucket() {
    // Bucketing by a header lets the test choose the bucket independently of the token.
    let rollout = "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}";
    let with_legacy = payments_policy(rollout, "  legacySession: {cookie: session_id}\n");
    let without = with_legacy
        .replace("name: payments", "name: open")
        .replace("  legacySession: {cookie: session_id}\n", "");
    let dev = Dev::start(&[
        ("keys.yaml", &signing_key("auth", "web", KEYS)),
        ("policy.yaml", &with_legacy),
        ("open.yaml", &without),
        ("revocation.yaml", &revocation_of_stolen_token()),
    ])
    .await;
    let mut claims = dev.claims(("auth", "web"), "zoe", "payments");
    claims["roles"] = json!(["payments"]);
    claims["jti"] = json!(REVOKED_JTI);
    let revoked = format!("Bearer {}", dev.sign(("auth", "web"), &claims));
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);

    // Enforced: refused as revoked.
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &enforced), ("Authorization", &revoked)],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "x-authplane-reason").as_deref(),
        Some("token_revoked")
    );
    assert_eq!(header(&r, "x-auth-subject"), None);

    // Outside enforcement with legacySession: like garbage, 401 without the cookie...
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &audited), ("Authorization", &revoked)],
        )
        .await;
    assert_eq!(r.status(), 401, "a revoked token is no better than none");
    assert_eq!(
        header(&r, "x-authplane-reason").as_deref(),
        Some("token_revoked")
    );
    assert_eq!(header(&r, "x-auth-subject"), None);
    // ...and a legacy-session pass with it, never as zoe.
    let r = dev
        .get_with(
            AUTHZ,
            &[
                ("X-User-Id", &audited),
                ("Authorization", &revoked),
                ("Cookie", "session_id=s1"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("legacy-session; reason=token_revoked")
    );
    assert_eq!(header(&r, "x-auth-subject").as_deref(), Some(""));

    // Without legacySession: audited, with the identity headers empty.
    let r = dev
        .get_with(
            "/authz/shop/open",
            &[("X-User-Id", &audited), ("Authorization", &revoked)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("would-deny; reason=token_revoked")
    );
    assert_eq!(header(&r, "x-auth-subject").as_deref(), Some(""));
    assert_eq!(header(&r, "x-auth-email").as_deref(), Some(""));
    dev.stop().await;
}

#[tokio::test]
async fn every_pass_answers_every_identity_header_and_only_a_full_pass_fills_them() {
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "  legacySession: {cookie: session_id}\n",
    )
    .await;
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);
    let bearer = |token: String| format!("Bearer {token}");
    let no_email = bearer(dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    ));
    let no_role = bearer(dev.mint(
        ("auth", "web"),
        "mallory",
        &["payments"],
        json!({"roles": ["other"], "email": "m@x"}),
    ));
    let identity = |r: &reqwest::Response| (header(r, "x-auth-subject"), header(r, "x-auth-email"));
    let some = |s: &str, e: &str| (Some(s.to_owned()), Some(e.to_owned()));

    // Allowed: the verified claims; one the token lacks is answered empty.
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &enforced), ("Authorization", &no_email)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(identity(&r), some("alice", ""));
    // A valid token without a required claim, outside enforcement: audited, and not an
    // identity (it passes as before; legacySession does not apply to a valid token).
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &audited), ("Authorization", &no_role)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("would-deny; reason=insufficient_scope")
    );
    assert_eq!(identity(&r), some("", ""));
    // A legacy-session pass: empty.
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &audited), ("Cookie", "session_id=s1")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(identity(&r), some("", ""));
    // A refusal: none at all.
    let r = dev
        .get_with(
            AUTHZ,
            &[("X-User-Id", &enforced), ("Authorization", &no_role)],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(identity(&r), (None, None));

    // Audit and Disabled: every pass answers them, empty without a verified identity.
    dev.write("policy.yaml", &payments_policy("{mode: Audit}", ""));
    eventually("mode Audit", CHANGE_DEADLINE, || async {
        let r = dev.get(AUTHZ).await;
        (r.status() == 200).then_some(())
    })
    .await;
    let r = dev.get_with(AUTHZ, &[("X-Auth-Subject", "admin")]).await;
    assert_eq!(identity(&r), some("", ""));
    dev.write("policy.yaml", &payments_policy("{mode: Disabled}", ""));
    eventually("mode Disabled", CHANGE_DEADLINE, || async {
        let r = dev.get(AUTHZ).await;
        (header(&r, "x-authplane-audit").as_deref() == Some("")).then_some(())
    })
    .await;
    let r = dev.get(AUTHZ).await;
    assert_eq!(r.status(), 200);
    assert_eq!(identity(&r), some("", ""));
    dev.stop().await;
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_header_is_refused_and_others_are_encoded() {
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "",
    )
    .await;
    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            dev.mint(
                ("auth", "web"),
                sub,
                &["payments"],
                json!({"roles": ["payments"], "email": "z@x"}),
            )
        )
    };
    for sub in [
        "carol\r\nX-Injected: yes",
        "nul\u{0}byte",
        "tab\there",
        "del\u{7f}",
    ] {
        let r = dev
            .get_with(
                AUTHZ,
                &[("X-User-Id", &enforced), ("Authorization", &token(sub))],
            )
            .await;
        assert_eq!(r.status(), 401, "{sub:?}");
        assert_eq!(
            header(&r, "x-authplane-reason").as_deref(),
            Some("invalid_claims"),
            "{sub:?}"
        );
        assert!(header(&r, "x-injected").is_none());
        let r = dev
            .get_with(
                AUTHZ,
                &[("X-User-Id", &audited), ("Authorization", &token(sub))],
            )
            .await;
        assert_eq!(r.status(), 200, "{sub:?}");
        assert_eq!(
            header(&r, "x-authplane-audit").as_deref(),
            Some("would-deny; reason=invalid_claims")
        );
        assert_eq!(header(&r, "x-auth-subject").as_deref(), Some(""), "{sub:?}");
        assert_eq!(
            header(&r, "x-auth-email").as_deref(),
            Some(""),
            "no part of a refused identity"
        );
    }
    // Non-ASCII and '%' are percent-encoded (UTF-8); spaces at the ends too.
    for (sub, sent) in [
        ("zoë", "zo%C3%AB"),
        ("100%", "100%25"),
        (" alice", "%20alice"),
        ("Ada Lovelace", "Ada Lovelace"),
    ] {
        let r = dev
            .get_with(
                AUTHZ,
                &[("X-User-Id", &enforced), ("Authorization", &token(sub))],
            )
            .await;
        assert_eq!(r.status(), 200, "{sub:?}");
        let raw = r.headers()["x-auth-subject"].as_bytes();
        assert_eq!(raw, sent.as_bytes(), "{sub:?}");
    }
    let metrics = dev.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"decision="deny",reason="invalid_claims""#));
    dev.stop().await;
}

#[tokio::test]
async fn one_unreadable_byte_hides_no_cookie_and_no_header() {
    let dev = start(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "  legacySession: {cookie: session_id}\n",
    )
    .await;
    let audited = user_in(SALT, 10.0, false);
    let enforced = user_in(SALT, 10.0, true);
    let good = dev.mint(
        ("auth", "web"),
        "bob",
        &["payments"],
        json!({"roles": ["payments"]}),
    );

    // A third-party cookie in Latin-1 beside the legacy session.
    let r = get_raw(
        &dev,
        &[
            ("X-User-Id", audited.as_bytes()),
            ("Cookie", b"_ga=caf\xe9; session_id=1"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("legacy-session; reason=missing_token")
    );
    // Beside the token cookie, in a second Cookie header (as HTTP/2 sends them).
    let token_cookie = format!("access_token={good}");
    let r = get_raw(
        &dev,
        &[
            ("X-User-Id", enforced.as_bytes()),
            ("Cookie", b"_ga=caf\xe9; theme=\xff"),
            ("Cookie", token_cookie.as_bytes()),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-auth-subject").as_deref(), Some("bob"));
    // A bucketing header sent twice, the first copy not text: the second counts, so the
    // enforced user stays enforced.
    let r = get_raw(
        &dev,
        &[
            ("X-User-Id", b"\xe9t\xe9"),
            ("X-User-Id", enforced.as_bytes()),
        ],
    )
    .await;
    assert_eq!(r.status(), 401, "bucketed by the readable copy");
    // A token header whose first copy is not text.
    let bearer = format!("Bearer {good}");
    let r = get_raw(
        &dev,
        &[
            ("X-User-Id", enforced.as_bytes()),
            ("Authorization", b"Bearer caf\xe9"),
            ("Authorization", bearer.as_bytes()),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    dev.stop().await;
}

/// The `LegacySessionsAccepted` condition of `/status`: (status, reason).
async fn legacy_condition(dev: &Dev) -> (String, String) {
    let status = dev.json("/status/shop/payments").await;
    let condition = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "LegacySessionsAccepted")
        .unwrap_or_else(|| panic!("no LegacySessionsAccepted condition in {status}"))
        .clone();
    (
        condition["status"].as_str().unwrap().to_owned(),
        condition["reason"].as_str().unwrap().to_owned(),
    )
}

/// The warnings dev mode's admission webhook gives for `policy` (YAML) as a CREATE.
async fn admission_warnings(dev: &Dev, policy: &str) -> Vec<String> {
    let object: Value = serde_yaml::from_str(policy).unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "authplane.io", "version": "v1alpha1", "kind": "AuthPolicy"},
            "resource": {"group": "authplane.io", "version": "v1alpha1", "resource": "authpolicies"},
            "name": "payments", "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "alice"}, "object": object,
        }
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
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    answer["response"]["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn legacy_sessions_end_on_time_without_a_restart() {
    use authplane::clock::ManualClock;
    use jiff::{SignedDuration, Timestamp};

    let until: Timestamp = "2030-07-01T00:00:00Z".parse().unwrap();
    let days = |n: i64| until - SignedDuration::from_hours(24 * n);
    let clock = std::sync::Arc::new(ManualClock::new(days(10)));
    let ending = payments_policy(
        "{mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}",
        "  legacySession: {cookie: session_id, until: \"2030-07-01T00:00:00Z\"}\n",
    );
    let dev = Dev::start_with(
        &[
            ("keys.yaml", &signing_key("auth", "web", KEYS)),
            ("policy.yaml", &ending),
        ],
        clock.clone(),
        1000,
    )
    .await;
    let audited = user_in(SALT, 10.0, false);
    let session = [("X-User-Id", audited.as_str()), ("Cookie", "session_id=s1")];

    // Ten days before: passes, with the standard deprecation notice.
    let r = dev.get_with(AUTHZ, &session).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-authplane-audit").as_deref(),
        Some("legacy-session; reason=missing_token")
    );
    assert_eq!(
        header(&r, "deprecation"),
        Some(format!("@{}", until.as_second()))
    );
    assert_eq!(
        header(&r, "sunset").as_deref(),
        Some("Mon, 01 Jul 2030 00:00:00 GMT")
    );
    assert_eq!(
        legacy_condition(&dev).await,
        ("True".to_owned(), "SunsetScheduled".to_owned())
    );
    assert_eq!(
        dev.metric(r#"authplane_legacy_session_sunset_timestamp_seconds{namespace="shop",policy="payments"}"#)
            .await,
        until.as_second() as f64
    );
    assert_eq!(
        dev.metric(r#"authplane_decisions_total{namespace="shop",policy="payments",decision="legacy_session",reason="missing_token"}"#)
            .await,
        1.0
    );
    assert!(
        !admission_warnings(&dev, &ending)
            .await
            .iter()
            .any(|w| w.contains("legacySession")),
        "ten days ahead is no warning"
    );

    // Three days before: status and admission say it is near.
    clock.set(days(3));
    assert_eq!(
        legacy_condition(&dev).await,
        ("True".to_owned(), "SunsetSoon".to_owned())
    );
    let warnings = admission_warnings(&dev, &ending).await;
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "spec.legacySession.until: legacy session cookies stop passing at 2030-07-01T00:00:00Z, within 7 days"
        )),
        "{warnings:?}"
    );
    assert_eq!(dev.get_with(AUTHZ, &session).await.status(), 200);

    // At the end: the same request is refused, with no edit and no restart.
    clock.set(until);
    let r = dev.get_with(AUTHZ, &session).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "x-authplane-reason").as_deref(),
        Some("missing_token")
    );
    assert_eq!(header(&r, "deprecation"), None);
    assert_eq!(
        legacy_condition(&dev).await,
        ("False".to_owned(), "SunsetPassed".to_owned())
    );
    let warnings = admission_warnings(&dev, &ending).await;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.legacySession.until: 2030-07-01T00:00:00Z has passed")),
        "{warnings:?}"
    );
    dev.stop().await;
}

/// The identity headers are rendered once per verified token and kept with it in the
/// cache: a token answered from the cache gets the same headers, and a claim that cannot
/// be a header refuses it there too.
#[tokio::test]
async fn a_cached_token_is_answered_the_same_identity_and_the_same_refusal() {
    let dev = start("{mode: Enforce, percentage: 100}", "").await;
    let mint = |sub: &str| {
        format!(
            "Bearer {}",
            dev.mint(
                ("auth", "web"),
                sub,
                &["payments"],
                json!({"roles": ["payments"], "email": "zoë@x"}),
            )
        )
    };
    let good = mint("alice");
    let bad = mint("carol\r\nX-Injected: yes");
    for round in 0..2 {
        let hits = dev.metric("authplane_decision_cache_hits_total").await;
        let r = dev.get_with(AUTHZ, &[("Authorization", &good)]).await;
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(header(&r, "x-auth-subject").as_deref(), Some("alice"));
        assert_eq!(header(&r, "x-auth-email").as_deref(), Some("zo%C3%AB@x"));
        let r = dev.get_with(AUTHZ, &[("Authorization", &bad)]).await;
        assert_eq!(r.status(), 401, "round {round}");
        assert_eq!(
            header(&r, "x-authplane-reason").as_deref(),
            Some("invalid_claims")
        );
        assert!(header(&r, "x-auth-subject").is_none());
        // The first round verified both tokens; the second found both in the cache.
        assert_eq!(
            dev.metric("authplane_decision_cache_hits_total").await,
            hits + if round == 0 { 0.0 } else { 2.0 },
            "round {round}"
        );
    }
    dev.stop().await;
}
