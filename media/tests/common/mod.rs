//! Deterministic harness for the media core: one [`MediaCore`] (the SFU) and plain str0m
//! clients, wired together by hand. No sockets and no real clock: `Sim::now` only moves when a
//! test advances it (`Sim::step`, 2 ms), and every datagram is either dropped by `Sim::filter`
//! or delivered `Sim::latency` (5 ms) after it was sent.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction as SdpDirection, Frequency, MediaData, MediaKind, MediaTime, Mid, Pt,
};
use str0m::net::{Receive, Transmit};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tandem_media::{MediaConfig, MediaCore, MediaOutput, Received};
use tandem_signaling::{CallId, MediaCommand, MediaEvent, RoomId, SessionId};

pub const SERVER: &str = "127.0.0.1:7882";
pub const ADDR_A: &str = "127.0.0.1:40001";
pub const ADDR_B: &str = "127.0.0.1:40002";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

pub fn server_addr() -> SocketAddr {
    addr(SERVER)
}

pub fn guest_a() -> SessionId {
    SessionId::from_raw(0xa11ce)
}

pub fn guest_b() -> SessionId {
    SessionId::from_raw(0xb0b)
}

pub fn room() -> RoomId {
    RoomId::from_raw(0x7007)
}

pub fn test_config() -> MediaConfig {
    MediaConfig {
        worker: 0,
        udp_addr: server_addr(),
        tcp_addr: None,
        connect_timeout: Duration::from_secs(5),
        stats_interval: Duration::from_millis(500),
        ..MediaConfig::default()
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=tandem_media=debug`).
pub fn init_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Which way a datagram is travelling, and for which client (index into `Sim::clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// Client → server.
    Up(usize),
    /// Server → client.
    Down(usize),
}

/// Decides whether a datagram is lost: `true` drops it.
pub type Filter = Box<dyn FnMut(Leg, &[u8]) -> bool>;

/// What a datagram's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    /// RTP with this payload type (SRTP leaves the header in the clear).
    Rtp(u8),
    Rtcp,
    Other,
}

pub fn classify(d: &[u8]) -> Kind {
    match d.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) if d.len() >= 2 => {
            if (200..=206).contains(&d[1]) {
                Kind::Rtcp
            } else {
                Kind::Rtp(d[1] & 0x7F)
            }
        }
        _ => Kind::Other,
    }
}

/// One browser stand-in: a str0m `Rtc` in frame mode with an audio and a video section.
pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub guest: SessionId,
    pub events: Vec<(Instant, Event)>,
    pub pending: Option<SdpPendingOffer>,
    pub audio_mid: Mid,
    pub video_mid: Mid,
    pub next_timeout: Instant,
    pub opus: Option<Pt>,
    pub vp8: Option<Pt>,
    /// Datagrams this client sent that the core did not know (`Received::Unknown`).
    pub up_unknown: usize,
    pub up_handled: usize,
    /// Server datagrams handed to this client.
    pub down_delivered: usize,
    /// Set once the client answered a server offer.
    pub answered_server_offers: usize,
}

impl Client {
    /// A client with an audio and a video send/receive section, and the SDP offer for them.
    pub fn new(addr: SocketAddr, guest: SessionId, now: Instant) -> (Client, String) {
        Client::with_video(addr, guest, now, true)
    }

    /// Like [`Client::new`]; without video the client offers an audio section only (its
    /// `video_mid` then names no section).
    pub fn with_video(
        addr: SocketAddr,
        guest: SessionId,
        now: Instant,
        video: bool,
    ) -> (Client, String) {
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .set_stats_interval(Some(Duration::from_millis(500)))
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"))
            .expect("candidate accepted");
        let mut api = rtc.sdp_api();
        let audio_mid = api.add_media(MediaKind::Audio, SdpDirection::SendRecv, None, None, None);
        let video_mid = if video {
            api.add_media(MediaKind::Video, SdpDirection::SendRecv, None, None, None)
        } else {
            Mid::from("none")
        };
        let (offer, pending) = api.apply().expect("changes need an offer");
        let client = Client {
            rtc,
            addr,
            guest,
            events: Vec::new(),
            pending: Some(pending),
            audio_mid,
            video_mid,
            next_timeout: now,
            opus: None,
            vp8: None,
            up_unknown: 0,
            up_handled: 0,
            down_delivered: 0,
            answered_server_offers: 0,
        };
        (client, offer.to_sdp_string())
    }

