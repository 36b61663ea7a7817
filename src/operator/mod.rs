//! The Kubernetes driver: the same core as dev mode, with keys in Secrets.

pub mod signing_keys;
