//! Reads a folder of manifests, the same YAML one would `kubectl apply`.
//!
//! One file, its objects; deleting the file deletes them. A file with any refused
//! document, or one that suddenly holds nothing (truncated by mistake, half written),
//! keeps contributing the objects of its last good version: a typo never takes an
//! issuer down. An object defined in two files keeps serving from the file that served
//! it; the newcomer is refused. Each refusal is reported once, when the file changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::api::ObjectKey;
use crate::api::structural::HasSchema;
use crate::api::{
    API_VERSION, AuthPolicy, FieldError, Revocation, SigningKey, TokenClient, Validate, read_object,
};

/// A refused file or document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when one is to blame.
    pub document: Option<usize>,
    pub problem: Problem,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What is wrong with a file or document. I/O and YAML errors are kept as their text:
/// a reload compares refusals with the last ones, to report each only once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot list the folder: {0}; everything it held keeps serving")]
    CannotList(String),
    #[error("cannot read: {0}")]
    CannotRead(String),
    #[error("not valid YAML{}: {error}", in_document(*.starts_at_line))]
    NotYaml {
        /// 1-based line of the document that does not parse, when the file has several.
        starts_at_line: Option<usize>,
        error: String,
    },
    #[error(
        "unsupported object (apiVersion {api_version:?}, kind {kind:?}); \
         expected kind SigningKey, AuthPolicy, Revocation or TokenClient with apiVersion {API_VERSION}"
    )]
    Unsupported { api_version: String, kind: String },
    /// Refused as the apiserver would refuse it: every problem, each with its field.
    #[error("{object}: {}", joined(problems))]
    Invalid {
        /// `SigningKey auth/web`, as far as the document names it.
        object: String,
        problems: Vec<FieldError>,
    },
    #[error("{kind} {id} is defined twice in this file")]
    DefinedTwice { kind: &'static str, id: ObjectKey },
    #[error("holds no objects any more; to delete its objects, delete the file")]
    Emptied,
    #[error(
        "{kind} {id} is already defined in {}, which keeps serving it; \
         remove it from one of the two files",
        .serving.display()
    )]
    ServedFromOtherFile {
        kind: &'static str,
        id: ObjectKey,
        serving: PathBuf,
    },
    #[error(
        "{kind} {id} is also defined, identically, in {}, which comes first by name and \
         is served; remove one of the two",
        .serving.display()
    )]
    IdenticalInEarlierFile {
        kind: &'static str,
        id: ObjectKey,
        serving: PathBuf,
    },
    #[error(
        "{kind} {id} is defined differently in {}: none of them is served (its keys are \
         kept) until only one remains, since which one was served before cannot be told",
        displayed(files)
    )]
    DefinedDifferently {
        kind: &'static str,
        id: ObjectKey,
        files: Vec<PathBuf>,
    },
}

fn in_document(starts_at_line: Option<usize>) -> String {
    starts_at_line.map_or_else(String::new, |line| {
        format!(" (in the document starting at line {line})")
    })
}

fn joined(problems: &[FieldError]) -> String {
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    problems.join("; ")
}

fn displayed(files: &[PathBuf]) -> String {
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    files.join(" and ")
}

/// One accepted document. Shared, not copied, between the loader's last good version
/// of its file, the desired state and the index.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    SigningKey(Arc<SigningKey>),
    AuthPolicy(Arc<AuthPolicy>),
    Revocation(Arc<Revocation>),
    TokenClient(Arc<TokenClient>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::SigningKey(_) => "SigningKey",
            Object::AuthPolicy(_) => "AuthPolicy",
            Object::Revocation(_) => "Revocation",
            Object::TokenClient(_) => "TokenClient",
        }
    }

    fn id(&self) -> ObjectKey {
        match self {
            Object::SigningKey(o) => ObjectKey::of(&o.metadata),
            Object::AuthPolicy(o) => ObjectKey::of(&o.metadata),
            Object::Revocation(o) => ObjectKey::of(&o.metadata),
            Object::TokenClient(o) => ObjectKey::of(&o.metadata),
        }
    }

    fn identity(&self) -> Identity {
        (self.kind(), self.id())
    }
}

