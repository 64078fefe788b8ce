//! `--redis-url`: where the nodes of a cluster share their state.
//!
//! Accepted forms (one flag, or the flag repeated for a Redis Cluster's seed nodes):
//!
//! - `redis://[user[:password]@]host[:port][/db]`, one server (`rediss://` for TLS);
//! - `redis+cluster://[user[:password]@]host[:port][,host[:port]…]`, a Redis Cluster reached
//!   through any of those seed nodes (`rediss+cluster://` for TLS).
//!
//! A value is kept as written and checked by validation (so that a parse error never echoes a
//! password); `Debug` and `Display` show it with the password replaced by `[redacted]`.

use std::fmt;

use crate::Secret;

/// Redis's own port, when a URL names none.
pub const DEFAULT_REDIS_PORT: u16 = 6379;

/// Longest accepted URL, in bytes.
const MAX_URL_BYTES: usize = 4096;

/// Most seed nodes one cluster URL may list.
const MAX_SEEDS: usize = 64;

/// One `--redis-url` value, as written. Its `Debug`/`Display` redact the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written (with its password, if any). Use only to connect.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    /// Never fails: the value is checked by validation, whose messages never echo a password.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(s.trim().to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| RedisUrl(s.trim().to_owned()))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", redact(&self.0))
    }
}

/// `url` with the password (or a user-info part that may be one) replaced by `[redacted]`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL at all: it might be anything, a password included.
        return "[redacted: not a URL]".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        None => url.to_owned(),
        Some((userinfo, hosts)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:[redacted]"),
                // `redis://secret@host`: some clients read a lone user-info as the password.
                None => "[redacted]".to_owned(),
            };
            format!("{scheme}://{user}@{hosts}{tail}")
        }
    }
}

/// One Redis server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisHost {
    /// A host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RedisHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the cluster's Redis is, from every `--redis-url` value together.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// TLS (`rediss://`).
    pub tls: bool,
    /// A Redis Cluster (`redis+cluster://`, or the flag repeated); `hosts` are its seed nodes.
    pub cluster: bool,
    /// `user[:password]` as written in the URL (percent-encoded), if any.
    pub userinfo: Option<Secret>,
    /// One server, or a cluster's seed nodes (at least one).
    pub hosts: Vec<RedisHost>,
    /// The logical database (always 0 in a cluster).
    pub db: u32,
}

impl RedisTarget {
    /// One connection URL per host, in the form the Redis client reads
    /// (`redis[s]://[userinfo@]host:port/db`). They hold the password: never log them.
    pub fn connection_urls(&self) -> Vec<Secret> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match &self.userinfo {
            Some(info) => format!("{}@", info.expose()),
            None => String::new(),
        };
        self.hosts
            .iter()
            .map(|host| Secret::new(format!("{scheme}://{auth}{host}/{}", self.db)))
            .collect()
    }
}

