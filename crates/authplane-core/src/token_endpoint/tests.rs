use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::api::TokenClient;
use crate::refresh::{Entropy, EntropyUnavailable, start};

fn form(body: &str) -> Result<Params, OAuthError> {
    parse_form(body.as_bytes())
}

fn request(body: &str) -> Result<TokenRequest, OAuthError> {
    parse_request(&form(body)?)
}

#[test]
fn a_form_is_read_once_per_parameter() {
    let params =
        form("grant_type=refresh_token&refresh_token=aprt_x%2By&client_id=shop%2Fweb&empty=")
            .unwrap();
    assert_eq!(params["refresh_token"], "aprt_x+y");
    assert_eq!(params["client_id"], "shop/web");
    assert!(!params.contains_key("empty"));
    for (body, says) in [
        (
            "grant_type=refresh_token&grant_type=token-exchange",
            "\"grant_type\" is given more than once",
        ),
        ("a=&a=1", "\"a\" is given more than once"),
        ("refresh_token=%FF", "not UTF-8"),
    ] {
        let error = form(body).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.description.contains(says), "{body}: {error}");
    }
    let many: Vec<String> = (0..40).map(|i| format!("p{i}=1")).collect();
    assert!(
        form(&many.join("&"))
            .unwrap_err()
            .description
            .contains("more than 32 parameters")
    );
    let big = format!("a={}", "x".repeat(MAX_BODY_BYTES));
    assert!(form(&big).unwrap_err().description.contains("larger than"));
}

#[test]
fn grants_are_read_with_their_parameters() {
    let refresh = request("grant_type=refresh_token&refresh_token=t&client_id=shop/web").unwrap();
    assert_eq!(
        refresh,
        TokenRequest {
            grant: Grant::Refresh {
                refresh_token: "t".into()
            },
            client: ClientAuth::Public {
                client_id: "shop/web".into()
            },
        }
    );
    let exchange = request(&format!(
        "grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=alice&subject_token_type={TOKEN_TYPE_SUBJECT}&audience=a%20b&resource=c&authplane_claims=%7B%7D&client_id=auth/web&client_secret=s"
    ))
    .unwrap();
    assert_eq!(
        exchange.grant,
        Grant::Exchange {
            subject_token: "alice".into(),
            subject_token_type: TOKEN_TYPE_SUBJECT.into(),
            audiences: vec!["a".into(), "b".into(), "c".into()],
            claims: Some("{}".into()),
        }
    );
    assert!(matches!(exchange.client, ClientAuth::Secret { .. }));
    let asserted = request(&format!(
        "grant_type=refresh_token&refresh_token=t&client_assertion_type={CLIENT_ASSERTION_JWT}&client_assertion=eyJ"
    ))
    .unwrap();
    assert_eq!(asserted.client.client_id(), None);
}

#[test]
fn bad_requests_get_the_listed_error_codes() {
    let exchange = format!(
        "grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=alice&subject_token_type={TOKEN_TYPE_SUBJECT}"
    );
    let cases = [
        (
            "client_id=x".to_owned(),
            ErrorCode::InvalidRequest,
            "grant_type is missing",
        ),
        (
            "grant_type=password&client_id=x".to_owned(),
            ErrorCode::UnsupportedGrantType,
            "\"password\" is not supported",
        ),
        (
            "grant_type=refresh_token&client_id=x".to_owned(),
            ErrorCode::InvalidRequest,
            "refresh_token is missing",
        ),
        (
            "grant_type=refresh_token&refresh_token=t&scope=more&client_id=x".to_owned(),
            ErrorCode::InvalidRequest,
            "scope cannot change",
        ),
        (
            "grant_type=refresh_token&refresh_token=t".to_owned(),
            ErrorCode::InvalidClient,
            "client_id is missing",
        ),
        (
            format!(
                "{exchange}&client_id=x&requested_token_type=urn:ietf:params:oauth:token-type:refresh_token"
            ),
            ErrorCode::InvalidRequest,
            "is not issued here",
        ),
        (
            format!("{exchange}&client_id=x&actor_token=t"),
            ErrorCode::InvalidRequest,
            "actor_token is not supported",
        ),
        (
            format!("grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=alice&client_id=x"),
            ErrorCode::InvalidRequest,
            "subject_token_type is missing",
        ),
        (
            format!("{exchange}&client_id=x&client_secret=s&client_assertion=a"),
            ErrorCode::InvalidClient,
            "not both",
        ),
        (
            format!("{exchange}&client_assertion_type=urn:x"),
            ErrorCode::InvalidClient,
            "\"urn:x\" is not supported",
        ),
        (
            format!("{exchange}&client_assertion_type={CLIENT_ASSERTION_JWT}"),
            ErrorCode::InvalidClient,
            "client_assertion is missing",
        ),
        (
            format!("{exchange}&client_assertion=a"),
            ErrorCode::InvalidClient,
            "client_assertion_type is missing",
        ),
    ];
    for (body, code, says) in cases {
        let error = request(&body).unwrap_err();
        assert_eq!(error.code, code, "{body}: {error}");
        assert!(error.description.contains(says), "{body}: {error}");
    }
    assert_eq!(ErrorCode::InvalidClient.status(), 401);
    assert_eq!(ErrorCode::InvalidGrant.status(), 400);
    assert_eq!(
        OAuthError::new(ErrorCode::InvalidTarget, "x").body(),
        json!({"error": "invalid_target", "error_description": "x"})
    );
}

