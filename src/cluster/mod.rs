//! The shell side of running many tandem nodes on one Redis (`--redis-url`): the connection
//! to Redis and the node registry. [`Cluster`] is the one handle the rest of the shell uses
//! (the bus and global matching will hang off it too); without `--redis-url` there is none and
//! nothing here runs.
//!
//! - [`Cluster::connect`] reaches Redis at start (or the process refuses to start).
//! - [`Cluster::join`] publishes this node in the registry and keeps it there with a
//!   heartbeat; while Redis is lost the node serves on alone, retries with a back-off and
//!   registers again when Redis returns.
//! - [`Cluster::leave`] takes it out first thing on a graceful shutdown.
//! - [`Cluster::nodes`] is the live view; [`Cluster::readiness`] feeds `/readyz`.

pub mod bus;
mod conn;
pub mod matchmaker;
pub mod metrics;
mod registry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::Registry;
use tandem_config::RedisTarget;
pub use tandem_signaling::NodeId as CoreNodeId;
use tandem_signaling::{RoomId, SessionId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::ClusterMetrics;
use crate::supervise::Supervisor;
pub use bus::{Bus, BusError, BusKind, BusMetrics, BusSettings, Incoming, NodeId};
pub use conn::Fault;
use conn::{Command, Redis, COMMAND_TIMEOUT};
pub use matchmaker::{MatchError, MatchMetrics, MatchSettings, Matchmaker, PairBlock, Paired};
#[allow(unused_imports)] // the registry's vocabulary, for the next cluster-wide parts
pub use registry::{Node, NodeInfo, NodeLoad, TurnEndpoint, HEARTBEAT_INTERVAL, NODE_TTL};

/// The session mirror's keys: `tandem:s:<sid>` → `<home node>:<room>` (docs/cluster.md).
pub const SESSION_PREFIX: &str = "tandem:s:";

/// The session-record script (`session.lua`).
static SESSION_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("session.lua")));

/// Room claims after a home died: `tandem:r:<room>` → the node that took it over.
pub const ROOM_CLAIM_PREFIX: &str = "tandem:r:";

/// How long a claim is kept (longer than any grace period and token; the room is gone then).
const CLAIM_TTL: Duration = Duration::from_secs(24 * 3600);

/// `SET key node NX PX ttl`, then whoever holds it, in one round trip.
static CLAIM_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) \
         return redis.call('GET', KEYS[1])",
    )
});

/// A chat's journal, kept by its home: `tandem:j:<room>`, a hash of message id → a partner
/// message its receiver has not acknowledged yet ([`tandem_signaling::cluster::Kept`]), read
/// by the node that takes the room over when the home died.
pub const JOURNAL_PREFIX: &str = "tandem:j:";

/// How long a journal outlives its last write (a chat whose home vanished with both guests and
/// that nobody took over; longer than any grace period).
const JOURNAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where shared files are stored: `tandem:f:<file id>` → the HTTP address of the node that
/// stores it.
pub const FILE_PREFIX: &str = "tandem:f:";

/// Per-address counters that must hold cluster-wide: `tandem:ip:<address>:…`.
pub const IP_PREFIX: &str = "tandem:ip:";

/// A fixed-window counter: `INCR`, the window's expiry on the first count; the ms left in the
/// window when over `ARGV[1]`, else 0.
static WINDOW_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local n = redis.call('INCR', KEYS[1]) \
         if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         if n > tonumber(ARGV[1]) then return math.max(redis.call('PTTL', KEYS[1]), 1) end \
         return 0",
    )
});

/// How long a node's per-address connection count lives unless refreshed.
const CONN_TTL: Duration = Duration::from_secs(120);

/// How often a node refreshes its per-address connection counts.
pub const CONN_REFRESH: Duration = Duration::from_secs(30);

fn conn_key(ip: std::net::IpAddr, node: &str) -> String {
    format!("tandem:{{ip:{ip}}}:c:{node}")
}

/// A node's open-session count for a client address (the core's key, shown as an IPv6
/// address: an IPv4 one mapped, an IPv6 /64 with its host part zero).
fn sessions_key(client: tandem_signaling::ClientKey, node: &str) -> String {
    let ip = std::net::Ipv6Addr::from(client.0);
    format!("tandem:{{ip:{ip}}}:s:{node}")
}

