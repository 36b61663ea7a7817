//! The command-line tools against a real dev server: the commands that steer keys and
//! rollouts work on a manifests folder (changing only the values they set), `bucket` and
//! `rollout` report what the server enforces, what would not apply is refused before
//! anything is written, and bad flags are refused at start with what to do instead.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use authplane::clock::ManualClock;
use authplane::policy::rollout;
use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use jiff::{SignedDuration, Timestamp};

const JWKS: &str = "/auth/web/.well-known/jwks.json";

fn policy() -> String {
    "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: payments, namespace: shop}\n\
     spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [payments]\n\
     \x20 rollout:\n    mode: Enforce   # staged, see the playbook\n    steps: [10, 50, 100]\n    stepEvery: 1h\n\
     \x20   bucketBy: {header: X-User-Id}\n"
        .to_owned()
}

/// `# comment` + the SigningKey, then the policy, in one file, as people write them.
fn manifests() -> String {
    format!(
        "# the web tier's keys\n{}---\n# payments\n{}",
        signing_key("auth", "web", "  algorithm: EdDSA\n"),
        policy()
    )
}

fn authplane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[tokio::test]
async fn rotate_revoke_and_rollout_work_on_a_manifests_folder() {
    let dev = Dev::start(&[("all.yaml", &manifests())]).await;
    let dir = dev.manifests();
    let dir = dir.to_str().unwrap();
    let state = dev.state();
    let state = state.to_str().unwrap();
    let first = dev.kids(JWKS).await.unwrap();
    assert_eq!(first.len(), 1);

    let rotated = authplane(&["rotate", "auth/web", "--manifests", dir]);
    let out = succeeded(&rotated);
    assert!(
        out.contains("SigningKey auth/web: authplane.io/rotate-at="),
        "{out}"
    );
    assert!(text(&rotated.stderr).contains(&format!("dev mode: manifests folder {dir}")));
    // The new key is pre-published: the JWKS has two keys, the old one still signs.
    let kids = eventually("the rotation's new key", CHANGE_DEADLINE, || async {
        dev.kids(JWKS).await.filter(|kids| kids.len() == 2)
    })
    .await;
    let written = std::fs::read_to_string(dev.manifests().join("all.yaml")).unwrap();
    // Only the annotation is added: every other byte of the file stays (issue 18.9).
    let rotate_at = written
        .lines()
        .find(|l| l.contains("authplane.io/rotate-at"))
        .unwrap();
    assert_eq!(
        written,
        manifests().replace(
            "  namespace: auth\n",
            &format!("  namespace: auth\n  annotations:\n{rotate_at}\n")
        ),
        "{written}"
    );

    // A typo is refused and changes nothing. It begins with `-`, as one kid in 64 does
    // (base64url): the command reads it as the kid, not as a flag.
    let before = std::fs::read_to_string(dev.manifests().join("all.yaml")).unwrap();
    let typo = authplane(&[
        "revoke-key",
        "auth/web",
        "-not-a-kid",
        "--manifests",
        dir,
        "--state",
        state,
    ]);
    assert!(!typo.status.success());
    let stderr = text(&typo.stderr);
    assert!(
        stderr.contains("-not-a-kid is not a key of SigningKey auth/web"),
        "{stderr}"
    );
    // Dev mode names the kids there are, and has no kubectl to suggest.
    assert!(
        stderr.contains(&format!("{} (Active)", first[0])),
        "{stderr}"
    );
    assert!(!stderr.contains("kubectl"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dev.manifests().join("all.yaml")).unwrap(),
        before
    );

    let old = &first[0];
    succeeded(&authplane(&[
        "revoke-key",
        "auth/web",
        old,
        "--manifests",
        dir,
        "--state",
        state,
    ]));
    let left = eventually("the revoked key to leave", CHANGE_DEADLINE, || async {
        dev.kids(JWKS).await.filter(|kids| !kids.contains(old))
    })
    .await;
    assert_eq!(
        left,
        kids.into_iter().filter(|k| k != old).collect::<Vec<_>>()
    );
    // The Active key was revoked: the next one signs early, and that is a rotation.
    eventually("the early rotation counted", CHANGE_DEADLINE, || async {
        let rotations = dev
            .metric(r#"authplane_key_rotations_total{namespace="auth",name="web"}"#)
            .await;
        (rotations == 1.0).then_some(())
    })
    .await;

    succeeded(&authplane(&[
        "rollout",
        "pause",
        "shop/payments",
        "--manifests",
        dir,
    ]));
    eventually("the pause", CHANGE_DEADLINE, || async {
        (dev.json("/status/shop/payments").await["paused"] == true).then_some(())
    })
    .await;
    let set = succeeded(&authplane(&[
        "rollout",
        "set",
        "shop/payments",
        "50",
        "--manifests",
        dir,
    ]));
    assert!(
        set.contains("AuthPolicy shop/payments: Enforce, 50% of users enforced now"),
        "{set}"
    );
    let written = std::fs::read_to_string(dev.manifests().join("all.yaml")).unwrap();
    assert!(
        written.contains("    mode: Enforce   # staged, see the playbook\n    bucketBy: {header: X-User-Id}\n    percentage: 50\n"),
        "the steps are removed, the rest of the policy kept as written: {written}"
    );
    eventually("50%", CHANGE_DEADLINE, || async {
        (dev.json("/status/shop/payments").await["effectivePercentage"] == 50.0).then_some(())
    })
    .await;
    let refused = authplane(&["rollout", "set", "shop/missing", "50", "--manifests", dir]);
    assert!(
        text(&refused.stderr).contains("no AuthPolicy shop/missing"),
        "{}",
        text(&refused.stderr)
    );
    dev.stop().await;
}

/// Issue 11, item 10: `bucket` printed "Enforce at 10%" while the server enforced 50%.
#[tokio::test]
async fn bucket_reports_the_step_the_server_enforces_now() {
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    // The rollout began 90 minutes ago: its second step (50%) started 30 minutes ago.
    let clock = Arc::new(ManualClock::new(now - SignedDuration::from_mins(90)));
    let dev = Dev::start_with(&[("all.yaml", &manifests())], clock.clone(), 1000).await;
    clock.set(Timestamp::now());
    assert_eq!(
        dev.json("/status/shop/payments").await["effectivePercentage"],
        50.0
    );

    let user = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| {
            let b = rollout::bucket("shop/payments", u);
            !rollout::is_enforced(b, rollout::percentage_to_buckets(10.0))
                && rollout::is_enforced(b, rollout::percentage_to_buckets(50.0))
        })
        .unwrap();
    let (dir, state) = (dev.manifests(), dev.state());
    let out = succeeded(&authplane(&[
        "bucket",
        "--policy",
        "shop/payments",
        "--key",
        &user,
        "--manifests",
        dir.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]));
    assert!(out.contains("enforced now: yes (Enforce at 50%)"), "{out}");
    assert_eq!(
        dev.get_with("/authz/shop/payments", &[("x-user-id", &user)])
            .await
            .status(),
        401,
        "the server enforces the same user"
    );

    // Issue 18.9: `rollout pause` printed "percentage 100" here; it says what is enforced
    // now, and `bucket` says the rollout is paused.
    let (dir, state) = (dir.to_str().unwrap(), state.to_str().unwrap());
    let paused = succeeded(&authplane(&[
        "rollout",
        "pause",
        "shop/payments",
        "--manifests",
        dir,
        "--state",
        state,
    ]));
    assert!(
        paused.contains("AuthPolicy shop/payments: Enforce, 50% of users enforced now (steps 10, 50, 100; paused"),
        "{paused}"
    );
    let out = succeeded(&authplane(&[
        "bucket",
        "--policy",
        "shop/payments",
        "--key",
        &user,
        "--manifests",
        dir,
        "--state",
        state,
    ]));
    assert!(out.contains("rollout paused"), "{out}");
    let again = succeeded(&authplane(&[
        "rollout",
        "pause",
        "shop/payments",
        "--manifests",
        dir,
        "--state",
        state,
    ]));
    assert!(
        again.contains("already paused; nothing was written"),
        "{again}"
    );
    dev.stop().await;
}

