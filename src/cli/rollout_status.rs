//! `authplane rollout status NAMESPACE/NAME [--watch] [--until-percentage N] [--timeout D]`:
//! where a rollout stands, and (with `--watch`) a progress bar until it gets where it is
//! going, as `kubectl rollout status` does for Deployments. The exit code tells a script
//! how it ended (see [`Ending`]).
//!
//! The facts are those every replica computes from the spec and the recorded progress
//! (`status.rollout`; in dev mode the state folder), read from the cluster or from dev
//! mode's folders as the other `rollout` commands read them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jiff::Timestamp;
use kube::{Api, Client};

use crate::api::{AuthPolicy, Mode, ObjectKey};
use crate::cli::error::{self, CliError};
use crate::cli::rollout::standing as standing_line;
use crate::cli::target::{TargetArgs, cluster_client, parse_id};
use crate::dev::manifests::ManifestLoader;
use crate::dev::state::StateStore;
use crate::policy::progression::Schedule;

/// How often the source is read again while watching: a step lands on a whole second.
const DEV_POLL: Duration = Duration::from_secs(1);
/// On a cluster, one GET every two seconds: light on the apiserver, and steps are
/// hours apart.
const CLUSTER_POLL: Duration = Duration::from_secs(2);

#[derive(Args)]
#[command(mut_arg("manifests", |a| a.help(
    "Dev mode: read the policy from the manifests folder of `authplane dev` instead of a cluster"
)))]
pub(crate) struct StatusArgs {
    /// The AuthPolicy, as NAMESPACE/NAME.
    policy: String,
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
    /// Keep watching, with a progress bar, until the rollout gets there (exit 0), is
    /// paused (4), is gone (3) or --timeout passes (5).
    #[arg(long, short = 'w')]
    watch: bool,
    /// Done once at least this share of users is enforced (default: the last step, or
    /// `percentage` without steps).
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    until_percentage: Option<f64>,
    /// With --watch: give up after this long (`30s`, `10m`, `2h`) with exit code 5.
    /// Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", requires = "watch", value_parser = timeout)]
    timeout: Option<Duration>,
    /// Also say what a running server counted for the policy (would-deny reasons, refusals),
    /// from its `GET /status`: dev mode's `http://127.0.0.1:8080`, or an admin listener
    /// reached with `kubectl port-forward`.
    #[arg(long, value_name = "URL", value_parser = crate::cli::flags::external_url)]
    server: Option<String>,
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

fn timeout(text: &str) -> Result<Duration, String> {
    let parsed: crate::api::Duration = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from(parsed.value())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

/// How `rollout status` ends, and its exit code.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ending {
    /// Exit 0: at least the target share is enforced.
    Reached,
    /// Exit 3: no such AuthPolicy.
    NotFound,
    /// Exit 4: paused by `spec.rollout.paused` (or, without `--watch`, held by its
    /// deny-ratio rule): it will not get there by itself.
    Paused(String),
    /// Exit 5: not there yet (without `--watch`), or not within `--timeout`.
    NotReached(String),
}

impl Ending {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Ending::Reached => 0,
            Ending::NotFound => 3,
            Ending::Paused(_) => 4,
            Ending::NotReached(_) => 5,
        }
    }
}

/// Where a rollout stands at one instant, as the page and `status` report it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Standing {
    /// Share of users enforced now.
    pub(crate) enforced: f64,
    /// Share where the spec leads: the last step (capped by `percentage`), or
    /// `percentage`; 0 outside mode Enforce.
    pub(crate) destination: f64,
    /// `spec.rollout.paused`.
    pub(crate) paused: bool,
    /// Why the recorded progress is held, other than the spec's pause.
    pub(crate) held: Option<String>,
}

impl Standing {
    pub(crate) fn of(policy: &AuthPolicy, now: Timestamp) -> Standing {
        let rollout = &policy.spec.rollout;
        let recorded = policy.status.as_ref().and_then(|s| s.rollout.as_ref());
        let enforce = rollout.mode == Mode::Enforce;
        let destination = match rollout.steps.last() {
            Some(last) => last.min(rollout.percentage),
            None => rollout.percentage,
        };
        Standing {
            enforced: match enforce {
                true => Schedule::of(rollout, recorded).percentage_at(now),
                false => 0.0,
            },
            destination: if enforce { destination } else { 0.0 },
            paused: rollout.paused,
            held: recorded
                .and_then(|p| p.held.clone())
                .filter(|reason| reason != crate::policy::progression::PAUSED_BY_SPEC),
        }
    }

    fn target(&self, until: Option<f64>) -> f64 {
        until.unwrap_or(self.destination)
    }

