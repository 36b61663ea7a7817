//! `authplane rollout pause|resume|set`: steers an AuthPolicy's rollout, and says where
//! it stands afterwards (the share enforced now, not only what the spec says); `rollout
//! status` (in `rollout_status`) only says, or watches.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use jiff::Timestamp;

use crate::api::{AuthPolicy, Mode, ObjectKey, RolloutAction};
use crate::cli::edit::edit;
use crate::cli::error::CliError;
use crate::cli::rollout_status::{StatusArgs, rollout_status};
use crate::cli::target::{TargetArgs, edited_note, parse_id};
use crate::dev::state::StateStore;
use crate::policy::progression::Schedule;

#[derive(Subcommand)]
pub(crate) enum RolloutCommand {
    /// Hold a stepped rollout on its current step (`spec.rollout.paused: true`). A policy
    /// without steps has nothing to pause: use `rollout set` to change its share.
    Pause(PolicyArgs),
    /// Let a paused rollout move on; the current step gets a full `stepEvery` again.
    Resume(PolicyArgs),
    /// Enforce for PERCENT of users now, replacing any steps (0 rolls back at once).
    Set {
        #[command(flatten)]
        policy: PolicyArgs,
        /// 0 to 100, at most three decimals.
        percent: f64,
    },
    /// Say where the rollout stands; with --watch, follow it until it gets there.
    /// Exit codes: 0 there, 3 no such policy, 4 paused, 5 not there (yet, or within
    /// --timeout).
    Status(StatusArgs),
}

#[derive(Args)]
#[command(mut_arg("manifests", |a| a.help(
    "Dev mode: edit the policy in the manifests folder of `authplane dev` instead of a cluster (only the changed values; comments and formatting are kept)"
)))]
pub(crate) struct PolicyArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    policy: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Dev mode: the state folder of `authplane dev`, where a stepped rollout's progress
    /// is recorded (to report the share enforced now).
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".authplane",
        requires = "manifests"
    )]
    state: PathBuf,
}

pub(crate) fn rollout(command: RolloutCommand) -> Result<(), CliError> {
    let (args, action) = match command {
        RolloutCommand::Pause(args) => (args, RolloutAction::Pause),
        RolloutCommand::Resume(args) => (args, RolloutAction::Resume),
        RolloutCommand::Set { policy, percent } => (policy, RolloutAction::Set(percent)),
        RolloutCommand::Status(args) => return rollout_status(args),
    };
    let id = parse_id(&args.policy, "the AuthPolicy")?;
    let patch = action.patch()?;
    args.target.announce();
    let edited = edit::<AuthPolicy>(&id, &args.target, |current| {
        needed(&id, action, current).map(|needed| needed.then_some(patch))
    })?;
    let mut policy = edited.object;
    if args.target.manifests.is_some() {
        // Where a stepped rollout stands is recorded by the server, not the manifest.
        policy.status.get_or_insert_with(Default::default).rollout =
            StateStore::new(&args.state).load_rollout(&id)?;
    }
    if !edited.changed {
        let state = match action {
            RolloutAction::Pause => "already paused",
            _ => "not paused",
        };
        println!("AuthPolicy {id} is {state}; nothing was written");
    }
    let now = Timestamp::now();
    println!("{}", standing(&id, &policy, now));
    if let Some(note) = rollback_note(&policy, now) {
        println!("note: {note}");
    }
    if let Some((file, in_place)) = &edited.file {
        eprintln!("{}", edited_note(file, *in_place));
    }
    Ok(())
}

/// Whether `action` changes anything; a pause or resume of a policy without steps is
/// refused, since nothing would be paused while the command said so.
fn needed(id: &ObjectKey, action: RolloutAction, policy: &AuthPolicy) -> Result<bool, CliError> {
    let rollout = &policy.spec.rollout;
    match action {
        RolloutAction::Pause | RolloutAction::Resume if rollout.steps.is_empty() => {
            Err(CliError::Refused(format!(
                "AuthPolicy {id} has no rollout.steps, so there is nothing to {}: its share changes only when its spec does. Roll back with `authplane rollout set {id} 0`, or change the share with `rollout set`; nothing was written",
                match action {
                    RolloutAction::Pause => "pause",
                    _ => "resume",
                }
            )))
        }
        RolloutAction::Pause => Ok(!rollout.paused),
        RolloutAction::Resume => Ok(rollout.paused),
        RolloutAction::Set(_) => Ok(true),
    }
}

/// A rollback to nobody enforced still refuses requests that carry no credential at all
/// while `legacySession` is set: say so where the rollback is made.
fn rollback_note(policy: &AuthPolicy, now: Timestamp) -> Option<String> {
    let legacy = policy.spec.legacy_session.as_ref()?;
    let rollout = &policy.spec.rollout;
    let recorded = policy.status.as_ref().and_then(|s| s.rollout.as_ref());
    let enforced = match rollout.mode {
        Mode::Disabled => return None,
        Mode::Audit => 0.0,
        Mode::Enforce => Schedule::of(rollout, recorded).percentage_at(now),
    };
    (enforced == 0.0).then(|| {
        format!(
            "legacySession is set: a request with neither a valid token nor the {} cookie is still refused (401); mode Disabled lets every request through",
            legacy.cookie
        )
    })
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Disabled => "Disabled",
        Mode::Audit => "Audit",
        Mode::Enforce => "Enforce",
    }
}

/// Where a rollout stands at `now`, as every replica computes it from the spec and the
/// recorded progress: `AuthPolicy shop/payments: Enforce, 50% of users enforced now
/// (steps 10, 50, 100; next step at ...)`.
pub(crate) fn standing(id: &ObjectKey, policy: &AuthPolicy, now: Timestamp) -> String {
    let rollout = &policy.spec.rollout;
    if rollout.mode != Mode::Enforce {
        return format!(
            "AuthPolicy {id}: {}, no user is enforced (the percentage applies in mode Enforce)",
            mode_name(rollout.mode)
        );
    }
    let recorded = policy.status.as_ref().and_then(|s| s.rollout.as_ref());
    let schedule = Schedule::of(rollout, recorded);
    let mut out = format!(
        "AuthPolicy {id}: Enforce, {}% of users enforced now",
        schedule.percentage_at(now)
    );
    if !rollout.steps.is_empty() {
        let steps: Vec<String> = rollout.steps.iter().map(ToString::to_string).collect();
        out.push_str(&format!(" (steps {}", steps.join(", ")));
        if rollout.percentage < 100.0 {
            out.push_str(&format!(", capped at {}%", rollout.percentage));
        }
        let held = recorded.and_then(|p| p.held.as_deref());
        if rollout.paused {
            out.push_str("; paused: `authplane rollout resume` moves it on");
        } else if let Some(reason) = held {
            out.push_str(&format!("; held: {reason}"));
        } else if let Some(next) = schedule.next_change(now) {
            out.push_str(&format!(
                "; next step at {}",
                Timestamp::from_second(next.as_second()).unwrap_or(next)
            ));
        }
        out.push(')');
    }
    out
}
