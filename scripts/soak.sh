#!/usr/bin/env bash
# A bounded soak of tandem (issue 13): a release build in its own network namespace (only `lo`),
# under every kind of load at once, round after round, for --minutes:
#   - chat: tandem-load connects --guests sockets, pairs them, sends --rate messages/s with
#     receipts, then disconnects them all (so every round is also a reconnect storm);
#   - calls: tandem-media-load opens --calls audio calls, streams, and closes them;
#   - TURN: coturn's turnutils_uclient makes allocations (two per client) and relays through
#     tandem to an echo peer.
# A guest's session lives as long as its token (2 h by default) even after its sockets are gone,
# so that it can come back, and an ended call's TURN grant is remembered as long as its
# credentials could be used (1 h by default); the soak runs tandem with --token-ttl-secs 300 and
# --turn-credential-ttl-secs 300 so that both level off within the run (TURN allocations that
# coturn's client leaves behind end with their 10-minute lifetime: run at least 15 minutes).
# After each round it records the server's RSS, open descriptors and the size of every core
# table (tandem_core_entries{core,table}, plus the guests/sockets/peers/allocations gauges).
# It fails unless every round delivered every message it sent (sent = received, none refused)
# and every series levelled off: the peak of the last third of the rounds is at most 25% (plus
# a small slack) above the peak of the first third.
#
#   scripts/soak.sh [--minutes 20] [--guests 2000] [--rate 2000] [--calls 10] [--round-secs 30]
#
# Needs root (for `unshare -n`), the release build (built here), coturn's tools and python3.
# Writes target/soak/rounds.csv and prints a summary; exit 0 pass, 1 fail.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=20 guests=2000 rate=2000 calls=10 round=30
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --guests) guests=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --calls) calls=$2; shift 2 ;;
    --round-secs) round=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--guests N] [--rate N] [--calls N] [--round-secs N]" >&2; exit 2 ;;
  esac
done

if [ -z "${SOAK_IN_NETNS:-}" ]; then
  cargo build --release -p tandem -p tandem-media-load --bin tandem --bin tandem-load --bin tandem-media-load
  if ! command -v turnutils_uclient >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn
  fi
  exec env SOAK_IN_NETNS=1 unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' "$0" \
    --minutes "$minutes" --guests "$guests" --rate "$rate" --calls "$calls" --round-secs "$round"
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out=target/soak
mkdir -p "$out"
bin=${CARGO_TARGET_DIR:-target}/release
port=18190 turn_port=18478 peer_port=18480 rtc_port=18882
secret=soak-turn-secret-0123456789abcdef

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

"$bin/tandem" --bind "127.0.0.1:$port" --log-level warn --node-ip 127.0.0.1 \
  --rtc-udp-port "$rtc_port" --rtc-tcp-port 0 --turn-port "$turn_port" --turn-tls-port 0 \
  --turn-secret "$secret" --turn-allow-loopback-peers --turn-relay-ports 30000-39999 \
  --guest-creations-per-min 1000000 --http-requests-per-min 1000000 \
  --max-connections-per-ip 100000 --max-http-connections-per-ip 100000 \
  --max-sessions-per-ip 1000000 --socket-handshakes-per-min 1000000 \
  --chat-messages-per-sec 50 --match-per-sec 100 --match-burst 100 --events-per-sec 100 \
  --memory-budget-mb 4096 --token-ttl-secs 300 --turn-credential-ttl-secs 300 \
  >"$out/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null
turnutils_peer -L 127.0.0.1 -p "$peer_port" >/dev/null 2>&1 &
pids+=("$!")

# One line per round: time, RSS, descriptors, then every gauge of interest.
sample() {
  local rss fds
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  curl -fsS "http://127.0.0.1:$port/metrics" | python3 -c '
import sys, json
keep = ("tandem_core_entries", "tandem_guests", "tandem_sockets_connected", "tandem_media_peers",
        "tandem_turn_allocations", "tandem_calls", "tandem_files_stored")
vals = {}
for line in sys.stdin:
    if line.startswith("#") or not line.strip():
        continue
    name, _, value = line.rpartition(" ")
    if name.startswith(keep) and "_total" not in name:
        vals[name] = float(value)
print(json.dumps(vals, sort_keys=True))
' | sed "s/^/$(date +%s) $rss $fds /"
}

