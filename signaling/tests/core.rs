//! Deterministic tests of the signaling core through its public API. Time is driven by hand:
//! every input gets an `Instant` computed from one `t0`, and `handle_timeout` is only called
//! when a test says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use tandem_signaling::wire::{
    ChatMessage, EndReason, Ended, GuestState, MessageType, Presence, RoomInfo, Sender, Stats,
};
use tandem_signaling::*;

mod common;
use common::*;

// ---- harness (the shared part is in common/mod.rs) -------------------------------------------

impl H {
    fn named(&mut self, name: &str) -> G {
        let id = self.create(Some(name));
        let conn = self.connect(id);
        self.drain();
        G { id, conn }
    }

    fn start_with(&mut self, g: G, interests: &[&str]) -> Result<Ack, SignalError> {
        self.ev(g.conn, "match:start", json!({ "interests": interests }))
    }

    fn leave(&mut self, g: G) -> Result<Ack, SignalError> {
        self.ev(g.conn, "chat:leave", Value::Null)
    }

    fn msg(&mut self, g: G, text: &str) -> Result<Ack, SignalError> {
        let client_id = format!("c{}", self.next_client_id);
        self.next_client_id += 1;
        self.ev(
            g.conn,
            "chat:message",
            json!({ "clientId": client_id, "type": "text", "content": text }),
        )
    }

    /// Makes every two of `gs` unable to pair (a chat each, then a leave): a fresh re-pair block.
    fn mutual_blocks(&mut self, gs: &[G]) {
        for i in 0..gs.len() {
            for j in i + 1..gs.len() {
                self.pair_these(gs[i], gs[j]);
                assert_eq!(self.leave(gs[i]), Ok(Ack::State(GuestState::Online)));
                self.drain();
            }
        }
    }

    fn stats(&self) -> Stats {
        self.core.stats(self.now)
    }
}

// ---- output finders (events, one, count, found, established: common/mod.rs) -----------------

/// Names of every event emitted to `to`, in order.
fn names_to(out: &[Output], to: Target) -> Vec<&'static str> {
    out.iter()
        .filter_map(|o| match o {
            Output::Emit { to: t, event } if *t == to => Some(event.name()),
            _ => None,
        })
        .collect()
}

fn delivers(out: &[Output], to: SessionId) -> Vec<&ChatMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver { to: t, message } if *t == to => Some(message),
            _ => None,
        })
        .collect()
}

fn all_delivers(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Deliver { .. }))
        .count()
}

fn closes(out: &[Output]) -> Vec<(ConnId, CloseReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

fn ended(out: &[Output], id: SessionId) -> Ended {
    match one(out, "chat:ended", Target::Guest(id)) {
        ServerEvent::Ended(e) => e.clone(),
        e => unreachable!("{e:?}"),
    }
}

fn presence(out: &[Output], id: SessionId) -> Vec<Presence> {
    events(out, "partner:presence", Target::Guest(id))
        .into_iter()
        .map(|e| match e {
            ServerEvent::Presence(p) => p.status,
            e => unreachable!("{e:?}"),
        })
        .collect()
}

fn system_messages(out: &[Output], id: SessionId) -> Vec<ChatMessage> {
    events(out, "chat:message", Target::Guest(id))
        .into_iter()
        .map(|e| match e {
            ServerEvent::Message(m) => m.clone(),
            e => unreachable!("{e:?}"),
        })
        .collect()
}

fn broadcasts(out: &[Output]) -> Vec<Stats> {
    events(out, "realtime:stats", Target::All)
        .into_iter()
        .map(|e| match e {
            ServerEvent::Stats(s) => *s,
            e => unreachable!("{e:?}"),
        })
        .collect()
}

fn msg_id(ack: Result<Ack, SignalError>) -> (MessageId, u64) {
    match ack {
        Ok(Ack::Sent { id, timestamp }) => (id, timestamp),
        other => panic!("expected Ack::Sent, got {other:?}"),
    }
}

fn stats(total: u64, online: u64, active: u64, available: u64, connected: u64) -> Stats {
    Stats {
        total_users: total,
        online_users: online,
        active_users: active,
        available_users: available,
        connected_users: connected,
    }
}

// ---- create_guest / refresh / expiry ---------------------------------------------------------

#[test]
fn generated_username_and_ids() {
    let mut h = H::loose();
    let mut names = HashSet::new();
    for i in 0..20u32 {
        h.set(f64::from(i));
        let info = h.core.create_guest(None, h.now).unwrap();
        let name = &info.username;
        assert_eq!(name.len(), 10, "{name}");
        assert!(name.starts_with("Guest-"), "{name}");
        assert!(
            name[6..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{name}"
        );
        names.insert(name.clone());
        let sid = info.session_id.to_string();
        assert_eq!(sid.len(), 32);
        assert!(sid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(SessionId::parse(&sid), Some(info.session_id));
        assert_eq!(info.expires_at_ms, UNIX0 + u64::from(i) * 1000 + 7_200_000);
    }
    assert!(names.len() > 1, "generated names vary");
    assert_eq!(h.core.counters().guests_created, 20);
}

#[test]
fn same_seed_same_ids() {
    let run = || {
        let mut h = H::loose();
        let (a, b, room) = h.pair();
        let id = msg_id(h.msg(a, "hi")).0;
        (a.id, b.id, room, id)
    };
    assert_eq!(run(), run());
}

#[test]
fn explicit_usernames() {
    let mut h = H::loose();
    let cases: Vec<(String, String)> = vec![
        ("  Alice_1 ".into(), "Alice_1".into()),
        ("bob".into(), "bob".into()),
        ("Zoë-Ünï 42".into(), "Zoë-Ünï 42".into()),
        ("x".into(), "x".into()),
        ("a".repeat(24), "a".repeat(24)),
        (format!("  {}  ", "é".repeat(24)), "é".repeat(24)),
    ];
    for (input, want) in &cases {
        let info = h.core.create_guest(Some(input), h.now).unwrap();
        assert_eq!(&info.username, want);
        assert_eq!(valid_username(input).as_ref(), Some(want));
    }
    let long = "a".repeat(25);
    for bad in [
        "",
        "   ",
        long.as_str(),
        "bad!",
        "tab\there",
        "<b>",
        "dot.name",
        "new\nline",
        "emoji🙂",
    ] {
        assert_eq!(
            h.core.create_guest(Some(bad), h.now),
            Err(SignalError::InvalidUsername),
            "{bad:?}"
        );
        assert_eq!(valid_username(bad), None);
    }
    assert_eq!(h.stats().total_users, 6);
}

#[test]
fn max_sessions_is_server_busy() {
    let mut h = H::new(CoreConfig {
        max_sessions: 2,
        token_ttl: secs(60.0),
        ..loose()
    });
    h.create(None);
    h.set(10.0);
    h.create(Some("second"));
    assert_eq!(
        h.core.create_guest(None, h.now),
        Err(SignalError::ServerBusy)
    );
    assert_eq!(
        h.core.create_guest(Some("third"), h.now),
        Err(SignalError::ServerBusy)
    );
    assert_eq!(h.stats().total_users, 2);
    // The first expires at 60 s; once swept there is room again.
    h.tick_to(60.0);
    assert_eq!(h.stats().total_users, 1);
    assert!(h.core.create_guest(Some("third"), h.now).is_ok());
    assert_eq!(
        h.core.create_guest(None, h.now),
        Err(SignalError::ServerBusy)
    );
}

#[test]
fn refresh_extends_the_session() {
    let mut h = H::new(CoreConfig {
        token_ttl: secs(60.0),
        // Not about a first socket's deadline.
        connect_timeout: secs(3600.0),
        ..loose()
    });
    let info = h.core.create_guest(Some("ann"), h.now).unwrap();
    assert_eq!(info.expires_at_ms, UNIX0 + 60_000);
    h.set(50.0);
    let r = h.core.refresh(info.session_id, h.now).unwrap();
    assert_eq!(r.session_id, info.session_id);
    assert_eq!(r.username, "ann");
    assert_eq!(r.expires_at_ms, UNIX0 + 110_000);
    // The old expiry passes: still alive.
    h.tick_to(60.0);
    assert!(h.core.session_alive(info.session_id, h.now));
    assert_eq!(h.stats().total_users, 1);
    h.tick_to(109.9);
    assert!(h.core.session_alive(info.session_id, h.now));
    let conn = h.connect(info.session_id);
    assert!(conn.0 > 0);
    h.drain();
    let out = h.tick_to(110.0);
    assert!(!h.core.session_alive(info.session_id, h.now));
    assert_eq!(h.stats().total_users, 0);
    assert_eq!(closes(&out), vec![(conn, CloseReason::SessionExpired)]);
}

#[test]
fn refresh_after_expiry_is_unauthorized() {
    let mut h = H::new(CoreConfig {
        token_ttl: secs(60.0),
        ..loose()
    });
    let a = h.create(None);
    let b = h.create(None);
    // Expired but not yet swept.
    h.set(60.0);
    assert!(!h.core.session_alive(a, h.now));
    assert_eq!(h.core.refresh(a, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.core.admit(a, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.try_connect(a).1, Err(SignalError::Unauthorized));
    // Swept.
    h.tick_to(61.0);
    assert_eq!(h.core.refresh(b, h.now), Err(SignalError::Unauthorized));
    assert_eq!(
        h.core.refresh(SessionId::from_raw(12345), h.now),
        Err(SignalError::Unauthorized)
    );
    assert_eq!(h.stats().total_users, 0);
    assert_eq!(h.core.counters().sessions_expired, 2);
}

#[test]
fn expired_session_is_swept_and_its_chat_ends() {
    let mut h = H::new(CoreConfig {
        token_ttl: secs(60.0),
        ..loose()
    });
    let (a, b, room) = h.pair();
    let a2 = h.connect(a.id);
    h.drain();
    h.set(30.0);
    h.core.refresh(b.id, h.now).unwrap();
    let out = h.tick_to(59.9);
    assert!(closes(&out).is_empty());
    let out = h.tick_to(60.0);
    let mut closed = closes(&out);
    closed.sort_by_key(|(c, _)| *c);
    assert_eq!(
        closed,
        vec![
            (a.conn, CloseReason::SessionExpired),
            (a2, CloseReason::SessionExpired)
        ]
    );
    assert_eq!(
        ended(&out, b.id),
        Ended {
            room_id: room,
            reason: EndReason::Disconnected
        }
    );
    let sys = system_messages(&out, b.id);
    assert_eq!(sys.len(), 1);
    assert_eq!(sys[0].content, "Stranger has disconnected.");
    assert_eq!(
        (sys[0].from, sys[0].kind),
        (Sender::System, MessageType::System)
    );
    // The expired guest's sockets are forgotten; the shell's later disconnects are no-ops.
    assert_eq!(h.msg(a, "still there?"), Err(SignalError::Unauthorized));
    h.core.disconnect(a.conn, h.now);
    h.core.disconnect(a2, h.now);
    assert!(h.drain().is_empty());
    assert_eq!(h.try_connect(a.id).1, Err(SignalError::Unauthorized));
    assert_eq!(h.stats(), stats(1, 1, 1, 0, 0));
    assert_eq!(h.probe(b.id).state, GuestState::Online);
    assert_eq!(h.core.counters().sessions_expired, 1);
    assert_eq!(
        h.core.counters().chats_ended[EndReason::Disconnected as usize],
        1
    );
}

#[test]
fn expired_searching_session_leaves_the_queue() {
    let mut h = H::new(CoreConfig {
        token_ttl: secs(60.0),
        ..loose()
    });
    let a = h.guest();
    h.start(a).unwrap();
    assert_eq!(h.stats().available_users, 1);
    h.tick_to(60.0);
    assert_eq!(h.stats(), Stats::default());
    let b = h.guest();
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::Searching)));
    assert_eq!(h.stats().available_users, 1);
}

// ---- connect / admit -----------------------------------------------------------------------

#[test]
fn connect_emits_established_and_stats_to_the_socket() {
    let mut h = H::loose();
    let id = h.create(Some("carol"));
    h.drain();
    let conn = h.connect(id);
    let out = h.drain();
    let e = established(&out, conn);
    assert_eq!(e.session_id, id);
    assert_eq!(e.username, "carol");
    assert_eq!(e.state, GuestState::Online);
    assert_eq!(e.room, None);
    let v = serde_json::to_value(ServerEvent::Established(e)).unwrap();
    assert_eq!(
        v,
        json!({ "sessionId": id.to_string(), "username": "carol", "state": "online" })
    );
    match one(&out, "realtime:stats", Target::Conn(conn)) {
        ServerEvent::Stats(s) => assert_eq!(*s, stats(1, 1, 1, 0, 0)),
        e => unreachable!("{e:?}"),
    }
    assert_eq!(
        names_to(&out, Target::Conn(conn)),
        ["connection:established", "realtime:stats"]
    );
    assert!(
        broadcasts(&out).is_empty(),
        "broadcasts only come from handle_timeout"
    );
}

#[test]
fn connect_in_chat_carries_the_room() {
    let mut h = H::loose();
    let a = h.named("anna");
    let b = h.named("ben");
    let room = h.pair_these(a, b);
    let conn = h.connect(a.id);
    let out = h.drain();
    let e = established(&out, conn);
    assert_eq!(e.state, GuestState::InChat);
    let r = e.room.clone().unwrap();
    assert_eq!((r.room_id, r.partner.username.as_str()), (room, "ben"));
    assert!(
        presence(&out, b.id).is_empty(),
        "a second socket is not a return"
    );
    let v = serde_json::to_value(ServerEvent::Established(e)).unwrap();
    assert_eq!(v["state"], "in_chat");
    assert_eq!(
        v["room"],
        json!({ "roomId": room.to_string(), "partner": { "username": "ben" } })
    );
    // Searching state too.
    let c = h.guest();
    h.start(c).unwrap();
    assert_eq!(h.probe(c.id).state, GuestState::Searching);
}

#[test]
fn socket_limit_per_guest() {
    let mut h = H::new(CoreConfig {
        max_sockets_per_guest: 3,
        ..loose()
    });
    let id = h.create(None);
    let conns: Vec<ConnId> = (0..3).map(|_| h.connect(id)).collect();
    assert_eq!(h.core.admit(id, h.now), Err(SignalError::RateLimited));
    let (extra, r) = h.try_connect(id);
    assert_eq!(r, Err(SignalError::RateLimited));
    h.drain();
    // The refused socket is not registered.
    assert_eq!(
        h.core
            .handle_event(extra, ClientEvent::MatchStart { interests: vec![] }, h.now),
        Err(SignalError::Unauthorized)
    );
    h.core.disconnect(conns[0], h.now);
    assert_eq!(h.core.admit(id, h.now), Ok(()));
    h.connect(id);
    assert_eq!(h.core.admit(id, h.now), Err(SignalError::RateLimited));
}

#[test]
fn default_socket_limit_is_ten() {
    let mut h = H::loose();
    let id = h.create(None);
    for _ in 0..10 {
        h.connect(id);
    }
    assert_eq!(h.try_connect(id).1, Err(SignalError::RateLimited));
}

#[test]
fn unknown_session_or_socket() {
    let mut h = H::loose();
    let ghost = SessionId::from_raw(42);
    assert_eq!(h.core.admit(ghost, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.try_connect(ghost).1, Err(SignalError::Unauthorized));
    assert_eq!(
        h.core
            .handle_event(ConnId(999), ClientEvent::TypingStart, h.now),
        Err(SignalError::Unauthorized)
    );
    h.core.disconnect(ConnId(999), h.now);
    assert!(h.drain().is_empty());
    assert_eq!(h.stats(), Stats::default());
}

// ---- matching -------------------------------------------------------------------------------

#[test]
fn pairing_basics() {
    let mut h = H::loose();
    let a = h.named("anna");
    let b = h.named("ben");
    assert_eq!(h.start(a), Ok(Ack::State(GuestState::Searching)));
    let out = h.drain();
    assert_eq!(names_to(&out, Target::Guest(a.id)), ["match:searching"]);
    assert_eq!(
        serde_json::to_string(one(&out, "match:searching", Target::Guest(a.id))).unwrap(),
        "{}"
    );
    assert_eq!(h.start(a), Err(SignalError::AlreadySearching));
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::InChat)));
    let out = h.drain();
    let fa = found(&out, a.id);
    let fb = found(&out, b.id);
    assert_eq!(fa.room_id, fb.room_id);
    assert_eq!(fa.partner.username, "ben");
    assert_eq!(fb.partner.username, "anna");
    assert_eq!(h.start(a), Err(SignalError::AlreadyInChat));
    assert_eq!(h.start(b), Err(SignalError::AlreadyInChat));
    assert_eq!(
        h.ev(a.conn, "match:cancel", Value::Null),
        Err(SignalError::NotSearching)
    );
    assert_eq!(h.core.counters().matches, 1);
    assert_eq!(h.stats(), stats(2, 2, 2, 0, 2));
}

