//! `authplane bucket`: a user's rollout bucket under an AuthPolicy, and whether the server
//! enforces it now.

use std::path::PathBuf;

use clap::Args;

use crate::api::AuthPolicy;
use crate::cli::cluster;
use crate::cli::error::{self, CliError};
use crate::cli::rollout::mode_name;
use crate::cli::target::{TargetArgs, cluster_client, parse_id};
use crate::dev::manifests::ManifestLoader;
use crate::dev::state::StateStore;
use crate::policy::{CompiledPolicy, rollout};

#[derive(Args)]
pub(crate) struct BucketArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    policy: String,
    /// The bucketing key: the value of the policy's bucketBy claim, header or cookie.
    #[arg(long)]
    key: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Dev mode: the state folder of `authplane dev`, where a stepped rollout's progress
    /// is recorded.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".authplane",
        requires = "manifests"
    )]
    state: PathBuf,
}

pub(crate) fn bucket(args: BucketArgs) -> Result<(), CliError> {
    let id = parse_id(&args.policy, "--policy")?;
    args.target.announce();
    let policy = match &args.target.manifests {
        Some(dir) => {
            let (desired, errors) = ManifestLoader::default().load(dir);
            for error in &errors {
                eprintln!("warning: {error}");
            }
            let mut policy =
                AuthPolicy::clone(desired.auth_policies.get(&id).ok_or_else(|| {
                    CliError::Refused(format!("no AuthPolicy {id} in {}", dir.display()))
                })?);
            // Where a stepped rollout stands is recorded by the server, not the manifest.
            let progress = StateStore::new(&args.state).load_rollout(&id)?;
            if progress.is_none() && !policy.spec.rollout.steps.is_empty() {
                eprintln!(
                    "note: no recorded progress for {id} in {}: assuming the first step (pass --state, the folder of `authplane dev`)",
                    args.state.display()
                );
            }
            policy.status.get_or_insert_with(Default::default).rollout = progress;
            policy
        }
        None => {
            let runtime = error::runtime()?;
            runtime.block_on(async {
                let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
                Ok::<_, CliError>(cluster::auth_policy(client, &id).await?)
            })?
        }
    };
    let compiled = CompiledPolicy::compile(&policy, |_| None);
    let now = jiff::Timestamp::now();
    let (bucket, enforced) = compiled.bucket_of(&args.key, now);
    let spec = &policy.spec.rollout;
    let held = policy
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|p| p.held.as_deref());
    // A user outside enforcement asks when they will be in it: a paused rollout says.
    let progression = match (spec.steps.is_empty(), spec.paused, held) {
        (true, _, _) => String::new(),
        (false, true, _) => "; rollout paused (spec.rollout.paused): the share stays until `authplane rollout resume`".to_owned(),
        (false, false, Some(reason)) => format!("; rollout held: {reason}"),
        (false, false, None) => String::new(),
    };
    println!(
        "bucket {bucket} of {} ({:.3}%); enforced now: {} ({} at {}%){progression}",
        rollout::BUCKETS,
        f64::from(bucket) / 1000.0,
        if enforced { "yes" } else { "no" },
        mode_name(compiled.mode),
        compiled.effective_percentage(now)
    );
    Ok(())
}