/// Issue 18.9: a rollback to 0% still refuses requests without any credential while
/// `legacySession` is set: `rollout set 0` says so.
#[test]
fn a_rollback_says_what_legacy_session_still_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy().replace(
        "    bucketBy: {header: X-User-Id}\n",
        "    bucketBy: {header: X-User-Id}\n  legacySession: {cookie: session_id}\n",
    );
    std::fs::write(dir.path().join("policy.yaml"), &policy).unwrap();
    let out = succeeded(&authplane(&[
        "rollout",
        "set",
        "shop/payments",
        "0",
        "--manifests",
        dir.path().to_str().unwrap(),
    ]));
    assert!(
        out.contains("note: legacySession is set: a request with neither a valid token nor the session_id cookie is still refused (401)"),
        "{out}"
    );
}

/// Issue 18.9: `rollout pause` of a policy without steps printed `paused`, rc 0, and
/// nothing was paused.
#[test]
fn pausing_a_policy_without_steps_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy().replace(
        "    steps: [10, 50, 100]\n    stepEvery: 1h\n",
        "    percentage: 10\n",
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, &policy).unwrap();
    let dir = dir.path().to_str().unwrap();
    let rolled_back = succeeded(&authplane(&[
        "rollout",
        "set",
        "shop/payments",
        "0",
        "--manifests",
        dir,
    ]));
    assert!(
        rolled_back.contains("Enforce, 0% of users enforced now"),
        "{rolled_back}"
    );
    assert!(!rolled_back.contains("legacySession"), "{rolled_back}");
    std::fs::write(&file, &policy).unwrap();
    for command in ["pause", "resume"] {
        let refused = authplane(&["rollout", command, "shop/payments", "--manifests", dir]);
        assert!(!refused.status.success(), "{command}");
        let stderr = text(&refused.stderr);
        assert!(
            stderr.contains(&format!(
                "has no rollout.steps, so there is nothing to {command}"
            )) && stderr.contains("authplane rollout set shop/payments 0"),
            "{stderr}"
        );
        assert!(text(&refused.stdout).is_empty());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), policy);
    }
}

