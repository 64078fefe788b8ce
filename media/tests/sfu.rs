//! Deterministic tests of the media core against plain str0m clients: simulated time, a
//! simulated network (see `common`), no sockets.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::net::Protocol;
use str0m::{Event, Input};
use tandem_media::{MediaConfig, Received};
use tandem_signaling::{MediaCommand, MediaEvent};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Indices strictly increase (frames come out in order, no duplicates).
fn increasing(v: &[u32]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

fn keyframe_requests_since(c: &Client, since: Instant) -> Vec<Instant> {
    c.events
        .iter()
        .filter(|(t, e)| *t >= since && matches!(e, Event::KeyframeRequest(_)))
        .map(|(t, _)| *t)
        .collect()
}

fn egress_nacks(c: &Client) -> u64 {
    c.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::MediaEgressStats(s) => Some(s.nacks),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn ingress_nacks(c: &Client) -> u64 {
    c.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::MediaIngressStats(s) => Some(s.nacks),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn count_events(sim: &Sim, f: impl Fn(&MediaEvent) -> bool) -> usize {
    sim.media_events.iter().filter(|(_, e)| f(e)).count()
}

// --- 1 ------------------------------------------------------------------------------------

#[test]
fn both_connect_and_media_flows_both_ways() {
    let mut sim = Sim::connected_call();
    assert!(sim.clients.iter().all(Client::connected));
    assert!(sim.core_connected(guest_a()) && sim.core_connected(guest_b()));
    assert_eq!(sim.core.load(), (1, 2));

    let t0 = sim.now;
    let sent = sim.stream(&[0, 1], Duration::from_secs(2), |_| {});
    sim.run_for(ms(300), |_| {});

    for (i, c) in sim.clients.iter().enumerate() {
        let r = received(c, t0);
        assert_eq!(
            (r.bad_audio, r.bad_video),
            (0, 0),
            "client {i}: corrupted frames"
        );
        assert!(
            r.audio.len() as u32 >= sent.audio * 95 / 100,
            "client {i}: {} of {} audio frames",
            r.audio.len(),
            sent.audio
        );
        assert!(
            r.video.len() as u32 >= sent.video * 95 / 100,
            "client {i}: {} of {} video frames",
            r.video.len(),
            sent.video
        );
        assert!(
            increasing(&r.audio) && increasing(&r.video),
            "client {i}: out of order"
        );
        assert_eq!(r.video_not_contiguous, 0, "client {i}: gaps without loss");
        // Each kind arrives on the client's own section of that kind.
        for d in c.media_data() {
            let kind = match d.params.spec().codec {
                Codec::Opus => MediaKind::Audio,
                _ => MediaKind::Video,
            };
            assert_eq!(
                kind_of(c, d.mid),
                Some(kind),
                "client {i}: media on the wrong mid"
            );
        }
        // Two send/receive sections need no server renegotiation.
        assert_eq!(c.answered_server_offers, 0);
    }

    let k = sim.core.counters();
    let (audio, video) = (0, 1);
    let (inn, out) = (0, 1);
    assert!(
        k.packets[audio][inn] >= u64::from(sent.audio) * 2 * 95 / 100,
        "{k:?}"
    );
    assert!(
        k.packets[audio][out] >= u64::from(sent.audio) * 2 * 95 / 100,
        "{k:?}"
    );
    // Keyframes take three packets, delta frames one.
    assert!(k.packets[video][inn] >= u64::from(sent.video) * 2, "{k:?}");
    assert!(k.packets[video][out] >= u64::from(sent.video) * 2, "{k:?}");
    assert!(k.bytes[video][inn] > k.bytes[audio][inn]);
    assert_eq!(k.packets_unrouted, 0, "{k:?}");
    assert_eq!(k.datagrams_unknown, 0, "{k:?}");
    assert_eq!((k.peers_created, k.peers_closed), (2, 0));
    assert!(!sim.media_events.iter().any(|(_, e)| matches!(
        e,
        MediaEvent::Failed { .. }
            | MediaEvent::OfferRejected { .. }
            | MediaEvent::Disconnected { .. }
    )));
    let mut samples = 0;
    sim.core.drain_samples(|_| samples += 1);
    assert!(samples > 0, "str0m stats became quality samples");
}

// --- 2 ------------------------------------------------------------------------------------

#[test]
fn pli_is_forwarded_at_most_once_per_500ms() {
    let mut sim = Sim::connected_call();
    // Let the stream (and the server's own keyframe request when it bound B) settle.
    sim.stream(&[0], ms(300), |_| {});
    let before = sim.core.counters();
    let t0 = sim.now;
    let b_mid = sim.clients[1].video_mid;
    let mut asked = 0;
    let mut last_ask: Option<Instant> = None;
    sim.stream(&[0], Duration::from_secs(2), |sim| {
        if last_ask.is_some_and(|t| sim.now - t < ms(50)) {
            return;
        }
        last_ask = Some(sim.now);
        let mut w = sim.clients[1].rtc.writer(b_mid).expect("B's video writer");
        assert!(w.is_request_keyframe_possible(KeyframeRequestKind::Pli));
        w.request_keyframe(None, KeyframeRequestKind::Pli)
            .expect("B asks for a keyframe");
        asked += 1;
    });
    let at_a = keyframe_requests_since(&sim.clients[0], t0);
    let k = sim.core.counters();
    let forwarded = k.plis_forwarded - before.plis_forwarded;
    let throttled = k.keyframe_requests_throttled - before.keyframe_requests_throttled;
    assert!(asked >= 39, "B asked {asked} times");
    assert!(
        (2..=5).contains(&at_a.len()),
        "A saw {} keyframe requests",
        at_a.len()
    );
    for w in at_a.windows(2) {
        // Throttled at the server to one per 500 ms (give or take the RTCP timing).
        assert!(
            w[1] - w[0] >= ms(450),
            "keyframe requests {:?} apart",
            w[1] - w[0]
        );
    }
    assert!((2..=5).contains(&forwarded), "plis_forwarded {forwarded}");
    assert!(throttled > 0, "{k:?}");
    assert_eq!(k.firs_forwarded, 0);
    for e in sim.clients[0].events.iter().filter(|(t, _)| *t >= t0) {
        if let (_, Event::KeyframeRequest(r)) = e {
            assert_eq!(r.mid, sim.clients[0].video_mid);
            assert_eq!(r.kind, KeyframeRequestKind::Pli);
        }
    }
}

// --- 3 ------------------------------------------------------------------------------------

/// Drops every `n`th VP8 RTP packet on `leg` (retransmissions travel with the RTX payload
/// type and get through).
fn drop_every_nth_video(sim: &mut Sim, leg: Leg, n: usize) {
    let i = match leg {
        Leg::Up(i) | Leg::Down(i) => i,
    };
    let pt = sim.clients[i].vp8.expect("vp8 negotiated");
    let mut count = 0;
    sim.filter = Box::new(move |l, d| {
        if l != leg || !is_rtp_pt(d, pt) {
            return false;
        }
        count += 1;
        count % n == 0
    });
}

/// A connected call whose `leg` loses every 7th VP8 packet while A streams for 2 s, then 0.7 s
/// for the repairs. Returns it, when A started and what A sent.
fn stream_with_loss(leg: Leg) -> (Sim, Instant, Streamed) {
    let mut sim = Sim::connected_call();
    drop_every_nth_video(&mut sim, leg, 7);
    let t0 = sim.now;
    let sent = sim.stream(&[0], Duration::from_secs(2), |_| {});
    sim.run_for(ms(700), |_| {});
    assert!(sim.dropped >= 7, "dropped {}", sim.dropped);
    (sim, t0, sent)
}

/// What B got since `t0`, checked to be intact and at least 95 % of what A sent.
fn b_got_the_video(sim: &Sim, t0: Instant, sent: Streamed) -> Got {
    let r = received(&sim.clients[1], t0);
    assert_eq!(r.bad_video, 0);
    assert!(
        r.video.len() as u32 >= sent.video * 95 / 100,
        "B got {} of {} video frames",
        r.video.len(),
        sent.video
    );
    r
}

#[test]
fn loss_triggers_nack_and_rtx() {
    // A → server loses packets: the server NACKs A and A retransmits.
    let (sim, t0, sent) = stream_with_loss(Leg::Up(0));
    let k = sim.core.counters();
    assert!(k.nacks_sent > 0, "server sent no NACK: {k:?}");
    assert!(egress_nacks(&sim.clients[0]) > 0, "A saw no NACK");
    // Repaired upstream, so B gets every frame, intact.
    b_got_the_video(&sim, t0, sent);

    // Server → B loses packets: B NACKs the server, which retransmits from its buffer.
    let (sim, t0, sent) = stream_with_loss(Leg::Down(1));
    let k = sim.core.counters();
    assert!(k.nacks_received > 0, "server saw no NACK: {k:?}");
    assert!(ingress_nacks(&sim.clients[1]) > 0, "B sent no NACK");
    assert_eq!(
        egress_nacks(&sim.clients[0]),
        0,
        "B's NACKs are served by the server, not A"
    );
    let r = b_got_the_video(&sim, t0, sent);
    assert!(increasing(&r.video));
    assert!(
        r.video_not_contiguous * 10 <= r.video.len(),
        "{} of {} frames not contiguous",
        r.video_not_contiguous,
        r.video.len()
    );
}

// --- 4 ------------------------------------------------------------------------------------

#[test]
fn bad_offer_is_rejected() {
    let mut sim = Sim::new(test_config());
    sim.open();
    let (a, offer_a) = sim.add_client(ADDR_A, guest_a());
    let (b, offer_b) = sim.add_client(ADDR_B, guest_b());
    let bad = [
        String::new(),
        "garbage".to_owned(),
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".to_owned(),
        offer_a
            .replace("a=ice-ufrag", "a=ice-nope")
            .replace("a=fingerprint", "a=fingerpoint"),
        "x".repeat(70 * 1024),
    ];
    for (n, sdp) in bad.iter().enumerate() {
        sim.command(MediaCommand::Offer {
            call: sim.call,
            guest: guest_a(),
            sdp: sdp.clone(),
        });
        let rejected = count_events(&sim, |e| {
            matches!(e, MediaEvent::OfferRejected { guest, message, .. }
                if *guest == guest_a() && !message.is_empty())
        });
        assert_eq!(
            rejected,
            n + 1,
            "offer {n} was not rejected: {:?}",
            sim.media_events
        );
    }
    assert_eq!(
        count_events(&sim, |e| matches!(e, MediaEvent::Answer { .. })),
        0
    );
    assert_eq!(
        sim.core.load().1,
        0,
        "a rejected offer leaves no peer behind"
    );
    // An offer for a call or guest the core does not know is ignored.
    sim.command(MediaCommand::Offer {
        call: tandem_signaling::CallId(99),
        guest: guest_a(),
        sdp: offer_b.clone(),
    });
    assert_eq!(sim.core.load().1, 0);

    // The call still works with good offers.
    sim.send_offer(a, offer_a);
    sim.send_candidate(a);
    sim.send_offer(b, offer_b);
    sim.send_candidate(b);
    sim.run_until_connected(Duration::from_secs(3));
    let t0 = sim.now;
    sim.stream(&[0, 1], ms(500), |_| {});
    sim.run_for(ms(100), |_| {});
    for c in &sim.clients {
        let r = received(c, t0);
        assert!(r.audio.len() >= 20 && r.video.len() >= 10, "{r:?}");
    }
}

// --- 5 ------------------------------------------------------------------------------------

#[test]
fn close_removes_peers() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(300), |_| {});
    sim.command(MediaCommand::Close { call: sim.call });
    assert_eq!(sim.core.load(), (0, 0));
    assert_eq!(sim.core.counters().peers_closed, 2);

    let handled: Vec<usize> = sim.clients.iter().map(|c| c.up_handled).collect();
    let unknown: Vec<usize> = sim.clients.iter().map(|c| c.up_unknown).collect();
    // What the server had already sent still arrives; nothing new is sent after Close.
    let expect_down: Vec<usize> = (0..2)
        .map(|i| {
            sim.clients[i].down_delivered
                + sim.wire.iter().filter(|p| p.leg == Leg::Down(i)).count()
        })
        .collect();
    // The clients do not know the call is over: they keep sending media, RTCP and STUN.
    sim.stream(&[0, 1], Duration::from_secs(3), |_| {});
    for (i, c) in sim.clients.iter().enumerate() {
        assert_eq!(
            c.up_handled, handled[i],
            "client {i}: a datagram was still handled"
        );
        assert!(c.up_unknown > unknown[i] + 100, "client {i} kept sending");
        assert_eq!(
            c.down_delivered, expect_down[i],
            "client {i} got datagrams after Close"
        );
    }
    assert_eq!(sim.core.load(), (0, 0));
    assert!(sim.core.counters().datagrams_unknown > 200);

    // A binding request from an old client's address is unknown too.
    let now = sim.now;
    let stun = stun_binding_request("00abcdefabcdefab:zzzz");
    assert_eq!(
        sim.core
            .handle_receive(Protocol::Udp, addr(ADDR_A), server_addr(), &stun, now),
        Received::Unknown
    );
    // Closing again, or closing an unknown call, is harmless.
    sim.command(MediaCommand::Close { call: sim.call });
    sim.command(MediaCommand::Close {
        call: tandem_signaling::CallId(42),
    });
    assert_eq!(sim.core.load(), (0, 0));
}

/// A STUN binding request with this USERNAME, a PRIORITY, a made-up integrity and no
/// fingerprint.
fn stun_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    let name = username.as_bytes();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(name.len() as u16).to_be_bytes());
    attrs.extend_from_slice(name);
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&0x0024u16.to_be_bytes()); // PRIORITY
    attrs.extend_from_slice(&4u16.to_be_bytes());
    attrs.extend_from_slice(&0x6e7f_1eff_u32.to_be_bytes());
    attrs.extend_from_slice(&0x0008u16.to_be_bytes()); // MESSAGE-INTEGRITY
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0x55; 20]);
    let mut v = vec![0x00, 0x01];
    v.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    v.extend_from_slice(&[7; 12]);
    v.extend_from_slice(&attrs);
    v
}

