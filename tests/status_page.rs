//! The status page (`GET /ui`) and the document it polls (`GET /status`): what they show
//! of a dev server (keys on their timeline, rollouts, would-deny reasons, revocations),
//! what they never show (key material, revoked subjects), the headers that keep the page
//! inert, and a real browser (Chromium, headless, driven over WebDriver) that sees the
//! example policy at 10% and follows an edit of its manifest to 50%.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use serde_json::{Value, json};

fn policy(rollout: &str) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  issuers: [{{signingKeyRef: {{name: web, namespace: auth}}}}]\n  audiences: [payments]\n\
         \x20 requiredClaims: [{{claim: roles, contains: payments}}]\n\
         \x20 rollout:\n    mode: Enforce\n{rollout}    bucketBy: {{header: X-User-Id}}\n"
    )
}

fn revocation() -> String {
    "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {name: mallory, namespace: auth}\n\
     spec:\n  signingKeyRef: {name: web, namespace: auth}\n  subject: mallory-the-subject\n  reason: compromised\n"
        .to_owned()
}

#[tokio::test]
async fn the_status_document_shows_keys_rollouts_reasons_and_revocations_and_no_secret() {
    let dev = Dev::start(&[
        (
            "keys.yaml",
            &signing_key("auth", "web", "  algorithm: ES256\n"),
        ),
        (
            "policy.yaml",
            &policy("    steps: [10, 50, 100]\n    stepEvery: 1h\n"),
        ),
        ("revocation.yaml", &revocation()),
    ])
    .await;
    // An audited user without a token, and one with a token lacking the role.
    let audited = common::user_in("shop/payments", 10.0, false);
    let token = dev.mint(("auth", "web"), "carol", &["payments"], json!({}));
    for headers in [
        vec![("x-user-id", audited.as_str())],
        vec![("x-user-id", audited.as_str())],
        vec![
            ("x-user-id", audited.as_str()),
            ("authorization", &format!("Bearer {token}")),
        ],
    ] {
        assert_eq!(
            dev.get_with("/authz/shop/payments", &headers)
                .await
                .status(),
            200
        );
    }

    let response = dev.get("/status").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let text = response.text().await.unwrap();
    let overview: Value = serde_json::from_str(&text).unwrap();

    let issuer = &overview["issuers"]["items"][0];
    assert_eq!(overview["issuers"]["total"], 1);
    assert_eq!(issuer["name"], "web");
    let keys = dev.keys("auth", "web");
    let active = &issuer["keys"][0];
    assert_eq!(active["kid"], keys.records()[0].material.kid());
    assert_eq!(active["alg"], "ES256");
    assert_eq!(active["state"], "Active");
    assert_eq!(active["retiresAt"], Value::Null);
    // Rotation every 720h by default: the next key signs 720h after this one did.
    let activated: jiff::Timestamp = active["activatesAt"].as_str().unwrap().parse().unwrap();
    let next: jiff::Timestamp = issuer["nextRotationAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        next.duration_since(activated),
        jiff::SignedDuration::from_hours(720)
    );

    let policy = &overview["policies"]["items"][0];
    assert_eq!(policy["mode"], "Enforce");
    assert_eq!(policy["status"]["effectivePercentage"], 10.0);
    assert_eq!(
        policy["status"]["rollout"]["steps"],
        json!([10.0, 50.0, 100.0])
    );
    assert!(policy["status"]["nextStepAt"].is_string(), "{policy}");
    assert_eq!(
        policy["decisions"]["wouldDeny"],
        json!({"missing_token": 2, "insufficient_scope": 1})
    );

    let revoked = &overview["revocations"]["items"][0];
    assert_eq!(revoked["name"], "mallory");
    assert_eq!(revoked["issuer"], "auth/web");
    assert_eq!(revoked["matches"], "subject");
    assert_eq!(revoked["reason"], "compromised");
    // Neither the key material nor whom a Revocation names.
    assert!(!text.contains("mallory-the-subject"), "{text}");
    let state = common::read_state(&dev.state(), "auth", "web");
    let stored: serde_json::Map<String, Value> = serde_json::from_str(&state).unwrap();
    for (file, content) in stored.iter().filter(|(f, _)| f.ends_with(".pem")) {
        let pem = content.as_str().unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!text.contains(&body[..40]), "{file} leaked");
    }
    assert!(!text.contains("PRIVATE"), "{text}");

    // `?namespace=` narrows every list.
    let other = dev.json("/status?namespace=elsewhere").await;
    for list in ["issuers", "policies", "revocations"] {
        assert_eq!(other[list]["total"], 0, "{list}");
    }
    // Read-only: nothing but GET (and HEAD).
    let post = dev.http.post(dev.url("/status")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    dev.stop().await;
}

