//! Dev mode's token endpoint: the embedded store in the state folder, client secrets
//! from the state folder (`authplane token client-secret`), Revocations written as
//! manifests (as `/revoke` does), and a purge of expired families now and then.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::state::StateStore;
use crate::api::ObjectKey;
use crate::clock::Clock;
use crate::server::revoke::RevocationWriter;
use crate::server::token::{ClientSecrets, TokenEndpoint};
use crate::token_endpoint::secret::StoredSecret;
use crate::tokens::serving;

/// The store's file in the state folder, unless `--token-store` names another.
pub const STORE_FILE: &str = "tokens.redb";

/// `--no-token-endpoint`, `--token-store`, `--token-rate`.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Serve `POST {issuer}/token` (default: yes).
    pub enabled: bool,
    /// The store's file; default `<state>/tokens.redb`.
    pub store: Option<PathBuf>,
    /// Failed requests per client address, and rotations per family, per minute.
    pub rate_per_minute: u32,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            store: None,
            rate_per_minute: crate::server::token::DEFAULT_TOKEN_RATE,
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
pub async fn endpoint(
    settings: &TokenSettings,
    state: &StateStore,
    writer: Arc<dyn RevocationWriter>,
    trusted_proxy_hops: usize,
    clock: Arc<dyn Clock>,
    metrics: &crate::metrics::Metrics,
    shutdown: watch::Receiver<bool>,
) -> Option<Arc<TokenEndpoint>> {
    if !settings.enabled {
        return None;
    }
    let path = settings
        .store
        .clone()
        .unwrap_or_else(|| state.root().join(STORE_FILE));
    let store = serving::open_embedded(path, metrics.tokens.clone()).await;
    serving::keep_purged(store.clone(), clock, shutdown).await;
    let mut endpoint = TokenEndpoint::new(store, writer, settings.rate_per_minute);
    endpoint.secrets = Some(Arc::new(FolderSecrets(state.clone())));
    endpoint.trusted_proxy_hops = trusted_proxy_hops;
    Some(Arc::new(endpoint))
}
