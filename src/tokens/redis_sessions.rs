//! The log of ended sessions in Redis: a stream `<prefix>ended` whose entries hold one
//! field `e` ([`SessionRevocation::encode`]: the SigningKey, a hash of the `sid`, the
//! reason, when, until when; never a token).
//!
//! Every replica follows the stream with `XREAD BLOCK` from the last id it read, on a
//! connection of its own (a blocking read would hold up the families' calls on a shared
//! one): a new entry reaches every replica as soon as Redis has it, and a reconnection
//! resumes from the same id, so nothing is missed (a pub/sub message sent while a
//! replica is reconnecting would be). At start a replica reads the stream from its
//! beginning: every live entry.
//!
//! Expiry by itself: each append trims the entries written more than a day and an hour
//! ago (`XADD … MINID ~`: they lapsed), and the stream key expires an hour after its latest entry
//! lapses. Appends use Redis's own ids and clock, so replicas' clocks neither order
//! entries nor shorten how long they are kept.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Script, Value};
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::sync::{Arc, LazyLock};

use super::StoreError;
use super::redis::{RedisSettings, client, prefix, redacted};
use super::session_log::{Cursor, READ_BATCH, Read, SessionLog};
use crate::revocation::SessionRevocation;
use crate::revocation::sessions::SESSION_REVOCATION_LIFETIME;

/// A Lua function `append(stream, keep, entry)` that appends `entry` to the log `stream`
/// ([`append_args`]: `keep`, how long entries are kept, in ms). By Redis's clock (whose
/// ids are the stream's; authplane's may differ): entries older than `keep` are trimmed,
/// and the stream expires `keep` after its latest entry, an hour after that entry lapses.
/// Shared by [`RECORD`] and the family store's compare-and-set, which appends with the
/// write that ends a family.
macro_rules! append_lua {
    () => {
        r#"
local function append(stream, keep, entry)
  local time = redis.call('TIME')
  local keep_from = math.max(0, time[1] * 1000 + math.floor(time[2] / 1000) - keep)
  redis.call('XADD', stream, 'MINID', '~', string.format('%d', keep_from), '*', 'e', entry)
  redis.call('PEXPIRE', stream, keep)
end
"#
    };
}
pub(super) use append_lua;

/// `KEYS[1]` the stream; `ARGV`: [`append_args`].
const RECORD: &str = concat!(
    append_lua!(),
    r#"
append(KEYS[1], ARGV[1], ARGV[2])
return 1
"#
);

/// The stream of installation `prefix`.
pub(super) fn stream_key(prefix: &str) -> String {
    format!("{prefix}ended")
}

/// What an append of `revocation` passes to Redis: how long entries are kept ([`KEEP`],
/// ms), and the entry.
pub(super) fn append_args(revocation: &SessionRevocation) -> [String; 2] {
    [KEEP.as_millis().to_string(), revocation.encode()]
}

static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD));

/// Entries are trimmed this long after they were written: after they lapse, with an hour
/// to spare for clocks that disagree.
const KEEP: Duration = Duration::from_secs(SESSION_REVOCATION_LIFETIME.as_secs() as u64 + 3600);

pub struct RedisSessionLog {
    /// Appends.
    writes: ConnectionManager,
    /// Blocking reads, by the one follower of this process.
    reads: ConnectionManager,
    key: String,
    timeout: Duration,
}

impl RedisSessionLog {
    /// Connects at its first call, as the family store does.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let shown = redacted(&settings.url);
        let client = client(settings)?;
        let manager = |response: Duration| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1)
                .set_max_delay(settings.timeout);
            ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(|e| StoreError::Unavailable(format!("{shown}: {e}")))
        };
        Ok(Self {
            writes: manager(settings.timeout)?,
            // A blocking read answers after its wait at the latest.
            reads: manager(settings.timeout + super::session_log::WAIT)?,
            key: stream_key(&prefix(&settings.installation)),
            timeout: settings.timeout,
        })
    }
}

/// The log of `settings`' Redis, or `None` (logged) when its URL cannot be used: then
/// the family store cannot be used either, and logouts are written as Revocations.
pub fn shared_log(settings: &RedisSettings) -> Option<Arc<dyn SessionLog>> {
    match RedisSessionLog::new(settings) {
        Ok(log) => Some(Arc::new(log)),
        Err(e) => {
            tracing::error!(error = %e, "the token store's log of ended sessions cannot be used");
            None
        }
    }
}

