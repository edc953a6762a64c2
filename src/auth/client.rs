//! Who the client is on the network: its address (believing
//! `x-forwarded-for` only from our own proxies) and its user agent, as
//! recorded in sessions and audit rows and as counted by login throttling.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use http::HeaderMap;
use ipnet::IpNet;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Longest user agent kept; longer ones are cut (it is free text a client
/// chooses, recorded on every audit row).
const MAX_USER_AGENT_CHARS: usize = 512;

/// Most `x-forwarded-for` hops looked at; a longer chain is someone padding
/// it, and the hops nearest to us are the ones that matter.
const MAX_FORWARDED_HOPS: usize = 32;

/// The networks of the proxies in front of the server, whose
/// `x-forwarded-for` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Proxies in these networks (single addresses are /32 or /128).
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// Whether `ip` is one of our proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Parses one `TRUSTED_PROXIES` entry: `10.0.0.0/8`, `fd00::/8`,
    /// `10.0.0.2` or `::1`.
    pub fn parse_entry(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        IpNet::from_str(text)
            .map(|net| net.trunc())
            .or_else(|_| IpAddr::from_str(text).map(|ip| IpNet::from(ip.to_canonical())))
            .map_err(|_| format!("'{text}' is neither an IP address nor a CIDR range"))
    }
}

/// The client's address and software.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client IP: the TCP peer, or the nearest untrusted hop of
    /// `x-forwarded-for` when the peer is a trusted proxy. IPv4-mapped IPv6
    /// addresses are shown as IPv4. `None` when unknown (never in the server).
    pub ip: Option<IpAddr>,
    /// The `user-agent` header (gRPC clients always send one), cut to 512
    /// characters.
    pub user_agent: String,
    /// The API key the call was made with, if any (audit rows name it).
    pub api_key: Option<uuid::Uuid>,
}

impl ClientInfo {
    /// Reads the client from an HTTP/2 request.
    pub fn from_http<B>(request: &http::Request<B>, trusted: &TrustedProxies) -> Self {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            // Over TLS the TCP details sit inside tonic's TLS wrapper.
            .or_else(|| {
                request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.get_ref().remote_addr())
            });
        Self::from_parts(peer, request.headers(), trusted)
    }

    /// The client from a peer address and headers.
    pub fn from_parts(
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
        trusted: &TrustedProxies,
    ) -> Self {
        let peer = peer.map(|p| p.ip().to_canonical());
        let ip = match peer {
            Some(peer) if trusted.contains(peer) => Some(forwarded_client(peer, headers, trusted)),
            other => other,
        };
        let user_agent = headers
            .get(http::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
            .chars()
            .take(MAX_USER_AGENT_CHARS)
            .collect();
        Self {
            ip,
            user_agent,
            api_key: None,
        }
    }

    /// The address as stored in sessions and audit rows.
    pub fn ip_text(&self) -> String {
        self.ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// For an IPv6 client, its /48: the block one site is usually given, so
    /// that a whole site's many /64s also share a (looser) login limit.
    pub fn network_bucket(&self) -> Option<String> {
        match self.ip {
            Some(IpAddr::V6(ip)) => {
                let s = ip.segments();
                Some(format!(
                    "{}/48",
                    Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0)
                ))
            }
            _ => None,
        }
    }

    /// The key login throttling counts this client under: the IPv4 address,
    /// or the /64 network of an IPv6 address (one host usually owns a whole
    /// /64, so counting single IPv6 addresses would let it rotate freely).
    pub fn throttle_bucket(&self) -> String {
        match self.ip {
            Some(IpAddr::V4(ip)) => ip.to_string(),
            Some(IpAddr::V6(ip)) => {
                let segments = ip.segments();
                let network = Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                );
                format!("{network}/64")
            }
            None => "unknown".into(),
        }
    }
}

/// Walks `x-forwarded-for` (every header value, in order) from the hop
/// nearest to us outwards: our own proxies are skipped, the first other
/// address is the client. A hop that is not an address ends the walk: what
/// lies beyond it cannot be believed, so the client is the last proxy we
/// trusted. When every hop is ours, the client is the furthest of them.
fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    // Split the raw bytes: one hop a client filled with non-ASCII bytes
    // must not make the proxies' own hops unreadable.
    let hops: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|hop| String::from_utf8_lossy(hop).trim().to_owned())
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        let Some(address) = parse_hop(hop) else {
            return client;
        };
        client = address;
        if !trusted.contains(address) {
            return address;
        }
    }
    client
}