#[test]
fn cancel_leaves_the_queue() {
    let mut h = H::loose();
    let a = h.guest();
    let b = h.guest();
    h.start(a).unwrap();
    assert_eq!(
        h.ev(a.conn, "match:cancel", Value::Null),
        Ok(Ack::State(GuestState::Online))
    );
    assert_eq!(
        h.ev(a.conn, "match:cancel", Value::Null),
        Err(SignalError::NotSearching)
    );
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::Searching)));
    assert_eq!(h.stats().available_users, 1);
    // Searching again puts `a` at the back, and it now pairs with `b`.
    assert_eq!(h.start(a), Ok(Ack::State(GuestState::InChat)));
}

#[test]
fn newcomer_gets_the_longest_waiting_guest() {
    let mut h = H::loose();
    // Created in reverse order: waiting time counts from match:start, not from creation.
    let c = h.named("c");
    let b = h.named("b");
    let a = h.named("a");
    h.mutual_blocks(&[a, b, c]);
    for (i, g) in [a, b, c].into_iter().enumerate() {
        h.set(1.0 + i as f64);
        assert_eq!(h.start(g), Ok(Ack::State(GuestState::Searching)));
    }
    h.drain();
    assert_eq!(h.stats().available_users, 3);
    for (i, want) in ["a", "b", "c"].into_iter().enumerate() {
        h.set(4.0 + i as f64);
        let n = h.guest();
        assert_eq!(h.start(n), Ok(Ack::State(GuestState::InChat)));
        let out = h.drain();
        assert_eq!(found(&out, n.id).partner.username, want);
    }
    assert_eq!(h.stats().available_users, 0);
}

#[test]
fn shared_interest_beats_waiting_time() {
    let mut h = H::loose();
    let a = h.named("a");
    let b = h.named("b");
    let c = h.named("c");
    h.mutual_blocks(&[a, b, c]);
    h.set(1.0);
    h.start(a).unwrap();
    h.set(2.0);
    h.start_with(b, &["chess"]).unwrap();
    h.set(3.0);
    h.start_with(c, &["art", "music"]).unwrap();
    h.drain();

    h.set(4.0);
    let n = h.guest();
    assert_eq!(
        h.start_with(n, &[" MUSIC "]),
        Ok(Ack::State(GuestState::InChat))
    );
    assert_eq!(
        found(&h.drain(), n.id).partner.username,
        "c",
        "shared interest wins"
    );

    let n = h.guest();
    assert_eq!(
        h.start_with(n, &["cooking"]),
        Ok(Ack::State(GuestState::InChat))
    );
    assert_eq!(
        found(&h.drain(), n.id).partner.username,
        "a",
        "no shared interest: longest waiting"
    );

    let n = h.guest();
    assert_eq!(
        h.start_with(n, &["cooking", "chess"]),
        Ok(Ack::State(GuestState::InChat))
    );
    assert_eq!(found(&h.drain(), n.id).partner.username, "b");
}

#[test]
fn among_sharing_guests_the_longest_waiting_wins() {
    let mut h = H::loose();
    let a = h.named("a");
    let b = h.named("b");
    let c = h.named("c");
    h.mutual_blocks(&[a, b, c]);
    h.start_with(a, &["go"]).unwrap();
    h.start_with(b, &["music"]).unwrap();
    h.start_with(c, &["music"]).unwrap();
    h.drain();
    let n = h.guest();
    h.start_with(n, &["music"]).unwrap();
    assert_eq!(found(&h.drain(), n.id).partner.username, "b");
    // A newcomer without interests takes the longest waiting, whatever its interests.
    let n = h.guest();
    h.start(n).unwrap();
    assert_eq!(found(&h.drain(), n.id).partner.username, "a");
}

#[test]
fn invalid_interests_are_refused_by_parse() {
    for bad in [
        json!({ "interests": ["a", "b", "c", "d", "e", "f"] }),
        json!({ "interests": [""] }),
        json!({ "interests": ["x".repeat(25)] }),
        json!({ "interests": "music" }),
    ] {
        assert_eq!(
            ClientEvent::parse("match:start", Some(&bad)),
            Err(SignalError::InvalidInterests)
        );
        assert_eq!(
            ClientEvent::parse("match:next", Some(&bad)),
            Err(SignalError::InvalidInterests)
        );
    }
    assert_eq!(
        ClientEvent::parse("match:start", Some(&json!([1]))),
        Err(SignalError::InvalidPayload)
    );
}

#[test]
fn away_guest_is_not_paired_until_it_returns() {
    let mut h = H::loose();
    let a = h.guest();
    let b = h.guest();
    h.start(a).unwrap();
    h.core.disconnect(a.conn, h.now);
    h.set(5.0);
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::Searching)));
    assert_eq!(h.stats(), stats(2, 1, 2, 2, 0));
    h.drain();
    // `a` comes back within the grace period: established says searching, then it is paired.
    h.set(20.0);
    let conn = h.connect(a.id);
    let out = h.drain();
    assert_eq!(established(&out, conn).state, GuestState::Searching);
    assert_eq!(found(&out, a.id).room_id, found(&out, b.id).room_id);
    assert_eq!(h.stats().connected_users, 2);
}

#[test]
fn away_searching_guest_leaves_the_queue_after_grace() {
    let mut h = H::loose();
    let a = h.guest();
    h.start(a).unwrap();
    h.core.disconnect(a.conn, h.now);
    h.tick_to(29.9);
    assert_eq!(h.stats().available_users, 1);
    h.tick_to(30.0);
    assert_eq!(h.stats().available_users, 0);
    let b = h.guest();
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::Searching)));
    let conn = h.connect(a.id);
    let out = h.drain();
    assert_eq!(established(&out, conn).state, GuestState::Online);
    assert!(events(&out, "match:found", Target::Guest(a.id)).is_empty());
}

// ---- re-pair blocks ---------------------------------------------------------------------------

#[test]
fn no_repair_within_cooldown_then_unblock_pairs_them() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.set(10.0);
    h.leave(a).unwrap();
    h.set(11.0);
    assert_eq!(h.start(a), Ok(Ack::State(GuestState::Searching)));
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::Searching)));
    h.drain();
    let mut t = 11.0;
    while t + 7.0 < 309.0 {
        t += 7.0;
        let out = h.tick_to(t);
        assert_eq!(count(&out, "match:found"), 0, "paired at {t}");
    }
    let out = h.tick_to(309.999);
    assert_eq!(count(&out, "match:found"), 0);
    assert_eq!(h.stats().available_users, 2);
    assert!(h.core.poll_timeout().unwrap() <= h.t(310.0));
    let out = h.tick_to(310.0);
    assert_eq!(found(&out, a.id).room_id, found(&out, b.id).room_id);
    assert_eq!(h.stats().connected_users, 2);
}

#[test]
fn block_is_only_between_the_two() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.ev(a.conn, "match:next", Value::Null).unwrap();
    assert_eq!(
        h.start(b),
        Ok(Ack::State(GuestState::Searching)),
        "skipped pair is blocked too"
    );
    h.drain();
    let c = h.guest();
    assert_eq!(h.start(c), Ok(Ack::State(GuestState::InChat)));
    assert_eq!(found(&h.drain(), c.id).room_id, found_room_of(&mut h, a.id));
}

fn found_room_of(h: &mut H, id: SessionId) -> RoomId {
    h.probe(id).room.expect("in a chat").room_id
}

#[test]
fn repair_after_cooldown_when_starting_later() {
    let mut h = H::new(CoreConfig {
        repair_cooldown: secs(60.0),
        ..loose()
    });
    let (a, b, _) = h.pair();
    h.leave(b).unwrap();
    h.tick_to(60.0);
    h.set(61.0);
    h.start(a).unwrap();
    assert_eq!(h.start(b), Ok(Ack::State(GuestState::InChat)));
}

