//! Call signaling through the core's public API: ringing, accept/reject/end, the ring timeout,
//! SDP and ICE relay to and from the media server, and calls ending with their chat. Time is
//! driven by hand from one `t0`.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use tandem_signaling::wire::{CallInfo, GuestState};
use tandem_signaling::*;

const SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
const CAND: &str = "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host";

mod common;
use common::*;

// ---- harness (the shared part is in common/mod.rs) -------------------------------------------

impl H {
    /// `a` calls `b` (audio only). Outputs drained.
    fn ring(&mut self, a: G, room: RoomId) {
        assert_eq!(
            self.ev(a, "call:request", json!({ "video": false })),
            Ok(Ack::Room { room_id: room })
        );
        self.drain();
    }

    /// `a` calls `b`, `b` accepts. Returns the call's id. Outputs drained.
    fn call(&mut self, a: G, b: G, room: RoomId) -> CallId {
        self.ring(a, room);
        assert_eq!(
            self.ev(b, "call:accept", Value::Null),
            Ok(Ack::Room { room_id: room })
        );
        let out = self.drain();
        opened(&out).0
    }

    fn media(&mut self, e: MediaEvent) -> Vec<Output> {
        self.core.handle_media(e, self.now);
        self.drain()
    }

    /// Feeds a media event that must emit just one event, `name` to `to`; returns it as JSON.
    fn relayed(&mut self, e: MediaEvent, name: &str, to: SessionId) -> Value {
        let out = self.media(e);
        assert_eq!(out.len(), 1, "{out:#?}");
        json_of(&out, name, to)
    }

    fn call_of(&mut self, id: SessionId) -> Option<CallInfo> {
        self.probe(id).room.and_then(|r| r.call)
    }
}

fn json_of(out: &[Output], name: &str, to: SessionId) -> Value {
    serde_json::to_value(one(out, name, Target::Guest(to))).unwrap()
}

fn media_cmds(out: &[Output]) -> Vec<MediaCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn setups(out: &[Output]) -> Vec<Duration> {
    out.iter()
        .filter_map(|o| match o {
            Output::CallSetup(d) => Some(*d),
            _ => None,
        })
        .collect()
}

fn opened(out: &[Output]) -> (CallId, RoomId, [SessionId; 2], bool) {
    match media_cmds(out).as_slice() {
        [MediaCommand::Open {
            call,
            room,
            guests,
            video,
        }] => (*call, *room, *guests, *video),
        m => panic!("expected one Open, got {m:?}"),
    }
}

fn call_ended(out: &[Output], to: SessionId) -> CallEndReason {
    match one(out, "call:ended", Target::Guest(to)) {
        ServerEvent::CallEnded(e) => e.reason,
        e => unreachable!("{e:?}"),
    }
}

/// Position of the first output matching `f`.
fn pos(out: &[Output], f: impl Fn(&Output) -> bool) -> usize {
    out.iter()
        .position(f)
        .unwrap_or_else(|| panic!("not found in {out:#?}"))
}

fn is_emit(o: &Output, name: &str, to: SessionId) -> bool {
    matches!(o, Output::Emit { to: Target::Guest(t), event } if *t == to && event.name() == name)
}

fn info(state: CallState, video: bool) -> Option<CallInfo> {
    Some(CallInfo { state, video })
}

/// The core's call gauges.
fn call_states(ringing: u64, connecting: u64, connected: u64) -> CallStates {
    CallStates {
        ringing,
        connecting,
        connected,
    }
}

fn ended_count(h: &H, r: CallEndReason) -> u64 {
    h.core.counters().calls_ended[r as usize]
}

// ---- parsing --------------------------------------------------------------------------------

#[test]
fn call_request_payload() {
    let p = |v: Value| ClientEvent::parse("call:request", Some(&v));
    assert_eq!(
        p(json!({ "video": true })),
        Ok(ClientEvent::CallRequest { video: true })
    );
    for bad in [
        json!({}),
        json!({ "video": "yes" }),
        json!({ "video": 1 }),
        json!({ "video": null }),
        json!("video"),
    ] {
        assert_eq!(p(bad), Err(SignalError::InvalidPayload));
    }
    assert_eq!(
        ClientEvent::parse("call:request", None),
        Err(SignalError::InvalidPayload)
    );
    for (name, e) in [
        ("call:accept", ClientEvent::CallAccept),
        ("call:reject", ClientEvent::CallReject),
        ("call:end", ClientEvent::CallEnd),
    ] {
        assert_eq!(ClientEvent::parse(name, None), Ok(e.clone()));
        assert_eq!(e.name(), name);
        assert_eq!(e.kind(), wire::EventKind::Other);
    }
    for name in ClientEvent::NAMES {
        assert_ne!(
            ClientEvent::parse(name, None),
            Err(SignalError::UnknownEvent),
            "{name}"
        );
    }
}

#[test]
fn sdp_payload() {
    for name in ["webrtc:offer", "webrtc:answer"] {
        let p = |v: Value| ClientEvent::parse(name, Some(&v));
        let ok = p(json!({ "sdp": SDP })).unwrap();
        assert_eq!(ok.name(), name);
        assert_eq!(ok.kind(), wire::EventKind::Other);
        let mut long = String::from("v=0\r\nm=audio 9 RTP/AVP 0\r\n");
        long.push_str(&"a".repeat(16_000 - long.len()));
        assert!(p(json!({ "sdp": long })).is_ok(), "16000 bytes is fine");
        long.push('a');
        for bad in [
            json!({ "sdp": long }),
            json!({ "sdp": "" }),
            json!({ "sdp": "v=1\r\nm=audio 9 RTP/AVP 0\r\n" }),
            json!({ "sdp": "v=0\r\ns=-\r\n" }),
            json!({ "sdp": "hello m=audio" }),
            json!({ "sdp": 5 }),
            json!({}),
        ] {
            assert_eq!(p(bad.clone()), Err(SignalError::InvalidSdp), "{bad}");
        }
        assert_eq!(p(json!("v=0")), Err(SignalError::InvalidPayload));
        assert_eq!(
            ClientEvent::parse(name, None),
            Err(SignalError::InvalidPayload)
        );
    }
}

