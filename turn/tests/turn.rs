//! The TURN flows, with time driven by hand.

mod common;

use std::time::Duration;

use common::*;
use tandem_turn::stun_rs::attributes::stun::{
    Fingerprint, MessageIntegrity, MessageIntegritySha256, Realm, Software, UnknownAttributes,
    XorMappedAddress,
};
use tandem_turn::stun_rs::attributes::turn::{
    Data, DontFragment, EvenPort, LifeTime, RequestedAddressFamily, XorPeerAddress,
    XorRelayedAddress,
};
use tandem_turn::stun_rs::methods::{BINDING, DATA};
use tandem_turn::stun_rs::{AddressFamily, MessageClass};
use tandem_turn::{
    channel_data_header, frame_len, BindError, Direction, Family, Output, PeerToClient, RelayKind,
    RelayPort, Transport,
};

fn relayed(msg: &tandem_turn::stun_rs::StunMessage) -> std::net::SocketAddr {
    *msg.get::<XorRelayedAddress>()
        .unwrap()
        .as_xor_relayed_address()
        .unwrap()
        .socket_address()
}

#[test]
fn binding_answers_without_auth_on_every_transport() {
    let mut h = Harness::new(config());
    for from in [sock("198.51.100.7:4000"), tcp("[2001:db8::1]:5000")] {
        let resp = h.one(&request(BINDING, tid(3), vec![], None), from);
        assert_eq!(resp.class(), MessageClass::SuccessResponse);
        assert_eq!(resp.transaction_id(), &tid(3));
        let mapped = resp
            .get::<XorMappedAddress>()
            .unwrap()
            .as_xor_mapped_address()
            .unwrap();
        assert_eq!(*mapped.socket_address(), from.addr);
        assert!(has::<Software>(&resp) && has::<Fingerprint>(&resp));
        assert!(!has::<MessageIntegrity>(&resp));
    }
}

