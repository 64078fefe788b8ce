//! One synthetic call participant: a webrtc-rs peer connection with an Opus and (unless audio
//! only) a VP8 `TrackLocalStaticRTP`, a pacer that writes stamped RTP at real rates once the
//! connection is up, and readers for the remote tracks that feed [`Metrics`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::media::{instant_at, now_ns, Metrics, SeqTracker, Stamp, STAMP_LEN};

/// Media shape, the same for every peer.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub video: bool,
    pub video_kbps: u32,
    pub fps: u32,
    pub audio_payload: usize,
    pub max_payload: usize,
    /// Local address the peer's UDP socket binds (port 0).
    pub bind_ip: std::net::IpAddr,
}

impl MediaConfig {
    /// Payload sizes of one video frame's packets.
    pub fn frame_packets(&self) -> Vec<usize> {
        let frame =
            (self.video_kbps as usize * 1000 / 8 / self.fps.max(1) as usize).max(STAMP_LEN + 1);
        let n = frame.div_ceil(self.max_payload).max(1);
        let base = frame / n;
        let mut sizes = vec![base.max(STAMP_LEN + 1); n];
        sizes[0] += frame - base * n;
        sizes
    }
}

const AUDIO_PT: u8 = 111;
const VIDEO_PT: u8 = 96;

/// Opus and VP8 only, so the offer stays well under tandem's SDP size limit.
fn media_engine() -> anyhow::Result<MediaEngine> {
    let mut me = MediaEngine::default();
    let opus = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: AUDIO_PT,
    };
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    let vp8 = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![
                fb("goog-remb", ""),
                fb("ccm", "fir"),
                fb("nack", ""),
                fb("nack", "pli"),
            ],
        },
        payload_type: VIDEO_PT,
    };
    me.register_codec(opus, RtpCodecKind::Audio)?;
    me.register_codec(vp8, RtpCodecKind::Video)?;
    Ok(me)
}

