//! Prometheus metrics. Every label is from a fixed set (never a session or room id).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tandem_signaling::wire::{EndReason, Stats};
use tandem_signaling::{ClientEvent, Counters, SignalError};

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
    pub floods_closed: IntCounter,
    pub event_latency: HistogramVec,
    pub hub_batch: Histogram,
    pub resident_memory: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl SignalingMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter =
            |name: &str, help: &str| reg(r, IntCounter::new(name, help).expect("valid metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
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
                "Deliveries that got no ack from the receiver",
            ),
            sessions_expired: counter(
                "tandem_sessions_expired_total",
                "Guest sessions swept after expiry",
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
        };
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
            self.chats_ended
                .with_label_values(&[reason.as_str()])
                .inc_by(now.chats_ended[i] - last.chats_ended[i]);
        }
        self.messages_relayed
            .inc_by(now.messages_relayed - last.messages_relayed);
        self.receipts
            .with_label_values(&["delivered"])
            .inc_by(now.receipts_delivered - last.receipts_delivered);
        self.receipts
            .with_label_values(&["read"])
            .inc_by(now.receipts_read - last.receipts_read);
        self.floods_closed
            .inc_by(now.floods_closed - last.floods_closed);
        self.sessions_expired
            .inc_by(now.sessions_expired - last.sessions_expired);
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

impl HttpMetrics {
    pub fn register(r: &Registry) -> Self {
        Self {
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
        }
    }
}

pub fn encode(r: &Registry) -> String {
    let mut buf = Vec::new();
    if TextEncoder::new().encode(&r.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
