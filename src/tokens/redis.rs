//! The shared family store: Redis, for several replicas (every replica answers every
//! refresh, so every replica must see every rotation).
//!
//! Keys, all under one prefix per installation (`authplane:<installation>:`), so two
//! installations or test runs sharing one Redis never see each other's families:
//!
//! - `<prefix>f:<family id>`: a hash with the family as JSON (`family`) beside the two
//!   fields the compare-and-set compares (`generation`, `revoked`), so the script never
//!   parses JSON;
//! - `<prefix>t:<SHA-256 of a refresh token, base64url>`: `<generation>:<family id>`.
//!
//! Only hashes of refresh tokens are kept: nothing in Redis can be replayed. Every key
//! expires at its family's forget-after ([`Family::forget_after`], `PEXPIREAT`/`PXAT`),
//! so Redis forgets by itself and [`FamilyStore::purge`] has nothing to do.
//!
//! Each call is one round trip: a Lua script, which Redis runs atomically, so the
//! compare-and-set of [`FamilyStore::swap`] (compare generation and revocation, write the
//! family, record the new token's hash) cannot interleave with another replica's. The
//! scripts name keys they compute, which a standalone Redis (or a primary with replicas)
//! allows and Redis Cluster does not: Cluster is not supported.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, IntoConnectionInfo, RedisError, Script, Value};
use futures::future::BoxFuture;
use jiff::Timestamp;

use super::redis_sessions::{append_args, append_lua, stream_key};
use super::{FamilyStore, Found, MAX_SESSIONS_LISTED, StoreError, Timed, Unavailable};
use crate::refresh::{Family, TokenHash};
use crate::revocation::SessionRevocation;

/// Where the store is and how to reach it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://…` (TLS, checked against
    /// the system's roots).
    pub url: String,
    /// A password that replaces the URL's (from `--token-store-password-file`).
    pub password: Option<String>,
    /// PEM certificates that a `rediss://` server's certificate must chain to, instead of
    /// the system's roots (from `--token-store-ca-file`: a cluster's private CA).
    pub ca: Option<Vec<u8>>,
    /// What sets this installation's keys apart from every other's in the same Redis.
    pub installation: String,
    /// A connection attempt, or an answer, that takes longer fails the call.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    /// Never the password, nor the URL's (which may hold one).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted(&self.url))
            .field("installation", &self.installation)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL with its password (if any) replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<not a URL>".into(),
    }
}

#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
}

/// `KEYS[1]` token key → `{token value, family fields…}`, or nil. The family's key is
/// `ARGV[1]` (the prefix) + `f:` + the id the token names.
const FIND: &str = r#"
local token = redis.call('GET', KEYS[1])
if not token then return false end
local id = string.match(token, '^%d+:(.+)$')
if not id then return {token} end
local family = redis.call('HMGET', ARGV[1] .. 'f:' .. id, 'generation', 'revoked', 'family')
return {token, family[1], family[2], family[3]}
"#;

/// `KEYS[1]` family, `KEYS[2]` its first token, `KEYS[3]` the sessions of its client and
/// subject; `ARGV`: generation, revoked, JSON, token value, expiry (ms since the epoch),
/// the family's id, the prefix. The sessions set lives as long as its longest family
/// (`PEXPIRETIME` is -1 for a new set; Redis 7.0 or newer). A set member outlives its
/// family (Redis expires keys, not members), and a subject that logs in more often than
/// its families expire keeps the set alive for ever: each login drops up to two members
/// whose family is gone, picked at random, so the set stays within about twice the
/// families that exist instead of growing with every login ever made.
const CREATE: &str = r#"
redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'revoked', ARGV[2], 'family', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], ARGV[4], 'PXAT', ARGV[5])
for _, id in ipairs(redis.call('SRANDMEMBER', KEYS[3], 2)) do
  if redis.call('EXISTS', ARGV[7] .. 'f:' .. id) == 0 then
    redis.call('SREM', KEYS[3], id)
  end
end
redis.call('SADD', KEYS[3], ARGV[6])
if redis.call('PEXPIRETIME', KEYS[3]) < tonumber(ARGV[5]) then
  redis.call('PEXPIREAT', KEYS[3], ARGV[5])
end
return 1
"#;

