//! Several cores as one cluster, deterministically: a simulated bus (ordered queues of encoded
//! `ClusterMsg` bytes between cores, which can be taken down or partitioned), a simulated
//! global matchmaker (in memory, the single-node rules that matter here: oldest first, never a
//! pair cooling down or blocked, away guests not paired), and time injected by hand.
//!
//! Each guest's client is modelled by what its sockets receive (`seen`), and acks every partner
//! message at once (as the browser does). Scenarios compare a cross-node chat with the same
//! script on one core alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_signaling::cluster::{Kept, MatchAnswer, MatchRequest, RecordHome};
use tandem_signaling::*;

// Only the shared config and clock are used here.
#[allow(dead_code)]
mod common;
use common::UNIX0;

fn cfg(node: Option<NodeId>) -> CoreConfig {
    CoreConfig {
        node,
        ..common::loose()
    }
}

#[derive(Clone, Copy, Debug)]
struct G {
    id: SessionId,
    conn: ConnId,
    node: usize,
}

struct Waiting {
    sid: SessionId,
    node: usize,
    username: String,
    present: bool,
}

#[derive(Default)]
struct Matchmaker {
    queue: Vec<Waiting>,
    /// (a, b) with a < b → blocked for good (a report) or cooling down.
    ended: HashMap<(SessionId, SessionId), bool>,
    requests: Vec<MatchRequest>,
}

fn pair_key(a: SessionId, b: SessionId) -> (SessionId, SessionId) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Matchmaker {
    /// The oldest present guest `sid` may be paired with, taken out of the queue.
    fn take_partner(&mut self, sid: SessionId) -> Option<Waiting> {
        let i = self.queue.iter().position(|w| {
            w.sid != sid && w.present && !self.ended.contains_key(&pair_key(sid, w.sid))
        })?;
        Some(self.queue.remove(i))
    }
}

/// A session record: the chat's home, its room and the partner (id, name).
type Record = (NodeId, RoomId, Option<(SessionId, String)>);

struct Sim {
    ids: Vec<NodeId>,
    cores: Vec<Core>,
    now: Instant,
    /// (from, to, encoded message), in send order.
    bus: VecDeque<(usize, usize, Vec<u8>)>,
    /// While down every send is refused at once (as the shell's bus does without Redis).
    down: bool,
    /// Messages between these (from, to) are accepted and silently lost.
    cut: HashSet<(usize, usize)>,
    mm: Matchmaker,
    seen: HashMap<SessionId, Vec<(String, Value)>>,
    acks: HashMap<(usize, ConnId, u64), Result<Value, SignalError>>,
    owners: HashMap<(usize, ConnId), SessionId>,
    next_conn: u64,
    next_req: u64,
    /// The session records (`MatchRequest::Home`): guest → its chat's home, room, partner.
    mirror: HashMap<SessionId, Record>,
    /// Room claims (`MatchRequest::Claim`): the first node wins.
    claims: HashMap<RoomId, NodeId>,
    /// Killed nodes: their outputs and bus messages go nowhere.
    dead: HashSet<usize>,
    /// `Output::RoomClosed` by node.
    closed: Vec<(usize, RoomId)>,
    /// The session records' calls (`MatchRequest::CallRecord`).
    call_records: HashMap<SessionId, CallId>,
    /// Each node's media commands, in order.
    media: Vec<(usize, MediaCommand)>,
    /// Each node's `Output::CallEnded` (what it handed out for the call is revoked there).
    call_ends: Vec<(usize, CallId)>,
    /// Each `call:*` event as a node writes it to a guest's sockets, with what that node's
    /// `call_of` says of the guest at that moment.
    call_events: Vec<(usize, SessionId, String, Option<CallId>)>,
    /// The records written again after Redis lost its data (`MatchRequest::Restore`).
    restored: Vec<SessionId>,
    /// The chats' journals in Redis (`Output::Journal`), by room and message id.
    journal: HashMap<RoomId, HashMap<MessageId, Kept>>,
    /// Journal writes are not answered until [`Sim::answer_journal`] (a slow Redis).
    hold_journal: bool,
    /// Journal tickets not answered yet, by node.
    tickets: Vec<(usize, u64)>,
}

impl Sim {
    /// `n` clustered cores, or (with `n == 0`) one core alone.
    fn new(n: usize) -> Self {
        let t0 = Instant::now();
        let (ids, cores): (Vec<_>, Vec<_>) = if n == 0 {
            let id = NodeId::from_raw(0);
            vec![(id, Core::new(cfg(None), [7; 32], t0, UNIX0))]
                .into_iter()
                .unzip()
        } else {
            (0..n)
                .map(|i| {
                    let id = NodeId::from_raw(0x1000 + i as u128);
                    let seed = [i as u8 + 1; 32];
                    (id, Core::new(cfg(Some(id)), seed, t0, UNIX0))
                })
                .unzip()
        };
        Sim {
            ids,
            cores,
            now: t0,
            bus: VecDeque::new(),
            down: false,
            cut: HashSet::new(),
            mm: Matchmaker::default(),
            seen: HashMap::new(),
            acks: HashMap::new(),
            owners: HashMap::new(),
            next_conn: 1,
            next_req: 1,
            mirror: HashMap::new(),
            claims: HashMap::new(),
            dead: HashSet::new(),
            closed: Vec::new(),
            call_records: HashMap::new(),
            media: Vec::new(),
            call_ends: Vec::new(),
            call_events: Vec::new(),
            restored: Vec::new(),
            journal: HashMap::new(),
            hold_journal: false,
            tickets: Vec::new(),
        }
    }

    /// The journal writes held so far are done: what they held goes out.
    fn answer_journal(&mut self) {
        let now = self.now;
        for (node, ticket) in std::mem::take(&mut self.tickets) {
            self.cores[node].handle_journaled(ticket, now);
        }
        self.pump();
    }

    /// Redis restarts empty: the records, the queue, the pair ends and the claims are gone,
    /// then every live node learns it and writes what it holds again.
    fn wipe_redis(&mut self) {
        self.mirror.clear();
        self.journal.clear();
        self.call_records.clear();
        self.claims.clear();
        self.mm.queue.clear();
        self.mm.ended.clear();
        let now = self.now;
        for i in 0..self.cores.len() {
            if !self.dead.contains(&i) {
                self.cores[i].handle_records_lost(now);
            }
        }
        self.pump();
    }

    /// The node whose core holds `g`'s chat (its home).
    fn home(&self, g: G) -> usize {
        (0..self.cores.len())
            .find(|&i| self.cores[i].chat_of(g.id).is_some())
            .expect("in a chat")
    }

    /// A report of `node`'s media server.
    fn media_event(&mut self, node: usize, event: MediaEvent) {
        self.cores[node].handle_media(event, self.now);
        self.pump();
    }

    /// The last media command of `node`.
    fn last_media(&self, node: usize) -> Option<&MediaCommand> {
        self.media
            .iter()
            .rev()
            .find(|(n, _)| *n == node)
            .map(|(_, c)| c)
    }

    /// The calls `node` revoked, in order.
    fn ended_at(&self, node: usize) -> Vec<CallId> {
        self.call_ends
            .iter()
            .filter(|(n, _)| *n == node)
            .map(|(_, c)| *c)
            .collect()
    }

    fn note_call_event(&mut self, node: usize, to: Target, name: &str) {
        if name.starts_with("call:") {
            for id in self.targets(node, to) {
                let call = self.cores[node].call_of(id);
                self.call_events.push((node, id, name.to_owned(), call));
            }
        }
    }

    fn node_index(&self, id: NodeId) -> usize {
        self.ids.iter().position(|n| *n == id).expect("known node")
    }

    fn guest(&mut self, node: usize, name: &str) -> G {
        let info = self.cores[node].create_guest(Some(name), self.now).unwrap();
        let g = G {
            id: info.session_id,
            conn: ConnId(0),
            node,
        };
        self.connect(g, node)
    }

