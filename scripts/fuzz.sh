#!/usr/bin/env bash
# Runs the cargo fuzz targets (fuzz/, see fuzz/README.md) for a given time each.
#
#   scripts/fuzz.sh [--seconds N | N] [--jobs J] [--no-default-features] [TARGET...]
#
# N seconds per target (default 60), every target unless some are named, J targets at once
# (default: one per core). --no-default-features leaves out the targets of the shell crate
# (file_url, multipart_upload), so that the cores' targets build even when it does not.
# Builds all targets once (cargo +nightly fuzz build; without a nightly toolchain, the stable
# one with RUSTC_BOOTSTRAP=1), then runs each with the committed seeds (fuzz/corpus/<target>,
# read only) and a scratch corpus that runs grow
# (fuzz/target/corpus/<target>). Each target's full output goes to
# fuzz/target/logs/<target>.log; one line per target says how it went:
#   fuzz result: <target> pass (<execs> execs, <execs/s> execs/s, cov <edges>, corpus <n>)
#   fuzz result: <target> fail (<why>; see <log>, input <artifact>)
# Exits non-zero if any target crashed (a panic, a failed check, a sanitizer report, a
# timeout or running out of memory) or could not be run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
jobs=$(nproc 2>/dev/null || echo 1)
targets=()
features=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --jobs=*) jobs=${1#*=}; shift ;;
    --no-default-features) features=(--no-default-features); shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *)
      if [[ "$1" =~ ^[0-9]+$ ]] && [ ${#targets[@]} -eq 0 ] && [ "$seconds" = 60 ]; then
        seconds=$1
      else
        targets+=("$1")
      fi
      shift ;;
  esac
done
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "fuzz.sh: --seconds wants a positive number" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo fuzz needs nightly's -Z flags; the stable toolchain takes them with RUSTC_BOOTSTRAP.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  echo "fuzz.sh: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

all=$("${fuzz[@]}" list)
if [ ${#features[@]} -gt 0 ]; then
  all=$(grep -vx -e file_url -e multipart_upload <<<"$all")
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$all"
fi
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$all"; then
    echo "fuzz.sh: no target $t (targets: $(echo $all))" >&2
    exit 2
  fi
done

echo "fuzz.sh: building $(wc -l <<<"$all") fuzz targets"
"${fuzz[@]}" build "${features[@]}"

logs=fuzz/target/logs
mkdir -p "$logs"

# Runs one target; prints its result line; returns non-zero on a crash.
run() {
  local t=$1 log=$logs/$1.log scratch=fuzz/target/corpus/$1
  mkdir -p "$scratch" "fuzz/corpus/$t"
  local rc=0
  # -timeout: one input running this long is a hang; -rss_limit_mb: a memory blow-up.
  "${fuzz[@]}" run "${features[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  local execs rate cov corp
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  if [ "$rc" = 0 ]; then
    echo "fuzz result: $t pass (${execs:-?} execs, ${rate:-?} execs/s, cov ${cov:-?}, corpus ${corp:-?})"
  else
    local why artifact
    why=$(grep -m1 -oE "panicked at [^ ]*|ERROR: (AddressSanitizer|libFuzzer): [a-z-]*|deadly signal|out-of-memory|timeout" "$log" || echo "exit $rc")
    artifact=$(grep -m1 -o "Test unit written to [^ ]*" "$log" | cut -d' ' -f5 || true)
    echo "fuzz result: $t fail ($why; see $log, input ${artifact:-none})"
    # The panic message and the top of the stack, for the CI log.
    grep -m1 -A12 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | sed 's/^/    /' || true
    return 1
  fi
}

# A pool of $jobs runs at once.
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run "$t" >"$logs/$t.result" 2>&1 &
done
wait || true
failed=()
for t in "${targets[@]}"; do
  cat "$logs/$t.result"
  grep -q "^fuzz result: $t pass" "$logs/$t.result" || failed+=("$t")
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]}"
  echo "fuzz.sh: reproduce with: cargo +nightly fuzz run <target> <input>"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each, no crash"