#[test]
fn never_repair_after_report() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(1.0);
    assert_eq!(
        h.ev(a.conn, "chat:report", json!({ "reason": "rude" })),
        Ok(Ack::State(GuestState::Online))
    );
    let out = h.drain();
    assert_eq!(
        ended(&out, a.id),
        Ended {
            room_id: room,
            reason: EndReason::Reported
        }
    );
    assert_eq!(
        ended(&out, b.id),
        Ended {
            room_id: room,
            reason: EndReason::Reported
        }
    );
    h.start(a).unwrap();
    h.start(b).unwrap();
    let mut t = 1.0;
    while t < 2000.0 {
        t += 97.0;
        let out = h.tick_to(t);
        assert_eq!(
            count(&out, "match:found"),
            0,
            "re-paired after a report at {t}"
        );
    }
    assert_eq!(h.stats().available_users, 2);
    // Both still pair with others.
    let c = h.guest();
    h.start(c).unwrap();
    assert_eq!(
        found(&h.drain(), c.id).partner.username,
        h.probe(a.id).username
    );
    // And a later search by both still does not pair them.
    h.ev(c.conn, "chat:leave", Value::Null).unwrap();
    h.ev(b.conn, "match:cancel", Value::Null).unwrap();
    h.start(b).unwrap();
    assert_eq!(h.start(a), Ok(Ack::State(GuestState::Searching)));
}

#[test]
fn report_reason_is_validated() {
    assert_eq!(
        ClientEvent::parse("chat:report", Some(&json!({ "reason": "x".repeat(201) }))),
        Err(SignalError::InvalidReport)
    );
    assert_eq!(
        ClientEvent::parse("chat:report", Some(&json!({ "reason": 5 }))),
        Err(SignalError::InvalidReport)
    );
    assert!(ClientEvent::parse("chat:report", Some(&json!({ "reason": "x".repeat(200) }))).is_ok());
    assert_eq!(
        ClientEvent::parse("chat:report", None),
        Ok(ClientEvent::ChatReport { reason: None })
    );
}

#[test]
fn reporting_many_guests_keeps_the_newest_reports() {
    // A guest who has reported more than the remembered maximum (1024) forgets the oldest; a
    // report made after that must still be remembered by both sides.
    let mut h = H::new(CoreConfig {
        repair_cooldown: Duration::ZERO,
        ..loose()
    });
    let m = h.named("m");
    let x = h.named("x");
    let report = |h: &mut H, reporter: G, other: G| {
        h.pair_these(reporter, other);
        h.ev(reporter.conn, "chat:report", Value::Null).unwrap();
        h.drain();
    };
    report(&mut h, m, x);
    for i in 0..1024 {
        let g = h.guest();
        report(&mut h, m, g);
        h.core.disconnect(g.conn, h.now);
        if i % 100 == 0 {
            h.drain();
        }
    }
    h.drain();
    // `m` has forgotten its report of `x`: they may chat again, and `x` reports `m` now.
    report(&mut h, x, m);
    // `x` reports 1023 others (1025 reports in all remembered or forgotten by `x`).
    for i in 0..1023 {
        let g = h.guest();
        report(&mut h, x, g);
        h.core.disconnect(g.conn, h.now);
        if i % 100 == 0 {
            h.drain();
        }
    }
    h.drain();
    // `x`'s report of `m` is among its last 1024: they must never pair again.
    h.start(x).unwrap();
    assert_eq!(
        h.start(m),
        Ok(Ack::State(GuestState::Searching)),
        "a fresh report was forgotten"
    );
}

// ---- match:next / leave / report ----------------------------------------------------------

#[test]
fn next_skips_the_partner() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(2.0);
    assert_eq!(
        h.ev(a.conn, "match:next", Value::Null),
        Ok(Ack::State(GuestState::Searching))
    );
    let out = h.drain();
    assert_eq!(
        ended(&out, a.id),
        Ended {
            room_id: room,
            reason: EndReason::Skipped
        }
    );
    assert_eq!(
        ended(&out, b.id),
        Ended {
            room_id: room,
            reason: EndReason::Skipped
        }
    );
    let theirs = system_messages(&out, b.id);
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].content, "Stranger has skipped to someone else.");
    assert_eq!(
        (theirs[0].kind, theirs[0].from, theirs[0].room_id),
        (MessageType::System, Sender::System, room)
    );
    assert_eq!(theirs[0].timestamp, UNIX0 + 2000);
    let mine = system_messages(&out, a.id);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].content, "You skipped to the next stranger.");
    assert_ne!(mine[0].id, theirs[0].id);
    assert_eq!(
        names_to(&out, Target::Guest(a.id)),
        ["chat:ended", "chat:message", "match:searching"]
    );
    assert_eq!(
        names_to(&out, Target::Guest(b.id)),
        ["chat:ended", "chat:message"]
    );
    assert_eq!(h.stats(), stats(2, 2, 2, 1, 0));
    assert_eq!(h.probe(b.id).state, GuestState::Online);
    assert_eq!(h.probe(a.id).state, GuestState::Searching);
    let v = serde_json::to_value(one(&out, "chat:ended", Target::Guest(b.id))).unwrap();
    assert_eq!(
        v,
        json!({ "roomId": room.to_string(), "reason": "skipped" })
    );
    assert_eq!(h.core.counters().chats_ended, [0, 1, 0, 0]);
}

#[test]
fn next_pairs_at_once_when_someone_waits() {
    let mut h = H::loose();
    let (a, _b, room) = h.pair();
    let c = h.named("cleo");
    h.start(c).unwrap();
    h.drain();
    assert_eq!(
        h.ev(a.conn, "match:next", json!({ "interests": ["x"] })),
        Ok(Ack::State(GuestState::InChat))
    );
    let out = h.drain();
    let f = found(&out, a.id);
    assert_ne!(f.room_id, room);
    assert_eq!(f.partner.username, "cleo");
}

#[test]
fn leave_and_report_end_for_both() {
    let mut h = H::loose();
    for (event, reason, mine, theirs) in [
        (
            "chat:leave",
            EndReason::Left,
            "You left the chat.",
            "Stranger has left the chat.",
        ),
        (
            "chat:report",
            EndReason::Reported,
            "You reported the stranger. You won't be matched again.",
            "Stranger has ended the chat.",
        ),
    ] {
        let (a, b, room) = h.pair();
        assert_eq!(
            h.ev(a.conn, event, Value::Null),
            Ok(Ack::State(GuestState::Online))
        );
        let out = h.drain();
        for g in [a, b] {
            assert_eq!(
                ended(&out, g.id),
                Ended {
                    room_id: room,
                    reason
                }
            );
        }
        assert_eq!(system_messages(&out, a.id)[0].content, mine);
        assert_eq!(system_messages(&out, b.id)[0].content, theirs);
        for g in [a, b] {
            assert_eq!(
                h.ev(g.conn, event, Value::Null),
                Err(SignalError::NotInChat)
            );
            assert_eq!(
                h.ev(g.conn, "match:next", Value::Null),
                Err(SignalError::NotInChat)
            );
        }
        assert_eq!(h.stats().connected_users, 0);
    }
    assert_eq!(h.core.counters().chats_ended, [1, 0, 0, 1]);
}

// ---- chat -------------------------------------------------------------------------------------

#[test]
fn file_messages_go_through_the_chat_and_rooms_report_closing() {
    use tandem_signaling::files::{Category, FileInfo};
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.drain();
    let file = |voice: bool| FileInfo {
        file_id: FileId::from_raw(42),
        name: "a.png".into(),
        size: 10,
        mime_type: "image/png",
        category: Category::Image,
        url: "/api/files/x".into(),
        expires_at: "2026-01-01T00:00:00Z".into(),
        duration_ms: voice.then_some(1500),
    };
    assert_eq!(h.core.chat_of(a.id), Some((room, b.id)));
    // The wrong room (the chat the upload started in has ended) is refused; nothing happens.
    assert_eq!(
        h.core
            .post_file(a.id, RoomId::from_raw(1), "c1".into(), file(false), h.now),
        Err(SignalError::NotInChat)
    );
    assert!(h.drain().is_empty());
    let (id, ts) = h
        .core
        .post_file(a.id, room, "c1".into(), file(false), h.now)
        .unwrap();
    let out = h.drain();
    let d = delivers(&out, b.id);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].id, d[0].kind, d[0].timestamp),
        (id, MessageType::File, ts)
    );
    let v = serde_json::to_value(d[0]).unwrap();
    assert_eq!(
        v["content"]["fileId"],
        json!(FileId::from_raw(42).to_string())
    );
    assert_eq!(v["content"]["category"], json!("image"));
    assert!(v["content"].get("durationMs").is_none());
    match one(&out, "chat:message:sent", Target::Guest(a.id)) {
        ServerEvent::Sent(s) => assert_eq!((s.client_id.as_str(), s.id), ("c1", id)),
        e => unreachable!("{e:?}"),
    }
    // Receipts work as for text.
    h.core.handle_delivered(room, id, h.now);
    assert_eq!(
        names_to(&h.drain(), Target::Guest(a.id)),
        ["chat:message:delivered"]
    );
    assert_eq!(
        h.ev(b.conn, "chat:message:read", json!({ "id": id.to_string() })),
        Ok(Ack::Ok)
    );
    h.drain();
    // A voice note.
    let (vid, _) = h
        .core
        .post_file(b.id, room, "v1".into(), file(true), h.now)
        .unwrap();
    let out = h.drain();
    let d = delivers(&out, a.id);
    assert_eq!((d[0].id, d[0].kind), (vid, MessageType::Voice));
    assert_eq!(
        serde_json::to_value(d[0]).unwrap()["content"]["durationMs"],
        json!(1500)
    );
    // The chat ends: the shell hears about it once.
    h.leave(a).unwrap();
    let out = h.drain();
    let closed: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Output::RoomClosed(_)))
        .collect();
    assert_eq!(closed, [&Output::RoomClosed(room)]);
    assert_eq!(h.core.chat_of(a.id), None);
    assert_eq!(
        h.core
            .post_file(a.id, room, "c2".into(), file(false), h.now),
        Err(SignalError::NotInChat)
    );
}

#[test]
fn message_relay_and_receipts() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(3.5);
    let ack = h.ev(
        a.conn,
        "chat:message",
        json!({ "clientId": "cid-1", "type": "text", "content": "  hello\nthere \t" }),
    );
    let (id, ts) = msg_id(ack);
    assert_eq!(ts, UNIX0 + 3500);
    let out = h.drain();
    let d = delivers(&out, b.id);
    assert_eq!(d.len(), 1);
    assert_eq!(
        *d[0],
        ChatMessage {
            id,
            room_id: room,
            kind: MessageType::Text,
            content: "hello\nthere".into(),
            timestamp: ts,
            from: Sender::Partner
        }
    );
    assert!(delivers(&out, a.id).is_empty());
    let v = serde_json::to_value(d[0]).unwrap();
    assert_eq!(
        v,
        json!({ "id": id.to_string(), "roomId": room.to_string(), "type": "text", "content": "hello\nthere", "timestamp": ts, "from": "partner" })
    );
    match one(&out, "chat:message:sent", Target::Guest(a.id)) {
        ServerEvent::Sent(s) => {
            assert_eq!((s.client_id.as_str(), s.id, s.timestamp), ("cid-1", id, ts));
        }
        e => unreachable!("{e:?}"),
    }
    assert!(names_to(&out, Target::Guest(b.id)).is_empty());
    assert_eq!(out.len(), 2);

    // Delivered receipt.
    h.core.handle_delivered(room, id, h.now);
    let out = h.drain();
    assert_eq!(
        out,
        vec![Output::Emit {
            to: Target::Guest(a.id),
            event: ServerEvent::Delivered(wire::MessageRef { id })
        }]
    );
    h.core.handle_delivered(room, MessageId::from_raw(1), h.now);
    h.core.handle_delivered(RoomId::from_raw(1), id, h.now);
    assert!(h.drain().is_empty());

    // Read receipt: only the partner's messages.
    assert_eq!(
        h.ev(b.conn, "chat:message:read", json!({ "id": id.to_string() })),
        Ok(Ack::Ok)
    );
    let out = h.drain();
    assert_eq!(
        out,
        vec![Output::Emit {
            to: Target::Guest(a.id),
            event: ServerEvent::Read(wire::MessageRef { id })
        }]
    );
    assert_eq!(
        h.ev(a.conn, "chat:message:read", json!({ "id": id.to_string() })),
        Err(SignalError::UnknownMessage)
    );
    assert_eq!(
        h.ev(
            b.conn,
            "chat:message:read",
            json!({ "id": MessageId::from_raw(77).to_string() })
        ),
        Err(SignalError::UnknownMessage)
    );
    assert_eq!(
        ClientEvent::parse("chat:message:read", Some(&json!({ "id": "not-an-id" }))),
        Err(SignalError::UnknownMessage)
    );
    assert_eq!(
        ClientEvent::parse("chat:message:read", Some(&json!({}))),
        Err(SignalError::InvalidPayload)
    );
    assert!(h.drain().is_empty());
    let c = h.core.counters();
    assert_eq!(
        (c.messages_relayed, c.receipts_delivered, c.receipts_read),
        (1, 1, 1)
    );
}

