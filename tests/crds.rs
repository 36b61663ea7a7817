//! The CRDs committed under `crds/` are exactly what the code generates.

use std::path::Path;

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = authplane::api::crds::crds();
    assert!(!generated.is_empty());
    for (name, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{name} is out of date: run `cargo run -- crdgen --out-dir crds` and commit the result"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(name, _)| name).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "crds/ holds a file the code no longer generates"
    );
}

#[test]
fn the_crd_carries_the_cel_rules_the_dev_mode_applies() {
    let (_, yaml) = &authplane::api::crds::crds()[0];
    for rule in [
        "duration(self.retainFor) >= duration(self.prePublish)",
        "duration(self.prePublish) < duration(self.every)",
        "self in [2048, 3072, 4096]",
    ] {
        assert!(yaml.contains(rule), "missing CEL rule {rule}");
    }
    assert!(yaml.contains("x-kubernetes-validations"));
}

/// Where a schema node stands: its path, and whether it is a list or map without a bound.
fn unbounded(node: &serde_json::Value) -> Option<&'static str> {
    let has = |key: &str| node.get(key).is_some();
    match node.get("type").and_then(|t| t.as_str()) {
        Some("string") if !has("maxLength") && !has("enum") => Some("maxLength"),
        Some("array") if !has("maxItems") => Some("maxItems"),
        Some("object")
            if node
                .get("additionalProperties")
                .is_some_and(|a| a.is_object())
                && !has("maxProperties") =>
        {
            Some("maxProperties")
        }
        _ => None,
    }
}

fn children(node: &serde_json::Value, path: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in properties {
            out.push((format!("{path}.{name}"), child.clone()));
        }
    }
    if let Some(items) = node.get("items") {
        out.push((format!("{path}[*]"), items.clone()));
    }
    if let Some(values) = node.get("additionalProperties").filter(|a| a.is_object()) {
        out.push((format!("{path}[*]"), values.clone()));
    }
    out
}

/// Every unbounded string, list or map in the subtree of `node`.
fn unbounded_within(node: &serde_json::Value, path: &str, found: &mut Vec<String>) {
    if let Some(bound) = unbounded(node) {
        found.push(format!("{path} has no {bound}"));
    }
    for (child_path, child) in children(node, path) {
        unbounded_within(&child, &child_path, found);
    }
}

/// The apiserver estimates every CEL rule's worst-case cost from the schema bounds of
/// what the rule can reach (the node and everything under it) and from how many times it
/// runs (the lists and maps above it), and refuses the CRD when the estimate is over
/// budget. An unbounded string, list or map there makes the estimate enormous.
fn check_rules(
    node: &serde_json::Value,
    path: &str,
    unbounded_above: &[String],
    problems: &mut Vec<String>,
) {
    if node.get("x-kubernetes-validations").is_some() {
        for above in unbounded_above {
            problems.push(format!("rule at {path}: the list or map {above} above it"));
        }
        let mut within = Vec::new();
        unbounded_within(node, path, &mut within);
        problems.extend(within.into_iter().map(|w| format!("rule at {path}: {w}")));
    }
    for (child_path, child) in children(node, path) {
        let mut above = unbounded_above.to_vec();
        if matches!(unbounded(node), Some("maxItems" | "maxProperties")) {
            above.push(format!(
                "{path} (no {})",
                unbounded(node).unwrap_or_default()
            ));
        }
        check_rules(&child, &child_path, &above, problems);
    }
}

#[test]
fn every_field_a_cel_rule_can_reach_is_bounded() {
    use kube::CustomResourceExt;
    for crd in [
        authplane::api::SigningKey::crd(),
        authplane::api::AuthPolicy::crd(),
        authplane::api::Revocation::crd(),
        authplane::api::TokenClient::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        for version in &crd.spec.versions {
            let schema = serde_json::to_value(
                version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .expect("a schema"),
            )
            .unwrap();
            let mut problems = Vec::new();
            check_rules(&schema, "", &[], &mut problems);
            assert!(
                problems.is_empty(),
                "{name}: the apiserver would refuse this CRD (estimated CEL cost over budget):\n{}",
                problems.join("\n")
            );
        }
    }
}

#[test]
fn the_bound_check_finds_an_unbounded_field_under_a_rule() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"list": {"type": "array", "items": {
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.a.startsWith('x')"}],
            "properties": {"a": {"type": "string"}},
        }}},
    });
    let mut problems = Vec::new();
    check_rules(&schema, "", &[], &mut problems);
    assert_eq!(
        problems,
        [
            "rule at .list[*]: the list or map .list (no maxItems) above it",
            "rule at .list[*]: .list[*].a has no maxLength",
        ]
    );
}