    /// A new socket of `g` on `node` (which adopts the guest first, as the shell does with the
    /// token's name and the session mirror).
    fn connect(&mut self, g: G, node: usize) -> G {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.owners.insert((node, conn), g.id);
        let home = Some(
            self.mirror
                .get(&g.id)
                .cloned()
                .map(|(home, room, partner)| RecordHome {
                    node: home,
                    room,
                    partner,
                    call: self.call_records.get(&g.id).copied(),
                    alive: !self.dead.contains(&self.node_index(home)),
                }),
        );
        self.cores[node]
            .adopt(g.id, "Token", home, None, self.now)
            .unwrap();
        self.cores[node].connect(g.id, conn, self.now).unwrap();
        self.pump();
        G { conn, node, ..g }
    }

    /// Node `i` dies (`kill -9`): nothing more from or to it; the others see it leave.
    fn kill(&mut self, i: usize) {
        self.dead.insert(i);
        let (id, now) = (self.ids[i], self.now);
        for j in 0..self.cores.len() {
            if !self.dead.contains(&j) {
                self.cores[j].handle_node_left(id, now);
            }
        }
        self.pump();
    }

    fn disconnect(&mut self, g: G) {
        self.cores[g.node].disconnect(g.conn, self.now);
        self.pump();
    }

    /// A client event of `g` and its ack (`Err(ServiceUnavailable)` stands in for "no ack
    /// yet" too: none came).
    fn ev(&mut self, g: G, name: &str, payload: Value) -> Result<Value, SignalError> {
        let req = self.next_req;
        self.next_req += 1;
        let payload = (!payload.is_null()).then_some(payload);
        let now = self.now;
        let r = self.cores[g.node].handle_client_event(g.conn, req, name, payload.as_ref(), now);
        self.pump();
        match r {
            Ok(Some(ack)) => Ok(serde_json::to_value(ack).unwrap()),
            Err(e) => Err(e),
            Ok(None) => self
                .acks
                .remove(&(g.node, g.conn, req))
                .unwrap_or(Err(SignalError::ServiceUnavailable)),
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .cores
                .iter()
                .filter_map(Core::poll_timeout)
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            for i in 0..self.cores.len() {
                self.cores[i].handle_timeout(self.now);
            }
            self.pump();
        }
        self.now = end;
        for i in 0..self.cores.len() {
            self.cores[i].handle_timeout(self.now);
        }
        self.pump();
    }

    fn see(&mut self, id: SessionId, name: &str, payload: Value) {
        self.seen
            .entry(id)
            .or_default()
            .push((name.to_owned(), payload));
    }

    /// Carries out every output and bus message until all is quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.cores.len() {
                while let Some(out) = self.cores[i].poll_output() {
                    busy = true;
                    if !self.dead.contains(&i) {
                        self.carry(i, out);
                    }
                }
            }
            if let Some((from, to, bytes)) = self.bus.pop_front() {
                busy = true;
                if self.dead.contains(&to) {
                    continue;
                }
                let msg = ClusterMsg::decode(&bytes).expect("a message a core encoded");
                let from = self.ids[from];
                self.cores[to].handle_bus(from, msg, self.now);
            }
            if !busy {
                break;
            }
        }
    }

    fn carry(&mut self, node: usize, out: Output) {
        let now = self.now;
        match out {
            Output::Emit { to, event } => {
                let name = event.name();
                self.note_call_event(node, to, name);
                let payload = serde_json::to_value(&event).unwrap();
                for id in self.targets(node, to) {
                    self.see(id, name, payload.clone());
                }
            }
            Output::Deliver { to, message } => {
                self.see(to, "chat:message", serde_json::to_value(&message).unwrap());
                self.cores[node].handle_delivered(message.room_id, message.id, now);
            }
            Output::Redeliver { conn, message } => {
                if let Some(&id) = self.owners.get(&(node, conn)) {
                    self.see(id, "chat:message", serde_json::to_value(&message).unwrap());
                    self.cores[node].handle_delivered(message.room_id, message.id, now);
                }
            }
            Output::Relay {
                to,
                name,
                payload,
                ack,
            } => {
                self.note_call_event(node, to, &name);
                for id in self.targets(node, to) {
                    self.see(id, &name, payload.clone());
                }
                if let Some((room, msg)) = ack {
                    self.cores[node].handle_delivered(room, msg, now);
                }
            }
            Output::Bus { to, msg } => {
                let to = self.node_index(to);
                if self.down {
                    self.cores[node].handle_bus_failed(self.ids[to], &msg, now);
                } else if !self.cut.contains(&(node, to)) {
                    self.bus.push_back((node, to, msg.encode()));
                }
            }
            Output::Ack { conn, req, result } => {
                self.acks.insert((node, conn, req), result);
            }
            Output::Match(req) => self.matchmake(node, req),
            Output::RoomClosed(room) => self.closed.push((node, room)),
            Output::Media(cmd) => self.media.push((node, cmd)),
            Output::CallEnded(call) => self.call_ends.push((node, call)),
            Output::Journal { room, op, ticket } => {
                match op {
                    JournalOp::Keep(kept) => {
                        let id = kept.message.id;
                        self.journal.entry(room).or_default().insert(id, kept);
                    }
                    JournalOp::Drop(id) => {
                        if let Some(j) = self.journal.get_mut(&room) {
                            j.remove(&id);
                        }
                    }
                    JournalOp::Clear => {
                        self.journal.remove(&room);
                    }
                }
                if let Some(ticket) = ticket {
                    if self.hold_journal {
                        self.tickets.push((node, ticket));
                    } else {
                        self.cores[node].handle_journaled(ticket, now);
                    }
                }
            }
            _ => {}
        }
    }

    fn targets(&self, node: usize, to: Target) -> Vec<SessionId> {
        match to {
            Target::Guest(id) => vec![id],
            Target::Conn(c) => self.owners.get(&(node, c)).copied().into_iter().collect(),
            Target::All => vec![],
        }
    }

    fn answer(&mut self, node: usize, answer: MatchAnswer) {
        let now = self.now;
        self.cores[node].handle_match(answer, now);
    }

    fn pair(&mut self, seeker: SessionId, seeker_node: usize) -> bool {
        let Some(w) = self.mm.take_partner(seeker) else {
            return false;
        };
        let answer = MatchAnswer::Paired {
            seeker,
            partner: w.sid,
            partner_name: w.username,
            partner_node: self.ids[w.node],
        };
        self.answer(seeker_node, answer);
        true
    }

    fn matchmake(&mut self, node: usize, req: MatchRequest) {
        self.mm.requests.push(req.clone());
        match req {
            MatchRequest::Enqueue {
                sid,
                username,
                present,
                ..
            } => {
                if !(present && self.pair(sid, node)) {
                    self.mm.queue.push(Waiting {
                        sid,
                        node,
                        username,
                        present,
                    });
                }
            }
            MatchRequest::Cancel { sid } => self.mm.queue.retain(|w| w.sid != sid),
            MatchRequest::Away { sid, away } => {
                let Some(i) = self.mm.queue.iter().position(|w| w.sid == sid) else {
                    return;
                };
                self.mm.queue[i].present = !away;
                if !away {
                    let w = self.mm.queue.remove(i);
                    if !self.pair(sid, w.node) {
                        self.mm.queue.insert(i, w);
                    }
                }
            }
            MatchRequest::Home {
                sid, room, partner, ..
            } => match room {
                Some(room) => {
                    self.mirror.insert(sid, (self.ids[node], room, partner));
                }
                None => {
                    self.mirror.remove(&sid);
                }
            },
            MatchRequest::Reap { .. } => {}
            MatchRequest::CallRecord { sid, call } => match call {
                Some(call) => {
                    self.call_records.insert(sid, call);
                }
                None => {
                    self.call_records.remove(&sid);
                }
            },
            MatchRequest::Claim { room } => {
                let winner = *self.claims.entry(room).or_insert(self.ids[node]);
                let now = self.now;
                // The winner reads the room's journal.
                let kept = if winner == self.ids[node] {
                    let j = self.journal.get(&room);
                    j.into_iter().flat_map(|j| j.values().cloned()).collect()
                } else {
                    Vec::new()
                };
                self.cores[node].handle_claim(room, Some(winner), kept, now);
            }
            // The sim keeps no shared session records: a session ends where it expires.
            MatchRequest::Expiring { sid } => {
                let now = self.now;
                self.cores[node].handle_session_ttl(sid, None, now);
            }
            MatchRequest::RecordEnd { a, b, blocked, .. } => {
                self.mm.ended.insert(pair_key(a, b), blocked);
            }
            MatchRequest::Restore {
                sid, chat, call, ..
            } => {
                self.restored.push(sid);
                if let Some(record) = chat {
                    self.mirror.insert(sid, record);
                }
                match call {
                    Some(Some(call)) => {
                        self.call_records.insert(sid, call);
                    }
                    Some(None) => {
                        self.call_records.remove(&sid);
                    }
                    None => {}
                }
            }
            MatchRequest::CooldownOver { a, b } => {
                if self.mm.ended.get(&pair_key(a, b)) == Some(&false) {
                    self.mm.ended.remove(&pair_key(a, b));
                }
                for sid in [a, b] {
                    if let Some(i) = self.mm.queue.iter().position(|w| w.sid == sid && w.present) {
                        let w = self.mm.queue.remove(i);
                        if !self.pair(sid, w.node) {
                            self.mm.queue.insert(i, w);
                        }
                    }
                }
            }
        }
    }

    /// What `id` has seen, without the statistics (per node) and with ids replaced by their
    /// order of first appearance (each run draws its own).
    fn transcript(&self, id: SessionId) -> Vec<(String, Value)> {
        let mut names = HashMap::new();
        self.seen
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|(name, _)| name != "realtime:stats")
            .map(|(name, p)| (name.clone(), normalize(p, &mut names)))
            .collect()
    }

    fn names(&self, id: SessionId) -> Vec<String> {
        self.transcript(id).into_iter().map(|(n, _)| n).collect()
    }

    /// `g` posts `content` (client id `key`); its ack.
    fn say(&mut self, g: G, key: &str, content: &str) -> Value {
        let payload = json!({"clientId": key, "content": content});
        self.ev(g, "chat:message", payload).expect("posted")
    }

    /// `id` got "one" and "two", with these ids, in order, once each.
    fn assert_got_one_two(&self, id: SessionId, ids: &[Value; 2]) {
        assert_eq!(&self.seen_field(id, "chat:message", "id"), ids);
        assert_eq!(
            self.seen_field(id, "chat:message", "content"),
            [json!("one"), json!("two")]
        );
    }

    /// Field `field` of every `event` `id` saw, in order.
    fn seen_field(&self, id: SessionId, event: &str, field: &str) -> Vec<Value> {
        self.seen[&id]
            .iter()
            .filter(|(n, _)| n == event)
            .map(|(_, m)| m[field].clone())
            .collect()
    }
}