// --- 6 ------------------------------------------------------------------------------------

/// With a 2 s connect timeout: neither guest has failed 1.8 s from now, both have at 2.5 s.
fn both_fail_at_the_timeout(sim: &mut Sim) {
    sim.run_for(ms(1800), |_| {});
    assert!(
        !sim.failed(guest_a()) && !sim.failed(guest_b()),
        "{:?}",
        sim.media_events
    );
    sim.run_for(ms(700), |_| {});
    assert!(
        sim.failed(guest_a()) && sim.failed(guest_b()),
        "{:?}",
        sim.media_events
    );
}

/// A second later both guests still have failed just once each.
fn failed_once_each(sim: &mut Sim) {
    sim.run_for(ms(1000), |_| {});
    assert_eq!(
        count_events(sim, |e| matches!(e, MediaEvent::Failed { .. })),
        2,
        "once each"
    );
}

#[test]
fn connect_timeout() {
    let cfg = MediaConfig {
        connect_timeout: Duration::from_secs(2),
        ..test_config()
    };

    // Nobody offers.
    let mut sim = Sim::new(cfg.clone());
    sim.open();
    both_fail_at_the_timeout(&mut sim);
    failed_once_each(&mut sim);
    assert_eq!(sim.core.counters().ice_failures, 2);

    // Both offer, but no datagram ever gets through.
    let mut sim = Sim::new(cfg);
    sim.filter = Box::new(|_, _| true);
    sim.open();
    let (a, offer_a) = sim.add_client(ADDR_A, guest_a());
    let (b, offer_b) = sim.add_client(ADDR_B, guest_b());
    sim.send_offer(a, offer_a);
    sim.send_offer(b, offer_b);
    sim.send_candidate(a);
    sim.send_candidate(b);
    assert_eq!(sim.core.load(), (1, 2));
    both_fail_at_the_timeout(&mut sim);
    assert_eq!(
        sim.core.load(),
        (1, 0),
        "failed peers are dropped, the call waits for Close"
    );
    failed_once_each(&mut sim);
    assert!(!sim.core_connected(guest_a()) && !sim.core_connected(guest_b()));
}

