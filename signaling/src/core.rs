//! The signaling state machine, sans-I/O: every input carries `now`, every effect is an
//! [`Output`] to poll. A thin dispatcher over its parts, each owning one kind of state:
//!
//! - [`Sessions`]: guests, their sockets, presence state and per-guest limits;
//! - [`Matchmaker`]: the match queue and who may not be paired with whom;
//! - [`Rooms`]: rooms and their chat (messages kept until acknowledged, receipts, typing);
//! - [`Calls`]: the call of each room;
//! - [`Broadcast`] and [`Counters`]: the live statistics and the counters.
//!
//! The core turns inputs into calls on the parts, schedules what they say is due on its one
//! timer heap ([`Timers`]), and emits the outputs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;

use crate::call::{CallStates, Calls, MediaEvent};
use crate::cluster::{AckResult, ClusterMsg, Kept, MatchAnswer, MatchRequest, NodeId, RecordHome};
use crate::config::CoreConfig;
use crate::files::FileInfo;
use crate::ids::{CallId, ClientKey, ConnId, MessageId, RoomId, SessionId};
use crate::matchmaker::{Entry, Matchmaker, Pair, MAX_BLOCKS_PER_GUEST};
use crate::output::{CloseReason, JournalOp, Outbox, Output, Target};
use crate::rooms::{announce_end, Rooms};
use crate::sessions::{valid_username, GuestInfo, Sessions, State, Throttle};
use crate::stats::{Broadcast, Counters};
use crate::timers::{Timer, Timers};
use crate::wire::*;
use crate::SignalError;

/// How often the core re-checks the active-guest count on its own.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Remote connections are numbered from here (the shell numbers its sockets from 0).
const REMOTE_CONN_BASE: u64 = 1 << 63;

/// Forwarded events waiting for their ack, at most (past it: `service_unavailable`).
const MAX_PENDING: usize = 65_536;

/// Ended pairs a clustered core remembers for the matchmaker, at most.
const MAX_ENDS: usize = 65_536;

/// How often partner messages the bus refused are handed out again.
const BUS_RETRY: Duration = Duration::from_secs(1);

/// How long a session record in Redis may lag behind what the bus said: a chat's home writes
/// its guests' records through its Redis worker, while it tells their nodes over the bus at
/// once. A record read within this time of a pairing does not undo it.
const RECORD_LAG: Duration = Duration::from_secs(10);

/// A clustered core's view of the other nodes (absent on a single node).
#[derive(Default)]
struct Cluster {
    node: Option<NodeId>,
    /// Home side: each remote connection (one per guest and node) → that guest and node.
    remote: HashMap<ConnId, (SessionId, NodeId)>,
    /// Home side: the remote connections of each guest.
    remote_of: HashMap<SessionId, Vec<(NodeId, ConnId)>>,
    /// Home side: sessions held here only for a room (a partner from `node`; unknown for the
    /// partner of a room taken over from a home that died, until it attaches).
    visitors: HashMap<SessionId, Option<NodeId>>,
    next_remote: u64,
    /// The remote socket the current input came from, for what is aimed at one socket.
    ctx: Option<(NodeId, ConnId)>,
    /// Guest's-node side: local guests whose chat is homed at another node.
    homes: HashMap<SessionId, (NodeId, RoomId)>,
    /// Guest's-node side: those chats' homes.
    remote_rooms: HashMap<RoomId, NodeId>,
    /// Guest's-node side: when the bus told of each entry of `homes` (its pairing); a session
    /// record read before [`RECORD_LAG`] has passed may not know it yet.
    homed_at: HashMap<SessionId, Instant>,
    /// Forwarded events: bus request id → (socket, the shell's request id).
    pending: HashMap<u64, (ConnId, u64)>,
    next_req: u64,
    /// Guests whose chat ended here during this input: released once it is routed.
    releasing: Vec<(SessionId, RoomId)>,
    /// Home side: guests a partner message for whom the bus refused, and their rooms; the
    /// messages (kept until acknowledged) go out again every [`BUS_RETRY`] until sent.
    unsent: HashMap<SessionId, RoomId>,
    /// A [`Timer::BusRetry`] is scheduled.
    retrying: bool,
    /// Guest's-node side: the partner (and its name) of each local guest homed elsewhere, to
    /// take the room over if its home dies.
    partners: HashMap<SessionId, (SessionId, String)>,
    /// Rooms whose home died that this node claimed (the answer is pending), with the
    /// attaches that arrived meanwhile (replayed if this node wins).
    claims: HashMap<RoomId, Vec<(NodeId, SessionId, ConnId)>>,
    /// This node is draining: it told the others, and points late comers at them.
    draining: bool,
    /// The other nodes' statistics, summed.
    others: Stats,
    /// Home side: the nodes that store files of each room (told when the chat ends).
    file_nodes: HashMap<RoomId, Vec<NodeId>>,
    /// The interests of each local guest searching in the cluster's queue (to queue it again
    /// if a pair falls through).
    searches: HashMap<SessionId, Vec<String>>,
    /// Guest's-node side: what a forwarded post carries (by bus request id), to keep a copy
    /// once the home acknowledges it.
    drafts: HashMap<u64, (SessionId, MessageType, Content)>,
    /// Guest's-node side: copies of the messages a local guest sent to its chat's home that
    /// its partner has not acknowledged yet (the home's `chat:message:delivered` drops them):
    /// if the home dies they are kept again by the room's new home.
    outbox: HashMap<SessionId, std::collections::VecDeque<ChatMessage>>,
    /// Home side: guests whose call changed during this input, with the call's room: their
    /// nodes are told ([`ClusterMsg::CallState`]) ahead of the input's other outputs.
    call_sync: Vec<(RoomId, SessionId)>,
    /// Home side: each remote guest's call (and its room) and the nodes told of it, which are
    /// told its end too (also a node the guest has left since).
    told: HashMap<SessionId, (RoomId, CallId, Vec<NodeId>)>,
    /// Guest's-node side: the call of a local guest whose chat is homed at another node, as
    /// that home (the call's media node) said: (home, room, call).
    remote_calls: HashMap<SessionId, (NodeId, RoomId, CallId)>,
    /// Home side: the pairs whose chat ended here that may not be paired again yet (blocked
    /// after a report, else cooling down) and until when, as the cluster's matchmaker was told:
    /// told again if Redis loses its data. At most [`MAX_ENDS`].
    ends: HashMap<(SessionId, SessionId), (bool, Instant)>,
    /// Home side: the acknowledgements of local senders' messages (their ack and
    /// `chat:message:sent`), held by journal ticket until the message's entry is written.
    held: HashMap<u64, Vec<Output>>,
    next_ticket: u64,
}

impl Cluster {
    /// The remote connection of `id` on `node`, made if new (and whether it is).
    fn remote_conn(&mut self, id: SessionId, node: NodeId) -> (ConnId, bool) {
        let conns = self.remote_of.entry(id).or_default();
        if let Some((_, c)) = conns.iter().find(|(n, _)| *n == node) {
            return (*c, false);
        }
        self.next_remote += 1;
        let conn = ConnId(REMOTE_CONN_BASE | self.next_remote);
        conns.push((node, conn));
        self.remote.insert(conn, (id, node));
        (conn, true)
    }

    /// The nodes a home tells about guest `id`: those of its remote connections, and the node
    /// it was paired from (a visitor's), each once.
    fn nodes_of(&self, id: SessionId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .remote_of
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(n, _)| *n)
            .collect();
        nodes.extend(self.visitors.get(&id).copied().flatten());
        nodes.sort();
        nodes.dedup();
        nodes
    }

    fn drop_remote(&mut self, conn: ConnId) {
        if let Some((id, _)) = self.remote.remove(&conn) {
            if let Some(conns) = self.remote_of.get_mut(&id) {
                conns.retain(|(_, c)| *c != conn);
                if conns.is_empty() {
                    self.remote_of.remove(&id);
                }
            }
        }
    }

    /// The one socket a reply to the current remote input is for, if on `node`.
    fn ctx_conn(&self, node: NodeId) -> Option<ConnId> {
        self.ctx.filter(|(n, _)| *n == node).map(|(_, c)| c)
    }
}

fn relay(sid: SessionId, conn: Option<ConnId>, event: &ServerEvent) -> ClusterMsg {
    ClusterMsg::Emit {
        sid,
        conn,
        name: event.name().to_owned(),
        payload: serde_json::to_value(event).unwrap_or(Value::Null),
        ack: None,
    }
}

fn relay_message(sid: SessionId, conn: Option<ConnId>, message: &ChatMessage) -> ClusterMsg {
    ClusterMsg::Emit {
        sid,
        conn,
        name: "chat:message".to_owned(),
        payload: serde_json::to_value(message).unwrap_or(Value::Null),
        ack: Some((message.room_id, message.id)),
    }
}

/// The signaling state machine.
pub struct Core {
    cfg: CoreConfig,
    rng: ChaCha20Rng,
    epoch: Instant,
    epoch_unix_ms: u64,
    sessions: Sessions,
    matchmaker: Matchmaker,
    rooms: Rooms,
    calls: Calls,
    counters: Counters,
    broadcast: Broadcast,
    timers: Timers,
    out: Outbox,
    /// `Some` in a cluster (`cfg.node` set).
    cluster: Option<Box<Cluster>>,
}