#[test]
fn allocate_flow_401_then_success() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    assert_eq!(error_code(&first), Some(401));
    assert_eq!(
        first.get::<Realm>().unwrap().as_realm().unwrap().as_str(),
        REALM
    );
    assert!(nonce_of(&first).is_some());
    assert!(!has::<MessageIntegrity>(&first) && has::<Fingerprint>(&first));
    assert_eq!(h.server.counters().auth_missing, 1);

    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (msgs, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    assert!(msgs.is_empty());
    let [Output::CreateAllocation {
        port,
        family: Family::V4,
        ref user,
    }] = other[..]
    else {
        panic!("{other:?}");
    };
    assert!((50000..=50999).contains(&port.0));
    assert_eq!(&**user, "alice", "the user the shell counts quotas by");
    assert_eq!(h.server.allocations(), 0);
    assert_eq!(h.server.pending_allocations(), 1);

    h.server.handle_allocation_bound(port, Ok(()), h.now);
    let cmds = h.commands();
    let [Output::SendToClient { to, bytes }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(*to, from);
    let resp = decode_verified(bytes, &creds.key());
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    assert_eq!(resp.transaction_id(), &tid(2));
    assert_eq!(
        relayed(&resp),
        std::net::SocketAddr::from((RELAY_IP, port.0))
    );
    assert_eq!(lifetime_of(&resp), Some(600));
    let mapped = resp
        .get::<XorMappedAddress>()
        .unwrap()
        .as_xor_mapped_address()
        .unwrap();
    assert_eq!(*mapped.socket_address(), from.addr);
    assert!(has::<Software>(&resp) && has::<Fingerprint>(&resp));
    assert_eq!(h.server.allocations(), 1);
    assert_eq!(h.server.allocation_of(&from), Some(port));
    let c = h.server.counters();
    assert_eq!((c.allocations_created, c.allocations_active), (1, 1));
}

#[test]
fn same_seed_same_ports() {
    let ports = |_: ()| {
        let mut h = Harness::new(config());
        (0..3)
            .map(|i| allocate(&mut h, sock(&format!("198.51.100.7:{}", 4000 + i)), "s").1)
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(()), ports(()));
}

#[test]
fn lifetime_is_clamped() {
    let mut h = Harness::new(config());
    for (i, (asked, granted)) in [(10, 600), (1200, 1200), (100_000, 3600)]
        .into_iter()
        .enumerate()
    {
        let from = sock(&format!("198.51.100.7:{}", 4000 + i));
        let (creds, _) = allocate(&mut h, from, "bob");
        let resp = h.one(&refresh_req(tid(5), &creds, Some(asked)), from);
        assert_eq!(lifetime_of(&resp), Some(granted), "asked {asked}");
    }
    // In the Allocate itself too.
    let from = sock("198.51.100.8:1");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("carol", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(
        &allocate_req(tid(2), Some(&creds), vec![LifeTime::new(5000).into()]),
        from,
    );
    let [Output::CreateAllocation { port, .. }] = other[..] else {
        panic!()
    };
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    let (msgs, _) = h.split(from);
    assert_eq!(lifetime_of(&msgs[0]), Some(3600));
}

#[test]
fn refresh_extends_and_expiry_frees() {
    let mut cfg = config();
    cfg.nonce_lifetime = Duration::from_secs(7200);
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    h.advance(Duration::from_secs(500));
    let resp = h.one(&refresh_req(tid(5), &creds, None), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    decode_verified(
        &raw_response(&mut h, &refresh_req(tid(6), &creds, None), from),
        &creds.key(),
    );
    // Now expires 600 s after the last refresh (t=500).
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocations(), 1);
    assert!(h.server.poll_timeout().is_some());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.server.allocations(), 0);
    assert_eq!(h.commands(), vec![Output::FreeAllocation { port }]);
    let c = h.server.counters();
    assert_eq!((c.allocations_expired, c.allocations_active), (1, 0));
    // The 5-tuple is free again: Refresh is now 437.
    let resp = h.one(&refresh_req(tid(7), &creds, None), from);
    assert_eq!(error_code(&resp), Some(437));
}

/// Sends a request and returns the raw bytes of its single response.
fn raw_response(h: &mut Harness, req: &[u8], from: tandem_turn::ClientSocket) -> Vec<u8> {
    assert!(h.server.handle_client_input(req, from, h.now).is_none());
    let cmds = h.commands();
    let [Output::SendToClient { bytes, .. }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    bytes.clone()
}

#[test]
fn refresh_lifetime_zero_deletes() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    assert!(h
        .server
        .handle_client_input(&refresh_req(tid(5), &creds, Some(0)), from, h.now)
        .is_none());
    let (msgs, other) = h.split(from);
    assert_eq!(msgs[0].class(), MessageClass::SuccessResponse);
    assert_eq!(lifetime_of(&msgs[0]), Some(0));
    assert_eq!(other, vec![Output::FreeAllocation { port }]);
    assert_eq!(h.server.allocations(), 0);
    assert_eq!(h.server.counters().allocations_deleted, 1);
    // A new allocation may be made on the same 5-tuple.
    allocate(&mut h, from, "alice");
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let mut cfg = config();
    cfg.nonce_lifetime = Duration::from_secs(60);
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (mut creds, _) = allocate(&mut h, from, "alice");
    h.advance(Duration::from_secs(61));
    let resp = h.one(&refresh_req(tid(5), &creds, None), from);
    assert_eq!(error_code(&resp), Some(438));
    assert!(has::<Realm>(&resp));
    let fresh = nonce_of(&resp).unwrap();
    assert_ne!(fresh, creds.nonce);
    assert_eq!(h.server.counters().auth_stale_nonce, 1);
    creds.nonce = fresh;
    let resp = h.one(&refresh_req(tid(6), &creds, None), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    // A nonce minted for another client is not valid here either.
    let other = sock("198.51.100.7:4001");
    let resp = h.one(&allocate_req(tid(7), Some(&creds), vec![]), other);
    assert_eq!(error_code(&resp), Some(438));
}

#[test]
fn wrong_password_and_expired_username_get_401() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let nonce = nonce_of(&first).unwrap();

    let mut bad = Creds::rest("alice", UNIX0 + 3600, &nonce);
    bad.password = "not-the-password".into();
    let resp = h.one(&allocate_req(tid(2), Some(&bad), vec![]), from);
    assert_eq!(error_code(&resp), Some(401));
    assert!(has::<Realm>(&resp) && nonce_of(&resp).is_some());
    assert!(!has::<MessageIntegrity>(&resp));
    assert_eq!(h.server.counters().auth_bad_integrity, 1);

    let expired = Creds::rest("alice", UNIX0 - 1, &nonce);
    let resp = h.one(&allocate_req(tid(3), Some(&expired), vec![]), from);
    assert_eq!(error_code(&resp), Some(401));

    let mut not_rest = Creds::rest("alice", UNIX0 + 3600, &nonce);
    not_rest.username = "alice".into();
    let resp = h.one(&allocate_req(tid(4), Some(&not_rest), vec![]), from);
    assert_eq!(error_code(&resp), Some(401));
    assert_eq!(h.server.counters().auth_unknown_user, 2);

    // Valid credentials that expire while the allocation lives: refreshes get 401.
    let creds = Creds::rest("alice", UNIX0 + 100, &nonce);
    let (_, other) = h.exchange(&allocate_req(tid(5), Some(&creds), vec![]), from);
    let [Output::CreateAllocation { port, .. }] = other[..] else {
        panic!("{other:?}")
    };
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    h.commands();
    h.advance(Duration::from_secs(101));
    let resp = h.one(&refresh_req(tid(6), &creds, None), from);
    assert_eq!(error_code(&resp), Some(401));
    assert_eq!(h.server.allocations(), 1);
}

#[test]
fn second_allocate_is_437_and_retransmission_is_answered_again() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    // Retransmission of the Allocate (same transaction id 2): same success.
    let resp = h.one(&allocate_req(tid(2), Some(&creds), vec![]), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    assert_eq!(relayed(&resp).port(), port.0);
    // A new Allocate on the same 5-tuple.
    let resp = h.one(&allocate_req(tid(3), Some(&creds), vec![]), from);
    assert_eq!(error_code(&resp), Some(437));
    // Errors after authentication are signed.
    assert!(has::<MessageIntegrity>(&resp));
    assert_eq!(h.server.allocations(), 1);
}

#[test]
fn retransmission_during_bind_is_ignored() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    assert_eq!(other.len(), 1);
    let (msgs, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    assert!(msgs.is_empty() && other.is_empty());
    let resp = h.one(&allocate_req(tid(3), Some(&creds), vec![]), from);
    assert_eq!(error_code(&resp), Some(437));
}

/// An authenticated Allocate whose REQUESTED-TRANSPORT is `proto` (the codec only builds
/// UDP, so the byte is patched before MESSAGE-INTEGRITY is appended by hand).
fn allocate_with_transport(creds: &Creds, proto: u8) -> Vec<u8> {
    use hmac::Mac;
    let mut b = allocate_req(
        tid(9),
        None,
        vec![
            tandem_turn::stun_rs::attributes::stun::UserName::new(&creds.username)
                .unwrap()
                .into(),
            Realm::new(REALM).unwrap().into(),
            tandem_turn::stun_rs::attributes::stun::Nonce::new(&creds.nonce)
                .unwrap()
                .into(),
        ],
    );
    // REQUESTED-TRANSPORT is the first attribute: type, length, then the protocol byte.
    assert_eq!(b[20..22], [0x00, 0x19]);
    b[24] = proto;
    let len = u16::from_be_bytes([b[2], b[3]]) + 24;
    b[2..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(creds.key().as_bytes()).unwrap();
    mac.update(&b);
    b.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    b.extend_from_slice(&mac.finalize().into_bytes());
    b
}

#[test]
fn requested_transport_must_be_udp() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let resp = h.one(&allocate_with_transport(&creds, 6), from);
    assert_eq!(error_code(&resp), Some(442));
    // The hand-made request is accepted with UDP, so the 442 was about the transport.
    let (msgs, other) = h.exchange(&allocate_with_transport(&creds, 17), from);
    assert!(msgs.is_empty());
    assert!(matches!(other[..], [Output::CreateAllocation { .. }]));
    // Missing REQUESTED-TRANSPORT: 400.
    let from = sock("198.51.100.7:4001");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let resp = h.one(
        &request(
            tandem_turn::stun_rs::methods::ALLOCATE,
            tid(2),
            vec![],
            Some(&creds),
        ),
        from,
    );
    assert_eq!(error_code(&resp), Some(400));
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let req = allocate_req(tid(1), None, vec![DontFragment::default().into()]);
    let resp = h.one(&req, from);
    assert_eq!(error_code(&resp), Some(420));
    let list = resp
        .get::<UnknownAttributes>()
        .unwrap()
        .as_unknown_attributes()
        .unwrap();
    assert_eq!(list.attributes(), [0x001A]);
}

#[test]
fn ipv6_allocation_needs_a_relay_address() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let v6 = RequestedAddressFamily::new(AddressFamily::IPv6);
    let resp = h.one(
        &allocate_req(tid(2), Some(&creds), vec![v6.clone().into()]),
        from,
    );
    assert_eq!(error_code(&resp), Some(440));

    let mut cfg = config();
    cfg.relay_ipv6 = Some("2001:db8::7".parse().unwrap());
    let mut h = Harness::new(cfg);
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![v6.into()]), from);
    let [Output::CreateAllocation {
        port,
        family: Family::V6,
        ..
    }] = other[..]
    else {
        panic!("{other:?}")
    };
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    let (msgs, _) = h.split(from);
    assert_eq!(
        relayed(&msgs[0]),
        addr(&format!("[2001:db8::7]:{}", port.0))
    );
    // An IPv4 peer on an IPv6 allocation: 443.
    let resp = h.one(&permission_req(tid(3), &creds, &[addr("8.8.8.8:1")]), from);
    assert_eq!(error_code(&resp), Some(443));
}

