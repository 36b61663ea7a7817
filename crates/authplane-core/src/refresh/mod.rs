//! Refresh-token families, as pure data: one family per login (its id is the session's
//! `sid`), one generation current at a time, rotated on every use.
//!
//! The rules (issue 23; RFC 9700 §2.2.2 and §4.14.2, FAPI 2.0's idempotent retry):
//! - a login starts a family at generation 0 with an absolute expiry that no rotation
//!   ever extends, and an idle lifetime counted from the latest rotation;
//! - presenting the current token rotates: generation + 1, a new refresh token and a new
//!   access-token id, the presented token superseded;
//! - presenting the *immediately preceding* token within the grace after that rotation
//!   (a lost response, two tabs) answers with the same new pair again, never a token of an
//!   older generation and never a new one, so a retry is idempotent;
//! - presenting any other superseded token (older, or the preceding one after the grace)
//!   is reuse: the family is revoked and its session is to be revoked everywhere;
//! - a revoked or expired family, or a token of another client, is refused and changes
//!   nothing.
//!
//! Refresh tokens are opaque and high-entropy; only their SHA-256 is stored. The token of
//! generation n+1 is an HMAC keyed with the token of generation n over a random nonce kept
//! in the family: whoever retries with the preceding token can be given the same new
//! token again although the store holds no token, while the store alone (without a
//! token) yields nothing to replay, and a stolen old token alone (without the store)
//! cannot be rolled forward.
//!
//! Nothing here reads a clock or a random generator: time is an argument, randomness comes
//! through [`Entropy`]. The store (in the runtime) looks a presented token up by its hash,
//! finds the family and the generation it was issued for, calls [`refresh`], and writes
//! the result with a compare-and-set on the family's generation; a writer that loses the
//! race reads again and then finds itself within the grace (see `tests.rs`).

#[cfg(test)]
mod tests;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys::lifecycle::add;

/// What every refresh token starts with, so that secret scanners (and people) recognise
/// one in a log or a paste.
pub const TOKEN_PREFIX: &str = "aprt_";
/// Random bytes behind a refresh token: 256 bits, beyond any guessing.
const SECRET_BYTES: usize = 32;
/// The length of a well-formed refresh token: the prefix and 32 bytes in base64url.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;
/// Random bytes behind a family id (the `sid`) and an access-token id (`jti`).
const ID_BYTES: usize = 16;
/// Separates this derivation from any other use of the same key.
const DERIVATION_LABEL: &[u8] = b"authplane refresh token v1\0";

/// Where randomness comes from: the system generator in the runtime, a counter in tests.
pub trait Entropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable>;
}

#[derive(Debug, thiserror::Error)]
#[error("the system's random generator failed")]
pub struct EntropyUnavailable;

/// The operating system's generator (through aws-lc).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        aws_lc_rs::rand::fill(dest).map_err(|_| EntropyUnavailable)
    }
}

/// A refresh token as the client holds it. Never printed: `Debug` shows only that it is
/// one, so a stray `?token` in a log cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a refresh token of authplane (expected {TOKEN_PREFIX} and 43 base64url characters)")]
pub struct MalformedToken;

impl RefreshToken {
    /// A token as a client presents it; the shape is checked so that garbage never reaches
    /// a store lookup.
    pub fn parse(presented: &str) -> Result<Self, MalformedToken> {
        let secret = presented
            .strip_prefix(TOKEN_PREFIX)
            .filter(|_| presented.len() == TOKEN_LEN)
            .ok_or(MalformedToken)?;
        match B64URL.decode(secret) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => Ok(Self(presented.to_owned())),
            _ => Err(MalformedToken),
        }
    }

    fn from_secret(secret: &[u8]) -> Self {
        Self(format!("{TOKEN_PREFIX}{}", B64URL.encode(secret)))
    }

    /// The token itself, for the response to the client and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps and looks up.
    pub fn hash(&self) -> TokenHash {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest(&SHA256, self.0.as_bytes()).as_ref());
        TokenHash(hash)
    }

    /// The token of `generation`, from the token of the generation before it.
    fn successor(&self, family: &str, generation: u64, nonce: &[u8]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.0.as_bytes());
        let mut context = hmac::Context::with_key(&key);
        context.update(DERIVATION_LABEL);
        context.update(family.as_bytes());
        context.update(&generation.to_be_bytes());
        context.update(nonce);
        Self::from_secret(context.sign().as_ref())
    }
}

/// The SHA-256 of a refresh token: the only form a store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&B64URL.encode(self.0))
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = B64URL
            .decode(&text)
            .map_err(|_| serde::de::Error::custom("a token hash is base64url"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a token hash is 32 bytes"))?;
        Ok(TokenHash(bytes))
    }
}

