//! The bundled TURN server's I/O: the UDP port (one SO_REUSEPORT socket per worker thread), the
//! TCP and TLS listeners, one UDP relay socket per allocation, and the timer, around the sans-I/O
//! [`tandem_turn::Server`].
//!
//! Each of `--turn-udp-workers` threads runs a current-thread runtime with one loop (a
//! [`Worker`], like the media workers in `rtc.rs`) that owns one TURN core and every socket of
//! the allocations it made, and waits on all of them at once, so relaying a packet never takes a
//! lock, crosses a task or a thread: the kernel hashes a client's datagrams to one worker's socket by address, and a TCP or
//! TLS connection is handed to one worker when accepted. The total allocation quota is counted
//! per worker; allocations per guest are counted across workers ([`UserQuota`], taken once per
//! Allocate, never per packet).
//!
//! By default the only peer a relay may reach is tandem's own media address (the SFU is the
//! only WebRTC peer a guest has); `--turn-open-relay` makes a general relay. Either way every
//! address of the host itself is refused. Credentials are minted per call and revoked a minute
//! after the call ends (`TurnAccess::revoke`), which every worker hears on its control channel.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::RngCore;
use tandem_turn::{
    channel_data_header, channel_data_padding, frame_len, rest_credentials, BindError,
    ClientSocket, Counters, Family, Output, PeerToClient, RelayPort, Server, Transport,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;

use crate::accept::Acceptor;
use crate::limits::{Admission, ConnCaps};
use crate::metrics::ConnMetrics;
use crate::supervise::{Beat, Stop, Supervisor};
use crate::tls::MovableTcp;

/// Largest datagram read (a TURN message or ChannelData frame is at most 64 KiB).
const MAX_DATAGRAM: usize = 65_536;
/// A TCP/TLS client's receive buffer to begin with; it grows only when a frame's header
/// announces a longer frame (up to the largest TURN frame), so idle connections stay small.
const STREAM_BUF: usize = 2048;
/// Once a frame has begun, the rest of it must arrive within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A TCP/TLS client with no allocation must send something this often.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client with an allocation: at most the longest allocation lifetime between frames (it
/// must Refresh within that anyway).
const IDLE_WITH_ALLOCATION: Duration = Duration::from_secs(3600);
/// Bytes kept free in front of a relay read for the ChannelData header.
const HEADROOM: usize = 4;
/// Datagrams handled per wake-up at most, so timers and other sockets are not starved.
const RECV_BATCH: usize = 64;
/// TCP/TLS connections per worker at most.
const MAX_STREAMS: usize = 4096;
/// Frames queued towards one TCP/TLS client at most; past that they are dropped.
const STREAM_QUEUE: usize = 512;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting to be taken by a worker at most.
const WORKER_INBOX: usize = 1024;
/// How often counters become metrics.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Control messages (revocations) waiting for one worker at most; senders wait for room, so
/// none is lost.
const CONTROL_QUEUE: usize = 4096;
/// How long a call's TURN credentials and allocations outlive the call.
pub const CALL_GRACE: Duration = Duration::from_secs(60);

/// The TURN settings the shell needs (from the validated config).
#[derive(Debug, Clone)]
pub struct TurnSettings {
    pub node_ip: IpAddr,
    /// Addresses of the relayed addresses: at most one IPv4 and one IPv6 (`node_ip` if empty).
    pub relay_ips: Vec<IpAddr>,
    /// A general relay instead of one that reaches only `media_addr`.
    pub open_relay: bool,
    pub port: u16,
    pub tls_port: u16,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub relay_ports: (u16, u16),
    pub realm: String,
    pub secret: Vec<u8>,
    pub credential_ttl: Duration,
    pub allow_peers: Vec<tandem_turn::Cidr>,
    pub deny_peers: Vec<tandem_turn::Cidr>,
    pub allow_loopback_peers: bool,
    pub max_allocations_per_user: usize,
    pub max_allocations: usize,
    pub max_permissions: usize,
    pub max_bytes_per_sec: u64,
    pub workers: Option<usize>,
    /// tandem's own media address (IP and UDP port): always a permitted peer, on that port only.
    pub media_addr: SocketAddr,
    /// TCP/TLS clients per client address and in total (TURN's share of the descriptors).
    pub streams_per_ip: u32,
    pub max_streams: usize,
    /// Relay sockets in total (TURN's share of the descriptors); split over the workers.
    pub max_relays: usize,
}

/// What the HTTP side and the hub need: minting and revoking TURN credentials.
#[derive(Clone)]
pub struct TurnAccess {
    urls: Vec<String>,
    /// Where this server listens (`--node-ip`, the bound TURN and TLS ports; TLS 0 when off).
    endpoint: (IpAddr, u16, u16),
    secret: Vec<u8>,
    ttl: Duration,
    controls: Vec<mpsc::Sender<Control>>,
}

impl TurnAccess {
    /// The `turn:`/`turns:` URLs guests get.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The address in the URLs, the UDP/TCP port and the TLS port (0: no TLS), for the
    /// cluster's node registry.
    pub fn endpoint(&self) -> (IpAddr, u16, u16) {
        self.endpoint
    }

    /// REST credentials (username, password) for guest `session` in call `call`: valid for the
    /// configured TTL at most, and until [`CALL_GRACE`] after the call ends.
    pub fn credentials(&self, session: &str, call: &str) -> (String, String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        rest_credentials(&self.secret, session, Some(call), now + self.ttl.as_secs())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The call `call` ended: its credentials stop working, and its allocations end, after
    /// [`CALL_GRACE`]. Every worker is told; the sends wait for room (never dropped).
    pub fn revoke(&self, call: &str) {
        let at = Instant::now() + CALL_GRACE;
        let controls = self.controls.clone();
        let grant: Box<str> = call.into();
        tokio::spawn(async move {
            for tx in controls {
                let _ = tx
                    .send(Control::Revoke {
                        grant: grant.clone(),
                        at,
                    })
                    .await;
            }
        });
    }
}

/// A worker's control messages (separate from connections and packets).
enum Control {
    Revoke { grant: Box<str>, at: Instant },
}

/// Allocations per guest across every worker (the core counts per worker only). Taken when an
/// allocation is bound, released when it is freed: a lock per Allocate, none per packet.
pub struct UserQuota {
    limit: usize,
    held: Mutex<HashMap<Box<str>, usize>>,
}

impl UserQuota {
    fn new(limit: usize) -> UserQuota {
        UserQuota {
            limit,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(&self, user: &str) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(user.into()).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, user: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(user);
            }
        }
    }
}

/// Every address of this host's interfaces (for the peer filter's always-denied list), plus
/// the unspecified and loopback ones.
fn host_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv6Addr::UNSPECIFIED.into(),
        Ipv4Addr::LOCALHOST.into(),
        Ipv6Addr::LOCALHOST.into(),
    ];
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            for a in addrs {
                let Some(sa) = a.address else { continue };
                let ip = if let Some(v4) = sa.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = sa.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; TURN refuses only the configured ones")
        }
    }
    out
}

