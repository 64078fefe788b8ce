#!/usr/bin/env bash
# What the cluster costs (issue 14): the same chat load, in one sitting, against
#   a  one node without Redis,
#   b  one node with Redis (--redis-url; a redis-server started here),
#   c  two nodes on one Redis (guest i created and connected on node i mod 2; match:start in a
#      random order, so about half the pairs span the two nodes),
# and, to take c apart (not run unless named in --configs):
#   s  two nodes on one Redis, match:start node by node: every pair on one node (the cost of
#      splitting the load over two processes, no chat crosses the bus),
#   x  two nodes on one Redis, match:start alternating between the nodes: every pair spans both;
# each run in a fresh network namespace (loopback only), the configurations alternated round
# after round (a b c, then c b a, …). Per run: server CPU per 1,000 messages (utime + stime of
# every tandem node and of redis-server, summed over the measured window by tandem-load from
# /proc/<pid>/stat), delivery latency p50 / p99, and in c the same-node and cross-node pairs
# apart. The summary gives each configuration's median and range, the ratios b/a and c/a, and
# the p50 latency a cross-node pair adds.
#
#   benches/cluster/bench.sh [--rounds 2] [--loads "200:2000"] [--duration 20] [--warmup 5]
#                            [--configs "a b c"] [--no-build]
#
# CLUSTER_BENCH_TANDEM=<path> runs another tandem binary (e.g. a build of an earlier commit).
# A load is pairs:msg/s in total (200:2000 = 400 guests, each sending 5 msg/s). Needs root (for
# `unshare -n`), redis-server, curl and python3; builds tandem and tandem-load (release, into
# $CARGO_TARGET_DIR or target/) unless --no-build. Writes target/cluster-bench/ (or
# $CLUSTER_BENCH_OUT): one JSON report and one log per run, and summary.md. Exit 0 when every run
# passed (tandem-load's own check: ≥ 95 % paired, ≥ 99 % of the messages received), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=2 loads="200:2000" duration=20 warmup=5 configs="a b c" build=1
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --loads) loads=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--rounds N] [--loads 'PAIRS:RATE …'] [--duration S] [--warmup S] [--configs 'a b c'] [--no-build]" >&2
       exit 2 ;;
  esac
done
bin=${CARGO_TARGET_DIR:-target}/release
tandem=${CLUSTER_BENCH_TANDEM:-$bin/tandem}
out=${CLUSTER_BENCH_OUT:-target/cluster-bench}

if [ -z "${CLUSTER_BENCH_IN_NETNS:-}" ]; then
  for tool in redis-server curl python3 unshare; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 2; }
  done
  if [ "$build" = 1 ]; then
    cargo build --release --bin tandem --bin tandem-load >&2
  fi
  for b in "$tandem" "$bin/tandem-load"; do
    [ -x "$b" ] || { echo "no $b: build it (cargo build --release --bin tandem --bin tandem-load)" >&2; exit 2; }
  done
  exec env CLUSTER_BENCH_IN_NETNS=1 unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' "$0" "${args[@]}"
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$out"
work=$(mktemp -d)

