//! The signaling state machine: sessions, presence, matching, rooms, chat, typing, stats and
//! per-guest limits. Sans-I/O: every input carries `now`, every effect is an [`Output`] to poll.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::call::{CallStates, Calls, MediaEvent};
use crate::config::CoreConfig;
use crate::files::FileInfo;
use crate::ids::{CallId, ClientKey, ConnId, MessageId, RoomId, SessionId};
use crate::matchmaker::{Entry, Matchmaker, Pair, MAX_BLOCKS_PER_GUEST};
use crate::output::{CloseReason, Outbox, Output, Target};
use crate::rooms::{announce_end, Rooms};
use crate::stats::{Broadcast, Counters};
use crate::timers::{Timer, Timers};
use crate::wire::*;
use crate::SignalError;

/// How often the core re-checks the active-guest count on its own.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What `POST /api/guest` and refresh return, before the shell signs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    pub session_id: SessionId,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

type Limiter =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;

struct Limiters {
    message: Limiter,
    matching: Limiter,
    typing: Limiter,
    candidates: Limiter,
    other: Limiter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Online,
    /// In the match queue.
    Searching,
    InChat {
        room: RoomId,
    },
}

struct Session {
    username: String,
    expires_at: Instant,
    /// Until a first socket connects: when the session is removed if none has.
    connect_by: Option<Instant>,
    /// Where it was created from, counted against `max_sessions_per_ip`.
    client: Option<ClientKey>,
    conns: Vec<ConnId>,
    state: State,
    last_active: Instant,
    /// Bumped on every connect; a grace timer only fires for its own generation.
    presence_gen: u64,
    limits: Limiters,
    flood: (Instant, u32),
}

impl Session {
    /// Not expired, and not past the deadline for its first socket.
    fn alive(&self, now: Instant) -> bool {
        self.expires_at > now && self.connect_by.is_none_or(|t| t > now)
    }
}

