//! Per-call quality: what each leg of a call (one guest's connection to the SFU) saw, from the
//! RTCP statistics str0m reports every stats interval and from the video frames forwarded,
//! summed up once the call ends ([`CallReport`]) for histograms across calls and one log line
//! per call. Everything here is bounded: a leg keeps at most [`MAX_POINTS`] points per figure
//! however long the call lasts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::media::Mid;
use str0m::net::Protocol;
use str0m::CandidateKind;
use tandem_signaling::{CallId, RoomId, SessionId};

use crate::stats::Direction;

/// Points kept per figure and leg; past it every other point is dropped and only every other
/// new one is kept from then on (the average still counts every point).
pub const MAX_POINTS: usize = 64;
/// A gap between two video frames of one stream longer than this is a freeze (the picture
/// stood still long enough for a person to notice).
pub const FREEZE_GAP: Duration = Duration::from_millis(500);

/// The figures, in the order of [`Leg`]'s arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Fraction of packets lost (0..=1).
    Loss = 0,
    /// Interarrival jitter, seconds.
    Jitter = 1,
    /// Round-trip time, seconds.
    Rtt = 2,
    /// Bits per second of media.
    Bitrate = 3,
    /// Video frames per second.
    Fps = 4,
}

impl Figure {
    pub const ALL: [Figure; 5] = [
        Figure::Loss,
        Figure::Jitter,
        Figure::Rtt,
        Figure::Bitrate,
        Figure::Fps,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Figure::Loss => "loss",
            Figure::Jitter => "jitter",
            Figure::Rtt => "rtt",
            Figure::Bitrate => "bitrate",
            Figure::Fps => "fps",
        }
    }
}

/// One figure's points over a call, bounded.
#[derive(Debug, Clone, Default)]
pub struct Series {
    kept: Vec<f32>,
    /// Keep one new point out of this many (doubles each time `kept` is halved).
    stride: u32,
    /// New points to skip before keeping the next one.
    skip: u32,
    sum: f64,
    count: u64,
}

/// A figure's average and 95th percentile over a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub avg: f64,
    pub p95: f64,
    /// Points it was computed from.
    pub count: u64,
}

impl Series {
    pub fn push(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.sum += v;
        self.count += 1;
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        self.kept.push(v as f32);
        self.stride = self.stride.max(1);
        self.skip = self.stride - 1;
        if self.kept.len() >= MAX_POINTS {
            let mut i = 0;
            self.kept.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
            self.skip = self.stride - 1;
        }
    }

    /// Adds every point of `other` (a leg's earlier connection) to this one.
    pub fn merge(&mut self, other: &Series) {
        self.sum += other.sum;
        self.count += other.count;
        for v in &other.kept {
            if self.kept.len() >= MAX_POINTS {
                break;
            }
            self.kept.push(*v);
        }
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let mut sorted = self.kept.clone();
        sorted.sort_by(f32::total_cmp);
        // Nearest rank.
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        let p95 = sorted
            .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
            .copied()
            .map_or(self.sum / self.count as f64, f64::from);
        Some(Summary {
            avg: self.sum / self.count as f64,
            p95,
            count: self.count,
        })
    }
}

/// The path a leg's media took: the remote (guest's) candidate type and the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `host`, `srflx`, `prflx` or `relay` (a guest behind TURN).
    pub candidate: &'static str,
    /// `udp` or `tcp` (ICE-TCP).
    pub transport: &'static str,
}

