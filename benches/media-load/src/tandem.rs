//! Calls through tandem: guests over HTTP, Socket.IO, matching, call signaling, then one
//! webrtc-rs peer per guest connected to tandem's SFU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use webrtc::peer_connection::RTCIceCandidateInit;

use crate::media::{now_ns, Metrics};
use crate::peer::{stopped, MediaConfig, Peer};
use crate::sio::{self, Event, Socket};
use crate::{http, log, Args, Setup, Shared};

const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Events after which waiting for something else is pointless.
const FATAL: [&str; 4] = [
    "call:ended",
    "call:rejected",
    "chat:ended",
    "server:shutdown",
];

pub struct Guest {
    pub idx: usize,
    pub sock: Socket,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Guest {
    /// Waits for one of `names`, skipping unrelated events; returns its payload.
    async fn wait_for(&mut self, names: &[&str], timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("guest {}: no {names:?} within {timeout:?}", self.idx))?
                .ok_or_else(|| {
                    anyhow!("guest {}: socket closed waiting for {names:?}", self.idx)
                })?;
            if names.contains(&ev.name.as_str()) {
                return Ok(ev.data);
            }
            if FATAL.contains(&ev.name.as_str()) {
                bail!(
                    "guest {}: {} {} while waiting for {names:?}",
                    self.idx,
                    ev.name,
                    ev.data
                );
            }
            if ev.name == "error" {
                bail!("guest {}: error event {}", self.idx, ev.data);
            }
        }
    }
}

/// Parses `http://host[:port][/]` into (host:port, address).
async fn parse_url(url: &str) -> anyhow::Result<(String, SocketAddr)> {
    let authority = url
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| anyhow!("--url must look like http://127.0.0.1:8080 (got {url:?})"))?;
    let with_port = match authority.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => authority.to_owned(),
        _ => format!("{authority}:80"),
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {with_port}"))?
        .next()
        .ok_or_else(|| anyhow!("{with_port} resolves to nothing"))?;
    Ok((with_port, addr))
}

