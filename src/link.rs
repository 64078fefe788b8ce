//! The hub's link to the cluster (only with `--redis-url`): what the clustered signaling core
//! asks of other nodes and of Redis, carried out without ever blocking the hub.
//!
//! - [`Link::send`]: a [`ClusterMsg`] for another node's core, over the bus (refused at once
//!   when the bus cannot take it: the hub tells the core, which refuses the client's event with
//!   `service_unavailable` instead of losing it).
//! - [`Link::request`]: a matchmaker request or a session-mirror write, queued for the Redis
//!   worker ([`worker`]), one task that runs them in order (a guest's enqueue before its
//!   cancel) and hands the pairs it forms to the core of the seeker's node: this node's hub, or
//!   another node over the bus.
//! - [`decode`]: a bus message for this node's core.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tandem_signaling::cluster::{ClusterMsg, MatchAnswer, MatchRequest};
use tandem_signaling::{NodeId as CoreNodeId, SessionId, SignalError};
use tokio::sync::mpsc;

use crate::cluster::{
    bus_node, core_node, Bus, BusError, BusKind, Cluster, Incoming, MatchError, Matchmaker,
    PairBlock, Paired,
};
use crate::hub::{Command, Hub};

/// Redis jobs waiting for the worker, at most; past it an enqueue is refused to its guest.
const JOBS: usize = 8192;

/// Journal changes waiting for the journal writer, at most; past it a change is not written
/// (the message lives in this node's memory only, as on a single node).
const JOURNAL_QUEUE: usize = 16_384;

/// Journal changes written in one pipeline at most.
const JOURNAL_BATCH: usize = 512;

/// When Redis cannot say whether an expiring session was refreshed elsewhere: it lives on
/// this much longer, and is asked about again then.
pub const RETRY_LATER: Duration = Duration::from_secs(30);

/// What the Redis worker does, in order.
pub enum Job {
    Match(MatchRequest),
    /// Several, in order (what a core writes again after Redis lost its data).
    Batch(Vec<MatchRequest>),
    /// A node left the cluster: its queue entries go.
    DropNode(CoreNodeId),
}

/// One change to a chat's journal (`Output::Journal`), for the journal writer.
pub struct JournalJob {
    pub room: tandem_signaling::RoomId,
    pub op: tandem_signaling::JournalOp,
    /// Answered with [`Command::Journaled`] once written (or failed).
    pub ticket: Option<u64>,
}

/// The hub's end of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    me: CoreNodeId,
    bus: Bus,
    jobs: mpsc::Sender<Job>,
    journal: mpsc::Sender<JournalJob>,
    cluster: Cluster,
    /// This node's share of the live statistics, published in its registry entry.
    stats: std::sync::Arc<std::sync::Mutex<tandem_signaling::wire::Stats>>,
}

/// Why [`Link::request`] could not queue a job.
pub struct Busy;

impl Link {
    /// The link and the receiving ends of its job queue (for [`worker`]) and of its journal
    /// queue (for [`journal_writer`]).
    pub fn new(
        cluster: &Cluster,
        bus: Bus,
    ) -> (Link, mpsc::Receiver<Job>, mpsc::Receiver<JournalJob>) {
        let (jobs, rx) = mpsc::channel(JOBS);
        let (journal, journal_rx) = mpsc::channel(JOURNAL_QUEUE);
        let link = Link {
            me: cluster.core_id(),
            bus,
            jobs,
            journal,
            cluster: cluster.clone(),
            stats: Default::default(),
        };
        (link, rx, journal_rx)
    }

    /// This node's id, as the core names nodes.
    pub fn node(&self) -> CoreNodeId {
        self.me
    }

    /// Sends `msg` to node `to`'s core; `Err` when the bus refused it (Redis lost, the queue
    /// full, too large).
    pub fn send(&self, to: CoreNodeId, msg: &ClusterMsg) -> Result<(), BusError> {
        self.bus
            .send(bus_node(to), kind(msg), Bytes::from(msg.encode()))
    }

    /// This node's share of the live statistics (set by the hub, read by the heartbeat).
    pub fn stats(&self) -> std::sync::Arc<std::sync::Mutex<tandem_signaling::wire::Stats>> {
        self.stats.clone()
    }

