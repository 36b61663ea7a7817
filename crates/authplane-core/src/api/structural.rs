//! The structural half of what the apiserver checks, done in process against the very
//! schema of our CRDs: types, enums, required fields, unknown fields (kubectl's strict
//! field validation) and the `maxLength` / `maxItems` / `maxProperties` bounds. The other
//! half, the CEL rules, is evaluated by `Validate`, from rules compiled once per process.
//!
//! Unlike deserializing, which stops at the first problem, this walk lists every one, so
//! a manifest with three mistakes gets three messages. Written by hand rather than with a
//! JSON Schema crate: the subset is small (a structural schema has no `$ref`, `anyOf` or
//! `patternProperties` of ours), and the messages follow the apiserver's words.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, compile_schema};
use serde_json::Value;

use super::{AuthPolicy, FieldError, Revocation, SigningKey, TokenClient};

/// The `openAPIV3Schema` of a kind, generated once per process.
pub fn schema_of<K: CustomResourceExt>(cell: &'static OnceLock<Value>) -> &'static Value {
    cell.get_or_init(|| {
        let crd = K::crd();
        crd.spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    })
}

/// Schemas of the kinds authplane serves, and their CEL rules compiled.
pub trait HasSchema {
    fn schema() -> &'static Value;
    /// The `x-kubernetes-validations` rules of [`HasSchema::schema`], compiled once per
    /// process as the apiserver compiles them once per CRD version: parsing them for
    /// every object made validating 10,000 policies take tens of seconds.
    fn rules() -> &'static CompiledSchema;
    /// The same rules with the duration regex calls replaced, for objects whose
    /// durations are all well-formed (see `cel_rules::fast`).
    fn fast_rules() -> &'static CompiledSchema;
}

macro_rules! has_schema {
    ($kind:ty) => {
        impl HasSchema for $kind {
            fn schema() -> &'static Value {
                static CELL: OnceLock<Value> = OnceLock::new();
                schema_of::<$kind>(&CELL)
            }

            fn rules() -> &'static CompiledSchema {
                static CELL: OnceLock<CompiledSchema> = OnceLock::new();
                CELL.get_or_init(|| compile_schema(Self::schema()))
            }

            fn fast_rules() -> &'static CompiledSchema {
                static CELL: OnceLock<CompiledSchema> = OnceLock::new();
                CELL.get_or_init(|| {
                    compile_schema(&super::cel_rules::fast::without_duration_regex(
                        Self::schema(),
                    ))
                })
            }
        }
    };
}

has_schema!(SigningKey);
has_schema!(AuthPolicy);
has_schema!(Revocation);
has_schema!(TokenClient);

/// Every structural problem of `object` (a whole resource) against `schema`. `metadata`
/// is left to the metadata checks, as the apiserver does.
pub fn check(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(fields) = object.as_object() else {
        errors.push(FieldError::new("", "must be an object"));
        return errors;
    };
    let properties = schema.get("properties");
    for (name, value) in fields {
        if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => walk(field_schema, value, name, &mut errors),
            None => errors.push(FieldError::new(
                name.clone(),
                unknown_field(name, properties),
            )),
        }
    }
    errors
}

/// "unknown field", with the known field it most likely meant: `algoritm` is
/// `algorithm`, `prepublish` is `prePublish`.
fn unknown_field(name: &str, properties: Option<&Value>) -> String {
    // A third of the name may differ: close enough to be a typo, not another word.
    let close_enough = 1 + name.chars().count() / 3;
    let lower = name.to_lowercase();
    let length = lower.chars().count();
    let closest = properties
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|known| known.keys())
        // The distance is at least the difference in length: a name that cannot come
        // close is not compared (a megabyte-long name in a review sent to /validate took
        // seconds of a worker's time, the distance being quadratic).
        .filter(|known| known.chars().count().abs_diff(length) <= close_enough)
        .map(|known| (strsim::osa_distance(&lower, &known.to_lowercase()), known))
        .min();
    match closest {
        Some((distance, known)) if distance <= close_enough => {
            format!("unknown field; did you mean `{known}`?")
        }
        _ => "unknown field".to_owned(),
    }
}