#[test]
fn token_mint_refuses_negative_and_too_long_lifetimes_clearly() {
    // No server needed: the refusals come before any key is read... except the
    // retention, which needs keys: those come from a dev server's state below.
    let negative = authplane(&[
        "token", "mint", "--key", "auth/web", "--sub", "a", "--ttl", "-5m",
    ]);
    assert!(!negative.status.success());
    let stderr = text(&negative.stderr);
    assert!(stderr.contains("--ttl -5m"), "{stderr}");
    assert!(
        !stderr.contains("unexpected argument"),
        "a clap error: {stderr}"
    );
}

#[tokio::test]
async fn token_mint_refuses_a_token_that_outlives_its_key_unless_forced() {
    let spec = "  algorithm: EdDSA\n  maxTokenLifetime: 24h\n  rotation:\n    retainFor: 24h\n";
    let dev = Dev::start(&[("web.yaml", &signing_key("auth", "web", spec))]).await;
    let state = dev.state();
    let mint = |ttl: &str, force: bool| {
        let mut args = vec![
            "token", "mint", "--key", "auth/web", "--sub", "a", "--ttl", ttl,
        ];
        args.extend(["--state", state.to_str().unwrap()]);
        if force {
            args.push("--force");
        }
        authplane(&args)
    };
    let fine = mint("24h", false);
    succeeded(&fine);
    // Issue 18.9: nothing on stderr when all is well (`TOKEN=$(authplane token mint ...)`).
    assert_eq!(text(&fine.stderr), "");
    let long = mint("87600h", false);
    assert!(!long.status.success());
    let stderr = text(&long.stderr);
    assert!(
        stderr.contains("outlives its key") && stderr.contains("--force"),
        "{stderr}"
    );
    let forced = mint("87600h", true);
    let token = succeeded(&forced);
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    // Forced past maxTokenLifetime: minted, with the warning that policies refuse it.
    let warning = text(&forced.stderr);
    assert!(warning.contains("token_lifetime_too_long"), "{warning}");
    dev.stop().await;
}

