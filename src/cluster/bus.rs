//! The bus: messages between nodes over Redis pub/sub (see docs/cluster.md, "Bus").
//!
//! Every node subscribes to its own channel, `tandem:bus:<node id>`, and publishes to the
//! channel of the node a message is for. One RESP3 connection does both (pub/sub messages
//! arrive as pushes on the connection that also publishes):
//!
//! - a single server (`redis://`, `rediss://`): a reconnecting connection, `SUBSCRIBE` and
//!   `PUBLISH`;
//! - a Redis Cluster (`redis+cluster://`): the cluster connection, `SSUBSCRIBE` and `SPUBLISH`
//!   (sharded pub/sub, Redis 7+): a message travels only inside the shard that owns the
//!   destination's channel instead of being broadcast to every master, and the client
//!   resubscribes by itself after a reconnection or a slot move.
//!
//! **Order.** [`Bus::send`] puts the message on one bounded queue; one task takes them off in
//! order and publishes them in batches (one pipeline on a single server, one pipeline per
//! destination on a Cluster, awaited before the next batch): messages to one destination arrive
//! in the order they were sent.
//!
//! **Delivery is at most once.** `send` refuses at once (no queueing) while Redis is lost; a
//! message it accepted may still be lost if Redis goes away before it is published or before
//! the destination reads it. The receiver sees such losses as gaps in the sender's sequence
//! numbers (`tandem_cluster_bus_gaps_total`). What must not be lost is made safe above the bus:
//! a request (`Event`) is acknowledged only by its answer (`Ack`), and refused to the client
//! with `service_unavailable` when none comes in time.
//!
//! **Envelope** (binary, big-endian, [`HEADER_LEN`] bytes, then the opaque payload): version
//! (1), kind (1), sender node id (16), sequence number per sender and destination (8, the
//! first is 1), send time in Unix microseconds of the sender's clock (8). The latency metric
//! compares that time with the receiver's clock: exact between nodes on one host, as good as
//! their clock synchronisation otherwise (negative differences count as 0).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use redis::{PushInfo, PushKind, RedisError, Value};
use tandem_config::RedisTarget;
use tokio::sync::mpsc;

use super::conn::{error_kind, Resp3 as Conn, COMMAND_TIMEOUT};

/// The channel of a node is this prefix and its id.
pub const CHANNEL_PREFIX: &str = "tandem:bus:";
/// Largest payload [`Bus::send`] takes, in bytes.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Bytes of the envelope before the payload.
pub const HEADER_LEN: usize = 34;
const VERSION: u8 = 1;
/// Messages published in one batch at most.
const BATCH: usize = 256;
/// Senders (and destinations) whose sequence numbers are tracked at most; past that one is
/// forgotten, and its next message starts a new stream (no gap counted).
const MAX_PEERS: usize = 4096;
/// How often the connection is checked while Redis answers, and the first retry after not.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(250);

/// A node's id: 16 random bytes, written as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A new random id.
    pub fn random() -> NodeId {
        let mut bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        NodeId(bytes)
    }

    /// Reads 32 hex digits.
    pub fn from_hex(s: &str) -> Option<NodeId> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(NodeId(out))
    }

    /// The node's bus channel.
    pub fn channel(&self) -> String {
        format!("{CHANNEL_PREFIX}{self}")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// What a message is about; only a metric label (the payload says the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BusKind {
    Chat,
    Receipt,
    Presence,
    Call,
    Webrtc,
    Match,
    Control,
}

impl BusKind {
    pub const ALL: [BusKind; 7] = [
        BusKind::Chat,
        BusKind::Receipt,
        BusKind::Presence,
        BusKind::Call,
        BusKind::Webrtc,
        BusKind::Match,
        BusKind::Control,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BusKind::Chat => "chat",
            BusKind::Receipt => "receipt",
            BusKind::Presence => "presence",
            BusKind::Call => "call",
            BusKind::Webrtc => "webrtc",
            BusKind::Match => "match",
            BusKind::Control => "control",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<BusKind> {
        BusKind::ALL.get(code as usize).copied()
    }
}

/// Why [`Bus::send`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// Redis is unreachable (the caller refuses the client's event with
    /// `service_unavailable`).
    Unavailable,
    /// The outgoing queue is full.
    Full,
    /// The payload is larger than [`MAX_PAYLOAD`].
    TooLarge,
    /// The bus stopped.
    Closed,
}

