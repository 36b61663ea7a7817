//! The legacy session of a migration, and its end: `legacySession` lets requests outside
//! the enforced share pass on the old session cookie until `until`. After it they no
//! longer do, decided from each request's own time, so the end takes effect on time on
//! every replica with no restart and no edit. Passes carry `Deprecation` (RFC 9745) and
//! `Sunset` (RFC 8594) so that the application can show its migration banner.

use http::{HeaderMap, HeaderName, HeaderValue};
use jiff::{SignedDuration, Timestamp};

use super::request;
use crate::api::LegacySession;
use crate::api::conditions::reason;
use crate::keys::lifecycle::add;

/// How close an end is when it is "soon": admission warns and the status says so from
/// this long before it.
pub const ENDING_SOON: SignedDuration = SignedDuration::from_hours(7 * 24);

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// A policy's `legacySession`, compiled.
pub struct LegacySessions {
    cookie: String,
    until: Option<Timestamp>,
    /// `Deprecation` and `Sunset` at `until`, rendered once.
    notice: Vec<(HeaderName, HeaderValue)>,
}

impl LegacySessions {
    pub fn new(spec: &LegacySession) -> Self {
        let until = spec.until.as_ref().map(|t| t.0);
        Self {
            cookie: spec.cookie.clone(),
            until,
            notice: until.map(notice).unwrap_or_default(),
        }
    }

    /// Whether a request passes on its legacy session at `now`: it carries the cookie
    /// (not empty; its value is never looked at), and `until` has not come.
    pub fn admits(&self, headers: &HeaderMap, now: Timestamp) -> bool {
        self.until.is_none_or(|until| now < until)
            && request::cookies(headers, &self.cookie).next().is_some()
    }

    /// The headers of a response that passes on a legacy session.
    pub fn notice(&self) -> &[(HeaderName, HeaderValue)] {
        &self.notice
    }

    pub fn until(&self) -> Option<Timestamp> {
        self.until
    }

    /// The `LegacySessionsAccepted` condition at `now`: (status, reason, message). The
    /// message names times, never durations, so that it does not change between its
    /// transitions (see [`LegacySessions::next_change`]).
    pub fn condition(&self, now: Timestamp) -> (bool, &'static str, String) {
        let cookie = &self.cookie;
        let Some(until) = self.until else {
            return (
                true,
                reason::NO_SUNSET,
                format!(
                    "requests outside enforcement pass on the legacy session cookie {cookie}; no end is set (spec.legacySession.until)"
                ),
            );
        };
        if now >= until {
            (
                false,
                reason::SUNSET_PASSED,
                format!(
                    "the legacy session cookie {cookie} no longer passes since {until}: requests outside enforcement without a valid token are refused; remove spec.legacySession to finish the migration"
                ),
            )
        } else if now >= add(until, -ENDING_SOON) {
            (
                true,
                reason::SUNSET_SOON,
                format!(
                    "the legacy session cookie {cookie} stops passing at {until}, within 7 days: authplane_decisions_total{{decision=\"legacy_session\"}} of this policy should be falling to zero"
                ),
            )
        } else {
            (
                true,
                reason::SUNSET_SCHEDULED,
                format!(
                    "requests outside enforcement pass on the legacy session cookie {cookie} until {until}"
                ),
            )
        }
    }

    /// When [`LegacySessions::condition`] changes next after `now`: 7 days before
    /// `until`, then at `until`.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let until = self.until?;
        [add(until, -ENDING_SOON), until]
            .into_iter()
            .find(|at| *at > now)
    }
}

/// Admission's warning about a `legacySession` whose end has come or is near.
pub fn warning(spec: &LegacySession, now: Timestamp) -> Option<String> {
    let until = spec.until.as_ref()?.0;
    if until <= now {
        Some(format!(
            "{until} has passed: legacy session cookies no longer pass, and requests outside enforcement without a valid token are refused"
        ))
    } else if until <= add(now, ENDING_SOON) {
        Some(format!(
            "legacy session cookies stop passing at {until}, within 7 days: check that authplane_decisions_total{{decision=\"legacy_session\"}} of this policy has fallen to zero"
        ))
    } else {
        None
    }
}