/// `KEYS[1]` this node's count for an address, the others the other live nodes': counts one
/// more unless their sum is `ARGV[1]` already (0), with the expiry `ARGV[2]` (1).
static CONN_OPEN_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local sum = 0 \
         for _, k in ipairs(KEYS) do sum = sum + tonumber(redis.call('GET', k) or '0') end \
         if sum >= tonumber(ARGV[1]) then return 0 end \
         redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1",
    )
});

/// One count less (the key goes at zero).
static CONN_CLOSE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local n = tonumber(redis.call('GET', KEYS[1]) or '0') \
         if n <= 1 then redis.call('DEL', KEYS[1]) else \
         redis.call('DECR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 1",
    )
});

/// `PEXPIRE key ttl`.
static EXPIRE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("return redis.call('PEXPIRE', KEYS[1], ARGV[1])")
});

/// `SET key value PX ttl`.
static SET_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1")
});

/// `GET key`, `""` when absent.
static GET_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new("return redis.call('GET', KEYS[1]) or ''"));

/// Whether a node is in the registry (1) or not (0).
static ALIVE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end return 0")
});

/// What a guest's shared record says (see `session.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its chat's home node and room, if in a chat.
    pub home: Option<(CoreNodeId, RoomId)>,
    /// Its partner in that chat and the partner's name.
    pub partner: Option<(SessionId, String)>,
    /// Its call there (ringing or accepted).
    pub call: Option<tandem_signaling::CallId>,
    /// How long it still lives (its token's expiry, moved by refreshes on any node).
    pub lives: Duration,
}

/// The bus's node id as the signaling core writes it (the same 128 bits).
pub fn core_node(id: NodeId) -> CoreNodeId {
    CoreNodeId::from_raw(u128::from_be_bytes(id.0))
}

/// The core's node id as the bus writes it.
pub fn bus_node(id: CoreNodeId) -> NodeId {
    NodeId(id.into_raw().to_be_bytes())
}

/// Shortest wait before retrying a lost Redis; doubled up to [`HEARTBEAT_INTERVAL`].
const RETRY_MIN: Duration = Duration::from_millis(250);

/// The cluster handle. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// Random, made at start: several nodes may share a host (and an IP).
    id: String,
    /// The same id, as the bus and the matchmaker name nodes.
    node: NodeId,
    /// Where Redis is (the bus opens a connection of its own).
    redis_target: RedisTarget,
    bus_metrics: BusMetrics,
    match_metrics: MatchMetrics,
    name: String,
    /// The target without its password, for logs.
    target: String,
    metrics: ClusterMetrics,
    /// The last heartbeat reached Redis.
    up: AtomicBool,
    /// Why the last heartbeat failed (a fixed label), for `/readyz`.
    fault: Mutex<Option<&'static str>>,
    /// The live nodes as last read.
    view: watch::Sender<Arc<[Node]>>,
    /// The data epoch Redis last answered (see `registry`), and how many times it changed.
    epoch: Mutex<Option<String>>,
    losses: AtomicU64,
    /// This node's advertised HTTP address (set by [`Cluster::join`]).
    http: OnceLock<SocketAddr>,
    /// Set by [`Cluster::join`]: asks the heartbeat task to leave.
    leave: OnceLock<mpsc::Sender<oneshot::Sender<()>>>,
}

/// What [`Cluster::join`] publishes besides the load.
pub struct Membership {
    pub http: SocketAddr,
    pub media: SocketAddr,
    /// Its TURN server (`None`: TURN is off).
    pub turn: Option<TurnEndpoint>,
    /// Reads the node's load (cheap: called once per heartbeat).
    pub load: Box<dyn Fn() -> NodeLoad + Send + Sync>,
}

impl Cluster {
    /// Connects to Redis and registers the cluster metrics (`node_name`: `--node-name`, or the
    /// host name and a short id). Fails with a clear message when Redis cannot be reached.
    pub async fn connect(
        target: &RedisTarget,
        node_name: Option<&str>,
        registry: &Registry,
    ) -> anyhow::Result<Cluster> {
        let node = NodeId::random();
        let id = node.to_string();
        let name = match node_name {
            Some(name) => name.to_owned(),
            None => default_name(&id),
        };
        let metrics = ClusterMetrics::register(registry, &name);
        let bus_metrics = BusMetrics::register(registry)?;
        let match_metrics = MatchMetrics::register(registry)?;
        let redis = Redis::connect(target, metrics.clone()).await?;
        let (view, _) = watch::channel(Arc::from(Vec::new()));
        Ok(Cluster {
            inner: Arc::new(Inner {
                redis,
                id,
                node,
                redis_target: target.clone(),
                bus_metrics,
                match_metrics,
                name,
                target: target.to_string(),
                metrics,
                up: AtomicBool::new(true),
                fault: Mutex::new(None),
                view,
                epoch: Mutex::new(None),
                losses: AtomicU64::new(0),
                leave: OnceLock::new(),
                http: OnceLock::new(),
            }),
        })
    }

