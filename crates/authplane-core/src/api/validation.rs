//! One validation entry point per kind, used by every driver: the CRD's own CEL rules
//! evaluated in process (exactly what the apiserver applies) plus the checks CEL cannot
//! express.

use std::fmt;

use jiff::Timestamp;

use super::structural::HasSchema;
use super::{
    AuthPolicy, REVOKE_KIDS_ANNOTATION, ROTATE_AT_ANNOTATION, Revocation, SigningKey, TokenClient,
};
use crate::keys::lifecycle::{KeyPolicy, Requests};

/// A refused field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `spec.rotation.retainFor`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Reads a resource from JSON, naming the field that does not fit (`spec.algorithm:
/// unknown variant ...`). Dev mode and the admission webhook read objects through it, so
/// both refuse a bad field with the same words.
pub fn from_value<K: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<K, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, e.inner().to_string())
    })
}

/// Reads a resource as the apiserver does: first every structural problem (types, enum
/// values, unknown fields, bounds), each naming its field, then the typed object. Dev mode
/// and the admission webhook read objects through it.
///
/// A refused object gets every problem in one round, as far as it can be read: its CEL
/// rules run on the JSON, and the checks beyond the schema ([`Validate`]) on the part of
/// it that can be typed.
pub fn read_object<K>(value: &serde_json::Value) -> Result<K, Vec<FieldError>>
where
    K: serde::de::DeserializeOwned + HasSchema + Validate,
{
    let value = &as_kubectl_sends(value);
    let mut problems = super::structural::check(K::schema(), value);
    if problems.is_empty() {
        return from_value(value).map_err(|e| vec![e]);
    }
    // The object cannot be typed, so its CEL rules run on the JSON (with the schema's
    // defaults, as the apiserver does). Rules that fail to evaluate (on a field of the
    // wrong type, say) add nothing, nor rules on a field already refused.
    let structural = problems.clone();
    if let Err(failures) = validate_rules::<K>(value) {
        for failure in failures.into_vec() {
            let problem =
                FieldError::new(failure.field_path.trim_start_matches('.'), failure.message);
            let refused = structural
                .iter()
                .any(|known| within(&problem.field, &known.field));
            if failure.kind == kube::core::cel::ErrorKind::ValidationFailure && !refused {
                problems.push(problem);
            }
        }
    }
    // The checks beyond the schema, on what can be read. A field left out of it may make
    // a rule of its parents fail: those are left to the next round.
    if let Some(readable) = readable::<K>(value) {
        let generated_name = has_generate_name(value);
        for problem in readable.validate() {
            let refused = structural.iter().any(|known| {
                within(&problem.field, &known.field) || within(&known.field, &problem.field)
            });
            // A CREATE from generateName is reviewed before the name exists.
            let unnamed = generated_name && problem.field == "metadata.name";
            if !refused && !unnamed && !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    Err(problems)
}

/// Whether field `inner` is `outer` or within it (`spec.rollout.steps[1]` is within
/// `spec.rollout`; everything is within the object itself, ``).
fn within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || (inner.starts_with(outer) && matches!(inner.as_bytes()[outer.len()], b'.' | b'['))
}

fn has_generate_name(value: &serde_json::Value) -> bool {
    value
        .pointer("/metadata/generateName")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|g| !g.is_empty())
        && value
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .is_none_or(str::is_empty)
}

