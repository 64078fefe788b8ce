//! `tandem-load`: a signaling load tool. Creates guests over HTTP, connects each over Socket.IO
//! (WebSocket transport), pairs them, then sends chat messages at a target total rate and measures
//! delivery and receipt latency, counts and (optionally) the server's RSS and CPU.
//!
//! ```text
//! tandem-load --url http://127.0.0.1:8080 --guests 5000 --rate 20000 --duration 30 \
//!     [--warmup 5] [--server-pid <pid>] [--json]
//! ```
//!
//! A cluster: `--urls <node1>,<node2>,…` (guest i is created and connects on node i mod n) and
//! `--server-pid` repeated for every node and Redis; the report adds how many pairs span two
//! nodes and the latencies of same-node and cross-node pairs apart (`--match-order shuffled`
//! mixes them; in index order guests 2k and 2k+1 meet).
//!
//! The server must be started with limits above the load (see `--help`). The tool raises its own
//! open-file limit up to the hard limit; past that, `ulimit -n` in the shell. Exits 1 when fewer
//! than 95% of the guests connected or paired, or when fewer than 99% of the measured messages
//! were received; 2 when it could not run at all.

#![recursion_limit = "256"]

mod conn;
mod http;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use conn::{Phase, Target};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;

/// Signaling load tool for tandem: pairs guests and relays chat messages at a target rate.
#[derive(Parser, Debug, Clone)]
#[command(name = "tandem-load", version, after_help = AFTER_HELP)]
struct Args {
    /// The server's base URL (http:// only). Several (`--urls a,b` or `--url a --url b`): the
    /// nodes of one cluster; guest i is created and connects on node i mod n.
    #[arg(
        long,
        alias = "urls",
        env = "TANDEM_LOAD_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    url: Vec<String>,
    /// How many guests to create and connect (an even number pairs them all).
    #[arg(long, default_value_t = 100)]
    guests: usize,
    /// Target total chat messages per second across all paired guests.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured sending before the window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// At most this many seconds of reading after sending stops, so late deliveries still count
    /// (ends early once every measured message is received or refused and every receipt is in).
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// New Socket.IO connections per second.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// `match:start` events per second.
    #[arg(long, default_value_t = 500.0)]
    match_rate: f64,
    /// Parallel HTTP connections for guest creation.
    #[arg(long, default_value_t = 64)]
    http_concurrency: usize,
    /// Runtime worker threads; 1 runs everything on one thread, leaving the other cores to the server.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The order of `match:start` (the matchmaker pairs the oldest first): `index` (guest 0, 1,
    /// 2, …: guests 2k and 2k+1 meet, so with 2 nodes nearly every pair spans both), `shuffled`
    /// (a random order: with 2 nodes about half the pairs span both) or `grouped` (node by node:
    /// nearly every pair on one node).
    #[arg(long, value_enum, default_value_t = MatchOrder::Index)]
    match_order: MatchOrder,
    /// The server's process id, to sample its RSS and CPU time from /proc. Repeatable (or a
    /// comma-separated list): every node and Redis, summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print one JSON object line with every number on stdout (the summary goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum MatchOrder {
    Index,
    Shuffled,
    Grouped,
}

const AFTER_HELP: &str = "\
Phases: create guests (POST /api/guest), connect (--connect-rate), pair (match:start at
--match-rate), send for --warmup + --duration seconds, drain, disconnect. Each paired guest sends
rate / paired messages per second; 1 in 10 received messages is also marked read.

A cluster: --urls http://127.0.0.1:18090,http://127.0.0.1:18091 and
--server-pid <node1>,<node2>,<redis>. Guest i is created and connects on node i mod n. Both guests
of a pair receive the same roomId in match:found, so the tool knows whether a pair spans two
nodes: it reports the pairs that do and the delivery and receipt latencies of same-node and
cross-node pairs apart (--match-order sets the mix).

Start the server with limits above the load, e.g. for 5000 guests at 20000 msg/s:
  tandem --guest-creations-per-min 1000000 --http-requests-per-min 1000000 \\
    --max-connections-per-ip 100000 --max-http-connections-per-ip 100000 \\
    --max-sessions-per-ip 1000000 --socket-handshakes-per-min 1000000 \\
    --chat-messages-per-sec 50 --match-per-sec 100 \\
    --match-burst 100 --events-per-sec 100 --memory-budget-mb 4096
and give this tool enough open files (one per guest): ulimit -n 65536.

Exit status: 0 pass; 1 under 95% of the guests connected or paired, or under 99% of the measured
messages received; 2 could not run.";

