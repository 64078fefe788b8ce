//! Statistics: the monotonic counters behind the metrics, and the coalescing of the
//! `realtime:stats` broadcast (at most one per interval, and only when something changed).

use std::time::{Duration, Instant};

use crate::wire::Stats;

/// Monotonic counters for metrics; the shell turns deltas into Prometheus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub guests_created: u64,
    pub matches: u64,
    pub chats_ended: [u64; 4],
    pub messages_relayed: u64,
    pub receipts_delivered: u64,
    pub receipts_read: u64,
    pub floods_closed: u64,
    pub sessions_expired: u64,
    /// Sessions removed because no socket connected within `connect_timeout`.
    pub sessions_reaped: u64,
    pub calls_requested: u64,
    pub calls_accepted: u64,
    /// Calls ended, indexed by [`crate::CallEndReason`] (see [`crate::CallEndReason::ALL`]). A
    /// call that ends with its chat counts as `partner_left`.
    pub calls_ended: [u64; 5],
}

/// When the live statistics are broadcast: something that may change them marks them
/// [`Broadcast::changed`]; they are then due at once, or one interval after the last broadcast,
/// and go out only if they differ from what was last sent.
pub(crate) struct Broadcast {
    interval: Duration,
    due: Option<Instant>,
    sent_at: Option<Instant>,
    sent: Option<Stats>,
}

impl Broadcast {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            due: None,
            sent_at: None,
            sent: None,
        }
    }

    /// The statistics may have changed at `now`.
    pub(crate) fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            let due = match self.sent_at {
                Some(at) => (at + self.interval).max(now),
                None => now,
            };
            self.due = Some(due);
        }
    }

    /// When a broadcast is due, if one is.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// Is a broadcast due at `now`? If so it is no longer pending: call
    /// [`Broadcast::publish`] with the current statistics.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        if self.due.is_some_and(|due| due <= now) {
            self.due = None;
            return true;
        }
        false
    }

    /// The statistics at `now`, when a broadcast was due: whether to send them (they differ
    /// from the last ones sent).
    pub(crate) fn publish(&mut self, stats: Stats, now: Instant) -> bool {
        if self.sent == Some(stats) {
            return false;
        }
        self.sent = Some(stats);
        self.sent_at = Some(now);
        true
    }

    /// What was last broadcast, if anything.
    pub(crate) fn last_sent(&self) -> Option<Stats> {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(total: u64) -> Stats {
        Stats {
            total_users: total,
            ..Stats::default()
        }
    }

    #[test]
    fn first_change_is_due_at_once() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(Duration::from_secs(1));
        assert_eq!(b.deadline(), None);
        assert!(!b.take_due(t0));
        b.changed(t0);
        assert_eq!(b.deadline(), Some(t0));
        assert!(b.take_due(t0));
        assert!(!b.take_due(t0));
        assert!(b.publish(st(1), t0));
        assert_eq!(b.last_sent(), Some(st(1)));
    }

    #[test]
    fn later_changes_wait_for_the_interval_and_coalesce() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = Broadcast::new(Duration::from_secs(1));
        b.changed(t0);
        assert!(b.take_due(t0) && b.publish(st(1), t0));
        b.changed(ms(200));
        b.changed(ms(700));
        assert_eq!(b.deadline(), Some(ms(1000)));
        assert!(!b.take_due(ms(999)));
        assert!(b.take_due(ms(1000)));
        // Unchanged statistics are not sent again, and do not restart the interval.
        assert!(!b.publish(st(1), ms(1000)));
        b.changed(ms(1500));
        assert_eq!(b.deadline(), Some(ms(1500)));
        assert!(b.take_due(ms(1500)) && b.publish(st(2), ms(1500)));
        // Long after the interval: due at once.
        b.changed(ms(9000));
        assert_eq!(b.deadline(), Some(ms(9000)));
    }
}
