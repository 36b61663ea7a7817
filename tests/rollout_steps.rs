//! Stepped rollouts in dev mode on an injected clock: 10 → 50 → 100, a restart in the
//! middle, a manual pause and resume, and a hold on a high would-deny ratio.

mod common;

use std::sync::Arc;

use authplane::clock::{Clock, ManualClock};
use authplane::policy::rollout;
use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const SALT: &str = "shop/payments";

fn policy(extra_rollout: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]\n  audiences: [payments]\n\
         \x20 rollout:\n    mode: Enforce\n    steps: [10, 50, 100]\n    stepEvery: 1h\n\
         \x20   bucketBy: {{header: X-User-Id}}\n{extra_rollout}"
    )
}

/// A user enforced from `from` percent on, and not below it.
fn user_from(from: f64, below: f64) -> String {
    let (low, high) = (
        rollout::percentage_to_buckets(below),
        rollout::percentage_to_buckets(from),
    );
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| {
            let b = rollout::bucket(SALT, u);
            !rollout::is_enforced(b, low) && rollout::is_enforced(b, high)
        })
        .unwrap()
}

async fn start(clock: Arc<ManualClock>, extra: &str) -> Dev {
    Dev::start_with(
        &[
            (
                "keys.yaml",
                &signing_key("auth", "web", "  algorithm: EdDSA\n"),
            ),
            ("policy.yaml", &policy(extra)),
        ],
        clock,
        1000,
    )
    .await
}

/// The status code for a request without a token from `user`: 401 when enforced.
async fn enforced(dev: &Dev, user: &str) -> bool {
    let response = dev
        .get_with("/authz/shop/payments", &[("x-user-id", user)])
        .await;
    match response.status().as_u16() {
        401 => true,
        200 => false,
        other => panic!("status {other}"),
    }
}

async fn status(dev: &Dev) -> Value {
    dev.json("/status/shop/payments").await
}

fn t0() -> Timestamp {
    // Whole seconds, as recorded.
    Timestamp::from_second(Timestamp::now().as_second()).unwrap()
}

fn after(t: Timestamp, minutes: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_mins(minutes)).unwrap()
}

#[tokio::test]
async fn ten_fifty_hundred_across_a_restart() {
    let start_at = t0();
    let clock = Arc::new(ManualClock::new(start_at));
    let mut dev = start(clock.clone(), "").await;
    let (u10, u50, u100) = (
        user_from(10.0, 0.0),
        user_from(50.0, 10.0),
        user_from(100.0, 50.0),
    );

    let s = status(&dev).await;
    assert_eq!(s["effectivePercentage"], 10.0);
    assert_eq!(s["nextStepAt"], after(start_at, 60).to_string());
    assert_eq!(s["paused"], false);
    assert!(enforced(&dev, &u10).await);
    assert!(!enforced(&dev, &u50).await);

    // Every replica moves on at the step time by itself: no driver run needed.
    clock.set(after(start_at, 60));
    assert!(enforced(&dev, &u50).await);
    assert!(!enforced(&dev, &u100).await);
    assert_eq!(status(&dev).await["effectivePercentage"], 50.0);

    // A restart half-way through the second step continues from the record.
    clock.set(after(start_at, 90));
    dev.restart().await;
    let s = status(&dev).await;
    assert_eq!(s["effectivePercentage"], 50.0);
    assert_eq!(s["nextStepAt"], after(start_at, 120).to_string());
    assert_eq!(s["rollout"]["step"], 1);
    assert_eq!(s["rollout"]["since"], after(start_at, 60).to_string());

    clock.set(after(start_at, 120));
    assert!(enforced(&dev, &u100).await);
    let s = status(&dev).await;
    assert_eq!(s["effectivePercentage"], 100.0);
    assert!(s.get("nextStepAt").is_none(), "{s}");

    // Back to Audit and into Enforce again: the rollout starts over at the first step.
    dev.write(
        "policy.yaml",
        &policy("").replace("mode: Enforce", "mode: Audit"),
    );
    eventually("Audit", CHANGE_DEADLINE, || async {
        (status(&dev).await["effectivePercentage"] == 0.0).then_some(())
    })
    .await;
    dev.write("policy.yaml", &policy(""));
    let s = eventually("Enforce again", CHANGE_DEADLINE, || async {
        let s = status(&dev).await;
        (s["effectivePercentage"] != 0.0).then_some(s)
    })
    .await;
    assert_eq!(s["effectivePercentage"], 10.0);
    assert_eq!(s["rollout"]["since"], after(start_at, 120).to_string());
    dev.stop().await;
}

