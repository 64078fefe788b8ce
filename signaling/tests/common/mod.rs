//! The harness the signaling core's integration tests share (`core.rs`, `calls.rs`): a `Core`
//! driven by hand from one `t0`, guests with one socket each, and finders for its outputs.
//! Helpers only one test file needs live in that file (in its own `impl H` block).

use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_signaling::wire::{GuestState, RoomInfo};
use tandem_signaling::*;

pub const SEED: [u8; 32] = [7u8; 32];
pub const UNIX0: u64 = 1_700_000_000_000;

/// A config whose rate limits never get in the way of a test that is not about them.
pub fn loose() -> CoreConfig {
    CoreConfig {
        chat_messages_per_sec: 10_000,
        match_per_sec: 10_000,
        match_burst: 10_000,
        typing_per_sec: 10_000,
        events_per_sec: 10_000,
        ..CoreConfig::default()
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A guest and the socket the harness opened for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct G {
    pub id: SessionId,
    pub conn: ConnId,
}

/// Lets `H::ev` take a guest for its socket.
impl From<G> for ConnId {
    fn from(g: G) -> Self {
        g.conn
    }
}

pub struct H {
    pub core: Core,
    pub t0: Instant,
    pub now: Instant,
    pub next_conn: u64,
    /// Used by `core.rs` for chat messages' client ids.
    #[allow(dead_code)]
    pub next_client_id: u64,
}

impl H {
    pub fn new(cfg: CoreConfig) -> Self {
        let t0 = Instant::now();
        Self {
            core: Core::new(cfg, SEED, t0, UNIX0),
            t0,
            now: t0,
            next_conn: 1,
            next_client_id: 1,
        }
    }

    pub fn loose() -> Self {
        Self::new(loose())
    }

    /// `t0 + s` seconds.
    pub fn t(&self, s: f64) -> Instant {
        self.t0 + secs(s)
    }

    /// Moves the clock without running timers.
    pub fn set(&mut self, s: f64) {
        self.now = self.t(s);
    }

    /// Moves the clock to `t0 + s`, runs `handle_timeout` and returns what it produced.
    pub fn tick_to(&mut self, s: f64) -> Vec<Output> {
        self.set(s);
        self.core.handle_timeout(self.now);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    pub fn create(&mut self, name: Option<&str>) -> SessionId {
        self.core
            .create_guest(name, self.now)
            .expect("create_guest")
            .session_id
    }

    pub fn try_connect(&mut self, id: SessionId) -> (ConnId, Result<(), SignalError>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        (conn, self.core.connect(id, conn, self.now))
    }

    pub fn connect(&mut self, id: SessionId) -> ConnId {
        let (conn, r) = self.try_connect(id);
        r.expect("connect");
        conn
    }

    /// A new guest with one socket; its outputs are drained.
    pub fn guest(&mut self) -> G {
        let id = self.create(None);
        let conn = self.connect(id);
        self.drain();
        G { id, conn }
    }

    /// A client event on a socket (a `ConnId`, or a guest's `G`).
    pub fn ev(
        &mut self,
        conn: impl Into<ConnId>,
        name: &str,
        payload: Value,
    ) -> Result<Ack, SignalError> {
        let event = ClientEvent::parse(name, Some(&payload)).expect("valid client event");
        self.core.handle_event(conn.into(), event, self.now)
    }

    pub fn start(&mut self, g: G) -> Result<Ack, SignalError> {
        self.ev(g.conn, "match:start", Value::Null)
    }

    /// Two new guests, paired with each other (nobody else may be searching). Outputs drained.
    pub fn pair(&mut self) -> (G, G, RoomId) {
        let a = self.guest();
        let b = self.guest();
        let room = self.pair_these(a, b);
        (a, b, room)
    }

    /// Pairs two idle guests (nobody else may be searching). Outputs drained.
    pub fn pair_these(&mut self, a: G, b: G) -> RoomId {
        assert_eq!(self.start(a), Ok(Ack::State(GuestState::Searching)));
        assert_eq!(self.start(b), Ok(Ack::State(GuestState::InChat)));
        let out = self.drain();
        let room = found(&out, a.id).room_id;
        assert_eq!(found(&out, b.id).room_id, room);
        room
    }

    /// The `connection:established` a fresh extra socket would get (the guest must already
    /// hold a socket, so that the probe changes nothing); the probe is closed again.
    pub fn probe(&mut self, id: SessionId) -> wire::Established {
        let conn = self.connect(id);
        let out = self.drain();
        self.core.disconnect(conn, self.now);
        assert!(
            self.drain().is_empty(),
            "closing a non-last socket emits nothing"
        );
        established(&out, conn)
    }
}

// ---- output finders -------------------------------------------------------------------------

/// Every emitted event named `name` sent to `to`.
pub fn events<'a>(out: &'a [Output], name: &str, to: Target) -> Vec<&'a ServerEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Emit { to: t, event } if *t == to && event.name() == name => Some(event),
            _ => None,
        })
        .collect()
}

pub fn count(out: &[Output], name: &str) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Emit { event, .. } if event.name() == name))
        .count()
}

pub fn one<'a>(out: &'a [Output], name: &str, to: Target) -> &'a ServerEvent {
    let found = events(out, name, to);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {name} to {to:?} in {out:#?}"
    );
    found[0]
}

pub fn found(out: &[Output], id: SessionId) -> RoomInfo {
    match one(out, "match:found", Target::Guest(id)) {
        ServerEvent::Found(r) => r.clone(),
        e => unreachable!("{e:?}"),
    }
}

pub fn established(out: &[Output], conn: ConnId) -> wire::Established {
    match one(out, "connection:established", Target::Conn(conn)) {
        ServerEvent::Established(e) => e.clone(),
        e => unreachable!("{e:?}"),
    }
}
