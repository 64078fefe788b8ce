//! Prometheus metrics. Every label is from a fixed set (never a session or room id).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tandem_media::{MediaCounters, KINDS};
use tandem_signaling::wire::{EndReason, Stats};
use tandem_signaling::{CallEndReason, CallStates, ClientEvent, Counters, SignalError};

/// Signaling metrics, registered by [`SignalingMetrics::register`].
#[derive(Clone)]
pub struct SignalingMetrics {
    pub sockets_connected: IntGauge,
    pub guests: IntGaugeVec,
    pub guests_created: IntCounter,
    pub matches: IntCounter,
    pub chats_ended: IntCounterVec,
    pub messages_relayed: IntCounter,
    pub receipts: IntCounterVec,
    pub refusals: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub connect_refusals: IntCounterVec,
    pub undelivered: IntCounter,
    pub sessions_expired: IntCounter,
    pub sessions_reaped: IntCounter,
    pub floods_closed: IntCounter,
    pub event_latency: HistogramVec,
    pub hub_batch: Histogram,
    pub resident_memory: IntGauge,
    pub calls: IntGaugeVec,
    pub call_requests: IntCounter,
    pub calls_accepted: IntCounter,
    pub calls_ended: IntCounterVec,
    pub call_setup: Histogram,
    pub match_wait: Histogram,
}

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    record(&c);
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