// --- 7 ------------------------------------------------------------------------------------

/// Client `i` restarts ICE (new ufrag/pwd, same DTLS certificate) and sends the offer.
fn ice_restart(sim: &mut Sim, i: usize) -> String {
    let mut api = sim.clients[i].rtc.sdp_api();
    api.ice_restart(true);
    let (offer, pending) = api.apply().expect("an ICE restart needs an offer");
    sim.clients[i].pending = Some(pending);
    let sdp = offer.to_sdp_string();
    sim.send_offer(i, sdp.clone());
    sdp
}

fn answers_to(sim: &Sim, guest: tandem_signaling::SessionId) -> Vec<String> {
    sim.media_events
        .iter()
        .filter_map(|(_, e)| match e {
            MediaEvent::Answer { guest: g, sdp, .. } if *g == guest => Some(sdp.clone()),
            _ => None,
        })
        .collect()
}

fn ice_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .to_owned()
}

/// Both clients stream for a second, then 100 ms more for the last packets to arrive.
fn stream_a_second(sim: &mut Sim) {
    sim.stream(&[0, 1], Duration::from_secs(1), |_| {});
    sim.run_for(ms(100), |_| {});
}

/// `r` holds most of a second of media (40 audio and 25 video frames), none of it corrupted.
fn assert_a_second_of_media(r: &Got, who: &str) {
    assert!(r.audio.len() >= 40 && r.video.len() >= 25, "{who}: {r:?}");
    assert_eq!((r.bad_audio, r.bad_video), (0, 0));
}