#[test]
fn even_port_is_honoured() {
    let mut h = Harness::new(config());
    for i in 0..10 {
        let from = sock(&format!("198.51.100.7:{}", 4000 + i));
        let first = h.one(&allocate_req(tid(1), None, vec![]), from);
        let creds = Creds::rest("s", UNIX0 + 3600, &nonce_of(&first).unwrap());
        let (_, other) = h.exchange(
            &allocate_req(tid(2), Some(&creds), vec![EvenPort::new(false).into()]),
            from,
        );
        let [Output::CreateAllocation { port, .. }] = other[..] else {
            panic!()
        };
        assert_eq!(port.0 % 2, 0);
        h.server.handle_allocation_bound(port, Ok(()), h.now);
        h.commands();
    }
}

#[test]
fn message_integrity_sha256_is_verified_and_mirrored() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (mut creds, _) = allocate(&mut h, from, "alice");
    creds.sha256 = true;
    let bytes = raw_response(&mut h, &refresh_req(tid(5), &creds, None), from);
    let resp = decode_verified(&bytes, &creds.key());
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    assert!(has::<MessageIntegritySha256>(&resp) && !has::<MessageIntegrity>(&resp));
    creds.password = "wrong".into();
    let resp = h.one(&refresh_req(tid(6), &creds, None), from);
    assert_eq!(error_code(&resp), Some(401));
}

