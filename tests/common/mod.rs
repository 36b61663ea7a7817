//! A dev-mode server on a loopback port, with its folders, for integration tests.
#![allow(dead_code)] // each test binary uses a different part

pub mod fake_apiserver;
pub mod grpc;
pub mod https;
pub mod mock_api;
pub mod provider;
pub mod redis_server;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authplane::clock::{Clock, SystemClock};
use authplane::dev::{self, DevConfig, DevServer, Tuning};
use serde_json::Value;
use tempfile::TempDir;

/// How long a change may take to show: the promise is 1 s; the margin absorbs a loaded CI.
pub const CHANGE_DEADLINE: Duration = Duration::from_secs(5);

pub struct Dev {
    pub server: Option<DevServer>,
    pub dir: TempDir,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    pub decision_cache_size: usize,
    pub tuning: Tuning,
    /// `--unconfined-issuer-namespaces`, from the next (re)start on.
    pub unconfined_issuer_namespaces: Vec<String>,
    /// `--external-url`, from the next (re)start on (default: the listener's URL,
    /// whose port changes at each restart).
    pub fixed_external_url: Option<String>,
    /// Listener limits and what the server trusts; [`test_settings`] unless a test says.
    pub serving: authplane::driver::serve::Settings,
    /// The token endpoint's settings (its store, its budgets).
    pub tokens: authplane::dev::tokens::TokenSettings,
    /// An admin listener (`--admin-listen`), from the next (re)start on.
    pub admin: bool,
}

/// The serving settings of test servers: the defaults, but external key sets may be
/// refetched every second (the production floor is 30 s), so that tests of refetching
/// do not wait.
pub fn test_settings() -> authplane::driver::serve::Settings {
    let mut settings = authplane::driver::serve::Settings::default();
    settings.fetch.refresh_floor = Duration::from_secs(1);
    settings
}

impl Dev {
    pub async fn start(manifests: &[(&str, &str)]) -> Dev {
        Self::start_with(manifests, Arc::new(SystemClock), 1000).await
    }

    /// On a given clock, with a given verified-token cache size (0: off).
    pub async fn start_with(
        manifests: &[(&str, &str)],
        clock: Arc<dyn Clock>,
        decision_cache_size: usize,
    ) -> Dev {
        Self::start_tuned(manifests, clock, decision_cache_size, Tuning::default()).await
    }

    /// With given serving settings (limits, trusted proxies, fetching).
    pub async fn start_serving(
        manifests: &[(&str, &str)],
        serving: authplane::driver::serve::Settings,
    ) -> Dev {
        Self::start_full(
            manifests,
            Arc::new(SystemClock),
            1000,
            Tuning::default(),
            serving,
            Default::default(),
        )
        .await
    }

    /// With given serving settings and token endpoint settings, on a given clock.
    pub async fn start_with_tokens(
        manifests: &[(&str, &str)],
        clock: Arc<dyn Clock>,
        serving: authplane::driver::serve::Settings,
        tokens: authplane::dev::tokens::TokenSettings,
    ) -> Dev {
        Self::start_full(manifests, clock, 1000, Tuning::default(), serving, tokens).await
    }

    /// With a given way of noticing changes (rescan interval, watcher on or off).
    pub async fn start_tuned(
        manifests: &[(&str, &str)],
        clock: Arc<dyn Clock>,
        decision_cache_size: usize,
        tuning: Tuning,
    ) -> Dev {
        Self::start_full(
            manifests,
            clock,
            decision_cache_size,
            tuning,
            test_settings(),
            Default::default(),
        )
        .await
    }

    async fn start_full(
        manifests: &[(&str, &str)],
        clock: Arc<dyn Clock>,
        decision_cache_size: usize,
        tuning: Tuning,
        serving: authplane::driver::serve::Settings,
        tokens: authplane::dev::tokens::TokenSettings,
    ) -> Dev {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        for (name, text) in manifests {
            std::fs::write(dir.path().join("manifests").join(name), text).unwrap();
        }
        let mut dev = Dev {
            server: None,
            dir,
            http: reqwest::Client::new(),
            clock,
            decision_cache_size,
            tuning,
            unconfined_issuer_namespaces: Vec::new(),
            fixed_external_url: None,
            serving,
            tokens,
            admin: false,
        };
        dev.restart().await;
        dev
    }

