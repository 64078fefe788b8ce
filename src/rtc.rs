//! The media plane's I/O: UDP (and ICE-TCP) sockets, worker threads and timers around the
//! sans-I/O [`MediaCore`].
//!
//! `--rtc-udp-workers` threads each own one `MediaCore` and one UDP socket bound to the same
//! port with SO_REUSEPORT. A call lives on one worker (chosen by its id), so forwarding between
//! its two guests never leaves the thread. The kernel spreads incoming datagrams over the
//! sockets by address hash, so a guest's packets may land on another worker: every server ICE
//! ufrag starts with its worker's index, so the first STUN request says where its sender
//! belongs; the receiving worker remembers that and hands such datagrams over in batches. Once
//! a peer's address is known, the workers publish it and a BPF program on the port steers its
//! datagrams to the right socket from then on (`steer.rs`): hand-overs are for the first few.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngCore;
use tandem_media::{MediaConfig, MediaCore, MediaOutput, Protocol, Received, Sample, Transmit};
use tandem_signaling::{MediaCommand, MediaEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::accept::Acceptor;
use crate::hub::{Command, Hub};
use crate::limits::ConnCaps;
use crate::metrics::ConnMetrics;
use crate::supervise::{Beat, Stop, Supervisor};

/// A worker's two inboxes: packets and connections; commands.
type Inboxes = (
    mpsc::Receiver<WorkerMsg>,
    mpsc::UnboundedReceiver<MediaCommand>,
);
use crate::steer::Steering;
use crate::udp::BatchSocket;

/// Commands and handed-over datagrams queued per worker at most.
const WORKER_INBOX: usize = 16_384;
/// Largest ICE-TCP frame accepted (RFC 4571 framing): a media packet, a STUN message or a DTLS
/// record all fit an Ethernet MTU; a longer announced frame closes the connection.
const MAX_TCP_FRAME: usize = 1500;
/// An ICE-TCP connection must send a frame this often (ICE consent checks come every few
/// seconds); the first frame sooner.
const TCP_IDLE: Duration = Duration::from_secs(30);
const TCP_FIRST_FRAME: Duration = Duration::from_secs(10);
/// Once a frame's length has arrived, its bytes must follow within this.
const TCP_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive calls per wake-up at most (each takes several datagrams), so timers and commands
/// are never starved.
const RECV_CALLS: usize = 8;
/// Remote addresses a worker remembers as belonging to another worker.
const MAX_ROUTES: usize = 65_536;
/// Frames queued towards one ICE-TCP connection at most.
const TCP_QUEUE: usize = 256;
/// ICE-TCP connections at most.
const MAX_TCP_CONNS: usize = 4096;
/// How soon events held for a saturated hub are offered again.
const HUB_RETRY: Duration = Duration::from_millis(10);
/// Media events held for a saturated hub at most.
const MAX_PENDING_EVENTS: usize = 4096;
/// How often counters and samples are turned into metrics.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// A worker publishes the addresses its peers sent from for steering (`steer.rs`) when it sees
/// a new one, at most this often…
const STEER_AT_MOST_EVERY: Duration = Duration::from_millis(100);
/// …and forgets those that sent nothing for a whole period of this long.
const STEER_PERIOD: Duration = Duration::from_secs(10);
/// Peer addresses a worker remembers per period at most (a program steers fewer).
const MAX_SEEN: usize = 4 * crate::steer::MAX_STEERED;

/// The media settings the shell needs.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    pub node_ip: Option<IpAddr>,
    pub udp_port: u16,
    pub workers: Option<usize>,
    pub tcp_port: u16,
    pub connect_timeout: Duration,
    pub max_calls: usize,
    /// ICE-TCP connections per client address and in total (its share of the descriptors).
    pub tcp_per_ip: u32,
    pub tcp_total: usize,
}

/// What a worker is fed besides its socket. Commands from the signaling core travel on their
/// own channel ([`MediaPlane::command`]), never behind packets in a queue that may drop.
enum WorkerMsg {
    /// Datagrams another worker received for a peer of this one.
    Handover(Vec<Datagram>),
    /// A new ICE-TCP connection whose first frame named this worker.
    TcpOpen {
        remote: SocketAddr,
        frames: mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        remote: SocketAddr,
    },
}