impl Core {
    /// `seed` feeds the id generator (give it OS randomness in production, a constant in tests);
    /// `now` and `unix_ms` anchor the wall clock used for message timestamps and expiries.
    pub fn new(cfg: CoreConfig, seed: [u8; 32], now: Instant, unix_ms: u64) -> Self {
        let mut timers = Timers::default();
        timers.schedule(now + SWEEP_INTERVAL, Timer::Sweep);
        let mut rng = ChaCha20Rng::from_seed(seed);
        // In a cluster a call's id must be unique across nodes (it is the grant of the call's
        // TURN credentials, which every node that handed some out revokes when the call ends):
        // each core numbers its calls from a random start below 2^62.
        let calls = match cfg.node {
            Some(_) => Calls::numbered_after(rng.next_u64() >> 2),
            None => Calls::default(),
        };
        Self {
            rng,
            epoch: now,
            epoch_unix_ms: unix_ms,
            sessions: Sessions::new(cfg.clone(), now),
            matchmaker: Matchmaker::new(cfg.repair_cooldown, MAX_BLOCKS_PER_GUEST),
            rooms: Rooms::new(cfg.away_queue_max, cfg.node.is_some()),
            calls,
            counters: Counters::default(),
            broadcast: Broadcast::new(cfg.stats_interval),
            timers,
            out: Outbox::default(),
            cluster: cfg.node.map(|node| {
                Box::new(Cluster {
                    node: Some(node),
                    ..Cluster::default()
                })
            }),
            cfg,
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Creates a guest session (`POST /api/guest`) that no per-address limit counts.
    pub fn create_guest(
        &mut self,
        username: Option<&str>,
        now: Instant,
    ) -> Result<GuestInfo, SignalError> {
        self.create_guest_from(username, None, now)
    }

    /// Creates a guest session (`POST /api/guest`) for a client at `client`: refused with
    /// `too_many_sessions` when that address already holds `max_sessions_per_ip` open sessions.
    /// The session is removed if no socket connects within `connect_timeout`.
    pub fn create_guest_from(
        &mut self,
        username: Option<&str>,
        client: Option<ClientKey>,
        now: Instant,
    ) -> Result<GuestInfo, SignalError> {
        self.create_guest_counted(username, client, 0, now)
    }

    /// (Cluster.) [`Core::create_guest_from`] for a client address that holds `elsewhere` open
    /// sessions on other nodes (as they published them, see [`Core::client_sessions`]): the cap
    /// per address holds for the cluster.
    pub fn create_guest_counted(
        &mut self,
        username: Option<&str>,
        client: Option<ClientKey>,
        elsewhere: usize,
        now: Instant,
    ) -> Result<GuestInfo, SignalError> {
        self.sessions.tick(now);
        let username = match username {
            Some(u) => valid_username(u).ok_or(SignalError::InvalidUsername)?,
            None => format!("Guest-{:04x}", self.rng.next_u32() & 0xffff),
        };
        self.sessions.check_capacity(client, elsewhere)?;
        let id = loop {
            let id = SessionId::from_raw(self.random_u128());
            if !self.sessions.contains(id) {
                break id;
            }
        };
        let (expires_at, connect_by) = self.sessions.insert(id, username.clone(), client, now);
        self.timers.schedule(expires_at, Timer::Expiry(id));
        self.timers.schedule(connect_by, Timer::Unconnected(id));
        self.counters.guests_created += 1;
        self.broadcast.changed(now);
        Ok(GuestInfo {
            session_id: id,
            username,
            expires_at_ms: self.unix_ms(expires_at),
        })
    }

    /// Extends a live session by one token lifetime (`POST /api/guest/refresh`).
    pub fn refresh(&mut self, id: SessionId, now: Instant) -> Result<GuestInfo, SignalError> {
        self.sessions.tick(now);
        let (username, expires_at) = self.sessions.refresh(id, now)?;
        self.timers.schedule(expires_at, Timer::Expiry(id));
        // `last_active` moved: the active count may have changed.
        self.broadcast.changed(now);
        Ok(GuestInfo {
            session_id: id,
            username,
            expires_at_ms: self.unix_ms(expires_at),
        })
    }

    /// May this session open one more socket? (Checked before the socket is accepted.)
    pub fn admit(&mut self, id: SessionId, now: Instant) -> Result<(), SignalError> {
        self.sessions.tick(now);
        self.sessions.admit(id, now)
    }

    /// (Cluster only.) Before [`Core::admit`] on a node that may not hold guest `id`: a guest
    /// whose token (signed with the cluster's shared key) the shell verified, named `username`
    /// in it. An unknown guest becomes this node's (no per-address count: it was counted where
    /// it was made). `home` is what the session mirror says about its chat (`Some(None)`: no
    /// chat; `None`: the mirror could not be read, nothing changes): a chat homed at another
    /// node is where its events go from now on; a chat this node believed elsewhere that the
    /// mirror no longer names is over. On a single node: nothing.
    ///
    /// `lives` is how long the shared record still lives (it follows refreshes on any node):
    /// the session here expires then too.
    pub fn adopt(
        &mut self,
        id: SessionId,
        username: &str,
        home: Option<Option<RecordHome>>,
        lives: Option<Duration>,
        now: Instant,
    ) -> Result<(), SignalError> {
        let start = self.out.len();
        self.sessions.tick(now);
        let Some(me) = self.cluster.as_ref().and_then(|c| c.node) else {
            return Ok(());
        };
        if !self.sessions.contains(id) {
            self.sessions.check_capacity(None, 0)?;
            let username = valid_username(username).unwrap_or_else(|| "Guest".to_owned());
            let (expires_at, connect_by) = self.sessions.insert(id, username, None, now);
            self.timers.schedule(expires_at, Timer::Expiry(id));
            self.timers.schedule(connect_by, Timer::Unconnected(id));
            self.broadcast.changed(now);
        }
        if let Some(lives) = lives {
            if let Some(at) = self.sessions.set_expiry(id, now + lives) {
                self.timers.schedule(at, Timer::Expiry(id));
            }
        }
        match home {
            Some(Some(RecordHome {
                node,
                room,
                partner,
                alive,
                call,
            })) if node != me => {
                // A chat of this node's own is never overridden (the record lags behind it),
                // nor one the bus told of moments ago.
                let local = match self.sessions.state(id) {
                    Some(State::InChat(r)) => self.rooms.contains(r),
                    _ => false,
                } || self.newly_homed(id, now);
                let c = self.cluster.as_mut().expect("checked above: clustered");
                if let Some(p) = partner {
                    c.partners.insert(id, p);
                }
                if !local && c.homes.get(&id) != Some(&(node, room)) {
                    if let Some((_, old)) = c.homes.insert(id, (node, room)) {
                        c.remote_rooms.remove(&old);
                        if let Some(&(_, r, call)) = c.remote_calls.get(&id) {
                            if r != room {
                                c.remote_calls.remove(&id);
                                self.out.push(Output::CallEnded(call));
                            }
                        }
                    }
                    c.remote_rooms.insert(room, node);
                    if self.sessions.state(id) == Some(State::Searching) {
                        self.out
                            .push(Output::Match(MatchRequest::Cancel { sid: id }));
                    }
                    self.sessions.set_state(id, State::InChat(room));
                    self.broadcast.changed(now);
                }
                if !local && !alive {
                    // Its home is gone: claim the room.
                    self.claim(room);
                }
                if let (false, true, Some(call)) = (local, alive, call) {
                    if let Some(c) = self.cluster.as_mut() {
                        c.remote_calls.entry(id).or_insert((node, room, call));
                    }
                }
            }
            // No chat in the record: it ended while the guest was elsewhere, unless the record
            // was read before its home wrote the pairing the bus already told of.
            Some(None) if !self.newly_homed(id, now) => {
                if let Some((_, room)) = self.cluster.as_ref().and_then(|c| c.homes.get(&id)) {
                    let room = *room;
                    self.release_local(id, room, now);
                }
            }
            _ => {}
        }
        self.route(start);
        Ok(())
    }

    /// A socket of `id` connected. Emits `connection:established` and `realtime:stats` to it,
    /// tells a partner the guest is back, and hands out every partner message the guest has not
    /// acknowledged: queued while it was away, or delivered to sockets that never acked (a
    /// connection that died silently); to all its sockets when it returns, else to the new one.
    pub fn connect(
        &mut self,
        id: SessionId,
        conn: ConnId,
        now: Instant,
    ) -> Result<(), SignalError> {
        let start = self.out.len();
        self.admit(id, now)?;
        let returning = self.sessions.attach(id, conn, now)?;
        if let Some(home) = self.home_of(id) {
            // Its chat lives on another node: that node answers.
            let msg = ClusterMsg::Attach { sid: id, conn };
            self.out.push(Output::Bus { to: home, msg });
        } else {
            self.connected(id, conn, returning, now);
        }
        self.route(start);
        Ok(())
    }

    /// After socket `conn` of `id` was attached (`returning`: it had none).
    fn connected(&mut self, id: SessionId, conn: ConnId, returning: bool, now: Instant) {
        if let Some(established) = self.established(id) {
            self.out
                .emit(Target::Conn(conn), ServerEvent::Established(established));
        }
        let stats = self.stats(now);
        self.out.emit(Target::Conn(conn), ServerEvent::Stats(stats));
        let chat = self.chat_of(id);
        if returning {
            if let Some((room, _)) = chat {
                let out = &mut self.out;
                self.rooms.tell_presence(room, id, Presence::Online, out);
                self.rooms.hand_out(room, id, None, out);
            }
            if self.cluster.is_some() {
                if self.sessions.state(id) == Some(State::Searching) {
                    let away = false;
                    self.out
                        .push(Output::Match(MatchRequest::Away { sid: id, away }));
                }
            } else if let Some(pair) = self.matchmaker.set_present(id, now) {
                self.open_room(pair, now);
            }
        } else if let Some((room, _)) = chat {
            self.rooms.hand_out(room, id, Some(conn), &mut self.out);
        }
        self.broadcast.changed(now);
    }

    /// A socket closed (for any reason). Unknown connections are ignored.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        self.disconnected(conn, now);
        self.route(start);
    }

    fn disconnected(&mut self, conn: ConnId, now: Instant) {
        let Some((id, gen)) = self.sessions.detach(conn) else {
            return;
        };
        if let Some(home) = self.home_of(id) {
            // Its last socket here: the home keeps the grace period.
            let msg = ClusterMsg::Detach { sid: id, conn };
            self.out.push(Output::Bus { to: home, msg });
            return;
        }
        // Its last socket: the guest is away.
        let grace_end = now + self.cfg.grace_period;
        self.timers.schedule(grace_end, Timer::Grace(id, gen));
        if self.cluster.is_none() {
            self.matchmaker.set_away(id);
        } else if self.sessions.state(id) == Some(State::Searching) {
            let away = true;
            self.out
                .push(Output::Match(MatchRequest::Away { sid: id, away }));
        }
        self.stop_typing(id);
        if let Some((room, _)) = self.chat_of(id) {
            let out = &mut self.out;
            self.rooms.tell_presence(room, id, Presence::Away, out);
        }
        self.broadcast.changed(now);
    }

    /// One client event from socket `conn`. `Ok` is the ack payload; `Err` changed nothing
    /// (except, for floods, a [`Output::Close`] of that socket).
    pub fn handle_event(
        &mut self,
        conn: ConnId,
        event: ClientEvent,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let start = self.out.len();
        self.sessions.tick(now);
        let result = self.local_event(conn, event, now);
        self.route(start);
        result
    }

    /// One client event from socket `conn`, as [`Core::handle_event`], for a shell that may be
    /// in a cluster: an event of a guest whose chat lives on another node is forwarded there
    /// (`Ok(None)`; its ack comes as [`Output::Ack`] with `req`, or `service_unavailable` if
    /// that node does not answer within `bus_timeout`). `name` and `payload` are as received.
    pub fn handle_client_event(
        &mut self,
        conn: ConnId,
        req: u64,
        name: &str,
        payload: Option<&Value>,
        now: Instant,
    ) -> Result<Option<Ack>, SignalError> {
        let start = self.out.len();
        self.sessions.tick(now);
        let result = self.client_event(conn, req, name, payload, now);
        self.route(start);
        result
    }

    fn client_event(
        &mut self,
        conn: ConnId,
        req: u64,
        name: &str,
        payload: Option<&Value>,
        now: Instant,
    ) -> Result<Option<Ack>, SignalError> {
        let event = ClientEvent::parse(name, payload)?;
        let id = self
            .sessions
            .guest_of(conn)
            .ok_or(SignalError::Unauthorized)?;
        let Some(home) = self.home_of(id) else {
            let mark = self.out.len();
            let ack = self.local_event(conn, event, now)?;
            return Ok(self.hold_for_journal(id, conn, req, mark, ack, now));
        };
        self.throttle(conn, id, event.kind(), now)?;
        let draft = match &event {
            ClientEvent::ChatMessage { content, .. } => {
                Some((id, MessageType::Text, Content::Text(content.clone())))
            }
            _ => None,
        };
        let (name, payload) = (name.to_owned(), payload.cloned());
        self.forward(home, conn, req, draft, now, |bus_req| ClusterMsg::Event {
            sid: id,
            conn,
            req: bus_req,
            name,
            payload,
        })
    }

    /// (Cluster only.) A message local guest `id` just posted here (its journal entry among the
    /// outputs from `mark`): its acknowledgements (`ack` for request `req` of socket `conn`,
    /// and `chat:message:sent`) wait for the entry to be written, so that a message is never
    /// acknowledged and then lost with this node. Anything else is acked at once.
    fn hold_for_journal(
        &mut self,
        id: SessionId,
        conn: ConnId,
        req: u64,
        mark: usize,
        ack: Ack,
        now: Instant,
    ) -> Option<Ack> {
        let Some(c) = self.cluster.as_mut() else {
            return Some(ack);
        };
        if !matches!(ack, Ack::Sent { .. }) || c.held.len() >= MAX_PENDING {
            return Some(ack);
        }
        let mut outputs = self.out.take_from(mark);
        let Some(ticket_slot) = outputs.iter_mut().find_map(|o| match o {
            Output::Journal {
                op: JournalOp::Keep(_),
                ticket,
                ..
            } => Some(ticket),
            _ => None,
        }) else {
            for o in outputs {
                self.out.push(o);
            }
            return Some(ack);
        };
        c.next_ticket += 1;
        let ticket = c.next_ticket;
        *ticket_slot = Some(ticket);
        let mut held = Vec::new();
        for o in outputs {
            match o {
                Output::Emit {
                    to: Target::Guest(to),
                    event: event @ ServerEvent::Sent(_),
                } if to == id => held.push(Output::Emit {
                    to: Target::Guest(to),
                    event,
                }),
                o => self.out.push(o),
            }
        }
        let result = Ok(serde_json::to_value(ack).unwrap_or(Value::Null));
        held.push(Output::Ack { conn, req, result });
        c.held.insert(ticket, held);
        self.timers
            .schedule(now + self.cfg.bus_timeout, Timer::Journal(ticket));
        None
    }

    /// (Cluster only.) The journal entry of [`Output::Journal`] `ticket` was written (or could
    /// not be): the sender's acknowledgements held for it go out.
    pub fn handle_journaled(&mut self, ticket: u64, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        self.release_held(ticket);
        self.route(start);
    }

    fn release_held(&mut self, ticket: u64) {
        let held = self
            .cluster
            .as_mut()
            .and_then(|c| c.held.remove(&ticket))
            .unwrap_or_default();
        for o in held {
            self.out.push(o);
        }
    }

    /// Sends a request to the chat's home `home` (the message `make` builds with its bus
    /// request id): answered by [`Output::Ack`] with the shell's `req` (for socket `conn`),
    /// or `service_unavailable` after the bus timeout. `draft` is what a post carries, kept
    /// once the home acknowledges it (see `Cluster::outbox`).
    fn forward<T>(
        &mut self,
        home: NodeId,
        conn: ConnId,
        req: u64,
        draft: Option<(SessionId, MessageType, Content)>,
        now: Instant,
        make: impl FnOnce(u64) -> ClusterMsg,
    ) -> Result<Option<T>, SignalError> {
        let Some(c) = self.cluster.as_mut() else {
            return Err(SignalError::ServiceUnavailable);
        };
        if c.pending.len() >= MAX_PENDING {
            return Err(SignalError::ServiceUnavailable);
        }
        c.next_req += 1;
        let bus_req = c.next_req;
        c.pending.insert(bus_req, (conn, req));
        if let Some(draft) = draft {
            c.drafts.insert(bus_req, draft);
        }
        self.timers
            .schedule(now + self.cfg.bus_timeout, Timer::Request(bus_req));
        let msg = make(bus_req);
        self.out.push(Output::Bus { to: home, msg });
        Ok(None)
    }

    /// Charges one event to `id`'s limits; a flood closes socket `conn`.
    fn throttle(
        &mut self,
        conn: ConnId,
        id: SessionId,
        kind: EventKind,
        now: Instant,
    ) -> Result<(), SignalError> {
        match self.sessions.throttle(id, kind, now)? {
            Throttle::Refused { flood } => {
                if flood {
                    self.counters.floods_closed += 1;
                    let reason = CloseReason::Flood;
                    self.out.push(Output::Close { conn, reason });
                }
                Err(SignalError::RateLimited)
            }
            Throttle::Pass { woke: true } => {
                self.broadcast.changed(now);
                Ok(())
            }
            Throttle::Pass { woke: false } => Ok(()),
        }
    }

    fn local_event(
        &mut self,
        conn: ConnId,
        event: ClientEvent,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let id = self
            .sessions
            .guest_of(conn)
            .ok_or(SignalError::Unauthorized)?;
        if self.home_of(id).is_some() {
            // Only `handle_client_event` forwards (it has a request id for the ack).
            return Err(SignalError::ServiceUnavailable);
        }
        match self.sessions.throttle(id, event.kind(), now)? {
            Throttle::Refused { flood } => {
                if flood {
                    self.counters.floods_closed += 1;
                    let reason = CloseReason::Flood;
                    self.out.push(Output::Close { conn, reason });
                }
                return Err(SignalError::RateLimited);
            }
            Throttle::Pass { woke: true } => self.broadcast.changed(now),
            Throttle::Pass { woke: false } => {}
        }
        self.dispatch(id, event, now)
    }

    /// A client event of guest `id` that passed its limits.
    fn dispatch(
        &mut self,
        id: SessionId,
        event: ClientEvent,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        match event {
            ClientEvent::MatchStart { interests } => self.match_start(id, interests, now),
            ClientEvent::MatchCancel => self.match_cancel(id, now),
            ClientEvent::MatchNext { interests } => {
                let (room, _) = self.chat(id)?;
                self.end_chat(room, id, EndReason::Skipped, now);
                self.match_start(id, interests, now)
            }
            ClientEvent::ChatLeave => self.leave(id, EndReason::Left, now),
            ClientEvent::ChatReport { reason: _ } => self.leave(id, EndReason::Reported, now),
            ClientEvent::ChatMessage { client_id, content } => {
                let (kind, content) = (MessageType::Text, Content::Text(content));
                let (id, timestamp) = self.post_message(id, client_id, kind, content, now)?;
                Ok(Ack::Sent { id, timestamp })
            }
            ClientEvent::ChatRead { id: msg } => {
                let (room, _) = self.chat(id)?;
                let delivered = self.rooms.read(room, id, msg, &mut self.out)?;
                self.counters.receipts_delivered += delivered;
                self.counters.receipts_read += 1;
                Ok(Ack::Ok)
            }
            ClientEvent::TypingStart => {
                let (room, _) = self.chat(id)?;
                if let Some(gen) = self.rooms.start_typing(room, id, &mut self.out) {
                    let until = now + self.cfg.typing_timeout;
                    self.timers.schedule(until, Timer::Typing(id, gen));
                }
                Ok(Ack::Ok)
            }
            ClientEvent::TypingStop => {
                self.chat(id)?;
                self.stop_typing(id);
                Ok(Ack::Ok)
            }
            ClientEvent::CallRequest { video } => self.call_request(id, video, now),
            ClientEvent::CallAccept => {
                let (room, partner) = self.chat(id)?;
                self.calls.accept(room, id, now, &mut self.out)?;
                self.call_changed(room, [id, partner]);
                self.counters.calls_accepted += 1;
                Ok(Ack::Room { room_id: room })
            }
            ClientEvent::CallReject => {
                let (room, _) = self.chat(id)?;
                let call = self.calls.ringing_for(room, id)?;
                self.end_call(room, call, CallEndReason::Rejected);
                Ok(Ack::Ok)
            }
            ClientEvent::CallEnd => {
                let (room, _) = self.chat(id)?;
                let call = self.calls.current(room).ok_or(SignalError::NoCall)?;
                self.end_call(room, call, CallEndReason::Hangup);
                Ok(Ack::Ok)
            }
            event @ (ClientEvent::WebrtcOffer { .. }
            | ClientEvent::WebrtcAnswer { .. }
            | ClientEvent::WebrtcCandidate { .. }) => {
                let (room, _) = self.chat(id)?;
                self.calls.webrtc(room, id, event, &mut self.out)?;
                Ok(Ack::Ok)
            }
        }
    }

    /// A report from the media server. Events for a call that is over, or for a guest who is
    /// not in that call, are ignored.
    pub fn handle_media(&mut self, event: MediaEvent, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        let away = self.sessions.is_away(event.target().1);
        if let Some((room, call)) = self.calls.media(event, away, now, &mut self.out) {
            self.end_call(room, call, CallEndReason::Failed);
        }
        self.route(start);
    }

    /// A socket of the receiver acknowledged message `msg` of `room`: the message is no longer
    /// kept, and its sender gets `chat:message:delivered` (once, however many sockets ack it).
    pub fn handle_delivered(&mut self, room: RoomId, msg: MessageId, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        self.delivered(room, msg);
        self.route(start);
    }

    fn delivered(&mut self, room: RoomId, msg: MessageId) {
        let home = self
            .cluster
            .as_ref()
            .and_then(|c| c.remote_rooms.get(&room));
        if let Some(&home) = home {
            let msg = ClusterMsg::Delivered { room, msg };
            self.out.push(Output::Bus { to: home, msg });
            return;
        }
        if self.rooms.delivered(room, msg, &mut self.out) {
            self.counters.receipts_delivered += 1;
        }
    }

    /// A delivery reached no socket. Nothing to do: a message stays with its receiver until a
    /// socket acknowledges it, and goes out again to the receiver's next socket (kept so that
    /// shells may report failures; it changes nothing).
    pub fn handle_undelivered(&mut self, _to: SessionId, _message: ChatMessage, now: Instant) {
        self.sessions.tick(now);
    }

    /// Advances time: typing expiry, grace periods, session expiry, cooldowns, stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        let start = self.out.len();
        self.timeout(now);
        self.route(start);
    }

