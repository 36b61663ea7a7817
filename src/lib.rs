//! authplane: JWT signing keys with safe rotation, JWKS and OIDC discovery, staged JWT
//! enforcement, for Kubernetes and for a local folder.
//!
//! The pure core is the `authplane-core` crate, re-exported here under the same names
//! (`api`, `keys`, `policy`, `index`, ...). This crate is the runtime around it: `dev` is
//! the folder driver and `operator` the Kubernetes driver, both feeding the core's
//! index and both built on `driver` (the key store and rollout store traits, the one
//! path each takes through them, and the serving start-up); `registry` holds the published snapshot and what outlives it; `external`
//! fetches external issuers' key sets; `server` serves the snapshot over HTTP; `tokens` keeps the token service's
//! refresh-token families (the store trait and its implementations);
//! `metrics`, `tls`; `cli` holds what the commands share. The README's layout section is
//! the longer map.

pub use authplane_core::{
    admission, api, attach, clock, external_quota, index, issuer_claims, keys, policy, reconcile,
    refresh, revocation, snapshot, token, token_clients, token_endpoint, token_review,
};

pub mod cli;
pub mod dev;
pub mod driver;
pub mod external;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod server;
pub mod tls;
pub mod tokens;
