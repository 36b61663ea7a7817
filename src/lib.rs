//! authplane: JWT signing keys with safe rotation, JWKS and OIDC discovery, for
//! Kubernetes and for a local folder.
//!
//! `keys` and `api` are the pure core; `dev` is the folder driver; `server` serves the
//! read-only [`registry::Registry`] over HTTP.

pub mod admission;
pub mod api;
pub mod cli;
pub mod clock;
pub mod dev;
pub mod external;
pub mod keys;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod tls;
pub mod token;
