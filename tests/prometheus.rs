//! The chart's alerts and dashboard against a real Prometheus (Debian's `prometheus`
//! package): a dev-mode authplane on loopback serves real traffic (decisions of every
//! kind, an external issuer, a rotation, a stepped rollout that steps and is then held by
//! its would-deny ratio, a revocation, a malformed admission review); a Prometheus of
//! this test's own scrapes it every second and evaluates the rules. Then every dashboard
//! query must return data, every alert expression must parse and read series that exist,
//! Prometheus must report every rule healthy, and the held rollout's alert must be
//! pending. `promtool check rules` and `promtool test rules` (tests/prometheus/
//! alerts_test.yaml: each alert fires on a recorded series and not on a healthy one) run
//! on the rules as the chart renders them with its default values. Without the
//! prometheus binaries the test says so and is skipped.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use authplane::clock::{Clock, ManualClock};
use common::provider::Provider;
use common::{CHANGE_DEADLINE, Dev, eventually, signing_key, user_in};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/authplane");
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/prometheus/alerts_test.yaml"
);
/// How long Prometheus may take to start, scrape and evaluate: a few scrapes on a loaded
/// machine.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

/// `prometheus` and `promtool`, from PATH or where Debian puts them.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    };
    Some((find("prometheus")?, find("promtool")?))
}

/// The chart's rule file with its placeholders replaced by the chart's default values,
/// as `templates/prometheusrule.yaml` does.
fn rendered_rules() -> String {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let rule = &values["prometheusRule"];
    let mut rules =
        std::fs::read_to_string(format!("{CHART}/files/prometheus-rules.yaml")).unwrap();
    let thresholds = rule["thresholds"].as_mapping().unwrap();
    for (name, value) in thresholds {
        let value = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => panic!("threshold {name:?} is {other:?}"),
        };
        rules = rules.replace(&format!("${{{}}}", name.as_str().unwrap()), &value);
    }
    rules = rules.replace("${runbookUrl}", rule["runbookUrl"].as_str().unwrap());
    assert!(
        !rules.contains("${"),
        "a placeholder without a value:\n{rules}"
    );
    rules
}

