//! Identity headers through a real gateway: nginx's `auth_request`, wired as
//! ingress-nginx wires `auth-url` and `auth-response-headers` (`auth_request_set` from
//! authplane's answer, `proxy_set_header` to the workload), in front of a workload that
//! echoes the headers it receives. The workload must see authplane's verified identity
//! or none, never a copy the client wrote.
//!
//! The test starts nginx itself (a temporary prefix, its own config, free loopback
//! ports; no root paths). Without an nginx binary it says so and skips
//! (`apt-get install -y nginx-core`; `.ci/run` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{Dev, eventually, signing_key, user_in};
use serde_json::json;

const SALT: &str = "shop/payments";

const POLICY: &str = r#"apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {name: payments, namespace: shop}
spec:
  issuers: [{signingKeyRef: {name: web, namespace: auth}}]
  audiences: [payments]
  tokenSources:
    headers: [{name: Authorization, prefix: "Bearer "}]
    cookies: [access_token]
  forwardClaims: {sub: X-Auth-Subject, email: X-Auth-Email}
  rollout: {mode: Enforce, percentage: 10, bucketBy: {header: X-User-Id}}
  legacySession: {cookie: session_id}
"#;

const REVOCATION: &str = "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {name: stolen, namespace: auth}\nspec:\n  signingKeyRef: {name: web}\n  tokenId: stolen-1\n";

