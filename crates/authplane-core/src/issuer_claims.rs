//! Which issuer paths a SigningKey may publish under this server, and which SigningKey
//! keeps a path that several claim.
//!
//! Every team's issuers share one server, so an issuer path is a shared name. Three
//! rules keep one team off another's:
//!
//! - **Same origin or not at all.** Discovery, the JWKS and `/revoke` are served for an
//!   issuer only when its scheme, host and port are those of the server's external URL.
//!   Any other issuer is *published elsewhere*: its keys still sign, and policies still
//!   name it by `signingKeyRef`, but nothing is served for it under this server's paths.
//! - **Under its own namespace.** On this server a SigningKey's issuer path must begin
//!   with `<external path>/<its namespace>/`, which is where default issuers live, unless
//!   the platform lists its namespace as *unconfined* (a flag of the server, which no
//!   namespace can set for itself).
//! - **First claim keeps it.** Of several SigningKeys claiming one path, the one that
//!   has carried that issuer longest serves it ([`ClaimRank`]); the others are reported,
//!   never swapped in. Never by name: a newcomer that sorts first takes nothing.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use jiff::Timestamp;

use crate::api::{IssuerError, SigningKey, issuer_path};
use crate::keys::store::{self, Data};

/// The server's external URL as issuers are matched against it, and the namespaces
/// whose SigningKeys may claim any path on it.
#[derive(Clone, Debug)]
pub struct IssuerScope {
    external_url: String,
    /// `None`: every issuer is served at its path, wherever its host (tests, tools).
    origin: Option<Origin>,
    /// The external URL's path, without a trailing slash.
    base: String,
    unconfined: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri.port_u16().or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        Some(Self {
            host: uri.host()?.to_ascii_lowercase(),
            scheme,
            port,
        })
    }
}

/// Where an issuer is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On this server: discovery, JWKS and `/revoke` under this path (`""` for the root).
    Here { path: String },
    /// On another origin: nothing is served for it here.
    Elsewhere,
}

/// Why an issuer may not be published on this server.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error(
        "its path {path:?} must be plain: segments of letters, digits, '-', '.', '_' and '~', no '.' or '..' segment, no percent-encoding"
    )]
    UnsafePath { path: String },
    #[error(
        "its path {path:?} is outside {prefix:?}: on this server a SigningKey of namespace {namespace} may publish an issuer only under {prefix}/ (the platform can let a namespace claim any path)"
    )]
    OutsideNamespace {
        path: String,
        prefix: String,
        namespace: String,
    },
}

impl IssuerScope {
    /// Issuers published on `external_url`, each namespace under its own path except the
    /// `unconfined` ones.
    pub fn new(
        external_url: &str,
        unconfined: impl IntoIterator<Item = String>,
    ) -> Result<Self, IssuerError> {
        let base = issuer_path(external_url)?;
        let uri: http::Uri = external_url.parse().map_err(|e| IssuerError::NotUrl {
            issuer: external_url.to_owned(),
            source: e,
        })?;
        Ok(Self {
            external_url: external_url.trim_end_matches('/').to_owned(),
            origin: Origin::of(&uri),
            base,
            unconfined: unconfined.into_iter().collect(),
        })
    }

    /// Every issuer served at its path, whatever its host or namespace: for tests and
    /// benchmarks of what comes after placement.
    pub fn anywhere(external_url: &str) -> Self {
        Self {
            external_url: external_url.trim_end_matches('/').to_owned(),
            origin: None,
            base: String::new(),
            unconfined: BTreeSet::new(),
        }
    }

    /// The base of default issuer URLs.
    pub fn external_url(&self) -> &str {
        &self.external_url
    }

    /// Whether SigningKeys of `namespace` may claim any path on this server.
    pub fn is_unconfined(&self, namespace: &str) -> bool {
        self.origin.is_none() || self.unconfined.contains(namespace)
    }

    /// Where the issuer of a SigningKey of `namespace` is published.
    pub fn place(&self, namespace: &str, issuer: &str) -> Result<Placement, PlacementError> {
        let path = issuer_path(issuer)?;
        let Some(origin) = &self.origin else {
            return Ok(Placement::Here { path });
        };
        let uri: http::Uri = issuer.parse().map_err(|e| IssuerError::NotUrl {
            issuer: issuer.to_owned(),
            source: e,
        })?;
        if Origin::of(&uri).as_ref() != Some(origin) {
            return Ok(Placement::Elsewhere);
        }
        if !is_plain_path(&path) {
            return Err(PlacementError::UnsafePath { path });
        }
        let prefix = format!("{}/{namespace}", self.base);
        let inside = path
            .strip_prefix(&prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'));
        if !inside && !self.unconfined.contains(namespace) {
            return Err(PlacementError::OutsideNamespace {
                path,
                prefix,
                namespace: namespace.to_owned(),
            });
        }
        Ok(Placement::Here { path })
    }
}

/// A path a verifier fetches exactly as written: no dot segments that a client would
/// resolve to another path, no escapes that could spell one.
fn is_plain_path(path: &str) -> bool {
    path.is_empty()
        || path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            })
        })
}