    /// This node's name (`--node-name` or the default).
    pub fn node_name(&self) -> &str {
        &self.inner.name
    }

    /// This node's id (random, made at start).
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Starts this node's end of the bus (a Redis connection of its own, subscribed to this
    /// node's channel). Call once.
    pub async fn bus(
        &self,
        settings: BusSettings,
    ) -> anyhow::Result<(Bus, tokio::sync::mpsc::Receiver<Incoming>)> {
        Bus::connect(
            &self.inner.redis_target,
            self.inner.node,
            settings,
            self.inner.bus_metrics.clone(),
        )
        .await
    }

    /// This node's id as the signaling core names nodes.
    /// What the core needs from a guest's record: its chat's home, partner and whether the
    /// home is alive (in the registry now: asked of Redis, as a node that is draining left it
    /// a moment ago; the last view if Redis does not answer).
    pub async fn record_home(
        &self,
        record: &SessionRecord,
    ) -> Option<tandem_signaling::cluster::RecordHome> {
        let (node, room) = record.home?;
        let alive = node == self.core_id() || {
            let mut invocation = ALIVE_SCRIPT.prepare_invoke();
            invocation.key(registry::NODES_KEY).arg(node.to_string());
            match self
                .inner
                .redis
                .invoke::<i64>(Command::NodeAlive, &invocation)
                .await
            {
                Ok(n) => n == 1,
                Err(_) => self.is_live(node),
            }
        };
        Some(tandem_signaling::cluster::RecordHome {
            node,
            room,
            partner: record.partner.clone(),
            alive,
            call: record.call,
        })
    }

    pub fn core_id(&self) -> CoreNodeId {
        core_node(self.inner.node)
    }

    /// Runs one operation of the session-record script on `sid`'s record: the record, or
    /// `None` when there is none.
    async fn session_op(
        &self,
        command: Command,
        sid: SessionId,
        args: &[&str],
    ) -> Result<Option<SessionRecord>, Fault> {
        let mut invocation = SESSION_SCRIPT.prepare_invoke();
        invocation.key(format!("{SESSION_PREFIX}{sid}"));
        for a in args {
            invocation.arg(*a);
        }
        let reply: Vec<String> = self.inner.redis.invoke(command, &invocation).await?;
        match reply.as_slice() {
            [n] if n == "n" => Ok(None),
            [k, home, ms, partner, name, call] if k == "k" => {
                let home = home.split_once(':').and_then(|(node, room)| {
                    Some((CoreNodeId::parse(node)?, RoomId::parse(room)?))
                });
                let partner = SessionId::parse(partner).map(|p| (p, name.clone()));
                let ms: i64 = ms
                    .parse()
                    .map_err(|_| Fault::response("unexpected answer from the session script"))?;
                Ok(Some(SessionRecord {
                    home,
                    partner,
                    call: call.parse::<u64>().ok().map(tandem_signaling::CallId),
                    lives: Duration::from_millis(ms.max(0) as u64),
                }))
            }
            _ => Err(Fault::response("unexpected answer from the session script")),
        }
    }

    /// Creates `sid`'s shared record (a guest made here), living until `expires_ms` (Unix ms).
    pub async fn session_new(&self, sid: SessionId, expires_ms: u64) -> Result<(), Fault> {
        let at = expires_ms.to_string();
        self.session_op(Command::SessionSet, sid, &["new", &at])
            .await
            .map(|_| ())
    }

    /// A socket of `sid` is connecting here: its record (marked connected), or `None` when the
    /// session is gone cluster-wide (reaped, expired).
    pub async fn session_attach(&self, sid: SessionId) -> Result<Option<SessionRecord>, Fault> {
        self.session_op(Command::SessionGet, sid, &["attach"]).await
    }

