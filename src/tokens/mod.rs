//! The token service's state: refresh-token families behind a small store trait, and the
//! one path a refresh takes through it (look up, decide in the core, compare-and-set,
//! read again on a lost race).
//!
//! The rules live in the core ([`crate::refresh`]); a store only keeps families and the
//! hashes of the tokens issued for them, and writes a family only if it is still at the
//! generation the writer read (so two concurrent refreshes of one token make exactly one
//! rotation, and the loser, reading again, finds itself within the grace and gets the
//! same pair). Everything a store keeps expires by itself at the family's absolute
//! expiry, so nothing grows without bound.
//!
//! Implementations: [`embedded::EmbeddedStore`] (a redb file in the state folder or on a
//! volume; one replica) and [`redis::RedisStore`] (several replicas). The trait is shaped for a shared store (Redis, issue 24): every
//! method is one round trip, and [`FamilyStore::swap`] is a single atomic
//! compare-and-set (a Lua script there).

pub mod client_auth;
pub mod embedded;
mod embedded_memory;
pub mod embedded_sessions;
pub mod location;
mod metered;
pub mod metrics;
pub mod redis;
pub mod redis_sessions;
pub mod serving;
pub mod session_log;
#[cfg(test)]
pub(crate) mod tests;
mod timed;
mod unavailable;

pub use metered::Metered;
pub use timed::Timed;
pub use unavailable::Unavailable;

use futures::future::BoxFuture;
use jiff::Timestamp;

use crate::api::ObjectKey;
use crate::refresh::{
    self, AccessGrant, Entropy, Family, Presented, RefreshToken, Refused, RevokedBecause, Step,
    TokenHash,
};
use crate::revocation::{SessionEnd, SessionRevocation};

/// The store could not answer. Never the client's fault: the token endpoint answers 503
/// with `Retry-After`, and nothing else in authplane depends on the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the token store is unavailable: {0}")]
    Unavailable(String),
    #[error("the token store holds a record that does not read: {0}")]
    Corrupt(String),
    /// A client holds as many sessions as the store allows it (a login is refused; its
    /// refreshes go on).
    #[error("{0}")]
    Full(String),
}

/// A family as a token lookup finds it, with the generation the token was issued for.
#[derive(Clone, Debug)]
pub struct Found {
    pub family: Family,
    pub generation: u64,
}

pub trait FamilyStore: Send + Sync + 'static {
    /// Records a new family and the hash of its first token (generation 0).
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The family and generation a token hash was issued for; `None` when no token has
    /// this hash or its family is past [`Family::forget_after`] at `now`.
    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>>;

    /// A family by its id (the `sid`), for logout by session and support tools.
    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>>;

    /// The sessions of a user: every family of `client` whose `subject` is `subject`,
    /// revoked ones included, not past [`Family::forget_after`] at `now`, oldest first
    /// (by `started_at`, then id), for support tools (list, revoke all).
    ///
    /// The contract, for every store: an index from (client, subject) to family ids,
    /// written with the family in [`FamilyStore::create`] (the same atomic write: a
    /// family that exists is always found here) and forgotten with it, so it holds no
    /// more than the families do and expires as they do. [`FamilyStore::swap`] never
    /// changes a family's client or subject, so the index needs no other write. At most
    /// [`MAX_SESSIONS_LISTED`] families are returned; more live sessions of one user
    /// than that are a [`StoreError::Unavailable`] naming the number, never a silent
    /// truncation (revoking "all" sessions must not miss one).
    ///
    /// In Redis: a set `{prefix}s:{client}\n{subject}` of family ids (newline cannot
    /// occur in a client id), `SADD`ed in the creating script, its expiry raised to the
    /// family's when later (so the set lives as long as its longest family); the members
    /// whose family key has expired are skipped.
    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>>;

    /// Compare-and-set: writes `next` only if the stored family still has the generation
    /// and the revocation state of `expected` (what the writer read), and, when `next` is
    /// a new generation, records `next.current` as issued for it. `Ok(false)`: someone
    /// wrote first, nothing was written.
    ///
    /// `ended` (given when `next` ends the family: a logout, a reuse) is appended to the
    /// store's log of ended sessions ([`session_log`]) in the same atomic write. A family
    /// revoked without its session's entry would leave its access tokens passing until
    /// they expire; written apart, the entry was lost whenever the caller went away
    /// between the two (a browser tab closed during its logout, the store's deadline),
    /// since a write that ends a family is committed even then.
    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Forgets families (and their token hashes) past [`Family::forget_after`] at `now`;
    /// returns how many. A store whose entries expire by themselves returns 0.
    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>>;
}

/// The most sessions of one user [`FamilyStore::sessions`] answers with.
pub const MAX_SESSIONS_LISTED: usize = 1000;