impl BusError {
    fn label(self) -> &'static str {
        match self {
            BusError::Unavailable => "unavailable",
            BusError::Full => "queue_full",
            BusError::TooLarge => "too_large",
            BusError::Closed => "closed",
        }
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusError::Unavailable => "Redis is unreachable",
            BusError::Full => "the bus's outgoing queue is full",
            BusError::TooLarge => "the message is too large for the bus",
            BusError::Closed => "the bus stopped",
        })
    }
}

impl std::error::Error for BusError {}

/// A message from another node (or this one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub from: NodeId,
    pub kind: BusKind,
    pub payload: Bytes,
}

/// Bounds of the bus's two queues.
#[derive(Clone, Copy, Debug)]
pub struct BusSettings {
    /// Messages accepted by [`Bus::send`] and not yet published.
    pub outgoing: usize,
    /// Messages received and not yet read; past that they are dropped (and counted).
    pub incoming: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            outgoing: 8192,
            incoming: 8192,
        }
    }
}

/// Send-failure reasons (`tandem_cluster_bus_send_failures_total{reason}`): refused by `send`
/// (`unavailable`, `queue_full`, `too_large`, `closed`), accepted but not published because
/// Redis failed (`lost`), published while the destination was not subscribed (`no_receiver`).
pub const SEND_FAILURE_REASONS: [&str; 6] = [
    "unavailable",
    "queue_full",
    "too_large",
    "closed",
    "lost",
    "no_receiver",
];
/// Drops on receipt (`tandem_cluster_bus_receive_drops_total{reason}`).
pub const RECEIVE_DROP_REASONS: [&str; 3] = ["malformed", "overflow", "duplicate"];

/// The bus's metrics; registered with the other cluster metrics, only with `--redis-url`.
#[derive(Clone)]
pub struct BusMetrics {
    pub sent: IntCounterVec,
    pub received: IntCounterVec,
    pub send_failures: IntCounterVec,
    pub receive_drops: IntCounterVec,
    pub gaps: IntCounter,
    pub latency: Histogram,
    pub resubscribes: IntCounter,
}

impl BusMetrics {
    pub fn register(r: &Registry) -> anyhow::Result<BusMetrics> {
        fn vec(r: &Registry, name: &str, help: &str, label: &str) -> anyhow::Result<IntCounterVec> {
            let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
            crate::metrics::record(&v);
            r.register(Box::new(v.clone()))?;
            Ok(v)
        }
        fn one(r: &Registry, name: &str, help: &str) -> anyhow::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            crate::metrics::record(&c);
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_cluster_bus_latency_seconds",
                "From Bus::send on the sending node to receipt here (the sender's clock against this one's)",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
            ]),
        )?;
        crate::metrics::record(&latency);
        r.register(Box::new(latency.clone()))?;
        let m = BusMetrics {
            sent: vec(
                r,
                "tandem_cluster_bus_sent_total",
                "Bus messages published to other nodes, by kind",
                "kind",
            )?,
            received: vec(
                r,
                "tandem_cluster_bus_received_total",
                "Bus messages received from other nodes, by kind",
                "kind",
            )?,
            send_failures: vec(
                r,
                "tandem_cluster_bus_send_failures_total",
                "Bus messages refused or lost on the sending side, by reason (unavailable, queue_full, too_large, closed, lost, no_receiver)",
                "reason",
            )?,
            receive_drops: vec(
                r,
                "tandem_cluster_bus_receive_drops_total",
                "Bus messages dropped on receipt, by reason (malformed, overflow, duplicate)",
                "reason",
            )?,
            gaps: one(
                r,
                "tandem_cluster_bus_gaps_total",
                "Bus messages missing from another node's sequence (lost on the way)",
            )?,
            latency,
            resubscribes: one(
                r,
                "tandem_cluster_bus_resubscribes_total",
                "Times the bus subscribed again after losing Redis",
            )?,
        };
        for k in BusKind::ALL {
            m.sent.with_label_values(&[k.label()]);
            m.received.with_label_values(&[k.label()]);
        }
        for reason in SEND_FAILURE_REASONS {
            m.send_failures.with_label_values(&[reason]);
        }
        for reason in RECEIVE_DROP_REASONS {
            m.receive_drops.with_label_values(&[reason]);
        }
        Ok(m)
    }
}

/// Encodes one envelope.
pub fn encode(from: NodeId, kind: BusKind, seq: u64, sent_us: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&from.0);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_us.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An envelope read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub kind: BusKind,
    pub seq: u64,
    pub sent_us: u64,
    pub payload: Bytes,
}