    /// The client's host candidate as a trickle line.
    pub fn candidate_line(&self) -> String {
        Candidate::host(self.addr, "udp").unwrap().to_sdp_string()
    }

    pub fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected))
    }

    pub fn media_data(&self) -> impl Iterator<Item = &MediaData> {
        self.events.iter().filter_map(|(_, e)| match e {
            Event::MediaData(d) => Some(d),
            _ => None,
        })
    }

    pub fn media_data_since(&self, since: Instant) -> impl Iterator<Item = &MediaData> {
        self.events.iter().filter_map(move |(t, e)| match e {
            Event::MediaData(d) if *t >= since => Some(d),
            _ => None,
        })
    }

    fn learn_pts(&mut self) {
        self.opus = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        self.vp8 = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt());
    }
}

/// The core, the clients and the simulated network between them.
pub struct Sim {
    pub core: MediaCore,
    pub start: Instant,
    pub now: Instant,
    pub step: Duration,
    pub call: CallId,
    pub clients: Vec<Client>,
    pub media_events: Vec<(Instant, MediaEvent)>,
    pub filter: Filter,
    pub dropped: usize,
    /// Server datagrams to an address no client has.
    pub undeliverable: usize,
    /// When set, server offers are answered automatically.
    pub auto_answer: bool,
    /// One-way delay of every datagram. Not zero: with a zero round trip str0m's delay-based
    /// bandwidth estimator asks for a timeout at `now` forever (see `zero_rtt_does_not_hang`).
    pub latency: Duration,
    /// Datagrams on their way, in sending order (the delay is the same for all).
    pub wire: VecDeque<InFlight>,
    /// Real (not simulated) time spent inside the core's calls, for the forwarding benchmark.
    pub core_time: Duration,
    /// `core_time` split by call: [timeouts, receives, output polls], and how many of each.
    pub core_split: [(Duration, u64); 3],
    /// Real time the clients spent receiving the core's datagrams, and how many (the
    /// benchmark's baseline: str0m's own cost per received packet).
    pub client_rx_time: Duration,
    pub client_rx: u64,
}

pub struct InFlight {
    pub at: Instant,
    pub leg: Leg,
    pub transmit: Transmit,
}

impl InFlight {
    fn new(at: Instant, leg: Leg, transmit: Transmit) -> Self {
        InFlight { at, leg, transmit }
    }
}

