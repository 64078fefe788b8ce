//! The media core: peers, calls, the track registry and forwarding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::media::{Direction as SdpDirection, KeyframeRequestKind, MediaKind};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcError};
use tandem_signaling::{CallId, MediaCommand, MediaEvent, RoomId, SessionId};

use crate::error::MediaError;
use crate::peer::{
    kind_idx, Link, OutSlot, Peer, PeerIdx, Sub, TrackIn, MAX_MEDIA_PER_PEER,
    MAX_PENDING_CANDIDATES, PT_NONE, PT_UNKNOWN,
};
use crate::quality::{CallReport, Figure, Leg, LegReport, Route};
use crate::stats::{Direction, MediaCounters, Sample, MAX_SAMPLES};
use crate::WORKER_PREFIX_LEN;

/// At most one keyframe request per source track per this long.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);
/// Times a peer is driven in one turn when it keeps asking for "now" (what str0m's pacer holds
/// leaves one packet per timeout, so N packets take N of them; forwarded packets skip the pacer
/// in the fork, see vendor/README.md).
const TICKS_PER_TURN: usize = 64;
/// Shortest wait before driving a peer's timers again.
const MIN_WAKE: Duration = Duration::from_millis(1);
/// A wake-up asked for this little ahead is taken at once: after each packet it releases,
/// str0m's pacer asks for the next one a microsecond later, which is not worth a timer (waiting
/// for one held every packet of a burst but the first for a millisecond or more).
const IMMEDIATE: Duration = Duration::from_micros(100);
/// How often calls waiting for an offer are checked against their deadline.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Longest accepted session description, in bytes.
const MAX_SDP_BYTES: usize = 64 * 1024;
/// The share of a guest's downlink estimate its senders are told they may use, in percent.
pub const CEILING_PERCENT: u64 = 95;
/// The lowest ceiling told to a video sender (below it a browser's video stops being useful,
/// and an estimate that low is as likely noise).
pub const MIN_VIDEO_BPS: u64 = 100_000;
/// How often a video sender is told its receiver's ceiling while it holds (sooner when it falls).
pub const REMB_INTERVAL: Duration = Duration::from_millis(500);
/// Call reports kept until the shell drains them; past it the oldest are dropped.
const MAX_REPORTS: usize = 1024;
/// Rounds of "drain the peers that got packets written" per flush; each round can only be
/// caused by a keyframe request answered across peers, so this is never reached in practice.
const MAX_FLUSH_ROUNDS: usize = 8;

/// The media core's tunables. `Default` is where their defaults are written: tandem-config's
/// `--call-connect-timeout-secs`, `--rtc-udp-port` and `--max-calls` (a call is two peers of
/// one worker) default to these values.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// This core's worker index (0..=255); it prefixes every ICE ufrag so the shell can route
    /// a STUN request that reached the wrong worker (see [`crate::stun_worker`]).
    pub worker: usize,
    /// Address put in the UDP host candidate.
    pub udp_addr: SocketAddr,
    /// Address put in a passive ICE-TCP candidate, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// Time a guest has to connect (or reconnect) its media.
    pub connect_timeout: Duration,
    /// Peers (guests in calls) this core holds at most.
    pub max_peers: usize,
    /// Starting bandwidth estimate towards each guest.
    pub initial_bitrate_kbps: u64,
    /// How often str0m reports loss, jitter and RTT.
    pub stats_interval: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            worker: 0,
            udp_addr: SocketAddr::from(([127, 0, 0, 1], 7882)),
            tcp_addr: None,
            connect_timeout: Duration::from_secs(30),
            max_peers: 2000,
            initial_bitrate_kbps: 1000,
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// What the core asks the shell to do, from [`MediaCore::poll_output`].
#[derive(Debug)]
pub enum MediaOutput {
    /// Send this datagram (UDP, or one RFC 4571 frame on an ICE-TCP connection).
    Transmit(Transmit),
    /// Tell the signaling core.
    Event(MediaEvent),
}

/// What became of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A peer took it.
    Handled,
    /// No peer here knows its sender.
    Unknown,
}

#[derive(Debug)]
struct Call {
    guests: [SessionId; 2],
    peers: [Option<PeerIdx>; 2],
    /// Candidates that came before the guest's offer.
    early_candidates: [Vec<Candidate>; 2],
    /// Deadline for each guest to send its first offer.
    offer_deadline: [Option<Instant>; 2],
    room: RoomId,
    /// When the media session opened (the callee accepted).
    opened: Instant,
    /// Each leg's media connected once.
    connected: [bool; 2],
    /// From `opened` until both legs first connected.
    setup: Option<Duration>,
    /// What each leg saw (kept across its reconnections).
    legs: [Leg; 2],
}

impl Call {
    fn side(&self, guest: SessionId) -> Option<usize> {
        self.guests.iter().position(|g| *g == guest)
    }
}

/// The SFU core for one worker. See the crate docs.
pub struct MediaCore {
    cfg: MediaConfig,
    provider: Arc<CryptoProvider>,
    cert: DtlsCert,
    rng: ChaCha8Rng,
    peers: Vec<Option<Peer>>,
    free: Vec<PeerIdx>,
    calls: HashMap<CallId, Call>,
    by_addr: HashMap<(Protocol, SocketAddr), PeerIdx>,
    /// Each peer's current server ICE ufrag, for a new address's first STUN check.
    by_ufrag: HashMap<String, PeerIdx>,
    timers: BinaryHeap<Reverse<(Instant, PeerIdx)>>,
    next_sweep: Instant,
    dirty: Vec<PeerIdx>,
    /// Calls that got new media sections during the current drain.
    rebind_pending: Vec<CallId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    counters: MediaCounters,
    samples: Vec<Sample>,
    /// Quality reports of calls that ended, for the shell.
    reports: VecDeque<CallReport>,
    last_now: Instant,
}