/// `KEYS[1]` family, `KEYS[2]` the next token, `KEYS[3]` the log of ended sessions;
/// `ARGV`: expected generation and revoked, next generation, revoked and JSON, token
/// value, expiry (ms), then, when the write ends the family, the log's append (as
/// [`super::redis_sessions`] appends: how long entries are kept, the entry). 1 written, 0 lost.
/// The first write is the first command that can meet `maxmemory`, so a full Redis
/// refuses the whole script and nothing is half-written.
const SWAP: &str = concat!(
    append_lua!(),
    r#"
local stored = redis.call('HMGET', KEYS[1], 'generation', 'revoked', 'family')
if not stored[1] and not stored[2] and not stored[3] then return 0 end
if not stored[1] or not stored[2] or not stored[3] then
  return redis.error_reply('CORRUPT the family record lacks fields')
end
if stored[1] ~= ARGV[1] or stored[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'generation', ARGV[3], 'revoked', ARGV[4], 'family', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
if ARGV[3] ~= ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[6], 'PXAT', ARGV[7])
end
if ARGV[9] then
  append(KEYS[3], ARGV[8], ARGV[9])
end
return 1
"#
);

impl RedisStore {
    /// A store that connects at its first call and reconnects by itself: a Redis that is
    /// down at start makes the token endpoint answer 503 until it is back, rather than
    /// keeping authplane from starting. Fails only on a URL that does not parse.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        Ok(Self {
            connection: connect(settings)?,
            prefix: prefix(&settings.installation),
        })
    }

    /// What in this Redis's configuration can lose families, for the log at start: an
    /// evicting `maxmemory-policy` (families and superseded tokens' hashes dropped under
    /// memory pressure: a replayed stolen token would be merely unknown) and no
    /// append-only file (a restart loses what changed since the last snapshot). Empty when
    /// all is well, and when Redis does not let us read its configuration (managed
    /// services often refuse `CONFIG`).
    pub async fn advice(&self) -> Result<Vec<String>, StoreError> {
        let mut advice = Vec::new();
        for (name, safe, why) in [
            (
                "maxmemory-policy",
                "noeviction",
                "Redis may evict token sessions under memory pressure (then a replayed stolen refresh token is unknown instead of ending its session): set maxmemory-policy noeviction",
            ),
            (
                "appendonly",
                "yes",
                "Redis keeps no append-only file: a restart loses the token sessions changed since its last snapshot: set appendonly yes",
            ),
        ] {
            let mut connection = self.connection.clone();
            let answer: Result<Vec<String>, RedisError> = ::redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut connection)
                .await;
            match answer {
                Ok(pair) => {
                    if pair.get(1).is_some_and(|value| value != safe) {
                        advice.push(why.to_owned());
                    }
                }
                Err(e) if e.code().is_some() => {} // refused (NOPERM, unknown command)
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(advice)
    }

    fn family_key(&self, id: &str) -> String {
        format!("{}f:{id}", self.prefix)
    }

    /// The ids of the families of one client and subject (a newline cannot occur in a
    /// client id, so no two pairs share a key).
    fn sessions_key(&self, client: &str, subject: &str) -> String {
        format!("{}s:{client}\n{subject}", self.prefix)
    }

    fn token_key(&self, token: &TokenHash) -> String {
        format!("{}t:{token}", self.prefix)
    }

    /// `generation:id`, what a token's key holds.
    fn token_value(family: &Family) -> String {
        format!("{}:{}", family.generation, family.id)
    }

    async fn run(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        match invocation.invoke_async(&mut connection).await {
            Err(e) if stale(&e) => invocation
                .invoke_async(&mut connection)
                .await
                .map_err(failed),
            answer => answer.map_err(failed),
        }
    }

    async fn fields(&self, id: &str) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut command = ::redis::cmd("HMGET");
        command
            .arg(self.family_key(id))
            .arg(&["generation", "revoked", "family"]);
        let mut connection = self.connection.clone();
        match command.query_async(&mut connection).await {
            Err(e) if stale(&e) => command.query_async(&mut connection).await.map_err(failed),
            answer => answer.map_err(failed),
        }
    }
}

/// A connection to the Redis of `settings` that connects at its first call and
/// reconnects by itself, each call bounded by `settings.timeout`. Fails only on a URL
/// that does not parse. The family store and the shared rate limits each hold one.
pub fn connect(settings: &RedisSettings) -> Result<ConnectionManager, StoreError> {
    let shown = redacted(&settings.url);
    let client = client(settings)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        // A reconnection is tried at the next call; calls do not queue behind retries.
        .set_number_of_retries(1)
        .set_max_delay(settings.timeout);
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| StoreError::Unavailable(format!("{shown}: {e}")))
}

/// The connection broke (Redis restarted, a proxy closed it): the manager has started a
/// new one, and the call is tried once more on it. Safe for every call: reads change
/// nothing, a family's creation writes the same again, and a compare-and-set that
/// landed before the break loses the second time (the refresh then reads what landed).
fn stale(e: &RedisError) -> bool {
    e.is_connection_dropped() || (e.is_io_error() && !e.is_timeout())
}