/// A TCP or TLS client handed to a worker, with its place under the listener's caps.
enum Incoming {
    Tcp {
        stream: std::net::TcpStream,
        remote: SocketAddr,
        admission: Admission,
    },
    /// Handshake done on the main runtime; the stream is detached (see [`MovableTcp`]).
    Tls {
        stream: Box<TlsStream<MovableTcp>>,
        remote: SocketAddr,
        admission: Admission,
    },
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The `turn:` (UDP, TCP) and `turns:` (unless `tls_port` is 0) URLs of a TURN server at `ip`:
/// this node's, or (in a cluster) another node's, from its registry entry.
pub fn urls(ip: IpAddr, port: u16, tls_port: u16) -> Vec<String> {
    let h = host(ip);
    let mut urls = vec![
        format!("turn:{h}:{port}?transport=udp"),
        format!("turn:{h}:{port}?transport=tcp"),
    ];
    if tls_port != 0 {
        urls.push(format!("turns:{h}:{tls_port}?transport=tcp"));
    }
    urls
}

/// Binds the TURN ports and starts the workers; returns the credential minter.
pub async fn start(
    settings: TurnSettings,
    metrics: TurnMetrics,
    conn_metrics: ConnMetrics,
    supervisor: &Supervisor,
) -> anyhow::Result<TurnAccess> {
    let n = settings
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let bind_ip: IpAddr = if settings.node_ip.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // UDP and TCP share the port number; with 0, the TCP listener picks it and UDP follows.
    let tcp = TcpListener::bind(SocketAddr::new(bind_ip, settings.port))
        .await
        .with_context(|| format!("cannot listen on the TURN TCP port {}", settings.port))?;
    let port = tcp.local_addr()?.port();
    let mut udp = Vec::with_capacity(n);
    for _ in 0..n {
        udp.push(
            crate::rtc::reuseport_socket(SocketAddr::new(bind_ip, port))
                .with_context(|| format!("cannot bind the TURN UDP port {port}"))?,
        );
    }
    let tls = if settings.tls_port == 0 {
        None
    } else {
        let names = vec![settings.node_ip.to_string(), "localhost".to_owned()];
        let (config, source) =
            crate::tls::server_config(settings.cert.as_deref(), settings.key.as_deref(), &names)?;
        if source == crate::tls::CertSource::SelfSigned {
            tracing::warn!(
                "TURN over TLS uses a self-signed certificate made at start; set --turn-cert and --turn-key for one clients can verify"
            );
        }
        let l = TcpListener::bind(SocketAddr::new(bind_ip, settings.tls_port))
            .await
            .with_context(|| format!("cannot listen on the TURN TLS port {}", settings.tls_port))?;
        Some((l, tokio_rustls::TlsAcceptor::from(config)))
    };
    let tls_port = match &tls {
        Some((l, _)) => l.local_addr()?.port(),
        None => 0,
    };
    if settings.allow_loopback_peers {
        tracing::warn!("--turn-allow-loopback-peers is on: TURN may relay to this host's loopback; for tests only");
    }
    if settings.open_relay {
        tracing::warn!("--turn-open-relay is on: any guest in a call may relay UDP to any address the deny list allows, not only to tandem's media port");
    }
    let own = host_addresses();
    tracing::info!(
        addresses = own.len(),
        "TURN refuses this host's own addresses as peers"
    );

    let urls = urls(settings.node_ip, port, tls_port);
    let quota = Arc::new(UserQuota::new(settings.max_allocations_per_user));
    let mut inboxes = Vec::with_capacity(n);
    let mut controls = Vec::with_capacity(n);
    for (i, socket) in udp.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(WORKER_INBOX);
        inboxes.push(tx);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        controls.push(control_tx);
        let core = core_for(&settings, own.clone(), n)?;
        let metrics = metrics.clone();
        let quota = quota.clone();
        let channels = Channels {
            inbox: rx,
            control: control_rx,
        };
        supervisor
            .spawn_worker(format!("turn-{i}"), "turn", move |beat, stop| {
                worker(i, core, socket, channels, metrics, quota, beat, stop)
            })
            .context("starting a TURN worker thread")?;
    }
    let access = TurnAccess {
        urls,
        endpoint: (settings.node_ip, port, tls_port),
        secret: settings.secret.clone(),
        ttl: settings.credential_ttl,
        controls,
    };
    // TCP and TLS clients share TURN's caps.
    let caps = ConnCaps::new(settings.streams_per_ip, settings.max_streams);
    let tcp = Acceptor::new(tcp, "turn", caps.clone(), conn_metrics.clone());
    supervisor.spawn_task("turn-tcp-accept", accept_loop(tcp, None, inboxes.clone()));
    if let Some((l, acceptor)) = tls {
        let l = Acceptor::new(l, "turn", caps, conn_metrics);
        supervisor.spawn_task("turn-tls-accept", accept_loop(l, Some(acceptor), inboxes));
    }
    tracing::info!(
        udp = port,
        tcp = port,
        tls = tls_port,
        relay_ports = %format!("{}-{}", settings.relay_ports.0, settings.relay_ports.1),
        workers = n,
        "TURN listening"
    );
    Ok(access)
}

