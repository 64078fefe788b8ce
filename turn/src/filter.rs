//! Which peers an allocation may talk to.
//!
//! A TURN server is an open proxy towards whatever its peer filter lets through, so by default
//! every non-global address is refused: loopback, private, link-local, CGNAT, multicast,
//! reserved, benchmarking and documentation ranges. IPv6 forms that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, SIIT, NAT64 well-known and local-use prefixes, 6to4, Teredo)
//! are checked by their embedded IPv4 addresses too: routing `::ffff:127.0.0.1` or
//! `64:ff9b::a9fe:a9fe` through a relay is the classic filter bypass (CVE-2020-26262,
//! CVE-2026-27624).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cidr::Cidr;

/// IPv4 ranges refused by default.
const DENY_V4: &[Cidr] = &[
    Cidr::v4([0, 0, 0, 0], 8),       // "this network"
    Cidr::v4([10, 0, 0, 0], 8),      // RFC 1918
    Cidr::v4([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    Cidr::v4([127, 0, 0, 0], 8),     // loopback
    Cidr::v4([169, 254, 0, 0], 16),  // link-local (incl. cloud metadata 169.254.169.254)
    Cidr::v4([172, 16, 0, 0], 12),   // RFC 1918
    Cidr::v4([192, 0, 0, 0], 24),    // IETF protocol assignments
    Cidr::v4([192, 0, 2, 0], 24),    // TEST-NET-1
    Cidr::v4([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    Cidr::v4([192, 168, 0, 0], 16),  // RFC 1918
    Cidr::v4([198, 18, 0, 0], 15),   // benchmarking
    Cidr::v4([198, 51, 100, 0], 24), // TEST-NET-2
    Cidr::v4([203, 0, 113, 0], 24),  // TEST-NET-3
    Cidr::v4([224, 0, 0, 0], 4),     // multicast
    Cidr::v4([240, 0, 0, 0], 4),     // reserved + limited broadcast
];

/// IPv6 ranges refused by default (embedded-IPv4 forms are handled separately).
const DENY_V6: &[Cidr] = &[
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),        // unspecified
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),        // loopback
    Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),     // discard-only
    Cidr::v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48),  // benchmarking
    Cidr::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), // ORCHID (deprecated)
    Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),    // documentation (RFC 9637)
    Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),    // SRv6 SIDs
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),     // unique local
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),    // link-local
    Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),    // site-local (deprecated)
    Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),     // multicast
];

/// At most this many IPv4 addresses are embedded in one IPv6 address (the 4 RFC 6052
/// positions a local-use NAT64 prefix may use).
const MAX_EMBEDDED: usize = 4;

/// The IPv4 addresses an IPv6 address stands for, if it is one of the known embedding forms.
/// Several for the forms whose layout is ambiguous (Teredo: server and client; local-use
/// NAT64: every prefix length of RFC 6052); a peer is refused if any of them is.
pub fn embedded_ipv4(ip: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> {
    let mut out = [None; MAX_EMBEDDED];
    let bits = u128::from(ip);
    let seg = ip.segments();
    let low32 = Ipv4Addr::from(bits as u32);
    // bits `from..from+32` (from the top) as an IPv4 address.
    let at = |from: u32| Ipv4Addr::from((bits >> (96 - from)) as u32);
    // RFC 6052 layouts skip bits 64..72 (the "u" octet).
    let skip_u = |from: u32| {
        let hi = bits >> 64; // bits 0..64
        let lo = bits & ((1u128 << 56) - 1); // bits 72..128
        let joined = (hi << 56) | lo; // 120 bits, u octet removed
        Ipv4Addr::from((joined >> (88 - from)) as u32)
    };
    if bits >> 32 == 0 {
        // IPv4-compatible ::a.b.c.d (and :: / ::1, which map into 0.0.0.0/8).
        out[0] = Some(low32);
    } else if bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000 {
        // IPv4-mapped ::ffff:a.b.c.d and SIIT ::ffff:0:a.b.c.d.
        out[0] = Some(low32);
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        // NAT64 well-known prefix 64:ff9b::/96.
        out[0] = Some(low32);
    } else if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        // NAT64 local-use prefix 64:ff9b:1::/48: the embedding depends on the prefix length
        // the operator chose, so every RFC 6052 layout counts.
        out[0] = Some(low32); // /96
        out[1] = Some(skip_u(64)); // /64
        out[2] = Some(skip_u(56)); // /56
        out[3] = Some(skip_u(48)); // /48
    } else if seg[0] == 0x2002 {
        // 6to4 2002:AABB:CCDD::/48.
        out[0] = Some(at(16));
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo 2001:0::/32: server IPv4 in bits 32..64, client IPv4 obfuscated (inverted) in
        // the low 32 bits.
        out[0] = Some(at(32));
        out[1] = Some(Ipv4Addr::from(!(bits as u32)));
    }
    out.into_iter().flatten()
}

