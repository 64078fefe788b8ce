//! The peer filter, including the IPv6 forms that hide an IPv4 address.

use std::net::IpAddr;

use tandem_turn::{Cidr, PeerFilter};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn default_filter() -> PeerFilter {
    PeerFilter::new(vec![], vec![], false, vec![])
}

#[test]
fn denied_by_default() {
    let f = default_filter();
    let denied = [
        // IPv4 ranges
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        // IPv6 ranges
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "3fff::1",
        "100::1",
        "2001:2::1",
        "5f00::1",
        // IPv4-mapped / compatible / SIIT
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::10.0.0.1",
        "::ffff:0:127.0.0.1",
        "::ffff:0.0.0.0",
        // NAT64 well-known and local-use prefixes
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:1",
        "64:ff9b::c0a8:101",
        "64:ff9b:1::7f00:1",
        "64:ff9b:1:a00:0:100::",
        // 6to4
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2002:c0a8:101::",
        // Teredo: client 127.0.0.1 obfuscated (0x80ff:fffe), public server 8.8.8.8
        "2001:0:808:808:0:0:80ff:fffe",
        // Teredo: public client 8.8.8.8 (obfuscated f7f7:f7f7), private server 10.0.0.1
        "2001:0:a00:1:0:0:f7f7:f7f7",
    ];
    for s in denied {
        assert!(!f.is_allowed(ip(s)), "{s} should be denied");
    }
}

#[test]
fn public_addresses_allowed() {
    let f = default_filter();
    for s in [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.32.0.1",
        "198.20.0.1",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        // Teredo with public server and client (8.8.8.8 obfuscated is f7f7:f7f7).
        "2001:0:808:808:0:0:f7f7:f7f7",
    ] {
        assert!(f.is_allowed(ip(s)), "{s} should be allowed");
    }
}

#[test]
fn allow_loopback_peers() {
    let f = PeerFilter::new(vec![], vec![], true, vec![]);
    assert!(f.is_allowed(ip("127.0.0.1")));
    assert!(f.is_allowed(ip("::1")));
    assert!(f.is_allowed(ip("::ffff:127.0.0.1")));
    assert!(!f.is_allowed(ip("10.0.0.1")));
    assert!(!default_filter().is_allowed(ip("127.0.0.1")));
}

#[test]
fn always_allow_opens_one_port_only() {
    let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let f = PeerFilter::new(
        vec![],
        vec!["8.8.8.0/24".parse().unwrap()],
        false,
        vec![
            sa("10.1.2.3:7882"),
            sa("8.8.8.8:7882"),
            sa("127.0.0.1:7882"),
        ],
    );
    assert!(f.is_allowed_addr(sa("10.1.2.3:7882")));
    assert!(f.is_allowed_addr(sa("[::ffff:10.1.2.3]:7882")));
    assert!(f.is_allowed_addr(sa("8.8.8.8:7882")));
    assert!(f.is_allowed_addr(sa("127.0.0.1:7882")));
    // The same hosts on any other port stay denied: the media port is not a way in to the
    // node's other services (loopback Redis, cloud metadata, ...).
    assert!(!f.is_allowed_addr(sa("10.1.2.3:6379")));
    assert!(!f.is_allowed_addr(sa("127.0.0.1:6379")));
    assert!(!f.is_allowed_addr(sa("8.8.8.8:53")));
    assert!(!f.is_allowed(ip("10.1.2.3")));
    assert!(!f.is_allowed_addr(sa("8.8.8.9:7882")));
    assert!(!f.is_allowed_addr(sa("10.1.2.4:7882")));
    // Ordinary public peers are judged by IP, any port.
    assert!(f.is_allowed_addr(sa("1.1.1.1:5000")));
}

#[test]
fn allow_and_deny_lists() {
    let allow: Vec<Cidr> = vec!["10.20.0.0/16".parse().unwrap()];
    let deny: Vec<Cidr> = vec![
        "8.8.4.0/24".parse().unwrap(),
        "2606:4700::/32".parse().unwrap(),
    ];
    let f = PeerFilter::new(allow, deny, false, vec![]);
    assert!(f.is_allowed(ip("10.20.1.1")));
    assert!(f.is_allowed(ip("::ffff:10.20.1.1")));
    assert!(!f.is_allowed(ip("10.21.1.1")));
    assert!(!f.is_allowed(ip("8.8.4.4")));
    // Extra denies apply to embedded forms too.
    assert!(!f.is_allowed(ip("::ffff:8.8.4.4")));
    assert!(!f.is_allowed(ip("64:ff9b::808:404")));
    assert!(!f.is_allowed(ip("2606:4700:4700::1111")));
    assert!(f.is_allowed(ip("8.8.8.8")));
}

#[test]
fn strict_filter_reaches_only_the_media_addresses() {
    let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let f = PeerFilter::new(
        vec![],
        vec![],
        false,
        vec![sa("203.0.113.7:7882"), sa("[2001:db8::7]:7882")],
    )
    .strict(true);
    assert!(f.is_allowed_addr(sa("203.0.113.7:7882")));
    assert!(f.is_allowed_addr(sa("[::ffff:203.0.113.7]:7882")));
    assert!(f.is_allowed_addr(sa("[2001:db8::7]:7882")));
    // Public addresses a general relay would allow are refused: no open relay by default.
    for s in [
        "8.8.8.8:53",
        "1.1.1.1:443",
        "[2606:4700::1111]:443",
        "203.0.113.7:22",
    ] {
        assert!(
            !f.is_allowed_addr(sa(s)),
            "{s} allowed by the strict filter"
        );
    }
    assert!(!f.is_allowed(ip("8.8.8.8")));
    // Explicit allow ranges still apply (an operator's choice).
    let g =
        PeerFilter::new(vec!["8.8.8.0/24".parse().unwrap()], vec![], false, vec![]).strict(true);
    assert!(g.is_allowed(ip("8.8.8.8")));
    assert!(!g.is_allowed(ip("8.8.4.4")));
}

#[test]
fn the_hosts_own_addresses_are_refused_in_every_mode() {
    let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let host = vec![ip("198.51.100.10"), ip("8.8.8.8"), ip("2606:4700::1")];
    for strict in [false, true] {
        let f = PeerFilter::new(
            vec!["8.8.8.0/24".parse().unwrap()],
            vec![],
            false,
            vec![sa("8.8.8.8:7882")],
        )
        .strict(strict)
        .host_addresses(host.clone());
        // The media port itself stays reachable...
        assert!(f.is_allowed_addr(sa("8.8.8.8:7882")));
        // ...but no other port of the host, in any form, even inside an allow range.
        for s in [
            "8.8.8.8:22",
            "[::ffff:8.8.8.8]:22",
            "[64:ff9b::808:808]:22",
            "[2002:808:808::1]:22",
            "[2606:4700::1]:22",
        ] {
            assert!(!f.is_allowed_addr(sa(s)), "{s} allowed (strict {strict})");
        }
        assert!(f.is_allowed(ip("8.8.8.9")), "the rest of the allow range");
    }
    // A public host address is refused by the general filter too.
    let open = PeerFilter::new(vec![], vec![], false, vec![]).host_addresses(host);
    assert!(!open.is_allowed(ip("8.8.8.8")));
    assert!(open.is_allowed(ip("8.8.4.4")));
    // Loopback for tests wins over the host list (the tests' peers live on 127.0.0.1).
    let tests = PeerFilter::new(vec![], vec![], true, vec![])
        .strict(true)
        .host_addresses(vec![ip("127.0.0.1")]);
    assert!(tests.is_allowed(ip("127.0.0.1")));
}
