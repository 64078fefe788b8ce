//! The node registry in Redis (see docs/cluster.md, "Node registry").
//!
//! Three keys under one hash tag, so that one script touches them all on a Redis Cluster:
//!
//! - `tandem:{cluster}:nodes`, a sorted set: node id → its last heartbeat, in milliseconds of
//!   Redis's own clock (`TIME`), so that the nodes' clocks never matter;
//! - `tandem:{cluster}:node-info`, a hash: node id → its entry (JSON: name, HTTP and media
//!   addresses, load, version, start time);
//! - `tandem:{cluster}:epoch`, a string: the cluster's data epoch, set by the first beat that
//!   finds it missing (no expiry). A node that sees it change has learned that Redis lost its
//!   data (restarted empty, flushed) and writes what it holds again.
//!
//! Every node runs [`BEAT`] every [`HEARTBEAT_INTERVAL`]: it writes its own entry, drops every
//! node whose last beat is older than [`NODE_TTL`] from both keys, and reads back the live ones.
//! Both keys expire [`KEYS_TTL`] after the last beat of any node.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

/// How often a node beats (and reads the registry).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A node whose last beat is older than this is dead: dropped by the next beat of any node.
/// With [`HEARTBEAT_INTERVAL`], every node's view has lost a dead node within 7 s; a node (or
/// Redis) may stall for 5 s without being taken for dead.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// The registry's keys go this long after the last beat of any node.
pub const KEYS_TTL: Duration = Duration::from_secs(60);
/// Entries read at most (the registry is bounded whatever is in Redis).
pub const MAX_NODES: usize = 1024;
/// Largest entry accepted from Redis, in bytes.
pub const MAX_ENTRY_BYTES: usize = 4096;

/// The sorted set of node ids by last beat.
pub const NODES_KEY: &str = "tandem:{cluster}:nodes";
/// The hash of node entries by id.
pub const INFO_KEY: &str = "tandem:{cluster}:node-info";
/// The data epoch.
pub const EPOCH_KEY: &str = "tandem:{cluster}:epoch";

/// Writes this node's entry, drops dead nodes, returns
/// `{now, epoch, id, last beat, entry, id, last beat, entry, …}`, most recent beat first.
/// KEYS: the sorted set, the hash, the epoch. ARGV: id, entry, node TTL ms, keys TTL ms, most
/// entries, the epoch to set if there is none.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local max = tonumber(ARGV[5])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - ttl), 'LIMIT', 0, 1000)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local live = redis.call('ZREVRANGE', KEYS[1], 0, max - 1, 'WITHSCORES')
local out = { string.format('%d', now), epoch }
for i = 1, #live, 2 do
  local entry = redis.call('HGET', KEYS[2], live[i])
  if entry then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = entry
  end
end
return out
"#,
    )
});

/// Removes one node. KEYS: the sorted set, the hash. ARGV: id.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#,
    )
});

/// What the shell has cheaply about a node's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Socket.IO connections open.
    pub sockets: u64,
    /// Guest sessions held.
    pub guests: u64,
    /// Calls (ringing, connecting or connected).
    pub calls: u64,
    /// Its share of the live statistics (the cluster's `realtime:stats` sums them).
    #[serde(default)]
    pub stats: tandem_signaling::wire::Stats,
}

/// Where a node's bundled TURN server listens (published so that `/api/ice-servers` on any
/// node can name the TURN server of a call's media node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnEndpoint {
    /// The address in its `turn:` URLs (`--node-ip`).
    pub ip: IpAddr,
    /// UDP and TCP.
    pub port: u16,
    /// TLS; 0 when TLS is off.
    #[serde(default)]
    pub tls_port: u16,
}

/// A node's registry entry, as published (the id is the hash field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `--node-name`.
    pub name: String,
    /// Where its HTTP and Socket.IO are served.
    pub http: SocketAddr,
    /// Its media address: `--node-ip` and the RTC UDP port.
    pub media: SocketAddr,
    /// Its TURN server; absent when TURN is off (and in the entries of older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnEndpoint>,
    pub load: NodeLoad,
    /// tandem's version.
    pub version: String,
    /// When it started, Unix milliseconds (its own clock).
    pub started_ms: u64,
}

/// A live node as read from the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Its last heartbeat, Unix milliseconds of Redis's clock.
    pub last_beat_ms: u64,
    pub info: NodeInfo,
}

/// The script call that writes `entry` for node `id` and reads the live nodes and the epoch
/// (`epoch`: the one to set when Redis has none).
pub fn beat(id: &str, entry: &str, epoch: &str) -> redis::ScriptInvocation<'static> {
    let mut invocation = BEAT.prepare_invoke();
    invocation
        .key(NODES_KEY)
        .key(INFO_KEY)
        .key(EPOCH_KEY)
        .arg(id)
        .arg(entry)
        .arg(NODE_TTL.as_millis() as u64)
        .arg(KEYS_TTL.as_millis() as u64)
        .arg(MAX_NODES)
        .arg(epoch);
    invocation
}