/// Every metric registered in this process (name → type, help, label names), for
/// docs/metrics.md (a test renders it from here and compares, so the document cannot drift).
/// Registration goes through [`reg`], or calls this first.
/// A registered metric: its type (`counter`, `gauge`, `histogram`), help and label names.
type Described = (&'static str, String, Vec<String>);

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
fn bump(c: &IntCounterVec, label: &str, now: u64, last: u64) {
    c.with_label_values(&[label]).inc_by(now - last);
}

impl SignalingMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| counter(r, name, help);
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| counter_vec(r, name, help, labels);
        let m = Self {
            sockets_connected: reg(
                r,
                IntGauge::new("tandem_sockets_connected", "Socket.IO connections open now")
                    .expect("valid"),
            ),
            guests: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("tandem_guests", "Guest sessions by state"),
                    &["state"],
                )
                .expect("valid"),
            ),
            guests_created: counter("tandem_guests_created_total", "Guest sessions created"),
            matches: counter("tandem_matches_total", "Pairs made"),
            chats_ended: counter_vec(
                "tandem_chats_ended_total",
                "Chats ended, by reason",
                &["reason"],
            ),
            messages_relayed: counter(
                "tandem_messages_relayed_total",
                "Chat messages accepted and relayed",
            ),
            receipts: counter_vec(
                "tandem_receipts_total",
                "Receipts relayed, by kind",
                &["kind"],
            ),
            refusals: counter_vec(
                "tandem_refusals_total",
                "Client events refused, by code",
                &["code"],
            ),
            rate_limited: counter_vec(
                "tandem_rate_limited_total",
                "Rate-limit hits, by scope",
                &["scope"],
            ),
            connect_refusals: counter_vec(
                "tandem_connect_refusals_total",
                "Socket.IO connections refused, by reason",
                &["reason"],
            ),
            undelivered: counter(
                "tandem_messages_undelivered_total",
                "Deliveries that got no ack from the receiver (the message stays queued for its next socket)",
            ),
            sessions_expired: counter(
                "tandem_sessions_expired_total",
                "Guest sessions swept after expiry",
            ),
            sessions_reaped: counter(
                "tandem_sessions_reaped_total",
                "Guest sessions removed because no socket connected in time",
            ),
            floods_closed: counter(
                "tandem_flood_disconnects_total",
                "Sockets closed for a sustained flood",
            ),
            event_latency: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tandem_event_handling_seconds",
                        "Time from receiving a client event to answering it, by event",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
                    ]),
                    &["event"],
                )
                .expect("valid"),
            ),
            hub_batch: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tandem_hub_batch_size",
                        "Commands the signaling hub handled per wake-up",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                )
                .expect("valid"),
            ),
            resident_memory: reg(
                r,
                IntGauge::new(
                    "tandem_process_resident_memory_bytes",
                    "Resident memory of the process",
                )
                .expect("valid"),
            ),
            calls: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tandem_calls",
                        "Calls now, by state (ringing, connecting, connected)",
                    ),
                    &["state"],
                )
                .expect("valid"),
            ),
            call_requests: counter("tandem_call_requests_total", "Calls requested"),
            calls_accepted: counter("tandem_calls_accepted_total", "Calls accepted"),
            calls_ended: counter_vec(
                "tandem_calls_ended_total",
                "Calls ended, by reason",
                &["reason"],
            ),
            call_setup: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tandem_call_setup_seconds",
                        "Time from a call's accept to both guests' media connected",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                )
                .expect("valid"),
            ),
            match_wait: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tandem_match_wait_seconds",
                        "Time to match: from a guest's match:start to its match:found (guests of this node whose chat opened here)",
                    )
                    .buckets(vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
                )
                .expect("valid"),
            ),
        };
        for reason in CallEndReason::ALL {
            m.calls_ended.with_label_values(&[reason.as_str()]);
        }
        // Pre-create every bounded label so dashboards see zeros, not gaps.
        for reason in EndReason::ALL {
            m.chats_ended.with_label_values(&[reason.as_str()]);
        }
        for e in SignalError::ALL {
            m.refusals.with_label_values(&[e.code()]);
        }
        for name in ClientEvent::NAMES {
            m.event_latency.with_label_values(&[name]);
        }
        for kind in ["delivered", "read"] {
            m.receipts.with_label_values(&[kind]);
        }
        for scope in ["event", "connect"] {
            m.rate_limited.with_label_values(&[scope]);
        }
        for state in ["online", "searching", "in_chat", "idle"] {
            m.guests.with_label_values(&[state]);
        }
        m
    }

    /// Adds what the core counted since `last`.
    pub fn apply_counters(&self, last: &Counters, now: &Counters) {
        self.guests_created
            .inc_by(now.guests_created - last.guests_created);
        self.matches.inc_by(now.matches - last.matches);
        for reason in EndReason::ALL {
            let i = reason as usize;
            bump(
                &self.chats_ended,
                reason.as_str(),
                now.chats_ended[i],
                last.chats_ended[i],
            );
        }
        self.messages_relayed
            .inc_by(now.messages_relayed - last.messages_relayed);
        bump(
            &self.receipts,
            "delivered",
            now.receipts_delivered,
            last.receipts_delivered,
        );
        bump(
            &self.receipts,
            "read",
            now.receipts_read,
            last.receipts_read,
        );
        self.floods_closed
            .inc_by(now.floods_closed - last.floods_closed);
        self.sessions_expired
            .inc_by(now.sessions_expired - last.sessions_expired);
        self.sessions_reaped
            .inc_by(now.sessions_reaped - last.sessions_reaped);
        self.call_requests
            .inc_by(now.calls_requested - last.calls_requested);
        self.calls_accepted
            .inc_by(now.calls_accepted - last.calls_accepted);
        for reason in CallEndReason::ALL {
            let i = reason as usize;
            bump(
                &self.calls_ended,
                reason.as_str(),
                now.calls_ended[i],
                last.calls_ended[i],
            );
        }
    }

    pub fn apply_call_states(&self, s: &CallStates) {
        self.calls
            .with_label_values(&["ringing"])
            .set(s.ringing as i64);
        self.calls
            .with_label_values(&["connecting"])
            .set(s.connecting as i64);
        self.calls
            .with_label_values(&["connected"])
            .set(s.connected as i64);
    }

    pub fn apply_stats(&self, s: &Stats) {
        self.guests
            .with_label_values(&["searching"])
            .set(s.available_users as i64);
        self.guests
            .with_label_values(&["in_chat"])
            .set(s.connected_users as i64);
        let busy = s.available_users + s.connected_users;
        self.guests
            .with_label_values(&["online"])
            .set(s.online_users.saturating_sub(busy) as i64);
        self.guests
            .with_label_values(&["idle"])
            .set(s.total_users.saturating_sub(s.online_users) as i64);
    }

    pub fn refused(&self, e: SignalError) {
        self.refusals.with_label_values(&[e.code()]).inc();
        if e == SignalError::RateLimited {
            self.rate_limited.with_label_values(&["event"]).inc();
        }
    }
}