#[test]
fn reoffer_with_same_connection_keeps_peer() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(300), |_| {});

    // ICE restart: same peer, new credentials, media keeps flowing.
    ice_restart(&mut sim, 0);
    let answers = answers_to(&sim, guest_a());
    assert_eq!(answers.len(), 2, "{:?}", sim.media_events);
    assert_ne!(
        ice_ufrag(&answers[0]),
        ice_ufrag(&answers[1]),
        "server restarted ICE too"
    );
    assert!(sim.clients[0].pending.is_none(), "A accepted the answer");
    let t0 = sim.now;
    stream_a_second(&mut sim);
    for (i, c) in sim.clients.iter().enumerate() {
        assert_a_second_of_media(&received(c, t0), &format!("client {i} after restart"));
    }
    let k = sim.core.counters();
    assert_eq!((k.peers_created, k.peers_closed), (2, 0), "{k:?}");
    assert!(!sim.failed(guest_a()) && !sim.failed(guest_b()));
    assert_eq!(
        count_events(&sim, |e| matches!(e, MediaEvent::Disconnected { .. })),
        0
    );

    // A reloads: a new connection (new DTLS certificate, new port) replaces the old peer and
    // gets B's media.
    let t1 = replace_client_a(&mut sim);
    stream_a_second(&mut sim);
    let r = received(&sim.clients[0], t1);
    assert_a_second_of_media(&r, "new A from B");
    assert!(increasing(&r.audio) && increasing(&r.video));
    assert!(!sim.failed(guest_b()));
    assert_eq!(sim.core.load(), (1, 2));
}

/// Replaces client A by a new connection at 127.0.0.1:40003 and waits until it is connected;
/// returns when that was.
fn replace_client_a(sim: &mut Sim) -> Instant {
    let before = sim.core.counters();
    let now = sim.now;
    let (fresh, offer) = Client::new(addr("127.0.0.1:40003"), guest_a(), now);
    sim.clients[0] = fresh;
    sim.send_offer(0, offer);
    sim.send_candidate(0);
    assert_eq!(sim.core.load(), (1, 2));
    let k = sim.core.counters();
    assert_eq!(k.peers_created - before.peers_created, 1, "{k:?}");
    assert_eq!(k.peers_closed - before.peers_closed, 1, "{k:?}");
    let deadline = sim.now + Duration::from_secs(3);
    while !sim.clients[0].connected() {
        assert!(sim.now < deadline, "the new A never connected");
        sim.tick();
    }
    sim.now
}

/// When A's connection is replaced, B keeps its receiving sections: the server must continue
/// the sequence numbers (and timestamps) it was writing there, or B's SRTP replay window and
/// jitter buffer discard the new source's packets whenever its random starting sequence
/// number lies behind the old one (about half the time for each of audio and video).
#[test]
fn receiver_gets_a_replaced_senders_media() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(300), |_| {});
    let t1 = replace_client_a(&mut sim);
    stream_a_second(&mut sim);
    assert_a_second_of_media(&received(&sim.clients[1], t1), "B from the new A");
    // No sequence gap seen by B across the switch (only the source changed).
    let mut by_mid: std::collections::HashMap<_, Vec<u64>> = Default::default();
    for d in sim.clients[1].media_data() {
        by_mid.entry(d.mid).or_default().push(**d.seq_range.start());
    }
    for (mid, seqs) in by_mid {
        for w in seqs.windows(2) {
            assert!(
                w[1] > w[0],
                "{mid:?}: sequence went back from {} to {}",
                w[0],
                w[1]
            );
        }
    }
}

/// The server half of the ICE ufrag names the worker (see `tandem_media::stun_worker`); an
/// ICE restart must keep that prefix or the shell routes the restarted peer's STUN to the
/// wrong worker.
#[test]
fn ice_restart_keeps_worker_prefix() {
    let cfg = MediaConfig {
        worker: 0x2a,
        ..test_config()
    };
    let mut sim = Sim::setup_call(cfg);
    sim.run_until_connected(Duration::from_secs(3));
    let first = answers_to(&sim, guest_a());
    assert!(
        ice_ufrag(&first[0]).starts_with("2a"),
        "{}",
        ice_ufrag(&first[0])
    );
    ice_restart(&mut sim, 0);
    let answers = answers_to(&sim, guest_a());
    let ufrag = ice_ufrag(answers.last().unwrap());
    assert!(ufrag.starts_with("2a"), "ufrag after ICE restart: {ufrag}");
    let stun = stun_binding_request(&format!("{ufrag}:abcd"));
    assert_eq!(tandem_media::stun_worker(&stun), Some(0x2a));
}