#[test]
fn neither_a_secret_nor_a_token_is_printed() {
    let secret = request(
        "grant_type=refresh_token&refresh_token=aprt_SECRET1&client_id=x&client_secret=SECRET2",
    )
    .unwrap();
    let printed = format!("{secret:?}");
    assert!(!printed.contains("SECRET"), "{printed}");
    let assertion = request(&format!(
        "grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=SECRET3&subject_token_type={TOKEN_TYPE_ID_TOKEN}&client_assertion_type={CLIENT_ASSERTION_JWT}&client_assertion=SECRET4"
    ))
    .unwrap();
    let printed = format!("{assertion:?}");
    assert!(!printed.contains("SECRET"), "{printed}");
}

fn rules(lifetime: &str, key_max: SignedDuration) -> ClientRules {
    let client: TokenClient = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
        "metadata": {"name": "web", "namespace": "auth"},
        "spec": {
            "signingKeyRef": {"name": "web"},
            "audiences": ["payments-api", "orders-api"],
            "allowedClaims": ["roles", "email"],
            "accessTokenLifetime": lifetime,
        },
    }))
    .unwrap();
    ClientRules::new(&client, "https://auth.example/auth/web", key_max)
}

#[test]
fn a_client_gets_only_its_audiences() {
    let rules = rules("15m", SignedDuration::from_hours(1));
    assert_eq!(rules.audiences(&[]).unwrap(), ["payments-api"]);
    assert_eq!(
        rules
            .audiences(&[
                "orders-api".into(),
                "payments-api".into(),
                "orders-api".into()
            ])
            .unwrap(),
        ["orders-api", "payments-api"]
    );
    let error = rules
        .audiences(&["payments-api".into(), "admin-api".into()])
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidTarget);
    assert!(
        error
            .description
            .contains("\"admin-api\" is not one of TokenClient auth/web's audiences")
    );
}