/// (alert name, expression, runbook_url) of every rule.
fn alerts(rules: &str) -> Vec<(String, String, String)> {
    let file: serde_yaml::Value = serde_yaml::from_str(rules).unwrap();
    file["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap())
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

/// Every `expr` of the dashboard's panels, with the variables as Grafana substitutes
/// them for the given selection.
fn dashboard_queries(namespace: &str, policies: &[&str]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{CHART}/files/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        variables,
        BTreeSet::from(["datasource", "namespace", "policy"])
    );
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$namespace", namespace)
                .replace("$policy", &format!("({})", policies.join("|")))
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(queries.len() >= 20, "{queries:?}");
    queries
}

/// A Prometheus of this test's own, stopped (and its data removed) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: &str, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.yaml"), rules).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yaml]\n\
             scrape_configs:\n\
             - job_name: authplane\n  static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // A free loopback port: bound, read and released; Prometheus binds it next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query` at the present: the result's samples, or the error Prometheus
    /// gives (a query that does not parse).
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
        let response: Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if response["status"] != "success" {
            return Err(format!("{}: {}", response["errorType"], response["error"]));
        }
        Ok(response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn get(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let response = http.get(format!("{}{path}", self.url)).send().await.ok()?;
        response.json().await.ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every sample of `name` (with `labels` among its labels) on authplane's
/// `/metrics`.
async fn metric(dev: &Dev, name: &str, labels: &str) -> f64 {
    let text = dev.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn manifest(kind: &str, namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

fn policy(name: &str, rollout: &str) -> String {
    manifest(
        "AuthPolicy",
        "shop",
        name,
        &format!(
            "  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]\n  audiences: [shop]\n{rollout}"
        ),
    )
}

const KEYS: &str = "  algorithm: EdDSA\n  rotation: {every: 720h, prePublish: 15s}\n";

fn stepped(extra: &str) -> String {
    format!(
        "  rollout:\n    mode: Enforce\n    steps: [10, 50, 100]\n    stepEvery: 1h\n    bucketBy: {{header: X-User-Id}}\n{extra}"
    )
}

async fn authz(dev: &Dev, policy: &str, headers: &[(&str, &str)]) -> u16 {
    dev.get_with(&format!("/authz/shop/{policy}"), headers)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_works_against_a_real_prometheus() {
    let Some((prometheus, promtool)) = binaries() else {
        // Straight to stderr: the test harness captures `eprintln!`, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED every_dashboard_query_and_alert_works_against_a_real_prometheus: no prometheus/promtool (apt-get install -y prometheus)"
        );
        return;
    };

    // The rules as the chart renders them: promtool checks them and runs their unit tests.
    let rules = rendered_rules();
    let checks = tempfile::tempdir().unwrap();
    std::fs::write(checks.path().join("alerts.yaml"), &rules).unwrap();
    std::fs::copy(ALERTS_TEST, checks.path().join("alerts_test.yaml")).unwrap();
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(checks.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 10, "{alerts:?}");
    // Each runbook_url points at a README heading of that alert's name.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (alert, _, runbook) in &alerts {
        assert!(
            runbook.ends_with(&format!("README.md#{}", alert.to_lowercase())),
            "{alert}: {runbook}"
        );
        assert!(
            readme.contains(&format!("\n#### {alert}\n")),
            "the README has no runbook heading '#### {alert}'"
        );
    }

    // authplane, on a clock the test moves (a rollout steps hourly).
    let t0 = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let provider = Provider::start().await;
    let dev = Dev::start_with(
        &[
            ("keys.yaml", &signing_key("auth", "web", KEYS)),
            (
                "payments.yaml",
                &policy(
                    "payments",
                    &stepped("    pauseAboveDenyRatio: {ratio: 0.2, window: 10s, minRequests: 5}\n"),
                ),
            ),
            ("cart.yaml", &policy("cart", &stepped(""))),
            (
                "legacy.yaml",
                &policy(
                    "legacy",
                    "  rollout: {mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}\n  legacySession: {cookie: session_id}\n",
                ),
            ),
            ("open.yaml", &policy("open", "  rollout: {mode: Disabled}\n")),
            (
                "api.yaml",
                &provider.policy("{minInterval: 1s, maxInterval: 1h, maxStale: 1h}"),
            ),
        ],
        clock.clone(),
        0,
    )
    .await;
    let target = dev
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let prometheus = Prometheus::start(&prometheus, &target, &rules);
    // Scraped before any traffic, so that every counter's first increase shows as one.
    let http = reqwest::Client::new();
    eventually(
        "Prometheus scraping authplane",
        PROMETHEUS_DEADLINE,
        || async {
            let up = prometheus.query(&http, "up{job=\"authplane\"} == 1").await;
            up.ok().filter(|samples| !samples.is_empty())
        },
    )
    .await;

    // A rotation: the rotate-at annotation (later than the first key's creation)
    // pre-publishes a new key, which signs once prePublish has passed (the clock moves an
    // hour below).
    let rotate_at = t0.checked_add(SignedDuration::from_secs(1)).unwrap();
    clock.set(rotate_at);
    dev.write(
        "keys.yaml",
        &signing_key("auth", "web", KEYS).replace(
            "  namespace: auth\n",
            &format!(
                "  namespace: auth\n  annotations: {{authplane.io/rotate-at: \"{rotate_at}\"}}\n"
            ),
        ),
    );
    eventually("the next key", CHANGE_DEADLINE, || async {
        (metric(&dev, "authplane_signing_keys", "state=\"Next\"").await == 1.0).then_some(())
    })
    .await;

    // A step: an hour on, both stepped rollouts are at 50%, and the new key signs.
    clock.set(t0.checked_add(SignedDuration::from_mins(61)).unwrap());
    eventually("the step and the rotation", CHANGE_DEADLINE, || async {
        let step = metric(&dev, "authplane_rollout_step", "policy=\"payments\"").await;
        let rotations = metric(&dev, "authplane_key_rotations_total", "name=\"web\"").await;
        (step == 2.0 && rotations >= 1.0).then_some(())
    })
    .await;

    // Decisions of every kind.
    // Tokens valid on authplane's clock, an hour ahead of the real one.
    let now = clock.now().as_second();
    let valid = |iss: String, aud: &str| json!({"iss": iss, "sub": "alice", "aud": aud, "iat": now, "nbf": now, "exp": now + 600});
    let token = dev.sign(
        ("auth", "web"),
        &valid(format!("{}/auth/web", dev.external_url()), "shop"),
    );
    let bearer = format!("Bearer {token}");
    let enforced = user_in("shop/payments", 50.0, true);
    let audited = user_in("shop/payments", 50.0, false);
    let legacy_user = user_in("shop/legacy", 10.0, false);
    assert_eq!(
        authz(
            &dev,
            "payments",
            &[("authorization", &bearer), ("x-user-id", &enforced)]
        )
        .await,
        200
    );
    assert_eq!(
        authz(&dev, "payments", &[("x-user-id", &enforced)]).await,
        401
    );
    let tampered = format!("Bearer {}", common::tamper(&token));
    assert_eq!(
        authz(
            &dev,
            "payments",
            &[("authorization", &tampered), ("x-user-id", &enforced)]
        )
        .await,
        401
    );
    assert_eq!(authz(&dev, "open", &[]).await, 200);
    let cookie = "session_id=s-1";
    assert_eq!(
        authz(
            &dev,
            "legacy",
            &[("cookie", cookie), ("x-user-id", &legacy_user)]
        )
        .await,
        200
    );
    let key = provider.key(0);
    let external = format!(
        "Bearer {}",
        provider.sign(&key, key.kid(), &valid(provider.issuer(), "api"))
    );
    let api = dev
        .get_with("/authz/shop/api", &[("authorization", &external)])
        .await;
    assert_eq!(api.status(), 200);
    // A malformed admission review (answered 400, counted as an admission error).
    let review = dev
        .http
        .post(dev.url("/validate"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(review.status(), 400);
    // Audited requests that would be refused, until the deny ratio holds the rollout.
    eventually("the deny-ratio hold", CHANGE_DEADLINE, || async {
        assert_eq!(
            authz(&dev, "payments", &[("x-user-id", &audited)]).await,
            200
        );
        let held = metric(
            &dev,
            "authplane_rollout_paused",
            "policy=\"payments\",cause=\"deny_ratio\"",
        )
        .await;
        (held >= 1.0).then_some(())
    })
    .await;

    // A revocation, in force.
    dev.write(
        "revocation.yaml",
        &manifest(
            "Revocation",
            "shop",
            "alice-out",
            "  signingKeyRef: {name: web, namespace: auth}\n  subject: alice\n  reason: logout\n",
        ),
    );
    eventually("the revocation", CHANGE_DEADLINE, || async {
        (metric(&dev, "authplane_revocations", "namespace=\"shop\"").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        authz(
            &dev,
            "payments",
            &[("authorization", &bearer), ("x-user-id", &enforced)]
        )
        .await,
        401
    );

    // Prometheus has scraped all of that: every dashboard query returns data.
    let queries = dashboard_queries("shop", &["payments", "cart", "legacy", "open", "api"]);
    for (panel, expr) in &queries {
        let what = format!("data for the panel '{panel}': {expr}");
        eventually(&what, PROMETHEUS_DEADLINE, || async {
            match prometheus.query(&http, expr).await {
                Ok(samples) if !samples.is_empty() => Some(()),
                Ok(_) => None,
                Err(e) if e.contains("error sending request") => None, // still starting
                Err(e) => panic!("{panel}: {expr}: {e}\n{}", prometheus.log()),
            }
        })
        .await;
    }
    // Every alert expression parses, and every series it reads exists.
    for (alert, expr, _) in &alerts {
        prometheus
            .query(&http, expr)
            .await
            .unwrap_or_else(|e| panic!("{alert}: {expr}: {e}"));
        let names: BTreeSet<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("authplane_"))
            .collect();
        assert!(!names.is_empty(), "{alert} reads no authplane series");
        for name in names {
            let samples = prometheus
                .query(&http, &format!("count({name})"))
                .await
                .unwrap();
            assert!(
                !samples.is_empty(),
                "{alert} reads {name}, which authplane does not export"
            );
        }
    }
    // Prometheus evaluates every rule without error, and the held rollout's alert is on
    // its way (pending for `rolloutPausedFor`).
    let (health, pending) = eventually("the rules evaluated", PROMETHEUS_DEADLINE, || async {
        let rules = prometheus.get(&http, "/api/v1/rules").await?;
        let rules: Vec<Value> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == alerts.len()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        let health: Vec<(String, String)> = rules
            .iter()
            .map(|r| {
                (
                    r["name"].to_string(),
                    format!("{} {}", r["health"], r["lastError"]),
                )
            })
            .collect();
        let pending: BTreeSet<String> = rules
            .iter()
            .filter(|r| r["state"] != "inactive")
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        (evaluated && pending.contains("AuthplaneRolloutPausedByDenyRatio"))
            .then_some((health, pending))
    })
    .await;
    for (rule, health) in health {
        assert!(health.starts_with("\"ok\""), "{rule}: {health}");
    }
    assert!(pending.contains("AuthplaneAdmissionErrors"), "{pending:?}");
    drop(prometheus);
    dev.stop().await;
}