    /// `sid`'s record, unchanged.
    pub async fn session_peek(&self, sid: SessionId) -> Result<Option<SessionRecord>, Fault> {
        self.session_op(Command::SessionGet, sid, &["peek"]).await
    }

    /// `sid` was refreshed: its record lives until `expires_ms` (Unix ms).
    pub async fn session_extend(&self, sid: SessionId, expires_ms: u64) -> Result<(), Fault> {
        let at = expires_ms.to_string();
        self.session_op(Command::SessionSet, sid, &["extend", &at])
            .await
            .map(|_| ())
    }

    /// Records `sid`'s chat as `room` homed at this node with `partner`, or (`None`) that it
    /// has none.
    pub async fn session_home(
        &self,
        sid: SessionId,
        room: Option<RoomId>,
        partner: Option<(SessionId, String)>,
    ) -> Result<(), Fault> {
        let home = match room {
            Some(room) => format!("{}:{room}", self.core_id()),
            None => String::new(),
        };
        let (p, n) = match partner {
            Some((p, n)) => (p.to_string(), n),
            None => (String::new(), String::new()),
        };
        self.session_op(Command::SessionSet, sid, &["home", &home, &p, &n])
            .await
            .map(|_| ())
    }

    /// Claims `room` (its home died) for this node, first come first served: the node that
    /// holds it (this one, or who claimed it first).
    pub async fn claim_room(&self, room: RoomId) -> Result<CoreNodeId, Fault> {
        let mut invocation = CLAIM_SCRIPT.prepare_invoke();
        invocation
            .key(format!("{ROOM_CLAIM_PREFIX}{room}"))
            .arg(self.core_id().to_string())
            .arg(CLAIM_TTL.as_millis() as u64);
        let winner: String = self
            .inner
            .redis
            .invoke(Command::RoomClaim, &invocation)
            .await?;
        CoreNodeId::parse(&winner)
            .ok_or_else(|| Fault::response("unexpected answer from the claim script"))
    }

