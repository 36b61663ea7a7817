//! Sessions that authplane ended itself (a logout, a reused refresh token), kept in the
//! token store instead of as Revocation objects, and held here in memory on every
//! replica: a persistent map per SigningKey from a hash of the `sid` to the second the
//! entry lapses, read by the decision path through [`super::RevocationSet`] exactly as
//! a `sessionId` Revocation of that key would be.
//!
//! An entry names the SigningKey that signs the session's tokens (the issuer served
//! here), and matches only tokens that this key verified: like a Revocation in the key's
//! own namespace, it can never match a token of another key, nor of another namespace's.
//!
//! Small on purpose: a 16-byte hash instead of the `sid` (no personal data in memory
//! dumps, and a fixed size), the lapse second and the reason class. The map is
//! persistent (`imbl`): publishing a new set after one more logout copies nothing.

use aws_lc_rs::digest::{SHA256, digest};
use jiff::{SignedDuration, Timestamp};

use std::sync::Arc;

use super::TokenFacts;
use crate::api::ObjectKey;

/// The same hasher in every process: the maps' iteration order, and so which entry a
/// full set displaces, depends only on what they hold, so every replica following the
/// same log holds the same sessions (with a seed per process, each dropped different
/// ones, and a stolen token retried until it reached a replica that had dropped its
/// session). The keys are a SigningKey's name and SHA-256 prefixes of session ids, not
/// chosen freely by a client.
type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
type Map<K, V> = imbl::GenericHashMap<K, V, Fixed, imbl::shared_ptr::DefaultSharedPtr>;

/// How long after its revocation an entry is kept: the longest access-token lifetime a
/// TokenClient may set (its CRD's bound) plus the most leeway a policy may grant. The
/// session's family is revoked in the store already, so no new token of the session is
/// issued: the entry only has to outlive the access tokens issued before it.
pub const SESSION_REVOCATION_LIFETIME: SignedDuration =
    SignedDuration::from_secs(24 * 3600 + 5 * 60);

/// The most entries a replica holds. About 140 bytes each (200,000 measured at 23 MiB
/// before the order of each namespace's entries was kept, which adds about 15%):
/// 1,000,000 is some 140 MiB.
///
/// Shared fairly between namespaces (of the SigningKeys): a tenant's workload can log in
/// and out as fast as it likes, and a share fixed in advance (half of it, once) still let
/// two namespaces (one team's two, or two tenants together) fill the set and leave every
/// other namespace's logouts and reuse detections unenforced for a day. So when the set
/// is full, a new entry displaces one of the namespace holding the most entries, if that
/// namespace holds more than the new entry's; otherwise it is refused (counted and
/// logged by the caller: its session's family is revoked in the store all the same, so
/// its access tokens live out their short lifetime at worst). Only a namespace at or
/// above everyone else's share ever loses an entry.
pub const MAX_SESSION_REVOCATIONS: usize = 1_000_000;

/// The first 16 bytes of the SHA-256 of a `sid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SidHash(pub [u8; 16]);

impl SidHash {
    pub fn of(sid: &str) -> Self {
        let hash = digest(&SHA256, sid.as_bytes());
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&hash.as_ref()[..16]);
        Self(bytes)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The inverse of [`SidHash::to_hex`]; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

/// Why authplane ended a session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SessionEnd {
    /// Its holder logged out (`/revoke`).
    Logout,
    /// A superseded refresh token came back: someone else holds it.
    Reuse,
}

impl SessionEnd {
    /// As the store writes it, and the reason label of metrics and `/status`.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Logout => "logout",
            SessionEnd::Reuse => "compromised",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "logout" => Some(SessionEnd::Logout),
            "compromised" => Some(SessionEnd::Reuse),
            _ => None,
        }
    }
}

/// One session ended, as the store keeps it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionRevocation {
    /// The SigningKey whose tokens carry the session.
    pub key: ObjectKey,
    pub sid: SidHash,
    pub reason: SessionEnd,
    /// Unix seconds.
    pub revoked_at: i64,
    /// The last second it counts (Unix seconds).
    pub lapses_at: i64,
}

