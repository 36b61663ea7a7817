//! The RFC 6750 `WWW-Authenticate` challenges of one policy, rendered once when the policy
//! is compiled: a refusal then costs no formatting and no allocation, so that a flood of
//! forged tokens costs the server no more than its users do.

use http::HeaderValue;

use super::Rejection;

/// One challenge per [`Rejection`], indexed by its discriminant.
pub struct Challenges([Option<HeaderValue>; Rejection::ALL.len()]);

impl Challenges {
    /// The challenges of the policy `realm` (its `namespace/name`). A realm that cannot be
    /// a header value (never for Kubernetes names) gets no challenge rather than a broken one.
    pub fn new(realm: &str) -> Self {
        Self(Rejection::ALL.map(|rejection| HeaderValue::from_str(&render(realm, rejection)).ok()))
    }

    pub fn get(&self, rejection: Rejection) -> Option<&HeaderValue> {
        self.0[rejection as usize].as_ref()
    }
}

/// 401 `invalid_token` (no error code when no token was sent), 403 `insufficient_scope`.
fn render(realm: &str, rejection: Rejection) -> String {
    match rejection {
        Rejection::MissingToken => format!("Bearer realm=\"{realm}\""),
        Rejection::InsufficientScope => format!(
            "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\"",
            rejection.description()
        ),
        _ => format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
            rejection.description()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_has_its_own_challenge() {
        let challenges = Challenges::new("shop/payments");
        for rejection in Rejection::ALL {
            let challenge = challenges.get(rejection).unwrap().to_str().unwrap();
            assert_eq!(challenge, render("shop/payments", rejection));
            assert!(challenge.starts_with("Bearer realm=\"shop/payments\""));
        }
        assert_eq!(
            challenges.get(Rejection::MissingToken).unwrap(),
            "Bearer realm=\"shop/payments\""
        );
        assert_eq!(
            challenges.get(Rejection::BadSignature).unwrap(),
            "Bearer realm=\"shop/payments\", error=\"invalid_token\", error_description=\"the token's signature is invalid\""
        );
    }
}
