//! `authplane revoke-key`: revokes one key of a SigningKey at once (annotation
//! `authplane.io/revoke-kids`).

use std::path::PathBuf;

use clap::Args;
use kube::ResourceExt;

use crate::api::REVOKE_KIDS_ANNOTATION;
use crate::cli::annotate::annotate;
use crate::cli::error::CliError;
use crate::cli::target::TargetArgs;
use crate::clock::{Clock, SystemClock};
use crate::dev::state::StateStore;
use crate::keys::store;

#[derive(Args)]
#[command(mut_arg("manifests", |a| a.help(
    "Dev mode: annotate the SigningKey in the manifests folder of `authplane dev` instead of a cluster (only the annotation is written; comments and formatting are kept)"
)))]
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
        // A typo must not look like a revocation that happened: name the kids there are.
        let kids: Vec<(String, String)> = match dev {
            false => key
                .status
                .iter()
                .flat_map(|s| &s.keys)
                .map(|k| (k.kid.clone(), k.state.clone()))
                .collect(),
            true => {
                let data = StateStore::new(&state).load(id)?.ok_or_else(|| {
                    CliError::Refused(format!(
                        "no keys for SigningKey {id} in {}: pass --state, the folder of `authplane dev`",
                        state.display()
                    ))
                })?;
                let keys = store::from_data(&data)?;
                let retain_for = store::retain_for(&data).unwrap_or_default();
                keys.view(SystemClock.now(), retain_for)
                    .iter()
                    .map(|v| {
                        (
                            v.record.material.kid().to_owned(),
                            v.state.as_str().to_owned(),
                        )
                    })
                    .collect()
            }
        };
        if !kids.iter().any(|(known, _)| *known == kid) {
            let listed: Vec<String> = kids.iter().map(|(k, s)| format!("{k} ({s})")).collect();
            let source = match dev {
                true => format!("in {}", state.display()),
                false => "in its status.keys".to_owned(),
            };
            return Err(CliError::Refused(format!(
                "{kid} is not a key of SigningKey {id}; its keys {source}: {}",
                if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.join(", ")
                }
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
