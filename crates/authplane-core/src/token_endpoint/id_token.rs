//! An external issuer's ID token as the user of a login (RFC 8693 `subject_token_type`
//! `urn:ietf:params:oauth:token-type:id_token`): the app signed the user in at Entra ID
//! (or Google, Keycloak ...) and exchanges the ID token it got for authplane's tokens.
//!
//! Verified exactly as an AuthPolicy verifies its external issuers: the same
//! [`Verifier`] (the key's own algorithm only, asymmetric only, no `none`, `jku`/`x5u`/
//! embedded `jwk` ignored, `crit` refused, size bounded; `exp`, `nbf`, `iat`, `iss` and
//! `aud` checked with the policies' default leeway) against the same fetched key sets
//! ([`RemoteIssuer`]: one fetch per issuer configuration, shared with policies that name
//! the same one).

use std::sync::Arc;

use jiff::Timestamp;

use super::claims::MAX_SUBJECT_CHARS;
use super::{ErrorCode, OAuthError};
use crate::api::IdTokenIssuer;
use crate::policy::Rejection;
use crate::policy::remote::{ExternalConfig, Health, RemoteIssuer, RemoteIssuers};
use crate::policy::verify::{Verifier, unverified_claim};

/// Clock skew tolerated on an ID token's `exp`, `nbf` and `iat`: an AuthPolicy's
/// default `leeway`.
pub const LEEWAY_SECS: i64 = 30;

/// The claim of an access token that names the issuer of the ID token its login
/// exchanged.
pub const IDP_CLAIM: &str = "idp";

/// One accepted issuer, ready to verify.
struct Entry {
    config: ExternalConfig,
    audiences: Vec<String>,
    subject_prefix: String,
    verifier: Verifier,
}

/// The ID-token issuers of one TokenClient.
#[derive(Default)]
pub struct IdTokenIssuers {
    entries: Vec<Entry>,
}

/// Who an ID token says the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTokenSubject {
    /// The access token's `sub`: the entry's `subjectPrefix` and the ID token's `sub`.
    pub subject: String,
    /// The ID token's issuer (`iss`), for the access token's `idp`.
    pub issuer: String,
}

/// Why an ID token gives no login.
#[derive(Debug, PartialEq, Eq)]
pub enum IdTokenError {
    /// The client's error to answer.
    Refused(OAuthError),
    /// No key of the issuer has the token's kid (its keys may have rotated), or the
    /// issuer has no usable keys (its first fetch may still be running): fetch again
    /// ([`IdTokenIssuers::refetch`]) and verify again, once. [`IdTokenError::refusal`]
    /// says what to answer if that changes nothing.
    Refetch(Rejection),
}

impl IdTokenError {
    /// The answer to a [`IdTokenError::Refetch`] that a refetch did not help.
    pub fn refusal(self, issuer_hint: &str, client: &str) -> OAuthError {
        match self {
            IdTokenError::Refused(error) => error,
            IdTokenError::Refetch(Rejection::IssuerUnavailable) => OAuthError::new(
                ErrorCode::InvalidGrant,
                format!(
                    "no usable keys of the ID token's issuer {issuer_hint}: TokenClient {client}'s status says why"
                ),
            ),
            IdTokenError::Refetch(rejection) => OAuthError::new(
                ErrorCode::InvalidGrant,
                format!(
                    "the ID token is refused ({}): {}",
                    rejection.reason(),
                    rejection.description()
                ),
            ),
        }
    }
}

impl From<OAuthError> for IdTokenError {
    fn from(error: OAuthError) -> Self {
        IdTokenError::Refused(error)
    }
}

fn invalid_grant(description: String) -> IdTokenError {
    IdTokenError::Refused(OAuthError::new(ErrorCode::InvalidGrant, description))
}

impl IdTokenIssuers {
    /// The entries of a TokenClient, their key sets from `external`.
    pub fn new(entries: &[IdTokenIssuer], external: &dyn RemoteIssuers) -> Self {
        let entries = entries
            .iter()
            .map(|entry| {
                let config = ExternalConfig::of(
                    &entry.issuer,
                    entry.jwks_uri.as_deref(),
                    entry.refresh.as_ref(),
                );
                let mut verifier = Verifier::new(entry.audiences.clone(), LEEWAY_SECS);
                verifier.add_external(external.get(&config), None);
                Entry {
                    config,
                    audiences: entry.audiences.clone(),
                    subject_prefix: entry.subject_prefix.clone().unwrap_or_default(),
                    verifier,
                }
            })
            .collect();
        Self { entries }
    }