/// Decodes one envelope (the payload shares `frame`'s memory); `None` if it is not one.
pub fn decode(frame: Bytes) -> Option<Envelope> {
    if frame.len() < HEADER_LEN || frame[0] != VERSION {
        return None;
    }
    let kind = BusKind::from_code(frame[1])?;
    let from = NodeId(frame[2..18].try_into().ok()?);
    let seq = u64::from_be_bytes(frame[18..26].try_into().ok()?);
    let sent_us = u64::from_be_bytes(frame[26..34].try_into().ok()?);
    Some(Envelope {
        from,
        kind,
        seq,
        sent_us,
        payload: frame.slice(HEADER_LEN..),
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Conn {
    async fn subscribe(&self, channel: &str) -> Result<(), RedisError> {
        match self.clone() {
            Conn::Single(mut c) => c.subscribe(channel).await,
            Conn::Cluster(mut c) => c.ssubscribe(channel).await,
        }
    }

    async fn ping(&self) -> Result<(), RedisError> {
        let cmd = redis::cmd("PING");
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async::<()>(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async::<()>(&mut c).await,
        }
    }

    /// Publishes `frames` (destination, envelope) in order per destination; returns how many
    /// subscribers each reached.
    async fn publish(&self, frames: &[(NodeId, Vec<u8>)]) -> Result<Vec<i64>, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => {
                let mut pipe = redis::pipe();
                for (to, frame) in frames {
                    pipe.cmd("PUBLISH").arg(to.channel()).arg(frame.as_slice());
                }
                pipe.query_async::<Vec<i64>>(&mut c).await
            }
            Conn::Cluster(c) => {
                // One pipeline per destination (one slot each), all at once.
                let mut by_dest: Vec<(NodeId, redis::Pipeline, Vec<usize>)> = Vec::new();
                for (i, (to, frame)) in frames.iter().enumerate() {
                    let at = match by_dest.iter().position(|(d, _, _)| d == to) {
                        Some(at) => at,
                        None => {
                            by_dest.push((*to, redis::pipe(), Vec::new()));
                            by_dest.len() - 1
                        }
                    };
                    let (_, pipe, idx) = &mut by_dest[at];
                    pipe.cmd("SPUBLISH").arg(to.channel()).arg(frame.as_slice());
                    idx.push(i);
                }
                let results = futures_util::future::join_all(by_dest.iter().map(|(_, pipe, _)| {
                    let mut c = c.clone();
                    async move { pipe.query_async::<Vec<i64>>(&mut c).await }
                }))
                .await;
                let mut out = vec![0i64; frames.len()];
                for ((_, _, idx), result) in by_dest.iter().zip(results) {
                    for (i, n) in idx.iter().zip(result?) {
                        out[*i] = n;
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Whether the bus can reach Redis, shared by the sender, the checker and the push handler.
struct Link {
    up: AtomicBool,
    me: NodeId,
}

impl Link {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks Redis lost; logs the transition only.
    fn lost(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(node_id = %self.me, reason = why, "the bus lost Redis; messages to other nodes are refused until it returns");
        }
    }
}

/// Receiving side: turns pushes into [`Incoming`] messages.
struct Receiver {
    tx: mpsc::Sender<Incoming>,
    /// Last sequence number seen per sender.
    last: Mutex<HashMap<NodeId, u64>>,
    metrics: BusMetrics,
    link: Arc<Link>,
}

impl Receiver {
    fn push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {}
            PushKind::Disconnection => {
                self.link.lost("dropped");
                return;
            }
            _ => return,
        }
        let mut data = info.data;
        let frame = match data.pop() {
            Some(Value::BulkString(bytes)) => Bytes::from(bytes),
            _ => {
                self.drop_one("malformed");
                return;
            }
        };
        let Some(env) = decode(frame) else {
            self.drop_one("malformed");
            return;
        };
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match last.get(&env.from).copied() {
                Some(prev) if env.seq <= prev && env.seq != 1 => {
                    drop(last);
                    self.drop_one("duplicate");
                    return;
                }
                Some(prev) if env.seq > prev + 1 => self.metrics.gaps.inc_by(env.seq - prev - 1),
                None if env.seq > 1 => {
                    // A sender seen for the first time since this node started (or forgotten):
                    // what came before is not this node's loss to count.
                }
                _ => {}
            }
            if last.len() >= MAX_PEERS && !last.contains_key(&env.from) {
                if let Some(k) = last.keys().next().copied() {
                    last.remove(&k);
                }
            }
            last.insert(env.from, env.seq);
        }
        let latency_us = now_us().saturating_sub(env.sent_us);
        self.metrics.latency.observe(latency_us as f64 / 1e6);
        self.metrics
            .received
            .with_label_values(&[env.kind.label()])
            .inc();
        let msg = Incoming {
            from: env.from,
            kind: env.kind,
            payload: env.payload,
        };
        if self.tx.try_send(msg).is_err() {
            self.drop_one("overflow");
        }
    }

    fn drop_one(&self, reason: &str) {
        self.metrics
            .receive_drops
            .with_label_values(&[reason])
            .inc();
    }
}

struct Outgoing {
    to: NodeId,
    kind: BusKind,
    payload: Bytes,
    sent_us: u64,
}

/// This node's end of the bus. Cheap to clone; the bus stops when every clone is dropped.
#[derive(Clone)]
pub struct Bus {
    tx: mpsc::Sender<Outgoing>,
    link: Arc<Link>,
    metrics: BusMetrics,
}

impl Bus {
    /// Connects to Redis (a connection of the bus's own), subscribes to `me`'s channel and
    /// starts the sending and checking tasks. Returns the bus and its incoming messages.
    pub async fn connect(
        target: &RedisTarget,
        me: NodeId,
        settings: BusSettings,
        metrics: BusMetrics,
    ) -> anyhow::Result<(Bus, mpsc::Receiver<Incoming>)> {
        let (in_tx, in_rx) = mpsc::channel(settings.incoming.max(1));
        let link = Arc::new(Link {
            up: AtomicBool::new(true),
            me,
        });
        let receiver = Arc::new(Receiver {
            tx: in_tx,
            last: Mutex::new(HashMap::new()),
            metrics: metrics.clone(),
            link: link.clone(),
        });
        let push = {
            let receiver = receiver.clone();
            move |info: PushInfo| -> Result<(), ()> {
                receiver.push(info);
                Ok(())
            }
        };
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            super::conn::connect_resp3(target, push),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("the bus cannot reach Redis at {target}: no connection within 5 s")
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "the bus cannot reach Redis at {target}: {e} ({})",
                error_kind(&e)
            )
        })?;
        let channel = me.channel();
        tokio::time::timeout(COMMAND_TIMEOUT, conn.subscribe(&channel))
            .await
            .map_err(|_| anyhow::anyhow!("the bus cannot subscribe to {channel}: no answer"))?
            .map_err(|e| anyhow::anyhow!("the bus cannot subscribe to {channel}: {e}"))?;
        let (tx, rx) = mpsc::channel(settings.outgoing.max(1));
        tokio::spawn(publish(rx, conn.clone(), link.clone(), metrics.clone(), me));
        tokio::spawn(check(
            conn,
            tx.downgrade(),
            link.clone(),
            metrics.clone(),
            channel,
        ));
        tracing::debug!(node_id = %me, "bus subscribed");
        Ok((Bus { tx, link, metrics }, in_rx))
    }

    /// Queues `payload` for node `to`. Refused at once while Redis is lost, when the queue is
    /// full or the payload too large. `Ok` is not a delivery receipt (see the module's doc).
    pub fn send(&self, to: NodeId, kind: BusKind, payload: Bytes) -> Result<(), BusError> {
        let result = if payload.len() > MAX_PAYLOAD {
            Err(BusError::TooLarge)
        } else if !self.link.is_up() {
            Err(BusError::Unavailable)
        } else {
            let msg = Outgoing {
                to,
                kind,
                payload,
                sent_us: now_us(),
            };
            self.tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BusError::Full,
                mpsc::error::TrySendError::Closed(_) => BusError::Closed,
            })
        };
        if let Err(e) = result {
            self.metrics
                .send_failures
                .with_label_values(&[e.label()])
                .inc();
        }
        result
    }

    /// Whether Redis answered the bus's last check (and the last publish went through).
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