    fn timeout(&mut self, now: Instant) {
        self.sessions.tick(now);
        while let Some(timer) = self.timers.pop_due(now) {
            self.fire(timer, now);
        }
        if self.broadcast.take_due(now) {
            let stats = self.stats(now);
            if self.broadcast.publish(stats, now) {
                self.out.emit(Target::All, ServerEvent::Stats(stats));
            }
        }
    }

    // ---- outputs and queries ------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.broadcast.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The live statistics.
    /// The live statistics: of the whole cluster (this node's and the others' as last
    /// given to [`Core::handle_peer_stats`]).
    pub fn stats(&self, now: Instant) -> Stats {
        match &self.cluster {
            None => self.sessions.census(now),
            Some(c) => self.local_stats(now) + c.others,
        }
    }

    /// This node's share of the statistics: its guests, not the visitors it holds for chats
    /// homed here (their own node counts them).
    pub fn local_stats(&self, now: Instant) -> Stats {
        match &self.cluster {
            None => self.sessions.census(now),
            Some(c) => self
                .sessions
                .census_without(now, |id| c.visitors.contains_key(&id)),
        }
    }

    /// (Cluster only.) The other nodes' statistics, summed (from the node registry): the
    /// broadcast counts the whole cluster.
    pub fn handle_peer_stats(&mut self, others: Stats, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            if c.others != others {
                c.others = others;
                self.broadcast.changed(now);
            }
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How many calls are ringing, connecting and connected (for a gauge).
    pub fn call_states(&self) -> CallStates {
        self.calls.states()
    }

    /// The session's current id, if it lives (for the shell's refresh/auth checks).
    pub fn session_alive(&self, id: SessionId, now: Instant) -> bool {
        self.sessions.alive(id, now)
    }

    /// Milliseconds since the Unix epoch at `t`, on the core's anchored clock.
    pub fn unix_ms(&self, t: Instant) -> u64 {
        self.epoch_unix_ms + t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// (Cluster only.) Open sessions per client address that changed since the last call, with
    /// their count now (0: none left), for the shell to publish so that other nodes count them
    /// ([`Core::create_guest_counted`]); with `all`, every address that holds some (to refresh
    /// what was published). Empty on a single node.
    pub fn client_sessions(&mut self, all: bool) -> Vec<(ClientKey, usize)> {
        self.sessions.take_changed(all)
    }

    /// How many entries each of the core's tables holds, for leak watching (a soak run checks
    /// that every one of them levels off).
    pub fn sizes(&self) -> [(&'static str, usize); 9] {
        [
            ("sessions", self.sessions.len()),
            ("client_addresses", self.sessions.clients_len()),
            ("connections", self.sessions.conns_len()),
            ("rooms", self.rooms.len()),
            ("queue", self.matchmaker.len()),
            ("blocks", self.matchmaker.blocks_len()),
            ("timers", self.timers.len()),
            ("outputs", self.out.len()),
            ("calls", self.calls.len()),
        ]
    }

    /// The chat `id` is in and its partner, if any.
    /// The chat `id` is in and its partner, wherever the chat is homed (for the shell's HTTP
    /// routes: files, ICE servers).
    pub fn chat_anywhere(&self, id: SessionId) -> Option<(RoomId, SessionId)> {
        if let Some((_, room)) = self.cluster.as_ref().and_then(|c| c.homes.get(&id)) {
            let partner = self.cluster.as_ref()?.partners.get(&id)?.0;
            return Some((*room, partner));
        }
        self.chat_of(id)
    }

    /// (Cluster.) [`Core::post_file`] for a shell that may be in a cluster: a file of a guest
    /// whose chat lives on another node is posted there (`Ok(None)`; the answer comes as
    /// [`Output::Ack`] with `req`: `{ id, timestamp }`, or `service_unavailable` after the
    /// bus timeout).
    pub fn post_file_from(
        &mut self,
        id: SessionId,
        room: RoomId,
        client_id: String,
        file: FileInfo,
        req: u64,
        now: Instant,
    ) -> Result<Option<(MessageId, u64)>, SignalError> {
        let home = self
            .cluster
            .as_ref()
            .and_then(|c| c.homes.get(&id))
            .filter(|(_, r)| *r == room)
            .map(|(n, _)| *n);
        let Some(home) = home else {
            return self.post_file(id, room, client_id, file, now).map(Some);
        };
        self.sessions.tick(now);
        let kind = if file.duration_ms.is_some() {
            MessageType::Voice
        } else {
            MessageType::File
        };
        let draft = Some((id, kind, Content::File(Box::new(file.clone()))));
        // No socket: the answer goes to the shell's request alone.
        self.forward(home, ConnId(0), req, draft, now, |bus_req| {
            ClusterMsg::PostFile {
                sid: id,
                req: bus_req,
                room,
                client_id,
                file: Box::new(file),
            }
        })
    }

    /// (Cluster.) The bus told of `id`'s chat elsewhere less than [`RECORD_LAG`] ago.
    fn newly_homed(&self, id: SessionId, now: Instant) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.homed_at.get(&id))
            .is_some_and(|&at| now.saturating_duration_since(at) < RECORD_LAG)
    }

    pub fn chat_of(&self, id: SessionId) -> Option<(RoomId, SessionId)> {
        let State::InChat(room) = self.sessions.state(id)? else {
            return None;
        };
        self.rooms.partner(room, id).map(|partner| (room, partner))
    }

    /// The call (ringing or accepted) `id` is in, if any. In a cluster, for a guest of this
    /// node whose chat is homed at another node: its call there, as that node last said
    /// ([`ClusterMsg::CallState`]); see [`Core::media_node_of`].
    pub fn call_of(&self, id: SessionId) -> Option<CallId> {
        if let Some(c) = self.cluster.as_ref() {
            if c.homes.contains_key(&id) {
                return c.remote_calls.get(&id).map(|(_, _, call)| *call);
            }
        }
        let (room, _) = self.chat_of(id)?;
        self.calls.call_of(room, id)
    }

    /// (Cluster only.) The node whose media server terminates `id`'s call (its chat's home),
    /// when `id` is in a call ([`Core::call_of`]) and that node is not this one.
    pub fn media_node_of(&self, id: SessionId) -> Option<NodeId> {
        let c = self.cluster.as_ref()?;
        c.remote_calls.get(&id).map(|(node, _, _)| *node)
    }

    /// Posts a shared file (or voice note) from `id` into its chat `room` as a `file` (`voice`)
    /// message. Refused with `not_in_chat` when `id` is no longer in that very chat (it ended
    /// while the file was uploading), so the shell can drop the file.
    pub fn post_file(
        &mut self,
        id: SessionId,
        room: RoomId,
        client_id: String,
        file: FileInfo,
        now: Instant,
    ) -> Result<(MessageId, u64), SignalError> {
        if self.chat_of(id).map(|(r, _)| r) != Some(room) {
            return Err(SignalError::NotInChat);
        }
        let kind = if file.duration_ms.is_some() {
            MessageType::Voice
        } else {
            MessageType::File
        };
        let start = self.out.len();
        let posted = self.post_message(id, client_id, kind, Content::File(Box::new(file)), now);
        self.route(start);
        posted
    }

    // ---- cluster inputs -----------------------------------------------------------------

    /// A message from node `from`'s core (decoded from the bus).
    pub fn handle_bus(&mut self, from: NodeId, msg: ClusterMsg, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        if self.cluster.is_some() {
            self.bus(from, msg, now);
        }
        self.route(start);
    }

    /// The bus refused (or lost) `msg` for node `to`: a forwarded event is refused to its
    /// client with `service_unavailable` now instead of at its deadline.
    /// A partner message it refused is kept (as every message is until acknowledged) and
    /// handed out again every second until the bus takes it: accepted messages are delivered
    /// once the bus is back, never lost.
    pub fn handle_bus_failed(&mut self, _to: NodeId, msg: &ClusterMsg, now: Instant) {
        self.sessions.tick(now);
        match msg {
            ClusterMsg::Event { req, .. } | ClusterMsg::PostFile { req, .. } => {
                self.fail_request(*req)
            }
            ClusterMsg::Emit {
                sid,
                ack: Some((room, _)),
                ..
            } => {
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                c.unsent.insert(*sid, *room);
                if !c.retrying {
                    c.retrying = true;
                    self.timers.schedule(now + BUS_RETRY, Timer::BusRetry);
                }
            }
            _ => {}
        }
    }

    /// (Cluster only.) The answer to [`MatchRequest::Expiring`]: `sid`'s shared record still
    /// lives for `lives` (refreshed on another node: the session lives on here too), or is
    /// gone (`None`: the session expires now).
    pub fn handle_session_ttl(&mut self, sid: SessionId, lives: Option<Duration>, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        match lives {
            Some(d) if !d.is_zero() => {
                if let Some(at) = self.sessions.set_expiry(sid, now + d) {
                    self.timers.schedule(at, Timer::Expiry(sid));
                }
            }
            _ => {
                if self.sessions.contains(sid) {
                    self.remove_session(sid, now);
                    self.counters.sessions_expired += 1;
                }
            }
        }
        self.route(start);
    }

    /// (Cluster only.) Node `node` left the cluster (killed, or drained): for the chats it was
    /// home of, this node claims the room of each of its guests there
    /// ([`MatchRequest::Claim`]); the guests it had here are away (their grace period starts;
    /// they may come back through another node); events forwarded to it are refused now.
    pub fn handle_node_left(&mut self, node: NodeId, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        self.node_left(node, now);
        self.route(start);
    }

    /// (Cluster only.) Redis lost its data (restarted empty, or flushed): this node writes
    /// again what it holds, through the matchmaker's queue ([`Output::Match`]), in order:
    /// each guest's session record ([`MatchRequest::Restore`]: expiry, connected, its chat
    /// and, for chats homed here, its call), the pairs that may not meet again yet
    /// ([`MatchRequest::RecordEnd`]), and each searching guest's queue entry
    /// ([`MatchRequest::Enqueue`], after every record). Nothing changes for the guests.
    pub fn handle_records_lost(&mut self, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let Some(me) = c.node else {
            return;
        };
        let mut restores = Vec::new();
        let mut searches = Vec::new();
        for (id, expires_at, connected, state, away) in self.sessions.each() {
            if expires_at <= now {
                continue;
            }
            let visitor = c.visitors.contains_key(&id);
            let (chat, call) = match state {
                State::InChat(room) if self.rooms.contains(room) => {
                    let partner = self.rooms.partner(room, id);
                    let partner = partner.map(|p| (p, self.username(p)));
                    (
                        Some((me, room, partner)),
                        Some(self.calls.call_of(room, id)),
                    )
                }
                State::InChat(room) => match c.homes.get(&id) {
                    Some(&(home, r)) if r == room => {
                        (Some((home, room, c.partners.get(&id).cloned())), None)
                    }
                    _ => (None, None),
                },
                State::Searching => {
                    if let Some(interests) = c.searches.get(&id) {
                        searches.push(MatchRequest::Enqueue {
                            sid: id,
                            username: self.username(id),
                            interests: interests.clone(),
                            present: !away,
                        });
                    }
                    (None, None)
                }
                State::Online => (None, None),
            };
            // A visitor is written by its own node, but for the chat homed here.
            if visitor && chat.is_none() {
                continue;
            }
            restores.push(MatchRequest::Restore {
                sid: id,
                expires_ms: self.unix_ms(expires_at),
                connected: connected && !visitor,
                chat,
                call,
            });
        }
        let ends: Vec<MatchRequest> = c
            .ends
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(&(a, b), &(blocked, until))| MatchRequest::RecordEnd {
                a,
                b,
                blocked,
                ttl: until - now,
            })
            .collect();
        for req in restores.into_iter().chain(ends).chain(searches) {
            self.out.push(Output::Match(req));
        }
        self.route(start);
    }