/// A client for `settings` (its URL, password and CA); connects at its first use.
pub(super) fn client(settings: &RedisSettings) -> Result<Client, StoreError> {
    let shown = redacted(&settings.url);
    let info = settings.url.as_str().into_connection_info().map_err(|e| {
        StoreError::Unavailable(format!("the token store URL {shown} is not usable: {e}"))
    })?;
    let info = match &settings.password {
        Some(password) => {
            let redis = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(redis)
        }
        None => info,
    };
    let client = match &settings.ca {
        Some(ca) => Client::build_with_tls(
            info,
            ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => Client::open(info),
    };
    let client = client.map_err(|e| {
        StoreError::Unavailable(format!("the token store URL {shown} is not usable: {e}"))
    })?;
    Ok(client)
}

/// The store every process of one installation shares (dev mode and `authplane run`
/// alike), under the deadline `settings.timeout`. It connects at its first call: a Redis
/// that is down answers 503 until it is back. A URL that cannot be used is logged and
/// answers 503: everything else serves on. Redis's own configuration is checked in the
/// background and what can lose sessions is logged as a warning.
pub fn shared(settings: &RedisSettings) -> Arc<dyn FamilyStore> {
    let shown = redacted(&settings.url);
    match RedisStore::new(settings) {
        Ok(store) => {
            tracing::info!(
                store = shown.as_str(),
                installation = settings.installation.as_str(),
                "token endpoint served at <issuer>/token"
            );
            let checked = store.clone();
            tokio::spawn(async move {
                for advice in checked.advice().await.unwrap_or_default() {
                    tracing::warn!(store = shown.as_str(), "{advice}");
                }
            });
            Arc::new(Timed::new(store, settings.timeout))
        }
        Err(e) => {
            tracing::error!(
                store = shown.as_str(),
                error = %e,
                "the token store cannot be used: the token endpoint answers 503 (everything else is served)"
            );
            Arc::new(Unavailable(format!(
                "the token store {shown} cannot be used"
            )))
        }
    }
}

/// The prefix of an installation's keys. The installation name is kept readable (for
/// `redis-cli --scan`) but anything outside `[A-Za-z0-9._/-]` becomes `_`, so that it can
/// never forge the `:` that separates the parts.
pub fn prefix(installation: &str) -> String {
    let clean: String = installation
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("authplane:{clean}:")
}

/// The scripts, hashed once: redis-rs sends `EVALSHA`, and the body only when Redis does
/// not know it yet (after a restart).
static FIND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FIND));
static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE));
static SWAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SWAP));

impl FamilyStore for RedisStore {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let json = encode(family)?;
            let generation = family.generation.to_string();
            let token = Self::token_value(family);
            let expiry = expiry_ms(family).to_string();
            self.run(
                &CREATE_SCRIPT,
                &[
                    &self.family_key(&family.id),
                    &self.token_key(&family.current),
                    &self.sessions_key(&family.client, &family.subject),
                ],
                &[
                    &generation,
                    revoked(family),
                    &json,
                    &token,
                    &expiry,
                    &family.id,
                    &self.prefix,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        Box::pin(async move {
            let answer = self
                .run(&FIND_SCRIPT, &[&self.token_key(&token)], &[&self.prefix])
                .await?;
            let Some(parts) = strings(answer)? else {
                return Ok(None);
            };
            let (generation, id) = parse_token(&parts[0])?;
            let family = match parts.get(1..4) {
                Some([Some(stored_generation), Some(stored_revoked), Some(json)]) => {
                    decode(&id, stored_generation, stored_revoked, json)?
                }
                Some([None, None, None]) => {
                    return Err(StoreError::Corrupt(format!(
                        "a token of family {id} outlived its family"
                    )));
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "the record of family {id} lacks fields"
                    )));
                }
            };
            Ok((now < family.forget_after()).then_some(Found { family, generation }))
        })
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        Box::pin(async move {
            let fields = self.fields(id).await?;
            let family = match fields.as_slice() {
                [None, None, None] => return Ok(None),
                [Some(generation), Some(revoked), Some(json)] => {
                    decode(id, generation, revoked, json)?
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "the record of family {id} lacks fields"
                    )));
                }
            };
            Ok((now < family.forget_after()).then_some(family))
        })
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let json = encode(next)?;
            let (expected_generation, next_generation) =
                (expected.generation.to_string(), next.generation.to_string());
            let token = Self::token_value(next);
            let expiry = expiry_ms(next).to_string();
            let append = ended.map(append_args);
            let mut args = vec![
                expected_generation.as_str(),
                revoked(expected),
                &next_generation,
                revoked(next),
                &json,
                &token,
                &expiry,
            ];
            args.extend(append.iter().flatten().map(String::as_str));
            let written = self
                .run(
                    &SWAP_SCRIPT,
                    &[
                        &self.family_key(&next.id),
                        &self.token_key(&next.current),
                        &stream_key(&self.prefix),
                    ],
                    &args,
                )
                .await?;
            match written {
                Value::Int(1) => Ok(true),
                Value::Int(0) => Ok(false),
                other => Err(StoreError::Corrupt(format!(
                    "the compare-and-set answered {}",
                    shape(&other)
                ))),
            }
        })
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        Box::pin(async move {
            let key = self.sessions_key(client, subject);
            let mut command = ::redis::cmd("SMEMBERS");
            command.arg(&key);
            let mut connection = self.connection.clone();
            let ids: Vec<String> = match command.query_async(&mut connection).await {
                Err(e) if stale(&e) => command.query_async(&mut connection).await,
                answer => answer,
            }
            .map_err(failed)?;
            let mut found = Vec::new();
            for id in ids {
                // A family gone before its set (expired with a shorter lifetime than a
                // sibling's) is skipped; its id leaves the set with the set.
                let Some(family) = self.family(&id, now).await? else {
                    continue;
                };
                if family.client != client || family.subject != subject {
                    return Err(StoreError::Corrupt(format!(
                        "family {id} is listed under another client or subject"
                    )));
                }
                if found.len() == MAX_SESSIONS_LISTED {
                    return Err(StoreError::Unavailable(format!(
                        "more than {MAX_SESSIONS_LISTED} sessions of one subject of client {client}"
                    )));
                }
                found.push(family);
            }
            found.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
            Ok(found)
        })
    }

    /// Redis forgets by itself: every key expires with its family.
    fn purge(&self, _: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

fn revoked(family: &Family) -> &'static str {
    if family.revoked.is_some() { "1" } else { "0" }
}