/// The nginx binary, if installed (Debian puts it in /usr/sbin, which a user's PATH
/// may lack).
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An nginx process in the foreground, with its prefix in a temporary folder; stopped
/// when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &PathBuf, authplane: &str, upstream: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let prefix = dir.path().display();
        // The ingress-nginx wiring of `auth-url` and `auth-response-headers`.
        let config = format!(
            r#"daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_external-auth {{
            internal;
            proxy_pass {authplane}/authz/shop/payments;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}
        location / {{
            auth_request /_external-auth;
            auth_request_set $auth_subject $upstream_http_x_auth_subject;
            auth_request_set $auth_email $upstream_http_x_auth_email;
            proxy_set_header X-Auth-Subject $auth_subject;
            proxy_set_header X-Auth-Email $auth_email;
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"#
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Nginx { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pay", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workload that answers with the request headers it received, as JSON.
async fn echo_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &headers {
            seen.entry(name.to_string())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        axum::Json(seen)
    });
    tokio::spawn(async move { axum::serve(listener, echo).await });
    port
}

/// What the workload saw of one request sent through nginx: the status nginx answered
/// and, when it passed, the identity headers the workload received.
struct Seen {
    status: u16,
    subject: Option<Vec<String>>,
    email: Option<Vec<String>>,
}

async fn through(client: &reqwest::Client, nginx: &Nginx, headers: &[(&str, &[u8])]) -> Seen {
    let mut request = client.get(nginx.url());
    for (name, value) in headers {
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        return Seen {
            status,
            subject: None,
            email: None,
        };
    }
    let mut seen: BTreeMap<String, Vec<String>> = response.json().await.unwrap();
    Seen {
        status,
        subject: seen.remove("x-auth-subject"),
        email: seen.remove("x-auth-email"),
    }
}

#[tokio::test]
async fn the_workload_behind_nginx_sees_authplanes_identity_or_none() {
    let Some(binary) = nginx_binary() else {
        // Straight to stderr: the test harness captures `eprintln!`, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_workload_behind_nginx_sees_authplanes_identity_or_none: no nginx binary (apt-get install -y nginx-core)"
        );
        return;
    };
    let dev = Dev::start(&[
        (
            "keys.yaml",
            &signing_key("auth", "web", "  algorithm: ES256\n"),
        ),
        ("policy.yaml", POLICY),
        ("revocation.yaml", REVOCATION),
    ])
    .await;
    let upstream = echo_upstream().await;
    let nginx = Nginx::start(&binary, &dev.url(""), upstream);
    let client = reqwest::Client::new();
    eventually("nginx listening", common::CHANGE_DEADLINE, || async {
        client.get(nginx.url()).send().await.ok().map(|_| ())
    })
    .await;

    let enforced = user_in(SALT, 10.0, true);
    let audited = user_in(SALT, 10.0, false);
    let token = |sub: &str, extra: serde_json::Value| {
        let mut claims = dev.claims(("auth", "web"), sub, "payments");
        claims["email"] = json!(format!("{sub}@example.com"));
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        format!("Bearer {}", dev.sign(("auth", "web"), &claims))
    };
    // Every request also carries the client's own identity headers.
    let spoofed: [(&str, &[u8]); 2] = [
        ("X-Auth-Subject", b"admin"),
        ("X-Auth-Email", b"admin@example.com"),
    ];
    let send = |user: &str, more: Vec<(&'static str, Vec<u8>)>| {
        let mut headers: Vec<(&str, Vec<u8>)> = vec![("X-User-Id", user.as_bytes().to_vec())];
        headers.extend(spoofed.iter().map(|(n, v)| (*n, v.to_vec())));
        headers.extend(more);
        let client = &client;
        let nginx = &nginx;
        async move {
            let refs: Vec<(&str, &[u8])> =
                headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            through(client, nginx, &refs).await
        }
    };
    let none_but_empty = |seen: &Option<Vec<String>>| {
        seen.as_ref()
            .is_none_or(|values| values.iter().all(String::is_empty))
    };

    // A verified identity reaches the workload, replacing the client's.
    let seen = send(
        &enforced,
        vec![("Authorization", token("alice", json!({})).into_bytes())],
    )
    .await;
    assert_eq!(seen.status, 200, "{}", nginx.error_log());
    assert_eq!(seen.subject, Some(vec!["alice".to_owned()]));
    assert_eq!(seen.email, Some(vec!["alice@example.com".to_owned()]));

    // Passes without a verified identity: a legacy session, a revoked token with a
    // legacy session. The workload never sees the client's copy.
    let revoked = token("zoe", json!({"jti": "stolen-1"})).into_bytes();
    for (what, more) in [
        (
            "legacy session",
            vec![("Cookie", b"session_id=s1".to_vec())],
        ),
        (
            "revoked token, legacy session",
            vec![
                ("Authorization", revoked.clone()),
                ("Cookie", b"session_id=s1".to_vec()),
            ],
        ),
    ] {
        let seen = send(&audited, more).await;
        assert_eq!(seen.status, 200, "{what}");
        assert!(none_but_empty(&seen.subject), "{what}: {:?}", seen.subject);
        assert!(none_but_empty(&seen.email), "{what}: {:?}", seen.email);
    }
    // A revoked token without a legacy session is refused like garbage.
    let seen = send(&audited, vec![("Authorization", revoked)]).await;
    assert_eq!(seen.status, 401);

    // A subject that would split the header is refused, never dropped.
    let injected = token("carol\r\nX-Injected: yes", json!({})).into_bytes();
    assert_eq!(
        send(&enforced, vec![("Authorization", injected.clone())])
            .await
            .status,
        401
    );
    let seen = send(
        &audited,
        vec![
            ("Authorization", injected),
            ("Cookie", b"session_id=s1".to_vec()),
        ],
    )
    .await;
    assert_eq!(seen.status, 200);
    assert!(none_but_empty(&seen.subject), "{:?}", seen.subject);

    // Non-ASCII arrives percent-encoded, as the README says.
    let seen = send(
        &enforced,
        vec![("Authorization", token("zoë", json!({})).into_bytes())],
    )
    .await;
    assert_eq!(seen.subject, Some(vec!["zo%C3%AB".to_owned()]));

    // A third-party cookie in Latin-1 hides neither the token cookie nor the session.
    let mut cookies = b"_ga=caf\xe9; access_token=".to_vec();
    cookies.extend_from_slice(
        token("bob", json!({}))
            .trim_start_matches("Bearer ")
            .as_bytes(),
    );
    let seen = send(&enforced, vec![("Cookie", cookies)]).await;
    assert_eq!(seen.status, 200, "{}", nginx.error_log());
    assert_eq!(seen.subject, Some(vec!["bob".to_owned()]));
    let seen = send(
        &audited,
        vec![("Cookie", b"_ga=caf\xe9; session_id=1".to_vec())],
    )
    .await;
    assert_eq!(seen.status, 200);
    assert!(none_but_empty(&seen.subject));
    drop(nginx);
    dev.stop().await;
}