impl Sim {
    /// A core and two clients (A at 127.0.0.1:40001, B at 127.0.0.1:40002), nothing sent yet.
    pub fn new(cfg: MediaConfig) -> Sim {
        init_log();
        let start = Instant::now();
        let core = MediaCore::new(cfg, [7; 32], start).expect("core");
        Sim {
            core,
            start,
            now: start,
            step: Duration::from_millis(2),
            call: CallId(1),
            clients: Vec::new(),
            media_events: Vec::new(),
            filter: Box::new(|_, _| false),
            dropped: 0,
            undeliverable: 0,
            auto_answer: true,
            latency: Duration::from_millis(5),
            wire: VecDeque::new(),
            core_time: Duration::ZERO,
            core_split: Default::default(),
            client_rx_time: Duration::ZERO,
            client_rx: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn command(&mut self, cmd: MediaCommand) {
        self.core.handle_command(cmd, self.now);
        self.pump();
    }

    pub fn open(&mut self) {
        self.command(MediaCommand::Open {
            call: self.call,
            room: room(),
            guests: [guest_a(), guest_b()],
            video: true,
        });
    }

    /// Adds a client and returns its index and offer (not yet sent).
    pub fn add_client(&mut self, address: &str, guest: SessionId) -> (usize, String) {
        let (c, offer) = Client::new(addr(address), guest, self.now);
        self.clients.push(c);
        (self.clients.len() - 1, offer)
    }

    /// Sends client `i`'s offer and its host candidate to the core.
    pub fn send_offer(&mut self, i: usize, sdp: String) {
        let guest = self.clients[i].guest;
        self.command(MediaCommand::Offer {
            call: self.call,
            guest,
            sdp,
        });
    }

    pub fn send_candidate(&mut self, i: usize) {
        let guest = self.clients[i].guest;
        let candidate = self.clients[i].candidate_line();
        self.command(MediaCommand::Candidate {
            call: self.call,
            guest,
            candidate,
            sdp_mid: None,
            sdp_mline_index: Some(0),
        });
    }

    /// Open, both clients offer (B trickles its candidate before its offer, A after).
    pub fn setup_call(cfg: MediaConfig) -> Sim {
        let mut sim = Sim::new(cfg);
        sim.open();
        let (a, offer_a) = sim.add_client(ADDR_A, guest_a());
        let (b, offer_b) = sim.add_client(ADDR_B, guest_b());
        sim.send_offer(a, offer_a);
        sim.send_candidate(a);
        sim.send_candidate(b);
        sim.send_offer(b, offer_b);
        sim
    }

    /// [`Sim::setup_call`] and run until both clients and the core report connected.
    pub fn connected_call() -> Sim {
        let mut sim = Sim::setup_call(test_config());
        sim.run_until_connected(Duration::from_secs(3));
        sim
    }

    pub fn core_connected(&self, guest: SessionId) -> bool {
        self.media_events
            .iter()
            .any(|(_, e)| matches!(e, MediaEvent::Connected { guest: g, .. } if *g == guest))
    }

    pub fn failed(&self, guest: SessionId) -> bool {
        self.media_events
            .iter()
            .any(|(_, e)| matches!(e, MediaEvent::Failed { guest: g, .. } if *g == guest))
    }

    pub fn run_until_connected(&mut self, limit: Duration) {
        let deadline = self.now + limit;
        while !(self.clients.iter().all(|c| c.connected())
            && self.clients.iter().all(|c| self.core_connected(c.guest)))
        {
            assert!(
                self.now < deadline,
                "not connected after {limit:?}: clients {:?}, core events {:?}",
                self.clients
                    .iter()
                    .map(|c| c.connected())
                    .collect::<Vec<_>>(),
                self.media_events
            );
            self.tick();
        }
    }

    /// Runs `f` then one time step, until `d` has passed.
    pub fn run_for(&mut self, d: Duration, mut f: impl FnMut(&mut Sim)) {
        let end = self.now + d;
        while self.now < end {
            f(self);
            self.tick();
        }
    }

    /// Advances the clock by one step, fires due timers and moves every datagram.
    pub fn tick(&mut self) {
        self.now += self.step;
        if self.core.poll_timeout().is_some_and(|t| self.now >= t) {
            let t = std::time::Instant::now();
            self.core.handle_timeout(self.now);
            self.core_time += t.elapsed();
            self.core_split[0].0 += t.elapsed();
            self.core_split[0].1 += 1;
        }
        for c in &mut self.clients {
            if self.now >= c.next_timeout {
                c.rtc
                    .handle_input(Input::Timeout(self.now))
                    .expect("client timeout");
            }
        }
        self.pump();
    }

    /// Moves datagrams and events until everyone is quiet at `self.now`: polls every client
    /// and the core, puts what they send on the wire (or drops it, see `filter`), and hands
    /// over the datagrams whose one-way `latency` has passed.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut sent = false;
            for (i, c) in self.clients.iter_mut().enumerate() {
                loop {
                    match c.rtc.poll_output().expect("client poll_output") {
                        Output::Timeout(t) => {
                            c.next_timeout = t;
                            break;
                        }
                        Output::Transmit(t) => {
                            sent = true;
                            if (self.filter)(Leg::Up(i), &t.contents) {
                                self.dropped += 1;
                            } else {
                                self.wire.push_back(InFlight::new(
                                    self.now + self.latency,
                                    Leg::Up(i),
                                    t,
                                ));
                            }
                        }
                        Output::Event(e) => {
                            if matches!(e, Event::Connected) {
                                c.learn_pts();
                            }
                            c.events.push((self.now, e));
                        }
                    }
                }
            }
            let mut events = Vec::new();
            loop {
                let started = std::time::Instant::now();
                let polled = self.core.poll_output();
                self.core_time += started.elapsed();
                self.core_split[2].0 += started.elapsed();
                self.core_split[2].1 += 1;
                let t = match polled {
                    None => break,
                    Some(MediaOutput::Event(e)) => {
                        events.push(e);
                        continue;
                    }
                    Some(MediaOutput::Transmit(t)) => t,
                };
                sent = true;
                let Some(i) = self.clients.iter().position(|c| c.addr == t.destination) else {
                    self.undeliverable += 1;
                    continue;
                };
                if (self.filter)(Leg::Down(i), &t.contents) {
                    self.dropped += 1;
                } else {
                    self.wire
                        .push_back(InFlight::new(self.now + self.latency, Leg::Down(i), t));
                }
            }
            let due = self.wire.front().is_some_and(|p| p.at <= self.now);
            if !sent && !due && events.is_empty() {
                return;
            }
            for e in events {
                self.on_media_event(e);
            }
            while self.wire.front().is_some_and(|p| p.at <= self.now) {
                let p = self.wire.pop_front().expect("front exists");
                self.deliver(p.leg, &p.transmit);
            }
        }
        panic!("network did not settle");
    }

