//! [`ClientKey`]: the key the keyed limiter counts a client under, made from its IP address.
//!
//! Apart from the limiters because it is the only part of rate limiting that knows about IP
//! addresses (IPv6 prefixes, IPv4-mapped addresses); other admission checks use it as their
//! key too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The key a client is counted under: its IPv4 address, or its IPv6 address cut to a prefix.
///
/// Why a prefix for IPv6: the smallest allocation a site gets is a /64, and a host can pick
/// any address inside it (privacy addresses, or just a loop over the interface identifier).
/// Keyed by full address, one host would have 2^64 buckets and no limit at all. A /64 is the
/// unit of one customer, the way an IPv4 address is. (A /56 or /48 is coarser and may put
/// separate customers of one ISP under one key; the prefix is configurable for that trade.)
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`, what a dual-stack socket reports for an
/// IPv4 client) are keyed as the IPv4 address, so a client gets the same bucket on either
/// kind of listener; otherwise all of IPv4 would share the one /64 `::ffff:0:0/96` lives in.
///
/// Stored as two `u64` halves and a tag rather than a `u128`, so the key is 8-byte aligned
/// (24 bytes, not 32): it is stored once per client in the keyed table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    hi: u64,
    lo: u64,
    /// `V4_TAG` for IPv4, else the IPv6 prefix length (0..=128).
    tag: u8,
}

const V4_TAG: u8 = u8::MAX;

impl ClientKey {
    /// The key for `ip`; `ipv6_prefix` (clamped to 0..=128) is the number of leading bits of
    /// an IPv6 address that are kept. IPv4 addresses are kept whole.
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        let v6 = match ip {
            IpAddr::V4(v4) => return ClientKey::v4(v4),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return ClientKey::v4(v4);
        }
        let prefix = ipv6_prefix.min(128);
        let mask = match prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        let bits = u128::from(v6) & mask;
        ClientKey {
            hi: (bits >> 64) as u64,
            lo: bits as u64,
            tag: prefix,
        }
    }

    fn v4(v4: Ipv4Addr) -> ClientKey {
        ClientKey {
            hi: 0,
            lo: u64::from(u32::from(v4)),
            tag: V4_TAG,
        }
    }
}

impl fmt::Display for ClientKey {
    /// `192.0.2.7` or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag == V4_TAG {
            write!(f, "{}", Ipv4Addr::from(self.lo as u32))
        } else {
            let bits = (u128::from(self.hi) << 64) | u128::from(self.lo);
            write!(f, "{}/{}", Ipv6Addr::from(bits), self.tag)
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::ip;
    use super::*;

    #[test]
    fn client_keys() {
        // One /64, two hosts: one key.
        assert_eq!(
            ClientKey::new(ip("2001:db8:1:2::1"), 64),
            ClientKey::new(ip("2001:db8:1:2:ffff:1:2:3"), 64)
        );
        // Neighbouring /64s: two keys.
        assert_ne!(
            ClientKey::new(ip("2001:db8:1:2::1"), 64),
            ClientKey::new(ip("2001:db8:1:3::1"), 64)
        );
        // /128 tells every address apart.
        assert_ne!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::new(ip("2001:db8::1"), 128)
        );
        // Prefixes above 128 are clamped; a /0 puts all IPv6 under one key.
        assert_eq!(
            ClientKey::new(ip("2001:db8::1"), 200),
            ClientKey::new(ip("2001:db8::1"), 128)
        );
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 0), ClientKey::new(ip("fe80::1"), 0));
        // An odd prefix cuts inside a group.
        assert_eq!(
            ClientKey::new(ip("2001:db8:ab00::"), 40),
            ClientKey::new(ip("2001:db8:abff::1"), 40)
        );
        assert_ne!(
            ClientKey::new(ip("2001:db8:ab00::"), 40),
            ClientKey::new(ip("2001:db8:ac00::"), 40)
        );
        // The same bits under different prefixes are different keys.
        assert_ne!(
            ClientKey::new(ip("2001:db8::"), 64),
            ClientKey::new(ip("2001:db8::"), 48)
        );

        // IPv4 is keyed whole, and an IPv4-mapped address is the IPv4 address.
        assert_eq!(
            ClientKey::new(ip("::ffff:192.0.2.7"), 64),
            ClientKey::new(ip("192.0.2.7"), 64)
        );
        assert_ne!(ClientKey::new(ip("192.0.2.7"), 64), ClientKey::new(ip("192.0.2.8"), 64));
        // IPv4 is never confused with an IPv6 key holding the same low bits.
        assert_ne!(
            ClientKey::new(ip("::c000:207"), 128),
            ClientKey::new(ip("192.0.2.7"), 128)
        );

        assert_eq!(ClientKey::new(ip("192.0.2.7"), 64).to_string(), "192.0.2.7");
        assert_eq!(ClientKey::new(ip("::ffff:192.0.2.7"), 64).to_string(), "192.0.2.7");
        assert_eq!(
            ClientKey::new(ip("2001:db8:1:2:3:4:5:6"), 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 128).to_string(), "2001:db8::1/128");
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 0).to_string(), "::/0");
        assert_eq!(
            format!("{:?}", ClientKey::new(ip("192.0.2.7"), 64)),
            "ClientKey(192.0.2.7)"
        );
        assert_eq!(std::mem::size_of::<ClientKey>(), 24);
    }
}
