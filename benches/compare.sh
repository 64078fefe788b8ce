#!/usr/bin/env bash
# tandem against what it replaces, in one sitting on this machine (issue 16), one table of ratios:
#   signaling  tandem-load against tandem, the Node socket.io stack (benches/node-baseline) and
#              socketioxide alone (benches/sio-baseline: the same relay, no tandem) at
#              200 pairs × 5 msg/s and 500 pairs × 10 msg/s: server CPU per relayed message
#              (utime + stime over the window / messages received) and delivery p99; the servers
#              alternate (tandem, node, sio, then back), medians over --rounds;
#   memory     each server's RSS once ready with no guest, then with --mem-guests guests, all
#              paired, chatting at N/10 msg/s (RSS at the start of tandem-load's window): bytes per
#              guest and the projection to 20,000 guests;
#   media      tandem-media-load at 10 and 25 calls with --baseline (the same peers directly, no
#              tandem): forwarded pkt/s per tandem core, loss, latency p99 added by tandem;
#   core       the media core bench (media/benches/forward.rs): µs of CPU per forwarded packet
#              in the SFU core, and its ratio to one plain str0m receive;
#   turn       benches/turn/compare.sh: tandem's TURN vs coturn, server CPU per load.
#
#   benches/compare.sh [--quick] [--only "signaling memory media core turn"] [--no-build]
#                      [--rounds 2] [--duration 15] [--warmup 5] [--mem-guests 19800]
#
# --duration/--warmup are the signaling window (s); the media load measures 30 s after 5 s.
# --quick: 1 round, 3 s windows, 1000 memory guests, TURN --quick. Needs root (`unshare -n`: all in
# a fresh network namespace, loopback only), curl, python3, node + npm, coturn. Builds tandem,
# tandem-load, tandem-media-load and the forward bench (release, into ${CARGO_TARGET_DIR:-target})
# unless --no-build; COMPARE_MEDIA_LOAD=<path> and COMPARE_FORWARD_BENCH=<path> override those two
# binaries (with --no-build the newest built forward bench is run). Writes ${COMPARE_OUT:-
# target/compare}: JSON and logs per run, summary.md (the table, with the date and `nproc`).
# Exit 0 when every part ran (goals not met are reported, not failures), 1 when one could not.
set -euo pipefail
self=$(realpath "$0")
# Paths given relative to the caller's directory stay so after the cd below.
for v in CARGO_TARGET_DIR COMPARE_OUT COMPARE_MEDIA_LOAD COMPARE_FORWARD_BENCH; do
  [ -n "${!v:-}" ] && export "$v=$(realpath -m "${!v}")"
done
cd "$(dirname "$self")/.."

quick=0 build=1 only="signaling memory media core turn" rounds="" duration="" warmup="" mem_guests=""
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --only) only=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --mem-guests) mem_guests=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--only 'signaling memory media core turn'] [--no-build] [--rounds N]" \
         "[--duration S] [--warmup S] [--mem-guests N]" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  : "${rounds:=1}" "${duration:=3}" "${warmup:=1}" "${mem_guests:=1000}"; mem_secs=2 media_secs=3 media_warm=1
else
  : "${rounds:=2}" "${duration:=15}" "${warmup:=5}" "${mem_guests:=19800}"; mem_secs=5 media_secs=30 media_warm=5
fi
has() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
bin=${CARGO_TARGET_DIR:-target}/release
tandem=$bin/tandem
media_load=${COMPARE_MEDIA_LOAD:-$bin/tandem-media-load}
out=${COMPARE_OUT:-target/compare}

