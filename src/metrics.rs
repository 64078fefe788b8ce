//! Prometheus metrics: what the components share (registration, the catalog behind
//! docs/metrics.md, the process as a whole, the cores' table sizes, worker panics, the text
//! encoding). Each component registers its own metrics next to its code: `hub`
//! (signaling), `http`, `accept` (listeners), `rtc` (media and call quality), `turn`, `files`,
//! `cluster::metrics`. Every label is from a fixed set (never a session or room id).

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

// Each component registers its own metrics; they are named here too for the callers.
pub use crate::accept::ConnMetrics;
pub use crate::cluster::metrics::ClusterMetrics;
pub use crate::files::FileMetrics;
pub use crate::http::HttpMetrics;
pub use crate::hub::SignalingMetrics;
pub use crate::rtc::MediaMetrics;
pub use crate::turn::TurnMetrics;

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    record(&c);
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

/// A registered metric: its type (`counter`, `gauge`, `histogram`), help and label names.
type Described = (&'static str, String, Vec<String>);

/// Every metric registered in this process (name → type, help, label names), for
/// docs/metrics.md (a test renders it from here and compares, so the document cannot drift).
/// Registration goes through [`reg`], or calls this first.
static CATALOG: std::sync::Mutex<std::collections::BTreeMap<String, Described>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Notes `c`'s metrics in the catalog (see [`CATALOG`]).
pub(crate) fn record<T: prometheus::core::Collector>(c: &T) {
    let ty = std::any::type_name::<T>();
    let kind = if ty.contains("Histogram") {
        "histogram"
    } else if ty.contains("Counter") {
        "counter"
    } else {
        "gauge"
    };
    let mut catalog = CATALOG.lock().unwrap_or_else(|p| p.into_inner());
    for d in c.desc() {
        catalog.insert(
            d.fq_name.clone(),
            (kind, d.help.clone(), d.variable_labels.clone()),
        );
    }
}

pub(crate) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

pub(crate) fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Adds a counter delta (`now - last`) to one labelled series.
pub(crate) fn bump(c: &IntCounterVec, label: &str, now: u64, last: u64) {
    c.with_label_values(&[label]).inc_by(now - last);
}

/// [`bump`] that skips the label lookup (a hash and a lock) when nothing moved, for counters
/// applied on a hot path (the hub, after every batch). Only for labels created at registration:
/// a series first touched here would not exist until it moved.
pub(crate) fn bump_moved(c: &IntCounterVec, label: &str, now: u64, last: u64) {
    if now != last {
        bump(c, label, now, last);
    }
}

/// The process as a whole: `tandem_build_info{version, commit}`, the standard process
/// collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, …) and the budgets the
/// operator set, to draw usage against (`tandem_memory_budget_bytes`,
/// `tandem_file_storage_budget_bytes`).
pub fn register_process(r: &Registry, memory_budget: u64, file_budget: u64) {
    let info = reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "tandem_build_info",
                "Always 1: the running tandem's version and the commit it was built from",
            ),
            &["version", "commit"],
        )
        .expect("valid metric"),
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("BUILD_GIT_COMMIT")])
        .set(1);
    let process = prometheus::process_collector::ProcessCollector::for_self();
    {
        use prometheus::core::Collector;
        let mut catalog = CATALOG.lock().unwrap_or_else(|p| p.into_inner());
        for d in process.desc() {
            let kind = if d.fq_name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            catalog.insert(d.fq_name.clone(), (kind, d.help.clone(), Vec::new()));
        }
    }
    if let Err(e) = r.register(Box::new(process)) {
        tracing::warn!(error = %e, "the process metrics are not exported");
    }
    for (name, help, value) in [
        (
            "tandem_memory_budget_bytes",
            "--memory-budget-mb: past it new guests, calls and uploads are refused",
            memory_budget,
        ),
        (
            "tandem_file_storage_budget_bytes",
            "The shared files' storage budget (bytes stored count against it)",
            file_budget,
        ),
    ] {
        let g = reg(r, IntGauge::new(name, help).expect("valid metric"));
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

/// Entries of the cores' tables, by core (`media`, `turn`, `signaling`) and table, summed over
/// workers: every one must level off under a steady load (scripts/soak.sh checks that).
#[derive(Clone)]
pub struct CoreSizes(IntGaugeVec);

impl CoreSizes {
    pub fn register(r: &Registry) -> Self {
        CoreSizes(reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "tandem_core_entries",
                    "Entries in a core's table (summed over its workers), by core and table",
                ),
                &["core", "table"],
            )
            .expect("valid metric"),
        ))
    }

    /// Adds one worker's change since `last` (same tables in the same order).
    pub fn apply(&self, core: &str, last: &[(&'static str, usize)], now: &[(&'static str, usize)]) {
        for (i, (table, n)) in now.iter().enumerate() {
            let before = last.get(i).map_or(0, |(_, b)| *b);
            // Touched even when unchanged, so that every table is exported from the start.
            self.0
                .with_label_values(&[core, table])
                .add(*n as i64 - before as i64);
        }
    }
}

