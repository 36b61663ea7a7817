//! Dev mode's `kubectl annotate` / `kubectl patch`: find the document of one object in
//! the manifests folder and change the values the patch names in its text (see
//! `yaml_in_place`): comments, formatting, the other documents of the file and other
//! files stay byte for byte as they were. Only a document whose shape the in-place edit
//! does not handle is re-serialized whole, losing its own comments (the caller says so).
//! The running `authplane dev` sees the change like any edit.
//!
//! Strings are written double-quoted: kubectl and Helm read YAML 1.1, where a plain
//! `Off`, `y` or `no` is a boolean, so an edit must never turn a string into one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::api::{API_VERSION, ObjectKey};
use crate::dev::manifests::{Object, parse_file};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {kind} {id} in the manifests of {dir}")]
    NotFound {
        kind: &'static str,
        id: ObjectKey,
        dir: PathBuf,
    },
    #[error("{kind} {id} is defined twice: in {first} and {second}; remove one first")]
    Duplicate {
        kind: &'static str,
        id: ObjectKey,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("the edit is refused, nothing was written: {0}")]
    Refused(String),
}

/// One object's document: where it is and what it says.
#[derive(Debug)]
pub struct Located {
    pub file: PathBuf,
    /// The file's documents, separators included, so that joining them gives the file.
    chunks: Vec<String>,
    index: usize,
    pub object: Value,
    /// The merge patches applied so far, made again in the document's text on save.
    patches: Vec<Value>,
}

/// What `save` wrote.
#[derive(Debug)]
pub struct Saved {
    pub file: PathBuf,
    /// The object as `authplane dev` reads it now.
    pub object: Object,
    /// Whether only the changed values were rewritten (comments and formatting kept);
    /// otherwise the document was written whole again.
    pub in_place: bool,
}

/// The YAML files `authplane dev` reads: `*.yaml` and `*.yml`, not hidden, sorted.
/// The files dev mode reads, in the order it reads them.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, EditError> {
    crate::dev::manifests::manifest_files(dir).map_err(|source| EditError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Splits a YAML stream into documents; each chunk starts with its `---` line (if it has
/// one), so concatenating the chunks gives the text back exactly.
fn split_documents(text: &str) -> Vec<String> {
    let mut chunks = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let starts_document =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if starts_document && !chunks.last().is_some_and(String::is_empty) {
            chunks.push(String::new());
        }
        if let Some(chunk) = chunks.last_mut() {
            chunk.push_str(line);
        }
    }
    chunks
}

fn object_id(value: &Value) -> Option<(&str, ObjectKey)> {
    if value.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        return None;
    }
    let kind = value.get("kind")?.as_str()?;
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some((
        kind,
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
    ))
}

/// Finds the document of `kind` `id` in the manifests folder `dir`.
pub fn locate(dir: &Path, kind: &'static str, id: &ObjectKey) -> Result<Located, EditError> {
    let mut found: Option<Located> = None;
    for file in manifest_files(dir)? {
        let text = fs::read_to_string(&file).map_err(|source| EditError::Io {
            path: file.clone(),
            source,
        })?;
        let chunks = split_documents(&text);
        for (index, chunk) in chunks.iter().enumerate() {
            // A document that does not parse cannot be the one: the dev server refuses
            // it as well, and says why. Read as the server reads it (YAML 1.1), so that
            // `percentage: 010` or `paused: yes` mean the same to both.
            let Some(value) = crate::dev::manifests::yaml_documents(chunk)
                .ok()
                .and_then(|documents| documents.into_iter().next())
                .and_then(|document| serde_yaml::to_value(document).ok())
            else {
                continue;
            };
            if object_id(&value).is_some_and(|(k, i)| k == kind && i == *id) {
                if let Some(first) = &found {
                    return Err(EditError::Duplicate {
                        kind,
                        id: id.clone(),
                        first: first.file.clone(),
                        second: file,
                    });
                }
                found = Some(Located {
                    file: file.clone(),
                    chunks: chunks.clone(),
                    index,
                    object: value,
                    patches: Vec::new(),
                });
            }
        }
    }
    found.ok_or_else(|| EditError::NotFound {
        kind,
        id: id.clone(),
        dir: dir.to_owned(),
    })
}