// --- timers -------------------------------------------------------------------------------

/// With a zero round trip str0m's delay controller asks for a timeout at `now` again after
/// every `handle_timeout(now)`; the core must not spin on it. (A LAN round trip can measure
/// as zero too.)
#[test]
fn zero_rtt_does_not_hang() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sim = Sim::setup_call(test_config());
        sim.latency = Duration::ZERO;
        sim.run_until_connected(Duration::from_secs(3));
        sim.stream(&[0, 1], ms(200), |_| {});
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the simulation finished (it hangs in MediaCore::handle_timeout)");
}

// --- 8 ------------------------------------------------------------------------------------

fn stun_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Header with the magic cookie, random body.
        (any::<u16>(), vec(any::<u8>(), 12..120)).prop_map(|(ty, rest)| {
            let mut v = vec![(ty >> 8) as u8 & 0x3F, ty as u8];
            v.extend_from_slice(&((rest.len() - 12) as u16).to_be_bytes());
            v.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            v.extend(rest);
            v
        }),
        // A well-formed binding request with a random USERNAME.
        "[0-9a-zA-Z:]{0,40}".prop_map(|u| stun_binding_request(&u)),
        // The same, cut short or with a byte flipped.
        (
            "[0-9a-f]{2}[a-zA-Z0-9]{4,14}:[a-z]{4}",
            any::<usize>(),
            any::<u8>()
        )
            .prop_map(|(u, at, b)| {
                let mut v = stun_binding_request(&u);
                let at = at % v.len();
                if b & 1 == 0 {
                    v.truncate(at);
                } else {
                    v[at] ^= b | 1;
                }
                v
            }),
    ]
}

fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..1500),
        stun_like(),
        // RTP-looking.
        (0x80u8..=0xBF, any::<u8>(), vec(any::<u8>(), 10..1200)).prop_map(|(b0, b1, rest)| {
            let mut v = vec![b0, b1];
            v.extend(rest);
            v
        }),
        // RTCP-looking.
        (0x80u8..=0xBF, 200u8..=206, vec(any::<u8>(), 2..400)).prop_map(|(b0, b1, rest)| {
            let mut v = vec![b0, b1];
            v.extend(rest);
            v
        }),
        // DTLS-looking.
        (20u8..=63, vec(any::<u8>(), 0..400)).prop_map(|(b0, rest)| {
            let mut v = vec![b0, 0xfe, 0xfd];
            v.extend(rest);
            v
        }),
    ]
}

fn source() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        Just(addr(ADDR_A)),
        Just(addr(ADDR_B)),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

#[test]
fn random_datagrams_do_not_panic() {
    let sim = RefCell::new(Sim::connected_call());
    sim.borrow_mut().stream(&[0, 1], ms(200), |_| {});
    let mut runner = TestRunner::new(PropConfig {
        cases: 200,
        ..PropConfig::default()
    });
    let input = vec(
        (
            source(),
            prop_oneof![Just(Protocol::Udp), Just(Protocol::Tcp)],
            datagram(),
        ),
        1..8,
    );
    runner
        .run(&input, |datagrams| {
            let mut sim = sim.borrow_mut();
            for (src, proto, d) in datagrams {
                let now = sim.now;
                let _ = sim.core.handle_receive(proto, src, server_addr(), &d, now);
                let _ = tandem_media::stun_worker(&d);
            }
            sim.tick();
            Ok(())
        })
        .expect("no case failed");
    let mut sim = sim.into_inner();
    let k = sim.core.counters();
    assert_eq!(k.peer_panics, 0, "{k:?}");
    assert!(k.datagrams_unknown > 0);
    // Did the call survive? Garbage that claims a guest's address must not end its media.
    let failed: Vec<_> = sim
        .media_events
        .iter()
        .filter(|(_, e)| matches!(e, MediaEvent::Failed { .. }))
        .collect();
    assert!(
        failed.is_empty(),
        "spoofed garbage failed a peer: {failed:?} {k:?}"
    );
    let t0 = sim.now;
    sim.stream(&[0, 1], ms(500), |_| {});
    sim.run_for(ms(100), |_| {});
    for c in &sim.clients {
        let r = received(c, t0);
        assert!(r.audio.len() >= 20, "{r:?}");
    }
}

proptest! {
    #[test]
    fn stun_worker_never_panics(d in vec(any::<u8>(), 0..600)) {
        let _ = tandem_media::stun_worker(&d);
    }

    #[test]
    fn stun_worker_never_panics_on_stun_like(d in stun_like()) {
        let _ = tandem_media::stun_worker(&d);
    }

    #[test]
    fn stun_worker_reads_the_prefix(worker in 0usize..256, rest in "[a-zA-Z0-9]{4,14}", client in "[a-zA-Z0-9]{4,8}") {
        let stun = stun_binding_request(&format!("{worker:02x}{rest}:{client}"));
        prop_assert_eq!(tandem_media::stun_worker(&stun), Some(worker));
    }
}

/// The worker prefix really is in the ufrag the core hands out, and `stun_worker` finds it
/// in a client's actual binding request.
#[test]
fn stun_worker_routes_real_binding_requests() {
    let cfg = MediaConfig {
        worker: 0x1f,
        ..test_config()
    };
    let mut sim = Sim::setup_call(cfg);
    let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
    sim.filter = Box::new({
        let seen = seen.clone();
        move |leg, d| {
            if matches!(leg, Leg::Up(_)) && classify(d) == Kind::Stun {
                seen.borrow_mut().push(d.to_vec());
            }
            false
        }
    });
    sim.run_until_connected(Duration::from_secs(3));
    let seen = seen.borrow();
    assert!(!seen.is_empty());
    for d in seen.iter() {
        assert_eq!(tandem_media::stun_worker(d), Some(0x1f));
    }
}

