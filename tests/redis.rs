//! The cluster's bus and global matchmaker (src/cluster/bus.rs, src/cluster/matchmaker.rs)
//! against a real `redis-server` (Debian's package; scripts/test.sh installs it).
//!
//! Every test runs in a fresh network namespace with only loopback up: the test re-executes
//! its own test binary, filtered to itself, under `unshare -n` (the child sees
//! `TANDEM_REDIS_NETNS` set and runs the body). The child starts its own `redis-server`s on
//! loopback and stops them by PID; the parent kills the child's whole process group afterwards,
//! so nothing outlives a test even if the child crashes. That needs root (or CAP_SYS_ADMIN),
//! util-linux's `unshare` and iproute2's `ip`, like tests/e2e.rs.
//!
//! `bench_bus_and_matchmaker` is a benchmark (ignored by default; numbers printed, nothing
//! asserted): `cargo test --release --test redis -- --ignored --nocapture bench`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::Registry;
use tandem::cluster::{
    Bus, BusError, BusKind, BusMetrics, BusSettings, Cluster, Incoming, MatchError, MatchSettings,
    Matchmaker, NodeId, PairBlock, Paired,
};
use tandem_config::{RedisHost, RedisTarget};
use tokio::sync::mpsc;

const IN_NETNS: &str = "TANDEM_REDIS_NETNS";