impl fmt::Display for RedisTarget {
    /// The target without its password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.tls, self.cluster) {
            (false, false) => "redis",
            (true, false) => "rediss",
            (false, true) => "redis+cluster",
            (true, true) => "rediss+cluster",
        };
        let auth = match &self.userinfo {
            Some(info) => match info.expose().split_once(':') {
                Some((user, _)) => format!("{user}:[redacted]@"),
                None => "[redacted]@".to_owned(),
            },
            None => String::new(),
        };
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        write!(f, "{scheme}://{auth}{}", hosts.join(","))?;
        if !self.cluster {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

/// One URL, parsed.
struct Parsed {
    tls: bool,
    cluster: bool,
    userinfo: Option<String>,
    hosts: Vec<RedisHost>,
    db: Option<u32>,
}

const FORMS: &str = "write redis://host:port[/db], rediss://… for TLS, or \
                     redis+cluster://host:port,host:port… for a Redis Cluster";

/// Parses one URL. Messages never contain the user-info part.
fn parse(url: &str) -> Result<Parsed, String> {
    if url.is_empty() {
        return Err(format!("the URL is empty; {FORMS}"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URL contains spaces or control characters".to_owned());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("it is not a URL; {FORMS}"));
    };
    let (tls, cluster) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        other => {
            return Err(format!(
                "the scheme must be redis, rediss, redis+cluster or rediss+cluster, not `{other}`"
            ))
        }
    };
    if rest.contains(['?', '#']) {
        return Err("query parameters and fragments are not supported in the URL".to_owned());
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some(("", hosts)) => (None, hosts),
        Some((info, hosts)) => (Some(info.to_owned()), hosts),
        None => (None, authority),
    };
    if hostlist.is_empty() {
        return Err(format!("the URL names no host; {FORMS}"));
    }
    let parts: Vec<&str> = hostlist.split(',').collect();
    if parts.len() > 1 && !cluster {
        return Err(
            "several hosts in one URL name a Redis Cluster: write redis+cluster://host:port,host:port"
                .to_owned(),
        );
    }
    if parts.len() > MAX_SEEDS {
        return Err(format!("at most {MAX_SEEDS} seed nodes may be listed"));
    }
    let hosts = parts
        .into_iter()
        .map(parse_host)
        .collect::<Result<Vec<_>, _>>()?;
    let db = match path.trim_start_matches('/') {
        "" => None,
        db => Some(
            db.parse::<u32>()
                .ok()
                .filter(|_| db.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("`/{db}` is not a database number (write /0, /1, …)"))?,
        ),
    };
    if cluster && db.is_some_and(|db| db != 0) {
        return Err("a Redis Cluster has only database 0".to_owned());
    }
    Ok(Parsed {
        tls,
        cluster,
        userinfo,
        hosts,
        db,
    })
}

fn parse_host(part: &str) -> Result<RedisHost, String> {
    let (host, port) = if let Some(bracketed) = part.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err(format!(
                "`{part}`: the IPv6 address is missing its closing `]`"
            ));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{address}` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{after}` after `[{address}]`"))?,
            ),
        };
        (address.to_owned(), port)
    } else {
        let (host, port) = match part.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (part, None),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return Err(format!("`{host}` is not a host name or address"));
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_REDIS_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && p.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| format!("`{p}` is not a port (1 to 65535)"))?,
    };
    Ok(RedisHost { host, port })
}