    /// Starts (again) on the same folders.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        let config = DevConfig {
            manifests: self.manifests(),
            state: self.state(),
            listen: "127.0.0.1:0".parse().unwrap(),
            external_url: self.fixed_external_url.clone(),
            decision_cache_size: self.decision_cache_size,
            tls: None,
            revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
            unconfined_issuer_namespaces: self.unconfined_issuer_namespaces.clone(),
            serving: self.serving.clone(),
            tokens: self.tokens.clone(),
            admin_listen: self.admin.then(|| "127.0.0.1:0".parse().unwrap()),
        };
        self.server = Some(
            dev::start_tuned(config, self.clock.clone(), self.tuning.clone())
                .await
                .unwrap(),
        );
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and `kubectl`-style tools do.
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.manifests().join(name)).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.as_ref().unwrap().base_url())
    }

    /// `http://<admin listener>`, when [`Dev::admin`] was set at the last (re)start.
    pub fn admin_url(&self) -> String {
        let addr = self.server.as_ref().unwrap().admin_addr().unwrap();
        format!("http://{addr}")
    }

    pub fn external_url(&self) -> String {
        self.server.as_ref().unwrap().external_url().to_owned()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// The kids served at `path` (a JWKS URL path), or `None` if it is not served.
    pub async fn kids(&self, path: &str) -> Option<Vec<String>> {
        let response = self.get(path).await;
        if response.status() == 404 {
            return None;
        }
        let jwks: Value = response.json().await.unwrap();
        Some(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect(),
        )
    }

    /// The value of one metric sample, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

/// Polls `check` until it returns `Some`, failing after `deadline`. Waiting on a
/// condition, never on a guess of how long something takes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn signing_key(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    )
}

pub fn read_state(state: &Path, namespace: &str, name: &str) -> String {
    std::fs::read_to_string(state.join(namespace).join(format!("{name}.json"))).unwrap()
}

impl Dev {
    /// The key set of a SigningKey, from the state folder.
    pub fn keys(&self, namespace: &str, name: &str) -> authplane::keys::lifecycle::KeySet {
        let store = authplane::dev::state::StateStore::new(self.state());
        let id = authplane::api::ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        authplane::keys::store::from_data(&store.load(&id).unwrap().unwrap()).unwrap()
    }

    /// A token signed by the Active key of `namespace/name`, issued by its default issuer.
    pub fn mint(&self, key: (&str, &str), sub: &str, audiences: &[&str], claims: Value) -> String {
        let request = authplane::token::MintRequest {
            subject: sub.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ttl: jiff::SignedDuration::from_mins(5),
            claims: claims.as_object().cloned().unwrap_or_default(),
            session: None,
        };
        let issuer = format!("{}/{}/{}", self.external_url(), key.0, key.1);
        authplane::token::mint(
            &self.keys(key.0, key.1),
            &issuer,
            &request,
            jiff::Timestamp::now(),
        )
        .unwrap()
    }

    /// GET `path` with the given headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }
}

/// A user key whose bucket is (or is not) under enforcement at `percentage`.
pub fn user_in(salt: &str, percentage: f64, enforced: bool) -> String {
    use authplane::policy::rollout;
    let limit = rollout::percentage_to_buckets(percentage);
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|key| rollout::is_enforced(rollout::bucket(salt, key), limit) == enforced)
        .unwrap()
}

impl Dev {
    /// Signs arbitrary claims with the Active key of `namespace/name`, `kid` in the header.
    pub fn sign(&self, key: (&str, &str), claims: &Value) -> String {
        let keys = self.keys(key.0, key.1);
        let active = keys.active(jiff::Timestamp::now()).unwrap();
        let mut header = jsonwebtoken::Header::new(active.material.alg().to_jwt());
        header.kid = Some(active.material.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &active.material.encoding_key().unwrap()).unwrap()
    }

    /// Standard claims for `sub` from the default issuer of `namespace/name`, valid now.
    pub fn claims(&self, key: (&str, &str), sub: &str, audience: &str) -> Value {
        let now = jiff::Timestamp::now().as_second();
        serde_json::json!({
            "iss": format!("{}/{}/{}", self.external_url(), key.0, key.1),
            "sub": sub, "aud": audience, "iat": now, "nbf": now, "exp": now + 300,
        })
    }
}

/// The same token with one signature character changed (in the middle: the last one
/// may only carry padding bits).
pub fn tamper(token: &str) -> String {
    let cut = token.rfind('.').unwrap() + 10;
    let mut bytes = token.as_bytes().to_vec();
    bytes[cut] = if bytes[cut] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// reqwest's rustls needs a process-wide provider, as `main` installs. Every test that
/// makes an HTTP client calls this first: under nextest each test is a process of its
/// own, and no other test installs it for it.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The AuthPolicy `shop/payments` that the decision tests share (`/authz` and gRPC
/// `Check` are compared on it): key `auth/web`, audience `payments`, the token in the
/// `Authorization` header or the `access_token` cookie, `roles` must contain `payments`,
/// `sub` and `email` forwarded; `extra` is appended under `spec`.
pub fn payments_policy(rollout: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {{name: payments, namespace: shop}}
spec:
  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]
  audiences: [payments]
  tokenSources:
    headers: [{{name: Authorization, prefix: "Bearer "}}]
    cookies: [access_token]
  requiredClaims: [{{claim: roles, contains: payments}}]
  forwardClaims: {{sub: X-Auth-Subject, email: X-Auth-Email}}
  rollout: {rollout}
{extra}"#
    )
}
