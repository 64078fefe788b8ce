//! The connection to the cluster's Redis: one reconnecting multiplexed connection to a single
//! server (`redis://`, `rediss://`), or a Redis Cluster connection (`redis+cluster://`) that
//! follows the cluster's slots. Every command goes through [`Redis::invoke`] or
//! [`Redis::ping`]: bounded in time, its round trip and its failures counted by a fixed label.

use std::fmt;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, Value};
use tandem_config::RedisTarget;

use crate::metrics::ClusterMetrics;

/// One connection attempt to one server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One answer from the server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A whole command, a reconnection in progress included: nothing waits on Redis longer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Reaching Redis at start, retries included.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts per lost connection (each command on a lost one starts a new round):
/// a short back-off from 100 ms, at most 1 s apart.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// What a command is, as the `command` label of the metrics (see
/// [`crate::cluster::metrics::REDIS_COMMANDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Ping,
    Heartbeat,
    Leave,
    /// The global matchmaker's script, by operation.
    MatchEnqueue,
    MatchCancel,
    MatchAway,
    MatchEnd,
    MatchCooldownOver,
    MatchDropNode,
    MatchLen,
    /// The session mirror (`tandem:s:<sid>`).
    SessionGet,
    SessionSet,
    /// One node's registry entry (`HGET`), when the view does not have it yet.
    NodeEntry,
    /// Is a node in the registry (a session record's home).
    NodeAlive,
    /// A room claimed after its home died.
    RoomClaim,
    /// A batch of changes to chats' journals (one pipeline), and a journal read at a takeover.
    Journal,
    JournalRead,
    /// Where a shared file is stored.
    FileSet,
    FileGet,
    /// Per-address limits counted cluster-wide.
    IpLimit,
}

impl Command {
    pub fn label(self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Heartbeat => "heartbeat",
            Command::Leave => "leave",
            Command::MatchEnqueue => "match_enqueue",
            Command::MatchCancel => "match_cancel",
            Command::MatchAway => "match_away",
            Command::MatchEnd => "match_end",
            Command::MatchCooldownOver => "match_cooldown_over",
            Command::MatchDropNode => "match_drop_node",
            Command::MatchLen => "match_len",
            Command::SessionGet => "session_get",
            Command::SessionSet => "session_set",
            Command::NodeEntry => "node_entry",
            Command::NodeAlive => "node_alive",
            Command::RoomClaim => "room_claim",
            Command::Journal => "journal",
            Command::JournalRead => "journal_read",
            Command::FileSet => "file_set",
            Command::FileGet => "file_get",
            Command::IpLimit => "ip_limit",
        }
    }
}

/// A failed command: its kind (a fixed label) and what Redis or the client said.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: &'static str,
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl Fault {
    fn timeout() -> Fault {
        Fault {
            kind: "timeout",
            message: format!("no answer within {} s", COMMAND_TIMEOUT.as_secs()),
        }
    }

    pub fn response(message: impl Into<String>) -> Fault {
        Fault {
            kind: "response",
            message: message.into(),
        }
    }

    fn from_redis(e: &RedisError) -> Fault {
        Fault {
            kind: error_kind(e),
            message: e.to_string(),
        }
    }
}

/// The fixed label of a client error (see [`crate::cluster::metrics::REDIS_ERROR_KINDS`]).
pub fn error_kind(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "refused"
    } else if e.is_connection_dropped() {
        "dropped"
    } else if e.is_io_error() {
        "io"
    } else {
        match e.kind() {
            ErrorKind::AuthenticationFailed => "auth",
            ErrorKind::ClusterConnectionNotFound => "cluster",
            ErrorKind::Server(_) => "server",
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => "response",
            _ if e.is_cluster_error() => "cluster",
            _ => "other",
        }
    }
}

/// A single server's reconnecting connection, or a Redis Cluster's.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster's Redis. Cheap to clone (the connection is shared and multiplexed).
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    metrics: ClusterMetrics,
}

