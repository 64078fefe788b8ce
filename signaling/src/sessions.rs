//! Guest sessions: who exists, until when, from which client address, with which sockets, in
//! which presence state (online, searching, in a chat; away while no socket is connected) and
//! with which per-guest rate limits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::CoreConfig;
use crate::ids::{ClientKey, ConnId, RoomId, SessionId};
use crate::wire::{EventKind, Stats};
use crate::SignalError;

/// What `POST /api/guest` and refresh return, before the shell signs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    pub session_id: SessionId,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
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

/// What a guest is doing (whether it is away is whether it has sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Online,
    /// In the match queue.
    Searching,
    InChat(RoomId),
}

/// The outcome of [`Sessions::throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// The event may go on; `woke`: the guest had been inactive (the active count changed).
    Pass { woke: bool },
    /// Refused with `rate_limited`; `flood`: this refusal completes a flood (close the socket).
    Refused { flood: bool },
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

pub(crate) struct Session {
    pub(crate) username: String,
    expires_at: Instant,
    /// Until a first socket connects: when the session is removed if none has.
    connect_by: Option<Instant>,
    /// Where it was created from, counted against `max_sessions_per_ip`.
    client: Option<ClientKey>,
    conns: Vec<ConnId>,
    pub(crate) state: State,
    last_active: Instant,
    /// Bumped on every return; a grace timer only fires for its own generation.
    presence_gen: u64,
    /// When it last started searching (taken when it is paired).
    searching_since: Option<Instant>,
    limits: Limiters,
    flood: (Instant, u32),
}

impl Session {
    /// Not expired, and not past the deadline for its first socket.
    fn alive(&self, now: Instant) -> bool {
        self.expires_at > now && self.connect_by.is_none_or(|t| t > now)
    }