    fn target_text(&self, until: Option<f64>) -> String {
        match until {
            Some(p) => format!("{p}%"),
            None => format!("{}% (where its spec leads)", self.destination),
        }
    }

    fn enforced_now(&self) -> String {
        format!("{}% of users enforced now", self.enforced)
    }

    /// How it ends now if it ends now: `None` while it may still get there by itself
    /// (or by an edit of the spec, which a watch waits for too).
    pub(crate) fn ending(&self, until: Option<f64>, watching: bool) -> Option<Ending> {
        if self.enforced >= self.target(until) {
            return Some(Ending::Reached);
        }
        if self.paused {
            return Some(Ending::Paused(
                "paused (spec.rollout.paused): `authplane rollout resume` moves it on".into(),
            ));
        }
        match (&self.held, watching) {
            // A hold lifts by itself once the audited traffic allows: a watch waits.
            (Some(reason), false) => Some(Ending::Paused(format!("held: {reason}"))),
            (_, false) => Some(Ending::NotReached(format!(
                "{}, not yet {} (`--watch` waits for it)",
                self.enforced_now(),
                self.target_text(until)
            ))),
            (_, true) => None,
        }
    }
}

/// Where the policy is read from, again at each look.
enum Source {
    Dev {
        dir: PathBuf,
        state: StateStore,
        // Boxed: it keeps what it read of each file (clippy's large_enum_variant).
        loader: Box<ManifestLoader>,
        /// Warnings already printed, so that a watch says each once.
        warned: std::collections::BTreeSet<String>,
    },
    Cluster(Client),
}

impl Source {
    async fn read(&mut self, id: &ObjectKey) -> Result<Option<AuthPolicy>, CliError> {
        match self {
            Source::Dev {
                dir,
                state,
                loader,
                warned,
            } => {
                let (desired, errors) = loader.load(dir);
                for error in errors {
                    let error = error.to_string();
                    if warned.insert(error.clone()) {
                        eprintln!("warning: {error}");
                    }
                }
                let Some(policy) = desired.auth_policies.get(id) else {
                    return Ok(None);
                };
                let mut policy = AuthPolicy::clone(policy);
                // Where a stepped rollout stands is recorded by the server, not the
                // manifest.
                policy.status.get_or_insert_with(Default::default).rollout =
                    state.load_rollout(id)?;
                Ok(Some(policy))
            }
            Source::Cluster(client) => Api::<AuthPolicy>::namespaced(client.clone(), &id.namespace)
                .get_opt(&id.name)
                .await
                .map_err(error::api(format!("reading AuthPolicy {id}"))),
        }
    }

    fn poll_interval(&self) -> Duration {
        match self {
            Source::Dev { .. } => DEV_POLL,
            Source::Cluster(_) => CLUSTER_POLL,
        }
    }

    fn where_(&self) -> String {
        match self {
            Source::Dev { dir, .. } => format!("in {}", dir.display()),
            Source::Cluster(_) => "on the cluster".to_owned(),
        }
    }
}

pub(crate) fn rollout_status(args: StatusArgs) -> Result<(), CliError> {
    let id = parse_id(&args.policy, "the AuthPolicy")?;
    args.target.announce();
    let runtime = error::runtime()?;
    let ending = runtime.block_on(async {
        let mut source = match &args.target.manifests {
            Some(dir) => Source::Dev {
                dir: dir.clone(),
                state: StateStore::new(&args.state),
                loader: Box::default(),
                warned: Default::default(),
            },
            None => Source::Cluster(cluster_client(args.target.kubeconfig.as_ref()).await?),
        };
        watch(&mut source, &id, &args).await
    })?;
    let code = ending.code();
    let message = match ending {
        Ending::Reached => return Ok(()),
        Ending::NotFound => format!("no AuthPolicy {id}"),
        Ending::Paused(why) | Ending::NotReached(why) => format!("AuthPolicy {id}: {why}"),
    };
    Err(CliError::Unfinished { code, message })
}

