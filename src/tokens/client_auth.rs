//! How a trusted workload proves which ServiceAccount it runs as, on a cluster: its
//! projected ServiceAccount token, presented as an RFC 7523 §2.2 client assertion and
//! checked by the apiserver (a TokenReview with `spec.audiences` set to the issuer URL;
//! `status.audiences` must contain it, so a token for another audience, or of a deleted
//! pod or ServiceAccount, is refused). In dev mode there is no apiserver: clients use a
//! secret kept in the state folder instead, and no reviewer is configured.

use futures::future::BoxFuture;

use crate::api::ObjectKey;

/// Why an assertion did not authenticate a ServiceAccount.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// The apiserver said no (or said yes for another audience, or for a user that is not
    /// a ServiceAccount): the client gets `invalid_client`.
    #[error("{0}")]
    Refused(String),
    /// The apiserver could not be asked: the client gets 503 with `Retry-After`.
    #[error("the apiserver could not review the client assertion: {0}")]
    Unavailable(String),
}

/// Checks a client assertion. The answer names the ServiceAccount (`namespace/name`) the
/// token was issued to; the token endpoint then checks that the TokenClient lists it.
pub trait AssertionReviewer: Send + Sync + 'static {
    /// `assertion`: the JWT as sent (never logged); `audience`: the issuer URL the token
    /// must have been requested for.
    fn review<'a>(
        &'a self,
        assertion: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ObjectKey, AssertionError>>;
}