#[test]
fn other_users_credentials_on_an_allocation_get_441() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    let mallory = Creds::rest("mallory", UNIX0 + 3600, &creds.nonce);
    let resp = h.one(&refresh_req(tid(5), &mallory, None), from);
    assert_eq!(error_code(&resp), Some(441));
    assert_eq!(h.server.counters().auth_wrong_credentials, 1);
}

#[test]
fn permission_then_send_indication_relays_the_exact_payload() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("8.8.8.8:3478");
    let payload = b"hello peer, 23 bytes!!!";
    let ind = send_ind(peer, payload);
    // No permission yet: dropped.
    assert_eq!(h.server.handle_client_input(&ind, from, h.now), None);
    assert_eq!(h.server.counters().no_permission_dropped, 1);

    let resp = h.one(&permission_req(tid(5), &creds, &[peer]), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
    let (p, to, range) = h.server.handle_client_input(&ind, from, h.now).unwrap();
    assert_eq!((p, to), (port, peer));
    assert_eq!(&ind[range], payload);
    // Any port of the permitted IP.
    let other_port = send_ind(addr("8.8.8.8:9"), b"x");
    assert!(h
        .server
        .handle_client_input(&other_port, from, h.now)
        .is_some());
    let t = h.server.counters().relayed(
        Direction::ClientToPeer,
        Transport::Udp,
        RelayKind::Indication,
    );
    assert_eq!((t.packets, t.bytes), (2, payload.len() as u64 + 1));
    // Send from a client without an allocation: dropped.
    assert_eq!(
        h.server
            .handle_client_input(&ind, sock("198.51.100.7:1"), h.now),
        None
    );
}

