//! The Kubernetes driver: the same core as dev mode, with keys in Secrets.

pub mod lease;
pub mod signing_keys;
