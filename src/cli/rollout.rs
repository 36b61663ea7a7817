//! `authplane rollout pause|resume|set`: steers an AuthPolicy's rollout.

use clap::{Args, Subcommand};

use crate::api::{AuthPolicy, ObjectKey, RolloutAction};
use crate::cli::error::{self, CliError};
use crate::cli::manifest_edit;
use crate::cli::target::{TargetArgs, cluster_client, edited_note, parse_id};
use crate::dev::manifests::Object;

#[derive(Subcommand)]
pub(crate) enum RolloutCommand {
    /// Hold a stepped rollout on its current step (`spec.rollout.paused: true`).
    Pause(PolicyArgs),
    /// Let a held rollout move on; the current step gets a full `stepEvery` again.
    Resume(PolicyArgs),
    /// Enforce for PERCENT of users now, replacing any steps (0 rolls back at once).
    Set {
        #[command(flatten)]
        policy: PolicyArgs,
        /// 0 to 100, at most three decimals.
        percent: f64,
    },
}

#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    policy: String,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn rollout(command: RolloutCommand) -> Result<(), CliError> {
    let (args, action) = match command {
        RolloutCommand::Pause(args) => (args, RolloutAction::Pause),
        RolloutCommand::Resume(args) => (args, RolloutAction::Resume),
        RolloutCommand::Set { policy, percent } => (policy, RolloutAction::Set(percent)),
    };
    let id = parse_id(&args.policy, "the AuthPolicy")?;
    let patch = action.patch()?;
    args.target.announce();
    if let Some(dir) = &args.target.manifests {
        let mut document = manifest_edit::locate(dir, "AuthPolicy", &id)?;
        document.merge_patch(&patch)?;
        let (file, updated) = document.save()?;
        if let Object::AuthPolicy(updated) = updated {
            report_rollout(&id, &updated);
        }
        eprintln!("{}", edited_note(&file));
        return Ok(());
    }
    let runtime = error::runtime()?;
    runtime.block_on(async {
        let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
        let api: kube::Api<AuthPolicy> = kube::Api::namespaced(client, &id.namespace);
        let updated = api
            .patch(
                &id.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .map_err(error::api(format!("patching AuthPolicy {id}")))?;
        report_rollout(&id, &updated);
        Ok(())
    })
}

pub(crate) fn report_rollout(id: &ObjectKey, updated: &AuthPolicy) {
    let rollout = &updated.spec.rollout;
    println!(
        "AuthPolicy {id}: mode {:?}, percentage {}, steps {:?}{}",
        rollout.mode,
        rollout.percentage,
        rollout.steps,
        if rollout.paused { ", paused" } else { "" }
    );
    if rollout.mode != crate::api::Mode::Enforce {
        println!(
            "note: the mode is {:?}: nobody is enforced until it is Enforce",
            rollout.mode
        );
    }
}