#[test]
fn reply_goes_the_other_way() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    let (id, _) = msg_id(h.msg(b, "ping"));
    let out = h.drain();
    assert_eq!(delivers(&out, a.id).len(), 1);
    assert_eq!(delivers(&out, a.id)[0].id, id);
    assert_eq!(
        events(&out, "chat:message:sent", Target::Guest(b.id)).len(),
        1
    );
    assert_eq!(
        h.ev(
            a.conn,
            "chat:message:read",
            json!({ "id": id.to_string().to_uppercase() })
        ),
        Ok(Ack::Ok)
    );
}

#[test]
fn not_in_chat_refusals() {
    let mut h = H::loose();
    let a = h.guest();
    assert_eq!(h.msg(a, "hi"), Err(SignalError::NotInChat));
    assert_eq!(
        h.ev(
            a.conn,
            "chat:message:read",
            json!({ "id": "0000000000000001" })
        ),
        Err(SignalError::NotInChat)
    );
    assert_eq!(
        h.ev(a.conn, "typing:start", Value::Null),
        Err(SignalError::NotInChat)
    );
    assert_eq!(
        h.ev(a.conn, "typing:stop", Value::Null),
        Err(SignalError::NotInChat)
    );
    h.start(a).unwrap();
    assert_eq!(h.msg(a, "hi"), Err(SignalError::NotInChat));
    assert_eq!(
        h.ev(a.conn, "chat:leave", Value::Null),
        Err(SignalError::NotInChat)
    );
    h.drain();
    assert_eq!(
        h.ev(a.conn, "chat:report", Value::Null),
        Err(SignalError::NotInChat)
    );
    assert!(h.drain().is_empty(), "refusals emit nothing");
}

#[test]
fn invalid_messages_are_refused_by_parse() {
    for bad in [
        json!({ "clientId": "c", "content": "   " }),
        json!({ "clientId": "c", "content": "a".repeat(2001) }),
        json!({ "clientId": "", "content": "x" }),
        json!({ "clientId": "c".repeat(65), "content": "x" }),
        json!({ "clientId": "c", "type": "voice", "content": "x" }),
        json!({ "clientId": "c", "content": "nul\u{0}" }),
    ] {
        assert_eq!(
            ClientEvent::parse("chat:message", Some(&bad)),
            Err(SignalError::InvalidMessage),
            "{bad}"
        );
    }
    assert_eq!(
        ClientEvent::parse("chat:nope", None),
        Err(SignalError::UnknownEvent)
    );
}

#[test]
fn read_receipts_forget_messages_of_an_old_chat() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    let (old, _) = msg_id(h.msg(a, "first chat"));
    h.leave(a).unwrap();
    assert_eq!(
        h.ev(
            b.conn,
            "chat:message:read",
            json!({ "id": old.to_string() })
        ),
        Err(SignalError::NotInChat)
    );
    let c = h.guest();
    h.pair_these(b, c);
    assert_eq!(
        h.ev(
            b.conn,
            "chat:message:read",
            json!({ "id": old.to_string() })
        ),
        Err(SignalError::UnknownMessage)
    );
}

#[test]
fn only_recent_messages_can_be_read() {
    let mut h = H::new(CoreConfig {
        // More unacknowledged messages than the receipts remember.
        away_queue_max: RECENT_MESSAGES + 1,
        ..loose()
    });
    let (a, b, _) = h.pair();
    let ids: Vec<MessageId> = (0..=RECENT_MESSAGES)
        .map(|i| msg_id(h.msg(a, &format!("m{i}"))).0)
        .collect();
    h.drain();
    let read = |h: &mut H, id: MessageId| {
        h.ev(b.conn, "chat:message:read", json!({ "id": id.to_string() }))
    };
    assert_eq!(read(&mut h, ids[0]), Err(SignalError::UnknownMessage));
    assert_eq!(read(&mut h, ids[1]), Ok(Ack::Ok));
    assert_eq!(read(&mut h, ids[RECENT_MESSAGES]), Ok(Ack::Ok));
}

// ---- typing -----------------------------------------------------------------------------------

#[test]
fn typing_times_out_after_five_seconds() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(10.0);
    assert_eq!(h.ev(a.conn, "typing:start", Value::Null), Ok(Ack::Ok));
    let out = h.drain();
    assert_eq!(
        out,
        vec![Output::Emit {
            to: Target::Guest(b.id),
            event: ServerEvent::TypingStart(wire::RoomRef { room_id: room })
        }]
    );
    let out = h.tick_to(14.9);
    assert_eq!(count(&out, "typing:stop"), 0);
    assert_eq!(count(&out, "typing:start"), 0);
    let out = h.tick_to(15.0);
    assert_eq!(
        events(&out, "typing:stop", Target::Guest(b.id)),
        vec![&ServerEvent::TypingStop(wire::RoomRef { room_id: room })]
    );
    assert_eq!(count(&out, "typing:stop"), 1);
    assert_eq!(count(&h.tick_to(30.0), "typing:stop"), 0);
}

#[test]
fn second_typing_start_extends() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    h.set(3.0);
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    assert_eq!(count(&h.drain(), "typing:start"), 2);
    assert_eq!(count(&h.tick_to(5.0), "typing:stop"), 0);
    assert_eq!(count(&h.tick_to(7.9), "typing:stop"), 0);
    let out = h.tick_to(8.0);
    assert_eq!(events(&out, "typing:stop", Target::Guest(b.id)).len(), 1);
    assert_eq!(count(&h.tick_to(20.0), "typing:stop"), 0);
}

#[test]
fn message_while_typing_stops_typing_first() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    h.set(1.0);
    h.drain();
    h.msg(a, "done typing").unwrap();
    let out = h.drain();
    let stop = out
        .iter()
        .position(|o| matches!(o, Output::Emit { to: Target::Guest(t), event: ServerEvent::TypingStop(_) } if *t == b.id))
        .expect("typing:stop to the partner");
    let deliver = out
        .iter()
        .position(|o| matches!(o, Output::Deliver { .. }))
        .expect("a delivery");
    assert!(stop < deliver, "{out:#?}");
    // The expiry timer has nothing left to stop.
    assert_eq!(count(&h.tick_to(10.0), "typing:stop"), 0);
    // A message when not typing sends no typing:stop.
    h.msg(a, "again").unwrap();
    assert_eq!(count(&h.drain(), "typing:stop"), 0);
}

#[test]
fn explicit_typing_stop() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    h.drain();
    assert_eq!(h.ev(a.conn, "typing:stop", Value::Null), Ok(Ack::Ok));
    assert_eq!(names_to(&h.drain(), Target::Guest(b.id)), ["typing:stop"]);
    assert_eq!(h.ev(a.conn, "typing:stop", Value::Null), Ok(Ack::Ok));
    assert!(h.drain().is_empty());
    assert_eq!(count(&h.tick_to(6.0), "typing:stop"), 0);
}

#[test]
fn typing_stops_when_the_partner_leaves_or_disconnects() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    h.drain();
    h.leave(a).unwrap();
    assert_eq!(
        names_to(&h.drain(), Target::Guest(b.id)),
        ["typing:stop", "chat:ended", "chat:message"]
    );

    let (c, d, _) = h.pair();
    h.ev(c.conn, "typing:start", Value::Null).unwrap();
    h.drain();
    h.core.disconnect(c.conn, h.now);
    assert_eq!(
        names_to(&h.drain(), Target::Guest(d.id)),
        ["typing:stop", "partner:presence"]
    );
    assert_eq!(count(&h.tick_to(5.0), "typing:stop"), 0);
}

// ---- presence / grace ---------------------------------------------------------------------------

#[test]
fn away_queue_and_return_within_grace() {
    let mut h = H::loose();
    let a = h.named("anna");
    let b = h.named("ben");
    let room = h.pair_these(a, b);
    h.set(1.0);
    h.core.disconnect(a.conn, h.now);
    let out = h.drain();
    assert_eq!(
        events(&out, "partner:presence", Target::Guest(b.id)),
        vec![&ServerEvent::Presence(wire::PresenceChange {
            room_id: room,
            status: Presence::Away
        })]
    );
    assert!(names_to(&out, Target::Guest(a.id)).is_empty());
    assert_eq!(h.stats(), stats(2, 1, 2, 0, 2));

    let mut ids = Vec::new();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        h.set(2.0 + i as f64);
        let (id, _) = msg_id(h.msg(b, text));
        ids.push(id);
    }
    let out = h.drain();
    assert_eq!(all_delivers(&out), 0, "nothing delivered while away");
    assert_eq!(
        events(&out, "chat:message:sent", Target::Guest(b.id)).len(),
        3
    );

    let out = h.tick_to(29.0);
    assert_eq!(count(&out, "chat:ended"), 0);
    h.set(29.5);
    let conn = h.connect(a.id);
    let out = h.drain();
    let e = established(&out, conn);
    assert_eq!(e.state, GuestState::InChat);
    assert_eq!(
        e.room,
        Some(RoomInfo {
            room_id: room,
            partner: wire::Partner {
                username: "ben".into()
            },
            call: None,
        })
    );
    assert_eq!(presence(&out, b.id), vec![Presence::Online]);
    let got: Vec<(MessageId, &str)> = delivers(&out, a.id)
        .into_iter()
        .map(|m| (m.id, m.content.text().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        vec![(ids[0], "one"), (ids[1], "two"), (ids[2], "three")]
    );
    // The sender's delivered receipts come only now.
    assert_eq!(count(&out, "chat:message:delivered"), 0);
    for id in &ids {
        h.core.handle_delivered(room, *id, h.now);
    }
    assert_eq!(
        events(&h.drain(), "chat:message:delivered", Target::Guest(b.id)).len(),
        3
    );
    // The old grace timer does nothing.
    assert_eq!(count(&h.tick_to(40.0), "chat:ended"), 0);
    assert_eq!(h.stats().connected_users, 2);
    // New messages are delivered at once.
    h.msg(b, "four").unwrap();
    assert_eq!(delivers(&h.drain(), a.id).len(), 1);
}

#[test]
fn away_queue_limit() {
    let mut h = H::new(CoreConfig {
        away_queue_max: 3,
        ..loose()
    });
    let (a, b, _) = h.pair();
    h.core.disconnect(a.conn, h.now);
    for i in 0..3 {
        msg_id(h.msg(b, &format!("m{i}")));
    }
    h.drain();
    assert_eq!(h.msg(b, "overflow"), Err(SignalError::PartnerAwayQueueFull));
    assert!(h.drain().is_empty(), "a refused message emits nothing");
    // Back: the three go out, but they count until acknowledged.
    let conn = h.connect(a.id);
    assert!(conn.0 > 0);
    let out = h.drain();
    let back = delivers(&out, a.id);
    assert_eq!(back.len(), 3);
    assert_eq!(h.msg(b, "after"), Err(SignalError::PartnerAwayQueueFull));
    h.core.handle_delivered(back[0].room_id, back[0].id, h.now);
    msg_id(h.msg(b, "after"));
}

#[test]
fn default_away_queue_is_one_hundred() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.core.disconnect(a.conn, h.now);
    for i in 0..100 {
        msg_id(h.msg(b, &format!("m{i}")));
    }
    assert_eq!(h.msg(b, "overflow"), Err(SignalError::PartnerAwayQueueFull));
}

#[test]
fn no_return_ends_the_chat_at_grace_end() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(5.0);
    h.core.disconnect(a.conn, h.now);
    h.msg(b, "hello?").unwrap();
    h.drain();
    assert_eq!(count(&h.tick_to(34.9), "chat:ended"), 0);
    let out = h.tick_to(35.0);
    assert_eq!(
        ended(&out, a.id),
        Ended {
            room_id: room,
            reason: EndReason::Disconnected
        }
    );
    assert_eq!(
        ended(&out, b.id),
        Ended {
            room_id: room,
            reason: EndReason::Disconnected
        }
    );
    assert_eq!(
        system_messages(&out, b.id)[0].content,
        "Stranger has disconnected."
    );
    assert_eq!(
        system_messages(&out, a.id)[0].content,
        "You were disconnected from the chat."
    );
    assert_eq!(h.stats(), stats(2, 1, 2, 0, 0));
    // Coming back later: online, no room, no stale queued messages.
    h.set(40.0);
    let conn = h.connect(a.id);
    let out = h.drain();
    assert_eq!(established(&out, conn).state, GuestState::Online);
    assert_eq!(established(&out, conn).room, None);
    assert_eq!(all_delivers(&out), 0);
    assert!(presence(&out, b.id).is_empty());
}