impl Route {
    /// Every candidate label, for counters indexed by [`Route::index`].
    pub const CANDIDATES: [&'static str; 4] = ["host", "srflx", "prflx", "relay"];
    pub const TRANSPORTS: [&'static str; 2] = ["udp", "tcp"];

    pub fn new(kind: Option<CandidateKind>, proto: Protocol) -> Route {
        let candidate = match kind {
            Some(CandidateKind::Host) => "host",
            Some(CandidateKind::ServerReflexive) => "srflx",
            Some(CandidateKind::Relayed) => "relay",
            // Learned from a connectivity check (a browser's mDNS host candidate, or a NAT
            // mapping nobody signalled).
            Some(CandidateKind::PeerReflexive) | None => "prflx",
        };
        let transport = match proto {
            Protocol::Udp => "udp",
            _ => "tcp",
        };
        Route {
            candidate,
            transport,
        }
    }

    /// `(candidate, transport)` indices into [`Route::CANDIDATES`] and [`Route::TRANSPORTS`].
    pub fn index(&self) -> (usize, usize) {
        let c = Route::CANDIDATES
            .iter()
            .position(|c| *c == self.candidate)
            .unwrap_or(2);
        (c, usize::from(self.transport == "tcp"))
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.candidate, self.transport)
    }
}

/// What one leg (a guest's side of a call) saw, by `[kind][direction][figure]`
/// (kind: audio, video; direction: [`Direction`]).
#[derive(Debug, Clone, Default)]
pub struct Leg {
    pub series: [[[Series; 5]; 2]; 2],
    /// Video freezes by direction.
    pub freezes: [u32; 2],
    /// The last route its media took.
    pub route: Option<Route>,
    /// Last video frame by direction.
    last_frame: [Option<Instant>; 2],
    /// Video frames by direction since the last fps point, and when that was.
    frames: [u32; 2],
    fps_since: [Option<Instant>; 2],
    /// Last cumulative byte count per `(mid, direction)` stream and when it was read.
    bytes_seen: Vec<(Mid, usize, u64, Instant)>,
}

/// Stats streams one leg tracks at most (bitrate bookkeeping).
const MAX_STREAMS: usize = 32;

impl Leg {
    /// A video frame (its last packet) went `dir` at `at`.
    pub fn frame(&mut self, dir: Direction, at: Instant) {
        let d = dir as usize;
        if let Some(last) = self.last_frame[d] {
            if at.saturating_duration_since(last) > FREEZE_GAP {
                self.freezes[d] += 1;
            }
        }
        self.last_frame[d] = Some(at);
        self.frames[d] = self.frames[d].saturating_add(1);
    }

    pub fn point(&mut self, kind: usize, dir: Direction, figure: Figure, v: f64) {
        self.series[kind & 1][dir as usize][figure as usize].push(v);
    }

    /// A stats report of stream `mid` going `dir` with `bytes` sent or received so far, at
    /// `at`: a bitrate point (from the previous report of the stream) and, for video, a frame
    /// rate point.
    pub fn bytes(&mut self, kind: usize, dir: Direction, mid: Mid, bytes: u64, at: Instant) {
        let d = dir as usize;
        let seen = self
            .bytes_seen
            .iter()
            .position(|(m, dd, _, _)| *m == mid && *dd == d);
        match seen {
            Some(i) => {
                let (_, _, before, then) = self.bytes_seen[i];
                let dt = at.saturating_duration_since(then).as_secs_f64();
                if dt > 0.0 {
                    let bits = bytes.saturating_sub(before) as f64 * 8.0;
                    self.point(kind, dir, Figure::Bitrate, bits / dt);
                }
                self.bytes_seen[i] = (mid, d, bytes, at);
            }
            None if self.bytes_seen.len() < MAX_STREAMS => {
                self.bytes_seen.push((mid, d, bytes, at))
            }
            None => {}
        }
        if kind == 1 {
            if let Some(since) = self.fps_since[d] {
                let dt = at.saturating_duration_since(since).as_secs_f64();
                if dt > 0.0 {
                    self.point(1, dir, Figure::Fps, f64::from(self.frames[d]) / dt);
                }
            }
            self.frames[d] = 0;
            self.fps_since[d] = Some(at);
        }
    }
}

/// A leg's figures once the call is over.
#[derive(Debug, Clone)]
pub struct LegReport {
    pub guest: SessionId,
    pub route: Option<Route>,
    /// By `[kind][direction][figure]`; `None` where nothing was measured.
    pub figures: [[[Option<Summary>; 5]; 2]; 2],
    /// Video freezes by direction.
    pub freezes: [u32; 2],
    /// Video flowed that way at all (so freezes mean something).
    pub video: [bool; 2],
}

impl LegReport {
    pub fn new(guest: SessionId, leg: &Leg) -> LegReport {
        let figures = std::array::from_fn(|k| {
            std::array::from_fn(|d| std::array::from_fn(|f| leg.series[k][d][f].summary()))
        });
        LegReport {
            guest,
            route: leg.route,
            figures,
            freezes: leg.freezes,
            video: std::array::from_fn(|d| leg.last_frame[d].is_some()),
        }
    }
}

/// A call's quality, handed to the shell once the call is over.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub call: CallId,
    pub room: RoomId,
    /// From the accept (the media session opened) to the close.
    pub duration: Duration,
    /// From the accept until both legs were connected the first time (`None`: never both).
    pub setup: Option<Duration>,
    pub legs: [LegReport; 2],
}

