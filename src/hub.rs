//! The signaling hub: one task owns the sans-I/O [`Core`] and is fed through one bounded channel,
//! so everything order-sensitive (a guest's messages, a room) has a single owner. It carries out
//! the core's outputs on Socket.IO and turns the core's counters into metrics.
//!
//! State seam: [`Hub`] is what the HTTP and Socket.IO layers talk to. Today it is backed by the
//! in-memory core; a Redis-backed implementation replaces what sits behind the channel. Every
//! guest's sockets join the room [`guest_room`], so a guest is reachable by room on any node;
//! on this node the hub emits straight to the guest's sockets (no room lookup per event).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use rand::RngCore;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::{AckError, SocketIo};
use tandem_signaling::cluster::{MatchAnswer, MatchRequest};
use tandem_signaling::files::FileInfo;
use tandem_signaling::wire::{ChatMessage, ErrorEvent, Refused, Stats};
use tandem_signaling::{
    CallId, ClientEvent, ClientKey, CloseReason, ConnId, Core, CoreConfig, GuestInfo, MediaEvent,
    MessageId, Output, RoomId, ServerEvent, SessionId, SignalError, Target,
};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Incoming;
use crate::files::Files;
use crate::link::{Job, Link, Peers};
use crate::metrics::CoreSizes;
use crate::rtc::MediaPlane;
use crate::turn::TurnAccess;

/// Bound of the hub's inbox; past it new work is refused with `server_busy`.
const INBOX: usize = 65_536;
/// How often the core's table sizes become metrics (at most).
const SIZES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Commands handled per wake-up at most, so timers are never starved.
const BATCH: usize = 256;

/// The Socket.IO room that holds every socket of one guest.
pub fn guest_room(id: SessionId) -> String {
    format!("g:{id}")
}

/// Where the answer to a client event goes.
pub enum Reply {
    /// The event carried an ack callback.
    Ack(AckSender),
    /// No ack: a refusal becomes an `error` event on this socket.
    Socket(SocketRef, String),
}

impl Reply {
    pub fn refuse(self, e: SignalError) {
        match self {
            Reply::Ack(ack) => {
                let _ = ack.send(&Refused::new(e));
            }
            Reply::Socket(s, event) => {
                let body = ErrorEvent {
                    code: e.code(),
                    message: e.to_string(),
                    event: &event,
                };
                let _ = s.emit("error", &body);
            }
        }
    }
}

