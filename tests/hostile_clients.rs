//! Availability under hostile clients: what a client sends must not grow what the server
//! keeps (metric series), and a slow or greedy client must not hold the server's memory
//! or connections. Real servers on loopback, real sockets.

mod common;

use common::Dev;
use serde_json::json;

/// An AdmissionReview of a kind that is not ours, as anyone who can reach the webhook
/// could send one.
fn foreign_review(uid: usize, kind: &str) -> serde_json::Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{uid}"),
            "kind": {"group": "example.com", "version": "v1", "kind": kind},
            "resource": {"group": "example.com", "version": "v1", "resource": "things"},
            "name": "x",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "mallory"},
            "object": {"apiVersion": "example.com/v1", "kind": kind, "metadata": {"name": "x"}},
            "dryRun": false,
        }
    })
}

#[tokio::test]
async fn request_kinds_never_become_metric_labels() {
    let dev = Dev::start(&[]).await;
    let before = dev.get("/metrics").await.text().await.unwrap().len();
    for i in 0..200 {
        // 2 KiB each, all distinct: 400 KiB of labels if any of it were kept.
        let kind = format!("K{i:04}{}", "x".repeat(2048));
        let response = dev
            .http
            .post(dev.url("/validate"))
            .json(&foreign_review(i, &kind))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], true, "not ours: allowed");
    }
    let text = dev.get("/metrics").await.text().await.unwrap();
    assert!(
        text.len() < before + 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains(
            r#"authplane_admission_reviews_total{kind="other",operation="CREATE",result="skipped"} 200"#
        ),
        "{text}"
    );
    dev.stop().await;
}