# Every process this script starts, by PID; all stopped on exit, whatever happens.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops one process by PID: SIGTERM, then SIGKILL after 5 s.
stop() {
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

jwt=cluster-bench-jwt-secret-0123456789abcdef
# Limits above the load (README "Signaling load"); no TURN, media on any free port.
node_flags=(--log-level warn --node-ip 127.0.0.1 --rtc-udp-port 0 --rtc-tcp-port 0
  --turn-enabled=false --jwt-secret "$jwt" --shutdown-grace-secs 1
  --guest-creations-per-min 1000000 --http-requests-per-min 1000000
  --max-connections-per-ip 100000 --max-http-connections-per-ip 100000
  --max-sessions-per-ip 1000000 --socket-handshakes-per-min 1000000
  --chat-messages-per-sec 50 --match-per-sec 100 --match-burst 100 --events-per-sec 100
  --memory-budget-mb 4096)

# start_node <name> <log> [flags…]: sets pid and url once /readyz answers 200.
start_node() {
  local name=$1 log=$2 port i; shift 2
  port=$(free_port)
  "$tandem" --bind "127.0.0.1:$port" --node-name "$name" "${node_flags[@]}" "$@" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  url=http://127.0.0.1:$port
  for i in $(seq 150); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "node $name is not ready:" >&2
  cat "$log" >&2
  exit 1
}

# start_redis <log>: sets pid and url once it answers PING.
start_redis() {
  local log=$1 port i dir
  port=$(free_port)
  dir=$(mktemp -d -p "$work")
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  url=redis://127.0.0.1:$port
  for i in $(seq 100); do
    python3 - "$port" <<'PY' 2>/dev/null && return 0
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
    sleep 0.1
  done
  echo "redis-server did not answer:" >&2
  cat "$log" >&2
  exit 1
}

fail=0
# run_config <config> <pairs> <rate> <round>
run_config() {
  local cfg=$1 pairs=$2 rate=$3 round=$4 tag rpid="" rurl="" urls="" pidlist="" p nodes=1 i order
  tag="$cfg-$pairs-$rate-r$round"
  local -a started=() redis_flags=()
  case "$cfg" in
    a|b) order=shuffled ;;
    c) nodes=2 order=shuffled ;;
    s) nodes=2 order=grouped ;;
    x) nodes=2 order=index ;;
    *) echo "unknown configuration $cfg (a, b, c, s or x)" >&2; exit 2 ;;
  esac
  if [ "$cfg" != a ]; then
    start_redis "$out/$tag.redis.log"
    rpid=$pid rurl=$url
    redis_flags=(--redis-url "$rurl")
  fi
  for i in $(seq "$nodes"); do
    start_node "n$i" "$out/$tag.node$i.log" "${redis_flags[@]}"
    started+=("$pid")
    urls=${urls:+$urls,}$url
    pidlist=${pidlist:+$pidlist,}$pid
  done
  [ -n "$rpid" ] && pidlist=$pidlist,$rpid
  # Let the nodes settle (first heartbeats, registry views) before the load starts.
  sleep 2
  echo "== round $round, config $cfg, $pairs pairs, $rate msg/s: $urls (pids $pidlist)" >&2
  if ! "$bin/tandem-load" --urls "$urls" --server-pid "$pidlist" --guests $((2 * pairs)) \
      --rate "$rate" --duration "$duration" --warmup "$warmup" --match-order "$order" --json \
      >"$out/$tag.json" 2>"$out/$tag.log"; then
    echo "   FAIL (see $out/$tag.log)" >&2
    fail=1
  fi
  grep -E '^  (pairs|delivery|server)' "$out/$tag.log" >&2 || true
  # Each node's metrics (the bus's own latency, how many bus messages a chat message takes).
  i=0
  for u in ${urls//,/ }; do
    i=$((i + 1))
    curl -fsS "$u/metrics" >"$out/$tag.node$i.prom" 2>/dev/null || true
  done
  for p in "${started[@]}"; do stop "$p"; done
  [ -n "$rpid" ] && stop "$rpid"
  return 0
}