/// The desired objects, by kind and key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub signing_keys: BTreeMap<ObjectKey, Arc<SigningKey>>,
    pub auth_policies: BTreeMap<ObjectKey, Arc<AuthPolicy>>,
    pub revocations: BTreeMap<ObjectKey, Arc<Revocation>>,
    pub token_clients: BTreeMap<ObjectKey, Arc<TokenClient>>,
}

impl Desired {
    /// Adds an object; `false` if one of that kind and key is already there.
    fn insert(&mut self, object: Object) -> bool {
        let id = object.id();
        match object {
            Object::SigningKey(o) => self.signing_keys.insert(id, o).is_none(),
            Object::AuthPolicy(o) => self.auth_policies.insert(id, o).is_none(),
            Object::Revocation(o) => self.revocations.insert(id, o).is_none(),
            Object::TokenClient(o) => self.token_clients.insert(id, o).is_none(),
        }
    }
}

/// A refusal, with what keeps serving meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub error: ManifestError,
    pub effect: Effect,
}

/// What serves while a refusal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The file's last good version keeps serving.
    LastGoodServes,
    /// The file was never accepted: nothing of it is served.
    NothingServed,
    /// Another file defines the object and keeps serving it.
    OtherFileServes,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::LastGoodServes => "the last good version of this file keeps serving",
            Effect::NothingServed => "nothing from this file is served until it is fixed",
            Effect::OtherFileServes => "this definition is not served",
        };
        write!(f, "{} ({effect})", self.error)
    }
}

/// What one reload found. Only news: a file whose content did not change is not
/// reported again.
#[derive(Debug, Default)]
pub struct Reload {
    pub desired: Desired,
    /// Refusals not reported before: a file that changed and is refused, a new conflict,
    /// a folder that cannot be listed.
    pub refused: Vec<Refusal>,
    /// Files that were refused and are accepted now.
    pub accepted: Vec<PathBuf>,
}

/// The last content read from one file, and whether it was refused.
struct Seen {
    /// The text, or why it could not be read.
    content: Result<String, Problem>,
    refused: bool,
    /// The file's modification time and length when it was read, and when that was: a
    /// file whose stamp did not change is not read again (10,000 files are not re-read
    /// for one edit).
    stamp: Option<(SystemTime, u64)>,
    read_at: SystemTime,
}

/// How far a file's modification time may trail a write: the kernel stamps files with a
/// coarse clock, so two writes of the same length a few milliseconds apart can carry the
/// same time.
const MTIME_GRANULARITY: Duration = Duration::from_secs(1);

impl Seen {
    /// Whether the file is certainly as it was read. A stamp that is not older than the
    /// read by the clock's granularity proves nothing: the file may have been written
    /// again within the same tick (git's "racily clean" entries).
    fn unchanged(&self, stamp: Option<(SystemTime, u64)>) -> bool {
        match (self.stamp, stamp) {
            (Some(seen), Some(now)) => seen == now && seen.0 + MTIME_GRANULARITY < self.read_at,
            _ => false,
        }
    }
}

