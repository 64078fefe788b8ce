#!/usr/bin/env bash
# TURN side by side: tandem's bundled TURN server and coturn (Debian's `turnserver`) on the same
# box, driven by the same coturn load tool (`turnutils_uclient` → server → `turnutils_peer`, which
# echoes, so every load runs each way), one server at a time, in a fresh network namespace with
# only loopback. Reports, per load and server: messages sent and echoed back, loss, and the
# server's CPU time (utime + stime from /proc) per second of load.
#
#   benches/turn/compare.sh [--quick]        (needs root, coturn and openssl; builds tandem --release)
#
# TURN_BENCH_BASELINE=<path to another tandem binary> adds it as a third server ("baseline", e.g. a
# build of an earlier commit) to compare two versions of tandem in the same sitting;
# TURN_BENCH_SERVERS="tandem baseline" picks the servers.
#
# Loads (uclient sends one message per client every 20 ms, so N clients = 50·N msg/s each way):
#   udp-172   500 clients × 172 B   = 25k msg/s,  34 Mbit/s each way
#   udp-240   500 clients × 1200 B  = 25k msg/s, 240 Mbit/s each way
#   udp-480   500 clients × 1200 B every 10 ms = 50k msg/s, 480 Mbit/s each way (uclient cannot
#             open 1000 allocations from one address: both servers see 437 retries)
#   tls-240   500 clients × 1200 B over TLS
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${IN_NS:-}" != 1 ]; then
  command -v turnserver >/dev/null && command -v turnutils_uclient >/dev/null \
    || { echo "needs coturn: apt-get install coturn" >&2; exit 1; }
  cargo build --release --bin tandem >&2
  exec unshare -n env IN_NS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

SECS=${TURN_BENCH_SECS:-10}
QUICK=0; [ "${1:-}" = --quick ] && QUICK=1 && SECS=4
SECRET=turn-bench-secret-0123456789abcdef
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/key.pem" \
  -out "$WORK/cert.pem" -days 2 -subj /CN=127.0.0.1 >/dev/null 2>&1
ulimit -n 65536 2>/dev/null || true

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

start_tandem() {
  "${TURN_BENCH_BIN:-target/release/tandem}" --bind 127.0.0.1:18080 --node-ip 127.0.0.1 --rtc-udp-port 0 --rtc-tcp-port 0 \
    --turn-port 3478 --turn-tls-port 5349 --turn-secret "$SECRET" --turn-allow-loopback-peers \
    --turn-cert "$WORK/cert.pem" --turn-key "$WORK/key.pem" \
    --turn-max-allocations-per-user 100000 --turn-max-allocations 100000 --log-level warn \
    --max-stream-connections-per-ip 100000 \
    >"$WORK/server.log" 2>&1 &
  echo $!
}

start_baseline() {
  # (Not TANDEM_*: tandem reads those as settings and refuses unknown ones.)
  TURN_BENCH_BIN="$TURN_BENCH_BASELINE" start_tandem
}

start_coturn() {
  turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 3478 \
    --tls-listening-port 5349 --use-auth-secret --static-auth-secret "$SECRET" --realm tandem \
    --allow-loopback-peers --no-cli --no-dtls --cert "$WORK/cert.pem" --pkey "$WORK/key.pem" \
    --min-port 49152 --max-port 65535 --no-stdout-log --log-file "$WORK/coturn.log" --simple-log \
    >"$WORK/server.log" 2>&1 &
  echo $!
}

run_load() { # server_pid name clients length interval_ms flags...
  local pid=$1 name=$2 clients=$3 len=$4 interval=$5; shift 5
  local msgs=$((SECS * 1000 / interval))
  local t0 t1 c0 c1 out sent recv lost
  c0=$(ticks "$pid"); t0=$(date +%s.%N)
  out=$(timeout $((SECS * 6 + 60)) turnutils_uclient "$@" -c -W "$SECRET" -u "bench$RANDOM" \
    -e 127.0.0.1 -r 3480 -m "$clients" -n "$msgs" -l "$len" -z "$interval" 127.0.0.1 2>&1 || true)
  t1=$(date +%s.%N); c1=$(ticks "$pid")
  sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' <<<"$out" | tail -1 | sed 's/Total lost packets //' || true)
  [ -n "${sent:-}" ] || echo "$name: $(tail -3 <<<"$out" | tr '\n' ' ')" >&2
  awk -v n="$name" -v s="${sent:-0}" -v r="${recv:-0}" -v l="${lost:-?}" -v c=$((c1 - c0)) \
      -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v secs="$SECS" 'BEGIN {
    cpu = c / hz; printf "| %s | %d | %d | %s | %.2f s | %.0f%% |\n", n, s, r, l, cpu, 100 * cpu / secs }'
}

turnutils_peer -L 127.0.0.1 -p 3480 >/dev/null 2>&1 &
sleep 0.5

loads=("udp-172 500 172 20" "udp-240 500 1200 20" "udp-480 500 1200 10" "tls-240 500 1200 20 -t -S -p 5349")
[ $QUICK = 1 ] && loads=("udp-172 100 172 20" "tls-240 100 1200 20 -t -S -p 5349")
# TURN_BENCH_LOADS="udp-480" runs only the named loads.
if [ -n "${TURN_BENCH_LOADS:-}" ]; then
  picked=()
  for l in "${loads[@]}"; do case " $TURN_BENCH_LOADS " in *" ${l%% *} "*) picked+=("$l");; esac; done
  loads=("${picked[@]}")
fi

echo "| load | sent | echoed | lost | server CPU | CPU per second of load |"
echo "|---|---|---|---|---|---|"
servers="tandem coturn"
[ -n "${TURN_BENCH_BASELINE:-}" ] && servers="tandem baseline coturn"
for server in ${TURN_BENCH_SERVERS:-$servers}; do
  for load in "${loads[@]}"; do
    # shellcheck disable=SC2086
    set -- $load
    pid=$(start_$server)
    sleep 1.5
    run_load "$pid" "$server $1" "$2" "$3" "$4" "${@:5}"
    # Stop it and wait until it is gone (its ports must be free for the next server).
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    sleep 0.3
  done
done
