//! Admission limits that live in the shell: connections per IP, the memory budget, HTTP token
//! buckets and the origin policy. Per-guest event limits live in the signaling core.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tandem_signaling::{ClientKey, SessionId};

/// Who a per-address limit counts: an IPv4 address, or the /64 an IPv6 address is in (one
/// IPv6 host usually holds a whole /64, so counting single addresses would not limit it).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// The signaling core's key for a client address: its [`limit_key`] as 128 bits (an IPv4
/// address in its IPv4-mapped IPv6 form).
pub fn client_key(ip: IpAddr) -> ClientKey {
    ClientKey(match limit_key(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    })
}

/// Open connections per client address ([`limit_key`]).
pub struct IpConns {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection counted by [`IpConns`]; it stops counting when dropped.
pub struct IpSlot {
    conns: Arc<IpConns>,
    key: IpAddr,
}

impl IpSlot {
    /// The address it counts for ([`limit_key`]).
    pub fn key(&self) -> IpAddr {
        self.key
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.conns.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl IpConns {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `ip`, unless it already holds `max`: the check and the
    /// count are one step, so connections arriving at once cannot slip past the limit.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = limit_key(ip);
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            conns: self.clone(),
            key,
        })
    }

    /// The limit per address.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The addresses ([`limit_key`]) with open connections.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.open
            .lock()
            .map_or_else(|_| Vec::new(), |m| m.keys().copied().collect())
    }

    /// Addresses with open connections.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.open.lock().map_or(0, |m| m.len())
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    /// The client address holds its share already.
    PerIp,
    /// The listener holds its share of the descriptors already.
    Total,
}

impl CapRefusal {
    pub fn label(self) -> &'static str {
        match self {
            CapRefusal::PerIp => "per_ip",
            CapRefusal::Total => "total",
        }
    }
}

/// Open connections of one listener: capped per client address and in total (the total is
/// the listener's share of the file descriptors, so no single path can take those the others
/// need).
#[derive(Clone)]
pub struct ConnCaps {
    per_ip: Arc<IpConns>,
    total: Arc<tokio::sync::Semaphore>,
}

/// A connection's place under [`ConnCaps`]; freed when dropped.
pub struct Admission {
    _slot: Option<IpSlot>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnCaps {
    pub fn new(per_ip: u32, total: usize) -> Self {
        ConnCaps {
            per_ip: IpConns::new(per_ip),
            total: Arc::new(tokio::sync::Semaphore::new(total)),
        }
    }

    /// Admits a connection from `ip` (`ip` `None`: not counted per address, e.g. a trusted
    /// proxy), or says which cap it hit.
    pub fn try_admit(&self, ip: Option<IpAddr>) -> Result<Admission, CapRefusal> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| CapRefusal::Total)?;
        let slot = match ip {
            Some(ip) => Some(self.per_ip.try_open(ip).ok_or(CapRefusal::PerIp)?),
            None => None,
        };
        Ok(Admission {
            _slot: slot,
            _permit: permit,
        })
    }
}

/// How the process's file descriptors are shared out, from the open-files limit: half for
/// HTTP and Socket.IO, an eighth each for TURN TCP/TLS streams, TURN relay sockets and
/// ICE-TCP, the rest for everything else (listeners, the media sockets, logs, Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub http: usize,
    pub turn_streams: usize,
    pub turn_relays: usize,
    pub ice_tcp: usize,
}

impl FdBudget {
    pub fn from_limit(nofile: u64) -> FdBudget {
        let n = usize::try_from(nofile).unwrap_or(usize::MAX).min(1 << 24);
        FdBudget {
            http: (n / 2).max(16),
            turn_streams: (n / 8).max(4),
            turn_relays: (n / 8).max(4),
            ice_tcp: (n / 8).max(4),
        }
    }
}

/// Resident memory against the configured budget; refreshed by a shell task.
pub struct MemoryGuard {
    budget: u64,
    rss: AtomicU64,
}

impl MemoryGuard {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            rss: AtomicU64::new(0),
        }
    }

    /// Past 80% of the budget, new connections and guests are refused with `server_busy`.
    pub fn busy(&self) -> bool {
        self.rss.load(Ordering::Relaxed) > self.budget / 5 * 4
    }

    pub fn refresh(&self) -> u64 {
        let rss = resident_bytes().unwrap_or(0);
        self.rss.store(rss, Ordering::Relaxed);
        rss
    }
}

