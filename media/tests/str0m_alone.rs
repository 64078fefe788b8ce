//! The str0m limit that the fork in `vendor/str0m` lifts, reproduced against str0m alone (no
//! tandem code): two `Rtc`s connected in simulated time, one sending a video section in RTP
//! mode with bandwidth estimation on, as an SFU's peer does.
//!
//! Upstream, an RTP packet written to a send stream (`StreamTx::write_rtp`) does not leave on
//! the next `poll_output`: it waits for an `Input::Timeout`, and the pacer then releases one
//! packet per timeout, even when the stream is marked unpaced. So an SFU pays a full
//! `handle_timeout` pass (every stream's RTCP timers, the estimator, the pacer's queues) for each
//! packet it forwards; that was most of the media core's time (docs/performance.md). With the
//! fork's `RtcConfig::set_direct_forwarding(true)`, `DirectApi::forward_rtp` writes a packet that
//! leaves on the next `poll_output`, with no timeout at all.
//!
//! The tests count, for a burst of [`BURST`] packets written at one instant, how many leave
//! before any timeout and how many timeouts it takes until all have left. What that costs the
//! sender in CPU, the two ways: `cargo bench -p tandem-media --bench str0m_alone` (which
//! includes this file), and the media core's: `--bench forward`.
#![allow(dead_code)] // the bench uses some parts, the tests others

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::Receive;
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Packets written at one instant (a video frame's worth).
const BURST: u16 = 10;
/// The first sequence number of the burst (far from what the stream sent before).
const FIRST_SEQ: u16 = 40_000;

struct Peer {
    rtc: Rtc,
    timeout: Instant,
    connected: bool,
}

/// A datagram on its way: from, to, bytes.
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

impl Peer {
    /// `sender`: RTP mode with bandwidth estimation (an SFU's peer), `direct` its forwarding
    /// fast path; otherwise a plain frame-mode receiver.
    fn new(addr: &str, sender: bool, direct: bool, now: Instant) -> Peer {
        let mut builder =
            Rtc::builder().set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()));
        if sender {
            builder = builder
                .set_rtp_mode(true)
                .set_direct_forwarding(direct)
                .enable_bwe(Some(Bitrate::kbps(1000)));
        }
        let mut rtc = builder.build(now);
        let addr: SocketAddr = addr.parse().expect("test address");
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        Peer {
            rtc,
            timeout: now,
            connected: false,
        }
    }

    /// Polls until str0m asks for a timeout; returns what it transmitted.
    fn poll(&mut self) -> Vec<Datagram> {
        let mut out = Vec::new();
        loop {
            match self.rtc.poll_output().expect("poll_output") {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return out;
                }
                Output::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(_) => {}
            }
        }
    }

    fn receive(&mut self, datagrams: Vec<Datagram>, now: Instant) {
        for (source, destination, contents) in datagrams {
            let input = Input::Receive(
                now,
                Receive {
                    proto: str0m::net::Protocol::Udp,
                    source,
                    destination,
                    contents: contents.as_slice().try_into().expect("datagram parses"),
                },
            );
            self.rtc.handle_input(input).expect("receive");
        }
    }
}

/// The sender and the receiver, connected, the sender's video section `mid` negotiated with VP8
/// as `pt`, and the simulated time.
fn connected(direct: bool) -> (Peer, Peer, Mid, Pt, Instant) {
    let mut now = Instant::now();
    let mut s = Peer::new("10.0.0.1:5000", true, direct, now);
    let mut r = Peer::new("10.0.0.2:6000", false, false, now);
    let mut api = s.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let answer = r.rtc.sdp_api().accept_offer(offer).expect("answer");
    s.rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    // Until both are connected, then one more simulated second (SRTP, first reports).
    let mut until = None;
    for _ in 0..100_000 {
        let from_s = s.poll();
        let from_r = r.poll();
        r.receive(from_s, now);
        s.receive(from_r, now);
        if until.is_none() && s.connected && r.connected {
            until = Some(now + Duration::from_secs(1));
        }
        if until.is_some_and(|u| now >= u) {
            break;
        }
        now = s.timeout.min(r.timeout).max(now + Duration::from_millis(1));
        s.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        r.rtc.handle_input(Input::Timeout(now)).expect("timeout");
    }
    assert!(s.connected && r.connected, "the two never connected");
    let pt = s
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .map(|p| p.pt())
        .expect("VP8 negotiated");
    // Quiet at `now`: nothing left to send before the next timeout.
    let _ = s.poll();
    (s, r, mid, pt, now)
}

/// The RTP packets of payload type `pt` among `sent` (SRTP leaves the header in the clear).
fn rtp_of(sent: &[Datagram], pt: Pt) -> impl Iterator<Item = &[u8]> {
    sent.iter()
        .map(|(_, _, d)| d.as_slice())
        .filter(move |d| d.len() >= 4 && (128..=191).contains(&d[0]) && d[1] & 0x7F == *pt)
}

/// The burst's packets among `sent` (the burst's sequence numbers).
fn burst_packets(sent: &[Datagram], pt: Pt) -> usize {
    rtp_of(sent, pt)
        .filter(|d| u16::from_be_bytes([d[2], d[3]]).wrapping_sub(FIRST_SEQ) < BURST)
        .count()
}

