//! The signaling core (signaling/src/core.rs) driven statefully, as the hub drives it, with
//! hand-driven time (as signaling/tests/common does): guests are created, connect and drop
//! sockets, send any client event with fuzzed payloads, get media server reports, delivery
//! acks and failures, refreshes and shared files, while time moves on and timers fire. The
//! shell's part is played faithfully: every `Output` is drained (and serialized), a socket the
//! core closes is disconnected. Checked: no panic, timers never ask for the past, and the
//! statistics stay consistent.
//!
//! Input: a byte choosing the configuration, then operations (`tandem_fuzz::signaling_ops`),
//! each an opcode byte (modulo `COUNT`) and its arguments; see `apply` for what each reads.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tandem_fuzz::signaling_ops as op;
use tandem_fuzz::Reader;
use tandem_signaling::files::{Category, FileInfo};
use tandem_signaling::wire::ChatMessage;
use tandem_signaling::{
    CallId, ClientEvent, ClientKey, ConnId, Core, CoreConfig, FileId, MediaCommand, MediaEvent,
    Output, RoomId, SessionId,
};

const MAX_GUESTS: usize = 8;
const MAX_REMEMBERED: usize = 8;
const MAX_OPS: usize = 256;

fn config(choice: u8) -> CoreConfig {
    match choice % 3 {
        // The documented defaults: rate limits and floods are reachable.
        0 => CoreConfig::default(),
        // Limits out of the way.
        1 => CoreConfig {
            chat_messages_per_sec: 10_000,
            match_per_sec: 10_000,
            match_burst: 10_000,
            typing_per_sec: 10_000,
            events_per_sec: 10_000,
            ice_candidates_per_sec: 10_000,
            ..CoreConfig::default()
        },
        // Everything small: quotas, queues and timers are hit within a few operations.
        _ => CoreConfig {
            token_ttl: Duration::from_secs(60),
            grace_period: Duration::from_secs(2),
            repair_cooldown: Duration::from_secs(5),
            typing_timeout: Duration::from_secs(1),
            away_queue_max: 2,
            max_sockets_per_guest: 2,
            max_sessions: 4,
            chat_messages_per_sec: 3,
            match_per_sec: 2,
            match_burst: 2,
            typing_per_sec: 1,
            events_per_sec: 5,
            ice_candidates_per_sec: 3,
            flood_refusals: 3,
            flood_window: Duration::from_secs(2),
            stats_interval: Duration::from_millis(100),
            active_window: Duration::from_secs(10),
            ring_timeout: Duration::from_secs(3),
            max_sessions_per_ip: 2,
            connect_timeout: Duration::from_secs(5),
            ..CoreConfig::default()
        },
    }
}

struct Harness {
    core: Core,
    now: Instant,
    guests: Vec<SessionId>,
    conns: Vec<ConnId>,
    /// The guest of every socket that was opened.
    owners: HashMap<ConnId, SessionId>,
    next_conn: u64,
    calls: Vec<CallId>,
    /// Messages handed out for delivery: `(to, message)`.
    deliveries: Vec<(SessionId, ChatMessage)>,
}

/// The `i`-th of `items` (modulo their count), if any.
fn pick<T: Clone>(items: &[T], i: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(i) % items.len()].clone())
}

fn remember<T>(list: &mut Vec<T>, item: T) {
    if list.len() == MAX_REMEMBERED {
        list.remove(0);
    }
    list.push(item);
}

impl Harness {
    /// A guest: one created (255 picks an unknown one).
    fn guest(&self, r: &mut Reader) -> SessionId {
        let i = r.u8();
        match pick(&self.guests, i) {
            Some(g) if i != 255 => g,
            _ => SessionId::from_raw(0xdead_beef),
        }
    }

    /// A socket: an open one (255 picks an unknown one).
    fn conn(&self, r: &mut Reader) -> ConnId {
        let i = r.u8();
        match pick(&self.conns, i) {
            Some(c) if i != 255 => c,
            _ => ConnId(u64::MAX),
        }
    }

    fn call(&self, r: &mut Reader) -> CallId {
        let i = r.u8();
        match pick(&self.calls, i) {
            Some(c) if i != 255 => c,
            _ => CallId(u64::from(i)),
        }
    }