impl Located {
    /// The value of one annotation, if set.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.object
            .get("metadata")?
            .get("annotations")?
            .get(name)?
            .as_str()
    }

    /// Sets one annotation, as `kubectl annotate --overwrite` does.
    pub fn set_annotation(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        let patch = serde_json::json!({"metadata": {"annotations": {name: value}}});
        self.merge_patch(&patch)
    }

    /// Applies a JSON merge patch (RFC 7386), as `kubectl patch --type merge` does.
    pub fn merge_patch(&mut self, patch: &serde_json::Value) -> Result<(), EditError> {
        let patch: Value =
            serde_yaml::to_value(patch).map_err(|e| EditError::Refused(e.to_string()))?;
        merge(&mut self.object, &patch);
        self.patches.push(patch);
        Ok(())
    }

    /// The object as `authplane dev` reads it (validated), before or after an edit.
    pub fn parsed(&self) -> Result<Object, EditError> {
        let body = to_yaml(&self.object)?;
        let refused = |errors: Vec<String>| EditError::Refused(errors.join("; "));
        let mut objects = parse_file(&self.file, &body)
            .map_err(|errors| refused(errors.iter().map(|e| e.problem.to_string()).collect()))?;
        objects
            .pop()
            .ok_or_else(|| refused(vec!["the document is empty".into()]))
    }

    /// Writes the file back: the changed values rewritten in the document's text, every
    /// other byte as it was (or, for a document whose shape the in-place edit does not
    /// handle, the document re-serialized after the separator and comment lines that
    /// opened it). An edit that `authplane dev` would refuse is not written. The file is
    /// replaced atomically (temporary file, then rename), as editors do.
    pub fn save(mut self) -> Result<Saved, EditError> {
        let object = self.parsed()?;
        let edited = self.edited_in_place();
        let in_place = edited.is_some();
        let chunk = &mut self.chunks[self.index];
        *chunk = match edited {
            Some(text) => text,
            None => rewritten(chunk, &to_yaml(&self.object)?),
        };
        self.write()?;
        Ok(Saved {
            file: self.file,
            object,
            in_place,
        })
    }

    /// The document's text with the patches made in place, if that reads back as the
    /// edited object.
    fn edited_in_place(&self) -> Option<String> {
        let text = &self.chunks[self.index];
        let changes: Vec<_> = self
            .patches
            .iter()
            .flat_map(super::yaml_in_place::changes)
            .collect();
        let edited = super::yaml_in_place::apply(text, &changes, &self.object)?;
        reads_as(&edited, &self.object).then_some(edited)
    }

    /// Replaces the file with the chunks, atomically (temporary file, then rename).
    fn write(&self) -> Result<(), EditError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EditError::Io { path, source }
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let name = self.file.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.authplane.tmp"));
        let mode = fs::metadata(&self.file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0o644);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o7777)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(self.chunks.concat().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &self.file).map_err(io(&self.file))
    }
}

/// The document `chunk` written whole again as `body`, after the separator and comment
/// lines that opened it.
fn rewritten(chunk: &str, body: &str) -> String {
    let mut text: String = chunk
        .split_inclusive('\n')
        .enumerate()
        .take_while(|(i, line)| {
            let line = line.trim();
            (*i == 0 && line.starts_with("---")) || line.is_empty() || line.starts_with('#')
        })
        .map(|(_, line)| line)
        .collect();
    text.push_str(body);
    text
}

/// Whether `text` reads (as dev mode reads it) as exactly `object`.
fn reads_as(text: &str, object: &Value) -> bool {
    let read = crate::dev::manifests::yaml_documents(text)
        .ok()
        .filter(|documents| documents.len() == 1)
        .and_then(|mut documents| documents.pop());
    let expected = serde_json::to_value(object).ok();
    match (read, expected) {
        (Some(read), Some(expected)) => same(&read, &expected),
        _ => false,
    }
}

/// Equal as JSON, a whole float equal to the integer it is (`50.0` is `50`).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Block-style YAML with every string double-quoted (JSON's escapes are YAML's), so that
/// YAML 1.1 and 1.2 readers agree on every value. Mapping order is kept.
fn to_yaml(value: &Value) -> Result<String, EditError> {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => block(value, 0, &mut out)?,
        _ => return Err(EditError::Refused("the document is not a mapping".into())),
    }
    Ok(out)
}

fn block(value: &Value, indent: usize, out: &mut String) -> Result<(), EditError> {
    let pad = " ".repeat(indent);
    match value {
        Value::Mapping(mapping) => {
            for (key, value) in mapping {
                let Value::String(key) = key else {
                    return Err(EditError::Refused(format!(
                        "a key that is not a string: {key:?}"
                    )));
                };
                out.push_str(&pad);
                out.push_str(&key_text(key));
                out.push(':');
                match value {
                    Value::Mapping(m) if !m.is_empty() => {
                        out.push('\n');
                        block(value, indent + 2, out)?;
                    }
                    Value::Sequence(s) if !s.is_empty() => {
                        out.push('\n');
                        block(value, indent, out)?;
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&scalar(value)?);
                        out.push('\n');
                    }
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let nested = matches!(item, Value::Mapping(m) if !m.is_empty())
                    || matches!(item, Value::Sequence(s) if !s.is_empty());
                if nested {
                    // The item's block, with its first indentation replaced by "- ".
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner)?;
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&inner[indent + 2..]);
                } else {
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&scalar(item)?);
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other)?);
            out.push('\n');
        }
    }
    Ok(())
}

fn scalar(value: &Value) -> Result<String, EditError> {
    Ok(match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => return Err(EditError::Refused(format!("a tagged value: {}", t.tag))),
    })
}