    /// Writes journal changes, in order, in one round trip (a pipeline); with the flag, an
    /// entry also sets its key's expiry.
    pub async fn journal(
        &self,
        ops: impl IntoIterator<Item = (RoomId, &tandem_signaling::JournalOp, bool)>,
    ) -> Result<(), Fault> {
        use tandem_signaling::JournalOp;
        let mut pipe = redis::pipe();
        let mut n = 0usize;
        for (room, op, set_ttl) in ops {
            let key = format!("{JOURNAL_PREFIX}{room}");
            match op {
                JournalOp::Keep(kept) => {
                    if set_ttl {
                        // A field no removal takes, so that the key (and its expiry) lives
                        // until the chat ends even while every message is acknowledged; a
                        // reader skips it (it is no entry).
                        pipe.hset(&key, "_", 1).ignore();
                        pipe.pexpire(&key, JOURNAL_TTL.as_millis() as i64).ignore();
                    }
                    pipe.hset(&key, kept.message.id.to_string(), kept.encode())
                        .ignore();
                }
                JournalOp::Drop(id) => {
                    pipe.hdel(&key, id.to_string()).ignore();
                }
                JournalOp::Clear => {
                    pipe.del(&key).ignore();
                }
            }
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        self.inner.redis.pipeline(Command::Journal, pipe).await
    }

    /// `room`'s journal: what its dead home kept for the guests (entries that do not parse,
    /// like the `_` field that keeps the key, are skipped).
    pub async fn journal_read(
        &self,
        room: RoomId,
    ) -> Result<Vec<tandem_signaling::cluster::Kept>, Fault> {
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(format!("{JOURNAL_PREFIX}{room}"));
        let values: Vec<Vec<u8>> = self.inner.redis.query(Command::JournalRead, cmd).await?;
        Ok(values
            .iter()
            .filter_map(|v| tandem_signaling::cluster::Kept::decode(v).ok())
            .collect())
    }

    /// Records that file `id` is stored on this node (for `ttl`), so that every node can fetch
    /// it from here: the key holds this node's HTTP address.
    pub async fn file_stored(
        &self,
        id: tandem_signaling::FileId,
        ttl: Duration,
    ) -> Result<(), Fault> {
        let Some(http) = self.inner.http.get() else {
            return Ok(());
        };
        let mut invocation = SET_SCRIPT.prepare_invoke();
        invocation
            .key(format!("{FILE_PREFIX}{id}"))
            .arg(http.to_string())
            .arg(ttl.as_millis().max(1) as u64);
        self.inner
            .redis
            .invoke::<i64>(Command::FileSet, &invocation)
            .await
            .map(|_| ())
    }

    /// Where file `id` is stored, when on another node: that node's HTTP address.
    pub async fn file_owner(
        &self,
        id: tandem_signaling::FileId,
    ) -> Result<Option<SocketAddr>, Fault> {
        let mut invocation = GET_SCRIPT.prepare_invoke();
        invocation.key(format!("{FILE_PREFIX}{id}"));
        let owner: String = self
            .inner
            .redis
            .invoke(Command::FileGet, &invocation)
            .await?;
        let addr = owner.parse::<SocketAddr>().ok();
        Ok(addr.filter(|a| Some(a) != self.inner.http.get()))
    }

    /// Counts one guest creation from client address `ip` (its /64 for IPv6) across the
    /// cluster: `Some(wait)` when the address made `limit` guests already in the current
    /// minute (a fixed window starting at its first creation).
    pub async fn count_creation(
        &self,
        ip: std::net::IpAddr,
        limit: u32,
    ) -> Result<Option<Duration>, Fault> {
        let mut invocation = WINDOW_SCRIPT.prepare_invoke();
        invocation
            .key(format!("{IP_PREFIX}{ip}:guests"))
            .arg(limit)
            .arg(60_000);
        let wait: i64 = self
            .inner
            .redis
            .invoke(Command::IpLimit, &invocation)
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    /// Counts one more open connection from client address `ip` (a [`crate::limits::limit_key`])
    /// on this node, unless the address holds `limit` across the live nodes already (`false`).
    /// Each node keeps its own count per address (`tandem:{ip:<address>}:c:<node>`, all in one
    /// slot), expiring unless refreshed ([`Cluster::refresh_conns`]), so a dead node's counts go.
    pub async fn open_conn(&self, ip: std::net::IpAddr, limit: u32) -> Result<bool, Fault> {
        let me = self.inner.id.clone();
        let mut invocation = CONN_OPEN_SCRIPT.prepare_invoke();
        invocation.key(conn_key(ip, &me));
        for n in self.inner.view.borrow().iter().filter(|n| n.id != me) {
            invocation.key(conn_key(ip, &n.id));
        }
        invocation.arg(limit).arg(CONN_TTL.as_millis() as u64);
        let ok: i64 = self
            .inner
            .redis
            .invoke(Command::IpLimit, &invocation)
            .await?;
        Ok(ok == 1)
    }

    /// A connection [`Cluster::open_conn`] counted closed.
    pub async fn close_conn(&self, ip: std::net::IpAddr) -> Result<(), Fault> {
        let mut invocation = CONN_CLOSE_SCRIPT.prepare_invoke();
        invocation
            .key(conn_key(ip, &self.inner.id))
            .arg(CONN_TTL.as_millis() as u64);
        self.inner
            .redis
            .invoke::<i64>(Command::IpLimit, &invocation)
            .await
            .map(|_| ())
    }

    /// The open sessions client address `client` holds on the other live nodes, as they
    /// published them ([`Cluster::publish_sessions`]; all in one slot, one `MGET`).
    pub async fn sessions_elsewhere(
        &self,
        client: tandem_signaling::ClientKey,
    ) -> Result<usize, Fault> {
        let me = self.inner.id.clone();
        let keys: Vec<String> = self
            .inner
            .view
            .borrow()
            .iter()
            .filter(|n| n.id != me)
            .map(|n| sessions_key(client, &n.id))
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let counts: Vec<Option<u64>> = self.inner.redis.query(Command::IpLimit, cmd).await?;
        Ok(counts.into_iter().flatten().sum::<u64>() as usize)
    }

    /// Publishes this node's open-session counts for these client addresses (0: the key
    /// goes), each expiring unless published again within [`CONN_TTL`], so a dead node's counts
    /// go; one pipeline.
    pub async fn publish_sessions(
        &self,
        counts: &[(tandem_signaling::ClientKey, usize)],
    ) -> Result<(), Fault> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &(client, n) in counts {
            let key = sessions_key(client, &self.inner.id);
            if n == 0 {
                pipe.del(key).ignore();
            } else {
                pipe.pset_ex(key, n as u64, CONN_TTL.as_millis() as u64)
                    .ignore();
            }
        }
        self.inner.redis.pipeline(Command::IpLimit, pipe).await
    }

    /// Keeps this node's per-address counts alive (call every [`CONN_REFRESH`]).
    pub async fn refresh_conns(&self, ips: &[std::net::IpAddr]) {
        for ip in ips {
            let mut invocation = EXPIRE_SCRIPT.prepare_invoke();
            invocation
                .key(conn_key(*ip, &self.inner.id))
                .arg(CONN_TTL.as_millis() as u64);
            if self
                .inner
                .redis
                .invoke::<i64>(Command::IpLimit, &invocation)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Whether `node` is in the registry as last read.
    pub fn is_live(&self, node: CoreNodeId) -> bool {
        let id = node.to_string();
        self.inner.view.borrow().iter().any(|n| n.id == id)
    }

    /// Records `sid`'s call (`None`: it has none).
    pub async fn session_call(
        &self,
        sid: SessionId,
        call: Option<tandem_signaling::CallId>,
    ) -> Result<(), Fault> {
        let call = call.map(|c| c.to_string()).unwrap_or_default();
        self.session_op(Command::SessionSet, sid, &["call", &call])
            .await
            .map(|_| ())
    }

    /// Writes `sid`'s record again after Redis lost its data, merged with what other nodes
    /// write (see `MatchRequest::Restore`).
    pub async fn session_restore(
        &self,
        sid: SessionId,
        expires_ms: u64,
        connected: bool,
        chat: Option<tandem_signaling::cluster::RecordChat>,
        call: Option<Option<tandem_signaling::CallId>>,
    ) -> Result<(), Fault> {
        let at = expires_ms.to_string();
        let (home, p, n) = match chat {
            Some((node, room, partner)) => {
                let (p, n) =
                    partner.map_or((String::new(), String::new()), |(p, n)| (p.to_string(), n));
                (format!("{node}:{room}"), p, n)
            }
            None => ("-".to_owned(), String::new(), String::new()),
        };
        let call = match call {
            None => "-".to_owned(),
            Some(call) => call.map(|c| c.to_string()).unwrap_or_default(),
        };
        let connected = if connected { "1" } else { "0" };
        self.session_op(
            Command::SessionSet,
            sid,
            &["restore", &at, connected, &home, &p, &n, &call],
        )
        .await
        .map(|_| ())
    }

    /// `sid` never had a socket where it was made: its record goes unless a socket of it
    /// connected on some node.
    pub async fn session_reap(&self, sid: SessionId) -> Result<(), Fault> {
        self.session_op(Command::SessionSet, sid, &["reap"])
            .await
            .map(|_| ())
    }

    /// The cluster's match queue, through this node's Redis connection.
    pub fn matchmaker(&self, settings: MatchSettings) -> Matchmaker {
        Matchmaker::new(
            self.inner.redis.clone(),
            settings,
            self.inner.match_metrics.clone(),
        )
    }

    /// Registers this node (the first heartbeat must reach Redis, else an error) and starts
    /// the heartbeat task under `supervisor`.
    pub(crate) async fn join(&self, supervisor: &Supervisor, me: Membership) -> anyhow::Result<()> {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let _ = self.inner.http.set(me.http);
        let heart = Heart {
            cluster: self.clone(),
            me,
            started_ms,
        };
        heart.beat().await.map_err(|f| {
            anyhow::anyhow!("cannot register in Redis at {}: {f}", self.inner.target)
        })?;
        let nodes = self.nodes();
        tracing::info!(
            node_id = %self.inner.id,
            node_name = %self.inner.name,
            redis = %self.inner.target,
            nodes = nodes.len(),
            "joined the cluster"
        );
        let (tx, rx) = mpsc::channel(1);
        if self.inner.leave.set(tx).is_err() {
            anyhow::bail!("this node joined the cluster twice");
        }
        supervisor.spawn_task("cluster-registry", heart.run(rx));
        Ok(())
    }

    /// Takes this node out of the registry and stops its heartbeat (the first step of a
    /// graceful shutdown). Bounded: if Redis does not answer, the entry expires by itself.
    pub async fn leave(&self) {
        let Some(tx) = self.inner.leave.get() else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if tx.send(done_tx).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(COMMAND_TIMEOUT + Duration::from_secs(1), done_rx).await;
    }

    /// The live nodes (this one included) as last read, sorted by id; refreshed every
    /// heartbeat.
    #[allow(dead_code)] // the bus and global matching (next steps) read it
    pub fn nodes(&self) -> Arc<[Node]> {
        self.inner.view.borrow().clone()
    }

    /// The registry entry of node `id` (as the signaling core names nodes): from the live
    /// view, else read from Redis (a node that joined since this node's last heartbeat);
    /// `None` when the registry has none (the node is gone, or never was).
    pub async fn node_info(&self, id: CoreNodeId) -> Result<Option<NodeInfo>, Fault> {
        let id = bus_node(id).to_string();
        let known = {
            let view = self.inner.view.borrow();
            view.iter().find(|n| n.id == id).map(|n| n.info.clone())
        };
        if known.is_some() {
            return Ok(known);
        }
        let mut cmd = redis::cmd("HGET");
        cmd.arg(registry::INFO_KEY).arg(&id);
        let entry: Option<String> = self.inner.redis.query(Command::NodeEntry, cmd).await?;
        Ok(entry
            .filter(|e| e.len() <= registry::MAX_ENTRY_BYTES)
            .and_then(|e| serde_json::from_str(&e).ok()))
    }

    /// Changes of [`Cluster::nodes`].
    #[allow(dead_code)] // the bus and global matching (next steps) read it
    pub fn watch_nodes(&self) -> watch::Receiver<Arc<[Node]>> {
        self.inner.view.subscribe()
    }

    /// `Ok` while the last heartbeat reached Redis; else why not (for `/readyz`, without
    /// addresses).
    pub fn readiness(&self) -> Result<(), String> {
        if self.inner.up.load(Ordering::Relaxed) {
            return Ok(());
        }
        let kind = self
            .inner
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or("other");
        Err(format!("redis is unreachable ({kind})"))
    }

    /// Records a heartbeat's outcome; logs the transitions only.
    fn mark(&self, result: &Result<(), Fault>) {
        let inner = &self.inner;
        match result {
            Ok(()) => {
                *inner.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
                inner.metrics.redis_up.set(1);
                if !inner.up.swap(true, Ordering::Relaxed) {
                    inner.metrics.rejoins.inc();
                    tracing::info!(
                        node_id = %inner.id,
                        redis = %inner.target,
                        nodes = inner.view.borrow().len(),
                        "Redis is reachable again; this node is registered again"
                    );
                }
            }
            Err(fault) => {
                *inner.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault.kind);
                inner.metrics.redis_up.set(0);
                if inner.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        node_id = %inner.id,
                        redis = %inner.target,
                        error = %fault,
                        "Redis is unreachable; serving on alone and retrying"
                    );
                } else {
                    tracing::debug!(error = %fault, "Redis still unreachable");
                }
            }
        }
    }