fn core_for(s: &TurnSettings, host: Vec<IpAddr>, workers: usize) -> anyhow::Result<Server> {
    let always_allow = vec![s.media_addr];
    let relay_ips = if s.relay_ips.is_empty() {
        vec![s.node_ip]
    } else {
        s.relay_ips.clone()
    };
    let cfg = tandem_turn::Config {
        realm: s.realm.clone(),
        auth_secret: s.secret.clone(),
        relay_ipv4: relay_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }),
        relay_ipv6: relay_ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        }),
        port_range: s.relay_ports.0..=s.relay_ports.1,
        // Each allocation is a relay socket: no more than the workers' share of descriptors.
        max_allocations: s.max_allocations.min((s.max_relays / workers).max(1)),
        max_allocations_per_user: s.max_allocations_per_user,
        max_permissions_per_allocation: s.max_permissions,
        bytes_per_sec_per_allocation: Some(s.max_bytes_per_sec),
        allow_peers: s.allow_peers.clone(),
        deny_peers: s.deny_peers.clone(),
        allow_loopback_peers: s.allow_loopback_peers,
        always_allow,
        open_relay: s.open_relay,
        host_addresses: host,
        revoked_grant_memory: s.credential_ttl + CALL_GRACE,
        ..tandem_turn::Config::default()
    };
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Server::new(cfg, seed, Instant::now(), unix_ms).map_err(|e| anyhow::anyhow!("TURN core: {e}"))
}