    /// The registry's views, one per heartbeat.
    pub fn views(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<[crate::cluster::Node]>> {
        self.cluster.watch_nodes()
    }

    /// How many times Redis lost the cluster's data (see [`Cluster::losses`]).
    pub fn losses(&self) -> u64 {
        self.cluster.losses()
    }

    /// Records again, in the background, that these files (with their time left) are stored
    /// on this node (after Redis lost its data).
    pub fn restore_files(&self, files: Vec<(tandem_signaling::FileId, Duration)>) {
        if files.is_empty() {
            return;
        }
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            for (id, left) in files {
                if let Err(f) = cluster.file_stored(id, left).await {
                    tracing::warn!(error = %f, "where a file is stored could not be recorded again: only this node serves it");
                    return;
                }
            }
        });
    }

    /// Queues a job for the Redis worker without waiting.
    pub fn request(&self, job: Job) -> Result<(), Busy> {
        self.jobs.try_send(job).map_err(|_| Busy)
    }

    /// Publishes this node's open sessions per client address (see
    /// [`Cluster::publish_sessions`]) in the background.
    pub fn publish_sessions(
        &self,
        counts: Vec<(tandem_signaling::ClientKey, usize)>,
    ) -> tokio::task::JoinHandle<()> {
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            if let Err(f) = cluster.publish_sessions(&counts).await {
                tracing::warn!(error = %f, addresses = counts.len(), "open sessions per address could not be published: other nodes count this node's as they were");
            }
        })
    }

    /// Queues a journal change for the journal writer without waiting.
    pub fn journal(&self, job: JournalJob) -> Result<(), Busy> {
        self.journal.try_send(job).map_err(|_| Busy)
    }
}

/// The bus metric label of a message.
fn kind(msg: &ClusterMsg) -> BusKind {
    let by_name = |name: &str| {
        if name.starts_with("chat:message:") {
            BusKind::Receipt
        } else if name.starts_with("chat:") {
            BusKind::Chat
        } else if name.starts_with("typing:") || name.starts_with("partner:") {
            BusKind::Presence
        } else if name.starts_with("call:") {
            BusKind::Call
        } else if name.starts_with("webrtc:") {
            BusKind::Webrtc
        } else if name.starts_with("match:") {
            BusKind::Match
        } else {
            BusKind::Control
        }
    };
    match msg {
        ClusterMsg::Event { name, .. } | ClusterMsg::Emit { name, .. } => by_name(name),
        ClusterMsg::Delivered { .. } => BusKind::Receipt,
        ClusterMsg::PostFile { .. } | ClusterMsg::Restore { .. } => BusKind::Chat,
        ClusterMsg::RoomClosed { .. } => BusKind::Control,
        ClusterMsg::Attach { .. } | ClusterMsg::Detach { .. } => BusKind::Presence,
        ClusterMsg::Paired { .. }
        | ClusterMsg::Released { .. }
        | ClusterMsg::Matched { .. }
        | ClusterMsg::Requeue { .. }
        | ClusterMsg::Declined { .. } => BusKind::Match,
        ClusterMsg::CallState { .. } => BusKind::Call,
        ClusterMsg::Ack { .. } | ClusterMsg::Shutdown => BusKind::Control,
    }
}