/// How long a family lives, fixed at login (a TokenClient's `refreshTokens`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetimes {
    /// From login; never extended by rotation.
    pub absolute: SignedDuration,
    /// From the latest rotation: a family unused this long is dead.
    pub idle: SignedDuration,
    /// After a rotation, how long the preceding token still gets the same new pair.
    pub grace: SignedDuration,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifetimeError {
    #[error("absolute lifetime {0:#} must be positive")]
    Absolute(SignedDuration),
    #[error("idle lifetime {0:#} must be positive")]
    Idle(SignedDuration),
    #[error("reuse grace {0:#} must not be negative")]
    Grace(SignedDuration),
    #[error("reuse grace {grace:#} must be shorter than the idle lifetime {idle:#}")]
    GraceOutlivesIdle {
        grace: SignedDuration,
        idle: SignedDuration,
    },
}

impl Lifetimes {
    pub fn check(&self) -> Result<(), LifetimeError> {
        if !self.absolute.is_positive() {
            return Err(LifetimeError::Absolute(self.absolute));
        }
        if !self.idle.is_positive() {
            return Err(LifetimeError::Idle(self.idle));
        }
        if self.grace.is_negative() {
            return Err(LifetimeError::Grace(self.grace));
        }
        if self.grace >= self.idle {
            return Err(LifetimeError::GraceOutlivesIdle {
                grace: self.grace,
                idle: self.idle,
            });
        }
        Ok(())
    }
}

/// What a login asserts, already checked against the client's TokenClient.
#[derive(Clone, Debug)]
pub struct Login {
    /// The TokenClient (`namespace/name`) the family belongs to; only it may refresh.
    pub client: String,
    /// The issuer whose key signs the family's access tokens.
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// The custom claims of every access token of the family.
    pub claims: Map<String, Value>,
    pub lifetimes: Lifetimes,
}

/// Why a family was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevokedBecause {
    /// A superseded token was presented outside the grace.
    Reuse,
    /// The client (or an operator) ended the session.
    Logout,
    /// A Revocation in force (an admin's, of the session, the subject or the key) matches
    /// the family's login.
    Revocation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub at: Timestamp,
    pub because: RevokedBecause,
}

/// One login's refresh-token family, as a store keeps it (no token, only hashes and the
/// nonce that derives the current token from the preceding one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Family {
    /// Random, and the `sid` of every access token of the family.
    pub id: String,
    pub client: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    pub claims: Map<String, Value>,
    pub started_at: Timestamp,
    /// `started_at` + the absolute lifetime; no rotation moves it.
    pub expires_at: Timestamp,
    pub idle: SignedDuration,
    pub grace: SignedDuration,
    /// 0 at login, + 1 per rotation.
    pub generation: u64,
    /// When the current generation was issued: the start of its idle time and grace.
    pub rotated_at: Timestamp,
    /// The hash of the current generation's token.
    pub current: TokenHash,
    /// base64url of the random input that derived the current token from the preceding
    /// one (empty at generation 0, whose token is random).
    pub nonce: String,
    /// The `jti` of the current generation's access token, so that a retry gets the same
    /// access token again (re-signed with the same claims).
    pub jti: String,
    pub revoked: Option<Revoked>,
}

/// The access token that goes with a refresh token: its id and time of issue; the rest
/// (`sub`, `aud`, `sid`, the claims) comes from the family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessGrant {
    pub jti: String,
    pub issued_at: Timestamp,
}

impl Family {
    /// The access token of the current generation.
    pub fn access(&self) -> AccessGrant {
        AccessGrant {
            jti: self.jti.clone(),
            issued_at: self.rotated_at,
        }
    }

    /// When a store may forget the family and every token hash of it: nothing about it
    /// can matter after its absolute expiry (every token of it is refused by then).
    pub fn forget_after(&self) -> Timestamp {
        self.expires_at
    }

    /// When the current token stops working for want of use.
    pub fn idle_deadline(&self) -> Timestamp {
        add(self.rotated_at, self.idle).min(self.expires_at)
    }
}

/// A new family and its first refresh token.
#[derive(Debug)]
pub struct Started {
    pub family: Family,
    pub token: RefreshToken,
}

