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

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::call::{CallStates, Calls, MediaEvent};
use crate::config::CoreConfig;
use crate::files::FileInfo;
use crate::ids::{CallId, ClientKey, ConnId, MessageId, RoomId, SessionId};
use crate::matchmaker::{Entry, Matchmaker, Pair, MAX_BLOCKS_PER_GUEST};
use crate::output::{CloseReason, Outbox, Output, Target};
use crate::rooms::{announce_end, Rooms};
use crate::sessions::{valid_username, GuestInfo, Sessions, State, Throttle};
use crate::stats::{Broadcast, Counters};
use crate::timers::{Timer, Timers};
use crate::wire::*;
use crate::SignalError;

/// How often the core re-checks the active-guest count on its own.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

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
}

impl Core {
    /// `seed` feeds the id generator (give it OS randomness in production, a constant in tests);
    /// `now` and `unix_ms` anchor the wall clock used for message timestamps and expiries.
    pub fn new(cfg: CoreConfig, seed: [u8; 32], now: Instant, unix_ms: u64) -> Self {
        let mut timers = Timers::default();
        timers.schedule(now + SWEEP_INTERVAL, Timer::Sweep);
        Self {
            rng: ChaCha20Rng::from_seed(seed),
            epoch: now,
            epoch_unix_ms: unix_ms,
            sessions: Sessions::new(cfg.clone(), now),
            matchmaker: Matchmaker::new(cfg.repair_cooldown, MAX_BLOCKS_PER_GUEST),
            rooms: Rooms::new(cfg.away_queue_max),
            calls: Calls::default(),
            counters: Counters::default(),
            broadcast: Broadcast::new(cfg.stats_interval),
            timers,
            out: Outbox::default(),
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
        self.sessions.tick(now);
        let username = match username {
            Some(u) => valid_username(u).ok_or(SignalError::InvalidUsername)?,
            None => format!("Guest-{:04x}", self.rng.next_u32() & 0xffff),
        };
        self.sessions.check_capacity(client)?;
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
        let returning = self.sessions.attach(id, conn, now)?;
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
            if let Some(pair) = self.matchmaker.set_present(id, now) {
                self.open_room(pair, now);
            }
        } else if let Some((room, _)) = chat {
            self.rooms.hand_out(room, id, Some(conn), &mut self.out);
        }
        self.broadcast.changed(now);
        Ok(())
    }

    /// A socket closed (for any reason). Unknown connections are ignored.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant) {
        self.sessions.tick(now);
        let Some((id, gen)) = self.sessions.detach(conn) else {
            return;
        };
        // Its last socket: the guest is away.
        let grace_end = now + self.cfg.grace_period;
        self.timers.schedule(grace_end, Timer::Grace(id, gen));
        self.matchmaker.set_away(id);
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
        self.sessions.tick(now);
        let id = self
            .sessions
            .guest_of(conn)
            .ok_or(SignalError::Unauthorized)?;
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
                let (room, _) = self.chat(id)?;
                self.calls.accept(room, id, now, &mut self.out)?;
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
        self.sessions.tick(now);
        let away = self.sessions.is_away(event.target().1);
        if let Some((room, call)) = self.calls.media(event, away, now, &mut self.out) {
            self.end_call(room, call, CallEndReason::Failed);
        }
    }

    /// A socket of the receiver acknowledged message `msg` of `room`: the message is no longer
    /// kept, and its sender gets `chat:message:delivered` (once, however many sockets ack it).
    pub fn handle_delivered(&mut self, room: RoomId, msg: MessageId, now: Instant) {
        self.sessions.tick(now);
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
    pub fn stats(&self, now: Instant) -> Stats {
        self.sessions.census(now)
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
    pub fn chat_of(&self, id: SessionId) -> Option<(RoomId, SessionId)> {
        let State::InChat(room) = self.sessions.state(id)? else {
            return None;
        };
        self.rooms.partner(room, id).map(|partner| (room, partner))
    }

    /// The call (ringing or accepted) `id` is in, if any.
    pub fn call_of(&self, id: SessionId) -> Option<CallId> {
        let (room, _) = self.chat_of(id)?;
        self.calls.call_of(room, id)
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
        self.post_message(id, client_id, kind, Content::File(Box::new(file)), now)
    }

    // ---- internals ----------------------------------------------------------------------

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
        let entry = Entry {
            id,
            interests,
            present,
        };
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
        self.matchmaker.cancel(id);
        self.broadcast.changed(now);
        Ok(Ack::State(GuestState::Online))
    }

    /// Opens a room for two guests the matchmaker paired.
    fn open_room(&mut self, [a, b]: Pair, now: Instant) {
        let room = loop {
            let r = RoomId::from_raw(self.random_u128());
            if !self.rooms.contains(r) {
                break r;
            }
        };
        let names = [a, b].map(|id| self.sessions.enter_chat(id, room));
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
        // A guest removed because its grace ran out has no socket to tell.
        let told = reason != EndReason::Disconnected || !self.sessions.is_away(actor);
        if self
            .calls
            .end_room(room, [actor, other], told, &mut self.out)
        {
            self.counters.calls_ended[CallEndReason::PartnerLeft as usize] += 1;
        }
        for id in [actor, other] {
            self.sessions.set_state(id, State::Online);
        }
        let ids = [(); 2].map(|()| MessageId::from_raw(self.rng.next_u64()));
        let timestamp = self.unix_ms(now);
        announce_end(room, [actor, other], reason, ids, timestamp, &mut self.out);
        let reported = reason == EndReason::Reported;
        if let Some(until) = self.matchmaker.ended(actor, other, reported, now) {
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
        let ring_end = now + self.cfg.ring_timeout;
        self.timers.schedule(ring_end, Timer::Ring(room, call));
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
                    self.remove_session(id, now);
                    self.counters.sessions_expired += 1;
                }
            }
            Timer::Unconnected(id) => {
                if self.sessions.unconnected(id, now) {
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