/// A bus message for this node's core: its sender and the message, or `None` (counted and
/// dropped) when it does not decode.
pub fn decode(incoming: Incoming) -> Option<(CoreNodeId, ClusterMsg)> {
    match ClusterMsg::decode(&incoming.payload) {
        Ok(msg) => Some((core_node(incoming.from), msg)),
        Err(_) => {
            tracing::warn!(from = %incoming.from, "a bus message that does not decode: dropped");
            None
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The journal writer: writes each batch of journal entries that queued up meanwhile in one
/// pipeline, then tells the hub which held acknowledgements may go out (written or not: a failed
/// write leaves the message in this node's memory only). Removals (a message acknowledged, a
/// chat ended) hold no acknowledgement: they are gathered and written within
/// [`JOURNAL_LAZY`], so that most cost no round trip of their own (see [`JournalPlan`]).
pub async fn journal_writer(mut rx: mpsc::Receiver<JournalJob>, cluster: Cluster, hub: Hub) {
    let mut batch = Vec::with_capacity(JOURNAL_BATCH);
    let mut plan = JournalPlan::default();
    loop {
        let due = plan.due_at();
        let mut open = tokio::select! {
            n = rx.recv_many(&mut batch, JOURNAL_BATCH) => n > 0,
            () = sleep_until_opt(due) => true,
        };
        if open && batch.iter().any(|j| j.ticket.is_some()) && batch.len() < JOURNAL_BATCH {
            // Group commit: what comes within a moment shares this round trip (an ack waits
            // that much longer; Redis and both tasks wake once for all of them).
            tokio::time::sleep(JOURNAL_GATHER).await;
            while batch.len() < JOURNAL_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let now = std::time::Instant::now();
        let tickets: Vec<u64> = batch.iter().filter_map(|j| j.ticket).collect();
        let mut writes = plan.take(&mut batch, now);
        if !open || plan.due_at().is_some_and(|t| t <= now) || plan.pending_len() >= JOURNAL_BATCH {
            writes.extend(plan.flush());
        }
        if !writes.is_empty() {
            let written = cluster
                .journal(writes.iter().map(|(room, op, ttl)| (*room, op, *ttl)))
                .await;
            if let Err(f) = written {
                tracing::warn!(error = %f, changes = writes.len(), "chat journal changes could not be written: those messages live in this node's memory only");
            }
        }
        if !tickets.is_empty() {
            hub.send(Command::Journaled(tickets)).await;
        }
        if !open {
            return;
        }
    }
}

async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// How long the journal writer gathers entries before writing them together (an entry's ack
/// waits that much longer: about a millisecond, the timer's resolution).
const JOURNAL_GATHER: Duration = Duration::from_micros(500);

/// Removals are written at the latest this long after they were asked for.
const JOURNAL_LAZY: Duration = Duration::from_millis(100);

/// A journal key's expiry is set again when it was last set longer ago than this (it is 24 h).
const JOURNAL_TTL_EVERY: Duration = Duration::from_secs(3600);

/// Rooms whose journal expiry the writer remembers setting, at most (past it, it forgets them
/// all and sets each again at its next entry).
const JOURNAL_TTL_ROOMS: usize = 65_536;

/// What the journal writer writes when: entries at once (an acknowledgement waits for each),
/// removals within [`JOURNAL_LAZY`] (none waits for them), and nothing at all of an entry
/// removed before it was written. A removal still pending when the node dies is not made: the
/// room's next home then hands that message out once more, with its id (at least once).
#[derive(Default)]
struct JournalPlan {
    /// Removals not written yet, in order.
    pending: Vec<(tandem_signaling::RoomId, tandem_signaling::JournalOp)>,
    /// When the oldest of them was asked for.
    since: Option<std::time::Instant>,
    /// When each room's journal expiry was last set.
    ttl_set: std::collections::HashMap<tandem_signaling::RoomId, std::time::Instant>,
}

/// A journal change to write: the room, the change, and whether to set the key's expiry.
type JournalWrite = (tandem_signaling::RoomId, tandem_signaling::JournalOp, bool);

impl JournalPlan {
    /// Takes a batch: the entries to write now; its removals join the pending ones, except
    /// those of entries in the same batch, which are never written at all.
    /// (`batch` is left empty, its room kept for the next one.)
    fn take(&mut self, batch: &mut Vec<JournalJob>, now: std::time::Instant) -> Vec<JournalWrite> {
        use std::collections::HashSet;
        use tandem_signaling::JournalOp;
        let removed: HashSet<_> = batch
            .iter()
            .filter_map(|j| match &j.op {
                JournalOp::Drop(id) => Some((j.room, Some(*id))),
                JournalOp::Clear => Some((j.room, None)),
                JournalOp::Keep(_) => None,
            })
            .collect();
        let mut unwritten = HashSet::new();
        let mut writes = Vec::new();
        for job in batch.drain(..) {
            match job.op {
                JournalOp::Keep(k) => {
                    let id = k.message.id;
                    if removed.contains(&(job.room, Some(id)))
                        || removed.contains(&(job.room, None))
                    {
                        unwritten.insert((job.room, id));
                        continue;
                    }
                    if self.ttl_set.len() >= JOURNAL_TTL_ROOMS {
                        self.ttl_set.clear();
                    }
                    let set = self
                        .ttl_set
                        .get(&job.room)
                        .is_none_or(|t| now.duration_since(*t) >= JOURNAL_TTL_EVERY);
                    if set {
                        self.ttl_set.insert(job.room, now);
                    }
                    writes.push((job.room, JournalOp::Keep(k), set));
                }
                JournalOp::Drop(id) => {
                    if !unwritten.remove(&(job.room, id)) {
                        self.defer(job.room, JournalOp::Drop(id), now);
                    }
                }
                JournalOp::Clear => {
                    self.ttl_set.remove(&job.room);
                    self.pending.retain(|(room, _)| *room != job.room);
                    self.defer(job.room, JournalOp::Clear, now);
                }
            }
        }
        writes
    }

    fn defer(
        &mut self,
        room: tandem_signaling::RoomId,
        op: tandem_signaling::JournalOp,
        now: std::time::Instant,
    ) {
        self.since.get_or_insert(now);
        self.pending.push((room, op));
    }

    /// When the pending removals must be written.
    fn due_at(&self) -> Option<std::time::Instant> {
        self.since.map(|t| t + JOURNAL_LAZY)
    }

    fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The pending removals, to write now.
    fn flush(&mut self) -> Vec<JournalWrite> {
        self.since = None;
        self.pending
            .drain(..)
            .map(|(room, op)| (room, op, false))
            .collect()
    }
}

/// The Redis worker: runs the hub's jobs one after another until the hub is gone.
pub async fn worker(
    mut jobs: mpsc::Receiver<Job>,
    link: Link,
    cluster: Cluster,
    mm: Matchmaker,
    hub: Hub,
) {
    let w = Worker {
        link,
        cluster,
        mm,
        hub,
    };
    while let Some(job) = jobs.recv().await {
        w.run(job).await;
    }
}

struct Worker {
    link: Link,
    cluster: Cluster,
    mm: Matchmaker,
    hub: Hub,
}

impl Worker {
    async fn run(&self, job: Job) {
        match job {
            Job::Match(req) => self.run_match(req).await,
            Job::Batch(reqs) => {
                for req in reqs {
                    self.run_match(req).await;
                }
            }
            Job::DropNode(node) => {
                let result = match self.mm.drop_node(bus_node(node)).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(node_id = %node, entries = n, "dropped a departed node's queue entries");
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a cluster request failed");
                }
            }
        }
    }

    async fn run_match(&self, req: MatchRequest) {
        let me = crate::cluster::bus_node(self.link.me);
        let result = match req {
            MatchRequest::Enqueue {
                sid,
                username,
                interests,
                present,
            } => {
                let id = sid.to_string();
                match self
                    .mm
                    .enqueue(&id, &username, &interests, me, present, unix_ms())
                    .await
                {
                    Ok(pair) => {
                        self.pairs(pair).await;
                        Ok(())
                    }
                    // Queued already (a request repeated after Redis came back).
                    Err(MatchError::AlreadySearching) => Ok(()),
                    Err(e) => {
                        let error = match e {
                            MatchError::QueueFull => SignalError::ServerBusy,
                            _ => SignalError::ServiceUnavailable,
                        };
                        let answer = MatchAnswer::Refused { sid, error };
                        self.hub.send(Command::Match(answer)).await;
                        Err(e)
                    }
                }
            }
            MatchRequest::Cancel { sid } => self.mm.cancel(&sid.to_string()).await.map(|_| ()),
            MatchRequest::Away { sid, away } => {
                match self.mm.set_away(&sid.to_string(), away).await {
                    Ok(pair) => {
                        self.pairs(pair).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            MatchRequest::RecordEnd { a, b, blocked, ttl } => {
                let block = if blocked {
                    PairBlock::Blocked(ttl)
                } else {
                    PairBlock::Cooldown(ttl)
                };
                self.mm
                    .record_end(&a.to_string(), &b.to_string(), block)
                    .await
            }
            MatchRequest::CooldownOver { a, b } => {
                match self.mm.cooldown_over(&a.to_string(), &b.to_string()).await {
                    Ok(pairs) => {
                        self.pairs(pairs).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            MatchRequest::Home {
                sid, room, partner, ..
            } => self
                .cluster
                .session_home(sid, room, partner)
                .await
                .map_err(MatchError::Redis),
            MatchRequest::Claim { room } => {
                let (winner, result) = match self.cluster.claim_room(room).await {
                    Ok(node) => (Some(node), Ok(())),
                    Err(f) => (None, Err(MatchError::Redis(f))),
                };
                // The winner hands out again what the dead home kept for the guests.
                let mut kept = Vec::new();
                if winner == Some(self.link.me) {
                    match self.cluster.journal_read(room).await {
                        Ok(k) => kept = k,
                        Err(f) => {
                            tracing::warn!(error = %f, %room, "the journal of a room taken over could not be read: what its home kept is lost")
                        }
                    }
                }
                self.hub.send(Command::Claim { room, winner, kept }).await;
                result
            }
            MatchRequest::CallRecord { sid, call } => self
                .cluster
                .session_call(sid, call)
                .await
                .map_err(MatchError::Redis),
            MatchRequest::Reap { sid } => self
                .cluster
                .session_reap(sid)
                .await
                .map_err(MatchError::Redis),
            MatchRequest::Restore {
                sid,
                expires_ms,
                connected,
                chat,
                call,
            } => self
                .cluster
                .session_restore(sid, expires_ms, connected, chat, call)
                .await
                .map_err(MatchError::Redis),
            MatchRequest::Expiring { sid } => {
                let (lives, result) = match self.cluster.session_peek(sid).await {
                    Ok(record) => (record.map(|r| r.lives), Ok(())),
                    Err(f) => (Some(RETRY_LATER), Err(MatchError::Redis(f))),
                };
                let session = sid;
                self.hub.send(Command::SessionTtl { session, lives }).await;
                result
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "a cluster request failed");
        }
    }

    /// Hands each pair to the core of a node that holds one of the two guests: this node's
    /// when it does, else the seeker's over the bus.
    async fn pairs(&self, pairs: impl IntoIterator<Item = Paired>) {
        for p in pairs {
            let (Some(seeker), Some(partner)) = (
                SessionId::parse(&p.seeker),
                SessionId::parse(&p.partner_sid),
            ) else {
                tracing::warn!("the match queue paired a guest id this node cannot read");
                continue;
            };
            let (seeker_node, partner_node) = (core_node(p.seeker_node), core_node(p.partner_node));
            let answer = if seeker_node == self.link.me {
                MatchAnswer::Paired {
                    seeker,
                    partner,
                    partner_name: p.partner_name,
                    partner_node,
                }
            } else if partner_node == self.link.me {
                MatchAnswer::Paired {
                    seeker: partner,
                    partner: seeker,
                    partner_name: p.seeker_name,
                    partner_node: seeker_node,
                }
            } else {
                let msg = ClusterMsg::Matched {
                    seeker,
                    partner,
                    partner_name: p.partner_name,
                    partner_node,
                };
                if self.link.send(seeker_node, &msg).is_err() {
                    tracing::warn!(
                        node_id = %seeker_node,
                        "a pair for another node could not be sent; both guests stay searching there"
                    );
                }
                continue;
            };
            self.hub.send(Command::Match(answer)).await;
        }
    }
}

/// Drops the queue entries of every node that leaves the registry (killed, or drained), so
/// that nobody is paired with a guest whose node is gone (the hub tells its core about the
/// nodes it has chats with, see `Peers`), and reads the cluster's queue length for its gauge
/// (`tandem_cluster_match_queue`), once per registry view.
pub async fn watch_departures(cluster: Cluster, link: Link, mm: Matchmaker) {
    let mut view = cluster.watch_nodes();
    let mut known: std::collections::HashSet<String> =
        view.borrow().iter().map(|n| n.id.clone()).collect();
    while view.changed().await.is_ok() {
        let now: std::collections::HashSet<String> = view
            .borrow_and_update()
            .iter()
            .map(|n| n.id.clone())
            .collect();
        for gone in known.difference(&now) {
            if let Some(node) = CoreNodeId::parse(gone) {
                if link.request(Job::DropNode(node)).is_err() {
                    tracing::warn!(node_id = %node, "the cluster's request queue is full: a departed node's queue entries stay until paired with");
                }
            }
        }
        known = now;
        // Sets the gauge; a failure is counted with the Redis errors.
        let _ = mm.queued().await;
    }
}

/// The nodes this node's core has exchanged messages with, and how many registry views in a
/// row have missed each. A node is gone once two views (a second apart, each read from Redis
/// after the message) miss it: a node registers before it serves, so a node that just joined is
/// in the next view, and one that joined and left between two views is still caught.
#[derive(Default)]
pub struct Peers {
    misses: std::collections::HashMap<CoreNodeId, u8>,
}

impl Peers {
    /// A message went to or came from `node`.
    pub fn touch(&mut self, node: CoreNodeId) {
        self.misses.entry(node).or_insert(0);
    }

    /// A new registry view: the peers it misses for the second time in a row, now forgotten.
    pub fn view(&mut self, live: &[crate::cluster::Node]) -> Vec<CoreNodeId> {
        let mut gone = Vec::new();
        self.misses.retain(|node, misses| {
            let id = node.to_string();
            if live.iter().any(|n| n.id == id) {
                *misses = 0;
                true
            } else {
                *misses += 1;
                if *misses >= 2 {
                    gone.push(*node);
                    false
                } else {
                    true
                }
            }
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_signaling::cluster::Kept;
    use tandem_signaling::wire::{ChatMessage, Content, MessageType, Sender};
    use tandem_signaling::{JournalOp, MessageId, RoomId};

    fn keep(room: u128, id: u64) -> JournalJob {
        let message = ChatMessage {
            id: MessageId::from_raw(id),
            room_id: RoomId::from_raw(room),
            kind: MessageType::Text,
            content: Content::Text("x".into()),
            timestamp: 1,
            from: Sender::Partner,
        };
        let sender = SessionId::from_raw(1);
        JournalJob {
            room: RoomId::from_raw(room),
            op: JournalOp::Keep(Kept {
                sender,
                seq: id,
                message,
            }),
            ticket: Some(id),
        }
    }

    fn op(room: u128, op: JournalOp) -> JournalJob {
        JournalJob {
            room: RoomId::from_raw(room),
            op,
            ticket: None,
        }
    }

    #[test]
    fn entries_are_written_at_once_removals_later_and_neither_when_both_meet_in_a_batch() {
        use std::time::Instant;
        let drop = |room, id| op(room, JournalOp::Drop(MessageId::from_raw(id)));
        let t0 = Instant::now();
        let mut plan = JournalPlan::default();
        let shape = |w: &[JournalWrite]| -> Vec<(u128, &'static str, bool)> {
            w.iter()
                .map(|(room, op, ttl)| {
                    let kind = match op {
                        JournalOp::Keep(_) => "keep",
                        JournalOp::Drop(_) => "drop",
                        JournalOp::Clear => "clear",
                    };
                    (room.into_raw(), kind, *ttl)
                })
                .collect()
        };
        let writes = plan.take(
            &mut vec![
                drop(1, 9),  // an entry of an earlier batch: removed later
                keep(1, 10), // acknowledged in this batch: never written
                keep(1, 11), // written now, with the key's expiry (first of its room)
                drop(1, 10), // never written either
                keep(2, 20), // its chat ends in this batch: never written
                keep(3, 30), // written now, with the expiry
                keep(3, 31), // written now, the expiry already set
                op(2, JournalOp::Clear),
            ],
            t0,
        );
        assert_eq!(
            shape(&writes),
            [(1, "keep", true), (3, "keep", true), (3, "keep", false)]
        );
        assert_eq!(plan.due_at(), Some(t0 + JOURNAL_LAZY));
        // A later batch: a removal of room 3's entry, and room 1's chat ends (its pending
        // removal is moot).
        let writes = plan.take(&mut vec![drop(3, 30), op(1, JournalOp::Clear)], t0);
        assert!(writes.is_empty());
        assert_eq!(
            shape(&plan.flush()),
            [(2, "clear", false), (3, "drop", false), (1, "clear", false)]
        );
        assert_eq!(plan.due_at(), None);
        // Room 3's expiry is set again an hour later; room 1's at its next entry.
        let later = t0 + JOURNAL_TTL_EVERY;
        let writes = plan.take(&mut vec![keep(3, 32), keep(1, 12)], later);
        assert_eq!(shape(&writes), [(3, "keep", true), (1, "keep", true)]);
    }
}
