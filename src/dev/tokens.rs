//! Dev mode's token endpoint: the embedded store in the state folder (or a file or a
//! Redis that `--token-store` names), client secrets
//! from the state folder (`authplane token client-secret`), Revocations written as
//! manifests (as `/revoke` does), and a purge of expired families now and then.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::state::StateStore;
use crate::api::ObjectKey;
use crate::clock::Clock;
use crate::server::revoke::RevocationWriter;
use crate::server::token::{ClientSecrets, TokenEndpoint};
use crate::token_endpoint::secret::StoredSecret;
use crate::tokens::location::{CaCertificates, Password, StoreLocation};
use crate::tokens::redis::RedisSettings;
use crate::tokens::{Metered, serving};

/// The store's file in the state folder, unless `--token-store` names another.
pub const STORE_FILE: &str = "tokens.redb";

/// `--no-token-endpoint`, `--token-store`, `--token-store-password-file`, `--token-rate`.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Serve `POST {issuer}/token` (default: yes).
    pub enabled: bool,
    /// The store: a file or a Redis; default the file `<state>/tokens.redb`.
    pub store: Option<StoreLocation>,
    /// The Redis password (replacing the URL's), from `--token-store-password-file`.
    pub password: Option<Password>,
    /// The CA of a `rediss://` store, from `--token-store-ca-file` (default: the system's
    /// roots).
    pub ca: Option<CaCertificates>,
    /// Failed requests per client address, and rotations per family, per minute.
    pub rate_per_minute: u32,
    /// What the embedded store holds in memory (`--session-memory-mib`,
    /// `--session-memory-per-namespace-mib`, `--max-sessions-per-client`).
    pub session_limits: crate::tokens::embedded::SessionLimits,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            store: None,
            password: None,
            ca: None,
            rate_per_minute: crate::server::token::DEFAULT_TOKEN_RATE,
            session_limits: Default::default(),
        }
    }
}

/// Client secrets as `authplane token client-secret` keeps them: read at each use, so a
/// new secret works (and the old one stops) at once.
struct FolderSecrets(StateStore);

impl ClientSecrets for FolderSecrets {
    fn secret<'a>(
        &'a self,
        client: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, String>> {
        let store = self.0.clone();
        let client = client.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.load_client_secret(&client))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }
}

/// The endpoint, or `None` when turned off. A store that cannot be opened is logged and
/// answers 503: the rest of dev mode serves on.
#[allow(clippy::too_many_arguments)]
pub async fn endpoint(
    settings: &TokenSettings,
    state: &StateStore,
    writer: Arc<dyn RevocationWriter>,
    trusted_proxies: crate::server::client_address::TrustedProxies,
    clock: Arc<dyn Clock>,
    registry: Arc<crate::registry::Registry>,
    metrics: &Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Option<Arc<TokenEndpoint>> {
    if !settings.enabled {
        return None;
    }
    let mut shared = None;
    let opened = match &settings.store {
        Some(StoreLocation::Redis(url)) => {
            let redis = redis_settings(url, settings, state.root());
            shared =
                crate::server::shared_limits::SharedLimits::new(&redis, metrics.tokens.clone())
                    .ok()
                    .map(Arc::new);
            serving::Opened {
                families: Arc::new(Metered::new(
                    crate::tokens::redis::shared(&redis),
                    metrics.tokens.clone(),
                )),
                sessions: crate::tokens::redis_sessions::shared_log(&redis),
            }
        }
        Some(StoreLocation::File(path)) => {
            serving::open_embedded(
                path.clone(),
                settings.session_limits,
                metrics.tokens.clone(),
            )
            .await
        }
        None => {
            serving::open_embedded(
                state.root().join(STORE_FILE),
                settings.session_limits,
                metrics.tokens.clone(),
            )
            .await
        }
    };
    let store = opened.families;
    // Redis forgets by itself: its purge does not even call it.
    serving::keep_purged(store.clone(), clock.clone(), shutdown.clone()).await;
    if let Some(log) = &opened.sessions {
        crate::tokens::session_log::follow(log.clone(), registry, metrics.clone(), clock, shutdown)
            .await;
    }
    let mut endpoint = TokenEndpoint::new(store, writer, settings.rate_per_minute);
    endpoint.sessions = opened.sessions;
    endpoint.secrets = Some(Arc::new(FolderSecrets(state.clone())));
    endpoint.trusted_proxies = trusted_proxies;
    if let Some(shared) = shared {
        endpoint.share_limits(shared);
    }
    Some(Arc::new(endpoint))
}

/// A Redis shared by every dev process of the same state folder (their families, their
/// ended sessions and their rate limits): the folder is the installation (two folders,
/// two sets of keys in one Redis). It connects at its first call: a Redis that is down
/// answers 503 until it is back, and the limits are each process's own meanwhile.
fn redis_settings(url: &str, tokens: &TokenSettings, state: &Path) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        password: tokens.password.as_ref().map(|p| p.expose().to_owned()),
        ca: tokens.ca.as_ref().map(|ca| ca.pem().to_vec()),
        installation: installation(state),
        timeout: serving::STORE_DEADLINE,
    }
}

/// `dev-` and a digest of the state folder's absolute path: the same for every process of
/// one folder, different for another folder, and no path in Redis.
fn installation(state: &Path) -> String {
    let absolute = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        absolute.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("dev-{hex}")
}