/// Packet `i` of a burst whose first sequence number is `first`.
fn packet(pt: Pt, first: u64, i: u16, now: Instant) -> RtpWrite {
    // A VP8 payload descriptor (start of a partition) and some bytes.
    let mut payload = vec![0x10u8];
    payload.extend(std::iter::repeat_n(0xAB, 1000));
    let ts = (first / u64::from(BURST) * 3000) as u32;
    RtpWrite::new(pt, (first + u64::from(i)).into(), ts, now, payload).marker(i + 1 == BURST)
}

/// How a burst is written: upstream's `write_rtp` on an unpaced stream, or the fork's
/// `forward_rtp`.
fn write(rtc: &mut Rtc, direct: bool, mid: Mid, p: RtpWrite) {
    if direct {
        assert!(
            rtc.direct_api().forward_rtp(mid, p),
            "the video section's send stream"
        );
    } else {
        let mut api = rtc.direct_api();
        let tx = api
            .stream_tx_by_mid(mid, None)
            .expect("the video section's send stream");
        tx.set_unpaced(true);
        tx.write_rtp(p);
    }
}

/// The sender's CPU per packet over `frames` bursts of [`BURST`] packets 33 ms apart (30 fps),
/// every call on the sender timed (the writes, its polls, and every timeout it asks for, its
/// own RTCP and estimator timers included), and the packets it sent; the receiver's work is not
/// counted.
pub fn sender_cost(direct: bool, frames: u64) -> (Duration, u64) {
    let (mut s, mut r, mid, pt, mut now) = connected(direct);
    let mut spent = Duration::ZERO;
    let mut sent = 0u64;
    for f in 0..frames {
        let first = 1000 + f * u64::from(BURST);
        let started = Instant::now();
        for i in 0..BURST {
            write(&mut s.rtc, direct, mid, packet(pt, first, i, now));
        }
        let out = s.poll();
        spent += started.elapsed();
        sent += rtp_of(&out, pt).count() as u64;
        r.receive(out, now);
        // Every timeout up to the next frame, as an event loop would serve them: at once when
        // due, but after 64 in a row at one instant, a millisecond later (a timer's grain; the
        // upstream pacer asks for "now" again while it holds packets).
        let next = now + Duration::from_millis(33);
        let mut at_once = 0;
        while s.timeout <= next {
            if s.timeout <= now {
                at_once += 1;
                if at_once > 64 {
                    now += Duration::from_millis(1);
                    at_once = 0;
                }
            } else {
                now = s.timeout;
                at_once = 0;
            }
            let started = Instant::now();
            s.rtc.handle_input(Input::Timeout(now)).expect("timeout");
            let out = s.poll();
            spent += started.elapsed();
            sent += rtp_of(&out, pt).count() as u64;
            r.receive(out, now);
            let back = r.poll();
            let started = Instant::now();
            s.receive(back, now);
            spent += started.elapsed();
        }
        now = next;
        r.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        let back = r.poll();
        let started = Instant::now();
        s.receive(back, now);
        spent += started.elapsed();
    }
    (spent, sent)
}

/// What the burst takes: packets out before any timeout, and the timeouts (each at the instant
/// str0m asked for) until all are out.
struct Burst {
    before_any_timeout: usize,
    timeouts: usize,
}

fn send_burst(
    s: &mut Peer,
    r: &mut Peer,
    pt: Pt,
    mid: Mid,
    direct: bool,
    mut now: Instant,
) -> Burst {
    for i in 0..BURST {
        write(
            &mut s.rtc,
            direct,
            mid,
            packet(pt, u64::from(FIRST_SEQ), i, now),
        );
    }
    let first = s.poll();
    let before_any_timeout = burst_packets(&first, pt);
    r.receive(first, now);
    let mut out = before_any_timeout;
    let mut timeouts = 0;
    while out < usize::from(BURST) && timeouts < 1000 {
        now = s.timeout.max(now);
        s.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        timeouts += 1;
        let sent = s.poll();
        out += burst_packets(&sent, pt);
        r.receive(sent, now);
    }
    assert_eq!(out, usize::from(BURST), "the burst never left in full");
    Burst {
        before_any_timeout,
        timeouts,
    }
}

#[test]
fn upstream_a_written_packet_waits_for_a_timeout_and_the_pacer_releases_one_per_timeout() {
    let (mut s, mut r, mid, pt, now) = connected(false);
    let burst = send_burst(&mut s, &mut r, pt, mid, false, now);
    eprintln!(
        "upstream write_rtp, unpaced stream: {} of {BURST} packets out before a timeout, {} timeouts until all",
        burst.before_any_timeout, burst.timeouts
    );
    assert_eq!(
        burst.before_any_timeout, 0,
        "upstream sends nothing before a timeout"
    );
    assert!(
        burst.timeouts >= usize::from(BURST),
        "one packet per timeout: {} timeouts for {BURST} packets",
        burst.timeouts
    );
}

#[test]
fn the_fork_forwards_a_burst_on_the_next_poll_with_no_timeout() {
    let (mut s, mut r, mid, pt, now) = connected(true);
    let burst = send_burst(&mut s, &mut r, pt, mid, true, now);
    eprintln!(
        "fork forward_rtp: {} of {BURST} packets out before a timeout, {} timeouts",
        burst.before_any_timeout, burst.timeouts
    );
    assert_eq!(burst.before_any_timeout, usize::from(BURST));
    assert_eq!(burst.timeouts, 0);
}
