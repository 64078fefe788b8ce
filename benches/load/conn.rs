//! One guest's Socket.IO v5 connection over a bare WebSocket (Engine.IO v4), driven by a single
//! task: it reads frames, answers pings and acks, starts matching when told, and sends paced chat
//! messages while it is paired. Everything it measures goes into [`Shared`].
//!
//! Frames handled (text only, namespace `/`):
//! Engine.IO `0{..}` open, `2` ping → `3` pong, `1` close, `6` noop;
//! Socket.IO `40{..}` connected, `44{..}` connect_error, `41` disconnect,
//! `42[<id>]["name",payload]` event (an ack id is answered with `43<id>[]`), `43<id>[..]` ack.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{at, now_us, Shared};

/// What every connection task is doing; set by the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connect and wait.
    Connect,
    /// Guest number `i` emits `match:start` at `start_us + i * step_us`.
    Match { start_us: u64, step_us: u64 },
    /// Paired guests send one message every `interval_us` from `start_us` (plus a random offset)
    /// until `end_us`; messages sent in `[measure_us, end_us)` are measured.
    Chat {
        start_us: u64,
        interval_us: u64,
        measure_us: u64,
        end_us: u64,
    },
    /// Disconnect and finish.
    Stop,
}

/// Where to connect: one node.
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as given (the HTTP `Host`).
    pub authority: String,
    pub ws_url: String,
}

/// Gives up on the WebSocket + Socket.IO handshake after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One in this many received load messages is answered with `chat:message:read`.
const READ_EVERY: u64 = 10;

/// An ack this connection is waiting for, by ack id.
enum Pending {
    Match,
    Chat { sent_us: u64, seq: u64 },
    Read,
}

/// A message this guest sent whose server id is known, waiting for its receipts.
struct Outstanding {
    sent_us: u64,
    /// Waiting for `chat:message:delivered`.
    delivered: bool,
    /// Waiting for `chat:message:read` as well.
    want_read: bool,
}

struct Conn<'a> {
    /// When this guest sends `match:start`: slot `match_slot` of the match phase.
    match_slot: usize,
    /// The node (index into the URLs) this guest was created and connected on.
    node: usize,
    shared: &'a Shared,
    token: String,
    phase: Phase,
    /// Frames to write before waiting again.
    out: Vec<String>,
    next_ack: u64,
    /// Chat messages sent so far; the n-th carries `load n <send µs>`.
    next_seq: u64,
    pending: HashMap<u64, Pending>,
    outstanding: HashMap<String, Outstanding>,
    eio_open: bool,
    connected: bool,
    match_sent: bool,
    paired: bool,
    /// The room of `match:found`.
    room: Option<String>,
    /// Whether the partner is on another node, once the coordinator has published the pairs.
    cross: Option<bool>,
    /// When the next chat message is due (µs since origin), while in the chat phase.
    next_send_us: Option<u64>,
    measure_us: u64,
    end_us: u64,
    done: bool,
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    match_slot: usize,
    node: usize,
    token: String,
    target: Arc<Target>,
    shared: Arc<Shared>,
    mut ctl: watch::Receiver<Phase>,
    hard_deadline_us: u64,
) {
    let started = now_us();
    let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, open(&target)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.error(&format!("ws_connect: {e}"));
            shared.connect_failed.inc();
            return;
        }
        Err(_) => {
            shared.error("ws_connect: timeout");
            shared.connect_failed.inc();
            return;
        }
    };
    let mut c = Conn {
        match_slot,
        node,
        shared: &shared,
        token,
        phase: *ctl.borrow_and_update(),
        out: Vec::with_capacity(4),
        next_ack: 1,
        next_seq: 0,
        pending: HashMap::new(),
        outstanding: HashMap::new(),
        eio_open: false,
        connected: false,
        match_sent: false,
        paired: false,
        room: None,
        cross: None,
        next_send_us: None,
        measure_us: u64::MAX,
        end_us: 0,
        done: false,
    };
    c.enter_phase();
    let connect_deadline = started + CONNECT_TIMEOUT.as_micros() as u64;
    let mut wake_us = c.next_wake(connect_deadline).min(hard_deadline_us);
    let sleep = tokio::time::sleep_until(at(wake_us));
    tokio::pin!(sleep);
    let mut closed_by_peer = false;
    loop {
        let mut fired = false;
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => c.on_text(t.as_str()),
                Some(Ok(Message::Close(_))) | None => {
                    closed_by_peer = true;
                    c.lost("ws_closed_by_server");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    closed_by_peer = true;
                    c.lost(&format!("ws_read: {e}"));
                }
            },
            () = &mut sleep => {
                fired = true;
                let now = now_us();
                if now >= hard_deadline_us {
                    c.shared.error("hard_deadline");
                    c.done = true;
                } else if !c.connected && now >= connect_deadline {
                    c.shared.error("sio_connect: timeout");
                    c.shared.connect_failed.inc();
                    c.done = true;
                } else {
                    c.on_timer(now);
                }
            }
            r = ctl.changed() => {
                c.phase = if r.is_ok() { *ctl.borrow_and_update() } else { Phase::Stop };
                c.enter_phase();
            }
        }
        if !c.out.is_empty() && !closed_by_peer {
            if let Err(e) = write_all(&mut ws, &mut c.out).await {
                closed_by_peer = true;
                c.lost(&format!("ws_write: {e}"));
            }
        }
        c.out.clear();
        if c.done {
            break;
        }
        let w = c.next_wake(connect_deadline).min(hard_deadline_us);
        // A fired sleep stays ready until reset, so reset it even when the deadline is unchanged.
        if fired || w != wake_us {
            wake_us = w;
            sleep.as_mut().reset(at(wake_us));
        }
    }
    if !closed_by_peer {
        close(&mut ws, c.connected).await;
    }
}