/// Takes messages off the queue in order and publishes them in batches.
async fn publish(
    mut rx: mpsc::Receiver<Outgoing>,
    conn: Conn,
    link: Arc<Link>,
    metrics: BusMetrics,
    me: NodeId,
) {
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let mut frames: Vec<(NodeId, Vec<u8>)> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        frames.clear();
        for msg in &batch {
            // Every accepted message takes a number, published or not: a loss is a gap.
            if seqs.len() >= MAX_PEERS && !seqs.contains_key(&msg.to) {
                if let Some(k) = seqs.keys().next().copied() {
                    seqs.remove(&k);
                }
            }
            let seq = seqs.entry(msg.to).or_insert(0);
            *seq += 1;
            frames.push((
                msg.to,
                encode(me, msg.kind, *seq, msg.sent_us, &msg.payload),
            ));
        }
        let outcome = if link.is_up() {
            match tokio::time::timeout(COMMAND_TIMEOUT, conn.publish(&frames)).await {
                Ok(Ok(reached)) => Ok(reached),
                Ok(Err(e)) => Err(error_kind(&e)),
                Err(_) => Err("timeout"),
            }
        } else {
            Err("unavailable")
        };
        match outcome {
            Ok(reached) => {
                for (msg, n) in batch.iter().zip(reached) {
                    if n > 0 {
                        metrics.sent.with_label_values(&[msg.kind.label()]).inc();
                    } else {
                        metrics
                            .send_failures
                            .with_label_values(&["no_receiver"])
                            .inc();
                    }
                }
            }
            Err(why) => {
                link.lost(why);
                metrics
                    .send_failures
                    .with_label_values(&["lost"])
                    .inc_by(batch.len() as u64);
                tracing::debug!(
                    lost = batch.len(),
                    reason = why,
                    "bus messages not published"
                );
            }
        }
        batch.clear();
    }
}