fn normalize(v: &Value, names: &mut HashMap<String, usize>) -> Value {
    match v {
        Value::String(s)
            if (s.len() == 16 || s.len() == 32) && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            let n = names.len();
            json!(format!("id#{}", names.entry(s.clone()).or_insert(n)))
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| normalize(v, names)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), normalize(v, names)))
                .collect(),
        ),
        v => v.clone(),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The chat script: match, messages both ways with receipts, typing that expires on the server
/// and typing a message stops. Run on `a`'s and `b`'s nodes as given.
fn chat_script(sim: &mut Sim, na: usize, nb: usize) -> (G, G) {
    let a = sim.guest(na, "Ann");
    let b = sim.guest(nb, "Bob");
    assert_eq!(
        sim.ev(a, "match:start", json!({})),
        Ok(json!({"ok": true, "state": "searching"}))
    );
    sim.advance(secs(1));
    sim.ev(b, "match:start", json!({})).unwrap();
    sim.advance(secs(1));
    let sent = sim
        .ev(
            a,
            "chat:message",
            json!({"clientId": "c1", "content": "hi"}),
        )
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    sim.advance(secs(1));
    assert_eq!(
        sim.ev(b, "chat:message:read", json!({"id": id})),
        Ok(json!({"ok": true}))
    );
    sim.ev(b, "typing:start", Value::Null).unwrap();
    sim.advance(secs(6)); // the server stops it after 5 s
    sim.ev(b, "typing:start", Value::Null).unwrap();
    sim.advance(secs(1));
    let sent = sim
        .ev(
            b,
            "chat:message",
            json!({"clientId": "c2", "content": "yo"}),
        )
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    sim.ev(a, "chat:message:read", json!({"id": id})).unwrap();
    sim.advance(secs(1));
    (a, b)
}

#[test]
fn guests_on_two_nodes_chat_as_on_one() {
    let mut one = Sim::new(0);
    let (a1, b1) = chat_script(&mut one, 0, 0);
    let mut two = Sim::new(2);
    let (a2, b2) = chat_script(&mut two, 0, 1);
    // b's node ran the pairing: it is the room's home, a is remote there.
    assert!(two.cores[1].chat_of(a2.id).is_some());
    assert!(two.cores[0].chat_of(a2.id).is_none());
    for (g1, g2) in [(a1, a2), (b1, b2)] {
        assert_eq!(one.transcript(g1.id), two.transcript(g2.id));
    }
    assert_eq!(
        two.names(a2.id),
        [
            "connection:established",
            "match:searching",
            "match:found",
            "chat:message:sent",
            "chat:message:delivered",
            "chat:message:read",
            "typing:start",
            "typing:stop",
            "typing:start",
            "typing:stop",
            "chat:message",
        ]
    );
}

#[test]
fn a_guest_moves_to_another_node_within_the_grace_period() {
    let mut sim = Sim::new(2);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    sim.disconnect(a);
    assert_eq!(sim.names(b.id), ["partner:presence"]);
    assert_eq!(sim.seen[&b.id][0].1["status"], "away");
    sim.advance(secs(3));
    let sent = sim
        .ev(
            b,
            "chat:message",
            json!({"clientId": "c3", "content": "still there?"}),
        )
        .unwrap();
    sim.advance(secs(10));
    // Back, through the load balancer, on the room's home node.
    let a = sim.connect(a, 1);
    let seen = &sim.seen[&a.id];
    assert_eq!(seen[0].0, "connection:established");
    assert_eq!(seen[0].1["state"], "in_chat");
    assert_eq!(seen[0].1["room"]["partner"]["username"], "Bob");
    let msg = seen.iter().find(|(n, _)| n == "chat:message").unwrap();
    assert_eq!(msg.1["id"], sent["id"]);
    assert_eq!(
        sim.names(b.id),
        [
            "partner:presence",
            "chat:message:sent",
            "partner:presence",
            "chat:message:delivered"
        ]
    );
    assert_eq!(sim.seen[&b.id][2].1["status"], "online");
    // The grace period passes: the chat goes on.
    sim.advance(secs(60));
    assert!(sim.cores[1].chat_of(a.id).is_some());
    sim.ev(
        a,
        "chat:message",
        json!({"clientId": "c4", "content": "here"}),
    )
    .unwrap();
    assert_eq!(sim.seen[&b.id].last().unwrap().0, "chat:message");
}