impl SessionLog for RedisSessionLog {
    fn record<'a>(
        &'a self,
        revocation: &'a SessionRevocation,
        _now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.writes.clone();
            let mut invocation = RECORD_SCRIPT.key(&self.key);
            invocation.arg(&append_args(revocation)[..]);
            let call = invocation.invoke_async::<Value>(&mut connection);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                    "recording an ended session: {e}"
                ))),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the token store did not record an ended session within {:?}",
                    self.timeout
                ))),
            }
        })
    }

    fn read(
        &self,
        after: Cursor,
        wait: Option<Duration>,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        Box::pin(async move {
            let mut command = ::redis::cmd("XREAD");
            command.arg("COUNT").arg(READ_BATCH);
            if let Some(wait) = wait {
                // Never 0: that would wait for ever.
                command.arg("BLOCK").arg(wait.as_millis().max(1) as u64);
            }
            command
                .arg("STREAMS")
                .arg(&self.key)
                .arg(format!("{}-{}", after.0, after.1));
            let mut connection = self.reads.clone();
            let deadline = self.timeout + wait.unwrap_or_default();
            let answer = tokio::time::timeout(
                deadline,
                command.query_async::<Value>(&mut connection),
            )
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "the token store did not answer a read of ended sessions within {deadline:?}"
                ))
            })?
            .map_err(|e| StoreError::Unavailable(format!("reading ended sessions: {e}")))?;
            Ok(parse(answer, after))
        })
    }
}

/// An `XREAD` answer: nil (nothing new), or `[[key, [[id, [field, value, …]], …]]]`
/// (RESP2; a map of key → entries in RESP3). Anything of another shape is counted as
/// malformed, never a panic; an entry whose id does not read cannot move the cursor.
fn parse(answer: Value, after: Cursor) -> Read {
    let mut read = Read {
        next: after,
        ..Read::default()
    };
    let streams: Vec<Value> = match answer {
        Value::Nil => return read,
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => {
            read.malformed += 1;
            return read;
        }
    };
    for entries in streams {
        let Value::Array(entries) = entries else {
            read.malformed += 1;
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                read.malformed += 1;
                continue;
            };
            if parts.len() != 2 {
                read.malformed += 1;
                continue;
            }
            let fields = parts.pop();
            let Some(id) = parts
                .pop()
                .as_ref()
                .and_then(text)
                .and_then(|t| parse_id(&t))
            else {
                read.malformed += 1;
                continue;
            };
            read.next = read.next.max(id);
            match fields.and_then(entry_of) {
                Some(revocation) => read.revocations.push(revocation),
                None => read.malformed += 1,
            }
        }
    }
    read
}

fn entry_of(fields: Value) -> Option<SessionRevocation> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut pairs = fields.chunks_exact(2);
    let value = pairs.find(|pair| text(&pair[0]).as_deref() == Some("e"))?;
    SessionRevocation::decode(&text(&value[1])?)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `milliseconds-sequence`.
fn parse_id(text: &str) -> Option<Cursor> {
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn answers_of_the_wrong_shape_are_counted_and_skipped_never_a_panic() {
        let good = "auth web 00112233445566778899aabbccddeeff logout 1 2";
        let answer = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![
                Value::Array(vec![bulk("5-1"), Value::Array(vec![bulk("e"), bulk(good)])]),
                Value::Array(vec![
                    bulk("6-0"),
                    Value::Array(vec![bulk("e"), bulk("junk")]),
                ]),
                Value::Array(vec![bulk("not-an-id"), Value::Array(vec![])]),
                Value::Int(3),
                Value::Array(vec![bulk("7-0"), Value::Array(vec![bulk("e")])]),
            ]),
        ])]);
        let read = parse(answer, (1, 0));
        assert_eq!(read.revocations.len(), 1);
        assert_eq!(read.malformed, 4);
        assert_eq!(read.next, (7, 0));
        let read = parse(Value::Int(1), (1, 0));
        assert_eq!(
            (read.revocations.len(), read.malformed, read.next),
            (0, 1, (1, 0))
        );
        let read = parse(Value::Nil, (1, 0));
        assert_eq!(
            (read.revocations.len(), read.malformed, read.next),
            (0, 0, (1, 0))
        );
    }
}
