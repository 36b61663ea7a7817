//! Hostile tokens against a policy enforcing for everyone: each is answered 401 with a
//! stable reason; none gets a 500, none panics the server, none is `authenticated` by
//! TokenReview.

mod common;

use authplane::keys::{Algorithm, KeyMaterial};
use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{Dev, signing_key, tamper};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

const POLICY: &str = r#"apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {name: api, namespace: shop}
spec:
  issuers: [{signingKeyRef: {name: web, namespace: auth}}]
  audiences: [api]
  leeway: 5s
  tokenSources:
    headers: [{name: Authorization, prefix: "Bearer "}]
    cookies: [access_token]
  rollout: {mode: Enforce, percentage: 100}
"#;

/// A Revocation of the token whose `jti` is `revoked-1`.
const REVOCATION: &str = "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {name: stolen, namespace: auth}\nspec:\n  signingKeyRef: {name: web}\n  tokenId: revoked-1\n";

const KEY: (&str, &str) = ("auth", "web");

fn b64(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// A JWS from raw header and payload bytes, signed by `key` with `alg`.
fn raw(header: &Value, payload: &[u8], key: &EncodingKey, alg: jsonwebtoken::Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn every_hostile_token_is_a_401_with_a_reason() {
    let dev = Dev::start(&[
        (
            "keys.yaml",
            &signing_key("auth", "web", "  algorithm: RS256\n"),
        ),
        ("policy.yaml", POLICY),
        ("revocation.yaml", REVOCATION),
    ])
    .await;
    let keys = dev.keys(KEY.0, KEY.1);
    let real = keys
        .active(jiff::Timestamp::now())
        .unwrap()
        .material
        .clone();
    let real_key = real.encoding_key().unwrap();
    let kid = real.kid().to_owned();
    let good = dev.claims(KEY, "alice", "api");
    let with = |change: Value| {
        let mut claims = good.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        dev.sign(KEY, &claims)
    };
    let now = jiff::Timestamp::now().as_second();
    let rs256 = json!({"alg": "RS256", "typ": "JWT", "kid": kid});

    // The public key, as an attacker would find it, used as an HMAC secret.
    let der = pem::parse(real.to_pem()).unwrap().into_contents();
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
    let spki = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_der()
        .unwrap();
    let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec()));
    let jwks = dev
        .get("/auth/web/.well-known/jwks.json")
        .await
        .bytes()
        .await
        .unwrap();

    let attacker = KeyMaterial::generate(Algorithm::RS256, 2048).unwrap();
    let attacker_key = attacker.encoding_key().unwrap();
    let attacker_jwk = attacker
        .public_jwk()
        .to_json(attacker.kid(), Algorithm::RS256);
    let hs256 = |secret: &[u8]| {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(secret)).unwrap()
    };

    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT", "kid": kid})
                    .to_string()
                    .as_bytes()),
                b64(good.to_string().as_bytes())
            ),
            "alg_not_allowed",
        ),
        (
            "alg None, signed",
            format!(
                "{}.{}.c2ln",
                b64(br#"{"alg":"None"}"#),
                b64(good.to_string().as_bytes())
            ),
            "alg_not_allowed",
        ),
        (
            "HS256 with the RSA public key (PEM)",
            hs256(public_pem.as_bytes()),
            "alg_not_allowed",
        ),
        (
            "HS256 with the JWKS as secret",
            hs256(&jwks),
            "alg_not_allowed",
        ),
        (
            "RS384 header on the RS256 key",
            raw(
                &json!({"alg": "RS384", "kid": kid}),
                good.to_string().as_bytes(),
                &real_key,
                jsonwebtoken::Algorithm::RS384,
            ),
            "alg_not_allowed",
        ),
        (
            "unknown kid",
            raw(
                &json!({"alg": "RS256", "kid": attacker.kid()}),
                good.to_string().as_bytes(),
                &attacker_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "unknown_kid",
        ),
        (
            "no kid",
            raw(
                &json!({"alg": "RS256"}),
                good.to_string().as_bytes(),
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "unknown_kid",
        ),
        (
            "jku pointing elsewhere",
            raw(
                &json!({"alg": "RS256", "kid": attacker.kid(), "jku": "https://evil.example/jwks.json"}),
                good.to_string().as_bytes(),
                &attacker_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "unknown_kid",
        ),
        (
            "x5u pointing elsewhere",
            raw(
                &json!({"alg": "RS256", "kid": attacker.kid(), "x5u": "https://evil.example/cert.pem"}),
                good.to_string().as_bytes(),
                &attacker_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "unknown_kid",
        ),
        (
            "embedded jwk with our kid",
            raw(
                &json!({"alg": "RS256", "kid": kid, "jwk": attacker_jwk}),
                good.to_string().as_bytes(),
                &attacker_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "bad_signature",
        ),
        (
            "unknown crit",
            raw(
                &json!({"alg": "RS256", "kid": kid, "crit": ["exp-policy"], "exp-policy": 1}),
                good.to_string().as_bytes(),
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "unsupported_crit",
        ),
        (
            "tampered signature",
            tamper(&dev.sign(KEY, &good)),
            "bad_signature",
        ),
        (
            "tampered payload",
            {
                let token = dev.sign(KEY, &good);
                let parts: Vec<&str> = token.split('.').collect();
                let forged = with(json!({"sub": "admin"}));
                format!(
                    "{}.{}.{}",
                    parts[0],
                    forged.split('.').nth(1).unwrap(),
                    parts[2]
                )
            },
            "bad_signature",
        ),
        ("expired", with(json!({"exp": now - 60})), "expired"),
        // Read as newer than any Revocation by subject, and hiding its ten years.
        (
            "iat in the future, a 10-year token",
            with(json!({"iat": now + 10 * 365 * 86400 - 60, "exp": now + 10 * 365 * 86400})),
            "iat_in_future",
        ),
        (
            "iat in the future, beyond the leeway",
            with(json!({"iat": now + 3000})),
            "iat_in_future",
        ),
        // The key's maxTokenLifetime (1h by default) holds though the policy sets none.
        (
            "30 days, signed with our key",
            with(json!({"exp": now + 30 * 86400})),
            "token_lifetime_too_long",
        ),
        ("no iat", with(json!({"iat": null})), "missing_iat"),
        (
            "not yet valid",
            with(json!({"nbf": now + 600})),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            with(json!({"iss": "https://evil.example"})),
            "wrong_issuer",
        ),
        ("no issuer", with(json!({"iss": null})), "wrong_issuer"),
        (
            "wrong audience",
            with(json!({"aud": "other"})),
            "wrong_audience",
        ),
        (
            "missing audience",
            with(json!({"aud": null})),
            "wrong_audience",
        ),
        ("missing exp", with(json!({"exp": null})), "missing_exp"),
        (
            "exp as a string",
            with(json!({"exp": "tomorrow"})),
            "invalid_claims",
        ),
        (
            "nbf as an object",
            with(json!({"nbf": {"a": 1}})),
            "invalid_claims",
        ),
        ("iss as a number", with(json!({"iss": 123})), "wrong_issuer"),
        (
            "sub as a number",
            with(json!({"sub": 42})),
            "invalid_claims",
        ),
        ("aud as a number", with(json!({"aud": 5})), "invalid_claims"),
        (
            "kid as a number",
            raw(
                &json!({"alg": "RS256", "kid": 7}),
                good.to_string().as_bytes(),
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "malformed_token",
        ),
        (
            "payload not JSON",
            raw(
                &rs256,
                b"not json at all",
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "malformed_token",
        ),
        (
            "payload a JSON array",
            raw(
                &rs256,
                b"[1,2,3]",
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "malformed_token",
        ),
        (
            "deeply nested payload",
            raw(
                &rs256,
                deep.as_bytes(),
                &real_key,
                jsonwebtoken::Algorithm::RS256,
            ),
            "malformed_token",
        ),
        // The signature is checked over the raw bytes before the payload is decoded.
        (
            "bad base64 payload",
            format!(
                "{}.!!!not-base64!!!.c2ln",
                b64(rs256.to_string().as_bytes())
            ),
            "bad_signature",
        ),
        (
            "bad base64 header",
            format!("!!!.{}.c2ln", b64(good.to_string().as_bytes())),
            "malformed_token",
        ),
        (
            "truncated in the payload",
            {
                let t = dev.sign(KEY, &good);
                let dot = t.find('.').unwrap();
                let middle = dot + (t.rfind('.').unwrap() - dot) / 2; // inside the payload
                t[..middle].to_owned()
            },
            "malformed_token",
        ),
        (
            "signature removed",
            {
                let t = dev.sign(KEY, &good);
                t[..=t.rfind('.').unwrap()].to_owned()
            },
            "bad_signature",
        ),
        ("one segment", "abc".to_owned(), "malformed_token"),
        (
            "four segments",
            format!("{}.x", dev.sign(KEY, &good)),
            "malformed_token",
        ),
        (
            "oversized",
            format!(
                "{}.{}.{}",
                b64(rs256.to_string().as_bytes()),
                "A".repeat(9000),
                "c2ln"
            ),
            "token_too_large",
        ),
        (
            "header not JSON",
            format!(
                "{}.{}.c2ln",
                b64(b"garbage"),
                b64(good.to_string().as_bytes())
            ),
            "malformed_token",
        ),
        (
            "non-UTF-8 header",
            format!(
                "{}.{}.c2ln",
                b64(&[0xff, 0xfe, 0x00]),
                b64(good.to_string().as_bytes())
            ),
            "malformed_token",
        ),
        (
            "revoked",
            with(json!({"jti": "revoked-1"})),
            "token_revoked",
        ),
    ];

    let valid = dev.sign(KEY, &good);
    let ok = dev
        .get_with(
            "/authz/shop/api",
            &[("Authorization", &format!("Bearer {valid}"))],
        )
        .await;
    assert_eq!(ok.status(), 200, "the control token must pass");
    let review: Value = dev
        .http
        .post(dev.url("/tokenreview/shop/api"))
        .json(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": valid}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        review["status"]["authenticated"], true,
        "the control token must be authenticated: {review}"
    );

    for (name, token, reason) in &cases {
        let r = dev
            .get_with(
                "/authz/shop/api",
                &[("Authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(r.status(), 401, "{name}");
        let got = r
            .headers()
            .get("x-authplane-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), Some(*reason), "{name}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert!(
            !challenge.contains(token.as_str()) || token.len() < 4,
            "{name}: the token is echoed"
        );
        let review = dev
            .http
            .post(dev.url("/tokenreview/shop/api"))
            .json(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(review.status(), 200, "{name}: TokenReview");
        let review: Value = review.json().await.unwrap();
        assert_eq!(review["status"]["authenticated"], false, "{name}: {review}");
        assert!(review["status"].get("user").is_none(), "{name}: {review}");
    }

    // The same tokens in a cookie beside a third-party cookie that is not text: each
    // still found, and refused for its own reason.
    let in_cookie = |token: &str| {
        let mut cookie = b"_ga=caf\xe9; access_token=".to_vec();
        cookie.extend_from_slice(token.as_bytes());
        dev.http.get(dev.url("/authz/shop/api")).header(
            "Cookie",
            reqwest::header::HeaderValue::from_bytes(&cookie).unwrap(),
        )
    };
    assert_eq!(in_cookie(&valid).send().await.unwrap().status(), 200);
    for (name, token, reason) in &cases {
        let r = in_cookie(token).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}, in a cookie");
        let got = r
            .headers()
            .get("x-authplane-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), Some(*reason), "{name}, in a cookie");
    }

    // Headers far beyond any token: refused by the HTTP layer or by us, never a 500.
    let huge = "A".repeat(200 * 1024);
    let r = dev
        .http
        .get(dev.url("/authz/shop/api"))
        .header("Authorization", format!("Bearer {huge}"))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status() == 431 || r.status() == 401, "{}", r.status());
    }
    let many = (0..200).fold(dev.http.get(dev.url("/authz/shop/api")), |req, i| {
        req.header(format!("x-h{i}"), "v")
    });
    if let Ok(r) = many.send().await {
        assert!(
            r.status().is_client_error() || r.status() == 401,
            "{}",
            r.status()
        );
    }
    // The server is still there.
    assert_eq!(dev.get("/healthz").await.status(), 200);
    dev.stop().await;
}