#[test]
fn a_guest_moves_to_a_third_node_that_never_held_it() {
    let mut sim = Sim::new(3);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.disconnect(a);
    let sent = sim
        .ev(b, "chat:message", json!({"clientId": "c3", "content": "?"}))
        .unwrap();
    sim.seen.clear();
    // Node 2 knows the guest only from its token and the mirror.
    let a = sim.connect(a, 2);
    let seen = &sim.seen[&a.id];
    assert_eq!(seen[0].0, "connection:established");
    assert_eq!(seen[0].1["state"], "in_chat");
    assert_eq!(seen[0].1["room"]["partner"]["username"], "Bob");
    let msg = seen.iter().find(|(n, _)| n == "chat:message").unwrap();
    assert_eq!(msg.1["id"], sent["id"]);
    assert_eq!(
        sim.names(b.id),
        ["partner:presence", "chat:message:delivered"]
    );
    // Its events go to the home from the third node.
    sim.ev(
        a,
        "chat:message",
        json!({"clientId": "c4", "content": "back"}),
    )
    .unwrap();
    assert_eq!(sim.seen[&b.id].last().unwrap().0, "chat:message");
    // The chat ends: the mirror forgets it, and so does node 2 (a new search starts there).
    sim.ev(b, "chat:leave", Value::Null).unwrap();
    assert!(!sim.mirror.contains_key(&a.id));
    assert_eq!(
        sim.ev(a, "match:start", json!({})),
        Ok(json!({"ok": true, "state": "searching"}))
    );
    // The old node still believes the chat lives on: a socket there reads the mirror and is
    // released (no chat, no forwarding to a home that forgot it).
    sim.disconnect(a);
    let back = sim.connect(a, 0);
    let established = sim.seen[&a.id]
        .iter()
        .rev()
        .find(|(n, _)| n == "connection:established")
        .unwrap();
    assert_ne!(established.1["state"], "in_chat");
    assert!(sim.cores[0].chat_of(back.id).is_none());
}

#[test]
fn a_killed_home_is_taken_over_and_the_chat_goes_on_through_another_node() {
    let mut sim = Sim::new(3);
    // Ann on node 0, Bob on node 1; Bob's match formed the pair: node 1 is the home.
    let (a, b) = chat_script(&mut sim, 0, 1);
    assert!(sim.cores[1].chat_of(b.id).is_some());
    sim.seen.clear();
    sim.kill(1);
    // Node 0 takes the room over: Ann sees Bob away.
    assert_eq!(
        sim.names(a.id),
        ["connection:established", "partner:presence"]
    );
    assert_eq!(sim.seen[&a.id][1].1["status"], "away");
    assert!(sim.cores[0].chat_of(a.id).is_some());
    // Ann writes meanwhile: kept for Bob.
    let kept = sim
        .ev(
            a,
            "chat:message",
            json!({"clientId": "k", "content": "still there?"}),
        )
        .unwrap();
    sim.advance(secs(5));
    // Bob's client reconnects through the load balancer to node 2: the chat goes on.
    let b = sim.connect(b, 2);
    let seen = &sim.seen[&b.id];
    assert_eq!(seen[0].0, "connection:established");
    assert_eq!(seen[0].1["state"], "in_chat");
    assert_eq!(seen[0].1["room"]["partner"]["username"], "Ann");
    let msg = seen.iter().find(|(n, _)| n == "chat:message").unwrap();
    assert_eq!(msg.1["id"], kept["id"]);
    assert_eq!(
        sim.names(a.id),
        [
            "connection:established",
            "partner:presence",
            "chat:message:sent",
            "partner:presence",
            "chat:message:delivered"
        ]
    );
    // Ann's socket heard where it stands at the takeover: in the chat, now homed here.
    assert_eq!(sim.seen[&a.id][0].1["state"], "in_chat");
    assert_eq!(sim.seen[&a.id][3].1["status"], "online");
    sim.ev(
        b,
        "chat:message",
        json!({"clientId": "r", "content": "back"}),
    )
    .unwrap();
    assert_eq!(sim.seen[&a.id].last().unwrap().0, "chat:message");
    // The grace period passes: still chatting.
    sim.advance(secs(60));
    assert!(sim.cores[0].chat_of(a.id).is_some());
}

#[test]
fn what_the_survivor_sent_and_the_dead_home_had_not_delivered_is_not_lost() {
    let mut sim = Sim::new(3);
    let (a, b) = chat_script(&mut sim, 0, 1);
    // Bob (at the home, node 1) is away; Ann (node 0) writes twice: acknowledged as sent by the
    // home, kept there for Bob.
    sim.disconnect(b);
    let m1 = sim.say(a, "k1", "one");
    let m2 = sim.say(a, "k2", "two");
    sim.kill(1);
    sim.seen.clear();
    // Bob comes back through node 2: node 0 took the room over and kept Ann's two messages.
    let b = sim.connect(b, 2);
    let ids = [m1["id"].clone(), m2["id"].clone()];
    sim.assert_got_one_two(b.id, &ids);
    // Bob's acks reach the new home: Ann gets both delivered receipts.
    assert_eq!(sim.seen_field(a.id, "chat:message:delivered", "id"), ids);
}

#[test]
fn both_guests_on_a_killed_home_lose_nothing_acknowledged() {
    let mut sim = Sim::new(3);
    // Ann and Bob are both on node 1, their chat's home.
    let (a, b) = chat_script(&mut sim, 1, 1);
    let (room, _) = sim.cores[1].chat_of(a.id).unwrap();
    sim.journal.clear();
    // Bob is away; Ann writes twice: acknowledged as sent, kept at the home and journaled.
    sim.disconnect(b);
    let m1 = sim.say(a, "k1", "one");
    let m2 = sim.say(a, "k2", "two");
    assert_eq!(sim.journal[&room].len(), 2);
    // The home dies with both guests' sockets: no other node held anything of the chat.
    sim.kill(1);
    sim.seen.clear();
    // Ann comes back through node 0, which takes the room over and reads its journal; Bob
    // through node 2.
    let a = sim.connect(a, 0);
    let b = sim.connect(b, 2);
    let ids = [m1["id"].clone(), m2["id"].clone()];
    sim.assert_got_one_two(b.id, &ids);
    // Bob's acks reach the new home: Ann gets both receipts, and the journal is empty again.
    assert_eq!(sim.seen_field(a.id, "chat:message:delivered", "id"), ids);
    assert!(sim.journal.get(&room).is_none_or(HashMap::is_empty));
    // Bob's read receipt names a message the new home only knows from the journal.
    assert_eq!(
        sim.ev(b, "chat:message:read", json!({"id": m2["id"]})),
        Ok(json!({"ok": true}))
    );
    assert!(sim.names(a.id).contains(&"chat:message:read".to_owned()));
    // The chat goes on at its new home, journaled there; its end clears the journal.
    sim.disconnect(b);
    sim.say(a, "k3", "three");
    assert_eq!(sim.journal[&room].len(), 1);
    sim.ev(a, "chat:leave", json!({})).unwrap();
    assert!(!sim.journal.contains_key(&room));
}

#[test]
fn a_local_senders_message_is_acknowledged_once_its_journal_entry_is_written() {
    let mut sim = Sim::new(2);
    // Ann on node 0, Bob on node 1, the home.
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.hold_journal = true;
    sim.seen.clear();
    // Bob (local to the home) writes: Ann gets it at once, Bob's acknowledgements wait.
    let r = sim.ev(
        b,
        "chat:message",
        json!({"clientId": "k1", "content": "one"}),
    );
    let req = sim.next_req - 1;
    assert_eq!(r, Err(SignalError::ServiceUnavailable), "no ack yet");
    assert_eq!(sim.names(a.id), ["chat:message"]);
    assert!(!sim.names(b.id).contains(&"chat:message:sent".to_owned()));
    sim.answer_journal();
    let ack = sim
        .acks
        .remove(&(b.node, b.conn, req))
        .expect("acked now")
        .unwrap();
    let sent = sim.seen[&b.id]
        .iter()
        .find(|(n, _)| n == "chat:message:sent")
        .expect("sent now");
    assert_eq!(sent.1["id"], ack["id"]);
    assert_eq!(sent.1["clientId"], "k1");
    // Unanswered (Redis hangs), they go out after the bus timeout anyway.
    sim.seen.clear();
    let _ = sim.ev(
        b,
        "chat:message",
        json!({"clientId": "k2", "content": "two"}),
    );
    let req = sim.next_req - 1;
    assert!(!sim.acks.contains_key(&(b.node, b.conn, req)));
    sim.advance(secs(3));
    assert!(sim
        .acks
        .remove(&(b.node, b.conn, req))
        .expect("acked")
        .is_ok());
    assert!(sim.names(b.id).contains(&"chat:message:sent".to_owned()));
    // Ann's messages reach the home over the bus; her node keeps a copy until delivered, so
    // the home acks them without waiting for the journal.
    let r = sim.ev(
        a,
        "chat:message",
        json!({"clientId": "k3", "content": "three"}),
    );
    assert!(r.is_ok(), "{r:?}");
    // Every message was acknowledged by its receiver: nothing is left in the journal.
    sim.hold_journal = false;
    sim.answer_journal();
    let (room, _) = sim.cores[1].chat_of(a.id).unwrap();
    assert!(sim.journal.get(&room).is_none_or(HashMap::is_empty));
}