/// `Deprecation: @<seconds>` (RFC 9745, a Structured Field date) and `Sunset: <HTTP-date>`
/// (RFC 8594), both at `until`: sessions are deprecated until they end, and end then.
fn notice(until: Timestamp) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(2);
    if let Ok(value) = HeaderValue::from_str(&format!("@{}", until.as_second())) {
        headers.push((DEPRECATION, value));
    }
    // An HTTP-date has a four-digit year: a time outside that range gets no Sunset.
    let sunset = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&until);
    if let Some(value) = sunset.ok().and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.push((SUNSET, value));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn legacy(until: Option<&str>) -> LegacySessions {
        LegacySessions::new(&LegacySession {
            cookie: "session_id".into(),
            until: until.map(|u| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(u))),
        })
    }

    fn cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_cookie_passes_until_the_end_and_not_from_it_on() {
        let legacy = legacy(Some("2026-07-01T00:00:00Z"));
        let with = cookie("theme=dark; session_id=s1");
        assert!(legacy.admits(&with, at("2026-06-30T23:59:59Z")));
        assert!(!legacy.admits(&with, at("2026-07-01T00:00:00Z")));
        assert!(!legacy.admits(&cookie("session_id="), at("2026-01-01T00:00:00Z")));
        assert!(!legacy.admits(&HeaderMap::new(), at("2026-01-01T00:00:00Z")));
        let open = super::tests::legacy(None);
        assert!(open.admits(&with, at("2126-01-01T00:00:00Z")));
        assert!(open.notice().is_empty());
    }

    #[test]
    fn the_notice_is_an_rfc_9745_date_and_an_rfc_8594_http_date() {
        let legacy = legacy(Some("2026-07-01T00:00:00Z"));
        let notice: Vec<(&str, &str)> = legacy
            .notice()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            notice,
            [
                ("deprecation", "@1782864000"),
                ("sunset", "Wed, 01 Jul 2026 00:00:00 GMT")
            ]
        );
    }

    #[test]
    fn the_condition_changes_a_week_before_the_end_and_at_it() {
        let legacy = legacy(Some("2026-07-01T00:00:00Z"));
        let phase = |now: &str| {
            let (ok, reason, _) = legacy.condition(at(now));
            (ok, reason, legacy.next_change(at(now)))
        };
        assert_eq!(
            phase("2026-06-01T00:00:00Z"),
            (
                true,
                reason::SUNSET_SCHEDULED,
                Some(at("2026-06-24T00:00:00Z"))
            )
        );
        assert_eq!(
            phase("2026-06-24T00:00:00Z"),
            (true, reason::SUNSET_SOON, Some(at("2026-07-01T00:00:00Z")))
        );
        assert_eq!(
            phase("2026-07-01T00:00:00Z"),
            (false, reason::SUNSET_PASSED, None)
        );
        assert_eq!(
            super::tests::legacy(None)
                .condition(at("2026-06-01T00:00:00Z"))
                .1,
            reason::NO_SUNSET
        );
    }

    #[test]
    fn admission_warns_within_a_week_of_the_end_and_after_it() {
        let spec = |until: &str| LegacySession {
            cookie: "session_id".into(),
            until: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                until,
            ))),
        };
        let now = at("2026-06-01T00:00:00Z");
        assert_eq!(warning(&spec("2026-06-09T00:00:00Z"), now), None);
        assert!(
            warning(&spec("2026-06-07T00:00:00Z"), now)
                .unwrap()
                .contains("within 7 days")
        );
        assert!(
            warning(&spec("2026-05-01T00:00:00Z"), now)
                .unwrap()
                .contains("has passed")
        );
    }
}
