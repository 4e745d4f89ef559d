//! The real client address behind load balancers and proxies.
//!
//! By default the client is the TCP peer, and whatever forwarding headers it
//! sends are ignored: otherwise any client could pick the address that rate
//! limits and backends see. Only a peer inside a listener's
//! `trusted_proxies` is believed, either through a PROXY protocol header at
//! the start of the connection (an L4 load balancer, HAProxy's format) or,
//! per request, through `X-Forwarded-For` / `Forwarded` (an L7 proxy).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The address ranges whose forwarding information is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(ranges: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(ranges)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|range| range.contains(&ip))
    }
}

/// Parses a `trusted_proxies` entry: a CIDR range or a single address.
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    IpNet::from_str(text)
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("{text:?} is not an address range; write CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address")
        })
}

/// The client of one request that arrived from `peer`: when the peer is a
/// trusted proxy, the right-most untrusted address of `X-Forwarded-For`
/// (or, without it, of `Forwarded`'s `for=`), since every proxy appends the
/// address it received from and only the entries added by trusted proxies
/// can be believed. Addresses left of the first untrusted one may be forged.
pub fn client_from_headers(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let x_forwarded_for: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    if !x_forwarded_for.is_empty() {
        return rightmost_untrusted(peer, x_forwarded_for.iter().map(|entry| parse_node(entry)), trusted);
    }
    let forwarded_for: Vec<Option<IpAddr>> = headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| parse_node(value))
            })
        })
        .collect();
    rightmost_untrusted(peer, forwarded_for.into_iter(), trusted)
}

/// Walks the hops from the right; an unparseable hop ends the walk at the
/// trusted hop that reported it.
fn rightmost_untrusted(
    peer: IpAddr,
    hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut client = peer;
    for hop in hops.rev() {
        match hop {
            Some(ip) if trusted.contains(ip) => client = ip,
            Some(ip) => return ip,
            None => return client,
        }
    }
    client
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `"[2001:db8::1]:4711"`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = text.strip_prefix('[').and_then(|rest| rest.split(']').next())?;
    IpAddr::from_str(bracketed).ok().map(|ip| ip.to_canonical())
}

/// Why a connection's PROXY protocol header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("invalid PROXY protocol header")]
    Invalid,
    #[error("PROXY protocol header not complete in time")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The v2 signature (HAProxy's proxy-protocol.txt §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (§2.1).
const V1_MAX: usize = 107;

/// Reads a PROXY protocol v1 or v2 header from the start of `stream`, and
/// not one byte more, so that TLS or HTTP can follow on the same stream.
/// `Ok(None)` when the header names no client (v2 LOCAL, v1 UNKNOWN): the
/// peer itself is the client, as with a load balancer's health check.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match tokio::time::timeout(deadline, read_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout),
    }
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // The shortest header of either version ("PROXY UNKNOWN\r\n") is longer than 12 bytes.
    let mut header = vec![0u8; 12];
    read_exact(stream, &mut header).await?;
    if header == V2_SIGNATURE {
        header.resize(16, 0);
        read_exact(stream, &mut header[12..]).await?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        header.resize(16 + length, 0);
        read_exact(stream, &mut header[16..]).await?;
        let parsed = ppp::v2::Header::try_from(header.as_slice()).map_err(|_| ProxyHeaderError::Invalid)?;
        return Ok(match (parsed.command, parsed.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        });
    }
    if !header.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    // A v1 line ends in CRLF; read it a byte at a time so nothing behind it is consumed.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(ProxyHeaderError::Invalid);
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        header.push(byte[0]);
    }
    let parsed = ppp::v1::Header::try_from(header.as_slice()).map_err(|_| ProxyHeaderError::Invalid)?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyHeaderError::Invalid),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| parse_range(r).unwrap()).collect())
    }

    fn client(peer: &str, xff: &[&str], forwarded: Option<&str>, ranges: &[&str]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        if let Some(value) = forwarded {
            headers.append("forwarded", value.parse().unwrap());
        }
        client_from_headers(peer.parse().unwrap(), &headers, &trusted(ranges))
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_peers() {
        let lb = ["10.0.0.0/8"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client("192.0.2.1", &["203.0.113.7"], None, &lb), ip("192.0.2.1"));
        assert_eq!(client("10.0.0.5", &["203.0.113.7"], None, &lb), ip("203.0.113.7"));
        assert_eq!(
            client("10.0.0.5", &["1.1.1.1, 203.0.113.7, 10.1.1.1"], None, &lb),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.5", &["1.1.1.1", "203.0.113.7"], None, &lb),
            ip("203.0.113.7")
        );
        assert_eq!(client("10.0.0.5", &["10.0.0.1, 10.0.0.2"], None, &lb), ip("10.0.0.1"));
        assert_eq!(
            client("10.0.0.5", &["203.0.113.7, junk, 10.0.0.2"], None, &lb),
            ip("10.0.0.2")
        );
        assert_eq!(client("10.0.0.5", &["[2001:db8::1]:80"], None, &lb), ip("2001:db8::1"));
        let forwarded = Some("for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"");
        assert_eq!(client("10.0.0.5", &[], forwarded, &lb), ip("2001:db8::1"));
        assert_eq!(client("10.0.0.5", &[], None, &lb), ip("10.0.0.5"));
        assert_eq!(
            client("::ffff:10.0.0.5", &["203.0.113.7"], None, &lb),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn ranges_parse_as_cidr_or_single_addresses() {
        assert!(trusted(&["127.0.0.1"]).contains("127.0.0.1".parse().unwrap()));
        assert!(!trusted(&["127.0.0.1"]).contains("127.0.0.2".parse().unwrap()));
        assert!(trusted(&["10.1.2.3/8"]).contains("10.200.0.1".parse().unwrap()));
        assert!(parse_range("10.0.0.0/33").is_err());
        assert!(parse_range("ten").is_err());
    }

    #[tokio::test]
    async fn proxy_headers_are_read_exactly() {
        let mut v1: &[u8] = b"PROXY TCP4 203.0.113.9 127.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let addr = read_proxy_header(&mut v1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(addr, Some("203.0.113.9:56324".parse().unwrap()));
        assert_eq!(v1, b"GET / HTTP/1.1\r\n");

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 7, 127, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        v2.extend_from_slice(b"rest");
        let mut input: &[u8] = &v2;
        let addr = read_proxy_header(&mut input, Duration::from_secs(1)).await.unwrap();
        assert_eq!(addr, Some("198.51.100.7:8080".parse().unwrap()));
        assert_eq!(input, b"rest");

        let mut local: &[u8] = &[V2_SIGNATURE.as_slice(), &[0x20, 0x00, 0, 0]].concat();
        assert_eq!(
            read_proxy_header(&mut local, Duration::from_secs(1)).await.unwrap(),
            None
        );

        let mut http: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            read_proxy_header(&mut http, Duration::from_secs(1)).await,
            Err(ProxyHeaderError::Missing)
        ));
        let mut endless: &[u8] = &[b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read_proxy_header(&mut endless, Duration::from_secs(1)).await,
            Err(ProxyHeaderError::Invalid)
        ));
    }
}