/// HTTP metrics, registered by [`HttpMetrics::register`].
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub rate_limited: IntCounterVec,
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
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TANDEM_COMMIT")])
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

impl HttpMetrics {
    pub fn register(r: &Registry) -> Self {
        let m = Self {
            requests: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tandem_http_requests_total",
                        "HTTP requests, by route and status",
                    ),
                    &["route", "status"],
                )
                .expect("valid"),
            ),
            rate_limited: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tandem_http_rate_limited_total",
                        "HTTP requests refused by a limit",
                    ),
                    &["limit"],
                )
                .expect("valid"),
            ),
        };
        for limit in [
            "ip",
            "guest",
            "guest_creation",
            "sessions_per_ip",
            "socket_handshake",
        ] {
            m.rate_limited.with_label_values(&[limit]);
        }
        m
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

/// Media-plane metrics, registered by [`MediaMetrics::register`]; every media worker adds to
/// the same series.
#[derive(Clone)]
pub struct MediaMetrics {
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub nacks: IntCounterVec,
    pub keyframe_requests: IntCounterVec,
    pub ice_failures: IntCounter,
    pub dtls_failures: IntCounter,
    pub peer_panics: IntCounter,
    pub peers: IntGauge,
    pub unrouted: IntCounter,
    pub candidates_refused: IntCounter,
    pub handovers: IntCounter,
    pub loss: Histogram,
    pub jitter: Histogram,
    pub rtt: Histogram,
    pub bandwidth: Histogram,
    /// Per-call quality, observed once per call (registered by the media plane itself).
    pub quality: crate::rtc::CallQualityMetrics,
    /// The media cores' tables.
    pub sizes: CoreSizes,
}

