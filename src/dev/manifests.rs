//! Reads a folder of manifests, the same YAML one would `kubectl apply`.
//!
//! A file with any refused document keeps contributing the objects of its last good
//! version: a typo never takes an issuer down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::api::ObjectKey;
use crate::api::{API_VERSION, AuthPolicy, SigningKey, Validate, from_value};

/// A refused file or document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when one is to blame.
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One accepted document.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    SigningKey(Box<SigningKey>),
    AuthPolicy(Box<AuthPolicy>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::SigningKey(_) => "SigningKey",
            Object::AuthPolicy(_) => "AuthPolicy",
        }
    }

    fn id(&self) -> ObjectKey {
        match self {
            Object::SigningKey(o) => ObjectKey::of(&o.metadata),
            Object::AuthPolicy(o) => ObjectKey::of(&o.metadata),
        }
    }
}

/// The desired objects, by kind and key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub signing_keys: BTreeMap<ObjectKey, SigningKey>,
    pub auth_policies: BTreeMap<ObjectKey, AuthPolicy>,
}

impl Desired {
    /// Adds an object; `false` if one of that kind and key is already there.
    fn insert(&mut self, object: Object) -> bool {
        let id = object.id();
        match object {
            Object::SigningKey(o) => self.signing_keys.insert(id, *o).is_none(),
            Object::AuthPolicy(o) => self.auth_policies.insert(id, *o).is_none(),
        }
    }
}

#[derive(Default)]
pub struct ManifestLoader {
    last_good: BTreeMap<PathBuf, Vec<Object>>,
}

impl ManifestLoader {
    /// Reads every `*.yaml`/`*.yml` file in `dir`. Returns the desired state and what was
    /// refused; refused files keep their last good objects.
    pub fn load(&mut self, dir: &Path) -> (Desired, Vec<ManifestError>) {
        let mut errors = Vec::new();
        let files = match manifest_files(dir) {
            Ok(files) => files,
            Err(e) => {
                errors.push(ManifestError {
                    file: dir.to_owned(),
                    document: None,
                    message: format!("cannot list the folder: {e}"),
                });
                // Keep serving everything we had.
                self.last_good.keys().cloned().collect()
            }
        };
        let present: BTreeSet<&PathBuf> = files.iter().collect();
        self.last_good.retain(|path, _| present.contains(path));

        for file in &files {
            let parsed = std::fs::read_to_string(file)
                .map_err(|e| {
                    vec![ManifestError {
                        file: file.clone(),
                        document: None,
                        message: format!("cannot read: {e}"),
                    }]
                })
                .and_then(|text| parse_file(file, &text));
            match parsed {
                Ok(objects) => {
                    self.last_good.insert(file.clone(), objects);
                }
                Err(file_errors) => errors.extend(file_errors),
            }
        }

        let mut desired = Desired::default();
        let mut origin: BTreeMap<(&str, ObjectKey), &PathBuf> = BTreeMap::new();
        for (file, objects) in &self.last_good {
            for object in objects {
                let (kind, id) = (object.kind(), object.id());
                if let Some(first) = origin.get(&(kind, id.clone())) {
                    errors.push(ManifestError {
                        file: file.clone(),
                        document: None,
                        message: format!(
                            "{kind} {id} is also defined in {}; keeping that one",
                            first.display()
                        ),
                    });
                    continue;
                }
                origin.insert((kind, id), file);
                desired.insert(object.clone());
            }
        }
        (desired, errors)
    }
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Editors' temporary and backup files start with a dot.
            !name.starts_with('.')
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                )
                && path.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses every document of one file; any refusal refuses the file.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let error = |message: String| ManifestError {
            file: file.to_owned(),
            document: Some(index + 1),
            message,
        };
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue, // an empty document, such as a trailing `---`
            Ok(value) => value,
            Err(e) => {
                errors.push(error(format!("not valid YAML: {e}")));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        match parse_object(value) {
            Ok(object) => objects.push(object),
            Err(message) => errors.push(error(message)),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn parse_object(value: Value) -> Result<Object, String> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        (API_VERSION, "SigningKey") => typed(&value, kind).map(|o| Object::SigningKey(Box::new(o))),
        (API_VERSION, "AuthPolicy") => typed(&value, kind).map(|o| Object::AuthPolicy(Box::new(o))),
        _ => Err(format!(
            "unsupported object (apiVersion {api_version:?}, kind {kind:?}); \
             expected kind SigningKey or AuthPolicy with apiVersion {API_VERSION}"
        )),
    }
}

