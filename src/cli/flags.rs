//! Flag values checked at start: a server that starts with a bad `--external-url` mints
//! tokens nobody can verify, so it must not start at all.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::tokens::location::{CaCertificates, Password, StoreLocation};

/// Checks `--external-url`: an absolute `http` or `https` URL with a host, and no
/// query, fragment or credentials (issuer URLs carry none, per OpenID Connect
/// Discovery). Returns it without a trailing slash; otherwise unchanged, because it
/// becomes part of every default issuer (`iss`) that verifiers compare byte for byte.
pub fn external_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{text:?} must start with https:// (or http://), not {}:",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} must not have a query or fragment: it is the base of issuer URLs"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry credentials"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} contains whitespace"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Parses an RFC 3339 instant (`--before`), saying what is expected when it is not one.
pub fn rfc3339_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an RFC 3339 time: give a date, a time and an offset, such as 2026-01-31T12:00:00Z (UTC) or 2026-01-31T13:00:00+01:00"
        )
    })
}

/// Parses a listen address, `HOST:PORT` or `[IPv6]:PORT`; a host name is resolved now,
/// and the first address it resolves to is used.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} must be HOST:PORT, such as 127.0.0.1:8080"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: {port:?} is not a port number (0 to 65535)"))?;
    if host.is_empty() {
        return Err(format!(
            "{text:?} has no host; use 0.0.0.0:{port} for every interface"
        ));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: cannot resolve {host:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?}: {host:?} resolves to no address"))
}

/// `--token-store`, `--token-store-password-file`, `--token-store-ca-file`.
pub type TokenStoreFlags = (
    Option<StoreLocation>,
    Option<Password>,
    Option<CaCertificates>,
);

/// `--token-store` with its `--token-store-password-file` and `--token-store-ca-file`,
/// checked together, the same for `run` and `dev`: a password goes with a Redis, a CA
/// with `rediss://`. The URL is parsed here rather than by clap, whose errors would echo
/// its password.
pub fn token_store(
    store: Option<&str>,
    password_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> Result<TokenStoreFlags, String> {
    let store = store.map(StoreLocation::parse).transpose()?;
    let password = match password_file {
        Some(_) if !store.as_ref().is_some_and(StoreLocation::is_redis) => {
            return Err(
                "--token-store-password-file goes with a redis:// or rediss:// --token-store"
                    .into(),
            );
        }
        Some(file) => Some(Password::read(file)?),
        None => None,
    };
    let ca = match ca_file {
        Some(_) if !matches!(&store, Some(StoreLocation::Redis(url)) if url.starts_with("rediss://")) =>
        {
            return Err("--token-store-ca-file goes with a rediss:// --token-store".into());
        }
        Some(file) => Some(CaCertificates::read(file)?),
        None => None,
    };
    Ok((store, password, ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_urls_are_absolute_http_urls_with_a_host() {
        assert_eq!(
            external_url("https://auth.example.com/").unwrap(),
            "https://auth.example.com"
        );
        assert_eq!(
            external_url("http://127.0.0.1:8080/base").unwrap(),
            "http://127.0.0.1:8080/base"
        );
        for (bad, says) in [
            ("not a url", "is not a URL"),
            ("auth.example.com", "is not a URL"),
            ("ftp://auth.example.com", "must start with https://"),
            ("https://auth.example.com/?a=b", "query or fragment"),
            ("https://auth.example.com/#x", "query or fragment"),
            ("https://user:pw@auth.example.com", "credentials"),
            ("", "is not a URL"),
        ] {
            let error = external_url(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn times_are_rfc_3339_and_a_refusal_shows_one() {
        assert_eq!(
            rfc3339_time("2026-01-31T13:00:00+01:00").unwrap(),
            "2026-01-31T12:00:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        for bad in ["yesterday", "2026-01-31", "2026-01-31T12:00:00"] {
            let error = rfc3339_time(bad).unwrap_err();
            assert!(
                error.contains("RFC 3339") && error.contains("2026-01-31T12:00:00Z"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn listen_addresses_accept_ips_and_host_names() {
        assert_eq!(
            listen_addr("127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(listen_addr("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
        let local = listen_addr("localhost:18082").unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 18082);
        for (bad, says) in [
            ("8080", "HOST:PORT"),
            ("localhost:http", "not a port number"),
            (":8080", "no host"),
            ("no-such-host.invalid:80", "cannot resolve"),
        ] {
            let error = listen_addr(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }
}
