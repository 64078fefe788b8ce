//! tandem's I/O shell: sockets, tasks, timers and metrics around the sans-I/O cores.

mod accept;
mod auth;
/// Public only for the Redis integration tests (tests/redis.rs); not an API.
#[doc(hidden)]
pub mod cluster;
mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod hub;
mod limits;
mod link;
mod metrics;
mod rtc;
mod serve;
mod sio;
mod steer;
mod supervise;
mod tls;
mod turn;
mod udp;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::Registry;
use rand::RngCore;
use socketioxide::SocketIo;
use tandem_config::Config;
use tokio::net::TcpListener;

/// How long a draining server keeps listening after it closed every socket.
const DRAIN_NOTICE: Duration = Duration::from_secs(1);

/// How long an engine.io session may wait for its Socket.IO connect (socketioxide's default is
/// 45 s; a client sends it right after the handshake).
const SOCKET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the HTTP and Socket.IO layers share.
pub struct App {
    hub: hub::Hub,
    tokens: auth::Tokens,
    origins: limits::OriginPolicy,
    ip_conns: Arc<limits::IpConns>,
    memory: limits::MemoryGuard,
    http_limits: limits::HttpLimits,
    registry: Registry,
    signaling_metrics: metrics::SignalingMetrics,
    http_metrics: metrics::HttpMetrics,
    /// Shared files and their limits.
    files: Arc<files::Files>,
    /// The bundled TURN server's credential minter (None when TURN is off).
    turn: Option<turn::TurnAccess>,
    draining: AtomicBool,
    next_conn: AtomicU64,
    /// Worker threads and background tasks, for `/readyz` and the shutdown.
    supervisor: Arc<supervise::Supervisor>,
    /// The nodes sharing one Redis (`--redis-url`); `None` for a single node.
    cluster: Option<cluster::Cluster>,
    /// `--guest-creations-per-min`, counted cluster-wide too with `--redis-url`.
    creations_per_min: u32,
}

fn turn_settings(
    c: &Config,
    node_ip: std::net::IpAddr,
    media_addr: SocketAddr,
    fds: limits::FdBudget,
) -> turn::TurnSettings {
    let secret = match &c.turn_secret {
        Some(s) => s.expose().as_bytes().to_vec(),
        None => {
            tracing::info!("no --turn-secret (TANDEM_TURN_SECRET) given: TURN credentials use a random one made at start");
            let mut s = [0u8; 32];
            rand::rng().fill_bytes(&mut s);
            s.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes()
        }
    };
    let cidrs = |nets: &[tandem_config::IpNet]| {
        nets.iter()
            .filter_map(|n| tandem_turn::Cidr::new(n.network(), n.prefix_len()))
            .collect()
    };
    turn::TurnSettings {
        node_ip,
        relay_ips: c.turn_relay_ip.clone(),
        open_relay: c.turn_open_relay,
        port: c.turn_port,
        tls_port: c.turn_tls_port,
        cert: c.turn_cert.clone(),
        key: c.turn_key.clone(),
        relay_ports: (c.turn_relay_ports.min, c.turn_relay_ports.max),
        realm: c.turn_realm.trim().to_owned(),
        secret,
        credential_ttl: c.turn_credential_ttl(),
        allow_peers: cidrs(&c.turn_allow_peer),
        deny_peers: cidrs(&c.turn_deny_peer),
        allow_loopback_peers: c.turn_allow_loopback_peers,
        max_allocations_per_user: c.turn_max_allocations_per_user as usize,
        max_allocations: c.turn_max_allocations as usize,
        max_permissions: c.turn_max_permissions as usize,
        max_bytes_per_sec: c.turn_max_bytes_per_sec,
        workers: c.turn_udp_workers,
        media_addr,
        streams_per_ip: c.max_stream_connections_per_ip,
        max_streams: fds.turn_streams,
        max_relays: fds.turn_relays,
    }
}