fn file_stamp(file: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

type Identity = (&'static str, ObjectKey);

/// Reads a manifests folder again and again, remembering what each file last held.
#[derive(Default)]
pub struct ManifestLoader {
    seen: BTreeMap<PathBuf, Seen>,
    /// The objects of each file's last accepted version.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    /// The objects of each file's last version, by document text.
    documents: HashMap<PathBuf, DocumentCache>,
    /// The file that serves each object: on a conflict, the one that served first wins.
    owners: BTreeMap<Identity, PathBuf>,
    /// Conflicts reported so far (newcomer file, object), reported once each.
    conflicts: BTreeSet<(PathBuf, Identity)>,
    /// Why the folder could not be listed last time, reported once.
    unlisted: Option<Problem>,
}

impl ManifestLoader {
    /// Reads every `*.yaml`/`*.yml` file in `dir`. Returns the desired state and the
    /// refusals not reported before; refused files keep their last good objects.
    pub fn load(&mut self, dir: &Path) -> (Desired, Vec<ManifestError>) {
        let reload = self.reload(dir);
        let errors = reload.refused.into_iter().map(|r| r.error).collect();
        (reload.desired, errors)
    }

    /// Reads the folder again: the desired state and what is new since the last reload.
    pub fn reload(&mut self, dir: &Path) -> Reload {
        let mut reload = Reload::default();
        let files = match manifest_files(dir) {
            Ok(files) => {
                if self.unlisted.take().is_some() {
                    reload.accepted.push(dir.to_owned());
                }
                Some(files)
            }
            Err(e) => {
                let problem = Problem::CannotList(e.to_string());
                if self.unlisted.as_ref() != Some(&problem) {
                    reload.refused.push(Refusal {
                        error: ManifestError {
                            file: dir.to_owned(),
                            document: None,
                            problem: problem.clone(),
                        },
                        effect: Effect::LastGoodServes,
                    });
                    self.unlisted = Some(problem);
                }
                None
            }
        };
        let mut changed = BTreeSet::new();
        if let Some(files) = files {
            let present: BTreeSet<&PathBuf> = files.iter().collect();
            // Deleting a file is how its objects are deleted.
            self.seen.retain(|path, _| present.contains(path));
            self.last_good.retain(|path, _| present.contains(path));
            self.documents.retain(|path, _| present.contains(path));
            let fresh: Vec<Fresh> = files.iter().filter_map(|file| self.read(file)).collect();
            let parsed = parse_all(&fresh, &self.documents);
            for (fresh, (parsed, documents)) in fresh.into_iter().zip(parsed) {
                changed.insert(fresh.file.clone());
                self.documents.insert(fresh.file.clone(), documents);
                self.accept(fresh, parsed, &mut reload);
            }
        }
        self.resolve(&changed, &mut reload);
        reload
    }

    /// Reads one file if its stamp says it may have changed; returns its content if that
    /// did change.
    fn read(&mut self, file: &Path) -> Option<Fresh> {
        let stamp = file_stamp(file);
        if self
            .seen
            .get(file)
            .is_some_and(|seen| seen.unchanged(stamp))
        {
            return None;
        }
        let read_at = SystemTime::now();
        let content = match std::fs::read_to_string(file) {
            Ok(text) => Ok(text),
            // Deleted between the listing and now: the next reload sees it gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => Err(Problem::CannotRead(e.to_string())),
        };
        if let Some(seen) = self.seen.get_mut(file)
            && seen.content == content
        {
            seen.stamp = stamp;
            seen.read_at = read_at;
            return None;
        }
        Some(Fresh {
            file: file.to_owned(),
            content,
            stamp,
            read_at,
        })
    }

    /// Takes in a changed file's parsed objects, or its refusal.
    fn accept(&mut self, fresh: Fresh, parsed: Parsed, reload: &mut Reload) {
        let Fresh {
            file,
            content,
            stamp,
            read_at,
        } = fresh;
        let file = file.as_path();
        // Whether the file has a last good version, and whether that held objects.
        let had_good: Option<bool> = self.last_good.get(file).map(|o| !o.is_empty());
        let parsed = match parsed {
            // Truncated by mistake (or half written): deleting the file is how one
            // deletes its objects.
            Ok(objects) if objects.is_empty() && had_good == Some(true) => {
                Err(vec![ManifestError {
                    file: file.to_owned(),
                    document: None,
                    problem: Problem::Emptied,
                }])
            }
            parsed => parsed,
        };
        let was_refused = self.seen.get(file).is_some_and(|seen| seen.refused);
        let refused = match parsed {
            Ok(objects) => {
                if was_refused {
                    reload.accepted.push(file.to_owned());
                }
                self.last_good.insert(file.to_owned(), objects);
                false
            }
            Err(errors) => {
                let effect = if had_good.is_some() {
                    Effect::LastGoodServes
                } else {
                    Effect::NothingServed
                };
                reload
                    .refused
                    .extend(errors.into_iter().map(|error| Refusal { error, effect }));
                true
            }
        };
        self.seen.insert(
            file.to_owned(),
            Seen {
                content,
                refused,
                stamp,
                read_at,
            },
        );
    }

    /// Decides which file serves each object and builds the desired state. An object
    /// defined in two files keeps serving from the file that served it. When neither
    /// did (at start-up), identical definitions serve from the first file by name, and
    /// different ones serve from neither: which one was served before a restart cannot
    /// be told, and guessing wrong would change the keys of a SigningKey.
    fn resolve(&mut self, changed: &BTreeSet<PathBuf>, reload: &mut Reload) {
        // Every definition of each object, files in name order.
        let mut definitions: BTreeMap<Identity, Vec<(&PathBuf, &Object)>> = BTreeMap::new();
        for (file, objects) in &self.last_good {
            for object in objects {
                definitions
                    .entry(object.identity())
                    .or_default()
                    .push((file, object));
            }
        }
        let served_before: BTreeMap<Identity, PathBuf> = self
            .owners
            .iter()
            .filter(|(id, file)| {
                definitions
                    .get(*id)
                    .is_some_and(|defined| defined.iter().any(|(f, _)| f == file))
            })
            .map(|(id, file)| (id.clone(), file.clone()))
            .collect();
        let mut owners = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for (identity, defined) in definitions {
            let (kind, id) = &identity;
            let owner = match served_before.get(&identity) {
                Some(owner) => Some(owner.clone()),
                None if defined.iter().all(|(_, o)| *o == defined[0].1) => {
                    Some(defined[0].0.clone())
                }
                None => None,
            };
            if let Some(owner) = &owner {
                if let Some((_, object)) = defined.iter().find(|(file, _)| *file == owner) {
                    reload.desired.insert((*object).clone());
                }
                owners.insert(identity.clone(), owner.clone());
            }
            for (file, _) in &defined {
                if owner.as_ref() == Some(*file) {
                    continue;
                }
                let conflict = ((*file).clone(), identity.clone());
                if !self.conflicts.contains(&conflict) || changed.contains(*file) {
                    let (kind, id) = (*kind, id.clone());
                    let (problem, effect) = match &owner {
                        Some(owner) if served_before.contains_key(&identity) => (
                            Problem::ServedFromOtherFile {
                                kind,
                                id,
                                serving: owner.clone(),
                            },
                            Effect::OtherFileServes,
                        ),
                        Some(owner) => (
                            Problem::IdenticalInEarlierFile {
                                kind,
                                id,
                                serving: owner.clone(),
                            },
                            Effect::OtherFileServes,
                        ),
                        None => (
                            Problem::DefinedDifferently {
                                kind,
                                id,
                                files: defined.iter().map(|(f, _)| (*f).clone()).collect(),
                            },
                            Effect::NothingServed,
                        ),
                    };
                    reload.refused.push(Refusal {
                        error: ManifestError {
                            file: (*file).clone(),
                            document: None,
                            problem,
                        },
                        effect,
                    });
                }
                conflicts.insert(conflict);
            }
        }
        self.owners = owners;
        self.conflicts = conflicts;
    }
}

/// A file whose content changed since it was last read.
struct Fresh {
    file: PathBuf,
    content: Result<String, Problem>,
    stamp: Option<(SystemTime, u64)>,
    read_at: SystemTime,
}

type Parsed = Result<Vec<Object>, Vec<ManifestError>>;

/// Parses and validates changed files, on every core when there are many (a start with
/// 10,000 files): each is independent of the others.
fn parse_all(
    fresh: &[Fresh],
    caches: &HashMap<PathBuf, DocumentCache>,
) -> Vec<(Parsed, DocumentCache)> {
    let none = DocumentCache::new();
    let parse = |fresh: &Fresh| match &fresh.content {
        Ok(text) => parse_file_cached(&fresh.file, text, caches.get(&fresh.file).unwrap_or(&none)),
        Err(problem) => (
            Err(vec![ManifestError {
                file: fresh.file.clone(),
                document: None,
                problem: problem.clone(),
            }]),
            DocumentCache::new(),
        ),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || fresh.len() < 64 {
        return fresh.iter().map(parse).collect();
    }
    let chunk = fresh.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = fresh
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The manifest files of a folder, sorted: `*.yaml` and `*.yml`, not hidden.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_manifest_name(path) && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a file of the manifests folder is read, by its name: `*.yaml` or `*.yml`, not
/// hidden (editors' temporary and backup files start with a dot).
pub fn is_manifest_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
}

/// Parses every document of one file; any refusal refuses the file.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    parse_file_cached(file, text, &DocumentCache::new()).0
}

/// The objects of a file's documents, by the document's text: a file of 10,000
/// documents edited in one place parses that one again, not the 9,999 others.
pub type DocumentCache = HashMap<String, Object>;

/// [`parse_file`], reusing the objects of documents whose text `cache` holds; returns
/// the cache for the new text.
fn parse_file_cached(file: &Path, text: &str, cache: &DocumentCache) -> (Parsed, DocumentCache) {
    let yaml_error = |e: serde_saphyr::Error, start_line: usize| {
        Err(vec![ManifestError {
            file: file.to_owned(),
            document: None,
            problem: Problem::NotYaml {
                // The first document's errors carry their line already.
                starts_at_line: (start_line > 0).then_some(start_line + 1),
                error: e.to_string(),
            },
        }])
    };
    let mut parsed = DocumentCache::new();
    let mut outcomes: Vec<Result<Object, Problem>> = Vec::new();
    for (start_line, chunk) in document_texts(text) {
        if let Some(object) = cache.get(chunk) {
            parsed.insert(chunk.to_owned(), object.clone());
            outcomes.push(Ok(object.clone()));
            continue;
        }
        let mut documents = match yaml_documents(chunk) {
            Ok(documents) => documents,
            Err(e) => return (yaml_error(e, start_line), DocumentCache::new()),
        };
        if documents.len() == 1 {
            let outcome = parse_object(documents.remove(0));
            if let Ok(object) = &outcome {
                parsed.insert(chunk.to_owned(), object.clone());
            }
            outcomes.push(outcome);
        } else {
            outcomes.extend(documents.into_iter().map(parse_object));
        }
    }
    let mut objects: Vec<Object> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let error = |problem| ManifestError {
            file: file.to_owned(),
            document: Some(index + 1),
            problem,
        };
        match outcome {
            Ok(object) => {
                let (kind, id) = object.identity();
                if seen.insert((kind, id.clone())) {
                    objects.push(object);
                } else {
                    errors.push(error(Problem::DefinedTwice { kind, id }));
                }
            }
            Err(problem) => errors.push(error(problem)),
        }
    }
    let parsed_file = if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    };
    (parsed_file, parsed)
}

