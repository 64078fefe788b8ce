#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Client packages for the integration tests (the official socket.io-client).
if [ ! -d tests/e2e/node_modules ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules ]; then
  npm ci --prefix tests/e2e --no-audit --no-fund
fi

# The end-to-end suite runs in its own network namespace (`unshare -n`, then `ip link set lo up`;
# see tests/e2e.rs): util-linux is always there, iproute2 may not be on a minimal machine.
if ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
fi

cargo build --workspace --all-targets
mkdir -p target
set +e
cargo test --workspace 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo's own results plus the Node suites' (tests/e2e).
awk '/^test result:/ { p += $4; f += $6 }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