#[tokio::test]
async fn pause_holds_the_step_and_resume_gives_it_a_full_interval() {
    let start_at = t0();
    let clock = Arc::new(ManualClock::new(start_at));
    let dev = start(clock.clone(), "").await;
    let u50 = user_from(50.0, 10.0);

    dev.write("policy.yaml", &policy("    paused: true\n"));
    eventually("the pause", CHANGE_DEADLINE, || async {
        (status(&dev).await["paused"] == true).then_some(())
    })
    .await;
    assert_eq!(
        status(&dev).await["pausedReason"],
        "paused by spec.rollout.paused"
    );
    clock.set(after(start_at, 180));
    assert!(!enforced(&dev, &u50).await, "held at 10%");
    assert!(status(&dev).await.get("nextStepAt").is_none());

    dev.write("policy.yaml", &policy(""));
    let s = eventually("the resume", CHANGE_DEADLINE, || async {
        let s = status(&dev).await;
        (s["paused"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["nextStepAt"], after(start_at, 240).to_string());
    assert!(!enforced(&dev, &u50).await);
    clock.set(after(start_at, 240));
    assert!(enforced(&dev, &u50).await);
    dev.stop().await;
}

#[tokio::test]
async fn a_high_would_deny_ratio_holds_the_rollout_until_traffic_is_clean() {
    let start_at = t0();
    let clock = Arc::new(ManualClock::new(start_at));
    let dev = start(
        clock.clone(),
        "    pauseAboveDenyRatio: {ratio: 0.2, window: 10s, minRequests: 5}\n",
    )
    .await;
    let (u50, u100) = (user_from(50.0, 10.0), user_from(100.0, 50.0));
    // Audited users (outside the 10%) without tokens: all would be refused.
    for _ in 0..10 {
        assert!(!enforced(&dev, &u100).await);
    }
    let s = eventually("the hold", CHANGE_DEADLINE, || async {
        let s = status(&dev).await;
        (s["paused"] == true).then_some(s)
    })
    .await;
    let reason = s["pausedReason"].as_str().unwrap();
    assert!(reason.contains("would be refused"), "{reason}");

    // Without traffic nothing changes the verdict: still held hours later.
    clock.set(after(start_at, 120));
    assert!(!enforced(&dev, &u50).await);

    // Clean audited traffic: valid tokens from users outside enforcement.
    let now = clock.now().as_second();
    let token = dev.sign(
        ("auth", "web"),
        &serde_json::json!({
            "iss": format!("{}/auth/web", dev.external_url()),
            "sub": "u", "aud": "payments", "iat": now, "exp": now + 600,
        }),
    );
    // Clean traffic keeps coming; the window (restarted after the two-hour gap in
    // samples) fills with it and the hold is released.
    let s = eventually("the resume", CHANGE_DEADLINE, || async {
        for _ in 0..10 {
            let response = dev
                .get_with(
                    "/authz/shop/payments",
                    &[
                        ("x-user-id", u100.as_str()),
                        ("authorization", &format!("Bearer {token}")),
                    ],
                )
                .await;
            assert_eq!(response.status(), 200);
        }
        let s = status(&dev).await;
        (s["paused"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["nextStepAt"], after(start_at, 180).to_string());
    dev.stop().await;
}