/// Issue 18.6: `--claim exp=1` said "use the matching flag" (there is none of that
/// name), and `--claim roles=[a,b]` silently became the string "[a,b]".
#[tokio::test]
async fn token_mint_says_which_flag_sets_a_claim_and_when_json_is_not() {
    let dev = Dev::start(&[(
        "web.yaml",
        &signing_key("auth", "web", "  algorithm: EdDSA\n"),
    )])
    .await;
    let state = dev.state();
    let mint = |claim: &str| {
        authplane(&[
            "token",
            "mint",
            "--key",
            "auth/web",
            "--sub",
            "a",
            "--claim",
            claim,
            "--state",
            state.to_str().unwrap(),
        ])
    };
    for (claim, says) in [
        ("exp=1", "use --ttl"),
        ("iat=1", "it is the time of minting"),
        ("sid=x", "use --session"),
    ] {
        let refused = mint(claim);
        assert!(!refused.status.success(), "{claim}");
        assert!(
            text(&refused.stderr).contains(says),
            "{claim}: {}",
            text(&refused.stderr)
        );
    }
    let warned = mint("roles=[a,b]");
    let token = succeeded(&warned);
    assert_eq!(token.trim().split('.').count(), 3);
    let stderr = text(&warned.stderr);
    assert!(
        stderr.starts_with("warning: --claim roles=[a,b]: the value is not valid JSON")
            && stderr.contains(r#"roles='["a","b"]'"#),
        "{stderr}"
    );
    assert_eq!(
        text(&mint(r#"roles=["a","b"]"#).stderr),
        "",
        "valid JSON: no warning"
    );
    dev.stop().await;
}

#[tokio::test]
async fn token_mint_refuses_a_ttl_beyond_the_keys_max_token_lifetime() {
    // retainFor covers 2h, maxTokenLifetime (default 1h) does not.
    let spec = "  algorithm: EdDSA\n  rotation:\n    retainFor: 24h\n";
    let open = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: pay, namespace: shop}\nspec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  rollout: {mode: Enforce, percentage: 100}\n";
    let dev = Dev::start(&[
        ("web.yaml", &signing_key("auth", "web", spec)),
        ("policy.yaml", open),
    ])
    .await;
    let state = dev.state();
    let mint = |ttl: &str, force: bool| {
        let mut args = vec![
            "token", "mint", "--key", "auth/web", "--sub", "a", "--ttl", ttl,
        ];
        args.extend(["--state", state.to_str().unwrap()]);
        if force {
            args.push("--force");
        }
        authplane(&args)
    };
    succeeded(&mint("1h", false));
    let long = mint("2h", false);
    assert!(!long.status.success());
    let stderr = text(&long.stderr);
    assert!(
        stderr.contains("--ttl 2h is longer than the key's maxTokenLifetime 1h"),
        "{stderr}"
    );
    // Forced, it is minted with a warning, and a policy that sets no lifetime of its own
    // still refuses it: the key's limit holds everywhere, so its Revocations can lapse.
    let forced = mint("2h", true);
    let token = succeeded(&forced);
    let stderr = text(&forced.stderr);
    assert!(
        stderr.contains("warning: --ttl 2h is longer than the key's maxTokenLifetime 1h: AuthPolicies refuse this token (token_lifetime_too_long)"),
        "{stderr}"
    );
    let response = dev
        .get_with(
            "/authz/shop/pay",
            &[("Authorization", &format!("Bearer {}", token.trim()))],
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["x-authplane-reason"],
        "token_lifetime_too_long"
    );
    let within = text(&mint("1h", false).stderr);
    assert!(!within.contains("warning"), "{within}");
    dev.stop().await;
}

#[tokio::test]
async fn revoke_and_list_in_dev_mode() {
    let spec = "  algorithm: EdDSA\n  maxTokenLifetime: 15m\n";
    let policy = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: pay, namespace: shop}\nspec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  rollout: {mode: Enforce, percentage: 100}\n";
    let dev = Dev::start(&[
        ("web.yaml", &signing_key("auth", "web", spec)),
        ("policy.yaml", policy),
    ])
    .await;
    let manifests = dev.manifests();
    let dir = manifests.to_str().unwrap();
    let state = dev.state();
    let token = succeeded(&authplane(&[
        "token",
        "mint",
        "--key",
        "auth/web",
        "--sub",
        "zoe",
        "--session",
        "s-9",
        "--state",
        state.to_str().unwrap(),
    ]));
    let token = token.trim();
    let bearer = format!("Bearer {token}");
    let status = || async {
        dev.get_with("/authz/shop/pay", &[("Authorization", bearer.as_str())])
            .await
            .status()
    };
    assert_eq!(status().await, 200);
    let revoked = authplane(&[
        "revoke",
        "--issuer",
        "auth/web",
        "--session",
        "s-9",
        "--reason",
        "logout",
        "--manifests",
        dir,
    ]);
    let out = succeeded(&revoked);
    assert!(out.starts_with("Revocation auth/revoke-"), "{out}");
    // When it lapses: the key's 15 minutes and the largest leeway, 5, from now.
    let list = succeeded(&authplane(&["revocations", "list", "--manifests", dir]));
    let expires = list.lines().nth(1).unwrap().split('\t').nth(4).unwrap();
    let expires: Timestamp = expires.parse().unwrap();
    let lifetime = expires.duration_since(Timestamp::now());
    assert!(
        lifetime <= SignedDuration::from_mins(20) && lifetime > SignedDuration::from_mins(19),
        "{list}"
    );
    assert!(
        text(&revoked.stderr).contains(&format!(
            "the Revocation lapses at {expires}: by then no token it matches passes any AuthPolicy (tokens of auth/web pass at most 15m after their iat, plus up to 5m of leeway)"
        )),
        "{}",
        text(&revoked.stderr)
    );
    eventually("the session's token refused", CHANGE_DEADLINE, || async {
        (status().await == 401).then_some(())
    })
    .await;
    let list = succeeded(&authplane(&["revocations", "list", "--manifests", dir]));
    assert!(list.contains("auth/web\tsid=s-9\tlogout\t"), "{list}");
    assert!(!list.contains("(lapsed)"), "{list}");
    // Exactly one of --jti, --subject, --session.
    let both = authplane(&[
        "revoke",
        "--issuer",
        "auth/web",
        "--jti",
        "a",
        "--session",
        "b",
        "--manifests",
        dir,
    ]);
    assert!(!both.status.success());
    let none = authplane(&["revoke", "--issuer", "auth/web", "--manifests", dir]);
    assert!(!none.status.success());
    dev.stop().await;
}

/// Issue 18.5: `revoke` wrote Revocations that never apply (a SigningKey that does not
/// exist) or that dev mode then refused (a 300-character reason), and said `created`.
/// Each is refused before anything is written, with the words dev mode would use.
#[test]
fn revoke_writes_nothing_that_would_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("all.yaml"), manifests()).unwrap();
    let dir = dir.path();
    let folder = dir.to_str().unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let revoke = |extra: &[&str]| {
        let mut args = vec!["revoke", "--subject", "zoe", "--manifests", folder];
        args.extend(extra);
        authplane(&args)
    };

    let nope = revoke(&["--issuer", "auth/nope"]);
    assert!(!nope.status.success());
    assert!(!text(&nope.stdout).contains("created"));
    let stderr = text(&nope.stderr);
    assert!(
        stderr.contains("SigningKey auth/nope is not defined in the manifests of")
            && stderr.contains("the SigningKeys there: auth/web")
            && stderr.contains("nothing was written"),
        "{stderr}"
    );

    let long = "x".repeat(300);
    let wordy = revoke(&["--issuer", "auth/web", "--reason", &long]);
    assert!(!wordy.status.success());
    let stderr = text(&wordy.stderr);
    assert!(
        stderr.contains(
            "nothing was written: spec.reason: may not be longer than 256 characters (300)"
        ),
        "{stderr}"
    );

    let yesterday = revoke(&["--issuer", "auth/web", "--before", "yesterday"]);
    assert!(!yesterday.status.success());
    let stderr = text(&yesterday.stderr);
    assert!(
        stderr.contains("\"yesterday\" is not an RFC 3339 time")
            && stderr.contains("2026-01-31T12:00:00Z"),
        "{stderr}"
    );
    assert_eq!(files(), ["all.yaml"], "nothing was written");

    // A Revocation that applies, with the webhook's warning about its scope.
    let scoped = revoke(&["--issuer", "auth/web", "--namespace", "shop"]);
    assert!(succeeded(&scoped).starts_with("Revocation shop/revoke-"));
    assert!(
        text(&scoped.stderr).contains(
            "Warning: metadata.namespace: applies only to the AuthPolicies of namespace shop"
        ),
        "{}",
        text(&scoped.stderr)
    );
    assert_eq!(files().len(), 2);
}