if [ -z "${COMPARE_IN_NETNS:-}" ]; then
  need=(curl python3 unshare)
  has signaling || has memory && need+=(node npm)
  has turn && need+=(turnserver turnutils_uclient turnutils_peer openssl)
  for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 2; }
  done
  servers=0; has signaling || has memory || has media || has turn && servers=1
  if [ "$build" = 1 ]; then
    [ "$servers" = 1 ] && cargo build --release --bin tandem --bin tandem-load --bin tandem-sio-baseline >&2
    if has media && [ -z "${COMPARE_MEDIA_LOAD:-}" ]; then
      cargo build --release -p tandem-media-load --bin tandem-media-load >&2
    fi
  fi
  forward=${COMPARE_FORWARD_BENCH:-}
  if has core && [ -z "$forward" ]; then
    if [ "$build" = 1 ]; then
      forward=$(cargo bench -p tandem-media --bench forward --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forward" and m.get("executable"):
        print(m["executable"])')
    else
      forward=$(find "$bin/deps" -maxdepth 1 -type f -name 'forward-*' -perm -u+x -printf '%T@ %p\n' 2>/dev/null \
        | sort -n | tail -1 | cut -d' ' -f2-)
    fi
  fi
  if has signaling || has memory; then
    [ -d benches/node-baseline/node_modules ] || (cd benches/node-baseline && npm ci --silent) >&2
  fi
  for b in $([ "$servers" = 1 ] && echo "$tandem $bin/tandem-load") $(has signaling && echo "$bin/tandem-sio-baseline") $(has media && echo "$media_load") $(has core && echo "${forward:-forward-bench}"); do
    [ -x "$b" ] || { echo "no $b: build it (or drop --no-build)" >&2; exit 2; }
  done
  exec env COMPARE_IN_NETNS=1 COMPARE_FORWARD_BENCH="$forward" unshare -n \
    sh -c 'ip link set lo up && exec "$0" "$@"' "$self" "${args[@]}"
fi

# ---- inside the namespace ------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log "$out"/*.txt "$out"/*.md "$out"/*.idle "$out"/*.n
fail=0

# Every process this script starts, by PID; all stopped on exit, whatever happens.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # tcp | udp
  python3 -c 'import socket, sys
s = socket.socket(type=socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "${1:-tcp}"
}

# Stops one process by PID: SIGTERM, then SIGKILL after 5 s.
stop() {
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# run <stdout> <stderr> cmd…: a tool as a tracked child; returns its exit status.
run() {
  local o=$1 e=$2 p; shift 2
  "$@" >"$o" 2>"$e" &
  p=$!; pids+=("$p")
  wait "$p"
}

failed() { echo "FAILED: $*" >&2; echo "$*" >>"$out/failures.txt"; fail=1; }

# True when the file's last line is a JSON object (what the load tools print with --json).
has_json() { [ -s "$1" ] && tail -1 "$1" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; }

# Limits above every load (README "Signaling load"): tandem refuses the load without them.
jwt=compare-bench-jwt-secret-0123456789abcdef
limits=(--log-level warn --node-ip 127.0.0.1 --rtc-tcp-port 0 --turn-enabled=false --jwt-secret "$jwt"
  --shutdown-grace-secs 1 --guest-creations-per-min 1000000 --http-requests-per-min 1000000
  --max-connections-per-ip 100000 --max-http-connections-per-ip 100000 --max-sessions-per-ip 1000000
  --socket-handshakes-per-min 1000000 --match-per-sec 100 --match-burst 100 --memory-budget-mb 4096)
chat_flags=(--rtc-udp-port 0 --chat-messages-per-sec 50 --events-per-sec 100)

# start <tandem|node> <log> [tandem flags…]: sets pid and url once the server answers.
start() {
  local srv=$1 log=$2 port probe want i code; shift 2
  port=$(free_port)
  url=http://127.0.0.1:$port
  if [ "$srv" = tandem ]; then
    "$tandem" --bind "127.0.0.1:$port" "${limits[@]}" "$@" >"$log" 2>&1 &
    probe=$url/readyz want=200
  elif [ "$srv" = sio ]; then
    "$bin/tandem-sio-baseline" "$port" >"$log" 2>&1 &
    probe=$url/ want=404
  else
    node benches/node-baseline/server.mjs "$port" >"$log" 2>&1 &
    probe=$url/ want=404
  fi
  pid=$!; pids+=("$pid")
  for i in $(seq 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$probe" 2>/dev/null || true)
    [ "$code" = "$want" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$srv is not ready:" >&2; cat "$log" >&2
  return 1
}

# signaling <srv> <pairs> <rate> <round>
signaling() {
  local srv=$1 pairs=$2 rate=$3 tag="sig-$1-$2-r$4" rc=0
  start "$srv" "$out/$tag.server.log" "${chat_flags[@]}" || { failed "$tag: server did not start"; return; }
  echo "== signaling round $4: $srv, $pairs pairs, $rate msg/s" >&2
  run "$out/$tag.json" "$out/$tag.log" "$bin/tandem-load" --url "$url" --server-pid "$pid" \
    --guests $((2 * pairs)) --rate "$rate" --duration "$duration" --warmup "$warmup" --json || rc=$?
  grep -E '^  (pairs|delivery|server)' "$out/$tag.log" >&2 || true
  { [ "$rc" -le 1 ] && has_json "$out/$tag.json"; } || failed "$tag: tandem-load exit $rc (see $out/$tag.log)"
  stop "$pid"
}

# memory <srv>: idle RSS, then RSS with mem_guests guests connected and paired. One load-tool
# process holds at most $per_tool connections (the open-file limit): past that, a first process
# connects and pairs the others and keeps them chatting while a second one measures.
per_tool=9900
memory() {
  local srv=$1 rc=0 first=0 hold="" i
  start "$srv" "$out/mem-$srv.server.log" "${chat_flags[@]}" || { failed "mem-$srv: server did not start"; return; }
  sleep 1
  awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" >"$out/mem-$srv.idle"
  echo "== memory: $srv, idle $(cat "$out/mem-$srv.idle") KiB, then $mem_guests guests" >&2
  if [ "$mem_guests" -gt "$per_tool" ]; then
    first=$((mem_guests - per_tool))
    "$bin/tandem-load" --url "$url" --guests "$first" --rate $((first / 10)) --duration 900 --warmup 1 \
      >"$out/mem-$srv.first.log" 2>&1 &
    hold=$!; pids+=("$hold")
    for i in $(seq 600); do
      grep -q '\] chat: ' "$out/mem-$srv.first.log" && break
      kill -0 "$hold" 2>/dev/null || break
      sleep 0.5
    done
    if ! grep -q '\] chat: ' "$out/mem-$srv.first.log"; then
      failed "mem-$srv: the first $first guests did not connect and pair (see $out/mem-$srv.first.log)"
      stop "$hold"; stop "$pid"; return
    fi
  fi
  echo "$mem_guests" >"$out/mem-$srv.n"
  run "$out/mem-$srv.json" "$out/mem-$srv.log" "$bin/tandem-load" --url "$url" --server-pid "$pid" \
    --guests "$((mem_guests - first))" --rate $((mem_guests / 10 > 0 ? mem_guests / 10 : 1)) --duration "$mem_secs" \
    --warmup "$warmup" --json || rc=$?
  { [ "$rc" -le 1 ] && has_json "$out/mem-$srv.json"; } || failed "mem-$srv: tandem-load exit $rc (see $out/mem-$srv.log)"
  if [ -n "$hold" ]; then
    kill -0 "$hold" 2>/dev/null || failed "mem-$srv: the first load tool stopped early (see $out/mem-$srv.first.log)"
    stop "$hold"
  fi
  stop "$pid"
}

# media <pairs>: calls through tandem's SFU, then the same peers directly (--baseline).
media() {
  local pairs=$1 rc=0
  start tandem "$out/media-$pairs.server.log" --rtc-udp-port "$(free_port udp)" --events-per-sec 1000 --dev \
    || { failed "media-$pairs: tandem did not start"; return; }
  echo "== media: $pairs calls, ${media_secs}s" >&2
  run "$out/media-$pairs.json" "$out/media-$pairs.log" "$media_load" --url "$url" --pairs "$pairs" \
    --duration "${media_secs}s" --warmup "${media_warm}s" --server-pid "$pid" --baseline --json || rc=$?
  { [ "$rc" -le 1 ] && has_json "$out/media-$pairs.json"; } || failed "media-$pairs: tandem-media-load exit $rc (see $out/media-$pairs.log)"
  stop "$pid"
}

if has signaling; then
  for round in $(seq "$rounds"); do
    for load in 200:2000 500:10000; do
      order="tandem node sio"; [ $((round % 2)) = 0 ] && order="sio node tandem"
      for srv in $order; do signaling "$srv" "${load%%:*}" "${load##*:}" "$round"; done
    done
  done
fi
if has memory; then for srv in tandem node; do memory "$srv"; done; fi
if has media; then for pairs in 10 25; do media "$pairs"; done; fi
if has core; then
  echo "== media core bench ($COMPARE_FORWARD_BENCH)" >&2
  rc=0; run "$out/core.txt" "$out/core.log" "$COMPARE_FORWARD_BENCH" --bench || rc=$?
  grep -q 'media core: best' "$out/core.txt" || failed "core: forward bench exit $rc (see $out/core.log)"
fi
if has turn; then
  # Already in a fresh namespace: IN_NS=1 makes turn/compare.sh skip its own build and unshare.
  echo "== TURN: tandem vs coturn" >&2
  rc=0; run "$out/turn.md" "$out/turn.log" env IN_NS=1 TURN_BENCH_BIN="$tandem" \
    bash benches/turn/compare.sh $([ "$quick" = 1 ] && echo --quick) || rc=$?
  grep -q '^| tandem ' "$out/turn.md" || failed "turn: compare.sh exit $rc (see $out/turn.log)"
fi

python3 - "$out" "$only" "$rounds" "$duration" "$mem_guests" "$media_secs" "$(nproc)" <<'PY' | tee "$out/summary.md"
import datetime, glob, json, os, re, statistics, sys

out, only, rounds, duration, mem_n, media_secs, ncpu = sys.argv[1:]
only, mem_n = only.split(), int(mem_n)
failures = open(os.path.join(out, "failures.txt")).read().split("\n") if os.path.exists(
    os.path.join(out, "failures.txt")) else []
failures = [f for f in failures if f]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

def goal(ok):
    return "—" if ok is None else ("goal met" if ok else "**not met**")

rows = []  # (part, load, tandem, other, ratio, goal)
notes = []
if "signaling" in only:
    for pairs, rate in ((200, 2000), (500, 10000)):
        med = {}
        for srv in ("tandem", "node", "sio"):
            runs = [r for r in (load(os.path.basename(p)) for p in
                    sorted(glob.glob(os.path.join(out, f"sig-{srv}-{pairs}-r*.json")))) if r]
            runs = [r for r in runs if r.get("server_cpu_s") is not None and r["received"]]
            if runs:
                med[srv] = (statistics.median(r["server_cpu_s"] * 1e6 / r["received"] for r in runs),
                            statistics.median(r["delivery_latency_ms"]["p99"] for r in runs),
                            statistics.median(r["received_rate"] for r in runs), len(runs),
                            sum(not r["pass"] for r in runs))
            busy = [(r["machine_busy_cores"] or 0) - (r["server_cpu_cores"] or 0) - (r["tool_cpu_cores"] or 0) for r in runs]
            if busy and max(busy) > 0.3:
                notes.append(f"Signaling {pairs} pairs, {srv}: other processes used up to {max(busy):.2f} cores "
                             "in the window: not an idle machine.")
        cell = lambda s: (f"{med[s][0]:.0f} µs CPU/msg, p99 {med[s][1]:.1f} ms, {med[s][2]:.0f} msg/s"
                          + (" (saturated: p99 is queueing)" if med[s][1] > 100 else "")
                          + (f" ({med[s][4]} of {med[s][3]} failed the tool's check)" if med[s][4] else "")
                          if s in med else "FAILED")
        ratio = med["node"][0] / med["tandem"][0] if "node" in med and "tandem" in med else None
        sio = med["node"][0] / med["sio"][0] if "node" in med and "sio" in med else None
        rows.append(("signaling", f"{pairs} pairs × {rate // (2 * pairs)} msg/s ({2 * pairs} guests)",
                     cell("tandem"), "Node: " + cell("node") + "; socketioxide alone (`benches/sio-baseline`): " + cell("sio"),
                     (f"Node/tandem CPU {ratio:.2f}×" if ratio else "—")
                     + (f" (Node/socketioxide alone {sio:.2f}×)" if sio else ""),
                     "≥ 3×: " + goal(ratio >= 3 if ratio else None)))
    notes.append(f"Signaling: medians over {rounds} round(s) of {duration} s windows, servers alternated; "
                 "CPU = server utime + stime in the window / messages received.")
if "memory" in only:
    per = {}
    for srv in ("tandem", "node"):
        r = load(f"mem-{srv}.json")
        try:
            idle = int(open(os.path.join(out, f"mem-{srv}.idle")).read()) / 1024  # MiB
        except (OSError, ValueError):
            idle = None
        if r and idle is not None and r.get("server_rss_window_start_mb") is not None:
            try:
                n = int(open(os.path.join(out, f"mem-{srv}.n")).read())
            except (OSError, ValueError):
                n = mem_n
            # The first tool's guests all paired (checked); the measured tool's: as it says.
            n = n - min(n, 9900) + (r["connected"] or 0)
            if n <= 0:
                continue
            b = (r["server_rss_window_start_mb"] - idle) * 1048576 / n
            per[srv] = (b, idle, r["server_rss_window_start_mb"], n, r["pass"])
    cell = lambda s: (f"{per[s][0] / 1024:.1f} KiB/guest (idle {per[s][1]:.0f} MiB → {per[s][2]:.0f} MiB at "
                      f"{per[s][3]} connected); 20,000 guests ≈ {(per[s][1] * 1048576 + 20000 * per[s][0]) / 1e6:.0f} MB"
                      + ("" if per[s][4] else " (tool check failed)") if s in per else "FAILED")
    ratio = per["node"][0] / per["tandem"][0] if len(per) == 2 and per["tandem"][0] > 0 else None
    rows.append(("memory", f"{mem_n} guests, all paired, {mem_n // 10} msg/s", cell("tandem"),
                 "Node: " + cell("node"), f"Node/tandem per guest {ratio:.2f}×" if ratio else "—",
                 "≤ 20 KiB/guest (< 400 MB at 20,000): " + goal(per["tandem"][0] <= 20480 if "tandem" in per else None)))
    notes.append(f"Memory: {mem_n} guests connected and paired (one load-tool process holds at most 9,900: "
                 "the hard open-file limit here is 20,000 per process, the server's included, so 20,000 "
                 "cannot be reached); the 20,000 figure is idle RSS + 20,000 × bytes per guest.")
if "media" in only:
    for pairs in (10, 25):
        r = load(f"media-{pairs}.json")
        t, d, a = (r or {}).get("tandem"), (r or {}).get("baseline"), (r or {}).get("added_latency")
        if not t or not t.get("latency_ms"):
            rows.append(("media", f"{pairs} calls", "FAILED", "—", "—", "—"))
            continue
        pps = t.get("pps_per_server_core")
        p99 = a["p99_ms"] if a else None
        ok = (pps >= 60000 if pps else False) if pairs == 25 else (p99 < 1 if p99 is not None else None)
        rows.append(("media", f"{pairs} calls, each peer sending audio + 1.5 Mbit/s video",
                     f"{pps or 0:,.0f} pkt/s per core ({t['forwarded_pps']:,.0f} pkt/s on {t['server_cpu_cores'] or 0:.2f}"
                     f" cores), loss {t['loss_pct']:.2f} %, p99 {t['latency_ms']['p99']:.2f} ms",
                     f"direct: p99 {d['latency_ms']['p99']:.2f} ms, loss {d['loss_pct']:.2f} %" if d and d.get("latency_ms") else "direct: —",
                     f"added p99 {p99:+.2f} ms" if p99 is not None else "—",
                     ("≥ 60,000 pkt/s per core: " if pairs == 25 else "added p99 < 1 ms: ") + goal(ok)))
        notes += [f"Media {pairs}: {w}" for w in (r.get("warnings") or []) + (r.get("failures") or [])]
    notes.append(f"Media: {media_secs} s windows; pkt/s per core = forwarded pkt/s / tandem CPU cores.")
if "core" in only:
    try:
        text = open(os.path.join(out, "core.txt")).read()
        m = re.search(r"best ([\d.]+) µs per forwarded packet.*?([\d.]+)x one str0m receive", text)
        base = [float(x) for x in re.findall(r"baseline \(a str0m client receiving\) ([\d.]+) µs", text)]
        us, ratio = float(m.group(1)), float(m.group(2))
        rows.append(("media core", "one call, simulated time", f"{us:.2f} µs per forwarded packet",
                     f"str0m receive: {statistics.median(base):.2f} µs", f"{ratio:.2f}× a str0m receive",
                     "≤ 4 µs: " + goal(us <= 4)))
    except (OSError, AttributeError, ValueError, statistics.StatisticsError):
        rows.append(("media core", "one call, simulated time", "FAILED", "—", "—", "—"))
if "turn" in only:
    res = {}
    try:
        for line in open(os.path.join(out, "turn.md")):
            m = re.match(r"\| (\S+) (\S+) \| (\d+) \| (\d+) \| (.*?) \| ([\d.]+) s \| (\d+)% \|", line)
            if m:
                lost = re.search(r"\(([\d.]+)%\)", m.group(5))
                res.setdefault(m.group(2), {})[m.group(1)] = (int(m.group(3)), int(m.group(4)),
                    f"{float(lost.group(1)):.2f} %" if lost else m.group(5), float(m.group(6)), int(m.group(7)))
    except OSError:
        pass
    cell = lambda x: f"CPU {x[3]:.2f} s ({x[4]} % of a core), {x[1]:,} of {x[0]:,} echoed, loss {x[2]}"
    for name, by in res.items():
        t, c = by.get("tandem"), by.get("coturn")
        ratio = c[3] / t[3] if t and c and t[3] else None
        rows.append(("TURN", name + " (each way)", cell(t) if t else "FAILED", "coturn: " + (cell(c) if c else "FAILED"),
                     f"coturn/tandem CPU {ratio:.2f}×" if ratio else "—", "—"))
    if not res:
        rows.append(("TURN", "benches/turn/compare.sh", "FAILED", "—", "—", "—"))

print(f"## tandem compared — {datetime.date.today()}, {ncpu} cores (`benches/compare.sh`)")
print()
print("| part | load | tandem | alternative | ratio | goal |")
print("|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
for n in notes + [f"Could not run: {f}" for f in failures]:
    print(f"- {n}")
PY
exit "$fail"