/// Reads the policy, says where it stands whenever that changes, and returns how it
/// ended: at once without `--watch`.
async fn watch(source: &mut Source, id: &ObjectKey, args: &StatusArgs) -> Result<Ending, CliError> {
    let started = Instant::now();
    let bar = progress_bar(args.watch);
    let mut counts = args.server.as_deref().map(|server| Counts::new(server, id));
    let mut said = String::new();
    let ending = loop {
        let Some(policy) = source.read(id).await? else {
            eprintln!("no AuthPolicy {id} {}", source.where_());
            break Ending::NotFound;
        };
        let now = Timestamp::now();
        let standing = Standing::of(&policy, now);
        let line = standing_line(id, &policy, now);
        if line != said {
            bar.suspend(|| println!("{line}"));
            said = line;
            if let Some(counts) = counts.as_mut()
                && let Some(text) = counts.say_changed().await
            {
                bar.suspend(|| println!("{text}"));
            }
        }
        bar.set_position((standing.enforced * 1000.0).round() as u64);
        bar.set_message(format!(
            "{}% of users enforced{}",
            standing.enforced,
            match (&standing.held, standing.paused) {
                (_, true) => " (paused)".to_owned(),
                (Some(reason), false) => format!(" (held: {reason})"),
                (None, false) => String::new(),
            }
        ));
        if let Some(ending) = standing.ending(args.until_percentage, args.watch) {
            break ending;
        }
        let wait = source.poll_interval();
        if let Some(timeout) = args.timeout {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break Ending::NotReached(format!(
                    "{}, not {} within {:#}",
                    standing.enforced_now(),
                    standing.target_text(args.until_percentage),
                    jiff::SignedDuration::try_from(timeout).unwrap_or_default()
                ));
            }
            tokio::time::sleep(wait.min(left)).await;
        } else {
            tokio::time::sleep(wait).await;
        }
    };
    bar.finish_and_clear();
    if let Some(counts) = counts.as_mut()
        && let Some(text) = counts.say_changed().await
    {
        println!("{text}");
    }
    if ending == Ending::Reached {
        let target = args
            .until_percentage
            .map_or(String::new(), |p| format!(" (at least {p}%)"));
        println!("AuthPolicy {id}: rollout reached{target}");
    }
    Ok(ending)
}

/// What a running server counted for one policy, from its `GET /status` (which this
/// command never needs: the rollout itself is read from the spec and its record).
struct Counts {
    http: reqwest::Client,
    url: String,
    id: ObjectKey,
    /// What was said last, so that a watch repeats nothing; and whether a failure was.
    said: String,
}

impl Counts {
    fn new(server: &str, id: &ObjectKey) -> Counts {
        let mut url = url::Url::parse(&format!("{server}/status")).expect("checked by clap");
        url.query_pairs_mut()
            .append_pair("namespace", &id.namespace);
        Counts {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            url: url.to_string(),
            id: id.clone(),
            said: String::new(),
        }
    }

    /// The summary, when it changed since it was last said.
    /// A failure to read them is a warning on stderr, said once.
    async fn say_changed(&mut self) -> Option<String> {
        let (now, fine) = match self.read().await {
            Ok(summary) => (summary, true),
            Err(problem) => (problem, false),
        };
        if now == self.said {
            return None;
        }
        self.said = now.clone();
        if !fine {
            eprintln!("warning: {now}");
            return None;
        }
        Some(now)
    }

    async fn read(&self) -> Result<String, String> {
        let fetched = async {
            let response = self.http.get(&self.url).send().await?.error_for_status()?;
            response.json::<serde_json::Value>().await
        };
        match fetched.await {
            Ok(overview) => overview["policies"]["items"]
                .as_array()
                .and_then(|items| {
                    items.iter().find(|p| {
                        p["name"] == self.id.name.as_str()
                            && p["namespace"] == self.id.namespace.as_str()
                    })
                })
                .map(|policy| summary(&policy["decisions"]))
                .ok_or_else(|| format!("{} does not serve AuthPolicy {}", self.url, self.id)),
            Err(e) => Err(format!("no counts from {}: {e}", self.url)),
        }
    }
}

/// `decisions counted since the server started: allowed 4; would deny (audited):
/// missing_token 2, insufficient_scope 1; denied: expired 1`.
fn summary(decisions: &serde_json::Value) -> String {
    let mut out = format!(
        "decisions counted since the server started: allowed {}",
        decisions["allow"].as_u64().unwrap_or(0)
    );
    for (field, label) in [
        ("wouldDeny", "would deny (audited)"),
        ("deny", "denied"),
        ("legacySession", "legacy session"),
    ] {
        let Some(reasons) = decisions[field].as_object().filter(|r| !r.is_empty()) else {
            continue;
        };
        let mut reasons: Vec<(&String, u64)> = reasons
            .iter()
            .map(|(reason, n)| (reason, n.as_u64().unwrap_or(0)))
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        out.push_str(&format!("; {label}: {}", reasons.join(", ")));
    }
    out
}