/// Accepts TCP (or TLS) connections and deals them to the workers in turn. TLS handshakes run
/// here, on the main runtime, each within [`HANDSHAKE_TIMEOUT`]: a slow or hostile handshake
/// never holds a relay thread.
async fn accept_loop(
    listener: Acceptor,
    tls: Option<tokio_rustls::TlsAcceptor>,
    workers: Vec<mpsc::Sender<Incoming>>,
) {
    let mut next = 0usize;
    loop {
        let (stream, remote, admission) = listener.accept(|_| false).await;
        let w = next % workers.len();
        next = next.wrapping_add(1);
        let worker = workers[w].clone();
        match &tls {
            None => {
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                let incoming = Incoming::Tcp {
                    stream,
                    remote,
                    admission,
                };
                if worker.try_send(incoming).is_err() {
                    tracing::debug!(worker = w, "TURN worker busy; connection dropped");
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(MovableTcp::Attached(stream));
                    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await
                    {
                        Ok(Ok(s)) => s,
                        _ => {
                            tracing::debug!(%remote, "TURN TLS handshake failed or timed out");
                            return;
                        }
                    };
                    if stream.get_mut().0.detach().is_err() {
                        return;
                    }
                    let incoming = Incoming::Tls {
                        stream: Box::new(stream),
                        remote,
                        admission,
                    };
                    if worker.try_send(incoming).is_err() {
                        tracing::debug!(worker = w, "TURN worker busy; connection dropped");
                    }
                });
            }
        }
    }
}

/// What a worker is fed besides its sockets.
struct Channels {
    inbox: mpsc::Receiver<Incoming>,
    control: mpsc::Receiver<Control>,
}