/// Resident set size of this process (Linux `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// HTTP token buckets.
pub struct HttpLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_guest: DefaultKeyedRateLimiter<SessionId>,
    creations: DefaultKeyedRateLimiter<IpAddr>,
    /// Engine.io handshakes per client address.
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    /// Handshakes over that limit still let through to be refused in Socket.IO's words.
    handshake_refusals: DefaultKeyedRateLimiter<IpAddr>,
}

/// How long until a refused request may be retried.
pub struct RetryAfter(pub Duration);

/// What becomes of an engine.io handshake (a new Socket.IO connection attempt).
pub enum Handshake {
    /// Within the client address's budget.
    Allowed,
    /// Over it: the handshake goes on and the Socket.IO connect is refused with `rate_limited`
    /// (the request carries [`OverHandshakeLimit`]), so that the client learns why.
    Refuse,
    /// Over it by as many again within the window: HTTP 429 at once, no engine.io session.
    Drop(RetryAfter),
}

/// Marks an engine.io handshake over its address's limit (a request extension, kept in the
/// socket's request parts for the Socket.IO middleware).
#[derive(Debug, Clone, Copy)]
pub struct OverHandshakeLimit;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1) is non-zero"))
}

impl HttpLimits {
    pub fn new(requests_per_min: u32, creations_per_min: u32, handshakes_per_min: u32) -> Self {
        Self {
            per_ip: RateLimiter::keyed(per_minute(requests_per_min)),
            per_guest: RateLimiter::keyed(per_minute(requests_per_min)),
            creations: RateLimiter::keyed(per_minute(creations_per_min)),
            handshakes: RateLimiter::keyed(per_minute(handshakes_per_min)),
            handshake_refusals: RateLimiter::keyed(per_minute(handshakes_per_min)),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        l: &DefaultKeyedRateLimiter<K>,
        k: &K,
    ) -> Result<(), RetryAfter> {
        l.check_key(k)
            .map_err(|n| RetryAfter(n.wait_time_from(DefaultClock::default().now())))
    }

    pub fn request(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        Self::check(&self.per_ip, &limit_key(ip))
    }

    pub fn guest_request(&self, id: SessionId) -> Result<(), RetryAfter> {
        Self::check(&self.per_guest, &id)
    }

    pub fn creation(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        Self::check(&self.creations, &limit_key(ip))
    }

    /// Counts one engine.io handshake from `ip`: the first `handshakes_per_min` a minute (a
    /// token bucket of that size) are allowed, as many again are refused in Socket.IO's words,
    /// the rest dropped with HTTP 429.
    pub fn handshake(&self, ip: IpAddr) -> Handshake {
        let key = limit_key(ip);
        if Self::check(&self.handshakes, &key).is_ok() {
            return Handshake::Allowed;
        }
        match Self::check(&self.handshake_refusals, &key) {
            Ok(()) => Handshake::Refuse,
            Err(wait) => Handshake::Drop(wait),
        }
    }

    /// Forgets keys whose buckets are full again, so the maps stay bounded.
    pub fn sweep(&self) {
        self.per_ip.retain_recent();
        self.per_guest.retain_recent();
        self.creations.retain_recent();
        self.handshakes.retain_recent();
        self.handshake_refusals.retain_recent();
    }
}

/// Which browser origins may use the API and Socket.IO.
pub struct OriginPolicy {
    any: bool,
    list: Vec<String>,
}

impl OriginPolicy {
    pub fn new(any: bool, list: &[String]) -> Self {
        let any = any || list.iter().any(|o| o == "*");
        Self {
            any,
            list: list
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// No `Origin` header (not a browser): allowed. Otherwise the origin must be listed, or be
    /// the request's own host, or `--dev` must be on.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.list.contains(&origin) {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_policy() {
        let p = OriginPolicy::new(false, &["https://chat.example.com".into()]);
        assert!(p.allows(None, Some("x")));
        assert!(p.allows(Some("https://chat.example.com"), Some("api.example.com")));
        assert!(p.allows(Some("http://localhost:8080"), Some("localhost:8080")));
        assert!(!p.allows(Some("http://evil.test"), Some("localhost:8080")));
        assert!(!p.allows(Some("null"), Some("localhost:8080")));
        assert!(OriginPolicy::new(true, &[]).allows(Some("http://evil.test"), None));
    }

    #[test]
    fn ip_conns_cap() {
        let c = IpConns::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = c.try_open(ip).expect("first");
        let _b = c.try_open(ip).expect("second");
        assert!(c.try_open(ip).is_none(), "the third is refused");
        // The IPv4-mapped form is the same client.
        assert!(c.try_open("::ffff:127.0.0.1".parse().unwrap()).is_none());
        drop(a);
        assert!(c.try_open(ip).is_some());
        assert_eq!(c.tracked(), 1);
    }

    #[tokio::test]
    async fn conn_caps_per_ip_and_total() {
        let caps = ConnCaps::new(2, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = caps.try_admit(Some(a)).unwrap();
        let _a2 = caps.try_admit(Some(a)).unwrap();
        assert_eq!(caps.try_admit(Some(a)).err(), Some(CapRefusal::PerIp));
        let _b1 = caps.try_admit(Some(b)).unwrap();
        assert_eq!(caps.try_admit(Some(b)).err(), Some(CapRefusal::Total));
        assert_eq!(caps.try_admit(None).err(), Some(CapRefusal::Total));
        drop(a1);
        assert!(caps.try_admit(Some(b)).is_ok());
    }

    #[test]
    fn the_descriptor_budget_leaves_room_for_http() {
        let b = FdBudget::from_limit(256);
        assert_eq!(
            (b.http, b.turn_streams, b.turn_relays, b.ice_tcp),
            (128, 32, 32, 32)
        );
        assert!(b.turn_streams + b.turn_relays + b.ice_tcp + b.http < 256);
        let tiny = FdBudget::from_limit(0);
        assert!(tiny.http >= 16 && tiny.ice_tcp >= 4);
    }

    #[test]
    fn ip_conns_count_an_ipv6_64_as_one_client() {
        let c = IpConns::new(1);
        let _a = c
            .try_open("2001:db8:1:2::1".parse().unwrap())
            .expect("first");
        assert!(c
            .try_open("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(c.try_open("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn ip_conns_hold_exactly_at_the_limit_under_concurrency() {
        let c = IpConns::new(8);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32).map(|_| s.spawn(|| c.try_open(ip))).collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(slots.len(), 8);
        drop(slots);
        assert_eq!(c.tracked(), 0);
    }

    #[test]
    fn client_keys_are_addresses_and_ipv6_64s() {
        let k = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.1"), k("::ffff:192.0.2.1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        // An IPv4 address never shares a key with an IPv6 /64.
        assert_ne!(k("0.0.0.1"), k("::1"));
    }

    #[test]
    fn handshakes_allowed_then_refused_then_dropped_per_address() {
        let l = HttpLimits::new(100, 10, 3);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert!(matches!(l.handshake(ip), Handshake::Allowed));
        }
        for _ in 0..3 {
            assert!(matches!(l.handshake(ip), Handshake::Refuse));
        }
        match l.handshake(ip) {
            Handshake::Drop(RetryAfter(wait)) => assert!(wait > Duration::ZERO),
            _ => panic!("past twice the limit the handshake is dropped"),
        }
        // Another address has its own budget; the same /64 shares one.
        assert!(matches!(
            l.handshake("192.0.2.8".parse().unwrap()),
            Handshake::Allowed
        ));
        let v6 = HttpLimits::new(100, 10, 1);
        assert!(matches!(
            v6.handshake("2001:db8::1".parse().unwrap()),
            Handshake::Allowed
        ));
        assert!(matches!(
            v6.handshake("2001:db8::2".parse().unwrap()),
            Handshake::Refuse
        ));
    }

    #[test]
    fn http_limits_refuse_past_quota() {
        let l = HttpLimits::new(100, 2, 60);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.creation(ip).is_ok());
        assert!(l.creation(ip).is_ok());
        match l.creation(ip) {
            Err(RetryAfter(wait)) => assert!(wait > Duration::ZERO),
            Ok(()) => panic!("third creation in a minute is refused"),
        }
    }
}