    /// (Cluster only.) This node starts draining (it left the registry): every node it shares
    /// chats with is told ([`ClusterMsg::Shutdown`]) and takes them over at once; from now on
    /// nothing more goes to other nodes, and a node that still sends here is told again.
    pub fn begin_drain(&mut self, now: Instant) {
        self.sessions.tick(now);
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.draining = true;
        let mut nodes: Vec<NodeId> = c.remote.values().map(|(_, n)| *n).collect();
        nodes.extend(c.homes.values().map(|(n, _)| *n));
        nodes.extend(c.visitors.values().copied().flatten());
        nodes.sort();
        nodes.dedup();
        for to in nodes {
            self.out.push(Output::Bus {
                to,
                msg: ClusterMsg::Shutdown,
            });
        }
    }

    fn node_left(&mut self, node: NodeId, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        // Home side: its guests' remote connections close.
        let gone: Vec<ConnId> = c
            .remote
            .iter()
            .filter(|(_, (_, n))| *n == node)
            .map(|(conn, _)| *conn)
            .collect();
        // Guest's-node side: chats homed there.
        let orphans: Vec<(SessionId, RoomId)> = c
            .homes
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(g, (_, r))| (*g, *r))
            .collect();
        let waiting: Vec<u64> = c
            .pending
            .iter()
            .filter(|(_, (conn, _))| {
                self.sessions
                    .guest_of(*conn)
                    .and_then(|g| c.homes.get(&g))
                    .is_some_and(|(n, _)| *n == node)
            })
            .map(|(req, _)| *req)
            .collect();
        for conn in gone {
            self.disconnected(conn, now);
            if let Some(c) = self.cluster.as_mut() {
                c.drop_remote(conn);
            }
        }
        for req in waiting {
            self.fail_request(req);
        }
        for (_, room) in orphans {
            self.claim(room);
        }
    }

    /// (Cluster only.) The answer to [`MatchRequest::Claim`]: `winner` holds `room` now (this
    /// node: it opens the room again, the partner away until it attaches; another node: the
    /// local guests of the room attach there). `None`: the claim could not be made (Redis
    /// lost): this node takes the room, as it serves alone. `kept`: the room's journal (read by
    /// the winner): the partner messages the dead home had not delivered, handed out again
    /// (with their ids) when this node wins.
    pub fn handle_claim(
        &mut self,
        room: RoomId,
        winner: Option<NodeId>,
        mut kept: Vec<Kept>,
        now: Instant,
    ) {
        let start = self.out.len();
        self.sessions.tick(now);
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(waiters) = c.claims.remove(&room) else {
            return;
        };
        let me = c.node;
        let winner = winner.or(me);
        let locals: Vec<SessionId> = c
            .homes
            .iter()
            .filter(|(_, (_, r))| *r == room)
            .map(|(g, _)| *g)
            .collect();
        if winner == me {
            for g in locals {
                self.take_over(g, room, now);
            }
            kept.sort_by_key(|k| (k.message.timestamp, k.seq));
            let mut senders: Vec<SessionId> = kept.iter().map(|k| k.sender).collect();
            senders.sort();
            senders.dedup();
            for sender in senders {
                let messages = kept
                    .iter()
                    .filter(|k| k.sender == sender)
                    .map(|k| k.message.clone())
                    .collect();
                self.restore(room, sender, messages);
            }
            for (from, sid, rconn) in waiters {
                self.remote_attach(from, sid, rconn, now);
            }
        } else if let Some(winner) = winner {
            for g in locals {
                if let Some(c) = self.cluster.as_mut() {
                    c.homes.insert(g, (winner, room));
                    c.remote_rooms.insert(room, winner);
                    let kept: Vec<ChatMessage> = c.outbox.remove(&g).unwrap_or_default().into();
                    if !kept.is_empty() {
                        let msg = ClusterMsg::Restore {
                            room,
                            sender: g,
                            messages: kept,
                        };
                        self.out.push(Output::Bus { to: winner, msg });
                    }
                }
                for &conn in self.sessions.conns(g) {
                    let msg = ClusterMsg::Attach { sid: g, conn };
                    self.out.push(Output::Bus { to: winner, msg });
                }
            }
        }
        self.route(start);
    }

    /// After a takeover: `messages` that `sender` sent in `room` and the dead home had not
    /// delivered are kept for the partner, and handed out at once if it is connected.
    fn restore(&mut self, room: RoomId, sender: SessionId, messages: Vec<ChatMessage>) {
        if messages.is_empty() || !self.rooms.contains(room) {
            return;
        }
        let Some(receiver) = self.rooms.partner(room, sender) else {
            return;
        };
        let messages: Vec<ChatMessage> =
            messages.into_iter().filter(|m| m.room_id == room).collect();
        // Journaled here again: this node is their keeper now.
        for m in &messages {
            self.rooms.journal_keep(sender, m, &mut self.out);
        }
        self.rooms.restore_unacked(room, receiver, messages);
        if !self.sessions.is_away(receiver) {
            self.rooms.hand_out(room, receiver, None, &mut self.out);
        }
    }

    /// Queues local guest `id` again in the cluster's queue (a pair fell through) if it still
    /// searches, with the interests it searched with.
    fn requeue(&mut self, id: SessionId) {
        if self.sessions.state(id) != Some(State::Searching) {
            return;
        }
        let Some(s) = self.sessions.get(id) else {
            return;
        };
        let (username, present) = (s.username.clone(), !s.away());
        let interests = self
            .cluster
            .as_ref()
            .and_then(|c| c.searches.get(&id).cloned())
            .unwrap_or_default();
        self.out.push(Output::Match(MatchRequest::Enqueue {
            sid: id,
            username,
            interests,
            present,
        }));
    }

    /// Claims `room` (its home died) unless a claim is under way.
    fn claim(&mut self, room: RoomId) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = c.claims.entry(room) {
            e.insert(Vec::new());
            self.out.push(Output::Match(MatchRequest::Claim { room }));
        }
    }

    /// This node won `room`, whose home died: local guest `g` and its partner are in it again,
    /// homed here; the partner is away until a socket of it attaches (through any node), and
    /// the chat ends after the grace period if none does. Without a known partner the chat
    /// ends now.
    fn take_over(&mut self, g: SessionId, room: RoomId, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.homes.remove(&g);
        c.homed_at.remove(&g);
        c.remote_rooms.remove(&room);
        let partner = c.partners.remove(&g);
        let had_call = c.remote_calls.get(&g).is_some_and(|(_, r, _)| *r == room);
        if had_call {
            // Its media went through the dead home's SFU: the call is over.
            self.forget_remote_call(g, Some(room));
            let ended = CallEnded {
                room_id: room,
                reason: CallEndReason::Failed,
            };
            self.out
                .emit(Target::Guest(g), ServerEvent::CallEnded(ended));
            self.counters.calls_ended[CallEndReason::Failed as usize] += 1;
        }
        let Some((p, name)) = partner else {
            // Nothing to open again: the chat is over.
            self.sessions.set_state(g, State::Online);
            let ids = [(); 2].map(|()| MessageId::from_raw(self.rng.next_u64()));
            let timestamp = self.unix_ms(now);
            let reason = EndReason::Disconnected;
            // The partner is unknown here: only `g` is told ("Stranger has disconnected.").
            let nobody = SessionId::from_raw(0);
            announce_end(room, [nobody, g], reason, ids, timestamp, &mut self.out);
            self.counters.chats_ended[reason as usize] += 1;
            self.broadcast.changed(now);
            return;
        };
        if !self.sessions.contains(p) {
            let (expires_at, _) = self.sessions.insert(p, name, None, now);
            self.timers.schedule(expires_at, Timer::Expiry(p));
        }
        if let Some(c) = self.cluster.as_mut() {
            // Its node is unknown until it attaches; a visitor is never this node's guest.
            c.visitors.entry(p).or_insert(None);
        }
        let names = [g, p].map(|id| self.sessions.enter_chat(id, room));
        self.rooms.restore(room, [g, p]);
        // What `g` sent that the dead home had not delivered: kept for `p` again.
        let kept = self
            .cluster
            .as_mut()
            .and_then(|c| c.outbox.remove(&g))
            .unwrap_or_default();
        self.restore(room, g, kept.into());
        // A socket of `g` that connected while the home was already dead waited in vain for
        // its answer: every socket of `g` hears where it stands now.
        if let Some(established) = self.established(g) {
            for &conn in self.sessions.conns(g) {
                let event = ServerEvent::Established(established.clone());
                self.out.emit(Target::Conn(conn), event);
            }
        }
        if self.sessions.is_away(p) {
            if let Some(gen) = self.sessions.presence_gen(p) {
                let grace_end = now + self.cfg.grace_period;
                self.timers.schedule(grace_end, Timer::Grace(p, gen));
            }
            self.rooms
                .tell_presence(room, p, Presence::Away, &mut self.out);
        }
        self.record_homes(Some(room), [g, p], Some(names));
        self.broadcast.changed(now);
    }

    /// An answer of the cluster's matchmaker for a guest of this node.
    pub fn handle_match(&mut self, answer: MatchAnswer, now: Instant) {
        let start = self.out.len();
        self.sessions.tick(now);
        if self.cluster.is_some() {
            self.matched(answer, now);
        }
        self.route(start);
    }

    // ---- internals ----------------------------------------------------------------------

    /// The node a local guest's chat lives on, when not this one.
    fn home_of(&self, id: SessionId) -> Option<NodeId> {
        let c = self.cluster.as_ref()?;
        c.homes.get(&id).map(|(node, _)| *node)
    }

    fn bus(&mut self, from: NodeId, msg: ClusterMsg, now: Instant) {
        if self.cluster.as_ref().is_some_and(|c| c.draining) {
            // Whoever still sends here takes its chats over (and an event is refused now).
            match msg {
                ClusterMsg::Event { req, .. } => {
                    let result = AckResult::Err(SignalError::ServiceUnavailable.code().to_owned());
                    let msg = ClusterMsg::Ack { req, result };
                    self.out.push(Output::Bus { to: from, msg });
                }
                ClusterMsg::Shutdown => return self.node_left(from, now),
                _ => {}
            }
            let msg = ClusterMsg::Shutdown;
            self.out.push(Output::Bus { to: from, msg });
            return;
        }
        match msg {
            ClusterMsg::Attach { sid, conn } => self.remote_attach(from, sid, conn, now),
            ClusterMsg::Detach { sid, .. } => {
                let conn = self.cluster.as_ref().and_then(|c| {
                    let conns = c.remote_of.get(&sid)?;
                    conns.iter().find(|(n, _)| *n == from).map(|(_, c)| *c)
                });
                if let Some(conn) = conn {
                    self.disconnected(conn, now);
                    if let Some(c) = self.cluster.as_mut() {
                        c.drop_remote(conn);
                    }
                }
            }
            ClusterMsg::Event {
                sid,
                conn,
                req,
                name,
                payload,
            } => {
                let result = self.remote_event(from, sid, conn, &name, payload.as_ref(), now);
                let msg = ClusterMsg::Ack { req, result };
                self.out.push(Output::Bus { to: from, msg });
            }
            ClusterMsg::Ack { req, result } => self.remote_ack(req, result, now),
            ClusterMsg::Emit {
                sid,
                conn,
                name,
                payload,
                ack,
            } => {
                // Only the guest's chat's home speaks for it (not a home whose pair went stale,
                // nor one it left).
                if self.home_of(sid) != Some(from) {
                    return;
                }
                if name == "chat:message:delivered" {
                    let id = payload.get("id").and_then(Value::as_str);
                    if let (Some(id), Some(c)) =
                        (id.and_then(MessageId::parse), self.cluster.as_mut())
                    {
                        if let Some(kept) = c.outbox.get_mut(&sid) {
                            kept.retain(|m| m.id != id);
                        }
                    }
                }
                let to = conn.map_or(Target::Guest(sid), Target::Conn);
                self.out.push(Output::Relay {
                    to,
                    name,
                    payload,
                    ack,
                });
            }
            ClusterMsg::Delivered { room, msg } => {
                if self.rooms.delivered(room, msg, &mut self.out) {
                    self.counters.receipts_delivered += 1;
                }
            }
            ClusterMsg::Paired {
                sid,
                room,
                partner,
                partner_name,
            } => {
                // Stale (the guest is gone, or no longer searching): the home ends the chat.
                if self.sessions.state(sid) != Some(State::Searching) {
                    let msg = ClusterMsg::Declined { sid, room };
                    self.out.push(Output::Bus { to: from, msg });
                } else {
                    self.sessions.set_state(sid, State::InChat(room));
                    if let Some(c) = self.cluster.as_mut() {
                        c.homes.insert(sid, (from, room));
                        c.homed_at.insert(sid, now);
                        c.remote_rooms.insert(room, from);
                        c.partners.insert(sid, (partner, partner_name));
                    }
                    // Counted once, by the home.
                    self.broadcast.changed(now);
                }
            }
            ClusterMsg::Released { sid, room } => self.release_local(sid, room, now),
            ClusterMsg::CallState { sid, room, call } => self.remote_call(from, sid, room, call),
            ClusterMsg::Matched {
                seeker,
                partner,
                partner_name,
                partner_node,
            } => self.matched(
                MatchAnswer::Paired {
                    seeker,
                    partner,
                    partner_name,
                    partner_node,
                },
                now,
            ),
            ClusterMsg::PostFile {
                sid,
                req,
                room,
                client_id,
                file,
            } => {
                let result = match self.post_file(sid, room, client_id, *file, now) {
                    Ok((id, timestamp)) => {
                        if let Some(c) = self.cluster.as_mut() {
                            let nodes = c.file_nodes.entry(room).or_default();
                            if !nodes.contains(&from) && nodes.len() < 8 {
                                nodes.push(from);
                            }
                        }
                        AckResult::Ok(serde_json::json!({ "id": id, "timestamp": timestamp }))
                    }
                    Err(e) => AckResult::Err(e.code().to_owned()),
                };
                let msg = ClusterMsg::Ack { req, result };
                self.out.push(Output::Bus { to: from, msg });
            }
            ClusterMsg::RoomClosed { room } => self.out.push(Output::RoomClosed(room)),
            ClusterMsg::Requeue { sid } => self.requeue(sid),
            ClusterMsg::Restore {
                room,
                sender,
                messages,
            } => self.restore(room, sender, messages),
            ClusterMsg::Declined { sid, room } => {
                let visitor = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.visitors.contains_key(&sid));
                if visitor && self.chat_of(sid).is_some_and(|(r, _)| r == room) {
                    self.end_chat(room, sid, EndReason::Disconnected, now);
                }
            }
            ClusterMsg::Shutdown => self.node_left(from, now),
        }
    }

    /// A socket of `sid` on `from` connected: as [`Core::connect`] for a local one.
    fn remote_attach(&mut self, from: NodeId, sid: SessionId, rconn: ConnId, now: Instant) {
        if !matches!(self.sessions.state(sid), Some(State::InChat(_))) {
            // The partner of a local guest whose room this node is claiming: replayed if the
            // claim is won.
            if let Some(c) = self.cluster.as_mut() {
                let room = c
                    .partners
                    .iter()
                    .find(|(_, (p, _))| *p == sid)
                    .and_then(|(g, _)| c.homes.get(g))
                    .map(|(_, r)| *r);
                if let Some(waiters) = room.and_then(|r| c.claims.get_mut(&r)) {
                    if waiters.len() < 8 {
                        waiters.push((from, sid, rconn));
                    }
                }
            }
            return;
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.ctx = Some((from, rconn));
        let (conn, new) = c.remote_conn(sid, from);
        let returning = if new {
            match self.sessions.attach(sid, conn, now) {
                Ok(returning) => returning,
                Err(_) => return,
            }
        } else {
            false
        };
        self.connected(sid, conn, returning, now);
        // The guest's node (maybe a new one) learns its call too.
        if let Some((room, partner)) = self.chat_of(sid) {
            if self.calls.call_of(room, sid).is_some() {
                self.call_changed(room, [sid, partner]);
            }
        }
    }

    /// A client event of `sid`'s socket `rconn` on `from`: the ack for it.
    fn remote_event(
        &mut self,
        from: NodeId,
        sid: SessionId,
        rconn: ConnId,
        name: &str,
        payload: Option<&Value>,
        now: Instant,
    ) -> AckResult {
        let refuse = |e: SignalError| AckResult::Err(e.code().to_owned());
        let attached = self.cluster.as_ref().is_some_and(|c| {
            c.remote_of
                .get(&sid)
                .is_some_and(|conns| conns.iter().any(|(n, _)| *n == from))
        });
        if !attached {
            return refuse(SignalError::NotInChat);
        }
        let event = match ClientEvent::parse(name, payload) {
            Ok(event) => event,
            Err(e) => return refuse(e),
        };
        if let Some(c) = self.cluster.as_mut() {
            c.ctx = Some((from, rconn));
        }
        if let ClientEvent::MatchNext { interests } = event {
            // The chat ends here; the search is the guest's node's to start.
            return match self.chat(sid) {
                Ok((room, _)) => {
                    self.end_chat(room, sid, EndReason::Skipped, now);
                    AckResult::Next(interests)
                }
                Err(e) => refuse(e),
            };
        }
        match self.dispatch(sid, event, now) {
            Ok(ack) => AckResult::Ok(serde_json::to_value(ack).unwrap_or(Value::Null)),
            Err(e) => refuse(e),
        }
    }

    /// The ack of a forwarded event.
    fn remote_ack(&mut self, bus_req: u64, result: AckResult, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((conn, req)) = c.pending.remove(&bus_req) else {
            return;
        };
        let draft = c.drafts.remove(&bus_req);
        if let (Some((sender, kind, content)), AckResult::Ok(ack)) = (draft, &result) {
            let id = ack
                .get("id")
                .and_then(Value::as_str)
                .and_then(MessageId::parse);
            let timestamp = ack.get("timestamp").and_then(Value::as_u64);
            let room = c.homes.get(&sender).map(|(_, r)| *r);
            if let (Some(id), Some(timestamp), Some(room_id)) = (id, timestamp, room) {
                let kept = c.outbox.entry(sender).or_default();
                if kept.len() >= self.cfg.away_queue_max {
                    kept.pop_front();
                }
                kept.push_back(ChatMessage {
                    id,
                    room_id,
                    kind,
                    content,
                    timestamp,
                    from: Sender::Partner,
                });
            }
        }
        let result = match result {
            AckResult::Ok(ack) => Ok(ack),
            AckResult::Err(code) => {
                Err(SignalError::from_code(&code).unwrap_or(SignalError::ServiceUnavailable))
            }
            AckResult::Next(interests) => match self.sessions.guest_of(conn) {
                Some(id) => {
                    if let Some((_, room)) = self.cluster.as_ref().and_then(|c| c.homes.get(&id)) {
                        let room = *room;
                        self.release_local(id, room, now);
                    }
                    self.match_start(id, interests, now)
                        .map(|ack| serde_json::to_value(ack).unwrap_or(Value::Null))
                }
                None => Err(SignalError::Unauthorized),
            },
        };
        self.out.push(Output::Ack { conn, req, result });
    }

    /// A forwarded event's ack will not come: refused with `service_unavailable`.
    fn fail_request(&mut self, bus_req: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.drafts.remove(&bus_req);
        if let Some((conn, req)) = c.pending.remove(&bus_req) {
            let result = Err(SignalError::ServiceUnavailable);
            self.out.push(Output::Ack { conn, req, result });
        }
    }

    /// `id`'s chat `room` at another node ended: the guest is this node's again.
    fn release_local(&mut self, id: SessionId, room: RoomId, now: Instant) {
        self.forget_remote_call(id, Some(room));
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.remote_rooms.remove(&room);
        if c.homes.get(&id).is_some_and(|(_, r)| *r == room) {
            c.homes.remove(&id);
            c.homed_at.remove(&id);
            c.partners.remove(&id);
            c.outbox.remove(&id);
            if self.sessions.state(id) == Some(State::InChat(room)) {
                self.sessions.set_state(id, State::Online);
            }
            self.broadcast.changed(now);
        }
    }

    /// Guest's node: the home `from` says `sid`'s call in `room` is `call` (`None`: over).
    /// A call that ends, or that another replaces, is revoked here ([`Output::CallEnded`]).
    fn remote_call(&mut self, from: NodeId, sid: SessionId, room: RoomId, call: Option<CallId>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match call {
            Some(call) => {
                // Only the guest's current chat's home speaks for its call.
                if c.homes.get(&sid) != Some(&(from, room)) {
                    return;
                }
                if let Some((_, _, old)) = c.remote_calls.insert(sid, (from, room, call)) {
                    if old != call {
                        self.out.push(Output::CallEnded(old));
                    }
                }
            }
            None => {
                if c.remote_calls.get(&sid).is_some_and(|(n, _, _)| *n == from) {
                    self.forget_remote_call(sid, Some(room));
                }
            }
        }
    }

    /// Guest's node: `id`'s call at another node (in `room`, or in any) is over for this node:
    /// what was handed out for it is revoked.
    fn forget_remote_call(&mut self, id: SessionId, room: Option<RoomId>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some(&(_, r, call)) = c.remote_calls.get(&id) {
            if room.is_none_or(|room| room == r) {
                c.remote_calls.remove(&id);
                self.out.push(Output::CallEnded(call));
            }
        }
    }

    fn matched(&mut self, answer: MatchAnswer, now: Instant) {
        match answer {
            MatchAnswer::Paired {
                seeker,
                partner,
                partner_name,
                partner_node,
            } => {
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                let local_partner = c.node == Some(partner_node);
                if self.sessions.state(seeker) != Some(State::Searching) {
                    // The seeker stopped searching meanwhile: the partner, taken out of the
                    // queue for nothing, goes back in.
                    if local_partner {
                        self.requeue(partner);
                    } else {
                        let msg = ClusterMsg::Requeue { sid: partner };
                        self.out.push(Output::Bus {
                            to: partner_node,
                            msg,
                        });
                    }
                    return;
                }
                if local_partner {
                    if self.sessions.state(partner) == Some(State::Searching) {
                        self.open_room([seeker, partner], now);
                    } else {
                        self.requeue(seeker);
                    }
                    return;
                }
                // The partner is on another node: this core is the room's home.
                if !self.sessions.contains(partner) {
                    self.sessions.insert(partner, partner_name, None, now);
                    c.visitors.insert(partner, Some(partner_node));
                }
                let (conn, new) = c.remote_conn(partner, partner_node);
                if new && self.sessions.attach(partner, conn, now).is_err() {
                    return;
                }
                let room = self.fresh_room();
                let msg = ClusterMsg::Paired {
                    sid: partner,
                    partner: seeker,
                    partner_name: self.username(seeker),
                    room,
                };
                self.out.push(Output::Bus {
                    to: partner_node,
                    msg,
                });
                self.open_room_as(room, [seeker, partner], now);
            }
            MatchAnswer::Refused { sid, error } => {
                if self.sessions.state(sid) == Some(State::Searching) {
                    // Its `match:start` was acknowledged; the search did not start after all.
                    self.sessions.set_state(sid, State::Online);
                    let error = ErrorEvent {
                        code: error.code(),
                        message: error.to_string(),
                        event: "match:start",
                    };
                    self.out.emit(Target::Guest(sid), ServerEvent::Error(error));
                    self.broadcast.changed(now);
                }
            }
        }
    }

    /// Rewrites this input's outputs (from `start` on) for the cluster: what is for a guest
    /// with remote connections goes to their nodes over the bus; then releases the guests
    /// whose chat ended here. Nothing on a single node.
    fn route(&mut self, start: usize) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let outputs = self.out.take_from(start);
        // Calls that changed: the guests' nodes learn it before the events that tell the
        // guests (a client that saw `call:incoming` finds its call at its node).
        let mut sync = std::mem::take(&mut c.call_sync);
        sync.sort();
        sync.dedup();
        for (room, id) in sync {
            let current = self.calls.call_of(room, id);
            // The record too: a node that adopts the guest mid-call (an HTTP request of it
            // landed there) knows the call.
            let req = MatchRequest::CallRecord {
                sid: id,
                call: current,
            };
            self.out.push(Output::Match(req));
            if c.told
                .get(&id)
                .is_some_and(|(_, call, _)| Some(*call) != current)
            {
                if let Some((room, _, nodes)) = c.told.remove(&id) {
                    for node in nodes {
                        let msg = ClusterMsg::CallState {
                            sid: id,
                            room,
                            call: None,
                        };
                        self.out.push(Output::Bus { to: node, msg });
                    }
                }
            }
            let Some(call) = current else {
                continue;
            };
            let nodes = c.nodes_of(id);
            if nodes.is_empty() {
                continue;
            }
            let told = c.told.entry(id).or_insert_with(|| (room, call, Vec::new()));
            for node in nodes {
                let msg = ClusterMsg::CallState {
                    sid: id,
                    room,
                    call: Some(call),
                };
                self.out.push(Output::Bus { to: node, msg });
                if !told.2.contains(&node) {
                    told.2.push(node);
                }
            }
        }
        for out in outputs {
            match out {
                Output::Emit {
                    to: Target::Guest(id),
                    event,
                } if c.remote_of.contains_key(&id) => {
                    for (node, _) in c.remote_of.get(&id).into_iter().flatten() {
                        let msg = relay(id, None, &event);
                        self.out.push(Output::Bus { to: *node, msg });
                    }
                    let conns = self.sessions.conns(id);
                    if conns.iter().any(|conn| !c.remote.contains_key(conn)) {
                        self.out.push(Output::Emit {
                            to: Target::Guest(id),
                            event,
                        });
                    }
                }
                Output::Deliver { to, message } if c.remote_of.contains_key(&to) => {
                    for (node, _) in c.remote_of.get(&to).into_iter().flatten() {
                        let msg = relay_message(to, None, &message);
                        self.out.push(Output::Bus { to: *node, msg });
                    }
                    let conns = self.sessions.conns(to);
                    if conns.iter().any(|conn| !c.remote.contains_key(conn)) {
                        self.out.push(Output::Deliver { to, message });
                    }
                }
                Output::Emit {
                    to: Target::Conn(conn),
                    event,
                } if c.remote.contains_key(&conn) => {
                    if let Some(&(id, node)) = c.remote.get(&conn) {
                        let msg = relay(id, c.ctx_conn(node), &event);
                        self.out.push(Output::Bus { to: node, msg });
                    }
                }
                Output::Redeliver { conn, message } if c.remote.contains_key(&conn) => {
                    if let Some(&(id, node)) = c.remote.get(&conn) {
                        let msg = relay_message(id, c.ctx_conn(node), &message);
                        self.out.push(Output::Bus { to: node, msg });
                    }
                }
                // Its own node closes a flooding socket.
                Output::Close { conn, .. } if c.remote.contains_key(&conn) => {}

                out => self.out.push(out),
            }
        }
        c.ctx = None;
        for (id, room) in std::mem::take(&mut c.releasing) {
            let nodes = c.nodes_of(id);
            for node in nodes {
                let msg = ClusterMsg::Released { sid: id, room };
                self.out.push(Output::Bus { to: node, msg });
            }
            for (_, conn) in c.remote_of.remove(&id).unwrap_or_default() {
                c.remote.remove(&conn);
                self.sessions.detach(conn);
            }
            if c.visitors.remove(&id).is_some() && self.sessions.conns(id).is_empty() {
                self.sessions.remove(id);
            }
        }
        if c.draining {
            // The others took its chats over: only answers and notices go out.
            for out in self.out.take_from(start) {
                match out {
                    Output::Bus { msg, .. }
                        if !matches!(msg, ClusterMsg::Ack { .. } | ClusterMsg::Shutdown) => {}
                    out => self.out.push(out),
                }
            }
        }
    }

    fn random_u128(&mut self) -> u128 {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        u128::from_le_bytes(b)
    }

    /// [`Core::chat_of`], refused with `not_in_chat`.
    fn chat(&self, id: SessionId) -> Result<(RoomId, SessionId), SignalError> {
        self.chat_of(id).ok_or(SignalError::NotInChat)
    }

    fn established(&self, id: SessionId) -> Option<Established> {
        let s = self.sessions.get(id)?;
        let (state, room) = match s.state {
            State::Online => (GuestState::Online, None),
            State::Searching => (GuestState::Searching, None),
            State::InChat(_) => {
                let room = self.chat_of(id).map(|(room, partner)| RoomInfo {
                    room_id: room,
                    partner: Partner {
                        username: self.username(partner),
                    },
                    call: self.calls.info_for(room, id),
                });
                (GuestState::InChat, room)
            }
        };
        Some(Established {
            session_id: id,
            username: s.username.clone(),
            state,
            room,
        })
    }

    fn username(&self, id: SessionId) -> String {
        self.sessions
            .get(id)
            .map(|s| s.username.clone())
            .unwrap_or_default()
    }

    fn match_start(
        &mut self,
        id: SessionId,
        interests: Vec<String>,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let s = self.sessions.get(id).ok_or(SignalError::Unauthorized)?;
        match s.state {
            State::Online => {}
            State::Searching => return Err(SignalError::AlreadySearching),
            State::InChat(_) => return Err(SignalError::AlreadyInChat),
        }
        let present = !s.away();
        if let Some(c) = self.cluster.as_mut() {
            let username = s.username.clone();
            self.sessions.searching_from(id, now);
            c.searches.insert(id, interests.clone());
            self.sessions.set_state(id, State::Searching);
            self.out
                .emit(Target::Guest(id), ServerEvent::Searching(Empty {}));
            self.out.push(Output::Match(MatchRequest::Enqueue {
                sid: id,
                username,
                interests,
                present,
            }));
            self.broadcast.changed(now);
            return Ok(Ack::State(GuestState::Searching));
        }
        let entry = Entry {
            id,
            interests,
            present,
        };
        self.sessions.searching_from(id, now);
        let pair = self.matchmaker.enqueue(entry, now)?;
        self.sessions.set_state(id, State::Searching);
        self.out
            .emit(Target::Guest(id), ServerEvent::Searching(Empty {}));
        self.broadcast.changed(now);
        let state = match pair {
            Some(pair) => {
                self.open_room(pair, now);
                GuestState::InChat
            }
            None => GuestState::Searching,
        };
        Ok(Ack::State(state))
    }

    fn match_cancel(&mut self, id: SessionId, now: Instant) -> Result<Ack, SignalError> {
        if self.sessions.state(id).ok_or(SignalError::Unauthorized)? != State::Searching {
            return Err(SignalError::NotSearching);
        }
        self.sessions.set_state(id, State::Online);
        if self.cluster.is_some() {
            self.out
                .push(Output::Match(MatchRequest::Cancel { sid: id }));
        } else {
            self.matchmaker.cancel(id);
        }
        self.broadcast.changed(now);
        Ok(Ack::State(GuestState::Online))
    }

    /// Opens a room for two guests the matchmaker paired.
    fn open_room(&mut self, pair: Pair, now: Instant) {
        let room = self.fresh_room();
        self.open_room_as(room, pair, now);
    }

    fn fresh_room(&mut self) -> RoomId {
        loop {
            let r = RoomId::from_raw(self.random_u128());
            if !self.rooms.contains(r) {
                break r;
            }
        }
    }

    /// (Cluster.) The session records of guests `a` and `b` (named `names`): their chat is
    /// `room`, homed here, each the other's partner; or (`None`) they have none.
    fn record_homes(&mut self, room: Option<RoomId>, [a, b]: Pair, names: Option<[String; 2]>) {
        let [na, nb] = names.map_or([None, None], |[na, nb]| [Some(na), Some(nb)]);
        let ttl = self.cfg.token_ttl;
        for (sid, partner) in [(a, nb.map(|n| (b, n))), (b, na.map(|n| (a, n)))] {
            self.out.push(Output::Match(MatchRequest::Home {
                sid,
                room,
                partner,
                ttl,
            }));
        }
    }

    fn open_room_as(&mut self, room: RoomId, [a, b]: Pair, now: Instant) {
        for id in [a, b] {
            if let Some(waited) = self.sessions.take_search_wait(id, now) {
                self.out.push(Output::MatchWait(waited));
            }
        }
        let names = [a, b].map(|id| self.sessions.enter_chat(id, room));
        if self.cluster.is_some() {
            self.record_homes(Some(room), [a, b], Some(names.clone()));
        }
        self.rooms.open(room, [a, b], names, &mut self.out);
        self.counters.matches += 1;
        self.broadcast.changed(now);
    }

    fn stop_typing(&mut self, id: SessionId) {
        if let Some((room, _)) = self.chat_of(id) {
            self.rooms.stop_typing(room, id, &mut self.out);
        }
    }

    /// `chat:leave` and `chat:report`.
    fn leave(
        &mut self,
        id: SessionId,
        reason: EndReason,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let (room, _) = self.chat(id)?;
        self.end_chat(room, id, reason, now);
        Ok(Ack::State(GuestState::Online))
    }

    fn end_chat(&mut self, room: RoomId, actor: SessionId, reason: EndReason, now: Instant) {
        self.stop_typing(actor);
        let Some([actor, other]) = self.rooms.close(room, actor) else {
            return;
        };
        self.out.push(Output::RoomClosed(room));
        self.rooms.journal_clear(room, &mut self.out);
        // A guest removed because its grace ran out has no socket to tell.
        let told = reason != EndReason::Disconnected || !self.sessions.is_away(actor);
        if self
            .calls
            .end_room(room, [actor, other], told, &mut self.out)
        {
            self.counters.calls_ended[CallEndReason::PartnerLeft as usize] += 1;
            self.call_changed(room, [actor, other]);
        }
        for id in [actor, other] {
            self.sessions.set_state(id, State::Online);
        }
        let ids = [(); 2].map(|()| MessageId::from_raw(self.rng.next_u64()));
        let timestamp = self.unix_ms(now);
        announce_end(room, [actor, other], reason, ids, timestamp, &mut self.out);
        let reported = reason == EndReason::Reported;
        if self.cluster.is_some() {
            self.record_homes(None, [actor, other], None);
        }
        if let Some(c) = self.cluster.as_mut() {
            for to in c.file_nodes.remove(&room).unwrap_or_default() {
                let msg = ClusterMsg::RoomClosed { room };
                self.out.push(Output::Bus { to, msg });
            }
            let ttl = if reported {
                self.cfg.token_ttl
            } else {
                self.cfg.repair_cooldown
            };
            self.out.push(Output::Match(MatchRequest::RecordEnd {
                a: actor,
                b: other,
                blocked: reported,
                ttl,
            }));
            if c.ends.len() >= MAX_ENDS {
                c.ends.retain(|_, (_, until)| *until > now);
            }
            let key = if actor < other {
                (actor, other)
            } else {
                (other, actor)
            };
            if c.ends.len() < MAX_ENDS || c.ends.contains_key(&key) {
                let end = c.ends.entry(key).or_insert((reported, now + ttl));
                if !end.0 || reported {
                    *end = (reported, (now + ttl).max(end.1));
                }
            }
            if !reported {
                let until = now + ttl;
                self.timers.schedule(until, Timer::Unblock(actor, other));
            }
            for id in [actor, other] {
                if c.remote_of.contains_key(&id) || c.visitors.contains_key(&id) {
                    c.releasing.push((id, room));
                }
            }
        } else if let Some(until) = self.matchmaker.ended(actor, other, reported, now) {
            self.timers.schedule(until, Timer::Unblock(actor, other));
        }
        self.counters.chats_ended[reason as usize] += 1;
        self.broadcast.changed(now);
    }

    /// Posts a message into `id`'s chat: `chat:message:sent` to the sender, delivery (or the
    /// away queue) to the partner, receipts as for any message.
    fn post_message(
        &mut self,
        id: SessionId,
        client_id: String,
        kind: MessageType,
        content: Content,
        now: Instant,
    ) -> Result<(MessageId, u64), SignalError> {
        let (room, partner) = self.chat(id)?;
        let away = self
            .sessions
            .get(partner)
            .ok_or(SignalError::NotInChat)?
            .away();
        self.rooms.check_room_for(room, partner)?;
        self.rooms.stop_typing(room, id, &mut self.out);
        let msg_id = MessageId::from_raw(self.rng.next_u64());
        let timestamp = self.unix_ms(now);
        let message = ChatMessage {
            id: msg_id,
            room_id: room,
            kind,
            content,
            timestamp,
            from: Sender::Partner,
        };
        self.rooms.post(id, client_id, message, away, &mut self.out);
        self.counters.messages_relayed += 1;
        Ok((msg_id, timestamp))
    }

    fn call_request(
        &mut self,
        id: SessionId,
        video: bool,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let (room, partner) = self.chat(id)?;
        let call = self
            .calls
            .request(room, [id, partner], video, &mut self.out)?;
        self.call_changed(room, [id, partner]);
        let ring_end = now + self.cfg.ring_timeout;
        self.timers.schedule(ring_end, Timer::Ring(room, call));
        self.counters.calls_requested += 1;
        Ok(Ack::Room { room_id: room })
    }

    /// Ends the room's call `call` (if it is still the current one), telling both guests why.
    fn end_call(&mut self, room: RoomId, call: CallId, reason: CallEndReason) {
        let guests = self.calls.guests(room);
        if self.calls.end(room, call, reason, &mut self.out) {
            self.counters.calls_ended[reason as usize] += 1;
            if let Some(guests) = guests {
                self.call_changed(room, guests);
            }
        }
    }

    /// (Cluster only.) The call of `room` started, was accepted or ended: the nodes of those
    /// of `guests` that are remote learn it when this input's outputs are routed.
    fn call_changed(&mut self, room: RoomId, guests: [SessionId; 2]) {
        if let Some(c) = self.cluster.as_mut() {
            c.call_sync.extend(guests.map(|g| (room, g)));
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Typing(id, gen) => {
                let on = self
                    .chat_of(id)
                    .is_some_and(|(room, _)| self.rooms.is_typing(room, id, gen));
                if on {
                    self.stop_typing(id);
                }
            }
            Timer::Grace(id, gen) => match self.sessions.grace_over(id, gen) {
                Some(State::InChat(room)) => self.end_chat(room, id, EndReason::Disconnected, now),
                Some(State::Searching) => {
                    let _ = self.match_cancel(id, now);
                }
                Some(State::Online) | None => {}
            },
            Timer::Expiry(id) => {
                if self.sessions.expired(id, now) {
                    if self.cluster.is_some() {
                        // Maybe refreshed on another node: the shared record says.
                        let req = MatchRequest::Expiring { sid: id };
                        self.out.push(Output::Match(req));
                    } else {
                        self.remove_session(id, now);
                        self.counters.sessions_expired += 1;
                    }
                }
            }
            Timer::Unconnected(id) => {
                if self.sessions.unconnected(id, now) {
                    self.remove_session(id, now);
                    self.counters.sessions_reaped += 1;
                    if self.cluster.is_some() {
                        self.out.push(Output::Match(MatchRequest::Reap { sid: id }));
                    }
                }
            }
            Timer::Unblock(a, b) if self.cluster.is_some() => {
                if let Some(c) = self.cluster.as_mut() {
                    let key = if a < b { (a, b) } else { (b, a) };
                    if c.ends.get(&key).is_some_and(|(_, until)| *until <= now) {
                        c.ends.remove(&key);
                    }
                }
                let req = MatchRequest::CooldownOver { a, b };
                self.out.push(Output::Match(req));
            }
            Timer::Request(req) => self.fail_request(req),
            Timer::Journal(ticket) => self.release_held(ticket),
            Timer::BusRetry => {
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                c.retrying = false;
                for (sid, room) in std::mem::take(&mut c.unsent) {
                    if self.sessions.state(sid) == Some(State::InChat(room)) {
                        self.rooms.hand_out(room, sid, None, &mut self.out);
                    }
                }
            }
            Timer::Unblock(a, b) => {
                for pair in self
                    .matchmaker
                    .cooldown_over(a, b, now)
                    .into_iter()
                    .flatten()
                {
                    self.open_room(pair, now);
                }
            }
            Timer::Ring(room, call) => {
                if self.calls.is_ringing(room, call) {
                    self.end_call(room, call, CallEndReason::Timeout);
                }
            }
            Timer::Sweep => {
                self.timers.schedule(now + SWEEP_INTERVAL, Timer::Sweep);
                if self
                    .broadcast
                    .last_sent()
                    .is_some_and(|sent| sent != self.stats(now))
                {
                    self.broadcast.changed(now);
                }
            }
        }
    }

    fn remove_session(&mut self, id: SessionId, now: Instant) {
        self.forget_remote_call(id, None);
        if let Some(c) = self.cluster.as_mut() {
            c.searches.remove(&id);
            c.homed_at.remove(&id);
            // Gone from here while its chat lives elsewhere: for the home it is away (its
            // grace period ends the chat).
            if let Some((home, room)) = c.homes.remove(&id) {
                c.remote_rooms.remove(&room);
                self.sessions.set_state(id, State::Online);
                let msg = ClusterMsg::Detach {
                    sid: id,
                    conn: ConnId(0),
                };
                self.out.push(Output::Bus { to: home, msg });
            }
        }
        match self.sessions.state(id) {
            Some(State::InChat(room)) => self.end_chat(room, id, EndReason::Disconnected, now),
            Some(State::Searching) => {
                let _ = self.match_cancel(id, now);
            }
            _ => {}
        }
        let Some(conns) = self.sessions.remove(id) else {
            return;
        };
        for conn in conns {
            let reason = CloseReason::SessionExpired;
            self.out.push(Output::Close { conn, reason });
        }
        self.matchmaker.forget(id);
        self.broadcast.changed(now);
    }
}
