//! The cluster shell's metrics (only with `--redis-url`).

use crate::metrics::{counter, counter_vec, reg};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The Redis commands the cluster shell sends, as the `command` label (a fixed set).
pub const REDIS_COMMANDS: &[&str] = &[
    "ping",
    "heartbeat",
    "leave",
    "match_enqueue",
    "match_cancel",
    "match_away",
    "match_end",
    "match_cooldown_over",
    "match_drop_node",
    "match_len",
    "session_get",
    "session_set",
    "node_entry",
    "node_alive",
    "room_claim",
    "journal",
    "journal_read",
    "file_set",
    "file_get",
    "ip_limit",
];

/// Why a Redis command failed, as the `kind` label (a fixed set).
pub const REDIS_ERROR_KINDS: &[&str] = &[
    "timeout", "refused", "dropped", "io", "auth", "cluster", "server", "response", "other",
];

/// Metrics of the cluster shell (`--redis-url`), registered by [`ClusterMetrics::register`]
/// only when Redis is configured: a single node exports none of them.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Round trip of one command (a script is one), by command.
    pub redis_latency: HistogramVec,
    /// Failed commands, by kind.
    pub redis_errors: IntCounterVec,
    /// 1 while this node's last heartbeat reached Redis.
    pub redis_up: IntGauge,
    /// Live nodes in the registry (this one included) as this node last read it.
    pub nodes: IntGauge,
    /// Times this node registered again after Redis came back.
    pub rejoins: IntCounter,
    /// Times this node found that Redis had lost the cluster's data, and wrote its own again.
    pub restores: IntCounter,
    /// Each live node's guests, as its registry entry says (label: the node's name; the
    /// cluster's size bounds it).
    pub node_guests: IntGaugeVec,
}

impl ClusterMetrics {
    /// Registers the cluster metrics, with `node` (this node's name) on an info series.
    pub fn register(r: &Registry, node: &str) -> Self {
        let m = ClusterMetrics {
            redis_latency: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tandem_redis_command_seconds",
                        "Round trip of a Redis command (a script counts as one), by command",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
                    ]),
                    &["command"],
                )
                .expect("valid metric"),
            ),
            redis_errors: counter_vec(
                r,
                "tandem_redis_errors_total",
                "Redis commands that failed, by kind (timeout, refused, dropped, io, auth, cluster, server, response, other)",
                &["kind"],
            ),
            redis_up: reg(
                r,
                IntGauge::new(
                    "tandem_redis_up",
                    "1 while this node's last heartbeat reached Redis, else 0",
                )
                .expect("valid metric"),
            ),
            nodes: reg(
                r,
                IntGauge::new(
                    "tandem_cluster_nodes",
                    "Live nodes in the cluster's registry (this one included), as last read",
                )
                .expect("valid metric"),
            ),
            rejoins: counter(
                r,
                "tandem_cluster_rejoins_total",
                "Times this node registered again after losing Redis",
            ),
            restores: counter(
                r,
                "tandem_cluster_restores_total",
                "Times this node found Redis had lost the cluster's data (restarted empty, flushed) and wrote its sessions, chats and searches again",
            ),
            node_guests: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tandem_cluster_node_guests",
                        "Guest sessions each live node holds, from its registry entry, by node name",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
        };
        let info = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "tandem_cluster_node_info",
                    "This node's name (--node-name), always 1",
                ),
                &["node"],
            )
            .expect("valid metric"),
        );
        info.with_label_values(&[node]).set(1);
        for command in REDIS_COMMANDS {
            m.redis_latency.with_label_values(&[command]);
        }
        for kind in REDIS_ERROR_KINDS {
            m.redis_errors.with_label_values(&[kind]);
        }
        m
    }
}
