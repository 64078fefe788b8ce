//! One guest's WebRTC session and the tracks it sends and receives.

use std::time::Instant;

use str0m::media::{MediaKind, Mid};
use str0m::rtp::Ssrc;
use str0m::Rtc;
use tandem_signaling::{CallId, SessionId};

/// Index of a peer in the core's slab.
pub type PeerIdx = usize;

/// Remote candidates held until the offer that gives them meaning has been accepted.
pub const MAX_PENDING_CANDIDATES: usize = 64;
/// Remote ICE candidates one peer may have at most, trickled or learned from STUN checks
/// from new source addresses (peer-reflexive) together: each is a candidate pair str0m keeps
/// and checks, so a guest spraying checks from thousands of ports must not get thousands.
pub const MAX_REMOTE_CANDIDATES: usize = 20;
/// Media sections one peer may negotiate (audio + video, with room for renegotiation).
pub const MAX_MEDIA_PER_PEER: usize = 16;

/// A stream this peer sends to the server.
#[derive(Debug)]
pub struct TrackIn {
    pub mid: Mid,
    pub kind: MediaKind,
    /// Who receives it.
    pub subs: Vec<Sub>,
    /// Last keyframe request sent upstream, for the 500 ms throttle.
    pub last_keyframe_request: Option<Instant>,
    /// Last receiver ceiling (REMB) sent upstream: when, and bits per second.
    pub last_remb: Option<(Instant, u64)>,
}

/// One receiver of a track: which of its send slots carries it and how headers are rewritten.
#[derive(Debug)]
pub struct Sub {
    pub peer: PeerIdx,
    /// The receiver's media section the track is written to.
    pub mid: Mid,
    /// Source SSRC the offsets below were computed for.
    pub src_ssrc: Option<Ssrc>,
    /// Added (wrapping) to the source's extended sequence number.
    pub seq_delta: u64,
    /// Added (wrapping) to the source's RTP timestamp.
    pub ts_delta: u32,
    /// Last sequence number and timestamp written, to continue from on a source change.
    pub last_seq: Option<u64>,
    pub last_ts: u32,
    /// Source payload type → receiver payload type; 0xFF unknown, 0xFE no match.
    pub pt_map: [u8; 128],
}

impl Sub {
    pub fn new(peer: PeerIdx, mid: Mid) -> Self {
        Sub {
            peer,
            mid,
            src_ssrc: None,
            seq_delta: 0,
            ts_delta: 0,
            last_seq: None,
            last_ts: 0,
            pt_map: [PT_UNKNOWN; 128],
        }
    }
}

pub const PT_UNKNOWN: u8 = 0xFF;
pub const PT_NONE: u8 = 0xFE;

/// A media section this peer receives on, and the track bound to it.
#[derive(Debug)]
pub struct OutSlot {
    pub mid: Mid,
    pub kind: MediaKind,
    /// `(peer, index into its tracks_in)`.
    pub source: Option<(PeerIdx, usize)>,
    /// Where the outgoing stream stood when its last source went away: sequence number,
    /// timestamp and when; the next source continues from there.
    pub last: Option<(u64, u32, Instant)>,
}

/// How far the peer's connection has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Created; no ICE/DTLS yet. The instant is the connect deadline.
    Connecting(Instant),
    Connected,
    /// Lost ICE; the instant is the deadline to come back.
    Disconnected(Instant),
}

#[derive(Debug)]
pub struct Peer {
    pub rtc: Rtc,
    pub call: CallId,
    pub guest: SessionId,
    pub link: Link,
    /// The offer's DTLS fingerprint line: a new one means a new browser connection.
    pub fingerprint: String,
    /// Whether an offer from the guest has been accepted yet.
    pub described: bool,
    pub pending_candidates: Vec<str0m::Candidate>,
    pub tracks_in: Vec<TrackIn>,
    pub slots: Vec<OutSlot>,
    /// Small SSRC → track cache for incoming packets.
    pub ssrc_track: Vec<(Ssrc, usize)>,
    /// A server-initiated offer waiting for the guest's answer.
    pub pending_offer: Option<str0m::change::SdpPendingOffer>,
    /// When this peer next wants `handle_timeout`.
    pub next_timeout: Instant,
    /// Set when str0m reported an error or panicked; the core removes the peer.
    pub dead: bool,
    /// The server's current ICE ufrag for this peer.
    pub ufrag: String,
    /// Last cumulative NACK count per `(mid, egress)` stats stream.
    pub nacks_seen: Vec<(Mid, bool, u64)>,
    /// Set by the fault-injection test hook: the next drive panics.
    pub poisoned: bool,
    /// Remote candidates given to str0m so far (see [`MAX_REMOTE_CANDIDATES`]).
    pub remote_candidates: usize,
    /// The candidates the guest signalled, to name the route its media took.
    pub remotes: crate::quality::Remotes,
    /// What this guest's senders may send it, from its downlink estimate and receiver reports.
    pub ceiling: crate::quality::Ceiling,
}

impl Peer {
    /// Counts one more remote candidate; false once the peer has [`MAX_REMOTE_CANDIDATES`].
    pub fn admit_remote_candidate(&mut self) -> bool {
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return false;
        }
        self.remote_candidates += 1;
        true
    }

    /// Gives a signalled remote candidate to str0m, unless the peer has
    /// [`MAX_REMOTE_CANDIDATES`] already (`false`).
    pub fn add_remote(&mut self, cand: str0m::Candidate) -> bool {
        if !self.admit_remote_candidate() {
            return false;
        }
        self.remotes.add(cand.addr(), cand.kind());
        self.rtc.add_remote_candidate(cand);
        true
    }

    /// The kind of the media section `mid` (a send slot or a received track).
    pub fn kind_of(&self, mid: Mid) -> Option<MediaKind> {
        self.slots
            .iter()
            .find(|s| s.mid == mid)
            .map(|s| s.kind)
            .or_else(|| self.tracks_in.iter().find(|t| t.mid == mid).map(|t| t.kind))
    }

    /// NACKs since the previous stats report of the same stream.
    pub fn nack_delta(&mut self, mid: Mid, egress: bool, total: u64) -> u64 {
        if let Some(e) = self
            .nacks_seen
            .iter_mut()
            .find(|e| e.0 == mid && e.1 == egress)
        {
            let d = total.saturating_sub(e.2);
            e.2 = total;
            return d;
        }
        if self.nacks_seen.len() < MAX_MEDIA_PER_PEER * 2 {
            self.nacks_seen.push((mid, egress, total));
        }
        total
    }

    pub fn track_for_ssrc(&mut self, ssrc: Ssrc) -> Option<usize> {
        if let Some(&(_, t)) = self.ssrc_track.iter().find(|(s, _)| *s == ssrc) {
            return Some(t);
        }
        let mid = self.rtc.direct_api().stream_rx(&ssrc)?.mid();
        let t = self.tracks_in.iter().position(|t| t.mid == mid)?;
        if self.ssrc_track.len() >= MAX_MEDIA_PER_PEER * 2 {
            self.ssrc_track.remove(0);
        }
        self.ssrc_track.push((ssrc, t));
        Some(t)
    }
}

/// Index into `[audio, video]`.
pub fn kind_idx(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}
