//! A tiny CIDR block type for the peer allow/deny lists.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::TurnError;

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8` or `fc00::/7`. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, with the host bits cleared.
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network; `None` if `prefix` is longer than the address. Host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => Some(Cidr {
                addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
                prefix,
            }),
            _ => None,
        }
    }

    /// `const` constructor for the built-in tables (prefix checked by the tests).
    pub(crate) const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    /// `const` constructor for the built-in tables (prefix checked by the tests).
    pub(crate) const fn v6(a: [u16; 8], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
            )),
            prefix,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network. Families never mix: an IPv4 network does not
    /// contain `::ffff:a.b.c.d` (the peer filter canonicalises such forms first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net) & mask32(self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net) & mask128(self.prefix)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

impl FromStr for Cidr {
    type Err = TurnError;

    fn from_str(s: &str) -> Result<Cidr, TurnError> {
        let bad = || TurnError::InvalidCidr(s.to_owned());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => {
                // Plain decimal only: no sign, no leading/trailing junk.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (ip, Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        Cidr::new(ip, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<IpAddr> for Cidr {
    fn from(ip: IpAddr) -> Cidr {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Cidr { addr: ip, prefix }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let c: Cidr = "fc00::/7".parse().unwrap();
        assert!(c.contains("fdff::1".parse().unwrap()));
        assert!(!c.contains("fe00::1".parse().unwrap()));
        let c: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(c.prefix(), 32);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }
}