/// Issue 18.9: after a restart every existing Revocation was observed again in
/// `authplane_revocation_propagation_seconds`, so an alert on it fired at every restart.
#[tokio::test]
async fn a_restart_does_not_observe_old_revocations_again() {
    const PROPAGATION: &str = "authplane_revocation_propagation_seconds_count";
    let mut dev = Dev::start(&[(
        "web.yaml",
        &signing_key("auth", "web", "  algorithm: EdDSA\n"),
    )])
    .await;
    let manifests = dev.manifests();
    succeeded(&authplane(&[
        "revoke",
        "--issuer",
        "auth/web",
        "--session",
        "s-1",
        "--manifests",
        manifests.to_str().unwrap(),
    ]));
    eventually("the revocation observed", CHANGE_DEADLINE, || async {
        (dev.metric(PROPAGATION).await == 1.0).then_some(())
    })
    .await;
    dev.restart().await;
    assert_eq!(
        dev.metric(r#"authplane_revocations{namespace="auth",issuer="auth/web"}"#)
            .await,
        1.0,
        "the revocation still counts"
    );
    assert_eq!(
        dev.metric(PROPAGATION).await,
        0.0,
        "but is not observed again"
    );
    dev.stop().await;
}

/// Issue 18.9: following the README rewrote `examples/` in the checkout. The commands
/// that write (dev mode's `rotate`, `revoke-key`, `rollout`, `revoke`) are shown on the
/// quick start's copy, never on `examples`.
#[test]
fn the_readme_never_writes_into_the_checkouts_examples() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let writers = [
        "authplane rotate ",
        "authplane revoke-key ",
        "authplane revoke ",
        "authplane rollout ",
    ];
    let writing: Vec<&str> = readme
        .lines()
        .filter(|line| writers.iter().any(|w| line.contains(w)))
        .filter(|line| line.contains("--manifests examples"))
        .collect();
    assert!(writing.is_empty(), "{writing:#?}");
    assert!(readme.contains("cp -r examples /tmp/authplane-demo"));
}

/// Runs `authplane ARGS` expecting it to exit by itself; a server that starts instead is
/// stopped and the test fails.
fn refused(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`authplane {}` started instead of refusing", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a process, with a deadline
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        !output.status.success(),
        "`authplane {}` succeeded",
        args.join(" ")
    );
    output
}