impl MediaMetrics {
    pub fn register(r: &Registry, sizes: CoreSizes) -> Self {
        let counter = |name: &str, help: &str| counter(r, name, help);
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| counter_vec(r, name, help, labels);
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
        };
        let m = MediaMetrics {
            sizes,
            packets: counter_vec(
                "tandem_media_packets_total",
                "RTP packets through the SFU, by kind and direction (in: from guests, out: forwarded)",
                &["kind", "direction"],
            ),
            bytes: counter_vec(
                "tandem_media_bytes_total",
                "RTP payload bytes through the SFU, by kind and direction",
                &["kind", "direction"],
            ),
            nacks: counter_vec(
                "tandem_media_nacks_total",
                "NACKs, by direction (received: from guests, served from buffers; sent: to guests for lost packets)",
                &["direction"],
            ),
            keyframe_requests: counter_vec(
                "tandem_media_keyframe_requests_total",
                "Keyframe requests forwarded to senders (pli, fir) or dropped by the 500 ms throttle",
                &["kind"],
            ),
            ice_failures: counter(
                "tandem_media_ice_failures_total",
                "Guests whose media did not connect (or reconnect) in time",
            ),
            dtls_failures: counter(
                "tandem_media_dtls_failures_total",
                "Guests whose DTLS handshake failed",
            ),
            peer_panics: counter(
                "tandem_media_peer_panics_total",
                "Media peers closed after the WebRTC stack panicked on them (other calls continue)",
            ),
            peers: reg(
                r,
                IntGauge::new("tandem_media_peers", "Media peers (guests in calls) now")
                    .expect("valid"),
            ),
            unrouted: counter(
                "tandem_media_unrouted_packets_total",
                "RTP packets with no receiver to go to",
            ),
            candidates_refused: counter(
                "tandem_media_remote_candidates_refused_total",
                "Remote ICE candidates refused past a call participant's 20 (trickled, or STUN checks from yet another source address, dropped)",
            ),
            handovers: counter(
                "tandem_media_handovers_total",
                "Datagrams that reached another media worker's socket and were handed to the worker owning their call",
            ),
            loss: histogram(
                "tandem_media_loss_ratio",
                "Packet loss fraction from RTCP receiver reports",
                vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
            ),
            jitter: histogram(
                "tandem_media_jitter_seconds",
                "Interarrival jitter from RTCP",
                vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1],
            ),
            rtt: histogram(
                "tandem_media_rtt_seconds",
                "Round-trip time from RTCP",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            ),
            bandwidth: histogram(
                "tandem_media_bandwidth_estimate_bps",
                "Estimated bandwidth towards guests (TWCC)",
                vec![1e5, 3e5, 5e5, 1e6, 2e6, 5e6, 1e7],
            ),
            quality: crate::rtc::CallQualityMetrics::register(r),
        };
        for kind in KINDS {
            for dir in ["in", "out"] {
                m.packets.with_label_values(&[kind, dir]);
                m.bytes.with_label_values(&[kind, dir]);
            }
        }
        for dir in ["received", "sent"] {
            m.nacks.with_label_values(&[dir]);
        }
        for kind in ["pli", "fir", "throttled"] {
            m.keyframe_requests.with_label_values(&[kind]);
        }
        m
    }

    /// Adds what one worker's core counted since `last`.
    pub fn apply(&self, last: &MediaCounters, now: &MediaCounters) {
        for (k, kind) in KINDS.iter().enumerate() {
            for (d, dir) in ["in", "out"].iter().enumerate() {
                self.packets
                    .with_label_values(&[kind, dir])
                    .inc_by(now.packets[k][d] - last.packets[k][d]);
                self.bytes
                    .with_label_values(&[kind, dir])
                    .inc_by(now.bytes[k][d] - last.bytes[k][d]);
            }
        }
        bump(
            &self.nacks,
            "received",
            now.nacks_received,
            last.nacks_received,
        );
        bump(&self.nacks, "sent", now.nacks_sent, last.nacks_sent);
        let kf = &self.keyframe_requests;
        bump(kf, "pli", now.plis_forwarded, last.plis_forwarded);
        bump(kf, "fir", now.firs_forwarded, last.firs_forwarded);
        let (t_now, t_last) = (
            now.keyframe_requests_throttled,
            last.keyframe_requests_throttled,
        );
        bump(kf, "throttled", t_now, t_last);
        self.ice_failures
            .inc_by(now.ice_failures - last.ice_failures);
        self.dtls_failures
            .inc_by(now.dtls_failures - last.dtls_failures);
        self.peer_panics.inc_by(now.peer_panics - last.peer_panics);
        self.unrouted
            .inc_by(now.packets_unrouted - last.packets_unrouted);
        self.candidates_refused
            .inc_by(now.candidates_refused - last.candidates_refused);
        self.quality.connections(last, now);
        self.peers.add(
            (now.peers_created - last.peers_created) as i64
                - (now.peers_closed - last.peers_closed) as i64,
        );
    }
}

/// The bundled TURN server's metrics: live (every second), summed over the TURN workers.
#[derive(Clone)]
pub struct TurnMetrics {
    pub allocations: IntGauge,
    pub allocations_total: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub peers_denied: IntCounter,
    pub relayed_packets: IntCounterVec,
    pub relayed_bytes: IntCounterVec,
    pub quota_refusals: IntCounterVec,
    pub dropped: IntCounterVec,
    pub requests: IntCounter,
    pub error_responses: IntCounter,
    /// The TURN cores' tables.
    pub sizes: CoreSizes,
}