#[tokio::test]
async fn the_page_is_inert_markup_with_its_script_and_style_apart() {
    let dev = Dev::start(&[("keys.yaml", &signing_key("auth", "web", ""))]).await;
    for (path, content_type) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let response = dev.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        let body = response.text().await.unwrap();
        match path {
            "/ui" => {
                // No inline script or style for the policy to allow, and no form.
                assert!(body.contains(r#"<script src="ui/app.js" defer></script>"#));
                assert_eq!(body.matches("<script").count(), 1);
                assert!(!body.contains("style="), "inline style");
                assert!(!body.contains("<form"), "a form");
            }
            "/ui/app.js" => {
                // Data becomes text, never markup; and the page only reads.
                for never in [
                    "innerHTML",
                    "outerHTML",
                    "insertAdjacentHTML",
                    "document.write",
                    "eval(",
                ] {
                    assert!(!body.contains(never), "{never}");
                }
                assert!(!body.contains("method:"), "the script sends only GETs");
            }
            _ => {}
        }
    }
    dev.stop().await;
}

/// Chromium and ChromeDriver (Debian: `chromium`, `chromium-driver`), if installed.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
    };
    Some((
        find(&["chromium", "chromium-browser", "google-chrome"])?,
        find(&["chromedriver"])?,
    ))
}

/// A ChromeDriver process and one headless Chromium session, spoken to over the W3C
/// WebDriver protocol with reqwest: four endpoints are all this test needs, so no
/// WebDriver crate (and its dependencies) for them.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path, profile: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("ChromeDriver to listen", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move {
                let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        // Headless, and nothing that reaches for the network on its own.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1200,800",
        ]
        .iter()
        .map(ToString::to_string)
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(answer["value"].get("error").is_none(), "{path}: {answer}");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// What `script` (a function body) returns in the page.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }

    /// Ends the session, which closes Chromium; dropping the value stops ChromeDriver.
    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The policy card's percentage and its headline, as the page shows them.
const POLICY_SHOWN: &str = r#"
    const card = document.querySelector('[data-policy="shop/payments"]');
    if (!card) return null;
    return [card.dataset.effective, card.querySelector('.effective').textContent,
            card.querySelector('[role=progressbar]').getAttribute('aria-valuenow')];
"#;

/// Set `AUTHPLANE_SCREENSHOT=docs/status-page.png` to write the README's screenshot.
#[tokio::test]
async fn a_real_browser_shows_the_example_rollout_and_follows_an_edit() {
    let Some((chromium, chromedriver)) = browser() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_real_browser_shows_the_example_rollout_and_follows_an_edit: no chromium and chromedriver (apt-get install -y chromium chromium-driver)"
        );
        return;
    };
    // Dev mode on a copy of examples/, as the quick start runs it.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            files.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let dev = Dev::start(&files).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromium, &chromedriver, profile.path()).await;
    browser.open(&dev.url("/ui")).await;

    let shown = |expected: &'static str| {
        let browser = &browser;
        async move {
            let shown = browser.eval(POLICY_SHOWN).await;
            (shown
                == json!([
                    expected,
                    format!("{expected}% of users enforced now"),
                    expected
                ]))
            .then_some(())
        }
    };
    // A first start of Chromium on a loaded 2-core machine takes seconds.
    eventually(
        "the page to show shop/payments at 10%",
        Duration::from_secs(20),
        || shown("10"),
    )
    .await;
    let issuers = browser
        .eval("return [...document.querySelectorAll('[data-issuer]')].map(e => e.dataset.issuer);")
        .await;
    assert_eq!(issuers, json!(["auth/internal", "auth/web"]));

    // A would-deny, to see its reason on the page.
    let carol = dev.mint(("auth", "web"), "carol", &["payments"], json!({}));
    dev.get_with(
        "/authz/shop/payments",
        &[("authorization", &format!("Bearer {carol}"))],
    )
    .await;

    // Edit the manifest as a person would: the page follows without a reload.
    let manifest = files
        .iter()
        .find(|(_, text)| text.contains("kind: AuthPolicy"))
        .unwrap();
    assert!(manifest.1.contains("percentage: 10\n"), "{}", manifest.1);
    dev.write(
        manifest.0,
        &manifest.1.replace("percentage: 10\n", "percentage: 50\n"),
    );
    // The promise is one second for the server; the page polls every two.
    eventually(
        "the page to show shop/payments at 50%",
        CHANGE_DEADLINE + Duration::from_secs(4),
        || shown("50"),
    )
    .await;
    eventually(
        "the page to show the would-deny reason",
        Duration::from_secs(8),
        || {
            let browser = &browser;
            async move {
                let text = browser
                    .eval("return document.querySelector('[data-policy=\"shop/payments\"]').textContent;")
                    .await;
                text.as_str()?.contains("insufficient_scope").then_some(())
            }
        },
    )
    .await;

    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert!((800..=1200).contains(&width), "width {width}");
    let out = std::env::var_os("AUTHPLANE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"));
    std::fs::write(&out, &png).unwrap();
    let _ = writeln!(std::io::stderr(), "screenshot: {}", out.display());
    browser.quit().await;
    dev.stop().await;
}