/// kubectl and Helm read YAML 1.1, where an unquoted `Off`, `yes` or `on` is a boolean.
/// What we ship must mean the same to them as to a YAML 1.2 reader.
#[test]
fn shipped_yaml_means_the_same_in_yaml_1_1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = Vec::new();
    for dir in ["crds", "examples", "deploy"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                texts.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (i, block) in readme.split("```yaml\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or_default();
        texts.push((format!("README.md yaml block {}", i + 1), block.to_owned()));
    }
    assert!(texts.len() > 5);
    for (name, text) in texts {
        let yaml_1_1 = authplane::dev::manifests::yaml_documents(&text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let yaml_1_2: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|d: &serde_json::Value| !d.is_null())
            .collect();
        assert_eq!(
            yaml_1_1, yaml_1_2,
            "{name} reads differently in YAML 1.1 (kubectl, Helm): quote the booleans-to-be"
        );
    }
}

#[test]
fn yaml_1_1_words_are_booleans_as_kubectl_reads_them() {
    let documents = authplane::dev::manifests::yaml_documents(
        "a: Off\nb: yes\nc: on\nd: 'Off'\ne: Disabled\nf: 0755\n---\n---\ng: n\n",
    )
    .unwrap();
    assert_eq!(
        documents,
        [
            serde_json::json!({"a": false, "b": true, "c": true, "d": "Off", "e": "Disabled", "f": 493}),
            serde_json::json!({"g": false}),
        ]
    );
}

