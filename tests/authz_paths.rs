//! What `/authz` answers for odd request paths, sent byte for byte (an HTTP client would
//! normalise them first): percent-escapes (`%2F`, non-UTF-8), dot segments, empty segments
//! and trailing slashes. The table was recorded on the router that matched these paths
//! with axum's path parameters, so that the hand-written matching that replaced it is
//! held to the same answers.

mod common;

use common::{Dev, payments_policy, signing_key};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status, `X-Authplane-Reason` (empty when absent) and body of one raw request.
async fn answer(dev: &Dev, method: &str, target: &str, token: &str) -> (u16, String, String) {
    let text = raw(dev, method, target, token).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let reason = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("x-authplane-reason"))
        .map_or("", |(_, value)| value.trim());
    (status.parse().unwrap(), reason.to_owned(), body.to_owned())
}

/// One raw request's whole answer.
async fn raw(dev: &Dev, method: &str, target: &str, token: &str) -> String {
    let address = dev.url("").trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn odd_paths_keep_their_answers() {
    let dev = Dev::start(&[
        (
            "keys.yaml",
            &signing_key("auth", "web", "  algorithm: ES256\n"),
        ),
        (
            "policy.yaml",
            &payments_policy("{mode: Enforce, percentage: 100}", ""),
        ),
    ])
    .await;
    let token = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    const PASS: (u16, &str, &str) = (200, "", "");
    const NOT_FOUND: (u16, &str, &str) = (404, "", "not found\n");
    let unknown = |id: &'static str| (404, "unknown_policy", id);
    #[rustfmt::skip]
    let table: &[(&str, &str, (u16, &str, &str))] = &[
        ("GET", "/authz/shop/payments", PASS),
        ("POST", "/authz/shop/payments", PASS),
        ("HEAD", "/authz/shop/payments", PASS),
        ("HEAD", "/authz/shop/nope", (404, "unknown_policy", "")),
        ("HEAD", "/authz/%FF/payments", (400, "", "")),
        ("GET", "/authz/shop/payments?x=1", PASS),
        ("GET", "http://elsewhere/authz/shop/payments", PASS),
        // The original path Envoy appends, whatever it is.
        ("GET", "/authz/shop/payments/pay", PASS),
        // Envoy's check of a request for the site's root: the path prefix, then `/`.
        ("GET", "/authz/shop/payments/", PASS),
        ("GET", "/authz/shop/payments/?q=1", PASS),
        ("GET", "/authz/shop/payments/a/b/../c?x=/y", PASS),
        ("GET", "/authz/shop/payments/../../other/x", PASS),
        ("GET", "/authz/shop/payments//x", PASS),
        ("GET", "/authz/shop/payments///", PASS),
        ("GET", "/authz/shop/payments/%2F", PASS),
        ("GET", "/authz/shop/payments/%zz", PASS),
        ("GET", "/authz/shop/payments/%C3%A9", PASS),
        // Escapes in the policy's name are decoded.
        ("GET", "/authz/%73hop/payments", PASS),
        ("GET", "/authz/shop/%70ayments/x", PASS),
        ("GET", "/authz/shop%2Fpayments/x", unknown("no AuthPolicy shop/payments/x\n")),
        ("GET", "/authz/shop/payments%2F", unknown("no AuthPolicy shop/payments/\n")),
        ("GET", "/authz/shop/pay%zzments", unknown("no AuthPolicy shop/pay%zzments\n")),
        ("GET", "/authz/sh%C3%B6p/payments", unknown("no AuthPolicy shöp/payments\n")),
        ("GET", "/authz/..%2Fshop/payments", unknown("no AuthPolicy ../shop/payments\n")),
        ("GET", "/authz/../authz/shop/payments", unknown("no AuthPolicy ../authz\n")),
        ("GET", "/authz/./shop/payments", unknown("no AuthPolicy ./shop\n")),
        ("GET", "/authz/shop/payments%00", unknown("no AuthPolicy shop/payments\0\n")),
        // An empty segment is a name when a slash follows it.
        ("GET", "/authz//payments", unknown("no AuthPolicy /payments\n")),
        ("GET", "/authz//payments/x", unknown("no AuthPolicy /payments\n")),
        ("GET", "/authz//shop/payments", unknown("no AuthPolicy /shop\n")),
        ("GET", "/authz/shop//x", unknown("no AuthPolicy shop/\n")),
        ("GET", "/authz///x", unknown("no AuthPolicy /\n")),
        // Escapes that are not UTF-8.
        ("GET", "/authz/%FF/payments", (400, "", "Invalid URL: Invalid UTF-8 in `namespace`")),
        ("GET", "/authz/shop/%C3", (400, "", "Invalid URL: Invalid UTF-8 in `name`")),
        ("GET", "/authz/shop/payments/%FF", (400, "", "Invalid URL: Invalid UTF-8 in `original_path`")),
        ("GET", "/authz/%FF/payments/x", (400, "", "Invalid URL: Invalid UTF-8 in `namespace`")),
        // Not the shape of a decision.
        ("GET", "/authz/shop//", unknown("no AuthPolicy shop/\n")),
        ("GET", "/authz//", NOT_FOUND),
        ("GET", "/authz///", unknown("no AuthPolicy /\n")),
        ("GET", "/authz/shop", NOT_FOUND),
        ("GET", "/authz/shop/", NOT_FOUND),
        ("GET", "/authz/", NOT_FOUND),
        ("GET", "/authz", NOT_FOUND),
        ("GET", "//authz/shop/payments", NOT_FOUND),
        ("GET", "/AUTHZ/shop/payments", NOT_FOUND),
        ("GET", "/authzx/shop/payments", NOT_FOUND),
        ("GET", "/%61uthz/shop/payments", NOT_FOUND),
    ];
    let mut wrong = Vec::new();
    for (method, target, expected) in table {
        let got = answer(&dev, method, target, &token).await;
        let expected = (expected.0, expected.1.to_owned(), expected.2.to_owned());
        if got != expected {
            wrong.push(format!("{method} {target}: {got:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // HEAD is told the length GET's body would have, as axum's router answers it.
    for (target, length) in [("/authz/shop/payments", 0), ("/authz/shop/nope", 24)] {
        let head = raw(&dev, "HEAD", target, &token).await.to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\ncontent-length: {length}\r\n")),
            "HEAD {target}: {head}"
        );
    }
    dev.stop().await;
}