/// The part of `object` that can be read as its kind: values of the wrong type or not
/// among their enum's, unknown fields, and objects that lack a required field are left
/// out; a list loses all its items when one of them must go, so that the indexes the
/// checks name stay those of the manifest. Values out of bounds stay (they can be read).
/// The checks beyond the schema then run on this part, so that a manifest with
/// mistakes of both kinds gets all of them in one round.
pub fn readable_part(schema: &Value, object: &Value) -> Value {
    let Some(fields) = object.as_object() else {
        return Value::Null;
    };
    let properties = schema.get("properties");
    let readable = fields
        .iter()
        .filter_map(|(name, value)| {
            if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                return Some((name.clone(), value.clone()));
            }
            let field_schema = properties.and_then(|p| p.get(name))?;
            Some((name.clone(), prune(field_schema, value)?))
        })
        .collect();
    Value::Object(readable)
}

/// `value` without what does not fit `schema`, or `None` when nothing of it does.
fn prune(schema: &Value, value: &Value) -> Option<Value> {
    if value.is_null() {
        return Some(Value::Null);
    }
    let fits = mistyped(schema, value).is_none();
    let allowed = schema
        .get("enum")
        .and_then(Value::as_array)
        .is_none_or(|allowed| allowed.contains(value));
    if !fits || !allowed {
        return None;
    }
    match value {
        Value::Array(items) => {
            let items = match schema.get("items") {
                Some(item_schema) => items
                    .iter()
                    .map(|item| prune(item_schema, item))
                    .collect::<Option<Vec<Value>>>()?,
                None => items.clone(),
            };
            Some(Value::Array(items))
        }
        Value::Object(fields) => {
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let properties = schema.get("properties");
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut kept = serde_json::Map::new();
            for (name, field) in fields {
                let field_schema = properties.and_then(|p| p.get(name)).or(additional);
                match field_schema {
                    Some(field_schema) => {
                        if let Some(field) = prune(field_schema, field) {
                            kept.insert(name.clone(), field);
                        }
                    }
                    None if preserve => {
                        kept.insert(name.clone(), field.clone());
                    }
                    None => {}
                }
            }
            let required = schema.get("required").and_then(Value::as_array);
            let complete = required
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .all(|name| kept.get(name).is_some_and(|v| !v.is_null()));
            complete.then_some(Value::Object(kept))
        }
        _ => Some(value.clone()),
    }
}

