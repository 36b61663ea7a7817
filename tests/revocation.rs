//! Revocations and bounded token lifetimes, over HTTP in dev mode: Revocation manifests
//! (by jti, by subject, by session), the logout endpoint, cached tokens, lapsed
//! revocations and how long a Revocation lives, scope, token lifetimes (`maxTokenLifetime`,
//! `missing_iat`, `iat_in_future`), TokenReview.

mod common;

use std::time::{Duration, Instant};

use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use serde_json::{Value, json};

const KEYS: &str = "  algorithm: ES256\n  maxTokenLifetime: 15m\n";
const WEB: (&str, &str) = ("auth", "web");

fn policy(namespace: &str, name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]
  audiences: [pay]
  rollout: {{mode: Enforce, percentage: 100}}
{extra}"#
    )
}

fn revocation(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

async fn start(extra: &[(&str, &str)]) -> Dev {
    let mut manifests = vec![
        ("keys.yaml".to_owned(), signing_key("auth", "web", KEYS)),
        ("shop.yaml".to_owned(), policy("shop", "pay", "")),
        ("billing.yaml".to_owned(), policy("billing", "pay", "")),
    ];
    for (name, text) in extra {
        manifests.push((name.to_string(), text.to_string()));
    }
    let refs: Vec<(&str, &str)> = manifests
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    Dev::start(&refs).await
}

/// Claims of a token of auth/web for `sub`, issued `age` seconds ago, living 5 minutes.
fn claims(dev: &Dev, sub: &str, age: i64, extra: Value) -> Value {
    let mut claims = dev.claims(WEB, sub, "pay");
    let now = jiff::Timestamp::now().as_second();
    claims["iat"] = json!(now - age);
    claims["nbf"] = json!(now - age);
    claims["exp"] = json!(now - age + 300);
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// Status and reason of `/authz/{namespace}/pay` for a token.
async fn decide(dev: &Dev, namespace: &str, token: &str) -> (u16, String) {
    let response = dev
        .get_with(
            &format!("/authz/{namespace}/pay"),
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

/// Waits until `token` is refused as revoked under `namespace`; returns how long it took.
async fn until_revoked(dev: &Dev, namespace: &str, token: &str) -> Duration {
    let start = Instant::now();
    eventually("the token refused as revoked", CHANGE_DEADLINE, || async {
        (decide(dev, namespace, token).await == (401, "token_revoked".to_owned())).then_some(())
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn revocations_by_token_id_subject_and_session() {
    let dev = start(&[]).await;
    let one = dev.sign(WEB, &claims(&dev, "carol", 0, json!({"jti": "j-1"})));
    let other = dev.sign(WEB, &claims(&dev, "carol", 0, json!({"jti": "j-2"})));
    let alice_old = dev.sign(WEB, &claims(&dev, "alice", 120, json!({"jti": "a-1"})));
    let alice_new = dev.sign(WEB, &claims(&dev, "alice", 0, json!({"jti": "a-2"})));
    let phone = dev.sign(WEB, &claims(&dev, "bob", 0, json!({"sid": "phone"})));
    let laptop = dev.sign(WEB, &claims(&dev, "bob", 0, json!({"sid": "laptop"})));
    for token in [&one, &other, &alice_old, &alice_new, &phone, &laptop] {
        assert_eq!(decide(&dev, "shop", token).await.0, 200);
    }

    // One token, by jti.
    dev.write(
        "rev-jti.yaml",
        &revocation(
            "auth",
            "stolen",
            "  signingKeyRef: {name: web}\n  tokenId: j-1\n  reason: compromised\n",
        ),
    );
    let took = until_revoked(&dev, "shop", &one).await;
    eprintln!("dev mode: a Revocation manifest was enforced {took:?} after it was written");
    let response = dev
        .get_with(
            "/authz/shop/pay",
            &[("Authorization", &format!("Bearer {one}"))],
        )
        .await;
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(
        decide(&dev, "shop", &other).await.0,
        200,
        "another jti passes"
    );

    // A subject, up to an instant: a token minted after it works again.
    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    dev.write(
        "rev-sub.yaml",
        &revocation(
            "auth",
            "payment-failed",
            &format!("  signingKeyRef: {{name: web, namespace: auth}}\n  subject: alice\n  issuedBefore: \"{before}\"\n  reason: payment_failed\n"),
        ),
    );
    until_revoked(&dev, "shop", &alice_old).await;
    assert_eq!(decide(&dev, "shop", &alice_new).await.0, 200);

    // A session.
    dev.write(
        "rev-sid.yaml",
        &revocation(
            "auth",
            "logout-phone",
            "  signingKeyRef: {name: web}\n  sessionId: phone\n",
        ),
    );
    until_revoked(&dev, "shop", &phone).await;
    assert_eq!(decide(&dev, "shop", &laptop).await.0, 200);

    // The metrics: entries in force, decisions by reason, propagation observed.
    assert_eq!(
        dev.metric("authplane_revocations{namespace=\"auth\",issuer=\"auth/web\"}")
            .await,
        3.0
    );
    assert!(
        dev.metric("authplane_decisions_total{namespace=\"shop\",policy=\"pay\",decision=\"deny\",reason=\"token_revoked\"}")
            .await
            >= 3.0
    );
    assert_eq!(
        dev.metric("authplane_revocations_applied_total{reason=\"payment_failed\"}")
            .await,
        1.0
    );

    // Deleting the manifest lifts the revocation.
    std::fs::remove_file(dev.manifests().join("rev-jti.yaml")).unwrap();
    eventually("the token accepted again", CHANGE_DEADLINE, || async {
        (decide(&dev, "shop", &one).await.0 == 200).then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn a_cached_token_is_refused_right_after_its_revocation_and_token_review_agrees() {
    let dev = start(&[]).await;
    let token = dev.sign(WEB, &claims(&dev, "dave", 0, json!({"jti": "cached-1"})));
    assert_eq!(decide(&dev, "shop", &token).await.0, 200);
    let hits = dev.metric("authplane_decision_cache_hits_total").await;
    assert_eq!(decide(&dev, "shop", &token).await.0, 200);
    assert_eq!(
        dev.metric("authplane_decision_cache_hits_total").await,
        hits + 1.0,
        "the second decision is a cache hit"
    );
    // A Revocation of another token empties no cache: the next decision is a hit.
    let other = dev.sign(WEB, &claims(&dev, "dave", 0, json!({"jti": "cached-2"})));
    dev.write(
        "rev-other.yaml",
        &revocation(
            "auth",
            "other",
            "  signingKeyRef: {name: web}\n  tokenId: cached-2\n",
        ),
    );
    until_revoked(&dev, "shop", &other).await;
    let hits = dev.metric("authplane_decision_cache_hits_total").await;
    assert_eq!(decide(&dev, "shop", &token).await.0, 200);
    assert_eq!(
        dev.metric("authplane_decision_cache_hits_total").await,
        hits + 1.0,
        "still cached after an unrelated Revocation"
    );
    dev.write(
        "rev.yaml",
        &revocation(
            "auth",
            "cached",
            "  signingKeyRef: {name: web}\n  tokenId: cached-1\n",
        ),
    );
    until_revoked(&dev, "shop", &token).await;
    assert!(
        dev.metric("authplane_decision_cache_hits_total").await > hits + 1.0,
        "refused on a cache hit"
    );
    let review = dev
        .http
        .post(dev.url("/tokenreview/shop/pay"))
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(review["status"]["authenticated"], false, "{review}");
    assert_eq!(review["status"]["error"], "the token has been revoked");
    dev.stop().await;
}

#[tokio::test]
async fn scope_is_the_namespace_of_the_revocation() {
    let dev = start(&[]).await;
    let erin = dev.sign(WEB, &claims(&dev, "erin", 10, json!({})));
    // A team's own namespace: its policies only, even naming a key elsewhere.
    dev.write(
        "billing-rev.yaml",
        &revocation(
            "billing",
            "cut-off",
            "  signingKeyRef: {name: web, namespace: auth}\n  subject: erin\n",
        ),
    );
    until_revoked(&dev, "billing", &erin).await;
    assert_eq!(
        decide(&dev, "shop", &erin).await.0,
        200,
        "a Revocation in billing does not touch shop's policy"
    );
    // The key's own namespace: everywhere.
    dev.write(
        "auth-rev.yaml",
        &revocation(
            "auth",
            "everywhere",
            "  signingKeyRef: {name: web}\n  subject: erin\n",
        ),
    );
    until_revoked(&dev, "shop", &erin).await;
    dev.stop().await;
}

/// A policy that trusts two SigningKeys carrying one issuer (a partner's key set to the
/// same `iss`, published elsewhere or let in while the webhook was down): a Revocation
/// of one of them still applies to its tokens, whichever the policy lists first.
#[tokio::test]
async fn another_key_with_the_same_issuer_does_not_shadow_a_keys_revocations() {
    let dev = start(&[]).await;
    let issuer = format!("{}/auth/web", dev.external_url());
    dev.write(
        "partner.yaml",
        &signing_key("partner", "x", &format!("{KEYS}  issuer: {issuer}\n")),
    );
    dev.write(
        "trusting.yaml",
        &policy("trusting", "pay", "").replace(
            "issuers: [{signingKeyRef: {name: web, namespace: auth}}]",
            "issuers: [{signingKeyRef: {name: x, namespace: partner}}, {signingKeyRef: {name: web, namespace: auth}}]",
        ),
    );
    // Both keys verify under the policy.
    eventually("the policy Ready", CHANGE_DEADLINE, || async {
        let response = dev.get("/status/trusting/pay").await;
        if response.status() != 200 {
            return None;
        }
        let status: Value = response.json().await.ok()?;
        status["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
    eventually("both keys trusted", CHANGE_DEADLINE, || async {
        let theirs = dev.sign(("partner", "x"), &claims(&dev, "zed", 10, json!({})));
        let ours = dev.sign(WEB, &claims(&dev, "zed", 10, json!({})));
        (decide(&dev, "trusting", &theirs).await.0 == 200
            && decide(&dev, "trusting", &ours).await.0 == 200)
            .then_some(())
    })
    .await;
    let erin = dev.sign(WEB, &claims(&dev, "erin", 10, json!({})));
    dev.write(
        "auth-rev.yaml",
        &revocation(
            "auth",
            "everywhere",
            "  signingKeyRef: {name: web}\n  subject: erin\n",
        ),
    );
    until_revoked(&dev, "shop", &erin).await;
    assert_eq!(
        decide(&dev, "trusting", &erin).await,
        (401, "token_revoked".to_owned()),
        "revoked under every policy, whatever other key carries the same issuer"
    );
    dev.stop().await;
}

#[tokio::test]
async fn lapsed_revocations_stop_counting_once_their_tokens_cannot_pass() {
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(30);
    let lapsed = revocation(
        "auth",
        "old",
        &format!("  signingKeyRef: {{name: web}}\n  subject: frank\n  issuedBefore: \"{past}\"\n"),
    );
    let dev = start(&[("old.yaml", &lapsed)]).await;
    // The revocation lapsed 15 minutes (the key's token lifetime) plus 5 (the largest
    // leeway) after issuedBefore. A token it would match that still claims to be valid
    // must have lived longer than the key allows: refused for that, whatever the policy.
    let mut old = claims(&dev, "frank", 0, json!({}));
    old["iat"] = json!(past.as_second() - 10);
    let token = dev.sign(WEB, &old);
    assert_eq!(
        decide(&dev, "shop", &token).await,
        (401, "token_lifetime_too_long".to_owned())
    );
    assert_eq!(
        dev.metric("authplane_revocations{namespace=\"auth\",issuer=\"auth/web\"}")
            .await,
        0.0
    );
    let objects = authplane::cli::revocations::from_manifests(&dev.manifests()).unwrap();
    let rows = authplane::cli::revocations::rows(&objects, jiff::Timestamp::now());
    assert_eq!(rows.len(), 1);
    assert!(rows[0].lapsed, "{rows:?}");
    assert_eq!(
        rows[0].expires,
        jiff::Timestamp::from_second(past.as_second() + 20 * 60)
            .unwrap()
            .to_string(),
        "with 15-minute tokens, a revocation lives 15 minutes and the largest leeway"
    );
    dev.stop().await;
}

/// A policy that accepts longer tokens of the key keeps the key's Revocations as long:
/// a revoked 3-hour token is refused there for its whole life, and refused elsewhere as
/// too long.
#[tokio::test]
async fn a_revocation_lives_as_long_as_a_policy_accepts_its_tokens() {
    let legacy = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: pay, namespace: legacy}\n\
         spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}, maxTokenLifetime: 3h}]\n\
         \x20 audiences: [pay]\n  rollout: {mode: Enforce, percentage: 100}\n";
    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(30);
    let revoked = revocation(
        "auth",
        "password-changed",
        &format!("  signingKeyRef: {{name: web}}\n  subject: gina\n  issuedBefore: \"{before}\"\n"),
    );
    let dev = start(&[("legacy.yaml", legacy), ("rev.yaml", &revoked)]).await;
    // Issued 40 minutes ago for 3 hours: before issuedBefore, alive for 2h20m more.
    let mut three_hours = claims(&dev, "gina", 40 * 60, json!({}));
    three_hours["exp"] = json!(jiff::Timestamp::now().as_second() - 40 * 60 + 3 * 3600);
    let token = dev.sign(WEB, &three_hours);
    assert_eq!(
        decide(&dev, "legacy", &token).await,
        (401, "token_revoked".to_owned())
    );
    assert_eq!(
        decide(&dev, "shop", &token).await,
        (401, "token_lifetime_too_long".to_owned())
    );
    // A newer one of the same length passes the policy that accepts it.
    let mut fresh = claims(&dev, "gina", 0, json!({}));
    fresh["exp"] = json!(jiff::Timestamp::now().as_second() + 3 * 3600);
    assert_eq!(decide(&dev, "legacy", &dev.sign(WEB, &fresh)).await.0, 200);
    let objects = authplane::cli::revocations::from_manifests(&dev.manifests()).unwrap();
    let rows = authplane::cli::revocations::rows(&objects, jiff::Timestamp::now());
    assert_eq!(
        rows[0].expires,
        jiff::Timestamp::from_second(before.as_second() + 3 * 3600 + 5 * 60)
            .unwrap()
            .to_string()
    );
    dev.stop().await;
}

#[tokio::test]
async fn lifetimes_iat_and_the_future() {
    let bounded = policy("shop", "bounded", "  maxTokenLifetime: 10m\n");
    let dev = start(&[("bounded.yaml", &bounded)]).await;
    let now = jiff::Timestamp::now().as_second();
    let short = dev.sign(WEB, &claims(&dev, "g", 0, json!({})));
    let mut twelve_minutes = claims(&dev, "g", 0, json!({}));
    twelve_minutes["exp"] = json!(now + 12 * 60);
    let twelve_minutes = dev.sign(WEB, &twelve_minutes);
    let mut long = claims(&dev, "g", 0, json!({}));
    long["exp"] = json!(now + 20 * 60);
    let long = dev.sign(WEB, &long);
    let mut no_iat = claims(&dev, "g", 0, json!({}));
    no_iat.as_object_mut().unwrap().remove("iat");
    let no_iat = dev.sign(WEB, &no_iat);
    let decide_bounded = |token: String| {
        let dev = &dev;
        async move {
            let response = dev
                .get_with(
                    "/authz/shop/bounded",
                    &[("Authorization", &format!("Bearer {token}"))],
                )
                .await;
            (
                response.status().as_u16(),
                response
                    .headers()
                    .get("x-authplane-reason")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            )
        }
    };
    assert_eq!(decide_bounded(short).await.0, 200);
    assert_eq!(
        decide_bounded(twelve_minutes.clone()).await,
        (401, "token_lifetime_too_long".to_owned())
    );
    assert_eq!(
        decide_bounded(no_iat.clone()).await,
        (401, "missing_iat".to_owned())
    );
    // A policy without maxTokenLifetime still holds the key's tokens to the key's own
    // limit (15m) and wants their iat.
    assert_eq!(decide(&dev, "shop", &twelve_minutes).await.0, 200);
    assert_eq!(
        decide(&dev, "shop", &long).await,
        (401, "token_lifetime_too_long".to_owned())
    );
    assert_eq!(
        decide(&dev, "shop", &no_iat).await,
        (401, "missing_iat".to_owned())
    );
    // A later iat does not make a token newer than a Revocation by subject.
    let mut future = claims(&dev, "g", 0, json!({}));
    future["iat"] = json!(now + 3000);
    let future = dev.sign(WEB, &future);
    assert_eq!(
        decide(&dev, "shop", &future).await,
        (401, "iat_in_future".to_owned())
    );
    dev.stop().await;
}

async fn post_revoke(dev: &Dev, form: &[(&str, &str)]) -> reqwest::Response {
    dev.http
        .post(dev.url("/auth/web/revoke"))
        .form(form)
        .send()
        .await
        .unwrap()
}

fn revocation_files(dev: &Dev) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dev.manifests())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("revocation-"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_logout_endpoint_revokes_is_idempotent_says_nothing_and_is_rate_limited() {
    let dev = start(&[]).await;
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["revocation_endpoint"],
        format!("{}/auth/web/revoke", dev.external_url())
    );
    let token = dev.sign(WEB, &claims(&dev, "henry", 0, json!({"jti": "logout-1"})));
    let sibling = dev.sign(
        WEB,
        &claims(
            &dev,
            "henry",
            0,
            json!({"jti": "logout-2", "sid": "tablet"}),
        ),
    );
    let same_session = dev.sign(
        WEB,
        &claims(
            &dev,
            "henry",
            0,
            json!({"jti": "logout-3", "sid": "tablet"}),
        ),
    );
    assert_eq!(decide(&dev, "shop", &token).await.0, 200);

    // 1: the holder logs out; once answered, the token is refused here at once.
    let started = Instant::now();
    let response = post_revoke(&dev, &[("token", &token)]).await;
    assert_eq!(response.status(), 200);
    eprintln!(
        "dev mode: /revoke answered, in force, {:?} after the request",
        started.elapsed()
    );
    assert_eq!(
        decide(&dev, "shop", &token).await,
        (401, "token_revoked".to_owned())
    );
    assert_eq!(
        decide(&dev, "shop", &sibling).await.0,
        200,
        "only that token"
    );
    let files = revocation_files(&dev);
    assert_eq!(files.len(), 1, "{files:?}");

    // 2: again: the same object, nothing new.
    assert_eq!(post_revoke(&dev, &[("token", &token)]).await.status(), 200);
    // 3, 4: an invalid and a foreign token: the same answer, nothing written.
    let forged = common::tamper(&sibling);
    let response = post_revoke(&dev, &[("token", &forged)]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "");
    assert_eq!(
        post_revoke(&dev, &[("token", "not-a-token")])
            .await
            .status(),
        200
    );
    assert_eq!(revocation_files(&dev), files);
    assert_eq!(decide(&dev, "shop", &sibling).await.0, 200);

    // 5: a session: every token of it, in force when answered.
    assert_eq!(
        post_revoke(&dev, &[("token", &sibling), ("token_type_hint", "session")])
            .await
            .status(),
        200
    );
    for token in [&same_session, &sibling] {
        assert_eq!(
            decide(&dev, "shop", token).await,
            (401, "token_revoked".to_owned())
        );
    }

    // 6: no token is a bad request.
    assert_eq!(
        post_revoke(&dev, &[("nothing", "here")]).await.status(),
        400
    );
    // Failures (3 so far) have a budget of 10 a minute per client address, one back every
    // 6 seconds: the 11th within the minute is refused (a slow machine may have earned a
    // few more meanwhile).
    let mut failed = 3;
    let limited = loop {
        let response = post_revoke(&dev, &[("token", "x")]).await;
        failed += 1;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
        let earned = started.elapsed().as_secs() / 6 + 1;
        assert!(failed <= 10 + earned, "{failed} failed requests passed");
    };
    assert!(failed > 10, "refused after {failed} failed requests");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        dev.metric("authplane_revoke_requests_total{result=\"rate_limited\"}")
            .await,
        1.0
    );
    // The garbage spent its sender's budget, not the next user's logout from the same
    // address.
    let next_user = dev.sign(WEB, &claims(&dev, "iris", 0, json!({"jti": "iris-1"})));
    assert_eq!(
        post_revoke(&dev, &[("token", &next_user)]).await.status(),
        200
    );
    assert_eq!(
        decide(&dev, "shop", &next_user).await,
        (401, "token_revoked".to_owned())
    );
    // GET is not a revocation.
    assert_eq!(dev.get("/auth/web/revoke").await.status(), 405);
    dev.stop().await;
}

#[tokio::test]
async fn a_valid_token_that_cannot_be_revoked_is_refused_not_acknowledged() {
    let dev = start(&[]).await;
    let unsupported = |body: &Value| {
        assert_eq!(body["error"], "unsupported_token_type", "{body}");
    };
    // No jti and no sid: nothing a Revocation can name.
    let bare = dev.sign(WEB, &claims(&dev, "kim", 0, json!({})));
    let response = post_revoke(&dev, &[("token", &bare)]).await;
    assert_eq!(response.status(), 400);
    unsupported(&response.json().await.unwrap());
    // A jti too long for a Revocation, and no sid.
    let long = "j".repeat(300);
    let long_jti = dev.sign(WEB, &claims(&dev, "kim", 0, json!({"jti": long})));
    let response = post_revoke(&dev, &[("token", &long_jti)]).await;
    assert_eq!(response.status(), 400);
    unsupported(&response.json().await.unwrap());
    assert!(revocation_files(&dev).is_empty());
    for token in [&bare, &long_jti] {
        assert_eq!(
            decide(&dev, "shop", token).await.0,
            200,
            "not revoked, and not said to be"
        );
    }
    // With a session it carries, the session is revoked instead.
    let with_sid = dev.sign(
        WEB,
        &claims(
            &dev,
            "kim",
            0,
            json!({"jti": "k".repeat(300), "sid": "kim-laptop"}),
        ),
    );
    assert_eq!(
        post_revoke(&dev, &[("token", &with_sid)]).await.status(),
        200
    );
    assert_eq!(
        decide(&dev, "shop", &with_sid).await,
        (401, "token_revoked".to_owned())
    );
    assert_eq!(
        dev.metric("authplane_revoke_requests_total{result=\"unsupported\"}")
            .await,
        2.0
    );
    dev.stop().await;
}

#[tokio::test]
async fn verified_logouts_are_limited_per_subject_not_per_address() {
    let dev = start(&[]).await;
    let started = Instant::now();
    let mut revoked = 0;
    let limited = loop {
        let token = dev.sign(
            WEB,
            &claims(&dev, "ivan", 0, json!({"jti": format!("ivan-{revoked}")})),
        );
        let response = post_revoke(&dev, &[("token", &token)]).await;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
        revoked += 1;
        let earned = started.elapsed().as_secs() / 6 + 1;
        assert!(
            revoked <= 10 + earned,
            "{revoked} logouts of one subject passed"
        );
    };
    assert!(revoked >= 10, "limited after {revoked}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    // Another subject, from the same address, is not held up.
    let judy = dev.sign(WEB, &claims(&dev, "judy", 0, json!({"jti": "judy-1"})));
    assert_eq!(post_revoke(&dev, &[("token", &judy)]).await.status(), 200);
    dev.stop().await;
}

#[tokio::test]
async fn behind_trusted_proxies_each_client_has_its_own_budget_of_failures() {
    let mut serving = common::test_settings();
    serving.trusted_proxies = authplane::server::client_address::TrustedProxies::Hops(1);
    let manifests = [
        ("keys.yaml", signing_key("auth", "web", KEYS)),
        ("shop.yaml", policy("shop", "pay", "")),
    ];
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dev = Dev::start_serving(&refs, serving).await;
    let garbage = |client: &'static str| {
        let request = dev
            .http
            .post(dev.url("/auth/web/revoke"))
            // The first entry is the client's own invention; the ingress appended the last.
            .header("x-forwarded-for", format!("198.51.100.7, {client}"))
            .form(&[("token", "x")]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut answers = Vec::new();
    for _ in 0..11 {
        answers.push(garbage("192.0.2.1").await);
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    // Another client behind the same ingress (the same peer address) is unaffected.
    assert_eq!(garbage("192.0.2.2").await, 200);
    dev.stop().await;
}