#[test]
fn peer_data_needs_a_permission_then_becomes_a_data_indication() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("8.8.8.8:3478");
    assert_eq!(
        h.server.handle_peer_input(b"early", port, peer, h.now),
        None
    );
    assert!(h.commands().is_empty());
    assert_eq!(h.server.counters().no_permission_dropped, 1);

    h.one(&permission_req(tid(5), &creds, &[peer]), from);
    assert_eq!(
        h.server.handle_peer_input(b"data!", port, peer, h.now),
        None
    );
    let (msgs, _) = h.split(from);
    let [ind] = &msgs[..] else { panic!("{msgs:?}") };
    assert_eq!(
        (ind.method(), ind.class()),
        (DATA, MessageClass::Indication)
    );
    let p = ind
        .get::<XorPeerAddress>()
        .unwrap()
        .as_xor_peer_address()
        .unwrap();
    assert_eq!(*p.socket_address(), peer);
    assert_eq!(
        ind.get::<Data>().unwrap().as_data().unwrap().as_bytes(),
        b"data!"
    );
    let t = h.server.counters().relayed(
        Direction::PeerToClient,
        Transport::Udp,
        RelayKind::Indication,
    );
    assert_eq!((t.packets, t.bytes), (1, 5));
    // Unknown relay port: dropped.
    assert_eq!(
        h.server.handle_peer_input(b"x", RelayPort(1), peer, h.now),
        None
    );
    assert_eq!(h.server.counters().unroutable_dropped, 1);
}

#[test]
fn channel_bind_then_channel_data_both_ways() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("8.8.8.8:3478");
    let resp = h.one(&channel_bind_req(tid(5), &creds, 0x4001, peer), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse, "{resp:?}");
    assert!(has::<MessageIntegrity>(&resp));

    // Client → peer: header + payload, payload range returned.
    let mut cd = channel_data_header(0x4001, 5).unwrap().to_vec();
    cd.extend_from_slice(b"howdy");
    assert_eq!(
        h.server.handle_client_input(&cd, from, h.now),
        Some((port, peer, 4..9))
    );
    // Unbound channel number: dropped.
    let mut other = cd.clone();
    other[1] = 0x02;
    assert_eq!(h.server.handle_client_input(&other, from, h.now), None);

    // Peer → client: the fast path names the client and channel; nothing queued.
    let out = h.server.handle_peer_input(b"back", port, peer, h.now);
    assert_eq!(
        out,
        Some(PeerToClient {
            client: from,
            channel: 0x4001
        })
    );
    assert!(h.commands().is_empty());
    // The same IP on another port has a permission but no channel: Data indication.
    assert_eq!(
        h.server
            .handle_peer_input(b"b2", port, addr("8.8.8.8:9"), h.now),
        None
    );
    assert_eq!(h.split(from).0.len(), 1);

    let c = h.server.counters();
    let up = c.relayed(
        Direction::ClientToPeer,
        Transport::Udp,
        RelayKind::ChannelData,
    );
    let down = c.relayed(
        Direction::PeerToClient,
        Transport::Udp,
        RelayKind::ChannelData,
    );
    assert_eq!(
        (up.packets, up.bytes, down.packets, down.bytes),
        (1, 5, 1, 4)
    );
}

#[test]
fn channel_rebinding_rules() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    let (a, b) = (addr("8.8.8.8:1"), addr("8.8.4.4:1"));
    assert_eq!(
        h.one(&channel_bind_req(tid(5), &creds, 0x4000, a), from)
            .class(),
        MessageClass::SuccessResponse
    );
    // Refreshing the same binding is fine.
    assert_eq!(
        h.one(&channel_bind_req(tid(6), &creds, 0x4000, a), from)
            .class(),
        MessageClass::SuccessResponse
    );
    // Same channel to another peer, same peer on another channel: 400.
    assert_eq!(
        error_code(&h.one(&channel_bind_req(tid(7), &creds, 0x4000, b), from)),
        Some(400)
    );
    assert_eq!(
        error_code(&h.one(&channel_bind_req(tid(8), &creds, 0x4002, a), from)),
        Some(400)
    );
    // Out of range.
    assert_eq!(
        error_code(&h.one(&channel_bind_req(tid(9), &creds, 0x3FFF, b), from)),
        Some(400)
    );
    assert_eq!(
        error_code(&h.one(&channel_bind_req(tid(10), &creds, 0x8000, b), from)),
        Some(400)
    );
    assert_eq!(
        h.one(&channel_bind_req(tid(11), &creds, 0x7FFF, b), from)
            .class(),
        MessageClass::SuccessResponse
    );
}

