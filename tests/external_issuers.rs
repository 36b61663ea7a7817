//! External OIDC issuers against a provider on loopback: discovery, rotation at the
//! provider, outage, garbage, slow answers, kid floods, staleness, and the verified-token
//! cache following the provider's key set.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use authplane::clock::ManualClock;
use common::provider::{Behaviour, Provider};
use common::{CHANGE_DEADLINE, Dev, eventually};
use serde_json::Value;

const FAST: &str = "{minInterval: 1s, maxInterval: 1h, maxStale: 1h}";

async fn authz(dev: &Dev, token: &str) -> (u16, String) {
    let response = dev
        .get_with(
            "/authz/shop/api",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    let reason = response
        .headers()
        .get("x-authplane-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), reason)
}

fn condition(status: &Value, kind: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn discovered_keys_verify_and_a_rotation_at_the_provider_is_picked_up() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let first = provider.key(0);
    // The first request may wait for the first fetch; it never fails for lack of one.
    assert_eq!(
        authz(&dev, &provider.token(&first, "alice")).await,
        (200, String::new())
    );

    let second = provider.add_key();
    let token = provider.token(&second, "bob");
    // An unknown kid refetches at once (at most once per minInterval, 1 s here).
    eventually("the provider's new key", CHANGE_DEADLINE, || async {
        (authz(&dev, &token).await.0 == 200).then_some(())
    })
    .await;
    assert!(provider.fetches() <= 4, "{} fetches", provider.fetches());

    let status = dev.json("/status/shop/api").await;
    assert_eq!(condition(&status, "Ready").0, "True");
    assert_eq!(condition(&status, "KeysFresh").0, "True");
    let issuer = provider.issuer();
    let fetched = dev
        .metric(&format!(
            "authplane_jwks_fetches_total{{issuer=\"{issuer}\",result=\"ok\"}}"
        ))
        .await;
    assert!(fetched >= 2.0, "{fetched}");
    dev.stop().await;
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let provider = Provider::start().await;
    provider.claim_issuer("https://evil.example/tenant-1/v2.0");
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let token = provider.token(&provider.key(0), "alice");
    assert_eq!(
        authz(&dev, &token).await,
        (401, "issuer_unavailable".into())
    );
    let status = dev.json("/status/shop/api").await;
    let (ready, message) = condition(&status, "Ready");
    assert_eq!(ready, "False");
    assert!(message.contains("not the configured"), "{message}");
    assert_eq!(
        provider.fetches(),
        0,
        "no JWKS fetched from an untrusted document"
    );
    dev.stop().await;
}

#[tokio::test]
async fn outages_and_garbage_keep_the_last_good_keys() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let good = provider.token(&provider.key(0), "alice");
    assert_eq!(authz(&dev, &good).await.0, 200);

    for behaviour in [Behaviour::Down, Behaviour::Garbage] {
        provider.set(behaviour);
        let before = provider.fetches();
        // A token with an unknown kid makes authplane fetch again (rate-limited).
        let stranger = provider.token(
            &authplane::keys::KeyMaterial::generate(authplane::keys::Algorithm::RS256, 2048)
                .unwrap(),
            "mallory",
        );
        eventually("a failed refetch", CHANGE_DEADLINE, || async {
            assert_eq!(authz(&dev, &stranger).await.0, 401);
            (provider.fetches() > before).then_some(())
        })
        .await;
        let status = eventually("the failure in status", CHANGE_DEADLINE, || async {
            let status = dev.json("/status/shop/api").await;
            (condition(&status, "KeysFresh").0 == "False").then_some(status)
        })
        .await;
        let (_, message) = condition(&status, "KeysFresh");
        assert!(
            message.contains("last good keys serve until"),
            "{behaviour:?}: {message}"
        );
        assert_eq!(condition(&status, "Ready").0, "True", "{behaviour:?}");
        assert_eq!(
            authz(&dev, &good).await,
            (200, String::new()),
            "{behaviour:?}"
        );
    }
    let errors = dev
        .metric(&format!(
            "authplane_jwks_fetches_total{{issuer=\"{}\",result=\"error\"}}",
            provider.issuer()
        ))
        .await;
    assert!(errors >= 2.0, "{errors}");

    provider.set(Behaviour::Normal);
    let fresh = provider.add_key();
    let token = provider.token(&fresh, "bob");
    eventually("recovery", CHANGE_DEADLINE, || async {
        (authz(&dev, &token).await.0 == 200).then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn a_slow_provider_does_not_hold_up_known_tokens() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let good = provider.token(&provider.key(0), "alice");
    assert_eq!(authz(&dev, &good).await.0, 200);

    provider.set(Behaviour::Slow(Duration::from_secs(30)));
    let stranger = provider.token(&provider.add_key(), "bob");
    tokio::time::sleep(Duration::from_millis(1100)).await; // past minInterval: a refetch is allowed
    let started = Instant::now();
    let dev = Arc::new(dev);
    let waiting = {
        let dev = dev.clone();
        tokio::spawn(async move { authz(&dev, &stranger).await })
    };
    // While that request waits for the slow fetch, known tokens are answered at once.
    eventually("the refetch to start", CHANGE_DEADLINE, || async {
        (provider.fetches() >= 2).then_some(())
    })
    .await;
    let quick = Instant::now();
    assert_eq!(authz(&dev, &good).await.0, 200);
    assert!(
        quick.elapsed() < Duration::from_secs(1),
        "{:?}",
        quick.elapsed()
    );
    // The waiting request gives up after the fetch timeout, refused, not hung.
    let (status, reason) = waiting.await.unwrap();
    assert_eq!((status, reason.as_str()), (401, "unknown_kid"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_flood_the_provider() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[(
        "api.yaml",
        &provider.policy("{minInterval: 1m, maxInterval: 1h, maxStale: 1h}"),
    )])
    .await;
    let signer = provider.key(0);
    assert_eq!(authz(&dev, &provider.token(&signer, "alice")).await.0, 200);
    let before = provider.fetches();
    let dev = Arc::new(dev);
    let mut requests = Vec::new();
    for i in 0..300 {
        let dev = dev.clone();
        let claims = serde_json::json!({"iss": provider.issuer(), "sub": "x", "aud": "api", "exp": jiff::Timestamp::now().as_second() + 60});
        let token = provider.sign(&signer, &format!("random-kid-{i}"), &claims);
        requests.push(tokio::spawn(async move { authz(&dev, &token).await }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), (401, "unknown_kid".into()));
    }
    assert!(
        provider.fetches() - before <= 1,
        "{} fetches for 300 unknown kids",
        provider.fetches() - before
    );
}

#[tokio::test]
async fn the_last_good_keys_serve_no_longer_than_max_stale() {
    let provider = Provider::start().await;
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let dev = Dev::start_with(
        &[(
            "api.yaml",
            &provider.policy("{minInterval: 1s, maxInterval: 1h, maxStale: 2h}"),
        )],
        clock.clone(),
        0,
    )
    .await;
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({"iss": provider.issuer(), "sub": "alice", "aud": "api", "exp": now + 86_400});
    let key = provider.key(0);
    let good = provider.sign(&key, key.kid(), &claims);
    assert_eq!(authz(&dev, &good).await.0, 200);
    provider.set(Behaviour::Down);
    clock.advance(jiff::SignedDuration::from_mins(119));
    assert_eq!(authz(&dev, &good).await.0, 200, "within maxStale");
    clock.advance(jiff::SignedDuration::from_mins(2));
    let (status, reason) = authz(&dev, &good).await;
    assert_eq!((status, reason.as_str()), (401, "issuer_unavailable"));
    let status = dev.json("/status/shop/api").await;
    assert_eq!(condition(&status, "Ready").0, "False");
}

#[tokio::test]
async fn cached_tokens_follow_the_provider_key_set() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let old = provider.token(&provider.key(0), "alice");
    assert_eq!(authz(&dev, &old).await.0, 200);
    let hits = dev.metric("authplane_decision_cache_hits_total").await;
    assert_eq!(authz(&dev, &old).await.0, 200);
    assert_eq!(
        dev.metric("authplane_decision_cache_hits_total").await,
        hits + 1.0
    );

    // The provider retires the key; once authplane has the new set, the cached token is
    // refused like any other token of a key that left the JWKS.
    let new = provider.add_key();
    provider.drop_oldest_key();
    let token = provider.token(&new, "bob");
    eventually("the new key set", CHANGE_DEADLINE, || async {
        (authz(&dev, &token).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(authz(&dev, &old).await, (401, "unknown_kid".into()));
}

#[tokio::test]
async fn token_review_accepts_a_key_the_provider_just_rotated_in() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let review = |token: String| {
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["api"]},
        })
    };
    let ask = |body: Value| {
        let dev = &dev;
        async move {
            let response = dev
                .http
                .post(dev.url("/tokenreview/shop/api"))
                .json(&body)
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    let first = ask(review(provider.token(&provider.key(0), "alice"))).await;
    assert_eq!(first["status"]["authenticated"], true, "{first}");
    // The apiserver's default: a username other than an email carries its issuer.
    assert_eq!(
        first["status"]["user"]["username"],
        format!("{}#alice", provider.issuer())
    );

    let token = provider.token(&provider.add_key(), "bob");
    eventually(
        "the rotated key on TokenReview",
        CHANGE_DEADLINE,
        || async {
            let answer = ask(review(token.clone())).await;
            (answer["status"]["authenticated"] == true).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn issuers_sharing_keys_each_verify_their_own_tokens() {
    // Entra ID's v1 and v2 issuers (and its tenants) publish the same keys.
    let provider = Provider::start().await;
    let v1 = format!("{}/tenant-1/", provider.base);
    let manifest = format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  issuers:\n  - issuer: {}\n    refresh: {FAST}\n  - issuer: {v1}\n    jwksUri: {}/common/discovery/v2.0/keys\n    refresh: {FAST}\n\
         \x20 audiences: [api]\n  rollout: {{mode: Enforce, percentage: 100}}\n",
        provider.issuer(),
        provider.base
    );
    let dev = Dev::start(&[("api.yaml", &manifest)]).await;
    let key = provider.key(0);
    let now = jiff::Timestamp::now().as_second();
    for issuer in [provider.issuer(), v1.clone()] {
        let claims =
            serde_json::json!({"iss": issuer, "sub": "alice", "aud": "api", "exp": now + 600});
        let token = provider.sign(&key, key.kid(), &claims);
        assert_eq!(authz(&dev, &token).await, (200, String::new()), "{issuer}");
    }
    let claims = serde_json::json!({"iss": "https://other.example/", "sub": "x", "aud": "api", "exp": now + 600});
    let foreign = provider.sign(&key, key.kid(), &claims);
    assert_eq!(authz(&dev, &foreign).await, (401, "wrong_issuer".into()));
    dev.stop().await;
}

#[tokio::test]
async fn editing_the_refresh_settings_keeps_the_keys_while_the_provider_is_down() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let good = provider.token(&provider.key(0), "alice");
    assert_eq!(authz(&dev, &good).await.0, 200);
    provider.set(Behaviour::Down);
    dev.write(
        "api.yaml",
        &provider.policy("{minInterval: 2s, maxInterval: 2h, maxStale: 2h}"),
    );
    // The edit is in force once a fetch with the new settings has failed.
    eventually(
        "a fetch under the new settings",
        CHANGE_DEADLINE,
        || async {
            let status = dev.json("/status/shop/api").await;
            (condition(&status, "KeysFresh").0 == "False").then_some(())
        },
    )
    .await;
    assert_eq!(authz(&dev, &good).await, (200, String::new()));
    dev.stop().await;
}

/// Whether `message` says `what`: a phrase anywhere, a word as a whole word (the
/// nanoseconds of a timestamp in the message may hold the digits of a status code).
fn mentions(message: &str, what: &str) -> bool {
    if what.contains(' ') {
        message.contains(what)
    } else {
        message
            .split(|c: char| !c.is_alphanumeric())
            .any(|word| word == what)
    }
}

/// What a policy's owner reads in status about a failing provider: the class of the
/// failure, never what the provider (perhaps an internal service) answered.
#[tokio::test]
async fn status_says_why_a_fetch_failed_without_repeating_the_answer() {
    let provider = Provider::start().await;
    let dev = Dev::start(&[("api.yaml", &provider.policy(FAST))]).await;
    let good = provider.token(&provider.key(0), "alice");
    assert_eq!(authz(&dev, &good).await.0, 200);
    let stranger = || {
        provider.token(
            &authplane::keys::KeyMaterial::generate(authplane::keys::Algorithm::RS256, 2048)
                .unwrap(),
            "mallory",
        )
    };
    for (behaviour, says, never) in [
        (Behaviour::Down, "HTTP error: a 5xx server error", "503"),
        (Behaviour::Garbage, "not a JWKS", "expected value"),
    ] {
        provider.set(behaviour);
        let token = stranger();
        let message = eventually("the failure in status", CHANGE_DEADLINE, || async {
            authz(&dev, &token).await;
            let status = dev.json("/status/shop/api").await;
            let (fresh, message) = condition(&status, "KeysFresh");
            (fresh == "False" && message.contains(says)).then_some(message)
        })
        .await;
        assert!(!mentions(&message, never), "{behaviour:?}: {message}");
        assert!(!message.contains("maintenance"), "{behaviour:?}: {message}");
    }
    dev.stop().await;

    // Nothing listens: the connection is refused, and status says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let manifest = format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  issuers:\n  - issuer: http://127.0.0.1:{port}/t\n    jwksUri: http://127.0.0.1:{port}/keys\n    refresh: {FAST}\n\
         \x20 audiences: [api]\n  rollout: {{mode: Enforce, percentage: 100}}\n"
    );
    let dev = Dev::start(&[("api.yaml", &manifest)]).await;
    let message = eventually("the failure in status", CHANGE_DEADLINE, || async {
        let status = dev.json("/status/shop/api").await;
        let (ready, message) = condition(&status, "Ready");
        (ready == "False" && !message.contains("pending")).then_some(message)
    })
    .await;
    assert!(
        message.contains("unreachable: connection refused"),
        "{message}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_namespace_over_its_external_issuer_cap_gets_no_more_fetched() {
    let first = Provider::start().await;
    let second = Provider::start().await;
    let mut serving = common::test_settings();
    serving.fetch.max_per_namespace = 1;
    let policy = |name: &str, provider: &Provider| {
        provider
            .policy(FAST)
            .replace("name: api,", &format!("name: {name},"))
    };
    // Without creation times (dev mode), the order is by name: "a-first" came first.
    let dev = Dev::start_serving(
        &[
            ("a.yaml", &policy("a-first", &first)),
            ("b.yaml", &policy("b-second", &second)),
        ],
        serving,
    )
    .await;
    let status = eventually("the first issuer fetched", CHANGE_DEADLINE, || async {
        let status = dev.json("/status/shop/a-first").await;
        (condition(&status, "KeysFresh").0 == "True").then_some(status)
    })
    .await;
    assert_eq!(condition(&status, "Ready").0, "True");
    let status = dev.json("/status/shop/b-second").await;
    let (ready, message) = condition(&status, "Ready");
    assert_eq!(ready, "False");
    assert!(
        message.contains("more than 1 external issuers"),
        "{message}"
    );
    assert_eq!(second.fetches(), 0, "the refused issuer is never fetched");
    let token = second.token(&second.key(0), "bob");
    let response = dev
        .get_with(
            "/authz/shop/b-second",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(response.status(), 401);
    // Room is made: the second policy is served.
    std::fs::remove_file(dev.manifests().join("a.yaml")).unwrap();
    // KeysFresh, not Ready: Ready can turn True a moment before the fetch is counted.
    eventually("the second issuer fetched", CHANGE_DEADLINE, || async {
        let status = dev.json("/status/shop/b-second").await;
        (condition(&status, "Ready").0 == "True" && condition(&status, "KeysFresh").0 == "True")
            .then_some(())
    })
    .await;
    assert!(second.fetches() > 0);
    dev.stop().await;
}