#[test]
fn ice_candidate_payload() {
    let p = |v: Value| ClientEvent::parse("webrtc:ice-candidate", Some(&v));
    let cand = |c: &str, mid: Option<&str>, idx: Option<u16>| ClientEvent::WebrtcCandidate {
        candidate: c.into(),
        sdp_mid: mid.map(Into::into),
        sdp_mline_index: idx,
    };
    assert_eq!(
        p(json!({ "candidate": CAND, "sdpMid": "0", "sdpMLineIndex": 0 })),
        Ok(cand(CAND, Some("0"), Some(0)))
    );
    assert_eq!(p(json!({ "candidate": CAND })), Ok(cand(CAND, None, None)));
    assert_eq!(
        p(json!({ "candidate": format!("a={CAND}"), "sdpMid": null, "sdpMLineIndex": 255 })),
        Ok(cand(CAND, None, Some(255)))
    );
    assert_eq!(
        p(json!({ "candidate": "", "sdpMid": "audio" })),
        Ok(cand("", Some("audio"), None)),
        "end of candidates"
    );
    let long = format!("candidate:{}", "1".repeat(1024 - 10));
    assert!(p(json!({ "candidate": long })).is_ok(), "1024 characters");
    for bad in [
        json!({ "candidate": format!("{long}1") }),
        json!({ "candidate": "host 1.2.3.4" }),
        json!({ "candidate": "a=" }),
        json!({ "candidate": "a=foo" }),
        json!({ "candidate": "candidate:1\r\na=evil" }),
        json!({ "candidate": CAND, "sdpMid": "m".repeat(65) }),
        json!({ "candidate": CAND, "sdpMLineIndex": 256 }),
        json!({ "candidate": CAND, "sdpMLineIndex": -1 }),
    ] {
        assert_eq!(p(bad.clone()), Err(SignalError::InvalidCandidate), "{bad}");
    }
    assert!(p(json!({ "candidate": CAND, "sdpMid": "m".repeat(64) })).is_ok());
    for bad in [
        json!({}),
        json!({ "candidate": null }),
        json!({ "candidate": 1 }),
        json!({ "candidate": CAND, "sdpMid": 0 }),
        json!({ "candidate": CAND, "sdpMLineIndex": "0" }),
        json!({ "candidate": CAND, "sdpMLineIndex": 0.5 }),
        json!([CAND]),
    ] {
        assert_eq!(p(bad.clone()), Err(SignalError::InvalidPayload), "{bad}");
    }
}

#[test]
fn call_wire_shapes() {
    let room = RoomId::from_raw(1);
    let rid = "00000000000000000000000000000001";
    assert_eq!(
        serde_json::to_value(Ack::Room { room_id: room }).unwrap(),
        json!({ "ok": true, "roomId": rid })
    );
    let e = ServerEvent::WebrtcCandidate(wire::IceCandidate {
        candidate: CAND.into(),
        sdp_mid: None,
        sdp_mline_index: None,
    });
    assert_eq!(e.name(), "webrtc:ice-candidate");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({ "candidate": CAND, "sdpMid": null, "sdpMLineIndex": null })
    );
    let names: Vec<&str> = CallEndReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        ["hangup", "rejected", "timeout", "failed", "partner_left"]
    );
    for (i, r) in CallEndReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
    }
    assert_eq!(CallId(7).to_string(), "7");
    for (code, e) in [
        ("no_call", SignalError::NoCall),
        ("call_in_progress", SignalError::CallInProgress),
        ("invalid_sdp", SignalError::InvalidSdp),
        ("invalid_candidate", SignalError::InvalidCandidate),
    ] {
        assert_eq!(e.code(), code);
        assert!(SignalError::ALL.contains(&e));
    }
}

#[test]
fn protocol_doc_names_every_event_and_code() {
    let doc = include_str!("../../docs/protocol.md");
    for name in ClientEvent::NAMES {
        assert!(doc.contains(&format!("`{name}`")), "{name} missing");
    }
    for code in SignalError::ALL.map(SignalError::code) {
        assert!(doc.contains(&format!("| `{code}` |")), "{code} missing");
    }
    for r in CallEndReason::ALL {
        assert!(
            doc.contains(&format!("| `{}` |", r.as_str())),
            "{r:?} missing"
        );
    }
    for e in [
        "call:incoming",
        "call:accepted",
        "call:ended",
        "webrtc:offer",
        "webrtc:answer",
        "webrtc:ice-candidate",
    ] {
        assert!(doc.contains(&format!("| `{e}` |")), "{e} missing");
    }
}

// ---- request / accept / reject / end --------------------------------------------------------

