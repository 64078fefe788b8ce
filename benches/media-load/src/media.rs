//! What travels in the RTP payloads and what the receivers count.
//!
//! Every payload carries a 24-byte stamp, big-endian: magic u32, stream u32 (sender peer index
//! × 2, + 1 for video), sequence u64 (per stream, one per packet), send time u64 (nanoseconds
//! since the process-wide [`now_ns`] anchor). Sender and receiver live in the same process, so
//! `now_ns() - send time` is the one-way latency. Video payloads start with a one-byte VP8
//! payload descriptor (RFC 7741 §4.2: `0x10` on a frame's first packet, `0x00` on the others).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;

/// First stamp byte `0x11`: read as a VP8 frame tag it is an interframe (P bit set), version 0,
/// shown — a frame a VP8-aware forwarder has no reason to treat specially.
pub const MAGIC: u32 = 0x1154_4E44;
pub const STAMP_LEN: usize = 24;

static ANCHOR: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide anchor.
pub fn now_ns() -> u64 {
    ANCHOR.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The [`Instant`] of a time in nanoseconds since the anchor.
pub fn instant_at(ns: u64) -> Instant {
    *ANCHOR.get_or_init(Instant::now) + std::time::Duration::from_nanos(ns)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_ns.to_be_bytes());
    }

    pub fn read(b: &[u8]) -> Option<Stamp> {
        let b = b.get(..STAMP_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        (u32_at(0) == MAGIC).then(|| Stamp {
            stream: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

/// Length of the VP8 payload descriptor at the start of `b` (RFC 7741 §4.2), if well formed.
pub fn vp8_descriptor_len(b: &[u8]) -> Option<usize> {
    let first = *b.first()?;
    if first & 0x80 == 0 {
        return Some(1);
    }
    let ext = *b.get(1)?;
    let mut len = 2;
    if ext & 0x80 != 0 {
        // PictureID: 7 bits, or 15 when its M bit is set.
        len += if b.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    if ext & 0x40 != 0 {
        len += 1; // TL0PICIDX
    }
    if ext & 0x30 != 0 {
        len += 1; // TID/Y/KEYIDX
    }
    (len <= b.len()).then_some(len)
}

/// Where the stamp starts in a received payload: at 0 for audio, after the VP8 descriptor for
/// video (tried the other way round too, should a forwarder have changed the payload type).
pub fn find_stamp(payload: &[u8], video: bool) -> Option<Stamp> {
    let after_vp8 = || vp8_descriptor_len(payload).and_then(|n| Stamp::read(&payload[n..]));
    if video {
        after_vp8().or_else(|| Stamp::read(payload))
    } else {
        Stamp::read(payload).or_else(after_vp8)
    }
}

/// What a newly seen sequence number means for its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Past the highest so far; `gap` sequence numbers were skipped.
    Ahead {
        gap: u64,
    },
    /// Below the highest, first time seen: reordered, or recovered by retransmission.
    Late,
    Duplicate,
    /// Too far below the highest to tell (counted as late).
    Old,
}

/// Per-stream sequence bookkeeping with a 128-packet memory.
#[derive(Debug, Default)]
pub struct SeqTracker {
    highest: Option<u64>,
    /// Bit i: `highest - i` was seen.
    seen: u128,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Seen {
        let Some(high) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return Seen::Ahead { gap: 0 };
        };
        if seq > high {
            let d = seq - high;
            self.seen = if d >= 128 { 0 } else { self.seen << d } | 1;
            self.highest = Some(seq);
            return Seen::Ahead { gap: d - 1 };
        }
        let d = high - seq;
        if d >= 128 {
            return Seen::Old;
        }
        let bit = 1u128 << d;
        if self.seen & bit != 0 {
            Seen::Duplicate
        } else {
            self.seen |= bit;
            Seen::Late
        }
    }
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one phase (through tandem, or the direct baseline). "Window" counters count
/// only packets *sent* inside the measured window, wherever they are received.
pub struct Metrics {
    window_start: AtomicU64,
    window_end: AtomicU64,
    pub sent_total: Counter,
    pub sent: Counter,
    pub sent_bytes: Counter,
    pub write_errors: Counter,
    pub ticks_skipped: Counter,
    pub received_total: Counter,
    pub received: Counter,
    pub received_bytes: Counter,
    pub gaps: Counter,
    pub late: Counter,
    pub duplicates: Counter,
    pub unparsed: Counter,
    /// Remote tracks announced (`on_track`) across all peers.
    pub remote_tracks: Counter,
    /// One-way latency of window packets in µs: audio, video.
    pub latency_us: [Mutex<Histogram<u64>>; 2],
}

/// 1 µs .. 60 s, 3 significant digits.
fn new_histogram() -> Mutex<Histogram<u64>> {
    Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            sent_total: Counter::default(),
            sent: Counter::default(),
            sent_bytes: Counter::default(),
            write_errors: Counter::default(),
            ticks_skipped: Counter::default(),
            received_total: Counter::default(),
            received: Counter::default(),
            received_bytes: Counter::default(),
            gaps: Counter::default(),
            late: Counter::default(),
            duplicates: Counter::default(),
            unparsed: Counter::default(),
            remote_tracks: Counter::default(),
            latency_us: [new_histogram(), new_histogram()],
        }
    }
}

impl Metrics {
    /// Measures packets sent in `[start, end)` (ns since the anchor).
    pub fn open_window(&self, start: u64, end: u64) {
        self.window_end.store(end, Ordering::Relaxed);
        self.window_start.store(start, Ordering::Relaxed);
    }

    pub fn in_window(&self, sent_ns: u64) -> bool {
        sent_ns >= self.window_start.load(Ordering::Relaxed)
            && sent_ns < self.window_end.load(Ordering::Relaxed)
    }

    /// Latency histograms: (audio and video together, audio, video).
    pub fn latency(&self) -> [Histogram<u64>; 3] {
        let audio = self.latency_us[0].lock().expect("histogram").clone();
        let video = self.latency_us[1].lock().expect("histogram").clone();
        let mut all = audio.clone();
        all.add(&video).expect("same bounds");
        [all, audio, video]
    }

    pub fn on_sent(&self, sent_ns: u64, bytes: usize) {
        self.sent_total.add(1);
        if self.in_window(sent_ns) {
            self.sent.add(1);
            self.sent_bytes.add(bytes as u64);
        }
    }

    /// One received RTP payload (`bytes` = its length) on a track of `video` kind.
    pub fn on_received(
        &self,
        trackers: &mut std::collections::HashMap<u32, SeqTracker>,
        payload: &[u8],
        video: bool,
        now: u64,
    ) {
        let Some(stamp) = find_stamp(payload, video) else {
            self.unparsed.add(1);
            return;
        };
        let seen = trackers.entry(stamp.stream).or_default().observe(stamp.seq);
        match seen {
            Seen::Ahead { gap } => self.gaps.add(gap),
            Seen::Late | Seen::Old => self.late.add(1),
            Seen::Duplicate => {
                self.duplicates.add(1);
                return;
            }
        }
        self.received_total.add(1);
        if self.in_window(stamp.sent_ns) {
            self.received.add(1);
            self.received_bytes.add(payload.len() as u64);
            let us = now.saturating_sub(stamp.sent_ns) / 1000;
            self.latency_us[usize::from(video)]
                .lock()
                .expect("histogram")
                .saturating_record(us.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let s = Stamp {
            stream: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut b = vec![0x10];
        s.write(&mut b);
        b.resize(100, 0);
        assert_eq!(b[1], 0x11);
        assert_eq!(Stamp::read(&b[1..]), Some(s));
        assert_eq!(find_stamp(&b, true), Some(s));
        assert_eq!(find_stamp(&b[1..], false), Some(s));
        assert_eq!(Stamp::read(&b[..10]), None);
        assert_eq!(Stamp::read(&[0u8; 30]), None);
    }

    #[test]
    fn vp8_descriptor() {
        assert_eq!(vp8_descriptor_len(&[0x10, 0]), Some(1));
        // X, then I with a 15-bit picture id, L, T.
        assert_eq!(
            vp8_descriptor_len(&[0x90, 0xE0, 0x80, 0x01, 0x00, 0x00, 9]),
            Some(6)
        );
        // X, I with a 7-bit picture id.
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80, 0x05, 9]), Some(3));
        assert_eq!(vp8_descriptor_len(&[0x90]), None);
        assert_eq!(vp8_descriptor_len(&[]), None);
    }

    #[test]
    fn sequence_tracking() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10), Seen::Ahead { gap: 0 });
        assert_eq!(t.observe(11), Seen::Ahead { gap: 0 });
        assert_eq!(t.observe(14), Seen::Ahead { gap: 2 });
        assert_eq!(t.observe(12), Seen::Late);
        assert_eq!(t.observe(12), Seen::Duplicate);
        assert_eq!(t.observe(14), Seen::Duplicate);
        assert_eq!(t.observe(400), Seen::Ahead { gap: 385 });
        assert_eq!(t.observe(13), Seen::Old);
        assert_eq!(t.observe(399), Seen::Late);
    }

    #[test]
    fn window_counts_only_window_sends() {
        let m = Metrics::default();
        let mut trackers = Default::default();
        let payload = |seq, sent_ns| {
            let mut b = Vec::new();
            Stamp {
                stream: 1,
                seq,
                sent_ns,
            }
            .write(&mut b);
            b
        };
        m.on_received(&mut trackers, &payload(0, 5), false, 10);
        m.open_window(100, 200);
        m.on_received(&mut trackers, &payload(1, 150), false, 2150);
        m.on_received(&mut trackers, &payload(1, 150), false, 2150);
        m.on_received(&mut trackers, &payload(3, 250), false, 260);
        assert_eq!(m.received_total.get(), 3);
        assert_eq!(m.received.get(), 1);
        assert_eq!(m.duplicates.get(), 1);
        assert_eq!(m.gaps.get(), 1);
        let [all, audio, video] = m.latency();
        assert_eq!((all.len(), audio.len(), video.len()), (1, 1, 0));
        assert_eq!(all.max(), 2);
    }
}