/// The type `schema` asks for and the value's, when they differ (an integer is a
/// `number` too); `None` when the value fits or the schema names no type.
fn mistyped<'s>(schema: &'s Value, value: &Value) -> Option<(&'s str, &'static str)> {
    let expected = schema.get("type").and_then(Value::as_str)?;
    let actual = type_name(value);
    let fits = match expected {
        "number" => matches!(actual, "number" | "integer"),
        t => t == actual,
    };
    (!fits).then_some((expected, actual))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// YAML 1.1 (kubectl, Helm) reads these unquoted words as booleans.
const YAML11_HINT: &str = "unquoted yes, no, on, off, y and n are booleans in YAML 1.1, as kubectl and Helm read it: quote the value";

fn walk(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut fail = |message: String| errors.push(FieldError::new(path, message));
    if value.is_null() {
        // The apiserver drops nulls of fields that are not nullable; ours are optional.
        return;
    }
    if let Some((expected, actual)) = mistyped(schema, value) {
        let mut message = format!("must be of type {expected}, not {actual} ({value})");
        if actual == "boolean" && expected == "string" {
            message = format!("{message}: {YAML11_HINT}");
        }
        fail(message);
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        fail(format!(
            "unsupported value {value}: supported values: {}",
            list.join(", ")
        ));
        return;
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_u64);
    match value {
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(max) = bound("maxLength")
                && length > max
            {
                fail(format!(
                    "may not be longer than {max} characters ({length})"
                ));
            }
            if let Some(min) = bound("minLength")
                && length < min
            {
                fail(format!("must be at least {min} characters long"));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                fail(format!("{n} must be at least {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                fail(format!("{n} must be at most {max}"));
            }
        }
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(max) = bound("maxItems")
                && count > max
            {
                fail(format!("must have at most {max} items ({count})"));
            }
            if let Some(min) = bound("minItems")
                && count < min
            {
                fail(format!("must have at least {min} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(fields) => {
            let count = fields.len() as u64;
            if let Some(max) = bound("maxProperties")
                && count > max
            {
                fail(format!("must have at most {max} entries ({count})"));
            }
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if fields.get(name).is_none_or(Value::is_null) {
                        errors.push(FieldError::new(format!("{path}.{name}"), "is required"));
                    }
                }
            }
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let properties = schema.get("properties");
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (name, field) in fields {
                if let Some(field_schema) = properties.and_then(|p| p.get(name)) {
                    walk(field_schema, field, &format!("{path}.{name}"), errors);
                } else if let Some(value_schema) = additional {
                    walk(value_schema, field, &format!("{path}[{name}]"), errors);
                } else if !preserve {
                    errors.push(FieldError::new(
                        format!("{path}.{name}"),
                        unknown_field(name, properties),
                    ));
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems<K: HasSchema>(object: Value) -> Vec<String> {
        let mut found: Vec<String> = check(K::schema(), &object)
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn every_problem_is_listed_not_only_the_first() {
        let found = problems::<SigningKey>(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"algorithm": "HS256", "rsaBitz": 2048, "rotation": {"every": 5}},
        }));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("spec.algorithm: unsupported value \"HS256\""));
        assert_eq!(
            found[1],
            "spec.rotation.every: must be of type string, not integer (5)"
        );
        assert_eq!(
            found[2],
            "spec.rsaBitz: unknown field; did you mean `rsaBits`?"
        );
    }

    #[test]
    fn a_review_lists_the_rules_that_fail_beside_the_structural_problems() {
        let found = crate::api::read_object::<SigningKey>(&json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"algorithm": "HS256", "rsaBitz": 2048, "rotation": {"every": "-5m"}},
        }))
        .unwrap_err();
        let mut fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            ["spec.algorithm", "spec.rotation.every", "spec.rsaBitz"],
            "{found:?}"
        );
    }

    #[test]
    fn an_unknown_field_names_the_field_it_most_likely_meant() {
        let found = problems::<SigningKey>(json!({
            "spec": {"algoritm": "ES256", "rotation": {"prepublish": "1h", "retain": "2h"}, "bananas": 1},
        }));
        assert_eq!(
            found,
            [
                "spec.algoritm: unknown field; did you mean `algorithm`?",
                "spec.bananas: unknown field",
                "spec.rotation.prepublish: unknown field; did you mean `prePublish`?",
                "spec.rotation.retain: unknown field; did you mean `retainFor`?",
            ]
        );
    }

    #[test]
    fn nulls_and_whole_floats_read_as_kubectl_sends_them() {
        let policy = crate::api::read_object::<AuthPolicy>(&json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "issuers": [{"signingKeyRef": {"name": "web"}}],
                "audiences": null,
                "forwardClaims": null,
                "rollout": {"pauseAboveDenyRatio": {"ratio": 0.1, "minRequests": 100.0}},
            },
        }))
        .unwrap();
        assert!(policy.spec.audiences.is_empty());
        let pause = policy.spec.rollout.pause_above_deny_ratio.unwrap();
        assert_eq!(pause.min_requests, 100);
    }

    #[test]
    fn a_yaml_boolean_where_a_word_belongs_says_to_quote_it() {
        let found = problems::<AuthPolicy>(json!({
            "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}], "rollout": {"mode": false}},
        }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("spec.rollout.mode: must be of type string, not boolean"));
        assert!(found[0].contains("quote the value"), "{}", found[0]);
    }

    #[test]
    fn bounds_and_required_fields_are_checked() {
        let long = "x".repeat(2049);
        let found = problems::<AuthPolicy>(json!({
            "spec": {
                "issuers": [{"issuer": long}, {}],
                "audiences": vec!["a"; 33],
                "requiredClaims": [{"equals": "x"}],
            },
        }));
        for expected in [
            "spec.issuers[0].issuer: may not be longer than 2048 characters (2049)",
            "spec.audiences: must have at most 32 items (33)",
            "spec.requiredClaims[0].claim: is required",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "{expected} not in {found:?}"
            );
        }
        let empty = problems::<AuthPolicy>(json!({"spec": {"issuers": []}}));
        assert_eq!(empty, ["spec.issuers: must have at least 1 items"]);
        let map = problems::<AuthPolicy>(json!({
            "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}], "forwardClaims": {"sub": "y".repeat(65)}},
        }));
        assert_eq!(
            map,
            ["spec.forwardClaims[sub]: may not be longer than 64 characters (65)"]
        );
    }

    #[test]
    fn a_good_object_has_no_problems() {
        assert!(
            problems::<AuthPolicy>(json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "p", "namespace": "shop", "annotations": {"a": "b"}},
                "spec": {
                    "issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                    "audiences": ["payments"],
                    "forwardClaims": {"sub": "X-Auth-Subject"},
                    "rollout": {"mode": "Enforce", "percentage": 12.5, "steps": [10, 50, 100], "stepEvery": "1h"},
                },
            }))
            .is_empty()
        );
    }
}
