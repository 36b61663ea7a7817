//! TokenReview (Kubernetes webhook token authentication): a token checked as under
//! enforcement, then mapped to a Kubernetes user the way the apiserver's own OIDC
//! authenticator maps one, with its safe defaults:
//!
//! - usernames carry their issuer (`https://auth.example/web#alice`) unless the claim is
//!   `email` or the policy turns the prefix off, so no token can be another
//!   authenticator's user;
//! - with the `email` claim, an `email_verified` that is present must be `true`;
//! - groups come from the `groups` claim by default;
//! - no username or group may start with `system:` (Kubernetes' own users and groups,
//!   `system:masters` among them) unless the policy allows it.
//!
//! Only a token that passed every check of the policy (signature, claims, lifetime,
//! Revocations, required claims) is ever `authenticated`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::api::TokenReviewSpec;
use crate::policy::claims::lookup;
use crate::policy::verify::Claims;
use crate::policy::{CompiledPolicy, Rejection};
use crate::revocation::RevocationSet;

/// The prefix of Kubernetes' own users and groups.
const SYSTEM: &str = "system:";

/// `status.user` of an authenticated TokenReview.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// An authenticated review: the user, and the audiences the token is good for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    pub audiences: Vec<String>,
}

/// Why a review is answered `authenticated: false`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token did not pass the policy.
    #[error("{}", .0.description())]
    Token(Rejection),
    #[error("the token has no string {claim} claim for the username")]
    MissingUsername { claim: String },
    #[error("the token's email is not verified (email_verified is not true)")]
    EmailNotVerified,
    #[error("the {claim} claim must be a string or an array of strings")]
    InvalidGroups { claim: String },
    #[error(
        "the {what} {name:?} starts with system:, reserved for Kubernetes' own users and groups"
    )]
    SystemName { what: &'static str, name: String },
    #[error("the token is not for any of the requested audiences")]
    NotForAudiences,
}

impl Refusal {
    /// The metric label: a fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Token(rejection) => rejection.reason(),
            Refusal::MissingUsername { .. } => "missing_username",
            Refusal::EmailNotVerified => "email_not_verified",
            Refusal::InvalidGroups { .. } => Rejection::InvalidClaims.reason(),
            Refusal::SystemName { .. } => "system_name",
            Refusal::NotForAudiences => Rejection::WrongAudience.reason(),
        }
    }
}

/// Reviews `token` under `policy` at `now`. `audiences` are the review's
/// (`spec.audiences`): when there are any, the token must carry one of them.
pub fn review(
    policy: &CompiledPolicy,
    token: &str,
    audiences: &[String],
    now: Timestamp,
    revocations: &RevocationSet,
) -> Result<Authenticated, Refusal> {
    let token = Some(token.trim()).filter(|t| !t.is_empty());
    let (claims, checked) = policy.check(token, now, revocations);
    checked.map_err(Refusal::Token)?;
    // Checked means verified: the claims are there.
    let claims = claims.ok_or(Refusal::Token(Rejection::Malformed))?;
    let audiences = shared_audiences(&claims, audiences)?;
    let user = user(&policy.token_review, &claims)?;
    Ok(Authenticated { user, audiences })
}

/// The audiences of the token that the review asked for (all of them when it asked for
/// none).
fn shared_audiences(claims: &Claims, requested: &[String]) -> Result<Vec<String>, Refusal> {
    let carried: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if requested.is_empty() {
        return Ok(carried.into_iter().map(str::to_owned).collect());
    }
    let shared: Vec<String> = carried
        .into_iter()
        .filter(|a| requested.iter().any(|r| r == a))
        .map(str::to_owned)
        .collect();
    if shared.is_empty() {
        return Err(Refusal::NotForAudiences);
    }
    Ok(shared)
}

/// The Kubernetes user of verified claims.
pub fn user(mapping: &TokenReviewSpec, claims: &Claims) -> Result<User, Refusal> {
    let claim = mapping.username_claim();
    let name = lookup(claims, claim)
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| Refusal::MissingUsername {
            claim: claim.to_owned(),
        })?;
    if claim == "email"
        && claims
            .get("email_verified")
            .is_some_and(|verified| verified != &Value::Bool(true))
    {
        return Err(Refusal::EmailNotVerified);
    }
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let username = format!("{}{name}", mapping.username_prefix(issuer));
    let groups = match mapping.groups_claim() {
        Some(claim) => groups(claims, claim)?,
        None => Vec::new(),
    };
    let prefix = mapping.groups_prefix.as_deref().unwrap_or_default();
    let groups: Vec<String> = groups.into_iter().map(|g| format!("{prefix}{g}")).collect();
    if !mapping.allow_system_names {
        if username.starts_with(SYSTEM) {
            return Err(Refusal::SystemName {
                what: "username",
                name: username,
            });
        }
        if let Some(group) = groups.iter().find(|g| g.starts_with(SYSTEM)) {
            return Err(Refusal::SystemName {
                what: "group",
                name: group.clone(),
            });
        }
    }
    let uid = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_owned();
    Ok(User {
        username,
        uid,
        groups,
        extra: BTreeMap::from([("authplane.io/issuer".to_owned(), vec![issuer.to_owned()])]),
    })
}