#[test]
fn grace_restarts_after_each_return() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.core.disconnect(a.conn, h.now);
    assert_eq!(presence(&h.drain(), b.id), vec![Presence::Away]);
    h.set(10.0);
    let c2 = h.connect(a.id);
    h.set(20.0);
    h.core.disconnect(c2, h.now);
    let out = h.drain();
    assert_eq!(presence(&out, b.id), vec![Presence::Online, Presence::Away]);
    assert_eq!(
        count(&h.tick_to(30.0), "chat:ended"),
        0,
        "the first grace timer is stale"
    );
    assert_eq!(count(&h.tick_to(49.9), "chat:ended"), 0);
    assert_eq!(count(&h.tick_to(50.0), "chat:ended"), 2);
}

#[test]
fn closing_one_of_two_sockets_is_not_away() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    let a2 = h.connect(a.id);
    h.drain();
    h.core.disconnect(a.conn, h.now);
    assert!(h.drain().is_empty());
    assert_eq!(h.stats().online_users, 2);
    h.msg(b, "still here").unwrap();
    assert_eq!(delivers(&h.drain(), a.id).len(), 1);
    assert_eq!(count(&h.tick_to(60.0), "chat:ended"), 0);
    h.core.disconnect(a2, h.now);
    assert_eq!(presence(&h.drain(), b.id), vec![Presence::Away]);
    // Events still work from the remaining socket of the other guest.
    h.set(61.0);
    assert_eq!(h.ev(b.conn, "typing:start", Value::Null), Ok(Ack::Ok));
}

#[test]
fn undelivered_messages_are_requeued_in_order() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let mut sent = Vec::new();
    for text in ["m1", "m2", "m3"] {
        h.msg(b, text).unwrap();
        sent.push(delivers(&h.drain(), a.id)[0].clone());
    }
    h.core.disconnect(a.conn, h.now);
    h.msg(b, "m4").unwrap();
    h.drain();
    // The shell reports the in-flight ones as undelivered, out of order.
    for i in [1, 0, 2] {
        h.core.handle_undelivered(a.id, sent[i].clone(), h.now);
    }
    assert!(h.drain().is_empty());
    h.set(10.0);
    let conn = h.connect(a.id);
    assert!(conn.0 > 0);
    let out = h.drain();
    let got: Vec<&str> = delivers(&out, a.id)
        .iter()
        .map(|m| m.content.text().unwrap_or_default())
        .collect();
    assert_eq!(got, ["m1", "m2", "m3", "m4"]);
    assert!(delivers(&out, a.id).iter().all(|m| m.room_id == room));
}

#[test]
fn in_flight_at_a_drop_is_delivered_again_on_return_and_a_late_report_changes_nothing() {
    // A message handed out and not acknowledged when the receiver dropped goes out again when
    // it returns, without waiting for the shell's "no socket got it" report; the report, when it
    // comes after the return, must not deliver it a third time.
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.msg(b, "in flight").unwrap();
    let m = delivers(&h.drain(), a.id)[0].clone();
    h.core.disconnect(a.conn, h.now);
    h.set(2.0);
    let conn = h.connect(a.id);
    assert!(conn.0 > 0);
    assert_eq!(delivers(&h.drain(), a.id), vec![&m]);
    h.core.handle_undelivered(a.id, m.clone(), h.now);
    assert_eq!(all_delivers(&h.drain()), 0);
    h.core.handle_delivered(room, m.id, h.now);
    assert_eq!(
        events(&h.drain(), "chat:message:delivered", Target::Guest(b.id)).len(),
        1
    );
    // Nothing was left behind for the next return.
    h.core.disconnect(conn, h.now);
    h.connect(a.id);
    assert_eq!(all_delivers(&h.drain()), 0);
}

#[test]
fn undelivered_reported_before_the_disconnect_ends_up_queued() {
    // The report can also arrive before the shell has told the core that the socket closed. The
    // receiver has not come back since the message was handed out, so the core must not deliver
    // again (that would reach nobody, again and again): it queues the message for the return.
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.msg(b, "in flight").unwrap();
    let m = delivers(&h.drain(), a.id)[0].clone();
    h.core.handle_undelivered(a.id, m.clone(), h.now);
    assert!(
        delivers(&h.drain(), a.id).is_empty(),
        "no redelivery to the same, dying sockets"
    );
    h.core.disconnect(a.conn, h.now);
    h.drain();
    h.set(5.0);
    h.connect(a.id);
    assert_eq!(
        delivers(&h.drain(), a.id),
        vec![&m],
        "delivered once on return"
    );
}

#[test]
fn undelivered_after_chat_end_is_dropped() {
    let mut h = H::loose();
    let (a, b, _) = h.pair();
    h.msg(b, "m1").unwrap();
    let m = delivers(&h.drain(), a.id)[0].clone();
    h.core.disconnect(a.conn, h.now);
    h.leave(b).unwrap();
    h.core.handle_undelivered(a.id, m.clone(), h.now);
    h.core.handle_undelivered(SessionId::from_raw(5), m, h.now);
    h.drain();
    h.connect(a.id);
    assert_eq!(all_delivers(&h.drain()), 0);
}

// ---- rate limits ---------------------------------------------------------------------------

#[test]
fn chat_message_rate_limit() {
    let mut h = H::new(CoreConfig {
        chat_messages_per_sec: 10,
        ..CoreConfig::default()
    });
    let (a, b, _) = h.pair();
    h.set(1.0);
    for i in 0..10 {
        assert!(h.msg(a, &format!("m{i}")).is_ok(), "message {i}");
    }
    h.drain();
    assert_eq!(h.msg(a, "m10"), Err(SignalError::RateLimited));
    assert!(h.drain().is_empty());
    // The partner has its own bucket.
    assert!(h.msg(b, "reply").is_ok());
    h.set(2.0);
    assert!(h.msg(a, "later").is_ok());
}

#[test]
fn match_rate_limit_burst_three() {
    let mut h = H::new(CoreConfig::default());
    let a = h.guest();
    h.set(1.0);
    assert!(h.start(a).is_ok());
    assert!(h.ev(a.conn, "match:cancel", Value::Null).is_ok());
    assert!(h.start(a).is_ok());
    assert_eq!(
        h.ev(a.conn, "match:cancel", Value::Null),
        Err(SignalError::RateLimited)
    );
    assert_eq!(
        h.stats().available_users,
        1,
        "the refused cancel changed nothing"
    );
    h.set(1.9);
    assert_eq!(
        h.ev(a.conn, "match:cancel", Value::Null),
        Err(SignalError::RateLimited)
    );
    h.set(2.0);
    assert!(h.ev(a.conn, "match:cancel", Value::Null).is_ok());
    assert_eq!(h.start(a), Err(SignalError::RateLimited));
    h.set(3.0);
    assert!(h.start(a).is_ok());
    // Other buckets are independent.
    assert_eq!(
        h.ev(a.conn, "chat:leave", Value::Null),
        Err(SignalError::NotInChat)
    );
}

#[test]
fn typing_and_other_rate_limits() {
    let mut h = H::new(CoreConfig::default());
    let (a, _b, _) = h.pair();
    assert!(h.ev(a.conn, "typing:start", Value::Null).is_ok());
    assert!(h.ev(a.conn, "typing:stop", Value::Null).is_ok());
    assert_eq!(
        h.ev(a.conn, "typing:start", Value::Null),
        Err(SignalError::RateLimited)
    );
    let bogus = json!({ "id": "0000000000000001" });
    for _ in 0..10 {
        assert_eq!(
            h.ev(a.conn, "chat:message:read", bogus.clone()),
            Err(SignalError::UnknownMessage)
        );
    }
    assert_eq!(
        h.ev(a.conn, "chat:message:read", bogus),
        Err(SignalError::RateLimited)
    );
}

