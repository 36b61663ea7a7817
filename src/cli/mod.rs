//! What the command-line tools do, apart from parsing flags: checking flag values,
//! editing dev-mode manifests the way `kubectl annotate`/`patch` edits objects, and
//! reading keys and policies from a cluster. `main.rs` only wires these to clap.

pub mod cluster;
pub mod flags;
pub mod manifest_edit;
pub mod revocations;