/// What a refresh answers.
#[derive(Debug)]
pub enum Refreshed {
    /// The pair to answer with (`rotated`: this request made the rotation; otherwise a
    /// retry within the grace got the same pair again).
    Pair {
        family: Family,
        token: RefreshToken,
        access: AccessGrant,
        rotated: bool,
    },
    /// Reuse detected: the family is revoked now; the caller revokes the session
    /// (`family.id`) and answers `invalid_grant`.
    Reuse { family: Family },
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// No family has a token with this hash (never issued, or forgotten after expiry).
    #[error("unknown refresh token")]
    Unknown,
    #[error(transparent)]
    Refused(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Lost the compare-and-set more often than any honest contention explains.
    #[error("the refresh token's family changed {0} times while this request was deciding")]
    Contended(usize),
    /// The family's budget of rotations is spent: nothing changed; retry after this
    /// many seconds.
    #[error("the session refreshed too often: retry in {0} s")]
    Limited(u64),
}

/// How often a refresh reads again after losing a compare-and-set. One loss is the
/// normal race (the loser then finds the new generation and replays it); more means other
/// writers keep winning, which only a flood of refreshes of one family can cause.
const ATTEMPTS: usize = 4;

/// Who presents a refresh token: the TokenClient, at the token endpoint of `issuer`.
#[derive(Debug, Clone, Copy)]
pub struct Presenter<'a> {
    pub client: &'a str,
    pub issuer: &'a str,
    /// Where a reuse that ends the family records its session's end ([`Sessions`]).
    pub sessions: Sessions<'a>,
}

/// Where a write that ends a family records its session's end: under the SigningKey
/// whose tokens carry the session (the issuer's), in the store's log of ended sessions,
/// with the family's write. `None` where the store keeps no log of them (the caller
/// then writes a Revocation object).
pub type Sessions<'a> = Option<&'a ObjectKey>;

/// The log entry that ends `next`'s session under `key`, if `next` ends its family by a
/// logout or a reuse. A family revoked because a Revocation object is in force needs
/// none: that object refuses its tokens already.
fn session_end(next: &Family, key: Sessions<'_>) -> Option<SessionRevocation> {
    let revoked = next.revoked.as_ref()?;
    let reason = match revoked.because {
        RevokedBecause::Reuse => SessionEnd::Reuse,
        RevokedBecause::Logout => SessionEnd::Logout,
        RevokedBecause::Revocation => return None,
    };
    Some(SessionRevocation::new(
        key?.clone(),
        &next.id,
        reason,
        revoked.at,
    ))
}

/// One refresh of `token` by `by` at `now`: the whole path, for every store.
pub async fn refresh(
    store: &dyn FamilyStore,
    token: &RefreshToken,
    by: Presenter<'_>,
    now: Timestamp,
    entropy: &mut (dyn Entropy + Send),
) -> Result<Refreshed, RefreshError> {
    refresh_admitted(store, token, by, now, entropy, &|_| false, &|_| {
        Box::pin(async { Ok(()) })
    })
    .await
}

/// [`refresh`], with two questions to the caller. `revoked`: whether a Revocation in
/// force ends the family (asked first, for the client's own live family only; if so the
/// family is revoked in the store and the refresh refused, the grace's replay included).
/// `admit`: each rotation's budget (per family, asked of a limit that may be shared by
/// every replica: `Err(seconds)` refuses it with
/// [`RefreshError::Limited`] before anything is written). A retry within the grace is a
/// read and costs nothing, so fifty concurrent refreshes of one token take one rotation
/// from the budget.
pub async fn refresh_admitted<'a>(
    store: &dyn FamilyStore,
    token: &RefreshToken,
    by: Presenter<'_>,
    now: Timestamp,
    entropy: &mut (dyn Entropy + Send),
    revoked: &(dyn Fn(&Family) -> bool + Sync),
    admit: &(dyn Fn(&Family) -> BoxFuture<'a, Result<(), u64>> + Sync),
) -> Result<Refreshed, RefreshError> {
    let hash = token.hash();
    for _ in 0..ATTEMPTS {
        let Some(found) = store.find(hash, now).await? else {
            return Err(RefreshError::Unknown);
        };
        // Another client's token is refused by the core below, learning nothing: only the
        // owner's refresh may end a family.
        if found.family.client == by.client
            && found.family.issuer == by.issuer
            && let Some(next) = (revoked(&found.family))
                .then(|| refresh::revoked_by_revocation(&found.family, now))
                .flatten()
        {
            if store.swap(&found.family, &next, None).await? {
                return Err(RefreshError::Refused(Refused::Revoked(
                    refresh::RevokedBecause::Revocation,
                )));
            }
            continue;
        }
        let presented = Presented {
            token,
            generation: found.generation,
            client: by.client,
            issuer: by.issuer,
        };
        let family = found.family;
        match refresh::refresh(&family, presented, now, entropy) {
            Err(refused) => return Err(RefreshError::Refused(refused)),
            Ok(Step::Replay { token, access }) => {
                return Ok(Refreshed::Pair {
                    family,
                    token,
                    access,
                    rotated: false,
                });
            }
            Ok(Step::Rotate {
                next,
                token,
                access,
            }) => {
                admit(&family).await.map_err(RefreshError::Limited)?;
                if store.swap(&family, &next, None).await? {
                    return Ok(Refreshed::Pair {
                        family: next,
                        token,
                        access,
                        rotated: true,
                    });
                }
            }
            Ok(Step::Revoke { next }) => {
                let ended = session_end(&next, by.sessions);
                if store.swap(&family, &next, ended.as_ref()).await? {
                    return Ok(Refreshed::Reuse { family: next });
                }
            }
        }
    }
    Err(RefreshError::Contended(ATTEMPTS))
}