    /// No socket connected.
    pub(crate) fn away(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Every guest session, and the sockets and client addresses that point at them.
pub(crate) struct Sessions {
    cfg: CoreConfig,
    sessions: HashMap<SessionId, Session>,
    /// Open sessions per client address (only keys with at least one).
    per_client: HashMap<ClientKey, usize>,
    /// (Cluster only.) The addresses whose count changed since [`Sessions::take_changed`].
    changed: Option<std::collections::HashSet<ClientKey>>,
    conns: HashMap<ConnId, SessionId>,
    /// The rate limiters' clock, moved by [`Sessions::tick`].
    clock: FakeRelativeClock,
    epoch: Instant,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Sessions {
    /// `now` is the origin of the rate limiters' clock.
    pub(crate) fn new(cfg: CoreConfig, now: Instant) -> Self {
        Self {
            changed: cfg.node.map(|_| std::collections::HashSet::new()),
            cfg,
            sessions: HashMap::new(),
            per_client: HashMap::new(),
            conns: HashMap::new(),
            clock: FakeRelativeClock::default(),
            epoch: now,
        }
    }

    /// Moves the rate limiters' clock to `now` (never back).
    pub(crate) fn tick(&mut self, now: Instant) {
        let target = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let current: u64 = self.clock.now().into();
        if target > current {
            self.clock.advance(Duration::from_nanos(target - current));
        }
    }

    /// May one more session be created for `client`, which holds `elsewhere` open sessions on
    /// other nodes? Refused with `too_many_sessions` when that address holds
    /// `max_sessions_per_ip` in all, then with `server_busy` at `max_sessions`.
    pub(crate) fn check_capacity(
        &self,
        client: Option<ClientKey>,
        elsewhere: usize,
    ) -> Result<(), SignalError> {
        if let Some(key) = client {
            let here = self.per_client.get(&key).copied().unwrap_or(0);
            if here.saturating_add(elsewhere) >= self.cfg.max_sessions_per_ip {
                return Err(SignalError::TooManySessions);
            }
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(SignalError::ServerBusy);
        }
        Ok(())
    }

    pub(crate) fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Creates session `id` (after [`Sessions::check_capacity`]), online and without sockets:
    /// when it expires and by when its first socket must connect, for the caller's timers.
    pub(crate) fn insert(
        &mut self,
        id: SessionId,
        username: String,
        client: Option<ClientKey>,
        now: Instant,
    ) -> (Instant, Instant) {
        let expires_at = now + self.cfg.token_ttl;
        let connect_by = now + self.cfg.connect_timeout;
        let limits = self.limiters();
        self.sessions.insert(
            id,
            Session {
                username,
                expires_at,
                connect_by: Some(connect_by),
                client,
                conns: Vec::new(),
                state: State::Online,
                last_active: now,
                presence_gen: 0,
                searching_since: None,
                limits,
                flood: (now, 0),
            },
        );
        if let Some(key) = client {
            *self.per_client.entry(key).or_insert(0) += 1;
            if let Some(changed) = self.changed.as_mut() {
                changed.insert(key);
            }
        }
        (expires_at, connect_by)
    }

    /// Extends a live session by one token lifetime (counts as activity): its username and
    /// new expiry.
    pub(crate) fn refresh(
        &mut self,
        id: SessionId,
        now: Instant,
    ) -> Result<(String, Instant), SignalError> {
        let expires_at = now + self.cfg.token_ttl;
        let s = self.live_mut(id, now)?;
        s.expires_at = expires_at;
        s.last_active = now;
        Ok((s.username.clone(), expires_at))
    }

    /// Moves the session's expiry (a cluster's shared record says when it ends): the new
    /// expiry, for the caller's timer, or `None` for an unknown session.
    pub(crate) fn set_expiry(&mut self, id: SessionId, at: Instant) -> Option<Instant> {
        let s = self.sessions.get_mut(&id)?;
        s.expires_at = at;
        Some(at)
    }

    /// May this live session open one more socket?
    pub(crate) fn admit(&self, id: SessionId, now: Instant) -> Result<(), SignalError> {
        match self.sessions.get(&id) {
            Some(s) if s.alive(now) => {
                if s.conns.len() >= self.cfg.max_sockets_per_guest {
                    return Err(SignalError::RateLimited);
                }
                Ok(())
            }
            _ => Err(SignalError::Unauthorized),
        }
    }

    /// Socket `conn` of `id` connected (after [`Sessions::admit`]): whether the guest returns
    /// (had no socket: it was away, or never connected).
    pub(crate) fn attach(
        &mut self,
        id: SessionId,
        conn: ConnId,
        now: Instant,
    ) -> Result<bool, SignalError> {
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
        Ok(returning)
    }

    /// Socket `conn` closed. When it was its guest's last one, the guest is away: its id and
    /// presence generation (for the grace timer). Unknown sockets are ignored.
    pub(crate) fn detach(&mut self, conn: ConnId) -> Option<(SessionId, u64)> {
        let id = self.conns.remove(&conn)?;
        let s = self.sessions.get_mut(&id)?;
        s.conns.retain(|c| *c != conn);
        s.conns.is_empty().then_some((id, s.presence_gen))
    }

    /// The guest of socket `conn`.
    pub(crate) fn guest_of(&self, conn: ConnId) -> Option<SessionId> {
        self.conns.get(&conn).copied()
    }

    /// Charges one event of `kind` to `id`'s limits. A refusal counts toward a flood:
    /// `flood_refusals` within `flood_window` of the first one.
    pub(crate) fn throttle(
        &mut self,
        id: SessionId,
        kind: EventKind,
        now: Instant,
    ) -> Result<Throttle, SignalError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(SignalError::Unauthorized)?;
        let limiter = match kind {
            EventKind::Match => &s.limits.matching,
            EventKind::Message => &s.limits.message,
            EventKind::Typing => &s.limits.typing,
            EventKind::Candidate => &s.limits.candidates,
            EventKind::Other => &s.limits.other,
        };
        if limiter.check().is_err() {
            // The window opens at the first refusal (not at session creation or a stale refusal).
            if s.flood.1 == 0 || now.duration_since(s.flood.0) > self.cfg.flood_window {
                s.flood = (now, 0);
            }
            s.flood.1 += 1;
            let flood = s.flood.1 >= self.cfg.flood_refusals;
            if flood {
                s.flood = (now, 0);
            }
            return Ok(Throttle::Refused { flood });
        }
        let woke = now.duration_since(s.last_active) >= self.cfg.active_window;
        s.last_active = now;
        Ok(Throttle::Pass { woke })
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub(crate) fn state(&self, id: SessionId) -> Option<State> {
        self.sessions.get(&id).map(|s| s.state)
    }

    pub(crate) fn set_state(&mut self, id: SessionId, state: State) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.state = state;
        }
    }

    /// The guest starts searching now.
    pub(crate) fn searching_from(&mut self, id: SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.searching_since = Some(now);
        }
    }

    /// How long the guest searched, if it started searching here (once per search).
    pub(crate) fn take_search_wait(&mut self, id: SessionId, now: Instant) -> Option<Duration> {
        let since = self.sessions.get_mut(&id)?.searching_since.take()?;
        Some(now.saturating_duration_since(since))
    }