impl TurnMetrics {
    pub fn register(r: &Registry, sizes: CoreSizes) -> Self {
        TurnMetrics {
            sizes,
            allocations: reg(
                r,
                IntGauge::new("tandem_turn_allocations", "TURN allocations active")
                    .expect("valid metric"),
            ),
            allocations_total: counter_vec(
                r,
                "tandem_turn_allocations_total",
                "TURN allocations by event: created, expired (lifetime ran out), deleted (refresh 0 or connection closed), revoked (their call ended)",
                &["event"],
            ),
            auth_failures: counter_vec(
                r,
                "tandem_turn_auth_failures_total",
                "TURN requests refused for authentication, by reason (missing is every client's first step)",
                &["reason"],
            ),
            peers_denied: counter(
                r,
                "tandem_turn_peers_denied_total",
                "TURN peer addresses refused by the peer filter",
            ),
            relayed_packets: counter_vec(
                r,
                "tandem_turn_relayed_packets_total",
                "Packets relayed by TURN, by direction, client transport and framing",
                &["direction", "transport", "framing"],
            ),
            relayed_bytes: counter_vec(
                r,
                "tandem_turn_relayed_bytes_total",
                "Payload bytes relayed by TURN, by direction, client transport and framing",
                &["direction", "transport", "framing"],
            ),
            quota_refusals: counter_vec(
                r,
                "tandem_turn_quota_refusals_total",
                "TURN requests refused by a quota: user (allocations per user, 486), capacity (508)",
                &["quota"],
            ),
            dropped: counter_vec(
                r,
                "tandem_turn_dropped_total",
                "TURN input dropped, by reason",
                &["reason"],
            ),
            requests: counter(r, "tandem_turn_requests_total", "TURN requests answered"),
            error_responses: counter(
                r,
                "tandem_turn_error_responses_total",
                "TURN error responses sent",
            ),
        }
    }

    /// Adds one worker's counter deltas since `last`.
    pub fn apply(&self, last: &tandem_turn::Counters, now: &tandem_turn::Counters) {
        use tandem_turn::{Direction, RelayKind, Transport};
        self.allocations
            .add(now.allocations_active as i64 - last.allocations_active as i64);
        bump(
            &self.allocations_total,
            "created",
            now.allocations_created,
            last.allocations_created,
        );
        bump(
            &self.allocations_total,
            "expired",
            now.allocations_expired,
            last.allocations_expired,
        );
        bump(
            &self.allocations_total,
            "deleted",
            now.allocations_deleted,
            last.allocations_deleted,
        );
        bump(
            &self.allocations_total,
            "revoked",
            now.allocations_revoked,
            last.allocations_revoked,
        );
        bump(
            &self.auth_failures,
            "revoked",
            now.auth_revoked,
            last.auth_revoked,
        );
        bump(
            &self.auth_failures,
            "missing",
            now.auth_missing,
            last.auth_missing,
        );
        bump(
            &self.auth_failures,
            "bad_integrity",
            now.auth_bad_integrity,
            last.auth_bad_integrity,
        );
        bump(
            &self.auth_failures,
            "unknown_user",
            now.auth_unknown_user,
            last.auth_unknown_user,
        );
        bump(
            &self.auth_failures,
            "stale_nonce",
            now.auth_stale_nonce,
            last.auth_stale_nonce,
        );
        bump(
            &self.auth_failures,
            "wrong_credentials",
            now.auth_wrong_credentials,
            last.auth_wrong_credentials,
        );
        self.peers_denied
            .inc_by(now.peers_denied - last.peers_denied);
        for (dir, dname) in [
            (Direction::ClientToPeer, "client_to_peer"),
            (Direction::PeerToClient, "peer_to_client"),
        ] {
            for t in Transport::ALL {
                for (kind, kname) in [
                    (RelayKind::ChannelData, "channel_data"),
                    (RelayKind::Indication, "indication"),
                ] {
                    let (a, b) = (now.relayed(dir, t, kind), last.relayed(dir, t, kind));
                    if a.packets > b.packets {
                        let labels = [dname, t.as_str(), kname];
                        self.relayed_packets
                            .with_label_values(&labels)
                            .inc_by(a.packets - b.packets);
                        self.relayed_bytes
                            .with_label_values(&labels)
                            .inc_by(a.bytes - b.bytes);
                    }
                }
            }
        }
        bump(
            &self.quota_refusals,
            "user",
            now.quota_user,
            last.quota_user,
        );
        bump(
            &self.quota_refusals,
            "capacity",
            now.quota_capacity,
            last.quota_capacity,
        );
        bump(
            &self.dropped,
            "malformed",
            now.malformed_dropped,
            last.malformed_dropped,
        );
        bump(
            &self.dropped,
            "no_permission",
            now.no_permission_dropped,
            last.no_permission_dropped,
        );
        bump(
            &self.dropped,
            "unroutable",
            now.unroutable_dropped,
            last.unroutable_dropped,
        );
        bump(
            &self.dropped,
            "rate_limited",
            now.rate_limited_dropped,
            last.rate_limited_dropped,
        );
        bump(
            &self.dropped,
            "queue_full",
            now.queue_full_dropped,
            last.queue_full_dropped,
        );
        bump(
            &self.dropped,
            "bind_failed",
            now.bind_failures,
            last.bind_failures,
        );
        bump(
            &self.dropped,
            "unauthenticated_rate",
            now.unauth_dropped,
            last.unauth_dropped,
        );
        self.requests.inc_by(now.requests - last.requests);
        self.error_responses
            .inc_by(now.error_responses - last.error_responses);
    }
}

