//! The client's address, for limits per client: the peer's, or, behind proxies that the
//! operator says are there, the address the outermost of them saw, from
//! `X-Forwarded-For`. Every limit per client address (`/token`, `/revoke`) asks here.
//!
//! Each proxy appends the address of its own peer to `X-Forwarded-For`; the client can
//! write anything before that. Two ways to say which entries to believe:
//!
//! - `--trusted-proxy-hops N` (Envoy's `xff_num_trusted_hops`): the last N entries, of
//!   which the leftmost is the client: the last entry with one proxy (an ingress), the
//!   one before it with two (a load balancer, then an ingress). It holds only when
//!   nothing but those proxies can reach authplane (a NetworkPolicy).
//! - `--trusted-proxy-cidrs` (nginx's `set_real_ip_from` with `real_ip_recursive on`,
//!   Envoy's trusted CIDRs): a peer outside the ranges is the client, whatever it wrote;
//!   from a peer inside them, the entries are walked from the right, skipping those in
//!   the ranges (more trusted proxies): the first one outside them is the client (a
//!   trusted proxy wrote it). Only when every entry is a trusted address is the leftmost
//!   taken, and that one a trusted proxy wrote too. A client reaching authplane
//!   directly gains nothing by writing the header.
//!
//! This is what tower_governor's `SmartIpKeyExtractor` gets wrong: it takes the leftmost
//! entry, which the client wrote.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

const FORWARDED_FOR: &str = "x-forwarded-for";

/// Which `X-Forwarded-For` entries are believed (none by default: the peer is the client).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TrustedProxies {
    /// The peer is the client.
    #[default]
    None,
    /// This many proxies in front, each appending one entry.
    Hops(usize),
    /// Proxies at these addresses (IPv4 and IPv6 ranges), however many.
    Ranges(Vec<IpNet>),
}

impl TrustedProxies {
    /// `--trusted-proxy-hops` or `--trusted-proxy-cidrs` (never both: the flags conflict).
    pub fn of(hops: usize, ranges: &[IpNet]) -> Self {
        match (hops, ranges) {
            (_, [_, ..]) => Self::Ranges(ranges.to_vec()),
            (0, []) => Self::None,
            (hops, []) => Self::Hops(hops),
        }
    }

    /// The client's address of a request from `peer`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        match self {
            Self::None => peer,
            Self::Hops(hops) => through_hops(peer, headers, *hops),
            Self::Ranges(ranges) => through_ranges(peer, headers, ranges),
        }
    }
}

/// A `--trusted-proxy-cidrs` entry: a range (`10.0.0.0/8`, `fd00::/8`) or one address.
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(range) = text.parse::<IpNet>() {
        return Ok(range.trunc());
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("{text:?} is not an address range such as 10.0.0.0/8 or fd00::/8, nor an address")
    })
}

fn entries(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect()
}

/// With `trusted_hops` proxies in front. With fewer entries than that, the request passed
/// fewer proxies than configured: the leftmost entry, the earliest a proxy recorded.
/// Without any, or with an entry that is not an address, the peer.
fn through_hops(peer: IpAddr, headers: &HeaderMap, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let entries = entries(headers);
    let Some(entry) = entries
        .len()
        .checked_sub(trusted_hops)
        .map_or(entries.first(), |i| entries.get(i))
    else {
        return peer;
    };
    parse(entry).unwrap_or(peer)
}

/// With proxies at `ranges`: from a trusted peer, the rightmost entry outside them. An
/// entry that is not an address, met before that one, makes it the peer: what lies to
/// its left cannot be told apart from what a client wrote.
fn through_ranges(peer: IpAddr, headers: &HeaderMap, ranges: &[IpNet]) -> IpAddr {
    let trusted = |address: IpAddr| {
        let address = address.to_canonical();
        ranges.iter().any(|range| range.contains(&address))
    };
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for entry in entries(headers).iter().rev() {
        let Some(address) = parse(entry) else {
            return peer;
        };
        client = address;
        if !trusted(address) {
            break;
        }
    }
    client
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
    /// The key's bits (for a shared limit's key).
    pub fn bits(self) -> u128 {
        self.0
    }

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
        TrustedProxies::Hops(hops)
            .client_address(PEER.parse().unwrap(), &headers(values))
            .to_string()
    }

    fn through(peer: &str, values: &[&str], ranges: &[&str]) -> String {
        let ranges = ranges.iter().map(|r| parse_range(r).unwrap()).collect();
        TrustedProxies::Ranges(ranges)
            .client_address(peer.parse().unwrap(), &headers(values))
            .to_string()
    }

    #[test]
    fn a_peer_outside_the_trusted_ranges_is_the_client_whatever_it_writes() {
        assert_eq!(
            through("198.51.100.7", &["192.0.2.1"], &["10.0.0.0/8"]),
            "198.51.100.7"
        );
        assert_eq!(
            through("2001:db8::7", &["192.0.2.1"], &["10.0.0.0/8", "fd00::/8"]),
            "2001:db8::7"
        );
    }

    #[test]
    fn the_walk_from_the_right_skips_trusted_proxies_and_stops_at_the_first_other() {
        let ranges = ["10.0.0.0/8", "fd00::/8", "192.0.2.250"];
        // An ingress (10.0.0.9) behind a load balancer (10.1.0.1): the client is what
        // the balancer saw, not what the client wrote before it.
        assert_eq!(
            through(
                "10.0.0.9",
                &["203.0.113.66, 198.51.100.7, 10.1.0.1"],
                &ranges
            ),
            "198.51.100.7"
        );
        // IPv6 proxies, several headers, a single trusted address, ports.
        assert_eq!(
            through(
                "fd00::2",
                &["203.0.113.66", "[2001:db8::5]:4711, fd00::1"],
                &ranges
            ),
            "2001:db8::5"
        );
        assert_eq!(
            through("10.0.0.9", &["198.51.100.7:80, 192.0.2.250"], &ranges),
            "198.51.100.7"
        );
        // An IPv4-mapped peer is its IPv4 address.
        assert_eq!(
            through("::ffff:10.0.0.9", &["198.51.100.7"], &ranges),
            "198.51.100.7"
        );
        // Every entry trusted: the leftmost, which a trusted proxy wrote.
        assert_eq!(
            through("10.0.0.9", &["10.2.0.3, 10.1.0.1"], &ranges),
            "10.2.0.3"
        );
        // No header: the peer.
        assert_eq!(through("10.0.0.9", &[], &ranges), "10.0.0.9");
    }

    #[test]
    fn malformed_entries_give_the_peer() {
        let ranges = ["10.0.0.0/8"];
        for garbage in ["unknown", "", "10.0.0.300", "1.2.3.4.5", "[::1", "a, b, c"] {
            assert_eq!(
                through("10.0.0.9", &[garbage, "10.1.0.1"], &ranges),
                "10.0.0.9",
                "{garbage:?}"
            );
        }
        // Garbage the client wrote left of its real address is never reached.
        assert_eq!(
            through("10.0.0.9", &["unknown, 198.51.100.7"], &ranges),
            "198.51.100.7"
        );
    }

    #[test]
    fn ranges_parse_as_cidrs_or_addresses() {
        assert_eq!(parse_range("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_range("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(parse_range(" fd00::/8 ").unwrap().to_string(), "fd00::/8");
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0.0/"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert_eq!(TrustedProxies::of(0, &[]), TrustedProxies::None);
        assert_eq!(TrustedProxies::of(2, &[]), TrustedProxies::Hops(2));
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