/// The object as far as it can be typed: the part that fits the schema, less each field
/// that still does not deserialize (a duration that does not parse, say), one at a time.
fn readable<K>(value: &serde_json::Value) -> Option<K>
where
    K: serde::de::DeserializeOwned + HasSchema,
{
    /// More unreadable fields than this and the object is not worth reading further.
    const ATTEMPTS: usize = 32;
    let mut value = super::structural::readable_part(K::schema(), value);
    for _ in 0..ATTEMPTS {
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) => return Some(object),
            Err(e) => {
                if !remove(&mut value, e.path()) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the value at `path` (an object's field, or a whole list holding the item, so
/// that the other items keep their indexes); false if there is nothing to remove.
fn remove(value: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    // The last segment that names an object's field: the list itself goes with its item.
    let Some(last) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut current = value;
    for segment in &segments[..last] {
        current = match (segment, current) {
            (Segment::Map { key }, serde_json::Value::Object(fields)) => {
                match fields.get_mut(key) {
                    Some(next) => next,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_json::Value::Array(items)) => {
                match items.get_mut(*index) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (segments[last], current) {
        (Segment::Map { key }, serde_json::Value::Object(fields)) => fields.remove(key).is_some(),
        _ => false,
    }
}

/// The object as the apiserver gets it from kubectl: whole floats are integers (`100.0`
/// is sent as `100`), and null fields are absent (the apiserver prunes them and applies
/// the defaults), so that `audiences:` with no value reads as the default.
fn as_kubectl_sends(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9e15 {
                Value::from(f as i64)
            } else {
                value.clone()
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(as_kubectl_sends).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), as_kubectl_sends(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// Percentages are kept in thousandths (buckets of 0.001%). Tolerant of binary floating
/// point: 1.005 is 1004.9999999999999 thousandths.
pub fn has_at_most_three_decimals(percentage: f64) -> bool {
    percentage.is_finite() && ((percentage * 1000.0).round() - percentage * 1000.0).abs() <= 1e-6
}

pub trait Validate {
    /// Every problem found, each naming its field; empty when the object is acceptable.
    fn validate(&self) -> Vec<FieldError>;
}

thread_local! {
    /// A CEL environment with the Kubernetes functions registered: made once per thread
    /// (it is `Send` but not `Sync`), not once per object.
    static CEL: kube::core::cel::Validator = kube::core::cel::Validator::new();
}

/// Evaluates the kind's compiled CEL rules on an object as JSON: the fast ones when
/// every duration is well-formed, which give the same verdict (see `cel_rules::fast`).
fn validate_rules<K: HasSchema>(
    value: &serde_json::Value,
) -> Result<(), kube::core::cel::ValidationErrors> {
    let rules = if super::cel_rules::fast::durations_well_formed(K::schema(), value) {
        K::fast_rules()
    } else {
        K::rules()
    };
    CEL.with(|cel| cel.validate_compiled(rules, value, None))
}

/// Every CEL rule the object breaks, as the apiserver would apply them, and every
/// control character in its spec (read from the same JSON).
fn cel_errors<K: HasSchema + serde::Serialize>(object: &K) -> Vec<FieldError> {
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => return vec![FieldError::new("", format!("cannot be read as JSON: {e}"))],
    };
    let mut errors: Vec<FieldError> = match validate_rules::<K>(&value) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| FieldError::new(e.field_path.trim_start_matches('.'), e.message))
            .collect(),
    };
    if let Some(spec) = value.get("spec") {
        extend_unique(&mut errors, control_character_errors(spec));
    }
    errors
}

/// Response headers a forwarded claim may not set: they would change how the gateway
/// reads the response or reach the client (cookies, redirects, challenges).
const RESERVED_RESPONSE_HEADERS: [&str; 15] = [
    "connection",
    "content-length",
    "content-type",
    // A legacy session's end (`legacySession.until`) is authplane's to say.
    "deprecation",
    "host",
    "keep-alive",
    "location",
    "proxy-authenticate",
    "set-cookie",
    "sunset",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];

/// Names as the apiserver accepts them. They also become file names in dev mode, so this
/// check is what keeps `../` out of the state folder.
fn metadata_errors(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "is required")),
        Some(name) if !is_dns_subdomain(name) => errors.push(FieldError::new(
            "metadata.name",
            format!("{name:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters"),
        )),
        Some(_) => {}
    }
    if let Some(namespace) = meta.namespace.as_deref()
        && !is_dns_label(namespace)
    {
        errors.push(FieldError::new(
            "metadata.namespace",
            format!("{namespace:?} must be a DNS label: lowercase letters, digits and '-', at most 63 characters"),
        ));
    }
    errors
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Every string of a spec (and every map key) with a control character in it: logs
/// carry these values, and a newline would forge a line. The CRDs' CEL rules check the
/// URLs and free text that are logged; this checks everything, for dev mode and the
/// admission webhook.
fn control_character_errors(spec: &serde_json::Value) -> Vec<FieldError> {
    fn walk(value: &serde_json::Value, path: &str, errors: &mut Vec<FieldError>) {
        let has_control = |text: &str| text.chars().any(char::is_control);
        match value {
            serde_json::Value::String(text) if has_control(text) => errors.push(FieldError::new(
                path,
                super::cel_rules::NO_CONTROL_CHARACTERS_MESSAGE,
            )),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), errors);
                }
            }
            serde_json::Value::Object(fields) => {
                for (name, field) in fields {
                    if has_control(name) {
                        errors.push(FieldError::new(
                            path,
                            format!("a key {}", super::cel_rules::NO_CONTROL_CHARACTERS_MESSAGE),
                        ));
                        continue;
                    }
                    walk(field, &format!("{path}.{name}"), errors);
                }
            }
            _ => {}
        }
    }
    let mut errors = Vec::new();
    walk(spec, "spec", &mut errors);
    errors
}

