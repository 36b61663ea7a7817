//! What one client may hold of a listener: time to send a request's headers and body,
//! how long an idle keep-alive connection stays, the size of a request's headers, and how
//! many connections a listener serves at once. The same limits apply to every listener
//! (plain, HTTPS, admin).
//!
//! The defaults bound the memory a crowd of hostile clients can pin: each connection holds
//! at most `max_header_bytes` of unparsed headers, so 4,096 connections hold at most
//! 128 MiB, inside the chart's 256 MiB limit with the rest of the process.

use std::time::Duration;

use clap::builder::TypedValueParser as _;

/// The limits of every listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's start, or from the first byte of a request after an idle
    /// period, until the request's headers are complete. TLS handshakes too.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Reading a request body (admission reviews, TokenReviews, revocations), whole.
    pub body_timeout: Duration,
    /// A request's headers at most (hyper's read buffer): larger ones are refused (431).
    pub max_header_bytes: usize,
    /// Connections served at once per listener; more wait in the listen backlog.
    pub max_connections: usize,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the idle timeouts of the usual clients' pools (Go's transport, which the
/// apiserver and Traefik use: 90 s; nginx upstream keep-alive: 60 s), so that the client
/// closes an idle connection first and never sends a request on one being closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `large_client_header_buffers` allow 4 x 8 KiB; Envoy's default is 60 KiB.
/// Forward-auth requests carry the original request's cookies: 32 KiB lets those through
/// and keeps a slow client's buffer small.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// hyper refuses (panics on) a smaller read buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The flags of [`Limits`], shared by `run` and `dev`.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitFlags {
    /// Time a client has to send a request's headers (from its first byte, or from the
    /// connection's start) and to finish a TLS handshake; then the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection stays open waiting for its next request.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to send a whole request body (admission reviews, TokenReviews,
    /// revocations); then 408.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub body_timeout: Duration,
    /// Largest request headers, in bytes (8192 to 1048576); larger ones get 431.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES,
          value_parser = clap::value_parser!(u32).range(MIN_HEADER_BYTES as i64..=1024 * 1024).map(|n| n as usize))]
    pub max_header_bytes: usize,
    /// Connections each listener serves at once; more wait in the listen backlog until
    /// one closes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,
}

impl LimitFlags {
    pub fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
        }
    }
}

/// A duration flag (`10s`, `2m`, `1h30m`) above zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let parsed: crate::api::Duration = text.parse().map_err(|e| format!("{e}"))?;
    let value = parsed.value();
    if value.is_negative() || value.is_zero() {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(value.unsigned_abs())
}