impl SessionRevocation {
    /// The session `sid` of `key`'s tokens, ended at `now`; it lapses
    /// [`SESSION_REVOCATION_LIFETIME`] later.
    pub fn new(key: ObjectKey, sid: &str, reason: SessionEnd, now: Timestamp) -> Self {
        let revoked_at = now.as_second();
        Self {
            key,
            sid: SidHash::of(sid),
            reason,
            revoked_at,
            lapses_at: revoked_at.saturating_add(SESSION_REVOCATION_LIFETIME.as_secs()),
        }
    }

    /// One line, as the stores keep it: `namespace name sid-hash reason revoked lapses`,
    /// separated by spaces (none can occur in a Kubernetes name).
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.key.namespace,
            self.key.name,
            self.sid.to_hex(),
            self.reason.label(),
            self.revoked_at,
            self.lapses_at
        )
    }

    /// The inverse of [`SessionRevocation::encode`]; `None` for anything malformed
    /// (the caller skips and counts it).
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let mut next = || parts.next().filter(|p| !p.is_empty());
        let namespace = next()?;
        let name = next()?;
        let sid = SidHash::from_hex(next()?)?;
        let reason = SessionEnd::parse(next()?)?;
        let revoked_at: i64 = next()?.parse().ok()?;
        let lapses_at: i64 = next()?.parse().ok()?;
        if parts.next().is_some() || namespace.len() > 253 || name.len() > 253 {
            return None;
        }
        // As [`SessionRevocation::new`] writes them: an entry that would be held longer
        // (for ever, until a restart) or whose age overflows is not one of ours.
        let held = lapses_at.checked_sub(revoked_at)?;
        if revoked_at < 0 || !(0..=SESSION_REVOCATION_LIFETIME.as_secs()).contains(&held) {
            return None;
        }
        Some(Self {
            key: ObjectKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            sid,
            reason,
            revoked_at,
            lapses_at,
        })
    }
}

/// What one [`SessionSet::insert`] did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Inserted {
    New,
    /// Added in place of an entry of `namespace`, which held the most entries of a full
    /// set (see [`MAX_SESSION_REVOCATIONS`]).
    Displaced {
        namespace: String,
    },
    /// Known already (the same logout read again): nothing changed.
    Known,
    /// The set is full, and the entry's namespace holds as many entries as any other
    /// ([`MAX_SESSION_REVOCATIONS`]): refused.
    Full,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Held {
    lapses_at: i64,
    reason: SessionEnd,
}

/// An entry in the order a namespace's entries came, with the lapse it came with (an
/// entry since ended again, later, is further back: this place is stale then).
#[derive(Clone, Debug)]
struct Placed {
    key: Arc<ObjectKey>,
    sid: SidHash,
    lapses_at: i64,
}

/// The sessions ended in the token store and in force, per SigningKey. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionSet {
    by_key: Map<ObjectKey, Map<SidHash, Held>>,
    /// Entries held per namespace (of the SigningKey), for its share of the cap.
    by_namespace: Map<String, usize>,
    /// Each namespace's entries in the order they came (the log's, the same on every
    /// replica), so that a full set displaces the oldest: the one that lapses first,
    /// whose access tokens are the likeliest to have expired.
    order: Map<String, imbl::Vector<Placed>>,
    /// One `Arc` per SigningKey for `order`'s places (not a copy of its names each).
    keys: Map<ObjectKey, Arc<ObjectKey>>,
    /// The log's time: the latest `revoked_at` taken in. What a full set drops, and what
    /// a prune forgets, is decided by it, not by this replica's clock or the moment its
    /// prune runs, so that every replica following the log holds the same entries.
    log_time: i64,
    len: usize,
    cap: usize,
}

impl Default for SessionSet {
    fn default() -> Self {
        Self::with_cap(MAX_SESSION_REVOCATIONS)
    }
}