impl Redis {
    /// Connects and checks that Redis answers. Fails with a clear message (the target without
    /// its password, and why) when it cannot be reached within a few seconds.
    pub async fn connect(target: &RedisTarget, metrics: ClusterMetrics) -> anyhow::Result<Redis> {
        let urls = client_urls(target);
        let connecting = async {
            if target.cluster {
                let client = cluster_builder(urls).build()?;
                Ok::<Conn, RedisError>(Conn::Cluster(client.get_async_connection().await?))
            } else {
                let url = urls.into_iter().next().unwrap_or_default();
                let client = redis::Client::open(url)?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, manager_config()).await?,
                ))
            }
        };
        let conn = match tokio::time::timeout(START_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                anyhow::bail!("cannot reach Redis at {target}: {} ({})", e, error_kind(&e))
            }
            Err(_) => anyhow::bail!(
                "cannot reach Redis at {target}: no connection within {} s",
                START_TIMEOUT.as_secs()
            ),
        };
        let redis = Redis { conn, metrics };
        redis
            .ping()
            .await
            .map_err(|f| anyhow::anyhow!("Redis at {target} does not answer: {f}"))?;
        Ok(redis)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), Fault> {
        let cmd = redis::cmd("PING");
        let mut conn = self.conn.clone();
        self.timed(Command::Ping, async move {
            cmd.query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    /// Runs a Lua script (EVALSHA, loading it again if Redis lost it, e.g. after a restart).
    pub async fn invoke<T: FromRedisValue + Send>(
        &self,
        command: Command,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Fault> {
        let mut conn = self.conn.clone();
        self.timed(command, invocation.invoke_async::<T>(&mut conn))
            .await
    }

    /// One plain command (not a script).
    pub async fn query<T: FromRedisValue + Send>(
        &self,
        command: Command,
        cmd: redis::Cmd,
    ) -> Result<T, Fault> {
        let mut conn = self.conn.clone();
        self.timed(
            command,
            async move { cmd.query_async::<T>(&mut conn).await },
        )
        .await
    }

    /// Several commands in one round trip (their answers ignored).
    pub async fn pipeline(&self, command: Command, pipe: Pipeline) -> Result<(), Fault> {
        let mut conn = self.conn.clone();
        self.timed(
            command,
            async move { pipe.query_async::<()>(&mut conn).await },
        )
        .await
    }

    /// Awaits `fut` for at most [`COMMAND_TIMEOUT`], recording its round trip or its failure.
    async fn timed<T>(
        &self,
        command: Command,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Fault> {
        let started = Instant::now();
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Fault::from_redis(&e)),
            Err(_) => Err(Fault::timeout()),
        };
        match &result {
            Ok(_) => self
                .metrics
                .redis_latency
                .with_label_values(&[command.label()])
                .observe(started.elapsed().as_secs_f64()),
            Err(fault) => self.count(fault),
        }
        result
    }

    /// Counts a failure by its kind.
    pub fn count(&self, fault: &Fault) {
        self.metrics
            .redis_errors
            .with_label_values(&[fault.kind])
            .inc();
    }
}

/// A RESP3 connection whose pushes (pub/sub messages, disconnections) go to a handler: the
/// bus's own (see `bus.rs`).
#[derive(Clone)]
pub enum Resp3 {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Opens a RESP3 connection to `target` whose pushes go to `push` (called on the connection's
/// reading task: it must not block). A single server's connection reconnects and resubscribes
/// by itself; so does a Cluster's.
pub async fn connect_resp3(
    target: &RedisTarget,
    push: impl redis::aio::AsyncPushSender,
) -> Result<Resp3, RedisError> {
    let urls = client_urls(target);
    if target.cluster {
        let client = cluster_builder(urls)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()?;
        Ok(Resp3::Cluster(client.get_async_connection().await?))
    } else {
        let url = urls.into_iter().next().unwrap_or_default();
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
        let redis_info = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_info);
        let client = redis::Client::open(info)?;
        let config = manager_config()
            .set_push_sender(push)
            .set_automatic_resubscription();
        Ok(Resp3::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

/// The target's URLs, with their secrets, for the client (never logged). With TLS, installs the
/// process-wide rustls crypto provider first: tandem builds only `ring` (an error means one is
/// installed already).
fn client_urls(target: &RedisTarget) -> Vec<String> {
    if target.tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    target
        .connection_urls()
        .iter()
        .map(|url| url.expose().to_owned())
        .collect()
}

/// A Cluster client with tandem's timeouts and reconnection back-off.
fn cluster_builder(urls: Vec<String>) -> ClusterClientBuilder {
    ClusterClientBuilder::new(urls)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(RECONNECT_RETRIES as u32)
        .min_retry_wait(RECONNECT_MIN_DELAY.as_millis() as u64)
        .max_retry_wait(RECONNECT_MAX_DELAY.as_millis() as u64)
}

/// A single server's connection manager with tandem's timeouts and reconnection back-off.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_in_the_fixed_sets() {
        for c in [
            Command::Ping,
            Command::Heartbeat,
            Command::Leave,
            Command::MatchEnqueue,
            Command::MatchCancel,
            Command::MatchAway,
            Command::MatchEnd,
            Command::MatchCooldownOver,
            Command::MatchDropNode,
            Command::MatchLen,
            Command::SessionGet,
            Command::SessionSet,
            Command::NodeEntry,
            Command::NodeAlive,
            Command::RoomClaim,
            Command::FileSet,
            Command::FileGet,
            Command::IpLimit,
        ] {
            assert!(crate::cluster::metrics::REDIS_COMMANDS.contains(&c.label()));
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(error_kind(&io), "refused");
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(error_kind(&io), "timeout");
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(crate::cluster::metrics::REDIS_ERROR_KINDS.contains(&error_kind(&io)));
        let parse = RedisError::from((ErrorKind::Parse, "bad"));
        assert_eq!(error_kind(&parse), "response");
        for kind in [Fault::timeout().kind, Fault::response("x").kind] {
            assert!(crate::cluster::metrics::REDIS_ERROR_KINDS.contains(&kind));
        }
    }
}
