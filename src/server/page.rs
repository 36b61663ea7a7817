//! The status page, `GET /ui`: a read-only view of [`super::overview`] that polls
//! `GET /status` every two seconds. Its HTML, script and style are compiled into the
//! binary: no CDN, no build step, nothing fetched but the status document.
//!
//! The page builds its DOM with `textContent` only, and its Content-Security-Policy
//! forbids inline script and style, every origin but this one, framing and forms: names
//! in the status come from resources that tenants write, and must stay text.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::IntoResponse;

const HTML: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Same origin only; no inline code; no plug-ins, frames, forms or `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers of every response of the page, the status document included.
fn guarded(content_type: &'static str) -> [(HeaderName, &'static str); 6] {
    [
        (CONTENT_TYPE, content_type),
        (
            HeaderName::from_static("content-security-policy"),
            CONTENT_SECURITY_POLICY,
        ),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        (HeaderName::from_static("referrer-policy"), "no-referrer"),
        // The status changes every second; the assets change with the binary.
        (CACHE_CONTROL, "no-store"),
    ]
}

/// The headers of the status document: JSON, not to be cached or sniffed.
pub fn no_store() -> [(HeaderName, &'static str); 6] {
    guarded("application/json")
}

pub async fn html() -> impl IntoResponse {
    (guarded("text/html; charset=utf-8"), HTML)
}

pub async fn script() -> impl IntoResponse {
    (guarded("text/javascript; charset=utf-8"), SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    (guarded("text/css; charset=utf-8"), STYLE)
}