impl SessionSet {
    /// An empty set that holds at most `cap` entries.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            by_key: Map::default(),
            by_namespace: Map::default(),
            order: Map::default(),
            keys: Map::default(),
            log_time: 0,
            len: 0,
            cap,
        }
    }

    /// Adds an entry (an entry lapsed at `now` is not added). A session ended twice
    /// keeps the later lapse.
    pub fn insert(&mut self, revocation: &SessionRevocation, now: Timestamp) -> Inserted {
        if revocation.lapses_at < now.as_second() {
            return Inserted::Known;
        }
        self.log_time = self.log_time.max(revocation.revoked_at);
        if self.len >= self.cap {
            self.forget_lapsed_by_log_time();
        }
        let namespace = &revocation.key.namespace;
        let in_namespace = self.by_namespace.get(namespace).copied().unwrap_or(0);
        let held = self
            .by_key
            .get(&revocation.key)
            .and_then(|sessions| sessions.get(&revocation.sid))
            .copied();
        match held {
            Some(held) if held.lapses_at >= revocation.lapses_at => Inserted::Known,
            None if self.len >= self.cap => {
                let Some(largest) = self.largest_namespace_beyond(in_namespace + 1) else {
                    return Inserted::Full;
                };
                self.displace_one_of(&largest);
                // Room for one now: added as new.
                self.insert(revocation, now);
                Inserted::Displaced { namespace: largest }
            }
            _ => {
                self.by_key
                    .entry(revocation.key.clone())
                    .or_default()
                    .insert(
                        revocation.sid,
                        Held {
                            lapses_at: revocation.lapses_at,
                            reason: held.map_or(revocation.reason, |held| held.reason),
                        },
                    );
                if held.is_none() {
                    self.by_namespace
                        .insert(namespace.clone(), in_namespace + 1);
                    self.len += 1;
                }
                let key = self
                    .keys
                    .entry(revocation.key.clone())
                    .or_insert_with(|| Arc::new(revocation.key.clone()))
                    .clone();
                self.order
                    .entry(namespace.clone())
                    .or_default()
                    .push_back(Placed {
                        key,
                        sid: revocation.sid,
                        lapses_at: revocation.lapses_at,
                    });
                Inserted::New
            }
        }
    }

    /// The namespace holding the most entries (the first by name among equals), if it
    /// holds more than `than`.
    fn largest_namespace_beyond(&self, than: usize) -> Option<String> {
        self.by_namespace
            .iter()
            .filter(|(_, held)| **held > than)
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(namespace, _)| namespace.clone())
    }

    /// Forgets, at the front of each namespace's order, the entries lapsed by the log's
    /// time (and stale places): a full set makes room from them before it displaces or
    /// refuses anything, whenever this replica last pruned.
    fn forget_lapsed_by_log_time(&mut self) {
        let log_time = self.log_time;
        let mut order = std::mem::take(&mut self.order);
        for (namespace, places) in order.iter_mut() {
            while let Some(placed) = places.front() {
                if self.current(placed) {
                    if placed.lapses_at >= log_time {
                        break;
                    }
                    let placed = placed.clone();
                    self.forget(namespace, &placed);
                }
                places.pop_front();
            }
        }
        order.retain(|_, places| !places.is_empty());
        self.order = order;
    }

    /// Forgets the entry held at `placed`, one of `namespace`'s.
    fn forget(&mut self, namespace: &str, placed: &Placed) {
        if let Some(sessions) = self.by_key.get_mut(&*placed.key) {
            sessions.remove(&placed.sid);
            if sessions.is_empty() {
                self.by_key.remove(&*placed.key);
                self.keys.remove(&*placed.key);
            }
        }
        if let Some(held) = self.by_namespace.get_mut(namespace) {
            *held -= 1;
        }
        self.len -= 1;
    }

    /// Whether `placed` is where its entry is held now (not gone, not ended again since).
    fn current(&self, placed: &Placed) -> bool {
        self.by_key
            .get(&*placed.key)
            .and_then(|sessions| sessions.get(&placed.sid))
            .is_some_and(|held| held.lapses_at == placed.lapses_at)
    }

    /// Forgets the oldest entry of `namespace`'s keys (the namespace holds more than
    /// anyone's share).
    fn displace_one_of(&mut self, namespace: &str) {
        loop {
            let Some(placed) = self
                .order
                .get_mut(namespace)
                .and_then(imbl::Vector::pop_front)
            else {
                return;
            };
            if self.current(&placed) {
                self.forget(namespace, &placed);
                return;
            }
        }
    }

    /// Forgets the entries lapsed before `now`, or before the log's time if that is
    /// earlier (see `log_time`); returns how many.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let now = now.as_second().min(self.log_time);
        let before = self.len;
        let mut emptied = Vec::new();
        for (key, sessions) in self.by_key.iter_mut() {
            sessions.retain(|_, held| held.lapses_at >= now);
            if sessions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.by_key.remove(&key);
            self.keys.remove(&key);
        }
        // Places of what lapsed, and places left stale by sessions ended again (anywhere
        // in the order: behind an older entry they would pile up for a day).
        let mut order = std::mem::take(&mut self.order);
        for (_, places) in order.iter_mut() {
            places.retain(|placed| self.current(placed));
        }
        order.retain(|_, places| !places.is_empty());
        self.order = order;
        let mut by_namespace = Map::default();
        for (key, sessions) in &self.by_key {
            *by_namespace.entry(key.namespace.clone()).or_insert(0) += sessions.len();
        }
        self.by_namespace = by_namespace;
        self.len = self.by_key.values().map(Map::len).sum();
        before - self.len
    }

    /// Whether a verified token's session is ended here at `now` (Unix seconds): its
    /// key verified it and its `sid` is held, not lapsed.
    pub fn is_revoked(&self, token: &TokenFacts<'_>, now: i64) -> bool {
        if self.len == 0 {
            return false;
        }
        let (Some(key), Some(sid)) = (token.key, token.sid) else {
            return false;
        };
        self.by_key
            .get(key)
            .and_then(|sessions| sessions.get(&SidHash::of(sid)))
            .is_some_and(|held| now <= held.lapses_at)
    }

    /// Entries held (lapsed ones included until a prune after the log's time passed them).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries in force at `now` per SigningKey and reason, for `/status` (counts only:
    /// never a session).
    pub fn counts(&self, now: i64) -> Vec<SessionCount> {
        let mut counts = std::collections::BTreeMap::new();
        for (key, sessions) in &self.by_key {
            for held in sessions.values().filter(|held| now <= held.lapses_at) {
                *counts
                    .entry((key.clone(), held.reason.label()))
                    .or_insert(0) += 1;
            }
        }
        counts
            .into_iter()
            .map(|((key, reason), count)| SessionCount { key, reason, count })
            .collect()
    }
}