/// How long a SigningKey has claimed its issuer; of several claiming one path, the
/// earliest keeps it.
///
/// `since` is when its stored keys began to carry that issuer (the `issuer-since` entry
/// the driver keeps in the Secret or state file), never earlier than the object's
/// creation: that entry is in a Secret of the tenant's own namespace, so a forged one
/// gains nothing over the object's real age. A claim whose keys are not stored yet (or
/// still record another issuer) ranks after every stored one. Equal times are decided by
/// the object's uid (random, so not chosen by anyone); a complete tie, possible only
/// without uids (dev mode) and two keys first stored in the same instant, serves neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimRank {
    pub since: Option<Timestamp>,
    pub uid: Option<String>,
}

impl ClaimRank {
    /// The rank of `key` claiming `issuer`, with what its store holds.
    pub fn of(key: &SigningKey, stored: Option<&Data>, issuer: &str) -> Self {
        let recorded = stored
            .filter(|data| store::issuer(data) == Some(issuer))
            .and_then(store::issuer_since);
        let created = key.metadata.creation_timestamp.as_ref().map(|t| t.0);
        Self {
            since: recorded.map(|at| created.map_or(at, |created| at.max(created))),
            uid: key.metadata.uid.clone().filter(|uid| !uid.is_empty()),
        }
    }

    fn key(&self) -> (bool, Option<Timestamp>, bool, Option<&str>) {
        (
            self.since.is_none(),
            self.since,
            self.uid.is_none(),
            self.uid.as_deref(),
        )
    }
}

impl Ord for ClaimRank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for ClaimRank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a SigningKey claims, known from its spec (and its store) before its keys are
/// loaded: its issuer, how long it has carried it, and the Secrets it keeps keys in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyClaim {
    pub issuer: String,
    pub rank: ClaimRank,
    /// Secret names in the SigningKey's namespace (its key Secret and its signer
    /// Secret).
    pub secrets: Vec<String>,
}

impl KeyClaim {
    /// The claim of a valid SigningKey, its issuer defaulted under `external_url`.
    pub fn of(key: &SigningKey, external_url: &str, stored: Option<&Data>) -> Self {
        let issuer = key.issuer(external_url);
        Self {
            rank: ClaimRank::of(key, stored, &issuer),
            secrets: vec![key.secret_name(), key.signer_secret_name()],
            issuer,
        }
    }

    /// A claim of `issuer` ranked by nothing and holding no Secret: for a key alone on
    /// its path (tests, benchmarks).
    pub fn unranked(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            rank: ClaimRank::default(),
            secrets: Vec::new(),
        }
    }
}

/// How a SigningKey's issuer is published, as its status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publication {
    /// Served at this path (once its keys are loaded).
    Served { path: String },
    /// Its issuer is on another origin: nothing is served for it here.
    Elsewhere,
    /// Another SigningKey claimed the path first (`None`: several since the same
    /// instant, so none of them is served).
    Conflict {
        path: String,
        owner: Option<crate::api::ObjectKey>,
    },
    /// The path is not one its namespace may claim.
    NotAllowed(String),
}