/// Starts a family at login.
pub fn start(
    login: Login,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<Started, StartError> {
    login.lifetimes.check()?;
    let id = random_id(entropy)?;
    let jti = random_id(entropy)?;
    let mut secret = [0u8; SECRET_BYTES];
    entropy.fill(&mut secret)?;
    let token = RefreshToken::from_secret(&secret);
    let family = Family {
        id,
        client: login.client,
        issuer: login.issuer,
        subject: login.subject,
        audiences: login.audiences,
        claims: login.claims,
        started_at: now,
        expires_at: add(now, login.lifetimes.absolute),
        idle: login.lifetimes.idle,
        grace: login.lifetimes.grace,
        generation: 0,
        rotated_at: now,
        current: token.hash(),
        nonce: String::new(),
        jti,
        revoked: None,
    };
    Ok(Started { family, token })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Lifetimes(#[from] LifetimeError),
    #[error(transparent)]
    Entropy(#[from] EntropyUnavailable),
}

/// A token's presentation as the store found it: the token, and the family and
/// generation its hash was recorded for.
#[derive(Debug)]
pub struct Presented<'a> {
    pub token: &'a RefreshToken,
    pub generation: u64,
    /// The TokenClient that presents it.
    pub client: &'a str,
    /// The issuer whose token endpoint it is presented at.
    pub issuer: &'a str,
}

/// What a refresh comes to.
#[derive(Debug)]
pub enum Step {
    /// Write `next` if the family is still at the generation it was read at (and record
    /// the new token's hash for `next.generation`), then answer with the pair.
    Rotate {
        next: Family,
        token: RefreshToken,
        access: AccessGrant,
    },
    /// A retry within the grace: answer with the current pair again; nothing to write.
    Replay {
        token: RefreshToken,
        access: AccessGrant,
    },
    /// Reuse: write `next` (revoked) as for a rotation, revoke the session `next.id`,
    /// and refuse the request (`invalid_grant`).
    Revoke { next: Family },
}

/// Why a refresh is refused without any change. Every one is `invalid_grant` to the
/// client except [`Refused::Entropy`] and [`Refused::Inconsistent`] (the server's fault).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the refresh token was issued to another client")]
    OtherClient,
    /// The family was started on another issuer (its client's key or the key's issuer
    /// changed since): refused before anything is written, so that the retry is not
    /// taken for reuse.
    #[error("the refresh token's session was started on another issuer")]
    OtherIssuer,
    #[error("the session of this refresh token was revoked")]
    Revoked(RevokedBecause),
    #[error("the session of this refresh token has expired (its absolute lifetime is over)")]
    Expired,
    #[error("the refresh token has expired for want of use (idle lifetime)")]
    Idle,
    #[error("the stored family does not match the token (generation {found} of {current})")]
    Inconsistent { found: u64, current: u64 },
    #[error("the system's random generator failed")]
    Entropy,
}

/// Decides one refresh of `family` (as read from the store) at `now`.
pub fn refresh(
    family: &Family,
    presented: Presented<'_>,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<Step, Refused> {
    // Another client learns nothing about the family, not even whether it is alive.
    if presented.client != family.client {
        return Err(Refused::OtherClient);
    }
    if presented.issuer != family.issuer {
        return Err(Refused::OtherIssuer);
    }
    if let Some(revoked) = family.revoked {
        return Err(Refused::Revoked(revoked.because));
    }
    if now >= family.expires_at {
        return Err(Refused::Expired);
    }
    let current = family.generation;
    let inconsistent = Refused::Inconsistent {
        found: presented.generation,
        current,
    };
    if presented.generation == current {
        if presented.token.hash() != family.current {
            return Err(inconsistent);
        }
        if now >= family.idle_deadline() {
            return Err(Refused::Idle);
        }
        return rotate(family, presented.token, now, entropy);
    }
    if presented.generation > current {
        return Err(inconsistent);
    }
    let preceding = presented.generation.checked_add(1) == Some(current);
    if preceding && now < add(family.rotated_at, family.grace) {
        // The same pair again: derived from the presented token, checked against the hash.
        let nonce = B64URL
            .decode(&family.nonce)
            .map_err(|_| Refused::Inconsistent {
                found: presented.generation,
                current,
            })?;
        let token = presented.token.successor(&family.id, current, &nonce);
        if token.hash() != family.current {
            return Err(inconsistent);
        }
        return Ok(Step::Replay {
            token,
            access: family.access(),
        });
    }
    Ok(Step::Revoke {
        next: revoked(family, now, RevokedBecause::Reuse),
    })
}

fn rotate(
    family: &Family,
    presented: &RefreshToken,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<Step, Refused> {
    let generation = family
        .generation
        .checked_add(1)
        .ok_or(Refused::Inconsistent {
            found: family.generation,
            current: family.generation,
        })?;
    let mut nonce = [0u8; SECRET_BYTES];
    entropy.fill(&mut nonce).map_err(|_| Refused::Entropy)?;
    let token = presented.successor(&family.id, generation, &nonce);
    let next = Family {
        generation,
        rotated_at: now,
        current: token.hash(),
        nonce: B64URL.encode(nonce),
        jti: random_id(entropy).map_err(|_| Refused::Entropy)?,
        ..family.clone()
    };
    let access = next.access();
    Ok(Step::Rotate {
        next,
        token,
        access,
    })
}

/// Logout (or an operator's revocation): the family revoked, or `None` when it already
/// was (nothing to write; the session was revoked then).
pub fn logout(family: &Family, now: Timestamp) -> Option<Family> {
    family
        .revoked
        .is_none()
        .then(|| revoked(family, now, RevokedBecause::Logout))
}

/// A Revocation in force matches the family: the family revoked, or `None` when it
/// already was.
pub fn revoked_by_revocation(family: &Family, now: Timestamp) -> Option<Family> {
    family
        .revoked
        .is_none()
        .then(|| revoked(family, now, RevokedBecause::Revocation))
}

fn revoked(family: &Family, now: Timestamp, because: RevokedBecause) -> Family {
    Family {
        revoked: Some(Revoked { at: now, because }),
        ..family.clone()
    }
}

fn random_id(entropy: &mut dyn Entropy) -> Result<String, EntropyUnavailable> {
    let mut bytes = [0u8; ID_BYTES];
    entropy.fill(&mut bytes)?;
    Ok(B64URL.encode(bytes))
}