// --- a guest goes silent ------------------------------------------------------------------

/// A guest whose network dies sends nothing more, so nothing but the core's own timers can
/// notice: ICE-lite drops the pair, the core reports the guest disconnected, and failed once
/// `connect_timeout` passes without it coming back. The other guest is unaffected.
#[test]
fn silent_guest_is_disconnected_then_failed() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(300), |_| {});
    let t0 = sim.now;
    sim.filter = Box::new(|leg, _| matches!(leg, Leg::Up(0) | Leg::Down(0)));
    let deadline = t0 + Duration::from_secs(30);
    let mut audio = 0;
    while !sim.failed(guest_a()) {
        assert!(
            sim.now < deadline,
            "A silent for {:?}, core events since: {:?}",
            sim.now - t0,
            sim.media_events
                .iter()
                .filter(|(t, _)| *t >= t0)
                .collect::<Vec<_>>()
        );
        // B keeps talking, which keeps B's peer (not A's) busy.
        if (sim.now - t0).as_millis() / 20 >= audio {
            sim.write_audio(1, audio as u32);
            audio += 1;
        }
        sim.tick();
    }
    let disconnected_at = sim
        .media_events
        .iter()
        .find(|(_, e)| matches!(e, MediaEvent::Disconnected { guest, .. } if *guest == guest_a()))
        .map(|(t, _)| *t)
        .expect("Disconnected before Failed");
    let failed_at = sim
        .media_events
        .iter()
        .rev()
        .find(|(_, e)| matches!(e, MediaEvent::Failed { .. }))
        .unwrap()
        .0;
    assert!(failed_at - disconnected_at >= test_config().connect_timeout);
    assert!(failed_at - disconnected_at <= test_config().connect_timeout + ms(500));
    assert!(!sim.failed(guest_b()));
    assert_eq!(sim.core.load(), (1, 1));
}

/// A guest that lost its network comes back with an ICE restart before `connect_timeout`:
/// the core reports it connected again, media flows again and nothing fails.
#[test]
fn disconnected_guest_comes_back_with_ice_restart() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(300), |_| {});
    let t0 = sim.now;
    sim.filter = Box::new(|leg, _| matches!(leg, Leg::Up(0) | Leg::Down(0)));
    let deadline = t0 + Duration::from_secs(20);
    let is_disc =
        |e: &MediaEvent| matches!(e, MediaEvent::Disconnected { guest, .. } if *guest == guest_a());
    while count_events(&sim, is_disc) == 0 {
        assert!(sim.now < deadline, "A never reported disconnected");
        sim.tick();
    }
    let gone = sim.now;
    sim.run_for(ms(500), |_| {});
    sim.filter = Box::new(|_, _| false);
    ice_restart(&mut sim, 0);
    let t1 = sim.now;
    sim.stream(&[0, 1], ms(1500), |_| {});
    let a_ice = sim.clients[0].events.iter().any(|(t, e)| {
        *t > t1
            && matches!(
                e,
                Event::IceConnectionStateChange(str0m::IceConnectionState::Completed)
            )
    });
    assert!(a_ice, "A's ICE restart completed");
    let r = received(&sim.clients[1], t1 + ms(500));
    assert!(r.audio.len() >= 40, "B hears A again: {r:?}");
    // Well past connect_timeout: a guest that came back must not be failed.
    sim.stream(&[0, 1], test_config().connect_timeout, |_| {});
    let since: Vec<_> = sim
        .media_events
        .iter()
        .filter(|(t, e)| {
            *t > gone && !matches!(e, MediaEvent::Answer { .. } | MediaEvent::Candidate { .. })
        })
        .map(|(t, e)| (*t - t1, e))
        .collect();
    assert!(
        !sim.failed(guest_a()),
        "A failed although its media flows: {since:?}"
    );
    let back = sim.media_events.iter().any(|(t, e)| {
        *t > gone && matches!(e, MediaEvent::Connected { guest, .. } if *guest == guest_a())
    });
    assert!(back, "A was not reported connected again: {since:?}");
    assert_eq!(sim.core.counters().peers_created, 2);
}

// --- server renegotiation -----------------------------------------------------------------

