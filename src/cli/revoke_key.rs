//! `authplane revoke-key`: revokes one key of a SigningKey at once (annotation
//! `authplane.io/revoke-kids`).

use std::path::PathBuf;

use clap::Args;
use kube::ResourceExt;

use crate::api::REVOKE_KIDS_ANNOTATION;
use crate::cli::annotate::annotate;
use crate::cli::error::CliError;
use crate::cli::target::TargetArgs;
use crate::dev::state::StateStore;
use crate::keys::store;

#[derive(Args)]
pub(crate) struct RevokeArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    /// The kid to revoke.
    // A kid is base64url, so one in 64 begins with `-`: it is a value, not a flag.
    #[arg(allow_hyphen_values = true)]
    kid: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Dev mode: the state folder of `authplane dev`, to check that the kid is a key of
    /// this SigningKey.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".authplane",
        requires = "manifests"
    )]
    state: PathBuf,
}

pub(crate) fn revoke(args: RevokeArgs) -> Result<(), CliError> {
    let kid = args.kid.clone();
    let state = args.state.clone();
    let dev = args.target.manifests.is_some();
    annotate(&args.key, &args.target, move |id, key| {
        // A typo must not look like a revocation that happened.
        let known = match dev {
            false => key
                .status
                .iter()
                .flat_map(|s| &s.keys)
                .any(|k| k.kid == kid),
            true => {
                let data = StateStore::new(&state).load(id)?.ok_or_else(|| {
                    CliError::Refused(format!(
                        "no keys for SigningKey {id} in {}: pass --state, the folder of `authplane dev`",
                        state.display()
                    ))
                })?;
                store::from_data(&data)?.get(&kid).is_some()
            }
        };
        if !known {
            return Err(CliError::Refused(format!(
                "{kid} is not a key of SigningKey {id} (see its JWKS, or `kubectl get sk -o yaml`, status.keys)"
            )));
        }
        let current = key
            .annotations()
            .get(REVOKE_KIDS_ANNOTATION)
            .map_or("", String::as_str);
        Ok((
            REVOKE_KIDS_ANNOTATION.to_owned(),
            revoked_kids(current, &kid),
        ))
    })
}

/// The revocation list with `kid` added (kept, so a revoked kid never comes back).
pub(crate) fn revoked_kids(current: &str, kid: &str) -> String {
    let mut kids: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if !kids.contains(&kid) {
        kids.push(kid);
    }
    kids.join(",")
}
