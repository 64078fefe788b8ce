//! The HTTP listener, hardened for the open internet: hyper's HTTP/1 server with a timer (a
//! client must send a request's headers within `header_timeout`, which is also how long an
//! idle keep-alive connection is kept), request bodies that stall for `body_timeout` dropped,
//! open connections capped per client address (an IPv4 address or an IPv6 /64) and in total
//! (HTTP's share of the descriptors), accept errors backed off ([`crate::accept`]), and a
//! graceful drain.
//!
//! Behind a reverse proxy every visitor arrives from the proxy's address: requests from
//! `--trusted-proxy` networks are attributed to the client their `Forwarded` /
//! `X-Forwarded-For` header names (the request's `ConnectInfo<SocketAddr>` is that client), and
//! the proxy's own connections are not capped per address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::{HeaderMap, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tandem_config::IpNet;
use tokio::sync::watch;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::accept::Acceptor;

/// How the listener treats connections.
pub struct ServeSettings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub trusted: Arc<TrustedProxies>,
}

/// Serves `router` on `acceptor` until `stop` resolves; then tells every open connection to
/// finish its request and close, and returns once all have.
pub async fn serve(
    acceptor: Acceptor,
    router: Router,
    settings: ServeSettings,
    stop: impl std::future::Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        // A trusted proxy carries many clients: it is not capped as one.
        let (stream, peer, admission) = tokio::select! {
            () = &mut stop => break,
            a = acceptor.accept(|ip| settings.trusted.contains(ip)) => a,
        };
        let settings = settings.clone();
        let router = router.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let body_timeout = settings.body_timeout;
            let trusted = settings.trusted.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = trusted.client(peer, req.headers());
                let req = crate::http::lean_handshake(req);
                let mut req = req.map(|b| Body::new(TimeoutBody::new(body_timeout, b)));
                req.extensions_mut().insert(ConnectInfo(client));
                let router = router.clone();
                async move { router.oneshot(req).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let shutting_down = async move {
                // The watch guard must not live across an await: only whether it fired.
                let _ = shutdown.wait_for(|down| *down).await.map(|_| ());
                shutdown
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                rx = shutting_down => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                    drop(rx);
                }
            }
            drop(admission);
        });
    }
    drop(acceptor);
    let _ = shutdown_tx.send(true);
    drop(shutdown_rx);
    // Every connection task holds a receiver: closed once the last one is done.
    shutdown_tx.closed().await;
}

/// The `--trusted-proxy` networks.
#[derive(Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client a request from `peer` is for: `peer` itself unless it is a trusted proxy;
    /// then the nearest untrusted address of the forwarding chain (`Forwarded: for=`, else
    /// `X-Forwarded-For`), read from the right, the proxy's own end.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.nets.is_empty() || !self.contains(peer.ip()) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        let mut client = None;
        for ip in chain.iter().rev() {
            client = Some(*ip);
            if !self.contains(*ip) {
                break;
            }
        }
        client.map_or(peer, |ip| SocketAddr::new(ip, 0))
    }
}

/// The addresses a request was forwarded for, first (the original client) to last. A chain
/// with anything unparsable in it is ignored as a whole (the proxy's own address counts).
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        let mut out = Vec::new();
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let for_ = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            });
            match for_.and_then(parse_forwarded_node) {
                Some(ip) => out.push(ip),
                None => return Vec::new(),
            }
        }
        return out;
    }
    let mut out = Vec::new();
    for v in headers.get_all("x-forwarded-for").iter() {
        let Ok(v) = v.to_str() else { return Vec::new() };
        for part in v.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => out.push(ip),
                Err(_) => return Vec::new(),
            }
        }
    }
    out
}

/// A `Forwarded` node: `192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]"`, `"[2001:db8::1]:4711"`.
fn parse_forwarded_node(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let host = match v.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.9.9.9")]);
        assert_eq!(
            t.client(proxy, &xff).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // From an untrusted peer the header is ignored: a client cannot pick its own address.
        assert_eq!(t.client(stranger, &xff), stranger);
        // Spoofed entries left of the last untrusted one do not count.
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            t.client(proxy, &spoofed).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // RFC 7239 wins over X-Forwarded-For, with quoted IPv6 and ports.
        let fwd = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=10.2.2.2",
            ),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(
            t.client(proxy, &fwd).ip(),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // Garbage: the proxy itself.
        let bad = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(t.client(proxy, &bad), proxy);
        assert_eq!(t.client(proxy, &HeaderMap::new()), proxy);
        // Nothing trusted: never read.
        assert_eq!(TrustedProxies::default().client(proxy, &xff), proxy);
    }
}