#[test]
fn request_rings_the_partner_and_accept_opens_media() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let rid = room.to_string();
    assert_eq!(
        h.ev(a, "call:request", json!({ "video": true })),
        Ok(Ack::Room { room_id: room })
    );
    let out = h.drain();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(
        json_of(&out, "call:incoming", b.id),
        json!({ "roomId": rid, "video": true })
    );
    assert_eq!(h.call_of(a.id), info(CallState::Calling, true));
    assert_eq!(h.call_of(b.id), info(CallState::Ringing, true));
    assert_eq!(h.core.call_states(), call_states(1, 0, 0));

    h.set(2.5);
    assert_eq!(
        h.ev(b, "call:accept", Value::Null),
        Ok(Ack::Room { room_id: room })
    );
    let out = h.drain();
    assert_eq!(opened(&out), (CallId(1), room, [a.id, b.id], true));
    for g in [a, b] {
        assert_eq!(
            json_of(&out, "call:accepted", g.id),
            json!({ "roomId": rid })
        );
    }
    assert_eq!(
        pos(&out, |o| matches!(o, Output::Media(_))),
        0,
        "the media session is opened before the clients hear of the accept"
    );
    assert_eq!(h.call_of(a.id), info(CallState::Connecting, true));
    assert_eq!(h.call_of(b.id), info(CallState::Connecting, true));
    assert_eq!(h.core.call_states(), call_states(0, 1, 0));
    let c = h.core.counters();
    assert_eq!((c.calls_requested, c.calls_accepted), (1, 1));
    // The accepted call no longer times out.
    assert!(h.tick_to(40.0).iter().all(|o| !matches!(
        o,
        Output::Emit {
            event: ServerEvent::CallEnded(_),
            ..
        }
    )));
    assert_eq!(h.call_of(a.id), info(CallState::Connecting, true));
}

#[test]
fn callee_rejects() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.ring(a, room);
    assert_eq!(h.ev(b, "call:reject", Value::Null), Ok(Ack::Ok));
    let out = h.drain();
    assert_eq!(
        json_of(&out, "call:ended", a.id),
        json!({ "roomId": room.to_string(), "reason": "rejected" })
    );
    assert_eq!(call_ended(&out, b.id), CallEndReason::Rejected);
    assert!(
        media_cmds(&out).is_empty(),
        "never opened, nothing to close"
    );
    assert_eq!(h.call_of(a.id), None);
    assert_eq!(h.core.call_states(), CallStates::default());
    assert_eq!(ended_count(&h, CallEndReason::Rejected), 1);
    // The room is free for another call, with the next id; either side may call.
    h.ring(b, room);
    assert_eq!(
        h.ev(a, "call:accept", Value::Null),
        Ok(Ack::Room { room_id: room })
    );
    let (call, _, guests, video) = opened(&h.drain());
    assert_eq!((call, guests, video), (CallId(2), [b.id, a.id], false));
}

#[test]
fn end_while_ringing_and_after_accept() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    // The caller cancels while ringing: hangup to both, no media to close.
    h.ring(a, room);
    assert_eq!(h.ev(a, "call:end", Value::Null), Ok(Ack::Ok));
    let out = h.drain();
    assert_eq!(call_ended(&out, a.id), CallEndReason::Hangup);
    assert_eq!(call_ended(&out, b.id), CallEndReason::Hangup);
    assert!(media_cmds(&out).is_empty());
    // The callee may also end a ringing call.
    h.ring(a, room);
    assert_eq!(h.ev(b, "call:end", Value::Null), Ok(Ack::Ok));
    let out = h.drain();
    assert_eq!(call_ended(&out, a.id), CallEndReason::Hangup);
    assert!(media_cmds(&out).is_empty());
    // After the accept: Close.
    let call = h.call(a, b, room);
    assert_eq!(call, CallId(3));
    assert_eq!(h.ev(b, "call:end", Value::Null), Ok(Ack::Ok));
    let out = h.drain();
    assert_eq!(call_ended(&out, a.id), CallEndReason::Hangup);
    assert_eq!(call_ended(&out, b.id), CallEndReason::Hangup);
    assert_eq!(media_cmds(&out), vec![MediaCommand::Close { call }]);
    assert_eq!(ended_count(&h, CallEndReason::Hangup), 3);
    assert_eq!(h.ev(a, "call:end", Value::Null), Err(SignalError::NoCall));
    // The chat goes on.
    assert_eq!(h.probe(a.id).state, GuestState::InChat);
}

#[test]
fn ring_timeout_is_thirty_seconds_by_default() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(1.0);
    h.ring(a, room);
    assert!(h.core.poll_timeout().is_some_and(|t| t <= h.t(31.0)));
    let out = h.tick_to(30.9);
    assert_eq!(count(&out, "call:ended"), 0);
    let out = h.tick_to(31.0);
    assert_eq!(call_ended(&out, a.id), CallEndReason::Timeout);
    assert_eq!(call_ended(&out, b.id), CallEndReason::Timeout);
    assert!(media_cmds(&out).is_empty());
    assert_eq!(ended_count(&h, CallEndReason::Timeout), 1);
    assert_eq!(
        h.ev(b, "call:accept", Value::Null),
        Err(SignalError::NoCall)
    );
}

#[test]
fn ring_timeout_is_configurable_and_stale_timers_are_ignored() {
    let mut h = H::new(CoreConfig {
        ring_timeout: secs(5.0),
        ..loose()
    });
    let (a, b, room) = h.pair();
    h.ring(a, room);
    h.set(3.0);
    h.ev(a, "call:end", Value::Null).unwrap();
    h.ring(a, room);
    // The first call's timer (due at 5 s) must not end the second call.
    assert_eq!(count(&h.tick_to(5.0), "call:ended"), 0);
    assert_eq!(h.call_of(b.id), info(CallState::Ringing, false));
    assert_eq!(count(&h.tick_to(7.9), "call:ended"), 0);
    let out = h.tick_to(8.0);
    assert_eq!(call_ended(&out, b.id), CallEndReason::Timeout);
}