/// The family's forget-after in milliseconds since the epoch; at least 1 (`PXAT 0` is
/// refused), and a time in the past makes Redis drop the key at once.
fn expiry_ms(family: &Family) -> i64 {
    family.forget_after().as_millisecond().max(1)
}

fn encode(family: &Family) -> Result<String, StoreError> {
    serde_json::to_string(family)
        .map_err(|e| StoreError::Corrupt(format!("family {}: {e}", family.id)))
}

/// A family from its hash's fields, checked against the fields the script compares
/// (were they to disagree, the compare-and-set would compare something else than what
/// the refresh decided on).
fn decode(id: &str, generation: &[u8], revoked: &[u8], json: &[u8]) -> Result<Family, StoreError> {
    let family: Family = serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt(format!("family {id}: {e}")))?;
    let consistent = family.id == id
        && generation == family.generation.to_string().as_bytes()
        && revoked == self::revoked(&family).as_bytes();
    if !consistent {
        return Err(StoreError::Corrupt(format!(
            "the record of family {id} disagrees with itself"
        )));
    }
    Ok(family)
}

/// `generation:id` of a token's key.
fn parse_token(value: &Option<Vec<u8>>) -> Result<(u64, String), StoreError> {
    let bad = || StoreError::Corrupt("a token record does not read".into());
    let value = value.as_deref().ok_or_else(bad)?;
    let value = std::str::from_utf8(value).map_err(|_| bad())?;
    let (generation, id) = value.split_once(':').ok_or_else(bad)?;
    let generation = generation.parse().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((generation, id.to_owned()))
}

/// A script's array answer as optional byte strings; `None` for a nil answer.
fn strings(value: Value) -> Result<Option<Vec<Option<Vec<u8>>>>, StoreError> {
    let items = match value {
        Value::Nil => return Ok(None),
        Value::Array(items) => items,
        other => {
            return Err(StoreError::Corrupt(format!(
                "a lookup answered {}",
                shape(&other)
            )));
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes)),
            Value::SimpleString(text) => Ok(Some(text.into_bytes())),
            other => Err(StoreError::Corrupt(format!(
                "a lookup answered {}",
                shape(&other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// What kind of answer, never its content (which could be anything someone wrote).
fn shape(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) => "a string",
        Value::Array(_) => "an array",
        _ => "an unexpected value",
    }
}

/// Redis's errors as the store's: a key of the wrong type, or a record our script finds
/// broken, is corrupt; a full Redis says so; everything else (refused, dropped, timed
/// out, not authenticated, read-only replica) is unavailable.
fn failed(e: RedisError) -> StoreError {
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    if code == "WRONGTYPE"
        || text.contains("WRONGTYPE")
        || code == "CORRUPT"
        || text.contains("CORRUPT")
    {
        return StoreError::Corrupt(format!("Redis holds a record of the wrong shape: {text}"));
    }
    if code == "OOM" || text.contains("OOM command not allowed") {
        return StoreError::Unavailable(format!(
            "Redis is full (maxmemory reached) and refuses writes: {text}"
        ));
    }
    if e.is_timeout() {
        return StoreError::Unavailable(format!("Redis did not answer in time: {text}"));
    }
    StoreError::Unavailable(format!("Redis: {text}"))
}