/// How many sessions of one key the store ended for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCount {
    pub key: ObjectKey,
    pub reason: &'static str,
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: "web".into(),
        }
    }

    fn facts<'a>(key: Option<&'a ObjectKey>, sid: Option<&'a str>) -> TokenFacts<'a> {
        TokenFacts {
            iss: "https://auth.example",
            key,
            jti: None,
            sub: Some("alice"),
            sid,
            iat: Some(0),
        }
    }

    #[test]
    fn an_ended_session_refuses_only_its_own_keys_tokens_until_it_lapses() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut set = SessionSet::default();
        let ended = SessionRevocation::new(key("auth"), "s1", SessionEnd::Logout, now);
        assert_eq!(set.insert(&ended, now), Inserted::New);
        assert_eq!(set.insert(&ended, now), Inserted::Known);
        let t = now.as_second();
        assert!(set.is_revoked(&facts(Some(&key("auth")), Some("s1")), t));
        // Another session, another key (another namespace's), no key, no sid: untouched.
        assert!(!set.is_revoked(&facts(Some(&key("auth")), Some("s2")), t));
        assert!(!set.is_revoked(&facts(Some(&key("tenant")), Some("s1")), t));
        assert!(!set.is_revoked(&facts(None, Some("s1")), t));
        assert!(!set.is_revoked(&facts(Some(&key("auth")), None), t));
        // Through its last second, not after.
        assert!(set.is_revoked(&facts(Some(&key("auth")), Some("s1")), ended.lapses_at));
        assert!(!set.is_revoked(&facts(Some(&key("auth")), Some("s1")), ended.lapses_at + 1));
        assert_eq!(
            ended.lapses_at - ended.revoked_at,
            SESSION_REVOCATION_LIFETIME.as_secs()
        );
        let later = Timestamp::from_second(ended.lapses_at + 1).unwrap();
        // Pruned by the log's time, not this replica's clock: kept (not in force) until
        // the log moves past it.
        assert_eq!(set.prune(later), 0);
        let next = SessionRevocation::new(key("auth"), "s9", SessionEnd::Logout, later);
        assert_eq!(set.insert(&next, later), Inserted::New);
        assert_eq!(set.prune(later), 1);
        assert_eq!(set.len(), 1);
        // A lapsed entry read late is not added.
        assert_eq!(set.insert(&ended, later), Inserted::Known);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn the_stored_form_reads_back_and_anything_else_is_refused() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let ended = SessionRevocation::new(key("auth"), "sid-1", SessionEnd::Reuse, now);
        let line = ended.encode();
        assert!(!line.contains("sid-1"), "{line}");
        assert_eq!(SessionRevocation::decode(&line), Some(ended));
        for bad in [
            "",
            "auth web",
            "auth web nothex compromised 1 2",
            "auth web 00112233445566778899aabbccddeeff stolen 1 2",
            "auth web 00112233445566778899aabbccddeeff logout x 2",
            "auth web 00112233445566778899aabbccddeeff logout 1 2 extra",
            "auth  00112233445566778899aabbccddeeff logout 1 2",
            "auth web 00112233445566778899aabbccddeeffé logout 1 2",
            // Held for ever, lapsed before written, or an age that overflows.
            "auth web 00112233445566778899aabbccddeeff logout 1 9223372036854775807",
            "auth web 00112233445566778899aabbccddeeff logout 2 1",
            "auth web 00112233445566778899aabbccddeeff logout -9223372036854775808 1",
        ] {
            assert_eq!(SessionRevocation::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_set_refuses_a_namespace_at_the_largest_share_and_keeps_what_it_holds() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut set = SessionSet::with_cap(2);
        let ended =
            |namespace, sid| SessionRevocation::new(key(namespace), sid, SessionEnd::Logout, now);
        assert_eq!(set.insert(&ended("auth", "a"), now), Inserted::New);
        assert_eq!(set.insert(&ended("shop", "b"), now), Inserted::New);
        // Every namespace holds one: none holds more than the newcomer would.
        assert_eq!(set.insert(&ended("blog", "c"), now), Inserted::Full);
        assert_eq!(set.insert(&ended("auth", "d"), now), Inserted::Full);
        assert_eq!(set.len(), 2);
        let t = now.as_second();
        assert!(set.is_revoked(&facts(Some(&key("auth")), Some("a")), t));
        assert!(set.is_revoked(&facts(Some(&key("shop")), Some("b")), t));
        assert!(!set.is_revoked(&facts(Some(&key("blog")), Some("c")), t));
    }

    #[test]
    fn namespaces_logging_out_in_a_loop_never_crowd_out_another_namespaces_logouts() {
        // Two namespaces' workloads (one team's two, or two tenants together) log in and
        // out as fast as they like, under any number of SigningKeys: they fill the set,
        // and every other namespace's logouts still displace their entries.
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut set = SessionSet::with_cap(10);
        let flooding_key = |i: usize| ObjectKey {
            namespace: format!("tenant-{}", i % 2),
            name: format!("k{}", i % 3),
        };
        let mut refused = 0;
        for i in 0..100 {
            let flood =
                SessionRevocation::new(flooding_key(i), &format!("s{i}"), SessionEnd::Logout, now);
            if set.insert(&flood, now) == Inserted::Full {
                refused += 1;
            }
        }
        assert_eq!((set.len(), refused), (10, 90));
        let t = now.as_second();
        for sid in ["a", "b", "c"] {
            let ended = SessionRevocation::new(key("shop"), sid, SessionEnd::Reuse, now);
            assert!(
                matches!(set.insert(&ended, now), Inserted::Displaced { ref namespace } if namespace.starts_with("tenant-")),
                "{sid}"
            );
            assert!(set.is_revoked(&facts(Some(&key("shop")), Some(sid)), t));
        }
        assert_eq!(set.len(), 10);
        // The flooders cannot win their entries back from a smaller namespace...
        let flood = SessionRevocation::new(flooding_key(0), "s-more", SessionEnd::Logout, now);
        assert_eq!(set.insert(&flood, now), Inserted::Full);
        // ...and at a fair share (10 over three namespaces) the newcomer is refused too.
        let ended = SessionRevocation::new(key("shop"), "d", SessionEnd::Reuse, now);
        assert_eq!(set.insert(&ended, now), Inserted::Full);
        let shares: Vec<usize> = ["tenant-0", "tenant-1", "shop"]
            .iter()
            .map(|namespace| set.by_namespace.get(*namespace).copied().unwrap_or(0))
            .collect();
        assert_eq!(shares, [3, 4, 3]);
        // Lapsed entries give the flooders room again, as soon as the log has moved past
        // them (whenever this replica last pruned).
        let later = Timestamp::from_second(t + SESSION_REVOCATION_LIFETIME.as_secs() + 1).unwrap();
        let again = SessionRevocation::new(flooding_key(0), "s-new", SessionEnd::Logout, later);
        assert_eq!(set.insert(&again, later), Inserted::New);
        assert_eq!(set.len(), 1);
    }

    /// A flood displaces the oldest entries of the largest namespace, never a session
    /// ended a moment ago while older ones are held.
    #[test]
    fn a_flood_displaces_the_oldest_ended_sessions_first() {
        let start = 1_000_000;
        let mut set = SessionSet::with_cap(100);
        for i in 0..100 {
            let at = Timestamp::from_second(start + i * 600).unwrap();
            let ended =
                SessionRevocation::new(key("auth"), &format!("a{i}"), SessionEnd::Logout, at);
            assert_eq!(set.insert(&ended, at), Inserted::New);
        }
        // One ended again later: its earlier place is not its place any more.
        let again_at = Timestamp::from_second(start + 100 * 600).unwrap();
        let again = SessionRevocation::new(key("auth"), "a0", SessionEnd::Reuse, again_at);
        assert_eq!(set.insert(&again, again_at), Inserted::New);
        let now = again_at;
        for i in 0..40 {
            let flood =
                SessionRevocation::new(key("tenant"), &format!("t{i}"), SessionEnd::Logout, now);
            assert!(matches!(
                set.insert(&flood, now),
                Inserted::Displaced { .. }
            ));
        }
        let t = now.as_second();
        let held: Vec<bool> = (0..100)
            .map(|i| set.is_revoked(&facts(Some(&key("auth")), Some(&format!("a{i}"))), t))
            .collect();
        // a1..a40 displaced, the oldest; a0 (ended again) and a41.. held.
        assert!(held[0] && !held[1..=40].iter().any(|h| *h) && held[41..].iter().all(|h| *h));
        // Pruned later: what lapsed leaves the order too, and the counts hold.
        let later =
            Timestamp::from_second(start + 50 * 600 + SESSION_REVOCATION_LIFETIME.as_secs())
                .unwrap();
        set.prune(later);
        let places: usize = set.order.values().map(imbl::Vector::len).sum();
        assert!(places <= set.len() + 1, "{places} places for {}", set.len());
    }

    /// Two replicas that prune at different moments hold the same entries: a full set
    /// makes room from what lapsed by the log's time before it displaces or refuses
    /// anything, whether or not this replica has pruned (ATTACK13).
    #[test]
    fn replicas_pruning_at_different_moments_refuse_the_same_sessions() {
        let t0 = 1_000_000;
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let old = SessionRevocation::new(key("blog"), "x1", SessionEnd::Logout, at(t0));
        let a1 = SessionRevocation::new(key("auth"), "a1", SessionEnd::Logout, at(t0 + 100));
        let a2 = SessionRevocation::new(key("auth"), "a2", SessionEnd::Logout, at(t0 + 200));
        // Ended a second after x1 lapsed: one replica pruned at that second, the other
        // prunes 59 seconds later.
        let tb = old.lapses_at + 1;
        let b1 = SessionRevocation::new(key("shop"), "b1", SessionEnd::Logout, at(tb));
        let follow = |pruned_at: i64| {
            let mut set = SessionSet::with_cap(3);
            for r in [&old, &a1, &a2] {
                set.insert(r, at(r.revoked_at));
            }
            if pruned_at <= tb {
                set.prune(at(pruned_at));
            }
            set.insert(&b1, at(tb));
            set.prune(at(pruned_at.max(tb)));
            set
        };
        let (early, late) = (follow(tb), follow(tb + 59));
        let held = |set: &SessionSet| -> Vec<bool> {
            [("auth", "a1"), ("auth", "a2"), ("shop", "b1")]
                .iter()
                .map(|(ns, sid)| set.is_revoked(&facts(Some(&key(ns)), Some(sid)), tb + 60))
                .collect()
        };
        assert_eq!(held(&early), [true, true, true]);
        assert_eq!(held(&late), held(&early));
    }

    /// A session ended again and again leaves no pile of stale places behind an older
    /// entry: a prune keeps one place per entry (ATTACK13).
    #[test]
    fn sessions_ended_again_and_again_leave_no_more_places_than_entries() {
        let t0 = 1_000_000;
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let mut set = SessionSet::with_cap(10);
        set.insert(
            &SessionRevocation::new(key("auth"), "s0", SessionEnd::Logout, at(t0)),
            at(t0),
        );
        for i in 1..=10_000 {
            let again = SessionRevocation::new(key("auth"), "s1", SessionEnd::Logout, at(t0 + i));
            assert_eq!(set.insert(&again, at(t0 + i)), Inserted::New);
        }
        set.prune(at(t0 + 10_000));
        let places: usize = set.order.values().map(imbl::Vector::len).sum();
        assert_eq!((set.len(), places), (2, 2));
    }

    /// Every replica follows the same log in the same order: a full set displaces the
    /// same entries on each, so no session is refused by one replica and not the next.
    #[test]
    fn replicas_following_the_same_log_refuse_the_same_sessions() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let log: Vec<SessionRevocation> = (0..100)
            .map(|i| SessionRevocation::new(key("auth"), &format!("a{i}"), SessionEnd::Logout, now))
            .chain((0..40).map(|i| {
                SessionRevocation::new(key("tenant"), &format!("t{i}"), SessionEnd::Logout, now)
            }))
            .collect();
        let follow = || {
            let mut set = SessionSet::with_cap(100);
            for revocation in &log {
                set.insert(revocation, now);
            }
            set
        };
        let (one, other) = (follow(), follow());
        let t = now.as_second();
        let held = |set: &SessionSet| -> Vec<bool> {
            (0..100)
                .map(|i| set.is_revoked(&facts(Some(&key("auth")), Some(&format!("a{i}"))), t))
                .collect()
        };
        assert_eq!(held(&one).iter().filter(|h| **h).count(), 60);
        assert_eq!(
            held(&one),
            held(&other),
            "sessions ended on one replica only"
        );
    }

    #[test]
    fn counts_name_keys_and_reasons_never_sessions() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut set = SessionSet::default();
        for (sid, reason) in [
            ("a", SessionEnd::Logout),
            ("b", SessionEnd::Logout),
            ("c", SessionEnd::Reuse),
        ] {
            set.insert(&SessionRevocation::new(key("auth"), sid, reason, now), now);
        }
        let counts = set.counts(now.as_second());
        assert_eq!(
            counts,
            vec![
                SessionCount {
                    key: key("auth"),
                    reason: "compromised",
                    count: 1
                },
                SessionCount {
                    key: key("auth"),
                    reason: "logout",
                    count: 2
                },
            ]
        );
    }
}