#[test]
fn refusals() {
    let mut h = H::loose();
    let lonely = h.guest();
    for (name, payload) in [
        ("call:request", json!({ "video": false })),
        ("call:accept", Value::Null),
        ("call:reject", Value::Null),
        ("call:end", Value::Null),
        ("webrtc:offer", json!({ "sdp": SDP })),
        ("webrtc:answer", json!({ "sdp": SDP })),
        ("webrtc:ice-candidate", json!({ "candidate": CAND })),
    ] {
        assert_eq!(
            h.ev(lonely, name, payload),
            Err(SignalError::NotInChat),
            "{name}"
        );
    }
    let (a, b, room) = h.pair();
    // No call yet.
    for g in [a, b] {
        for (name, payload) in [
            ("call:accept", Value::Null),
            ("call:reject", Value::Null),
            ("call:end", Value::Null),
            ("webrtc:offer", json!({ "sdp": SDP })),
            ("webrtc:answer", json!({ "sdp": SDP })),
            ("webrtc:ice-candidate", json!({ "candidate": CAND })),
        ] {
            assert_eq!(h.ev(g, name, payload), Err(SignalError::NoCall), "{name}");
        }
    }
    // Ringing: only the callee may accept or reject; no media yet.
    h.ring(a, room);
    for (g, name, payload) in [
        (a, "call:accept", Value::Null),
        (a, "call:reject", Value::Null),
        (a, "webrtc:offer", json!({ "sdp": SDP })),
        (b, "webrtc:offer", json!({ "sdp": SDP })),
        (b, "webrtc:answer", json!({ "sdp": SDP })),
        (a, "webrtc:ice-candidate", json!({ "candidate": CAND })),
    ] {
        assert_eq!(h.ev(g, name, payload), Err(SignalError::NoCall), "{name}");
    }
    for g in [a, b] {
        assert_eq!(
            h.ev(g, "call:request", json!({ "video": true })),
            Err(SignalError::CallInProgress)
        );
    }
    assert!(h.drain().is_empty(), "refusals emit nothing");
    assert_eq!(h.call_of(a.id), info(CallState::Calling, false));
    assert_eq!(h.call_of(b.id), info(CallState::Ringing, false));
    // Accepted: a second request is still refused, accept/reject are no_call.
    h.ev(b, "call:accept", Value::Null).unwrap();
    h.drain();
    for g in [a, b] {
        assert_eq!(
            h.ev(g, "call:request", json!({ "video": false })),
            Err(SignalError::CallInProgress)
        );
        assert_eq!(
            h.ev(g, "call:accept", Value::Null),
            Err(SignalError::NoCall)
        );
        assert_eq!(
            h.ev(g, "call:reject", Value::Null),
            Err(SignalError::NoCall)
        );
        assert_eq!(
            h.ev(g, "webrtc:answer", json!({ "sdp": SDP })),
            Err(SignalError::InvalidSdp),
            "no server offer is pending"
        );
    }
    assert!(h.drain().is_empty(), "refusals emit nothing");
    assert_eq!(h.call_of(a.id), info(CallState::Connecting, false));
    assert_eq!(h.core.counters().calls_requested, 1);
    // A third guest's chat is unaffected by this call.
    let (c, _d, _) = h.pair();
    assert_eq!(h.ev(c, "call:end", Value::Null), Err(SignalError::NoCall));
}

// ---- SDP and ICE ----------------------------------------------------------------------------

#[test]
fn offers_and_candidates_go_to_the_media_server() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    assert_eq!(h.ev(a, "webrtc:offer", json!({ "sdp": SDP })), Ok(Ack::Ok));
    assert_eq!(
        h.drain(),
        vec![Output::Media(MediaCommand::Offer {
            call,
            guest: a.id,
            sdp: SDP.into()
        })]
    );
    assert_eq!(
        h.ev(
            b,
            "webrtc:ice-candidate",
            json!({ "candidate": format!("a={CAND}"), "sdpMid": "0", "sdpMLineIndex": 0 })
        ),
        Ok(Ack::Ok)
    );
    assert_eq!(
        h.drain(),
        vec![Output::Media(MediaCommand::Candidate {
            call,
            guest: b.id,
            candidate: CAND.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        })]
    );
    // End of candidates: acknowledged, nothing to relay.
    assert_eq!(
        h.ev(b, "webrtc:ice-candidate", json!({ "candidate": "" })),
        Ok(Ack::Ok)
    );
    assert!(h.drain().is_empty());
    // An invalid one never reaches the core.
    assert_eq!(
        ClientEvent::parse("webrtc:ice-candidate", Some(&json!({ "candidate": "x" }))),
        Err(SignalError::InvalidCandidate)
    );
    assert_eq!(
        ClientEvent::parse("webrtc:offer", Some(&json!({ "sdp": "nope" }))),
        Err(SignalError::InvalidSdp)
    );
}

#[test]
fn media_answers_and_candidates_reach_the_right_guest() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    for (e, name, to, want) in [
        (
            MediaEvent::Answer {
                call,
                guest: b.id,
                sdp: "v=0 answer".into(),
            },
            "webrtc:answer",
            b.id,
            json!({ "sdp": "v=0 answer" }),
        ),
        (
            MediaEvent::Candidate {
                call,
                guest: a.id,
                candidate: CAND.into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: None,
            },
            "webrtc:ice-candidate",
            a.id,
            json!({ "candidate": CAND, "sdpMid": "0", "sdpMLineIndex": null }),
        ),
        (
            MediaEvent::OfferRejected {
                call,
                guest: a.id,
                message: "Unsupported codec.".into(),
            },
            "error",
            a.id,
            json!({ "code": "invalid_sdp", "message": "Unsupported codec.", "event": "webrtc:offer" }),
        ),
    ] {
        assert_eq!(h.relayed(e, name, to), want, "{name}");
    }
}