/// A bar of the enforced share in thousandths of a percent (the rollout's own
/// resolution), on stderr when it is a terminal; hidden otherwise, where the lines on
/// stdout say the same.
fn progress_bar(watching: bool) -> ProgressBar {
    if !watching {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(100_000);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:40}] {msg} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rollout: serde_json::Value, status: serde_json::Value) -> AuthPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                     "audiences": ["payments"], "rollout": rollout},
            "status": status,
        }))
        .unwrap()
    }

    fn stepped(since: Timestamp, extra: serde_json::Value) -> AuthPolicy {
        let mut rollout = serde_json::json!({"mode": "Enforce", "steps": [10, 50, 100],
                                             "stepEvery": "1h", "bucketBy": {"claim": "sub"}});
        rollout
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        policy(
            rollout,
            serde_json::json!({"rollout": {"steps": [10, 50, 100], "step": 0, "since": since}}),
        )
    }

    #[test]
    fn a_stepped_rollout_is_reached_at_its_last_step_or_the_share_asked_for() {
        let since = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |minutes: i64| since + jiff::SignedDuration::from_mins(minutes);
        let policy = stepped(since, serde_json::json!({}));
        let standing = Standing::of(&policy, at(90));
        assert_eq!((standing.enforced, standing.destination), (50.0, 100.0));
        assert_eq!(standing.ending(None, true), None);
        assert!(matches!(
            standing.ending(None, false),
            Some(Ending::NotReached(_))
        ));
        assert_eq!(standing.ending(Some(50.0), false), Some(Ending::Reached));
        assert_eq!(
            Standing::of(&policy, at(120)).ending(None, true),
            Some(Ending::Reached)
        );
        // `percentage` caps the steps: 50 is where it ends.
        let capped = stepped(since, serde_json::json!({"percentage": 50}));
        assert_eq!(
            Standing::of(&capped, at(90)).ending(None, true),
            Some(Ending::Reached)
        );
    }

    #[test]
    fn a_paused_rollout_ends_the_watch_and_a_held_one_is_waited_for() {
        let since = Timestamp::from_second(1_800_000_000).unwrap();
        let paused = stepped(since, serde_json::json!({"paused": true}));
        let ending = Standing::of(&paused, since).ending(None, true).unwrap();
        assert_eq!(ending.code(), 4);
        let mut held = stepped(since, serde_json::json!({}));
        held.status.as_mut().unwrap().rollout.as_mut().unwrap().held =
            Some("8.0% of 400 audited requests would be refused".into());
        let standing = Standing::of(&held, since);
        assert_eq!(standing.ending(None, true), None, "it may lift by itself");
        assert!(matches!(
            standing.ending(None, false),
            Some(Ending::Paused(why)) if why.contains("8.0%")
        ));
    }

    #[test]
    fn outside_mode_enforce_nobody_is_enforced() {
        let audit = policy(
            serde_json::json!({"mode": "Audit", "percentage": 50, "bucketBy": {"claim": "sub"}}),
            serde_json::json!({}),
        );
        let standing = Standing::of(&audit, Timestamp::now());
        assert_eq!((standing.enforced, standing.destination), (0.0, 0.0));
        assert_eq!(standing.ending(None, false), Some(Ending::Reached));
        assert_eq!(standing.ending(Some(50.0), true), None);
    }

    /// The cluster path: the policy and its recorded progress come from the apiserver
    /// (kube-rs's mock service), and a policy that is not there ends with code 3.
    #[tokio::test]
    async fn on_a_cluster_the_policy_and_its_progress_come_from_the_apiserver() {
        use http::{Request, Response};
        use kube::client::Body;

        let since = Timestamp::now() - jiff::SignedDuration::from_mins(90);
        let found = serde_json::to_value(stepped(since, serde_json::json!({}))).unwrap();
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "authpolicies.authplane.io \"payments\" not found"});
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let apiserver = tokio::spawn(async move {
            for (status, body) in [(200, found), (404, not_found)] {
                let (request, respond) = handle.next_request().await.unwrap();
                assert_eq!(
                    (request.method().as_str(), request.uri().path()),
                    (
                        "GET",
                        "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments"
                    )
                );
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        let mut source = Source::Cluster(Client::new(service, "default"));
        let id = parse_id("shop/payments", "the AuthPolicy").unwrap();
        let args = |until: Option<f64>| StatusArgs {
            policy: "shop/payments".into(),
            target: TargetArgs {
                kubeconfig: None,
                manifests: None,
            },
            state: PathBuf::from(".authplane"),
            watch: false,
            until_percentage: until,
            timeout: None,
            server: None,
        };
        // 90 minutes after the first step: the second one (50%) holds.
        assert_eq!(
            watch(&mut source, &id, &args(Some(50.0))).await.unwrap(),
            Ending::Reached
        );
        assert_eq!(
            watch(&mut source, &id, &args(None)).await.unwrap(),
            Ending::NotFound
        );
        apiserver.await.unwrap();
    }
}