rm -f "$out"/*.json "$out"/*.log "$out"/*.prom
for round in $(seq "$rounds"); do
  order=$configs
  # Alternate: a b c, then c b a, …
  if [ $((round % 2)) = 0 ]; then order=$(tr ' ' '\n' <<<"$configs" | tac | tr '\n' ' '); fi
  for load in $loads; do
    for cfg in $order; do
      run_config "$cfg" "${load%%:*}" "${load##*:}" "$round"
    done
  done
done

python3 - "$out" "$duration" <<'PY' | tee "$out/summary.md"
import glob, json, os, statistics, sys, datetime

out, duration = sys.argv[1], float(sys.argv[2])

def prom(path):
    """name{labels} -> value, from a Prometheus text file."""
    vals = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, _, v = line.rstrip().rpartition(" ")
            try:
                vals[key] = float(v)
            except ValueError:
                pass
    return vals

def bus_stats(tag, received_total):
    """Bus messages per relayed chat message, the bus's mean and median hop latency (ms)."""
    sent = count = total = 0.0
    buckets = {}
    for path in glob.glob(os.path.join(out, tag + ".node*.prom")):
        m = prom(path)
        for k, v in m.items():
            if k.startswith("tandem_cluster_bus_sent_total"):
                sent += v
            elif k == "tandem_cluster_bus_latency_seconds_count":
                count += v
            elif k == "tandem_cluster_bus_latency_seconds_sum":
                total += v
            elif k.startswith("tandem_cluster_bus_latency_seconds_bucket"):
                le = k.split('le="')[1].split('"')[0]
                le = float("inf") if le == "+Inf" else float(le)
                buckets[le] = buckets.get(le, 0.0) + v
    if count == 0:
        return None
    # The median by linear interpolation inside its bucket.
    p50, prev_le, prev_n = None, 0.0, 0.0
    for le in sorted(buckets):
        n = buckets[le]
        if n >= count / 2:
            if le == float("inf"):
                p50 = prev_le
            else:
                p50 = prev_le + (le - prev_le) * (count / 2 - prev_n) / max(n - prev_n, 1)
            break
        prev_le, prev_n = le, n
    return {"per_msg": sent / max(received_total, 1), "mean": 1e3 * total / count,
            "p50": 1e3 * (p50 or 0.0)}

runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    cfg, pairs, rate, rnd = os.path.basename(path)[:-5].split("-")
    try:
        with open(path) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        continue
    by = {}
    for p in r.get("server_cpu_by_pid", []):
        if p.get("cpu_s") is not None:
            by[p["name"]] = by.get(p["name"], 0.0) + p["cpu_s"]
    recv = r["received"] or 1
    bus = bus_stats(os.path.basename(path)[:-5], r["received_total"])
    runs.setdefault((int(pairs), int(rate)), {}).setdefault(cfg, []).append({
        "round": rnd,
        "cpu_per_k": (r["server_cpu_s"] or 0) * 1e6 / recv,     # ms per 1,000 messages
        "redis_per_k": by.get("redis-server", 0.0) * 1e6 / recv,
        "cores": r["server_cpu_cores"] or 0,
        "rate": r["received_rate"],
        "p50": r["delivery_latency_ms"]["p50"], "p99": r["delivery_latency_ms"]["p99"],
        "same50": r["delivery_same_node_latency_ms"]["p50"],
        "cross50": r["delivery_cross_node_latency_ms"]["p50"],
        "same99": r["delivery_same_node_latency_ms"]["p99"],
        "cross99": r["delivery_cross_node_latency_ms"]["p99"],
        "cross_pairs": r["pairs_cross_node"], "pairs": r["pairs_cross_node"] + r["pairs_same_node"],
        "pass": r["pass"], "bus": bus,
        # Cores busy with anything else than the servers and the load tool (other work on the box).
        "others": (r["machine_busy_cores"] or 0) - (r["server_cpu_cores"] or 0) - (r["tool_cpu_cores"] or 0),
    })

names = {"a": "one node, no Redis", "b": "one node + Redis", "c": "two nodes + Redis",
         "s": "two nodes + Redis, every pair on one node", "x": "two nodes + Redis, every pair across"}
def rng(xs, fmt):
    xs = sorted(xs)
    med = statistics.median(xs)
    return fmt.format(med) if xs[0] == xs[-1] else (fmt + " ({}–{})").format(med, fmt.format(xs[0]), fmt.format(xs[-1]))

print(f"Cluster benchmark, {datetime.date.today()}, {os.cpu_count()} cores; medians (range) over the rounds; "
      f"{duration:g} s measured per run")
for (pairs, rate), cfgs in sorted(runs.items()):
    print()
    print(f"{pairs} pairs, {rate} msg/s in total")
    print()
    print("| config | runs | received msg/s | server CPU per 1,000 msgs (of it Redis) | server cores | delivery p50 / p99 | CPU vs a |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median([x["cpu_per_k"] for x in cfgs["a"]]) if "a" in cfgs else None
    for cfg in sorted(cfgs):
        xs = cfgs[cfg]
        cpu = statistics.median([x["cpu_per_k"] for x in xs])
        ratio = f"{cpu / base:.2f}×" if base else "—"
        fails = sum(not x["pass"] for x in xs)
        print(f"| {cfg}: {names.get(cfg, cfg)} | {len(xs)}{f' ({fails} failed)' if fails else ''} "
              f"| {rng([x['rate'] for x in xs], '{:.0f}')} "
              f"| {rng([x['cpu_per_k'] for x in xs], '{:.0f}')} ms ({rng([x['redis_per_k'] for x in xs], '{:.0f}')} ms) "
              f"| {rng([x['cores'] for x in xs], '{:.2f}')} "
              f"| {rng([x['p50'] for x in xs], '{:.2f}')} / {rng([x['p99'] for x in xs], '{:.2f}')} ms | {ratio} |")
    if "c" in cfgs:
        xs = cfgs["c"]
        print()
        print(f"c: {rng([100 * x['cross_pairs'] / max(x['pairs'], 1) for x in xs], '{:.0f}')} % of the pairs span two nodes; "
              f"delivery p50 same-node {rng([x['same50'] for x in xs], '{:.2f}')} ms, cross-node "
              f"{rng([x['cross50'] for x in xs], '{:.2f}')} ms: a cross-node pair adds "
              f"{rng([x['cross50'] - x['same50'] for x in xs], '{:+.2f}')} ms p50 "
              f"(p99 same {rng([x['same99'] for x in xs], '{:.2f}')}, cross {rng([x['cross99'] for x in xs], '{:.2f}')} ms)")
        if "a" in cfgs:
            a50 = statistics.median([x["p50"] for x in cfgs["a"]])
            print(f"   cross-node p50 vs a's p50: {statistics.median([x['cross50'] for x in xs]) - a50:+.2f} ms")
    if "s" in cfgs and "x" in cfgs:
        med = lambda c, k: statistics.median([x[k] for x in cfgs[c]])
        print()
        print(f"x (every pair across) vs s (every pair on one node), both two nodes: CPU "
              f"{med('x', 'cpu_per_k') / med('s', 'cpu_per_k'):.2f}×, "
              f"delivery p50 {med('x', 'p50'):.2f} vs {med('s', 'p50'):.2f} ms "
              f"({med('x', 'p50') - med('s', 'p50'):+.2f} ms), p99 {med('x', 'p99'):.2f} vs {med('s', 'p99'):.2f} ms")
    for cfg in sorted(cfgs):
        for x in sorted(cfgs[cfg], key=lambda x: x["round"]):
            print(f"    {cfg} {x['round']}: {x['cpu_per_k']:.0f} ms/1k msgs, {x['cores']:.2f} server cores, "
                  f"rest of the machine {x['others']:.2f} cores, p50 {x['p50']:.2f} p99 {x['p99']:.2f} ms"
                  + (f", same-node pairs {x['same50']:.2f} ms p50" if cfg in "cs" else "")
                  + (f", cross-node pairs {x['cross50']:.2f} ms p50" if cfg in "cx" else "")
                  + (f"; bus: {x['bus']['per_msg']:.2f} messages per chat message, hop mean "
                     f"{x['bus']['mean']:.3f} ms, p50 ≈ {x['bus']['p50']:.3f} ms" if x["bus"] else "")
                  + ("" if x["pass"] else " FAIL"))
PY
exit "$fail"