    fn deliver(&mut self, leg: Leg, t: &Transmit) {
        match leg {
            Leg::Up(i) => {
                assert_eq!(
                    t.destination,
                    server_addr(),
                    "clients only talk to the server"
                );
                let started = std::time::Instant::now();
                let r = self.core.handle_receive(
                    t.proto,
                    t.source,
                    t.destination,
                    &t.contents,
                    self.now,
                );
                self.core_time += started.elapsed();
                self.core_split[1].0 += started.elapsed();
                self.core_split[1].1 += 1;
                match r {
                    Received::Handled => self.clients[i].up_handled += 1,
                    Received::Unknown => self.clients[i].up_unknown += 1,
                }
            }
            Leg::Down(i) => {
                assert_eq!(
                    t.source,
                    server_addr(),
                    "the server sends from its host address"
                );
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: t.proto,
                        source: t.source,
                        destination: t.destination,
                        contents: (&t.contents[..])
                            .try_into()
                            .expect("server datagram parses"),
                    },
                );
                self.clients[i].down_delivered += 1;
                let started = std::time::Instant::now();
                self.clients[i]
                    .rtc
                    .handle_input(input)
                    .expect("client handles server datagram");
                self.client_rx_time += started.elapsed();
                self.client_rx += 1;
            }
        }
    }

    fn client_of(&self, guest: SessionId) -> Option<usize> {
        // The last client added for a guest is the live one (a replaced client stays listed).
        self.clients.iter().rposition(|c| c.guest == guest)
    }

    fn on_media_event(&mut self, e: MediaEvent) {
        match &e {
            MediaEvent::Answer { guest, sdp, .. } => {
                let i = self.client_of(*guest).expect("answer for a known guest");
                let c = &mut self.clients[i];
                let pending = c.pending.take().expect("answer without an offer");
                let answer = SdpAnswer::from_sdp_string(sdp).expect("server answer parses");
                c.rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .expect("client accepts answer");
            }
            MediaEvent::Candidate {
                guest, candidate, ..
            } => {
                let i = self.client_of(*guest).expect("candidate for a known guest");
                let line = candidate.strip_prefix("a=").unwrap_or(candidate);
                let cand = Candidate::from_sdp_string(line).expect("server candidate parses");
                self.clients[i].rtc.add_remote_candidate(cand);
            }
            MediaEvent::Offer { guest, sdp, .. } if self.auto_answer => {
                let i = self.client_of(*guest).expect("offer for a known guest");
                let offer = SdpOffer::from_sdp_string(sdp).expect("server offer parses");
                let answer = self.clients[i]
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("client accepts server offer");
                self.clients[i].answered_server_offers += 1;
                let cmd = MediaCommand::Answer {
                    call: self.call,
                    guest: *guest,
                    sdp: answer.to_sdp_string(),
                };
                self.core.handle_command(cmd, self.now);
            }
            _ => {}
        }
        self.media_events.push((self.now, e));
    }

    // --- media ------------------------------------------------------------------------------

    /// Writes audio frame `idx` (20 ms of Opus) on client `i`'s audio section.
    pub fn write_audio(&mut self, i: usize, idx: u32) {
        let now = self.now;
        let c = &mut self.clients[i];
        let pt = c.opus.expect("opus negotiated");
        let time = MediaTime::new(u64::from(idx) * 960, Frequency::FORTY_EIGHT_KHZ);
        c.rtc
            .writer(c.audio_mid)
            .expect("audio writer")
            .write(pt, now, time, audio_frame(idx))
            .expect("audio write");
    }

    /// Writes video frame `idx` (VP8 at 30 fps) on client `i`'s video section.
    pub fn write_video(&mut self, i: usize, idx: u32, key: bool) {
        let now = self.now;
        let c = &mut self.clients[i];
        let pt = c.vp8.expect("vp8 negotiated");
        let time = MediaTime::new(u64::from(idx) * 3000, Frequency::NINETY_KHZ);
        c.rtc
            .writer(c.video_mid)
            .expect("video writer")
            .write(pt, now, time, video_frame(idx, key))
            .expect("video write");
    }

    /// Runs for `d`, client `i` sending audio every 20 ms and video every 33 ms (a keyframe
    /// first and then every 30 frames). `f` runs every step after the writes.
    pub fn stream(
        &mut self,
        senders: &[usize],
        d: Duration,
        mut f: impl FnMut(&mut Sim),
    ) -> Streamed {
        let t0 = self.now;
        let mut s = Streamed::default();
        self.run_for(d, |sim| {
            let el = sim.now - t0;
            let want_audio = (el.as_millis() / 20) as u32 + 1;
            let want_video = (el.as_millis() * 30 / 1000) as u32 + 1;
            while s.audio < want_audio {
                for &i in senders {
                    sim.write_audio(i, s.audio);
                }
                s.audio += 1;
            }
            while s.video < want_video {
                for &i in senders {
                    sim.write_video(i, s.video, s.video % 30 == 0);
                }
                s.video += 1;
            }
            f(sim);
        });
        s
    }
}

