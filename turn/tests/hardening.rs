//! The open-internet defences of the TURN core: the strict peer policy by default, call-scoped
//! credentials that a revoked grant ends, quotas across cores, EVEN-PORT with the R bit, and
//! the rate limit on unauthenticated answers.

mod common;

use std::time::Duration;

use common::*;
use tandem_turn::stun_rs::attributes::turn::EvenPort;
use tandem_turn::stun_rs::methods::BINDING;
use tandem_turn::stun_rs::MessageClass;
use tandem_turn::{rest_credentials, BindError, Config, Output};

/// tandem's default: no open relay, the media address is the one peer.
fn strict() -> Config {
    Config {
        open_relay: false,
        always_allow: vec![addr("203.0.113.9:7882")],
        host_addresses: vec![ip("203.0.113.9"), ip("192.0.2.1")],
        ..config()
    }
}

#[test]
fn by_default_only_the_media_address_is_a_peer() {
    let mut h = Harness::new(strict());
    let from = sock("198.51.100.7:4000");
    let (creds, port) = allocate(&mut h, from, "alice");
    let media = addr("203.0.113.9:7882");
    let ok = h.one(&permission_req(tid(5), &creds, &[media]), from);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    let ok = h.one(&channel_bind_req(tid(6), &creds, 0x4000, media), from);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    // A public address, the host's other ports, another relay port of the host, private
    // and loopback addresses: 403, and nothing leaves.
    for peer in [
        "8.8.8.8:53",
        "203.0.113.9:22",
        "203.0.113.9:50001",
        "192.0.2.1:7882",
        "10.0.0.1:80",
        "127.0.0.1:7882",
    ] {
        let resp = h.one(&permission_req(tid(7), &creds, &[addr(peer)]), from);
        assert_eq!(error_code(&resp), Some(403), "{peer}");
        let resp = h.one(&channel_bind_req(tid(8), &creds, 0x4001, addr(peer)), from);
        assert_eq!(error_code(&resp), Some(403), "{peer}");
        assert!(h
            .server
            .handle_client_input(&send_ind(addr(peer), b"x"), from, h.now)
            .is_none());
    }
    // The media permission is per IP, yet a Send to another port of that IP is refused.
    assert!(h
        .server
        .handle_client_input(&send_ind(addr("203.0.113.9:22"), b"x"), from, h.now)
        .is_none());
    assert_eq!(
        h.server
            .handle_client_input(&send_ind(media, b"x"), from, h.now)
            .map(|r| r.0),
        Some(port)
    );
}

#[test]
fn an_open_relay_still_refuses_the_hosts_own_addresses() {
    let mut h = Harness::new(Config {
        open_relay: true,
        ..strict()
    });
    let from = sock("198.51.100.7:4000");
    let (creds, _) = allocate(&mut h, from, "alice");
    let ok = h.one(&permission_req(tid(5), &creds, &[addr("8.8.8.8:53")]), from);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    for peer in ["203.0.113.9:22", "192.0.2.1:80", "[::ffff:192.0.2.1]:80"] {
        let resp = h.one(&permission_req(tid(6), &creds, &[addr(peer)]), from);
        assert!(
            matches!(error_code(&resp), Some(403) | Some(443)),
            "{peer}: {resp:?}"
        );
    }
    let resp = h.one(
        &permission_req(tid(7), &creds, &[addr("203.0.113.9:7882")]),
        from,
    );
    assert_eq!(resp.class(), MessageClass::SuccessResponse);
}