/// The peer filter. See the module docs.
///
/// Two modes. A *strict* filter (tandem's default: the SFU is the only peer a guest ever
/// needs) lets through only `always_allow` (exact IP and port), `allow` ranges and, for tests,
/// loopback. A *general* filter (`--turn-open-relay`) also lets through every address that is
/// not in the built-in deny ranges or `deny`. In both modes the host's own addresses are
/// refused (traffic to them goes over `lo`, past interface firewall rules), except the exact
/// `always_allow` addresses and loopback when `allow_loopback` is on.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    allow_loopback: bool,
    always_allow: Vec<SocketAddr>,
    strict: bool,
    host: Vec<IpAddr>,
}

impl PeerFilter {
    /// A general filter: `allow` is checked first and wins; `deny` adds to the built-in
    /// ranges; `allow_loopback` lets 127.0.0.0/8 and ::1 through (tests only); `always_allow`
    /// names exact transport addresses (tandem's own media address: IP *and* port) that are
    /// always reachable, so that an otherwise denied host address (the node's own, loopback in
    /// tests) opens only that one port, never the host's other services.
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        allow_loopback: bool,
        always_allow: Vec<SocketAddr>,
    ) -> PeerFilter {
        PeerFilter {
            allow,
            deny,
            allow_loopback,
            always_allow,
            strict: false,
            host: Vec::new(),
        }
    }

    /// Strict mode: nothing but `always_allow`, `allow` and (with `allow_loopback`) loopback.
    pub fn strict(mut self, strict: bool) -> PeerFilter {
        self.strict = strict;
        self
    }

    /// The host's own addresses, refused in every mode (canonical forms are compared, and the
    /// IPv4 addresses embedded in IPv6 forms count too).
    pub fn host_addresses(mut self, host: Vec<IpAddr>) -> PeerFilter {
        self.host = host.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// Whether a relay may talk to the transport address `peer`: one of `always_allow`, or an
    /// IP address [`PeerFilter::is_allowed`] lets through.
    pub fn is_allowed_addr(&self, peer: SocketAddr) -> bool {
        let plain = peer.ip().to_canonical();
        self.always_allow
            .iter()
            .any(|a| a.ip().to_canonical() == plain && a.port() == peer.port())
            || self.is_allowed(peer.ip())
    }

    /// Whether `ip` is one of the host's own addresses, in any form.
    fn is_host(&self, ip: IpAddr) -> bool {
        let plain = ip.to_canonical();
        self.host.contains(&plain)
            || match plain {
                IpAddr::V4(_) => false,
                IpAddr::V6(v6) => embedded_ipv4(v6).any(|v4| self.host.contains(&IpAddr::V4(v4))),
            }
    }

    /// Whether a relay may talk to any port of `ip` (the rules above, without
    /// `always_allow`, which names single ports).
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        // IPv4-mapped counts as its IPv4 address for the explicit lists.
        let plain = ip.to_canonical();
        if self.allow_loopback && plain.is_loopback() {
            return true;
        }
        if self.is_host(ip) {
            return false;
        }
        if self
            .allow
            .iter()
            .any(|c| c.contains(ip) || c.contains(plain))
        {
            return true;
        }
        if self.strict {
            return false;
        }
        let denied = |a: IpAddr| {
            self.deny.iter().any(|c| c.contains(a))
                || match a {
                    IpAddr::V4(_) => DENY_V4.iter().any(|c| c.contains(a)),
                    IpAddr::V6(_) => DENY_V6.iter().any(|c| c.contains(a)),
                }
        };
        if denied(ip) {
            return false;
        }
        match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => !embedded_ipv4(v6).any(|v4| denied(IpAddr::V4(v4))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_normalised() {
        for c in DENY_V4.iter().chain(DENY_V6) {
            assert_eq!(Cidr::new(c.addr(), c.prefix()), Some(*c), "{c}");
        }
    }

    #[test]
    fn embedded_forms() {
        let e = |s: &str| embedded_ipv4(s.parse().unwrap()).collect::<Vec<_>>();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(e("::ffff:127.0.0.1"), [v4("127.0.0.1")]);
        assert_eq!(e("::ffff:0:10.1.2.3"), [v4("10.1.2.3")]);
        assert_eq!(e("::127.0.0.1"), [v4("127.0.0.1")]);
        assert_eq!(e("64:ff9b::7f00:1"), [v4("127.0.0.1")]);
        assert_eq!(e("2002:7f00:1::"), [v4("127.0.0.1")]);
        // Teredo: server 65.54.227.120, client 192.0.2.45 obfuscated.
        assert_eq!(
            e("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            [v4("65.54.227.120"), v4("192.0.2.45")]
        );
        // Local-use NAT64 with a /48 prefix: 10.0.0.1 in bits 48..64 and 72..88.
        assert!(e("64:ff9b:1:a00:0:100::").contains(&v4("10.0.0.1")));
        assert!(e("64:ff9b:1::a00:1").contains(&v4("10.0.0.1")));
        assert!(e("2606:4700::1111").is_empty());
    }
}