/// The documents of a YAML stream as text, each with the line it starts on: a line
/// beginning with `---` (then nothing, a space or a tab) starts a document, and the YAML
/// grammar forbids that line inside one. Parsing documents one by one also keeps a big
/// file within the parser's per-stream budget (1,024 documents). A stream with
/// directives (`%YAML`), which apply across the marker, is read whole.
fn document_texts(text: &str) -> Vec<(usize, &str)> {
    if text.lines().any(|line| line.starts_with('%')) {
        return vec![(0, text)];
    }
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if marker && offset > start {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, number);
        }
        offset += line.len();
    }
    if offset > start {
        documents.push((start_line, &text[start..]));
    }
    documents
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

fn parse_object(value: Value) -> Result<Object, Problem> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    // Name the object in every refusal, as far as the document names it.
    let meta = |field: &str| value.pointer(&format!("/metadata/{field}"))?.as_str();
    let object = match meta("name") {
        Some(name) => format!("{kind} {}/{name}", meta("namespace").unwrap_or("default")),
        None => kind.to_owned(),
    };
    match (api_version, kind) {
        (API_VERSION, "SigningKey") => {
            typed(&value, object).map(|o| Object::SigningKey(Arc::new(o)))
        }
        (API_VERSION, "AuthPolicy") => {
            typed(&value, object).map(|o| Object::AuthPolicy(Arc::new(o)))
        }
        (API_VERSION, "Revocation") => {
            typed(&value, object).map(|o| Object::Revocation(Arc::new(o)))
        }
        (API_VERSION, "TokenClient") => {
            typed(&value, object).map(|o| Object::TokenClient(Arc::new(o)))
        }
        _ => Err(Problem::Unsupported {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }),
    }
}