#[test]
fn flood_closes_the_socket() {
    let cfg = CoreConfig {
        chat_messages_per_sec: 1,
        flood_refusals: 5,
        flood_window: secs(10.0),
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    let (a, _b, _) = h.pair();
    let a2 = h.connect(a.id);
    h.drain();
    h.set(1.0);
    h.msg(a, "ok").unwrap();
    h.drain();
    for i in 0..4 {
        h.set(1.0 + f64::from(i) * 0.1);
        assert_eq!(h.msg(a, "x"), Err(SignalError::RateLimited));
        assert!(closes(&h.drain()).is_empty(), "refusal {i}");
    }
    assert_eq!(h.msg(a, "x"), Err(SignalError::RateLimited));
    assert_eq!(closes(&h.drain()), vec![(a.conn, CloseReason::Flood)]);
    assert_eq!(h.core.counters().floods_closed, 1);
    // The guest's other socket is untouched.
    let _ = a2;
    assert_eq!(h.stats().online_users, 2);
}

#[test]
fn refusals_spread_wider_than_the_window_do_not_close() {
    let cfg = CoreConfig {
        chat_messages_per_sec: 1,
        flood_refusals: 5,
        flood_window: secs(10.0),
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    let (a, _b, _) = h.pair();
    for round in 0..3 {
        let t = 1.0 + f64::from(round) * 11.0;
        h.set(t);
        h.msg(a, "ok").unwrap();
        for _ in 0..4 {
            assert_eq!(h.msg(a, "x"), Err(SignalError::RateLimited));
        }
    }
    assert!(closes(&h.drain()).is_empty());
}

#[test]
fn flood_window_starts_at_the_first_refusal() {
    // The guest idles for most of a window, then floods: the refusals all fall within one
    // window of each other, so the socket is closed.
    let cfg = CoreConfig {
        chat_messages_per_sec: 1,
        flood_refusals: 5,
        flood_window: secs(10.0),
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    let (a, _b, _) = h.pair();
    h.set(9.5);
    h.msg(a, "ok").unwrap();
    for i in 0..5 {
        h.set(9.5 + f64::from(i) * 0.2);
        assert_eq!(h.msg(a, "x"), Err(SignalError::RateLimited));
    }
    assert_eq!(closes(&h.drain()), vec![(a.conn, CloseReason::Flood)]);
}

// ---- stats --------------------------------------------------------------------------------------

#[test]
fn stats_values() {
    let mut h = H::loose();
    assert_eq!(h.stats(), Stats::default());
    let a = h.create(None);
    assert_eq!(h.stats(), stats(1, 0, 1, 0, 0));
    let ac = h.connect(a);
    let a = G { id: a, conn: ac };
    assert_eq!(h.stats(), stats(1, 1, 1, 0, 0));
    h.connect(a.id);
    assert_eq!(h.stats(), stats(1, 1, 1, 0, 0), "two sockets, one guest");
    h.start(a).unwrap();
    assert_eq!(h.stats(), stats(1, 1, 1, 1, 0));
    let b = h.guest();
    assert_eq!(h.stats(), stats(2, 2, 2, 1, 0));
    h.start(b).unwrap();
    assert_eq!(h.stats(), stats(2, 2, 2, 0, 2));
    let c = h.guest();
    h.start(c).unwrap();
    assert_eq!(h.stats(), stats(3, 3, 3, 1, 2));
    h.core.disconnect(b.conn, h.now);
    assert_eq!(
        h.stats(),
        stats(3, 2, 3, 1, 2),
        "away but still in the chat"
    );
    h.tick_to(30.0);
    assert_eq!(h.stats(), stats(3, 2, 3, 1, 0));
    h.create(None);
    assert_eq!(h.stats(), stats(4, 2, 4, 1, 0));
    let v = serde_json::to_value(h.stats()).unwrap();
    assert_eq!(
        v,
        json!({ "totalUsers": 4, "onlineUsers": 2, "activeUsers": 4, "availableUsers": 1, "connectedUsers": 0 })
    );
}

#[test]
fn stats_broadcast_is_coalesced() {
    let mut h = H::loose();
    let a = h.guest();
    let b = h.guest();
    let out = h.tick_to(0.0);
    assert_eq!(broadcasts(&out), vec![stats(2, 2, 2, 0, 0)]);
    // Several changes within the next second.
    h.set(0.1);
    h.start(a).unwrap();
    h.set(0.2);
    let c = h.guest();
    h.set(0.5);
    h.start(b).unwrap();
    assert_eq!(h.core.poll_timeout(), Some(h.t(1.0)));
    assert!(broadcasts(&h.tick_to(0.5)).is_empty());
    assert!(broadcasts(&h.tick_to(0.999)).is_empty());
    let out = h.tick_to(1.0);
    assert_eq!(broadcasts(&out), vec![stats(3, 3, 3, 0, 2)]);
    assert!(h.core.poll_timeout().unwrap() > h.now);
    // Nothing changed: nothing sent.
    assert!(broadcasts(&h.tick_to(2.5)).is_empty());
    // A change long after the last broadcast goes out at once.
    h.set(3.0);
    h.start(c).unwrap();
    assert_eq!(h.core.poll_timeout(), Some(h.t(3.0)));
    assert_eq!(broadcasts(&h.tick_to(3.0)), vec![stats(3, 3, 3, 1, 2)]);
    // A change that is undone before the broadcast sends nothing.
    h.set(3.2);
    h.ev(c.conn, "match:cancel", Value::Null).unwrap();
    h.set(3.4);
    h.start(c).unwrap();
    assert!(broadcasts(&h.tick_to(4.0)).is_empty());
}

#[test]
fn stats_broadcast_at_most_once_per_interval_under_churn() {
    let mut h = H::new(CoreConfig {
        stats_interval: secs(1.0),
        ..loose()
    });
    let mut sent_at: Vec<f64> = Vec::new();
    let mut t = 0.0;
    let mut guests = Vec::new();
    for step in 0..400 {
        t = f64::from(step) * 0.05;
        h.set(t);
        let g = h.guest();
        guests.push(g);
        if step % 3 == 0 {
            h.start(g).unwrap();
        }
        if step % 7 == 0 {
            let old = guests[step as usize / 2];
            h.core.disconnect(old.conn, h.now);
        }
        let out = h.tick_to(t);
        for _ in broadcasts(&out) {
            sent_at.push(t);
        }
    }
    assert!(sent_at.len() >= 15, "{sent_at:?}");
    for w in sent_at.windows(2) {
        assert!(w[1] - w[0] >= 1.0 - 1e-9, "{sent_at:?}");
    }
    // The last state is eventually broadcast.
    let out = h.tick_to(t + 1.0);
    let last = broadcasts(&out).last().copied();
    assert!(last.is_none() || last == Some(h.stats()));
}

#[test]
fn refresh_counts_as_activity() {
    let mut h = H::new(CoreConfig {
        active_window: secs(60.0),
        // Not about a first socket's deadline.
        connect_timeout: secs(3600.0),
        ..loose()
    });
    let id = h.create(None);
    h.tick_to(0.0);
    let mut t = 0.0;
    while t < 70.0 {
        t += 5.0;
        h.tick_to(t);
    }
    assert_eq!(h.stats().active_users, 0);
    h.set(71.0);
    h.core.refresh(id, h.now).unwrap();
    assert_eq!(h.stats().active_users, 1);
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.t(71.0)),
        "the change is broadcast without waiting for a sweep"
    );
    assert_eq!(broadcasts(&h.tick_to(71.0)), vec![stats(1, 0, 1, 0, 0)]);
}

#[test]
fn active_users_drop_after_the_window() {
    let mut h = H::new(CoreConfig {
        active_window: secs(60.0),
        ..loose()
    });
    let a = h.guest();
    h.set(10.0);
    let b = h.guest();
    h.tick_to(10.0);
    assert_eq!(h.stats().active_users, 2);
    assert_eq!(h.core.stats(h.t(59.9)).active_users, 2);
    assert_eq!(h.core.stats(h.t(60.0)).active_users, 1);
    assert_eq!(
        h.core.stats(h.t(70.0)),
        stats(2, 2, 0, 0, 0),
        "connected but idle is not active"
    );
    // The core notices on its own and broadcasts within a sweep interval (5 s).
    let mut got = Vec::new();
    while h.now < h.t(80.0) {
        let next = h.core.poll_timeout().unwrap();
        assert!(next >= h.now);
        h.now = next;
        h.core.handle_timeout(next);
        got.extend(broadcasts(&h.drain()).into_iter().map(|s| (next, s)));
    }
    assert!(
        got.iter()
            .any(|(at, s)| s.active_users == 1 && *at <= h.t(65.0)),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(at, s)| s.active_users == 0 && *at <= h.t(75.0)),
        "{got:?}"
    );
    // Activity makes the guest active again, and that is broadcast.
    h.set(90.0);
    h.start(a).unwrap();
    assert_eq!(h.stats().active_users, 1);
    assert_eq!(broadcasts(&h.tick_to(90.0)), vec![stats(2, 2, 1, 1, 0)]);
    let _ = b;
}

// ---- poll_timeout -------------------------------------------------------------------------------

#[test]
fn poll_timeout_is_always_in_the_future_after_handle_timeout() {
    let mut h = H::loose();
    assert!(h.core.poll_timeout().is_some());
    let (a, b, _) = h.pair();
    h.ev(a.conn, "typing:start", Value::Null).unwrap();
    h.core.disconnect(b.conn, h.now);
    let mut t = 0.0;
    for _ in 0..200 {
        h.core.handle_timeout(h.now);
        let next = h.core.poll_timeout().expect("always a timeout");
        assert!(next > h.now, "due {next:?} at {:?}", h.now);
        t += 0.77;
        h.set(t);
    }
    // Following poll_timeout exactly also works.
    for _ in 0..50 {
        let next = h.core.poll_timeout().unwrap();
        h.now = next;
        h.core.handle_timeout(next);
        assert!(h.core.poll_timeout().unwrap() > next);
    }
}

// ---- property test --------------------------------------------------------------------------------

const GUESTS: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Create,
    /// A guest created from client address `.0` (capped per address).
    CreateFrom(u8),
    Connect(usize),
    Disconnect(usize),
    Refresh(usize),
    Start(usize, u8),
    Cancel(usize),
    Next(usize, u8),
    Leave(usize),
    Report(usize),
    Message(usize),
    /// Many messages at once: rate-limit refusals, and with repetition a flood close.
    Burst(usize),
    Read(usize),
    TypingStart(usize),
    TypingStop(usize),
    Ack,
    Undelivered,
    Advance(u16),
    /// Call signaling (`call:*`, `webrtc:*`) from guest `.0`.
    Call(usize, CallOp),
    /// A media server event about guest `.0`'s current call (`.2`: or the call before it).
    Media(usize, u8, bool),
    /// The callee of the `.0`-th ringing call (if any) accepts it.
    Pickup(usize),
}

