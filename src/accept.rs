//! Accepting TCP connections the same way on every listener (HTTP, TURN TCP/TLS, ICE-TCP):
//! an accept error (`EMFILE` when the descriptors run out) is counted and backed off instead
//! of spun on, and each connection is admitted under its listener's caps (per client address
//! and in total) or closed at once, counted.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::limits::{Admission, ConnCaps};

/// Pause after an accept error, so a full descriptor table is not spun on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener with its caps.
pub struct Acceptor {
    listener: TcpListener,
    /// `listener` label of the metrics: `http`, `turn`, `ice_tcp`.
    name: &'static str,
    caps: ConnCaps,
    metrics: ConnMetrics,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        caps: ConnCaps,
        metrics: ConnMetrics,
    ) -> Self {
        Acceptor {
            listener,
            name,
            caps,
            metrics,
        }
    }

    /// The next admitted connection (Nagle off). `uncounted(ip)`: true for addresses not
    /// capped per address (trusted proxies).
    pub async fn accept(
        &self,
        uncounted: impl Fn(IpAddr) -> bool,
    ) -> (TcpStream, SocketAddr, Admission) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    self.metrics
                        .accept_errors
                        .with_label_values(&[self.name, accept_error_kind(&e)])
                        .inc();
                    tracing::warn!(listener = self.name, error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let ip = Some(peer.ip()).filter(|ip| !uncounted(*ip));
            match self.caps.try_admit(ip) {
                Ok(admission) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer, admission);
                }
                Err(refusal) => {
                    self.metrics
                        .connections_refused
                        .with_label_values(&[self.name, refusal.label()])
                        .inc();
                }
            }
        }
    }
}

fn accept_error_kind(e: &io::Error) -> &'static str {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE | Errno::ENFILE) => "descriptors",
        _ => "other",
    }
}

pub use self::own_metrics::ConnMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use crate::metrics::{counter_vec, reg};
    use prometheus::{IntCounterVec, IntGauge, Registry};

    /// Every TCP listener's admission: refused connections and accept errors, by listener.
    #[derive(Clone)]
    pub struct ConnMetrics {
        pub connections_refused: IntCounterVec,
        pub accept_errors: IntCounterVec,
        pub open_files_limit: IntGauge,
    }

    impl ConnMetrics {
        pub fn register(r: &Registry) -> Self {
            let m = ConnMetrics {
                connections_refused: counter_vec(
                    r,
                    "tandem_connections_refused_total",
                    "TCP connections closed at accept, by listener (http, turn, ice_tcp) and reason (per_ip: the client address holds its share; total: the listener holds its share of the descriptors)",
                    &["listener", "reason"],
                ),
                accept_errors: counter_vec(
                    r,
                    "tandem_accept_errors_total",
                    "Failed accepts, by listener and kind (descriptors: EMFILE/ENFILE); the listener backs off after each",
                    &["listener", "kind"],
                ),
                open_files_limit: reg(
                    r,
                    IntGauge::new(
                        "tandem_open_files_limit",
                        "The process's soft RLIMIT_NOFILE after start-up raised it to the hard limit",
                    )
                    .expect("valid metric"),
                ),
            };
            for listener in ["http", "turn", "ice_tcp"] {
                for reason in ["per_ip", "total"] {
                    m.connections_refused.with_label_values(&[listener, reason]);
                }
                for kind in ["descriptors", "other"] {
                    m.accept_errors.with_label_values(&[listener, kind]);
                }
            }
            m
        }
    }
}
