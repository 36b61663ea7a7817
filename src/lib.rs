//! authplane: JWT signing keys with safe rotation, JWKS and OIDC discovery, for
//! Kubernetes and for a local folder.
//!
//! `keys`, `api`, `admission` and `reconcile` are pure (no I/O, time passed in);
//! `policy` compiles and decides, but still starts the refresh tasks of external
//! issuers through `external` while compiling (not yet separated). `dev` is the folder
//! driver and `operator` the Kubernetes driver; `server` serves the read-only
//! [`registry::Registry`] over HTTP; `cli` holds what the commands share. The README's
//! layout section is the longer map.

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
pub mod revocation;
pub mod server;
pub mod tls;
pub mod token;
