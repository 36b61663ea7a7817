//! Where the families live, as `--token-store` names it: a redb file (one replica), or a
//! Redis (`redis://`, `rediss://` with TLS) that several replicas share. A Redis
//! password, from the URL or a file, is never shown: not in errors, logs or `Debug`.

use std::path::{Path, PathBuf};

use super::redis::redacted;

#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    File(PathBuf),
    Redis(String),
}

impl StoreLocation {
    /// `redis://…` and `rediss://…` are a Redis; anything else with `://` is refused (a
    /// typo such as `reddis://` must not become a file of that name); the rest is a
    /// file path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis" | "rediss") => {
                let url = url::Url::parse(text)
                    .map_err(|e| format!("the token store {} is not a URL: {e}", redacted(text)))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("the token store {} names no host", redacted(text)));
                }
                Ok(Self::Redis(text.to_owned()))
            }
            Some(other) if !other.contains('/') => Err(format!(
                "the token store must be a file, redis://… or rediss://…, not a {other}:// URL"
            )),
            _ if text.is_empty() => Err("the token store must not be empty".into()),
            _ => Ok(Self::File(PathBuf::from(text))),
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// What logs and errors show: the path, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Redis(url) => redacted(url),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Redis(_) => f.debug_tuple("Redis").field(&self.shown()).finish(),
        }
    }
}

/// A Redis password read from a file (a mounted Secret): the file's content without the
/// line break editors and `kubectl create secret --from-file` leave at its end.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token store password {}: {e}", path.display()))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(format!(
                "the token store password file {} is empty",
                path.display()
            ));
        }
        Ok(Self(password.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The CA a `rediss://` server's certificate must chain to (`--token-store-ca-file`):
/// PEM, checked to hold at least one certificate when read.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificates(Vec<u8>);

impl CaCertificates {
    pub fn read(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("reading the token store CA {}: {e}", path.display()))?;
        let certificates = ::pem::parse_many(&pem)
            .map_err(|e| format!("the token store CA {} is not PEM: {e}", path.display()))?;
        if !certificates.iter().any(|c| c.tag() == "CERTIFICATE") {
            return Err(format!(
                "the token store CA {} holds no certificate",
                path.display()
            ));
        }
        Ok(Self(pem))
    }

    pub fn pem(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CaCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaCertificates({} bytes of PEM)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_files_and_typos() {
        assert_eq!(
            StoreLocation::parse("redis://127.0.0.1:6379/2").unwrap(),
            StoreLocation::Redis("redis://127.0.0.1:6379/2".into())
        );
        assert!(
            StoreLocation::parse("rediss://redis.auth.svc:6380")
                .unwrap()
                .is_redis()
        );
        assert_eq!(
            StoreLocation::parse("/var/lib/authplane/tokens.redb").unwrap(),
            StoreLocation::File("/var/lib/authplane/tokens.redb".into())
        );
        let typo = StoreLocation::parse("reddis://host").unwrap_err();
        assert!(typo.contains("not a reddis:// URL"), "{typo}");
        assert!(StoreLocation::parse("redis://").is_err());
        assert!(StoreLocation::parse("").is_err());
    }

    #[test]
    fn a_password_is_never_shown() {
        let location = StoreLocation::parse("redis://app:s3cret@redis:6379/0").unwrap();
        assert!(!location.shown().contains("s3cret"), "{}", location.shown());
        assert!(!format!("{location:?}").contains("s3cret"));
        let broken = StoreLocation::parse("redis://app:s3cret@[::1/").unwrap_err();
        assert!(!broken.contains("s3cret"), "{broken}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let password = Password::read(&file).unwrap();
        assert_eq!(password.expose(), "s3cret");
        assert!(!format!("{password:?}").contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(Password::read(&file).is_err());
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not pem").unwrap();
        assert!(CaCertificates::read(&file).is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&file, key.serialize_pem()).unwrap();
        let error = CaCertificates::read(&file).unwrap_err();
        assert!(error.contains("holds no certificate"), "{error}");
        let ca = rcgen::CertificateParams::new(vec!["ca".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&file, ca.pem()).unwrap();
        assert!(CaCertificates::read(&file).is_ok());
        assert!(CaCertificates::read(dir.path().join("none").as_path()).is_err());
    }
}