#[test]
fn an_invalid_external_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["dev", "run"] {
        let mut args = vec![
            command,
            "--external-url",
            "not a url",
            "--listen",
            "127.0.0.1:0",
        ];
        let manifests = dir.path().to_str().unwrap();
        if command == "dev" {
            args.extend(["--manifests", manifests]);
            args.extend(["--state", manifests]);
        }
        let output = refused(&args);
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("--external-url") && stderr.contains("is not a URL"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn trusted_proxy_hops_and_ranges_are_refused_together_and_bad_ranges_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    for command in ["dev", "run"] {
        let mut args = vec![command, "--listen", "127.0.0.1:0"];
        if command == "dev" {
            args.extend(["--manifests", folder, "--state", folder]);
        }
        let both = [
            args.clone(),
            vec!["--trusted-proxy-hops", "1"],
            vec!["--trusted-proxy-cidrs", "10.0.0.0/8"],
        ]
        .concat();
        let stderr = text(&refused(&both).stderr);
        assert!(
            stderr.contains("--trusted-proxy-cidrs") && stderr.contains("cannot be used with"),
            "{command}: {stderr}"
        );
        let bad = [
            args,
            vec!["--trusted-proxy-cidrs", "10.0.0.0/8,10.0.0.0/33"],
        ]
        .concat();
        let stderr = text(&refused(&bad).stderr);
        assert!(
            stderr.contains("\"10.0.0.0/33\" is not an address range"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test]
async fn dev_listens_on_a_host_name() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["dev", "--listen", "localhost:0", "--manifests"])
        .arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    while url.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("`authplane dev --listen localhost:0` did not start serving");
        url = line
            .split_once("serving on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned);
    }
    let url = url.unwrap();
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_certificate_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("cert.pem"), "garbage").unwrap();
    std::fs::write(path("key.pem"), "garbage").unwrap();
    std::fs::create_dir(path("manifests")).unwrap();
    let output = refused(&[
        "dev",
        "--manifests",
        &path("manifests"),
        "--state",
        &path("state"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        &path("cert.pem"),
        "--tls-key-file",
        &path("key.pem"),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("no PEM certificate found").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn token_client_secret_is_shown_once_and_kept_as_a_hash() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let made = authplane(&["token", "client-secret", "auth/web", "--state", dir]);
    let secret = succeeded(&made).trim().to_owned();
    assert!(secret.starts_with("apcs_"), "{secret}");
    assert!(text(&made.stderr).contains("made a client secret of TokenClient auth/web"));
    let path = state.path().join(".token-clients/auth/web.json");
    let kept = std::fs::read_to_string(&path).unwrap();
    assert!(!kept.contains(&secret[5..]), "{kept}");
    let stored: authplane::token_endpoint::secret::StoredSecret =
        serde_json::from_str(&kept).unwrap();
    assert!(stored.matches(&secret));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Again: a new secret, and the old one no longer matches.
    let again = authplane(&["token", "client-secret", "auth/web", "--state", dir]);
    let second = succeeded(&again).trim().to_owned();
    assert!(text(&again.stderr).contains("replaced the client secret"));
    let stored: authplane::token_endpoint::secret::StoredSecret =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(stored.matches(&second) && !stored.matches(&secret));
    // A name that is no Kubernetes name never becomes a path.
    for bad in ["../etc", "auth/..", "auth/a/b", "Auth/web"] {
        let refused = authplane(&["token", "client-secret", bad, "--state", dir]);
        assert!(!refused.status.success(), "{bad}");
        assert!(refused.stdout.is_empty(), "{bad}");
    }
    assert!(!state.path().join("etc.json").exists());
    assert!(!state.path().join(".token-clients/auth/...json").exists());
}

/// `authplane ARGS` with `stdin` and extra environment, off the server's runtime.
async fn authplane_with(args: Vec<String>, stdin: &str, env: &[(&str, &str)]) -> Output {
    use std::io::Write as _;
    let stdin = stdin.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authplane"))
            .args(&args)
            .env_remove("AUTHPLANE_CLIENT_SECRET")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn token_client_manifests() -> Vec<(&'static str, String)> {
    vec![
        ("keys.yaml", signing_key("auth", "web", "  algorithm: ES256\n")),
        (
            "web.yaml",
            "apiVersion: authplane.io/v1alpha1\nkind: TokenClient\nmetadata: {name: web, namespace: auth}\n\
             spec:\n  signingKeyRef: {name: web}\n  audiences: [payments]\n  allowedClaims: [roles]\n"
                .to_owned(),
        ),
        (
            "policy.yaml",
            common::payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ]
}

/// Issue 23, item 9: a login and a refresh from the command line, credentials from files,
/// the environment or stdin (never an argument), OAuth errors with their exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_and_refresh_talk_to_the_token_endpoint() {
    let manifests = token_client_manifests();
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dev = Dev::start(&refs).await;
    let state = dev.state();
    let made = authplane(&[
        "token",
        "client-secret",
        "auth/web",
        "--state",
        state.to_str().unwrap(),
    ]);
    let secret = succeeded(&made).trim().to_owned();
    let secret_file = dev.dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let issuer = format!("{}/auth/web", dev.external_url());
    let server = dev.url("");
    let base = |command: &str| -> Vec<String> {
        [
            "token", command, "--issuer", &issuer, "--server", &server, "--client", "auth/web",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let with = |mut args: Vec<String>, more: &[&str]| {
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };

    // A login with the secret from a file: the JSON answer, whose token passes /authz.
    let login = authplane_with(
        with(
            base("exchange"),
            &[
                "--client-secret-file",
                secret_file.to_str().unwrap(),
                "--subject",
                "alice",
                "--audience",
                "payments",
                "--claims",
                r#"{"roles":["payments"]}"#,
            ],
        ),
        "",
        &[],
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&succeeded(&login)).unwrap();
    let access = answer["access_token"].as_str().unwrap().to_owned();
    let first = answer["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(answer["token_type"], "Bearer");
    let decision = dev
        .get_with(
            "/authz/shop/payments",
            &[("Authorization", &format!("Bearer {access}"))],
        )
        .await;
    assert_eq!(decision.status(), 200);

    // The secret from the environment, one field printed.
    let login = authplane_with(
        with(
            base("exchange"),
            &["--subject", "bob", "--output", "refresh_token"],
        ),
        "",
        &[("AUTHPLANE_CLIENT_SECRET", &secret)],
    )
    .await;
    assert!(succeeded(&login).trim().starts_with("aprt_"));

    // A refresh from stdin rotates: a new refresh token.
    let refreshed = authplane_with(
        with(base("refresh"), &["--output", "refresh_token"]),
        &format!("{first}\n"),
        &[],
    )
    .await;
    let second = succeeded(&refreshed).trim().to_owned();
    assert!(second.starts_with("aprt_") && second != first, "{second}");
    // From a file too.
    let token_file = dev.dir.path().join("refresh");
    std::fs::write(&token_file, &second).unwrap();
    let again = authplane_with(
        with(
            base("refresh"),
            &["--refresh-token-file", token_file.to_str().unwrap()],
        ),
        "",
        &[],
    )
    .await;
    let third: serde_json::Value = serde_json::from_str(&succeeded(&again)).unwrap();
    assert_ne!(third["refresh_token"], second.as_str());

    // The server's refusal: the OAuth error and its description, exit code 2.
    let wrong = dev.dir.path().join("wrong");
    std::fs::write(&wrong, "apcs_wrong").unwrap();
    let refused = authplane_with(
        with(
            base("exchange"),
            &[
                "--client-secret-file",
                wrong.to_str().unwrap(),
                "--subject",
                "eve",
            ],
        ),
        "",
        &[],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(refused.stdout.is_empty());
    assert!(text(&refused.stderr).contains("401 Unauthorized invalid_client:"));
    assert!(!text(&refused.stderr).contains("apcs_wrong"));
    let garbage = authplane_with(base("refresh"), "aprt_garbage", &[]).await;
    assert_eq!(garbage.status.code(), Some(2));
    assert!(
        text(&garbage.stderr).contains("invalid_grant"),
        "{}",
        text(&garbage.stderr)
    );

    // Mistakes found before anything is sent: exit code 1.
    for (args, says) in [
        (
            with(base("exchange"), &["--subject", "x"]),
            "needs the client's credentials",
        ),
        (
            with(
                base("exchange"),
                &[
                    "--client-secret-file",
                    secret_file.to_str().unwrap(),
                    "--subject",
                    "x",
                    "--claims",
                    "[1]",
                ],
            ),
            "--claims must be a JSON object",
        ),
        (base("refresh"), "stdin was empty"),
    ] {
        let out = authplane_with(args, "", &[]).await;
        assert_eq!(out.status.code(), Some(1), "{says}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    // A secret is never an argument.
    let out = authplane_with(
        with(base("exchange"), &["--client-secret", &secret]),
        "",
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "clap's usage error");

    // No server there: exit code 3, retry later.
    dev.stop().await;
    let out = authplane_with(base("refresh"), &second, &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

/// A login over HTTP: the JSON answer.
async fn login_as(dev: &Dev, secret: &str, subject: &str) -> serde_json::Value {
    let response = dev
        .http
        .post(dev.url("/auth/web/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", "auth/web"),
            ("client_secret", secret),
            ("subject_token", subject),
            (
                "subject_token_type",
                "urn:authplane:params:oauth:token-type:subject",
            ),
            ("authplane_claims", r#"{"roles":["payments"]}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn authz_status(dev: &Dev, access: &str) -> u16 {
    dev.get_with(
        "/authz/shop/payments",
        &[("Authorization", &format!("Bearer {access}"))],
    )
    .await
    .status()
    .as_u16()
}

/// Issue 23, item 9: a user's sessions listed and ended from the command line, through the
/// admin listener only; ending them stops refresh and their access tokens at /authz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sessions_lists_and_ends_a_subjects_sessions_through_the_admin_listener() {
    let manifests = token_client_manifests();
    let refs: Vec<(&str, &str)> = manifests.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mut dev = Dev::start(&refs).await;
    dev.admin = true;
    dev.restart().await;
    let state = dev.state();
    let secret = succeeded(&authplane(&[
        "token",
        "client-secret",
        "auth/web",
        "--state",
        state.to_str().unwrap(),
    ]))
    .trim()
    .to_owned();
    let (one, two, bob) = (
        login_as(&dev, &secret, "alice").await,
        login_as(&dev, &secret, "alice").await,
        login_as(&dev, &secret, "bob").await,
    );
    let sid = |answer: &serde_json::Value| {
        use base64::Engine as _;
        let jwt = answer["access_token"].as_str().unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        claims["sid"].as_str().unwrap().to_owned()
    };
    let admin = dev.admin_url();
    let sessions = |more: &[&str]| {
        let mut args: Vec<String> = [
            "token",
            "sessions",
            "auth/web",
            "--subject",
            "alice",
            "--server",
            &admin,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };

    // Listed: alice's two sessions, not bob's.
    let listed = authplane_with(sessions(&[]), "", &[]).await;
    let table = succeeded(&listed);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains(&sid(&one)) && table.contains(&sid(&two)),
        "{table}"
    );
    assert!(!table.contains(&sid(&bob)));
    assert!(
        table.lines().skip(1).all(|line| line.ends_with("\tno")),
        "{table}"
    );

    // Never on the public listener.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let public = dev
            .http
            .request(
                method,
                dev.url("/sessions/auth/web?subject=alice&revoke=true"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 404);
    }
    // A missing subject is refused (exit code 2), nothing changes.
    let bad = authplane_with(
        [
            "token",
            "sessions",
            "auth/web",
            "--subject",
            "",
            "--server",
            &admin,
        ]
        .map(str::to_owned)
        .to_vec(),
        "",
        &[],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    // A web page cannot end them (a cross-site POST to the admin port on a developer's
    // machine, or a DNS-rebound GET): whatever a browser sends is refused, nothing ends.
    let sessions_url = format!("{admin}/sessions/auth/web?subject=alice&revoke=true");
    for (name, value) in [
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let browser = dev
            .http
            .post(&sessions_url)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(browser.status(), 403, "{name}");
    }
    let listed = authplane_with(sessions(&["--json"]), "", &[]).await;
    let listed: serde_json::Value = serde_json::from_str(&succeeded(&listed)).unwrap();
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["revoked"].is_null()),
        "{listed}"
    );
    for answer in [&one, &two, &bob] {
        assert_eq!(
            authz_status(&dev, answer["access_token"].as_str().unwrap()).await,
            200
        );
    }

    // Ended: refresh refused, and the access tokens refused at /authz.
    let ended = authplane_with(sessions(&["--revoke", "--json"]), "", &[]).await;
    let answer: serde_json::Value = serde_json::from_str(&succeeded(&ended)).unwrap();
    let ended_sids: Vec<&str> = answer["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sid"].as_str().unwrap())
        .collect();
    assert_eq!(ended_sids.len(), 2);
    assert!(
        answer["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["revoked"]["because"] == "logout")
    );
    for answer in [&one, &two] {
        let access = answer["access_token"].as_str().unwrap().to_owned();
        eventually(
            "the session's access token refused",
            CHANGE_DEADLINE,
            || {
                let access = access.clone();
                let dev = &dev;
                async move { (authz_status(dev, &access).await == 401).then_some(()) }
            },
        )
        .await;
        let refresh = dev
            .http
            .post(dev.url("/auth/web/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "auth/web"),
                ("refresh_token", answer["refresh_token"].as_str().unwrap()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(refresh.status(), 400);
    }
    // Bob's session is untouched.
    assert_eq!(
        authz_status(&dev, bob["access_token"].as_str().unwrap()).await,
        200
    );
    // Listed afterwards, as revoked.
    let table = succeeded(&authplane_with(sessions(&[]), "", &[]).await);
    assert!(
        table.lines().skip(1).all(|line| line.contains("(logout)")),
        "{table}"
    );
}

/// The README's blocks marked `migration-guide` (the info string's second word), by
/// language: the YAML and the shell, each in order.
fn migration_guide() -> (String, String) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (mut yaml, mut shell) = (String::new(), String::new());
    // Inside a block: whether it is the YAML (else the shell).
    let mut inside: Option<bool> = None;
    for line in readme.lines() {
        match (inside, line.trim_end()) {
            (None, "```yaml migration-guide") => inside = Some(true),
            (None, "```sh migration-guide") => inside = Some(false),
            (Some(is_yaml), "```") => {
                if is_yaml {
                    yaml.push_str("---\n");
                }
                inside = None;
            }
            (Some(is_yaml), _) => {
                let block = if is_yaml { &mut yaml } else { &mut shell };
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    (yaml, shell)
}

/// Issue 23, item 10: the migration guide runs as written, against a dev server with the
/// checkout's examples and the guide's TokenClients, and each step prints what the guide
/// says it prints (`# prints: ...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_guide_runs_as_written() {
    let (yaml, shell) = migration_guide();
    assert!(yaml.contains("kind: TokenClient"), "{yaml}");
    let expected: Vec<String> = shell
        .lines()
        .filter_map(|line| line.split_once("# prints: "))
        .map(|(_, printed)| printed.trim().to_owned())
        .collect();
    assert!(expected.len() >= 6, "{shell}");
    let examples = |name: &str| {
        std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let (keys, policy) = (
        examples("signing-keys.yaml"),
        examples("payments-policy.yaml"),
    );
    let dev = Dev::start(&[
        ("signing-keys.yaml", &keys),
        ("payments-policy.yaml", &policy),
        ("tokenclients.yaml", &yaml),
    ])
    .await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_authplane"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\n{shell}");
    let work = tempfile::tempdir().unwrap();
    let (url, state) = (dev.url(""), dev.state());
    let workdir = work.path().to_owned();
    let ran = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(workdir)
            .env("PATH", path)
            .env("AUTHPLANE", url)
            .env("STATE", state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed: Vec<String> = text(&ran.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(
        ran.status.success() && printed == expected,
        "exit {:?}\nprinted {printed:?}\nexpected {expected:?}\nstderr: {}",
        ran.status.code(),
        text(&ran.stderr)
    );
}

#[test]
fn run_refuses_grpc_attachment_without_a_grpc_listener_and_unknown_protocols() {
    let base = [
        "run",
        "--external-url",
        "https://auth.example.com",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ];
    // The SecurityPolicies would send every check to a port nothing serves.
    let stderr = text(&refused(&[&base[..], &["--attach-protocol", "grpc"]].concat()).stderr);
    assert!(
        stderr.contains("--attach-protocol grpc needs --grpc-listen"),
        "{stderr}"
    );
    let stderr = text(&refused(&[&base[..], &["--attach-protocol", "h2c"]].concat()).stderr);
    assert!(
        stderr.contains("\"h2c\" is not a protocol: http or grpc"),
        "{stderr}"
    );
}
