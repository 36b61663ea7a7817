//! Claim lookup, required-claim rules and claim-to-header rendering.

use http::HeaderValue;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use super::verify::Claims;
use crate::api::ClaimRequirement;

/// A claim by exact name, or else by dotted path into nested objects
/// (`realm_access.roles`).
pub fn lookup<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

pub fn satisfies(requirement: &ClaimRequirement, claims: &Claims) -> bool {
    let Some(value) = lookup(claims, &requirement.claim) else {
        return false;
    };
    if let Some(expected) = &requirement.equals {
        return value.as_str() == Some(expected.as_str());
    }
    if let Some(wanted) = &requirement.contains {
        return match value {
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(wanted.as_str())),
            // Space-separated lists, such as OAuth's `scope`.
            Value::String(s) => s.split(' ').any(|item| item == wanted),
            _ => false,
        };
    }
    if let Some(allowed) = &requirement.one_of {
        let allowed = |s: &str| allowed.iter().any(|a| a == s);
        return match value {
            Value::String(s) => allowed(s),
            Value::Array(items) => items.iter().filter_map(Value::as_str).any(allowed),
            _ => false,
        };
    }
    false
}

/// A claim that cannot be forwarded: it holds an ASCII control character (CR, LF, NUL,
/// TAB, DEL...), which no header value may carry unencoded, and which no identity
/// should hold. Refused (`invalid_claims`), never dropped: a dropped header is one a
/// client may have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a forwarded claim holds a control character")]
pub struct ControlCharacter;

/// Encoded in forwarded values: bytes outside printable ASCII (non-ASCII text, as its
/// UTF-8 bytes) and `%` itself, so that decoding is unambiguous.
const ENCODED: &AsciiSet = &CONTROLS.add(b'%');
/// In an element of an array, `,` too: the elements are joined with commas.
const ENCODED_IN_LIST: &AsciiSet = &ENCODED.add(b',');

/// A claim as a header value. Strings are percent-encoded (RFC 3986 style, UTF-8): every
/// byte outside printable ASCII, `%`, and a space at either end (which HTTP would trim)
/// becomes `%XX`; numbers and booleans are their JSON text; an array of those is its
/// elements joined with `,` (a `,` inside an element is encoded). Anything else (an
/// object, `null`, nested arrays) is forwarded as the empty value. A string with an
/// ASCII control character is refused.
pub fn header_value(value: &Value) -> Result<HeaderValue, ControlCharacter> {
    fn scalar(value: &Value, set: &'static AsciiSet) -> Result<Option<String>, ControlCharacter> {
        Ok(match value {
            Value::String(s) => Some(encode(s, set)?),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }
    let text = match value {
        Value::Array(items) => {
            let mut elements = Vec::with_capacity(items.len());
            for item in items {
                match scalar(item, ENCODED_IN_LIST)? {
                    Some(element) => elements.push(element),
                    None => return Ok(HeaderValue::from_static("")),
                }
            }
            elements.join(",")
        }
        other => scalar(other, ENCODED)?.unwrap_or_default(),
    };
    // Only printable ASCII is left: this cannot fail.
    HeaderValue::from_str(&text).map_err(|_| ControlCharacter)
}

fn encode(text: &str, set: &'static AsciiSet) -> Result<String, ControlCharacter> {
    if text.bytes().any(|b| b.is_ascii_control()) {
        return Err(ControlCharacter);
    }
    let inner = text.trim_matches(' ');
    let (leading, trailing) = if inner.is_empty() {
        (text.len(), 0)
    } else {
        let start = text.len() - text.trim_start_matches(' ').len();
        (start, text.len() - start - inner.len())
    };
    let mut out = "%20".repeat(leading);
    out.extend(utf8_percent_encode(inner, set));
    out.push_str(&"%20".repeat(trailing));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Claims {
        value.as_object().unwrap().clone()
    }

    fn requirement(claim: &str, kind: &str, value: Value) -> ClaimRequirement {
        serde_json::from_value(json!({"claim": claim, kind: value})).unwrap()
    }

    #[test]
    fn requirements_on_strings_arrays_and_paths() {
        let c = claims(json!({
            "tier": "gold", "roles": ["payments", "admin"], "scope": "read write",
            "realm_access": {"roles": ["ops"]}, "https://example.com/team": "core", "n": 3
        }));
        let yes = [
            requirement("tier", "equals", json!("gold")),
            requirement("roles", "contains", json!("payments")),
            requirement("scope", "contains", json!("write")),
            requirement("realm_access.roles", "contains", json!("ops")),
            requirement("https://example.com/team", "equals", json!("core")),
            requirement("tier", "oneOf", json!(["silver", "gold"])),
            requirement("roles", "oneOf", json!(["x", "admin"])),
        ];
        for r in &yes {
            assert!(satisfies(r, &c), "{r:?}");
        }
        let no = [
            requirement("tier", "equals", json!("silver")),
            requirement("roles", "equals", json!("payments")),
            requirement("scope", "contains", json!("rea")),
            requirement("missing", "contains", json!("x")),
            requirement("n", "equals", json!("3")),
            requirement("roles", "oneOf", json!(["x"])),
        ];
        for r in &no {
            assert!(!satisfies(r, &c), "{r:?}");
        }
    }

    #[test]
    fn header_values() {
        let value = |v: Value| header_value(&v).unwrap();
        assert_eq!(value(json!("a@b")), "a@b");
        assert_eq!(value(json!("Ada Lovelace")), "Ada Lovelace");
        assert_eq!(value(json!(["a", "b"])), "a,b");
        assert_eq!(value(json!(42)), "42");
        assert_eq!(value(json!(true)), "true");
        for shapeless in [
            json!({"a": 1}),
            json!(null),
            json!([["a"]]),
            json!(["a", {}]),
        ] {
            assert_eq!(value(shapeless), "");
        }
    }

    #[test]
    fn forwarded_values_are_encoded_unambiguously() {
        let value = |v: Value| header_value(&v).unwrap();
        assert_eq!(value(json!("zoë")), "zo%C3%AB");
        assert_eq!(value(json!("100%")), "100%25");
        // Different claims never give the same header.
        assert_eq!(value(json!(" alice ")), "%20alice%20");
        assert_eq!(value(json!("   ")), "%20%20%20");
        assert_eq!(value(json!(["a,b", "c"])), "a%2Cb,c");
        assert_eq!(value(json!("a,b")), "a,b");
        assert_eq!(value(json!("\u{2028}")), "%E2%80%A8");
    }

    #[test]
    fn control_characters_are_refused_not_dropped() {
        for bad in [
            json!("carol\r\nX-Injected: yes"),
            json!("nul\u{0}"),
            json!("tab\t"),
            json!("del\u{7f}"),
            json!(["ok", "line\nbreak"]),
        ] {
            assert_eq!(header_value(&bad), Err(ControlCharacter), "{bad}");
        }
    }
}
