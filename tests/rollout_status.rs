//! `authplane rollout status` as a process against a real dev server: it says where a
//! rollout stands, follows a step as it lands and an edit of the spec with `--watch`, and
//! ends with the exit code a script tests: 0 there, 3 no such policy, 4 paused, 5 not
//! there (yet, or within `--timeout`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use authplane::clock::ManualClock;
use common::{Dev, signing_key};
use jiff::{SignedDuration, Timestamp};

fn manifests() -> String {
    format!(
        "{}---\napiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]\n  audiences: [payments]\n\
         \x20 rollout:\n    mode: Enforce\n    steps: [10, 50, 100]\n    stepEvery: 1h\n\
         \x20   bucketBy: {{header: X-User-Id}}\n",
        signing_key("auth", "web", "  algorithm: EdDSA\n")
    )
}

fn command(dev: &Dev, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_authplane"));
    command.args(args).args([
        "--manifests",
        dev.manifests().to_str().unwrap(),
        "--state",
        dev.state().to_str().unwrap(),
    ]);
    command
}

fn run(dev: &Dev, args: &[&str]) -> Output {
    command(dev, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `rollout status --watch ...` running, its stdout lines arriving on a channel.
fn watching(dev: &Dev, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = command(dev, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

fn next_line(lines: &mpsc::Receiver<String>, within: Duration) -> String {
    lines
        .recv_timeout(within)
        .unwrap_or_else(|e| panic!("no line within {within:?}: {e}"))
}

/// The child's exit code, once it has exited on its own (within `within`).
fn exit_code(child: &mut Child, within: Duration) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap();
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn watch_follows_a_step_as_it_lands_then_an_edit_of_the_spec() {
    // The rollout began 3 seconds short of an hour ago: its second step (50%) lands in
    // 3 seconds, by the clock of the watching process.
    let began = Timestamp::now() - SignedDuration::from_secs(3600 - 3);
    let clock = Arc::new(ManualClock::new(began));
    let dev = Dev::start_with(&[("all.yaml", &manifests())], clock.clone(), 1000).await;
    let status = dev.json("/status/shop/payments").await;
    assert_eq!(status["effectivePercentage"], 10.0);

    let (mut child, lines) = watching(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--watch",
            "--until-percentage",
            "50",
            "--timeout",
            "60s",
        ],
    );
    let first = next_line(&lines, Duration::from_secs(10));
    assert!(
        first.starts_with("AuthPolicy shop/payments: Enforce, 10% of users enforced now (steps 10, 50, 100; next step at"),
        "{first}"
    );
    // The step lands by itself: the watch says so and ends, exit 0.
    let second = next_line(&lines, Duration::from_secs(15));
    assert!(
        second.starts_with("AuthPolicy shop/payments: Enforce, 50% of users enforced now (steps 10, 50, 100; next step at"),
        "{second}"
    );
    assert_eq!(
        next_line(&lines, Duration::from_secs(5)),
        "AuthPolicy shop/payments: rollout reached (at least 50%)"
    );
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)), 0);
    let enforced_now = Timestamp::now();
    clock.set(enforced_now);

    // Without --until-percentage, the watch waits for the last step; an edit that sets
    // 100% now (`rollout set`) gets it there.
    let (mut child, lines) = watching(&dev, &["rollout", "status", "shop/payments", "-w"]);
    let first = next_line(&lines, Duration::from_secs(10));
    assert!(first.contains("50% of users enforced now"), "{first}");
    let set = run(&dev, &["rollout", "set", "shop/payments", "100"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(
        next_line(&lines, Duration::from_secs(10)),
        "AuthPolicy shop/payments: Enforce, 100% of users enforced now"
    );
    assert_eq!(
        next_line(&lines, Duration::from_secs(5)),
        "AuthPolicy shop/payments: rollout reached"
    );
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)), 0);
    dev.stop().await;
}

#[tokio::test]
async fn exit_codes_say_not_there_paused_and_not_found() {
    let dev = Dev::start(&[("all.yaml", &manifests())]).await;

    // Without --watch: one look. 10% is reached; the last step is not, yet.
    let once = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--until-percentage",
            "10",
        ],
    );
    assert_eq!(once.status.code(), Some(0), "{}", text(&once.stderr));
    let once = run(&dev, &["rollout", "status", "shop/payments"]);
    assert_eq!(once.status.code(), Some(5));
    assert!(
        text(&once.stderr)
            .contains("10% of users enforced now, not yet 100% (where its spec leads)"),
        "{}",
        text(&once.stderr)
    );

    // --timeout: given up, exit 5, saying how far it got.
    let started = std::time::Instant::now();
    let timed_out = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--watch",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(timed_out.status.code(), Some(5));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        text(&timed_out.stderr)
            .contains("10% of users enforced now, not 100% (where its spec leads) within 2s"),
        "{}",
        text(&timed_out.stderr)
    );

    // Paused: it will not get there by itself, so a watch ends at once, exit 4.
    let paused = run(&dev, &["rollout", "pause", "shop/payments"]);
    assert!(paused.status.success(), "{}", text(&paused.stderr));
    let watched = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--watch",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(watched.status.code(), Some(4));
    assert!(
        text(&watched.stderr)
            .contains("paused (spec.rollout.paused): `authplane rollout resume` moves it on"),
        "{}",
        text(&watched.stderr)
    );

    // No such policy: exit 3.
    let missing = run(&dev, &["rollout", "status", "shop/nothing", "--watch"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stderr).contains("no AuthPolicy shop/nothing"));

    // A percentage out of range is a usage error before anything is read.
    let bad = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--until-percentage",
            "150",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    dev.stop().await;
}

/// `--server`: what a running server counted for the policy, the would-deny reasons
/// first, beside the rollout read from the folders.
// Several threads: the command blocks this one while the server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_server_it_says_what_the_server_counted() {
    let dev = Dev::start(&[("all.yaml", &manifests())]).await;
    let audited = common::user_in("shop/payments", 10.0, false);
    for _ in 0..2 {
        let response = dev
            .get_with("/authz/shop/payments", &[("x-user-id", &audited)])
            .await;
        assert_eq!(response.status(), 200);
    }
    let enforced = common::user_in("shop/payments", 10.0, true);
    let response = dev
        .get_with("/authz/shop/payments", &[("x-user-id", &enforced)])
        .await;
    assert_eq!(response.status(), 401);

    let server = dev.url("");
    let out = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--until-percentage",
            "10",
            "--server",
            &server,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "decisions counted since the server started: allowed 0; would deny (audited): missing_token 2; denied: missing_token 1"
        ),
        "{stdout}{}",
        text(&out.stderr)
    );

    // A server that does not answer costs the counts, with a warning, not the status.
    let gone = run(
        &dev,
        &[
            "rollout",
            "status",
            "shop/payments",
            "--until-percentage",
            "10",
            "--server",
            "http://127.0.0.1:9",
        ],
    );
    assert_eq!(gone.status.code(), Some(0));
    assert!(
        text(&gone.stderr)
            .contains("warning: no counts from http://127.0.0.1:9/status?namespace=shop"),
        "{}",
        text(&gone.stderr)
    );
    dev.stop().await;
}