/// What the apiserver says about a spec, as raw JSON (before our own duration parser):
/// every CEL rule of the CRD, evaluated in process. `(field, message)` of each failure.
fn cel_failures(spec: serde_json::Value) -> Vec<(String, String)> {
    match kube::core::cel::validate_cel_schema::<authplane::api::SigningKeySpec>(&spec, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| (e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn a_refusal_says_what_is_wrong_with_the_field_itself() {
    let rotation = |every: &str| serde_json::json!({"rotation": {"every": every, "prePublish": "1h", "retainFor": "24h"}});
    assert_eq!(cel_failures(rotation("720h")), []);
    let malformed = cel_failures(rotation("1 day"));
    assert_eq!(malformed.len(), 1, "{malformed:?}");
    assert!(malformed[0].0.ends_with("rotation.every"), "{malformed:?}");
    assert!(
        malformed[0]
            .1
            .starts_with("must be a duration in Go syntax"),
        "no CEL type conversion error: {malformed:?}"
    );
    let negative = cel_failures(rotation("-1h"));
    assert_eq!(negative.len(), 1, "only every is to blame: {negative:?}");
    assert!(negative[0].0.ends_with("rotation.every"), "{negative:?}");
    assert_eq!(negative[0].1, "must be between 1s and 87600h");
    // Both valid on their own, wrong together: then prePublish is named.
    let crossed = cel_failures(rotation("30m"));
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert!(crossed[0].0.ends_with("prePublish"), "{crossed:?}");
}

fn enum_values(node: &serde_json::Value, path: &str, found: &mut Vec<(String, String)>) {
    for value in node
        .get("enum")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(text) = value.as_str() {
            found.push((path.to_owned(), text.to_owned()));
        }
    }
    for (child_path, child) in children(node, path) {
        enum_values(&child, &child_path, found);
    }
}

/// An enum value that YAML 1.1 reads as a boolean cannot be written unquoted with kubectl
/// or Helm: the apiserver then sees `false` (`mode: Off` was refused so).
#[test]
fn no_enum_value_is_a_yaml_1_1_boolean() {
    use kube::CustomResourceExt;
    let booleans = ["y", "yes", "n", "no", "true", "false", "on", "off"];
    let mut values = Vec::new();
    for crd in [
        authplane::api::SigningKey::crd(),
        authplane::api::AuthPolicy::crd(),
        authplane::api::Revocation::crd(),
        authplane::api::TokenClient::crd(),
    ] {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        enum_values(&schema["openAPIV3Schema"], "", &mut values);
    }
    assert!(values.iter().any(|(_, v)| v == "Disabled"), "{values:?}");
    for (path, value) in values {
        assert!(
            !booleans.contains(&value.to_ascii_lowercase().as_str()),
            "{path}: enum value {value:?} is a boolean in YAML 1.1"
        );
    }
}

#[test]
fn the_revocation_crd_has_its_rules_status_and_columns() {
    use kube::CustomResourceExt;
    let crd = authplane::api::Revocation::crd();
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for column in ["Key", "Subject", "Reason", "Expires", "Age"] {
        assert!(columns.contains(&column), "{columns:?}");
    }
    let yaml = serde_yaml::to_string(&crd).unwrap();
    for rule in [
        "has(self.signingKeyRef) != has(self.issuer)",
        "set exactly one of tokenId, subject and sessionId",
        "issuedBefore applies to a subject only",
    ] {
        assert!(yaml.contains(rule), "missing {rule}");
    }
    // Every field is documented: `kubectl explain` shows it.
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for (name, field) in spec.as_object().unwrap() {
        assert!(
            field
                .get("description")
                .is_some_and(|d| !d.as_str().unwrap().is_empty()),
            "spec.{name} has no description"
        );
    }
}

#[test]
fn the_revocation_rules_refuse_what_they_say() {
    let failures = |spec: serde_json::Value| -> Vec<String> {
        match kube::core::cel::validate_cel_schema::<authplane::api::RevocationSpec>(&spec, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    };
    assert!(
        failures(serde_json::json!({"signingKeyRef": {"name": "web"}, "tokenId": "j"})).is_empty()
    );
    assert_eq!(
        failures(serde_json::json!({"tokenId": "j"})),
        ["set exactly one of signingKeyRef and issuer"]
    );
    assert_eq!(
        failures(serde_json::json!({"issuer": "https://i", "tokenId": "j", "sessionId": "s"})),
        ["set exactly one of tokenId, subject and sessionId"]
    );
    assert_eq!(
        failures(
            serde_json::json!({"issuer": "https://i", "tokenId": "j", "issuedBefore": "2026-01-01T00:00:00Z"})
        ),
        ["issuedBefore applies to a subject only"]
    );
}

#[test]
fn the_token_client_crd_has_its_rules_status_and_columns() {
    use kube::CustomResourceExt;
    let crd = authplane::api::TokenClient::crd();
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for column in [
        "Key",
        "Access TTL",
        "Refresh TTL",
        "Delivery",
        "Ready",
        "Age",
    ] {
        assert!(columns.contains(&column), "{columns:?}");
    }
    let yaml = serde_yaml::to_string(&crd).unwrap();
    // The rule lists exactly the claims the core calls registered, and `idp` (set from
    // a verified ID token only).
    let registered = authplane::api::REGISTERED_CLAIMS
        .map(|c| format!("'{c}'"))
        .join(", ");
    for rule in [
        format!(
            "self.all(c, !(c in [{registered}, '{}']))",
            authplane::token_endpoint::id_token::IDP_CLAIM
        ),
        "duration(self.idleLifetime) <= duration(self.absoluteLifetime)".to_owned(),
        "duration(self.reuseGrace) < duration(self.idleLifetime)".to_owned(),
        "self.all(a, self.exists_one(b, b == a))".to_owned(),
    ] {
        assert!(yaml.contains(&rule), "missing {rule}");
    }
}

/// GEP-713: each target's Gateways (ancestors) carry their own conditions, documented
/// where `kubectl explain` shows them, and every list and string of them is bounded
/// (a status the apiserver holds is no cheaper to validate than a spec); the `Attached`
/// column still reads the target's own condition.
#[test]
fn the_policy_status_has_bounded_conditions_per_ancestor() {
    use kube::CustomResourceExt;
    let crd = authplane::api::AuthPolicy::crd();
    let version = &crd.spec.versions[0];
    let attached = version
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Attached")
        .unwrap();
    assert_eq!(
        attached.json_path,
        ".status.targets[*].conditions[?(@.type==\"Accepted\")].reason"
    );
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let target = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["targets"]["items"]
        ["properties"];
    assert_eq!(target["conditions"]["maxItems"], 8);
    let ancestors = &target["ancestors"];
    assert_eq!(ancestors["maxItems"], 32);
    let ancestor = &ancestors["items"]["properties"];
    for (field, bound) in [("namespace", 63), ("name", 253), ("controllerName", 253)] {
        assert_eq!(ancestor[field]["maxLength"], bound, "{field}");
    }
    let conditions = &ancestor["conditions"];
    assert_eq!(conditions["maxItems"], 8);
    let explained = conditions["description"].as_str().unwrap();
    for reason in [
        "Accepted",
        "TargetNotFound",
        "Conflicted",
        "Invalid",
        "Disabled",
    ] {
        assert!(explained.contains(&format!("`{reason}`")), "{explained}");
    }
}