    /// A payload made to look like what `name` expects, from fuzzed values.
    fn template(&self, name: &str, r: &mut Reader) -> Value {
        match name {
            "match:start" | "match:next" => {
                let n = r.u8() % 7;
                json!({ "interests": (0..n).map(|_| r.string()).collect::<Vec<_>>() })
            }
            "chat:report" => json!({ "reason": r.string() }),
            "chat:message" => json!({ "clientId": r.string(), "content": r.string() }),
            "chat:message:read" => {
                let i = r.u8();
                match pick(&self.deliveries, i) {
                    Some((_, m)) if i != 255 => json!({ "id": m.id.to_string() }),
                    _ => json!({ "id": r.string() }),
                }
            }
            "call:request" => json!({ "video": r.bool() }),
            "webrtc:offer" | "webrtc:answer" => {
                json!({ "sdp": format!("v=0\r\n{}\r\nm={}", r.string(), r.string()) })
            }
            "webrtc:ice-candidate" => {
                let mut o = json!({ "candidate": r.string() });
                if r.bool() {
                    o["sdpMid"] = json!(r.string());
                }
                if r.bool() {
                    o["sdpMLineIndex"] = json!(i64::from(r.u16() as i16));
                }
                o
            }
            _ => json!({}),
        }
    }

    fn apply(&mut self, code: u8, r: &mut Reader) {
        let now = self.now;
        match code % op::COUNT {
            op::CREATE => {
                let named = r.bool();
                let name = r.string();
                // The client's address: none (not counted), or one of three.
                let client = match r.u8() % 4 {
                    0 => None,
                    n => Some(ClientKey(u128::from(n))),
                };
                let created =
                    self.core
                        .create_guest_from(named.then_some(name.as_str()), client, now);
                if let Ok(info) = created {
                    if self.guests.len() < MAX_GUESTS {
                        self.guests.push(info.session_id);
                    }
                }
            }
            op::CONNECT => {
                let id = self.guest(r);
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                // The shell asks first, then connects (and the core checks again).
                let _ = self.core.admit(id, now);
                if self.core.connect(id, conn, now).is_ok() {
                    self.conns.push(conn);
                    self.owners.insert(conn, id);
                }
            }
            op::DISCONNECT => {
                let conn = self.conn(r);
                self.disconnect(conn);
            }
            op::EVENT => {
                let conn = self.conn(r);
                let n = r.u8();
                let name = match ClientEvent::NAMES.get(usize::from(n)) {
                    Some(name) => (*name).to_owned(),
                    None => r.string(),
                };
                let payload = match r.u8() % 3 {
                    op::PAYLOAD_NONE => None,
                    op::PAYLOAD_JSON => {
                        let b = r.bytes();
                        Some(serde_json::from_slice(b).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(b).into_owned())
                        }))
                    }
                    _ => Some(self.template(&name, r)),
                };
                if let Ok(event) = ClientEvent::parse(&name, payload.as_ref()) {
                    let _ = self.core.handle_event(conn, event, now);
                }
            }
            op::ADVANCE => {
                let ms = u64::from(r.u16());
                let scale = [1, 100, 10_000][usize::from(r.u8() % 3)];
                self.now += Duration::from_millis(ms * scale);
                self.core.handle_timeout(self.now);
                self.drain();
                self.check_timers();
            }
            op::MEDIA => {
                let call = self.call(r);
                let guest = self.guest(r);
                let event = match r.u8() % 7 {
                    0 => MediaEvent::Answer {
                        call,
                        guest,
                        sdp: r.string(),
                    },
                    1 => MediaEvent::Offer {
                        call,
                        guest,
                        sdp: r.string(),
                    },
                    2 => MediaEvent::Candidate {
                        call,
                        guest,
                        candidate: r.string(),
                        sdp_mid: r.bool().then(|| r.string()),
                        sdp_mline_index: r.bool().then(|| r.u16()),
                    },
                    3 => MediaEvent::OfferRejected {
                        call,
                        guest,
                        message: r.string(),
                    },
                    4 => MediaEvent::Connected { call, guest },
                    5 => MediaEvent::Disconnected { call, guest },
                    _ => MediaEvent::Failed { call, guest },
                };
                self.core.handle_media(event, now);
            }
            op::DELIVERED => {
                let i = r.u8();
                let (room, id) = match pick(&self.deliveries, i) {
                    Some((_, m)) if i != 255 => (m.room_id, m.id),
                    _ => (
                        RoomId::from_raw(u128::from(r.u64())),
                        tandem_signaling::MessageId::from_raw(r.u64()),
                    ),
                };
                self.core.handle_delivered(room, id, now);
            }
            op::UNDELIVERED => {
                let i = r.u8();
                if let Some((to, message)) = pick(&self.deliveries, i) {
                    self.core.handle_undelivered(to, message, now);
                }
            }
            op::REFRESH => {
                let id = self.guest(r);
                let _ = self.core.refresh(id, now);
            }
            op::POST_FILE => {
                let id = self.guest(r);
                let room = match (r.bool(), self.core.chat_of(id)) {
                    (false, Some((room, _))) => room,
                    _ => RoomId::from_raw(u128::from(r.u64())),
                };
                let client_id = r.string();
                let file = FileInfo {
                    file_id: FileId::from_raw(u128::from(r.u64())),
                    name: r.string(),
                    size: r.u64(),
                    mime_type: "audio/ogg",
                    category: Category::Audio,
                    url: r.string(),
                    expires_at: r.string(),
                    duration_ms: r.bool().then(|| r.u64()),
                };
                let _ = self.core.post_file(id, room, client_id, file, now);
            }
            _ => {
                // RUN_TIMERS: what the hub does when the core's timer is due.
                if let Some(at) = self.core.poll_timeout() {
                    self.now = self.now.max(at);
                    self.core.handle_timeout(self.now);
                    self.drain();
                    self.check_timers();
                }
            }
        }
        self.drain();
        self.check_stats();
    }

    fn owner(&self, conn: ConnId) -> SessionId {
        *self.owners.get(&conn).expect("a socket the harness opened")
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.conns.retain(|c| *c != conn);
        self.core.disconnect(conn, self.now);
    }

    /// Carries out the outputs as the shell would.
    fn drain(&mut self) {
        // Closing a socket may produce more outputs (and never closes more than there are).
        for _ in 0..=self.conns.len() + 1 {
            let mut closed = Vec::new();
            while let Some(out) = self.core.poll_output() {
                match out {
                    Output::Emit { event, .. } => {
                        serde_json::to_vec(&event).expect("server events serialize");
                    }
                    Output::Deliver { to, message } => {
                        serde_json::to_vec(&message).expect("messages serialize");
                        remember(&mut self.deliveries, (to, message));
                    }
                    Output::Redeliver { conn, message } => {
                        assert!(self.conns.contains(&conn), "redelivered to a closed socket");
                        let to = self.owner(conn);
                        remember(&mut self.deliveries, (to, message));
                    }
                    Output::Close { conn, .. } => closed.push(conn),
                    Output::Media(MediaCommand::Open { call, .. }) => {
                        remember(&mut self.calls, call)
                    }
                    // Media commands, call and room ends: nothing the core waits for.
                    _ => {}
                }
            }
            if closed.is_empty() {
                return;
            }
            for conn in closed {
                self.disconnect(conn);
            }
        }
    }

    /// After `handle_timeout(now)` nothing is due at or before `now` any more (or the hub
    /// would spin).
    fn check_timers(&self) {
        if let Some(at) = self.core.poll_timeout() {
            assert!(at > self.now, "a timer is still due after handle_timeout");
        }
    }

    fn check_stats(&self) {
        let st = self.core.stats(self.now);
        assert!(st.online_users <= st.total_users);
        assert!(st.active_users <= st.total_users);
        assert!(st.available_users + st.connected_users <= st.total_users);
        let calls = self.core.call_states();
        assert!(2 * (calls.ringing + calls.connecting + calls.connected) <= st.connected_users);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let t0 = Instant::now();
    let mut h = Harness {
        core: Core::new(config(r.u8()), [7; 32], t0, 1_700_000_000_000),
        now: t0,
        guests: Vec::new(),
        conns: Vec::new(),
        owners: HashMap::new(),
        next_conn: 1,
        calls: Vec::new(),
        deliveries: Vec::new(),
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let code = r.u8();
        h.apply(code, &mut r);
    }
});