/// B offers audio only; A sends video too. The server has no video section to put A's video
/// in, so it offers B a new send-only one, B answers, and A's video reaches B there.
#[test]
fn server_offers_a_section_for_a_kind_the_guest_lacks() {
    let mut sim = Sim::new(test_config());
    sim.open();
    let (a, offer_a) = sim.add_client(ADDR_A, guest_a());
    let now = sim.now;
    let (b_client, offer_b) = Client::with_video(addr(ADDR_B), guest_b(), now, false);
    sim.clients.push(b_client);
    let b = 1;
    sim.send_offer(a, offer_a);
    sim.send_candidate(a);
    sim.send_offer(b, offer_b);
    sim.send_candidate(b);
    sim.run_until_connected(Duration::from_secs(3));
    // The server offers once B's sections are known (str0m announces them on connecting).
    sim.run_for(ms(100), |_| {});
    let offers_to = |sim: &Sim, g| {
        count_events(
            sim,
            |e| matches!(e, MediaEvent::Offer { guest, .. } if *guest == g),
        )
    };
    assert_eq!(
        offers_to(&sim, guest_b()),
        1,
        "one server offer to B: {:?}",
        sim.media_events
    );
    assert_eq!(sim.clients[b].answered_server_offers, 1);
    assert_eq!(offers_to(&sim, guest_a()), 0);

    let added: Vec<_> = sim.clients[b]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::MediaAdded(m) if m.kind == MediaKind::Video => Some((m.mid, m.direction)),
            _ => None,
        })
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(added[0].1.is_receiving());

    let t0 = sim.now;
    let mut b_audio = 0;
    let sent = sim.stream(&[a], Duration::from_secs(1), |sim| {
        // B only has audio to send.
        while b_audio <= (sim.now - t0).as_millis() / 20 {
            sim.write_audio(1, b_audio as u32);
            b_audio += 1;
        }
    });
    sim.run_for(ms(200), |_| {});
    let r = received(&sim.clients[b], t0);
    assert!(
        r.video.len() as u32 >= sent.video * 9 / 10,
        "B got {} of {} video frames",
        r.video.len(),
        sent.video
    );
    assert!(r.audio.len() as u32 >= sent.audio * 9 / 10);
    assert!(sim.clients[b]
        .media_data()
        .all(|d| d.params.spec().codec != Codec::Vp8 || d.mid == added[0].0));
    let r = received(&sim.clients[a], t0);
    assert!(r.audio.len() >= 40, "A hears B: {r:?}");
    assert!(r.video.is_empty());
    assert_eq!(offers_to(&sim, guest_b()), 1, "no further renegotiation");
    assert!(!sim
        .media_events
        .iter()
        .any(|(_, e)| matches!(e, MediaEvent::OfferRejected { .. })));
}

// --- a str0m panic ------------------------------------------------------------------------

/// A panic inside str0m while driving one peer closes that peer only: the guest is reported
/// failed, the other guest's peer stays, and the core keeps running.
#[test]
fn str0m_panic_closes_only_that_peer() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0, 1], ms(200), |_| {});
    sim.core.inject_panic(sim.call, guest_a());
    sim.stream(&[0, 1], ms(500), |_| {});
    let k = sim.core.counters();
    assert_eq!(k.peer_panics, 1, "{k:?}");
    assert!(sim.failed(guest_a()));
    assert!(!sim.failed(guest_b()));
    assert_eq!(sim.core.load(), (1, 1));
    // A's datagrams are now unknown; B's are still handled.
    let (a_handled, b_handled) = (sim.clients[0].up_handled, sim.clients[1].up_handled);
    sim.stream(&[0, 1], ms(300), |_| {});
    assert_eq!(sim.clients[0].up_handled, a_handled);
    assert!(sim.clients[1].up_handled > b_handled);
}

// --- forwarding adds no delay -------------------------------------------------------------

/// When client `c` got the frame `parse` finds with index `idx`.
fn arrival(c: &Client, since: Instant, idx: u32, video: bool) -> Option<Instant> {
    c.events.iter().find_map(|(t, e)| match e {
        Event::MediaData(d) if *t >= since => {
            let got = if video {
                parse_video(&d.data)
            } else {
                parse_audio(&d.data)
            };
            (got == Some(idx)).then_some(*t)
        }
        _ => None,
    })
}

#[test]
fn a_burst_is_forwarded_in_the_turn_it_arrives() {
    // A keyframe is several packets that reach the core at the same instant, with an audio
    // frame beside it. With bandwidth estimation on, str0m's pacer releases one packet per
    // timeout and asks for the next a microsecond later; the core must drive it through the
    // whole burst at once, not one packet per timer wake-up (which added milliseconds per
    // packet).
    let mut sim = Sim::connected_call();
    // Settle: a second of normal media so the estimator and the pacer are running.
    sim.stream(&[0], Duration::from_secs(1), |_| {});
    // A datagram is handed over on the first step at or after its latency has passed.
    let steps = sim.latency.as_micros().div_ceil(sim.step.as_micros());
    let one_way = sim.step * u32::try_from(steps).expect("a few steps");
    for n in 0..5u32 {
        let idx = 10_000 + n;
        let since = sim.now;
        sim.write_audio(0, idx);
        sim.write_video(0, idx, true);
        // A packetizes on a timeout; give it those now rather than on the next step.
        sim.pump();
        for _ in 0..16 {
            let a = &mut sim.clients[0];
            if a.next_timeout > sim.now {
                break;
            }
            a.rtc
                .handle_input(Input::Timeout(sim.now))
                .expect("client timeout");
            sim.pump();
        }
        sim.run_for(ms(100), |_| {});
        let b = &sim.clients[1];
        let audio = arrival(b, since, idx, false).expect("B got the audio frame");
        let video = arrival(b, since, idx, true).expect("B got the keyframe");
        // Up and down the wire, and nothing else.
        assert_eq!(audio - since, one_way * 2, "audio frame {n} was held");
        assert_eq!(video - since, one_way * 2, "keyframe {n} was held");
    }
}

// --- remote candidates ----------------------------------------------------------------------