/// Panics that escaped a worker thread (`media`, `turn`) or a background task (`task`); each
/// makes the process exit non-zero (peer-level panics are `tandem_media_peer_panics_total`).
pub fn worker_panics(r: &Registry) -> IntCounterVec {
    let c = counter_vec(
        r,
        "tandem_worker_panics_total",
        "Panics that escaped a worker thread or background task, by kind (media, turn, task); the process exits after one",
        &["kind"],
    );
    for kind in ["media", "turn", "task"] {
        c.with_label_values(&[kind]);
    }
    c
}

pub fn encode(r: &Registry) -> String {
    let mut buf = Vec::new();
    if TextEncoder::new().encode(&r.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// docs/metrics.md, rendered from [`CATALOG`] (see the test `docs_metrics_md_is_current`).
#[cfg(test)]
mod doc {
    use std::collections::{BTreeMap, BTreeSet};

    use prometheus::Registry;

    use super::*;

    /// Labels whose values registration does not list (they appear with use), or whose values
    /// are not a fixed set: what they hold.
    const LABEL_VALUES: &[(&str, &str, &str)] = &[
        ("tandem_build_info", "version", "tandem's version"),
        ("tandem_build_info", "commit", "the commit it was built from (`unknown` outside git)"),
        ("tandem_cluster_node_info", "node", "this node's `--node-name`"),
        ("tandem_cluster_node_guests", "node", "each live node's `--node-name` (the cluster's size bounds it)"),
        ("tandem_http_requests_total", "route", "the matched route pattern (tandem's routes; unmatched requests share one value)"),
        ("tandem_http_requests_total", "status", "the HTTP status code"),
        ("tandem_http_rate_limited_total", "limit", "`ip`, `guest`, `guest_creation`, `sessions_per_ip`, `socket_handshake`"),
        ("tandem_refusals_total", "code", "an error code of docs/protocol.md"),
        ("tandem_rate_limited_total", "scope", "`event` (a client event over its per-guest limit), `connect` (a Socket.IO connect refused as `rate_limited`)"),
        ("tandem_receipts_total", "kind", "`delivered`, `read`"),
        ("tandem_calls", "state", "`ringing`, `connecting`, `connected`"),
        ("tandem_connect_refusals_total", "reason", "why a Socket.IO connect was refused (`unauthorized`, `rate_limited`, `server_busy`, …)"),
        ("tandem_redis_command_seconds", "command", "`ping`, `heartbeat`, `leave`, `match_*`, `session_get`, `session_set`, `node_entry`, `node_alive`, `room_claim`, `journal`, `journal_read`, `file_set`, `file_get`, `ip_limit`"),
        ("tandem_redis_errors_total", "kind", "`timeout`, `refused`, `dropped`, `io`, `auth`, `cluster`, `server`, `response`, `other`"),
        ("tandem_worker_panics_total", "kind", "`media`, `turn`, `task`"),
        ("tandem_turn_allocations_total", "event", "`created`, `expired`, `deleted`, `revoked`"),
        ("tandem_turn_quota_refusals_total", "quota", "`user`, `capacity`"),
        ("tandem_turn_relayed_packets_total", "direction", "`client_to_peer`, `peer_to_client`"),
        ("tandem_turn_relayed_packets_total", "transport", "`udp`, `tcp`, `tls` (the client's)"),
        ("tandem_turn_relayed_packets_total", "framing", "`channel_data`, `indication`"),
        ("tandem_turn_relayed_bytes_total", "direction", "`client_to_peer`, `peer_to_client`"),
        ("tandem_turn_relayed_bytes_total", "transport", "`udp`, `tcp`, `tls` (the client's)"),
        ("tandem_turn_relayed_bytes_total", "framing", "`channel_data`, `indication`"),
        ("tandem_core_entries", "core", "`signaling`, `media`, `turn`"),
        ("tandem_core_entries", "table", "each core's tables (`sessions`, `rooms`, `calls`, `peers`, `allocations`, …)"),
        ("tandem_call_quality_loss_ratio", "kind", "`audio`, `video`"),
        ("tandem_call_quality_loss_ratio", "direction", "`in` (guest to server), `out` (server to guest)"),
        ("tandem_call_quality_jitter_seconds", "kind", "`audio`, `video`"),
        ("tandem_call_quality_jitter_seconds", "direction", "`in`, `out`"),
        ("tandem_call_quality_rtt_seconds", "kind", "`audio`, `video`"),
        ("tandem_call_quality_rtt_seconds", "direction", "`in`, `out`"),
        ("tandem_call_quality_bitrate_bps", "kind", "`audio`, `video`"),
        ("tandem_call_quality_bitrate_bps", "direction", "`in`, `out`"),
        ("tandem_call_quality_fps", "direction", "`in`, `out`"),
        ("tandem_call_quality_freezes", "direction", "`in`, `out`"),
        ("tandem_accept_errors_total", "listener", "`http`, `turn`, `ice_tcp`"),
        ("tandem_accept_errors_total", "kind", "`descriptors` (EMFILE/ENFILE), `other`"),
        ("tandem_connections_refused_total", "listener", "`http`, `turn`, `ice_tcp`"),
        ("tandem_connections_refused_total", "reason", "`per_ip`, `total`"),
        ("tandem_turn_auth_failures_total", "reason", "`missing`, `bad_integrity`, `unknown_user`, `stale_nonce`, `wrong_credentials`, `revoked`"),
        ("tandem_turn_dropped_total", "reason", "`malformed`, `no_permission`, `unroutable`, `rate_limited`, `queue_full`, `bind_failed`, `unauthenticated_rate`"),
    ];

    /// The section a metric is listed under.
    fn section(name: &str) -> &'static str {
        const PROCESS: &[&str] = &[
            "tandem_build_info",
            "tandem_memory_budget_bytes",
            "tandem_process_resident_memory_bytes",
            "tandem_open_files_limit",
            "tandem_worker_panics_total",
            "tandem_core_entries",
        ];
        if name.starts_with("process_") || PROCESS.contains(&name) {
            "Process"
        } else if name.starts_with("tandem_media_") || name.starts_with("tandem_call") {
            "Calls and media"
        } else if name.starts_with("tandem_turn_") {
            "TURN"
        } else if name.starts_with("tandem_file") {
            "Files"
        } else if name.starts_with("tandem_cluster_") || name.starts_with("tandem_redis_") {
            "Cluster and Redis (only with `--redis-url`)"
        } else {
            "Guests, chat and HTTP"
        }
    }

    const SECTIONS: [&str; 6] = [
        "Guests, chat and HTTP",
        "Calls and media",
        "TURN",
        "Files",
        "Cluster and Redis (only with `--redis-url`)",
        "Process",
    ];

    /// Registers every component's metrics as `tandem::run` does (with Redis on).
    fn everything() -> Registry {
        let r = Registry::new();
        let sizes = CoreSizes::register(&r);
        SignalingMetrics::register(&r);
        HttpMetrics::register(&r);
        ConnMetrics::register(&r);
        worker_panics(&r);
        MediaMetrics::register(&r, sizes.clone());
        TurnMetrics::register(&r, sizes);
        FileMetrics::register(&r);
        ClusterMetrics::register(&r, "node-a");
        crate::cluster::BusMetrics::register(&r).expect("bus metrics");
        crate::cluster::MatchMetrics::register(&r).expect("match metrics");
        register_process(&r, 1, 1);
        r
    }

    /// The document, and the labels that have no documented values (must be none).
    pub(super) fn render() -> (String, Vec<String>) {
        let r = everything();
        // Label values registration lists already (pre-made series).
        let mut seen: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for mf in r.gather() {
            for m in mf.get_metric() {
                for l in m.get_label() {
                    seen.entry((mf.name().to_owned(), l.name().to_owned()))
                        .or_default()
                        .insert(l.value().to_owned());
                }
            }
        }
        let catalog = CATALOG.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut undocumented = Vec::new();
        for (m, l, _) in LABEL_VALUES {
            if !catalog
                .get(*m)
                .is_some_and(|(_, _, labels)| labels.iter().any(|x| x == l))
            {
                undocumented.push(format!(
                    "LABEL_VALUES names {m}{{{l}}}, which is not registered"
                ));
            }
        }
        let mut out = String::from(
            "# Metrics\n\n\
             Everything tandem exports at `GET /metrics` (Prometheus text format; on \
             `--metrics-bind` when set). Labels are bounded: never a room, guest or call id.\n\n\
             Generated from the code: `cargo test -p tandem --lib docs_metrics_md_is_current` \
             fails when this file differs from what the code registers, and writes the current \
             version to `target/metrics.md` (copy it here).\n",
        );
        for sec in SECTIONS {
            out.push_str(&format!(
                "\n## {sec}\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n"
            ));
            for (name, (kind, help, labels)) in catalog.iter().filter(|(n, _)| section(n) == sec) {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|l| {
                        let fixed = LABEL_VALUES
                            .iter()
                            .find(|(m, label, _)| m == name && label == l)
                            .map(|(_, _, v)| (*v).to_owned());
                        let listed = seen.get(&(name.clone(), l.clone())).map(|vals| {
                            vals.iter()
                                .map(|v| format!("`{v}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        });
                        match fixed.or(listed) {
                            Some(v) => format!("`{l}`: {v}"),
                            None => {
                                undocumented.push(format!("{name}{{{l}}}"));
                                format!("`{l}`")
                            }
                        }
                    })
                    .collect();
                let labels = if labels.is_empty() {
                    "—".to_owned()
                } else {
                    labels.join("; ")
                };
                out.push_str(&format!(
                    "| `{name}` | {kind} | {labels} | {} |\n",
                    help.replace('|', "\\|")
                ));
            }
        }
        (out, undocumented)
    }
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn docs_metrics_md_is_current() {
        let (text, undocumented) = super::doc::render();
        assert!(
            undocumented.is_empty(),
            "labels without documented values (add them to LABEL_VALUES in src/metrics.rs): {undocumented:?}"
        );
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap_or_default();
        if committed != text {
            let fresh = root.join("target/metrics.md");
            let _ = std::fs::create_dir_all(root.join("target"));
            let _ = std::fs::write(&fresh, &text);
            panic!(
                "docs/metrics.md is not what the code registers: the current version is in {}; copy it to docs/metrics.md",
                fresh.display()
            );
        }
    }
}
