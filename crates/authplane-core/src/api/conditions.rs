//! Condition types and their reasons: what scripts and `kubectl wait --for=condition=...`
//! match on, so they are constants, named once. The `conditions` field of each status
//! lists them in its description (what `kubectl explain` shows); a test keeps the two in
//! step.

/// SigningKey and AuthPolicy: the resource does its job.
pub const READY: &str = "Ready";
/// SigningKey: the Secret was deleted by hand and new keys replaced the old ones (shown
/// for a day).
pub const SECRET_RECREATED: &str = "SecretRecreated";
/// AuthPolicy: the spec is valid.
pub const ACCEPTED: &str = "Accepted";
/// AuthPolicy with external issuers: their key sets refresh on time.
pub const KEYS_FRESH: &str = "KeysFresh";
/// AuthPolicy with `legacySession`: its cookie still passes.
pub const LEGACY_SESSIONS_ACCEPTED: &str = "LegacySessionsAccepted";

/// Reasons, each used by the condition types named in its comment.
pub mod reason {
    /// SigningKey `Ready=True`: an Active key signs and is published.
    pub const KEYS_READY: &str = "KeysReady";
    /// SigningKey `Ready=False`: the spec is invalid; the message names the fields.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// SigningKey `Ready=False`: the Secret exists and authplane does not manage it.
    pub const SECRET_NOT_MANAGED: &str = "SecretNotManaged";
    /// SigningKey `Ready=False`: the Secret cannot be read; nothing is overwritten.
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
    /// SigningKey `Ready=False`: the Secret (or the signer Secret) belongs to another
    /// SigningKey, or to no SigningKey; it is left alone.
    pub const SECRET_IN_USE: &str = "SecretInUse";
    /// SigningKey `Ready=False`: another SigningKey claimed its issuer path first; it
    /// serves nothing there (its keys still sign).
    pub const ISSUER_PATH_CONFLICT: &str = "IssuerPathConflict";
    /// SigningKey `Ready=False`: its issuer path is not one its namespace may claim on
    /// this server; nothing is served for it (its keys still sign).
    pub const ISSUER_NOT_ALLOWED: &str = "IssuerNotAllowed";
    /// SigningKey `SecretRecreated=True` (and its Warning event).
    pub const SECRET_DELETED: &str = "SecretDeleted";

    /// AuthPolicy `Accepted=True`.
    pub const VALID: &str = "Valid";
    /// AuthPolicy `Accepted=False`: the message names the fields.
    pub const INVALID: &str = "Invalid";
    /// AuthPolicy `Ready=True`: every issuer has keys.
    pub const ISSUERS_RESOLVED: &str = "IssuersResolved";
    /// AuthPolicy `Ready=False`: a referenced SigningKey does not exist.
    pub const SIGNING_KEY_NOT_FOUND: &str = "SigningKeyNotFound";
    /// AuthPolicy `Ready=False`: an external issuer has no usable keys.
    pub const ISSUER_UNAVAILABLE: &str = "IssuerUnavailable";
    /// AuthPolicy `KeysFresh=True`.
    pub const REFRESHED: &str = "Refreshed";
    /// AuthPolicy `KeysFresh=False`: an external key set has not been fetched yet.
    pub const FIRST_FETCH_PENDING: &str = "FirstFetchPending";
    /// AuthPolicy `KeysFresh=False`: refreshing a key set fails; the last good keys serve
    /// until they expire.
    pub const REFRESH_FAILING: &str = "RefreshFailing";
    /// AuthPolicy `LegacySessionsAccepted=True`: no `legacySession.until` is set.
    pub const NO_SUNSET: &str = "NoSunset";
    /// AuthPolicy `LegacySessionsAccepted=True`: `until` is more than 7 days away.
    pub const SUNSET_SCHEDULED: &str = "SunsetScheduled";
    /// AuthPolicy `LegacySessionsAccepted=True`: `until` is within 7 days.
    pub const SUNSET_SOON: &str = "SunsetSoon";
    /// AuthPolicy `LegacySessionsAccepted=False`: `until` has passed; the cookie no longer
    /// passes.
    pub const SUNSET_PASSED: &str = "SunsetPassed";
}

use reason::*;

/// Each condition type of a SigningKey with its reasons.
pub const SIGNING_KEY: &[(&str, &[&str])] = &[
    (
        READY,
        &[
            KEYS_READY,
            INVALID_SPEC,
            SECRET_NOT_MANAGED,
            SECRET_IN_USE,
            SECRET_UNREADABLE,
            ISSUER_PATH_CONFLICT,
            ISSUER_NOT_ALLOWED,
        ],
    ),
    (SECRET_RECREATED, &[SECRET_DELETED]),
];

/// Each condition type of an AuthPolicy with its reasons.
pub const AUTH_POLICY: &[(&str, &[&str])] = &[
    (ACCEPTED, &[VALID, INVALID]),
    (
        READY,
        &[ISSUERS_RESOLVED, SIGNING_KEY_NOT_FOUND, ISSUER_UNAVAILABLE],
    ),
    (
        KEYS_FRESH,
        &[REFRESHED, FIRST_FETCH_PENDING, REFRESH_FAILING],
    ),
    (
        LEGACY_SESSIONS_ACCEPTED,
        &[NO_SUNSET, SUNSET_SCHEDULED, SUNSET_SOON, SUNSET_PASSED],
    ),
];

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::api::{AuthPolicy, SigningKey};

    /// The description of `status.conditions` in a CRD, as `kubectl explain` shows it.
    fn conditions_description(crd: &serde_json::Value) -> String {
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"]["description"]
            .as_str()
            .expect("status.conditions has a description")
            .to_owned()
    }

    fn assert_documented(crd: serde_json::Value, table: &[(&str, &[&str])]) {
        let description = conditions_description(&crd);
        for (kind, reasons) in table {
            assert!(
                description.contains(&format!("`{kind}`")),
                "{kind} missing from {description:?}"
            );
            for reason in *reasons {
                assert!(
                    description.contains(&format!("`{reason}`")),
                    "{kind} reason {reason} missing from {description:?}"
                );
            }
        }
    }

    #[test]
    fn every_signing_key_condition_and_reason_is_in_the_crd() {
        assert_documented(
            serde_json::to_value(SigningKey::crd()).unwrap(),
            SIGNING_KEY,
        );
    }

    #[test]
    fn every_auth_policy_condition_and_reason_is_in_the_crd() {
        assert_documented(
            serde_json::to_value(AuthPolicy::crd()).unwrap(),
            AUTH_POLICY,
        );
    }

    #[test]
    fn every_condition_and_reason_is_in_the_readme() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        for (kind, reasons) in SIGNING_KEY.iter().chain(AUTH_POLICY) {
            for name in std::iter::once(kind).chain(*reasons) {
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "{name} is not in the README"
                );
            }
        }
    }
}