/// The groups claim: absent is no group; a string is one; an array must hold strings
/// only (as the apiserver reads it: a claim it cannot read is refused, not half-read).
fn groups(claims: &Claims, claim: &str) -> Result<Vec<String>, Refusal> {
    let invalid = || Refusal::InvalidGroups {
        claim: claim.to_owned(),
    };
    match lookup(claims, claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(group)) => Ok(vec![group.clone()]),
        Some(Value::Array(groups)) => groups
            .iter()
            .map(|g| g.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect(),
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://auth.example/auth/web";

    fn mapping(spec: Value) -> TokenReviewSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn claims(value: Value) -> Claims {
        let mut claims = value.as_object().unwrap().clone();
        claims.entry("iss").or_insert(ISS.into());
        claims
    }

    #[test]
    fn by_default_usernames_carry_their_issuer_and_groups_come_from_groups() {
        let user = user(
            &TokenReviewSpec::default(),
            &claims(json!({"sub": "alice", "groups": ["dev", "ops"]})),
        )
        .unwrap();
        assert_eq!(user.username, format!("{ISS}#alice"));
        assert_eq!(user.uid, "alice");
        assert_eq!(user.groups, ["dev", "ops"]);
        assert_eq!(user.extra["authplane.io/issuer"], [ISS]);
        // A token cannot become a Kubernetes user through the default mapping.
        let user = super::user(
            &TokenReviewSpec::default(),
            &claims(json!({"sub": "system:kube-controller-manager"})),
        )
        .unwrap();
        assert_eq!(
            user.username,
            format!("{ISS}#system:kube-controller-manager")
        );
    }

    #[test]
    fn the_prefix_is_off_with_a_dash_or_an_empty_string_and_for_email() {
        for off in ["-", ""] {
            let user = user(
                &mapping(json!({"usernamePrefix": off})),
                &claims(json!({"sub": "alice"})),
            )
            .unwrap();
            assert_eq!(user.username, "alice", "{off:?}");
        }
        let custom = user(
            &mapping(json!({"usernamePrefix": "oidc:"})),
            &claims(json!({"sub": "alice"})),
        )
        .unwrap();
        assert_eq!(custom.username, "oidc:alice");
        let email = mapping(json!({"usernameClaim": "email"}));
        let verified = user(
            &email,
            &claims(json!({"sub": "a", "email": "a@example.com", "email_verified": true})),
        )
        .unwrap();
        assert_eq!(verified.username, "a@example.com");
        assert!(
            user(
                &email,
                &claims(json!({"sub": "a", "email": "a@example.com"}))
            )
            .is_ok()
        );
        for unverified in [json!(false), json!("true"), json!(1)] {
            assert_eq!(
                user(
                    &email,
                    &claims(
                        json!({"sub": "a", "email": "a@example.com", "email_verified": unverified})
                    )
                ),
                Err(Refusal::EmailNotVerified)
            );
        }
    }

    #[test]
    fn system_names_are_refused_unless_allowed() {
        let bare = mapping(json!({"usernamePrefix": "-"}));
        let refused = user(
            &bare,
            &claims(json!({"sub": "system:kube-controller-manager"})),
        );
        assert_eq!(
            refused,
            Err(Refusal::SystemName {
                what: "username",
                name: "system:kube-controller-manager".into()
            })
        );
        let masters = claims(json!({"sub": "alice", "groups": ["dev", "system:masters"]}));
        assert_eq!(
            user(&TokenReviewSpec::default(), &masters),
            Err(Refusal::SystemName {
                what: "group",
                name: "system:masters".into()
            })
        );
        // A group prefix keeps them apart; allowSystemNames lets them through.
        let prefixed = user(&mapping(json!({"groupsPrefix": "authplane:"})), &masters).unwrap();
        assert_eq!(
            prefixed.groups,
            ["authplane:dev", "authplane:system:masters"]
        );
        let allowed = user(
            &mapping(json!({"usernamePrefix": "-", "allowSystemNames": true})),
            &masters,
        )
        .unwrap();
        assert_eq!(allowed.groups, ["dev", "system:masters"]);
    }

    #[test]
    fn groups_are_a_string_or_strings_and_can_be_turned_off() {
        let default = TokenReviewSpec::default();
        let one = user(&default, &claims(json!({"sub": "a", "groups": "dev"}))).unwrap();
        assert_eq!(one.groups, ["dev"]);
        assert!(
            user(&default, &claims(json!({"sub": "a"})))
                .unwrap()
                .groups
                .is_empty()
        );
        for bad in [json!(["dev", 7]), json!({"a": 1}), json!(true)] {
            assert_eq!(
                user(&default, &claims(json!({"sub": "a", "groups": bad}))),
                Err(Refusal::InvalidGroups {
                    claim: "groups".into()
                })
            );
        }
        let off = mapping(json!({"groupsClaim": ""}));
        let none = user(
            &off,
            &claims(json!({"sub": "a", "groups": ["system:masters"]})),
        )
        .unwrap();
        assert!(none.groups.is_empty());
        let roles = mapping(json!({"groupsClaim": "realm_access.roles"}));
        let nested = user(
            &roles,
            &claims(json!({"sub": "a", "realm_access": {"roles": ["admin"]}})),
        )
        .unwrap();
        assert_eq!(nested.groups, ["admin"]);
    }

    #[test]
    fn a_missing_username_is_refused() {
        assert_eq!(
            user(&TokenReviewSpec::default(), &claims(json!({"sub": ""}))),
            Err(Refusal::MissingUsername {
                claim: "sub".into()
            })
        );
    }
}
