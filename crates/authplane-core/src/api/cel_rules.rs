//! Building blocks of the CRDs' CEL rules, as macros because the derive wants string
//! literals (`concat!`) and the same text must appear in every rule that reads a duration.
//!
//! Every rule that calls `duration()` first checks the syntax itself: the apiserver runs
//! CEL rules even when a field fails its schema, and `duration('1 day')` is a runtime
//! error ("type conversion error from 'string' to 'google.protobuf.Duration'") that says
//! nothing about the field. A malformed duration is refused once, by the syntax rule
//! on the `Duration` schema, with a message that says what is wrong.

/// Go's duration syntax, which CEL's `duration()` parses (`30s`, `1h30m`, `1.5h`), with
/// at most five digits before a unit's point: with the 32 characters a duration may have,
/// nothing this accepts overflows Go's 2,562,047 hours (which would be a CEL runtime error
/// again); every limit we set is below 99,999 of its unit.
macro_rules! go_duration_re {
    () => {
        r"^[-+]?(0|(([0-9]{1,5}(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$"
    };
}

/// `$x` is a well-formed duration.
macro_rules! is_duration {
    ($x:literal) => {
        concat!($x, ".matches('", go_duration_re!(), "')")
    };
}

/// `$x` is a well-formed duration between `$lo` and `$hi`.
macro_rules! duration_in {
    ($x:literal, $lo:literal, $hi:literal) => {
        concat!(
            is_duration!($x),
            " && duration(",
            $x,
            ") >= duration('",
            $lo,
            "') && duration(",
            $x,
            ") <= duration('",
            $hi,
            "')"
        )
    };
}

/// A field rule: `self` lies between `$lo` and `$hi`, or is malformed (which the
/// syntax rule reports on its own).
macro_rules! duration_between {
    ($lo:literal, $hi:literal) => {
        concat!(
            "!",
            is_duration!("self"),
            " || (duration(self) >= duration('",
            $lo,
            "') && duration(self) <= duration('",
            $hi,
            "'))"
        )
    };
}

/// A string rule: no control character (Unicode category Cc: U+0000 to U+001F, U+007F to
/// U+009F), so that a value written into a log can never start a forged line. The
/// in-process validation checks every string of a spec the same way
/// ([`super::validation`]); the CRDs carry the rule on the URLs and free text that are
/// logged.
pub(crate) const NO_CONTROL_CHARACTERS: &str = r"!self.matches('[\x00-\x1f\x7f-\x9f]')";
pub(crate) const NO_CONTROL_CHARACTERS_MESSAGE: &str =
    "must not contain control characters such as a newline (they could forge lines in logs)";

/// Validating without compiling the duration regex at every evaluation.
///
/// The `cel` crate compiles the regex of `matches()` at every call, and every duration
/// field is checked with it two or three times (its syntax rule, its range rule, the
/// rules of its parent): at 10,000 AuthPolicies that was the largest cost of a start.
/// kube-cel offers no way to register a cached `matches`. So, in process only (the CRDs
/// are unchanged), the rules are evaluated in two steps that give the same verdict:
///
/// 1. every duration in the object is checked natively against the same regex, with
///    the same engine (`regex`, which `cel` uses), compiled once;
/// 2. when all are well-formed, the rules run with each duration `X.matches('<regex>')`
///    replaced by `X.startsWith('')`, which is then equally true (and still reads `X`, so
///    a missing field fails the same way); when one is not, the original rules run, and
///    report it as the apiserver would.
///
/// `tests::the_fast_rules_give_the_original_verdicts` holds the two to the same verdicts.
pub(crate) mod fast {
    use std::sync::LazyLock;

    use serde_json::Value;

    /// `X.matches('<duration regex>')` as it appears in the rules' text.
    const CALL: &str = concat!(".matches('", go_duration_re!(), "')");
    /// What it becomes once every duration is known to be well-formed: a method call
    /// like `matches` (so `!X.matches(...)` keeps its meaning) that is true for every
    /// string.
    const TRUE_FOR_A_STRING: &str = ".startsWith('')";
    /// The rule each duration's own schema carries, which marks it as a duration.
    const SYNTAX_RULE: &str = is_duration!("self");