    /// The configurations fetched: what the per-namespace cap counts.
    pub fn configs(entries: &[IdTokenIssuer]) -> impl Iterator<Item = ExternalConfig> + '_ {
        entries.iter().map(|entry| {
            ExternalConfig::of(
                &entry.issuer,
                entry.jwks_uri.as_deref(),
                entry.refresh.as_ref(),
            )
        })
    }

    /// The user an ID token names, if it verifies. `client` names the TokenClient in
    /// errors.
    pub fn verify(
        &self,
        token: &str,
        now: Timestamp,
        client: &str,
    ) -> Result<IdTokenSubject, IdTokenError> {
        if self.entries.is_empty() {
            return Err(OAuthError::invalid_request(format!(
                "TokenClient {client} accepts no ID tokens: list their issuer in its spec.idTokenIssuers"
            ))
            .into());
        }
        // The token names its issuer; only that entry's keys and audiences apply. Read
        // unverified only to choose: the signature and `iss` are checked against it.
        let named = unverified_claim(token, "iss");
        let Some(entry) = self
            .entries
            .iter()
            .find(|entry| Some(&entry.config.issuer) == named.as_ref())
        else {
            return Err(match named {
                None => invalid_grant(format!(
                    "the subject_token is not an ID token ({})",
                    Rejection::Malformed.description()
                )),
                Some(_) => invalid_grant(format!(
                    "the ID token's issuer is not one of TokenClient {client}'s idTokenIssuers"
                )),
            });
        };
        let verified = match entry.verifier.verify(token, now) {
            Ok(verified) => verified,
            Err(rejection @ (Rejection::UnknownKid | Rejection::IssuerUnavailable)) => {
                return Err(IdTokenError::Refetch(rejection));
            }
            Err(rejection) => {
                return Err(invalid_grant(format!(
                    "the ID token is refused ({}): {}",
                    rejection.reason(),
                    rejection.description()
                )));
            }
        };
        // OpenID Connect Core 3.1.3.7: `azp`, when present, is the client the token was
        // issued to, and must be this app. An access token that another app requested
        // for this app's API carries this app as `aud` and the other app as `azp`: it is
        // not a login of this app's user.
        // The presenter must be the audience this token was verified for (one of the
        // token's own `aud` values that the entry lists), not merely any audience of the
        // entry: with audiences [spa, api], an access token the SPA requested for the API
        // (aud api, azp spa) is not a login. Entra ID's v1 access tokens name the
        // requesting app `appid` instead of `azp`.
        let token_audiences: Vec<&str> = match verified.claims.get("aud") {
            Some(serde_json::Value::String(aud)) => vec![aud.as_str()],
            Some(serde_json::Value::Array(auds)) => {
                auds.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        };
        let this_app = |presenter: &serde_json::Value| {
            presenter.as_str().is_some_and(|presenter| {
                token_audiences.contains(&presenter)
                    && entry.audiences.iter().any(|audience| audience == presenter)
            })
        };
        if ["azp", "appid"]
            .iter()
            .filter_map(|claim| verified.claims.get(*claim))
            .any(|presenter| !this_app(presenter))
        {
            return Err(invalid_grant(
                "the ID token was issued to another client (azp): not this app's login".to_owned(),
            ));
        }
        let sub = match verified.claims.get("sub").and_then(|sub| sub.as_str()) {
            Some(sub) if !sub.is_empty() => sub,
            _ => {
                return Err(invalid_grant(
                    "the ID token has no subject (sub)".to_owned(),
                ));
            }
        };
        let subject = format!("{}{sub}", entry.subject_prefix);
        if subject.chars().count() > MAX_SUBJECT_CHARS || subject.chars().any(char::is_control) {
            return Err(invalid_grant(format!(
                "the ID token's subject (sub), with its prefix, must be at most {MAX_SUBJECT_CHARS} characters without control characters"
            )));
        }
        Ok(IdTokenSubject {
            subject,
            issuer: entry.config.issuer.clone(),
        })
    }

    /// After [`IdTokenError::Refetch`]: fetches the named issuer's keys again
    /// (rate-limited per issuer, as for policies) and waits for it; then verify again.
    pub async fn refetch(&self, token: &str) {
        let named = unverified_claim(token, "iss");
        if let Some(entry) = self
            .entries
            .iter()
            .find(|entry| Some(&entry.config.issuer) == named.as_ref())
        {
            for issuer in entry.verifier.external() {
                issuer.refetch_for_unknown_kid().await;
            }
        }
    }

    /// The issuers without usable keys, each with the class of its failure (never a
    /// response body): what the client's `Ready` condition reports.
    pub fn unavailable(&self, now: Timestamp) -> Vec<String> {
        self.remote()
            .filter_map(|issuer| match issuer.health(now) {
                Health::Unavailable { error } => {
                    Some(format!("{}: {error}", issuer.config().issuer))
                }
                _ => None,
            })
            .collect()
    }

    fn remote(&self) -> impl Iterator<Item = &Arc<dyn RemoteIssuer>> {
        self.entries
            .iter()
            .flat_map(|entry| entry.verifier.external())
    }
}

impl std::fmt::Debug for IdTokenIssuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| &entry.config.issuer))
            .finish()
    }
}

/// Two compiled forms are the same when they verify the same: the same issuers, key
/// sets and audiences, the same prefixes.
impl PartialEq for IdTokenIssuers {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.config == b.config
                    && a.audiences == b.audiences
                    && a.subject_prefix == b.subject_prefix
            })
    }
}