impl Publication {
    /// How `id`, whose issuer `scope` places as `placement`, is published, given which
    /// SigningKey the serving index has on each path (a path it does not know yet is
    /// taken to be served: the index tells when that changes).
    pub fn of(
        id: &crate::api::ObjectKey,
        placement: Result<Placement, PlacementError>,
        owners: &imbl::HashMap<String, Option<crate::api::ObjectKey>>,
    ) -> Self {
        match placement {
            Err(e) => Publication::NotAllowed(e.to_string()),
            Ok(Placement::Elsewhere) => Publication::Elsewhere,
            Ok(Placement::Here { path }) => match owners.get(&path) {
                None => Publication::Served { path },
                Some(Some(owner)) if owner == id => Publication::Served { path },
                Some(owner) => Publication::Conflict {
                    owner: owner.clone(),
                    path,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> IssuerScope {
        IssuerScope::new("http://127.0.0.1:8080", ["platform".to_owned()]).unwrap()
    }

    #[test]
    fn an_issuer_of_this_origin_is_confined_to_its_namespace() {
        let here = |path: &str| Ok(Placement::Here { path: path.into() });
        let scope = scope();
        let place = |ns: &str, issuer: &str| scope.place(ns, issuer).map_err(|e| e.to_string());
        assert_eq!(
            place("auth", "http://127.0.0.1:8080/auth/web"),
            here("/auth/web")
        );
        assert_eq!(
            place("auth", "http://127.0.0.1:8080/auth/x/y/"),
            here("/auth/x/y")
        );
        for (ns, issuer) in [
            ("aaa", "http://127.0.0.1:8080/auth/web"),
            ("auth", "http://127.0.0.1:8080/auth"),
            ("auth", "http://127.0.0.1:8080/auth/"),
            ("auth", "http://127.0.0.1:8080/authx/web"),
            ("auth", "http://127.0.0.1:8080"),
        ] {
            let refused = place(ns, issuer).unwrap_err();
            assert!(refused.contains("is outside"), "{ns} {issuer}: {refused}");
        }
        for path in [
            "/auth/../shop/web",
            "/auth/./web",
            "/auth//web",
            "/auth/w%65b",
        ] {
            let refused = place("auth", &format!("http://127.0.0.1:8080{path}")).unwrap_err();
            assert!(refused.contains("must be plain"), "{path}: {refused}");
        }
        // The platform's namespaces may claim any path, the root included.
        assert_eq!(place("platform", "http://127.0.0.1:8080"), here(""));
        assert_eq!(
            place("platform", "http://127.0.0.1:8080/auth/web"),
            here("/auth/web")
        );
    }

    #[test]
    fn an_issuer_of_another_origin_is_published_elsewhere() {
        let scope = scope();
        for issuer in [
            "https://evil.example/auth/web",
            "https://127.0.0.1:8080/auth/web",
            "http://127.0.0.1:8081/auth/web",
            "http://localhost:8080/auth/web",
        ] {
            assert_eq!(
                scope.place("auth", issuer).unwrap(),
                Placement::Elsewhere,
                "{issuer}"
            );
        }
        let default_port = IssuerScope::new("https://auth.example/base/", []).unwrap();
        assert_eq!(
            default_port
                .place("shop", "https://AUTH.example:443/base/shop/web")
                .unwrap(),
            Placement::Here {
                path: "/base/shop/web".into()
            }
        );
        assert!(
            default_port
                .place("shop", "https://auth.example/shop/web")
                .is_err()
        );
    }

    #[test]
    fn the_earliest_claim_ranks_first_and_a_pending_one_last() {
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let rank = |since: Option<Timestamp>, uid: Option<&str>| ClaimRank {
            since,
            uid: uid.map(str::to_owned),
        };
        let mut ranks = [
            rank(None, Some("a")),
            rank(at("2026-01-02T00:00:00Z"), Some("a")),
            rank(at("2026-01-01T00:00:00Z"), Some("z")),
            rank(at("2026-01-01T00:00:00Z"), Some("b")),
            rank(at("2026-01-01T00:00:00Z"), None),
        ];
        ranks.sort();
        assert_eq!(
            ranks.iter().map(|r| r.uid.as_deref()).collect::<Vec<_>>(),
            [Some("b"), Some("z"), None, Some("a"), Some("a")]
        );
        assert!(ranks[3].since.is_some() && ranks[4].since.is_none());
    }

    #[test]
    fn a_recorded_claim_is_never_older_than_its_object() {
        let key: SigningKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "x", "namespace": "aaa", "uid": "u-x",
                         "creationTimestamp": "2026-05-01T00:00:00Z"},
            "spec": {},
        }))
        .unwrap();
        let issuer = key.issuer("http://127.0.0.1:8080");
        let stored = |issuer: &str, since: &str| -> Data {
            [
                (store::ISSUER.to_owned(), issuer.to_owned()),
                (store::ISSUER_SINCE.to_owned(), since.to_owned()),
            ]
            .into()
        };
        // A forged entry in the tenant's own Secret.
        let forged = stored(&issuer, "1970-01-01T00:00:00Z");
        assert_eq!(
            ClaimRank::of(&key, Some(&forged), &issuer).since,
            Some("2026-05-01T00:00:00Z".parse().unwrap())
        );
        let later = stored(&issuer, "2026-06-01T00:00:00Z");
        assert_eq!(
            ClaimRank::of(&key, Some(&later), &issuer).since,
            Some("2026-06-01T00:00:00Z".parse().unwrap())
        );
        // Keys that still record another issuer, or none stored: pending.
        let other = stored("http://127.0.0.1:8080/aaa/old", "2026-05-01T00:00:00Z");
        assert_eq!(ClaimRank::of(&key, Some(&other), &issuer).since, None);
        assert_eq!(ClaimRank::of(&key, None, &issuer).since, None);
        assert_eq!(
            ClaimRank::of(&key, None, &issuer).uid.as_deref(),
            Some("u-x")
        );
    }
}