#[test]
fn channels_and_permissions_expire() {
    let mut cfg = config();
    cfg.nonce_lifetime = Duration::from_secs(3600);
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let (a, b) = (addr("8.8.8.8:1"), addr("1.1.1.1:1"));
    h.one(&channel_bind_req(tid(5), &creds, 0x4000, a), from);
    h.one(&permission_req(tid(6), &creds, &[b]), from);
    let cd = [0x40, 0x00, 0x00, 0x01, 0xAA];
    // Keep the allocation alive; after 300 s both permissions are gone (the channel alone
    // does not carry a permission).
    h.advance(Duration::from_secs(299));
    assert!(h.server.handle_client_input(&cd, from, h.now).is_some());
    h.advance(Duration::from_secs(1));
    assert!(h.server.handle_client_input(&cd, from, h.now).is_none());
    assert!(h.server.handle_peer_input(b"x", port, b, h.now).is_none());
    assert_eq!(h.server.counters().no_permission_dropped, 2);
    // Refresh the permission of `a`: the channel works again until it expires at 600 s.
    assert_eq!(
        h.one(&refresh_req(tid(7), &creds, None), from).class(),
        MessageClass::SuccessResponse
    );
    h.one(&permission_req(tid(8), &creds, &[a]), from);
    assert!(h.server.handle_client_input(&cd, from, h.now).is_some());
    h.advance(Duration::from_secs(300));
    // t = 600: the channel binding (600 s) has expired.
    h.one(&permission_req(tid(9), &creds, &[a]), from);
    assert!(h.server.handle_client_input(&cd, from, h.now).is_none());
    assert_eq!(h.server.handle_peer_input(b"x", port, a, h.now), None);
    assert_eq!(
        h.split(from).0.len(),
        1,
        "a Data indication, not ChannelData"
    );
    // The channel number is free for another peer now.
    let resp = h.one(&channel_bind_req(tid(10), &creds, 0x4000, b), from);
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
}

#[test]
fn forbidden_peers_get_403() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    for peer in ["127.0.0.1:80", "10.0.0.1:80", "169.254.169.254:80"] {
        let resp = h.one(&permission_req(tid(5), &creds, &[addr(peer)]), from);
        assert_eq!(error_code(&resp), Some(403), "{peer}");
        let resp = h.one(&channel_bind_req(tid(6), &creds, 0x4000, addr(peer)), from);
        assert_eq!(error_code(&resp), Some(403), "{peer}");
    }
    // One bad peer fails the whole request: the good one got no permission.
    let resp = h.one(
        &permission_req(tid(7), &creds, &[addr("8.8.8.8:1"), addr("10.0.0.1:1")]),
        from,
    );
    assert_eq!(error_code(&resp), Some(403));
    assert!(h
        .server
        .handle_client_input(&send_ind(addr("8.8.8.8:1"), b"x"), from, h.now)
        .is_none());
    assert!(h
        .server
        .handle_client_input(&send_ind(addr("10.0.0.1:1"), b"x"), from, h.now)
        .is_none());
    assert_eq!(h.server.counters().peers_denied, 8);
}

#[test]
fn loopback_peers_allowed_when_configured() {
    let mut cfg = config();
    cfg.allow_loopback_peers = true;
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("127.0.0.1:7882");
    assert_eq!(
        h.one(&permission_req(tid(5), &creds, &[peer]), from)
            .class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        h.server
            .handle_client_input(&send_ind(peer, b"hi"), from, h.now)
            .map(|r| r.0),
        Some(port)
    );
}

#[test]
fn per_user_quota_is_486_and_total_is_508() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    cfg.max_allocations = 3;
    let mut h = Harness::new(cfg);
    allocate(&mut h, sock("198.51.100.7:1"), "alice");
    allocate(&mut h, sock("198.51.100.7:2"), "alice");
    let from = sock("198.51.100.7:3");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let alice = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    assert_eq!(
        error_code(&h.one(&allocate_req(tid(2), Some(&alice), vec![]), from)),
        Some(486)
    );
    // Another expiry, same session id: same user.
    let alice2 = Creds::rest("alice", UNIX0 + 7200, &alice.nonce);
    assert_eq!(
        error_code(&h.one(&allocate_req(tid(3), Some(&alice2), vec![]), from)),
        Some(486)
    );
    allocate(&mut h, from, "bob");
    let from = sock("198.51.100.7:4");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let carol = Creds::rest("carol", UNIX0 + 3600, &nonce_of(&first).unwrap());
    assert_eq!(
        error_code(&h.one(&allocate_req(tid(2), Some(&carol), vec![]), from)),
        Some(508)
    );
    let c = h.server.counters();
    assert_eq!((c.quota_user, c.quota_capacity), (2, 1));
}