async fn open(target: &Target) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url.as_str(), tcp, Some(config))
            .await?;
    Ok(ws)
}

async fn write_all(
    ws: &mut WebSocketStream<TcpStream>,
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    for frame in out.drain(..) {
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await?;
    Ok(())
}

/// Socket.IO disconnect, then a WebSocket close, waiting briefly for the server's close.
async fn close(ws: &mut WebSocketStream<TcpStream>, connected: bool) {
    let bye = async {
        if connected {
            ws.send(Message::text("41")).await?;
        }
        ws.close(None).await?;
        while let Some(frame) = ws.next().await {
            frame?;
        }
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
}

impl Conn<'_> {
    fn lost(&mut self, why: &str) {
        // Closing after the stop order is expected; anything earlier is an error.
        if self.phase != Phase::Stop {
            self.shared.error(why);
            if self.connected {
                self.shared.disconnected.inc();
            } else {
                self.shared.connect_failed.inc();
            }
        }
        self.done = true;
    }

    fn enter_phase(&mut self) {
        match self.phase {
            Phase::Chat {
                start_us,
                interval_us,
                measure_us,
                end_us,
            } => {
                self.measure_us = measure_us;
                self.end_us = end_us;
                let jitter = rand::random_range(0..interval_us.max(1));
                self.next_send_us = Some(start_us + jitter);
            }
            Phase::Stop => {
                self.next_send_us = None;
                self.done = true;
            }
            Phase::Connect | Phase::Match { .. } => {}
        }
    }

    /// The next instant this connection must act on by itself.
    fn next_wake(&self, connect_deadline: u64) -> u64 {
        if !self.connected {
            return connect_deadline;
        }
        match self.phase {
            Phase::Match { start_us, step_us } if !self.match_sent => {
                start_us + self.match_slot as u64 * step_us
            }
            Phase::Chat { .. } if self.paired => match self.next_send_us {
                Some(t) if t < self.end_us => t,
                _ => u64::MAX,
            },
            _ => u64::MAX,
        }
    }

    fn on_timer(&mut self, now: u64) {
        match self.phase {
            Phase::Match { start_us, step_us } => {
                if self.connected
                    && !self.match_sent
                    && now >= start_us + self.match_slot as u64 * step_us
                {
                    self.match_sent = true;
                    let id = self.ack_id(Pending::Match);
                    self.out.push(format!("42{id}[\"match:start\",{{}}]"));
                }
            }
            Phase::Chat {
                interval_us,
                end_us,
                ..
            } => {
                let Some(due) = self.next_send_us else { return };
                if !self.paired || now < due || due >= end_us {
                    return;
                }
                self.send_chat();
                let mut next = due + interval_us;
                // Far behind (the tool is overloaded): drop the missed ticks rather than burst.
                if next + interval_us <= now {
                    let missed = (now - next) / interval_us;
                    self.shared.ticks_skipped.add(missed);
                    next += missed * interval_us;
                }
                self.next_send_us = Some(next);
            }
            Phase::Connect | Phase::Stop => {}
        }
    }

    fn ack_id(&mut self, p: Pending) -> u64 {
        let id = self.next_ack;
        self.next_ack += 1;
        self.pending.insert(id, p);
        id
    }

    /// Sending has stopped for good (the chat phase is over).
    fn after_window(&self) -> bool {
        self.end_us > 0 && now_us() >= self.end_us
    }

    fn measured(&self, sent_us: u64) -> bool {
        sent_us >= self.measure_us && sent_us < self.end_us
    }

    fn send_chat(&mut self) {
        let sent_us = now_us();
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = self.ack_id(Pending::Chat { sent_us, seq });
        // clientId = the ack id, so `chat:message:sent` maps back to the send time too.
        let mut f = String::with_capacity(96);
        let _ = write!(
            f,
            "42{id}[\"chat:message\",{{\"clientId\":\"{id}\",\"type\":\"text\",\"content\":\"load {seq} {sent_us}\"}}]"
        );
        self.out.push(f);
        self.shared.sent_total.inc();
        if self.measured(sent_us) {
            self.shared.sent.inc();
        }
    }

    fn on_text(&mut self, t: &str) {
        let b = t.as_bytes();
        match b.first() {
            Some(b'0') => {
                if !self.eio_open {
                    self.eio_open = true;
                    let mut f = String::with_capacity(self.token.len() + 16);
                    let _ = write!(f, "40{{\"token\":\"{}\"}}", self.token);
                    self.out.push(f);
                }
            }
            Some(b'2') => self.out.push("3".to_owned()),
            Some(b'3') | Some(b'6') => {}
            Some(b'1') => self.lost("eio_close_from_server"),
            Some(b'4') => self.on_sio(&t[1..]),
            _ => self.shared.error("unparsed_frame"),
        }
    }

    fn on_sio(&mut self, p: &str) {
        match p.as_bytes().first() {
            Some(b'0') => {
                if !self.connected {
                    self.connected = true;
                    self.shared.connected.inc();
                    if let Some(c) = self.shared.node_connected.get(self.node) {
                        c.inc();
                    }
                    self.token = String::new();
                }
            }
            Some(b'4') => {
                let why = str_field(p, "message").unwrap_or("?");
                self.shared.error(&format!("connect_error: {why}"));
                self.shared.connect_failed.inc();
                self.done = true;
            }
            Some(b'1') => self.lost("sio_disconnect_from_server"),
            Some(b'2') => {
                let (ack, rest) = split_id(&p[1..]);
                match split_event(rest) {
                    Some((name, payload)) => self.on_event(name, payload, ack),
                    None => self.shared.error("unparsed_event"),
                }
            }
            Some(b'3') => {
                let (ack, rest) = split_id(&p[1..]);
                match ack {
                    Some(id) => self.on_ack(id, rest),
                    None => self.shared.error("unparsed_ack"),
                }
            }
            _ => self.shared.error("unparsed_sio_packet"),
        }
    }

    fn on_event(&mut self, name: &str, payload: &str, ack: Option<u64>) {
        if let Some(id) = ack {
            self.out.push(format!("43{id}[]"));
        }
        match name {
            "chat:message" => self.on_chat_message(payload),
            "chat:message:sent" => {
                let client = str_field(payload, "clientId").and_then(|s| s.parse::<u64>().ok());
                if let (Some(client), Some(id)) = (client, str_field(payload, "id")) {
                    if let Some(&Pending::Chat { sent_us, seq }) = self.pending.get(&client) {
                        self.track(id, sent_us, seq);
                    }
                }
            }
            "chat:message:delivered" => {
                let Some(id) = str_field(payload, "id") else {
                    return self.shared.error("delivered_without_id");
                };
                match self.outstanding.get_mut(id) {
                    Some(o) if o.delivered => {
                        o.delivered = false;
                        let (sent_us, keep) = (o.sent_us, o.want_read);
                        if !keep {
                            self.outstanding.remove(id);
                        }
                        if self.measured(sent_us) {
                            let us = now_us().saturating_sub(sent_us);
                            self.shared.delivered.inc();
                            self.shared.receipt.record(us);
                            match self.cross() {
                                Some(false) => self.shared.receipt_same.record(us),
                                Some(true) => self.shared.receipt_cross.record(us),
                                None => {}
                            }
                        }
                    }
                    Some(_) => self.shared.error("delivered_twice"),
                    None => self.shared.error("delivered_unknown_id"),
                }
            }
            "chat:message:read" => {
                let Some(id) = str_field(payload, "id") else {
                    return self.shared.error("read_without_id");
                };
                match self.outstanding.get_mut(id) {
                    Some(o) if o.want_read => {
                        o.want_read = false;
                        let sent_us = o.sent_us;
                        if !o.delivered {
                            self.outstanding.remove(id);
                        }
                        if self.measured(sent_us) {
                            self.shared.read_receipts.inc();
                            self.shared
                                .read_latency
                                .record(now_us().saturating_sub(sent_us));
                        }
                    }
                    _ => self.shared.error("read_unknown_id"),
                }
            }
            "match:found" => {
                if !self.paired {
                    self.paired = true;
                    self.shared.paired.inc();
                    match str_field(payload, "roomId") {
                        Some(room) => {
                            self.shared.joined(room, self.node);
                            self.room = Some(room.to_owned());
                        }
                        None => self.shared.error("match_found_without_room"),
                    }
                } else {
                    self.shared.error("match_found_while_paired");
                }
            }
            "chat:ended" => {
                let reason = str_field(payload, "reason").unwrap_or("?");
                if self.after_window() {
                    self.shared.teardown_events.inc();
                } else {
                    self.shared.error(&format!("chat_ended: {reason}"));
                }
                if self.paired {
                    self.paired = false;
                    self.shared.unpaired.inc();
                }
            }
            "error" => {
                let code = str_field(payload, "code").unwrap_or("?");
                let event = str_field(payload, "event").unwrap_or("?");
                self.shared.error(&format!("error_event: {event} {code}"));
            }
            "partner:presence" => {
                let status = str_field(payload, "status").unwrap_or("?");
                if self.after_window() {
                    // Partners closing first at the end is the expected teardown.
                    self.shared.teardown_events.inc();
                } else {
                    self.shared.error(&format!("partner_presence: {status}"));
                }
            }
            "server:shutdown" => self.shared.error("server_shutdown"),
            "connection:established"
            | "realtime:stats"
            | "match:searching"
            | "typing:start"
            | "typing:stop" => {}
            other => self.shared.error(&format!("unexpected_event: {other}")),
        }
    }

    fn on_chat_message(&mut self, payload: &str) {
        if str_field(payload, "from") != Some("partner") {
            self.shared.system_messages.inc();
            return;
        }
        let content = str_field(payload, "content").unwrap_or("");
        let mut words = content.strip_prefix("load ").unwrap_or("").split(' ');
        let seq = words.next().and_then(|w| w.parse::<u64>().ok());
        let sent_us = words.next().and_then(|w| w.parse::<u64>().ok());
        let (Some(seq), Some(sent_us)) = (seq, sent_us) else {
            return self.shared.error("foreign_chat_message");
        };
        self.shared.received_total.inc();
        if self.measured(sent_us) {
            let us = now_us().saturating_sub(sent_us);
            self.shared.received.inc();
            self.shared.delivery.record(us);
            match self.cross() {
                Some(false) => self.shared.delivery_same.record(us),
                Some(true) => self.shared.delivery_cross.record(us),
                None => {}
            }
        }
        if wants_read(seq) {
            if let Some(id) = str_field(payload, "id") {
                let ack = self.ack_id(Pending::Read);
                self.out.push(format!(
                    "42{ack}[\"chat:message:read\",{{\"id\":\"{id}\"}}]"
                ));
                self.shared.reads_sent.inc();
            }
        }
    }

    /// Whether this guest's partner is on another node (`None` until the coordinator has
    /// published which rooms span two nodes, or for a room only one of the pair reported).
    fn cross(&mut self) -> Option<bool> {
        if self.cross.is_none() {
            let (Some(room), Some(pairs)) = (&self.room, self.shared.pairs.get()) else {
                return None;
            };
            self.cross = pairs.get(room).copied();
        }
        self.cross
    }

    /// Starts waiting for the receipts of a sent message (idempotent).
    fn track(&mut self, id: &str, sent_us: u64, seq: u64) {
        if !self.outstanding.contains_key(id) {
            let o = Outstanding {
                sent_us,
                delivered: true,
                want_read: wants_read(seq),
            };
            self.outstanding.insert(id.to_owned(), o);
        }
    }

    fn on_ack(&mut self, id: u64, payload: &str) {
        let Some(p) = self.pending.remove(&id) else {
            return self.shared.error("ack_unknown_id");
        };
        let ok = payload.contains("\"ok\":true");
        if !ok {
            let code = str_field(payload, "code").unwrap_or("?");
            let what = match p {
                Pending::Match => "match:start",
                Pending::Chat { .. } => "chat:message",
                Pending::Read => "chat:message:read",
            };
            self.shared.error(&format!("refused: {what} {code}"));
        }
        match p {
            Pending::Match => {}
            Pending::Chat { sent_us, seq } => {
                let measured = self.measured(sent_us);
                if ok {
                    if let Some(server_id) = str_field(payload, "id") {
                        self.track(server_id, sent_us, seq);
                    }
                    if measured {
                        self.shared.acked_ok.inc();
                    }
                } else if measured {
                    self.shared.refused.inc();
                }
            }
            Pending::Read => {
                if ok {
                    self.shared.reads_acked.inc();
                }
            }
        }
    }
}

/// Whether the receiver answers message number `seq` with `chat:message:read`.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; the workspace allows 1.85.
fn wants_read(seq: u64) -> bool {
    seq % READ_EVERY == 0
}

/// Splits a leading decimal ack id off a packet body.
fn split_id(s: &str) -> (Option<u64>, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return (None, s);
    }
    (s[..n].parse().ok(), &s[n..])
}