/// Shared files: uploads and downloads by outcome, what is stored, what went and why.
#[derive(Clone)]
pub struct FileMetrics {
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub downloads: IntCounterVec,
    pub stored_files: IntGauge,
    pub stored_bytes: IntGauge,
    pub expirations: IntCounter,
    pub deleted: IntCounterVec,
}

/// Every upload outcome label (pre-registered so dashboards see zeros).
pub const UPLOAD_OUTCOMES: [&str; 11] = [
    "ok",
    "unauthorized",
    "rate_limited",
    "not_in_chat",
    "too_large",
    "invalid_upload",
    "unsupported_type",
    "voice_too_long",
    "storage_full",
    "partner_away_queue_full",
    "error",
];
/// Every download outcome label.
pub const DOWNLOAD_OUTCOMES: [&str; 7] = [
    "ok",
    "unauthorized",
    "invalid_signature",
    "expired",
    "not_found",
    "forbidden",
    "error",
];

impl FileMetrics {
    pub fn register(r: &Registry) -> Self {
        let m = FileMetrics {
            uploads: counter_vec(
                r,
                "tandem_file_uploads_total",
                "File uploads by category (unknown until the type is known) and outcome",
                &["category", "outcome"],
            ),
            upload_bytes: counter(
                r,
                "tandem_file_upload_bytes_total",
                "Bytes of accepted uploads",
            ),
            downloads: counter_vec(
                r,
                "tandem_file_downloads_total",
                "File downloads (GET and HEAD) by outcome",
                &["outcome"],
            ),
            stored_files: reg(
                r,
                IntGauge::new("tandem_files_stored", "Shared files stored now")
                    .expect("valid metric"),
            ),
            stored_bytes: reg(
                r,
                IntGauge::new("tandem_file_bytes_stored", "Bytes of shared files stored now")
                    .expect("valid metric"),
            ),
            expirations: counter(
                r,
                "tandem_file_expirations_total",
                "Shared files deleted because their lifetime ran out",
            ),
            deleted: counter_vec(
                r,
                "tandem_files_deleted_total",
                "Shared files deleted, by reason: expired, chat_ended, unsent (the chat ended during the upload)",
                &["reason"],
            ),
        };
        for outcome in DOWNLOAD_OUTCOMES {
            m.downloads.with_label_values(&[outcome]);
        }
        for cat in tandem_signaling::files::Category::ALL {
            m.uploads.with_label_values(&[cat.as_str(), "ok"]);
        }
        for outcome in UPLOAD_OUTCOMES {
            m.uploads.with_label_values(&["unknown", outcome]);
        }
        for reason in ["expired", "chat_ended", "unsent"] {
            m.deleted.with_label_values(&[reason]);
        }
        m
    }
}

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
        ("tandem_redis_command_seconds", "command", "`ping`, `heartbeat`, `leave`, `match_*`, `session_get`, `session_set`, `node_entry`, `node_alive`, `room_claim`, `file_set`, `file_get`, `ip_limit`"),
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
