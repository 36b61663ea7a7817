//! How long a token may live under a policy, issuer by issuer. One rule, read by the
//! verification (which tokens pass) and by the Revocations (how long they must last), so
//! that a Revocation can never lapse while a token it names still passes.
//!
//! - A SigningKey's tokens are held to the key's `maxTokenLifetime` under every policy:
//!   `iat` is required and `exp - iat` may not exceed it. A policy accepts longer ones
//!   only by saying so on the issuer (`issuers[].maxTokenLifetime`), and there is no way
//!   to accept them without `iat`: the age of such a token is unknown, so no Revocation
//!   could be sure to outlive it.
//! - An external issuer's tokens are limited by `issuers[].maxTokenLifetime` and the
//!   policy's `maxTokenLifetime`, when set; otherwise any lifetime passes.
//! - The policy's `maxTokenLifetime` only ever shortens.

use jiff::SignedDuration;

use crate::api::{AuthPolicySpec, IssuerRef};

/// The largest `leeway` a policy may have (the CRD's bound): a token passes up to this long
/// after its `exp`, so a Revocation lives this much longer than the tokens it names.
pub const MAX_LEEWAY: SignedDuration = SignedDuration::from_mins(5);

/// The longest `exp - iat` that `policy` accepts from `issuer`; `None`: any, and `iat` is
/// not required. `key_limit` is the SigningKey's `maxTokenLifetime` when `issuer` names
/// one (`None` for an external issuer).
pub fn accepted(
    policy: &AuthPolicySpec,
    issuer: &IssuerRef,
    key_limit: Option<SignedDuration>,
) -> Option<SignedDuration> {
    let own = issuer
        .max_token_lifetime
        .as_ref()
        .map(|d| d.value())
        .or(key_limit);
    let policy = policy.max_token_lifetime.as_ref().map(|d| d.value());
    match (own, policy) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (one, other) => one.or(other),
    }
}

/// The issuer entry's own `maxTokenLifetime`, capped by the policy's: for a SigningKey,
/// the only way a policy accepts tokens longer than the key's limit (when it is longer).
pub fn explicit(policy: &AuthPolicySpec, issuer: &IssuerRef) -> Option<SignedDuration> {
    let explicit = issuer.max_token_lifetime.as_ref()?.value();
    Some(
        policy
            .max_token_lifetime
            .as_ref()
            .map_or(explicit, |p| p.value().min(explicit)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AuthPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn mins(m: i64) -> SignedDuration {
        SignedDuration::from_mins(m)
    }

    #[test]
    fn a_signing_keys_limit_holds_unless_the_issuer_entry_raises_it() {
        let plain = spec("issuers: [{signingKeyRef: {name: web}}]");
        let key = Some(mins(60));
        assert_eq!(accepted(&plain, &plain.issuers[0], key), key);
        // The policy's limit shortens, never lengthens.
        let short = spec("issuers: [{signingKeyRef: {name: web}}]\nmaxTokenLifetime: 10m");
        assert_eq!(accepted(&short, &short.issuers[0], key), Some(mins(10)));
        let long = spec("issuers: [{signingKeyRef: {name: web}}]\nmaxTokenLifetime: 4h");
        assert_eq!(accepted(&long, &long.issuers[0], key), key);
        assert_eq!(explicit(&long, &long.issuers[0]), None);
        // An explicit entry raises it, still capped by the policy's.
        let raised = spec("issuers: [{signingKeyRef: {name: web}, maxTokenLifetime: 8h}]");
        assert_eq!(accepted(&raised, &raised.issuers[0], key), Some(mins(480)));
        assert_eq!(explicit(&raised, &raised.issuers[0]), Some(mins(480)));
        let capped = spec(
            "issuers: [{signingKeyRef: {name: web}, maxTokenLifetime: 8h}]\nmaxTokenLifetime: 2h",
        );
        assert_eq!(explicit(&capped, &capped.issuers[0]), Some(mins(120)));
        let lowered = spec("issuers: [{signingKeyRef: {name: web}, maxTokenLifetime: 5m}]");
        assert_eq!(accepted(&lowered, &lowered.issuers[0], key), Some(mins(5)));
        assert_eq!(explicit(&lowered, &lowered.issuers[0]), Some(mins(5)));
    }

    #[test]
    fn an_external_issuer_is_limited_only_where_a_limit_is_set() {
        let open = spec("issuers: [{issuer: 'https://login.example/v2.0'}]");
        assert_eq!(accepted(&open, &open.issuers[0], None), None);
        let policy =
            spec("issuers: [{issuer: 'https://login.example/v2.0'}]\nmaxTokenLifetime: 90m");
        assert_eq!(accepted(&policy, &policy.issuers[0], None), Some(mins(90)));
        let both = spec(
            "issuers: [{issuer: 'https://login.example/v2.0', maxTokenLifetime: 30m}]\nmaxTokenLifetime: 90m",
        );
        assert_eq!(accepted(&both, &both.issuers[0], None), Some(mins(30)));
    }
}