    /// How many times Redis was found to have lost the cluster's data since this node joined
    /// (each time, the node writes what it holds again: see `Core::handle_records_lost`).
    pub fn losses(&self) -> u64 {
        self.inner.losses.load(Ordering::Relaxed)
    }

    /// Records the data epoch a heartbeat read; a change means Redis lost its data.
    fn epoch(&self, epoch: String) {
        let inner = &self.inner;
        let mut known = inner.epoch.lock().unwrap_or_else(|p| p.into_inner());
        match known.as_deref() {
            Some(e) if e == epoch => {}
            None => *known = Some(epoch),
            Some(_) => {
                *known = Some(epoch);
                inner.losses.fetch_add(1, Ordering::Relaxed);
                inner.metrics.restores.inc();
                tracing::warn!(
                    node_id = %inner.id,
                    redis = %inner.target,
                    "Redis lost the cluster's data (restarted empty, or flushed): this node writes its sessions, chats and searches again"
                );
            }
        }
    }

    /// Publishes a new view, logging nodes that came and went.
    fn publish(&self, nodes: Vec<Node>) {
        let inner = &self.inner;
        inner.metrics.nodes.set(nodes.len() as i64);
        let old = inner.view.borrow().clone();
        let same = old.len() == nodes.len() && old.iter().zip(&nodes).all(|(a, b)| a.id == b.id);
        if !same {
            for n in nodes.iter().filter(|n| !old.iter().any(|o| o.id == n.id)) {
                if n.id != inner.id {
                    tracing::info!(peer_id = %n.id, peer_name = %n.info.name, "node joined the cluster");
                }
            }
            for o in old.iter().filter(|o| !nodes.iter().any(|n| n.id == o.id)) {
                tracing::info!(peer_id = %o.id, peer_name = %o.info.name, "node left the cluster");
                let _ = inner
                    .metrics
                    .node_guests
                    .remove_label_values(&[o.info.name.as_str()]);
            }
        }
        for n in &nodes {
            let guests = i64::try_from(n.info.load.guests).unwrap_or(i64::MAX);
            inner
                .metrics
                .node_guests
                .with_label_values(&[n.info.name.as_str()])
                .set(guests);
        }
        inner.view.send_replace(Arc::from(nodes));
    }
}

