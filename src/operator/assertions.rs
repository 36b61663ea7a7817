//! Client assertions on a cluster: a workload's projected ServiceAccount token, checked by
//! the apiserver with a `TokenReview` (authentication.k8s.io/v1) whose `spec.audiences`
//! is the issuer URL. The apiserver is the judge (it knows the signing keys, whether the
//! pod and the ServiceAccount still exist, and the token's bound objects); authplane only
//! reads its answer, and reads it strictly:
//!
//! - `status.authenticated` must be `true`;
//! - `status.audiences` must contain the issuer URL: an apiserver that ignores
//!   `spec.audiences` answers with none, and that is a refusal, never a pass;
//! - the user must be a ServiceAccount (`system:serviceaccount:NAMESPACE:NAME`): a
//!   person's token, a node's or an anonymous one names no workload.
//!
//! The assertion is never logged, and never put into an error.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::api::ObjectKey;
use crate::tokens::client_auth::{AssertionError, AssertionReviewer};

/// How long the apiserver has to answer one review: the client waits meanwhile, and gets
/// 503 with `Retry-After` after it.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest assertion sent to the apiserver. A projected token is about 1 KiB; the
/// apiserver's own limit is far higher, and nothing longer is worth a round trip.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Reviews client assertions with the apiserver `client` talks to.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    timeout: Duration,
}

impl TokenReviewer {
    pub fn new(client: Client) -> Self {
        TokenReviewer {
            client,
            timeout: REVIEW_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn ask(&self, assertion: &str, audience: &str) -> Result<ObjectKey, AssertionError> {
        check_shape(assertion)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(assertion.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api = Api::<TokenReview>::all(self.client.clone());
        let answer =
            match tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
            {
                Err(_) => {
                    return Err(AssertionError::Unavailable(format!(
                        "no answer to the TokenReview within {}s",
                        self.timeout.as_secs_f64()
                    )));
                }
                Ok(Err(e)) => return Err(AssertionError::Unavailable(describe(&e))),
                Ok(Ok(answer)) => answer,
            };
        judge(answer, audience)
    }
}

impl AssertionReviewer for TokenReviewer {
    fn review<'a>(
        &'a self,
        assertion: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ObjectKey, AssertionError>> {
        self.ask(assertion, audience).boxed()
    }
}

/// Cheap local checks before a round trip: bounded, and three base64url segments (a JWS
/// in compact form). The apiserver checks everything else.
fn check_shape(assertion: &str) -> Result<(), AssertionError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::Refused(format!(
            "the client assertion is longer than {MAX_ASSERTION_BYTES} bytes"
        )));
    }
    let segments: Vec<&str> = assertion.split('.').collect();
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if segments.len() != 3 || !segments.iter().all(|s| base64url(s)) {
        return Err(AssertionError::Refused(
            "the client assertion is not a JWT (three base64url segments)".into(),
        ));
    }
    Ok(())
}

/// Reads the apiserver's answer: the ServiceAccount, or why not.
fn judge(answer: TokenReview, audience: &str) -> Result<ObjectKey, AssertionError> {
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        // The apiserver's error says why (expired, pod deleted, ...); it never contains
        // the token.
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(AssertionError::Refused(format!(
            "the apiserver did not authenticate the client assertion{why}"
        )));
    }
    let audiences = status.audiences.unwrap_or_default();
    if audiences.is_empty() {
        return Err(AssertionError::Refused(format!(
            "the apiserver did not confirm the client assertion's audience (it answered with no audiences); the token must be requested for {audience}"
        )));
    }
    if !audiences.iter().any(|a| a == audience) {
        return Err(AssertionError::Refused(format!(
            "the client assertion is not for this issuer: its audience must be {audience}"
        )));
    }
    let username = status
        .user
        .and_then(|user| user.username)
        .unwrap_or_default();
    service_account(&username).ok_or_else(|| {
        AssertionError::Refused(format!(
            "the client assertion authenticates {username:?}, not a ServiceAccount"
        ))
    })
}

/// `system:serviceaccount:NAMESPACE:NAME` → `NAMESPACE/NAME`.
fn service_account(username: &str) -> Option<ObjectKey> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(name)).then(|| ObjectKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// An API error in words, with the likely fix for missing RBAC.
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{error}: authplane's ServiceAccount needs `create` on tokenreviews.authentication.k8s.io (the chart's ClusterRole grants it)"
        ),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_service_account_name_is_one() {
        let sa = service_account("system:serviceaccount:shop:login").unwrap();
        assert_eq!((sa.namespace.as_str(), sa.name.as_str()), ("shop", "login"));
        for not_one in [
            "system:serviceaccount:shop",
            "system:serviceaccount::login",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:login:extra",
            "system:node:worker-1",
            "alice",
            "",
        ] {
            assert!(service_account(not_one).is_none(), "{not_one}");
        }
    }

    #[test]
    fn shapes_that_are_not_a_jwt_never_reach_the_apiserver() {
        assert!(check_shape("a.b.c").is_ok());
        for bad in ["", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a.b.c d"] {
            assert!(
                matches!(check_shape(bad), Err(AssertionError::Refused(_))),
                "{bad:?}"
            );
        }
        let long = format!("a.{}.c", "b".repeat(MAX_ASSERTION_BYTES));
        assert!(matches!(
            check_shape(&long),
            Err(AssertionError::Refused(_))
        ));
    }
}