/// State the event handler shares with its [`Peer`].
struct Handler {
    metrics: Arc<Metrics>,
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    connected_ns: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.connected_ns.compare_exchange(
                0,
                now_ns(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.metrics.remote_tracks.add(1);
        tokio::spawn(read_track(track, self.metrics.clone()));
    }
}

/// Reads one remote track to its end.
async fn read_track(track: Arc<dyn TrackRemote>, metrics: Arc<Metrics>) {
    let video = track.kind().await == RtpCodecKind::Video;
    let mut trackers: HashMap<u32, SeqTracker> = HashMap::new();
    while let Some(event) = track.poll().await {
        if let TrackRemoteEvent::OnRtpPacket(pkt) = event {
            metrics.on_received(&mut trackers, &pkt.payload, video, now_ns());
        }
    }
}

struct LocalStream {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    video: bool,
}

pub struct Peer {
    pub idx: u32,
    pub pc: Arc<dyn PeerConnection>,
    streams: Vec<LocalStream>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<bool>,
    /// Local candidates as gathered (for trickling); taken by whoever signals.
    pub candidates: std::sync::Mutex<Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>>,
    connected_ns: Arc<AtomicU64>,
}

impl Peer {
    pub async fn new(idx: u32, cfg: &MediaConfig, metrics: Arc<Metrics>) -> anyhow::Result<Peer> {
        let mut me = media_engine()?;
        let registry = register_default_interceptors(Registry::new(), &mut me)?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, gathered) = watch::channel(false);
        let (cand_tx, cand_rx) = mpsc::unbounded_channel();
        let connected_ns = Arc::new(AtomicU64::new(0));
        let handler = Handler {
            metrics,
            state: state_tx,
            gathered: gathered_tx,
            candidates: cand_tx,
            connected_ns: connected_ns.clone(),
        };
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(handler))
            .with_udp_addrs(vec![std::net::SocketAddr::new(cfg.bind_ip, 0)])
            .build()
            .await
            .context("building the peer connection")?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut streams = Vec::new();
        let kinds: &[(bool, RtpCodecKind)] = if cfg.video {
            &[(false, RtpCodecKind::Audio), (true, RtpCodecKind::Video)]
        } else {
            &[(false, RtpCodecKind::Audio)]
        };
        for &(video, kind) in kinds {
            let ssrc = 0x1000_0000 | (idx << 1) | video as u32;
            let codec = if video {
                RTCRtpCodec {
                    mime_type: MIME_TYPE_VP8.to_owned(),
                    clock_rate: 90_000,
                    ..Default::default()
                }
            } else {
                RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    ..Default::default()
                }
            };
            let name = if video { "video" } else { "audio" };
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("load-{idx}"),
                format!("load-{idx}-{name}"),
                name.to_owned(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            )));
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .with_context(|| format!("adding the {name} track"))?;
            streams.push(LocalStream {
                track,
                sender,
                ssrc,
                video,
            });
        }
        Ok(Peer {
            idx,
            pc,
            streams,
            state,
            gathered,
            candidates: std::sync::Mutex::new(Some(cand_rx)),
            connected_ns,
        })
    }

    /// When the connection first reached `connected` (ns since the anchor), or 0.
    pub fn connected_ns(&self) -> u64 {
        self.connected_ns.load(Ordering::Relaxed)
    }

    /// Creates an offer and sets it locally; returns its SDP (no candidates yet).
    pub async fn offer(&self) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None).await.context("create_offer")?;
        let sdp = offer.sdp.clone();
        self.pc
            .set_local_description(offer)
            .await
            .context("set_local_description(offer)")?;
        Ok(sdp)
    }

    /// Applies a remote offer, answers it; returns the answer's SDP.
    pub async fn answer(&self, offer_sdp: String) -> anyhow::Result<String> {
        let offer = RTCSessionDescription::offer(offer_sdp).context("parsing the offer")?;
        self.pc
            .set_remote_description(offer)
            .await
            .context("set_remote_description(offer)")?;
        let answer = self.pc.create_answer(None).await.context("create_answer")?;
        let sdp = answer.sdp.clone();
        self.pc
            .set_local_description(answer)
            .await
            .context("set_local_description(answer)")?;
        Ok(sdp)
    }

    pub async fn accept_answer(&self, sdp: String) -> anyhow::Result<()> {
        let answer = RTCSessionDescription::answer(sdp).context("parsing the answer")?;
        self.pc
            .set_remote_description(answer)
            .await
            .context("set_remote_description(answer)")
    }

    /// The local description once ICE gathering is complete (candidates included).
    pub async fn gathered_sdp(&self, timeout: Duration) -> anyhow::Result<String> {
        let mut g = self.gathered.clone();
        tokio::time::timeout(timeout, g.wait_for(|done| *done))
            .await
            .map_err(|_| anyhow!("ICE gathering did not complete within {timeout:?}"))?
            .map_err(|_| anyhow!("peer connection gone"))?;
        match self.pc.local_description().await {
            Some(d) => Ok(d.sdp),
            None => bail!("no local description"),
        }
    }

    pub async fn add_remote_candidate(&self, init: RTCIceCandidateInit) -> anyhow::Result<()> {
        self.pc
            .add_ice_candidate(init)
            .await
            .context("add_ice_candidate")
    }

    /// Waits until the connection is `connected`; fails early on `failed`/`closed`.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut s = self.state.clone();
        let r = tokio::time::timeout(
            timeout,
            s.wait_for(|st| {
                matches!(
                    st,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await;
        match r {
            Err(_) => bail!(
                "peer {} not connected within {timeout:?} (state {})",
                self.idx,
                *self.state.borrow()
            ),
            Ok(Err(_)) => bail!("peer {} gone", self.idx),
            Ok(Ok(st)) if *st == RTCPeerConnectionState::Connected => Ok(()),
            Ok(Ok(st)) => bail!("peer {} connection {}", self.idx, *st),
        }
    }

    /// Starts the pacer: it waits for `connected`, then writes RTP until `stop` turns true.
    pub fn start_sending(
        self: &Arc<Self>,
        cfg: MediaConfig,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.pace(cfg, metrics, stop).await })
    }

    async fn pace(&self, cfg: MediaConfig, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
        let up = tokio::select! {
            r = self.wait_connected(Duration::from_secs(3600)) => r.is_ok(),
            _ = stopped(&mut stop) => false,
        };
        if !up {
            return;
        }
        let mut pacers = Vec::new();
        for s in &self.streams {
            let want = if s.video {
                MIME_TYPE_VP8
            } else {
                MIME_TYPE_OPUS
            };
            let fallback = if s.video { VIDEO_PT } else { AUDIO_PT };
            let pt = match s.sender.get_parameters().await {
                Ok(p) => p
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(want))
                    .map_or(fallback, |c| c.payload_type),
                Err(_) => fallback,
            };
            let interval_ns = if s.video {
                1_000_000_000 / cfg.fps.max(1) as u64
            } else {
                20_000_000
            };
            // Spread the first send of each peer over one interval.
            let offset = (u64::from(self.idx) * 7_919_000) % interval_ns;
            pacers.push(Pacer {
                stream: (self.idx << 1) | s.video as u32,
                pt,
                seq: 0,
                rtp_seq: (self.idx as u16).wrapping_mul(1000),
                rtp_ts: self.idx.wrapping_mul(100_000),
                interval_ns,
                next_ns: now_ns() + offset,
                sizes: if s.video {
                    cfg.frame_packets()
                } else {
                    vec![cfg.audio_payload.max(STAMP_LEN)]
                },
            });
        }
        let mut buf = Vec::with_capacity(cfg.max_payload + 8);
        loop {
            let Some(due) = pacers.iter().map(|p| p.next_ns).min() else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(instant_at(due).into()) => {}
                _ = stopped(&mut stop) => return,
            }
            for (p, s) in pacers.iter_mut().zip(&self.streams) {
                let now = now_ns();
                if p.next_ns > now {
                    continue;
                }
                let n = p.sizes.len();
                for (i, &size) in p.sizes.iter().enumerate() {
                    buf.clear();
                    if s.video {
                        // VP8 payload descriptor: S (start of partition) on the frame's first packet.
                        buf.push(if i == 0 { 0x10 } else { 0x00 });
                    }
                    let sent_ns = now_ns();
                    Stamp {
                        stream: p.stream,
                        seq: p.seq,
                        sent_ns,
                    }
                    .write(&mut buf);
                    buf.resize(size.max(buf.len()), 0);
                    let packet = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            marker: s.video && i + 1 == n,
                            payload_type: p.pt,
                            sequence_number: p.rtp_seq,
                            timestamp: p.rtp_ts,
                            ssrc: s.ssrc,
                            ..Default::default()
                        },
                        payload: Bytes::copy_from_slice(&buf),
                    };
                    p.seq += 1;
                    p.rtp_seq = p.rtp_seq.wrapping_add(1);
                    match s.track.write_rtp(packet).await {
                        Ok(()) => metrics.on_sent(sent_ns, buf.len()),
                        Err(_) => metrics.write_errors.add(1),
                    }
                }
                p.rtp_ts = p.rtp_ts.wrapping_add(if s.video {
                    90_000 / cfg.fps.max(1)
                } else {
                    960
                });
                p.next_ns += p.interval_ns;
                // Far behind (the machine is saturated): skip the missed ticks instead of bursting.
                let now = now_ns();
                if p.next_ns + p.interval_ns <= now {
                    let missed = (now - p.next_ns) / p.interval_ns;
                    metrics.ticks_skipped.add(missed);
                    p.next_ns += missed * p.interval_ns;
                }
            }
        }
    }

    /// Closes the connection (bounded).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

struct Pacer {
    stream: u32,
    pt: u8,
    seq: u64,
    rtp_seq: u16,
    rtp_ts: u32,
    interval_ns: u64,
    next_ns: u64,
    sizes: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_split() {
        let cfg = MediaConfig {
            video: true,
            video_kbps: 1500,
            fps: 30,
            audio_payload: 100,
            max_payload: 1200,
            bind_ip: [127, 0, 0, 1].into(),
        };
        let sizes = cfg.frame_packets();
        assert_eq!(sizes.iter().sum::<usize>(), 6250);
        assert_eq!(sizes.len(), 6);
        assert!(sizes.iter().all(|&s| s <= 1200));
    }
}
