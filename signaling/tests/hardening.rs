//! Exhaustion and loss, with time driven by hand: guests that never connect a socket are
//! removed at exactly `connect_timeout`, open sessions are capped per client address at exactly
//! `max_sessions_per_ip`, and a chat message stays with its receiver until one of its sockets
//! acknowledges it (handed out again, under the same id, to every new socket), within the away
//! queue's bound.

use serde_json::json;
use tandem_signaling::wire::{ChatMessage, MessageRef};
use tandem_signaling::*;

// Not every shared helper is used here.
#[allow(dead_code)]
mod common;
use common::*;

impl H {
    fn send(&mut self, from: G, text: &str) -> MessageId {
        let client_id = format!("c{}", self.next_client_id);
        self.next_client_id += 1;
        match self.ev(
            from,
            "chat:message",
            json!({ "clientId": client_id, "type": "text", "content": text }),
        ) {
            Ok(Ack::Sent { id, .. }) => id,
            other => panic!("expected the message to be accepted, got {other:?}"),
        }
    }

    fn from(&mut self, key: u128) -> Result<GuestInfo, SignalError> {
        self.core
            .create_guest_from(None, Some(ClientKey(key)), self.now)
    }
}

/// Partner messages handed out to every socket of `to`, in order.
fn delivered_to_guest(out: &[Output], to: SessionId) -> Vec<ChatMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver { to: t, message } if *t == to => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Partner messages handed out to the one socket `conn`, in order.
fn redelivered_to(out: &[Output], conn: ConnId) -> Vec<ChatMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Redeliver { conn: c, message } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn any_delivery(out: &[Output]) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Deliver { .. } | Output::Redeliver { .. }))
}

/// `chat:message:delivered` receipts sent to `to`.
fn receipts(out: &[Output], to: SessionId) -> Vec<MessageId> {
    events(out, "chat:message:delivered", Target::Guest(to))
        .into_iter()
        .map(|e| match e {
            ServerEvent::Delivered(MessageRef { id }) => *id,
            e => unreachable!("{e:?}"),
        })
        .collect()
}

