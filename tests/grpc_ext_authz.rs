//! Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) against the real
//! dev server on loopback (h2c), with a client built from the same protos: the decision
//! of `/authz`, translated; the policy named only by the context extension; bad checks
//! refused, never a panic.

mod common;

use bytes::Bytes;
use common::grpc::{self, check_request, verdict};
use common::{Dev, payments_policy, signing_key, tamper, user_in};
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::json;

const KEYS: &str = "  algorithm: ES256\n";
const POLICY: &str = "shop/payments";
const SALT: &str = "shop/payments";

/// A Revocation of the token whose `jti` is `revoked-1`.
const REVOCATION: &str = "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {name: stolen, namespace: auth}\nspec:\n  signingKeyRef: {name: web}\n  tokenId: revoked-1\n";

async fn start(rollout: &str) -> Dev {
    Dev::start_serving(
        &[
            ("keys.yaml", &signing_key("auth", "web", KEYS)),
            ("policy.yaml", &payments_policy(rollout, "")),
            ("revocation.yaml", REVOCATION),
        ],
        grpc::settings(),
    )
    .await
}

fn grpc_addr(dev: &Dev) -> std::net::SocketAddr {
    dev.server.as_ref().unwrap().grpc_addr().unwrap()
}

/// A token with every claim the policy wants, revoked by [`REVOCATION`].
fn revoked_token(dev: &Dev) -> String {
    let mut claims = dev.claims(("auth", "web"), "alice", "payments");
    claims["roles"] = json!(["payments"]);
    claims["jti"] = json!("revoked-1");
    dev.sign(("auth", "web"), &claims)
}

async fn check(dev: &Dev, policy: Option<&str>, headers: &[(&str, &str)]) -> grpc::Verdict {
    let mut client = grpc::client(grpc_addr(dev)).await;
    let response = client
        .check(check_request(policy, headers))
        .await
        .unwrap()
        .into_inner();
    verdict(&response)
}

fn map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn allows_with_the_identity_and_removes_a_client_written_one() {
    let dev = start("{mode: Enforce, percentage: 100}").await;
    let good = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"], "email": "a@x"}),
    );
    let bearer = format!("Bearer {good}");

    // The client sends an identity of its own beside a valid token: ours replaces it.
    let v = check(
        &dev,
        Some(POLICY),
        &[("authorization", &bearer), ("x-auth-subject", "mallory")],
    )
    .await;
    assert_eq!(v.status, 200);
    assert_eq!(
        v.headers,
        map(&[("x-auth-email", "a@x"), ("x-auth-subject", "alice")])
    );
    // In force: a client's own audit header is removed, as `/authz` answers it empty.
    assert_eq!(v.removed, ["x-authplane-audit"], "{v:?}");

    // The token in a cookie, beside a third-party one: found the same way.
    let cookie = format!("_ga=1; access_token={good}");
    let v = check(&dev, Some(POLICY), &[("cookie", &cookie)]).await;
    assert_eq!(v.headers["x-auth-subject"], "alice");
}

#[tokio::test]
async fn refusals_carry_the_status_challenge_and_reason() {
    let dev = start("{mode: Enforce, percentage: 100}").await;
    let no_role = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["other"]}),
    );
    let good = dev.mint(
        ("auth", "web"),
        "alice",
        &["payments"],
        json!({"roles": ["payments"]}),
    );
    let revoked = revoked_token(&dev);

    let v = check(&dev, Some(POLICY), &[("x-auth-subject", "mallory")]).await;
    assert_eq!((v.status, v.code), (401, 16), "{v:?}");
    assert_eq!(
        v.headers,
        map(&[
            ("www-authenticate", "Bearer realm=\"shop/payments\""),
            ("x-authplane-reason", "missing_token"),
        ])
    );

    let v = check(
        &dev,
        Some(POLICY),
        &[("authorization", &format!("Bearer {}", tamper(&good)))],
    )
    .await;
    assert_eq!(v.status, 401);
    assert_eq!(v.headers["x-authplane-reason"], "bad_signature");
    assert!(v.headers["www-authenticate"].contains("error=\"invalid_token\""));

    let v = check(
        &dev,
        Some(POLICY),
        &[("authorization", &format!("Bearer {revoked}"))],
    )
    .await;
    assert_eq!(v.status, 401);
    assert_eq!(v.headers["x-authplane-reason"], "token_revoked");

    let v = check(
        &dev,
        Some(POLICY),
        &[("authorization", &format!("Bearer {no_role}"))],
    )
    .await;
    assert_eq!((v.status, v.code), (403, 7));
    assert_eq!(v.headers["x-authplane-reason"], "insufficient_scope");
    assert!(v.headers["www-authenticate"].contains("insufficient_scope"));
}

