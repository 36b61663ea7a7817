//! Which addresses an external issuer's URL may lead to. A tenant names the URL, and
//! authplane fetches it from inside the cluster: loopback is authplane's own pod (its
//! sidecars' admin ports), and link-local addresses are where clouds serve instance
//! metadata and credentials (169.254.169.254). Both are refused unless allowed.
//!
//! The check is made on the addresses a name resolves to, by the resolver the HTTP client
//! connects with, so a name that resolves to a public address when checked and to
//! 127.0.0.1 when fetched (DNS rebinding) cannot get through: the addresses checked are
//! the ones connected to. Literal addresses in URLs are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::FetchSettings;

/// What kind of address an external issuer's URL leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1, and the unspecified 0.0.0.0 and :: (which reach the local host).
    Loopback,
    /// 169.254.0.0/16, fe80::/10, and the cloud metadata addresses outside them
    /// (AWS's fd00:ec2::254, Alibaba's 100.100.100.200).
    LinkLocal,
    Other,
}

impl AddressClass {
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => {
                if v4.is_loopback() || v4.is_unspecified() || v4.octets()[0] == 0 {
                    Self::Loopback
                } else if v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200) {
                    Self::LinkLocal
                } else {
                    Self::Other
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_loopback() || v6.is_unspecified() {
                    Self::Loopback
                } else if v6.segments()[0] & 0xffc0 == 0xfe80
                    || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                {
                    Self::LinkLocal
                } else {
                    Self::Other
                }
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local (cloud metadata)",
            Self::Other => "other",
        }
    }

    /// The flag that allows this class.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Loopback => "--allow-loopback-issuers (dev mode allows it)",
            Self::LinkLocal => "--allow-link-local-issuers",
            Self::Other => "",
        }
    }

    pub fn allowed(self, settings: &FetchSettings) -> bool {
        match self {
            Self::Loopback => settings.allow_loopback,
            Self::LinkLocal => settings.allow_link_local,
            Self::Other => true,
        }
    }
}

/// A name that resolved only to refused addresses (the first refused class is named).
#[derive(Debug, thiserror::Error)]
#[error("{host} leads only to {} addresses, which are refused (allowed with {})", .class.as_str(), .class.flag())]
pub struct RefusedAddress {
    pub host: String,
    pub class: AddressClass,
}

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {host} failed: {source}")]
pub struct DnsFailed {
    pub host: String,
    source: std::io::Error,
}

/// The HTTP client's resolver: the system's, less the addresses that are refused.
pub struct GuardedResolver {
    pub settings: FetchSettings,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let settings = self.settings.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| DnsFailed {
                    host: host.clone(),
                    source,
                })?
                .collect();
            let refused = resolved
                .iter()
                .map(|a| AddressClass::of(a.ip()))
                .find(|class| !class.allowed(&settings));
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| AddressClass::of(a.ip()).allowed(&settings))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(RefusedAddress {
                    host,
                    class: refused.unwrap_or(AddressClass::Other),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl GuardedResolver {
    pub fn new(settings: FetchSettings) -> Arc<Self> {
        Arc::new(Self { settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(address: &str) -> AddressClass {
        AddressClass::of(address.parse().unwrap())
    }

    #[test]
    fn loopback_link_local_and_metadata_addresses_are_told_apart() {
        for loopback in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(class(loopback), AddressClass::Loopback, "{loopback}");
        }
        for metadata in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(class(metadata), AddressClass::LinkLocal, "{metadata}");
        }
        // Private addresses are where in-cluster providers (Keycloak) live: allowed.
        for other in [
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert_eq!(class(other), AddressClass::Other, "{other}");
        }
    }
}
