//! Counters and quality samples for the shell's Prometheus metrics.

use std::time::Duration;

/// Most quality samples kept between two drains; older ones are dropped past this.
pub const MAX_SAMPLES: usize = 4096;

/// Media kind index: audio, video.
pub const KINDS: [&str; 2] = ["audio", "video"];

/// Which way a packet went through the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a guest to the server.
    In = 0,
    /// From the server to a guest.
    Out = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::In, Direction::Out];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Monotonic counters; the shell turns deltas into Prometheus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCounters {
    /// RTP packets by `[kind][direction]`.
    pub packets: [[u64; 2]; 2],
    /// RTP payload bytes by `[kind][direction]`.
    pub bytes: [[u64; 2]; 2],
    /// NACKs received from guests (served from the send buffers).
    pub nacks_received: u64,
    /// NACKs the server sent to guests for lost packets.
    pub nacks_sent: u64,
    /// Keyframe requests (PLI) forwarded to the sender.
    pub plis_forwarded: u64,
    /// Keyframe requests (FIR) forwarded to the sender.
    pub firs_forwarded: u64,
    /// Receiver ceilings (REMB) sent to video senders.
    pub rembs_sent: u64,
    /// Keyframe requests dropped by the 500 ms throttle.
    pub keyframe_requests_throttled: u64,
    /// Peers that never connected in time.
    pub ice_failures: u64,
    /// Peers whose DTLS or SRTP setup failed.
    pub dtls_failures: u64,
    /// Peers closed because str0m panicked while handling them.
    pub peer_panics: u64,
    /// Peers created and closed.
    pub peers_created: u64,
    pub peers_closed: u64,
    /// Packets with no subscriber or no negotiated stream to go to.
    pub packets_unrouted: u64,
    /// Datagrams no peer accepted.
    pub datagrams_unknown: u64,
    /// Remote candidates refused past a peer's limit (trickled, or a STUN check from yet
    /// another source address, which is dropped).
    pub candidates_refused: u64,
    /// Media legs that connected (or moved to a new route), by the guest's candidate type
    /// ([`crate::Route::CANDIDATES`]) and transport ([`crate::Route::TRANSPORTS`]).
    pub connections: [[u64; 2]; 4],
}

/// A quality observation, for histograms. The `usize` of loss, jitter and RTT is the media kind,
/// an index into [`crate::KINDS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// Fraction lost (0..=1) from an RTCP receiver report.
    Loss(usize, f32),
    /// Interarrival jitter.
    Jitter(usize, Duration),
    /// Round-trip time from RTCP.
    Rtt(usize, Duration),
    /// Estimated bandwidth towards a guest, bits per second.
    Bandwidth(u64),
}