#[tokio::test]
async fn audited_requests_pass_with_the_audit_header_and_no_identity() {
    let dev = start("{mode: Audit}").await;
    let v = check(&dev, Some(POLICY), &[("x-auth-subject", "mallory")]).await;
    assert_eq!((v.status, v.code), (200, 0));
    assert_eq!(
        v.headers,
        map(&[("x-authplane-audit", "would-deny; reason=missing_token")])
    );
    // The client's copy of the identity is removed, not passed on.
    let mut removed = v.removed.clone();
    removed.sort();
    assert_eq!(removed, ["x-auth-email", "x-auth-subject"]);
}

#[tokio::test]
async fn a_check_without_a_known_policy_is_refused() {
    let dev = start("{mode: Disabled}").await;
    // The checked request's path names a policy: the client wrote it, so it counts for
    // nothing (check_request's :path is /authz/other/policy; here the real one).
    let v = check(&dev, None, &[(":path", "/authz/shop/payments")]).await;
    assert_eq!((v.status, v.code), (403, 7), "{v:?}");
    assert_eq!(v.headers, map(&[("x-authplane-reason", "missing_policy")]));

    let v = check(&dev, Some("shop/nothing"), &[]).await;
    assert_eq!((v.status, v.code), (403, 7), "{v:?}");
    assert_eq!(v.headers, map(&[("x-authplane-reason", "unknown_policy")]));

    // A name that is no namespace/name: an error, which Envoy turns into a refusal.
    let mut client = grpc::client(grpc_addr(&dev)).await;
    for bad in ["payments", "shop/", "/payments", "shop/pay/ments"] {
        let status = client
            .check(check_request(Some(bad), &[]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
    }
    // The server is still there, and the mode-Disabled policy passes.
    let v = check(&dev, Some(POLICY), &[]).await;
    assert_eq!(v.status, 200);
}

/// What the client writes (headers, the path) never names the policy: only the context
/// extension that the gateway's configuration sets (the generated SecurityPolicy's
/// `contextExtensions`) does. A client naming an open policy gets the one the route named.
#[tokio::test]
async fn a_client_cannot_choose_the_policy() {
    let open = payments_policy("{mode: Disabled}", "").replace("name: payments", "name: open");
    let dev = Dev::start_serving(
        &[
            ("keys.yaml", &signing_key("auth", "web", KEYS)),
            (
                "policy.yaml",
                &payments_policy("{mode: Enforce, percentage: 100}", ""),
            ),
            ("open.yaml", &open),
        ],
        grpc::settings(),
    )
    .await;
    // The open policy passes anyone: the forgeries below would be a pass if they counted.
    assert_eq!(check(&dev, Some("shop/open"), &[]).await.status, 200);

    let forged = [
        (":path", "/authz/shop/open"),
        ("x-authplane-policy", "shop/open"),
        ("authplane-io-policy", "shop/open"),
        ("x-original-url", "https://shop.example/authz/shop/open"),
        ("x-forwarded-uri", "/authz/shop/open"),
    ];
    let v = check(&dev, Some(POLICY), &forged).await;
    assert_eq!((v.status, v.code), (401, 16), "{v:?}");
    assert_eq!(v.headers["x-authplane-reason"], "missing_token");
    let v = check(&dev, None, &forged).await;
    assert_eq!((v.status, v.code), (403, 7), "{v:?}");
    assert_eq!(v.headers["x-authplane-reason"], "missing_policy");

    // The extension's own name as a header cannot be one (no `/` in a header name):
    // Envoy never sends it, and a check that carries it is refused whole (without a
    // context extension, as naming no policy first).
    let named_by_header = [("authplane.io/policy", "shop/open")];
    let mut client = grpc::client(grpc_addr(&dev)).await;
    let status = client
        .check(check_request(Some(POLICY), &named_by_header))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let v = check(&dev, None, &named_by_header).await;
    assert_eq!(v.headers["x-authplane-reason"], "missing_policy", "{v:?}");
}

/// One raw gRPC call over a fresh HTTP/2 connection: the grpc-status it ends with.
async fn raw_call(addr: std::net::SocketAddr, body: Vec<u8>) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(body)))
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .expect("a grpc-status");
    status.to_str().unwrap().to_owned()
}

/// A gRPC message frame: not compressed, the length, the bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

#[tokio::test]
async fn garbage_and_oversized_checks_are_refused_and_the_server_stays() {
    let dev = start("{mode: Enforce, percentage: 100}").await;
    let addr = grpc_addr(&dev);

    // Not protobuf: INTERNAL (13), tonic's answer to a message it cannot decode.
    let status = raw_call(addr, frame(&[0xff; 64])).await;
    assert_eq!(status, "13");
    // A frame that announces more than it carries.
    let mut truncated = frame(b"\x0a\x02");
    truncated[4] = 200;
    assert_ne!(raw_call(addr, truncated).await, "0");
    // Headers over the message cap (2 x --max-header-bytes, 64 KiB by default):
    // OUT_OF_RANGE (11), tonic's answer to a message over its limit.
    let huge = "A".repeat(100 * 1024);
    let big = check_request(
        Some(POLICY),
        &[("authorization", &format!("Bearer {huge}"))],
    );
    assert_eq!(raw_call(addr, frame(&big.encode_to_vec())).await, "11");
    // A header that cannot be one: INVALID_ARGUMENT (3).
    let bad = check_request(Some(POLICY), &[("bad header", "x")]);
    assert_eq!(raw_call(addr, frame(&bad.encode_to_vec())).await, "3");

    // And a well-formed check is still answered.
    let v = check(&dev, Some(POLICY), &[]).await;
    assert_eq!(v.status, 401);
}