: >"$out/rounds.jsonl"
deadline=$(( $(date +%s) + minutes * 60 ))
n=0 failed=0
sample >"$out/baseline.txt"
while [ "$(date +%s)" -lt "$deadline" ]; do
  n=$((n + 1))
  "$bin/tandem-media-load" --url "http://127.0.0.1:$port" --pairs "$calls" --audio-only \
    --duration "${round}s" --warmup 2s --json >"$out/media-$n.json" 2>"$out/media-$n.log" &
  media=$!
  pids+=("$media")
  ( turnutils_uclient -c -W "$secret" -u "soak$n" -e 127.0.0.1 -r "$peer_port" -n 200 -m 4 \
      -l 200 -p "$turn_port" 127.0.0.1 >"$out/turn-$n.log" 2>&1 || true ) &
  turn=$!
  pids+=("$turn")
  "$bin/tandem-load" --url "http://127.0.0.1:$port" --guests "$guests" --rate "$rate" \
    --duration "$round" --warmup 3 --server-pid "$server" --json >"$out/chat-$n.json" 2>"$out/chat-$n.log" || true
  wait "$media" || true
  wait "$turn" || true
  sleep 2 # let the server settle (ended chats, closed calls, freed allocations)
  line=$(sample)
  python3 - "$out/chat-$n.json" "$out/media-$n.json" "$out/turn-$n.log" "$line" "$n" >>"$out/rounds.jsonl" <<'PY'
import json, re, sys
chat_path, media_path, turn_path, line, n = sys.argv[1:6]
def load(p):
    try:
        with open(p) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return {}
chat, media = load(chat_path), load(media_path)
media = media.get("tandem") or media
turn = open(turn_path).read()
m = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", turn)
t, rss, fds, gauges = line.split(" ", 3)
print(json.dumps({
    "round": int(n), "time": int(t), "rss_kb": int(rss), "fds": int(fds),
    "gauges": json.loads(gauges),
    "chat": {k: chat.get(k) for k in ("sent", "acked_ok", "refused", "received", "delivered_receipts", "paired", "connected")},
    "media": {k: media.get(k) for k in ("pairs", "pairs_connected", "loss_pct", "sent_pkts", "received_pkts")},
    "turn": {"sent": int(m[-1][0]), "received": int(m[-1][1])} if m else None,
}))
PY
  tail -n 1 "$out/rounds.jsonl"
done

python3 - "$out/rounds.jsonl" "$out/baseline.txt" <<'PY'
import json, sys
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = True
def fail(msg):
    global ok
    ok = False
    print("FAIL:", msg)
if len(rounds) < 3:
    fail(f"only {len(rounds)} rounds; run longer")
for r in rounds:
    c = r["chat"]
    if not c.get("sent") or c.get("sent") != c.get("received") or c.get("refused"):
        fail(f"round {r['round']}: chat sent {c.get('sent')} received {c.get('received')} refused {c.get('refused')}")
    if r["turn"] and r["turn"]["sent"] != r["turn"]["received"]:
        fail(f"round {r['round']}: TURN sent {r['turn']['sent']} received {r['turn']['received']}")
    m = r["media"]
    if m.get("pairs") and m.get("pairs_connected") != m.get("pairs"):
        fail(f"round {r['round']}: calls connected {m.get('pairs_connected')} of {m.get('pairs')}")
series = {"rss_kb": [r["rss_kb"] for r in rounds], "fds": [r["fds"] for r in rounds]}
for r in rounds:
    for k in r["gauges"]:
        # Counters only grow: levelling off is for gauges.
        if "_total" not in k:
            series.setdefault(k, [])
for k in list(series):
    if k not in ("rss_kb", "fds"):
        series[k] = [r["gauges"].get(k, 0.0) for r in rounds]
third = max(1, len(rounds) // 3)
print(f"{len(rounds)} rounds")
print(f"{'series':70} {'first third peak':>16} {'last third peak':>16}")
for k, v in sorted(series.items()):
    first, last = max(v[:third]), max(v[-third:])
    slack = 64 if k != "rss_kb" else 32 * 1024
    flag = "" if last <= first * 1.25 + slack else "  <- grew"
    print(f"{k:70} {first:16.0f} {last:16.0f}{flag}")
    if flag:
        fail(f"{k} kept growing: {first:.0f} -> {last:.0f}")
sent = sum(r["chat"].get("sent") or 0 for r in rounds)
print(f"chat messages sent {sent}, all delivered: {all(r['chat'].get('sent') == r['chat'].get('received') for r in rounds)}")
print("soak:", "pass" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
