//! The media core (media/src/core.rs) with two real str0m clients, as media/tests/common
//! wires them, but with the fuzzer as the network and the signaling: calls are opened and
//! closed; offers, answers and ICE candidates are the clients' own, edited line by line, or
//! arbitrary strings; datagrams between the clients and the core are delivered, dropped,
//! corrupted or truncated, and arbitrary datagrams arrive from the clients' and strangers'
//! addresses over UDP and ICE-TCP; clients restart ICE and send audio and video once
//! connected; time moves on. Checked: no panic, and what the core tells the clients (answers,
//! offers, candidates) parses.
//!
//! Input: a byte of configuration flags, then operations (`tandem_fuzz::media_ops`), each an
//! opcode byte (modulo `COUNT`) and its arguments; see `Harness::apply`.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tandem_fuzz::media_ops as op;
use tandem_fuzz::Reader;
use tandem_media::{MediaConfig, MediaCore, MediaOutput, Transmit};
use tandem_signaling::{CallId, MediaCommand, MediaEvent, RoomId, SessionId};

const SERVER_UDP: &str = "127.0.0.1:7882";
const SERVER_TCP: &str = "127.0.0.1:7881";
const STRANGER: &str = "127.0.0.1:40009";
const MAX_OPS: usize = 128;
const MAX_IN_FLIGHT: usize = 256;
/// Rounds of moving outputs between the clients and the core per operation.
const PUMP_ROUNDS: usize = 64;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a valid address")
}

fn guest(side: usize) -> SessionId {
    SessionId::from_raw([0xa11ce, 0xb0b, 0x5eed][side])
}

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    guest: SessionId,
    /// The client's last offer, and its pending state until answered.
    offer: String,
    pending: Option<SdpPendingOffer>,
    /// The client's answer to the core's last offer, not yet sent.
    answer: Option<String>,
    audio: Mid,
    video: Mid,
    next_timeout: Instant,
    opus: Option<Pt>,
    vp8: Option<Pt>,
    /// The client's str0m gave an error: it is no longer driven.
    broken: bool,
}

impl Client {
    fn new(addr: SocketAddr, guest: SessionId, now: Instant) -> Client {
        // One certificate for every client of every run: making one is most of a run's cost.
        static CERT: OnceLock<DtlsCert> = OnceLock::new();
        let provider = str0m::crypto::from_feature_flags();
        let cert = CERT.get_or_init(|| {
            provider
                .dtls_provider
                .generate_certificate()
                .expect("a DTLS certificate")
        });
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(provider))
            .set_dtls_cert(cert.clone())
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"))
            .expect("candidate accepted");
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let video = api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().expect("new media need an offer");
        Client {
            rtc,
            addr,
            guest,
            offer: offer.to_sdp_string(),
            pending: Some(pending),
            answer: None,
            audio,
            video,
            next_timeout: now,
            opus: None,
            vp8: None,
            broken: false,
        }
    }

    fn candidate(&self) -> String {
        Candidate::host(self.addr, "udp")
            .expect("host candidate")
            .to_sdp_string()
    }
}

struct Harness {
    core: MediaCore,
    now: Instant,
    clients: [Client; 2],
    /// Datagrams from the clients to the core, and from the core to the clients.
    up: VecDeque<Transmit>,
    down: VecDeque<Transmit>,
    frames: u32,
}

