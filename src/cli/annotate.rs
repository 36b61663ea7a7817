//! Sets one annotation of a SigningKey, as `kubectl annotate` does: what `rotate` and
//! `revoke-key` write.

use crate::api::{ObjectKey, SigningKey};
use crate::cli::edit::edit;
use crate::cli::error::CliError;
use crate::cli::target::{TargetArgs, edited_note, parse_id};

/// Sets one annotation of a SigningKey: on the cluster, or in the manifests folder. The
/// closure gets the object as it is now.
pub(crate) fn annotate(
    key: &str,
    target: &TargetArgs,
    annotation: impl FnOnce(&ObjectKey, &SigningKey) -> Result<(String, String), CliError>,
) -> Result<(), CliError> {
    let id = parse_id(key, "the SigningKey")?;
    target.announce();
    let mut set = None;
    let edited = edit::<SigningKey>(&id, target, |current| {
        let (name, value) = annotation(&id, current)?;
        let patch = serde_json::json!({"metadata": {"annotations": {name.clone(): value.clone()}}});
        set = Some((name, value));
        Ok(Some(patch))
    })?;
    if let Some((name, value)) = set {
        println!("SigningKey {id}: {name}={value}");
    }
    if let Some((file, in_place)) = &edited.file {
        eprintln!("{}", edited_note(file, *in_place));
    }
    Ok(())
}
