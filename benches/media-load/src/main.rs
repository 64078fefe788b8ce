//! `tandem-media-load`: a media load tool for tandem's SFU. Pairs guests, has them call each
//! other, and connects one webrtc-rs peer per guest to tandem; every peer then sends Opus-rate
//! audio and VP8-rate video RTP stamped with a sequence number and send time, and every peer
//! measures what tandem forwards to it: packets and bytes per second, loss, one-way latency.
//! With `--baseline` the same number of peer pairs also run connected directly to each other,
//! which is the tool's own floor.
//!
//! ```text
//! tandem-media-load --url http://127.0.0.1:8080 --pairs 10 --duration 30s --warmup 5s \
//!     --server-pid PID [--audio-only] [--video-kbps 1500] [--baseline] [--json]
//! ```

mod direct;
// POST /api/guest, shared with the signaling load tool (it reports through `crate::Shared`).
#[path = "../../load/http.rs"]
mod http;
mod media;
mod peer;
mod procfs;
mod sio;
mod tandem;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use media::{now_ns, Metrics};
use peer::MediaConfig;
use tandem::CallCtx;

/// Media load tool for tandem: calls between synthetic webrtc-rs peers through tandem's SFU.
#[derive(Parser, Debug, Clone)]
#[command(name = "tandem-media-load", version, after_help = AFTER_HELP)]
pub struct Args {
    /// The server's base URL (http:// only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Calls (two guests, two peer connections each).
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Measured window (e.g. 30s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured sending after every call is connected, before the window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Reading after the window so packets in flight still count.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain: Duration,
    /// tandem's process id: its CPU time and RSS are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Audio only (`call:request {video:false}`, one Opus track per peer).
    #[arg(long)]
    audio_only: bool,
    /// Video bitrate per peer, kbit/s.
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Audio payload bytes per 20 ms packet.
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// Largest RTP payload; video frames are split into packets of at most this.
    #[arg(long, default_value_t = 1200)]
    max_payload: usize,
    /// Also run the same pairs connected directly to each other (no tandem), after the tandem run.
    #[arg(long)]
    baseline: bool,
    /// Run only the direct baseline (needs no server).
    #[arg(long)]
    baseline_only: bool,
    /// Trickle local ICE candidates (`webrtc:ice-candidate`) instead of waiting for gathering
    /// to complete and sending them inside the offer.
    #[arg(long)]
    trickle: bool,
    /// Calls started per second.
    #[arg(long, default_value_t = 10.0)]
    call_rate: f64,
    /// How long every call gets to connect (after its accept).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// Local address the peers' UDP sockets bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: std::net::IpAddr,
    /// Runtime worker threads of this tool.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Exit 1 when measured loss is above this percentage.
    #[arg(long, default_value_t = 5.0)]
    max_loss_pct: f64,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

const AFTER_HELP: &str = "\
Phases: create 2 x pairs guests (POST /api/guest), connect them (Socket.IO, auth {token}),
match them (match:start), ring (call:request / call:incoming / call:accept / call:accepted),
connect one webrtc-rs peer per guest to tandem (webrtc:offer -> webrtc:answer, candidates),
send RTP from every peer (audio 50 packets/s; video --video-kbps at --fps, frames split into
<= --max-payload packets), wait --warmup, measure --duration, drain, hang up, disconnect.

Setup time: through tandem, from call:accept to both peers connected; direct, from the
offer to both connected. Latency: send to receive of each RTP packet, one-way, in-process.
Loss: packets sent in the window that no peer received.

Start the server with limits above the load, e.g.
  tandem --guest-creations-per-min 1000000 --http-requests-per-min 1000000 \\
    --max-connections-per-ip 100000 --match-per-sec 100 --match-burst 100 --events-per-sec 1000

Exit status: 0 pass; 1 fewer calls connected than --pairs, nothing received, or loss above
--max-loss-pct; 2 could not run.";

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

/// Error tally (also what benches/load/http.rs reports into).
#[derive(Default)]
pub struct Shared {
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn error(&self, kind: &str) {
        let mut e = self.errors.lock().expect("errors");
        let key = if e.len() < 100 || e.contains_key(kind) {
            kind
        } else {
            "(other errors)"
        };
        *e.entry(key.to_owned()).or_insert(0) += 1;
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.errors.lock().expect("errors"))
    }

    pub fn summary(&self) -> String {
        let e = self.errors.lock().expect("errors");
        e.iter()
            .map(|(k, n)| format!("{k} (x{n})"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A call's setup outcome.
pub enum Setup {
    Connected { ms: f64 },
    Failed(String),
}

pub fn log(msg: impl AsRef<str>) {
    eprintln!("[{:8.3}s] {}", now_ns() as f64 / 1e9, msg.as_ref());
}

fn main() -> ExitCode {
    let args = Args::parse();
    now_ns();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-media-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            let failures = report.failures(&args);
            if args.json {
                eprint!("{}", report.human(&args));
                println!("{}", report.json(&args, &failures));
            } else {
                print!("{}", report.human(&args));
            }
            for w in report.warnings() {
                eprintln!("tandem-media-load: warning: {w}");
            }
            for f in &failures {
                eprintln!("tandem-media-load: FAIL: {f}");
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tandem-media-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    if args.pairs == 0
        || args.duration.is_zero()
        || args.call_rate.is_nan()
        || args.call_rate <= 0.0
    {
        bail!("--pairs, --duration and --call-rate must be positive");
    }
    if args.max_payload < media::STAMP_LEN + 2 || args.max_payload > 1400 {
        bail!(
            "--max-payload must be between {} and 1400",
            media::STAMP_LEN + 2
        );
    }
    let pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &pid {
        if procfs::cpu_secs(pid).is_none() {
            bail!("--server-pid {pid}: no such process readable in /proc");
        }
    }
    let cfg = MediaConfig {
        video: !args.audio_only,
        video_kbps: args.video_kbps,
        fps: args.fps.max(1),
        audio_payload: args.audio_bytes,
        max_payload: args.max_payload,
        bind_ip: args.bind_ip,
    };
    let mut report = Report::default();
    if !args.baseline_only {
        report.tandem = Some(run_phase(args, &cfg, Mode::Tandem, pid.as_deref()).await?);
    }
    if args.baseline || args.baseline_only {
        report.direct = Some(run_phase(args, &cfg, Mode::Direct, None).await?);
    }
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tandem,
    Direct,
}

/// Sets up the calls, measures, tears down.
async fn run_phase(
    args: &Args,
    cfg: &MediaConfig,
    mode: Mode,
    pid: Option<&str>,
) -> anyhow::Result<Phase> {
    let label = if mode == Mode::Tandem {
        "through tandem"
    } else {
        "direct (baseline)"
    };
    let shared = Arc::new(Shared::default());
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
    let ctx = |pair: usize| CallCtx {
        pair,
        cfg: cfg.clone(),
        trickle: args.trickle,
        setup_timeout: args.setup_timeout,
        metrics: metrics.clone(),
        shared: shared.clone(),
        stop: stop_rx.clone(),
        setup_tx: setup_tx.clone(),
    };
    let step = Duration::from_secs_f64(1.0 / args.call_rate);
    let mut tasks = Vec::new();
    log(format!("{label}: setting up {} calls", args.pairs));
    if mode == Mode::Tandem {
        let pairs = tandem::paired_guests(args, &shared).await?;
        log(format!("{} pairs matched; calling", pairs.len()));
        for (i, (a, b)) in pairs.into_iter().enumerate() {
            tasks.push(tokio::spawn(tandem::call(a, b, ctx(i))));
            tokio::time::sleep(step).await;
        }
    } else {
        for i in 0..args.pairs {
            tasks.push(tokio::spawn(direct::call(ctx(i))));
            tokio::time::sleep(step).await;
        }
    }
    drop(setup_tx);
    let mut setup_ms = Vec::new();
    let mut setup_failures = Vec::new();
    let deadline = tokio::time::Instant::now() + args.setup_timeout + Duration::from_secs(15);
    while setup_ms.len() + setup_failures.len() < args.pairs {
        match tokio::time::timeout_at(deadline, setup_rx.recv()).await {
            Ok(Some(Setup::Connected { ms })) => setup_ms.push(ms),
            Ok(Some(Setup::Failed(why))) => {
                log(format!("call failed: {why}"));
                setup_failures.push(why);
            }
            Ok(None) | Err(_) => break,
        }
    }
    log(format!(
        "{label}: {}/{} calls connected",
        setup_ms.len(),
        args.pairs
    ));
    let mut phase = Phase {
        mode: Some(mode),
        pairs: args.pairs,
        connected: setup_ms.len(),
        setup_ms,
        setup_failures,
        ..Phase::default()
    };
    if phase.connected > 0 {
        tokio::time::sleep(args.warmup).await;
        let cpu0 = (procfs::cpu_secs("self"), pid.and_then(procfs::cpu_secs));
        let busy0 = procfs::machine_busy_secs();
        let start = now_ns();
        let end = start + args.duration.as_nanos() as u64;
        metrics.open_window(start, end);
        log(format!("{label}: measuring {:?}", args.duration));
        tokio::time::sleep_until(media::instant_at(end).into()).await;
        let cpu1 = (procfs::cpu_secs("self"), pid.and_then(procfs::cpu_secs));
        let busy1 = procfs::machine_busy_secs();
        let secs = (now_ns() - start) as f64 / 1e9;
        phase.window_secs = args.duration.as_secs_f64();
        phase.tool_cores = cpu0.0.zip(cpu1.0).map(|(a, b)| (b - a) / secs);
        phase.server_cores = cpu0.1.zip(cpu1.1).map(|(a, b)| (b - a) / secs);
        phase.server_rss_mib = pid.and_then(procfs::rss_mib);
        phase.machine_cores = busy0.zip(busy1).map(|(a, b)| (b - a) / secs);
        tokio::time::sleep(args.drain).await;
    }
    phase.take(&metrics);
    log(format!("{label}: hanging up"));
    stop_tx.send_replace(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .is_err()
        {
            shared.error("a call did not finish tearing down within 15 s");
        }
    }
    phase.errors = shared.take();
    Ok(phase)
}

#[derive(Default, Clone, Copy)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of_ms(values: &[f64]) -> Option<Quantiles> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Some(Quantiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: v[v.len() - 1],
        })
    }

    fn of_hist_us(h: &Histogram<u64>) -> Option<Quantiles> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!h.is_empty()).then(|| Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        })
    }

    fn json(&self) -> Value {
        json!({ "p50": r3(self.p50), "p90": r3(self.p90), "p99": r3(self.p99), "max": r3(self.max) })
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The numbers of one phase.
#[derive(Default)]
struct Phase {
    mode: Option<Mode>,
    pairs: usize,
    connected: usize,
    setup_ms: Vec<f64>,
    setup_failures: Vec<String>,
    window_secs: f64,
    sent: u64,
    sent_bytes: u64,
    received: u64,
    received_bytes: u64,
    sent_total: u64,
    received_total: u64,
    gaps: u64,
    late: u64,
    duplicates: u64,
    unparsed: u64,
    remote_tracks: u64,
    write_errors: u64,
    ticks_skipped: u64,
    latency: Option<Quantiles>,
    latency_audio: Option<Quantiles>,
    latency_video: Option<Quantiles>,
    latency_mean_ms: f64,
    tool_cores: Option<f64>,
    server_cores: Option<f64>,
    /// Busy CPU of the whole machine over the window (all processes).
    machine_cores: Option<f64>,
    server_rss_mib: Option<(f64, f64)>,
    errors: BTreeMap<String, u64>,
}

impl Phase {
    fn take(&mut self, m: &Metrics) {
        self.sent = m.sent.get();
        self.sent_bytes = m.sent_bytes.get();
        self.received = m.received.get();
        self.received_bytes = m.received_bytes.get();
        self.sent_total = m.sent_total.get();
        self.received_total = m.received_total.get();
        self.gaps = m.gaps.get();
        self.late = m.late.get();
        self.duplicates = m.duplicates.get();
        self.unparsed = m.unparsed.get();
        self.remote_tracks = m.remote_tracks.get();
        self.write_errors = m.write_errors.get();
        self.ticks_skipped = m.ticks_skipped.get();
        let [all, audio, video] = m.latency();
        self.latency = Quantiles::of_hist_us(&all);
        self.latency_audio = Quantiles::of_hist_us(&audio);
        self.latency_video = Quantiles::of_hist_us(&video);
        self.latency_mean_ms = all.mean() / 1000.0;
    }

    fn rate(&self, n: u64) -> f64 {
        if self.window_secs > 0.0 {
            n as f64 / self.window_secs
        } else {
            0.0
        }
    }

    fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    fn mbps(&self, bytes: u64) -> f64 {
        self.rate(bytes) * 8.0 / 1e6
    }

    /// Machine CPU used by neither this tool nor the server: other load skewing the numbers.
    fn other_cores(&self) -> Option<f64> {
        let other = self.machine_cores? - self.tool_cores? - self.server_cores.unwrap_or(0.0);
        Some(other.max(0.0))
    }

    fn pps_per_server_core(&self) -> Option<f64> {
        self.server_cores
            .filter(|c| *c > 0.0)
            .map(|c| self.rate(self.received) / c)
    }

    fn json(&self) -> Value {
        json!({
            "pairs": self.pairs,
            "pairs_connected": self.connected,
            "setup_ms": Quantiles::of_ms(&self.setup_ms).map(|q| q.json()),
            "setup_failures": self.setup_failures,
            "window_secs": self.window_secs,
            "sent_pkts": self.sent,
            "received_pkts": self.received,
            "sent_pps": r3(self.rate(self.sent)),
            "forwarded_pps": r3(self.rate(self.received)),
            "sent_mbps": r3(self.mbps(self.sent_bytes)),
            "forwarded_mbps": r3(self.mbps(self.received_bytes)),
            "loss_pct": r3(self.loss_pct()),
            "seq_gaps": self.gaps,
            "late": self.late,
            "duplicates": self.duplicates,
            "unparsed": self.unparsed,
            "remote_tracks": self.remote_tracks,
            "write_errors": self.write_errors,
            "ticks_skipped": self.ticks_skipped,
            "latency_ms": self.latency.map(|q| q.json()),
            "latency_mean_ms": r3(self.latency_mean_ms),
            "latency_audio_ms": self.latency_audio.map(|q| q.json()),
            "latency_video_ms": self.latency_video.map(|q| q.json()),
            "tool_cpu_cores": self.tool_cores.map(r3),
            "server_cpu_cores": self.server_cores.map(r3),
            "machine_busy_cores": self.machine_cores.map(r3),
            "other_processes_cores": self.other_cores().map(r3),
            "server_rss_mib": self.server_rss_mib.map(|r| r3(r.0)),
            "server_rss_peak_mib": self.server_rss_mib.map(|r| r3(r.1)),
            "pps_per_server_core": self.pps_per_server_core().map(|x| x.round()),
            "errors": self.errors,
        })
    }
}

#[derive(Default)]
struct Report {
    tandem: Option<Phase>,
    direct: Option<Phase>,
}

impl Report {
    fn phases(&self) -> impl Iterator<Item = &Phase> {
        self.tandem.iter().chain(self.direct.iter())
    }

    /// Conditions that make the numbers suspect without failing the run.
    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for p in self.phases() {
            let name = if p.mode == Some(Mode::Direct) {
                "direct"
            } else {
                "tandem"
            };
            let ticks = p.sent_total.max(1);
            if p.ticks_skipped * 100 > ticks {
                w.push(format!(
                    "{name}: the pacers fell behind ({} send ticks skipped): this tool was starved \
                     of CPU, so latency includes its own queueing",
                    p.ticks_skipped
                ));
            }
            if let Some(other) = p.other_cores().filter(|c| *c > 0.3) {
                w.push(format!(
                    "{name}: other processes used {other:.2} cores during the window; \
                     the numbers are not from an idle machine"
                ));
            }
        }
        w
    }

    fn failures(&self, args: &Args) -> Vec<String> {
        let mut f = Vec::new();
        for p in self.phases() {
            let name = if p.mode == Some(Mode::Direct) {
                "direct"
            } else {
                "tandem"
            };
            if p.connected < p.pairs {
                let first = p
                    .setup_failures
                    .first()
                    .map(String::as_str)
                    .unwrap_or("timed out");
                f.push(format!(
                    "{name}: only {}/{} calls connected within {:?} (first failure: {first})",
                    p.connected, p.pairs, args.setup_timeout
                ));
            }
            if p.connected > 0 && p.received == 0 {
                f.push(format!("{name}: no media received in the window"));
            } else if p.connected > 0 && p.loss_pct() > args.max_loss_pct {
                f.push(format!(
                    "{name}: loss {:.2}% above --max-loss-pct {}",
                    p.loss_pct(),
                    args.max_loss_pct
                ));
            }
        }
        f
    }

    /// Through tandem minus direct: what tandem adds.
    fn added_latency(&self) -> Option<(Quantiles, Quantiles)> {
        Some((
            self.tandem.as_ref()?.latency?,
            self.direct.as_ref()?.latency?,
        ))
    }

    fn json(&self, args: &Args, failures: &[String]) -> String {
        let added = self.added_latency().map(|(t, d)| {
            json!({
                "p50_ms": r3(t.p50 - d.p50),
                "p99_ms": r3(t.p99 - d.p99),
                "p50_ratio": r3(t.p50 / d.p50.max(0.001)),
                "p99_ratio": r3(t.p99 / d.p99.max(0.001)),
            })
        });
        json!({
            "tool": "tandem-media-load",
            "pairs": args.pairs,
            "video": !args.audio_only,
            "video_kbps": if args.audio_only { None } else { Some(args.video_kbps) },
            "fps": args.fps,
            "duration_secs": args.duration.as_secs_f64(),
            "warmup_secs": args.warmup.as_secs_f64(),
            "tandem": self.tandem.as_ref().map(Phase::json),
            "baseline": self.direct.as_ref().map(Phase::json),
            "added_latency": added,
            "pass": failures.is_empty(),
            "failures": failures,
            "warnings": self.warnings(),
        })
        .to_string()
    }

    fn human(&self, args: &Args) -> String {
        use std::fmt::Write as _;
        let cols: Vec<(&str, &Phase)> = self
            .tandem
            .iter()
            .map(|p| ("through tandem", p))
            .chain(self.direct.iter().map(|p| ("direct (baseline)", p)))
            .collect();
        let mut s = String::new();
        let media = if args.audio_only {
            "audio only".to_owned()
        } else {
            format!(
                "audio + video {} kbit/s at {} fps",
                args.video_kbps, args.fps
            )
        };
        let _ = writeln!(
            s,
            "\ntandem-media-load: {} calls ({media}), window {:?} after {:?} warmup",
            args.pairs, args.duration, args.warmup
        );
        let _ = write!(s, "{:<28}", "");
        for (name, _) in &cols {
            let _ = write!(s, "{name:>26}");
        }
        s.push('\n');
        let mut row = |label: &str, f: &dyn Fn(&Phase) -> String| {
            let _ = write!(s, "{label:<28}");
            for (_, p) in &cols {
                let _ = write!(s, "{:>26}", f(p));
            }
            s.push('\n');
        };
        let opt =
            |x: Option<f64>, unit: &str| x.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
        row("calls connected", &|p| {
            format!("{}/{}", p.connected, p.pairs)
        });
        row("setup p50 / p99", &|p| {
            Quantiles::of_ms(&p.setup_ms)
                .map_or("-".into(), |q| format!("{:.1} / {:.1} ms", q.p50, q.p99))
        });
        row("sent pkt/s", &|p| format!("{:.0}", p.rate(p.sent)));
        row("forwarded pkt/s (received)", &|p| {
            format!("{:.0}", p.rate(p.received))
        });
        row("forwarded Mbit/s (payload)", &|p| {
            format!("{:.2}", p.mbps(p.received_bytes))
        });
        row("loss", &|p| format!("{:.3} %", p.loss_pct()));
        row("seq gaps / late / dup", &|p| {
            format!("{} / {} / {}", p.gaps, p.late, p.duplicates)
        });
        row("latency p50 / p99", &|p| {
            p.latency
                .map_or("-".into(), |q| format!("{:.3} / {:.3} ms", q.p50, q.p99))
        });
        row("latency p90 / max", &|p| {
            p.latency
                .map_or("-".into(), |q| format!("{:.3} / {:.3} ms", q.p90, q.max))
        });
        row("  audio p50 / p99", &|p| {
            p.latency_audio
                .map_or("-".into(), |q| format!("{:.3} / {:.3} ms", q.p50, q.p99))
        });
        row("  video p50 / p99", &|p| {
            p.latency_video
                .map_or("-".into(), |q| format!("{:.3} / {:.3} ms", q.p50, q.p99))
        });
        row("tool CPU", &|p| opt(p.tool_cores, " cores"));
        row("tandem CPU", &|p| opt(p.server_cores, " cores"));
        row("machine busy / other procs", &|p| {
            format!(
                "{} / {}",
                opt(p.machine_cores, ""),
                opt(p.other_cores(), " cores")
            )
        });
        row("tandem RSS / peak", &|p| {
            p.server_rss_mib
                .map_or("-".into(), |(r, h)| format!("{r:.1} / {h:.1} MiB"))
        });
        row("pkt/s per tandem core", &|p| {
            p.pps_per_server_core()
                .map_or("-".into(), |x| format!("{x:.0}"))
        });
        row("remote tracks", &|p| {
            format!(
                "{}/{}",
                p.remote_tracks,
                p.pairs * 2 * if args.audio_only { 1 } else { 2 }
            )
        });
        row("write errors / skipped", &|p| {
            format!("{} / {}", p.write_errors, p.ticks_skipped)
        });
        if let Some((t, d)) = self.added_latency() {
            let _ = writeln!(
                s,
                "added by tandem: p50 {:+.3} ms, p99 {:+.3} ms (x{:.2} / x{:.2} the direct floor)",
                t.p50 - d.p50,
                t.p99 - d.p99,
                t.p50 / d.p50.max(0.001),
                t.p99 / d.p99.max(0.001)
            );
        }
        for (name, p) in &cols {
            for (e, n) in &p.errors {
                let _ = writeln!(s, "{name}: error x{n}: {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn quantiles() {
        let q = Quantiles::of_ms(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((q.p50, q.max), (2.0, 3.0));
        assert!(Quantiles::of_ms(&[]).is_none());
    }
}