#[test]
fn server_offer_then_client_answer() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    assert_eq!(
        h.ev(b, "webrtc:answer", json!({ "sdp": SDP })),
        Err(SignalError::InvalidSdp)
    );
    let offer = MediaEvent::Offer {
        call,
        guest: b.id,
        sdp: "v=0 renegotiate".into(),
    };
    assert_eq!(
        h.relayed(offer, "webrtc:offer", b.id),
        json!({ "sdp": "v=0 renegotiate" })
    );
    // Only b owes an answer.
    assert_eq!(
        h.ev(a, "webrtc:answer", json!({ "sdp": SDP })),
        Err(SignalError::InvalidSdp)
    );
    assert_eq!(h.ev(b, "webrtc:answer", json!({ "sdp": SDP })), Ok(Ack::Ok));
    assert_eq!(
        h.drain(),
        vec![Output::Media(MediaCommand::Answer {
            call,
            guest: b.id,
            sdp: SDP.into()
        })]
    );
    assert_eq!(
        h.ev(b, "webrtc:answer", json!({ "sdp": SDP })),
        Err(SignalError::InvalidSdp),
        "one answer per offer"
    );
}

#[test]
fn stale_media_events_are_ignored() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let old = h.call(a, b, room);
    h.ev(a, "call:end", Value::Null).unwrap();
    h.drain();
    let new = h.call(a, b, room);
    assert_ne!(old, new);
    let (c, _d, _) = h.pair();
    for e in [
        MediaEvent::Answer {
            call: old,
            guest: a.id,
            sdp: "x".into(),
        },
        MediaEvent::Offer {
            call: old,
            guest: a.id,
            sdp: "x".into(),
        },
        MediaEvent::Candidate {
            call: old,
            guest: b.id,
            candidate: CAND.into(),
            sdp_mid: None,
            sdp_mline_index: None,
        },
        MediaEvent::OfferRejected {
            call: old,
            guest: a.id,
            message: "x".into(),
        },
        MediaEvent::Connected {
            call: old,
            guest: a.id,
        },
        MediaEvent::Failed {
            call: old,
            guest: a.id,
        },
        MediaEvent::Failed {
            call: CallId(99),
            guest: a.id,
        },
        // A guest who is not in the call.
        MediaEvent::Failed {
            call: new,
            guest: c.id,
        },
        MediaEvent::Answer {
            call: new,
            guest: c.id,
            sdp: "x".into(),
        },
    ] {
        assert!(h.media(e.clone()).is_empty(), "{e:?}");
    }
    assert_eq!(h.call_of(a.id), info(CallState::Connecting, false));
    // Nothing pending from the stale offer.
    assert_eq!(
        h.ev(a, "webrtc:answer", json!({ "sdp": SDP })),
        Err(SignalError::InvalidSdp)
    );
    // Media events for a ringing call are ignored too (the media server does not know it).
    let (e, f, room2) = h.pair();
    h.ring(e, room2);
    let ringing = CallId(3);
    assert!(h
        .media(MediaEvent::Failed {
            call: ringing,
            guest: e.id
        })
        .is_empty());
    assert_eq!(h.call_of(f.id), info(CallState::Ringing, false));
}

#[test]
fn both_connected_reports_setup_once() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.set(1.0);
    h.ring(a, room);
    h.set(2.0);
    let call = h.call_accept_only(b, room);
    h.set(2.75);
    let out = h.media(MediaEvent::Connected { call, guest: a.id });
    assert!(out.is_empty());
    assert_eq!(h.call_of(a.id), info(CallState::Connected, false));
    assert_eq!(h.call_of(b.id), info(CallState::Connecting, false));
    assert_eq!(h.core.call_states().connecting, 1);
    h.set(3.5);
    let out = h.media(MediaEvent::Connected { call, guest: b.id });
    assert_eq!(setups(&out), vec![secs(1.5)]);
    assert_eq!(out.len(), 1);
    assert_eq!(h.core.call_states(), call_states(0, 0, 1));
    // A drop and a recovery: no second setup.
    let out = h.media(MediaEvent::Disconnected { call, guest: a.id });
    assert!(out.is_empty());
    assert_eq!(h.call_of(a.id), info(CallState::Connecting, false));
    assert_eq!(h.core.call_states().connecting, 1);
    h.set(9.0);
    assert!(setups(&h.media(MediaEvent::Connected { call, guest: a.id })).is_empty());
    assert!(setups(&h.media(MediaEvent::Connected { call, guest: b.id })).is_empty());
    assert_eq!(h.core.call_states().connected, 1);
}

impl H {
    /// `b` accepts the ringing call; returns its id. Outputs drained.
    fn call_accept_only(&mut self, b: G, room: RoomId) -> CallId {
        assert_eq!(
            self.ev(b, "call:accept", Value::Null),
            Ok(Ack::Room { room_id: room })
        );
        opened(&self.drain()).0
    }
}

#[test]
fn failure_while_present_ends_the_call() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    h.media(MediaEvent::Connected { call, guest: a.id });
    let out = h.media(MediaEvent::Failed { call, guest: b.id });
    assert_eq!(call_ended(&out, a.id), CallEndReason::Failed);
    assert_eq!(call_ended(&out, b.id), CallEndReason::Failed);
    assert_eq!(media_cmds(&out), vec![MediaCommand::Close { call }]);
    assert_eq!(ended_count(&h, CallEndReason::Failed), 1);
    assert_eq!(h.call_of(a.id), None);
    assert_eq!(h.core.call_states(), CallStates::default());
    assert_eq!(h.probe(a.id).state, GuestState::InChat, "the chat goes on");
}