/// Deserializes, checks for unknown fields, defaults the namespace, and validates.
fn typed<K>(value: &Value, kind: &str) -> Result<K, String>
where
    K: DeserializeOwned + Serialize + Validate + Resource,
{
    let mut object: K = from_value(value).map_err(|e| match e.field.as_str() {
        "" => format!("{kind}: {}", e.message),
        _ => format!("{kind}: {e}"),
    })?;
    let id = ObjectKey::of(object.meta());
    if let Some(field) = unknown_field(
        value,
        &serde_json::to_value(&object).unwrap_or_default(),
        "",
    ) {
        return Err(format!("{kind} {id}: {field}: unknown field"));
    }
    object.meta_mut().namespace = Some(id.namespace.clone());
    let refused = object.validate();
    if !refused.is_empty() {
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(format!("{kind} {id}: {}", refused.join("; ")));
    }
    Ok(object)
}

/// The first field of `input` that did not survive a round trip through the typed
/// object: a misspelt or unknown field, refused as `kubectl apply` would
/// (strict field validation).
fn unknown_field(input: &Value, typed: &Value, path: &str) -> Option<String> {
    let (Value::Object(input), Value::Object(typed)) = (input, typed) else {
        return None;
    };
    // Free-form maps are not ours to check.
    if path.ends_with("labels") || path.ends_with("annotations") {
        return None;
    }
    input.iter().find_map(|(name, value)| {
        let here = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match typed.get(name) {
            None if value.is_null() => None,
            None => Some(here),
            Some(typed) => unknown_field(value, typed, &here),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<SigningKey>, Vec<String>> {
        parse_file(Path::new("keys.yaml"), text)
            .map(|objects| {
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::SigningKey(k) => Some(*k),
                        Object::AuthPolicy(_) => None,
                    })
                    .collect()
            })
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    const GOOD: &str = "apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {name: web, namespace: auth}\nspec: {algorithm: ES256}\n";

    #[test]
    fn multi_document_files_and_default_namespace() {
        let text = format!(
            "{GOOD}---\napiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {{name: other}}\nspec: {{}}\n---\n"
        );
        let keys = parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn refusals_name_file_document_and_field() {
        let cases = [
            (
                format!("{GOOD}---\nkind: Deployment\napiVersion: apps/v1\n"),
                "keys.yaml: document 2: unsupported object (apiVersion \"apps/v1\", kind \"Deployment\")",
            ),
            (
                GOOD.replace("ES256", "HS256"),
                "keys.yaml: document 1: SigningKey: spec.algorithm: unknown variant `HS256`",
            ),
            (
                GOOD.replace("algorithm: ES256", "algorithm: RS256, rsaBits: 1000"),
                "document 1: SigningKey auth/web: spec.rsaBits: must be 2048, 3072 or 4096",
            ),
            (
                GOOD.replace("algorithm: ES256", "algoritm: ES256"),
                "document 1: SigningKey auth/web: spec.algoritm: unknown field",
            ),
            (
                GOOD.replace("spec: {algorithm: ES256}", "spec: {rotation: {every: 1y}}"),
                "document 1: SigningKey: spec.rotation.every: invalid duration \"1y\"",
            ),
            (
                "key: [unclosed\n".to_owned(),
                "keys.yaml: document 1: not valid YAML",
            ),
        ];
        for (text, expected) in cases {
            let errors = parse(&text).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "expected {expected:?} in {errors:?}"
            );
        }
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let mut loader = ManifestLoader::default();
        std::fs::write(&file, GOOD).unwrap();
        let (good, errors) = loader.load(dir.path());
        assert!(errors.is_empty());
        std::fs::write(&file, GOOD.replace("ES256", "XX999")).unwrap();
        let (still, errors) = loader.load(dir.path());
        assert_eq!(errors.len(), 1);
        assert_eq!(still, good);
        std::fs::remove_file(&file).unwrap();
        let (gone, errors) = loader.load(dir.path());
        assert!(errors.is_empty());
        assert!(gone.signing_keys.is_empty());
    }

    #[test]
    fn a_duplicate_object_is_refused_and_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yml"), GOOD.replace("ES256", "EdDSA")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (desired, errors) = ManifestLoader::default().load(dir.path());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("also defined in"));
        let key = desired.signing_keys.values().next().unwrap();
        assert_eq!(key.spec.algorithm, crate::keys::Algorithm::ES256);
    }
}