/// The remote candidates a leg signalled, to name the route its media took.
#[derive(Debug, Default)]
pub struct Remotes {
    kinds: Vec<(SocketAddr, CandidateKind)>,
}

impl Remotes {
    /// Remembers a signalled candidate (bounded by the peer's candidate cap).
    pub fn add(&mut self, addr: SocketAddr, kind: CandidateKind) {
        if self.kinds.len() < crate::peer::MAX_REMOTE_CANDIDATES
            && !self.kinds.iter().any(|(a, _)| *a == addr)
        {
            self.kinds.push((addr, kind));
        }
    }

    pub fn kind_of(&self, addr: SocketAddr) -> Option<CandidateKind> {
        self.kinds.iter().find(|(a, _)| *a == addr).map(|(_, k)| *k)
    }
}

/// After a cut (the estimate fell, or a report showed heavy loss), the ceiling holds this long
/// before it may rise again.
pub const CEILING_HOLD: Duration = Duration::from_secs(2);
/// The ceiling rises at most once per this long, by [`CEILING_STEP_PERCENT`].
pub const CEILING_STEP_EVERY: Duration = Duration::from_secs(1);
/// How much the ceiling rises per step while the guest's receiver reports show no loss.
pub const CEILING_STEP_PERCENT: u64 = 8;
/// The highest ceiling ever told (what a browser's single video stream may usefully carry).
pub const MAX_CEILING_BPS: u64 = 2_500_000;
/// Loss in a receiver report below which the ceiling may rise, and above which it is cut.
const LOSS_LOW: f32 = 0.02;
const LOSS_HIGH: f32 = 0.10;

/// What a guest's senders may send it, bits per second: its downlink estimate less a margin
/// ([`crate::CEILING_PERCENT`]), and also raised step by step while the guest's receiver
/// reports show no loss, as the loss-based half of Google's congestion control does.
///
/// The raising is what lets a ceiling come back up. str0m's delay-based estimate only grows
/// while the link is used, and the senders, held below it by this very ceiling, never use more:
/// without probing an estimate that fell (a shaped downlink) would stay down after the link
/// frees up. Probing (str0m's padding clusters) is no way out on a token-bucket link: a
/// cluster fits in the bucket's burst and reads as megabits on a 200 kbit/s link.
#[derive(Debug, Default, Clone)]
pub struct Ceiling {
    bps: Option<u64>,
    /// The last estimate from str0m.
    estimate: u64,
    /// No rise before this (after a cut).
    hold_until: Option<Instant>,
    /// When it last rose by a step.
    stepped: Option<Instant>,
}

impl Ceiling {
    /// str0m's estimate of the guest's downlink changed: a fall cuts the ceiling to it (less
    /// the margin) at once and holds it there for a while; a rise lifts it to it.
    pub fn on_estimate(&mut self, estimate: u64, now: Instant) {
        let target = estimate / 100 * crate::CEILING_PERCENT;
        let bps = match self.bps {
            Some(bps) if estimate < self.estimate => {
                self.hold_until = Some(now + CEILING_HOLD);
                bps.min(target)
            }
            Some(bps) => bps.max(target),
            None => target,
        };
        self.bps = Some(bps.min(MAX_CEILING_BPS));
        self.estimate = estimate;
    }

