//! Accepting TCP connections the same way on every listener (HTTP, TURN TCP/TLS, ICE-TCP):
//! an accept error (`EMFILE` when the descriptors run out) is counted and backed off instead
//! of spun on, and each connection is admitted under its listener's caps (per client address
//! and in total) or closed at once, counted.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::limits::{Admission, ConnCaps};
use crate::metrics::ConnMetrics;

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
