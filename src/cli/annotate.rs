//! Sets one annotation of a SigningKey, as `kubectl annotate` does: what `rotate` and
//! `revoke-key` write.

use crate::api::{ObjectKey, SigningKey};
use crate::cli::error::{self, CliError};
use crate::cli::manifest_edit;
use crate::cli::target::{TargetArgs, cluster_client, edited_note, parse_id};
use crate::dev::manifests::Object;

/// Sets one annotation of a SigningKey: on the cluster, or in the manifests folder. The
/// closure gets the object as it is now.
pub(crate) fn annotate(
    key: &str,
    target: &TargetArgs,
    annotation: impl FnOnce(&ObjectKey, &SigningKey) -> Result<(String, String), CliError>,
) -> Result<(), CliError> {
    let id = parse_id(key, "the SigningKey")?;
    target.announce();
    if let Some(dir) = &target.manifests {
        let mut document = manifest_edit::locate(dir, "SigningKey", &id)?;
        let Object::SigningKey(current) = document.parsed()? else {
            return Err(CliError::Refused(format!(
                "{} does not hold SigningKey {id}",
                document.file.display()
            )));
        };
        let (name, value) = annotation(&id, &current)?;
        document.set_annotation(&name, &value)?;
        let (file, _) = document.save()?;
        println!("SigningKey {id}: {name}={value}");
        eprintln!("{}", edited_note(&file));
        return Ok(());
    }
    let runtime = error::runtime()?;
    runtime.block_on(async {
        let client = cluster_client(target.kubeconfig.as_ref()).await?;
        let api: kube::Api<SigningKey> = kube::Api::namespaced(client, &id.namespace);
        let current = api
            .get(&id.name)
            .await
            .map_err(error::api(format!("reading SigningKey {id}")))?;
        let (name, value) = annotation(&id, &current)?;
        let patch = serde_json::json!({"metadata": {"annotations": {name.clone(): value.clone()}}});
        api.patch(
            &id.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .map_err(error::api(format!("annotating SigningKey {id}")))?;
        println!("SigningKey {id}: {name}={value}");
        Ok(())
    })
}