/// The heartbeat task's state.
struct Heart {
    cluster: Cluster,
    me: Membership,
    started_ms: u64,
}

impl Heart {
    /// Writes this node's entry and reads the live ones.
    async fn beat(&self) -> Result<(), Fault> {
        let inner = &self.cluster.inner;
        let entry = NodeInfo {
            name: inner.name.clone(),
            http: self.me.http,
            media: self.me.media,
            turn: self.me.turn,
            load: (self.me.load)(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: self.started_ms,
        };
        let entry = serde_json::to_string(&entry)
            .map_err(|e| Fault::response(format!("cannot encode this node's entry: {e}")))?;
        // The epoch this beat sets if Redis has none: never one this node proposed before (a
        // node whose own epoch came back would not notice the loss).
        let proposal = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let invocation = registry::beat(&inner.id, &entry, &format!("{}-{proposal}", inner.id));
        let result = async {
            let reply: Vec<String> = inner.redis.invoke(Command::Heartbeat, &invocation).await?;
            let registry::View {
                nodes,
                skipped,
                epoch,
            } = registry::parse_view(&reply).map_err(Fault::response)?;
            self.cluster.epoch(epoch);
            if skipped > 0 {
                let fault = Fault::response(format!("{skipped} unreadable registry entries"));
                inner.redis.count(&fault);
                tracing::debug!(skipped, "unreadable registry entries skipped");
            }
            self.cluster.publish(nodes);
            Ok(())
        }
        .await;
        self.cluster.mark(&result);
        result
    }

    /// Beats every [`HEARTBEAT_INTERVAL`] (sooner, backing off, while Redis is lost) until
    /// asked to leave; then removes the entry and waits to be stopped.
    async fn run(self, mut leave: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut delay = HEARTBEAT_INTERVAL;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                Some(done) = leave.recv() => {
                    self.leave().await;
                    let _ = done.send(());
                    // Beating again would put the entry back; the supervisor ends this task.
                    std::future::pending::<()>().await;
                }
            }
            delay = match self.beat().await {
                Ok(()) => HEARTBEAT_INTERVAL,
                Err(_) if delay >= HEARTBEAT_INTERVAL => RETRY_MIN,
                Err(_) => (delay * 2).min(HEARTBEAT_INTERVAL),
            };
        }
    }

    async fn leave(&self) {
        let inner = &self.cluster.inner;
        let invocation = registry::leave(&inner.id);
        match inner.redis.invoke::<i64>(Command::Leave, &invocation).await {
            Ok(_) => tracing::info!(node_id = %inner.id, "left the cluster registry"),
            Err(fault) => tracing::warn!(
                node_id = %inner.id,
                error = %fault,
                "could not leave the cluster registry; the entry expires within {} s",
                NODE_TTL.as_secs()
            ),
        }
    }
}

/// The host name (only letters, digits, `.`, `_`, `-` kept) and the id's first six characters.
fn default_name(id: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(57)
        .collect();
    let short: String = id.chars().take(6).collect();
    if host.is_empty() {
        format!("node-{short}")
    } else {
        format!("{host}-{short}")
    }
}

/// The address other nodes reach this one's HTTP at: the bound address, or `--node-ip` with
/// its port when bound to every interface.
pub fn advertised_http(bound: SocketAddr, node_ip: std::net::IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(node_ip, bound.port())
    } else {
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_node_names() {
        let name = default_name("0123456789abcdef");
        assert!(name.ends_with("-012345"), "{name}");
        assert!(name.len() <= 64);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    }

    #[test]
    fn the_advertised_http_address_is_reachable() {
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            advertised_http("0.0.0.0:8080".parse().unwrap(), ip),
            "10.1.2.3:8080".parse().unwrap()
        );
        assert_eq!(
            advertised_http("127.0.0.1:9000".parse().unwrap(), ip),
            "127.0.0.1:9000".parse().unwrap()
        );
    }
}