#[test]
fn failure_while_away_waits_and_the_guest_resumes_with_a_new_offer() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    h.media(MediaEvent::Connected { call, guest: a.id });
    h.media(MediaEvent::Connected { call, guest: b.id });
    h.set(1.0);
    h.core.disconnect(b.conn, h.now);
    let out = h.drain();
    assert_eq!(
        count(&out, "call:ended"),
        0,
        "going away does not end the call"
    );
    assert!(media_cmds(&out).is_empty());
    h.set(5.0);
    let out = h.media(MediaEvent::Failed { call, guest: b.id });
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(h.call_of(a.id), info(CallState::Connected, false));
    assert_eq!(h.core.call_states().connecting, 1);
    // b returns within the grace period and sees its call.
    h.set(20.0);
    let conn = h.connect(b.id);
    let out = h.drain();
    let b = G { id: b.id, conn };
    let est = match &out[0] {
        Output::Emit {
            event: ServerEvent::Established(e),
            ..
        } => e.clone(),
        o => panic!("{o:?}"),
    };
    let room_info = est.room.expect("in chat");
    assert_eq!(room_info.call, info(CallState::Connecting, false));
    assert_eq!(
        serde_json::to_value(&room_info).unwrap()["call"],
        json!({ "state": "connecting", "video": false })
    );
    // ICE restart: just another offer.
    assert_eq!(h.ev(b, "webrtc:offer", json!({ "sdp": SDP })), Ok(Ack::Ok));
    assert_eq!(
        media_cmds(&h.drain()),
        vec![MediaCommand::Offer {
            call,
            guest: b.id,
            sdp: SDP.into()
        }]
    );
    // Past the original grace end nothing happens: b came back.
    assert_eq!(count(&h.tick_to(40.0), "call:ended"), 0);
    let out = h.media(MediaEvent::Connected { call, guest: b.id });
    assert!(setups(&out).is_empty(), "setup was already reported");
    assert_eq!(h.call_of(b.id), info(CallState::Connected, false));
}

#[test]
fn reconnect_shows_each_sides_state() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    assert_eq!(h.call_of(a.id), None);
    assert!(serde_json::to_value(h.probe(a.id)).unwrap()["room"]
        .get("call")
        .is_none());
    h.ev(a, "call:request", json!({ "video": true })).unwrap();
    h.drain();
    for (g, state) in [(a, "calling"), (b, "ringing")] {
        h.core.disconnect(g.conn, h.now);
        h.drain();
        let conn = h.connect(g.id);
        let out = h.drain();
        match &out[0] {
            Output::Emit {
                to: Target::Conn(c),
                event: e @ ServerEvent::Established(_),
            } if *c == conn => {
                assert_eq!(
                    serde_json::to_value(e).unwrap()["room"]["call"],
                    json!({ "state": state, "video": true })
                );
            }
            o => panic!("{o:?}"),
        }
        let _ = room;
    }
}

// ---- the chat ends during a call ------------------------------------------------------------

fn assert_chat_end_order(out: &[Output], actor: SessionId, partner: SessionId, close: bool) {
    assert_eq!(call_ended(out, actor), CallEndReason::Hangup);
    assert_eq!(call_ended(out, partner), CallEndReason::PartnerLeft);
    let last_call_end = pos(out, |o| is_emit(o, "call:ended", actor))
        .max(pos(out, |o| is_emit(o, "call:ended", partner)));
    let first_chat_end = pos(
        out,
        |o| matches!(o, Output::Emit { event, .. } if event.name() == "chat:ended" || event.name() == "chat:message"),
    );
    assert!(last_call_end < first_chat_end, "{out:#?}");
    let closes: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Output::Media(MediaCommand::Close { .. })))
        .map(|(i, _)| i)
        .collect();
    if close {
        assert_eq!(closes.len(), 1, "{out:#?}");
        assert!(closes[0] < first_chat_end);
    } else {
        assert!(closes.is_empty(), "{out:#?}");
    }
}

#[test]
fn leave_during_a_call() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    h.ev(b, "chat:leave", Value::Null).unwrap();
    let out = h.drain();
    assert_chat_end_order(&out, b.id, a.id, true);
    assert_eq!(media_cmds(&out), vec![MediaCommand::Close { call }]);
    assert_eq!(ended_count(&h, CallEndReason::PartnerLeft), 1);
    assert_eq!(h.core.call_states(), CallStates::default());
    // The old call is gone for good.
    assert!(h
        .media(MediaEvent::Connected { call, guest: a.id })
        .is_empty());
}

#[test]
fn leave_while_ringing_closes_nothing() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.ring(a, room);
    h.ev(a, "chat:leave", Value::Null).unwrap();
    let out = h.drain();
    assert_chat_end_order(&out, a.id, b.id, false);
    // Its ring timer fires into nothing.
    assert_eq!(count(&h.tick_to(30.0), "call:ended"), 0);
}

#[test]
fn next_and_report_during_a_call() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.call(a, b, room);
    h.ev(a, "match:next", Value::Null).unwrap();
    let out = h.drain();
    assert_chat_end_order(&out, a.id, b.id, true);
    h.ev(a, "match:cancel", Value::Null).unwrap();
    h.drain();

    let (c, d, room) = h.pair();
    h.call(c, d, room);
    h.ev(c, "chat:report", json!({ "reason": "rude" })).unwrap();
    let out = h.drain();
    assert_chat_end_order(&out, c.id, d.id, true);
    assert_eq!(ended_count(&h, CallEndReason::PartnerLeft), 2);
}

#[test]
fn disconnect_past_grace_tells_only_the_partner() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    h.set(1.0);
    h.core.disconnect(a.conn, h.now);
    h.drain();
    assert_eq!(count(&h.tick_to(30.9), "call:ended"), 0);
    let out = h.tick_to(31.0);
    assert_eq!(events(&out, "call:ended", Target::Guest(a.id)).len(), 0);
    assert_eq!(call_ended(&out, b.id), CallEndReason::PartnerLeft);
    assert_eq!(media_cmds(&out), vec![MediaCommand::Close { call }]);
    let call_end = pos(&out, |o| is_emit(o, "call:ended", b.id));
    let chat_end = pos(&out, |o| is_emit(o, "chat:ended", b.id));
    assert!(call_end < chat_end);
}