pub enum Command {
    CreateGuest {
        username: Option<String>,
        /// The client's address, for the per-address session cap.
        client: Option<ClientKey>,
        /// In a cluster: the open sessions of that address on the other nodes.
        elsewhere: usize,
        reply: oneshot::Sender<Result<GuestInfo, SignalError>>,
    },
    Refresh {
        session: SessionId,
        reply: oneshot::Sender<Result<GuestInfo, SignalError>>,
    },
    Admit {
        session: SessionId,
        /// In a cluster: adopt the guest first ([`Adopt`]).
        adopt: Option<Box<Adopt>>,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    /// In a cluster: adopt a guest this node may not hold (before a refresh).
    Adopt {
        session: SessionId,
        adopt: Box<Adopt>,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Connect {
        session: SessionId,
        conn: ConnId,
        socket: SocketRef,
    },
    Disconnect {
        conn: ConnId,
    },
    Event {
        conn: ConnId,
        event: ClientEvent,
        reply: Reply,
        received: Instant,
    },
    /// In a cluster: a client event as received (the core parses it, or forwards it to the
    /// chat's home node).
    RawEvent {
        conn: ConnId,
        name: String,
        payload: Option<serde_json::Value>,
        reply: Reply,
        received: Instant,
    },
    /// In a cluster: the matchmaker paired a guest of this node, or refused to queue it.
    Match(MatchAnswer),
    /// In a cluster: the node drains (it left the registry): the nodes it shares chats with
    /// take them over.
    Drain {
        reply: oneshot::Sender<()>,
    },
    /// In a cluster: the node that holds a room whose home died (`None`: unknown), and (for
    /// this node) the room's journal.
    Claim {
        room: RoomId,
        winner: Option<tandem_signaling::NodeId>,
        kept: Vec<tandem_signaling::cluster::Kept>,
    },
    /// In a cluster: these journal tickets were written (or failed): what they held goes out.
    Journaled(Vec<u64>),
    /// In a cluster: how long a guest's shared record still lives (`None`: gone), the answer
    /// to the core's `MatchRequest::Expiring`.
    SessionTtl {
        session: SessionId,
        lives: Option<std::time::Duration>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// From the media plane.
    Media(MediaEvent),
    /// The media plane is up: send it the core's media commands from now on.
    AttachMedia(MediaPlane),
    /// The TURN server is up: revoke a call's credentials when the call ends.
    AttachTurn(TurnAccess),
    /// The call (ringing or accepted) a live guest is in, and (in a cluster) the node whose
    /// media server terminates it when that is another node.
    CallOf {
        session: SessionId,
        reply: oneshot::Sender<Result<(CallId, Option<tandem_signaling::NodeId>), SignalError>>,
    },
    /// The chat a live guest is in, and its partner.
    ChatOf {
        session: SessionId,
        reply: oneshot::Sender<Result<(RoomId, SessionId), SignalError>>,
    },
    /// Posts a stored file into the chat it was uploaded in.
    PostFile {
        session: SessionId,
        room: RoomId,
        client_id: String,
        file: Box<FileInfo>,
        reply: oneshot::Sender<Result<(MessageId, u64), SignalError>>,
    },
}

/// A request forwarded to a chat's home node, waiting for its answer.
enum Pending {
    /// A client event: its reply, metric label and arrival.
    Event(Reply, Option<&'static str>, Instant),
    /// A shared file's message (`POST /api/files` through a node that is not the home).
    File(oneshot::Sender<Result<(MessageId, u64), SignalError>>),
}

/// What a node that may not hold a guest learned about it (see `Core::adopt`): the name its
/// token carries, and the session mirror's word on its chat (`None`: Redis did not answer).
pub struct Adopt {
    pub username: String,
    pub home: Option<Option<tandem_signaling::cluster::RecordHome>>,
    /// How long the guest's shared record still lives (`None`: unknown).
    pub lives: Option<std::time::Duration>,
    /// The record is missing (made while Redis was lost, or gone): only a guest this node
    /// holds alive is let in.
    pub held_only: bool,
}

/// A cheap handle to the hub.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<Command>,
}

impl Hub {
    /// Queues a command without waiting; `Err` when the hub is saturated or gone.
    pub fn try_send(&self, cmd: Command) -> Result<(), SignalError> {
        self.tx.try_send(cmd).map_err(|_| SignalError::ServerBusy)
    }

    /// Queues a command without waiting; hands it back when the hub is saturated or gone.
    pub fn try_command(&self, cmd: Command) -> Result<(), Command> {
        self.tx.try_send(cmd).map_err(|e| e.into_inner())
    }

    /// Queues a command, waiting for room (for work that must not be lost, like a disconnect).
    pub async fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd).await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SignalError> {
        let (tx, rx) = oneshot::channel();
        self.try_send(make(tx))?;
        rx.await.map_err(|_| SignalError::ServerBusy)
    }

    pub async fn create_guest(
        &self,
        username: Option<String>,
        client: Option<ClientKey>,
        elsewhere: usize,
    ) -> Result<GuestInfo, SignalError> {
        self.ask(|reply| Command::CreateGuest {
            username,
            client,
            elsewhere,
            reply,
        })
        .await?
    }

    pub async fn refresh(&self, session: SessionId) -> Result<GuestInfo, SignalError> {
        self.ask(|reply| Command::Refresh { session, reply })
            .await?
    }

    pub async fn admit(&self, session: SessionId, adopt: Option<Adopt>) -> Result<(), SignalError> {
        let adopt = adopt.map(Box::new);
        self.ask(|reply| Command::Admit {
            session,
            adopt,
            reply,
        })
        .await?
    }

    pub async fn adopt(&self, session: SessionId, adopt: Adopt) -> Result<(), SignalError> {
        let adopt = Box::new(adopt);
        self.ask(|reply| Command::Adopt {
            session,
            adopt,
            reply,
        })
        .await?
    }

    /// The call `session` is in, with its media node when that is another node (the chat's
    /// home in a cluster): `no_call` if none, `unauthorized` if the session is gone.
    pub async fn call_of(
        &self,
        session: SessionId,
    ) -> Result<(CallId, Option<tandem_signaling::NodeId>), SignalError> {
        self.ask(|reply| Command::CallOf { session, reply }).await?
    }

    pub async fn chat_of(&self, session: SessionId) -> Result<(RoomId, SessionId), SignalError> {
        self.ask(|reply| Command::ChatOf { session, reply }).await?
    }

    pub async fn post_file(
        &self,
        session: SessionId,
        room: RoomId,
        client_id: String,
        file: FileInfo,
    ) -> Result<(MessageId, u64), SignalError> {
        let file = Box::new(file);
        self.ask(|reply| Command::PostFile {
            session,
            room,
            client_id,
            file,
            reply,
        })
        .await?
    }

    /// Tells the nodes this one shares chats with that it is draining (they take them over).
    pub async fn begin_drain(&self) {
        let (reply, done) = oneshot::channel();
        self.send(Command::Drain { reply }).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), done).await;
    }