/// The Allocate handshake with credentials for `grant`.
fn allocate_for_grant(
    h: &mut Harness,
    from: tandem_turn::ClientSocket,
    user: &str,
    grant: &str,
) -> Result<(Creds, tandem_turn::RelayPort), u16> {
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let (username, password) = rest_credentials(SECRET, user, Some(grant), UNIX0 + 86_400);
    let creds = Creds {
        username,
        password,
        nonce: nonce_of(&first).unwrap(),
        sha256: false,
    };
    let (msgs, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    if let [m] = &msgs[..] {
        return Err(error_code(m).unwrap_or(0));
    }
    let [Output::CreateAllocation { port, .. }] = other[..] else {
        panic!("{other:?}")
    };
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    let (msgs, _) = h.split(from);
    assert_eq!(msgs[0].class(), MessageClass::SuccessResponse);
    Ok((creds, port))
}

#[test]
fn a_revoked_grant_ends_its_allocations_at_the_deadline_and_refuses_its_credentials() {
    let mut h = Harness::new(config());
    let a = sock("198.51.100.7:4000");
    let b = sock("198.51.100.7:4001");
    let (creds, port) = allocate_for_grant(&mut h, a, "alice", "call-1").unwrap();
    let (_, other) = allocate_for_grant(&mut h, b, "alice", "call-2").unwrap();
    // The call ends: its credentials keep working for the grace, then stop.
    let at = h.now + Duration::from_secs(60);
    h.server.handle_grant_revoked("call-1", at, h.now);
    h.advance(Duration::from_secs(30));
    let ok = h.one(&refresh_req(tid(3), &creds, Some(600)), a);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    assert!(
        lifetime_of(&ok).unwrap() <= 30,
        "Refresh cannot outlive the grant: {ok:?}"
    );
    h.advance(Duration::from_secs(31));
    let freed = h.commands();
    assert!(
        freed.contains(&Output::FreeAllocation { port }),
        "{freed:?}"
    );
    assert!(!freed.contains(&Output::FreeAllocation { port: other }));
    assert_eq!(h.server.allocations(), 1);
    assert_eq!(h.server.counters().allocations_revoked, 1);
    // New Allocates with the old grant's credentials: 401.
    let c = sock("198.51.100.7:4002");
    assert_eq!(
        allocate_for_grant(&mut h, c, "alice", "call-1").unwrap_err(),
        401
    );
    assert_eq!(h.server.counters().auth_revoked, 1);
    // Another grant of the same guest is untouched.
    assert!(allocate_for_grant(&mut h, c, "alice", "call-3").is_ok());
}

#[test]
fn revoked_grants_are_bounded_and_forgotten() {
    let mut h = Harness::new(Config {
        max_revoked_grants: 2,
        revoked_grant_memory: Duration::from_secs(100),
        ..config()
    });
    let now = h.now;
    for g in ["g1", "g2", "g3"] {
        h.server.handle_grant_revoked(g, now, now);
    }
    // g1 was pushed out by the bound; g2 and g3 are refused.
    let from = |p: u16| sock(&format!("198.51.100.7:{p}"));
    assert!(allocate_for_grant(&mut h, from(1), "u", "g1").is_ok());
    assert_eq!(
        allocate_for_grant(&mut h, from(2), "u", "g2").unwrap_err(),
        401
    );
    // Past their memory, grants are forgotten (their credentials have expired by then).
    h.advance(Duration::from_secs(101));
    assert!(allocate_for_grant(&mut h, from(3), "u", "g3").is_ok());
}

#[test]
fn a_quota_kept_across_cores_refuses_with_486() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("alice", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let (_, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    let [Output::CreateAllocation { port, ref user, .. }] = other[..] else {
        panic!("{other:?}")
    };
    assert_eq!(&**user, "alice");
    h.server
        .handle_allocation_bound(port, Err(BindError::UserQuota), h.now);
    let (msgs, _) = h.split(from);
    assert_eq!(error_code(&msgs[0]), Some(486));
    assert_eq!(h.server.pending_allocations(), 0);
    assert_eq!(h.server.counters().quota_user, 1);
    // The client may try again (the core's own count was released).
    allocate(&mut h, sock("198.51.100.7:4001"), "alice");
}

#[test]
fn even_port_with_the_reservation_bit_is_508() {
    let mut h = Harness::new(config());
    let from = sock("198.51.100.7:4000");
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    let creds = Creds::rest("s", UNIX0 + 3600, &nonce_of(&first).unwrap());
    let resp = h.one(
        &allocate_req(tid(2), Some(&creds), vec![EvenPort::new(true).into()]),
        from,
    );
    assert_eq!(error_code(&resp), Some(508));
    assert_eq!(h.server.pending_allocations(), 0);
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut h = Harness::new(Config {
        unauth_per_sec: 10,
        unauth_burst: 20,
        ..config()
    });
    let binding = |n: u8| request(BINDING, tid(n), vec![], None);
    let count = |h: &mut Harness, from: tandem_turn::ClientSocket, n: u8| {
        (0..n)
            .map(|i| h.exchange(&binding(i), from).0.len())
            .sum::<usize>()
    };
    // A burst of 100 from one address (any port): 20 answers.
    let victim = |p: u16| sock(&format!("192.0.2.50:{p}"));
    let answered: usize = (0..100).map(|i| count(&mut h, victim(1000 + i), 1)).sum();
    assert_eq!(answered, 20);
    assert_eq!(h.server.counters().unauth_dropped, 80);
    // 401 challenges count too.
    let (msgs, _) = h.exchange(&allocate_req(tid(9), None, vec![]), victim(9));
    assert!(msgs.is_empty());
    // Another source is unaffected; an IPv6 /64 is one source.
    assert_eq!(count(&mut h, sock("192.0.2.51:1"), 1), 1);
    assert_eq!(count(&mut h, sock("[2001:db8:1:2::1]:1"), 15), 15);
    assert_eq!(count(&mut h, sock("[2001:db8:1:2::ffff]:1"), 15), 5);
    // The rate refills with time.
    h.advance(Duration::from_millis(500));
    assert_eq!(count(&mut h, victim(2000), 10), 5);
    // TCP clients cannot spoof their address: not limited.
    assert_eq!(count(&mut h, tcp("192.0.2.50:3000"), 30), 30);
}

#[test]
fn the_source_table_is_bounded_and_fails_closed() {
    let mut h = Harness::new(Config {
        max_unauth_sources: 4,
        ..config()
    });
    let binding = request(BINDING, tid(1), vec![], None);
    for i in 0..4 {
        let from = sock(&format!("192.0.2.{i}:1"));
        assert_eq!(h.exchange(&binding, from).0.len(), 1);
    }
    let fifth = sock("192.0.2.99:1");
    assert_eq!(
        h.exchange(&binding, fifth).0.len(),
        0,
        "table full of live sources"
    );
    // Once the others are idle, their entries make room.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.exchange(&binding, fifth).0.len(), 1);
}