/// Keys as Kubernetes writes them (`apiVersion`, `authplane.io/rotate-at`) stay plain;
/// anything else, and the words YAML 1.1 reads as booleans, are quoted.
pub(super) fn key_text(key: &str) -> String {
    const BOOLEAN_WORDS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !BOOLEAN_WORDS.contains(&key)
        && !matches!(key, "null" | "Null" | "NULL");
    if plain {
        key.to_owned()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
}

#[cfg(test)]
pub(super) fn merge_for_tests(target: &mut Value, patch: &Value) {
    merge(target, patch);
}

/// RFC 7386 on YAML values: `null` removes, a mapping merges, anything else replaces.
/// Keys keep their order; new ones go last.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Mapping(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_mapping() {
        *target = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# keys for the web tier\n\
apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata:\n  name: web\n  namespace: auth\nspec:\n  algorithm: ES256\n\
---\n# the policy: keep this comment\n\
apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: payments, namespace: shop}\n\
spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [payments]\n\
\x20 rollout: {mode: Enforce, steps: [10, 50], stepEvery: 1h}\n\
--- # trailing\n";

    fn id(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn written_yaml_reads_back_the_same_and_keeps_strings_strings() {
        let text = "apiVersion: authplane.io/v1alpha1\nmetadata:\n  annotations: {a/b: '2026-01-01T00:00:00Z'}\n\
                    spec:\n  words: ['Off', 'y', 'no', 'on', '1.0', '~', '', \"two\\nlines\"]\n\
                    \x20 'y': 1\n  n: [{a: 1, b: [x, {c: true}]}, [1, 2], {}, []]\n  nothing: null\n";
        let value: Value = serde_yaml::from_str(text).unwrap();
        let written = to_yaml(&value).unwrap();
        assert_eq!(
            serde_yaml::from_str::<Value>(&written).unwrap(),
            value,
            "{written}"
        );
        for quoted in [
            "\"Off\"",
            "\"y\":",
            "\"no\"",
            "\"2026-01-01T00:00:00Z\"",
            "\"n\":",
        ] {
            assert!(written.contains(quoted), "{quoted} in {written}");
        }
        assert!(
            written.starts_with("apiVersion: \"authplane.io/v1alpha1\"\n"),
            "{written}"
        );
    }

    #[test]
    fn documents_split_and_join_back_exactly() {
        let chunks = split_documents(FILE);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), FILE);
        assert_eq!(split_documents("---\na: 1\n").len(), 1);
    }

    #[test]
    fn an_edit_rewrites_only_its_document() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("all.yaml"), FILE).unwrap();
        fs::write(dir.path().join("other.yml"), "garbage: [\n").unwrap();

        let mut policy = locate(dir.path(), "AuthPolicy", &id("shop", "payments")).unwrap();
        policy
            .merge_patch(&serde_json::json!({"spec": {"rollout": {"paused": true, "steps": null}}}))
            .unwrap();
        policy.save().unwrap();
        let text = fs::read_to_string(dir.path().join("all.yaml")).unwrap();
        let (first, _) = FILE
            .split_once("apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy")
            .unwrap();
        assert!(
            text.starts_with(first),
            "the other document and the comment are kept:\n{text}"
        );
        assert!(text.ends_with("--- # trailing\n"), "{text}");
        let edited = locate(dir.path(), "AuthPolicy", &id("shop", "payments")).unwrap();
        let rollout = &edited.object["spec"]["rollout"];
        assert_eq!(rollout["paused"], Value::Bool(true));
        assert!(rollout.get("steps").is_none());
        assert_eq!(rollout["mode"], Value::String("Enforce".into()));

        let mut key = locate(dir.path(), "SigningKey", &id("auth", "web")).unwrap();
        key.set_annotation("authplane.io/rotate-at", "2026-01-01T00:00:00Z")
            .unwrap();
        key.save().unwrap();
        assert!(
            fs::read_to_string(dir.path().join("all.yaml"))
                .unwrap()
                .starts_with("# keys for the web tier\n")
        );
        let key = locate(dir.path(), "SigningKey", &id("auth", "web")).unwrap();
        assert_eq!(
            key.annotation("authplane.io/rotate-at"),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            key.object["spec"]["algorithm"],
            Value::String("ES256".into())
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("other.yml")).unwrap(),
            "garbage: [\n"
        );
    }

    #[test]
    fn an_edit_the_server_would_refuse_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("all.yaml"), FILE).unwrap();
        let mut policy = locate(dir.path(), "AuthPolicy", &id("shop", "payments")).unwrap();
        policy
            .merge_patch(&serde_json::json!({"spec": {"rollout": {"percentage": 150}}}))
            .unwrap();
        let refused = policy.save().unwrap_err();
        assert!(refused.to_string().contains("percentage"), "{refused}");
        assert_eq!(
            fs::read_to_string(dir.path().join("all.yaml")).unwrap(),
            FILE
        );
    }

    #[test]
    fn missing_and_duplicate_objects_are_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), FILE).unwrap();
        let missing = locate(dir.path(), "SigningKey", &id("auth", "nope")).unwrap_err();
        assert!(
            missing.to_string().contains("no SigningKey auth/nope"),
            "{missing}"
        );
        fs::write(dir.path().join("b.yaml"), FILE).unwrap();
        let twice = locate(dir.path(), "SigningKey", &id("auth", "web")).unwrap_err();
        assert!(matches!(twice, EditError::Duplicate { .. }), "{twice}");
    }
}
