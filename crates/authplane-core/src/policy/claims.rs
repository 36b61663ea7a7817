//! Claim lookup, required-claim rules and claim-to-header rendering.

use http::HeaderValue;
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

/// A claim as a header value: strings as they are, numbers and booleans as JSON, arrays
/// of those joined with commas. `None` for objects, nulls, or values a header cannot
/// carry (control characters).
pub fn header_value(value: &Value) -> Option<HeaderValue> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        other => scalar(other)?,
    };
    HeaderValue::from_str(&text).ok()
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
        assert_eq!(header_value(&json!("a@b")).unwrap(), "a@b");
        assert_eq!(header_value(&json!(["a", "b"])).unwrap(), "a,b");
        assert_eq!(header_value(&json!(42)).unwrap(), "42");
        assert!(header_value(&json!({"a": 1})).is_none());
        assert!(header_value(&json!("line\nbreak")).is_none());
    }
}