/// Anything a TCP or TLS client's bytes come through.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// One TURN worker: the only owner of its core and of every socket its allocations and
/// clients use. One loop waits for all of them at once (the client UDP socket, the relay
/// sockets and TCP/TLS readers in [`Worker::waits`], new connections, control messages and the
/// core's next deadline), handles what is ready, and carries out what the core asks; nothing
/// is shared with another task, so no packet takes a lock or crosses a channel.
struct Worker {
    index: usize,
    core: Server,
    quota: Arc<UserQuota>,
    /// The client socket; bound to the unspecified address, it answers each client from the
    /// address the client wrote to.
    udp: crate::udp::ReplySocket,
    relays: HashMap<u16, Relay>,
    /// Each TCP/TLS client's writer.
    streams: HashMap<SocketAddr, Writer>,
    bind_ip_v4: IpAddr,
    bind_ip_v6: IpAddr,
    /// Relay sockets and TCP/TLS readers waiting for bytes; only those woken are polled.
    waits: FuturesUnordered<Wait>,
    /// Receive buffer for the client UDP socket and relay sockets, with room in front for a
    /// ChannelData header.
    buf: Vec<u8>,
    metrics: TurnMetrics,
    last: Counters,
    last_sizes: [(&'static str, usize); 7],
}

struct Relay {
    socket: Rc<RelaySocket>,
    /// The guest whose [`UserQuota`] it holds.
    user: Box<str>,
}

/// A TCP/TLS client's write side: frames go to its writer task, which is aborted when the
/// client is closed.
struct Writer {
    frames: mpsc::Sender<Vec<u8>>,
    task: AbortHandle,
}

/// An allocation's relay socket, with what it takes to stop waiting for it when the
/// allocation ends (its wait would otherwise hold the port until a datagram came).
struct RelaySocket {
    socket: UdpSocket,
    closed: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl RelaySocket {
    fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A TCP or TLS client's read side, between reads owned by the worker and during one by
/// its [`Wait`].
struct StreamReader {
    client: ClientSocket,
    rd: ReadHalf<Box<dyn Io>>,
    /// Grows up to the largest frame (a 64 KiB message, or ChannelData with its header and
    /// padding) only when a frame needs it.
    buf: Vec<u8>,
    filled: usize,
    /// When the frame under way must be complete.
    frame_deadline: Option<tokio::time::Instant>,
    /// The deadline of the read under way (the frame's, or the idle limit).
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Its place under the listener's caps, given back when the reader is dropped.
    _admission: Admission,
}

/// One thing the worker waits for.
enum Wait {
    /// A relay socket becoming readable.
    Relay { port: u16, relay: Rc<RelaySocket> },
    /// One read of a TCP/TLS client, within its deadline.
    Stream(Option<Box<StreamReader>>),
}

/// What a [`Wait`] ends with.
enum Ready {
    Relay {
        port: u16,
        relay: Rc<RelaySocket>,
    },
    RelayClosed,
    /// The reader with the bytes it read (`None`: the client closed, failed or timed out).
    Stream(Box<StreamReader>, Option<usize>),
}

impl Future for Wait {
    type Output = Ready;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Ready> {
        match self.get_mut() {
            Wait::Relay { port, relay } => {
                if relay.closed.get() {
                    return Poll::Ready(Ready::RelayClosed);
                }
                match relay.socket.poll_recv_ready(cx) {
                    Poll::Ready(_) => Poll::Ready(Ready::Relay {
                        port: *port,
                        relay: relay.clone(),
                    }),
                    Poll::Pending => {
                        relay.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                }
            }
            Wait::Stream(slot) => {
                let Some(r) = slot.as_mut() else {
                    // Polled again after it finished: FuturesUnordered never does this.
                    return Poll::Pending;
                };
                let r = &mut **r;
                let mut read = ReadBuf::new(&mut r.buf[r.filled..]);
                let n = match Pin::new(&mut r.rd).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if !read.filled().is_empty() => Some(read.filled().len()),
                    // End of stream or an error.
                    Poll::Ready(_) => None,
                    Poll::Pending => match r.sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => None,
                        Poll::Pending => return Poll::Pending,
                    },
                };
                let Some(reader) = slot.take() else {
                    return Poll::Pending;
                };
                Poll::Ready(Ready::Stream(reader, n))
            }
        }
    }
}

/// One TURN worker's loop, until the shutdown.
#[allow(clippy::too_many_arguments)]
async fn worker(
    index: usize,
    core: Server,
    udp: StdUdpSocket,
    channels: Channels,
    metrics: TurnMetrics,
    quota: Arc<UserQuota>,
    beat: Beat,
    stop: Stop,
) {
    let udp = match crate::udp::ReplySocket::new(udp) {
        Ok(s) => s,
        Err(e) => {
            // Supervised: the process learns this worker is gone.
            tracing::error!(error = %e, worker = index, "TURN UDP socket unusable");
            return;
        }
    };
    let worker = Worker {
        index,
        core,
        quota,
        udp,
        relays: HashMap::new(),
        streams: HashMap::new(),
        bind_ip_v4: Ipv4Addr::UNSPECIFIED.into(),
        bind_ip_v6: Ipv6Addr::UNSPECIFIED.into(),
        waits: FuturesUnordered::new(),
        buf: vec![0u8; HEADROOM + MAX_DATAGRAM],
        metrics,
        last: Counters::default(),
        last_sizes: Default::default(),
    };
    worker.serve(channels, beat, stop).await;
}

impl Worker {
    async fn serve(mut self, channels: Channels, beat: Beat, mut stop: Stop) {
        let Channels {
            mut inbox,
            mut control,
        } = channels;
        let mut next_metrics = Instant::now() + METRICS_EVERY;
        loop {
            let wake = self
                .core
                .poll_timeout()
                .map_or(next_metrics, |t| t.min(next_metrics));
            let deadline = tokio::time::Instant::from_std(wake);
            // Not biased: a busy client socket must not starve the relay sockets, or the
            // other way round.
            tokio::select! {
                () = stop.wait() => return,
                ctl = control.recv() => match ctl {
                    Some(Control::Revoke { grant, at }) => {
                        self.core.handle_grant_revoked(&grant, at, Instant::now());
                    }
                    None => return,
                },
                r = self.udp.readable() => {
                    if r.is_ok() {
                        self.read_client_udp();
                    }
                }
                Some(ready) = self.waits.next(), if !self.waits.is_empty() => {
                    self.on_ready(ready);
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => self.on_incoming(msg),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            beat.beat(now);
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.drain();
            if now >= next_metrics {
                next_metrics = now + METRICS_EVERY;
                self.report();
            }
        }
    }

    /// TURN messages and ChannelData from UDP clients.
    fn read_client_udp(&mut self) {
        for _ in 0..RECV_BATCH {
            let (n, from) = match self.udp.try_recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let client = ClientSocket {
                addr: from,
                transport: Transport::Udp,
            };
            let data = &self.buf[..n];
            if let Some((port, peer, range)) =
                self.core.handle_client_input(data, client, Instant::now())
            {
                if let (Some(payload), Some(relay)) = (data.get(range), self.relays.get(&port.0)) {
                    let _ = relay.socket.socket.try_send_to(payload, peer);
                }
            }
        }
    }

    fn on_ready(&mut self, ready: Ready) {
        match ready {
            Ready::Relay { port, relay } => {
                if relay.closed.get() {
                    return;
                }
                self.read_relay(RelayPort(port), &relay);
                // Wait for its next datagrams.
                self.waits.push(Wait::Relay { port, relay });
            }
            Ready::RelayClosed => {}
            Ready::Stream(reader, Some(n)) => self.on_stream_bytes(reader, n),
            Ready::Stream(reader, None) => self.close_stream(reader.client),
        }
    }

    /// One allocation's relay socket: datagrams from peers go back to the client.
    fn read_relay(&mut self, port: RelayPort, relay: &RelaySocket) {
        for _ in 0..RECV_BATCH {
            let (n, peer) = match relay.socket.try_recv_from(&mut self.buf[HEADROOM..]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let hit = self.core.handle_peer_input(
                &self.buf[HEADROOM..HEADROOM + n],
                port,
                peer,
                Instant::now(),
            );
            let Some(PeerToClient { client, channel }) = hit else {
                continue;
            };
            let Some(header) = channel_data_header(channel, n) else {
                continue;
            };
            self.buf[..HEADROOM].copy_from_slice(&header);
            let frame = &self.buf[..HEADROOM + n];
            match client.transport {
                Transport::Udp => {
                    let _ = self.udp.try_send_to(frame, client.addr);
                }
                Transport::Tcp | Transport::Tls => {
                    if let Some(w) = self.streams.get(&client.addr) {
                        let mut v = Vec::with_capacity(frame.len() + 3);
                        v.extend_from_slice(frame);
                        v.resize(frame.len() + channel_data_padding(n), 0);
                        let _ = w.frames.try_send(v);
                    }
                }
            }
        }
    }

    /// A TCP or TLS client handed over by the acceptor: its writer runs as its own task, its
    /// reads are waited for here.
    fn on_incoming(&mut self, msg: Incoming) {
        if self.streams.len() >= MAX_STREAMS {
            return;
        }
        let (io, remote, admission, transport): (Box<dyn Io>, _, _, _) = match msg {
            Incoming::Tcp {
                stream,
                remote,
                admission,
            } => {
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                    return;
                };
                (Box::new(stream), remote, admission, Transport::Tcp)
            }
            Incoming::Tls {
                mut stream,
                remote,
                admission,
            } => {
                // Onto this worker's reactor.
                if stream.get_mut().0.attach().is_err() {
                    return;
                }
                (stream, remote, admission, Transport::Tls)
            }
        };
        let (rd, mut wr) = tokio::io::split(io);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        let task = tokio::task::spawn_local(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        })
        .abort_handle();
        if let Some(old) = self.streams.insert(remote, Writer { frames: tx, task }) {
            old.task.abort();
        }
        let reader = Box::new(StreamReader {
            client: ClientSocket {
                addr: remote,
                transport,
            },
            rd,
            buf: vec![0u8; STREAM_BUF],
            filled: 0,
            frame_deadline: None,
            sleep: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _admission: admission,
        });
        self.arm_stream(reader);
    }

    /// Waits for the client's next bytes: the frame under way must complete by its deadline,
    /// otherwise the client must send something within its idle limit.
    fn arm_stream(&mut self, mut reader: Box<StreamReader>) {
        let deadline = reader.frame_deadline.unwrap_or_else(|| {
            let idle = if self.core.allocation_of(&reader.client).is_some() {
                IDLE_WITH_ALLOCATION
            } else {
                IDLE_TIMEOUT
            };
            tokio::time::Instant::now() + idle
        });
        reader.sleep.as_mut().reset(deadline);
        self.waits.push(Wait::Stream(Some(reader)));
    }

    /// Splits what a TCP/TLS client sent into TURN messages and ChannelData frames.
    fn on_stream_bytes(&mut self, mut reader: Box<StreamReader>, n: usize) {
        let r = &mut *reader;
        r.filled += n;
        let client = r.client;
        let mut start = 0usize;
        let mut need = 0usize;
        loop {
            let len = match frame_len(&r.buf[start..r.filled]) {
                Ok(Some(len)) if start + len <= r.filled => len,
                // A frame that could never fit: not a client worth reading further.
                Ok(Some(len)) if len > MAX_DATAGRAM + 8 => return self.close_stream(client),
                Ok(Some(len)) => {
                    need = len;
                    break;
                }
                Ok(None) => break,
                // Not TURN: nothing on this connection can be understood any more.
                Err(_) => return self.close_stream(client),
            };
            let frame = &r.buf[start..start + len];
            if let Some((port, peer, range)) =
                self.core.handle_client_input(frame, client, Instant::now())
            {
                if let (Some(payload), Some(relay)) = (frame.get(range), self.relays.get(&port.0)) {
                    let _ = relay.socket.socket.try_send_to(payload, peer);
                }
            }
            start += len;
        }
        r.buf.copy_within(start..r.filled, 0);
        r.filled -= start;
        if need > r.buf.len() {
            r.buf.resize(need, 0);
        }
        r.frame_deadline = match (r.filled, r.frame_deadline) {
            (0, _) => None,
            // A frame has begun: its clock runs from its first byte, not from each read.
            (_, None) => Some(tokio::time::Instant::now() + FRAME_TIMEOUT),
            // The old frame ended and a new one began within this read.
            (_, Some(_)) if start > 0 => Some(tokio::time::Instant::now() + FRAME_TIMEOUT),
            (_, d) => d,
        };
        self.arm_stream(reader);
    }

    /// The client is gone (or no longer worth serving): its allocation ends with it.
    /// (Its reader, and with it the client's place under the caps, is dropped by the caller.)
    fn close_stream(&mut self, client: ClientSocket) {
        if let Some(w) = self.streams.remove(&client.addr) {
            w.task.abort();
        }
        self.core.handle_client_disconnected(client, Instant::now());
    }

    /// Carries out everything the core asked for.
    fn drain(&mut self) {
        let now = Instant::now();
        while let Some(cmd) = self.core.poll_output() {
            match cmd {
                Output::SendToClient { to, bytes } => self.send_to_client(to, bytes),
                Output::CreateAllocation { port, family, user } => {
                    let result = if self.quota.acquire(&user) {
                        let bound = self.bind_relay(port, family, user.clone());
                        if bound.is_err() {
                            self.quota.release(&user);
                        }
                        bound
                    } else {
                        Err(BindError::UserQuota)
                    };
                    self.core.handle_allocation_bound(port, result, now);
                }
                Output::FreeAllocation { port } => {
                    if let Some(relay) = self.relays.remove(&port.0) {
                        relay.socket.close();
                        self.quota.release(&relay.user);
                    }
                }
            }
        }
    }

    fn send_to_client(&mut self, to: ClientSocket, bytes: Vec<u8>) {
        match to.transport {
            Transport::Udp => {
                let _ = self.udp.try_send_to(&bytes, to.addr);
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(w) = self.streams.get(&to.addr) {
                    let _ = w.frames.try_send(bytes);
                }
            }
        }
    }

    fn bind_relay(
        &mut self,
        port: RelayPort,
        family: Family,
        user: Box<str>,
    ) -> Result<(), BindError> {
        let ip = match family {
            Family::V4 => self.bind_ip_v4,
            Family::V6 => self.bind_ip_v6,
        };
        let socket = StdUdpSocket::bind(SocketAddr::new(ip, port.0))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .and_then(UdpSocket::from_std);
        let socket = match socket {
            Ok(socket) => Rc::new(RelaySocket {
                socket,
                closed: Cell::new(false),
                waker: Cell::new(None),
            }),
            Err(e) => {
                tracing::debug!(port = port.0, error = %e, worker = self.index, "TURN relay port unavailable");
                return Err(BindError::PortUnavailable);
            }
        };
        self.waits.push(Wait::Relay {
            port: port.0,
            relay: socket.clone(),
        });
        if let Some(old) = self.relays.insert(port.0, Relay { socket, user }) {
            old.socket.close();
            self.quota.release(&old.user);
        }
        Ok(())
    }

    /// Counters and table sizes to metrics.
    fn report(&mut self) {
        let now = self.core.counters();
        self.metrics.apply(&self.last, &now);
        self.last = now;
        let sizes = self.core.sizes();
        self.metrics.sizes.apply("turn", &self.last_sizes, &sizes);
        self.last_sizes = sizes;
    }
}

pub use self::own_metrics::TurnMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use crate::metrics::{bump, counter, counter_vec, reg, CoreSizes};
    use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

    /// The bundled TURN server's metrics: live (every second), summed over the TURN workers.
    #[derive(Clone)]
    pub struct TurnMetrics {
        pub allocations: IntGauge,
        pub allocations_total: IntCounterVec,
        pub auth_failures: IntCounterVec,
        pub peers_denied: IntCounter,
        pub relayed_packets: IntCounterVec,
        pub relayed_bytes: IntCounterVec,
        pub quota_refusals: IntCounterVec,
        pub dropped: IntCounterVec,
        pub requests: IntCounter,
        pub error_responses: IntCounter,
        /// The TURN cores' tables.
        pub sizes: CoreSizes,
    }

    impl TurnMetrics {
        pub fn register(r: &Registry, sizes: CoreSizes) -> Self {
            TurnMetrics {
                sizes,
                allocations: reg(
                    r,
                    IntGauge::new("tandem_turn_allocations", "TURN allocations active")
                        .expect("valid metric"),
                ),
                allocations_total: counter_vec(
                    r,
                    "tandem_turn_allocations_total",
                    "TURN allocations by event: created, expired (lifetime ran out), deleted (refresh 0 or connection closed), revoked (their call ended)",
                    &["event"],
                ),
                auth_failures: counter_vec(
                    r,
                    "tandem_turn_auth_failures_total",
                    "TURN requests refused for authentication, by reason (missing is every client's first step)",
                    &["reason"],
                ),
                peers_denied: counter(
                    r,
                    "tandem_turn_peers_denied_total",
                    "TURN peer addresses refused by the peer filter",
                ),
                relayed_packets: counter_vec(
                    r,
                    "tandem_turn_relayed_packets_total",
                    "Packets relayed by TURN, by direction, client transport and framing",
                    &["direction", "transport", "framing"],
                ),
                relayed_bytes: counter_vec(
                    r,
                    "tandem_turn_relayed_bytes_total",
                    "Payload bytes relayed by TURN, by direction, client transport and framing",
                    &["direction", "transport", "framing"],
                ),
                quota_refusals: counter_vec(
                    r,
                    "tandem_turn_quota_refusals_total",
                    "TURN requests refused by a quota: user (allocations per user, 486), capacity (508)",
                    &["quota"],
                ),
                dropped: counter_vec(
                    r,
                    "tandem_turn_dropped_total",
                    "TURN input dropped, by reason",
                    &["reason"],
                ),
                requests: counter(r, "tandem_turn_requests_total", "TURN requests answered"),
                error_responses: counter(
                    r,
                    "tandem_turn_error_responses_total",
                    "TURN error responses sent",
                ),
            }
        }

        /// Adds one worker's counter deltas since `last`.
        pub fn apply(&self, last: &tandem_turn::Counters, now: &tandem_turn::Counters) {
            use tandem_turn::{Direction, RelayKind, Transport};
            self.allocations
                .add(now.allocations_active as i64 - last.allocations_active as i64);
            bump(
                &self.allocations_total,
                "created",
                now.allocations_created,
                last.allocations_created,
            );
            bump(
                &self.allocations_total,
                "expired",
                now.allocations_expired,
                last.allocations_expired,
            );
            bump(
                &self.allocations_total,
                "deleted",
                now.allocations_deleted,
                last.allocations_deleted,
            );
            bump(
                &self.allocations_total,
                "revoked",
                now.allocations_revoked,
                last.allocations_revoked,
            );
            bump(
                &self.auth_failures,
                "revoked",
                now.auth_revoked,
                last.auth_revoked,
            );
            bump(
                &self.auth_failures,
                "missing",
                now.auth_missing,
                last.auth_missing,
            );
            bump(
                &self.auth_failures,
                "bad_integrity",
                now.auth_bad_integrity,
                last.auth_bad_integrity,
            );
            bump(
                &self.auth_failures,
                "unknown_user",
                now.auth_unknown_user,
                last.auth_unknown_user,
            );
            bump(
                &self.auth_failures,
                "stale_nonce",
                now.auth_stale_nonce,
                last.auth_stale_nonce,
            );
            bump(
                &self.auth_failures,
                "wrong_credentials",
                now.auth_wrong_credentials,
                last.auth_wrong_credentials,
            );
            self.peers_denied
                .inc_by(now.peers_denied - last.peers_denied);
            for (dir, dname) in [
                (Direction::ClientToPeer, "client_to_peer"),
                (Direction::PeerToClient, "peer_to_client"),
            ] {
                for t in Transport::ALL {
                    for (kind, kname) in [
                        (RelayKind::ChannelData, "channel_data"),
                        (RelayKind::Indication, "indication"),
                    ] {
                        let (a, b) = (now.relayed(dir, t, kind), last.relayed(dir, t, kind));
                        if a.packets > b.packets {
                            let labels = [dname, t.as_str(), kname];
                            self.relayed_packets
                                .with_label_values(&labels)
                                .inc_by(a.packets - b.packets);
                            self.relayed_bytes
                                .with_label_values(&labels)
                                .inc_by(a.bytes - b.bytes);
                        }
                    }
                }
            }
            bump(
                &self.quota_refusals,
                "user",
                now.quota_user,
                last.quota_user,
            );
            bump(
                &self.quota_refusals,
                "capacity",
                now.quota_capacity,
                last.quota_capacity,
            );
            bump(
                &self.dropped,
                "malformed",
                now.malformed_dropped,
                last.malformed_dropped,
            );
            bump(
                &self.dropped,
                "no_permission",
                now.no_permission_dropped,
                last.no_permission_dropped,
            );
            bump(
                &self.dropped,
                "unroutable",
                now.unroutable_dropped,
                last.unroutable_dropped,
            );
            bump(
                &self.dropped,
                "rate_limited",
                now.rate_limited_dropped,
                last.rate_limited_dropped,
            );
            bump(
                &self.dropped,
                "queue_full",
                now.queue_full_dropped,
                last.queue_full_dropped,
            );
            bump(
                &self.dropped,
                "bind_failed",
                now.bind_failures,
                last.bind_failures,
            );
            bump(
                &self.dropped,
                "unauthenticated_rate",
                now.unauth_dropped,
                last.unauth_dropped,
            );
            self.requests.inc_by(now.requests - last.requests);
            self.error_responses
                .inc_by(now.error_responses - last.error_responses);
        }
    }
}