#[test]
fn permission_and_channel_quotas_are_508() {
    let mut cfg = config();
    cfg.max_permissions_per_allocation = 2;
    cfg.max_channels_per_allocation = 1;
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    let peers = [addr("8.8.8.8:1"), addr("8.8.4.4:1"), addr("1.1.1.1:1")];
    assert_eq!(
        h.one(&permission_req(tid(5), &creds, &peers[..2]), from)
            .class(),
        MessageClass::SuccessResponse
    );
    // Refreshing existing ones is fine; a third is not.
    assert_eq!(
        h.one(&permission_req(tid(6), &creds, &peers[..2]), from)
            .class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        error_code(&h.one(&permission_req(tid(7), &creds, &peers[2..]), from)),
        Some(508)
    );
    assert_eq!(
        h.one(&channel_bind_req(tid(8), &creds, 0x4000, peers[0]), from)
            .class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        error_code(&h.one(&channel_bind_req(tid(9), &creds, 0x4001, peers[1]), from)),
        Some(508)
    );
}

#[test]
fn bind_failures_retry_other_ports_then_508() {
    let mut h = Harness::new(config()); // bind_attempts = 4
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    let [Output::CreateAllocation { mut port, .. }] = other[..] else {
        panic!()
    };
    let mut tried = vec![port];
    for _ in 0..3 {
        h.server
            .handle_allocation_bound(port, Err(BindError::PortUnavailable), h.now);
        let cmds = h.commands();
        let [Output::CreateAllocation { port: next, .. }] = cmds[..] else {
            panic!("{cmds:?}")
        };
        assert!(!tried.contains(&next));
        tried.push(next);
        port = next;
    }
    h.server
        .handle_allocation_bound(port, Err(BindError::PortUnavailable), h.now);
    let (msgs, other) = h.split(from);
    assert!(other.is_empty());
    assert_eq!(error_code(&msgs[0]), Some(508));
    assert_eq!(msgs[0].transaction_id(), &tid(2));
    assert!(has::<MessageIntegrity>(&msgs[0]));
    let c = h.server.counters();
    assert_eq!((c.bind_failures, h.server.pending_allocations()), (4, 0));
    // The user's quota slot came back, the 5-tuple is free.
    allocate(&mut h, from, "alice");
}

#[test]
fn bind_timeout_is_508_and_frees_the_port() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    let [Output::CreateAllocation { port, .. }] = other[..] else {
        panic!()
    };
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.now + Duration::from_secs(5))
    );
    h.advance(Duration::from_secs(5));
    let (msgs, other) = h.split(from);
    assert_eq!(error_code(&msgs[0]), Some(508));
    assert_eq!(other, vec![Output::FreeAllocation { port }]);
    // A late bind report is answered with another FreeAllocation.
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    assert_eq!(h.commands(), vec![Output::FreeAllocation { port }]);
    assert_eq!(h.server.allocations(), 0);
}

#[test]
fn rate_limit_drops_over_budget() {
    let mut cfg = config();
    cfg.bytes_per_sec_per_allocation = Some(100_000);
    let mut h = Harness::new(cfg);
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    h.one(
        &channel_bind_req(tid(5), &creds, 0x4000, addr("8.8.8.8:1")),
        from,
    );
    let mut cd = channel_data_header(0x4000, 1000).unwrap().to_vec();
    cd.resize(1004, 7);
    let sent = (0..200)
        .filter(|_| h.server.handle_client_input(&cd, from, h.now).is_some())
        .count();
    assert_eq!(sent, 100); // one second of burst
    assert_eq!(h.server.counters().rate_limited_dropped, 100);
    h.now += Duration::from_millis(100); // 10 000 bytes of refill
    let sent = (0..20)
        .filter(|_| h.server.handle_client_input(&cd, from, h.now).is_some())
        .count();
    assert_eq!(sent, 10);
}