/// Adds the errors not already found (a CEL rule and the walk both refuse a control
/// character in a logged field).
fn extend_unique(errors: &mut Vec<FieldError>, more: Vec<FieldError>) {
    for error in more {
        if !errors.contains(&error) {
            errors.push(error);
        }
    }
}

/// The signer Secret's name is the key Secret's with this suffix.
pub const SIGNER_SECRET_SUFFIX: &str = "-active";

/// Kubernetes' bound on a label value.
const MAX_LABEL_VALUE: usize = 63;

impl Validate for SigningKey {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = metadata_errors(&self.metadata);
        // The name is the value of the `authplane.io/signing-key` label on its Secrets and
        // JWKS ConfigMap: a longer one is a valid object whose Secret the apiserver
        // refuses for ever.
        if let Some(name) = self.metadata.name.as_deref()
            && errors.is_empty()
            && name.len() > MAX_LABEL_VALUE
        {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "is {} characters: a SigningKey's name is at most {MAX_LABEL_VALUE}, as it labels the Secrets and the ConfigMap authplane writes for it (a Kubernetes label value)",
                    name.len()
                ),
            ));
        }
        errors.extend(cel_errors(self));
        if let Some(issuer) = &self.spec.issuer
            && let Err(e) = issuer_path(issuer)
        {
            errors.push(FieldError::new("spec.issuer", e.to_string()));
        }
        let signer = self.signer_secret_name();
        if signer.len() > 253 {
            let field = match self.spec.secret_name {
                Some(_) => "spec.secretName",
                None => "metadata.name",
            };
            errors.push(FieldError::new(
                field,
                format!(
                    "is too long: the signer Secret {signer:?} would exceed the 253 characters of a Secret name (keep the key Secret's name within {})",
                    253 - SIGNER_SECRET_SUFFIX.len()
                ),
            ));
        }
        if let Err(e) = self.requests() {
            errors.push(e);
        }
        errors
    }
}

impl Validate for Revocation {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = metadata_errors(&self.metadata);
        errors.extend(cel_errors(self));
        if let Some(issuer) = &self.spec.issuer
            && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
        {
            errors.push(FieldError::new(
                "spec.issuer",
                format!("{issuer:?} must be an http(s) URL, exactly as tokens carry it in iss"),
            ));
        }
        if let (Some(before), Some(expires)) = (&self.spec.issued_before, &self.spec.expires_at)
            && expires.0 < before.0
        {
            errors.push(FieldError::new(
                "spec.expiresAt",
                "must not be before issuedBefore: the revocation would never count",
            ));
        }
        errors
    }
}

