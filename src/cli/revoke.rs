//! `authplane revoke`: creates a Revocation of a SigningKey's tokens.

use clap::Args;

use crate::api::ObjectKey;
use crate::cli::error::{self, CliError};
use crate::cli::target::{TargetArgs, cluster_client, parse_id};
use crate::clock::{Clock, SystemClock};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject", "session"])))]
pub(crate) struct RevokeTokensArgs {
    /// The SigningKey whose tokens are revoked, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    issuer: String,
    /// One token: its `jti`.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// Every token of this subject (`sub`) issued at or before --before.
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,
    /// With --subject: tokens issued at or before this RFC 3339 instant (default: now).
    #[arg(long, value_name = "TIME", requires = "subject")]
    before: Option<jiff::Timestamp>,
    /// Every token of this session (`sid`).
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// Why (shown in logs; metrics keep logout, payment_failed, password_changed,
    /// compromised, account_disabled, and `other` for the rest).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Create the Revocation in this namespace: it then applies only to that
    /// namespace's AuthPolicies (default: the SigningKey's namespace, everywhere).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn revoke_tokens(args: RevokeTokensArgs) -> Result<(), CliError> {
    use crate::cli::revocations::{self, What};
    let key = parse_id(&args.issuer, "--issuer")?;
    let what = match (args.jti, args.subject, args.session) {
        (Some(jti), None, None) => What::TokenId(jti),
        (None, Some(subject), None) => What::Subject {
            subject,
            issued_before: args.before,
        },
        (None, None, Some(sid)) => What::Session(sid),
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --jti, --subject and --session".into(),
            ));
        }
    };
    args.target.announce();
    let now = SystemClock.now();
    if let Some(dir) = &args.target.manifests {
        let revocation = revocations::build(
            &key,
            args.namespace.as_deref(),
            what,
            args.reason,
            Some(revocations::random_name()),
            now,
        )?;
        let file = revocations::write_manifest(dir, &revocation)?;
        let id = ObjectKey::of(&revocation.metadata);
        println!("Revocation {id} created");
        eprintln!(
            "wrote {}; a running `authplane dev` applies it within a second",
            file.display()
        );
        return Ok(());
    }
    let revocation = revocations::build(
        &key,
        args.namespace.as_deref(),
        what,
        args.reason,
        None,
        now,
    )?;
    let runtime = error::runtime()?;
    runtime.block_on(async {
        let client = cluster_client(args.target.kubeconfig.as_ref()).await?;
        let id = revocations::create(client, revocation).await?;
        println!("Revocation {id} created");
        Ok(())
    })
}
