//! The client's address, for limits per client: the peer's, or, behind proxies that the
//! operator says are there (`--trusted-proxy-hops N`), the address the outermost of them
//! saw, from `X-Forwarded-For`.
//!
//! Each proxy appends the address of its own peer to `X-Forwarded-For`; the client can
//! write anything before that. So only the last N entries are believed, and of those the
//! leftmost is the client: the last entry with one proxy (an ingress), the one before it
//! with two (a load balancer, then an ingress). This is what tower_governor's
//! `SmartIpKeyExtractor` gets wrong: it takes the leftmost entry, which the client wrote.
//! It holds only when nothing but those proxies can reach authplane (a NetworkPolicy):
//! a client reaching it directly could write its own entry.

use std::net::IpAddr;

use axum::http::HeaderMap;

const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address of a request from `peer`, with `trusted_hops` proxies in front.
/// With fewer entries than that, the request passed fewer proxies than configured: the
/// leftmost entry, the earliest a proxy recorded. Without any, or with an entry that is
/// not an address, the peer.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let Some(entry) = entries
        .len()
        .checked_sub(trusted_hops)
        .map_or(entries.first(), |i| entries.get(i))
    else {
        return peer;
    };
    parse(entry).unwrap_or(peer)
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, sometimes with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse() {
        return Some(address);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

/// The client of a failed request, as a limit key: an IPv4 address, or an IPv6 /64 (one
/// host commonly has a whole /64 to choose addresses from).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Self((u128::from(v6) & !((1 << 64) - 1)) | 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    const PEER: &str = "10.0.0.9";

    fn client(values: &[&str], hops: usize) -> String {
        client_address(PEER.parse().unwrap(), &headers(values), hops).to_string()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        assert_eq!(client(&["192.0.2.1"], 0), PEER);
    }

    #[test]
    fn the_entries_the_trusted_proxies_appended_name_the_client() {
        // The client wrote the first entry; the ingress appended the second.
        assert_eq!(client(&["203.0.113.66, 192.0.2.1"], 1), "192.0.2.1");
        // Two proxies: the load balancer saw the client, the ingress saw the balancer.
        assert_eq!(
            client(&["203.0.113.66, 192.0.2.1, 10.0.0.2"], 2),
            "192.0.2.1"
        );
        // Several headers count as one list, in order.
        assert_eq!(client(&["203.0.113.66", "192.0.2.1"], 1), "192.0.2.1");
        assert_eq!(client(&["[2001:db8::1]:4711"], 1), "2001:db8::1");
        assert_eq!(client(&["192.0.2.1:4711"], 1), "192.0.2.1");
    }

    #[test]
    fn fewer_entries_or_garbage_fall_back() {
        assert_eq!(client(&["192.0.2.1"], 2), "192.0.2.1");
        assert_eq!(client(&[], 1), PEER);
        assert_eq!(client(&["unknown"], 1), PEER);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = ClientKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        // An IPv4-mapped address is the IPv4 address, and no IPv6 /64 collides with one.
        assert_eq!(
            ClientKey::of("::ffff:192.0.2.1".parse().unwrap()),
            ClientKey::of("192.0.2.1".parse().unwrap())
        );
        assert_ne!(
            ClientKey::of("::".parse().unwrap()),
            ClientKey::of("0.0.0.0".parse().unwrap())
        );
    }
}