/// An SDP with one line removed, replaced or inserted, or cut short.
fn edit(sdp: &str, r: &mut Reader) -> String {
    let mut lines: Vec<String> = sdp.lines().map(str::to_owned).collect();
    let at = usize::from(r.u8()) % (lines.len() + 1);
    match r.u8() % 4 {
        0 if at < lines.len() => {
            lines.remove(at);
        }
        1 if at < lines.len() => lines[at] = r.string(),
        2 => lines.insert(at, r.string()),
        _ => {
            let joined = lines.join("\r\n");
            let mut cut = usize::from(r.u16()) % (joined.len() + 1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_owned();
        }
    }
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

impl Harness {
    fn call(r: &mut Reader) -> CallId {
        CallId(u64::from(r.u8() % 3))
    }

    fn side(r: &mut Reader) -> usize {
        usize::from(r.u8() % 3)
    }

    fn command(&mut self, cmd: MediaCommand) {
        self.core.handle_command(cmd, self.now);
        self.pump();
    }

    fn apply(&mut self, code: u8, r: &mut Reader) {
        match code % op::COUNT {
            op::OPEN => {
                let call = Self::call(r);
                let video = r.bool();
                self.command(MediaCommand::Open {
                    call,
                    room: RoomId::from_raw(0x7007),
                    guests: [guest(0), guest(1)],
                    video,
                });
            }
            op::OFFER => {
                let (call, side) = (Self::call(r), Self::side(r));
                let own = &self.clients[side % 2].offer;
                let sdp = match r.u8() % 3 {
                    op::SDP_CLIENT => own.clone(),
                    op::SDP_EDITED => edit(own, r),
                    _ => r.string(),
                };
                self.command(MediaCommand::Offer {
                    call,
                    guest: guest(side),
                    sdp,
                });
            }
            op::CANDIDATE => {
                let (call, side) = (Self::call(r), Self::side(r));
                let candidate = match r.u8() % 4 {
                    0 => self.clients[side % 2].candidate(),
                    1 => format!("a={}", self.clients[side % 2].candidate()),
                    2 => format!("candidate:{}", r.string()),
                    _ => r.string(),
                };
                let sdp_mid = r.bool().then(|| r.string());
                let sdp_mline_index = r.bool().then(|| r.u16());
                self.command(MediaCommand::Candidate {
                    call,
                    guest: guest(side),
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                });
            }
            op::ANSWER => {
                let (call, side) = (Self::call(r), Self::side(r));
                let c = &mut self.clients[side % 2];
                let sdp = match (r.u8() % 3, c.answer.take()) {
                    (op::SDP_CLIENT, a) => a.unwrap_or_default(),
                    (op::SDP_EDITED, Some(a)) => edit(&a, r),
                    (op::SDP_EDITED, None) => edit(&c.offer.clone(), r),
                    _ => r.string(),
                };
                self.command(MediaCommand::Answer {
                    call,
                    guest: guest(side),
                    sdp,
                });
            }
            op::CLOSE => {
                let call = Self::call(r);
                self.command(MediaCommand::Close { call });
            }
            op::ADVANCE => {
                let ms = u64::from(r.u16() % 10_000);
                let deliver_all = r.bool();
                self.advance(Duration::from_millis(ms));
                if deliver_all {
                    for _ in 0..PUMP_ROUNDS {
                        if self.up.is_empty() && self.down.is_empty() {
                            break;
                        }
                        while let Some(t) = self.up.pop_front() {
                            self.to_core(&t.contents, t.proto, t.source, t.destination);
                        }
                        while let Some(t) = self.down.pop_front() {
                            self.to_client(&t);
                        }
                        self.pump();
                    }
                }
            }
            op::DELIVER => {
                // Each datagram: what becomes of it, a position and a byte (always read).
                let up = r.bool();
                for _ in 0..r.u8() % 16 {
                    let (action, at, x) = (r.u8() % 5, usize::from(r.u16()), r.u8());
                    let queue = if up { &mut self.up } else { &mut self.down };
                    let Some(mut t) = queue.pop_front() else {
                        continue;
                    };
                    let mut data = t.contents.to_vec();
                    match action {
                        0 | 1 => {}
                        2 => continue,
                        3 => {
                            if !data.is_empty() {
                                let i = at % data.len();
                                data[i] ^= x | 1;
                            }
                        }
                        _ => data.truncate(at % (data.len() + 1)),
                    }
                    if up {
                        self.to_core(&data, t.proto, t.source, t.destination);
                    } else {
                        t.contents = data.into();
                        self.to_client(&t);
                    }
                }
                self.pump();
            }
            op::RAW => {
                let source = match r.u8() % 3 {
                    0 => self.clients[0].addr,
                    1 => self.clients[1].addr,
                    _ => addr(STRANGER),
                };
                let (proto, destination) = if r.bool() {
                    (Protocol::Tcp, addr(SERVER_TCP))
                } else {
                    (Protocol::Udp, addr(SERVER_UDP))
                };
                let data = r.bytes().to_vec();
                self.to_core(&data, proto, source, destination);
                self.pump();
            }
            op::RESTART => {
                let c = &mut self.clients[usize::from(r.u8() % 2)];
                if !c.broken && c.pending.is_none() {
                    let mut api = c.rtc.sdp_api();
                    api.ice_restart(r.bool());
                    if r.bool() {
                        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
                    }
                    if let Some((offer, pending)) = api.apply() {
                        c.offer = offer.to_sdp_string();
                        c.pending = Some(pending);
                    }
                }
            }
            _ => {
                // WRITE: a connected client sends a frame of audio or video.
                let c = &mut self.clients[usize::from(r.u8() % 2)];
                let video = r.bool();
                let payload = r.bytes().to_vec();
                let (mid, pt, time) = if video {
                    let t = MediaTime::new(u64::from(self.frames) * 3000, Frequency::NINETY_KHZ);
                    (c.video, c.vp8, t)
                } else {
                    let t =
                        MediaTime::new(u64::from(self.frames) * 960, Frequency::FORTY_EIGHT_KHZ);
                    (c.audio, c.opus, t)
                };
                self.frames += 1;
                if let (false, Some(pt), false) = (c.broken, pt, payload.is_empty()) {
                    if let Some(w) = c.rtc.writer(mid) {
                        let _ = w.write(pt, self.now, time, payload);
                    }
                }
                self.pump();
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for c in &mut self.clients {
            if !c.broken && self.now >= c.next_timeout {
                c.broken |= c.rtc.handle_input(Input::Timeout(self.now)).is_err();
            }
        }
        self.core.handle_timeout(self.now);
        let next = self.core.poll_timeout();
        assert!(
            next.is_some_and(|t| t > self.now),
            "the core asks to be woken in the past"
        );
        self.pump();
    }

    fn to_core(&mut self, data: &[u8], proto: Protocol, source: SocketAddr, dest: SocketAddr) {
        self.core
            .handle_receive(proto, source, dest, data, self.now);
    }

    fn to_client(&mut self, t: &Transmit) {
        let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) else {
            return;
        };
        let Ok(contents) = (&t.contents[..]).try_into() else {
            return;
        };
        if c.broken {
            return;
        }
        let input = Input::Receive(
            self.now,
            Receive {
                proto: t.proto,
                source: t.source,
                destination: t.destination,
                contents,
            },
        );
        c.broken |= c.rtc.handle_input(input).is_err();
    }

    /// Moves what the clients and the core produced onto the wire (not delivering it) and
    /// hands the core's events to the clients, as signaling would.
    fn pump(&mut self) {
        for _ in 0..PUMP_ROUNDS {
            let mut busy = false;
            for c in &mut self.clients {
                while !c.broken {
                    match c.rtc.poll_output() {
                        Ok(Output::Timeout(t)) => {
                            c.next_timeout = t;
                            break;
                        }
                        Ok(Output::Transmit(t)) => {
                            busy = true;
                            if self.up.len() == MAX_IN_FLIGHT {
                                self.up.pop_front();
                            }
                            self.up.push_back(t);
                        }
                        Ok(Output::Event(Event::Connected)) => {
                            let codec = |rtc: &Rtc, codec| {
                                rtc.codec_config()
                                    .find(|p| p.spec().codec == codec)
                                    .map(|p| p.pt())
                            };
                            c.opus = codec(&c.rtc, Codec::Opus);
                            c.vp8 = codec(&c.rtc, Codec::Vp8);
                        }
                        Ok(Output::Event(_)) => {}
                        Err(_) => c.broken = true,
                    }
                }
            }
            while let Some(out) = self.core.poll_output() {
                busy = true;
                match out {
                    MediaOutput::Transmit(t) => {
                        if self.down.len() == MAX_IN_FLIGHT {
                            self.down.pop_front();
                        }
                        self.down.push_back(t);
                    }
                    MediaOutput::Event(e) => self.on_event(e),
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn on_event(&mut self, e: MediaEvent) {
        if debug() {
            eprintln!("media event: {e:?}");
        }
        let guest = match &e {
            MediaEvent::Answer { guest, .. }
            | MediaEvent::Offer { guest, .. }
            | MediaEvent::Candidate { guest, .. }
            | MediaEvent::OfferRejected { guest, .. }
            | MediaEvent::Connected { guest, .. }
            | MediaEvent::Disconnected { guest, .. }
            | MediaEvent::Failed { guest, .. } => *guest,
        };
        let Some(c) = self.clients.iter_mut().find(|c| c.guest == guest) else {
            return;
        };
        match e {
            MediaEvent::Answer { sdp, .. } => {
                let answer = SdpAnswer::from_sdp_string(&sdp).expect("the core's answer parses");
                if let (Some(pending), false) = (c.pending.take(), c.broken) {
                    // Refused when the offer the core answered was not this client's own.
                    let _ = c.rtc.sdp_api().accept_answer(pending, answer);
                }
            }
            MediaEvent::Offer { sdp, .. } => {
                let offer = SdpOffer::from_sdp_string(&sdp).expect("the core's offer parses");
                if c.pending.is_none() && !c.broken {
                    if let Ok(answer) = c.rtc.sdp_api().accept_offer(offer) {
                        c.answer = Some(answer.to_sdp_string());
                    }
                }
            }
            MediaEvent::Candidate { candidate, .. } => {
                let line = candidate.strip_prefix("a=").unwrap_or(&candidate);
                let cand = Candidate::from_sdp_string(line).expect("the core's candidate parses");
                if !c.broken {
                    c.rtc.add_remote_candidate(cand);
                }
            }
            MediaEvent::OfferRejected { .. }
            | MediaEvent::Connected { .. }
            | MediaEvent::Disconnected { .. }
            | MediaEvent::Failed { .. } => {}
        }
    }
}

/// `TANDEM_FUZZ_DEBUG=1`: print what the core reports (to check what a seed reaches).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("TANDEM_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let now = Instant::now();
    let cfg = MediaConfig {
        worker: usize::from(flags >> 4),
        udp_addr: addr(SERVER_UDP),
        tcp_addr: (flags & 1 != 0).then(|| addr(SERVER_TCP)),
        connect_timeout: Duration::from_secs(5),
        max_peers: if flags & 2 != 0 { 2 } else { 2000 },
        stats_interval: Duration::from_millis(500),
        ..MediaConfig::default()
    };
    let mut h = Harness {
        core: MediaCore::new(cfg, [7; 32], now).expect("a media core"),
        now,
        clients: [
            Client::new(addr("127.0.0.1:40001"), guest(0), now),
            Client::new(addr("127.0.0.1:40002"), guest(1), now),
        ],
        up: VecDeque::new(),
        down: VecDeque::new(),
        frames: 0,
    };
    h.core.drain_samples(|_| {});
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let code = r.u8();
        h.apply(code, &mut r);
        h.core.drain_samples(|_| {});
    }
});