/// Runs `body` in a fresh network namespace: in the parent, re-runs this test (`name`) there.
fn in_namespace(name: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_NETNS).is_some() {
        body();
        return;
    }
    let probe = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Redis tests must run in their own network namespace, but `unshare -n sh -c \
             'ip link set lo up'` failed ({}): {}\nIt needs root (or CAP_SYS_ADMIN) and the `ip` \
             tool (Debian: apt-get install iproute2).",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("`unshare` could not be run ({e}); install util-linux and run as root"),
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([
            name,
            "--exact",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(IN_NETNS, "1")
        .process_group(0)
        .spawn()
        .expect("unshare runs");
    let group = child.id();
    let status = child.wait();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let status = status.expect("waiting for the test in its namespace");
    assert!(
        status.success(),
        "{name} failed in its namespace ({status})"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A port free on loopback now (and at most `max`).
fn free_port(max: u16) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = l.local_addr().expect("local address").port();
        if port <= max {
            return port;
        }
    }
}

/// One `redis-server` of the test's own, stopped by PID.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        // A Cluster node also listens on port + 10000.
        let port = free_port(55_000);
        let dir = std::env::temp_dir().join(format!("tandem-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while command(self.port, &["PING"]).ok().as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL by PID, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn target(&self) -> RedisTarget {
        target(&[self.port], false)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn target(ports: &[u16], cluster: bool) -> RedisTarget {
    RedisTarget {
        tls: false,
        cluster,
        userinfo: None,
        hosts: ports
            .iter()
            .map(|&port| RedisHost {
                host: "127.0.0.1".into(),
                port,
            })
            .collect(),
        db: 0,
    }
}

/// Sends one command in RESP and returns the reply's first line (or the bulk string).
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(rest) = text.strip_prefix('$') {
            if let Some((len, body)) = rest.split_once("\r\n") {
                let len: usize = len.parse().unwrap_or(0);
                if body.len() >= len + 2 {
                    return Ok(body[..len].to_owned());
                }
            }
        } else if let Some((line, _)) = text.split_once("\r\n") {
            return Ok(line.to_owned());
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Three masters, slots split in three, joined by MEET.
fn redis_cluster() -> Vec<RedisServer> {
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
    ];
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(&args)).collect();
    let ranges = [("0", "5460"), ("5461", "10922"), ("10923", "16383")];
    for (s, (from, to)) in servers.iter().zip(ranges) {
        assert_eq!(
            command(s.port, &["CLUSTER", "ADDSLOTSRANGE", from, to]).unwrap(),
            "+OK"
        );
    }
    for s in &servers[1..] {
        let port = s.port.to_string();
        assert_eq!(
            command(servers[0].port, &["CLUSTER", "MEET", "127.0.0.1", &port]).unwrap(),
            "+OK"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = servers.iter().all(|s| {
            let info = command(s.port, &["CLUSTER", "INFO"]).unwrap_or_default();
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the Redis Cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    servers
}

async fn bus(target: &RedisTarget) -> (Bus, mpsc::Receiver<Incoming>, NodeId, Registry) {
    let registry = Registry::new();
    let id = NodeId::random();
    let settings = BusSettings {
        outgoing: 8192,
        incoming: 16384,
    };
    let (bus, rx) = Bus::connect(
        target,
        id,
        settings,
        BusMetrics::register(&registry).unwrap(),
    )
    .await
    .expect("the bus connects");
    (bus, rx, id, registry)
}

/// A metric's value (summed over its series) from `registry`.
fn metric(registry: &Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut sum = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            if let Some((k, v)) = label {
                if !m
                    .get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
                {
                    continue;
                }
            }
            sum += m.get_counter().get_value() + m.get_gauge().get_value();
        }
    }
    sum
}

/// Sends, retrying while the outgoing queue is full.
async fn send_all(bus: &Bus, to: NodeId, from: u64, count: u64) {
    for i in from..from + count {
        loop {
            match bus.send(to, BusKind::Chat, Bytes::from(i.to_be_bytes().to_vec())) {
                Ok(()) => break,
                Err(BusError::Full) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => panic!("send {i}: {e}"),
            }
        }
    }
}

fn number(msg: &Incoming) -> u64 {
    u64::from_be_bytes(msg.payload[..8].try_into().expect("8 bytes"))
}

/// `count` messages from `from` arrive on `rx` in order (within `within`).
async fn expect_in_order(rx: &mut mpsc::Receiver<Incoming>, from: NodeId, count: u64) {
    for i in 0..count {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {count} did not arrive"))
            .expect("the bus is open");
        assert_eq!(msg.from, from);
        assert_eq!(msg.kind, BusKind::Chat);
        assert_eq!(number(&msg), i, "messages arrive in the order sent");
    }
}

#[test]
fn bus_delivers_10000_messages_in_order() {
    in_namespace("bus_delivers_10000_messages_in_order", || {
        let redis = RedisServer::start(&[]);
        runtime().block_on(async {
            let (a, mut a_rx, a_id, _) = bus(&redis.target()).await;
            let (b, mut b_rx, b_id, b_metrics) = bus(&redis.target()).await;
            // Both ways at once.
            let back = tokio::spawn({
                let b = b.clone();
                async move { send_all(&b, a_id, 0, 1000).await }
            });
            send_all(&a, b_id, 0, 10_000).await;
            expect_in_order(&mut b_rx, a_id, 10_000).await;
            expect_in_order(&mut a_rx, b_id, 1000).await;
            back.await.unwrap();
            assert_eq!(
                metric(
                    &b_metrics,
                    "tandem_cluster_bus_received_total",
                    Some(("kind", "chat"))
                ),
                10_000.0
            );
            assert_eq!(
                metric(&b_metrics, "tandem_cluster_bus_gaps_total", None),
                0.0
            );
            // Too large, refused at once.
            let big = Bytes::from(vec![0u8; tandem::cluster::bus::MAX_PAYLOAD + 1]);
            assert_eq!(a.send(b_id, BusKind::Chat, big), Err(BusError::TooLarge));
        });
    });
}

#[test]
fn bus_refuses_during_a_redis_outage_and_resumes() {
    in_namespace("bus_refuses_during_a_redis_outage_and_resumes", || {
        let mut redis = RedisServer::start(&[]);
        let rt = runtime();
        let (a, _a_rx, _, a_metrics) = rt.block_on(bus(&redis.target()));
        let (b, mut b_rx, b_id, b_metrics) = rt.block_on(bus(&redis.target()));
        // Received numbers, collected by a task.
        let (got_tx, mut got_rx) = mpsc::unbounded_channel();
        rt.spawn(async move {
            while let Some(msg) = b_rx.recv().await {
                let _ = got_tx.send(number(&msg));
            }
        });
        let (accepted, refused, next) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
        let send = |n: u64, pause: Duration| {
            for _ in 0..n {
                let i = next.get();
                match a.send(b_id, BusKind::Chat, Bytes::from(i.to_be_bytes().to_vec())) {
                    Ok(()) => accepted.set(accepted.get() + 1),
                    Err(BusError::Unavailable) => refused.set(refused.get() + 1),
                    Err(e) => panic!("unexpected refusal: {e}"),
                }
                next.set(i + 1);
                std::thread::sleep(pause);
            }
        };
        send(500, Duration::from_micros(200));
        redis.kill();
        // Refused at once while Redis is away (a few accepted before the bus notices are lost).
        send(300, Duration::from_millis(5));
        assert!(refused.get() > 0, "sends are refused while Redis is down");
        assert!(!a.is_up());
        redis.spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.is_up() && b.is_up()) {
            assert!(Instant::now() < deadline, "the bus did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
        send(500, Duration::from_micros(200));
        let last = next.get() - 1;
        let mut got = Vec::new();
        rt.block_on(async {
            while got.last() != Some(&last) {
                match tokio::time::timeout(Duration::from_secs(10), got_rx.recv()).await {
                    Ok(Some(n)) => got.push(n),
                    _ => panic!("the last message did not arrive; got {}", got.len()),
                }
            }
        });
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        let received = got.len() as u64;
        let gaps = metric(&b_metrics, "tandem_cluster_bus_gaps_total", None) as u64;
        let resubscribed = metric(&b_metrics, "tandem_cluster_bus_resubscribes_total", None);
        let lost = metric(
            &a_metrics,
            "tandem_cluster_bus_send_failures_total",
            Some(("reason", "lost")),
        );
        let unavailable = metric(
            &a_metrics,
            "tandem_cluster_bus_send_failures_total",
            Some(("reason", "unavailable")),
        );
        let (accepted, refused) = (accepted.get(), refused.get());
        println!(
            "outage: accepted {accepted}, refused {refused}, received {received}, gaps {gaps}, \
             lost on the sender {lost}, refused as unavailable {unavailable}, resubscribed {resubscribed}"
        );
        assert_eq!(unavailable as u64, refused);
        assert_eq!(
            gaps,
            accepted - received,
            "every accepted message lost is a gap"
        );
        assert!(resubscribed >= 1.0);
        drop((a, b));
        drop(rt);
    });
}

/// A node: its own Cluster handle (own Redis connection, own metrics).
async fn node(target: &RedisTarget, name: &str) -> (Cluster, Matchmaker) {
    node_with(target, name, MatchSettings::default()).await
}

async fn node_with(target: &RedisTarget, name: &str, s: MatchSettings) -> (Cluster, Matchmaker) {
    let cluster = Cluster::connect(target, Some(name), &Registry::new())
        .await
        .expect("connects to Redis");
    let mm = cluster.matchmaker(s);
    (cluster, mm)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn tags(v: &[&str]) -> Vec<String> {
    v.iter().map(|t| (*t).to_owned()).collect()
}

/// `guests` guests enqueued at once from `nodes` nodes: each paired exactly once, none lost,
/// at most one left queued.
async fn pair_concurrently(target: &RedisTarget, nodes: usize, guests: usize) {
    let mut handles = Vec::new();
    for n in 0..nodes {
        handles.push(node(target, &format!("n{n}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(guests));
    let mut tasks = Vec::new();
    let mut node_of = HashMap::new();
    for g in 0..guests {
        let (cluster, mm) = &handles[g % nodes];
        let (node_id, mm) = (cluster.node_id(), mm.clone());
        let sid = format!("g{g:04}");
        node_of.insert(sid.clone(), node_id);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = mm.enqueue(&sid, &sid, &[], node_id, true, now_ms()).await;
            (sid, r)
        }));
    }
    let mut paired: HashSet<String> = HashSet::new();
    let mut pairs = 0;
    for t in tasks {
        let (sid, r) = t.await.unwrap();
        if let Some(p) = r.expect("enqueue works") {
            assert_eq!(p.seeker, sid);
            assert_eq!(p.seeker_name, sid, "the seeker's name");
            assert_eq!(p.partner_name, p.partner_sid, "the partner's name");
            assert_eq!(node_of[&p.seeker], p.seeker_node, "the seeker's node");
            assert_eq!(
                node_of[&p.partner_sid], p.partner_node,
                "the partner's node"
            );
            assert!(paired.insert(p.seeker.clone()), "{} paired twice", p.seeker);
            assert!(
                paired.insert(p.partner_sid.clone()),
                "{} paired twice",
                p.partner_sid
            );
            pairs += 1;
        }
    }
    let mm = &handles[0].1;
    let left = mm.queued().await.unwrap() as usize;
    assert_eq!(pairs * 2 + left, guests, "none lost");
    assert_eq!(left, guests % 2, "nobody who could pair is left waiting");
    for g in 0..guests {
        let sid = format!("g{g:04}");
        if !paired.contains(&sid) {
            assert!(mm.cancel(&sid).await.unwrap(), "{sid} is the one queued");
        }
    }
    assert_eq!(mm.queued().await.unwrap(), 0);
}

#[test]
fn matchmaker_pairs_301_guests_from_3_nodes_exactly_once() {
    in_namespace(
        "matchmaker_pairs_301_guests_from_3_nodes_exactly_once",
        || {
            let redis = RedisServer::start(&[]);
            runtime().block_on(pair_concurrently(&redis.target(), 3, 301));
        },
    );
}

fn paired(seeker: &str, partner: &str, node: NodeId) -> Option<Paired> {
    // The tests name each guest by its id, and queue both on one node.
    Some(Paired {
        seeker: seeker.into(),
        seeker_node: node,
        seeker_name: seeker.into(),
        partner_sid: partner.into(),
        partner_node: node,
        partner_name: partner.into(),
    })
}

#[test]
fn matchmaker_follows_the_single_node_rules() {
    in_namespace("matchmaker_follows_the_single_node_rules", || {
        let redis = RedisServer::start(&[]);
        let t = redis.target();
        let flush = || assert_eq!(command(redis.port, &["FLUSHALL"]).unwrap(), "+OK");
        runtime().block_on(async {
            let (c, m) = node(&t, "n1").await;
            let me = c.node_id();
            let hour = Duration::from_secs(3600);
            let now = now_ms();

            // Oldest first; a shared interest beats waiting time, the oldest sharer wins.
            for (a, b) in [("g1", "g2"), ("g1", "g3"), ("g2", "g3")] {
                m.record_end(a, b, PairBlock::Blocked(hour)).await.unwrap();
            }
            assert_eq!(
                m.enqueue("g1", "g1", &tags(&["chess"]), me, true, now)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                m.enqueue("g2", "g2", &tags(&["go", "music"]), me, true, now)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                m.enqueue("g3", "g3", &tags(&["music"]), me, true, now)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                m.enqueue("g4", "g4", &tags(&["music", "films"]), me, true, now)
                    .await
                    .unwrap(),
                paired("g4", "g2", me)
            );
            // Nobody shares "films": the longest-waiting guest.
            assert_eq!(
                m.enqueue("g5", "g5", &tags(&["films"]), me, true, now)
                    .await
                    .unwrap(),
                paired("g5", "g1", me)
            );
            // Without interests: the oldest, whatever its interests.
            assert_eq!(
                m.enqueue("g6", "g6", &[], me, true, now).await.unwrap(),
                paired("g6", "g3", me)
            );
            assert_eq!(m.queued().await.unwrap(), 0);
            flush();

            // Queued twice is refused; cancel.
            m.enqueue("a", "a", &[], me, false, now).await.unwrap();
            assert!(matches!(
                m.enqueue("a", "a", &tags(&["x"]), me, true, now).await,
                Err(MatchError::AlreadySearching)
            ));
            assert!(m.cancel("a").await.unwrap());
            assert!(!m.cancel("a").await.unwrap());
            assert_eq!(m.enqueue("b", "b", &[], me, true, now).await.unwrap(), None);
            assert!(m.cancel("b").await.unwrap());

            // Away guests keep their place but are not paired; back, paired at once.
            m.enqueue("a", "a", &[], me, true, now).await.unwrap();
            assert_eq!(m.set_away("a", true).await.unwrap(), None);
            assert_eq!(m.enqueue("b", "b", &[], me, true, now).await.unwrap(), None);
            assert_eq!(
                m.enqueue("c", "c", &[], me, false, now).await.unwrap(),
                None
            );
            assert_eq!(m.set_away("a", false).await.unwrap(), paired("a", "b", me));
            assert_eq!(m.set_away("nobody", false).await.unwrap(), None);
            assert_eq!(m.queued().await.unwrap(), 1);
            flush();

            // Cooldown: not paired while it lasts, paired once it is over.
            m.record_end("a", "b", PairBlock::Cooldown(Duration::from_millis(300)))
                .await
                .unwrap();
            assert_eq!(m.enqueue("a", "a", &[], me, true, now).await.unwrap(), None);
            assert_eq!(m.enqueue("b", "b", &[], me, true, now).await.unwrap(), None);
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(
                m.cooldown_over("a", "b").await.unwrap(),
                vec![paired("a", "b", me).unwrap()]
            );
            // A long cooldown is not over early.
            m.record_end("a", "b", PairBlock::Cooldown(Duration::from_secs(60)))
                .await
                .unwrap();
            m.enqueue("a", "a", &[], me, true, now).await.unwrap();
            m.enqueue("b", "b", &[], me, true, now).await.unwrap();
            assert_eq!(m.cooldown_over("a", "b").await.unwrap(), vec![]);
            flush();

            // A block is never turned into a cooldown.
            m.record_end("a", "b", PairBlock::Blocked(hour))
                .await
                .unwrap();
            m.record_end("a", "b", PairBlock::Cooldown(Duration::from_millis(1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            m.enqueue("a", "a", &[], me, true, now).await.unwrap();
            assert_eq!(m.enqueue("b", "b", &[], me, true, now).await.unwrap(), None);
            assert_eq!(m.cooldown_over("a", "b").await.unwrap(), vec![]);
            // …but a third guest pairs with the oldest.
            assert_eq!(
                m.enqueue("c", "c", &[], me, true, now).await.unwrap(),
                paired("c", "a", me)
            );
            flush();

            // A node that left: its entries go, the others stay.
            let other = NodeId::random();
            for sid in ["x1", "x2", "x3"] {
                m.enqueue(sid, sid, &[], other, false, now).await.unwrap();
            }
            m.enqueue("y1", "y1", &[], me, false, now).await.unwrap();
            assert_eq!(m.drop_node(other).await.unwrap(), 3);
            assert_eq!(m.drop_node(other).await.unwrap(), 0);
            assert_eq!(m.queued().await.unwrap(), 1);
            assert_eq!(
                m.enqueue("x1", "x1", &[], me, true, now).await.unwrap(),
                None
            );
            assert_eq!(
                m.set_away("y1", false).await.unwrap(),
                paired("y1", "x1", me)
            );
            flush();

            // Bounded: a cap, and a scan of the first entries only.
            let (_, small) = node_with(&t, "n2", MatchSettings { cap: 2, scan: 2 }).await;
            small
                .enqueue("a1", "a1", &[], me, false, now)
                .await
                .unwrap();
            small
                .enqueue("a2", "a2", &[], me, false, now)
                .await
                .unwrap();
            assert!(matches!(
                small.enqueue("a3", "a3", &[], me, false, now).await,
                Err(MatchError::QueueFull)
            ));
            let (_, scan2) = node_with(&t, "n3", MatchSettings { cap: 10, scan: 2 }).await;
            scan2.enqueue("b1", "b1", &[], me, true, now).await.unwrap();
            // b1 is third in line: a scan of two does not see it (the documented trade-off).
            assert_eq!(
                scan2.enqueue("b2", "b2", &[], me, true, now).await.unwrap(),
                None
            );
            assert!(small.cancel("a1").await.unwrap());
            assert_eq!(
                scan2.enqueue("b3", "b3", &[], me, true, now).await.unwrap(),
                paired("b3", "b1", me)
            );
            // Bad ids never reach Redis.
            assert!(matches!(
                m.enqueue("a:b", "x", &[], me, true, now).await,
                Err(MatchError::Invalid(_))
            ));
        });
    });
}

#[test]
fn bus_and_matchmaker_on_a_3_master_redis_cluster() {
    in_namespace("bus_and_matchmaker_on_a_3_master_redis_cluster", || {
        let servers = redis_cluster();
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let t = target(&ports, true);
        runtime().block_on(async {
            let (a, _a_rx, a_id, _) = bus(&t).await;
            let (_b, mut b_rx, b_id, _) = bus(&t).await;
            send_all(&a, b_id, 0, 2000).await;
            expect_in_order(&mut b_rx, a_id, 2000).await;
            pair_concurrently(&t, 3, 61).await;
        });
        drop(servers);
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn bench_bus_and_matchmaker() {
    in_namespace("bench_bus_and_matchmaker", || {
        let redis = RedisServer::start(&[]);
        let t = redis.target();
        runtime().block_on(async {
            let (a, mut a_rx, a_id, _) = bus(&t).await;
            let (b, mut b_rx, b_id, _) = bus(&t).await;
            // B echoes everything back.
            tokio::spawn(async move {
                while let Some(msg) = b_rx.recv().await {
                    while let Err(BusError::Full) = b.send(a_id, BusKind::Chat, msg.payload.clone()) {
                        tokio::task::yield_now().await;
                    }
                }
            });
            let mut rtts = Vec::new();
            for i in 0..5000u64 {
                let started = Instant::now();
                a.send(b_id, BusKind::Chat, Bytes::from(i.to_be_bytes().to_vec())).unwrap();
                let back = a_rx.recv().await.unwrap();
                assert_eq!(number(&back), i);
                rtts.push(started.elapsed());
            }
            rtts.sort();
            println!(
                "bench: bus round trip (A→B→A, one at a time, 5000): p50 {:?}, p99 {:?}, max {:?}",
                percentile(&rtts, 0.5),
                percentile(&rtts, 0.99),
                rtts[rtts.len() - 1]
            );
            // Throughput: A floods B (echoed back); count what comes back.
            let total = 200_000u64;
            let started = Instant::now();
            let sender = tokio::spawn({
                let a = a.clone();
                async move { send_all(&a, b_id, 0, total).await }
            });
            let mut got = 0u64;
            while got < total {
                match tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await {
                    Ok(Some(_)) => got += 1,
                    _ => break,
                }
            }
            sender.await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "bench: bus throughput: {got} of {total} messages A→B→A in {secs:.2} s = {:.0} msg/s each way",
                got as f64 / secs
            );

            let (c, m) = node(&t, "bench").await;
            let me = c.node_id();
            let mut lat = Vec::new();
            for i in 0..4000 {
                let interests = if i % 3 == 0 { tags(&["music"]) } else { vec![] };
                let started = Instant::now();
                m.enqueue(&format!("s{i}"), "bench", &interests, me, true, now_ms()).await.unwrap();
                lat.push(started.elapsed());
            }
            lat.sort();
            println!(
                "bench: matchmaker enqueue (4000, half pair at once): p50 {:?}, p99 {:?}",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
            // A long queue of away guests at the head: each enqueue scans `scan` entries.
            for i in 0..2000 {
                m.enqueue(&format!("w{i}"), "bench", &[], me, false, now_ms()).await.unwrap();
            }
            let mut lat = Vec::new();
            for i in 0..1000 {
                let started = Instant::now();
                m.enqueue(&format!("z{i}"), "bench", &tags(&["x"]), me, true, now_ms()).await.unwrap();
                lat.push(started.elapsed());
            }
            lat.sort();
            println!(
                "bench: matchmaker enqueue behind 2000 away guests (scan 512): p50 {:?}, p99 {:?}",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        });
    });
}