/// Serves until `shutdown` resolves, then drains: refuses new work, tells clients, closes
/// their sockets and lets in-flight requests finish (bounded by `shutdown_grace_secs`).
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let secret = match &cfg.jwt_secret {
        Some(s) => s.expose().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "no --jwt-secret (TANDEM_JWT_SECRET) given: using a random one; tokens will not survive a restart"
            );
            let mut s = vec![0u8; 32];
            rand::rng().fill_bytes(&mut s);
            s
        }
    };
    let registry = Registry::new();
    let signaling_metrics = metrics::SignalingMetrics::register(&registry);
    let http_metrics = metrics::HttpMetrics::register(&registry);
    let conn_metrics = metrics::ConnMetrics::register(&registry);
    let supervisor = supervise::Supervisor::new(metrics::worker_panics(&registry));
    let core_sizes = metrics::CoreSizes::register(&registry);
    metrics::register_process(
        &registry,
        cfg.memory_budget_bytes(),
        cfg.file_storage_bytes(),
    );
    // Redis first: a node that cannot reach it must not start (nor bind anything).
    let cluster = match cfg.redis()? {
        Some(target) => {
            Some(cluster::Cluster::connect(&target, cfg.node_name.as_deref(), &registry).await?)
        }
        None => None,
    };
    let open_files = raise_open_files_limit();
    conn_metrics
        .open_files_limit
        .set(i64::try_from(open_files).unwrap_or(i64::MAX));
    let fds = limits::FdBudget::from_limit(open_files);
    tracing::info!(
        open_files,
        http = fds.http,
        turn_streams = fds.turn_streams,
        turn_relays = fds.turn_relays,
        ice_tcp = fds.ice_tcp,
        "descriptor budget"
    );
    let (layer, io) = SocketIo::builder()
        .max_payload(cfg.max_message_bytes)
        .ws_max_message_size(cfg.max_message_bytes as usize)
        .ws_max_frame_size(cfg.max_message_bytes as usize)
        .max_buffer_size(1024)
        // tungstenite zero-fills its whole read buffer before every read, so all of it is
        // resident per connection: 1 KiB holds a typical chat frame (a larger one is read in
        // several calls) at a quarter of the default's memory and memset.
        .ws_read_buffer_size(1024)
        // A dead client is noticed within pingInterval + pingTimeout; a chat message's ack is
        // awaited twice that (a live socket's ack delayed by TCP retransmissions still counts;
        // a message without an ack stays queued for the receiver's next socket anyway).
        .ping_interval(cfg.ping_interval())
        .ping_timeout(cfg.ping_timeout())
        .ack_timeout(2 * (cfg.ping_interval() + cfg.ping_timeout()))
        // A handshake whose Socket.IO connect never comes (or was refused) is closed after this.
        .connect_timeout(SOCKET_CONNECT_TIMEOUT)
        .build_layer();
    let media_metrics = metrics::MediaMetrics::register(&registry, core_sizes.clone());
    let files = Arc::new(files::Files::new(
        files::FileSettings {
            max_size: cfg.max_file_size,
            ttl: cfg.file_ttl(),
            uploads_per_min: cfg.file_uploads_per_min,
            bytes_per_hour: cfg.file_bytes_per_hour,
            storage_budget: cfg.file_storage_bytes(),
            dir: cfg.file_dir.clone(),
            max_voice_ms: cfg.max_voice_secs.saturating_mul(1000),
            key: [b"tandem-file-urls:".as_slice(), &secret].concat(),
        },
        metrics::FileMetrics::register(&registry),
    )?);
    supervisor.spawn_task("file-sweeper", files::sweeper(files.clone()));
    // In a cluster: the bus (a Redis connection of its own) and the Redis worker's queue.
    let link = match &cluster {
        Some(c) => {
            let (bus, incoming) = c.bus(cluster::BusSettings::default()).await?;
            let (link, jobs, journal) = link::Link::new(c, bus);
            Some((link, incoming, (jobs, journal)))
        }
        None => None,
    };
    let (link, jobs) = match link {
        Some((link, incoming, jobs)) => (Some((link, incoming)), Some(jobs)),
        None => (None, None),
    };
    let worker_link = link.as_ref().map(|(l, _)| l.clone());
    // This node's share of the live statistics, for its registry entry (the hub updates it).
    let shared_stats = link.as_ref().map(|(l, _)| l.stats()).unwrap_or_default();
    let (hub, hub_task) = hub::spawn(
        cfg.signaling_core(),
        io.clone(),
        signaling_metrics.clone(),
        core_sizes.clone(),
        files.clone(),
        link,
    );
    if let (Some(c), Some(l), Some((jobs, journal))) = (&cluster, worker_link, jobs) {
        supervisor.spawn_task(
            "cluster-journal",
            link::journal_writer(journal, c.clone(), hub.clone()),
        );
        let mm = c.matchmaker(cluster::MatchSettings::default());
        supervisor.spawn_task(
            "cluster-worker",
            link::worker(jobs, l.clone(), c.clone(), mm.clone(), hub.clone()),
        );
        supervisor.spawn_task(
            "cluster-departures",
            link::watch_departures(c.clone(), l, mm),
        );
    }
    let node_ip = cfg.node_ip.unwrap_or_else(rtc::detect_ip);
    let plane = rtc::start(
        &rtc::RtcSettings {
            node_ip: Some(node_ip),
            udp_port: cfg.rtc_udp_port,
            workers: cfg.rtc_udp_workers,
            tcp_port: cfg.rtc_tcp_port,
            connect_timeout: cfg.call_connect_timeout(),
            max_calls: cfg.max_calls,
            tcp_per_ip: cfg.max_stream_connections_per_ip,
            tcp_total: fds.ice_tcp,
        },
        hub.clone(),
        media_metrics,
        conn_metrics.clone(),
        &supervisor,
    )
    .await?;
    let media_addr = plane.udp_addr();
    hub.send(hub::Command::AttachMedia(plane)).await;
    let turn = if cfg.turn_enabled {
        let access = turn::start(
            turn_settings(&cfg, node_ip, media_addr, fds),
            metrics::TurnMetrics::register(&registry, core_sizes.clone()),
            conn_metrics.clone(),
            &supervisor,
        )
        .await?;
        hub.send(hub::Command::AttachTurn(access.clone())).await;
        Some(access)
    } else {
        None
    };
    let app = Arc::new(App {
        hub,
        tokens: auth::Tokens::new(&secret),
        origins: limits::OriginPolicy::new(cfg.dev, &cfg.allowed_origin),
        ip_conns: limits::IpConns::new(cfg.max_connections_per_ip),
        memory: limits::MemoryGuard::new(cfg.memory_budget_bytes()),
        http_limits: limits::HttpLimits::new(
            cfg.http_requests_per_min,
            cfg.guest_creations_per_min,
            cfg.socket_handshakes_per_min,
        ),
        registry,
        signaling_metrics,
        http_metrics,
        files,
        turn,
        draining: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        supervisor: supervisor.clone(),
        cluster: cluster.clone(),
        creations_per_min: cfg.guest_creations_per_min,
    });
    sio::setup(&io, app.clone());
    supervisor.spawn_task("housekeeping", housekeeping(app.clone()));
    if let Some(cluster) = cluster.clone() {
        // This node's per-address connection counts expire unless refreshed (a dead node's go).
        let conns = app.ip_conns.clone();
        supervisor.spawn_task("cluster-connections", async move {
            let mut every = tokio::time::interval(cluster::CONN_REFRESH);
            loop {
                every.tick().await;
                cluster.refresh_conns(&conns.addresses()).await;
            }
        });
    }

    let metrics_apart = cfg.metrics_bind.is_some();
    let router = http::router(app.clone(), !metrics_apart)
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            http::socketio_handshakes,
        ));
    let listener = TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    if let Some(at) = cfg.metrics_bind {
        let metrics_listener = TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen on --metrics-bind {at}"))?;
        let metrics_addr = metrics_listener.local_addr()?;
        tracing::info!(addr = %metrics_addr, "metrics listening");
        let metrics_router = http::metrics_router(app.clone());
        supervisor.spawn_task("metrics-listener", async move {
            if let Err(e) = axum::serve(metrics_listener, metrics_router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    if let Some(cluster) = &cluster {
        cluster
            .join(
                &supervisor,
                cluster::Membership {
                    http: cluster::advertised_http(addr, node_ip),
                    media: media_addr,
                    turn: app.turn.as_ref().map(|t| {
                        let (ip, port, tls_port) = t.endpoint();
                        cluster::TurnEndpoint { ip, port, tls_port }
                    }),
                    load: node_load(app.signaling_metrics.clone(), shared_stats.clone()),
                },
            )
            .await?;
    }
    tracing::info!(
        %addr,
        dev = cfg.dev,
        node_name = cluster.as_ref().map_or("", |c| c.node_name()),
        "tandem listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = serve::serve(
        accept::Acceptor::new(
            listener,
            "http",
            limits::ConnCaps::new(cfg.max_http_connections_per_ip, fds.http),
            conn_metrics.clone(),
        ),
        router,
        serve::ServeSettings {
            header_timeout: Duration::from_secs(cfg.http_header_timeout_secs),
            body_timeout: Duration::from_secs(cfg.http_body_timeout_secs),
            trusted: Arc::new(serve::TrustedProxies::new(cfg.trusted_proxy.clone())),
        },
        async move {
            let _ = stop_rx.await;
        },
    );
    let grace = cfg.shutdown_grace();
    let drain = async move {
        shutdown.await;
        // Out of the registry first, so that no other node sends anything here any more.
        if let Some(cluster) = &cluster {
            cluster.leave().await;
            // The nodes it shares chats with take them over before its guests reconnect.
            app.hub.begin_drain().await;
        }
        tracing::info!("shutting down: refusing new work, closing sockets");
        app.draining.store(true, Ordering::Relaxed);
        let _ = io.emit("server:shutdown", &serde_json::json!({})).await;
        io.close().await;
        // Keep answering (healthz 503, new work refused) for a moment so that load balancers
        // and reconnecting clients see the drain, then stop listening.
        tokio::time::sleep(DRAIN_NOTICE.min(grace)).await;
        let _ = stop_tx.send(());
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = serve => {}
        () = drain => tracing::warn!("in-flight requests did not finish within the shutdown grace; exiting"),
        // The hub owns all signaling state: if it is gone (a bug made it panic), serving on
        // would only refuse everything. Exit non-zero so a supervisor restarts a clean process.
        r = hub_task => anyhow::bail!("the signaling hub stopped: {}", match r {
            Ok(()) => "its inbox closed".to_owned(),
            Err(e) => e.to_string(),
        }),
        // A worker thread or background task died: same reasoning.
        f = supervisor.fatal() => anyhow::bail!("{}", f.0),
    }
    // Every worker and background task is told to stop, and joined.
    supervisor.shutdown(grace).await;
    tracing::info!("bye");
    Ok(())
}

/// Reads this node's load for the cluster registry from the signaling gauges.
fn node_load(
    m: metrics::SignalingMetrics,
    stats: Arc<std::sync::Mutex<tandem_signaling::wire::Stats>>,
) -> Box<dyn Fn() -> cluster::NodeLoad + Send + Sync> {
    Box::new(move || {
        let sum = |vec: &prometheus::IntGaugeVec, labels: &[&str]| -> u64 {
            labels
                .iter()
                .map(|l| vec.with_label_values(&[l]).get().max(0) as u64)
                .sum()
        };
        cluster::NodeLoad {
            sockets: m.sockets_connected.get().max(0) as u64,
            guests: sum(&m.guests, &["searching", "in_chat", "online", "idle"]),
            calls: sum(&m.calls, &["ringing", "connecting", "connected"]),
            stats: stats.lock().map(|s| *s).unwrap_or_default(),
        }
    })
}

/// Raises the soft limit on open files to the hard limit (every socket, TURN relay and
/// connection is a descriptor) and returns the limit in force.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                tracing::info!(from = soft, to = hard, "raised the open-files limit");
                return hard;
            }
            tracing::info!(limit = soft, "open-files limit");
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            0
        }
    }
}

/// Memory readings and limiter sweeps.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let rss = app.memory.refresh();
        app.signaling_metrics.resident_memory.set(rss as i64);
        n += 1;
        if n.is_multiple_of(60) {
            app.http_limits.sweep();
        }
    }
}
