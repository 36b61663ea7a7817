//! Signing keys: algorithms, key material, JWKs and the lifecycle planner. Pure: no I/O
//! beyond the system random generator used to make new keys.

mod algorithm;
pub mod jwk;
pub mod lifecycle;
mod material;
pub mod store;

pub use algorithm::Algorithm;
pub use jwk::PublicJwk;
pub use material::{KeyError, KeyMaterial};
