//! `authplane rotate`: asks for a rotation now (annotation `authplane.io/rotate-at`).

use clap::Args;

use crate::api::ROTATE_AT_ANNOTATION;
use crate::cli::annotate::annotate;
use crate::cli::error::CliError;
use crate::cli::target::TargetArgs;

#[derive(Args)]
#[command(mut_arg("manifests", |a| a.help(
    "Dev mode: annotate the SigningKey in the manifests folder of `authplane dev` instead of a cluster (only the annotation is written; comments and formatting are kept)"
)))]
pub(crate) struct RotateArgs {
    /// The SigningKey, as NAMESPACE/NAME.
    key: String,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn rotate(args: RotateArgs) -> Result<(), CliError> {
    // Rounded up: a key made earlier in this second must not count as the
    // rotation asked for.
    let now = jiff::Timestamp::now().round(
        jiff::TimestampRound::new()
            .smallest(jiff::Unit::Second)
            .mode(jiff::RoundMode::Ceil),
    )?;
    annotate(&args.key, &args.target, |_, _| {
        Ok((ROTATE_AT_ANNOTATION.to_owned(), now.to_string()))
    })
}