/// A family a logout ended, now or earlier.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub family: Family,
    /// This call ended it and its session's end was recorded with that write (in the
    /// log of ended sessions given): nothing is left for the caller to write. Otherwise
    /// it ended earlier (by a logout or a reuse: its entry was written with it, when the
    /// store keeps a log; by a Revocation in force then), or no log was given (the caller
    /// writes a Revocation).
    pub recorded: bool,
}

/// Logout: revokes the family of `token` (presented by `client`), recording its
/// session's end with the write under the SigningKey `sessions_of` names for the family
/// (its issuer's, whose key signed its access tokens: after the client's key changed,
/// not the one the logout came in on; `None`: no log, or no such issuer published).
/// `Ok(None)` when the token is unknown or of another client: RFC 7009 §2.2 answers 200
/// for these, and nothing changes.
pub async fn logout(
    store: &dyn FamilyStore,
    token: &RefreshToken,
    client: &str,
    sessions_of: &(dyn Fn(&Family) -> Option<ObjectKey> + Sync),
    now: Timestamp,
) -> Result<Option<Ended>, RefreshError> {
    let Some(found) = store.find(token.hash(), now).await? else {
        return Ok(None);
    };
    if found.family.client != client {
        return Ok(None);
    }
    let key = sessions_of(&found.family);
    end_family(store, found.family, key.as_ref(), now)
        .await
        .map(Some)
}

/// Support's "log this user out everywhere": revokes every family of `client` and
/// `subject` (as a logout does, each by compare-and-set) and returns them all, revoked
/// now or before, so that the caller writes each session's Revocation (an admin's act,
/// audited as an object; written again, a Revocation is the same object: a run
/// interrupted half-way is completed by the next).
pub async fn end_sessions(
    store: &dyn FamilyStore,
    client: &str,
    subject: &str,
    now: Timestamp,
) -> Result<Vec<Family>, RefreshError> {
    let mut ended = Vec::new();
    for family in store.sessions(client, subject, now).await? {
        ended.push(end_family(store, family, None, now).await?.family);
    }
    Ok(ended)
}

/// The namespace of a TokenClient named `namespace/name` (the whole name if it has none):
/// a family's client id names it, and a session is only ever its namespace's.
pub(crate) fn namespace_of(client: &str) -> &str {
    client
        .split_once('/')
        .map_or(client, |(namespace, _)| namespace)
}

/// A logout by an access token of a session that is a family here: revokes the family
/// `id` of `issuer`, a SigningKey of `namespace` (as a logout by its refresh token
/// does). `Ok(None)`: no such family of this issuer and of a client of `namespace` (a
/// session of tokens minted elsewhere, or one another namespace's key issued at the same
/// URL before this one served it), nothing changed.
pub async fn end_session(
    store: &dyn FamilyStore,
    issuer: &str,
    namespace: &str,
    id: &str,
    sessions: Sessions<'_>,
    now: Timestamp,
) -> Result<Option<Ended>, RefreshError> {
    match store.family(id, now).await? {
        Some(family) if family.issuer == issuer && namespace_of(&family.client) == namespace => {
            end_family(store, family, sessions, now).await.map(Some)
        }
        _ => Ok(None),
    }
}

async fn end_family(
    store: &dyn FamilyStore,
    mut family: Family,
    sessions: Sessions<'_>,
    now: Timestamp,
) -> Result<Ended, RefreshError> {
    for _ in 0..ATTEMPTS {
        let Some(next) = refresh::logout(&family, now) else {
            return Ok(Ended {
                family,
                recorded: false,
            });
        };
        let ended = session_end(&next, sessions);
        if store.swap(&family, &next, ended.as_ref()).await? {
            return Ok(Ended {
                family: next,
                recorded: ended.is_some(),
            });
        }
        // Rotated meanwhile: read it again and revoke what is there now.
        match store.family(&family.id, now).await? {
            Some(current) => family = current,
            None => {
                return Ok(Ended {
                    family: next,
                    recorded: false,
                });
            }
        }
    }
    Err(RefreshError::Contended(ATTEMPTS))
}