/// Creates, connects and pairs `2 × pairs` guests; returns them two by two (caller first).
pub async fn paired_guests(
    args: &Args,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<(Guest, Guest)>> {
    let (authority, addr) = parse_url(&args.url).await?;
    let n = args.pairs * 2;
    let tokens = http::create_guests(addr, authority.clone(), n, 4, shared.clone()).await;
    if tokens.len() < n {
        bail!(
            "created only {} of {n} guests (POST /api/guest): {}",
            tokens.len(),
            shared.summary()
        );
    }
    let ws_url = format!("ws://{authority}/socket.io/?EIO=4&transport=websocket");
    let connects = tokens.iter().enumerate().map(|(idx, token)| {
        let ws_url = ws_url.clone();
        async move {
            let (sock, events) = sio::connect(&ws_url, token, SIGNAL_TIMEOUT)
                .await
                .with_context(|| format!("guest {idx}: Socket.IO connect"))?;
            anyhow::Ok(Guest { idx, sock, events })
        }
    });
    let mut guests = Vec::with_capacity(n);
    for r in futures_util::future::join_all(connects).await {
        guests.push(r?);
    }
    log(format!("{n} guests connected; matching"));
    // One at a time: each new searcher is paired with the one waiting (the longest waiting).
    for g in &guests {
        g.sock
            .request("match:start", json!({}), SIGNAL_TIMEOUT)
            .await
            .with_context(|| format!("guest {}", g.idx))?;
    }
    let rooms = futures_util::future::join_all(guests.iter_mut().map(|g| async move {
        let found = g
            .wait_for(&["match:found", "chat:matched"], SIGNAL_TIMEOUT)
            .await?;
        found["roomId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("guest {}: match without roomId: {found}", g.idx))
    }))
    .await;
    let mut by_room: HashMap<String, Vec<Guest>> = HashMap::new();
    let mut order = Vec::new();
    for (g, room) in guests.into_iter().zip(rooms) {
        let room = room?;
        if !by_room.contains_key(&room) {
            order.push(room.clone());
        }
        by_room.entry(room).or_default().push(g);
    }
    let mut pairs = Vec::new();
    for room in order {
        let mut two = by_room.remove(&room).unwrap_or_default();
        if two.len() != 2 {
            bail!("room {room} has {} of our guests, not 2", two.len());
        }
        let b = two.pop().expect("two");
        let a = two.pop().expect("two");
        pairs.push((a, b));
    }
    Ok(pairs)
}

/// Everything one call task needs.
pub struct CallCtx {
    pub pair: usize,
    pub cfg: MediaConfig,
    pub trickle: bool,
    pub setup_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    pub stop: watch::Receiver<bool>,
    pub setup_tx: mpsc::UnboundedSender<Setup>,
}

/// One call from ring to hang-up: reports its setup through `setup_tx`, runs until `stop`,
/// then tears down (call:end, peer connections closed, sockets closed).
pub async fn call(mut a: Guest, mut b: Guest, ctx: CallCtx) {
    let fail = |ctx: &CallCtx, e: anyhow::Error| {
        let _ = ctx
            .setup_tx
            .send(Setup::Failed(format!("pair {}: {e:#}", ctx.pair)));
    };
    let ring = async {
        let ack = a
            .sock
            .request(
                "call:request",
                json!({ "video": ctx.cfg.video }),
                SIGNAL_TIMEOUT,
            )
            .await?;
        if ack.get("ok") != Some(&Value::Bool(true)) {
            bail!("call:request ack without ok: {ack}");
        }
        b.wait_for(&["call:incoming"], SIGNAL_TIMEOUT).await?;
        let accepted_at = now_ns();
        b.sock
            .request("call:accept", Value::Null, SIGNAL_TIMEOUT)
            .await?;
        a.wait_for(&["call:accepted"], SIGNAL_TIMEOUT).await?;
        b.wait_for(&["call:accepted"], SIGNAL_TIMEOUT).await?;
        anyhow::Ok(accepted_at)
    };
    let peers = async {
        let accepted_at = ring.await?;
        let pa = Peer::new(2 * ctx.pair as u32, &ctx.cfg, ctx.metrics.clone()).await?;
        let pb = Peer::new(2 * ctx.pair as u32 + 1, &ctx.cfg, ctx.metrics.clone()).await?;
        anyhow::Ok((accepted_at, Arc::new(pa), Arc::new(pb)))
    };
    let (accepted_at, pa, pb) = match peers.await {
        Ok(v) => v,
        Err(e) => {
            fail(&ctx, e);
            a.sock.close().await;
            b.sock.close().await;
            return;
        }
    };
    let senders = [
        pa.start_sending(ctx.cfg.clone(), ctx.metrics.clone(), ctx.stop.clone()),
        pb.start_sending(ctx.cfg.clone(), ctx.metrics.clone(), ctx.stop.clone()),
    ];
    let setup = async {
        let both = async {
            pa.wait_connected(ctx.setup_timeout).await?;
            pb.wait_connected(ctx.setup_timeout).await
        };
        let outcome = match both.await {
            Ok(()) => Setup::Connected {
                ms: (pa.connected_ns().max(pb.connected_ns()) - accepted_at) as f64 / 1e6,
            },
            Err(e) => Setup::Failed(format!("pair {}: {e:#}", ctx.pair)),
        };
        let _ = ctx.setup_tx.send(outcome);
    };
    tokio::join!(signal(&mut a, &pa, &ctx), signal(&mut b, &pb, &ctx), setup);
    for s in senders {
        let _ = s.await;
    }
    // The caller hangs up; an error here (the call already ended) changes nothing.
    let _ = a
        .sock
        .request("call:end", Value::Null, Duration::from_secs(2))
        .await;
    pa.close().await;
    pb.close().await;
    a.sock.close().await;
    b.sock.close().await;
}

/// Receives a candidate when trickling, else never.
async fn next_candidate(
    rx: &mut Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>,
) -> RTCIceCandidateInit {
    match rx {
        Some(r) => match r.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// One side's signaling with tandem: the offer, then answers, server offers and candidates
/// until `stop`.
async fn signal(g: &mut Guest, peer: &Peer, ctx: &CallCtx) {
    let shared = &ctx.shared;
    let mut stop = ctx.stop.clone();
    let mut cands = if ctx.trickle {
        peer.candidates.lock().expect("candidates").take()
    } else {
        None
    };
    let offer = async {
        let sdp = peer.offer().await?;
        let sdp = if ctx.trickle {
            sdp
        } else {
            peer.gathered_sdp(SIGNAL_TIMEOUT).await?
        };
        if ctx.pair == 0 && peer.idx == 0 {
            log(format!("first offer: {} bytes of SDP", sdp.len()));
        }
        g.sock
            .request("webrtc:offer", json!({ "sdp": sdp }), SIGNAL_TIMEOUT)
            .await?;
        anyhow::Ok(())
    };
    if let Err(e) = offer.await {
        shared.error(&format!("webrtc:offer: {e:#}"));
        return;
    }
    loop {
        tokio::select! {
            ev = g.events.recv() => {
                let Some(ev) = ev else {
                    if !*ctx.stop.borrow() {
                        shared.error("socket closed during the call");
                    }
                    return;
                };
                if let Err(e) = on_event(g, peer, ctx, &ev).await {
                    shared.error(&format!("{}: {e:#}", ev.name));
                }
                if FATAL.contains(&ev.name.as_str()) {
                    if !*ctx.stop.borrow() {
                        shared.error(&format!("{} during the call: {}", ev.name, ev.data));
                    }
                    return;
                }
            }
            c = next_candidate(&mut cands) => {
                let payload = json!({
                    "candidate": c.candidate,
                    "sdpMid": c.sdp_mid,
                    "sdpMLineIndex": c.sdp_mline_index,
                });
                if g.sock.emit("webrtc:ice-candidate", payload).is_err() {
                    return;
                }
            }
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn on_event(g: &Guest, peer: &Peer, ctx: &CallCtx, ev: &Event) -> anyhow::Result<()> {
    let sdp = || {
        ev.data["sdp"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no sdp in {}", ev.data))
    };
    match ev.name.as_str() {
        "webrtc:answer" => peer.accept_answer(sdp()?).await,
        "webrtc:offer" => {
            let answer = peer.answer(sdp()?).await?;
            let answer = if ctx.trickle {
                answer
            } else {
                peer.gathered_sdp(SIGNAL_TIMEOUT).await?
            };
            g.sock.emit("webrtc:answer", json!({ "sdp": answer }))
        }
        "webrtc:ice-candidate" => {
            let candidate = ev.data["candidate"].as_str().unwrap_or_default();
            if candidate.is_empty() {
                return Ok(()); // end of candidates
            }
            peer.add_remote_candidate(RTCIceCandidateInit {
                candidate: candidate.to_owned(),
                sdp_mid: ev.data["sdpMid"].as_str().map(str::to_owned),
                sdp_mline_index: ev.data["sdpMLineIndex"]
                    .as_u64()
                    .and_then(|i| u16::try_from(i).ok()),
                ..Default::default()
            })
            .await
        }
        "error" => bail!("{}", ev.data),
        _ => Ok(()),
    }
}