/// `["name",payload]` or `["name"]` → (name, payload or "").
fn split_event(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix("[\"")?.strip_suffix(']')?;
    let end = s.find('"')?;
    let name = &s[..end];
    let rest = &s[end + 1..];
    Some((name, rest.strip_prefix(',').unwrap_or("")))
}

/// The value of the first `"key":"value"` in compact JSON (values here carry no escapes).
fn str_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(pos) = json[from..].find(key) {
        let start = from + pos;
        let after = start + key.len();
        from = after;
        if start == 0 || json.as_bytes()[start - 1] != b'"' {
            continue;
        }
        let Some(v) = json[after..].strip_prefix("\":\"") else {
            continue;
        };
        let mut end = 0;
        let bytes = v.as_bytes();
        while end < bytes.len() {
            match bytes[end] {
                b'\\' => end += 2,
                b'"' => return Some(&v[..end.min(v.len())]),
                _ => end += 1,
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets() {
        assert_eq!(split_id("12[\"x\"]"), (Some(12), "[\"x\"]"));
        assert_eq!(split_id("[1]"), (None, "[1]"));
        assert_eq!(
            split_event("[\"chat:message\",{\"a\":1}]"),
            Some(("chat:message", "{\"a\":1}"))
        );
        assert_eq!(split_event("[\"x\"]"), Some(("x", "")));
        let p = r#"{"clientId":"7","id":"ab12","roomId":"ff","content":"load 7 99"}"#;
        assert_eq!(str_field(p, "id"), Some("ab12"));
        assert_eq!(str_field(p, "clientId"), Some("7"));
        assert_eq!(str_field(p, "content"), Some("load 7 99"));
        assert_eq!(str_field(p, "missing"), None);
        assert_eq!(
            str_field(r#"{"message":"say \"hi\""}"#, "message"),
            Some(r#"say \"hi\""#)
        );
    }
}
