//! The signaling core's tunables.

use std::time::Duration;

use crate::ids::NodeId;

/// The core's tunables. `Default` is where their defaults are written: tandem-config's
/// settings for them (`--token-ttl-secs`, `--match-burst`, …) default to these values.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub token_ttl: Duration,
    pub grace_period: Duration,
    pub repair_cooldown: Duration,
    pub typing_timeout: Duration,
    /// Partner messages kept for a guest until one of its sockets acknowledges them (queued
    /// while it is away, or handed out and not yet acknowledged); past it the sender is refused
    /// with `partner_away_queue_full`.
    pub away_queue_max: usize,
    pub max_sockets_per_guest: usize,
    pub max_sessions: usize,
    /// Open sessions per [`ClientKey`](crate::ClientKey); a creation past it is refused with `too_many_sessions`.
    pub max_sessions_per_ip: usize,
    /// A guest that has connected no socket this long after its creation is removed.
    pub connect_timeout: Duration,
    pub chat_messages_per_sec: u32,
    pub match_per_sec: u32,
    pub match_burst: u32,
    pub typing_per_sec: u32,
    pub events_per_sec: u32,
    /// `webrtc:ice-candidate` events one guest may send per second (also the burst).
    pub ice_candidates_per_sec: u32,
    pub flood_refusals: u32,
    pub flood_window: Duration,
    pub stats_interval: Duration,
    pub active_window: Duration,
    /// How long a call rings before it ends with `timeout`.
    pub ring_timeout: Duration,
    /// This node's id in a cluster; `None` (the default): one node alone, the in-memory
    /// matchmaker pairs inside the core and nothing goes to the bus.
    pub node: Option<NodeId>,
    /// How long a client event forwarded to another node waits for its ack before it is
    /// refused with `service_unavailable`.
    pub bus_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(7200),
            grace_period: Duration::from_secs(30),
            repair_cooldown: Duration::from_secs(300),
            typing_timeout: Duration::from_secs(5),
            away_queue_max: 100,
            max_sockets_per_guest: 10,
            max_sessions: 100_000,
            max_sessions_per_ip: 20,
            connect_timeout: Duration::from_secs(60),
            chat_messages_per_sec: 10,
            match_per_sec: 1,
            match_burst: 3,
            typing_per_sec: 2,
            events_per_sec: 10,
            ice_candidates_per_sec: 50,
            flood_refusals: 50,
            flood_window: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            active_window: Duration::from_secs(300),
            ring_timeout: Duration::from_secs(30),
            node: None,
            bus_timeout: Duration::from_secs(2),
        }
    }
}
