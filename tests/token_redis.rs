//! The token endpoint over a real Redis (`redis-server` on loopback, started per test):
//! two `authplane dev` processes of one manifests folder and state share it, so a
//! refresh on one and a reuse on the other is detected, and fifty concurrent refreshes
//! of one token spread over both make exactly one rotation and one pair; the password
//! comes from a file and is shown nowhere. Redis down: the token endpoint answers 503
//! with `Retry-After` while `/authz` keeps answering. Without redis-server the tests say
//! they are skipped.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authplane::api::ObjectKey;
use authplane::dev::state::StateStore;
use authplane::dev::tokens::TokenSettings;
use authplane::tokens::location::StoreLocation;
use common::redis_server::RedisServer;
use common::{CHANGE_DEADLINE, Dev, eventually, payments_policy, signing_key};
use serde_json::Value;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SUBJECT: &str = "urn:authplane:params:oauth:token-type:subject";
const PASSWORD: &str = "correct-horse-battery-staple";

fn manifests() -> Vec<(&'static str, String)> {
    vec![
        (
            "keys.yaml",
            signing_key("auth", "web", "  algorithm: RS256\n"),
        ),
        (
            "web.yaml",
            r#"apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {name: web, namespace: auth}
spec:
  signingKeyRef: {name: web}
  audiences: [payments]
  allowedClaims: [roles]
  refreshTokens: {absoluteLifetime: 2h, idleLifetime: 1h, reuseGrace: 30s}
"#
            .into(),
        ),
        (
            "policy.yaml",
            payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ]
}

/// A client secret of auth/web in the state folder, as `authplane token client-secret`
/// makes it.
fn client_secret(state: &Path) -> String {
    let new = authplane::token_endpoint::secret::new_secret(&mut authplane::refresh::SystemEntropy)
        .unwrap();
    let id = ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    StateStore::new(state)
        .save_client_secret(&id, &new.stored)
        .unwrap();
    new.secret
}

/// One `authplane dev` process; its log is kept (to check what it shows), it is killed
/// when dropped.
struct Process {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(dir: &Path, redis: &str, password_file: &Path, rate: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authplane"))
            .arg("dev")
            .arg("--manifests")
            .arg(dir.join("manifests"))
            .arg("--state")
            .arg(dir.join("state"))
            .args(["--listen", "127.0.0.1:0"])
            // One issuer URL for both, as behind one Service.
            .args(["--external-url", "http://auth.test"])
            .args(["--token-store", redis])
            .arg("--token-store-password-file")
            .arg(password_file)
            .args(["--token-rate", rate])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        while url.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("`authplane dev` did not start serving");
            url = line
                .split_once("serving on ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned);
        }
        Process {
            child,
            url: url.unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(http: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http
        .post(format!("{base}/auth/web/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(http: &reqwest::Client, base: &str, secret: &str, sub: &str) -> Value {
    let (status, body) = post(
        http,
        base,
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", secret),
            ("subject_token", sub),
            ("subject_token_type", SUBJECT),
            ("audience", "payments"),
            ("authplane_claims", r#"{"roles": ["payments"]}"#),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh(http: &reqwest::Client, base: &str, token: &str) -> (u16, Value) {
    post(
        http,
        base,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "auth/web"),
            ("refresh_token", token),
        ],
    )
    .await
}

async fn decide(http: &reqwest::Client, base: &str, token: &str) -> (u16, String) {
    let response = http
        .get(format!("{base}/authz/shop/payments"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let reason = response
        .headers()
        .get("x-authplane-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), reason)
}

fn text<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

/// Two processes of one folder against one Redis that wants a password.
struct Pair {
    _redis: RedisServer,
    _dir: tempfile::TempDir,
    a: Process,
    b: Process,
    secret: String,
    http: reqwest::Client,
}

fn two_processes(test: &str) -> Option<Pair> {
    two_processes_limited(test, "1000")
}

/// [`two_processes`] with `--token-rate RATE`.
fn two_processes_limited(test: &str, rate: &str) -> Option<Pair> {
    common::install_crypto();
    let redis = RedisServer::start_with(test, &["--requirepass", PASSWORD])?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    for (name, text) in manifests() {
        std::fs::write(dir.path().join("manifests").join(name), text).unwrap();
    }
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let secret = client_secret(&dir.path().join("state"));
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    // One after the other: the first makes the signing key, the second reads it.
    let a = Process::start(dir.path(), &redis.url(), &password_file, rate);
    let b = Process::start(dir.path(), &redis.url(), &password_file, rate);
    Some(Pair {
        _redis: redis,
        _dir: dir,
        a,
        b,
        secret,
        http: reqwest::Client::new(),
    })
}

#[tokio::test]
async fn a_refresh_on_one_process_and_a_reuse_on_the_other_is_detected() {
    let Some(p) = two_processes("a_refresh_on_one_process_and_a_reuse_on_the_other_is_detected")
    else {
        return;
    };
    let (a, b, http) = (&p.a.url, &p.b.url, &p.http);
    let session = login(http, a, &p.secret, "alice").await;
    let first = text(&session, "refresh_token").to_owned();
    // Rotated on A, and the result rotated again on B: both see one family.
    let (status, second) = refresh(http, a, &first).await;
    assert_eq!(status, 200, "{second}");
    let (status, third) = refresh(http, b, text(&second, "refresh_token")).await;
    assert_eq!(status, 200, "{third}");
    let access = text(&third, "access_token").to_owned();
    assert_eq!(decide(http, a, &access).await.0, 200);
    assert_eq!(decide(http, b, &access).await.0, 200);
    // The first token, two generations old (outside any grace), presented on B: reuse.
    let (status, body) = refresh(http, b, &first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // The family is dead on A too, and the session's access token refused at both.
    let (status, body) = refresh(http, a, text(&third, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    for base in [a, b] {
        eventually(
            "the session's access token refused",
            CHANGE_DEADLINE,
            || async {
                (decide(http, base, &access).await == (401, "token_revoked".to_owned()))
                    .then_some(())
            },
        )
        .await;
    }
    // The password was read from its file and is shown nowhere.
    for process in [&p.a, &p.b] {
        let log = process.log();
        assert!(log.contains("token endpoint served"), "{log}");
        assert!(!log.contains(PASSWORD), "{log}");
        for page in ["/metrics", "/status"] {
            let shown = http
                .get(format!("{}{page}", process.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(!shown.contains(PASSWORD), "{page}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_over_two_processes_make_one_rotation() {
    let Some(p) = two_processes("fifty_concurrent_refreshes_over_two_processes_make_one_rotation")
    else {
        return;
    };
    let session = login(&p.http, &p.a.url, &p.secret, "bob").await;
    let first = text(&session, "refresh_token").to_owned();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let base = if i % 2 == 0 { &p.a.url } else { &p.b.url }.clone();
            let (http, first) = (p.http.clone(), first.clone());
            tokio::spawn(async move { refresh(&http, &base, &first).await })
        })
        .collect();
    let mut pairs = Vec::new();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        pairs.push((
            text(&body, "refresh_token").to_owned(),
            text(&body, "access_token").to_owned(),
        ));
    }
    // Every answer is the same pair (RS256 signs deterministically: the same access
    // token too): one rotation, the rest replays of it.
    let distinct: std::collections::BTreeSet<_> = pairs.iter().collect();
    assert_eq!(distinct.len(), 1, "{} different pairs", distinct.len());
    // And the family is alive, one generation on: the pair refreshes on either process.
    let (status, body) = refresh(&p.http, &p.b.url, &pairs[0].0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decide(&p.http, &p.a.url, text(&body, "access_token"))
            .await
            .0,
        200
    );
}

/// A dev server of [`manifests`] in this process, its token store on `redis`.
async fn dev_on(redis: &RedisServer) -> Dev {
    let manifests = manifests();
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let tokens = TokenSettings {
        store: Some(StoreLocation::parse(&redis.url()).unwrap()),
        rate_per_minute: 1000,
        ..TokenSettings::default()
    };
    Dev::start_with_tokens(
        &refs,
        Arc::new(authplane::clock::SystemClock),
        common::test_settings(),
        tokens,
    )
    .await
}

#[tokio::test]
async fn redis_down_answers_503_with_retry_after_while_authz_answers() {
    let Some(mut redis) =
        RedisServer::start("redis_down_answers_503_with_retry_after_while_authz_answers")
    else {
        return;
    };
    let dev = dev_on(&redis).await;
    let secret = client_secret(&dev.state());
    let base = dev.url("");
    let base = base.trim_end_matches('/');
    let session = login(&dev.http, base, &secret, "carol").await;
    let access = text(&session, "access_token").to_owned();
    // No families file: the Redis holds them.
    assert!(!dev.state().join("tokens.redb").exists());

    redis.kill();
    let response = dev
        .http
        .post(format!("{base}/auth/web/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "auth/web"),
            ("refresh_token", text(&session, "refresh_token")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // Decisions and JWKS do not depend on the store.
    assert_eq!(decide(&dev.http, base, &access).await.0, 200);
    assert_eq!(
        dev.get("/auth/web/.well-known/jwks.json").await.status(),
        200
    );

    // Back (from its append-only file): the session refreshes as before.
    redis.restart();
    let (status, body) = refresh(&dev.http, base, text(&session, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decide(&dev.http, base, text(&body, "access_token")).await.0,
        200
    );
    dev.stop().await;
}

/// A refresh with a token nobody issued: a failure counted against the client address.
async fn garbage(http: &reqwest::Client, base: &str) -> (u16, Option<u64>) {
    let response = http
        .post(format!("{base}/auth/web/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "auth/web"),
            ("refresh_token", "aprt_garbage"),
        ])
        .send()
        .await
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (response.status().as_u16(), retry)
}

/// A login whose `audience` the client does not allow: a failure of a request proven to
/// be auth/web's (its secret checked).
async fn wrong_audience(http: &reqwest::Client, base: &str, secret: &str) -> u16 {
    post(
        http,
        base,
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "auth/web"),
            ("client_secret", secret),
            ("subject_token", "mallory"),
            ("subject_token_type", SUBJECT),
            ("audience", "nobody"),
        ],
    )
    .await
    .0
}

#[tokio::test]
async fn two_processes_share_one_budget_and_fall_back_to_their_own_without_redis() {
    let Some(mut p) = two_processes_limited(
        "two_processes_share_one_budget_and_fall_back_to_their_own_without_redis",
        "10",
    ) else {
        return;
    };
    let (a, b, http) = (p.a.url.clone(), p.b.url.clone(), p.http.clone());
    // Ten failures from one address, spread over both processes: the budget is one.
    for i in 0..10 {
        let base = if i % 2 == 0 { &a } else { &b };
        assert_eq!(garbage(&http, base).await, (400, None), "request {i}");
    }
    for base in [&a, &b] {
        let (status, retry) = garbage(&http, base).await;
        assert_eq!(status, 429, "the 11th within a minute, over both");
        assert!(retry.unwrap() >= 1);
    }
    // A client's own budget per address is shared too.
    for i in 0..10 {
        let base = if i % 2 == 0 { &a } else { &b };
        assert_eq!(wrong_audience(&http, base, &p.secret).await, 400, "{i}");
    }
    assert_eq!(wrong_audience(&http, &b, &p.secret).await, 429);
    assert_eq!(wrong_audience(&http, &a, &p.secret).await, 429);

    // Redis away: each process limits on its own, afresh, and says so once.
    let session = login(&http, &a, &p.secret, "erin").await;
    p._redis.kill();
    // What needs no store still succeeds within the limits: a logout by access token.
    let response = http
        .post(format!("{a}/auth/web/revoke"))
        .form(&[("token", text(&session, "access_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for base in [&a, &b] {
        for i in 0..10 {
            // The failure budget of each process is its own now ...
            let (status, _) = garbage(&http, base).await;
            assert_ne!(status, 429, "{base}: request {i} within its own budget");
        }
        // ... and limited all the same.
        assert_eq!(garbage(&http, base).await.0, 429);
    }
    for process in [&p.a, &p.b] {
        let log = process.log();
        let said = log
            .lines()
            .filter(|line| line.contains("the shared rate limits do not answer"))
            .count();
        assert_eq!(said, 1, "{log}");
        let metrics = http
            .get(format!("{}/metrics", process.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("authplane_shared_rate_limits_up 0"),
            "{metrics}"
        );
        let fallbacks: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("authplane_rate_limit_fallbacks_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(fallbacks >= 11.0, "{fallbacks}");
    }
}

/// `authplane dev ARGS` must refuse to start; its stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_authplane"));
    command
        .arg("dev")
        .arg("--manifests")
        .arg(dir)
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    refused_by(command, args)
}

/// `authplane run ARGS` must refuse to start (before it reaches any cluster: its
/// kubeconfig does not exist); its stderr.
fn run_refused(dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_authplane"));
    command
        .arg("run")
        .arg("--kubeconfig")
        .arg(dir.join("no-kubeconfig"))
        .args(["--external-url", "https://auth.example.com"])
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    let stderr = refused_by(command, args);
    assert!(
        !stderr.contains("no-kubeconfig"),
        "refused too late: {stderr}"
    );
    stderr
}

fn refused_by(mut command: Command, args: &[&str]) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`authplane {:?}` started instead of refusing", args);
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a process, with a deadline
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn token_store_flags_that_do_not_go_together_are_refused_without_showing_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "hunter2\n").unwrap();
    let password_file = password_file.to_str().unwrap();

    let stderr = refused(
        dir.path(),
        &["--token-store", "reddis://app:hunter2@redis:6379"],
    );
    assert!(stderr.contains("not a reddis:// URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let stderr = refused(dir.path(), &["--token-store", "redis://app:hunter2@[::1/"]);
    assert!(stderr.contains("is not a URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let stderr = refused(
        dir.path(),
        &[
            "--token-store",
            "/tmp/tokens.redb",
            "--token-store-password-file",
            password_file,
        ],
    );
    assert!(stderr.contains("goes with a redis://"), "{stderr}");

    let missing = dir.path().join("no-such-file");
    let stderr = refused(
        dir.path(),
        &[
            "--token-store",
            "redis://127.0.0.1:1",
            "--token-store-password-file",
            missing.to_str().unwrap(),
        ],
    );
    assert!(
        stderr.contains("reading the token store password"),
        "{stderr}"
    );

    // A CA is for TLS only, and must hold a certificate.
    let stderr = refused(
        dir.path(),
        &[
            "--token-store",
            "redis://127.0.0.1:1",
            "--token-store-ca-file",
            password_file,
        ],
    );
    assert!(stderr.contains("goes with a rediss://"), "{stderr}");
    let stderr = refused(
        dir.path(),
        &[
            "--token-store",
            "rediss://127.0.0.1:1",
            "--token-store-ca-file",
            password_file,
        ],
    );
    assert!(
        stderr.contains("is not PEM") || stderr.contains("holds no certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn run_takes_the_token_store_flags_of_dev_and_refuses_the_same_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "hunter2\n").unwrap();
    let password_file = password_file.to_str().unwrap();

    let stderr = run_refused(
        dir.path(),
        &["--token-store", "reddis://app:hunter2@redis:6379"],
    );
    assert!(stderr.contains("not a reddis:// URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let stderr = run_refused(
        dir.path(),
        &[
            "--token-store",
            "/var/lib/authplane/tokens.redb",
            "--token-store-password-file",
            password_file,
        ],
    );
    assert!(stderr.contains("goes with a redis://"), "{stderr}");
    let stderr = run_refused(
        dir.path(),
        &[
            "--token-store",
            "redis://redis:6379",
            "--token-store-ca-file",
            password_file,
        ],
    );
    assert!(stderr.contains("goes with a rediss://"), "{stderr}");
    // Well-formed flags get past them, to the (missing) cluster.
    let stderr = refused_by(
        {
            let mut command = Command::new(env!("CARGO_BIN_EXE_authplane"));
            command
                .arg("run")
                .arg("--kubeconfig")
                .arg(dir.path().join("no-kubeconfig"))
                .args(["--external-url", "https://auth.example.com"])
                .args(["--listen", "127.0.0.1:0"])
                .args(["--token-store", "rediss://redis:6379"])
                .args(["--token-store-password-file", password_file]);
            command
        },
        &[],
    );
    assert!(stderr.contains("no-kubeconfig"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// `POST /auth/web/revoke` with a refresh token of auth/web.
async fn logout(http: &reqwest::Client, base: &str, refresh_token: &str) -> u16 {
    http.post(format!("{base}/auth/web/revoke"))
        .form(&[("token", refresh_token), ("client_id", "auth/web")])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The Revocation files logouts would have written into the shared manifests folder.
fn logout_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("manifests"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("logout-"))
        .collect()
}

/// The promise: a logout (or a reuse) on one replica is refused at every replica within
/// a second. Measured from the answer of the logout to the first refusal on the other.
const WITHIN_A_SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_logout_on_one_process_is_refused_on_the_other_within_a_second_and_after_a_restart() {
    let test =
        "a_logout_on_one_process_is_refused_on_the_other_within_a_second_and_after_a_restart";
    let Some(mut p) = two_processes(test) else {
        return;
    };
    let http = p.http.clone();
    let ended = login(&http, &p.a.url, &p.secret, "dora").await;
    let kept = login(&http, &p.a.url, &p.secret, "dora").await;
    let access = text(&ended, "access_token").to_owned();
    assert_eq!(decide(&http, &p.b.url, &access).await.0, 200);

    assert_eq!(
        logout(&http, &p.a.url, text(&ended, "refresh_token")).await,
        200
    );
    // Refused on A as soon as A answered, and on B within a second.
    assert_eq!(
        decide(&http, &p.a.url, &access).await,
        (401, "token_revoked".to_owned())
    );
    let started = std::time::Instant::now();
    eventually(
        "the logged-out token refused on B",
        WITHIN_A_SECOND,
        || async {
            (decide(&http, &p.b.url, &access).await == (401, "token_revoked".to_owned()))
                .then_some(())
        },
    )
    .await;
    eprintln!("logout on A refused on B after {:?}", started.elapsed());
    // Kept in Redis: no Revocation written (in dev mode, a file; on a cluster, an object).
    assert_eq!(logout_files(p._dir.path()), Vec::<String>::new());
    // The other session of the user is untouched.
    assert_eq!(
        decide(&http, &p.b.url, text(&kept, "access_token")).await.0,
        200
    );

    // A restart of B (a new process) loads the logouts before it serves.
    let password_file = p._dir.path().join("redis-password");
    drop(std::mem::replace(
        &mut p.b,
        Process::start(p._dir.path(), &p._redis.url(), &password_file, "1000"),
    ));
    assert_eq!(
        decide(&http, &p.b.url, &access).await,
        (401, "token_revoked".to_owned())
    );
    assert_eq!(
        decide(&http, &p.b.url, text(&kept, "access_token")).await.0,
        200
    );
    let status: Value = http
        .get(format!("{}/status", p.b.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["endedSessions"],
        serde_json::json!([{"issuer": "auth/web", "reason": "logout", "count": 1}]),
        "{status}"
    );
}

#[tokio::test]
async fn a_reuse_on_one_process_is_refused_on_the_other_within_a_second() {
    let Some(p) = two_processes("a_reuse_on_one_process_is_refused_on_the_other_within_a_second")
    else {
        return;
    };
    let http = &p.http;
    let session = login(http, &p.a.url, &p.secret, "erin").await;
    let first = text(&session, "refresh_token").to_owned();
    let (_, second) = refresh(http, &p.a.url, &first).await;
    let (status, third) = refresh(http, &p.a.url, text(&second, "refresh_token")).await;
    assert_eq!(status, 200, "{third}");
    let access = text(&third, "access_token").to_owned();
    assert_eq!(decide(http, &p.b.url, &access).await.0, 200);
    // Reuse detected on A: the session's access token refused on B within a second.
    let (status, _) = refresh(http, &p.a.url, &first).await;
    assert_eq!(status, 400);
    eventually(
        "the reused session refused on B",
        WITHIN_A_SECOND,
        || async {
            (decide(http, &p.b.url, &access).await == (401, "token_revoked".to_owned()))
                .then_some(())
        },
    )
    .await;
    assert_eq!(logout_files(p._dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_redis_outage_keeps_the_known_logouts_and_a_replica_that_never_read_them_is_not_ready() {
    let test =
        "a_redis_outage_keeps_the_known_logouts_and_a_replica_that_never_read_them_is_not_ready";
    let Some(mut p) = two_processes(test) else {
        return;
    };
    let http = p.http.clone();
    let ended = login(&http, &p.a.url, &p.secret, "finn").await;
    let kept = login(&http, &p.a.url, &p.secret, "finn").await;
    assert_eq!(
        logout(&http, &p.a.url, text(&ended, "refresh_token")).await,
        200
    );
    let access = text(&ended, "access_token").to_owned();
    eventually("the logout in force on B", CHANGE_DEADLINE, || async {
        (decide(&http, &p.b.url, &access).await.0 == 401).then_some(())
    })
    .await;

    // Redis down: decisions flow on B with the logouts it knows; it stays ready,
    // degraded, once it notices.
    p._redis.kill();
    let readyz = |base: String| {
        let http = http.clone();
        async move {
            let response = http.get(format!("{base}/readyz")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    eventually("B degraded", CHANGE_DEADLINE, || async {
        let (status, body) = readyz(p.b.url.clone()).await;
        (status == 200 && body.contains("token store logouts: failing")).then_some(())
    })
    .await;
    assert_eq!(
        decide(&http, &p.b.url, &access).await,
        (401, "token_revoked".to_owned())
    );
    assert_eq!(
        decide(&http, &p.b.url, text(&kept, "access_token")).await.0,
        200
    );

    // A replica started while Redis is down has never read the logouts: not ready.
    let password_file = p._dir.path().join("redis-password");
    let c = Process::start(p._dir.path(), &p._redis.url(), &password_file, "1000");
    let (status, body) = readyz(c.url.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("token store logouts: not listed yet"),
        "{body}"
    );
    // Redis back: it loads them, becomes ready, and refuses the logged-out token.
    p._redis.restart();
    eventually("C ready", CHANGE_DEADLINE, || async {
        let (status, body) = readyz(c.url.clone()).await;
        (status == 200 && !body.contains("token store logouts")).then_some(())
    })
    .await;
    assert_eq!(
        decide(&http, &c.url, &access).await,
        (401, "token_revoked".to_owned())
    );
}

/// The Redis key of the ended-sessions log of a dev state folder (its installation is a
/// digest of the folder's path).
fn ended_key(state: &Path) -> String {
    let absolute = std::fs::canonicalize(state).unwrap();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        absolute.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("authplane:dev-{hex}:ended")
}

#[tokio::test]
async fn malformed_entries_in_the_redis_log_are_skipped_and_counted() {
    let Some(redis) =
        RedisServer::start("malformed_entries_in_the_redis_log_are_skipped_and_counted")
    else {
        return;
    };
    let dev = dev_on(&redis).await;
    let secret = client_secret(&dev.state());
    let base = dev.url("");
    let base = base.trim_end_matches('/');
    let first = login(&dev.http, base, &secret, "gus").await;
    let second = login(&dev.http, base, &secret, "gus").await;
    assert_eq!(
        logout(&dev.http, base, text(&first, "refresh_token")).await,
        200
    );

    // Entries of the wrong shape, as a bug or another program could write them.
    let key = ended_key(&dev.state());
    // The last one reads as an entry whose age overflows: it must not stop this
    // replica from following the log.
    for junk in [
        "e junk",
        "x y",
        "e \"auth web 0123 logout 1 2\"",
        "e \"auth web 00112233445566778899aabbccddeeff logout -9223372036854775808 9999999999\"",
    ] {
        let answer = redis.command(&format!("XADD {key} * {junk}")).unwrap();
        assert!(!answer.starts_with('-'), "{answer}");
    }
    // Skipped: the next logout still comes through, the first still counts.
    assert_eq!(
        logout(&dev.http, base, text(&second, "refresh_token")).await,
        200
    );
    for session in [&first, &second] {
        assert_eq!(
            decide(&dev.http, base, text(session, "access_token")).await,
            (401, "token_revoked".to_owned())
        );
    }
    let metrics = dev.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("authplane_session_revocations_malformed_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("authplane_session_revocations 2"),
        "{metrics}"
    );
    dev.stop().await;
}
