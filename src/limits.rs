//! Admission limits that live in the shell: connections per IP, the memory budget, HTTP token
//! buckets and the origin policy. Per-guest event limits live in the signaling core.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tandem_signaling::SessionId;

/// Open Socket.IO connections per client IP.
pub struct IpConns {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl IpConns {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn has_room(&self, ip: IpAddr) -> bool {
        self.open
            .lock()
            .map(|m| m.get(&ip).copied().unwrap_or(0) < self.max)
            .unwrap_or(false)
    }

    pub fn opened(&self, ip: IpAddr) {
        if let Ok(mut m) = self.open.lock() {
            *m.entry(ip).or_insert(0) += 1;
        }
    }

    pub fn closed(&self, ip: IpAddr) {
        if let Ok(mut m) = self.open.lock() {
            if let Some(n) = m.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&ip);
                }
            }
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
}

/// How long until a refused request may be retried.
pub struct RetryAfter(pub Duration);

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1) is non-zero"))
}

impl HttpLimits {
    pub fn new(requests_per_min: u32, creations_per_min: u32) -> Self {
        Self {
            per_ip: RateLimiter::keyed(per_minute(requests_per_min)),
            per_guest: RateLimiter::keyed(per_minute(requests_per_min)),
            creations: RateLimiter::keyed(per_minute(creations_per_min)),
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
        Self::check(&self.per_ip, &ip)
    }

    pub fn guest_request(&self, id: SessionId) -> Result<(), RetryAfter> {
        Self::check(&self.per_guest, &id)
    }

    pub fn creation(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        Self::check(&self.creations, &ip)
    }

    /// Forgets keys whose buckets are full again, so the maps stay bounded.
    pub fn sweep(&self) {
        self.per_ip.retain_recent();
        self.per_guest.retain_recent();
        self.creations.retain_recent();
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
        assert!(c.has_room(ip));
        c.opened(ip);
        c.opened(ip);
        assert!(!c.has_room(ip));
        c.closed(ip);
        assert!(c.has_room(ip));
    }

    #[test]
    fn http_limits_refuse_past_quota() {
        let l = HttpLimits::new(100, 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.creation(ip).is_ok());
        assert!(l.creation(ip).is_ok());
        match l.creation(ip) {
            Err(RetryAfter(wait)) => assert!(wait > Duration::ZERO),
            Ok(()) => panic!("third creation in a minute is refused"),
        }
    }
}
