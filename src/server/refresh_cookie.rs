//! Refresh tokens in a cookie, for browser apps (a TokenClient with `delivery: Cookie`):
//! `__Host-authplane-refresh`, `Secure; HttpOnly; SameSite=Strict; Path=/`.
//!
//! `__Host-` binds the cookie to the host that set it (no `Domain`, `Path=/`, `Secure`),
//! so a sibling subdomain cannot plant its own refresh token in a user's browser (a login
//! as the attacker). The price is `Path=/`: the browser sends the cookie with every
//! request to that host, not only to the token endpoint; the prefix cannot be had with a
//! narrower path. `HttpOnly` keeps it from scripts, `SameSite=Strict` from other sites'
//! requests.
//!
//! A request that presents the cookie instead of a token must also prove that it comes
//! from the app's own pages (CSRF): it carries `X-Authplane-CSRF` (a custom header: a
//! cross-origin request with one needs a CORS preflight, which authplane never grants),
//! its `Origin`, when sent, is the issuer's origin, and its `Sec-Fetch-Site`, when sent,
//! is not `cross-site`.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::refresh::RefreshToken;

pub const COOKIE_NAME: &str = "__Host-authplane-refresh";
/// The header a cookie request must carry (any non-empty value).
pub const CSRF_HEADER: &str = "x-authplane-csrf";

/// The refresh cookie's value, if the request carries exactly one.
pub fn read(headers: &HeaderMap) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_owned());
    let first = found.next()?;
    // Two of them: someone else set one; believe neither.
    found.next().is_none().then_some(first)
}

/// Why a request may not use the cookie.
pub fn check_csrf(headers: &HeaderMap, issuer: &str) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text(CSRF_HEADER).is_none_or(str::is_empty) {
        return Err(
            "a request with the refresh cookie must carry the header X-Authplane-CSRF (cross-site request forgery protection)"
                .into(),
        );
    }
    if text("sec-fetch-site") == Some("cross-site") {
        return Err("a request with the refresh cookie cannot come from another site".into());
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let expected = url::Url::parse(issuer)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_default();
        if origin != expected {
            return Err(format!(
                "a request with the refresh cookie must come from the issuer's origin {expected}, not {origin}"
            ));
        }
    }
    Ok(())
}

/// `Set-Cookie` for `token`, living `max_age` seconds (what is left of its session).
pub fn set(token: &RefreshToken, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        token.expose(),
        max_age.max(0)
    ))
    .ok()
}

/// `Set-Cookie` that removes the cookie (its session is over).
pub fn clear() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-authplane-refresh=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn one_cookie_is_read_two_are_believed_neither() {
        let one = headers(&[("cookie", "a=b; __Host-authplane-refresh=aprt_x; c=d")]);
        assert_eq!(read(&one).as_deref(), Some("aprt_x"));
        let two = headers(&[
            ("cookie", "__Host-authplane-refresh=aprt_x"),
            ("cookie", "__Host-authplane-refresh=aprt_y"),
        ]);
        assert_eq!(read(&two), None);
        assert_eq!(
            read(&headers(&[("cookie", "authplane-refresh=aprt_x")])),
            None
        );
    }

    #[test]
    fn the_csrf_rules() {
        let issuer = "https://app.example.com/auth/web";
        let ok = [
            ("x-authplane-csrf", "1"),
            ("origin", "https://app.example.com"),
        ];
        assert_eq!(check_csrf(&headers(&ok), issuer), Ok(()));
        assert_eq!(
            check_csrf(&headers(&[("x-authplane-csrf", "1")]), issuer),
            Ok(())
        );
        for bad in [
            vec![("origin", "https://app.example.com")],
            vec![
                ("x-authplane-csrf", "1"),
                ("origin", "https://evil.example"),
            ],
            vec![("x-authplane-csrf", "1"), ("origin", "null")],
            vec![("x-authplane-csrf", "1"), ("sec-fetch-site", "cross-site")],
        ] {
            assert!(check_csrf(&headers(&bad), issuer).is_err(), "{bad:?}");
        }
    }
}
