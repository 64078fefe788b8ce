//! The core's one timer mechanism: a min-heap of deadlines. Parts do not keep timers: they
//! return the instants something of theirs is due (an expiry, a grace period, a cooldown, a
//! ring timeout), the core schedules them here, and when one is due asks the part again,
//! which checks it still applies (generations and stored deadlines make stale timers no-ops).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ids::{CallId, RoomId, SessionId};

/// What is due. At equal instants timers fire in this order (variant, then fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A typing indicator's expiry (its generation).
    Typing(SessionId, u64),
    /// The end of the grace period of an away guest (its presence generation).
    Grace(SessionId, u64),
    Expiry(SessionId),
    /// The deadline for a guest's first socket.
    Unconnected(SessionId),
    /// The end of the re-pair cooldown of two guests.
    Unblock(SessionId, SessionId),
    /// A call's ring timeout (the call id doubles as its generation).
    Ring(RoomId, CallId),
    /// The periodic check of the active-guest count.
    Sweep,
    /// The deadline of a client event forwarded to another node (its bus request id).
    Request(u64),
    /// Partner messages the bus refused: hand them out again.
    BusRetry,
    /// The latest a sender's acknowledgements wait for their message's journal entry (its
    /// ticket).
    Journal(u64),
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest timer due at or before `now`, taken out.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, timer))| timer)
    }

    /// When the earliest timer is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_timers_come_out_in_time_then_timer_order() {
        let t0 = Instant::now();
        let s = |n| SessionId::from_raw(n);
        let mut t = Timers::default();
        t.schedule(t0 + Duration::from_secs(2), Timer::Sweep);
        t.schedule(t0 + Duration::from_secs(1), Timer::Expiry(s(2)));
        t.schedule(t0 + Duration::from_secs(1), Timer::Typing(s(9), 1));
        t.schedule(t0 + Duration::from_secs(1), Timer::Expiry(s(1)));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(now), Some(Timer::Typing(s(9), 1)));
        assert_eq!(t.pop_due(now), Some(Timer::Expiry(s(1))));
        assert_eq!(t.pop_due(now), Some(Timer::Expiry(s(2))));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }
}