fn ids(messages: &[ChatMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

// ---- guests that never connect ----------------------------------------------------------------

#[test]
fn default_connect_timeout_is_sixty_seconds_and_twenty_sessions_per_address() {
    let c = CoreConfig::default();
    assert_eq!(c.connect_timeout, secs(60.0));
    assert_eq!(c.max_sessions_per_ip, 20);
}

#[test]
fn a_guest_that_never_connects_is_removed_at_exactly_sixty_seconds() {
    let mut h = H::loose();
    let id = h.create(None);
    let kept = h.create(None);
    h.set(59.0);
    h.connect(kept);
    h.drain();
    let out = h.tick_to(59.999);
    assert!(!out.iter().any(|o| matches!(o, Output::Close { .. })));
    assert!(h.core.session_alive(id, h.now), "not before 60 s");
    assert_eq!(h.core.stats(h.now).total_users, 2);
    assert_eq!(h.core.counters().sessions_reaped, 0);

    h.tick_to(60.0);
    assert!(!h.core.session_alive(id, h.now), "removed at 60 s");
    assert_eq!(h.core.stats(h.now).total_users, 1);
    assert_eq!(h.core.counters().sessions_reaped, 1);
    assert_eq!(h.core.counters().sessions_expired, 0);
    // Its token is worth nothing now: refresh and sockets are unauthorized.
    assert_eq!(h.core.refresh(id, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.core.admit(id, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.try_connect(id).1, Err(SignalError::Unauthorized));
    // The guest that connected in time stays, with or without a socket.
    assert!(h.core.session_alive(kept, h.now));
    h.tick_to(3600.0);
    assert!(h.core.session_alive(kept, h.now));
}

#[test]
fn the_deadline_holds_even_before_the_timer_runs() {
    // A socket arriving at exactly 60 s, before the shell ran the due timer, is too late.
    let mut h = H::loose();
    let id = h.create(None);
    h.set(59.999);
    assert_eq!(h.core.admit(id, h.now), Ok(()));
    h.set(60.0);
    assert_eq!(h.core.admit(id, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.try_connect(id).1, Err(SignalError::Unauthorized));
    assert_eq!(h.core.refresh(id, h.now), Err(SignalError::Unauthorized));
    assert_eq!(h.core.stats(h.now).total_users, 1, "not removed yet");
    h.tick_to(60.0);
    assert_eq!(h.core.stats(h.now).total_users, 0);
}

#[test]
fn a_refresh_does_not_extend_the_first_socket_deadline() {
    let mut h = H::loose();
    let id = h.create(None);
    h.set(30.0);
    h.core.refresh(id, h.now).expect("refresh");
    h.tick_to(60.0);
    assert!(!h.core.session_alive(id, h.now));
    assert_eq!(h.core.counters().sessions_reaped, 1);
}

#[test]
fn a_guest_that_connected_once_is_not_reaped() {
    let mut h = H::new(CoreConfig {
        connect_timeout: secs(10.0),
        ..loose()
    });
    let id = h.create(None);
    h.set(9.0);
    let conn = h.connect(id);
    h.core.disconnect(conn, h.now);
    h.drain();
    h.tick_to(100.0);
    assert!(h.core.session_alive(id, h.now));
    assert_eq!(h.core.counters().sessions_reaped, 0);
    h.connect(id);
}

// ---- open sessions per client address -----------------------------------------------------------

#[test]
fn open_sessions_are_capped_per_address_at_exactly_the_limit() {
    let mut h = H::new(CoreConfig {
        max_sessions_per_ip: 3,
        ..loose()
    });
    let mine: Vec<SessionId> = (0..3)
        .map(|_| h.from(1).expect("within the limit").session_id)
        .collect();
    let before = h.core.stats(h.now);
    assert_eq!(h.from(1), Err(SignalError::TooManySessions), "LIMIT + 1");
    assert_eq!(h.core.stats(h.now), before, "a refusal changes nothing");
    assert!(h.drain().is_empty());
    assert_eq!(h.core.counters().guests_created, 3);
    // Other addresses, and sessions no address counts, are not affected.
    assert!(h.from(2).is_ok());
    assert!(h.core.create_guest(None, h.now).is_ok());
    // Connected sessions count too.
    h.connect(mine[0]);
    h.drain();
    assert_eq!(h.from(1), Err(SignalError::TooManySessions));
    assert_eq!(
        SignalError::TooManySessions.code(),
        "too_many_sessions",
        "the wire code"
    );
}

#[test]
fn in_a_cluster_the_cap_counts_the_sessions_an_address_holds_on_other_nodes() {
    let mut h = H::new(CoreConfig {
        max_sessions_per_ip: 3,
        node: Some(NodeId::from_raw(0x1000)),
        ..loose()
    });
    let counted = |h: &mut H, key: u128, elsewhere: usize| {
        h.core
            .create_guest_counted(None, Some(ClientKey(key)), elsewhere, h.now)
    };
    // Two elsewhere: one more here, then the address is at the limit.
    counted(&mut h, 1, 2).expect("third in the cluster");
    assert_eq!(counted(&mut h, 1, 2), Err(SignalError::TooManySessions));
    assert_eq!(counted(&mut h, 1, 3), Err(SignalError::TooManySessions));
    assert!(counted(&mut h, 2, 0).is_ok(), "another address");
    // What the shell publishes for the other nodes: the changed addresses with their counts.
    let mut changed = h.core.client_sessions(false);
    changed.sort_by_key(|(k, _)| k.0);
    assert_eq!(changed, [(ClientKey(1), 1), (ClientKey(2), 1)]);
    assert!(h.core.client_sessions(false).is_empty(), "reported once");
    assert_eq!(h.core.client_sessions(true).len(), 2, "all, to refresh");
    // A reaped session frees its place, and the change is reported (0: nothing left).
    h.tick_to(61.0);
    let mut changed = h.core.client_sessions(false);
    changed.sort_by_key(|(k, _)| k.0);
    assert_eq!(changed, [(ClientKey(1), 0), (ClientKey(2), 0)]);
    assert!(counted(&mut h, 1, 2).is_ok());
    // A single node reports nothing.
    let mut single = H::new(loose());
    single.from(1).unwrap();
    assert!(single.core.client_sessions(true).is_empty());
}

#[test]
fn reaped_and_expired_sessions_free_their_place() {
    let mut h = H::new(CoreConfig {
        max_sessions_per_ip: 2,
        token_ttl: secs(120.0),
        ..loose()
    });
    let a = h.from(7).unwrap().session_id;
    let b = h.from(7).unwrap().session_id;
    h.connect(a);
    h.drain();
    assert_eq!(h.from(7), Err(SignalError::TooManySessions));
    // `b` never connects: its place is free at 60 s, not before.
    h.tick_to(59.9);
    assert_eq!(h.from(7), Err(SignalError::TooManySessions));
    h.tick_to(60.0);
    assert!(!h.core.session_alive(b, h.now));
    let c = h.from(7).expect("the reaped session's place").session_id;
    assert_eq!(h.from(7), Err(SignalError::TooManySessions));
    h.connect(c);
    h.drain();
    // `a` expires at 120 s (it connected, so only its token's end removes it).
    h.tick_to(119.9);
    assert_eq!(h.from(7), Err(SignalError::TooManySessions));
    h.tick_to(120.0);
    assert!(!h.core.session_alive(a, h.now));
    assert!(h.from(7).is_ok(), "the expired session's place");
    assert_eq!(h.from(7), Err(SignalError::TooManySessions));
}

// ---- nothing acknowledged is lost ---------------------------------------------------------------

#[test]
fn a_message_to_a_silently_dead_socket_goes_to_the_receivers_new_socket() {
    // `b`'s socket died without a FIN: the shell has not noticed, so the core still counts it.
    // `b` reconnects on a new socket while the old one still "exists".
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let m1 = h.send(a, "one");
    let m2 = h.send(a, "two");
    let out = h.drain();
    assert_eq!(ids(&delivered_to_guest(&out, b.id)), vec![m1, m2]);
    assert!(receipts(&out, a.id).is_empty(), "no receipt without an ack");

    h.set(5.0);
    let b2 = h.connect(b.id);
    let out = h.drain();
    let again = redelivered_to(&out, b2);
    assert_eq!(ids(&again), vec![m1, m2], "same ids, same order");
    assert!(
        delivered_to_guest(&out, b.id).is_empty(),
        "nothing twice to the old socket"
    );
    assert_eq!(again[0].content.text(), Some("one"));
    assert_eq!(again[0].room_id, room);

    // The new socket acks: the sender's receipts come now, once each.
    for id in [m1, m2] {
        h.core.handle_delivered(room, id, h.now);
    }
    assert_eq!(receipts(&h.drain(), a.id), vec![m1, m2]);
    // The old socket's late acks (its network came back) change nothing.
    for id in [m1, m2] {
        h.core.handle_delivered(room, id, h.now);
    }
    assert!(h.drain().is_empty());
    // And a third socket gets nothing: all was acknowledged.
    h.connect(b.id);
    assert!(!any_delivery(&h.drain()));
    // The old socket is finally noticed dead: `b` still has sockets, so it is not away.
    h.core.disconnect(b.conn, h.now);
    assert!(h.drain().is_empty());
}

#[test]
fn unacknowledged_messages_go_out_again_in_order_when_the_receiver_returns() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let m1 = h.send(a, "one");
    let m2 = h.send(a, "two");
    h.drain();
    h.core.handle_delivered(room, m1, h.now);
    assert_eq!(receipts(&h.drain(), a.id), vec![m1]);
    // Noticed dead (ping timeout): away. More messages are queued.
    h.set(20.0);
    h.core.disconnect(b.conn, h.now);
    let m3 = h.send(a, "three");
    let out = h.drain();
    assert!(!any_delivery(&out), "nothing to an away guest");
    h.set(25.0);
    let b2 = h.connect(b.id);
    let out = h.drain();
    assert_eq!(
        ids(&delivered_to_guest(&out, b.id)),
        vec![m2, m3],
        "the unacked one first, then the queued one; the acked one not again"
    );
    assert!(redelivered_to(&out, b2).is_empty());
    assert!(receipts(&out, a.id).is_empty());
    h.core.handle_delivered(room, m3, h.now);
    h.core.handle_delivered(room, m2, h.now);
    assert_eq!(receipts(&h.drain(), a.id), vec![m3, m2]);
}

#[test]
fn unacknowledged_messages_count_against_the_away_queue_limit() {
    let mut h = H::new(CoreConfig {
        away_queue_max: 3,
        ..loose()
    });
    let (a, b, room) = h.pair();
    // `b` is connected but its socket never acks (it died unnoticed).
    let sent: Vec<MessageId> = (0..3).map(|i| h.send(a, &format!("m{i}"))).collect();
    h.drain();
    let refused = h.ev(
        a,
        "chat:message",
        json!({ "clientId": "x", "type": "text", "content": "m3" }),
    );
    assert_eq!(refused, Err(SignalError::PartnerAwayQueueFull));
    assert!(h.drain().is_empty(), "a refused message emits nothing");
    // One ack makes room for one more.
    h.core.handle_delivered(room, sent[1], h.now);
    h.drain();
    h.send(a, "m3");
    let refused = h.ev(
        a,
        "chat:message",
        json!({ "clientId": "y", "type": "text", "content": "m4" }),
    );
    assert_eq!(refused, Err(SignalError::PartnerAwayQueueFull));
    // The other direction has its own bound.
    h.send(b, "reply");
}

#[test]
fn kept_messages_go_with_their_chat() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let m1 = h.send(a, "one");
    h.drain();
    h.core.disconnect(b.conn, h.now);
    h.ev(a, "chat:leave", serde_json::Value::Null).unwrap();
    h.drain();
    // A late ack for the ended chat sends no receipt, and nothing goes to the returning guest.
    h.core.handle_delivered(room, m1, h.now);
    assert!(receipts(&h.drain(), a.id).is_empty());
    h.connect(b.id);
    assert!(!any_delivery(&h.drain()));
}

#[test]
fn the_sender_gets_one_receipt_per_message_whatever_acks_what() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let m1 = h.send(a, "one");
    h.drain();
    // An ack naming a message of the other direction, or of another room, is no receipt.
    let mine = h.send(b, "mine");
    h.drain();
    h.core.handle_delivered(RoomId::from_raw(99), m1, h.now);
    assert!(h.drain().is_empty());
    h.core.handle_delivered(room, mine, h.now);
    assert_eq!(receipts(&h.drain(), b.id), vec![mine], "b's own message");
    h.core.handle_delivered(room, m1, h.now);
    h.core.handle_delivered(room, m1, h.now);
    assert_eq!(receipts(&h.drain(), a.id), vec![m1]);
}

#[test]
fn a_read_receipt_is_also_an_ack_and_delivered_comes_before_read() {
    // The read event and the ack travel different paths in the shell; a read that overtakes
    // the ack delivers what it covers first (read up to `id` means received up to it).
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let m1 = h.send(a, "one");
    let m2 = h.send(a, "two");
    let m3 = h.send(a, "three");
    h.drain();
    h.core.handle_delivered(room, m1, h.now);
    assert_eq!(receipts(&h.drain(), a.id), vec![m1]);
    assert_eq!(
        h.ev(b, "chat:message:read", json!({ "id": m2.to_string() })),
        Ok(Ack::Ok)
    );
    let out = h.drain();
    let to_a: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Emit {
                to: Target::Guest(g),
                event,
            } if *g == a.id => Some(event.name()),
            _ => None,
        })
        .collect();
    assert_eq!(to_a, ["chat:message:delivered", "chat:message:read"]);
    assert_eq!(receipts(&out, a.id), vec![m2]);
    // The ack that comes after adds nothing; the unread one still waits for its own.
    h.core.handle_delivered(room, m2, h.now);
    assert!(h.drain().is_empty());
    h.core.handle_delivered(room, m3, h.now);
    assert_eq!(receipts(&h.drain(), a.id), vec![m3]);
}