/// One hop: `198.51.100.7`, `198.51.100.7:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`; canonical (IPv4-mapped IPv6
/// becomes IPv4).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    let address = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<IpAddr>().ok())
        })?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers.insert("user-agent", "grpcurl/1.9".parse().unwrap());
        headers
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn client(peer: &str, values: &[&str], proxies: &[&str]) -> String {
        let peer: SocketAddr = peer.parse().unwrap();
        ClientInfo::from_parts(Some(peer), &headers(values), &trusted(proxies)).ip_text()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        assert_eq!(
            client("203.0.113.9:5000", &["198.51.100.1"], &[]),
            "203.0.113.9"
        );
        let info = ClientInfo::from_parts(
            Some("203.0.113.9:5000".parse().unwrap()),
            &headers(&[]),
            &trusted(&[]),
        );
        assert_eq!(info.user_agent, "grpcurl/1.9");
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let proxies = ["10.0.0.0/8"];
        assert_eq!(
            client("10.0.0.2:443", &["198.51.100.1, 10.0.0.7"], &proxies),
            "198.51.100.1"
        );
        // A client cannot choose its address by prepending hops.
        assert_eq!(
            client("10.0.0.2:443", &["1.2.3.4, 198.51.100.1"], &proxies),
            "198.51.100.1"
        );
    }

    #[test]
    fn every_header_value_counts_in_order() {
        assert_eq!(
            client(
                "10.0.0.2:443",
                &["198.51.100.1", "203.0.113.5, 10.1.1.1"],
                &["10.0.0.0/8"]
            ),
            "203.0.113.5"
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let proxies = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(
            client("10.0.0.2:443", &["198.51.100.1:5555"], &proxies),
            "198.51.100.1"
        );
        assert_eq!(
            client("10.0.0.2:443", &["[2001:db8::7]:5555"], &proxies),
            "2001:db8::7"
        );
        assert_eq!(
            client("10.0.0.2:443", &["[2001:db8::7]"], &proxies),
            "2001:db8::7"
        );
        // An IPv4-mapped peer matches an IPv4 proxy range, and a mapped hop
        // is reported as IPv4.
        assert_eq!(
            client("[::ffff:10.0.0.2]:443", &["::ffff:198.51.100.1"], &proxies),
            "198.51.100.1"
        );
        assert_eq!(
            client("[fd00::1]:443", &["198.51.100.1"], &proxies),
            "198.51.100.1"
        );
    }

    #[test]
    fn a_non_ascii_hop_does_not_hide_the_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"6.6.6.6\x80, 198.51.100.7").unwrap(),
        );
        let info = ClientInfo::from_parts(
            Some("10.0.0.2:443".parse().unwrap()),
            &headers,
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(info.ip_text(), "198.51.100.7");
    }

    #[test]
    fn a_junk_hop_stops_the_walk_at_the_last_trusted_proxy() {
        let proxies = ["10.0.0.0/8"];
        assert_eq!(
            client(
                "10.0.0.2:443",
                &["198.51.100.1, unknown, 10.0.0.9"],
                &proxies
            ),
            "10.0.0.9"
        );
        assert_eq!(client("10.0.0.2:443", &["garbage"], &proxies), "10.0.0.2");
        // Only proxies: the furthest one.
        assert_eq!(
            client("10.0.0.2:443", &["10.0.0.5, 10.0.0.6"], &proxies),
            "10.0.0.5"
        );
    }

    #[test]
    fn single_addresses_and_ranges_parse() {
        assert!(TrustedProxies::parse_entry("10.0.0.2").is_ok());
        assert!(TrustedProxies::parse_entry("::ffff:10.0.0.2").is_ok());
        assert!(TrustedProxies::parse_entry("192.168.0.0/16").is_ok());
        assert!(TrustedProxies::parse_entry("not-an-ip").is_err());
        let mapped = trusted(&["::ffff:10.0.0.2"]);
        assert!(mapped.contains("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn ipv6_clients_are_throttled_by_their_slash_64() {
        let info = |ip: &str| ClientInfo {
            ip: Some(ip.parse().unwrap()),
            user_agent: String::new(),
            ..ClientInfo::default()
        };
        assert_eq!(
            info("2001:db8:1:2:aaaa::1").throttle_bucket(),
            info("2001:db8:1:2:bbbb::9").throttle_bucket()
        );
        assert_ne!(
            info("2001:db8:1:2::1").throttle_bucket(),
            info("2001:db8:1:3::1").throttle_bucket()
        );
        assert_eq!(info("198.51.100.1").throttle_bucket(), "198.51.100.1");
    }
}