impl std::fmt::Debug for MediaCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCore")
            .field("worker", &self.cfg.worker)
            .field("peers", &(self.peers.len() - self.free.len()))
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl MediaCore {
    /// A core with no calls. `seed` feeds the ICE credentials' randomness.
    pub fn new(cfg: MediaConfig, seed: [u8; 32], now: Instant) -> Result<Self, MediaError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(MediaError::Certificate)?;
        Ok(MediaCore {
            cfg,
            provider: Arc::new(provider),
            cert,
            rng: ChaCha8Rng::from_seed(seed),
            peers: Vec::new(),
            free: Vec::new(),
            calls: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            timers: BinaryHeap::new(),
            next_sweep: now + SWEEP_INTERVAL,
            dirty: Vec::new(),
            rebind_pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: MediaCounters::default(),
            samples: Vec::new(),
            reports: VecDeque::new(),
            last_now: now,
        })
    }

    pub fn counters(&self) -> MediaCounters {
        self.counters
    }

    /// Calls and peers currently held.
    pub fn load(&self) -> (usize, usize) {
        (self.calls.len(), self.peers.len() - self.free.len())
    }

    /// How many entries each of the core's tables holds, for leak watching (a soak run checks
    /// that every one of them levels off).
    pub fn sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("calls", self.calls.len()),
            ("peers", self.peers.len() - self.free.len()),
            ("addresses", self.by_addr.len()),
            ("ufrags", self.by_ufrag.len()),
            ("timers", self.timers.len()),
            ("queued", self.transmits.len() + self.events.len()),
        ]
    }

    /// Hands the quality samples gathered since the last call to `f`.
    pub fn drain_samples(&mut self, mut f: impl FnMut(Sample)) {
        for s in self.samples.drain(..) {
            f(s);
        }
    }

    /// Hands the quality report of each call that ended since the last call to `f`.
    pub fn drain_reports(&mut self, mut f: impl FnMut(CallReport)) {
        for r in self.reports.drain(..) {
            f(r);
        }
    }

    /// One command from the signaling core.
    pub fn handle_command(&mut self, cmd: MediaCommand, now: Instant) {
        let now = self.advance(now);
        match cmd {
            MediaCommand::Open {
                call,
                room,
                guests,
                video: _,
            } => self.open(call, room, guests, now),
            MediaCommand::Offer { call, guest, sdp } => self.offer(call, guest, &sdp, now),
            MediaCommand::Answer { call, guest, sdp } => self.answer(call, guest, &sdp, now),
            MediaCommand::Candidate {
                call,
                guest,
                candidate,
                ..
            } => self.candidate(call, guest, &candidate),
            MediaCommand::Close { call } => self.close(call),
        }
        self.flush(now);
    }

    /// A datagram (or one RFC 4571 frame of an ICE-TCP stream) from `source`.
    pub fn handle_receive(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Received {
        let now = self.advance(now);
        let Ok(contents) = data.try_into() else {
            self.counters.datagrams_unknown += 1;
            return Received::Unknown;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let idx = match self.by_addr.get(&(proto, source)) {
            Some(&idx) => idx,
            None => {
                // A new address must start with a STUN check naming one of our ufrags: one
                // lookup, never a scan of every peer per stray datagram.
                let idx = crate::stun_local_ufrag(data)
                    .and_then(|ufrag| self.by_ufrag.get(ufrag).copied())
                    .filter(|&idx| {
                        self.peers[idx]
                            .as_ref()
                            .is_some_and(|p| !p.dead && p.rtc.accepts(&input))
                    });
                let Some(idx) = idx else {
                    self.counters.datagrams_unknown += 1;
                    return Received::Unknown;
                };
                // Each new address becomes a peer-reflexive candidate: bounded per peer.
                let admitted = self.peers[idx]
                    .as_mut()
                    .is_some_and(|p| p.admit_remote_candidate());
                if !admitted {
                    self.counters.candidates_refused += 1;
                    return Received::Handled;
                }
                if let Some(old) = self.by_addr.insert((proto, source), idx) {
                    debug_assert_eq!(old, idx);
                }
                idx
            }
        };
        let Some(peer) = self.peers[idx].as_mut() else {
            self.by_addr.remove(&(proto, source));
            return Received::Unknown;
        };
        let result = catch_unwind(AssertUnwindSafe(|| peer.rtc.handle_input(input)));
        match result {
            Ok(Ok(())) => {
                if let Some(at) = self.drain(idx, now) {
                    self.tick_peer(idx, at);
                }
            }
            Ok(Err(e)) => self.peer_error(idx, &e),
            Err(_) => self.peer_panicked(idx),
        }
        Received::Handled
    }

    /// Time passed: drive the peers (and deadlines) that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        // Take every due entry first and drive each peer once: a peer may ask to be woken
        // again at `now` itself, which must wait for the next call, not loop here.
        let mut due = Vec::new();
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if !due.contains(&idx) {
                due.push(idx);
            }
        }
        for idx in due {
            let Some(peer) = self.peers[idx].as_mut() else {
                continue;
            };
            if peer.next_timeout > now {
                // A stale entry: the peer's real (later) wake-up may have no entry of its own.
                self.timers.push(Reverse((peer.next_timeout, idx)));
                continue;
            }
            self.tick_peer(idx, now);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
        self.flush(now);
    }

    /// What the inputs so far asked for: every datagram to send first, then the events for
    /// the signaling core. Packets forwarded by the inputs since the last call are sent by
    /// their receivers' peers first, so a batch of inputs costs one drive per receiver.
    pub fn poll_output(&mut self) -> Option<MediaOutput> {
        if !self.dirty.is_empty() {
            self.flush(self.last_now);
        }
        if let Some(t) = self.transmits.pop_front() {
            return Some(MediaOutput::Transmit(t));
        }
        self.events.pop_front().map(MediaOutput::Event)
    }

    /// When [`MediaCore::handle_timeout`] should next be called (always soon: the core sweeps
    /// its calls' deadlines every 250 ms).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_sweep;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            t = t.min(*at);
        }
        Some(t)
    }

    // --- commands -------------------------------------------------------------------------

    fn open(&mut self, call: CallId, room: RoomId, guests: [SessionId; 2], now: Instant) {
        if !self.calls.contains_key(&call) && (self.calls.len() + 1) * 2 > self.cfg.max_peers {
            for guest in guests {
                self.events.push_back(MediaEvent::Failed { call, guest });
            }
            return;
        }
        let deadline = Some(now + self.cfg.connect_timeout);
        self.calls.entry(call).or_insert(Call {
            guests,
            peers: [None, None],
            early_candidates: [Vec::new(), Vec::new()],
            offer_deadline: [deadline, deadline],
            room,
            opened: now,
            connected: [false; 2],
            setup: None,
            legs: Default::default(),
        });
    }

    fn offer(&mut self, call: CallId, guest: SessionId, sdp: &str, now: Instant) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(side) = c.side(guest) else {
            return;
        };
        let offer = match parse_offer(sdp) {
            Ok(o) => o,
            Err(e) => return self.reject(call, guest, &e),
        };
        let fingerprint = fingerprint_line(sdp).to_owned();
        let existing = c.peers[side];
        let idx = match existing {
            Some(idx)
                if self.peers[idx]
                    .as_ref()
                    .is_some_and(|p| !p.dead && p.fingerprint == fingerprint) =>
            {
                idx
            }
            _ => {
                if let Some(old) = existing {
                    self.remove_peer(old);
                }
                match self.new_peer(call, guest, fingerprint, now) {
                    Ok(idx) => idx,
                    Err(e) => return self.reject(call, guest, &e),
                }
            }
        };
        let peer = self.peers[idx]
            .as_mut()
            .expect("peer was just found or created");
        let accepted = catch_unwind(AssertUnwindSafe(|| peer.rtc.sdp_api().accept_offer(offer)));
        let answer = match accepted {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let err = MediaError::OfferRefused(e.to_string());
                if existing != Some(idx) {
                    self.remove_peer(idx);
                }
                return self.reject(call, guest, &err);
            }
            Err(_) => return self.peer_panicked(idx),
        };
        peer.described = true;
        let answer = self.keep_worker_prefix(idx, answer.to_sdp_string());
        let peer = self.peers[idx]
            .as_mut()
            .expect("peer was just found or created");
        // An offer restarts the connect clock: a guest back from a reconnect gets the full time.
        let deadline = now + self.cfg.connect_timeout;
        peer.link = match peer.link {
            Link::Connecting(_) => Link::Connecting(deadline),
            Link::Disconnected(_) => Link::Disconnected(deadline),
            Link::Connected => Link::Connected,
        };
        let c = self.calls.get_mut(&call).expect("call looked up above");
        c.peers[side] = Some(idx);
        c.offer_deadline[side] = None;
        let early = std::mem::take(&mut c.early_candidates[side]);
        let peer = self.peers[idx]
            .as_mut()
            .expect("peer was just found or created");
        for cand in early
            .into_iter()
            .chain(peer.pending_candidates.drain(..).collect::<Vec<_>>())
        {
            if !peer.add_remote(cand) {
                self.counters.candidates_refused += 1;
            }
        }
        self.events.push_back(MediaEvent::Answer {
            call,
            guest,
            sdp: answer,
        });
        for cand in self.local_candidates() {
            self.events.push_back(MediaEvent::Candidate {
                call,
                guest,
                candidate: cand.to_sdp_string(),
                sdp_mid: None,
                sdp_mline_index: Some(0),
            });
        }
        self.tick_peer(idx, now);
        self.rebind(call);
    }

    fn answer(&mut self, call: CallId, guest: SessionId, sdp: &str, now: Instant) {
        let Some(idx) = self.peer_of(call, guest) else {
            return;
        };
        let peer = self.peers[idx]
            .as_mut()
            .expect("peer_of returns live peers");
        let Some(pending) = peer.pending_offer.take() else {
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(_) => return self.reject(call, guest, &MediaError::AnswerRefused),
        };
        let peer = self.peers[idx]
            .as_mut()
            .expect("peer_of returns live peers");
        match catch_unwind(AssertUnwindSafe(|| {
            peer.rtc.sdp_api().accept_answer(pending, answer)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return self.reject(call, guest, &MediaError::AnswerRefused),
            Err(_) => return self.peer_panicked(idx),
        }
        self.tick_peer(idx, now);
        self.rebind(call);
    }

    fn candidate(&mut self, call: CallId, guest: SessionId, candidate: &str) {
        let line = candidate.strip_prefix("a=").unwrap_or(candidate);
        let Ok(cand) = Candidate::from_sdp_string(line) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(side) = c.side(guest) else {
            return;
        };
        match c.peers[side].and_then(|idx| self.peers[idx].as_mut()) {
            Some(peer) if peer.described => {
                if !peer.add_remote(cand) {
                    self.counters.candidates_refused += 1;
                }
            }
            Some(peer) => {
                if peer.pending_candidates.len() < MAX_PENDING_CANDIDATES {
                    peer.pending_candidates.push(cand);
                }
            }
            None => {
                let early = &mut c.early_candidates[side];
                if early.len() < MAX_PENDING_CANDIDATES {
                    early.push(cand);
                }
            }
        }
    }

    fn close(&mut self, call: CallId) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        for idx in c.peers.into_iter().flatten() {
            self.remove_peer(idx);
        }
        if self.reports.len() >= MAX_REPORTS {
            self.reports.pop_front();
        }
        let [a, b] = c.guests;
        self.reports.push_back(CallReport {
            call,
            room: c.room,
            duration: self.last_now.saturating_duration_since(c.opened),
            setup: c.setup,
            legs: [LegReport::new(a, &c.legs[0]), LegReport::new(b, &c.legs[1])],
        });
    }

    fn reject(&mut self, call: CallId, guest: SessionId, err: &MediaError) {
        self.events.push_back(MediaEvent::OfferRejected {
            call,
            guest,
            message: err.to_string(),
        });
    }

    // --- peers ----------------------------------------------------------------------------

    fn local_candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(2);
        if let Ok(c) = Candidate::host(self.cfg.udp_addr, "udp") {
            out.push(c);
        }
        if let Some(addr) = self.cfg.tcp_addr {
            if let Ok(c) = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Passive)
                .build()
            {
                out.push(c);
            }
        }
        out
    }

    fn new_peer(
        &mut self,
        call: CallId,
        guest: SessionId,
        fingerprint: String,
        now: Instant,
    ) -> Result<PeerIdx, MediaError> {
        if self.peers.len() - self.free.len() >= self.cfg.max_peers {
            return Err(MediaError::Capacity);
        }
        let creds = self.worker_creds();
        let ufrag = creds.ufrag.clone();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(self.provider.clone())
            .set_dtls_cert(self.cert.clone())
            .set_local_ice_credentials(creds)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_direct_forwarding(true)
            .enable_bwe(Some(Bitrate::kbps(self.cfg.initial_bitrate_kbps)))
            .set_stats_interval(Some(self.cfg.stats_interval))
            .build(now);
        for cand in self.local_candidates() {
            rtc.add_local_candidate(cand);
        }
        let peer = Peer {
            rtc,
            call,
            guest,
            link: Link::Connecting(now + self.cfg.connect_timeout),
            fingerprint,
            described: false,
            pending_candidates: Vec::new(),
            tracks_in: Vec::new(),
            slots: Vec::new(),
            ssrc_track: Vec::new(),
            pending_offer: None,
            next_timeout: now,
            dead: false,
            ufrag: ufrag.clone(),
            nacks_seen: Vec::new(),
            poisoned: false,
            remote_candidates: 0,
            remotes: Default::default(),
            ceiling: crate::quality::Ceiling::default(),
        };
        self.counters.peers_created += 1;
        let idx = match self.free.pop() {
            Some(idx) => {
                self.peers[idx] = Some(peer);
                idx
            }
            None => {
                self.peers.push(Some(peer));
                self.peers.len() - 1
            }
        };
        self.by_ufrag.insert(ufrag, idx);
        Ok(idx)
    }

    /// Fresh ICE credentials whose ufrag starts with this worker's index.
    fn worker_creds(&mut self) -> IceCreds {
        let ufrag = format!(
            "{:0width$x}{}",
            self.cfg.worker & 0xFF,
            self.random_token(14),
            width = WORKER_PREFIX_LEN
        );
        IceCreds {
            ufrag,
            pass: self.random_token(24),
        }
    }

    /// str0m answers a guest's ICE restart with random credentials of its own; put this
    /// worker's prefix back (in the agent and in the answer), or STUN would be misrouted, and
    /// index the peer under its current ufrag.
    fn keep_worker_prefix(&mut self, idx: PeerIdx, mut answer: String) -> String {
        let prefix = format!(
            "{:0width$x}",
            self.cfg.worker & 0xFF,
            width = WORKER_PREFIX_LEN
        );
        let Some(peer) = self.peers[idx].as_mut() else {
            return answer;
        };
        let mut current = peer.rtc.direct_api().local_ice_credentials();
        if !current.ufrag.starts_with(&prefix) {
            let new = self.worker_creds();
            answer = answer
                .replace(&current.ufrag, &new.ufrag)
                .replace(&current.pass, &new.pass);
            current = new;
            if let Some(peer) = self.peers[idx].as_mut() {
                peer.rtc
                    .direct_api()
                    .set_local_ice_credentials(current.clone());
            }
        }
        if let Some(peer) = self.peers[idx].as_mut() {
            if peer.ufrag != current.ufrag {
                self.by_ufrag.remove(&peer.ufrag);
                self.by_ufrag.insert(current.ufrag.clone(), idx);
                peer.ufrag = current.ufrag;
            }
        }
        answer
    }

    fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| ALPHABET[(self.rng.next_u32() as usize) % ALPHABET.len()] as char)
            .collect()
    }

    fn peer_of(&self, call: CallId, guest: SessionId) -> Option<PeerIdx> {
        let c = self.calls.get(&call)?;
        let idx = c.peers[c.side(guest)?]?;
        self.peers[idx].as_ref().filter(|p| !p.dead).map(|_| idx)
    }

    /// Drops a peer and every subscription that pointed at it.
    fn remove_peer(&mut self, idx: PeerIdx) {
        let Some(mut peer) = self.peers[idx].take() else {
            return;
        };
        peer.rtc.disconnect();
        self.counters.peers_closed += 1;
        // Its receivers' streams must go on from where this peer's packets left them when a
        // new source (e.g. the guest's new connection) takes its place.
        let now = self.last_now;
        for t in &peer.tracks_in {
            for s in &t.subs {
                let (Some(seq), Some(dst)) = (s.last_seq, self.peers[s.peer].as_mut()) else {
                    continue;
                };
                if let Some(slot) = dst.slots.iter_mut().find(|sl| sl.mid == s.mid) {
                    slot.last = Some((seq, s.last_ts, now));
                }
            }
        }
        if let Some(c) = self.calls.get_mut(&peer.call) {
            for slot in c.peers.iter_mut() {
                if *slot == Some(idx) {
                    *slot = None;
                }
            }
            for other in c.peers.iter().flatten() {
                if let Some(o) = self.peers[*other].as_mut() {
                    for t in &mut o.tracks_in {
                        t.subs.retain(|s| s.peer != idx);
                    }
                    for s in &mut o.slots {
                        if s.source.is_some_and(|(p, _)| p == idx) {
                            s.source = None;
                        }
                    }
                }
            }
        }
        self.by_addr.retain(|_, p| *p != idx);
        self.by_ufrag.remove(&peer.ufrag);
        self.dirty.retain(|p| *p != idx);
        self.free.push(idx);
    }

    fn peer_error(&mut self, idx: PeerIdx, err: &RtcError) {
        match err {
            RtcError::Dtls(_) => self.counters.dtls_failures += 1,
            _ => tracing::debug!(error = %err, "media peer error"),
        }
        self.lose_peer(idx);
    }

    /// The guest's connection ended (it closed it, e.g. to replace it, or DTLS failed): drop
    /// the peer, and give the guest the connect timeout to offer a new one before the side
    /// fails.
    fn lose_peer(&mut self, idx: PeerIdx) {
        let Some(peer) = self.peers[idx].as_mut() else {
            return;
        };
        peer.dead = true;
        let (call, guest) = (peer.call, peer.guest);
        self.remove_peer(idx);
        let deadline = self.last_now + self.cfg.connect_timeout;
        if let Some(c) = self.calls.get_mut(&call) {
            if let Some(side) = c.side(guest) {
                c.offer_deadline[side] = Some(deadline);
            }
        }
        self.events
            .push_back(MediaEvent::Disconnected { call, guest });
    }

    fn peer_panicked(&mut self, idx: PeerIdx) {
        self.counters.peer_panics += 1;
        tracing::error!(peer = idx, "str0m panicked; closing that peer only");
        self.fail_peer(idx);
    }

    /// Closes a broken peer and tells the signaling core.
    fn fail_peer(&mut self, idx: PeerIdx) {
        let Some(peer) = self.peers[idx].as_mut() else {
            return;
        };
        peer.dead = true;
        let (call, guest) = (peer.call, peer.guest);
        self.remove_peer(idx);
        self.events.push_back(MediaEvent::Failed { call, guest });
    }

    /// Test hook: the next time `guest`'s peer in `call` is driven, it panics as a str0m bug
    /// would, so tests can check that only that peer is closed.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&mut self, call: CallId, guest: SessionId) {
        if let Some(idx) = self.peer_of(call, guest) {
            if let Some(p) = self.peers[idx].as_mut() {
                p.poisoned = true;
            }
        }
    }

    /// Runs str0m's timers for one peer and drains it.
    fn tick_peer(&mut self, idx: PeerIdx, now: Instant) {
        // str0m releases what its pacer holds (not forwarded packets: they skip it) only on a
        // timeout at or after the time it asked for, one packet per timeout; while that is
        // (about) now, drive it again at once (a bounded number of times), not a turn later.
        let mut at = self.advance(now);
        for _ in 0..TICKS_PER_TURN {
            let Some(peer) = self.peers[idx].as_mut() else {
                return;
            };
            let ticked = catch_unwind(AssertUnwindSafe(|| {
                if peer.poisoned {
                    panic!("injected fault");
                }
                peer.rtc.handle_input(Input::Timeout(at))
            }));
            match ticked {
                Ok(Ok(())) => match self.drain(idx, at) {
                    // Time never goes backwards for str0m: what it was shown is the new now.
                    Some(next) => at = self.advance(next),
                    None => return,
                },
                Ok(Err(e)) => return self.peer_error(idx, &e),
                Err(_) => return self.peer_panicked(idx),
            }
        }
    }

    /// Polls a peer until it has nothing more to say. `Some(at)` when it wants a timeout
    /// again right away: at `now` or, within [`IMMEDIATE`], at `at`.
    fn drain(&mut self, idx: PeerIdx, now: Instant) -> Option<Instant> {
        loop {
            let peer = self.peers[idx].as_mut()?;
            if !peer.rtc.is_alive() {
                self.lose_peer(idx);
                return None;
            }
            let out = match catch_unwind(AssertUnwindSafe(|| peer.rtc.poll_output())) {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => {
                    self.peer_error(idx, &e);
                    return None;
                }
                Err(_) => {
                    self.peer_panicked(idx);
                    return None;
                }
            };
            match out {
                Output::Timeout(t) => {
                    let again = (t <= now + IMMEDIATE).then(|| t.max(now));
                    // The timer is the fallback for when the caller stops driving (the tick
                    // budget ran out); it never fires sooner than MIN_WAKE.
                    let t = t.max(now + MIN_WAKE);
                    let schedule = t < peer.next_timeout || peer.next_timeout <= now;
                    peer.next_timeout = t;
                    if schedule {
                        self.timers.push(Reverse((t, idx)));
                    }
                    while let Some(call) = self.rebind_pending.pop() {
                        self.rebind(call);
                    }
                    return again;
                }
                Output::Transmit(t) => self.transmits.push_back(t),
                Output::Event(e) => self.on_event(idx, e, now),
            }
        }
    }

    /// Lets every peer that had packets written to it send them.
    fn flush(&mut self, now: Instant) {
        for _ in 0..MAX_FLUSH_ROUNDS {
            if self.dirty.is_empty() {
                return;
            }
            let dirty = std::mem::take(&mut self.dirty);
            for idx in dirty {
                self.tick_peer(idx, now);
            }
        }
    }

    fn mark_dirty(&mut self, idx: PeerIdx) {
        if !self.dirty.contains(&idx) {
            self.dirty.push(idx);
        }
    }

    fn sweep(&mut self, now: Instant) {
        // Guests that never offered.
        let mut late = Vec::new();
        for (call, c) in &mut self.calls {
            for side in 0..2 {
                if c.offer_deadline[side].is_some_and(|d| d <= now) {
                    c.offer_deadline[side] = None;
                    late.push((*call, c.guests[side]));
                }
            }
        }
        for (call, guest) in late {
            self.counters.ice_failures += 1;
            self.events.push_back(MediaEvent::Failed { call, guest });
        }
        // Peers that did not connect (or come back) in time.
        let mut expired = Vec::new();
        for (idx, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                if let Link::Connecting(d) | Link::Disconnected(d) = p.link {
                    if d <= now {
                        expired.push(idx);
                    }
                }
            }
        }
        for idx in expired {
            self.counters.ice_failures += 1;
            self.fail_peer(idx);
        }
    }

    fn advance(&mut self, now: Instant) -> Instant {
        // str0m wants time to never go backwards.
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    // --- events ---------------------------------------------------------------------------

    fn on_event(&mut self, idx: PeerIdx, event: Event, now: Instant) {
        let peer = self.peers[idx]
            .as_mut()
            .expect("on_event is called for live peers");
        let (call, guest) = (peer.call, peer.guest);
        match event {
            Event::Connected => {
                if let Some(c) = self.calls.get_mut(&call) {
                    if let Some(side) = c.side(guest) {
                        c.connected[side] = true;
                        if c.setup.is_none() && c.connected == [true; 2] {
                            c.setup = Some(now.saturating_duration_since(c.opened));
                        }
                    }
                }
                peer.link = Link::Connected;
                if !self.rebind_pending.contains(&call) {
                    self.rebind_pending.push(call);
                }
                self.events.push_back(MediaEvent::Connected { call, guest });
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                if peer.link == Link::Connected =>
            {
                peer.link = Link::Disconnected(now + self.cfg.connect_timeout);
                self.events
                    .push_back(MediaEvent::Disconnected { call, guest });
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if matches!(peer.link, Link::Disconnected(_)) && peer.rtc.is_connected() => {
                peer.link = Link::Connected;
                self.events.push_back(MediaEvent::Connected { call, guest });
            }
            Event::MediaAdded(m) => {
                if peer.tracks_in.len() + peer.slots.len() >= MAX_MEDIA_PER_PEER {
                    return;
                }
                if m.direction.is_receiving() && !peer.tracks_in.iter().any(|t| t.mid == m.mid) {
                    peer.tracks_in.push(TrackIn {
                        mid: m.mid,
                        kind: m.kind,
                        subs: Vec::new(),
                        last_keyframe_request: None,
                        last_remb: None,
                    });
                }
                if m.direction.is_sending() && !peer.slots.iter().any(|s| s.mid == m.mid) {
                    peer.slots.push(OutSlot {
                        mid: m.mid,
                        kind: m.kind,
                        source: None,
                        last: None,
                    });
                }
                // Bound once the drain is over and every section of the description is
                // registered: binding now could renegotiate for a section that is coming.
                if !self.rebind_pending.contains(&call) {
                    self.rebind_pending.push(call);
                }
            }
            Event::RtpPacket(pkt) => self.forward(idx, pkt),
            Event::KeyframeRequest(req) => {
                let Some((src, track)) = peer
                    .slots
                    .iter()
                    .find(|s| s.mid == req.mid)
                    .and_then(|s| s.source)
                else {
                    return;
                };
                self.request_keyframe(src, track, req.kind, now);
            }
            Event::MediaIngressStats(s) => {
                let kind = peer.kind_of(s.mid).unwrap_or(MediaKind::Video);
                let ki = kind_idx(kind);
                let jitter = f64::from(s.jitter) / clock_rate(kind);
                push_sample(
                    &mut self.samples,
                    Sample::Jitter(ki, Duration::from_secs_f64(jitter)),
                );
                if let Some(loss) = s.loss {
                    push_sample(&mut self.samples, Sample::Loss(ki, loss));
                }
                if let Some(rtt) = s.rtt {
                    push_sample(&mut self.samples, Sample::Rtt(ki, rtt));
                }
                let delta = peer.nack_delta(s.mid, false, s.nacks);
                self.counters.nacks_sent += delta;
                if let Some(leg) = leg_of(&mut self.calls, call, guest) {
                    let (k, d) = (kind_idx(kind), Direction::In);
                    leg.point(k, d, Figure::Jitter, jitter);
                    if let Some(loss) = s.loss {
                        leg.point(k, d, Figure::Loss, f64::from(loss));
                    }
                    if let Some(rtt) = s.rtt {
                        leg.point(k, d, Figure::Rtt, rtt.as_secs_f64());
                    }
                    leg.bytes(k, d, s.mid, s.bytes, s.timestamp);
                }
            }
            Event::MediaEgressStats(s) => {
                let kind = peer.kind_of(s.mid).unwrap_or(MediaKind::Video);
                if let Some(loss) = s.loss {
                    push_sample(&mut self.samples, Sample::Loss(kind_idx(kind), loss));
                }
                if let Some(rtt) = s.rtt {
                    push_sample(&mut self.samples, Sample::Rtt(kind_idx(kind), rtt));
                }
                let delta = peer.nack_delta(s.mid, true, s.nacks);
                self.counters.nacks_received += delta;
                if let Some(leg) = leg_of(&mut self.calls, call, guest) {
                    let (k, d) = (kind_idx(kind), Direction::Out);
                    if let Some(loss) = s.loss {
                        leg.point(k, d, Figure::Loss, f64::from(loss));
                    }
                    if let Some(rtt) = s.rtt {
                        leg.point(k, d, Figure::Rtt, rtt.as_secs_f64());
                    }
                    if let Some(remote) = &s.remote {
                        let jitter = f64::from(remote.jitter) / clock_rate(kind);
                        leg.point(k, d, Figure::Jitter, jitter);
                    }
                    leg.bytes(k, d, s.mid, s.bytes, s.timestamp);
                }
                if let Some(loss) = s.loss {
                    peer.ceiling.on_loss(loss, now);
                }
                if kind == MediaKind::Video {
                    // The ceiling is told again with every stats report of the video this guest
                    // receives, whether or not its estimate moved.
                    self.feed_back_all(idx, now);
                }
            }
            Event::PeerStats(ps) => {
                let Some(pair) = ps.selected_candidate_pair else {
                    return;
                };
                let route = Route::new(peer.remotes.kind_of(pair.remote.addr), pair.protocol);
                if let Some(leg) = leg_of(&mut self.calls, call, guest) {
                    if leg.route != Some(route) {
                        leg.route = Some(route);
                        let (c, t) = route.index();
                        self.counters.connections[c][t] += 1;
                    }
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                push_sample(&mut self.samples, Sample::Bandwidth(estimate.as_u64()));
                peer.ceiling.on_estimate(estimate.as_u64(), now);
                self.feed_back_all(idx, now);
            }
            _ => {}
        }
    }

    /// What guest `idx`'s downlink holds (its bandwidth estimate, less a margin) is what its
    /// senders may send it: told to each sender of the video it receives as REMB, which the
    /// sender's congestion control obeys as a ceiling on all it sends (the SFU forwards, it never
    /// transcodes). The ceiling ([`crate::quality::Ceiling`]) is the estimate less a margin, cut
    /// by heavy loss in the guest's receiver reports and raised by steps while they show none:
    /// a fallen estimate does not grow back by itself once the downlink frees up, as the sender
    /// held below it never sends more (probing, by padding, misreads a token-bucket link:
    /// `benches/call-adapt`).
    fn feed_back_all(&mut self, idx: PeerIdx, now: Instant) {
        let Some(peer) = self.peers[idx].as_ref() else {
            return;
        };
        let Some(ceiling) = peer.ceiling.bps() else {
            return;
        };
        let sources: Vec<(PeerIdx, usize)> = peer
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video)
            .filter_map(|s| s.source)
            .collect();
        if sources.is_empty() {
            return;
        }
        for (src, track) in sources {
            self.feed_back(src, track, ceiling, now);
        }
    }

    /// Tells the sender of track `track` of peer `src` (REMB) that its receiver takes at most
    /// `bps`: at most every [`REMB_INTERVAL`], sooner when the figure falls by a tenth or more.
    fn feed_back(&mut self, src: PeerIdx, track: usize, bps: u64, now: Instant) {
        let Some(p) = self.peers[src].as_mut() else {
            return;
        };
        let Some(t) = p.tracks_in.get_mut(track) else {
            return;
        };
        if let Some((at, last)) = t.last_remb {
            let falling = bps.saturating_mul(10) <= last.saturating_mul(9);
            if now.saturating_duration_since(at) < REMB_INTERVAL && !falling {
                return;
            }
        }
        let mid = t.mid;
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return;
        };
        rx.request_remb(Bitrate::bps(bps));
        t.last_remb = Some((now, bps));
        self.counters.rembs_sent += 1;
        self.mark_dirty(src);
    }

    fn request_keyframe(
        &mut self,
        src: PeerIdx,
        track: usize,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let Some(p) = self.peers[src].as_mut() else {
            return;
        };
        let Some(t) = p.tracks_in.get_mut(track) else {
            return;
        };
        if t.last_keyframe_request
            .is_some_and(|last| now.duration_since(last) < KEYFRAME_THROTTLE)
        {
            self.counters.keyframe_requests_throttled += 1;
            return;
        }
        let mid = t.mid;
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return;
        };
        rx.request_keyframe(kind);
        t.last_keyframe_request = Some(now);
        match kind {
            KeyframeRequestKind::Pli => self.counters.plis_forwarded += 1,
            KeyframeRequestKind::Fir => self.counters.firs_forwarded += 1,
        }
        self.mark_dirty(src);
    }

    /// Binds every unsubscribed track of the call to a free slot of the same kind on each
    /// other peer, renegotiating (a server offer) when a peer has no free slot.
    fn rebind(&mut self, call: CallId) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let members: Vec<PeerIdx> = c.peers.iter().flatten().copied().collect();
        for &src in &members {
            for &dst in &members {
                if src == dst {
                    continue;
                }
                let n_tracks = self.peers[src].as_ref().map_or(0, |p| p.tracks_in.len());
                for t in 0..n_tracks {
                    self.bind(call, src, t, dst);
                }
            }
        }
    }

    fn bind(&mut self, call: CallId, src: PeerIdx, track: usize, dst: PeerIdx) {
        let Some(sp) = self.peers[src].as_ref() else {
            return;
        };
        let t = &sp.tracks_in[track];
        if t.subs.iter().any(|s| s.peer == dst) {
            return;
        }
        let kind = t.kind;
        let stream_id = sp.guest.to_string();
        let Some(dp) = self.peers[dst].as_mut() else {
            return;
        };
        let mut continued = None;
        let mid = if let Some(slot) = dp
            .slots
            .iter_mut()
            .find(|s| s.kind == kind && s.source.is_none())
        {
            slot.source = Some((src, track));
            continued = slot.last.take();
            slot.mid
        } else {
            // No free section: offer the guest a new send-only one.
            // str0m announces a description's sections once the peer is connected: before
            // that, a missing section may just not be announced yet.
            if dp.link != Link::Connected
                || dp.pending_offer.is_some()
                || dp.slots.len() >= MAX_MEDIA_PER_PEER
            {
                return;
            }
            let mut api = dp.rtc.sdp_api();
            let mid = api.add_media(kind, SdpDirection::SendOnly, Some(stream_id), None, None);
            let Some((offer, pending)) = api.apply() else {
                return;
            };
            dp.pending_offer = Some(pending);
            dp.slots.push(OutSlot {
                mid,
                kind,
                source: Some((src, track)),
                last: None,
            });
            let guest = dp.guest;
            self.events.push_back(MediaEvent::Offer {
                call,
                guest,
                sdp: offer.to_sdp_string(),
            });
            mid
        };
        if let Some(sp) = self.peers[src].as_mut() {
            let mut sub = Sub::new(dst, mid);
            if let Some((seq, ts, at)) = continued {
                // Continue the receiver's stream; its clock ran on while the section was idle.
                let clock = if kind == MediaKind::Audio {
                    48_000.0
                } else {
                    90_000.0
                };
                let elapsed = self.last_now.saturating_duration_since(at).as_secs_f64();
                sub.last_seq = Some(seq);
                sub.last_ts = ts.wrapping_add((elapsed * clock) as u32);
            }
            sp.tracks_in[track].subs.push(sub);
            // A new receiver needs a picture now, not at the sender's next keyframe.
            if kind == MediaKind::Video {
                sp.tracks_in[track].last_keyframe_request = None;
                let mid = sp.tracks_in[track].mid;
                if let Some(rx) = sp.rtc.direct_api().stream_rx_by_mid(mid, None) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
        }
    }

    /// The hot path: one incoming RTP packet to every subscriber of its track.
    fn forward(&mut self, src: PeerIdx, mut pkt: RtpPacket) {
        let sp = self.peers[src]
            .as_mut()
            .expect("forward is called for live peers");
        let ssrc = pkt.header.ssrc;
        let Some(track) = sp.track_for_ssrc(ssrc) else {
            tracing::debug!(?ssrc, "rtp: no track for ssrc");
            self.counters.packets_unrouted += 1;
            return;
        };
        let kind = sp.tracks_in[track].kind;
        let k = kind_idx(kind);
        let len = pkt.payload.len() as u64;
        self.counters.packets[k][Direction::In as usize] += 1;
        self.counters.bytes[k][Direction::In as usize] += len;
        let src_pt = usize::from(*pkt.header.payload_type) & 0x7F;
        let mut subs = std::mem::take(&mut sp.tracks_in[track].subs);
        // The codec behind the payload type, looked up only until every receiver has mapped it.
        let src_params = if subs.iter().any(|s| s.pt_map[src_pt] == PT_UNKNOWN) {
            sp.rtc
                .codec_config()
                .find(|p| *p.pt() == *pkt.header.payload_type)
                .copied()
        } else {
            None
        };
        if subs.is_empty() {
            tracing::debug!(?ssrc, "rtp: no subscriber");
            self.counters.packets_unrouted += 1;
        }
        let mut ext = pkt.header.ext_vals.clone();
        ext.mid = None;
        ext.rid = None;
        ext.rid_repair = None;
        ext.transport_cc = None;
        let seq = *pkt.seq_no;
        let ts = pkt.header.timestamp;
        // A video frame's last packet: the frame rate and freezes of the call's legs.
        let frame = (kind == MediaKind::Video && pkt.header.marker).then_some((sp.call, sp.guest));
        let mut framed = false;
        let last = subs.len().saturating_sub(1);
        for (i, sub) in subs.iter_mut().enumerate() {
            let Some(dp) = self.peers[sub.peer].as_mut() else {
                continue;
            };
            let mut pt = sub.pt_map[src_pt];
            if pt == PT_UNKNOWN {
                pt = src_params
                    .and_then(|p| dp.rtc.codec_config().match_params(p).map(|d| *d.pt()))
                    .unwrap_or(PT_NONE);
                sub.pt_map[src_pt] = pt;
            }
            if pt == PT_NONE {
                tracing::debug!(src_pt, ?src_params, "rtp: no matching payload type");
                self.counters.packets_unrouted += 1;
                continue;
            }
            if sub.src_ssrc != Some(ssrc) {
                // A new source (or the first): continue the outgoing numbering from where it was.
                let next_seq = sub.last_seq.map_or(seq, |l| l.wrapping_add(1));
                sub.seq_delta = next_seq.wrapping_sub(seq);
                sub.ts_delta = if sub.last_seq.is_some() {
                    sub.last_ts.wrapping_add(1).wrapping_sub(ts)
                } else {
                    0
                };
                sub.src_ssrc = Some(ssrc);
            }
            let out_seq = seq.wrapping_add(sub.seq_delta);
            let out_ts = ts.wrapping_add(sub.ts_delta);
            // The sender already paced these packets; pacing them again here would only add
            // delay (a 6 KB frame at a 2.5 Mbit/s pace is 19 ms): they leave on the next poll
            // (the fork's direct forwarding, vendor/README.md). The estimate still runs.
            let written = dp.rtc.direct_api().forward_rtp(
                sub.mid,
                RtpWrite::new(
                    pt.into(),
                    out_seq.into(),
                    out_ts,
                    pkt.timestamp,
                    // The last (in a call, the only) receiver takes the payload itself.
                    if i == last {
                        std::mem::take(&mut pkt.payload)
                    } else {
                        pkt.payload.clone()
                    },
                )
                .marker(pkt.header.marker)
                .ext_vals(if i == last {
                    std::mem::take(&mut ext)
                } else {
                    ext.clone()
                })
                .nackable(kind == MediaKind::Video),
            );
            if !written {
                tracing::debug!(mid = %sub.mid, "rtp: no send stream");
                self.counters.packets_unrouted += 1;
                continue;
            }
            if sub.last_seq.is_none_or(|l| out_seq > l) {
                sub.last_seq = Some(out_seq);
                sub.last_ts = out_ts;
            }
            self.counters.packets[k][Direction::Out as usize] += 1;
            self.counters.bytes[k][Direction::Out as usize] += len;
            framed = true;
            let dst = sub.peer;
            if !self.dirty.contains(&dst) {
                self.dirty.push(dst);
            }
        }
        if let Some((call, guest)) = frame {
            if let Some(c) = self.calls.get_mut(&call) {
                if let Some(side) = c.side(guest) {
                    c.legs[side].frame(Direction::In, pkt.timestamp);
                    if framed {
                        c.legs[1 - side].frame(Direction::Out, pkt.timestamp);
                    }
                }
            }
        }
        if let Some(sp) = self.peers[src].as_mut() {
            let t = &mut sp.tracks_in[track].subs;
            // Subscriptions added while forwarding (none today) are kept after the old ones.
            subs.append(t);
            *t = subs;
        }
    }
}

/// The RTP clock rate of a kind of media (Opus 48 kHz, video 90 kHz), to turn RTCP jitter into
/// seconds.
fn clock_rate(kind: MediaKind) -> f64 {
    match kind {
        MediaKind::Audio => 48_000.0,
        MediaKind::Video => 90_000.0,
    }
}

/// The quality record of `guest`'s leg of `call`.
fn leg_of(calls: &mut HashMap<CallId, Call>, call: CallId, guest: SessionId) -> Option<&mut Leg> {
    let c = calls.get_mut(&call)?;
    let side = c.side(guest)?;
    Some(&mut c.legs[side])
}

fn push_sample(samples: &mut Vec<Sample>, s: Sample) {
    if samples.len() < MAX_SAMPLES {
        samples.push(s);
    }
}

fn parse_offer(sdp: &str) -> Result<SdpOffer, MediaError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(MediaError::SdpParse);
    }
    SdpOffer::from_sdp_string(sdp).map_err(|_| MediaError::SdpParse)
}

/// The first `a=fingerprint:` line of a description (empty if none).
fn fingerprint_line(sdp: &str) -> &str {
    sdp.lines()
        .map(str::trim)
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap_or("")
}