/// The script call that removes node `id`.
pub fn leave(id: &str) -> redis::ScriptInvocation<'static> {
    let mut invocation = LEAVE.prepare_invoke();
    invocation.key(NODES_KEY).key(INFO_KEY).arg(id);
    invocation
}

/// What one beat read.
#[derive(Debug)]
pub struct View {
    /// The live nodes (at most [`MAX_NODES`], sorted by id).
    pub nodes: Vec<Node>,
    /// How many entries were unreadable (skipped).
    pub skipped: usize,
    /// The data epoch.
    pub epoch: String,
}

/// Reads [`BEAT`]'s answer.
pub fn parse_view(reply: &[String]) -> Result<View, String> {
    let [_now, epoch, rest @ ..] = reply else {
        return Err("a short answer from the registry script".to_owned());
    };
    if rest.len() % 3 != 0 {
        return Err(format!(
            "the registry script answered {} values, not triples",
            rest.len()
        ));
    }
    let mut nodes = Vec::with_capacity((rest.len() / 3).min(MAX_NODES));
    let mut skipped = 0;
    for triple in rest.chunks_exact(3).take(MAX_NODES) {
        let [id, beat, entry] = triple else {
            continue;
        };
        let beat = beat
            .parse::<f64>()
            .ok()
            .filter(|b| b.is_finite() && *b >= 0.0);
        let info = (entry.len() <= MAX_ENTRY_BYTES)
            .then(|| serde_json::from_str::<NodeInfo>(entry).ok())
            .flatten();
        match (beat, info) {
            (Some(beat), Some(info)) if !id.is_empty() && id.len() <= 64 => nodes.push(Node {
                id: id.clone(),
                last_beat_ms: beat as u64,
                info,
            }),
            _ => skipped += 1,
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(View {
        nodes,
        skipped,
        epoch: epoch.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            http: "127.0.0.1:8080".parse().unwrap(),
            media: "127.0.0.1:7882".parse().unwrap(),
            turn: Some(TurnEndpoint {
                ip: "127.0.0.1".parse().unwrap(),
                port: 3478,
                tls_port: 5349,
            }),
            load: NodeLoad {
                sockets: 3,
                guests: 2,
                calls: 1,
                stats: Default::default(),
            },
            version: "0.1.0".into(),
            started_ms: 1,
        }
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = key[open..].find('}').unwrap() + open;
            key[open + 1..close].to_owned()
        };
        assert_eq!(tag(NODES_KEY), tag(INFO_KEY));
        assert_eq!(tag(NODES_KEY), tag(EPOCH_KEY));
        assert!(NODES_KEY.starts_with("tandem:") && INFO_KEY.starts_with("tandem:"));
        // Dead nodes are gone from every view within 10 s.
        assert!(NODE_TTL + HEARTBEAT_INTERVAL < Duration::from_secs(10));
        assert!(NODE_TTL >= HEARTBEAT_INTERVAL * 3);
    }

    #[test]
    fn views_are_read_and_bad_entries_skipped() {
        let good = serde_json::to_string(&info("b")).unwrap();
        let other = serde_json::to_string(&info("a")).unwrap();
        let reply: Vec<String> = [
            "1700000000000",
            "epoch-1",
            "id-b",
            "1700000000000",
            &good,
            "id-a",
            "1699999999000",
            &other,
            "id-c",
            "1699999999500",
            "{not json",
            "id-d",
            "NaN",
            &good,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let View {
            nodes,
            skipped,
            epoch,
        } = parse_view(&reply).unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(epoch, "epoch-1");
        assert_eq!(
            nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["id-a", "id-b"]
        );
        assert_eq!(nodes[0].info, info("a"));
        assert_eq!(nodes[1].last_beat_ms, 1_700_000_000_000);
        assert!(parse_view(&[]).is_err());
        assert!(parse_view(&["1".into()]).is_err());
        assert!(parse_view(&["1".into(), "e".into(), "x".into()]).is_err());
        assert_eq!(parse_view(&["1".into(), "e".into()]).unwrap().nodes, vec![]);
    }

    #[test]
    fn unknown_fields_are_ignored_for_newer_nodes() {
        let mut value = serde_json::to_value(info("n")).unwrap();
        value["zone"] = "eu".into();
        let parsed: NodeInfo = serde_json::from_value(value).unwrap();
        assert_eq!(parsed, info("n"));
    }

    #[test]
    fn entries_without_turn_parse_and_turn_is_published() {
        let value = serde_json::to_value(info("n")).unwrap();
        assert_eq!(
            value["turn"],
            serde_json::json!({"ip": "127.0.0.1", "port": 3478, "tls_port": 5349})
        );
        // An older node's entry (or one with TURN off) has none.
        let mut old = value.clone();
        old.as_object_mut().unwrap().remove("turn");
        let parsed: NodeInfo = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.turn, None);
        let off = NodeInfo {
            turn: None,
            ..info("n")
        };
        assert!(serde_json::to_value(off).unwrap().get("turn").is_none());
    }
}