#[test]
fn a_client_sets_only_its_allowed_claims() {
    let rules = rules("15m", SignedDuration::from_hours(1));
    assert!(rules.claims(None).unwrap().is_empty());
    let claims = rules
        .claims(Some(r#"{"roles": ["payments"], "email": "a@b"}"#))
        .unwrap();
    assert_eq!(claims["roles"], json!(["payments"]));
    for (text, says) in [
        (r#"{"sub": "admin"}"#, "\"sub\" is set by authplane itself"),
        (
            r#"{"act": {"sub": "x"}}"#,
            "\"act\" is set by authplane itself",
        ),
        (
            r#"{"admin": true}"#,
            "\"admin\" is not in TokenClient auth/web's allowedClaims",
        ),
        (r#"["roles"]"#, "must be a JSON object"),
        ("{", "must be a JSON object"),
    ] {
        let error = rules.claims(Some(text)).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.description.contains(says), "{text}: {error}");
    }
    let big = format!(r#"{{"roles": "{}"}}"#, "x".repeat(MAX_CLAIMS_BYTES));
    assert!(rules.claims(Some(&big)).is_err());
    assert!(rules.subject("alice").is_ok());
    assert!(rules.subject("alice\nINFO forged").is_err());
    assert!(rules.subject(&"a".repeat(MAX_SUBJECT_CHARS + 1)).is_err());
}

struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        self.0 += 1;
        dest.fill(self.0);
        Ok(())
    }
}

#[test]
fn access_claims_are_the_familys_under_authplanes_registered_ones() {
    let rules = rules("2h", SignedDuration::from_hours(1));
    // The key's limit wins over a longer accessTokenLifetime.
    assert_eq!(rules.access_lifetime, SignedDuration::from_hours(1));
    let login = rules.login(
        "alice".into(),
        vec!["payments-api".into()],
        rules.claims(Some(r#"{"roles": ["payments"]}"#)).unwrap(),
    );
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let mut started = start(login, now, &mut Counter(0)).unwrap();
    // Even a family that somehow holds a registered claim cannot override one.
    started.family.claims.insert("sub".into(), json!("mallory"));
    started.family.claims.insert("nbf".into(), json!(0));
    let family = &started.family;
    let claims = access_claims(family, &family.access(), rules.access_lifetime);
    assert_eq!(
        serde_json::Value::Object(claims.clone()),
        json!({
            "iss": "https://auth.example/auth/web",
            "sub": "alice",
            "aud": "payments-api",
            "iat": 1_800_000_000,
            "exp": 1_800_003_600,
            "jti": family.jti,
            "sid": family.id,
            "roles": ["payments"],
        })
    );
    // The same grant, the same claims (a retry within the grace gets the same token).
    assert_eq!(
        access_claims(family, &family.access(), rules.access_lifetime),
        claims
    );
    let two = crate::refresh::Family {
        audiences: vec!["a".into(), "b".into()],
        ..family.clone()
    };
    assert_eq!(
        access_claims(&two, &two.access(), rules.access_lifetime)["aud"],
        json!(["a", "b"])
    );
}

#[test]
fn an_access_token_is_signed_by_the_active_key_and_verifies_with_its_jwk() {
    use crate::keys::lifecycle::{KeyRecord, KeySet};
    use crate::keys::{Algorithm, KeyMaterial};
    use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};

    let rules = rules("15m", SignedDuration::from_hours(1));
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let login = rules.login(
        "alice".into(),
        vec!["payments-api".into()],
        Default::default(),
    );
    let family = start(login, now, &mut Counter(0)).unwrap().family;
    let claims = access_claims(&family, &family.access(), rules.access_lifetime);
    let material = KeyMaterial::generate(Algorithm::ES256, 0).unwrap();
    let kid = material.kid().to_owned();
    let jwk: Jwk =
        serde_json::from_value(material.public_jwk().to_json(&kid, Algorithm::ES256)).unwrap();
    let keys = KeySet::new(vec![KeyRecord {
        material,
        created: now,
        activates_at: now,
    }]);
    let token = crate::token::sign(&keys, &claims, now).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
        Some(kid.as_str())
    );
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.set_audience(&["payments-api"]);
    validation.set_issuer(&["https://auth.example/auth/web"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let decoded = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        &token,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims, claims);
    // Before any key is active, nothing is signed.
    let early = now.checked_sub(SignedDuration::from_secs(1)).unwrap();
    assert!(crate::token::sign(&keys, &claims, early).is_err());
}

/// Claims a login may set are claims its family can be read back with: a store keeps the
/// family as JSON (one level deeper than the claims), so claims nested to serde_json's
/// limit (128) were accepted at login and made the stored family unreadable (after a
/// restart of the embedded store, or at once with Redis: every refresh of it 503).
#[test]
fn claims_a_login_accepts_read_back_in_their_stored_family() {
    let rules = rules("1h", SignedDuration::from_hours(1));
    for depth in [2, MAX_CLAIMS_DEPTH - 1, MAX_CLAIMS_DEPTH, 60, 126, 127] {
        let text = format!(
            r#"{{"roles": {}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        // The object is one level, the arrays the rest.
        if depth + 1 > MAX_CLAIMS_DEPTH {
            // Refused (beyond serde_json's own limit, as not JSON).
            let error = rules.claims(Some(&text)).unwrap_err();
            assert!(
                depth >= 127 || error.description.contains("deeper than"),
                "{error:?}"
            );
            continue;
        }
        let claims = rules.claims(Some(&text)).unwrap();
        let login = rules.login("alice".into(), vec![], claims);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let family = start(login, now, &mut Counter(0)).unwrap().family;
        let stored = serde_json::to_vec(&family).unwrap();
        let read = serde_json::from_slice::<crate::refresh::Family>(&stored);
        assert!(read.is_ok(), "depth {depth}: {:?}", read.err());
    }
}