#[test]
fn tcp_stream_frames_and_disconnect() {
    let mut h = Harness::new(config());
    let from = tcp("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("8.8.8.8:1");
    h.one(&channel_bind_req(tid(5), &creds, 0x4000, peer), from);
    // Two padded ChannelData frames and a Binding request back to back in one read.
    let mut stream = Vec::new();
    for payload in [&b"abcde"[..], b"xyz"] {
        stream.extend_from_slice(&channel_data_header(0x4000, payload.len()).unwrap());
        stream.extend_from_slice(payload);
        stream.resize(stream.len().next_multiple_of(4), 0);
    }
    stream.extend_from_slice(&request(BINDING, tid(6), vec![], None));
    let mut at = 0;
    let mut out = Vec::new();
    while let Ok(Some(n)) = frame_len(&stream[at..]) {
        let frame = &stream[at..at + n];
        if let Some((p, to, r)) = h.server.handle_client_input(frame, from, h.now) {
            assert_eq!((p, to), (port, peer));
            out.push(frame[r].to_vec());
        }
        at += n;
    }
    assert_eq!(at, stream.len());
    assert_eq!(out, [b"abcde".to_vec(), b"xyz".to_vec()]);
    assert_eq!(h.split(from).0.len(), 1);
    let t = h.server.counters().relayed(
        Direction::ClientToPeer,
        Transport::Tcp,
        RelayKind::ChannelData,
    );
    assert_eq!(t.packets, 2);
    // The connection closes: the allocation goes.
    h.server.handle_client_disconnected(from, h.now);
    assert_eq!(h.commands(), vec![Output::FreeAllocation { port }]);
    assert_eq!(h.server.allocations(), 0);
}

#[test]
fn malformed_input_is_dropped_and_counted() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let good = request(BINDING, tid(1), vec![Fingerprint::default().into()], None);
    assert_eq!(h.one(&good, from).class(), MessageClass::SuccessResponse);
    let mut bad_cookie = good.clone();
    bad_cookie[5] ^= 1;
    let mut bad_len = good.clone();
    bad_len[3] = 4;
    let mut bad_fp = good.clone();
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 1;
    let huge = vec![0u8; 70_000];
    for bytes in [
        &bad_cookie[..],
        &bad_len,
        &bad_fp,
        &good[..10],
        &[0x80, 0, 0, 0],
        &huge,
        &[],
    ] {
        assert!(h.server.handle_client_input(bytes, from, h.now).is_none());
    }
    assert!(h.commands().is_empty());
    assert_eq!(h.server.counters().malformed_dropped, 7);
}

#[test]
fn many_allocations_expire_in_order() {
    let mut h = Harness::new(config());
    for i in 0..50u16 {
        allocate(
            &mut h,
            sock(&format!("198.51.100.7:{}", 1000 + i)),
            &format!("u{i}"),
        );
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(h.server.allocations(), 50);
    h.advance(Duration::from_secs(600 - 50));
    assert_eq!(h.server.allocations(), 49);
    h.advance(Duration::from_secs(49));
    assert_eq!(h.server.allocations(), 0);
    assert_eq!(h.server.poll_timeout(), None);
    assert_eq!(h.server.counters().allocations_expired, 50);
}

#[test]
fn oversized_peer_datagrams_do_not_panic() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let peer = addr("8.8.8.8:1");
    h.one(&permission_req(tid(5), &creds, &[peer]), from);
    // The largest Data indication carries 65 476 bytes; longer datagrams are dropped.
    for (len, sent) in [
        (65_400, true),
        (65_476, true),
        (65_477, false),
        (65_535, false),
        (70_000, false),
    ] {
        assert_eq!(
            h.server
                .handle_peer_input(&vec![1u8; len], port, peer, h.now),
            None
        );
        let cmds = h.commands();
        assert_eq!(cmds.len(), usize::from(sent), "{len}");
        if let [Output::SendToClient { bytes, .. }] = &cmds[..] {
            assert!(bytes.len() <= 65_535);
            let msg = decode(bytes);
            assert_eq!(
                msg.get::<Data>()
                    .unwrap()
                    .as_data()
                    .unwrap()
                    .as_bytes()
                    .len(),
                len
            );
        }
    }
    assert_eq!(h.server.counters().malformed_dropped, 3);
    // With a channel, anything up to 65 535 bytes takes the fast path.
    h.one(&channel_bind_req(tid(6), &creds, 0x4000, peer), from);
    assert!(h
        .server
        .handle_peer_input(&vec![1u8; 65_535], port, peer, h.now)
        .is_some());
    assert!(h
        .server
        .handle_peer_input(&vec![1u8; 65_536], port, peer, h.now)
        .is_none());
}