    /// A receiver report of the guest: `loss`, the fraction of what the server sent it that
    /// it lost since the report before. Heavy loss cuts the ceiling in proportion; none lets it
    /// rise a step (at most once per [`CEILING_STEP_EVERY`], not during a hold).
    pub fn on_loss(&mut self, loss: f32, now: Instant) {
        let Some(bps) = self.bps else {
            return;
        };
        if loss > LOSS_HIGH {
            // Keeps 1 − loss / 2 of it (in thousandths).
            let kept = 1000 - (500.0 * loss.min(1.0)).round() as u64;
            self.bps = Some(bps / 1000 * kept);
            self.hold_until = Some(now + CEILING_HOLD);
            return;
        }
        let held = self.hold_until.is_some_and(|t| now < t);
        let recent = self
            .stepped
            .is_some_and(|t| now.saturating_duration_since(t) < CEILING_STEP_EVERY);
        if loss < LOSS_LOW && !held && !recent {
            let up = bps.saturating_mul(100 + CEILING_STEP_PERCENT) / 100;
            self.bps = Some(up.min(MAX_CEILING_BPS));
            self.stepped = Some(now);
        }
    }

    /// The ceiling to tell the senders (never under [`crate::MIN_VIDEO_BPS`]); none before
    /// str0m's first estimate.
    pub fn bps(&self) -> Option<u64> {
        self.bps.map(|b| b.max(crate::MIN_VIDEO_BPS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_stays_bounded_and_keeps_the_average_of_every_point() {
        let mut s = Series::default();
        for i in 0..10_000 {
            s.push(f64::from(i % 100));
        }
        assert!(s.kept.len() < MAX_POINTS);
        let sum = s.summary().unwrap();
        assert_eq!(sum.count, 10_000);
        assert!((sum.avg - 49.5).abs() < 1e-9, "{}", sum.avg);
        assert!(sum.p95 >= 80.0, "p95 of 0..99 spread evenly: {}", sum.p95);
        assert!(Series::default().summary().is_none());
        let mut few = Series::default();
        for v in [0.0, 0.0, 0.0, 1.0] {
            few.push(v);
        }
        assert_eq!(few.summary().unwrap().p95, 1.0);
        assert_eq!(few.summary().unwrap().avg, 0.25);
        few.push(f64::NAN);
        assert_eq!(few.summary().unwrap().count, 4);
    }

    #[test]
    fn a_gap_between_frames_is_a_freeze_and_frame_rates_come_with_stats() {
        let t0 = Instant::now();
        let mut leg = Leg::default();
        let mid = Mid::from("1");
        leg.bytes(1, Direction::In, mid, 0, t0);
        for i in 0..30 {
            leg.frame(Direction::In, t0 + Duration::from_millis(33 * i));
        }
        // The picture stops for 2 s, then goes on.
        leg.frame(Direction::In, t0 + Duration::from_millis(33 * 29 + 2000));
        assert_eq!(leg.freezes, [1, 0]);
        leg.bytes(1, Direction::In, mid, 250_000, t0 + Duration::from_secs(2));
        let report = LegReport::new(SessionId::from_raw(1), &leg);
        let fps = report.figures[1][0][Figure::Fps as usize].unwrap();
        assert!(
            (fps.avg - 15.5).abs() < 0.01,
            "31 frames in 2 s: {}",
            fps.avg
        );
        let bitrate = report.figures[1][0][Figure::Bitrate as usize].unwrap();
        assert!((bitrate.avg - 1_000_000.0).abs() < 1.0, "{}", bitrate.avg);
        assert_eq!(report.video, [true, false]);
        assert!(report.figures[0][0][Figure::Loss as usize].is_none());
    }

    #[test]
    fn routes_are_named_by_the_remote_candidate_and_transport() {
        let r = Route::new(Some(CandidateKind::Relayed), Protocol::Udp);
        assert_eq!(r.to_string(), "relay/udp");
        assert_eq!(r.index(), (3, 0));
        let r = Route::new(None, Protocol::Tcp);
        assert_eq!(r.to_string(), "prflx/tcp");
        assert_eq!(r.index(), (2, 1));
        let mut remotes = Remotes::default();
        let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        remotes.add(addr, CandidateKind::ServerReflexive);
        assert_eq!(remotes.kind_of(addr), Some(CandidateKind::ServerReflexive));
        assert_eq!(remotes.kind_of("192.0.2.1:5001".parse().unwrap()), None);
    }

    fn ceiling_after(estimate: u64, t0: Instant) -> Ceiling {
        let mut c = Ceiling::default();
        c.on_estimate(estimate, t0);
        c
    }

    #[test]
    fn the_ceiling_is_the_estimate_less_the_margin_and_follows_a_fall_at_once() {
        let t0 = Instant::now();
        let mut c = ceiling_after(1_000_000, t0);
        assert_eq!(c.bps(), Some(950_000));
        c.on_estimate(400_000, t0 + Duration::from_millis(100));
        assert_eq!(c.bps(), Some(380_000));
        // Never told under the floor.
        c.on_estimate(50_000, t0 + Duration::from_millis(200));
        assert_eq!(c.bps(), Some(crate::MIN_VIDEO_BPS));
        assert_eq!(Ceiling::default().bps(), None, "nothing before an estimate");
    }

    #[test]
    fn without_loss_the_ceiling_climbs_back_by_steps_after_the_hold() {
        let t0 = Instant::now();
        let mut c = ceiling_after(1_000_000, t0);
        // Shaped: the estimate falls to 200 kbit/s, then holds there (the sender, held at
        // the ceiling, gives str0m nothing to grow it on).
        c.on_estimate(200_000, t0);
        let low = c.bps().unwrap();
        assert_eq!(low, 190_000);
        // Within the hold: no rise.
        c.on_loss(0.0, t0 + Duration::from_secs(1));
        assert_eq!(c.bps(), Some(low));
        // Past it, one step per second while the reports show no loss.
        let mut t = t0 + CEILING_HOLD;
        let mut seen = vec![];
        for _ in 0..10 {
            c.on_loss(0.0, t);
            c.on_loss(0.0, t + Duration::from_millis(300)); // a second report: no extra step
            seen.push(c.bps().unwrap());
            t += CEILING_STEP_EVERY;
        }
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
        let expected = (0..10).fold(low, |b, _| b * (100 + CEILING_STEP_PERCENT) / 100);
        assert_eq!(*seen.last().unwrap(), expected, "{seen:?}");
        // Some loss (2–10 %): it holds.
        let before = c.bps().unwrap();
        c.on_loss(0.05, t);
        assert_eq!(c.bps(), Some(before));
        // An estimate that rises lifts it; one that falls from there cuts it.
        c.on_estimate(2_000_000, t);
        assert_eq!(c.bps(), Some(1_900_000));
        c.on_estimate(1_000_000, t);
        assert_eq!(c.bps(), Some(950_000));
    }

    #[test]
    fn heavy_loss_cuts_the_ceiling_in_proportion_and_holds_it() {
        let t0 = Instant::now();
        let mut c = ceiling_after(1_000_000, t0);
        c.on_loss(0.4, t0 + Duration::from_secs(5));
        assert_eq!(c.bps(), Some(760_000), "950k × (1 − 0.5 × 0.4)");
        c.on_loss(0.0, t0 + Duration::from_secs(6));
        assert_eq!(c.bps(), Some(760_000), "held after the cut");
        c.on_loss(0.0, t0 + Duration::from_secs(5) + CEILING_HOLD);
        assert!(c.bps().unwrap() > 760_000);
    }

    #[test]
    fn the_ceiling_never_passes_the_top() {
        let t0 = Instant::now();
        let mut c = ceiling_after(MAX_CEILING_BPS, t0);
        for i in 1..100 {
            c.on_loss(0.0, t0 + CEILING_STEP_EVERY * i);
        }
        assert_eq!(c.bps(), Some(MAX_CEILING_BPS));
    }
}
