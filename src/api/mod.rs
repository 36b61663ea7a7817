//! Custom resource types, one file per kind, and the checks every driver applies to them.

pub mod crds;
mod duration;
mod signing_key;
mod validation;

pub use duration::{Duration, DurationError};
pub use signing_key::{
    KeyStatus, ROTATE_AT_ANNOTATION, RotationSpec, SigningKey, SigningKeySpec, SigningKeyStatus,
};
pub use validation::{FieldError, Validate, issuer_path};

pub const GROUP: &str = "authplane.io";
pub const API_VERSION: &str = "authplane.io/v1alpha1";
