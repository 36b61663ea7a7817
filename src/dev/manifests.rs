//! Reads a folder of manifests, the same YAML one would `kubectl apply`.
//!
//! A file with any refused document keeps contributing the objects of its last good
//! version: a typo never takes an issuer down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::api::ObjectKey;
use crate::api::structural::HasSchema;
use crate::api::{API_VERSION, AuthPolicy, FieldError, SigningKey, Validate, read_object};

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
    let documents = match yaml_documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            return Err(vec![ManifestError {
                file: file.to_owned(),
                document: None,
                message: format!("not valid YAML: {e}"),
            }]);
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in documents.into_iter().enumerate() {
        match parse_object(value) {
            Ok(object) => objects.push(object),
            Err(message) => errors.push(ManifestError {
                file: file.to_owned(),
                document: Some(index + 1),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

/// The documents of a YAML stream, read the way kubectl and Helm read them: YAML 1.1,
/// where an unquoted `Off`, `yes` or `on` is a boolean and `0755` is octal. So a manifest
/// that dev mode accepts is one the apiserver accepts too. Empty documents (a trailing
/// `---`) are skipped; duplicate keys are an error, as in kubectl.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        strict_booleans: false,
        legacy_octal_numbers: true,
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
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

/// Reads the object as the apiserver would (every structural problem, unknown fields
/// included), defaults the namespace, and validates.
fn typed<K>(value: &Value, kind: &str) -> Result<K, String>
where
    K: DeserializeOwned + Validate + Resource + HasSchema,
{
    let named = |problems: &[FieldError]| {
        let name = |field: &str| value["metadata"][field].as_str().map(str::to_owned);
        let id = match (name("namespace"), name("name")) {
            (namespace, Some(name)) => format!(
                " {}/{name}",
                namespace.unwrap_or_else(|| "default".to_owned())
            ),
            _ => String::new(),
        };
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("{kind}{id}: {}", problems.join("; "))
    };
    let mut object: K = read_object(value).map_err(|problems| named(&problems))?;
    let id = ObjectKey::of(object.meta());
    object.meta_mut().namespace = Some(id.namespace.clone());
    let refused = object.validate();
    if !refused.is_empty() {
        return Err(named(&refused));
    }
    Ok(object)
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
                "keys.yaml: document 1: SigningKey auth/web: spec.algorithm: unsupported value \"HS256\": supported values: \"RS256\"",
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
                "document 1: SigningKey auth/web: spec.rotation.every: invalid duration \"1y\"",
            ),
            (
                GOOD.replace(
                    "spec: {algorithm: ES256}",
                    "spec: {algorithm: HS256, rsaBitz: 2048, rotation: {every: 5}}",
                ),
                "document 1: SigningKey auth/web: spec.algorithm: unsupported value \"HS256\": supported values: \"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\"; spec.rotation.every: must be of type string, not integer (5); spec.rsaBitz: unknown field",
            ),
            ("key: [unclosed\n".to_owned(), "keys.yaml: not valid YAML"),
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