/// A guest sprays valid STUN checks (its own, replayed) from 1,000 source ports: at most 20
/// remote candidates exist per call participant, the rest are dropped unanswered, and the
/// server's work afterwards is what it was before (no thousand candidate pairs to serve).
#[test]
fn a_stun_spray_from_1000_ports_is_capped_at_20_remote_candidates() {
    let mut sim = Sim::setup_call(test_config());
    // Keep a copy of A's STUN checks: valid USERNAME, integrity and fingerprint.
    let checks = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Vec<u8>>::new()));
    let seen = checks.clone();
    sim.filter = Box::new(move |leg, d| {
        if leg == Leg::Up(0) && classify(d) == Kind::Stun && d.len() > 20 && d[0..2] == [0, 1] {
            seen.borrow_mut().push(d.to_vec());
        }
        false
    });
    sim.run_until_connected(Duration::from_secs(3));
    let check = checks
        .borrow()
        .last()
        .cloned()
        .expect("A sent a STUN check");
    // The server's transmits over two quiet seconds, before the spray.
    let transmits = |sim: &mut Sim| {
        let mut n = 0usize;
        sim.run_for(Duration::from_secs(2), |s| {
            n += s
                .wire
                .iter()
                .filter(|p| matches!(p.leg, Leg::Down(_)))
                .count();
        });
        n
    };
    let before = transmits(&mut sim);
    let c0 = sim.core.counters();
    let mut answered = 0usize;
    for port in 0..1000u16 {
        let source: std::net::SocketAddr = format!("127.0.0.1:{}", 50_000 + port).parse().unwrap();
        sim.core.handle_receive(
            str0m::net::Protocol::Udp,
            source,
            server_addr(),
            &check,
            sim.now,
        );
        while let Some(out) = sim.core.poll_output() {
            if matches!(out, tandem_media::MediaOutput::Transmit(t) if t.destination == source) {
                answered += 1;
            }
        }
    }
    let c1 = sim.core.counters();
    // A holds 1 trickled candidate and its own address already: 18 more at most.
    assert!(answered <= 20, "answered {answered} of the spray");
    assert!(
        c1.candidates_refused - c0.candidates_refused >= 980,
        "refused {}",
        c1.candidates_refused - c0.candidates_refused
    );
    let after = transmits(&mut sim);
    // Without the cap str0m would keep a pair per sprayed address; with it the server's
    // traffic stays within a few packets of the quiet baseline.
    assert!(
        after <= before + 40,
        "server transmits in 2 s: {before} before the spray, {after} after"
    );
    // The call is unharmed.
    assert!(sim.clients.iter().all(|c| c.connected()));
}

/// Trickled candidates count against the same 20: the rest are refused and counted.
#[test]
fn trickled_candidates_are_capped_too() {
    let mut sim = Sim::connected_call();
    let c0 = sim.core.counters();
    for i in 0..40u16 {
        sim.command(MediaCommand::Candidate {
            call: sim.call,
            guest: guest_a(),
            candidate: format!(
                "candidate:{i} 1 udp 2122260223 192.0.2.{} {} typ host",
                i % 250 + 1,
                40_000 + i
            ),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        });
    }
    let refused = sim.core.counters().candidates_refused - c0.candidates_refused;
    assert!((20..=40).contains(&refused), "refused {refused} of 40");
    assert!(sim.clients.iter().all(|c| c.connected()));
}

/// The REMB ceilings client `c` (a sender) got for its video, with when.
fn rembs(c: &Client) -> Vec<(Instant, u64)> {
    c.events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Remb { estimate, mid })
                if *mid == c.video_mid =>
            {
                Some((*t, estimate.as_u64()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_receivers_downlink_estimate_reaches_the_sender_as_remb() {
    let mut sim = Sim::connected_call();
    sim.stream(&[0], Duration::from_secs(3), |_| {});
    let open = rembs(&sim.clients[0]);
    assert!(open.len() >= 3, "A is told B's ceiling regularly: {open:?}");
    // The ceiling is B's estimate (str0m's 1 Mbit/s start here) less a margin.
    let mut estimates = Vec::new();
    sim.core.drain_samples(|s| {
        if let tandem_media::Sample::Bandwidth(b) = s {
            estimates.push(b);
        }
    });
    let told = open.first().expect("some").1;
    // The first is B's first estimate less the margin (REMB carries a mantissa and an exponent:
    // close, not exact); later ones may be higher (no loss: the ceiling rises by steps).
    assert!(
        estimates.iter().any(|e| {
            let ceiling = e / 100 * tandem_media::CEILING_PERCENT;
            ceiling.abs_diff(told) * 100 <= ceiling
        }),
        "{told} is one of B's estimates {estimates:?}"
    );
    let last_estimate = *estimates.last().expect("an estimate");
    assert!(
        open.iter()
            .all(|(_, b)| *b * 100 >= last_estimate.min(open[0].1) * 90),
        "never far below B's estimate: {open:?} ({estimates:?})"
    );
    // Bounded: at most one every 500 ms unless it falls.
    let (_, before) = *open.last().expect("some");
    assert!(before >= tandem_media::MIN_VIDEO_BPS, "{open:?}");
    // B is never told anything: it sends no video.
    assert!(rembs(&sim.clients[1]).is_empty());

    // B's downlink now loses half of what the server sends it: its estimate falls, and
    // so does the ceiling A is told.
    let mut n = 0u32;
    sim.filter = Box::new(move |l, d| {
        if l != Leg::Down(1) || !matches!(classify(d), Kind::Rtp(_)) {
            return false;
        }
        n += 1;
        n.is_multiple_of(2)
    });
    let t = sim.now;
    sim.stream(&[0], Duration::from_secs(8), |_| {});
    let lossy: Vec<_> = rembs(&sim.clients[0])
        .into_iter()
        .filter(|(at, _)| *at > t)
        .collect();
    let (_, after) = *lossy.last().expect("A is still told B's ceiling");
    assert!(
        after * 10 < before * 8,
        "B's losses bring A's ceiling down: before {before}, after {after} ({lossy:?})"
    );
    // Every ceiling sent is counted.
    let events = sim.core.counters().rembs_sent;
    assert!(events as usize >= open.len() + lossy.len(), "{events}");
}