/// Combines every `--redis-url` value into one target: `None` without any. Several values are
/// the seed nodes of one Redis Cluster and must agree on TLS and credentials.
pub(crate) fn target(urls: &[RedisUrl]) -> Result<Option<RedisTarget>, String> {
    if urls.is_empty() {
        return Ok(None);
    }
    let mut parsed = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let p = parse(url.expose()).map_err(|why| {
            if urls.len() == 1 {
                format!("redis_url is invalid: {why}")
            } else {
                format!("redis_url value {} is invalid: {why}", i + 1)
            }
        })?;
        parsed.push(p);
    }
    let head = &parsed[0];
    let cluster = head.cluster || parsed.len() > 1;
    if parsed.iter().any(|p| p.tls != head.tls) {
        return Err(
            "redis_url values mix TLS (rediss://) and plain (redis://) connections; use one kind"
                .to_owned(),
        );
    }
    if parsed.iter().any(|p| p.userinfo != head.userinfo) {
        return Err(
            "redis_url values carry different user names or passwords; a cluster's seed nodes share one"
                .to_owned(),
        );
    }
    if cluster && parsed.iter().any(|p| p.db.is_some_and(|db| db != 0)) {
        return Err("a Redis Cluster has only database 0; remove the /db part".to_owned());
    }
    let mut hosts: Vec<RedisHost> = Vec::new();
    for p in &parsed {
        for h in &p.hosts {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
    }
    if hosts.len() > MAX_SEEDS {
        return Err(format!("at most {MAX_SEEDS} seed nodes may be listed"));
    }
    Ok(Some(RedisTarget {
        tls: head.tls,
        cluster,
        userinfo: head.userinfo.clone().map(Secret::new),
        hosts,
        db: if cluster { 0 } else { head.db.unwrap_or(0) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> Result<RedisTarget, String> {
        target(&[RedisUrl(url.to_owned())]).map(|t| t.expect("a target"))
    }

    #[test]
    fn single_servers() {
        let t = one("redis://127.0.0.1:6380/2").unwrap();
        assert!(!t.tls && !t.cluster);
        assert_eq!(
            t.hosts,
            vec![RedisHost {
                host: "127.0.0.1".into(),
                port: 6380
            }]
        );
        assert_eq!(t.db, 2);
        assert_eq!(t.connection_urls()[0].expose(), "redis://127.0.0.1:6380/2");

        let t = one("rediss://:s3cret@redis.internal").unwrap();
        assert!(t.tls && !t.cluster);
        assert_eq!(t.hosts[0].port, DEFAULT_REDIS_PORT);
        assert_eq!(
            t.connection_urls()[0].expose(),
            "rediss://:s3cret@redis.internal:6379/0"
        );
        assert_eq!(t.to_string(), "rediss://:[redacted]@redis.internal:6379/0");

        let t = one("redis://[::1]:7000/").unwrap();
        assert_eq!(t.hosts[0].host, "::1");
        assert_eq!(t.connection_urls()[0].expose(), "redis://[::1]:7000/0");
    }

    #[test]
    fn clusters() {
        let t = one("redis+cluster://user:pw@a:7000,b:7001,[::1]:7002").unwrap();
        assert!(t.cluster && !t.tls);
        assert_eq!(t.hosts.len(), 3);
        assert_eq!(
            t.connection_urls()
                .iter()
                .map(|s| s.expose().to_owned())
                .collect::<Vec<_>>(),
            vec![
                "redis://user:pw@a:7000/0",
                "redis://user:pw@b:7001/0",
                "redis://user:pw@[::1]:7002/0"
            ]
        );
        assert_eq!(
            t.to_string(),
            "redis+cluster://user:[redacted]@a:7000,b:7001,[::1]:7002"
        );
        // The flag repeated: the seeds of one cluster.
        let t = target(&[
            RedisUrl("redis://a:7000".into()),
            RedisUrl("redis://b:7000".into()),
        ])
        .unwrap()
        .unwrap();
        assert!(t.cluster);
        assert_eq!(t.hosts.len(), 2);
        assert!(one("rediss+cluster://a:1").unwrap().tls);
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for bad in [
            "",
            "localhost:6379",
            "http://localhost",
            "redis://",
            "redis://:pw@",
            "redis://a:1,b:2",
            "redis://host:0",
            "redis://host:70000",
            "redis://host:x",
            "redis://host/db",
            "redis://host?timeout=1",
            "redis://ho st",
            "redis://[::1",
            "redis://[nope]:1",
            "redis+cluster://a:1/3",
        ] {
            assert!(one(bad).is_err(), "{bad} accepted");
        }
        let why = one("redis://user:hunter2@bad host").unwrap_err();
        assert!(!why.contains("hunter2"), "{why}");
        let why = one("redis://user:hunter2@host:bad").unwrap_err();
        assert!(!why.contains("hunter2"), "{why}");
        let mixed = target(&[
            RedisUrl("redis://a:1".into()),
            RedisUrl("rediss://b:1".into()),
        ]);
        assert!(mixed.is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("redis://localhost:6379/0"),
            "redis://localhost:6379/0"
        );
        assert_eq!(
            redact("redis://user:pw@h:1/0"),
            "redis://user:[redacted]@h:1/0"
        );
        assert_eq!(redact("redis://pw@h"), "redis://[redacted]@h");
        assert_eq!(redact("redis://:p@ss@h"), "redis://:[redacted]@h");
        assert_eq!(redact("garbage:pw"), "[redacted: not a URL]");
        let url: RedisUrl = "redis://u:topsecret@h".parse().unwrap();
        assert!(!format!("{url:?}").contains("topsecret"));
        assert!(!format!("{url}").contains("topsecret"));
        assert_eq!(url.expose(), "redis://u:topsecret@h");
    }
}
