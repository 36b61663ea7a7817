//! Client assertions reviewed by the apiserver (a TokenReview), against kube-rs's mock
//! service: the exact request, and each kind of answer a real apiserver gives.

mod common;

use std::time::Duration;

use authplane::api::ObjectKey;
use authplane::operator::assertions::TokenReviewer;
use authplane::tokens::client_auth::{AssertionError, AssertionReviewer};
use serde_json::{Value, json};

use common::mock_api::{self, take, within};

const ISSUER: &str = "https://auth.example/auth/web";
/// Shaped like a projected token; only the apiserver could tell whether it is one.
const ASSERTION: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiaHR0cHM6Ly9hdXRoLmV4YW1wbGUifQ.c2lnbmF0dXJl";
const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn answer(status: Value) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": ASSERTION, "audiences": [ISSUER]},
        "status": status,
    })
}

/// Reviews `ASSERTION` for `ISSUER`; the apiserver answers the one request it gets with
/// `status`. Returns the result and the request's body.
async fn review_answered(status: u16, body: Value) -> (Result<ObjectKey, AssertionError>, Value) {
    let (client, mut handle) = mock_api::client();
    let reviewer = TokenReviewer::new(client);
    let apiserver = tokio::spawn(async move {
        let taken = take(&mut handle, "POST", PATH).await;
        let request = taken.body.clone();
        taken.answer(status, &body);
        // Nothing else is asked before the reviewer is dropped.
        assert!(within(handle.next_request()).await.is_none());
        request
    });
    let result = within(reviewer.review(ASSERTION, ISSUER)).await;
    drop(reviewer);
    (result, apiserver.await.unwrap())
}

fn refused(result: Result<ObjectKey, AssertionError>) -> String {
    match result {
        Err(AssertionError::Refused(why)) => {
            assert!(!why.contains(ASSERTION), "never the assertion: {why}");
            why
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_account_token_for_the_issuer_names_its_service_account() {
    let (result, request) = review_answered(
        201,
        answer(json!({
            "authenticated": true,
            "audiences": [ISSUER],
            "user": {"username": "system:serviceaccount:shop:login", "uid": "u-1",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
                     "extra": {"authentication.kubernetes.io/pod-name": ["login-7d9f"]}},
        })),
    )
    .await;
    assert_eq!(
        result.unwrap(),
        ObjectKey {
            namespace: "shop".into(),
            name: "login".into()
        }
    );
    assert_eq!(request["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(request["kind"], "TokenReview");
    assert_eq!(
        request["spec"],
        json!({"token": ASSERTION, "audiences": [ISSUER]}),
        "the issuer URL is the audience the apiserver checks"
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let (result, _) = review_answered(
        201,
        answer(json!({
            "authenticated": true,
            "audiences": ["https://kubernetes.default.svc"],
            "user": {"username": "system:serviceaccount:shop:login"},
        })),
    )
    .await;
    let why = refused(result);
    assert!(why.contains("not for this issuer"), "{why}");
    assert!(why.contains(ISSUER), "{why}");
}

#[tokio::test]
async fn an_answer_without_audiences_is_refused() {
    // An apiserver (or an authenticator webhook) that ignores spec.audiences.
    let (result, _) = review_answered(
        201,
        answer(json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:shop:login"},
        })),
    )
    .await;
    let why = refused(result);
    assert!(why.contains("no audiences"), "{why}");
}

#[tokio::test]
async fn a_user_that_is_not_a_service_account_is_refused() {
    for username in [
        "alice@example.com",
        "system:node:worker-1",
        "system:anonymous",
    ] {
        let (result, _) = review_answered(
            201,
            answer(json!({
                "authenticated": true,
                "audiences": [ISSUER],
                "user": {"username": username, "groups": ["system:authenticated"]},
            })),
        )
        .await;
        let why = refused(result);
        assert!(why.contains("not a ServiceAccount"), "{why}");
    }
}

#[tokio::test]
async fn the_token_of_a_deleted_pod_is_refused_with_the_apiservers_reason() {
    let (result, _) = review_answered(
        201,
        answer(json!({
            "authenticated": false,
            "audiences": [ISSUER],
            "user": {},
            "error": "[invalid bearer token, pod \"login-7d9f\" not found]",
        })),
    )
    .await;
    let why = refused(result);
    assert!(why.contains("did not authenticate"), "{why}");
    assert!(why.contains("not found"), "{why}");
}

#[tokio::test]
async fn an_apiserver_error_is_unavailable_not_a_refusal() {
    let forbidden = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403,
        "reason": "Forbidden",
        "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:authplane:authplane\" cannot create resource \"tokenreviews\"",
    });
    let (result, _) = review_answered(403, forbidden).await;
    match result {
        Err(AssertionError::Unavailable(why)) => {
            assert!(why.contains("tokenreviews"), "{why}");
            assert!(!why.contains(ASSERTION));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let overloaded = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 503,
        "reason": "ServiceUnavailable", "message": "etcdserver: leader changed",
    });
    let (result, _) = review_answered(503, overloaded).await;
    assert!(
        matches!(result, Err(AssertionError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_apiserver_that_does_not_answer_is_unavailable_after_the_timeout() {
    let (client, mut handle) = mock_api::client();
    let reviewer = TokenReviewer::new(client).with_timeout(Duration::from_millis(200));
    let apiserver = tokio::spawn(async move {
        // Taken, never answered until the reviewer has given up.
        let taken = take(&mut handle, "POST", PATH).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(taken);
    });
    let result = within(reviewer.review(ASSERTION, ISSUER)).await;
    match result {
        Err(AssertionError::Unavailable(why)) => assert!(why.contains("within"), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    apiserver.abort();
}

#[tokio::test]
async fn what_is_not_a_jwt_is_refused_without_asking() {
    let (client, mut handle) = mock_api::client();
    let reviewer = TokenReviewer::new(client);
    for bad in ["", "not-a-jwt", "a.b", "a.b.c.d", "a.b.c d"] {
        assert!(matches!(
            within(reviewer.review(bad, ISSUER)).await,
            Err(AssertionError::Refused(_))
        ));
    }
    let huge = format!("a.{}.c", "b".repeat(64 * 1024));
    assert!(matches!(
        within(reviewer.review(&huge, ISSUER)).await,
        Err(AssertionError::Refused(_))
    ));
    drop(reviewer);
    assert!(handle.next_request().await.is_none(), "no request was made");
}
