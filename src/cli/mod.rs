//! The command-line interface: one file per command, with its flags and what it does;
//! `main.rs` only parses, sets up logging and reports the error. Besides the commands:
//! checking flag values (`flags`), one path for every change of an object, reviewed as
//! the apiserver would review it before anything is written (`edit`), editing dev-mode
//! manifests in place the way `kubectl annotate`/`patch` edits objects (`manifest_edit`,
//! `yaml_in_place`), and reading keys and policies from a cluster (`cluster`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub mod cluster;
pub mod error;
pub mod flags;
pub mod manifest_edit;
pub mod revocations;

mod edit;
mod yaml_in_place;

mod annotate;
mod bucket;
mod crdgen;
mod dev;
mod revoke;
mod revoke_key;
mod rollout;
mod rollout_status;
mod rotate;
mod run;
mod target;
mod token;
mod token_request;

use bucket::{BucketArgs, bucket};
use crdgen::crdgen;
use dev::{DevArgs, run_dev};
pub use error::CliError;
use revocations::{RevocationsCommand, list_revocations};
use revoke::{RevokeTokensArgs, revoke_tokens};
use revoke_key::{RevokeArgs, revoke};
use rollout::{RolloutCommand, rollout};
use rotate::{RotateArgs, rotate};
use run::{RunArgs, run_operator};
use token::{TokenCommand, client_secret, mint};

/// authplane: JWT signing keys that rotate without breaking tokens, served as JWKS and
/// OIDC discovery.
#[derive(Parser)]
#[command(name = "authplane", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text (default) or json (default for `run`, for log collectors).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the operator on a cluster: keys in Secrets, every endpoint served.
    // Boxed: its flags outweigh every other command's (clippy's large_enum_variant).
    Run(Box<RunArgs>),
    /// Run without a cluster: manifests from a folder, keys in a state folder.
    Dev(DevArgs),
    /// Rotate a SigningKey now: a new key is made and pre-published, then signs.
    Rotate(RotateArgs),
    /// Revoke a key at once: it leaves the JWKS and its tokens stop verifying.
    RevokeKey(RevokeArgs),
    /// Revoke tokens at once: one token (--jti), a subject's tokens issued up to an
    /// instant (--subject, --before), or a session (--session).
    Revoke(RevokeTokensArgs),
    /// The Revocations in force.
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// Steer an AuthPolicy's rollout (pause, resume, set a percentage), or watch it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Print the CustomResourceDefinitions as YAML, or write them into a folder.
    Crdgen {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Tokens for development and tests.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a user's rollout bucket under an AuthPolicy, and whether it is enforced now.
    Bucket(BucketArgs),
}

pub fn init_logging(format: LogFormat) {
    // notify logs its own harmless bookkeeping when a watched folder is deleted, and every
    // event it sees at trace level (see `quiet_watcher_logs`).
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => crate::dev::folder_watch::quiet_watcher_logs(
            filter,
            &std::env::var("RUST_LOG").unwrap_or_default(),
        ),
        Err(_) => tracing_subscriber::EnvFilter::new("info,notify=error"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

impl Cli {
    /// The log format asked for, or the default of the command: JSON for `run`, whose
    /// logs go to a collector.
    pub fn log_format(&self) -> LogFormat {
        let default_format = match self.command {
            Command::Run(_) => LogFormat::Json,
            _ => LogFormat::Text,
        };
        self.log_format.unwrap_or(default_format)
    }

    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        run(self.command)
    }
}

fn run(command: Command) -> Result<(), CliError> {
    // One TLS provider for every client and server in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match command {
        Command::Run(args) => run_operator(*args),
        Command::Dev(args) => run_dev(args),
        Command::Rotate(args) => rotate(args),
        Command::RevokeKey(args) => revoke(args),
        Command::Revoke(args) => revoke_tokens(args),
        Command::Revocations(RevocationsCommand::List { target }) => list_revocations(target),
        Command::Crdgen { out_dir } => crdgen(out_dir),
        Command::Token(TokenCommand::Mint(args)) => mint(args),
        Command::Token(TokenCommand::ClientSecret(args)) => client_secret(args),
        Command::Token(TokenCommand::Exchange(args)) => token_request::exchange(args),
        Command::Token(TokenCommand::Refresh(args)) => token_request::refresh(args),
        Command::Token(TokenCommand::Sessions(args)) => token_request::sessions(args),
        Command::Bucket(args) => bucket(args),
        Command::Rollout(command) => rollout(command),
    }
}