    /// Puts the guest in chat `room`: its username, for its partner's `chat:found`.
    pub(crate) fn enter_chat(&mut self, id: SessionId, room: RoomId) -> String {
        match self.sessions.get_mut(&id) {
            Some(s) => {
                s.state = State::InChat(room);
                s.username.clone()
            }
            None => String::new(),
        }
    }

    /// The sockets of `id` (none if gone).
    pub(crate) fn conns(&self, id: SessionId) -> &[ConnId] {
        self.sessions.get(&id).map_or(&[], |s| &s.conns)
    }

    /// The session's presence generation (for a grace timer).
    pub(crate) fn presence_gen(&self, id: SessionId) -> Option<u64> {
        self.sessions.get(&id).map(|s| s.presence_gen)
    }

    /// Without a socket (or gone).
    pub(crate) fn is_away(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_none_or(Session::away)
    }

    /// The grace period of presence generation `gen` is over: the guest's state if it is still
    /// away since then (its chat or search ends).
    pub(crate) fn grace_over(&self, id: SessionId, gen: u64) -> Option<State> {
        let s = self.sessions.get(&id)?;
        (s.conns.is_empty() && s.presence_gen == gen).then_some(s.state)
    }

    /// Every session: its id, expiry, whether a socket of it ever connected, its state and
    /// whether it is away (for a cluster's restore, see `Core::handle_records_lost`).
    pub(crate) fn each(
        &self,
    ) -> impl Iterator<Item = (SessionId, Instant, bool, State, bool)> + '_ {
        self.sessions
            .iter()
            .map(|(id, s)| (*id, s.expires_at, s.connect_by.is_none(), s.state, s.away()))
    }

    /// Is the session past its expiry?
    pub(crate) fn expired(&self, id: SessionId, now: Instant) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.expires_at <= now)
    }

    /// Is the session past the deadline for its first socket, with none connected?
    pub(crate) fn unconnected(&self, id: SessionId, now: Instant) -> bool {
        self.sessions
            .get(&id)
            .and_then(|s| s.connect_by)
            .is_some_and(|t| t <= now)
    }

    pub(crate) fn alive(&self, id: SessionId, now: Instant) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.alive(now))
    }

    /// Removes the session (its address count with it): the sockets it still had, to close.
    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Vec<ConnId>> {
        let s = self.sessions.remove(&id)?;
        if let Some(key) = s.client {
            if let Some(n) = self.per_client.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&key);
                }
            }
            if let Some(changed) = self.changed.as_mut() {
                changed.insert(key);
            }
        }
        for conn in &s.conns {
            self.conns.remove(conn);
        }
        Some(s.conns)
    }

    /// The live statistics the sessions make up.
    pub(crate) fn census(&self, now: Instant) -> Stats {
        self.census_without(now, |_| false)
    }

    /// [`Sessions::census`] without the sessions `skip` names (a cluster's visitors, counted
    /// by their own node).
    pub(crate) fn census_without(&self, now: Instant, skip: impl Fn(SessionId) -> bool) -> Stats {
        let mut st = Stats::default();
        for (id, s) in &self.sessions {
            if skip(*id) {
                continue;
            }
            st.total_users += 1;
            st.online_users += u64::from(!s.conns.is_empty());
            st.active_users +=
                u64::from(now.duration_since(s.last_active) < self.cfg.active_window);
            match s.state {
                State::Online => {}
                State::Searching => st.available_users += 1,
                State::InChat(_) => st.connected_users += 1,
            }
        }
        st
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Client addresses with at least one open session.
    /// (Cluster only.) Each client address whose open-session count changed since the last
    /// call, with its count now (0: none left); with `all`, every address that holds some.
    pub(crate) fn take_changed(&mut self, all: bool) -> Vec<(ClientKey, usize)> {
        let Some(changed) = self.changed.as_mut() else {
            return Vec::new();
        };
        let mut keys: Vec<ClientKey> = changed.drain().collect();
        if all {
            keys.extend(self.per_client.keys().copied());
            keys.sort_unstable_by_key(|k| k.0);
            keys.dedup();
        }
        keys.into_iter()
            .map(|k| (k, self.per_client.get(&k).copied().unwrap_or(0)))
            .collect()
    }

    pub(crate) fn clients_len(&self) -> usize {
        self.per_client.len()
    }

    /// Connected sockets.
    pub(crate) fn conns_len(&self) -> usize {
        self.conns.len()
    }

    fn live_mut(&mut self, id: SessionId, now: Instant) -> Result<&mut Session, SignalError> {
        match self.sessions.get_mut(&id) {
            Some(s) if s.alive(now) => Ok(s),
            _ => Err(SignalError::Unauthorized),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: SessionId = SessionId::from_raw(1);
    const S2: SessionId = SessionId::from_raw(2);

    fn sessions(cfg: CoreConfig, t0: Instant) -> Sessions {
        Sessions::new(cfg, t0)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn usernames() {
        assert_eq!(valid_username("  Ann-Marie_2 "), Some("Ann-Marie_2".into()));
        assert_eq!(valid_username("Zoë"), Some("Zoë".into()));
        assert_eq!(valid_username(""), None);
        assert_eq!(valid_username("   "), None);
        assert_eq!(valid_username("a<b"), None);
        assert_eq!(valid_username(&"x".repeat(25)), None);
        assert!(valid_username(&"x".repeat(24)).is_some());
    }

    #[test]
    fn capacity_per_client_and_in_total() {
        let t0 = Instant::now();
        let cfg = CoreConfig {
            max_sessions: 3,
            max_sessions_per_ip: 2,
            ..CoreConfig::default()
        };
        let mut s = sessions(cfg, t0);
        let key = Some(ClientKey(9));
        for n in 1..=2 {
            assert_eq!(s.check_capacity(key, 0), Ok(()));
            s.insert(SessionId::from_raw(n), "a".into(), key, t0);
        }
        assert_eq!(s.check_capacity(key, 0), Err(SignalError::TooManySessions));
        assert_eq!(s.clients_len(), 1);
        s.insert(SessionId::from_raw(3), "b".into(), None, t0);
        assert_eq!(s.check_capacity(None, 0), Err(SignalError::ServerBusy));
        assert_eq!(s.remove(S1), Some(vec![]));
        assert_eq!(s.check_capacity(key, 0), Ok(()));
        s.remove(S2);
        assert_eq!(
            s.clients_len(),
            0,
            "an address without sessions is forgotten"
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn deadlines_and_refresh() {
        let t0 = Instant::now();
        let cfg = CoreConfig::default();
        let (ttl, connect) = (cfg.token_ttl, cfg.connect_timeout);
        let mut s = sessions(cfg, t0);
        assert_eq!(s.insert(S1, "a".into(), None, t0), (t0 + ttl, t0 + connect));
        assert!(s.alive(S1, t0));
        assert!(!s.unconnected(S1, t0 + connect - secs(1)));
        assert!(s.unconnected(S1, t0 + connect));
        assert!(!s.alive(S1, t0 + connect));
        assert_eq!(s.refresh(S1, t0 + connect), Err(SignalError::Unauthorized));
        s.attach(S1, ConnId(1), t0 + secs(1)).unwrap();
        assert!(!s.unconnected(S1, t0 + connect), "connected in time");
        let later = t0 + secs(100);
        assert_eq!(s.refresh(S1, later), Ok(("a".into(), later + ttl)));
        assert!(!s.expired(S1, t0 + ttl));
        assert!(s.expired(S1, later + ttl));
        assert!(!s.alive(S1, later + ttl));
        assert_eq!(s.refresh(S2, t0), Err(SignalError::Unauthorized));
    }

    #[test]
    fn sockets_presence_and_grace_generations() {
        let t0 = Instant::now();
        let cfg = CoreConfig {
            max_sockets_per_guest: 2,
            ..CoreConfig::default()
        };
        let mut s = sessions(cfg, t0);
        s.insert(S1, "a".into(), None, t0);
        assert!(s.is_away(S1) && s.is_away(S2));
        assert_eq!(s.admit(S2, t0), Err(SignalError::Unauthorized));
        assert_eq!(s.attach(S1, ConnId(1), t0), Ok(true));
        assert_eq!(s.attach(S1, ConnId(2), t0), Ok(false));
        assert_eq!(s.admit(S1, t0), Err(SignalError::RateLimited));
        assert_eq!(s.guest_of(ConnId(2)), Some(S1));
        assert_eq!(s.conns_len(), 2);
        // Closing one of two sockets is not away.
        assert_eq!(s.detach(ConnId(1)), None);
        assert_eq!(s.detach(ConnId(2)), Some((S1, 1)));
        assert_eq!(s.detach(ConnId(2)), None);
        assert!(s.is_away(S1));
        s.set_state(S1, State::Searching);
        assert_eq!(s.grace_over(S1, 1), Some(State::Searching));
        // Back and away again: the old grace period no longer applies.
        assert_eq!(s.attach(S1, ConnId(3), t0), Ok(true));
        assert_eq!(s.grace_over(S1, 1), None);
        assert_eq!(s.detach(ConnId(3)), Some((S1, 2)));
        assert_eq!(s.grace_over(S1, 1), None);
        assert_eq!(s.grace_over(S1, 2), Some(State::Searching));
        s.attach(S1, ConnId(4), t0).unwrap();
        assert_eq!(s.remove(S1), Some(vec![ConnId(4)]));
        assert_eq!((s.guest_of(ConnId(4)), s.conns_len()), (None, 0));
    }

    #[test]
    fn rate_limits_and_floods() {
        let t0 = Instant::now();
        let cfg = CoreConfig {
            chat_messages_per_sec: 1,
            flood_refusals: 3,
            flood_window: secs(10),
            ..CoreConfig::default()
        };
        let mut s = sessions(cfg, t0);
        s.insert(S1, "a".into(), None, t0);
        let at = |s: &mut Sessions, ms: u64| {
            let now = t0 + Duration::from_millis(ms);
            s.tick(now);
            s.throttle(S1, EventKind::Message, now).unwrap()
        };
        let pass = Throttle::Pass { woke: false };
        assert_eq!(at(&mut s, 0), pass);
        assert_eq!(at(&mut s, 0), Throttle::Refused { flood: false });
        // Other kinds have their own limits.
        assert_eq!(s.throttle(S1, EventKind::Typing, t0), Ok(pass));
        assert_eq!(at(&mut s, 100), Throttle::Refused { flood: false });
        assert_eq!(at(&mut s, 200), Throttle::Refused { flood: true });
        // The count starts again after a flood.
        assert_eq!(at(&mut s, 250), Throttle::Refused { flood: false });
        assert_eq!(at(&mut s, 1_000), pass);
        assert_eq!(
            s.throttle(S2, EventKind::Message, t0),
            Err(SignalError::Unauthorized)
        );
    }

    #[test]
    fn refusals_wider_apart_than_the_window_start_it_again() {
        let t0 = Instant::now();
        let cfg = CoreConfig {
            match_per_sec: 1,
            match_burst: 1,
            flood_refusals: 2,
            flood_window: secs(1),
            ..CoreConfig::default()
        };
        let mut s = sessions(cfg, t0);
        s.insert(S1, "a".into(), None, t0);
        let now = |ms| t0 + Duration::from_millis(ms);
        assert!(matches!(
            s.throttle(S1, EventKind::Match, now(0)),
            Ok(Throttle::Pass { .. })
        ));
        assert_eq!(
            s.throttle(S1, EventKind::Match, now(0)),
            Ok(Throttle::Refused { flood: false })
        );
        // The limiter's clock stays at t0 (no tick): refused again, 2 s later.
        assert_eq!(
            s.throttle(S1, EventKind::Match, now(2_000)),
            Ok(Throttle::Refused { flood: false })
        );
        assert_eq!(
            s.throttle(S1, EventKind::Match, now(2_500)),
            Ok(Throttle::Refused { flood: true })
        );
    }

    #[test]
    fn activity_and_census() {
        let t0 = Instant::now();
        let cfg = CoreConfig::default();
        let window = cfg.active_window;
        let mut s = sessions(cfg, t0);
        for n in 1..=4 {
            s.insert(SessionId::from_raw(n), "a".into(), None, t0);
        }
        s.attach(S1, ConnId(1), t0).unwrap();
        s.set_state(S1, State::Searching);
        s.set_state(S2, State::InChat(RoomId::from_raw(1)));
        s.set_state(SessionId::from_raw(3), State::InChat(RoomId::from_raw(1)));
        let st = s.census(t0);
        assert_eq!(
            (st.total_users, st.online_users, st.active_users),
            (4, 1, 4)
        );
        assert_eq!((st.available_users, st.connected_users), (1, 2));
        let late = t0 + window;
        assert_eq!(s.census(late).active_users, 0);
        s.tick(late);
        assert_eq!(
            s.throttle(S1, EventKind::Other, late),
            Ok(Throttle::Pass { woke: true })
        );
        assert_eq!(s.census(late).active_users, 1);
        assert_eq!(s.state(S1), Some(State::Searching));
        assert_eq!(s.get(S1).map(|x| x.away()), Some(false));
    }
}