/// Every case of the hostile-token suite's kind, and the decision table's rows, answered
/// by `/authz` and by `Check` for the same request: the same verdict and headers.
#[tokio::test]
async fn check_and_authz_agree_on_every_case() {
    let dev = start("{mode: Enforce, percentage: 50, bucketBy: {header: X-User-Id}}").await;
    let enforced = user_in(SALT, 50.0, true);
    let audited = user_in(SALT, 50.0, false);
    let mint =
        |claims: serde_json::Value| dev.mint(("auth", "web"), "alice", &["payments"], claims);
    let good = mint(json!({"roles": ["payments"], "email": "a@x"}));
    let now = jiff::Timestamp::now().as_second();
    let issuer = format!("{}/auth/web", dev.external_url());
    let claims = |extra: serde_json::Value| {
        let mut claims = json!({"iss": issuer, "sub": "alice", "aud": "payments",
            "iat": now, "exp": now + 300, "roles": ["payments"]});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        dev.sign(("auth", "web"), &claims)
    };
    let tokens: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("valid", Some(good.clone())),
        ("no role", Some(mint(json!({"roles": ["other"]})))),
        ("revoked", Some(revoked_token(&dev))),
        ("tampered", Some(tamper(&good))),
        ("garbage", Some("not.a.token".into())),
        (
            "expired",
            Some(claims(json!({"exp": now - 3600, "iat": now - 7200}))),
        ),
        ("wrong audience", Some(claims(json!({"aud": "other"})))),
        (
            "wrong issuer",
            Some(claims(json!({"iss": "https://evil.example"}))),
        ),
        ("future iat", Some(claims(json!({"iat": now + 3600})))),
        (
            "claim not a header",
            Some(mint(json!({"roles": ["payments"], "email": "a\r\nb"}))),
        ),
    ];
    let names = [
        "www-authenticate",
        "x-authplane-reason",
        "x-authplane-audit",
        "x-auth-subject",
        "x-auth-email",
    ];
    for user in [&enforced, &audited] {
        for (name, token) in &tokens {
            let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
            let mut headers = vec![("x-user-id", user.as_str()), ("x-auth-subject", "mallory")];
            if let Some(bearer) = &bearer {
                headers.push(("authorization", bearer));
            }
            let http = dev.get_with("/authz/shop/payments", &headers).await;
            let (status, http_headers, mut http_removed) = grpc::http_verdict(&http, &names);
            let mut v = check(&dev, Some(POLICY), &headers).await;
            let case = format!(
                "{name}, {}",
                if user == &enforced {
                    "enforced"
                } else {
                    "audited"
                }
            );
            assert_eq!(v.status, status, "{case}");
            assert_eq!(v.headers, http_headers, "{case}");
            http_removed.sort();
            v.removed.sort();
            assert_eq!(v.removed, http_removed, "{case}");
            // And the refusals are refusals.
            if user == &enforced && *name != "valid" {
                assert_ne!(status, 200, "{case}");
            }
        }
    }
}

/// A client that starts a check and never finishes it is answered `DEADLINE_EXCEEDED`
/// after `--body-timeout`; one that connects and never asks is closed after
/// `--header-read-timeout`. Both are the server's own timers: the test only waits.
#[tokio::test]
async fn unfinished_checks_and_silent_connections_end() {
    let mut settings = grpc::settings();
    settings.limits.body_timeout = std::time::Duration::from_secs(1);
    settings.limits.header_read_timeout = std::time::Duration::from_secs(1);
    let dev = Dev::start_serving(
        &[
            ("keys.yaml", &signing_key("auth", "web", KEYS)),
            ("policy.yaml", &payments_policy("{mode: Audit}", "")),
        ],
        settings,
    )
    .await;
    let addr = grpc_addr(&dev);

    // Half a frame, then nothing: the body stays open.
    let (mut body_tx, body_rx) = futures::channel::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >(1);
    use futures::SinkExt as _;
    body_tx
        .send(Ok(hyper::body::Frame::data(Bytes::from_static(&[
            0, 0, 0, 1, 0,
        ]))))
        .await
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::StreamBody::new(body_rx))
    .unwrap();
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sender.send_request(request),
    )
    .await
    .expect("no answer after the body timeout")
    .unwrap();
    assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
    drop(body_tx);

    // A connection that sends nothing is closed by the server.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut buffer),
    )
    .await
    .expect("the silent connection was never closed");
    // Closed (EOF or reset), after at most the server's SETTINGS frame.
    let _ = read;
}