    /// The regex as CEL reads the string literal (`\\.` is `\.`).
    static DURATION: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(&go_duration_re!().replace(r"\\", r"\"))
            .expect("the duration regex compiles")
    });

    /// The schema with the duration regex calls replaced (see the module's docs).
    pub fn without_duration_regex(schema: &Value) -> Value {
        match schema {
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(name, value)| {
                        let value = match (name.as_str(), value) {
                            ("rule", Value::String(rule)) => {
                                Value::String(rule.replace(CALL, TRUE_FOR_A_STRING))
                            }
                            _ => without_duration_regex(value),
                        };
                        (name.clone(), value)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(without_duration_regex).collect()),
            _ => schema.clone(),
        }
    }

    /// Whether every duration in `value` (the fields whose schema carries the duration
    /// syntax rule) is a string the regex accepts. Defaults are the schema's own, and
    /// well-formed (a test checks), so only what is present is looked at.
    pub fn durations_well_formed(schema: &Value, value: &Value) -> bool {
        let is_duration = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .is_some_and(|rules| rules.iter().any(|r| r["rule"] == SYNTAX_RULE));
        if is_duration {
            return value.as_str().is_some_and(|text| DURATION.is_match(text));
        }
        match value {
            Value::Object(fields) => fields.iter().all(|(name, field)| {
                let field_schema = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties"));
                field_schema.is_none_or(|s| durations_well_formed(s, field))
            }),
            Value::Array(items) => schema
                .get("items")
                .is_none_or(|s| items.iter().all(|item| durations_well_formed(s, item))),
            _ => true,
        }
    }

    /// Whether the regex accepts `text`, natively.
    #[cfg(test)]
    pub fn is_duration(text: &str) -> bool {
        DURATION.is_match(text)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::api::structural::HasSchema;
        use crate::api::{AuthPolicy, SigningKey};
        use kube::core::cel::{CompiledSchema, Validator, compile_schema};
        use serde_json::json;

        const SAMPLES: &[&str] = &[
            "30s", "0", "-1s", "+5m", "1h30m", "1.5h", ".5s", "5.s", "99999h", "100000h", "00001s",
            "1µs", "1μs", "1us", "1ns", "1ms", "1s1s", "", "1 day", "1d", "abc", "1h 30m", "1e3s",
            "10", "-0", "0s", "999999s", "1.h", ".s", "h", "1H",
        ];

        fn verdict(cel: &Validator, rules: &CompiledSchema, value: &Value) -> Vec<String> {
            let mut errors: Vec<String> = match cel.validate_compiled(rules, value, None) {
                Ok(()) => Vec::new(),
                Err(errors) => errors
                    .into_vec()
                    .into_iter()
                    .map(|e| format!("{:?} {} {}", e.kind, e.field_path, e.message))
                    .collect(),
            };
            errors.sort();
            errors
        }

        #[test]
        fn the_native_regex_is_the_one_cel_runs() {
            let schema = json!({"type": "object", "properties": {"d": {
                "type": "string", "x-kubernetes-validations": [{"rule": SYNTAX_RULE}]}}});
            let rules = compile_schema(&schema);
            let cel = Validator::new();
            for sample in SAMPLES {
                let accepted = cel
                    .validate_compiled(&rules, &json!({"d": sample}), None)
                    .is_ok();
                assert_eq!(is_duration(sample), accepted, "{sample:?}");
            }
        }

        #[test]
        fn every_duration_call_is_replaced_and_every_default_is_well_formed() {
            fn rules(schema: &Value, found: &mut Vec<String>) {
                match schema {
                    Value::Object(fields) => {
                        if let Some(Value::String(rule)) = fields.get("rule") {
                            found.push(rule.clone());
                        }
                        fields.values().for_each(|v| rules(v, found));
                    }
                    Value::Array(items) => items.iter().for_each(|v| rules(v, found)),
                    _ => {}
                }
            }
            for schema in [SigningKey::schema(), AuthPolicy::schema()] {
                let (mut before, mut after) = (Vec::new(), Vec::new());
                rules(schema, &mut before);
                rules(&without_duration_regex(schema), &mut after);
                let calls = before.iter().filter(|r| r.contains(CALL)).count();
                assert!(calls >= 4, "the duration rules are found: {before:?}");
                assert!(
                    after.iter().all(|r| !r.contains("^[-+]?(0|")),
                    "none is left: {after:?}"
                );
                assert_eq!(before.len(), after.len());
                check_defaults(schema);
            }
            // A default is what the apiserver (and kube-cel) puts in place of an absent
            // field before the rules run: an object's default too (`rotation`).
            fn check_defaults(schema: &Value) {
                if let Some(default) = schema.get("default") {
                    assert!(durations_well_formed(schema, default), "{default}");
                }
                match schema {
                    Value::Object(fields) => fields.values().for_each(check_defaults),
                    Value::Array(items) => items.iter().for_each(check_defaults),
                    _ => {}
                }
            }
        }

        fn is_duration_node(schema: &Value) -> bool {
            schema
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .is_some_and(|rules| rules.iter().any(|r| r["rule"] == SYNTAX_RULE))
        }

        /// The paths of every duration field (`*` for an item of a list or map).
        fn duration_paths(schema: &Value, path: &mut Vec<String>, found: &mut Vec<String>) {
            if is_duration_node(schema) {
                found.push(path.join("."));
            }
            for (name, child) in schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                path.push(name.clone());
                duration_paths(child, path, found);
                path.pop();
            }
            for child in ["items", "additionalProperties"]
                .iter()
                .filter_map(|k| schema.get(*k))
            {
                path.push("*".into());
                duration_paths(child, path, found);
                path.pop();
            }
        }