struct Datagram {
    proto: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

/// Handle to the media workers.
#[derive(Clone)]
pub struct MediaPlane {
    /// Each worker's command channel. Unbounded so that no `Open` or `Close` is ever dropped
    /// (a lost `Close` leaks a call slot): commands come from guests' events, which the
    /// signaling core rate-limits and caps by `--max-calls`, so the queue is bounded upstream.
    commands: Vec<mpsc::UnboundedSender<MediaCommand>>,
    udp_addr: SocketAddr,
}

impl MediaPlane {
    /// The media UDP address browsers send to (`--node-ip` and the media port).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Hands a command from the signaling core to the worker owning its call.
    pub fn command(&self, cmd: MediaCommand) {
        let call = match &cmd {
            MediaCommand::Open { call, .. }
            | MediaCommand::Offer { call, .. }
            | MediaCommand::Answer { call, .. }
            | MediaCommand::Candidate { call, .. }
            | MediaCommand::Close { call } => *call,
        };
        let w = (call.0 % self.commands.len() as u64) as usize;
        if self.commands[w].send(cmd).is_err() {
            tracing::warn!(worker = w, "media worker gone; command dropped");
        }
    }
}

/// The address browsers should send media to when none was configured: the one the kernel
/// would use towards the Internet (a UDP "connect" sends nothing), else loopback.
pub(crate) fn detect_ip() -> IpAddr {
    let probe = || -> io::Result<IpAddr> {
        let s = StdUdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => {
            tracing::warn!("could not detect this host's address; media candidates use 127.0.0.1 (set --node-ip)");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

/// A non-blocking UDP socket on `addr` with SO_REUSEPORT and 4 MiB buffers (media and TURN).
pub(crate) fn reuseport_socket(addr: SocketAddr) -> io::Result<StdUdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    s.set_recv_buffer_size(4 << 20).ok();
    s.set_send_buffer_size(4 << 20).ok();
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds the media sockets and starts the workers. Events go to `hub`.
pub async fn start(
    settings: &RtcSettings,
    hub: Hub,
    metrics: MediaMetrics,
    conn_metrics: ConnMetrics,
    supervisor: &Supervisor,
) -> anyhow::Result<MediaPlane> {
    let node_ip = settings.node_ip.unwrap_or_else(detect_ip);
    let n = settings
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let bind_ip: IpAddr = if node_ip.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    // The first socket picks the port when 0 was asked for; the others join it.
    let first = reuseport_socket(SocketAddr::new(bind_ip, settings.udp_port))
        .with_context(|| format!("cannot bind the media UDP port {}", settings.udp_port))?;
    let port = first.local_addr()?.port();
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(
            reuseport_socket(SocketAddr::new(bind_ip, port))
                .with_context(|| format!("cannot bind media worker socket on UDP port {port}"))?,
        );
    }
    let tcp = if settings.tcp_port == 0 {
        None
    } else {
        let l = TcpListener::bind(SocketAddr::new(bind_ip, settings.tcp_port))
            .await
            .with_context(|| {
                format!("cannot listen on the media TCP port {}", settings.tcp_port)
            })?;
        Some(l)
    };
    let udp_addr = SocketAddr::new(node_ip, port);
    let tcp_addr = tcp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| SocketAddr::new(node_ip, a.port()));

    let mut senders = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    let mut commands = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(WORKER_INBOX);
        senders.push(tx);
        let (ctx, crx) = mpsc::unbounded_channel();
        commands.push(ctx);
        inboxes.push((rx, crx));
    }
    let max_peers = (settings.max_calls * 2).div_ceil(n).max(2);
    // Steering peers' datagrams to their worker's socket: IPv4 only, and only worth it with
    // more than one worker (steer.rs).
    let steering = (n > 1 && bind_ip.is_ipv4()).then(|| Arc::new(Steering::new(n)));
    for (i, (socket, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
        let cfg = MediaConfig {
            worker: i,
            udp_addr,
            tcp_addr,
            connect_timeout: settings.connect_timeout,
            max_peers,
            ..MediaConfig::default()
        };
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let core = MediaCore::new(cfg, seed, Instant::now())
            .map_err(|e| anyhow::anyhow!("media worker {i}: {e}"))?;
        let worker = Worker {
            index: i,
            advertised: udp_addr,
            core,
            peers: senders.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            routes: HashMap::new(),
            tcp: HashMap::new(),
            handover: (0..n).map(|_| Vec::new()).collect(),
            to_hub: VecDeque::new(),
            last: Default::default(),
            last_sizes: Default::default(),
            out: Vec::new(),
            steering: steering.clone(),
            seen: HashSet::new(),
            published: HashSet::new(),
            fresh: false,
            steer_period_end: Instant::now() + STEER_PERIOD,
            last_publish: None,
        };
        supervisor
            .spawn_worker(format!("media-{i}"), "media", move |beat, stop| {
                worker.serve(socket, inbox, beat, stop)
            })
            .context("cannot start a media worker thread")?;
    }
    if let (Some(listener), Some(advertised)) = (tcp, tcp_addr) {
        let caps = ConnCaps::new(settings.tcp_per_ip, settings.tcp_total);
        let acceptor = Acceptor::new(listener, "ice_tcp", caps, conn_metrics);
        supervisor.spawn_task(
            "ice-tcp-accept",
            accept_tcp(acceptor, advertised, senders.clone()),
        );
    }
    tracing::info!(%udp_addr, ?tcp_addr, workers = n, "media listening");
    Ok(MediaPlane { commands, udp_addr })
}

struct Worker {
    index: usize,
    /// The address in our UDP candidate: str0m matches a datagram's destination against it (the
    /// socket itself is bound to the unspecified address, and may sit behind a NAT).
    advertised: SocketAddr,
    core: MediaCore,
    /// Every worker's inbox (including this one's).
    peers: Vec<mpsc::Sender<WorkerMsg>>,
    hub: Hub,
    metrics: MediaMetrics,
    /// Remote addresses whose STUN named another worker.
    routes: HashMap<SocketAddr, usize>,
    /// ICE-TCP connections of this worker's peers.
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Datagrams to hand over, per worker, flushed after each batch.
    handover: Vec<Vec<Datagram>>,
    /// Media events the hub had no room for yet, oldest first.
    to_hub: VecDeque<MediaEvent>,
    last: tandem_media::MediaCounters,
    last_sizes: [(&'static str, usize); 6],
    /// UDP datagrams the core produced in this turn, sent together.
    out: Vec<Transmit>,
    /// The port's steering table, shared by the workers (none with one worker, or IPv6).
    steering: Option<Arc<Steering>>,
    /// Addresses this worker's peers sent from in this steering period…
    seen: HashSet<SocketAddrV4>,
    /// …and those it published.
    published: HashSet<SocketAddrV4>,
    /// A peer address not published yet was seen.
    fresh: bool,
    steer_period_end: Instant,
    last_publish: Option<Instant>,
}

impl Worker {
    /// The worker's loop: its socket, its two inboxes (commands first) and the core's timers,
    /// until the shutdown.
    async fn serve(
        mut self,
        socket: StdUdpSocket,
        (mut inbox, mut commands): Inboxes,
        beat: Beat,
        mut stop: Stop,
    ) {
        let mut socket = match BatchSocket::new(socket) {
            Ok(s) => s,
            Err(e) => {
                // Supervised: the process learns this worker is gone.
                tracing::error!(error = %e, "media worker socket");
                return;
            }
        };
        let mut next_metrics = Instant::now() + METRICS_EVERY;
        loop {
            let mut wake = self
                .core
                .poll_timeout()
                .map_or(next_metrics, |t| t.min(next_metrics));
            if !self.to_hub.is_empty() {
                // Retry the hub soon.
                wake = wake.min(Instant::now() + HUB_RETRY);
            }
            let deadline = tokio::time::Instant::from_std(wake);
            tokio::select! {
                biased;
                () = stop.wait() => return,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let now = Instant::now();
                    self.core.handle_command(cmd, now);
                    while let Ok(cmd) = commands.try_recv() {
                        self.core.handle_command(cmd, now);
                    }
                }
                r = socket.readable() => {
                    if r.is_ok() {
                        self.read_batch(&mut socket);
                    }
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => {
                        self.on_msg(msg);
                        // Take whatever else is queued in the same wake-up.
                        while let Ok(msg) = inbox.try_recv() {
                            self.on_msg(msg);
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            beat.beat(now);
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.flush(&mut socket);
            self.steer(&socket, now);
            if now >= next_metrics {
                next_metrics = now + METRICS_EVERY;
                self.report();
            }
        }
    }

    fn read_batch(&mut self, socket: &mut BatchSocket) {
        socket.recv_batch(RECV_CALLS, |source, data| self.on_datagram(source, data));
        for w in 0..self.handover.len() {
            if !self.handover[w].is_empty() {
                let batch = std::mem::take(&mut self.handover[w]);
                let _ = self.peers[w].try_send(WorkerMsg::Handover(batch));
            }
        }
    }

    fn on_datagram(&mut self, source: SocketAddr, data: &[u8]) {
        let destination = self.advertised;
        let now = Instant::now();
        if self
            .core
            .handle_receive(Protocol::Udp, source, destination, data, now)
            == Received::Handled
        {
            self.saw(source);
            return;
        }
        let owner = match tandem_media::stun_worker(data) {
            Some(w) if w < self.peers.len() => {
                if w != self.index {
                    if self.routes.len() >= MAX_ROUTES {
                        self.routes.clear();
                    }
                    self.routes.insert(source, w);
                }
                Some(w)
            }
            _ => self.routes.get(&source).copied(),
        };
        if let Some(w) = owner.filter(|w| *w != self.index) {
            self.metrics.handovers.inc();
            self.handover[w].push(Datagram {
                proto: Protocol::Udp,
                source,
                destination,
                data: data.to_vec(),
            });
        }
    }

    /// A datagram from `source` was one of this worker's peers'.
    fn saw(&mut self, source: SocketAddr) {
        if let (Some(_), SocketAddr::V4(a)) = (&self.steering, source) {
            if self.seen.len() < MAX_SEEN && self.seen.insert(a) && !self.published.contains(&a) {
                self.fresh = true;
            }
        }
    }

    /// Publishes this worker's peer addresses to the steering table when there is a new one
    /// (at most every [`STEER_AT_MOST_EVERY`]) or a period ended (dropping those gone quiet),
    /// and attaches the table's program if it changed.
    fn steer(&mut self, socket: &BatchSocket, now: Instant) {
        let Some(steering) = &self.steering else {
            return;
        };
        let period_over = now >= self.steer_period_end;
        let may = self
            .last_publish
            .is_none_or(|t| now.saturating_duration_since(t) >= STEER_AT_MOST_EVERY);
        if !(period_over || (self.fresh && may)) {
            return;
        }
        if period_over {
            self.published = std::mem::take(&mut self.seen);
            self.steer_period_end = now + STEER_PERIOD;
        } else {
            self.published.extend(self.seen.iter().copied());
        }
        self.fresh = false;
        self.last_publish = Some(now);
        steering.publish(self.index, self.published.iter().copied().collect());
        if let Err(e) = steering.attach_if_changed(socket) {
            // Datagrams keep going by the kernel's hash, handed over where they must be.
            tracing::warn!(worker = self.index, error = %e, "media: cannot attach the steering program");
            self.steering = None;
        }
    }

    fn on_msg(&mut self, msg: WorkerMsg) {
        let now = Instant::now();
        match msg {
            WorkerMsg::Handover(batch) => {
                for d in batch {
                    // Handed-over datagrams are never handed on again.
                    let handled =
                        self.core
                            .handle_receive(d.proto, d.source, d.destination, &d.data, now);
                    if handled == Received::Handled && d.proto == Protocol::Udp {
                        self.saw(d.source);
                    }
                }
            }
            WorkerMsg::TcpOpen { remote, frames } => {
                if self.tcp.len() < MAX_TCP_CONNS {
                    self.tcp.insert(remote, frames);
                }
            }
            WorkerMsg::TcpClosed { remote } => {
                self.tcp.remove(&remote);
            }
        }
    }

    /// Sends what the core wants sent and passes its events to the hub.
    fn flush(&mut self, socket: &mut BatchSocket) {
        // Events (answers, candidates, connection changes) must reach the hub in order and
        // are not to be lost to a moment of saturation: what does not fit waits, bounded, for
        // the next turn; the worker never blocks on the hub.
        while let Some(out) = self.core.poll_output() {
            match out {
                MediaOutput::Transmit(t) => match t.proto {
                    Protocol::Udp => self.out.push(t),
                    Protocol::Tcp => {
                        if let Some(conn) = self.tcp.get(&t.destination) {
                            let _ = conn.try_send(t.contents.to_vec());
                        }
                    }
                    _ => {}
                },
                MediaOutput::Event(ev) => {
                    if self.to_hub.len() >= MAX_PENDING_EVENTS {
                        tracing::warn!("signaling hub saturated; oldest media event dropped");
                        self.to_hub.pop_front();
                    }
                    self.to_hub.push_back(ev);
                }
            }
        }
        if !self.out.is_empty() {
            socket.send_all(&self.out, |t| (t.destination, &t.contents[..]));
            self.out.clear();
        }
        while let Some(ev) = self.to_hub.pop_front() {
            if let Err(Command::Media(ev)) = self.hub.try_command(Command::Media(ev)) {
                self.to_hub.push_front(ev);
                break;
            }
        }
    }

    fn report(&mut self) {
        let c = self.core.counters();
        self.metrics.apply(&self.last, &c);
        self.last = c;
        let sizes = self.core.sizes();
        self.metrics.sizes.apply("media", &self.last_sizes, &sizes);
        self.last_sizes = sizes;
        let m = &self.metrics;
        self.core.drain_samples(|s| m.sample(s));
        self.core.drain_reports(|r| m.quality.report(&r));
    }
}

/// Accepts ICE-TCP connections (RFC 4571 framing: 16-bit length, then the packet), each under
/// the listener's caps, and hands each to the worker its first STUN request names.
async fn accept_tcp(
    listener: Acceptor,
    advertised: SocketAddr,
    workers: Vec<mpsc::Sender<WorkerMsg>>,
) {
    loop {
        let (stream, remote, admission) = listener.accept(|_| false).await;
        let workers = workers.clone();
        tokio::spawn(async move {
            serve_tcp(stream, remote, advertised, workers).await;
            drop(admission);
        });
    }
}

/// One frame: its length within `idle`, then its bytes within [`TCP_FRAME_TIMEOUT`]. The frame
/// is read into `scratch` and copied out at its exact size: nothing is allocated for it before
/// its bytes have arrived.
async fn read_frame(
    r: &mut (impl AsyncReadExt + Unpin),
    scratch: &mut [u8; MAX_TCP_FRAME],
    idle: Duration,
) -> io::Result<Vec<u8>> {
    let timed_out = |_| io::Error::from(io::ErrorKind::TimedOut);
    let len = tokio::time::timeout(idle, r.read_u16())
        .await
        .map_err(timed_out)?? as usize;
    if len == 0 || len > MAX_TCP_FRAME {
        return Err(io::ErrorKind::InvalidData.into());
    }
    tokio::time::timeout(TCP_FRAME_TIMEOUT, r.read_exact(&mut scratch[..len]))
        .await
        .map_err(timed_out)??;
    Ok(scratch[..len].to_vec())
}

async fn serve_tcp(
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    workers: Vec<mpsc::Sender<WorkerMsg>>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut scratch = [0u8; MAX_TCP_FRAME];
    // The first frame must be a STUN request for one of our peers.
    let Ok(first) = read_frame(&mut rd, &mut scratch, TCP_FIRST_FRAME).await else {
        return;
    };
    let Some(w) = tandem_media::stun_worker(&first).filter(|w| *w < workers.len()) else {
        return;
    };
    let worker = workers[w].clone();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    if worker
        .send(WorkerMsg::TcpOpen { remote, frames: tx })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let Ok(len) = u16::try_from(frame.len()) else {
                continue;
            };
            if wr.write_u16(len).await.is_err() || wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut frame = first;
    loop {
        let d = Datagram {
            proto: Protocol::Tcp,
            source: remote,
            destination: local,
            data: frame,
        };
        if worker.send(WorkerMsg::Handover(vec![d])).await.is_err() {
            break;
        }
        match read_frame(&mut rd, &mut scratch, TCP_IDLE).await {
            Ok(next) => frame = next,
            Err(_) => break,
        }
    }
    writer.abort();
    let _ = worker.send(WorkerMsg::TcpClosed { remote }).await;
}

impl MediaMetrics {
    fn sample(&self, s: Sample) {
        match s {
            Sample::Loss(k, l) => self.loss[k.min(1)].observe(f64::from(l)),
            Sample::Jitter(k, d) => self.jitter[k.min(1)].observe(d.as_secs_f64()),
            Sample::Rtt(k, d) => self.rtt[k.min(1)].observe(d.as_secs_f64()),
            Sample::Bandwidth(bps) => self.bandwidth.observe(bps as f64),
        }
    }
}

/// Call quality across calls: each call leg's figures observed once when the call ends (the
/// leg's average), so that percentiles over these histograms are percentiles across calls.
/// Labels are bounded: `kind` (audio, video), `direction` (in: guest to server, out: server to
/// guest), `candidate` and `transport` of a leg's route.
#[derive(Clone)]
pub struct CallQualityMetrics {
    figures: [prometheus::HistogramVec; 4],
    fps: prometheus::HistogramVec,
    freezes: prometheus::HistogramVec,
    duration: prometheus::Histogram,
    connections: prometheus::IntCounterVec,
}

impl CallQualityMetrics {
    pub fn register(r: &prometheus::Registry) -> Self {
        use prometheus::{Histogram, HistogramOpts, HistogramVec};
        let vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            crate::metrics::reg(
                r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid metric"),
            )
        };
        let kd = &["kind", "direction"][..];
        let m = CallQualityMetrics {
            figures: [
                vec(
                    "tandem_call_quality_loss_ratio",
                    "Per call leg: its average packet loss fraction (RTCP), observed when the call ends",
                    kd,
                    vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
                ),
                vec(
                    "tandem_call_quality_jitter_seconds",
                    "Per call leg: its average interarrival jitter (RTCP), observed when the call ends",
                    kd,
                    vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25],
                ),
                vec(
                    "tandem_call_quality_rtt_seconds",
                    "Per call leg: its average round-trip time (RTCP), observed when the call ends",
                    kd,
                    vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
                ),
                vec(
                    "tandem_call_quality_bitrate_bps",
                    "Per call leg: its average media bitrate, observed when the call ends",
                    kd,
                    vec![16e3, 32e3, 64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6],
                ),
            ],
            fps: vec(
                "tandem_call_quality_fps",
                "Per call leg: its average video frame rate, observed when the call ends",
                &["direction"],
                vec![1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0],
            ),
            freezes: vec(
                "tandem_call_quality_freezes",
                "Per call leg with video: video freezes (no frame for more than 500 ms), observed when the call ends",
                &["direction"],
                vec![0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0],
            ),
            duration: crate::metrics::reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tandem_call_duration_seconds",
                        "Calls from accept to end (media sessions closed)",
                    )
                    .buckets(vec![10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
                )
                .expect("valid metric"),
            ),
            connections: crate::metrics::counter_vec(
                r,
                "tandem_media_connections_total",
                "Call legs whose media connected (or moved to a new route), by the guest's candidate type (host, srflx, prflx, relay) and transport (udp, tcp)",
                &["candidate", "transport"],
            ),
        };
        for kind in tandem_media::KINDS {
            for dir in ["in", "out"] {
                for f in &m.figures {
                    f.with_label_values(&[kind, dir]);
                }
            }
        }
        for dir in ["in", "out"] {
            m.fps.with_label_values(&[dir]);
            m.freezes.with_label_values(&[dir]);
        }
        for c in tandem_media::Route::CANDIDATES {
            for t in tandem_media::Route::TRANSPORTS {
                m.connections.with_label_values(&[c, t]);
            }
        }
        m
    }

    /// Adds the connections one worker's core counted since `last`.
    pub fn connections(
        &self,
        last: &tandem_media::MediaCounters,
        now: &tandem_media::MediaCounters,
    ) {
        for (c, candidate) in tandem_media::Route::CANDIDATES.iter().enumerate() {
            for (t, transport) in tandem_media::Route::TRANSPORTS.iter().enumerate() {
                let d = now.connections[c][t].saturating_sub(last.connections[c][t]);
                if d > 0 {
                    self.connections
                        .with_label_values(&[candidate, transport])
                        .inc_by(d);
                }
            }
        }
    }

    /// A call ended: each leg's figures into the histograms, and one log line for the call.
    pub fn report(&self, r: &tandem_media::CallReport) {
        use tandem_media::{Figure, KINDS};
        const DIRS: [&str; 2] = ["in", "out"];
        self.duration.observe(r.duration.as_secs_f64());
        // The call's figures for the log line: by kind and direction, each leg's average and
        // the worst leg's p95.
        let mut figures = serde_json::Map::new();
        for (k, kind) in KINDS.iter().enumerate() {
            for (d, dir) in DIRS.iter().enumerate() {
                let mut entry = serde_json::Map::new();
                for (f, figure) in Figure::ALL.iter().enumerate() {
                    let mut avgs = Vec::new();
                    let mut p95 = None::<f64>;
                    for leg in &r.legs {
                        let Some(s) = leg.figures[k][d][f] else {
                            continue;
                        };
                        avgs.push(s.avg);
                        p95 = Some(p95.map_or(s.p95, |p| p.max(s.p95)));
                        match figure {
                            Figure::Fps => self.fps.with_label_values(&[dir]).observe(s.avg),
                            _ => self.figures[f]
                                .with_label_values(&[kind, dir])
                                .observe(s.avg),
                        }
                    }
                    if let Some(p95) = p95 {
                        let avg = avgs.iter().sum::<f64>() / avgs.len() as f64;
                        entry.insert(
                            figure.as_str().to_owned(),
                            serde_json::json!({ "avg": round(avg), "p95": round(p95) }),
                        );
                    }
                }
                if k == 1 {
                    let freezes: u32 = r
                        .legs
                        .iter()
                        .filter(|l| l.video[d])
                        .map(|l| l.freezes[d])
                        .sum();
                    for leg in r.legs.iter().filter(|l| l.video[d]) {
                        self.freezes
                            .with_label_values(&[dir])
                            .observe(f64::from(leg.freezes[d]));
                    }
                    if r.legs.iter().any(|l| l.video[d]) {
                        entry.insert("freezes".to_owned(), freezes.into());
                    }
                }
                if !entry.is_empty() {
                    figures.insert(format!("{kind}_{dir}"), entry.into());
                }
            }
        }
        let route = |i: usize| r.legs[i].route.map(|x| x.to_string()).unwrap_or_default();
        tracing::info!(
            target: "tandem::call",
            call = %r.call,
            room = %r.room,
            duration_s = r.duration.as_secs(),
            setup_ms = r.setup.map(|s| s.as_millis() as u64),
            caller = %r.legs[0].guest,
            caller_route = %route(0),
            callee = %r.legs[1].guest,
            callee_route = %route(1),
            figures = %serde_json::Value::Object(figures),
            "call quality"
        );
    }
}

/// Four significant digits are plenty in a log line.
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(3 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

pub use self::own_metrics::MediaMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use crate::metrics::{bump, counter, counter_vec, reg, CoreSizes};
    use prometheus::{
        Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
    };
    use tandem_media::{MediaCounters, KINDS};

    /// Media-plane metrics, registered by [`MediaMetrics::register`]; every media worker adds to
    /// the same series.
    #[derive(Clone)]
    pub struct MediaMetrics {
        pub packets: IntCounterVec,
        pub bytes: IntCounterVec,
        pub nacks: IntCounterVec,
        pub keyframe_requests: IntCounterVec,
        pub ice_failures: IntCounter,
        pub dtls_failures: IntCounter,
        pub peer_panics: IntCounter,
        pub peers: IntGauge,
        pub unrouted: IntCounter,
        pub candidates_refused: IntCounter,
        pub rembs: IntCounter,
        pub handovers: IntCounter,
        /// By kind, indexed as [`tandem_media::KINDS`].
        pub loss: [Histogram; 2],
        pub jitter: [Histogram; 2],
        pub rtt: [Histogram; 2],
        pub bandwidth: Histogram,
        /// Per-call quality, observed once per call (registered by the media plane itself).
        pub quality: crate::rtc::CallQualityMetrics,
        /// The media cores' tables.
        pub sizes: CoreSizes,
    }

    impl MediaMetrics {
        pub fn register(r: &Registry, sizes: CoreSizes) -> Self {
            let counter = |name: &str, help: &str| counter(r, name, help);
            let counter_vec =
                |name: &str, help: &str, labels: &[&str]| counter_vec(r, name, help, labels);
            let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
                reg(
                    r,
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                        .expect("valid metric"),
                )
            };
            let by_kind = |name: &str, help: &str, buckets: Vec<f64>| {
                let vec = reg(
                    r,
                    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["kind"])
                        .expect("valid metric"),
                );
                KINDS.map(|kind| vec.with_label_values(&[kind]))
            };
            let m = MediaMetrics {
                sizes,
                packets: counter_vec(
                    "tandem_media_packets_total",
                    "RTP packets through the SFU, by kind and direction (in: from guests, out: forwarded)",
                    &["kind", "direction"],
                ),
                bytes: counter_vec(
                    "tandem_media_bytes_total",
                    "RTP payload bytes through the SFU, by kind and direction",
                    &["kind", "direction"],
                ),
                nacks: counter_vec(
                    "tandem_media_nacks_total",
                    "NACKs, by direction (received: from guests, served from buffers; sent: to guests for lost packets)",
                    &["direction"],
                ),
                keyframe_requests: counter_vec(
                    "tandem_media_keyframe_requests_total",
                    "Keyframe requests forwarded to senders (pli, fir) or dropped by the 500 ms throttle",
                    &["kind"],
                ),
                ice_failures: counter(
                    "tandem_media_ice_failures_total",
                    "Guests whose media did not connect (or reconnect) in time",
                ),
                dtls_failures: counter(
                    "tandem_media_dtls_failures_total",
                    "Guests whose DTLS handshake failed",
                ),
                peer_panics: counter(
                    "tandem_media_peer_panics_total",
                    "Media peers closed after the WebRTC stack panicked on them (other calls continue)",
                ),
                peers: reg(
                    r,
                    IntGauge::new("tandem_media_peers", "Media peers (guests in calls) now")
                        .expect("valid"),
                ),
                unrouted: counter(
                    "tandem_media_unrouted_packets_total",
                    "RTP packets with no receiver to go to",
                ),
                candidates_refused: counter(
                    "tandem_media_remote_candidates_refused_total",
                    "Remote ICE candidates refused past a call participant's 20 (trickled, or STUN checks from yet another source address, dropped)",
                ),
                rembs: counter(
                    "tandem_media_remb_total",
                    "Receiver ceilings (REMB) sent to video senders: each receiver's downlink estimate (less a margin), which the sender's congestion control obeys",
                ),
                handovers: counter(
                    "tandem_media_handovers_total",
                    "Datagrams that reached another media worker's socket and were handed to the worker owning their call",
                ),
                loss: by_kind(
                    "tandem_media_loss_ratio",
                    "Packet loss fraction from RTCP receiver reports, by kind",
                    vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
                ),
                jitter: by_kind(
                    "tandem_media_jitter_seconds",
                    "Interarrival jitter from RTCP, by kind",
                    vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1],
                ),
                rtt: by_kind(
                    "tandem_media_rtt_seconds",
                    "Round-trip time from RTCP, by kind",
                    vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
                ),
                bandwidth: histogram(
                    "tandem_media_bandwidth_estimate_bps",
                    "Estimated bandwidth towards guests (TWCC)",
                    vec![1e5, 3e5, 5e5, 1e6, 2e6, 5e6, 1e7],
                ),
                quality: crate::rtc::CallQualityMetrics::register(r),
            };
            for kind in KINDS {
                for dir in ["in", "out"] {
                    m.packets.with_label_values(&[kind, dir]);
                    m.bytes.with_label_values(&[kind, dir]);
                }
            }
            for dir in ["received", "sent"] {
                m.nacks.with_label_values(&[dir]);
            }
            for kind in ["pli", "fir", "throttled"] {
                m.keyframe_requests.with_label_values(&[kind]);
            }
            m
        }

        /// Adds what one worker's core counted since `last`.
        pub fn apply(&self, last: &MediaCounters, now: &MediaCounters) {
            for (k, kind) in KINDS.iter().enumerate() {
                for (d, dir) in ["in", "out"].iter().enumerate() {
                    self.packets
                        .with_label_values(&[kind, dir])
                        .inc_by(now.packets[k][d] - last.packets[k][d]);
                    self.bytes
                        .with_label_values(&[kind, dir])
                        .inc_by(now.bytes[k][d] - last.bytes[k][d]);
                }
            }
            bump(
                &self.nacks,
                "received",
                now.nacks_received,
                last.nacks_received,
            );
            bump(&self.nacks, "sent", now.nacks_sent, last.nacks_sent);
            let kf = &self.keyframe_requests;
            bump(kf, "pli", now.plis_forwarded, last.plis_forwarded);
            bump(kf, "fir", now.firs_forwarded, last.firs_forwarded);
            let (t_now, t_last) = (
                now.keyframe_requests_throttled,
                last.keyframe_requests_throttled,
            );
            bump(kf, "throttled", t_now, t_last);
            self.ice_failures
                .inc_by(now.ice_failures - last.ice_failures);
            self.dtls_failures
                .inc_by(now.dtls_failures - last.dtls_failures);
            self.peer_panics.inc_by(now.peer_panics - last.peer_panics);
            self.unrouted
                .inc_by(now.packets_unrouted - last.packets_unrouted);
            self.candidates_refused
                .inc_by(now.candidates_refused - last.candidates_refused);
            self.rembs.inc_by(now.rembs_sent - last.rembs_sent);
            self.quality.connections(last, now);
            self.peers.add(
                (now.peers_created - last.peers_created) as i64
                    - (now.peers_closed - last.peers_closed) as i64,
            );
        }
    }
}