    pub async fn stats(&self) -> Result<Stats, SignalError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

/// Starts the hub task.
pub fn spawn(
    cfg: CoreConfig,
    io: SocketIo,
    metrics: SignalingMetrics,
    sizes: CoreSizes,
    files: Arc<Files>,
    link: Option<(Link, mpsc::Receiver<Incoming>)>,
) -> (Hub, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut cfg = cfg;
    let (link, incoming, views) = match link {
        Some((link, incoming)) => {
            cfg.node = Some(link.node());
            let views = link.views();
            (Some(link), Some(incoming), Some(views))
        }
        None => (None, None, None),
    };
    let core = Core::new(cfg, seed, Instant::now(), unix_ms);
    let hub = Hub { tx };
    let task = HubTask {
        core,
        io,
        metrics,
        sockets: HashMap::new(),
        guests: HashMap::new(),
        acks: Default::default(),
        last: Default::default(),
        media: None,
        turn: None,
        last_calls: Default::default(),
        calls_dirty: false,
        files,
        sizes,
        last_sizes: Default::default(),
        next_sizes: Instant::now(),
        link,
        pending: HashMap::new(),
        next_req: 0,
        peers: Peers::default(),
        losses: 0,
        restoring: None,
        sessions: SessionCounts::default(),
    };
    (hub, tokio::spawn(task.run(rx, incoming, views)))
}

struct HubTask {
    core: Core,
    io: SocketIo,
    metrics: SignalingMetrics,
    /// This node's sockets by connection id, for per-socket emits and closes.
    sockets: HashMap<ConnId, (SessionId, SocketRef)>,
    /// This node's connections by guest.
    guests: HashMap<SessionId, Vec<ConnId>>,
    /// Partner messages waiting for their first ack.
    acks: futures_util::stream::FuturesUnordered<AckWait>,
    last: tandem_signaling::Counters,
    media: Option<MediaPlane>,
    turn: Option<TurnAccess>,
    last_calls: tandem_signaling::CallStates,
    /// Something that can change a call's state happened since the gauge was last set.
    calls_dirty: bool,
    /// Shared files, deleted with their chat.
    files: Arc<Files>,
    /// The core's table sizes, exported about once a second.
    sizes: CoreSizes,
    last_sizes: [(&'static str, usize); 9],
    next_sizes: Instant,
    /// In a cluster: the bus and the Redis worker.
    link: Option<Link>,
    /// In a cluster: client events forwarded to their chat's home, by request id, until the
    /// core's `Output::Ack` (it always comes: the ack, or `service_unavailable` at the latest
    /// after the core's bus timeout).
    pending: HashMap<u64, Pending>,
    next_req: u64,
    /// In a cluster: the nodes the core deals with, to notice when one is gone.
    peers: Peers,
    /// In a cluster: how many times Redis lost its data, as far as this node wrote its own
    /// again ([`Cluster::losses`](crate::cluster::Cluster::losses)).
    losses: u64,
    /// While the core writes its records again: its requests, sent as one job.
    restoring: Option<Vec<MatchRequest>>,
    /// In a cluster: this node's open sessions per client address, as published in Redis.
    sessions: SessionCounts,
}

/// What the hub publishes of the core's open sessions per client address (in a cluster, so
/// that every node counts an address's sessions on all of them): the changes each second, all
/// of them every [`crate::cluster::CONN_REFRESH`], one write at a time.
#[derive(Default)]
struct SessionCounts {
    unpublished: HashMap<tandem_signaling::ClientKey, usize>,
    writing: Option<tokio::task::JoinHandle<()>>,
    next_all: Option<Instant>,
}

impl HubTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut incoming: Option<mpsc::Receiver<Incoming>>,
        mut views: Option<tokio::sync::watch::Receiver<Arc<[crate::cluster::Node]>>>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut from_bus = Vec::with_capacity(BATCH);
        loop {
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.metrics.hub_batch.observe(n as f64);
                    for cmd in batch.drain(..) {
                        self.handle(cmd);
                    }
                }
                Some(acked) = self.acks.next(), if !self.acks.is_empty() => match acked {
                    Some((room, msg)) => self.core.handle_delivered(room, msg, Instant::now()),
                    None => self.metrics.undelivered.inc(),
                },
                n = recv_bus(&mut incoming, &mut from_bus) => {
                    if n == 0 {
                        // The bus stopped: the node serves on alone.
                        incoming = None;
                    }
                    let now = Instant::now();
                    for m in from_bus.drain(..) {
                        if let Some((from, msg)) = crate::link::decode(m) {
                            self.peers.touch(from);
                            self.core.handle_bus(from, msg, now);
                            self.drain();
                        }
                    }
                }
                changed = next_view(&mut views) => {
                    match changed {
                        Some(live) => {
                            let now = Instant::now();
                            self.share_stats(&live, now);
                            self.restore_if_lost(now);
                            for node in self.peers.view(&live) {
                                tracing::info!(node_id = %node, "a node this one shares chats with is gone: its guests here are away, its chats are taken over");
                                self.core.handle_node_left(node, now);
                                self.drain();
                            }
                        }
                        None => views = None,
                    }
                }
                _ = sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.drain();
            if now >= self.next_sizes {
                self.next_sizes = now + SIZES_EVERY;
                self.publish_sessions(now);
                let sizes = self.core.sizes();
                self.sizes.apply("signaling", &self.last_sizes, &sizes);
                self.last_sizes = sizes;
            }
            let counters = self.core.counters();
            if counters != self.last {
                self.metrics.apply_counters(&self.last, &counters);
                self.last = counters;
                self.calls_dirty = true;
            }
            if std::mem::take(&mut self.calls_dirty) {
                let calls = self.core.call_states();
                if calls != self.last_calls {
                    self.metrics.apply_call_states(&calls);
                    self.last_calls = calls;
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::CreateGuest {
                username,
                client,
                elsewhere,
                reply,
            } => {
                let _ = reply.send(self.core.create_guest_counted(
                    username.as_deref(),
                    client,
                    elsewhere,
                    now,
                ));
            }
            Command::Refresh { session, reply } => {
                let _ = reply.send(self.core.refresh(session, now));
            }
            Command::Admit {
                session,
                adopt,
                reply,
            } => {
                let adopted = match adopt {
                    Some(a) if a.held_only => {
                        if self.core.session_alive(session, now) {
                            Ok(())
                        } else {
                            Err(SignalError::Unauthorized)
                        }
                    }
                    Some(a) => self.core.adopt(session, &a.username, a.home, a.lives, now),
                    None => Ok(()),
                };
                self.drain();
                let _ = reply.send(adopted.and_then(|()| self.core.admit(session, now)));
            }
            Command::Adopt {
                session,
                adopt,
                reply,
            } if adopt.held_only => {
                let held = self.core.session_alive(session, now);
                let _ = reply.send(held.then_some(()).ok_or(SignalError::Unauthorized));
            }
            Command::Adopt {
                session,
                adopt,
                reply,
            } => {
                let adopted =
                    self.core
                        .adopt(session, &adopt.username, adopt.home, adopt.lives, now);
                self.drain();
                let _ = reply.send(adopted);
            }
            Command::RawEvent {
                conn,
                name,
                payload,
                reply,
                received,
            } => {
                let label = event_label(&name);
                self.next_req += 1;
                let req = self.next_req;
                let result = self
                    .core
                    .handle_client_event(conn, req, &name, payload.as_ref(), now);
                match result {
                    Ok(None) => {
                        // Forwarded: the ack comes as `Output::Ack` (maybe in this drain).
                        self.pending
                            .insert(req, Pending::Event(reply, label, received));
                        self.drain();
                    }
                    Ok(Some(ack)) => {
                        self.drain();
                        self.answer(reply, Ok(ack));
                        self.observe(label, received);
                    }
                    Err(e) => {
                        self.drain();
                        self.answer(reply, Err::<(), _>(e));
                        self.observe(label, received);
                    }
                }
            }
            Command::Match(answer) => self.core.handle_match(answer, now),
            Command::Drain { reply } => {
                self.core.begin_drain(now);
                self.drain();
                let _ = reply.send(());
            }
            Command::Claim { room, winner, kept } => {
                tracing::debug!(%room, winner = ?winner, kept = kept.len(), "claimed a room whose home is gone");
                self.core.handle_claim(room, winner, kept, now)
            }
            Command::Journaled(tickets) => {
                for ticket in tickets {
                    self.core.handle_journaled(ticket, now);
                }
            }
            Command::SessionTtl { session, lives } => {
                self.core.handle_session_ttl(session, lives, now)
            }
            Command::Connect {
                session,
                conn,
                socket,
            } => match self.core.connect(session, conn, now) {
                Ok(()) => {
                    self.metrics.sockets_connected.inc();
                    self.guests.entry(session).or_default().push(conn);
                    self.sockets.insert(conn, (session, socket));
                }
                Err(e) => {
                    // Lost a race with another socket of the same guest, or the session expired
                    // between admission and connect.
                    self.metrics
                        .connect_refusals
                        .with_label_values(&[e.code()])
                        .inc();
                    let _ = socket.disconnect();
                }
            },
            Command::Disconnect { conn } => {
                if let Some((session, _)) = self.sockets.remove(&conn) {
                    self.metrics.sockets_connected.dec();
                    if let Some(list) = self.guests.get_mut(&session) {
                        list.retain(|c| *c != conn);
                        if list.is_empty() {
                            self.guests.remove(&session);
                        }
                    }
                }
                self.core.disconnect(conn, now);
            }
            Command::Event {
                conn,
                event,
                reply,
                received,
            } => {
                let name = event.name();
                let result = self.core.handle_event(conn, event, now);
                // Emit what the event caused before answering it, back to back: the sender's
                // `chat:message:sent` and its ack then leave in one write.
                self.drain();
                self.answer(reply, result);
                if let Some(h) = self.metrics.event_latency(name) {
                    h.observe(received.elapsed().as_secs_f64());
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.core.stats(now));
            }
            Command::Media(ev) => {
                self.calls_dirty = true;
                self.core.handle_media(ev, now);
            }
            Command::AttachMedia(plane) => self.media = Some(plane),
            Command::AttachTurn(turn) => self.turn = Some(turn),
            Command::CallOf { session, reply } => {
                let answer = if self.core.session_alive(session, now) {
                    self.core
                        .call_of(session)
                        .map(|call| (call, self.core.media_node_of(session)))
                        .ok_or(SignalError::NoCall)
                } else {
                    Err(SignalError::Unauthorized)
                };
                let _ = reply.send(answer);
            }
            Command::ChatOf { session, reply } => {
                let answer = if self.core.session_alive(session, now) {
                    self.core
                        .chat_anywhere(session)
                        .ok_or(SignalError::NotInChat)
                } else {
                    Err(SignalError::Unauthorized)
                };
                let _ = reply.send(answer);
            }
            Command::PostFile {
                session,
                room,
                client_id,
                file,
                reply,
            } => {
                self.next_req += 1;
                let req = self.next_req;
                match self
                    .core
                    .post_file_from(session, room, client_id, *file, req, now)
                {
                    Ok(Some(posted)) => {
                        let _ = reply.send(Ok(posted));
                    }
                    // Posted at the chat's home: the answer comes as `Output::Ack`.
                    Ok(None) => {
                        self.pending.insert(req, Pending::File(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// In a cluster: when Redis lost its data since this node last wrote its own, writes it
    /// again: the core's session records, pair ends and searches (one job for the Redis
    /// worker, in order), and where this node's shared files are stored. Tried again on the
    /// next registry view if the worker's queue is full.
    fn restore_if_lost(&mut self, now: Instant) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let losses = link.losses();
        if losses == self.losses {
            return;
        }
        self.drain();
        self.restoring = Some(Vec::new());
        self.core.handle_records_lost(now);
        self.drain();
        let batch = self.restoring.take().unwrap_or_default();
        let records = batch.len();
        if link.request(Job::Batch(batch)).is_err() {
            tracing::warn!("the cluster's request queue is full: this node writes its records again on the next heartbeat");
            return;
        }
        self.losses = losses;
        let files = self.files.stored(now);
        tracing::info!(
            requests = records,
            files = files.len(),
            "writing this node's sessions, chats, searches and files into Redis again"
        );
        link.restore_files(files);
    }

    /// In a cluster: publishes the open sessions per client address that changed (all of
    /// them now and then, to keep them from expiring), unless the last write is under way.
    fn publish_sessions(&mut self, now: Instant) {
        let Some(link) = &self.link else {
            return;
        };
        let c = &mut self.sessions;
        let all = c.next_all.is_none_or(|t| now >= t);
        if all {
            c.next_all = Some(now + crate::cluster::CONN_REFRESH);
        }
        c.unpublished.extend(self.core.client_sessions(all));
        if c.unpublished.is_empty() || c.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let counts: Vec<_> = c.unpublished.drain().collect();
        c.writing = Some(link.publish_sessions(counts));
    }

    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Emit { to, event } => {
                    if let ServerEvent::Stats(s) = &event {
                        self.metrics.apply_stats(s);
                    }
                    self.emit(to, &event);
                }
                Output::Deliver { to, message } => {
                    let wait = self.deliver(self.sockets_of(to), &message);
                    self.wait_ack(wait);
                }
                Output::Redeliver { conn, message } => {
                    let socket = self.sockets.get(&conn).map(|(_, s)| s);
                    let wait = self.deliver(socket, &message);
                    self.wait_ack(wait);
                }
                Output::Media(cmd) => match &self.media {
                    Some(m) => m.command(cmd),
                    None => tracing::warn!("media command before the media plane started"),
                },
                Output::CallSetup(took) => self.metrics.call_setup.observe(took.as_secs_f64()),
                Output::MatchWait(took) => self.metrics.match_wait.observe(took.as_secs_f64()),
                Output::RoomClosed(room) => self.files.delete_room(room),
                // Only a clustered core (CoreConfig::node) emits these.
                Output::Bus { to, msg } => {
                    self.peers.touch(to);
                    let sent = match &self.link {
                        Some(link) => link.send(to, &msg).is_ok(),
                        None => false,
                    };
                    if !sent {
                        self.core.handle_bus_failed(to, &msg, Instant::now());
                    }
                }
                Output::Journal { room, op, ticket } => {
                    let job = crate::link::JournalJob { room, op, ticket };
                    let queued = self.link.as_ref().is_some_and(|l| l.journal(job).is_ok());
                    if !queued {
                        if let Some(ticket) = ticket {
                            // Not written: the message lives in this node's memory only.
                            self.core.handle_journaled(ticket, Instant::now());
                        }
                    }
                }
                Output::Match(req) if self.restoring.is_some() => {
                    if let Some(batch) = self.restoring.as_mut() {
                        batch.push(req);
                    }
                }
                Output::Match(req) => {
                    let queued = match &self.link {
                        Some(link) => link.request(Job::Match(req.clone())).is_ok(),
                        None => false,
                    };
                    if !queued {
                        tracing::warn!(
                            "the cluster's request queue is full: a request was dropped"
                        );
                        match req {
                            MatchRequest::Enqueue { sid, .. } => {
                                let error = SignalError::ServerBusy;
                                let answer = MatchAnswer::Refused { sid, error };
                                self.core.handle_match(answer, Instant::now());
                            }
                            // Taken here, as without Redis.
                            MatchRequest::Claim { room } => {
                                self.core
                                    .handle_claim(room, None, Vec::new(), Instant::now())
                            }
                            // Asked again later.
                            MatchRequest::Expiring { sid } => self.core.handle_session_ttl(
                                sid,
                                Some(crate::link::RETRY_LATER),
                                Instant::now(),
                            ),
                            _ => {}
                        }
                    }
                }
                Output::Ack { req, result, .. } => match self.pending.remove(&req) {
                    Some(Pending::Event(reply, label, received)) => {
                        self.answer(reply, result);
                        self.observe(label, received);
                    }
                    Some(Pending::File(reply)) => {
                        let posted = result.and_then(|v| {
                            let id = v
                                .get("id")
                                .and_then(|i| i.as_str())
                                .and_then(MessageId::parse);
                            let ts = v.get("timestamp").and_then(serde_json::Value::as_u64);
                            id.zip(ts).ok_or(SignalError::ServiceUnavailable)
                        });
                        let _ = reply.send(posted);
                    }
                    None => {}
                },
                Output::Relay {
                    to,
                    name,
                    payload,
                    ack,
                } => {
                    if let Some(wait) = self.relay(to, &name, &payload, ack) {
                        self.wait_ack(wait);
                    }
                }
                Output::CallEnded(call) => {
                    if let Some(turn) = &self.turn {
                        turn.revoke(&call.to_string());
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some((_, s)) = self.sockets.get(&conn) {
                        tracing::info!(conn = conn.0, ?reason, "closing socket");
                        if reason == CloseReason::SessionExpired {
                            let _ = s.emit(
                                "error",
                                &ErrorEvent {
                                    code: SignalError::Unauthorized.code(),
                                    message: "Your session expired.".into(),
                                    event: "",
                                },
                            );
                        }
                        let _ = s.clone().disconnect();
                    }
                }
            }
        }
    }

    /// Publishes this node's share of the statistics (for its next heartbeat) and gives the
    /// core the others' (from the view just read): the broadcast counts the whole cluster.
    fn share_stats(&mut self, live: &[crate::cluster::Node], now: Instant) {
        let Some(link) = &self.link else {
            return;
        };
        let me = link.node().to_string();
        if let Ok(mut mine) = link.stats().lock() {
            *mine = self.core.local_stats(now);
        }
        let others = live
            .iter()
            .filter(|n| n.id != me)
            .fold(Stats::default(), |sum, n| sum + n.info.load.stats);
        self.core.handle_peer_stats(others, now);
    }

    /// Answers a client event: its ack, or the refusal (counted).
    fn answer<T: serde::Serialize>(&self, reply: Reply, result: Result<T, SignalError>) {
        match result {
            Ok(ack) => {
                if let Reply::Ack(a) = reply {
                    let _ = a.send(&ack);
                }
            }
            Err(e) => {
                self.metrics.refused(e);
                reply.refuse(e);
            }
        }
    }

    fn observe(&self, label: Option<&'static str>, received: Instant) {
        if let Some(h) = label.and_then(|l| self.metrics.event_latency(l)) {
            h.observe(received.elapsed().as_secs_f64());
        }
    }

    /// Writes an event the chat's home node emitted for a guest of this node, as is. With
    /// `ack`, a partner message: every socket is asked for an ack, the first one counts (as
    /// [`HubTask::deliver`]).
    fn relay(
        &self,
        to: Target,
        name: &str,
        payload: &serde_json::Value,
        ack: Option<(RoomId, MessageId)>,
    ) -> Option<AckWait> {
        let sockets: Vec<&SocketRef> = match to {
            Target::Conn(conn) => self
                .sockets
                .get(&conn)
                .map(|(_, s)| s)
                .into_iter()
                .collect(),
            Target::Guest(id) => self.sockets_of(id).collect(),
            Target::All => Vec::new(),
        };
        let Some((room, msg)) = ack else {
            for s in sockets {
                let _ = s.emit(name, payload);
            }
            return None;
        };
        let mut streams = Vec::new();
        for s in sockets {
            if let Ok(acks) = s.emit_with_ack::<_, serde_json::Value>(name, payload) {
                streams.push(Box::pin(acks));
            }
        }
        Some(await_delivery(streams, room, msg))
    }

    /// This node's sockets of one guest.
    fn sockets_of(&self, id: SessionId) -> impl Iterator<Item = &SocketRef> {
        let conns = self.guests.get(&id).map(Vec::as_slice).unwrap_or_default();
        conns
            .iter()
            .filter_map(|c| self.sockets.get(c).map(|(_, s)| s))
    }

    /// Sends a partner message to `sockets` (the receiver's), each asked for an ack; the first
    /// ack makes the sender's `delivered` receipt. Nothing is lost when none comes (a socket
    /// that closed, or died silently until the heartbeat closed it): the core keeps the message
    /// until an ack and hands it to the receiver's next socket. The ack wait (the Socket.IO ack
    /// timeout) outlasts the heartbeat, so a live socket's late ack still counts.
    fn deliver<'a>(
        &self,
        sockets: impl IntoIterator<Item = &'a SocketRef>,
        message: &ChatMessage,
    ) -> AckWait {
        let mut streams = Vec::new();
        for s in sockets {
            if let Ok(acks) = s.emit_with_ack::<_, serde_json::Value>("chat:message", message) {
                streams.push(Box::pin(acks));
            }
        }
        await_delivery(streams, message.room_id, message.id)
    }

    /// Waits, in the hub's own task (no task per message, no channel back), for the first ack
    /// of a partner message; [`HubTask::run`] polls these beside its inbox.
    fn wait_ack(&mut self, wait: AckWait) {
        self.acks.push(wait);
    }

    fn emit(&self, to: Target, event: &ServerEvent) {
        let name = event.name();
        match to {
            Target::Conn(conn) => {
                if let Some((_, s)) = self.sockets.get(&conn) {
                    let _ = s.emit(name, event);
                }
            }
            Target::Guest(id) => {
                for s in self.sockets_of(id) {
                    let _ = s.emit(name, event);
                }
            }
            Target::All => {
                // `of` rather than `emit`: the namespace is gone once shutdown closed it.
                if let Some(all) = self.io.of("/") {
                    // The local adapter broadcasts synchronously: its future is ready at once.
                    let _ = all.emit(name, event).now_or_never();
                }
            }
        }
    }
}

/// A partner message's wait for its first ack: the message (to receipt as delivered), or
/// `None` when no socket acked it (the core keeps it for the receiver's next socket).
type AckWait =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(RoomId, MessageId)>> + Send>>;

/// The first ack of `streams` (a partner message's emits) makes the delivered receipt.
fn await_delivery<S>(streams: Vec<std::pin::Pin<Box<S>>>, room: RoomId, msg: MessageId) -> AckWait
where
    S: futures_util::Stream<
            Item = (
                socketioxide::socket::Sid,
                Result<serde_json::Value, AckError>,
            ),
        > + Send
        + 'static,
{
    Box::pin(async move {
        if streams.is_empty() {
            return None;
        }
        let mut acks = futures_util::stream::select_all(streams);
        while let Some((_, res)) = acks.next().await {
            // Any answer counts, even one whose payload we cannot decode (a bare `ack()`
            // carries no payload at all).
            if matches!(res, Ok(_) | Err(AckError::Decode(_))) {
                return Some((room, msg));
            }
        }
        None
    })
}

/// A client event's name as a metric label: one of the names clients may send, else `None`.
fn event_label(name: &str) -> Option<&'static str> {
    ClientEvent::NAMES.iter().find(|n| **n == name).copied()
}

/// The next registry view (`None`: the registry stopped), or never without a cluster.
async fn next_view(
    views: &mut Option<tokio::sync::watch::Receiver<Arc<[crate::cluster::Node]>>>,
) -> Option<Arc<[crate::cluster::Node]>> {
    match views {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// The next batch of bus messages, or never when there is no bus.
async fn recv_bus(
    incoming: &mut Option<mpsc::Receiver<Incoming>>,
    buf: &mut Vec<Incoming>,
) -> usize {
    match incoming {
        Some(rx) => rx.recv_many(buf, BATCH).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub use self::own_metrics::SignalingMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use std::sync::Arc;

    use crate::metrics::{bump_moved, counter, counter_vec, reg};
    use prometheus::{
        Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
        Opts, Registry,
    };

    use tandem_signaling::wire::{EndReason, Stats};
    use tandem_signaling::{CallEndReason, CallStates, ClientEvent, Counters, SignalError};

    /// Signaling metrics, registered by [`SignalingMetrics::register`].
    #[derive(Clone)]
    pub struct SignalingMetrics {
        pub sockets_connected: IntGauge,
        pub guests: IntGaugeVec,
        pub guests_created: IntCounter,
        pub matches: IntCounter,
        pub chats_ended: IntCounterVec,
        pub messages_relayed: IntCounter,
        pub receipts: IntCounterVec,
        pub refusals: IntCounterVec,
        pub rate_limited: IntCounterVec,
        pub connect_refusals: IntCounterVec,
        pub undelivered: IntCounter,
        pub sessions_expired: IntCounter,
        pub sessions_reaped: IntCounter,
        pub floods_closed: IntCounter,
        pub event_latency: HistogramVec,
        /// `event_latency` of each name in [`ClientEvent::NAMES`], resolved once: the label
        /// lookup hashes and locks, once per event otherwise.
        event_latency_of: Arc<[Histogram]>,
        pub hub_batch: Histogram,
        pub resident_memory: IntGauge,
        pub calls: IntGaugeVec,
        pub call_requests: IntCounter,
        pub calls_accepted: IntCounter,
        pub calls_ended: IntCounterVec,
        pub call_setup: Histogram,
        pub match_wait: Histogram,
    }

    impl SignalingMetrics {
        pub fn register(r: &Registry) -> Self {
            let counter = |name: &str, help: &str| counter(r, name, help);
            let counter_vec =
                |name: &str, help: &str, labels: &[&str]| counter_vec(r, name, help, labels);
            let mut m = Self {
                event_latency_of: Arc::from([]),
                sockets_connected: reg(
                    r,
                    IntGauge::new("tandem_sockets_connected", "Socket.IO connections open now")
                        .expect("valid"),
                ),
                guests: reg(
                    r,
                    IntGaugeVec::new(
                        Opts::new("tandem_guests", "Guest sessions by state"),
                        &["state"],
                    )
                    .expect("valid"),
                ),
                guests_created: counter("tandem_guests_created_total", "Guest sessions created"),
                matches: counter("tandem_matches_total", "Pairs made"),
                chats_ended: counter_vec(
                    "tandem_chats_ended_total",
                    "Chats ended, by reason",
                    &["reason"],
                ),
                messages_relayed: counter(
                    "tandem_messages_relayed_total",
                    "Chat messages accepted and relayed",
                ),
                receipts: counter_vec(
                    "tandem_receipts_total",
                    "Receipts relayed, by kind",
                    &["kind"],
                ),
                refusals: counter_vec(
                    "tandem_refusals_total",
                    "Client events refused, by code",
                    &["code"],
                ),
                rate_limited: counter_vec(
                    "tandem_rate_limited_total",
                    "Rate-limit hits, by scope",
                    &["scope"],
                ),
                connect_refusals: counter_vec(
                    "tandem_connect_refusals_total",
                    "Socket.IO connections refused, by reason",
                    &["reason"],
                ),
                undelivered: counter(
                    "tandem_messages_undelivered_total",
                    "Deliveries that got no ack from the receiver (the message stays queued for its next socket)",
                ),
                sessions_expired: counter(
                    "tandem_sessions_expired_total",
                    "Guest sessions swept after expiry",
                ),
                sessions_reaped: counter(
                    "tandem_sessions_reaped_total",
                    "Guest sessions removed because no socket connected in time",
                ),
                floods_closed: counter(
                    "tandem_flood_disconnects_total",
                    "Sockets closed for a sustained flood",
                ),
                event_latency: reg(
                    r,
                    HistogramVec::new(
                        HistogramOpts::new(
                            "tandem_event_handling_seconds",
                            "Time from receiving a client event to answering it, by event",
                        )
                        .buckets(vec![
                            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
                        ]),
                        &["event"],
                    )
                    .expect("valid"),
                ),
                hub_batch: reg(
                    r,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "tandem_hub_batch_size",
                            "Commands the signaling hub handled per wake-up",
                        )
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                    )
                    .expect("valid"),
                ),
                resident_memory: reg(
                    r,
                    IntGauge::new(
                        "tandem_process_resident_memory_bytes",
                        "Resident memory of the process",
                    )
                    .expect("valid"),
                ),
                calls: reg(
                    r,
                    IntGaugeVec::new(
                        Opts::new(
                            "tandem_calls",
                            "Calls now, by state (ringing, connecting, connected)",
                        ),
                        &["state"],
                    )
                    .expect("valid"),
                ),
                call_requests: counter("tandem_call_requests_total", "Calls requested"),
                calls_accepted: counter("tandem_calls_accepted_total", "Calls accepted"),
                calls_ended: counter_vec(
                    "tandem_calls_ended_total",
                    "Calls ended, by reason",
                    &["reason"],
                ),
                call_setup: reg(
                    r,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "tandem_call_setup_seconds",
                            "Time from a call's accept to both guests' media connected",
                        )
                        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                    )
                    .expect("valid"),
                ),
                match_wait: reg(
                    r,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "tandem_match_wait_seconds",
                            "Time to match: from a guest's match:start to its match:found (guests of this node whose chat opened here)",
                        )
                        .buckets(vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
                    )
                    .expect("valid"),
                ),
            };
            for reason in CallEndReason::ALL {
                m.calls_ended.with_label_values(&[reason.as_str()]);
            }
            // Pre-create every bounded label so dashboards see zeros, not gaps.
            for reason in EndReason::ALL {
                m.chats_ended.with_label_values(&[reason.as_str()]);
            }
            for e in SignalError::ALL {
                m.refusals.with_label_values(&[e.code()]);
            }
            m.event_latency_of = ClientEvent::NAMES
                .iter()
                .map(|name| m.event_latency.with_label_values(&[name]))
                .collect();
            for kind in ["delivered", "read"] {
                m.receipts.with_label_values(&[kind]);
            }
            for scope in ["event", "connect"] {
                m.rate_limited.with_label_values(&[scope]);
            }
            for state in ["online", "searching", "in_chat", "idle"] {
                m.guests.with_label_values(&[state]);
            }
            m
        }

        /// The handling-time histogram of a client event by name (`None`: not a client event).
        pub fn event_latency(&self, name: &str) -> Option<&Histogram> {
            let i = ClientEvent::NAMES.iter().position(|n| *n == name)?;
            self.event_latency_of.get(i)
        }

        /// Adds what the core counted since `last`.
        pub fn apply_counters(&self, last: &Counters, now: &Counters) {
            self.guests_created
                .inc_by(now.guests_created - last.guests_created);
            self.matches.inc_by(now.matches - last.matches);
            for reason in EndReason::ALL {
                let i = reason as usize;
                bump_moved(
                    &self.chats_ended,
                    reason.as_str(),
                    now.chats_ended[i],
                    last.chats_ended[i],
                );
            }
            self.messages_relayed
                .inc_by(now.messages_relayed - last.messages_relayed);
            bump_moved(
                &self.receipts,
                "delivered",
                now.receipts_delivered,
                last.receipts_delivered,
            );
            bump_moved(
                &self.receipts,
                "read",
                now.receipts_read,
                last.receipts_read,
            );
            self.floods_closed
                .inc_by(now.floods_closed - last.floods_closed);
            self.sessions_expired
                .inc_by(now.sessions_expired - last.sessions_expired);
            self.sessions_reaped
                .inc_by(now.sessions_reaped - last.sessions_reaped);
            self.call_requests
                .inc_by(now.calls_requested - last.calls_requested);
            self.calls_accepted
                .inc_by(now.calls_accepted - last.calls_accepted);
            for reason in CallEndReason::ALL {
                let i = reason as usize;
                bump_moved(
                    &self.calls_ended,
                    reason.as_str(),
                    now.calls_ended[i],
                    last.calls_ended[i],
                );
            }
        }

        pub fn apply_call_states(&self, s: &CallStates) {
            self.calls
                .with_label_values(&["ringing"])
                .set(s.ringing as i64);
            self.calls
                .with_label_values(&["connecting"])
                .set(s.connecting as i64);
            self.calls
                .with_label_values(&["connected"])
                .set(s.connected as i64);
        }

        pub fn apply_stats(&self, s: &Stats) {
            self.guests
                .with_label_values(&["searching"])
                .set(s.available_users as i64);
            self.guests
                .with_label_values(&["in_chat"])
                .set(s.connected_users as i64);
            let busy = s.available_users + s.connected_users;
            self.guests
                .with_label_values(&["online"])
                .set(s.online_users.saturating_sub(busy) as i64);
            self.guests
                .with_label_values(&["idle"])
                .set(s.total_users.saturating_sub(s.online_users) as i64);
        }

        pub fn refused(&self, e: SignalError) {
            self.refusals.with_label_values(&[e.code()]).inc();
            if e == SignalError::RateLimited {
                self.rate_limited.with_label_values(&["event"]).inc();
            }
        }
    }
}