/// Reads the object as the apiserver would (every structural problem, unknown fields
/// included), defaults the namespace, and validates. `label` names the object in
/// refusals (`SigningKey auth/web`).
fn typed<K>(value: &Value, label: String) -> Result<K, Problem>
where
    K: DeserializeOwned + Validate + Resource + HasSchema,
{
    let invalid = |problems| Problem::Invalid {
        object: label,
        problems,
    };
    let mut object: K = match read_object(value) {
        Ok(object) => object,
        Err(problems) => return Err(invalid(problems)),
    };
    object.meta_mut().namespace = Some(ObjectKey::of(object.meta()).namespace);
    let refused = object.validate();
    if !refused.is_empty() {
        return Err(invalid(refused));
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
                        Object::SigningKey(k) => Some(SigningKey::clone(&k)),
                        Object::AuthPolicy(_) | Object::Revocation(_) | Object::TokenClient(_) => {
                            None
                        }
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
                    "metadata: {name: web, namespace: auth}",
                    "metadata: {name: web}",
                )
                .replace("ES256", "XX"),
                "document 1: SigningKey default/web: spec.algorithm: unsupported value \"XX\"",
            ),
            (
                format!("{GOOD}---\n{GOOD}"),
                "document 2: SigningKey auth/web is defined twice in this file",
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

    /// Writes `text` into `file` and gives it the modification time `at`.
    fn write_at(file: &Path, text: &str, at: SystemTime) {
        std::fs::write(file, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn a_file_is_read_again_only_when_its_stamp_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let mut loader = ManifestLoader::default();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        write_at(&file, GOOD, long_ago);
        let (good, _) = loader.load(dir.path());
        assert_eq!(algorithm(&good), Some(crate::keys::Algorithm::ES256));

        // Same length, same old stamp: trusted, not read (what saves reading 10,000
        // files for one edit). Any real write moves the stamp.
        write_at(&file, &GOOD.replace("ES256", "ES384"), long_ago);
        let (same, _) = loader.load(dir.path());
        assert_eq!(algorithm(&same), Some(crate::keys::Algorithm::ES256));
        write_at(&file, &GOOD.replace("ES256", "ES384"), SystemTime::now());
        let (moved, _) = loader.load(dir.path());
        assert_eq!(algorithm(&moved), Some(crate::keys::Algorithm::ES384));
    }

    #[test]
    fn a_rewrite_within_the_clock_tick_of_a_read_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let mut loader = ManifestLoader::default();
        // The kernel's coarse clock gives both writes the same time: the stamp of the
        // first read proves nothing, so the file is read again.
        let tick = SystemTime::now();
        write_at(&file, GOOD, tick);
        let (first, _) = loader.load(dir.path());
        assert_eq!(algorithm(&first), Some(crate::keys::Algorithm::ES256));
        write_at(&file, &GOOD.replace("ES256", "ES384"), tick);
        let (second, _) = loader.load(dir.path());
        assert_eq!(algorithm(&second), Some(crate::keys::Algorithm::ES384));
    }

    #[test]
    fn many_files_are_parsed_in_parallel_with_the_same_outcome() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..100 {
            let text = GOOD.replace("name: web", &format!("name: web{i}"));
            std::fs::write(dir.path().join(format!("k{i:03}.yaml")), text).unwrap();
        }
        std::fs::write(dir.path().join("k050.yaml"), GOOD.replace("ES256", "XX999")).unwrap();
        let (desired, errors) = ManifestLoader::default().load(dir.path());
        assert_eq!(desired.signing_keys.len(), 99);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("k050.yaml"), "{errors:?}");
    }

    fn key_named(i: usize) -> String {
        format!(
            "---\n{}",
            GOOD.replace("name: web", &format!("name: web{i}"))
        )
    }

    #[test]
    fn a_big_file_is_read_and_an_edit_parses_only_the_edited_document() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let mut loader = ManifestLoader::default();
        // More documents than one YAML stream may hold under the parser's budget.
        let text: String = (0..2000).map(key_named).collect();
        std::fs::write(&file, &text).unwrap();
        let (before, errors) = loader.load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(before.signing_keys.len(), 2000);

        let edited = text.replacen(&key_named(7), &key_named(7).replace("ES256", "ES384"), 1);
        std::fs::write(&file, &edited).unwrap();
        let (after, errors) = loader.load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let id = |i: usize| ObjectKey {
            namespace: "auth".into(),
            name: format!("web{i}"),
        };
        assert_eq!(
            after.signing_keys[&id(7)].spec.algorithm,
            crate::keys::Algorithm::ES384
        );
        // The other documents were not parsed again: the very same objects.
        assert!(Arc::ptr_eq(
            &before.signing_keys[&id(8)],
            &after.signing_keys[&id(8)]
        ));
        assert!(!Arc::ptr_eq(
            &before.signing_keys[&id(7)],
            &after.signing_keys[&id(7)]
        ));
    }

    #[test]
    fn a_yaml_error_in_a_later_document_names_where_it_starts() {
        let text = format!("{}{}---\nkind: [unclosed\n", key_named(0), key_named(1));
        let errors = parse_file(Path::new("keys.yaml"), &text).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            matches!(
                &errors[0].problem,
                Problem::NotYaml {
                    starts_at_line: Some(11),
                    ..
                }
            ),
            "{:?}",
            errors[0].problem
        );
        let message = errors[0].to_string();
        assert!(
            message.contains("not valid YAML (in the document starting at line 11): "),
            "{message}"
        );
    }

    fn algorithm(desired: &Desired) -> Option<crate::keys::Algorithm> {
        desired
            .signing_keys
            .values()
            .next()
            .map(|k| k.spec.algorithm)
    }

    #[test]
    fn at_start_a_conflicting_duplicate_serves_neither_and_an_identical_one_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), GOOD.replace("ES256", "EdDSA")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut loader = ManifestLoader::default();
        let reload = loader.reload(dir.path());
        assert_eq!(reload.refused.len(), 2, "{:?}", reload.refused);
        let refusal = reload.refused[0].to_string();
        assert!(
            refusal.contains("SigningKey auth/web is defined differently in"),
            "{refusal}"
        );
        assert_eq!(reload.refused[0].effect, Effect::NothingServed);
        assert_eq!(
            algorithm(&reload.desired),
            None,
            "a guess could change the keys"
        );
        // Once one of them is gone, the other serves.
        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        let reload = loader.reload(dir.path());
        assert_eq!(
            algorithm(&reload.desired),
            Some(crate::keys::Algorithm::ES256)
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), GOOD).unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let reload = ManifestLoader::default().reload(dir.path());
        assert_eq!(reload.refused.len(), 1, "{:?}", reload.refused);
        assert!(
            reload.refused[0]
                .to_string()
                .contains("is also defined, identically, in"),
            "{:?}",
            reload.refused
        );
        assert_eq!(
            algorithm(&reload.desired),
            Some(crate::keys::Algorithm::ES256)
        );
    }

    #[test]
    fn a_newcomer_duplicate_is_refused_and_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        // The newcomer sorts first: the old rule (first by name) would pick it.
        let (served, newcomer) = (dir.path().join("z-keys.yaml"), dir.path().join("dup.yaml"));
        std::fs::write(&served, GOOD).unwrap();
        let mut loader = ManifestLoader::default();
        let before = loader.reload(dir.path()).desired;
        std::fs::write(&newcomer, GOOD.replace("ES256", "EdDSA")).unwrap();
        let reload = loader.reload(dir.path());
        assert_eq!(reload.desired, before, "the served object keeps serving");
        assert_eq!(reload.refused.len(), 1);
        assert_eq!(
            reload.refused[0].error.file, newcomer,
            "the newcomer is blamed"
        );
        assert!(matches!(
            &reload.refused[0].error.problem,
            Problem::ServedFromOtherFile { serving, .. } if *serving == served
        ));
        assert!(reload.refused[0].error.to_string().contains(&format!(
            "is already defined in {}, which keeps serving it",
            served.display()
        )));
        assert_eq!(reload.refused[0].effect, Effect::OtherFileServes);
        // Reported once, not at every reload.
        assert!(loader.reload(dir.path()).refused.is_empty());
        std::fs::remove_file(&newcomer).unwrap();
        let reload = loader.reload(dir.path());
        assert_eq!(reload.desired, before);
        assert!(reload.refused.is_empty());
        // Once the served file lets go of the object, the other definition serves.
        std::fs::write(&newcomer, GOOD.replace("ES256", "EdDSA")).unwrap();
        loader.reload(dir.path());
        std::fs::remove_file(&served).unwrap();
        let reload = loader.reload(dir.path());
        assert_eq!(
            algorithm(&reload.desired),
            Some(crate::keys::Algorithm::EdDSA)
        );
    }

    #[test]
    fn an_emptied_file_keeps_its_objects_and_a_deleted_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut loader = ManifestLoader::default();
        let good = loader.reload(dir.path()).desired;
        for empty in ["", "  \n", "# nothing here\n---\n"] {
            std::fs::write(&file, empty).unwrap();
            let reload = loader.reload(dir.path());
            assert_eq!(reload.desired, good, "{empty:?}");
            assert_eq!(reload.refused.len(), 1, "{empty:?}");
            assert_eq!(reload.refused[0].effect, Effect::LastGoodServes);
            assert!(
                reload.refused[0]
                    .to_string()
                    .contains("holds no objects any more; to delete its objects, delete the file"),
                "{}",
                reload.refused[0]
            );
        }
        std::fs::write(&file, GOOD).unwrap();
        let reload = loader.reload(dir.path());
        assert_eq!(
            reload.accepted,
            std::slice::from_ref(&file),
            "a fix is reported"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(loader.reload(dir.path()).desired.signing_keys.is_empty());
        // A file that never held anything is no mistake.
        std::fs::write(&file, "").unwrap();
        assert!(loader.reload(dir.path()).refused.is_empty());
    }

    #[test]
    fn a_refusal_is_reported_once_per_content_and_says_what_serves() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&good, GOOD).unwrap();
        std::fs::write(&bad, GOOD.replace("web", "other").replace("ES256", "XX1")).unwrap();
        let mut loader = ManifestLoader::default();
        let first = loader.reload(dir.path());
        assert_eq!(first.refused.len(), 1);
        assert_eq!(first.refused[0].effect, Effect::NothingServed);
        assert!(
            first.refused[0]
                .to_string()
                .ends_with("(nothing from this file is served until it is fixed)")
        );
        // An unrelated change: the broken file is not reported again.
        std::fs::write(&good, GOOD.replace("ES256", "ES384")).unwrap();
        let unrelated = loader.reload(dir.path());
        assert!(unrelated.refused.is_empty(), "{:?}", unrelated.refused);
        assert!(unrelated.accepted.is_empty());
        // A new broken version is.
        std::fs::write(&bad, GOOD.replace("web", "other").replace("ES256", "XX2")).unwrap();
        assert_eq!(loader.reload(dir.path()).refused.len(), 1);
        std::fs::write(&bad, GOOD.replace("web", "other")).unwrap();
        let fixed = loader.reload(dir.path());
        assert_eq!(fixed.accepted, std::slice::from_ref(&bad));
        assert_eq!(fixed.desired.signing_keys.len(), 2);
        std::fs::write(&bad, "key: [unclosed\n").unwrap();
        let broken = loader.reload(dir.path());
        assert_eq!(broken.refused[0].effect, Effect::LastGoodServes);
        assert_eq!(broken.desired.signing_keys.len(), 2);
    }

    #[test]
    fn a_folder_that_cannot_be_listed_changes_nothing_and_is_reported_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keys.yaml"), GOOD).unwrap();
        let mut loader = ManifestLoader::default();
        let good = loader.reload(&dir).desired;
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = loader.reload(&dir);
        assert_eq!(gone.desired, good);
        assert_eq!(gone.refused.len(), 1);
        assert!(loader.reload(&dir).refused.is_empty());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keys.yaml"), GOOD).unwrap();
        let back = loader.reload(&dir);
        assert_eq!(back.accepted, [dir]);
        assert_eq!(back.desired, good);
    }

    #[test]
    fn token_clients_are_read_and_refused_by_field() {
        let client = "apiVersion: authplane.io/v1alpha1\nkind: TokenClient\nmetadata: {name: web, namespace: shop}\nspec:\n  signingKeyRef: {name: web}\n  audiences: [payments-api]\n  allowedClaims: [roles]\n";
        let objects = parse_file(Path::new("clients.yaml"), client).unwrap();
        let [Object::TokenClient(read)] = objects.as_slice() else {
            panic!("{objects:?}");
        };
        assert_eq!(read.spec.allowed_claims, ["roles"]);
        let errors: Vec<String> = parse_file(
            Path::new("clients.yaml"),
            &client.replace("[roles]", "[roles, sub]"),
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("TokenClient shop/web")
                && errors[0].contains("spec.allowedClaims: must not list a registered claim"),
            "{errors:?}"
        );
    }
}