/// Checks the connection every second (sooner while lost): a lost connection is noticed even
/// when nothing is sent, reconnected, and the channel subscribed to again.
async fn check(
    conn: Conn,
    alive: mpsc::WeakSender<Outgoing>,
    link: Arc<Link>,
    metrics: BusMetrics,
    channel: String,
) {
    let mut delay = CHECK_INTERVAL;
    loop {
        tokio::time::sleep(delay).await;
        if alive.upgrade().is_none() {
            return;
        }
        let result = async {
            tokio::time::timeout(COMMAND_TIMEOUT, conn.ping())
                .await
                .map_err(|_| "timeout")?
                .map_err(|e| error_kind(&e))?;
            if !link.is_up() {
                // The client resubscribes by itself after reconnecting; subscribing again is
                // harmless and makes sure of it before sends are accepted again.
                tokio::time::timeout(COMMAND_TIMEOUT, conn.subscribe(&channel))
                    .await
                    .map_err(|_| "timeout")?
                    .map_err(|e| error_kind(&e))?;
            }
            Ok::<(), &'static str>(())
        }
        .await;
        match result {
            Ok(()) => {
                delay = CHECK_INTERVAL;
                if !link.up.swap(true, Ordering::Relaxed) {
                    metrics.resubscribes.inc();
                    tracing::info!(node_id = %link.me, "the bus reached Redis again and subscribed again");
                }
            }
            Err(why) => {
                link.lost(why);
                delay = if delay >= CHECK_INTERVAL {
                    RETRY_MIN
                } else {
                    (delay * 2).min(CHECK_INTERVAL)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let from = NodeId([7; 16]);
        for kind in BusKind::ALL {
            let frame = encode(from, kind, 42, 1_700_000_000_000_000, b"hello");
            assert_eq!(frame.len(), HEADER_LEN + 5);
            let env = decode(Bytes::from(frame)).unwrap();
            assert_eq!(env.from, from);
            assert_eq!(env.kind, kind);
            assert_eq!(env.seq, 42);
            assert_eq!(env.sent_us, 1_700_000_000_000_000);
            assert_eq!(&env.payload[..], b"hello");
        }
    }

    #[test]
    fn garbage_is_not_an_envelope() {
        assert!(decode(Bytes::from_static(b"")).is_none());
        assert!(decode(Bytes::from(vec![1u8; HEADER_LEN - 1])).is_none());
        let mut frame = encode(NodeId([1; 16]), BusKind::Chat, 1, 1, b"");
        frame[0] = 9;
        assert!(decode(Bytes::from(frame.clone())).is_none());
        frame[0] = VERSION;
        frame[1] = 200;
        assert!(decode(Bytes::from(frame)).is_none());
    }

    #[test]
    fn node_ids_read_back_from_hex() {
        let id = NodeId::random();
        assert_eq!(NodeId::from_hex(&id.to_string()), Some(id));
        assert_eq!(NodeId::from_hex("zz"), None);
        assert_eq!(NodeId::from_hex(&"g".repeat(32)), None);
        assert!(id.channel().starts_with(CHANNEL_PREFIX));
    }
}