impl Validate for TokenClient {
    fn validate(&self) -> Vec<FieldError> {
        // Every rule of this kind is a CEL rule of its CRD, so that the apiserver refuses
        // what dev mode refuses.
        let mut errors = metadata_errors(&self.metadata);
        errors.extend(cel_errors(self));
        errors
    }
}

impl Validate for AuthPolicy {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = metadata_errors(&self.metadata);
        errors.extend(cel_errors(self));
        let spec = &self.spec;
        let percentage = spec.rollout.percentage;
        if !has_at_most_three_decimals(percentage) {
            errors.push(FieldError::new(
                "spec.rollout.percentage",
                format!("{percentage} has more than three decimals"),
            ));
        }
        let header_names =
            spec.token_sources
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    (
                        format!("spec.tokenSources.headers[{i}].name"),
                        h.name.as_str(),
                    )
                })
                .chain(spec.forward_claims.iter().map(|(claim, header)| {
                    (format!("spec.forwardClaims[{claim}]"), header.as_str())
                }))
                .chain(
                    spec.rollout
                        .bucket_by
                        .header
                        .as_deref()
                        .map(|h| ("spec.rollout.bucketBy.header".to_owned(), h)),
                );
        for (field, name) in header_names {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(FieldError::new(
                    field,
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        for (claim, header) in &spec.forward_claims {
            let lower = header.to_ascii_lowercase();
            if RESERVED_RESPONSE_HEADERS.contains(&lower.as_str())
                || lower.starts_with("x-authplane-")
            {
                errors.push(FieldError::new(
                    format!("spec.forwardClaims[{claim}]"),
                    format!("{header:?} is reserved: a claim must not set framing, cookies, redirects or authplane's own headers"),
                ));
            }
        }
        let cookie_names = spec
            .token_sources
            .cookies
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.tokenSources.cookies[{i}]"), c.as_str()))
            .chain(
                spec.legacy_session
                    .as_ref()
                    .map(|l| ("spec.legacySession.cookie".to_owned(), l.cookie.as_str())),
            )
            .chain(
                spec.rollout
                    .bucket_by
                    .cookie
                    .as_deref()
                    .map(|c| ("spec.rollout.bucketBy.cookie".to_owned(), c)),
            );
        for (field, name) in cookie_names {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            {
                errors.push(FieldError::new(
                    field,
                    format!("{name:?} is not a valid cookie name"),
                ));
            }
        }
        for (i, issuer) in spec.issuers.iter().enumerate() {
            if let Some(reference) = &issuer.signing_key_ref
                && (!is_dns_subdomain(&reference.name)
                    || reference
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| !is_dns_label(ns)))
            {
                errors.push(FieldError::new(
                    format!("spec.issuers[{i}].signingKeyRef"),
                    "name must be a DNS subdomain and namespace a DNS label",
                ));
            }
        }
        let steps = &spec.rollout.steps;
        if let Some(i) = (1..steps.len()).find(|&i| steps[i] <= steps[i - 1]) {
            errors.push(FieldError::new(
                format!("spec.rollout.steps[{i}]"),
                format!(
                    "{} does not exceed the step before it ({}): steps must be strictly increasing, such as [10, 50, 100]",
                    steps[i],
                    steps[i - 1]
                ),
            ));
        }
        for (i, step) in steps.iter().enumerate() {
            if !(0.0..=100.0).contains(step) || !has_at_most_three_decimals(*step) {
                errors.push(FieldError::new(
                    format!("spec.rollout.steps[{i}]"),
                    format!("{step} must be between 0 and 100, with at most three decimals"),
                ));
            }
        }
        errors
    }
}

impl SigningKey {
    /// The planner's view of the spec. Call on a validated object.
    pub fn key_policy(&self) -> KeyPolicy {
        let spec = &self.spec;
        KeyPolicy {
            algorithm: spec.algorithm,
            rsa_bits: spec.rsa_bits.unwrap_or(2048),
            every: spec.rotation.every.value(),
            pre_publish: spec.rotation.pre_publish.value(),
            retain_for: spec.rotation.retain_for.value(),
        }
    }

