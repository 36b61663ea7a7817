//! A stand-in OIDC provider on a loopback port: discovery and a JWKS the test controls,
//! and how it answers (normally, failing, with garbage, slowly).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authplane::keys::{Algorithm, KeyMaterial};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    Down,
    Garbage,
    /// Answers after this long (longer than authplane's timeout).
    Slow(Duration),
}

struct Inner {
    keys: Vec<KeyMaterial>,
    behaviour: Behaviour,
    /// The issuer the discovery document names (normally the real one).
    claimed_issuer: Option<String>,
}

#[derive(Clone)]
pub struct Provider {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    pub jwks_fetches: Arc<AtomicUsize>,
}

const TENANT_PATH: &str = "/tenant-1/v2.0";

impl Provider {
    pub async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let provider = Provider {
            base,
            inner: Arc::new(Mutex::new(Inner {
                keys: vec![KeyMaterial::generate(Algorithm::RS256, 2048).unwrap()],
                behaviour: Behaviour::Normal,
                claimed_issuer: None,
            })),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(provider.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        provider
    }

    /// The issuer, as tokens carry it (with a path, as Entra ID's has).
    pub fn issuer(&self) -> String {
        format!("{}{TENANT_PATH}", self.base)
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.inner.lock().unwrap().behaviour = behaviour;
    }

    pub fn claim_issuer(&self, issuer: &str) {
        self.inner.lock().unwrap().claimed_issuer = Some(issuer.to_owned());
    }

    /// Publishes a new key beside the current ones (rotation at the provider); returns it.
    pub fn add_key(&self) -> KeyMaterial {
        let key = KeyMaterial::generate(Algorithm::RS256, 2048).unwrap();
        self.inner.lock().unwrap().keys.push(key.clone());
        key
    }

    /// Stops publishing the oldest key.
    pub fn drop_oldest_key(&self) {
        self.inner.lock().unwrap().keys.remove(0);
    }

    pub fn key(&self, index: usize) -> KeyMaterial {
        self.inner.lock().unwrap().keys[index].clone()
    }

    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// A token for `sub` and audience `api`, signed by `key`, with `kid` in the header.
    pub fn token(&self, key: &KeyMaterial, sub: &str) -> String {
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": "api",
            "iat": now, "nbf": now, "exp": now + 600,
        });
        self.sign(key, key.kid(), &claims)
    }

    pub fn sign(&self, key: &KeyMaterial, kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &key.encoding_key().unwrap()).unwrap()
    }

    /// An AuthPolicy accepting this provider's tokens for audience `api`.
    pub fn policy(&self, refresh: &str) -> String {
        format!(
            "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: api, namespace: shop}}\n\
             spec:\n  issuers:\n  - issuer: {}\n    refresh: {refresh}\n  audiences: [api]\n\
             \x20 rollout: {{mode: Enforce, percentage: 100}}\n",
            self.issuer()
        )
    }
}

async fn serve(State(provider): State<Provider>, request: Request) -> Response {
    let (behaviour, claimed, keys) = {
        let inner = provider.inner.lock().unwrap();
        (
            inner.behaviour,
            inner.claimed_issuer.clone(),
            inner.keys.clone(),
        )
    };
    let path = request.uri().path().to_owned();
    if path == format!("{TENANT_PATH}/.well-known/openid-configuration") {
        let issuer = claimed.unwrap_or_else(|| provider.issuer());
        let document = json!({
            "issuer": issuer,
            "jwks_uri": format!("{}/common/discovery/v2.0/keys", provider.base),
        });
        return axum::Json(document).into_response();
    }
    if path != "/common/discovery/v2.0/keys" {
        return StatusCode::NOT_FOUND.into_response();
    }
    provider.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    match behaviour {
        Behaviour::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Behaviour::Garbage => return (StatusCode::OK, "<html>maintenance</html>").into_response(),
        Behaviour::Slow(delay) => tokio::time::sleep(delay).await,
        Behaviour::Normal => {}
    }
    // Like Entra ID: RSA keys with kid, use and x5t-ish extras, but no alg.
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut jwk = k.public_jwk().to_json(k.kid(), k.alg());
            jwk.as_object_mut().unwrap().remove("alg");
            jwk["x5t"] = "unused".into();
            jwk
        })
        .collect();
    (
        [(header::CACHE_CONTROL, "public, max-age=3600")],
        axum::Json(json!({ "keys": keys })),
    )
        .into_response()
}
