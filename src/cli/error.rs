//! What a command can fail with. Each message says what went wrong and, where there is
//! one, what to do; `main` prints it with its causes.

use std::path::PathBuf;

use crate::api::NotAPercentage;
use crate::cli::cluster::ClusterError;
use crate::cli::manifest_edit::EditError;
use crate::cli::revoke::RevokeError;
use crate::dev::DevError;
use crate::dev::state::StateError;
use crate::keys::store::StoreError;
use crate::operator::OperatorError;
use crate::token::MintError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments do not make a request (a malformed NAMESPACE/NAME, flags that do
    /// not go together).
    #[error("{0}")]
    Usage(String),
    /// The request is understood and refused; nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("no cluster to talk to (in dev mode, pass --manifests DIR): {0}")]
    NoCluster(#[source] OperatorError),
    #[error("{what}: {source}")]
    Api {
        /// What the command was doing: `reading SigningKey auth/web`.
        what: String,
        source: kube::Error,
    },
    #[error("{doing} {path}: {source}")]
    Io {
        /// `creating`, `writing`.
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Keys { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    Percentage(#[from] NotAPercentage),
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error(transparent)]
    Time(#[from] jiff::Error),
    /// `rollout status`: the rollout is not where it was asked to be; the process exits
    /// with `code` (see `rollout_status::Ending`), not 1.
    #[error("{message}")]
    Unfinished { code: u8, message: String },
    /// `token exchange`/`token refresh`: the token endpoint refused or could not answer;
    /// the process exits with `code` (see `token_request::ExitCode`).
    #[error("{message}")]
    Answered { code: u8, message: String },
}

impl CliError {
    /// The process's exit code for this error: 1, but where a command documents its own.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unfinished { code, .. } | CliError::Answered { code, .. } => *code,
            _ => 1,
        }
    }
}

/// A Kubernetes API error, with what the command was doing.
pub(crate) fn api(what: String) -> impl FnOnce(kube::Error) -> CliError {
    move |source| CliError::Api { what, source }
}

/// A runtime for the commands that talk to a cluster.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(CliError::Runtime)
}
