//! What the two drivers share, so that dev mode and the operator have one shape: a key
//! store ([`keys::KeyStore`]: the state folder, a Secret) and the one path that brings a
//! SigningKey up to date through it; a rollout store ([`rollouts::RolloutStore`]: a state
//! file, the AuthPolicy's status) and the one path that moves a stepped rollout on.

pub mod keys;
pub mod rollouts;
pub mod serve;