#[test]
fn session_expiry_during_a_call() {
    let mut h = H::new(CoreConfig {
        token_ttl: secs(60.0),
        ..loose()
    });
    let (a, b, room) = h.pair();
    h.set(10.0);
    h.core.refresh(b.id, h.now).unwrap();
    let call = h.call(a, b, room);
    let out = h.tick_to(60.0);
    assert_chat_end_order(&out, a.id, b.id, true);
    assert_eq!(media_cmds(&out), vec![MediaCommand::Close { call }]);
}

#[test]
fn refused_events_change_nothing() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    h.ring(a, room);
    let snapshot = |h: &mut H| {
        (
            h.call_of(a.id),
            h.call_of(b.id),
            h.core.call_states(),
            h.core.counters(),
        )
    };
    let before = snapshot(&mut h);
    for (g, name, payload) in [
        (a, "call:accept", Value::Null),
        (a, "call:reject", Value::Null),
        (b, "call:request", json!({ "video": true })),
        (a, "webrtc:offer", json!({ "sdp": SDP })),
        (b, "webrtc:answer", json!({ "sdp": SDP })),
        (b, "webrtc:ice-candidate", json!({ "candidate": "" })),
    ] {
        assert!(h.ev(g, name, payload).is_err(), "{name}");
        assert_eq!(h.drain(), vec![], "{name}");
    }
    let after = snapshot(&mut h);
    assert_eq!(before, after);
}

#[test]
fn rate_limited_call_events() {
    let mut h = H::new(CoreConfig {
        events_per_sec: 2,
        ..loose()
    });
    let (a, b, room) = h.pair();
    h.ring(a, room);
    h.ev(b, "call:accept", Value::Null).unwrap();
    h.ev(b, "webrtc:offer", json!({ "sdp": SDP })).unwrap();
    assert_eq!(
        h.ev(b, "webrtc:answer", json!({ "sdp": SDP })),
        Err(SignalError::RateLimited)
    );
}

// ---- property test ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum COp {
    Request(bool, bool),
    Accept(bool),
    Reject(bool),
    End(bool),
    Offer(bool),
    Answer(bool),
    Candidate(bool, bool),
    /// A media event for side `.1` of the newest (or, if `.2`, the one before) call.
    Media(u8, bool, bool),
    Disconnect(bool),
    Connect(bool),
    Leave(bool),
    Rematch,
    Advance(u16),
}