#[derive(Debug, Clone, Copy)]
enum CallOp {
    Request(bool),
    Accept,
    Reject,
    End,
    Offer,
    Answer,
    Candidate,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let g = 0..GUESTS;
    prop_oneof![
        1 => Just(Op::Create),
        1 => (0..2u8).prop_map(Op::CreateFrom),
        4 => g.clone().prop_map(Op::Connect),
        2 => g.clone().prop_map(Op::Disconnect),
        1 => g.clone().prop_map(Op::Refresh),
        4 => (g.clone(), 0..4u8).prop_map(|(i, k)| Op::Start(i, k)),
        1 => g.clone().prop_map(Op::Cancel),
        2 => (g.clone(), 0..4u8).prop_map(|(i, k)| Op::Next(i, k)),
        1 => g.clone().prop_map(Op::Leave),
        1 => g.clone().prop_map(Op::Report),
        4 => g.clone().prop_map(Op::Message),
        1 => g.clone().prop_map(Op::Burst),
        1 => g.clone().prop_map(Op::Read),
        1 => g.clone().prop_map(Op::TypingStart),
        1 => g.clone().prop_map(Op::TypingStop),
        2 => Just(Op::Ack),
        1 => Just(Op::Undelivered),
        4 => (0..2_000u16).prop_map(Op::Advance),
        5 => (g.clone(), prop_oneof![
            4 => any::<bool>().prop_map(CallOp::Request),
            3 => Just(CallOp::Accept),
            1 => Just(CallOp::Reject),
            1 => Just(CallOp::End),
            1 => Just(CallOp::Offer),
            1 => Just(CallOp::Answer),
            1 => Just(CallOp::Candidate),
        ]).prop_map(|(i, c)| Op::Call(i, c)),
        2 => (g.clone(), 0..7u8, any::<bool>()).prop_map(|(i, k, s)| Op::Media(i, k, s)),
        2 => (0..4usize).prop_map(Op::Pickup),
        1 => (0..40_000u16).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MState {
    Online,
    Searching,
    InChat(RoomId),
}

#[derive(Debug)]
struct MGuest {
    id: SessionId,
    conns: Vec<ConnId>,
    state: MState,
    away_since: Option<Instant>,
    alive: bool,
    /// Partner message ids seen in the current chat.
    inbox_ids: Vec<MessageId>,
    /// The client address it was created from, if any.
    client: Option<ClientKey>,
    /// Partner messages accepted for this guest in its current chat and not acknowledged yet,
    /// in order: each new socket must get all of them.
    unacked: Vec<MessageId>,
}

/// A call as the model sees it from the outputs.
#[derive(Debug)]
struct MCall {
    id: CallId,
    caller: usize,
    accepted: bool,
}

struct Model {
    h: H,
    cfg: CoreConfig,
    guests: Vec<MGuest>,
    by_id: HashMap<SessionId, usize>,
    pending: Vec<(SessionId, ChatMessage)>,
    rooms: BTreeMap<RoomId, Vec<usize>>,
    calls: BTreeMap<RoomId, MCall>,
    /// Rooms whose call ended (a second `call:ended` for the same call may follow).
    ended_calls: HashSet<RoomId>,
    /// Media sessions opened and not yet closed.
    open: HashMap<CallId, RoomId>,
    /// Rooms the core reported closed (each exactly once).
    closed_rooms: std::collections::HashSet<RoomId>,
    call_ids_ended: std::collections::HashSet<CallId>,
    /// Messages whose sender got `chat:message:delivered` (each at most once).
    delivered: HashSet<MessageId>,
}

impl Model {
    fn new() -> Self {
        let cfg = CoreConfig {
            token_ttl: secs(120.0),
            grace_period: secs(10.0),
            repair_cooldown: secs(20.0),
            away_queue_max: 4,
            max_sockets_per_guest: 2,
            max_sessions: 8,
            max_sessions_per_ip: 2,
            connect_timeout: secs(30.0),
            flood_refusals: 8,
            ..CoreConfig::default()
        };
        Self {
            h: H::new(cfg.clone()),
            cfg,
            guests: Vec::new(),
            by_id: HashMap::new(),
            pending: Vec::new(),
            rooms: BTreeMap::new(),
            calls: BTreeMap::new(),
            ended_calls: HashSet::new(),
            open: HashMap::new(),
            closed_rooms: Default::default(),
            call_ids_ended: Default::default(),
            delivered: HashSet::new(),
        }
    }

    /// The model's partner of guest `i`, if it is in a chat.
    fn partner(&self, i: usize) -> Option<usize> {
        let MState::InChat(room) = self.guests.get(i)?.state else {
            return None;
        };
        self.rooms.get(&room)?.iter().copied().find(|m| *m != i)
    }

    /// A `chat:message` from guest `i` was answered `r`: an accepted one is kept for the
    /// partner until acked, and the partner's limit is what refuses one.
    fn sent(&mut self, i: usize, r: &Result<Ack, SignalError>) -> Result<(), TestCaseError> {
        let max = self.cfg.away_queue_max;
        match r {
            Ok(Ack::Sent { id, .. }) => {
                let p = self.partner(i).expect("an accepted message has a partner");
                prop_assert!(self.guests[p].unacked.len() < max);
                self.guests[p].unacked.push(*id);
            }
            Err(SignalError::PartnerAwayQueueFull) => {
                let p = self.partner(i).expect("a full queue has a partner");
                prop_assert!(self.guests[p].unacked.len() >= max);
            }
            _ => {}
        }
        Ok(())
    }

    fn add_guest(&mut self, id: SessionId, client: Option<ClientKey>) {
        self.by_id.insert(id, self.guests.len());
        self.guests.push(MGuest {
            id,
            conns: Vec::new(),
            state: MState::Online,
            away_since: None,
            alive: true,
            inbox_ids: Vec::new(),
            client,
            unacked: Vec::new(),
        });
    }

    fn interests(k: u8) -> Value {
        match k {
            0 => Value::Null,
            1 => json!({ "interests": ["music"] }),
            2 => json!({ "interests": ["chess", "Music"] }),
            _ => json!({ "interests": ["go"] }),
        }
    }

    fn any_conn(&self, i: usize) -> Option<ConnId> {
        self.guests
            .get(i)
            .filter(|g| g.alive)
            .and_then(|g| g.conns.first().copied())
    }

    fn event(&mut self, i: usize, name: &str, payload: Value) -> Option<Result<Ack, SignalError>> {
        let conn = self.any_conn(i)?;
        let r = self.h.ev(conn, name, payload);
        Some(r)
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let now = self.h.now;
        match op {
            Op::Create => match self.h.core.create_guest(None, now) {
                Ok(info) => {
                    prop_assert!(
                        self.guests.iter().filter(|g| g.alive).count() < self.cfg.max_sessions
                    );
                    self.add_guest(info.session_id, None);
                }
                Err(e) => prop_assert_eq!(e, SignalError::ServerBusy),
            },
            Op::CreateFrom(k) => {
                let key = ClientKey(u128::from(k) + 1);
                let open = self
                    .guests
                    .iter()
                    .filter(|g| g.alive && g.client == Some(key))
                    .count();
                match self.h.core.create_guest_from(None, Some(key), now) {
                    Ok(info) => {
                        prop_assert!(open < self.cfg.max_sessions_per_ip);
                        prop_assert!(
                            self.guests.iter().filter(|g| g.alive).count() < self.cfg.max_sessions
                        );
                        self.add_guest(info.session_id, Some(key));
                    }
                    Err(SignalError::TooManySessions) => {
                        prop_assert_eq!(open, self.cfg.max_sessions_per_ip)
                    }
                    Err(e) => prop_assert_eq!(e, SignalError::ServerBusy),
                }
                prop_assert!(self.h.drain().is_empty(), "creation emits nothing at once");
            }
            Op::Connect(i) => {
                let Some(g) = self.guests.get(i) else {
                    return Ok(());
                };
                let id = g.id;
                let returning = g.conns.is_empty();
                let (conn, r) = self.h.try_connect(id);
                let outs = self.h.drain();
                match r {
                    Ok(()) => {
                        // Every message kept for the guest goes to the new socket, in order,
                        // under its first id: to all sockets on a return, else to this one.
                        let handed: Vec<MessageId> = outs
                            .iter()
                            .filter_map(|o| match o {
                                Output::Deliver { to, message } if *to == id && returning => {
                                    Some(message.id)
                                }
                                Output::Redeliver { conn: c, message }
                                    if *c == conn && !returning =>
                                {
                                    Some(message.id)
                                }
                                Output::Deliver { .. } | Output::Redeliver { .. } => {
                                    Some(MessageId::from_raw(0))
                                }
                                _ => None,
                            })
                            .collect();
                        prop_assert_eq!(&handed, &self.guests[i].unacked);
                        let g = &mut self.guests[i];
                        prop_assert!(g.alive && self.h.core.session_alive(id, now));
                        prop_assert!(g.conns.len() < 2);
                        let e = established(&outs, conn);
                        let want = match &g.state {
                            MState::Online => GuestState::Online,
                            MState::Searching => GuestState::Searching,
                            MState::InChat(_) => GuestState::InChat,
                        };
                        prop_assert_eq!(e.state, want);
                        if let MState::InChat(room) = g.state {
                            prop_assert_eq!(e.room.as_ref().map(|r| r.room_id), Some(room));
                        } else {
                            prop_assert!(e.room.is_none());
                        }
                        g.conns.push(conn);
                        g.away_since = None;
                    }
                    Err(e) => {
                        let g = &self.guests[i];
                        let alive = g.alive && self.h.core.session_alive(id, now);
                        prop_assert_eq!(
                            e,
                            if alive {
                                SignalError::RateLimited
                            } else {
                                SignalError::Unauthorized
                            }
                        );
                    }
                }
                self.observe(&outs)?;
            }
            Op::Disconnect(i) => {
                let Some(g) = self.guests.get_mut(i) else {
                    return Ok(());
                };
                let Some(conn) = g.conns.pop() else {
                    return Ok(());
                };
                self.h.core.disconnect(conn, now);
                if g.conns.is_empty() {
                    g.away_since = Some(now);
                }
                self.settle()?;
            }
            Op::Refresh(i) => {
                let Some(g) = self.guests.get(i) else {
                    return Ok(());
                };
                let r = self.h.core.refresh(g.id, now);
                prop_assert_eq!(r.is_ok(), g.alive && self.h.core.session_alive(g.id, now));
            }
            Op::Start(i, k) => {
                if let Some(r) = self.event(i, "match:start", Self::interests(k)) {
                    if r.is_ok() {
                        prop_assert_eq!(&self.guests[i].state, &MState::Online);
                    }
                    self.settle()?;
                    if let Ok(Ack::State(s)) = r {
                        prop_assert_eq!(
                            s == GuestState::InChat,
                            matches!(self.guests[i].state, MState::InChat(_))
                        );
                    }
                }
            }
            Op::Cancel(i) => {
                if let Some(r) = self.event(i, "match:cancel", Value::Null) {
                    if r.is_ok() {
                        prop_assert_eq!(&self.guests[i].state, &MState::Searching);
                        self.guests[i].state = MState::Online;
                    }
                    self.settle()?;
                }
            }
            Op::Next(i, k) => {
                if let Some(r) = self.event(i, "match:next", Self::interests(k)) {
                    if r == Err(SignalError::NotInChat) {
                        prop_assert!(!matches!(self.guests[i].state, MState::InChat(_)));
                    }
                    self.settle()?;
                    if let Ok(Ack::State(s)) = r {
                        prop_assert_eq!(
                            s == GuestState::InChat,
                            matches!(self.guests[i].state, MState::InChat(_))
                        );
                        prop_assert!(s != GuestState::Online);
                    }
                }
            }
            Op::Leave(i) => {
                if self.event(i, "chat:leave", Value::Null).is_some() {
                    self.settle()?;
                }
            }
            Op::Report(i) => {
                if self
                    .event(i, "chat:report", json!({ "reason": "spam" }))
                    .is_some()
                {
                    self.settle()?;
                }
            }
            Op::Message(i) => {
                if let Some(r) = self.event(
                    i,
                    "chat:message",
                    json!({ "clientId": "c", "content": " hey " }),
                ) {
                    if let Err(e) = r {
                        let ok = [
                            SignalError::NotInChat,
                            SignalError::RateLimited,
                            SignalError::PartnerAwayQueueFull,
                        ];
                        prop_assert!(ok.contains(&e), "{:?}", e);
                        if e == SignalError::NotInChat {
                            prop_assert!(!matches!(self.guests[i].state, MState::InChat(_)));
                        }
                    }
                    self.sent(i, &r)?;
                    self.settle()?;
                }
            }
            Op::Burst(i) => {
                for _ in 0..15 {
                    let Some(r) = self.event(
                        i,
                        "chat:message",
                        json!({ "clientId": "b", "content": "hey" }),
                    ) else {
                        break;
                    };
                    if let Err(e) = r {
                        let ok = [
                            SignalError::NotInChat,
                            SignalError::RateLimited,
                            SignalError::PartnerAwayQueueFull,
                        ];
                        prop_assert!(ok.contains(&e), "{:?}", e);
                    }
                    self.sent(i, &r)?;
                    self.settle()?;
                }
            }
            Op::Read(i) => {
                let Some(g) = self.guests.get(i) else {
                    return Ok(());
                };
                let id = g
                    .inbox_ids
                    .last()
                    .copied()
                    .unwrap_or(MessageId::from_raw(3));
                if let Some(r) = self.event(i, "chat:message:read", json!({ "id": id.to_string() }))
                {
                    let known = self.guests[i].inbox_ids.contains(&id);
                    if known && matches!(self.guests[i].state, MState::InChat(_)) {
                        prop_assert!(
                            matches!(r, Ok(Ack::Ok) | Err(SignalError::RateLimited)),
                            "{:?}",
                            r
                        );
                    } else {
                        prop_assert!(r.is_err());
                    }
                    self.settle()?;
                }
            }
            Op::TypingStart(i) => {
                if self.event(i, "typing:start", Value::Null).is_some() {
                    self.settle()?;
                }
            }
            Op::TypingStop(i) => {
                if self.event(i, "typing:stop", Value::Null).is_some() {
                    self.settle()?;
                }
            }
            Op::Ack => {
                if let Some((_, m)) = self.pending.pop() {
                    self.h.core.handle_delivered(m.room_id, m.id, now);
                    self.settle()?;
                }
            }
            Op::Undelivered => {
                if !self.pending.is_empty() {
                    let (to, m) = self.pending.remove(0);
                    self.h.core.handle_undelivered(to, m, now);
                    self.settle()?;
                }
            }
            Op::Call(i, op) => {
                let (name, payload) = match op {
                    CallOp::Request(video) => ("call:request", json!({ "video": video })),
                    CallOp::Accept => ("call:accept", Value::Null),
                    CallOp::Reject => ("call:reject", Value::Null),
                    CallOp::End => ("call:end", Value::Null),
                    CallOp::Offer => (
                        "webrtc:offer",
                        json!({ "sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n" }),
                    ),
                    CallOp::Answer => (
                        "webrtc:answer",
                        json!({ "sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n" }),
                    ),
                    CallOp::Candidate => (
                        "webrtc:ice-candidate",
                        json!({ "candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host" }),
                    ),
                };
                let room = match self.guests.get(i).map(|g| &g.state) {
                    Some(MState::InChat(r)) => Some(*r),
                    _ => None,
                };
                let call = room.and_then(|r| self.calls.get(&r));
                let expected: Result<(), SignalError> = match (op, call) {
                    _ if room.is_none() => Err(SignalError::NotInChat),
                    (CallOp::Request(_), None) => Ok(()),
                    (CallOp::Request(_), Some(_)) => Err(SignalError::CallInProgress),
                    (_, None) => Err(SignalError::NoCall),
                    (CallOp::Accept | CallOp::Reject, Some(c)) => {
                        if !c.accepted && c.caller != i {
                            Ok(())
                        } else {
                            Err(SignalError::NoCall)
                        }
                    }
                    (CallOp::End, Some(_)) => Ok(()),
                    (CallOp::Offer | CallOp::Candidate, Some(c)) => {
                        if c.accepted {
                            Ok(())
                        } else {
                            Err(SignalError::NoCall)
                        }
                    }
                    // Whether a server offer is pending is not modelled.
                    (CallOp::Answer, Some(c)) => {
                        if c.accepted {
                            Err(SignalError::InvalidSdp)
                        } else {
                            Err(SignalError::NoCall)
                        }
                    }
                };
                if let Some(r) = self.event(i, name, payload) {
                    if r != Err(SignalError::RateLimited) && !matches!(op, CallOp::Answer) {
                        prop_assert_eq!(r.as_ref().map(|_| ()), expected.as_ref().map(|_| ()));
                    }
                    let outs = self.h.drain();
                    if r.is_err() {
                        prop_assert!(outs.is_empty(), "a refusal emits nothing: {:?}", outs);
                    }
                    self.observe(&outs)?;
                    self.settle()?;
                }
            }
            Op::Pickup(k) => {
                let ringing: Vec<usize> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| !c.accepted)
                    .filter_map(|(room, c)| {
                        self.rooms[room].iter().copied().find(|m| *m != c.caller)
                    })
                    .collect();
                if !ringing.is_empty() {
                    let callee = ringing[k % ringing.len()];
                    return self.apply(Op::Call(callee, CallOp::Accept));
                }
            }
            Op::Media(i, k, stale) => {
                let Some(MState::InChat(room)) = self.guests.get(i).map(|g| g.state.clone()) else {
                    return Ok(());
                };
                let Some(current) = self.calls.get(&room).map(|c| c.id) else {
                    return Ok(());
                };
                let call = if stale {
                    CallId(current.0.saturating_sub(1))
                } else {
                    current
                };
                let guest = self.guests[i].id;
                let e = match k {
                    0 => MediaEvent::Connected { call, guest },
                    1 => MediaEvent::Disconnected { call, guest },
                    2 => MediaEvent::Failed { call, guest },
                    3 => MediaEvent::Offer {
                        call,
                        guest,
                        sdp: "v=0".into(),
                    },
                    4 => MediaEvent::Answer {
                        call,
                        guest,
                        sdp: "v=0".into(),
                    },
                    5 => MediaEvent::OfferRejected {
                        call,
                        guest,
                        message: "no".into(),
                    },
                    _ => MediaEvent::Candidate {
                        call,
                        guest,
                        candidate: "candidate:2".into(),
                        sdp_mid: None,
                        sdp_mline_index: None,
                    },
                };
                self.h.core.handle_media(e, now);
                let outs = self.h.drain();
                if stale {
                    prop_assert!(outs.is_empty(), "stale media event: {:?}", outs);
                }
                self.observe(&outs)?;
                self.settle()?;
            }
            Op::Advance(ms) => {
                let now = now + Duration::from_millis(u64::from(ms));
                self.h.now = now;
                self.h.core.handle_timeout(now);
                let next = self.h.core.poll_timeout();
                prop_assert!(
                    next.is_some_and(|n| n > now),
                    "poll_timeout {:?} at {:?}",
                    next,
                    now
                );
                self.settle()?;
                // Silent transitions the model derives itself: expiry and the grace period of a
                // searching guest.
                let grace = self.cfg.grace_period;
                for g in &mut self.guests {
                    if g.alive && !self.h.core.session_alive(g.id, now) {
                        g.alive = false;
                        g.conns.clear();
                        prop_assert!(
                            !matches!(g.state, MState::InChat(_)),
                            "an expired guest left its chat"
                        );
                        g.state = MState::Online;
                    }
                    if g.alive
                        && g.state == MState::Searching
                        && g.away_since.is_some_and(|t| t + grace <= now)
                    {
                        g.state = MState::Online;
                    }
                }
            }
        }
        self.check()
    }

    /// Drains and observes outputs, closing flooded sockets like a shell would.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        loop {
            let outs = self.h.drain();
            if outs.is_empty() {
                return Ok(());
            }
            self.observe(&outs)?;
        }
    }

    fn observe(&mut self, outs: &[Output]) -> Result<(), TestCaseError> {
        for o in outs {
            match o {
                Output::Emit {
                    to: Target::Guest(id),
                    event,
                } => {
                    let Some(&i) = self.by_id.get(id) else {
                        return Err(TestCaseError::fail(format!(
                            "event to an unknown guest: {event:?}"
                        )));
                    };
                    match event {
                        ServerEvent::Found(r) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::Searching);
                            self.guests[i].state = MState::InChat(r.room_id);
                            self.guests[i].inbox_ids.clear();
                            self.rooms.entry(r.room_id).or_default().push(i);
                        }
                        ServerEvent::CallIncoming(c) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(c.room_id));
                            prop_assert!(!self.calls.contains_key(&c.room_id), "one call per room");
                            let caller = self.rooms[&c.room_id]
                                .iter()
                                .copied()
                                .find(|m| *m != i)
                                .expect("two guests in a room");
                            // Ids are handed out 1, 2, 3, …
                            let id = CallId(self.h.core.counters().calls_requested);
                            self.calls.insert(
                                c.room_id,
                                MCall {
                                    id,
                                    caller,
                                    accepted: false,
                                },
                            );
                        }
                        ServerEvent::CallAccepted(r) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(r.room_id));
                            let c = self.calls.get(&r.room_id).expect("accepted call known");
                            prop_assert!(c.accepted, "Open comes first");
                        }
                        ServerEvent::CallEnded(e) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(e.room_id));
                            if self.calls.remove(&e.room_id).is_some() {
                                self.ended_calls.insert(e.room_id);
                            } else {
                                prop_assert!(self.ended_calls.contains(&e.room_id));
                            }
                        }
                        ServerEvent::WebrtcOffer(_)
                        | ServerEvent::WebrtcAnswer(_)
                        | ServerEvent::WebrtcCandidate(_)
                        | ServerEvent::Error(_) => {
                            let MState::InChat(room) = self.guests[i].state else {
                                return Err(TestCaseError::fail("webrtc event outside a chat"));
                            };
                            prop_assert!(self.calls.get(&room).is_some_and(|c| c.accepted));
                        }
                        ServerEvent::Ended(e) => {
                            prop_assert!(
                                !self.calls.contains_key(&e.room_id),
                                "call:ended precedes chat:ended"
                            );
                            prop_assert!(self.open.values().all(|r| *r != e.room_id));
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(e.room_id));
                            self.guests[i].state = MState::Online;
                            self.guests[i].unacked.clear();
                            let members = self.rooms.get_mut(&e.room_id).expect("room known");
                            members.retain(|m| *m != i);
                            if members.is_empty() {
                                self.rooms.remove(&e.room_id);
                            }
                        }
                        ServerEvent::Searching(_) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::Online);
                            self.guests[i].state = MState::Searching;
                        }
                        ServerEvent::Presence(p) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(p.room_id));
                        }
                        ServerEvent::Delivered(r) => {
                            prop_assert!(self.delivered.insert(r.id), "delivered once");
                            let p = self.partner(i).expect("delivered within a chat");
                            let kept = &mut self.guests[p].unacked;
                            let at = kept.iter().position(|x| *x == r.id);
                            prop_assert!(at.is_some(), "delivered only what the partner holds");
                            if let Some(at) = at {
                                kept.remove(at);
                            }
                        }
                        ServerEvent::TypingStart(r) | ServerEvent::TypingStop(r) => {
                            prop_assert_eq!(&self.guests[i].state, &MState::InChat(r.room_id));
                        }
                        _ => {}
                    }
                }
                Output::Emit {
                    to: Target::Conn(c),
                    event,
                } => {
                    prop_assert!(matches!(
                        event,
                        ServerEvent::Established(_) | ServerEvent::Stats(_)
                    ));
                    prop_assert!(
                        self.guests.iter().any(|g| g.conns.contains(c)),
                        "to a socket the model knows"
                    );
                }
                Output::Emit {
                    to: Target::All,
                    event,
                } => {
                    let ServerEvent::Stats(s) = event else {
                        return Err(TestCaseError::fail("only stats are broadcast"));
                    };
                    prop_assert_eq!(s.connected_users % 2, 0);
                }
                Output::Redeliver { conn, message } => {
                    let i = self.guests.iter().position(|g| g.conns.contains(conn));
                    prop_assert!(i.is_some(), "redelivered to a socket the model knows");
                    let i = i.unwrap_or_default();
                    prop_assert_eq!(&self.guests[i].state, &MState::InChat(message.room_id));
                    prop_assert!(self.guests[i].unacked.contains(&message.id));
                    self.guests[i].inbox_ids.push(message.id);
                    self.pending.push((self.guests[i].id, message.clone()));
                }
                Output::Deliver { to, message } => {
                    let i = self.by_id[to];
                    prop_assert_eq!(&self.guests[i].state, &MState::InChat(message.room_id));
                    prop_assert!(
                        !self.guests[i].conns.is_empty() || self.guests[i].away_since.is_none()
                    );
                    prop_assert_eq!(message.content.text(), Some("hey"));
                    self.guests[i].inbox_ids.push(message.id);
                    self.pending.push((*to, message.clone()));
                }
                Output::Media(MediaCommand::Open { call, room, .. }) => {
                    let c = self.calls.get_mut(room).expect("opened call known");
                    prop_assert_eq!(c.id, *call);
                    prop_assert!(!c.accepted);
                    c.accepted = true;
                    prop_assert!(self.open.insert(*call, *room).is_none());
                }
                Output::Media(MediaCommand::Close { call }) => {
                    prop_assert!(self.open.remove(call).is_some(), "closed once");
                }
                Output::Media(
                    MediaCommand::Offer { call, .. }
                    | MediaCommand::Answer { call, .. }
                    | MediaCommand::Candidate { call, .. },
                ) => {
                    prop_assert!(self.open.contains_key(call));
                }
                Output::CallSetup(_) | Output::MatchWait(_) => {}
                // A single-node core never emits these.
                Output::Bus { .. }
                | Output::Match(_)
                | Output::Ack { .. }
                | Output::Journal { .. }
                | Output::Relay { .. } => {
                    prop_assert!(false, "a cluster output from a single node: {o:?}");
                }
                Output::CallEnded(call) => {
                    prop_assert!(self.call_ids_ended.insert(*call), "a call ends once");
                }
                Output::RoomClosed(room) => {
                    prop_assert!(self.rooms.contains_key(room), "a room that existed");
                    prop_assert!(self.closed_rooms.insert(*room), "closed once");
                }
                Output::Close { conn, reason } => {
                    if *reason == CloseReason::Flood {
                        for g in &mut self.guests {
                            if let Some(p) = g.conns.iter().position(|c| c == conn) {
                                g.conns.remove(p);
                                if g.conns.is_empty() {
                                    g.away_since = Some(self.h.now);
                                }
                            }
                        }
                        self.h.core.disconnect(*conn, self.h.now);
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let st = self.h.stats();
        let alive: Vec<&MGuest> = self.guests.iter().filter(|g| g.alive).collect();
        prop_assert_eq!(st.connected_users % 2, 0);
        prop_assert_eq!(st.total_users as usize, alive.len());
        prop_assert_eq!(
            st.online_users as usize,
            alive.iter().filter(|g| !g.conns.is_empty()).count()
        );
        prop_assert_eq!(
            st.available_users as usize,
            alive
                .iter()
                .filter(|g| g.state == MState::Searching)
                .count()
        );
        let in_chat: Vec<&MGuest> = alive
            .iter()
            .copied()
            .filter(|g| matches!(g.state, MState::InChat(_)))
            .collect();
        prop_assert_eq!(st.connected_users as usize, in_chat.len());
        prop_assert!(st.active_users <= st.total_users && st.online_users <= st.total_users);
        // Every room has exactly two guests, each in that room.
        for (room, members) in &self.rooms {
            prop_assert_eq!(members.len(), 2, "room {:?}", room);
            for &m in members {
                prop_assert_eq!(&self.guests[m].state, &MState::InChat(*room));
            }
        }
        for g in &in_chat {
            let MState::InChat(room) = g.state else {
                unreachable!()
            };
            prop_assert!(self.rooms.contains_key(&room));
        }
        // Calls only in live rooms, at most one each (the map's key), and the core agrees.
        for (room, c) in &self.calls {
            prop_assert!(self.rooms.contains_key(room), "call in a room that is gone");
            prop_assert_eq!(c.accepted, self.open.get(&c.id) == Some(room));
        }
        let cs = self.h.core.call_states();
        let accepted = self.calls.values().filter(|c| c.accepted).count() as u64;
        prop_assert_eq!(cs.ringing, self.calls.len() as u64 - accepted);
        prop_assert_eq!(cs.connecting + cs.connected, accepted);
        prop_assert_eq!(self.open.len() as u64, accepted);
        // A connected guest's own view (a side-effect-free extra socket) agrees with the model.
        for i in 0..self.guests.len() {
            let g = &self.guests[i];
            if !g.alive || g.conns.len() != 1 || !self.h.core.session_alive(g.id, self.h.now) {
                continue;
            }
            let (id, state) = (g.id, g.state.clone());
            let e = self.h.probe(id);
            match state {
                MState::Online => prop_assert_eq!(e.state, GuestState::Online),
                MState::Searching => prop_assert_eq!(e.state, GuestState::Searching),
                MState::InChat(room) => {
                    prop_assert_eq!(e.state, GuestState::InChat);
                    let want = self
                        .calls
                        .get(&room)
                        .map(|c| match (c.accepted, c.caller == i) {
                            (false, true) => vec![CallState::Calling],
                            (false, false) => vec![CallState::Ringing],
                            (true, _) => vec![CallState::Connecting, CallState::Connected],
                        });
                    let got = e.room.as_ref().and_then(|r| r.call).map(|c| c.state);
                    match (want, got) {
                        (None, None) => {}
                        (Some(w), Some(g)) => prop_assert!(w.contains(&g), "{:?} {:?}", w, g),
                        (w, g) => prop_assert!(false, "call view {:?} vs model {:?}", g, w),
                    }
                    prop_assert_eq!(e.room.map(|r| r.room_id), Some(room));
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_invariants(ops in prop::collection::vec(arb_op(), 1..160)) {
        let mut m = Model::new();
        for i in 0..4 {
            m.apply(Op::Create)?;
            m.apply(Op::Connect(i))?;
        }
        for op in ops {
            m.apply(op)?;
        }
        // Let every timer run out: all chats end or expire, nothing panics.
        for _ in 0..40 {
            m.apply(Op::Advance(10_000))?;
        }
        prop_assert_eq!(m.h.stats().total_users, 0);
    }
}
