//! Where a command acts: a cluster (the default), or dev mode's manifests folder; and what
//! the commands that act there share.

use std::path::PathBuf;

use clap::Args;

use crate::api::ObjectKey;
use crate::cli::cluster;
use crate::cli::error::CliError;
use crate::operator;

/// Where a command acts: a cluster (the default), or dev mode's manifests folder.
#[derive(Args)]
pub(crate) struct TargetArgs {
    /// Kubeconfig file (default: KUBECONFIG or ~/.kube/config, or in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Dev mode: the manifests folder of `authplane dev`, instead of a cluster.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub(crate) manifests: Option<PathBuf>,
}

impl TargetArgs {
    /// Says where the command runs, before it does anything.
    pub(crate) fn announce(&self) {
        match &self.manifests {
            Some(dir) => eprintln!("dev mode: manifests folder {}", dir.display()),
            None => eprintln!("cluster: {}", cluster::describe(self.kubeconfig.as_deref())),
        }
    }
}

/// A client for the commands that act on a cluster; without one, points at dev mode.
pub(crate) async fn cluster_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, CliError> {
    operator::client(kubeconfig)
        .await
        .map_err(CliError::NoCluster)
}

/// What a dev-mode edit did, and when it takes effect.
pub(crate) fn edited_note(file: &std::path::Path, in_place: bool) -> String {
    let how = match in_place {
        true => "only the changed values; its comments and formatting are kept",
        false => "that document is written whole again: its own comments inside are not kept",
    };
    format!(
        "edited {} ({how}); a running `authplane dev` applies it within a second",
        file.display()
    )
}

pub(crate) fn parse_id(text: &str, flag: &str) -> Result<ObjectKey, CliError> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        _ => Err(CliError::Usage(format!(
            "{flag} must be NAMESPACE/NAME, got {text:?}"
        ))),
    }
}