/// Frames written by [`Sim::stream`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Streamed {
    pub audio: u32,
    pub video: u32,
}

pub fn audio_frame(idx: u32) -> Vec<u8> {
    let mut v = vec![0xFC];
    v.extend_from_slice(&idx.to_be_bytes());
    v.extend((0..75u32).map(|n| (n.wrapping_mul(7) ^ idx) as u8));
    v
}

/// The frame index carried by an audio frame, if it is exactly what `audio_frame` makes.
pub fn parse_audio(d: &[u8]) -> Option<u32> {
    let idx = u32::from_be_bytes(d.get(1..5)?.try_into().ok()?);
    (audio_frame(idx) == d).then_some(idx)
}

/// A VP8 frame: keyframes start with a cleared bit 0 and the keyframe start code.
pub fn video_frame(idx: u32, key: bool) -> Vec<u8> {
    let len = if key { 3000 } else { 700 };
    let mut v = Vec::with_capacity(len);
    if key {
        // Frame tag (key frame, version 0, show_frame), start code, 640x480.
        v.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
    } else {
        v.extend_from_slice(&[0x11, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    }
    v.extend_from_slice(&idx.to_be_bytes());
    while v.len() < len {
        let n = v.len() as u32;
        v.push((n.wrapping_mul(31) ^ idx.wrapping_mul(17)) as u8);
    }
    v
}

pub fn parse_video(d: &[u8]) -> Option<u32> {
    let idx = u32::from_be_bytes(d.get(10..14)?.try_into().ok()?);
    let key = d.first()? & 1 == 0;
    (video_frame(idx, key) == d).then_some(idx)
}

/// Media a client received, sorted by kind: frame indices that match what was written, and
/// how many frames did not.
#[derive(Debug, Default)]
pub struct Got {
    pub audio: Vec<u32>,
    pub video: Vec<u32>,
    pub bad_audio: usize,
    pub bad_video: usize,
    pub video_not_contiguous: usize,
}

pub fn received(c: &Client, since: Instant) -> Got {
    let mut r = Got::default();
    for d in c.media_data_since(since) {
        match d.params.spec().codec {
            Codec::Opus => match parse_audio(&d.data) {
                Some(i) => r.audio.push(i),
                None => r.bad_audio += 1,
            },
            Codec::Vp8 => {
                if !d.contiguous {
                    r.video_not_contiguous += 1;
                }
                match parse_video(&d.data) {
                    Some(i) => r.video.push(i),
                    None => r.bad_video += 1,
                }
            }
            other => panic!("unexpected codec {other:?}"),
        }
    }
    r
}

/// Datagrams that are RTP with payload type `pt` (not RTCP, STUN or DTLS).
pub fn is_rtp_pt(d: &[u8], pt: Pt) -> bool {
    classify(d) == Kind::Rtp(*pt)
}

/// `MediaKind` of a section by mid on a client (for assertions).
pub fn kind_of(c: &Client, mid: Mid) -> Option<MediaKind> {
    if mid == c.audio_mid {
        Some(MediaKind::Audio)
    } else if mid == c.video_mid {
        Some(MediaKind::Video)
    } else {
        None
    }
}
