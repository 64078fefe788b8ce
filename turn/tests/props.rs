//! Property tests: nothing from the network can panic the core, and what it encodes decodes.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::*;
use proptest::prelude::*;
use tandem_turn::stun_rs::attributes::turn::{Data, XorPeerAddress};
use tandem_turn::{frame_len, ClientSocket, Output, RelayPort, Transport};

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        Just(Transport::Udp),
        Just(Transport::Tcp),
        Just(Transport::Tls)
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

/// A server with one allocation for 198.51.100.7:4000 and a permission + channel for
/// 8.8.8.8:1, so random input reaches the deeper paths.
fn primed() -> (Harness, ClientSocket, RelayPort, Creds) {
    let mut cfg = config();
    cfg.bytes_per_sec_per_allocation = Some(1_000_000);
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    h.one(
        &channel_bind_req(tid(5), &creds, 0x4000, addr("8.8.8.8:1")),
        from,
    );
    (h, from, port, creds)
}

/// Valid messages for mutation.
fn seeds(creds: &Creds) -> Vec<Vec<u8>> {
    vec![
        allocate_req(tid(1), None, vec![]),
        allocate_req(tid(2), Some(creds), vec![]),
        refresh_req(tid(3), creds, Some(1200)),
        permission_req(tid(4), creds, &[addr("8.8.4.4:1")]),
        channel_bind_req(tid(5), creds, 0x4001, addr("1.1.1.1:1")),
        send_ind(addr("8.8.8.8:1"), b"payload"),
        vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), t in transport(), from_primed in any::<bool>()) {
        let (mut h, from, _, _) = primed();
        let from = if from_primed { ClientSocket { transport: Transport::Udp, ..from } } else { ClientSocket { addr: addr("192.0.2.1:1"), transport: t } };
        if let Some((_, _, range)) = h.server.handle_client_input(&bytes, from, h.now) {
            prop_assert!(range.end <= bytes.len());
        }
        h.commands();
        h.advance(std::time::Duration::from_secs(700));
    }

    #[test]
    fn mutated_messages_never_panic(which in 0usize..7, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<Option<usize>>()) {
        let (mut h, from, _, creds) = primed();
        let mut bytes = seeds(&creds)[which].clone();
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % (n + 1));
        }
        if let Some((_, _, range)) = h.server.handle_client_input(&bytes, from, h.now) {
            prop_assert!(range.end <= bytes.len());
        }
        for c in h.commands() {
            if let Output::SendToClient { bytes, .. } = c {
                decode(&bytes); // whatever we send decodes
            }
        }
    }

    #[test]
    fn arbitrary_peer_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000), peer in socket_addr(), known in any::<bool>(), port in any::<u16>()) {
        let (mut h, _, relay, _) = primed();
        let port = if known { relay } else { RelayPort(port) };
        h.server.handle_peer_input(&bytes, port, peer, h.now);
        h.commands();
    }

    #[test]
    fn frame_len_never_panics_and_is_sane(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some(n)) = frame_len(&bytes) {
            prop_assert!(n >= 4 && n <= bytes.len() && n % 4 == 0);
        }
    }

    #[test]
    fn data_indications_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..1500), p in any::<u16>(), ip in any::<u32>()) {
        let (mut h, from, port, creds) = primed();
        let ip = Ipv4Addr::from(ip);
        prop_assume!(h.server.counters().allocations_active == 1);
        let peer = SocketAddr::new(IpAddr::V4(ip), p);
        let allowed = h.one(&permission_req(tid(9), &creds, &[peer]), from);
        prop_assume!(error_code(&allowed).is_none());
        prop_assume!(peer != addr("8.8.8.8:1")); // that one has a channel
        prop_assert_eq!(h.server.handle_peer_input(&payload, port, peer, h.now), None);
        let (msgs, _) = h.split(from);
        prop_assert_eq!(msgs.len(), 1);
        let got = msgs[0].get::<Data>().unwrap().as_data().unwrap().as_bytes().to_vec();
        let got_peer = *msgs[0].get::<XorPeerAddress>().unwrap().as_xor_peer_address().unwrap().socket_address();
        prop_assert_eq!(got, payload);
        prop_assert_eq!(got_peer, peer);
    }

    #[test]
    fn send_indication_ranges_are_exact(payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let (mut h, from, port, _) = primed();
        let ind = send_ind(addr("8.8.8.8:7"), &payload);
        let (p, to, range) = h.server.handle_client_input(&ind, from, h.now).unwrap();
        prop_assert_eq!((p, to), (port, addr("8.8.8.8:7")));
        prop_assert_eq!(&ind[range], &payload[..]);
    }

    #[test]
    fn cidr_parse_never_panics(s in ".{0,40}") {
        let _ = s.parse::<tandem_turn::Cidr>();
    }
}

/// STUN messages near the 16-bit length limit, built by hand (the codec's encoder cannot).
#[test]
fn huge_stun_messages_never_panic() {
    let (mut h, from, _, _) = primed();
    for (attr_type, value_len) in [
        (0x0013u16, 65_512usize),
        (0x0013, 65_508),
        (0x7777, 65_512),
        (0x8022, 65_000),
    ] {
        for class_bits in [0x0016u16, 0x0003, 0x0001] {
            let mut b = Vec::new();
            b.extend_from_slice(&class_bits.to_be_bytes());
            let body = 4 + value_len.next_multiple_of(4);
            b.extend_from_slice(&(body as u16).to_be_bytes());
            b.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            b.extend_from_slice(&[7; 12]);
            b.extend_from_slice(&attr_type.to_be_bytes());
            b.extend_from_slice(&(value_len as u16).to_be_bytes());
            b.resize(20 + body, 0xAB);
            let _ = h.server.handle_client_input(&b, from, h.now);
            for c in h.commands() {
                if let Output::SendToClient { bytes, .. } = c {
                    decode(&bytes);
                }
            }
        }
    }
    // The largest Send indication the codec can build relays exactly.
    let payload = vec![9u8; 65_476];
    let ind = send_ind(addr("8.8.8.8:7"), &payload);
    let (_, _, range) = h.server.handle_client_input(&ind, from, h.now).unwrap();
    assert_eq!(range.len(), payload.len());
}