    /// Manual rotation and revocation requests, from the `authplane.io/rotate-at` and
    /// `authplane.io/revoke-kids` annotations.
    pub fn requests(&self) -> Result<Requests, FieldError> {
        let annotation = |name: &str| {
            self.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(name))
                .map(String::as_str)
        };
        let field = |name: &str| format!("metadata.annotations[{name}]");
        let rotate_at = match annotation(ROTATE_AT_ANNOTATION) {
            None => None,
            Some(value) => Some(value.parse::<Timestamp>().map_err(|_| {
                FieldError::new(
                    field(ROTATE_AT_ANNOTATION),
                    format!("{value:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
                )
            })?),
        };
        let mut revoked = Vec::new();
        for kid in annotation(REVOKE_KIDS_ANNOTATION)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
        {
            if kid.is_empty() {
                continue;
            }
            if kid.len() > 64
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(FieldError::new(
                    field(REVOKE_KIDS_ANNOTATION),
                    format!("{kid:?} is not a kid (comma-separated base64url thumbprints)"),
                ));
            }
            revoked.push(kid.to_owned());
        }
        Ok(Requests { rotate_at, revoked })
    }

    /// The issuer URL: `spec.issuer`, or `<external URL>/<namespace>/<name>`.
    pub fn issuer(&self, external_url: &str) -> String {
        match &self.spec.issuer {
            Some(issuer) => issuer.clone(),
            None => format!(
                "{}/{}/{}",
                external_url.trim_end_matches('/'),
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The Secret (or state entry) holding the keys.
    pub fn secret_name(&self) -> String {
        self.spec.secret_name.clone().unwrap_or_else(|| {
            format!("{}-keys", self.metadata.name.as_deref().unwrap_or_default())
        })
    }

    /// The Secret that signing workloads mount: the Active key alone.
    pub fn signer_secret_name(&self) -> String {
        format!("{}{SIGNER_SECRET_SUFFIX}", self.secret_name())
    }
}

/// The URL path of an issuer, without a trailing slash: where its discovery document and
/// JWKS are served (`<path>/.well-known/...`).
pub fn issuer_path(issuer: &str) -> Result<String, IssuerError> {
    let uri: http::Uri = issuer.parse().map_err(|e| IssuerError::NotUrl {
        issuer: issuer.to_owned(),
        source: e,
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(IssuerError::NotAbsolute(issuer.to_owned()));
    }
    if uri.query().is_some() {
        return Err(IssuerError::Query(issuer.to_owned()));
    }
    Ok(uri.path().trim_end_matches('/').to_owned())
}

/// Why an issuer cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{issuer:?} is not a URL: {source}")]
    NotUrl {
        issuer: String,
        source: http::uri::InvalidUri,
    },
    #[error("{0:?} must be an absolute http(s) URL with a host")]
    NotAbsolute(String),
    #[error("{0:?} must not have a query")]
    Query(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: serde_json::Value) -> SigningKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1",
            "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn fields(spec: serde_json::Value) -> Vec<String> {
        key(spec)
            .validate()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_signing_key_name_fits_in_a_label_value() {
        let named = |name: &str| {
            let mut key = key(serde_json::json!({}));
            key.metadata.name = Some(name.to_owned());
            key.validate()
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(named(&"a".repeat(63)), Vec::<String>::new());
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        let errors = named(&long);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("metadata.name: is 81 characters"),
            "{errors:?}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(fields(serde_json::json!({})), Vec::<String>::new());
        let policy = key(serde_json::json!({})).key_policy();
        assert_eq!(policy.rsa_bits, 2048);
        assert_eq!(policy.every, jiff::SignedDuration::from_hours(720));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (serde_json::json!({"rsaBits": 1024}), "spec.rsaBits"),
            (
                serde_json::json!({"algorithm": "EdDSA", "rsaBits": 2048}),
                "spec.rsaBits",
            ),
            (serde_json::json!({"issuer": "ftp://x"}), "spec.issuer"),
            (
                serde_json::json!({"issuer": "https://x/?a=b"}),
                "spec.issuer",
            ),
            (
                serde_json::json!({"secretName": "Bad_Name"}),
                "spec.secretName",
            ),
            (
                serde_json::json!({"rotation": {"every": "0s"}}),
                "spec.rotation.every",
            ),
            (
                serde_json::json!({"rotation": {"every": "-5m"}}),
                "spec.rotation.every",
            ),
            (
                serde_json::json!({"rotation": {"every": "1h", "prePublish": "2h", "retainFor": "3h"}}),
                "spec.rotation.prePublish",
            ),
            (
                serde_json::json!({"rotation": {"every": "10h", "prePublish": "2h", "retainFor": "1h"}}),
                "spec.rotation.retainFor",
            ),
        ];
        for (spec, field) in cases {
            let errors = fields(spec.clone());
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
                "{spec}: expected an error on {field}, got {errors:?}"
            );
        }
    }

    #[test]
    fn revocation_annotations_are_parsed_and_checked() {
        let mut key = key(serde_json::json!({}));
        key.metadata.annotations =
            Some([(REVOKE_KIDS_ANNOTATION.to_owned(), " a-b_c , d ,".to_owned())].into());
        assert_eq!(key.requests().unwrap().revoked, ["a-b_c", "d"]);
        key.metadata.annotations =
            Some([(REVOKE_KIDS_ANNOTATION.to_owned(), "a/b".to_owned())].into());
        assert!(
            key.validate()
                .iter()
                .any(|e| e.field.contains(REVOKE_KIDS_ANNOTATION))
        );
    }

    #[test]
    fn a_bad_rotate_at_annotation_is_refused() {
        let mut key = key(serde_json::json!({}));
        key.metadata.annotations =
            Some([(ROTATE_AT_ANNOTATION.to_owned(), "tomorrow".to_owned())].into());
        let errors = key.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].field.contains(ROTATE_AT_ANNOTATION));
    }

    #[test]
    fn names_that_could_escape_a_folder_are_refused() {
        for (name, namespace) in [
            ("../x", "auth"),
            ("web", "../etc"),
            ("a/b", "auth"),
            ("Web", "auth"),
            ("web", ""),
        ] {
            let mut key = key(serde_json::json!({}));
            key.metadata.name = Some(name.into());
            key.metadata.namespace = Some(namespace.into());
            assert!(
                !key.validate().is_empty(),
                "{namespace}/{name} was accepted"
            );
        }
        let mut ok = key(serde_json::json!({}));
        ok.metadata.name = Some("web.v2-keys".into());
        assert!(ok.validate().is_empty());
    }

    #[test]
    fn forwarded_claims_cannot_set_reserved_headers() {
        let policy = |header: &str| -> AuthPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "p", "namespace": "shop"},
                "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}], "forwardClaims": {"sub": header}},
            }))
            .unwrap()
        };
        for header in [
            "Set-Cookie",
            "content-length",
            "Location",
            "X-Authplane-Reason",
            "Deprecation",
            "sunset",
        ] {
            let errors = policy(header).validate();
            assert!(
                errors.iter().any(|e| e.field == "spec.forwardClaims[sub]"),
                "{header}: {errors:?}"
            );
        }
        assert!(policy("X-Auth-Subject").validate().is_empty());
    }

    /// An AuthPolicy with nine mistakes, four the schema catches and five only the checks
    /// beyond it: all of them in one round (they came in two).
    #[test]
    fn every_problem_of_an_object_comes_in_one_round() {
        let found = read_object::<AuthPolicy>(&serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "Payments_API", "namespace": "shop"},
            "spec": {
                "issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                "audiences": "payments",
                "leeway": 30,
                "tokenSourcez": {"cookies": ["access_token"]},
                "tokenSources": {"headers": [{"name": "Bad Header"}]},
                "forwardClaims": {"sub": "Set-Cookie"},
                "legacySession": {"cookie": "session id"},
                "rollout": {"mode": "Enforced", "steps": [50, 10], "stepEvery": "1h"},
            },
        }))
        .unwrap_err();
        let mut fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.audiences",
                "spec.forwardClaims[sub]",
                "spec.leeway",
                "spec.legacySession.cookie",
                "spec.rollout.mode",
                "spec.rollout.steps[1]",
                "spec.tokenSources.headers[0].name",
                "spec.tokenSourcez",
            ],
            "{found:#?}"
        );
        let typo = found
            .iter()
            .find(|p| p.field == "spec.tokenSourcez")
            .unwrap();
        assert_eq!(typo.message, "unknown field; did you mean `tokenSources`?");
    }

    /// What cannot be read is not guessed at: a list with an unreadable item is left out
    /// whole, so no later item is reported under another index.
    #[test]
    fn checks_on_a_partly_readable_object_keep_the_manifests_indexes() {
        let found = read_object::<AuthPolicy>(&serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "issuers": [{"signingKeyRef": {"name": "web"}}],
                "tokenSources": {"headers": [{"name": 5}, {"name": "Bad Header"}]},
                "rollout": {"stepEvery": "soon", "steps": [10, 5]},
            },
        }))
        .unwrap_err();
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.tokenSources.headers[0].name"),
            "{found:?}"
        );
        assert!(fields.contains(&"spec.rollout.steps[1]"), "{found:?}");
        assert!(
            !fields.contains(&"spec.tokenSources.headers[0]"),
            "no guess about the item left out: {found:?}"
        );
    }

    #[test]
    fn control_characters_are_refused_in_every_string_of_every_kind() {
        // The CEL rule alone (in the CRD) catches the logged fields ...
        let forged = "https://auth.example/x\nINFO forged line";
        let errors = fields(serde_json::json!({"issuer": forged}));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.issuer: must not contain control characters")),
            "{errors:?}"
        );
        // ... and the walk every other string, in every kind.
        let policy: AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web"}},
                                 {"issuer": "https://idp.example/\u{85}x"}],
                     "audiences": ["ok", "bad\u{7}"]},
        }))
        .unwrap();
        let refused: Vec<String> = policy.validate().into_iter().map(|e| e.field).collect();
        assert!(
            refused.contains(&"spec.audiences[1]".to_owned()),
            "{refused:?}"
        );
        assert!(
            refused.contains(&"spec.issuers[1].issuer".to_owned()),
            "{refused:?}"
        );
        let revocation: Revocation = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"issuer": "https://idp.example", "subject": "alice\r\nbob"},
        }))
        .unwrap();
        let refused: Vec<String> = revocation.validate().into_iter().map(|e| e.field).collect();
        assert!(refused.contains(&"spec.subject".to_owned()), "{refused:?}");
        // Non-ASCII that is not a control character is fine.
        assert!(
            fields(serde_json::json!({"issuer": "https://auth.example/caf\u{e9}"}))
                .iter()
                .all(|e| !e.contains("control"))
        );
    }

    #[test]
    fn a_key_secret_name_leaves_room_for_the_signer_secret() {
        let long = "a".repeat(247);
        assert_eq!(
            fields(serde_json::json!({"secretName": long}))
                .iter()
                .map(|e| e.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            ["spec.secretName"]
        );
        assert!(fields(serde_json::json!({"secretName": "a".repeat(246)})).is_empty());
    }

    #[test]
    fn issuer_paths() {
        assert_eq!(issuer_path("https://auth.example.com").unwrap(), "");
        assert_eq!(issuer_path("https://auth.example.com/").unwrap(), "");
        assert_eq!(
            issuer_path("http://127.0.0.1:8080/auth/web").unwrap(),
            "/auth/web"
        );
        assert!(issuer_path("not a url").is_err());
        assert!(issuer_path("/relative").is_err());
    }
}