// ---------------------------------------------------------------------------------------------
// Shared clock and counters

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide monotonic origin.
pub fn now_us() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A tokio instant for a time in µs since the origin (far future when out of range).
pub fn at(us: u64) -> tokio::time::Instant {
    let origin = *ORIGIN.get_or_init(Instant::now);
    let capped = us.min(now_us().saturating_add(86_400_000_000));
    tokio::time::Instant::from_std(origin + Duration::from_micros(capped))
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram in microseconds.
pub struct Hist(Mutex<Histogram<u64>>);

impl Hist {
    fn new() -> Self {
        // 1 µs .. 10 min, 3 significant digits.
        Hist(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        ))
    }
    pub fn record(&self, us: u64) {
        self.0
            .lock()
            .expect("histogram lock")
            .saturating_record(us.max(1));
    }
    fn summary(&self) -> Latency {
        let h = self.0.lock().expect("histogram lock");
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Pairs whose two guests are on one node, on two, and rooms only one guest reported.
#[derive(Default, Debug, Clone, Copy)]
struct PairCounts {
    same: u64,
    cross: u64,
    incomplete: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Latency {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Everything the tasks count. "Measured" counters only count messages sent inside the window.
pub struct Shared {
    pub connected: Counter,
    pub connect_failed: Counter,
    pub disconnected: Counter,
    pub paired: Counter,
    pub unpaired: Counter,
    pub sent_total: Counter,
    pub sent: Counter,
    pub acked_ok: Counter,
    pub refused: Counter,
    pub received_total: Counter,
    pub received: Counter,
    pub delivered: Counter,
    pub reads_sent: Counter,
    pub reads_acked: Counter,
    pub read_receipts: Counter,
    pub system_messages: Counter,
    pub ticks_skipped: Counter,
    /// `partner:presence` / `chat:ended` after sending stopped: partners closing first.
    pub teardown_events: Counter,
    pub delivery: Hist,
    pub receipt: Hist,
    pub read_latency: Hist,
    /// Delivery and receipt latency of pairs on one node, and of pairs spanning two.
    pub delivery_same: Hist,
    pub delivery_cross: Hist,
    pub receipt_same: Hist,
    pub receipt_cross: Hist,
    /// Per node: guests created, sockets connected.
    pub node_created: Vec<Counter>,
    pub node_connected: Vec<Counter>,
    /// Room of each `match:found` → the nodes of the guests that got it.
    rooms: Mutex<HashMap<String, Vec<usize>>>,
    /// Room → whether its two guests are on different nodes; set once pairing is over.
    pub pairs: OnceLock<HashMap<String, bool>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn new(nodes: usize) -> Self {
        Shared {
            connected: Counter::default(),
            connect_failed: Counter::default(),
            disconnected: Counter::default(),
            paired: Counter::default(),
            unpaired: Counter::default(),
            sent_total: Counter::default(),
            sent: Counter::default(),
            acked_ok: Counter::default(),
            refused: Counter::default(),
            received_total: Counter::default(),
            received: Counter::default(),
            delivered: Counter::default(),
            reads_sent: Counter::default(),
            reads_acked: Counter::default(),
            read_receipts: Counter::default(),
            system_messages: Counter::default(),
            ticks_skipped: Counter::default(),
            teardown_events: Counter::default(),
            delivery: Hist::new(),
            receipt: Hist::new(),
            read_latency: Hist::new(),
            delivery_same: Hist::new(),
            delivery_cross: Hist::new(),
            receipt_same: Hist::new(),
            receipt_cross: Hist::new(),
            node_created: (0..nodes).map(|_| Counter::default()).collect(),
            node_connected: (0..nodes).map(|_| Counter::default()).collect(),
            rooms: Mutex::new(HashMap::new()),
            pairs: OnceLock::new(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// A guest on `node` was paired in `room`.
    pub fn joined(&self, room: &str, node: usize) {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        rooms.entry(room.to_owned()).or_default().push(node);
    }

    /// Publishes which rooms span two nodes (for the latency split) and counts the pairs.
    fn publish_pairs(&self) -> PairCounts {
        let rooms = self.rooms.lock().expect("rooms lock");
        let mut counts = PairCounts::default();
        let mut pairs = HashMap::with_capacity(rooms.len());
        for (room, nodes) in rooms.iter() {
            match nodes.as_slice() {
                [a, b] => {
                    let cross = a != b;
                    if cross {
                        counts.cross += 1;
                    } else {
                        counts.same += 1;
                    }
                    pairs.insert(room.clone(), cross);
                }
                // The partner's match:found never came (or a room reported more than twice).
                _ => counts.incomplete += 1,
            }
        }
        let _ = self.pairs.set(pairs);
        counts
    }

    /// Counts one error of a kind (kinds are short, stable strings).
    pub fn error(&self, kind: &str) {
        let mut e = self.errors.lock().expect("errors lock");
        match e.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                // Keep the map bounded even if a kind carries an unexpected detail.
                let kind = if e.len() < 200 { kind } else { "other" };
                *e.entry(kind.to_owned()).or_insert(0) += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling and the open-file limit (Linux)

mod sys {
    use std::time::Instant;

    /// (RSS, peak RSS) in KiB from /proc/<pid>/status.
    pub fn rss_kib(pid: &str) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
    }

    /// (RSS, peak RSS) in KiB summed over processes (`None` when none is readable).
    pub fn rss_sum_kib(pids: &[String]) -> Option<(u64, u64)> {
        let all: Vec<(u64, u64)> = pids.iter().filter_map(|p| rss_kib(p)).collect();
        if all.is_empty() {
            return None;
        }
        Some(all.iter().fold((0, 0), |(r, h), (a, b)| (r + a, h + b)))
    }

    /// The process's command name from /proc/<pid>/comm.
    pub fn comm(pid: &str) -> Option<String> {
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(c.trim().to_owned())
    }

    /// utime + stime in seconds from /proc/<pid>/stat.
    pub fn cpu_secs(pid: &str) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks())
    }

    #[cfg(target_os = "linux")]
    fn clock_ticks() -> f64 {
        extern "C" {
            fn sysconf(name: i32) -> i64;
        }
        const SC_CLK_TCK: i32 = 2;
        // SAFETY: sysconf only reads a configuration value.
        let t = unsafe { sysconf(SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn clock_ticks() -> f64 {
        100.0
    }

    /// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
    pub fn machine_busy_secs() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let busy: u64 = v
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, x)| x)
            .sum();
        Some(busy as f64 / clock_ticks())
    }

    /// A CPU-time sample of a process.
    #[derive(Clone, Copy)]
    pub struct CpuSample {
        pub cpu: f64,
        pub wall: Instant,
    }

    pub fn sample(pid: &str) -> Option<CpuSample> {
        Some(CpuSample {
            cpu: cpu_secs(pid)?,
            wall: Instant::now(),
        })
    }

    /// Raises the soft open-file limit to at least `want` (up to the hard limit, or beyond it when
    /// allowed); returns the limit in force afterwards.
    #[cfg(target_os = "linux")]
    pub fn raise_nofile(want: u64) -> Option<u64> {
        #[repr(C)]
        struct RLimit {
            cur: u64,
            max: u64,
        }
        extern "C" {
            fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
            fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
        }
        const RLIMIT_NOFILE: i32 = 7;
        let mut l = RLimit { cur: 0, max: 0 };
        // SAFETY: getrlimit/setrlimit read or write exactly one `struct rlimit` (two rlim_t, 64-bit
        // on Linux) through the pointer, which points at a live value of that layout.
        unsafe {
            if getrlimit(RLIMIT_NOFILE, &mut l) != 0 {
                return None;
            }
            if l.cur >= want {
                return Some(l.cur);
            }
            let raised = RLimit {
                cur: want,
                max: l.max.max(want),
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                return Some(want);
            }
            let to_hard = RLimit {
                cur: l.max,
                max: l.max,
            };
            if setrlimit(RLIMIT_NOFILE, &to_hard) == 0 {
                return Some(l.max);
            }
            Some(l.cur)
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn raise_nofile(_want: u64) -> Option<u64> {
        None
    }
}

/// Samples the processes' RSS (summed) periodically, keeping the peak.
struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pids: Vec<String>) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if let Some((rss, _)) = sys::rss_sum_kib(&pids) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        });
        RssWatch { peak_kib, task }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

fn main() -> ExitCode {
    let args = Args::parse();
    ORIGIN.get_or_init(Instant::now);
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args.clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Don't wait for stragglers (they are all bounded, but the report is out).
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            // With --json, stdout carries exactly one JSON line and the summary goes to stderr.
            if args.json {
                eprint!("{}", report.human());
                println!("{}", report.json());
            } else {
                print!("{}", report.human());
            }
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tandem-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses `http://host[:port][/]` into (authority, socket address).
async fn parse_url(url: &str) -> anyhow::Result<(String, SocketAddr)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must start with http:// (got {url:?})");
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        bail!("--url must be a bare origin like http://127.0.0.1:8080 (got {url:?})");
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(with_port.as_str())
        .await
        .with_context(|| format!("resolving {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} resolves to nothing"))?;
    Ok((authority.to_owned(), addr))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[{:8.3}s] {}", now_us() as f64 / 1e6, msg.as_ref());
}

async fn run(args: Args) -> anyhow::Result<Report> {
    if args.guests < 2 {
        bail!("--guests must be at least 2");
    }
    if !(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0) {
        bail!("--rate and --duration must be positive, --warmup and --drain not negative");
    }
    if !(args.connect_rate > 0.0 && args.match_rate > 0.0) {
        bail!("--connect-rate and --match-rate must be positive");
    }
    if args.url.is_empty() {
        bail!("--url needs at least one URL");
    }
    let mut nodes = Vec::with_capacity(args.url.len());
    for url in &args.url {
        let (authority, addr) = parse_url(url).await?;
        nodes.push(Arc::new(Target {
            addr,
            ws_url: format!("ws://{authority}/socket.io/?EIO=4&transport=websocket"),
            authority,
        }));
    }
    let nofile = sys::raise_nofile(args.guests as u64 + args.http_concurrency as u64 + 256);
    if let Some(limit) = nofile {
        if limit < args.guests as u64 + 64 {
            log(format!(
                "warning: open-file limit is {limit}; raise it (ulimit -n 65536) for {} guests",
                args.guests
            ));
        }
    }
    let pids: Vec<String> = args.server_pid.iter().map(|p| p.to_string()).collect();
    for pid in &pids {
        if sys::rss_kib(pid).is_none() {
            bail!("--server-pid {pid}: no such process readable in /proc");
        }
    }
    let rss = (!pids.is_empty()).then(|| RssWatch::start(pids.clone()));
    let shared = Arc::new(Shared::new(nodes.len()));

    // 1. Guests: guest i on node i mod n (created there, and its socket connects there).
    log(format!(
        "creating {} guests at {}",
        args.guests,
        args.url.join(", ")
    ));
    let per_node = (args.http_concurrency / nodes.len()).max(1);
    let created = futures_util::future::join_all(nodes.iter().enumerate().map(|(k, node)| {
        let count = args.guests / nodes.len() + usize::from(k < args.guests % nodes.len());
        http::create_guests(
            node.addr,
            node.authority.clone(),
            count,
            per_node,
            shared.clone(),
        )
    }))
    .await;
    for (k, t) in created.iter().enumerate() {
        shared.node_created[k].add(t.len() as u64);
    }
    // Round-robin over the nodes (exactly i mod n when every creation succeeded).
    let mut guests: Vec<(usize, String)> = Vec::with_capacity(args.guests);
    let mut lists: Vec<_> = created.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = guests.len();
        for (k, list) in lists.iter_mut().enumerate() {
            if let Some(t) = list.next() {
                guests.push((k, t));
            }
        }
        if guests.len() == before {
            break;
        }
    }
    log(format!("created {} guests", guests.len()));
    if guests.is_empty() {
        bail!(
            "no guest could be created: {:?}",
            shared.errors.lock().expect("errors lock")
        );
    }

    // 2. Connections, paced.
    let (ctl, ctl_rx) = watch::channel(Phase::Connect);
    let n = guests.len();
    // Each guest's turn to send match:start.
    let mut slots: Vec<usize> = (0..n).collect();
    match args.match_order {
        MatchOrder::Index => {}
        MatchOrder::Shuffled => {
            use rand::seq::SliceRandom as _;
            slots.shuffle(&mut rand::rng());
        }
        MatchOrder::Grouped => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (guests[i].0, i));
            for (slot, &i) in order.iter().enumerate() {
                slots[i] = slot;
            }
        }
    }
    let connect_secs = n as f64 / args.connect_rate;
    let match_secs = n as f64 / args.match_rate;
    // Every task stops by itself by this time, whatever happens to the coordinator.
    let hard_deadline = now_us()
        + secs_us(connect_secs + match_secs + args.warmup + args.duration + args.drain + 120.0);
    let step = secs_us(1.0 / args.connect_rate);
    let t0 = now_us();
    let mut tasks = Vec::with_capacity(n);
    for (i, (node, token)) in guests.into_iter().enumerate() {
        tokio::time::sleep_until(at(t0 + i as u64 * step)).await;
        let (target, shared, rx) = (nodes[node].clone(), shared.clone(), ctl_rx.clone());
        tasks.push(tokio::spawn(conn::run(
            slots[i],
            node,
            token,
            target,
            shared,
            rx,
            hard_deadline,
        )));
    }
    let deadline = now_us() + secs_us(20.0);
    wait_for(deadline, || {
        shared.connected.get() + shared.connect_failed.get() >= n as u64
    })
    .await;
    let connected = shared.connected.get();
    log(format!(
        "connected {connected}/{n} (failed {})",
        shared.connect_failed.get()
    ));

    // 3. Pairing, paced.
    let match_start = now_us() + 100_000;
    ctl.send_replace(Phase::Match {
        start_us: match_start,
        step_us: secs_us(1.0 / args.match_rate),
    });
    let deadline = match_start + secs_us(match_secs + 20.0);
    let want_paired = connected - connected % 2;
    wait_for(deadline, || shared.paired.get() >= want_paired).await;
    let paired = shared.paired.get();
    let pairs = shared.publish_pairs();
    if nodes.len() > 1 {
        log(format!(
            "paired {paired}/{connected}: {} pairs on one node, {} across two{}",
            pairs.same,
            pairs.cross,
            if pairs.incomplete > 0 {
                format!(", {} rooms only one guest reported", pairs.incomplete)
            } else {
                String::new()
            }
        ));
    } else {
        log(format!("paired {paired}/{connected}"));
    }

    // 4. Chat at the target rate: every paired guest sends every `interval`.
    let mut window = None;
    if paired > 0 {
        let interval_us = ((paired as f64 / args.rate) * 1e6).round().max(1.0) as u64;
        let start_us = now_us() + 200_000;
        let measure_us = start_us + secs_us(args.warmup);
        let end_us = measure_us + secs_us(args.duration);
        log(format!(
            "chat: {paired} senders, {:.2} msg/s each, warmup {}s, measuring {}s",
            1e6 / interval_us as f64,
            args.warmup,
            args.duration
        ));
        ctl.send_replace(Phase::Chat {
            start_us,
            interval_us,
            measure_us,
            end_us,
        });
        tokio::time::sleep_until(at(measure_us)).await;
        let server_cpu0: Vec<_> = pids.iter().map(|p| sys::sample(p)).collect();
        let rss0 = sys::rss_sum_kib(&pids);
        let own_cpu0 = sys::sample("self");
        let machine0 = sys::machine_busy_secs().map(|cpu| sys::CpuSample {
            cpu,
            wall: Instant::now(),
        });
        let mut last = (now_us(), shared.sent.get(), shared.received.get());
        while now_us() < end_us {
            let next = (now_us() + 5_000_000).min(end_us);
            tokio::time::sleep_until(at(next)).await;
            let (t, s, r) = (now_us(), shared.sent.get(), shared.received.get());
            let dt = (t - last.0) as f64 / 1e6;
            log(format!(
                "sending {:.0} msg/s, receiving {:.0} msg/s",
                (s - last.1) as f64 / dt,
                (r - last.2) as f64 / dt
            ));
            last = (t, s, r);
        }
        let server_cpu1: Vec<_> = pids.iter().map(|p| sys::sample(p)).collect();
        let rss1 = sys::rss_sum_kib(&pids);
        let own_cpu1 = sys::sample("self");
        let machine1 = sys::machine_busy_secs().map(|cpu| sys::CpuSample {
            cpu,
            wall: Instant::now(),
        });
        window = Some(Window {
            server_cpu0,
            server_cpu1,
            rss0,
            rss1,
            own_cpu0,
            own_cpu1,
            machine0,
            machine1,
        });
        log(format!("window over; draining (at most {}s)", args.drain));
        let s = &shared;
        wait_for(now_us() + secs_us(args.drain), || {
            s.received.get() + s.refused.get() >= s.sent.get()
                && s.delivered.get() >= s.acked_ok.get()
        })
        .await;
        // Read receipts are not waited for above; give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(250)).await;
        log("drained");
    }

    // 5. Stop: every task disconnects and closes.
    ctl.send_replace(Phase::Stop);
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        log("some connections did not close within 10 s");
    }
    let rss_peak_kib = rss.map(|w| {
        w.task.abort();
        w.peak_kib.load(Ordering::Relaxed)
    });
    let hwm_kib = sys::rss_sum_kib(&pids).map(|(_, hwm)| hwm);
    let names: Vec<String> = pids
        .iter()
        .map(|p| sys::comm(p).unwrap_or_else(|| "?".to_owned()))
        .collect();
    Ok(Report::new(
        &args,
        n,
        &shared,
        Extra {
            window,
            rss_peak_kib,
            hwm_kib,
            pairs,
            names,
        },
    ))
}

fn secs_us(s: f64) -> u64 {
    (s * 1e6).round() as u64
}

/// Polls `done` every 50 ms until it holds or the deadline (µs since origin) passes.
async fn wait_for(deadline: u64, done: impl Fn() -> bool) {
    while !done() && now_us() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Window {
    /// One sample per `--server-pid`, in order.
    server_cpu0: Vec<Option<sys::CpuSample>>,
    server_cpu1: Vec<Option<sys::CpuSample>>,
    rss0: Option<(u64, u64)>,
    rss1: Option<(u64, u64)>,
    own_cpu0: Option<sys::CpuSample>,
    own_cpu1: Option<sys::CpuSample>,
    machine0: Option<sys::CpuSample>,
    machine1: Option<sys::CpuSample>,
}

fn cpu_used(a: Option<sys::CpuSample>, b: Option<sys::CpuSample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let secs = b.cpu - a.cpu;
    let wall = b.wall.duration_since(a.wall).as_secs_f64();
    Some((secs, if wall > 0.0 { secs / wall } else { 0.0 }))
}

/// What the coordinator measured besides the shared counters.
struct Extra {
    window: Option<Window>,
    rss_peak_kib: Option<u64>,
    hwm_kib: Option<u64>,
    pairs: PairCounts,
    /// The command name of each `--server-pid`.
    names: Vec<String>,
}

/// One `--server-pid`'s CPU in the window.
struct ProcCpu {
    pid: u32,
    name: String,
    secs: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// The report

struct Report {
    urls: Vec<String>,
    match_order: MatchOrder,
    /// Per node: guests created, sockets connected.
    node_created: Vec<u64>,
    node_connected: Vec<u64>,
    pairs: PairCounts,
    guests: usize,
    created: usize,
    connected: u64,
    connect_failed: u64,
    disconnected: u64,
    paired: u64,
    unpaired: u64,
    duration: f64,
    warmup: f64,
    target_rate: f64,
    sent: u64,
    sent_total: u64,
    acked_ok: u64,
    refused: u64,
    received: u64,
    received_total: u64,
    delivered: u64,
    reads_sent: u64,
    reads_acked: u64,
    read_receipts: u64,
    system_messages: u64,
    ticks_skipped: u64,
    teardown_events: u64,
    delivery: Latency,
    receipt: Latency,
    read: Latency,
    delivery_same: Latency,
    delivery_cross: Latency,
    receipt_same: Latency,
    receipt_cross: Latency,
    errors: BTreeMap<String, u64>,
    server_pids: Vec<u32>,
    server_cpu_by_pid: Vec<ProcCpu>,
    server_rss_peak_mb: Option<f64>,
    server_rss_hwm_mb: Option<f64>,
    server_rss_start_mb: Option<f64>,
    server_rss_end_mb: Option<f64>,
    server_cpu_secs: Option<f64>,
    server_cores: Option<f64>,
    server_cpu_us_per_msg: Option<f64>,
    tool_cpu_secs: Option<f64>,
    tool_cores: Option<f64>,
    machine_cores: Option<f64>,
    failures: Vec<String>,
}

impl Report {
    fn new(args: &Args, created: usize, s: &Shared, extra: Extra) -> Self {
        let Extra {
            window,
            rss_peak_kib,
            hwm_kib,
            pairs,
            names,
        } = extra;
        let mb = |kib: u64| kib as f64 / 1024.0;
        let received = s.received.get();
        let per_pid: Vec<Option<(f64, f64)>> = match &window {
            Some(w) => w
                .server_cpu0
                .iter()
                .zip(&w.server_cpu1)
                .map(|(a, b)| cpu_used(*a, *b))
                .collect(),
            None => Vec::new(),
        };
        // The sum over every process, only when each was sampled at both ends of the window.
        let server = (!per_pid.is_empty())
            .then(|| {
                per_pid
                    .iter()
                    .try_fold((0.0, 0.0), |(s, c), p| p.map(|(ps, pc)| (s + ps, c + pc)))
            })
            .flatten();
        let server_cpu_by_pid = args
            .server_pid
            .iter()
            .enumerate()
            .map(|(i, &pid)| ProcCpu {
                pid,
                name: names.get(i).cloned().unwrap_or_default(),
                secs: per_pid.get(i).copied().flatten().map(|(s, _)| s),
            })
            .collect();
        let tool = window
            .as_ref()
            .and_then(|w| cpu_used(w.own_cpu0, w.own_cpu1));
        let machine = window
            .as_ref()
            .and_then(|w| cpu_used(w.machine0, w.machine1));
        let mut r = Report {
            urls: args.url.clone(),
            match_order: args.match_order,
            node_created: s.node_created.iter().map(Counter::get).collect(),
            node_connected: s.node_connected.iter().map(Counter::get).collect(),
            pairs,
            guests: args.guests,
            created,
            connected: s.connected.get(),
            connect_failed: s.connect_failed.get(),
            disconnected: s.disconnected.get(),
            paired: s.paired.get(),
            unpaired: s.unpaired.get(),
            duration: args.duration,
            warmup: args.warmup,
            target_rate: args.rate,
            sent: s.sent.get(),
            sent_total: s.sent_total.get(),
            acked_ok: s.acked_ok.get(),
            refused: s.refused.get(),
            received,
            received_total: s.received_total.get(),
            delivered: s.delivered.get(),
            reads_sent: s.reads_sent.get(),
            reads_acked: s.reads_acked.get(),
            read_receipts: s.read_receipts.get(),
            system_messages: s.system_messages.get(),
            ticks_skipped: s.ticks_skipped.get(),
            teardown_events: s.teardown_events.get(),
            delivery: s.delivery.summary(),
            receipt: s.receipt.summary(),
            read: s.read_latency.summary(),
            delivery_same: s.delivery_same.summary(),
            delivery_cross: s.delivery_cross.summary(),
            receipt_same: s.receipt_same.summary(),
            receipt_cross: s.receipt_cross.summary(),
            errors: s.errors.lock().expect("errors lock").clone(),
            server_pids: args.server_pid.clone(),
            server_cpu_by_pid,
            server_rss_peak_mb: rss_peak_kib.map(mb),
            server_rss_hwm_mb: hwm_kib.map(mb),
            server_rss_start_mb: window.as_ref().and_then(|w| w.rss0).map(|(r, _)| mb(r)),
            server_rss_end_mb: window.as_ref().and_then(|w| w.rss1).map(|(r, _)| mb(r)),
            server_cpu_secs: server.map(|(s, _)| s),
            server_cores: server.map(|(_, c)| c),
            server_cpu_us_per_msg: server
                .filter(|_| received > 0)
                .map(|(s, _)| s * 1e6 / received as f64),
            tool_cpu_secs: tool.map(|(s, _)| s),
            tool_cores: tool.map(|(_, c)| c),
            machine_cores: machine.map(|(_, c)| c),
            failures: Vec::new(),
        };
        let g = r.guests as f64;
        if (r.connected as f64) < 0.95 * g {
            r.failures.push(format!(
                "connected {} of {} guests (< 95%)",
                r.connected, r.guests
            ));
        }
        if (r.paired as f64) < 0.95 * g {
            r.failures.push(format!(
                "paired {} of {} guests (< 95%)",
                r.paired, r.guests
            ));
        }
        if r.sent == 0 {
            r.failures
                .push("no message sent in the measured window".into());
        } else if r.delivery_ratio() < 0.99 {
            r.failures.push(format!(
                "received {} of {} messages (< 99%)",
                r.received, r.sent
            ));
        }
        r
    }

    fn delivery_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.received as f64 / self.sent as f64
        }
    }

    /// The share of complete pairs whose guests are on two nodes.
    fn cross_share(&self) -> f64 {
        let all = self.pairs.same + self.pairs.cross;
        if all == 0 {
            0.0
        } else {
            self.pairs.cross as f64 / all as f64
        }
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.duration
    }

    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        let _ = writeln!(o, "tandem-load summary");
        if self.urls.len() > 1 {
            let nodes: Vec<String> = self
                .urls
                .iter()
                .enumerate()
                .map(|(k, u)| {
                    format!(
                        "{u} ({} created, {} connected)",
                        self.node_created.get(k).copied().unwrap_or(0),
                        self.node_connected.get(k).copied().unwrap_or(0)
                    )
                })
                .collect();
            let _ = writeln!(o, "  nodes       {}", nodes.join(", "));
            let _ = writeln!(
                o,
                "  pairs       {} on one node, {} across two ({:.1}%){}; match order {:?}",
                self.pairs.same,
                self.pairs.cross,
                100.0 * self.cross_share(),
                if self.pairs.incomplete > 0 {
                    format!(", {} reported by one guest only", self.pairs.incomplete)
                } else {
                    String::new()
                },
                self.match_order
            );
        }
        let _ = writeln!(
            o,
            "  guests      {} requested, {} created, {} connected ({} failed), {} paired, {} disconnected early, {} chats ended early",
            self.guests, self.created, self.connected, self.connect_failed, self.paired, self.disconnected, self.unpaired
        );
        let _ = writeln!(
            o,
            "  window      {:.1}s after {:.1}s warmup; target {:.0} msg/s",
            self.duration, self.warmup, self.target_rate
        );
        let _ = writeln!(
            o,
            "  messages    sent {} ({:.0}/s), acked ok {}, refused {}, received {} ({:.0}/s, {:.3}%), delivered receipts {} ({:.0}/s)",
            self.sent,
            self.rate(self.sent),
            self.acked_ok,
            self.refused,
            self.received,
            self.rate(self.received),
            100.0 * self.delivery_ratio(),
            self.delivered,
            self.rate(self.delivered)
        );
        let _ = writeln!(
            o,
            "  reads       sent {}, acked ok {}, read receipts (measured) {}; system messages {}; send ticks skipped {}; teardown events {}",
            self.reads_sent,
            self.reads_acked,
            self.read_receipts,
            self.system_messages,
            self.ticks_skipped,
            self.teardown_events
        );
        let lat = |l: &Latency| {
            format!(
                "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms (n={})",
                l.p50, l.p90, l.p99, l.max, l.count
            )
        };
        let _ = writeln!(o, "  delivery    {}", lat(&self.delivery));
        let _ = writeln!(o, "  receipt     {}", lat(&self.receipt));
        let _ = writeln!(o, "  read        {}", lat(&self.read));
        if self.urls.len() > 1 {
            let _ = writeln!(
                o,
                "  delivery, pairs on one node    {}",
                lat(&self.delivery_same)
            );
            let _ = writeln!(
                o,
                "  delivery, pairs across nodes   {}",
                lat(&self.delivery_cross)
            );
            let _ = writeln!(
                o,
                "  receipt, pairs on one node     {}",
                lat(&self.receipt_same)
            );
            let _ = writeln!(
                o,
                "  receipt, pairs across nodes    {}",
                lat(&self.receipt_cross)
            );
        }
        if !self.server_pids.is_empty() {
            let pids: Vec<String> = self.server_pids.iter().map(u32::to_string).collect();
            let _ = writeln!(
                o,
                "  server {}  RSS peak {} (window start {}, end {}, HWM {}); CPU {} = {} cores; {} per message",
                pids.join("+"),
                opt(self.server_rss_peak_mb, " MB"),
                opt(self.server_rss_start_mb, " MB"),
                opt(self.server_rss_end_mb, " MB"),
                opt(self.server_rss_hwm_mb, " MB"),
                opt(self.server_cpu_secs, " s"),
                opt(self.server_cores, ""),
                opt(self.server_cpu_us_per_msg, " µs"),
            );
            if self.server_cpu_by_pid.len() > 1 {
                let each: Vec<String> = self
                    .server_cpu_by_pid
                    .iter()
                    .map(|p| format!("{} {} {}", p.name, p.pid, opt(p.secs, " s")))
                    .collect();
                let _ = writeln!(o, "  server CPU  {}", each.join(", "));
            }
        }
        let _ = writeln!(
            o,
            "  load tool   CPU {} = {} cores; whole machine busy {} of {} cores",
            opt(self.tool_cpu_secs, " s"),
            opt(self.tool_cores, ""),
            opt(self.machine_cores, ""),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        if self.errors.is_empty() {
            let _ = writeln!(o, "  errors      none");
        } else {
            let _ = writeln!(o, "  errors");
            for (k, v) in &self.errors {
                let _ = writeln!(o, "    {v:>8}  {k}");
            }
        }
        if self.failures.is_empty() {
            let _ = writeln!(o, "  result      PASS");
        } else {
            let _ = writeln!(o, "  result      FAIL: {}", self.failures.join("; "));
        }
        o
    }

    fn json(&self) -> String {
        let by_pid: Vec<serde_json::Value> = self
            .server_cpu_by_pid
            .iter()
            .map(|p| json!({ "pid": p.pid, "name": p.name, "cpu_s": p.secs }))
            .collect();
        let v = json!({
            "urls": self.urls,
            "match_order": format!("{:?}", self.match_order).to_lowercase(),
            "node_created": self.node_created,
            "node_connected": self.node_connected,
            "pairs_same_node": self.pairs.same,
            "pairs_cross_node": self.pairs.cross,
            "pairs_incomplete": self.pairs.incomplete,
            "cross_node_share": self.cross_share(),
            "guests": self.guests,
            "created": self.created,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "disconnected_early": self.disconnected,
            "paired": self.paired,
            "chats_ended_early": self.unpaired,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "target_rate": self.target_rate,
            "sent": self.sent,
            "sent_total": self.sent_total,
            "acked_ok": self.acked_ok,
            "refused": self.refused,
            "received": self.received,
            "received_total": self.received_total,
            "delivered_receipts": self.delivered,
            "reads_sent": self.reads_sent,
            "reads_acked_ok": self.reads_acked,
            "read_receipts": self.read_receipts,
            "system_messages": self.system_messages,
            "ticks_skipped": self.ticks_skipped,
            "teardown_events": self.teardown_events,
            "achieved_send_rate": self.rate(self.sent),
            "received_rate": self.rate(self.received),
            "delivered_receipt_rate": self.rate(self.delivered),
            "read_receipt_rate": self.rate(self.read_receipts),
            "delivery_ratio": self.delivery_ratio(),
            "delivery_latency_ms": latency_json(&self.delivery),
            "receipt_latency_ms": latency_json(&self.receipt),
            "read_latency_ms": latency_json(&self.read),
            "delivery_same_node_latency_ms": latency_json(&self.delivery_same),
            "delivery_cross_node_latency_ms": latency_json(&self.delivery_cross),
            "receipt_same_node_latency_ms": latency_json(&self.receipt_same),
            "receipt_cross_node_latency_ms": latency_json(&self.receipt_cross),
            "errors": self.errors,
            "server_pid": self.server_pids.first(),
            "server_pids": self.server_pids,
            "server_cpu_by_pid": by_pid,
            "server_rss_peak_mb": self.server_rss_peak_mb,
            "server_rss_hwm_mb": self.server_rss_hwm_mb,
            "server_rss_window_start_mb": self.server_rss_start_mb,
            "server_rss_window_end_mb": self.server_rss_end_mb,
            "server_cpu_s": self.server_cpu_secs,
            "server_cpu_cores": self.server_cores,
            "server_cpu_us_per_message": self.server_cpu_us_per_msg,
            "tool_cpu_s": self.tool_cpu_secs,
            "tool_cpu_cores": self.tool_cores,
            "machine_busy_cores": self.machine_cores,
            "machine_cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "pass": self.failures.is_empty(),
            "failures": self.failures,
        });
        v.to_string()
    }
}

fn latency_json(l: &Latency) -> serde_json::Value {
    json!({ "count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max, "mean": l.mean })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_told_apart_by_room() {
        let s = Shared::new(2);
        s.joined("r1", 0);
        s.joined("r1", 1);
        s.joined("r2", 1);
        s.joined("r2", 1);
        s.joined("r3", 0);
        let c = s.publish_pairs();
        assert_eq!((c.same, c.cross, c.incomplete), (1, 1, 1));
        let pairs = s.pairs.get().expect("published");
        assert_eq!(pairs.get("r1"), Some(&true));
        assert_eq!(pairs.get("r2"), Some(&false));
        assert_eq!(pairs.get("r3"), None);
    }
}