        /// The fast path is sound only if every replaced call reads a duration field:
        /// `self` on a duration's own schema, or `self.<field>` whose schema is one. A
        /// rule that ever calls the duration regex on anything else (`oldSelf`, a plain
        /// string) fails this.
        #[test]
        fn every_replaced_call_reads_a_duration_field() {
            fn check(schema: &Value, calls: &mut usize) {
                let rules = schema
                    .get("x-kubernetes-validations")
                    .and_then(Value::as_array);
                for rule in rules
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["rule"].as_str())
                {
                    for (at, _) in rule.match_indices(CALL) {
                        let receiver = rule[..at]
                            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                            .next()
                            .unwrap_or_default();
                        let reads_a_duration = match receiver.strip_prefix("self.") {
                            None => receiver == "self" && is_duration_node(schema),
                            Some(field) => schema["properties"]
                                .get(field)
                                .is_some_and(is_duration_node),
                        };
                        assert!(reads_a_duration, "{receiver:?} in {rule}");
                        *calls += 1;
                    }
                }
                match schema {
                    Value::Object(fields) => fields.values().for_each(|v| check(v, calls)),
                    Value::Array(items) => items.iter().for_each(|v| check(v, calls)),
                    _ => {}
                }
            }
            let mut calls = 0;
            check(SigningKey::schema(), &mut calls);
            check(AuthPolicy::schema(), &mut calls);
            assert!(calls > 10, "{calls} calls checked");
        }

        /// Every duration field of both kinds, set to every sample: wherever the fast
        /// path is taken, its verdict is the original's, errors and messages alike. The
        /// fields are checked against the schemas, so a new one cannot be left out.
        #[test]
        fn the_fast_rules_give_the_original_verdicts() {
            let key = json!({"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
                "metadata": {"name": "web", "namespace": "auth"},
                "spec": {"algorithm": "ES256", "maxTokenLifetime": "15m",
                         "rotation": {"every": "720h", "prePublish": "1h", "retainFor": "24h"}}});
            let policy = json!({"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "pay", "namespace": "shop"},
                "spec": {"audiences": ["pay"], "leeway": "30s", "maxTokenLifetime": "1h",
                         "issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"},
                                      "maxTokenLifetime": "2h"},
                                     {"issuer": "https://login.example/v2.0",
                                      "refresh": {"minInterval": "1m", "maxInterval": "1h", "maxStale": "24h"}}],
                         "rollout": {"mode": "Enforce", "steps": [10, 50, 100], "stepEvery": "1h",
                                     "pauseAboveDenyRatio": {"ratio": 0.5, "window": "10m"}}}});
            let key_fields: &[&[&str]] = &[
                &["spec", "maxTokenLifetime"],
                &["spec", "rotation", "every"],
                &["spec", "rotation", "prePublish"],
                &["spec", "rotation", "retainFor"],
            ];
            let policy_fields: &[&[&str]] = &[
                &["spec", "leeway"],
                &["spec", "maxTokenLifetime"],
                &["spec", "rollout", "stepEvery"],
                &["spec", "rollout", "pauseAboveDenyRatio", "window"],
                &["spec", "issuers", "0", "maxTokenLifetime"],
                &["spec", "issuers", "1", "refresh", "minInterval"],
                &["spec", "issuers", "1", "refresh", "maxInterval"],
                &["spec", "issuers", "1", "refresh", "maxStale"],
            ];
            for (schema, fields) in [
                (SigningKey::schema(), key_fields),
                (AuthPolicy::schema(), policy_fields),
            ] {
                let mut all = Vec::new();
                duration_paths(schema, &mut Vec::new(), &mut all);
                let mut listed: Vec<String> = fields
                    .iter()
                    .map(|f| {
                        let steps: Vec<&str> = f
                            .iter()
                            .map(|s| if s.parse::<usize>().is_ok() { "*" } else { s })
                            .collect();
                        steps.join(".")
                    })
                    .collect();
                all.sort();
                listed.sort();
                assert_eq!(listed, all, "every duration field is in the lists below");
            }
            let cel = Validator::new();
            let (mut fast, mut slow) = (0, 0);
            let mut check =
                |schema: &Value, rules: &CompiledSchema, quick: &CompiledSchema, value: &Value| {
                    if durations_well_formed(schema, value) {
                        fast += 1;
                        assert_eq!(
                            verdict(&cel, quick, value),
                            verdict(&cel, rules, value),
                            "{value}"
                        );
                    } else {
                        slow += 1;
                    }
                };
            for (object, fields, schema, rules, quick) in [
                (
                    &key,
                    key_fields,
                    SigningKey::schema(),
                    SigningKey::rules(),
                    SigningKey::fast_rules(),
                ),
                (
                    &policy,
                    policy_fields,
                    AuthPolicy::schema(),
                    AuthPolicy::rules(),
                    AuthPolicy::fast_rules(),
                ),
            ] {
                check(schema, rules, quick, object);
                for field in fields {
                    for sample in SAMPLES {
                        let mut value = object.clone();
                        let mut at = &mut value;
                        for step in *field {
                            at = match step.parse::<usize>() {
                                Ok(i) => &mut at[i],
                                Err(_) => &mut at[*step],
                            };
                        }
                        *at = json!(sample);
                        check(schema, rules, quick, &value);
                        // Absent, where it may be: the default or nothing takes its place.
                        let (last, parent) = field.split_last().unwrap();
                        let mut without = object.clone();
                        let mut at = &mut without;
                        for step in parent {
                            at = match step.parse::<usize>() {
                                Ok(i) => &mut at[i],
                                Err(_) => &mut at[*step],
                            };
                        }
                        at.as_object_mut().unwrap().remove(*last);
                        check(schema, rules, quick, &without);
                    }
                }
            }
            assert!(
                fast > 100 && slow > 50,
                "both paths are exercised: {fast} fast, {slow} slow"
            );
        }
    }
}