/// The signaling state machine.
pub struct Core {
    cfg: CoreConfig,
    rng: ChaCha20Rng,
    epoch: Instant,
    epoch_unix_ms: u64,
    clock: FakeRelativeClock,
    sessions: HashMap<SessionId, Session>,
    /// Open sessions per client address (only keys with at least one).
    per_client: HashMap<ClientKey, usize>,
    conns: HashMap<ConnId, SessionId>,
    rooms: Rooms,
    matchmaker: Matchmaker,
    timers: Timers,
    out: Outbox,
    broadcast: Broadcast,
    counters: Counters,
    calls: Calls,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

impl Core {
    /// `seed` feeds the id generator (give it OS randomness in production, a constant in tests);
    /// `now` and `unix_ms` anchor the wall clock used for message timestamps and expiries.
    pub fn new(cfg: CoreConfig, seed: [u8; 32], now: Instant, unix_ms: u64) -> Self {
        let mut core = Self {
            cfg: cfg.clone(),
            rng: ChaCha20Rng::from_seed(seed),
            epoch: now,
            epoch_unix_ms: unix_ms,
            clock: FakeRelativeClock::default(),
            sessions: HashMap::new(),
            per_client: HashMap::new(),
            conns: HashMap::new(),
            rooms: Rooms::new(cfg.away_queue_max),
            matchmaker: Matchmaker::new(cfg.repair_cooldown, MAX_BLOCKS_PER_GUEST),
            timers: Timers::default(),
            out: Outbox::default(),
            broadcast: Broadcast::new(cfg.stats_interval),
            counters: Counters::default(),
            calls: Calls::default(),
        };
        core.timers.schedule(now + SWEEP_INTERVAL, Timer::Sweep);
        core
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
        self.tick(now);
        let username = match username {
            Some(u) => valid_username(u).ok_or(SignalError::InvalidUsername)?,
            None => format!("Guest-{:04x}", self.rng.next_u32() & 0xffff),
        };
        if let Some(key) = client {
            if self.per_client.get(&key).copied().unwrap_or(0) >= self.cfg.max_sessions_per_ip {
                return Err(SignalError::TooManySessions);
            }
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(SignalError::ServerBusy);
        }
        let id = loop {
            let id = SessionId::from_raw(self.random_u128());
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let expires_at = now + self.cfg.token_ttl;
        let connect_by = now + self.cfg.connect_timeout;
        let limits = self.limiters();
        self.sessions.insert(
            id,
            Session {
                username: username.clone(),
                expires_at,
                connect_by: Some(connect_by),
                client,
                conns: Vec::new(),
                state: State::Online,
                last_active: now,
                presence_gen: 0,
                limits,
                flood: (now, 0),
            },
        );
        if let Some(key) = client {
            *self.per_client.entry(key).or_insert(0) += 1;
        }
        self.timers.schedule(expires_at, Timer::Expiry(id));
        self.timers.schedule(connect_by, Timer::Unconnected(id));
        self.counters.guests_created += 1;
        self.stats_changed(now);
        Ok(GuestInfo {
            session_id: id,
            username,
            expires_at_ms: self.unix_ms(expires_at),
        })
    }

    /// Extends a live session by one token lifetime (`POST /api/guest/refresh`).
    pub fn refresh(&mut self, id: SessionId, now: Instant) -> Result<GuestInfo, SignalError> {
        self.tick(now);
        let ttl = self.cfg.token_ttl;
        let expires_at_ms = self.unix_ms(now + ttl);
        let s = self.live_session(id, now)?;
        s.expires_at = now + ttl;
        s.last_active = now;
        let username = s.username.clone();
        self.timers.schedule(now + ttl, Timer::Expiry(id));
        // `last_active` moved: the active count may have changed.
        self.stats_changed(now);
        Ok(GuestInfo {
            session_id: id,
            username,
            expires_at_ms,
        })
    }

    /// May this session open one more socket? (Checked before the socket is accepted.)
    pub fn admit(&mut self, id: SessionId, now: Instant) -> Result<(), SignalError> {
        self.tick(now);
        let max = self.cfg.max_sockets_per_guest;
        let s = self.live_session(id, now)?;
        if s.conns.len() >= max {
            return Err(SignalError::RateLimited);
        }
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
        self.admit(id, now)?;
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(SignalError::Unauthorized)?;
        let returning = s.conns.is_empty();
        s.conns.push(conn);
        s.last_active = now;
        s.connect_by = None;
        if returning {
            s.presence_gen += 1;
        }
        self.conns.insert(conn, id);
        let established = self.established(id);
        self.emit(Target::Conn(conn), ServerEvent::Established(established));
        let stats = self.stats(now);
        self.emit(Target::Conn(conn), ServerEvent::Stats(stats));
        let chat = self.room_of(id);
        if returning {
            if let Some((room, _)) = chat {
                let out = &mut self.out;
                self.rooms.tell_presence(room, id, Presence::Online, out);
                self.rooms.hand_out(room, id, None, out);
            }
            if let Some(pair) = self.matchmaker.set_present(id, now) {
                self.pair_up(pair, now);
            }
        } else if let Some((room, _)) = chat {
            self.rooms.hand_out(room, id, Some(conn), &mut self.out);
        }
        self.stats_changed(now);
        Ok(())
    }

    /// A socket closed (for any reason). Unknown connections are ignored.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant) {
        self.tick(now);
        let Some(id) = self.conns.remove(&conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.conns.retain(|c| *c != conn);
        if !s.conns.is_empty() {
            return;
        }
        let gen = s.presence_gen;
        self.timers
            .schedule(now + self.cfg.grace_period, Timer::Grace(id, gen));
        self.matchmaker.set_away(id);
        self.stop_typing(id);
        if let Some((room, _)) = self.room_of(id) {
            let out = &mut self.out;
            self.rooms.tell_presence(room, id, Presence::Away, out);
        }
        self.stats_changed(now);
    }

    /// One client event from socket `conn`. `Ok` is the ack payload; `Err` changed nothing
    /// (except, for floods, a [`Output::Close`] of that socket).
    pub fn handle_event(
        &mut self,
        conn: ConnId,
        event: ClientEvent,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        self.tick(now);
        let id = *self.conns.get(&conn).ok_or(SignalError::Unauthorized)?;
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(SignalError::Unauthorized)?;
        let limiter = match event.kind() {
            EventKind::Match => &s.limits.matching,
            EventKind::Message => &s.limits.message,
            EventKind::Typing => &s.limits.typing,
            EventKind::Candidate => &s.limits.candidates,
            EventKind::Other => &s.limits.other,
        };
        if limiter.check().is_err() {
            let window = self.cfg.flood_window;
            // The window opens at the first refusal (not at session creation or a stale refusal).
            if s.flood.1 == 0 || now.duration_since(s.flood.0) > window {
                s.flood = (now, 0);
            }
            s.flood.1 += 1;
            if s.flood.1 >= self.cfg.flood_refusals {
                s.flood = (now, 0);
                self.counters.floods_closed += 1;
                self.out.push(Output::Close {
                    conn,
                    reason: CloseReason::Flood,
                });
            }
            return Err(SignalError::RateLimited);
        }
        let was_inactive = now.duration_since(s.last_active) >= self.cfg.active_window;
        s.last_active = now;
        if was_inactive {
            self.stats_changed(now);
        }
        match event {
            ClientEvent::MatchStart { interests } => self.match_start(id, interests, now),
            ClientEvent::MatchCancel => self.match_cancel(id, now),
            ClientEvent::MatchNext { interests } => {
                let room = self.room_of(id).ok_or(SignalError::NotInChat)?.0;
                self.end_chat(room, id, EndReason::Skipped, now);
                self.match_start(id, interests, now)
            }
            ClientEvent::ChatLeave => {
                let room = self.room_of(id).ok_or(SignalError::NotInChat)?.0;
                self.end_chat(room, id, EndReason::Left, now);
                Ok(Ack::State(GuestState::Online))
            }
            ClientEvent::ChatReport { reason: _ } => {
                let room = self.room_of(id).ok_or(SignalError::NotInChat)?.0;
                self.end_chat(room, id, EndReason::Reported, now);
                Ok(Ack::State(GuestState::Online))
            }
            ClientEvent::ChatMessage { client_id, content } => self
                .post_message(
                    id,
                    client_id,
                    MessageType::Text,
                    Content::Text(content),
                    now,
                )
                .map(|(id, timestamp)| Ack::Sent { id, timestamp }),
            ClientEvent::ChatRead { id: msg } => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                let delivered = self.rooms.read(room, id, msg, &mut self.out)?;
                self.counters.receipts_delivered += delivered;
                self.counters.receipts_read += 1;
                Ok(Ack::Ok)
            }
            ClientEvent::TypingStart => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                if let Some(gen) = self.rooms.start_typing(room, id, &mut self.out) {
                    let until = now + self.cfg.typing_timeout;
                    self.timers.schedule(until, Timer::Typing(id, gen));
                }
                Ok(Ack::Ok)
            }
            ClientEvent::TypingStop => {
                self.room_of(id).ok_or(SignalError::NotInChat)?;
                self.stop_typing(id);
                Ok(Ack::Ok)
            }
            ClientEvent::CallRequest { video } => self.call_request(id, video, now),
            ClientEvent::CallAccept => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                self.calls.accept(room, id, now, &mut self.out)?;
                self.counters.calls_accepted += 1;
                Ok(Ack::Room { room_id: room })
            }
            ClientEvent::CallReject => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                let call = self.calls.ringing_for(room, id)?;
                self.end_call(room, call, CallEndReason::Rejected);
                Ok(Ack::Ok)
            }
            ClientEvent::CallEnd => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                let call = self.calls.current(room).ok_or(SignalError::NoCall)?;
                self.end_call(room, call, CallEndReason::Hangup);
                Ok(Ack::Ok)
            }
            event @ (ClientEvent::WebrtcOffer { .. }
            | ClientEvent::WebrtcAnswer { .. }
            | ClientEvent::WebrtcCandidate { .. }) => {
                let (room, _) = self.room_of(id).ok_or(SignalError::NotInChat)?;
                self.calls.webrtc(room, id, event, &mut self.out)?;
                Ok(Ack::Ok)
            }
        }
    }

    /// A report from the media server. Events for a call that is over, or for a guest who is
    /// not in that call, are ignored.
    pub fn handle_media(&mut self, event: MediaEvent, now: Instant) {
        self.tick(now);
        let guest = event.target().1;
        let away = self.sessions.get(&guest).is_none_or(|s| s.conns.is_empty());
        if let Some((room, call)) = self.calls.media(event, away, now, &mut self.out) {
            self.end_call(room, call, CallEndReason::Failed);
        }
    }

    /// A socket of the receiver acknowledged message `msg` of `room`: the message is no longer
    /// kept, and its sender gets `chat:message:delivered` (once, however many sockets ack it).
    pub fn handle_delivered(&mut self, room: RoomId, msg: MessageId, now: Instant) {
        self.tick(now);
        if self.rooms.delivered(room, msg, &mut self.out) {
            self.counters.receipts_delivered += 1;
        }
    }

    /// A delivery reached no socket. Nothing to do: a message stays with its receiver until a
    /// socket acknowledges it, and goes out again to the receiver's next socket (kept so that
    /// shells may report failures; it changes nothing).
    pub fn handle_undelivered(&mut self, _to: SessionId, _message: ChatMessage, now: Instant) {
        self.tick(now);
    }

    /// Advances time: typing expiry, grace periods, session expiry, cooldowns, stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        while let Some(timer) = self.timers.pop_due(now) {
            self.fire(timer, now);
        }
        if self.broadcast.take_due(now) {
            let stats = self.stats(now);
            if self.broadcast.publish(stats, now) {
                self.emit(Target::All, ServerEvent::Stats(stats));
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

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
    pub fn stats(&self, now: Instant) -> Stats {
        let mut st = Stats {
            total_users: self.sessions.len() as u64,
            ..Stats::default()
        };
        for s in self.sessions.values() {
            st.online_users += u64::from(!s.conns.is_empty());
            st.active_users +=
                u64::from(now.duration_since(s.last_active) < self.cfg.active_window);
            match s.state {
                State::Online => {}
                State::Searching => st.available_users += 1,
                State::InChat { .. } => st.connected_users += 1,
            }
        }
        st
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
        self.sessions.get(&id).is_some_and(|s| s.alive(now))
    }

    /// Milliseconds since the Unix epoch at `t`, on the core's anchored clock.
    pub fn unix_ms(&self, t: Instant) -> u64 {
        self.epoch_unix_ms + t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    // ---- internals ----------------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        let target = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let current: u64 = self.clock.now().into();
        if target > current {
            self.clock.advance(Duration::from_nanos(target - current));
        }
    }

    fn limiters(&self) -> Limiters {
        let c = &self.cfg;
        let per_sec = |n: u32| Quota::per_second(nz(n));
        let make = |q: Quota| RateLimiter::direct_with_clock(q, self.clock.clone());
        Limiters {
            message: make(per_sec(c.chat_messages_per_sec)),
            matching: make(per_sec(c.match_per_sec).allow_burst(nz(c.match_burst))),
            typing: make(per_sec(c.typing_per_sec)),
            candidates: make(per_sec(c.ice_candidates_per_sec)),
            other: make(per_sec(c.events_per_sec)),
        }
    }

    fn random_u128(&mut self) -> u128 {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        u128::from_le_bytes(b)
    }

    fn live_session(&mut self, id: SessionId, now: Instant) -> Result<&mut Session, SignalError> {
        match self.sessions.get_mut(&id) {
            Some(s) if s.alive(now) => Ok(s),
            _ => Err(SignalError::Unauthorized),
        }
    }

    fn emit(&mut self, to: Target, event: ServerEvent) {
        self.out.emit(to, event);
    }

    fn stats_changed(&mut self, now: Instant) {
        self.broadcast.changed(now);
    }

    /// The chat `id` is in and its partner, if any.
    /// How many entries each of the core's tables holds, for leak watching (a soak run checks
    /// that every one of them levels off).
    pub fn sizes(&self) -> [(&'static str, usize); 9] {
        [
            ("sessions", self.sessions.len()),
            ("client_addresses", self.per_client.len()),
            ("connections", self.conns.len()),
            ("rooms", self.rooms.len()),
            ("queue", self.matchmaker.len()),
            ("blocks", self.matchmaker.blocks_len()),
            ("timers", self.timers.len()),
            ("outputs", self.out.len()),
            ("calls", self.calls.len()),
        ]
    }

    pub fn chat_of(&self, id: SessionId) -> Option<(RoomId, SessionId)> {
        self.room_of(id)
    }

    /// The call (ringing or accepted) `id` is in, if any.
    pub fn call_of(&self, id: SessionId) -> Option<CallId> {
        let (room_id, _) = self.room_of(id)?;
        self.calls.call_of(room_id, id)
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
        if self.room_of(id).map(|(r, _)| r) != Some(room) {
            return Err(SignalError::NotInChat);
        }
        let kind = if file.duration_ms.is_some() {
            MessageType::Voice
        } else {
            MessageType::File
        };
        self.post_message(id, client_id, kind, Content::File(Box::new(file)), now)
    }

    fn room_of(&self, id: SessionId) -> Option<(RoomId, SessionId)> {
        match self.sessions.get(&id)?.state {
            State::InChat { room } => self.rooms.partner(room, id).map(|p| (room, p)),
            _ => None,
        }
    }

    fn established(&self, id: SessionId) -> Established {
        let s = &self.sessions[&id];
        let (state, room) = match &s.state {
            State::Online => (GuestState::Online, None),
            State::Searching => (GuestState::Searching, None),
            State::InChat { .. } => {
                let room = self.room_of(id).map(|(room, partner)| RoomInfo {
                    room_id: room,
                    partner: Partner {
                        username: self.username(partner),
                    },
                    call: self.calls.info_for(room, id),
                });
                (GuestState::InChat, room)
            }
        };
        Established {
            session_id: id,
            username: s.username.clone(),
            state,
            room,
        }
    }

    fn username(&self, id: SessionId) -> String {
        self.sessions
            .get(&id)
            .map(|s| s.username.clone())
            .unwrap_or_default()
    }

    fn match_start(
        &mut self,
        id: SessionId,
        interests: Vec<String>,
        now: Instant,
    ) -> Result<Ack, SignalError> {
        let s = self.sessions.get(&id).ok_or(SignalError::Unauthorized)?;
        match s.state {
            State::Online => {}
            State::Searching => return Err(SignalError::AlreadySearching),
            State::InChat { .. } => return Err(SignalError::AlreadyInChat),
        }
        let present = !s.conns.is_empty();
        let entry = Entry {
            id,
            interests,
            present,
        };
        let pair = self.matchmaker.enqueue(entry, now)?;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.state = State::Searching;
        }
        self.emit(Target::Guest(id), ServerEvent::Searching(Empty {}));
        self.stats_changed(now);
        let state = match pair {
            Some(pair) => {
                self.pair_up(pair, now);
                GuestState::InChat
            }
            None => GuestState::Searching,
        };
        Ok(Ack::State(state))
    }

    fn match_cancel(&mut self, id: SessionId, now: Instant) -> Result<Ack, SignalError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(SignalError::Unauthorized)?;
        if s.state != State::Searching {
            return Err(SignalError::NotSearching);
        }
        s.state = State::Online;
        self.matchmaker.cancel(id);
        self.stats_changed(now);
        Ok(Ack::State(GuestState::Online))
    }

    /// Opens a room for two guests the matchmaker paired.
    fn pair_up(&mut self, [a, b]: Pair, now: Instant) {
        let room_id = loop {
            let r = RoomId::from_raw(self.random_u128());
            if !self.rooms.contains(r) {
                break r;
            }
        };
        for id in [a, b] {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.state = State::InChat { room: room_id };
            }
        }
        let names = [self.username(a), self.username(b)];
        self.rooms.open(room_id, [a, b], names, &mut self.out);
        self.counters.matches += 1;
        self.stats_changed(now);
    }

    fn stop_typing(&mut self, id: SessionId) {
        if let Some((room, _)) = self.room_of(id) {
            self.rooms.stop_typing(room, id, &mut self.out);
        }
    }

    fn end_chat(&mut self, room_id: RoomId, actor: SessionId, reason: EndReason, now: Instant) {
        self.stop_typing(actor);
        let Some([actor, other]) = self.rooms.close(room_id, actor) else {
            return;
        };
        self.out.push(Output::RoomClosed(room_id));
        // A guest removed because its grace ran out has no socket to tell.
        let actor_gone = reason == EndReason::Disconnected
            && self.sessions.get(&actor).is_none_or(|s| s.conns.is_empty());
        if self
            .calls
            .end_room(room_id, [actor, other], !actor_gone, &mut self.out)
        {
            self.counters.calls_ended[CallEndReason::PartnerLeft as usize] += 1;
        }
        for id in [actor, other] {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.state = State::Online;
            }
        }
        let ids = [(); 2].map(|()| MessageId::from_raw(self.rng.next_u64()));
        let timestamp = self.unix_ms(now);
        announce_end(
            room_id,
            [actor, other],
            reason,
            ids,
            timestamp,
            &mut self.out,
        );
        let reported = reason == EndReason::Reported;
        if let Some(until) = self.matchmaker.ended(actor, other, reported, now) {
            self.timers.schedule(until, Timer::Unblock(actor, other));
        }
        self.counters.chats_ended[reason as usize] += 1;
        self.stats_changed(now);
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
        let (room, partner) = self.room_of(id).ok_or(SignalError::NotInChat)?;
        let p = self.sessions.get(&partner).ok_or(SignalError::NotInChat)?;
        let away = p.conns.is_empty();
        self.rooms.check_room_for(room, partner)?;
        self.stop_typing(id);
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
        let (room, partner) = self.room_of(id).ok_or(SignalError::NotInChat)?;
        let call = self
            .calls
            .request(room, [id, partner], video, &mut self.out)?;
        self.timers
            .schedule(now + self.cfg.ring_timeout, Timer::Ring(room, call));
        self.counters.calls_requested += 1;
        Ok(Ack::Room { room_id: room })
    }

    /// Ends the room's call `call` (if it is still the current one), telling both guests why.
    fn end_call(&mut self, room: RoomId, call: CallId, reason: CallEndReason) {
        if self.calls.end(room, call, reason, &mut self.out) {
            self.counters.calls_ended[reason as usize] += 1;
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Typing(id, gen) => {
                let on = self
                    .room_of(id)
                    .is_some_and(|(room, _)| self.rooms.is_typing(room, id, gen));
                if on {
                    self.stop_typing(id);
                }
            }
            Timer::Grace(id, gen) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                if !s.conns.is_empty() || s.presence_gen != gen {
                    return;
                }
                match s.state {
                    State::InChat { room } => self.end_chat(room, id, EndReason::Disconnected, now),
                    State::Searching => {
                        let _ = self.match_cancel(id, now);
                    }
                    State::Online => {}
                }
            }
            Timer::Expiry(id) => {
                if self.sessions.get(&id).is_some_and(|s| s.expires_at <= now) {
                    self.remove_session(id, now);
                    self.counters.sessions_expired += 1;
                }
            }
            Timer::Unconnected(id) => {
                let due = self
                    .sessions
                    .get(&id)
                    .and_then(|s| s.connect_by)
                    .is_some_and(|t| t <= now);
                if due {
                    self.remove_session(id, now);
                    self.counters.sessions_reaped += 1;
                }
            }
            Timer::Unblock(a, b) => {
                for pair in self
                    .matchmaker
                    .cooldown_over(a, b, now)
                    .into_iter()
                    .flatten()
                {
                    self.pair_up(pair, now);
                }
            }
            Timer::Ring(room_id, call) => {
                if self.calls.is_ringing(room_id, call) {
                    self.end_call(room_id, call, CallEndReason::Timeout);
                }
            }
            Timer::Sweep => {
                self.timers.schedule(now + SWEEP_INTERVAL, Timer::Sweep);
                if self
                    .broadcast
                    .last_sent()
                    .is_some_and(|sent| sent != self.stats(now))
                {
                    self.stats_changed(now);
                }
            }
        }
    }

    fn remove_session(&mut self, id: SessionId, now: Instant) {
        match self.sessions.get(&id).map(|s| s.state.clone()) {
            Some(State::InChat { room }) => self.end_chat(room, id, EndReason::Disconnected, now),
            Some(State::Searching) => {
                let _ = self.match_cancel(id, now);
            }
            _ => {}
        }
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        if let Some(key) = s.client {
            if let Some(n) = self.per_client.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&key);
                }
            }
        }
        for conn in s.conns {
            self.conns.remove(&conn);
            self.out.push(Output::Close {
                conn,
                reason: CloseReason::SessionExpired,
            });
        }
        self.matchmaker.forget(id);
        self.stats_changed(now);
    }
}

/// 1–24 characters after trimming: letters, digits, space, `_`, `-`.
pub fn valid_username(u: &str) -> Option<String> {
    let u = u.trim();
    let n = u.chars().count();
    let ok = (1..=24).contains(&n)
        && u.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '_' || c == '-');
    ok.then(|| u.to_owned())
}
