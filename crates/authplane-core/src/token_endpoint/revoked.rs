//! Whether the Revocations in force end a refresh-token family.
//!
//! A family's access tokens carry its `sid`, its subject's `sub` and, after each rotation,
//! a fresh `iat`: a Revocation of the subject up to an instant would stop the tokens issued
//! before it at every gateway, and the next refresh would mint one that passes. So the
//! token endpoint asks, before each refresh and each login, whether a token of the family
//! as issued at login (`iat` = the family's start) would be refused, and if so ends the
//! family.

use jiff::Timestamp;

use crate::api::ObjectKey;
use crate::refresh::Family;
use crate::revocation::{RevocationSet, TokenFacts};

/// Whether a Revocation in force matches `family`, whose access tokens `key` signs.
///
/// Only the Revocations that apply under the key's own namespace count (those of that
/// namespace, wherever they name the key): a Revocation another namespace writes for this
/// key applies to that namespace's AuthPolicies only, and must not end another team's
/// sessions. A `tokenId` Revocation names one access token, not the session: it does not
/// end the family.
pub fn family_revoked(
    revocations: &RevocationSet,
    key: &ObjectKey,
    family: &Family,
    now: Timestamp,
) -> bool {
    let facts = TokenFacts {
        iss: &family.issuer,
        key: Some(key),
        jti: None,
        sub: Some(&family.subject),
        sid: Some(&family.id),
        iat: Some(family.started_at.as_second()),
    };
    revocations.is_revoked(&key.namespace, &facts, now.as_second())
}