fn arb_cop() -> impl Strategy<Value = COp> {
    let b = any::<bool>;
    prop_oneof![
        3 => (b(), b()).prop_map(|(x, v)| COp::Request(x, v)),
        3 => b().prop_map(COp::Accept),
        1 => b().prop_map(COp::Reject),
        1 => b().prop_map(COp::End),
        2 => b().prop_map(COp::Offer),
        1 => b().prop_map(COp::Answer),
        2 => (b(), b()).prop_map(|(x, e)| COp::Candidate(x, e)),
        4 => (0..7u8, b(), b()).prop_map(|(k, x, s)| COp::Media(k, x, s)),
        1 => b().prop_map(COp::Disconnect),
        2 => b().prop_map(COp::Connect),
        1 => b().prop_map(COp::Leave),
        1 => Just(COp::Rematch),
        2 => (0..20_000u16).prop_map(COp::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two guests, random call traffic: at most one call, only while they share a room; every
    /// Open is closed at most once; media commands only name open calls; no panic.
    #[test]
    fn random_call_traffic(ops in prop::collection::vec(arb_cop(), 1..120)) {
        let mut h = H::new(CoreConfig {
            ring_timeout: secs(10.0),
            grace_period: secs(15.0),
            repair_cooldown: secs(0.0),
            ..loose()
        });
        let (a, b, _) = h.pair();
        let ids = [a.id, b.id];
        let mut conns: [Vec<ConnId>; 2] = [vec![a.conn], vec![b.conn]];
        let mut open: Vec<CallId> = Vec::new();
        let mut closed: Vec<CallId> = Vec::new();
        let mut last_open: Option<CallId> = None;
        for op in ops {
            let side = |x: bool| usize::from(x);
            let send = |h: &mut H, conns: &[Vec<ConnId>; 2], x: bool, name: &str, p: Value| {
                let c = conns[side(x)].first().copied()?;
                let e = ClientEvent::parse(name, Some(&p)).ok()?;
                Some(h.core.handle_event(c, e, h.now))
            };
            match op {
                COp::Request(x, v) => { send(&mut h, &conns, x, "call:request", json!({ "video": v })); }
                COp::Accept(x) => { send(&mut h, &conns, x, "call:accept", Value::Null); }
                COp::Reject(x) => { send(&mut h, &conns, x, "call:reject", Value::Null); }
                COp::End(x) => { send(&mut h, &conns, x, "call:end", Value::Null); }
                COp::Offer(x) => { send(&mut h, &conns, x, "webrtc:offer", json!({ "sdp": SDP })); }
                COp::Answer(x) => { send(&mut h, &conns, x, "webrtc:answer", json!({ "sdp": SDP })); }
                COp::Candidate(x, empty) => {
                    let c = if empty { "" } else { CAND };
                    send(&mut h, &conns, x, "webrtc:ice-candidate", json!({ "candidate": c }));
                }
                COp::Media(k, x, stale) => {
                    // Ids are handed out 1, 2, 3, …: the newest is the number of requests.
                    let newest = h.core.counters().calls_requested;
                    let call = CallId(if stale { newest.saturating_sub(1) } else { newest });
                    let guest = ids[side(x)];
                    let e = match k {
                        0 => MediaEvent::Connected { call, guest },
                        1 => MediaEvent::Disconnected { call, guest },
                        2 => MediaEvent::Failed { call, guest },
                        3 => MediaEvent::Offer { call, guest, sdp: "v=0".into() },
                        4 => MediaEvent::Answer { call, guest, sdp: "v=0".into() },
                        5 => MediaEvent::OfferRejected { call, guest, message: "no".into() },
                        _ => MediaEvent::Candidate { call, guest, candidate: CAND.into(), sdp_mid: None, sdp_mline_index: None },
                    };
                    h.core.handle_media(e, h.now);
                }
                COp::Disconnect(x) => {
                    if let Some(c) = conns[side(x)].pop() {
                        h.core.disconnect(c, h.now);
                    }
                }
                COp::Connect(x) => {
                    if conns[side(x)].len() < 2 {
                        let c = ConnId(h.next_conn);
                        h.next_conn += 1;
                        if h.core.connect(ids[side(x)], c, h.now).is_ok() {
                            conns[side(x)].push(c);
                        }
                    }
                }
                COp::Leave(x) => { send(&mut h, &conns, x, "chat:leave", Value::Null); }
                COp::Rematch => {
                    for x in [false, true] {
                        send(&mut h, &conns, x, "match:start", Value::Null);
                    }
                }
                COp::Advance(ms) => {
                    h.now += Duration::from_millis(u64::from(ms));
                    h.core.handle_timeout(h.now);
                }
            }
            for o in h.drain() {
                match o {
                    Output::Media(MediaCommand::Open { call, guests, .. }) => {
                        prop_assert!(open.is_empty(), "one call at a time");
                        prop_assert!(guests == ids || guests == [ids[1], ids[0]]);
                        prop_assert!(last_open.is_none_or(|l| call > l), "fresh ids");
                        last_open = Some(call);
                        open.push(call);
                    }
                    Output::Media(MediaCommand::Close { call }) => {
                        prop_assert_eq!(open.pop(), Some(call));
                        closed.push(call);
                    }
                    Output::Media(
                        MediaCommand::Offer { call, .. }
                        | MediaCommand::Answer { call, .. }
                        | MediaCommand::Candidate { call, .. },
                    ) => prop_assert!(open.contains(&call)),
                    Output::CallSetup(_) => {
                        prop_assert!(open.len() == 1);
                    }
                    _ => {}
                }
            }
            // At most one call, and only while the two share a room.
            let st = h.core.call_states();
            let calls = st.ringing + st.connecting + st.connected;
            prop_assert!(calls <= 1);
            let in_chat = h.core.stats(h.now).connected_users;
            if in_chat == 0 {
                prop_assert_eq!(calls, 0);
                prop_assert!(open.is_empty());
            }
            prop_assert_eq!(st.connecting + st.connected, open.len() as u64);
            let c = h.core.counters();
            let ended: u64 = c.calls_ended.iter().sum();
            prop_assert_eq!(c.calls_requested, ended + calls);
            prop_assert_eq!(c.calls_accepted, closed.len() as u64 + open.len() as u64);
        }
    }
}

#[test]
fn candidates_have_their_own_rate_limit() {
    // Default limits: 10 other events/s would refuse a browser's burst of candidates.
    let mut h = H::new(CoreConfig {
        match_per_sec: 100,
        match_burst: 100,
        ..CoreConfig::default()
    });
    let (a, b, room) = h.pair();
    let call = h.call(a, b, room);
    let cand = |n: u32| json!({ "candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5000{n} typ host"), "sdpMLineIndex": 0 });
    assert_eq!(
        ClientEvent::parse("webrtc:ice-candidate", Some(&cand(1)))
            .unwrap()
            .kind(),
        wire::EventKind::Candidate
    );
    for n in 0..30 {
        assert_eq!(
            h.ev(a, "webrtc:ice-candidate", cand(n)),
            Ok(Ack::Ok),
            "candidate {n}"
        );
    }
    let _ = call;
    // The other bucket is untouched by them.
    assert_eq!(h.ev(a, "call:end", Value::Null), Ok(Ack::Ok));
    // And the candidate bucket has a bound of its own (50 per second).
    let (c, d, room) = h.pair();
    h.call(c, d, room);
    let refused = (0..80)
        .filter(|n| h.ev(c, "webrtc:ice-candidate", cand(*n)) == Err(SignalError::RateLimited))
        .count();
    assert!(refused >= 25, "refused {refused} of 80");
}

#[test]
fn every_ended_call_is_reported_once_with_its_id_and_call_of_names_the_live_one() {
    let mut h = H::loose();
    let (a, b, room) = h.pair();
    assert_eq!(h.core.call_of(a.id), None);
    h.ring(a, room);
    // Ringing: both guests are in it (what TURN credentials are handed out for).
    assert_eq!(h.core.call_of(a.id), Some(CallId(1)));
    assert_eq!(h.core.call_of(b.id), Some(CallId(1)));
    let ended = |out: &[Output]| -> Vec<CallId> {
        out.iter()
            .filter_map(|o| match o {
                Output::CallEnded(c) => Some(*c),
                _ => None,
            })
            .collect()
    };
    assert_eq!(h.ev(b, "call:reject", Value::Null), Ok(Ack::Ok));
    assert_eq!(ended(&h.drain()), [CallId(1)], "a ringing call that ends");
    assert_eq!(h.core.call_of(a.id), None);
    let call = h.call(b, a, room);
    assert_eq!(h.core.call_of(a.id), Some(call));
    assert_eq!(h.ev(a, "call:end", Value::Null), Ok(Ack::Ok));
    assert_eq!(ended(&h.drain()), [call], "an accepted call that ends");
    assert_eq!(h.core.call_of(b.id), None);
}