#[test]
fn a_killed_home_whose_guest_never_returns_ends_the_chat_after_the_grace_period() {
    let mut sim = Sim::new(2);
    let (a, _b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    sim.kill(1);
    sim.advance(secs(29));
    assert_eq!(
        sim.names(a.id),
        ["connection:established", "partner:presence"]
    );
    sim.advance(secs(2));
    let names = sim.names(a.id);
    assert!(names.iter().any(|n| n == "chat:ended"), "{names:?}");
    let ended = sim.seen[&a.id]
        .iter()
        .find(|(n, _)| n == "chat:ended")
        .unwrap();
    assert_eq!(ended.1["reason"], "disconnected");
    assert!(sim.cores[0].chat_of(a.id).is_none());
    // Ann may search again.
    assert_eq!(
        sim.ev(a, "match:start", json!({})),
        Ok(json!({"ok": true, "state": "searching"}))
    );
}

#[test]
fn a_drained_home_hands_its_chats_over_at_once() {
    let mut sim = Sim::new(3);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    let now = sim.now;
    sim.cores[1].begin_drain(now);
    sim.pump();
    // Node 0 took the room over: Bob (on the draining node) is away for Ann.
    assert_eq!(
        sim.names(a.id),
        ["connection:established", "partner:presence"]
    );
    assert!(sim.cores[0].chat_of(a.id).is_some());
    // The draining node says nothing more to the others: its guest's socket closing is not
    // told (Ann heard "away" once).
    sim.disconnect(b);
    assert_eq!(
        sim.names(a.id),
        ["connection:established", "partner:presence"]
    );
    // Bob reconnects through node 2 and the chat goes on at node 0.
    let b = sim.connect(b, 2);
    assert_eq!(sim.seen[&b.id][0].1["state"], "in_chat");
    sim.ev(
        b,
        "chat:message",
        json!({"clientId": "d", "content": "moved"}),
    )
    .unwrap();
    assert_eq!(sim.seen[&a.id].last().unwrap().0, "chat:message");
}

#[test]
fn a_killed_guest_node_leaves_its_guest_away_at_the_home() {
    let mut sim = Sim::new(3);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    // Node 0 (Ann's, not the home) dies: Bob sees Ann away; Ann comes back through node 2.
    sim.kill(0);
    assert_eq!(sim.names(b.id), ["partner:presence"]);
    assert_eq!(sim.seen[&b.id][0].1["status"], "away");
    let a = sim.connect(a, 2);
    assert_eq!(sim.seen[&a.id][0].1["state"], "in_chat");
    assert_eq!(sim.seen[&b.id].last().unwrap().1["status"], "online");
    sim.ev(
        a,
        "chat:message",
        json!({"clientId": "z", "content": "hi again"}),
    )
    .unwrap();
    assert_eq!(sim.seen[&b.id].last().unwrap().0, "chat:message");
}

#[test]
fn a_file_shared_through_another_node_is_posted_at_the_home_and_its_store_told_at_the_end() {
    let mut sim = Sim::new(2);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    // Ann's upload landed on node 0, which stores it; the chat's home is node 1.
    let (room, partner) = sim.cores[0].chat_anywhere(a.id).expect("Ann's chat");
    assert_eq!(partner, b.id);
    let file: tandem_signaling::files::FileInfo = serde_json::from_value(json!({
        "fileId": "00000000000000000000000000000abc",
        "name": "cat.png",
        "size": 64,
        "mimeType": "image/png",
        "category": "image",
        "url": "/api/files/00000000000000000000000000000abc?room=x&exp=1&sig=y",
        "expiresAt": "2026-12-06T15:00:00Z"
    }))
    .unwrap();
    let now = sim.now;
    let r = sim.cores[0].post_file_from(a.id, room, "c-file".into(), file, 77, now);
    assert_eq!(r, Ok(None));
    sim.pump();
    let ack = sim
        .acks
        .remove(&(0, ConnId(0), 77))
        .expect("the home answered");
    let ack = ack.unwrap();
    assert!(ack["id"].is_string() && ack["timestamp"].is_u64(), "{ack}");
    let got = sim.seen[&b.id]
        .iter()
        .find(|(n, _)| n == "chat:message")
        .expect("Bob gets the file message");
    assert_eq!(got.1["type"], "file");
    assert_eq!(got.1["content"]["mimeType"], "image/png");
    // A type off the allow-list never decodes.
    assert!(
        serde_json::from_value::<tandem_signaling::files::FileInfo>(json!({
            "fileId": "00000000000000000000000000000abc", "name": "x", "size": 1,
            "mimeType": "application/x-evil", "category": "document", "url": "/", "expiresAt": ""
        }))
        .is_err()
    );
    // The chat ends at the home: node 0, which stores the file, is told.
    sim.ev(b, "chat:leave", Value::Null).unwrap();
    assert!(sim.closed.contains(&(0, room)), "{:?}", sim.closed);
    assert!(sim.closed.contains(&(1, room)));
}

#[test]
fn a_pair_whose_seeker_stopped_searching_puts_the_partner_back_in_the_queue() {
    let mut sim = Sim::new(3);
    let a = sim.guest(0, "Ann");
    let b = sim.guest(1, "Bob");
    sim.ev(a, "match:start", json!({"interests": ["chess"]}))
        .unwrap();
    assert_eq!(sim.mm.queue.len(), 1);
    // The queue paired Ann with a search of Bob's that Bob cancelled before the answer came
    // back (Bob is online, not searching).
    sim.mm.queue.clear();
    let now = sim.now;
    sim.cores[1].handle_match(
        MatchAnswer::Paired {
            seeker: b.id,
            partner: a.id,
            partner_name: "Ann".into(),
            partner_node: sim.ids[0],
        },
        now,
    );
    sim.pump();
    // Ann is back in the queue with her interests: the next guest is paired with her.
    assert_eq!(sim.mm.queue.len(), 1, "Ann queued again");
    let queued = sim.mm.requests.iter().rev().find_map(|r| match r {
        MatchRequest::Enqueue { sid, interests, .. } if *sid == a.id => Some(interests.clone()),
        _ => None,
    });
    assert_eq!(queued, Some(vec!["chess".to_owned()]));
    let c = sim.guest(2, "Cy");
    sim.ev(c, "match:start", json!({})).unwrap();
    assert!(sim.cores[0].chat_of(a.id).is_some() || sim.cores[2].chat_of(c.id).is_some());
    let found = sim.seen[&a.id]
        .iter()
        .filter(|(n, _)| n == "match:found")
        .count();
    assert_eq!(found, 1);
}

#[test]
fn a_pair_whose_remote_partner_stopped_searching_ends_at_once() {
    let mut sim = Sim::new(2);
    let a = sim.guest(0, "Ann");
    let b = sim.guest(1, "Bob");
    // Ann's search was taken from the queue for Bob's, and Ann cancelled before the Paired
    // from Bob's node (the home) arrived.
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.mm.queue.clear();
    sim.ev(a, "match:cancel", Value::Null).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    let now = sim.now;
    sim.cores[1].handle_match(
        MatchAnswer::Paired {
            seeker: b.id,
            partner: a.id,
            partner_name: "Ann".into(),
            partner_node: sim.ids[0],
        },
        now,
    );
    sim.pump();
    // Bob heard of a match, then at once that the stranger disconnected; Ann heard nothing.
    let ended = sim.seen[&b.id]
        .iter()
        .find(|(n, _)| n == "chat:ended")
        .expect("the chat ends at once");
    assert_eq!(ended.1["reason"], "disconnected");
    assert!(sim.cores[1].chat_of(b.id).is_none());
    assert!(!sim.names(a.id).iter().any(|n| n == "match:found"));
}

#[test]
fn a_guest_returns_to_its_own_node_and_the_home_answers() {
    let mut sim = Sim::new(2);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.disconnect(a);
    sim.ev(b, "chat:message", json!({"clientId": "c3", "content": "?"}))
        .unwrap();
    sim.seen.clear();
    let a = sim.connect(a, 0);
    assert_eq!(sim.names(a.id), ["connection:established", "chat:message"]);
    assert_eq!(
        sim.names(b.id),
        ["partner:presence", "chat:message:delivered"]
    );
}

#[test]
fn leave_next_and_report_end_the_chat_across_nodes() {
    let mut sim = Sim::new(2);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    // a (remote at the home) leaves.
    assert_eq!(
        sim.ev(a, "chat:leave", Value::Null),
        Ok(json!({"ok": true, "state": "online"}))
    );
    assert_eq!(sim.names(a.id), ["chat:ended", "chat:message"]);
    assert_eq!(sim.names(b.id), ["chat:ended", "chat:message"]);
    assert!(sim.mm.requests.iter().any(|r| matches!(r,
        MatchRequest::RecordEnd { a: x, b: y, blocked: false, .. } if *x == a.id && *y == b.id)));
    assert!(sim.cores[1].chat_of(a.id).is_none());
    // Both search again: the cooldown keeps them apart.
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    assert_eq!(sim.mm.queue.len(), 2);
    // A third guest pairs with a (its node is the new room's home): then a skips, and the
    // search starts again on a's own node.
    let c = sim.guest(1, "Cy");
    sim.ev(c, "match:start", json!({})).unwrap();
    assert!(sim.cores[1].chat_of(c.id).is_some());
    assert_eq!(
        sim.ev(a, "match:next", json!({})),
        Ok(json!({"ok": true, "state": "searching"}))
    );
    assert!(sim
        .mm
        .requests
        .iter()
        .any(|r| matches!(r, MatchRequest::RecordEnd { blocked: false, .. })));
    // The cooldown with b ends: the two waiting are paired again, across nodes.
    sim.advance(secs(301));
    let (_, partner) = sim.cores[0]
        .chat_of(a.id)
        .or(sim.cores[1].chat_of(a.id))
        .unwrap();
    assert_eq!(partner, b.id);
    // b reports a: blocked for good.
    sim.ev(b, "chat:report", json!({"reason": "rude"})).unwrap();
    assert!(sim
        .mm
        .requests
        .iter()
        .any(|r| matches!(r, MatchRequest::RecordEnd { blocked: true, .. })));
    assert!(sim.cores[0].chat_of(a.id).is_none() && sim.cores[1].chat_of(a.id).is_none());
}

#[test]
fn a_bus_outage_refuses_cross_node_events_instead_of_losing_them() {
    let mut sim = Sim::new(2);
    let (a, b) = chat_script(&mut sim, 0, 1);
    sim.seen.clear();
    // The bus refuses sends (Redis lost): refused at once.
    sim.down = true;
    let r = sim.ev(
        a,
        "chat:message",
        json!({"clientId": "x", "content": "lost?"}),
    );
    assert_eq!(r, Err(SignalError::ServiceUnavailable));
    assert_eq!(
        SignalError::ServiceUnavailable.code(),
        "service_unavailable"
    );
    // The home's own guest posts: accepted (the room keeps it), and delivered once the bus
    // takes it again (handed out every second meanwhile).
    let kept = sim
        .ev(
            b,
            "chat:message",
            json!({"clientId": "k", "content": "kept"}),
        )
        .unwrap();
    sim.advance(secs(3));
    assert!(sim.seen.get(&a.id).is_none_or(|s| s.is_empty()));
    sim.down = false;
    sim.advance(secs(1));
    let got: Vec<_> = sim.seen[&a.id]
        .iter()
        .filter(|(n, _)| n == "chat:message")
        .map(|(_, m)| m["id"].clone())
        .collect();
    assert_eq!(got, [kept["id"].clone()]);
    assert_eq!(sim.seen[&b.id].last().unwrap().0, "chat:message:delivered");
    sim.seen.clear();
    // A partition: accepted, never answered: refused after the bus timeout.
    sim.cut.insert((0, 1));
    let req = sim.next_req;
    sim.ev(
        a,
        "chat:message",
        json!({"clientId": "y", "content": "lost?"}),
    )
    .unwrap_err();
    assert!(sim.acks.is_empty());
    sim.advance(secs(2));
    assert_eq!(
        sim.acks.remove(&(0, a.conn, req)),
        Some(Err(SignalError::ServiceUnavailable))
    );
    assert!(sim
        .seen
        .get(&b.id)
        .is_none_or(|s| s.iter().all(|(n, _)| n != "chat:message")));
    // Healed: the chat goes on.
    sim.cut.clear();
    sim.ev(
        a,
        "chat:message",
        json!({"clientId": "z", "content": "back"}),
    )
    .unwrap();
    assert_eq!(sim.names(b.id), ["chat:message"]);
}

#[test]
fn a_session_that_expires_on_its_node_ends_its_chat_at_the_home() {
    let mut sim = Sim::new(2);
    let a = sim.guest(0, "Ann");
    sim.advance(secs(600));
    let b = sim.guest(1, "Bob");
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    assert!(sim.cores[1].chat_of(a.id).is_some());
    sim.seen.clear();
    // a's token lifetime (2 h) ends on node 0; the home sees it away, then gone.
    sim.advance(secs(7200 - 600 + 1));
    assert!(!sim.cores[0].session_alive(a.id, sim.now));
    assert_eq!(sim.names(b.id), ["partner:presence"]);
    sim.advance(secs(31));
    assert_eq!(
        sim.names(b.id),
        ["partner:presence", "chat:ended", "chat:message"]
    );
    assert!(sim.cores[1].chat_of(b.id).is_none());
    // The home forgot the visitor.
    assert_eq!(sim.cores[1].sizes()[0], ("sessions", 1));
}

const SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
const CAND: &str = "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host";

/// The call script: a and b are paired, a calls, b accepts, both offer and trickle, the media
/// server (at the chat's home) answers and reports both connected, b hangs up. Returns the
/// guests, the home and the call.
fn call_script(sim: &mut Sim, na: usize, nb: usize) -> (G, G, usize, CallId) {
    let a = sim.guest(na, "Ann");
    let b = sim.guest(nb, "Bob");
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    let home = sim.home(a);
    let room = sim.cores[home].chat_of(a.id).unwrap().0;
    assert_eq!(
        sim.ev(a, "call:request", json!({"video": true})),
        Ok(json!({"ok": true, "roomId": room.to_string()}))
    );
    assert_eq!(
        sim.ev(b, "call:accept", Value::Null),
        Ok(json!({"ok": true, "roomId": room.to_string()}))
    );
    let Some(&MediaCommand::Open { call, guests, .. }) = sim.last_media(home) else {
        panic!("the home opens the media session");
    };
    assert_eq!(guests, [a.id, b.id]);
    for (i, g) in [a, b].into_iter().enumerate() {
        assert_eq!(
            sim.ev(g, "webrtc:offer", json!({"sdp": SDP})),
            Ok(json!({"ok": true}))
        );
        assert_eq!(
            sim.last_media(home),
            Some(&MediaCommand::Offer {
                call,
                guest: g.id,
                sdp: SDP.into()
            })
        );
        let candidate = json!({"candidate": CAND, "sdpMid": "0", "sdpMLineIndex": 0});
        sim.ev(g, "webrtc:ice-candidate", candidate).unwrap();
        assert!(matches!(
            sim.last_media(home),
            Some(MediaCommand::Candidate { guest, .. }) if *guest == g.id
        ));
        let answer = MediaEvent::Answer {
            call,
            guest: g.id,
            sdp: format!("v=0 answer {i}"),
        };
        sim.media_event(home, answer);
        let candidate = MediaEvent::Candidate {
            call,
            guest: g.id,
            candidate: CAND.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        sim.media_event(home, candidate);
    }
    // A server renegotiation towards a, answered by a.
    let offer = MediaEvent::Offer {
        call,
        guest: a.id,
        sdp: "v=0 server offer".into(),
    };
    sim.media_event(home, offer);
    assert_eq!(
        sim.ev(a, "webrtc:answer", json!({"sdp": SDP})),
        Ok(json!({"ok": true}))
    );
    for g in [a, b] {
        sim.media_event(home, MediaEvent::Connected { call, guest: g.id });
    }
    sim.advance(secs(5));
    assert_eq!(sim.ev(b, "call:end", Value::Null), Ok(json!({"ok": true})));
    assert_eq!(sim.last_media(home), Some(&MediaCommand::Close { call }));
    (a, b, home, call)
}

#[test]
fn a_call_across_nodes_runs_at_the_chats_home_as_on_one_node() {
    let mut one = Sim::new(0);
    let (a1, b1, _, _) = call_script(&mut one, 0, 0);
    let mut two = Sim::new(2);
    let (a2, b2, home, call) = call_script(&mut two, 0, 1);
    assert_eq!(
        home, 1,
        "b's node paired them: the room's home, the media node"
    );
    for (g1, g2) in [(a1, a2), (b1, b2)] {
        assert_eq!(one.transcript(g1.id), two.transcript(g2.id));
    }
    assert_eq!(
        two.names(a2.id),
        [
            "connection:established",
            "match:searching",
            "match:found",
            "call:accepted",
            "webrtc:answer",
            "webrtc:ice-candidate",
            "webrtc:offer",
            "call:ended",
        ]
    );
    // Every media command went to the home's media server, the same ones as on one node.
    assert!(two.media.iter().all(|(n, _)| *n == home));
    assert_eq!(one.media.len(), two.media.len());
    // The call ended: the home revoked it, and so did a's node (which knew of it).
    assert_eq!(two.ended_at(home), [call]);
    assert_eq!(two.ended_at(0), [call]);
    assert_eq!(one.ended_at(0).len(), 1);
}

#[test]
fn the_guests_node_knows_its_call_and_the_media_node_until_the_call_ends() {
    let mut sim = Sim::new(3);
    let a = sim.guest(0, "Ann");
    let b = sim.guest(1, "Bob");
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    let home = sim.home(a);
    assert_eq!(home, 1);
    let media = sim.ids[home];
    assert_eq!(sim.cores[0].call_of(a.id), None);
    // b (at the home) calls a (remote): a's node knows the call before a hears it ring.
    sim.ev(b, "call:request", json!({"video": false})).unwrap();
    let call = sim.cores[home].call_of(a.id).expect("ringing");
    assert_eq!(sim.cores[home].call_of(b.id), Some(call));
    assert_eq!(sim.cores[home].media_node_of(a.id), None, "terminated here");
    assert_eq!(sim.cores[0].call_of(a.id), Some(call));
    assert_eq!(sim.cores[0].media_node_of(a.id), Some(media));
    assert_eq!(
        sim.call_events,
        [(0, a.id, "call:incoming".to_owned(), Some(call)),]
    );
    sim.ev(a, "call:accept", Value::Null).unwrap();
    assert_eq!(sim.cores[0].call_of(a.id), Some(call));
    assert!(sim.call_ends.is_empty());

    // a's socket moves to a third node mid-call: that node learns the call from the home, and
    // a's offer (an ICE restart towards the same media node) reaches the home's media server.
    sim.disconnect(a);
    let a = sim.connect(a, 2);
    let established = sim.seen[&a.id]
        .iter()
        .rev()
        .find(|(n, _)| n == "connection:established")
        .unwrap();
    assert_eq!(
        established.1["room"]["call"],
        json!({"state": "connecting", "video": false})
    );
    assert_eq!(sim.cores[2].call_of(a.id), Some(call));
    assert_eq!(sim.cores[2].media_node_of(a.id), Some(media));
    sim.ev(a, "webrtc:offer", json!({"sdp": SDP})).unwrap();
    assert_eq!(
        sim.last_media(home),
        Some(&MediaCommand::Offer {
            call,
            guest: a.id,
            sdp: SDP.into()
        })
    );
    // A node that is not the chat's home cannot speak for the call.
    let room = sim.cores[home].chat_of(a.id).unwrap().0;
    let forged = ClusterMsg::CallState {
        sid: a.id,
        room,
        call: Some(CallId(7)),
    };
    sim.cores[2].handle_bus(sim.ids[0], forged, sim.now);
    let forged_end = ClusterMsg::CallState {
        sid: a.id,
        room,
        call: None,
    };
    sim.cores[2].handle_bus(sim.ids[0], forged_end, sim.now);
    assert_eq!(sim.cores[2].call_of(a.id), Some(call));
    assert!(sim.cores[2].poll_output().is_none());

    // a hangs up from the third node: every node told of the call revokes it (the one a left
    // too), the home first closes the media session; a's node knows before a is told.
    sim.call_events.clear();
    sim.ev(a, "call:end", Value::Null).unwrap();
    assert_eq!(sim.ended_at(home), [call]);
    assert_eq!(sim.ended_at(0), [call]);
    assert_eq!(sim.ended_at(2), [call]);
    for node in 0..3 {
        assert_eq!(sim.cores[node].call_of(a.id), None);
        assert_eq!(sim.cores[node].media_node_of(a.id), None);
    }
    assert_eq!(
        sim.call_events,
        [
            (home, b.id, "call:ended".to_owned(), None),
            (2, a.id, "call:ended".to_owned(), None),
        ]
    );

    // A second call rings out: the timeout ends it at a's node too.
    sim.call_ends.clear();
    sim.ev(a, "call:request", json!({"video": true})).unwrap();
    let second = sim.cores[2].call_of(a.id).expect("ringing");
    assert_ne!(second, call);
    sim.advance(secs(31));
    assert_eq!(sim.ended_at(2), [second]);
    assert_eq!(sim.cores[2].call_of(a.id), None);
    // a's first node still holds its session (the chat's visitor there): it is told too.
    assert_eq!(sim.ended_at(0), [second]);

    // A third call ends with the chat (b leaves): a's node revokes it, then a is released.
    sim.call_ends.clear();
    sim.ev(a, "call:request", json!({"video": true})).unwrap();
    let third = sim.cores[2].call_of(a.id).expect("ringing");
    sim.ev(b, "chat:leave", Value::Null).unwrap();
    assert_eq!(sim.ended_at(2), [third]);
    assert_eq!(sim.ended_at(home), [third]);
    assert_eq!(sim.cores[2].call_of(a.id), None);
    assert!(sim.cores[2].chat_of(a.id).is_none());
    let reasons: Vec<Value> = sim.seen[&a.id]
        .iter()
        .filter(|(n, _)| n == "call:ended")
        .map(|(_, p)| p["reason"].clone())
        .collect();
    assert_eq!(reasons, ["hangup", "timeout", "partner_left"]);
}

#[test]
fn a_node_that_holds_no_socket_of_the_guest_learns_its_call_from_the_record() {
    let mut sim = Sim::new(3);
    let a = sim.guest(0, "Ann");
    let b = sim.guest(1, "Bob");
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    sim.ev(b, "call:request", json!({"video": true})).unwrap();
    let call = sim.cores[1].call_of(a.id).expect("ringing");
    assert_eq!(sim.call_records.get(&a.id), Some(&call));
    assert_eq!(sim.call_records.get(&b.id), Some(&call));
    // An HTTP request of Ann (`/api/ice-servers`) lands on node 2: adopted from the record.
    let (home, room, partner) = sim.mirror[&a.id].clone();
    let record = RecordHome {
        node: home,
        room,
        partner,
        alive: true,
        call: sim.call_records.get(&a.id).copied(),
    };
    let now = sim.now;
    sim.cores[2]
        .adopt(a.id, "Ann", Some(Some(record)), None, now)
        .unwrap();
    assert_eq!(sim.cores[2].call_of(a.id), Some(call));
    assert_eq!(sim.cores[2].media_node_of(a.id), Some(sim.ids[1]));
    // The call ends: the records forget it.
    sim.ev(b, "call:end", Value::Null).unwrap();
    assert!(sim.call_records.is_empty());
}

#[test]
fn calls_of_different_nodes_never_share_an_id() {
    let mut sim = Sim::new(2);
    let mut calls = Vec::new();
    for node in [0, 1] {
        let a = sim.guest(node, "Ann");
        let b = sim.guest(node, "Bob");
        sim.ev(a, "match:start", json!({})).unwrap();
        sim.ev(b, "match:start", json!({})).unwrap();
        assert_eq!(sim.home(a), node);
        sim.ev(a, "call:request", json!({"video": true})).unwrap();
        calls.push(sim.cores[node].call_of(a.id).unwrap());
        // Same-node chats tell no other node anything about their calls.
        assert_eq!(sim.cores[node].media_node_of(a.id), None);
    }
    assert_ne!(calls[0], calls[1]);
    assert!(
        calls.iter().all(|c| c.0 > 1 << 20),
        "random starts: {calls:?}"
    );
    // A single node still numbers its calls from 1.
    let mut one = Sim::new(0);
    let a = one.guest(0, "Ann");
    let b = one.guest(0, "Bob");
    one.ev(a, "match:start", json!({})).unwrap();
    one.ev(b, "match:start", json!({})).unwrap();
    one.ev(a, "call:request", json!({"video": true})).unwrap();
    assert_eq!(one.cores[0].call_of(a.id), Some(CallId(1)));
}

#[test]
fn a_redis_that_comes_back_empty_is_written_again_by_every_node() {
    let mut sim = Sim::new(3);
    // A chat across nodes 0 and 1 (home: node 1) with a call; a cooled-down pair; a report;
    // a guest searching on node 2.
    let (a, b, home, _) = call_script(&mut sim, 0, 1);
    assert_eq!(home, 1);
    sim.ev(a, "call:request", json!({"video": true})).unwrap();
    sim.ev(b, "call:accept", Value::Null).unwrap();
    let Some(&MediaCommand::Open { call, .. }) = sim.last_media(home) else {
        panic!("the home opens the media session");
    };
    let c = sim.guest(0, "Cy");
    let d = sim.guest(1, "Di");
    sim.ev(c, "match:start", json!({})).unwrap();
    sim.ev(d, "match:start", json!({})).unwrap();
    sim.ev(d, "chat:report", json!({"reason": "rude"})).unwrap();
    let e = sim.guest(2, "Ed");
    sim.ev(e, "match:start", json!({"interests": ["chess"]}))
        .unwrap();
    let f = sim.guest(2, "Flo");
    assert_eq!(sim.mm.queue.len(), 1);
    let mirror = sim.mirror.clone();
    let calls = sim.call_records.clone();
    sim.mm.requests.clear();

    sim.wipe_redis();

    // Every record is back as it was: the chat's home, room and partner, and the call.
    assert_eq!(sim.mirror, mirror);
    assert_eq!(sim.call_records, calls);
    assert_eq!(sim.call_records.get(&a.id), Some(&call));
    // Each guest's record was written by a node that holds it (nodes 0, 1, 2).
    for g in [a, b, c, d, e, f] {
        assert!(sim.restored.contains(&g.id), "{g:?}");
    }
    // The report still keeps c and d apart; e is queued again with its interests, after
    // every record was written.
    assert_eq!(sim.mm.ended.get(&pair_key(c.id, d.id)), Some(&true));
    let queued: Vec<_> = sim.mm.queue.iter().map(|w| w.sid).collect();
    assert_eq!(queued, [e.id]);
    let enqueue = sim
        .mm
        .requests
        .iter()
        .position(|r| matches!(r, MatchRequest::Enqueue { sid, interests, .. } if *sid == e.id && interests == &["chess"]))
        .unwrap();
    let last_restore = sim
        .mm
        .requests
        .iter()
        .rposition(|r| matches!(r, MatchRequest::Restore { .. }))
        .unwrap();
    assert!(last_restore < enqueue);
    // Nobody saw anything of it.
    sim.seen.clear();
    sim.advance(secs(1));
    assert!(sim.names(a.id).is_empty() && sim.names(e.id).is_empty());
    // The cluster works on: a guest moves to a node that never held it and finds its chat
    // and call from its record; the searching guest is paired with a newcomer.
    sim.disconnect(a);
    let a = sim.connect(a, 2);
    let established = &sim.seen[&a.id][0];
    assert_eq!(established.0, "connection:established");
    assert_eq!(established.1["state"], "in_chat");
    assert_eq!(established.1["room"]["partner"]["username"], "Bob");
    assert_eq!(sim.cores[2].call_of(a.id), Some(call));
    sim.ev(f, "match:start", json!({})).unwrap();
    assert!(sim.cores[2].chat_of(f.id).is_some());
    assert_eq!(sim.cores[2].chat_of(f.id).unwrap().1, e.id);
    // c and d search again: the report keeps them apart even so.
    sim.ev(c, "match:start", json!({})).unwrap();
    sim.ev(d, "match:start", json!({})).unwrap();
    assert_eq!(sim.mm.queue.len(), 2);
}

#[test]
fn a_record_that_lags_behind_the_pairing_does_not_end_the_chat_on_the_guests_node() {
    let mut sim = Sim::new(2);
    let a = sim.guest(0, "Ann");
    let b = sim.guest(1, "Bob");
    sim.ev(a, "match:start", json!({})).unwrap();
    sim.ev(b, "match:start", json!({})).unwrap();
    assert_eq!(sim.home(a), 1);
    let (room, partner) = sim.cores[0].chat_anywhere(a.id).expect("told by the home");
    assert_eq!(partner, b.id);
    // An upload of Ann reaches node 0 before the home wrote Ann's record: it has no chat yet.
    let now = sim.now;
    sim.cores[0]
        .adopt(a.id, "Ann", Some(None), None, now)
        .unwrap();
    assert_eq!(sim.cores[0].chat_anywhere(a.id), Some((room, b.id)));
    // Nor does a record that still names an older chat elsewhere.
    let stale = RecordHome {
        node: sim.ids[1],
        room: RoomId::from_raw(7),
        partner: None,
        alive: false,
        call: None,
    };
    sim.cores[0]
        .adopt(a.id, "Ann", Some(Some(stale)), None, now)
        .unwrap();
    assert_eq!(sim.cores[0].chat_anywhere(a.id), Some((room, b.id)));
    // Long after the pairing, a record without a chat is believed: it ended elsewhere.
    sim.advance(Duration::from_secs(11));
    let now = sim.now;
    sim.cores[0]
        .adopt(a.id, "Ann", Some(None), None, now)
        .unwrap();
    assert_eq!(sim.cores[0].chat_anywhere(a.id), None);
}
